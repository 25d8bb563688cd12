"""Probe group 'faults'."""
from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from .harness import (CLEAR, CORRECT, LOSS, Mount, SKIPPED, WRONG, case, expect_error, expect_ok, finish, kill_group,
                      run, run_folders, same_tensors, script, start, state_of, temp_files, unloadable)


FAULT_EPOCHS = 3


def _fault_args(c_or_ctx, out, **extra):
    ctx = getattr(c_or_ctx, 'ctx', c_or_ctx)
    return ctx.gan_args(out, **dict({'TRAIN.MAX_EPOCH': FAULT_EPOCHS}, **extra))


def _gan_reference(ctx) -> Path:
    return ctx.reference('gan', lambda out: script('main.py', _fault_args(ctx, out)))


def _damsm_reference(ctx) -> Path:
    return ctx.reference('damsm', lambda out: script('pretrain_DAMSM.py', ctx.damsm_args(out)))


def _wait_for(pred, proc, timeout=120, poll=0.002) -> bool:
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if pred():
            return True
        time.sleep(poll)
    return False


def _kill_cycles(c, make_cmd, reference, parts, kills=4, seed=0) -> tuple:
    """Start, kill -9 (at a random moment or while a checkpoint is being written), check every
    file on disk, resume; finally run to the end and compare with the uninterrupted run."""
    rng = random.Random(seed)
    out = c.dir / 'out'
    notes = []
    for k in range(kills):
        folders = run_folders(out)
        proc = start(make_cmd(out, resume=bool(folders)))
        mode = 'during a checkpoint write' if k % 2 else 'at a random moment'
        if k % 2:
            def writing():
                return any(p.name.endswith('.tmp') for f in run_folders(out) for p in (f / 'models').glob('.*'))
            hit = _wait_for(writing, proc)
            time.sleep(rng.uniform(0, 0.02))
        else:
            hit = _wait_for(lambda: bool(run_folders(out)), proc)
            time.sleep(rng.uniform(0.3, 3.0))
        if proc.poll() is not None:
            res = finish(proc)
            if res.rc != 0:
                return expect_ok(res)[0], f'kill {k + 1}: the run ended before the kill: {res.what()}'
            notes.append(f'kill {k + 1}: run finished first')
            break
        kill_group(proc)
        finish(proc)
        left = [t for f in run_folders(out) for t in temp_files(f)]
        notes.append(f'kill {k + 1} {mode}' + ('' if hit else ' (no write seen)')
                     + (f' left {len(left)} temp file(s)' if left else ''))
        for folder in run_folders(out):
            bad = unloadable(folder)
            if bad:
                return LOSS, f'after kill {k + 1} ({mode}): {bad[:2]}'
    res = run(make_cmd(out, resume=bool(run_folders(out))), timeout=600)
    verdict, what = expect_ok(res)
    if verdict != CORRECT:
        return verdict, f'{"; ".join(notes)}; final resume: {what}'
    (folder,) = run_folders(out)
    bad = unloadable(folder)
    if bad:
        return LOSS, f'after the final run: {bad[:2]}'
    left = temp_files(folder)
    if left:
        return WRONG, f'temp files left after the resumed run finished: {left}'
    diff = same_tensors(state_of(reference), state_of(folder), parts)
    if diff:
        return WRONG, f'{"; ".join(notes)}; resumed run != uninterrupted run: {diff}'
    return CORRECT, f'{"; ".join(notes)}; every file loads, no temp files, final weights bit-identical'


@case('faults')
def faults_kill9_training(c):
    """kill -9 of main.py four times (random moments, checkpoint writes), resume, compare"""
    ref = _gan_reference(c.ctx)

    def cmd(out, resume):
        return script('main.py', _fault_args(c, out, **({'RESTORE': True} if resume else {})))
    return _kill_cycles(c, cmd, ref, ('netG', 'netD'), seed=1)


@case('faults')
def faults_kill9_damsm(c):
    """kill -9 of pretrain_DAMSM.py four times (random moments, checkpoint writes), resume, compare"""
    ref = _damsm_reference(c.ctx)

    def cmd(out, resume):
        return script('pretrain_DAMSM.py', c.ctx.damsm_args(out, **({'RESTORE': True} if resume else {})))
    return _kill_cycles(c, cmd, ref, ('text_encoder', 'image_encoder'), seed=2)


def _signal_case(c, make_cmd, reference, parts, sig, code, twice=False) -> tuple:
    """A signal mid-epoch (after the first save): exit ``code`` with one line saying it was
    interrupted, every file loads, and the resumed run equals the uninterrupted one."""
    out = c.dir / 'out'
    proc = start(make_cmd(out, False))
    if not _wait_for(lambda: any((f / 'models' / 'state_last.pth').exists() for f in run_folders(out)),
                     proc, poll=0.05):
        return expect_ok(finish(proc))[0], 'the run ended before its first save'
    time.sleep(0.3)
    os.kill(proc.pid, sig)
    if twice:
        # the second signal lands while the state is being saved, or right after
        _wait_for(lambda: bool(temp_files(out)), proc, timeout=5)
        os.kill(proc.pid, sig) if proc.poll() is None else None
    res = finish(proc)
    name = signal.Signals(sig).name
    if res.hung or res.traceback:
        return expect_ok(res)
    if res.rc == 0:
        return WRONG, f'the run finished before the {name} took effect: {res.what()}'
    if res.rc != code or f'interrupted by {name}' not in res.message() and 'interrupted again' not in res.message():
        return WRONG, f'expected exit {code} and "interrupted by {name}": {res.what()}'
    (folder,) = run_folders(out)
    bad = unloadable(folder)
    if bad:
        return LOSS, f'after {name}: {bad[:2]}'
    resumed = run(make_cmd(out, True), timeout=600)
    verdict, what = expect_ok(resumed)
    if verdict != CORRECT:
        return verdict, f'resume after {name}: {what}'
    diff = same_tensors(state_of(reference), state_of(folder), parts)
    if diff:
        return WRONG, f'resumed after {name} != uninterrupted: {diff}'
    return CORRECT, f'{res.what()}; resumed to the end, bit-identical to the uninterrupted run'


def _gan_cmd(c):
    def cmd(out, resume):
        return script('main.py', _fault_args(c, out, **({'RESTORE': True} if resume else {})))
    return cmd


def _damsm_cmd(c):
    def cmd(out, resume):
        return script('pretrain_DAMSM.py', c.ctx.damsm_args(out, **({'RESTORE': True} if resume else {})))
    return cmd


@case('faults')
def faults_sigint_training(c):
    """SIGINT mid-epoch of main.py: exit 130, says so, resumes bit-identically"""
    return _signal_case(c, _gan_cmd(c), _gan_reference(c.ctx), ('netG', 'netD'), signal.SIGINT, 130)


@case('faults')
def faults_sigterm_training(c):
    """SIGTERM mid-epoch of main.py: exit 143, says so, resumes bit-identically"""
    return _signal_case(c, _gan_cmd(c), _gan_reference(c.ctx), ('netG', 'netD'), signal.SIGTERM, 143)


@case('faults')
def faults_double_sigterm_training(c):
    """two SIGTERMs of main.py (the second during the save): exit 143, state intact, resumes"""
    return _signal_case(c, _gan_cmd(c), _gan_reference(c.ctx), ('netG', 'netD'), signal.SIGTERM, 143, twice=True)


@case('faults')
def faults_sigterm_damsm(c):
    """SIGTERM mid-epoch of pretrain_DAMSM.py: exit 143, says so, resumes bit-identically"""
    return _signal_case(c, _damsm_cmd(c), _damsm_reference(c.ctx), ('text_encoder', 'image_encoder'),
                        signal.SIGTERM, 143)


@case('faults')
def faults_sigint_damsm(c):
    """SIGINT mid-epoch of pretrain_DAMSM.py: exit 130, says so, resumes bit-identically"""
    return _signal_case(c, _damsm_cmd(c), _damsm_reference(c.ctx), ('text_encoder', 'image_encoder'),
                        signal.SIGINT, 130)


def _full_disk(c, cmd, size, what_fails) -> tuple:
    """Train into a tmpfs of ``size`` bytes that fills during a later save: exit 3 with an
    error naming the file, the files saved before still load, no temp file left."""
    with Mount(c.dir / 'disk', size) as disk:
        if not disk.ok:
            return SKIPPED, f'cannot mount a small tmpfs here: {disk.why}'
        res = run(cmd(disk.path / 'out'))
        folders = run_folders(disk.path / 'out')
        bad = [b for f in folders for b in unloadable(f)]
        left = [t for f in folders for t in temp_files(f)]
        saved = [f for f in folders if (f / 'models' / 'state_last.pth').exists()]
        verdict, what = expect_error(res, *what_fails)
        if bad:
            return LOSS, f'files on the full disk do not load: {bad[:2]}; {what}'
        if verdict == CLEAR and res.rc != 3:
            return WRONG, f'expected exit 3 (docs/training.md: the run could not go on): {what}'
        if verdict == CLEAR and left:
            return WRONG, f'temp files left: {left}; {what}'
        if verdict == CLEAR and not saved:
            return WRONG, f'no earlier training state survived: {what}'
        return verdict, what


@case('faults')
def faults_full_disk_training(c):
    """main.py on a 40 MB tmpfs: the disk fills while saving epoch 2"""
    return _full_disk(c, lambda out: script('main.py', _fault_args(c, out)), 40 << 20, ('disk full', '.pth'))


@case('faults')
def faults_full_disk_damsm(c):
    """pretrain_DAMSM.py on a 200 MB tmpfs: the disk fills while saving epoch 2"""
    return _full_disk(c, lambda out: script('pretrain_DAMSM.py', c.ctx.damsm_args(out)), 200 << 20,
                      ('disk full', '.pth'))
