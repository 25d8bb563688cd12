"""FID, KID and R-precision during training (``EVAL.INTERVAL``), the way ``eval_FID.py --netG``
computes them, without writing images.

Every evaluation generates the same ``EVAL.NUM_FID`` images: the test-caption plan and the
noise of ``B_VALIDATION=True`` (``generate_test_images`` with ``SAMPLE.SEED``), so the
numbers of two epochs differ only by the generator, and the in-loop FID of an epoch equals
``eval_FID.py --netG`` of that epoch's file. Under DDP rank r generates and embeds the r-th
contiguous slice of the images; the features and DAMSM codes are gathered on rank 0, which
alone holds the cached reference statistics and computes the scores. The RNG states of the
process are restored afterwards, so evaluating does not change the training that follows.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from datasets import encode_caption

from ..core.config import ConfigError
from ..core.runtime import DistEnv, rng_state, set_rng_state
from .generation import GenerationStack, generate_test_images
from .judge import FEATURE_DIM, judge_extractor
from .scores import (RANDOM_NOTE, TooFewCaptions, damsm_codes, fid_and_kid, fid_dims,
                     inception_extractor, r_precision_of_codes, reference_statistics)

__all__ = ['TrainingEvaluator', 'shard']


def shard(num: int, rank: int, world_size: int) -> tuple:
    """``(start, stop)`` of rank ``rank``'s contiguous share of images ``0..num-1``."""
    return num * rank // world_size, num * (rank + 1) // world_size


def _gather_rows(rows: torch.Tensor, dist_env: DistEnv, device) -> torch.Tensor:
    """Concatenate every rank's N_r x D tensor in rank order (on all ranks; CPU result)."""
    if not dist_env.distributed:
        return rows
    local = rows.to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist_env.world_size)]
    dist.all_gather(sizes, torch.tensor([local.size(0)], device=device))
    most = max(int(s.item()) for s in sizes)
    padded = torch.zeros((most,) + tuple(local.shape[1:]), dtype=local.dtype, device=device)
    padded[:local.size(0)] = local
    parts = [torch.empty_like(padded) for _ in range(dist_env.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(n.item())] for p, n in zip(parts, sizes)]).cpu()


class TrainingEvaluator:
    """Scores of a generator during training.

    ``text_encoder`` / ``image_encoder``: the trainer's bare DAMSM encoders (put in eval mode
    for the evaluation and back afterwards); ``dataset``: the test split (captions, keys,
    classes); ``image_size``: the generated size. The FID extractor (``EVAL.INCEPTION_WEIGHTS``,
    the TF weights of ``eval_FID.py``) is loaded here, and the reference statistics computed or
    read from the cache on rank 0, so a missing file stops the run before its first step.
    """

    def __init__(self, cfg, family, text_encoder, image_encoder, dataset, device, image_size: int,
                 dist_env: DistEnv | None = None):
        self.cfg, self.family, self.dataset, self.device = cfg, family, dataset, device
        self.text_encoder, self.image_encoder = text_encoder, image_encoder
        self.dist = dist_env or DistEnv()
        self.num = cfg.EVAL.NUM_FID
        if self.num < 2:
            raise ConfigError(f'EVAL.NUM_FID={self.num}: the in-training FID (EVAL.INTERVAL) needs at least 2 images')
        judged = cfg.EVAL.EXTRACTOR == 'judge'
        self.extractor, self.tag = (judge_extractor if judged else inception_extractor)(cfg, [fid_dims(cfg)], device)
        self.dims = FEATURE_DIM if judged else int(cfg.EVAL.FID_DIMS)
        if self.tag['weights'] == 'random' and self.dist.is_main:
            print(f'warning: in-training FID with {RANDOM_NOTE}')
        self.reference = (reference_statistics(cfg, self.extractor, self.tag, device, image_size)
                          if self.dist.is_main else None)
        mode = cfg.EVAL.R_PRECISION
        least = 100 if cfg.EVAL.R_PRECISION_PROTOCOL == 'pairs' else 2 * cfg.EVAL.SPLITS
        if mode == 'on' and self.num < least:
            raise ConfigError(f"EVAL.R_PRECISION='on' needs EVAL.NUM_FID >= {least}, got {self.num}")
        self.want_rp = mode != 'off' and self.num >= least
        self.key_index = {k: i for i, k in enumerate(dataset.filenames)}

    @torch.no_grad()
    def _local_outputs(self, netG) -> tuple:
        """This rank's features (n x D), DAMSM image/text codes and key indices."""
        cfg = self.cfg
        start, stop = shard(self.num, self.dist.rank, self.dist.world_size)
        stack = GenerationStack(cfg, self.family, netG, '', self.text_encoder, '', self.dataset, self.device)
        feats, img_codes, txt_codes, keys = [], [], [], []
        for b in generate_test_images(stack, stop, cfg.EVAL.BATCH_SIZE, seed=cfg.SAMPLE.SEED, start=start):
            out = self.extractor(b.images.to(self.device))
            feats.append((out[0] if isinstance(out, tuple) else out).double().cpu())
            keys += [self.key_index[k] for k in b.keys]
            if self.want_rp:
                encoded = [encode_caption(c, self.dataset.wordtoix, cfg.TEXT.WORDS_NUM) for c in b.captions]
                caps = torch.stack([c for c, _, _ in encoded])
                lens = torch.tensor([max(int(n), 1) for _, n, _ in encoded])
                img, txt = damsm_codes(self.image_encoder, self.text_encoder, b.images, caps, lens, device=self.device)
                img_codes.append(img.double())
                txt_codes.append(txt.double())
        # a rank without images (NUM_FID < processes) still takes part in the gather
        feats = torch.cat(feats) if feats else torch.zeros(0, self.dims, dtype=torch.float64)
        codes = (torch.cat(img_codes), torch.cat(txt_codes)) if img_codes else (None, None)
        return feats, codes, torch.tensor(keys, dtype=torch.long)

    def evaluate(self, netG) -> dict | None:
        """Scores of ``netG`` (the bare generator to sample from, put in eval mode by the caller).
        Every rank must call it; rank 0 gets ``{'fid', 'kid', 'kid_std', 'r_precision',
        'r_precision_std', 'images', 'seconds'}`` (None where not computed), other ranks None."""
        began = time.time()
        if self.dist.distributed:
            # the other ranks' BatchNorm statistics drift from rank 0's between DDP's buffer
            # broadcasts: all ranks sample from rank 0's generator, the one that is saved
            with torch.no_grad():
                for buffer in netG.buffers():
                    dist.broadcast(buffer, 0)
        saved = rng_state()
        modes = (self.text_encoder.training, self.image_encoder.training)
        self.text_encoder.eval()
        self.image_encoder.eval()
        try:
            feats, (img, txt), keys = self._local_outputs(netG)
        finally:
            self.text_encoder.train(modes[0])
            self.image_encoder.train(modes[1])
            set_rng_state(saved)
        feats = _gather_rows(feats, self.dist, self.device)
        keys = _gather_rows(keys[:, None], self.dist, self.device)[:, 0]
        if self.want_rp:
            img = _gather_rows(img, self.dist, self.device)
            txt = _gather_rows(txt, self.dist, self.device)
        if not self.dist.is_main:
            return None
        scores = fid_and_kid(self.cfg, feats, self.reference)
        record = {'fid': scores['fid'], 'kid': None, 'kid_std': None, 'r_precision': None, 'r_precision_std': None,
                  'images': int(feats.size(0))}
        if 'kid' in scores:
            record.update(kid=scores['kid']['value'], kid_std=scores['kid']['std'])
        if self.want_rp:
            saved = rng_state()
            try:
                rp = r_precision_of_codes(self.cfg, self.dataset, self.text_encoder.eval(), img, txt,
                                          [self.dataset.filenames[int(k)] for k in keys], self.device)
                record.update(r_precision=rp['mean'], r_precision_std=rp['std'])
            except TooFewCaptions as e:
                if self.cfg.EVAL.R_PRECISION == 'on':
                    raise ConfigError(f'EVAL.R_PRECISION=on: {e}') from None
            finally:
                self.text_encoder.train(modes[0])
                set_rng_state(saved)
        record['seconds'] = time.time() - began
        return record
