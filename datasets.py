"""Text-image data sets in the layout released with AttnGAN, DF-GAN and SSA-GAN.

CUB-200-2011 birds (and the built-in synthetic birds, written in the same layout)::

    <data_dir>/CUB_200_2011/images/<key>.jpg      <key> = '<class folder>/<image name>'
    <data_dir>/CUB_200_2011/images.txt            '<id> <key>.jpg'
    <data_dir>/CUB_200_2011/bounding_boxes.txt    '<id> <x> <y> <width> <height>' (floats)
    <data_dir>/text/<key>.txt                     captions, one a line
    <data_dir>/{train,test}/filenames.pickle      keys of the split
    <data_dir>/{train,test}/class_info.pickle     class id per key
    <data_dir>/captions.pickle                    vocabulary cache, built on first use

COCO 2014 has the same ``text/``, ``*/filenames.pickle`` and ``captions.pickle``, images
in ``<data_dir>/images/`` (or ``train2014/`` and ``val2014/``, or folders given
explicitly), no boxes and no class ids (each image is its own class).

Behaviour matches the official code: tokenisation (lower case, ``\\w+`` tokens,
non-ASCII dropped), vocabulary from train+test captions with ``<end>`` at index 0,
``captions.pickle`` = ``[train_captions, test_captions, ixtoword, wordtoix]`` (pickle
protocol 2), captions longer than ``words_num`` subsampled in order, a random caption
per item, the CUB bounding-box crop, resize to ``size*76/64`` + random crop + flip,
values in [-1, 1].
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.utils.data as data
import torchvision.transforms as T
from nltk.tokenize import RegexpTokenizer
from PIL import Image

from miscc.core.files import atomic_write
from miscc.data.errors import DataError
from miscc.data.hd5 import Hd5RealImages
from miscc.data.safe_pickle import PickleLoadError, safe_load
from miscc.data.synthetic import ensure_synthetic_birds

__all__ = ['DataError', 'TextDataset', 'RealImageDataset', 'Batch', 'collate_sorted',
           'build_dataset', 'build_real_image_dataset', 'tokenize', 'encode_caption',
           'read_caption_file', 'build_vocabulary', 'load_filenames', 'load_class_ids',
           'load_bboxes', 'crop_box', 'default_data_dir', 'CUB_METADATA_URL',
           'CUB_IMAGES_URL', 'COCO_METADATA_URL', 'COCO_IMAGES_URL']

CUB_METADATA_URL = 'https://drive.google.com/open?id=1O_LtUP9sch09QH3s_EBAgLEctBQ5JBSJ'
CUB_IMAGES_URL = 'https://www.vision.caltech.edu/datasets/cub_200_2011/'
COCO_METADATA_URL = 'https://drive.google.com/open?id=1rSnbIGNDGZeHlsUlLdahj0RJ9oo6lgH9'
COCO_IMAGES_URL = 'https://cocodataset.org/#download'

BIRD_LAYOUTS = ('birds', 'synthetic_birds')
DATASET_NAMES = ('birds', 'coco', 'synthetic_birds')


def _where_to_get(dataset_name: str, data_dir: str, what: str = 'metadata') -> str:
    """The sentence telling the user where the missing piece comes from."""
    if dataset_name == 'synthetic_birds':
        return (f"create the synthetic set with 'python -m miscc.data.synthetic --out {data_dir}' "
                f"(or delete the incomplete folder; a config with DATASET_NAME "
                f"'synthetic_birds' creates it when it is missing)")
    if dataset_name == 'coco':
        if what == 'images':
            return f"download the COCO 2014 train/val images from {COCO_IMAGES_URL}"
        return (f"download the preprocessed COCO metadata from {COCO_METADATA_URL} and unpack "
                f"it to '{data_dir}' (see data/README.md)")
    if what == 'images':
        return (f"download the CUB-200-2011 images from {CUB_IMAGES_URL} and unpack them to "
                f"'{os.path.join(data_dir, 'CUB_200_2011')}' (see data/README.md)")
    return (f"download the birds metadata from {CUB_METADATA_URL} and unpack it to "
            f"'{data_dir}'; images.txt and bounding_boxes.txt come with the CUB-200-2011 "
            f"images from {CUB_IMAGES_URL} (see data/README.md)")


# --------------------------------------------------------------------------- text
_TOKENIZER = RegexpTokenizer(r'\w+')


def tokenize(text: str) -> list:
    """Official tokenisation: lower-case ``\\w+`` tokens with non-ASCII characters dropped.

    ``tokenize("The bird's  belly is WHITE.")`` -> ``['the', 'bird', 's', 'belly', 'is', 'white']``.
    """
    # Some CUB caption files carry pairs of replacement characters where a byte
    # sequence was lost; the official code turns them into a space.
    text = text.replace('\ufffd\ufffd', ' ')
    tokens = []
    for t in _TOKENIZER.tokenize(text.lower()):
        t = t.encode('ascii', 'ignore').decode('ascii')
        if t:
            tokens.append(t)
    return tokens


def read_caption_file(path: str, captions_per_image: int) -> list:
    """The first ``captions_per_image`` tokenised captions of one ``text/<key>.txt`` file.

    Empty lines and lines without any word are skipped, as in the official code (a line
    whose words are all non-ASCII counts as an empty caption there, and here too).
    May return fewer captions; the caller decides whether that is an error. Bytes that are
    not UTF-8 are a DataError naming the file and line (the official code's strict decoding
    fails on them too; dropping them would silently change the words).
    """
    with open(path, 'rb') as f:
        raw = f.read().split(b'\n')
    captions = []
    for n, data in enumerate(raw, 1):
        try:
            line = data.decode('utf-8')
        except UnicodeDecodeError as e:
            raise DataError(f"caption file '{path}' line {n}: byte {data[e.start:e.start + 1]!r} (byte {e.start + 1} "
                            f"of the line) is not UTF-8; save the file as UTF-8") from None
        if not line:
            continue
        if not _TOKENIZER.tokenize(line.replace('\ufffd\ufffd', ' ').lower()):
            continue
        captions.append(tokenize(line))
        if len(captions) == captions_per_image:
            break
    return captions


def build_vocabulary(train_tokens: Sequence[Sequence[str]], test_tokens: Sequence[Sequence[str]]):
    """Vocabulary of every word of train+test captions, ``'<end>'`` at index 0.

    Returns ``(train_captions, test_captions, ixtoword, wordtoix)`` with captions as lists
    of word indices (the layout of ``captions.pickle``). Words are numbered in order of
    first appearance.
    """
    ixtoword = {0: '<end>'}
    wordtoix = {'<end>': 0}
    for sent in list(train_tokens) + list(test_tokens):
        for w in sent:
            if w not in wordtoix:
                wordtoix[w] = len(ixtoword)
                ixtoword[len(ixtoword)] = w
    train = [[wordtoix[w] for w in sent] for sent in train_tokens]
    test = [[wordtoix[w] for w in sent] for sent in test_tokens]
    return train, test, ixtoword, wordtoix


def pad_caption(indices: Sequence[int], words_num: int,
                rng: Optional[np.random.Generator] = None):
    """``(LongTensor words_num, length)``: zero-padded, or ``words_num`` words kept in order.

    A caption longer than ``words_num`` keeps ``words_num`` randomly chosen words in their
    original order; ``rng`` (a numpy Generator) makes the choice reproducible, without it
    torch's global generator is used (seeded per DataLoader worker).
    """
    n = len(indices)
    out = torch.zeros(words_num, dtype=torch.long)
    if n <= words_num:
        if n:
            out[:n] = torch.as_tensor(list(indices), dtype=torch.long)
        return out, n
    if rng is None:
        keep = torch.randperm(n)[:words_num].sort().values.tolist()
    else:
        keep = np.sort(rng.permutation(n)[:words_num]).tolist()
    out[:] = torch.as_tensor([indices[i] for i in keep], dtype=torch.long)
    return out, words_num


def encode_caption(text: str, wordtoix: dict, words_num: int):
    """Encode a typed caption: ``(LongTensor words_num, length, unknown_words)``.

    Words not in the vocabulary are dropped and listed in ``unknown_words``; more than
    ``words_num`` known words are truncated to the first ``words_num`` (the caller warns).
    ``length`` is 0 when no word is known.
    """
    known, unknown = [], []
    for w in tokenize(text):
        if w in wordtoix and wordtoix[w] != 0:
            known.append(wordtoix[w])
        else:
            unknown.append(w)
    known = known[:words_num]
    out = torch.zeros(words_num, dtype=torch.long)
    if known:
        out[:len(known)] = torch.as_tensor(known, dtype=torch.long)
    return out, len(known), unknown


# --------------------------------------------------------------------------- metadata
def default_data_dir(dataset_name: str) -> str:
    return {'birds': 'data/birds', 'coco': 'data/coco',
            'synthetic_birds': 'data/synthetic_birds'}.get(dataset_name, 'data/birds')


def _check_data_dir(data_dir: str, dataset_name: str) -> None:
    if not os.path.isdir(data_dir):
        raise DataError(f"data folder '{data_dir}' not found: {_where_to_get(dataset_name, data_dir)}")


def _require_file(path: str, dataset_name: str, data_dir: str) -> None:
    if not os.path.isfile(path):
        raise DataError(f"metadata file '{path}' not found: {_where_to_get(dataset_name, data_dir)}")


def _load_pickle(path: str) -> Any:
    try:
        return safe_load(path)
    except PickleLoadError as e:
        raise DataError(str(e)) from None


def load_filenames(data_dir: str, split: str, dataset_name: str = 'birds') -> list:
    """Keys of ``<data_dir>/<split>/filenames.pickle`` (e.g. ``'001.Black_footed_Albatross/...'``)."""
    path = os.path.join(data_dir, split, 'filenames.pickle')
    _require_file(path, dataset_name, data_dir)
    names = _load_pickle(path)
    if not isinstance(names, (list, tuple)) or not all(isinstance(k, (str, bytes)) for k in names):
        raise DataError(f"'{path}' should hold a list of key strings, got {type(names).__name__}; "
                        f"{_where_to_get(dataset_name, data_dir)}")
    return [k.decode('utf-8') if isinstance(k, bytes) else k for k in names]


def load_class_ids(data_dir: str, split: str, num_keys: int) -> list:
    """Class id per key from ``<split>/class_info.pickle`` as python ints.

    Without the file every image is its own class (``0..num_keys-1``), as for COCO.
    """
    path = os.path.join(data_dir, split, 'class_info.pickle')
    if not os.path.isfile(path):
        return list(range(num_keys))
    ids = _load_pickle(path)
    try:
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, np.ndarray) else ids)]
    except (TypeError, ValueError):
        raise DataError(f"'{path}' should hold a list of integer class ids, one per key; "
                        f"replace it with the original file") from None
    if len(ids) != num_keys:
        raise DataError(f"'{path}' holds {len(ids)} class ids but "
                        f"'{os.path.join(data_dir, split, 'filenames.pickle')}' lists {num_keys} "
                        f"keys; the two files belong to different downloads, replace both")
    return ids


def load_bboxes(data_dir: str, dataset_name: str = 'birds') -> dict:
    """``key -> (x, y, width, height)`` ints from the CUB ``images.txt``/``bounding_boxes.txt``.

    The float values (``60.0``) are truncated to ints as the official code does.
    """
    root = os.path.join(data_dir, 'CUB_200_2011')
    images_path = os.path.join(root, 'images.txt')
    boxes_path = os.path.join(root, 'bounding_boxes.txt')
    _require_file(images_path, dataset_name, data_dir)
    _require_file(boxes_path, dataset_name, data_dir)
    id_to_key = {}
    with open(images_path, 'r', encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"'{images_path}' line {n}: expected '<id> <path>.jpg', got {line.strip()!r}; "
                                f"replace the file with the original")
            name = parts[1]
            id_to_key[parts[0]] = name[:-4] if name.lower().endswith('.jpg') else name
    boxes = {}
    with open(boxes_path, 'r', encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 5:
                    raise ValueError
                box = tuple(int(float(v)) for v in parts[1:])
            except ValueError:
                raise DataError(f"'{boxes_path}' line {n}: expected '<id> <x> <y> <width> <height>', "
                                f"got {line.strip()!r}; replace the file with the original") from None
            key = id_to_key.get(parts[0])
            if key is None:
                raise DataError(f"'{boxes_path}' line {n}: image id {parts[0]} is not in '{images_path}'; "
                                f"the two files come from different downloads")
            boxes[key] = box
    return boxes


def crop_box(bbox: Sequence[int], width: int, height: int):
    """Official CUB crop ``(x1, y1, x2, y2)``: a square of side ``2*int(0.75*max(w, h))``
    centred on the box, clipped to the image."""
    x, y, w, h = (int(v) for v in bbox)
    r = int(max(w, h) * 0.75)
    cx = int((2 * x + w) / 2)
    cy = int((2 * y + h) / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


# --------------------------------------------------------------------------- vocabulary cache
def _atomic_pickle(obj: Any, path: str) -> None:
    """Write ``obj`` with pickle protocol 2 to ``path`` atomically."""
    with atomic_write(path, 'wb', fsync=True) as f:
        pickle.dump(obj, f, protocol=2)


def _read_all_captions(data_dir: str, keys: Sequence[str], captions_per_image: int,
                       dataset_name: str) -> list:
    """Tokenised captions, ``captions_per_image`` per key in key order; errors list bad keys."""
    out, missing, short = [], [], []
    for key in keys:
        path = os.path.join(data_dir, 'text', key + '.txt')
        if not os.path.isfile(path):
            missing.append(path)
            continue
        caps = read_caption_file(path, captions_per_image)
        if len(caps) < captions_per_image:
            short.append((key, len(caps)))
        out.extend(caps)
    if missing:
        listing = ', '.join(f"'{p}'" for p in missing[:5])
        more = f' and {len(missing) - 5} more' if len(missing) > 5 else ''
        raise DataError(f"{len(missing)} caption file(s) not found: {listing}{more}; "
                        f"{_where_to_get(dataset_name, data_dir)}")
    if short:
        listing = ', '.join(f"'{k}' ({n})" for k, n in short[:10])
        more = f' and {len(short) - 10} more' if len(short) > 10 else ''
        raise DataError(f"{len(short)} key(s) have fewer than CAPTIONS_PER_IMAGE = "
                        f"{captions_per_image} captions in {os.path.join(data_dir, 'text')}/<key>.txt: "
                        f"{listing}{more}; add captions to those files or lower "
                        f"TEXT.CAPTIONS_PER_IMAGE (COCO has 5 per image)")
    return out


def _caption_files_digest(data_dir: str, keys: Sequence[str]) -> Optional[str]:
    """SHA-256 of the key, size and modification time of every ``text/<key>.txt``, in order
    (stat only, no reads): changes when a caption file is edited or replaced. None when a
    file is absent: the cache then stands in for the text files."""
    h = hashlib.sha256()
    for key in keys:
        try:
            st = os.stat(os.path.join(data_dir, 'text', key + '.txt'))
        except OSError:
            return None
        h.update(f'{key}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
    return h.hexdigest()


def load_captions_pickle(data_dir: str, train_keys: Sequence[str], test_keys: Sequence[str],
                         captions_per_image: int, dataset_name: str = 'birds'):
    """``(train_captions, test_captions, ixtoword, wordtoix)`` from ``captions.pickle``.

    Builds the cache from ``text/`` when absent (written atomically; a read-only folder
    only costs a warning). The cache is checked against the split sizes so that a file
    of another data set or caption count is not silently misaligned. A cache built here
    carries a fifth entry, ``{'text_files': _caption_files_digest(...)}`` (the official code
    reads only the first four), and is rebuilt (with a warning) when a caption file changed
    since; a cache without it (the official download, whose word numbering the released
    encoders need) is used as it is, and so is any cache while caption files are absent.
    """
    path = os.path.join(data_dir, 'captions.pickle')
    digest = _caption_files_digest(data_dir, list(train_keys) + list(test_keys))
    x = None
    if os.path.isfile(path):
        x = _load_pickle(path)
        if not (isinstance(x, (list, tuple)) and len(x) >= 4 and isinstance(x[2], dict)
                and isinstance(x[3], dict) and isinstance(x[0], list) and isinstance(x[1], list)):
            raise DataError(f"'{path}' is not a vocabulary cache ([train_captions, test_captions, "
                            f"ixtoword, wordtoix]); delete it to rebuild it from text/")
        train, test, ixtoword, wordtoix = x[0], x[1], x[2], x[3]
        for name, caps, keys in (('train', train, train_keys), ('test', test, test_keys)):
            if len(caps) != len(keys) * captions_per_image:
                raise DataError(
                    f"'{path}' holds {len(caps)} {name} captions, but {name}/filenames.pickle lists "
                    f"{len(keys)} keys x CAPTIONS_PER_IMAGE {captions_per_image} = "
                    f"{len(keys) * captions_per_image}; the cache belongs to another data set or "
                    f"caption count: set TEXT.CAPTIONS_PER_IMAGE to match it, or delete it to "
                    f"rebuild it from text/")
        record = x[4] if len(x) > 4 and isinstance(x[4], dict) else {}
        if digest is not None and record.get('text_files', digest) != digest:
            warnings.warn(f"caption files under '{os.path.join(data_dir, 'text')}' changed since '{path}' "
                          f"was built: rebuilding it")
            x = None
    if x is None:
        train_tok = _read_all_captions(data_dir, train_keys, captions_per_image, dataset_name)
        test_tok = _read_all_captions(data_dir, test_keys, captions_per_image, dataset_name)
        train, test, ixtoword, wordtoix = build_vocabulary(train_tok, test_tok)
        if len(ixtoword) > 1:
            try:
                _atomic_pickle([train, test, ixtoword, wordtoix, {'text_files': digest}], path)
            except OSError as e:
                warnings.warn(f"could not write the vocabulary cache '{path}' ({e}); "
                              f"it is rebuilt on every start")
    if len(ixtoword) <= 1:
        raise DataError(f"empty vocabulary for '{data_dir}': no caption holds a word "
                        f"({path if os.path.isfile(path) else os.path.join(data_dir, 'text')}); "
                        f"check the caption files under text/ (delete captions.pickle to rebuild it)")
    return train, test, ixtoword, wordtoix


# --------------------------------------------------------------------------- images
def _default_image_dir(data_dir: str, split: str, dataset_name: str) -> str:
    if dataset_name in BIRD_LAYOUTS:
        return os.path.join(data_dir, 'CUB_200_2011', 'images')
    images = os.path.join(data_dir, 'images')
    official = os.path.join(data_dir, 'train2014' if split == 'train' else 'val2014')
    if not os.path.isdir(images) and os.path.isdir(official):
        return official
    return images


class _ImageSource:
    """Where a split's images are and how each is cropped (shared by both data sets)."""

    def __init__(self, data_dir: str, split: str, dataset_name: str, keys: Sequence[str],
                 image_dir: Optional[str], check_images: bool):
        self.data_dir = data_dir
        self.dataset_name = dataset_name
        self.image_dir = image_dir or _default_image_dir(data_dir, split, dataset_name)
        self.bbox = load_bboxes(data_dir, dataset_name) if dataset_name in BIRD_LAYOUTS else None
        if self.bbox is not None:
            absent = [k for k in keys if k not in self.bbox]
            if absent:
                raise DataError(
                    f"{len(absent)} key(s) of {split}/filenames.pickle have no bounding box in "
                    f"'{os.path.join(data_dir, 'CUB_200_2011', 'bounding_boxes.txt')}' "
                    f"(first: '{absent[0]}'); the metadata and the images come from different "
                    f"downloads: {_where_to_get(dataset_name, data_dir)}")
        if check_images:
            if not os.path.isdir(self.image_dir):
                raise DataError(f"image folder '{self.image_dir}' not found: "
                                f"{_where_to_get(dataset_name, data_dir, 'images')}")
            missing = [k for k in keys if not os.path.isfile(self.path(k))]
            if missing:
                listing = ', '.join(f"'{self.path(k)}'" for k in missing[:5])
                more = f' and {len(missing) - 5} more' if len(missing) > 5 else ''
                raise DataError(f"{len(missing)} image(s) of the {split} split not found: "
                                f"{listing}{more}; {_where_to_get(dataset_name, data_dir, 'images')}")

    def path(self, key: str) -> str:
        return os.path.join(self.image_dir, key + '.jpg')

    def load(self, key: str) -> Image.Image:
        """The RGB image of ``key``, cropped around its bounding box for the birds."""
        path = self.path(key)
        try:
            with Image.open(path) as im:
                img = im.convert('RGB')
        except FileNotFoundError:
            raise DataError(f"image '{path}' (key '{key}') not found; "
                            f"{_where_to_get(self.dataset_name, self.data_dir, 'images')}") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image '{path}' (key '{key}'): {e}; the file is corrupt "
                            f"or truncated, replace it with the original "
                            f"({_where_to_get(self.dataset_name, self.data_dir, 'images')})") from None
        if self.bbox is not None:
            box = crop_box(self.bbox[key], img.width, img.height)
            if box[0] >= box[2] or box[1] >= box[3]:   # PIL would fail mid-epoch naming no file
                raise DataError(
                    f"image '{path}' (key '{key}') is {img.width} x {img.height} px, but its bounding box "
                    f"{tuple(self.bbox[key])} (x, y, width, height) in "
                    f"'{os.path.join(self.data_dir, 'CUB_200_2011', 'bounding_boxes.txt')}' lies outside it; "
                    f"the image or the box is not the original "
                    f"({_where_to_get(self.dataset_name, self.data_dir, 'images')})")
            img = img.crop(box)
        return img


def _to_float_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> FloatTensor 3 x H x W in [-1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    # numpy, not torch: small element-wise torch ops pay for intra-op threading here.
    return _array_to_float_tensor(np.asarray(img, dtype=np.uint8))


def _to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


class _ViewCache:
    """Training-view images stored once: cropped, shorter side resized to ``side``, raw uint8.

    One file ``<split>_<side>.u8`` with the images back to back and an index
    ``<split>_<side>.json`` (keys, shapes, offsets), written last, so an interrupted
    build is never mistaken for a complete one. A cache for other keys is rebuilt; after
    replacing images, delete the cache folder. The file is memory-mapped lazily, once
    per process, so DataLoader workers share the page cache.
    """

    def __init__(self, cache_dir: str, split: str, side: int, source: '_ImageSource',
                 keys: Sequence[str]):
        self.base = os.path.join(cache_dir, f'{split}_{side}')
        self.side = side
        index = self._read_index(keys)
        if index is None:
            index = self._build(cache_dir, source, keys)
        self.shapes = [tuple(s) for s in index['shapes']]
        self.offsets = index['offsets']
        self._data = None

    def _read_index(self, keys: Sequence[str]) -> Optional[dict]:
        try:
            with open(self.base + '.json', 'r', encoding='utf-8') as f:
                index = json.load(f)
            size = os.path.getsize(self.base + '.u8')
        except (OSError, ValueError):
            return None
        if index.get('keys') != list(keys) or index.get('side') != self.side \
                or index.get('bytes') != size:
            return None
        return index

    def _build(self, cache_dir: str, source: '_ImageSource', keys: Sequence[str]) -> dict:
        os.makedirs(cache_dir, exist_ok=True)
        resize = T.Resize(self.side)
        shapes, offsets, pos = [], [], 0
        with atomic_write(self.base + '.u8', 'wb') as f:
            for key in keys:
                arr = np.asarray(resize(source.load(key)), dtype=np.uint8)
                f.write(arr.tobytes())
                shapes.append(list(arr.shape))
                offsets.append(pos)
                pos += arr.nbytes
        index = {'keys': list(keys), 'side': self.side, 'bytes': pos,
                 'shapes': shapes, 'offsets': offsets}
        with atomic_write(self.base + '.json', 'w') as f:
            json.dump(index, f)
        return index

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_data'] = None   # each process maps the file itself
        return state

    def get(self, index: int) -> np.ndarray:
        """H x W x 3 uint8 (read-only view) of item ``index``."""
        if self._data is None:
            self._data = np.memmap(self.base + '.u8', dtype=np.uint8, mode='r')
        h, w, c = self.shapes[index]
        start = self.offsets[index]
        return self._data[start:start + h * w * c].reshape(h, w, c)


def _random_crop_flip(arr: np.ndarray, size: int) -> np.ndarray:
    """``RandomCrop(size)`` then ``RandomHorizontalFlip()`` on an H x W x 3 array, drawing
    from torch's generator exactly as torchvision does (same seed, same view)."""
    h, w = arr.shape[:2]
    if h < size or w < size:
        raise ValueError(f'cached image {h}x{w} is smaller than the crop {size}')
    if h == size and w == size:
        i = j = 0
    else:
        i = int(torch.randint(0, h - size + 1, size=(1,)).item())
        j = int(torch.randint(0, w - size + 1, size=(1,)).item())
    arr = arr[i:i + size, j:j + size]
    if torch.rand(1) < 0.5:
        arr = arr[:, ::-1]
    return arr


def _array_to_float_tensor(arr: np.ndarray) -> torch.Tensor:
    x = np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32)
    x /= 255.0
    x -= 0.5
    x /= 0.5
    return torch.from_numpy(x)


# --------------------------------------------------------------------------- data sets
class TextDataset(data.Dataset):
    """Images with their captions, one random caption per item.

    Item: ``(image FloatTensor 3 x S x S in [-1, 1], caption LongTensor words_num
    zero-padded, cap_len int, class_id int, key str)``.

    ``augment=True`` is the training view (crop, resize to ``int(S*76/64)``, random
    crop to S, random flip); ``augment=False`` the evaluation view (same crop, resized
    straight to S x S). Random choices use torch's generator, which DataLoader seeds
    per worker. ``cache_dir`` stores the cropped training view once as raw uint8
    (about 277 KB per image at S = 256) and reads it back memory-mapped; the items are
    the same as without it for the same torch seed.
    """

    def __init__(self, data_dir: str, split: str = 'train', image_size: int = 64,
                 captions_per_image: int = 10, words_num: int = 18,
                 dataset_name: str = 'birds', augment: bool = True,
                 image_dir: Optional[str] = None, expected_vocab_size: Optional[int] = None,
                 text_encoder: str = '',
                 check_images: bool = True, cache_dir: Optional[str] = None):
        if split not in ('train', 'test'):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if dataset_name not in DATASET_NAMES:
            raise ValueError(f"dataset_name must be one of {DATASET_NAMES}, got {dataset_name!r}")
        if captions_per_image < 1 or words_num < 1 or image_size < 1:
            raise ValueError('captions_per_image, words_num and image_size must be positive')
        data_dir = os.fspath(data_dir)
        _check_data_dir(data_dir, dataset_name)
        self.data_dir = data_dir
        self.split = split
        self.dataset_name = dataset_name
        self.image_size = image_size
        self.embeddings_num = captions_per_image
        self.words_num = words_num
        self.augment = augment

        train_keys = load_filenames(data_dir, 'train', dataset_name)
        test_keys = load_filenames(data_dir, 'test', dataset_name)
        train_caps, test_caps, self.ixtoword, self.wordtoix = load_captions_pickle(
            data_dir, train_keys, test_keys, captions_per_image, dataset_name)
        self.n_words = len(self.ixtoword)
        if expected_vocab_size is not None and expected_vocab_size != self.n_words:
            raise DataError(
                f"'{os.path.join(data_dir, 'captions.pickle')}' has a vocabulary of {self.n_words} "
                f"words but the text encoder{f' {text_encoder!r}' if text_encoder else ''} expects "
                f"{expected_vocab_size} (its embedding rows): "
                f"use the captions.pickle the encoder was trained with (the official birds one "
                f"has 5,450 words), or train a text encoder on this vocabulary (pretrain_DAMSM.py)")
        self.filenames = train_keys if split == 'train' else test_keys
        self.captions = train_caps if split == 'train' else test_caps
        self.class_id = load_class_ids(data_dir, split, len(self.filenames))
        self._images = _ImageSource(data_dir, split, dataset_name, self.filenames,
                                    image_dir, check_images)
        self.bbox = self._images.bbox
        self.image_dir = self._images.image_dir
        if augment:
            self.transform = T.Compose([T.Resize(int(image_size * 76 / 64)),
                                        T.RandomCrop(image_size), T.RandomHorizontalFlip()])
        else:
            self.transform = T.Resize((image_size, image_size))
        # Optional: the cropped, resized training view stored once (see _ViewCache).
        self._cache = (_ViewCache(cache_dir, split, int(image_size * 76 / 64), self._images,
                                  self.filenames) if cache_dir and augment else None)

    def __len__(self) -> int:
        return len(self.filenames)

    def caption_tensor(self, sent_ix: int, rng: Optional[np.random.Generator] = None):
        """``(LongTensor words_num, length)`` of caption ``key_index * embeddings_num + j``."""
        return pad_caption(self.captions[sent_ix], self.words_num, rng)

    def image_file(self, index: int) -> str:
        """The image file of item ``index``."""
        return self._images.path(self.filenames[index])

    def source_image(self, index: int) -> Image.Image:
        """The RGB image of item ``index`` before resizing: cropped around its bounding box for
        the birds (``self.bbox``), whole otherwise."""
        return self._images.load(self.filenames[index])

    def image(self, index: int) -> torch.Tensor:
        """FloatTensor 3 x S x S in [-1, 1] of item ``index`` (random view if ``augment``)."""
        if self._cache is not None:
            return _array_to_float_tensor(_random_crop_flip(self._cache.get(index), self.image_size))
        return _to_float_tensor(self.transform(self._images.load(self.filenames[index])))

    def __getitem__(self, index: int):
        key = self.filenames[index]
        img = self.image(index)
        j = int(torch.randint(self.embeddings_num, (1,)))
        caption, length = self.caption_tensor(index * self.embeddings_num + j)
        return img, caption, length, self.class_id[index], key


class RealImageDataset(data.Dataset):
    """Real images of a split as uint8 ``3 x S x S`` (0..255) tensors, for FID statistics.

    Prepared like ``TextDataset(augment=False)``: the CUB crop, then resized to S x S.
    Item: ``(image uint8 3 x S x S, key str)``. Needs no captions.
    """

    def __init__(self, data_dir: str, split: str = 'test', image_size: int = 256,
                 dataset_name: str = 'birds', image_dir: Optional[str] = None,
                 check_images: bool = True):
        if dataset_name not in DATASET_NAMES:
            raise ValueError(f"dataset_name must be one of {DATASET_NAMES}, got {dataset_name!r}")
        data_dir = os.fspath(data_dir)
        _check_data_dir(data_dir, dataset_name)
        self.split = split
        self.image_size = image_size
        self.filenames = load_filenames(data_dir, split, dataset_name)
        self._images = _ImageSource(data_dir, split, dataset_name, self.filenames,
                                    image_dir, check_images)
        self.resize = T.Resize((image_size, image_size))

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, index: int):
        key = self.filenames[index]
        return _to_uint8_tensor(self.resize(self._images.load(key))), key


class Batch(NamedTuple):
    """A batch sorted by caption length, longest first."""
    images: torch.Tensor     # B x 3 x S x S, float in [-1, 1]
    captions: torch.Tensor   # B x words_num, long, zero-padded
    cap_lens: torch.Tensor   # B, long, non-increasing
    class_ids: torch.Tensor  # B, long
    keys: list               # B keys


def collate_sorted(batch: Sequence[tuple]) -> Batch:
    """Stack ``TextDataset`` items and sort them by caption length, longest first
    (ties keep their order), ready for ``pack_padded_sequence``."""
    lens = torch.as_tensor([item[2] for item in batch], dtype=torch.long)
    order = torch.sort(lens, descending=True, stable=True).indices.tolist()
    items = [batch[i] for i in order]
    # default_collate stacks straight into shared memory inside a DataLoader worker,
    # saving a copy of the images on their way to the main process.
    return Batch(images=data.default_collate([it[0] for it in items]),
                 captions=data.default_collate([it[1] for it in items]),
                 cap_lens=torch.as_tensor([int(it[2]) for it in items], dtype=torch.long),
                 class_ids=torch.as_tensor([int(it[3]) for it in items], dtype=torch.long),
                 keys=[it[4] for it in items])


# --------------------------------------------------------------------------- from a config
def _config_paths(cfg, split: str):
    name = cfg.DATASET_NAME
    if name not in DATASET_NAMES:
        raise DataError(f"DATASET_NAME must be one of {', '.join(DATASET_NAMES)}, got {name!r}")
    data_dir = cfg.DATA_DIR or default_data_dir(name)
    if name == 'synthetic_birds':
        s = cfg.SYNTHETIC
        ensure_synthetic_birds(data_dir, num_train=s.NUM_TRAIN, num_test=s.NUM_TEST,
                               image_size=s.IMAGE_SIZE, seed=s.SEED)
    image_dir = cfg.DATA.TRAIN_IMAGE_DIR if split == 'train' else cfg.DATA.TEST_IMAGE_DIR
    return name, data_dir, (image_dir or None)


def build_dataset(cfg, split: str, augment: bool = True,
                  expected_vocab_size: Optional[int] = None, text_encoder: str = '') -> TextDataset:
    """``TextDataset`` of ``split`` as the config describes it (creating the synthetic
    set first when ``DATASET_NAME`` is ``'synthetic_birds'`` and it is missing)."""
    name, data_dir, image_dir = _config_paths(cfg, split)
    cache_dir = (cfg.DATA.CACHE_DIR or os.path.join(data_dir, 'cache')) if cfg.DATA.CACHE else None
    return TextDataset(data_dir, split, image_size=cfg.TREE.BASE_SIZE,
                       captions_per_image=cfg.TEXT.CAPTIONS_PER_IMAGE,
                       words_num=cfg.TEXT.WORDS_NUM, dataset_name=name, augment=augment,
                       image_dir=image_dir, expected_vocab_size=expected_vocab_size, text_encoder=text_encoder,
                       cache_dir=cache_dir)


def build_real_image_dataset(cfg, split: str = 'test',
                             image_size: Optional[int] = None) -> RealImageDataset:
    """``RealImageDataset`` of ``split`` for the config (size defaults to ``TREE.BASE_SIZE``);
    with DATA.HD5_FILE the images of the file's split (``Hd5RealImages``, the test split
    DATA.HD5_TEST_SPLIT for 'test')."""
    if cfg.DATA.HD5_FILE:
        hd5_split = cfg.DATA.HD5_TRAIN_SPLIT if split == 'train' else cfg.DATA.HD5_TEST_SPLIT
        return Hd5RealImages(cfg.DATA.HD5_FILE, hd5_split, image_size or cfg.TREE.BASE_SIZE)
    name, data_dir, image_dir = _config_paths(cfg, split)
    return RealImageDataset(data_dir, split, image_size=image_size or cfg.TREE.BASE_SIZE,
                            dataset_name=name, image_dir=image_dir)
