"""Folders of generated images: the only module that reads or writes their ``manifest.jsonl``
(one line per image: file, mask, key, caption_index, caption) and ``generator.json`` (the
generator that made them, by SHA-256)."""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ..core.files import atomic_write, file_sha256, read_json, read_jsonl, write_json, write_text

__all__ = ['MANIFEST', 'GENERATOR_RECORD', 'caption_plan', 'read_manifest', 'save_png', 'save_test_images', 'generator_record',
           'other_generator', 'resume_point']

MANIFEST = 'manifest.jsonl'
GENERATOR_RECORD = 'generator.json'


def caption_plan(num_keys: int, captions_per_image: int, num: int, start: int = 0) -> np.ndarray:
    """(key index, caption index) of generated images start..num-1: image n uses key
    n mod K and, on its (n div K)-th pass through the keys, the next caption of that key."""
    n = np.arange(start, num)
    return np.stack([n % num_keys, (n // num_keys) % captions_per_image], axis=1)


def read_manifest(folder: str) -> list:
    """The entries of ``folder/manifest.jsonl`` in order ([] without one); a line cut by an
    interruption ends the list, so generation continues from there."""
    return read_jsonl(os.path.join(folder, MANIFEST))


def save_png(array, path: str) -> None:
    """H x W (x 3) uint8 array as a PNG at ``path``, atomically."""
    with atomic_write(path, 'wb') as f:
        Image.fromarray(array).save(f, format='PNG')


def save_test_images(batches, out_dir: str, num: int, progress=None, workers: int = 4) -> str:
    """Write each image as ``img_s<n>.png`` and its last-stage mask as ``fm_<n>.png`` (the
    official names) into ``out_dir`` and append its line to ``manifest.jsonl`` once both are
    on disk. Returns the manifest path.

    ``batches`` is an iterable of ``generation.GeneratedBatch``.
    """
    os.makedirs(out_dir, exist_ok=True)
    manifest = os.path.join(out_dir, MANIFEST)
    with open(manifest, 'a', encoding='utf-8') as f, ThreadPoolExecutor(max(1, workers)) as pool:
        for batch in batches:
            lines, jobs = [], []
            for j, n in enumerate(batch.indices):
                image, mask = f'img_s{n}.png', f'fm_{n}.png'
                jobs.append(pool.submit(save_png, batch.images[j].permute(1, 2, 0).numpy(),
                                        os.path.join(out_dir, image)))
                if batch.masks is not None:
                    jobs.append(pool.submit(save_png, batch.masks[j, 0].numpy(), os.path.join(out_dir, mask)))
                lines.append(json.dumps({'file': image, 'mask': mask if batch.masks is not None else None,
                                         'key': batch.keys[j], 'caption_index': batch.caption_index[j],
                                         'caption': batch.captions[j]}))
            for job in jobs:
                job.result()
            # manifest lines only for images that are fully on disk
            f.write('\n'.join(lines) + '\n')
            f.flush()
            if progress is not None:
                progress.update(len(lines))
    return manifest


def generator_record(out_dir: str) -> dict | None:
    """``{"generator": path, "sha256": hex}`` of the generator whose images ``out_dir`` holds,
    as ``resume_point`` recorded it; None when there is no record."""
    path = os.path.join(out_dir, GENERATOR_RECORD)
    return read_json(path) if os.path.isfile(path) else None


def other_generator(out_dir: str, generator: str) -> str | None:
    """Who made the images in ``out_dir`` when that is not ``generator`` (by SHA-256): the
    recorded path, quoted; 'an earlier version of that file ...' when the recorded path is
    ``generator`` itself (the file was replaced since); or 'an unrecorded generator'. None
    for its own images or none."""
    if not read_manifest(out_dir):
        return None
    record = generator_record(out_dir)
    if record is None:
        return 'an unrecorded generator'
    now = file_sha256(generator)
    if record.get('sha256') == now:
        return None
    if record.get('generator') == os.path.abspath(generator):
        return (f"an earlier version of that file (replaced since: SHA-256 {str(record.get('sha256'))[:12]}... "
                f"then, {now[:12]}... now)")
    return f"'{record.get('generator')}'"


def resume_point(out_dir: str, dataset, num: int, generator: str | None = None, settings: dict | None = None) -> int:
    """How many images of ``dataset``'s caption plan (``caption_plan``; the data set gives
    ``filenames`` and ``embeddings_num``) ``out_dir`` already holds (0 for a new folder).

    Raises if the folder holds a different plan (other data set or
    settings) or, given the ``generator`` file, images of another generator (compared by
    SHA-256, recorded in ``generator.json`` when the folder is started) or made with other
    ``settings`` (how images were post-processed, e.g. enlarged; recorded there too), so earlier
    results are never silently mixed with new ones.
    """
    settings = settings or {}
    entries = read_manifest(out_dir)
    if not entries:
        leftovers = [f for f in os.listdir(out_dir) if f.endswith('.png')] if os.path.isdir(out_dir) else []
        if leftovers:
            raise FileExistsError(f"'{out_dir}' already holds images but no manifest.jsonl; choose another "
                                  f"SAMPLE.OUT_DIR or remove them")
        if generator:
            record = {'generator': os.path.abspath(generator), 'sha256': file_sha256(generator)}
            write_json(os.path.join(out_dir, GENERATOR_RECORD), dict(record, settings=settings) if settings else record)
        return 0
    made_by = other_generator(out_dir, generator) if generator else None
    if made_by:
        raise FileExistsError(f"'{out_dir}' holds images of {made_by}, not of '{generator}'; choose "
                              f"another SAMPLE.OUT_DIR or remove that folder")
    made_with = (generator_record(out_dir) or {}).get('settings', {}) if generator else settings
    if made_with != settings:
        raise FileExistsError(f"'{out_dir}' holds images made with {made_with or 'no enlargement'}, not with "
                              f"{settings or 'no enlargement'}; choose another SAMPLE.OUT_DIR or remove that folder")
    plan = caption_plan(len(dataset.filenames), dataset.embeddings_num, min(len(entries), num))
    for n, (entry, (key_ix, cap_ix)) in enumerate(zip(entries, plan)):
        if (entry.get('file') != f'img_s{n}.png' or entry.get('key') != dataset.filenames[key_ix]
                or entry.get('caption_index') != int(cap_ix)):
            raise FileExistsError(f"'{out_dir}/manifest.jsonl' was written for other settings (line {n + 1}); "
                                  f"choose another SAMPLE.OUT_DIR or remove that folder")
    if len(entries) > num:
        raise FileExistsError(f"'{out_dir}' already holds {len(entries)} images, more than SAMPLE.NUM={num}")
    # drop a partial tail line, then continue after the last complete entry
    write_text(os.path.join(out_dir, MANIFEST), ''.join(json.dumps(e) + '\n' for e in entries))
    return len(entries)
