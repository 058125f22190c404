"""Issue 16: functional ops people reach for in the first hour (PyTorch's names and conventions).

Images are NCHW, as torch.nn.functional and needle's nn.Conv module (ops.conv itself is NHWC;
conv_transpose2d transposes at its boundary as nn.Conv does). Each op computes on NDArrays and
differentiates with Tensor ops, so gradients of gradients work.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .. import autograd
from ..autograd import Saved, Tensor, TensorOp, array_device, array_of, is_grad_enabled
from ..backend_ndarray import NDArray, in_float32, matmul_float32, prod
from .ops_logarithmic import logsoftmax
from .ops_mathematic import (
    Conv,
    ConvWeightGrad,
    astype,
    autocast_arrays,
    autocast_tensors,
    broadcast_to,
    conv,
    dilate,
    exp,
    getitem,
    matmul,
    pad,
    reduce_to_shape,
    reshape,
    sigmoid,
    summation,
    transpose,
)

__all__ = [
    "MSELoss",
    "mse_loss",
    "L1Loss",
    "l1_loss",
    "BCEWithLogits",
    "binary_cross_entropy_with_logits",
    "CrossEntropy",
    "cross_entropy",
    "LayerNorm",
    "layer_norm",
    "GroupNorm",
    "group_norm",
    "Linear",
    "linear",
    "ScaledDotProductAttention",
    "scaled_dot_product_attention",
    "MaxPool2d",
    "max_pool2d",
    "AvgPool2d",
    "avg_pool2d",
    "AdaptiveAvgPool2d",
    "adaptive_avg_pool2d",
    "ConvTranspose2d",
    "conv_transpose2d",
    "Dropout",
    "dropout",
]

_REDUCTIONS = ("mean", "sum", "none")


def _const(array: NDArray) -> Tensor:
    return Tensor.make_const(array)


def _spread(g: Tensor, shape: tuple) -> Tensor:
    """A reduced loss's adjoint (a scalar, or the per-element one for 'none') at `shape`."""
    return g if g.shape == tuple(shape) else broadcast_to(reshape(g, (1,) * len(shape)), shape)


def _check_reduction(reduction: str, name: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


# ---- elementwise losses ---------------------------------------------------------------
class _PairLoss(TensorOp):
    """A loss of input and target (same shapes), elementwise then reduced by `reduction`."""

    autocast = "float32"

    name: str

    def __init__(self, reduction: str = "mean"):
        self.reduction = _check_reduction(reduction, self.name)

    def elementwise(self, a: NDArray, b: NDArray) -> NDArray:
        raise NotImplementedError()

    def compute(self, a: NDArray, b: NDArray):
        if a.shape != b.shape:
            raise ValueError(f"input {a.shape} and target {b.shape} differ in shape")
        loss = self.elementwise(a, b)
        if self.reduction == "none":
            return loss
        total = loss.sum()
        return total / max(loss.size, 1) if self.reduction == "mean" else total

    def scale(self, g: Tensor, shape: tuple) -> Tensor:
        """The adjoint at the input's shape, divided by the count for 'mean'."""
        g = _spread(g, shape)
        return g / prod(shape) if self.reduction == "mean" else g


class MSELoss(_PairLoss):
    """(input - target)^2, reduced; d/dinput = 2 (input - target) = -d/dtarget."""

    name = "mse_loss"

    def elementwise(self, a, b):
        d = a - b
        return d * d

    def gradient(self, out_grad: Tensor, node: Tensor):
        a, b = node.inputs
        grad = self.scale(out_grad, a.shape) * (a - b) * 2
        return grad, -grad


def mse_loss(input, target, reduction="mean"):
    return MSELoss(reduction)(input, target)


class L1Loss(_PairLoss):
    """|input - target|, reduced; d/dinput = sign(input - target) (0 at 0, as torch)."""

    name = "l1_loss"

    def elementwise(self, a, b):
        return abs(a - b)

    def gradient(self, out_grad: Tensor, node: Tensor):
        a, b = node.inputs
        d = array_of(a) - array_of(b)
        sign = (d > 0).astype(d.dtype) - (d < 0).astype(d.dtype)
        grad = self.scale(out_grad, a.shape) * _const(sign)
        return grad, -grad


def l1_loss(input, target, reduction="mean"):
    return L1Loss(reduction)(input, target)


class BCEWithLogits(_PairLoss):
    """max(x, 0) - x y + log(1 + exp(-|x|)): log(1 + exp(x)) - x y without overflowing exp
    at large |x|. d/dx = sigmoid(x) - y, d/dy = -x."""

    name = "binary_cross_entropy_with_logits"

    def elementwise(self, x, y):
        return x.maximum(0.0) - x * y + ((-abs(x)).exp() + 1.0).log()

    def gradient(self, out_grad: Tensor, node: Tensor):
        x, y = node.inputs
        g = self.scale(out_grad, x.shape)
        return g * (sigmoid(x) - y), -(g * x)


def binary_cross_entropy_with_logits(input, target, reduction="mean"):
    return BCEWithLogits(reduction)(input, target)


# ---- cross-entropy --------------------------------------------------------------------
class CrossEntropy(TensorOp):
    """-sum_c q[i, c] log_softmax(z)[i, c] per row, reduced: q holds the target distribution
    (one-hot or given probabilities, label-smoothed), zero rows for ignored labels, and
    1/count for 'mean'. d/dz = softmax(z) sum_c q[i, c] - q."""

    autocast = "float32"

    name = "cross_entropy"

    def __init__(self, weights: NDArray, reduction: str):
        self.weights = weights
        self.reduction = reduction

    def compute(self, z: NDArray):
        q = self.weights
        if z.ndim != 2 or z.shape != q.shape:
            raise ValueError(f"logits {z.shape} do not match targets for {q.shape}")
        m = z.max(axis=1, keepdims=True).broadcast_to(z.shape)
        shifted = z - m
        lse = shifted.exp().sum(axis=1, keepdims=True).log().broadcast_to(z.shape)
        rows = -((shifted - lse) * q).sum(axis=1)
        return rows if self.reduction == "none" else rows.sum()

    def gradient(self, out_grad: Tensor, node: Tensor):
        z = node.inputs[0]
        q = self.weights
        softmax = exp(logsoftmax(z, axis=1))
        row_mass = _const(q.sum(axis=1, keepdims=True).broadcast_to(q.shape))
        g = broadcast_to(reshape(out_grad, (-1, 1) if out_grad.shape else (1, 1)), z.shape)
        return g * (softmax * row_mass - _const(q))


def _class_weights(weight, c: int) -> np.ndarray:
    """torch's weight= of cross_entropy: one (constant) weight per class, ones by default."""
    if weight is None:
        return np.ones(c)
    w = np.asarray(weight.numpy() if isinstance(weight, (Tensor, NDArray)) else weight)
    if w.shape != (c,) or w.dtype.kind not in "fiu":
        raise ValueError(
            f"cross_entropy: weight must hold one number per class ({c},), got {w.shape} {w.dtype}"
        )
    return w.astype(np.float64)


def _target_weights(z, target, ignore_index, smoothing, reduction, weight=None) -> np.ndarray:
    """q of CrossEntropy for logits z and int class labels or class probabilities, each class
    c's column scaled by weight[c]. As torch, 'mean' divides by the summed weight of the
    counted labels' classes (the batch size for probabilities)."""
    n, c = z.shape
    w = _class_weights(weight, c)
    t = np.asarray(target.numpy() if isinstance(target, Tensor) else target)
    if t.shape == (n, c) and t.dtype.kind == "f":  # class probabilities
        q, valid = t.astype(np.float64), np.ones(n, dtype=bool)
        count = float(n)
    else:
        if t.shape != (n,) or (t.size and not np.all(t == np.round(t))):
            raise ValueError(
                f"cross_entropy: logits {z.shape} need {n} whole-number class labels or "
                f"({n}, {c}) probabilities, got target {t.shape} {t.dtype}"
            )
        t = t.astype(np.int64)
        valid = t != ignore_index
        bad = valid & ((t < 0) | (t >= c))
        if bad.any():
            raise IndexError(f"cross_entropy: class labels must lie in [0, {c}), got {t[bad]}")
        q = np.zeros((n, c))
        q[np.nonzero(valid)[0], t[valid]] = 1.0
        count = w[t[valid]].sum()
    q = (q * (1.0 - smoothing) + smoothing / c) * w
    q[~valid] = 0.0
    if reduction == "mean":  # torch: nan when all are ignored (or weigh 0)
        q = q / count if count else q * np.nan
    return q


def cross_entropy(
    input, target, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"
) -> Tensor:
    """Softmax cross-entropy of (batch, classes) logits and int64 class labels (or class
    probabilities), with torch's class weight (a constant), ignore_index and label_smoothing."""
    _check_reduction(reduction, "cross_entropy")
    if input.ndim != 2:
        raise ValueError(f"cross_entropy: needs (batch, classes) logits, got {input.shape}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    q = _target_weights(input, target, ignore_index, label_smoothing, reduction, weight)
    weights = NDArray(q.astype(input.dtype), device=array_device(input), dtype=input.dtype)
    return CrossEntropy(weights, reduction)(input)


# ---- normalisation --------------------------------------------------------------------
class LayerNorm(TensorOp):
    """(x - mean) / sqrt(var + eps) over the last `dims` axes (biased variance);
    d/dx = inv_std (g - mean(g) - y mean(g y)) with y the output."""

    keeps_input_dtype = True

    name = "layer_norm"

    def __init__(self, dims: int, eps: float = 1e-5):
        self.dims, self.eps = dims, eps

    def _axes(self, shape: tuple) -> tuple:
        return tuple(range(len(shape) - self.dims, len(shape)))

    def compute(self, x: NDArray):
        if x.ndim < self.dims:
            raise ValueError(f"normalises {self.dims} trailing axes of a {x.ndim}-D input")
        return x.layer_norm(self.dims, self.eps)

    def gradient(self, out_grad: Tensor, node: Tensor):
        x = node.inputs[0]
        if not is_grad_enabled():  # no graph to record: layer_norm_grad_rows, fused per row
            # (16-bit arrays in float32, as every op computes them: nd.in_float32)
            data = in_float32(
                NDArray.layer_norm_grad, array_of(x), array_of(out_grad), self.dims, self.eps
            )
            return Tensor.make_const(data)
        # With a graph (create_graph): Tensor ops, so that it can be differentiated again.
        axes = self._axes(x.shape)
        count = prod(x.shape[x.ndim - self.dims :])

        # Row statistics stay (rows, 1, ...) until they are spread: the power and the
        # additions run on one number per row, not on every element.
        def row_mean(t: Tensor) -> Tensor:
            return summation(t, axes, keepdims=True) / count

        def spread(t: Tensor) -> Tensor:
            return broadcast_to(t, x.shape)

        centred = x - spread(row_mean(x))
        inv_std = spread((row_mean(centred * centred) + self.eps) ** -0.5)
        projected = spread(row_mean(out_grad)) + node * spread(row_mean(out_grad * node))
        return inv_std * (out_grad - projected)


def _affine(y: Tensor, weight, bias, shape: tuple) -> Tensor:
    """y * weight + bias, the parameters reshaped to `shape` and broadcast."""
    if weight is not None:
        y = y * broadcast_to(reshape(weight, shape), y.shape)
    if bias is not None:
        y = y + broadcast_to(reshape(bias, shape), y.shape)
    return y


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(x.shape[x.ndim - len(shape) :]) != shape or len(shape) > x.ndim:
        raise ValueError(f"layer_norm: input {x.shape} does not end in normalized_shape {shape}")
    for p, what in ((weight, "weight"), (bias, "bias")):
        if p is not None and tuple(p.shape) != shape:
            raise ValueError(f"layer_norm: {what} {p.shape} is not normalized_shape {shape}")
    return _affine(LayerNorm(len(shape), eps)(x), weight, bias, shape)


class GroupNorm(LayerNorm):
    """LayerNorm over the last axis of (N, groups, rest): group_norm's normalisation."""

    name = "group_norm"


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5) -> Tensor:
    if x.ndim < 2 or x.shape[1] % num_groups:
        raise ValueError(
            f"group_norm: input {x.shape} needs channels (axis 1) divisible by "
            f"num_groups={num_groups}"
        )
    n, c = x.shape[:2]
    for p, what in ((weight, "weight"), (bias, "bias")):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"group_norm: {what} {p.shape} is not ({c},) for input {x.shape}")
    y = GroupNorm(1, eps)(reshape(x, (n, num_groups, prod(x.shape) // (n * num_groups))))
    y = reshape(y, x.shape)
    return _affine(y, weight, bias, (1, c) + (1,) * (x.ndim - 2))


# ---- linear ---------------------------------------------------------------------------
class Linear(TensorOp):
    """x @ weight.T + bias as torch.nn.functional.linear: x (..., in), weight (out, in), bias
    out values or None; with `in_out` the weight is (in, out), as nn.Linear keeps it.

    One node where x @ W, its casts and the bias add took five, and a gradient of three
    products where the composite's backward made ten nodes (a bf16 MLP step: 46 op nodes -> 10).
    Under autocast (`low`) it casts its floating inputs itself, as torch's addmm; the casts
    are kept for the gradient. Without create_graph the gradient is NDArray arithmetic;
    with it, Tensor ops, so gradients of gradients work."""

    half_native = True  # NDArray's matmul and add take 16-bit arrays
    name = "linear"

    def __init__(self, in_out: bool = False, low: str | None = None):
        self.in_out, self.low = in_out, low

    def compute(self, x: NDArray, w: NDArray, b: NDArray | None = None):
        if w.ndim != 2 or x.ndim < 1:
            raise ValueError(
                f"needs an input of 1 or more dimensions and a 2-D weight, got "
                f"{x.shape} and {w.shape}"
            )
        n_in, n_out = w.shape if self.in_out else w.shape[::-1]
        if x.shape[-1] != n_in:
            raise ValueError(f"input {x.shape} does not fit weight {w.shape}")
        if b is not None and b.size != n_out:
            raise ValueError(f"bias {b.shape} for {n_out} outputs")
        xc, wc, bc = autocast_arrays(self.low, x, w, b)
        out = xc.reshape((-1, n_in)) @ (wc if self.in_out else wc.permute((1, 0)))
        if bc is not None:
            out = out + bc.reshape((1, n_out)).broadcast_to(out.shape)
        out = out.reshape(x.shape[:-1] + (n_out,))
        # Only the casts are kept (private copies): the inputs' own arrays are read from the
        # graph, where an in-place write leaves what forward saw.
        return Saved(out, x=None if xc is x else xc, w=None if wc is w else wc)

    def gradient(self, out_grad: Tensor, node: Tensor):
        x, w = node.inputs[:2]
        b = node.inputs[2] if len(node.inputs) == 3 else None
        if is_grad_enabled():
            return self._gradient_tensors(out_grad, x, w, b)
        xc, wc = getattr(node.saved, "x", None), getattr(node.saved, "w", None)
        xc = array_of(x) if xc is None else xc
        wc = array_of(w) if wc is None else wc
        autograd.check_gradient_reads(xc, wc)  # (an optimizer step since forward raises)
        g = array_of(out_grad)
        g = g.reshape((-1, g.shape[-1]))
        w_io = wc if self.in_out else wc.permute((1, 0))  # (in, out)
        x2 = xc.reshape((-1, w_io.shape[0]))
        grads: list[NDArray | None] = [None, None, None]
        if x.requires_grad:
            grads[0] = (g @ w_io.permute((1, 0))).reshape(x.shape).astype(x.dtype)
        if w.requires_grad:  # in the weight's own layout, no transposed copy
            ab = (x2.permute((1, 0)), g) if self.in_out else (g.permute((1, 0)), x2)
            wide = w.dtype == "float32" and isinstance(g, NDArray)  # (16-bit: sums unrounded)
            grads[1] = matmul_float32(*ab) if wide else (ab[0] @ ab[1]).astype(w.dtype)
        if b is not None and b.requires_grad:
            grads[2] = g.sum(axis=0).reshape(b.shape).astype(b.dtype)
        return tuple(None if a is None else _const(a) for a in grads[: len(node.inputs)])

    def _gradient_tensors(self, g: Tensor, x: Tensor, w: Tensor, b: Tensor | None):
        """The same gradients as Tensor ops (differentiable), from the inputs themselves."""
        xc, wc = autocast_tensors(self.low, x, w)
        w_io = wc if self.in_out else transpose(wc)
        g2 = reshape(g, (-1, g.shape[-1]))
        dx = astype(reshape(matmul(g2, transpose(w_io)), x.shape), x.dtype)
        dw = matmul(transpose(reshape(xc, (-1, w_io.shape[0]))), g2)
        dw = astype(dw if self.in_out else transpose(dw), w.dtype)
        if b is None:
            return dx, dw
        return dx, dw, astype(reshape(summation(g2, (0,)), b.shape), b.dtype)


def linear(x, weight, bias=None, *, in_out: bool = False) -> Tensor:
    """x @ weight.T + bias (torch.nn.functional.linear); `in_out`: weight is (in, out)."""
    op = Linear(in_out, autograd._AUTOCAST)
    return op(x, weight) if bias is None else op(x, weight, bias)


# ---- attention ------------------------------------------------------------------------
class ScaledDotProductAttention(TensorOp):
    """softmax(q k^T * scale + mask) v over (..., L, E) queries, (..., S, E) keys and
    (..., S, Ev) values; `mask` an additive (0 / -inf or float) array broadcasting to
    (..., L, S), or None. The gradient recomputes the probabilities P in Tensor ops:
    dv = P^T g, dS = P (g v^T - rowsum(P g v^T)), dq = dS k scale, dk = dS^T q scale."""

    autocast = "low"

    name = "scaled_dot_product_attention"

    def __init__(self, mask: NDArray | None, scale: float):
        self.mask, self.scale = mask, scale

    def compute(self, q: NDArray, k: NDArray, v: NDArray):
        if q.ndim < 2 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
            raise ValueError(f"query {q.shape}, key {k.shape} and value {v.shape} do not fit")
        s = (q @ k.swapaxes(-1, -2)) * self.scale
        if self.mask is not None:
            s = s + self.mask
        e = (s - s.max(axis=-1, keepdims=True).broadcast_to(s.shape)).exp()
        return (e / e.sum(axis=-1, keepdims=True).broadcast_to(s.shape)) @ v

    def gradient(self, out_grad: Tensor, node: Tensor):
        q, k, v = node.inputs
        s = matmul(q, transpose(k)) * self.scale
        if self.mask is not None:
            s = s + broadcast_to(_const(self.mask), s.shape)
        p = exp(logsoftmax(s, axis=-1))
        dp = matmul(out_grad, transpose(v))
        ds = p * (dp - broadcast_to(summation(dp * p, (-1,), keepdims=True), p.shape))
        ds = ds * self.scale
        return (
            reduce_to_shape(matmul(ds, k), q.shape),
            reduce_to_shape(matmul(transpose(ds), q), k.shape),
            reduce_to_shape(matmul(transpose(p), out_grad), v.shape),
        )


def _additive_mask(mask, is_causal, shape, q) -> NDArray | None:
    """attn_mask (bool: True attends; float: added) and is_causal as one additive array."""
    device, dtype = array_device(q), q.dtype
    if mask is not None:
        m = np.asarray(mask.numpy() if isinstance(mask, Tensor) else mask)
        try:
            np.broadcast_shapes(m.shape, shape)
        except ValueError:
            raise ValueError(
                f"scaled_dot_product_attention: attn_mask {m.shape} does not broadcast to "
                f"the scores {shape}"
            ) from None
        m = np.where(m, 0.0, -np.inf) if m.dtype == bool else m.astype(np.float64)
    if is_causal:
        if mask is not None:
            raise ValueError("scaled_dot_product_attention: give attn_mask or is_causal, not both")
        m = np.where(np.tril(np.ones(shape[-2:], dtype=bool)), 0.0, -np.inf)
    return (
        None
        if mask is None and not is_causal
        else NDArray(m.astype(dtype), device=device, dtype=dtype)
    )


def scaled_dot_product_attention(
    query, key, value, attn_mask=None, is_causal=False, scale=None
) -> Tensor:
    e = query.shape[-1]
    shape = tuple(query.shape[:-1]) + (key.shape[-2],)
    mask = _additive_mask(attn_mask, is_causal, shape, query)
    scale = 1.0 / math.sqrt(e) if scale is None else float(scale)
    return ScaledDotProductAttention(mask, scale)(query, key, value)


# ---- pooling --------------------------------------------------------------------------
def _pair(v: Any, what: str, name: str) -> tuple:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(i, int) for i in pair):
        raise ValueError(f"{name}: {what} must be an int or a pair of ints, got {v!r}")
    return pair


class _Window:
    """The geometry of 2-D pooling over NCHW arrays: kernel, stride and padding pairs."""

    def __init__(self, kernel, stride, padding, name: str):
        self.kernel = _pair(kernel, "kernel_size", name)
        self.stride = _pair(self.kernel if stride is None else stride, "stride", name)
        self.padding = _pair(padding, "padding", name)
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"{name}: need kernel_size, stride >= 1 and padding >= 0, got {self.kernel}, "
                f"{self.stride}, {self.padding}"
            )
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            raise ValueError(
                f"{name}: padding {self.padding} must be at most half of kernel {self.kernel}"
            )

    def out_shape(self, shape: tuple) -> tuple:
        if len(shape) != 4:
            raise ValueError(f"needs a 4-D NCHW input, got {shape}")
        n, c, h, w = shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"kernel {self.kernel} is larger than the padded input {shape}")
        return n, c, ho, wo

    def windows(self, a: NDArray, fill: float) -> NDArray:
        """(N, C, H_out, W_out, kh * kw) copies of the windows of `a` padded with `fill`."""
        n, c, ho, wo = self.out_shape(a.shape)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        h, w = a.shape[2:]
        if ph or pw:
            padded = a.device.full((n, c, h + 2 * ph, w + 2 * pw), fill, dtype=a.dtype)
            padded[:, :, ph : ph + h, pw : pw + w] = a
        else:
            padded = a.compact()
        s = padded.strides
        view = padded.as_strided(
            (n, c, ho, wo, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3])
        )
        return view.compact().reshape((n, c, ho, wo, kh * kw))

    def scatter(self, contrib: NDArray, shape: tuple) -> NDArray:
        """Zeros of the NCHW `shape` with each window's (N, C, H_out, W_out, kh * kw)
        contributions added at its elements (windows' adjoint)."""
        n, c, ho, wo = self.out_shape(shape)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        h, w = shape[2:]
        out = contrib.device.full((n, c, h + 2 * ph, w + 2 * pw), 0.0, dtype=contrib.dtype)
        parts = contrib.reshape((n, c, ho, wo, kh, kw))
        if sh >= kh and sw >= kw:  # windows do not overlap: one strided write
            s = out.strides
            view = out.as_strided(
                (n, c, ho, wo, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3])
            )
            view[(slice(None),) * 6] = parts
        else:  # overlapping windows: one strided add per kernel offset
            for i in range(kh):
                for j in range(kw):
                    at = (
                        slice(None),
                        slice(None),
                        slice(i, i + sh * (ho - 1) + 1, sh),
                        slice(j, j + sw * (wo - 1) + 1, sw),
                    )
                    part = parts[:, :, :, :, i : i + 1, j : j + 1].compact().reshape((n, c, ho, wo))
                    out[at] = out[at] + part
        return out[:, :, ph : ph + h, pw : pw + w].compact() if ph or pw else out


class _WindowGather(TensorOp):
    """sum over each window of weights * x (weights a number or per-element array): the
    adjoint of _WindowScatter, and avg/max pooling's second-order step."""

    name = "window_gather"

    def __init__(self, window: _Window, weights):
        self.window, self.weights = window, weights

    def compute(self, a: NDArray):
        return (self.window.windows(a, 0.0) * self.weights).sum(axis=4)

    def gradient(self, out_grad: Tensor, node: Tensor):
        return _WindowScatter(self.window, node.inputs[0].shape, self.weights)(out_grad)


class _WindowScatter(TensorOp):
    """g * weights added back at each window's elements: pooling's gradient."""

    name = "window_scatter"

    def __init__(self, window: _Window, shape: tuple, weights):
        self.window, self.shape, self.weights = window, tuple(shape), weights

    def compute(self, g: NDArray):
        k = prod(self.window.kernel)
        contrib = g.compact().reshape(g.shape + (1,)).broadcast_to(g.shape + (k,)) * self.weights
        return self.window.scatter(contrib, self.shape)

    def gradient(self, out_grad: Tensor, node: Tensor):
        return _WindowGather(self.window, self.weights)(out_grad)


class MaxPool2d(TensorOp):
    """The maximum of each window of an NCHW input (padding counts as -inf). The adjoint
    goes to the first maximum of each window in row-major order, as torch's."""

    name = "max_pool2d"

    def __init__(self, kernel_size, stride=None, padding=0):
        self.window = _Window(kernel_size, stride, padding, self.name)

    def compute(self, x: NDArray):
        self.window.out_shape(x.shape)  # checked
        w = self.window
        return x.pool2d(w.kernel, w.stride, w.padding, "max")

    def gradient(self, out_grad: Tensor, node: Tensor):
        x = node.inputs[0]
        if array_device(x).has("pool2d"):  # the first maxima's positions from one pass
            return _WindowScatter(self.window, x.shape, self._first_max(array_of(x)))(out_grad)
        windows = self.window.windows(array_of(x), -math.inf)
        k = windows.shape[4]
        hits = windows == array_of(node).reshape(node.shape + (1,)).broadcast_to(windows.shape)
        # Rank the hits k, k-1, ..., 1 by position: the largest rank is the first maximum.
        ranks = NDArray(np.arange(k, 0, -1).astype(x.dtype), device=windows.device, dtype=x.dtype)
        scored = hits.astype(x.dtype) * ranks.reshape((1, 1, 1, 1, k)).broadcast_to(windows.shape)
        first = scored == scored.max(axis=4, keepdims=True).broadcast_to(windows.shape)
        return _WindowScatter(self.window, x.shape, first.astype(x.dtype))(out_grad)

    def _first_max(self, a: NDArray) -> NDArray:
        """(N, C, H_out, W_out, kh * kw): 1 at each window's first maximum, else 0."""
        w = self.window
        arg = in_float32(NDArray.pool2d, a, w.kernel, w.stride, w.padding, "argmax")
        k = prod(w.kernel)
        shape = arg.shape + (k,)
        positions = NDArray(np.arange(k, dtype=a.dtype), device=a.device, dtype=a.dtype)
        spread = positions.reshape((1, 1, 1, 1, k)).broadcast_to(shape)
        return (arg.reshape(arg.shape + (1,)).broadcast_to(shape) == spread).astype(a.dtype)


def max_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    return MaxPool2d(kernel_size, stride, padding)(x)


class AvgPool2d(TensorOp):
    """The mean of each window of an NCHW input, padding counted as zeros (torch's
    count_include_pad=True); the adjoint spreads evenly over each window."""

    name = "avg_pool2d"

    def __init__(self, kernel_size, stride=None, padding=0):
        self.window = _Window(kernel_size, stride, padding, self.name)

    def compute(self, x: NDArray):
        self.window.out_shape(x.shape)  # checked
        w = self.window
        return x.pool2d(w.kernel, w.stride, w.padding, "avg")

    def gradient(self, out_grad: Tensor, node: Tensor):
        weight = 1.0 / prod(self.window.kernel)
        return _WindowScatter(self.window, node.inputs[0].shape, weight)(out_grad)


def avg_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    return AvgPool2d(kernel_size, stride, padding)(x)


def _averaging_matrix(n_out: int, n_in: int, dtype, device) -> NDArray:
    """(n_out, n_in): row i averages torch's adaptive window floor(i n / m) .. ceil((i+1) n / m)."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        a[i, lo:hi] = 1.0 / (hi - lo)
    return NDArray(a.astype(dtype), device=device, dtype=dtype)


class AdaptiveAvgPool2d(TensorOp):
    """Mean over torch's adaptive windows, as A_h @ x @ A_w^T with averaging matrices; the
    adjoint is A_h^T @ g @ A_w."""

    name = "adaptive_avg_pool2d"

    def __init__(self, output_size):
        self.output_size = (
            (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        )
        if len(self.output_size) != 2 or any(s is not None and s < 1 for s in self.output_size):
            raise ValueError(
                f"adaptive_avg_pool2d: output_size must be positive, got {output_size!r}"
            )

    def _matrices(self, shape, dtype, device):
        if len(shape) != 4:
            raise ValueError(f"needs a 4-D NCHW input, got {shape}")
        (ho, wo), (h, w) = self.output_size, shape[2:]
        return (
            _averaging_matrix(h if ho is None else ho, h, dtype, device),
            _averaging_matrix(w if wo is None else wo, w, dtype, device),
        )

    def compute(self, x: NDArray):
        ah, aw = self._matrices(x.shape, x.dtype, x.device)
        return ah @ x @ aw.permute((1, 0))

    def gradient(self, out_grad: Tensor, node: Tensor):
        x = node.inputs[0]
        ah, aw = self._matrices(x.shape, x.dtype, array_device(x))
        return matmul(matmul(_const(ah.permute((1, 0)).compact()), out_grad), _const(aw))


def adaptive_avg_pool2d(x, output_size) -> Tensor:
    return AdaptiveAvgPool2d(output_size)(x)


# ---- transposed convolution -----------------------------------------------------------
def _nhwc(x: Tensor) -> Tensor:
    return transpose(transpose(x, (1, 2)), (2, 3))


def _nchw(x: Tensor) -> Tensor:
    return transpose(transpose(x, (2, 3)), (1, 2))


def _conv_weight(w: Tensor) -> Tensor:
    """torch's transposed-conv weight (C_in, C_out, kh, kw) as ops.conv's (kh, kw, C_out, C_in):
    the conv whose adjoint conv_transpose2d is."""
    return transpose(transpose(transpose(w, (0, 2)), (1, 3)), (2, 3))


def _from_conv_weight(w: Tensor) -> Tensor:
    return transpose(transpose(transpose(w, (2, 3)), (1, 3)), (0, 2))


def _int_pair(value: Any, what: str, name: str) -> tuple[int, int]:
    """An int, or a (height, width) pair of ints, as a pair."""
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) for v in pair):
        raise ValueError(f"{name}: {what} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _one_or_pair(pair: tuple[int, int]) -> int | tuple[int, int]:
    return pair[0] if pair[0] == pair[1] else pair


class ConvTranspose2d(TensorOp):
    """The adjoint of conv2d: NCHW input, torch's (C_in, C_out, kh, kw) weights, output
    (H - 1) stride - 2 padding + kh + output_padding per axis (stride, padding and
    output_padding each an int or a (height, width) pair, as torch's). Computed as the conv of
    the input dilated by the stride and padded by kh - 1 - padding with the flipped kernel;
    its gradients are the conv of the adjoint (d/dx) and the conv weight gradient (d/dw)."""

    autocast = "low"

    name = "conv_transpose2d"

    def __init__(self, stride: Any = 1, padding: Any = 0, output_padding: Any = 0):
        self.stride = _int_pair(stride, "stride", self.name)
        self.padding = _int_pair(padding, "padding", self.name)
        self.output_padding = _int_pair(output_padding, "output_padding", self.name)
        if (
            min(self.stride) < 1
            or min(self.padding) < 0
            or not all(0 <= o < s for o, s in zip(self.output_padding, self.stride))
        ):
            raise ValueError(
                f"conv_transpose2d: need stride >= 1, padding >= 0 and 0 <= output_padding < "
                f"stride, got {stride}, {padding}, {output_padding}"
            )

    def compute(self, x: NDArray, w: NDArray):
        if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[0]:
            raise ValueError(
                "needs NCHW input and (C_in, C_out, kh, kw) weights with matching C_in"
            )
        n, c, h, wd = x.shape
        kh, kw = w.shape[2:]
        (sh, sw), (ph, pw), (oh, ow) = self.stride, self.padding, self.output_padding
        if ph > kh - 1 or pw > kw - 1:
            raise ValueError(
                f"padding {_one_or_pair(self.padding)} must be below the kernel size {(kh, kw)}"
            )
        lo_h, lo_w = kh - 1 - ph, kw - 1 - pw
        grown = x.device.full(
            (n, (h - 1) * sh + 1 + 2 * lo_h + oh, (wd - 1) * sw + 1 + 2 * lo_w + ow, c),
            0.0,
            dtype=x.dtype,
        )
        grown[:, lo_h : lo_h + (h - 1) * sh + 1 : sh, lo_w : lo_w + (wd - 1) * sw + 1 : sw, :] = (
            x.permute((0, 2, 3, 1))
        )
        flipped = w.flip((2, 3)).permute((2, 3, 0, 1)).compact()
        return Conv(1, 0).compute(grown, flipped).permute((0, 3, 1, 2)).compact()

    def gradient(self, out_grad: Tensor, node: Tensor):
        x, w = node.inputs
        g = _nhwc(out_grad)
        return (
            _nchw(self._input_gradient(g, w)) if x.requires_grad else None,
            _from_conv_weight(self._weight_gradient(g, _nhwc(x), w.shape[2:]))
            if w.requires_grad
            else None,
        )

    def _conv_geometry(self, g: Tensor) -> tuple[Tensor, int, int]:
        """(g, stride, padding) for ops.conv and ConvWeightGrad, which take one int each: an
        unequal padding is applied to g here, an unequal stride is left as 1 to the caller."""
        (sh, sw), (ph, pw) = self.stride, self.padding
        if ph != pw:
            g, ph = pad(g, ((0, 0), (ph, ph), (pw, pw), (0, 0))), 0
        return g, sh if sh == sw else 1, ph

    def _input_gradient(self, g: Tensor, w: Tensor) -> Tensor:
        g, s, p = self._conv_geometry(g)
        dx = conv(g, _conv_weight(w), stride=s, padding=p)
        sh, sw = self.stride
        if sh != sw:  # the stride-1 correlation at the strided positions
            return getitem(dx, (slice(None), slice(None, None, sh), slice(None, None, sw)))
        return dx

    def _weight_gradient(self, g: Tensor, x: Tensor, kernel: tuple) -> Tensor:
        g, s, p = self._conv_geometry(g)
        (sh, sw), (oh, ow) = self.stride, self.output_padding
        if sh != sw:  # x spread to the stride-1 correlation's positions (zeros between)
            h, wd = x.shape[1:3]
            x = dilate(dilate(x, (1,), sh - 1), (2,), sw - 1)
            rows, cols = (h - 1) * sh + 1 + oh, (wd - 1) * sw + 1 + ow
            x = getitem(x, (slice(None), slice(0, rows), slice(0, cols)))
        return ConvWeightGrad(s, p, kernel)(g, x)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0) -> Tensor:
    out = ConvTranspose2d(stride, padding, output_padding)(x, weight)
    return _affine(out, None, bias, (1, weight.shape[1], 1, 1))


# ---- dropout --------------------------------------------------------------------------
class Dropout(TensorOp):
    """x * mask, the mask (0 or 1/(1-p)) drawn by `dropout`; the adjoint is masked alike."""

    name = "dropout"

    def __init__(self, mask: NDArray):
        self.mask = mask

    def compute(self, x: NDArray):
        if x.shape != self.mask.shape:
            raise ValueError(f"mask {self.mask.shape} does not fit input {x.shape}")
        return x * self.mask

    def gradient(self, out_grad: Tensor, node: Tensor):
        return Dropout(self.mask)(out_grad)


def dropout(x, p=0.5, training=True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (drawn from
    NumPy's global generator, so seeding it fixes the mask); the identity when not training."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training:
        return x
    device = array_device(x)
    keep = device.rand(*x.shape, dtype=x.dtype) >= p
    return Dropout(keep.astype(x.dtype) * (1.0 / (1.0 - p) if p < 1.0 else 0.0))(x)
