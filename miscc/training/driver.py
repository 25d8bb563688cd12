"""The epoch driver every trainer shares (GAN training and DAMSM pretraining): where a run
starts (run folder, epoch, step), deterministic data order, the epoch loop with TRAIN.MAX_STEPS
and stop signals, full training states with exact resume, and the logger's lifetime.

A trainer supplies only its step, its end-of-epoch work and its state (``Driver``'s protocol).
The parts it uses live beside it: ``sampling.py`` (the seeded data order), ``state.py``
(training states and start points), ``signals.py`` (stop signals and exit codes).

How a run ends (the exit codes ``miscc.cli`` turns these into): it finishes TRAIN.MAX_EPOCH,
or stops at TRAIN.MAX_STEPS or at the first step boundary past ``fit``'s deadline (requested
stops, which save the training state exactly alike; all return normally); SIGINT/SIGTERM finish
the step, save the training state and raise ``TrainingInterrupted`` (a second signal stops at
once, except while the state is being written, and the last saved state stays intact); a dead
or silent peer of a distributed run raises ``DistributedError`` within DIST_TIMEOUT seconds.
"""
from __future__ import annotations

import os
import signal
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..core.config import ConfigError
from ..core.files import check_output_dir, remove_stale_temp_files
from ..core.runtime import (DistEnv, DistributedError, gather_objects, is_collective_failure, make_run_dir,
                            rng_state, set_rng_state)
from ..data.errors import DataError
from .sampling import EpochBatchSampler, make_loader, worker_message
from .signals import StopFlag, StopNow, TrainingInterrupted
from .state import StartPoint, load_training_state, save_training_state

__all__ = ['NonFiniteLossError', 'check_finite', 'RunLogger', 'EpochSummary', 'Driver']

_DEADLINE_PASSED = 'the deadline passed'   # why a run stopped at fit's deadline, as the driver prints it


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


# ----------------------------------------------------------------------------- the loop
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

    The driver makes the seeded loader over ``dataset`` and loads a 'state' start (the trainer's
    part through ``load_state_dict``, the RNG of this rank right before the first step). ``fit``
    creates or reuses the run folder (``run_dir``, ``models_dir``; nothing is created before, so
    a run that fails its set-up leaves no folder) and the TensorBoard ``logger`` on the main
    process, and writes the training state after every epoch and when it stops early.
    """

    def __init__(self, cfg, trainer, dataset, collate_fn, batch_size: int, start: StartPoint, device,
                 dist_env: DistEnv | None = None):
        train = cfg.TRAIN
        if train.MAX_EPOCH < 1:
            raise ConfigError(f'TRAIN.MAX_EPOCH={train.MAX_EPOCH}: the number of epochs to train must be at least 1')
        if train.MAX_STEPS < 0:
            raise ConfigError(f'TRAIN.MAX_STEPS={train.MAX_STEPS}: must be 0 (no limit) or a number of steps')
        self.cfg, self.trainer, self.start, self.device = cfg, trainer, start, device
        self.dist = dist_env or DistEnv()
        try:
            self.sampler = EpochBatchSampler(len(dataset), batch_size, cfg.SEED, self.dist.rank, self.dist.world_size)
        except ValueError as e:   # too few images for one batch
            raise ConfigError(f'TRAIN.BATCH_SIZE={train.BATCH_SIZE}: {e}') from None
        self.loader = make_loader(dataset, self.sampler, collate_fn, cfg.WORKERS, pin_memory=device.type == 'cuda')
        self.rng = None
        self.saved = None          # (next_epoch, next_step) of the training state on disk
        self.deadline = self.on_save = None   # fit's arguments
        self.deadline_cut = False  # whether fit stopped at its deadline
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
            self.saved = (start.epoch, start.step)
            self.rng = self._rank_rng(state, start.path)
            run_dir = os.path.dirname(os.path.dirname(os.path.abspath(start.path)))
        elif start.kind == 'new':
            run_dir = os.path.abspath(start.path)
        self.global_step = start.global_step
        self.run_dir = run_dir
        self.models_dir = os.path.join(run_dir, 'models') if run_dir else None
        self.logger = RunLogger(None)
        if self.dist.is_main:   # a file in the way or a read-only folder: now, not at the first save
            # a run folder given to resume or continue comes from the trainer's key, a new one from OUTPUT_DIR
            folders, key = (([os.path.join(run_dir, sub) for sub in ('models', 'log', 'samples')],
                             self.trainer.net_key) if run_dir else ([cfg.OUTPUT_DIR], 'OUTPUT_DIR'))
            for folder in folders:
                check_output_dir(folder, key)

    def _rank_rng(self, state: dict, path: str):
        """This rank's RNG states in ``state``; a warning when the state was written by another
        number of processes (or records rank 0's generators only), since the run then goes on
        but cannot equal an uninterrupted one."""
        world, rank = self.dist.world_size, self.dist.rank
        ranks = state.get('rng_ranks')
        saved_world = state.get('world_size', 1)
        if ranks is None and world > 1:
            problem = (f"records the random generators of one process only (a single-process run, or "
                       f"one of an earlier version), and this run has {world} processes")
        elif saved_world != world:
            problem = f'was written by {saved_world} process(es), and this run has {world}'
        else:
            problem = None
        if problem and self.dist.is_main:
            warnings.warn(f"training state '{path}' {problem}: training continues, but the data is sharded "
                          f"and the random numbers are drawn differently, so it will not equal an "
                          f"uninterrupted run; resume with {saved_world} process(es) for an exact "
                          f"continuation", stacklevel=3)
        if ranks is None:
            # other ranks keep their own seeded streams rather than repeating rank 0's draws
            return state['rng'] if rank == 0 else None
        return ranks.get(rank)

    def _open_run(self) -> None:
        """Create the run folder (new runs) or clean a reused one; open the logger (main process)."""
        if not self.dist.is_main:
            return
        if self.run_dir is None:
            self.run_dir = make_run_dir(self.cfg.OUTPUT_DIR, self.cfg.DATASET_NAME, self.cfg.CONFIG_NAME)
            self.models_dir = os.path.join(self.run_dir, 'models')
        else:
            for sub in ('models', 'log', 'samples'):
                os.makedirs(os.path.join(self.run_dir, sub), exist_ok=True)
            # a process killed while writing (kill -9, power loss) leaves its temp file; this
            # run owns the folder now, so they go
            removed = [name for folder in (self.models_dir, os.path.join(self.run_dir, 'samples'))
                       for name in remove_stale_temp_files(folder)]
            if removed:
                print(f'removed {len(removed)} temporary file(s) of an unfinished earlier write: {", ".join(removed)}')
            if self.start.kind == 'new':
                print(f"'{self.run_dir}' holds no completed training state (its first run stopped before "
                      f"saving one): training it from epoch 1")
        self.logger = RunLogger(os.path.join(self.run_dir, 'log'))

    def save_state(self, epoch_done: int, next_epoch: int, next_step: int) -> None:
        """The training state after ``epoch_done`` epochs and ``next_step`` steps of the next,
        written by the main process with the RNG states of every process (a collective: all
        ranks call it). In a distributed run every rank learns whether the write succeeded."""
        rank_rngs = gather_objects(rng_state(), self.dist) if self.dist.distributed else None
        error = None
        if self.dist.is_main:
            progress = {'epoch': epoch_done, 'next_epoch': next_epoch, 'next_step': next_step,
                        'global_step': self.global_step, **self.trainer.progress_fields()}
            try:
                save_training_state(self.models_dir, dict(self.trainer.state_dict(), kind=self.trainer.kind),
                                    progress, rank_rngs=rank_rngs)
            except Exception as e:   # re-raised below, once the other ranks know
                error = e
        if self.dist.distributed:
            failed = torch.tensor([0.0 if error is None else 1.0], device=self.device)
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            if failed.item() and error is None:
                raise DistributedError('the main process (rank 0) could not write the training state; '
                                       'see its message. The last saved state is intact')
        if error is not None:
            raise error
        self.saved = (next_epoch, next_step)
        if self.dist.is_main and self.on_save is not None:   # after the ranks agreed that the write worked
            self.on_save(progress)

    def _stop(self, stop: StopFlag) -> tuple:
        """``(signal, why)`` agreed by all processes: ``why`` names a requested stop (TRAIN.MAX_STEPS
        reached, or the deadline passed), '' for none."""
        limit = self.cfg.TRAIN.MAX_STEPS
        late = self.deadline is not None and time.time() >= self.deadline
        signum, late = stop.agreed(self.dist.distributed, self.device, late)
        if limit and self.global_step >= limit:
            return signum, f'TRAIN.MAX_STEPS={limit}'
        return signum, _DEADLINE_PASSED if late else ''

    def _resume_hint(self) -> str:
        if self.run_dir is None:   # a rank other than 0 of a new run: rank 0 names the folder
            return 'resume with RESTORE=True'
        return f'resume with RESTORE=True {self.trainer.net_key}={self.run_dir}'

    def _saved_text(self) -> str:
        if self.saved is None:
            return 'no training state was saved yet (start it again)'
        epoch, step = self.saved
        where = f'epoch {epoch}, step {step}' if step else f'the start of epoch {epoch}'
        folder = f'in {self.models_dir} ' if self.models_dir else ''
        return f'the last training state {folder}(from {where}) is intact; {self._resume_hint()}'

    def fit(self, deadline: float | None = None, on_save=None) -> str | None:
        """Train from the start point to TRAIN.MAX_EPOCH (or a stop); returns the run folder.

        ``deadline``: a ``time.time()`` value; at the first step boundary past it the run stops
        as at TRAIN.MAX_STEPS (the training state saved, the same bits as a MAX_STEPS stop at
        that step) and ``deadline_cut`` is True. At least one step is trained: the deadline is
        checked after each step. ``on_save(progress)``: called on the main process after every
        training state written (e.g. to persist a clock with it).

        Raises ``TrainingInterrupted`` after SIGINT/SIGTERM (the state saved first) and
        ``DistributedError`` when another process of a distributed run died or went silent."""
        t, train, main = self.trainer, self.cfg.TRAIN, self.dist.is_main
        self.deadline, self.on_save, self.deadline_cut = deadline, on_save, False
        steps_per_epoch = len(self.sampler)
        self._open_run()
        if self.start.epoch > train.MAX_EPOCH:
            if main:
                print(f'{self.run_dir} is already finished: epoch {self.start.epoch - 1} of TRAIN.MAX_EPOCH='
                      f'{train.MAX_EPOCH}; nothing to train (raise TRAIN.MAX_EPOCH to train it further)')
            self.logger.close()
            return self.run_dir
        if main:
            print(f'run folder: {self.run_dir}\n{t.describe(steps_per_epoch)}')
        self.position = (self.start.epoch, self.start.step)
        try:
            with StopFlag() as stop:
                signum = self._loop(stop, steps_per_epoch)
        except StopNow as e:
            epoch, step = self.position
            raise TrainingInterrupted(f'interrupted again by {signal.Signals(e.signum).name} at epoch {epoch}, '
                                      f'step {step} of {steps_per_epoch}: stopped at once without saving; '
                                      f'{self._saved_text()}', e.signum, main) from None
        except Exception as e:
            if self.dist.distributed and is_collective_failure(e) and not isinstance(e, DistributedError):
                epoch, step = self.position
                raise DistributedError(
                    f'rank {self.dist.rank}: another process of this {self.dist.world_size}-process run stopped, '
                    f'failed or did not answer within DIST_TIMEOUT={self.cfg.DIST_TIMEOUT} s (at epoch {epoch}, '
                    f'step {step}), so this one stops too; {self._saved_text()}. Details: {str(e).splitlines()[0][:300]}'
                ) from None
            raise
        finally:
            self.logger.close()
        if signum:
            epoch, step = self.position
            name = signal.Signals(signum).name
            if step < steps_per_epoch:
                where = f'at epoch {epoch}, step {step} of {steps_per_epoch}'
            else:
                where = f'at the end of epoch {epoch} of {train.MAX_EPOCH}'
            raise TrainingInterrupted(f'interrupted by {name} {where}: training state saved in {self.models_dir}; '
                                      f'{self._resume_hint()}', signum, main)
        return self.run_dir

    def _loop(self, stop: StopFlag, steps_per_epoch: int) -> int:
        """The epochs; returns the stop signal that ended them early (0: none)."""
        t, train, main = self.trainer, self.cfg.TRAIN, self.dist.is_main
        if self.rng is not None:   # exact resume: the generators as they were at the save
            set_rng_state(self.rng)
        for epoch in range(self.start.epoch, train.MAX_EPOCH + 1):
            first = self.start.step if epoch == self.start.epoch else 0
            self.position = (epoch, first)
            t.begin_epoch(epoch, first)
            self.sampler.set_epoch(epoch, first)
            bar = tqdm(total=steps_per_epoch, initial=first, disable=not main, dynamic_ncols=True,
                       desc=f'{t.name}epoch {epoch}/{train.MAX_EPOCH}', leave=False)
            began = window_start = time.time()
            sums, window_images, step, losses = {}, 0, first, {}
            try:
                for batch in self.loader:
                    losses = t.train_step(batch)
                    step += 1
                    self.global_step += 1
                    self.position = (epoch, step)
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
                    if step < steps_per_epoch:
                        signum, why = self._stop(stop)
                        if signum or why:
                            self.deadline_cut = why == _DEADLINE_PASSED
                            bar.close()
                            with stop.deferring():
                                self.save_state(epoch - 1, epoch, step)
                            if main and not signum:
                                print(f'stopped at epoch {epoch}, step {step} ({why}); '
                                      f'training state saved in {self.models_dir}; {self._resume_hint()}')
                            return signum
            except DataError as e:   # from a DataLoader worker: its one line, not the worker's traceback
                raise DataError(worker_message(e)) from None
            finally:
                bar.close()   # also before an error, so that the error's line starts a line of its own
            done = step - first
            t.end_of_epoch(EpochSummary(epoch, losses, {k: v / max(done, 1) for k, v in sums.items()}, done, began))
            with stop.deferring():
                self.save_state(epoch, epoch + 1, 0)
            signum, why = self._stop(stop)
            if signum:
                return signum
            if why and epoch < train.MAX_EPOCH:
                self.deadline_cut = why == _DEADLINE_PASSED
                if main:
                    print(f'stopped after epoch {epoch} ({why}); training state saved '
                          f'in {self.models_dir}; {self._resume_hint()}')
                return 0
        return 0
