"""Probe group 'distributed'."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from helpers import torchrun_worker_pids

from .harness import (CLEAR, CORRECT, HANG, LOSS, SKIPPED, WRONG, case, expect_ok, finish, kill_group, run,
                      run_folders, same_tensors, start, state_of, torchrun, unloadable)
from .faults import _wait_for


def _dist_args(ctx, out, **extra):
    return ctx.gan_args(out, **extra)


def _dist_reference(ctx) -> Path:
    return ctx.reference('ddp', lambda out: torchrun(_dist_args(ctx, out)))


@case('distributed')
def distributed_stop_and_resume(c):
    """torchrun 2 processes: TRAIN.MAX_STEPS=3 stop then RESTORE=True equals the uninterrupted run"""
    ref = _dist_reference(c.ctx)
    out = c.dir / 'out'
    res = run(torchrun(_dist_args(c.ctx, out, **{'TRAIN.MAX_STEPS': 3})), timeout=400)
    if res.rc != 0 or res.traceback:
        return expect_ok(res)
    res = run(torchrun(_dist_args(c.ctx, out, RESTORE=True)), timeout=400)
    verdict, what = expect_ok(res)
    if verdict != CORRECT:
        return verdict, what
    (folder,) = run_folders(out)
    diff = same_tensors(state_of(ref), state_of(folder), ('netG', 'netD'))
    return (WRONG, f'stopped+resumed != uninterrupted: {diff}') if diff else (
        CORRECT, 'stopped at step 3, resumed: bit-identical netG/netD')


def _dist_fault(c, rank: int, sig) -> tuple:
    out = c.dir / 'out'
    timeout_s = 20
    proc = start(torchrun(_dist_args(c.ctx, out, **{'TRAIN.MAX_EPOCH': 100, 'DIST_TIMEOUT': timeout_s})))
    try:
        if not _wait_for(lambda: any((f / 'models' / 'state_last.pth').exists() for f in run_folders(out)),
                         proc, timeout=300, poll=0.2):
            return expect_ok(finish(proc))[0], 'no state after epoch 1'
        ranks = torchrun_worker_pids(proc.pid)
        if sorted(ranks) != [0, 1]:
            return SKIPPED, f'could not find both workers in /proc: {ranks}'
        time.sleep(0.5)
        os.kill(ranks[rank], sig)
        hit = time.time()
        res = finish(proc, timeout=timeout_s + 150)
    finally:
        for pid in torchrun_worker_pids(proc.pid).values() if proc.poll() is None else ():
            os.kill(pid, signal.SIGKILL)
        kill_group(proc, signal.SIGCONT)
        kill_group(proc)
    took = time.time() - hit
    name = signal.Signals(sig).name
    if res.hung:
        return HANG, f'{name} of rank {rank}: torchrun still running after {took:.0f} s'
    text = res.out + res.err
    bad = [b for f in run_folders(out) for b in unloadable(f)]
    if bad:
        return LOSS, f'after {name} of rank {rank}: {bad[:2]}'
    said = [ln for ln in text.splitlines() if 'main.py: error:' in ln and 'DIST_TIMEOUT' in ln]
    if res.rc == 0:
        return WRONG, f'{name} of rank {rank}: torchrun exited 0'
    if not said:
        return WRONG, f'{name} of rank {rank}: exit {res.rc} after {took:.0f} s without the message; {res.last[:200]}'
    return CLEAR, f'{name} of rank {rank}: exit {res.rc} after {took:.0f} s; {said[0].strip()[:300]}'


@case('distributed')
def distributed_kill9_rank1(c):
    """torchrun: kill -9 of rank 1; rank 0 stops with a message within DIST_TIMEOUT"""
    return _dist_fault(c, 1, signal.SIGKILL)


@case('distributed')
def distributed_kill9_rank0(c):
    """torchrun: kill -9 of rank 0; rank 1 stops with a message within DIST_TIMEOUT"""
    return _dist_fault(c, 0, signal.SIGKILL)


@case('distributed')
def distributed_sigstop_rank1(c):
    """torchrun: rank 1 hangs (SIGSTOP); rank 0 stops with a message within DIST_TIMEOUT"""
    return _dist_fault(c, 1, signal.SIGSTOP)


@case('distributed')
def distributed_sigterm_and_resume(c):
    """python -m miscc.launch (torchrun): SIGTERM to the launcher mid-run; exit 143, one line, resume equals the uninterrupted run"""
    ref = _dist_reference(c.ctx)
    out = c.dir / 'out'
    proc = start(torchrun(_dist_args(c.ctx, out), launcher='miscc.launch'))
    if not _wait_for(lambda: any((f / 'models' / 'state_last.pth').exists() for f in run_folders(out)),
                     proc, timeout=300, poll=0.05):
        res = finish(proc)
        return expect_ok(res)[0], f'ended before its first save: {res.what()}'
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    res = finish(proc, timeout=200)
    if res.hung or res.traceback:
        return expect_ok(res)
    if res.rc != 143:
        return WRONG, f'exit {res.rc}, not 143, after SIGTERM ({res.last[:200]})'
    text = res.out + res.err
    said = [ln.rsplit('\r', 1)[-1].strip() for ln in text.splitlines() if 'interrupted by SIGTERM' in ln]
    resumed = run(torchrun(_dist_args(c.ctx, out, RESTORE=True), launcher='miscc.launch'), timeout=400)
    verdict, what = expect_ok(resumed)
    if verdict != CORRECT:
        return verdict, f'exit {res.rc} after SIGTERM; resume: {what}'
    (folder,) = run_folders(out)
    diff = same_tensors(state_of(ref), state_of(folder), ('netG', 'netD'))
    if diff:
        return WRONG, f'exit {res.rc}; resumed != uninterrupted: {diff}'
    if not any(ln.startswith('main.py: interrupted by SIGTERM') for ln in said):
        return WRONG, f'exit {res.rc} without the workers\' "interrupted by SIGTERM" line; resume bit-identical'
    return CORRECT, f'exit 143, "{said[0][:160]}", then "{said[-1][:80]}"; resumed bit-identical'
