"""Numerically stable log-sum-exp, log-softmax and softmax cross-entropy."""

from typing import Optional

import numpy as np

from ..autograd import NDArray, Tensor, TensorOp
from .ops_mathematic import (_axes_tuple, _keepdims_shape, _reduced_shape, broadcast_to, exp,
                             reshape, summation)

__all__ = ["LogSoftmax", "logsoftmax", "LogSumExp", "logsumexp", "SoftmaxCrossEntropy",
           "softmax_cross_entropy", "SoftmaxCrossEntropyGrad"]


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


# ---- softmax cross-entropy ------------------------------------------------------------------
# One op for the loss and one for its gradient, instead of the ~20 Tensor ops that
# logsumexp(z) - sum(z * y) and their adjoints take: in an MLP training step the loss is small
# arrays, so its cost is all per-op Python. Both are differentiable, so gradients of gradients
# still work.


class SoftmaxCrossEntropy(TensorOp):
    """Mean over the batch of logsumexp(z_i) - z_i[label_i], for logits z (batch, classes) and
    labels given as a one-hot (batch, classes) NDArray that the op keeps (labels have no
    gradient). d/dz = (softmax(z) - one_hot) / batch."""

    def __init__(self, one_hot: NDArray):
        self.one_hot = one_hot
        self._lse: Optional[NDArray] = None  # the forward's logsumexp, (batch, 1)

    def compute(self, z: NDArray):
        if z.ndim != 2 or z.shape != self.one_hot.shape:
            raise ValueError(f"softmax_cross_entropy: logits {z.shape} need the labels' "
                             f"(batch, classes) shape {self.one_hot.shape}")
        self._lse = _stable_logsumexp(z, (1,), True)
        total = self._lse.sum() - (z * self.one_hot).sum()
        return total / z.shape[0]

    def gradient(self, out_grad: Tensor, node: Tensor):
        return SoftmaxCrossEntropyGrad(self.one_hot, self._lse)(node.inputs[0], out_grad)


class SoftmaxCrossEntropyGrad(TensorOp):
    """g = (softmax(z) - one_hot) * c / batch: SoftmaxCrossEntropy's gradient for the scalar
    out_grad c. Its own gradient, for v = dL/dg: dL/dz = s * (v - sum(v * s, classes)) * c /
    batch with s = softmax(z), and dL/dc = sum(v * (s - one_hot)) / batch."""

    def __init__(self, one_hot: NDArray, lse: Optional[NDArray] = None):
        self.one_hot = one_hot
        self.lse = lse  # logsumexp(z) over the classes, (batch, 1), if already known

    def compute(self, z: NDArray, c: NDArray):
        # softmax = exp(z - logsumexp(z)); with the forward's logsumexp that is two passes
        # over z instead of six (a language model's (400, 10000) logits: ~10 ms a step).
        lse = self.lse if self.lse is not None else _stable_logsumexp(z, (1,), True)
        return ((z - lse).exp() - self.one_hot) * (c.reshape((1, 1)) / z.shape[0])

    def gradient(self, out_grad: Tensor, node: Tensor):
        z, c = node.inputs
        batch = z.shape[0]
        s = exp(LogSoftmax(1)(z))
        vs = out_grad * s
        scale = broadcast_to(reshape(c, (1, 1)), z.shape) / batch
        dz = (vs - s * broadcast_to(summation(vs, (1,), keepdims=True), z.shape)) * scale
        y = Tensor.make_const(self.one_hot)
        dc = summation(out_grad * (s - y)) / batch
        return dz, reshape(dc, c.shape)


def softmax_cross_entropy(logits: Tensor, one_hot: NDArray) -> Tensor:
    """Mean cross-entropy of logits (batch, classes) against one-hot labels (an NDArray)."""
    return SoftmaxCrossEntropy(one_hot)(logits)
