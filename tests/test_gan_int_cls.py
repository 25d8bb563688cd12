"""GAN-INT-CLS: networks against the reference layout, losses against hand computations,
and the two update steps against a re-computation from what the networks were given."""
import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets import Batch
from helpers import gan_int_cls_update
from miscc.core.config import ConfigError, load_config
from miscc.data.hd5 import Hd5Batch
from miscc.families import FAMILIES, family_of
from miscc.families import gan_int_cls as fam
from models.gan_int_cls import (Discriminator, Generator, MinibatchDiscrimination, from_reference_state_dict,
                                init_dcgan_weights)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((Path(__file__).parent / 'fixtures' / 'gan_int_cls_reference_keys.json')
                       .read_text())['networks']
LN3 = math.log(3.0)   # sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4


def _shapes(module):
    return OrderedDict((k, list(v.shape)) for k, v in module.state_dict().items())


# --------------------------------------------------------------------------- networks
@pytest.mark.parametrize('name, build', [
    ('gan_cls.generator', lambda: Generator()),
    ('gan_cls.discriminator', lambda: Discriminator()),
    ('wgan_cls.discriminator', lambda: Discriminator()),
    ('wgan_cls.discriminator(improved=True)', lambda: Discriminator(batch_norm=False)),
    ('gan.generator', lambda: Generator(conditional=False)),
    ('gan.discriminator', lambda: Discriminator(conditional=False)),
    ('wgan.discriminator', lambda: Discriminator(conditional=False)),
    ('wgan.discriminator(improved=True)', lambda: Discriminator(conditional=False, batch_norm=False)),
])
def test_keys_and_shapes_are_the_reference_implementations(name, build):
    assert list(_shapes(build()).items()) == list(REFERENCE[name].items())


def test_reference_checkpoint_loads_strictly():
    """A DataParallel state dict without num_batches_tracked (what the reference code saved)."""
    saved = Discriminator()
    init_dcgan_weights(saved)
    old = OrderedDict(('module.' + k, v.clone()) for k, v in saved.state_dict().items()
                      if not k.endswith('num_batches_tracked'))
    fresh = Discriminator()
    fresh.load_state_dict(from_reference_state_dict(old), strict=True)
    for k, v in saved.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_generator_output_at_64_px():
    g = Generator(noise_dim=10, embedding_dim=256, ngf=4)
    out = g(torch.randn(3, 10), torch.randn(3, 256))
    assert out.shape == (3, 3, 64, 64)
    assert out.abs().max() <= 1.0
    # noise as B x nz x 1 x 1 (the reference's layout) gives the same images
    g.eval()
    z, e = torch.randn(2, 10), torch.randn(2, 256)
    assert torch.equal(g(z, e), g(z.view(2, 10, 1, 1), e))


def test_discriminator_outputs_and_features():
    d = Discriminator(embedding_dim=256, ndf=4)
    logits, feats = d(torch.randn(5, 3, 64, 64), torch.randn(5, 256))
    assert logits.shape == (5,) and feats.shape == (5, 32, 4, 4)
    d0 = Discriminator(conditional=False, ndf=4)
    logits, feats = d0(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2,) and feats.shape == (2, 32, 4, 4)
    assert not hasattr(d0, 'projector')


def test_32_px_drops_the_widest_stage():
    # 32 px: G 4x4 at 4ngf -> 8 (2ngf) -> 16 (ngf) -> 32 (3); D 16 (ndf) -> 8 (2ndf) -> 4 (4ndf)
    g = Generator(noise_dim=10, embedding_dim=256, ngf=4, image_size=32)
    convs = [m for m in g.netG if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(138, 16), (16, 8), (8, 4), (4, 3)]
    assert g(torch.randn(3, 10), torch.randn(3, 256)).shape == (3, 3, 32, 32)
    d = Discriminator(embedding_dim=256, ndf=4, minibatch_kernels=3, image_size=32)
    convs = [m for m in d.netD_1 if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 4), (4, 8), (8, 16)]
    assert d.netD_2[0].in_channels == 16 + 128 + 3 and d.minibatch.T_tensor.shape == (16 * 16, 15)
    logits, feats = d(torch.randn(5, 3, 32, 32), torch.randn(5, 256))
    assert logits.shape == (5,) and feats.shape == (5, 16, 4, 4)
    # the default size keeps the implementation's layers
    convs = [m for m in Generator(noise_dim=10, embedding_dim=256, ngf=4).netG
             if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(138, 32), (32, 16), (16, 8), (8, 4), (4, 3)]
    for bad in (16, 48):
        with pytest.raises(ValueError, match=f'power of two >= 32, got {bad}'):
            Generator(image_size=bad)


def test_unconditional_generator():
    g = Generator(noise_dim=7, ngf=4, conditional=False)
    assert not hasattr(g, 'projection') and g.netG[0].in_channels == 7
    assert g(torch.randn(2, 7)).shape == (2, 3, 64, 64)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match='64 x 64'):
        Discriminator(ndf=4)(torch.randn(2, 3, 128, 128), torch.randn(2, 1024))
    with pytest.raises(ValueError, match='32 x 32 images, got \\(64, 64\\)'):
        Discriminator(ndf=4, image_size=32)(torch.randn(2, 3, 64, 64), torch.randn(2, 1024))
    with pytest.raises(ValueError, match='needs a text embedding'):
        Discriminator(ndf=4)(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match='needs a text embedding'):
        Generator(ngf=4)(torch.randn(2, 100))
    with pytest.raises(ValueError, match='noise must be B x 100'):
        Generator(ngf=4)(torch.randn(2, 64), torch.randn(2, 1024))


def test_generator_concatenates_text_then_noise():
    """Independent re-computation of the first layer: projected text in the first 128
    input channels of netG.0, the noise after them."""
    g = Generator(noise_dim=6, embedding_dim=8, projected_dim=5, ngf=2).eval()
    init_dcgan_weights(g)
    z, e = torch.randn(3, 6), torch.randn(3, 8)
    lin, bn = g.projection[0], g.projection[1]
    projected = F.leaky_relu((e @ lin.weight.T + lin.bias - bn.running_mean)
                             / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias, 0.2)
    latent = torch.cat([projected, z], 1)[:, :, None, None]
    first = F.conv_transpose2d(latent, g.netG[0].weight)
    assert torch.allclose(g.netG[1:](first), g(z, e), atol=1e-6)


def test_discriminator_replicates_the_projected_text_after_the_image_channels():
    d = Discriminator(embedding_dim=8, projected_dim=3, ndf=2).eval()
    init_dcgan_weights(d)
    x, e = torch.randn(2, 3, 64, 64), torch.randn(2, 8)
    feats = d.netD_1(x)
    lin, bn = d.projector.projection[0], d.projector.projection[1]
    projected = F.leaky_relu((e @ lin.weight.T + lin.bias - bn.running_mean)
                             / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias, 0.2)
    w = d.netD_2[0].weight                       # 1 x (16 + 3) x 4 x 4
    # a 4 x 4 kernel on a 4 x 4 map is a dot product; the tiled text sums over the kernel
    expected = ((w[0, :16] * feats).sum((1, 2, 3))
                + (w[0, 16:].sum((1, 2)) * projected).sum(1))
    logits, returned = d(x, e)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.equal(returned, feats)


def test_dcgan_initialisation():
    torch.manual_seed(0)
    g = Generator()
    linear_before = g.projection[0].weight.clone()
    g.apply(init_dcgan_weights)
    convs = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, nn.ConvTranspose2d)])
    bns = torch.cat([m.weight for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(convs.mean().item()) < 1e-3 and abs(convs.std().item() - 0.02) < 1e-3
    assert abs(bns.mean().item() - 1.0) < 5e-3 and abs(bns.std().item() - 0.02) < 5e-3
    assert all(torch.count_nonzero(m.bias) == 0 for m in g.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.equal(g.projection[0].weight, linear_before)


# --------------------------------------------------------------------------- losses
# Hand computations (sigmoid(ln 3) = 3/4):
#   real logits [ln 3, 0], target 1:   -ln(3/4) = 0.287682, -ln(1/2) = 0.693147 -> 0.490415
#   wrong logits [0, 0], target 0:     ln 2 = 0.693147
#   fake logits [-ln 3, ln 3], target 0: -ln(3/4) = 0.287682, -ln(1/4) = 1.386294 -> 0.836988
#   paper:  0.490415 + (0.693147 + 0.836988) / 2 = 1.255482
#   sum:    0.490415 +  0.693147 + 0.836988      = 2.020550
#   real target 0.9: -(0.9 ln(3/4) + 0.1 ln(1/4)) = 0.397543, ln 2 at 1/2 -> 0.545345;
#   with the paper's weights: 0.545345 + 0.765068 = 1.310413
REAL = torch.tensor([LN3, 0.0])
WRONG = torch.tensor([0.0, 0.0])
FAKE = torch.tensor([-LN3, LN3])


def test_cls_loss_paper_weights():
    loss, terms = fam.discriminator_loss(REAL, FAKE, WRONG)
    assert terms['d_real'].item() == pytest.approx(0.490415, abs=1e-6)
    assert terms['d_wrong'].item() == pytest.approx(0.693147, abs=1e-6)
    assert terms['d_fake'].item() == pytest.approx(0.836988, abs=1e-6)
    assert loss.item() == pytest.approx(1.255482, abs=1e-6)


def test_cls_loss_implementation_sum():
    loss, _ = fam.discriminator_loss(REAL, FAKE, WRONG, mismatch_weight=1.0)
    assert loss.item() == pytest.approx(2.020550, abs=1e-6)


def test_plain_gan_loss_weights_fake_fully():
    loss, terms = fam.discriminator_loss(REAL, FAKE)
    assert 'd_wrong' not in terms
    assert loss.item() == pytest.approx(0.490415 + 0.836988, abs=1e-6)


def test_one_sided_label_smoothing_touches_only_the_real_term():
    loss, terms = fam.discriminator_loss(REAL, FAKE, WRONG, real_target=0.9)
    assert terms['d_real'].item() == pytest.approx(0.545345, abs=1e-6)
    assert terms['d_fake'].item() == pytest.approx(0.836988, abs=1e-6)
    assert loss.item() == pytest.approx(1.310413, abs=1e-6)


def test_generator_adversarial_loss_target_is_one():
    # fakes [-ln 3, ln 3] against 1: -ln(1/4) = 1.386294, -ln(3/4) = 0.287682
    assert fam.generator_adversarial_loss(FAKE).item() == pytest.approx(0.836988, abs=1e-6)


def test_critic_losses():
    real, wrong, fake = torch.tensor([2.0, 4.0]), torch.tensor([1.0, -1.0]), torch.tensor([0.5, 1.5])
    # means 3, 0, 1
    assert fam.critic_loss(real, fake, wrong)[0].item() == pytest.approx(0.5 * (0 + 1) - 3)
    assert fam.critic_loss(real, fake, wrong, mismatch_weight=1.0)[0].item() == pytest.approx(1 - 3)
    assert fam.critic_loss(real, fake)[0].item() == pytest.approx(1 - 3)
    assert fam.generator_critic_loss(fake).item() == pytest.approx(-1.0)


def test_feature_matching_compares_batch_means():
    fake = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 6.0]]]])     # batch mean [2, 4]
    real = torch.tensor([[[[0.0, 0.0]]], [[[2.0, 2.0]]]])     # batch mean [1, 1]
    fake.requires_grad_(True)
    real.requires_grad_(True)
    loss = fam.feature_matching_loss(fake, real)
    assert loss.item() == pytest.approx((1 ** 2 + 3 ** 2) / 2)
    loss.backward()
    assert real.grad is None                                    # the real side is a constant
    # d/df of mean((mean_b f - m)^2): 2 * diff / 2 elements / 2 items
    assert torch.allclose(fake.grad, torch.tensor([[[[0.5, 1.5]]], [[[0.5, 1.5]]]]))


def test_l1_distance():
    fake = torch.tensor([0.5, -0.5, 1.0, 0.0])
    real = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert fam.l1_distance(fake, real).item() == pytest.approx(0.75)


def test_interpolation():
    t1, t2 = torch.tensor([[2.0, 4.0]]), torch.tensor([[0.0, -2.0]])
    assert torch.equal(fam.interpolate_embeddings(t1, t2), torch.tensor([[1.0, 1.0]]))
    assert torch.equal(fam.interpolate_embeddings(t1, t2, 0.25), torch.tensor([[0.5, -0.5]]))
    assert torch.equal(fam.shifted_in_batch(torch.tensor([[1.0], [2.0], [3.0]])),
                       torch.tensor([[3.0], [1.0], [2.0]]))


def test_critic_schedule():
    steps = [fam.critic_iterations(i, 5) for i in (0, 24, 25, 499, 500, 501, 1000)]
    assert steps == [100, 100, 5, 5, 100, 5, 100]
    assert fam.critic_iterations(0, 3, burst=False) == 3


def test_weight_clipping():
    d = Discriminator(embedding_dim=8, ndf=4)
    d.apply(init_dcgan_weights)
    assert max(p.abs().max().item() for p in d.parameters()) > 0.5     # BN scales ~ 1
    fam.clip_weights_(d, 0.01)
    assert all(p.abs().max().item() <= 0.01 for p in d.parameters())
    assert any((p.abs() == 0.01).any() for p in d.parameters())


def test_options_check_values_and_name_the_key():
    with pytest.raises(ValueError, match="'GAN_INT_CLS.LOSS'"):
        fam.GanIntClsOptions(loss='hinge')
    with pytest.raises(ValueError, match="'GAN_INT_CLS.MISMATCH'"):
        fam.GanIntClsOptions(mismatch='both')
    with pytest.raises(ValueError, match="'GAN_INT_CLS.LABEL_SMOOTHING'"):
        fam.GanIntClsOptions(label_smoothing=1.0)
    with pytest.raises(ValueError, match="'GAN_INT_CLS.N_CRITIC'"):
        fam.GanIntClsOptions(n_critic=0)
    opts = fam.GanIntClsOptions.from_config({'LOSS': 'wgan', 'INT': False, 'NGF': 64})
    assert opts.loss == 'wgan' and not opts.interpolation and opts.l1 == 50.0


class _LinearCritic(nn.Module):
    """D(x, h) = h_0 * sum(w * x): its gradient in x is h_0 * w for every x."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x, h=None):
        scores = (x * self.w).flatten(1).sum(1)
        return (scores if h is None else scores * h[:, 0]), x


class _SquareCritic(nn.Module):
    """D(x) = sum(x^2) / 2: its gradient is x itself, so the penalty reads the interpolates."""

    def forward(self, x):
        return 0.5 * x.pow(2).flatten(1).sum(1), x


def test_gradient_penalty_against_hand_computed_values():
    # a linear critic: ||grad|| = |h_0| * ||w||, whatever the images and alpha
    w = torch.zeros(1, 3, 64, 64)
    w[0, 0, 0, :2] = torch.tensor([3.0, 4.0])                           # ||w|| = 5
    real, fake = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    h = torch.tensor([[1.0, 9.0], [-0.4, 9.0]])                         # norms 5 and 2
    critic = _LinearCritic(w)
    gp = fam.gradient_penalty(critic, real, fake, h)
    assert gp.item() == pytest.approx(((5 - 1) ** 2 + (2 - 1) ** 2) / 2)
    gp.backward()                                                       # differentiable in D
    # d/dw of mean_i (|h_i| ||w|| - 1)^2 = mean_i 2 (|h_i| ||w|| - 1) |h_i| w / ||w||
    expected = (2 * 4 * 1 + 2 * 1 * 0.4) / 2 * w / 5
    assert torch.allclose(critic.w.grad, expected, atol=1e-6)
    # a square critic: grad = x^ = alpha x + (1 - alpha) G(z), the norm over the whole image
    real = torch.zeros(2, 3, 64, 64)
    real[0, 0, 0, 0], real[1, 2, 5, 7] = 2.0, 6.0
    fake = torch.zeros(2, 3, 64, 64)
    fake[0, 1, 3, 3], fake[1, 2, 5, 7] = 4.0, 2.0
    alpha = torch.tensor([0.5, 0.25])
    # sample 0: x^ has 1.0 and 2.0 at two pixels, ||x^|| = sqrt(5); sample 1: 1.5 + 1.5 = 3.0
    gp = fam.gradient_penalty(_SquareCritic(), real, fake, None, conditional=False, alpha=alpha)
    assert gp.item() == pytest.approx(((math.sqrt(5) - 1) ** 2 + (3 - 1) ** 2) / 2, rel=1e-6)


def test_minibatch_discrimination_against_a_loop():
    torch.manual_seed(3)
    layer = MinibatchDiscrimination(in_features=6, kernels=2, kernel_dim=3)
    assert layer.T_tensor.shape == (6, 6) and 0.05 < layer.T_tensor.std().item() < 0.2   # N(0, 0.1^2)
    f = torch.randn(4, 6, 1, 1)
    out = layer(f)
    m = (f.flatten(1) @ layer.T_tensor).view(4, 2, 3)
    for i in range(4):
        for b in range(2):
            expected = sum(math.exp(-(m[i, b] - m[j, b]).abs().sum().item()) for j in range(4))
            assert out[i, b].item() == pytest.approx(expected, rel=1e-5)
    assert (out >= 1.0).all()                                    # the sample itself adds exp(0)
    # identical samples (a collapsed G) reach the batch size in every kernel
    assert torch.allclose(layer(f[:1].expand(4, -1, -1, -1)), torch.full((4, 2), 4.0))


def test_discriminator_with_minibatch_discrimination():
    torch.manual_seed(0)
    plain = Discriminator(embedding_dim=8, projected_dim=4, ndf=2)
    torch.manual_seed(0)
    d = Discriminator(embedding_dim=8, projected_dim=4, ndf=2, minibatch_kernels=3, minibatch_kernel_dim=2)
    extra = set(_shapes(d)) - set(_shapes(plain))
    assert extra == {'minibatch.T_tensor'} and d.minibatch.T_tensor.shape == (2 * 8 * 16, 3 * 2)
    assert d.netD_2[0].in_channels == 2 * 8 + 4 + 3
    images, emb = torch.rand(5, 3, 64, 64), torch.randn(5, 8)
    logits, features = d(images, emb)
    assert logits.shape == (5,) and features.shape == (5, 16, 4, 4)
    # the scores now depend on the rest of the batch: the first image scored alone differs
    d.eval()
    alone, _ = d(images[:1], emb[:1])
    together, features = d(images, emb)
    assert not torch.allclose(alone, together[:1])
    # the head reads [image features, text, closeness] with the closeness replicated over 4 x 4
    head = d.netD_2[0].weight
    with torch.no_grad():
        joint = torch.cat([d.projector(features, emb),
                           d.minibatch(features)[:, :, None, None].expand(-1, -1, 4, 4)], 1)
    assert torch.allclose(together, (joint * head).flatten(1).sum(1), atol=1e-5)


# --------------------------------------------------------------------------- steps
class Recorder(nn.Module):
    """The wrapped network, keeping every call's inputs and outputs."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.calls = []

    def forward(self, *args):
        out = self.net(*args)
        self.calls.append(([a.detach().clone() for a in args], out))
        return out


def _tiny(conditional=True, embedding_dim=8, batch_norm=True):
    torch.manual_seed(1)
    g = Generator(noise_dim=6, embedding_dim=embedding_dim, projected_dim=4, ngf=2,
                  conditional=conditional)
    d = Discriminator(embedding_dim=embedding_dim, projected_dim=4, ndf=2,
                      conditional=conditional, batch_norm=batch_norm)
    g.apply(init_dcgan_weights)
    d.apply(init_dcgan_weights)
    return Recorder(g), Recorder(d)


def _batch(b=4, e=8):
    torch.manual_seed(2)
    return (torch.rand(b, 3, 64, 64) * 2 - 1, torch.randn(b, e),
            torch.rand(b, 3, 64, 64) * 2 - 1, torch.randn(b, 6))


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


@pytest.mark.parametrize('mismatch', ['text', 'image'])
def test_discriminator_step_scores_the_three_pairs(mismatch):
    g, d = _tiny()
    images, emb, wrong_images, z = _batch()
    opt_g, opt_d = fam.make_optimizers(g, d)
    g_before, d_before = _params(g), _params(d)
    opts = fam.GanIntClsOptions(mismatch=mismatch)
    out = gan_int_cls_update(g, d, opts, opt_d=opt_d, noise_dim=6).d_step(images, emb, wrong_images=wrong_images,
                                                                        noise=z)
    (g_in, fake), = g.calls
    assert torch.equal(g_in[0], z) and torch.equal(g_in[1], emb)
    (real_in, real_out), (wrong_in, wrong_out), (fake_in, fake_out) = d.calls
    assert torch.equal(real_in[0], images) and torch.equal(real_in[1], emb)
    if mismatch == 'text':
        assert torch.equal(wrong_in[0], images) and torch.equal(wrong_in[1], emb.roll(1, 0))
    else:
        assert torch.equal(wrong_in[0], wrong_images) and torch.equal(wrong_in[1], emb)
    assert torch.equal(fake_in[0], fake) and torch.equal(fake_in[1], emb)
    bce = F.binary_cross_entropy_with_logits
    r, w, f = real_out[0].detach(), wrong_out[0].detach(), fake_out[0].detach()
    expected = (bce(r, torch.full_like(r, 0.9))
                + 0.5 * (bce(w, torch.zeros_like(w)) + bce(f, torch.zeros_like(f))))
    assert out['d_loss'].item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(g_before, _params(g)))
    assert not all(torch.equal(a, b) for a, b in zip(d_before, _params(d)))


def test_discriminator_step_takes_given_wrong_texts():
    g, d = _tiny()
    images, emb, _, z = _batch()
    wrong = torch.randn_like(emb)
    _, opt_d = fam.make_optimizers(g, d)
    gan_int_cls_update(g, d, fam.GanIntClsOptions(), opt_d=opt_d, noise_dim=6).d_step(images, emb,
                                                                                       wrong_embeddings=wrong)
    assert torch.equal(d.calls[1][0][1], wrong)


def test_image_mismatch_needs_wrong_images():
    g, d = _tiny()
    images, emb, _, _ = _batch()
    _, opt_d = fam.make_optimizers(g, d)
    with pytest.raises(ValueError, match='wrong images'):
        gan_int_cls_update(g, d, fam.GanIntClsOptions(mismatch='image'), opt_d=opt_d, noise_dim=6).d_step(images, emb)


def test_generator_step_with_interpolation_and_stabilisers():
    g, d = _tiny()
    images, emb, _, z = _batch()
    z_int = torch.randn(4, 6)
    opt_g, opt_d = fam.make_optimizers(g, d)
    g_before, d_before = _params(g), _params(d)
    out = gan_int_cls_update(g, d, fam.GanIntClsOptions(), opt_g=opt_g, noise_dim=6).g_step(images, emb, noise=z,
                                                                                             interp_noise=z_int)
    (g1_in, fake), (g2_in, fake_mixed) = g.calls
    midpoint = 0.5 * emb + 0.5 * emb.roll(1, 0)
    assert torch.equal(g1_in[0], z) and torch.equal(g1_in[1], emb)
    assert torch.equal(g2_in[0], z_int) and torch.allclose(g2_in[1], midpoint)
    (fake_in, (fake_logits, fake_feats)), (real_in, (_, real_feats)), (mix_in, (mix_logits, _)) = d.calls
    assert torch.equal(fake_in[0], fake.detach()) and torch.equal(real_in[0], images)
    assert torch.equal(mix_in[0], fake_mixed.detach()) and torch.allclose(mix_in[1], midpoint)
    bce = F.binary_cross_entropy_with_logits
    fl, ml = fake_logits.detach(), mix_logits.detach()
    fm = ((fake_feats.detach().mean(0) - real_feats.mean(0)) ** 2).mean()
    l1 = (fake.detach() - images).abs().mean()
    expected = bce(fl, torch.ones_like(fl)) + 100 * fm + 50 * l1 + bce(ml, torch.ones_like(ml))
    assert out['g_loss'].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out['g_int'].item() == pytest.approx(bce(ml, torch.ones_like(ml)).item(), rel=1e-6)
    # D's weights neither move nor collect gradients; G's move
    assert all(torch.equal(a, b) for a, b in zip(d_before, _params(d)))
    assert all(p.grad is None for p in d.parameters()) and all(p.requires_grad for p in d.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(g_before, _params(g)))


def test_generator_step_switches_off():
    g, d = _tiny()
    images, emb, _, z = _batch()
    opt_g, _ = fam.make_optimizers(g, d)
    opts = fam.GanIntClsOptions(interpolation=False, feature_matching=0.0, l1=0.0)
    out = gan_int_cls_update(g, d, opts, opt_g=opt_g, noise_dim=6).g_step(images, emb, noise=z)
    assert len(g.calls) == 1 and len(d.calls) == 1
    assert set(out) == {'g_loss', 'g_adv', 'fake_images'}
    assert out['g_loss'].item() == out['g_adv'].item()


def test_wgan_critic_step_clips_and_generator_uses_scores():
    g, d = _tiny()
    images, emb, wrong_images, z = _batch()
    opt_g, opt_d = fam.make_optimizers(g, d)
    opts = fam.GanIntClsOptions(loss='wgan', mismatch='image', mismatch_weight=1.0,
                                interpolation=False, feature_matching=0.0, l1=0.0)
    out = gan_int_cls_update(g, d, opts, opt_d=opt_d).d_step(images, emb, wrong_images=wrong_images, noise=z)
    r, w, f = (c[1][0].detach() for c in d.calls)
    assert out['d_loss'].item() == pytest.approx((w.mean() + f.mean() - r.mean()).item(), rel=1e-5)
    assert all(p.abs().max().item() <= 0.01 for p in d.parameters())
    d.calls.clear()
    out = gan_int_cls_update(g, d, opts, opt_g=opt_g).g_step(images, emb, noise=z)
    assert out['g_loss'].item() == pytest.approx(-d.calls[0][1][0].mean().item(), rel=1e-6)


def test_wgan_gp_critic_step_adds_the_penalty_and_does_not_clip():
    g, d = _tiny(batch_norm=False)
    images, emb, _, z = _batch()
    _, opt_d = fam.make_optimizers(g, d)
    opts = fam.GanIntClsOptions(loss='wgan_gp', gp_weight=10.0)
    torch.manual_seed(7)
    alpha = torch.rand(4)            # the step draws the same alpha after the same seed
    torch.manual_seed(7)
    out = gan_int_cls_update(g, d, opts, opt_d=opt_d).d_step(images, emb, noise=z)
    (_, r), (_, w), (fake_in, f) = [(c[0], c[1][0].detach()) for c in d.calls[:3]]
    mixed_in, _ = d.calls[3]                                     # the interpolates, right text
    fake = fake_in[0]
    assert torch.allclose(mixed_in[0], alpha.view(-1, 1, 1, 1) * images + (1 - alpha.view(-1, 1, 1, 1)) * fake)
    assert torch.equal(mixed_in[1], emb)
    critic = 0.5 * (w.mean() + f.mean()) - r.mean()
    assert out['d_loss'].item() == pytest.approx(critic.item() + 10.0 * out['d_gp'].item(), rel=1e-5)
    assert out['d_gp'].item() > 0
    assert max(p.abs().max().item() for p in d.parameters()) > 0.01   # no weight clipping


def test_unconditional_steps_ignore_text():
    g, d = _tiny(conditional=False)
    images, _, _, z = _batch()
    opt_g, opt_d = fam.make_optimizers(g, d)
    opts = fam.GanIntClsOptions(conditional=False)       # CLS and INT switched on, but no text
    out_d = gan_int_cls_update(g, d, opts, opt_d=opt_d).d_step(images, None, noise=z)
    assert [len(c[0]) for c in d.calls] == [1, 1] and 'd_wrong' not in out_d
    d.calls.clear()
    out_g = gan_int_cls_update(g, d, opts, opt_g=opt_g).g_step(images, None, noise=z)
    assert len(g.calls) == 2 and 'g_int' not in out_g      # one fake per step, no interpolation


# --------------------------------------------------------------------------- the family
def _cfg(*overrides):
    return load_config(str(ROOT / 'cfg' / 'bird_gan_int_cls.yml'),
                       ['GAN_INT_CLS.NGF=2', 'GAN_INT_CLS.NDF=2', 'GAN_INT_CLS.PROJECTED_DIM=4',
                        *overrides])


def test_family_is_registered_and_builds_from_either_source():
    assert isinstance(family_of(_cfg()), fam.GanIntCls)
    damsm = FAMILIES['gan_int_cls'].build_networks(_cfg())
    assert damsm['netG'].projection[0].in_features == 256 and damsm['netD'].ndf == 2
    hd5 = FAMILIES['gan_int_cls'].build_networks(_cfg('DATA.HD5_FILE=x.hdf5', 'DATA.HD5_EMBEDDING_DIM=24'))
    assert hd5['netG'].projection[0].in_features == 24
    assert hd5['netD'].projector.projection[0].in_features == 24
    vanilla = FAMILIES['gan_int_cls'].build_networks(_cfg('GAN_INT_CLS.CONDITIONAL=False'))
    assert not vanilla['netG'].conditional and not hasattr(vanilla['netD'], 'projector')
    images, masks = FAMILIES['gan_int_cls'].generate(vanilla['netG'].eval(), torch.randn(2, 100), None)
    assert images.shape == (2, 3, 64, 64) and masks == []


def test_family_config_errors_name_the_key():
    with pytest.raises(ConfigError, match='TREE.BASE_SIZE: .*power of two >= 32, got 48'):
        FAMILIES['gan_int_cls'].build_networks(_cfg('TREE.BASE_SIZE=48'))
    small = FAMILIES['gan_int_cls'].build_networks(_cfg('TREE.BASE_SIZE=32'))
    assert small['netG'].image_size == 32 and small['netD'].image_size == 32
    with pytest.raises(ConfigError, match="GAN_INT_CLS.MISMATCH must be one of 'text', 'image', got 'caption'"):
        FAMILIES['gan_int_cls'].build_networks(_cfg('GAN_INT_CLS.MISMATCH=caption'))
    nets = FAMILIES['gan_int_cls'].build_networks(_cfg())
    with pytest.raises(ConfigError, match='main.py'):
        FAMILIES['gan_int_cls'].make_optimizers(_cfg(), nets, finetune=True)


def test_wgan_gp_needs_a_critic_without_batch_mixing():
    with pytest.raises(ConfigError, match="GAN_INT_CLS.LOSS='wgan_gp'.*set GAN_INT_CLS.D_BATCH_NORM=False"):
        FAMILIES['gan_int_cls'].build_networks(_cfg('GAN_INT_CLS.LOSS=wgan_gp'))
    with pytest.raises(ConfigError, match='set GAN_INT_CLS.MINIBATCH_KERNELS=0'):
        FAMILIES['gan_int_cls'].build_networks(_cfg('GAN_INT_CLS.LOSS=wgan_gp', 'GAN_INT_CLS.D_BATCH_NORM=False',
                                                    'GAN_INT_CLS.MINIBATCH_KERNELS=4'))
    nets = FAMILIES['gan_int_cls'].build_networks(_cfg('GAN_INT_CLS.LOSS=wgan_gp', 'GAN_INT_CLS.D_BATCH_NORM=False'))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in nets['netD'].netD_1.modules())
    with_mbd = FAMILIES['gan_int_cls'].build_networks(_cfg('GAN_INT_CLS.MINIBATCH_KERNELS=4',
                                                           'GAN_INT_CLS.MINIBATCH_KERNEL_DIM=3'))
    assert with_mbd['netD'].minibatch.T_tensor.shape == (2 * 8 * 16, 12)
    with pytest.raises(ConfigError, match='GAN_INT_CLS.MINIBATCH_KERNELS=-1: must be at least 0'):
        _cfg('GAN_INT_CLS.MINIBATCH_KERNELS=-1')


def test_family_optimisers_are_the_papers_adam():
    for cfg_file in ('bird_gan_int_cls.yml', 'flowers_gan_int_cls.yml'):
        cfg = load_config(str(ROOT / 'cfg' / cfg_file), ['GAN_INT_CLS.NGF=2', 'GAN_INT_CLS.NDF=2'])
        nets = FAMILIES['gan_int_cls'].build_networks(cfg)
        opts = FAMILIES['gan_int_cls'].make_optimizers(cfg, nets)
        assert set(opts) == {'optimizerG', 'optimizerD'} and cfg.TRAIN.BATCH_SIZE == 64
        for name, net in (('optimizerG', 'netG'), ('optimizerD', 'netD')):
            group = opts[name].param_groups[0]
            assert isinstance(opts[name], torch.optim.Adam)
            assert group['lr'] == 2e-4 and group['betas'] == (0.5, 0.999)
            assert [id(p) for p in group['params']] == [id(p) for p in nets[net].parameters()]


def _update(cfg, monkeypatch, text_encoder=None):
    """The family's update on tiny networks; records the calls of its two steps."""
    family = FAMILIES['gan_int_cls']
    torch.manual_seed(0)
    nets = family.build_networks(cfg)
    modules = dict(nets, text_encoder=text_encoder, image_encoder=None)
    update = family.make_update(cfg, nets, modules, {'text_encoder': text_encoder, 'image_encoder': None},
                                family.make_optimizers(cfg, nets))
    calls = []
    for name in ('d_step', 'g_step'):
        real = getattr(update, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, args, kwargs))
            return _real(*args, **kwargs)
        monkeypatch.setattr(update, name, spy)
    return update, calls


def _hd5_batch(e=24, b=3):
    torch.manual_seed(5)
    return Hd5Batch(images=torch.rand(b, 3, 64, 64) * 2 - 1, embeddings=torch.randn(b, e),
                    wrong_images=torch.rand(b, 3, 64, 64) * 2 - 1, wrong_embeddings=torch.randn(b, e),
                    captions=['a'] * b, class_ids=torch.arange(b), keys=['k'] * b)


def test_wgan_update_takes_a_g_step_after_its_critic_steps(monkeypatch):
    cfg = _cfg('DATA.HD5_FILE=x.hdf5', 'DATA.HD5_EMBEDDING_DIM=24', 'GAN_INT_CLS.LOSS=wgan',
               'GAN_INT_CLS.N_CRITIC=3', 'GAN_INT_CLS.CRITIC_BURST=False')
    update, calls = _update(cfg, monkeypatch)
    batch = _hd5_batch()
    steps = []
    for _ in range(7):
        losses = update(batch)
        steps.append('g_loss' in losses)
        assert all(isinstance(v, float) for v in losses.values()) and 'fake_images' not in losses
    assert steps == [False, False, True, False, False, True, False]
    assert [c[0] for c in calls].count('g_step') == 2
    assert update.state_dict() == {'generator_steps': 2, 'critic_steps': 1}
    assert update.last_fake.shape == (3, 3, 64, 64)
    # the counters come back from a state
    update.load_state_dict({'generator_steps': 0, 'critic_steps': 2})
    assert 'g_loss' in update(batch) and update.state_dict() == {'generator_steps': 1, 'critic_steps': 0}


def test_wgan_gp_update_keeps_n_critic_without_bursts(monkeypatch):
    cfg = _cfg('DATA.HD5_FILE=x.hdf5', 'DATA.HD5_EMBEDDING_DIM=24', 'GAN_INT_CLS.LOSS=wgan_gp',
               'GAN_INT_CLS.D_BATCH_NORM=False', 'GAN_INT_CLS.N_CRITIC=2')     # CRITIC_BURST stays True
    update, _ = _update(cfg, monkeypatch)
    steps = ['g_loss' in update(_hd5_batch()) for _ in range(4)]
    assert steps == [False, True, False, True]


def test_hd5_update_uses_the_batchs_mismatches(monkeypatch):
    for mismatch in ('text', 'image'):
        cfg = _cfg('DATA.HD5_FILE=x.hdf5', 'DATA.HD5_EMBEDDING_DIM=24', f'GAN_INT_CLS.MISMATCH={mismatch}')
        update, calls = _update(cfg, monkeypatch)
        batch = _hd5_batch()
        losses = update(batch)
        assert 'g_loss' in losses and 'd_wrong' in losses
        (_, d_args, d_kwargs), (_, g_args, _) = calls
        assert torch.equal(d_args[1], batch.embeddings) and torch.equal(g_args[1], batch.embeddings)
        assert torch.equal(d_kwargs['wrong_images'], batch.wrong_images)
        assert torch.equal(d_kwargs['wrong_embeddings'], batch.wrong_embeddings)


class _FixedText(nn.Module):
    """A text encoder stand-in: sentence code = caption's first index as a constant row."""

    def forward(self, captions, cap_lens):
        sent = captions[:, :1].float().expand(-1, 256).contiguous()
        return None, sent


def test_damsm_update_encodes_captions_and_rolls_the_batch(monkeypatch):
    update, calls = _update(_cfg(), monkeypatch, text_encoder=_FixedText())
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    batch = Batch(images, torch.tensor([[1, 2], [3, 4], [5, 6]]), torch.tensor([2, 2, 2]),
                  torch.arange(3), ['a', 'b', 'c'])
    update(batch)
    (_, d_args, d_kwargs), _ = calls
    assert d_args[1][:, 0].tolist() == [1.0, 3.0, 5.0]                 # the encoder's sentence codes
    assert torch.equal(d_kwargs['wrong_images'], images.roll(1, 0)) and d_kwargs['wrong_embeddings'] is None
