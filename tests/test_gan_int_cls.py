"""GAN-INT-CLS networks against the reference layout and independent re-computations."""
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.gan_int_cls import (Discriminator, Generator, from_reference_state_dict,
                                init_dcgan_weights)

REFERENCE = json.loads((Path(__file__).parent / 'fixtures' / 'gan_int_cls_reference_keys.json')
                       .read_text())['networks']


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


def test_unconditional_generator():
    g = Generator(noise_dim=7, ngf=4, conditional=False)
    assert not hasattr(g, 'projection') and g.netG[0].in_channels == 7
    assert g(torch.randn(2, 7)).shape == (2, 3, 64, 64)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match='64 x 64'):
        Discriminator(ndf=4)(torch.randn(2, 3, 128, 128), torch.randn(2, 1024))
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
