"""2-D convolution whose gradients of every order use the backend's own convolution kernels.

The matching-aware gradient penalty differentiates the discriminator twice. PyTorch's built-in
double backward of a convolution writes the weight-gradient term as a convolution of the input
with the output gradient, batch and channels swapped, whose "kernel" is as large as the feature
map (for example 24 x 256 x 128 x 128 at 256 px). cuDNN and oneDNN run those shapes on slow
generic paths: on an H100 they took about a third of a fast-mode training iteration.

Here the first backward is written with two differentiable operations, the input gradient (a
transposed convolution) and the weight gradient (``aten.convolution_backward`` with only the
weight output, the backend's weight-gradient kernel), each of which has its own backward in terms
of the same two operations and the forward convolution. Every order of gradient then runs on the
kernels the backend has for ordinary training. The results equal the built-in ones up to
floating-point summation order.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['conv2d', 'Conv2d', 'no_weight_gradients']

# Set by no_weight_gradients(); global, not thread-local, because CUDA backward passes run on
# the autograd engine's device threads.
_weight_gradients_disabled = False


@contextlib.contextmanager
def no_weight_gradients(disabled: bool = True):
    """Backward passes inside skip the weight gradients of :class:`_Conv`.

    For ``torch.autograd.grad`` with respect to inputs only (the MA-GP's first derivative), whose
    weight gradients are computed and thrown away otherwise: an extra weight-gradient convolution
    per layer. The derivative of the input gradient with respect to the weight, which the
    penalty's own backward needs, is unaffected.
    """
    global _weight_gradients_disabled
    previous, _weight_gradients_disabled = _weight_gradients_disabled, disabled
    try:
        yield
    finally:
        _weight_gradients_disabled = previous


def _autocast_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a convolution runs in under the current autocast state."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
        target = torch.get_autocast_dtype(device_type) if enabled else dtype
    except TypeError:  # torch < 2.4: device-less API
        if device_type == 'cuda':
            enabled, target = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        else:
            enabled, target = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        target = target if enabled else dtype
    return target if dtype.is_floating_point else dtype


def _input_grad(gy, w, input_shape, stride, padding, transpose):
    """Gradient of the convolution's input for output gradient ``gy``: the opposite kind of
    convolution with the same weight (differentiable again through :class:`_Conv`)."""
    if transpose:
        return _Conv.apply(gy, w, None, stride, padding, False, (0, 0))
    # output_padding that makes the transposed convolution return the input's size exactly
    op = tuple(input_shape[i + 2] - ((gy.shape[i + 2] - 1) * stride[i] - 2 * padding[i] + w.shape[i + 2])
               for i in range(2))
    return _Conv.apply(gy, w, None, stride, padding, True, op)


class _Conv(torch.autograd.Function):
    """y = conv2d(x, w, b) (``transpose=False``) or conv_transpose2d(x, w, b) (``True``)."""

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, transpose, output_padding):
        dtype = _autocast_dtype(x.device.type, w.dtype)
        x, w = x.to(dtype), w.to(dtype)
        b = b.to(dtype) if b is not None else None
        with torch.autocast(x.device.type, enabled=False):
            if transpose:
                y = F.conv_transpose2d(x, w, b, stride, padding, output_padding)
            else:
                y = F.conv2d(x, w, b, stride, padding)
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, transpose, output_padding, b is not None)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        stride, padding, transpose, output_padding, has_bias = ctx.conf
        gy = gy.to(x.dtype)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _input_grad(gy, w, x.shape, stride, padding, transpose)
        if ctx.needs_input_grad[1] and not _weight_gradients_disabled:
            gw = _ConvWeightGrad.apply(gy, x, w, stride, padding, transpose, output_padding)
        if has_bias and ctx.needs_input_grad[2] and not _weight_gradients_disabled:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None, None, None, None


class _ConvWeightGrad(torch.autograd.Function):
    """dL/dw of :class:`_Conv` for output gradient ``gy`` and input ``x`` (bilinear in both)."""

    @staticmethod
    def forward(ctx, gy, x, w, stride, padding, transpose, output_padding):
        with torch.autocast(x.device.type, enabled=False):
            gy = gy.to(x.dtype)
            _, gw, _ = torch.ops.aten.convolution_backward(
                gy, x, w.to(x.dtype), None, list(stride), list(padding), [1, 1], transpose,
                list(output_padding), 1, [False, True, False])
        ctx.save_for_backward(gy, x)
        ctx.conf = (stride, padding, transpose, output_padding, tuple(w.shape))
        return gw

    @staticmethod
    def backward(ctx, ggw):
        # S = <ggw, dL/dw> = <gy, conv(x, ggw)>: its gradient in gy is the forward convolution
        # with weight ggw, in x the input gradient of that convolution.
        gy, x = ctx.saved_tensors
        stride, padding, transpose, output_padding, _ = ctx.conf
        ggw = ggw.to(x.dtype)
        g_gy = g_x = None
        if ctx.needs_input_grad[0]:
            g_gy = _Conv.apply(x, ggw, None, stride, padding, transpose, output_padding)
        if ctx.needs_input_grad[1]:
            g_x = _input_grad(gy, ggw, x.shape, stride, padding, transpose)
        return g_gy, g_x, None, None, None, None, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias=None, stride=1, padding=0) -> torch.Tensor:
    """``F.conv2d`` (zero padding, no dilation or groups) with fast gradients of every order."""
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    return _Conv.apply(x, weight, bias, pair(stride), pair(padding), False, (0, 0))


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) that, with ``fast_gradients`` set,
    is computed with :func:`conv2d` where that applies (zero padding, no dilation, one group)."""

    fast_gradients = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast_gradients or self.groups != 1 or self.dilation != (1, 1) \
                or self.padding_mode != 'zeros' or isinstance(self.padding, str):
            return super().forward(x)
        return conv2d(x, self.weight, self.bias, self.stride, self.padding)
