"""tools/convert_to_hd5.py: the implementation's source layout (Torch7 .t7 and .npy embeddings)
and this project's data sets (DAMSM sentence codes) to the hd5 layout, checked field by field
against the inputs, then round-tripped: trained on through main.py and generated from."""
import importlib.util
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import hd5_jpeg, make_synthetic_with_encoders, write_t7
from miscc.cli import gan_main
from miscc.core.config import load_config
from miscc.data.hd5 import Hd5Dataset
from miscc.evaluation.generation import encode_texts
from miscc.families.encoders import load_text_encoder

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('convert_to_hd5', ROOT / 'tools' / 'convert_to_hd5.py')
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

pytestmark = pytest.mark.slow
EMB = 12
# split: {class: {image: colour}}; the train classes mix .t7 and .npy embedding files
SOURCE = {'train': {'001.Red': {'red_1': (220, 10, 10), 'red_2': (200, 30, 30)}, '002.Blue': {'blue_1': (10, 10, 220)}},
          'valid': {'003.Green': {'green_1': (10, 220, 10)}},
          'test': {'004.White': {'white_1': (240, 240, 240)}, '005.Black': {'black_1': (15, 15, 15)}}}


def make_source(root: Path) -> dict:
    """The implementation's inputs: images/<class>/<image>.jpg, emb/<class>/<image>.t7 (.npy for
    002.Blue), text/<class>/<image>.txt (3 captions), classes/{train,val,test}classes.txt.
    Returns {image: (class, jpeg bytes, rows K x E, caption lines)}."""
    rng = np.random.default_rng(1)
    made = {}
    lists = {'train': [], 'valid': [], 'test': []}
    for split, classes in SOURCE.items():
        for cls, images in classes.items():
            lists[split].append(cls)
            for d in ('images', 'emb', 'text'):
                (root / d / cls).mkdir(parents=True, exist_ok=True)
            for name, colour in images.items():
                jpeg = hd5_jpeg(colour, 'RGB')
                (root / 'images' / cls / f'{name}.jpg').write_bytes(jpeg)
                rows = rng.standard_normal((3, EMB)).astype(np.float32)
                if cls == '002.Blue':
                    np.save(root / 'emb' / cls / f'{name}.npy', rows)
                else:
                    write_t7(root / 'emb' / cls / f'{name}.t7', {'img': f'{cls}/{name}.jpg', 'txt': rows})
                lines = [f'a {name.split("_")[0]} bird number {k}\n' for k in range(3)]
                (root / 'text' / cls / f'{name}.txt').write_text(''.join(lines))
                made[name] = (cls, jpeg, rows, lines)
    (root / 'classes').mkdir()
    for split, name in tool.CLASS_LISTS.items():
        (root / 'classes' / name).write_text('\n'.join(lists[split]) + '\n')
    return made


def source_argv(root: Path, out: Path, *extra):
    return ['source', '--images', str(root / 'images'), '--embeddings', str(root / 'emb'), '--text',
            str(root / 'text'), '--classes', str(root / 'classes'), '--out', str(out), *extra]


def read_examples(path: Path) -> dict:
    with h5py.File(path, 'r') as f:
        return {split: {key: {field: ex[field][()] for field in ex} for key, ex in f[split].items()}
                for split in f}


def test_source_layout_field_by_field(tmp_path, capsys):
    made = make_source(tmp_path / 'src')
    out = tmp_path / 'flowers.hdf5'
    assert tool.main(source_argv(tmp_path / 'src', out)) == 0
    assert capsys.readouterr().out == f'{out}: train 15 examples, valid 5 examples, test 10 examples\n'
    examples = read_examples(out)
    for split, classes in SOURCE.items():
        names = [n for c in classes.values() for n in c]
        assert sorted(examples[split]) == sorted(f'{n}_{c}' for n in names for c in range(5))
        for key, ex in examples[split].items():
            name = key.rsplit('_', 1)[0]
            cls, jpeg, rows, lines = made[name]
            assert ex['name'].decode() == name and ex['class'].decode() == cls
            assert ex['img'].tobytes() == jpeg                         # the file's bytes, whole
            (row,) = [k for k in range(3) if np.array_equal(rows[k], ex['embeddings'])]
            assert ex['txt'].decode() == lines[row]                     # caption and embedding of one row
    # seeded: the same command gives the same draws; another seed other draws
    again = tmp_path / 'again.hdf5'
    assert tool.main(source_argv(tmp_path / 'src', again)) == 0
    other = tmp_path / 'other.hdf5'
    assert tool.main(source_argv(tmp_path / 'src', other, '--seed', '1')) == 0
    capsys.readouterr()

    def draws(e):
        return [e[s][k]['txt'] for s in sorted(e) for k in sorted(e[s])]
    assert draws(read_examples(again)) == draws(examples) != draws(read_examples(other))
    # the reader of the training loop takes it as it is
    data = Hd5Dataset(out, 'train', embedding_dim=EMB)
    assert len(data) == 15 and data.class_names == ['001.Red', '002.Blue'] and data[0]['image'].shape == (3, 64, 64)


def test_source_layout_errors_name_the_file_and_leave_nothing(tmp_path, capsys):
    root = tmp_path / 'src'
    make_source(root)
    out = tmp_path / 'out.hdf5'
    (root / 'text' / '002.Blue' / 'blue_1.txt').write_text('only one caption\n')
    assert tool.main(source_argv(root, out)) == 2
    err = capsys.readouterr().err
    assert err == (f"convert_to_hd5.py: error: '{root / 'text' / '002.Blue' / 'blue_1.txt'}' has 1 captions but "
                   f"'{root / 'emb' / '002.Blue' / 'blue_1.npy'}' 3 embeddings; they must match row for row\n")
    assert list(tmp_path.glob('*out.hdf5*')) == []              # no partial file, no temporary one
    (root / 'text' / '002.Blue' / 'blue_1.txt').write_text('a\nb\nc\n')
    (root / 'classes' / 'testclasses.txt').write_text('004.White\n')
    assert tool.main(source_argv(root, out)) == 2
    assert "class '005.Black' of" in capsys.readouterr().err
    (root / 'classes' / 'testclasses.txt').write_text('004.White\n005.Black\n')
    (root / 'emb' / '001.Red' / 'red_2.t7').write_bytes(b'not torch7')
    assert tool.main(source_argv(root, out)) == 2
    assert f"'{root / 'emb' / '001.Red' / 'red_2.t7'}' is not a readable Torch7 file" in capsys.readouterr().err
    out.write_bytes(b'keep me')
    assert tool.main(source_argv(root, out)) == 2
    assert capsys.readouterr().err == f"convert_to_hd5.py: error: '{out}' exists; pass --force to replace it\n"
    assert out.read_bytes() == b'keep me'


def _hd5_argv(path, out, *args, **extra):
    base = {'DATA.HD5_FILE': path, 'OUTPUT_DIR': out, 'TEXT.DAMSM_NAME': out / 'absent' / 'text_encoder0.pth',
            'TRAIN.BATCH_SIZE': 5, 'TRAIN.MAX_EPOCH': 1, 'TRAIN.GSAVE_INTERVAL': 1, 'TRAIN.DSAVE_INTERVAL': 1,
            'GAN_INT_CLS.NGF': 2, 'GAN_INT_CLS.NDF': 2, 'GAN_INT_CLS.PROJECTED_DIM': 4, 'WORKERS': 0, 'DEVICE': 'cpu'}
    base.update(extra)
    return (['--cfg', str(ROOT / 'cfg' / 'flowers_gan_int_cls.yml'), *map(str, args)]
            + [f'{k}={v}' for k, v in base.items()])


def _train_and_generate(path: Path, out: Path, emb: int) -> list:
    """Train one epoch on the file through main.py, generate 4 test images; their manifest."""
    assert gan_main(False, _hd5_argv(path, out, **{'DATA.HD5_EMBEDDING_DIM': emb})) == 0
    (run,) = out.iterdir()
    netg = run / 'models' / 'netG_001.pth'
    assert gan_main(False, _hd5_argv(path, out, 'B_VALIDATION=True', f'TRAIN.NET_G={netg}', 'SAMPLE.NUM=4',
                                     **{'DATA.HD5_EMBEDDING_DIM': emb})) == 0
    valid = run / 'models' / 'netG_001' / 'valid'
    lines = [json.loads(s) for s in (valid / 'manifest.jsonl').read_text().splitlines()]
    assert all(Image.open(valid / e['file']).size == (64, 64) for e in lines)
    return lines


def test_source_conversion_trains_and_generates(tmp_path, capsys):
    made = make_source(tmp_path / 'src')
    out = tmp_path / 'flowers.hdf5'
    assert tool.main(source_argv(tmp_path / 'src', out)) == 0
    lines = _train_and_generate(out, tmp_path / 'run', EMB)
    assert {e['key'].rsplit('_', 1)[0] for e in lines} <= {'white_1', 'black_1'}     # the test classes
    assert all(e['caption'] in [x.strip() for x in made[e['key'].rsplit('_', 1)[0]][3]] for e in lines)
    capsys.readouterr()


def test_project_data_set_with_damsm_codes_trains_and_generates(tmp_path, capsys):
    root = make_synthetic_with_encoders(tmp_path, 6, 4, seed=2, epoch=3)
    overrides = [f"DATA_DIR={root / 'synthetic_birds'}", f"TEXT.DAMSM_NAME={root / 'enc' / 'text_encoder3.pth'}",
                 'DATASET_NAME=synthetic_birds', 'DEVICE=cpu', 'SYNTHETIC.NUM_TRAIN=6', 'SYNTHETIC.NUM_TEST=4',
                 'SYNTHETIC.IMAGE_SIZE=128', 'SYNTHETIC.SEED=2']
    out = tmp_path / 'birds.hdf5'
    assert tool.main(['dataset', '--cfg', str(ROOT / 'cfg' / 'bird.yml'), '--out', str(out), *overrides]) == 0
    assert capsys.readouterr().out == f'{out}: train 30 examples, test 20 examples\n'
    examples = read_examples(out)
    assert examples['valid'] == {} and len(examples['train']) == 30 and len(examples['test']) == 20
    cfg = load_config(str(ROOT / 'cfg' / 'bird.yml'), overrides)
    test = tool.build_dataset(cfg, 'test', augment=False)
    encoder = load_text_encoder(cfg, str(root / 'enc' / 'text_encoder3.pth'), test.n_words, 'cpu').eval()
    key = test.filenames[1]
    name = key.split('/')[-1]
    for c in range(5):
        ex = examples['test'][f'{name}_{c}']
        assert ex['name'].decode() == name and ex['embeddings'].shape == (256,)
        # the stored code is the text encoder's sentence code of the stored caption
        caps, lens, _ = encode_texts([ex['txt'].decode()], test.wordtoix, cfg.TEXT.WORDS_NUM)
        with torch.no_grad():
            _, sent = encoder(caps, lens, encoder.init_hidden(1))
        assert np.allclose(sent[0].numpy(), ex['embeddings'], atol=1e-5)
        # the bird as this project crops it, losslessly
        stored = np.asarray(Image.open(io.BytesIO(ex['img'].tobytes())))
        assert np.array_equal(stored, np.asarray(test.source_image(1)))
    _train_and_generate(out, tmp_path / 'run', 256)
    capsys.readouterr()
