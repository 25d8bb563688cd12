"""The probe's harness: running commands, verdicts, crafted files, the shared set-up (Context), the
case registry (``@case``) and the command line (``main``). The cases live in the group modules."""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import pickle
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

import torch
from PIL import Image

from helpers import CodePayload as Payload, make_synthetic_with_encoders   # the tests' builders (on the path: __init__.py)
from models import RNN_ENCODER

from . import ROOT

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
            print(f'probe: error: --only: unknown group or case {sorted(unknown)}; groups: {", ".join(GROUPS)}',
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
