"""The CUB Inception Score of the text-to-image papers (StackGAN's inception_score.py), in
PyTorch: the fine-tuned classifier converted by tools/convert_stackgan_inception.py, the
protocol's preprocessing and its score.

Protocol (hanzhanggit/StackGAN-inception-model, inception_score.py): each uint8 RGB image is
resized to 299 x 299 by ``scipy.misc.imresize(img, (299, 299, 3), interp='bilinear')``, i.e.
PIL's ``Image.resize((299, 299), BILINEAR)`` on the uint8 image (imresize leaves uint8 data
unscaled), giving uint8 again; then ``x / 127.5 - 1``; batches of 64; logit 0 (background)
dropped before the softmax over 50 classes; 10 splits (``miscc.metrics.stackgan_inception_score``).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from models.inception_cub import INPUT_SIZE, MOVING_AVERAGE_SUFFIX, NUM_LOGITS, CUBInception3, state_dict_from_tf
from ..core.checkpoint import CheckpointError, check_state_dict, load_model_state
from .metrics import stackgan_inception_score

__all__ = ['PROTOCOL_BATCH', 'CONVERT_REQUIREMENTS', 'convert_tf_checkpoint', 'imresize_bilinear', 'protocol_inputs',
           'load_cub_inception', 'cub_logits', 'cub_inception_score']

PROTOCOL_BATCH = 64
CONVERT_REQUIREMENTS = 'pip install -r requirements-convert.txt'


def _tf_checkpoint_exists(path: str) -> bool:
    # a directory with a 'checkpoint' state file, a V2 prefix (.index + .data), or a V1 file
    return (os.path.isdir(path) and os.path.isfile(os.path.join(path, 'checkpoint'))) or \
        os.path.isfile(path + '.index') or os.path.isfile(path)


def convert_tf_checkpoint(path: str, moving_average: bool = True) -> tuple:
    """Read StackGAN's CUB Inception TF checkpoint (a prefix such as
    ``.../birds_valid299/model.ckpt-5000``, or its folder) into a ``CUBInception3`` state dict.
    Returns ``(state_dict, unused)``, ``unused`` the checkpoint variables the logits do not
    need (auxiliary head, step counter, optimiser slots, the raw copies of averaged weights).
    Needs TensorFlow (``requirements-convert.txt``); raises ImportError naming it."""
    if not _tf_checkpoint_exists(path):
        folder = os.path.dirname(os.path.abspath(path))
        present = sorted(os.listdir(folder))[:10] if os.path.isdir(folder) else 'no such folder'
        raise CheckpointError(f"TensorFlow checkpoint '{path}' not found (looked for the file, '{path}.index' "
                              f"and a folder with a 'checkpoint' file; '{folder}' holds: {present}); give the "
                              f"prefix inception_finetuned_models/birds_valid299/model.ckpt-5000 of StackGAN's "
                              f"inception_finetuned_models.zip")
    try:
        # TensorFlow is imported only here: the project itself never needs it
        import tensorflow as tf
    except ImportError:
        raise ImportError(f'TensorFlow is needed to read the TF checkpoint: {CONVERT_REQUIREMENTS}') from None
    try:
        reader = tf.train.load_checkpoint(path)
    except (ValueError, tf.errors.OpError) as e:
        raise CheckpointError(f"cannot read TensorFlow checkpoint '{path}': {e}") from None
    shapes = reader.get_variable_to_shape_map()
    if any(name.startswith('InceptionV3/') for name in shapes):
        raise CheckpointError(f"'{path}' uses tf-slim's nets/inception_v3 names (InceptionV3/...), not the "
                              f"tensorflow/models inception/slim names of StackGAN's CUB classifier (conv0, "
                              f"mixed_35x35x256a/...); it is a different network")
    read = set()

    def get(name: str) -> np.ndarray:
        if name not in shapes:
            hint = (f"; the protocol uses the moving averages ('{MOVING_AVERAGE_SUFFIX[1:]}'), convert "
                    f"the raw weights with --raw-weights if this checkpoint has none"
                    if name.endswith(MOVING_AVERAGE_SUFFIX) else '')
            raise CheckpointError(f"TensorFlow checkpoint '{path}' has no variable '{name}'{hint}")
        read.add(name)
        return reader.get_tensor(name)
    try:
        state = state_dict_from_tf(get, moving_average=moving_average)
    except ValueError as e:
        raise CheckpointError(f"'{path}': {e}") from None
    check_state_dict(CUBInception3(NUM_LOGITS), state, path)
    return state, sorted(set(shapes) - read)


def imresize_bilinear(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 B x 3 x H x W -> uint8 B x 3 x size x size, each image resized by PIL's bilinear
    filter as scipy.misc.imresize did (when shrinking, PIL widens the filter: antialiased;
    the aspect ratio is not kept)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.size(1) != 3:
        raise ValueError(f'imresize_bilinear needs uint8 B x 3 x H x W RGB images, got {images.dtype} '
                         f'{tuple(images.shape)}')
    arrays = images.permute(0, 2, 3, 1).cpu().numpy()
    out = [np.asarray(Image.fromarray(a, 'RGB').resize((size, size), Image.Resampling.BILINEAR)) for a in arrays]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def protocol_inputs(images: torch.Tensor) -> torch.Tensor:
    """uint8 B x 3 x H x W -> float32 B x 3 x 299 x 299 in [-1, 1], the classifier's input."""
    return imresize_bilinear(images).float() / 127.5 - 1.0


def load_cub_inception(path: str, device='cpu') -> CUBInception3:
    """The converted classifier (a state dict written by tools/convert_stackgan_inception.py),
    in eval mode on ``device``; a missing file names the converter."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CUB Inception classifier '{path}' not found: convert StackGAN's "
            f"inception_finetuned_models/birds_valid299/model.ckpt-5000 with "
            f"'python tools/convert_stackgan_inception.py <that checkpoint> {path}' "
            f"(see docs/evaluation.md)")
    return load_model_state(CUBInception3(NUM_LOGITS), path).to(device).eval()


@torch.no_grad()
def cub_logits(classifier: torch.nn.Module, images: torch.Tensor, device='cpu') -> torch.Tensor:
    """uint8 B x 3 x H x W -> float64 CPU B x 51 logits (column 0: background), in chunks of
    64 (batch norm runs on its stored statistics, so the chunking does not change them)."""
    out = []
    for start in range(0, images.size(0), PROTOCOL_BATCH):
        x = protocol_inputs(images[start:start + PROTOCOL_BATCH]).to(device)
        out.append(classifier(x).double().cpu())
    return torch.cat(out)


def cub_inception_score(classifier: torch.nn.Module, batches, splits: int = 10, seed=0, device='cpu') -> dict:
    """StackGAN's CUB IS of uint8 images (a B x 3 x H x W tensor or an iterable of such
    batches): ``{'mean', 'std', 'count', 'used'}``; ``used`` is the number of images in full
    batches of 64, the ones the protocol scores (chosen by the shuffle with ``seed``)."""
    batches = [batches] if torch.is_tensor(batches) else batches
    logits = torch.cat([cub_logits(classifier, b, device) for b in batches])
    mean, std = stackgan_inception_score(logits, splits=splits, batch_size=PROTOCOL_BATCH, seed=seed)
    return {'mean': mean, 'std': std, 'count': int(logits.size(0)),
            'used': int(logits.size(0) // PROTOCOL_BATCH * PROTOCOL_BATCH)}
