"""A small CNN that reads the attributes of a synthetic bird: one classification head per
attribute on a shared trunk (miscc/evaluation/judge.py trains it on real images only)."""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import torch
import torch.nn as nn

__all__ = ['AttributeJudge']


class AttributeJudge(nn.Module):
    """``forward(images B x 3 x S x S in [-1, 1]) -> (features B x feature_dim, {attribute: logits
    B x classes})``. Trunk: ``blocks`` x (3x3 conv, BN, ReLU, 2x2 max pool) doubling the width from
    ``width``, then an adaptive 4 x 4 average pool (any S >= 16; it keeps where on the bird a colour
    is) and a fully connected layer to ``feature_dim`` (the features of the Frechet distance)."""

    def __init__(self, heads: Mapping[str, int], width: int = 32, blocks: int = 3, feature_dim: int = 256):
        super().__init__()
        layers, channels = [], 3
        for i in range(blocks):
            out = width * 2 ** i
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = out
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                   nn.Linear(channels * 16, feature_dim), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, n) for name, n in heads.items()})

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        features = self.trunk(images)
        return features, {name: head(features) for name, head in self.heads.items()}
