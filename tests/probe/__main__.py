"""``python tests/probe``: every group's cases registered (in GROUPS order), then the harness's command line."""
import importlib
import sys
from pathlib import Path

# started as a folder, sys.path[0] is this folder: put tests/ there instead, so that the groups are
# imported as the package ``probe`` (relative imports) and not as top-level modules
sys.path[0] = str(Path(__file__).resolve().parents[1])

from probe.harness import GROUPS, main  # noqa: E402

for group in GROUPS:
    importlib.import_module(f'probe.{group}')
sys.exit(main())
