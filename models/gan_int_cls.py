"""GAN-INT-CLS networks (Reed et al. 2016): DCGAN generator and matching-aware discriminator, 64 px.

``image_size`` other than 64 (a power of two >= 32) drops or adds stride-2 stages at the wide
end of the channel schedule (32 px: G starts at 4ngf, D ends at 4ndf), the usual DCGAN way to
change the size; at 64 px the layers and keys are the implementation's.

Module and attribute names are those of the widely used PyTorch implementation
(aelnouby/Text-to-Image-Synthesis, ``models/gan_cls.py``, ``wgan_cls.py``, ``gan.py``,
``wgan.py``), so its checkpoints map key for key once the ``module.`` prefix of its
DataParallel wrapper is removed (``from_reference_state_dict``)::

    Generator       projection.{0 Linear, 1 BatchNorm1d}          (conditional only)
                    netG.{0,3,6,9,12 ConvTranspose2d; 1,4,7,10 BatchNorm2d}
    Discriminator   netD_1.{0,2,5,8 Conv2d; 3,6,9 BatchNorm2d}
                    projector.projection.{0 Linear, 1 BatchNorm1d}  (conditional only)
                    minibatch.T_tensor                              (minibatch discrimination only)
                    netD_2.0 Conv2d

The layers are the implementation's, which simplifies the paper's in two places: the paper's
D has a 1 x 1 convolution + BN + leaky ReLU between the concatenation and the final 4 x 4
convolution, and its G compresses the text with fully connected + leaky ReLU only (the
implementation adds BatchNorm1d there). The authors' Torch code (reedscot/icml2016) further
uses residual blocks and ngf = 128.

One discriminator serves the BCE and the WGAN losses: it returns raw scores (logits).
The implementation ends ``netD_2`` with a ``Sigmoid`` for the BCE variant and averages
the critic's scores over the batch inside ``forward`` for the WGAN variant; neither has
parameters, so the losses apply them instead (``miscc/families/gan_int_cls.py``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ['Generator', 'Discriminator', 'text_projection', 'ReplicatedProjection', 'MinibatchDiscrimination',
           'init_dcgan_weights', 'from_reference_state_dict', 'IMAGE_SIZE', 'stage_count']

IMAGE_SIZE = 64   # the paper's and the implementation's


def stage_count(image_size: int) -> int:
    """Stride-2 stages between the 4 x 4 map and image_size / 2 (64 px: 3)."""
    n = int(image_size).bit_length() - 1
    if image_size < 32 or 2 ** n != image_size:
        raise ValueError(f'GAN-INT-CLS image size must be a power of two >= 32, got {image_size}')
    return n - 3


def text_projection(embedding_dim: int, projected_dim: int) -> nn.Sequential:
    """``Linear -> BatchNorm1d -> LeakyReLU(0.2)``: B x embedding_dim -> B x projected_dim.

    The paper has fully connected + leaky ReLU; the implementation adds the batch norm.
    """
    return nn.Sequential(
        nn.Linear(embedding_dim, projected_dim),
        nn.BatchNorm1d(projected_dim),
        nn.LeakyReLU(0.2, inplace=True),
    )


class ReplicatedProjection(nn.Module):
    """D's text path (the implementation's ``Concat_embed``): project the embedding,
    replicate it over the 4 x 4 feature map and concatenate it after the image channels.

    ``forward(features B x C x H x W, embedding B x E) -> B x (C + projected_dim) x H x W``.
    """

    def __init__(self, embedding_dim: int, projected_dim: int):
        super().__init__()
        self.projection = text_projection(embedding_dim, projected_dim)

    def forward(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        projected = self.projection(embedding)
        tiled = projected[:, :, None, None].expand(-1, -1, features.size(2), features.size(3))
        return torch.cat([features, tiled], 1)


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016, "Improved Techniques for Training GANs",
    section 3.2): lets D compare each sample with the rest of its batch, so that a collapsed G
    (near-identical fakes) is easy to tell from real batches.

    ``forward(features B x F...) -> o B x kernels``: ``M_i = f(x_i) T`` reshaped to kernels x
    kernel_dim, ``c_b(x_i, x_j) = exp(-||M_i,b - M_j,b||_1)``, ``o(x_i)_b = sum_j c_b(x_i, x_j)``
    over the whole batch (j = i included, as the paper writes the sum and the implementation's
    ``utils.minibatch_discriminator`` computes it). ``T_tensor`` (F x kernels * kernel_dim) has
    the implementation's name and its N(0, 0.1^2) initialisation.
    """

    def __init__(self, in_features: int, kernels: int, kernel_dim: int):
        super().__init__()
        self.kernels, self.kernel_dim = kernels, kernel_dim
        self.T_tensor = nn.Parameter(torch.randn(in_features, kernels * kernel_dim) * 0.1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        m = (features.flatten(1) @ self.T_tensor).view(-1, self.kernels, self.kernel_dim)   # B x K x C
        l1 = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(-1)                                # B x B x K
        return torch.exp(-l1).sum(1)                                                        # B x K


class Generator(nn.Module):
    """DCGAN generator at 64 x 64 (``image_size``: see the module docstring).

    ``forward(noise B x noise_dim (or B x noise_dim x 1 x 1), embedding B x embedding_dim)
    -> image B x 3 x 64 x 64 in [-1, 1]``. Conditional: the projected embedding (128) and the
    noise are concatenated in that order, as the implementation does (it fixes which input
    channels of ``netG.0`` read the text). ``conditional=False`` is the unconditional
    ("vanilla") generator of ``models/gan.py``: no projection, ``forward(noise)``.
    """

    def __init__(self, noise_dim: int = 100, embedding_dim: int = 1024, projected_dim: int = 128,
                 ngf: int = 64, conditional: bool = True, image_size: int = IMAGE_SIZE):
        super().__init__()
        self.noise_dim = noise_dim
        self.image_size = image_size
        self.embedding_dim = embedding_dim if conditional else 0
        self.projected_dim = projected_dim if conditional else 0
        self.ngf = ngf
        self.conditional = conditional
        if conditional:
            self.projection = text_projection(embedding_dim, projected_dim)
        latent_dim = noise_dim + self.projected_dim
        mults = [2 ** k for k in range(stage_count(image_size), 0, -1)]   # 64 px: 8, 4, 2
        layers = [nn.ConvTranspose2d(latent_dim, ngf * mults[0], 4, 1, 0, bias=False),
                  nn.BatchNorm2d(ngf * mults[0]), nn.ReLU(True)]
        for mult in mults:                            # 4 -> 8 -> 16 -> 32 px, halving the width
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh()]   # 32 -> 64 px
        self.netG = nn.Sequential(*layers)

    def forward(self, noise: torch.Tensor, embedding: Optional[torch.Tensor] = None) -> torch.Tensor:
        if noise[0].numel() != self.noise_dim:
            raise ValueError(f'noise must be B x {self.noise_dim} (or B x {self.noise_dim} x 1 x 1), '
                             f'got {tuple(noise.shape)}')
        latent = noise.reshape(noise.size(0), self.noise_dim, 1, 1)
        if self.conditional:
            if embedding is None:
                raise ValueError('the conditional generator needs a text embedding '
                                 f'(B x {self.embedding_dim})')
            projected = self.projection(embedding)[:, :, None, None]
            latent = torch.cat([projected, latent], 1)
        return self.netG(latent)


class Discriminator(nn.Module):
    """DCGAN discriminator with the matching-aware text input at 4 x 4.

    ``forward(image B x 3 x 64 x 64, embedding B x embedding_dim) -> (logits B,
    features B x 8ndf x 4 x 4)`` (``image_size`` 32: B x 3 x 32 x 32 in, B x 4ndf x 4 x 4
    features): the features are the image-only output of the conv stack
    (``netD_1``, before the text is concatenated), the ones the implementation's feature
    matching compares. ``conditional=False`` is the unconditional ("vanilla") D of
    ``models/gan.py`` (``forward(image)``). ``batch_norm=False`` drops the BN layers of the
    conv stack, the implementation's ``improved=True`` WGAN critic (never selected by its
    factory); the text projection keeps its BN either way. ``minibatch_kernels`` > 0 adds
    minibatch discrimination on the 4 x 4 image features: its ``minibatch_kernels`` outputs are
    replicated over the 4 x 4 map and concatenated after the text (``netD_2`` reads them too;
    the implementation defines the layer but never connects it).
    """

    def __init__(self, embedding_dim: int = 1024, projected_dim: int = 128, ndf: int = 64,
                 conditional: bool = True, batch_norm: bool = True, minibatch_kernels: int = 0,
                 minibatch_kernel_dim: int = 5, image_size: int = IMAGE_SIZE):
        super().__init__()
        self.image_size = image_size
        self.embedding_dim = embedding_dim if conditional else 0
        self.projected_dim = projected_dim if conditional else 0
        self.ndf = ndf
        self.conditional = conditional
        layers = [nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        mults = [2 ** k for k in range(stage_count(image_size))]   # 64 px: 1, 2, 4
        for mult in mults:                            # 32 -> 16 -> 8 -> 4 px, doubling the width
            layers.append(nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False))
            if batch_norm:
                layers.append(nn.BatchNorm2d(ndf * mult * 2))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.netD_1 = nn.Sequential(*layers)
        if conditional:
            self.projector = ReplicatedProjection(embedding_dim, projected_dim)
        self.minibatch_kernels = minibatch_kernels
        width = ndf * 2 * mults[-1]                   # of the 4 x 4 features (64 px: 8ndf)
        if minibatch_kernels:
            self.minibatch = MinibatchDiscrimination(width * 4 * 4, minibatch_kernels, minibatch_kernel_dim)
        joint_channels = width + self.projected_dim + minibatch_kernels
        self.netD_2 = nn.Sequential(nn.Conv2d(joint_channels, 1, 4, 1, 0, bias=False))

    def forward(self, image: torch.Tensor,
                embedding: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if image.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f'the discriminator takes {self.image_size} x {self.image_size} images, '
                             f'got {tuple(image.shape[-2:])}')
        features = self.netD_1(image)
        joint = features
        if self.conditional:
            if embedding is None:
                raise ValueError('the conditional discriminator needs a text embedding '
                                 f'(B x {self.embedding_dim})')
            joint = self.projector(features, embedding)
        if self.minibatch_kernels:
            closeness = self.minibatch(features)[:, :, None, None].expand(-1, -1, *features.shape[2:])
            joint = torch.cat([joint, closeness], 1)
        return self.netD_2(joint).reshape(-1), features


@torch.no_grad()
def init_dcgan_weights(module: nn.Module) -> None:
    """The implementation's ``weights_init`` (use with ``net.apply``): convolution and
    transposed-convolution weights ~ N(0, 0.02), batch-norm scales ~ N(1, 0.02) and shifts 0;
    linear layers keep PyTorch's default initialisation."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        module.weight.normal_(0.0, 0.02)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        module.weight.normal_(1.0, 0.02)
        module.bias.zero_()


def from_reference_state_dict(state_dict: Mapping[str, torch.Tensor],
                              model: Optional[nn.Module] = None) -> 'OrderedDict[str, torch.Tensor]':
    """A state dict saved by the implementation (``gen_<epoch>.pth`` / ``disc_<epoch>.pth``,
    written through ``nn.DataParallel``) with its ``module.`` prefix removed.

    Its files predate ``num_batches_tracked``. A plain dict of them loads into the networks with
    ``load_state_dict(..., strict=True)`` (BatchNorm fills the counters in for state dicts without
    version metadata); given ``model``, the missing counters are added as 0 (the value BatchNorm
    fills in), so that checks comparing the keys accept the file too.
    """
    prefix = 'module.'
    state = OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v)
                        for k, v in state_dict.items())
    counter = 'num_batches_tracked'
    if model is not None and not any(k.endswith(counter) for k in state):
        for key in model.state_dict():
            if key.endswith(counter):
                state[key] = torch.tensor(0, dtype=torch.long)
    return state
