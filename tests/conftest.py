"""Shared data fixtures: the real CUB metadata and small generated data sets."""
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

FIXTURES = Path(__file__).parent / 'fixtures'
CUB_META = FIXTURES / 'cub_metadata'

# Real CUB-style captions, with the oddities of the real files: an empty line,
# a line without words, more lines than needed.
CAPTION_LINES = (FIXTURES / 'example_captions_bird.txt').read_text().splitlines()


def real_keys(split):
    with open(CUB_META / split / 'filenames.pickle', 'rb') as f:
        return pickle.load(f)


def real_boxes():
    ids = dict(line.split() for line in (CUB_META / 'images.txt').read_text().splitlines())
    out = {}
    for line in (CUB_META / 'bounding_boxes.txt').read_text().splitlines():
        i, *box = line.split()
        out[ids[i][:-4]] = tuple(int(float(v)) for v in box)
    return out


def write_jpeg(path, size=(500, 400), box=None, inside=(220, 20, 20), outside=(20, 20, 220)):
    """A JPEG of ``size`` in ``outside`` colour with the rectangle ``box`` in ``inside``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.new('RGB', size, outside)
    if box is not None:
        img.paste(inside, tuple(box))
    img.save(path, format='JPEG', quality=95)


def make_birds_layout(root, train_keys, test_keys, captions=None, images=True,
                      image_size=(500, 400), copy_meta=True):
    """A ``data/birds`` folder with the real metadata files and the given split keys.

    ``captions``: key -> text of its caption file (default: 12 real captions, rotated
    per key, plus an empty and a word-less line). Images are written at every key
    when ``images`` is true, red inside the official crop and blue outside.
    """
    from datasets import crop_box
    root = Path(root)
    (root / 'CUB_200_2011').mkdir(parents=True, exist_ok=True)
    if copy_meta:
        shutil.copy(CUB_META / 'images.txt', root / 'CUB_200_2011' / 'images.txt')
        shutil.copy(CUB_META / 'bounding_boxes.txt', root / 'CUB_200_2011' / 'bounding_boxes.txt')
    real_ids = {}
    for split in ('train', 'test'):
        with open(CUB_META / split / 'class_info.pickle', 'rb') as f:
            ids = pickle.load(f, encoding='latin1')
        real_ids.update({k: int(c) for k, c in zip(real_keys(split), ids)})
    boxes = real_boxes()
    for split, keys in (('train', train_keys), ('test', test_keys)):
        (root / split).mkdir(exist_ok=True)
        with open(root / split / 'filenames.pickle', 'wb') as f:
            pickle.dump(list(keys), f, protocol=0)
        with open(root / split / 'class_info.pickle', 'wb') as f:
            pickle.dump([np.int64(real_ids[k]) for k in keys], f, protocol=2)
    for n, key in enumerate(list(train_keys) + list(test_keys)):
        if captions is not None:
            text = captions[key]
        else:
            lines = [CAPTION_LINES[(n + i) % len(CAPTION_LINES)] for i in range(12)]
            text = '\n'.join(lines[:3] + ['', '...'] + lines[3:]) + '\n'
        path = root / 'text' / (key + '.txt')
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding='utf-8')
        if images:
            write_jpeg(root / 'CUB_200_2011' / 'images' / (key + '.jpg'), image_size,
                       crop_box(boxes[key], *image_size))
    return root


@pytest.fixture
def mini_birds(tmp_path):
    """Six real train keys and three real test keys with images and captions."""
    return make_birds_layout(tmp_path / 'birds', real_keys('train')[:6], real_keys('test')[:3])


@pytest.fixture(scope='session')
def synthetic_small(tmp_path_factory):
    """A small synthetic set (24 train / 8 test, 128 px), made once per session."""
    from miscc.synthetic import make_synthetic_birds
    out = tmp_path_factory.mktemp('synthetic') / 'synthetic_birds'
    make_synthetic_birds(str(out), num_train=24, num_test=8, image_size=128, seed=7, workers=1)
    return out


def make_synthetic_with_encoders(root, num_train: int, num_test: int, seed: int, epoch: int,
                                 nef: int = 256, input_size: int = 299):
    """Synthetic birds under ``root/synthetic_birds`` (128 px) and random DAMSM encoders for
    their vocabulary as ``root/enc/{text,image}_encoder<epoch>.pth``."""
    import torch
    from datasets import TextDataset
    from miscc.synthetic import make_synthetic_birds
    from models import CNN_ENCODER, RNN_ENCODER
    data = root / 'synthetic_birds'
    make_synthetic_birds(str(data), num_train=num_train, num_test=num_test, image_size=128, seed=seed, workers=1)
    n_words = TextDataset(str(data), 'train', image_size=64, dataset_name='synthetic_birds').n_words
    torch.manual_seed(0)
    (root / 'enc').mkdir()
    torch.save(RNN_ENCODER(n_words, nhidden=nef).state_dict(), root / 'enc' / f'text_encoder{epoch}.pth')
    torch.save(CNN_ENCODER(nef, input_size=input_size).state_dict(), root / 'enc' / f'image_encoder{epoch}.pth')
    return root


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile through dynamo without code generation: the same wrapper and graph
    capture as the real thing, the same numerics as eager, seconds instead of minutes.
    Yields the list of (module, mode) it was called with."""
    real = torch.compile
    calls = []

    def compile_eager(module, mode=None):
        calls.append((module, mode))
        return real(module, backend='eager')
    monkeypatch.setattr(torch, 'compile', compile_eager)
    return calls
