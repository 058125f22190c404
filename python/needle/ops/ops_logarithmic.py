"""Numerically stable log-sum-exp and log-softmax."""

from typing import Optional

import numpy as np

from ..autograd import NDArray, Tensor, TensorOp
from .ops_mathematic import _axes_tuple, _keepdims_shape, _reduced_shape, broadcast_to, exp, reshape, summation

__all__ = ["LogSoftmax", "logsoftmax", "LogSumExp", "logsumexp"]


def _stable_logsumexp(z: NDArray, axes: Optional[tuple], keepdims: bool) -> NDArray:
    # Shift by the max so exp() never overflows: log sum exp(z) = m + log sum exp(z - m).
    # The max is clamped to the dtype's lowest finite value so an all -inf slice gives
    # -inf - (finite) = -inf rather than -inf - -inf = NaN.
    m = z.max(axis=axes, keepdims=True).maximum(float(np.finfo(z.dtype).min))
    out = (z - m.broadcast_to(z.shape)).exp().sum(axis=axes, keepdims=True).log() + m
    return out if keepdims else out.reshape(_reduced_shape(z.shape, axes))


class LogSumExp(TensorOp):
    """log(sum(exp(z), axes)); d/dz = softmax(z) over the reduced axes."""

    def __init__(self, axes: Optional[tuple] = None, keepdims: bool = False):
        self.axes = _axes_tuple(axes)
        self.keepdims = keepdims

    def compute(self, z: NDArray):
        return _stable_logsumexp(z, self.axes, self.keepdims)

    def gradient(self, out_grad: Tensor, node: Tensor):
        z = node.inputs[0]
        kept = _keepdims_shape(z.shape, self.axes)
        softmax = exp(z - broadcast_to(reshape(node, kept), z.shape))
        return broadcast_to(reshape(out_grad, kept), z.shape) * softmax


def logsumexp(a, axes=None, keepdims=False):
    return LogSumExp(axes=axes, keepdims=keepdims)(a)


class LogSoftmax(TensorOp):
    """z - logsumexp(z) over `axis` (the last by default); d/dz = g - softmax * sum(g)."""

    def __init__(self, axis: int = -1):
        self.axis = axis

    def compute(self, z: NDArray):
        return z - _stable_logsumexp(z, (self.axis,), True).broadcast_to(z.shape)

    def gradient(self, out_grad: Tensor, node: Tensor):
        softmax = exp(node)
        total = summation(out_grad, (self.axis,), keepdims=True)
        return out_grad - softmax * broadcast_to(total, out_grad.shape)


def logsoftmax(a, axis=-1):
    return LogSoftmax(axis)(a)
