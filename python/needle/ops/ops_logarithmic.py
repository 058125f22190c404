"""Numerically stable log-sum-exp, log-softmax and softmax cross-entropy."""

from typing import Optional

import numpy as np

from .. import backend_ndarray as nd
from ..autograd import NDArray, Tensor, TensorOp
from .ops_mathematic import (TakeRows, _axes_tuple, _keepdims_shape, _reduced_shape,
                             broadcast_to, exp, reshape, summation)

__all__ = ["LogSoftmax", "logsoftmax", "LogSumExp", "logsumexp", "SoftmaxCrossEntropy",
           "softmax_cross_entropy", "SoftmaxCrossEntropyGrad", "label_positions"]


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
# logsumexp(z) - sum(z * one_hot) and their adjoints take: in an MLP training step the loss is
# small arrays, so its cost is all per-op Python. The labels are never expanded to a one-hot
# array: z[i, label_i] is gathered (gather_rows over z's flat elements) and the gradient's
# -1s are scattered (scatter_add_rows); for a language model's (400, 10000) logits that saves
# building a 16 MB one-hot array on the host, copying it, and two passes over it. Both ops
# are differentiable, so gradients of gradients still work.


def label_positions(labels, classes: int, device=None, dtype=None) -> nd.RowIndices:
    """The flat positions i * classes + labels[i] of each row's label in (batch, classes)
    logits, checked (labels: 1-D whole numbers in [0, classes))."""
    checked = nd.RowIndices(labels, classes, device, dtype)
    positions = np.arange(len(checked), dtype=np.int64) * classes + checked.host
    return nd.RowIndices(positions, len(checked) * classes, device, dtype)


class SoftmaxCrossEntropy(TensorOp):
    """Mean over the batch of logsumexp(z_i) - z_i[label_i] for logits z (batch, classes),
    the labels given by their flat positions in z (``label_positions``; they get no
    gradient). d/dz = (softmax(z) - one_hot(labels)) / batch."""

    def __init__(self, positions: nd.RowIndices, classes: int):
        self.positions, self.classes = positions, classes
        self._lse: Optional[NDArray] = None  # the forward's logsumexp, (batch, 1)

    def compute(self, z: NDArray):
        batch = len(self.positions)
        if z.shape != (batch, self.classes):
            raise ValueError(f"softmax_cross_entropy: logits {z.shape} for {batch} labels of "
                             f"{self.classes} classes")
        self._lse = _stable_logsumexp(z, (1,), True)
        picked = nd.take_rows(z.compact().reshape((z.size, 1)), self.positions)
        return (self._lse.sum() - picked.sum()) / batch

    def gradient(self, out_grad: Tensor, node: Tensor):
        return SoftmaxCrossEntropyGrad(self.positions, self._lse)(node.inputs[0], out_grad)


class SoftmaxCrossEntropyGrad(TensorOp):
    """g = (softmax(z) - one_hot(labels)) * c / batch: SoftmaxCrossEntropy's gradient for the
    scalar out_grad c. Its own gradient, for v = dL/dg: dL/dz = s * (v - sum(v * s, classes))
    * c / batch with s = softmax(z), and dL/dc = (sum(v * s) - sum(v at the labels)) / batch."""

    def __init__(self, positions: nd.RowIndices, lse: Optional[NDArray] = None):
        self.positions = positions
        self.lse = lse  # logsumexp(z) over the classes, (batch, 1), if already known

    def compute(self, z: NDArray, c: NDArray):
        # softmax = exp(z - logsumexp(z)); with the forward's logsumexp that is two passes
        # over z instead of six (a language model's (400, 10000) logits: ~10 ms a step).
        lse = self.lse if self.lse is not None else _stable_logsumexp(z, (1,), True)
        # The scale c / batch as a number (reading one element; c is the loss's adjoint,
        # ones unless the loss was scaled): a (1, 1) array would be broadcast and copied to
        # the logits' size before multiplying.
        scale = float(c.numpy().reshape(-1)[0]) / z.shape[0]
        g = (z - lse).exp() * scale
        flat = g.reshape((g.size, 1))  # a view of g's own buffer: the -scale lands in g
        nd.add_rows(z.device.full((len(self.positions), 1), -scale, dtype=g.dtype),
                    self.positions, g.size, out=flat)
        return g

    def gradient(self, out_grad: Tensor, node: Tensor):
        z, c = node.inputs
        batch = z.shape[0]
        s = exp(LogSoftmax(1)(z))
        vs = out_grad * s
        scale = broadcast_to(reshape(c, (1, 1)), z.shape) / batch
        dz = (vs - s * broadcast_to(summation(vs, (1,), keepdims=True), z.shape)) * scale
        at_labels = TakeRows(self.positions)(reshape(out_grad, (z.shape[0] * z.shape[1], 1)))
        dc = (summation(vs) - summation(at_labels)) / batch
        return dz, reshape(dc, c.shape)


def softmax_cross_entropy(logits: Tensor, labels) -> Tensor:
    """Mean cross-entropy of logits (batch, classes) against integer labels (batch,): 1-D
    whole numbers (a list, a NumPy array or a Tensor), or their ``label_positions``."""
    batch, classes = logits.shape
    if not isinstance(labels, nd.RowIndices):
        if isinstance(labels, Tensor):
            labels = labels.numpy()
        labels = label_positions(labels, classes, logits.device, logits.dtype)
    return SoftmaxCrossEntropy(labels, classes)(logits)
