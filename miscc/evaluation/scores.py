"""IS, FID, KID and R-precision of generated images: from a folder written by
``B_VALIDATION=True`` or straight from a generator checkpoint (generated in memory).

The feature extractor is torch-fidelity's port of the TensorFlow Inception (2015-12-05)
used by the IS/FID literature, loaded from a local file (never downloaded). Reference
statistics of the real test images are cached in an ``.npz`` keyed by data set, split,
image size, feature and weights, and recomputed when any of them changes.
"""
from __future__ import annotations

import json
import os
import re
import sys
import warnings
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
import torch_fidelity.feature_extractor_inceptionv3 as fe
from torch_fidelity.metric_kid import kid_features_to_metric
from torchvision.models import inception_v3
from tqdm import tqdm

from datasets import DataError, build_real_image_dataset, encode_caption

from ..core.checkpoint import load_file, load_model_state
from ..core.config import ConfigError
from ..core.files import atomic_write, check_output_dir, file_sha256, write_json
from ..core.runtime import device_from_config
from ..families.encoders import damsm_paths, load_image_encoder, load_text_encoder, text_encoder_vocab_size
from .cub_inception import PROTOCOL_BATCH, cub_logits, load_cub_inception
from .judge import judge_extractor
from .generation import generate_test_images, load_generation_stack, test_captions
from .metrics import (feature_statistics, frechet_distance, inception_score, r_precision, r_precision_dmgan,
                      stackgan_inception_score)
from .outputs import read_manifest

__all__ = ['FID_WEIGHTS_NAME', 'FID_WEIGHTS_URL', 'ImageSource', 'fid_weights_path', 'inception_extractor',
           'extract', 'folder_source', 'generator_source', 'reference_statistics', 'damsm_codes',
           'caption_r_precision', 'evaluate', 'TooFewCaptions', 'STACKGAN_CLASSIFIER', 'sentence_codes',
           'fid_and_kid', 'r_precision_of_codes', 'fid_dims']

FID_WEIGHTS_NAME = 'weights-inception-2015-12-05-6726825d.pth'
FID_WEIGHTS_URL = ('https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/' + FID_WEIGHTS_NAME)
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
RANDOM_NOTE = 'random Inception weights: scores are NOT comparable with published numbers'
# where tools/convert_stackgan_inception.py's output is looked for when EVAL.CLASSIFIER is empty
STACKGAN_CLASSIFIER = os.path.join('models', 'stackgan_cub_inception.pth')


def fid_dims(cfg) -> str:
    """EVAL.FID_DIMS as torch-fidelity's feature name ('64', '192', '768', '2048': the values
    ``CHOICES`` of miscc/core/config.py lets through)."""
    return str(cfg.EVAL.FID_DIMS)


# ----------------------------------------------------------------------------- weights
def fid_weights_path(cfg) -> str:
    """The local file of the FID/IS Inception weights (``EVAL.INCEPTION_WEIGHTS`` or the torch
    hub cache); raises FileNotFoundError naming the file and where to put it."""
    if cfg.EVAL.INCEPTION_WEIGHTS:
        path = cfg.EVAL.INCEPTION_WEIGHTS
        if not os.path.isfile(path):
            raise FileNotFoundError(f"EVAL.INCEPTION_WEIGHTS='{path}' not found: download {FID_WEIGHTS_URL} "
                                    f"there, or leave EVAL.INCEPTION_WEIGHTS empty to use the torch hub cache")
        return path
    path = os.path.join(torch.hub.get_dir(), 'checkpoints', FID_WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID/IS Inception weights not found: put {FID_WEIGHTS_NAME} (from "
                                f"{FID_WEIGHTS_URL}) at '{path}', or set EVAL.INCEPTION_WEIGHTS=/path/to/it")
    return path


def inception_extractor(cfg, features: list, device):
    """torch-fidelity's FeatureExtractorInceptionV3 for ``features`` (e.g. ['2048',
    'logits_unbiased']); input uint8 B x 3 x H x W, output a tuple of B x D tensors.

    Returns ``(extractor, weights_tag)``. The weights are read here with ``weights_only=True``
    and handed over, so the library neither downloads nor unpickles anything itself.
    """
    with ExitStack() as stack:
        if cfg.EVAL.RANDOM_WEIGHTS:
            # Random extractor of the same architecture (tests): keep PyTorch's initialisation.
            torch.manual_seed(cfg.EVAL.SEED)
            stack.enter_context(mock.patch.object(fe, 'load_state_dict_from_url', lambda *a, **k: {}))
            stack.enter_context(mock.patch.object(fe.FeatureExtractorInceptionV3, 'load_state_dict',
                                                  lambda self, *a, **k: None))
            tag = {'weights': 'random', 'sha256': f'random-seed{cfg.EVAL.SEED}', 'note': RANDOM_NOTE}
        else:
            path = fid_weights_path(cfg)
            state = load_file(path)
            stack.enter_context(mock.patch.object(fe, 'load_state_dict_from_url', lambda *a, **k: state))
            tag = {'weights': os.path.abspath(path), 'sha256': file_sha256(path)}
        extractor = fe.FeatureExtractorInceptionV3('inception-v3-compat', list(features))
    return extractor.to(device).eval(), tag


# ----------------------------------------------------------------------------- image sources
@dataclass
class ImageSource:
    """Where images come from: ``batches()`` yields (uint8 B x 3 x H x W, captions, keys)."""
    description: str
    count: int
    batches: object
    out_dir: str
    has_captions: bool = False
    info: dict = field(default_factory=dict)


def _read_image(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert('RGB'))
    except Exception as e:   # PIL raises several types for broken files
        raise DataError(f"cannot read image '{path}': {e}; remove or regenerate it") from None


def _size(shape: tuple) -> str:
    """'W x H px' of an H x W x 3 array shape."""
    return f'{shape[1]} x {shape[0]} px'


def folder_source(folder: str, num: int, batch_size: int) -> ImageSource:
    """Images of ``folder`` (PNG/JPG; the ``fm_*`` masks are skipped): the files of its
    ``manifest.jsonl`` in order when there is one (captions known), else sorted names."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder '{folder}' not found")
    entries = read_manifest(folder)
    if entries:
        files = [e['file'] for e in entries]
    else:
        def natural(name):
            return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]
        files = sorted((n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES)
                        and not n.startswith('fm_')), key=natural)
    if not files:
        raise DataError(f"'{folder}' holds no PNG/JPG images")
    if num and num < len(files):
        files, entries = files[:num], entries[:num]
    elif num and num > len(files):
        print(f"note: '{folder}' holds {len(files)} images, fewer than the {num} asked for; using them all",
              file=sys.stderr)

    def batches():
        first = None   # (name, shape) of the first image: every other must match it
        for s in range(0, len(files), batch_size):
            arrays = []
            for f in files[s:s + batch_size]:
                arrays.append(_read_image(os.path.join(folder, f)))
                first = first or (f, arrays[-1].shape)
                if arrays[-1].shape != first[1]:
                    raise DataError(f"images of different sizes in '{folder}': '{f}' is {_size(arrays[-1].shape)} "
                                    f"but '{first[0]}' is {_size(first[1])}; evaluate one generator's "
                                    f"images of one size per folder")
            images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            part = entries[s:s + batch_size]
            yield images, [e['caption'] for e in part] or None, [e['key'] for e in part] or None
    return ImageSource(f"folder '{folder}'", len(files), batches, folder, has_captions=bool(entries))


def generator_source(cfg, netg_path: str, num: int, device) -> ImageSource:
    """Images generated in memory by the generator at ``netg_path`` from the test captions
    (the same plan and noise as ``B_VALIDATION=True``)."""
    stack = load_generation_stack(cfg, netg_path, device)   # a fine-tuned generator's own encoder

    def batches():
        for b in generate_test_images(stack, num, cfg.EVAL.BATCH_SIZE, seed=cfg.SAMPLE.SEED):
            yield b.images, b.captions, b.keys
    out_dir = os.path.splitext(stack.netg_path)[0]     # the file used: netG_ema_XXX with TRAIN.G_EMA
    return ImageSource(f"generator '{stack.netg_path}'", num, batches, out_dir, has_captions=True,
                       info={'text_encoder': stack.text_encoder_path})


# ----------------------------------------------------------------------------- features
@torch.no_grad()
def extract(extractor, batches, total: int, device, desc: str, on_batch=None) -> list:
    """Run ``extractor`` over uint8 batches; returns one N x D float64 CPU tensor per feature.
    ``on_batch(images, captions, keys)`` sees every batch (e.g. for R-precision)."""
    outputs = None
    # closed on an error too, so that the error's line starts a line of its own
    with tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True) as bar:
        for item in batches:
            images = item[0] if isinstance(item, (tuple, list)) else item
            feats = extractor(images.to(device))
            feats = feats if isinstance(feats, tuple) else (feats,)
            if outputs is None:
                outputs = [[] for _ in feats]
            for store, f in zip(outputs, feats):
                store.append(f.detach().double().cpu())
            if on_batch is not None:
                on_batch(*item)
            bar.update(images.size(0))
    if outputs is None:
        raise ValueError(f'{desc}: no images')
    return [torch.cat(o) for o in outputs]


def _read_reference_cache(path: str, meta: dict) -> dict | None:
    """The statistics stored at ``path`` when its recorded settings are ``meta``, else None.
    Only plain arrays are read (never pickled objects); a file that cannot be read that way
    (corrupt, truncated, foreign) is a stale cache: a warning names it and it is recomputed."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z['meta'])) != meta:
                return None
            return {'mu': z['mu'], 'sigma': z['sigma'], 'features': torch.from_numpy(z['features']),
                    'count': int(z['count']), 'cached': True, 'path': path}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"FID reference cache '{path}' could not be read ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); computing the statistics again")
        return None


def reference_statistics(cfg, extractor, tag: dict, device, image_size: int, split: str = 'test') -> dict:
    """mu, sigma (and features, for KID) of the real ``split`` images prepared as in training
    (CUB bounding-box crop), resized to ``image_size``: read from the cache when its key
    matches, else computed and cached. Returns a dict with 'mu', 'sigma', 'features',
    'count', 'cached' (whether it came from the cache) and 'path'."""
    dims = fid_dims(cfg)
    cache_dir = cfg.EVAL.CACHE_DIR or os.path.join(cfg.DATA_DIR, 'fid_cache')
    key = f'{cfg.DATASET_NAME}_{split}_{image_size}px_pool{dims}_{tag["sha256"][:16]}'
    path = os.path.join(cache_dir, key + '.npz')
    meta = {'dataset': cfg.DATASET_NAME, 'split': split, 'image_size': image_size, 'dims': dims,
            'weights_sha256': tag['sha256']}
    if os.path.isfile(path):
        cached = _read_reference_cache(path, meta)
        if cached is not None:
            return cached
    dataset = build_real_image_dataset(cfg, split, image_size)
    if len(dataset) < 2:
        raise DataError(f"the {split} split of {cfg.DATASET_NAME} holds {len(dataset)} image(s); FID reference "
                        f"statistics need at least 2 (a covariance needs two)")
    batch = cfg.EVAL.BATCH_SIZE

    def batches():
        for s in range(0, len(dataset), batch):
            yield torch.stack([dataset[i][0] for i in range(s, min(s + batch, len(dataset)))])
    (features,) = extract(extractor, batches(), len(dataset), device, f'real {split} images')
    mu, sigma = feature_statistics(features)
    with atomic_write(path, 'wb') as f:
        np.savez(f, mu=mu, sigma=sigma, features=features.float().numpy(), count=len(dataset),
                 meta=json.dumps(meta))
    return {'mu': mu, 'sigma': sigma, 'features': features, 'count': len(dataset), 'cached': False, 'path': path}


def fid_and_kid(cfg, features: torch.Tensor, ref: dict) -> dict:
    """``{'fid': float, 'kid': {'value', 'std', 'subset_size'}}`` of generated features N x D
    against ``reference_statistics``' ``ref`` (KID only with EVAL.KID: 100 subsets of up to
    1,000, seeded with EVAL.SEED)."""
    mu, sigma = feature_statistics(features)
    out = {'fid': frechet_distance(mu, sigma, ref['mu'], ref['sigma'])}
    if cfg.EVAL.KID:
        subset = min(1000, len(features), len(ref['features']))
        kid = kid_features_to_metric(features.float(), ref['features'].float(), kid_subsets=100,
                                     kid_subset_size=subset, verbose=False, rng_seed=cfg.EVAL.SEED)
        kmean, kstd = list(kid.values())[:2]
        out['kid'] = {'value': float(kmean), 'std': float(kstd), 'subset_size': subset}
    return out


# ----------------------------------------------------------------------------- R-precision
@torch.no_grad()
def sentence_codes(text_encoder, captions: torch.Tensor, lens: torch.Tensor, batch: int = 100,
                   device='cpu') -> torch.Tensor:
    """Sentence codes N x D (CPU) of encoded captions N x T with lengths N (any order)."""
    out = []
    for s in range(0, len(captions), batch):
        cap, ln = captions[s:s + batch], lens[s:s + batch]
        order = torch.argsort(ln, descending=True, stable=True)   # packed sequences want sorted lengths
        _, sent = text_encoder(cap[order].to(device), ln[order], text_encoder.init_hidden(len(cap)))
        out.append(sent.cpu()[torch.argsort(order)])
    return torch.cat(out)


@torch.no_grad()
def damsm_codes(image_encoder, text_encoder, images: torch.Tensor, captions: torch.Tensor, lens: torch.Tensor,
                batch: int = 100, device='cpu') -> tuple:
    """Global DAMSM codes (N x D, N x D) of uint8 images N x 3 x S x S and their encoded
    captions (N x T, lengths N; any order of lengths)."""
    img_codes = []
    for s in range(0, len(images), batch):
        x = images[s:s + batch].to(device).float() / 127.5 - 1.0
        img_codes.append(image_encoder(x)[1].cpu())
    return torch.cat(img_codes), sentence_codes(text_encoder, captions, lens, batch, device)


class TooFewCaptions(ValueError):
    """R-precision cannot be computed: fewer distinct captions than candidates."""


def caption_r_precision(cfg, text_encoder_path: str, images: torch.Tensor, captions: list, keys: list,
                        device='cpu') -> dict:
    """R-precision of uint8 images with their caption texts and test-split ``keys``, using the
    DAMSM encoders at ``text_encoder_path`` (and its image_encoder file) and the config's test
    split, by ``EVAL.R_PRECISION_PROTOCOL``: 'pairs' (AttnGAN-style, ``metrics.r_precision``:
    mismatches among the given captions, never of the same key) or 'dmgan' (DM-GAN's
    trainer.py, ``metrics.r_precision_dmgan``: mismatches from all test captions of images of
    other classes, 10 splits)."""
    n_words = text_encoder_vocab_size(text_encoder_path)
    vocab = test_captions(cfg, n_words, text_encoder_path)
    text_encoder = load_text_encoder(cfg, text_encoder_path, n_words, device).eval()
    image_encoder = load_image_encoder(cfg, damsm_paths(text_encoder_path)[1], device).eval()
    encoded = [encode_caption(c, vocab.wordtoix, cfg.TEXT.WORDS_NUM) for c in captions]
    caps = torch.stack([c for c, _, _ in encoded])
    lens = torch.tensor([max(int(n), 1) for _, n, _ in encoded])
    img, txt = damsm_codes(image_encoder, text_encoder, images, caps, lens, device=device)
    return dict(r_precision_of_codes(cfg, vocab, text_encoder, img, txt, keys, device),
                text_encoder=os.path.abspath(text_encoder_path))


def r_precision_of_codes(cfg, vocab, text_encoder, img: torch.Tensor, txt: torch.Tensor, keys: list,
                         device='cpu') -> dict:
    """R-precision by ``EVAL.R_PRECISION_PROTOCOL`` of DAMSM codes (N x D each) of images and
    their captions, ``keys`` their test-split keys; ``vocab`` the test split and
    ``text_encoder`` (eval mode) the encoder of the pool captions ('dmgan').
    Returns ``{'mean', 'std', 'count', 'protocol', ...}``; TooFewCaptions when N is too small."""
    protocol = cfg.EVAL.R_PRECISION_PROTOCOL
    group_of = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    extra = {}
    index = {k: i for i, k in enumerate(vocab.filenames)}
    missing = [k for k in dict.fromkeys(keys) if k not in index] if protocol == 'dmgan' else []
    if missing:
        raise DataError(f"R-precision 'dmgan' needs the test-split key of every image; "
                        f"{len(missing)} are not in the test split, e.g. '{missing[0]}'")
    try:
        if protocol == 'dmgan':
            per = vocab.embeddings_num
            pool = torch.stack([vocab.caption_tensor(i)[0] for i in range(len(vocab.captions))])
            pool_lens = torch.tensor([max(vocab.caption_tensor(i)[1], 1) for i in range(len(vocab.captions))])
            pool_codes = sentence_codes(text_encoder, pool, pool_lens, device=device)
            mean, std = r_precision_dmgan(img, txt, [vocab.class_id[index[k]] for k in keys], pool_codes,
                                          [vocab.class_id[i // per] for i in range(len(vocab.captions))],
                                          splits=cfg.EVAL.SPLITS, seed=cfg.EVAL.SEED)
            extra = {'pool_captions': len(vocab.captions), 'splits': cfg.EVAL.SPLITS}
        else:
            mean, std = r_precision(img, txt, groups=[group_of[k] for k in keys], seed=cfg.EVAL.SEED)
    except ValueError as e:   # too few distinct captions for 99 mismatches, or images for the splits
        raise TooFewCaptions(str(e)) from None
    return {'mean': mean, 'std': std, 'count': len(img), 'protocol': protocol, **extra}


# ----------------------------------------------------------------------------- driver
def _domain_classifier(cfg, device):
    """Optional IS classifier, by EVAL.CLASSIFIER_PROTOCOL: 'torchvision' (EVAL.CLASSIFIER, a
    torchvision Inception-v3 with EVAL.CLASSIFIER_CLASSES outputs; resized to 299, ImageNet
    normalisation) or 'stackgan' (StackGAN's CUB Inception converted by
    tools/convert_stackgan_inception.py, at EVAL.CLASSIFIER or STACKGAN_CLASSIFIER; its own
    preprocessing). Returns ``(classify, path)``: classify uint8 B x 3 x H x W -> logits."""
    if cfg.EVAL.CLASSIFIER_PROTOCOL == 'stackgan':
        path = cfg.EVAL.CLASSIFIER or STACKGAN_CLASSIFIER
        try:
            cub = load_cub_inception(path, device)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"EVAL.CLASSIFIER_PROTOCOL=stackgan: {e}; put the converted file at "
                                    f"'{os.path.abspath(path)}' or set EVAL.CLASSIFIER=/path/to/it") from None
        return (lambda images: cub_logits(cub, images, device)), path
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=cfg.EVAL.CLASSIFIER_CLASSES)
    if not os.path.isfile(cfg.EVAL.CLASSIFIER):
        raise FileNotFoundError(f"EVAL.CLASSIFIER='{cfg.EVAL.CLASSIFIER}' not found")
    load_model_state(net, cfg.EVAL.CLASSIFIER)
    net = net.to(device).eval()
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def classify(images):
        x = F.interpolate(images.float() / 255.0, size=(299, 299), mode='bilinear', align_corners=False)
        return net((x - mean) / std)
    return classify, cfg.EVAL.CLASSIFIER


def _want_r_precision(cfg, source: ImageSource, text_path: str) -> bool:
    mode = cfg.EVAL.R_PRECISION
    if mode == 'off':
        return False
    if cfg.DATA.HD5_FILE:   # hd5 captions belong to no DAMSM vocabulary
        if mode == 'on':
            raise ConfigError(f"EVAL.R_PRECISION='on' needs DAMSM-encoded captions; DATA.HD5_FILE="
                              f"'{cfg.DATA.HD5_FILE}' has precomputed embeddings: set EVAL.R_PRECISION=off")
        return False
    # 'pairs' draws 99 mismatches among the images' own captions; 'dmgan' draws from the test split
    least = 100 if cfg.EVAL.R_PRECISION_PROTOCOL == 'pairs' else 2 * cfg.EVAL.SPLITS
    ok = source.has_captions and os.path.isfile(text_path) and source.count >= least
    if mode == 'on' and not ok:
        raise ConfigError(f"EVAL.R_PRECISION='on' needs captions (a manifest.jsonl or --netG), the DAMSM "
                          f"encoder '{text_path}' and at least {least} images")
    return ok


def _check_count(cfg, metric: str, source: ImageSource) -> None:
    """DataError naming the source and the least number of images ``metric`` needs: IS one per
    split (with the 'stackgan' classifier: full batches of 64 for the splits), FID two (a
    covariance of one image is undefined: the matrix square root fails or never ends)."""
    if metric == 'IS':
        least, why = cfg.EVAL.SPLITS, f'one per split, EVAL.SPLITS={cfg.EVAL.SPLITS}'
        if cfg.EVAL.CLASSIFIER_PROTOCOL == 'stackgan':
            least = -(-cfg.EVAL.SPLITS // PROTOCOL_BATCH) * PROTOCOL_BATCH
            why += f', in full batches of {PROTOCOL_BATCH} (EVAL.CLASSIFIER_PROTOCOL=stackgan)'
        fix = 'or lower EVAL.SPLITS'
    else:
        least, why, fix = 2, 'a covariance needs two', ''
    if source.count < least:
        more = 'raise --num' if source.description.startswith('generator') else 'add images to it (or raise --num)'
        raise DataError(f"{source.description} gives {source.count} image(s); {metric} needs at least {least} "
                        f"({why}): {more} {fix}".rstrip())


def evaluate(cfg, metric: str, images: str = '', netg: str = '', num: int = 0, out: str = '',
             command: str = '') -> dict:
    """Compute ``metric`` ('IS' or 'FID') of a folder (``images``) or a generator (``netg``);
    write the result JSON (``out`` or next to the images) and return it."""
    if bool(images) == bool(netg):
        raise ConfigError('give exactly one of --images DIR or --netG FILE')
    device = device_from_config(cfg).device
    num = num or (cfg.EVAL.NUM_IS if metric == 'IS' else cfg.EVAL.NUM_FID)
    source = folder_source(images, num, cfg.EVAL.BATCH_SIZE) if images else generator_source(cfg, netg, num, device)
    path = out or os.path.join(source.out_dir, f'{metric.lower()}.json')
    check_output_dir(os.path.dirname(os.path.abspath(path)), '--out')
    text_path = source.info.get('text_encoder') or damsm_paths(cfg.TEXT.DAMSM_NAME)[0]
    want_rp = _want_r_precision(cfg, source, text_path)

    dims = fid_dims(cfg)
    # the classifier first: a missing file is reported before any image is generated
    want_classifier = metric == 'IS' and (cfg.EVAL.CLASSIFIER or cfg.EVAL.CLASSIFIER_PROTOCOL == 'stackgan')
    classifier, classifier_path = _domain_classifier(cfg, device) if want_classifier else (None, '')
    _check_count(cfg, metric, source)
    features = ['logits_unbiased'] if metric == 'IS' else [dims]
    extractor, tag = (judge_extractor if cfg.EVAL.EXTRACTOR == 'judge' else inception_extractor)(cfg, features, device)
    if tag['weights'] == 'random':
        print(f'warning: {RANDOM_NOTE}', file=sys.stderr)

    kept = {'images': [], 'captions': [], 'keys': []}
    domain_logits = []

    def on_batch(batch_images, captions, keys):
        if want_rp:
            kept['images'].append(batch_images.cpu())
            kept['captions'] += list(captions)
            kept['keys'] += list(keys)
        if classifier is not None:
            with torch.no_grad():
                domain_logits.append(classifier(batch_images.to(device)).double().cpu())

    size = None

    def sized(batches):
        nonlocal size
        for item in batches:
            size = item[0].shape[-1]
            yield item
    (feats,) = extract(extractor, sized(source.batches()), source.count, device, f'{metric}: generated images',
                       on_batch)
    result = {'metric': metric, 'count': int(feats.shape[0]), 'source': source.description,
              'image_size': int(size), 'weights': tag, 'command': command}
    if metric == 'IS':
        mean, std = inception_score(feats, cfg.EVAL.SPLITS)
        result.update(value=mean, std=std, splits=cfg.EVAL.SPLITS)
        if classifier is not None:
            logits = torch.cat(domain_logits)
            entry = {'protocol': cfg.EVAL.CLASSIFIER_PROTOCOL, 'classifier': os.path.abspath(classifier_path)}
            if cfg.EVAL.CLASSIFIER_PROTOCOL == 'stackgan':
                # only full batches of 64 count, after a shuffle (seeded here, unseeded there)
                dmean, dstd = stackgan_inception_score(logits, cfg.EVAL.SPLITS, PROTOCOL_BATCH, seed=cfg.EVAL.SEED)
                entry['used'] = int(len(logits) // PROTOCOL_BATCH * PROTOCOL_BATCH)
            else:
                dmean, dstd = inception_score(logits, cfg.EVAL.SPLITS)
            result['domain_classifier'] = dict(entry, value=dmean, std=dstd)
    else:
        ref = reference_statistics(cfg, extractor, tag, device, int(size))
        scores = fid_and_kid(cfg, feats, ref)
        result.update(value=scores['fid'], std=None, dims=int(feats.shape[1]),
                      reference={'count': ref['count'], 'cache': ref['path'], 'from_cache': ref['cached']})
        if 'kid' in scores:
            result['kid'] = scores['kid']
    if want_rp:
        try:
            result['r_precision'] = caption_r_precision(cfg, text_path, torch.cat(kept['images']),
                                                        kept['captions'], kept['keys'], device)
        except TooFewCaptions as e:
            if cfg.EVAL.R_PRECISION == 'on':
                raise ConfigError(f'EVAL.R_PRECISION=on: {e}') from None
            result['r_precision'] = {'skipped': str(e)}
    write_json(path, result)
    result['json'] = path
    return result
