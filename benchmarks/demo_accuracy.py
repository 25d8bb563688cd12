"""Body-colour accuracy of every generator checkpoint of a demo run; one JSON line each (with
--attributes also the attribute judge's accuracy on every attribute the captions name).

    python benchmarks/demo_accuracy.py --cfg cfg/demo.yml
    python benchmarks/demo_accuracy.py --cfg cfg/demo.yml OUTPUT_DIR=/tmp/long --num 500
    python benchmarks/demo_accuracy.py --cfg cfg/demo.yml --attributes
    python benchmarks/demo_accuracy.py --cfg cfg/demo.yml --attributes --plot docs/demo_attributes.png

Scores ``netG_XXX.pth`` of the latest GAN run under ``OUTPUT_DIR/gan`` with the demo's DAMSM
text encoder, on the images the demo's generate stage makes (the same captions and noise), so
the last checkpoint's line repeats ``report.json``'s ``body_colour_accuracy.generated``.
The accuracy changes a lot from one epoch to the next; this shows the whole curve.

``--plot PNG`` draws every judgeable attribute, every-named-right and body-colour accuracy
against the demo's minutes when each checkpoint was written: the data and DAMSM stages'
seconds (``stage_seconds.json``) plus the GAN stage's seconds up to that file (its seconds in
``stage_seconds.json`` less the time from that file to the last checkpoint's).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import matplotlib
matplotlib.use('Agg')   # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from miscc.core.config import ConfigError, load_config  # noqa: E402
from miscc.core.files import read_json  # noqa: E402
from miscc.demo import checkpoint_accuracies, finished_demo_runs  # noqa: E402
from miscc.evaluation.judge import load_judge  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cfg', default='cfg/demo.yml', help='the demo config the run was made with')
    parser.add_argument('--num', type=int, default=None, help='test captions to score (default: all)')
    parser.add_argument('--attributes', action='store_true',
                        help="also the attribute judge's scores (miscc/evaluation/judge.py; trained once, cached)")
    parser.add_argument('--plot', default='', help='PNG of every score against the demo\'s minutes (needs --attributes)')
    parser.add_argument('overrides', nargs='*', help='KEY=VALUE config overrides, as given to main.py')
    args = parser.parse_args(argv)
    if args.plot and not args.attributes:
        parser.error('--plot draws the attribute scores: add --attributes')
    try:
        cfg = load_config(args.cfg, args.overrides).freeze()
        text_encoder, run = finished_demo_runs(cfg)
        judge = load_judge(cfg.DATA_DIR, cfg.TREE.BASE_SIZE) if args.attributes else None
        rows = []
        for row in checkpoint_accuracies(cfg, text_encoder, run, args.num, judge):
            row['minutes'] = None
            rows.append(row)
        if rows:
            seconds_file = os.path.join(cfg.OUTPUT_DIR, 'stage_seconds.json')
            stages = read_json(seconds_file) if os.path.isfile(seconds_file) else {}
            minutes = checkpoint_minutes([r['checkpoint'] for r in rows], stages)
            for row, m in zip(rows, minutes):
                row['minutes'] = m
        for row in rows:
            print(json.dumps(row), flush=True)
        if args.plot:
            plot_scores(rows, args.plot, f'{cfg.OUTPUT_DIR} ({os.path.basename(run)})')
            print(json.dumps({'plot': args.plot}), flush=True)
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


def checkpoint_minutes(paths: list, stages: dict) -> list:
    """The demo's minutes at which each checkpoint file was written (see the module's note)."""
    before = stages.get('data', 0.0) + stages.get('damsm', 0.0)
    last = os.path.getmtime(paths[-1])
    gan = stages.get('gan', 0.0)
    return [round((before + gan - (last - os.path.getmtime(p))) / 60.0, 2) for p in paths]


def plot_scores(rows: list, path: str, title: str) -> None:
    """One line per judgeable attribute, every-named-right and body colour against minutes."""
    x = [r['minutes'] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name in rows[-1]['attributes']:
        if rows[-1]['attributes'][name] is not None:
            ax.plot(x, [r['attributes'][name] for r in rows], marker='o', ms=3, label=f'{name} colour'
                    if name in ('body', 'wing', 'head', 'beak') else name)
    ax.plot(x, [r['every_named_right'] for r in rows], marker='s', ms=3, color='black', label='every named right')
    ax.axhline(0.1, color='grey', lw=0.8, ls=':', label='chance (colours)')
    ax.set(xlabel='minutes of the demo (data + DAMSM + GAN stages)', ylabel='accuracy on the test captions',
           ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc='upper left', fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == '__main__':
    sys.exit(main())
