"""The demo pipeline at toy scale: every stage's output exists, the manifest matches the
images, the report holds the metrics, and a second run reuses the finished stages."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from miscc.cli import gan_main
from miscc.core.config import ConfigError, load_config
from miscc.demo import checkpoint_accuracies, finished_demo_runs
from miscc.core.files import file_sha256

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


def test_demo_pipeline_at_toy_scale(tmp_path, capsys):
    (tmp_path / 'damsm.yml').write_text(TINY_DAMSM)
    out = tmp_path / 'demo'
    argv = ['--cfg', str(ROOT / 'cfg' / 'demo.yml'), f'DATA_DIR={tmp_path / "birds"}', f'OUTPUT_DIR={out}',
            f'DEMO.DAMSM_CFG={tmp_path / "damsm.yml"}', 'DEVICE=cpu', 'WORKERS=0', 'TRAIN.NF=2',
            'TRAIN.BATCH_SIZE=4', 'TRAIN.MAX_EPOCH=1', 'TEXT.EMBEDDING_DIM=32', 'TEXT.IMAGE_ENCODER_INPUT=75',
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

    # the per-checkpoint score of the last generator repeats the report's (the same images)
    cfg = load_config(str(ROOT / 'cfg' / 'demo.yml'), argv[2:]).freeze()
    text_encoder, run = finished_demo_runs(cfg)
    assert text_encoder == report['files']['text_encoder']
    rows = list(checkpoint_accuracies(cfg, text_encoder, run))
    assert [r['epoch'] for r in rows] == [1]
    assert rows[0]['checkpoint'] == report['files']['generator']
    assert rows[0]['body_colour_accuracy'] == report['body_colour_accuracy']['generated']

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
    (tmp_path / 'damsm.yml').write_text(TINY_DAMSM)
    out = tmp_path / 'demo'
    argv = ['--cfg', str(ROOT / 'cfg' / 'demo.yml'), f'DATA_DIR={tmp_path / "birds"}', f'OUTPUT_DIR={out}',
            f'DEMO.DAMSM_CFG={tmp_path / "damsm.yml"}', 'DEVICE=cpu', 'WORKERS=0', 'TRAIN.NF=2',
            'TRAIN.BATCH_SIZE=4', 'TEXT.EMBEDDING_DIM=32', 'TEXT.IMAGE_ENCODER_INPUT=75',
            'SYNTHETIC.NUM_TRAIN=8', 'SYNTHETIC.NUM_TEST=100', 'DEMO.GRID_PER_CAPTION=1', 'DATA.CACHE=False']
    assert gan_main(False, argv + ['TRAIN.MAX_EPOCH=1']) == 0
    first = json.loads((out / 'report.json').read_text())
    folder = Path(first['files']['generated_images'])
    before = np.stack([np.asarray(Image.open(folder / f'img_s{n}.png')) for n in range(20)])
    assert gan_main(False, argv + ['TRAIN.MAX_EPOCH=2']) == 0
    second = json.loads((out / 'report.json').read_text())
    # the generator the images came from: with the demo's TRAIN.G_EMA, the average of G
    ema = load_config(str(ROOT / 'cfg' / 'demo.yml')).TRAIN.G_EMA
    assert Path(second['files']['generator']).name == ('netG_ema_002.pth' if ema else 'netG_002.pth')
    record = json.loads((folder / 'generator.json').read_text())
    assert record['sha256'] == file_sha256(second['files']['generator'])
    after = np.stack([np.asarray(Image.open(folder / f'img_s{n}.png')) for n in range(20)])
    assert not np.array_equal(before, after)                     # made again by the trained-on G
    cfg = load_config(str(ROOT / 'cfg' / 'demo.yml'), argv[2:] + ['TRAIN.MAX_EPOCH=2']).freeze()
    rows = list(checkpoint_accuracies(cfg, *finished_demo_runs(cfg)))
    assert [r['epoch'] for r in rows] == [1, 2]
    assert rows[1]['body_colour_accuracy'] == second['body_colour_accuracy']['generated']
