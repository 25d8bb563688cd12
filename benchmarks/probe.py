"""Reliability probe: hostile inputs and faults through the real entry points, on tiny data.

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

    python benchmarks/probe.py                     # every group
    python benchmarks/probe.py --only security,faults --out /tmp/probe --jobs 2
    python benchmarks/probe.py --list

Groups: security, faults, distributed, data, config, checkpoints, outputs, evaluation. Run it with
``OMP_NUM_THREADS=1``; the children get one thread each. Needs root only for the cases that mount
a small or read-only tmpfs (a full disk, a read-only folder); without it they are skipped.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / 'tests')]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from helpers import CodePayload as Payload, make_synthetic_with_encoders, torchrun_worker_pids  # noqa: E402  (the tests' builders)
from models import RNN_ENCODER  # noqa: E402

CLEAR, CORRECT, TRACEBACK, HANG = 'clear error', 'correct', 'traceback', 'hang'
WRONG, LOSS, CODE, SKIPPED = 'wrong result', 'data loss', 'code executed', 'skipped'
VERDICTS = (CLEAR, CORRECT, TRACEBACK, HANG, WRONG, LOSS, CODE, SKIPPED)
# a worse verdict found after the case (a marker, a lost file) replaces the case's own
_SEVERITY = {CODE: 0, LOSS: 1, HANG: 2, TRACEBACK: 3, WRONG: 4, SKIPPED: 5, CLEAR: 6, CORRECT: 6}
GROUPS = ('security', 'faults', 'distributed', 'data', 'config', 'checkpoints', 'outputs', 'evaluation')

TIMEOUT = 120            # seconds for one command of a case (a tiny run takes 10-30 s)
SEED = 3                 # synthetic birds of the probe
ENC_EPOCH = 5            # the random DAMSM encoders are text_encoder5.pth / image_encoder5.pth


# ----------------------------------------------------------------------------- running commands
@dataclass
class Result:
    rc: int | None
    out: str
    err: str
    hung: bool
    seconds: float

    @property
    def lines(self) -> list:
        """stderr lines as a terminal shows them (tqdm's carriage-return redraws collapsed)."""
        lines = [ln.rsplit('\r', 1)[-1].rstrip() for ln in self.err.splitlines()]
        return [ln for ln in lines if ln.strip()]

    @property
    def last(self) -> str:
        return self.lines[-1] if self.lines else ''

    @property
    def traceback(self) -> bool:
        return 'Traceback (most recent call last)' in self.err

    def message(self) -> str:
        """The error message: from the last line that starts with a script's name to the end
        (some messages list keys on further lines), else the last line."""
        lines = self.lines
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].split(':', 1)[0].endswith('.py'):
                return '\n'.join(lines[i:])
        return self.last

    def what(self) -> str:
        if self.hung:
            return f'no exit within {self.seconds:.0f} s; last line: {self.last[:300]}'
        extra = ' (message over several lines)' if '\n' in self.message() else ''
        return f'exit {self.rc}; {self.last[:400]}{extra}'


def child_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', PYTHONDONTWRITEBYTECODE='1')
    env.pop('PYTHONPATH', None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start(cmd, env=None) -> subprocess.Popen:
    """Start ``cmd`` in the repository root in its own process group, output to temp files."""
    out, err = tempfile.TemporaryFile('w+'), tempfile.TemporaryFile('w+')
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env or child_env(), stdout=out, stderr=err,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    proc.files, proc.began = (out, err), time.time()
    return proc


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> Result:
    """Wait for ``proc`` (killing its group after ``timeout`` s: a hang) and collect its output."""
    hung = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = True
        kill_group(proc, signal.SIGCONT)
        kill_group(proc)
        proc.wait()
    seconds = time.time() - proc.began
    texts = []
    for f in proc.files:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return Result(None if hung else proc.returncode, texts[0], texts[1], hung, seconds)


def run(cmd, timeout: float = TIMEOUT, env=None) -> Result:
    return finish(start(cmd, env), timeout)


def script(name: str, args) -> list:
    return [sys.executable, str(ROOT / name)] + [str(a) for a in args]


def torchrun(args, launcher: str = 'torch.distributed.run') -> list:
    """torchrun of main.py with 2 processes (``launcher='miscc.launch'``: the project's launcher)."""
    return [sys.executable, '-m', launcher, '--standalone', '--nproc_per_node', '2',
            str(ROOT / 'main.py')] + [str(a) for a in args]


# ----------------------------------------------------------------------------- judging
def expect_error(res: Result, *names) -> tuple:
    """A refusal is expected: non-zero, no traceback, the message naming one of ``names``."""
    if res.hung:
        return HANG, res.what()
    if res.traceback:
        return TRACEBACK, res.what()
    if res.rc == 0:
        return WRONG, f'accepted: {res.what()}'
    if names and not any(str(n) in res.last for n in names):
        where = 'its last line' if '\n' not in res.message() else 'its last line (the message spans lines)'
        earlier = [ln for ln in res.lines if 'error:' in ln and any(str(n) in ln for n in names)]
        if earlier:
            where += f', though an earlier line does ({earlier[-1][-200:]})'
        return WRONG, f'{where} names none of {[str(n)[-60:] for n in names]}: {res.what()}'
    return CLEAR, res.what()


def expect_ok(res: Result, check=None) -> tuple:
    """Success is expected; ``check()`` returns None or what is wrong with the result."""
    if res.hung:
        return HANG, res.what()
    if res.traceback:
        return TRACEBACK, res.what()
    if res.rc != 0:
        return WRONG, f'failed: {res.what()}'
    problem = check() if check else None
    return (WRONG, f'{problem}; {res.what()}') if problem else (CORRECT, res.what())


def expect_either(res: Result, names, check=None) -> tuple:
    """Either a clear refusal naming one of ``names`` or a checked success is right."""
    if not res.hung and not res.traceback and res.rc == 0:
        return expect_ok(res, check)
    return expect_error(res, *names)


def loads(path) -> str | None:
    """None when ``path`` loads with ``torch.load(weights_only=True)``, else why not."""
    try:
        torch.load(path, map_location='cpu', weights_only=True)
        return None
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        return f'{type(e).__name__}: {str(e)[:120]}'


def unloadable(folder) -> list:
    """The ``.pth`` files under ``folder`` (temp files aside) that do not load."""
    bad = []
    for path in sorted(Path(folder).rglob('*.pth')):
        why = loads(path)
        if why:
            bad.append(f'{path.name}: {why}')
    return bad


def temp_files(folder) -> list:
    return sorted(p.name for p in Path(folder).rglob('*.tmp'))


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def same_tensors(a: dict, b: dict, parts) -> str | None:
    """None when the state dicts ``parts`` of the two states are bit-identical, else the first
    differing key."""
    for part in parts:
        if set(a[part]) != set(b[part]):
            return f'{part}: other keys'
        for k in a[part]:
            if not torch.equal(a[part][k], b[part][k]):
                return f'{part}.{k} differs'
    return None


def state_of(run_dir) -> dict:
    return torch.load(Path(run_dir) / 'models' / 'state_last.pth', map_location='cpu', weights_only=True)


def run_folders(out) -> list:
    out = Path(out)
    return sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []


# ----------------------------------------------------------------------------- crafted files
def crafted_pickle(path, marker, content=()) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        pickle.dump([Payload(marker)] + list(content), f, protocol=2)


def crafted_pth(path, marker, state=None) -> None:
    """A torch file holding ``state`` (a real state dict or training state) plus the payload."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    obj = dict(state or {})
    obj['__payload__'] = Payload(marker)
    torch.save(obj, path)


def write_image(path, size=(64, 64), mode='RGB', colour=(200, 40, 40), fmt=None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if mode == 'CMYK':
        colour = (20, 180, 160, 10)
    elif mode == 'L':
        colour = 128
    Image.new(mode, size, colour).save(path, format=fmt)


def image_folder(path, count, sizes=((64, 64),)) -> Path:
    """A folder of ``count`` PNGs of slightly different colours (sizes cycled)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        write_image(path / f'img_s{i}.png', sizes[i % len(sizes)], colour=(40 * i % 256, 90, 200 - 10 * i))
    return path


# ----------------------------------------------------------------------------- tmpfs mounts
class Mount:
    """A tmpfs of ``size`` bytes at ``path`` (read-only with ``ro``); ``ok`` false when this
    machine does not allow mounting (then ``why`` says so)."""

    def __init__(self, path, size: int, ro: bool = False):
        self.path, self.ok, self.why = Path(path), False, ''
        self.path.mkdir(parents=True, exist_ok=True)
        opts = f'size={size}' + (',ro' if ro else '')
        if shutil.which('mount') is None:
            self.why = 'no mount command'
            return
        res = subprocess.run(['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(self.path)],
                             capture_output=True, text=True)
        self.ok = res.returncode == 0
        self.why = res.stderr.strip()[:200]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.ok:
            subprocess.run(['umount', '-l', str(self.path)], capture_output=True)
        return False


# ----------------------------------------------------------------------------- the shared set-up
class Context:
    """The probe's scratch folder and the things cases share, made once on first use: the data,
    random encoders, a finished 2-epoch run, uninterrupted reference runs."""

    def __init__(self, out: Path):
        self.out = out
        self._locks = collections.defaultdict(threading.Lock)
        self._made = {}
        self.protected = {}          # path -> sha256 of files no case may change

    def shared(self, name, make):
        with self._locks[name]:
            if name not in self._made:
                self._made[name] = make()
            return self._made[name]

    def protect(self, folder) -> None:
        digests = {str(p): sha(p) for p in Path(folder).rglob('*') if p.is_file() and not p.name.endswith('.tmp')}
        with self._locks['protected']:
            self.protected.update(digests)

    def check_protected(self) -> str | None:
        with self._locks['protected']:
            items = list(self.protected.items())
        for path, digest in items:
            if not os.path.isfile(path):
                return f'{path} is gone'
            if sha(path) != digest:
                return f'{path} changed'
        return None

    # -- the data
    @property
    def base(self) -> Path:
        def make():
            root = self.out / 'base'
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            make_synthetic_with_encoders(root, 8, 4, seed=SEED, epoch=ENC_EPOCH, input_size=96)
            torch.save(RNN_ENCODER(9999, nhidden=256).state_dict(), root / 'enc' / 'other_vocab.pth')
            self.protect(root)
            return root
        return self.shared('base', make)

    @property
    def data(self) -> Path:
        return self.base / 'synthetic_birds'

    @property
    def text_encoder(self) -> Path:
        return self.base / 'enc' / f'text_encoder{ENC_EPOCH}.pth'

    def data_copy(self, dest) -> Path:
        """A copy of the data set to spoil (caches left out)."""
        shutil.copytree(self.data, dest, ignore=shutil.ignore_patterns('cache', 'fid_cache'))
        return Path(dest)

    # -- argument lists
    def gan_args(self, out, data=None, **extra) -> list:
        base = {'DATASET_NAME': 'synthetic_birds', 'DATA_DIR': data or self.data, 'OUTPUT_DIR': out,
                'TEXT.DAMSM_NAME': self.text_encoder, 'TEXT.IMAGE_ENCODER_INPUT': 96, 'TREE.BASE_SIZE': 64,
                'TRAIN.NF': 2, 'TRAIN.BATCH_SIZE': 4, 'TRAIN.MAX_EPOCH': 2, 'TRAIN.WARMUP_EPOCHS': 0,
                'TRAIN.GSAVE_INTERVAL': 1, 'TRAIN.DSAVE_INTERVAL': 1, 'WORKERS': 0, 'DEVICE': 'cpu',
                'SAMPLE.BATCH_SIZE': 4, 'EVAL.R_PRECISION': 'off',
                'SYNTHETIC.NUM_TRAIN': 8, 'SYNTHETIC.NUM_TEST': 4, 'SYNTHETIC.IMAGE_SIZE': 128,
                'SYNTHETIC.SEED': SEED}
        base.update(extra)
        return ['--cfg', ROOT / 'cfg' / 'bird.yml'] + [f'{k}={v}' for k, v in base.items()]

    def damsm_args(self, out, data=None, **extra) -> list:
        base = {'DATASET_NAME': 'synthetic_birds', 'DATA_DIR': data or self.data, 'OUTPUT_DIR': out,
                'TREE.BASE_SIZE': 64, 'TRAIN.BATCH_SIZE': 4, 'TRAIN.MAX_EPOCH': 3, 'TRAIN.SNAPSHOT_INTERVAL': 1,
                'TEXT.IMAGE_ENCODER_INPUT': 75, 'TEXT.EMBEDDING_DIM': 32, 'WORKERS': 0, 'DEVICE': 'cpu',
                'DAMSM.ATTENTION_INTERVAL': 1, 'DAMSM.RANDOM_TRUNK': True,
                'SYNTHETIC.NUM_TRAIN': 8, 'SYNTHETIC.NUM_TEST': 4, 'SYNTHETIC.IMAGE_SIZE': 128,
                'SYNTHETIC.SEED': SEED}
        base.update(extra)
        return ['--cfg', ROOT / 'cfg' / 'DAMSM' / 'bird.yml'] + [f'{k}={v}' for k, v in base.items()]

    def eval_args(self, cache, **extra) -> list:
        base = {'DATASET_NAME': 'synthetic_birds', 'DATA_DIR': self.data, 'EVAL.RANDOM_WEIGHTS': True,
                'EVAL.CACHE_DIR': cache, 'EVAL.BATCH_SIZE': 4, 'EVAL.R_PRECISION': 'off', 'EVAL.SPLITS': 2,
                'DEVICE': 'cpu', 'TREE.BASE_SIZE': 64, 'TRAIN.NF': 2, 'TEXT.DAMSM_NAME': self.text_encoder,
                'TEXT.IMAGE_ENCODER_INPUT': 96, 'TRAIN.BATCH_SIZE': 4,
                'SYNTHETIC.NUM_TRAIN': 8, 'SYNTHETIC.NUM_TEST': 4, 'SYNTHETIC.IMAGE_SIZE': 128,
                'SYNTHETIC.SEED': SEED}
        base.update(extra)
        return ['--cfg', ROOT / 'cfg' / 'bird.yml'] + [f'{k}={v}' for k, v in base.items()]

    # -- runs made once
    @property
    def run(self) -> Path:
        """A finished 2-epoch main.py run (netG/netD 001 and 002, state_last)."""
        def make():
            out = self.out / 'shared_run'
            res = run(script('main.py', self.gan_args(out)), timeout=300)
            if res.rc != 0:
                raise RuntimeError(f'the shared run failed: {res.what()}\n{res.err[-2000:]}')
            (folder,) = run_folders(out)
            self.protect(folder / 'models')
            return folder
        return self.shared('run', make)

    @property
    def netg(self) -> Path:
        return self.run / 'models' / 'netG_002.pth'

    def reference(self, name, cmd) -> Path:
        """The run folder of an uninterrupted run of ``cmd(out)`` (made once per name)."""
        def make():
            out = self.out / f'ref_{name}'
            res = run(cmd(out), timeout=600)
            if res.rc != 0:
                raise RuntimeError(f'reference run {name} failed: {res.what()}\n{res.err[-2000:]}')
            (folder,) = run_folders(out)
            self.protect(folder / 'models')
            return folder
        return self.shared('ref_' + name, make)


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    group: str
    fn: object
    doc: str = ''


CASES: list = []


def case(group: str):
    def register(fn):
        CASES.append(Case(fn.__name__, group, fn, (fn.__doc__ or '').strip().splitlines()[0]))
        return fn
    return register


@dataclass
class CaseEnv:
    ctx: Context
    dir: Path
    marker: Path
    kept: dict = field(default_factory=dict)

    def keep(self, *paths) -> None:
        """Files that must still be there, unchanged and loadable after the case."""
        for p in paths:
            self.kept[str(p)] = sha(p)

    def check_kept(self) -> str | None:
        for path, digest in self.kept.items():
            if not os.path.isfile(path):
                return f'{path} is gone'
            if sha(path) != digest:
                return f'{path} was changed'
            if path.endswith('.pth') and loads(path):
                return f'{path} no longer loads'
        return None


def run_case(ctx: Context, c: Case) -> dict:
    folder = ctx.out / 'cases' / c.name
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    env = CaseEnv(ctx, folder, folder / 'MARKER_code_ran')
    began = time.time()
    try:
        verdict, what = c.fn(env)
    except Exception as e:  # noqa: BLE001 - a failure of the probe itself is reported, not hidden
        verdict, what = SKIPPED, f'the probe failed to stage the case: {type(e).__name__}: {str(e)[:300]}'
    after = []
    if env.marker.exists():
        after.append((CODE, f'marker file written by the crafted file; {what}'))
    lost = env.check_kept() or ctx.check_protected()
    if lost:
        after.append((LOSS, f'{lost}; {what}'))
    for v, w in after:
        if _SEVERITY[v] < _SEVERITY[verdict]:
            verdict, what = v, w
    return {'case': c.name, 'group': c.group, 'what': what, 'verdict': verdict,
            'seconds': round(time.time() - began, 1)}


# ============================================================================= security
# Each crafted file writes the case's marker when unpickled; the entry point must refuse it
# with an error naming the file and never run it.

def _spoiled_data(c: CaseEnv, relpath: str, keep_content=True) -> Path:
    data = c.ctx.data_copy(c.dir / 'data')
    target = data / relpath
    content = ()
    if keep_content and target.suffix == '.pickle':
        with open(target, 'rb') as f:
            content = pickle.load(f, encoding='latin1')
        content = content if isinstance(content, list) else [content]
    crafted_pickle(target, c.marker, content)
    return target


def _security(c, cmd, *names) -> tuple:
    res = run(cmd)
    return expect_error(res, *names)


@case('security')
def security_filenames_pickle_train(c):
    """train/filenames.pickle with a payload, main.py training"""
    target = _spoiled_data(c, 'train/filenames.pickle')
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', c.dir / 'data')), target)


@case('security')
def security_filenames_pickle_fid(c):
    """test/filenames.pickle with a payload, eval_FID.py reference statistics"""
    target = _spoiled_data(c, 'test/filenames.pickle')
    images = image_folder(c.dir / 'images', 4)
    return _security(c, script('eval_FID.py', ['--images', images] + c.ctx.eval_args(
        c.dir / 'cache', DATA_DIR=c.dir / 'data')), target)


@case('security')
def security_class_info_pickle(c):
    """train/class_info.pickle with a payload, main.py training"""
    target = _spoiled_data(c, 'train/class_info.pickle')
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', c.dir / 'data')), target)


@case('security')
def security_captions_pickle_train(c):
    """captions.pickle (vocabulary cache) with a payload, main.py training"""
    target = _spoiled_data(c, 'captions.pickle', keep_content=False)
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', c.dir / 'data')), target)


@case('security')
def security_captions_pickle_generate(c):
    """captions.pickle with a payload, main.py B_VALIDATION=True generation"""
    target = _spoiled_data(c, 'captions.pickle', keep_content=False)
    return _security(c, script('main.py', c.ctx.gan_args(
        c.dir / 'out', c.dir / 'data', B_VALIDATION=True, **{'TRAIN.NET_G': c.ctx.netg, 'SAMPLE.NUM': 2,
                                                              'SAMPLE.OUT_DIR': c.dir / 'gen'})), target)


@case('security')
def security_captions_pickle_damsm(c):
    """captions.pickle with a payload, pretrain_DAMSM.py"""
    target = _spoiled_data(c, 'captions.pickle', keep_content=False)
    return _security(c, script('pretrain_DAMSM.py', c.ctx.damsm_args(c.dir / 'out', c.dir / 'data')), target)


def _crafted_netg(c, name='netG_002.pth') -> Path:
    path = c.dir / 'models' / name
    crafted_pth(path, c.marker, torch.load(c.ctx.netg, weights_only=True))
    return path


@case('security')
def security_net_g_generate(c):
    """TRAIN.NET_G with a payload, main.py B_VALIDATION=True"""
    path = _crafted_netg(c)
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', B_VALIDATION=True, **{
        'TRAIN.NET_G': path, 'SAMPLE.NUM': 2, 'SAMPLE.OUT_DIR': c.dir / 'gen'})), path)


@case('security')
def security_net_g_train(c):
    """TRAIN.NET_G with a payload, main.py training from its weights"""
    path = _crafted_netg(c)
    shutil.copy(c.ctx.run / 'models' / 'netD_002.pth', path.parent / 'netD_002.pth')
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', **{'TRAIN.NET_G': path,
                                                                         'TRAIN.MAX_EPOCH': 3})), path)


@case('security')
def security_net_d_sibling(c):
    """netD_XXX.pth beside TRAIN.NET_G with a payload, main.py training from the weights"""
    netg = c.dir / 'models' / 'netG_002.pth'
    netg.parent.mkdir(parents=True)
    shutil.copy(c.ctx.netg, netg)
    netd = netg.parent / 'netD_002.pth'
    crafted_pth(netd, c.marker, torch.load(c.ctx.run / 'models' / 'netD_002.pth', weights_only=True))
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', **{'TRAIN.NET_G': netg,
                                                                         'TRAIN.MAX_EPOCH': 3})), netd)


@case('security')
def security_net_g_finetune(c):
    """TRAIN.NET_G with a payload, main_finetune.py"""
    path = _crafted_netg(c)
    shutil.copy(c.ctx.run / 'models' / 'netD_002.pth', path.parent / 'netD_002.pth')
    return _security(c, script('main_finetune.py', c.ctx.gan_args(c.dir / 'out', **{
        'TRAIN.NET_G': path, 'TRAIN.MAX_EPOCH': 3})), path)


@case('security')
def security_net_g_eval(c):
    """eval_IS.py --netG with a payload"""
    path = _crafted_netg(c)
    return _security(c, script('eval_IS.py', ['--netG', path, '--num', 4, '--out', c.dir / 'is.json']
                               + c.ctx.eval_args(c.dir / 'cache')), path)


@case('security')
def security_text_encoder(c):
    """TEXT.DAMSM_NAME (text encoder) with a payload, main.py training"""
    path = c.dir / 'enc' / f'text_encoder{ENC_EPOCH}.pth'
    crafted_pth(path, c.marker, torch.load(c.ctx.text_encoder, weights_only=True))
    shutil.copy(c.ctx.base / 'enc' / f'image_encoder{ENC_EPOCH}.pth', path.parent)
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', **{'TEXT.DAMSM_NAME': path})), path)


@case('security')
def security_image_encoder(c):
    """image_encoder beside TEXT.DAMSM_NAME with a payload, main.py training"""
    path = c.dir / 'enc' / f'image_encoder{ENC_EPOCH}.pth'
    crafted_pth(path, c.marker, torch.load(c.ctx.base / 'enc' / path.name, weights_only=True))
    text = path.parent / c.ctx.text_encoder.name
    shutil.copy(c.ctx.text_encoder, text)
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', **{'TEXT.DAMSM_NAME': text})), path)


@case('security')
def security_restore_state(c):
    """state_last.pth with a payload, main.py RESTORE=True of its run folder"""
    run_dir = c.dir / 'out' / 'synthetic_birds_bird_2000_01_01_00_00_00'
    for sub in ('models', 'log', 'samples'):
        (run_dir / sub).mkdir(parents=True)
    state = state_of(c.ctx.run)
    path = run_dir / 'models' / 'state_last.pth'
    crafted_pth(path, c.marker, state)
    shutil.copy(c.ctx.run / 'models' / 'state_last.json', run_dir / 'models')
    return _security(c, script('main.py', c.ctx.gan_args(c.dir / 'out', RESTORE=True, **{
        'TRAIN.NET_G': run_dir, 'TRAIN.MAX_EPOCH': 3})), path)


@case('security')
def security_damsm_restore_state(c):
    """DAMSM state_last.pth with a payload, pretrain_DAMSM.py RESTORE=True"""
    run_dir = c.dir / 'out' / 'synthetic_birds_bird_2000_01_01_00_00_00'
    for sub in ('models', 'log', 'samples'):
        (run_dir / sub).mkdir(parents=True)
    path = run_dir / 'models' / 'state_last.pth'
    crafted_pth(path, c.marker, {'kind': 'damsm', 'progress': {'epoch': 1, 'next_epoch': 2, 'next_step': 0,
                                                                'global_step': 2}, 'rng': {}})
    return _security(c, script('pretrain_DAMSM.py', c.ctx.damsm_args(c.dir / 'out', RESTORE=True,
                                                                       **{'TRAIN.NET_E': run_dir})), path)


@case('security')
def security_damsm_net_e(c):
    """TRAIN.NET_E text encoder with a payload, pretrain_DAMSM.py"""
    path = c.dir / 'enc' / 'text_encoder1.pth'
    crafted_pth(path, c.marker, {'encoder.weight': torch.zeros(3, 3)})
    return _security(c, script('pretrain_DAMSM.py', c.ctx.damsm_args(c.dir / 'out', **{'TRAIN.NET_E': path})), path)


@case('security')
def security_pretrained_inception(c):
    """PRETRAINED.INCEPTION with a payload, pretrain_DAMSM.py with the ImageNet trunk"""
    path = c.dir / 'inception_v3_google-0cc3c7bd.pth'
    crafted_pth(path, c.marker, {'fc.weight': torch.zeros(2, 2)})
    return _security(c, script('pretrain_DAMSM.py', c.ctx.damsm_args(c.dir / 'out', **{
        'DAMSM.RANDOM_TRUNK': False, 'PRETRAINED.INCEPTION': path})), path)


@case('security')
def security_eval_classifier(c):
    """EVAL.CLASSIFIER with a payload, eval_IS.py --images"""
    images = image_folder(c.dir / 'images', 4)
    path = c.dir / 'classifier.pth'
    crafted_pth(path, c.marker, {'fc.weight': torch.zeros(200, 2048)})
    return _security(c, script('eval_IS.py', ['--images', images] + c.ctx.eval_args(
        c.dir / 'cache', **{'EVAL.CLASSIFIER': path})), path)


@case('security')
def security_inception_weights(c):
    """EVAL.INCEPTION_WEIGHTS with a payload, eval_FID.py"""
    images = image_folder(c.dir / 'images', 4)
    path = c.dir / 'weights-inception-2015-12-05-6726825d.pth'
    crafted_pth(path, c.marker, {'conv.weight': torch.zeros(2, 2)})
    return _security(c, script('eval_FID.py', ['--images', images] + c.ctx.eval_args(
        c.dir / 'cache', **{'EVAL.RANDOM_WEIGHTS': False, 'EVAL.INCEPTION_WEIGHTS': path})), path)


@case('security')
def security_fid_cache_npz(c):
    """the FID reference-statistics cache (.npz) replaced by one with a pickled object array"""
    images = image_folder(c.dir / 'images', 4)
    cache = c.dir / 'cache'
    args = ['--images', images, '--out', c.dir / 'fid.json'] + c.ctx.eval_args(cache)
    first = run(script('eval_FID.py', args))
    made = sorted(cache.glob('*.npz'))
    if first.rc != 0 or not made:
        return SKIPPED, f'the clean eval_FID.py run made no cache: {first.what()}'
    with np.load(made[0]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays['meta'] = np.array([Payload(c.marker)], dtype=object)
    with open(made[0], 'wb') as f:
        np.savez(f, **arrays)
    res = run(script('eval_FID.py', args))
    if not res.hung and not res.traceback and res.rc == 0:
        return CORRECT, f'the crafted cache was not unpickled (recomputed); {res.what()}'
    return expect_error(res, made[0].name)


def _yaml(c, text) -> Path:
    path = c.dir / 'crafted.yml'
    path.write_text(text.replace('MARKER', str(c.marker)))
    return path


YAML_APPLY = "CONFIG_NAME: !!python/object/apply:builtins.exec [\"open('MARKER', 'w').write('ran')\"]\n"
YAML_OBJECT = ("TRAIN: !!python/object/new:type\n  args: ['X', !!python/tuple [], {}]\n"
               "  state: !!python/object/apply:builtins.exec [\"open('MARKER', 'w').write('ran')\"]\n")


@case('security')
def security_yaml_python_tag_main(c):
    """--cfg YAML with a !!python/object/apply tag, main.py"""
    path = _yaml(c, YAML_APPLY)
    return _security(c, script('main.py', ['--cfg', path, 'DEVICE=cpu']), path)


@case('security')
def security_yaml_python_object_damsm(c):
    """--cfg YAML with !!python/object/new, pretrain_DAMSM.py"""
    path = _yaml(c, YAML_OBJECT)
    return _security(c, script('pretrain_DAMSM.py', ['--cfg', path, 'DEVICE=cpu']), path)


@case('security')
def security_yaml_python_tag_eval(c):
    """--cfg YAML with a !!python/object/apply tag, eval_FID.py"""
    path = _yaml(c, YAML_APPLY)
    return _security(c, script('eval_FID.py', ['--cfg', path, '--images', c.dir]), path)


# ============================================================================= faults
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
            return WRONG, f'expected exit 3 (README: the run could not go on): {what}'
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


# ============================================================================= distributed
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


# ============================================================================= data
def _train_on(c, data, **extra) -> Result:
    """One epoch of main.py on the data folder ``data``."""
    return run(script('main.py', c.ctx.gan_args(c.dir / 'out', data, **dict({'TRAIN.MAX_EPOCH': 1}, **extra))))


def _keys(data, split='train') -> list:
    with open(Path(data) / split / 'filenames.pickle', 'rb') as f:
        return pickle.load(f)


def _image(data, key) -> Path:
    return Path(data) / 'CUB_200_2011' / 'images' / (key + '.jpg')


def _spoil_image(c, how) -> tuple:
    data = c.ctx.data_copy(c.dir / 'data')
    key = _keys(data)[2]
    path = _image(data, key)
    how(path)
    return data, path


def _trained(c):
    def check():
        return None if any((f / 'models' / 'netG_001.pth').exists() for f in run_folders(c.dir / 'out')) \
            else 'no netG_001.pth'
    return check


@case('data')
def data_truncated_jpeg(c):
    """a train JPEG cut to half its bytes"""
    data, path = _spoil_image(c, lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]))
    return expect_either(_train_on(c, data), [path.name], _trained(c))


@case('data')
def data_corrupt_jpeg(c):
    """a train JPEG of random bytes"""
    data, path = _spoil_image(c, lambda p: p.write_bytes(os.urandom(3000)))
    return expect_error(_train_on(c, data), path.name)


@case('data')
def data_missing_image(c):
    """a train image deleted"""
    data, path = _spoil_image(c, lambda p: p.unlink())
    return expect_error(_train_on(c, data), path.name)


@case('data')
def data_grayscale_image(c):
    """a train image in greyscale (mode L)"""
    data, path = _spoil_image(c, lambda p: write_image(p, (128, 128), 'L', fmt='JPEG'))
    return expect_either(_train_on(c, data), [path.name], _trained(c))


@case('data')
def data_cmyk_image(c):
    """a train image in CMYK"""
    data, path = _spoil_image(c, lambda p: write_image(p, (128, 128), 'CMYK', fmt='JPEG'))
    return expect_either(_train_on(c, data), [path.name], _trained(c))


@case('data')
def data_1x1_image(c):
    """a 1 x 1 train image"""
    data, path = _spoil_image(c, lambda p: write_image(p, (1, 1), fmt='JPEG'))
    return expect_either(_train_on(c, data), [path.name], _trained(c))


def _spoil_boxes(c, edit) -> tuple:
    data = c.ctx.data_copy(c.dir / 'data')
    path = data / 'CUB_200_2011' / 'bounding_boxes.txt'
    lines = path.read_text().splitlines()
    path.write_text('\n'.join(edit(lines)) + '\n')
    return data, path


@case('data')
def data_missing_bbox_row(c):
    """bounding_boxes.txt without the row of a train image"""
    data, path = _spoil_boxes(c, lambda lines: lines[:1] + lines[2:])
    return expect_error(_train_on(c, data), path.name)


@case('data')
def data_bbox_outside_image(c):
    """a bounding box entirely outside its image"""
    def edit(lines):
        i = lines[0].split()[0]
        return [f'{i} 5000.0 5000.0 40.0 40.0'] + lines[1:]
    data, path = _spoil_boxes(c, edit)
    return expect_either(_train_on(c, data), [path.name, 'bounding box'], _trained(c))


def _spoil_caption(c, edit) -> tuple:
    """A data copy without captions.pickle whose caption file of train key 1 is ``edit(bytes)``;
    returns (data folder, caption file, key)."""
    data = c.ctx.data_copy(c.dir / 'data')
    (data / 'captions.pickle').unlink()
    key = _keys(data)[1]
    path = data / 'text' / (key + '.txt')
    path.write_bytes(edit(path.read_bytes()))
    return data, path, key


@case('data')
def data_few_caption_lines(c):
    """a caption file with 3 lines (TEXT.CAPTIONS_PER_IMAGE is 10), no captions.pickle"""
    data, path, key = _spoil_caption(c, lambda text: b'\n'.join(text.splitlines()[:3]) + b'\n')
    return expect_either(_train_on(c, data), [path.name, key, 'CAPTIONS_PER_IMAGE'], _trained(c))


@case('data')
def data_empty_caption_file(c):
    """an empty caption file, no captions.pickle"""
    data, path, key = _spoil_caption(c, lambda text: b'')
    return expect_error(_train_on(c, data), path.name, key)


@case('data')
def data_non_utf8_caption(c):
    """a caption file with bytes that are not UTF-8 between its words, no captions.pickle"""
    data, path, key = _spoil_caption(c, lambda text: text.replace(b' ', b' \xff\xfe ', 1).replace(b'\n', b'\xe9\n'))
    return expect_either(_train_on(c, data), [path.name, key], _trained(c))


@case('data')
def data_caption_edited_with_cache(c):
    """a caption file edited (a new word) while captions.pickle exists"""
    data = c.ctx.data_copy(c.dir / 'data')
    cache = data / 'captions.pickle'
    before = cache.read_bytes()
    key = _keys(data)[1]
    path = data / 'text' / (key + '.txt')
    path.write_text('this bird is xylophonic with zebrine wings\n' * 10)
    res = _train_on(c, data)

    def check():
        if cache.read_bytes() != before:
            return None          # the stale cache was rebuilt
        if path.name in res.err or 'captions.pickle' in res.err:
            return None          # a warning names the stale cache
        return 'the edited caption file is silently ignored: captions.pickle was used unchanged, no warning'
    return expect_either(res, [path.name, 'captions.pickle'], check)


# ============================================================================= config
def _config_case(c, expect_names, **overrides) -> tuple:
    return expect_error(_train_on(c, None, **overrides), *expect_names)


@case('config')
def config_batch_size_zero(c):
    """TRAIN.BATCH_SIZE=0"""
    return _config_case(c, ['TRAIN.BATCH_SIZE'], **{'TRAIN.BATCH_SIZE': 0})


@case('config')
def config_batch_size_negative(c):
    """TRAIN.BATCH_SIZE=-4"""
    return _config_case(c, ['TRAIN.BATCH_SIZE'], **{'TRAIN.BATCH_SIZE': -4})


@case('config')
def config_batch_size_above_data(c):
    """TRAIN.BATCH_SIZE=100 with 8 training images"""
    res = _train_on(c, None, **{'TRAIN.BATCH_SIZE': 100})
    return expect_either(res, ['TRAIN.BATCH_SIZE'], _trained(c))


@case('config')
def config_base_size_zero(c):
    """TREE.BASE_SIZE=0"""
    return _config_case(c, ['TREE.BASE_SIZE'], **{'TREE.BASE_SIZE': 0})


@case('config')
def config_base_size_negative(c):
    """TREE.BASE_SIZE=-64"""
    return _config_case(c, ['TREE.BASE_SIZE'], **{'TREE.BASE_SIZE': -64})


@case('config')
def config_base_size_not_power_of_two(c):
    """TREE.BASE_SIZE=100"""
    return _config_case(c, ['TREE.BASE_SIZE'], **{'TREE.BASE_SIZE': 100})


@case('config')
def config_max_epoch_zero(c):
    """TRAIN.MAX_EPOCH=0"""
    return _config_case(c, ['TRAIN.MAX_EPOCH'], **{'TRAIN.MAX_EPOCH': 0})


@case('config')
def config_nf_zero(c):
    """TRAIN.NF=0"""
    return _config_case(c, ['TRAIN.NF'], **{'TRAIN.NF': 0})


@case('config')
def config_missing_cfg_file(c):
    """--cfg of a file that does not exist"""
    path = c.dir / 'nope.yml'
    return expect_error(run(script('main.py', ['--cfg', path])), path)


@case('config')
def config_device_cuda7(c):
    """DEVICE=cuda:7 (no such GPU here)"""
    return _config_case(c, ['DEVICE', 'cuda:7'], DEVICE='cuda:7')


@case('config')
def config_device_gpu(c):
    """DEVICE=gpu (not a device name)"""
    return _config_case(c, ['DEVICE'], DEVICE='gpu')


@case('config')
def config_workers_negative(c):
    """WORKERS=-1"""
    return _config_case(c, ['WORKERS'], WORKERS=-1)


@case('config')
def config_unknown_key(c):
    """an unknown key on the command line (TRAIN.BATCHSIZE)"""
    return _config_case(c, ['TRAIN.BATCHSIZE'], **{'TRAIN.BATCHSIZE': 4})


@case('config')
def config_damsm_batch_size_zero(c):
    """pretrain_DAMSM.py TRAIN.BATCH_SIZE=0"""
    return expect_error(run(script('pretrain_DAMSM.py', c.ctx.damsm_args(c.dir / 'out', **{'TRAIN.BATCH_SIZE': 0}))),
                        'TRAIN.BATCH_SIZE')


# ============================================================================= checkpoints
def _generate(c, netg, **extra) -> Result:
    args = c.ctx.gan_args(c.dir / 'out', B_VALIDATION=True, **dict({
        'TRAIN.NET_G': netg, 'SAMPLE.NUM': 4, 'SAMPLE.OUT_DIR': c.dir / 'gen'}, **extra))
    return run(script('main.py', args))


@case('checkpoints')
def checkpoints_netg_other_width(c):
    """a netG of NF 2 generated from with TRAIN.NF=4"""
    return expect_error(_generate(c, c.ctx.netg, **{'TRAIN.NF': 4}), c.ctx.netg)


@case('checkpoints')
def checkpoints_text_encoder_other_vocabulary(c):
    """TEXT.DAMSM_NAME: a text encoder of another vocabulary size"""
    enc = c.dir / 'enc' / f'text_encoder{ENC_EPOCH}.pth'
    enc.parent.mkdir()
    shutil.copy(c.ctx.base / 'enc' / 'other_vocab.pth', enc)
    shutil.copy(c.ctx.base / 'enc' / f'image_encoder{ENC_EPOCH}.pth', enc.parent)
    return expect_error(_train_on(c, None, **{'TEXT.DAMSM_NAME': enc}), enc)


@case('checkpoints')
def checkpoints_truncated_netg(c):
    """TRAIN.NET_G cut to half its bytes"""
    path = c.dir / 'netG_002.pth'
    data = c.ctx.netg.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return expect_error(_generate(c, path), path)


@case('checkpoints')
def checkpoints_empty_netg(c):
    """TRAIN.NET_G an empty file"""
    path = c.dir / 'netG_002.pth'
    path.write_bytes(b'')
    return expect_error(_generate(c, path), path)


@case('checkpoints')
def checkpoints_truncated_text_encoder(c):
    """TEXT.DAMSM_NAME cut to half its bytes"""
    enc = c.dir / 'enc' / c.ctx.text_encoder.name
    enc.parent.mkdir()
    data = c.ctx.text_encoder.read_bytes()
    enc.write_bytes(data[:len(data) // 2])
    shutil.copy(c.ctx.base / 'enc' / f'image_encoder{ENC_EPOCH}.pth', enc.parent)
    return expect_error(_train_on(c, None, **{'TEXT.DAMSM_NAME': enc}), enc)


@case('checkpoints')
def checkpoints_directory_as_text_encoder(c):
    """TEXT.DAMSM_NAME a directory"""
    d = c.dir / 'text_encoder5.pth'
    d.mkdir()
    return expect_error(_train_on(c, None, **{'TEXT.DAMSM_NAME': d}), d)


@case('checkpoints')
def checkpoints_directory_as_netg(c):
    """TRAIN.NET_G a directory that is not a run folder (generation)"""
    d = c.dir / 'netG_002.pth'
    d.mkdir()
    return expect_error(_generate(c, d), d)


@case('checkpoints')
def checkpoints_directory_as_classifier(c):
    """EVAL.CLASSIFIER a directory"""
    d = c.dir / 'classifier.pth'
    d.mkdir()
    images = image_folder(c.dir / 'images', 4)
    return expect_error(run(script('eval_IS.py', ['--images', images] + c.ctx.eval_args(
        c.dir / 'cache', **{'EVAL.CLASSIFIER': d}))), d)


@case('checkpoints')
def checkpoints_truncated_state_restore(c):
    """RESTORE=True of a run whose state_last.pth is truncated"""
    out = c.dir / 'out'
    folder = out / c.ctx.run.name
    shutil.copytree(c.ctx.run, folder)
    state = folder / 'models' / 'state_last.pth'
    data = state.read_bytes()
    state.write_bytes(data[:len(data) // 2])
    c.keep(folder / 'models' / 'netG_002.pth')
    res = run(script('main.py', c.ctx.gan_args(out, RESTORE=True, **{'TRAIN.MAX_EPOCH': 3})))
    return expect_error(res, state)


@case('checkpoints')
def checkpoints_restore_finished_run(c):
    """RESTORE=True of a finished run (TRAIN.MAX_EPOCH unchanged)"""
    out = c.dir / 'out'
    folder = out / c.ctx.run.name
    shutil.copytree(c.ctx.run, folder)
    c.keep(*(folder / 'models').glob('*.pth'))
    res = run(script('main.py', c.ctx.gan_args(out, RESTORE=True)))
    return expect_ok(res, lambda: None if 'already finished' in res.out else 'no "already finished" message')


@case('checkpoints')
def checkpoints_netd_as_netg(c):
    """TRAIN.NET_G a discriminator file (generation)"""
    path = c.dir / 'netG_002.pth'
    shutil.copy(c.ctx.run / 'models' / 'netD_002.pth', path)
    return expect_error(_generate(c, path), path)


# ============================================================================= outputs
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


# ============================================================================= evaluation
def _eval(c, metric, images, **extra) -> Result:
    return run(script(f'eval_{metric}.py', ['--images', images, '--out', c.dir / f'{metric}.json']
                      + c.ctx.eval_args(c.dir / 'cache', **extra)))


def _scored(c, metric):
    def check():
        path = c.dir / f'{metric}.json'
        if not path.exists():
            return f'no {metric}.json'
        value = json.loads(path.read_text()).get('value')
        return None if isinstance(value, (int, float)) and np.isfinite(value) else f'value {value!r}'
    return check


@case('evaluation')
def evaluation_is_empty_folder(c):
    """eval_IS.py --images of an empty folder"""
    images = image_folder(c.dir / 'images', 0)
    return expect_error(_eval(c, 'IS', images), images)


@case('evaluation')
def evaluation_fid_empty_folder(c):
    """eval_FID.py --images of an empty folder"""
    images = image_folder(c.dir / 'images', 0)
    return expect_error(_eval(c, 'FID', images), images)


@case('evaluation')
def evaluation_is_one_image(c):
    """eval_IS.py with one image (EVAL.SPLITS=2)"""
    images = image_folder(c.dir / 'images', 1)
    return expect_error(_eval(c, 'IS', images), 'EVAL.SPLITS', images)


@case('evaluation')
def evaluation_fid_one_image(c):
    """eval_FID.py with one image"""
    images = image_folder(c.dir / 'images', 1)
    return expect_either(_eval(c, 'FID', images), [images, 'image'], _scored(c, 'FID'))


@case('evaluation')
def evaluation_is_fewer_images_than_splits(c):
    """eval_IS.py with 5 images and EVAL.SPLITS=10"""
    images = image_folder(c.dir / 'images', 5)
    return expect_error(_eval(c, 'IS', images, **{'EVAL.SPLITS': 10}), 'EVAL.SPLITS')


@case('evaluation')
def evaluation_mixed_sizes(c):
    """eval_FID.py on images of 64 and 48 pixels"""
    images = image_folder(c.dir / 'images', 6, sizes=((64, 64), (48, 48)))
    return expect_either(_eval(c, 'FID', images), [images, 'size'], _scored(c, 'FID'))


@case('evaluation')
def evaluation_non_image_file(c):
    """eval_IS.py on a folder with notes.txt beside the images"""
    images = image_folder(c.dir / 'images', 4)
    (images / 'notes.txt').write_text('not an image\n')
    return expect_ok(_eval(c, 'IS', images), _scored(c, 'IS'))


@case('evaluation')
def evaluation_corrupt_png(c):
    """eval_IS.py on a folder where one .png holds text"""
    images = image_folder(c.dir / 'images', 4)
    bad = images / 'img_s9.png'
    bad.write_text('not an image\n')
    return expect_error(_eval(c, 'IS', images), bad.name)


@case('evaluation')
def evaluation_missing_folder(c):
    """eval_FID.py --images of a folder that does not exist"""
    images = c.dir / 'nope'
    return expect_error(_eval(c, 'FID', images), images)


@case('evaluation')
def evaluation_grayscale_images(c):
    """eval_IS.py on greyscale PNGs"""
    images = c.dir / 'images'
    for i in range(4):
        write_image(images / f'img_s{i}.png', (64, 64), 'L')
    return expect_either(_eval(c, 'IS', images), [images, 'img_s'], _scored(c, 'IS'))


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description='Reliability probe: one JSON line per case, then a summary.')
    p.add_argument('--only', default='', help=f'comma-separated groups ({", ".join(GROUPS)}) or case names')
    p.add_argument('--out', default='', help='scratch folder (default: a new temp folder, removed at the end)')
    p.add_argument('--list', action='store_true', help='list the cases and exit')
    p.add_argument('--jobs', type=int, default=2, help='cases run at once (default 2)')
    args = p.parse_args(argv)
    chosen = CASES
    if args.only:
        wanted = {w.strip() for w in args.only.split(',') if w.strip()}
        unknown = wanted - set(GROUPS) - {c.name for c in CASES}
        if unknown:
            print(f'probe.py: error: --only: unknown group or case {sorted(unknown)}; groups: {", ".join(GROUPS)}',
                  file=sys.stderr)
            return 2
        chosen = [c for c in CASES if c.group in wanted or c.name in wanted]
    if args.list:
        for c in chosen:
            print(json.dumps({'case': c.name, 'group': c.group, 'what': c.doc}))
        return 0
    scratch = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix='probe-'))
    scratch.mkdir(parents=True, exist_ok=True)
    ctx = Context(scratch)
    began = time.time()
    counts = collections.Counter()
    lock = threading.Lock()

    def one(c):
        line = run_case(ctx, c)
        with lock:
            counts[line['verdict']] += 1
            print(json.dumps(line), flush=True)
        return line
    try:
        _ = ctx.base                  # made before the cases start, so none waits for another
        # torchrun cases use two processes and time their peers' timeouts: one at a time, after the rest
        quiet = [c for c in chosen if c.group != 'distributed']
        timed = [c for c in chosen if c.group == 'distributed']
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(one, quiet))
        for c in timed:
            one(c)
    finally:
        if not args.out:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({'summary': {v: counts[v] for v in VERDICTS if counts[v]}, 'total': sum(counts.values()),
                      'seconds': round(time.time() - began)}), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
