"""GAN-INT-CLS update (Reed et al. 2016, "Generative Adversarial Text to Image Synthesis").

Losses as pure functions, and one discriminator step and one generator step that take the
networks, the optimisers and the batch tensors explicitly (networks: models/gan_int_cls.py).

The paper's Algorithm 1 (GAN-CLS), with s = D's probability::

    s_r = D(x, h)     real image, right text
    s_w = D(x, h^)    real image, wrong text
    s_f = D(G(z, h), h)
    D maximises log s_r + (log(1 - s_w) + log(1 - s_f)) / 2;  G maximises log s_f

and GAN-INT: G also maximises log D(G(z, h_i), h_i) on h_i = beta h1 + (1 - beta) h2,
beta = 0.5; D never sees the interpolations. Switches (``GanIntClsOptions``) add what the
PyTorch implementation (aelnouby/Text-to-Image-Synthesis, trainer.py) trains with or offers:
one-sided label smoothing (D's target for real/right pairs 0.9), feature matching on D's
4 x 4 image features (x 100), L1 to the real image (x 50), the WGAN loss with weight clipping
and several critic steps per G step, WGAN-GP (Gulrajani et al. 2017: a gradient penalty on
interpolates instead of clipping), minibatch discrimination (models/gan_int_cls.py) and the
unconditional ("vanilla") variants.

Where the two differ (the paper is followed unless a switch says otherwise):
- weighting: the implementation sums the three D terms (``mismatch_weight=1``), the paper
  halves the two mismatching ones (``mismatch_weight=0.5``, also the authors' Torch code);
- mismatching pair: both codes pair a wrong *image* with the right text (``mismatch='image'``);
  the paper a real image with wrong text (``mismatch='text'``);
- INT: the implementation's data set returns an ``inter_embed`` that its trainer never uses;
  INT here follows the paper as its own mean term x ``int_weight`` (the authors' Torch code
  appends B/2 midpoints of the batch's two halves to G's batch of B and averages the BCE
  over all 3B/2);
- it scores probabilities with ``BCELoss``; here ``binary_cross_entropy_with_logits`` on the
  same logits (equal up to BCELoss clamping log at -100);
- its WGAN critic averages the scores over the batch inside ``forward``; here the losses take
  the means, which is the same number;
- its ``Utils.compute_GP`` (present, never called) takes the 2-norm of the gradient over the
  colour channels only (``norm(2, dim=1)`` of a B x 3 x 64 x 64 tensor, one norm per pixel);
  here the norm is over the whole image, one per sample, as the WGAN-GP paper defines it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.gan_int_cls import (IMAGE_SIZE, Discriminator, Generator, from_reference_state_dict, init_dcgan_weights,
                                stage_count)

from ..core.checkpoint import CheckpointError, load_file, load_model_state, unwrap_model
from ..core.config import CHOICES, ConfigError
from ..data.hd5 import Hd5Batch
from .base import Family, Update, adam_for_g_and_d, frozen, loss_floats

__all__ = ['GanIntCls', 'GanIntClsUpdate', 'GanIntClsOptions', 'options_from_config', 'embedding_dim', 'bce_with_logits', 'discriminator_loss', 'critic_loss',
           'generator_adversarial_loss', 'generator_critic_loss', 'gradient_penalty', 'feature_matching_loss',
           'l1_distance', 'interpolate_embeddings', 'shifted_in_batch', 'clip_weights_',
           'critic_iterations', 'make_optimizers',
           'LOSSES', 'CRITIC_LOSSES', 'MISMATCHES', 'check_critic']

LOSSES = CHOICES['GAN_INT_CLS.LOSS']
CRITIC_LOSSES = ('wgan', 'wgan_gp')     # a critic (raw scores) and several critic steps per G step
MISMATCHES = CHOICES['GAN_INT_CLS.MISMATCH']
# WGAN's schedule, as the implementation has it: many critic steps while the critic is far
# from optimal (the first G steps) and now and then afterwards.
BURST_CRITIC_STEPS = 100
BURST_FIRST_GENERATOR_STEPS = 25
BURST_EVERY = 500


@dataclass(frozen=True)
class GanIntClsOptions:
    """The switches and coefficients of the update (config section ``GAN_INT_CLS``)."""
    loss: str = 'gan'               # 'gan' (BCE on logits), 'wgan' (critic, weight clipping) or
                                    # 'wgan_gp' (critic, gradient penalty)
    conditional: bool = True        # False: the unconditional G(z) and D(x)
    cls: bool = True                # matching-aware D (mismatching pairs scored as fake)
    mismatch: str = 'text'          # 'text': real image + wrong text; 'image': wrong image + right text
    mismatch_weight: float = 0.5    # weight of each of the two mismatching D terms
    interpolation: bool = True      # GAN-INT
    int_beta: float = 0.5
    int_weight: float = 1.0
    label_smoothing: float = 0.1    # D's real/right target is 1 - this
    feature_matching: float = 100.0
    l1: float = 50.0
    n_critic: int = 5
    critic_burst: bool = True
    clip: float = 0.01
    gp_weight: float = 10.0

    _CONFIG_KEYS = {'loss': 'LOSS', 'conditional': 'CONDITIONAL', 'cls': 'CLS',
                    'mismatch': 'MISMATCH', 'mismatch_weight': 'MISMATCH_WEIGHT',
                    'interpolation': 'INT', 'int_beta': 'INT_BETA', 'int_weight': 'INT_WEIGHT',
                    'label_smoothing': 'LABEL_SMOOTHING', 'feature_matching': 'FEATURE_MATCHING',
                    'l1': 'L1', 'n_critic': 'N_CRITIC', 'critic_burst': 'CRITIC_BURST',
                    'clip': 'CLIP', 'gp_weight': 'GP_WEIGHT'}

    def __post_init__(self):
        def bad(name: str, expected: str):
            key = 'GAN_INT_CLS.' + self._CONFIG_KEYS[name]
            return ValueError(f"config key '{key}' expects {expected}, got {getattr(self, name)!r}")
        if self.loss not in LOSSES:
            raise bad('loss', "'gan', 'wgan' or 'wgan_gp'")
        if self.mismatch not in MISMATCHES:
            raise bad('mismatch', "'text' or 'image'")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad('label_smoothing', 'a value in [0, 1)')
        if not 0.0 <= self.int_beta <= 1.0:
            raise bad('int_beta', 'a value in [0, 1]')
        for name in ('mismatch_weight', 'int_weight', 'feature_matching', 'l1', 'clip', 'gp_weight'):
            if getattr(self, name) < 0:
                raise bad(name, 'a value >= 0')
        if self.n_critic < 1:
            raise bad('n_critic', 'an int >= 1')

    @classmethod
    def from_config(cls, section: Mapping) -> 'GanIntClsOptions':
        """Options from the ``GAN_INT_CLS`` config section (a mapping, e.g. ``cfg.GAN_INT_CLS.to_dict()``);
        keys the section does not hold keep their defaults."""
        values = {name: section[key] for name, key in cls._CONFIG_KEYS.items() if key in section}
        return cls(**values)

    @property
    def uses_cls(self) -> bool:
        return self.conditional and self.cls

    @property
    def uses_interpolation(self) -> bool:
        return self.conditional and self.interpolation

    @property
    def uses_critic(self) -> bool:
        return self.loss in CRITIC_LOSSES


# --------------------------------------------------------------------------- losses
def bce_with_logits(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean binary cross-entropy of logits (B) against one constant target."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       wrong_logits: Optional[torch.Tensor] = None, real_target: float = 1.0,
                       mismatch_weight: float = 0.5) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """D's BCE loss (to minimise). With ``wrong_logits`` (GAN-CLS):
    ``BCE(real, real_target) + w * (BCE(wrong, 0) + BCE(fake, 0))``; without: ``BCE(real,
    real_target) + BCE(fake, 0)``. ``real_target`` 0.9 is one-sided label smoothing; it
    applies to the real/right term only. Returns (loss, its terms)."""
    real = bce_with_logits(real_logits, real_target)
    fake = bce_with_logits(fake_logits, 0.0)
    terms = {'d_real': real, 'd_fake': fake}
    if wrong_logits is None:
        return real + fake, terms
    wrong = bce_with_logits(wrong_logits, 0.0)
    terms['d_wrong'] = wrong
    return real + mismatch_weight * (wrong + fake), terms


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor,
                wrong_scores: Optional[torch.Tensor] = None,
                mismatch_weight: float = 0.5) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """WGAN critic loss (to minimise): ``-mean D(real) + w * (mean D(wrong) + mean D(fake))``
    with mismatching pairs, ``-mean D(real) + mean D(fake)`` without. ``w = 1`` is the
    implementation's. Returns (loss, its terms: the mean scores)."""
    real = real_scores.mean()
    fake = fake_scores.mean()
    terms = {'d_real': real, 'd_fake': fake}
    if wrong_scores is None:
        return fake - real, terms
    wrong = wrong_scores.mean()
    terms['d_wrong'] = wrong
    return mismatch_weight * (wrong + fake) - real, terms


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss ``BCE(D(G(z, h), h), 1)`` (the paper's "maximise log s_f");
    the target is 1, never smoothed."""
    return bce_with_logits(fake_logits, 1.0)


def generator_critic_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """WGAN G loss ``-mean D(G(z, h), h)``."""
    return -fake_scores.mean()


def gradient_penalty(discriminator: nn.Module, real_images: torch.Tensor, fake_images: torch.Tensor,
                     embeddings: Optional[torch.Tensor], conditional: bool = True,
                     alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
    """WGAN-GP's penalty ``mean_i (||grad_x D(x^_i, h_i)||_2 - 1)^2`` on the interpolates
    ``x^ = alpha x + (1 - alpha) G(z)`` (alpha ~ U(0, 1) per sample unless given, B), the norm
    over each image's C x H x W, the text the right one. Differentiable in D's parameters
    (``create_graph``), so that ``backward`` of the critic loss trains D to keep it small."""
    fake_images = fake_images.detach()
    if alpha is None:
        alpha = torch.rand(real_images.size(0), device=real_images.device, dtype=real_images.dtype)
    alpha = alpha.view(-1, 1, 1, 1)
    mixed = (alpha * real_images.detach() + (1.0 - alpha) * fake_images).requires_grad_(True)
    scores, _ = _score(discriminator, mixed, embeddings, conditional)
    grad, = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def feature_matching_loss(fake_features: torch.Tensor, real_features: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the batch means of D's features (B x C x H x W each):
    ``mean_chw (mean_b f_fake - mean_b f_real)^2``, the real side held constant."""
    return F.mse_loss(fake_features.mean(0), real_features.detach().mean(0))


def l1_distance(fake_images: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the generated and the real images (B x 3 x H x W)."""
    return (fake_images - real_images.detach()).abs().mean()


def interpolate_embeddings(first: torch.Tensor, second: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """``beta * first + (1 - beta) * second`` (B x E each); beta = 0.5 is the midpoint."""
    return beta * first + (1.0 - beta) * second


def shifted_in_batch(x: torch.Tensor) -> torch.Tensor:
    """Item i paired with item i - 1 of the batch (the last with the first): the batch's
    own partners for wrong texts and for interpolation when the data gives none."""
    return torch.roll(x, shifts=1, dims=0)


@torch.no_grad()
def clip_weights_(module: nn.Module, clip: float) -> None:
    """Clamp every parameter of ``module`` to [-clip, clip] in place (WGAN). As in the
    implementation this includes the batch-norm scales and shifts and the text projection."""
    for p in module.parameters():
        p.clamp_(-clip, clip)


def critic_iterations(generator_steps_done: int, n_critic: int = 5, burst: bool = True) -> int:
    """Critic steps before the next G step: ``n_critic``, or with ``burst`` 100 while fewer than
    25 G steps are done and before every 500th (WGAN's schedule, as the implementation runs it;
    WGAN-GP's Algorithm 1 keeps ``n_critic`` throughout, so the update passes no burst there)."""
    if burst and (generator_steps_done < BURST_FIRST_GENERATOR_STEPS
                  or generator_steps_done % BURST_EVERY == 0):
        return BURST_CRITIC_STEPS
    return n_critic


def make_optimizers(generator: nn.Module, discriminator: nn.Module, lr: float = 2e-4,
                    betas: Tuple[float, float] = (0.5, 0.999)) -> Tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for G and D with the paper's and implementation's settings (also for WGAN,
    where the implementation keeps Adam)."""
    return (torch.optim.Adam(generator.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas))


# --------------------------------------------------------------------------- steps
def _noise(noise: Optional[torch.Tensor], like: torch.Tensor, noise_dim: int) -> torch.Tensor:
    if noise is not None:
        return noise
    return torch.randn(like.size(0), noise_dim, device=like.device, dtype=like.dtype)


def _generate(generator: nn.Module, noise: torch.Tensor, embeddings: Optional[torch.Tensor],
              conditional: bool) -> torch.Tensor:
    return generator(noise, embeddings) if conditional else generator(noise)


def _score(discriminator: nn.Module, images: torch.Tensor, embeddings: Optional[torch.Tensor],
           conditional: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    return discriminator(images, embeddings) if conditional else discriminator(images)


def options_from_config(cfg) -> GanIntClsOptions:
    """The update's options of the ``GAN_INT_CLS`` section; a bad value is a ConfigError naming its key."""
    try:
        return GanIntClsOptions.from_config(cfg.GAN_INT_CLS.to_dict())
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_critic(cfg, options: GanIntClsOptions) -> None:
    """WGAN-GP penalises the gradient of each sample's score with respect to that sample alone,
    which layers mixing the batch (D's batch norm, minibatch discrimination) make meaningless
    (Gulrajani et al. 2017, section 4): a ConfigError naming the key to change."""
    if options.loss != 'wgan_gp':
        return
    c = cfg.GAN_INT_CLS
    if c.D_BATCH_NORM:
        raise ConfigError("GAN_INT_CLS.LOSS='wgan_gp' penalises each sample's gradient, which batch norm in the "
                          "critic mixes across the batch: set GAN_INT_CLS.D_BATCH_NORM=False (the WGAN-GP paper's "
                          "critic has none)")
    if c.MINIBATCH_KERNELS:
        raise ConfigError(f"GAN_INT_CLS.LOSS='wgan_gp' penalises each sample's gradient, which minibatch "
                          f"discrimination makes depend on the whole batch: set GAN_INT_CLS.MINIBATCH_KERNELS=0 "
                          f"(got {c.MINIBATCH_KERNELS})")


def embedding_dim(cfg) -> int:
    """The text input size of the networks: DATA.HD5_EMBEDDING_DIM with an hd5 file
    (its precomputed embeddings), else TEXT.EMBEDDING_DIM (the DAMSM sentence code)."""
    return cfg.DATA.HD5_EMBEDDING_DIM if cfg.DATA.HD5_FILE else cfg.TEXT.EMBEDDING_DIM


class GanIntClsUpdate(Update):
    """One training iteration: a D (critic) step on the batch, then, for the 'gan' loss
    always and for 'wgan' once ``critic_iterations`` critic steps are done, a G step on
    the same batch with new noise (the implementation's WGAN loop also takes its G step on
    the last critic batch). Each call consumes one batch, so a WGAN G step comes every
    ``N_CRITIC`` (or 100) driver steps; unlike the implementation the count runs on across
    epoch ends instead of forcing a G step at the last batch of an epoch.

    Conditioning: an ``Hd5Batch`` brings its embeddings and a different-class example (its
    image for ``MISMATCH='image'``, its embedding for 'text'); a ``datasets.Batch`` is
    encoded by the frozen DAMSM text encoder and its mismatches are the batch rolled by
    one (as SSA-GAN's). ``state_dict`` holds the step counters, so a resumed run continues
    in the middle of a critic phase exactly. ``__call__``, ``d_step`` and ``g_step`` read top to
    bottom below; ``wrapped_G`` / ``wrapped_D`` are the device-wrapped modules, ``netG`` / ``netD``
    the bare ones.
    """

    def __init__(self, nets: dict, modules: dict, encoders: dict, optimizers: dict,
                 options: GanIntClsOptions, z_dim: int, distributed: bool = False):
        self.netG, self.netD = nets['netG'], nets['netD']
        self.wrapped_G, self.wrapped_D = modules['netG'], modules['netD']
        self.wrapped_T = modules.get('text_encoder')
        self.optimizers = optimizers
        self.optG, self.optD = optimizers['optimizerG'], optimizers['optimizerD']
        self.options, self.z_dim, self.distributed = options, z_dim, distributed
        self.device = next(self.netG.parameters()).device
        self.generator_steps = 0       # G steps done
        self.critic_steps = 0          # D steps since the last G step

    def state_dict(self) -> dict:
        return {'generator_steps': self.generator_steps, 'critic_steps': self.critic_steps}

    def load_state_dict(self, state: dict) -> None:
        self.generator_steps = int(state['generator_steps'])
        self.critic_steps = int(state['critic_steps'])

    def conditioning(self, batch, images: torch.Tensor):
        """(embeddings B x E, wrong_images, wrong_embeddings) of a batch (None where not given)."""
        if isinstance(batch, Hd5Batch):
            return (batch.embeddings.to(self.device), batch.wrong_images.to(self.device),
                    batch.wrong_embeddings.to(self.device))
        if self.wrapped_T is None:
            raise ConfigError('GAN-INT-CLS with DAMSM conditioning needs the text encoder (TEXT.DAMSM_NAME)')
        with torch.no_grad():
            _, sent = self.wrapped_T(batch.captions.to(self.device), batch.cap_lens)   # B x nef
        return sent.detach().float(), shifted_in_batch(images), None

    def g_step_due(self) -> bool:
        o = self.options
        if not o.uses_critic:
            return True
        burst = o.critic_burst and o.loss == 'wgan'
        return self.critic_steps >= critic_iterations(self.generator_steps, o.n_critic, burst)

    def __call__(self, batch) -> dict:
        """``batch``: a ``datasets.Batch`` or an ``Hd5Batch``. Returns this iteration's losses
        as floats: ``d_loss`` and its terms; ``g_loss`` and its terms on G-step iterations."""
        images = batch.images.to(self.device, non_blocking=True)
        emb, wrong_images, wrong_emb = self.conditioning(batch, images)
        losses = self.d_step(images, emb, wrong_images=wrong_images, wrong_embeddings=wrong_emb)
        fake = losses.pop('fake_images')
        self.critic_steps += 1
        if self.g_step_due():
            g = self.g_step(images, emb)
            fake = g.pop('fake_images')
            losses.update(g)
            self.generator_steps += 1
            self.critic_steps = 0
        self.last_real, self.last_fake = images, fake
        return loss_floats(losses)

    def d_step(self, images: torch.Tensor, embeddings: Optional[torch.Tensor], *,
               wrong_images: Optional[torch.Tensor] = None,
               wrong_embeddings: Optional[torch.Tensor] = None,
               noise: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """One D (or critic) update on a batch; returns the loss, its terms and the fakes it
        scored (``fake_images`` B x 3 x 64 x 64), detached.

        images B x 3 x 64 x 64 in [-1, 1]; embeddings B x E (ignored when unconditional);
        wrong_images B x 3 x 64 x 64 (``mismatch='image'``, required) or wrong_embeddings B x E
        (``mismatch='text'``; default: the batch's embeddings shifted by one); noise B x noise_dim
        (default: drawn from N(0, 1)). D scores real/right, then the mismatching pair, then
        fake/right, each as its own batch (BN statistics per pass), as the implementation does.
        The WGAN variant clips D's weights after the step; WGAN-GP adds ``GP_WEIGHT`` x
        ``gradient_penalty`` on real/fake interpolates with the right text (term ``d_gp``).
        """
        generator, discriminator, optimizer = self.wrapped_G, self.wrapped_D, self.optD
        options, noise_dim = self.options, self.z_dim
        conditional = options.conditional
        cond = embeddings if conditional else None
        with torch.no_grad():
            fake = _generate(generator, _noise(noise, images, noise_dim), cond, conditional)
        optimizer.zero_grad(set_to_none=True)
        real_logits, _ = _score(discriminator, images, cond, conditional)
        wrong_logits = None
        if options.uses_cls:
            if options.mismatch == 'image':
                if wrong_images is None:
                    raise ValueError("GAN_INT_CLS.MISMATCH 'image' needs the batch's wrong images "
                                     "(images that do not match the texts)")
                wrong_logits, _ = discriminator(wrong_images, embeddings)
            else:
                wrong_text = shifted_in_batch(embeddings) if wrong_embeddings is None else wrong_embeddings
                wrong_logits, _ = discriminator(images, wrong_text)
        fake_logits, _ = _score(discriminator, fake, cond, conditional)
        if options.uses_critic:
            loss, terms = critic_loss(real_logits, fake_logits, wrong_logits, options.mismatch_weight)
            if options.loss == 'wgan_gp':
                terms['d_gp'] = gradient_penalty(discriminator, images, fake, cond, conditional)
                loss = loss + options.gp_weight * terms['d_gp']
        else:
            loss, terms = discriminator_loss(real_logits, fake_logits, wrong_logits,
                                             1.0 - options.label_smoothing, options.mismatch_weight)
        loss.backward()
        optimizer.step()
        if options.loss == 'wgan':
            clip_weights_(discriminator, options.clip)
        out = {'d_loss': loss.detach(), 'fake_images': fake}
        out.update({k: v.detach() for k, v in terms.items()})
        return out

    def g_step(self, images: torch.Tensor, embeddings: Optional[torch.Tensor], *,
               noise: Optional[torch.Tensor] = None,
               interp_noise: Optional[torch.Tensor] = None,
               interp_partners: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """One G update; returns the loss, its terms and the fakes (B x 3 x 64 x 64), detached.

        ``g_loss = adv(D(G(z, h), h)) + FEATURE_MATCHING * fm + L1 * |G(z, h) - x|
        + INT_WEIGHT * adv(D(G(z', h_i), h_i))`` with ``h_i = beta h + (1 - beta) h2``, h2 =
        ``interp_partners`` (B x E; default: the batch's embeddings shifted by one), ``adv`` the
        BCE or the WGAN G loss. Feature matching compares the batch means of D's image features
        for the fakes and for the real images (a second D pass on them, no gradient). D's
        parameters get no gradients here; its BN layers run as they are (train mode updates
        their statistics, as in the implementation). Under DDP the pass runs through the bare D, so
        that it takes no part in D's gradient synchronisation.
        """
        discriminator = self.netD if self.distributed else self.wrapped_D
        generator, optimizer, options, noise_dim = self.wrapped_G, self.optG, self.options, self.z_dim
        conditional = options.conditional
        cond = embeddings if conditional else None
        adversarial = generator_critic_loss if options.uses_critic else generator_adversarial_loss
        optimizer.zero_grad(set_to_none=True)
        with frozen(discriminator):
            fake = _generate(generator, _noise(noise, images, noise_dim), cond, conditional)
            fake_logits, fake_features = _score(discriminator, fake, cond, conditional)
            g_adv = adversarial(fake_logits)
            loss = g_adv
            terms = {'g_adv': g_adv}
            if options.feature_matching > 0:
                with torch.no_grad():
                    _, real_features = _score(discriminator, images, cond, conditional)
                fm = feature_matching_loss(fake_features, real_features)
                loss = loss + options.feature_matching * fm
                terms['g_feature_matching'] = fm
            if options.l1 > 0:
                l1 = l1_distance(fake, images)
                loss = loss + options.l1 * l1
                terms['g_l1'] = l1
            if options.uses_interpolation:
                partners = shifted_in_batch(embeddings) if interp_partners is None else interp_partners
                mixed = interpolate_embeddings(embeddings, partners, options.int_beta)
                fake_mixed = generator(_noise(interp_noise, images, noise_dim), mixed)
                mixed_logits, _ = discriminator(fake_mixed, mixed)
                g_int = adversarial(mixed_logits)
                loss = loss + options.int_weight * g_int
                terms['g_int'] = g_int
            loss.backward()
        optimizer.step()
        out = {'g_loss': loss.detach(), 'fake_images': fake.detach()}
        out.update({k: v.detach() for k, v in terms.items()})
        return out


    # --------------------------------------------------------------------------- the family


class GanIntCls(Family):
    """Reed et al. 2016 at 64 x 64 (TREE.BASE_SIZE; ``models/gan_int_cls.py``), conditioned on the DAMSM
    sentence code or on an hd5 file's embeddings (DATA.HD5_FILE); its update above."""
    name = 'gan_int_cls'
    precomputed_embeddings = True
    postfix_losses = ('d_loss', 'g_loss')

    def build_networks(self, cfg) -> dict:
        try:
            stage_count(cfg.TREE.BASE_SIZE)
        except ValueError as e:
            raise ConfigError(f'TREE.BASE_SIZE: {e} (its networks are the implementation\'s at {IMAGE_SIZE})') from None
        c = cfg.GAN_INT_CLS
        options = options_from_config(cfg)
        check_critic(cfg, options)
        emb = embedding_dim(cfg)
        size = cfg.TREE.BASE_SIZE
        netG = Generator(cfg.GAN.Z_DIM, emb, c.PROJECTED_DIM, c.NGF, conditional=options.conditional, image_size=size)
        netD = Discriminator(emb, c.PROJECTED_DIM, c.NDF, conditional=options.conditional,
                             batch_norm=c.D_BATCH_NORM, minibatch_kernels=c.MINIBATCH_KERNELS,
                             minibatch_kernel_dim=c.MINIBATCH_KERNEL_DIM, image_size=size)
        netG.apply(init_dcgan_weights)
        netD.apply(init_dcgan_weights)
        return {'netG': netG, 'netD': netD}

    def load_weights(self, module: nn.Module, path: str, name: str) -> nn.Module:
        """Strict load of ``name`` from this project's file or the implementation's
        (``gen_<epoch>.pth`` / ``disc_<epoch>.pth``: 'module.' keys, no batch-norm counters)."""
        state = load_file(path)
        if not isinstance(state, Mapping):
            raise CheckpointError(f"'{path}' holds a {type(state).__name__}, not a state dict")
        return load_model_state(module, from_reference_state_dict(state, unwrap_model(module)), name=path)

    def generate(self, netG: nn.Module, noise: torch.Tensor, sent: torch.Tensor):
        """``(images B x 3 x size x size in [-1, 1], [])``: no masks; the unconditional G ignores ``sent``."""
        return (netG(noise, sent) if netG.conditional else netG(noise)), []

    def make_optimizers(self, cfg, nets: dict, text_encoder=None, image_encoder=None,
                        finetune: bool = False) -> dict:
        """Adam for G and D with TRAIN.GENERATOR_LR / DISCRIMINATOR_LR and TRAIN.BETA1 / BETA2
        (its cfg files: 2e-4, (0.5, 0.999), as paper and implementation; also for WGAN)."""
        if finetune:
            raise ConfigError('main_finetune.py trains the DAMSM encoders with the DAMSM loss of SSA-GAN; '
                              'MODEL.NAME=gan_int_cls has no such loss: train it with main.py')
        return adam_for_g_and_d(cfg, nets)

    def make_update(self, cfg, nets: dict, modules: dict, encoders: dict, optimizers: dict,
                    finetune: bool = False, distributed: bool = False) -> GanIntClsUpdate:
        return GanIntClsUpdate(nets, modules, encoders, optimizers, options_from_config(cfg), cfg.GAN.Z_DIM,
                               distributed)
