"""Issue 16: shape ops people reach for in the first hour (PyTorch's names and conventions).

Everything computes with NDArray views (slices, broadcast_to, permute, reshape) and writes
into slices, or with the rows-by-index primitives (take_rows / add_rows) for the gathers:
no per-element Python loop and no NumPy copy of the data, so each op runs on every device.
Index arguments (gather, scatter_add, index_select, index_add) are constants of the op:
they are checked on the host once, as nd.RowIndices does, and carry no gradient.

Names that needle already had keep their meaning: ``split(x, axis)`` is the course's (every
slice along an axis); PyTorch's ``split`` into sizes is ``split_sizes`` and ``x.split``.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import backend_ndarray as nd
from ..autograd import Tensor, TensorOp, TensorTuple, TensorTupleOp
from ..backend_ndarray import NDArray
from ..backend_ndarray.primitives import INDEX_DTYPE
from .ops_mathematic import (
    broadcast_to,
    pad,
    reduce_to_shape,
    reshape,
    summation,
    zeros_like_data,
)
from .ops_tuple import make_tuple

__all__ = [
    "Cat",
    "cat",
    "Concatenate",
    "concatenate",
    "SplitSizes",
    "split_sizes",
    "Chunk",
    "chunk",
    "Squeeze",
    "squeeze",
    "Unsqueeze",
    "unsqueeze",
    "Flatten",
    "flatten",
    "Expand",
    "expand",
    "Repeat",
    "repeat",
    "Tile",
    "tile",
    "Roll",
    "roll",
    "Triu",
    "triu",
    "Tril",
    "tril",
    "Gather",
    "gather",
    "ScatterAdd",
    "scatter_add",
    "IndexSelect",
    "index_select",
    "IndexAdd",
    "index_add",
    "IndexArray",
    "index_array",
    "MaskIndex",
    "mask_index",
    "Sort",
    "sort",
    "ArgSort",
    "argsort",
    "TopK",
    "topk",
    "Einsum",
    "einsum",
]


# ---- helpers ----------------------------------------------------------------------------
def _dim(dim: Any, ndim: int, name: str) -> int:
    """`dim` (negative counts from the end) as an axis of an `ndim`-D array."""
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool):
        raise TypeError(f"{name}: dim must be an int, got {type(dim).__name__}")
    d = int(dim)
    if not -ndim <= d < ndim:
        raise ValueError(f"{name}: dim {d} is out of range for {ndim} dimensions")
    return d % ndim


def _ints(values: Any) -> tuple[int, ...]:
    """An int or a sequence of ints (or *args given as one sequence) as a tuple."""
    if isinstance(values, numbers.Integral):
        return (int(values),)
    if len(values) == 1 and not isinstance(values[0], numbers.Integral):
        return _ints(values[0])
    return tuple(int(v) for v in values)


def _at(dim: int, index: Any) -> tuple:
    """The index selecting `index` (an int or slice) along axis `dim`."""
    return (slice(None),) * dim + (index,)


# ---- cat, split into sizes, chunk --------------------------------------------------------
class Cat(TensorOp):
    """Join tensors along an existing axis `dim`; the adjoint is split back into their sizes."""

    half_native = True

    name = "cat"

    def __init__(self, dim: int = 0):
        self.dim = dim

    def compute(self, args: tuple) -> NDArray:
        if not args:
            raise ValueError("needs at least one tensor")
        first = args[0]
        if first.ndim == 0:
            raise ValueError("zero-dimensional tensors cannot be concatenated")
        dim = _dim(self.dim, first.ndim, self.name)
        for a in args[1:]:
            first._check_same_device(a)
            same = a.ndim == first.ndim and all(
                x == y for k, (x, y) in enumerate(zip(a.shape, first.shape)) if k != dim
            )
            if not same or a.dtype != first.dtype:
                raise ValueError(
                    f"tensors must match except along dim {self.dim}, got {first.shape} "
                    f"{first.dtype} and {a.shape} {a.dtype}"
                )
        shape = list(first.shape)
        shape[dim] = sum(a.shape[dim] for a in args)
        out = NDArray.make(tuple(shape), device=first.device, dtype=first.dtype)
        start = 0
        for a in args:
            out[_at(dim, slice(start, start + a.shape[dim]))] = a
            start += a.shape[dim]
        return out

    def gradient(self, out_grad: Tensor, node: Tensor) -> TensorTuple:
        sizes = [a.shape[self.dim] for a in node.inputs[0].realize_cached_data()]
        return CatGradient(sizes, self.dim)(out_grad)


class CatGradient(TensorTupleOp):
    """Cat's adjoint: out_grad split back into the pieces' sizes along `dim`, each piece a
    view of out_grad (SplitSizes compacts each, a copy of the whole gradient that backward
    does not need: the ops downstream compact a view when they must)."""

    half_native = True

    name = "cat_gradient"

    def __init__(self, sizes: Sequence[int], dim: int):
        self.sizes = list(sizes)
        self.dim = dim

    def compute(self, g: NDArray) -> tuple:
        dim = _dim(self.dim, g.ndim, self.name)
        if sum(self.sizes) != g.shape[dim]:
            raise ValueError(f"sizes {self.sizes} do not add up to {g.shape[dim]} along dim {dim}")
        starts = np.cumsum([0] + self.sizes).tolist()
        return tuple(g[_at(dim, slice(a, b))] for a, b in zip(starts[:-1], starts[1:]))

    def gradient(self, out_grad: TensorTuple, node: TensorTuple) -> Tensor:
        return Cat(self.dim)(make_tuple(*out_grad))


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """torch.cat: join `tensors` along `dim`."""
    return Cat(dim)(make_tuple(*tensors))


class Concatenate(Cat):
    """cat under NumPy's and PyTorch's other name."""

    name = "concatenate"


def concatenate(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """torch.concatenate: torch.cat's alias."""
    return Concatenate(dim)(make_tuple(*tensors))


class SplitSizes(TensorTupleOp):
    """torch.split: pieces along `dim` of the given sizes (a list), or all of one size (an int,
    the last piece shorter); the adjoint is their cat."""

    half_native = True

    name = "split_sizes"

    def __init__(self, split_size_or_sections: int | Sequence[int], dim: int = 0):
        self.sections = split_size_or_sections
        self.dim = dim

    def sizes(self, length: int) -> list[int]:
        if isinstance(self.sections, (int, numbers.Integral)):
            s = int(self.sections)
            if s <= 0 and not (s == 0 and length == 0):
                raise ValueError(f"split size must be positive, got {s}")
            sizes = [s] * (length // s) if s else [0]
            return sizes + [length % s] if s and length % s else sizes
        sizes = [int(k) for k in self.sections]
        if sum(sizes) != length or any(k < 0 for k in sizes):
            raise ValueError(f"sizes {sizes} do not add up to {length} along dim {self.dim}")
        return sizes

    def compute(self, a: NDArray) -> tuple:
        if a.ndim == 0:
            raise ValueError("cannot split a zero-dimensional tensor")
        dim = _dim(self.dim, a.ndim, self.name)
        pieces, start = [], 0
        for k in self.sizes(a.shape[dim]):
            pieces.append(a[_at(dim, slice(start, start + k))].compact())
            start += k
        return tuple(pieces)

    def gradient(self, out_grad: TensorTuple, node: TensorTuple) -> Tensor:
        return Cat(self.dim)(make_tuple(*out_grad))


def split_sizes(x: Tensor, split_size_or_sections: int | Sequence[int], dim: int = 0):
    """torch.split(x, split_size_or_sections, dim) (needle's split(x, axis) takes every slice)."""
    return SplitSizes(split_size_or_sections, dim)(x)


class Chunk(SplitSizes):
    """torch.chunk: `chunks` pieces of ceil(length / chunks) along `dim` (fewer when they run
    out, the last shorter)."""

    name = "chunk"
    chunks: int

    def __init__(self, chunks: int, dim: int = 0):
        if not isinstance(chunks, numbers.Integral) or chunks < 1:
            raise ValueError(f"chunk: chunks must be a positive int, got {chunks}")
        super().__init__(0, dim)
        self.chunks = int(chunks)

    def sizes(self, length: int) -> list[int]:
        size = -(-length // self.chunks)
        if size == 0:  # an empty axis: torch gives one empty piece
            return [0]
        return [size] * (length // size) + ([length % size] if length % size else [])


def chunk(x: Tensor, chunks: int, dim: int = 0):
    return Chunk(chunks, dim)(x)


# ---- squeeze, unsqueeze, flatten -----------------------------------------------------------
class _Reshaping(TensorOp):
    """An op that only changes the shape (`out_shape` of the input's); the adjoint is reshaped
    back."""

    half_native = True

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError()

    def compute(self, a: NDArray) -> NDArray:
        return a.reshape(self.out_shape(a.shape))

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return reshape(out_grad, node.inputs[0].shape)


class Squeeze(_Reshaping):
    """torch.squeeze: drop the size-1 axes among `dim` (an int, a tuple, or None: all)."""

    def __init__(self, dim: int | Sequence[int] | None = None):
        self.dim = dim

    def out_shape(self, shape):
        ndim = len(shape)
        if self.dim is None:
            dims = set(range(ndim))
        else:  # a 0-d tensor takes dim 0 or -1, as in torch
            given = self.dim if isinstance(self.dim, (tuple, list)) else (self.dim,)
            dims = {_dim(d, max(ndim, 1), "squeeze") for d in given}
        return tuple(s for k, s in enumerate(shape) if not (k in dims and s == 1))


def squeeze(x: Tensor, dim: int | Sequence[int] | None = None) -> Tensor:
    return Squeeze(dim)(x)


class Unsqueeze(_Reshaping):
    """torch.unsqueeze: a new size-1 axis at `dim` (in [-ndim - 1, ndim])."""

    def __init__(self, dim: int):
        self.dim = dim

    def out_shape(self, shape):
        dim = _dim(self.dim, len(shape) + 1, "unsqueeze")
        return shape[:dim] + (1,) + shape[dim:]


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    return Unsqueeze(dim)(x)


class Flatten(_Reshaping):
    """torch.flatten: axes start_dim..end_dim (inclusive) merged into one."""

    def __init__(self, start_dim: int = 0, end_dim: int = -1):
        self.start_dim, self.end_dim = start_dim, end_dim

    def out_shape(self, shape):
        if not shape:  # torch flattens a 0-d tensor to (1,)
            _dim(self.start_dim, 1, "flatten"), _dim(self.end_dim, 1, "flatten")
            return (1,)
        start = _dim(self.start_dim, len(shape), "flatten")
        end = _dim(self.end_dim, len(shape), "flatten")
        if start > end:
            raise ValueError(f"start_dim {self.start_dim} comes after end_dim {self.end_dim}")
        return shape[:start] + (nd.prod(shape[start : end + 1]),) + shape[end + 1 :]


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    return Flatten(start_dim, end_dim)(x)


# ---- expand, repeat, tile ----------------------------------------------------------------
class Expand(TensorOp):
    """torch.expand: a broadcast view to `sizes` (-1 keeps an axis' size; new axes lead);
    the adjoint sums over the broadcast axes."""

    half_native = True

    def __init__(self, *sizes: Any):
        self.sizes = _ints(sizes)

    def compute(self, a: NDArray) -> NDArray:
        lead = len(self.sizes) - a.ndim
        if lead < 0:
            raise ValueError(f"needs at least {a.ndim} sizes, got {self.sizes}")
        if any(s == -1 for s in self.sizes[:lead]):
            raise ValueError(f"-1 is not allowed for a new leading axis: {self.sizes}")
        shape = self.sizes[:lead] + tuple(
            d if s == -1 else s for s, d in zip(self.sizes[lead:], a.shape)
        )
        if any(s < 0 for s in shape):
            raise ValueError(f"sizes must be >= 0 or -1, got {self.sizes}")
        try:
            return a.broadcast_to(shape)
        except ValueError:
            raise ValueError(f"cannot expand shape {a.shape} to {self.sizes}") from None

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return reduce_to_shape(out_grad, node.inputs[0].shape)


def expand(x: Tensor, *sizes: Any) -> Tensor:
    return Expand(*sizes)(x)


class Repeat(TensorOp):
    """torch.repeat (NumPy's tile): the tensor repeated `sizes[i]` times along axis i, with
    leading axes added when there are more sizes than axes. Computed as one compact copy of
    a broadcast view (r0, d0, r1, d1, ...); the adjoint sums over the r axes."""

    half_native = True

    name = "repeat"

    def __init__(self, *sizes: Any):
        self.sizes = _ints(sizes)
        if any(s < 0 for s in self.sizes):
            raise ValueError(f"{self.name}: sizes must be >= 0, got {self.sizes}")

    def reps(self, ndim: int) -> tuple[int, ...]:
        if len(self.sizes) < ndim:
            raise ValueError(
                f"needs at least one size per dimension ({ndim}), got {len(self.sizes)}"
            )
        return self.sizes

    def _interleaved(self, shape: tuple[int, ...]) -> tuple[tuple, tuple]:
        """(r0, d0, r1, d1, ...) and (1, d0, 1, d1, ...) for the input's `shape`."""
        reps = self.reps(len(shape))
        dims = (1,) * (len(reps) - len(shape)) + tuple(shape)
        return (
            tuple(x for pair in zip(reps, dims) for x in pair),
            tuple(x for d in dims for x in (1, d)),
        )

    def compute(self, a: NDArray) -> NDArray:
        big, small = self._interleaved(a.shape)
        out = a.reshape(small).broadcast_to(big).compact()
        return out.reshape(tuple(big[k] * big[k + 1] for k in range(0, len(big), 2)))

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        shape = node.inputs[0].shape
        big, _ = self._interleaved(shape)
        summed = summation(reshape(out_grad, big), tuple(range(0, len(big), 2)))
        return reshape(summed, shape)


def repeat(x: Tensor, *sizes: Any) -> Tensor:
    return Repeat(*sizes)(x)


class Tile(Repeat):
    """torch.tile: repeat with 1s prepended to `dims` when it has fewer than x has axes."""

    name = "tile"

    def __init__(self, dims: Any):
        super().__init__(dims)

    def reps(self, ndim: int) -> tuple[int, ...]:
        return (1,) * (ndim - len(self.sizes)) + self.sizes


def tile(x: Tensor, dims: Any) -> Tensor:
    return Tile(dims)(x)


# ---- roll, triu, tril --------------------------------------------------------------------
class Roll(TensorOp):
    """torch.roll: shift elements along `dims` by `shifts` (wrapping round); with dims None,
    along the flattened tensor. The adjoint rolls back."""

    half_native = True

    def __init__(self, shifts: int | Sequence[int], dims: int | Sequence[int] | None = None):
        self.shifts = _ints(shifts)
        self.dims = None if dims is None else _ints(dims)
        if len(self.shifts) != (1 if dims is None else len(self.dims or ())):
            raise ValueError(f"roll: shifts {shifts} and dims {dims} need one shift per dim")

    def compute(self, a: NDArray) -> NDArray:
        if self.dims is None:
            return _roll(a.compact().reshape((a.size,)), self.shifts[0], 0).reshape(a.shape)
        for shift, dim in zip(self.shifts, self.dims):
            a = _roll(a, shift, _dim(dim, a.ndim, "roll"))
        return a.compact()

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return Roll(tuple(-s for s in self.shifts), self.dims)(out_grad)


def _roll(a: NDArray, shift: int, dim: int) -> NDArray:
    n = a.shape[dim]
    shift = shift % n if n else 0
    if shift == 0:
        return a
    out = NDArray.make(a.shape, device=a.device, dtype=a.dtype)
    out[_at(dim, slice(shift, None))] = a[_at(dim, slice(0, n - shift))]
    out[_at(dim, slice(0, shift))] = a[_at(dim, slice(n - shift, None))]
    return out


def roll(x: Tensor, shifts: int | Sequence[int], dims: int | Sequence[int] | None = None):
    return Roll(shifts, dims)(x)


class _Triangle(TensorOp):
    """The last two axes' upper (triu) or lower (tril) triangle from `diagonal` on, zeros
    elsewhere: the input times a 0/1 mask made from the shape; the adjoint is masked alike.
    (So an inf or nan outside the triangle gives nan, where torch gives 0.)"""

    upper: bool

    def __init__(self, diagonal: int = 0):
        self.diagonal = int(diagonal)

    def compute(self, a: NDArray) -> NDArray:
        if a.ndim < 2:
            raise ValueError(f"needs at least 2 dimensions, got shape {a.shape}")
        m, n = a.shape[-2:]
        ones = np.ones((m, n), dtype=a.dtype)
        # The mask depends on the shape only: built on the host, then uploaded once.
        mask = np.triu(ones, self.diagonal) if self.upper else np.tril(ones, self.diagonal)
        return a * NDArray(mask, device=a.device, dtype=a.dtype).broadcast_to(a.shape)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return type(self)(self.diagonal)(out_grad)


class Triu(_Triangle):
    name = "triu"
    upper = True


class Tril(_Triangle):
    name = "tril"
    upper = False


def triu(x: Tensor, diagonal: int = 0) -> Tensor:
    return Triu(diagonal)(x)


def tril(x: Tensor, diagonal: int = 0) -> Tensor:
    return Tril(diagonal)(x)


# ---- gather, scatter_add, index_select, index_add --------------------------------------
def _host_index(index: Any, name: str, copy: bool = True) -> np.ndarray:
    """An index argument (a Tensor, NDArray, NumPy array or list of integers, or of whole
    numbers in a float array) as an int64 NumPy array: a constant of the op (a copy, unless
    `copy` is false and the argument already is one)."""
    if isinstance(index, (Tensor, NDArray)):
        index = index.numpy()
    idx = np.asarray(index)
    if idx.dtype.kind == "f":
        if not np.all(np.isfinite(idx)) or np.any(idx != np.floor(idx)):
            raise ValueError(f"{name}: index must hold whole numbers")
    elif idx.dtype.kind not in "iu":
        raise TypeError(f"{name}: index must be integers, got dtype {idx.dtype}")
    return idx.astype(np.int64, copy=copy)


class _Index:
    """A checked index argument: its int64 host array and its bounds, found once (the op
    checks them against each input's shape)."""

    def __init__(self, index: Any, name: str):
        self.host = _host_index(index, name)

    @functools.cached_property
    def _bounds(self) -> tuple[int, int]:  # on first use: gather's primitive checks its own
        return (int(self.host.min()), int(self.host.max())) if self.host.size else (0, -1)

    @property
    def low(self) -> int:
        return self._bounds[0]

    @property
    def high(self) -> int:
        return self._bounds[1]

    def check(self, size: int, dim: int, name: str) -> None:
        if self.low < 0 or self.high >= size:
            raise IndexError(
                f"{name}: index {self.low}..{self.high} is out of range for dim {dim} of "
                f"size {size}"
            )


def _row_indices(flat: np.ndarray, rows: int, device: Any) -> nd.RowIndices:
    """Positions already known to lie in [0, rows) as nd.RowIndices, without its per-call
    check (a pass over them on the host: most of a gather's time)."""
    indices = nd.RowIndices.__new__(nd.RowIndices)
    indices.host, indices.rows = flat, rows
    indices.array = NDArray(flat, device=device, dtype=INDEX_DTYPE)
    return indices


class _Positions(TensorOp):
    """An op with a gather-style `index` (same number of axes as x) along `dim`: the flat
    positions in a compact x of shape `shape` that index picks, as nd.RowIndices."""

    name: str

    def __init__(self, dim: int, index: Any):
        self.dim = dim
        # An op's gradient passes its checked index on: checked once per index.
        self.checked = index if isinstance(index, _Index) else _Index(index, self.name)
        self.index = self.checked.host

    def positions(self, shape: tuple[int, ...], device: Any) -> nd.RowIndices:
        idx, ndim = self.index, len(shape)
        if idx.ndim != ndim:
            raise ValueError(f"index {idx.shape} needs as many dimensions as the tensor {shape}")
        dim = _dim(self.dim, max(ndim, 1), self.name) if ndim else 0
        if ndim and any(i > s for k, (i, s) in enumerate(zip(idx.shape, shape)) if k != dim):
            raise ValueError(f"index {idx.shape} is larger than {shape} outside dim {self.dim}")
        size = shape[dim] if ndim else 1
        self.checked.check(size, self.dim, self.name)
        strides = nd.compact_strides(shape)
        flat = idx * (strides[dim] if ndim else 0)
        for k in range(ndim):  # one vectorised term per axis, not per element
            if k != dim:
                along = np.arange(idx.shape[k], dtype=np.int64) * strides[k]
                flat = flat + along.reshape((-1,) + (1,) * (ndim - 1 - k))
        return _row_indices(flat.reshape(-1), max(nd.prod(shape), 1), device)


def _as_column(a: NDArray) -> NDArray:
    """a's elements as rows of one element (the row primitives' table)."""
    return a.compact().reshape((a.size, 1))


class Gather(_Positions):
    """torch.gather: out[i][j][k] = x[i][index[i][j][k]][k] for dim 1 (any dim alike); the
    adjoint is scatter_add of out_grad into zeros."""

    name = "gather"

    def __init__(self, dim: int, index: Any):
        # An int64 NumPy index is read where it is, as torch.from_numpy shares it (gather's
        # time was mostly copies of the index); _Index, for the gradient and error messages,
        # is made when first needed.
        self.dim = dim
        given = index.host if isinstance(index, _Index) else _host_index(index, self.name, False)
        self._given, self._checked = given, index if isinstance(index, _Index) else None

    @property
    def checked(self) -> _Index:  # type: ignore[override]
        if self._checked is None:
            self._checked = _Index(self._given, self.name)
        return self._checked

    @property
    def index(self) -> np.ndarray:  # type: ignore[override]
        return self.checked.host

    def compute(self, x: NDArray) -> NDArray:
        idx = self._given
        if idx.ndim != x.ndim:
            raise ValueError(f"index {idx.shape} needs as many dimensions as the tensor {x.shape}")
        # gather_axis checks the indices as it reads them: no separate pass unless one is out
        # of range, and then the op's own message (the index range, the dim and its size).
        dim = _dim(self.dim, max(x.ndim, 1), self.name) if x.ndim else 0
        if any(i > s for k, (i, s) in enumerate(zip(idx.shape, x.shape)) if k != dim):
            raise ValueError(f"index {idx.shape} is larger than {x.shape} outside dim {self.dim}")
        try:
            return nd.take_along_axis(x, idx, dim)
        except IndexError:
            self.checked.check(x.shape[dim] if x.ndim else 1, self.dim, self.name)
            raise

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        x = node.inputs[0]
        return ScatterAdd(self.dim, self.checked)(zeros_like_data(x), out_grad)


def gather(x: Tensor, dim: int, index: Any) -> Tensor:
    return Gather(dim, index)(x)


class ScatterAdd(_Positions):
    """torch.scatter_add: x with src[i][j][k] added at x[i][index[i][j][k]][k] for dim 1
    (repeats add up; src's leading block of index's shape is used). Adjoints: out_grad for x,
    its gather (zero outside that block) for src."""

    name = "scatter_add"

    def compute(self, x: NDArray, src: NDArray) -> NDArray:
        idx = self.index
        if src.ndim != idx.ndim or any(i > s for i, s in zip(idx.shape, src.shape)):
            raise ValueError(f"index {idx.shape} is larger than src {src.shape}")
        same = x.ndim == idx.ndim >= 1 and x.dtype == src.dtype
        dim = _dim(self.dim, x.ndim, self.name) if same else None
        if dim is not None and all(
            i == s for k, (i, s) in enumerate(zip(idx.shape, x.shape)) if k != dim
        ):
            # The index covers x off dim: one scatter_add_axis call, which checks the
            # indices itself (the op's message if one is out of range).
            block = src if src.shape == idx.shape else src[tuple(slice(0, i) for i in idx.shape)]
            try:
                return nd.scatter_add_along_axis(x, block, idx, dim)
            except IndexError:
                self.checked.check(x.shape[dim], self.dim, self.name)
                raise
        rows = self.positions(x.shape, x.device)
        block = src[tuple(slice(0, i) for i in idx.shape)] if idx.ndim else src
        added = nd.add_rows(_as_column(block), rows, max(x.size, 1))
        return x + added.reshape(x.shape)

    def gradient(self, out_grad: Tensor, node: Tensor) -> tuple[Tensor, Tensor]:
        src = node.inputs[1]
        picked = Gather(self.dim, self.checked)(out_grad)
        if picked.shape != src.shape:
            picked = pad(picked, tuple((0, s - i) for i, s in zip(picked.shape, src.shape)))
        return out_grad, picked


def scatter_add(x: Tensor, dim: int, index: Any, src: Tensor) -> Tensor:
    return ScatterAdd(dim, index)(x, src)


class _Slices(TensorOp):
    """An op with a 1-D `index` of positions along `dim` (index_select's): computed on x with
    dim moved first and the rest flattened, as rows for the row primitives."""

    name: str

    def __init__(self, dim: int, index: Any):
        self.dim = dim
        # An op's gradient passes its checked index on: checked once per index.
        self.checked = index if isinstance(index, _Index) else _Index(index, self.name)
        self.index = self.checked.host
        if self.index.ndim != 1:
            raise ValueError(f"{self.name}: index must be 1-D, got shape {self.index.shape}")

    def rows(self, a: NDArray) -> tuple[int, tuple[int, ...], NDArray, nd.RowIndices]:
        """dim, the permutation moving it first, a so permuted as (rows, rest), the indices."""
        if a.ndim == 0:
            raise ValueError("needs a tensor with at least one dimension")
        dim = _dim(self.dim, a.ndim, self.name)
        self.checked.check(a.shape[dim], self.dim, self.name)
        order = (dim,) + tuple(k for k in range(a.ndim) if k != dim)
        moved = a.permute(order).compact()
        table = moved.reshape((a.shape[dim], nd.prod(moved.shape[1:])))
        return dim, order, table, _row_indices(self.index, a.shape[dim], a.device)


def _unmove(rows: NDArray, order: tuple[int, ...], shape: tuple[int, ...]) -> NDArray:
    """(rows, rest) back to `shape` (with dim first, as `order` moved it) in the axis order."""
    inverse = tuple(order.index(k) for k in range(len(order)))
    return rows.reshape(tuple(shape[k] for k in order)).permute(inverse).compact()


class IndexSelect(_Slices):
    """torch.index_select: the slices at `index` along `dim`; the adjoint is their index_add
    into zeros."""

    half_native = True

    name = "index_select"

    def compute(self, x: NDArray) -> NDArray:
        dim, order, table, rows = self.rows(x)
        shape = x.shape[:dim] + (len(self.index),) + x.shape[dim + 1 :]
        return _unmove(nd.take_rows(table, rows), order, shape)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return IndexAdd(self.dim, self.checked)(zeros_like_data(node.inputs[0]), out_grad)


def index_select(x: Tensor, dim: int, index: Any) -> Tensor:
    return IndexSelect(dim, index)(x)


class IndexAdd(_Slices):
    """torch.index_add: x with source's slice i added to x's slice index[i] along `dim`
    (repeats add up). Adjoints: out_grad for x, its index_select for source."""

    name = "index_add"

    def compute(self, x: NDArray, source: NDArray) -> NDArray:
        dim, order, _, rows = self.rows(x)
        expected = x.shape[:dim] + (len(self.index),) + x.shape[dim + 1 :]
        if source.shape != expected:
            raise ValueError(f"source {source.shape} must have shape {expected}")
        moved = source.permute(order).compact()
        values = moved.reshape((len(self.index), nd.prod(moved.shape[1:])))
        return x + _unmove(nd.add_rows(values, rows, x.shape[dim]), order, x.shape)

    def gradient(self, out_grad: Tensor, node: Tensor) -> tuple[Tensor, Tensor]:
        return out_grad, IndexSelect(self.dim, self.checked)(out_grad)


def index_add(x: Tensor, dim: int, index: Any, source: Tensor) -> Tensor:
    return IndexAdd(dim, index)(x, source)


# ---- x[idx] and x[mask]: integer-array and boolean-mask indexing -----------------------------
class _RowsAt(TensorOp):
    """An op picking slices along axis `dim` at host positions (found per input shape by
    `picks`), after merging the `merged` axes from dim on into one: an index_select of the
    merged axis, reshaped. The adjoint is index_add of out_grad into zeros, reshaped back."""

    name: str
    merged = 1

    def __init__(self, dim: int = 0):
        self.dim = int(dim)

    def picks(self, shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
        """The int64 positions along the merged axis and the shape they take in the result."""
        raise NotImplementedError()

    def _layout(self, shape: tuple[int, ...]) -> tuple[tuple, tuple, np.ndarray]:
        """The input's shape with the merged axes merged, the result's shape, the positions.
        (Its IndexErrors name the op themselves: autograd describes only ValueError and
        TypeError.)"""
        end = self.dim + self.merged
        if len(shape) < end:
            raise IndexError(f"{self.name}: too many indices for a tensor of shape {shape}")
        flat, picked = self.picks(shape)
        lead, rest = shape[: self.dim], shape[end:]
        return lead + (nd.prod(shape[self.dim : end]),) + rest, lead + picked + rest, flat

    def compute(self, x: NDArray) -> NDArray:
        merged, out_shape, flat = self._layout(x.shape)
        picked = IndexSelect(self.dim, flat).compute(x.compact().reshape(merged))
        return picked.reshape(out_shape)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        x = node.inputs[0]
        merged, _, flat = self._layout(x.shape)
        rows = reshape(out_grad, merged[: self.dim] + (len(flat),) + merged[self.dim + 1 :])
        zeros = reshape(zeros_like_data(x), merged)
        return reshape(IndexAdd(self.dim, flat)(zeros, rows), x.shape)


class IndexArray(_RowsAt):
    """x[idx] for an integer array `idx` (a list, NumPy array or int64 Tensor, negative
    positions counting from the end) on axis `dim` (x[:, idx] for dim 1): the result has
    idx's shape in place of that axis, as in PyTorch. The positions are checked on the host
    once; the values are one device gather."""

    name = "index_array"

    def __init__(self, index: Any, dim: int = 0):
        super().__init__(dim)
        self.index = _host_index(index, self.name)

    def picks(self, shape):
        size, idx = shape[self.dim], self.index
        if idx.size and not (-size <= idx.min() and idx.max() < size):
            raise IndexError(
                f"{self.name}: index {int(idx.min())}..{int(idx.max())} is out of range for "
                f"dim {self.dim} of size {size} (tensor of shape {shape})"
            )
        return np.where(idx < 0, idx + size, idx).reshape(-1), idx.shape


def index_array(x: Tensor, index: Any, dim: int = 0) -> Tensor:
    """x[index] (dim 0) or x[:, index] (dim 1) for an integer array index."""
    return IndexArray(index, dim)(x)


class MaskIndex(_RowsAt):
    """x[mask] for a boolean `mask` (a NumPy array, list or bool Tensor) of the shape of x's
    axes from `dim` on (x[:, mask] for dim 1): the selected elements (or slices) in row-major
    order, as one axis, as in PyTorch. The mask's positions are found on the host with
    np.flatnonzero (a Tensor mask is read from its device once, when the op is made); the
    values are then one device gather."""

    name = "mask_index"

    def __init__(self, mask: Any, dim: int = 0):
        super().__init__(dim)
        host = mask.numpy() if isinstance(mask, (Tensor, NDArray)) else np.asarray(mask)
        if host.dtype != np.bool_:
            raise TypeError(f"{self.name}: mask must be bool, got dtype {host.dtype}")
        self.mask, self.merged = host, host.ndim
        self.flat = np.flatnonzero(host).astype(np.int64)

    def picks(self, shape):
        covered = shape[self.dim : self.dim + self.mask.ndim]
        if covered != self.mask.shape:
            raise IndexError(
                f"{self.name}: mask of shape {self.mask.shape} does not match the tensor's "
                f"shape {shape} at dims {self.dim}..{self.dim + self.mask.ndim - 1}"
            )
        return self.flat, (len(self.flat),)


def mask_index(x: Tensor, mask: Any, dim: int = 0) -> Tensor:
    """x[mask] (dim 0) or x[:, mask] (dim 1) for a boolean mask."""
    return MaskIndex(mask, dim)(x)


def _is_array_index(index: Any) -> bool:
    return isinstance(index, (Tensor, NDArray, np.ndarray, list))


def array_getitem(x: Tensor, index: Any) -> Tensor | None:
    """x[index] when index is an integer array or boolean mask, alone or after full slices
    (x[:, idx]) and before full slices (x[idx, :]); None for any other index (ints and
    slices: GetItem's)."""
    parts = index if isinstance(index, tuple) else (index,)
    arrays = [k for k, p in enumerate(parts) if _is_array_index(p)]
    if len(arrays) != 1:
        return None
    dim, full = arrays[0], slice(None)
    if any(p != full for k, p in enumerate(parts) if k != dim):
        return None
    array = parts[dim]
    kind = array.dtype if isinstance(array, (Tensor, NDArray)) else np.asarray(array).dtype
    if str(kind) == "bool":
        return MaskIndex(array, dim)(x)
    return IndexArray(array, dim)(x)


# ---- sort, argsort, topk -------------------------------------------------------------------
class _Order(TensorOp):
    """An op that orders x along `dim` (stable: ties keep their order, as torch.sort with
    stable=True; descending puts nan first, as torch does), keeping the first `k` (all with
    None). The order is found on the host: NumPy's stable argsort of a copy of x, one round
    trip of the data per call (no device has a sort primitive yet). The values are then a
    device-side gather of x, so they keep x's dtype and device and their adjoint is the
    scatter back to the same positions."""

    name: str

    def __init__(self, dim: int = -1, descending: bool = False, k: int | None = None):
        self.dim, self.descending, self.k = dim, bool(descending), k
        if k is not None and (not isinstance(k, numbers.Integral) or isinstance(k, bool)):
            raise TypeError(f"{self.name}: k must be an int, got {type(k).__name__}")

    def order(self, a: NDArray) -> np.ndarray:
        """The int64 positions along dim of the first k elements in order (x's shape but k
        along dim)."""
        dim = _dim(self.dim, max(a.ndim, 1), self.name)
        size = a.shape[dim] if a.ndim else 1
        if self.k is not None and not 0 <= self.k <= size:
            raise ValueError(f"k {self.k} is out of range for dim {self.dim} of size {size}")
        if a.ndim == 0:
            return np.zeros((), np.int64)
        host = a.numpy()
        if self.descending:  # stable descending: ascending on the reversed axis, mapped back
            reversed_order = np.argsort(np.flip(host, dim), axis=dim, kind="stable")
            idx = size - 1 - np.flip(reversed_order, dim)
        else:
            idx = np.argsort(host, axis=dim, kind="stable")
        if self.k is not None:
            idx = idx[_at(dim, slice(0, self.k))]
        return np.ascontiguousarray(idx, dtype=np.int64)


class _OrderedValues(_Order):
    def compute(self, a: NDArray) -> NDArray:
        return Gather(self.dim, self.order(a)).compute(a)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        x = node.inputs[0]  # the order again (compute keeps nothing on the op)
        index = self.order(x.realize_cached_data())
        return ScatterAdd(self.dim, index)(zeros_like_data(x), out_grad)


class Sort(_OrderedValues):
    """torch.sort's values along `dim` (stable); the adjoint goes back to the positions."""

    name = "sort"

    def __init__(self, dim: int = -1, descending: bool = False):
        super().__init__(dim, descending)


class TopK(_OrderedValues):
    """torch.topk's values: the k largest (smallest) along `dim`, in order; the adjoint goes
    back to their positions, zeros elsewhere."""

    name = "topk"

    def __init__(self, k: int, dim: int = -1, largest: bool = True):
        super().__init__(dim, largest, k)


class ArgSort(_Order):
    """torch.argsort (stable): the int64 positions that order x along `dim` (the first `k`
    only, for topk's indices). Not differentiable: a constant, as argmax."""

    name = "argsort"
    # An int64 result: autograd keeps it as a constant, with no node of this op above it.
    integer_result = True

    def compute(self, a: NDArray) -> NDArray:
        return NDArray(self.order(a), device=a.device, dtype="int64")

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return zeros_like_data(node.inputs[0])


def sort(x: Tensor, dim: int = -1, descending: bool = False) -> TensorTuple:
    """torch.sort(x, dim, descending, stable=True): (values, int64 indices). The order is found
    on the host (see _Order): the data makes one round trip there."""
    return make_tuple(Sort(dim, descending)(x), ArgSort(dim, descending)(x))


def argsort(x: Tensor, dim: int = -1, descending: bool = False) -> Tensor:
    """torch.argsort(x, dim, descending, stable=True), found on the host (see _Order)."""
    return ArgSort(dim, descending)(x)


def topk(x: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):
    """torch.topk: (values, int64 indices) of the k largest (smallest) along `dim`. They are
    always in order (torch leaves the order open with sorted=False); ties keep their order.
    Found on the host (see _Order): the data makes one round trip there."""
    del sorted  # always sorted: one of the orders torch allows
    values = TopK(k, dim, largest)(x)
    return make_tuple(values, ArgSort(dim, largest, k)(x))


# ---- einsum ------------------------------------------------------------------------------------
def _parse_einsum(equation: Any) -> tuple[list[str], str]:
    """The operands' subscripts and the output's (implicit: the letters seen once, sorted)."""
    if not isinstance(equation, str):
        raise TypeError(f"einsum: equation must be a str, got {type(equation).__name__}")
    eq = equation.replace(" ", "")
    if "..." in eq:
        raise ValueError(f"einsum: '...' is not supported (equation {equation!r})")
    lhs, arrow, out = eq.partition("->")
    inputs = lhs.split(",")
    letters = "".join(inputs)
    if not all(c.isascii() and c.isalpha() for c in letters + out) or "->" in out:
        raise ValueError(f"einsum: bad equation {equation!r}: subscripts must be letters a-zA-Z")
    if not arrow:
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if len(set(out)) != len(out) or any(c not in letters for c in out):
        raise ValueError(
            f"einsum: bad equation {equation!r}: output subscripts must be distinct letters "
            "of the operands"
        )
    return inputs, out


def _diagonal(a: NDArray, subs: str) -> tuple[NDArray, str]:
    """The diagonal over repeated letters (a strided view of the compact array): each letter
    once, in the order of first appearance."""
    unique = "".join(dict.fromkeys(subs))
    if len(unique) == len(subs):
        return a, subs
    a = a.compact()
    shape = tuple(a.shape[subs.index(c)] for c in unique)
    for c, n in zip(unique, shape):
        if any(a.shape[k] != n for k, s in enumerate(subs) if s == c):
            raise ValueError(f"subscript {c} is repeated with sizes {a.shape} in {subs!r}")
    strides = tuple(sum(a.strides[k] for k, s in enumerate(subs) if s == c) for c in unique)
    return a.as_strided(shape, strides), unique


def _sum_out(a: NDArray, subs: str, keep: str) -> tuple[NDArray, str]:
    """a summed over the letters not in `keep`."""
    axes = tuple(k for k, c in enumerate(subs) if c not in keep)
    if not axes:
        return a, subs
    return a.sum(axis=axes), "".join(c for c in subs if c in keep)


def _contract(a: NDArray, sa: str, b: NDArray, sb: str, keep: str) -> tuple[NDArray, str]:
    """a times b with the letters of both summed unless kept, as one batched matmul
    (batch, left, shared) @ (batch, shared, right)."""
    size = {**dict(zip(sa, a.shape)), **dict(zip(sb, b.shape))}
    for c in set(sa) & set(sb):
        if a.shape[sa.index(c)] != b.shape[sb.index(c)]:
            raise ValueError(
                f"subscript {c} has size {a.shape[sa.index(c)]} in one operand and "
                f"{b.shape[sb.index(c)]} in another"
            )
    batch = [c for c in sa if c in sb and c in keep]
    shared = [c for c in sa if c in sb and c not in keep]
    left, right = [c for c in sa if c not in sb], [c for c in sb if c not in sa]

    def block(x: NDArray, subs: str, groups: tuple) -> NDArray:
        moved = x.permute(tuple(subs.index(c) for g in groups for c in g)).compact()
        return moved.reshape(tuple(nd.prod(size[c] for c in g) for g in groups))

    out = block(a, sa, (batch, left, shared)) @ block(b, sb, (batch, shared, right))
    letters = batch + left + right
    return out.reshape(tuple(size[c] for c in letters)), "".join(letters)


class Einsum(TensorOp):
    """torch.einsum: operands reduced to their diagonals (repeated letters) and summed over
    letters no one else has, then contracted left to right, each pair as one batched matmul,
    and permuted to the output's order. The adjoint of an operand is an einsum of out_grad
    with the others, broadcast over the letters only it has and put on its diagonals."""

    name = "einsum"

    def __init__(self, equation: str):
        self.equation = equation
        self.inputs, self.output = _parse_einsum(equation)

    def compute(self, *arrays: NDArray) -> NDArray:
        if len(arrays) != len(self.inputs):
            raise ValueError(
                f"equation {self.equation!r} has {len(self.inputs)} operands, got {len(arrays)}"
            )
        reduced = []
        for k, (a, subs) in enumerate(zip(arrays, self.inputs)):
            if a.ndim != len(subs):
                raise ValueError(f"operand {k} has {a.ndim} dimensions, subscripts {subs!r}")
            others = "".join(s for j, s in enumerate(self.inputs) if j != k)
            reduced.append(_sum_out(*_diagonal(a, subs), self.output + others))
        acc, letters = reduced[0]
        for k in range(1, len(reduced)):
            later = self.output + "".join(self.inputs[k + 1 :])
            acc, letters = _contract(acc, letters, *reduced[k], later)
        if not self.output and not letters:
            return acc.reshape(())
        return acc.permute(tuple(letters.index(c) for c in self.output)).compact()

    def gradient(self, out_grad: Tensor, node: Tensor) -> tuple[Tensor, ...]:
        return tuple(self._adjoint(out_grad, node.inputs, k) for k in range(len(node.inputs)))

    def _adjoint(self, out_grad: Tensor, inputs: list, k: int) -> Tensor:
        subs, x = self.inputs[k], inputs[k]
        others = [j for j in range(len(inputs)) if j != k]
        seen = self.output + "".join(self.inputs[j] for j in others)
        unique = "".join(dict.fromkeys(subs))
        target = "".join(c for c in unique if c in seen)
        operands = ",".join([self.output] + [self.inputs[j] for j in others])
        g = Einsum(f"{operands}->{target}")(out_grad, *(inputs[j] for j in others))
        # Size 1 for the letters only x has and at repeats, then broadcast to x's shape.
        firsts = {subs.index(c) for c in unique}
        shape = tuple(n if p in firsts and subs[p] in target else 1 for p, n in enumerate(x.shape))
        g = broadcast_to(reshape(g, shape), x.shape)
        if len(unique) == len(subs):
            return g
        return g * Tensor.make_const(
            NDArray(_diagonal_mask(subs, x.shape), device=g.device, dtype=g.dtype)
        )


def _diagonal_mask(subs: str, shape: tuple[int, ...]) -> np.ndarray:
    """1 where the positions of each repeated letter agree, 0 elsewhere (made on the host from
    the shape only)."""
    ndim, mask = len(shape), np.ones(shape, dtype=bool)
    for p, c in enumerate(subs):
        q = subs.index(c)
        if q != p:
            at_p = np.arange(shape[p]).reshape((-1,) + (1,) * (ndim - 1 - p))
            at_q = np.arange(shape[q]).reshape((-1,) + (1,) * (ndim - 1 - q))
            mask = mask & (at_p == at_q)
    return mask.astype(np.float64)


def einsum(equation: str, *operands: Any) -> Tensor:
    """torch.einsum(equation, *operands) (operands also as one list), without '...'."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    return Einsum(equation)(*operands)


# ---- Tensor methods (PyTorch's), added here: autograd.Tensor defines none of these names ----
def _split_method(self: Tensor, split_size_or_sections: Any, dim: int = 0):
    return split_sizes(self, split_size_or_sections, dim)


_METHODS = {
    "split": _split_method,
    "chunk": chunk,
    "squeeze": squeeze,
    "unsqueeze": unsqueeze,
    "flatten": flatten,
    "expand": expand,
    "repeat": repeat,
    "tile": tile,
    "roll": roll,
    "triu": triu,
    "tril": tril,
    "gather": gather,
    "scatter_add": scatter_add,
    "index_select": index_select,
    "index_add": index_add,
    "sort": sort,
    "argsort": argsort,
    "topk": topk,
}
for _name, _fn in _METHODS.items():
    assert _name not in vars(Tensor), f"Tensor.{_name} exists already"
    setattr(Tensor, _name, _fn)
