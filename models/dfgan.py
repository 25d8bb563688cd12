"""DF-GAN networks: the 2022 release (CVPR 2022 code) and the 2020 release (arXiv v1 code).

2022 (``MODEL.NAME: dfgan``): ``NetG(ngf, nz, cond_dim, imsize, ch_size)``,
``NetD(ndf, imsize, ch_size)`` and ``NetC(ndf, cond_dim)`` with the constructor arguments
and state-dict keys of tobran/DF-GAN ``code/models/GAN.py``:

- ``NetG``: ``fc`` Linear(nz, 8ngf*4*4) -> B x 8ngf x 4 x 4, then ``GBlocks.i``
  (up-sample x2 nearest, ``shortcut + residual``; residual ``fuse1`` -> ``c1`` -> ``fuse2``
  -> ``c2``; each fuse is ``affine0`` -> LReLU -> ``affine1`` -> LReLU, an affine map whose
  per-channel scale and shift come from MLPs ``fc_gamma``/``fc_beta`` (``linear1``,
  ``linear2``) of the condition ``cat(noise, sentence)``), then ``to_rgb``
  (LReLU -> Conv3x3 -> tanh). Channels 8,8,8,8,4,2,1 x ngf from 4 to 256 px.
- ``NetD``: ``conv_img`` then ``DBlocks.i`` (down-sampling residual blocks ``conv_r``,
  ``conv_s``, ``gamma``), channels 1,2,4,8,8,8,8 x ndf: image B x 3 x S x S -> B x 8ndf x 4 x 4.
- ``NetC``: ``joint_conv`` on the features and the sentence tiled to 4 x 4 -> B x 1 x 1 x 1.

2020 (``MODEL.NAME: dfgan_v1``): ``NetG_v1(ngf, nz)`` with keys ``fc``, ``block0..6``
(``affine0..3``, ``c1``, ``c2``, ``gamma``, ``c_sc``) and ``conv_img``, the layout SSA-GAN's
generator grew from, conditioned on the sentence only. Its discriminator ``NetD_v1`` is
SSA-GAN's ``NetD`` (``block0..5``, ``COND_DNET``): the same classes and keys.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv_gradfix import Conv2d
from .discriminator import DownBlock, NetD as NetD_v1
from .generator import generator_channels, num_stages

__all__ = ['NetG', 'NetD', 'NetC', 'NetG_v1', 'NetD_v1', 'Affine', 'DeepFusion', 'FusionUpBlock',
           'AffineBlock_v1', 'FusionBlock_v1', 'dfgan_channels']


def dfgan_channels(nf: int, imsize: int) -> list:
    """Channels from high to low resolution, ``nf * min(2**i, 8)`` for the log2(imsize) - 1
    resolutions imsize, ..., 4: [nf, 2nf, 4nf, 8nf, 8nf, 8nf, 8nf] at 256 px.

    D's blocks go along this list (imsize -> 4 px), G's blocks along it reversed (4 -> imsize).
    """
    return [nf * min(2 ** i, 8) for i in range(num_stages(imsize))]


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ('linear1', nn.Linear(in_dim, hidden)),
        ('relu1', nn.ReLU(inplace=True)),
        ('linear2', nn.Linear(hidden, out_dim)),
    ]))


class Affine(nn.Module):
    """Conditional affine map (official name ``Affine``): x B x C x H x W, y B x cond_dim ->
    ``gamma(y) * x + beta(y)``, gamma and beta B x C from the MLPs ``fc_gamma``/``fc_beta``.

    ``hidden`` is the MLPs' inner width: C in 2022 (the default), cond_dim in 2020. The last
    layers start at gamma = 1, beta = 0, so a fresh Affine is the identity.
    """

    def __init__(self, cond_dim: int, num_features: int, hidden: int | None = None):
        super().__init__()
        hidden = num_features if hidden is None else hidden
        self.fc_gamma = _mlp(cond_dim, hidden, num_features)
        self.fc_beta = _mlp(cond_dim, hidden, num_features)
        nn.init.zeros_(self.fc_gamma.linear2.weight)
        nn.init.ones_(self.fc_gamma.linear2.bias)
        nn.init.zeros_(self.fc_beta.linear2.weight)
        nn.init.zeros_(self.fc_beta.linear2.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = self.fc_gamma(y).view(-1, x.size(1), 1, 1)
        bias = self.fc_beta(y).view(-1, x.size(1), 1, 1)
        return weight * x + bias


class DeepFusion(nn.Module):
    """Deep text-image fusion (official name ``DFBLK``): ``affine0`` -> LReLU(0.2) ->
    ``affine1`` -> LReLU(0.2); B x C x H x W -> B x C x H x W."""

    def __init__(self, cond_dim: int, in_ch: int):
        super().__init__()
        self.affine0 = Affine(cond_dim, in_ch)
        self.affine1 = Affine(cond_dim, in_ch)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.affine0(x, y), 0.2)
        return F.leaky_relu(self.affine1(h, y), 0.2)


class FusionUpBlock(nn.Module):
    """Generator block (official name ``G_Block``): B x in_ch x H x W -> B x out_ch x 2H x 2W.

    Up-sample x2 (nearest), then ``shortcut(x) + residual(x)`` with no gate: the 1x1
    ``c_sc`` where channels change, residual ``fuse1`` -> ``c1`` -> ``fuse2`` -> ``c2``.
    """

    def __init__(self, cond_dim: int, in_ch: int, out_ch: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.learnable_sc = in_ch != out_ch
        self.c1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.c2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.fuse1 = DeepFusion(cond_dim, in_ch)
        self.fuse2 = DeepFusion(cond_dim, out_ch)
        if self.learnable_sc:
            self.c_sc = nn.Conv2d(in_ch, out_ch, 1, 1, 0)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_sc(x) if self.learnable_sc else x

    def residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.c1(self.fuse1(x, y))
        return self.c2(self.fuse2(h, y))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode='nearest')
        return self.shortcut(x) + self.residual(x, y)


class NetG(nn.Module):
    """DF-GAN 2022 generator. ``forward(noise B x nz, sent B x cond_dim) -> image
    B x ch_size x imsize x imsize`` in [-1, 1]; every block is conditioned on ``cat(noise, sent)``."""

    def __init__(self, ngf: int, nz: int, cond_dim: int, imsize: int, ch_size: int):
        super().__init__()
        self.ngf, self.nz, self.cond_dim, self.imsize = ngf, nz, cond_dim, imsize
        self.fc = nn.Linear(nz, ngf * 8 * 4 * 4)
        channels = dfgan_channels(ngf, imsize)[::-1]
        self.GBlocks = nn.ModuleList(FusionUpBlock(cond_dim + nz, fin, fout)
                                     for fin, fout in zip(channels[:-1], channels[1:]))
        self.to_rgb = nn.Sequential(
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels[-1], ch_size, 3, 1, 1),
            nn.Tanh(),
        )

    def forward(self, noise: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
        out = self.fc(noise).view(noise.size(0), 8 * self.ngf, 4, 4)
        cond = torch.cat((noise, sent), dim=1)
        for block in self.GBlocks:
            out = block(out, cond)
        return self.to_rgb(out)


class NetD(nn.Module):
    """DF-GAN 2022 image encoder of the discriminator: B x ch_size x imsize x imsize ->
    features B x 8ndf x 4 x 4 (the matching head is the separate :class:`NetC`)."""

    def __init__(self, ndf: int, imsize: int = 128, ch_size: int = 3):
        super().__init__()
        self.ndf, self.imsize = ndf, imsize
        self.conv_img = Conv2d(ch_size, ndf, 3, 1, 1)
        channels = dfgan_channels(ndf, imsize)
        self.DBlocks = nn.ModuleList(DownBlock(fin, fout) for fin, fout in zip(channels[:-1], channels[1:]))

    def set_conv_gradfix(self, enabled: bool = True) -> 'NetD':
        """Every convolution's gradients of every order on the backend's ordinary kernels
        (models.conv_gradfix): the same function, rounded differently."""
        for m in self.modules():
            if isinstance(m, Conv2d):
                m.fast_gradients = enabled
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_img(x)
        for block in self.DBlocks:
            out = block(out)
        return out


def _logit_head(in_ch: int, ndf: int) -> nn.Sequential:
    # Conv3x3 -> 2ndf, LReLU(0.2), Conv4x4 -> 1, no biases: B x in_ch x 4 x 4 -> B x 1 x 1 x 1
    return nn.Sequential(Conv2d(in_ch, ndf * 2, 3, 1, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
                         Conv2d(ndf * 2, 1, 4, 1, 0, bias=False))


class NetC(nn.Module):
    """DF-GAN 2022 matching head: features B x 8ndf x 4 x 4 and sentence B x cond_dim ->
    logits B x 1 x 1 x 1 (Conv3x3 -> 2ndf, LReLU(0.2), Conv4x4 -> 1, no biases).

    ``two_way=True`` adds ``uncond_conv``, the same head on the features alone (``forward``
    without a sentence): the two-way output DF-GAN's paper compares its one-way output with.
    The default has DF-GAN's keys only.
    """

    def __init__(self, ndf: int, cond_dim: int = 256, two_way: bool = False):
        super().__init__()
        self.cond_dim = cond_dim
        self.joint_conv = _logit_head(ndf * 8 + cond_dim, ndf)
        self.uncond_conv = _logit_head(ndf * 8, ndf) if two_way else None

    def set_conv_gradfix(self, enabled: bool = True) -> 'NetC':
        """See :meth:`NetD.set_conv_gradfix`."""
        for m in self.modules():
            if isinstance(m, Conv2d):
                m.fast_gradients = enabled
        return self

    def forward(self, features: torch.Tensor, sent: torch.Tensor | None = None) -> torch.Tensor:
        """Matching logits of (features, sent); with ``sent`` None the realness logits of the
        two-way head (through ``forward``, so that DDP's wrapper sees the call)."""
        if sent is None:
            if self.uncond_conv is None:
                raise ValueError('NetC(two_way=False) has no unconditional head: pass the sentence codes')
            return self.uncond_conv(features)
        sent = sent.view(-1, self.cond_dim, 1, 1).expand(-1, -1, features.size(2), features.size(3))
        return self.joint_conv(torch.cat((features, sent), 1))


# ---------------------------------------------------------------------------------------------
# The 2020 release
# ---------------------------------------------------------------------------------------------

class AffineBlock_v1(Affine):
    """2020 conditional affine map (official name ``affine``): MLPs cond_dim -> cond_dim -> C."""

    def __init__(self, num_features: int, cond_dim: int = 256):
        super().__init__(cond_dim, num_features, hidden=cond_dim)


class FusionBlock_v1(nn.Module):
    """2020 generator block (official name ``G_Block``): B x in_ch x H x W -> B x out_ch x H x W,
    ``shortcut(x) + gamma * residual(x)`` (gamma a scalar starting at 0), residual
    ``affine0``-LReLU-``affine1``-LReLU-``c1``-``affine2``-LReLU-``affine3``-LReLU-``c2``.
    The up-sampling happens in :class:`NetG_v1`, between blocks."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int = 256):
        super().__init__()
        self.learnable_sc = in_ch != out_ch
        self.c1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.c2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.affine0 = AffineBlock_v1(in_ch, cond_dim)
        self.affine1 = AffineBlock_v1(in_ch, cond_dim)
        self.affine2 = AffineBlock_v1(out_ch, cond_dim)
        self.affine3 = AffineBlock_v1(out_ch, cond_dim)
        self.gamma = nn.Parameter(torch.zeros(1))
        if self.learnable_sc:
            self.c_sc = nn.Conv2d(in_ch, out_ch, 1, 1, 0)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_sc(x) if self.learnable_sc else x

    def residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.affine0(x, y), 0.2)
        h = self.c1(F.leaky_relu(self.affine1(h, y), 0.2))
        h = F.leaky_relu(self.affine2(h, y), 0.2)
        return self.c2(F.leaky_relu(self.affine3(h, y), 0.2))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.gamma * self.residual(x, y)


class NetG_v1(nn.Module):
    """DF-GAN 2020 generator. ``forward(noise B x nz, sent B x cond_dim) -> image
    B x 3 x img_size x img_size`` in [-1, 1]; the blocks see the sentence only.

    Blocks ``block0..6`` at 4, 8, ..., 256 px with channels 8,8,8,8,4,2,1 x ngf (the release
    is 256 px only; smaller sizes drop leading 8ngf blocks, as SSA-GAN's NetG here does).
    """

    def __init__(self, ngf: int = 64, nz: int = 100, img_size: int = 256, cond_dim: int = 256):
        super().__init__()
        self.ngf, self.nz, self.img_size = ngf, nz, img_size
        self.fc = nn.Linear(nz, ngf * 8 * 4 * 4)
        in_ch = 8 * ngf
        mults = generator_channels(img_size)
        for i, mult in enumerate(mults):
            self.add_module(f'block{i}', FusionBlock_v1(in_ch, mult * ngf, cond_dim))
            in_ch = mult * ngf
        self.num_blocks = len(mults)
        self.conv_img = nn.Sequential(
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(in_ch, 3, 3, 1, 1),
            nn.Tanh(),
        )

    @property
    def blocks(self) -> list:
        return [getattr(self, f'block{i}') for i in range(self.num_blocks)]

    def forward(self, noise: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
        out = self.fc(noise).view(noise.size(0), 8 * self.ngf, 4, 4)
        for i, block in enumerate(self.blocks):
            if i > 0:
                out = F.interpolate(out, scale_factor=2, mode='nearest')
            out = block(out, sent)
        return self.conv_img(out)
