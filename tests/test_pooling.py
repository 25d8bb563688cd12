"""models.pooling: D's 2x2 average pooling, bit-identical to F.avg_pool2d in value and gradients."""
import pytest
import torch
import torch.nn.functional as F

from miscc.families.losses import matching_aware_gp
from models import NetD
from models.pooling import _AvgPool2x, avg_pool2x


def _grads(pool, x, upstream, second):
    """Value, first gradient and the gradient of <first gradient, second> w.r.t. x and upstream."""
    x = x.clone().requires_grad_()
    upstream = upstream.clone().requires_grad_()
    y = pool(x)
    gx, = torch.autograd.grad(y, x, upstream, create_graph=True)
    ggx, gup = torch.autograd.grad((gx * second).sum() + (y ** 2).sum(), (x, upstream))
    return y.detach(), gx.detach(), ggx, gup


@pytest.mark.parametrize('shape', [(2, 3, 8, 8), (1, 5, 16, 6), (3, 2, 2, 2)])
def test_values_and_gradients_of_every_order_equal_the_builtin_bit_for_bit(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen) * 10
    upstream = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen)
    second = torch.randn(shape, generator=gen)
    ours = _grads(avg_pool2x, x, upstream, second)
    builtin = _grads(lambda t: F.avg_pool2d(t, 2), x, upstream, second)
    for a, b in zip(ours, builtin):
        assert a.shape == b.shape
        assert torch.equal(a, b)


def test_float64_gradcheck_and_gradgradcheck():
    x = torch.randn(2, 3, 6, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(_AvgPool2x.apply, (x,))
    assert torch.autograd.gradgradcheck(_AvgPool2x.apply, (x,))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_reduced_precision_equals_the_builtin_bit_for_bit(dtype):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 4, 8, 6, generator=gen) * 10).to(dtype).requires_grad_()
    upstream = torch.randn(2, 4, 4, 3, generator=gen).to(dtype)
    y = avg_pool2x(x)
    assert 'AvgPool2x' in type(y.grad_fn).__name__ and y.dtype == dtype
    assert torch.equal(y, F.avg_pool2d(x, 2))
    gx, = torch.autograd.grad(y, x, upstream)
    gx_builtin, = torch.autograd.grad(F.avg_pool2d(x, 2), x, upstream)
    assert torch.equal(gx, gx_builtin)


def test_odd_sizes_take_the_builtin_function():
    x = torch.randn(1, 2, 5, 4, requires_grad=True)
    y = avg_pool2x(x)
    assert 'AvgPool2D' in type(y.grad_fn).__name__
    assert torch.equal(y, F.avg_pool2d(x, 2))
    assert 'AvgPool2x' in type(avg_pool2x(torch.randn(1, 2, 4, 4, requires_grad=True)).grad_fn).__name__


def test_discriminator_magp_gradients_unchanged_bit_for_bit(monkeypatch):
    torch.manual_seed(0)
    netD = NetD(4, 64, 32)
    for m in netD.modules():                      # open the residual branches
        if hasattr(m, 'gamma'):
            torch.nn.init.constant_(m.gamma, 0.7)
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    sent = torch.randn(3, 32)

    def magp_grads():
        netD.zero_grad()
        x, s = images.clone().requires_grad_(), sent.clone().requires_grad_()
        matching_aware_gp(netD.COND_DNET(netD(x), s), x, s).backward()
        return {n: p.grad.clone() for n, p in netD.named_parameters() if p.grad is not None}

    ours = magp_grads()
    monkeypatch.setattr('models.discriminator.avg_pool2x', lambda t: F.avg_pool2d(t, 2))
    builtin = magp_grads()
    assert ours.keys() == builtin.keys() and len(ours) > 10
    assert all(torch.equal(ours[k], builtin[k]) for k in ours)
