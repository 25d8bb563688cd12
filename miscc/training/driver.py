"""The epoch driver every trainer shares (GAN training and DAMSM pretraining): where a run
starts (run folder, epoch, step), deterministic data order, the epoch loop with TRAIN.MAX_STEPS
and stop signals, full training states with exact resume, and the logger's lifetime.

A trainer supplies only its step, its end-of-epoch work and its state (``Driver``'s protocol).
"""
from __future__ import annotations

import contextlib
import glob
import os
import random
import signal
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ..core.checkpoint import CheckpointError, load_file, save_atomic
from ..core.config import ConfigError
from ..core.files import read_json, write_json
from ..core.runtime import DistEnv, make_run_dir, rng_state, sample_seeds, set_rng_state

__all__ = ['SeededSamples', 'EpochBatchSampler', 'make_loader', 'RunLogger', 'StopFlag',
           'save_training_state', 'load_training_state', 'find_latest_state', 'restore_state_path',
           'state_in_folder', 'resolve_start', 'STATE_NAME', 'read_progress', 'NonFiniteLossError',
           'check_finite', 'StartPoint', 'resolve_start_point', 'EpochSummary', 'Driver']

STATE_NAME = 'state_last.pth'


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stops without writing any checkpoint."""


def check_finite(losses: dict, epoch: int, step: int, global_step: int) -> None:
    """Raise NonFiniteLossError naming the step and all losses if any is not finite."""
    if all(np.isfinite(v) for v in losses.values()):
        return
    values = ', '.join(f'{k}={v:.4g}' for k, v in losses.items())
    raise NonFiniteLossError(f'non-finite loss at epoch {epoch}, step {step} (global step {global_step}): '
                             f'{values}. Training stopped; no checkpoint was written from this state, '
                             f'the last saved ones are intact.')


@contextlib.contextmanager
def _local_seed(seed: int):
    """Seed python/numpy/torch for one sample, restoring the caller's generators after."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


class SeededSamples(Dataset):
    """Wraps a data set so item ``(index, seed)`` draws its random augmentation and caption
    from ``seed``: the data a step sees is then a function of (SEED, epoch, position),
    whatever the number of workers, and a resumed run sees exactly the same data."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item):
        index, seed = item
        with _local_seed(int(seed)):
            return self.base[int(index)]


class EpochBatchSampler(Sampler):
    """Batches of ``(index, seed)`` for one epoch: a permutation drawn from (seed, epoch),
    sharded over ``world_size`` ranks, the last incomplete batch dropped (as the official
    loader does). ``set_epoch(epoch, start_batch)`` skips batches already trained on."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if batch_size < 1:
            raise ValueError(f'batch size must be positive, got {batch_size}')
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 1
        self.start_batch = 0
        if len(self) == 0:
            raise ValueError(f'{num_samples} samples make no complete batch of {batch_size} '
                             f'x {world_size} process(es); lower TRAIN.BATCH_SIZE')

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        """Batches per epoch for each rank."""
        return self.num_samples // (self.batch_size * self.world_size)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch)
        order = torch.randperm(self.num_samples, generator=gen) if self.shuffle else torch.arange(self.num_samples)
        seeds = sample_seeds(self.seed, self.epoch, self.num_samples)
        per_step = self.batch_size * self.world_size
        for b in range(self.start_batch, len(self)):
            positions = range(b * per_step + self.rank * self.batch_size,
                              b * per_step + (self.rank + 1) * self.batch_size)
            yield [(int(order[p]), int(seeds[p])) for p in positions]


def make_loader(dataset: Dataset, sampler: EpochBatchSampler, collate_fn, workers: int,
                pin_memory: bool = False) -> DataLoader:
    """DataLoader over ``SeededSamples(dataset)``; its own generator keeps the global RNG untouched."""
    return DataLoader(SeededSamples(dataset), batch_sampler=sampler, collate_fn=collate_fn,
                      num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(sampler.seed))


class RunLogger:
    """TensorBoard logging in ``<run>/log`` on the main process; a no-op elsewhere."""

    def __init__(self, log_dir: str | None):
        self.writer = None
        if log_dir is not None:
            # imported here, not at the top: tensorboard imports TensorFlow when it is installed,
            # seconds that scripts without a logger (evaluation, generation) should not pay
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir)

    def scalars(self, values: dict, step: int, prefix: str = '') -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(prefix + k, v, step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class StopFlag:
    """Set by SIGINT/SIGTERM (cluster pre-emption, Ctrl-C): the loop finishes its step, saves
    the training state and returns. A second signal stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def agreed(self, distributed: bool, device) -> bool:
        """Whether any process was asked to stop (all ranks must stop at the same step)."""
        if not distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag)
        return flag.item() > 0


def save_training_state(models_dir: str, state: dict, progress: dict) -> str:
    """Write ``state_last.pth`` (models, optimisers, RNG, sampler position, config) atomically,
    then ``state_last.json`` with ``progress`` (epoch, next_epoch, next_step, global_step)."""
    state = dict(state, progress=progress, rng=rng_state(), saved_at=time.time())
    path = os.path.join(models_dir, STATE_NAME)
    save_atomic(state, path)
    write_json(path[:-len('.pth')] + '.json', progress)
    return path


def load_training_state(path: str, restore_rng: bool = True) -> dict:
    """Load a training state (weights_only); with ``restore_rng`` also restore the RNG states
    it holds (the driver restores them itself, right before the first step)."""
    state = load_file(path)
    if not isinstance(state, dict) or 'progress' not in state or 'rng' not in state:
        raise CheckpointError(f"'{path}' is not a training state written by this code "
                              f"(expected keys 'progress' and 'rng')")
    if restore_rng:
        set_rng_state(state['rng'])
    return state


def read_progress(state_path: str) -> dict | None:
    """The small JSON beside a training state, or None."""
    path = state_path[:-len('.pth')] + '.json'
    return read_json(path) if os.path.isfile(path) else None


def find_latest_state(output_dir: str, prefix: str) -> str | None:
    """Newest ``<output_dir>/<prefix>*/models/state_last.pth``, or None."""
    found = glob.glob(os.path.join(output_dir, glob.escape(prefix) + '*', 'models', STATE_NAME))
    return max(found, key=os.path.getmtime) if found else None


def restore_state_path(output_dir: str, dataset: str, config_name: str, net_key: str) -> str:
    """``RESTORE=True`` without a path: the newest training state of this data set and config
    under ``output_dir``; FileNotFoundError naming the folder and ``net_key`` otherwise."""
    prefix = f'{dataset}_{config_name or "run"}_'
    latest = find_latest_state(output_dir, prefix)
    if latest is None:
        raise FileNotFoundError(f"RESTORE=True but no training state '{STATE_NAME}' was found under "
                                f"'{output_dir}/{prefix}*/models/'; set {net_key} to a run folder or a "
                                f"checkpoint file")
    return latest


def state_in_folder(folder: str, key: str) -> str:
    """The training state of a run folder (``<folder>/models/`` or the folder itself);
    FileNotFoundError naming the config ``key`` that pointed there otherwise."""
    for candidate in (os.path.join(folder, 'models', STATE_NAME), os.path.join(folder, STATE_NAME)):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{key}='{folder}' is a folder without a training state ({STATE_NAME})")


def resolve_start(target: str, restore: bool, cfg, key: str):
    """Where a run starts: ``(kind, path)`` with kind 'none' (from scratch), 'state' (a
    training state to resume exactly) or 'file' (a model file the caller interprets).

    ``target`` is the value of config ``key`` (a run folder, a state file or a model file);
    without it, ``restore`` takes the newest state of ``cfg``'s data set and config name."""
    if not target:
        if not restore:
            return 'none', ''
        return 'state', restore_state_path(cfg.OUTPUT_DIR, cfg.DATASET_NAME, cfg.CONFIG_NAME, key)
    if os.path.isdir(target):
        return 'state', state_in_folder(target, key)
    if not os.path.isfile(target):
        raise FileNotFoundError(f"{key}='{target}' not found")
    if os.path.basename(target).startswith('state'):
        return 'state', target
    return 'file', target


# ----------------------------------------------------------------------------- the loop
@dataclass
class StartPoint:
    """Where a run starts: ``kind`` 'none' (from scratch), 'state' (a training state at ``path``,
    continued exactly) or 'weights' (model files at ``path``, fresh optimisers: the trainer
    loads them and sets ``epoch``). ``step`` batches of ``epoch`` are already done."""
    kind: str = 'none'
    path: str = ''
    epoch: int = 1
    step: int = 0
    global_step: int = 0


def resolve_start_point(cfg, key: str, state_for_file=None) -> StartPoint:
    """The start point of config ``key`` (``TRAIN.NET_G`` / ``TRAIN.NET_E``: a run folder, a state
    file or a model file; empty with ``RESTORE=True``: the newest state of this data set and
    config). For a model file, ``state_for_file(path)`` may name the training state that
    continues exactly from it; otherwise the file's weights are the start."""
    kind, path = resolve_start(cfg.get(key), cfg.RESTORE, cfg, key)
    if kind == 'file':
        state = state_for_file(path) if state_for_file is not None else None
        return StartPoint('state', state) if state else StartPoint('weights', path)
    return StartPoint(kind, path)


@dataclass
class EpochSummary:
    """What the driver hands a trainer at the end of an epoch."""
    epoch: int
    last: dict                 # losses of the last step
    means: dict                # mean losses over the steps of this invocation
    steps: int                 # steps run in this epoch by this invocation
    started: float             # time.time() when this invocation began the epoch


class Driver:
    """The epoch loop with exact resume.

    The ``trainer`` provides: ``kind`` ('gan', 'damsm'), ``name`` (progress-bar prefix),
    ``net_key`` (the config key to resume with), ``describe(steps_per_epoch) -> str``,
    ``begin_epoch(epoch, first_step)``, ``train_step(batch) -> {loss: float}``,
    ``step_scalars() -> dict`` (logged with the losses), ``end_of_epoch(summary)``,
    ``state_dict() -> dict``, ``load_state_dict(state)`` and ``progress_fields() -> dict``.

    The driver makes the seeded loader over ``dataset``, loads a 'state' start (the trainer's
    part through ``load_state_dict``, the RNG right before the first step), creates or reuses
    the run folder (``run_dir``, ``models_dir``) and the TensorBoard ``logger`` on the main
    process, and writes the training state after every epoch and when it stops early.
    """

    def __init__(self, cfg, trainer, dataset, collate_fn, batch_size: int, start: StartPoint, device,
                 dist_env: DistEnv | None = None):
        self.cfg, self.trainer, self.start, self.device = cfg, trainer, start, device
        self.dist = dist_env or DistEnv()
        self.sampler = EpochBatchSampler(len(dataset), batch_size, cfg.SEED, self.dist.rank, self.dist.world_size)
        self.loader = make_loader(dataset, self.sampler, collate_fn, cfg.WORKERS, pin_memory=device.type == 'cuda')
        self.rng = None
        run_dir = None
        if start.kind == 'state':
            state = load_training_state(start.path, restore_rng=False)
            kind = state.get('kind', 'gan')   # GAN states of earlier versions carry no kind
            if kind != trainer.kind:
                raise ConfigError(f"'{start.path}' is a {kind} training state, not a {trainer.kind} one; "
                                  f"resume it with {'pretrain_DAMSM.py' if kind == 'damsm' else 'main.py'}")
            trainer.load_state_dict(state)
            progress = state['progress']
            start.epoch, start.step, start.global_step = progress['next_epoch'], progress['next_step'], progress['global_step']
            self.rng = state['rng']
            run_dir = os.path.dirname(os.path.dirname(os.path.abspath(start.path)))
        self.global_step = start.global_step
        if run_dir is None and self.dist.is_main:
            run_dir = make_run_dir(cfg.OUTPUT_DIR, cfg.DATASET_NAME, cfg.CONFIG_NAME)
        self.run_dir = run_dir
        self.models_dir = os.path.join(run_dir, 'models') if run_dir else None
        self.logger = RunLogger(os.path.join(run_dir, 'log') if self.dist.is_main else None)

    def save_state(self, epoch_done: int, next_epoch: int, next_step: int) -> None:
        """The training state after ``epoch_done`` epochs and ``next_step`` steps of the next (main process)."""
        if not self.dist.is_main:
            return
        progress = {'epoch': epoch_done, 'next_epoch': next_epoch, 'next_step': next_step,
                    'global_step': self.global_step, **self.trainer.progress_fields()}
        save_training_state(self.models_dir, dict(self.trainer.state_dict(), kind=self.trainer.kind), progress)

    def _stop(self, stop: StopFlag) -> bool:
        limit = self.cfg.TRAIN.MAX_STEPS
        return stop.agreed(self.dist.distributed, self.device) or bool(limit and self.global_step >= limit)

    def fit(self) -> str | None:
        """Train from the start point to TRAIN.MAX_EPOCH (or a stop); returns the run folder."""
        t, train, main = self.trainer, self.cfg.TRAIN, self.dist.is_main
        steps_per_epoch = len(self.sampler)
        if main:
            print(f'run folder: {self.run_dir}\n{t.describe(steps_per_epoch)}')
        if self.rng is not None:   # exact resume: the generators as they were at the save
            set_rng_state(self.rng)
        with StopFlag() as stop:
            for epoch in range(self.start.epoch, train.MAX_EPOCH + 1):
                first = self.start.step if epoch == self.start.epoch else 0
                t.begin_epoch(epoch, first)
                self.sampler.set_epoch(epoch, first)
                bar = tqdm(total=steps_per_epoch, initial=first, disable=not main, dynamic_ncols=True,
                           desc=f'{t.name}epoch {epoch}/{train.MAX_EPOCH}', leave=False)
                began = window_start = time.time()
                sums, window_images, step, losses = {}, 0, first, {}
                for batch in self.loader:
                    losses = t.train_step(batch)
                    step += 1
                    self.global_step += 1
                    check_finite(losses, epoch, step, self.global_step)
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v
                    window_images += batch.images.size(0) * self.dist.world_size
                    bar.update(1)
                    if step % train.LOG_INTERVAL == 0 or step == steps_per_epoch:
                        shown = t.postfix_losses or losses
                        bar.set_postfix({k: f'{v:.3f}' for k, v in losses.items() if k in shown})
                        elapsed = max(time.time() - window_start, 1e-9)
                        self.logger.scalars({f'loss/{k}': v for k, v in losses.items()}, self.global_step)
                        self.logger.scalars(dict(t.step_scalars(), **{'speed/images_per_s': window_images / elapsed}),
                                            self.global_step)
                        window_start, window_images = time.time(), 0
                    if self._stop(stop) and step < steps_per_epoch:
                        bar.close()
                        self.save_state(epoch - 1, epoch, step)
                        if main:
                            print(f'stopped at epoch {epoch}, step {step}; training state saved in '
                                  f'{self.models_dir}. Resume with RESTORE=True {t.net_key}={self.run_dir}')
                        self.logger.close()
                        return self.run_dir
                bar.close()
                done = step - first
                t.end_of_epoch(EpochSummary(epoch, losses, {k: v / max(done, 1) for k, v in sums.items()}, done, began))
                self.save_state(epoch, epoch + 1, 0)
                if self._stop(stop):
                    break
        self.logger.close()
        return self.run_dir
