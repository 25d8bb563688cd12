"""What the shared loop, sampling and evaluation need from a generator family.

A family (``MODEL.NAME``) is a file of networks in ``models/`` and a module here that builds
them from the config, names their checkpoint files and holds the update (the optimisers and
one training iteration). Everything else (data, the epoch loop, checkpoints, sampling,
metrics) is shared.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn as nn

from models.generator import num_stages

from ..core.checkpoint import load_model_state
from ..core.config import ConfigError

__all__ = ['Family', 'Update', 'noise_for', 'frozen', 'autocast', 'optimizer_step', 'loss_floats',
           'adam_for_g_and_d', 'check_image_size']


def check_image_size(cfg) -> int:
    """TREE.BASE_SIZE, or a ConfigError naming it unless the generator's up-sampling stages
    (4, 8, ... px, doubling) reach it: a power of two >= 32."""
    size = cfg.TREE.BASE_SIZE
    try:
        num_stages(size)
    except ValueError:
        raise ConfigError(f'TREE.BASE_SIZE={size}: the {cfg.MODEL.NAME} generator doubles 4 px until the image '
                          f'size, which must be a power of two >= 32: set TREE.BASE_SIZE=64, 128 or 256') from None
    return size


def noise_for(indices: Iterable[int], nz: int, seed: int) -> torch.Tensor:
    """len(indices) x nz standard normal noise; image n's noise depends only on (seed, n),
    so results do not depend on the batch size and an interrupted run can resume."""
    gen = torch.Generator()
    rows = []
    for n in indices:
        gen.manual_seed(seed * 1_000_003 + int(n))
        rows.append(torch.randn(nz, generator=gen))
    return torch.stack(rows)


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Temporarily stop gradients into the modules' parameters (inputs still get them): the
    G step needs dD/dx, not dD/dtheta, and skipping the latter changes no result."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def autocast(enabled: bool, device: torch.device):
    """bfloat16 autocast on ``device`` when ``enabled``, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """zero_grad (to None), backward, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def loss_floats(losses: dict) -> dict:
    """``{name: float}`` of an iteration's loss tensors, read back in one device sync (one
    ``.item()`` each would wait for the device once per loss)."""
    names = list(losses)
    values = torch.stack([losses[k].detach().float() for k in names]).tolist()
    return dict(zip(names, values))


def adam_for_g_and_d(cfg, nets: dict) -> dict:
    """``{'optimizerG', 'optimizerD'}``: Adam over ``nets['netG']`` / ``nets['netD']`` with
    TRAIN.GENERATOR_LR / DISCRIMINATOR_LR and TRAIN.BETA1 / BETA2."""
    train = cfg.TRAIN
    # foreach: the multi-tensor form (CUDA's default) also on the CPU, where it is twice as fast
    # as the per-tensor loop with bit-identical results
    adam = dict(betas=(train.BETA1, train.BETA2), foreach=True)
    return {'optimizerG': torch.optim.Adam(nets['netG'].parameters(), lr=train.GENERATOR_LR, **adam),
            'optimizerD': torch.optim.Adam(nets['netD'].parameters(), lr=train.DISCRIMINATOR_LR, **adam)}


class Update:
    """One training iteration of a family: ``update(batch) -> {loss name: float}``.

    ``optimizers`` maps the training-state key of each optimiser (``'optimizerG'``...) to it;
    ``last_real`` / ``last_fake`` hold the last iteration's images for TensorBoard.
    """
    optimizers: dict
    last_real: torch.Tensor | None = None
    last_fake: torch.Tensor | None = None

    def __call__(self, batch) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What the update keeps between iterations besides networks and optimisers (step
        counters...), saved in the training state for an exact resume; {} for none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s values."""


class Family:
    """A generator family. Subclasses set ``name`` and ``networks`` and implement
    ``build_networks`` and ``make_update``; the rest has defaults that fit SSA-GAN-like models.

    ``networks``: the keys of ``build_networks``' dict, which are also the training-state keys
    and the stems of the per-epoch files (``netG_120.pth``); ``networks[0]`` is the generator.
    ``save_intervals``: which TRAIN key sets each network's save interval.
    """
    name = ''
    networks: tuple = ('netG', 'netD')
    save_intervals: dict = {'netG': 'GSAVE_INTERVAL', 'netD': 'DSAVE_INTERVAL'}
    # whether the family can condition on precomputed sentence embeddings alone (DATA.HD5_FILE),
    # without the DAMSM encoders' word features and losses
    precomputed_embeddings: bool = False
    postfix_losses: tuple = ()      # the losses the progress bar shows (() : the trainer's choice)

    def build_networks(self, cfg) -> dict:
        """Freshly initialised networks on the CPU, keyed by ``networks``."""
        raise NotImplementedError

    def build_generator(self, cfg) -> nn.Module:
        return self.build_networks(cfg)[self.networks[0]]

    def load_weights(self, module: nn.Module, path: str, name: str) -> nn.Module:
        """Load network ``name`` from a checkpoint file (ours or a released one), strictly."""
        return load_model_state(module, path)

    def is_release_start(self, path: str) -> bool:
        """Whether ``path`` (a file named ``state*``) is another code base's training state that
        this family starts from (``load_release_start``) rather than one of this project's."""
        return False

    def load_release_start(self, nets: dict, optimizers: dict, path: str) -> int | None:
        """Load such a file into ``nets`` and ``optimizers``; the next epoch, or None when
        ``path`` is not one (the per-network files of an epoch are loaded instead)."""
        return None

    def noise(self, cfg, indices: Iterable[int], seed: int) -> torch.Tensor:
        """Sampling noise of images ``indices`` (len x GAN.Z_DIM), see ``noise_for``."""
        return noise_for(indices, cfg.GAN.Z_DIM, seed)

    def generate(self, netG: nn.Module, noise: torch.Tensor, sent: torch.Tensor):
        """``(images B x 3 x S x S in [-1, 1], masks)``: masks a list of B x 1 x s x s maps in
        [0, 1] from coarse to fine (empty when the family has none)."""
        out = netG(noise, sent)
        return (out[0], list(out[1])) if isinstance(out, tuple) else (out, [])

    def prepare_networks(self, cfg, nets: dict, device: torch.device) -> None:
        """Family-specific model options (fast kernels, ...) applied before wrapping."""

    def make_optimizers(self, cfg, nets: dict, text_encoder=None, image_encoder=None,
                        finetune: bool = False) -> dict:
        """Optimisers keyed by their training-state names (``'optimizerG'``...)."""
        raise NotImplementedError

    def make_update(self, cfg, nets: dict, modules: dict, encoders: dict, optimizers: dict,
                    finetune: bool = False, distributed: bool = False) -> Update:
        """The update on the bare ``nets`` and ``encoders`` (``'text_encoder'``, ``'image_encoder'``),
        their device-wrapped forms ``modules`` (the keys of both) and ``optimizers``."""
        raise NotImplementedError
