"""Checkpoint I/O: strict official-format loading, prefix stripping, clear errors, atomic saves."""
import json
import os
import pathlib

import re

import pytest
import torch
import torch.nn as nn

from miscc.core.checkpoint import (CheckpointError, companion_checkpoint, load_file, load_model_state,
                                   model_state_dict, save_atomic, strip_prefixes, trained_epochs)
from helpers import CodePayload
from models import NetD, NetG, RNN_ENCODER

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
OFFICIAL = json.loads((FIXTURES / 'official_state_dict_keys.json').read_text())['models']


def official_style_checkpoint(name, prefix='module.'):
    """A state dict with exactly the released keys and shapes (DataParallel prefix included)."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in OFFICIAL[name]:
        if key.endswith('num_batches_tracked'):
            state[prefix + key] = torch.tensor(7)
        else:
            state[prefix + key] = torch.randn(shape, generator=gen)
    return state


@pytest.mark.parametrize('name, build', [('NetG', lambda: NetG(64, 100)), ('NetD', lambda: NetD(64)),
                                         ('RNN_ENCODER', lambda: RNN_ENCODER(5450))])
def test_official_checkpoint_loads_strictly(tmp_path, name, build):
    state = official_style_checkpoint(name)
    path = tmp_path / f'{name}.pth'
    torch.save(state, path)
    model = build()
    load_model_state(model, str(path))
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key[len('module.'):]], value), key


def test_saved_state_dict_has_official_keys_without_prefix(tmp_path):
    g = NetG(8, 100, img_size=64)
    wrapped = nn.DataParallel(g)
    assert next(iter(wrapped.state_dict())).startswith('module.')
    path = tmp_path / 'netG_001.pth'
    save_atomic(model_state_dict(wrapped), str(path))
    state = torch.load(path, weights_only=True)
    assert list(state) == list(g.state_dict())
    fresh = NetG(8, 100, img_size=64)
    fresh.load_state_dict(state, strict=True)  # what the official code's NetG does


def test_strip_prefixes():
    state = {'module.a': 1, '_orig_mod.module.b': 2, 'c': 3}
    assert strip_prefixes(state) == {'a': 1, 'b': 2, 'c': 3}


def test_mismatch_error_lists_missing_unexpected_wrong_shape_and_file(tmp_path):
    model = NetG(8, 100, img_size=64)
    state = model.state_dict()
    state['fc.weight'] = torch.zeros(3, 3)
    del state['block0.gamma']
    state['block9.gamma'] = torch.zeros(1)
    path = tmp_path / 'bad.pth'
    torch.save(state, path)
    with pytest.raises(CheckpointError) as e:
        load_model_state(NetG(8, 100, img_size=64), str(path))
    msg = str(e.value)
    assert str(path) in msg
    assert 'missing keys (1): block0.gamma' in msg
    assert 'unexpected keys (1): block9.gamma' in msg
    assert 'fc.weight: checkpoint (3, 3) vs model (1024, 100)' in msg


def test_wrong_nf_gives_one_error_listing_first_few():
    small = NetD(4, img_size=64).state_dict()
    with pytest.raises(CheckpointError, match=r'wrong shapes \(\d+\):.*\(\+\d+ more\)'):
        load_model_state(NetD(8, img_size=64), small)
    # a state dict from inside a training state is named by its file and entry, on one line
    with pytest.raises(CheckpointError) as e:
        load_model_state(NetD(8, img_size=64), small, name='run/models/state_last.pth [netD]')
    msg = str(e.value)
    assert msg.startswith("'run/models/state_last.pth [netD]' does not match NetD; wrong shapes (")
    assert '\n' not in msg and 'TRAIN.NF' in msg


def test_empty_file_and_folder_are_named_as_such(tmp_path):
    (tmp_path / 'empty.pth').write_bytes(b'')
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint '{tmp_path / 'empty.pth'}' is empty (0 bytes)")):
        load_file(str(tmp_path / 'empty.pth'))
    (tmp_path / 'netG_001.pth').mkdir()
    with pytest.raises(CheckpointError, match=re.escape(f"'{tmp_path / 'netG_001.pth'}' is a folder, not a file")):
        load_file(str(tmp_path / 'netG_001.pth'))


class Payload:
    """Any non-tensor object: unpickling it could run code, so it is refused."""


def test_unsafe_missing_and_truncated_files(tmp_path):
    unsafe = tmp_path / 'unsafe.pth'
    torch.save({'x': Payload()}, unsafe)
    with pytest.raises(CheckpointError, match='weights_only'):
        load_file(str(unsafe))
    with pytest.raises(CheckpointError, match="'.*nothere.pth' not found"):
        load_file(str(tmp_path / 'nothere.pth'))
    good = tmp_path / 'good.pth'
    torch.save(NetD(2, img_size=64).state_dict(), good)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match='truncated.pth'):
        load_file(str(truncated))
    with pytest.raises(CheckpointError, match='not a state dict'):
        torch.save([1, 2], tmp_path / 'list.pth')
        load_model_state(NetD(2, img_size=64), str(tmp_path / 'list.pth'))


def test_a_crafted_file_is_refused_in_one_line_naming_it_without_running_code(tmp_path):
    crafted, marker = tmp_path / 'netG_001.pth', tmp_path / 'ran'
    torch.save({'fc.weight': torch.zeros(2), 'x': CodePayload(marker)}, crafted)
    with pytest.raises(CheckpointError) as e:
        load_file(str(crafted))
    message = str(e.value)
    # the CLI prints it as its one error line: torch's many lines of advice are left out,
    # including the one suggesting to allow-list the refused global
    assert '\n' not in message and str(crafted) in message and 'Unsupported global' in message
    assert 'add_safe_globals' not in message and not marker.exists()
    truncated = tmp_path / 'cut.pth'
    truncated.write_bytes(crafted.read_bytes()[:100])
    with pytest.raises(CheckpointError) as e:
        load_file(str(truncated))
    assert '\n' not in str(e.value) and str(truncated) in str(e.value)


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / 'netG_010.pth'
    save_atomic({'w': torch.ones(2)}, str(path))
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b'partial')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        save_atomic({'w': torch.zeros(2)}, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['netG_010.pth']  # no temporary file left behind


def test_epochs_and_companions_from_file_names(tmp_path):
    d = str(tmp_path)
    assert trained_epochs(f'{d}/netG_550.pth') == 550 and trained_epochs(f'{d}/netG_ema_120.pth') == 120
    assert trained_epochs(f'{d}/gen_0.pth') == 1          # the implementation counts epochs from 0
    assert trained_epochs(f'{d}/gen_49.pth') == 50
    for no_epoch in ('netG_best.pth', 'netG_step000437.pth', 'G.pth', 'gen_10.pt'):
        assert trained_epochs(f'{d}/{no_epoch}') is None
    assert companion_checkpoint(f'{d}/netG_550.pth', 'netD') == f'{d}/netD_550.pth'
    assert companion_checkpoint(f'{d}/netG_550.pth', 'text_encoder') == f'{d}/text_encoder_550.pth'
    assert companion_checkpoint(f'{d}/gen_9.pth', 'netD') == f'{d}/disc_9.pth'
    assert companion_checkpoint(f'{d}/gen_9.pth', 'text_encoder') is None
    assert companion_checkpoint(f'{d}/G.pth', 'netD') is None
