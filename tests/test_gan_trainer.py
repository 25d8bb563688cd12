"""Training end to end on tiny synthetic data: both entry points, checkpoints in the official
format, generation with a manifest, exact resume, non-finite losses, DDP with gloo."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from helpers import make_synthetic_with_encoders, set_driver_clock, torchrun_worker_pids
from miscc.core.checkpoint import load_model_state
from miscc.cli import gan_main
from miscc.core.config import load_config
from miscc.families import build_networks
from miscc.training.driver import NonFiniteLossError
from miscc.training.gan import GANTrainer, resolve_resume
from models import RNN_ENCODER

ROOT = Path(__file__).resolve().parents[1]

# every test here trains or generates end to end: seconds to minutes each
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory):
    """8 train / 4 test synthetic birds and random DAMSM encoders for their vocabulary."""
    root = make_synthetic_with_encoders(tmp_path_factory.mktemp('train'), 8, 4, seed=3, epoch=5)
    return root


def overrides(root, out='out', **extra):
    base = {'DATASET_NAME': 'synthetic_birds', 'DATA_DIR': root / 'synthetic_birds', 'OUTPUT_DIR': root / out,
            'TEXT.DAMSM_NAME': root / 'enc' / 'text_encoder5.pth', 'TREE.BASE_SIZE': 64, 'TRAIN.NF': 2,
            'TRAIN.BATCH_SIZE': 4, 'TRAIN.MAX_EPOCH': 2, 'TRAIN.WARMUP_EPOCHS': 0,
            'TRAIN.GSAVE_INTERVAL': 1, 'TRAIN.DSAVE_INTERVAL': 1, 'WORKERS': 0, 'DEVICE': 'cpu',
            'SYNTHETIC.NUM_TRAIN': 8, 'SYNTHETIC.NUM_TEST': 4, 'SYNTHETIC.IMAGE_SIZE': 128, 'SYNTHETIC.SEED': 3}
    base.update(extra)
    return ['--cfg', str(ROOT / 'cfg' / 'bird.yml')] + [f'{k}={v}' for k, v in base.items()]


def run_dirs(root, out='out'):
    return sorted((root / out).iterdir())


@pytest.fixture(scope='module')
def main_run(tiny_setup):
    """Two epochs of main.py (2 steps each)."""
    assert gan_main(False, overrides(tiny_setup)) == 0
    (run,) = run_dirs(tiny_setup)
    return run


def test_main_writes_official_checkpoints_state_samples_and_log(tiny_setup, main_run):
    names = sorted(p.name for p in (main_run / 'models').iterdir())
    assert names == ['netD_001.pth', 'netD_002.pth', 'netG_001.pth', 'netG_002.pth',
                     'state_last.json', 'state_last.pth']
    cfg = load_config(*_split(overrides(tiny_setup)))
    for name, net in (('netG_002.pth', 'netG'), ('netD_002.pth', 'netD')):
        state = torch.load(main_run / 'models' / name, weights_only=True)
        assert not any(k.startswith('module.') for k in state)
        fresh = build_networks(cfg)[net]
        fresh.load_state_dict(state, strict=True)       # as the official code loads it
        load_model_state(build_networks(cfg)[net], str(main_run / 'models' / name))
    progress = json.loads((main_run / 'models' / 'state_last.json').read_text())
    assert progress == {'epoch': 2, 'next_epoch': 3, 'next_step': 0, 'global_step': 4, 'finetune': False}
    grid = Image.open(main_run / 'samples' / 'epoch_002.png')
    assert grid.size == (64 * 6, 64 * 4)   # image + 5 masks per row, 4 fixed test captions
    assert len((main_run / 'samples' / 'captions.txt').read_text().splitlines()) == 4
    assert any(p.name.startswith('events.out.tfevents') for p in (main_run / 'log').iterdir())


def _split(argv):
    return argv[1], argv[2:]


def test_generation_writes_images_masks_and_manifest(tiny_setup, main_run):
    netg = main_run / 'models' / 'netG_002.pth'
    argv = overrides(tiny_setup, **{'B_VALIDATION': True, 'TRAIN.NET_G': netg, 'SAMPLE.NUM': 6,
                                    'SAMPLE.BATCH_SIZE': 4})
    assert gan_main(False, argv) == 0
    out = main_run / 'models' / 'netG_002' / 'valid'
    lines = [json.loads(x) for x in (out / 'manifest.jsonl').read_text().splitlines()]
    from datasets import TextDataset
    test = TextDataset(str(tiny_setup / 'synthetic_birds'), 'test', image_size=64, dataset_name='synthetic_birds')
    assert [e['file'] for e in lines] == [f'img_s{n}.png' for n in range(6)]
    # cycles through the 4 test keys, then their next caption
    assert [(e['key'], e['caption_index']) for e in lines] == [(test.filenames[n % 4], n // 4) for n in range(6)]
    for e in lines:
        img, mask = Image.open(out / e['file']), Image.open(out / e['mask'])
        assert img.size == (64, 64) and img.mode == 'RGB' and mask.size == (64, 64) and mask.mode == 'L'
        words = e['caption'].split()
        assert words and all(w in test.wordtoix for w in words)
    first = (out / 'img_s0.png').read_bytes()
    # running again with a larger SAMPLE.NUM continues after the existing images
    argv = overrides(tiny_setup, **{'B_VALIDATION': True, 'TRAIN.NET_G': netg, 'SAMPLE.NUM': 9})
    assert gan_main(False, argv) == 0
    assert len((out / 'manifest.jsonl').read_text().splitlines()) == 9
    assert (out / 'img_s0.png').read_bytes() == first


def test_generation_into_a_file_is_refused_before_any_image(tiny_setup, main_run, tmp_path, capsys):
    netg = main_run / 'models' / 'netG_002.pth'
    (tmp_path / 'afile').write_text('x')
    for extra in ([], ['--caption', 'a red bird']):
        argv = overrides(tiny_setup, **{'B_VALIDATION': True, 'TRAIN.NET_G': netg, 'SAMPLE.NUM': 4,
                                        'SAMPLE.OUT_DIR': tmp_path / 'afile' / 'valid'})
        assert gan_main(False, argv + extra) == 2         # was "[Errno 17] File exists" / NotADirectoryError
        assert (f"SAMPLE.OUT_DIR='{tmp_path / 'afile' / 'valid'}': '{tmp_path / 'afile'}' is a file, not a folder"
                in capsys.readouterr().err)
    assert (tmp_path / 'afile').read_text() == 'x'


def test_a_full_disk_while_generating_says_how_many_images_are_complete(tiny_setup, main_run, tmp_path,
                                                                         monkeypatch, capsys):
    """The disk fills at the 7th image file: exit 3, one line after the progress bar that says
    how many images are complete, and the same command then finishes the folder."""
    import errno
    import miscc.evaluation.outputs
    from miscc.core.files import atomic_write
    real_save_png, calls = miscc.evaluation.outputs.save_png, []

    def filling_save_png(array, path):
        calls.append(path)
        if len(calls) == 7:       # as a real full disk: the write of the file fails
            with atomic_write(path, 'wb') as f:
                f.write(b'\0' * 100)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save_png(array, path)
    monkeypatch.setattr(miscc.evaluation.outputs, 'save_png', filling_save_png)
    out = tmp_path / 'gen'
    argv = overrides(tiny_setup, **{'B_VALIDATION': True, 'TRAIN.NET_G': main_run / 'models' / 'netG_002.pth',
                                    'SAMPLE.NUM': 8, 'SAMPLE.BATCH_SIZE': 2, 'SAMPLE.OUT_DIR': out, 'WORKERS': 1})
    capsys.readouterr()
    assert gan_main(False, argv) == 3
    err = capsys.readouterr().err
    # 6 files = 3 images with their masks, written by batches of 2: the first batch of 2 is complete
    assert err.endswith(f"no partial file was left. Free some space and run again: 2 of 8 images are complete in "
                        f"{out} (manifest.jsonl) and the same command continues after them\n")
    assert err.splitlines()[-1].startswith('main.py: error: disk full: could not write ')
    assert len((out / 'manifest.jsonl').read_text().splitlines()) == 2
    monkeypatch.setattr(miscc.evaluation.outputs, 'save_png', real_save_png)
    assert gan_main(False, argv) == 0
    assert len((out / 'manifest.jsonl').read_text().splitlines()) == 8


def test_generation_from_user_captions(tiny_setup, main_run, capsys):
    netg = main_run / 'models' / 'netG_002.pth'
    argv = overrides(tiny_setup, **{'B_VALIDATION': True, 'TRAIN.NET_G': netg, 'SAMPLE.PER_CAPTION': 2})
    with pytest.warns(UserWarning, match='unknown words dropped: zebra'):
        assert gan_main(False, argv + ['--caption', 'a red bird with zebra wings', '--caption', 'blue bird']) == 0
    grid = Image.open(main_run / 'models' / 'netG_002' / 'captions' / 'captions_grid.png')
    assert grid.size == (64 * 6, 64 * 4)
    assert gan_main(False, argv + ['--caption', 'qwerty zxcv']) == 2
    assert "caption 'qwerty zxcv' has no word of the vocabulary" in capsys.readouterr().err


def test_finetune_trains_encoders_and_saves_them(tiny_setup, main_run):
    netg = main_run / 'models' / 'netG_002.pth'
    argv = overrides(tiny_setup, out='ft', **{'TRAIN.NET_G': netg, 'TRAIN.MAX_EPOCH': 3})
    assert gan_main(True, argv) == 0
    (run,) = run_dirs(tiny_setup, 'ft')
    names = sorted(p.name for p in (run / 'models').iterdir())
    # continues from epoch 2: epoch 3 only
    assert names == ['image_encoder_003.pth', 'netD_003.pth', 'netG_003.pth', 'state_last.json',
                     'state_last.pth', 'text_encoder_003.pth']
    start_text = torch.load(tiny_setup / 'enc' / 'text_encoder5.pth', weights_only=True)
    tuned_text = torch.load(run / 'models' / 'text_encoder_003.pth', weights_only=True)
    assert list(tuned_text) == list(start_text)
    assert not torch.equal(tuned_text['rnn.weight_hh_l0'], start_text['rnn.weight_hh_l0'])
    start_img = torch.load(tiny_setup / 'enc' / 'image_encoder5.pth', weights_only=True)
    tuned_img = torch.load(run / 'models' / 'image_encoder_003.pth', weights_only=True)
    assert not torch.equal(tuned_img['emb_cnn_code.weight'], start_img['emb_cnn_code.weight'])
    assert torch.equal(tuned_img['Mixed_7c.branch1x1.conv.weight'], start_img['Mixed_7c.branch1x1.conv.weight'])
    start_g = torch.load(netg, weights_only=True)
    tuned_g = torch.load(run / 'models' / 'netG_003.pth', weights_only=True)
    assert not torch.equal(tuned_g['fc.weight'], start_g['fc.weight'])
    # generation from a fine-tuned generator uses its own text encoder
    argv = overrides(tiny_setup, out='ft', **{'B_VALIDATION': True, 'SAMPLE.NUM': 2,
                                              'TRAIN.NET_G': run / 'models' / 'netG_003.pth'})
    assert gan_main(True, argv) == 0


def final_weights(run):
    state = torch.load(run / 'models' / 'state_last.pth', weights_only=True)
    return state


def test_resuming_with_another_width_names_the_state_file_and_the_network(tiny_setup, main_run, capsys):
    state = main_run / 'models' / 'state_last.pth'
    before = state.read_bytes()
    argv = overrides(tiny_setup, **{'TRAIN.NET_G': state, 'TRAIN.NF': 4, 'TRAIN.MAX_EPOCH': 3})
    assert gan_main(False, argv) == 2
    err = capsys.readouterr().err.strip()
    # was "'state dict' does not match NetG:" over three lines, naming no file
    assert err.startswith(f"main.py: error: '{state} [netG]' does not match NetG; wrong shapes (")
    assert '\n' not in err and 'TRAIN.NF' in err and state.read_bytes() == before


def test_exact_resume_gives_bit_identical_weights(tiny_setup):
    assert gan_main(False, overrides(tiny_setup, out='straight')) == 0
    # stop after 3 steps (in the middle of epoch 2), then resume
    assert gan_main(False, overrides(tiny_setup, out='split', **{'TRAIN.MAX_STEPS': 3})) == 0
    (split,) = run_dirs(tiny_setup, 'split')
    assert json.loads((split / 'models' / 'state_last.json').read_text())['next_step'] == 1
    assert gan_main(False, overrides(tiny_setup, out='split', **{'RESTORE': True})) == 0
    assert len(run_dirs(tiny_setup, 'split')) == 1          # continued in the same run folder
    (straight,) = run_dirs(tiny_setup, 'straight')
    a, b = final_weights(straight), final_weights(split)
    for part in ('netG', 'netD'):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f'{part}.{k}'
    for opt in ('optimizerG', 'optimizerD'):
        for i, s in a[opt]['state'].items():
            for k in ('exp_avg', 'exp_avg_sq'):
                assert torch.equal(s[k], b[opt]['state'][i][k])
    assert (split / 'models' / 'netG_002.pth').read_bytes() != b''


EMA = {'TRAIN.G_EMA': True, 'TRAIN.G_EMA_DECAY': 0.5}


def test_g_ema_saved_with_official_keys_leaves_g_unchanged_and_resumes_exactly(tiny_setup, main_run):
    assert gan_main(False, overrides(tiny_setup, out='ema', **EMA)) == 0
    (run,) = run_dirs(tiny_setup, 'ema')
    models = run / 'models'
    assert sorted(p.name for p in models.glob('netG*')) == ['netG_001.pth', 'netG_002.pth',
                                                            'netG_ema_001.pth', 'netG_ema_002.pth']
    cfg = load_config(*_split(overrides(tiny_setup)))
    ema = torch.load(models / 'netG_ema_002.pth', weights_only=True)
    build_networks(cfg)['netG'].load_state_dict(ema, strict=True)
    live = torch.load(models / 'netG_002.pth', weights_only=True)
    # the average is not G, and G itself is exactly the G of the run without the average
    assert any(not torch.equal(ema[k], live[k]) for k in live if ema[k].is_floating_point())
    bn = 'block0.affine0.batch_norm2d.running_mean'                # BatchNorm statistics are averaged too
    assert not torch.equal(ema[bn], live[bn])
    official = torch.load(main_run / 'models' / 'netG_002.pth', weights_only=True)
    assert all(torch.equal(live[k], official[k]) for k in official)
    state = final_weights(run)
    assert state['netG_ema']['updates'] == 4
    assert all(torch.equal(state['netG_ema']['module'][k], ema[k]) for k in ema)

    # interrupted after 3 steps and resumed == uninterrupted, the average included
    assert gan_main(False, overrides(tiny_setup, out='ema_split', **dict(EMA, **{'TRAIN.MAX_STEPS': 3}))) == 0
    assert gan_main(False, overrides(tiny_setup, out='ema_split', **dict(EMA, RESTORE=True))) == 0
    (split,) = run_dirs(tiny_setup, 'ema_split')
    resumed = final_weights(split)
    assert resumed['netG_ema']['updates'] == 4
    for k, v in state['netG_ema']['module'].items():
        assert torch.equal(v, resumed['netG_ema']['module'][k]), k
    again = torch.load(split / 'models' / 'netG_ema_002.pth', weights_only=True)
    assert all(torch.equal(again[k], ema[k]) for k in ema)


def test_generation_samples_from_the_average_with_g_ema(tiny_setup, main_run, capsys):
    assert gan_main(False, overrides(tiny_setup, out='ema_gen', **EMA)) == 0
    (run,) = run_dirs(tiny_setup, 'ema_gen')
    netg = run / 'models' / 'netG_002.pth'
    argv = overrides(tiny_setup, out='ema_gen', **dict(EMA, **{'B_VALIDATION': True, 'TRAIN.NET_G': netg,
                                                               'SAMPLE.NUM': 2}))
    assert gan_main(False, argv) == 0
    assert f"sampling from {run / 'models' / 'netG_ema_002.pth'}" in capsys.readouterr().out
    record = json.loads((run / 'models' / 'netG_ema_002' / 'valid' / 'generator.json').read_text())
    assert record['generator'].endswith('netG_ema_002.pth')
    assert not (run / 'models' / 'netG_002' / 'valid').exists()
    # G_EMA=True on a run saved without the average: the missing file is named
    argv = overrides(tiny_setup, **dict(EMA, **{'B_VALIDATION': True, 'SAMPLE.NUM': 2,
                                                'TRAIN.NET_G': main_run / 'models' / 'netG_002.pth'}))
    assert gan_main(False, argv) == 2
    err = capsys.readouterr().err
    assert 'netG_ema_002.pth' in err and 'TRAIN.G_EMA=False' in err


def test_non_finite_loss_stops_without_overwriting(tiny_setup, main_run, monkeypatch):
    import miscc.families.ssagan
    out = tiny_setup / 'nan'
    assert gan_main(False, overrides(tiny_setup, out='nan', **{'TRAIN.MAX_EPOCH': 1})) == 0
    (run,) = run_dirs(tiny_setup, 'nan')
    before = {p.name: p.read_bytes() for p in (run / 'models').iterdir()}

    def exploding(logits):
        return logits.mean() * float('nan')
    monkeypatch.setattr(miscc.families.ssagan, 'generator_adversarial_loss', exploding)
    with pytest.raises(NonFiniteLossError, match=r'epoch 2, step 1 \(global step 3\): .*errG=nan'):
        gan_main(False, overrides(tiny_setup, out='nan', **{'RESTORE': True}))
    after = {p.name: p.read_bytes() for p in (run / 'models').iterdir()}
    assert after == before
    assert out.exists()


def test_resolve_resume_rules(tiny_setup, main_run):
    cfg = load_config(*_split(overrides(tiny_setup))).clone()
    assert resolve_resume(cfg, False) == ('none', '')
    cfg.RESTORE = True
    assert resolve_resume(cfg, False) == ('state', str(main_run / 'models' / 'state_last.pth'))
    cfg.TRAIN.NET_G = str(main_run)
    assert resolve_resume(cfg, False)[0] == 'state'
    cfg.TRAIN.NET_G = str(main_run / 'models' / 'netG_002.pth')   # the state ended at epoch 2
    assert resolve_resume(cfg, False) == ('state', str(main_run / 'models' / 'state_last.pth'))
    cfg.TRAIN.NET_G = str(main_run / 'models' / 'netG_001.pth')   # older epoch: weights only
    assert resolve_resume(cfg, False) == ('weights', str(main_run / 'models' / 'netG_001.pth'))
    cfg.TRAIN.NET_G = str(tiny_setup / 'missing.pth')
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        resolve_resume(cfg, False)
    cfg.TRAIN.NET_G = ''
    cfg.OUTPUT_DIR = str(tiny_setup / 'nowhere')
    with pytest.raises(FileNotFoundError, match='RESTORE=True but no training state'):
        resolve_resume(cfg, False)


def test_missing_damsm_encoder_is_a_clear_error(tiny_setup, capsys):
    argv = overrides(tiny_setup, **{'TEXT.DAMSM_NAME': tiny_setup / 'nope' / 'text_encoder200.pth'})
    assert gan_main(False, argv) == 2
    err = capsys.readouterr().err
    assert 'nope/text_encoder200.pth' in err and 'DAMSMencoders/README.md' in err
    (tiny_setup / 'enc2').mkdir(exist_ok=True)
    torch.save(RNN_ENCODER(5).state_dict(), tiny_setup / 'enc2' / 'text_encoder1.pth')
    argv = overrides(tiny_setup, **{'TEXT.DAMSM_NAME': tiny_setup / 'enc2' / 'text_encoder1.pth'})
    assert gan_main(False, argv) == 2
    err = capsys.readouterr().err
    enc = str(tiny_setup / 'enc2' / 'text_encoder1.pth')
    assert re.search(r'vocabulary of \d+ words but the text encoder ' + re.escape(repr(enc)) + ' expects 5', err)


def test_compiled_generator_trains_and_saves_official_keys(tiny_setup, eager_compile):
    argv = overrides(tiny_setup, out='compiled', **{'TRAIN.MAX_EPOCH': 1, 'TRAIN.FAST': True,
                                                    'TRAIN.FAST_OPTIONS.COMPILE': True})
    assert gan_main(False, argv) == 0
    assert len(eager_compile) == 1
    (run,) = run_dirs(tiny_setup, 'compiled')
    state = torch.load(run / 'models' / 'netG_001.pth', weights_only=True)
    build_networks(load_config(*_split(argv)))['netG'].load_state_dict(state, strict=True)


def test_compile_with_data_parallel_is_a_config_error(tiny_setup, monkeypatch, capsys):
    import miscc.training.gan
    from miscc.core.runtime import DeviceSetup
    monkeypatch.setattr(miscc.training.gan, 'device_from_config',
                        lambda cfg, local_rank=None: DeviceSetup(torch.device('cpu'), [0, 1]))
    argv = overrides(tiny_setup, out='dp', **{'TRAIN.FAST': True, 'TRAIN.FAST_OPTIONS.COMPILE': True})
    assert gan_main(False, argv) == 2
    err = capsys.readouterr().err
    assert 'TRAIN.FAST_OPTIONS.COMPILE=True' in err and 'torchrun' in err
    assert not (tiny_setup / 'dp').exists()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, argv, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from miscc.cli import config_from_args, parse_args
    trainer = GANTrainer(config_from_args(parse_args(argv, 'test')))
    run_dir = trainer.fit()
    torch.save({'netG': trainer.netG.state_dict(), 'netD': trainer.nets['netD'].state_dict(), 'run_dir': run_dir,
                'steps': trainer.global_step}, os.path.join(out, f'rank{rank}.pth'))
    torch.distributed.destroy_process_group()


def test_ddp_gloo_two_processes_keep_replicas_identical(tiny_setup, tmp_path):
    argv = overrides(tiny_setup, out='ddp')
    mp.start_processes(_ddp_worker, args=(2, _free_port(), argv, str(tmp_path)), nprocs=2, start_method='spawn')
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in range(2))
    assert r0['steps'] == r1['steps'] == 2 * 2 * 2 // 2  # 8 images, 2 per rank: 2 steps x 2 epochs
    for net in ('netG', 'netD'):
        for k, v in r0[net].items():
            if 'running' not in k and 'num_batches' not in k:  # parameters (buffers sync at each forward)
                assert torch.equal(v, r1[net][k]), f'{net}.{k}'
    assert r1['run_dir'] is None and r0['run_dir'] is not None
    (run,) = run_dirs(tiny_setup, 'ddp')                    # rank 0 alone writes
    assert str(run) == r0['run_dir']
    assert sorted(p.name for p in (run / 'models').iterdir())[:2] == ['netD_001.pth', 'netD_002.pth']


# ----------------------------------------------------------------------------- torchrun: resume and faults
def _torchrun(argv, launcher='torch.distributed.run', **kwargs):
    """``torchrun --standalone --nproc_per_node 2 main.py argv`` on CPU (gloo), one thread per process
    (``launcher='miscc.launch'``: the same through this project's launcher)."""
    cmd = [sys.executable, '-m', launcher, '--standalone', '--nproc_per_node', '2', 'main.py'] + argv
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def _wait_for_first_state(out_dir, timeout=300):
    """Until a run under ``out_dir`` has written its first training state (or ``timeout`` s)."""
    deadline = time.time() + timeout
    while not list(out_dir.glob('*/models/state_last.pth')) and time.time() < deadline:
        time.sleep(0.2)


def _finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_torchrun_stop_and_resume_equals_the_uninterrupted_run(tiny_setup):
    """2 processes: a MAX_STEPS stop in epoch 2 then RESTORE=True gives bit-identical weights, as
    each rank's generators are saved and restored (rank 1 used to continue with rank 0's)."""
    rc, out = _finish(_torchrun(overrides(tiny_setup, out='ddp_straight')))
    assert rc == 0, out[-3000:]
    rc, out = _finish(_torchrun(overrides(tiny_setup, out='ddp_split', **{'TRAIN.MAX_STEPS': 3})))
    assert rc == 0 and 'stopped at epoch 2, step 1 (TRAIN.MAX_STEPS=3)' in out, out[-3000:]
    (split,) = run_dirs(tiny_setup, 'ddp_split')
    state = torch.load(split / 'models' / 'state_last.pth', weights_only=True)
    assert state['world_size'] == 2 and sorted(state['rng_ranks']) == [0, 1]
    assert not torch.equal(state['rng_ranks'][0]['torch'], state['rng_ranks'][1]['torch'])
    rc, out = _finish(_torchrun(overrides(tiny_setup, out='ddp_split', RESTORE=True)))
    assert rc == 0 and 'will not equal an uninterrupted run' not in out, out[-3000:]
    (straight,) = run_dirs(tiny_setup, 'ddp_straight')
    a, b = final_weights(straight), final_weights(split)
    assert a['progress'] == b['progress']
    for part in ('netG', 'netD'):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f'{part}.{k}'


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds the worker processes through /proc')
def test_torchrun_kill_9_of_one_rank_ends_the_other_with_a_message_in_bounded_time(tiny_setup):
    out_dir = tiny_setup / 'ddp_kill'
    proc = _torchrun(overrides(tiny_setup, out='ddp_kill', **{'TRAIN.MAX_EPOCH': 100, 'DIST_TIMEOUT': 20}))
    try:
        _wait_for_first_state(out_dir)
        ranks = torchrun_worker_pids(proc.pid)
        assert sorted(ranks) == [0, 1], 'no state after epoch 1 or no workers found'
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.time()
        rc, out = _finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.time() - killed < 90 and rc != 0
    (run,) = run_dirs(tiny_setup, 'ddp_kill')
    assert re.search(r'main.py: error: rank 0: another process of this 2-process run stopped, failed or did not '
                     r'answer within DIST_TIMEOUT=20 s \(at epoch \d+, step \d\), so this one stops too; the last '
                     r'training state in .*ddp_kill.* is intact; resume with RESTORE=True', out), out[-3000:]
    # (torchrun also sends the survivor SIGTERM once a worker died: it may end by that signal or with exit 3)
    torch.load(run / 'models' / 'state_last.pth', weights_only=True)


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds the worker processes through /proc')
def test_sigterm_to_the_launcher_exits_143_with_one_line_and_no_traceback(tiny_setup):
    """torchrun forwards SIGTERM to the workers (they save) and then raises SignalException, a
    traceback and exit 1; ``python -m miscc.launch`` turns that into one line and exit 143."""
    out_dir = tiny_setup / 'ddp_term'
    proc = _torchrun(overrides(tiny_setup, out='ddp_term', **{'TRAIN.MAX_EPOCH': 100}), launcher='miscc.launch')
    try:
        _wait_for_first_state(out_dir)
        assert sorted(torchrun_worker_pids(proc.pid)) == [0, 1], 'no state after epoch 1 or no workers found'
        os.kill(proc.pid, signal.SIGTERM)
        rc, out = _finish(proc, timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 143 and 'Traceback' not in out, out[-3000:]
    assert re.search(r'main.py: interrupted by SIGTERM at (epoch \d+, step \d+ of 2|the end of epoch \d+ of 100): '
                     r'training state saved in ', out), out[-3000:]
    assert out.rstrip().splitlines()[-1] == ('miscc.launch: interrupted by SIGTERM: the workers were asked to stop '
                                             '(their lines above say what they saved); resume with the same command '
                                             'and RESTORE=True')
    (run,) = run_dirs(tiny_setup, 'ddp_term')
    assert torch.load(run / 'models' / 'state_last.pth', weights_only=True)['world_size'] == 2


# ----------------------------------------------------------------------------- how a run ends (exit codes)
def test_sigterm_mid_run_exits_143_with_one_line_and_resumes(tiny_setup):
    out_dir = tiny_setup / 'sigterm'
    cmd = [sys.executable, 'main.py'] + overrides(tiny_setup, out='sigterm', **{'TRAIN.MAX_EPOCH': 100})
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS='ignore'), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_first_state(out_dir)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    (run,) = run_dirs(tiny_setup, 'sigterm')
    (line,) = [ln for ln in err.splitlines() if ln.startswith('main.py:')]
    assert re.fullmatch(rf'main.py: interrupted by SIGTERM (at epoch \d+, step 1 of 2|at the end of epoch \d+ of 100): '
                        rf'training state saved in {re.escape(str(run))}/models; resume with RESTORE=True '
                        rf'TRAIN.NET_G={re.escape(str(run))}', line), line
    progress = json.loads((run / 'models' / 'state_last.json').read_text())
    done = progress['epoch']
    # the state is complete: resuming it to its next epoch's end trains and exits 0
    assert gan_main(False, overrides(tiny_setup, out='sigterm', RESTORE=True,
                                     **{'TRAIN.MAX_EPOCH': done + 1})) == 0
    assert json.loads((run / 'models' / 'state_last.json').read_text())['epoch'] == done + 1


def test_restore_of_a_finished_run_says_so_and_exits_0(tiny_setup, main_run, capsys):
    before = (main_run / 'models' / 'state_last.pth').read_bytes()
    assert gan_main(False, overrides(tiny_setup, RESTORE=True)) == 0
    assert f'{main_run} is already finished: epoch 2 of TRAIN.MAX_EPOCH=2; nothing to train' in capsys.readouterr().out
    assert (main_run / 'models' / 'state_last.pth').read_bytes() == before
    assert run_dirs(tiny_setup) == [main_run]


def test_a_run_killed_before_its_first_state_is_trained_again_by_restore(tiny_setup, capsys):
    """kill -9 between the first epoch's model files and its training state: models/ holds
    netG/netD files and the state's temp file but no state_last.pth. RESTORE=True trains that
    folder from epoch 1 and writes the same weights again."""
    assert gan_main(False, overrides(tiny_setup, out='early', **{'TRAIN.MAX_EPOCH': 1})) == 0
    (run,) = run_dirs(tiny_setup, 'early')
    models = run / 'models'
    first = {n: torch.load(models / n, weights_only=True) for n in ('netG_001.pth', 'netD_001.pth')}
    for name in ('state_last.pth', 'state_last.json'):
        (models / name).unlink()
    (models / '.state_last.pth.k2j4h5g6.tmp').write_bytes(b'\0' * 64)
    capsys.readouterr()
    assert gan_main(False, overrides(tiny_setup, out='early', RESTORE=True, **{'TRAIN.MAX_EPOCH': 1})) == 0
    out = capsys.readouterr().out
    assert 'holds no completed training state' in out and 'removed 1 temporary file(s)' in out
    assert run_dirs(tiny_setup, 'early') == [run]
    assert sorted(p.name for p in models.iterdir()) == ['netD_001.pth', 'netG_001.pth', 'state_last.json',
                                                        'state_last.pth']
    for name, weights in first.items():
        again = torch.load(models / name, weights_only=True)
        assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)


@pytest.mark.parametrize('value', [0, -1])
def test_max_epoch_below_one_exits_2_naming_the_key_without_a_run_folder(tiny_setup, capsys, value):
    assert gan_main(False, overrides(tiny_setup, out=f'epochs{value}', **{'TRAIN.MAX_EPOCH': value})) == 2
    assert f'main.py: error: TRAIN.MAX_EPOCH={value}: the number of epochs' in capsys.readouterr().err
    assert not (tiny_setup / f'epochs{value}').exists()


def test_a_full_disk_while_saving_exits_3_and_keeps_the_last_state(tiny_setup, monkeypatch, capsys):
    import errno
    import miscc.core.checkpoint
    assert gan_main(False, overrides(tiny_setup, out='full', **{'TRAIN.MAX_EPOCH': 1})) == 0
    (run,) = run_dirs(tiny_setup, 'full')
    before = {p.name: p.read_bytes() for p in (run / 'models').iterdir()}
    real_save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):
        if 'progress' in obj:            # the training state: the disk is full by then
            f.write(b'\0' * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(miscc.core.checkpoint.torch, 'save', full_disk_save)
    assert gan_main(False, overrides(tiny_setup, out='full', RESTORE=True)) == 3
    err = capsys.readouterr().err
    assert f"main.py: error: disk full: could not write '{run}/models/state_last.pth'" in err
    after = {p.name: p.read_bytes() for p in (run / 'models').iterdir()}
    assert {k: after[k] for k in before} == before and not [n for n in after if n.endswith('.tmp')]


def test_a_deadline_cut_equals_max_steps_bit_for_bit_and_writes_the_step_generator(tiny_setup, monkeypatch):
    """Same steps, same bits: a run cut by fit's deadline after step 3 holds the training state
    of a TRAIN.MAX_STEPS=3 run, and its netG_step000003.pth is that state's generator."""
    assert gan_main(False, overrides(tiny_setup, out='steps3', **{'TRAIN.MAX_STEPS': 3})) == 0
    (limited,) = run_dirs(tiny_setup, 'steps3')
    trainer = GANTrainer(load_config(*_split(overrides(tiny_setup, out='cut3'))).freeze())
    steps = []
    real_step = trainer.train_step
    trainer.train_step = lambda batch: (steps.append(1), real_step(batch))[1]
    # the driver's clock reads the steps taken: a deadline of 3.0 passes at step 3
    set_driver_clock(lambda: len(steps), monkeypatch)
    run = Path(trainer.fit(deadline=3.0))
    monkeypatch.undo()
    assert trainer.driver.deadline_cut and trainer.global_step == 3
    a, b = final_weights(limited), final_weights(run)
    assert a['progress'] == b['progress'] == {'epoch': 1, 'next_epoch': 2, 'next_step': 1, 'global_step': 3,
                                              'finetune': False}
    for part in ('netG', 'netD'):
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    for opt in ('optimizerG', 'optimizerD'):
        for i, s in a[opt]['state'].items():
            assert all(torch.equal(s[k], b[opt]['state'][i][k]) for k in ('exp_avg', 'exp_avg_sq'))
    assert torch.equal(a['rng']['torch'], b['rng']['torch'])
    path = Path(trainer.save_step_generator())
    assert path == run / 'models' / 'netG_step000003.pth'
    saved = torch.load(path, weights_only=True)
    assert saved.keys() == a['netG'].keys() and all(torch.equal(saved[k], a['netG'][k]) for k in saved)
    assert sorted(p.name for p in (run / 'models').iterdir()) == ['netD_001.pth', 'netG_001.pth',
                                                                 'netG_step000003.pth', 'state_last.json',
                                                                 'state_last.pth']
