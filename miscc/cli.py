"""Command line of ``main.py`` and ``main_finetune.py``: train, or generate with B_VALIDATION=True."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
from tqdm import tqdm

from datasets import DataError

from .build import generator_text_encoder, load_generator, load_text_encoder, text_encoder_vocab_size
from .checkpoint import CheckpointError
from .config import ConfigError, load_config
from .sampling import (CaptionError, encode_texts, generate_test_images, mask_grid, noise_for, resume_point,
                       save_grid, save_test_images)
from .utils import device_from_config, seed_everything

__all__ = ['parse_args', 'config_from_args', 'gan_main', 'damsm_main', 'generate', 'USER_ERRORS']

# Errors caused by the command's input (config, files, data, captions): printed as one
# line, without a traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, CheckpointError, DataError, CaptionError, FileNotFoundError, FileExistsError)


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
        with open(args.captions, 'r', encoding='utf-8') as f:
            texts += [line.strip() for line in f if line.strip()]
        if not texts:
            raise CaptionError(f"captions file '{args.captions}' holds no caption")
    return texts


def generate(cfg, user_captions=()) -> str:
    """B_VALIDATION=True: images of the test captions (SAMPLE.NUM, with masks and
    manifest.jsonl), or a grid for ``user_captions``. Returns the output folder."""
    from datasets import build_dataset, encode_caption

    if not cfg.TRAIN.NET_G:
        raise ConfigError('B_VALIDATION=True needs the generator to sample from: set TRAIN.NET_G=path/netG_XXX.pth')
    setup = device_from_config(cfg)
    seed_everything(cfg.SEED)
    # A generator fine-tuned together with its text encoder must use that encoder.
    text_path = generator_text_encoder(cfg, cfg.TRAIN.NET_G)
    n_words = text_encoder_vocab_size(text_path)
    dataset = build_dataset(cfg, 'test', augment=False, expected_vocab_size=n_words)
    text_encoder = load_text_encoder(cfg, text_path, n_words, setup.device).eval()
    netG = load_generator(cfg, cfg.TRAIN.NET_G, setup.device).eval()
    base = os.path.splitext(cfg.TRAIN.NET_G)[0]
    batch_size = cfg.SAMPLE.BATCH_SIZE or cfg.TRAIN.BATCH_SIZE

    if user_captions:
        out_dir = cfg.SAMPLE.OUT_DIR or os.path.join(base, 'captions')
        caps, lens, texts = encode_texts(user_captions, dataset.wordtoix, cfg.TEXT.WORDS_NUM, encode_caption)
        per = cfg.SAMPLE.PER_CAPTION
        with torch.no_grad():
            _, sent = text_encoder(caps.to(setup.device), lens)
            sent = sent.repeat_interleave(per, dim=0)
            noise = noise_for(range(len(sent)), cfg.GAN.Z_DIM, cfg.SAMPLE.SEED).to(setup.device)
            images, masks = netG(noise, sent)
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, 'captions_grid.png')
        save_grid(mask_grid(images, masks, rows=len(images)), path)
        with open(os.path.join(out_dir, 'captions.txt'), 'w', encoding='utf-8') as f:
            f.write(''.join(f'rows {i * per + 1}-{(i + 1) * per}: {t}\n' for i, t in enumerate(texts)))
        print(f'{len(images)} images ({per} per caption) with their masks: {path}')
        return out_dir

    out_dir = cfg.SAMPLE.OUT_DIR or os.path.join(base, 'valid')
    num = cfg.SAMPLE.NUM
    start = resume_point(out_dir, dataset, num, generator=cfg.TRAIN.NET_G)
    bar = tqdm(total=num, initial=start, desc='generating', dynamic_ncols=True)
    batches = generate_test_images(netG, text_encoder, dataset, num, batch_size, setup.device,
                                   seed=cfg.SAMPLE.SEED, nz=cfg.GAN.Z_DIM, start=start)
    manifest = save_test_images(batches, out_dir, num, progress=bar, workers=max(1, cfg.WORKERS))
    bar.close()
    print(f'{num} images and masks in {out_dir} (manifest: {manifest})')
    return out_dir


def gan_main(finetune: bool, argv=None) -> int:
    """Entry point of main.py (finetune=False) and main_finetune.py (finetune=True)."""
    name = 'main_finetune.py' if finetune else 'main.py'
    args = parse_args(argv, ('Fine-tune SSA-GAN with its DAMSM encoders' if finetune else 'Train SSA-GAN')
                      + '; B_VALIDATION=True generates images instead')
    try:
        cfg = config_from_args(args)
        captions = _read_captions(args)
        if captions and not cfg.B_VALIDATION:
            raise ConfigError('--caption/--captions generate images: add B_VALIDATION=True and TRAIN.NET_G=...')
        if cfg.DEMO.RUN:
            if finetune or cfg.B_VALIDATION:
                raise ConfigError('DEMO.RUN=True runs the whole demo; use it with main.py and without B_VALIDATION')
            from .demo import run_demo
            run_demo(cfg)
        elif cfg.B_VALIDATION:
            with warnings.catch_warnings():
                warnings.simplefilter('always')
                generate(cfg, captions)
        else:
            from .trainer import GANTrainer
            GANTrainer(cfg, finetune=finetune).fit()
    except USER_ERRORS as e:
        print(f'{name}: error: {e}', file=sys.stderr)
        return 2
    return 0


def damsm_main(argv=None) -> int:
    """Entry point of pretrain_DAMSM.py."""
    args = parse_args(argv, 'Pretrain the DAMSM text and image encoders', default_cfg='cfg/DAMSM/bird.yml')
    try:
        cfg = config_from_args(args)
        if args.caption or args.captions:
            raise ConfigError('--caption/--captions belong to main.py B_VALIDATION=True')
        from .damsm_trainer import DAMSMTrainer
        DAMSMTrainer(cfg).fit()
    except USER_ERRORS as e:
        print(f'pretrain_DAMSM.py: error: {e}', file=sys.stderr)
        return 2
    return 0
