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

from datasets import build_dataset, collate_sorted
from models import RNN_ENCODER
from models.encoders import InceptionWeightsError, build_image_encoder, inception_imagenet_path

from ..core.checkpoint import CheckpointError, load_file, load_model_state, model_state_dict, save_atomic
from ..core.config import ConfigError
from ..core.runtime import device_from_config, seed_everything
from ..evaluation.metrics import r_precision
from ..evaluation.outputs import save_png
from ..families.encoders import damsm_paths, text_encoder_vocab_size
from ..families.losses import sent_loss, words_loss
from .driver import Driver, EpochSummary
from .sampling import EpochBatchSampler, make_loader
from .state import resolve_start_point

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
    """Builds data, encoders and the optimiser from a DAMSM config and trains (``fit``) on the driver."""
    kind, name, net_key = 'damsm', 'DAMSM ', 'TRAIN.NET_E'
    postfix_losses = ()

    def __init__(self, cfg):
        if int(os.environ.get('WORLD_SIZE', '1')) > 1:
            raise ConfigError('pretrain_DAMSM.py runs in one process; start it without torchrun')
        self.cfg = cfg
        self.setup = device_from_config(cfg)
        self.device = self.setup.device
        seed_everything(cfg.SEED)
        train = cfg.TRAIN

        self.start = resolve_start_point(cfg, 'TRAIN.NET_E')
        weights = self.start.kind == 'weights'
        expected = text_encoder_vocab_size(self.start.path, 'TRAIN.NET_E') if weights else None
        encoder = self.start.path if weights else ''
        self.dataset = build_dataset(cfg, 'train', augment=True, expected_vocab_size=expected, text_encoder=encoder)
        self.test_dataset = build_dataset(cfg, 'test', augment=False, expected_vocab_size=expected,
                                          text_encoder=encoder)
        self.n_words = self.dataset.n_words

        trunk = trunk_path = None
        if not cfg.DAMSM.RANDOM_TRUNK and cfg.TEXT.IMAGE_ENCODER == 'inception':
            # read here, not in models/: an untrusted or broken file is a one-line error naming it
            trunk_path = inception_imagenet_path(cfg.PRETRAINED.INCEPTION)
            trunk = load_file(trunk_path)
        self.text_encoder = RNN_ENCODER(self.n_words, nhidden=cfg.TEXT.EMBEDDING_DIM,
                                        rnn_type=cfg.RNN_TYPE).to(self.device)
        try:
            self.image_encoder = build_image_encoder(cfg.TEXT.IMAGE_ENCODER, cfg.TEXT.EMBEDDING_DIM,
                                                     cfg.TEXT.IMAGE_ENCODER_INPUT, inception_weights=trunk).to(self.device)
        except InceptionWeightsError as e:
            raise CheckpointError(f"'{trunk_path}' (PRETRAINED.INCEPTION): {e}") from None
        self.params = [p for p in list(self.text_encoder.parameters()) + list(self.image_encoder.parameters())
                       if p.requires_grad]
        if weights:
            self.start.epoch = self._load_weights(self.start.path)
        self.optimizer = self._new_optimizer(self.start.epoch)

        self.driver = Driver(cfg, self, self.dataset, collate_sorted, train.BATCH_SIZE, self.start, self.device)
        self.valid_sampler = EpochBatchSampler(len(self.test_dataset), min(train.BATCH_SIZE, len(self.test_dataset)),
                                               cfg.SEED, shuffle=False)
        self.valid_loader = make_loader(self.test_dataset, self.valid_sampler, collate_sorted, cfg.WORKERS,
                                        pin_memory=self.device.type == 'cuda')

    @property
    def start_epoch(self) -> int:
        return self.start.epoch

    @property
    def global_step(self) -> int:
        return self.driver.global_step

    # the run folder and logger exist once fit() has begun (the driver makes them)
    run_dir = property(lambda self: self.driver.run_dir)
    models_dir = property(lambda self: self.driver.models_dir)
    logger = property(lambda self: self.driver.logger)

    # ------------------------------------------------------------------ start / resume
    def _load_weights(self, path: str) -> int:
        """AttnGAN's NET_E: text_encoder<N>.pth and the image_encoder<N>.pth beside it; returns N + 1."""
        text_path, image_path = damsm_paths(path)
        load_model_state(self.text_encoder, text_path)
        if not os.path.isfile(image_path):
            raise FileNotFoundError(f"continuing from '{text_path}' needs the image encoder '{image_path}'")
        load_model_state(self.image_encoder, image_path)
        digits = ''.join(ch for ch in os.path.basename(text_path) if ch.isdigit())
        return int(digits) + 1 if digits else 1

    def load_state_dict(self, state: dict) -> None:
        for name in ('text_encoder', 'image_encoder'):
            load_model_state(getattr(self, name), state[name], name=f'{self.start.path} [{name}]')
        self.optimizer = self._new_optimizer(state['progress']['next_epoch'])
        self.optimizer.load_state_dict(state['optimizer'])

    def state_dict(self) -> dict:
        return {'text_encoder': model_state_dict(self.text_encoder),
                'image_encoder': model_state_dict(self.image_encoder),
                'optimizer': self.optimizer.state_dict(), 'config': repr(self.cfg)}

    def progress_fields(self) -> dict:
        return {}

    def _new_optimizer(self, epoch: int):
        lr = damsm_lr(self.cfg.TRAIN.ENCODER_LR, epoch, self.cfg.DAMSM.LR_DECAY)
        return torch.optim.Adam(self.params, lr=lr, betas=(0.5, 0.999), foreach=True)  # as the GAN optimisers

    # ------------------------------------------------------------------ the driver's protocol
    def describe(self, steps_per_epoch: int) -> str:
        return (f'{len(self.dataset)} training images, {steps_per_epoch} steps per epoch, batch '
                f'{self.cfg.TRAIN.BATCH_SIZE} on {self.device}'
                + (' (random Inception trunk)' if self.cfg.DAMSM.RANDOM_TRUNK else ''))

    def begin_epoch(self, epoch: int, first_step: int) -> None:
        if first_step == 0:    # AttnGAN starts every epoch with a new Adam
            self.optimizer = self._new_optimizer(epoch)

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

    def step_scalars(self) -> dict:
        return {'lr': self.optimizer.param_groups[0]['lr']}

    def end_of_epoch(self, summary: EpochSummary) -> None:
        """Validation (printed and logged), then the snapshot files every SNAPSHOT_INTERVAL epochs."""
        epoch, train = summary.epoch, self.cfg.TRAIN
        valid = self.validate(epoch)
        self.logger.scalars({f'valid/{k}': v for k, v in valid.items() if k != 'pairs'}, epoch)
        tqdm.write(self.report_line(epoch, summary.means, valid, self.optimizer.param_groups[0]['lr'],
                                    time.time() - summary.started))
        if epoch % train.SNAPSHOT_INTERVAL == 0 or epoch == train.MAX_EPOCH:
            self.save_snapshot(epoch)

    def fit(self, deadline: float | None = None, on_save=None) -> str:
        """Train from the start (or resume point) to TRAIN.MAX_EPOCH; returns the run folder.
        ``deadline``, ``on_save``: see ``Driver.fit``."""
        return self.driver.fit(deadline, on_save)

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
        # the attention maps go to the run folder, which exists once fit() has begun
        if (interval and first is not None and self.run_dir is not None
                and (epoch % interval == 0 or epoch == self.cfg.TRAIN.MAX_EPOCH)):
            batch, att_maps = first
            words = [[self.dataset.ixtoword[int(i)] for i in cap[:n]] for cap, n in zip(batch.captions, batch.cap_lens)]
            grid = attention_grid(batch.images, att_maps, words)
            save_png(np.array(grid), os.path.join(self.run_dir, 'samples', f'attention_{epoch:03d}.png'))
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
    def save_snapshot(self, epoch: int) -> None:
        """``text_encoder<epoch>.pth`` / ``image_encoder<epoch>.pth``: the names main.py's
        ``TEXT.DAMSM_NAME`` expects, official keys."""
        save_atomic(model_state_dict(self.text_encoder), os.path.join(self.models_dir, f'text_encoder{epoch}.pth'))
        save_atomic(model_state_dict(self.image_encoder), os.path.join(self.models_dir, f'image_encoder{epoch}.pth'))
