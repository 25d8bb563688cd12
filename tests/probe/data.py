"""Probe group 'data'."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

from .harness import Result, case, expect_either, expect_error, run, run_folders, script, write_image


def _train_on(c, data, **extra) -> Result:
    """One epoch of main.py on the data folder ``data``."""
    return run(script('main.py', c.ctx.gan_args(c.dir / 'out', data, **dict({'TRAIN.MAX_EPOCH': 1}, **extra))))


def _keys(data, split='train') -> list:
    with open(Path(data) / split / 'filenames.pickle', 'rb') as f:
        return pickle.load(f)


def _image(data, key) -> Path:
    return Path(data) / 'CUB_200_2011' / 'images' / (key + '.jpg')


def _spoil_image(c, how) -> tuple:
    data = c.ctx.data_copy(c.dir / 'data')
    key = _keys(data)[2]
    path = _image(data, key)
    how(path)
    return data, path


def _trained(c):
    def check():
        return None if any((f / 'models' / 'netG_001.pth').exists() for f in run_folders(c.dir / 'out')) \
            else 'no netG_001.pth'
    return check


@case('data')
def data_truncated_jpeg(c):
    """a train JPEG cut to half its bytes"""
    data, path = _spoil_image(c, lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]))
    return expect_either(_train_on(c, data), [path.name], _trained(c))


@case('data')
def data_corrupt_jpeg(c):
    """a train JPEG of random bytes"""
    data, path = _spoil_image(c, lambda p: p.write_bytes(os.urandom(3000)))
    return expect_error(_train_on(c, data), path.name)


@case('data')
def data_missing_image(c):
    """a train image deleted"""
    data, path = _spoil_image(c, lambda p: p.unlink())
    return expect_error(_train_on(c, data), path.name)


@case('data')
def data_grayscale_image(c):
    """a train image in greyscale (mode L)"""
    data, path = _spoil_image(c, lambda p: write_image(p, (128, 128), 'L', fmt='JPEG'))
    return expect_either(_train_on(c, data), [path.name], _trained(c))


@case('data')
def data_cmyk_image(c):
    """a train image in CMYK"""
    data, path = _spoil_image(c, lambda p: write_image(p, (128, 128), 'CMYK', fmt='JPEG'))
    return expect_either(_train_on(c, data), [path.name], _trained(c))


@case('data')
def data_1x1_image(c):
    """a 1 x 1 train image"""
    data, path = _spoil_image(c, lambda p: write_image(p, (1, 1), fmt='JPEG'))
    return expect_either(_train_on(c, data), [path.name], _trained(c))


def _spoil_boxes(c, edit) -> tuple:
    data = c.ctx.data_copy(c.dir / 'data')
    path = data / 'CUB_200_2011' / 'bounding_boxes.txt'
    lines = path.read_text().splitlines()
    path.write_text('\n'.join(edit(lines)) + '\n')
    return data, path


@case('data')
def data_missing_bbox_row(c):
    """bounding_boxes.txt without the row of a train image"""
    data, path = _spoil_boxes(c, lambda lines: lines[:1] + lines[2:])
    return expect_error(_train_on(c, data), path.name)


@case('data')
def data_bbox_outside_image(c):
    """a bounding box entirely outside its image"""
    def edit(lines):
        i = lines[0].split()[0]
        return [f'{i} 5000.0 5000.0 40.0 40.0'] + lines[1:]
    data, path = _spoil_boxes(c, edit)
    return expect_either(_train_on(c, data), [path.name, 'bounding box'], _trained(c))


def _spoil_caption(c, edit) -> tuple:
    """A data copy without captions.pickle whose caption file of train key 1 is ``edit(bytes)``;
    returns (data folder, caption file, key)."""
    data = c.ctx.data_copy(c.dir / 'data')
    (data / 'captions.pickle').unlink()
    key = _keys(data)[1]
    path = data / 'text' / (key + '.txt')
    path.write_bytes(edit(path.read_bytes()))
    return data, path, key


@case('data')
def data_few_caption_lines(c):
    """a caption file with 3 lines (TEXT.CAPTIONS_PER_IMAGE is 10), no captions.pickle"""
    data, path, key = _spoil_caption(c, lambda text: b'\n'.join(text.splitlines()[:3]) + b'\n')
    return expect_either(_train_on(c, data), [path.name, key, 'CAPTIONS_PER_IMAGE'], _trained(c))


@case('data')
def data_empty_caption_file(c):
    """an empty caption file, no captions.pickle"""
    data, path, key = _spoil_caption(c, lambda text: b'')
    return expect_error(_train_on(c, data), path.name, key)


@case('data')
def data_non_utf8_caption(c):
    """a caption file with bytes that are not UTF-8 between its words, no captions.pickle"""
    data, path, key = _spoil_caption(c, lambda text: text.replace(b' ', b' \xff\xfe ', 1).replace(b'\n', b'\xe9\n'))
    return expect_either(_train_on(c, data), [path.name, key], _trained(c))


@case('data')
def data_caption_edited_with_cache(c):
    """a caption file edited (a new word) while captions.pickle exists"""
    data = c.ctx.data_copy(c.dir / 'data')
    cache = data / 'captions.pickle'
    before = cache.read_bytes()
    key = _keys(data)[1]
    path = data / 'text' / (key + '.txt')
    path.write_text('this bird is xylophonic with zebrine wings\n' * 10)
    res = _train_on(c, data)

    def check():
        if cache.read_bytes() != before:
            return None          # the stale cache was rebuilt
        if path.name in res.err or 'captions.pickle' in res.err:
            return None          # a warning names the stale cache
        return 'the edited caption file is silently ignored: captions.pickle was used unchanged, no warning'
    return expect_either(res, [path.name, 'captions.pickle'], check)
