"""Probe group 'evaluation'."""
from __future__ import annotations

import json

import numpy as np

from .harness import Result, case, expect_either, expect_error, expect_ok, image_folder, run, script, write_image


def _eval(c, metric, images, **extra) -> Result:
    return run(script(f'eval_{metric}.py', ['--images', images, '--out', c.dir / f'{metric}.json']
                      + c.ctx.eval_args(c.dir / 'cache', **extra)))


def _scored(c, metric):
    def check():
        path = c.dir / f'{metric}.json'
        if not path.exists():
            return f'no {metric}.json'
        value = json.loads(path.read_text()).get('value')
        return None if isinstance(value, (int, float)) and np.isfinite(value) else f'value {value!r}'
    return check


@case('evaluation')
def evaluation_is_empty_folder(c):
    """eval_IS.py --images of an empty folder"""
    images = image_folder(c.dir / 'images', 0)
    return expect_error(_eval(c, 'IS', images), images)


@case('evaluation')
def evaluation_fid_empty_folder(c):
    """eval_FID.py --images of an empty folder"""
    images = image_folder(c.dir / 'images', 0)
    return expect_error(_eval(c, 'FID', images), images)


@case('evaluation')
def evaluation_is_one_image(c):
    """eval_IS.py with one image (EVAL.SPLITS=2)"""
    images = image_folder(c.dir / 'images', 1)
    return expect_error(_eval(c, 'IS', images), 'EVAL.SPLITS', images)


@case('evaluation')
def evaluation_fid_one_image(c):
    """eval_FID.py with one image"""
    images = image_folder(c.dir / 'images', 1)
    return expect_either(_eval(c, 'FID', images), [images, 'image'], _scored(c, 'FID'))


@case('evaluation')
def evaluation_is_fewer_images_than_splits(c):
    """eval_IS.py with 5 images and EVAL.SPLITS=10"""
    images = image_folder(c.dir / 'images', 5)
    return expect_error(_eval(c, 'IS', images, **{'EVAL.SPLITS': 10}), 'EVAL.SPLITS')


@case('evaluation')
def evaluation_mixed_sizes(c):
    """eval_FID.py on images of 64 and 48 pixels"""
    images = image_folder(c.dir / 'images', 6, sizes=((64, 64), (48, 48)))
    return expect_either(_eval(c, 'FID', images), [images, 'size'], _scored(c, 'FID'))


@case('evaluation')
def evaluation_non_image_file(c):
    """eval_IS.py on a folder with notes.txt beside the images"""
    images = image_folder(c.dir / 'images', 4)
    (images / 'notes.txt').write_text('not an image\n')
    return expect_ok(_eval(c, 'IS', images), _scored(c, 'IS'))


@case('evaluation')
def evaluation_corrupt_png(c):
    """eval_IS.py on a folder where one .png holds text"""
    images = image_folder(c.dir / 'images', 4)
    bad = images / 'img_s9.png'
    bad.write_text('not an image\n')
    return expect_error(_eval(c, 'IS', images), bad.name)


@case('evaluation')
def evaluation_missing_folder(c):
    """eval_FID.py --images of a folder that does not exist"""
    images = c.dir / 'nope'
    return expect_error(_eval(c, 'FID', images), images)


@case('evaluation')
def evaluation_grayscale_images(c):
    """eval_IS.py on greyscale PNGs"""
    images = c.dir / 'images'
    for i in range(4):
        write_image(images / f'img_s{i}.png', (64, 64), 'L')
    return expect_either(_eval(c, 'IS', images), [images, 'img_s'], _scored(c, 'IS'))
