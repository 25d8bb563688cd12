"""How much of each attribute a DAMSM text encoder's sentence codes carry, on the synthetic birds:
a linear classifier per attribute, trained on the codes of the training captions that name it,
scored on the test captions that name it (which captions name what: ``caption_attributes``).

    python benchmarks/text_code_probe.py output/demo/damsm/<run>/models/text_encoder4.pth [more encoders]

Prints one JSON line per encoder: the accuracy of each attribute (chance 0.1 for the colours,
0.5 for size). A text encoder whose codes do not separate an attribute cannot tell the generator
about it; one whose codes do, leaves the rest to the generator.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import TextDataset  # noqa: E402
from miscc.cli import USER_ERRORS  # noqa: E402
from miscc.core.config import load_config  # noqa: E402
from miscc.data.synthetic import PALETTE, SIZES, caption_attributes  # noqa: E402
from miscc.evaluation.generation import decode_caption  # noqa: E402
from miscc.evaluation.judge import CAPTION_ATTRIBUTES  # noqa: E402
from miscc.evaluation.scores import sentence_codes  # noqa: E402
from miscc.families.encoders import load_text_encoder, text_encoder_vocab_size  # noqa: E402

VALUES = {a: list(SIZES) if a == 'size' else list(PALETTE) for a in CAPTION_ATTRIBUTES}


@torch.no_grad()
def split_codes(encoder, dataset: TextDataset) -> tuple:
    """(codes N x D, named attributes per caption) of every caption of the split, in order."""
    caps = [dataset.caption_tensor(i) for i in range(len(dataset.captions))]
    codes = sentence_codes(encoder, torch.stack([c for c, _ in caps]), torch.tensor([max(1, n) for _, n in caps]),
                           batch=500)
    return codes, [caption_attributes(decode_caption(cap, dataset.ixtoword)) for cap in dataset.captions]


def probe(train: tuple, test: tuple, attribute: str, steps: int = 300) -> float:
    """Test accuracy of a linear classifier (Adam on standardised codes) for one attribute."""
    def rows(split):
        codes, named = split
        idx = [i for i, n in enumerate(named) if attribute in n]
        return codes[idx], torch.tensor([VALUES[attribute].index(named[i][attribute]) for i in idx])
    (x, y), (xt, yt) = rows(train), rows(test)
    mean, std = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], len(VALUES[attribute]))
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(layer((x - mean) / std), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return round(float((layer((xt - mean) / std).argmax(1) == yt).float().mean()), 4)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('encoders', nargs='+', help='DAMSM text encoder files (text_encoder<epoch>.pth)')
    parser.add_argument('--cfg', default='cfg/demo.yml', help='config of the synthetic birds (DATA_DIR, TEXT.*)')
    parser.add_argument('overrides', nargs='*', metavar='KEY=VALUE', default=[])
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.cfg, args.overrides).freeze()
        for path in args.encoders:
            n_words = text_encoder_vocab_size(path)
            splits = [TextDataset(cfg.DATA_DIR, s, cfg.TREE.BASE_SIZE, cfg.TEXT.CAPTIONS_PER_IMAGE, cfg.TEXT.WORDS_NUM,
                                  dataset_name='synthetic_birds', augment=False, expected_vocab_size=n_words,
                                  text_encoder=path) for s in ('train', 'test')]
            encoder = load_text_encoder(cfg, path, n_words, 'cpu').eval()
            train, test = (split_codes(encoder, d) for d in splits)
            accuracy = {a: probe(train, test, a) for a in CAPTION_ATTRIBUTES}
            print(json.dumps({'encoder': path, 'probe_accuracy': accuracy}), flush=True)
    except USER_ERRORS as e:        # a missing or foreign encoder file, a data set that is not the birds
        print(f'text_code_probe.py: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
