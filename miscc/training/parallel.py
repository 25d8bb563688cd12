"""Multi-GPU wrappers: DataParallel with synchronised BatchNorm, and DDP set-up.

``torch.nn.SyncBatchNorm`` needs a process group, so it serves DDP (torchrun) only.
For several GPUs in one process (as the official code runs, with its own
``sync_batchnorm`` package) ``SyncDataParallel`` links the BatchNorm layers of the
replicas it creates, so every replica normalises with the statistics of the whole batch.
"""
from __future__ import annotations

import threading

import torch
import torch.nn as nn

__all__ = ['DataParallelBatchNorm2d', 'SyncDataParallel', 'link_replicas', 'convert_batchnorm',
           'wrap_for_devices']


class _SharedStats:
    """Rendezvous of one BatchNorm layer's replicas within one forward pass."""

    def __init__(self, copies: int):
        self.copies = copies
        self.barrier = threading.Barrier(copies)
        self.first = [None] * copies   # (sum, count) per replica
        self.second = [None] * copies  # sum of squared deviations per replica

    def exchange(self, slot: list, copy_id: int, value):
        slot[copy_id] = value
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            raise RuntimeError('another DataParallel replica failed during synchronised BatchNorm') from None
        return list(slot)

    def abort(self):
        self.barrier.abort()


class DataParallelBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, inside ``SyncDataParallel``, uses the statistics of all replicas.

    Outside of it (one device, eval mode) it is a plain ``nn.BatchNorm2d`` with the same
    state-dict keys. Mean and variance are computed in two passes across replicas (mean
    first, then squared deviations) for the same accuracy as a single-device batch norm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.__dict__.get('_dp_shared')
        if not self.training or shared is None or shared.copies == 1:
            return super().forward(x)
        copy_id = self.__dict__['_dp_copy_id']
        try:
            dims = (0, 2, 3)
            count = x.numel() // x.size(1)
            stats = shared.exchange(shared.first, copy_id, (x.sum(dims), count))
            total = sum(c for _, c in stats)
            mean = sum(s.to(x.device) for s, _ in stats) / total
            centred = x - mean.view(1, -1, 1, 1)
            squares = shared.exchange(shared.second, copy_id, (centred * centred).sum(dims))
            var = sum(s.to(x.device) for s in squares) / total
        except BaseException:
            shared.abort()
            raise
        if copy_id == 0 and self.track_running_stats:
            # replica 0's buffers are the module's own: updates there persist
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / self.num_batches_tracked.item() if self.momentum is None
                            else self.momentum)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                unbiased = var.detach() * (total / max(total - 1, 1))
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


def link_replicas(replicas) -> None:
    """Give corresponding DataParallelBatchNorm2d layers of ``replicas`` a shared rendezvous."""
    per_replica = [[m for m in r.modules() if isinstance(m, DataParallelBatchNorm2d)] for r in replicas]
    for layers in zip(*per_replica):
        shared = _SharedStats(len(layers))
        for copy_id, layer in enumerate(layers):
            layer.__dict__['_dp_shared'] = shared
            layer.__dict__['_dp_copy_id'] = copy_id


class SyncDataParallel(nn.DataParallel):
    """``nn.DataParallel`` whose replicas synchronise their ``DataParallelBatchNorm2d`` layers."""

    def replicate(self, module, device_ids):
        replicas = super().replicate(module, device_ids)
        link_replicas(replicas)
        return replicas


def convert_batchnorm(module: nn.Module, target: type) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by ``target`` (same state, same keys)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and type(child) is not target:
            new = target(child.num_features, child.eps, child.momentum, child.affine,
                         child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            tensors = list(child.parameters()) + list(child.buffers())
            if tensors:
                new = new.to(tensors[0].device)
            if child.affine:
                new.weight.requires_grad_(child.weight.requires_grad)
                new.bias.requires_grad_(child.bias.requires_grad)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, target)
    return module


def wrap_for_devices(module: nn.Module, setup, dist_env, sync_bn: bool = True,
                     broadcast_buffers: bool = True) -> nn.Module:
    """Wrap a module for the chosen devices: DDP under torchrun (SyncBatchNorm on GPU),
    SyncDataParallel for several GPUs in one process, unchanged otherwise."""
    if dist_env.distributed:
        if sync_bn and setup.device.type == 'cuda':
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if not any(p.requires_grad for p in module.parameters()):
            return module  # frozen: nothing to synchronise
        ids = [setup.device.index] if setup.device.type == 'cuda' else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                                   broadcast_buffers=broadcast_buffers)
    if setup.data_parallel:
        if sync_bn:
            convert_batchnorm(module, DataParallelBatchNorm2d)
            return SyncDataParallel(module, device_ids=setup.device_ids)
        return nn.DataParallel(module, device_ids=setup.device_ids)
    return module
