"""Numerically stable log-sum-exp, log-softmax and softmax cross-entropy."""

from typing import Optional

import ml_dtypes
import numpy as np

from .. import autograd, backend_ndarray as nd
from ..autograd import Saved, Tensor, TensorOp, array_device, array_of, is_grad_enabled
from ..backend_ndarray import NDArray
from .ops_mathematic import (
    TakeRows,
    _axes_tuple,
    _keepdims_shape,
    _reduced_shape,
    broadcast_to,
    exp,
    reshape,
    summation,
)

__all__ = [
    "LogSoftmax",
    "logsoftmax",
    "LogSumExp",
    "logsumexp",
    "SoftmaxCrossEntropy",
    "softmax_cross_entropy",
    "SoftmaxCrossEntropyGrad",
    "ClassLabels",
]


def _shifted_logsumexp(z: NDArray, axes: Optional[tuple]) -> tuple:
    """(m, z - m, log sum exp(z - m)) over `axes` (kept as 1s) for m = max(z, axes): the parts
    of log_softmax(z) = (z - m) - log sum exp(z - m) before they are joined, each exact at
    any scale of z (z - logsumexp(z) would carry logsumexp's rounding: 0.06 at z = 1e6 in
    float32). An all -inf slice has m = -inf, so z - m and the result are NaN, as torch's."""
    m = z.max(axis=axes, keepdims=True)
    shifted = z - m.broadcast_to(z.shape)
    return m, shifted, shifted.exp().sum(axis=axes, keepdims=True).log()


def _finite_max(z: NDArray, axes: Optional[tuple]) -> NDArray:
    """max(z, axes) (kept as 1s) clamped to the dtype's finite range."""
    info = ml_dtypes.finfo(z.dtype)  # (NumPy's finfo has no bfloat16)
    m = z.max(axis=axes, keepdims=True).maximum(float(info.min))
    return -((-m).maximum(-float(info.max)))  # min(m, the highest finite value)


def _stable_logsumexp(z: NDArray, axes: Optional[tuple], keepdims: bool) -> NDArray:
    # Shift by the max so exp() never overflows: log sum exp(z) = m + log sum exp(z - m).
    # The max is clamped to the dtype's finite range so an infinite one is not subtracted
    # from itself (torch subtracts 0 there): an all -inf slice gives -inf - (finite) = -inf,
    # a slice holding +inf gives +inf, not inf - inf = NaN.
    m = _finite_max(z, axes)
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
        # softmax = exp(z - m) / sum exp(z - m) with m the max as a constant (softmax does not
        # depend on it, so this stays exact for second derivatives): exp(z - logsumexp(z))
        # would carry logsumexp's rounding, 0.5% at z = 1e5 in float32 (torch's is exact).
        # (Clamped as in compute: a row holding +inf gets NaN there and 0 elsewhere, an all
        # -inf row NaN, as torch.)
        m = _finite_max(array_of(z), self.axes).broadcast_to(z.shape)
        e = exp(z - Tensor.make_const(m))
        softmax = e / broadcast_to(summation(e, self.axes, keepdims=True), z.shape)
        return broadcast_to(reshape(out_grad, kept), z.shape) * softmax


def logsumexp(a, axes=None, keepdims=False):
    return LogSumExp(axes=axes, keepdims=keepdims)(a)


class LogSoftmax(TensorOp):
    """(z - m) - log sum exp(z - m) over `axis` (the last by default), m the max; d/dz =
    g - softmax * sum(g), softmax = exp(output)."""

    def __init__(self, axis: int = -1):
        self.axis = axis

    def compute(self, z: NDArray):
        return z.softmax(self.axis, log=True)  # softmax_rows, the same formula fused

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


class ClassLabels:
    """Integer labels of a (batch, classes) array of logits, checked once (1-D whole numbers
    in [0, classes)), in the form the cross-entropy ops read them: the flat positions
    i * classes + labels[i] of each row's label (an nd.RowIndices of int64 positions, exact
    at any size)."""

    def __init__(self, labels, classes: int, device=None, truncate: bool = False):
        """`labels` a NumPy array or list (checked now), or an NDArray: then checked where
        it is first read, by the cross_entropy_rows primitive where the device has its own
        (no host round trip), else on the host through nd.from_host (which a captured step
        runs again at each replay); `truncate` cuts float labels to integers, as the
        course's ``.numpy().astype(int)``."""
        self.classes, self.truncate, self.device = classes, truncate, device
        self.raw: NDArray | None = None  # the NDArray of labels, when given one
        self._positions: nd.RowIndices | None = None
        if isinstance(labels, NDArray):
            if not truncate and labels.ndim != 1:
                raise ValueError(f"row indices must be 1-D, got shape {labels.shape}")
            # A private copy (one small call): the labels as they are now, whatever is written
            # into the caller's array before a gradient of gradients reads them again.
            self.batch, self.raw = labels.size, autograd.copy_data(labels)
            return
        positions = _label_positions(np.asarray(labels), classes, truncate)
        self.batch = len(positions)
        self._positions = nd.RowIndices(positions, self.batch * classes, device)

    @property
    def positions(self) -> nd.RowIndices:
        """The flat positions i * classes + labels[i], checked (computed on first use)."""
        if self._positions is None:
            on_device = nd.from_host(
                _label_positions,
                (self.raw,),
                self.classes,
                self.truncate,
                device=self.device,
                dtype="int64",
            )
            self._positions = nd.RowIndices.on_device(on_device, self.batch * self.classes)
        return self._positions

    def fused_for(self, z: NDArray) -> NDArray | None:
        """The labels as z's device's cross_entropy_rows reads them (z's dtype, exact), or
        None where that primitive is the table's fallback or the labels are not an NDArray
        on z's device."""
        raw = self.raw
        if raw is None or not z.device.has("cross_entropy_rows") or raw.device != z.device:
            return None
        if raw.dtype == z.dtype:
            return raw
        # Integer labels convert exactly below 2^24 (float32's integers); with that many
        # classes or fewer, a larger label still converts to one out of range, and raises.
        exact = 2**24 if z.dtype == "float32" else 2**53
        if raw.dtype in ("int32", "int64", "uint8", "bool") and self.classes <= exact:
            return raw.astype(z.dtype)
        return None

    def picked_sum(self, z: NDArray) -> NDArray:
        """The sum over rows of z[i, labels[i]]."""
        return nd.take_rows(z.compact().reshape((z.size, 1)), self.positions).sum()

    def subtract(self, g: NDArray, value: float | NDArray) -> NDArray:
        """g with `value` (a number or a one-element NDArray) taken off at each row's label,
        in place into g (compact, ours)."""
        if isinstance(value, NDArray):
            minus = (-value).reshape((1, 1)).broadcast_to((self.batch, 1)).compact()
        else:
            minus = g.device.full((self.batch, 1), -value, dtype=g.dtype)
        nd.add_rows(
            minus,
            self.positions,
            g.size,
            out=g.reshape((g.size, 1)),
        )  # a view of g's own buffer
        return g

    def picked_sum_tensor(self, v: Tensor) -> Tensor:
        """picked_sum as Tensor ops, differentiable in v."""
        return summation(TakeRows(self.positions)(reshape(v, (self.batch * self.classes, 1))))


def _label_positions(labels: np.ndarray, classes: int, truncate: bool) -> np.ndarray:
    """The flat positions i * classes + labels[i] of labels checked to be 1-D whole numbers in
    [0, classes) (nd.RowIndices.check, `truncate` too)."""
    checked = nd.RowIndices.check(labels, classes, truncate)
    return np.arange(len(checked), dtype=np.int64) * classes + checked


class SoftmaxCrossEntropy(TensorOp):
    """Mean over the batch of logsumexp(z_i) - z_i[label_i] for logits z (batch, classes),
    the labels a ClassLabels (they get no gradient). d/dz = (softmax(z) - one_hot(labels)) /
    batch."""

    autocast = "float32"

    name = "softmax_cross_entropy"

    def __init__(self, labels: ClassLabels):
        self.labels = labels

    def compute(self, z: NDArray):
        batch, classes = self.labels.batch, self.labels.classes
        if z.shape != (batch, classes):
            raise ValueError(f"logits {z.shape} for {batch} labels of {classes} classes")
        labels = self.labels.fused_for(z)
        if labels is not None:
            # One primitive call for the loss and its gradient, which backward scales: the
            # softmax, label pick and sum, and the gradient's own array ops, took 14 calls
            # and a host round trip for the labels (a bf16 MLP step: 3.81 -> 3.56 ms).
            loss, grad = z.cross_entropy(labels, self.labels.truncate)
            # (not kept under no_grad: an evaluation's losses would each hold logits' worth)
            return Saved(loss, grad=grad) if is_grad_enabled() else loss
        # Each row's -log_softmax(z)[label], log_softmax = (z - m) - log sum exp(z - m) with m
        # the row's max (z - logsumexp(z) would carry logsumexp's rounding: 0.06 at z = 1e6 in
        # float32), in one fused row pass (softmax_rows) instead of five array passes.
        return -self.labels.picked_sum(z.softmax(1, log=True)) / batch

    def gradient(self, out_grad: Tensor, node: Tensor):
        z = node.inputs[0]
        grad = getattr(node.saved, "grad", None)
        if grad is not None and not is_grad_enabled():
            # The forward's gradient for a loss adjoint of 1, scaled by the adjoint c on the
            # device (reading c would wait for an asynchronous queue; a captured step's
            # replays could not read it).
            c = array_of(out_grad).astype(grad.dtype).compact().reshape((1, 1))
            return Tensor.make_const((grad * c).astype(z.dtype))
        return SoftmaxCrossEntropyGrad(self.labels)(z, out_grad)


class SoftmaxCrossEntropyGrad(TensorOp):
    """g = (softmax(z) - one_hot(labels)) * c / batch: SoftmaxCrossEntropy's gradient for the
    scalar out_grad c. A third and fourth input may pass in a shift m (batch, 1), such as the
    rows' maxima, and logsumexp(z - m) over the classes (batch, 1) when they are known; they
    get no gradient (they stand for functions of z). Its own gradient, for
    v = dL/dg: dL/dz = s * (v - sum(v * s, classes)) * c / batch with s = softmax(z), and
    dL/dc = (sum(v * s) - sum(v at the labels)) / batch."""

    name = "softmax_cross_entropy_gradient"

    def __init__(self, labels: ClassLabels):
        self.labels = labels

    def compute(
        self, z: NDArray, c: NDArray, m: Optional[NDArray] = None, lse: Optional[NDArray] = None
    ):
        # softmax = exp((z - m) - logsumexp(z - m)), exact at any scale of z; with the
        # forward's m and logsumexp that is three passes over z instead of six (a language
        # model's (400, 10000) logits: ~10 ms a step).
        if m is None or lse is None:
            softmax = z.softmax(1)  # softmax_rows: one fused pass (a language model's
            # (400, 10000) logits: ~10 ms a step in separate max, subtract, exp, sum passes)
        else:
            softmax = ((z - m.broadcast_to(z.shape)) - lse.broadcast_to(z.shape)).exp()
        # The scale c / batch stays on the device (c is the loss's adjoint, ones unless the
        # loss was scaled): reading it would wait for an asynchronous device's queue
        # mid-backward, and a captured step's replays cannot read it. On the cpu the (1, 1)
        # scale multiplies in one pass (ewise_broadcast_binary), as a number would.
        scale = c.compact().reshape((1, 1)) * (1.0 / z.shape[0])
        return self.labels.subtract(softmax * scale, scale)

    def gradient(self, out_grad: Tensor, node: Tensor):
        z, c = node.inputs[:2]
        batch = z.shape[0]
        s = exp(LogSoftmax(1)(z))
        vs = out_grad * s
        scale = broadcast_to(reshape(c, (1, 1)), z.shape) / batch
        dz = (vs - s * broadcast_to(summation(vs, (1,), keepdims=True), z.shape)) * scale
        dc = (summation(vs) - self.labels.picked_sum_tensor(out_grad)) / batch
        return dz, reshape(dc, c.shape)


def softmax_cross_entropy(logits: Tensor, labels) -> Tensor:
    """Mean cross-entropy of logits (batch, classes) against integer labels (batch,): 1-D
    whole numbers (a list, a NumPy array or a Tensor), or a ClassLabels made for them."""
    if not isinstance(labels, ClassLabels):
        if isinstance(labels, Tensor):
            labels = array_of(labels)
        labels = ClassLabels(labels, logits.shape[1], array_device(logits))
    return SoftmaxCrossEntropy(labels)(logits)
