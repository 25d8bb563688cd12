"""benchmarks/compare_models.py at toy size: every kind of row trains through the shared loop
and is scored; a second invocation reuses the stored rows."""
import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from helpers import make_synthetic_with_encoders
from miscc.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow   # trains three tiny rows end to end


def load_script():
    spec = importlib.util.spec_from_file_location('compare_models', ROOT / 'benchmarks' / 'compare_models.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_models_toy_run(tmp_path, capsys, monkeypatch):
    root = make_synthetic_with_encoders(tmp_path, 16, 100, seed=3, epoch=1, input_size=75)
    script = load_script()
    rows = ['dfgan', 'ssagan_no_ssacn_no_damsm', 'ssagan_finetune', 'gan_int_cls']
    argv = ['--out', str(tmp_path / 'cmp'), '--data-dir', str(root / 'synthetic_birds'), '--num-train', '16',
            '--num-test', '100', '--synthetic-seed', '3', '--text-encoder', str(root / 'enc' / 'text_encoder1.pth'),
            '--image-encoder', 'inception', '--image-encoder-input', '75', '--steps', '3', '--batch', '8',
            '--nf', '2', '--eval-num', '100',
            '--rows', ','.join(rows)]
    assert script.main(argv) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    lines, summaries = out[:len(rows)], out[len(rows):]
    assert [line['row'] for line in lines] == rows and all(line['seed'] == 100 for line in lines)
    trained = lines if 'gan_int_cls' in FAMILIES else lines[:3]
    assert [s['summary'] for s in summaries] == [line['row'] for line in trained]
    for line, summary in zip(trained, summaries):   # one seed: the mean is the value, the spread 0
        assert summary['every_named_right'] == {'mean': line['every_named_right'], 'std': 0.0}
        for attribute, value in line['attributes'].items():   # None: not judgeable (the toy judge's ceiling)
            assert summary.get(f'attribute_{attribute}', {}).get('mean') == value
        assert line['judge_frechet_distance'] > 0 and 0.0 <= line['every_named_right'] <= 1.0
    if 'gan_int_cls' not in FAMILIES:
        assert 'not registered' in lines[3]['skipped']
    for line in trained:
        assert line['steps'] == 3 and line['images'] == 100   # 2 steps per epoch: stops in epoch 2
        assert 0.0 <= line['body_colour_accuracy'] <= 1.0 and 0.0 <= line['r_precision'] <= 1.0
        assert line['seconds'] > 0 and line['ms_per_step'] > 0 and line['parameters_G'] > 0
    by_row = {line['row']: line for line in lines}
    assert by_row['ssagan_finetune']['script'] == 'main_finetune.py'
    assert by_row['dfgan']['parameters_D'] > 0 and by_row['dfgan']['cub']['report']['FID'] == 20.96
    # the ablation generator has no mask predictors: fewer parameters than SSA-GAN's
    assert by_row['ssagan_no_ssacn_no_damsm']['parameters_G'] < by_row['ssagan_finetune']['parameters_G']

    # a curve point per epoch file (epoch 1; the run stops in epoch 2), the curves and the grid of every row
    for line in trained:
        assert [p['epoch'] for p in line['curve']] == [1] and [p['step'] for p in line['curve']] == [2]
        assert 0.0 <= line['curve'][0]['every_named_right'] <= 1.0
        assert (tmp_path / 'cmp' / 'grids' / f"{line['row']}.png").is_file()
    assert (tmp_path / 'cmp' / 'curves' / 'every_named_right.png').is_file()
    grid = Image.open(tmp_path / 'cmp' / 'grid.png')
    assert grid.size == (200 + 10 * (64 + 2), 16 + len(trained) * (64 + 2))   # --size 64

    # again: the stored rows are printed, nothing is trained
    real_trainer = script.GANTrainer
    monkeypatch.setattr(script, 'GANTrainer', None)
    assert script.main(argv) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()] == out

    # --stored-only with a seed never run: the stored lines again, nothing trained
    assert script.main(argv + ['--seeds', '100,7', '--stored-only']) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()] == out

    # a second seed for one row: only (dfgan, 7) trains; the summary spans both seeds
    made = []
    monkeypatch.setattr(script, 'GANTrainer', lambda cfg, **kw: made.append(cfg.SEED) or real_trainer(cfg, **kw))
    argv2 = argv[:-1] + ['dfgan', '--seeds', '100,7']
    assert script.main(argv2) == 0
    again = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert made == [7]
    assert [(x.get('row'), x.get('seed')) for x in again[:2]] == [('dfgan', 100), ('dfgan', 7)]
    (summary,) = again[2:]
    values = [again[0]['every_named_right'], again[1]['every_named_right']]
    assert summary['seeds'] == [100, 7]
    assert summary['every_named_right']['mean'] == pytest.approx(sum(values) / 2, abs=1e-4)
    assert summary['every_named_right']['std'] == pytest.approx(abs(values[0] - values[1]) / 2, abs=1e-4)


def test_row_and_seed_selection_errors(capsys):
    script = load_script()
    with pytest.raises(SystemExit, match='unknown row'):
        script.main(['--rows', 'dfgan,stackgan'])
    with pytest.raises(SystemExit, match="--seeds: expected comma-separated integers, got '1,x'"):
        script.main(['--rows', 'dfgan', '--seeds', '1,x'])


def test_every_row_shares_the_size_and_gan_int_cls_scales_its_widths_with_nf():
    script = load_script()
    args = script.parse_args(['--size', '32', '--nf', '8'])
    configs = {name: script.row_config(args, name, 'te.pth', 100) for name in script.ROWS}
    assert {cfg.TREE.BASE_SIZE for cfg in configs.values()} == {32}
    assert {cfg.TRAIN.NF for cfg in configs.values()} == {8}
    # official GAN-INT-CLS 64 / 64 against NF 32: 2 x --nf
    assert (configs['gan_int_cls'].GAN_INT_CLS.NGF, configs['gan_int_cls'].GAN_INT_CLS.NDF) == (16, 16)
    assert configs['gan_int_cls'].TRAIN.GENERATOR_LR == pytest.approx(2e-4 * 4)


def test_claims_are_checked_both_ways_with_the_spread():
    script = load_script()

    def row(named, fd, named_std=0.01, fd_std=5.0):
        return {'every_named_right': {'mean': named, 'std': named_std},
                'judge_frechet_distance': {'mean': fd, 'std': fd_std}}
    summaries = {'ssagan': row(0.40, 800.0), 'dfgan': row(0.30, 700.0),
                 'dfgan_osb': row(0.20, 900.0, named_std=0.1), 'dfgan_osb_magp': row(0.25, 850.0)}
    lines = script.claim_lines(summaries)
    # only the claims whose two rows ran: SSA-GAN over DF-GAN, MA-GP over OS-B, one-way over two-way
    assert len(lines) == 3
    assert lines[0].startswith('SSA-GAN over DF-GAN (ssagan vs dfgan): every_named_right 0.400 vs 0.300: '
                               'agrees, difference +0.100 +- 0.014')
    assert 'judge_frechet_distance 800.000 vs 700.000: disagrees, difference +100.000 +- 7.071' in lines[0]
    # 0.05 better with a spread of hypot(0.01, 0.1) = 0.1005: agrees only within the spread
    assert 'every_named_right 0.250 vs 0.200: agrees (within the spread), difference +0.050 +- 0.100' in lines[1]
    assert lines[2].startswith('one-way over two-way output (DF-GAN ablation) (dfgan vs dfgan_osb_magp): '
                               'every_named_right 0.300 vs 0.250: agrees')
