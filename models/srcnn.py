"""SRCNN (Dong et al. 2014, "Image Super-Resolution Using Deep Convolutional Networks"): three
convolutions on the luminance of a bicubically enlarged image.

The published network is 9-1-5 (f1 = 9, f2 = 1, f3 = 5; n1 = 64, n2 = 32 filters). Module names
are those of the popular PyTorch implementation (yjn870/SRCNN-pytorch: ``conv1``, ``conv2``,
``conv3``), whose released ``srcnn_x2/x3/x4.pth`` use f2 = 5 (9-5-5); ``SRCNN.from_state_dict``
reads the kernel sizes and widths from a file's shapes, so either layout loads strictly. Every
convolution pads by half its kernel, as that implementation does, so the output has the input's
size (the paper's valid convolutions shrink it).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

__all__ = ['SRCNN']


class SRCNN(nn.Module):
    """``forward(y B x 1 x H x W in [0, 1]) -> B x 1 x H x W``: conv(f1) -> ReLU -> conv(f2) ->
    ReLU -> conv(f3), widths n1, n2, 1."""

    def __init__(self, kernel_sizes: Sequence[int] = (9, 1, 5), widths: Sequence[int] = (64, 32)):
        super().__init__()
        self.kernel_sizes = tuple(kernel_sizes)
        channels = (1, *widths, 1)
        for i, k in enumerate(self.kernel_sizes):
            setattr(self, f'conv{i + 1}', nn.Conv2d(channels[i], channels[i + 1], k, padding=k // 2))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.relu(self.conv2(self.relu(self.conv1(y)))))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> 'SRCNN':
        """The SRCNN whose layer sizes the state dict holds (weights not loaded). ValueError when
        it is not a one-channel SRCNN of three square convolutions with odd kernels."""
        shapes = [tuple(state[f'conv{i}.weight'].shape) if f'conv{i}.weight' in state else None for i in (1, 2, 3)]
        if any(s is None or len(s) != 4 or s[2] != s[3] or s[2] % 2 == 0 for s in shapes):
            raise ValueError(f'expected conv1/conv2/conv3 weights of odd square kernels, got {shapes}')
        if shapes[0][1] != 1 or shapes[2][0] != 1:
            raise ValueError(f'expected an SRCNN of the luminance channel (1 channel in and out), got '
                             f'{shapes[0][1]} in and {shapes[2][0]} out')
        return cls(kernel_sizes=[s[2] for s in shapes], widths=(shapes[0][0], shapes[1][0]))
