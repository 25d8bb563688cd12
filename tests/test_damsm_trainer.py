"""DAMSM pretraining end to end on tiny synthetic data: schedule, learning, snapshots that
main.py loads, exact resume, attention maps, errors. (The word/sentence losses against a
per-sample implementation and R-precision of perfect/random encoders: tests/test_losses.py.)"""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import collate_sorted
from helpers import CodePayload
from miscc.core.checkpoint import CheckpointError
from models.encoders import SmallImageEncoder
from miscc.families.encoders import load_image_encoder, load_text_encoder, text_encoder_vocab_size
from miscc.cli import damsm_main
from miscc.core.config import load_config
from miscc.training.damsm import DAMSMTrainer, attention_grid, damsm_lr

ROOT = Path(__file__).resolve().parents[1]


def overrides(data, out, **extra):
    base = {'DATA_DIR': data, 'OUTPUT_DIR': out, 'TREE.BASE_SIZE': 64, 'TRAIN.BATCH_SIZE': 8,
            'TRAIN.MAX_EPOCH': 2, 'TRAIN.SNAPSHOT_INTERVAL': 1, 'TRAIN.LOG_INTERVAL': 1,
            'TEXT.IMAGE_ENCODER': 'inception', 'TEXT.IMAGE_ENCODER_INPUT': 75, 'TEXT.EMBEDDING_DIM': 32, 'WORKERS': 0,
            'DEVICE': 'cpu',
            'DAMSM.ATTENTION_INTERVAL': 1, 'SYNTHETIC.NUM_TRAIN': 24, 'SYNTHETIC.NUM_TEST': 8,
            'SYNTHETIC.IMAGE_SIZE': 128, 'SYNTHETIC.SEED': 7}
    base.update(extra)
    return ['--cfg', str(ROOT / 'cfg' / 'DAMSM' / 'demo.yml')] + [f'{k}={v}' for k, v in base.items()]


def config(argv):
    return load_config(argv[1], argv[2:]).freeze()


def test_learning_rate_schedule_is_attngan_s():
    assert damsm_lr(0.002, 1) == 0.002
    assert damsm_lr(0.002, 2) == pytest.approx(0.002 * 0.98)
    assert damsm_lr(0.002, 11) == pytest.approx(0.002 * 0.98 ** 10)
    # decays while above a tenth, then stays: 0.98^114 < 0.1 <= 0.98^113
    assert damsm_lr(0.002, 115) == pytest.approx(0.002 * 0.98 ** 114)
    assert damsm_lr(0.002, 600) == damsm_lr(0.002, 115) < 0.0002


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(synthetic_small, tmp_path):
    trainer = DAMSMTrainer(config(overrides(synthetic_small, tmp_path)))
    batch = collate_sorted([trainer.dataset[i] for i in range(8)])
    losses = [trainer.train_step(batch) for _ in range(12)]
    first, last = losses[0]['w_loss'] + losses[0]['s_loss'], losses[-1]['w_loss'] + losses[-1]['s_loss']
    assert last < 0.8 * first
    # only the RNN and the two projections learn; the trunk's weights stay
    trainable = {n.split('.')[0] for n, p in trainer.image_encoder.named_parameters() if p.requires_grad}
    assert trainable == {'emb_features', 'emb_cnn_code'}


@pytest.mark.slow
def test_snapshots_load_into_main_py_encoders_and_resume_is_exact(synthetic_small, tmp_path):
    assert damsm_main(overrides(synthetic_small, tmp_path / 'straight')) == 0
    (run,) = (tmp_path / 'straight').iterdir()
    models = run / 'models'
    assert sorted(p.name for p in models.iterdir()) == [
        'image_encoder1.pth', 'image_encoder2.pth', 'state_last.json', 'state_last.pth',
        'text_encoder1.pth', 'text_encoder2.pth']
    assert (run / 'samples' / 'attention_002.png').is_file()
    assert json.loads((models / 'state_last.json').read_text())['global_step'] == 6   # 24 / 8 x 2 epochs

    # main.py's loaders take them strictly, with the vocabulary size read from the file
    gan_cfg = load_config(str(ROOT / 'cfg' / 'bird.yml'), ['TEXT.EMBEDDING_DIM=32', 'TEXT.IMAGE_ENCODER_INPUT=75'])
    n_words = text_encoder_vocab_size(str(models / 'text_encoder2.pth'))
    text = load_text_encoder(gan_cfg, str(models / 'text_encoder2.pth'), n_words, 'cpu')
    image = load_image_encoder(gan_cfg, str(models / 'image_encoder2.pth'), 'cpu')
    assert text.encoder.num_embeddings == n_words and image.emb_cnn_code.out_features == 32

    # stop after 4 steps (epoch 2, step 1), resume: the same weights as the straight run
    assert damsm_main(overrides(synthetic_small, tmp_path / 'split', **{'TRAIN.MAX_STEPS': 4})) == 0
    (split,) = (tmp_path / 'split').iterdir()
    assert json.loads((split / 'models' / 'state_last.json').read_text())['next_step'] == 1
    assert damsm_main(overrides(synthetic_small, tmp_path / 'split', RESTORE=True)) == 0
    for name in ('text_encoder2.pth', 'image_encoder2.pth'):
        a = torch.load(models / name, weights_only=True)
        b = torch.load(split / 'models' / name, weights_only=True)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f'{name}: {k}'

    # continuing from a snapshot the AttnGAN way (TRAIN.NET_E) starts at the next epoch
    argv = overrides(synthetic_small, tmp_path / 'net_e', **{'TRAIN.NET_E': models / 'text_encoder1.pth'})
    trainer = DAMSMTrainer(config(argv))
    assert trainer.start_epoch == 2
    assert trainer.optimizer.param_groups[0]['lr'] == pytest.approx(0.002 * 0.98)   # the schedule goes on
    assert torch.equal(trainer.text_encoder.rnn.weight_hh_l0,
                       torch.load(models / 'text_encoder1.pth', weights_only=True)['rnn.weight_hh_l0'])


def test_attention_grid_layout_and_brightness():
    images = torch.zeros(2, 3, 32, 32)                     # mid grey
    att = torch.zeros(1, 3, 4, 4)
    att[0, 0, 0, 0] = 1.0                                  # 'a': top-left region
    att[0, 1, 3, 3] = 1.0                                  # 'red': bottom-right region
    att[0, 2] = 0.5                                        # 'bird': everywhere alike
    grid = attention_grid(images, [att, torch.rand(1, 2, 4, 4)], [['a', 'red', 'bird'], ['blue', 'bird']],
                          cell=40)
    # image + 3 words per row, each cell 40 px under a 14 px label
    assert isinstance(grid, Image.Image) and grid.size == (4 * 40, 2 * (40 + 14))
    pix = torch.from_numpy(np.array(grid)).float().mean(dim=2)        # H x W grey levels

    def cell(col, y, x):                                               # a pixel of row 0, word column col
        return pix[14 + y, col * 40 + x].item()
    assert cell(0, 5, 5) == pytest.approx(127, abs=1) == cell(0, 35, 35)   # the image itself
    assert cell(1, 2, 2) > 100 and cell(1, 37, 37) < 40     # 'a' lights the top-left, dims the rest
    assert cell(2, 37, 37) > 100 and cell(2, 2, 2) < 40     # 'red' the bottom-right
    assert cell(3, 2, 2) == pytest.approx(cell(3, 37, 37), abs=1)
    # the word labels are drawn in black above their columns
    assert pix[:14, 40:80].min() < 50 and pix[:14, :40].min() == 255

    # 299-pixel inputs are drawn at the cell size, not at full size
    big = attention_grid(torch.rand(3, 3, 299, 299) * 2 - 1, [torch.rand(1, 5, 17, 17)] * 3, [['w'] * 5] * 3)
    assert big.size == (6 * 128, 3 * (128 + 14))


@pytest.mark.slow
def test_validation_reports_r_precision_and_logs_it(tmp_path, capsys):
    from miscc.data.synthetic import make_synthetic_birds
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    data = tmp_path / 'synthetic_birds'
    make_synthetic_birds(str(data), num_train=8, num_test=104, image_size=128, seed=11, workers=1)
    argv = overrides(data, tmp_path / 'out', **{'TRAIN.MAX_EPOCH': 1, 'SYNTHETIC.NUM_TRAIN': 8,
                                                'SYNTHETIC.NUM_TEST': 104, 'SYNTHETIC.SEED': 11})
    assert damsm_main(argv) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('DAMSM epoch 1/1')]
    assert len(lines) == 1
    match = re.search(r'R-precision (\d\.\d{3}) \+- (\d\.\d{3})', lines[0])
    assert match and 0.0 <= float(match.group(1)) <= 1.0 and 'valid w' in lines[0]
    (run,) = (tmp_path / 'out').iterdir()
    events = EventAccumulator(str(run / 'log'))
    events.Reload()
    tags = events.Tags()['scalars']
    assert {'valid/r_precision', 'valid/r_precision_std', 'valid/valid_w_loss', 'valid/valid_s_loss',
            'loss/w_loss', 'loss/s_loss', 'lr'} <= set(tags)
    (logged,) = events.Scalars('valid/r_precision')
    assert logged.step == 1 and logged.value == pytest.approx(float(match.group(1)), abs=1e-3)

    # two validation batches (16 pairs) are too few: the line says so instead of a number
    trainer = DAMSMTrainer(config(argv + ['DAMSM.VALID_BATCHES=2', f'OUTPUT_DIR={tmp_path / "out2"}']))
    valid = trainer.validate(1)
    assert valid['pairs'] == 16 and 'r_precision' not in valid
    line = trainer.report_line(1, {'w_loss': 1.0, 's_loss': 2.0}, valid, 0.002, 3.0)
    assert 'R-precision skipped: 16 test pairs, it needs at least 100' in line


@pytest.mark.slow
def test_train_step_clips_only_the_rnn_gradients(synthetic_small, tmp_path, monkeypatch):
    trainer = DAMSMTrainer(config(overrides(synthetic_small, tmp_path, **{'TRAIN.RNN_GRAD_CLIP': 0.01})))
    assert trainer.optimizer.defaults['betas'] == (0.5, 0.999) and trainer.optimizer.defaults['lr'] == 0.002
    calls, original = [], torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *args, **kwargs):
        params = list(params)
        before = original(params, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        calls.append((params, max_norm, before.item(), after.item()))
        return before
    monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', recording_clip)
    trainer.train_step(collate_sorted([trainer.dataset[i] for i in range(8)]))
    ((params, max_norm, before, after),) = calls
    assert {id(p) for p in params} == {id(p) for p in trainer.text_encoder.parameters()}
    assert max_norm == 0.01 and before > 0.01 and after == pytest.approx(0.01, rel=1e-3)
    # the projections are not clipped: their gradient keeps its size
    assert trainer.image_encoder.emb_cnn_code.weight.grad.norm() > 0.01


def test_damsm_configs_hold_attngan_values():
    bird = load_config(str(ROOT / 'cfg' / 'DAMSM' / 'bird.yml'))
    coco = load_config(str(ROOT / 'cfg' / 'DAMSM' / 'coco.yml'))
    for cfg, snapshot, captions, words in ((bird, 50, 10, 18), (coco, 5, 5, 15)):
        assert (cfg.TREE.BASE_SIZE, cfg.TRAIN.BATCH_SIZE, cfg.TRAIN.MAX_EPOCH, cfg.TRAIN.ENCODER_LR,
                cfg.TRAIN.RNN_GRAD_CLIP) == (299, 48, 600, 0.002, 0.25)
        assert (cfg.TRAIN.SMOOTH.GAMMA1, cfg.TRAIN.SMOOTH.GAMMA2, cfg.TRAIN.SMOOTH.GAMMA3) == (4.0, 5.0, 10.0)
        assert (cfg.TRAIN.SNAPSHOT_INTERVAL, cfg.TEXT.CAPTIONS_PER_IMAGE, cfg.TEXT.WORDS_NUM) == (snapshot, captions, words)
        assert cfg.TEXT.IMAGE_ENCODER_INPUT == 299 and not cfg.DAMSM.RANDOM_TRUNK and cfg.DAMSM.LR_DECAY == 0.98


def test_crafted_or_foreign_imagenet_weights_are_one_line_errors_naming_the_file(synthetic_small, tmp_path, capsys):
    marker = tmp_path / 'ran'
    crafted = tmp_path / 'inception_v3_google-0cc3c7bd.pth'
    torch.save({'fc.weight': torch.zeros(2, 2), 'x': CodePayload(marker)}, crafted)
    foreign = tmp_path / 'foreign.pth'
    torch.save({'fc.weight': torch.zeros(2, 2)}, foreign)   # loads, but holds no Inception trunk
    for path in (crafted, foreign):
        argv = overrides(synthetic_small, tmp_path / 'out', **{'DAMSM.RANDOM_TRUNK': False, 'PRETRAINED.INCEPTION': path})
        assert damsm_main(argv) == 2
        (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert line.startswith('pretrain_DAMSM.py: error: ') and str(path) in line, line
    assert not marker.exists()


def test_missing_imagenet_weights_name_the_file(synthetic_small, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    assert damsm_main(overrides(synthetic_small, tmp_path / 'out', **{'DAMSM.RANDOM_TRUNK': False})) == 2
    err = capsys.readouterr().err
    assert 'inception_v3_google' in err and str(tmp_path / 'torch_home') in err
    argv = overrides(synthetic_small, tmp_path / 'out', **{'DAMSM.RANDOM_TRUNK': False,
                                                          'PRETRAINED.INCEPTION': tmp_path / 'inc.pth'})
    assert damsm_main(argv) == 2
    assert str(tmp_path / 'inc.pth') in capsys.readouterr().err


def test_small_image_encoder_contract():
    encoder = SmallImageEncoder(nef=16, input_size=32).eval()
    regions, code = encoder(torch.rand(3, 3, 32, 32) * 2 - 1)
    assert regions.shape == (3, 16, 4, 4) and code.shape == (3, 16)       # regions: input / 8
    # other sizes are resized to input_size first: the same as resizing by hand
    big = torch.rand(2, 3, 64, 64) * 2 - 1
    resized = torch.nn.functional.interpolate(big, size=(32, 32), mode='bilinear', align_corners=False)
    torch.testing.assert_close(encoder(big)[1], encoder(resized)[1])
    assert all(p.requires_grad for p in encoder.parameters())                # trained whole
    with pytest.raises(ValueError, match='multiple of 16'):
        SmallImageEncoder(16, input_size=40)


def test_image_encoder_key_is_checked():
    with pytest.raises(Exception, match=r"TEXT.IMAGE_ENCODER must be one of 'inception', 'small', got 'resnet'"):
        load_config(str(ROOT / 'cfg' / 'demo.yml'), ['TEXT.IMAGE_ENCODER=resnet'])


@pytest.mark.slow
def test_small_image_encoder_trains_whole_and_loads_only_as_small(synthetic_small, tmp_path):
    argv = overrides(synthetic_small, tmp_path, **{'TEXT.IMAGE_ENCODER': 'small', 'TEXT.IMAGE_ENCODER_INPUT': 32,
                                                    'TREE.BASE_SIZE': 32, 'TRAIN.MAX_EPOCH': 1})
    trainer = DAMSMTrainer(config(argv))
    before = {n: p.detach().clone() for n, p in trainer.image_encoder.named_parameters()}
    trainer.train_step(collate_sorted([trainer.dataset[i] for i in range(8)]))
    moved = {n.split('.')[0] for n, p in trainer.image_encoder.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {'features', 'global_features', 'emb_features', 'emb_cnn_code'}

    assert damsm_main(argv) == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    image_file = str(run / 'models' / 'image_encoder1.pth')
    small = load_config(str(ROOT / 'cfg' / 'demo.yml'), ['TEXT.EMBEDDING_DIM=32', 'TEXT.IMAGE_ENCODER=small',
                                                         'TEXT.IMAGE_ENCODER_INPUT=32'])
    assert load_image_encoder(small, image_file, 'cpu').emb_cnn_code.out_features == 32
    inception = load_config(str(ROOT / 'cfg' / 'demo.yml'), ['TEXT.EMBEDDING_DIM=32', 'TEXT.IMAGE_ENCODER_INPUT=75',
                                                             'TEXT.IMAGE_ENCODER=inception'])
    with pytest.raises(CheckpointError, match='TEXT.IMAGE_ENCODER=inception'):
        load_image_encoder(inception, image_file, 'cpu')
