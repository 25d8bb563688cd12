"""Evaluation metrics shared by training, DAMSM pretraining and the evaluation scripts."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch_fidelity.metric_fid import fid_features_to_statistics
from torch_fidelity.metric_isc import isc_features_to_metric

__all__ = ['r_precision', 'r_precision_dmgan', 'feature_statistics', 'frechet_distance', 'inception_score',
           'stackgan_inception_score']


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


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple:
    """IS of class logits N x C: ``exp(E_x KL(p(y|x) || p(y)))`` on each of ``splits``
    consecutive chunks (no shuffling, as the original protocol); returns ``(mean, std)``.
    Computed by torch-fidelity's formula."""
    if logits.dim() != 2 or logits.size(0) < splits:
        raise ValueError(f'inception_score needs N x C logits with N >= splits={splits}, got {tuple(logits.shape)}')
    out = isc_features_to_metric(logits.detach().cpu(), splits=splits, shuffle=False)
    values = list(out.values())
    return float(values[0]), float(values[1])


def stackgan_inception_score(logits: torch.Tensor, splits: int = 10, batch_size: int = 64, seed=None) -> tuple:
    """IS as StackGAN's inception_score.py computes it from the CUB classifier's logits N x 51:
    column 0 (background) dropped, softmax over the 50 classes, ``splits`` consecutive chunks
    ``[i N // splits, (i + 1) N // splits)``, each scoring ``exp(mean_x sum_y p log(p / mean p))``;
    returns ``(mean, std)`` (population std) over the chunks.

    As there, only ``floor(N / batch_size)`` full batches count (the last incomplete one is
    skipped), taken after a random shuffle of the image order: ``seed`` an int shuffles with
    ``np.random.RandomState(seed)`` (the original shuffles unseeded), None keeps the order.
    """
    if logits.dim() != 2 or logits.size(1) < 2:
        raise ValueError(f'stackgan_inception_score needs N x C logits with a background column, '
                         f'got {tuple(logits.shape)}')
    n = logits.size(0)
    order = np.arange(n) if seed is None else np.random.RandomState(seed).permutation(n)
    used = (n // batch_size) * batch_size
    if used < splits:
        raise ValueError(f'stackgan_inception_score: {n} images give {used} in full batches of {batch_size}, '
                         f'fewer than splits={splits}')
    known = logits.detach().double().cpu()[torch.from_numpy(order[:used]), 1:]
    log_p = known.log_softmax(dim=1)
    p = log_p.exp()
    scores = []
    for i in range(splits):
        rows = slice(i * used // splits, (i + 1) * used // splits)
        part = p[rows]
        kl = (part * (log_p[rows] - part.mean(0, keepdim=True).log())).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def r_precision_dmgan(image_codes: torch.Tensor, text_codes: torch.Tensor, classes, pool_codes: torch.Tensor,
                      pool_classes, candidates: int = 100, splits: int = 10, seed: int = 0,
                      drop_last_of_split: bool = True, shuffle: bool = True, chunk: int = 256) -> tuple:
    """R-precision (R = 1) as DM-GAN's trainer.py computes it (the protocol SSA-GAN's authors
    name): for generated image n, its own caption competes with ``candidates - 1`` captions
    drawn at random, with replacement, from ``pool`` (all captions of the test split) among
    those whose image has a class other than ``classes[n]``; a hit is the own caption having
    the highest cosine similarity (a tie counts as a hit, as ``argmax == 0`` there).
    The N hits are shuffled (unless not ``shuffle``) and cut into ``splits`` chunks of ``N // splits``; each chunk
    averages its first ``N // splits - 1`` entries when ``drop_last_of_split`` (DM-GAN's slice
    ``R[i * 3000:(i + 1) * 3000 - 1]``) or all of them; returns ``(mean, std)`` over chunks.

    image_codes, text_codes: N x D (DAMSM global codes of each image and its caption);
    classes: N ints; pool_codes: M x D sentence codes; pool_classes: M ints.
    """
    if image_codes.shape != text_codes.shape or image_codes.dim() != 2:
        raise ValueError(f'image_codes {tuple(image_codes.shape)} and text_codes '
                         f'{tuple(text_codes.shape)} must both be N x D')
    if pool_codes.dim() != 2 or pool_codes.size(1) != image_codes.size(1):
        raise ValueError(f'pool_codes {tuple(pool_codes.shape)} must be M x {image_codes.size(1)}')
    n = image_codes.size(0)
    classes = torch.as_tensor(np.asarray(classes)).view(-1).cpu()
    pool_classes = torch.as_tensor(np.asarray(pool_classes)).view(-1).cpu()
    if classes.numel() != n or pool_classes.numel() != pool_codes.size(0):
        raise ValueError(f'classes has {classes.numel()} entries for {n} images and pool_classes '
                         f'{pool_classes.numel()} for {pool_codes.size(0)} pool captions')
    if n // splits < (2 if drop_last_of_split else 1):
        raise ValueError(f'r_precision_dmgan: {n} images are too few for {splits} splits')
    img = F.normalize(image_codes.detach().double().cpu(), dim=1)
    txt = F.normalize(text_codes.detach().double().cpu(), dim=1)
    pool = F.normalize(pool_codes.detach().double().cpu(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    hits = torch.zeros(n, dtype=torch.float64)
    true_score = (img * txt).sum(1)
    for c in torch.unique(classes).tolist():
        rows = (classes == c).nonzero().view(-1)
        others = (pool_classes != c).nonzero().view(-1)
        if others.numel() == 0:
            raise ValueError(f'r_precision_dmgan: no pool caption of a class other than {c}')
        for start in range(0, rows.numel(), chunk):
            part = rows[start:start + chunk]
            drawn = others[torch.randint(others.numel(), (part.numel(), candidates - 1), generator=gen)]
            wrong_score = (img[part, None, :] * pool[drawn]).sum(-1)          # part x (C - 1)
            hits[part] = (true_score[part] >= wrong_score.max(1).values).double()
    if shuffle:
        hits = hits[torch.randperm(n, generator=gen)]
    size = n // splits
    stop = size - 1 if drop_last_of_split else size
    rates = [hits[i * size:i * size + stop].mean().item() for i in range(splits)]
    return float(np.mean(rates)), float(np.std(rates))


def feature_statistics(features: torch.Tensor) -> tuple:
    """``(mu D, sigma D x D)`` of features N x D: the Gaussian the Frechet distance compares
    (torch-fidelity's computation)."""
    stats = fid_features_to_statistics(features)
    return stats['mu'], stats['sigma']


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance of two Gaussians (D, D x D each):
    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2))``.

    When the product is singular, ``eps`` is added to both diagonals; an imaginary part of
    the square root beyond numerical noise is an error.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f'statistics of different shapes: mu {mu1.shape} vs {mu2.shape}, '
                         f'sigma {sigma1.shape} vs {sigma2.shape}')
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f'imaginary component {np.max(np.abs(covmean.imag)):.3g} in the matrix square root')
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
