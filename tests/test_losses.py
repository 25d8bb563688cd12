"""Losses against hand-computed values and a per-sample DAMSM written from the equations."""
import math

import pytest
import torch

from miscc.families.losses import (damsm_loss, discriminator_hinge_loss, generator_adversarial_loss,
                          matching_aware_gp, nearest_mismatch, sent_loss, words_loss)
from miscc.evaluation.metrics import r_precision


def per_sample_word_similarity(regions, words, lens, gamma1, gamma2):
    """AttnGAN Eq. 7-10 for one caption against one image at a time.

    regions: B x D x H x W, words: B x D x T. Returns S[j, i] for image j, caption i.
    """
    batch = regions.size(0)
    ctx_all = regions.flatten(2)                      # B x D x R
    sim = torch.zeros(batch, batch, dtype=regions.dtype)
    for i in range(batch):
        e = words[i, :, :lens[i]]                     # D x T_i
        for j in range(batch):
            v = ctx_all[j]                            # D x R
            s = e.t() @ v                             # T_i x R: word-region dot products
            s_bar = torch.softmax(s, dim=0)           # normalise over words (Eq. 8)
            alpha = torch.softmax(gamma1 * s_bar, dim=1)   # over regions (Eq. 9)
            c = v @ alpha.t()                         # D x T_i region-context of each word
            total = 0.0
            for t in range(lens[i]):
                cos = torch.dot(c[:, t], e[:, t]) / (c[:, t].norm() * e[:, t].norm())
                total = total + torch.exp(gamma2 * cos)
            sim[j, i] = torch.log(total)              # Eq. 10
    return sim


def two_way_loss(scores, class_ids):
    """-log softmax of the diagonal over rows and over columns; same-class pairs removed."""
    batch = scores.size(0)
    loss0 = loss1 = 0.0
    for i in range(batch):
        keep = [j for j in range(batch) if j == i or class_ids[j] != class_ids[i]]
        row = scores[i, keep]
        col = scores[keep, i]
        pos = keep.index(i)
        loss0 = loss0 - (row[pos] - torch.logsumexp(row, 0))
        loss1 = loss1 - (col[pos] - torch.logsumexp(col, 0))
    return loss0 / batch, loss1 / batch


@pytest.fixture
def damsm_inputs():
    torch.manual_seed(0)
    batch = 5
    regions = torch.randn(batch, 16, 4, 4, dtype=torch.float64)
    words = torch.randn(batch, 16, 7, dtype=torch.float64)
    lens = [7, 6, 6, 3, 1]
    for i, n in enumerate(lens):
        words[i, :, n:] = 0  # the RNN pads with zeros
    class_ids = [4, 2, 4, 9, 2]
    return regions, words, lens, class_ids


def test_words_loss_equals_per_sample_formulation(damsm_inputs):
    regions, words, lens, class_ids = damsm_inputs
    g1, g2, g3 = 4.0, 5.0, 10.0
    labels = torch.arange(5)
    loss0, loss1, att = words_loss(regions, words, labels, torch.tensor(lens), class_ids, 5, g1, g2, g3)
    sim = per_sample_word_similarity(regions, words, lens, g1, g2) * g3
    ref0, ref1 = two_way_loss(sim, class_ids)
    assert torch.allclose(loss0, ref0, atol=1e-10) and torch.allclose(loss1, ref1, atol=1e-10)
    assert [tuple(a.shape) for a in att] == [(1, n, 4, 4) for n in lens]
    # each word's attention over the regions sums to one
    assert all(torch.allclose(a.sum(dim=(2, 3)), torch.ones(1, a.size(1), dtype=a.dtype)) for a in att)


def test_words_loss_without_classes_and_with_extra_padding(damsm_inputs):
    regions, words, lens, _ = damsm_inputs
    padded = torch.cat([words, torch.zeros(5, 16, 11, dtype=words.dtype)], dim=2)  # T = 18
    loss0, loss1, _ = words_loss(regions, padded, torch.arange(5), lens, None, 5)
    sim = per_sample_word_similarity(regions, words, lens, 5.0, 5.0) * 10.0
    ref0, ref1 = two_way_loss(sim, list(range(5)))
    assert torch.allclose(loss0, ref0, atol=1e-10) and torch.allclose(loss1, ref1, atol=1e-10)


def test_words_loss_gradients_are_finite(damsm_inputs):
    regions, words, lens, class_ids = damsm_inputs
    regions = regions.float().requires_grad_()
    words = words.float().requires_grad_()
    loss0, loss1, _ = words_loss(regions, words, torch.arange(5), lens, class_ids, 5)
    (loss0 + loss1).backward()
    assert torch.isfinite(regions.grad).all() and torch.isfinite(words.grad).all()
    assert torch.count_nonzero(words.grad[4, :, 1:]) == 0  # padding receives no gradient


def test_sent_loss_equals_per_sample_formulation():
    torch.manual_seed(1)
    img, txt = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    class_ids = [1, 1, 2, 3, 2, 1]
    loss0, loss1 = sent_loss(img, txt, torch.arange(6), class_ids, 6, gamma3=10.0)
    scores = torch.tensor([[10.0 * torch.dot(img[j], txt[i]).item() / (img[j].norm() * txt[i].norm()).item()
                            for i in range(6)] for j in range(6)], dtype=torch.float64)
    ref0, ref1 = two_way_loss(scores, class_ids)
    assert torch.allclose(loss0, ref0, atol=1e-10) and torch.allclose(loss1, ref1, atol=1e-10)


def test_damsm_loss_sums_word_and_sentence_terms(damsm_inputs):
    regions, words, lens, class_ids = damsm_inputs
    code = torch.randn(5, 16, dtype=torch.float64)
    sent = torch.randn(5, 16, dtype=torch.float64)

    def encoder(images):
        return regions, code
    total = damsm_loss(encoder, torch.zeros(5, 3, 8, 8), words, sent, lens, class_ids,
                       gamma1=5.0, gamma2=5.0, gamma3=10.0, lam=0.5)
    w0, w1, _ = words_loss(regions, words, torch.arange(5), lens, class_ids, 5)
    s0, s1 = sent_loss(code, sent, torch.arange(5), class_ids, 5)
    assert torch.allclose(total, 0.5 * (w0 + w1 + s0 + s1))


def test_discriminator_hinge_loss_hand_computed():
    # logits = first feature + first sentence entry, so every term is chosen by hand
    def cond(features, sent):
        return (features[:, 0] + sent[:, 0]).view(-1, 1, 1, 1)
    real = torch.tensor([[2.0], [0.5], [-1.0]])
    fake = torch.tensor([[-3.0], [0.0], [0.25]])
    sent = torch.tensor([[0.0], [-2.0], [1.0]])
    err, err_real, err_fake, err_mis = discriminator_hinge_loss(cond, real, fake, sent)
    # real: logits 2, -1.5, 0 -> relu(1 - .) = 0, 2.5, 1
    assert err_real.item() == pytest.approx((0 + 2.5 + 1) / 3)
    # fake: logits -3, -2, 1.25 -> relu(1 + .) = 0, 0, 2.25
    assert err_fake.item() == pytest.approx(2.25 / 3)
    # mismatched: real[0..1] with sent[1..2]: logits 0, 1.5 -> relu(1 + .) = 1, 2.5
    assert err_mis.item() == pytest.approx((1 + 2.5) / 2)
    assert err.item() == pytest.approx(3.5 / 3 + (0.75 + 1.75) / 2)
    assert generator_adversarial_loss(torch.tensor([1.0, -3.0])).item() == 1.0  # -(1 - 3) / 2


def test_nearest_mismatch_takes_the_most_similar_other_text():
    sent = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [2.0, 0.0]])
    # row 3 is row 0's text (cosine 1): never its mismatch; row 2's nearest is row 1 (cos 0.0995 > 0)
    assert nearest_mismatch(sent).tolist() == [1, 0, 1, 1]
    # only one text in the batch: the official next-row pairing
    assert nearest_mismatch(torch.ones(3, 2)).tolist() == [1, 2, 0]


def test_discriminator_hinge_loss_with_nearest_mismatch_by_hand():
    def cond(features, sent):
        return (features[:, 0] * sent[:, 0]).view(-1, 1, 1, 1)
    real = torch.tensor([[2.0], [0.5], [-1.0]])
    fake = torch.tensor([[-3.0], [0.0], [0.25]])
    sent = torch.tensor([[1.0, 0.0], [1.0, 0.5], [-1.0, 1.0]])
    # cosines: (0, 1) 0.894, (0, 2) -0.707, (1, 2) -0.316: nearest 0 -> 1, 1 -> 0, 2 -> 1
    _, _, _, err_mis = discriminator_hinge_loss(cond, real, fake, sent, mismatch='nearest')
    # logits real[i] * sent[j, 0]: 2 * 1, 0.5 * 1, -1 * 1 -> relu(1 + .) = 3, 1.5, 0
    assert err_mis.item() == pytest.approx((3 + 1.5 + 0) / 3)
    official = discriminator_hinge_loss(cond, real, fake, sent)[3]
    # real[0..1] with sent[1..2]: 2 * 1, 0.5 * -1 -> 3, 0.5
    assert official.item() == pytest.approx((3 + 0.5) / 2)


def test_magp_on_tiny_networks_with_known_gradients():
    # D(x, s) = sum(x^2) + 3 * s_0: grad_x = 2x, grad_s = (3, 0)
    x = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.5]]]], requires_grad=True)   # B x 1 x 1 x 2
    s = torch.tensor([[0.2, 9.0], [-1.0, 4.0]], requires_grad=True)
    logits = (x ** 2).sum(dim=(1, 2, 3)) + 3 * s[:, 0]
    gp = matching_aware_gp(logits, x, s, p=6, k=2)
    norms = [math.sqrt(2.0 ** 2 + 3.0 ** 2), math.sqrt(1.0 ** 2 + 3.0 ** 2)]
    assert gp.item() == pytest.approx(2 * (norms[0] ** 6 + norms[1] ** 6) / 2)
    # the penalty is differentiable: d/dx of k*mean(|g|^6) with |g|^2 = 4|x|^2 + 9
    gp.backward()
    # d/dx0 [ (4 x0^2 + 9)^3 ] = 3 (4 x0^2 + 9)^2 * 8 x0, times k / B = 1; sample 0: x0 = 1
    assert x.grad[0, 0, 0, 0].item() == pytest.approx(3 * 13 ** 2 * 8)


def test_magp_with_linear_network_has_constant_penalty():
    w = torch.randn(3 * 4 * 4)
    v = torch.randn(5)
    x = torch.randn(4, 3, 4, 4, requires_grad=True)
    s = torch.randn(4, 5, requires_grad=True)
    logits = x.flatten(1) @ w + s @ v
    gp = matching_aware_gp(logits, x, s, p=2, k=1)
    assert gp.item() == pytest.approx((w.norm() ** 2 + v.norm() ** 2).item(), rel=1e-5)


def test_r_precision_perfect_and_random_encoders():
    torch.manual_seed(0)
    codes = torch.randn(1000, 32)
    mean, std = r_precision(codes, codes.clone(), runs=3)
    assert mean == 1.0 and std == 0.0
    rand_mean, _ = r_precision(torch.randn(1000, 32), torch.randn(1000, 32), runs=10)
    assert 0.002 < rand_mean < 0.025  # chance is 1 / 100


def test_r_precision_groups_exclude_same_image_captions():
    torch.manual_seed(0)
    base = torch.randn(200, 16)
    codes = base.repeat_interleave(2, dim=0)   # two images per caption group, identical features
    groups = torch.arange(200).repeat_interleave(2)
    tied, _ = r_precision(codes, codes, runs=2)
    assert tied < 1.0                          # identical mismatches tie with the true caption
    assert r_precision(codes, codes, groups=groups, runs=2)[0] == 1.0
    with pytest.raises(ValueError, match='needs at least 99 mismatched'):
        r_precision(codes[:50], codes[:50])
    with pytest.raises(ValueError, match='N x D'):
        r_precision(codes, codes[:, :3])
