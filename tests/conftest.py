"""Shared fixtures: small generated data sets and a fast torch.compile stand-in
(the helpers they use live in helpers.py)."""
import pytest
import torch

from helpers import make_birds_layout, real_keys
from miscc.data.synthetic import make_synthetic_birds


@pytest.fixture
def mini_birds(tmp_path):
    """Six real train keys and three real test keys with images and captions."""
    return make_birds_layout(tmp_path / 'birds', real_keys('train')[:6], real_keys('test')[:3])


@pytest.fixture(scope='session')
def synthetic_small(tmp_path_factory):
    """A small synthetic set (24 train / 8 test, 128 px), made once per session."""
    out = tmp_path_factory.mktemp('synthetic') / 'synthetic_birds'
    make_synthetic_birds(str(out), num_train=24, num_test=8, image_size=128, seed=7, workers=1)
    return out


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile through dynamo without code generation: the same wrapper and graph
    capture as the real thing, the same numerics as eager, seconds instead of minutes.
    Yields the list of (module, mode) it was called with."""
    real = torch.compile
    calls = []

    def compile_eager(module, mode=None):
        calls.append((module, mode))
        return real(module, backend='eager')
    monkeypatch.setattr(torch, 'compile', compile_eager)
    return calls
