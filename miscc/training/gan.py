"""GAN training, shared by ``main.py`` (frozen DAMSM encoders) and ``main_finetune.py``
(encoders trained jointly with the DAMSM loss on real images), for every family of
``MODEL.NAME``: the family gives the networks and the update, the driver the epoch loop."""
from __future__ import annotations

import json
import os
import warnings

import torch
import torch.nn as nn

from datasets import build_dataset, collate_sorted

from ..core.checkpoint import (BEST_NAME, EMA_NAME, companion_checkpoint, ema_checkpoint, load_model_state,
                               model_state_dict, not_a_file, save_atomic, step_checkpoint, step_tag, trained_epochs)
from ..core.config import ConfigError
from ..core.files import atomic_write, write_json
from ..core.runtime import device_from_config, init_distributed, seed_everything
from ..data.hd5 import Hd5Batch, build_hd5_dataset, collate_hd5
from ..evaluation.generation import decode_caption, mask_grid, save_grid
from ..evaluation.in_training import TrainingEvaluator
from ..families import Family, family_of, require_precomputed_embeddings
from ..families.encoders import damsm_paths, load_image_encoder, load_text_encoder, text_encoder_vocab_size
from .driver import Driver, EpochSummary
from .state import STATE_NAME, StartPoint, read_progress, resolve_start_point
from .ema import GeneratorEMA
from .parallel import wrap_for_devices

__all__ = ['GANTrainer', 'apply_fast_model_options', 'resolve_resume', 'METRICS_NAME']

METRICS_NAME = 'metrics.jsonl'   # <run>/metrics.jsonl: the in-training scores (EVAL.INTERVAL)


def resolve_resume(cfg, finetune: bool) -> tuple:
    """What to start from: ``(kind, path)`` with kind 'none', 'state' (exact resume of a
    training state) or 'weights' (official-style: model files of an epoch, fresh optimisers).

    ``TRAIN.NET_G`` may be a ``netG_XXX.pth`` file (exact resume when the run's training state
    ended at epoch XXX, else weights; any other generator file is weights), a run folder or a
    state file; with ``RESTORE=True`` and no ``TRAIN.NET_G`` the newest state of this data set
    and config under OUTPUT_DIR is used. ``TRAIN.NET_D`` belongs with a generator file only.
    """
    def state_for_file(path: str):
        state_path = os.path.join(os.path.dirname(path), STATE_NAME)
        progress = read_progress(state_path) if os.path.isfile(state_path) else None
        # A state of the other entry point (main.py vs main_finetune.py) has other optimisers:
        # continue from the weights of that epoch instead.
        if (progress and progress.get('epoch') == trained_epochs(path) and progress.get('next_step') == 0
                and bool(progress.get('finetune')) == finetune):
            return state_path
        return None
    start = resolve_start_point(cfg, 'TRAIN.NET_G', state_for_file)
    if start.kind == 'state' and family_of(cfg).is_release_start(start.path):
        return 'weights', start.path   # a released training state of another code base (DF-GAN's)
    if cfg.TRAIN.NET_D and start.kind != 'weights':
        fix = (f"'{start.path}' is a training state, which holds its discriminator already: leave TRAIN.NET_D empty"
               if start.kind == 'state' else 'set TRAIN.NET_G to the generator file it belongs with')
        raise ConfigError(f"TRAIN.NET_D='{cfg.TRAIN.NET_D}' is the discriminator that continues with the generator "
                          f"file of TRAIN.NET_G; {fix}")
    return start.kind, start.path


def apply_fast_model_options(cfg, family: Family, nets: dict, wrap=None) -> nn.Module:
    """Model-side options: the family's own (SSA-GAN: TRAIN.CONV_GRADFIX, the lean SSCBN), on
    GPU channels-last networks with TRAIN.FAST, and COMPILE. Returns the generator module to
    call: ``wrap(netG)`` (the device wrapper, e.g. DDP; netG without ``wrap``), compiled on
    top with COMPILE."""
    train, fast = cfg.TRAIN, cfg.TRAIN.FAST_OPTIONS
    netG = nets[family.networks[0]]
    device = next(netG.parameters()).device
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
        self.postfix_losses = self.family.postfix_losses or GANTrainer.postfix_losses
        self.dist = init_distributed(timeout_s=cfg.DIST_TIMEOUT)
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

        if train.BATCH_SIZE % self.dist.world_size:
            raise ConfigError(f'TRAIN.BATCH_SIZE={train.BATCH_SIZE} is the total batch and must be '
                              f'divisible by the {self.dist.world_size} processes')
        self.batch_size = train.BATCH_SIZE // self.dist.world_size
        if cfg.EVAL.INTERVAL < 0:
            raise ConfigError(f'EVAL.INTERVAL must be 0 (off) or a number of epochs, got {cfg.EVAL.INTERVAL}')
        if cfg.EVAL.INTERVAL and cfg.DATA.HD5_FILE:
            raise ConfigError(f"EVAL.INTERVAL={cfg.EVAL.INTERVAL} scores with the DAMSM text encoder's test captions, "
                              f"but DATA.HD5_FILE='{cfg.DATA.HD5_FILE}' conditions on precomputed embeddings: set "
                              f"EVAL.INTERVAL=0 and score saved generators with eval_FID.py --netG")
        if cfg.DATA.HD5_FILE:
            self._hd5_data(finetune)
        else:
            self._damsm_data(finetune, kind, path)
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
                if enc is not None:
                    enc.requires_grad_(False)
                    enc.eval()
        self.fixed = self._fixed_samples()
        if kind == 'weights':
            self.start.epoch = self._load_weights(path)
        self.ema = self._make_ema(path if kind == 'weights' else '')
        self.eval_history, self.eval_best = [], None      # in-training scores (EVAL.INTERVAL), resumed

        # The device-wrapped modules share their parameters with the bare ones (a state loads into
        # the bare modules below; the wrappers see it), so the update exists before any state.
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

        self.driver = Driver(cfg, self, self.dataset, self.collate, self.batch_size, self.start, self.device,
                             self.dist)   # loads a 'state' start through load_state_dict
        self.evaluator = None
        if cfg.EVAL.INTERVAL:
            self.evaluator = TrainingEvaluator(cfg, self.family, self.text_encoder, self.image_encoder,
                                               self.test_dataset, self.device, cfg.TREE.BASE_SIZE, self.dist)
            if self.dist.is_main and kind == 'state':
                # the history as of the resumed state: lines of a later, lost epoch go
                self._write_metrics()

    def _damsm_data(self, finetune: bool, kind: str, path: str) -> None:
        """Captions encoded by the DAMSM encoders: the DAMSM files, or when fine-tuning from an
        epoch's files, those of that epoch; the data sets of DATASET_NAME in DATA_DIR."""
        cfg = self.cfg
        text_path, image_path = damsm_paths(cfg.TEXT.DAMSM_NAME)
        if finetune and kind == 'weights':
            own_text = companion_checkpoint(path, 'text_encoder')
            if own_text and os.path.isfile(own_text):
                text_path, image_path = own_text, companion_checkpoint(path, 'image_encoder')
        n_words = text_encoder_vocab_size(text_path)
        self.dataset = build_dataset(cfg, 'train', augment=True, expected_vocab_size=n_words, text_encoder=text_path)
        self.test_dataset = build_dataset(cfg, 'test', augment=False, expected_vocab_size=n_words,
                                          text_encoder=text_path)
        self.text_encoder = load_text_encoder(cfg, text_path, n_words, self.device)
        self.image_encoder = load_image_encoder(cfg, image_path, self.device)
        self.collate = collate_sorted

    def _hd5_data(self, finetune: bool) -> None:
        """Precomputed text embeddings of DATA.HD5_FILE (its train and test splits): no DAMSM
        encoders, vocabulary or TEXT.DAMSM_NAME."""
        require_precomputed_embeddings(self.cfg, self.family)
        if finetune:
            raise ConfigError(f"main_finetune.py fine-tunes the DAMSM encoders, but DATA.HD5_FILE="
                              f"'{self.cfg.DATA.HD5_FILE}' conditions on precomputed embeddings: use main.py")
        self.dataset = build_hd5_dataset(self.cfg, 'train')
        self.test_dataset = build_hd5_dataset(self.cfg, 'test')
        self.text_encoder = self.image_encoder = None
        self.collate = collate_hd5

    @property
    def global_step(self) -> int:
        return self.driver.global_step

    # the run folder and logger exist once fit() has begun (the driver makes them)
    run_dir = property(lambda self: self.driver.run_dir)
    models_dir = property(lambda self: self.driver.models_dir)
    logger = property(lambda self: self.driver.logger)

    # ------------------------------------------------------------------ start / resume
    def _load_weights(self, path: str) -> int:
        """The official RESTORE: model files of an epoch, fresh optimisers; returns the next epoch
        (the one after the epochs the generator's name records, see ``trained_epochs``; 1 when it
        records none). The discriminator is TRAIN.NET_D or the file named like the generator
        (``netD_XXX.pth``, the implementation's ``disc_XXX.pth``); without one it starts afresh
        with TRAIN.FRESH_NET_D=True (after a warning), else nothing starts."""
        released = self.family.load_release_start(self.nets, self.optimizers, path)
        if released is not None:
            return released
        train = self.cfg.TRAIN
        generator, *others = self.family.networks
        self.family.load_weights(self.nets[generator], path, generator)
        for name in others:
            given = train.NET_D if name == 'netD' else ''
            other = given or companion_checkpoint(path, name)
            if other and os.path.isfile(other):
                self.family.load_weights(self.nets[name], other, name)
            elif given:
                raise FileNotFoundError(f"TRAIN.NET_D='{given}' {not_a_file(given)}")
            elif train.FRESH_NET_D:
                warnings.warn(f"'{path}' continues with a freshly initialised {name} (TRAIN.FRESH_NET_D=True): "
                              f"{'no file ' + repr(other) if other else 'no ' + name + ' file is named like it'}")
            else:
                beside = f"'{other}' beside it" if other else f'a {name} file'
                hint = ' or TRAIN.NET_D=<its file>' if name == 'netD' else ''
                raise FileNotFoundError(f"continuing from '{path}' needs {beside}{hint}; "
                                        f"TRAIN.FRESH_NET_D=True starts the {name} afresh instead")
        return (trained_epochs(path) or 0) + 1

    def _make_ema(self, weights_path: str) -> GeneratorEMA | None:
        """TRAIN.G_EMA's average of G (None when off), a copy of G, or continuing from weights:
        the ``netG_ema_<epoch>.pth`` beside them when there is one."""
        train = self.cfg.TRAIN
        if not train.G_EMA:
            return None
        # a separate generator instance, built without drawing from the global RNG, so that
        # training with the average on follows the same random stream as without it
        with torch.random.fork_rng(devices=[]):
            module = self.family.build_generator(self.cfg)
        ema = GeneratorEMA(module.to(self.device), self.netG, train.G_EMA_DECAY, train.G_EMA_RAMPUP)
        if weights_path and os.path.basename(weights_path).startswith('netG'):
            saved = ema_checkpoint(weights_path)
            if os.path.isfile(saved):
                load_model_state(ema.module, saved)
        return ema

    @property
    def sampling_generator(self) -> nn.Module:
        """The generator to sample from: the average with TRAIN.G_EMA, else G (bare)."""
        return self.netG if self.ema is None else self.ema.module

    def load_state_dict(self, state: dict) -> None:
        if state.get('finetune', False) != self.finetune:
            raise ConfigError(f"'{self.start.path}' is a {'fine-tuning' if state.get('finetune') else 'main.py'} "
                              f"training state; resume it with the matching script")
        for name, net in self.nets.items():
            load_model_state(net, state[name], name=f'{self.start.path} [{name}]')
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])
        if self.finetune:
            for name in ('text_encoder', 'image_encoder'):
                load_model_state(getattr(self, name), state[name], name=f'{self.start.path} [{name}]')
        if 'fixed_noise' in state:
            self.fixed['noise'] = state['fixed_noise']
        if state.get('update') is not None:
            self.update.load_state_dict(state['update'])
        self.eval_history = list(state.get('eval_history', []))
        self.eval_best = state.get('eval_best')
        if self.ema is not None:
            if 'netG_ema' in state:
                self.ema.load_state_dict(state['netG_ema'])
            else:
                self.ema.copy_from(self.netG)
                warnings.warn(f"TRAIN.G_EMA=True but '{self.start.path}' holds no average of G (trained without "
                              f"it): the average starts from the resumed G")

    def state_dict(self) -> dict:
        state = {name: model_state_dict(net) for name, net in self.nets.items()}
        state.update({name: opt.state_dict() for name, opt in self.optimizers.items()})
        state.update(finetune=self.finetune, config=repr(self.cfg), fixed_noise=self.fixed['noise'],
                     update=self.update.state_dict())
        if self.ema is not None:
            state['netG_ema'] = self.ema.state_dict()
        state.update(eval_history=list(self.eval_history), eval_best=self.eval_best)
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
        if self.text_encoder is None:   # hd5: the test examples' own embeddings and captions
            embs, texts = zip(*(self.test_dataset.embedding_and_caption(i) for i in range(count)))
            return {'noise': noise, 'embeddings': torch.stack(embs), 'texts': list(texts)}
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
        if self.ema is not None:
            self.ema.update(self.netG)
        self.last_batch = (self.update.last_real, self.update.last_fake, batch)
        return losses

    def step_scalars(self) -> dict:
        return {f'lr/{name[len("optimizer"):]}': opt.param_groups[0]['lr'] for name, opt in self.optimizers.items()}

    def end_of_epoch(self, summary: EpochSummary) -> None:
        if self.evaluator is not None and summary.epoch % self.cfg.EVAL.INTERVAL == 0:
            self.evaluate_in_training(summary.epoch)   # every rank: each generates its share
        if self.dist.is_main:
            self.end_of_epoch_images(summary.epoch)
            self.save_epoch_checkpoints(summary.epoch)
            print(f'epoch {summary.epoch}/{self.cfg.TRAIN.MAX_EPOCH}: '
                  + ', '.join(f'{k} {v:.3f}' for k, v in summary.last.items()))

    def fit(self, deadline: float | None = None, on_save=None) -> str | None:
        """Train from the start (or resume point) to TRAIN.MAX_EPOCH; returns the run folder.
        ``deadline``, ``on_save``: see ``Driver.fit``; a run stopped mid-epoch has no model file
        of its last step until the caller writes one with ``save_step_generator``."""
        return self.driver.fit(deadline, on_save)

    # ------------------------------------------------------------------ in-training evaluation
    def evaluate_in_training(self, epoch: int) -> dict | None:
        """FID/KID/R-precision of the sampling generator (the average with TRAIN.G_EMA) after
        ``epoch``: logged to TensorBoard (eval/*), added to ``<run>/metrics.jsonl`` and, when the
        FID is the lowest so far, ``models/netG_best.pth`` + ``netG_best.json``. Returns the record
        on the main process."""
        self.netG.eval()
        try:
            scores = self.evaluator.evaluate(self.sampling_generator)
        finally:
            self.netG.train()
        if scores is None:
            return None
        record = dict({'epoch': epoch, 'step': self.global_step}, **scores,
                      generator=EMA_NAME if self.ema is not None else 'netG')
        self.eval_history.append(record)
        self._write_metrics()
        self.logger.scalars({k: record[k] for k in ('fid', 'kid', 'r_precision') if record[k] is not None},
                            self.global_step, prefix='eval/')
        if self.eval_best is None or record['fid'] < self.eval_best['fid']:
            self.eval_best = {k: record[k] for k in ('epoch', 'step', 'fid', 'images', 'generator')}
            self._save_best()
        print(f"epoch {epoch}: FID {record['fid']:.3f} over {record['images']} images"
              + (f", KID {record['kid']:.5f}" if record['kid'] is not None else '')
              + (f", R-precision {record['r_precision']:.4f}" if record['r_precision'] is not None else '')
              + f" ({record['seconds']:.1f} s; best FID {self.eval_best['fid']:.3f} at epoch {self.eval_best['epoch']})")
        return record

    def _write_metrics(self) -> None:
        """``<run>/metrics.jsonl``, one line per evaluation, rewritten whole and atomically from
        the history (a crash leaves the old file; a resume drops lines of epochs it redoes)."""
        with atomic_write(os.path.join(self.run_dir, METRICS_NAME), 'w') as f:
            f.write(''.join(json.dumps(r) + '\n' for r in self.eval_history))

    def _save_best(self) -> None:
        """The sampling generator as ``models/netG_best.pth`` (official keys; with its encoders
        when fine-tuning), then ``netG_best.json``, each written atomically."""
        save_atomic(model_state_dict(self.sampling_generator), os.path.join(self.models_dir, BEST_NAME + '.pth'))
        if self.finetune:
            for name, enc in (('text_encoder', self.text_encoder), ('image_encoder', self.image_encoder)):
                save_atomic(model_state_dict(enc), os.path.join(self.models_dir, f'{name}_best.pth'))
        write_json(os.path.join(self.models_dir, BEST_NAME + '.json'), self.eval_best)

    # ------------------------------------------------------------------ outputs
    def save_epoch_checkpoints(self, epoch: int) -> None:
        """Official-format files of each network (and the encoders when fine-tuning, with the
        generator) every interval after warm-up."""
        train = self.cfg.TRAIN
        if epoch < train.WARMUP_EPOCHS:
            return
        for name in self.nets:
            if not epoch % train[self.family.save_intervals[name]]:
                self._save_network_files(name, f'{epoch:03d}')

    def save_step_generator(self) -> str:
        """The generator as it is now, after global step N, as ``models/netG_stepNNNNNN.pth``
        (``step_checkpoint``; with its average and encoders as ``save_epoch_checkpoints`` writes
        them): what a run stopped mid-epoch (a deadline, TRAIN.MAX_STEPS) generates from.
        Returns that file (main process only)."""
        generator = self.family.networks[0]
        self._save_network_files(generator, step_tag(self.global_step))
        return step_checkpoint(self.models_dir, self.global_step)

    def _save_network_files(self, name: str, tag: str) -> None:
        """``models/<name>_<tag>.pth`` (official keys); for the generator also its average
        (TRAIN.G_EMA) and, when fine-tuning, the encoders, under the same tag."""
        net = self.nets[name]
        save_atomic(model_state_dict(net), os.path.join(self.models_dir, f'{name}_{tag}.pth'))
        if self.ema is not None and net is self.netG:
            save_atomic(model_state_dict(self.ema.module), os.path.join(self.models_dir, f'{EMA_NAME}_{tag}.pth'))
        if self.finetune and name == self.family.networks[0]:
            for enc_name, enc in (('text_encoder', self.text_encoder), ('image_encoder', self.image_encoder)):
                save_atomic(model_state_dict(enc), os.path.join(self.models_dir, f'{enc_name}_{tag}.pth'))

    @torch.no_grad()
    def end_of_epoch_images(self, epoch: int) -> None:
        """Fixed-noise, fixed-caption sample grid (images and their masks) as a PNG, and
        TensorBoard grids of it and of the last batch's real and fake images and captions."""
        fixed, samples = self.fixed, os.path.join(self.run_dir, 'samples')
        self.netG.eval()
        if self.text_encoder is None:
            sent = fixed['embeddings'].to(self.device)
        else:
            self.text_encoder.eval()
            _, sent = self.text_encoder(fixed['captions'].to(self.device), fixed['lengths'])
        images, masks = self.family.generate(self.sampling_generator, fixed['noise'].to(self.device), sent)
        self.netG.train()
        if self.finetune:
            self.text_encoder.train(self.cfg.TRAIN.FINETUNE.ENCODERS_TRAIN_MODE)
        grid = mask_grid(images, masks, rows=len(fixed['noise']))
        save_grid(grid, os.path.join(samples, f'epoch_{epoch:03d}.png'))
        captions_file = os.path.join(samples, 'captions.txt')
        if not os.path.isfile(captions_file):
            with open(captions_file, 'w', encoding='utf-8') as f:
                f.write('\n'.join(fixed['texts'] if 'texts' in fixed else
                                  (decode_caption(c[:n].tolist(), self.test_dataset.ixtoword)
                                   for c, n in zip(fixed['captions'], fixed['lengths']))) + '\n')

        imgs, fake, batch = self.last_batch
        self.logger.image('images/fixed_samples_with_masks', grid, epoch)
        self.logger.image('images/fake', _tile((fake[:8].float().cpu() + 1) / 2), epoch)
        self.logger.image('images/real', _tile((imgs[:8].float().cpu() + 1) / 2), epoch)
        self.logger.text('captions/batch', '  \n'.join(
            batch.captions[:8] if isinstance(batch, Hd5Batch) else
            (decode_caption(c[:n].tolist(), self.dataset.ixtoword)
             for c, n in zip(batch.captions[:8], batch.cap_lens[:8]))), epoch)


def _tile(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W -> 3 x H x (B*W)."""
    return images.permute(1, 2, 0, 3).reshape(images.size(1), images.size(2), -1).clamp(0, 1)
