"""Issue 16: elementwise and activation ops with PyTorch's names and conventions.

Each computes on NDArrays from the backends' existing primitives (so it runs on every device)
and differentiates with Tensor ops (so gradients of gradients work). No backend has a select
primitive: where() gathers (exact for any values); the piecewise activations blend with 0/1
masks (x * m + y * (1 - m)), exact for finite values, whose branches are kept finite.
"""

from __future__ import annotations

import atexit
import functools
import math
from typing import Any

import numpy as np

from ..autograd import Tensor, TensorOp, array_device, array_of
from ..backend_ndarray import NDArray, RowIndices, broadcast_shapes, prod, stack, take_rows
from ..backend_ndarray.dtypes import result_type
from ..backend_ndarray.primitives import INDEX_DTYPE
from .ops_mathematic import (
    _check_scalar,
    _Elementwise,
    _function,
    exp,
    reduce_to_shape,
    relu,
    sigmoid,
    tanh,
)

__all__ = [
    "Abs",
    "abs",
    "Sign",
    "sign",
    "Rsqrt",
    "rsqrt",
    "Sin",
    "sin",
    "Cos",
    "cos",
    "Clamp",
    "clamp",
    "Minimum",
    "minimum",
    "Where",
    "where",
    "SiLU",
    "silu",
    "Softplus",
    "softplus",
    "LeakyReLU",
    "leaky_relu",
    "ELU",
    "elu",
    "GELU",
    "gelu",
    "Erf",
    "erf",
]


def _const(array: NDArray) -> Tensor:
    return Tensor.make_const(array)


def _mask(condition: NDArray, dtype: str) -> NDArray:
    """A bool array as 0/1 in `dtype` (bools take no arithmetic)."""
    return condition.astype(dtype)


def _positive(a: NDArray) -> NDArray:
    """1 where a > 0, else 0, in a's dtype: two cheap kernels (a > b is three, plus astype)."""
    return a.relu().sign()


def _min_scalar(a: NDArray, value: float) -> NDArray:
    # No minimum primitive: min(a, v) = -max(-a, -v), exact.
    return -((-a).maximum(-value))


# ---- unary functions from the primitive table -----------------------------------------
class Abs(_Elementwise):
    """|a|; d/da = sign(a) (0 at 0, as torch)."""

    name = "abs"

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad * _const(array_of(node.inputs[0]).sign())


abs = _function(Abs)


class Sign(_Elementwise):
    """sign(a) in {-1, 0, 1}; d/da = 0 (kept in the graph, as power_scalar's 0 is)."""

    name = "sign"

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad * 0


sign = _function(Sign)


class Rsqrt(_Elementwise):
    """1 / sqrt(a); d/da = -a^(-3/2) / 2 = -rsqrt(a)^3 / 2."""

    name = "rsqrt"

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad * node * node * node * -0.5


rsqrt = _function(Rsqrt)


class Sin(_Elementwise):
    """sin(a); d/da = cos(a)."""

    name = "sin"

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad * cos(node.inputs[0])


sin = _function(Sin)


class Cos(_Elementwise):
    """cos(a); d/da = -sin(a)."""

    name = "cos"

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return -(out_grad * sin(node.inputs[0]))


cos = _function(Cos)


# ---- clamp, minimum, where ------------------------------------------------------------
class Clamp(TensorOp):
    """min(max(a, min), max) for numbers min and max (either may be None). As torch: min > max
    gives max everywhere, and the gradient passes where min <= a <= max (bounds included)."""

    name = "clamp"

    def __init__(self, min: Any = None, max: Any = None):
        if min is None and max is None:
            raise ValueError("clamp: at least one of min and max must be given")
        self.min = None if min is None else _check_scalar(min, self.name)
        self.max = None if max is None else _check_scalar(max, self.name)

    def compute(self, a: NDArray) -> NDArray:
        out = a if self.min is None else a.maximum(self.min)
        return out if self.max is None else _min_scalar(out, self.max)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        a = array_of(node.inputs[0])
        inside = None
        if self.min is not None:
            inside = _mask(a >= self.min, a.dtype)
        if self.max is not None:
            below = _mask(a <= self.max, a.dtype)
            inside = below if inside is None else inside * below
        assert inside is not None
        return out_grad * _const(inside)


def clamp(a, min=None, max=None):
    return Clamp(min, max)(a)


class Minimum(TensorOp):
    """Elementwise min(a, b) (b a Tensor or a number); ties split the adjoint evenly, as
    torch.minimum (and needle's maximum)."""

    name = "minimum"

    def __init__(self, scalar=None):
        self.scalar = scalar

    def compute(self, a: NDArray, b: NDArray | None = None):
        return -((-a).maximum(-self.scalar if b is None else -b))

    def gradient(self, out_grad: Tensor, node: Tensor):
        a = array_of(node.inputs[0])
        b = self.scalar if len(node.inputs) == 1 else array_of(node.inputs[1])
        mask_a = ((a < b) + (a == b) * 0.5).astype(a.dtype)
        grad_a = reduce_to_shape(out_grad * _const(mask_a), node.inputs[0].shape)
        if len(node.inputs) == 1:
            return grad_a
        grad_b = out_grad * _const(1 - mask_a)
        return grad_a, reduce_to_shape(grad_b, node.inputs[1].shape)


def minimum(a, b):
    if isinstance(b, Tensor):
        return Minimum()(a, b)
    return Minimum(_check_scalar(b, "minimum"))(a)


class Where(TensorOp):
    """where(condition, a, b): a where the bool condition holds, else b; the three broadcast
    together (as torch.where). An exact select, whatever the values (inf and NaN in the branch
    not taken stay out: where(mask, scores, -inf) is the usual attention mask). The condition
    gets no gradient; a and b get the adjoint where they were chosen."""

    name = "where"

    def compute(self, condition: NDArray, a: NDArray, b: NDArray) -> NDArray:
        if condition.dtype != "bool":
            raise TypeError(f"the condition must be a bool array, got {condition.dtype}")
        shape = broadcast_shapes(condition.shape, a.shape, b.shape)
        dtype = result_type(a.dtype, b.dtype)
        # One gather from [b, a] laid end to end: element i comes from position i, or
        # i + size where the condition holds (blending with 0/1 masks would turn an inf in
        # the branch not taken into NaN).
        size = prod(shape)
        table = stack([b.astype(dtype).broadcast_to(shape), a.astype(dtype).broadcast_to(shape)])
        flat = condition.broadcast_to(shape).compact().reshape((size,))
        positions = flat.astype(INDEX_DTYPE) * size + _iota(size, condition.device)
        out = take_rows(table.reshape((2 * size,)), RowIndices.on_device(positions, 2 * size))
        return out.reshape(shape)

    def gradient(self, out_grad: Tensor, node: Tensor):
        condition, a, b = node.inputs
        zero = _const(array_device(out_grad).full((), 0.0, dtype=out_grad.dtype))
        grad_a = reduce_to_shape(Where()(condition, out_grad, zero), a.shape)
        grad_b = reduce_to_shape(Where()(condition, zero, out_grad), b.shape)
        return None, grad_a, grad_b


@functools.lru_cache(maxsize=8)
def _iota(size: int, device) -> NDArray:
    """0, 1, ..., size - 1 as int64 on `device` (cached: no backend has an iota primitive,
    and uploading it per call would cost a transfer)."""
    return NDArray(np.arange(size, dtype=np.int64), device=device, dtype=INDEX_DTYPE)


# Released before the backends' modules go, which report arrays still alive at exit as leaks.
atexit.register(_iota.cache_clear)


def where(condition, input, other):
    """torch.where(condition, input, other); input and other may be numbers."""
    if not isinstance(condition, Tensor):
        raise TypeError(
            f"where: the condition must be a bool Tensor, got {type(condition).__name__}"
        )
    like = input if isinstance(input, Tensor) else other
    dtype = like.dtype if isinstance(like, Tensor) else "float32"
    device = array_device(condition)
    input, other = (
        x
        if isinstance(x, Tensor)
        else _const(device.full((), _check_scalar(x, "where"), dtype=dtype))
        for x in (input, other)
    )
    return Where()(condition, input, other)


# ---- activations ----------------------------------------------------------------------
class SiLU(TensorOp):
    """a * sigmoid(a); d/da = s + a s (1 - s) = s + silu(a) (1 - s)."""

    name = "silu"

    def compute(self, a: NDArray) -> NDArray:
        return a * a.sigmoid()

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        s = sigmoid(node.inputs[0])
        return out_grad * (s + node * (1 - s))


silu = _function(SiLU)


def _log1p(u: NDArray) -> NDArray:
    """log(1 + u) for u >= 0, to full relative precision for small u (Kahan's trick: the
    rounding of 1 + u cancels in log(w) / (w - 1)); u itself where 1 + u rounds to 1."""
    w = u + 1
    exact = _mask(w == 1, u.dtype)
    return w.log() * u / ((w - 1) + exact) + u * exact


def _expm1(x: NDArray) -> NDArray:
    """exp(x) - 1 for x <= 0, to full relative precision near 0: 2 t / (1 - t) with
    t = tanh(x / 2) (1 - t lies in [1, 2], no cancellation)."""
    t = (x * 0.5).tanh()
    return t * 2 / (1 - t)


class Softplus(TensorOp):
    """log(1 + exp(beta a)) / beta, and a itself where beta a > threshold (torch's
    softplus); d/da = sigmoid(beta a), 1 above the threshold."""

    name = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        self.beta = _check_scalar(beta, self.name)
        self.threshold = _check_scalar(threshold, self.name)

    def compute(self, a: NDArray) -> NDArray:
        z = a * self.beta
        # max(z, 0) + log(1 + exp(-|z|)): no overflow, full precision for z << 0.
        smooth = (z.relu() + _log1p((-z.abs()).exp())) / self.beta
        # An exact select, not a blend with 0/1 masks: softplus(inf) = inf would be
        # inf * 0 = NaN in the branch not taken (and softplus(-inf) = 0 likewise).
        return Where().compute(z <= self.threshold, smooth, a)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        x = node.inputs[0]
        below = _mask(array_of(x) * self.beta <= self.threshold, x.dtype)
        return out_grad * (_const(1 - below) + _const(below) * sigmoid(x * self.beta))


def softplus(a, beta=1.0, threshold=20.0):
    return Softplus(beta, threshold)(a)


class LeakyReLU(TensorOp):
    """a for a > 0, else negative_slope * a; d/da = 1 or negative_slope (the slope at 0, as
    torch)."""

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = _check_scalar(negative_slope, self.name)

    def compute(self, a: NDArray) -> NDArray:
        # relu(a) - slope relu(-a): exact, each term 0 on the other's side.
        return a.relu() - (-a).relu() * self.negative_slope

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        positive = _positive(array_of(node.inputs[0]))
        scale = positive + (1 - positive) * self.negative_slope  # exactly 1 or the slope
        return out_grad * _const(scale)


def leaky_relu(a, negative_slope=0.01):
    return LeakyReLU(negative_slope)(a)


class ELU(TensorOp):
    """a for a > 0, else alpha (exp(a) - 1); d/da = 1 or alpha exp(a) (the latter at 0, as
    torch)."""

    name = "elu"

    def __init__(self, alpha: float = 1.0):
        self.alpha = _check_scalar(alpha, self.name)

    def compute(self, a: NDArray) -> NDArray:
        # relu(a) + alpha expm1(min(a, 0)): each term is 0 on the other's side.
        return a.relu() + _expm1(-((-a).relu())) * self.alpha

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        x = node.inputs[0]
        positive = _positive(array_of(x))
        # exp(min(x, 0)) as Tensor ops: no overflow on the positive side, and differentiable.
        negative = exp(-relu(-x)) * self.alpha
        return out_grad * (_const(positive) + _const(1 - positive) * negative)


def elu(a, alpha=1.0):
    return ELU(alpha)(a)


# ---- erf and gelu ---------------------------------------------------------------------
# erf is a primitive of every backend (ewise_erf: NumPy's reference in float64 through
# Cody's rationals, native ones within float tolerance of it).
_TWO_OVER_SQRT_PI = 2 / math.sqrt(math.pi)


class Erf(TensorOp):
    """The error function; d/da = 2 / sqrt(pi) exp(-a^2)."""

    name = "erf"

    def compute(self, a: NDArray) -> NDArray:
        return a.erf()

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        x = node.inputs[0]
        return out_grad * exp(x * x * -1) * _TWO_OVER_SQRT_PI


erf = _function(Erf)

_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_TANH_BETA = math.sqrt(2 / math.pi)
_TANH_KAPPA = 0.044715


class GELU(TensorOp):
    """a Phi(a) (approximate="none", Phi the normal CDF through erf), or torch's tanh form
    0.5 a (1 + tanh(sqrt(2/pi) (a + 0.044715 a^3))) (approximate="tanh")."""

    name = "gelu"

    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def compute(self, a: NDArray) -> NDArray:
        if self.approximate == "tanh":
            inner = (a + a * a * a * _TANH_KAPPA) * _TANH_BETA
            return a * 0.5 * (inner.tanh() + 1)
        return a.gelu()

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        x = node.inputs[0]
        if self.approximate == "tanh":
            t = tanh((x + x * x * x * _TANH_KAPPA) * _TANH_BETA)
            slope = (1 - t * t) * (x * x * (3 * _TANH_KAPPA) + 1) * _TANH_BETA
            return out_grad * ((t + 1) * 0.5 + x * 0.5 * slope)
        return out_grad * _gelu_grad(x)


class _GELUGrad(TensorOp):
    """Exact gelu's derivative Phi(a) + a phi(a) (Phi, phi the normal CDF and density), one
    primitive; its own derivative phi(a) (2 - a^2) as Tensor ops (second order)."""

    name = "gelu_grad"

    def compute(self, a: NDArray) -> NDArray:
        return a.gelu_grad()

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        x = node.inputs[0]
        return out_grad * exp(x * x * -0.5) * _INV_SQRT_2PI * (2 - x * x)


_gelu_grad = _function(_GELUGrad)


def gelu(a, approximate="none"):
    return GELU(approximate)(a)


# ---- Tensor methods (torch's names); x.where(condition, y) is where(condition, x, y) ------
_METHODS = {
    "abs": abs,
    "__abs__": abs,
    "sign": sign,
    "rsqrt": rsqrt,
    "sin": sin,
    "cos": cos,
    "clamp": clamp,
    "minimum": minimum,
    "where": lambda self, condition, other: where(condition, self, other),
    "silu": silu,
    "softplus": softplus,
    "leaky_relu": leaky_relu,
    "elu": elu,
    "gelu": gelu,
    "erf": erf,
}
for _name, _method in _METHODS.items():
    setattr(Tensor, _name, _method)
