"""The papers' evaluation protocols: StackGAN's CUB Inception Score (resize, batches, splits,
background logit) and DM-GAN's R-precision, against hand-computed cases."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from miscc.evaluation.cub_inception import PROTOCOL_BATCH, cub_inception_score, imresize_bilinear, protocol_inputs
from miscc.evaluation.metrics import r_precision, r_precision_dmgan, stackgan_inception_score


# ----------------------------------------------------------------------------- resize
def _pil_bilinear_weights(in_size: int, out_size: int) -> list:
    """Per output pixel (first source pixel, integer weights) of PIL's bilinear resampling
    (libImaging/Resample.c): a triangle filter widened by the scale when shrinking, centres
    at half pixels, the window clipped to the image and renormalised, weights in fixed point
    with 22 fractional bits."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    rows = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        w = np.array([max(0.0, 1.0 - abs((x + xmin - center + 0.5) / filterscale)) for x in range(xmax - xmin)])
        w = w / w.sum()
        rows.append((xmin, np.floor(0.5 + w * (1 << 22)).astype(np.int64)))
    return rows


def _pil_pass(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One 8-bit pass along ``axis`` of an H x W x C uint8 array, rounded and clipped."""
    moved = np.moveaxis(image.astype(np.int64), axis, 0)
    out = []
    for xmin, k in _pil_bilinear_weights(moved.shape[0], out_size):
        acc = (1 << 21) + np.tensordot(k, moved[xmin:xmin + len(k)], axes=(0, 0))
        out.append(np.clip(acc >> 22, 0, 255))
    return np.moveaxis(np.stack(out), 0, axis).astype(np.uint8)


def _pil_resize_reference(image: np.ndarray, size: int) -> np.ndarray:
    # PIL resamples horizontally first, into an 8-bit image, then vertically
    return _pil_pass(_pil_pass(image, size, axis=1), size, axis=0)


@pytest.mark.parametrize('height,width', [(256, 256), (375, 500), (64, 80)])
def test_resize_is_pil_bilinear_on_uint8(height, width):
    rng = np.random.RandomState(height)
    noise = rng.randint(0, 256, (height, width, 3))
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    images = np.stack([noise, ramp]).astype(np.uint8)
    out = imresize_bilinear(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 299, 299)
    for got, image in zip(out.permute(0, 2, 3, 1).numpy(), images):
        np.testing.assert_array_equal(got, _pil_resize_reference(image, 299))


def test_resize_semantics_enlarging_is_half_pixel_bilinear_shrinking_is_antialiased():
    rng = np.random.RandomState(1)
    small = torch.from_numpy(rng.randint(0, 256, (1, 3, 256, 256)).astype(np.uint8))
    up = imresize_bilinear(small).float()
    # enlarging 256 -> 299: plain bilinear with half-pixel centres (align_corners=False), rounded
    expect = F.interpolate(small.float(), size=(299, 299), mode='bilinear', align_corners=False)
    assert float((up - expect).abs().max()) <= 1.0
    big = torch.from_numpy(rng.randint(0, 256, (1, 3, 600, 600)).astype(np.uint8))
    down = imresize_bilinear(big).float()
    antialiased = F.interpolate(big.float(), size=(299, 299), mode='bilinear', align_corners=False, antialias=True)
    plain = F.interpolate(big.float(), size=(299, 299), mode='bilinear', align_corners=False)
    assert float((down - antialiased).abs().max()) <= 1.0
    assert float((down - plain).abs().mean()) > 10          # noise averaged over ~4 x 4 pixels, not 2 x 2


def test_protocol_inputs_scale_to_minus_one_one():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 8, 8).contiguous()
    x = protocol_inputs(images)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    assert torch.all(x[0] == -1.0) and torch.all(x[1] == 1.0)


def test_resize_rejects_other_inputs():
    with pytest.raises(ValueError, match='uint8 B x 3 x H x W'):
        imresize_bilinear(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match='uint8 B x 3 x H x W'):
        imresize_bilinear(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))


# ----------------------------------------------------------------------------- IS formula
def test_stackgan_score_drops_the_background_logit_hand_computed():
    # split 1: two confident, different classes -> p(y) = (1/2, 1/2), KL = log 2, IS = 2;
    # split 2: two uniform predictions -> KL = 0, IS = 1. The background column would win
    # every softmax if it were kept (then IS = 1 in both).
    logits = torch.tensor([[100., 50., -50.], [100., -50., 50.], [100., 0., 0.], [100., 0., 0.]])
    mean, std = stackgan_inception_score(logits, splits=2, batch_size=1)
    assert mean == pytest.approx(1.5, abs=1e-9) and std == pytest.approx(0.5, abs=1e-9)


def test_stackgan_score_uses_full_batches_only_after_the_shuffle():
    logits = torch.tensor([[0., 50., -50.], [0., -50., 50.]] * 4 + [[0., 50., -50.]] * 2)    # 10 images
    mean, _ = stackgan_inception_score(logits, splits=1, batch_size=4)       # the first 8: balanced
    assert mean == pytest.approx(2.0, abs=1e-9)
    assert stackgan_inception_score(logits, splits=1, batch_size=1)[0] < 1.99   # all 10: 6 vs 4
    seed = 3
    order = np.random.RandomState(seed).permutation(10)[:8]
    assert stackgan_inception_score(logits, splits=2, batch_size=4, seed=seed) == \
        pytest.approx(stackgan_inception_score(logits[torch.from_numpy(order)], splits=2, batch_size=4))


def test_stackgan_score_matches_the_numpy_formula_of_inception_score_py():
    rng = np.random.RandomState(0)
    logits = rng.randn(200, 51) * 3
    preds = np.exp(logits[:, 1:] - logits[:, 1:].max(1, keepdims=True))
    preds /= preds.sum(1, keepdims=True)
    preds = preds[:192]                                  # 3 full batches of 64
    scores = []
    for i in range(10):
        part = preds[i * 192 // 10:(i + 1) * 192 // 10]
        kl = np.mean(np.sum(part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True))), 1))
        scores.append(np.exp(kl))
    mean, std = stackgan_inception_score(torch.from_numpy(logits), splits=10, batch_size=64)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12) and std == pytest.approx(np.std(scores), rel=1e-9)


def test_stackgan_score_errors_on_too_few_images():
    with pytest.raises(ValueError, match='full batches of 64'):
        stackgan_inception_score(torch.zeros(63, 51))


class _StubClassifier(torch.nn.Module):
    """Logits from the mean brightness: class 1 for dark images, class 2 for bright ones;
    records what it was given."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        m = x.mean((1, 2, 3))
        return torch.stack([torch.full_like(m, 30.0), -20 * m, 20 * m, torch.zeros_like(m)], 1)


def test_cub_inception_score_with_a_stub_network():
    # 130 images: 65 dark, 65 bright; batches of 64 -> 128 scored
    dark = torch.full((65, 3, 16, 16), 20, dtype=torch.uint8)
    bright = torch.full((65, 3, 16, 16), 235, dtype=torch.uint8)
    images = torch.cat([dark, bright])
    stub = _StubClassifier()
    result = cub_inception_score(stub, [images[:100], images[100:]], splits=2, seed=0)
    assert [x.shape[0] for x in stub.inputs] == [64, 36, 30]
    assert all(x.shape[1:] == (3, 299, 299) for x in stub.inputs)
    assert torch.equal(stub.inputs[0], protocol_inputs(images[:64]))
    assert result['count'] == 130 and result['used'] == 2 * PROTOCOL_BATCH
    # by hand: p(y|x) is (almost) one-hot on class 1 or 2 over classes 1..3; a split of d dark
    # and b bright images scores exp(H(d / n, b / n))
    order = np.random.RandomState(0).permutation(130)[:128]
    bright_flags = order >= 65
    expect = []
    for part in (bright_flags[:64], bright_flags[64:]):
        q = part.mean()
        expect.append(math.exp(-(q * math.log(q) + (1 - q) * math.log(1 - q))))
    assert result['mean'] == pytest.approx(np.mean(expect), abs=1e-6)
    assert result['std'] == pytest.approx(np.std(expect), abs=1e-6)


# ----------------------------------------------------------------------------- R-precision
def _dmgan_case():
    """Pool: one caption per class, class 0 (1, 0), class 1 (0, 1), class 2 (-1, 0).
    a (class 0): image (1, 0), caption (1, .1): beats classes 1 and 2, would lose to class 0
      (never drawn: same class) -> hit.
    b (class 2): image (0, 1), caption (1, 1): loses to class 1 (drawn with prob. 1 - 2^-99) -> miss.
    c (class 1): image (1, 0), caption (1, 0): ties with class 0 -> hit (argmax == 0 there)."""
    img = {'a': (1., 0.), 'b': (0., 1.), 'c': (1., 0.)}
    txt = {'a': (1., .1), 'b': (1., 1.), 'c': (1., 0.)}
    cls = {'a': 0, 'b': 2, 'c': 1}
    kinds = 'abcacb'                                      # hits 1 0 1 1 1 0
    pool = torch.tensor([[1., 0.], [0., 1.], [-1., 0.]])
    return (torch.tensor([img[k] for k in kinds]), torch.tensor([txt[k] for k in kinds]),
            [cls[k] for k in kinds], pool, [0, 1, 2])


def test_dmgan_r_precision_hand_computed():
    image, text, classes, pool, pool_classes = _dmgan_case()
    # unshuffled, splits of 3 averaging their first 2 (DM-GAN's R[i*3000:(i+1)*3000-1]):
    # [1, 0] -> .5, [1, 1] -> 1
    mean, std = r_precision_dmgan(image, text, classes, pool, pool_classes, splits=2, shuffle=False)
    assert (mean, std) == pytest.approx((0.75, 0.25))
    mean, std = r_precision_dmgan(image, text, classes, pool, pool_classes, splits=2, shuffle=False,
                                  drop_last_of_split=False)                # [1, 0, 1], [1, 1, 0]
    assert (mean, std) == pytest.approx((2 / 3, 0.0))
    for seed in range(3):                                 # any shuffle: equal chunks average to 4 / 6
        mean, _ = r_precision_dmgan(image, text, classes, pool, pool_classes, splits=2, seed=seed,
                                    drop_last_of_split=False)
        assert mean == pytest.approx(2 / 3)


def test_dmgan_r_precision_scale_invariant_and_errors():
    image, text, classes, pool, pool_classes = _dmgan_case()
    scaled = r_precision_dmgan(image * 7, text * 0.1, classes, pool * 3, pool_classes, splits=2, shuffle=False)
    assert scaled == pytest.approx((0.75, 0.25))          # cosine similarity
    with pytest.raises(ValueError, match='no pool caption of a class other than 0'):
        r_precision_dmgan(image[:1], text[:1], [0], pool[:1], [0], splits=1, drop_last_of_split=False)
    with pytest.raises(ValueError, match='classes has 5 entries for 6 images'):
        r_precision_dmgan(image, text, classes[:5], pool, pool_classes)


def test_project_r_precision_counts_a_tie_as_a_miss_unlike_dmgan():
    # 100 pairs whose captions are all the same direction as every image: each true caption
    # ties with its 99 mismatches; the project's protocol (strictly highest) scores 0,
    # DM-GAN's (argmax == 0, first index wins) scores 1
    codes = torch.ones(100, 4)
    assert r_precision(codes, codes, runs=1)[0] == 0.0
    assert r_precision_dmgan(codes, codes, list(range(100)), codes, list(range(100)), splits=10)[0] == 1.0
