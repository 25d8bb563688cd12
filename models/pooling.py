"""2 x 2 average pooling (D's down-sampling) with the built-in results, faster on the CPU.

ATen's CPU kernel for ``F.avg_pool2d`` on NCHW tensors sums each window in scalar code; here the
four window positions are added as strided tensors, ``((x00 + x01) + x10) + x11``, the kernel's
own order, then divided by 4, so every value is bit-identical (``tests/test_pooling.py``), in a
quarter to a half of the time. The gradient spreads ``g / 4`` over each window, as the built-in
backward does, and its own derivative is the pooling again, so the double backward of MA-GP is
the built-in one too. bfloat16 and float16 (the fast mode's autocast) are summed in float32 and
rounded once, like the built-in kernel. Other devices and odd sizes take ``F.avg_pool2d``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ['avg_pool2x']


_REDUCED = (torch.bfloat16, torch.float16)


def _window_mean(x: torch.Tensor) -> torch.Tensor:
    # reduced precision accumulates in float32 and rounds once, as ATen's kernel does
    first = x[:, :, 0::2, 0::2].float() if x.dtype in _REDUCED else x[:, :, 0::2, 0::2]
    y = first + x[:, :, 0::2, 1::2]
    y += x[:, :, 1::2, 0::2]
    y += x[:, :, 1::2, 1::2]
    return y.div_(4).to(x.dtype)


def _spread(g: torch.Tensor) -> torch.Tensor:
    b, c, h, w = g.shape
    return (g / 4)[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


class _AvgPool2x(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _window_mean(x)

    @staticmethod
    def backward(ctx, g):
        return _AvgPool2xGrad.apply(g)


class _AvgPool2xGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g):
        return _spread(g)

    @staticmethod
    def backward(ctx, gg):
        return _AvgPool2x.apply(gg)


def avg_pool2x(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)``: B x C x H x W -> B x C x H/2 x W/2, the same values and gradients."""
    if x.device.type != 'cpu' or x.dtype not in (torch.float32, torch.float64) + _REDUCED or x.dim() != 4 \
            or x.shape[2] % 2 or x.shape[3] % 2:
        return F.avg_pool2d(x, 2)
    return _AvgPool2x.apply(x)
