"""FID/KID/R-precision during training (EVAL.INTERVAL) with a tiny stand-in extractor: the
metrics.jsonl history, netG_best, agreement with eval_FID.py --netG, exact resume without
duplicated or lost lines, an unchanged training, and the split over DDP ranks."""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import miscc.evaluation.in_training
import miscc.evaluation.scores
from helpers import tiny_extractor
from miscc.cli import eval_main, gan_main
from miscc.core.config import load_config
from miscc.evaluation.in_training import shard
from miscc.families import build_networks

ROOT = Path(__file__).resolve().parents[1]


def test_shard_covers_every_image_once():
    for num, world in ((10, 3), (3000, 8), (2, 4)):
        parts = [shard(num, r, world) for r in range(world)]
        assert parts[0][0] == 0 and parts[-1][1] == num
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """8 train / 30 test synthetic birds and random DAMSM encoders."""
    from helpers import make_synthetic_with_encoders
    return make_synthetic_with_encoders(tmp_path_factory.mktemp('intrain'), 8, 30, seed=4, epoch=5, nef=32,
                                       input_size=75)


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(miscc.evaluation.in_training, 'inception_extractor', tiny_extractor)
    monkeypatch.setattr(miscc.evaluation.scores, 'inception_extractor', tiny_extractor)


def overrides(root, out, **extra):
    base = {'DATASET_NAME': 'synthetic_birds', 'DATA_DIR': root / 'synthetic_birds', 'OUTPUT_DIR': root / out,
            'TEXT.DAMSM_NAME': root / 'enc' / 'text_encoder5.pth', 'TREE.BASE_SIZE': 64, 'TRAIN.NF': 2,
            'TEXT.EMBEDDING_DIM': 32, 'TEXT.IMAGE_ENCODER_INPUT': 75,
            'TRAIN.BATCH_SIZE': 4, 'TRAIN.MAX_EPOCH': 2, 'TRAIN.WARMUP_EPOCHS': 0,
            'TRAIN.GSAVE_INTERVAL': 1, 'TRAIN.DSAVE_INTERVAL': 1, 'WORKERS': 0, 'DEVICE': 'cpu',
            'SYNTHETIC.NUM_TRAIN': 8, 'SYNTHETIC.NUM_TEST': 30, 'SYNTHETIC.IMAGE_SIZE': 128, 'SYNTHETIC.SEED': 4,
            'EVAL.INTERVAL': 1, 'EVAL.NUM_FID': 20, 'EVAL.BATCH_SIZE': 8, 'EVAL.SPLITS': 2,
            'EVAL.R_PRECISION_PROTOCOL': 'dmgan', 'EVAL.CACHE_DIR': root / 'fid_cache'}
    base.update(extra)
    return ['--cfg', str(ROOT / 'cfg' / 'bird.yml')] + [f'{k}={v}' for k, v in base.items()]


def lines(run):
    return [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]


def without_time(records):
    return [{k: v for k, v in r.items() if k != 'seconds'} for r in records]


@pytest.mark.slow
def test_the_attribute_judge_scores_in_training_and_in_eval_scripts(setup, tmp_path):
    """EVAL.EXTRACTOR=judge: no Inception weights; the in-training FID on the judge's features picks
    netG_best and equals eval_FID.py --netG with the same key; eval_IS.py gives its species score."""
    judged = {'EVAL.EXTRACTOR': 'judge', 'EVAL.R_PRECISION': 'off', 'EVAL.INCEPTION_WEIGHTS': tmp_path / 'absent.pth'}
    assert gan_main(False, overrides(setup, 'judged', **judged)) == 0
    (run,) = (setup / 'judged').iterdir()
    history = lines(run)
    assert [r['epoch'] for r in history] == [1, 2] and all(r['fid'] > 0 for r in history)
    best = min(history, key=lambda r: r['fid'])
    assert json.loads((run / 'models' / 'netG_best.json').read_text())['epoch'] == best['epoch']
    assert list((setup / 'synthetic_birds' / 'judge').glob('judge_64px_*.pth'))     # trained once, cached
    argv = overrides(setup, 'judged', **judged)
    for metric, name in (('FID', 'fid.json'), ('IS', 'is.json')):
        out = tmp_path / name
        assert eval_main(metric, argv[:2] + ['--netG', str(run / 'models' / 'netG_002.pth'), '--out', str(out),
                                             '--num', '20'] + argv[2:]) == 0
        result = json.loads(out.read_text())
        assert result['weights']['weights'].startswith('attribute judge')
        if metric == 'FID':
            assert result['dims'] == 256 and result['value'] == pytest.approx(history[1]['fid'], rel=1e-9)
        else:
            assert 1.0 <= result['value'] <= 90.0                        # exp(KL) over the 90 species


@pytest.mark.slow
def test_scores_history_best_agreement_with_eval_fid_and_exact_resume(setup, stand_in, tmp_path):
    assert gan_main(False, overrides(setup, 'straight')) == 0
    (run,) = (setup / 'straight').iterdir()
    history = lines(run)
    assert [(r['epoch'], r['step'], r['images'], r['generator']) for r in history] == [(1, 2, 20, 'netG'),
                                                                                      (2, 4, 20, 'netG')]
    for r in history:
        assert r['fid'] > 0 and r['kid'] is not None and 0.0 <= r['r_precision'] <= 1.0 and r['seconds'] > 0
    best = min(history, key=lambda r: r['fid'])
    record = json.loads((run / 'models' / 'netG_best.json').read_text())
    assert record == {k: best[k] for k in ('epoch', 'step', 'fid', 'images', 'generator')}
    kept = torch.load(run / 'models' / 'netG_best.pth', weights_only=True)
    same = torch.load(run / 'models' / f"netG_{best['epoch']:03d}.pth", weights_only=True)
    assert kept.keys() == same.keys() and all(torch.equal(kept[k], same[k]) for k in same)
    argv = overrides(setup, 'straight')
    build_networks(load_config(argv[1], argv[2:]))['netG'].load_state_dict(kept, strict=True)
    events = [p for p in (run / 'log').iterdir() if p.name.startswith('events')]
    assert events

    # the in-training FID of epoch 2 is eval_FID.py --netG of netG_002.pth (same images, same reference)
    argv = overrides(setup, 'straight')[:2] + ['--netG', str(run / 'models' / 'netG_002.pth'),
                                               '--out', str(tmp_path / 'fid.json')] + overrides(setup, 'straight')[2:]
    assert eval_main('FID', argv) == 0
    fid = json.loads((tmp_path / 'fid.json').read_text())
    assert fid['reference']['from_cache'] and fid['count'] == 20
    assert fid['value'] == pytest.approx(history[1]['fid'], rel=1e-9)
    assert fid['kid']['value'] == pytest.approx(history[1]['kid'], rel=1e-9, abs=1e-12)

    # stopped in epoch 2, a stray line of a lost epoch 2 evaluation on disk, resumed: the same history
    assert gan_main(False, overrides(setup, 'split', **{'TRAIN.MAX_STEPS': 3})) == 0
    (split,) = (setup / 'split').iterdir()
    assert [r['epoch'] for r in lines(split)] == [1]
    with open(split / 'metrics.jsonl', 'a') as f:
        f.write(json.dumps(dict(history[1], fid=123.0)) + '\n')
    assert gan_main(False, overrides(setup, 'split', RESTORE=True)) == 0
    assert without_time(lines(split)) == without_time(history)
    assert json.loads((split / 'models' / 'netG_best.json').read_text()) == record
    a = torch.load(run / 'models' / 'state_last.pth', weights_only=True)
    b = torch.load(split / 'models' / 'state_last.pth', weights_only=True)
    assert without_time(a['eval_history']) == without_time(b['eval_history']) and a['eval_best'] == b['eval_best']
    for part in ('netG', 'netD'):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part

    # evaluating does not change the training: the same weights as without EVAL.INTERVAL
    assert gan_main(False, overrides(setup, 'plain', **{'EVAL.INTERVAL': 0})) == 0
    (plain,) = (setup / 'plain').iterdir()
    assert not (plain / 'metrics.jsonl').exists() and not (plain / 'models' / 'netG_best.pth').exists()
    c = torch.load(plain / 'models' / 'state_last.pth', weights_only=True)
    for part in ('netG', 'netD'):
        assert all(torch.equal(a[part][k], c[part][k]) for k in a[part]), part


@pytest.mark.slow
def test_with_g_ema_the_average_is_evaluated_and_kept(setup, stand_in):
    assert gan_main(False, overrides(setup, 'ema', **{'TRAIN.G_EMA': True, 'TRAIN.G_EMA_DECAY': 0.5,
                                                      'TRAIN.MAX_EPOCH': 1})) == 0
    (run,) = (setup / 'ema').iterdir()
    assert [r['generator'] for r in lines(run)] == ['netG_ema']
    kept = torch.load(run / 'models' / 'netG_best.pth', weights_only=True)
    ema = torch.load(run / 'models' / 'netG_ema_001.pth', weights_only=True)
    assert all(torch.equal(kept[k], ema[k]) for k in ema)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, argv):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    miscc.evaluation.in_training.inception_extractor = tiny_extractor
    from miscc.cli import config_from_args, parse_args
    from miscc.training.gan import GANTrainer
    GANTrainer(config_from_args(parse_args(argv, 'test'))).fit()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_share_the_images_and_rank0_scores_them_all(setup, stand_in):
    argv = overrides(setup, 'ddp', **{'TRAIN.MAX_EPOCH': 1, 'EVAL.NUM_FID': 21})
    mp.start_processes(_ddp_worker, args=(2, _free_port(), argv), nprocs=2, start_method='spawn')
    (run,) = (setup / 'ddp').iterdir()
    (record,) = lines(run)
    assert record['images'] == 21 and record['epoch'] == 1
    # the same images in one process: the same scores (the generator after epoch 1 of the DDP run)
    from miscc.evaluation.in_training import TrainingEvaluator
    from miscc.training.gan import GANTrainer
    from miscc.cli import config_from_args, parse_args
    cfg_argv = overrides(setup, 'single', **{'TRAIN.MAX_EPOCH': 1, 'EVAL.NUM_FID': 21,
                                             'TRAIN.NET_G': run / 'models' / 'netG_001.pth'})
    trainer = GANTrainer(config_from_args(parse_args(cfg_argv, 'test')))
    trainer.netG.eval()
    again = trainer.evaluator.evaluate(trainer.netG)
    assert again['fid'] == pytest.approx(record['fid'], rel=1e-6)
    assert again['r_precision'] == pytest.approx(record['r_precision'], abs=1e-12)
    assert isinstance(trainer.evaluator, TrainingEvaluator)
