"""Restricted unpickling for data-set metadata (``*.pickle`` files are untrusted input).

The data sets' pickles (split file names, class ids, the ``captions.pickle`` vocabulary)
hold only lists, dicts, strings, numbers and, in CUB's ``train/class_info.pickle``,
numpy int64 scalars written by Python 2 with numpy 1. ``safe_load`` admits exactly
that: plain containers, str/bytes/numbers/bool/None and numpy scalars/arrays. Any
other global (a function, a class, ``os.system``...) is refused before it is called.

numpy 1 pickles name ``numpy.core.multiarray``; numpy 2 moved it to
``numpy._core.multiarray``. Both names are accepted and resolved to whichever
module this numpy has, so old files load without the ``numpy.core`` deprecation.
"""
from __future__ import annotations

import codecs
import collections
import importlib
import io
import os
import pickle
from typing import Any

import numpy as np

__all__ = ['PickleLoadError', 'UnsafePickleError', 'safe_load', 'safe_loads']


class PickleLoadError(ValueError):
    """A pickle file is missing, corrupt or truncated."""


class UnsafePickleError(PickleLoadError):
    """A pickle file refers to a global that is not on the allow-list."""


# Builtins that rebuild plain values; containers other than these come from opcodes.
_BUILTINS = {'set', 'frozenset', 'bytearray', 'complex', 'int', 'float', 'str', 'bytes',
             'bool', 'list', 'dict', 'tuple', 'slice', 'range'}

# numpy names that rebuild scalars, dtypes and arrays, nothing else.
_NUMPY_MULTIARRAY = {'scalar', '_reconstruct'}
_NUMPY_TOP = {'dtype', 'ndarray', 'bool_', 'int8', 'int16', 'int32', 'int64', 'uint8',
              'uint16', 'uint32', 'uint64', 'float16', 'float32', 'float64', 'longlong',
              'ulonglong', 'intc', 'uintc', 'complex64', 'complex128'}


def _numpy_core_module(submodule: str):
    """``numpy._core.<submodule>`` on numpy 2, ``numpy.core.<submodule>`` on numpy 1."""
    try:
        return importlib.import_module(f'numpy._core.{submodule}')
    except ImportError:
        return importlib.import_module(f'numpy.core.{submodule}')


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, **kwargs):
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module in ('builtins', '__builtin__') and name in _BUILTINS:
            return super().find_class('builtins', name)
        if module == '_codecs' and name == 'encode':
            # Python 3 writes bytes in protocol <= 2 as _codecs.encode(text, 'latin1').
            return codecs.encode
        elif module == 'collections' and name == 'OrderedDict':
            return collections.OrderedDict
        elif module in ('numpy.core.multiarray', 'numpy._core.multiarray') \
                and name in _NUMPY_MULTIARRAY:
            return getattr(_numpy_core_module('multiarray'), name)
        elif module in ('numpy.core.numeric', 'numpy._core.numeric') and name == '_frombuffer':
            # protocol 5 arrays; object dtypes cannot come through a raw buffer
            return getattr(_numpy_core_module('numeric'), name)
        elif module == 'numpy' and name in _NUMPY_TOP:
            return getattr(np, name)
        raise UnsafePickleError(
            f"refusing to unpickle '{self._source}': it refers to the global "
            f"'{module}.{name}', which a data-set pickle never needs (only lists, dicts, "
            f"strings, numbers and numpy scalars/arrays are admitted). Replace the file "
            f"with the original download or delete it if it is a cache.")


def safe_loads(data: bytes, source: str = '<bytes>') -> Any:
    """Unpickle ``data`` with the allow-list; ``source`` names it in errors."""
    try:
        # latin1 is what numpy needs to rebuild Python 2 scalars/arrays; Python 2 text
        # in these files is ASCII, so it decodes the same as with any other codec.
        return _RestrictedUnpickler(io.BytesIO(data), source, encoding='latin1').load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt pickle can raise almost anything
        raise PickleLoadError(
            f"cannot read pickle file '{source}': it is corrupt or truncated "
            f"({type(e).__name__}: {e}). Replace it with the original download "
            f"(or delete it if it is a cache that is rebuilt).") from None


def safe_load(path: str | os.PathLike) -> Any:
    """Unpickle the file at ``path`` with the allow-list (see the module docstring)."""
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        raise PickleLoadError(f"pickle file '{path}' not found") from None
    except OSError as e:
        raise PickleLoadError(f"cannot read pickle file '{path}': {e}") from None
    return safe_loads(data, path)
