"""Write images, captions and text embeddings in the hd5 layout of the PyTorch GAN-INT-CLS
implementation (miscc/data/hd5.py), which ``MODEL.NAME=gan_int_cls`` reads with DATA.HD5_FILE.

From the implementation's source layout, what its convert_cub_to_hd5_script.py /
convert_flowers_to_hd5_script.py read (reedscot's char-CNN-RNN embeddings, 1024-d)::

    python tools/convert_to_hd5.py source --images data/flowers --embeddings data/flowers/flowers_icml \\
        --text data/flowers/text_c10 --classes data/flowers/flowers_icml --out data/flowers/flowers.hdf5

    --embeddings  <class>/<image>.t7: a Torch7 table {img = image path under --images, txt = K x E}
                  (read with torchfile), or <class>/<image>.npy: K x E, the image then being
                  --images/<class>/<image>.jpg or --images/<image>.jpg
    --text        <class>/<image>.txt: the K captions, one a line, in the rows' order
    --classes     trainclasses.txt, valclasses.txt, testclasses.txt: the classes of each split

From one of this project's data sets (DATASET_NAME, DATA_DIR of --cfg), each caption embedded
by the DAMSM text encoder (TEXT.DAMSM_NAME: its sentence code, TEXT.EMBEDDING_DIM wide)::

    python tools/convert_to_hd5.py dataset --cfg cfg/bird.yml --out data/birds/birds_damsm.hdf5 [KEY=VALUE ...]

    its train and test splits (valid stays empty); the birds cropped around their bounding
    boxes as this project trains on them (stored as PNG), other images as their files' bytes

Both write, as the implementation does, ``--per-image`` examples per image (5;
``<image>_0`` ...), each with one caption drawn with replacement from the image's captions
(seeded by --seed, so a conversion repeats exactly). The file is written under a temporary
name and renamed when complete; an existing --out is kept unless --force.
"""
from __future__ import annotations

import argparse
import glob
import io
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torchfile  # noqa: E402

from datasets import build_dataset  # noqa: E402
from miscc.cli import USER_ERRORS  # noqa: E402
from miscc.core.config import load_config  # noqa: E402
from miscc.core.runtime import device_from_config  # noqa: E402
from miscc.data.hd5 import hd5_writer, write_example  # noqa: E402
from miscc.evaluation.generation import decode_caption  # noqa: E402
from miscc.evaluation.scores import sentence_codes  # noqa: E402
from miscc.families.encoders import damsm_paths, load_text_encoder, text_encoder_vocab_size  # noqa: E402

# The class lists of reedscot's data (cub_icml/, flowers_icml/), by the split they fill.
CLASS_LISTS = {'train': 'trainclasses.txt', 'valid': 'valclasses.txt', 'test': 'testclasses.txt'}
IMAGES_PER_PASS = 64    # images whose drawn captions go through the text encoder at once (dataset conversion)


class ConversionError(ValueError):
    """The input of a conversion is missing or inconsistent (one line naming the file)."""


def _draws(rng: np.random.Generator, captions: int, per_image: int) -> np.ndarray:
    """Which captions an image's examples take: ``per_image`` draws with replacement, as the
    implementation's ``np.random.choice(range(10), 5)``."""
    return rng.choice(captions, per_image, replace=True)


# ----------------------------------------------------------------------------- source layout
def read_class_lists(folder: str) -> dict:
    """{class: split} from ``folder``'s trainclasses.txt / valclasses.txt / testclasses.txt."""
    splits = {}
    for split, name in CLASS_LISTS.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ConversionError(f"class list '{path}' not found (--classes holds {', '.join(CLASS_LISTS.values())})")
        with open(path, encoding='utf-8') as f:
            for line in f:
                if line.strip():
                    splits[line.strip()] = split
    return splits


def read_embedding_file(path: str, images: str, class_name: str) -> tuple:
    """``(K x E float32 array, image file)`` of one .t7 or .npy embedding file."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if path.endswith('.npy'):
        rows = np.load(path, allow_pickle=False)
        candidates = [os.path.join(images, class_name, stem + '.jpg'), os.path.join(images, stem + '.jpg')]
        image = next((c for c in candidates if os.path.isfile(c)), candidates[0])
    else:
        try:
            table = torchfile.load(path)
        except Exception as e:   # torchfile raises bare exceptions for malformed files
            raise ConversionError(f"'{path}' is not a readable Torch7 file: {type(e).__name__}: {e}") from None
        if not isinstance(table, dict) or b'txt' not in table or b'img' not in table:
            raise ConversionError(f"'{path}' holds no table with 'img' and 'txt' (reedscot's char-CNN-RNN files do)")
        rows = np.asarray(table[b'txt'])
        image_path = table[b'img']
        image = os.path.join(images, image_path.decode('utf-8') if isinstance(image_path, bytes) else str(image_path))
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ConversionError(f"'{path}' holds embeddings of shape {rows.shape}; expected K x E (one row per caption)")
    return rows, image


def convert_source(images: str, embeddings: str, text: str, classes: str, out: str, per_image: int = 5,
                   seed: int = 0) -> dict:
    """The implementation's conversion of a source tree to ``out``; returns examples per split."""
    split_of = read_class_lists(classes)
    if not os.path.isdir(embeddings):
        raise ConversionError(f"embedding folder '{embeddings}' not found (--embeddings: <class>/<image>.t7 or .npy)")
    rng = np.random.default_rng(seed)
    counts = {split: 0 for split in CLASS_LISTS}
    with hd5_writer(out) as f:
        for class_name in sorted(os.listdir(embeddings)):
            class_dir = os.path.join(embeddings, class_name)
            if not os.path.isdir(class_dir):
                continue
            if class_name not in split_of:
                raise ConversionError(f"class '{class_name}' of '{embeddings}' is in none of the class lists of "
                                      f"'{classes}' ({', '.join(CLASS_LISTS.values())})")
            group = f[split_of[class_name]]
            files = sorted(glob.glob(os.path.join(class_dir, '*.t7')) + glob.glob(os.path.join(class_dir, '*.npy')))
            for path in files:
                rows, image = read_embedding_file(path, images, class_name)
                name = os.path.splitext(os.path.basename(image))[0]
                text_file = os.path.join(text, class_name, os.path.splitext(os.path.basename(path))[0] + '.txt')
                if not os.path.isfile(text_file):
                    raise ConversionError(f"captions '{text_file}' of '{path}' not found (--text: <class>/<image>.txt)")
                with open(text_file, encoding='utf-8') as t:
                    lines = [line for line in t.readlines() if line.strip()]
                if len(lines) != rows.shape[0]:
                    raise ConversionError(f"'{text_file}' has {len(lines)} captions but '{path}' {rows.shape[0]} "
                                          f"embeddings; they must match row for row")
                if not os.path.isfile(image):
                    raise ConversionError(f"image '{image}' of '{path}' not found (--images)")
                with open(image, 'rb') as im:
                    data = im.read()
                for c, row in enumerate(_draws(rng, rows.shape[0], per_image)):
                    write_example(group, f'{name}_{c}', name, class_name, data, rows[row], lines[row])
                counts[split_of[class_name]] += per_image
    return counts


# ----------------------------------------------------------------------------- this project's data sets
def _image_bytes(dataset, index: int) -> bytes:
    if dataset.bbox is None:
        with open(dataset.image_file(index), 'rb') as f:
            return f.read()
    buffer = io.BytesIO()
    dataset.source_image(index).save(buffer, format='PNG')
    return buffer.getvalue()


def _class_name(key: str, class_id) -> str:
    return os.path.dirname(key) if '/' in key else f'class_{int(class_id):04d}'


@torch.no_grad()
def convert_dataset(cfg, out: str, per_image: int = 5, seed: int = 0) -> dict:
    """``cfg``'s data set (train and test splits) with DAMSM sentence codes to ``out``."""
    text_path, _ = damsm_paths(cfg.TEXT.DAMSM_NAME)
    n_words = text_encoder_vocab_size(text_path)
    device = device_from_config(cfg).device
    encoder = load_text_encoder(cfg, text_path, n_words, device).eval()
    counts = {}
    with hd5_writer(out) as f:
        for split_index, split in enumerate(('train', 'test')):
            dataset = build_dataset(cfg, split, augment=False, expected_vocab_size=n_words, text_encoder=text_path)
            for first in range(0, len(dataset), IMAGES_PER_PASS):
                drawn = []                       # (image index, example number, caption B x T, length)
                for index in range(first, min(first + IMAGES_PER_PASS, len(dataset))):
                    rng = np.random.default_rng([seed, split_index, index])
                    for c, row in enumerate(_draws(rng, dataset.embeddings_num, per_image)):
                        caption = dataset.caption_tensor(index * dataset.embeddings_num + int(row), rng)
                        drawn.append((index, c, *caption))
                codes = sentence_codes(encoder, torch.stack([d[2] for d in drawn]), torch.tensor([d[3] for d in drawn]),
                                       batch=len(drawn), device=device)
                images = {}
                for (index, c, cap, length), code in zip(drawn, codes.float().numpy()):
                    key = dataset.filenames[index]
                    if index not in images:
                        images[index] = _image_bytes(dataset, index)
                    name = os.path.basename(key)
                    write_example(f[split], f'{name}_{c}', name, _class_name(key, dataset.class_id[index]),
                                  images[index], code, decode_caption(cap[:length].tolist(), dataset.ixtoword) + '\n')
            counts[split] = len(dataset) * per_image
    return counts


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='source', required=True)
    src = sub.add_parser('source', help="the implementation's source layout (.t7 or .npy embeddings)")
    src.add_argument('--images', required=True, help='image root; the .t7 files name images under it')
    src.add_argument('--embeddings', required=True, help='<class>/<image>.t7 (or .npy) embedding files')
    src.add_argument('--text', required=True, help='<class>/<image>.txt caption files')
    src.add_argument('--classes', required=True, help='folder of trainclasses.txt, valclasses.txt, testclasses.txt')
    ds = sub.add_parser('dataset', help="one of this project's data sets, with DAMSM sentence codes")
    ds.add_argument('--cfg', dest='cfg_file', required=True, help='YAML config of the data set and text encoder')
    ds.add_argument('overrides', nargs='*', metavar='KEY=VALUE')
    for p in (src, ds):
        p.add_argument('--out', required=True, help='hd5 file to write')
        p.add_argument('--per-image', type=int, default=5, help='examples (captions drawn) per image (5)')
        p.add_argument('--seed', type=int, default=0, help='seed of the caption draws')
        p.add_argument('--force', action='store_true', help='replace an existing --out')
    args = parser.parse_args(argv)
    name = 'convert_to_hd5.py'
    if os.path.exists(args.out) and not args.force:
        print(f"{name}: error: '{args.out}' exists; pass --force to replace it", file=sys.stderr)
        return 2
    if args.per_image < 1:
        print(f'{name}: error: --per-image must be at least 1, got {args.per_image}', file=sys.stderr)
        return 2
    try:
        if args.source == 'source':
            counts = convert_source(args.images, args.embeddings, args.text, args.classes, args.out,
                                    args.per_image, args.seed)
        else:
            cfg = load_config(args.cfg_file, args.overrides).freeze()
            counts = convert_dataset(cfg, args.out, args.per_image, args.seed)
    except (ConversionError, *USER_ERRORS) as e:
        print(f'{name}: error: {e}', file=sys.stderr)
        return 2
    print(f"{args.out}: " + ', '.join(f'{split} {n} examples' for split, n in counts.items()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
