"""The reliability probe: hostile inputs and faults through the real entry points, on tiny data.

Every case runs ``main.py``, ``main_finetune.py``, ``pretrain_DAMSM.py``, ``eval_IS.py`` or
``eval_FID.py`` (or ``torchrun`` of ``main.py``) as a subprocess with a timeout, on 8 train / 4
test synthetic birds and random DAMSM encoders (``tests/helpers.py``), and prints one JSON line:

    {"case": ..., "group": ..., "what": "exit 2; main.py: error: ...", "verdict": ..., "seconds": ...}

Verdicts: ``clear error`` (non-zero exit, no traceback, the error names the offending file or key),
``correct`` (the input was handled and the result checked), ``traceback``, ``hang`` (the timeout
ran out), ``wrong result`` (accepted what it should refuse, an error that names nothing, or a
result that is not the expected one), ``data loss`` (a file that existed before the case no longer
loads with ``torch.load(weights_only=True)`` or changed), ``code executed`` (a crafted file ran its
code: its marker file appeared), and ``skipped`` (the machine cannot stage the case; ``what`` says
why). The last line is the summary: ``{"summary": {verdict: count}, "total": N, "seconds": S}``.

    python tests/probe                             # every group
    python tests/probe --only security,faults --out /tmp/probe --jobs 2
    python tests/probe --list

Groups: security, faults, distributed, data, config, checkpoints, outputs, evaluation. Run it with
``OMP_NUM_THREADS=1``; the children get one thread each. Needs root only for the cases that mount
a small or read-only tmpfs (a full disk, a read-only folder); without it they are skipped.

Layout: ``harness.py`` (running commands, verdicts, crafted files, the shared set-up, the case
registry and the command line), one module per group (``security.py`` ... ``evaluation.py``,
each registering its cases with ``@case(group)``), ``__main__.py`` (``python tests/probe``: imports every group, runs).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the project and the tests' helpers (tests/helpers.py), however the probe is started
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / 'tests')) if p not in sys.path]
