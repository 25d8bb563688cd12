"""Body-colour accuracy of every generator checkpoint of a demo run; one JSON line each (with
--attributes also the attribute judge's accuracy on every attribute the captions name).

    python benchmarks/demo_accuracy.py --cfg cfg/demo.yml
    python benchmarks/demo_accuracy.py --cfg cfg/demo.yml OUTPUT_DIR=/tmp/long --num 500
    python benchmarks/demo_accuracy.py --cfg cfg/demo.yml --attributes

Scores ``netG_XXX.pth`` of the latest GAN run under ``OUTPUT_DIR/gan`` with the demo's DAMSM
text encoder, on the images the demo's generate stage makes (the same captions and noise), so
the last checkpoint's line repeats ``report.json``'s ``body_colour_accuracy.generated``.
The accuracy changes a lot from one epoch to the next; this shows the whole curve.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from miscc.core.config import ConfigError, load_config  # noqa: E402
from miscc.demo import checkpoint_accuracies, finished_demo_runs  # noqa: E402
from miscc.evaluation.judge import load_judge  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cfg', default='cfg/demo.yml', help='the demo config the run was made with')
    parser.add_argument('--num', type=int, default=None, help='test captions to score (default: all)')
    parser.add_argument('--attributes', action='store_true',
                        help="also the attribute judge's scores (miscc/evaluation/judge.py; trained once, cached)")
    parser.add_argument('overrides', nargs='*', help='KEY=VALUE config overrides, as given to main.py')
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.cfg, args.overrides).freeze()
        text_encoder, run = finished_demo_runs(cfg)
        judge = load_judge(cfg.DATA_DIR, cfg.TREE.BASE_SIZE) if args.attributes else None
        for row in checkpoint_accuracies(cfg, text_encoder, run, args.num, judge):
            print(json.dumps(row), flush=True)
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
