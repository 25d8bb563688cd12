"""SAMPLE.UPSCALE: bicubic enlargement against PIL, SRCNN on the luminance with hand-set weights
(an identity SRCNN returns the bicubic result, a bias shifts every channel by a computed amount),
the weight layouts that load and the errors of those that do not."""
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import identity_srcnn
from miscc.core.checkpoint import CheckpointError
from miscc.core.config import ConfigError, load_config
from miscc.evaluation.upscale import build_upscaler, rgb_to_ycbcr, srcnn_weights_path, ycbcr_to_rgb
from models.srcnn import SRCNN


def _images(b=3, size=16, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, 3, size, size), dtype=np.uint8))


def _pil_bicubic(images, factor):
    out = []
    for image in images:
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        out.append(np.asarray(pil.resize((pil.width * factor, pil.height * factor), Image.BICUBIC)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def _cfg(*overrides):
    return load_config(None, list(overrides))


def test_ycbcr_round_trip_and_bt601_values():
    rgb = torch.tensor([[255.0, 0.0, 0.0], [0.0, 0.0, 0.0], [255.0, 255.0, 255.0]]).view(3, 3, 1, 1)
    ycbcr = rgb_to_ycbcr(rgb)
    assert ycbcr[:, 0].flatten().tolist() == pytest.approx([16 + 65.481, 16.0, 235.0], abs=1e-3)  # MATLAB rgb2ycbcr
    assert ycbcr[1:, 1:].flatten().tolist() == pytest.approx([128.0] * 4, abs=1e-3)              # greys: no chroma
    x = _images().float()
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-3)


def test_bicubic_is_pils():
    up = build_upscaler(_cfg('SAMPLE.UPSCALE=3'))
    images = _images()
    out = up(images)
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 48, 48)
    assert torch.equal(out, _pil_bicubic(images, 3))
    assert build_upscaler(_cfg()) is None                          # SAMPLE.UPSCALE 1: off


@pytest.mark.parametrize('kernels', [(9, 1, 5), (9, 5, 5)])
def test_identity_srcnn_returns_the_bicubic_result(tmp_path, kernels):
    """9-1-5 (the paper) and 9-5-5 (the implementation's released x2/x3/x4 files) both load."""
    path = tmp_path / 'srcnn_x2.pth'
    torch.save(identity_srcnn(kernels), path)
    up = build_upscaler(_cfg('SAMPLE.UPSCALE=2', 'SAMPLE.UPSCALE_METHOD=srcnn', f'SAMPLE.SRCNN_WEIGHTS={path}'))
    assert up.srcnn.kernel_sizes == kernels
    images = _images()
    out, bicubic = up(images).int(), _pil_bicubic(images, 2).int()
    # Y, Cb, Cr of the bicubic image back to RGB: the same pixels up to rounding
    assert (out - bicubic).abs().max().item() <= 1
    assert (out == bicubic).float().mean().item() > 0.9
    assert up.settings == {'upscale': 2, 'method': 'srcnn', 'weights': str(path)}


def test_srcnn_works_on_the_luminance(tmp_path):
    """A last bias of 0.1 adds 25.5 to Y; back in RGB each channel gains 25.5 * 255 / 219."""
    path = tmp_path / 'shift.pth'
    torch.save({'module.' + k: v for k, v in identity_srcnn(shift=0.1).items()}, path)   # DataParallel keys too
    up = build_upscaler(_cfg('SAMPLE.UPSCALE=2', 'SAMPLE.UPSCALE_METHOD=srcnn', f'SAMPLE.SRCNN_WEIGHTS={path}'))
    grey = torch.full((1, 3, 8, 8), 100, dtype=torch.uint8)
    out = up(grey)
    assert out.shape == (1, 3, 16, 16)
    assert torch.all(out == round(100 + 25.5 * 255 / 219))          # 130: a grey stays grey, lighter


def test_srcnn_weight_errors_name_the_file(tmp_path):
    cfg = _cfg('SAMPLE.UPSCALE=3', 'SAMPLE.UPSCALE_METHOD=srcnn')
    assert srcnn_weights_path(cfg) == 'models/srcnn_x3.pth'
    with pytest.raises(FileNotFoundError, match=r"needs SRCNN weights at 'models/srcnn_x3.pth': put the x-factor "
                                                r"weights .*srcnn_x3.pth.* or set SAMPLE.SRCNN_WEIGHTS"):
        build_upscaler(cfg)
    rgb = tmp_path / 'rgb.pth'
    net = SRCNN()
    state = net.state_dict()
    state['conv1.weight'] = torch.zeros(64, 3, 9, 9)
    torch.save(state, rgb)
    with pytest.raises(CheckpointError, match=f"'{rgb}' is not SRCNN weights .*1 channel in and out"):
        build_upscaler(_cfg('SAMPLE.UPSCALE=3', 'SAMPLE.UPSCALE_METHOD=srcnn', f'SAMPLE.SRCNN_WEIGHTS={rgb}'))
    other = tmp_path / 'other.pth'
    torch.save({'fc.weight': torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match=f"'{other}' is not SRCNN weights of the layout conv1/conv2/conv3"):
        build_upscaler(_cfg('SAMPLE.UPSCALE=3', 'SAMPLE.UPSCALE_METHOD=srcnn', f'SAMPLE.SRCNN_WEIGHTS={other}'))
    with pytest.raises(ConfigError, match="SAMPLE.UPSCALE_METHOD must be one of 'bicubic', 'srcnn', got 'lanczos'"):
        build_upscaler(_cfg('SAMPLE.UPSCALE=3', 'SAMPLE.UPSCALE_METHOD=lanczos'))
    with pytest.raises(ConfigError, match='SAMPLE.UPSCALE=0: must be at least 1'):
        _cfg('SAMPLE.UPSCALE=0')
