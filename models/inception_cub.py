"""The CUB Inception Score classifier of StackGAN (and AttnGAN, DM-GAN, DF-GAN, SSA-GAN):
Inception-v3 of tensorflow/models' ``inception/slim`` fine-tuned on 50 CUB bird classes,
rebuilt in PyTorch so that its TensorFlow checkpoint
(``inception_finetuned_models/birds_valid299/model.ckpt-5000``) converts to a state dict.

The network is torchvision's Inception3 (same layers, same order, same key names: the
converted file loads strictly into ``torchvision.models.inception_v3(num_classes=51,
aux_logits=False, init_weights=False)``) with the one numerical difference of the TF graph
patched: the 3 x 3 average pools of the Mixed blocks use TensorFlow's SAME padding, which
averages over the pixels inside the image only (``count_include_pad=False``). Everything else
already agrees: every strided convolution and pool is VALID (no padding), the stride-1 SAME
convolutions pad k // 2 on each side, batch norm has epsilon 0.001 and no scale (gamma = 1,
written as ones), and the head is a global 8 x 8 mean, (inactive) dropout and one linear layer.

``tf_variable_scopes`` names the TensorFlow scope of every convolution, built from the block
schedule; ``state_dict_from_tf`` turns the checkpoint's arrays into this module's state dict.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.inception import BasicConv2d, Inception3, InceptionA, InceptionAux, InceptionB, \
    InceptionC, InceptionD, InceptionE

__all__ = ['NUM_LOGITS', 'INPUT_SIZE', 'CUBInception3', 'tf_variable_scopes', 'tf_variable_names',
           'state_dict_from_tf', 'MOVING_AVERAGE_SUFFIX']

NUM_LOGITS = 51        # 50 CUB classes of the fine-tuning split + logit 0, an unused background class
INPUT_SIZE = 299
MOVING_AVERAGE_SUFFIX = '/ExponentialMovingAverage'


def _same_avg_pool3x3(x: torch.Tensor) -> torch.Tensor:
    # TF's avg_pool with SAME padding divides by the number of real pixels in each window.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _BlockA(InceptionA):
    def _forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), b5, b3, self.branch_pool(_same_avg_pool3x3(x))]


class _BlockC(InceptionC):
    def _forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = x
        for i in range(1, 6):
            b7dbl = getattr(self, f'branch7x7dbl_{i}')(b7dbl)
        return [self.branch1x1(x), b7, b7dbl, self.branch_pool(_same_avg_pool3x3(x))]


class _BlockE(InceptionE):
    def _forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        return [self.branch1x1(x), b3, b3dbl, self.branch_pool(_same_avg_pool3x3(x))]


class CUBInception3(Inception3):
    """StackGAN's CUB Inception-v3: input B x 3 x 299 x 299 scaled to [-1, 1] (RGB), output
    B x 51 logits (column 0: background). No auxiliary head (it never feeds the logits)."""

    def __init__(self, num_classes: int = NUM_LOGITS):
        super().__init__(num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=False,
                         inception_blocks=[BasicConv2d, _BlockA, InceptionB, _BlockC, InceptionD, _BlockE,
                                           InceptionAux])


# torchvision's convolution names of each block kind, grouped by the TF branch scope that holds
# them, in the order the TF graph creates them (TF names them Conv, Conv_1, Conv_2, ...).
_BRANCHES = {
    'A': {'branch1x1': ['branch1x1'], 'branch5x5': ['branch5x5_1', 'branch5x5_2'],
          'branch3x3dbl': ['branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3'], 'branch_pool': ['branch_pool']},
    'B': {'branch3x3': ['branch3x3'], 'branch3x3dbl': ['branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3']},
    'C': {'branch1x1': ['branch1x1'], 'branch7x7': [f'branch7x7_{i}' for i in (1, 2, 3)],
          'branch7x7dbl': [f'branch7x7dbl_{i}' for i in (1, 2, 3, 4, 5)], 'branch_pool': ['branch_pool']},
    'D': {'branch3x3': ['branch3x3_1', 'branch3x3_2'], 'branch7x7x3': [f'branch7x7x3_{i}' for i in (1, 2, 3, 4)]},
    'E': {'branch1x1': ['branch1x1'], 'branch3x3': ['branch3x3_1', 'branch3x3_2a', 'branch3x3_2b'],
          'branch3x3dbl': ['branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3a', 'branch3x3dbl_3b'],
          'branch_pool': ['branch_pool']},
}
_STEM = [('Conv2d_1a_3x3', 'conv0'), ('Conv2d_2a_3x3', 'conv1'), ('Conv2d_2b_3x3', 'conv2'),
         ('Conv2d_3b_1x1', 'conv3'), ('Conv2d_4a_3x3', 'conv4')]
# (torchvision block, TF scope, kind); the TF scopes name the output size (35x35x256 ...)
_BLOCKS = [('Mixed_5b', 'mixed_35x35x256a', 'A'), ('Mixed_5c', 'mixed_35x35x288a', 'A'),
           ('Mixed_5d', 'mixed_35x35x288b', 'A'), ('Mixed_6a', 'mixed_17x17x768a', 'B'),
           ('Mixed_6b', 'mixed_17x17x768b', 'C'), ('Mixed_6c', 'mixed_17x17x768c', 'C'),
           ('Mixed_6d', 'mixed_17x17x768d', 'C'), ('Mixed_6e', 'mixed_17x17x768e', 'C'),
           ('Mixed_7a', 'mixed_17x17x1280a', 'D'),    # sic: TF kept this scope name for old checkpoints
           ('Mixed_7b', 'mixed_8x8x2048a', 'E'), ('Mixed_7c', 'mixed_8x8x2048b', 'E')]
_FC_SCOPE = 'logits/logits'


def tf_variable_scopes() -> dict:
    """{torchvision module path of each BasicConv2d: its TF scope}, e.g.
    ``'Mixed_5b.branch5x5_2': 'mixed_35x35x256a/branch5x5/Conv_1'``."""
    scopes = dict(_STEM)
    for block, tf_block, kind in _BLOCKS:
        for tf_branch, convs in _BRANCHES[kind].items():
            for i, conv in enumerate(convs):
                scopes[f'{block}.{conv}'] = f'{tf_block}/{tf_branch}/' + ('Conv' if i == 0 else f'Conv_{i}')
    return scopes


def tf_variable_names() -> list:
    """The TF variables (without the moving-average suffix) the logits depend on."""
    names = []
    for scope in tf_variable_scopes().values():
        names += [f'{scope}/weights', f'{scope}/BatchNorm/beta', f'{scope}/BatchNorm/moving_mean',
                  f'{scope}/BatchNorm/moving_variance']
    return names + [f'{_FC_SCOPE}/weights', f'{_FC_SCOPE}/biases']


def state_dict_from_tf(read: Callable[[str], np.ndarray], moving_average: bool = True,
                       num_classes: int = NUM_LOGITS) -> dict:
    """State dict of ``CUBInception3`` from TF arrays: ``read(name)`` returns the array of a
    checkpoint variable. With ``moving_average`` (the protocol: its eval script restores
    ``ExponentialMovingAverage(0.9999).variables_to_restore()``), every variable is read from
    ``name + '/ExponentialMovingAverage'``, batch-norm moving statistics included.

    Conv kernels kh x kw x in x out become out x in x kh x kw; the FC matrix 2048 x 51 is
    transposed. Raises KeyError naming a missing variable, ValueError naming a wrong shape."""
    with torch.device('meta'):    # shapes only: no memory, no initialisation
        expected = CUBInception3(num_classes).state_dict()
    suffix = MOVING_AVERAGE_SUFFIX if moving_average else ''

    def tensor(name: str, shape: torch.Size, permute=None) -> torch.Tensor:
        array = np.asarray(read(name + suffix), dtype=np.float32)
        value = torch.from_numpy(np.ascontiguousarray(array.transpose(permute) if permute else array))
        if value.shape != shape:
            raise ValueError(f"TF variable '{name + suffix}' has shape {tuple(array.shape)}; "
                             f"expected {tuple(shape)} after conversion (is this StackGAN's CUB Inception?)")
        return value

    state = {}
    for module, scope in tf_variable_scopes().items():
        key = module + '.'
        state[key + 'conv.weight'] = tensor(f'{scope}/weights', expected[key + 'conv.weight'].shape, (3, 2, 0, 1))
        channels = expected[key + 'bn.bias'].shape
        state[key + 'bn.weight'] = torch.ones(channels)          # slim's batch norm has no scale
        state[key + 'bn.bias'] = tensor(f'{scope}/BatchNorm/beta', channels)
        state[key + 'bn.running_mean'] = tensor(f'{scope}/BatchNorm/moving_mean', channels)
        state[key + 'bn.running_var'] = tensor(f'{scope}/BatchNorm/moving_variance', channels)
        state[key + 'bn.num_batches_tracked'] = torch.zeros((), dtype=torch.long)
    state['fc.weight'] = tensor(f'{_FC_SCOPE}/weights', expected['fc.weight'].shape, (1, 0))
    state['fc.bias'] = tensor(f'{_FC_SCOPE}/biases', expected['fc.bias'].shape)
    missing = set(expected) - set(state)
    if missing:   # the schedule above must cover the whole network
        raise AssertionError(f'conversion leaves {sorted(missing)[:5]} unset')
    return state
