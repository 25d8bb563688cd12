"""Config: defaults, YAML merge, KEY=VALUE overrides and their errors."""
import pathlib
import re

import pytest

from miscc.core.config import (CHOICES, DEFAULTS, OFFICIAL_UNUSED, ConfigError, default_config, load_config,
                               parse_overrides)
from miscc.families import FAMILIES
from models.generator import MASK_MODES

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The official release's cfg/bird.yml, verbatim (keys and values), which must load unchanged.
OFFICIAL_BIRD_YML = """\
CONFIG_NAME: 'bird_sloss01'

DATASET_NAME: 'birds'
DATA_DIR: 'data/birds'
GPU_ID: 0
WORKERS: 1


B_VALIDATION: True # True  # False
RESTORE: False
loss: 'hinge'

TREE:
    BRANCH_NUM: 1
    BASE_SIZE: 256


TRAIN:
    NF: 64 # default 64
    BATCH_SIZE: 24 #24
    MAX_EPOCH: 600
    NET_G: '' # when validation, put the path of the trained model here
    WARMUP_EPOCHS: 100
    GSAVE_INTERVAL: 10
    DSAVE_INTERVAL: 10


TEXT:
    EMBEDDING_DIM: 256
    CAPTIONS_PER_IMAGE: 10
    DAMSM_NAME: 'DAMSMencoders/bird/text_encoder200.pth'
"""


def write(tmp_path, text, name='c.yml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_are_the_official_training_values():
    cfg = default_config()
    assert cfg.TRAIN.SMOOTH.GAMMA1 == 5.0 and cfg.TRAIN.SMOOTH.GAMMA2 == 5.0
    assert cfg.TRAIN.SMOOTH.GAMMA3 == 10.0 and cfg.TRAIN.SMOOTH.LAMBDA == 1.0
    assert cfg.TRAIN.GENERATOR_LR == 1e-4 and cfg.TRAIN.DISCRIMINATOR_LR == 4e-4
    assert (cfg.TRAIN.BETA1, cfg.TRAIN.BETA2) == (0.0, 0.9)
    assert (cfg.TRAIN.MAGP_P, cfg.TRAIN.MAGP_K) == (6.0, 2.0)
    assert cfg.TRAIN.LAMBDA_DA == 0.05 and cfg.TRAIN.FINETUNE.LAMBDA_DA == 0.1
    assert cfg.TRAIN.FINETUNE.ENCODER_LR == 4e-5
    assert cfg.TEXT.WORDS_NUM == 18 and cfg.TEXT.EMBEDDING_DIM == 256
    assert cfg.TEXT.CAPTIONS_PER_IMAGE == 10 and cfg.GAN.Z_DIM == 100
    assert cfg.RNN_TYPE == 'LSTM' and cfg.SEED == 100
    assert cfg.TRAIN.RNN_GRAD_CLIP == 0.25


def test_bird_and_coco_configs_carry_the_official_values():
    bird = load_config(str(ROOT / 'cfg/bird.yml'))
    assert (bird.TRAIN.NF, bird.TRAIN.BATCH_SIZE, bird.TRAIN.MAX_EPOCH) == (64, 24, 600)
    assert (bird.TRAIN.WARMUP_EPOCHS, bird.TRAIN.GSAVE_INTERVAL, bird.TRAIN.DSAVE_INTERVAL) == (100, 10, 10)
    assert bird.TEXT.CAPTIONS_PER_IMAGE == 10 and bird.TREE.BASE_SIZE == 256
    assert bird.TEXT.DAMSM_NAME == 'DAMSMencoders/bird/text_encoder200.pth'
    assert bird.B_VALIDATION is False and bird.DATA_DIR == 'data/birds'
    coco = load_config(str(ROOT / 'cfg/coco.yml'))
    assert (coco.TRAIN.NF, coco.TRAIN.BATCH_SIZE, coco.TRAIN.MAX_EPOCH) == (64, 24, 120)
    assert (coco.TRAIN.WARMUP_EPOCHS, coco.TRAIN.GSAVE_INTERVAL, coco.TRAIN.DSAVE_INTERVAL) == (0, 5, 10)
    assert coco.TEXT.CAPTIONS_PER_IMAGE == 5
    assert coco.TEXT.DAMSM_NAME == 'DAMSMencoders/coco/text_encoder100.pth'


def test_every_shipped_config_loads():
    files = sorted(str(p) for p in (ROOT / 'cfg').rglob('*.yml'))
    assert len(files) >= 2
    for path in files:
        load_config(path)


def test_official_yaml_loads_unchanged(tmp_path):
    cfg = load_config(write(tmp_path, OFFICIAL_BIRD_YML))
    assert cfg.CONFIG_NAME == 'bird_sloss01' and cfg.B_VALIDATION is True
    assert cfg.TREE.BRANCH_NUM == 1 and cfg.WORKERS == 1 and cfg.loss == 'hinge'


def test_unused_official_keys_are_apart_from_the_defaults_and_read_nowhere():
    def flat(tree, prefix=''):
        for key, value in tree.items():
            yield from flat(value, f'{prefix}{key}.') if isinstance(value, dict) else [prefix + key]
    unused, working = set(flat(OFFICIAL_UNUSED)), set(flat(DEFAULTS))
    assert len(unused) == 11 and not unused & working
    assert set(flat(default_config().to_dict())) == unused | working
    sources = [p for p in ROOT.rglob('*.py') if 'tests' not in p.parts and p.name != 'config.py'
               and 'output' not in p.parts]
    text = '\n'.join(p.read_text(encoding='utf-8') for p in sources)
    for key in unused:   # no attribute access (cfg.loss, train.FLAG) or dotted key of an unused key in the code
        leaf = key.split('.')[-1]
        access = rf'\.{leaf}\b' if leaf.isupper() else rf'\bcfg(\.|\[\'){leaf}\b'
        dotted = rf'|[\'"]{re.escape(key)}[=\'"]' if '.' in key else ''
        assert not re.search(access + dotted, text), key


def test_every_choice_key_is_checked_at_load_time_and_the_lists_outside_the_config_match():
    for key, allowed in CHOICES.items():
        default = load_config(None).get(key)
        assert default in allowed, key
        bad = 'no_such_value' if isinstance(default, str) else 7
        with pytest.raises(ConfigError, match=re.escape(f"{key} must be one of {', '.join(map(repr, allowed))}, "
                                                        f"got {bad!r}")):
            load_config(None, [f'{key}={bad}'])
    # the lists kept where the config cannot be imported (models) or that grow by registration
    assert CHOICES['MODEL.NAME'] == tuple(FAMILIES)
    assert CHOICES['GAN.MASKS'] == MASK_MODES


def test_yaml_merges_on_top_of_defaults_and_overrides_on_top_of_yaml(tmp_path):
    path = write(tmp_path, 'TRAIN:\n  BATCH_SIZE: 12\n  NF: 16\n')
    cfg = load_config(path, ['TRAIN.BATCH_SIZE=8', 'TRAIN.SMOOTH.GAMMA1=4', 'DEVICE=cpu',
                             'TRAIN.NET_G=out/models/netG_120.pth', 'RESTORE=True',
                             'TRAIN.GENERATOR_LR=2e-4'])
    assert cfg.TRAIN.BATCH_SIZE == 8 and cfg.TRAIN.NF == 16          # override beats yaml
    assert cfg.TRAIN.MAX_EPOCH == 600                                # default kept
    assert cfg.TRAIN.SMOOTH.GAMMA1 == 4.0 and isinstance(cfg.TRAIN.SMOOTH.GAMMA1, float)
    assert cfg.TRAIN.GENERATOR_LR == 2e-4
    assert cfg.DEVICE == 'cpu' and cfg.RESTORE is True
    assert cfg.TRAIN.NET_G == 'out/models/netG_120.pth'
    assert cfg.CONFIG_NAME == 'c'                                    # from the file name


def test_yaml_float_without_dot_is_accepted(tmp_path):
    # PyYAML reads 1e-4 as a string; a float key accepts it.
    cfg = load_config(write(tmp_path, 'TRAIN:\n  GENERATOR_LR: 1e-4\n'))
    assert cfg.TRAIN.GENERATOR_LR == 1e-4


def test_unknown_yaml_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, 'TRAIN:\n  BATCH_SZ: 8\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert 'TRAIN.BATCH_SZ' in msg and path in msg and 'TRAIN.BATCH_SIZE' in msg


def test_wrong_type_in_yaml_names_key_and_file(tmp_path):
    path = write(tmp_path, 'TRAIN:\n  BATCH_SIZE: lots\n')
    with pytest.raises(ConfigError, match=re.escape(path) + r".*'TRAIN\.BATCH_SIZE' expects an int"):
        load_config(path)
    path = write(tmp_path, 'B_VALIDATION: 1\n', 'b.yml')
    with pytest.raises(ConfigError, match=r"'B_VALIDATION' expects a bool"):
        load_config(path)
    path = write(tmp_path, 'TRAIN: 3\n', 's.yml')
    with pytest.raises(ConfigError, match=r"'TRAIN' is a section"):
        load_config(path)


def test_bad_overrides():
    cfg = default_config()
    with pytest.raises(ConfigError, match=r"command line: unknown config key 'TRAIN.NFF'.*TRAIN.NF"):
        parse_overrides(cfg, ['TRAIN.NFF=3'])
    with pytest.raises(ConfigError, match=r"command line: config key 'TRAIN.NF' expects an int, got str 'x'"):
        parse_overrides(cfg, ['TRAIN.NF=x'])
    with pytest.raises(ConfigError, match=r"'B_VALIDATION' expects a bool"):
        parse_overrides(cfg, ['B_VALIDATION=maybe'])
    with pytest.raises(ConfigError, match='expected KEY=VALUE'):
        parse_overrides(cfg, ['TRAIN.NF'])
    with pytest.raises(ConfigError, match=r"'TRAIN' is a section"):
        parse_overrides(cfg, ['TRAIN=3'])
    assert cfg.TRAIN.NF == 32  # nothing applied by the failed overrides


@pytest.mark.parametrize('key, value, least', [('TRAIN.BATCH_SIZE', 0, 1), ('TRAIN.BATCH_SIZE', -4, 1),
                                               ('WORKERS', -1, 0), ('EVAL.SPLITS', 0, 1),
                                               ('TEXT.CAPTIONS_PER_IMAGE', 0, 1), ('TREE.BASE_SIZE', 0, 1),
                                               ('TREE.BASE_SIZE', -64, 1), ('TRAIN.NF', 0, 1),
                                               ('GAN.Z_DIM', 0, 1), ('TEXT.EMBEDDING_DIM', -1, 1),
                                               ('DEMO.TIME_BUDGET', -5, 0), ('DEMO.RESERVE_SECONDS', -1, 0),
                                               ('DEMO.CHECKPOINT_IMAGES', -1, 0)])
def test_counts_below_their_least_value_name_the_key(tmp_path, key, value, least):
    with pytest.raises(ConfigError, match=re.escape(f'{key}={value}: must be at least {least} (')):
        load_config(None, [f'{key}={value}'])                 # were tracebacks deep inside PyTorch
    section, _, name = key.rpartition('.')
    yml = write(tmp_path, f'{section}: {{{name}: {value}}}\n' if section else f'{name}: {value}\n')
    with pytest.raises(ConfigError, match=re.escape(f'{key}={value}')):
        load_config(yml)
    assert load_config(None, [f'{key}={least}']).get(key) == least


@pytest.mark.parametrize('model', ['ssagan', 'dfgan', 'dfgan_v1'])
def test_an_image_size_the_generator_cannot_reach_names_tree_base_size(model):
    from miscc.families import build_networks
    with pytest.raises(ConfigError, match=f'TREE.BASE_SIZE=100: the {model} generator .* power of two >= 32'):
        build_networks(load_config(None, ['TREE.BASE_SIZE=100', f'MODEL.NAME={model}', 'TRAIN.NF=2']))


def test_missing_and_malformed_yaml(tmp_path):
    missing = str(tmp_path / 'nope.yml')
    with pytest.raises(ConfigError, match=re.escape(missing) + "' not found"):
        load_config(missing)
    bad = write(tmp_path, 'TRAIN: [1, 2\n')
    with pytest.raises(ConfigError, match='is not valid YAML'):
        load_config(bad)
    listing = write(tmp_path, '- 1\n- 2\n', 'l.yml')
    with pytest.raises(ConfigError, match='must hold a mapping'):
        load_config(listing)


def test_yaml_python_tags_are_refused_in_one_line_naming_the_file(tmp_path):
    marker = tmp_path / 'ran'
    crafted = write(tmp_path, f"CONFIG_NAME: !!python/object/apply:builtins.exec [\"open('{marker}', 'w')\"]\n",
                    'crafted.yml')
    with pytest.raises(ConfigError) as e:
        load_config(crafted)
    message = str(e.value)
    assert '\n' not in message and message.count(crafted) >= 1 and 'python/object/apply' in message
    assert not marker.exists()


def test_frozen_config_refuses_changes_and_clone_is_independent():
    cfg = default_config().freeze()
    with pytest.raises(ConfigError, match='frozen'):
        cfg.TRAIN.NF = 8
    copy = cfg.clone()
    copy.TRAIN.NF = 8
    assert cfg.TRAIN.NF == 32 and copy.TRAIN.NF == 8
    with pytest.raises(ConfigError, match="unknown config key 'TRAIN.NOPE'"):
        copy.TRAIN.NOPE = 1


def test_models_do_not_read_global_config():
    # Models receive what they need as arguments; none of them imports the config.
    for path in (ROOT / 'models').glob('*.py'):
        text = path.read_text()
        assert 'miscc.config' not in text and 'cfg.' not in text, path.name


ABLATIONS = {   # file: the keys in which it differs from its base, cfg/bird.yml or cfg/bird_dfgan.yml
    'bird_no_ssacn_no_damsm': {'GAN.MASKS': 'ones', 'TRAIN.LAMBDA_DA': 0.0},
    'bird_ssacn': {'TRAIN.LAMBDA_DA': 0.0},
    'bird_ssacn_damsm': {},
    'bird_ssacn_damsm_finetune': {},
    'bird_dfgan_osb': {'DFGAN.OUTPUT': 'two_way', 'TRAIN.MAGP_K': 0.0},
    'bird_dfgan_osb_damsm': {'DFGAN.OUTPUT': 'two_way', 'TRAIN.MAGP_K': 0.0, 'TRAIN.LAMBDA_DA': 0.05},
    'bird_dfgan_osb_magp': {'DFGAN.OUTPUT': 'two_way'},
}


def _flat(tree, prefix=''):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f'{prefix}{k}.'))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize('name', sorted(ABLATIONS))
def test_ablation_configs_are_bird_yml_but_for_their_row(name):
    root = ROOT
    base = 'bird_dfgan.yml' if name.startswith('bird_dfgan') else 'bird.yml'
    bird = _flat(load_config(str(root / 'cfg' / base)).to_dict())
    ablation = _flat(load_config(str(root / 'cfg' / 'ablation' / f'{name}.yml')).to_dict())
    differs = {k: v for k, v in ablation.items() if bird[k] != v and k != 'CONFIG_NAME'}
    assert differs == ABLATIONS[name] and ablation['CONFIG_NAME'] == name
    assert sorted(p.stem for p in (root / 'cfg' / 'ablation').glob('*.yml')) == sorted(ABLATIONS)
