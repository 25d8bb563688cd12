"""Image generation: evaluation sets from test captions, grids from user captions, and the
fixed-noise sample grids written during training."""
from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .utils import file_sha256

__all__ = ['CaptionError', 'to_uint8_image', 'to_uint8_mask', 'caption_plan', 'noise_for', 'encode_texts',
           'generate_test_images', 'save_test_images', 'resume_point', 'generator_record',
           'other_generator', 'mask_grid', 'save_grid',
           'GeneratedBatch', 'decode_caption']


def to_uint8_image(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W in [-1, 1] -> uint8 0..255, truncating like the official saver."""
    return ((images.detach().float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def to_uint8_mask(masks: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W in [0, 1] -> uint8 0..255."""
    return (masks.detach().float() * 255.0).clamp(0, 255).to(torch.uint8)


def caption_plan(num_keys: int, captions_per_image: int, num: int, start: int = 0):
    """(key index, caption index) of generated images start..num-1: image n uses key
    n mod K and, on its (n div K)-th pass through the keys, the next caption of that key."""
    n = np.arange(start, num)
    return np.stack([n % num_keys, (n // num_keys) % captions_per_image], axis=1)


def noise_for(indices, nz: int, seed: int) -> torch.Tensor:
    """len(indices) x nz standard normal noise; image n's noise depends only on (seed, n),
    so results do not depend on the batch size and an interrupted run can resume."""
    gen = torch.Generator()
    rows = []
    for n in indices:
        gen.manual_seed(seed * 1_000_003 + int(n))
        rows.append(torch.randn(nz, generator=gen))
    return torch.stack(rows)


def decode_caption(indices, ixtoword) -> str:
    return ' '.join(ixtoword[int(i)] for i in indices if int(i) != 0)


class CaptionError(ValueError):
    """A user caption cannot be encoded (no word of the vocabulary)."""


@dataclass
class GeneratedBatch:
    """One batch of generated images with what produced them."""
    indices: list          # image numbers n
    images: torch.Tensor   # B x 3 x S x S uint8
    masks: torch.Tensor    # B x 1 x S x S uint8 (last-stage mask)
    keys: list             # data set keys
    caption_index: list    # which of the key's captions
    captions: list         # caption text actually fed to the encoder


@torch.no_grad()
def generate_test_images(netG, text_encoder, dataset, num: int, batch_size: int, device, seed: int = 0,
                         nz: int = 100, start: int = 0):
    """Yield GeneratedBatch for images ``start..num-1`` of ``dataset``'s captions (see
    ``caption_plan``), generated on ``device`` with the models in eval mode.

    Captions longer than the word limit are subsampled with a generator seeded per image.
    """
    netG.eval()
    text_encoder.eval()
    plan = caption_plan(len(dataset.filenames), dataset.embeddings_num, num, start)
    for begin in range(0, len(plan), batch_size):
        rows = plan[begin:begin + batch_size]
        indices = list(range(start + begin, start + begin + len(rows)))
        caps, lens = [], []
        for n, (key_ix, cap_ix) in zip(indices, rows):
            rng = np.random.default_rng([seed, n])
            cap, length = dataset.caption_tensor(int(key_ix) * dataset.embeddings_num + int(cap_ix), rng)
            caps.append(cap)
            lens.append(length)
        captions = torch.stack(caps).to(device)
        lengths = torch.tensor(lens)
        _, sent = text_encoder(captions, lengths, text_encoder.init_hidden(len(rows)))
        fake, masks = netG(noise_for(indices, nz, seed).to(device), sent)
        yield GeneratedBatch(
            indices=indices, images=to_uint8_image(fake).cpu(), masks=to_uint8_mask(masks[-1]).cpu(),
            keys=[dataset.filenames[int(k)] for k in rows[:, 0]],
            caption_index=[int(c) for c in rows[:, 1]],
            captions=[decode_caption(c[:n].tolist(), dataset.ixtoword) for c, n in zip(caps, lens)])


def _save_png(array: np.ndarray, path: str) -> None:
    tmp = path + '.tmp.png'
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)


def _read_manifest(path: str) -> list:
    if not os.path.isfile(path):
        return []
    entries = []
    with open(path, 'r', encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by an interruption: regenerate from there
    return entries


def save_test_images(batches, out_dir: str, num: int, progress=None, workers: int = 4) -> str:
    """Write each image as ``img_s<n>.png`` and its last-stage mask as ``fm_<n>.png`` (the
    official names) into ``out_dir``, with ``manifest.jsonl`` holding one line per image:
    ``{"file", "mask", "key", "caption_index", "caption"}``. Returns the manifest path.

    ``batches`` is an iterable of GeneratedBatch (``generate_test_images``).
    """
    os.makedirs(out_dir, exist_ok=True)
    manifest = os.path.join(out_dir, 'manifest.jsonl')
    with open(manifest, 'a', encoding='utf-8') as f, ThreadPoolExecutor(max(1, workers)) as pool:
        for batch in batches:
            lines, jobs = [], []
            for j, n in enumerate(batch.indices):
                image, mask = f'img_s{n}.png', f'fm_{n}.png'
                jobs.append(pool.submit(_save_png, batch.images[j].permute(1, 2, 0).numpy(),
                                        os.path.join(out_dir, image)))
                jobs.append(pool.submit(_save_png, batch.masks[j, 0].numpy(), os.path.join(out_dir, mask)))
                lines.append(json.dumps({'file': image, 'mask': mask, 'key': batch.keys[j],
                                         'caption_index': batch.caption_index[j],
                                         'caption': batch.captions[j]}))
            for job in jobs:
                job.result()
            # manifest lines only for images that are fully on disk
            f.write('\n'.join(lines) + '\n')
            f.flush()
            if progress is not None:
                progress.update(len(lines))
    return manifest


GENERATOR_RECORD = 'generator.json'


def generator_record(out_dir: str) -> dict | None:
    """``{"generator": path, "sha256": hex}`` of the generator whose images ``out_dir`` holds,
    as ``resume_point`` recorded it; None when there is no record."""
    path = os.path.join(out_dir, GENERATOR_RECORD)
    if not os.path.isfile(path):
        return None
    with open(path, 'r', encoding='utf-8') as f:
        return json.load(f)


def other_generator(out_dir: str, generator: str) -> str | None:
    """Who made the images in ``out_dir`` when that is not ``generator`` (by SHA-256): the
    recorded path, quoted, or 'an unrecorded generator'; None for its own images or none."""
    if not _read_manifest(os.path.join(out_dir, 'manifest.jsonl')):
        return None
    record = generator_record(out_dir)
    if record is not None and record.get('sha256') == file_sha256(generator):
        return None
    return f"'{record.get('generator')}'" if record else 'an unrecorded generator'


def resume_point(out_dir: str, dataset, num: int, generator: str | None = None) -> int:
    """How many images of the plan ``out_dir`` already holds (0 for a new folder).

    Raises if the folder holds a different plan (other data set or settings) or, given the
    ``generator`` file, images of another generator (compared by SHA-256, recorded in
    ``generator.json`` when the folder is started), so earlier results are never silently
    mixed with new ones.
    """
    entries = _read_manifest(os.path.join(out_dir, 'manifest.jsonl'))
    if not entries:
        leftovers = [f for f in os.listdir(out_dir) if f.endswith('.png')] if os.path.isdir(out_dir) else []
        if leftovers:
            raise FileExistsError(f"'{out_dir}' already holds images but no manifest.jsonl; choose another "
                                  f"SAMPLE.OUT_DIR or remove them")
        if generator:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, GENERATOR_RECORD), 'w', encoding='utf-8') as f:
                json.dump({'generator': os.path.abspath(generator), 'sha256': file_sha256(generator)}, f, indent=1)
        return 0
    made_by = other_generator(out_dir, generator) if generator else None
    if made_by:
        raise FileExistsError(f"'{out_dir}' holds images of {made_by}, not of '{generator}'; choose "
                              f"another SAMPLE.OUT_DIR or remove that folder")
    plan = caption_plan(len(dataset.filenames), dataset.embeddings_num, min(len(entries), num))
    for n, (entry, (key_ix, cap_ix)) in enumerate(zip(entries, plan)):
        if (entry.get('file') != f'img_s{n}.png' or entry.get('key') != dataset.filenames[key_ix]
                or entry.get('caption_index') != int(cap_ix)):
            raise FileExistsError(f"'{out_dir}/manifest.jsonl' was written for other settings (line {n + 1}); "
                                  f"choose another SAMPLE.OUT_DIR or remove that folder")
    if len(entries) > num:
        raise FileExistsError(f"'{out_dir}' already holds {len(entries)} images, more than SAMPLE.NUM={num}")
    # drop a partial tail line, then continue after the last complete entry
    with open(os.path.join(out_dir, 'manifest.jsonl'), 'w', encoding='utf-8') as f:
        f.write(''.join(json.dumps(e) + '\n' for e in entries))
    return len(entries)



def encode_texts(texts, wordtoix, words_num: int, encode_caption):
    """Encode user captions. Returns (captions N x words_num, lengths N, kept texts).

    Unknown words are dropped with a warning naming them; a caption with no known word is an
    error; captions over ``words_num`` words are truncated with a warning.
    """
    caps, lens, kept = [], [], []
    for text in texts:
        cap, length, unknown = encode_caption(text, wordtoix, words_num)
        if unknown:
            warnings.warn(f'caption {text!r}: unknown words dropped: {", ".join(unknown)}')
        if length == 0:
            raise CaptionError(f'caption {text!r} has no word of the vocabulary; nothing to generate from')
        total = length + len(unknown)
        if total > words_num and length == words_num:
            warnings.warn(f'caption {text!r} has more than {words_num} known words; truncated to the first '
                          f'{words_num}')
        caps.append(cap)
        lens.append(length)
        kept.append(text)
    return torch.stack(caps), torch.tensor(lens), kept


def mask_grid(images: torch.Tensor, masks, rows: int = 8) -> torch.Tensor:
    """Grid tensor 3 x (rows*S) x ((1+len(masks))*S) in [0, 1]: each row one image followed
    by its masks (nearest-upsampled to S)."""
    n = min(rows, images.size(0))
    size = images.size(-1)
    cols = [(images[:n].detach().float().cpu() + 1) / 2]
    for m in masks:
        up = F.interpolate(m[:n].detach().float().cpu(), size=(size, size), mode='nearest')
        cols.append(up.expand(-1, 3, -1, -1))
    tiles = torch.stack(cols, dim=1)                       # n x cols x 3 x S x S
    return tiles.permute(2, 0, 3, 1, 4).reshape(3, n * size, len(cols) * size).clamp(0, 1)


def save_grid(grid: torch.Tensor, path: str) -> None:
    """Save a 3 x H x W grid in [0, 1] as PNG (atomically)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    array = (grid * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    _save_png(array, path)
