"""Losses: DAMSM word/sentence matching (AttnGAN), hinge GAN losses and MA-GP (DF-GAN).

``words_loss`` and ``sent_loss`` keep the official names and argument order, with the
smoothing factors passed explicitly instead of read from a global config. The word
loss is computed for all caption/image pairs at once (no Python loop over the batch);
it equals the official per-caption formulation (``tests/test_losses.py`` checks this).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.conv_gradfix import no_weight_gradients

__all__ = ['cosine_similarity', 'same_class_mask', 'sent_loss', 'words_loss', 'damsm_loss', 'damsm_smoothing',
           'nearest_mismatch', 'hinge_accept', 'hinge_reject',
           'discriminator_hinge_loss', 'generator_adversarial_loss', 'matching_aware_gp']


def cosine_similarity(x1: torch.Tensor, x2: torch.Tensor, dim: int = 1, eps: float = 1e-8):
    """``<x1, x2> / max(|x1| |x2|, eps)`` along ``dim`` (AttnGAN's form: the product of the
    norms is clamped, not each norm)."""
    w12 = torch.sum(x1 * x2, dim)
    w1 = torch.norm(x1, 2, dim)
    w2 = torch.norm(x2, 2, dim)
    return w12 / (w1 * w2).clamp(min=eps)


def same_class_mask(class_ids, batch_size: int, device) -> torch.Tensor | None:
    """B x B bool, True where samples i != j share a class: such pairs are not negatives."""
    if class_ids is None:
        return None
    ids = torch.as_tensor(class_ids, device=device).view(-1)
    if ids.numel() != batch_size:
        raise ValueError(f'class_ids has {ids.numel()} entries for a batch of {batch_size}')
    mask = ids[:, None] == ids[None, :]
    mask.fill_diagonal_(False)
    return mask


def _match_losses(scores: torch.Tensor, labels, mask):
    """Cross-entropy both ways over a B x B score matrix (rows: images, cols: captions)."""
    if mask is not None:
        scores = scores.masked_fill(mask, float('-inf'))
    if labels is None:
        return None, None
    return F.cross_entropy(scores, labels), F.cross_entropy(scores.transpose(0, 1), labels)


def sent_loss(cnn_code: torch.Tensor, rnn_code: torch.Tensor, labels, class_ids, batch_size: int,
              eps: float = 1e-8, gamma3: float = 10.0):
    """Sentence-level DAMSM loss. cnn_code, rnn_code: B x D; labels: arange(B).

    Returns ``(loss image->caption, loss caption->image)``.
    """
    norm_img = torch.norm(cnn_code, 2, dim=1, keepdim=True)
    norm_txt = torch.norm(rnn_code, 2, dim=1, keepdim=True)
    scores = cnn_code @ rnn_code.t()
    scores = scores / (norm_img @ norm_txt.t()).clamp(min=eps) * gamma3
    return _match_losses(scores, labels, same_class_mask(class_ids, batch_size, scores.device))


def word_attention_similarity(img_features: torch.Tensor, words_emb: torch.Tensor, cap_lens,
                              gamma1: float = 5.0, gamma2: float = 5.0):
    """Image-caption word-level similarities for every pair.

    img_features: B x D x H x W regions; words_emb: B x D x T (T >= max(cap_lens)).
    Returns ``(R B x B with R[j, i] = log sum_t exp(gamma2 * cos(word_it, context_ijt))`` for
    image j and caption i, ``attn B x B x T x HW`` region attention of caption i's words on
    image j)``.
    """
    batch, dim, height, width = img_features.shape
    n_words = int(max(cap_lens)) if len(cap_lens) else 0
    words = words_emb[:, :, :n_words].transpose(1, 2)          # B_i x T x D
    context = img_features.reshape(batch, dim, height * width)  # B_j x D x R
    lens = torch.as_tensor(cap_lens, device=words.device).view(-1, 1)
    valid = torch.arange(n_words, device=words.device).view(1, -1) < lens   # B_i x T

    # Eq. 7-8 (AttnGAN): normalise over the caption's words, per region.
    scores = torch.matmul(words.unsqueeze(1), context.unsqueeze(0))   # B_i x B_j x T x R
    scores = scores.masked_fill(~valid.view(batch, 1, n_words, 1), float('-inf'))
    attn = torch.softmax(scores, dim=2)
    # Eq. 9: sharpen by gamma1 and normalise over regions, per word.
    attn = torch.softmax(attn * gamma1, dim=3)
    weighted = torch.matmul(attn, context.transpose(1, 2).unsqueeze(0))  # B_i x B_j x T x D
    row_sim = cosine_similarity(words.unsqueeze(1), weighted, dim=3)   # B_i x B_j x T
    # Eq. 10: exp-sum over the caption's real words only.
    row_sim = torch.exp(row_sim * gamma2) * valid.unsqueeze(1)
    sim = torch.log(row_sim.sum(dim=2))                               # B_i x B_j
    return sim.t(), attn


def words_loss(img_features: torch.Tensor, words_emb: torch.Tensor, labels, cap_lens, class_ids,
               batch_size: int, gamma1: float = 5.0, gamma2: float = 5.0, gamma3: float = 10.0):
    """Word-level DAMSM loss. img_features: B x D x 17 x 17; words_emb: B x D x T.

    Returns ``(loss image->caption, loss caption->image, att_maps)`` where ``att_maps[i]`` is
    1 x len_i x 17 x 17, the attention of caption i's words on image i.
    """
    lens = [int(n) for n in torch.as_tensor(cap_lens).tolist()]
    sim, attn = word_attention_similarity(img_features, words_emb, lens, gamma1, gamma2)
    height, width = img_features.shape[2:]
    att_maps = [attn[i, i, :n].reshape(1, n, height, width) for i, n in enumerate(lens)]
    loss0, loss1 = _match_losses(sim * gamma3, labels,
                                 same_class_mask(class_ids, batch_size, sim.device))
    return loss0, loss1, att_maps


def damsm_loss(image_encoder, images: torch.Tensor, words_emb: torch.Tensor, sent_emb: torch.Tensor,
               cap_lens, class_ids, gamma1: float = 5.0, gamma2: float = 5.0, gamma3: float = 10.0,
               lam: float = 1.0) -> torch.Tensor:
    """``lam * (word losses + sentence losses)`` of ``images`` (B x 3 x H x W) and their captions."""
    batch = images.size(0)
    labels = torch.arange(batch, device=images.device)
    region_features, cnn_code = image_encoder(images)
    w0, w1, _ = words_loss(region_features, words_emb, labels, cap_lens, class_ids, batch,
                           gamma1, gamma2, gamma3)
    s0, s1 = sent_loss(cnn_code, sent_emb, labels, class_ids, batch, gamma3=gamma3)
    return (w0 + w1) * lam + (s0 + s1) * lam


def damsm_smoothing(smooth) -> dict:
    """``damsm_loss``'s keyword arguments from a config's ``TRAIN.SMOOTH`` section."""
    return dict(gamma1=smooth.GAMMA1, gamma2=smooth.GAMMA2, gamma3=smooth.GAMMA3, lam=smooth.LAMBDA)


def nearest_mismatch(sent: torch.Tensor, same: float = 0.999) -> torch.Tensor:
    """B x D sentence codes -> B indices: for each sentence the most similar other one (cosine)
    that is not the same text (cosine below ``same``; identical captions of two images would be
    no mismatch); a row with none takes the next row, as the official pairing does."""
    with torch.no_grad():
        sim = cosine_similarity(sent.unsqueeze(1), sent.unsqueeze(0), dim=-1).float()    # B x B
        sim = sim.masked_fill(sim >= same, float('-inf'))
        best = sim.argmax(dim=1)
        fallback = torch.roll(torch.arange(sent.size(0), device=sent.device), -1)
        return torch.where(torch.isfinite(sim.max(dim=1).values), best, fallback)


def hinge_accept(logits: torch.Tensor) -> torch.Tensor:
    """``mean(relu(1 - logits))``: the hinge on pairs the discriminator should accept."""
    return F.relu(1.0 - logits).mean()


def hinge_reject(logits: torch.Tensor) -> torch.Tensor:
    """``mean(relu(1 + logits))``: the hinge on pairs the discriminator should reject."""
    return F.relu(1.0 + logits).mean()


def discriminator_hinge_loss(cond_logits, real_features: torch.Tensor, fake_features: torch.Tensor,
                             sent: torch.Tensor, mismatch: str = 'shifted'):
    """``relu(1 - D(x, s)) + (relu(1 + D(G(z, s), s)) + relu(1 + D(x, s_mis))) / 2``, means over
    the batch. Mismatched pairs (``mismatch``): ``'shifted'``, the official, real features
    0..B-2 with sentences 1..B-1; ``'nearest'``, every real image with the most similar other
    sentence of the batch (``nearest_mismatch``): a hard negative that differs in a detail
    rather than, mostly, in the most salient word.

    ``cond_logits(features, sent)`` is the discriminator's matching head (``netD.COND_DNET``).
    Returns ``(errD, errD_real, errD_fake, errD_mismatch)``.
    """
    batch = real_features.size(0)
    err_real = hinge_accept(cond_logits(real_features, sent))
    if mismatch == 'nearest':
        err_mismatch = hinge_reject(cond_logits(real_features, sent[nearest_mismatch(sent)]))
    else:
        err_mismatch = hinge_reject(cond_logits(real_features[:batch - 1], sent[1:batch]))
    err_fake = hinge_reject(cond_logits(fake_features, sent))
    return err_real + (err_fake + err_mismatch) / 2.0, err_real, err_fake, err_mismatch


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """``-mean(D(G(z, s), s))``."""
    return -fake_logits.mean()


def matching_aware_gp(logits: torch.Tensor, images: torch.Tensor, sent: torch.Tensor,
                      p: float = 6.0, k: float = 2.0) -> torch.Tensor:
    """MA-GP: ``k * mean(||[dD/dx, dD/ds]||_2 ^ p)`` over the batch.

    ``logits`` must have been computed from ``images`` (B x 3 x H x W) and ``sent`` (B x D),
    both with ``requires_grad``. The gradient graph is kept so the penalty can be minimised.
    """
    with no_weight_gradients():  # only dD/dx and dD/ds are asked for
        grads = torch.autograd.grad(outputs=logits, inputs=(images, sent),
                                    grad_outputs=torch.ones_like(logits),
                                    retain_graph=True, create_graph=True, only_inputs=True)
    grad = torch.cat([g.reshape(g.size(0), -1) for g in grads], dim=1)
    grad_l2norm = torch.sqrt(torch.sum(grad ** 2, dim=1))
    return k * torch.mean(grad_l2norm ** p)
