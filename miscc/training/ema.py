"""An exponential moving average of the generator's weights (``TRAIN.G_EMA``).

After every training iteration ``ema = decay * ema + (1 - decay) * G`` for each parameter and
each floating-point buffer (BatchNorm running means and variances: the averaged weights are
paired with averaged statistics, as ``torch.optim.swa_utils.AveragedModel(use_buffers=True)``
does); integer buffers (``num_batches_tracked``) are copied. The live generator and its update
are untouched, so training with the average on gives the same G as without it.

With ``rampup`` the decay of update n (0-based) is ``min(decay, (1 + n) / (10 + n))``, the
``num_updates`` form of TensorFlow's ExponentialMovingAverage: early averages forget the
random initialisation quickly.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ['GeneratorEMA', 'ema_decay']


def ema_decay(decay: float, updates: int, rampup: bool) -> float:
    """The decay of update number ``updates`` (0-based)."""
    return min(decay, (1.0 + updates) / (10.0 + updates)) if rampup else decay


class GeneratorEMA:
    """The averaged copy ``module`` of a generator (same class and state-dict keys, eval mode,
    no gradients) and the number of ``updates`` taken.

    ``module`` is a separate instance the caller builds (``Family.build_generator``) on the
    generator's device; it starts as a copy of ``source``.
    """

    def __init__(self, module: nn.Module, source: nn.Module, decay: float, rampup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f'TRAIN.G_EMA_DECAY must be in [0, 1), got {decay}')
        self.module = module.requires_grad_(False).eval()
        self.decay, self.rampup, self.updates = float(decay), bool(rampup), 0
        self.copy_from(source)

    @torch.no_grad()
    def copy_from(self, source: nn.Module) -> None:
        """Set the average to ``source``'s current weights and buffers (strict key match)."""
        self.module.load_state_dict(source.state_dict(), strict=True)

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        """One averaging step towards ``source`` (the bare generator, after its optimiser step)."""
        weight = 1.0 - ema_decay(self.decay, self.updates, self.rampup)
        live = dict(source.named_parameters())
        for name, p in self.module.named_parameters():
            p.lerp_(live[name].detach(), weight)
        live_buffers = dict(source.named_buffers())
        for name, b in self.module.named_buffers():
            other = live_buffers[name]
            if b.is_floating_point():
                b.lerp_(other, weight)
            else:
                b.copy_(other)
        self.updates += 1

    def state_dict(self) -> dict:
        """For the training state: the averaged weights (official keys) and the update count."""
        return {'module': {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
                'updates': self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state['module'], strict=True)
        self.updates = int(state['updates'])
