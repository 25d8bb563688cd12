"""Restricted unpickling of data-set pickles."""
import collections
import pickle
import subprocess
import warnings

import numpy as np
import pytest

from helpers import CUB_META
from miscc.data.safe_pickle import PickleLoadError, UnsafePickleError, safe_load, safe_loads


def test_real_python2_pickles_load_without_numpy_deprecations():
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # numpy 2 warns when numpy.core is touched
        ids = safe_load(CUB_META / 'train' / 'class_info.pickle')
    assert len(ids) == 8855 and isinstance(ids[0], np.int64) and int(ids[0]) == 2
    assert safe_load(CUB_META / 'test' / 'class_info.pickle')[:3] == [1, 1, 1]
    assert safe_load(CUB_META / 'test' / 'filenames.pickle')[0].startswith('001.Black_footed_Albatross/')


@pytest.mark.parametrize('protocol', range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_plain_values_and_numpy_round_trip(protocol):
    value = {'a': [1, 2.5, None, True, b'x', 'y', (3, 4)], 'b': {5, 6}, 'c': np.int64(7),
             'd': np.arange(6, dtype=np.float32).reshape(2, 3), 'e': collections.OrderedDict(x=1),
             'f': np.array([np.uint8(1)]), 'g': frozenset([1])}
    out = safe_loads(pickle.dumps(value, protocol=protocol))
    assert out['a'] == value['a'] and out['b'] == {5, 6} and out['c'] == 7
    assert isinstance(out['c'], np.int64) and np.array_equal(out['d'], value['d'])
    assert out['d'].dtype == np.float32 and out['e'] == {'x': 1} and out['g'] == frozenset([1])


class _Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# Protocol 2 writes Python 2 module names (what the file says is what is reported).
@pytest.mark.parametrize('func, protocol, name', [(eval, 4, 'builtins.eval'),
                                                  (eval, 2, '__builtin__.eval'),
                                                  (subprocess.call, 4, 'subprocess.call'),
                                                  (getattr, 4, 'builtins.getattr')])
def test_other_globals_are_refused_with_file_and_global_named(tmp_path, func, protocol, name):
    path = tmp_path / 'class_info.pickle'
    path.write_bytes(pickle.dumps([_Payload(func, 'x')], protocol=protocol))
    with pytest.raises(UnsafePickleError) as e:
        safe_load(path)
    assert f"refusing to unpickle '{path}'" in str(e.value) and f"'{name}'" in str(e.value)


def test_a_class_instance_is_refused():
    with pytest.raises(UnsafePickleError, match=r"'collections\.Counter'"):
        safe_loads(pickle.dumps(collections.Counter('ab')), 'counts.pickle')


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / 'x.pickle'
    path.write_bytes(pickle.dumps(list(range(100)), protocol=2)[:-5])
    with pytest.raises(PickleLoadError, match=f"cannot read pickle file '{path}': it is corrupt"):
        safe_load(path)
    with pytest.raises(PickleLoadError, match='not found'):
        safe_load(tmp_path / 'absent.pickle')
