"""The attribute judge of the synthetic birds: a small CNN (models/attribute_judge.py) trained on
the real training images only, never on generated ones, that reads body, wing, head and beak
colour, size, background, facing and species; and the scores of generated images it gives.

Generated images are blurred and noisy, so the judge trains on real birds, two batches in three
blurred (shrunk by a random factor up to 2.5 and enlarged back), with pixel noise, and half of
them mirrored (facing swapped). It is
trained once per data set and image size and cached as ``<DATA_DIR>/judge/judge_<key>.pth``,
``key`` hashing the data set's parameters (``synthetic.json``), the image size and
``JUDGE_VERSION``. Its accuracy on the real test images is the ceiling of each attribute; an
attribute whose ceiling is below ``CEILING_MIN`` at that size is reported as not judgeable.

Which attributes a caption names is read by ``miscc.data.synthetic.caption_attributes`` (exact
on every caption of the set, tests/test_synthetic.py); the scores count an attribute only over
the captions that name it.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from datasets import RealImageDataset
from models.attribute_judge import AttributeJudge

from ..core.checkpoint import load_file, save_atomic
from ..core.config import ConfigError
from ..data.synthetic import (BACKGROUNDS, FACINGS, MANIFEST, PALETTE, SIZES, caption_attributes, class_folder,
                              class_pairs, read_attributes)
from .metrics import feature_statistics, frechet_distance, inception_score

__all__ = ['JUDGE_VERSION', 'CEILING_MIN', 'CAPTION_ATTRIBUTES', 'ATTRIBUTE_VALUES', 'Judge', 'judge_path',
           'train_judge', 'load_judge', 'attribute_scores', 'JudgeExtractor', 'judge_extractor', 'FEATURE_DIM']

JUDGE_VERSION = 1
CEILING_MIN = 0.9            # an attribute read less often than this on real test images is not judged
CAPTION_ATTRIBUTES = ('body', 'wing', 'head', 'beak', 'size')
# every attribute the judge reads, with its values in head order; species: the class folders
ATTRIBUTE_VALUES = {'body': list(PALETTE), 'wing': list(PALETTE), 'head': list(PALETTE), 'beak': list(PALETTE),
                    'size': list(SIZES), 'background': list(BACKGROUNDS), 'facing': list(FACINGS),
                    'species': [class_folder(b, w) for b, w in class_pairs()]}
EPOCHS, BATCH, LR = 12, 64, 2e-3
FEATURE_DIM = 256            # the judge's features (Frechet distance, KID)
MAX_SHRINK, MAX_NOISE = 2.5, 0.12     # augmentation: blur by shrinking up to this factor; noise std in [-1, 1] units


def _labels(attrs: dict, key: str) -> dict:
    values = dict(attrs, species=key.split('/')[0])
    return {a: ATTRIBUTE_VALUES[a].index(values[a]) for a in ATTRIBUTE_VALUES}


def _real_split(data_dir: str, split: str, image_size: int):
    """(uint8 N x 3 x S x S, keys, {attribute: LongTensor N}) of a split, cropped as training sees it."""
    dataset = RealImageDataset(data_dir, split, image_size=image_size, dataset_name='synthetic_birds')
    images, keys = zip(*(dataset[i] for i in range(len(dataset))))
    attrs = read_attributes(data_dir)
    labels = [_labels(attrs[k], k) for k in keys]
    return torch.stack(images), list(keys), {a: torch.tensor([l[a] for l in labels]) for a in ATTRIBUTE_VALUES}


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def blur(x: torch.Tensor, factor: float) -> torch.Tensor:
    """B x 3 x S x S shrunk by ``factor`` (antialiased) and enlarged back (bilinear)."""
    size = x.shape[-1]
    small = max(4, int(round(size / factor)))
    down = F.interpolate(x, size=(small, small), mode='bilinear', antialias=True, align_corners=False)
    return F.interpolate(down, size=(size, size), mode='bilinear', align_corners=False)


def _augment(x: torch.Tensor, facing: torch.Tensor, gen: torch.Generator):
    """Two batches in three blurred, all noisy, half of the images mirrored (facing swapped)."""
    if float(torch.rand(1, generator=gen)) < 2 / 3:
        x = blur(x, 1.0 + float(torch.rand(1, generator=gen)) * (MAX_SHRINK - 1.0))
    x = x + torch.randn(x.shape, generator=gen) * float(torch.rand(1, generator=gen)) * MAX_NOISE
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    facing = torch.where(flip, 1 - facing, facing)
    return x.clamp(-1, 1), facing


@dataclass
class Judge:
    """A trained judge: the network (eval mode, CPU), the ceiling per attribute on the real test
    images (``ceiling``) and on them blurred to half size and back (``ceiling_blurred``)."""
    model: AttributeJudge
    ceiling: dict
    ceiling_blurred: dict
    path: str = ''

    def judgeable(self, attribute: str) -> bool:
        return self.ceiling[attribute] >= CEILING_MIN

    @torch.no_grad()
    def read(self, images: torch.Tensor, batch: int = 256):
        """uint8 N x 3 x S x S -> (features N x 256, {attribute: predicted index N}, species logits N x K)."""
        feats, preds, species = [], {a: [] for a in ATTRIBUTE_VALUES}, []
        for i in range(0, len(images), batch):
            f, logits = self.model(_to_float(images[i:i + batch]))
            feats.append(f)
            for a in ATTRIBUTE_VALUES:
                preds[a].append(logits[a].argmax(1))
            species.append(logits['species'])
        return torch.cat(feats), {a: torch.cat(p) for a, p in preds.items()}, torch.cat(species)


def _manifest(data_dir: str) -> str:
    """``data_dir``'s ``synthetic.json`` (the parameters it was made with), or a ConfigError."""
    manifest = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(manifest):
        raise ConfigError(f"the attribute judge reads the synthetic birds, but '{manifest}' does not exist: "
                          f"'{data_dir}' is not a synthetic-birds folder (DATASET_NAME synthetic_birds)")
    return manifest


def judge_path(data_dir: str, image_size: int) -> str:
    """``<data_dir>/judge/judge_<key>.pth`` of this data set (its ``synthetic.json``) and size."""
    with open(_manifest(data_dir), encoding='utf-8') as f:
        params = json.load(f)
    key = hashlib.sha256(json.dumps({'data': params, 'size': image_size, 'version': JUDGE_VERSION},
                                    sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(data_dir, 'judge', f'judge_{image_size}px_{key}.pth')


def _accuracies(model: AttributeJudge, images: torch.Tensor, labels: dict) -> dict:
    judge = Judge(model, {}, {})
    _, preds, _ = judge.read(images)
    return {a: round(float((preds[a] == labels[a]).float().mean()), 4) for a in ATTRIBUTE_VALUES}


def _fit(model: AttributeJudge, train_x: torch.Tensor, train_y: dict, epochs: int, gen: torch.Generator) -> None:
    """Adam with a one-cycle schedule on augmented real birds, the heads' cross-entropies summed."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LR, total_steps=epochs * -(-len(train_x) // BATCH))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            x, facing = _augment(_to_float(train_x[idx]), train_y['facing'][idx], gen)
            _, logits = model(x)
            targets = dict({a: train_y[a][idx] for a in ATTRIBUTE_VALUES}, facing=facing)
            loss = sum(F.cross_entropy(logits[a], targets[a]) for a in ATTRIBUTE_VALUES)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def train_judge(data_dir: str, image_size: int, seed: int = 0, epochs: int = EPOCHS, log=print) -> Judge:
    """Train the judge on ``data_dir``'s real training birds at ``image_size`` px, measure its
    ceilings on the real test birds and save it at ``judge_path`` (atomically). The global
    random generators are left as they were."""
    start = time.time()
    path = judge_path(data_dir, image_size)
    train_x, _, train_y = _real_split(data_dir, 'train', image_size)
    test_x, _, test_y = _real_split(data_dir, 'test', image_size)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AttributeJudge({a: len(v) for a, v in ATTRIBUTE_VALUES.items()}, feature_dim=FEATURE_DIM)
    with torch.enable_grad():        # also when asked from inside an evaluation's no_grad
        _fit(model, train_x, train_y, epochs, gen)
    ceiling = _accuracies(model, test_x, test_y)
    blurred = ((blur(_to_float(test_x), 2.0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    ceiling_blurred = _accuracies(model, blurred, test_y)
    save_atomic({'state_dict': model.state_dict(), 'ceiling': ceiling, 'ceiling_blurred': ceiling_blurred,
                 'version': JUDGE_VERSION, 'image_size': image_size}, path)
    if log:
        log(f'attribute judge trained in {time.time() - start:.0f} s on {len(train_x)} real birds at {image_size} px: '
            f'{path}; real test accuracy {ceiling}')
    return Judge(model, ceiling, ceiling_blurred, path)


def load_judge(data_dir: str, image_size: int, log=print) -> Judge:
    """The cached judge of this data set and size, trained first when there is none."""
    path = judge_path(data_dir, image_size)
    if not os.path.isfile(path):
        return train_judge(data_dir, image_size, log=log)
    saved = load_file(path)
    model = AttributeJudge({a: len(v) for a, v in ATTRIBUTE_VALUES.items()}, feature_dim=FEATURE_DIM)
    model.load_state_dict(saved['state_dict'])
    return Judge(model.eval(), saved['ceiling'], saved['ceiling_blurred'], path)


def _species_score(logits: torch.Tensor) -> dict:
    mean, std = inception_score(logits, splits=min(10, len(logits)))
    return {'mean': round(mean, 4), 'std': round(std, 4)}


def attribute_scores(judge: Judge, images: torch.Tensor, captions: list, keys: list, attrs: dict,
                     real_images: torch.Tensor) -> dict:
    """Scores of generated ``images`` (uint8 N x 3 x S x S) made from ``captions`` of the birds
    ``keys`` (their true attributes in ``attrs``): for each attribute, the accuracy over the
    captions that name it (None when not judgeable), with the judge's ceiling; the rate of
    images with every named, judgeable attribute right; the Frechet distance between the
    judge's features of the generated and of ``real_images``; the Inception-Score analogue of
    the judge's species prediction (of the generated and of the real images)."""
    named = [caption_attributes(c) for c in captions]
    feats, preds, species = judge.read(images)
    right = [{a: ATTRIBUTE_VALUES[a][int(preds[a][i])] == attrs[k][a] for a in n}
             for i, (n, k) in enumerate(zip(named, keys))]
    per = {}
    for a in CAPTION_ATTRIBUTES:
        hits = [r[a] for r in right if a in r]
        per[a] = {'accuracy': round(float(np.mean(hits)), 4) if hits and judge.judgeable(a) else None,
                  'captions': len(hits), 'ceiling': judge.ceiling[a], 'judgeable': judge.judgeable(a),
                  'chance': round(1 / len(ATTRIBUTE_VALUES[a]), 4)}
    judged = [all(v for a, v in r.items() if judge.judgeable(a)) for r in right]
    real_feats, _, real_species = judge.read(real_images)
    return {
        'attributes': per,
        'every_named_right': round(float(np.mean(judged)), 4),
        'frechet_distance': round(frechet_distance(*feature_statistics(feats.double()),
                                                   *feature_statistics(real_feats.double())), 4),
        'species_score': {'generated': _species_score(species), 'real': _species_score(real_species),
                          'classes': len(ATTRIBUTE_VALUES['species'])},
        'judge': {'file': judge.path, 'ceiling_blurred': judge.ceiling_blurred, 'ceiling_min': CEILING_MIN},
    }


class JudgeExtractor(torch.nn.Module):
    """The judge in the place of the FID/IS Inception (``EVAL.EXTRACTOR: 'judge'``): uint8
    B x 3 x S x S -> a tuple with, per requested feature, its 256-d features (any FID feature
    name) or its species logits ('logits_unbiased', for the Inception-Score analogue). The judge
    of each image size is loaded (or trained once) when images of that size first come."""

    def __init__(self, data_dir: str, features: list):
        super().__init__()
        self.data_dir, self.features, self.judges = data_dir, list(features), {}

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple:
        size = int(images.shape[-1])
        if size not in self.judges:
            self.judges[size] = load_judge(self.data_dir, size)
        feats, logits = self.judges[size].model(_to_float(images.cpu()))
        return tuple(logits['species'] if f == 'logits_unbiased' else feats for f in self.features)


def judge_extractor(cfg, features: list, device) -> tuple:
    """``(JudgeExtractor, weights tag)`` for the synthetic birds of ``cfg.DATA_DIR`` (the
    signature of ``scores.inception_extractor``); the tag's hash names the data set and the
    judge's version, so cached reference statistics follow a changed data set or judge."""
    with open(_manifest(cfg.DATA_DIR), 'rb') as f:       # the image size is in the cache key already
        digest = hashlib.sha256(f.read() + f'judge{JUDGE_VERSION}'.encode()).hexdigest()
    tag = {'weights': f"attribute judge ({os.path.join(cfg.DATA_DIR, 'judge')})", 'sha256': digest,
           'note': 'miscc/evaluation/judge.py: features of the attribute judge of the synthetic birds'}
    return JudgeExtractor(cfg.DATA_DIR, features), tag
