"""GAN training, shared by ``main.py`` (frozen DAMSM encoders) and ``main_finetune.py``
(encoders trained jointly with the DAMSM loss on real images), for every family of
``MODEL.NAME``: the family gives the networks and the update, the driver the epoch loop."""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from datasets import build_dataset, collate_sorted

from ..core.checkpoint import checkpoint_epoch, load_model_state, model_state_dict, save_atomic, sibling_checkpoint
from ..core.config import ConfigError
from ..core.runtime import device_from_config, init_distributed, seed_everything
from ..evaluation.generation import decode_caption, mask_grid, save_grid
from ..families import Family, family_of
from ..families.encoders import damsm_paths, load_image_encoder, load_text_encoder, text_encoder_vocab_size
from .driver import STATE_NAME, Driver, EpochSummary, StartPoint, read_progress, resolve_start_point
from .parallel import wrap_for_devices

__all__ = ['GANTrainer', 'apply_fast_model_options', 'resolve_resume', 'COMPILE_MODES']

COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def resolve_resume(cfg, finetune: bool) -> tuple:
    """What to start from: ``(kind, path)`` with kind 'none', 'state' (exact resume of a
    training state) or 'weights' (official-style: model files of an epoch, fresh optimisers).

    ``TRAIN.NET_G`` may be a ``netG_XXX.pth`` file (exact resume when the run's training state
    ended at epoch XXX, else weights), a run folder or a state file; with ``RESTORE=True`` and
    no ``TRAIN.NET_G`` the newest state of this data set and config under OUTPUT_DIR is used.
    """
    def state_for_file(path: str):
        state_path = os.path.join(os.path.dirname(path), STATE_NAME)
        progress = read_progress(state_path) if os.path.isfile(state_path) else None
        # A state of the other entry point (main.py vs main_finetune.py) has other optimisers:
        # continue from the weights of that epoch instead.
        if (progress and progress.get('epoch') == checkpoint_epoch(path) and progress.get('next_step') == 0
                and bool(progress.get('finetune')) == finetune):
            return state_path
        return None
    start = resolve_start_point(cfg, 'TRAIN.NET_G', state_for_file)
    if start.kind == 'state' and family_of(cfg).is_release_start(start.path):
        return 'weights', start.path   # a released training state of another code base (DF-GAN's)
    return start.kind, start.path


def apply_fast_model_options(cfg, family: Family, nets: dict, wrap=None) -> nn.Module:
    """Model-side options: the family's own (SSA-GAN: TRAIN.CONV_GRADFIX, the lean SSCBN), on
    GPU channels-last networks with TRAIN.FAST, and COMPILE. Returns the generator module to
    call: ``wrap(netG)`` (the device wrapper, e.g. DDP; netG without ``wrap``), compiled on
    top with COMPILE."""
    train, fast = cfg.TRAIN, cfg.TRAIN.FAST_OPTIONS
    netG = nets[family.networks[0]]
    device = next(netG.parameters()).device
    if fast.COMPILE_MODE not in COMPILE_MODES:
        raise ConfigError(f"TRAIN.FAST_OPTIONS.COMPILE_MODE must be one of {', '.join(map(repr, COMPILE_MODES))}, "
                          f"got '{fast.COMPILE_MODE}'")
    family.prepare_networks(cfg, nets, device)
    if train.FAST and device.type == 'cuda' and fast.CHANNELS_LAST:
        for net in nets.values():
            net.to(memory_format=torch.channels_last)
    generator = netG if wrap is None else wrap(netG)
    if train.FAST and fast.COMPILE:
        # the wrapper is compiled, not wrapped around a compiled module: torch.compile(DDP(G))
        # is the order DDP supports (its graph breaks at bucket boundaries)
        generator = torch.compile(generator, mode=None if fast.COMPILE_MODE == 'default' else fast.COMPILE_MODE)
    return generator


class GANTrainer:
    """Builds data, models and optimisers from a config and trains (``fit``) on the driver."""
    kind, name, net_key = 'gan', '', 'TRAIN.NET_G'
    postfix_losses = ('errD', 'MAGP', 'errG', 'DAMSM')

    def __init__(self, cfg, finetune: bool = False):
        self.cfg, self.finetune = cfg, finetune
        self.family = family_of(cfg)
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
        kind, path = resolve_resume(cfg, finetune)
        self.start = StartPoint(kind, path)

        # Encoders: the DAMSM files, or when fine-tuning from an epoch's files, those of that epoch.
        text_path, image_path = damsm_paths(cfg.TEXT.DAMSM_NAME)
        if finetune and kind == 'weights':
            own_text = sibling_checkpoint(path, 'text_encoder')
            if os.path.isfile(own_text):
                text_path, image_path = own_text, sibling_checkpoint(path, 'image_encoder')
        n_words = text_encoder_vocab_size(text_path)
        if train.BATCH_SIZE % self.dist.world_size:
            raise ConfigError(f'TRAIN.BATCH_SIZE={train.BATCH_SIZE} is the total batch and must be '
                              f'divisible by the {self.dist.world_size} processes')
        self.batch_size = train.BATCH_SIZE // self.dist.world_size
        self.dataset = build_dataset(cfg, 'train', augment=True, expected_vocab_size=n_words)
        self.test_dataset = build_dataset(cfg, 'test', augment=False, expected_vocab_size=n_words)
        self.text_encoder = load_text_encoder(cfg, text_path, n_words, self.device)
        self.image_encoder = load_image_encoder(cfg, image_path, self.device)
        self.nets = {k: net.to(self.device) for k, net in self.family.build_networks(cfg).items()}
        self.netG = self.nets[self.family.networks[0]]
        self.optimizers = self.family.make_optimizers(cfg, self.nets, self.text_encoder, self.image_encoder, finetune)
        if finetune:
            # The official fine-tuning never calls eval() on the encoders: dropout and
            # Inception batch statistics are active; ENCODERS_TRAIN_MODE=False turns that off.
            self.text_encoder.train(train.FINETUNE.ENCODERS_TRAIN_MODE)
            self.image_encoder.train(train.FINETUNE.ENCODERS_TRAIN_MODE)
        else:
            for enc in (self.text_encoder, self.image_encoder):
                enc.requires_grad_(False)
                enc.eval()
        self.fixed = self._fixed_samples()
        if kind == 'weights':
            self.start.epoch = self._load_weights(path)

        self.driver = Driver(cfg, self, self.dataset, collate_sorted, self.batch_size, self.start, self.device,
                             self.dist)
        self.run_dir, self.models_dir, self.logger = self.driver.run_dir, self.driver.models_dir, self.driver.logger

        # Wrap for several devices last, so states load into the bare modules.
        modules = {'netG': apply_fast_model_options(
            cfg, self.family, self.nets, wrap=lambda g: wrap_for_devices(g, self.setup, self.dist, sync_bn=True))}
        for k in self.family.networks[1:]:
            modules[k] = wrap_for_devices(self.nets[k], self.setup, self.dist, sync_bn=False)
        encoders = {'text_encoder': self.text_encoder, 'image_encoder': self.image_encoder}
        if finetune:
            modules['text_encoder'] = wrap_for_devices(self.text_encoder, self.setup, self.dist, sync_bn=False)
            modules['image_encoder'] = wrap_for_devices(self.image_encoder, self.setup, self.dist, sync_bn=True)
        else:
            modules.update(encoders)
        self.update = self.family.make_update(cfg, self.nets, modules, encoders, self.optimizers, finetune,
                                              self.dist.distributed)

    def __getattr__(self, name):
        # the networks by their checkpoint names: trainer.netD, trainer.netC ...
        nets = self.__dict__.get('nets', {})
        if name in nets:
            return nets[name]
        raise AttributeError(name)

    @property
    def global_step(self) -> int:
        return self.driver.global_step

    # ------------------------------------------------------------------ start / resume
    def _load_weights(self, path: str) -> int:
        """The official RESTORE: model files of an epoch, fresh optimisers; returns the next epoch."""
        released = self.family.load_release_start(self.nets, self.optimizers, path)
        if released is not None:
            return released
        generator, *others = self.family.networks
        self.family.load_weights(self.nets[generator], path, generator)
        for name in others:
            other = sibling_checkpoint(path, name)
            if os.path.isfile(other):
                self.family.load_weights(self.nets[name], other, name)
            elif not self.finetune:
                raise FileNotFoundError(f"continuing from '{path}' needs the {name} file '{other}' beside it")
        return checkpoint_epoch(path) + 1

    def load_state_dict(self, state: dict) -> None:
        if state.get('finetune', False) != self.finetune:
            raise ConfigError(f"'{self.start.path}' is a {'fine-tuning' if state.get('finetune') else 'main.py'} "
                              f"training state; resume it with the matching script")
        for name, net in self.nets.items():
            load_model_state(net, state[name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])
        if self.finetune:
            load_model_state(self.text_encoder, state['text_encoder'])
            load_model_state(self.image_encoder, state['image_encoder'])
        if 'fixed_noise' in state:
            self.fixed['noise'] = state['fixed_noise']

    def state_dict(self) -> dict:
        state = {name: model_state_dict(net) for name, net in self.nets.items()}
        state.update({name: opt.state_dict() for name, opt in self.optimizers.items()})
        state.update(finetune=self.finetune, config=repr(self.cfg), fixed_noise=self.fixed['noise'])
        if self.finetune:
            state.update(text_encoder=model_state_dict(self.text_encoder),
                         image_encoder=model_state_dict(self.image_encoder))
        return state

    def progress_fields(self) -> dict:
        return {'finetune': self.finetune}

    def _fixed_samples(self) -> dict:
        """Fixed noise and test captions for the per-epoch sample grid."""
        count = min(8, len(self.test_dataset.filenames))
        noise = self.family.noise(self.cfg, range(count), self.cfg.SEED)
        caps, lens = zip(*(self.test_dataset.caption_tensor(i * self.test_dataset.embeddings_num)
                           for i in range(count)))
        return {'noise': noise, 'captions': torch.stack(caps), 'lengths': torch.tensor(lens)}

    # ------------------------------------------------------------------ the driver's protocol
    def describe(self, steps_per_epoch: int) -> str:
        return (f'{len(self.dataset)} training images, {steps_per_epoch} steps per epoch, '
                f'batch {self.batch_size} x {self.dist.world_size} process(es) on {self.device}'
                + (f' (DataParallel over GPUs {self.setup.device_ids})' if self.setup.data_parallel else ''))

    def begin_epoch(self, epoch: int, first_step: int) -> None:
        for net in self.nets.values():
            net.train()

    def train_step(self, batch) -> dict:
        """One iteration on ``batch`` (a ``datasets.Batch``); returns the losses as floats."""
        losses = self.update(batch)
        self.last_batch = (self.update.last_real, self.update.last_fake, batch)
        return losses

    def step_scalars(self) -> dict:
        return {f'lr/{name[len("optimizer"):]}': opt.param_groups[0]['lr'] for name, opt in self.optimizers.items()}

    def end_of_epoch(self, summary: EpochSummary) -> None:
        if self.dist.is_main:
            self.end_of_epoch_images(summary.epoch)
            self.save_epoch_checkpoints(summary.epoch)
            print(f'epoch {summary.epoch}/{self.cfg.TRAIN.MAX_EPOCH}: '
                  + ', '.join(f'{k} {v:.3f}' for k, v in summary.last.items()))

    def fit(self) -> str | None:
        """Train from the start (or resume point) to TRAIN.MAX_EPOCH; returns the run folder."""
        return self.driver.fit()

    # ------------------------------------------------------------------ outputs
    def save_epoch_checkpoints(self, epoch: int) -> None:
        """Official-format files of each network (and the encoders when fine-tuning, with the
        generator) every interval after warm-up."""
        train = self.cfg.TRAIN
        if epoch < train.WARMUP_EPOCHS:
            return
        for name, net in self.nets.items():
            if epoch % train[self.family.save_intervals[name]]:
                continue
            save_atomic(model_state_dict(net), os.path.join(self.models_dir, f'{name}_{epoch:03d}.pth'))
            if self.finetune and name == self.family.networks[0]:
                for enc_name, enc in (('text_encoder', self.text_encoder), ('image_encoder', self.image_encoder)):
                    save_atomic(model_state_dict(enc), os.path.join(self.models_dir, f'{enc_name}_{epoch:03d}.pth'))

    @torch.no_grad()
    def end_of_epoch_images(self, epoch: int) -> None:
        """Fixed-noise, fixed-caption sample grid (images and their masks) as a PNG, and
        TensorBoard grids of it and of the last batch's real and fake images and captions."""
        fixed, samples = self.fixed, os.path.join(self.run_dir, 'samples')
        self.netG.eval()
        self.text_encoder.eval()
        _, sent = self.text_encoder(fixed['captions'].to(self.device), fixed['lengths'])
        images, masks = self.family.generate(self.netG, fixed['noise'].to(self.device), sent)
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


def _tile(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W -> 3 x H x (B*W)."""
    return images.permute(1, 2, 0, 3).reshape(images.size(1), images.size(2), -1).clamp(0, 1)
