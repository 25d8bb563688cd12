"""miscc/core/files.py: atomic writes, JSON lines, SHA-256."""
import errno
import hashlib
import json
import os
import re
import stat

import pytest
import torch

from miscc.core.files import (TEMP_SUFFIX, atomic_write, file_sha256, read_json, read_jsonl, write_json,
                              write_text)


def test_atomic_write_replaces_the_file_only_when_complete(tmp_path):
    path = tmp_path / 'sub' / 'out.bin'
    with atomic_write(str(path)) as f:
        f.write(b'first')
        # while writing, the target does not exist yet; the temporary file sits beside it
        (tmp,) = os.listdir(path.parent)
        assert tmp.startswith('.out.bin.') and tmp.endswith(TEMP_SUFFIX)
        assert not path.exists()
    assert path.read_bytes() == b'first' and os.listdir(path.parent) == ['out.bin']
    with pytest.raises(RuntimeError, match='boom'):
        with atomic_write(str(path)) as f:
            f.write(b'half of the second')
            raise RuntimeError('boom')
    assert path.read_bytes() == b'first'                     # the old file is untouched
    assert os.listdir(path.parent) == ['out.bin']            # and no temporary file is left


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    path = tmp_path / 'x.json'
    write_json(str(path), {'a': 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask   # not mkstemp's private 0600


def test_text_and_json_helpers(tmp_path):
    write_json(str(tmp_path / 'a.json'), {'k': [1, 2]})
    assert read_json(str(tmp_path / 'a.json')) == {'k': [1, 2]}
    write_text(str(tmp_path / 't.txt'), 'ünïcode\n')
    assert (tmp_path / 't.txt').read_text(encoding='utf-8') == 'ünïcode\n'
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w'"):
        with atomic_write(str(tmp_path / 'x'), 'a'):
            pass


def test_read_jsonl_stops_at_a_cut_line(tmp_path):
    path = tmp_path / 'm.jsonl'
    assert read_jsonl(str(path)) == []
    path.write_text(json.dumps({'n': 0}) + '\n\n' + json.dumps({'n': 1}) + '\n{"n": 2, "fi')
    assert read_jsonl(str(path)) == [{'n': 0}, {'n': 1}]


def test_file_sha256_matches_hashlib(tmp_path):
    data = os.urandom(3 << 20) + b'tail'       # more than one 1 MB block
    (tmp_path / 'f').write_bytes(data)
    assert file_sha256(str(tmp_path / 'f')) == hashlib.sha256(data).hexdigest()


def test_a_full_disk_is_an_error_naming_the_file_and_the_old_file_stays(tmp_path, monkeypatch):
    import errno
    from miscc.core.files import DiskFullError
    path = tmp_path / 'state.json'
    write_json(str(path), {'epoch': 1})
    with pytest.raises(DiskFullError, match=f"^disk full: could not write '{path}' .*the previous file is intact"):
        with atomic_write(str(path), 'w') as f:
            f.write('{"epoch": ')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert read_json(str(path)) == {'epoch': 1} and os.listdir(tmp_path) == ['state.json']


class _FillingDisk:
    """A file object whose disk fills after ``room`` bytes (``write`` raises ENOSPC, as a real one)."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def test_a_full_disk_during_torch_save_is_a_disk_full_error(tmp_path):
    """torch.save turns the ENOSPC of a full disk into a RuntimeError ('unexpected pos') raised
    while it handles it; the write is still a DiskFullError naming the file."""
    from miscc.core.files import DiskFullError
    path = tmp_path / 'state_last.pth'
    torch.save({'w': torch.zeros(3)}, path)
    before = path.read_bytes()
    with pytest.raises(DiskFullError, match=f"^disk full: could not write '{path}' .*the previous file is intact"):
        with atomic_write(str(path), 'wb') as f:
            torch.save({'w': torch.zeros(100_000)}, _FillingDisk(f, 50_000))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ['state_last.pth']


def test_stale_temp_files_are_recognised_and_only_they_are_removed(tmp_path):
    from miscc.core.files import is_temp_file, remove_stale_temp_files
    with atomic_write(str(tmp_path / 'netG_001.pth')):
        (real_temp,) = os.listdir(tmp_path)
    assert is_temp_file(real_temp)
    names = ['.state_last.pth.q1w2e3r4.tmp', 'state_last.pth', '.state_last.pth.tmp', 'a.tmp', '.x.TOOLONG12.tmp']
    for name in names:
        (tmp_path / name).write_bytes(b'')
    (tmp_path / '.dir.abcdefgh.tmp').mkdir()
    assert remove_stale_temp_files(str(tmp_path)) == ['.state_last.pth.q1w2e3r4.tmp']
    assert sorted(os.listdir(tmp_path)) == sorted(names[1:] + ['.dir.abcdefgh.tmp', 'netG_001.pth'])


def test_output_dir_in_the_way_or_read_only_is_named_before_any_work(tmp_path, monkeypatch):
    from miscc.core.config import ConfigError
    from miscc.core.files import check_output_dir
    check_output_dir(str(tmp_path / 'new' / 'deeper'), 'OUTPUT_DIR')            # can be made: fine
    assert not (tmp_path / 'new').exists()                                      # and nothing is made
    (tmp_path / 'afile').write_text('x')
    for path in (tmp_path / 'afile', tmp_path / 'afile' / 'sub'):
        with pytest.raises(ConfigError, match=re.escape(f"OUTPUT_DIR='{path}': '{tmp_path / 'afile'}' is a file, "
                                                        f"not a folder; choose another OUTPUT_DIR")):
            check_output_dir(str(path), 'OUTPUT_DIR')
    # root may write anywhere, so a read-only folder is what os.access reports
    ro = tmp_path / 'ro'
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode: False if os.path.abspath(p) == str(ro) else real_access(p, mode))
    with pytest.raises(ConfigError, match=re.escape(f"SAMPLE.OUT_DIR='{ro / 'valid'}': cannot write into '{ro}'")):
        check_output_dir(str(ro / 'valid'), 'SAMPLE.OUT_DIR')


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_a_really_read_only_folder_is_refused(tmp_path):
    from miscc.core.config import ConfigError
    from miscc.core.files import check_output_dir
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match='cannot write into'):
            check_output_dir(str(ro), 'OUTPUT_DIR')
    finally:
        ro.chmod(0o755)
