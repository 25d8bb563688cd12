"""Run-time plumbing: device choice, distributed set-up (with a timeout on collectives, so
that the loss of one process never leaves the others waiting for ever), seeding, RNG state,
run folders."""
from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import gc
import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
# Imported before any process group exists: its functions take ``group=group.WORLD`` as a default
# argument, evaluated at import, so imported after joining (torch._dynamo imports it, and DDP
# imports torch._dynamo) it would hold the group for ever and close_distributed could not end
# Gloo's threads.
import torch.distributed.nn.functional  # noqa: F401

from .config import CHOICES, ConfigError

__all__ = ['DeviceSetup', 'select_device', 'device_from_config', 'configure_cpu_allocator', 'DistEnv',
           'init_distributed', 'close_distributed', 'DistributedError', 'is_collective_failure', 'gather_objects',
           'DEFAULT_DIST_TIMEOUT', 'seed_everything',
           'rng_state', 'set_rng_state', 'make_run_dir', 'sample_seeds']


@dataclass
class DeviceSetup:
    """Where the models run: ``device`` for tensors, ``device_ids`` > 1 means DataParallel."""
    device: torch.device
    device_ids: list = field(default_factory=list)

    @property
    def data_parallel(self) -> bool:
        return len(self.device_ids) > 1


@dataclass
class DistEnv:
    """torchrun's environment: rank/world size; a world of one is a plain single process."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(device: str = 'auto', gpu_id: int = 0, cuda: bool = True,
                  local_rank: int | None = None) -> DeviceSetup:
    """Resolve the ``DEVICE``/``GPU_ID``/``CUDA`` config keys.

    ``'auto'``: GPU ``gpu_id`` if CUDA is available (and ``cuda`` and ``gpu_id >= 0``), else CPU;
    ``'cpu'``; ``'cuda'`` or ``'cuda:N'``: one GPU; ``'cuda:0,1'``: DataParallel over those GPUs.
    Under torchrun, ``local_rank`` picks each process's GPU.
    """
    text = device.strip().lower()
    want_cpu = text == 'cpu' or (text == 'auto' and (not cuda or gpu_id < 0 or not torch.cuda.is_available()))
    if want_cpu:
        return DeviceSetup(torch.device('cpu'))
    if text not in ('auto', 'cuda') and not text.startswith('cuda:'):
        raise ConfigError(f"DEVICE must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'cuda:N,M,...', got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"DEVICE={device!r} asks for a GPU, but CUDA is not available here; "
                          f"use DEVICE=cpu (or DEVICE=auto)")
    if local_rank is not None:
        ids = [local_rank]
    elif text in ('auto', 'cuda'):
        ids = [gpu_id]
    else:
        try:
            ids = [int(part) for part in text[len('cuda:'):].split(',')]
        except ValueError:
            raise ConfigError(f"DEVICE={device!r}: GPU ids must be integers, e.g. cuda:0,1") from None
    count = torch.cuda.device_count()
    bad = [i for i in ids if not 0 <= i < count]
    if bad:
        raise ConfigError(f'DEVICE={device!r}: GPU {bad[0]} does not exist ({count} visible); '
                          f'use one of cuda:0 .. cuda:{count - 1}')
    return DeviceSetup(torch.device('cuda', ids[0]), ids)


def device_from_config(cfg, local_rank: int | None = None) -> DeviceSetup:
    """``select_device`` for ``cfg.DEVICE``/``GPU_ID``/``CUDA``, after applying ``cfg.CPU_ALLOCATOR``."""
    configure_cpu_allocator(cfg.CPU_ALLOCATOR)
    return select_device(cfg.DEVICE, cfg.GPU_ID, cfg.CUDA, local_rank=local_rank)


CPU_ALLOCATOR_MODES = CHOICES['CPU_ALLOCATOR']
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc's mallopt parameters (malloc.h)


def configure_cpu_allocator(mode: str) -> bool:
    """Set how this process returns freed CPU memory (the ``CPU_ALLOCATOR`` key).

    ``'keep'``: freed memory stays in the heap and is reused. By default glibc serves every
    allocation above a threshold (at most 32 MB) with a fresh ``mmap`` and unmaps it when freed,
    and trims the heap's free top, so each training step page-faults most of its working set
    anew: some 300,000 faults (1.2 GB) and a tenth to a sixth of the CPU time of a 256-px NF-32
    step, 3 million faults at NF 64 (``benchmarks/train_step.py`` reports them). The price is
    that the resident size stays at its peak. ``'system'``: glibc's defaults.
    Returns True when a setting was applied (glibc only; elsewhere this is a no-op).
    """
    if mode not in CPU_ALLOCATOR_MODES:
        raise ConfigError(f"CPU_ALLOCATOR must be one of {', '.join(CPU_ALLOCATOR_MODES)}, got {mode!r}")
    if mode == 'system':
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
    except (OSError, AttributeError):   # not glibc (macOS, Windows, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # -1 as the trim threshold turns trimming off; no allocation is served by mmap
    return bool(mallopt(_M_TRIM_THRESHOLD, -1)) and bool(mallopt(_M_MMAP_MAX, 0))


DEFAULT_DIST_TIMEOUT = 600   # seconds; the DIST_TIMEOUT key


class DistributedError(RuntimeError):
    """Another process of a distributed run failed, was killed or did not answer within
    ``DIST_TIMEOUT`` seconds; this one stops instead of waiting."""


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from a collective or the process group (a peer that died,
    a timeout), as opposed to a bug or bad input in this process."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        word in text for word in ('Connection closed by peer', 'Connection reset by peer', 'Broken pipe',
                                  'Timed out waiting', 'timed out', 'ProcessGroupGloo', 'ProcessGroupNCCL',
                                  'gloo/transport'))


def init_distributed(backend: str | None = None, timeout_s: float = DEFAULT_DIST_TIMEOUT) -> DistEnv:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else a single process.

    ``timeout_s`` bounds how long a collective (and joining the group) waits for the other
    processes: when one of them dies, the others get an error instead of hanging."""
    if timeout_s <= 0:
        raise ConfigError(f'DIST_TIMEOUT must be a positive number of seconds, got {timeout_s}')
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return DistEnv()
    rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
    if not dist.is_initialized():
        if backend is None:
            backend = 'nccl' if torch.cuda.is_available() else 'gloo'
        if backend == 'nccl':
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank)


def close_distributed() -> None:
    """Leave the process group if this process joined one (a no-op otherwise).

    A torchrun worker that exits with Gloo's worker threads alive can abort in the interpreter's
    shutdown ('terminate called without an active exception', SIGABRT), and torchrun then fails
    the whole run: a worker that drops the tensors of the last collective must take the GIL, and
    a thread taking the GIL during shutdown is ended by pthread_exit, whose unwinding through
    C++ aborts. The threads end only with the group's last reference, and the DDP wrappers of a
    finished run hold references until the cyclic garbage collector frees them (trainer and
    training driver refer to each other), hence the collection right after leaving the group."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()


def gather_objects(obj, dist_env: DistEnv) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not dist_env.distributed:
        return [obj]
    out = [None] * dist_env.world_size
    dist.all_gather_object(out, obj)
    return out


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices), as the official scripts do."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """RNG states of python, numpy and torch (CPU and CUDA), as plain tensors/ints so the
    training state loads with ``weights_only=True``."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': {'version': version, 'internal': list(internal), 'gauss': gauss},
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured."""
    py = state['python']
    random.setstate((py['version'], tuple(py['internal']), py['gauss']))
    npy = state['numpy']
    np.random.set_state((npy['kind'], npy['keys'].numpy().astype(np.uint32), npy['pos'],
                         npy['has_gauss'], npy['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def sample_seeds(seed: int, epoch: int, count: int) -> torch.Tensor:
    """``count`` per-sample seeds for one epoch, a pure function of (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randint(0, 2 ** 62, (count,), generator=gen)


def make_run_dir(output_dir: str, dataset: str, config_name: str, now: datetime.datetime | None = None) -> str:
    """``output_dir/<dataset>_<config>_<timestamp>/`` with ``models/``, ``log/``, ``samples/``."""
    stamp = (now or datetime.datetime.now()).strftime('%Y_%m_%d_%H_%M_%S')
    run = os.path.join(output_dir, f'{dataset}_{config_name or "run"}_{stamp}')
    suffix, base = 1, run
    while os.path.exists(run):  # two runs started in the same second
        run, suffix = f'{base}_{suffix}', suffix + 1
    for sub in ('models', 'log', 'samples'):
        os.makedirs(os.path.join(run, sub))
    return run
