"""Checkpoint I/O: safe loading, strict matching with one clear error, atomic saving.

Model files (``netG_%03d.pth``, ``text_encoder200.pth``...) are plain state dicts with the
official key names and no ``module.`` prefix: they load into the official model classes
and released files load here with ``strict=True``.
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

__all__ = ['CheckpointError', 'load_file', 'save_atomic', 'strip_prefixes', 'unwrap_model',
           'model_state_dict', 'load_model_state', 'check_state_dict', 'checkpoint_epoch',
           'sibling_checkpoint']

_SHOW = 5  # keys listed per category in mismatch errors
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not match the model."""


def load_file(path: str, map_location='cpu'):
    """``torch.load(path, weights_only=True)`` with errors that name the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint '{path}' holds objects other than tensors and plain containers, so it is "
            f"not loaded (weights_only=True). Re-save its state_dict(). Details: {e}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' could not be read (truncated or not a torch "
                              f"file?): {e}") from None


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
        return f'\n  {name} ({len(items)}): ' + ', '.join(items[:_SHOW]) + more

    raise CheckpointError(
        f"'{source}' does not match {type(unwrap_model(model)).__name__}:"
        + listing('missing keys', missing) + listing('unexpected keys', unexpected)
        + listing('wrong shapes', wrong)
        + '\n  Check the model options (TRAIN.NF, TREE.BASE_SIZE, vocabulary size) against the '
          'ones the checkpoint was trained with.')


def load_model_state(model: nn.Module, source, strict: bool = True) -> nn.Module:
    """Load a state dict (or the file at path ``source``) into ``model``.

    Wrapper prefixes are stripped; with ``strict`` any key or shape mismatch raises one
    CheckpointError naming the file and the first few offending keys of each kind.
    """
    name = source if isinstance(source, str) else 'state dict'
    state = load_file(source) if isinstance(source, str) else source
    if not isinstance(state, Mapping):
        raise CheckpointError(f"'{name}' holds a {type(state).__name__}, not a state dict")
    state = strip_prefixes(state)
    if strict:
        check_state_dict(model, state, name)
    unwrap_model(model).load_state_dict(state, strict=strict)
    return model


def checkpoint_epoch(path: str) -> int:
    """Epoch number in a ``netG_120.pth``-style name (the digits after the last '_')."""
    match = re.search(r'_(\d+)\.pth$', os.path.basename(path))
    if not match:
        raise ConfigError(f"cannot read an epoch from '{path}': expected a name like netG_120.pth")
    return int(match.group(1))


def sibling_checkpoint(netg_path: str, name: str) -> str:
    """``.../netG_120.pth`` -> ``.../<name>_120.pth`` (netD, text_encoder, image_encoder)."""
    head, base = os.path.split(netg_path)
    if not base.startswith('netG'):
        raise ConfigError(f"expected a generator file named netG_<epoch>.pth, got '{netg_path}'")
    return os.path.join(head, name + base[len('netG'):])
