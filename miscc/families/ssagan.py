"""SSA-GAN (Liao et al., CVPR 2022): its networks from the config and one training iteration.

One iteration follows the official update order:
1. D: hinge loss on real/matching, fake/matching and real/mismatched pairs, one Adam step;
   then a separate step on MA-GP of real images and matching sentences (p = 6, k = 2)
   (``SSAGANUpdate.d_step_faithful``). The fast mode computes MA-GP on the real pass and takes
   one step for both, as DF-GAN's 2022 code does (``SSAGANUpdate.d_step_fused``).
2. G: ``-D(G(z, s), s) + lambda_DA * DAMSM(G(z, s))``, D and the image encoder frozen.
When fine-tuning (``main_finetune.py``) the encoders first take their own DAMSM step on the
real images, between generating the fakes and the D step, as the official code does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models import NetD, NetG

from .base import Family, Update, adam_for_g_and_d, autocast, check_image_size, frozen, loss_floats, optimizer_step
from .losses import (damsm_loss, damsm_smoothing, discriminator_hinge_loss, generator_adversarial_loss, hinge_accept,
                     matching_aware_gp)

__all__ = ['SSAGAN', 'SSAGANUpdate', 'UpdateOptions', 'make_optimizers']


@dataclass
class UpdateOptions:
    """Loss weights and the fast-mode switches of one SSA-GAN iteration."""
    lambda_da: float = 0.05        # DAMSM weight in the G loss (0.1 when fine-tuning)
    smooth: dict = None            # DAMSM gamma1, gamma2, gamma3, lam
    magp_p: float = 6.0
    magp_k: float = 2.0
    z_dim: int = 100
    fused_magp: bool = False       # MA-GP on the real pass, one D step (fast mode)
    bf16: bool = False             # bfloat16 autocast of the forward passes
    channels_last: bool = False
    mismatch: str = 'shifted'      # the D's mismatched pairs (GAN.MISMATCH)

    @classmethod
    def from_config(cls, cfg, device: torch.device, finetune: bool) -> 'UpdateOptions':
        """The options of ``cfg``; the GPU-only ones are off on other devices."""
        train, fast = cfg.TRAIN, cfg.TRAIN.FAST_OPTIONS
        on_gpu = device.type == 'cuda'
        # bfloat16 pays on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX); elsewhere it is slower
        bf16_ok = on_gpu or torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return cls(lambda_da=train.FINETUNE.LAMBDA_DA if finetune else train.LAMBDA_DA,
                   smooth=damsm_smoothing(train.SMOOTH),
                   magp_p=train.MAGP_P, magp_k=train.MAGP_K, z_dim=cfg.GAN.Z_DIM,
                   fused_magp=train.FAST and fast.FUSED_MAGP, bf16=train.FAST and fast.BF16 and bf16_ok,
                   channels_last=train.FAST and fast.CHANNELS_LAST and on_gpu, mismatch=cfg.GAN.MISMATCH)


class SSAGANUpdate(Update):
    """The networks, their optimisers and one iteration (``__call__``, then ``d_step`` and
    ``g_step``, top to bottom below).

    ``netG``/``netD``/``text_encoder``/``image_encoder`` are the bare modules (their state dicts,
    their sub-modules such as ``netD.COND_DNET``); ``wrapped_G``/``wrapped_D``/``wrapped_T``/
    ``wrapped_I`` their device-wrapped forms (DataParallel/DDP/compiled), used for the forward
    passes. With an ``optimizerE`` the encoders are fine-tuned; without it they are frozen.
    """

    def __init__(self, nets: dict, modules: dict, encoders: dict, optimizers: dict, opts: UpdateOptions,
                 distributed: bool = False):
        self.netG, self.netD = nets['netG'], nets['netD']
        self.text_encoder, self.image_encoder = encoders['text_encoder'], encoders['image_encoder']
        self.wrapped_G, self.wrapped_D = modules['netG'], modules['netD']
        self.wrapped_T, self.wrapped_I = modules['text_encoder'], modules['image_encoder']
        self.optimizers = optimizers
        self.optG, self.optD = optimizers['optimizerG'], optimizers['optimizerD']
        self.optE = optimizers.get('optimizerE')
        self.opts, self.distributed = opts, distributed
        self.d_step = self.d_step_fused if opts.fused_magp else self.d_step_faithful
        self.device = next(self.netG.parameters()).device

    def autocast(self):
        return autocast(self.opts.bf16, self.device)

    def __call__(self, batch) -> dict:
        """``batch``: images B x 3 x S x S in [-1, 1], captions B x T, cap_lens B, class_ids B
        (a ``datasets.Batch``). Returns the losses of this iteration as floats."""
        imgs = batch.images.to(self.device, non_blocking=True)
        if self.opts.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        captions, cap_lens, class_ids = batch.captions.to(self.device, non_blocking=True), batch.cap_lens, batch.class_ids
        with self.autocast(), torch.set_grad_enabled(self.optE is not None):
            words, sent = self.wrapped_T(captions, cap_lens)           # B x 256 x T, B x 256
        words_de, sent_de = words.detach(), sent.detach().float()
        with self.autocast():
            fake, _ = self.wrapped_G(torch.randn(imgs.size(0), self.opts.z_dim, device=self.device), sent_de)
        losses = {}
        if self.optE is not None:   # fine-tuning: the encoders' DAMSM step on the real images
            with self.autocast():
                damsm_real = damsm_loss(self.wrapped_I, imgs, words, sent, cap_lens, class_ids, **self.opts.smooth)
            optimizer_step(self.optE, damsm_real)
            losses['DAMSM_D'] = damsm_real
        losses.update(self.d_step(imgs, fake.detach(), sent_de))
        losses.update(self.g_step(fake, words_de, sent_de, cap_lens, class_ids))
        self.last_real, self.last_fake = imgs, fake.detach()
        return loss_floats(losses)

    def d_step_faithful(self, imgs, fake, sent) -> dict:
        """The official D update: a hinge step, then an MA-GP step on a fresh real pass."""
        cond, D = self.netD.COND_DNET, self.wrapped_D
        with self.autocast():
            err_d, err_real, err_fake, err_mis = discriminator_hinge_loss(cond, D(imgs), D(fake), sent,
                                                                          self.opts.mismatch)
        optimizer_step(self.optD, err_d)
        imgs_gp, sent_gp = imgs.detach().requires_grad_(), sent.detach().requires_grad_()
        with self.autocast():
            gp = matching_aware_gp(cond(D(imgs_gp), sent_gp).float(), imgs_gp, sent_gp,
                                   self.opts.magp_p, self.opts.magp_k)
        optimizer_step(self.optD, gp)
        return dict(errD=err_d, errD_real=err_real, errD_fake=err_fake, errD_mismatch=err_mis, MAGP=gp)

    def d_step_fused(self, imgs, fake, sent) -> dict:
        """Hinge + MA-GP in one D step: the penalty differentiates the real/matching logits."""
        cond, D = self.netD.COND_DNET, self.wrapped_D
        imgs_gp, sent_gp = imgs.detach().requires_grad_(), sent.detach().requires_grad_()
        with self.autocast():
            real_features = D(imgs_gp)
            real_logits = cond(real_features, sent_gp)
            _, _, err_fake, err_mis = discriminator_hinge_loss(cond, real_features, D(fake), sent, self.opts.mismatch)
            err_real = hinge_accept(real_logits)
            err_d = err_real + (err_fake + err_mis) / 2.0
            gp = matching_aware_gp(real_logits.float(), imgs_gp, sent_gp, self.opts.magp_p, self.opts.magp_k)
        optimizer_step(self.optD, err_d + gp)
        return dict(errD=err_d, errD_real=err_real, errD_fake=err_fake, errD_mismatch=err_mis, MAGP=gp)

    def g_step(self, fake, words, sent, cap_lens, class_ids) -> dict:
        """Adversarial + lambda_DA x DAMSM loss of the fakes; D and the image encoder frozen.

        With lambda_DA = 0 the image encoder is not run at all (its term would add zeros to G's
        gradients at the cost of an Inception forward and backward); DAMSM is then reported as 0.
        """
        # Under DDP the G step's pass through D must not take part in D's gradient sync.
        d_for_g = self.netD if self.distributed else self.wrapped_D
        with frozen(self.netD, self.image_encoder):
            with self.autocast():
                err_g = generator_adversarial_loss(self.netD.COND_DNET(d_for_g(fake), sent).float())
                if self.opts.lambda_da:
                    damsm = self.opts.lambda_da * damsm_loss(self.image_encoder, fake, words, sent, cap_lens,
                                                             class_ids, **self.opts.smooth)
                else:
                    damsm = err_g.new_zeros(())
            optimizer_step(self.optG, err_g + damsm)
        return dict(errG=err_g, DAMSM=damsm)


def make_optimizers(cfg, nets: dict, text_encoder=None, image_encoder=None, finetune: bool = False) -> dict:
    """Adam for G and D (and the encoders when fine-tuning) with the configured rates and betas."""
    optimizers = adam_for_g_and_d(cfg, nets)
    if finetune:
        train = cfg.TRAIN
        params = list(text_encoder.parameters()) + [p for p in image_encoder.parameters() if p.requires_grad]
        optimizers['optimizerE'] = torch.optim.Adam(params, lr=train.FINETUNE.ENCODER_LR,
                                                    betas=(train.BETA1, train.BETA2), foreach=True)
    return optimizers


class SSAGAN(Family):
    """NetG / NetD of ``models/`` (official keys), the official update."""
    name = 'ssagan'

    def build_networks(self, cfg) -> dict:
        size = check_image_size(cfg)
        return {'netG': NetG(cfg.TRAIN.NF, cfg.GAN.Z_DIM, size, cfg.TEXT.EMBEDDING_DIM, masks=cfg.GAN.MASKS,
                             gate_init=cfg.GAN.GATE_INIT),
                'netD': NetD(cfg.TRAIN.NF, size, cfg.TEXT.EMBEDDING_DIM, gate_init=cfg.GAN.D_GATE_INIT)}

    def prepare_networks(self, cfg, nets: dict, device: torch.device) -> None:
        """TRAIN.CONV_GRADFIX for D's convolutions; the lean SSCBN with TRAIN.FAST."""
        train = cfg.TRAIN
        nets['netD'].set_conv_gradfix(train.CONV_GRADFIX == 'on' or (train.CONV_GRADFIX == 'auto'
                                                                     and device.type == 'cuda'))
        if train.FAST and train.FAST_OPTIONS.LEAN_SSCBN:
            nets['netG'].set_lean_sscbn(True)

    make_optimizers = staticmethod(make_optimizers)

    def make_update(self, cfg, nets: dict, modules: dict, encoders: dict, optimizers: dict,
                    finetune: bool = False, distributed: bool = False) -> SSAGANUpdate:
        device = next(nets['netG'].parameters()).device
        opts = UpdateOptions.from_config(cfg, device, finetune)
        return SSAGANUpdate(nets, modules, encoders, optimizers, opts, distributed)
