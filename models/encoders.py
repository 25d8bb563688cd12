"""DAMSM text and image encoders (AttnGAN), with the official state-dict keys.

Nothing here downloads: the Inception-v3 trunk is built by torchvision without weights,
and ImageNet weights are read only when asked for, from a local file or the torch
hub cache (``inception_imagenet_state``).
"""
from __future__ import annotations

import glob
import os
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torchvision.models import inception_v3

__all__ = ['RNN_ENCODER', 'CNN_ENCODER', 'SmallImageEncoder', 'build_image_encoder',
           'inception_imagenet_path', 'inception_imagenet_state', 'InceptionWeightsError', 'INCEPTION_TRUNK',
           'INCEPTION_FILENAMES']

# torchvision's current file name first, then the one AttnGAN's code downloaded.
INCEPTION_FILENAMES = ('inception_v3_google-0cc3c7bd.pth', 'inception_v3_google-1a9a5a14.pth')
INCEPTION_URL = 'https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth'

INCEPTION_TRUNK = ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'Conv2d_3b_1x1',
                   'Conv2d_4a_3x3', 'Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b',
                   'Mixed_6c', 'Mixed_6d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7b', 'Mixed_7c')


class RNN_ENCODER(nn.Module):
    """Bi-LSTM caption encoder.

    ``forward(captions B x T long, cap_lens B, hidden) -> (words_emb B x nhidden x T',
    sent_emb B x nhidden)`` with T' = max(cap_lens). Word features are the per-step outputs
    of both directions; the sentence feature is the final hidden state of both directions.
    Captions need not be sorted by length.
    """

    def __init__(self, ntoken: int, ninput: int = 300, drop_prob: float = 0.5, nhidden: int = 256,
                 nlayers: int = 1, bidirectional: bool = True, rnn_type: str = 'LSTM'):
        super().__init__()
        if rnn_type not in ('LSTM', 'GRU'):
            raise ValueError(f"RNN_TYPE must be 'LSTM' or 'GRU', got {rnn_type!r}")
        self.ntoken = ntoken
        self.ninput = ninput
        self.drop_prob = drop_prob
        self.nlayers = nlayers
        self.bidirectional = bidirectional
        self.rnn_type = rnn_type
        self.num_directions = 2 if bidirectional else 1
        self.nhidden = nhidden // self.num_directions  # per direction

        self.encoder = nn.Embedding(ntoken, ninput)
        self.drop = nn.Dropout(drop_prob)
        rnn_cls = nn.LSTM if rnn_type == 'LSTM' else nn.GRU
        # Inter-layer dropout only exists with several layers; passing it for one layer
        # changes nothing but a warning.
        self.rnn = rnn_cls(ninput, self.nhidden, nlayers, batch_first=True,
                           dropout=drop_prob if nlayers > 1 else 0.0,
                           bidirectional=bidirectional)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    def init_hidden(self, bsz: int):
        """Zero initial state: (h0, c0) for an LSTM, h0 for a GRU, each layers*dirs x B x nhidden."""
        weight = next(self.parameters())
        shape = (self.nlayers * self.num_directions, bsz, self.nhidden)
        if self.rnn_type == 'LSTM':
            return weight.new_zeros(shape), weight.new_zeros(shape)
        return weight.new_zeros(shape)

    def forward(self, captions: torch.Tensor, cap_lens, hidden=None, mask=None):
        if hidden is None:
            hidden = self.init_hidden(captions.size(0))
        emb = self.drop(self.encoder(captions))
        lengths = torch.as_tensor(cap_lens).detach().to('cpu', torch.int64)
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        output, hidden = self.rnn(packed, hidden)
        output = pad_packed_sequence(output, batch_first=True)[0]
        words_emb = output.transpose(1, 2)
        h_n = hidden[0] if self.rnn_type == 'LSTM' else hidden
        sent_emb = h_n.transpose(0, 1).contiguous().view(-1, self.nhidden * self.num_directions)
        return words_emb, sent_emb


def _inception_trunk() -> nn.Module:
    # init_weights=False skips torchvision's slow truncated-normal init; the trunk is
    # either replaced by loaded weights or used as a random feature extractor in tests.
    return inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)


class InceptionWeightsError(ValueError):
    """The ImageNet Inception-v3 weights given to ``CNN_ENCODER`` are not torchvision's."""


def inception_imagenet_path(path: str = '') -> str:
    """The file of the ImageNet Inception-v3 weights: ``path`` or, if empty, the torch hub cache's.

    Raises FileNotFoundError naming the expected file and where to put it.
    """
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"ImageNet Inception-v3 weights not found at '{path}' (PRETRAINED.INCEPTION). "
                f"Download {INCEPTION_URL} and point PRETRAINED.INCEPTION at it.")
        candidates = [path]
    else:
        hub_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
        candidates = [os.path.join(hub_dir, name) for name in INCEPTION_FILENAMES]
        candidates = [c for c in candidates if os.path.isfile(c)]
        candidates += sorted(glob.glob(os.path.join(hub_dir, 'inception_v3_google-*.pth')))
        if not candidates:
            raise FileNotFoundError(
                f"ImageNet Inception-v3 weights not found: no {INCEPTION_FILENAMES[0]} in the torch "
                f"hub cache '{hub_dir}'. Download {INCEPTION_URL} into that folder, or set "
                f"PRETRAINED.INCEPTION=/path/to/{INCEPTION_FILENAMES[0]}.")
    return candidates[0]


def inception_imagenet_state(path: str = '') -> dict:
    """ImageNet Inception-v3 weights from ``path`` or, if empty, the torch hub cache."""
    # weights_only: a tensor file never runs code on loading
    return torch.load(inception_imagenet_path(path), map_location='cpu', weights_only=True)


class CNN_ENCODER(nn.Module):
    """Inception-v3 image encoder.

    ``forward(images B x 3 x H x W in [-1, 1]) -> (region features B x nef x 17 x 17,
    global code B x nef)``; inputs of any size are resized bilinearly to 299 x 299.
    ``input_size`` (>= 75) changes that size for small-scale runs; the region grid follows
    (for example 6 x 6 at 128). Checkpoints do not depend on it.
    The trunk (up to Mixed_7c) is frozen; only ``emb_features`` (1x1 conv on Mixed_6e)
    and ``emb_cnn_code`` (Linear on pooled Mixed_7c) train.

    ``inception_weights``: None builds a random trunk (to be overwritten by a DAMSM
    checkpoint, which holds the trunk too); ``'hub'`` loads ImageNet weights from the
    torch hub cache; any other string is a path to those weights; a mapping is those
    weights already loaded. Weights without the trunk's keys raise InceptionWeightsError.
    """

    def __init__(self, nef: int = 256, inception_weights: str | None = None, input_size: int = 299):
        super().__init__()
        if input_size < 75:
            raise ValueError(f'CNN_ENCODER input_size={input_size}: Inception-v3 needs at least 75 pixels')
        self.nef = nef
        self.input_size = input_size
        trunk = _inception_trunk()
        if inception_weights is not None:
            state = inception_weights if isinstance(inception_weights, Mapping) else \
                inception_imagenet_state('' if inception_weights == 'hub' else inception_weights)
            if not isinstance(state, Mapping):
                raise InceptionWeightsError(f'Inception-v3 weights are a {type(state).__name__}, not a state dict; '
                                            f"expected torchvision's {INCEPTION_FILENAMES[0]}")
            missing = [k for k in trunk.state_dict() if k.split('.')[0] in INCEPTION_TRUNK
                       and k not in state]
            if missing:
                raise InceptionWeightsError(f"Inception-v3 weights lack trunk keys, e.g. {missing[:3]}; "
                                 f"expected torchvision's {INCEPTION_FILENAMES[0]}")
            trunk.load_state_dict(state, strict=False)
        for name in INCEPTION_TRUNK:
            self.add_module(name, getattr(trunk, name))
        for p in self.parameters():
            p.requires_grad_(False)
        self.emb_features = nn.Conv2d(768, nef, 1, 1, 0, bias=False)
        self.emb_cnn_code = nn.Linear(2048, nef)
        nn.init.uniform_(self.emb_features.weight, -0.1, 0.1)
        nn.init.uniform_(self.emb_cnn_code.weight, -0.1, 0.1)

    def forward(self, x: torch.Tensor):
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode='bilinear', align_corners=False)
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5b(x)
        x = self.Mixed_5c(x)
        x = self.Mixed_5d(x)
        x = self.Mixed_6a(x)
        x = self.Mixed_6b(x)
        x = self.Mixed_6c(x)
        x = self.Mixed_6d(x)
        features = self.Mixed_6e(x)             # B x 768 x 17 x 17
        x = self.Mixed_7a(features)
        x = self.Mixed_7b(x)
        x = self.Mixed_7c(x)                    # B x 2048 x 8 x 8
        x = F.avg_pool2d(x, kernel_size=x.shape[-2:]).flatten(1)   # 8 x 8 at 299, as the official
        return self.emb_features(features), self.emb_cnn_code(x)


class SmallImageEncoder(nn.Module):
    """A small DAMSM image encoder trained whole, for small-scale runs (``TEXT.IMAGE_ENCODER: small``).

    ``forward(images B x 3 x H x W in [-1, 1]) -> (region features B x nef x S/8 x S/8, global code
    B x nef)`` with S = ``input_size``; the same contract as ``CNN_ENCODER``, so the DAMSM losses,
    R-precision and the DAMSM term in G take either. A random, frozen Inception trunk cannot learn
    where on a bird a colour is; this network, every layer of it trained, can.
    """

    WIDTHS = (32, 64, 128, 256)    # stride 1, then three halvings: the region grid is S/8

    def __init__(self, nef: int = 256, input_size: int = 64):
        super().__init__()
        if input_size < 16 or input_size % 16:
            raise ValueError(f'SmallImageEncoder input_size={input_size}: must be a multiple of 16')
        self.nef = nef
        self.input_size = input_size
        layers, in_ch = [], 3
        for i, out_ch in enumerate(self.WIDTHS):
            stride, kernel = (1, 3) if i == 0 else (2, 4)
            layers += [nn.Conv2d(in_ch, out_ch, kernel, stride, 1, bias=False), nn.BatchNorm2d(out_ch),
                       nn.LeakyReLU(0.2, inplace=True)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.global_features = nn.Sequential(nn.Conv2d(in_ch, 2 * in_ch, 4, 2, 1, bias=False),
                                             nn.BatchNorm2d(2 * in_ch), nn.LeakyReLU(0.2, inplace=True))
        self.emb_features = nn.Conv2d(in_ch, nef, 1, 1, 0, bias=False)
        self.emb_cnn_code = nn.Linear(2 * in_ch, nef)

    def forward(self, x: torch.Tensor):
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode='bilinear', align_corners=False)
        regions = self.features(x)                                  # B x 256 x S/8 x S/8
        pooled = self.global_features(regions).mean(dim=(2, 3))     # B x 512
        return self.emb_features(regions), self.emb_cnn_code(pooled)


def build_image_encoder(kind: str, nef: int, input_size: int, inception_weights=None) -> nn.Module:
    """The DAMSM image encoder ``kind`` ('inception' or 'small'); ``inception_weights`` as for
    ``CNN_ENCODER`` (the small encoder has no pretrained trunk)."""
    if kind == 'inception':
        return CNN_ENCODER(nef, inception_weights=inception_weights, input_size=input_size)
    if kind == 'small':
        return SmallImageEncoder(nef, input_size=input_size)
    raise ValueError(f"image encoder '{kind}': must be 'inception' or 'small'")
