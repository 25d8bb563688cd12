"""Training machinery shared by GAN training and DAMSM pretraining: deterministic data order,
run folders and logging, full training states with exact resume, and clean stopping."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import signal
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from .checkpoint import CheckpointError, load_file, save_atomic
from .utils import rng_state, sample_seeds, set_rng_state

__all__ = ['SeededSamples', 'EpochBatchSampler', 'make_loader', 'RunLogger', 'StopFlag',
           'save_training_state', 'load_training_state', 'find_latest_state', 'restore_state_path', 'state_in_folder', 'resolve_start', 'STATE_NAME',
           'read_progress', 'NonFiniteLossError', 'check_finite']

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
    tmp = path[:-len('.pth')] + '.json.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(progress, f, indent=1)
    os.replace(tmp, path[:-len('.pth')] + '.json')
    return path


def load_training_state(path: str) -> dict:
    """Load a training state (weights_only) and restore the RNG states it holds."""
    state = load_file(path)
    if not isinstance(state, dict) or 'progress' not in state or 'rng' not in state:
        raise CheckpointError(f"'{path}' is not a training state written by this code "
                              f"(expected keys 'progress' and 'rng')")
    set_rng_state(state['rng'])
    return state


def read_progress(state_path: str) -> dict | None:
    """The small JSON beside a training state, or None."""
    path = state_path[:-len('.pth')] + '.json'
    if not os.path.isfile(path):
        return None
    with open(path, 'r', encoding='utf-8') as f:
        return json.load(f)



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

