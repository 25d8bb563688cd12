"""Image generation: the generation stack (a generator with its own text encoder, vocabulary
and test captions), evaluation sets from the test captions, grids from user captions, and
``B_VALIDATION=True``'s ``generate``."""
from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from datasets import TextDataset, build_dataset, encode_caption, tokenize

from ..core.checkpoint import (BEST_NAME, ema_checkpoint, is_ema_checkpoint, not_a_file, plain_generator_checkpoint,
                               sibling_checkpoint)
from ..core.config import ConfigError
from ..core.files import DiskFullError, check_output_dir
from ..core.runtime import device_from_config, seed_everything
from ..data.hd5 import Hd5Dataset, build_hd5_dataset
from ..families import Family, family_of, require_precomputed_embeddings
from ..families.encoders import damsm_paths, load_text_encoder, text_encoder_vocab_size
from .outputs import caption_plan, read_manifest, resume_point, save_png, save_test_images
from .upscale import build_upscaler

__all__ = ['CaptionError', 'to_uint8_image', 'to_uint8_mask', 'decode_caption', 'encode_texts',
           'GenerationStack', 'load_generation_stack', 'generator_text_encoder', 'sampling_checkpoint', 'test_captions',
           'GeneratedBatch', 'generate_test_images', 'mask_grid', 'save_grid', 'generate']


def to_uint8_image(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W in [-1, 1] -> uint8 0..255, truncating like the official saver."""
    return ((images.detach().float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def to_uint8_mask(masks: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W in [0, 1] -> uint8 0..255."""
    return (masks.detach().float() * 255.0).clamp(0, 255).to(torch.uint8)


def decode_caption(indices, ixtoword) -> str:
    return ' '.join(ixtoword[int(i)] for i in indices if int(i) != 0)


class CaptionError(ValueError):
    """A user caption cannot be encoded (no word of the vocabulary)."""


def encode_texts(texts, wordtoix, words_num: int):
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
        if len(tokenize(text)) - len(unknown) > words_num:     # known words, before the cut
            warnings.warn(f'caption {text!r} has more than {words_num} known words; truncated to the first '
                          f'{words_num}')
        caps.append(cap)
        lens.append(length)
        kept.append(text)
    return torch.stack(caps), torch.tensor(lens), kept


# ----------------------------------------------------------------------------- the stack
def generator_text_encoder(cfg, netg_path: str) -> str:
    """The text encoder to generate with from ``netg_path``: the ``text_encoder_XXX.pth``
    beside a fine-tuned ``netG_XXX.pth`` when there is one (the generator was trained with
    it), else the DAMSM encoder of ``TEXT.DAMSM_NAME``. ``netG_ema_XXX.pth`` pairs like ``netG_XXX.pth``."""
    netg_path = plain_generator_checkpoint(netg_path)
    if os.path.basename(netg_path).startswith('netG'):
        paired = sibling_checkpoint(netg_path, 'text_encoder')
        if os.path.isfile(paired):
            return paired
    return damsm_paths(cfg.TEXT.DAMSM_NAME)[0]


def sampling_checkpoint(cfg, netg_path: str) -> str:
    """The generator file to sample from for ``netg_path``: with ``TRAIN.G_EMA=True`` the average
    ``netG_ema_XXX.pth`` saved beside ``netG_XXX.pth`` (FileNotFoundError naming it when it is
    missing), else ``netg_path`` itself. A ``netG_ema_XXX.pth`` path is always used as given, and
    so is ``netG_best.pth`` (already the generator that was evaluated: its JSON says which)."""
    base = os.path.basename(netg_path)
    if (not cfg.TRAIN.G_EMA or is_ema_checkpoint(netg_path) or not base.startswith('netG')
            or base == BEST_NAME + '.pth'):
        return netg_path
    ema = ema_checkpoint(netg_path)
    if not os.path.isfile(ema):
        raise FileNotFoundError(f"TRAIN.G_EMA=True samples from the average of G, but '{ema}' (beside "
                                f"'{netg_path}') does not exist; set TRAIN.G_EMA=False to sample from "
                                f"'{netg_path}' itself")
    return ema


def test_captions(cfg, n_words: int, text_encoder: str = '') -> TextDataset:
    """The test split as the config describes it (its vocabulary must have ``n_words`` words,
    those of the text encoder file ``text_encoder``): vocabulary and test captions for
    sampling and R-precision."""
    return build_dataset(cfg, 'test', augment=False, expected_vocab_size=n_words, text_encoder=text_encoder)


@dataclass
class GenerationStack:
    """A generator with everything it samples from. ``netG`` and ``text_encoder`` are in eval
    mode on ``device``; ``dataset`` is the test split (vocabulary and captions). With
    DATA.HD5_FILE ``dataset`` is the file's test split, whose precomputed embeddings are the
    conditioning: ``text_encoder`` is None and ``text_encoder_path`` ''."""
    cfg: object
    family: Family
    netG: nn.Module
    netg_path: str
    text_encoder: nn.Module | None
    text_encoder_path: str
    dataset: TextDataset | Hd5Dataset
    device: torch.device

    @torch.no_grad()
    def sentences(self, captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Sentence codes B x 256 of encoded captions (B x T, lengths B in any order)."""
        _, sent = self.text_encoder(captions.to(self.device), lengths, self.text_encoder.init_hidden(len(captions)))
        return sent

    @torch.no_grad()
    def generate(self, noise: torch.Tensor, sent: torch.Tensor):
        """``(images B x 3 x S x S in [-1, 1], masks)`` (see ``Family.generate``)."""
        return self.family.generate(self.netG, noise.to(self.device), sent.to(self.device))

    def noise(self, indices, seed: int) -> torch.Tensor:
        return self.family.noise(self.cfg, indices, seed)

    def encode(self, texts) -> tuple:
        """``encode_texts`` with this stack's vocabulary and word limit."""
        return encode_texts(texts, self.dataset.wordtoix, self.cfg.TEXT.WORDS_NUM)

    def with_generator(self, netg_path: str) -> 'GenerationStack':
        """The same stack with the generator of another checkpoint of the same run."""
        netg_path = sampling_checkpoint(self.cfg, netg_path)
        return dataclasses.replace(self, netG=_load_generator(self.cfg, self.family, netg_path, self.device),
                                   netg_path=netg_path)


def _load_generator(cfg, family: Family, path: str, device) -> nn.Module:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"generator checkpoint '{path}' {not_a_file(path)} (TRAIN.NET_G)")
    netG = family.load_weights(family.build_generator(cfg), path, family.networks[0])
    return netG.to(device).eval()


def load_generation_stack(cfg, netg_path: str, device, text_encoder_path: str = '') -> GenerationStack:
    """The generator at ``netg_path`` (``MODEL.NAME``'s family, ours or released weights; with
    ``TRAIN.G_EMA=True`` its average, see ``sampling_checkpoint``: ``stack.netg_path`` is the file
    used), its text encoder (``text_encoder_path``, else ``generator_text_encoder``) and the test
    captions."""
    family = family_of(cfg)
    netg_path = sampling_checkpoint(cfg, netg_path)
    if cfg.DATA.HD5_FILE:
        require_precomputed_embeddings(cfg, family)
        return GenerationStack(cfg, family, _load_generator(cfg, family, netg_path, device), netg_path, None, '',
                               build_hd5_dataset(cfg, 'test'), torch.device(device))
    text_path = text_encoder_path or generator_text_encoder(cfg, netg_path)
    n_words = text_encoder_vocab_size(text_path)
    dataset = test_captions(cfg, n_words, text_path)
    text_encoder = load_text_encoder(cfg, text_path, n_words, device).eval()
    return GenerationStack(cfg, family, _load_generator(cfg, family, netg_path, device), netg_path,
                           text_encoder, text_path, dataset, torch.device(device))


# ----------------------------------------------------------------------------- test captions
@dataclass
class GeneratedBatch:
    """One batch of generated images with what produced them."""
    indices: list              # image numbers n
    images: torch.Tensor       # B x 3 x S x S uint8
    masks: torch.Tensor | None  # B x 1 x S x S uint8 (last-stage mask; None without masks)
    keys: list                 # data set keys
    caption_index: list        # which of the key's captions
    captions: list             # caption text actually fed to the encoder


@torch.no_grad()
def generate_test_images(stack: GenerationStack, num: int, batch_size: int, seed: int = 0, start: int = 0):
    """Yield GeneratedBatch for images ``start..num-1`` of the stack's test captions (see
    ``caption_plan``), with noise ``stack.noise(n, seed)`` per image n.

    Captions longer than the word limit are subsampled with a generator seeded per image.
    With an hd5 test split the plan's caption index is the example's embedding row.
    """
    dataset = stack.dataset
    plan = caption_plan(len(dataset.filenames), dataset.embeddings_num, num, start)
    for begin in range(0, len(plan), batch_size):
        rows = plan[begin:begin + batch_size]
        indices = list(range(start + begin, start + begin + len(rows)))
        if stack.text_encoder is None:
            embs, texts = zip(*(dataset.embedding_and_caption(int(k), int(c)) for k, c in rows))
            fake, _ = stack.generate(stack.noise(indices, seed), torch.stack(embs))
            yield GeneratedBatch(indices=indices, images=to_uint8_image(fake).cpu(), masks=None,
                                 keys=[dataset.filenames[int(k)] for k in rows[:, 0]],
                                 caption_index=[int(c) for c in rows[:, 1]], captions=list(texts))
            continue
        caps, lens = [], []
        for n, (key_ix, cap_ix) in zip(indices, rows):
            rng = np.random.default_rng([seed, n])
            cap, length = dataset.caption_tensor(int(key_ix) * dataset.embeddings_num + int(cap_ix), rng)
            caps.append(cap)
            lens.append(length)
        captions = torch.stack(caps)
        fake, masks = stack.generate(stack.noise(indices, seed), stack.sentences(captions, torch.tensor(lens)))
        yield GeneratedBatch(
            indices=indices, images=to_uint8_image(fake).cpu(),
            masks=to_uint8_mask(masks[-1]).cpu() if masks else None,
            keys=[dataset.filenames[int(k)] for k in rows[:, 0]],
            caption_index=[int(c) for c in rows[:, 1]],
            captions=[decode_caption(c[:n].tolist(), dataset.ixtoword) for c, n in zip(caps, lens)])


# ----------------------------------------------------------------------------- grids
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
    array = (grid * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    save_png(array, path)


# ----------------------------------------------------------------------------- B_VALIDATION
def generate(cfg, user_captions=()) -> str:
    """B_VALIDATION=True: images of the test captions (SAMPLE.NUM, with masks and
    manifest.jsonl), or a grid for ``user_captions``. Returns the output folder."""
    if not cfg.TRAIN.NET_G:
        raise ConfigError('B_VALIDATION=True needs the generator to sample from: set TRAIN.NET_G=path/netG_XXX.pth')
    if user_captions and cfg.DATA.HD5_FILE:
        raise ConfigError(f"--caption/--captions need a text encoder, but DATA.HD5_FILE='{cfg.DATA.HD5_FILE}' "
                          f"conditions the generator on the file's precomputed embeddings, which new captions "
                          f"do not have: generate from the file's test split (no --caption), or use a generator "
                          f"trained with DAMSM conditioning (DATA.HD5_FILE='')")
    setup = device_from_config(cfg)
    seed_everything(cfg.SEED)
    upscaler = build_upscaler(cfg, setup.device)     # SAMPLE.UPSCALE: None when off
    # A generator fine-tuned together with its text encoder uses that encoder.
    stack = load_generation_stack(cfg, cfg.TRAIN.NET_G, setup.device)
    print(f'sampling from {stack.netg_path} (text encoder {stack.text_encoder_path})')
    base = os.path.splitext(stack.netg_path)[0]
    batch_size = cfg.SAMPLE.BATCH_SIZE or cfg.TRAIN.BATCH_SIZE

    folder = 'captions' if user_captions else 'valid'
    if upscaler is not None:
        folder += f'_{upscaler.method}_x{upscaler.factor}'
    out_dir = cfg.SAMPLE.OUT_DIR or os.path.join(base, folder)
    check_output_dir(out_dir, 'SAMPLE.OUT_DIR')
    if user_captions:
        caps, lens, texts = stack.encode(user_captions)
        per = cfg.SAMPLE.PER_CAPTION
        sent = stack.sentences(caps, lens).repeat_interleave(per, dim=0)
        images, masks = stack.generate(stack.noise(range(len(sent)), cfg.SAMPLE.SEED), sent)
        if upscaler is not None:     # the masks are enlarged with the grid's nearest neighbours
            images = upscaler.float_images(images)
        path = os.path.join(out_dir, 'captions_grid.png')
        save_grid(mask_grid(images, masks, rows=len(images)), path)
        with open(os.path.join(out_dir, 'captions.txt'), 'w', encoding='utf-8') as f:
            f.write(''.join(f'rows {i * per + 1}-{(i + 1) * per}: {t}\n' for i, t in enumerate(texts)))
        print(f'{len(images)} images ({per} per caption) with their masks: {path}')
        return out_dir

    num = cfg.SAMPLE.NUM
    start = resume_point(out_dir, stack.dataset, num, generator=stack.netg_path,
                         settings=upscaler.settings if upscaler is not None else None)
    bar = tqdm(total=num, initial=start, desc='generating', dynamic_ncols=True)
    batches = generate_test_images(stack, num, batch_size, seed=cfg.SAMPLE.SEED, start=start)
    if upscaler is not None:         # the masks (fm_<n>.png) keep the generator's size
        batches = (dataclasses.replace(b, images=upscaler(b.images)) for b in batches)
    try:
        manifest = save_test_images(batches, out_dir, num, progress=bar, workers=max(1, cfg.WORKERS))
    except DiskFullError as e:
        done = len(read_manifest(out_dir))
        raise DiskFullError(e.errno, f'{e}: {done} of {num} images are complete in {out_dir} (manifest.jsonl) '
                                     f'and the same command continues after them') from None
    finally:
        bar.close()   # before the error's line, so that it starts a line of its own
    print(f'{num} images in {out_dir} (manifest: {manifest})')
    return out_dir
