"""DAMSM pretraining (AttnGAN): the text encoder and the image encoder's projections learn
to match words with image regions and sentences with images.

Per epoch, as AttnGAN's ``pretrain_DAMSM.py``: a fresh Adam (lr ``TRAIN.ENCODER_LR`` x
``DAMSM.LR_DECAY`` per finished epoch, down to a tenth, betas (0.5, 0.999)) over the RNN and
the two projections; both encoders in train mode (the frozen Inception trunk normalises
with batch statistics); loss = word losses + sentence losses both ways; the RNN's gradient
norm clipped to ``TRAIN.RNN_GRAD_CLIP``. After each epoch: validation losses and R-precision
on the test split, attention maps every ``DAMSM.ATTENTION_INTERVAL`` epochs, snapshots
``text_encoder<epoch>.pth`` / ``image_encoder<epoch>.pth`` every ``TRAIN.SNAPSHOT_INTERVAL``
epochs and at the last one, and the training state (resume with ``RESTORE=True``).
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

from models import CNN_ENCODER, RNN_ENCODER

from .build import damsm_paths, text_encoder_vocab_size
from .checkpoint import load_model_state, model_state_dict, save_atomic
from .config import ConfigError
from .engine import (EpochBatchSampler, RunLogger, StopFlag, check_finite, load_training_state,
                     make_loader, resolve_start, save_training_state)
from .losses import sent_loss, words_loss
from .metrics import r_precision
from .utils import device_from_config, make_run_dir, seed_everything

__all__ = ['DAMSMTrainer', 'damsm_lr', 'damsm_step_losses', 'attention_grid', 'R_PRECISION_CANDIDATES']

# AttnGAN's R-precision: the true caption against 99 mismatched ones
R_PRECISION_CANDIDATES = 100


def damsm_lr(base_lr: float, epoch: int, decay: float = 0.98) -> float:
    """Learning rate of 1-based ``epoch``: AttnGAN multiplies by ``decay`` after every epoch
    while the rate is above ``base_lr / 10``."""
    lr = base_lr
    for _ in range(epoch - 1):
        if lr > base_lr / 10.0:
            lr *= decay
    return lr


def damsm_step_losses(image_encoder, text_encoder, batch, smooth) -> dict:
    """Word and sentence losses of one batch (``datasets.Batch``), each summed over both
    directions: ``{'w': ..., 's': ..., 'att_maps': [1 x len_i x H x W], 'codes': (img, txt)}``."""
    images, captions, lens, class_ids = batch
    size = images.size(0)
    labels = torch.arange(size, device=images.device)
    words_emb, sent_emb = text_encoder(captions, lens, text_encoder.init_hidden(size))
    regions, code = image_encoder(images)
    w0, w1, att_maps = words_loss(regions, words_emb, labels, lens, class_ids, size,
                                  smooth.GAMMA1, smooth.GAMMA2, smooth.GAMMA3)
    s0, s1 = sent_loss(code, sent_emb, labels, class_ids, size, gamma3=smooth.GAMMA3)
    return {'w': w0 + w1, 's': s0 + s1, 'att_maps': att_maps, 'codes': (code, sent_emb)}


def attention_grid(images: torch.Tensor, att_maps, words: list, max_rows: int = 8,
                   cell: int = 128) -> Image.Image:
    """One row per image: the image, then the image under each word's attention map
    (upsampled, brightest where attended) with the word above it. Every image is drawn at
    ``cell`` x ``cell`` pixels, which keeps the PNG small at 299-pixel inputs.

    images: B x 3 x S x S in [-1, 1]; att_maps[i]: 1 x len_i x H x W; words[i]: list of str.
    Returns a PIL image of (1 + max len_i) * cell x rows * (cell + 14) pixels.
    """
    rows = min(max_rows, images.size(0))
    cols = 1 + max(len(w) for w in words[:rows])
    label = 14
    canvas = Image.new('RGB', (cols * cell, rows * (cell + label)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    shown_images = F.interpolate(images[:rows].detach().float().cpu(), size=(cell, cell), mode='bilinear',
                                 align_corners=False, antialias=images.size(-1) > cell)
    pixels = ((shown_images + 1) * 127.5).clamp(0, 255)
    for r in range(rows):
        y = r * (cell + label)
        canvas.paste(Image.fromarray(pixels[r].permute(1, 2, 0).byte().numpy()), (0, y + label))
        att = att_maps[r][0].detach().float().cpu()                      # len x H x W
        att = F.interpolate(att[:, None], size=(cell, cell), mode='bilinear', align_corners=False)[:, 0]
        for t, word in enumerate(words[r][:att.size(0)]):
            a = att[t]
            a = (a - a.min()) / (a.max() - a.min() + 1e-8)
            shown = pixels[r] * (0.25 + 0.75 * a)                         # dim what is not attended
            canvas.paste(Image.fromarray(shown.permute(1, 2, 0).byte().numpy()), ((t + 1) * cell, y + label))
            draw.text(((t + 1) * cell + 2, y + 1), word[:cell // 6], fill=(0, 0, 0))
    return canvas


class DAMSMTrainer:
    """Builds data, encoders and the optimiser from a DAMSM config and trains (``fit``)."""

    def __init__(self, cfg):
        from datasets import build_dataset, collate_sorted   # the data layer is top level

        if int(os.environ.get('WORLD_SIZE', '1')) > 1:
            raise ConfigError('pretrain_DAMSM.py runs in one process; start it without torchrun')
        self.cfg = cfg
        self.setup = device_from_config(cfg)
        self.device = self.setup.device
        seed_everything(cfg.SEED)
        train = cfg.TRAIN

        self.resume_kind, self.resume_path = self._resolve_resume()
        expected = text_encoder_vocab_size(self.resume_path, 'TRAIN.NET_E') if self.resume_kind == 'weights' else None
        self.dataset = build_dataset(cfg, 'train', augment=True, expected_vocab_size=expected)
        self.test_dataset = build_dataset(cfg, 'test', augment=False, expected_vocab_size=expected)
        self.n_words = self.dataset.n_words

        if cfg.DAMSM.RANDOM_TRUNK:
            trunk = None
        else:
            trunk = cfg.PRETRAINED.INCEPTION or 'hub'
        self.text_encoder = RNN_ENCODER(self.n_words, nhidden=cfg.TEXT.EMBEDDING_DIM,
                                        rnn_type=cfg.RNN_TYPE).to(self.device)
        self.image_encoder = CNN_ENCODER(cfg.TEXT.EMBEDDING_DIM, inception_weights=trunk,
                                         input_size=cfg.TEXT.IMAGE_ENCODER_INPUT).to(self.device)
        self.params = [p for p in list(self.text_encoder.parameters()) + list(self.image_encoder.parameters())
                       if p.requires_grad]

        self.start_epoch, self.start_step, self.global_step = 1, 0, 0
        self.run_dir = None
        self.optimizer_state = None
        self._load_start()
        self.optimizer = self._new_optimizer(self.start_epoch)
        if self.optimizer_state is not None:
            self.optimizer.load_state_dict(self.optimizer_state)

        self.sampler = EpochBatchSampler(len(self.dataset), train.BATCH_SIZE, cfg.SEED)
        self.loader = make_loader(self.dataset, self.sampler, collate_sorted, cfg.WORKERS,
                                  pin_memory=self.device.type == 'cuda')
        self.valid_sampler = EpochBatchSampler(len(self.test_dataset), min(train.BATCH_SIZE, len(self.test_dataset)),
                                               cfg.SEED, shuffle=False)
        self.valid_loader = make_loader(self.test_dataset, self.valid_sampler, collate_sorted, cfg.WORKERS,
                                        pin_memory=self.device.type == 'cuda')
        if self.run_dir is None:
            self.run_dir = make_run_dir(cfg.OUTPUT_DIR, cfg.DATASET_NAME, cfg.CONFIG_NAME)
        self.models_dir = os.path.join(self.run_dir, 'models')
        self.logger = RunLogger(os.path.join(self.run_dir, 'log'))

    # ------------------------------------------------------------------ start / resume
    def _resolve_resume(self):
        kind, path = resolve_start(self.cfg.TRAIN.NET_E, self.cfg.RESTORE, self.cfg, 'TRAIN.NET_E')
        return ('weights' if kind == 'file' else kind), path

    def _load_start(self):
        if self.resume_kind == 'state':
            state = load_training_state(self.resume_path)
            if state.get('kind') != 'damsm':
                raise ConfigError(f"'{self.resume_path}' is not a DAMSM training state")
            load_model_state(self.text_encoder, state['text_encoder'])
            load_model_state(self.image_encoder, state['image_encoder'])
            self.optimizer_state = state['optimizer']
            progress = state['progress']
            self.start_epoch, self.start_step = progress['next_epoch'], progress['next_step']
            self.global_step = progress['global_step']
            self.run_dir = os.path.dirname(os.path.dirname(os.path.abspath(self.resume_path)))
        elif self.resume_kind == 'weights':
            # AttnGAN's NET_E: text_encoder<N>.pth and the image_encoder<N>.pth beside it; epoch N+1 next
            text_path, image_path = damsm_paths(self.resume_path)
            load_model_state(self.text_encoder, text_path)
            if not os.path.isfile(image_path):
                raise FileNotFoundError(f"continuing from '{text_path}' needs the image encoder '{image_path}'")
            load_model_state(self.image_encoder, image_path)
            digits = ''.join(ch for ch in os.path.basename(text_path) if ch.isdigit())
            self.start_epoch = int(digits) + 1 if digits else 1

    def _new_optimizer(self, epoch: int):
        lr = damsm_lr(self.cfg.TRAIN.ENCODER_LR, epoch, self.cfg.DAMSM.LR_DECAY)
        return torch.optim.Adam(self.params, lr=lr, betas=(0.5, 0.999), foreach=True)  # as in make_optimizers

    # ------------------------------------------------------------------ steps
    def train_step(self, batch) -> dict:
        self.text_encoder.train()
        self.image_encoder.train()
        batch = [t.to(self.device) for t in (batch.images, batch.captions)] + [batch.cap_lens, batch.class_ids]
        out = damsm_step_losses(self.image_encoder, self.text_encoder, batch, self.cfg.TRAIN.SMOOTH)
        loss = out['w'] + out['s']
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.text_encoder.parameters(), self.cfg.TRAIN.RNN_GRAD_CLIP)
        self.optimizer.step()
        return {'w_loss': out['w'].item(), 's_loss': out['s'].item()}

    @torch.no_grad()
    def validate(self, epoch: int) -> dict:
        """Mean word/sentence losses over the test split (its first ``DAMSM.VALID_BATCHES``
        batches when set), R-precision of the pairs seen, attention maps.

        Returns ``{'valid_w_loss', 'valid_s_loss', 'pairs'}`` plus ``'r_precision'`` and
        ``'r_precision_std'`` when ``DAMSM.R_PRECISION`` is on and at least 100 pairs were seen.
        """
        self.text_encoder.eval()
        self.image_encoder.eval()
        limit = self.cfg.DAMSM.VALID_BATCHES
        total = min(limit, len(self.valid_sampler)) if limit else len(self.valid_sampler)
        totals, batches, img_codes, txt_codes, groups = {'w': 0.0, 's': 0.0}, 0, [], [], []
        first = None
        self.valid_sampler.set_epoch(1)
        bar = tqdm(total=total, desc=f'DAMSM validation {epoch}', dynamic_ncols=True, leave=False)
        for batch in self.valid_loader:
            inputs = [batch.images.to(self.device), batch.captions.to(self.device), batch.cap_lens, batch.class_ids]
            out = damsm_step_losses(self.image_encoder, self.text_encoder, inputs, self.cfg.TRAIN.SMOOTH)
            totals['w'] += out['w'].item()
            totals['s'] += out['s'].item()
            batches += 1
            bar.update(1)
            img_codes.append(out['codes'][0].cpu())
            txt_codes.append(out['codes'][1].cpu())
            groups += list(batch.keys)
            if first is None:
                first = (batch, out['att_maps'])
            if batches >= total:
                break
        bar.close()
        result = {'valid_w_loss': totals['w'] / max(batches, 1), 'valid_s_loss': totals['s'] / max(batches, 1),
                  'pairs': len(groups)}
        if self.cfg.DAMSM.R_PRECISION and len(set(groups)) >= R_PRECISION_CANDIDATES:
            keys = {k: i for i, k in enumerate(sorted(set(groups)))}
            mean, std = r_precision(torch.cat(img_codes), torch.cat(txt_codes), groups=[keys[k] for k in groups],
                                    candidates=R_PRECISION_CANDIDATES, seed=self.cfg.SEED)
            result.update(r_precision=mean, r_precision_std=std)
        interval = self.cfg.DAMSM.ATTENTION_INTERVAL
        if interval and first is not None and (epoch % interval == 0 or epoch == self.cfg.TRAIN.MAX_EPOCH):
            batch, att_maps = first
            words = [[self.dataset.ixtoword[int(i)] for i in cap[:n]] for cap, n in zip(batch.captions, batch.cap_lens)]
            path = os.path.join(self.run_dir, 'samples', f'attention_{epoch:03d}.png')
            grid = attention_grid(batch.images, att_maps, words)
            grid.save(path + '.tmp.png')
            os.replace(path + '.tmp.png', path)
            self.logger.image('attention', torch.from_numpy(np.array(grid)).permute(2, 0, 1), epoch)
        return result

    def report_line(self, epoch: int, train_losses: dict, valid: dict, lr: float, seconds: float) -> str:
        """The line printed after each validation: mean training and validation losses,
        learning rate, time, and the R-precision (or why it was not computed)."""
        line = (f'DAMSM epoch {epoch}/{self.cfg.TRAIN.MAX_EPOCH}: train w {train_losses["w_loss"]:.3f} '
                f's {train_losses["s_loss"]:.3f} | valid w {valid["valid_w_loss"]:.3f} '
                f's {valid["valid_s_loss"]:.3f} | lr {lr:.2e} | {seconds:.0f} s')
        if 'r_precision' in valid:
            line += f' | R-precision {valid["r_precision"]:.3f} +- {valid["r_precision_std"]:.3f}'
        elif self.cfg.DAMSM.R_PRECISION:
            line += (f' | R-precision skipped: {valid["pairs"]} test pairs, it needs at least '
                     f'{R_PRECISION_CANDIDATES} (raise DAMSM.VALID_BATCHES, 0 = all, or use a larger test split)')
        return line

    # ------------------------------------------------------------------ outputs
    def save_state(self, epoch_done: int, next_epoch: int, next_step: int) -> None:
        state = {'kind': 'damsm', 'text_encoder': model_state_dict(self.text_encoder),
                 'image_encoder': model_state_dict(self.image_encoder),
                 'optimizer': self.optimizer.state_dict(), 'config': repr(self.cfg)}
        save_training_state(self.models_dir, state, {'epoch': epoch_done, 'next_epoch': next_epoch,
                                                     'next_step': next_step, 'global_step': self.global_step})

    def save_snapshot(self, epoch: int) -> None:
        """``text_encoder<epoch>.pth`` / ``image_encoder<epoch>.pth``: the names main.py's
        ``TEXT.DAMSM_NAME`` expects, official keys."""
        save_atomic(model_state_dict(self.text_encoder), os.path.join(self.models_dir, f'text_encoder{epoch}.pth'))
        save_atomic(model_state_dict(self.image_encoder), os.path.join(self.models_dir, f'image_encoder{epoch}.pth'))

    # ------------------------------------------------------------------ the loop
    def fit(self) -> str:
        """Train from the start (or resume point) to TRAIN.MAX_EPOCH; returns the run folder."""
        cfg, train = self.cfg, self.cfg.TRAIN
        steps_per_epoch = len(self.sampler)
        print(f'run folder: {self.run_dir}\n{len(self.dataset)} training images, {steps_per_epoch} steps '
              f'per epoch, batch {train.BATCH_SIZE} on {self.device}'
              + (' (random Inception trunk)' if cfg.DAMSM.RANDOM_TRUNK else ''))
        with StopFlag() as stop:
            for epoch in range(self.start_epoch, train.MAX_EPOCH + 1):
                first = self.start_step if epoch == self.start_epoch else 0
                if first == 0:    # AttnGAN starts every epoch with a new Adam
                    self.optimizer = self._new_optimizer(epoch)
                lr = self.optimizer.param_groups[0]['lr']
                self.sampler.set_epoch(epoch, first)
                bar = tqdm(total=steps_per_epoch, initial=first, desc=f'DAMSM epoch {epoch}/{train.MAX_EPOCH}',
                           dynamic_ncols=True, leave=False)
                step, start, sums = first, time.time(), {'w_loss': 0.0, 's_loss': 0.0}
                for batch in self.loader:
                    losses = self.train_step(batch)
                    step += 1
                    self.global_step += 1
                    check_finite(losses, epoch, step, self.global_step)
                    for k in sums:
                        sums[k] += losses[k]
                    bar.update(1)
                    if step % train.LOG_INTERVAL == 0 or step == steps_per_epoch:
                        bar.set_postfix({k: f'{v:.3f}' for k, v in losses.items()})
                        self.logger.scalars({f'loss/{k}': v for k, v in losses.items()}, self.global_step)
                        self.logger.scalars({'lr': lr}, self.global_step)
                    limit_hit = train.MAX_STEPS and self.global_step >= train.MAX_STEPS
                    if (stop.requested or limit_hit) and step < steps_per_epoch:
                        bar.close()
                        self.save_state(epoch - 1, epoch, step)
                        print(f'stopped at epoch {epoch}, step {step}; training state saved in {self.models_dir}. '
                              f'Resume with RESTORE=True TRAIN.NET_E={self.run_dir}')
                        self.logger.close()
                        return self.run_dir
                bar.close()
                done = step - first
                valid = self.validate(epoch)
                self.logger.scalars({f'valid/{k}': v for k, v in valid.items() if k != 'pairs'}, epoch)
                means = {k: v / max(done, 1) for k, v in sums.items()}
                line = self.report_line(epoch, means, valid, lr, time.time() - start)
                tqdm.write(line)
                if epoch % train.SNAPSHOT_INTERVAL == 0 or epoch == train.MAX_EPOCH:
                    self.save_snapshot(epoch)
                self.save_state(epoch, epoch + 1, 0)
                if stop.requested or (train.MAX_STEPS and self.global_step >= train.MAX_STEPS):
                    break
        self.logger.close()
        return self.run_dir
