"""The SSA-GAN update (miscc/families/ssagan.py) and its fast options: each one against the
faithful computation it replaces."""
import copy

import pytest
import torch

from helpers import as_batch, ssagan_update
from miscc.core.config import ConfigError, load_config
from miscc.families import family_of
from miscc.families import ssagan
from miscc.families.ssagan import UpdateOptions
from miscc.training.gan import apply_fast_model_options
from models import CNN_ENCODER, NetD, NetG, RNN_ENCODER

VOCAB = 30


def _batch(seed=0, size=64, bsz=3):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(bsz, 3, size, size, generator=gen) * 2 - 1
    lens = torch.tensor([7, 5, 4])[:bsz]
    captions = torch.randint(1, VOCAB, (bsz, 18), generator=gen)
    captions[torch.arange(18)[None] >= lens[:, None]] = 0
    return as_batch(images, captions, lens, torch.tensor([1, 2, 3])[:bsz])


def _nets():
    torch.manual_seed(0)
    netG, netD = NetG(4, 100, 64, 32), NetD(4, 64, 32)
    # leave the zero initialisation so that every SSCBN and residual branch is active
    for name, p in netG.named_parameters():
        if 'gamma' in name or 'affine' in name:
            torch.nn.init.normal_(p, std=0.2)
    text = RNN_ENCODER(VOCAB, nhidden=32).eval().requires_grad_(False)
    image = CNN_ENCODER(32, input_size=75).eval().requires_grad_(False)
    return netG, netD, text, image


def _update(nets, **options):
    return ssagan_update(*(copy.deepcopy(n) for n in nets), **options)


def test_lean_sscbn_computes_the_same_images():
    netG = _nets()[0].eval()
    noise, sent = torch.randn(2, 100), torch.randn(2, 32)
    with torch.no_grad():
        plain, plain_masks = netG(noise, sent)
        netG.set_lean_sscbn(True)
        lean, lean_masks = netG(noise, sent)
    assert plain.abs().max() > 0.01
    torch.testing.assert_close(lean, plain, rtol=1e-4, atol=1e-5)
    for a, b in zip(lean_masks, plain_masks):
        torch.testing.assert_close(a, b)


def test_fused_magp_takes_one_d_step_on_the_same_losses():
    nets = _nets()
    faithful, fused = _update(nets), _update(nets, fused_magp=True)
    torch.manual_seed(5)
    a = faithful(_batch())
    torch.manual_seed(5)
    b = fused(_batch())
    # the hinge terms see the same D and the same fakes; the penalty is taken on the real pass
    # before the D step (faithful: after it), so it differs while the hinge losses agree
    for k in ('errD', 'errD_real', 'errD_fake', 'errD_mismatch'):
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    steps = lambda opt: max(int(s['step']) for s in opt.state.values())   # noqa: E731
    assert steps(faithful.optD) == 2 and steps(fused.optD) == 1
    assert steps(faithful.optG) == steps(fused.optG) == 1


def test_bf16_autocast_on_cpu_gives_close_finite_losses():
    nets = _nets()
    full, half = _update(nets), _update(nets, bf16=True)
    torch.manual_seed(7)
    a = full(_batch(1))
    torch.manual_seed(7)
    b = half(_batch(1))
    for k in ('errD', 'errG', 'DAMSM'):
        assert torch.isfinite(torch.tensor(b[k])), k
        assert b[k] == pytest.approx(a[k], rel=0.05, abs=0.05), k


def test_fast_config_turns_on_bf16_only_where_it_pays(monkeypatch):
    nets = _nets()
    cfg = load_config(None, ['TRAIN.FAST=True'])
    cpu = next(nets[0].parameters()).device
    monkeypatch.setattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', lambda: False)
    assert not UpdateOptions.from_config(cfg, cpu, finetune=False).bf16
    monkeypatch.setattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', lambda: True)
    update = ssagan_update(*nets, cfg=cfg).opts
    assert update.bf16 and update.fused_magp and not update.channels_last
    assert not UpdateOptions.from_config(load_config(None, []), cpu, finetune=False).bf16


@pytest.mark.slow
def test_compiled_generator_trains_like_the_plain_one(eager_compile):
    compiled = eager_compile
    cfg = load_config(None, ['TRAIN.FAST=True', 'TRAIN.FAST_OPTIONS.COMPILE=True', 'TRAIN.FAST_OPTIONS.BF16=False'])
    plain_cfg = load_config(None, ['TRAIN.FAST=True', 'TRAIN.FAST_OPTIONS.BF16=False'])
    results = []
    for c in (plain_cfg, cfg):
        netG, netD, text, image = (copy.deepcopy(n) for n in _nets())
        generator = apply_fast_model_options(c, family_of(c), {'netG': netG, 'netD': netD})
        update = ssagan_update(netG, netD, text, image, G=generator, cfg=c)
        assert (update.wrapped_G is netG) == (c is plain_cfg)
        torch.manual_seed(11)
        results.append((update(_batch(2)), netG.state_dict()))
    assert [mode for _, mode in compiled] == [None]
    (a, state_a), (b, state_b) = results
    for k in ('errD', 'errG', 'DAMSM', 'MAGP'):
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-7), k
    assert list(state_b) == list(state_a)          # official keys, no '_orig_mod.'
    for k in state_a:
        torch.testing.assert_close(state_b[k], state_a[k], rtol=1e-5, atol=1e-6)


def test_compile_wraps_the_device_wrapper(eager_compile):
    compiled = eager_compile
    netG, netD = _nets()[:2]
    family, nets = family_of(load_config(None, [])), {'netG': netG, 'netD': netD}
    wrapper = torch.nn.Sequential(netG)          # stands for DDP(netG)
    cfg = load_config(None, ['TRAIN.FAST=True', 'TRAIN.FAST_OPTIONS.COMPILE=True'])
    generator = apply_fast_model_options(cfg, family, nets, wrap=lambda g: wrapper)
    assert compiled == [(wrapper, None)] and generator._orig_mod is wrapper
    assert apply_fast_model_options(load_config(None, []), family, nets, wrap=lambda g: wrapper) is wrapper
    cfg.TRAIN.FAST_OPTIONS.COMPILE_MODE = 'reduce-overhead'
    apply_fast_model_options(cfg, family, nets)
    assert compiled[-1] == (netG, 'reduce-overhead')
    with pytest.raises(ConfigError, match=r"TRAIN.FAST_OPTIONS.COMPILE_MODE must be one of .*'reduce-overhead'.*got 'fastest'"):
        load_config(None, ['TRAIN.FAST_OPTIONS.COMPILE_MODE=fastest'])


@pytest.mark.slow
def test_gpu_option_set_on_cpu_gives_the_same_losses():
    """What TRAIN.FAST turns on for CUDA, but bf16: channels-last G, D and images, the
    first-order-only convolution backward in D (CONV_GRADFIX), lean SSCBN, fused MA-GP."""
    nets = _nets()
    plain = _update(nets, fused_magp=True)
    gpu_like = _update(nets, fused_magp=True, channels_last=True)
    gpu_like.netG.set_lean_sscbn(True)
    gpu_like.netD.set_conv_gradfix(True)
    for net in (gpu_like.netG, gpu_like.netD):
        net.to(memory_format=torch.channels_last)
    assert gpu_like.netD.conv_img.weight.is_contiguous(memory_format=torch.channels_last)
    assert not gpu_like.netD.conv_img.weight.is_contiguous()
    for step in range(2):          # the second iteration sees the stepped weights and Adam states
        torch.manual_seed(20 + step)
        a = plain(_batch(3 + step))
        torch.manual_seed(20 + step)
        b = gpu_like(_batch(3 + step))
        for k in ('errD', 'errG', 'DAMSM', 'MAGP'):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), (step, k)
    # Adam's first steps move a weight by about +-lr whatever the size of its gradient, so a
    # gradient within rounding of 0 may step either way (seen on some CPUs and thread counts):
    # nearly every weight agrees to 1e-5, and none is further apart than those two steps allow
    lr = plain.optD.param_groups[0]['lr']
    for (name, p), q in zip(plain.netD.named_parameters(), gpu_like.netD.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=2 * 2 * lr, msg=name)
        close = ((q - p).abs() <= 1e-5 + 1e-4 * p.abs()).float().mean().item()
        assert close >= 0.99, (name, close)


class _RaisingImageEncoder(torch.nn.Module):
    """An image encoder whose forward fails: proves that it is never called."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args):
        raise AssertionError('the image encoder was called')


def _old_g_step(u, fake, words, sent, cap_lens, class_ids):
    """The G step before lambda_DA = 0 skipped the image encoder: 0 x the DAMSM loss."""
    with ssagan.frozen(u.netD, u.image_encoder):
        err_g = ssagan.generator_adversarial_loss(u.netD.COND_DNET(u.wrapped_D(fake), sent).float())
        damsm = u.opts.lambda_da * ssagan.damsm_loss(u.image_encoder, fake, words, sent, cap_lens, class_ids,
                                                     **u.opts.smooth)
        ssagan.optimizer_step(u.optG, err_g + damsm)
    return dict(errG=err_g, DAMSM=damsm)


def test_lambda_da_zero_never_runs_the_image_encoder_and_keeps_the_update(monkeypatch):
    netG, netD, text, image = _nets()
    skipping = ssagan_update(*(copy.deepcopy(n) for n in (netG, netD, text)), _RaisingImageEncoder(), lambda_da=0.0)
    old = _update((netG, netD, text, image), lambda_da=0.0)
    torch.manual_seed(11)
    new_losses = skipping(_batch(2))
    monkeypatch.setattr(old, 'g_step', lambda *args: _old_g_step(old, *args))
    torch.manual_seed(11)
    old_losses = old(_batch(2))
    assert new_losses['DAMSM'] == 0.0 and old_losses['DAMSM'] == 0.0
    assert new_losses['errG'] == old_losses['errG']
    moved = False
    for (name, a), b, start in zip(skipping.netG.named_parameters(), old.netG.parameters(), netG.parameters()):
        assert torch.equal(a, b), name          # the same G update, bit for bit
        moved |= not torch.equal(a, start)
    assert moved
    # with a DAMSM weight the encoder is used: the raising one stops the step
    with pytest.raises(AssertionError, match='image encoder was called'):
        ssagan_update(*(copy.deepcopy(n) for n in (netG, netD, text)), _RaisingImageEncoder(), lambda_da=0.05)(_batch(2))


def test_lambda_da_zero_from_the_config():
    cfg = load_config(None, ['TRAIN.LAMBDA_DA=0'])
    assert UpdateOptions.from_config(cfg, torch.device('cpu'), finetune=False).lambda_da == 0.0


def test_mismatch_key_reaches_the_update_and_is_checked():
    cpu = torch.device('cpu')
    assert UpdateOptions.from_config(load_config(None, []), cpu, finetune=False).mismatch == 'shifted'
    cfg = load_config(None, ['GAN.MISMATCH=nearest'])
    assert UpdateOptions.from_config(cfg, cpu, finetune=False).mismatch == 'nearest'
    with pytest.raises(ConfigError, match="GAN.MISMATCH must be one of 'shifted', 'nearest', got 'hardest'"):
        load_config(None, ['GAN.MISMATCH=hardest'])
