"""Configuration: defaults in one place, YAML merged on top, ``KEY=VALUE`` overrides.

The defaults below are the values the official SSA-GAN code actually trains with.
Where the official ``miscc/config.py`` default differs from what its scripts use
(learning rates and lambda_DA are hard-coded in ``main.py``/``main_finetune.py``),
the value the scripts use is the default here and the official default is noted.
Keys that the official YAML files carry but no code reads (``TREE.BRANCH_NUM``,
``GAN.DF_DIM``, ``loss``, ...) are accepted so that official configs load unchanged; they are
kept apart, in ``OFFICIAL_UNUSED``. Every key with a fixed set of values is checked against
``CHOICES`` at load time.

Usage::

    cfg = load_config('cfg/bird.yml', ['TRAIN.BATCH_SIZE=8', 'DEVICE=cpu'])
    cfg.TRAIN.BATCH_SIZE  # -> 8

Every key has the type of its default. An unknown key, a value of the wrong type,
a missing or malformed YAML file each raise ``ConfigError`` naming the key and the
file (or ``command line``) it came from.
"""
from __future__ import annotations

import copy
import difflib
import os
from typing import Any, Iterable, Mapping

import yaml

__all__ = ['Config', 'ConfigError', 'DEFAULTS', 'OFFICIAL_UNUSED', 'CHOICES', 'default_config', 'load_config',
           'parse_overrides', 'check_values']


class ConfigError(ValueError):
    """A config file or override is invalid (unknown key, wrong type, bad file)."""


DEFAULTS: dict = {
    'DATASET_NAME': 'birds',        # 'birds' (CUB layout), 'coco', or 'synthetic_birds'
    'CONFIG_NAME': '',
    'DATA_DIR': '',
    'OUTPUT_DIR': 'output',         # runs go to OUTPUT_DIR/<dataset>_<config>_<timestamp>/
    'DEVICE': 'auto',               # 'auto', 'cpu', 'cuda', 'cuda:1', or 'cuda:0,1' (DataParallel)
    'GPU_ID': 0,                    # official key: GPU used by DEVICE='cuda'/'auto'; -1 forces CPU
    'CUDA': True,                   # official key: False forces CPU
    'WORKERS': 6,
    'SEED': 100,                    # the official scripts seed everything with 100
    'DIST_TIMEOUT': 600,            # torchrun: seconds a process waits for the others in a collective
                                    # before it stops with an error (a killed or hung peer never hangs it)
    'CPU_ALLOCATOR': 'keep',        # 'keep': freed CPU memory is reused, not returned to the system
                                    # (no page faults on every step; see miscc.core.runtime); 'system'
    'RNN_TYPE': 'LSTM',             # 'LSTM' or 'GRU'
    'B_VALIDATION': False,          # True: generate evaluation images instead of training
    'RESTORE': False,               # True: continue from the last training state of TRAIN.NET_G's run
    'MODEL': {
        'NAME': 'ssagan',           # generator family (miscc/families): 'ssagan', 'dfgan' (DF-GAN 2022),
                                    # 'dfgan_v1' (DF-GAN 2020) or 'gan_int_cls' (Reed et al. 2016)
    },
    'DFGAN': {                      # MODEL.NAME 'dfgan' / 'dfgan_v1' only (tobran/DF-GAN code/cfg/bird.yml, coco.yml)
        'TRUNCATION': True,         # sampling/FID noise: standard normal truncated to [-2, 2], times TRUNC_RATE
        'TRUNC_RATE': 0.88,         # (training noise is always plain randn)
        # D's output: 'one_way' (DF-GAN's: one matching logit) or 'two_way' (an unconditional
        # realness logit beside it, the form DF-GAN's ablation compares with; 'dfgan' only)
        'OUTPUT': 'one_way',
    },
    'TREE': {
        'BASE_SIZE': 64,            # image size: 64, 128 or 256 (32 for small runs; 299 for DAMSM pretraining)
    },
    'TRAIN': {
        'BATCH_SIZE': 64,
        'MAX_EPOCH': 600,
        'SNAPSHOT_INTERVAL': 2000,
        'DISCRIMINATOR_LR': 4e-4,   # official main.py hard-codes 4e-4 (config default 2e-4 is unused)
        'GENERATOR_LR': 1e-4,       # official main.py hard-codes 1e-4
        'ENCODER_LR': 2e-4,         # DAMSM pretraining learning rate
        'BETA1': 0.0,
        'BETA2': 0.9,
        'RNN_GRAD_CLIP': 0.25,
        'NET_E': '',                # DAMSM text encoder to resume pretraining from
        'NET_G': '',                # generator checkpoint (generation, fine-tuning, resume)
        # discriminator file to continue with TRAIN.NET_G's generator file ('' = the one named like
        # it: netD_<epoch>.pth, or disc_<epoch>.pth beside the GAN-INT-CLS implementation's gen_<epoch>.pth)
        'NET_D': '',
        'FRESH_NET_D': False,       # True: a generator file without its discriminator continues with a
                                    # fresh D after a warning; False: stop with one line naming the file
        'NF': 32,                   # channel base of NetG/NetD (official configs use 64)
        'WARMUP_EPOCHS': 200,       # no checkpoints before this epoch
        'GSAVE_INTERVAL': 10,
        'DSAVE_INTERVAL': 10,
        'LAMBDA_DA': 0.05,          # DAMSM weight in the G loss of main.py (DF-GAN's configs: 0, its own G loss)
        'MAGP_P': 6.0,              # MA-GP exponent
        'MAGP_K': 2.0,              # MA-GP weight (0: no MA-GP; DF-GAN then skips computing it)
        'CONV_GRADFIX': 'auto',     # D convolutions' double backward (MA-GP) on the ordinary kernels:
                                    # 'on', 'off', or 'auto' (on for CUDA, where it is faster)
        'FAST': False,              # fast training path: turns on the FAST_OPTIONS below
        'FAST_OPTIONS': {           # each applies only with TRAIN.FAST=True (see docs/performance.md)
            'FUSED_MAGP': True,     # MA-GP on the real pass, summed into one D step (DF-GAN 2022)
            'LEAN_SSCBN': True,     # SSCBN as x + m * (gamma * x + beta): fewer full-size temporaries
            'BF16': True,           # bfloat16 autocast for forward passes (GPU, or CPU with native bf16)
            'CHANNELS_LAST': True,  # GPU: channels-last memory format for G, D and images
            'COMPILE': False,       # torch.compile the generator (D needs double backward for MA-GP)
            'COMPILE_MODE': 'default',  # torch.compile mode: 'default', 'reduce-overhead' (CUDA graphs),
                                        # 'max-autotune' or 'max-autotune-no-cudagraphs'
        },
        'MAX_STEPS': 0,             # stop (saving the training state) after this many steps; 0: no limit
        # Exponential moving average of G's weights (miscc/training/ema.py); off: the official
        # update and outputs exactly. On: netG_ema_<epoch>.pth is saved beside each netG_<epoch>.pth
        # (official keys), and sample grids, in-loop FID, B_VALIDATION and eval_*.py --netG use it.
        'G_EMA': False,
        'G_EMA_DECAY': 0.999,       # ema = decay * ema + (1 - decay) * G after every iteration
        'G_EMA_RAMPUP': False,      # True: decay of update n is min(G_EMA_DECAY, (1 + n) / (10 + n))
        'LOG_INTERVAL': 50,         # steps between progress-bar/TensorBoard loss updates
        'SMOOTH': {
            'GAMMA1': 5.0,
            'GAMMA2': 5.0,
            'GAMMA3': 10.0,
            'LAMBDA': 1.0,
        },
        'FINETUNE': {               # used by main_finetune.py only
            'LAMBDA_DA': 0.1,
            'ENCODER_LR': 4e-5,
            # the official fine-tuning leaves both encoders in train mode (RNN dropout and
            # Inception batch statistics active); False puts them in eval mode
            'ENCODERS_TRAIN_MODE': True,
        },
    },
    'GAN': {                        # noise size, SSA-GAN's masks, gates and mismatched pairs
        'MASKS': 'predicted',       # SSA-GAN's SSCBN masks: 'predicted' (official) or 'ones' (ablation:
                                    # no mask predictors, each SSCBN a sentence-conditioned BN)
        # SSA-GAN's residual gates at the start (official 0): every generator block's gamma
        # (out = shortcut + gamma * residual; the residual carries the text into the image) and
        # every discriminator DownBlock's gamma. Above 0 the text reaches the image from the first step.
        'GATE_INIT': 0.0,
        'D_GATE_INIT': 0.0,
        # SSA-GAN's mismatched pairs in D: 'shifted' (official: image i with sentence i+1) or
        # 'nearest' (each image with the batch's most similar other sentence: a hard negative)
        'MISMATCH': 'shifted',
        'Z_DIM': 100,               # noise size
    },
    'GAN_INT_CLS': {                # MODEL.NAME 'gan_int_cls' (Reed et al. 2016, 64 px; TREE.BASE_SIZE); update
                                    # is miscc/families/gan_int_cls.py. Adam 2e-4, betas (0.5, 0.999)
                                    # and batch 64 come from TRAIN.* in its cfg files; noise: GAN.Z_DIM.
        'LOSS': 'gan',              # 'gan': BCE on D's logits; 'wgan': critic scores, weight clipping;
                                    # 'wgan_gp': critic scores, gradient penalty (needs D_BATCH_NORM False)
        'CONDITIONAL': True,        # False: the unconditional ('vanilla') G(z) and D(x); no CLS, no INT
        'CLS': True,                # matching-aware D: mismatching image/text pairs are scored as fake
        'MISMATCH': 'text',         # 'text': real image + wrong text (paper); 'image': wrong image +
                                    # right text (both published codes)
        'MISMATCH_WEIGHT': 0.5,     # weight of each of D's mismatching and fake terms with CLS (paper:
                                    # 1/2); 1.0 is the PyTorch implementation's plain sum
        'INT': True,                # G also learns from interpolated embeddings (never shown to D)
        'INT_BETA': 0.5,            # interpolation beta * t1 + (1 - beta) * t2 of batch embeddings
        'INT_WEIGHT': 1.0,          # weight of G's loss on the interpolations
        'LABEL_SMOOTHING': 0.1,     # one-sided: D's target for real/right pairs is 1 - this (0: off,
                                    # the paper); 'gan' loss only
        'FEATURE_MATCHING': 100.0,  # G: x MSE of the batch means of D's 4x4 image features (0: off)
        'L1': 50.0,                 # G: x mean |G(z, t) - real image| (0: off, the paper)
        'N_CRITIC': 5,              # 'wgan' / 'wgan_gp': critic steps per G step
        'CRITIC_BURST': True,       # 'wgan': 100 critic steps for the first 25 G steps and every 500th
                                    # ('wgan_gp' keeps N_CRITIC throughout, as its paper's Algorithm 1)
        'CLIP': 0.01,               # 'wgan': D's parameters clamped to [-CLIP, CLIP] after each step
        'GP_WEIGHT': 10.0,          # 'wgan_gp': lambda of the gradient penalty on real/fake interpolates
        'PROJECTED_DIM': 128,       # text embedding projected to this size in G and D
        'NGF': 64,                  # generator width (ngf: 8*NGF channels at 4x4)
        'NDF': 64,                  # discriminator width (8*NDF channels at 4x4)
        'D_BATCH_NORM': True,       # False: no BN in D's conv stack (the implementation's 'improved'
                                    # WGAN critic; required by 'wgan_gp')
        # Minibatch discrimination (Salimans et al. 2016) on D's 4x4 image features: that many
        # kernels (0: off, the implementation's networks) of KERNEL_DIM dimensions each
        'MINIBATCH_KERNELS': 0,
        'MINIBATCH_KERNEL_DIM': 5,
    },
    'TEXT': {
        'CAPTIONS_PER_IMAGE': 10,
        'EMBEDDING_DIM': 256,
        'WORDS_NUM': 18,
        'DAMSM_NAME': 'DAMSMencoders/bird/text_encoder200.pth',
        'IMAGE_ENCODER_INPUT': 299,  # image encoder's input size; smaller only for small-scale runs
        # DAMSM image encoder: 'inception' (AttnGAN's, the released files) or 'small' (a four-layer
        # CNN trained whole; regions IMAGE_ENCODER_INPUT/8 square; for small-scale runs such as the demo)
        'IMAGE_ENCODER': 'inception',
    },
    'SAMPLE': {                     # generation with B_VALIDATION=True
        'NUM': 30000,               # images from the test captions
        'BATCH_SIZE': 0,            # 0: TRAIN.BATCH_SIZE
        'SEED': 0,                  # noise and caption subsampling
        'OUT_DIR': '',              # '': <TRAIN.NET_G without .pth>/valid (the official place)
        'PER_CAPTION': 4,           # images per user caption (--caption/--captions)
        # Enlarge generated images by this factor before saving (B_VALIDATION, --caption): 1 = off;
        # the folder is then valid_<method>_x<factor> (captions_<method>_x<factor>) by default
        'UPSCALE': 1,
        'UPSCALE_METHOD': 'bicubic',  # 'bicubic' (PIL) or 'srcnn' (SRCNN on the luminance of the bicubic image)
        'SRCNN_WEIGHTS': '',        # SRCNN state dict (conv1/conv2/conv3); '' = models/srcnn_x<UPSCALE>.pth
    },
    'DATA': {
        # Image folders ('' = the layout's own: CUB_200_2011/images for the birds;
        # images/, else train2014/ and val2014/, under DATA_DIR for COCO).
        'TRAIN_IMAGE_DIR': '',
        'TEST_IMAGE_DIR': '',
        # Store the cropped, resized training images once as raw uint8 (about 277 KB per
        # image at 256 px) and read them memory-mapped: several times faster per worker.
        'CACHE': False,
        'CACHE_DIR': '',            # '' = DATA_DIR/cache
        # Precomputed text embeddings and images in one HDF5 file (miscc/data/hd5.py, the layout
        # of the PyTorch GAN-INT-CLS implementation); '' = the DATASET_NAME layout in DATA_DIR
        # with the DAMSM sentence encoder (TEXT.EMBEDDING_DIM).
        'HD5_FILE': '',
        'HD5_EMBEDDING_DIM': 1024,  # size of the file's embeddings (char-CNN-RNN: 1024); the text
                                    # input size of the networks when HD5_FILE is used
        'HD5_TRAIN_SPLIT': 'train',  # splits of the file: train, valid, test
        'HD5_TEST_SPLIT': 'test',
        'HD5_AUGMENT': False,       # False: whole image resized to BASE_SIZE (the implementation's);
                                    # True: resize to BASE_SIZE*76/64, random crop and flip
    },
    'SYNTHETIC': {                  # the built-in synthetic birds (DATASET_NAME 'synthetic_birds')
        'NUM_TRAIN': 2000,
        'NUM_TEST': 500,
        'IMAGE_SIZE': 256,          # stored image side in pixels (>= 128)
        'SEED': 0,
    },
    'DAMSM': {                      # pretrain_DAMSM.py (AttnGAN's schedule)
        'LR_DECAY': 0.98,           # learning rate x this after each epoch, down to ENCODER_LR / 10
        'RANDOM_TRUNK': False,      # True: random Inception trunk instead of ImageNet weights (tests, demo)
        'ATTENTION_INTERVAL': 5,    # epochs between attention-map PNGs (0: never)
        'R_PRECISION': True,        # R-precision on the test split after each validation
        'VALID_BATCHES': 0,         # test batches per validation; 0: the whole split (AttnGAN: 51)
    },
    'EVAL': {                       # eval_IS.py / eval_FID.py
        # TF-ported Inception of the IS/FID literature ('' = torch hub cache:
        # $TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth)
        'INCEPTION_WEIGHTS': '',
        'RANDOM_WEIGHTS': False,    # random extractor (tests only: scores not comparable with papers)
        'NUM_IS': 30000,            # generated images for IS
        'NUM_FID': 3000,            # generated images for FID
        'SPLITS': 10,
        'BATCH_SIZE': 50,
        'FID_DIMS': 2048,           # Inception feature for FID/KID: 2048 (pool3), or 768/192/64
        'KID': True,                # also KID (same features)
        'CACHE_DIR': '',            # reference statistics; '' = DATA_DIR/fid_cache
        # 'inception' (the TF-ported Inception above, the papers') or 'judge': the synthetic birds'
        # attribute judge (miscc/evaluation/judge.py) gives FID/KID's features and IS's classes
        # (its 90 species), here and in training (EVAL.INTERVAL): nothing to download
        'EXTRACTOR': 'inception',
        'R_PRECISION': 'auto',      # 'auto' (when the DAMSM files exist), 'on' or 'off'
        'CLASSIFIER': '',           # optional domain classifier for IS (torchvision Inception-v3 state dict)
        'CLASSIFIER_CLASSES': 200,
        'SEED': 0,
        # The papers' protocols (docs/evaluation.md):
        # how EVAL.CLASSIFIER scores: 'torchvision' (a torchvision Inception-v3 of CLASSIFIER_CLASSES
        # outputs, ImageNet normalisation) or 'stackgan' (StackGAN's CUB Inception converted by
        # tools/convert_stackgan_inception.py: PIL bilinear resize to 299, [-1, 1], batches of 64,
        # background logit dropped, 50 classes; CLASSIFIER_CLASSES is not used)
        'CLASSIFIER_PROTOCOL': 'torchvision',
        # 'pairs' (99 mismatches among the evaluated captions, 10 redraws; miscc.metrics.r_precision)
        # or 'dmgan' (99 test captions of other classes, 10 splits; miscc.metrics.r_precision_dmgan)
        'R_PRECISION_PROTOCOL': 'pairs',
        # During training (main.py / main_finetune.py): every INTERVAL epochs FID and KID (FID_DIMS,
        # the weights above; reference statistics cached in CACHE_DIR) and R-precision (R_PRECISION,
        # R_PRECISION_PROTOCOL) of NUM_FID images generated in memory from the test captions with the
        # noise of SAMPLE.SEED (those of B_VALIDATION=True); logged to TensorBoard and <run>/metrics.jsonl,
        # the best FID's generator kept as models/netG_best.pth. 0: off (the official training).
        'INTERVAL': 0,
    },
    'DEMO': {                       # the synthetic-birds demo (cfg/demo.yml)
        'RUN': False,               # True: main.py runs the whole demo pipeline (miscc/demo.py)
        'DAMSM_CFG': 'cfg/DAMSM/demo.yml',
        'NUM_IMAGES': 0,            # generated test images; 0: one per test image
        'GRID_CAPTIONS': [],
        'GRID_PER_CAPTION': 4,
        # Wall-clock seconds for the whole demo, summed over the invocations that worked on its
        # OUTPUT_DIR (stage_seconds.json); 0: no budget. The GAN stage gets what the data and damsm
        # stages left, less RESERVE_SECONDS, and stops at the first step boundary past that
        # (its training state saved, as at TRAIN.MAX_STEPS; at least one step is trained).
        'TIME_BUDGET': 0,
        # Seconds of the budget kept for the generate and report stages (the report scores every
        # netG_XXX.pth too, each in about 4 % of its epoch's training time); report.json's
        # stage_seconds show what they took (docs/demo.md).
        'RESERVE_SECONDS': 90,
        # Test captions the report scores each netG_XXX.pth on; 0: those of the generate stage
        # (NUM_IMAGES), so the last epoch's score repeats body_colour_accuracy.generated.
        'CHECKPOINT_IMAGES': 0,
    },
    'PRETRAINED': {
        # ImageNet Inception-v3 for the DAMSM image encoder trunk. '' looks in the
        # torch hub cache ($TORCH_HOME/hub/checkpoints/inception_v3_google-*.pth).
        'INCEPTION': '',
    },
}


# Keys the official YAML files carry that no code here reads: accepted (with their types) so that
# the official configs load unchanged, kept apart so that DEFAULTS lists only what works.
OFFICIAL_UNUSED: dict = {
    'USE_SN': False,
    'loss': 'hinge',                # hinge is the only loss
    'TREE': {'BRANCH_NUM': 3},      # single-stage generator
    'TRAIN': {'FLAG': True, 'B_NET_D': True},
    'GAN': {'DF_DIM': 64, 'GF_DIM': 128, 'CONDITION_DIM': 100, 'R_NUM': 2, 'B_ATTENTION': True, 'B_DCGAN': True},
}


def _merged(base: Mapping, extra: Mapping) -> dict:
    """``base`` with ``extra``'s keys added (nested dicts merged; extra never replaces a key)."""
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping):
            out[key] = _merged(out.get(key, {}), value)
        else:
            assert key not in out, key
            out[key] = value
    return out


_ACCEPTED = _merged(DEFAULTS, OFFICIAL_UNUSED)   # every key a config holds (Config copies it)


def _type_name(value: Any) -> str:
    return type(value).__name__


def _coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """Return ``value`` converted to the type of ``default`` or raise ConfigError."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: config key '{key}' expects {expected}, "
                           f"got {_type_name(value)} {value!r}")

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise bad('a bool (True/False)')
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad('an int')
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads '1e-4' (no dot) as a string; accept numeric strings for floats.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise bad('a float')
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise bad('a string')
    if isinstance(default, list):
        if isinstance(value, (list, tuple)):
            return list(value)
        raise bad('a list')
    raise bad(_type_name(default))  # pragma: no cover - schema only holds the types above


def _unknown_key(key: str, known: Iterable[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ''
    return ConfigError(f"{source}: unknown config key '{key}'{hint}")


def _flat_keys(tree: Mapping, prefix: str = '') -> list:
    keys = []
    for k, v in tree.items():
        keys.append(prefix + k)
        if isinstance(v, Mapping):
            keys.extend(_flat_keys(v, prefix + k + '.'))
    return keys


class Config:
    """A nested, typed set of options with attribute access (``cfg.TRAIN.NF``).

    The set of keys and their types is fixed by ``DEFAULTS``; assigning an unknown
    key or a value of another type raises ``ConfigError``. ``freeze()`` makes the
    whole tree read-only, which the entry points do once loading is done.
    """

    def __init__(self, tree: Mapping, path: str = ''):
        object.__setattr__(self, '_path', path)
        object.__setattr__(self, '_frozen', False)
        data = {}
        for k, v in tree.items():
            data[k] = Config(v, f'{path}{k}.') if isinstance(v, Mapping) else copy.deepcopy(v)
        object.__setattr__(self, '_data', data)

    # --- access -----------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        data = object.__getattribute__(self, '_data')
        if name in data:
            return data[name]
        raise AttributeError(f"config has no key '{self._path}{name}'")

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def __setattr__(self, name: str, value: Any) -> None:
        self.set(name, value, source='code')

    def __setitem__(self, name: str, value: Any) -> None:
        self.set(name, value, source='code')

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None).rstrip()

    def keys(self):
        return self._data.keys()

    def get(self, dotted: str) -> Any:
        """Value of a dotted key such as ``'TRAIN.SMOOTH.GAMMA1'``."""
        node: Any = self
        for part in dotted.split('.'):
            if not isinstance(node, Config) or part not in node._data:
                raise _unknown_key(dotted, _flat_keys(self.to_dict()), 'lookup')
            node = node._data[part]
        return node

    # --- mutation -----------------------------------------------------------------
    def set(self, name: str, value: Any, source: str = 'code') -> None:
        """Set one key of this level, checking that it exists and the value's type."""
        if self._frozen:
            raise ConfigError(f"config is frozen; cannot set '{self._path}{name}'")
        key = self._path + name
        if name not in self._data:
            raise _unknown_key(key, [self._path + k for k in self._data], source)
        current = self._data[name]
        if isinstance(current, Config):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: config key '{key}' is a section; expects a mapping, "
                                  f"got {_type_name(value)} {value!r}")
            current.merge(value, source)
            return
        self._data[name] = _coerce(value, current, key, source)

    def merge(self, tree: Mapping, source: str = 'code') -> 'Config':
        """Merge a nested mapping (e.g. parsed YAML) into this config."""
        for k, v in tree.items():
            self.set(str(k), v, source)
        return self

    def set_dotted(self, dotted: str, value: Any, source: str = 'code') -> None:
        """Set ``'TRAIN.BATCH_SIZE'``-style keys."""
        parts = dotted.split('.')
        node: Config = self
        for i, part in enumerate(parts[:-1]):
            child = node._data.get(part)
            if not isinstance(child, Config):
                raise _unknown_key(dotted, _flat_keys(self.to_dict()), source)
            node = child
        if parts[-1] not in node._data:
            raise _unknown_key(dotted, _flat_keys(self.to_dict()), source)
        node.set(parts[-1], value, source)

    def freeze(self) -> 'Config':
        object.__setattr__(self, '_frozen', True)
        for v in self._data.values():
            if isinstance(v, Config):
                v.freeze()
        return self

    def clone(self) -> 'Config':
        """An unfrozen deep copy."""
        return Config(self.to_dict(), self._path)

    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, Config) else copy.deepcopy(v))
                for k, v in self._data.items()}


def default_config() -> Config:
    """A fresh, unfrozen config holding the defaults."""
    return Config(_ACCEPTED)


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' not found (pass an existing YAML file with --cfg, "
                          f"for example cfg/bird.yml)")
    try:
        with open(path, 'r', encoding='utf-8') as f:
            tree = yaml.safe_load(f)
    except yaml.YAMLError as e:
        # one line: PyYAML's message puts the place of the error on lines of its own
        raise ConfigError(f"config file '{path}' is not valid YAML (or uses tags such as !!python/object, "
                          f"which are never run): {' '.join(str(e).split())}") from None
    if tree is None:
        return {}
    if not isinstance(tree, Mapping):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, got {_type_name(tree)}")
    return tree


def _parse_value(text: str, default: Any, key: str) -> Any:
    """Parse the VALUE of a command-line ``KEY=VALUE`` for a key whose default is ``default``."""
    if isinstance(default, str):
        if len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"':
            return text[1:-1]
        return text
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered in ('true', 'yes', '1', 'on'):
            return True
        if lowered in ('false', 'no', '0', 'off'):
            return False
        return text  # rejected by _coerce with the key in the message
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``KEY=VALUE`` strings (nested keys with dots) to ``cfg`` in order."""
    for item in overrides:
        if '=' not in item:
            raise ConfigError(f"command line: expected KEY=VALUE, got '{item}' "
                              f"(for example TRAIN.BATCH_SIZE=8)")
        key, text = item.split('=', 1)
        key = key.strip()
        try:
            default = cfg.get(key)
        except ConfigError:
            raise _unknown_key(key, _flat_keys(cfg.to_dict()), 'command line') from None
        if isinstance(default, Config):
            raise ConfigError(f"command line: config key '{key}' is a section; set one of its keys, "
                              f"e.g. {key}.{next(iter(default.keys()))}=...")
        cfg.set_dotted(key, _parse_value(text, default, key), source='command line')
    return cfg


# keys that must be at least some value: (dotted key, least, what the value counts)
_LEAST = (('TRAIN.BATCH_SIZE', 1, 'the images of one step, over all processes'),
          ('WORKERS', 0, 'DataLoader worker processes; 0 loads in the main process'),
          ('SAMPLE.BATCH_SIZE', 0, 'images per generation step; 0 = TRAIN.BATCH_SIZE'),
          ('SAMPLE.UPSCALE', 1, 'the enlargement factor of generated images; 1 = off'),
          ('EVAL.BATCH_SIZE', 1, 'images per evaluation step'),
          ('EVAL.SPLITS', 1, 'the chunks IS and R-precision are averaged over'),
          ('TEXT.CAPTIONS_PER_IMAGE', 1, 'caption lines read per image'),
          ('TEXT.WORDS_NUM', 1, 'words per caption'),
          ('TEXT.EMBEDDING_DIM', 1, 'the size of the word and sentence codes'),
          ('TREE.BASE_SIZE', 1, 'the image side in pixels'),
          ('TRAIN.NF', 1, "the generator's and discriminator's base channel width"),
          ('GAN.Z_DIM', 1, 'the size of the noise vector'),
          ('GAN_INT_CLS.MINIBATCH_KERNELS', 0, 'minibatch-discrimination kernels; 0 = off'),
          ('GAN_INT_CLS.MINIBATCH_KERNEL_DIM', 1, 'dimensions of each minibatch-discrimination kernel'),
          ('DEMO.TIME_BUDGET', 0, "the demo's wall-clock seconds; 0 = no budget"),
          ('DEMO.RESERVE_SECONDS', 0, 'seconds of the budget kept for generate and report'),
          ('DEMO.CHECKPOINT_IMAGES', 0, 'test captions each checkpoint is scored on; 0 = those generated'))


# Every key with a fixed set of values, checked at load time (check_values): the one list of
# them; modules that also check a value passed in code take theirs from here (runtime's
# CPU_ALLOCATOR_MODES, GAN-INT-CLS's LOSSES and MISMATCHES). The lists of layers that cannot
# import the config (models' MASK_MODES) and the family registry are tied to their rows by
# tests/test_config.py. DATASET_NAME is free with DATA.HD5_FILE (its data module checks it).
CHOICES: dict = {
    'RNN_TYPE': ('LSTM', 'GRU'),
    'CPU_ALLOCATOR': ('keep', 'system'),
    'MODEL.NAME': ('ssagan', 'dfgan', 'dfgan_v1', 'gan_int_cls'),
    'DFGAN.OUTPUT': ('one_way', 'two_way'),
    'TRAIN.CONV_GRADFIX': ('auto', 'on', 'off'),
    'TRAIN.FAST_OPTIONS.COMPILE_MODE': ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'),
    'GAN.MASKS': ('predicted', 'ones'),
    'GAN.MISMATCH': ('shifted', 'nearest'),
    'GAN_INT_CLS.LOSS': ('gan', 'wgan', 'wgan_gp'),
    'GAN_INT_CLS.MISMATCH': ('text', 'image'),
    'TEXT.IMAGE_ENCODER': ('inception', 'small'),
    'SAMPLE.UPSCALE_METHOD': ('bicubic', 'srcnn'),
    'EVAL.FID_DIMS': (64, 192, 768, 2048),
    'EVAL.EXTRACTOR': ('inception', 'judge'),
    'EVAL.R_PRECISION': ('auto', 'on', 'off'),
    'EVAL.CLASSIFIER_PROTOCOL': ('torchvision', 'stackgan'),
    'EVAL.R_PRECISION_PROTOCOL': ('pairs', 'dmgan'),
}


def check_values(cfg: Config) -> Config:
    """ConfigError naming the key, its value and the least allowed one for the counts of
    ``_LEAST`` (a zero or negative batch otherwise fails deep inside PyTorch), or the allowed
    values for the keys of ``CHOICES``."""
    for key, least, what in _LEAST:
        value = cfg.get(key)
        if value < least:
            raise ConfigError(f"{key}={value}: must be at least {least} ({what})")
    for key, allowed in CHOICES.items():
        if cfg.get(key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, allowed))}, got {cfg.get(key)!r}")
    return cfg


def load_config(cfg_file: str | None = None, overrides: Iterable[str] = (),
                base: Mapping | None = None) -> Config:
    """Defaults, then ``base`` (a script's own defaults), then ``cfg_file``, then overrides;
    the counts checked by ``check_values``."""
    cfg = default_config()
    if base:
        cfg.merge(base, source='script defaults')
    if cfg_file:
        cfg.merge(_read_yaml(cfg_file), source=cfg_file)
        if not cfg.CONFIG_NAME:
            cfg.CONFIG_NAME = os.path.splitext(os.path.basename(cfg_file))[0]
    parse_overrides(cfg, overrides)
    return check_values(cfg)
