"""DF-GAN's update: optimisers, one D step, one G step and its noise, as plain functions.

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

import math

import torch
import torch.nn as nn

from .base import frozen
from .losses import discriminator_hinge_loss, generator_adversarial_loss, matching_aware_gp

__all__ = ['GENERATOR_LR', 'DISCRIMINATOR_LR', 'BETAS', 'MAGP_P', 'MAGP_K', 'TRUNCATION_BOUND',
           'build_optimizers', 'mismatched_features', 'hinge_real', 'hinge_fake',
           'discriminator_losses', 'd_step', 'generator_loss', 'g_step', 'd_step_v1', 'g_step_v1',
           'truncated_normal', 'sample_noise', 'train_step', 'train_step_v1']

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


def hinge_real(logits: torch.Tensor) -> torch.Tensor:
    """``mean(relu(1 - logits))``: pairs the discriminator should accept."""
    return torch.relu(1.0 - logits).mean()


def hinge_fake(logits: torch.Tensor) -> torch.Tensor:
    """``mean(relu(1 + logits))``: pairs the discriminator should reject."""
    return torch.relu(1.0 + logits).mean()


def discriminator_losses(netD, netC, real: torch.Tensor, fake: torch.Tensor, sent: torch.Tensor,
                         magp_p: float = MAGP_P, magp_k: float = MAGP_K) -> dict:
    """DF-GAN 2022's D loss terms, with their graphs. real, fake: B x 3 x S x S; sent: B x D.

    ``fake`` is detached here. Returns ``errD`` (the total to minimise), ``errD_real``,
    ``errD_fake``, ``errD_mismatch`` and ``MAGP``.
    """
    real = real.detach().requires_grad_(True)
    sent = sent.detach().requires_grad_(True)
    real_features = netD(real)
    real_logits = netC(real_features, sent)
    err_real = hinge_real(real_logits)
    err_mis = hinge_fake(netC(mismatched_features(real_features), sent))
    err_fake = hinge_fake(netC(netD(fake.detach()), sent))
    gp = matching_aware_gp(real_logits, real, sent, p=magp_p, k=magp_k)
    total = err_real + (err_fake + err_mis) / 2.0 + gp
    return dict(errD=total, errD_real=err_real, errD_fake=err_fake, errD_mismatch=err_mis, MAGP=gp)


def d_step(netD, netC, optimizer_d, real: torch.Tensor, fake: torch.Tensor, sent: torch.Tensor,
           magp_p: float = MAGP_P, magp_k: float = MAGP_K) -> dict:
    """One DF-GAN 2022 D update (hinge terms + MA-GP, one optimiser step).
    Returns the detached loss terms of :func:`discriminator_losses`."""
    losses = discriminator_losses(netD, netC, real, fake, sent, magp_p, magp_k)
    optimizer_d.zero_grad(set_to_none=True)
    losses['errD'].backward()
    optimizer_d.step()
    return {k: v.detach() for k, v in losses.items()}


def generator_loss(netD, netC, fake: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
    """``-mean(C(D(fake), sent))``; fake B x 3 x S x S with G's graph, sent B x D."""
    return generator_adversarial_loss(netC(netD(fake), sent))


def g_step(netD, netC, optimizer_g, fake: torch.Tensor, sent: torch.Tensor) -> dict:
    """One DF-GAN G update on the fake images of this iteration (made before the D step).
    D and C get no gradients. Returns ``{'errG'}`` detached."""
    with frozen(netD, netC):
        err_g = generator_loss(netD, netC, fake, sent.detach())
        optimizer_g.zero_grad(set_to_none=True)
        err_g.backward()
    optimizer_g.step()
    return dict(errG=err_g.detach())


def d_step_v1(netD, optimizer_d, real: torch.Tensor, fake: torch.Tensor, sent: torch.Tensor,
              magp_p: float = MAGP_P, magp_k: float = MAGP_K) -> dict:
    """DF-GAN 2020's D update: a hinge step (mismatch: features 0..B-2 with sentences 1..B-1),
    then an MA-GP step on a new real pass. ``netD.COND_DNET`` is the matching head (reached
    through a DataParallel/DDP wrapper's ``module``)."""
    head = getattr(netD, 'module', netD).COND_DNET
    sent = sent.detach()
    err_d, err_real, err_fake, err_mis = discriminator_hinge_loss(head, netD(real.detach()),
                                                                  netD(fake.detach()), sent)
    optimizer_d.zero_grad(set_to_none=True)
    err_d.backward()
    optimizer_d.step()
    real_gp = real.detach().requires_grad_(True)
    sent_gp = sent.requires_grad_(True)
    gp = matching_aware_gp(head(netD(real_gp), sent_gp), real_gp, sent_gp, p=magp_p, k=magp_k)
    optimizer_d.zero_grad(set_to_none=True)
    gp.backward()
    optimizer_d.step()
    return dict(errD=err_d.detach(), errD_real=err_real.detach(), errD_fake=err_fake.detach(),
                errD_mismatch=err_mis.detach(), MAGP=gp.detach())


def g_step_v1(netD, optimizer_g, fake: torch.Tensor, sent: torch.Tensor) -> dict:
    """DF-GAN 2020's G update: ``-mean(COND_DNET(D(fake), sent))``."""
    bare = getattr(netD, 'module', netD)
    return g_step(netD, bare.COND_DNET, optimizer_g, fake, sent)


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


def train_step(netG, netD, netC, optimizer_g, optimizer_d, real: torch.Tensor, sent: torch.Tensor,
               z_dim: int = 100, magp_p: float = MAGP_P, magp_k: float = MAGP_K,
               generator: torch.Generator | None = None) -> dict:
    """One DF-GAN 2022 iteration on real images B x 3 x S x S and their sentences B x D:
    fake = G(randn, sent), the D step, then the G step on the same fake images.
    Returns the detached losses of both steps."""
    sent = sent.detach()
    noise = sample_noise(real.size(0), z_dim, generator=generator, device=real.device)
    fake = netG(noise, sent)
    losses = d_step(netD, netC, optimizer_d, real, fake, sent, magp_p, magp_k)
    losses.update(g_step(netD, netC, optimizer_g, fake, sent))
    return losses


def train_step_v1(netG, netD, optimizer_g, optimizer_d, real: torch.Tensor, sent: torch.Tensor,
                  z_dim: int = 100, magp_p: float = MAGP_P, magp_k: float = MAGP_K,
                  generator: torch.Generator | None = None) -> dict:
    """One DF-GAN 2020 iteration: fake = G(randn, sent), hinge step, MA-GP step, G step."""
    sent = sent.detach()
    noise = sample_noise(real.size(0), z_dim, generator=generator, device=real.device)
    fake = netG(noise, sent)
    losses = d_step_v1(netD, optimizer_d, real, fake, sent, magp_p, magp_k)
    losses.update(g_step_v1(netD, optimizer_g, fake, sent))
    return losses
