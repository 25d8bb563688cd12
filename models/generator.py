"""SSA-GAN generator: 7 semantic-spatial aware (SSACN) blocks at 256 px.

State-dict keys are exactly those of the official release (``block0``..``block6``,
``affine0/affine2``, ``conv_mask``...), so released ``netG_*.pth`` files load strictly.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['NetG', 'SSACNBlock', 'SemanticSpatialBN', 'mask_predictor', 'generator_channels',
           'num_stages', 'MASK_MODES']

MASK_HIDDEN = 100
# 'predicted': the official SSACN (masks from the mask predictors); 'ones': every mask fixed
# at 1, so each SSCBN is a sentence-conditioned BN (the paper's "no SSACN" ablation row)
MASK_MODES = ('predicted', 'ones')


def num_stages(img_size: int) -> int:
    """Number of resolutions 4, 8, ..., img_size (7 at 256 px)."""
    if img_size < 32 or img_size & (img_size - 1):
        raise ValueError(f'image size must be a power of two >= 32 (64, 128, 256), got {img_size}')
    return img_size.bit_length() - 2  # log2(img_size) - 1


def generator_channels(img_size: int) -> list:
    """Output-channel multipliers of the blocks: [8, 8, 8, 8, 4, 2, 1] at 256 px.

    Smaller images drop leading 8x blocks (64 px: [8, 8, 4, 2, 1]), so the last
    blocks, and the 4x4 input of 8*ngf channels, keep their official widths.
    """
    return [8] * (num_stages(img_size) - 3) + [4, 2, 1]


def mask_predictor(in_ch: int) -> nn.Sequential:
    """Conv3x3 -> BN -> ReLU -> Conv1x1 -> 1 raw mask channel (B x 1 x H x W, before sigmoid)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, MASK_HIDDEN, 3, 1, 1),
        nn.BatchNorm2d(MASK_HIDDEN),
        nn.ReLU(),
        nn.Conv2d(MASK_HIDDEN, 1, 1, 1, 0),
    )


def _mlp(cond_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ('linear1', nn.Linear(cond_dim, cond_dim)),
        ('relu1', nn.ReLU(inplace=True)),
        ('linear2', nn.Linear(cond_dim, out_dim)),
    ]))


class SemanticSpatialBN(nn.Module):
    """Semantic-spatial conditional batch norm (SSCBN; official name ``affine``).

    ``out = (gamma(e) * m + 1) * BN(x) + beta(e) * m`` with x: B x C x H x W,
    e: B x cond_dim sentence vector, m: B x 1 x H x W mask in [0, 1].
    The last layers of the gamma/beta MLPs start at zero, so a fresh SSCBN is a plain BN.
    """

    def __init__(self, num_features: int, cond_dim: int = 256):
        super().__init__()
        # lean=True computes the same affine map as x + m * (gamma * x + beta), with fewer
        # full-size temporaries (faster, not bit-identical); see NetG.set_lean_sscbn.
        self.lean = False
        self.batch_norm2d = nn.BatchNorm2d(num_features, affine=False)
        self.fc_gamma = _mlp(cond_dim, num_features)
        self.fc_beta = _mlp(cond_dim, num_features)
        for mlp in (self.fc_gamma, self.fc_beta):
            nn.init.zeros_(mlp.linear2.weight)
            nn.init.zeros_(mlp.linear2.bias)

    def forward(self, x: torch.Tensor, sent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.batch_norm2d(x)
        weight = self.fc_gamma(sent).view(-1, x.size(1), 1, 1)
        bias = self.fc_beta(sent).view(-1, x.size(1), 1, 1)
        if self.lean:
            return x + mask * torch.addcmul(bias, weight, x)
        return (weight * mask + 1) * x + bias * mask


class SSACNBlock(nn.Module):
    """``out = shortcut(x) + gamma * residual(x)``; residual SSCBN-ReLU-Conv3x3-SSCBN-ReLU-Conv3x3.

    Returns ``(out B x out_ch x H x W, raw next mask B x 1 x H x W or None)``
    (official name ``G_Block``).
    """

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int = 256, predict_mask: bool = True,
                 gate_init: float = 0.0):
        super().__init__()
        self.learnable_sc = in_ch != out_ch
        self.predict_mask = predict_mask
        self.c1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.c2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.affine0 = SemanticSpatialBN(in_ch, cond_dim)
        self.affine2 = SemanticSpatialBN(out_ch, cond_dim)
        # official: 0, so the residual (the only path of the text into the image) opens only as
        # fast as Adam moves gamma, about one learning rate per step
        self.gamma = nn.Parameter(torch.full((1,), float(gate_init)))
        if self.learnable_sc:
            self.c_sc = nn.Conv2d(in_ch, out_ch, 1, 1, 0)
        if predict_mask:
            self.conv_mask = mask_predictor(out_ch)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_sc(x) if self.learnable_sc else x

    def residual(self, x: torch.Tensor, sent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.relu(self.affine0(x, sent, mask)))
        return self.c2(F.relu(self.affine2(h, sent, mask)))

    def forward(self, x: torch.Tensor, sent: torch.Tensor, mask: torch.Tensor):
        out = self.shortcut(x) + self.gamma * self.residual(x, sent, mask)
        return out, (self.conv_mask(out) if self.predict_mask else None)


class NetG(nn.Module):
    """Generator. ``forward(noise B x nz, sent B x 256) -> (image B x 3 x S x S in [-1, 1], masks)``.

    ``masks`` is the list of the sigmoid masks used by each block, B x 1 x 4 x 4 up to
    B x 1 x S x S (7 of them at S = 256). The raw mask predicted after block i is resized
    bilinearly (align_corners=True) to the next block's size before its sigmoid.

    ``masks='ones'`` (ablation) fixes every mask at 1: no mask predictor is built (so the
    state dict has no ``conv_mask`` keys) and each SSCBN is ``(gamma(e) + 1) * BN(x) + beta(e)``;
    the returned masks are those ones.

    ``gate_init`` is the initial value of every block's residual gate ``gamma`` (official: 0).
    """

    def __init__(self, ngf: int = 64, nz: int = 100, img_size: int = 256, cond_dim: int = 256,
                 masks: str = 'predicted', gate_init: float = 0.0):
        super().__init__()
        if masks not in MASK_MODES:
            raise ValueError(f"masks must be one of {', '.join(map(repr, MASK_MODES))}, got {masks!r}")
        self.ngf = ngf
        self.nz = nz
        self.img_size = img_size
        self.masks = masks
        predicted = masks == 'predicted'
        mults = generator_channels(img_size)
        if predicted:
            self.conv_mask = mask_predictor(8 * ngf)
        self.fc = nn.Linear(nz, 8 * ngf * 4 * 4)
        in_ch = 8 * ngf
        for i, mult in enumerate(mults):
            last = i == len(mults) - 1
            self.add_module(f'block{i}', SSACNBlock(in_ch, mult * ngf, cond_dim,
                                                    predict_mask=predicted and not last, gate_init=gate_init))
            in_ch = mult * ngf
        self.num_blocks = len(mults)
        self.conv_img = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(in_ch, 3, 3, 1, 1),
            nn.Tanh(),
        )

    @property
    def blocks(self) -> list:
        return [getattr(self, f'block{i}') for i in range(self.num_blocks)]

    def set_lean_sscbn(self, lean: bool = True) -> 'NetG':
        """Switch every SSCBN to the lean formulation (same map, fewer temporaries)."""
        for m in self.modules():
            if isinstance(m, SemanticSpatialBN):
                m.lean = lean
        return self

    def forward(self, noise: torch.Tensor, sent: torch.Tensor):
        out = self.fc(noise).view(noise.size(0), 8 * self.ngf, 4, 4)
        predicted = self.masks == 'predicted'
        mask_logits = self.conv_mask(out) if predicted else None
        masks = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                out = F.interpolate(out, scale_factor=2, mode='nearest')
                if predicted:
                    mask_logits = F.interpolate(mask_logits, size=out.shape[2:], mode='bilinear',
                                                align_corners=True)
            if predicted:
                mask = torch.sigmoid(mask_logits)
            else:
                mask = out.new_ones(out.size(0), 1, out.size(2), out.size(3))
            masks.append(mask)
            out, mask_logits = block(out, sent, mask)
        return self.conv_img(out), masks
