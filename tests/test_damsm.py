"""DAMSM pretraining end to end on tiny synthetic data: schedule, learning, snapshots that
main.py loads, exact resume, attention maps, errors. (The word/sentence losses against a
per-sample implementation and R-precision of perfect/random encoders: tests/test_losses.py.)"""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from miscc.build import load_image_encoder, load_text_encoder, text_encoder_vocab_size
from miscc.cli import damsm_main
from miscc.config import load_config
from miscc.damsm_trainer import DAMSMTrainer, attention_grid, damsm_lr

ROOT = Path(__file__).resolve().parents[1]


def overrides(data, out, **extra):
    base = {'DATA_DIR': data, 'OUTPUT_DIR': out, 'TREE.BASE_SIZE': 64, 'TRAIN.BATCH_SIZE': 8,
            'TRAIN.MAX_EPOCH': 2, 'TRAIN.SNAPSHOT_INTERVAL': 1, 'TRAIN.LOG_INTERVAL': 1,
            'TEXT.IMAGE_ENCODER_INPUT': 75, 'TEXT.EMBEDDING_DIM': 32, 'WORKERS': 0, 'DEVICE': 'cpu',
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


def test_a_few_steps_lower_the_loss(synthetic_small, tmp_path):
    from datasets import collate_sorted
    trainer = DAMSMTrainer(config(overrides(synthetic_small, tmp_path)))
    batch = collate_sorted([trainer.dataset[i] for i in range(8)])
    losses = [trainer.train_step(batch) for _ in range(12)]
    first, last = losses[0]['w_loss'] + losses[0]['s_loss'], losses[-1]['w_loss'] + losses[-1]['s_loss']
    assert last < 0.8 * first
    # only the RNN and the two projections learn; the trunk's weights stay
    trainable = {n.split('.')[0] for n, p in trainer.image_encoder.named_parameters() if p.requires_grad}
    assert trainable == {'emb_features', 'emb_cnn_code'}


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
    assert torch.equal(trainer.text_encoder.rnn.weight_hh_l0,
                       torch.load(models / 'text_encoder1.pth', weights_only=True)['rnn.weight_hh_l0'])


def test_attention_grid_layout():
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    att = [torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4)]
    grid = attention_grid(images, att, [['a', 'red', 'bird'], ['blue', 'bird']])
    assert isinstance(grid, Image.Image) and grid.size == (4 * 32, 2 * (32 + 14))


def test_missing_imagenet_weights_name_the_file(synthetic_small, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    assert damsm_main(overrides(synthetic_small, tmp_path / 'out', **{'DAMSM.RANDOM_TRUNK': False})) == 2
    err = capsys.readouterr().err
    assert 'inception_v3_google' in err and str(tmp_path / 'torch_home') in err
    argv = overrides(synthetic_small, tmp_path / 'out', **{'DAMSM.RANDOM_TRUNK': False,
                                                          'PRETRAINED.INCEPTION': tmp_path / 'inc.pth'})
    assert damsm_main(argv) == 2
    assert str(tmp_path / 'inc.pth') in capsys.readouterr().err
