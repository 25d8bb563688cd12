"""Probe group 'checkpoints'."""
from __future__ import annotations

import shutil

from .harness import ENC_EPOCH, Result, case, expect_error, expect_ok, image_folder, run, script
from .data import _train_on


def _generate(c, netg, **extra) -> Result:
    args = c.ctx.gan_args(c.dir / 'out', B_VALIDATION=True, **dict({
        'TRAIN.NET_G': netg, 'SAMPLE.NUM': 4, 'SAMPLE.OUT_DIR': c.dir / 'gen'}, **extra))
    return run(script('main.py', args))


@case('checkpoints')
def checkpoints_netg_other_width(c):
    """a netG of NF 2 generated from with TRAIN.NF=4"""
    return expect_error(_generate(c, c.ctx.netg, **{'TRAIN.NF': 4}), c.ctx.netg)


@case('checkpoints')
def checkpoints_text_encoder_other_vocabulary(c):
    """TEXT.DAMSM_NAME: a text encoder of another vocabulary size"""
    enc = c.dir / 'enc' / f'text_encoder{ENC_EPOCH}.pth'
    enc.parent.mkdir()
    shutil.copy(c.ctx.base / 'enc' / 'other_vocab.pth', enc)
    shutil.copy(c.ctx.base / 'enc' / f'image_encoder{ENC_EPOCH}.pth', enc.parent)
    return expect_error(_train_on(c, None, **{'TEXT.DAMSM_NAME': enc}), enc)


@case('checkpoints')
def checkpoints_truncated_netg(c):
    """TRAIN.NET_G cut to half its bytes"""
    path = c.dir / 'netG_002.pth'
    data = c.ctx.netg.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return expect_error(_generate(c, path), path)


@case('checkpoints')
def checkpoints_empty_netg(c):
    """TRAIN.NET_G an empty file"""
    path = c.dir / 'netG_002.pth'
    path.write_bytes(b'')
    return expect_error(_generate(c, path), path)


@case('checkpoints')
def checkpoints_truncated_text_encoder(c):
    """TEXT.DAMSM_NAME cut to half its bytes"""
    enc = c.dir / 'enc' / c.ctx.text_encoder.name
    enc.parent.mkdir()
    data = c.ctx.text_encoder.read_bytes()
    enc.write_bytes(data[:len(data) // 2])
    shutil.copy(c.ctx.base / 'enc' / f'image_encoder{ENC_EPOCH}.pth', enc.parent)
    return expect_error(_train_on(c, None, **{'TEXT.DAMSM_NAME': enc}), enc)


@case('checkpoints')
def checkpoints_directory_as_text_encoder(c):
    """TEXT.DAMSM_NAME a directory"""
    d = c.dir / 'text_encoder5.pth'
    d.mkdir()
    return expect_error(_train_on(c, None, **{'TEXT.DAMSM_NAME': d}), d)


@case('checkpoints')
def checkpoints_directory_as_netg(c):
    """TRAIN.NET_G a directory that is not a run folder (generation)"""
    d = c.dir / 'netG_002.pth'
    d.mkdir()
    return expect_error(_generate(c, d), d)


@case('checkpoints')
def checkpoints_directory_as_classifier(c):
    """EVAL.CLASSIFIER a directory"""
    d = c.dir / 'classifier.pth'
    d.mkdir()
    images = image_folder(c.dir / 'images', 4)
    return expect_error(run(script('eval_IS.py', ['--images', images] + c.ctx.eval_args(
        c.dir / 'cache', **{'EVAL.CLASSIFIER': d}))), d)


@case('checkpoints')
def checkpoints_truncated_state_restore(c):
    """RESTORE=True of a run whose state_last.pth is truncated"""
    out = c.dir / 'out'
    folder = out / c.ctx.run.name
    shutil.copytree(c.ctx.run, folder)
    state = folder / 'models' / 'state_last.pth'
    data = state.read_bytes()
    state.write_bytes(data[:len(data) // 2])
    c.keep(folder / 'models' / 'netG_002.pth')
    res = run(script('main.py', c.ctx.gan_args(out, RESTORE=True, **{'TRAIN.MAX_EPOCH': 3})))
    return expect_error(res, state)


@case('checkpoints')
def checkpoints_restore_finished_run(c):
    """RESTORE=True of a finished run (TRAIN.MAX_EPOCH unchanged)"""
    out = c.dir / 'out'
    folder = out / c.ctx.run.name
    shutil.copytree(c.ctx.run, folder)
    c.keep(*(folder / 'models').glob('*.pth'))
    res = run(script('main.py', c.ctx.gan_args(out, RESTORE=True)))
    return expect_ok(res, lambda: None if 'already finished' in res.out else 'no "already finished" message')


@case('checkpoints')
def checkpoints_netd_as_netg(c):
    """TRAIN.NET_G a discriminator file (generation)"""
    path = c.dir / 'netG_002.pth'
    shutil.copy(c.ctx.run / 'models' / 'netD_002.pth', path)
    return expect_error(_generate(c, path), path)
