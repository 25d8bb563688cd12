"""Train DF-GAN, the SSA-GAN ablation rows and SSA-GAN on the synthetic birds with the same
budget, data, seed and DAMSM encoders; print one JSON line per row.

    python benchmarks/compare_models.py --out output/compare            # every row
    python benchmarks/compare_models.py --rows dfgan,ssagan --steps 500 --seeds 100,101,102

Stages, each skipped when its result is there (run the command again to continue):

1. the synthetic birds in ``--data-dir`` (``miscc.data.synthetic``; the demo's 2,000 / 500);
2. DAMSM encoders: ``--text-encoder`` (its ``image_encoder`` file beside it), else pretrained
   as the demo does (``cfg/DAMSM/demo.yml``'s trainer) into ``OUT/damsm``;
3. per row: ``main.py``'s trainer (``main_finetune.py``'s for the fine-tuning row) on the row's
   config with the shared overrides below, for ``--steps`` steps from scratch, then images for
   the first ``--eval-num`` test captions (noise ``SAMPLE.SEED``, the family's sampling noise).

Measures per row and seed: every attribute the captions name, the rate of images with every
named attribute right, the Frechet distance on the attribute judge's features and its species
IS analogue (``miscc.evaluation.judge.attribute_scores``; the judge is trained once per data set
and size), body-colour accuracy (``judge_body_colour``), R-precision with the pretrained DAMSM
encoders (the same judge for every row, also for the row that fine-tunes its own), training
steps, wall and process CPU seconds, ms per step and parameters. After the per-seed lines, one
``summary`` line per row: mean and standard deviation over its seeds of every score. Shared settings: ``--size`` px, ``TRAIN.NF --nf``, batch ``--batch``, learning rates
``--lr-scale`` x the official rates of the row's family (1e-4 / 4e-4 for SSA-GAN and DF-GAN,
2e-4 / 2e-4 for GAN-INT-CLS), ``TRAIN.SEED --seed``, the
D update with MA-GP on the real pass in one step (DF-GAN 2022's, SSA-GAN's ``TRAIN.FAST`` form
without bfloat16), no checkpoints. A (row, seed)'s line is also appended to ``OUT/results.jsonl`` with the settings;
those already there with the same settings are printed, not retrained, so a rerun trains only
what is missing.

Curves and grids: every row saves its generator each epoch; each file is scored as above
(without R-precision) into the line's ``curve``, and ``OUT/curves/<score>.png`` draws every
row's mean over its seeds against training steps. ``OUT/grid.png`` shows, for every row (its
first seed), the ten captions of ``cfg/demo.yml``'s ``DEMO.GRID_CAPTIONS`` with the same noise.

Adding a row is one entry in ``ROWS``; a row whose ``MODEL.NAME`` is not registered in
``miscc.families.FAMILIES`` prints a line with ``skipped`` instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time

import matplotlib
matplotlib.use('Agg')   # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from miscc.core.config import CHOICES, load_config  # noqa: E402
from miscc.core.files import read_jsonl  # noqa: E402
from miscc.data.synthetic import ensure_synthetic_birds, judge_body_colour  # noqa: E402
from miscc.data.synthetic import read_attributes  # noqa: E402
from miscc.demo import checkpoint_accuracies, real_test_images  # noqa: E402
from miscc.evaluation.generation import GenerationStack, generate_test_images, to_uint8_image  # noqa: E402
from miscc.evaluation.outputs import save_png  # noqa: E402
from miscc.evaluation.judge import attribute_scores, load_judge  # noqa: E402
from miscc.evaluation.scores import caption_r_precision  # noqa: E402
from miscc.families import FAMILIES  # noqa: E402
from miscc.training.damsm import DAMSMTrainer  # noqa: E402
from miscc.training.gan import GANTrainer  # noqa: E402
from miscc.training.state import find_latest_state, read_progress  # noqa: E402

# name: config, MODEL.NAME, fine-tuning, the paper row, and the CUB numbers the project's
# sources quote for it (IS, FID; 'report': the CUB report this project follows)
ROWS = {
    'dfgan': dict(cfg='cfg/bird_dfgan.yml', model='dfgan', finetune=False, paper='DF-GAN (2022 code)',
                  cub={'report': {'IS': '4.49 +- 0.06', 'FID': 20.96}, 'dfgan_2022_release': {'FID': 12.10}}),
    'ssagan_no_ssacn_no_damsm': dict(cfg='cfg/ablation/bird_no_ssacn_no_damsm.yml', model='ssagan', finetune=False,
                                     paper='SSA-GAN ablation: no SSACN, no DAMSM',
                                     cub={'paper': {'IS': 4.86, 'FID': 19.24}}),
    'ssagan_ssacn': dict(cfg='cfg/ablation/bird_ssacn.yml', model='ssagan', finetune=False,
                         paper='SSA-GAN ablation: SSACN', cub={'paper': {'IS': 4.97, 'FID': 18.54}}),
    'ssagan': dict(cfg='cfg/bird.yml', model='ssagan', finetune=False, paper='SSA-GAN (SSACN + DAMSM)',
                   cub={'paper': {'IS': 5.07, 'FID': 15.61}, 'report': {'IS': '4.91 +- 0.08', 'FID': 16.01}}),
    'dfgan_v1': dict(cfg='cfg/bird_dfgan.yml', model='dfgan_v1', finetune=False, paper='DF-GAN (2020 code)',
                     cub={}),
    # DF-GAN's ablation (its paper, CUB FID); 'OS-B w/ MA-GP w/ OW-O' is the 'dfgan' row
    'dfgan_osb': dict(cfg='cfg/ablation/bird_dfgan_osb.yml', model='dfgan', finetune=False,
                      paper='DF-GAN ablation: OS-B (two-way output, no MA-GP)', cub={'paper': {'FID': 43.45}}),
    'dfgan_osb_damsm': dict(cfg='cfg/ablation/bird_dfgan_osb_damsm.yml', model='dfgan', finetune=False,
                            paper='DF-GAN ablation: OS-B w/ DAMSM', cub={'paper': {'FID': 36.72}}),
    'dfgan_osb_magp': dict(cfg='cfg/ablation/bird_dfgan_osb_magp.yml', model='dfgan', finetune=False,
                           paper='DF-GAN ablation: OS-B w/ MA-GP', cub={'paper': {'FID': 32.52}}),
    'ssagan_finetune': dict(cfg='cfg/ablation/bird_ssacn_damsm_finetune.yml', model='ssagan', finetune=True,
                            paper='SSA-GAN ablation: SSACN + DAMSM, encoders fine-tuned',
                            cub={'paper': {'IS': 5.17, 'FID': 16.58}}),
    # GAN-INT-CLS (Reed et al. 2016); its official rates are 2e-4 for G and D (``lr``), scaled by
    # --lr-scale like the others'; its widths (``widths``: key -> multiple of --nf) keep its official
    # ratio to the other rows' TRAIN.NF (ngf = ndf = 64 against SSA-GAN's and DF-GAN's NF 32)
    'gan_int_cls': dict(cfg='cfg/bird_gan_int_cls.yml', model='gan_int_cls', finetune=False,
                        paper='GAN-INT-CLS', lr=(2e-4, 2e-4), cub={},
                        widths={'GAN_INT_CLS.NGF': 2, 'GAN_INT_CLS.NDF': 2}),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='output/compare', help='folder for the encoders, runs and results.jsonl')
    p.add_argument('--rows', default=','.join(ROWS), help=f'comma-separated rows of: {", ".join(ROWS)}')
    p.add_argument('--steps', type=int, default=250, help='training steps per row')
    p.add_argument('--size', type=int, default=64, help='image size, a power of two >= 32 (the demo: 32)')
    p.add_argument('--nf', type=int, default=8, help='TRAIN.NF of every row')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--lr-scale', type=float, default=4.0,
                   help="x the official rates 1e-4 (G) / 4e-4 (D) for every row (the demo's 4, docs/demo.md)")
    p.add_argument('--seed', type=int, default=100, help='the DAMSM stage\'s seed, and the rows\' when --seeds is empty')
    p.add_argument('--seeds', default='', help='comma-separated TRAIN seeds, each row trained once per seed (e.g. 100,101,102)')
    p.add_argument('--eval-num', type=int, default=500, help='test captions to generate for (>= 100)')
    p.add_argument('--data-dir', default='data/synthetic_birds')
    p.add_argument('--num-train', type=int, default=2000)
    p.add_argument('--num-test', type=int, default=500)
    p.add_argument('--synthetic-size', type=int, default=128)
    p.add_argument('--synthetic-seed', type=int, default=0)
    p.add_argument('--text-encoder', default='', help='pretrained DAMSM text encoder to use (image_encoder beside it)')
    p.add_argument('--damsm-epochs', type=int, default=0, help="DAMSM pretraining epochs (0: the demo's 4)")
    demo = load_config(os.path.join(ROOT, 'cfg', 'demo.yml'))
    p.add_argument('--image-encoder', default=demo.TEXT.IMAGE_ENCODER, choices=CHOICES['TEXT.IMAGE_ENCODER'],
                   help=f"TEXT.IMAGE_ENCODER (the demo's '{demo.TEXT.IMAGE_ENCODER}')")
    p.add_argument('--image-encoder-input', type=int, default=demo.TEXT.IMAGE_ENCODER_INPUT,
                   help=f"TEXT.IMAGE_ENCODER_INPUT (the demo's {demo.TEXT.IMAGE_ENCODER_INPUT})")
    p.add_argument('--stored-only', action='store_true',
                   help='train nothing: print, tabulate and draw the stored (row, seed) lines only')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: the default)')
    return p.parse_args(argv)


def settings_of(args) -> dict:
    """What a result depends on besides its row and seed (a stored line is reused only with the same settings)."""
    keys = ('steps', 'size', 'nf', 'batch', 'lr_scale', 'eval_num', 'data_dir', 'num_train', 'num_test',
            'synthetic_size', 'synthetic_seed', 'damsm_epochs', 'image_encoder', 'image_encoder_input', 'device')
    return {k: getattr(args, k) for k in keys}


def seeds_of(args) -> list:
    """The rows' training seeds: ``--seeds``, else ``[--seed]``."""
    try:
        seeds = [int(s) for s in args.seeds.split(',') if s.strip()] if args.seeds else [args.seed]
    except ValueError:
        sys.exit(f"--seeds: expected comma-separated integers, got '{args.seeds}'")
    return seeds


def damsm_encoder(args) -> str:
    """The text encoder file every row uses: ``--text-encoder``, or the demo's DAMSM stage
    (cfg/DAMSM/demo.yml) trained (or continued) into OUT/damsm."""
    if args.text_encoder:
        return args.text_encoder
    cfg = load_config(os.path.join(ROOT, 'cfg', 'DAMSM', 'demo.yml'), [
        'DATASET_NAME=synthetic_birds', f'DATA_DIR={args.data_dir}', f'OUTPUT_DIR={os.path.join(args.out, "damsm")}',
        f'DEVICE={args.device}', 'WORKERS=0', f'SEED={args.seed}', 'CONFIG_NAME=compare',
        f'TEXT.IMAGE_ENCODER_INPUT={args.image_encoder_input}', f'TEXT.IMAGE_ENCODER={args.image_encoder}',
        'DATA.CACHE=True',
        f'SYNTHETIC.NUM_TRAIN={args.num_train}', f'SYNTHETIC.NUM_TEST={args.num_test}',
        f'SYNTHETIC.IMAGE_SIZE={args.synthetic_size}', f'SYNTHETIC.SEED={args.synthetic_seed}']
        + ([f'TRAIN.MAX_EPOCH={args.damsm_epochs}', f'TRAIN.SNAPSHOT_INTERVAL={args.damsm_epochs}']
           if args.damsm_epochs else []))
    state = find_latest_state(cfg.OUTPUT_DIR, 'synthetic_birds_compare_')
    if state is not None and (read_progress(state) or {}).get('epoch', 0) >= cfg.TRAIN.MAX_EPOCH:
        run = os.path.dirname(os.path.dirname(state))
    else:
        cfg.RESTORE = state is not None
        with contextlib.redirect_stdout(sys.stderr):
            run = DAMSMTrainer(cfg.freeze()).fit()
    path = os.path.join(run, 'models', f'text_encoder{cfg.TRAIN.MAX_EPOCH}.pth')
    if not os.path.isfile(path):   # stopped early (Ctrl-C / SIGTERM): its state is saved
        sys.exit(f"the DAMSM stage stopped before '{path}'; run the same command again to continue it")
    return path


def row_config(args, name: str, text_encoder: str, seed: int):
    row = ROWS[name]
    steps_per_epoch = args.num_train // args.batch
    g_lr, d_lr = row.get('lr', (1e-4, 4e-4))   # the family's official rates
    overrides = [
        f'MODEL.NAME={row["model"]}', 'DATASET_NAME=synthetic_birds', f'DATA_DIR={args.data_dir}',
        f'OUTPUT_DIR={os.path.join(args.out, "runs", f"{name}_seed{seed}")}', f'CONFIG_NAME={name}',
        f'TEXT.DAMSM_NAME={text_encoder}',
        f'TEXT.IMAGE_ENCODER_INPUT={args.image_encoder_input}', f'TEXT.IMAGE_ENCODER={args.image_encoder}',
        f'TREE.BASE_SIZE={args.size}',
        f'TRAIN.NF={args.nf}', f'TRAIN.BATCH_SIZE={args.batch}', f'SEED={seed}', f'DEVICE={args.device}',
        'WORKERS=0', 'DATA.CACHE=True',
        f'TRAIN.GENERATOR_LR={g_lr * args.lr_scale}', f'TRAIN.DISCRIMINATOR_LR={d_lr * args.lr_scale}',
        f'TRAIN.MAX_EPOCH={math.ceil(args.steps / steps_per_epoch)}', f'TRAIN.MAX_STEPS={args.steps}',
        # the generator of every epoch (the curves), no discriminator files
        'TRAIN.WARMUP_EPOCHS=0', 'TRAIN.GSAVE_INTERVAL=1', 'TRAIN.DSAVE_INTERVAL=100000', 'TRAIN.LOG_INTERVAL=25',
        # SSA-GAN's fused D step (DF-GAN 2022's), in float32 like DF-GAN's
        'TRAIN.FAST=True', 'TRAIN.FAST_OPTIONS.BF16=False', 'TRAIN.FAST_OPTIONS.COMPILE=False',
        f'SYNTHETIC.NUM_TRAIN={args.num_train}', f'SYNTHETIC.NUM_TEST={args.num_test}',
        f'SYNTHETIC.IMAGE_SIZE={args.synthetic_size}', f'SYNTHETIC.SEED={args.synthetic_seed}',
    ] + [f'{key}={multiple * args.nf}' for key, multiple in row.get('widths', {}).items()]
    return load_config(os.path.join(ROOT, row['cfg']), overrides).freeze()


class Reference:
    """What every score of a row is measured against, read once per row: the birds' attributes,
    the real test images (as the generator sees them) and the attribute judge of that size."""

    def __init__(self, cfg):
        self.attrs = read_attributes(cfg.DATA_DIR)
        self.real = torch.stack(list(real_test_images(cfg).values()))
        self.judge = load_judge(cfg.DATA_DIR, cfg.TREE.BASE_SIZE, log=lambda *a: print(*a, file=sys.stderr))


def trainer_stack(cfg, trainer) -> GenerationStack:
    """The generation stack of the trainer's networks as they are in memory (eval mode)."""
    trainer.netG.eval()
    trainer.text_encoder.eval()
    return GenerationStack(cfg, trainer.family, trainer.netG, '', trainer.text_encoder, cfg.TEXT.DAMSM_NAME,
                           trainer.test_dataset, trainer.device)


@torch.no_grad()
def score_stack(cfg, stack, ref: Reference, judge_text_encoder: str | None, num: int) -> dict:
    """Every attribute (the attribute judge), body-colour accuracy and, given
    ``judge_text_encoder``, R-precision of the stack's images for the first ``num`` test captions."""
    images, keys, captions = [], [], []
    for batch in generate_test_images(stack, num, 50, seed=cfg.SAMPLE.SEED):
        images.append(batch.images)
        keys += batch.keys
        captions += batch.captions
    images = torch.cat(images)
    judged = judge_body_colour(images.permute(0, 2, 3, 1).numpy())
    accuracy = float(np.mean([j == ref.attrs[k]['body'] for j, k in zip(judged, keys)]))
    rp = caption_r_precision(cfg, judge_text_encoder, images, captions, keys) if judge_text_encoder else None
    attributes = attribute_scores(ref.judge, images, captions, keys, ref.attrs, ref.real)
    rp_fields = {'r_precision': round(rp['mean'], 4), 'r_precision_std': round(rp['std'], 4)} if rp else {}
    return {'images': len(images), 'body_colour_accuracy': round(accuracy, 4), **rp_fields,
            'attributes': {a: s['accuracy'] for a, s in attributes['attributes'].items()},
            'every_named_right': attributes['every_named_right'],
            'judge_frechet_distance': attributes['frechet_distance'],
            'judge_species_score': attributes['species_score']['generated']['mean']}


def curve(cfg, ref: Reference, run_dir: str, steps_per_epoch: int, num: int) -> list:
    """The scores of every ``netG_XXX.pth`` of ``run_dir`` (its own text encoder when fine-tuned):
    the demo's ``checkpoint_accuracies`` with this script's field names."""
    return [{'epoch': row['epoch'], 'step': min(row['epoch'] * steps_per_epoch, cfg.TRAIN.MAX_STEPS),
             'body_colour_accuracy': row['body_colour_accuracy'], 'attributes': row['attributes'],
             'every_named_right': row['every_named_right'], 'judge_frechet_distance': row['frechet_distance'],
             'judge_species_score': row['species_score']}
            for row in checkpoint_accuracies(cfg, '', run_dir, num, ref.judge)]


@torch.no_grad()
def caption_strip(cfg, trainer, captions: list) -> np.ndarray:
    """1 x len(captions) images (uint8 S x S*len x 3) of ``captions``, noise ``SAMPLE.SEED`` 0..len-1."""
    stack = trainer_stack(cfg, trainer)
    caps, lens, _ = stack.encode(list(captions))
    images, _ = stack.generate(stack.noise(range(len(caps)), cfg.SAMPLE.SEED), stack.sentences(caps, lens))
    images = to_uint8_image(images).permute(0, 2, 3, 1).cpu().numpy()
    return np.concatenate(list(images), axis=1)


def save_grid(strips: dict, captions: list, path: str) -> None:
    """One row per model row (its name on the left), one column per caption (numbered on top)."""
    size = next(iter(strips.values())).shape[0]
    label, pad, top = 200, 2, 16
    canvas = Image.new('RGB', (label + len(captions) * (size + pad), top + len(strips) * (size + pad)), 'white')
    draw = ImageDraw.Draw(canvas)
    for col in range(len(captions)):
        draw.text((label + col * (size + pad) + 2, 2), str(col + 1), fill='black')
    for row, (name, strip) in enumerate(strips.items()):
        y = top + row * (size + pad)
        draw.text((4, y + 4), name, fill='black')
        for col in range(len(captions)):
            canvas.paste(Image.fromarray(strip[:, col * size:(col + 1) * size]), (label + col * (size + pad), y))
    save_png(np.asarray(canvas), path)
    with open(os.path.splitext(path)[0] + '_captions.txt', 'w', encoding='utf-8') as f:
        f.write(''.join(f'{i + 1}. {c}\n' for i, c in enumerate(captions)))


CURVE_FIELDS = ('every_named_right', 'body_colour_accuracy', 'judge_frechet_distance', 'judge_species_score')


def save_curves(lines_by_row: dict, out_dir: str) -> list:
    """``out_dir/<score>.png`` per score: each row's mean over its seeds against training steps."""
    os.makedirs(out_dir, exist_ok=True)
    first = next(line for lines in lines_by_row.values() for line in lines if line.get('curve'))
    fields = list(CURVE_FIELDS) + [f'attribute_{a}' for a, v in first['curve'][-1]['attributes'].items()
                                   if v is not None]
    paths = []
    for field in fields:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        for name, lines in lines_by_row.items():
            curves = [line['curve'] for line in lines if line.get('curve')]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = [p['step'] for p in curves[0][:n]]
            get = ((lambda p, a=field[len('attribute_'):]: p['attributes'][a]) if field.startswith('attribute_')
                   else (lambda p: p[field]))
            ys = np.array([[get(p) for p in c[:n]] for c in curves], dtype=float)
            ax.plot(steps, ys.mean(axis=0), marker='o', ms=2, label=name)
        ax.set(xlabel='training steps', ylabel=field, title=f'{field} (mean over seeds)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f'{field}.png')
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


# The orderings the papers state: (claim, better row, other row). Each is checked on every
# named right (higher is better) and the judge's Frechet distance (lower is better).
CLAIMS = (('SSA-GAN over DF-GAN', 'ssagan', 'dfgan'),
          ('SSACN over no SSACN (SSA-GAN ablation)', 'ssagan_ssacn', 'ssagan_no_ssacn_no_damsm'),
          ('DAMSM helps (SSA-GAN ablation: SSACN + DAMSM over SSACN)', 'ssagan', 'ssagan_ssacn'),
          ('fine-tuning the encoders helps (SSA-GAN ablation)', 'ssagan_finetune', 'ssagan'),
          ('DAMSM helps (DF-GAN ablation: OS-B w/ DAMSM over OS-B)', 'dfgan_osb_damsm', 'dfgan_osb'),
          ('MA-GP helps (DF-GAN ablation: OS-B w/ MA-GP over OS-B)', 'dfgan_osb_magp', 'dfgan_osb'),
          ('one-way over two-way output (DF-GAN ablation)', 'dfgan', 'dfgan_osb_magp'))


def claim_lines(summaries: dict) -> list:
    """One line per claim whose two rows were run: agrees or not, the difference of the means
    and its spread (the root of the sum of the two standard deviations squared) over seeds."""
    lines = []
    for claim, better, other in CLAIMS:
        if better not in summaries or other not in summaries:
            continue
        parts = []
        for field, sign in (('every_named_right', 1), ('judge_frechet_distance', -1)):
            a, b = summaries[better][field], summaries[other][field]
            diff, spread = a['mean'] - b['mean'], math.hypot(a['std'], b['std'])
            verdict = 'agrees' if sign * diff > 0 else 'disagrees'
            if abs(diff) <= spread:
                verdict += ' (within the spread)'
            parts.append(f'{field} {a["mean"]:.3f} vs {b["mean"]:.3f}: {verdict}, difference {diff:+.3f} +- {spread:.3f}')
        lines.append(f'{claim} ({better} vs {other}): ' + '; '.join(parts))
    return lines


def markdown_table(summaries: dict) -> str:
    """The summary lines as a markdown table: mean +- std over the seeds."""
    attrs = sorted({k for s in summaries.values() for k in s if k.startswith('attribute_')})
    fields = attrs + ['every_named_right', 'judge_frechet_distance', 'judge_species_score', 'r_precision',
                      'seconds', 'ms_per_step']
    head = ['row (config)', 'seeds'] + [f.replace('attribute_', '') for f in fields] + ['parameters G / D']
    rows = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for name, s in summaries.items():
        cells = [f"{name} (`{ROWS[name]['cfg']}`)", str(len(s['seeds']))]
        cells += [f"{s[f]['mean']:.3f} +- {s[f]['std']:.3f}" if f in s else '' for f in fields]
        cells.append(f"{s['parameters_G']:,} / {s['parameters_D']:,}")
        rows.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(rows) + '\n'


# the per-seed scores the summary line averages (attribute accuracies are added by name)
SUMMARY_FIELDS = ('body_colour_accuracy', 'every_named_right', 'judge_frechet_distance', 'judge_species_score',
                  'r_precision', 'seconds', 'ms_per_step')


def summarise(name: str, lines: list) -> dict:
    """Mean and standard deviation (numpy's, ddof 0) over a row's seed lines of every score."""
    values = {f: [line[f] for line in lines] for f in SUMMARY_FIELDS}
    for a in lines[0]['attributes']:
        if all(line['attributes'][a] is not None for line in lines):
            values[f'attribute_{a}'] = [line['attributes'][a] for line in lines]
    return {'summary': name, 'seeds': [line['seed'] for line in lines],
            'parameters_G': lines[0]['parameters_G'], 'parameters_D': lines[0]['parameters_D'],
            **{k: {'mean': round(float(np.mean(v)), 4), 'std': round(float(np.std(v)), 4)} for k, v in values.items()}}


def run_row(args, name: str, text_encoder: str, seed: int) -> dict:
    row = ROWS[name]
    line = {'row': name, 'seed': seed, 'paper_row': row['paper'], 'model': row['model'], 'config': row['cfg'],
            'script': 'main_finetune.py' if row['finetune'] else 'main.py'}
    if row['model'] not in FAMILIES:
        return dict(line, skipped=f"MODEL.NAME '{row['model']}' is not registered in miscc.families.FAMILIES")
    cfg = row_config(args, name, text_encoder, seed)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(sys.stderr):   # the trainer's messages; stdout is for the JSON lines
        trainer = GANTrainer(cfg, finetune=row['finetune'])
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.fit()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    steps = trainer.global_step
    params = {k: sum(p.numel() for p in net.parameters()) for k, net in trainer.nets.items()}
    line.update(steps=steps, seconds=round(wall, 1), cpu_seconds=round(cpu, 1),
                ms_per_step=round(1000 * wall / max(steps, 1), 1), cpu_ms_per_step=round(1000 * cpu / max(steps, 1), 1),
                parameters_G=params[trainer.family.networks[0]],
                parameters_D=sum(v for k, v in params.items() if k != trainer.family.networks[0]))
    ref = Reference(cfg)
    line.update(score_stack(cfg, trainer_stack(cfg, trainer), ref, text_encoder, args.eval_num))
    line['curve'] = curve(cfg, ref, trainer.run_dir, args.num_train // args.batch, args.eval_num)
    if seed == seeds_of(args)[0]:
        save_png(caption_strip(cfg, trainer, grid_captions()), os.path.join(args.out, 'grids', f'{name}.png'))
    line['cub'] = row['cub']
    return line


def grid_captions() -> list:
    """The demo's ten grid captions (cfg/demo.yml DEMO.GRID_CAPTIONS)."""
    return list(load_config(os.path.join(ROOT, 'cfg', 'demo.yml')).DEMO.GRID_CAPTIONS)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [r.strip() for r in args.rows.split(',') if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"--rows: unknown row(s) {', '.join(unknown)}; known: {', '.join(ROWS)}")
    if args.eval_num < 100:
        sys.exit('--eval-num must be at least 100 (R-precision draws 99 mismatching captions)')
    seeds = seeds_of(args)
    os.makedirs(args.out, exist_ok=True)
    ensure_synthetic_birds(args.data_dir, args.num_train, args.num_test, args.synthetic_size, args.synthetic_seed)
    text_encoder = damsm_encoder(args)
    settings = dict(settings_of(args), text_encoder=os.path.abspath(text_encoder))
    results = os.path.join(args.out, 'results.jsonl')
    done = {}
    if os.path.isfile(results):
        for entry in read_jsonl(results):
            if entry.get('settings') == settings and 'seed' in entry:
                done[entry['row'], entry['seed']] = entry
    summaries = []
    for name in rows:
        lines = []
        for seed in seeds:
            line = done.get((name, seed))
            if line is None and args.stored_only:
                print(f'{name}, seed {seed}: not stored, not trained (--stored-only)', file=sys.stderr)
                continue
            if line is None:
                line = run_row(args, name, text_encoder, seed)
                line['settings'] = settings
                if 'skipped' not in line:
                    with open(results, 'a', encoding='utf-8') as f:
                        f.write(json.dumps(line) + '\n')
            print(json.dumps({k: v for k, v in line.items() if k != 'settings'}), flush=True)
            if 'skipped' not in line:
                lines.append(line)
        if lines:
            summaries.append(summarise(name, lines))
    for summary in summaries:
        print(json.dumps(summary), flush=True)
    by_row = {s['summary']: s for s in summaries}
    if by_row:
        with open(os.path.join(args.out, 'table.md'), 'w', encoding='utf-8') as f:
            f.write(markdown_table(by_row))
            f.write(''.join(f'\n- {line}' for line in claim_lines(by_row)) + '\n')
    for line in claim_lines(by_row):
        print(json.dumps({'claim': line}), flush=True)
    trained = {name: [done.get((name, s)) or {} for s in seeds] for name in rows}   # {} = not run
    for entry in read_jsonl(results):    # this invocation's new lines too
        if entry.get('settings') == settings and entry.get('row') in trained and entry.get('seed') in seeds:
            trained[entry['row']][seeds.index(entry['seed'])] = entry
    if any(line.get('curve') for lines in trained.values() for line in lines):
        save_curves(trained, os.path.join(args.out, 'curves'))
    strips = {name: np.asarray(Image.open(os.path.join(args.out, 'grids', f'{name}.png')).convert('RGB'))
              for name in rows if os.path.isfile(os.path.join(args.out, 'grids', f'{name}.png'))}
    if strips:
        save_grid(strips, grid_captions(), os.path.join(args.out, 'grid.png'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
