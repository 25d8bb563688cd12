"""DF-GAN (2022 and 2020 releases): keys and shapes against the upstream code, forward passes
against the formulas written out here with functional ops."""
import importlib.util
import json
import math
import os
import pathlib
import socket

import numpy as np

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from PIL import Image

from datasets import collate_sorted
from datasets import Batch
from helpers import make_synthetic_with_encoders
from miscc.cli import eval_main, gan_main
from miscc.core.checkpoint import CheckpointError, generator_layout, load_dfgan_checkpoint, read_dfgan_checkpoint
from miscc.core.config import ConfigError, default_config, load_config
from miscc.evaluation.generation import load_generation_stack, to_uint8_image
from miscc.families import FAMILIES, family_of
from miscc.families.losses import damsm_loss
from miscc.training.gan import GANTrainer, resolve_resume
from miscc.families.dfgan import (DFGANUpdate, build_optimizers, discriminator_losses, generator_loss, sample_noise,
                                  truncated_normal)
from models import NetG as SSAGAN_NetG
from models.dfgan import Affine, NetC, NetD, NetD_v1, NetG, NetG_v1, dfgan_channels

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
# Keys/shapes of tobran/DF-GAN's classes; how they were listed is in the file's 'about'.
UPSTREAM = json.loads((FIXTURES / 'dfgan_state_dict_keys.json').read_text())

BUILDERS = {
    'dfgan_256_nf32': {'NetG': lambda: NetG(32, 100, 256, 256, 3), 'NetD': lambda: NetD(32, 256, 3),
                       'NetC': lambda: NetC(32, 256)},
    'dfgan_64_nf8': {'NetG': lambda: NetG(8, 100, 256, 64, 3), 'NetD': lambda: NetD(8, 64, 3),
                     'NetC': lambda: NetC(8, 256)},
    'dfgan_v1_256_nf32': {'NetG': lambda: NetG_v1(32, 100), 'NetD': lambda: NetD_v1(32)},
}
CASES = [(setting, name) for setting, nets in BUILDERS.items() for name in nets]


def build_meta(setting, name):
    with torch.device('meta'):  # shapes only
        return BUILDERS[setting][name]()


@pytest.mark.parametrize('setting, name', CASES)
def test_state_dict_keys_and_shapes_match_upstream(setting, name):
    ours = [[k, list(v.shape)] for k, v in build_meta(setting, name).state_dict().items()]
    expected = UPSTREAM['models'][setting][name]
    assert [k for k, _ in ours] == [k for k, _ in expected]   # same keys in the same order
    assert ours == expected


@pytest.mark.parametrize('setting, name', CASES)
def test_parameter_counts_match_upstream(setting, name):
    model = build_meta(setting, name)
    assert sum(p.numel() for p in model.parameters()) == UPSTREAM['parameters'][setting][name]


def test_channel_schedule():
    assert dfgan_channels(32, 256) == [32, 64, 128, 256, 256, 256, 256]
    assert dfgan_channels(8, 64) == [8, 16, 32, 64, 64]
    with pytest.raises(ValueError, match='power of two'):
        dfgan_channels(8, 100)


def randomised(model, seed=0, scale=0.2):
    """Every parameter random (the zero/one initialisations would hide terms of the formulas)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model


def ref_mlp(state, prefix, y):
    h = F.relu(F.linear(y, state[prefix + 'linear1.weight'], state[prefix + 'linear1.bias']))
    return F.linear(h, state[prefix + 'linear2.weight'], state[prefix + 'linear2.bias'])


def ref_affine(state, prefix, x, y):
    gamma = ref_mlp(state, prefix + 'fc_gamma.', y)
    beta = ref_mlp(state, prefix + 'fc_beta.', y)
    return gamma[:, :, None, None] * x + beta[:, :, None, None]


def ref_conv(state, prefix, x, stride=1, padding=1):
    return F.conv2d(x, state[prefix + 'weight'], state.get(prefix + 'bias'), stride, padding)


def lrelu(x):
    return torch.where(x > 0, x, 0.2 * x)


def reference_netg_2022(state, noise, sent, ngf):
    """GAN.py's NetG: fc -> 4x4; per block: up x2, shortcut + c2(fuse2(c1(fuse1(x)))) with
    fuse = lrelu(affine1(lrelu(affine0(x)))) on cat(noise, sent); lrelu -> conv -> tanh."""
    out = F.linear(noise, state['fc.weight'], state['fc.bias']).view(noise.size(0), 8 * ngf, 4, 4)
    cond = torch.cat((noise, sent), 1)
    n_blocks = len({k.split('.')[1] for k in state if k.startswith('GBlocks.')})
    for i in range(n_blocks):
        p = f'GBlocks.{i}.'
        x = F.interpolate(out, scale_factor=2, mode='nearest')
        h = lrelu(ref_affine(state, p + 'fuse1.affine1.', lrelu(ref_affine(state, p + 'fuse1.affine0.', x, cond)), cond))
        h = ref_conv(state, p + 'c1.', h)
        h = lrelu(ref_affine(state, p + 'fuse2.affine1.', lrelu(ref_affine(state, p + 'fuse2.affine0.', h, cond)), cond))
        h = ref_conv(state, p + 'c2.', h)
        shortcut = ref_conv(state, p + 'c_sc.', x, padding=0) if p + 'c_sc.weight' in state else x
        out = shortcut + h
    return torch.tanh(ref_conv(state, 'to_rgb.1.', lrelu(out)))


def ref_down_block(state, p, x):
    """resD / D_Block: avgpool2(shortcut) + gamma * lrelu(conv3(lrelu(conv4s2(x))))."""
    res = lrelu(F.conv2d(lrelu(F.conv2d(x, state[p + 'conv_r.0.weight'], None, 2, 1)),
                         state[p + 'conv_r.2.weight'], None, 1, 1))
    fin, fout = x.size(1), state[p + 'conv_r.0.weight'].size(0)
    shortcut = ref_conv(state, p + 'conv_s.', x, padding=0) if fin != fout else x
    return F.avg_pool2d(shortcut, 2) + state[p + 'gamma'] * res


def ref_joint_conv(state, p, features, sent):
    tiled = sent[:, :, None, None].repeat(1, 1, 4, 4)
    h = lrelu(F.conv2d(torch.cat((features, tiled), 1), state[p + 'joint_conv.0.weight'], None, 1, 1))
    return F.conv2d(h, state[p + 'joint_conv.2.weight'], None, 1, 0)


def reference_netd_2022(state, image):
    out = ref_conv(state, 'conv_img.', image)
    n_blocks = len({k.split('.')[1] for k in state if k.startswith('DBlocks.')})
    for i in range(n_blocks):
        out = ref_down_block(state, f'DBlocks.{i}.', out)
    return out


def reference_netg_2020(state, noise, sent, ngf):
    """model.py's NetG: fc -> 4x4; block0, then (up x2, block i) for i = 1..6;
    block: shortcut + gamma * c2(lr(a3(lr(a2(c1(lr(a1(lr(a0(x)))))))))) on the sentence."""
    out = F.linear(noise, state['fc.weight'], state['fc.bias']).view(noise.size(0), 8 * ngf, 4, 4)
    n_blocks = len({k.split('.')[0] for k in state if k.startswith('block')})
    for i in range(n_blocks):
        p = f'block{i}.'
        if i > 0:
            out = F.interpolate(out, scale_factor=2, mode='nearest')
        h = lrelu(ref_affine(state, p + 'affine0.', out, sent))
        h = ref_conv(state, p + 'c1.', lrelu(ref_affine(state, p + 'affine1.', h, sent)))
        h = lrelu(ref_affine(state, p + 'affine2.', h, sent))
        h = ref_conv(state, p + 'c2.', lrelu(ref_affine(state, p + 'affine3.', h, sent)))
        shortcut = ref_conv(state, p + 'c_sc.', out, padding=0) if p + 'c_sc.weight' in state else out
        out = shortcut + state[p + 'gamma'] * h
    return torch.tanh(ref_conv(state, 'conv_img.1.', lrelu(out)))


@pytest.mark.parametrize('size', [64, 128])
def test_generator_2022_equals_reference(size):
    torch.manual_seed(0)
    g = randomised(NetG(4, 16, 32, size, 3))
    noise, sent = torch.randn(3, 16), torch.randn(3, 32)
    out = g(noise, sent)
    assert out.shape == (3, 3, size, size) and out.min() >= -1 and out.max() <= 1
    expected = reference_netg_2022(g.state_dict(), noise, sent, 4)
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-4)
    assert out.std() > 0.1  # not saturated: the comparison sees the whole formula


@pytest.mark.parametrize('size', [64, 128])
def test_discriminator_2022_equals_reference(size):
    torch.manual_seed(0)
    d, c = randomised(NetD(4, size, 3), 1), randomised(NetC(4, 32), 2)
    image, sent = torch.randn(3, 3, size, size), torch.randn(3, 32)
    features = d(image)
    assert features.shape == (3, 32, 4, 4)
    state = d.state_dict()
    assert torch.allclose(features, reference_netd_2022(state, image), atol=1e-5, rtol=1e-4)
    logits = c(features, sent)
    assert logits.shape == (3, 1, 1, 1)
    assert torch.allclose(logits, ref_joint_conv(c.state_dict(), '', features, sent), atol=1e-5, rtol=1e-4)


def test_generator_2020_equals_reference():
    torch.manual_seed(0)
    g = randomised(NetG_v1(4, 16, img_size=64, cond_dim=32), scale=0.3)
    noise, sent = torch.randn(2, 16), torch.randn(2, 32)
    out = g(noise, sent)
    assert out.shape == (2, 3, 64, 64)
    assert torch.allclose(out, reference_netg_2020(g.state_dict(), noise, sent, 4), atol=1e-5, rtol=1e-4)
    assert out.std() > 0.1


def test_discriminator_2020_equals_reference():
    torch.manual_seed(0)
    d = randomised(NetD_v1(4, 64, 32))
    image, sent = torch.randn(2, 3, 64, 64), torch.randn(2, 32)
    features = d(image)
    state = d.state_dict()
    expected = ref_conv(state, 'conv_img.', image)
    for i in range(4):
        expected = ref_down_block(state, f'block{i}.', expected)
    assert torch.allclose(features, expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(d.COND_DNET(features, sent), ref_joint_conv(state, 'COND_DNET.', features, sent),
                          atol=1e-5, rtol=1e-4)


def test_initialisation():
    torch.manual_seed(0)
    affine = Affine(10, 6)
    x, y = torch.randn(2, 6, 3, 3), torch.randn(2, 10)
    assert torch.equal(affine(x, y), x)   # gamma starts at 1, beta at 0
    d = NetD(4, 256, 3)
    assert all(b.gamma.item() == 0.0 for b in d.DBlocks)
    # channels 4, 8, 16, 32, 32, 32, 32: the last three blocks keep theirs and skip conv_s
    assert [b.learned_shortcut for b in d.DBlocks] == [True, True, True, False, False, False]
    g = NetG_v1(4, 100, img_size=64)
    assert all(b.gamma.item() == 0.0 for b in g.blocks)


def test_generator_2022_conditions_on_noise_and_sentence():
    torch.manual_seed(0)
    g = randomised(NetG(4, 8, 16, 64, 3))
    with torch.no_grad():
        g.fc.weight.zero_()  # the 4x4 start no longer depends on the noise
    noise, sent = torch.randn(1, 8), torch.randn(1, 16)
    other_noise, other_sent = noise.clone(), sent.clone()
    other_noise[0, 0] += 1.0
    other_sent[0, 0] += 1.0
    base = g(noise, sent)
    # the fusion blocks see cat(noise, sent): either one alone changes the image
    assert (g(other_noise, sent) - base).abs().max() > 1e-3
    assert (g(noise, other_sent) - base).abs().max() > 1e-3


# --- checkpoints ---------------------------------------------------------------------------

def upstream_style_state(setting, name, prefix='', seed=0):
    """Random tensors with exactly the upstream keys and shapes of the fixture."""
    gen = torch.Generator().manual_seed(seed)
    return {prefix + k: torch.randn(shape, generator=gen) for k, shape in UPSTREAM['models'][setting][name]}


def small_dfgan():
    return NetG(8, 100, 256, 64, 3), NetD(8, 64, 3), NetC(8, 256)


def dfgan_optimizers(netG, netD, netC):
    """code/src/train.py: Adam(netG) and one Adam over netD's then netC's parameters."""
    return (torch.optim.Adam(netG.parameters(), lr=1e-4, betas=(0.0, 0.9)),
            torch.optim.Adam(list(netD.parameters()) + list(netC.parameters()), lr=4e-4, betas=(0.0, 0.9)))


def stepped_optimizers(netG, netD, netC):
    """DF-GAN's optimisers after one step, so their state holds moments and step counts."""
    opt_g, opt_d = dfgan_optimizers(netG, netD, netC)
    for opt in (opt_g, opt_d):
        for group in opt.param_groups:
            for p in group['params']:
                p.grad = torch.randn_like(p)
        opt.step()
    return opt_g, opt_d


@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_released_training_state_loads_strictly(tmp_path, prefix):
    setting = 'dfgan_64_nf8'
    model = {net: upstream_style_state(setting, name, prefix)
             for net, name in (('netG', 'NetG'), ('netD', 'NetD'), ('netC', 'NetC'))}
    opt_g, opt_d = stepped_optimizers(*small_dfgan())
    path = tmp_path / 'state_epoch_1220.pth'
    torch.save({'model': model, 'optimizers': {'optimizer_G': opt_g.state_dict(),
                                               'optimizer_D': opt_d.state_dict()}, 'epoch': 1220}, path)
    netG, netD, netC = small_dfgan()
    fresh_g, fresh_d = dfgan_optimizers(netG, netD, netC)
    info = load_dfgan_checkpoint(str(path), netG, netD, netC, fresh_g, fresh_d)
    assert info == {'layout': 'dfgan', 'epoch': 1220,
                    'loaded': ['netG', 'netD', 'netC', 'optimizer_G', 'optimizer_D']}
    for net, module in (('netG', netG), ('netD', netD), ('netC', netC)):
        loaded = module.state_dict()
        for key, value in model[net].items():
            assert torch.equal(loaded[key[len(prefix):]], value), key
    saved_d, loaded_d = opt_d.state_dict(), fresh_d.state_dict()
    assert len(loaded_d['state']) == len(saved_d['state']) > 0
    for index, state in saved_d['state'].items():
        assert torch.equal(loaded_d['state'][index]['exp_avg'], state['exp_avg'])


def test_plain_generator_state_dict_loads(tmp_path):
    state = upstream_style_state('dfgan_64_nf8', 'NetG', 'module.')
    path = tmp_path / 'netG.pth'
    torch.save(state, path)
    netG = NetG(8, 100, 256, 64, 3)
    assert load_dfgan_checkpoint(str(path), netG) == {'layout': 'dfgan', 'epoch': None, 'loaded': ['netG']}
    assert torch.equal(netG.fc.weight, state['module.fc.weight'])
    with pytest.raises(CheckpointError, match=r"netG.pth' holds no netD"):
        load_dfgan_checkpoint(str(path), NetG(8, 100, 256, 64, 3), NetD(8, 64, 3))


def test_layout_detection_from_keys():
    official = json.loads((FIXTURES / 'official_state_dict_keys.json').read_text())['models']
    keys = lambda pairs: {k: None for k, _ in pairs}  # noqa: E731 - only the names matter
    models = UPSTREAM['models']
    assert generator_layout(keys(models['dfgan_256_nf32']['NetG'])) == 'dfgan'
    assert generator_layout(keys(models['dfgan_v1_256_nf32']['NetG'])) == 'dfgan_v1'
    assert generator_layout(keys(official['NetG'])) == 'ssagan'
    for other in (models['dfgan_256_nf32']['NetD'], models['dfgan_256_nf32']['NetC'], official['NetD']):
        assert generator_layout(keys(other)) is None


def test_2020_generator_is_detected_and_needs_its_model(tmp_path):
    v1 = NetG_v1(8, 100, img_size=64)
    path = tmp_path / 'netG.pth'
    torch.save(v1.state_dict(), path)
    assert read_dfgan_checkpoint(str(path))['layout'] == 'dfgan_v1'
    with pytest.raises(CheckpointError, match=r"holds a DF-GAN 2020 .* set MODEL.NAME: dfgan_v1"):
        load_dfgan_checkpoint(str(path), NetG(8, 100, 256, 64, 3))
    with pytest.raises(CheckpointError, match='MODEL.NAME: dfgan_v1'):
        load_dfgan_checkpoint(str(path), SSAGAN_NetG(8, 100, img_size=64))
    fresh = NetG_v1(8, 100, img_size=64)
    load_dfgan_checkpoint(str(path), fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), v1.state_dict().values()))


def test_files_that_fit_no_layout_are_named_with_what_they_hold(tmp_path):
    netd_file = tmp_path / 'netD_600.pth'
    torch.save(NetD(8, 64, 3).state_dict(), netd_file)
    with pytest.raises(CheckpointError, match=r"netD_600.pth' is a discriminator state dict, not a "
                                              r"generator .* first keys: conv_img.weight"):
        read_dfgan_checkpoint(str(netd_file))
    listing = tmp_path / 'list.pth'
    torch.save([1, 2], listing)
    with pytest.raises(CheckpointError, match=r"list.pth' holds a list: neither DF-GAN's training state"):
        read_dfgan_checkpoint(str(listing))
    no_g = tmp_path / 'state_epoch_010.pth'
    torch.save({'model': {'netD': NetD(8, 64, 3).state_dict()}, 'epoch': 10}, no_g)
    with pytest.raises(CheckpointError, match=r"state_epoch_010.pth' has a 'model' entry without a 'netG'"
                                              r" state dict \(found: netD\)"):
        read_dfgan_checkpoint(str(no_g))
    other = tmp_path / 'other.pth'
    torch.save({'step': torch.tensor(3)}, other)
    with pytest.raises(CheckpointError, match=r"other.pth' is a state dict of no known generator"):
        read_dfgan_checkpoint(str(other))


def test_wrong_width_names_the_file_and_the_network(tmp_path):
    netG, netD, netC = NetG(4, 100, 256, 64, 3), NetD(4, 64, 3), NetC(4, 256)
    path = tmp_path / 'state_epoch_005.pth'
    torch.save({'model': {'netG': netG.state_dict(), 'netD': netD.state_dict(), 'netC': netC.state_dict()}}, path)
    with pytest.raises(CheckpointError, match=r"state_epoch_005.pth \[netG\]' does not match NetG; wrong shapes"):
        load_dfgan_checkpoint(str(path), *small_dfgan())


# --- the update -----------------------------------------------------------------------------

class PassThrough(torch.nn.Module):
    """Stand-in image encoder: the features are the input, B x 1."""

    def forward(self, x):
        return x


class ProductHead(torch.nn.Module):
    """Stand-in matching head: logit_i = w * f_i * s_i (B x 1 features and sentences)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, features, sent):
        return self.w * features * sent


class PassThroughWithHead(PassThrough):
    """The 2020 layout: the head lives in the discriminator as COND_DNET."""

    def __init__(self):
        super().__init__()
        self.COND_DNET = ProductHead()


# Hand-computed case: real f = (2, 0.5), sentences s = (0.25, 1), fake f = (-1, 3), w = 1.
#   matching logits w f s = (0.5, 0.5)        -> relu(1 - .) mean 0.5
#   rolled mismatch (0.5 * 0.25, 2 * 1)       -> relu(1 + .) = (1.125, 3)      mean 2.0625
#   fake logits (-0.25, 3)                    -> relu(1 + .) = (0.75, 4)       mean 2.375
#   MA-GP: dlogit/df = w s, dlogit/ds = w f: |.|^2 = (0.0625 + 4, 1 + 0.25) = (4.0625, 1.25);
#          2 * mean(|.|^6) = 2 * (4.0625^3 + 1.25^3) / 2 = 67.047119140625 + 1.953125
#   errD = 0.5 + (2.375 + 2.0625) / 2 + 69.000244140625
#   d errD / dw = -0.5 + (1.375 + 1.0625) / 2 + 6 * 69.000244140625 (every hinge term active,
#   the penalty is homogeneous of degree 6 in w)
REAL = [[2.0], [0.5]]
SENT = [[0.25], [1.0]]
FAKE = [[-1.0], [3.0]]
MAGP_VALUE = 69.000244140625


def hand_case():
    return torch.tensor(REAL), torch.tensor(FAKE), torch.tensor(SENT)


def update_of(netD, netC=None, opt_d=None, opt_g=None, version=2022, two_way=False, magp_k=2.0):
    """DFGANUpdate around stand-in networks, for its d_step / d_step_v1 / g_step (G and the text
    encoder are not used by them)."""
    nets = {'netG': torch.nn.Linear(1, 1), 'netD': netD, **({'netC': netC} if netC is not None else {})}
    return DFGANUpdate(nets, dict(nets, text_encoder=None), {}, {'optimizerG': opt_g, 'optimizerD': opt_d}, version,
                       z_dim=1, magp_p=6.0, magp_k=magp_k, two_way=two_way)


def test_d_loss_terms_on_a_hand_computed_case():
    real, fake, sent = hand_case()
    losses = discriminator_losses(PassThrough(), ProductHead(), real, fake, sent)
    expected = dict(errD_real=0.5, errD_mismatch=2.0625, errD_fake=2.375, MAGP=MAGP_VALUE,
                    errD=0.5 + (2.375 + 2.0625) / 2 + MAGP_VALUE)
    assert {k: v.item() for k, v in losses.items()} == pytest.approx(expected, rel=1e-6)


def test_d_step_takes_one_step_on_hinge_plus_magp_and_leaves_g_alone():
    real, fake, sent = hand_case()
    head = ProductHead()
    g_weight = torch.nn.Parameter(torch.ones(1))
    fake = fake * g_weight          # fake images with a generator graph
    lr = 1e-3
    losses = update_of(PassThrough(), head, opt_d=torch.optim.SGD(head.parameters(), lr=lr)).d_step(real, fake, sent)
    grad_w = -0.5 + (1.375 + 1.0625) / 2 + 6 * MAGP_VALUE
    assert head.w.item() == pytest.approx(1 - lr * grad_w, rel=1e-6)
    assert g_weight.grad is None    # the fake images are detached for D
    assert not any(v.requires_grad for v in losses.values())


def test_g_loss_and_step_on_a_hand_computed_case():
    real, fake, sent = hand_case()
    head = ProductHead()
    scale = torch.nn.Parameter(torch.ones(1))     # stand-in generator: fake = scale * FAKE
    assert generator_loss(PassThrough(), head, fake, sent).item() == pytest.approx(-1.375)
    losses = update_of(PassThrough(), head, opt_g=torch.optim.SGD([scale], lr=0.1)).g_step(scale * fake, sent)
    assert losses['errG'].item() == pytest.approx(-1.375)
    # d/dscale -mean(w * scale * f * s) = -mean(f s) = -1.375
    assert scale.item() == pytest.approx(1 + 0.1 * 1.375)
    assert head.w.grad is None and head.w.requires_grad   # D got no gradient and is unfrozen again


def test_2020_d_step_hinge_then_magp_step():
    real, fake, sent = hand_case()
    net = PassThroughWithHead()
    lr = 1e-3
    losses = update_of(net, opt_d=torch.optim.SGD(net.parameters(), lr=lr), version=2020).d_step_v1(real, fake, sent)
    # mismatch: features 0..B-2 with sentences 1..B-1 -> one pair 2 * 1 -> relu(3) = 3
    assert losses['errD_mismatch'].item() == pytest.approx(3.0)
    assert losses['errD'].item() == pytest.approx(0.5 + (2.375 + 3.0) / 2)
    w1 = 1 - lr * (-0.5 + 1.375 / 2 + 2.0 / 2)            # after the hinge step
    assert losses['MAGP'].item() == pytest.approx(w1 ** 6 * MAGP_VALUE, rel=1e-6)
    w2 = w1 - lr * 6 * w1 ** 5 * MAGP_VALUE                # after the MA-GP step
    assert net.COND_DNET.w.item() == pytest.approx(w2, rel=1e-6)


class TwoWayProductHead(ProductHead):
    """Stand-in two-way head: the matching logit w f s and, without a sentence, u f."""

    def __init__(self):
        super().__init__()
        self.u = torch.nn.Parameter(torch.ones(1))

    def forward(self, features, sent=None):
        return self.u * features if sent is None else super().forward(features, sent)


# Two-way on the hand-computed case (u = 1): realness logits of the real features (2, 0.5) ->
# relu(1 - .) = (0, 0.5), mean 0.25; of the fakes (-1, 3) -> relu(1 + .) = (0, 4), mean 2.
# errD_uncond = 2.25; G: -mean(w f s) - mean(u f) = -1.375 - 1 = -2.375.
def test_two_way_output_adds_the_unconditional_terms_by_hand():
    real, fake, sent = hand_case()
    losses = discriminator_losses(PassThrough(), TwoWayProductHead(), real, fake, sent, two_way=True)
    assert losses['errD_uncond'].item() == pytest.approx(2.25)
    assert losses['errD'].item() == pytest.approx(0.5 + (2.375 + 2.0625) / 2 + MAGP_VALUE + 2.25, rel=1e-6)
    head = TwoWayProductHead()
    two_way = update_of(PassThrough(), head, opt_d=torch.optim.SGD(head.parameters(), lr=0.01), two_way=True)
    two_way.d_step(real, fake, sent)
    # d errD_uncond / du = mean(-f_real where 1 - u f_real > 0) + mean(f_fake where 1 + u f_fake > 0)
    #                    = (0 - 0.5) / 2 + (0 + 3) / 2 = 1.25
    assert head.u.item() == pytest.approx(1 - 0.01 * 1.25)
    assert generator_loss(PassThrough(), TwoWayProductHead(), fake, sent, two_way=True).item() == pytest.approx(-2.375)
    scale = torch.nn.Parameter(torch.ones(1))
    update_of(PassThrough(), TwoWayProductHead(), opt_g=torch.optim.SGD([scale], lr=0.1), two_way=True).g_step(
        scale * fake, sent)
    # d/dscale (-mean(scale f s) - mean(scale f)) = -1.375 - 1
    assert scale.item() == pytest.approx(1 + 0.1 * 2.375)


def test_two_way_head_keeps_the_one_way_keys_and_adds_its_own():
    one, two = NetC(2, 16), NetC(2, 16, two_way=True)
    assert list(one.state_dict()) == ['joint_conv.0.weight', 'joint_conv.2.weight']
    assert list(two.state_dict()) == list(one.state_dict()) + ['uncond_conv.0.weight', 'uncond_conv.2.weight']
    assert two(torch.randn(3, 16, 4, 4)).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError, match='no unconditional head'):   # a one-way head has no realness logit
        one(torch.randn(3, 16, 4, 4))


def test_magp_off_is_not_computed_and_leaves_the_hinge_step():
    real, fake, sent = hand_case()
    losses = discriminator_losses(PassThrough(), ProductHead(), real, fake, sent, magp_k=0.0)
    assert losses['MAGP'].item() == 0.0 and losses['errD'].item() == pytest.approx(0.5 + (2.375 + 2.0625) / 2)
    head = ProductHead()
    update_of(PassThrough(), head, opt_d=torch.optim.SGD(head.parameters(), lr=1e-3), magp_k=0.0).d_step(
        real, fake, sent)
    assert head.w.item() == pytest.approx(1 - 1e-3 * (-0.5 + (1.375 + 1.0625) / 2))
    net = PassThroughWithHead()
    update = update_of(net, opt_d=torch.optim.SGD(net.parameters(), lr=1e-3), version=2020, magp_k=0.0)
    losses = update.d_step_v1(real, fake, sent)
    # the 2020 update takes its hinge step only
    assert net.COND_DNET.w.item() == pytest.approx(1 - 1e-3 * (-0.5 + 1.375 / 2 + 2.0 / 2))
    assert losses['MAGP'].item() == 0.0


def test_damsm_term_joins_the_g_step_by_hand():
    real, fake, sent = hand_case()
    scale = torch.nn.Parameter(torch.ones(1))
    update = update_of(PassThrough(), ProductHead(), opt_g=torch.optim.SGD([scale], lr=0.1))
    losses = update.g_step(scale * fake, sent, damsm=lambda images: 0.5 * (images ** 2).mean())
    assert losses['DAMSM'].item() == pytest.approx(0.5 * (1 + 9) / 2)
    # d/dscale = -1.375 + 0.5 * 2 * scale * mean(f^2) = -1.375 + 5
    assert scale.item() == pytest.approx(1 - 0.1 * (5 - 1.375))
    assert 'DAMSM' not in update.g_step(scale * fake, sent)


def test_magp_equals_per_sample_autograd_on_the_real_networks():
    torch.manual_seed(0)
    netD, netC = randomised(NetD(2, 32, 3).double(), 3, 0.3), randomised(NetC(2, 16).double(), 4, 0.3)
    real, sent = torch.randn(3, 3, 32, 32, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    fake = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    gp = discriminator_losses(netD, netC, real, fake, sent)['MAGP']
    norms = []
    for i in range(3):   # one sample at a time: dC_i / d(x_i, s_i)
        x, s = real[i:i + 1].clone().requires_grad_(), sent[i:i + 1].clone().requires_grad_()
        gx, gs = torch.autograd.grad(netC(netD(x), s).sum(), (x, s))
        norms.append(torch.sqrt(gx.pow(2).sum() + gs.pow(2).sum()))
    assert gp.item() == pytest.approx(2.0 * torch.stack(norms).pow(6).mean().item(), rel=1e-9)
    # and its gradient (double backward) matches a central difference in one weight
    weight = netC.joint_conv[2].weight
    (grad,) = torch.autograd.grad(gp, weight)
    eps, index = 1e-6, (0, 1, 2, 3)
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            weight[index] += sign * eps
        values.append(discriminator_losses(netD, netC, real, fake, sent)['MAGP'].item())
        with torch.no_grad():
            weight[index] -= sign * eps
    assert grad[index].item() == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-5)


def test_optimisers_follow_dfgan():
    netG, netD, netC = small_dfgan()
    opt_g, opt_d = build_optimizers(netG, netD, netC)
    assert opt_g.defaults['lr'] == 1e-4 and opt_d.defaults['lr'] == 4e-4
    assert opt_g.defaults['betas'] == opt_d.defaults['betas'] == (0.0, 0.9)
    assert [id(p) for p in opt_d.param_groups[0]['params']] == \
        [id(p) for p in list(netD.parameters()) + list(netC.parameters())]


def test_truncated_noise_distribution():
    gen = torch.Generator().manual_seed(0)
    x = truncated_normal((200_000,), generator=gen, dtype=torch.float64)
    assert x.abs().max() <= 2.0
    # truncated to [-2, 2]: variance 1 - 2 * 2 * phi(2) / (2 Phi(2) - 1)
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    assert x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert x.var().item() == pytest.approx(1 - 4 * phi2 / mass, abs=0.01)
    # the whole distribution: largest CDF gap against the truncated normal's CDF
    xs, _ = torch.sort(x)
    cdf = (0.5 * (1 + torch.erf(xs / math.sqrt(2))) - 0.5 * (1 - mass)) / mass
    empirical = torch.arange(1, xs.numel() + 1, dtype=torch.float64) / xs.numel()
    assert (cdf - empirical).abs().max().item() < 0.005
    noise = sample_noise(4, 100, truncation=True, trunc_rate=0.88, generator=torch.Generator().manual_seed(1))
    assert noise.shape == (4, 100) and noise.abs().max() <= 2 * 0.88 and noise.abs().max() > 1.5
    plain = sample_noise(4, 100, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, torch.randn(4, 100, generator=torch.Generator().manual_seed(1)))


class FixedSentences(torch.nn.Module):
    """The text encoder's stand-in: the given sentence codes B x E for any captions, one zero word."""

    def __init__(self, sent):
        super().__init__()
        self.sent = sent

    def forward(self, captions, cap_lens):
        return self.sent.new_zeros(self.sent.size(0), self.sent.size(1), 1), self.sent


@pytest.mark.parametrize('version', [2022, 2020])
def test_the_update_runs_and_changes_both_networks(version):
    torch.manual_seed(0)
    if version == 2022:
        size = 32
        netG, netD, netC = NetG(2, 16, 32, size, 3), NetD(2, size, 3), NetC(2, 32)
        opt_g, opt_d = build_optimizers(netG, netD, netC)
    else:
        size = 64   # SSA-GAN's NetD, used for the 2020 layout, starts at 64 px
        netG, netD, netC = NetG_v1(2, 16, size, 32), NetD_v1(2, size, 32), None
        opt_g, opt_d = build_optimizers(netG, netD)
    before_g = [p.detach().clone() for p in netG.parameters()]
    before_d = [p.detach().clone() for p in netD.parameters()]
    real, sent = torch.rand(3, 3, size, size) * 2 - 1, torch.randn(3, 32)
    nets = {'netG': netG, 'netD': netD, **({'netC': netC} if netC is not None else {})}
    update = DFGANUpdate(nets, dict(nets, text_encoder=FixedSentences(sent)), {'image_encoder': None},
                         {'optimizerG': opt_g, 'optimizerD': opt_d}, version, z_dim=16, magp_p=6.0, magp_k=2.0)
    batch = Batch(real, torch.ones(3, 4, dtype=torch.long), torch.full((3,), 4), torch.arange(3), ['a', 'b', 'c'])
    losses = update(batch)
    assert set(losses) == {'errD', 'errD_real', 'errD_fake', 'errD_mismatch', 'MAGP', 'errG'}
    assert all(math.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before_g, netG.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, netD.parameters()))


# --- configs --------------------------------------------------------------------------------

def test_dfgan_configs_carry_its_published_settings():
    root = pathlib.Path(__file__).resolve().parents[1]
    assert default_config().MODEL.NAME == 'ssagan'
    for name, epochs, save, captions, fid in (('bird', 1300, 10, 10, 29120), ('coco', 300, 5, 5, 40448)):
        cfg = load_config(str(root / f'cfg/{name}_dfgan.yml'))
        assert cfg.MODEL.NAME == 'dfgan' and cfg.TREE.BASE_SIZE == 256
        assert (cfg.TRAIN.NF, cfg.TRAIN.BATCH_SIZE, cfg.TRAIN.MAX_EPOCH) == (32, 32, epochs)
        assert (cfg.TRAIN.GENERATOR_LR, cfg.TRAIN.DISCRIMINATOR_LR) == (1e-4, 4e-4)
        assert (cfg.TRAIN.BETA1, cfg.TRAIN.BETA2) == (0.0, 0.9)
        assert (cfg.TRAIN.MAGP_P, cfg.TRAIN.MAGP_K) == (6.0, 2.0) and cfg.TRAIN.LAMBDA_DA == 0.0
        assert (cfg.TRAIN.WARMUP_EPOCHS, cfg.TRAIN.GSAVE_INTERVAL) == (0, save)
        assert cfg.GAN.Z_DIM == 100 and cfg.TEXT.EMBEDDING_DIM == 256 and cfg.SEED == 100
        assert cfg.TEXT.CAPTIONS_PER_IMAGE == captions and cfg.EVAL.NUM_FID == fid
        assert cfg.DFGAN.TRUNCATION is True and cfg.DFGAN.TRUNC_RATE == 0.88



# --- the families on the shared loop, sampling and evaluation --------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def family_setup(tmp_path_factory):
    """8 train / 4 test synthetic birds and random DAMSM encoders for their vocabulary."""
    return make_synthetic_with_encoders(tmp_path_factory.mktemp('dfgan'), 8, 4, seed=3, epoch=5)


def family_argv(root, out='out', model='dfgan', **extra):
    """cfg/bird_dfgan.yml scaled to 32 px, NF 2, batch 4: 2 steps per epoch, 2 epochs."""
    base = {'MODEL.NAME': model, 'DATASET_NAME': 'synthetic_birds', 'DATA_DIR': root / 'synthetic_birds',
            'OUTPUT_DIR': root / out, 'TEXT.DAMSM_NAME': root / 'enc' / 'text_encoder5.pth',
            'TREE.BASE_SIZE': 64 if model == 'dfgan_v1' else 32, 'TRAIN.NF': 2, 'TRAIN.BATCH_SIZE': 4,
            'TRAIN.MAX_EPOCH': 2, 'TRAIN.GSAVE_INTERVAL': 1, 'TRAIN.DSAVE_INTERVAL': 1, 'WORKERS': 0,
            'DEVICE': 'cpu', 'SYNTHETIC.NUM_TRAIN': 8, 'SYNTHETIC.NUM_TEST': 4, 'SYNTHETIC.IMAGE_SIZE': 128,
            'SYNTHETIC.SEED': 3}
    base.update(extra)
    return ['--cfg', str(ROOT / 'cfg' / 'bird_dfgan.yml')] + [f'{k}={v}' for k, v in base.items()]


def family_cfg(root, **extra):
    argv = family_argv(root, **extra)
    return load_config(argv[1], argv[2:])


def test_families_are_registered_with_their_networks():
    assert {'ssagan', 'dfgan', 'dfgan_v1'} <= set(FAMILIES)
    cfg = load_config(str(ROOT / 'cfg' / 'bird_dfgan.yml'), ['TRAIN.NF=2', 'TREE.BASE_SIZE=64'])
    family = family_of(cfg)
    nets = family.build_networks(cfg)
    assert family.networks == tuple(nets) == ('netG', 'netD', 'netC')
    assert [type(n) for n in nets.values()] == [NetG, NetD, NetC]
    assert family.save_intervals == {'netG': 'GSAVE_INTERVAL', 'netD': 'DSAVE_INTERVAL', 'netC': 'DSAVE_INTERVAL'}
    opts = family.make_optimizers(cfg, nets)
    assert set(opts) == {'optimizerG', 'optimizerD'}
    d_params = list(nets['netD'].parameters()) + list(nets['netC'].parameters())
    assert [id(p) for p in opts['optimizerD'].param_groups[0]['params']] == [id(p) for p in d_params]
    assert opts['optimizerD'].param_groups[0]['betas'] == (0.0, 0.9) and opts['optimizerD'].param_groups[0]['lr'] == 4e-4
    with pytest.raises(ConfigError, match='no encoder fine-tuning'):
        family.make_optimizers(cfg, nets, finetune=True)
    v1 = load_config(str(ROOT / 'cfg' / 'bird_dfgan.yml'), ['MODEL.NAME=dfgan_v1', 'TRAIN.NF=2', 'TREE.BASE_SIZE=64'])
    nets_v1 = family_of(v1).build_networks(v1)
    two_way_v1 = load_config(str(ROOT / 'cfg' / 'bird_dfgan.yml'), ['MODEL.NAME=dfgan_v1', 'DFGAN.OUTPUT=two_way'])
    with pytest.raises(ConfigError, match="DFGAN.OUTPUT='two_way'.*use MODEL.NAME=dfgan"):
        family_of(two_way_v1).make_optimizers(two_way_v1, nets_v1)
    assert tuple(nets_v1) == family_of(v1).networks == ('netG', 'netD')
    assert [type(n) for n in nets_v1.values()] == [NetG_v1, NetD_v1]


def test_sampling_noise_is_truncated_per_image():
    cfg = load_config(str(ROOT / 'cfg' / 'bird_dfgan.yml'))
    family = family_of(cfg)
    noise = family.noise(cfg, range(64), seed=4)
    assert noise.shape == (64, 100) and noise.abs().max() <= 2 * 0.88 and noise.abs().max() > 1.5
    # image n's noise depends on (seed, n) only: batches and resumed runs agree
    assert torch.equal(family.noise(cfg, [5, 9], seed=4), noise[[5, 9]])
    expected = 0.88 * truncated_normal((100,), generator=torch.Generator().manual_seed(4 * 1_000_003 + 9))
    assert torch.equal(noise[9], expected)
    plain = load_config(str(ROOT / 'cfg' / 'bird_dfgan.yml'), ['DFGAN.TRUNCATION=False'])
    assert torch.equal(family.noise(plain, [9], seed=4)[0],
                       torch.randn(100, generator=torch.Generator().manual_seed(4 * 1_000_003 + 9)))


def state_of(run):
    return torch.load(run / 'models' / 'state_last.pth', weights_only=True)


@pytest.mark.slow
def test_training_writes_netc_and_resumes_bit_identically(family_setup):
    root = family_setup
    assert gan_main(False, family_argv(root, out='straight')) == 0
    (straight,) = sorted((root / 'straight').iterdir())
    assert sorted(p.name for p in (straight / 'models').iterdir()) == [
        'netC_001.pth', 'netC_002.pth', 'netD_001.pth', 'netD_002.pth', 'netG_001.pth', 'netG_002.pth',
        'state_last.json', 'state_last.pth']
    cfg = family_cfg(root)
    nets = family_of(cfg).build_networks(cfg)
    for name, net in nets.items():   # plain state dicts with DF-GAN's keys
        net.load_state_dict(torch.load(straight / 'models' / f'{name}_002.pth', weights_only=True), strict=True)
    # 3 steps (the middle of epoch 2), then RESTORE
    assert gan_main(False, family_argv(root, out='split', **{'TRAIN.MAX_STEPS': 3})) == 0
    assert gan_main(False, family_argv(root, out='split', RESTORE=True)) == 0
    (split,) = sorted((root / 'split').iterdir())
    a, b = state_of(straight), state_of(split)
    assert a['progress'] == b['progress'] and a['progress']['global_step'] == 4
    for part in ('netG', 'netD', 'netC'):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f'{part}.{k}'
    for opt in ('optimizerG', 'optimizerD'):
        assert a[opt]['state'].keys() == b[opt]['state'].keys()
        for i, st in a[opt]['state'].items():
            for k in ('exp_avg', 'exp_avg_sq'):
                assert torch.equal(st[k], b[opt]['state'][i][k]), f'{opt}[{i}].{k}'
    # every network trained from epoch 1 to 2, and D's optimiser covers netD and netC
    for name in ('netG', 'netD', 'netC'):
        one, two = (torch.load(straight / 'models' / f'{name}_00{e}.pth', weights_only=True) for e in (1, 2))
        assert any(not torch.equal(one[k], two[k]) for k in one), name
    assert len(a['optimizerD']['state']) == len(list(nets['netD'].parameters())) + len(list(nets['netC'].parameters()))


@pytest.mark.slow
def test_ablation_keys_train_through_the_shared_loop(family_setup):
    """DAMSM term, two-way output and MA-GP off together: the update's DAMSM equals
    LAMBDA_DA x damsm_loss of its fakes, computed apart; netC is saved with the realness head."""
    root = family_setup
    extra = {'TRAIN.LAMBDA_DA': 0.05, 'DFGAN.OUTPUT': 'two_way', 'TRAIN.MAGP_K': 0.0, 'TRAIN.MAX_EPOCH': 1}
    cfg = family_cfg(root, out='ablation', **extra).freeze()
    trainer = GANTrainer(cfg)
    batch = collate_sorted([trainer.dataset[i] for i in range(4)])
    losses = trainer.update(batch)
    assert losses['MAGP'] == 0.0 and losses['errD_uncond'] > 0
    with torch.no_grad():
        words, sent = trainer.text_encoder(batch.captions, batch.cap_lens)
        smooth = cfg.TRAIN.SMOOTH
        expected = 0.05 * damsm_loss(trainer.image_encoder, trainer.update.last_fake, words, sent, batch.cap_lens,
                                     batch.class_ids, smooth.GAMMA1, smooth.GAMMA2, smooth.GAMMA3, smooth.LAMBDA)
    assert losses['DAMSM'] == pytest.approx(expected.item(), rel=1e-5)
    assert gan_main(False, family_argv(root, out='ablation_run', **extra)) == 0
    (run,) = sorted((root / 'ablation_run').iterdir())
    assert 'uncond_conv.0.weight' in torch.load(run / 'models' / 'netC_001.pth', weights_only=True)


def randomised_state(module, seed, prefix=''):
    gen = torch.Generator().manual_seed(seed)
    return {prefix + k: (torch.randn(v.shape, generator=gen) * 0.2 if v.is_floating_point() else v)
            for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_generation_and_eval_from_a_released_training_state(family_setup, capsys):
    root = family_setup
    cfg = family_cfg(root)
    nets = family_of(cfg).build_networks(cfg)
    model = {name: randomised_state(net, i, prefix='module.') for i, (name, net) in enumerate(nets.items())}
    path = root / 'released' / 'state_epoch_1220.pth'
    path.parent.mkdir()
    torch.save({'model': model, 'optimizers': {}, 'epoch': 1220}, path)
    argv = family_argv(root, **{'B_VALIDATION': True, 'TRAIN.NET_G': path, 'SAMPLE.NUM': 3, 'SAMPLE.SEED': 2})
    assert gan_main(False, argv) == 0
    out = path.parent / 'state_epoch_1220' / 'valid'
    lines = [json.loads(x) for x in (out / 'manifest.jsonl').read_text().splitlines()]
    assert [e['file'] for e in lines] == ['img_s0.png', 'img_s1.png', 'img_s2.png']
    assert all(e['mask'] is None for e in lines)            # DF-GAN has no masks
    # the same image from the released weights, loaded here by hand, and DF-GAN's noise
    netG = NetG(2, 100, 256, 32, 3)
    netG.load_state_dict({k[len('module.'):]: v for k, v in model['netG'].items()})
    netG.eval()
    stack = load_generation_stack(cfg, str(path), 'cpu')
    caps, lens, _ = stack.encode([lines[1]['caption']])
    noise = 0.88 * truncated_normal((1, 100), generator=torch.Generator().manual_seed(2 * 1_000_003 + 1))
    with torch.no_grad():
        expected = to_uint8_image(netG(noise, stack.sentences(caps, lens)))[0].permute(1, 2, 0).numpy()
    png = torch.from_numpy(np.array(Image.open(out / 'img_s1.png').convert('RGB')))
    assert (png.int() - torch.from_numpy(expected).int()).abs().max() <= 1
    # eval_IS generates from the same file through the same stack
    eval_argv = ['--cfg', str(ROOT / 'cfg' / 'bird_dfgan.yml'), '--netG', str(path), '--num', '6'] + argv[2:] + [
        'EVAL.RANDOM_WEIGHTS=True', 'EVAL.SPLITS=2', 'EVAL.BATCH_SIZE=6', f'EVAL.CACHE_DIR={root / "cache"}']
    assert eval_main('IS', eval_argv) == 0
    result = json.loads((path.parent / 'state_epoch_1220' / 'is.json').read_text())
    assert result['count'] == 6 and result['value'] >= 1.0


@pytest.mark.slow
def test_a_2020_generator_is_sampled_under_dfgan(family_setup):
    root = family_setup
    v1 = NetG_v1(2, 100, 32, 256)
    path = root / 'netG_2020.pth'
    torch.save(randomised_state(v1, 5, prefix='module.'), path)
    for model in ('dfgan', 'dfgan_v1'):     # detected by its keys, or named
        stack = load_generation_stack(family_cfg(root, model=model, **{'TREE.BASE_SIZE': 32}), str(path), 'cpu')
        assert type(stack.netG) is NetG_v1
        assert torch.equal(stack.netG.block0.affine3.fc_gamma.linear1.weight,
                           torch.load(path, weights_only=True)['module.block0.affine3.fc_gamma.linear1.weight'])
        images, masks = stack.generate(stack.noise([0, 1], 0), torch.randn(2, 256))
        assert images.shape == (2, 3, 32, 32) and masks == []
    # an SSA-GAN generator is not a DF-GAN one: the error names the MODEL.NAME that fits
    ssagan_file = root / 'netG_ssagan.pth'
    torch.save(SSAGAN_NetG(2, 100, 64).state_dict(), ssagan_file)
    with pytest.raises(CheckpointError, match='set MODEL.NAME: ssagan'):
        load_generation_stack(family_cfg(root), str(ssagan_file), 'cpu')


@pytest.mark.slow
def test_dfgan_v1_trains_through_the_shared_loop(family_setup):
    root = family_setup
    argv = family_argv(root, out='v1', model='dfgan_v1', **{'TRAIN.MAX_EPOCH': 1})
    assert gan_main(False, argv) == 0
    (run,) = sorted((root / 'v1').iterdir())
    assert sorted(p.name for p in (run / 'models').iterdir()) == ['netD_001.pth', 'netG_001.pth',
                                                                   'state_last.json', 'state_last.pth']
    state = torch.load(run / 'models' / 'netG_001.pth', weights_only=True)
    assert generator_layout(state) == 'dfgan_v1'


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(f'bench_{name}', ROOT / 'benchmarks' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize('model, size', [('dfgan', 32), ('dfgan_v1', 64)])
def test_train_step_benchmark_runs_the_family(model, size, capsys):
    bench = load_benchmark('train_step')
    bench.main(['--model', model, '--nf', '2', '--size', str(size), '--batch', '2', '--iters', '1', '--warmup', '1'])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line['model'] == model and line['size'] == size and line['ms_per_iter'] > 0
    with pytest.raises(SystemExit):
        bench.main(['--model', model, '--mode', 'official'])


@pytest.mark.slow
def test_training_continues_from_a_released_training_state(family_setup):
    root = family_setup
    cfg = family_cfg(root)
    family = family_of(cfg)
    nets = family.build_networks(cfg)
    model = {name: randomised_state(net, 10 + i, prefix='module.') for i, (name, net) in enumerate(nets.items())}
    for name, net in nets.items():
        net.load_state_dict({k[len('module.'):]: v for k, v in model[name].items()})
    opts = family.make_optimizers(cfg, nets)
    for opt in opts.values():   # one step, so that the states hold moments
        for group in opt.param_groups:
            for p in group['params']:
                p.grad = torch.randn_like(p)
        opt.step()
    path = root / 'release_train' / 'state_epoch_7.pth'
    path.parent.mkdir()
    torch.save({'model': model, 'optimizers': {'optimizer_G': opts['optimizerG'].state_dict(),
                                               'optimizer_D': opts['optimizerD'].state_dict()}, 'epoch': 7}, path)
    argv = family_argv(root, out='from_release', **{'TRAIN.NET_G': path, 'TRAIN.MAX_EPOCH': 8})
    cfg = load_config(argv[1], argv[2:])
    assert resolve_resume(cfg, False) == ('weights', str(path))
    trainer = GANTrainer(cfg)
    assert trainer.start.epoch == 8
    for name in ('netG', 'netD', 'netC'):
        for k, v in trainer.nets[name].state_dict().items():
            assert torch.equal(v, model[name]['module.' + k]), f'{name}.{k}'
    saved = opts['optimizerD'].state_dict()['state']
    loaded = trainer.optimizers['optimizerD'].state_dict()['state']
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[i]['exp_avg'], loaded[i]['exp_avg']) for i in saved)
    trainer.fit()   # epoch 8 only
    (run,) = sorted((root / 'from_release').iterdir())
    assert sorted(p.name for p in (run / 'models').glob('netG_*.pth')) == ['netG_008.pth']
    # this project's own training states are not taken for DF-GAN's
    assert not family.is_release_start(str(run / 'models' / 'state_last.pth'))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, argv, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = load_config(argv[1], argv[2:]).freeze()
    trainer = GANTrainer(cfg)
    trainer.fit()
    torch.save({name: net.state_dict() for name, net in trainer.nets.items()}, os.path.join(out, f'rank{rank}.pth'))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize('ablation', [False, True], ids=['dfgan', 'two_way_damsm_no_magp'])
def test_ddp_gloo_keeps_all_three_networks_identical(family_setup, tmp_path, ablation):
    extra = {'DFGAN.OUTPUT': 'two_way', 'TRAIN.LAMBDA_DA': 0.05, 'TRAIN.MAGP_K': 0.0} if ablation else {}
    out = 'ddp_ablation' if ablation else 'ddp'
    argv = family_argv(family_setup, out=out, **{'TRAIN.MAX_EPOCH': 1}, **extra)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), argv, str(tmp_path)), nprocs=2, start_method='spawn')
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in range(2))
    assert set(r0) == {'netG', 'netD', 'netC'}
    assert ('uncond_conv.0.weight' in r0['netC']) == ablation   # the realness head trained through DDP
    for net in r0:
        for k, v in r0[net].items():
            assert torch.equal(v, r1[net][k]), f'{net}.{k}'
    (run,) = sorted((family_setup / out).iterdir())
    assert (run / 'models' / 'netC_001.pth').is_file()
