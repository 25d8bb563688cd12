"""The demo pipeline at toy scale: every stage's output exists, the manifest matches the
images, the report holds the metrics, and a second run reuses the finished stages."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from miscc.cli import gan_main
from miscc.core.config import ConfigError, load_config
from miscc.demo import StageClock, checkpoint_accuracies, finished_demo_runs, gan_seconds_allowed
from miscc.core.files import file_sha256
from miscc.training.gan import GANTrainer

ROOT = Path(__file__).resolve().parents[1]

TINY_DAMSM = """
CONFIG_NAME: 'demo'
DATASET_NAME: 'synthetic_birds'
TREE: {BASE_SIZE: 64}
TRAIN: {BATCH_SIZE: 8, MAX_EPOCH: 1, SNAPSHOT_INTERVAL: 1, ENCODER_LR: 0.002, LOG_INTERVAL: 1}
DAMSM: {RANDOM_TRUNK: True, ATTENTION_INTERVAL: 1}
"""

# every test here trains or generates end to end: seconds to minutes each
pytestmark = pytest.mark.slow


def demo_argv(tmp_path, *extra):
    """The demo at toy scale in ``tmp_path``: 8 train images in batches of 4 (2 GAN steps an
    epoch), 100 test captions, NF 2, the tiny DAMSM config; ``extra``: more KEY=VALUE."""
    (tmp_path / 'damsm.yml').write_text(TINY_DAMSM)
    return ['--cfg', str(ROOT / 'cfg' / 'demo.yml'), f'DATA_DIR={tmp_path / "birds"}', f'OUTPUT_DIR={tmp_path / "demo"}',
            f'DEMO.DAMSM_CFG={tmp_path / "damsm.yml"}', 'DEVICE=cpu', 'WORKERS=0', 'TRAIN.NF=2',
            'TRAIN.BATCH_SIZE=4', 'TEXT.EMBEDDING_DIM=32', 'TEXT.IMAGE_ENCODER_INPUT=32',
            'SYNTHETIC.NUM_TRAIN=8', 'SYNTHETIC.NUM_TEST=100', 'DEMO.GRID_PER_CAPTION=1', 'DATA.CACHE=False',
            *extra]


def check_confusion(report):
    """The confusion counts cover every generated image once; their diagonal is the accuracy."""
    confusion = report['body_colour_confusion']
    total = sum(n for row in confusion.values() for n in row.values())
    right = sum(row.get(true, 0) for true, row in confusion.items())
    assert total == report['images']
    assert round(right / total, 4) == report['body_colour_accuracy']['generated']


def sampled(name: str) -> str:
    """The file the demo samples from for generator file ``name``: with cfg/demo.yml's
    TRAIN.G_EMA the average of G beside it (netG_001.pth -> netG_ema_001.pth)."""
    ema = load_config(str(ROOT / 'cfg' / 'demo.yml')).TRAIN.G_EMA
    return name.replace('netG_', 'netG_ema_', 1) if ema else name


def test_demo_pipeline_at_toy_scale(tmp_path, capsys):
    (tmp_path / 'damsm.yml').write_text(TINY_DAMSM)
    out = tmp_path / 'demo'
    argv = ['--cfg', str(ROOT / 'cfg' / 'demo.yml'), f'DATA_DIR={tmp_path / "birds"}', f'OUTPUT_DIR={out}',
            f'DEMO.DAMSM_CFG={tmp_path / "damsm.yml"}', 'DEVICE=cpu', 'WORKERS=0', 'TRAIN.NF=2',
            'TRAIN.BATCH_SIZE=4', 'TRAIN.MAX_EPOCH=1', 'TEXT.EMBEDDING_DIM=32', 'TEXT.IMAGE_ENCODER_INPUT=32',
            'SYNTHETIC.NUM_TRAIN=8', 'SYNTHETIC.NUM_TEST=100', 'SYNTHETIC.IMAGE_SIZE=128', 'SYNTHETIC.SEED=4',
            'DEMO.GRID_PER_CAPTION=2', 'DATA.CACHE=False',
            'DEMO.GRID_CAPTIONS=["a red bird with blue wings", "this bird is yellow"]']
    assert gan_main(False, argv) == 0

    report = json.loads((out / 'report.json').read_text())
    assert set(report['stage_seconds']) == {'data', 'damsm', 'gan', 'generate', 'report'}
    assert report['images'] == 100
    for part in ('generated', 'real'):
        assert 0.0 <= report['body_colour_accuracy'][part] <= 1.0
        assert 0.0 <= report['r_precision'][part]['mean'] <= 1.0
    assert report['body_colour_accuracy']['real'] == 1.0          # the judge reads real birds right
    scores = report['attribute_scores']                             # the attribute judge, trained on the 8 birds
    assert set(scores['attributes']) == {'body', 'wing', 'head', 'beak', 'size'}
    assert scores['attributes']['body']['captions'] == 100 and os.path.isfile(scores['judge']['file'])
    for s in scores['attributes'].values():                        # scored only where the judge reads real birds
        assert (s['accuracy'] is None) == (s['ceiling'] < 0.9) and s['judgeable'] == (s['ceiling'] >= 0.9)
    for key, path in report['files'].items():
        assert Path(path).exists(), key

    # the manifest lists exactly the generated images and masks, with captions of the test keys
    folder = Path(report['files']['generated_images'])
    entries = [json.loads(line) for line in (folder / 'manifest.jsonl').read_text().splitlines()]
    assert [e['file'] for e in entries] == [f'img_s{n}.png' for n in range(100)]
    assert sorted(p.name for p in folder.glob('img_s*.png')) == sorted(e['file'] for e in entries)
    assert sorted(p.name for p in folder.glob('fm_*.png')) == sorted(e['mask'] for e in entries)
    size = load_config(str(ROOT / 'cfg' / 'demo.yml')).TREE.BASE_SIZE   # the demo's image size (32)
    attrs = {json.loads(a)['key']: json.loads(a) for a in (tmp_path / 'birds' / 'attributes.jsonl').read_text().splitlines()}
    for e in entries:
        assert e['key'] in attrs and attrs[e['key']]['body'] in e['caption']
        assert Image.open(folder / e['file']).size == (size, size)
    grid = Image.open(report['files']['caption_grid'])
    assert grid.size[1] == 2 * (size + 2)                         # one row per grid caption
    assert np.asarray(grid).std() > 0
    check_confusion(report)
    seconds = report['stage_seconds']                             # cfg/demo.yml's budget, far from spent here
    demo = load_config(str(ROOT / 'cfg' / 'demo.yml')).DEMO
    budget, reserve = demo.TIME_BUDGET, demo.RESERVE_SECONDS
    assert budget > 0 and report['gan_steps'] == 2 and report['budget'] == {
        'seconds': budget, 'cut': False, 'reserve_seconds': reserve,
        'gan_seconds_allowed': round(budget - reserve - seconds['data'] - seconds['damsm'], 1)}

    # the per-checkpoint score of the last generator repeats the report's (the same images)
    cfg = load_config(str(ROOT / 'cfg' / 'demo.yml'), argv[2:]).freeze()
    text_encoder, run = finished_demo_runs(cfg)
    assert text_encoder == report['files']['text_encoder']
    rows = list(checkpoint_accuracies(cfg, text_encoder, run))
    assert [r['epoch'] for r in rows] == [1]
    assert rows[0]['checkpoint'] == report['files']['generator']
    assert rows[0]['body_colour_accuracy'] == report['body_colour_accuracy']['generated']
    scored = report['checkpoint_accuracy']                        # the report scores them too, on the same images
    assert scored['images_each'] == 100 and scored['seconds'] >= 0
    assert scored['scores'] == [{'epoch': 1, 'body_colour_accuracy': rows[0]['body_colour_accuracy'],
                                 'checkpoint': sampled('netG_001.pth')}]

    # a second run reuses every finished stage: no new training runs, same report numbers
    runs = sorted(p.name for p in (out / 'gan').iterdir()) + sorted(p.name for p in (out / 'damsm').iterdir())
    capsys.readouterr()
    assert gan_main(False, argv) == 0
    again = json.loads((out / 'report.json').read_text())
    assert sorted(p.name for p in (out / 'gan').iterdir()) + sorted(p.name for p in (out / 'damsm').iterdir()) == runs
    assert again['body_colour_accuracy'] == report['body_colour_accuracy']
    assert again['r_precision'] == report['r_precision']


def test_finished_demo_runs_names_the_missing_stage(tmp_path):
    cfg = load_config(str(ROOT / 'cfg' / 'demo.yml'), [f'OUTPUT_DIR={tmp_path / "none"}']).freeze()
    with pytest.raises(ConfigError, match='no finished DAMSM stage under .*none'):
        finished_demo_runs(cfg)


def test_demo_continued_to_more_epochs_generates_again(tmp_path):
    """A larger TRAIN.MAX_EPOCH continues the GAN stage; the images and report are then the new
    generator's, not the ones left by the first run."""
    out = tmp_path / 'demo'
    argv = demo_argv(tmp_path)
    assert gan_main(False, argv + ['TRAIN.MAX_EPOCH=1']) == 0
    first = json.loads((out / 'report.json').read_text())
    folder = Path(first['files']['generated_images'])
    before = np.stack([np.asarray(Image.open(folder / f'img_s{n}.png')) for n in range(20)])
    assert gan_main(False, argv + ['TRAIN.MAX_EPOCH=2']) == 0
    second = json.loads((out / 'report.json').read_text())
    assert Path(second['files']['generator']).name == sampled('netG_002.pth')
    record = json.loads((folder / 'generator.json').read_text())
    assert record['sha256'] == file_sha256(second['files']['generator'])
    after = np.stack([np.asarray(Image.open(folder / f'img_s{n}.png')) for n in range(20)])
    assert not np.array_equal(before, after)                     # made again by the trained-on G
    cfg = load_config(str(ROOT / 'cfg' / 'demo.yml'), argv[2:] + ['TRAIN.MAX_EPOCH=2']).freeze()
    rows = list(checkpoint_accuracies(cfg, *finished_demo_runs(cfg)))
    assert [r['epoch'] for r in rows] == [1, 2]
    assert rows[1]['body_colour_accuracy'] == second['body_colour_accuracy']['generated']


def test_a_tiny_budget_cuts_the_gan_stage_and_a_rerun_trains_no_further_until_the_budget_grows(tmp_path, capsys):
    """DEMO.TIME_BUDGET=1 with a reserve of 1 s leaves the GAN stage nothing: it trains its one
    step, generates from netG_step000001.pth and reports the cut. Running again with the budget
    spent trains nothing; DEMO.TIME_BUDGET=0 continues the saved state to the full 2 steps."""
    out = tmp_path / 'demo'
    argv = demo_argv(tmp_path, 'TRAIN.MAX_EPOCH=1')
    budget = ['DEMO.TIME_BUDGET=1', 'DEMO.RESERVE_SECONDS=1']
    assert gan_main(False, argv + budget) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['gan_steps'] == 1                               # of 8 // 4 x 1 epoch = 2
    assert report['budget']['cut'] is True and report['budget']['seconds'] == 1
    assert report['budget']['gan_seconds_allowed'] == round(1 - 1 - report['stage_seconds']['data']
                                                            - report['stage_seconds']['damsm'], 1) < 0
    generator = Path(report['files']['generator'])
    assert generator.name == sampled('netG_step000001.pth') and generator.is_file()
    assert report['images'] == 100 and len(list(Path(report['files']['generated_images']).glob('img_s*.png'))) == 100
    check_confusion(report)
    assert report['checkpoint_accuracy']['scores'] == []          # cut within epoch 1: no netG_001.pth
    state = generator.parent / 'state_last.pth'
    before = state.read_bytes()

    capsys.readouterr()
    assert gan_main(False, argv + budget) == 0
    assert 'DEMO.TIME_BUDGET=1 s is spent' in capsys.readouterr().err
    again = json.loads((out / 'report.json').read_text())
    assert again['gan_steps'] == 1 and again['budget']['cut'] is True and state.read_bytes() == before
    assert again['body_colour_accuracy'] == report['body_colour_accuracy']
    assert again['stage_seconds']['gan'] >= report['stage_seconds']['gan']   # the seconds add up over runs

    assert gan_main(False, argv + ['DEMO.TIME_BUDGET=0']) == 0
    done = json.loads((out / 'report.json').read_text())
    assert done['gan_steps'] == 2 and done['budget']['cut'] is False
    assert Path(done['files']['generator']).name == sampled('netG_001.pth')
    assert [r['epoch'] for r in done['checkpoint_accuracy']['scores']] == [1]
    assert done['checkpoint_accuracy']['scores'][0]['body_colour_accuracy'] == done['body_colour_accuracy']['generated']


def test_stage_seconds_survive_an_interrupted_gan_stage(tmp_path, monkeypatch):
    """The GAN stage fails in epoch 2 (after epoch 1's training state): stage_seconds.json already
    holds its seconds up to that state (what a kill -9 keeps), then the seconds of the failed
    stage; the run that finishes adds its own, and the total is the sum of the stages."""
    out = tmp_path / 'demo'
    argv = demo_argv(tmp_path, 'TRAIN.MAX_EPOCH=2')
    real_step = GANTrainer.train_step
    at_failure = {}

    def failing_step(self, batch):
        if self.global_step == 2:                                 # the first step of epoch 2
            at_failure.update(json.loads((out / 'stage_seconds.json').read_text()))
            raise RuntimeError('simulated crash')
        return real_step(self, batch)
    monkeypatch.setattr(GANTrainer, 'train_step', failing_step)
    with pytest.raises(RuntimeError, match='simulated crash'):
        gan_main(False, argv)
    assert at_failure['gan'] > 0                                  # written with epoch 1's training state
    after = json.loads((out / 'stage_seconds.json').read_text())
    assert after['gan'] >= at_failure['gan'] and 'generate' not in after
    monkeypatch.undo()
    assert gan_main(False, argv) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['gan_steps'] == 4
    assert report['stage_seconds']['gan'] > after['gan']
    assert report['total_seconds'] == round(sum(report['stage_seconds'].values()), 1)


class _Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def test_stage_clock_sums_over_invocations_and_the_budget_counts_the_kept_seconds(tmp_path):
    """A stage's seconds are kept at each checkpoint; after a kill the next invocation adds its
    own to them, and the GAN stage's deadline counts what earlier invocations spent."""
    path = tmp_path / 'stage_seconds.json'
    now = _Clock(100.0)
    clock = StageClock(str(path), now)
    for name, seconds in (('data', 5.0), ('damsm', 20.0)):
        clock.begin(name)
        now.t += seconds
        clock.end()
    clock.begin('gan')
    now.t += 30.0
    clock.checkpoint()                                           # a saved training state; then kill -9
    now.t += 7.0                                                 # (lost: after the last state)
    assert json.loads(path.read_text()) == {'data': 5.0, 'damsm': 20.0, 'gan': 30.0}

    cfg = load_config(str(ROOT / 'cfg' / 'demo.yml'), ['DEMO.TIME_BUDGET=100', 'DEMO.RESERVE_SECONDS=15'])
    clock = StageClock(str(path), now)                           # the demo run again
    allowed = gan_seconds_allowed(cfg, clock.times)
    assert allowed == 100 - 15 - 5 - 20
    clock.begin('gan')
    assert clock.deadline(allowed) == now.t + allowed - 30.0     # not a fresh 60 s
    now.t += 12.5
    clock.end()
    assert json.loads(path.read_text())['gan'] == 30.0 + 12.5
    assert gan_seconds_allowed(load_config(str(ROOT / 'cfg' / 'demo.yml'), ['DEMO.TIME_BUDGET=0']), {}) is None


def test_negative_budget_keys_are_config_errors_before_any_stage(tmp_path, capsys):
    assert gan_main(False, demo_argv(tmp_path, 'DEMO.TIME_BUDGET=-5')) == 2
    assert "DEMO.TIME_BUDGET=-5: must be at least 0 (the demo's wall-clock seconds" in capsys.readouterr().err
    assert not (tmp_path / 'demo').exists() and not (tmp_path / 'birds').exists()
