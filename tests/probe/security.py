"""Probe group 'security'."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import torch

from helpers import CodePayload as Payload

from .harness import (CORRECT, CaseEnv, ENC_EPOCH, SKIPPED, case, crafted_pickle, crafted_pth, expect_error,
                      image_folder, run, script, state_of)


# Each crafted file writes the case's marker when unpickled; the entry point must refuse it
# with an error naming the file and never run it.

def _spoiled_data(c: CaseEnv, relpath: str, keep_content=True) -> Path:
    data = c.ctx.data_copy(c.dir / 'data')
    target = data / relpath
    content = ()
    if keep_content and target.suffix == '.pickle':
        with open(target, 'rb') as f:
            content = pickle.load(f, encoding='latin1')
        content = content if isinstance(content, list) else [content]
    crafted_pickle(target, c.marker, content)
    return target


def _security(c, cmd, *names) -> tuple:
    res = run(cmd)
    return expect_error(res, *names)


@case('security')
def security_filenames_pickle_train(c):
    """train/filenames.pickle with a payload, main.py training"""
    target = _spoiled_data(c, 'train/filenames.pickle')
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', c.dir / 'data')), target)


@case('security')
def security_filenames_pickle_fid(c):
    """test/filenames.pickle with a payload, eval_FID.py reference statistics"""
    target = _spoiled_data(c, 'test/filenames.pickle')
    images = image_folder(c.dir / 'images', 4)
    return _security(c, script('eval_FID.py', ['--images', images] + c.ctx.eval_args(
        c.dir / 'cache', DATA_DIR=c.dir / 'data')), target)


@case('security')
def security_class_info_pickle(c):
    """train/class_info.pickle with a payload, main.py training"""
    target = _spoiled_data(c, 'train/class_info.pickle')
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', c.dir / 'data')), target)


@case('security')
def security_captions_pickle_train(c):
    """captions.pickle (vocabulary cache) with a payload, main.py training"""
    target = _spoiled_data(c, 'captions.pickle', keep_content=False)
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', c.dir / 'data')), target)


@case('security')
def security_captions_pickle_generate(c):
    """captions.pickle with a payload, main.py B_VALIDATION=True generation"""
    target = _spoiled_data(c, 'captions.pickle', keep_content=False)
    return _security(c, script('main.py', c.ctx.gan_args(
        c.dir / 'out', c.dir / 'data', B_VALIDATION=True, **{'TRAIN.NET_G': c.ctx.netg, 'SAMPLE.NUM': 2,
                                                              'SAMPLE.OUT_DIR': c.dir / 'gen'})), target)


@case('security')
def security_captions_pickle_damsm(c):
    """captions.pickle with a payload, pretrain_DAMSM.py"""
    target = _spoiled_data(c, 'captions.pickle', keep_content=False)
    return _security(c, script('pretrain_DAMSM.py', c.ctx.damsm_args(c.dir / 'out', c.dir / 'data')), target)


def _crafted_netg(c, name='netG_002.pth') -> Path:
    path = c.dir / 'models' / name
    crafted_pth(path, c.marker, torch.load(c.ctx.netg, weights_only=True))
    return path


@case('security')
def security_net_g_generate(c):
    """TRAIN.NET_G with a payload, main.py B_VALIDATION=True"""
    path = _crafted_netg(c)
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', B_VALIDATION=True, **{
        'TRAIN.NET_G': path, 'SAMPLE.NUM': 2, 'SAMPLE.OUT_DIR': c.dir / 'gen'})), path)


@case('security')
def security_net_g_train(c):
    """TRAIN.NET_G with a payload, main.py training from its weights"""
    path = _crafted_netg(c)
    shutil.copy(c.ctx.run / 'models' / 'netD_002.pth', path.parent / 'netD_002.pth')
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', **{'TRAIN.NET_G': path,
                                                                         'TRAIN.MAX_EPOCH': 3})), path)


@case('security')
def security_net_d_sibling(c):
    """netD_XXX.pth beside TRAIN.NET_G with a payload, main.py training from the weights"""
    netg = c.dir / 'models' / 'netG_002.pth'
    netg.parent.mkdir(parents=True)
    shutil.copy(c.ctx.netg, netg)
    netd = netg.parent / 'netD_002.pth'
    crafted_pth(netd, c.marker, torch.load(c.ctx.run / 'models' / 'netD_002.pth', weights_only=True))
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', **{'TRAIN.NET_G': netg,
                                                                         'TRAIN.MAX_EPOCH': 3})), netd)


@case('security')
def security_net_g_finetune(c):
    """TRAIN.NET_G with a payload, main_finetune.py"""
    path = _crafted_netg(c)
    shutil.copy(c.ctx.run / 'models' / 'netD_002.pth', path.parent / 'netD_002.pth')
    return _security(c, script('main_finetune.py', c.ctx.gan_args(c.dir / 'out', **{
        'TRAIN.NET_G': path, 'TRAIN.MAX_EPOCH': 3})), path)


@case('security')
def security_net_g_eval(c):
    """eval_IS.py --netG with a payload"""
    path = _crafted_netg(c)
    return _security(c, script('eval_IS.py', ['--netG', path, '--num', 4, '--out', c.dir / 'is.json']
                               + c.ctx.eval_args(c.dir / 'cache')), path)


@case('security')
def security_text_encoder(c):
    """TEXT.DAMSM_NAME (text encoder) with a payload, main.py training"""
    path = c.dir / 'enc' / f'text_encoder{ENC_EPOCH}.pth'
    crafted_pth(path, c.marker, torch.load(c.ctx.text_encoder, weights_only=True))
    shutil.copy(c.ctx.base / 'enc' / f'image_encoder{ENC_EPOCH}.pth', path.parent)
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', **{'TEXT.DAMSM_NAME': path})), path)


@case('security')
def security_image_encoder(c):
    """image_encoder beside TEXT.DAMSM_NAME with a payload, main.py training"""
    path = c.dir / 'enc' / f'image_encoder{ENC_EPOCH}.pth'
    crafted_pth(path, c.marker, torch.load(c.ctx.base / 'enc' / path.name, weights_only=True))
    text = path.parent / c.ctx.text_encoder.name
    shutil.copy(c.ctx.text_encoder, text)
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', **{'TEXT.DAMSM_NAME': text})), path)


@case('security')
def security_restore_state(c):
    """state_last.pth with a payload, main.py RESTORE=True of its run folder"""
    run_dir = c.dir / 'out' / 'synthetic_birds_bird_2000_01_01_00_00_00'
    for sub in ('models', 'log', 'samples'):
        (run_dir / sub).mkdir(parents=True)
    state = state_of(c.ctx.run)
    path = run_dir / 'models' / 'state_last.pth'
    crafted_pth(path, c.marker, state)
    shutil.copy(c.ctx.run / 'models' / 'state_last.json', run_dir / 'models')
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', RESTORE=True, **{
        'TRAIN.NET_G': run_dir, 'TRAIN.MAX_EPOCH': 3})), path)


@case('security')
def security_damsm_restore_state(c):
    """DAMSM state_last.pth with a payload, pretrain_DAMSM.py RESTORE=True"""
    run_dir = c.dir / 'out' / 'synthetic_birds_bird_2000_01_01_00_00_00'
    for sub in ('models', 'log', 'samples'):
        (run_dir / sub).mkdir(parents=True)
    path = run_dir / 'models' / 'state_last.pth'
    crafted_pth(path, c.marker, {'kind': 'damsm', 'progress': {'epoch': 1, 'next_epoch': 2, 'next_step': 0,
                                                                'global_step': 2}, 'rng': {}})
    return _security(c, script('pretrain_DAMSM.py', c.ctx.damsm_args(c.dir / 'out', RESTORE=True,
                                                                       **{'TRAIN.NET_E': run_dir})), path)


@case('security')
def security_damsm_net_e(c):
    """TRAIN.NET_E text encoder with a payload, pretrain_DAMSM.py"""
    path = c.dir / 'enc' / 'text_encoder1.pth'
    crafted_pth(path, c.marker, {'encoder.weight': torch.zeros(3, 3)})
    return _security(c, script('pretrain_DAMSM.py', c.ctx.damsm_args(c.dir / 'out', **{'TRAIN.NET_E': path})), path)


@case('security')
def security_pretrained_inception(c):
    """PRETRAINED.INCEPTION with a payload, pretrain_DAMSM.py with the ImageNet trunk"""
    path = c.dir / 'inception_v3_google-0cc3c7bd.pth'
    crafted_pth(path, c.marker, {'fc.weight': torch.zeros(2, 2)})
    return _security(c, script('pretrain_DAMSM.py', c.ctx.damsm_args(c.dir / 'out', **{
        'DAMSM.RANDOM_TRUNK': False, 'PRETRAINED.INCEPTION': path})), path)


@case('security')
def security_eval_classifier(c):
    """EVAL.CLASSIFIER with a payload, eval_IS.py --images"""
    images = image_folder(c.dir / 'images', 4)
    path = c.dir / 'classifier.pth'
    crafted_pth(path, c.marker, {'fc.weight': torch.zeros(200, 2048)})
    return _security(c, script('eval_IS.py', ['--images', images] + c.ctx.eval_args(
        c.dir / 'cache', **{'EVAL.CLASSIFIER': path})), path)


@case('security')
def security_inception_weights(c):
    """EVAL.INCEPTION_WEIGHTS with a payload, eval_FID.py"""
    images = image_folder(c.dir / 'images', 4)
    path = c.dir / 'weights-inception-2015-12-05-6726825d.pth'
    crafted_pth(path, c.marker, {'conv.weight': torch.zeros(2, 2)})
    return _security(c, script('eval_FID.py', ['--images', images] + c.ctx.eval_args(
        c.dir / 'cache', **{'EVAL.RANDOM_WEIGHTS': False, 'EVAL.INCEPTION_WEIGHTS': path})), path)


@case('security')
def security_fid_cache_npz(c):
    """the FID reference-statistics cache (.npz) replaced by one with a pickled object array"""
    images = image_folder(c.dir / 'images', 4)
    cache = c.dir / 'cache'
    args = ['--images', images, '--out', c.dir / 'fid.json'] + c.ctx.eval_args(cache)
    first = run(script('eval_FID.py', args))
    made = sorted(cache.glob('*.npz'))
    if first.rc != 0 or not made:
        return SKIPPED, f'the clean eval_FID.py run made no cache: {first.what()}'
    with np.load(made[0]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays['meta'] = np.array([Payload(c.marker)], dtype=object)
    with open(made[0], 'wb') as f:
        np.savez(f, **arrays)
    res = run(script('eval_FID.py', args))
    if not res.hung and not res.traceback and res.rc == 0:
        return CORRECT, f'the crafted cache was not unpickled (recomputed); {res.what()}'
    return expect_error(res, made[0].name)


def _yaml(c, text) -> Path:
    path = c.dir / 'crafted.yml'
    path.write_text(text.replace('MARKER', str(c.marker)))
    return path


YAML_APPLY = "CONFIG_NAME: !!python/object/apply:builtins.exec [\"open('MARKER', 'w').write('ran')\"]\n"
YAML_OBJECT = ("TRAIN: !!python/object/new:type\n  args: ['X', !!python/tuple [], {}]\n"
               "  state: !!python/object/apply:builtins.exec [\"open('MARKER', 'w').write('ran')\"]\n")


@case('security')
def security_yaml_python_tag_main(c):
    """--cfg YAML with a !!python/object/apply tag, main.py"""
    path = _yaml(c, YAML_APPLY)
    return _security(c, script('main.py', ['--cfg', path, 'DEVICE=cpu']), path)


@case('security')
def security_yaml_python_object_damsm(c):
    """--cfg YAML with !!python/object/new, pretrain_DAMSM.py"""
    path = _yaml(c, YAML_OBJECT)
    return _security(c, script('pretrain_DAMSM.py', ['--cfg', path, 'DEVICE=cpu']), path)


@case('security')
def security_yaml_python_tag_eval(c):
    """--cfg YAML with a !!python/object/apply tag, eval_FID.py"""
    path = _yaml(c, YAML_APPLY)
    return _security(c, script('eval_FID.py', ['--cfg', path, '--images', c.dir]), path)
