"""In-place ops: ``add_``, ``sub_``, ``mul_``, ``div_``, ``clamp_``, ``zero_``, ``fill_``,
``copy_``, ``x += y`` (and ``-=``, ``*=``, ``/=``), ``x[index] = v``, and ``clone()``.

Each writes into the tensor's own buffer, so its views and detached aliases see the new values,
as in PyTorch; the machinery is autograd's (``Tensor._inplace``): a leaf that requires grad may
only be modified under ``ndl.no_grad()``; inside autograd the tensor becomes the result's node,
and backward raises when a node needs a value that was overwritten after it used it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..autograd import Tensor, TensorOp, array_device, copy_data, is_grad_enabled
from ..backend_ndarray import NDArray  # also in the numpy mode: compute gets these
from .ops_activation import clamp, where
from .ops_mathematic import astype, broadcast_to, reduce_to_shape, reshape, zeros_like_data
from .ops_shape import index_add, index_select

__all__ = ["Clone", "clone"]


class Clone(TensorOp):
    """A copy of x on a buffer of its own; the adjoint passes through."""

    half_native = True

    name = "clone"

    def compute(self, a: NDArray) -> NDArray:
        return copy_data(a)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return out_grad


def clone(x: Tensor) -> Tensor:
    return Clone()(x)


class Overwrite(TensorOp):
    """(old, value) -> value broadcast to old's shape: what fill_ and copy_ leave. The old
    values get a zero adjoint (they stay in the graph, as in torch: x.zero_() on a tensor
    that requires grad still does)."""

    half_native = True

    name = "overwrite"

    def compute(self, old: NDArray, value: NDArray) -> NDArray:
        out = NDArray.make(old.shape, device=old.device, dtype=old.dtype)
        out[...] = value.broadcast_to(old.shape)
        return out

    def gradient(self, out_grad: Tensor, node: Tensor):
        old, value = node.inputs
        return zeros_like_data(old), reduce_to_shape(out_grad, value.shape)


def _tensor_like(value: Any, x: Tensor) -> Tensor:
    """`value` (a Tensor, array or number) as a Tensor in x's dtype on x's device."""
    if isinstance(value, Tensor):
        value = value if value.device == x.device else value.to(x.device)
        return astype(value, x.dtype)
    return Tensor(np.asarray(value), device=x.device, dtype=x.dtype, requires_grad=False)


def _fresh(result: Tensor, *given: Any) -> Tensor:
    """The result as a node of its own: an op that returned one of its operands (x + 0 may)
    would otherwise hand the in-place tensor that operand's place in the graph."""
    return clone(result) if any(result is g for g in given) else result


def _graded(operand: Any) -> bool:
    """Whether x.mul_(operand) or x.div_(operand) needs the old x: for operand's gradient."""
    return isinstance(operand, Tensor) and operand.requires_grad


# keeps_old=False: the snapshot of x shares the written buffer instead of copying it (an op
# whose gradient does not read the old x: add, sub, overwrite; a 33 MB copy per out += identity
# of a ResNet otherwise).
def add_(self: Tensor, other: Any, *, alpha: float = 1) -> Tensor:
    return self._inplace(
        "add_", lambda x, o: x + (o * alpha if alpha != 1 else o), other, keeps_old=False
    )


def sub_(self: Tensor, other: Any, *, alpha: float = 1) -> Tensor:
    return self._inplace(
        "sub_", lambda x, o: x - (o * alpha if alpha != 1 else o), other, keeps_old=False
    )


def mul_(self: Tensor, other: Any) -> Tensor:
    return self._inplace("mul_", lambda x, o: _fresh(x * o, x, o), other, keeps_old=_graded(other))


def div_(self: Tensor, other: Any) -> Tensor:
    return self._inplace("div_", lambda x, o: x / o, other, keeps_old=_graded(other))


def clamp_(self: Tensor, min: Any = None, max: Any = None) -> Tensor:
    return self._inplace("clamp_", lambda x: _fresh(clamp(x, min, max), x))


def fill_(self: Tensor, value: Any) -> Tensor:
    """Every element set to `value` (a number or a one-element tensor); the tensor no longer
    depends on what it held."""
    number = value.numpy().item() if isinstance(value, Tensor) else value
    if not np.isscalar(number):
        raise TypeError(f"fill_: expected a number, got {type(value).__name__}")
    full = Tensor.make_const(array_device(self).full((), number, dtype=self.dtype))
    return self._inplace("fill_", lambda x: Overwrite()(x, full), keeps_old=False)


def zero_(self: Tensor) -> Tensor:
    return fill_(self, 0)


def copy_(self: Tensor, src: Any) -> Tensor:
    """src's values (broadcast to this shape, in this dtype, from any device) written in; the
    adjoint goes to src."""
    return self._inplace(
        "copy_", lambda x, s: Overwrite()(x, _tensor_like(s, x)), src, keeps_old=False
    )


def _augmented(method: Any) -> Any:
    """``x += y`` etc.: in place, as in PyTorch, except on a leaf that requires grad, where
    course code (whose Tensors require grad by default) gets the new tensor that ``x = x + y``
    gives, as before in-place ops existed."""

    def operator(self: Tensor, other: Any) -> Tensor:
        if self.requires_grad and self.is_leaf() and is_grad_enabled():
            return NotImplemented
        return method(self, other)

    return operator


# ---- x[index] = value ----------------------------------------------------------------------
def _is_basic(index: Any) -> bool:
    """Ints and slices alone: NDArray writes those directly."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(
        isinstance(p, slice) or (isinstance(p, int) and not isinstance(p, bool)) for p in parts
    )


def _host_index(index: Any) -> Any:
    """The index with Tensor and NDArray parts as NumPy arrays."""
    parts = index if isinstance(index, tuple) else (index,)
    host = tuple(p.numpy() if isinstance(p, (Tensor, NDArray)) else p for p in parts)
    return host if isinstance(index, tuple) else host[0]


def _positions(x: Tensor, index: Any, name: str) -> np.ndarray:
    """The flat positions x[index] selects, found with NumPy's indexing on the host."""
    try:
        return np.arange(int(np.prod(x.shape))).reshape(x.shape)[_host_index(index)]
    except (IndexError, TypeError, ValueError) as error:
        raise IndexError(f"{name}: {error} (tensor of shape {x.shape})") from None


def needs_positions(index: Any) -> bool:
    """Whether x[index] is beyond GetItem (ints, slices, '...') and the single-array forms:
    None, several arrays, or arrays mixed with ints and slices."""
    parts = index if isinstance(index, tuple) else (index,)
    return not all(isinstance(p, slice) or type(p) is int or p is Ellipsis for p in parts)


def take(x: Tensor, index: Any) -> Tensor:
    """x[index] for any NumPy index (x[rows, cols], x[0, [1, 3]], x[None], ...): an
    index_select of the selected flat positions, so the adjoint adds repeats back."""
    positions = _positions(x, index, "getitem")
    flat = reshape(x, (int(np.prod(x.shape)),))
    picked = index_select(flat, 0, np.asarray(positions, dtype=np.int64).reshape(-1))
    return reshape(picked, positions.shape)


def _put(x: Tensor, value: Any, index: Any) -> Tensor:
    """x with `value` (broadcast to the selection) at x[index], for any NumPy index, as graph
    ops: the selection's flat positions, found on the host, get the value by index_add into
    zeros, and where() keeps x everywhere else (so a nan or inf elsewhere in x stays)."""
    size = int(np.prod(x.shape))
    positions = _positions(x, index, "setitem")
    flat = np.asarray(positions, dtype=np.int64).reshape(-1)
    if np.unique(flat).size != flat.size:
        raise ValueError(
            "setitem: the index selects some elements more than once; which write would win "
            "is undefined (as in PyTorch): use index_add to add repeated values instead"
        )
    source = reshape(broadcast_to(_tensor_like(value, x), positions.shape), (flat.size,))
    zeros = Tensor.make_const(array_device(x).full((size,), 0, dtype=x.dtype))
    keep = np.ones(size, dtype=bool)
    keep[flat] = False
    keep_mask = Tensor(keep, device=x.device, dtype="bool", requires_grad=False)
    placed = index_add(zeros, 0, flat, source)
    return reshape(where(keep_mask, reshape(x, (size,)), placed), x.shape)


def _write_selection(index: Any, value: Any):
    """The direct write for ints and slices (and any index on NumPy data), no graph."""

    def write(data: Any) -> None:
        if isinstance(value, Tensor):
            source = value.realize_cached_data()
        elif isinstance(data, NDArray) and not np.isscalar(value):
            source = NDArray(np.asarray(value), device=data.device, dtype=data.dtype)
        else:
            source = value
        try:
            data[index] = source
        except IndexError as error:
            raise IndexError(f"setitem: {error} (tensor of shape {data.shape})") from None

    return write


def setitem(self: Tensor, index: Any, value: Any) -> None:
    direct = _is_basic(index) or isinstance(self.cached_data, np.ndarray)  # the numpy mode
    self._inplace(
        "setitem",
        lambda x, v: _put(x, v, index),
        value,
        write=_write_selection(index, value) if direct else None,
        keeps_old=False,  # where() and index_add read the mask and index, not x
    )


_METHODS = {
    "add_": add_,
    "sub_": sub_,
    "mul_": mul_,
    "div_": div_,
    "clamp_": clamp_,
    "fill_": fill_,
    "zero_": zero_,
    "copy_": copy_,
    "clone": clone,
    "__iadd__": _augmented(add_),
    "__isub__": _augmented(sub_),
    "__imul__": _augmented(mul_),
    "__itruediv__": _augmented(div_),
    "__setitem__": setitem,
}
for _name, _fn in _METHODS.items():
    setattr(Tensor, _name, _fn)
