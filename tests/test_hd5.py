"""Hd5Dataset reads the PyTorch GAN-INT-CLS implementation's hd5 layout, written here with
h5py as its converters write it, and every bad file stops with one clear error."""
import pickle

import h5py
import numpy as np
import pytest
import torch

from datasets import DataError
from helpers import HD5_EMB, gan_int_cls_update, hd5_jpeg as _jpeg, write_hd5, write_hd5_example as _example
from miscc.core.config import load_config
from miscc.data.hd5 import Hd5Dataset, Hd5Error
from miscc.families import gan_int_cls as fam
from models.gan_int_cls import Discriminator, Generator, init_dcgan_weights

EMB = HD5_EMB


@pytest.fixture
def hd5(tmp_path):
    path = tmp_path / 'flowers.hdf5'
    return path, write_hd5(path)


def test_items(hd5):
    path, written = hd5
    ds = Hd5Dataset(path, 'train', embedding_dim=EMB)
    assert len(ds) == 8 and ds.embedding_dim == EMB
    assert ds.class_names == ['class_00001', 'class_00002', 'class_00003']
    torch.manual_seed(0)
    for i in range(len(ds)):
        item = ds[i]
        key = ds.keys[i]
        cls, emb, txt = written['train'][key]
        assert item['image'].shape == (3, 64, 64) and item['image'].dtype == torch.float32
        assert item['wrong_image'].shape == (3, 64, 64)
        assert torch.equal(item['embedding'], torch.from_numpy(emb))
        assert item['caption'] == txt and item['name'] == key[:-2]
        assert ds.class_names[item['class_id']] == cls
        assert item['index'] == i
        # the mismatch is an example of another class, and wrong_embedding is its embedding
        wrong = [k for k, (c, e, _) in written['train'].items()
                 if torch.equal(torch.from_numpy(e), item['wrong_embedding'])]
        assert len(wrong) == 1 and written['train'][wrong[0]][0] != cls


def test_image_values_and_colours(hd5):
    path, _ = hd5
    ds = Hd5Dataset(path, 'test')
    red = ds[ds.keys.index('red_flower_01_0')]['image']
    assert red.min() >= -1.0 and red.max() <= 1.0
    # (230, 20, 20) -> (0.804, -0.843, -0.843), JPEG within a few levels
    assert torch.allclose(red.mean((1, 2)), torch.tensor([230, 20, 20]) / 127.5 - 1, atol=0.05)
    grey = ds[ds.keys.index('grey_flower_01_1')]['image']
    assert grey.shape == (3, 64, 64)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])   # grey -> RGB


def test_wrong_examples_cover_every_other_class_example(hd5):
    path, written = hd5
    ds = Hd5Dataset(path, 'train')
    torch.manual_seed(1)
    i = ds.keys.index('blue_flower_01_0')
    seen = {ds.keys[ds.wrong_index(i)] for _ in range(300)}
    assert seen == {k for k, v in written['train'].items() if v[0] != 'class_00002'}


def test_several_embeddings_per_example(tmp_path):
    path = tmp_path / 'multi.hdf5'
    rows = np.arange(3 * EMB, dtype=np.float32).reshape(3, EMB)
    captions = ['first caption\n', 'second caption\n', 'third caption\n']
    with h5py.File(path, 'w') as f:
        g = f.create_group('train')
        _example(g, 'a', 'a', 'c1', _jpeg((1, 2, 3), 'RGB'), rows, captions)
        _example(g, 'b', 'b', 'c2', _jpeg((1, 2, 3), 'RGB'), rows + 1000, captions)
    ds = Hd5Dataset(path, 'train', embedding_dim=EMB)
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        item = ds[0]
        row = int(item['embedding'][0].item()) // EMB
        assert torch.equal(item['embedding'], torch.from_numpy(rows[row]))
        assert item['caption'] == captions[row].strip()
        seen.add(row)
    assert seen == {0, 1, 2}


def test_augmented_view_is_seeded(hd5):
    path, _ = hd5
    ds = Hd5Dataset(path, 'train', augment=True)
    torch.manual_seed(3)
    a = ds[2]
    torch.manual_seed(3)
    b = ds[2]
    assert a['image'].shape == (3, 64, 64)
    assert torch.equal(a['image'], b['image']) and torch.equal(a['embedding'], b['embedding'])


def test_loader_batches_and_pickles(hd5):
    path, _ = hd5
    ds = Hd5Dataset(path, 'valid', embedding_dim=EMB)
    ds[0]                                     # opens the file in this process
    clone = pickle.loads(pickle.dumps(ds))    # what a DataLoader worker receives
    torch.manual_seed(0)
    batch = next(iter(torch.utils.data.DataLoader(clone, batch_size=4, shuffle=False)))
    assert batch['image'].shape == (4, 3, 64, 64) and batch['embedding'].shape == (4, EMB)
    assert batch['wrong_image'].shape == (4, 3, 64, 64) and len(batch['caption']) == 4
    assert batch['class_id'].tolist() == [int(ds.class_ids[i]) for i in range(4)]


def test_config_keys():
    cfg = load_config(None, ['DATA.HD5_FILE=data/flowers/flowers.hdf5', 'DATA.HD5_EMBEDDING_DIM=1024'])
    assert cfg.DATA.HD5_FILE == 'data/flowers/flowers.hdf5' and cfg.DATA.HD5_EMBEDDING_DIM == 1024
    flowers = load_config('cfg/flowers_gan_int_cls.yml')
    assert flowers.MODEL.NAME == 'gan_int_cls' and flowers.TREE.BASE_SIZE == 64
    assert flowers.DATA.HD5_EMBEDDING_DIM == 1024
    assert load_config('cfg/bird_gan_int_cls.yml').TEXT.EMBEDDING_DIM == 256


def _train_step(batch, g, d, opt_g, opt_d, opts):
    update = gan_int_cls_update(g, d, opts, opt_d=opt_d, opt_g=opt_g, noise_dim=8)
    d_out = update.d_step(batch['image'], batch['embedding'], wrong_images=batch['wrong_image'],
                          wrong_embeddings=batch['wrong_embedding'])
    g_out = update.g_step(batch['image'], batch['embedding'])
    return d_out['d_loss'].item(), g_out['g_loss'].item()


@pytest.mark.parametrize('mismatch', ['text', 'image'])
def test_hd5_batches_train_and_a_restored_step_repeats_exactly(hd5, mismatch):
    """Two steps from hd5 batches; the second, run again from the state saved after the
    first (networks, optimisers, RNG), gives the same weights bit for bit."""
    path, _ = hd5
    ds = Hd5Dataset(path, 'train', embedding_dim=EMB)
    torch.manual_seed(0)
    g = Generator(noise_dim=8, embedding_dim=EMB, projected_dim=4, ngf=2)
    d = Discriminator(embedding_dim=EMB, projected_dim=4, ndf=2)
    g.apply(init_dcgan_weights)
    d.apply(init_dcgan_weights)
    opt_g, opt_d = fam.make_optimizers(g, d)
    opts = fam.GanIntClsOptions(mismatch=mismatch)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)
    losses = _train_step(next(iter(loader)), g, d, opt_g, opt_d, opts)
    assert all(np.isfinite(losses))
    saved = pickle.dumps([g.state_dict(), d.state_dict(), opt_g.state_dict(), opt_d.state_dict(),
                          torch.get_rng_state()])

    def second_step():
        _train_step(next(iter(loader)), g, d, opt_g, opt_d, opts)
        return [t.clone() for t in list(g.state_dict().values()) + list(d.state_dict().values())]

    first = second_step()
    sg, sd, sog, sod, rng = pickle.loads(saved)
    g.load_state_dict(sg)
    d.load_state_dict(sd)
    opt_g.load_state_dict(sog)
    opt_d.load_state_dict(sod)
    torch.set_rng_state(rng)
    again = second_step()
    assert all(torch.equal(a, b) for a, b in zip(first, again))


# --------------------------------------------------------------------------- bad files
def _one_error(path, *words, **kw):
    with pytest.raises(Hd5Error) as e:
        Hd5Dataset(path, **kw)
    msg = str(e.value)
    assert '\n' not in msg.strip()
    for w in words:
        assert w in msg, (w, msg)
    assert isinstance(e.value, DataError)
    return msg


def test_missing_file(tmp_path):
    missing = tmp_path / 'nowhere.hdf5'
    _one_error(missing, f"'{missing}' not found", 'DATA.HD5_FILE')


def test_not_an_hd5_file(tmp_path):
    path = tmp_path / 'flowers.hdf5'
    path.write_text('this is not HDF5\n')
    _one_error(path, f"'{path}' is not a readable HDF5 file", 'DATA.HD5_FILE')


def test_missing_split(tmp_path):
    path = tmp_path / 'only_train.hdf5'
    write_hd5(path, splits=('train',))
    _one_error(path, "no split 'valid'", '(it has: train)', split='valid')


def test_empty_split(tmp_path):
    path = tmp_path / 'empty.hdf5'
    with h5py.File(path, 'w') as f:
        f.create_group('train')
    _one_error(path, "split 'train' holds no examples")


@pytest.mark.parametrize('field', ['name', 'img', 'embeddings', 'class', 'txt'])
def test_missing_field_in_the_first_example(tmp_path, field):
    path = tmp_path / 'f.hdf5'
    write_hd5(path)
    with h5py.File(path, 'a') as f:
        first = sorted(f['train'].keys())[0]
        del f['train'][first][field]
    _one_error(path, f"split 'train', example '{first}'", f"missing field '{field}'")


def test_missing_field_in_a_later_example_is_named_when_read(tmp_path):
    path = tmp_path / 'f.hdf5'
    write_hd5(path)
    with h5py.File(path, 'a') as f:
        del f['train']['red_flower_02_1']['img']
    ds = Hd5Dataset(path)
    with pytest.raises(Hd5Error, match=r"example 'red_flower_02_1': missing field 'img'"):
        ds[ds.keys.index('red_flower_02_1')]


def test_wrong_embedding_size(hd5):
    path, _ = hd5
    msg = _one_error(path, f"field 'embeddings' has size {EMB}", 'DATA.HD5_EMBEDDING_DIM is 1024',
                     f'DATA.HD5_EMBEDDING_DIM={EMB}', embedding_dim=1024)
    assert "split 'train', example 'blue_flower_01_0'" in msg


def test_one_class_cannot_give_mismatches(tmp_path):
    path = tmp_path / 'one.hdf5'
    with h5py.File(path, 'w') as f:
        g = f.create_group('train')
        for k in ('a', 'b'):
            _example(g, k, k, 'c1', _jpeg((1, 2, 3), 'RGB'), np.zeros(EMB, np.float32), 'x')
    _one_error(path, "has one class ('c1')")


def test_undecodable_image(tmp_path):
    path = tmp_path / 'bad_img.hdf5'
    write_hd5(path)
    with h5py.File(path, 'a') as f:
        first = sorted(f['train'].keys())[0]
        del f['train'][first]['img']
        f['train'][first].create_dataset('img', data=np.void(b'not a jpeg'))
    _one_error(path, f"example '{first}'", "field 'img' is not a readable image")
