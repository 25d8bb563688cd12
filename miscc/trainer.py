"""The SSA-GAN training loop, shared by ``main.py`` (frozen DAMSM encoders) and
``main_finetune.py`` (encoders trained jointly with the DAMSM loss on real images).

One iteration follows the official update order exactly:
1. D hinge step on real/matching, fake/matching and real/mismatched pairs;
2. a separate MA-GP step on real images and matching sentences (p = 6, k = 2);
3. the G step: adversarial loss + lambda_DA * DAMSM(G(z, s)).
When fine-tuning, the encoders take their own DAMSM step on the real images between
generating the fakes and the D step, as the official ``main_finetune.py`` does.
"""
from __future__ import annotations

import contextlib
import os
import time

import torch
import torch.nn as nn
from tqdm import tqdm

from .build import (build_discriminator, build_generator, checkpoint_epoch, damsm_paths,
                    load_image_encoder, load_text_encoder, sibling_checkpoint, text_encoder_vocab_size)
from .checkpoint import load_model_state, model_state_dict, save_atomic
from .config import ConfigError
from .engine import (EpochBatchSampler, RunLogger, STATE_NAME, StopFlag, check_finite,
                     load_training_state, make_loader, read_progress, resolve_start,
                     save_training_state)
from .losses import (damsm_loss, discriminator_hinge_loss, generator_adversarial_loss,
                     matching_aware_gp)
from .parallel import wrap_for_devices
from .sampling import decode_caption, mask_grid, noise_for, save_grid
from .utils import device_from_config, init_distributed, make_run_dir, seed_everything

__all__ = ['GANTrainer', 'GANUpdate', 'make_optimizers', 'apply_fast_model_options', 'resolve_resume']


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Temporarily stop gradients into ``module``'s parameters (inputs still get them):
    the G step needs dD/dx, not dD/dtheta, and skipping the latter changes no result."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def resolve_resume(cfg, finetune: bool):
    """What to start from: ``(kind, path)`` with kind 'none', 'state' (exact resume of a
    training state) or 'weights' (official-style: model files of an epoch, fresh optimisers).

    ``TRAIN.NET_G`` may be a ``netG_XXX.pth`` file (exact resume when the run's training state
    ended at epoch XXX, else weights), a run folder or a state file; with ``RESTORE=True`` and
    no ``TRAIN.NET_G`` the newest state of this data set and config under OUTPUT_DIR is used.
    """
    kind, target = resolve_start(cfg.TRAIN.NET_G, cfg.RESTORE, cfg, 'TRAIN.NET_G')
    if kind != 'file':
        return kind, target
    state_path = os.path.join(os.path.dirname(target), STATE_NAME)
    progress = read_progress(state_path) if os.path.isfile(state_path) else None
    # A state of the other entry point (main.py vs main_finetune.py) has other optimisers:
    # continue from the weights of that epoch instead.
    if (progress and progress.get('epoch') == checkpoint_epoch(target) and progress.get('next_step') == 0
            and bool(progress.get('finetune')) == finetune):
        return 'state', state_path
    return 'weights', target


class GANUpdate:
    """The networks, their optimisers and one training iteration (``__call__``).

    ``G``/``D``/``T``/``I`` are the device-wrapped modules (DataParallel/DDP) used for forward
    passes; ``netG``/``netD``/``text_encoder``/``image_encoder`` the bare ones. With ``optE``
    the encoders are fine-tuned (``T`` gets gradients); without it they are frozen.

    Faithful by default. ``fused_magp`` computes MA-GP on the real pass of the D step and
    takes one D optimiser step for hinge + MA-GP (DF-GAN 2022); ``bf16`` runs forward passes
    under bfloat16 autocast (GPU, or a CPU with native bf16); ``channels_last`` feeds images in that memory format.
    """

    def __init__(self, netG, netD, text_encoder, image_encoder, optG, optD, optE=None, *,
                 G=None, D=None, T=None, I=None, distributed: bool = False, lambda_da: float = 0.05,
                 smooth: dict | None = None, magp_p: float = 6.0, magp_k: float = 2.0, z_dim: int = 100,
                 fused_magp: bool = False, bf16: bool = False, channels_last: bool = False):
        self.netG, self.netD = netG, netD
        self.text_encoder, self.image_encoder = text_encoder, image_encoder
        # `is None`, not `or`: a compiled module raises on bool() (it forwards len())
        self.G = netG if G is None else G
        self.D = netD if D is None else D
        self.T = text_encoder if T is None else T
        self.I = image_encoder if I is None else I
        self.optG, self.optD, self.optE = optG, optD, optE
        self.finetune = optE is not None
        self.distributed = distributed
        self.lambda_da = lambda_da
        self.smooth = smooth or dict(gamma1=5.0, gamma2=5.0, gamma3=10.0, lam=1.0)
        self.magp_p, self.magp_k, self.z_dim = magp_p, magp_k, z_dim
        self.fused_magp, self.channels_last = fused_magp, channels_last
        self.bf16 = bf16
        self.last_real = self.last_fake = None

    @classmethod
    def from_config(cls, cfg, netG, netD, text_encoder, image_encoder, optG, optD, optE=None, **wrapped):
        """The update with the loss weights and fast options of ``cfg`` (fine-tuning when
        ``optE`` is given). GPU-only options are off on other devices."""
        train, fast = cfg.TRAIN, cfg.TRAIN.FAST_OPTIONS
        on_gpu = next(netG.parameters()).device.type == 'cuda'
        # bfloat16 pays on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX); elsewhere it is slower
        bf16_ok = on_gpu or torch.ops.mkldnn._is_mkldnn_bf16_supported()
        smooth = dict(gamma1=train.SMOOTH.GAMMA1, gamma2=train.SMOOTH.GAMMA2,
                      gamma3=train.SMOOTH.GAMMA3, lam=train.SMOOTH.LAMBDA)
        return cls(netG, netD, text_encoder, image_encoder, optG, optD, optE,
                   lambda_da=train.FINETUNE.LAMBDA_DA if optE is not None else train.LAMBDA_DA,
                   smooth=smooth, magp_p=train.MAGP_P, magp_k=train.MAGP_K, z_dim=cfg.GAN.Z_DIM,
                   fused_magp=train.FAST and fast.FUSED_MAGP,
                   bf16=train.FAST and fast.BF16 and bf16_ok,
                   channels_last=train.FAST and fast.CHANNELS_LAST and on_gpu, **wrapped)

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(next(self.netG.parameters()).device.type, dtype=torch.bfloat16)

    def __call__(self, images, captions, cap_lens, class_ids) -> dict:
        """images B x 3 x S x S in [-1, 1]; captions B x T; cap_lens B; class_ids B.
        Returns the losses of this iteration as floats."""
        dev = next(self.netG.parameters()).device
        imgs = images.to(dev, non_blocking=True)
        if self.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        captions = captions.to(dev, non_blocking=True)
        cond = self.netD.COND_DNET
        bsz = imgs.size(0)
        magp = dict(p=self.magp_p, k=self.magp_k)
        losses = {}

        with self._autocast():
            if self.finetune:
                words, sent = self.T(captions, cap_lens)
                words_de, sent_de = words.detach(), sent.detach()
            else:
                with torch.no_grad():
                    words_de, sent_de = self.T(captions, cap_lens)
            sent_de = sent_de.float()

            if self.fused_magp:
                imgs_gp = imgs.detach().requires_grad_()
                sent_gp = sent_de.detach().requires_grad_()
                real_features = self.D(imgs_gp)
                real_logits = cond(real_features, sent_gp)
            else:
                real_features = self.D(imgs)
            noise = torch.randn(bsz, self.z_dim, device=dev)
            fake, _ = self.G(noise, sent_de)

        if self.finetune:
            with self._autocast():
                damsm_real = damsm_loss(self.I, imgs, words, sent, cap_lens, class_ids, **self.smooth)
            self.optE.zero_grad(set_to_none=True)
            damsm_real.backward()
            self.optE.step()
            losses['DAMSM_D'] = damsm_real.detach()

        with self._autocast():
            fake_features = self.D(fake.detach())
            err_d, err_real, err_fake, err_mis = discriminator_hinge_loss(cond, real_features, fake_features,
                                                                          sent_de)
            if self.fused_magp:
                # the real/matching term comes from the same logits the penalty differentiates
                err_real = torch.relu(1.0 - real_logits).mean()
                err_d = err_real + (err_fake + err_mis) / 2.0
                gp = matching_aware_gp(real_logits.float(), imgs_gp, sent_gp, **magp)
                err_d_total = err_d + gp
        if self.fused_magp:
            self.optD.zero_grad(set_to_none=True)
            err_d_total.backward()
            self.optD.step()
        else:
            self.optD.zero_grad(set_to_none=True)
            err_d.backward()
            self.optD.step()
            imgs_gp = imgs.detach().requires_grad_()
            sent_gp = sent_de.detach().requires_grad_()
            with self._autocast():
                gp = matching_aware_gp(cond(self.D(imgs_gp), sent_gp).float(), imgs_gp, sent_gp, **magp)
            self.optD.zero_grad(set_to_none=True)
            gp.backward()
            self.optD.step()

        # Under DDP the G step's pass through D must not take part in D's gradient sync.
        d_for_g = self.netD if self.distributed else self.D
        with frozen(self.netD), frozen(self.image_encoder):
            with self._autocast():
                err_g = generator_adversarial_loss(cond(d_for_g(fake), sent_de).float())
                damsm_fake = self.lambda_da * damsm_loss(self.image_encoder, fake, words_de, sent_de, cap_lens,
                                                         class_ids, **self.smooth)
                err_g_total = err_g + damsm_fake
            self.optG.zero_grad(set_to_none=True)
            err_g_total.backward()
        self.optG.step()

        losses.update(errD=err_d.detach(), errD_real=err_real.detach(), errD_fake=err_fake.detach(),
                      errD_mismatch=err_mis.detach(), MAGP=gp.detach(), errG=err_g.detach(),
                      DAMSM=damsm_fake.detach())
        names = list(losses)
        values = torch.stack([losses[k].float() for k in names]).tolist()  # one device sync
        self.last_real, self.last_fake = imgs, fake.detach()
        return dict(zip(names, values))


COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def apply_fast_model_options(cfg, netG: nn.Module, netD: nn.Module, wrap=None) -> nn.Module:
    """Model-side options: TRAIN.CONV_GRADFIX for D's convolutions; with TRAIN.FAST the lean
    SSCBN, on GPU channels-last G/D, and COMPILE. Returns the generator module to call:
    ``wrap(netG)`` (the device wrapper, e.g. DDP; netG without ``wrap``), compiled on top
    with COMPILE."""
    train, fast = cfg.TRAIN, cfg.TRAIN.FAST_OPTIONS
    on_gpu = next(netG.parameters()).device.type == 'cuda'
    if train.CONV_GRADFIX not in ('auto', 'on', 'off'):
        raise ConfigError(f"TRAIN.CONV_GRADFIX must be 'auto', 'on' or 'off', got '{train.CONV_GRADFIX}'")
    if fast.COMPILE_MODE not in COMPILE_MODES:
        raise ConfigError(f"TRAIN.FAST_OPTIONS.COMPILE_MODE must be one of {', '.join(map(repr, COMPILE_MODES))}, "
                          f"got '{fast.COMPILE_MODE}'")
    netD.set_conv_gradfix(train.CONV_GRADFIX == 'on' or (train.CONV_GRADFIX == 'auto' and on_gpu))
    if train.FAST and fast.LEAN_SSCBN:
        netG.set_lean_sscbn(True)
    if train.FAST and on_gpu and fast.CHANNELS_LAST:
        netG.to(memory_format=torch.channels_last)
        netD.to(memory_format=torch.channels_last)
    generator = netG if wrap is None else wrap(netG)
    if train.FAST and fast.COMPILE:
        # the wrapper is compiled, not wrapped around a compiled module: torch.compile(DDP(G))
        # is the order DDP supports (its graph breaks at bucket boundaries)
        generator = torch.compile(generator, mode=None if fast.COMPILE_MODE == 'default' else fast.COMPILE_MODE)
    return generator


def make_optimizers(cfg, netG, netD, text_encoder=None, image_encoder=None, finetune: bool = False):
    """Adam for G and D (and the encoders when fine-tuning) with the configured rates and betas."""
    train = cfg.TRAIN
    # foreach: the multi-tensor form (CUDA's default) also on the CPU, where it is twice as fast
    # as the per-tensor loop with bit-identical results
    adam = dict(betas=(train.BETA1, train.BETA2), foreach=True)
    optG = torch.optim.Adam(netG.parameters(), lr=train.GENERATOR_LR, **adam)
    optD = torch.optim.Adam(netD.parameters(), lr=train.DISCRIMINATOR_LR, **adam)
    optE = None
    if finetune:
        params = list(text_encoder.parameters()) + [p for p in image_encoder.parameters() if p.requires_grad]
        optE = torch.optim.Adam(params, lr=train.FINETUNE.ENCODER_LR, **adam)
    return optG, optD, optE


class GANTrainer:
    """Builds data, models and optimisers from a config and trains (``fit``)."""

    def __init__(self, cfg, finetune: bool = False):
        from datasets import build_dataset, collate_sorted  # the data layer is top level

        self.cfg = cfg
        self.finetune = finetune
        self.dist = init_distributed()
        cuda_rank = self.dist.local_rank if self.dist.distributed and cfg.DEVICE != 'cpu' else None
        self.setup = device_from_config(cfg, local_rank=cuda_rank)
        if cfg.TRAIN.FAST and cfg.TRAIN.FAST_OPTIONS.COMPILE and self.setup.data_parallel:
            raise ConfigError(f"TRAIN.FAST_OPTIONS.COMPILE=True is not supported with several GPUs in one process "
                              f"(DataParallel, DEVICE={cfg.DEVICE}): run one process per GPU with torchrun, or set "
                              f"TRAIN.FAST_OPTIONS.COMPILE=False")
        self.device = self.setup.device
        seed_everything(cfg.SEED + self.dist.rank)
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True

        train = cfg.TRAIN
        self.resume_kind, self.resume_path = resolve_resume(cfg, finetune)

        # Encoders: the DAMSM files, or when fine-tuning from an epoch's files, those of that epoch.
        text_path, image_path = damsm_paths(cfg.TEXT.DAMSM_NAME)
        if finetune and self.resume_kind == 'weights':
            own_text = sibling_checkpoint(self.resume_path, 'text_encoder')
            if os.path.isfile(own_text):
                text_path, image_path = own_text, sibling_checkpoint(self.resume_path, 'image_encoder')
        n_words = text_encoder_vocab_size(text_path)
        if train.BATCH_SIZE % self.dist.world_size:
            raise ConfigError(f'TRAIN.BATCH_SIZE={train.BATCH_SIZE} is the total batch and must be '
                              f'divisible by the {self.dist.world_size} processes')
        self.batch_size = train.BATCH_SIZE // self.dist.world_size
        self.dataset = build_dataset(cfg, 'train', augment=True, expected_vocab_size=n_words)
        self.test_dataset = build_dataset(cfg, 'test', augment=False, expected_vocab_size=n_words)
        self.text_encoder = load_text_encoder(cfg, text_path, n_words, self.device)
        self.image_encoder = load_image_encoder(cfg, image_path, self.device)
        self.netG = build_generator(cfg).to(self.device)
        self.netD = build_discriminator(cfg).to(self.device)

        self.optG, self.optD, self.optE = make_optimizers(cfg, self.netG, self.netD, self.text_encoder,
                                                          self.image_encoder, finetune)
        if finetune:
            # The official fine-tuning never calls eval() on the encoders: dropout and
            # Inception batch statistics are active; ENCODERS_TRAIN_MODE=False turns that off.
            self.text_encoder.train(train.FINETUNE.ENCODERS_TRAIN_MODE)
            self.image_encoder.train(train.FINETUNE.ENCODERS_TRAIN_MODE)
        else:
            for enc in (self.text_encoder, self.image_encoder):
                enc.requires_grad_(False)
                enc.eval()

        self.start_epoch, self.start_step, self.global_step = 1, 0, 0
        self.run_dir = None
        state = self._load_start()

        self.sampler = EpochBatchSampler(len(self.dataset), self.batch_size, cfg.SEED,
                                         self.dist.rank, self.dist.world_size)
        self.loader = make_loader(self.dataset, self.sampler, collate_sorted, cfg.WORKERS,
                                  pin_memory=self.device.type == 'cuda')
        if self.run_dir is None and self.dist.is_main:
            self.run_dir = make_run_dir(cfg.OUTPUT_DIR, cfg.DATASET_NAME, cfg.CONFIG_NAME)
        self.models_dir = os.path.join(self.run_dir, 'models') if self.run_dir else None
        self.logger = RunLogger(os.path.join(self.run_dir, 'log') if self.dist.is_main else None)
        self.fixed = self._fixed_samples(state)

        # Wrap for several devices last, so states load into the bare modules.
        self.G = apply_fast_model_options(
            cfg, self.netG, self.netD, wrap=lambda g: wrap_for_devices(g, self.setup, self.dist, sync_bn=True))
        self.D = wrap_for_devices(self.netD, self.setup, self.dist, sync_bn=False)
        if finetune:
            self.T = wrap_for_devices(self.text_encoder, self.setup, self.dist, sync_bn=False)
            self.I = wrap_for_devices(self.image_encoder, self.setup, self.dist, sync_bn=True)
        else:
            self.T, self.I = self.text_encoder, self.image_encoder
        self.update = GANUpdate.from_config(cfg, self.netG, self.netD, self.text_encoder, self.image_encoder,
                                            self.optG, self.optD, self.optE, G=self.G, D=self.D, T=self.T,
                                            I=self.I, distributed=self.dist.distributed)

    # ------------------------------------------------------------------ start / resume
    def _load_start(self):
        if self.resume_kind == 'none':
            return None
        if self.resume_kind == 'state':
            state = load_training_state(self.resume_path)
            if state.get('finetune', False) != self.finetune:
                raise ConfigError(f"'{self.resume_path}' is a {'fine-tuning' if state.get('finetune') else 'main.py'} "
                                 f"training state; resume it with the matching script")
            load_model_state(self.netG, state['netG'])
            load_model_state(self.netD, state['netD'])
            self.optG.load_state_dict(state['optimizerG'])
            self.optD.load_state_dict(state['optimizerD'])
            if self.finetune:
                load_model_state(self.text_encoder, state['text_encoder'])
                load_model_state(self.image_encoder, state['image_encoder'])
                self.optE.load_state_dict(state['optimizerE'])
            progress = state['progress']
            self.start_epoch, self.start_step = progress['next_epoch'], progress['next_step']
            self.global_step = progress['global_step']
            self.run_dir = os.path.dirname(os.path.dirname(os.path.abspath(self.resume_path)))
            return state
        # weights: the official RESTORE — model files of an epoch, fresh optimisers.
        load_model_state(self.netG, self.resume_path)
        netd_path = sibling_checkpoint(self.resume_path, 'netD')
        if os.path.isfile(netd_path):
            load_model_state(self.netD, netd_path)
        elif not self.finetune:
            raise FileNotFoundError(f"continuing from '{self.resume_path}' needs the discriminator "
                                    f"'{netd_path}' beside it")
        self.start_epoch = checkpoint_epoch(self.resume_path) + 1
        return None

    def _fixed_samples(self, state):
        """Fixed noise and test captions for the per-epoch sample grid."""
        count = min(8, len(self.test_dataset.filenames))
        if state is not None and 'fixed_noise' in state:
            noise = state['fixed_noise']
        else:
            noise = noise_for(range(count), self.cfg.GAN.Z_DIM, self.cfg.SEED)
        caps, lens = zip(*(self.test_dataset.caption_tensor(i * self.test_dataset.embeddings_num)
                           for i in range(count)))
        return {'noise': noise, 'captions': torch.stack(caps), 'lengths': torch.tensor(lens)}

    # ------------------------------------------------------------------ one iteration
    def train_step(self, batch) -> dict:
        """One iteration on ``batch`` (a ``datasets.Batch``); returns the losses as floats."""
        losses = self.update(batch.images, batch.captions, batch.cap_lens, batch.class_ids)
        self.last_batch = (self.update.last_real, self.update.last_fake, batch)
        return losses

    # ------------------------------------------------------------------ outputs
    def _state(self) -> dict:
        state = {'netG': model_state_dict(self.netG), 'netD': model_state_dict(self.netD),
                 'optimizerG': self.optG.state_dict(), 'optimizerD': self.optD.state_dict(),
                 'finetune': self.finetune, 'config': repr(self.cfg),
                 'fixed_noise': self.fixed['noise']}
        if self.finetune:
            state.update(text_encoder=model_state_dict(self.text_encoder),
                         image_encoder=model_state_dict(self.image_encoder),
                         optimizerE=self.optE.state_dict())
        return state

    def save_state(self, epoch_done: int, next_epoch: int, next_step: int) -> None:
        if not self.dist.is_main:
            return
        save_training_state(self.models_dir, self._state(),
                            {'epoch': epoch_done, 'next_epoch': next_epoch, 'next_step': next_step,
                             'global_step': self.global_step, 'finetune': self.finetune})

    def save_epoch_checkpoints(self, epoch: int) -> None:
        """Official-format files: netG/netD (and encoders when fine-tuning) every interval after warm-up."""
        train = self.cfg.TRAIN
        if not self.dist.is_main or epoch < train.WARMUP_EPOCHS:
            return
        if epoch % train.GSAVE_INTERVAL == 0:
            save_atomic(model_state_dict(self.netG), os.path.join(self.models_dir, f'netG_{epoch:03d}.pth'))
            if self.finetune:
                save_atomic(model_state_dict(self.text_encoder),
                            os.path.join(self.models_dir, f'text_encoder_{epoch:03d}.pth'))
                save_atomic(model_state_dict(self.image_encoder),
                            os.path.join(self.models_dir, f'image_encoder_{epoch:03d}.pth'))
        if epoch % train.DSAVE_INTERVAL == 0:
            save_atomic(model_state_dict(self.netD), os.path.join(self.models_dir, f'netD_{epoch:03d}.pth'))

    @torch.no_grad()
    def end_of_epoch_images(self, epoch: int) -> None:
        """Fixed-noise, fixed-caption sample grid (images and their masks) as a PNG, and
        TensorBoard grids of it and of the last batch's real and fake images and captions."""
        if not self.dist.is_main:
            return
        fixed, samples = self.fixed, os.path.join(self.run_dir, 'samples')
        self.netG.eval()
        self.text_encoder.eval()
        _, sent = self.text_encoder(fixed['captions'].to(self.device), fixed['lengths'])
        images, masks = self.netG(fixed['noise'].to(self.device), sent)
        self.netG.train()
        if self.finetune:
            self.text_encoder.train(self.cfg.TRAIN.FINETUNE.ENCODERS_TRAIN_MODE)
        grid = mask_grid(images, masks, rows=len(fixed['noise']))
        save_grid(grid, os.path.join(samples, f'epoch_{epoch:03d}.png'))
        captions_file = os.path.join(samples, 'captions.txt')
        if not os.path.isfile(captions_file):
            with open(captions_file, 'w', encoding='utf-8') as f:
                f.write('\n'.join(decode_caption(c[:n].tolist(), self.test_dataset.ixtoword)
                                  for c, n in zip(fixed['captions'], fixed['lengths'])) + '\n')

        imgs, fake, batch = self.last_batch
        self.logger.image('images/fixed_samples_with_masks', grid, epoch)
        self.logger.image('images/fake', _tile((fake[:8].float().cpu() + 1) / 2), epoch)
        self.logger.image('images/real', _tile((imgs[:8].float().cpu() + 1) / 2), epoch)
        self.logger.text('captions/batch', '  \n'.join(
            decode_caption(c[:n].tolist(), self.dataset.ixtoword)
            for c, n in zip(batch.captions[:8], batch.cap_lens[:8])), epoch)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> str | None:
        """Train from the start (or resume point) to TRAIN.MAX_EPOCH; returns the run folder."""
        train = self.cfg.TRAIN
        steps_per_epoch = len(self.sampler)
        main = self.dist.is_main
        if main:
            print(f'run folder: {self.run_dir}\n'
                  f'{len(self.dataset)} training images, {steps_per_epoch} steps per epoch, '
                  f'batch {self.batch_size} x {self.dist.world_size} process(es) on {self.device}'
                  + (f' (DataParallel over GPUs {self.setup.device_ids})' if self.setup.data_parallel else ''))
        self.netG.train()
        self.netD.train()
        with StopFlag() as stop:
            for epoch in range(self.start_epoch, train.MAX_EPOCH + 1):
                first = self.start_step if epoch == self.start_epoch else 0
                self.sampler.set_epoch(epoch, first)
                bar = tqdm(total=steps_per_epoch, initial=first, disable=not main, dynamic_ncols=True,
                           desc=f'epoch {epoch}/{train.MAX_EPOCH}', leave=False)
                window_start, window_images = time.time(), 0
                step = first
                for batch in self.loader:
                    losses = self.train_step(batch)
                    step += 1
                    self.global_step += 1
                    check_finite(losses, epoch, step, self.global_step)
                    window_images += batch.images.size(0) * self.dist.world_size
                    bar.update(1)
                    if step % train.LOG_INTERVAL == 0 or step == steps_per_epoch:
                        bar.set_postfix({k: f'{v:.3f}' for k, v in losses.items()
                                         if k in ('errD', 'MAGP', 'errG', 'DAMSM')})
                        elapsed = max(time.time() - window_start, 1e-9)
                        self.logger.scalars({f'loss/{k}': v for k, v in losses.items()}, self.global_step)
                        self.logger.scalars({'lr/G': self.optG.param_groups[0]['lr'],
                                             'lr/D': self.optD.param_groups[0]['lr'],
                                             'speed/images_per_s': window_images / elapsed}, self.global_step)
                        window_start, window_images = time.time(), 0
                    limit_hit = train.MAX_STEPS and self.global_step >= train.MAX_STEPS
                    if (stop.agreed(self.dist.distributed, self.device) or limit_hit) and step < steps_per_epoch:
                        bar.close()
                        self.save_state(epoch - 1, epoch, step)
                        if main:
                            print(f'stopped at epoch {epoch}, step {step}; training state saved in '
                                  f'{self.models_dir}. Resume with RESTORE=True TRAIN.NET_G={self.run_dir}')
                        return self.run_dir
                bar.close()
                self.end_of_epoch_images(epoch)
                self.save_epoch_checkpoints(epoch)
                self.save_state(epoch, epoch + 1, 0)
                if main:
                    print(f'epoch {epoch}/{train.MAX_EPOCH}: ' + ', '.join(f'{k} {v:.3f}' for k, v in losses.items()))
                if stop.agreed(self.dist.distributed, self.device) or (train.MAX_STEPS and self.global_step >= train.MAX_STEPS):
                    break
        self.logger.close()
        return self.run_dir


def _tile(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W -> 3 x H x (B*W)."""
    return images.permute(1, 2, 0, 3).reshape(images.size(1), images.size(2), -1).clamp(0, 1)
