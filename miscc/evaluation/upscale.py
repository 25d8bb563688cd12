"""Enlarging generated images (``SAMPLE.UPSCALE``): bicubic interpolation, or SRCNN on the
luminance channel of the bicubic result, as the SRCNN paper and the PyTorch implementation whose
weights it loads (yjn870/SRCNN-pytorch) do: RGB -> YCbCr (ITU-R BT.601, studio range), Y / 255
through the network, Cb and Cr kept from the bicubic image, back to RGB."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from models.srcnn import SRCNN

from ..core.checkpoint import CheckpointError, load_file, strip_prefixes

__all__ = ['Upscaler', 'build_upscaler', 'srcnn_weights_path', 'rgb_to_ycbcr', 'ycbcr_to_rgb', 'bicubic']


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W RGB in 0..255 (float) -> Y, Cb, Cr (Y in 16..235), BT.601 as MATLAB's rgb2ycbcr,
    which the SRCNN paper used. The PyTorch implementation writes Y's red weight as 64.738 / 256
    (0.2529, not 65.738 / 256 = 0.2568): its Y is at most 1 level below this one."""
    r, g, b = rgb.unbind(1)
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    return torch.stack([y, cb, cr], 1)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """The inverse of ``rgb_to_ycbcr`` (float, not clamped)."""
    y, cb, cr = (ycbcr[:, 0] - 16.0) * (255.0 / 219.0), ycbcr[:, 1] - 128.0, ycbcr[:, 2] - 128.0
    r = y + 1.402 * (255.0 / 224.0) * cr
    g = y - (0.114 * 1.772 / 0.587) * (255.0 / 224.0) * cb - (0.299 * 1.402 / 0.587) * (255.0 / 224.0) * cr
    b = y + 1.772 * (255.0 / 224.0) * cb
    return torch.stack([r, g, b], 1)


def bicubic(images: torch.Tensor, factor: int) -> torch.Tensor:
    """uint8 B x 3 x H x W -> uint8 B x 3 x fH x fW by PIL's bicubic resampling (what SRCNN
    weights are trained on)."""
    out = []
    for image in images.cpu():
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        big = pil.resize((pil.width * factor, pil.height * factor), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(big).copy()).permute(2, 0, 1))
    return torch.stack(out)


def srcnn_weights_path(cfg) -> str:
    """SAMPLE.SRCNN_WEIGHTS, or ``models/srcnn_x<UPSCALE>.pth`` (the implementation's file name)."""
    return cfg.SAMPLE.SRCNN_WEIGHTS or os.path.join('models', f'srcnn_x{cfg.SAMPLE.UPSCALE}.pth')


@dataclass
class Upscaler:
    """``upscaler(uint8 B x 3 x H x W) -> uint8 B x 3 x fH x fW`` by ``method``; ``srcnn`` is the
    network for 'srcnn' (eval mode, on its device). ``settings`` records what it does (kept in a
    generated folder's ``generator.json``, so that a folder never mixes sizes or methods)."""
    factor: int
    method: str
    srcnn: SRCNN | None = None
    weights: str = ''

    @property
    def settings(self) -> dict:
        out = {'upscale': self.factor, 'method': self.method}
        if self.weights:
            out['weights'] = os.path.abspath(self.weights)
        return out

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        enlarged = bicubic(images, self.factor)
        if self.srcnn is None:
            return enlarged
        device = next(self.srcnn.parameters()).device
        ycbcr = rgb_to_ycbcr(enlarged.float().to(device))
        y = self.srcnn(ycbcr[:, :1] / 255.0).clamp(0.0, 1.0) * 255.0
        rgb = ycbcr_to_rgb(torch.cat([y, ycbcr[:, 1:]], 1))
        return rgb.round().clamp(0, 255).to(torch.uint8).cpu()

    def float_images(self, images: torch.Tensor) -> torch.Tensor:
        """The same for B x 3 x H x W in [-1, 1] (float in, float out, through uint8 as saved)."""
        as_uint8 = ((images.detach().float().cpu() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
        return self(as_uint8).float() / 127.5 - 1.0


def _load_srcnn(path: str, device) -> SRCNN:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"SAMPLE.UPSCALE_METHOD='srcnn' needs SRCNN weights at '{path}': put the x-factor weights of the "
            f"PyTorch SRCNN implementation (yjn870/SRCNN-pytorch, srcnn_x2.pth / srcnn_x3.pth / srcnn_x4.pth) there, "
            f"or set SAMPLE.SRCNN_WEIGHTS to them")
    state = load_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' holds a {type(state).__name__}, not an SRCNN state dict")
    state = strip_prefixes(state)
    try:
        net = SRCNN.from_state_dict(state)
        net.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"'{path}' is not SRCNN weights of the layout conv1/conv2/conv3 "
                              f"(SAMPLE.SRCNN_WEIGHTS): {' '.join(str(e).split())}") from None
    return net.to(device).eval()


def build_upscaler(cfg, device='cpu') -> Upscaler | None:
    """The upscaler of the SAMPLE keys, or None for SAMPLE.UPSCALE 1. ConfigError naming the key
    for an unknown method; SRCNN weights missing or of another layout: one line naming the file."""
    sample = cfg.SAMPLE
    if sample.UPSCALE == 1:
        return None
    if sample.UPSCALE_METHOD == 'bicubic':
        return Upscaler(sample.UPSCALE, 'bicubic')
    path = srcnn_weights_path(cfg)
    return Upscaler(sample.UPSCALE, 'srcnn', _load_srcnn(path, device), path)
