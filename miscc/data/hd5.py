"""Images with precomputed text embeddings from one HDF5 file, in the layout of the PyTorch
GAN-INT-CLS implementation (aelnouby/Text-to-Image-Synthesis, convert_cub_to_hd5_script.py,
convert_flowers_to_hd5_script.py)::

    <split>/<example>/name        string   image file name without extension
                     /img         opaque   the image file's bytes (JPEG), stored whole
                     /embeddings  float    E (one caption's char-CNN-RNN embedding, E = 1024),
                                           or K x E (K captions; one is drawn per item)
                     /class       string   class folder (e.g. '001.Black_footed_Albatross')
                     /txt         string   the caption (or K captions, matching the rows)

with splits ``train``, ``valid`` and ``test``. Its converters write five examples per image
(``<name>_0`` .. ``<name>_4``), captions drawn from the image's ten with replacement.

``Hd5Batch`` / ``collate_hd5`` batch its items for the training loop, ``build_hd5_dataset``
reads the DATA.HD5_* config keys, and ``Hd5RealImages`` gives the real images of a split
(one per image, not per example) for FID statistics. ``hd5_writer`` / ``write_example`` write
the layout (``tools/convert_to_hd5.py``).
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence

import h5py
import numpy as np
import torch
import torch.utils.data as data
import torchvision.transforms as T
from PIL import Image

from ..core.files import TEMP_SUFFIX
from .errors import DataError

__all__ = ['Hd5Dataset', 'Hd5Error', 'Hd5Batch', 'Hd5RealImages', 'collate_hd5', 'build_hd5_dataset',
           'hd5_writer', 'write_example', 'FIELDS', 'SPLITS']

FIELDS = ('name', 'img', 'embeddings', 'class', 'txt')
SPLITS = ('train', 'valid', 'test')
_LAYOUT = ("the layout split/example/{name, img, embeddings, class, txt} written by "
           "convert_cub_to_hd5_script.py / convert_flowers_to_hd5_script.py of "
           "aelnouby/Text-to-Image-Synthesis")


class Hd5Error(DataError):
    """An hd5 data file is missing or does not have the expected layout."""


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode('utf-8')
    return str(value)


def _to_float_tensor(img: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1).copy())
    return x.div_(127.5).sub_(1.0)


class Hd5Dataset(data.Dataset):
    """One split of an hd5 file: images in [-1, 1] with a text embedding and a mismatch.

    Item (a dict, collated by the default collate function)::

        image            FloatTensor 3 x S x S in [-1, 1]
        embedding        FloatTensor E (a random row when the example holds K x E)
        wrong_image      FloatTensor 3 x S x S, an example of another class
        wrong_embedding  FloatTensor E, that example's embedding
        caption          str, the caption of ``embedding`` (trailing newline removed)
        name             str, the example's ``name`` (the image it comes from)
        class_id         int, index of its class among the split's sorted class names
        index            int

    ``augment=False`` (the implementation's view): the whole image resized to S x S
    (bicubic, PIL's default). ``augment=True`` (the project's training view): resize the
    short side to ``int(S * 76 / 64)``, random S x S crop, random horizontal flip.
    Random choices use torch's generator, which DataLoader seeds per worker.

    ``embedding_dim`` (when given) must equal the file's embedding size. Every problem with
    the file raises ``Hd5Error`` naming the file, split, example and field, and the fix.
    """

    def __init__(self, path: str, split: str = 'train', image_size: int = 64,
                 embedding_dim: Optional[int] = None, augment: bool = False,
                 embedding_key: str = 'DATA.HD5_EMBEDDING_DIM'):
        path = os.fspath(path)
        self.path = path
        self.split = split
        self.image_size = image_size
        self.augment = augment
        self.embedding_key = embedding_key
        if augment:
            self.transform = T.Compose([T.Resize(int(image_size * 76 / 64)),
                                        T.RandomCrop(image_size), T.RandomHorizontalFlip()])
        else:
            self.transform = T.Resize((image_size, image_size),
                                      interpolation=T.InterpolationMode.BICUBIC)
        self._file: Optional[h5py.File] = None

        with self._open() as f:
            group = self._split_group(f)
            self.keys: List[str] = list(group.keys())
            if not self.keys:
                raise Hd5Error(f"hd5 file '{path}': split '{split}' holds no examples; "
                               f"use a file converted with {_LAYOUT}")
            class_names = [self._class_of(group, key) for key in self.keys]
            first = self.keys[0]
            for field in FIELDS:
                self._field(group, first, field)
            self.embedding_dim = self._embedding_size(group, first, embedding_dim)
            self._decode(group, first)
        self.class_names = sorted(set(class_names))
        if len(self.class_names) < 2:
            raise Hd5Error(f"hd5 file '{path}': split '{split}' has one class "
                           f"('{self.class_names[0]}'); mismatching pairs need examples of "
                           f"at least two classes")
        lookup = {c: i for i, c in enumerate(self.class_names)}
        self.class_ids = np.array([lookup[c] for c in class_names], dtype=np.int64)
        # Examples grouped by class: a different-class example is one draw from the others.
        self._by_class = np.argsort(self.class_ids, kind='stable')
        counts = np.bincount(self.class_ids, minlength=len(self.class_names))
        self._class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._class_count = counts

    # ---------------------------------------------------------------- file access
    def _open(self) -> h5py.File:
        if not os.path.isfile(self.path):
            raise Hd5Error(f"hd5 file '{self.path}' not found: set DATA.HD5_FILE to a file "
                           f"converted with {_LAYOUT} (its README links the converted "
                           f"birds.hdf5 and flowers.hdf5)")
        try:
            return h5py.File(self.path, 'r')
        except OSError as e:
            raise Hd5Error(f"'{self.path}' is not a readable HDF5 file ({e}); set DATA.HD5_FILE "
                           f"to a file converted with {_LAYOUT}") from None

    def _split_group(self, f: h5py.File) -> h5py.Group:
        if self.split not in f or not isinstance(f[self.split], h5py.Group):
            have = ', '.join(k for k in f.keys()) or 'nothing'
            raise Hd5Error(f"hd5 file '{self.path}' has no split '{self.split}' (it has: {have}); "
                           f"name one of its splits (DATA.HD5_TRAIN_SPLIT, DATA.HD5_TEST_SPLIT) "
                           f"or use a file with the splits {', '.join(SPLITS)} ({_LAYOUT})")
        return f[self.split]

    def _field(self, group: h5py.Group, key: str, field: str) -> h5py.Dataset:
        example = group[key]
        if not isinstance(example, h5py.Group) or field not in example:
            have = ', '.join(example.keys()) if isinstance(example, h5py.Group) else 'not a group'
            raise Hd5Error(f"hd5 file '{self.path}', split '{self.split}', example '{key}': "
                           f"missing field '{field}' (it has: {have}); every example needs "
                           f"{', '.join(FIELDS)}, as in {_LAYOUT}")
        return example[field]

    def _class_of(self, group: h5py.Group, key: str) -> str:
        # one path lookup per example: this runs over the whole split at start-up
        # (about 0.2 ms an example with h5py)
        try:
            value = group[key + '/class'][()]
        except (KeyError, TypeError, AttributeError):
            value = self._field(group, key, 'class')[()]
        return _text(value)

    def _embedding_size(self, group: h5py.Group, key: str, expected: Optional[int]) -> int:
        shape = self._field(group, key, 'embeddings').shape
        if len(shape) not in (1, 2) or shape[-1] == 0:
            raise Hd5Error(f"hd5 file '{self.path}', split '{self.split}', example '{key}': "
                           f"field 'embeddings' has shape {shape}; expected E or K x E "
                           f"(one embedding per caption)")
        size = int(shape[-1])
        if expected is not None and size != expected:
            raise Hd5Error(f"hd5 file '{self.path}', split '{self.split}', example '{key}': "
                           f"field 'embeddings' has size {size} but {self.embedding_key} is "
                           f"{expected}; set {self.embedding_key}={size} (the file's "
                           f"char-CNN-RNN embeddings have 1024)")
        return size

    def _group(self) -> h5py.Group:
        if self._file is None:            # opened once per process (DataLoader workers too)
            self._file = self._open()
        return self._split_group(self._file)

    def __getstate__(self) -> Dict:
        state = self.__dict__.copy()
        state['_file'] = None             # h5py handles do not cross processes
        return state

    # ---------------------------------------------------------------- items
    def _decode(self, group: h5py.Group, key: str) -> Image.Image:
        raw = self._field(group, key, 'img')[()]
        raw = raw.tobytes() if isinstance(raw, np.void) else bytes(np.asarray(raw).tobytes())
        try:
            img = Image.open(io.BytesIO(raw))
            return img.convert('RGB')
        except (OSError, ValueError) as e:
            raise Hd5Error(f"hd5 file '{self.path}', split '{self.split}', example '{key}': "
                           f"field 'img' is not a readable image ({e}); it must hold the "
                           f"image file's bytes (np.void), as in {_LAYOUT}") from None

    def _image(self, group: h5py.Group, key: str) -> torch.Tensor:
        return _to_float_tensor(self.transform(self._decode(group, key)))

    def _embedding(self, group: h5py.Group, key: str):
        """(FloatTensor E, row drawn or None)."""
        self._embedding_size(group, key, self.embedding_dim)
        values = np.asarray(self._field(group, key, 'embeddings')[()], dtype=np.float32)
        if values.ndim == 1:
            return torch.from_numpy(values), None
        row = int(torch.randint(values.shape[0], (1,)))
        return torch.from_numpy(values[row].copy()), row

    def _caption(self, group: h5py.Group, key: str, row: Optional[int]) -> str:
        txt = self._field(group, key, 'txt')[()]
        if isinstance(txt, np.ndarray):
            txt = txt.reshape(-1)[0 if row is None else row]
        return _text(txt).strip()

    def wrong_index(self, index: int) -> int:
        """A random example of another class than example ``index`` (uniform over them)."""
        c = self.class_ids[index]
        r = int(torch.randint(len(self.keys) - int(self._class_count[c]), (1,)))
        if r >= self._class_start[c]:
            r += int(self._class_count[c])
        return int(self._by_class[r])

    def __len__(self) -> int:
        return len(self.keys)

    # What generation from the test split needs (the interface of ``outputs.caption_plan`` and
    # ``resume_point``): keys, and how many captions (embedding rows) an example holds.
    @property
    def filenames(self) -> List[str]:
        return self.keys

    @property
    def embeddings_num(self) -> int:
        """Embedding rows of the first example (1 for an E-shaped field, the converters' layout)."""
        shape = self._field(self._group(), self.keys[0], 'embeddings').shape
        return 1 if len(shape) == 1 else int(shape[0])

    def embedding_and_caption(self, index: int, row: int = 0):
        """``(FloatTensor E, caption str)`` of example ``index``: its row ``row`` (modulo its
        number of rows) when it holds K x E, deterministic (no random draw)."""
        group = self._group()
        key = self.keys[index]
        self._embedding_size(group, key, self.embedding_dim)
        values = np.asarray(self._field(group, key, 'embeddings')[()], dtype=np.float32)
        if values.ndim == 1:
            return torch.from_numpy(values), self._caption(group, key, None)
        row = row % values.shape[0]
        return torch.from_numpy(values[row].copy()), self._caption(group, key, row)

    def image_name(self, index: int) -> str:
        return _text(self._field(self._group(), self.keys[index], 'name')[()])

    def __getitem__(self, index: int) -> Dict:
        group = self._group()
        key = self.keys[index]
        embedding, row = self._embedding(group, key)
        wrong = self.keys[self.wrong_index(index)]
        wrong_embedding, _ = self._embedding(group, wrong)
        return {
            'image': self._image(group, key),
            'embedding': embedding,
            'wrong_image': self._image(group, wrong),
            'wrong_embedding': wrong_embedding,
            'caption': self._caption(group, key, row),
            'name': _text(self._field(group, key, 'name')[()]),
            'class_id': int(self.class_ids[index]),
            'index': index,
        }


class Hd5Batch(NamedTuple):
    """A batch of ``Hd5Dataset`` items, in the order the sampler gave them."""
    images: torch.Tensor           # B x 3 x S x S, float in [-1, 1]
    embeddings: torch.Tensor       # B x E
    wrong_images: torch.Tensor     # B x 3 x S x S, each of another class than the item
    wrong_embeddings: torch.Tensor  # B x E, the embeddings of those wrong examples
    captions: list                 # B caption strings (of ``embeddings``)
    class_ids: torch.Tensor        # B, long
    keys: list                     # B example keys


def collate_hd5(items: Sequence[Dict]) -> Hd5Batch:
    """Stack ``Hd5Dataset`` items into an ``Hd5Batch``."""
    stack = data.default_collate
    return Hd5Batch(images=stack([it['image'] for it in items]),
                    embeddings=stack([it['embedding'] for it in items]),
                    wrong_images=stack([it['wrong_image'] for it in items]),
                    wrong_embeddings=stack([it['wrong_embedding'] for it in items]),
                    captions=[it['caption'] for it in items],
                    class_ids=torch.as_tensor([int(it['class_id']) for it in items], dtype=torch.long),
                    keys=[it['name'] for it in items])


def build_hd5_dataset(cfg, split: str, augment: Optional[bool] = None) -> Hd5Dataset:
    """``Hd5Dataset`` of DATA.HD5_FILE for ``split`` 'train' or 'test' (the file's splits
    DATA.HD5_TRAIN_SPLIT / DATA.HD5_TEST_SPLIT) at TREE.BASE_SIZE; ``augment`` defaults to
    DATA.HD5_AUGMENT for training and False for the test split."""
    d = cfg.DATA
    name = d.HD5_TRAIN_SPLIT if split == 'train' else d.HD5_TEST_SPLIT
    if augment is None:
        augment = bool(d.HD5_AUGMENT) and split == 'train'
    return Hd5Dataset(d.HD5_FILE, name, image_size=cfg.TREE.BASE_SIZE,
                      embedding_dim=d.HD5_EMBEDDING_DIM, augment=augment)


class Hd5RealImages(data.Dataset):
    """The real images of an hd5 split as uint8 ``3 x S x S`` tensors, one per image (the
    converters store each image under five examples; the first example of each ``name`` is
    kept), resized like ``Hd5Dataset(augment=False)``. Item: ``(image uint8, name str)``."""

    def __init__(self, path: str, split: str = 'test', image_size: int = 64):
        self.examples = Hd5Dataset(path, split, image_size=image_size, augment=False)
        first = {}
        for i in range(len(self.examples)):
            first.setdefault(self.examples.image_name(i), i)
        self.names = list(first)
        self.indices = list(first.values())

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        ex = self.examples
        img = ex.transform(ex._decode(ex._group(), ex.keys[self.indices[index]]))
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()), self.names[index]


# ----------------------------------------------------------------------------- writing
@contextlib.contextmanager
def hd5_writer(path: str) -> Iterator[h5py.File]:
    """A new hd5 file with the groups of ``SPLITS``, written beside ``path`` under a temporary
    name and renamed onto it when the block ends without an error (removed otherwise), so an
    interrupted conversion never leaves a partial file under the final name."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix=TEMP_SUFFIX, dir=directory)
    os.close(fd)
    try:
        with h5py.File(tmp, 'w') as f:
            for split in SPLITS:
                f.create_group(split)
            yield f
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_example(group: h5py.Group, key: str, name: str, class_name: str, image_bytes: bytes,
                  embedding: np.ndarray, caption: str) -> None:
    """One example as the implementation's converters write it: the image file's bytes whole
    (``np.void``), one caption's embedding (E, float32), the caption as a variable-length string."""
    example = group.create_group(key)
    example.create_dataset('name', data=name)
    example.create_dataset('img', data=np.void(image_bytes))
    example.create_dataset('embeddings', data=np.asarray(embedding, dtype=np.float32))
    example.create_dataset('class', data=class_name)
    example.create_dataset('txt', data=caption, dtype=h5py.special_dtype(vlen=str))
