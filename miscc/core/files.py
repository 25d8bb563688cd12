"""Files on disk: every write that must never leave a half-written file goes through
``atomic_write``; SHA-256 of files; JSON and JSON-lines reading.

One temp-file convention for the whole project: ``.<name>.<random>.tmp`` beside the target,
renamed into place when complete (a reader sees the old file or the new one, never a
mixture) and removed when the write fails. A process killed during a write (kill -9, power
loss) leaves its temp file behind: ``remove_stale_temp_files`` clears those of a folder. A
full disk is a ``DiskFullError`` naming the file (the previous file stays intact).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from typing import Any, Iterator

from .config import ConfigError

__all__ = ['atomic_write', 'write_json', 'write_text', 'file_sha256', 'read_json', 'read_jsonl',
           'TEMP_SUFFIX', 'DiskFullError', 'is_temp_file', 'remove_stale_temp_files', 'check_output_dir']

TEMP_SUFFIX = '.tmp'
# mkstemp creates private (0600) files; finished files get the permissions open() would give
_UMASK = os.umask(0)
os.umask(_UMASK)
# ``.<name>.<random>.tmp`` as tempfile.mkstemp makes them (8 random characters from [a-z0-9_])
_TEMP_NAME = re.compile(r'\..+\.[a-z0-9_]{8}' + re.escape(TEMP_SUFFIX) + '$')
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(OSError):
    """A write failed for want of space (ENOSPC) or quota (EDQUOT); the message names the file."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def check_output_dir(path: str, key: str) -> None:
    """ConfigError naming ``key`` unless ``path`` is a folder this process can write into, or
    can be made one: checked before the work starts, so that a run does not fail at its first
    save (after a whole epoch) on a file in the way or a read-only folder."""
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):          # the nearest part of the path that exists
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"{key}='{path}': '{probe}' is a file, not a folder; choose another {key} "
                          f"or move that file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}='{path}': cannot write into '{probe}' (no permission, or a read-only "
                          f"file system); choose another {key} or make that folder writable")


def is_temp_file(name: str) -> bool:
    """Whether ``name`` (a file name, not a path) is one of ``atomic_write``'s temp files."""
    return bool(_TEMP_NAME.match(name))


def remove_stale_temp_files(directory: str) -> list:
    """Remove the temp files ``atomic_write`` left in ``directory`` (not below it) when its
    process was killed mid-write; returns their names. Call it only for a folder no other
    process is writing to (a run folder being resumed)."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if is_temp_file(name) and os.path.isfile(path) and not os.path.islink(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(name)
    return removed


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
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        full = _disk_full(e)
        if full is not None:
            kept = 'the previous file is intact' if os.path.exists(path) else 'no partial file was left'
            raise DiskFullError(full, f"disk full: could not write '{path}' ({os.strerror(full)}); "
                                      f"{kept}. Free some space and run again") from None
        raise


def _disk_full(error: BaseException) -> int | None:
    """The errno when ``error`` comes from a full disk, else None. The OSError may sit in the
    exception's context: torch.save, hit by ENOSPC, raises a RuntimeError of its own ('unexpected
    pos') while closing its archive."""
    seen = set()
    while error is not None and id(error) not in seen and not isinstance(error, DiskFullError):
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return error.errno
        error = error.__cause__ or error.__context__
    return None


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
