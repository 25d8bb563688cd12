"""Evaluation metrics shared by training, DAMSM pretraining and the evaluation scripts."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['r_precision']


def r_precision(image_codes: torch.Tensor, text_codes: torch.Tensor, groups=None,
                candidates: int = 100, runs: int = 10, seed: int = 0, chunk: int = 256):
    """R-precision (AttnGAN protocol, R = 1): for each image, its true caption is ranked
    among ``candidates - 1`` random mismatched captions by cosine similarity of the DAMSM
    global features; a hit is the true caption scoring strictly highest.

    image_codes, text_codes: N x D (row n of each describes the same pair).
    groups: optional N ints; captions of the same group (e.g. the same real image) are never
    drawn as mismatches. Returns ``(mean, std)`` of the hit rate over ``runs`` draws.
    """
    if image_codes.shape != text_codes.shape or image_codes.dim() != 2:
        raise ValueError(f'image_codes {tuple(image_codes.shape)} and text_codes '
                         f'{tuple(text_codes.shape)} must both be N x D')
    n = image_codes.size(0)
    img = F.normalize(image_codes.detach().double(), dim=1)
    txt = F.normalize(text_codes.detach().double(), dim=1)
    group = torch.arange(n) if groups is None else torch.as_tensor(np.asarray(groups)).view(-1).cpu()
    if group.numel() != n:
        raise ValueError(f'groups has {group.numel()} entries for {n} pairs')
    smallest_pool = n - torch.unique(group, return_counts=True)[1].max().item()
    if smallest_pool < candidates - 1:
        raise ValueError(f'R-precision needs at least {candidates - 1} mismatched captions per image, '
                         f'but only {smallest_pool} are available (N = {n})')
    gen = torch.Generator().manual_seed(seed)
    true_score = (img * txt).sum(1)
    rates = []
    for _ in range(runs):
        hits = 0
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            # distinct random mismatches: the top-k of random keys, with same-group keys excluded
            keys = torch.rand(stop - start, n, generator=gen, dtype=torch.float64)
            keys[group[start:stop, None] == group[None, :]] = -1.0
            wrong = keys.topk(candidates - 1, dim=1).indices                # chunk x (C-1)
            wrong_score = torch.einsum('cd,ckd->ck', img[start:stop], txt[wrong])
            hits += (true_score[start:stop, None] > wrong_score).all(dim=1).sum().item()
        rates.append(hits / n)
    return float(np.mean(rates)), float(np.std(rates))
