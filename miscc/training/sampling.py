"""The seeded data order every trainer shares: which samples each step of each epoch sees, on
every rank, the same for a resumed run as for an uninterrupted one."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..core.runtime import sample_seeds

__all__ = ['SeededSamples', 'EpochBatchSampler', 'make_loader', 'worker_message']


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


def worker_message(error: Exception) -> str:
    """The message of an error raised in a DataLoader worker: PyTorch raises it again in the
    main process with the worker's traceback as its text, whose last line is the original."""
    text = str(error).rstrip()
    if 'Original Traceback' not in text:
        return text
    last = text.splitlines()[-1]
    prefix = f'{type(error).__module__}.{type(error).__qualname__}: '
    return last[len(prefix):] if last.startswith(prefix) else last


def make_loader(dataset: Dataset, sampler: EpochBatchSampler, collate_fn, workers: int,
                pin_memory: bool = False) -> DataLoader:
    """DataLoader over ``SeededSamples(dataset)``; its own generator keeps the global RNG untouched."""
    return DataLoader(SeededSamples(dataset), batch_sampler=sampler, collate_fn=collate_fn,
                      num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(sampler.seed))
