"""TRAIN.G_EMA's average (miscc/training/ema.py) on a hand-computed case; the training runs
with it are in test_gan_trainer.py."""
import pytest
import torch
import torch.nn as nn

from miscc.training.ema import GeneratorEMA, ema_decay


def tiny_net():
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))


def test_update_averages_parameters_and_float_buffers_and_copies_counters():
    torch.manual_seed(0)
    live = tiny_net()
    start = {k: v.clone() for k, v in live.state_dict().items()}
    ema = GeneratorEMA(tiny_net(), live, decay=0.75)
    assert all(torch.equal(v, start[k]) for k, v in ema.module.state_dict().items())
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    with torch.no_grad():
        for p in live.parameters():
            p.add_(1.0)
    live.train()
    live(torch.randn(4, 2))            # moves running_mean / running_var, num_batches_tracked -> 1
    now = live.state_dict()
    ema.update(live)
    got = ema.module.state_dict()
    for k in ('0.weight', '0.bias', '1.weight', '1.bias', '1.running_mean', '1.running_var'):
        assert torch.allclose(got[k], 0.75 * start[k] + 0.25 * now[k], atol=1e-7), k
    assert got['1.weight'][0].item() == pytest.approx(1.25)      # 0.75 * 1 + 0.25 * 2
    assert got['1.num_batches_tracked'].item() == 1
    assert ema.updates == 1
    # the live network is untouched by the update
    assert all(torch.equal(v, now[k]) for k, v in live.state_dict().items())


def test_rampup_decay_and_state_round_trip():
    assert ema_decay(0.999, 0, rampup=False) == 0.999
    assert ema_decay(0.999, 0, rampup=True) == pytest.approx(0.1)
    assert ema_decay(0.999, 90, rampup=True) == pytest.approx(91 / 100)
    assert ema_decay(0.999, 10 ** 6, rampup=True) == 0.999
    live = tiny_net()
    ema = GeneratorEMA(tiny_net(), live, decay=0.999, rampup=True)
    with torch.no_grad():
        live[0].weight.fill_(1.0)
    before = ema.module[0].weight.clone()
    ema.update(live)                   # first update: decay 0.1
    assert torch.allclose(ema.module[0].weight, 0.1 * before + 0.9, atol=1e-7)
    other = GeneratorEMA(tiny_net(), tiny_net(), decay=0.999, rampup=True)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and torch.equal(other.module[0].weight, ema.module[0].weight)
    with pytest.raises(ValueError, match='G_EMA_DECAY'):
        GeneratorEMA(tiny_net(), live, decay=1.0)
