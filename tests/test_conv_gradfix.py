"""models.conv_gradfix: the same convolution, with every order of gradient on ordinary kernels."""
import pytest
import torch
import torch.nn.functional as F

from miscc.core.config import ConfigError, load_config
from miscc.families import family_of
from miscc.families.losses import matching_aware_gp
from miscc.training.gan import apply_fast_model_options
from models import NetD, NetG
from models.conv_gradfix import Conv2d, _Conv, conv2d

# (kernel, stride, padding, size, bias): D's 3x3, its 4x4 stride-2 down-sampling (odd size too),
# the 1x1 shortcut and the 4x4 valid head
CONFIGS = [(3, 1, 1, 7, True), (4, 2, 1, 8, False), (4, 2, 1, 9, True), (1, 1, 0, 5, True), (4, 1, 0, 4, False)]


@pytest.mark.slow
@pytest.mark.parametrize('k,s,p,size,bias', CONFIGS)
def test_first_and_second_gradients_are_exact_in_float64(k, s, p, size, bias):
    gen = torch.Generator().manual_seed(k * 10 + size)
    x = torch.randn(2, 3, size, size, dtype=torch.double, generator=gen, requires_grad=True)
    w = torch.randn(4, 3, k, k, dtype=torch.double, generator=gen, requires_grad=True)
    inputs = (x, w) + ((torch.randn(4, dtype=torch.double, generator=gen, requires_grad=True),) if bias else ())

    def f(x, w, *b):
        return conv2d(x, w, b[0] if b else None, s, p)

    assert torch.equal(f(*inputs), F.conv2d(x, w, inputs[2] if bias else None, s, p))
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.slow
def test_transposed_form_used_for_input_gradients_is_exact():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 5, dtype=torch.double, generator=gen, requires_grad=True)
    w = torch.randn(3, 4, 4, 4, dtype=torch.double, generator=gen, requires_grad=True)

    def f(x, w):
        return _Conv.apply(x, w, None, (2, 2), (1, 1), True, (1, 1))

    assert torch.allclose(f(x, w), F.conv_transpose2d(x, w, None, 2, 1, 1))
    assert torch.autograd.gradcheck(f, (x, w)) and torch.autograd.gradgradcheck(f, (x, w))


def _magp_grads(netD, images, sent):
    netD.zero_grad()
    images = images.clone().requires_grad_()
    sent = sent.clone().requires_grad_()
    logits = netD.COND_DNET(netD(images), sent)
    matching_aware_gp(logits, images, sent, k=2.0, p=6.0).backward()
    return {n: p.grad.clone() for n, p in netD.named_parameters() if p.grad is not None}


def test_discriminator_magp_gradients_equal_the_builtin_ones():
    torch.manual_seed(0)
    netD = NetD(4, 64, 32).double()
    for m in netD.modules():                     # open the residual branches
        if hasattr(m, 'gamma'):
            torch.nn.init.constant_(m.gamma, 0.7)
    images = torch.rand(3, 3, 64, 64, dtype=torch.double) * 2 - 1
    sent = torch.randn(3, 32, dtype=torch.double)
    builtin = _magp_grads(netD.set_conv_gradfix(False), images, sent)
    fixed = _magp_grads(netD.set_conv_gradfix(True), images, sent)
    assert builtin.keys() == fixed.keys() and len(builtin) > 10
    for name in builtin:
        torch.testing.assert_close(fixed[name], builtin[name], rtol=1e-9, atol=1e-12, msg=name)


def test_switch_keeps_parameters_and_keys():
    netD = NetD(4, 64, 32)
    keys = list(netD.state_dict())
    assert all(isinstance(m, Conv2d) for m in netD.modules() if isinstance(m, torch.nn.Conv2d))
    netD.set_conv_gradfix(True)
    assert list(netD.state_dict()) == keys
    assert all(m.fast_gradients for m in netD.modules() if isinstance(m, Conv2d))


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason='no native bf16 on this CPU')
def test_autocast_bf16_runs_in_bf16_and_returns_float32_weight_gradients():
    conv = Conv2d(3, 4, 3, 1, 1)
    conv.fast_gradients = True
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = conv(x)
        gx, = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
    assert y.dtype == torch.bfloat16
    gx.float().square().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()


def test_config_choice_and_auto():
    netG, netD = NetG(4, 100, 64, 32), NetD(4, 64, 32)
    nets, family = {'netG': netG, 'netD': netD}, family_of(load_config(None, []))
    apply_fast_model_options(load_config(None, []), family, nets)      # auto on a CPU: built-in path
    assert not netD.conv_img.fast_gradients
    apply_fast_model_options(load_config(None, ['TRAIN.CONV_GRADFIX=on']), family, nets)
    assert netD.conv_img.fast_gradients
    with pytest.raises(ConfigError, match="TRAIN.CONV_GRADFIX must be one of 'auto', 'on', 'off', got 'yes'"):
        apply_fast_model_options(load_config(None, ['TRAIN.CONV_GRADFIX=yes']), family, nets)


def test_magp_first_derivative_skips_weight_gradients_but_its_backward_has_them(monkeypatch):
    from models import conv_gradfix
    calls = []
    real = conv_gradfix._ConvWeightGrad.forward

    def counting(ctx, *args):
        calls.append(1)
        return real(ctx, *args)

    monkeypatch.setattr(conv_gradfix._ConvWeightGrad, 'forward', staticmethod(counting))
    torch.manual_seed(0)
    netD = NetD(4, 64, 32).set_conv_gradfix(True)
    images = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_()
    sent = torch.randn(2, 32, requires_grad=True)
    gp = matching_aware_gp(netD.COND_DNET(netD(images), sent), images, sent)
    assert calls == []                      # dD/dx and dD/ds only: no weight-gradient convolution
    gp.backward()
    assert len(calls) > 10
    assert all(p.grad is not None for p in netD.parameters() if p.requires_grad)
