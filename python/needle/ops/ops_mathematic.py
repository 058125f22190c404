"""The op catalogue: each Op computes on NDArrays and differentiates with Tensor ops.

Binary elementwise ops broadcast like NumPy; their gradients are summed back to each
input's shape (``reduce_to_shape``). Each op has a function form, named by the op's name
(``add`` for EWiseAdd), that takes the operands and then the op's own arguments.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, overload

import numpy as np

from .. import autograd, backend_ndarray as nd
from ..autograd import (
    Saved,
    Tensor,
    TensorOp,
    TensorTuple,
    TensorTupleOp,
    array_device,
    array_of,
    is_grad_enabled,
)
from ..backend_ndarray import NDArray
from .ops_tuple import make_tuple

__all__ = [
    "EWiseAdd",
    "add",
    "AddScalar",
    "add_scalar",
    "EWiseSub",
    "subtract",
    "EWiseMul",
    "multiply",
    "MulScalar",
    "mul_scalar",
    "EWiseDiv",
    "divide",
    "DivScalar",
    "divide_scalar",
    "PowerScalar",
    "power_scalar",
    "EWisePow",
    "power",
    "Negate",
    "negate",
    "Transpose",
    "transpose",
    "Reshape",
    "reshape",
    "BroadcastTo",
    "broadcast_to",
    "Summation",
    "summation",
    "MatMul",
    "matmul",
    "Log",
    "log",
    "Exp",
    "exp",
    "ReLU",
    "relu",
    "Tanh",
    "tanh",
    "Sigmoid",
    "sigmoid",
    "Sqrt",
    "sqrt",
    "Max",
    "Maximum",
    "maximum",
    "Stack",
    "stack",
    "Split",
    "split",
    "Flip",
    "flip",
    "Dilate",
    "dilate",
    "UnDilate",
    "undilate",
    "Pad",
    "pad",
    "Conv",
    "conv",
    "ConvWeightGrad",
    "ConvInputGrad",
    "GetItem",
    "getitem",
    "GetItemGradient",
    "reduce_to_shape",
    "zeros_like_data",
    "AsType",
    "astype",
    "TakeRows",
    "take_rows",
    "AddRows",
    "add_rows",
]


def zeros_like_data(x: Tensor) -> Tensor:
    """A constant zero Tensor with x's shape, dtype and device."""
    return Tensor.make_const(array_device(x).full(x.shape, 0.0, dtype=x.dtype))


def reduce_to_shape(grad: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Sum a broadcast gradient back to `shape` (the input's shape before broadcasting)."""
    if grad.shape == tuple(shape):
        return grad
    lead = len(grad.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and grad.shape[lead + i] != 1
    )
    if axes:
        grad = summation(grad, axes)
    return reshape(grad, tuple(shape))


def _check_scalar(scalar: Any, op: str) -> Any:
    """A number operand: a Python or NumPy number, or the one value of a 0-d or (1,) array
    (course code divides by np.random.randn(1))."""
    if isinstance(scalar, np.ndarray) and scalar.size == 1:
        scalar = scalar.reshape(-1)[0]
    if not isinstance(scalar, numbers.Number):
        raise TypeError(f"{op}: expected a number, got {type(scalar).__name__}")
    return scalar


def _function(op: type[TensorOp], operands: int = 1) -> Callable[..., Tensor]:
    """The function form of an op that takes no arguments of its own, called by the op's name:
    add(a, b) is EWiseAdd()(a, b). (An op with arguments has its function written out, with
    its signature.)"""

    def unary(a: Tensor) -> Tensor:
        return op()(a)

    def binary(a: Tensor, b: Tensor) -> Tensor:
        return op()(a, b)

    function: Callable[..., Tensor] = binary if operands == 2 else unary
    function.__name__ = function.__qualname__ = op.name or op.__name__.lower()
    function.__doc__ = op.__doc__
    return function


# ---- elementwise arithmetic -----------------------------------------------------------
class _Broadcasting(TensorOp):
    """A binary elementwise op on operands that broadcast against each other: `partials`
    gives the adjoints at the output's shape, `gradient` sums each back to its input's."""

    half_native = True  # one NDArray call, which rounds 16-bit results once

    def partials(
        self, out_grad: Tensor, a: Tensor, b: Tensor, node: Tensor
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError()

    def gradient(self, out_grad: Tensor, node: Tensor) -> tuple[Tensor, Tensor]:
        a, b = node.inputs
        grad_a, grad_b = self.partials(out_grad, a, b, node)
        return reduce_to_shape(grad_a, a.shape), reduce_to_shape(grad_b, b.shape)


class _Scalar(TensorOp):
    """An op of a tensor and a number (the op's `scalar`), checked to be one."""

    half_native = True  # one NDArray call, which rounds 16-bit results once

    name: str

    def __init__(self, scalar: Any):
        self.scalar = _check_scalar(scalar, self.name)


class EWiseAdd(_Broadcasting):
    """a + b; d/da = d/db = 1."""

    name = "add"

    def compute(self, a: NDArray, b: NDArray) -> NDArray:
        return a + b

    def partials(
        self, out_grad: Tensor, a: Tensor, b: Tensor, node: Tensor
    ) -> tuple[Tensor, Tensor]:
        return out_grad, out_grad


add = _function(EWiseAdd, 2)


class AddScalar(_Scalar):
    """a + c; d/da = 1."""

    name = "add_scalar"

    def compute(self, a: NDArray) -> NDArray:
        return a + self.scalar

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad


def add_scalar(a, scalar):
    return AddScalar(scalar)(a)


class EWiseSub(_Broadcasting):
    """a - b; d/da = 1, d/db = -1."""

    name = "subtract"

    def compute(self, a: NDArray, b: NDArray) -> NDArray:
        return a - b

    def partials(
        self, out_grad: Tensor, a: Tensor, b: Tensor, node: Tensor
    ) -> tuple[Tensor, Tensor]:
        return out_grad, -out_grad


subtract = _function(EWiseSub, 2)


class EWiseMul(_Broadcasting):
    """a * b; d/da = b, d/db = a."""

    name = "multiply"

    def compute(self, a: NDArray, b: NDArray) -> NDArray:
        return a * b

    def partials(
        self, out_grad: Tensor, a: Tensor, b: Tensor, node: Tensor
    ) -> tuple[Tensor, Tensor]:
        return out_grad * b, out_grad * a


multiply = _function(EWiseMul, 2)


class MulScalar(_Scalar):
    """a * c; d/da = c."""

    name = "mul_scalar"

    def compute(self, a: NDArray) -> NDArray:
        return a * self.scalar

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad * self.scalar


def mul_scalar(a, scalar):
    return MulScalar(scalar)(a)


class EWiseDiv(_Broadcasting):
    """a / b; d/da = 1/b, d/db = -a/b^2."""

    name = "divide"

    def compute(self, a: NDArray, b: NDArray) -> NDArray:
        return a / b

    def partials(
        self, out_grad: Tensor, a: Tensor, b: Tensor, node: Tensor
    ) -> tuple[Tensor, Tensor]:
        grad_a = out_grad / b
        return grad_a, -grad_a * a / b


divide = _function(EWiseDiv, 2)


class DivScalar(_Scalar):
    """a / c; d/da = 1/c."""

    name = "divide_scalar"

    def compute(self, a: NDArray) -> NDArray:
        return a / self.scalar

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad / self.scalar


def divide_scalar(a, scalar):
    return DivScalar(scalar)(a)


class PowerScalar(_Scalar):
    """a ** c for a number c; d/da = c * a^(c-1)."""

    name = "power_scalar"

    def compute(self, a: NDArray) -> NDArray:
        return a**self.scalar

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        a = node.inputs[0]
        if self.scalar == 0:
            return out_grad * 0
        if self.scalar == 1:
            return out_grad
        return out_grad * self.scalar * power_scalar(a, self.scalar - 1)


def power_scalar(a, scalar):
    return PowerScalar(scalar)(a)


class EWisePow(_Broadcasting):
    """a ** b; d/da = b * a^(b-1), d/db = a^b * log(a)."""

    name = "power"

    def compute(self, a: NDArray, b: NDArray) -> NDArray:
        return a**b

    def partials(
        self, out_grad: Tensor, a: Tensor, b: Tensor, node: Tensor
    ) -> tuple[Tensor, Tensor]:
        return out_grad * b * power(a, b - 1), out_grad * node * log(a)


power = _function(EWisePow, 2)


class Negate(TensorOp):
    """-a; d/da = -1."""

    half_native = True

    def compute(self, a: NDArray) -> NDArray:
        return -a

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return -out_grad


negate = _function(Negate)


# ---- shape ops ------------------------------------------------------------------------
class Transpose(TensorOp):
    """Swap two axes (the last two by default); the adjoint swaps them back."""

    half_native = True

    def __init__(self, axes: tuple | None = None):
        if axes is not None and len(axes) != 2:
            raise ValueError(f"transpose: swaps two axes, got axes={axes}")
        self.axes = axes

    def compute(self, a: NDArray) -> NDArray:
        if a.ndim < 2 and self.axes is None:
            raise ValueError("needs at least 2 dimensions")
        i, j = self.axes if self.axes is not None else (-2, -1)
        return a.swapaxes(i, j)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return transpose(out_grad, self.axes)


def transpose(a, axes=None):
    return Transpose(axes)(a)


class _ToShape(TensorOp):
    """An op to a given shape (a sequence of ints), computed by an NDArray method, `apply`."""

    half_native = True

    apply: Callable[[NDArray, tuple[int, ...]], NDArray]

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(shape)

    def compute(self, a: NDArray) -> NDArray:
        return self.apply(a, self.shape)


class Reshape(_ToShape):
    """Same elements, new shape; the adjoint is reshaped back."""

    apply = staticmethod(NDArray.reshape)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return reshape(out_grad, node.inputs[0].shape)


def reshape(a, shape):
    return Reshape(shape)(a)


class BroadcastTo(_ToShape):
    """Repeat size-1 and missing leading axes; the adjoint sums over them."""

    name = "broadcast_to"
    apply = staticmethod(NDArray.broadcast_to)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return reduce_to_shape(out_grad, node.inputs[0].shape)


def broadcast_to(a, shape):
    return BroadcastTo(shape)(a)


@overload
def _axes_tuple(axes: None) -> None: ...
@overload
def _axes_tuple(axes: int | Sequence[int]) -> tuple[int, ...]: ...
def _axes_tuple(axes: Any) -> tuple[int, ...] | None:
    if axes is None:
        return None
    if isinstance(axes, numbers.Integral):
        return (int(axes),)
    return tuple(axes)


def _keepdims_shape(shape: tuple, axes: tuple | None) -> tuple:
    """`shape` with the reduced axes set to 1."""
    if axes is None:
        return (1,) * len(shape)
    reduced = {a % len(shape) for a in axes}
    return tuple(1 if i in reduced else d for i, d in enumerate(shape))


def _reduced_shape(shape: tuple, axes: tuple | None) -> tuple:
    """`shape` without the reduced axes."""
    if axes is None:
        return ()
    reduced = {a % len(shape) for a in axes}
    return tuple(d for i, d in enumerate(shape) if i not in reduced)


class _Reduction(TensorOp):
    """A reduction over `axes` (an int, a tuple, or None: all), keeping them as size 1 with
    `keepdims`, else dropping them."""

    half_native = True  # one NDArray reduction, summed in float32 and rounded once

    def __init__(self, axes: int | Sequence[int] | None = None, keepdims: bool = False):
        self.axes = _axes_tuple(axes)
        self.keepdims = keepdims


class Summation(_Reduction):
    """Sum over `axes` (None: all); the adjoint is broadcast back over them."""

    def compute(self, a: NDArray) -> NDArray:
        return a.sum(axis=self.axes, keepdims=self.keepdims)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        shape = node.inputs[0].shape
        if self.axes is not None and not self.keepdims:  # put the reduced axes back as 1s
            out_grad = reshape(out_grad, _keepdims_shape(shape, self.axes))
        return broadcast_to(out_grad, shape)


def summation(a, axes=None, keepdims=False):
    return Summation(axes, keepdims)(a)


class AsType(TensorOp):
    """a converted to `dtype`; the adjoint is converted back to a's dtype."""

    half_native = True

    def __init__(self, dtype: Any):
        self.dtype = nd.canonical_dtype(dtype)

    def compute(self, a: NDArray) -> NDArray:
        return a.astype(self.dtype)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        # Without create_graph, the NDArray conversion alone (_cast_back): 4 us less each than
        # an AsType node, of which autocast left 17 in a bf16 ResNet-9 step's backward.
        return _cast_back(out_grad, node.inputs[0].dtype)


def astype(a: Tensor, dtype: Any) -> Tensor:
    return a if a.dtype == nd.canonical_dtype(dtype) else AsType(dtype)(a)


class MatMul(TensorOp):
    """a @ b over the last two axes, broadcasting the leading ones; a 1-D operand is a row
    (left) or column (right) vector whose axis is dropped from the result, as in NumPy.

    d/da = out_grad @ b^T, d/db = a^T @ out_grad, each summed back to its input's shape.
    """

    half_native = True
    autocast = "low"

    def compute(self, a: NDArray, b: NDArray):
        if a.ndim >= 2 and b.ndim >= 2:
            return a @ b
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("does not take 0-d operands")
        out = _as_matrix(a, True) @ _as_matrix(b, False)
        return out.reshape(_matmul_out_shape(out.shape, a.ndim, b.ndim))

    def gradient(self, out_grad: Tensor, node: Tensor):
        a, b = node.inputs
        a2 = a if a.ndim >= 2 else reshape(a, (1,) + a.shape)
        b2 = b if b.ndim >= 2 else reshape(b, b.shape + (1,))
        if a.ndim == 1 or b.ndim == 1:  # restore the dropped vector axes
            out_shape = _broadcast_matmul_shape(a2.shape, b2.shape)
            out_grad = reshape(out_grad, out_shape)
        # An input that needs no gradient (a data batch) gets none: its matmul is pure waste.
        grad_a = grad_b = None
        if a.requires_grad:
            grad_a = reduce_to_shape(matmul(out_grad, transpose(b2)), a2.shape)
            grad_a = grad_a if a2 is a else reshape(grad_a, a.shape)
        if b.requires_grad:
            grad_b = reduce_to_shape(matmul(transpose(a2), out_grad), b2.shape)
            grad_b = grad_b if b2 is b else reshape(grad_b, b.shape)
        return grad_a, grad_b


def _as_matrix(x: NDArray, left: bool) -> NDArray:
    if x.ndim >= 2:
        return x
    return x.reshape((1,) + x.shape) if left else x.reshape(x.shape + (1,))


def _matmul_out_shape(shape: tuple, a_ndim: int, b_ndim: int) -> tuple:
    if a_ndim == 1:
        shape = shape[:-2] + shape[-1:]
    if b_ndim == 1:
        shape = shape[:-1]
    return shape


def _broadcast_matmul_shape(a_shape: tuple, b_shape: tuple) -> tuple:
    return nd.broadcast_shapes(a_shape[:-2], b_shape[:-2]) + (a_shape[-2], b_shape[-1])


matmul = _function(MatMul, 2)


# ---- elementwise functions ------------------------------------------------------------
class _Elementwise(TensorOp):
    """f(a) elementwise, computed by the NDArray method of the op's name (Log: a.log(), from
    the backend's table of unary primitives); each op gives f's derivative in `gradient`."""

    half_native = True  # one unary primitive, which rounds 16-bit results once

    name: str
    # The NDArray method itself (Tanh.apply(x) is x.tanh()), also for other ops' computes.
    apply: Callable[[NDArray], NDArray]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.apply = staticmethod(getattr(NDArray, cls.name))

    def compute(self, a: NDArray) -> NDArray:
        return self.apply(a)


class Log(_Elementwise):
    """log(a); d/da = 1/a."""

    name = "log"

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad / node.inputs[0]


log = _function(Log)


class Exp(_Elementwise):
    """exp(a); d/da = exp(a)."""

    name = "exp"

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad * node


exp = _function(Exp)


class ReLU(_Elementwise):
    """max(a, 0); d/da = 1 where a > 0, else 0 (0 at a = 0, as PyTorch)."""

    name = "relu"

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        # sign(relu(a)) is the 0/1 mask in one kernel (node is relu(a), never negative).
        mask = Tensor.make_const(array_of(node).sign())
        return out_grad * mask


relu = _function(ReLU)


class Tanh(_Elementwise):
    """tanh(a); d/da = 1 - tanh(a)^2."""

    name = "tanh"

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad * (1 - node * node)


tanh = _function(Tanh)


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-a)); d/da = s(a) * (1 - s(a))."""

    name = "sigmoid"

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad * node * (1 - node)


sigmoid = _function(Sigmoid)


class Sqrt(_Elementwise):
    """sqrt(a); d/da = 1 / (2 sqrt(a))."""

    name = "sqrt"

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad / (node * 2)


sqrt = _function(Sqrt)


# ---- max ------------------------------------------------------------------------------
class Max(_Reduction):
    """Maximum over `axes`; the adjoint is shared equally among tied maxima (as torch.amax)."""

    def compute(self, a: NDArray) -> NDArray:
        return a.max(axis=self.axes, keepdims=self.keepdims)

    def gradient(self, out_grad: Tensor, node: Tensor):
        a = node.inputs[0]
        kept = _keepdims_shape(a.shape, self.axes)
        data = array_of(a)
        # (Comparisons give bool and bool sums int64: in the input's dtype, the tie shares are
        # exact in float64 as well.)
        mask = (data == array_of(node).reshape(kept).broadcast_to(a.shape)).astype(data.dtype)
        mask = mask / mask.sum(axis=self.axes, keepdims=True).broadcast_to(a.shape)
        return broadcast_to(reshape(out_grad, kept), a.shape) * Tensor.make_const(mask)


class Maximum(TensorOp):
    """Elementwise max(a, b) (b a Tensor or a number); ties split the adjoint evenly."""

    half_native = True

    def __init__(self, scalar=None):
        self.scalar = scalar

    def compute(self, a: NDArray, b: NDArray | None = None):
        return a.maximum(self.scalar if b is None else b)

    def gradient(self, out_grad: Tensor, node: Tensor):
        a = array_of(node.inputs[0])
        b = self.scalar if len(node.inputs) == 1 else array_of(node.inputs[1])
        mask_a = ((a > b) + (a == b) * 0.5).astype(a.dtype)
        grad_a = reduce_to_shape(out_grad * Tensor.make_const(mask_a), node.inputs[0].shape)
        if len(node.inputs) == 1:
            return grad_a
        grad_b = out_grad * Tensor.make_const(1 - mask_a)
        return grad_a, reduce_to_shape(grad_b, node.inputs[1].shape)


def maximum(a, b):
    if isinstance(b, Tensor):
        return Maximum()(a, b)
    return Maximum(_check_scalar(b, "maximum"))(a)


# ---- stack and split ------------------------------------------------------------------
class Stack(TensorOp):
    """Join equally shaped tensors along a new axis; the adjoint splits along it."""

    half_native = True

    def __init__(self, axis: int):
        self.axis = axis

    def compute(self, args: tuple) -> NDArray:
        return nd.stack(args, axis=self.axis)

    def gradient(self, out_grad: Tensor, node: Tensor):
        return split(out_grad, self.axis)


def stack(args, axis):
    return Stack(axis)(make_tuple(*args))


class Split(TensorTupleOp):
    """Take a tensor apart along `axis` (the inverse of stack); the adjoint stacks."""

    half_native = True

    def __init__(self, axis: int):
        self.axis = axis

    def compute(self, a: NDArray):
        return tuple(x.compact() for x in nd.split(a, axis=self.axis))

    def gradient(self, out_grad: TensorTuple, node):
        return stack(list(out_grad), self.axis)


def split(a, axis):
    return Split(axis)(a)


# ---- flip, dilate, pad ----------------------------------------------------------------
class Flip(TensorOp):
    """Reverse along `axes`; the adjoint is flipped back."""

    half_native = True

    def __init__(self, axes: tuple | None = None):
        self.axes = _axes_tuple(axes)

    def compute(self, a: NDArray):
        return a.flip(self.axes)

    def gradient(self, out_grad: Tensor, node: Tensor):
        return flip(out_grad, self.axes)


def flip(a, axes):
    return Flip(axes)(a)


def _dilation_slices(shape: tuple, axes: tuple, dilation: int) -> tuple:
    step = dilation + 1
    return tuple(slice(None, None, step) if i in axes else slice(None) for i in range(len(shape)))


def _check_axes(axes: tuple, ndim: int) -> tuple:
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for {ndim} dimensions")
    return tuple(a % ndim for a in axes)


class _Dilation(TensorOp):
    """An op that spaces out (or gathers back) the elements along `axes` with `dilation`
    zeros between them."""

    name: str

    def __init__(self, axes: int | Sequence[int], dilation: int):
        self.axes = _axes_tuple(axes)
        self.dilation = int(dilation)
        if self.dilation < 0:
            raise ValueError(f"{self.name}: dilation must be >= 0, got {dilation}")


class Dilate(_Dilation):
    """Insert `dilation` zeros after every element along `axes`; the adjoint undilates."""

    name = "dilate"

    def compute(self, a: NDArray):
        axes = _check_axes(self.axes, a.ndim)
        shape = tuple(d * (self.dilation + 1) if i in axes else d for i, d in enumerate(a.shape))
        out = a.device.full(shape, 0.0, dtype=a.dtype)
        out[_dilation_slices(shape, axes, self.dilation)] = a
        return out

    def gradient(self, out_grad: Tensor, node: Tensor):
        return undilate(out_grad, self.axes, self.dilation)


def dilate(a, axes, dilation):
    return Dilate(axes, dilation)(a)


class UnDilate(_Dilation):
    """Keep every (dilation+1)-th element along `axes`; the adjoint dilates."""

    name = "undilate"

    def compute(self, a: NDArray):
        axes = _check_axes(self.axes, a.ndim)
        return a[_dilation_slices(a.shape, axes, self.dilation)].compact()

    def gradient(self, out_grad: Tensor, node: Tensor):
        # Dilation then trimming to the input's shape (undilate accepts lengths that are not
        # multiples of dilation+1).
        grown = dilate(out_grad, self.axes, self.dilation)
        shape = node.inputs[0].shape
        if grown.shape == shape:
            return grown
        return getitem(grown, tuple(slice(0, d) for d in shape))


def undilate(a, axes, dilation):
    return UnDilate(axes, dilation)(a)


class Pad(TensorOp):
    """Zero-pad with a (before, after) pair per axis; the adjoint crops."""

    half_native = True

    def __init__(self, axes: tuple):
        self.axes = tuple(tuple(p) for p in axes)

    def compute(self, a: NDArray):
        return a.pad(self.axes)

    def gradient(self, out_grad: Tensor, node: Tensor):
        shape = node.inputs[0].shape
        return getitem(out_grad, tuple(slice(lo, lo + d) for (lo, _), d in zip(self.axes, shape)))


def pad(a, axes):
    return Pad(axes)(a)


# ---- indexing -------------------------------------------------------------------------
class GetItem(TensorOp):
    """a[idxs] with ints and slices (NumPy semantics); the adjoint scatters into zeros."""

    half_native = True

    def __init__(self, idxs):
        self.idxs = idxs

    def compute(self, a: NDArray):
        return a._index_view(self.idxs).compact()

    def gradient(self, out_grad: Tensor, node: Tensor):
        return GetItemGradient(self.idxs, node.inputs[0].shape)(out_grad)


def getitem(a, idxs):
    return GetItem(idxs)(a)


class GetItemGradient(TensorOp):
    """Zeros of `shape` with `out_grad` written at `idxs` (the adjoint of GetItem)."""

    name = "getitem_gradient"

    def __init__(self, idxs, shape):
        self.idxs = idxs
        self.shape = tuple(shape)

    def compute(self, g: NDArray):
        out = g.device.full(self.shape, 0.0, dtype=g.dtype)
        out[self.idxs] = g
        return out

    def gradient(self, out_grad: Tensor, node: Tensor):
        return getitem(out_grad, self.idxs)


# ---- convolution ----------------------------------------------------------------------
# NCHW tensors are NHWC arrays permuted by _TO_NCHW (views both ways, no copies).
_TO_NHWC, _TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def _nhwc(a: NDArray, layout: str) -> NDArray:
    return a.permute(_TO_NHWC) if layout == "NCHW" else a


def _from_nhwc(a: NDArray, layout: str) -> NDArray:
    return a.permute(_TO_NCHW) if layout == "NCHW" else a


class Conv(TensorOp):
    """2-D convolution (cross-correlation), NHWC input and (kh, kw, c_in, c_out) weights.

    (N, H, W, C_in) x (K_h, K_w, C_in, C_out) -> (N, H_out, W_out, C_out) with
    H_out = (H + 2 padding - K_h) // stride + 1, plus a (C_out,) bias when given as a third
    input. With layout "NCHW" the input and output are (N, C, H, W) (as nn.Conv speaks),
    computed as permuted views of NHWC arrays. One conv2d primitive where the device has it,
    else one matmul over an im2col view built with as_strided.

    Under autocast (`low`) it casts its floating inputs itself and keeps the casts for the
    gradient, whose results it casts back: one node where the weight's and bias's AsType
    nodes made three (a bf16 ResNet-9 step: 85 op nodes -> 68).
    """

    def __init__(
        self, stride: int = 1, padding: int = 0, layout: str = "NHWC", low: str | None = None
    ):
        self.stride = int(stride)
        self.padding = int(padding)
        if self.stride < 1 or self.padding < 0:
            raise ValueError(
                f"conv: need stride >= 1 and padding >= 0, got stride={stride}, padding={padding}"
            )
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"conv: layout must be 'NHWC' or 'NCHW', got {layout!r}")
        self.layout, self.low = layout, low
        # Without `low` (a device that convolves no 16-bit rows, or Conv made directly),
        # autocast casts the inputs with AsType nodes and the op computes in float32.
        self.autocast = None if low else "low"

    def computes_halves(self, arrays) -> bool:
        # the device's conv rows take them (HALF_ROWS); with `low` it does (see conv())
        return self.low is not None or _native_conv(*arrays)

    def compute(self, x: NDArray, w: NDArray, bias: NDArray | None = None):
        if x.ndim != 4 or w.ndim != 4:
            raise ValueError("needs a 4-D NHWC input and 4-D (kh, kw, c_in, c_out) weights")
        a, b = autocast_arrays(self.low, x, w)
        kept = a is not x  # a cast: kept for the gradient
        a = _nhwc(a, self.layout)
        if a.shape[3] != b.shape[2]:
            raise ValueError(
                f"input channels {a.shape[3]} do not match weight channels {b.shape[2]}"
            )
        kh, kw, _, c_out = b.shape
        if bias is not None and bias.shape != (c_out,):
            raise ValueError(f"bias {bias.shape} does not match {c_out} output channels")
        h, w_in = a.shape[1] + 2 * self.padding, a.shape[2] + 2 * self.padding
        if h < kh or w_in < kw:
            raise ValueError(f"kernel {kh}x{kw} is larger than the padded input {h}x{w_in}")
        if _native_conv(a, b):
            dims = a.shape + (kh, kw, c_out)
            compact = a.compact()  # an NCHW input: compacted once, the weight gradient
            kept, a = kept or compact is not a, compact  # reads the copy again (node.saved.x)
            fused = bias is not None and nd.conv2d_takes_bias(a, bias)  # (float32 if 16-bit)
            out = nd.conv2d(
                "forward", a, b, dims, self.stride, self.padding, bias if fused else None
            )
            bias = None if fused else bias
        else:
            kept = False
            cols, (n, h_out, w_out) = _im2col(a, kh, kw, self.stride, self.padding)
            out = cols @ b.compact().reshape(cols.shape[1], c_out)
            out = out.reshape(n, h_out, w_out, c_out)
        if bias is not None:
            out = out + autocast_arrays(self.low, bias)[0].reshape((1, 1, 1, c_out))
        out = _from_nhwc(out, self.layout)
        if not kept and b is w:
            return out
        # Copies and casts only (private: the inputs' own arrays are read from the graph,
        # where an in-place write since forward is caught).
        return Saved(out, x=a if kept else None, w=None if b is w else b)

    def gradient(self, out_grad: Tensor, node: Tensor):
        x, w = node.inputs[:2]
        s, p, layout = self.stride, self.padding, self.layout
        saved_x = getattr(node.saved, "x", None)
        saved_w = getattr(node.saved, "w", None)
        xc, wc = x, w  # the operands forward computed with, as Tensors
        if self.low and is_grad_enabled():  # the casts as Tensor ops: differentiable
            xc, wc = autocast_tensors(self.low, x, w)
        elif self.low:
            if saved_x is not None and saved_x.dtype != x.dtype:
                xc = Tensor.make_const(_from_nhwc(saved_x, layout))
            if saved_w is not None:
                wc = Tensor.make_const(saved_w)
        bias, g = array_of(node.inputs[2]) if len(node.inputs) == 3 else None, array_of(out_grad)
        fused = w.requires_grad and not is_grad_enabled() and isinstance(g, NDArray)
        fused = fused and isinstance(bias, NDArray) and nd.conv2d_takes_bias(g, bias)
        wide = not is_grad_enabled() and w.dtype == "float32"  # (16-bit sums left unrounded)
        weights = ConvWeightGrad(s, p, w.shape[:2], layout, saved_x, bias if fused else None, wide)
        dw = weights(xc, out_grad) if w.requires_grad else None
        dx = conv_input_gradient(out_grad, xc, wc, s, p, layout) if x.requires_grad else None
        grads: list[Tensor | None] = [dx, dw]
        if fused and dw is not None:  # with the weights' (conv2d_weight_bias_grad)
            dw.realize_cached_data()  # (LAZY_MODE: the weights' compute runs here)
            grads.append(Tensor.make_const(weights.bias_grad))
        elif bias is not None:
            grads.append(summation(out_grad, (0, 2, 3) if layout == "NCHW" else (0, 1, 2)))
        return tuple(_cast_back(g, t.dtype) for g, t in zip(grads, node.inputs))


def autocast_arrays(low: str | None, *arrays):
    """The floating arrays of `arrays` in the autocast dtype `low` (None: as they are), for
    ops that cast their inputs themselves (conv, linear) as torch's kernels do."""
    if not low:
        return arrays
    return tuple(
        a.astype(low) if a is not None and a.dtype in nd.FLOATING and a.dtype != low else a
        for a in arrays
    )


def autocast_tensors(low: str | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """autocast_arrays as AsType ops (differentiable), for gradients with create_graph."""
    if not low:
        return tensors
    return tuple(astype(t, low) if t.dtype in nd.FLOATING else t for t in tensors)


@overload
def _cast_back(g: Tensor, dtype: str) -> Tensor: ...
@overload
def _cast_back(g: None, dtype: str) -> None: ...
def _cast_back(g: Tensor | None, dtype: str) -> Tensor | None:
    """An adjoint in its input's dtype: an AsType op with create_graph, else the NDArray
    conversion alone (no node)."""
    if g is None or g.dtype == dtype:
        return g
    if is_grad_enabled():
        return astype(g, dtype)
    return Tensor.make_const(array_of(g).astype(dtype))


def _native_conv(*arrays) -> bool:
    """Whether the operands' device runs the conv2d primitives itself (the C++ CPU backend):
    then conv and both its gradients are one primitive call each, implicit GEMMs that skip
    the taps on padding; elsewhere they are im2col views, pads and matmuls."""
    return all(isinstance(a, NDArray) for a in arrays) and nd.conv2d_native(
        arrays[0].device, *arrays
    )


def conv_input_gradient(out_grad, x, w, s, p, layout="NHWC"):
    """d conv(x, w) / dx for the adjoint out_grad: one ConvInputGrad where the device runs
    conv2d_input_grad, else the composite of _conv_input_gradient (on NHWC tensors)."""
    data = (out_grad.realize_cached_data(), w.realize_cached_data())
    size = x.shape[2:4] if layout == "NCHW" else x.shape[1:3]
    if _native_conv(*data):
        return ConvInputGrad(s, p, size, layout)(out_grad, w)
    if layout == "NHWC":
        return _conv_input_gradient(out_grad, x, w, s, p)
    g = transpose(transpose(out_grad, (1, 2)), (2, 3))
    x = transpose(transpose(x, (1, 2)), (2, 3))
    dx = _conv_input_gradient(g, x, w, s, p)
    return transpose(transpose(dx, (2, 3)), (1, 2))


class ConvInputGrad(TensorOp):
    """d conv(x, w) / dx for the adjoint g, (N, H_out, W_out, C_out) -> (N, H, W, C_in) (NCHW
    both with layout "NCHW"), by the conv2d_input_grad primitive. Bilinear in (g, w):
    <V, dx(g, w)> = <conv(V, w), g>, so d/dg = conv(V, w) and d/dw = conv's weight gradient
    for input V and adjoint g."""

    name = "conv_input_gradient"

    def __init__(self, stride: int, padding: int, size: tuple[int, int], layout: str = "NHWC"):
        self.stride, self.padding, self.layout = stride, padding, layout
        self.size = tuple(size)

    def computes_halves(self, arrays) -> bool:
        return _native_conv(*arrays)  # the device's conv rows take them (HALF_ROWS)

    def compute(self, g: NDArray, w: NDArray):
        g = _nhwc(g, self.layout)
        kh, kw, c_in, c_out = w.shape
        dims = (g.shape[0],) + self.size + (c_in, kh, kw, c_out)
        dx = nd.conv2d("input_grad", g, w, dims, self.stride, self.padding)
        return _from_nhwc(dx, self.layout)

    def gradient(self, out_grad: Tensor, node: Tensor):
        g, w = node.inputs
        s, p, layout = self.stride, self.padding, self.layout
        return (
            conv(out_grad, w, stride=s, padding=p, layout=layout) if g.requires_grad else None,
            ConvWeightGrad(s, p, w.shape[:2], layout)(out_grad, g) if w.requires_grad else None,
        )


def _im2col(a: NDArray, kh: int, kw: int, s: int, p: int):
    """The (N * H_out * W_out, kh * kw * C_in) patch matrix of a padded NHWC input (one
    compact copy of an as_strided view) and (N, H_out, W_out)."""
    a = a.pad(((0, 0), (p, p), (p, p), (0, 0))) if p else a.compact()
    n, h, w, c_in = a.shape
    if h < kh or w < kw:
        raise ValueError(f"kernel {kh}x{kw} is larger than the padded input {h}x{w}")
    h_out, w_out = (h - kh) // s + 1, (w - kw) // s + 1
    sn, sh, sw, sc = a.strides
    cols = a.as_strided((n, h_out, w_out, kh, kw, c_in), (sn, sh * s, sw * s, sh, sw, sc))
    return cols.compact().reshape(n * h_out * w_out, kh * kw * c_in), (n, h_out, w_out)


def _conv_input_gradient(out_grad, x, w, s, p):
    """d conv(x, w) / dx for adjoint out_grad: the correlation of the (stride-dilated)
    adjoint with the flipped, transposed kernel.

    The adjoint is zero-padded so that the correlation yields exactly the unpadded input's
    rows and columns: kh - 1 - p before, and kh - 1 - p plus the stride remainder (the rows
    no window reaches, whose gradient is zero) after. Correlating over the whole padded
    input and cropping would compute ((h + 2p) / h)^2 times the needed work: 9x for the 3x3,
    padding-1 convs of ResNet-9's 1x1 feature maps. A padding larger than kh - 1 (rows that
    see only padding) takes that longer way.
    """
    _, h, wd, _ = x.shape
    kh, kw = w.shape[:2]
    rh, rw = (h + 2 * p - kh) % s, (wd + 2 * p - kw) % s
    g = out_grad
    if s > 1:  # dilate, then drop the s-1 trailing zeros it leaves per axis
        g = dilate(out_grad, (1, 2), s - 1)
        g = getitem(
            g,
            (
                slice(None),
                slice(0, g.shape[1] - (s - 1)),
                slice(0, g.shape[2] - (s - 1)),
                slice(None),
            ),
        )
    w_flipped = transpose(flip(w, (0, 1)), (2, 3))
    if p <= min(kh, kw) - 1:
        padding = ((0, 0), (kh - 1 - p, kh - 1 - p + rh), (kw - 1 - p, kw - 1 - p + rw), (0, 0))
        if any(lo or hi for lo, hi in padding):
            g = pad(g, padding)
        return conv(g, w_flipped, stride=1, padding=0)
    grad_padded = conv(
        pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0))), w_flipped, stride=1, padding=0
    )
    if rh or rw:
        grad_padded = pad(grad_padded, ((0, 0), (0, rh), (0, rw), (0, 0)))
    return getitem(grad_padded, (slice(None), slice(p, p + h), slice(p, p + wd), slice(None)))


class ConvWeightGrad(TensorOp):
    """d conv(x, w) / dw for adjoint g, as one product: im2col(x)^T @ g, (kh * kw * C_in) x
    (N * H_out * W_out) x C_out, the forward's own patch matrix read transposed. (Correlating
    x with the stride-dilated adjoint instead costs stride^2 times the work: 1.0 GFLOP rather
    than 0.04 for ResNet-9's 7x7 stride-4 input layer.)

    Bilinear in (x, g): <V, dw(x, g)> = <g, conv(x, V)>, so d/dg = conv(x, V) and d/dx is
    conv's input gradient for weights V and adjoint g.
    """

    name = "conv_weight_gradient"

    def __init__(
        self,
        stride: int,
        padding: int,
        kernel: tuple[int, int],
        layout: str = "NHWC",
        x_nhwc: NDArray | None = None,
        bias: NDArray | None = None,
        wide: bool = False,
    ):
        self.stride, self.padding, self.layout = stride, padding, layout
        self.kernel = tuple(kernel)
        self.x_nhwc = x_nhwc  # the forward's compact NHWC copy of x, when it made one
        self.bias = bias  # the conv's bias: compute also sets bias_grad (conv2d_takes_bias)
        # Whether 16-bit operands give the float32 sums (the row's own result) rather than dw
        # rounded to their dtype: for float32 master weights, without create_graph.
        self.wide = wide

    def computes_halves(self, arrays) -> bool:
        return _native_conv(*arrays)  # the device's conv rows take them (HALF_ROWS)

    def compute(self, x: NDArray, g: NDArray):
        kh, kw = self.kernel
        if x.ndim == 4 and g.ndim == 4:
            x, g = _nhwc(x, self.layout), _nhwc(g, self.layout)
            if self.x_nhwc is not None and self.x_nhwc.shape == x.shape:
                x = self.x_nhwc
        if _native_conv(x, g) and x.ndim == 4 and g.ndim == 4:
            s, p = self.stride, self.padding
            out_shape = (
                x.shape[0],
                (x.shape[1] + 2 * p - kh) // s + 1,
                (x.shape[2] + 2 * p - kw) // s + 1,
            )
            if g.shape[:3] != out_shape:
                raise ValueError(
                    f"adjoint {g.shape} does not match the output {out_shape} of input {x.shape}"
                )
            dims = x.shape + (kh, kw, g.shape[3])
            if self.bias is None:
                dw = nd.conv2d("weight_grad", x, g, dims, self.stride, self.padding)
            else:
                dw, self.bias_grad = nd.conv2d("weight_grad", x, g, dims, s, p, self.bias)
            return dw if self.wide or dw.dtype == x.dtype else dw.astype(x.dtype)
        cols, out_shape = _im2col(x, kh, kw, self.stride, self.padding)
        if g.ndim != 4 or g.shape[:3] != out_shape:
            raise ValueError(
                f"adjoint {g.shape} does not match the output {out_shape} of input {x.shape}"
            )
        dw = cols.permute((1, 0)) @ g.compact().reshape(cols.shape[0], g.shape[3])
        return dw.reshape(kh, kw, x.shape[3], g.shape[3])

    def gradient(self, out_grad: Tensor, node: Tensor):
        x, g = node.inputs
        s, p = self.stride, self.padding
        layout = self.layout
        return (
            conv_input_gradient(g, x, out_grad, s, p, layout) if x.requires_grad else None,
            conv(x, out_grad, stride=s, padding=p, layout=layout) if g.requires_grad else None,
        )


# ---- rows by index (embeddings) -------------------------------------------------------
class TakeRows(TensorOp):
    """Rows of a table picked by whole-number indices (an nd.RowIndices): an embedding
    lookup in one gather instead of a one-hot matmul. The adjoint adds each row back to the
    row it came from (AddRows); indices get no gradient."""

    half_native = True

    name = "take_rows"

    def __init__(self, indices: nd.RowIndices):
        self.indices = indices

    def compute(self, table: NDArray):
        return nd.take_rows(table, self.indices)

    def gradient(self, out_grad: Tensor, node: Tensor):
        return AddRows(self.indices, node.inputs[0].shape[0])(out_grad)


def take_rows(table, indices):
    """table[indices] along the first axis; `indices` 1-D whole numbers or an nd.RowIndices."""
    if not isinstance(indices, nd.RowIndices):
        indices = nd.RowIndices(indices, table.shape[0], array_device(table))
    return TakeRows(indices)(table)


class AddRows(TensorOp):
    """Zeros with `rows` rows and values[i] added to row indices[i]: TakeRows's adjoint, whose
    own adjoint is TakeRows again."""

    name = "add_rows"

    def __init__(self, indices: nd.RowIndices, rows: int):
        self.indices = indices
        self.rows = rows

    def compute(self, values: NDArray):
        return nd.add_rows(values, self.indices, self.rows)

    def gradient(self, out_grad: Tensor, node: Tensor):
        return TakeRows(self.indices)(out_grad)


def add_rows(values, indices, rows: int):
    if not isinstance(indices, nd.RowIndices):
        indices = nd.RowIndices(indices, rows, array_device(values))
    return AddRows(indices, rows)(values)


def conv(a, b, stride=1, padding=1, bias=None, layout="NHWC"):
    low = autograd._AUTOCAST
    # Under autocast, where the device convolves 16-bit rows itself, Conv casts its inputs;
    # elsewhere AsType nodes do, and it computes in float32, rounded once.
    if low is not None and not nd.conv2d_native_for(array_device(a), low):
        low = None
    op = Conv(stride, padding, layout, low)
    return op(a, b) if bias is None else op(a, b, bias)
