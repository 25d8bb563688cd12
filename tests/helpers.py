"""Helpers shared by the tests: the real CUB metadata, small generated data sets (CUB, COCO,
synthetic birds, hd5 files), random encoders, and the SSA-GAN update built from bare modules."""
import collections
import io
import os
import pickle
import shutil
import struct
import types
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from datasets import Batch, TextDataset, crop_box
from miscc.core.config import load_config
from miscc.data.synthetic import make_synthetic_birds
from miscc.families.gan_int_cls import GanIntClsUpdate
from miscc.families.ssagan import SSAGANUpdate, UpdateOptions, make_optimizers
from miscc.training import driver as driver_module
from models import CNN_ENCODER, RNN_ENCODER
from models.srcnn import SRCNN

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


def make_synthetic_with_encoders(root, num_train: int, num_test: int, seed: int, epoch: int,
                                 nef: int = 256, input_size: int = 299):
    """Synthetic birds under ``root/synthetic_birds`` (128 px) and random DAMSM encoders for
    their vocabulary as ``root/enc/{text,image}_encoder<epoch>.pth``."""
    data = root / 'synthetic_birds'
    make_synthetic_birds(str(data), num_train=num_train, num_test=num_test, image_size=128, seed=seed, workers=1)
    n_words = TextDataset(str(data), 'train', image_size=64, dataset_name='synthetic_birds').n_words
    torch.manual_seed(0)
    (root / 'enc').mkdir()
    torch.save(RNN_ENCODER(n_words, nhidden=nef).state_dict(), root / 'enc' / f'text_encoder{epoch}.pth')
    torch.save(CNN_ENCODER(nef, input_size=input_size).state_dict(), root / 'enc' / f'image_encoder{epoch}.pth')
    return root




def as_batch(images, captions, cap_lens, class_ids) -> Batch:
    """A ``datasets.Batch`` of the given tensors (keys left empty)."""
    return Batch(images, captions, torch.as_tensor(cap_lens), torch.as_tensor(class_ids), [''] * len(images))


def gan_int_cls_update(g, d, options, opt_d=None, opt_g=None, noise_dim: int = 100) -> GanIntClsUpdate:
    """The GAN-INT-CLS update around the modules ``g`` / ``d`` (bare and wrapped alike), for its
    ``d_step`` / ``g_step``; the optimisers given, noise of ``noise_dim``."""
    nets = {'netG': g, 'netD': d}
    return GanIntClsUpdate(nets, dict(nets), {}, {'optimizerG': opt_g, 'optimizerD': opt_d}, options, noise_dim)


def ssagan_update(netG, netD, text_encoder, image_encoder, G=None, cfg=None, **options) -> SSAGANUpdate:
    """The SSA-GAN update on these bare modules (``G``: the generator module to call, e.g.
    compiled) with the optimisers of ``cfg`` (default: the defaults) and either the options of
    ``cfg`` or, without one, ``UpdateOptions(**options)`` (official loss weights)."""
    nets = {'netG': netG, 'netD': netD}
    encoders = {'text_encoder': text_encoder, 'image_encoder': image_encoder}
    modules = dict(nets, **encoders)
    if G is not None:
        modules['netG'] = G
    if cfg is not None:
        opts = UpdateOptions.from_config(cfg, next(netG.parameters()).device, finetune=False)
    else:
        cfg = load_config(None, [])
        opts = UpdateOptions(**dict(dict(smooth=dict(gamma1=5.0, gamma2=5.0, gamma3=10.0, lam=1.0)), **options))
    return SSAGANUpdate(nets, modules, encoders, make_optimizers(cfg, nets), opts)


def make_coco_layout(root, num_train: int, num_test: int, size=(32, 24)):
    """A COCO-style folder (images/, text/, split pickles; 5 captions per image, no boxes, no
    class ids) whose captions differ from key to key. Returns {'train': keys, 'test': keys}."""
    root = Path(root)
    words = ['plate', 'bus', 'dog', 'red', 'green', 'street', 'table', 'man', 'two', 'small', 'cat', 'tree']
    keys = {'train': [f'COCO_train2014_{i:012d}' for i in range(num_train)],
            'test': [f'COCO_val2014_{i:012d}' for i in range(num_test)]}
    (root / 'text').mkdir(parents=True, exist_ok=True)
    for split, names in keys.items():
        (root / split).mkdir(exist_ok=True)
        with open(root / split / 'filenames.pickle', 'wb') as f:
            pickle.dump(names, f, protocol=2)
        for n, k in enumerate(names):
            lines = [f'a {words[n % 12]} {words[(n // 12 + j) % 12]} near a {words[(n + 3 * j) % 12]}' for j in range(5)]
            (root / 'text' / (k + '.txt')).write_text('\n'.join(lines) + '\n')
            write_jpeg(str(root / 'images' / (k + '.jpg')), size, (0, 0, size[0] // 2, size[1]))
    return keys


# ----------------------------------------------------------------------------- hd5 files
HD5_EMB = 16
# name -> (class, colour, mode); two captions (examples) per image, as <name>_<c>
HD5_IMAGES = {
    'red_flower_01': ('class_00001', (230, 20, 20), 'RGB'),
    'red_flower_02': ('class_00001', (200, 30, 30), 'RGB'),
    'blue_flower_01': ('class_00002', (20, 20, 230), 'RGB'),
    'grey_flower_01': ('class_00003', 128, 'L'),
}


def hd5_jpeg(colour, mode, size=(40, 30)):
    """The bytes of a one-colour JPEG."""
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format='JPEG', quality=95)
    return buf.getvalue()


def write_hd5_example(group, key, name, cls, img, emb, txt):
    """One example as the converters of aelnouby/Text-to-Image-Synthesis write it."""
    ex = group.create_group(key)
    ex.create_dataset('name', data=name)
    ex.create_dataset('img', data=np.void(img))
    ex.create_dataset('embeddings', data=emb)
    ex.create_dataset('class', data=cls)
    ex.create_dataset('txt', data=np.array(txt).astype(object), dtype=h5py.special_dtype(vlen=str))
    return ex


def write_hd5(path, splits=('train', 'valid', 'test'), emb_dim=HD5_EMB, seed=0):
    """The converters' layout with the images of ``HD5_IMAGES``, two examples each;
    returns {split: {example key: (class, embedding, caption)}}."""
    rng = np.random.default_rng(seed)
    written = {}
    with h5py.File(path, 'w') as f:
        for split in splits:
            group = f.create_group(split)
            written[split] = {}
            for name, (cls, colour, mode) in HD5_IMAGES.items():
                img = hd5_jpeg(colour, mode)
                for c in range(2):
                    emb = rng.standard_normal(emb_dim).astype(np.float32)
                    txt = f'this {name.split("_")[0]} flower number {c}\n'
                    write_hd5_example(group, f'{name}_{c}', name, cls, img, emb, txt)
                    written[split][f'{name}_{c}'] = (cls, emb, txt.strip())
    return written


class TinyExtractor(torch.nn.Module):
    """A stand-in for the FID Inception: uint8 B x 3 x H x W -> (B x 3 features,), the colour
    means (0..10) of the image's 2 x 2 quarters through a fixed random projection (per image,
    so batching does not change the values)."""

    def __init__(self):
        super().__init__()
        self.register_buffer('proj', torch.randn(12, 3, generator=torch.Generator().manual_seed(0)))

    def forward(self, images):
        x = torch.nn.functional.adaptive_avg_pool2d(images.float() / 25.5, 2).flatten(1)
        return (x @ self.proj.to(x.device),)


def tiny_extractor(cfg, features, device):
    """``miscc.evaluation.scores.inception_extractor``'s signature with ``TinyExtractor``."""
    return TinyExtractor().to(device).eval(), {'weights': 'tiny stand-in', 'sha256': 'tiny-stand-in-extractor'}


class CodePayload:
    """Unpickling this runs ``open(marker, 'w')``: a loader that lets crafted files run code
    leaves the marker file behind."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code from a crafted file ran')",))


def torchrun_worker_pids(parent: int) -> dict:
    """{rank: pid} of torchrun's workers (descendants of ``parent`` with RANK in their environment)."""
    children = collections.defaultdict(list)
    envs = {}
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/stat') as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            with open(f'/proc/{pid}/environ', 'rb') as f:
                envs[int(pid)] = dict(i.split(b'=', 1) for i in f.read().split(b'\0') if b'=' in i)
        except (OSError, ValueError):
            continue
        children[ppid].append(int(pid))
    found, todo = {}, [parent]
    while todo:
        for pid in children.get(todo.pop(), []):
            env = envs.get(pid, {})
            if b'RANK' in env and b'TORCHELASTIC_RUN_ID' in env:
                found[int(env[b'RANK'])] = pid
            todo.append(pid)
    return found


def set_driver_clock(clock, monkeypatch=None) -> None:
    """The training driver's ``time.time()`` returns ``float(clock())`` (to test deadlines):
    through ``monkeypatch`` (undone after the test), or without it, in a spawned worker, for
    the rest of that process."""
    fake = types.SimpleNamespace(time=lambda: float(clock()))
    if monkeypatch is None:
        driver_module.time = fake
    else:
        monkeypatch.setattr(driver_module, 'time', fake)


def identity_srcnn(kernels=(9, 1, 5), shift=0.0) -> dict:
    """SRCNN weights that pass Y through (one centre tap of weight 1 a layer), plus ``shift`` in
    the last bias (Y + 255 * shift before clamping)."""
    net = SRCNN(kernels)
    state = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    for i, k in enumerate(kernels, 1):
        state[f'conv{i}.weight'][0, 0, k // 2, k // 2] = 1.0
    state['conv3.bias'][0] = shift
    return state


def write_t7(path, table: dict) -> None:
    """``table`` (str keys; str or 2-d float32 array values) in Torch7's binary serialisation,
    as reedscot's char-CNN-RNN files store ``{img = '<path>', txt = FloatTensor K x E}``."""
    out = io.BytesIO()
    refs = iter(range(1, 1000))

    def put(fmt, *values):
        out.write(struct.pack(fmt, *values))

    def string(text):
        raw = text.encode('utf-8')
        put('<i', len(raw))
        out.write(raw)

    def torch_header(class_name):
        put('<ii', 4, next(refs))            # TYPE_TORCH, object reference
        string('V 1')
        string(class_name)

    def obj(value):
        if isinstance(value, str):
            put('<i', 2)
            string(value)
        elif isinstance(value, np.ndarray):
            value = np.ascontiguousarray(value, dtype='<f4')
            torch_header('torch.FloatTensor')
            put('<i', value.ndim)
            put(f'<{value.ndim}q', *value.shape)
            put(f'<{value.ndim}q', *(s // 4 for s in value.strides))
            put('<q', 1)                     # storage offset, counted from 1
            torch_header('torch.FloatStorage')
            put('<q', value.size)
            out.write(value.tobytes())
        else:
            put('<iii', 3, next(refs), len(value))     # TYPE_TABLE, reference, pairs
            for k, v in value.items():
                obj(k)
                obj(v)
    obj(table)
    Path(path).write_bytes(out.getvalue())
