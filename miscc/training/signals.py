"""Stop signals: SIGINT/SIGTERM end the step and save the state (a second one stops at once, except
while the state is written), and the exit codes a signalled run ends with."""
from __future__ import annotations

import contextlib
import signal

import torch
import torch.distributed as dist

__all__ = ['StopFlag', 'StopNow', 'TrainingInterrupted', 'signal_exit_code']


def signal_exit_code(signum: int) -> int:
    """The shell's convention for a process ended by signal ``signum``: 128 + signum
    (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM ended a run before TRAIN.MAX_EPOCH. ``message``: one line saying where
    it stopped, what was saved and how to resume; ``exit_code``: 128 + the signal number.
    ``show``: whether this process should print it (the main process of a distributed run)."""

    def __init__(self, message: str, signum: int, show: bool = True):
        super().__init__(message)
        self.signum, self.show = int(signum), show
        self.exit_code = signal_exit_code(signum)


class StopNow(BaseException):
    """A second stop signal outside a save: leave at once (BaseException, like KeyboardInterrupt,
    so that no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopFlag:
    """Set by SIGINT/SIGTERM (cluster pre-emption, Ctrl-C): the loop finishes its step, saves
    the training state and stops. A second signal stops at once (``StopNow``), except inside
    ``deferring()`` (the state being written), which always completes."""

    def __init__(self):
        self.signum = 0            # the first signal received, 0 for none
        self._previous = {}
        self._deferring = False

    @property
    def requested(self) -> bool:
        return bool(self.signum)

    def _handler(self, signum, frame):
        if not self.signum:
            self.signum = signum
        elif not self._deferring:
            raise StopNow(signum)

    @contextlib.contextmanager
    def deferring(self):
        """A block a second signal does not cut short (the loop stops right after it anyway)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

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

    def agreed(self, distributed: bool, device, late: bool = False) -> tuple:
        """``(signal, late)``: the signal any process received (0 for none) and whether any
        process's clock is past the deadline (``late`` is this one's). All ranks must stop at
        the same step, and their clocks pass a deadline at different steps, so both flags are
        reduced together (one all_reduce)."""
        if not distributed:
            return self.signum, late
        flags = torch.tensor([float(self.signum), float(late)], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return int(flags[0].item()), bool(flags[1].item())
