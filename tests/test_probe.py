"""tests/probe (python tests/probe): its case listing, --only, and the JSON lines it prints."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / 'tests' / 'probe'
VERDICTS = {'clear error', 'correct', 'traceback', 'hang', 'wrong result', 'data loss', 'code executed', 'skipped'}


def probe(*args, timeout=900):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, str(PROBE), *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def check_report(stdout: str) -> tuple:
    """The case lines and the summary of a probe run, after checking their format."""
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    *cases, summary = lines
    for line in cases:
        assert set(line) == {'case', 'group', 'what', 'verdict', 'seconds'}, line
        assert line['verdict'] in VERDICTS and isinstance(line['what'], str) and line['what'], line
    assert set(summary) == {'summary', 'total', 'seconds'}
    assert summary['total'] == len(cases) == sum(summary['summary'].values())
    counted = {}
    for line in cases:
        counted[line['verdict']] = counted.get(line['verdict'], 0) + 1
    assert counted == summary['summary']
    return {line['case']: line for line in cases}, summary


def test_list_only_and_unknown_groups():
    res = probe('--list')
    assert res.returncode == 0, res.stderr
    listed = [json.loads(line) for line in res.stdout.splitlines()]
    groups = {line['group'] for line in listed}
    assert groups == {'security', 'faults', 'distributed', 'data', 'config', 'checkpoints', 'outputs', 'evaluation'}
    assert len({line['case'] for line in listed}) == len(listed) > 60
    res = probe('--only', 'nosuchgroup')
    assert res.returncode == 2 and "unknown group or case ['nosuchgroup']" in res.stderr


@pytest.mark.slow
def test_one_case_prints_its_verdict_and_the_summary(tmp_path):
    res = probe('--only', 'config_missing_cfg_file', '--out', tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    cases, summary = check_report(res.stdout)
    line = cases['config_missing_cfg_file']
    assert line['group'] == 'config' and line['verdict'] == 'clear error', line
    assert line['what'].startswith('exit 2; main.py: error: config file') and 'nope.yml' in line['what']


@pytest.mark.slow
def test_the_config_group(tmp_path):
    res = probe('--only', 'config', '--out', tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    cases, summary = check_report(res.stdout)
    assert {c['group'] for c in cases.values()} == {'config'} and len(cases) >= 10
    assert cases['config_max_epoch_zero']['verdict'] == 'clear error'
