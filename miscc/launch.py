"""``torchrun`` with this project's exit codes: ``python -m miscc.launch [torchrun arguments]``.

It takes torchrun's arguments unchanged (``python -m miscc.launch --nproc_per_node 4 main.py
--cfg cfg/bird.yml``) and runs torchrun's own launcher. The one difference: when the launcher
itself gets SIGINT/SIGTERM (Ctrl-C, a scheduler's pre-emption), torchrun forwards the signal to
the workers, which finish their step, save the training state and say so, and then raises its
``SignalException``: a traceback and exit 1. Here that is one line and exit 128 + the signal
(130 / 143), as a single-process run exits, so that a scheduler can tell an interrupted run
from a failed one.
"""
from __future__ import annotations

import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main as torchrun_main

from .training.signals import signal_exit_code

__all__ = ['main']


def main(argv=None) -> int:
    """Run torchrun with ``argv`` (default: the command line); returns the exit code."""
    try:
        torchrun_main(sys.argv[1:] if argv is None else list(argv))
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        print(f'miscc.launch: interrupted by {name}: the workers were asked to stop (their lines above say '
              f'what they saved); resume with the same command and RESTORE=True', file=sys.stderr)
        return signal_exit_code(e.sigval)
    return 0


if __name__ == '__main__':
    sys.exit(main())
