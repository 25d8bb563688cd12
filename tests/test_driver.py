"""Training machinery: data order, per-sample seeding, states, sync BN, sampling helpers."""
import copy
import hashlib
import json
import os
import random
import re
import signal
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn

from helpers import set_driver_clock
from miscc.core.checkpoint import CheckpointError
from miscc.core.config import ConfigError
from miscc.data.errors import DataError
from miscc.training.driver import NonFiniteLossError, check_finite
from miscc.training.parallel import DataParallelBatchNorm2d, convert_batchnorm, link_replicas
from miscc.training.sampling import EpochBatchSampler, SeededSamples
from miscc.training.state import find_latest_state, load_training_state, read_progress, save_training_state
from miscc.evaluation.generation import mask_grid
from miscc.evaluation.outputs import caption_plan, generator_record, other_generator, resume_point
from miscc.families import noise_for
from miscc.core.runtime import make_run_dir, select_device


def test_epoch_sampler_is_a_permutation_per_epoch_and_resumes_mid_epoch():
    sampler = EpochBatchSampler(23, batch_size=4, seed=5)
    assert len(sampler) == 5  # last incomplete batch dropped
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    indices = [i for batch in epoch1 for i, _ in batch]
    assert len(indices) == 20 and len(set(indices)) == 20 and all(len(b) == 4 for b in epoch1)
    sampler.set_epoch(2)
    epoch2 = list(sampler)
    assert [i for b in epoch2 for i, _ in b] != indices          # reshuffled
    sampler.set_epoch(1)
    assert list(sampler) == epoch1                               # a function of (seed, epoch)
    sampler.set_epoch(1, start_batch=3)
    assert list(sampler) == epoch1[3:]                           # resume skips done batches
    seeds = [s for b in epoch1 for _, s in b]
    assert len(set(seeds)) == 20


def test_epoch_sampler_shards_over_ranks_without_overlap():
    ranks = [EpochBatchSampler(50, batch_size=3, seed=1, rank=r, world_size=2) for r in range(2)]
    assert [len(s) for s in ranks] == [8, 8]
    seen = [[i for b in s for i, _ in b] for s in ranks]
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(seen[1]) == 24
    single = EpochBatchSampler(50, batch_size=6, seed=1)
    # the two ranks together see exactly what one process with the global batch sees
    assert sorted(seen[0] + seen[1]) == sorted(i for b in single for i, _ in b)
    with pytest.raises(ValueError, match='no complete batch'):
        EpochBatchSampler(5, batch_size=3, seed=0, world_size=2)


class RandomItems(torch.utils.data.Dataset):
    """Each item draws from all three global generators, like augmentation code does."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return (i, random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_seeded_samples_are_reproducible_and_leave_global_rng_alone():
    data = SeededSamples(RandomItems())
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = data[(3, 1234)]
    after = torch.rand(1)
    assert torch.equal(before, after)            # the caller's stream is untouched
    assert data[(3, 1234)] == a                  # same (index, seed) -> same draw
    assert data[(3, 999)] != a
    loader = torch.utils.data.DataLoader(data, batch_sampler=[[(1, 7), (2, 8)]], num_workers=2)
    assert [tuple(x.tolist()) for x in next(iter(loader))] == [tuple(v) for v in zip(data[(1, 7)], data[(2, 8)])]


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    models = tmp_path / 'models'
    models.mkdir()
    path = save_training_state(str(models), {'w': torch.ones(2)},
                               {'epoch': 3, 'next_epoch': 4, 'next_step': 0, 'global_step': 30})
    expected = (random.random(), np.random.randn(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = load_training_state(path)             # restores all generators
    assert (random.random(), np.random.randn()) == expected[:2] and torch.equal(torch.rand(2), expected[2])
    assert torch.equal(state['w'], torch.ones(2))
    assert read_progress(path)['next_epoch'] == 4
    assert json.loads((models / 'state_last.json').read_text())['global_step'] == 30
    assert find_latest_state(str(tmp_path / '..'), 'nothing_') is None
    torch.save({'netG': {}}, tmp_path / 'other.pth')
    with pytest.raises(CheckpointError, match='not a training state'):
        load_training_state(str(tmp_path / 'other.pth'))


def test_find_latest_state(tmp_path):
    import datetime
    old = make_run_dir(str(tmp_path), 'birds', 'bird', datetime.datetime(2024, 1, 1))
    new = make_run_dir(str(tmp_path), 'birds', 'bird', datetime.datetime(2024, 1, 2))
    for run in (old, new):
        save_training_state(f'{run}/models', {}, {'epoch': 1, 'next_epoch': 2, 'next_step': 0, 'global_step': 1})
    assert find_latest_state(str(tmp_path), 'birds_bird_') == f'{new}/models/state_last.pth'
    assert sorted(p.name for p in (tmp_path / old.split('/')[-1]).iterdir()) == ['log', 'models', 'samples']


def test_non_finite_losses_raise_with_step_and_values():
    check_finite({'errD': 1.0, 'errG': -2.0}, 1, 5, 5)
    with pytest.raises(NonFiniteLossError, match=r'epoch 2, step 7 \(global step 17\): errD=nan, errG=-2'):
        check_finite({'errD': float('nan'), 'errG': -2.0}, 2, 7, 17)


def test_select_device_on_cpu_machine():
    assert select_device('cpu').device.type == 'cpu'
    assert select_device('auto', cuda=False).device.type == 'cpu'
    assert select_device('auto', gpu_id=-1).device.type == 'cpu'
    if not torch.cuda.is_available():
        assert select_device('auto').device.type == 'cpu'
        for device in ('cuda:0,1', 'cuda:7'):        # a ConfigError: one line, exit code 2
            with pytest.raises(ConfigError, match=f"DEVICE='{device}' asks for a GPU, but CUDA is not available"):
                select_device(device)
    with pytest.raises(ConfigError, match="DEVICE must be 'auto', 'cpu', 'cuda'.*got 'gpu'"):
        select_device('gpu')


def test_dataparallel_batchnorm_equals_full_batch_batchnorm():
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(4)
    nn.init.normal_(reference.weight), nn.init.normal_(reference.bias)
    net = convert_batchnorm(nn.Sequential(nn.Identity(), copy.deepcopy(reference)), DataParallelBatchNorm2d)
    layer = net[1]
    assert isinstance(layer, DataParallelBatchNorm2d) and list(net.state_dict()) == ['1.weight', '1.bias',
                                                                                     '1.running_mean', '1.running_var',
                                                                                     '1.num_batches_tracked']
    # Two replicas sharing parameters, each with its own buffers, as DataParallel makes them.
    replica = copy.copy(layer)
    replica.__dict__ = dict(layer.__dict__)
    replica._buffers = {k: v.clone() for k, v in layer._buffers.items()}
    link_replicas([layer, replica])
    x = torch.randn(7, 4, 3, 3) * 2 + 1
    parts = [x[:4].clone().requires_grad_(), x[4:].clone().requires_grad_()]
    outs = [None, None]
    threads = [threading.Thread(target=lambda i=i, m=m: outs.__setitem__(i, m(parts[i])))
               for i, m in enumerate([layer, replica])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    full = x.clone().requires_grad_()
    expected = reference(full)
    assert torch.allclose(torch.cat(outs), expected, atol=1e-5)
    grad = torch.randn_like(expected)
    torch.autograd.backward(outs, [grad[:4], grad[4:]])
    expected.backward(grad)
    assert torch.allclose(torch.cat([p.grad for p in parts]), full.grad, atol=1e-5)
    assert torch.allclose(layer.weight.grad, reference.weight.grad, atol=1e-5)
    assert torch.allclose(layer.running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(layer.running_var, reference.running_var, atol=1e-5)
    # outside DataParallel it is an ordinary BatchNorm2d
    plain = DataParallelBatchNorm2d(4)
    plain.load_state_dict(reference.state_dict())
    assert torch.allclose(plain.eval()(x), reference.eval()(x))


def test_caption_plan_cycles_keys_then_captions():
    plan = caption_plan(num_keys=3, captions_per_image=2, num=8)
    assert plan.tolist() == [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1], [0, 0], [1, 0]]
    assert caption_plan(3, 2, 8, start=5).tolist() == plan[5:].tolist()


def test_noise_depends_only_on_seed_and_image_number():
    a = noise_for(range(6), 10, seed=3)
    assert torch.equal(noise_for([4, 5], 10, seed=3), a[4:])
    assert not torch.equal(noise_for(range(6), 10, seed=4), a)


def test_mask_grid_layout():
    images = torch.full((2, 3, 8, 8), -1.0)
    images[1] = 1.0
    masks = [torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 8, 8)]
    grid = mask_grid(images, masks)
    assert grid.shape == (3, 16, 24)
    assert grid[:, :8, :8].max() == 0 and grid[:, 8:, :8].min() == 1     # images in column 0
    assert grid[:, :, 8:16].max() == 0 and grid[:, :, 16:].min() == 1   # then each mask


class FakeTestSet:
    filenames = ['a', 'b', 'c']
    embeddings_num = 2


def test_resume_point_checks_the_manifest(tmp_path):
    assert resume_point(str(tmp_path / 'new'), FakeTestSet(), 10) == 0
    lines = [{'file': f'img_s{n}.png', 'mask': f'fm_{n}.png', 'key': FakeTestSet.filenames[n % 3],
              'caption_index': (n // 3) % 2, 'caption': 'x'} for n in range(4)]
    (tmp_path / 'manifest.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in lines) + '{"file": "img_s4')
    assert resume_point(str(tmp_path), FakeTestSet(), 10) == 4
    assert len((tmp_path / 'manifest.jsonl').read_text().splitlines()) == 4  # cut line removed
    with pytest.raises(FileExistsError, match='more than SAMPLE.NUM=3'):
        resume_point(str(tmp_path), FakeTestSet(), 3)
    lines[2]['key'] = 'zzz'
    (tmp_path / 'manifest.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in lines))
    with pytest.raises(FileExistsError, match='other settings \\(line 3\\)'):
        resume_point(str(tmp_path), FakeTestSet(), 10)
    stray = tmp_path / 'stray'
    stray.mkdir()
    (stray / 'x.png').write_bytes(b'')
    with pytest.raises(FileExistsError, match='no manifest.jsonl'):
        resume_point(str(stray), FakeTestSet(), 10)


def test_resume_point_checks_the_generator(tmp_path):
    g1, g2 = tmp_path / 'netG_001.pth', tmp_path / 'netG_002.pth'
    g1.write_bytes(b'one')
    g2.write_bytes(b'two')
    out = tmp_path / 'valid'
    assert resume_point(str(out), FakeTestSet(), 10, generator=str(g1)) == 0
    record = generator_record(str(out))
    assert record == {'generator': str(g1), 'sha256': hashlib.sha256(b'one').hexdigest()}
    lines = [{'file': f'img_s{n}.png', 'mask': f'fm_{n}.png', 'key': FakeTestSet.filenames[n % 3],
              'caption_index': (n // 3) % 2, 'caption': 'x'} for n in range(2)]
    (out / 'manifest.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in lines))
    assert resume_point(str(out), FakeTestSet(), 10, generator=str(g1)) == 2
    copy = tmp_path / 'copy.pth'                 # the same weights under another name continue
    copy.write_bytes(b'one')
    assert resume_point(str(out), FakeTestSet(), 10, generator=str(copy)) == 2
    assert other_generator(str(out), str(copy)) is None
    assert other_generator(str(out), str(g2)) == f"'{g1}'"
    with pytest.raises(FileExistsError, match="holds images of '.*netG_001.pth', not of '.*netG_002.pth'"):
        resume_point(str(out), FakeTestSet(), 10, generator=str(g2))
    g1.write_bytes(b'another generator')        # replaced under the same name: said once, with both hashes
    with pytest.raises(FileExistsError) as caught:
        resume_point(str(out), FakeTestSet(), 10, generator=str(g1))
    assert str(caught.value).startswith(
        f"'{out}' holds images of an earlier version of that file (replaced since: SHA-256 "
        f"{hashlib.sha256(b'one').hexdigest()[:12]}... then, {hashlib.sha256(b'another generator').hexdigest()[:12]}"
        f"... now), not of '{g1}'")                                # was "of '<g1>', not of '<g1>'"
    (out / 'generator.json').unlink()
    with pytest.raises(FileExistsError, match='holds images of an unrecorded generator'):
        resume_point(str(out), FakeTestSet(), 10, generator=str(g1))


# ----------------------------------------------------------------------------- the driver
class _Items(torch.utils.data.Dataset):
    """Items shaped like TextDataset's: (image, caption, length, class id, key)."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), torch.zeros(3, dtype=torch.long), 1, 0, f'k{i}'


class _ToyTrainer:
    """The driver's protocol around one weight: each step adds the batch mean and a random draw."""
    kind, name, net_key, postfix_losses = 'gan', '', 'TRAIN.NET_G', ()

    def __init__(self):
        self.w = torch.zeros(())
        self.epochs, self.summaries, self.loaded = [], [], None

    def describe(self, steps):
        return f'{steps} steps'

    def begin_epoch(self, epoch, first):
        self.epochs.append((epoch, first))

    def train_step(self, batch):
        self.w += batch.images.mean() + torch.rand(())
        return {'loss': float(self.w)}

    def step_scalars(self):
        return {'lr': 0.1}

    def end_of_epoch(self, summary):
        self.summaries.append(summary)

    def state_dict(self):
        return {'w': self.w.clone(), 'finetune': False}

    def load_state_dict(self, state):
        self.w, self.loaded = state['w'].clone(), state

    def progress_fields(self):
        return {'finetune': False}


def _toy_run(tmp_path, start=None, **keys):
    from datasets import collate_sorted
    from miscc.core.config import load_config
    from miscc.training.driver import Driver
    from miscc.training.state import StartPoint
    over = {'OUTPUT_DIR': tmp_path, 'DATASET_NAME': 'birds', 'CONFIG_NAME': 'toy', 'TRAIN.MAX_EPOCH': 3,
            'TRAIN.LOG_INTERVAL': 1, 'WORKERS': 0, **keys}
    cfg = load_config(None, [f'{k}={v}' for k, v in over.items()])
    trainer = _ToyTrainer()
    torch.manual_seed(0)
    driver = Driver(cfg, trainer, _Items(), collate_sorted, 4, start or StartPoint(), torch.device('cpu'))
    return trainer, driver, driver.fit()


def test_driver_runs_epochs_and_writes_the_state(tmp_path):
    trainer, driver, run = _toy_run(tmp_path)
    assert trainer.epochs == [(1, 0), (2, 0), (3, 0)] and driver.global_step == 6   # 10 items: 2 batches of 4
    assert [s.epoch for s in trainer.summaries] == [1, 2, 3] and all(s.steps == 2 for s in trainer.summaries)
    assert read_progress(f'{run}/models/state_last.pth') == {'epoch': 3, 'next_epoch': 4, 'next_step': 0,
                                                             'global_step': 6, 'finetune': False}
    state = load_training_state(f'{run}/models/state_last.pth')
    assert state['kind'] == 'gan' and torch.equal(state['w'], trainer.w)


def test_driver_stop_and_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    from miscc.training.driver import RunLogger
    from miscc.training.state import resolve_start_point
    from miscc.core.config import load_config
    closed = []
    monkeypatch.setattr(RunLogger, 'close', lambda self: closed.append(True))
    full, _, _ = _toy_run(tmp_path / 'full')
    part, _, run = _toy_run(tmp_path / 'part', **{'TRAIN.MAX_STEPS': 3})
    assert closed == [True, True]                        # the logger is closed on an early stop too
    assert read_progress(f'{run}/models/state_last.pth')['next_step'] == 1
    cfg = load_config(None, [f'OUTPUT_DIR={tmp_path / "part"}', 'DATASET_NAME=birds', 'CONFIG_NAME=toy',
                             'RESTORE=True'])
    start = resolve_start_point(cfg, 'TRAIN.NET_G')
    assert start.kind == 'state'
    torch.manual_seed(123)                               # whatever came before, the state's RNG is used
    resumed, driver, run2 = _toy_run(tmp_path / 'part', start=start)
    assert run2 == run and resumed.epochs[0] == (2, 1)
    assert torch.equal(resumed.w, full.w) and driver.global_step == 6


def test_driver_refuses_a_state_of_another_kind(tmp_path):
    from miscc.core.config import ConfigError
    from miscc.training.state import StartPoint
    _, _, run = _toy_run(tmp_path)
    state = load_training_state(f'{run}/models/state_last.pth')
    state['kind'] = 'damsm'
    torch.save(state, tmp_path / 'damsm_state.pth')
    with pytest.raises(ConfigError, match="is a damsm training state, not a gan one; resume it with pretrain_DAMSM.py"):
        _toy_run(tmp_path, start=StartPoint('state', str(tmp_path / 'damsm_state.pth')))


# ----------------------------------------------------------------------------- faults: signals, stops, disk
def _config(tmp_path, **keys):
    from miscc.core.config import load_config
    over = {'OUTPUT_DIR': tmp_path, 'DATASET_NAME': 'birds', 'CONFIG_NAME': 'toy', 'TRAIN.MAX_EPOCH': 3,
            'TRAIN.LOG_INTERVAL': 1, 'WORKERS': 0, **keys}
    return load_config(None, [f'{k}={v}' for k, v in over.items()])


def _restore_start(tmp_path):
    from miscc.training.state import resolve_start_point
    return resolve_start_point(_config(tmp_path, RESTORE=True), 'TRAIN.NET_G')


class _SignallingTrainer(_ToyTrainer):
    """Sends itself ``signals`` (signal numbers) at global step ``at`` (counted from 1)."""

    def __init__(self, at, signals):
        super().__init__()
        self.at, self.signals, self.count = at, signals, 0

    def train_step(self, batch):
        out = super().train_step(batch)
        self.count += 1
        if self.count == self.at:
            for sig in self.signals:
                os.kill(os.getpid(), sig)
        return out


def _driver(tmp_path, trainer, start=None, **keys):
    from datasets import collate_sorted
    from miscc.training.driver import Driver
    from miscc.training.state import StartPoint
    torch.manual_seed(0)
    return Driver(_config(tmp_path, **keys), trainer, _Items(), collate_sorted, 4, start or StartPoint(),
                  torch.device('cpu'))


def test_sigterm_mid_epoch_saves_says_where_and_resumes_exactly(tmp_path):
    from miscc.training.signals import TrainingInterrupted
    full, _, _ = _toy_run(tmp_path / 'full')
    driver = _driver(tmp_path / 'part', _SignallingTrainer(3, [signal.SIGTERM]))
    with pytest.raises(TrainingInterrupted) as caught:
        driver.fit()
    e = caught.value
    assert e.exit_code == 143 and e.signum == signal.SIGTERM
    run = driver.run_dir
    assert str(e) == (f'interrupted by SIGTERM at epoch 2, step 1 of 2: training state saved in {run}/models; '
                      f'resume with RESTORE=True TRAIN.NET_G={run}')
    assert read_progress(f'{run}/models/state_last.pth')['next_step'] == 1
    resumed = _ToyTrainer()
    torch.manual_seed(99)
    _driver(tmp_path / 'part', resumed, start=_restore_start(tmp_path / 'part')).fit()
    assert torch.equal(resumed.w, full.w)


def test_signals_during_the_end_of_epoch_save_let_it_complete_and_exit_interrupted(tmp_path, monkeypatch):
    """SIGINT then SIGTERM while state_last.pth is written: the write completes, the run says it was
    interrupted at the end of the epoch (130), and the saved state is that epoch's."""
    import miscc.training.driver as driver_module
    from miscc.training.signals import TrainingInterrupted
    real_save = driver_module.save_training_state
    calls = []

    def save_while_signalled(models_dir, state, progress, **kw):
        calls.append(progress)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)   # a second signal: would stop at once outside a save
        return real_save(models_dir, state, progress, **kw)
    monkeypatch.setattr(driver_module, 'save_training_state', save_while_signalled)
    driver = _driver(tmp_path, _ToyTrainer())
    with pytest.raises(TrainingInterrupted, match=r'^interrupted by SIGINT at the end of epoch 1 of 3: training '
                                                  r'state saved in .*RESTORE=True') as caught:
        driver.fit()
    assert caught.value.exit_code == 130 and len(calls) == 1
    state = load_training_state(f'{driver.run_dir}/models/state_last.pth', restore_rng=False)
    assert state['progress']['epoch'] == 1 and state['progress']['next_step'] == 0
    assert read_progress(f'{driver.run_dir}/models/state_last.pth') == state['progress']   # .json matches .pth
    assert [n for n in os.listdir(f'{driver.run_dir}/models') if n.endswith('.tmp')] == []


def test_a_second_signal_mid_step_stops_at_once_and_keeps_the_saved_state(tmp_path):
    from miscc.training.signals import TrainingInterrupted
    _toy_run(tmp_path, **{'TRAIN.MAX_STEPS': 2})           # a state after epoch 1
    before = read_progress(str(find_latest_state(str(tmp_path), 'birds_toy_')))
    driver = _driver(tmp_path, _SignallingTrainer(1, [signal.SIGINT, signal.SIGINT]),
                     start=_restore_start(tmp_path))
    with pytest.raises(TrainingInterrupted, match=r'interrupted again by SIGINT at epoch 2, step 0 of 2: stopped '
                                                  r'at once without saving; the last training state in .* \(from '
                                                  r'the start of epoch 2\) is intact') as caught:
        driver.fit()
    assert caught.value.exit_code == 130
    assert read_progress(f'{driver.run_dir}/models/state_last.pth') == before


def test_max_steps_is_a_requested_stop_that_returns(tmp_path, capsys):
    _, driver, run = _toy_run(tmp_path, **{'TRAIN.MAX_STEPS': 2})
    out = capsys.readouterr().out
    assert f'stopped after epoch 1 (TRAIN.MAX_STEPS=2); training state saved in {run}/models; resume with' in out
    assert read_progress(f'{run}/models/state_last.pth')['next_epoch'] == 2


def test_restoring_a_finished_run_says_so_and_trains_nothing(tmp_path, capsys):
    _, _, run = _toy_run(tmp_path)
    capsys.readouterr()
    trainer = _ToyTrainer()
    driver = _driver(tmp_path, trainer, start=_restore_start(tmp_path))
    assert driver.fit() == run
    assert capsys.readouterr().out == (f'{run} is already finished: epoch 3 of TRAIN.MAX_EPOCH=3; nothing to '
                                       f'train (raise TRAIN.MAX_EPOCH to train it further)\n')
    assert trainer.epochs == []


@pytest.mark.parametrize('value', [0, -2])
def test_max_epoch_below_one_is_a_config_error_before_any_folder(tmp_path, value):
    from miscc.core.config import ConfigError
    with pytest.raises(ConfigError, match=f'TRAIN.MAX_EPOCH={value}: the number of epochs'):
        _driver(tmp_path / 'out', _ToyTrainer(), **{'TRAIN.MAX_EPOCH': value})
    assert not (tmp_path / 'out').exists()


def test_a_batch_larger_than_the_data_set_is_a_config_error_before_any_folder(tmp_path):
    from datasets import collate_sorted
    from miscc.training.driver import Driver
    from miscc.training.state import StartPoint
    with pytest.raises(ConfigError, match=r'TRAIN.BATCH_SIZE=16: 10 samples make no complete batch of 16 .* '
                                          r'lower TRAIN.BATCH_SIZE'):   # was a ValueError traceback
        Driver(_config(tmp_path / 'out', **{'TRAIN.BATCH_SIZE': 16}), _ToyTrainer(), _Items(), collate_sorted, 16,
               StartPoint(), torch.device('cpu'))
    assert not (tmp_path / 'out').exists()


def test_bad_devices_and_caption_files_are_one_line_with_exit_code_2(tmp_path, capsys):
    from miscc.cli import gan_main
    base = ['--cfg', 'cfg/bird.yml', f'OUTPUT_DIR={tmp_path / "out"}']
    assert gan_main(False, base + ['DEVICE=gpu']) == 2
    assert capsys.readouterr().err == ("main.py: error: DEVICE must be 'auto', 'cpu', 'cuda', 'cuda:N' or "
                                       "'cuda:N,M,...', got 'gpu'\n")
    captions = tmp_path / 'captions.txt'
    captions.write_bytes(b'a red bird\na bl\xe9ue bird\n')          # Latin-1, not UTF-8
    assert gan_main(False, base + ['B_VALIDATION=True', '--captions', str(captions)]) == 2
    assert capsys.readouterr().err == (f"main.py: error: captions file '{captions}' line 2: byte b'\\xe9' is "
                                       f"not UTF-8; save the file as UTF-8\n")   # was a UnicodeDecodeError
    assert not (tmp_path / 'out').exists()


class _BadItem(_Items):
    def __getitem__(self, i):
        if i == 3:
            raise DataError("cannot read image 'images/k3.jpg' (key 'k3'): truncated")
        return super().__getitem__(i)


@pytest.mark.parametrize('workers', [0, 1])
def test_a_data_error_mid_epoch_keeps_its_one_line_from_a_worker_too(tmp_path, workers):
    from datasets import collate_sorted
    from miscc.training.driver import Driver
    from miscc.training.state import StartPoint
    driver = Driver(_config(tmp_path, WORKERS=workers), _ToyTrainer(), _BadItem(), collate_sorted, 4, StartPoint(),
                    torch.device('cpu'))
    with pytest.raises(DataError) as caught:
        driver.fit()
    # a worker's error came back as "Caught DataError in DataLoader worker process 0. Original Traceback ..."
    assert str(caught.value) == "cannot read image 'images/k3.jpg' (key 'k3'): truncated"


def test_an_output_dir_in_the_way_is_a_config_error_at_set_up(tmp_path):
    (tmp_path / 'afile').write_text('x')
    with pytest.raises(ConfigError, match=re.escape(f"OUTPUT_DIR='{tmp_path / 'afile'}': '{tmp_path / 'afile'}' is a "
                                                    f"file, not a folder")):
        _driver(tmp_path / 'afile', _ToyTrainer())          # was a NotADirectoryError traceback in fit()
    _, _, run = _toy_run(tmp_path / 'out', **{'TRAIN.MAX_STEPS': 2})
    os.rmdir(f'{run}/samples')
    open(f'{run}/samples', 'w').close()                      # a resumed run checks its own folders
    with pytest.raises(ConfigError, match=re.escape(f"'{run}/samples' is a file, not a folder")):
        _driver(tmp_path / 'out', _ToyTrainer(), start=_restore_start(tmp_path / 'out'))


def test_the_run_folder_is_made_by_fit_not_by_the_set_up(tmp_path):
    driver = _driver(tmp_path / 'out', _ToyTrainer())
    assert driver.run_dir is None and not (tmp_path / 'out').exists()   # a set-up that fails leaves nothing
    run = driver.fit()
    assert os.path.isfile(f'{run}/models/state_last.pth')


def test_stale_temp_files_are_removed_when_the_run_continues(tmp_path, capsys):
    _, _, run = _toy_run(tmp_path, **{'TRAIN.MAX_STEPS': 3})
    stale = [f'{run}/models/.state_last.pth.ab12_x9z.tmp', f'{run}/models/.netG_002.pth.0000aaaa.tmp']
    kept = [f'{run}/models/notes.tmp', f'{run}/models/.hidden.txt']   # not the project's temp-file pattern
    for path in stale + kept:
        open(path, 'wb').close()
    capsys.readouterr()
    _driver(tmp_path, _ToyTrainer(), start=_restore_start(tmp_path)).fit()
    out = capsys.readouterr().out
    assert 'removed 2 temporary file(s) of an unfinished earlier write' in out
    assert not any(os.path.exists(p) for p in stale) and all(os.path.exists(p) for p in kept)


def test_a_run_folder_holding_only_a_temp_file_is_trained_as_new(tmp_path, capsys):
    """kill -9 during the first save leaves models/ with one temp file: RESTORE=True (or
    TRAIN.NET_G=<folder>) trains that folder from epoch 1 instead of failing."""
    from miscc.core.runtime import make_run_dir
    run = make_run_dir(str(tmp_path), 'birds', 'toy')
    open(f'{run}/models/.state_last.pth.k2j4h5g6.tmp', 'wb').close()
    start = _restore_start(tmp_path)
    assert (start.kind, start.path) == ('new', run)
    full, _, _ = _toy_run(tmp_path / 'full')
    trainer = _ToyTrainer()
    assert _driver(tmp_path, trainer, start=start).fit() == run
    assert 'holds no completed training state' in capsys.readouterr().out
    assert sorted(os.listdir(f'{run}/models')) == ['state_last.json', 'state_last.pth']
    assert torch.equal(trainer.w, full.w) and trainer.epochs[0] == (1, 0)
    from miscc.training.state import resolve_start_point
    assert resolve_start_point(_config(tmp_path / 'x', **{'TRAIN.NET_G': run}), 'TRAIN.NET_G').kind == 'state'


def test_a_full_disk_while_saving_names_the_file_and_keeps_the_last_state(tmp_path, monkeypatch):
    import errno
    import miscc.core.checkpoint
    from miscc.core.files import DiskFullError
    _, _, run = _toy_run(tmp_path, **{'TRAIN.MAX_STEPS': 2})
    before = open(f'{run}/models/state_last.pth', 'rb').read()

    def full_disk_save(obj, f):
        f.write(b'\0' * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(miscc.core.checkpoint.torch, 'save', full_disk_save)
    with pytest.raises(DiskFullError) as caught:
        _driver(tmp_path, _ToyTrainer(), start=_restore_start(tmp_path)).fit()
    assert str(caught.value).startswith(f"disk full: could not write '{run}/models/state_last.pth' "
                                        f"(No space left on device); the previous file is intact")
    assert open(f'{run}/models/state_last.pth', 'rb').read() == before
    assert sorted(os.listdir(f'{run}/models')) == ['state_last.json', 'state_last.pth']


def test_the_command_line_exit_codes_of_training(capsys):
    import errno
    from miscc.cli import _train
    from miscc.core.files import DiskFullError
    from miscc.core.runtime import DistributedError
    from miscc.training.signals import TrainingInterrupted

    def raising(error):
        def fit():
            raise error
        return fit
    assert _train('main.py', lambda: 'run') == 0
    assert _train('main.py', raising(TrainingInterrupted('interrupted by SIGINT at ...', signal.SIGINT))) == 130
    assert capsys.readouterr().err == 'main.py: interrupted by SIGINT at ...\n'
    assert _train('main.py', raising(TrainingInterrupted('x', signal.SIGTERM, show=False))) == 143
    assert capsys.readouterr().err == ''                     # other ranks leave the line to rank 0
    assert _train('main.py', raising(DiskFullError(errno.ENOSPC, "disk full: could not write 'f'"))) == 3
    assert capsys.readouterr().err == "main.py: error: disk full: could not write 'f'\n"
    assert _train('main.py', raising(DistributedError('another process ...'))) == 3


def test_each_rank_resumes_with_its_own_generators_and_another_world_size_warns(tmp_path):
    """The state holds every rank's RNG (rng_ranks, world_size); rank r restores its own. A state of
    another number of processes, or one with rank 0's generators only, continues with a warning."""
    import warnings
    from datasets import collate_sorted
    from miscc.core.runtime import DistEnv, rng_state
    from miscc.training.driver import Driver
    from miscc.training.state import StartPoint
    models = tmp_path / 'run' / 'models'
    per_rank = []
    for seed in (10, 11):
        torch.manual_seed(seed)
        per_rank.append(rng_state())
    progress = {'epoch': 1, 'next_epoch': 2, 'next_step': 0, 'global_step': 1}
    path = save_training_state(str(models), {'w': torch.zeros(()), 'kind': 'gan'}, progress, rank_rngs=per_rank)

    def driver_for(rank, world):
        return Driver(_config(tmp_path), _ToyTrainer(), _Items(), collate_sorted, 2, StartPoint('state', path),
                      torch.device('cpu'), DistEnv(rank=rank, world_size=world, local_rank=rank))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for rank in (0, 1):
            assert torch.equal(driver_for(rank, 2).rng['torch'], per_rank[rank]['torch'])
    with pytest.warns(UserWarning, match=r'was written by 2 process\(es\), and this run has 3: .* will not equal '
                                         r'an uninterrupted run; resume with 2 process\(es\)'):
        driver_for(0, 3)
    save_training_state(str(models), {'w': torch.zeros(()), 'kind': 'gan'}, progress)   # rank 0's only
    with pytest.warns(UserWarning, match='records the random generators of one process only'):
        assert driver_for(0, 2).rng is not None
    assert driver_for(1, 2).rng is None      # rank 1 keeps its own seeded stream, not rank 0's draws


# ----------------------------------------------------------------------------- deadlines
class _CountingTrainer(_ToyTrainer):
    """Counts its steps; ``clock`` (the driver's time.time in these tests) reads that count."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def train_step(self, batch):
        self.count += 1
        return super().train_step(batch)


def _step_clock(monkeypatch, trainer):
    """The driver's clock becomes the trainer's step count: a deadline of N passes at step N."""
    set_driver_clock(lambda: trainer.count, monkeypatch)


def _state_bits(run):
    state = load_training_state(f'{run}/models/state_last.pth', restore_rng=False)
    return state['w'], state['progress'], state['rng']


def _same_rng(a, b):
    assert a['python'] == b['python'] and torch.equal(a['torch'], b['torch'])
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a['numpy'], b['numpy']))


@pytest.mark.parametrize('steps', [3, 2])     # mid-epoch 2, and at the end of epoch 1
def test_a_deadline_stops_like_max_steps_with_the_same_state_and_resumes_exactly(tmp_path, monkeypatch, capsys,
                                                                                  steps):
    full, _, _ = _toy_run(tmp_path / 'full')
    _, limited, limited_run = _toy_run(tmp_path / 'limited', **{'TRAIN.MAX_STEPS': steps})
    assert not limited.deadline_cut
    trainer = _CountingTrainer()
    driver = _driver(tmp_path / 'cut', trainer)
    _step_clock(monkeypatch, trainer)
    saves = []
    capsys.readouterr()
    run = driver.fit(deadline=float(steps), on_save=saves.append)
    out = capsys.readouterr().out
    where = 'at epoch 2, step 1' if steps == 3 else 'after epoch 1'
    assert f'stopped {where} (the deadline passed); training state saved in {run}/models' in out
    assert driver.deadline_cut and driver.global_step == trainer.count == steps
    (w_cut, progress_cut, rng_cut), (w_lim, progress_lim, rng_lim) = _state_bits(run), _state_bits(limited_run)
    assert torch.equal(w_cut, w_lim) and progress_cut == progress_lim
    _same_rng(rng_cut, rng_lim)
    assert saves == ([{'epoch': 1, 'next_epoch': 2, 'next_step': 0, 'global_step': 2, 'finetune': False}]
                     + ([progress_cut] if steps == 3 else []))     # on_save: after every state written
    monkeypatch.undo()
    resumed = _ToyTrainer()
    _driver(tmp_path / 'cut', resumed, start=_restore_start(tmp_path / 'cut')).fit()
    assert torch.equal(resumed.w, full.w)


def test_a_deadline_already_passed_trains_one_step_and_one_at_the_last_step_cuts_nothing(tmp_path, monkeypatch):
    trainer = _CountingTrainer()
    driver = _driver(tmp_path / 'past', trainer)
    _step_clock(monkeypatch, trainer)
    driver.fit(deadline=-1.0)
    assert driver.deadline_cut and trainer.count == 1        # the deadline is checked after each step
    trainer = _CountingTrainer()
    driver = _driver(tmp_path / 'last', trainer)
    _step_clock(monkeypatch, trainer)
    run = driver.fit(deadline=6.0)                            # passes at the run's last step (3 epochs x 2)
    assert not driver.deadline_cut and trainer.count == 6
    assert read_progress(f'{run}/models/state_last.pth')['epoch'] == 3


def _agree_worker(rank, world, store, out):
    """One rank of a gloo group: rank 1's clock passes its deadline at step 1, rank 0's never."""
    import torch.distributed as dist
    from datasets import collate_sorted
    from miscc.core.runtime import DistEnv
    from miscc.training.driver import Driver
    from miscc.training.signals import StopFlag
    from miscc.training.state import StartPoint
    torch.set_num_threads(1)
    import datetime   # ranks that disagree fail at their next collective within a minute, not hang
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    with StopFlag() as flag:
        agreed = [flag.agreed(True, torch.device('cpu'), late=late) for late in (False, rank == 1)]
    trainer = _CountingTrainer()
    set_driver_clock(lambda: trainer.count if rank == 1 else 0)
    driver = Driver(_config(out), trainer, _Items(), collate_sorted, 2, StartPoint(), torch.device('cpu'),
                    DistEnv(rank=rank, world_size=world, local_rank=rank))
    driver.fit(deadline=1.0)
    torch.save({'agreed': agreed, 'steps': trainer.count, 'cut': driver.deadline_cut},
               os.path.join(out, f'rank{rank}.pth'))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_a_deadline_that_one_clock_passed(tmp_path):
    import torch.multiprocessing as mp
    mp.start_processes(_agree_worker, args=(2, str(tmp_path / 'store'), str(tmp_path)), nprocs=2,
                       start_method='spawn')
    results = [torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in range(2)]
    for r in results:
        assert r['agreed'] == [(0, False), (0, True)]        # either rank late: both learn it
        assert r['steps'] == 1 and r['cut']                  # and both stop after the same step
    (state,) = list(tmp_path.glob('birds_toy_*/models/state_last.pth'))
    assert read_progress(str(state))['global_step'] == 1
