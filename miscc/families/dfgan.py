"""DF-GAN as a family (``MODEL.NAME: dfgan`` for the 2022 release, ``dfgan_v1`` for the 2020 one):
its update as plain functions (optimisers, one D step, one G step, its noise) and the
``Family`` classes the shared loop, sampling and evaluation use.

2022 release (tobran/DF-GAN ``code/lib/modules.py`` ``train``, ``code/src/train.py``):

- D step, one optimiser step: real images and sentences take ``requires_grad``;
  ``errD = relu(1 - C(D(x), s)) + (relu(1 + C(D(G(z, s)), s)) + relu(1 + C(D(x)_mis, s))) / 2
  + MA-GP``, means over the batch. Mismatched pairs are the real features rolled by one,
  ``cat(D(x)[1:], D(x)[:1])`` with the sentences in order: image i+1 with sentence i, all B
  pairs. MA-GP is ``k * mean(||[dC/dx, dC/ds]||_2 ^ p)``, p = 6, k = 2, of the logits of the
  real/matching pass, differentiated with respect to the real images and the sentences.
- G step: ``-mean(C(D(G(z, s)), s))`` on the same fake images, after D's update.
- Adam for G over netG (lr 1e-4), for D over netD then netC (lr 4e-4), betas (0.0, 0.9).
- Training noise is standard normal; sampling and FID use ``truncation``: a standard normal
  truncated to [-2, 2] times ``trunc_rate`` (0.88 in its CUB and COCO configs).

2020 release (``code/main.py``): the same hinge terms but mismatched pairs are real features
0..B-2 with sentences 1..B-1, and MA-GP is a second D step after the hinge step, on a new
real pass (the order SSA-GAN kept); its discriminator holds the matching head as ``COND_DNET``.

Functions take the modules, tensors and optimisers they use; ``netD``/``netC`` may be wrapped
(DataParallel/DDP) for the D step. The G step freezes their parameters while it runs (only
the gradient with respect to the fake images is needed); under DDP pass the bare modules there.
"""
from __future__ import annotations

import functools
import math
from typing import Iterable, Mapping

import torch
import torch.nn as nn

from models.dfgan import NetC, NetD, NetD_v1, NetG, NetG_v1

from ..core.checkpoint import (CheckpointError, load_dfgan_checkpoint, load_file, load_model_state, read_dfgan_checkpoint,
                               unwrap_model)
from ..core.config import ConfigError
from .base import Family, Update, check_image_size, frozen, loss_floats, optimizer_step
from .losses import (damsm_loss, damsm_smoothing, discriminator_hinge_loss, generator_adversarial_loss, hinge_accept,
                     hinge_reject, matching_aware_gp)

__all__ = ['GENERATOR_LR', 'DISCRIMINATOR_LR', 'BETAS', 'MAGP_P', 'MAGP_K', 'TRUNCATION_BOUND',
           'build_optimizers', 'mismatched_features',
           'discriminator_losses', 'generator_loss',
           'truncated_normal', 'sample_noise', 'DFGANUpdate', 'DFGAN',
           'DFGANv1']

GENERATOR_LR = 1e-4        # code/src/train.py: Adam(netG.parameters(), lr=0.0001, betas=(0.0, 0.9))
DISCRIMINATOR_LR = 4e-4    # Adam(list(netD.parameters()) + list(netC.parameters()), lr=0.0004, ...)
BETAS = (0.0, 0.9)
MAGP_P = 6.0               # code/lib/modules.py MA_GP: 2.0 * mean(grad_l2norm ** 6)
MAGP_K = 2.0
TRUNCATION_BOUND = 2.0     # code/lib/utils.py truncated_noise: truncnorm(-2, 2) * truncation


def build_optimizers(netG: nn.Module, netD: nn.Module, netC: nn.Module | None = None,
                     g_lr: float = GENERATOR_LR, d_lr: float = DISCRIMINATOR_LR, betas=BETAS):
    """``(optimizer_G, optimizer_D)``: Adam over netG, and one Adam over netD's then netC's
    parameters (that order, so DF-GAN's saved ``optimizer_D`` state loads). Without ``netC``
    (2020 layout, head inside netD) D's optimiser covers netD alone."""
    d_params = list(netD.parameters()) + (list(netC.parameters()) if netC is not None else [])
    optimizer_g = torch.optim.Adam(netG.parameters(), lr=g_lr, betas=tuple(betas))
    optimizer_d = torch.optim.Adam(d_params, lr=d_lr, betas=tuple(betas))
    return optimizer_g, optimizer_d


def mismatched_features(features: torch.Tensor) -> torch.Tensor:
    """B x ... -> B x ...: row i is row i+1 (the last is row 0), paired with sentence i."""
    return torch.cat((features[1:], features[:1]), dim=0)


def discriminator_losses(netD, netC, real: torch.Tensor, fake: torch.Tensor, sent: torch.Tensor,
                         magp_p: float = MAGP_P, magp_k: float = MAGP_K, two_way: bool = False) -> dict:
    """DF-GAN 2022's D loss terms, with their graphs. real, fake: B x 3 x S x S; sent: B x D.

    ``fake`` is detached here. Returns ``errD`` (the total to minimise), ``errD_real``,
    ``errD_fake``, ``errD_mismatch`` and ``MAGP``. ``magp_k`` 0: no penalty (not computed).
    ``two_way``: ``netC(features)`` (no sentence: the realness head U) adds
    ``errD_uncond = relu(1 - U(x)) + relu(1 + U(G(z, s)))`` (means), a realness term beside the
    matching terms, as the two-way discriminators of StackGAN/AttnGAN sum theirs.
    """
    real = real.detach().requires_grad_(bool(magp_k))
    sent = sent.detach().requires_grad_(bool(magp_k))
    real_features = netD(real)
    fake_features = netD(fake.detach())
    real_logits = netC(real_features, sent)
    err_real = hinge_accept(real_logits)
    err_mis = hinge_reject(netC(mismatched_features(real_features), sent))
    err_fake = hinge_reject(netC(fake_features, sent))
    gp = matching_aware_gp(real_logits, real, sent, p=magp_p, k=magp_k) if magp_k else real_logits.new_zeros(())
    total = err_real + (err_fake + err_mis) / 2.0 + gp
    losses = dict(errD=total, errD_real=err_real, errD_fake=err_fake, errD_mismatch=err_mis, MAGP=gp)
    if two_way:
        losses['errD_uncond'] = hinge_accept(netC(real_features)) + hinge_reject(netC(fake_features))
        losses['errD'] = total + losses['errD_uncond']
    return losses


def generator_loss(netD, netC, fake: torch.Tensor, sent: torch.Tensor, two_way: bool = False) -> torch.Tensor:
    """``-mean(C(D(fake), sent))``, with ``two_way`` ``- mean(U(D(fake)))`` too; fake B x 3 x S x S
    with G's graph, sent B x D."""
    features = netD(fake)
    loss = generator_adversarial_loss(netC(features, sent))
    return loss + generator_adversarial_loss(netC(features)) if two_way else loss


def truncated_normal(shape, bound: float = TRUNCATION_BOUND, generator: torch.Generator | None = None,
                     device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal samples restricted to [-bound, bound] (the distribution of scipy's
    ``truncnorm(-bound, bound)``), by the inverse CDF of uniform samples."""
    if not bound > 0:
        raise ValueError(f'truncation bound must be positive, got {bound}')
    lower = 0.5 * math.erfc(bound / math.sqrt(2.0))   # Phi(-bound)
    u = torch.rand(shape, generator=generator, dtype=torch.float64,
                   device=generator.device if generator is not None else device)
    u = lower + (1.0 - 2.0 * lower) * u
    x = math.sqrt(2.0) * torch.special.erfinv(2.0 * u - 1.0)
    return x.clamp_(-bound, bound).to(device=device, dtype=dtype)


def sample_noise(batch_size: int, z_dim: int, truncation: bool = False, trunc_rate: float = 0.88,
                 generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """B x z_dim generator noise: ``randn`` (training), or with ``truncation``
    ``trunc_rate * truncated_normal(bound 2)`` (DF-GAN's sampling and FID)."""
    if not truncation:
        noise = torch.randn(batch_size, z_dim, generator=generator,
                            device=generator.device if generator is not None else device)
        return noise if device is None else noise.to(device)
    return trunc_rate * truncated_normal((batch_size, z_dim), generator=generator, device=device)


# ---------------------------------------------------------------------------------------------
# The families
# ---------------------------------------------------------------------------------------------

class DFGANUpdate(Update):
    """One DF-GAN iteration on a ``datasets.Batch`` with the frozen DAMSM text encoder:
    sentence codes (no gradient), fake = G(randn, sent), the D step, the G step on the same
    fakes (2022: ``d_step``; 2020: ``d_step_v1``; both ``g_step``), top to bottom below.

    ``nets`` are the bare networks, ``modules`` their device-wrapped forms (DDP...), used for
    the forward passes of G and of the D step; the G step runs through the bare D (and C)
    under DDP, so that it takes no part in D's gradient synchronisation.
    """

    def __init__(self, nets: dict, modules: dict, encoders: dict, optimizers: dict, version: int,
                 z_dim: int, magp_p: float, magp_k: float, distributed: bool = False, two_way: bool = False,
                 lambda_da: float = 0.0, smooth: dict | None = None):
        self.version, self.z_dim, self.magp_p, self.magp_k = version, z_dim, magp_p, magp_k
        self.two_way, self.lambda_da, self.smooth = two_way, lambda_da, smooth or {}
        self.netG, self.netD, self.netC = nets['netG'], nets['netD'], nets.get('netC')
        self.wrapped_G, self.wrapped_D, self.wrapped_C = modules['netG'], modules['netD'], modules.get('netC')
        self.wrapped_T, self.image_encoder = modules['text_encoder'], encoders.get('image_encoder')
        self.optimizers = optimizers
        self.optG, self.optD = optimizers['optimizerG'], optimizers['optimizerD']
        self.distributed = distributed
        self.device = next(self.netG.parameters()).device

    def _damsm_term(self, images, words, sent, cap_lens, class_ids) -> torch.Tensor:
        """lambda_DA x SSA-GAN's DAMSM loss of ``images`` (G's extra term in DF-GAN's ablation row "w/ DAMSM")."""
        return self.lambda_da * damsm_loss(self.image_encoder, images, words, sent, cap_lens, class_ids, **self.smooth)

    def __call__(self, batch) -> dict:
        """``batch``: images B x 3 x S x S in [-1, 1], captions B x T, cap_lens B. Returns the
        losses as floats: errD, errD_real, errD_fake, errD_mismatch, MAGP, errG, and errD_uncond
        with the two-way output, DAMSM with ``lambda_da``."""
        imgs = batch.images.to(self.device, non_blocking=True)
        with torch.no_grad():
            words, sent = self.wrapped_T(batch.captions.to(self.device, non_blocking=True), batch.cap_lens)
        words, sent = words.detach().float(), sent.detach().float()
        fake = self.wrapped_G(torch.randn(imgs.size(0), self.z_dim, device=self.device), sent)
        # SSA-GAN's DAMSM term in G (DF-GAN's ablation row "w/ DAMSM")
        damsm = None
        if self.lambda_da:
            damsm = functools.partial(self._damsm_term, words=words, sent=sent, cap_lens=batch.cap_lens,
                                      class_ids=batch.class_ids)
        d_step = self.d_step if self.version == 2022 else self.d_step_v1
        losses = d_step(imgs, fake, sent)
        losses.update(self.g_step(fake, sent, damsm))
        self.last_real, self.last_fake = imgs, fake.detach()
        return loss_floats(losses)

    def d_step(self, real: torch.Tensor, fake: torch.Tensor, sent: torch.Tensor) -> dict:
        """DF-GAN 2022's D update: the hinge terms + MA-GP (:func:`discriminator_losses`), one
        optimiser step. Returns the detached loss terms."""
        losses = discriminator_losses(self.wrapped_D, self.wrapped_C, real, fake, sent, self.magp_p, self.magp_k,
                                      self.two_way)
        optimizer_step(self.optD, losses['errD'])
        return {k: v.detach() for k, v in losses.items()}

    def d_step_v1(self, real: torch.Tensor, fake: torch.Tensor, sent: torch.Tensor) -> dict:
        """DF-GAN 2020's D update: a hinge step (mismatch: features 0..B-2 with sentences 1..B-1),
        then an MA-GP step on a new real pass (none with MA-GP off). The matching head is the bare
        D's ``COND_DNET``."""
        D, head = self.wrapped_D, self.netD.COND_DNET
        sent = sent.detach()
        err_d, err_real, err_fake, err_mis = discriminator_hinge_loss(head, D(real.detach()), D(fake.detach()), sent)
        optimizer_step(self.optD, err_d)
        if not self.magp_k:          # MA-GP off: no second step
            gp = err_d.new_zeros(())
        else:
            real_gp, sent_gp = real.detach().requires_grad_(True), sent.requires_grad_(True)
            gp = matching_aware_gp(head(D(real_gp), sent_gp), real_gp, sent_gp, p=self.magp_p, k=self.magp_k)
            optimizer_step(self.optD, gp)
        return dict(errD=err_d.detach(), errD_real=err_real.detach(), errD_fake=err_fake.detach(),
                    errD_mismatch=err_mis.detach(), MAGP=gp.detach())

    def g_step(self, fake: torch.Tensor, sent: torch.Tensor, damsm=None) -> dict:
        """One G update on the fake images of this iteration (made before the D step):
        ``-mean(C(D(fake), sent))`` (2020: the bare D's ``COND_DNET`` as C; with the two-way
        output also ``- mean(U(D(fake)))``), + ``damsm(fake)`` when given (the weighted DAMSM
        loss, ``TRAIN.LAMBDA_DA``). D and C get no gradients; under DDP the pass runs through the
        bare D, so that it takes no part in D's gradient synchronisation. Returns ``{'errG'}``
        detached, with ``'DAMSM'`` when ``damsm`` is given."""
        head = self.netC if self.version == 2022 else self.netD.COND_DNET
        if self.distributed:
            D, C = self.netD, head
        else:   # 2020: no NetC, the head is part of D
            D, C = self.wrapped_D, self.wrapped_C if self.wrapped_C is not None else head
        with frozen(self.netD, head):
            err_g = generator_loss(D, C, fake, sent.detach(), self.two_way)
            extra = damsm(fake) if damsm is not None else None
            optimizer_step(self.optG, err_g if extra is None else err_g + extra)
        return dict(errG=err_g.detach()) if extra is None else dict(errG=err_g.detach(), DAMSM=extra.detach())


class DFGAN(Family):
    """DF-GAN 2022 (tobran/DF-GAN): ``NetG``, ``NetD`` and the matching head ``NetC`` of
    ``models/dfgan.py``; the one-step D update with MA-GP, Adam 1e-4 / 4e-4 with betas
    (0.0, 0.9) from TRAIN.*, truncated sampling noise with ``DFGAN.TRUNCATION``.

    ``TRAIN.NET_G`` may be our ``netG_XXX.pth``, DF-GAN's released training state
    (``state_epoch_1220.pth``: ``{'model': {'netG', ...}}``, with or without ``module.``) or a
    plain generator state dict; a DF-GAN 2020 generator is detected by its keys and sampled
    with ``NetG_v1``.
    """
    name = 'dfgan'
    version = 2022
    networks = ('netG', 'netD', 'netC')
    save_intervals = {'netG': 'GSAVE_INTERVAL', 'netD': 'DSAVE_INTERVAL', 'netC': 'DSAVE_INTERVAL'}

    def build_networks(self, cfg) -> dict:
        nf, size, cond = cfg.TRAIN.NF, check_image_size(cfg), cfg.TEXT.EMBEDDING_DIM
        return {'netG': NetG(nf, cfg.GAN.Z_DIM, cond, size, 3), 'netD': NetD(nf, size, 3),
                'netC': NetC(nf, cond, two_way=cfg.DFGAN.OUTPUT == 'two_way')}

    def load_weights(self, module: nn.Module, path: str, name: str) -> nn.Module:
        """Strict load of network ``name`` from ``path``. A generator may come from any DF-GAN
        file (``read_dfgan_checkpoint``); a 2020 generator given to the 2022 NetG is loaded
        into a ``NetG_v1`` of the same widths, which is returned instead."""
        if name != 'netG':
            return load_model_state(module, path)
        bare = unwrap_model(module)
        if isinstance(bare, NetG) and read_dfgan_checkpoint(path)['layout'] == 'dfgan_v1':
            module = NetG_v1(bare.ngf, bare.nz, bare.imsize, bare.cond_dim).to(next(bare.parameters()).device)
        load_dfgan_checkpoint(path, module)
        return module

    def is_release_start(self, path: str) -> bool:
        """DF-GAN's own training state (``state_epoch_XXX.pth``: ``{'model': ..., 'optimizers': ...}``)
        as TRAIN.NET_G: training continues from it."""
        obj = load_file(path)
        return isinstance(obj, Mapping) and 'model' in obj and 'progress' not in obj

    def load_release_start(self, nets: dict, optimizers: dict, path: str) -> int | None:
        """Networks and optimiser states of DF-GAN's training state, as DF-GAN's own resume
        loads them; returns the epoch after the one it was saved at."""
        if not self.is_release_start(path):
            return None
        ckpt = read_dfgan_checkpoint(path)
        has_optimizers = isinstance(ckpt['optimizers'], Mapping) and {'optimizer_G', 'optimizer_D'} <= set(ckpt['optimizers'])
        load_dfgan_checkpoint(path, nets['netG'], nets['netD'], nets.get('netC'),
                              *((optimizers['optimizerG'], optimizers['optimizerD']) if has_optimizers else ()))
        if ckpt['epoch'] is None:
            raise CheckpointError(f"'{path}' holds no 'epoch' to continue after")
        return int(ckpt['epoch']) + 1

    def noise(self, cfg, indices: Iterable[int], seed: int) -> torch.Tensor:
        """len(indices) x GAN.Z_DIM sampling noise, image n's from (seed, n) alone: with
        ``DFGAN.TRUNCATION`` ``TRUNC_RATE`` x a normal truncated to [-2, 2] (DF-GAN's sampling
        and FID), else standard normal."""
        if not cfg.DFGAN.TRUNCATION:
            return super().noise(cfg, indices, seed)
        gen = torch.Generator()
        rows = []
        for n in indices:
            gen.manual_seed(seed * 1_000_003 + int(n))
            rows.append(cfg.DFGAN.TRUNC_RATE * truncated_normal((cfg.GAN.Z_DIM,), generator=gen))
        return torch.stack(rows)

    def _discriminators(self, nets: dict) -> list:
        return [nets['netD'], nets['netC']]

    def prepare_networks(self, cfg, nets: dict, device: torch.device) -> None:
        """TRAIN.CONV_GRADFIX for the discriminator's convolutions (as for SSA-GAN)."""
        mode = cfg.TRAIN.CONV_GRADFIX
        for net in self._discriminators(nets):
            net.set_conv_gradfix(mode == 'on' or (mode == 'auto' and device.type == 'cuda'))

    def _check(self, cfg, finetune: bool) -> None:
        if finetune:
            raise ConfigError(f"MODEL.NAME '{self.name}' has no encoder fine-tuning (main_finetune.py is "
                              f"SSA-GAN's); train it with main.py")
        if cfg.DFGAN.OUTPUT == 'two_way' and self.version != 2022:
            raise ConfigError(f"DFGAN.OUTPUT='two_way' is built on DF-GAN 2022's matching head NetC; "
                              f"MODEL.NAME '{self.name}' has none: use MODEL.NAME=dfgan")

    def make_optimizers(self, cfg, nets: dict, text_encoder=None, image_encoder=None,
                        finetune: bool = False) -> dict:
        """Adam for G; one Adam for D over netD then netC (DF-GAN's order); TRAIN's rates and betas."""
        self._check(cfg, finetune)
        train = cfg.TRAIN
        opt_g, opt_d = build_optimizers(nets['netG'], nets['netD'], nets.get('netC'), g_lr=train.GENERATOR_LR,
                                        d_lr=train.DISCRIMINATOR_LR, betas=(train.BETA1, train.BETA2))
        return {'optimizerG': opt_g, 'optimizerD': opt_d}

    def make_update(self, cfg, nets: dict, modules: dict, encoders: dict, optimizers: dict,
                    finetune: bool = False, distributed: bool = False) -> DFGANUpdate:
        self._check(cfg, finetune)
        return DFGANUpdate(nets, modules, encoders, optimizers, self.version, cfg.GAN.Z_DIM,
                           cfg.TRAIN.MAGP_P, cfg.TRAIN.MAGP_K, distributed, two_way=cfg.DFGAN.OUTPUT == 'two_way',
                           lambda_da=cfg.TRAIN.LAMBDA_DA, smooth=damsm_smoothing(cfg.TRAIN.SMOOTH))


class DFGANv1(DFGAN):
    """DF-GAN 2020 (its arXiv v1 code): ``NetG_v1`` (keys ``block0..6``, ``affine0..3``) and
    ``NetD_v1`` (SSA-GAN's discriminator, matching head ``COND_DNET`` inside); a hinge D step,
    then an MA-GP step. Its released generator (a plain state dict) loads as TRAIN.NET_G."""
    name = 'dfgan_v1'
    version = 2020
    networks = ('netG', 'netD')
    save_intervals = {'netG': 'GSAVE_INTERVAL', 'netD': 'DSAVE_INTERVAL'}

    def build_networks(self, cfg) -> dict:
        nf, size, cond = cfg.TRAIN.NF, check_image_size(cfg), cfg.TEXT.EMBEDDING_DIM
        return {'netG': NetG_v1(nf, cfg.GAN.Z_DIM, size, cond), 'netD': NetD_v1(nf, size, cond)}

    def _discriminators(self, nets: dict) -> list:
        return [nets['netD']]
