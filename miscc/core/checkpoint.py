"""Checkpoint I/O: safe loading, strict matching with one clear error, atomic saving.

Model files (``netG_%03d.pth``, ``text_encoder200.pth``...) are plain state dicts with the
official key names and no ``module.`` prefix: they load into the official model classes
and released files load here with ``strict=True``.

DF-GAN's files are read too (``load_dfgan_checkpoint``): the 2022 release's training state
``{'model': {'netG', 'netD', 'netC'}, 'optimizers': {'optimizer_G', 'optimizer_D'}, 'epoch'}``
(written under DDP, so its keys may carry ``module.``) and plain generator state dicts, whose
layout (DF-GAN 2022, DF-GAN 2020 or SSA-GAN) is told by their key names.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Mapping

import torch
import torch.nn as nn

from .config import ConfigError
from .files import atomic_write

__all__ = ['CheckpointError', 'not_a_file', 'load_file', 'save_atomic', 'strip_prefixes', 'unwrap_model',
           'model_state_dict', 'load_model_state', 'check_state_dict', 'trained_epochs',
           'sibling_checkpoint', 'companion_checkpoint', 'REFERENCE_NAMES', 'step_tag', 'step_checkpoint',
           'EMA_NAME', 'BEST_NAME', 'is_ema_checkpoint',
           'ema_checkpoint', 'plain_generator_checkpoint', 'GENERATOR_LAYOUTS', 'generator_layout',
           'read_dfgan_checkpoint', 'load_dfgan_checkpoint']

_SHOW = 5  # keys listed per category in mismatch errors
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not match the model."""


def not_a_file(path: str) -> str:
    """Why ``path`` is no file to read: 'is a folder, not a file' or 'not found'."""
    return 'is a folder, not a file' if os.path.isdir(path) else 'not found'


def load_file(path: str, map_location='cpu'):
    """``torch.load(path, weights_only=True)`` with errors that name the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' {not_a_file(path)}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes): an interrupted copy? "
                              f"Copy or save it again")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint '{path}' holds objects other than tensors and plain containers, so it is "
            f"not loaded (weights_only=True). Re-save its state_dict(). Details: {_one_line(e)}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' could not be read (truncated or not a torch "
                              f"file?): {_one_line(e)}") from None


def _one_line(error: Exception) -> str:
    """torch's loading errors span many lines (advice on weights_only); the line that says what
    was refused (``WeightsUnpickler error: Unsupported global: ...``), else the first line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith('WeightsUnpickler error'):
            return ln.split('. Please use')[0]   # not the advice to allow-list what was refused
    return lines[0] if lines else type(error).__name__


def save_atomic(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path`` through ``atomic_write`` (flushed to disk before the
    rename), so an interrupted save never leaves a half-written file under ``path``."""
    with atomic_write(path, 'wb', fsync=True) as f:
        torch.save(obj, f)


def strip_prefixes(state: Mapping) -> dict:
    """Remove ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) key prefixes."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix):], True
        out[k] = v
    return out


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, '_orig_mod'):
            model = model._orig_mod
        else:
            return model


def model_state_dict(model: nn.Module) -> dict:
    """State dict with official key names (no wrapper prefixes), tensors on CPU."""
    return {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}


def check_state_dict(model: nn.Module, state: Mapping, source: str = 'state dict') -> None:
    """Raise one CheckpointError listing missing, unexpected and wrong-shape keys."""
    expected = unwrap_model(model).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}'
             for k in expected if k in state and hasattr(state[k], 'shape')
             and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return

    def listing(name, items):
        if not items:
            return ''
        more = f' (+{len(items) - _SHOW} more)' if len(items) > _SHOW else ''
        return f'; {name} ({len(items)}): ' + ', '.join(items[:_SHOW]) + more

    # one line, as the command line prints every error
    raise CheckpointError(
        f"'{source}' does not match {type(unwrap_model(model)).__name__}"
        + listing('missing keys', missing) + listing('unexpected keys', unexpected)
        + listing('wrong shapes', wrong)
        + '; check the model options (TRAIN.NF, TREE.BASE_SIZE, vocabulary size) against the '
          'ones the checkpoint was trained with')


def load_model_state(model: nn.Module, source, strict: bool = True, name: str = '') -> nn.Module:
    """Load a state dict (or the file at path ``source``) into ``model``.

    Wrapper prefixes are stripped; with ``strict`` any key or shape mismatch raises one
    CheckpointError naming the file (``name`` for a state dict, e.g. "state_last.pth [netG]")
    and the first few offending keys of each kind.
    """
    name = source if isinstance(source, str) else (name or 'state dict')
    state = load_file(source) if isinstance(source, str) else source
    if not isinstance(state, Mapping):
        raise CheckpointError(f"'{name}' holds a {type(state).__name__}, not a state dict")
    state = strip_prefixes(state)
    if strict:
        check_state_dict(model, state, name)
    unwrap_model(model).load_state_dict(state, strict=strict)
    return model


# The file names of the PyTorch GAN-INT-CLS implementation (aelnouby/Text-to-Image-Synthesis,
# Utils.save_checkpoint): gen_<epoch>.pth and disc_<epoch>.pth, by this project's network names.
REFERENCE_NAMES = {'netG': 'gen', 'netD': 'disc'}


def _stem_and_number(path: str):
    """``('netG', 120)`` for ``.../netG_120.pth``; None when the name does not end in ``_<digits>.pth``."""
    match = re.fullmatch(r'(.+)_(\d+)\.pth', os.path.basename(path))
    return (match.group(1), int(match.group(2))) if match else None


def trained_epochs(path: str) -> int | None:
    """Epochs of training that a model file's name says it holds: X for ``netG_X.pth`` (this
    project's and the official names, any ``<name>_X.pth``), X + 1 for the implementation's
    ``gen_X.pth`` (its loop counts epochs from 0: ``gen_0.pth`` is saved after the first one);
    None when the name carries no epoch (``netG_best.pth``, ``netG_step000437.pth``, ``G.pth``)."""
    found = _stem_and_number(path)
    if found is None:
        return None
    stem, number = found
    return number + 1 if stem == REFERENCE_NAMES['netG'] else number


def step_tag(global_step: int) -> str:
    """The name part of model files written at a global step rather than at an epoch's end
    (a run stopped mid-epoch): ``netG_step000437.pth``. No epoch can be read from such a name."""
    return f'step{global_step:06d}'


def step_checkpoint(models_dir: str, global_step: int) -> str:
    """``<models_dir>/netG_<step_tag>.pth``: the generator after ``global_step`` steps."""
    return os.path.join(models_dir, f'netG_{step_tag(global_step)}.pth')


def sibling_checkpoint(netg_path: str, name: str) -> str:
    """``.../netG_120.pth`` -> ``.../<name>_120.pth`` (netD, text_encoder, image_encoder)."""
    head, base = os.path.split(netg_path)
    if not base.startswith('netG'):
        raise ConfigError(f"expected a generator file named netG_<epoch>.pth, got '{netg_path}'")
    return os.path.join(head, name + base[len('netG'):])


def companion_checkpoint(generator_path: str, name: str) -> str | None:
    """The file of network ``name`` saved beside a generator file: ``.../netG_120.pth`` ->
    ``.../<name>_120.pth`` (netD, netC, text_encoder, ...), the implementation's ``gen_9.pth``
    -> ``disc_9.pth`` for 'netD'; None when the generator's name follows neither convention."""
    head, base = os.path.split(generator_path)
    if base.startswith('netG'):
        return sibling_checkpoint(generator_path, name)
    found = _stem_and_number(generator_path)
    if found and found[0] == REFERENCE_NAMES['netG'] and name in REFERENCE_NAMES:
        return os.path.join(head, f'{REFERENCE_NAMES[name]}_{found[1]}.pth')
    return None


EMA_NAME = 'netG_ema'   # netG_ema_<epoch>.pth: TRAIN.G_EMA's average of netG_<epoch>.pth


BEST_NAME = 'netG_best'  # models/netG_best.pth: the generator of the best in-training FID (EVAL.INTERVAL)


def is_ema_checkpoint(path: str) -> bool:
    return os.path.basename(path).startswith(EMA_NAME + '_')


def ema_checkpoint(netg_path: str) -> str:
    """``.../netG_120.pth`` -> ``.../netG_ema_120.pth`` (an EMA file is its own answer)."""
    return netg_path if is_ema_checkpoint(netg_path) else sibling_checkpoint(netg_path, EMA_NAME)


def plain_generator_checkpoint(path: str) -> str:
    """``.../netG_ema_120.pth`` -> ``.../netG_120.pth``, the file its siblings are named after."""
    head, base = os.path.split(path)
    return os.path.join(head, 'netG' + base[len(EMA_NAME):]) if is_ema_checkpoint(path) else path


# Generator layouts by MODEL.NAME, with the keys that tell them apart.
GENERATOR_LAYOUTS = {
    'dfgan': 'DF-GAN 2022 (GBlocks.i.fuse1/fuse2, to_rgb)',
    'dfgan_v1': 'DF-GAN 2020 (block0..6 with affine0..3, conv_img.1)',
    'ssagan': 'SSA-GAN (block0..6 with affine0/affine2 batch norms and conv_mask)',
}


def generator_layout(state: Mapping) -> str | None:
    """The MODEL.NAME whose generator has the keys of ``state`` (wrapper prefixes already
    stripped): 'dfgan', 'dfgan_v1', 'ssagan', or None when it fits none of them."""
    keys = set(state)
    if 'fc.weight' not in keys:
        return None
    if 'to_rgb.1.weight' in keys and 'GBlocks.0.fuse1.affine0.fc_gamma.linear1.weight' in keys:
        return 'dfgan'
    if 'conv_img.1.weight' in keys and 'block0.affine3.fc_gamma.linear1.weight' in keys:
        return 'dfgan_v1'
    if 'conv_mask.0.weight' in keys and 'block0.affine0.batch_norm2d.running_mean' in keys:
        return 'ssagan'
    return None


def _first_keys(mapping: Mapping, count: int = _SHOW) -> str:
    keys = [str(k) for k in list(mapping)[:count]]
    more = f' (+{len(mapping) - count} more)' if len(mapping) > count else ''
    return ', '.join(keys) + more if keys else '(none)'


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _what_it_is(state: Mapping) -> str:
    keys = set(state)
    if 'COND_DNET.joint_conv.0.weight' in keys or any(k.startswith('DBlocks.') for k in keys):
        return 'a discriminator state dict'
    if 'joint_conv.0.weight' in keys:
        return "DF-GAN's NetC (matching head) state dict"
    if 'encoder.weight' in keys or 'emb_cnn_code.weight' in keys:
        return 'a DAMSM encoder state dict'
    return 'a state dict of no known generator'


def read_dfgan_checkpoint(source) -> dict:
    """Read a generator file: DF-GAN 2022's training state or a plain generator state dict.

    ``source`` is a path or an already loaded object. Returns ``{'layout', 'netG', 'netD',
    'netC', 'optimizers', 'epoch'}``: state dicts without wrapper prefixes (``netD``/``netC``/
    ``optimizers``/``epoch`` are None for a generator-only file) and the generator's layout
    (``generator_layout``). A file that fits neither form raises CheckpointError naming it and
    what it holds.
    """
    name = source if isinstance(source, str) else 'checkpoint'
    obj = load_file(source) if isinstance(source, str) else source
    out = dict(layout=None, netG=None, netD=None, netC=None, optimizers=None, epoch=None)
    if isinstance(obj, Mapping) and 'model' in obj:
        model = obj['model']
        if not isinstance(model, Mapping) or not _is_state_dict(model.get('netG')):
            found = _first_keys(model) if isinstance(model, Mapping) else type(model).__name__
            raise CheckpointError(f"'{name}' has a 'model' entry without a 'netG' state dict (found: "
                                  f"{found}); DF-GAN's training state is {{'model': {{'netG', 'netD', "
                                  f"'netC'}}, 'optimizers': ..., 'epoch': ...}}")
        for net in ('netG', 'netD', 'netC'):
            if model.get(net) is not None:
                out[net] = strip_prefixes(model[net])
        out['optimizers'] = obj.get('optimizers')
        out['epoch'] = obj.get('epoch')
        where = f"'{name}' ['model']['netG']"
    elif _is_state_dict(obj):
        out['netG'] = strip_prefixes(obj)
        where = f"'{name}'"
    else:
        found = (f'a mapping with keys {_first_keys(obj)}' if isinstance(obj, Mapping)
                 else f'a {type(obj).__name__}')
        raise CheckpointError(f"'{name}' holds {found}: neither DF-GAN's training state "
                              f"({{'model': {{'netG', 'netD', 'netC'}}, 'optimizers': ...}}) nor a "
                              f"generator state dict")
    out['layout'] = generator_layout(out['netG'])
    if out['layout'] is None:
        known = '; '.join(f'{k}: {v}' for k, v in GENERATOR_LAYOUTS.items())
        raise CheckpointError(f"{where} is {_what_it_is(out['netG'])}, not a generator of a known "
                              f"layout ({known}). Its first keys: {_first_keys(out['netG'])}")
    return out


def load_dfgan_checkpoint(source, netG: nn.Module, netD: nn.Module | None = None,
                          netC: nn.Module | None = None, optimizer_g=None, optimizer_d=None) -> dict:
    """Load a DF-GAN file (see ``read_dfgan_checkpoint``) strictly into the given modules.

    The generator's layout must be the one of ``netG`` (DF-GAN 2022, 2020 or SSA-GAN; otherwise
    the error names the MODEL.NAME that fits the file). ``netD``/``netC``/the optimisers are
    loaded when given, and the file must hold them. Returns ``{'layout', 'epoch', 'loaded'}``.
    """
    name = source if isinstance(source, str) else 'checkpoint'
    ckpt = read_dfgan_checkpoint(source)
    expected = generator_layout(unwrap_model(netG).state_dict())
    if ckpt['layout'] != expected:
        model_kind = GENERATOR_LAYOUTS.get(expected, type(unwrap_model(netG)).__name__)
        raise CheckpointError(f"'{name}' holds a {GENERATOR_LAYOUTS[ckpt['layout']]} generator, but the "
                              f"model is {model_kind}: set MODEL.NAME: {ckpt['layout']}")
    loaded = []
    for net_name, module in (('netG', netG), ('netD', netD), ('netC', netC)):
        if module is None:
            continue
        state = ckpt[net_name]
        if state is None:
            raise CheckpointError(f"'{name}' holds no {net_name} (a generator-only file); "
                                  f"pass DF-GAN's training state state_epoch_*.pth to restore it")
        check_state_dict(module, state, f"{name} [{net_name}]")
        unwrap_model(module).load_state_dict(state, strict=True)
        loaded.append(net_name)
    for key, optimizer in (('optimizer_G', optimizer_g), ('optimizer_D', optimizer_d)):
        if optimizer is None:
            continue
        optimizers = ckpt['optimizers']
        if not isinstance(optimizers, Mapping) or key not in optimizers:
            raise CheckpointError(f"'{name}' holds no optimizers['{key}'] to restore")
        try:
            optimizer.load_state_dict(optimizers[key])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"'{name}' optimizers['{key}'] does not fit the optimiser "
                                  f"(D's must cover netD then netC parameters, as DF-GAN's): {e}") from None
        loaded.append(key)
    return dict(layout=ckpt['layout'], epoch=ckpt['epoch'], loaded=loaded)
