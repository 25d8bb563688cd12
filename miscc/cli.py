"""The command lines of the five scripts: ``main.py`` / ``main_finetune.py`` (train, the demo,
or generate with B_VALIDATION=True), ``pretrain_DAMSM.py``, ``eval_IS.py`` / ``eval_FID.py``.

Exit codes (``EXIT_*``; docs/training.md lists them too):

- 0: done: trained to TRAIN.MAX_EPOCH, stopped at TRAIN.MAX_STEPS (a requested stop; the state
  is saved), or the run was already finished;
- 1: a bug (Python's traceback);
- 2: bad input: config, files, data, captions (one line naming the key or file);
- 3: the run could not go on: the disk is full, or another process of a torchrun run died or
  did not answer within DIST_TIMEOUT seconds; the training state saved last is intact;
- 130 / 143: interrupted by SIGINT / SIGTERM (128 + the signal): the training state was saved
  (unless a second signal stopped it at once) and one line says where and how to resume.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from datasets import DataError

from .core.checkpoint import CheckpointError
from .core.config import ConfigError, load_config
from .core.files import DiskFullError
from .core.runtime import DistributedError, close_distributed
from .demo import run_demo
from .evaluation.generation import CaptionError, generate
from .evaluation.scores import evaluate
from .training.damsm import DAMSMTrainer
from .training.gan import GANTrainer
from .training.signals import TrainingInterrupted

__all__ = ['parse_args', 'config_from_args', 'gan_main', 'damsm_main', 'eval_main', 'USER_ERRORS', 'RUN_ERRORS',
           'EXIT_OK', 'EXIT_BUG', 'EXIT_USER_ERROR', 'EXIT_RUN_FAILED']

EXIT_OK, EXIT_BUG, EXIT_USER_ERROR, EXIT_RUN_FAILED = 0, 1, 2, 3

# Errors caused by the command's input (config, files, data, captions): printed as one
# line, without a traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, CheckpointError, DataError, CaptionError, FileNotFoundError, FileExistsError)
# Failures of the machine or of another process, not of this input: one line, EXIT_RUN_FAILED.
RUN_ERRORS = (DiskFullError, DistributedError)


def _train(name: str, fit) -> int:
    """Run ``fit()`` and turn how training ended into one line on stderr and an exit code."""
    try:
        fit()
    except TrainingInterrupted as e:
        if e.show:
            print(f'{name}: {e}', file=sys.stderr)
        return e.exit_code
    except RUN_ERRORS as e:
        print(f'{name}: error: {e}', file=sys.stderr)
        return EXIT_RUN_FAILED
    return EXIT_OK


def parse_args(argv, description: str, default_cfg: str = 'cfg/bird.yml'):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--cfg', dest='cfg_file', default=default_cfg, help='YAML config file')
    parser.add_argument('--gpu', dest='gpu_id', type=int, default=None,
                        help='GPU id (official flag; -1 for CPU); same as GPU_ID=...')
    parser.add_argument('--data_dir', default=None, help='same as DATA_DIR=...')
    parser.add_argument('--manualSeed', type=int, default=None, help='same as SEED=...')
    parser.add_argument('--caption', action='append', default=[],
                        help='with B_VALIDATION=True: generate from this caption (repeatable)')
    parser.add_argument('--captions', default=None,
                        help='with B_VALIDATION=True: text file with one caption a line')
    parser.add_argument('overrides', nargs='*', metavar='KEY=VALUE',
                        help='config overrides, e.g. TRAIN.BATCH_SIZE=8 DEVICE=cpu')
    return parser.parse_intermixed_args(argv)   # KEY=VALUE may sit between options


def config_from_args(args):
    """Config from --cfg, the official flags, then KEY=VALUE overrides; frozen."""
    flags = []
    if args.gpu_id is not None:
        flags.append(f'GPU_ID={args.gpu_id}')
    if args.data_dir is not None:
        flags.append(f'DATA_DIR={args.data_dir}')
    if args.manualSeed is not None:
        flags.append(f'SEED={args.manualSeed}')
    return load_config(args.cfg_file, flags + list(args.overrides)).freeze()


def _read_captions(args) -> list:
    texts = list(args.caption)
    if args.captions:
        if not os.path.isfile(args.captions):
            raise FileNotFoundError(f"captions file '{args.captions}' not found")
        with open(args.captions, 'rb') as f:
            data = f.read()
        try:
            text = data.decode('utf-8')
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b'\n') + 1
            raise CaptionError(f"captions file '{args.captions}' line {line}: byte {data[e.start:e.start + 1]!r} "
                               f"is not UTF-8; save the file as UTF-8") from None
        texts += [line.strip() for line in text.splitlines() if line.strip()]
        if not texts:
            raise CaptionError(f"captions file '{args.captions}' holds no caption")
    return texts


def gan_main(finetune: bool, argv=None) -> int:
    """Entry point of main.py (finetune=False) and main_finetune.py (finetune=True)."""
    name = 'main_finetune.py' if finetune else 'main.py'
    args = parse_args(argv, ('Fine-tune SSA-GAN with its DAMSM encoders' if finetune else 'Train SSA-GAN')
                      + '; B_VALIDATION=True generates images instead')
    try:
        return _gan_run(name, finetune, args)
    finally:
        # a torchrun worker leaves the group before the interpreter's shutdown (close_distributed)
        close_distributed()


def _gan_run(name: str, finetune: bool, args) -> int:
    try:
        cfg = config_from_args(args)
        captions = _read_captions(args)
        if captions and not cfg.B_VALIDATION:
            raise ConfigError('--caption/--captions generate images: add B_VALIDATION=True and TRAIN.NET_G=...')
        if cfg.DEMO.RUN:
            if finetune or cfg.B_VALIDATION:
                raise ConfigError('DEMO.RUN=True runs the whole demo; use it with main.py and without B_VALIDATION')
            run_demo(cfg)
        elif cfg.B_VALIDATION:
            with warnings.catch_warnings():
                warnings.simplefilter('always')
                generate(cfg, captions)
        else:
            trainer = GANTrainer(cfg, finetune=finetune)
            return _train(name, trainer.fit)
    except USER_ERRORS as e:
        print(f'{name}: error: {e}', file=sys.stderr)
        return EXIT_USER_ERROR
    except RUN_ERRORS as e:   # set-up: joining the process group; the demo's stages
        print(f'{name}: error: {e}', file=sys.stderr)
        return EXIT_RUN_FAILED
    except TrainingInterrupted as e:   # a training stage of the demo
        print(f'{name}: {e}', file=sys.stderr)
        return e.exit_code
    return EXIT_OK


def damsm_main(argv=None) -> int:
    """Entry point of pretrain_DAMSM.py."""
    args = parse_args(argv, 'Pretrain the DAMSM text and image encoders', default_cfg='cfg/DAMSM/bird.yml')
    try:
        cfg = config_from_args(args)
        if args.caption or args.captions:
            raise ConfigError('--caption/--captions belong to main.py B_VALIDATION=True')
        trainer = DAMSMTrainer(cfg)
        return _train('pretrain_DAMSM.py', trainer.fit)
    except USER_ERRORS as e:
        print(f'pretrain_DAMSM.py: error: {e}', file=sys.stderr)
        return EXIT_USER_ERROR
    except RUN_ERRORS as e:
        print(f'pretrain_DAMSM.py: error: {e}', file=sys.stderr)
        return EXIT_RUN_FAILED


def eval_main(metric: str, argv=None) -> int:
    """Entry point of eval_IS.py (metric 'IS') and eval_FID.py ('FID')."""
    script = f'eval_{metric}.py'
    parser = argparse.ArgumentParser(description=f'{metric} of generated images (folder or generator checkpoint)')
    parser.add_argument('--cfg', dest='cfg_file', default='cfg/bird.yml', help='YAML config file')
    parser.add_argument('--images', default='', help='folder of generated images (B_VALIDATION=True output)')
    parser.add_argument('--netG', default='', help='generator checkpoint: images generated in memory')
    parser.add_argument('--num', type=int, default=0, help=f'number of images (default EVAL.NUM_{metric})')
    parser.add_argument('--out', default='', help='result JSON (default: next to the images)')
    parser.add_argument('overrides', nargs='*', metavar='KEY=VALUE')
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.cfg_file, args.overrides).freeze()
        result = evaluate(cfg, metric, args.images, args.netG, args.num, args.out,
                          command=' '.join([script] + (sys.argv[1:] if argv is None else list(argv))))
    except USER_ERRORS as e:
        print(f'{script}: error: {e}', file=sys.stderr)
        return 2
    line = f"{metric} = {result['value']:.4f}" + (f" +- {result['std']:.4f}" if result.get('std') is not None else '')
    line += f" over {result['count']} images"
    if 'kid' in result:
        line += f"; KID = {result['kid']['value']:.5f} +- {result['kid']['std']:.5f}"
    if 'domain_classifier' in result:
        dc = result['domain_classifier']
        name = 'CUB IS (StackGAN protocol)' if dc['protocol'] == 'stackgan' else 'domain-classifier IS'
        line += f"; {name} = {dc['value']:.4f} +- {dc['std']:.4f}"
    if 'mean' in result.get('r_precision', {}):
        line += f"; R-precision ({result['r_precision']['protocol']}) = {result['r_precision']['mean']:.4f} +- {result['r_precision']['std']:.4f}"
    print(line)
    print(f"written to {result['json']}")
    return 0
