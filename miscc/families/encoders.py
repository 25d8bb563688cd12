"""The DAMSM encoders every family conditions on: their files, vocabulary size and loading."""
from __future__ import annotations

import os

from models import RNN_ENCODER
from models.encoders import build_image_encoder

from ..core.checkpoint import CheckpointError, load_file, load_model_state, not_a_file, strip_prefixes
from ..core.config import ConfigError

__all__ = ['DAMSM_HELP', 'damsm_paths', 'text_encoder_vocab_size', 'load_text_encoder', 'load_image_encoder']

DAMSM_HELP = ('download the pretrained DAMSM encoders (see DAMSMencoders/README.md) or train them '
              'with pretrain_DAMSM.py, and point TEXT.DAMSM_NAME at the text encoder file')


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
        raise FileNotFoundError(f"{what} '{path}' {not_a_file(path)} ({key}); {DAMSM_HELP}")


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


def load_image_encoder(cfg, path: str, device, key: str = 'TEXT.DAMSM_NAME'):
    """The ``TEXT.IMAGE_ENCODER`` image encoder loaded from ``path`` (an Inception file holds the
    trunk too), on ``device``."""
    _require(path, 'DAMSM image encoder', key + " with 'text_encoder' replaced by 'image_encoder'")
    encoder = build_image_encoder(cfg.TEXT.IMAGE_ENCODER, cfg.TEXT.EMBEDDING_DIM, cfg.TEXT.IMAGE_ENCODER_INPUT)
    # the name says which architecture the keys were checked against: a file of the other kind fails
    return load_model_state(encoder, load_file(path), name=f'{path} with TEXT.IMAGE_ENCODER={cfg.TEXT.IMAGE_ENCODER}'
                            ).to(device)
