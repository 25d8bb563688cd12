"""Probe group 'outputs'."""
from __future__ import annotations

from .harness import CLEAR, Mount, SKIPPED, WRONG, case, expect_error, expect_ok, run, script, sha, temp_files
from .checkpoints import _generate


@case('outputs')
def outputs_generate_twice(c):
    """the same generation twice into one folder"""
    first = _generate(c, c.ctx.netg)
    if first.rc != 0:
        return expect_ok(first)
    files = sorted(p.name for p in (c.dir / 'gen').iterdir())
    digests = {n: sha(c.dir / 'gen' / n) for n in files if n.endswith('.png')}
    res = _generate(c, c.ctx.netg)

    def check():
        now = sorted(p.name for p in (c.dir / 'gen').iterdir())
        if now != files:
            return f'files changed: {sorted(set(now) ^ set(files))}'
        lines = (c.dir / 'gen' / 'manifest.jsonl').read_text().splitlines()
        if len(lines) != 4:
            return f'manifest.jsonl has {len(lines)} lines for 4 images'
        if any(sha(c.dir / 'gen' / n) != d for n, d in digests.items()):
            return 'images rewritten with other content'
        return None
    return expect_ok(res, check)


@case('outputs')
def outputs_other_generator_into_folder(c):
    """a second generator (netG_001) into the folder of netG_002's images"""
    first = _generate(c, c.ctx.netg)
    if first.rc != 0:
        return expect_ok(first)
    c.keep(*(c.dir / 'gen').glob('*.png'))
    return expect_error(_generate(c, c.ctx.run / 'models' / 'netG_001.pth', **{'SAMPLE.NUM': 6}), c.dir / 'gen')


@case('outputs')
def outputs_read_only_folder_generate(c):
    """generation into a read-only folder (a read-only tmpfs; chmod does not stop root)"""
    with Mount(c.dir / 'ro', 1 << 20, ro=True) as ro:
        if not ro.ok:
            return SKIPPED, f'cannot mount a read-only tmpfs here (and chmod does not stop root): {ro.why}'
        return expect_error(_generate(c, c.ctx.netg, **{'SAMPLE.OUT_DIR': ro.path / 'gen'}), ro.path)


@case('outputs')
def outputs_read_only_output_dir_train(c):
    """training with OUTPUT_DIR on a read-only tmpfs"""
    with Mount(c.dir / 'ro', 1 << 20, ro=True) as ro:
        if not ro.ok:
            return SKIPPED, f'cannot mount a read-only tmpfs here (and chmod does not stop root): {ro.why}'
        res = run(script('main.py', c.ctx.gan_args(ro.path / 'out', **{'TRAIN.MAX_EPOCH': 1})))
        return expect_error(res, ro.path)


@case('outputs')
def outputs_file_in_the_way_generate(c):
    """SAMPLE.OUT_DIR is an existing file"""
    path = c.dir / 'gen'
    path.write_text('not a folder\n')
    c.keep(path)
    return expect_error(_generate(c, c.ctx.netg, **{'SAMPLE.OUT_DIR': path}), path)


@case('outputs')
def outputs_file_in_the_way_train(c):
    """OUTPUT_DIR is an existing file"""
    path = c.dir / 'out_file'
    path.write_text('not a folder\n')
    c.keep(path)
    res = run(script('main.py', c.ctx.gan_args(path, **{'TRAIN.MAX_EPOCH': 1})))
    return expect_error(res, path)


@case('outputs')
def outputs_full_disk_generate(c):
    """generation into a 300 KB tmpfs that fills"""
    with Mount(c.dir / 'disk', 300 << 10) as disk:
        if not disk.ok:
            return SKIPPED, f'cannot mount a small tmpfs here: {disk.why}'
        res = _generate(c, c.ctx.netg, **{'SAMPLE.NUM': 200, 'SAMPLE.OUT_DIR': disk.path / 'gen'})
        verdict, what = expect_error(res, 'disk full', disk.path)
        left = temp_files(disk.path)
        return (WRONG, f'temp files left: {left}; {what}') if verdict == CLEAR and left else (verdict, what)
