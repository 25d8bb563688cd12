"""The demo: the whole pipeline on the built-in synthetic birds, in one resumable command.

``python main.py --cfg cfg/demo.yml`` (a config with ``DEMO.RUN: True``) runs five stages,
each through the same code as the full-scale scripts, into ``OUTPUT_DIR``:

1. ``data``: create the synthetic birds in ``DATA_DIR`` unless they are there, and train the
   attribute judge on them unless it is cached (``miscc/evaluation/judge.py``).
2. ``damsm``: pretrain the DAMSM encoders (``pretrain_DAMSM.py``'s trainer, config
   ``DEMO.DAMSM_CFG``) into ``OUTPUT_DIR/damsm``.
3. ``gan``: train SSA-GAN (``main.py``'s trainer) with those encoders into ``OUTPUT_DIR/gan``.
4. ``generate``: images for the test captions with masks and ``manifest.jsonl`` into
   ``OUTPUT_DIR/generated``, and a grid for ``DEMO.GRID_CAPTIONS`` into ``OUTPUT_DIR/captions``.
5. ``report``: ``OUTPUT_DIR/report.json`` with R-precision and body-colour accuracy of the
   generated images, and the same measures on the real test images as the ceiling; the attribute
   judge's accuracy on every attribute the captions name (``attribute_scores``).

Running the command again skips finished stages and continues an interrupted one.

``DEMO.TIME_BUDGET`` (seconds, 0: none) bounds the demo's wall-clock time, counted over every
invocation on ``OUTPUT_DIR`` (``stage_seconds.json``, which keeps the running stage's seconds
at each training state it saves, so a killed run keeps them): the GAN stage gets what data and
damsm left less ``DEMO.RESERVE_SECONDS`` and stops at the first step boundary past it. The
images and report then come from the generator of that step (``netG_stepNNNNNN.pth``) and the
report says the run was cut. Running the demo again with the budget spent trains no further;
a larger budget, or 0, continues the saved training state.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from datasets import RealImageDataset

from .core.checkpoint import step_checkpoint
from .core.config import ConfigError, load_config
from .core.files import read_json, write_json
from .data.synthetic import ensure_synthetic_birds, judge_body_colour, read_attributes
from .evaluation.generation import (generate, generate_test_images, generator_text_encoder, load_generation_stack,
                                    sampling_checkpoint, to_uint8_image)
from .evaluation.outputs import other_generator, read_manifest, save_png
from .evaluation.judge import attribute_scores, load_judge
from .evaluation.scores import caption_r_precision
from .training.damsm import DAMSMTrainer
from .training.gan import GANTrainer
from .training.state import STATE_NAME, find_latest_state, read_progress

__all__ = ['STAGES', 'run_demo', 'damsm_config', 'gan_config', 'finished_demo_runs', 'body_colour_accuracy',
           'body_colour_confusion', 'checkpoint_accuracies', 'caption_grid', 'StageClock', 'gan_seconds_allowed']

STAGES = ('data', 'damsm', 'gan', 'generate', 'report')


class StageClock:
    """Seconds spent on each stage, summed over the invocations that worked on it, kept in
    ``path`` (``stage_seconds.json``) and written atomically at the end of a stage (also one
    that failed) and at every ``checkpoint`` (each training state a stage saves), so a run
    killed with -9 keeps the seconds up to its last saved state. ``now``: the clock."""

    def __init__(self, path: str, now=time.time):
        self.path, self.now = path, now
        self.times = read_json(path) if os.path.isfile(path) else {}
        self.stage = None

    def begin(self, name: str) -> None:
        self.stage, self.base, self.started = name, self.times.get(name, 0.0), self.now()

    def checkpoint(self, *_) -> None:
        """Record the running stage's seconds so far (``Driver.fit``'s ``on_save`` hook)."""
        self.times[self.stage] = round(self.base + self.now() - self.started, 1)
        write_json(self.path, self.times)

    def end(self) -> None:
        self.checkpoint()
        self.stage = None

    def deadline(self, allowed: float) -> float:
        """The ``now()`` value at which the running stage's seconds, earlier invocations
        included, reach ``allowed``."""
        return self.started + allowed - self.base


def gan_seconds_allowed(cfg, times: dict) -> float | None:
    """The seconds the GAN stage may take in all (over every invocation, as ``stage_seconds.json``
    counts them) under ``DEMO.TIME_BUDGET``: the budget less the data and damsm stages' seconds
    and ``DEMO.RESERVE_SECONDS``; None without a budget. May be negative (nothing left)."""
    demo = cfg.DEMO
    if not demo.TIME_BUDGET:
        return None
    return round(demo.TIME_BUDGET - demo.RESERVE_SECONDS - times.get('data', 0.0) - times.get('damsm', 0.0), 1)


def damsm_config(cfg):
    """The DAMSM stage's config: ``DEMO.DAMSM_CFG`` with this config's data set, seed,
    device and workers, writing under ``OUTPUT_DIR/damsm``; frozen."""
    shared = [f'DATASET_NAME={cfg.DATASET_NAME}', f'DATA_DIR={cfg.DATA_DIR}', f'SEED={cfg.SEED}',
              f'DEVICE={cfg.DEVICE}', f'WORKERS={cfg.WORKERS}', 'CONFIG_NAME=demo',
              f'OUTPUT_DIR={os.path.join(cfg.OUTPUT_DIR, "damsm")}', f'DATA.CACHE={cfg.DATA.CACHE}',
              f'TEXT.IMAGE_ENCODER_INPUT={cfg.TEXT.IMAGE_ENCODER_INPUT}', f'TEXT.IMAGE_ENCODER={cfg.TEXT.IMAGE_ENCODER}',
              f'TEXT.EMBEDDING_DIM={cfg.TEXT.EMBEDDING_DIM}']
    shared += [f'SYNTHETIC.{k}={cfg.SYNTHETIC[k]}' for k in ('NUM_TRAIN', 'NUM_TEST', 'IMAGE_SIZE', 'SEED')]
    return load_config(cfg.DEMO.DAMSM_CFG, shared).freeze()


def gan_config(cfg, text_encoder: str):
    """The GAN stage's config: this one with the DAMSM stage's text encoder, writing under
    ``OUTPUT_DIR/gan`` and continuing the run there if one exists; frozen."""
    gan = cfg.clone()
    gan.TEXT.DAMSM_NAME = text_encoder
    gan.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, 'gan')
    gan.CONFIG_NAME = 'demo'
    gan.RESTORE = find_latest_state(gan.OUTPUT_DIR, f'{gan.DATASET_NAME}_demo_') is not None
    return gan.freeze()


# ----------------------------------------------------------------------------- stages
def _stage_data(cfg):
    s = cfg.SYNTHETIC
    ensure_synthetic_birds(cfg.DATA_DIR, s.NUM_TRAIN, s.NUM_TEST, s.IMAGE_SIZE, s.SEED)
    # the report's attribute judge, trained here once per data set and size (cached), so that the
    # GAN stage's share of the budget counts its seconds
    judge = load_judge(cfg.DATA_DIR, cfg.TREE.BASE_SIZE)
    return {'data_dir': cfg.DATA_DIR, 'judge': judge.path}


def _finished_run(output_dir: str, prefix: str, max_epoch: int):
    """Run folder under ``output_dir`` whose training state reached ``max_epoch``, or None."""
    state = find_latest_state(output_dir, prefix)
    if state is None:
        return None, False
    progress = read_progress(state) or {}
    return os.path.dirname(os.path.dirname(state)), progress.get('epoch', 0) >= max_epoch


def _text_encoder_file(run: str, dcfg) -> str:
    return os.path.join(run, 'models', f'text_encoder{dcfg.TRAIN.MAX_EPOCH}.pth')


def finished_demo_runs(cfg) -> tuple[str, str]:
    """(text encoder file, GAN run folder) of the demo in ``cfg.OUTPUT_DIR``: its finished DAMSM
    stage and its latest GAN run, finished or not. ConfigError when either is missing."""
    dcfg = damsm_config(cfg)
    damsm_run, done = _finished_run(dcfg.OUTPUT_DIR, f'{dcfg.DATASET_NAME}_demo_', dcfg.TRAIN.MAX_EPOCH)
    text_encoder = _text_encoder_file(damsm_run, dcfg) if damsm_run else None
    if not done or not os.path.isfile(text_encoder):
        raise ConfigError(f"no finished DAMSM stage under '{dcfg.OUTPUT_DIR}': run the demo "
                          f"(python main.py --cfg <demo config> OUTPUT_DIR={cfg.OUTPUT_DIR}) first")
    gan_dir = os.path.join(cfg.OUTPUT_DIR, 'gan')
    gan_run, _ = _finished_run(gan_dir, f'{cfg.DATASET_NAME}_demo_', cfg.TRAIN.MAX_EPOCH)
    if gan_run is None:
        raise ConfigError(f"no GAN run under '{gan_dir}': run the demo's GAN stage first")
    return text_encoder, gan_run


def _stage_damsm(cfg, clock: StageClock):
    dcfg = damsm_config(cfg)
    prefix = f'{dcfg.DATASET_NAME}_demo_'
    run, done = _finished_run(dcfg.OUTPUT_DIR, prefix, dcfg.TRAIN.MAX_EPOCH)
    if not done:
        if run is not None:
            dcfg = dcfg.clone()
            dcfg.RESTORE = True
            dcfg.freeze()
        run = DAMSMTrainer(dcfg).fit(on_save=clock.checkpoint)
    text_encoder = _text_encoder_file(run, dcfg)
    if not os.path.isfile(text_encoder):
        raise ConfigError(f"{cfg.DEMO.DAMSM_CFG}: the DAMSM stage ended without '{text_encoder}'; "
                          f"TRAIN.SNAPSHOT_INTERVAL must divide TRAIN.MAX_EPOCH")
    return {'run': run, 'text_encoder': text_encoder}


def _stage_gan(cfg, text_encoder: str, clock: StageClock, allowed: float | None):
    """Train (or continue) the GAN run until TRAIN.MAX_EPOCH, TRAIN.MAX_STEPS or the budget's
    deadline (``allowed`` seconds for this stage over all invocations; None: no budget). A run
    that ended before TRAIN.MAX_EPOCH generates from the generator of its last step."""
    gcfg = gan_config(cfg, text_encoder)
    run, done = _finished_run(gcfg.OUTPUT_DIR, f'{gcfg.DATASET_NAME}_demo_', gcfg.TRAIN.MAX_EPOCH)
    deadline = None if allowed is None else clock.deadline(allowed)
    trainer, cut = None, False
    if not done:
        if run is not None and deadline is not None and clock.now() >= deadline:
            # an earlier invocation spent the budget: generate from its state, do not train on
            cut = True
            print(f"DEMO.TIME_BUDGET={cfg.DEMO.TIME_BUDGET} s is spent (the GAN stage may take {allowed} s, "
                  f"{clock.times.get('gan', 0.0)} s taken): no further training of '{run}'; a larger "
                  f"DEMO.TIME_BUDGET, or 0 (none), continues it", file=sys.stderr)
        else:
            trainer = GANTrainer(gcfg)
            run = trainer.fit(deadline, on_save=clock.checkpoint)
            cut = trainer.driver.deadline_cut
    progress = read_progress(os.path.join(run, 'models', STATE_NAME))
    if progress['epoch'] >= gcfg.TRAIN.MAX_EPOCH:
        netg = os.path.join(run, 'models', f'netG_{gcfg.TRAIN.MAX_EPOCH:03d}.pth')
        if not os.path.isfile(netg):
            raise ConfigError(f"the demo's GAN stage ended without '{netg}'; TRAIN.GSAVE_INTERVAL must divide "
                              f"TRAIN.MAX_EPOCH and TRAIN.WARMUP_EPOCHS be below it")
    else:   # cut by the budget or stopped at TRAIN.MAX_STEPS: the generator of the last step
        netg = step_checkpoint(os.path.join(run, 'models'), progress['global_step'])
        if not os.path.isfile(netg):   # (a run killed between its state and this file: load the state)
            netg = (trainer or GANTrainer(gcfg)).save_step_generator()
        if cut:
            print(f"DEMO.TIME_BUDGET={cfg.DEMO.TIME_BUDGET} s: the GAN stage was cut at step {progress['global_step']} "
                  f"({progress['epoch']} of {gcfg.TRAIN.MAX_EPOCH} epochs complete); generating from "
                  f"'{netg}'", file=sys.stderr)
    return {'run': run, 'netG': netg, 'samples': os.path.join(run, 'samples'), 'steps': progress['global_step'],
            'cut': cut}


def _generation_config(cfg, text_encoder: str, netg: str, out_dir: str, num: int):
    gen = cfg.clone()
    gen.TEXT.DAMSM_NAME = text_encoder
    gen.TRAIN.NET_G = netg
    gen.B_VALIDATION = True
    gen.SAMPLE.OUT_DIR = out_dir
    gen.SAMPLE.NUM = num
    return gen.freeze()


def _stage_generate(cfg, text_encoder: str, netg: str):
    stack = load_generation_stack(cfg, netg, 'cpu', text_encoder_path=text_encoder)
    num = cfg.DEMO.NUM_IMAGES or len(stack.dataset.filenames)
    out = os.path.join(cfg.OUTPUT_DIR, 'generated')
    made_by = other_generator(out, netg)
    if made_by:
        # the GAN stage has moved on (a larger TRAIN.MAX_EPOCH): these images are the old generator's
        print(f"'{out}' holds images of {made_by}; generating them again with '{netg}'", file=sys.stderr)
        shutil.rmtree(out)
    generate(_generation_config(cfg, text_encoder, netg, out, num))
    grid_dir = os.path.join(cfg.OUTPUT_DIR, 'captions')
    generate(_generation_config(cfg, text_encoder, netg, grid_dir, num), list(cfg.DEMO.GRID_CAPTIONS))
    grid = caption_grid(cfg, stack, os.path.join(cfg.OUTPUT_DIR, 'grid.png'))
    return {'images': out, 'manifest': os.path.join(out, 'manifest.jsonl'),
            'captions_grid': os.path.join(grid_dir, 'captions_grid.png'), 'grid': grid}


@torch.no_grad()
def caption_grid(cfg, stack, path: str) -> str:
    """PNG of ``DEMO.GRID_PER_CAPTION`` images (fixed noise) per ``DEMO.GRID_CAPTIONS`` caption,
    one row per caption with the caption written on its left, from a generation stack.
    Returns ``path``."""
    caps, lens, texts = stack.encode(list(cfg.DEMO.GRID_CAPTIONS))
    per = cfg.DEMO.GRID_PER_CAPTION
    sent = stack.sentences(caps, lens)
    # the same noise in every row: columns differ by noise, rows by caption only
    noise = stack.noise(range(per), cfg.SAMPLE.SEED).repeat(len(caps), 1)
    images, _ = stack.generate(noise, sent.repeat_interleave(per, dim=0))
    images = to_uint8_image(images).permute(0, 2, 3, 1).cpu().numpy()
    size, label_width, pad = images.shape[1], 220, 2
    canvas = Image.new('RGB', (label_width + per * (size + pad), len(caps) * (size + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row, text in enumerate(texts):
        y = row * (size + pad)
        words, lines, line = text.split(), [], ''
        for w in words:   # wrap the caption into the label column
            if line and draw.textlength(line + ' ' + w) > label_width - 8:
                lines.append(line)
                line = w
            else:
                line = (line + ' ' + w).strip()
        lines.append(line)
        for i, ln in enumerate(lines[: size // 12]):
            draw.text((4, y + 4 + 12 * i), ln, fill=(0, 0, 0))
        for col in range(per):
            canvas.paste(Image.fromarray(images[row * per + col]), (label_width + col * (size + pad), y))
    save_png(np.asarray(canvas), path)
    return path


# ----------------------------------------------------------------------------- report
def _accuracy(judged: list, keys, body_of_key: dict) -> float:
    return float(np.mean([j == body_of_key[k] for j, k in zip(judged, keys)]))


def body_colour_accuracy(images, keys, body_of_key: dict) -> float:
    """Fraction of ``images`` (N x H x W x 3 uint8) whose judged body colour
    (``miscc.data.synthetic.judge_body_colour``) is the body colour of their key."""
    return _accuracy(judge_body_colour(images), keys, body_of_key)


def body_colour_confusion(judged: list, keys, body_of_key: dict) -> dict:
    """``{true body colour: {judged colour: count}}`` over images whose judged colours
    (``judge_body_colour``) are ``judged`` and keys ``keys``; 'none' where no pixel qualified.
    Its counts sum to the number of images; its diagonal over that is the accuracy."""
    counts = {}
    for j, k in zip(judged, keys):
        row = counts.setdefault(body_of_key[k], {})
        row[j or 'none'] = row.get(j or 'none', 0) + 1
    return {true: dict(sorted(row.items(), key=lambda kv: -kv[1])) for true, row in sorted(counts.items())}


def epoch_checkpoints(run_dir: str) -> list:
    """The ``netG_XXX.pth`` files of a run folder, in epoch order (not ``netG_stepNNNNNN.pth``)."""
    return sorted(glob.glob(os.path.join(run_dir, 'models', 'netG_[0-9]*.pth')))


@torch.no_grad()
def checkpoint_accuracies(cfg, text_encoder_path: str, run_dir: str, num: int | None = None, judge=None):
    """Yield ``{'epoch', 'checkpoint', 'body_colour_accuracy'}`` for every ``netG_XXX.pth`` in
    ``run_dir/models``, in epoch order, on the images the generate stage would make from it
    (the first ``num`` test captions, default all, with the ``SAMPLE.SEED`` noise), on the CPU;
    given the attribute ``judge``, also each attribute's accuracy, every-named-right, the judge's
    Frechet distance and species score. ``text_encoder_path`` '': each checkpoint's own text
    encoder (``generator_text_encoder``: a fine-tuning run's ``text_encoder_XXX.pth``)."""
    checkpoints = epoch_checkpoints(run_dir)
    if not checkpoints:
        raise ConfigError(f"no netG_XXX.pth in '{os.path.join(run_dir, 'models')}': pass a GAN run folder")
    attrs = read_attributes(cfg.DATA_DIR)
    body = {k: a['body'] for k, a in attrs.items()}
    real = torch.stack(list(real_test_images(cfg).values())) if judge is not None else None
    stack = None
    for path in checkpoints:
        text_path = text_encoder_path or generator_text_encoder(cfg, path)
        if stack is None or text_path != stack.text_encoder_path:   # the test captions and encoder, once each
            stack = load_generation_stack(cfg, path, 'cpu', text_encoder_path=text_path)
        else:
            stack = stack.with_generator(path)
        num = num or len(stack.dataset.filenames)
        images, keys, captions = [], [], []
        for batch in generate_test_images(stack, num, cfg.SAMPLE.BATCH_SIZE or 50, seed=cfg.SAMPLE.SEED):
            images.append(batch.images.permute(0, 2, 3, 1).numpy())
            keys += batch.keys
            captions += batch.captions
        images = np.concatenate(images)
        # 'checkpoint': the file sampled from (with TRAIN.G_EMA, the average saved beside ``path``)
        row = {'epoch': int(re.search(r'netG_(\d+)\.pth$', path).group(1)), 'checkpoint': stack.netg_path,
               'body_colour_accuracy': round(body_colour_accuracy(images, keys, body), 4)}
        if judge is not None:
            scores = attribute_scores(judge, torch.from_numpy(images).permute(0, 3, 1, 2), captions, keys, attrs, real)
            row.update(attributes={a: s['accuracy'] for a, s in scores['attributes'].items()},
                       every_named_right=scores['every_named_right'], frechet_distance=scores['frechet_distance'],
                       species_score=scores['species_score']['generated']['mean'])
        yield row


def real_test_images(cfg) -> dict:
    """``{key: uint8 3 x S x S}`` of the real test birds, cropped and resized as the generator sees them."""
    real_set = RealImageDataset(cfg.DATA_DIR, 'test', image_size=cfg.TREE.BASE_SIZE, dataset_name=cfg.DATASET_NAME)
    return {key: image for image, key in (real_set[i] for i in range(len(real_set)))}


def _checkpoint_report(cfg, text_encoder_path: str, run_dir: str, generated: int) -> dict:
    """Body-colour accuracy of every ``netG_XXX.pth`` of the GAN run on ``DEMO.CHECKPOINT_IMAGES``
    test captions each (0: the ``generated`` ones of the generate stage), with the seconds it
    took, which the budget's reserve has to cover."""
    start = time.time()
    num = cfg.DEMO.CHECKPOINT_IMAGES or generated
    rows = []
    if epoch_checkpoints(run_dir):   # a run cut in its first epoch has none
        rows = [{'epoch': r['epoch'], 'body_colour_accuracy': r['body_colour_accuracy'],
                 'checkpoint': os.path.basename(r['checkpoint'])}
                for r in checkpoint_accuracies(cfg, text_encoder_path, run_dir, num)]
    return {'images_each': num, 'seconds': round(time.time() - start, 1), 'scores': rows}


def _stage_report(cfg, text_encoder_path: str, results: dict) -> dict:
    folder = results['generate']['images']
    entries = read_manifest(folder)
    fake = np.stack([np.asarray(Image.open(os.path.join(folder, e['file'])).convert('RGB')) for e in entries])
    attrs = read_attributes(cfg.DATA_DIR)
    body = {k: a['body'] for k, a in attrs.items()}
    keys = [e['key'] for e in entries]
    judged = judge_body_colour(fake)

    real_by_key = real_test_images(cfg)
    real = torch.stack([real_by_key[k] for k in keys])           # the real image of each caption

    captions = [e['caption'] for e in entries]
    rp = {}
    for name, imgs in (('generated', torch.from_numpy(fake).permute(0, 3, 1, 2)), ('real', real)):
        r = caption_r_precision(cfg, text_encoder_path, imgs, captions, keys)
        rp[name] = {'mean': round(r['mean'], 4), 'std': round(r['std'], 4)}
    return {
        'images': len(entries),
        'body_colour_accuracy': {
            'generated': round(_accuracy(judged, keys, body), 4),
            'real': round(body_colour_accuracy(real.permute(0, 2, 3, 1).numpy(), keys, body), 4),
            'chance': round(1 / 10, 4),
            'measure': 'miscc.data.synthetic.judge_body_colour: the most frequent palette colour among the '
                       'pixels nearest to a palette colour (background and off-palette pixels ignored)'},
        'r_precision': dict(rp, protocol='true caption vs 99 random mismatched test captions, cosine of '
                                         'DAMSM global codes, 10 runs', chance=0.01),
        # every attribute the captions name, read by the attribute judge (miscc/evaluation/judge.py)
        'attribute_scores': attribute_scores(load_judge(cfg.DATA_DIR, cfg.TREE.BASE_SIZE),
                                             torch.from_numpy(fake).permute(0, 3, 1, 2), captions, keys, attrs,
                                             torch.stack(list(real_by_key.values()))),
        # true body colour -> judged colour counts of the generated images
        'body_colour_confusion': body_colour_confusion(judged, keys, body),
        'checkpoint_accuracy': _checkpoint_report(cfg, text_encoder_path, results['gan']['run'], len(entries)),
    }


# ----------------------------------------------------------------------------- driver
def run_demo(cfg) -> dict:
    """Run (or finish) every stage; write and return ``OUTPUT_DIR/report.json``'s content."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    clock = StageClock(os.path.join(cfg.OUTPUT_DIR, 'stage_seconds.json'))
    results, allowed = {}, None
    overall = tqdm(total=len(STAGES), desc='demo', unit='stage', position=0, dynamic_ncols=True)
    for name in STAGES:
        overall.set_description(f'demo: {name}')
        print(f'\n== demo stage {STAGES.index(name) + 1}/{len(STAGES)}: {name}', file=sys.stderr, flush=True)
        clock.begin(name)
        try:
            if name == 'data':
                results[name] = _stage_data(cfg)
            elif name == 'damsm':
                results[name] = _stage_damsm(cfg, clock)
            elif name == 'gan':
                allowed = gan_seconds_allowed(cfg, clock.times)
                results[name] = _stage_gan(cfg, results['damsm']['text_encoder'], clock, allowed)
            elif name == 'generate':
                results[name] = _stage_generate(cfg, results['damsm']['text_encoder'], results['gan']['netG'])
            else:
                results[name] = _stage_report(cfg, results['damsm']['text_encoder'], results)
        finally:   # the seconds of a stage that failed or was interrupted count too
            clock.end()
        overall.update(1)
    overall.close()
    times = clock.times
    report = dict(results['report'])
    report['gan_steps'] = results['gan']['steps']
    report['budget'] = {'seconds': cfg.DEMO.TIME_BUDGET, 'cut': results['gan']['cut'],
                        'gan_seconds_allowed': allowed, 'reserve_seconds': cfg.DEMO.RESERVE_SECONDS}
    report['stage_seconds'] = times
    report['total_seconds'] = round(sum(times.values()), 1)
    report['files'] = {
        'generated_images': results['generate']['images'],
        'manifest': results['generate']['manifest'],
        'caption_grid': results['generate']['grid'],
        'caption_grid_with_masks': results['generate']['captions_grid'],
        'training_samples': results['gan']['samples'],
        'generator': sampling_checkpoint(cfg, results['gan']['netG']),   # the file the images came from
        'text_encoder': results['damsm']['text_encoder'],
        'damsm_run': results['damsm']['run'],
    }
    path = os.path.join(cfg.OUTPUT_DIR, 'report.json')
    write_json(path, report)
    print(json.dumps({k: report[k] for k in ('body_colour_accuracy', 'r_precision')}, indent=1))
    print('attribute accuracy (judge): ' + ', '.join(f"{a} {s['accuracy']}" for a, s in
                                                       report['attribute_scores']['attributes'].items())
          + f", every named attribute right {report['attribute_scores']['every_named_right']}")
    print(f'report: {path}')
    return report
