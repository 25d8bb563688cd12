"""GAN-INT-CLS through the shared loop (main.py, MODEL.NAME=gan_int_cls) end to end: on an hd5
file written here (no DAMSM files), with exact resume also in the middle of WGAN critic steps;
on synthetic birds with the DAMSM sentence encoder; generation with manifest from either
source, eval_IS / eval_FID on it, user captions, and the errors of bad hd5 files and of user
captions without a text encoder."""
import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import HD5_EMB, HD5_IMAGES, identity_srcnn, make_synthetic_with_encoders, write_hd5
from miscc.cli import eval_main, gan_main
from miscc.core.checkpoint import load_model_state
from miscc.core.config import load_config
from miscc.families import build_networks
from miscc.training.gan import GANTrainer

ROOT = Path(__file__).resolve().parents[1]

# every test here trains or generates end to end
pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- hd5 conditioning
@pytest.fixture(scope='module')
def hd5_file(tmp_path_factory):
    root = tmp_path_factory.mktemp('hd5')
    path = root / 'flowers.hdf5'
    return path, write_hd5(path)


def hd5_argv(path, out, *args, **extra):
    """cfg/flowers_gan_int_cls.yml on the test file: 8 train examples, batch 2 (4 steps an
    epoch), tiny networks; TEXT.DAMSM_NAME points nowhere, as no DAMSM file is needed."""
    base = {'DATA.HD5_FILE': path, 'DATA.HD5_EMBEDDING_DIM': HD5_EMB, 'OUTPUT_DIR': out,
            'TEXT.DAMSM_NAME': out / 'absent' / 'text_encoder0.pth', 'TRAIN.BATCH_SIZE': 2,
            'TRAIN.MAX_EPOCH': 1, 'TRAIN.GSAVE_INTERVAL': 1, 'TRAIN.DSAVE_INTERVAL': 1,
            'GAN_INT_CLS.NGF': 2, 'GAN_INT_CLS.NDF': 2, 'GAN_INT_CLS.PROJECTED_DIM': 4,
            'WORKERS': 0, 'DEVICE': 'cpu'}
    base.update(extra)
    return (['--cfg', str(ROOT / 'cfg' / 'flowers_gan_int_cls.yml'), *map(str, args)]
            + [f'{k}={v}' for k, v in base.items()])


def only_run(out: Path) -> Path:
    (run,) = sorted(out.iterdir())
    return run


def final_state(run: Path) -> dict:
    return torch.load(run / 'models' / 'state_last.pth', weights_only=True)


@pytest.fixture(scope='module')
def hd5_run(hd5_file, tmp_path_factory):
    path, _ = hd5_file
    out = tmp_path_factory.mktemp('hd5_run')
    assert gan_main(False, hd5_argv(path, out)) == 0
    return only_run(out)


def test_hd5_training_needs_no_damsm_files_and_writes_checkpoints(hd5_file, hd5_run):
    path, written = hd5_file
    names = sorted(p.name for p in (hd5_run / 'models').iterdir())
    assert names == ['netD_001.pth', 'netG_001.pth', 'state_last.json', 'state_last.pth']
    cfg = load_config(str(ROOT / 'cfg' / 'flowers_gan_int_cls.yml'), hd5_argv(path, hd5_run)[2:])
    for name in ('netG', 'netD'):
        fresh = build_networks(cfg)[name]
        fresh.load_state_dict(torch.load(hd5_run / 'models' / f'{name}_001.pth', weights_only=True), strict=True)
    assert build_networks(cfg)['netG'].projection[0].in_features == HD5_EMB   # the file's embedding size
    progress = json.loads((hd5_run / 'models' / 'state_last.json').read_text())
    assert progress['global_step'] == 4 and progress['next_epoch'] == 2
    assert final_state(hd5_run)['update'] == {'generator_steps': 4, 'critic_steps': 0}
    # the sample grid: 8 test examples (no masks) and their captions, from the file
    assert Image.open(hd5_run / 'samples' / 'epoch_001.png').size == (64, 64 * 8)
    captions = (hd5_run / 'samples' / 'captions.txt').read_text().splitlines()
    assert set(captions) == {c for _, _, c in written['test'].values()}
    assert any(p.name.startswith('events.out.tfevents') for p in (hd5_run / 'log').iterdir())


def _weights(state):
    return {f'{n}.{k}': v for n in ('netG', 'netD') for k, v in state[n].items()}


@pytest.mark.parametrize('loss, stop', [('gan', 2), ('wgan', 3), ('wgan_gp', 3), ('minibatch', 2)])
def test_hd5_resume_is_bit_identical(hd5_file, tmp_path, loss, stop):
    """Two steps (GAN, GAN with minibatch discrimination) or three (WGAN and WGAN-GP with
    N_CRITIC 2: stopped after the first critic step of the second G step) then RESTORE gives
    the weights, optimisers and counters of one run."""
    path, _ = hd5_file
    extra = {'GAN_INT_CLS.LOSS': loss}
    if loss == 'minibatch':
        extra = {'GAN_INT_CLS.MINIBATCH_KERNELS': 3}
    if loss == 'wgan':
        extra.update({'GAN_INT_CLS.N_CRITIC': 2, 'GAN_INT_CLS.CRITIC_BURST': False})
    if loss == 'wgan_gp':     # no burst in WGAN-GP's schedule, whatever CRITIC_BURST says
        extra.update({'GAN_INT_CLS.N_CRITIC': 2, 'GAN_INT_CLS.D_BATCH_NORM': False})
    assert gan_main(False, hd5_argv(path, tmp_path / 'straight', **extra)) == 0
    assert gan_main(False, hd5_argv(path, tmp_path / 'split', **extra, **{'TRAIN.MAX_STEPS': stop})) == 0
    stopped = final_state(only_run(tmp_path / 'split'))
    assert stopped['progress']['next_step'] == stop
    if loss.startswith('wgan'):
        assert stopped['update'] == {'generator_steps': 1, 'critic_steps': 1}
    assert gan_main(False, hd5_argv(path, tmp_path / 'split', 'RESTORE=True', **extra)) == 0
    a, b = final_state(only_run(tmp_path / 'straight')), final_state(only_run(tmp_path / 'split'))
    assert a['update'] == b['update'] == ({'generator_steps': 2, 'critic_steps': 0} if loss.startswith('wgan')
                                          else {'generator_steps': 4, 'critic_steps': 0})
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for opt in ('optimizerG', 'optimizerD'):
        sa, sb = a[opt]['state'], b[opt]['state']
        assert all(torch.equal(sa[i]['exp_avg'], sb[i]['exp_avg']) for i in sa)
    if loss == 'wgan':   # the critic's weights are clipped
        assert max(v.abs().max().item() for k, v in a['netD'].items() if 'running' not in k
                   and 'num_batches' not in k) <= 0.01
    if loss == 'wgan_gp':   # not clipped; no batch norm in the critic's conv stack
        assert max(v.abs().max().item() for v in a['netD'].values()) > 0.01
        assert not any(k.startswith('netD_1.') and 'running_mean' in k for k in a['netD'])
    if loss == 'minibatch':
        assert a['netD']['minibatch.T_tensor'].shape == (2 * 8 * 16, 3 * 5)


# ----------------------------------------------------------------------------- the implementation's files
def _as_implementation_file(ours: Path, theirs: Path, scale: float = 1.0) -> dict:
    """Our network file as the implementation saves it: through DataParallel ('module.'),
    without num_batches_tracked; float weights times ``scale`` (to tell two files apart)."""
    state = torch.load(ours, weights_only=True)
    saved = {'module.' + k: (v * scale if v.is_floating_point() else v) for k, v in state.items()
             if not k.endswith('num_batches_tracked')}
    theirs.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, theirs)
    return {k[len('module.'):]: v for k, v in saved.items()}


def _trainer(path, out, **extra):
    return GANTrainer(load_config(str(ROOT / 'cfg' / 'flowers_gan_int_cls.yml'),
                                  hd5_argv(path, out, **extra)[2:]).freeze())


def _same_weights(net, state):
    have = net.state_dict()
    return all(torch.equal(have[k], v) for k, v in state.items())


def test_implementation_files_start_training_with_the_epoch_of_their_name(hd5_file, hd5_run, tmp_path, capsys):
    path, _ = hd5_file
    impl = tmp_path / 'impl'
    g = _as_implementation_file(hd5_run / 'models' / 'netG_001.pth', impl / 'gen_4.pth')
    d = _as_implementation_file(hd5_run / 'models' / 'netD_001.pth', impl / 'disc_4.pth', scale=0.5)
    # gen_4.pth is saved after the implementation's epoch 4 counted from 0: five epochs are done
    trainer = _trainer(path, tmp_path / 'out', **{'TRAIN.NET_G': impl / 'gen_4.pth'})
    assert trainer.start.kind == 'weights' and trainer.start.epoch == 6
    assert _same_weights(trainer.nets['netG'], g) and _same_weights(trainer.nets['netD'], d)
    assert gan_main(False, hd5_argv(path, tmp_path / 'out', **{'TRAIN.NET_G': impl / 'gen_4.pth',
                                                                'TRAIN.MAX_EPOCH': 6})) == 0
    run = only_run(tmp_path / 'out')
    assert sorted(p.name for p in (run / 'models').glob('net*.pth')) == ['netD_006.pth', 'netG_006.pth']
    # TRAIN.NET_D: a discriminator file of any accepted name and place; ours here, its own scale
    other_d = tmp_path / 'elsewhere' / 'D.pth'
    other_d.parent.mkdir()
    torch.save(torch.load(hd5_run / 'models' / 'netD_001.pth', weights_only=True), other_d)
    trainer = _trainer(path, tmp_path / 'out2', **{'TRAIN.NET_G': impl / 'gen_4.pth', 'TRAIN.NET_D': other_d})
    assert _same_weights(trainer.nets['netD'], torch.load(other_d, weights_only=True))
    # a generator file whose name records no epoch starts at epoch 1
    (impl / 'G.pth').write_bytes((impl / 'gen_4.pth').read_bytes())
    trainer = _trainer(path, tmp_path / 'out2', **{'TRAIN.NET_G': impl / 'G.pth', 'TRAIN.NET_D': impl / 'disc_4.pth'})
    assert trainer.start.epoch == 1 and _same_weights(trainer.nets['netD'], d)
    # generation from the implementation's file, into a folder named after it
    argv = hd5_argv(path, tmp_path, 'B_VALIDATION=True', f'TRAIN.NET_G={impl / "gen_4.pth"}', 'SAMPLE.NUM=3')
    assert gan_main(False, argv) == 0
    assert len((impl / 'gen_4' / 'valid' / 'manifest.jsonl').read_text().splitlines()) == 3
    capsys.readouterr()


def test_a_generator_without_its_discriminator_stops_or_starts_d_afresh(hd5_file, hd5_run, tmp_path, capsys):
    path, _ = hd5_file
    lone = tmp_path / 'lone'
    _as_implementation_file(hd5_run / 'models' / 'netG_001.pth', lone / 'gen_0.pth')
    ours = lone / 'netG_003.pth'
    ours.write_bytes((hd5_run / 'models' / 'netG_001.pth').read_bytes())
    for netg, expected in ((lone / 'gen_0.pth', lone / 'disc_0.pth'), (ours, lone / 'netD_003.pth')):
        assert gan_main(False, hd5_argv(path, tmp_path / 'out', **{'TRAIN.NET_G': netg})) == 2
        err = capsys.readouterr().err
        assert err == (f"main.py: error: continuing from '{netg}' needs '{expected}' beside it or "
                       f"TRAIN.NET_D=<its file>; TRAIN.FRESH_NET_D=True starts the netD afresh instead\n")
        assert not (tmp_path / 'out').exists()
    # with the key: one warning naming the file it looked for, then D starts afresh
    with pytest.warns(UserWarning) as caught:
        trainer = _trainer(path, tmp_path / 'out', **{'TRAIN.NET_G': ours, 'TRAIN.FRESH_NET_D': True})
    (warning,) = [w for w in caught if 'FRESH_NET_D' in str(w.message)]
    assert str(warning.message) == (f"'{ours}' continues with a freshly initialised netD (TRAIN.FRESH_NET_D=True): "
                                    f"no file '{lone / 'netD_003.pth'}'")
    assert trainer.start.epoch == 4
    assert gan_main(False, hd5_argv(path, tmp_path / 'out', **{'TRAIN.NET_G': ours, 'TRAIN.FRESH_NET_D': True,
                                                                'TRAIN.MAX_EPOCH': 4})) == 0
    assert (only_run(tmp_path / 'out') / 'models' / 'netD_004.pth').is_file()
    capsys.readouterr()
    # a TRAIN.NET_D that is not there, or one without a generator file to go with
    missing = tmp_path / 'no' / 'disc_9.pth'
    assert gan_main(False, hd5_argv(path, tmp_path / 'o2', **{'TRAIN.NET_G': ours, 'TRAIN.NET_D': missing})) == 2
    assert capsys.readouterr().err == f"main.py: error: TRAIN.NET_D='{missing}' not found\n"
    assert gan_main(False, hd5_argv(path, tmp_path / 'o2', **{'TRAIN.NET_D': lone / 'gen_0.pth'})) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "TRAIN.NET_D='" in err and 'set TRAIN.NET_G to the generator file' in err
    assert gan_main(False, hd5_argv(path, tmp_path / 'o2', **{'TRAIN.NET_G': hd5_run, 'TRAIN.NET_D': ours})) == 2
    assert 'is a training state, which holds its discriminator already' in capsys.readouterr().err
    assert not (tmp_path / 'o2').exists()


def test_hd5_generation_manifest_and_scores(hd5_file, hd5_run, tmp_path, capsys):
    path, written = hd5_file
    netg = hd5_run / 'models' / 'netG_001.pth'
    out = tmp_path / 'valid'
    evals = {'EVAL.RANDOM_WEIGHTS': True, 'EVAL.FID_DIMS': 64, 'EVAL.BATCH_SIZE': 8, 'EVAL.SPLITS': 2,
             'EVAL.CACHE_DIR': tmp_path / 'cache'}
    argv = hd5_argv(path, tmp_path, 'B_VALIDATION=True', f'TRAIN.NET_G={netg}', 'SAMPLE.NUM=10',
                    f'SAMPLE.OUT_DIR={out}', **evals)
    assert gan_main(False, argv) == 0
    lines = [json.loads(s) for s in (out / 'manifest.jsonl').read_text().splitlines()]
    assert [e['file'] for e in lines] == [f'img_s{n}.png' for n in range(10)]
    test = written['test']
    for e in lines:    # each image from a test example's embedding, with its caption
        assert e['mask'] is None and e['caption'] == test[e['key']][2] and e['caption_index'] == 0
        assert Image.open(out / e['file']).size == (64, 64)
    assert len({e['key'] for e in lines}) == len(test)
    assert gan_main(False, argv) == 0                    # complete folder: nothing regenerated
    assert len((out / 'manifest.jsonl').read_text().splitlines()) == 10

    assert eval_main('IS', ['--cfg', argv[1], '--images', str(out), *argv[2:]]) == 0
    result = json.loads((out / 'is.json').read_text())
    assert result['count'] == 10 and result['value'] >= 1.0 - 1e-9 and 'r_precision' not in result
    assert eval_main('FID', ['--cfg', argv[1], '--images', str(out), *argv[2:]]) == 0
    fid = json.loads((out / 'fid.json').read_text())
    # the reference is the test split's images, once each (the file holds two examples an image)
    assert fid['value'] > 0 and fid['reference']['count'] == len(HD5_IMAGES)
    capsys.readouterr()

    assert gan_main(False, argv + ['--caption', 'a red flower']) == 2
    err = capsys.readouterr().err
    assert err.startswith('main.py: error: --caption/--captions need a text encoder') and 'DATA.HD5_FILE' in err
    assert err.count('\n') == 1


def test_generation_enlarges_images_and_never_mixes_sizes(hd5_file, hd5_run, tmp_path, capsys):
    path, _ = hd5_file
    netg = hd5_run / 'models' / 'netG_001.pth'
    weights = tmp_path / 'srcnn_x2.pth'
    torch.save(identity_srcnn(), weights)
    argv = hd5_argv(path, tmp_path, 'B_VALIDATION=True', f'TRAIN.NET_G={netg}', 'SAMPLE.NUM=4',
                    'SAMPLE.UPSCALE=2', 'SAMPLE.UPSCALE_METHOD=srcnn', f'SAMPLE.SRCNN_WEIGHTS={weights}')
    assert gan_main(False, argv) == 0
    out = hd5_run / 'models' / 'netG_001' / 'valid_srcnn_x2'
    big = [np.asarray(Image.open(out / f'img_s{n}.png')) for n in range(4)]
    assert all(b.shape == (128, 128, 3) for b in big)
    # the same images as plain generation, enlarged: an identity SRCNN is PIL's bicubic within 1
    plain = tmp_path / 'plain'
    assert gan_main(False, hd5_argv(path, tmp_path, 'B_VALIDATION=True', f'TRAIN.NET_G={netg}', 'SAMPLE.NUM=4',
                                    f'SAMPLE.OUT_DIR={plain}')) == 0
    for n in range(4):
        small = Image.open(plain / f'img_s{n}.png')
        expected = np.asarray(small.resize((128, 128), Image.BICUBIC)).astype(int)
        assert np.abs(big[n].astype(int) - expected).max() <= 1
    # a folder keeps one size and method: more images of the other kind are refused
    capsys.readouterr()
    assert gan_main(False, hd5_argv(path, tmp_path, 'B_VALIDATION=True', f'TRAIN.NET_G={netg}', 'SAMPLE.NUM=6',
                                    f'SAMPLE.OUT_DIR={plain}', 'SAMPLE.UPSCALE=2')) == 2
    err = capsys.readouterr().err
    assert err == (f"main.py: error: '{plain}' holds images made with no enlargement, not with "
                   f"{{'upscale': 2, 'method': 'bicubic'}}; choose another SAMPLE.OUT_DIR or remove that folder\n")
    assert len((plain / 'manifest.jsonl').read_text().splitlines()) == 4


def test_bad_hd5_file_exits_2_naming_file_split_and_field(hd5_file, tmp_path, capsys):
    bad = tmp_path / 'bad.hdf5'
    write_hd5(bad)
    with h5py.File(bad, 'a') as f:
        first = sorted(f['train'].keys())[0]        # checked when the data set is built
        del f['train'][first]['embeddings']
    assert gan_main(False, hd5_argv(bad, tmp_path / 'out')) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('main.py: error: ')
    assert f"hd5 file '{bad}', split 'train', example '{first}': missing field 'embeddings'" in err
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').iterdir())

    path, _ = hd5_file
    assert gan_main(False, hd5_argv(path, tmp_path / 'out', **{'DATA.HD5_TEST_SPLIT': 'validation'})) == 2
    err = capsys.readouterr().err
    assert f"hd5 file '{path}' has no split 'validation' (it has: test, train, valid)" in err
    assert gan_main(False, hd5_argv(path, tmp_path / 'out', **{'DATA.HD5_EMBEDDING_DIM': 1024})) == 2
    assert "field 'embeddings' has size 16 but DATA.HD5_EMBEDDING_DIM is 1024" in capsys.readouterr().err
    # a family that needs the DAMSM word features cannot train on embeddings alone
    assert gan_main(False, hd5_argv(path, tmp_path / 'out', **{'MODEL.NAME': 'ssagan'})) == 2
    err = capsys.readouterr().err
    assert "MODEL.NAME='ssagan' needs the DAMSM encoders' word features: use MODEL.NAME 'gan_int_cls'" in err
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').iterdir())
    # in-training scores need the DAMSM test captions, which an hd5 file does not carry
    assert gan_main(False, hd5_argv(path, tmp_path / 'out', **{'EVAL.INTERVAL': 1})) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert f"EVAL.INTERVAL=1 scores with the DAMSM text encoder's test captions, but DATA.HD5_FILE='{path}'" in err
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').iterdir())


# ----------------------------------------------------------------------------- DAMSM conditioning
@pytest.fixture(scope='module')
def birds(tmp_path_factory):
    """8 train / 4 test synthetic birds and random DAMSM encoders for their vocabulary."""
    return make_synthetic_with_encoders(tmp_path_factory.mktemp('gic_birds'), 8, 4, seed=3, epoch=5)


def birds_argv(root, *args, **extra):
    base = {'DATASET_NAME': 'synthetic_birds', 'DATA_DIR': root / 'synthetic_birds', 'OUTPUT_DIR': root / 'out',
            'TEXT.DAMSM_NAME': root / 'enc' / 'text_encoder5.pth', 'TRAIN.BATCH_SIZE': 4, 'TRAIN.MAX_EPOCH': 2,
            'TRAIN.GSAVE_INTERVAL': 1, 'TRAIN.DSAVE_INTERVAL': 1, 'GAN_INT_CLS.NGF': 2, 'GAN_INT_CLS.NDF': 2,
            'GAN_INT_CLS.PROJECTED_DIM': 4, 'WORKERS': 0, 'DEVICE': 'cpu', 'SYNTHETIC.NUM_TRAIN': 8,
            'SYNTHETIC.NUM_TEST': 4, 'SYNTHETIC.IMAGE_SIZE': 128, 'SYNTHETIC.SEED': 3}
    base.update(extra)
    return (['--cfg', str(ROOT / 'cfg' / 'bird_gan_int_cls.yml'), *map(str, args)]
            + [f'{k}={v}' for k, v in base.items()])


def test_damsm_conditioned_run_generation_and_user_captions(birds, capsys):
    assert gan_main(False, birds_argv(birds)) == 0
    run = only_run(birds / 'out')
    names = sorted(p.name for p in (run / 'models').iterdir())
    assert names == ['netD_001.pth', 'netD_002.pth', 'netG_001.pth', 'netG_002.pth',
                     'state_last.json', 'state_last.pth']
    cfg = load_config(str(ROOT / 'cfg' / 'bird_gan_int_cls.yml'), birds_argv(birds)[2:])
    netg = build_networks(cfg)['netG']
    assert netg.projection[0].in_features == 256                  # the DAMSM sentence code
    load_model_state(netg, str(run / 'models' / 'netG_002.pth'))
    assert final_state(run)['progress']['global_step'] == 4
    assert Image.open(run / 'samples' / 'epoch_002.png').size == (64, 64 * 4)

    netg_path = run / 'models' / 'netG_002.pth'
    argv = birds_argv(birds, 'B_VALIDATION=True', f'TRAIN.NET_G={netg_path}', 'SAMPLE.NUM=6')
    assert gan_main(False, argv) == 0
    out = run / 'models' / 'netG_002' / 'valid'
    lines = [json.loads(s) for s in (out / 'manifest.jsonl').read_text().splitlines()]
    assert [e['file'] for e in lines] == [f'img_s{n}.png' for n in range(6)]
    assert all(e['mask'] is None and e['caption'] and Image.open(out / e['file']).size == (64, 64)
               for e in lines)
    with open(birds / 'synthetic_birds' / 'test' / 'filenames.pickle', 'rb') as f:
        test_keys = pickle.load(f)
    assert [e['key'] for e in lines] == [test_keys[n % 4] for n in range(6)]   # the test captions' plan

    capsys.readouterr()
    assert gan_main(False, argv + ['--caption', 'a red bird with blue wings', '--caption', 'a green bird']) == 0
    grid = Image.open(run / 'models' / 'netG_002' / 'captions' / 'captions_grid.png')
    assert grid.size == (64, 64 * 8)                               # 4 images per caption, no masks
    assert gan_main(False, argv + ['--caption', 'a green bird', 'SAMPLE.UPSCALE=3']) == 0
    grid = Image.open(run / 'models' / 'netG_002' / 'captions_bicubic_x3' / 'captions_grid.png')
    assert grid.size == (192, 192 * 4)
