"""benchmarks/compare_models.py at toy size: every kind of row trains through the shared loop
and is scored; a second invocation reuses the stored rows."""
import importlib.util
import json
from pathlib import Path

import pytest

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
            '--image-encoder-input', '75', '--steps', '3', '--batch', '8', '--nf', '2', '--eval-num', '100',
            '--rows', ','.join(rows)]
    assert script.main(argv) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [line['row'] for line in lines] == rows
    trained = lines if 'gan_int_cls' in FAMILIES else lines[:3]
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

    # again: the stored rows are printed, nothing is trained
    monkeypatch.setattr(script, 'GANTrainer', None)
    assert script.main(argv) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()] == lines
