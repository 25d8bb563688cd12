"""Probe group 'config'."""
from __future__ import annotations

from .harness import case, expect_either, expect_error, run, script
from .data import _train_on, _trained


def _config_case(c, expect_names, **overrides) -> tuple:
    return expect_error(_train_on(c, None, **overrides), *expect_names)


@case('config')
def config_batch_size_zero(c):
    """TRAIN.BATCH_SIZE=0"""
    return _config_case(c, ['TRAIN.BATCH_SIZE'], **{'TRAIN.BATCH_SIZE': 0})


@case('config')
def config_batch_size_negative(c):
    """TRAIN.BATCH_SIZE=-4"""
    return _config_case(c, ['TRAIN.BATCH_SIZE'], **{'TRAIN.BATCH_SIZE': -4})


@case('config')
def config_batch_size_above_data(c):
    """TRAIN.BATCH_SIZE=100 with 8 training images"""
    res = _train_on(c, None, **{'TRAIN.BATCH_SIZE': 100})
    return expect_either(res, ['TRAIN.BATCH_SIZE'], _trained(c))


@case('config')
def config_base_size_zero(c):
    """TREE.BASE_SIZE=0"""
    return _config_case(c, ['TREE.BASE_SIZE'], **{'TREE.BASE_SIZE': 0})


@case('config')
def config_base_size_negative(c):
    """TREE.BASE_SIZE=-64"""
    return _config_case(c, ['TREE.BASE_SIZE'], **{'TREE.BASE_SIZE': -64})


@case('config')
def config_base_size_not_power_of_two(c):
    """TREE.BASE_SIZE=100"""
    return _config_case(c, ['TREE.BASE_SIZE'], **{'TREE.BASE_SIZE': 100})


@case('config')
def config_max_epoch_zero(c):
    """TRAIN.MAX_EPOCH=0"""
    return _config_case(c, ['TRAIN.MAX_EPOCH'], **{'TRAIN.MAX_EPOCH': 0})


@case('config')
def config_nf_zero(c):
    """TRAIN.NF=0"""
    return _config_case(c, ['TRAIN.NF'], **{'TRAIN.NF': 0})


@case('config')
def config_missing_cfg_file(c):
    """--cfg of a file that does not exist"""
    path = c.dir / 'nope.yml'
    return expect_error(run(script('main.py', ['--cfg', path])), path)


@case('config')
def config_device_cuda7(c):
    """DEVICE=cuda:7 (no such GPU here)"""
    return _config_case(c, ['DEVICE', 'cuda:7'], DEVICE='cuda:7')


@case('config')
def config_device_gpu(c):
    """DEVICE=gpu (not a device name)"""
    return _config_case(c, ['DEVICE'], DEVICE='gpu')


@case('config')
def config_workers_negative(c):
    """WORKERS=-1"""
    return _config_case(c, ['WORKERS'], WORKERS=-1)


@case('config')
def config_unknown_key(c):
    """an unknown key on the command line (TRAIN.BATCHSIZE)"""
    return _config_case(c, ['TRAIN.BATCHSIZE'], **{'TRAIN.BATCHSIZE': 4})


@case('config')
def config_damsm_batch_size_zero(c):
    """pretrain_DAMSM.py TRAIN.BATCH_SIZE=0"""
    return expect_error(run(script('pretrain_DAMSM.py', c.ctx.damsm_args(c.dir / 'out', **{'TRAIN.BATCH_SIZE': 0}))),
                        'TRAIN.BATCH_SIZE')
