"""Build the networks a config describes and load their weights (one place for both)."""
from __future__ import annotations

import os
import re

from models import CNN_ENCODER, NetD, NetG, RNN_ENCODER

from .checkpoint import CheckpointError, load_file, load_model_state, strip_prefixes
from .config import ConfigError

__all__ = ['build_generator', 'build_discriminator', 'damsm_paths', 'text_encoder_vocab_size',
           'load_text_encoder', 'load_image_encoder', 'load_generator', 'checkpoint_epoch',
           'sibling_checkpoint', 'generator_text_encoder']

DAMSM_HELP = ('download the pretrained DAMSM encoders (see DAMSMencoders/README.md) or train them '
              'with pretrain_DAMSM.py, and point TEXT.DAMSM_NAME at the text encoder file')


def build_generator(cfg) -> NetG:
    """NetG(TRAIN.NF, GAN.Z_DIM, TREE.BASE_SIZE, TEXT.EMBEDDING_DIM)."""
    return NetG(cfg.TRAIN.NF, cfg.GAN.Z_DIM, cfg.TREE.BASE_SIZE, cfg.TEXT.EMBEDDING_DIM)


def build_discriminator(cfg) -> NetD:
    """NetD(TRAIN.NF, TREE.BASE_SIZE, TEXT.EMBEDDING_DIM)."""
    return NetD(cfg.TRAIN.NF, cfg.TREE.BASE_SIZE, cfg.TEXT.EMBEDDING_DIM)


def damsm_paths(text_encoder_path: str):
    """(text encoder, image encoder) files: the image encoder is the same path with
    ``text_encoder`` replaced by ``image_encoder``, as in the official code."""
    head, name = os.path.split(text_encoder_path)
    if 'text_encoder' not in name:
        raise ConfigError(f"TEXT.DAMSM_NAME '{text_encoder_path}' must name a text_encoder*.pth file, "
                         f"so that the matching image_encoder*.pth can be found beside it")
    return text_encoder_path, os.path.join(head, name.replace('text_encoder', 'image_encoder'))


def _require(path: str, what: str, key: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} '{path}' not found ({key}); {DAMSM_HELP}")


def text_encoder_vocab_size(path: str, key: str = 'TEXT.DAMSM_NAME') -> int:
    """Number of words the text encoder file was trained with (its embedding rows)."""
    _require(path, 'DAMSM text encoder', key)
    state = strip_prefixes(load_file(path))
    if 'encoder.weight' not in state:
        raise CheckpointError(f"'{path}' is not a DAMSM text encoder (no 'encoder.weight' key)")
    return int(state['encoder.weight'].shape[0])


def load_text_encoder(cfg, path: str, n_words: int, device, key: str = 'TEXT.DAMSM_NAME') -> RNN_ENCODER:
    """RNN_ENCODER with ``n_words`` words loaded from ``path`` (strict), on ``device``."""
    _require(path, 'DAMSM text encoder', key)
    encoder = RNN_ENCODER(n_words, nhidden=cfg.TEXT.EMBEDDING_DIM, rnn_type=cfg.RNN_TYPE)
    return load_model_state(encoder, path).to(device)


def load_image_encoder(cfg, path: str, device, key: str = 'TEXT.DAMSM_NAME') -> CNN_ENCODER:
    """CNN_ENCODER loaded from ``path`` (the file holds the Inception trunk too), on ``device``."""
    _require(path, 'DAMSM image encoder', key + " with 'text_encoder' replaced by 'image_encoder'")
    encoder = CNN_ENCODER(cfg.TEXT.EMBEDDING_DIM, input_size=cfg.TEXT.IMAGE_ENCODER_INPUT)
    return load_model_state(encoder, path).to(device)


def checkpoint_epoch(path: str) -> int:
    """Epoch number in a ``netG_120.pth``-style name (the digits after the last '_')."""
    match = re.search(r'_(\d+)\.pth$', os.path.basename(path))
    if not match:
        raise ConfigError(f"cannot read an epoch from '{path}': expected a name like netG_120.pth")
    return int(match.group(1))


def sibling_checkpoint(netg_path: str, name: str) -> str:
    """``.../netG_120.pth`` -> ``.../<name>_120.pth`` (netD, text_encoder, image_encoder)."""
    head, base = os.path.split(netg_path)
    if not base.startswith('netG'):
        raise ConfigError(f"expected a generator file named netG_<epoch>.pth, got '{netg_path}'")
    return os.path.join(head, name + base[len('netG'):])


def generator_text_encoder(cfg, netg_path: str) -> str:
    """The text encoder to generate with from ``netg_path``: the ``text_encoder_XXX.pth``
    beside a fine-tuned ``netG_XXX.pth`` when there is one (the generator was trained with
    it), else the DAMSM encoder of ``TEXT.DAMSM_NAME``."""
    if os.path.basename(netg_path).startswith('netG'):
        paired = sibling_checkpoint(netg_path, 'text_encoder')
        if os.path.isfile(paired):
            return paired
    return damsm_paths(cfg.TEXT.DAMSM_NAME)[0]


def load_generator(cfg, path: str, device) -> NetG:
    """NetG built from the config with weights from ``path`` (ours or official), on ``device``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"generator checkpoint '{path}' not found (TRAIN.NET_G)")
    return load_model_state(build_generator(cfg), path).to(device)
