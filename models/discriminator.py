"""SSA-GAN / DF-GAN discriminator with the conditional (text-matching) head.

State-dict keys are exactly those of the official release.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .conv_gradfix import Conv2d
from .generator import num_stages
from .pooling import avg_pool2x

__all__ = ['NetD', 'DownBlock', 'ConditionalLogits', 'discriminator_channels']


def discriminator_channels(img_size: int) -> list:
    """Output-channel multipliers of the down blocks: [2, 4, 8, 16, 16, 16] at 256 px,
    [2, 4, 8, 16] at 64 px.

    The matching head needs 16*ndf channels at 4 x 4, which the doubling schedule reaches
    after four blocks; 32 px has three, so it drops the schedule's first block: [4, 8, 16].
    """
    blocks = num_stages(img_size) - 1
    skip = max(0, 4 - blocks)       # leading blocks of the 64-px schedule left out (1 at 32 px)
    return [min(2 ** (i + 1 + skip), 16) for i in range(blocks)]


class DownBlock(nn.Module):
    """Residual down-sampling block (official name ``resD``): B x fin x H x W -> B x fout x H/2 x W/2.

    ``out = avgpool2(shortcut(x)) + gamma * residual(x)``; the 1x1 shortcut conv is
    applied only where channels change, but exists (and is in the checkpoint) always.
    """

    def __init__(self, fin: int, fout: int, gate_init: float = 0.0):
        super().__init__()
        self.learned_shortcut = fin != fout
        self.conv_r = nn.Sequential(
            Conv2d(fin, fout, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            Conv2d(fout, fout, 3, 1, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.conv_s = Conv2d(fin, fout, 1, 1, 0)
        if not self.learned_shortcut:
            # Unused, kept for checkpoint compatibility. Freezing it changes nothing
            # (it never gets a gradient) and lets DDP run without unused-parameter search.
            self.conv_s.requires_grad_(False)
        # official: 0, so a fresh block is its shortcut
        self.gamma = nn.Parameter(torch.full((1,), float(gate_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(x) if self.learned_shortcut else x
        return avg_pool2x(shortcut) + self.gamma * self.conv_r(x)


class ConditionalLogits(nn.Module):
    """Matching head (official name ``D_GET_LOGITS``): features B x 16ndf x 4 x 4 and
    sentence B x 256 -> logits B x 1 x 1 x 1."""

    def __init__(self, ndf: int, cond_dim: int = 256):
        super().__init__()
        self.cond_dim = cond_dim
        self.joint_conv = nn.Sequential(
            Conv2d(ndf * 16 + cond_dim, ndf * 2, 3, 1, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            Conv2d(ndf * 2, 1, 4, 1, 0, bias=False),
        )

    def forward(self, features: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
        sent = sent.view(-1, self.cond_dim, 1, 1).expand(-1, -1, features.size(2), features.size(3))
        return self.joint_conv(torch.cat((features, sent), 1))


class NetD(nn.Module):
    """Discriminator. ``forward(image B x 3 x S x S) -> features B x 16ndf x 4 x 4``;
    ``COND_DNET(features, sent B x 256) -> logits B x 1 x 1 x 1``.

    ``gate_init`` is the initial value of every DownBlock's residual gate ``gamma``
    (official: 0)."""

    def __init__(self, ndf: int = 64, img_size: int = 256, cond_dim: int = 256, gate_init: float = 0.0):
        super().__init__()
        self.ndf = ndf
        self.img_size = img_size
        self.conv_img = Conv2d(3, ndf, 3, 1, 1)
        fin = ndf
        mults = discriminator_channels(img_size)
        for i, mult in enumerate(mults):
            self.add_module(f'block{i}', DownBlock(fin, mult * ndf, gate_init))
            fin = mult * ndf
        self.num_blocks = len(mults)
        self.COND_DNET = ConditionalLogits(ndf, cond_dim)

    @property
    def blocks(self) -> list:
        return [getattr(self, f'block{i}') for i in range(self.num_blocks)]

    def set_conv_gradfix(self, enabled: bool = True) -> 'NetD':
        """Compute every convolution's gradients, of every order, with the backend's
        ordinary kernels (models.conv_gradfix); the same function, rounded differently."""
        for m in self.modules():
            if isinstance(m, Conv2d):
                m.fast_gradients = enabled
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_img(x)
        for block in self.blocks:
            out = block(out)
        return out
