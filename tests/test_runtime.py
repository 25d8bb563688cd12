"""CPU_ALLOCATOR: freed memory is kept for reuse ('keep') or given back as glibc does ('system'); leaving the process group."""
import json
import os
import platform
import subprocess
import sys

import pytest
import torch.distributed as dist

from miscc.cli import gan_main
from miscc.core.config import ConfigError, load_config
from miscc.core.runtime import close_distributed, configure_cpu_allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A step-like round of allocations (64, 12, 64 and 20 MB tensors, freed out of order), repeated;
# prints the minor page faults of each of rounds 11-20. A kept heap settles after a varying
# number of rounds and then faults only now and then (a 20 or 64 MB block re-placed), so the
# test looks at the median round.
ALLOCATOR_PROBE = r'''
import json, resource, sys, torch
from miscc.core.runtime import configure_cpu_allocator
applied = configure_cpu_allocator(sys.argv[1])
def step():
    a = torch.ones(16 * 2 ** 20); b = torch.ones(3 * 2 ** 20); c = a + 1
    del a
    d = torch.ones(5 * 2 ** 20)
    del b, c, d
for _ in range(10):
    step()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({'applied': applied, 'faults': faults}))
'''


# A finished run's DDP wrapper in a reference cycle (as trainer and training driver are), the
# cyclic collector off so that only close_distributed can free it; prints the names of the
# process's threads before joining a one-process Gloo group, while in it, and after leaving it.
GLOO_THREADS_PROBE = r'''
import gc, json, os, torch, torch.distributed as dist
from miscc.core.runtime import close_distributed
gc.disable()
def threads():
    return sorted(open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task'))
before = threads()
dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
class Run:
    pass
run = Run()
run.net, run.me = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2)), run
run.net(torch.ones(1, 2)).sum().backward()
inside = threads()
del run
close_distributed()
print(json.dumps({'before': before, 'inside': inside, 'after': threads()}))
'''


def _run_probe(code, *args, **env):
    """Run ``code`` in a fresh interpreter (this project importable, ``env`` added); its last
    printed line, read as JSON."""
    out = subprocess.run([sys.executable, '-c', code, *args], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT, **env), check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(platform.system() != 'Linux' or not platform.libc_ver()[0] == 'glibc',
                    reason='mallopt is glibc-specific')
def test_keep_reuses_freed_memory_without_page_faults():
    system, keep = _run_probe(ALLOCATOR_PROBE, 'system'), _run_probe(ALLOCATOR_PROBE, 'keep')
    assert system['applied'] is False and keep['applied'] is True
    # glibc maps the two 64 MB tensors afresh every round: 2 x 16,384 faults of 4 KiB pages
    assert min(system['faults']) > 30_000
    assert sorted(keep['faults'])[len(keep['faults']) // 2] < 1_000


def test_default_and_bad_values():
    assert load_config(None).CPU_ALLOCATOR == 'keep'
    assert configure_cpu_allocator('system') is False
    with pytest.raises(ConfigError, match="CPU_ALLOCATOR must be one of keep, system, got 'fast'"):
        configure_cpu_allocator('fast')


def _join_single_process_group():
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    assert dist.is_initialized()


def test_close_distributed_leaves_the_group_and_is_a_no_op_without_one():
    _join_single_process_group()
    close_distributed()
    assert not dist.is_initialized()
    close_distributed()     # nothing joined: no error
    assert not dist.is_initialized()


@pytest.mark.skipif(not os.path.isdir('/proc/self/task'), reason="the probe lists threads in Linux's /proc")
def test_close_distributed_ends_the_gloo_threads():
    """After close_distributed no Gloo worker thread is left for the interpreter's shutdown (where
    one that takes the GIL aborts the process): the group's last references, held by DDP wrappers in
    reference cycles, are collected, and torch.distributed.nn.functional, which DDP imports (via
    torch._dynamo) and which holds the world group in default arguments, was imported first."""
    names = _run_probe(GLOO_THREADS_PROBE, OMP_NUM_THREADS='1')

    def workers(threads):   # the threads that run collectives and drop their tensors
        return [n for n in threads if n == 'pt_gloo_runloop']
    assert len(workers(names['inside'])) >= 1 and not workers(names['before']), names   # the probe sees them
    assert not workers(names['after']), names


@pytest.mark.parametrize('cfg, argv', [('demo.yml', ['NO_SUCH_KEY=1']),
                                       ('bird.yml', ['B_VALIDATION=True', 'TRAIN.NET_G=/nonexistent/netG_001.pth'])])
def test_main_leaves_the_process_group_on_every_exit(cfg, argv, capsys):
    """main.py's process leaves the group it joined, also when it ends with an error (in the
    config; in generation, here its missing DAMSM encoder): a torchrun worker with the group
    still open at shutdown can abort after finishing."""
    _join_single_process_group()
    try:
        assert gan_main(False, ['--cfg', os.path.join(ROOT, 'cfg', cfg), *argv]) == 2
        assert ('NO_SUCH_KEY' if cfg == 'demo.yml' else 'DAMSM text encoder') in capsys.readouterr().err
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
