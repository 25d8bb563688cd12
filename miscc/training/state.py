"""Training states and start points: ``state_last.pth`` written and read, and where a run starts
(a fresh run, a run folder or state to continue exactly, a model file's weights)."""
from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass

from ..core.checkpoint import CheckpointError, load_file, save_atomic
from ..core.files import read_json, write_json
from ..core.runtime import rng_state, set_rng_state

__all__ = ['STATE_NAME', 'save_training_state', 'load_training_state', 'read_progress', 'find_latest_state',
           'restore_state_path', 'unstarted_run_folder', 'find_unstarted_run', 'state_in_folder', 'resolve_start',
           'StartPoint', 'resolve_start_point']


STATE_NAME = 'state_last.pth'


def save_training_state(models_dir: str, state: dict, progress: dict, rank_rngs: list | None = None) -> str:
    """Write ``state_last.pth`` (models, optimisers, RNG, sampler position, config) atomically,
    then ``state_last.json`` with ``progress`` (epoch, next_epoch, next_step, global_step).

    ``rank_rngs``: the RNG states of every process of a distributed run, in rank order
    (``rng_state()`` of each), stored as ``rng_ranks`` {rank: state} with ``world_size``;
    ``rng`` is always this process's (rank 0's)."""
    state = dict(state, progress=progress, rng=rng_state(), saved_at=time.time())
    if rank_rngs is not None:
        state.update(rng_ranks=dict(enumerate(rank_rngs)), world_size=len(rank_rngs))
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


def unstarted_run_folder(folder: str) -> bool:
    """Whether ``folder`` is a run folder (``models/`` and ``log/``) whose first training state
    was never completed: ``models/`` holds no ``state_last.pth``. A run killed before it saved
    one may have left temp files of that save and the first epoch's model files (written just
    before the state); training the folder again from epoch 1 writes those same files again."""
    models = os.path.join(folder, 'models')
    return (os.path.isdir(models) and os.path.isdir(os.path.join(folder, 'log'))
            and not os.path.exists(os.path.join(models, STATE_NAME)))


def find_unstarted_run(output_dir: str, prefix: str) -> str | None:
    """Newest ``<output_dir>/<prefix>*`` run folder that ``unstarted_run_folder`` accepts, or None."""
    found = [f for f in glob.glob(os.path.join(output_dir, glob.escape(prefix) + '*')) if unstarted_run_folder(f)]
    return max(found, key=os.path.getmtime) if found else None


def state_in_folder(folder: str, key: str) -> str:
    """The training state of a run folder (``<folder>/models/`` or the folder itself);
    FileNotFoundError naming the config ``key`` that pointed there otherwise."""
    for candidate in (os.path.join(folder, 'models', STATE_NAME), os.path.join(folder, STATE_NAME)):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{key}='{folder}' is a folder without a training state ({STATE_NAME})")


def resolve_start(target: str, restore: bool, cfg, key: str):
    """Where a run starts: ``(kind, path)`` with kind 'none' (from scratch), 'state' (a
    training state to resume exactly), 'file' (a model file the caller interprets) or 'new'
    (from scratch in the run folder ``path``, which a run killed before its first save left).

    ``target`` is the value of config ``key`` (a run folder, a state file or a model file);
    without it, ``restore`` takes the newest state of ``cfg``'s data set and config name (or,
    when there is none, the newest run folder of theirs that was killed before its first save)."""
    if not target:
        if not restore:
            return 'none', ''
        try:
            return 'state', restore_state_path(cfg.OUTPUT_DIR, cfg.DATASET_NAME, cfg.CONFIG_NAME, key)
        except FileNotFoundError:
            unstarted = find_unstarted_run(cfg.OUTPUT_DIR, f'{cfg.DATASET_NAME}_{cfg.CONFIG_NAME or "run"}_')
            if unstarted is None:
                raise
            return 'new', unstarted
    if os.path.isdir(target):
        if unstarted_run_folder(target) and not os.path.isfile(os.path.join(target, STATE_NAME)):
            return 'new', target
        return 'state', state_in_folder(target, key)
    if not os.path.isfile(target):
        raise FileNotFoundError(f"{key}='{target}' not found")
    if os.path.basename(target).startswith('state'):
        return 'state', target
    return 'file', target


@dataclass
class StartPoint:
    """Where a run starts: ``kind`` 'none' (from scratch), 'state' (a training state at ``path``,
    continued exactly), 'weights' (model files at ``path``, fresh optimisers: the trainer
    loads them and sets ``epoch``) or 'new' (from scratch in the existing run folder ``path``).
    ``step`` batches of ``epoch`` are already done."""
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
