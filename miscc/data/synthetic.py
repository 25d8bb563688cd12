"""Synthetic birds: a small built-in data set in exactly the CUB-200-2011 layout.

Each image is a bird drawn from simple shapes (body ellipse, head circle, wing ellipse on
the body, beak triangle, tail, eye dot) on a plain mid-tone background with a gentle
vertical gradient and pixel noise. Body, wing, head and beak colours come from
``PALETTE``; a class ("species") is a (body, wing) colour pair with wing != body. The beak
differs from the head so that it stays visible; the tail has the wing colour and the eye
is black (white on a black head). Ten CUB-style captions per image each name the body
colour and one to three of wing colour, head colour, beak colour and size.

Files (all written to a temporary folder that is renamed into place when complete)::

    CUB_200_2011/images/<class>/<name>.jpg   JPEG quality 95, no chroma subsampling
    CUB_200_2011/images.txt, CUB_200_2011/bounding_boxes.txt (tight box of the bird)
    text/<class>/<name>.txt                  10 captions
    train/filenames.pickle, test/filenames.pickle, train/class_info.pickle,
    test/class_info.pickle                   as in the CUB metadata (protocol 2)
    attributes.jsonl                         one JSON object per image
    synthetic.json                           the generation parameters

The same parameters give byte-identical files. Create the set with::

    python -m miscc.data.synthetic --out data/synthetic_birds [--train 2000 --test 500 --size 256 --seed 0]
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

__all__ = ['PALETTE', 'BACKGROUNDS', 'SIZES', 'FACINGS', 'ATTRIBUTE_KEYS', 'GRADIENT_MAX',
           'NOISE_MAX', 'CAPTIONS_PER_IMAGE', 'LABELS', 'class_pairs', 'class_folder',
           'sample_attributes', 'render_bird', 'make_captions', 'make_synthetic_birds',
           'ensure_synthetic_birds', 'is_complete', 'judge_body_colour', 'PART_WORDS', 'caption_attributes',
           'read_attributes', 'main']

# Colour names -> RGB; an evaluation judges generated colours against these.
PALETTE = {
    'red': (200, 30, 30),
    'orange': (240, 130, 20),
    'yellow': (240, 220, 40),
    'green': (40, 150, 50),
    'blue': (40, 70, 210),
    'purple': (120, 40, 160),
    'brown': (110, 70, 30),
    'black': (25, 25, 25),
    'white': (240, 240, 240),
    'grey': (130, 130, 130),
}
# Background names -> RGB centre of the image's background.
BACKGROUNDS = {
    'sky': (150, 185, 220),
    'dusk': (205, 160, 170),
    'fog': (185, 195, 160),
}
SIZES = ('small', 'large')
FACINGS = ('left', 'right')
ATTRIBUTE_KEYS = ('key', 'body', 'wing', 'head', 'beak', 'size', 'background', 'facing')
GRADIENT_MAX = 15      # vertical gradient, at most +-15 per channel
NOISE_MAX = 8          # pixel noise, at most +-8 per channel
CAPTIONS_PER_IMAGE = 10
FORMAT_VERSION = 1
MANIFEST = 'synthetic.json'

_SUPERSAMPLE = 2       # shapes are drawn at twice the size and averaged down (anti-aliasing)
_MARGIN = 0.06         # the bird keeps this fraction of the side clear of every border
_SCALE = {'small': (0.13, 0.16), 'large': (0.22, 0.26)}   # body half-length / side
# label values of the parts in the label map returned by render_bird
LABELS = {'tail': 1, 'body': 2, 'wing': 3, 'beak': 4, 'head': 5, 'eye': 6}


# --------------------------------------------------------------------------- classes
def class_pairs() -> list:
    """All (body, wing) pairs in palette order; class id = position + 1."""
    names = list(PALETTE)
    return [(b, w) for b in names for w in names if w != b]


def class_folder(body: str, wing: str) -> str:
    """CUB-style class folder, e.g. ``'002.Red_bodied_Yellow_winged'``."""
    cid = class_pairs().index((body, wing)) + 1
    return f'{cid:03d}.{body.capitalize()}_bodied_{wing.capitalize()}_winged'


def sample_attributes(rng: np.random.Generator) -> dict:
    """Random attributes (colour names, size, background, facing) of one bird."""
    names = list(PALETTE)
    body = names[rng.integers(len(names))]
    wing = [n for n in names if n != body][rng.integers(len(names) - 1)]
    head = names[rng.integers(len(names))]
    beak = [n for n in names if n != head][rng.integers(len(names) - 1)]
    return {'body': body, 'wing': wing, 'head': head, 'beak': beak,
            'size': SIZES[rng.integers(2)],
            'background': list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
            'facing': FACINGS[rng.integers(2)]}


# --------------------------------------------------------------------------- drawing
def _ellipse(cx, cy, rx, ry, angle=0.0, n=48):
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _bird_parts(rng: np.random.Generator, a: float):
    """Polygons (bird frame, facing right, y down, unit: pixels) in drawing order."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    b = a * u(0.58, 0.66)
    hr = a * u(0.33, 0.38)
    hx, hy = a * u(0.74, 0.82), -a * u(0.48, 0.56)
    tail = np.array([[-0.80 * a, -0.10 * a], [-1.45 * a, -u(0.26, 0.34) * a],
                     [-1.50 * a, u(0.06, 0.14) * a], [-0.80 * a, 0.18 * a]])
    beak_len = a * u(0.26, 0.34)
    beak = np.array([[hx + 0.8 * hr, hy - 0.28 * hr], [hx + 0.8 * hr, hy + 0.28 * hr],
                     [hx + hr + beak_len, hy + 0.05 * hr]])
    return [('tail', tail),
            ('body', _ellipse(0.0, 0.0, a, b)),
            ('wing', _ellipse(-0.12 * a, -0.04 * a, a * u(0.50, 0.58), a * u(0.22, 0.28), u(0.05, 0.25))),
            ('beak', beak),
            ('head', _ellipse(hx, hy, hr, hr)),
            ('eye', _ellipse(hx + 0.35 * hr, hy - 0.2 * hr, 0.16 * hr, 0.16 * hr, n=16))]


def _part_colour(part: str, attrs: dict) -> tuple:
    if part == 'tail':
        return PALETTE[attrs['wing']]
    if part == 'eye':
        return PALETTE['white'] if attrs['head'] == 'black' else PALETTE['black']
    return PALETTE[attrs[part]]


def render_bird(attrs: dict, rng: np.random.Generator, image_size: int):
    """Draw one bird: ``(PIL RGB image S x S, label map uint8 S x S, bbox (x, y, w, h))``.

    The label map holds ``LABELS`` values of the visible part at each pixel (0 for the
    background); the box is the tight box of every pixel the bird touches.
    """
    S, ss = image_size, _SUPERSAMPLE
    lo, hi = _SCALE[attrs['size']]
    a = S * float(rng.uniform(lo, hi))
    tilt = float(rng.uniform(-0.25, 0.05))   # head raised a little more often than lowered
    c, s = math.cos(tilt), math.sin(tilt)
    rot = np.array([[c, -s], [s, c]])
    mirror = -1.0 if attrs['facing'] == 'left' else 1.0
    while True:
        parts = [(name, (pts @ rot.T) * np.array([mirror, 1.0])) for name, pts in _bird_parts(rng, a)]
        allpts = np.concatenate([p for _, p in parts])
        (x0, y0), (x1, y1) = allpts.min(axis=0), allpts.max(axis=0)
        m = _MARGIN * S + 1
        cx = float(rng.uniform(m - x0, S - m - x1))
        cy = float(rng.uniform(m - y0, S - m - y1))
        canvas = Image.new('RGB', (S * ss, S * ss), (0, 0, 0))
        labels = Image.new('L', (S * ss, S * ss), 0)
        draw, ldraw = ImageDraw.Draw(canvas), ImageDraw.Draw(labels)
        for name, pts in parts:
            poly = [(float((px + cx) * ss), float((py + cy) * ss)) for px, py in pts]
            draw.polygon(poly, fill=_part_colour(name, attrs))
            ldraw.polygon(poly, fill=LABELS[name])
        lab = np.asarray(labels)
        # The body must dominate the bird; unlucky proportions are simply drawn again.
        if (lab == LABELS['body']).sum() >= 0.5 * (lab > 0).sum():
            break
    # Box-averaging: the colour over a black canvas comes out alpha-premultiplied.
    rgb = np.asarray(canvas.resize((S, S), Image.BOX), dtype=np.float32)
    mask = Image.fromarray(np.where(lab > 0, np.uint8(255), np.uint8(0)), 'L')
    cover = np.asarray(mask.resize((S, S), Image.BOX), dtype=np.float32) / 255.0

    centre = np.array(BACKGROUNDS[attrs['background']], dtype=np.float32)
    grad = rng.uniform(-GRADIENT_MAX, GRADIENT_MAX, size=3).astype(np.float32)
    t = np.linspace(-1.0, 1.0, S, dtype=np.float32)[:, None, None]
    # Sum of two uniform integers in [-4, 4]: within +-8, mostly small.
    noise = (rng.integers(-4, 5, size=(S, S, 3), dtype=np.int8)
             + rng.integers(-4, 5, size=(S, S, 3), dtype=np.int8)).astype(np.float32)
    bg = centre + t * grad + noise
    out = bg * (1.0 - cover[..., None]) + rgb
    img = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), 'RGB')

    label_map = np.ascontiguousarray(lab[ss // 2::ss, ss // 2::ss])
    ys, xs = np.nonzero(cover > 0)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
    return img, label_map, bbox


# --------------------------------------------------------------------------- captions
_SIZE_WORDS = {'small': ('small', 'tiny', 'little'), 'large': ('large', 'big')}


def judge_body_colour(images, max_distance: float = 70.0) -> list:
    """Body colour of each bird judged from its pixels: ``images`` N x H x W x 3 uint8 (numpy
    or torch) -> N colour names from ``PALETTE`` (``None`` where no pixel qualifies).

    Every pixel takes the nearest of the palette and background colours (RGB distance);
    background pixels and pixels farther than ``max_distance`` from every colour (blends at
    part edges, artefacts) are ignored, and the most frequent remaining palette colour wins.
    The renderer guarantees that the body covers at least half of the bird, so on real images
    this is the body colour; on generated ones it asks whether the bird is mostly that colour.
    """
    pixels = np.asarray(images, dtype=np.float32)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f'judge_body_colour expects N x H x W x 3 images, got shape {pixels.shape}')
    names = list(PALETTE)
    centres = np.array(list(PALETTE.values()) + list(BACKGROUNDS.values()), dtype=np.float32)
    flat = pixels.reshape(len(pixels), -1, 1, 3)
    dist = np.sqrt(((flat - centres) ** 2).sum(-1))              # N x HW x 13
    nearest, nearest_dist = dist.argmin(-1), dist.min(-1)
    counted = (nearest < len(names)) & (nearest_dist <= max_distance)
    result = []
    for n in range(len(pixels)):
        votes = np.bincount(nearest[n][counted[n]], minlength=len(names))
        result.append(names[int(votes.argmax())] if votes.sum() else None)
    return result


def _an(word: str) -> str:
    return 'an' if word[0] in 'aeiou' else 'a'


def _pick(rng, options):
    return options[rng.integers(len(options))]


def _phrase(part: str, colour: str, rng) -> str:
    """A noun phrase naming one coloured part."""
    art = _an(colour)
    if part == 'body':
        return _pick(rng, [f'{art} {colour} belly', f'{art} {colour} breast', f'{art} {colour} body',
                           f'{art} {colour} belly and breast', f'{colour} belly'])
    if part == 'wing':
        return _pick(rng, [f'{colour} wings', f'{colour} wing feathers', f'{colour} wings and tail'])
    if part == 'head':
        return _pick(rng, [f'{art} {colour} crown', f'{art} {colour} head', f'{colour} crown'])
    return _pick(rng, [f'{art} {colour} beak', f'{art} {colour} bill', f'a short {colour} beak',
                       f'a pointed {colour} bill', f'a pointy {colour} beak'])


def _join(items: list, rng) -> str:
    if len(items) == 1:
        return items[0]
    comma = ',' if len(items) > 2 and rng.integers(2) else ''
    return ', '.join(items[:-1]) + f'{comma} and ' + items[-1]


# The nouns that name each part in the captions (``_phrase``).
PART_WORDS = {'body': ('belly', 'breast', 'body'), 'wing': ('wings', 'wing'), 'head': ('crown', 'head'),
              'beak': ('beak', 'bill')}


def caption_attributes(caption: str) -> dict:
    """The attributes a caption in this data set's phrasing names, e.g. ``{'body': 'red',
    'wing': 'blue', 'size': 'small'}``: a colour before a part's noun names that part ('blue
    wings'); a colour before 'bird' or after 'is' / 'mostly' names the body ('a red bird',
    'this bird is mostly red'); a size word names the size. The first mention of a part counts."""
    words = re.findall(r'[a-z]+', caption.lower())
    sizes = {w: size for size, names in _SIZE_WORDS.items() for w in names}
    found: dict = {}
    for i, word in enumerate(words):
        if word in sizes:
            found.setdefault('size', sizes[word])
        if word not in PALETTE:
            continue
        after, before = (words[i + 1] if i + 1 < len(words) else ''), (words[i - 1] if i else '')
        part = next((p for p, nouns in PART_WORDS.items() if after in nouns), None)
        if part is None and (after == 'bird' or before in ('is', 'mostly')):
            part = 'body'
        if part is not None:
            found.setdefault(part, word)
    return found


def read_attributes(data_dir: str) -> dict:
    """``{key: attributes}`` of ``data_dir/attributes.jsonl`` (every image of both splits)."""
    with open(os.path.join(data_dir, 'attributes.jsonl'), encoding='utf-8') as f:
        return {a['key']: a for a in map(json.loads, f) if a}


def _one_caption(attrs: dict, rng) -> str:
    body = attrs['body']
    chosen = list(rng.permutation(['wing', 'head', 'beak', 'size'])[:rng.integers(1, 4)])
    size = _pick(rng, _SIZE_WORDS[attrs['size']]) + ' ' if 'size' in chosen else ''
    others = [_phrase(p, attrs[p], rng) for p in chosen if p != 'size']
    body_np = _phrase('body', body, rng)
    everything = others + [body_np]
    order = rng.permutation(len(everything))
    shuffled = [everything[i] for i in order]
    with_others = f' with {_join(others, rng)}' if others else ''
    form = int(rng.integers(10))
    if form == 0:
        text = f'this {size}bird has {_join(shuffled, rng)}'
    elif form == 1:
        text = f'a {size}bird with {_join(shuffled, rng)}'
    elif form == 2:
        text = f'this {size}bird is {body}{with_others}'
    elif form == 3:
        first = (size or body + ' ').split()[0]
        text = f'{_an(first)} {size}{body} bird{with_others}'
    elif form == 4:
        text = (f'this {size}{body} bird has {_join(others, rng)}' if others
                else f'this is {_an(size or body)} {size}{body} bird')
    elif form == 5:
        text = (f'the {size}bird has {_join(others, rng)} and {body_np}' if others
                else f'the {size}bird has {body_np}')
    elif form == 6:
        text = f'this is a {size}bird with {_join(shuffled, rng)}'
    elif form == 7:
        text = f'a {size}bird that has {_join(shuffled, rng)}'
    elif form == 8:
        text = f'this {size}bird is mostly {body}' + (f' and has {_join(others, rng)}' if others else '')
    else:
        text = (f'this {size}bird is {body} with {others[0]} and has {_join(others[1:], rng)}'
                if len(others) >= 2 else f'this {size}bird has {body_np}' +
                (f' and {others[0]}' if others else ''))
    return text + ('.' if rng.random() < 0.8 else '')


def make_captions(attrs: dict, rng: np.random.Generator, n: int = CAPTIONS_PER_IMAGE) -> list:
    """``n`` distinct CUB-style captions, each naming the body colour and 1-3 other attributes."""
    caps: list = []
    for _ in range(50 * n):
        cap = _one_caption(attrs, rng)
        if cap not in caps:
            caps.append(cap)
            if len(caps) == n:
                break
    while len(caps) < n:   # practically unreachable: hundreds of distinct sentences exist
        caps.append(_one_caption(attrs, rng))
    return caps


# --------------------------------------------------------------------------- writing
class _CubPickler(pickle.Pickler):
    """Writes numpy integers as ``numpy.int64(value)``, loadable with numpy 1 and 2 alike."""

    def reducer_override(self, obj):
        if isinstance(obj, np.integer):
            return np.int64, (int(obj),)
        return NotImplemented


def _dump_pickle(obj, path: str) -> None:
    buf = io.BytesIO()
    _CubPickler(buf, protocol=2).dump(obj)
    with open(path, 'wb') as f:
        f.write(buf.getvalue())


def _manifest(num_train: int, num_test: int, image_size: int, seed: int) -> dict:
    return {'format_version': FORMAT_VERSION, 'num_train': num_train, 'num_test': num_test,
            'image_size': image_size, 'seed': seed}


def is_complete(out_dir: str) -> Optional[dict]:
    """The parameters of a complete synthetic set at ``out_dir``, or None."""
    path = os.path.join(out_dir, MANIFEST)
    try:
        with open(path, 'r', encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_image(root: str, seed: int, i: int, image_size: int):
    """Draw and write image number ``i`` (0-based) with its captions; its record."""
    rng = np.random.default_rng([seed, i])
    attrs = sample_attributes(rng)
    img, _, bbox = render_bird(attrs, rng, image_size)
    captions = make_captions(attrs, rng)
    folder = class_folder(attrs['body'], attrs['wing'])
    name = f"{attrs['body'].capitalize()}_{attrs['wing'].capitalize()}_Bird_{i + 1:05d}"
    key = f'{folder}/{name}'
    cub = os.path.join(root, 'CUB_200_2011')
    os.makedirs(os.path.join(cub, 'images', folder), exist_ok=True)
    os.makedirs(os.path.join(root, 'text', folder), exist_ok=True)
    img.save(os.path.join(cub, 'images', key + '.jpg'), format='JPEG', quality=95, subsampling=0)
    with open(os.path.join(root, 'text', key + '.txt'), 'w', encoding='utf-8', newline='\n') as f:
        f.write(''.join(c + '\n' for c in captions))
    return key, attrs, bbox


def _write_range(args):
    root, seed, start, stop, image_size = args
    return [_write_image(root, seed, i, image_size) for i in range(start, stop)]


def _write_set(root: str, num_train: int, num_test: int, image_size: int, seed: int,
               workers: int = 1) -> None:
    cub = os.path.join(root, 'CUB_200_2011')
    total = num_train + num_test
    # Every image has its own generator, so the files do not depend on the process count.
    step = 50
    jobs = [(root, seed, s, min(s + step, total), image_size) for s in range(0, total, step)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            chunks = list(pool.map(_write_range, jobs))
    else:
        chunks = [_write_range(j) for j in jobs]
    records = [r for chunk in chunks for r in chunk]

    with open(os.path.join(cub, 'images.txt'), 'w', encoding='utf-8', newline='\n') as f:
        f.writelines(f'{i + 1} {key}.jpg\n' for i, (key, _, _) in enumerate(records))
    with open(os.path.join(cub, 'bounding_boxes.txt'), 'w', encoding='utf-8', newline='\n') as f:
        f.writelines(f'{i + 1} {x:.1f} {y:.1f} {w:.1f} {h:.1f}\n'
                     for i, (_, _, (x, y, w, h)) in enumerate(records))
    pairs = class_pairs()
    for split, recs in (('train', records[:num_train]), ('test', records[num_train:])):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        _dump_pickle([k for k, _, _ in recs], os.path.join(root, split, 'filenames.pickle'))
        ids = [pairs.index((a['body'], a['wing'])) + 1 for _, a, _ in recs]
        # Like the CUB metadata: numpy int64 class ids for train, plain ints for test.
        _dump_pickle([np.int64(c) for c in ids] if split == 'train' else ids,
                     os.path.join(root, split, 'class_info.pickle'))
    with open(os.path.join(root, 'attributes.jsonl'), 'w', encoding='utf-8', newline='\n') as f:
        for key, a, _ in records:
            f.write(json.dumps({k: (key if k == 'key' else a[k]) for k in ATTRIBUTE_KEYS}) + '\n')
    with open(os.path.join(root, MANIFEST), 'w', encoding='utf-8', newline='\n') as f:
        json.dump(_manifest(num_train, num_test, image_size, seed), f, sort_keys=True)
        f.write('\n')


def make_synthetic_birds(out_dir: str, num_train: int = 2000, num_test: int = 500,
                         image_size: int = 256, seed: int = 0,
                         workers: Optional[int] = None) -> str:
    """Write the synthetic set to ``out_dir`` and return it.

    The files appear at once (written to a temporary folder, then renamed). An existing
    complete set with the same parameters is left as it is; any other existing,
    non-empty ``out_dir`` is an error (nothing on disk is overwritten). ``workers``
    processes draw the images (default: up to 4, one per CPU); the files are the same
    for any number.
    """
    if num_train < 1 or num_test < 1:
        raise ValueError('the synthetic set needs at least one train and one test image')
    if image_size < 128:
        raise ValueError(f'synthetic images are stored at 128 px or more, got {image_size}')
    out_dir = os.fspath(out_dir)
    wanted = _manifest(num_train, num_test, image_size, seed)
    if os.path.exists(out_dir):
        found = is_complete(out_dir)
        if found == wanted:
            return out_dir
        if not os.path.isdir(out_dir) or os.listdir(out_dir):
            what = f'a synthetic set made with {found}' if found else 'other files'
            raise FileExistsError(f"'{out_dir}' already holds {what}; delete it or choose "
                                  f"another folder to create the synthetic birds with {wanted}")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.' + os.path.basename(os.path.abspath(out_dir)) + '.tmp-', dir=parent)
    try:
        if workers is None:
            workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                          else (os.cpu_count() or 1))
        _write_set(tmp, num_train, num_test, image_size, seed, workers)
        os.chmod(tmp, 0o755)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)   # empty (checked above); rename cannot replace it otherwise
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_complete(out_dir) == wanted:   # another process finished the same set first
            return out_dir
        raise
    return out_dir


def ensure_synthetic_birds(out_dir: str, num_train: int = 2000, num_test: int = 500,
                           image_size: int = 256, seed: int = 0) -> str:
    """Create the synthetic set at ``out_dir`` unless a complete one is there already."""
    found = is_complete(out_dir)
    if found is not None:
        wanted = _manifest(num_train, num_test, image_size, seed)
        if found != wanted:
            warnings.warn(f"using the synthetic birds in '{out_dir}' made with {found}; "
                          f"the config asks for {wanted} (delete the folder to recreate it)")
        return out_dir
    print(f"creating the synthetic birds in '{out_dir}' "
          f"({num_train} train / {num_test} test images) ...", file=sys.stderr)
    return make_synthetic_birds(out_dir, num_train, num_test, image_size, seed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m miscc.data.synthetic',
                                description='Create the synthetic birds data set (CUB layout).')
    p.add_argument('--out', default='data/synthetic_birds', help='folder to create')
    p.add_argument('--train', type=int, default=2000, help='number of train images')
    p.add_argument('--test', type=int, default=500, help='number of test images')
    p.add_argument('--size', type=int, default=256, help='image side in pixels (>= 128)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', type=int, default=None,
                   help='processes drawing images (default: up to 4); files do not depend on it')
    args = p.parse_args(argv)
    start = time.time()
    try:
        existed = is_complete(args.out) is not None
        make_synthetic_birds(args.out, args.train, args.test, args.size, args.seed, args.workers)
    except (ValueError, FileExistsError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    verb = 'already complete' if existed else f'written in {time.time() - start:.1f} s'
    print(f"synthetic birds in '{args.out}': {args.train} train / {args.test} test images, "
          f"{args.size} px, seed {args.seed}; {verb}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
