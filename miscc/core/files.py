"""Files on disk: every write that must never leave a half-written file goes through
``atomic_write``; SHA-256 of files; JSON and JSON-lines reading.

One temp-file convention for the whole project: ``.<name>.<random>.tmp`` beside the target,
renamed into place when complete (a reader sees the old file or the new one, never a
mixture) and removed when the write fails.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Any, Iterator

__all__ = ['atomic_write', 'write_json', 'write_text', 'file_sha256', 'read_json', 'read_jsonl',
           'TEMP_SUFFIX']

TEMP_SUFFIX = '.tmp'
# mkstemp creates private (0600) files; finished files get the permissions open() would give
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'wb', fsync: bool = False) -> Iterator:
    """Open a temporary file beside ``path`` for writing (``mode`` 'wb' or 'w'); when the
    block ends without an error it is renamed onto ``path``, otherwise removed.

    ``fsync`` flushes it to the disk before the rename (checkpoints: a power loss right
    after the rename must not leave an empty file)::

        with atomic_write('out/report.json', 'w') as f:
            json.dump(report, f)
    """
    if mode not in ('wb', 'w'):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix=TEMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str, obj: Any, indent: int = 1) -> None:
    """``obj`` as JSON at ``path``, atomically."""
    with atomic_write(path, 'w') as f:
        json.dump(obj, f, indent=indent)


def write_text(path: str, text: str) -> None:
    """``text`` (UTF-8) at ``path``, atomically."""
    with atomic_write(path, 'w') as f:
        f.write(text)


def read_json(path: str) -> Any:
    """The JSON value in ``path``."""
    with open(path, 'r', encoding='utf-8') as f:
        return json.load(f)


def read_jsonl(path: str) -> list:
    """The objects of a JSON-lines file, one per non-empty line ([] when there is no file).
    Reading stops at a line that does not parse: the tail an interrupted append leaves."""
    if not os.path.isfile(path):
        return []
    entries = []
    with open(path, 'r', encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return entries


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()
