"""The primitive table: every function a backend module provides, declared once.

A backend module (``ndarray_backend_numpy``, the compiled ``ndarray_backend_cpu`` and
``ndarray_backend_cuda``, the Metal backends, the CUDA emulation) implements the *core*
primitives of this table over flat ``Array`` buffers; each *optional* primitive is a faster
or fused form of core ones, and this module holds its fallback over the core table, so a
backend that lacks it still works. NDArray, the backends' validation (``validate``), the
conformance suite (``tests/backends``), the emulators and ``docs/`` all read this table;
nothing else lists primitives.

Conventions shared by every backend:

- an ``Array(size, dtype)`` is a flat buffer of ``size`` elements with ``.size``, ``.dtype``
  and ``.ptr()``; strided views are ``shape, strides, offset`` in elements;
- ``out`` is a separate, compact Array of the right size and dtype allocated by NDArray
  (``ewise_axpby``'s ``out`` may also be ``a`` or ``b``: an in-place update);
- every index, size and view has been checked in Python before a primitive is called, and
  views passed to layout primitives are already simplified (``simplify_view``).

Adding a unary elementwise primitive is one row of ``UNARY`` below (name and NumPy
reference) plus one functor line per native backend: see ``docs/adding_a_primitive.md``.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol

import ml_dtypes
import numpy as np

# The dtypes of the table. Each row lists those it takes (``Primitive.dtypes``); NDArray
# converts operands to a dtype the row takes before calling it (``dtypes.py`` states the
# promotion rules), so a backend implements exactly its rows' dtypes. bool is one byte, 0 or 1.
FLOATS: tuple[str, ...] = ("float32", "float64")
INTS: tuple[str, ...] = ("int32", "int64", "uint8")
NUMERIC: tuple[str, ...] = FLOATS + INTS
# The 16-bit floats are stored, converted and multiplied (matmul rows); every other row
# computes them in float32: NDArray converts to float32, runs the row, rounds the result once
# (round-to-nearest-even), which is what a kernel computing in float32 registers gives. A
# backend may run some computing rows on 16-bit operands itself, with those very results: it
# lists them in its HALF_ROWS (half_rows below), and NDArray then skips the conversions.
HALFS: tuple[str, ...] = ("float16", "bfloat16")
FLOATING: tuple[str, ...] = FLOATS + HALFS  # the floating-point category (promotion, grads)
DTYPES: tuple[str, ...] = NUMERIC + ("bool",) + HALFS
COMPUTED: tuple[str, ...] = NUMERIC + ("bool",)  # the dtypes of the computing rows
MATMUL_DTYPES: tuple[str, ...] = FLOATS + HALFS  # products accumulated in float32 or wider


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a table dtype; bfloat16 is ml_dtypes' (the package JAX uses: NumPy
    has none), whose import also lets np.dtype("bfloat16") name it."""
    return np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name)


def to_numpy_dtype(x, name: str) -> np.ndarray:
    """x (what np.asarray takes) in the table dtype `name` as every backend's astype gives it:
    to bfloat16 through float32 from any other dtype, as torch and needle's CPU and CUDA do
    (float64 and integers round twice; ml_dtypes rounds them once from 0.7)."""
    x = np.asarray(x)
    if name == "bfloat16" and x.dtype not in (np.float32, ml_dtypes.bfloat16):
        with np.errstate(over="ignore"):  # beyond float32: inf, as the astype row says
            x = x.astype(np.float32)
    return x.astype(numpy_dtype(name), copy=False)


ANY_DTYPE = "any"  # a row's out_dtype when out may have any dtype the backend holds (astype)
INDEX_DTYPE = "int64"  # the dtype of an `index` parameter (gather_rows' row numbers)

# Parameter kinds: how a conformance test or an emulator marshals each argument.
#   array   an input Array          out     the output Array (written)
#   inout   an Array read and written (scatter_add_rows' out)
#   int     a Python int            float   a Python float (a scalar operand)
#   shape   a sequence of ints      str     a name          bool    a flag
#   numpy   a NumPy array (from_numpy's source)
#   index   an int64 Array of row numbers (gather_rows, scatter_add_rows)
KINDS = frozenset(
    {"array", "out", "inout", "int", "float", "shape", "str", "bool", "numpy", "index"}
)


class BackendArray(Protocol):
    """What every backend's ``Array`` class is: a flat buffer of `size` elements."""

    @property
    def size(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    def ptr(self) -> int: ...


@dataclass(frozen=True)
class Param:
    name: str
    kind: str


@dataclass(frozen=True)
class Primitive:
    """One row of the table."""

    name: str
    params: tuple[Param, ...]
    group: str  # memory, layout, binary, scalar, unary, linalg, reduce, rows, sync
    core: bool
    doc: str
    dtypes: tuple[str, ...] = DTYPES
    # The dtype of `out` when it is not the inputs' (comparisons write bool).
    out_dtype: str | None = None
    # Elementwise families: the NumPy function the reference backend applies.
    reference: Callable | None = field(default=None, compare=False, repr=False)
    # Optional primitives: fallback(mod, *args) over the core primitives of `mod`.
    fallback: Callable | None = field(default=None, compare=False, repr=False)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(self.param_names)})"


def _params(spec: str) -> tuple[Param, ...]:
    """'a:array, out:out, n:int' -> Params."""
    params = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, kind = item.split(":")
        assert kind in KINDS, (item, kind)
        params.append(Param(name, kind))
    return tuple(params)


# ---- elementwise families: one row each ---------------------------------------------------
def _sigmoid(x):
    # Split by sign so exp never overflows: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) otherwise.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


# erf in float64 (NumPy has none): W. J. Cody's rational approximations (Math. Comp. 23,
# 1969; CALERF in SPECFUN), about 1e-18 relative: erf on |x| <= 0.46875, erfc(x) e^(x^2) on
# (0.46875, 4] and the asymptotic form beyond. Each (numerator, denominator) coefficient list
# from the highest power, the denominator's leading 1 left out.
_ERF_SMALL = (
    (1.85777706184603153e-1, 3.16112374387056560e00, 1.13864154151050156e02,
     3.77485237685302021e02, 3.20937758913846947e03),
    (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
     2.84423683343917062e03),
)  # fmt: skip
_ERFC_MIDDLE = (
    (2.15311535474403846e-8, 5.64188496988670089e-1, 8.88314979438837594e00,
     6.61191906371416295e01, 2.98635138197400131e02, 8.81952221241769090e02,
     1.71204761263407058e03, 2.05107837782607147e03, 1.23033935479799725e03),
    (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
     1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
     3.43936767414372164e03, 1.23033935480374942e03),
)  # fmt: skip
_ERFC_LARGE = (
    (1.63153871373020978e-2, 3.05326634961232344e-1, 3.60344899949804439e-1,
     1.25781726111229246e-1, 1.60837851487422766e-2, 6.58749161529837803e-4),
    (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1,
     6.05183413124413191e-2, 2.33520497626869185e-3),
)  # fmt: skip


def _rational(y, coefficients):
    num, den = coefficients
    return np.polyval(num, y) / np.polyval((1.0, *den), y)


def _erf(x):
    """erf computed in float64, returned in x's dtype; NaN stays NaN, +-inf give +-1."""
    x64 = np.asarray(x, dtype=np.float64)
    y = np.abs(x64)
    with np.errstate(all="ignore"):
        small = x64 * _rational(x64 * x64, _ERF_SMALL)
        middle = _rational(y, _ERFC_MIDDLE)
        inv_sq = 1 / (y * y)
        large = (1 / math.sqrt(math.pi) - inv_sq * _rational(inv_sq, _ERFC_LARGE)) / y
        erfc = np.where(y <= 4.0, middle, large) * np.exp(-y * y)
        outer = np.copysign(1 - np.where(y < 27.0, erfc, 0.0), x64)
    return np.where(y <= 0.46875, small, np.where(np.isnan(x64), x64, outer)).astype(x.dtype)


def _gelu(x):
    """x Phi(x), Phi the normal CDF (torch's exact gelu), computed in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    return (x64 * 0.5 * (1 + _erf(x64 * math.sqrt(0.5)))).astype(x.dtype)


def _gelu_grad(x):
    """gelu's derivative Phi(x) + x phi(x), phi the normal density, computed in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        pdf = np.exp(x64 * x64 * -0.5) / math.sqrt(2 * math.pi)
        return (0.5 * (1 + _erf(x64 * math.sqrt(0.5))) + x64 * pdf).astype(x.dtype)


# ewise_<name>(a, out): out = f(a)
UNARY: dict[str, Callable] = {
    "neg": np.negative,
    "abs": np.abs,
    "sign": np.sign,
    "log": np.log,
    "exp": np.exp,
    "tanh": np.tanh,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x),
    "sin": np.sin,
    "cos": np.cos,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": _sigmoid,
    "erf": _erf,
    "gelu": _gelu,
    "gelu_grad": _gelu_grad,
}

# ewise_<name>(a, b, out): out = f(a, b); comparisons write a bool out (true is 1).
BINARY: dict[str, Callable] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "power": np.power,
    "maximum": np.maximum,
    "eq": np.equal,
    "ge": np.greater_equal,
    "lt": np.less,
    "le": np.less_equal,
}

# scalar_<name>(a, val, out): out = f(a, val), val converted to the array's dtype first
# (NDArray passes a whole number for an integer array); every binary operator, and the
# reflected forms val - a and val / a.
SCALAR: dict[str, Callable] = {
    **BINARY,
    "rsub": lambda a, v: v - a,
    "rdiv": lambda a, v: v / a,
}

COMPARISONS = frozenset({"eq", "ge", "lt", "le"})


def elementwise_dtypes(op: str) -> tuple[str, ...]:
    """The dtypes the elementwise rows of `op` (``ewise_op``/``scalar_op``) take: comparisons
    every dtype; true division, powers and the transcendental functions floating point only;
    the rest (add, sub, rsub, mul, maximum, neg, abs, sign, relu) every number type."""
    if op in COMPARISONS:
        return COMPUTED
    if op in ("div", "rdiv", "power") or (op in UNARY and op not in ("neg", "abs", "sign", "relu")):
        return FLOATS
    return NUMERIC


# ---- fallbacks of the optional primitives, over core ones --------------------------------
def _fallback_astype(mod, a, out):
    """Through the host: NumPy's astype (ml_dtypes' for bfloat16) rounds as the row says."""
    if a.size:
        host = mod.to_numpy(a, (a.size,), (1,), 0)
        mod.from_numpy(np.ascontiguousarray(to_numpy_dtype(host, out.dtype)), out)


def resolve(mod, name: str) -> Callable:
    """`mod`'s own primitive `name`, or the table's fallback bound to `mod`."""
    own = getattr(mod, name, None)
    if own is not None:
        return own
    prim = TABLE[name]
    if prim.fallback is None:
        raise MissingPrimitiveError(
            f"backend {_backend_name(mod)} lacks the core primitive {prim.signature}"
        )
    return functools.partial(prim.fallback, mod)


def _temp(mod, like, size: int):
    return mod.Array(size, like.dtype)


def _copy_run(mod, src, src_offset: int, dst, dst_offset: int, length: int, tmp) -> None:
    """dst[dst_offset : +length] = src[src_offset : +length], through a compact tmp."""
    mod.compact(src, tmp, (length,), (1,), src_offset)
    mod.ewise_setitem(tmp, dst, (length,), (1,), dst_offset)


def _fallback_axpby(mod, a, b, alpha, beta, out):
    # The same roundings as the reference: each product rounded to the dtype, then the sum.
    ta, tb = _temp(mod, out, a.size), _temp(mod, out, b.size)
    mod.scalar_mul(a, alpha, ta)
    mod.scalar_mul(b, beta, tb)
    mod.ewise_add(ta, tb, out)


def _fallback_broadcast_binary(mod, op, full, vector, out, outer, inner, per_column, vector_first):
    # The vector repeated to full size by a zero-stride compact, then the plain binary op.
    expanded = _temp(mod, full, outer * inner)
    strides = (0, 1) if per_column else (1, 0)
    mod.compact(vector, expanded, (outer, inner), strides, 0)
    binary = getattr(mod, "ewise_" + op)
    binary(*((expanded, full) if vector_first else (full, expanded)), out)


def _host_indices(mod, indices, n: int) -> np.ndarray:
    return mod.to_numpy(indices, (n,), (1,), 0)


def _fallback_gather_rows(mod, a, indices, out, n, row_size):
    tmp = _temp(mod, out, row_size)
    for i, row in enumerate(_host_indices(mod, indices, n)):
        _copy_run(mod, a, int(row) * row_size, out, i * row_size, row_size, tmp)


def _fallback_scatter_add_rows(mod, a, indices, out, n, row_size):
    # One row at a time, in index order: repeated indices add up as NumPy's np.add.at does.
    current, addend, total = (_temp(mod, out, row_size) for _ in range(3))
    for i, row in enumerate(_host_indices(mod, indices, n)):
        start = int(row) * row_size
        mod.compact(out, current, (row_size,), (1,), start)
        mod.compact(a, addend, (row_size,), (1,), i * row_size)
        mod.ewise_add(current, addend, total)
        mod.ewise_setitem(total, out, (row_size,), (1,), start)


def _fallback_reduce_axis(core: str):
    def reduce_axis(mod, a, out, outer, reduce_size, inner):
        # (outer, reduce, inner) -> (outer, inner, reduce), then the core last-axis reduction.
        moved = _temp(mod, a, outer * reduce_size * inner)
        mod.compact(a, moved, (outer, inner, reduce_size), (reduce_size * inner, 1, inner), 0)
        getattr(mod, core)(moved, out, reduce_size)

    return reduce_axis


def _fallback_batched_matmul(mod, a, b, out, batch, m, n, p):
    ta, tb, tc = _temp(mod, a, m * n), _temp(mod, b, n * p), _temp(mod, out, m * p)
    for i in range(batch):
        mod.compact(a, ta, (m * n,), (1,), i * m * n)
        mod.compact(b, tb, (n * p,), (1,), i * n * p)
        mod.matmul(ta, tb, tc, m, n, p)
        mod.ewise_setitem(tc, out, (m * p,), (1,), i * m * p)


class StridedMatmul(NamedTuple):
    """matmul_strided's parameters after its three arrays: out (batch, m, p) = a @ b, with a
    the view (batch, m, n) of strides a_strides (batch, row, col) at a_offset, b the view
    (batch, n, p) likewise."""

    batch: int
    m: int
    n: int
    p: int
    a_offset: int
    a_strides: Sequence[int]
    b_offset: int
    b_strides: Sequence[int]

    def check(self, what: str, a_size: int, b_size: int, out_size: int) -> None:
        """IndexError unless both views lie in their buffers and out holds the product."""
        batch, m, n, p = self.batch, self.m, self.n, self.p
        check_view(what, (batch, m, n), tuple(self.a_strides), self.a_offset, a_size)
        check_view(what, (batch, n, p), tuple(self.b_strides), self.b_offset, b_size)
        if batch * m * p > out_size:
            raise IndexError(f"{what}: out holds {out_size} elements, not {batch * m * p}")

    @classmethod
    def compact(cls, batch: int, m: int, n: int, p: int) -> StridedMatmul:
        """Compact row-major operands: matmul (batch 1) and batched_matmul."""
        return cls(batch, m, n, p, 0, (m * n, n, 1), 0, (n * p, p, 1))


def _fallback_matmul_strided(
    mod, a, b, out, batch, m, n, p, a_offset, a_strides, b_offset, b_strides
):
    ta, tb = _temp(mod, a, batch * m * n), _temp(mod, b, batch * n * p)
    mod.compact(a, ta, (batch, m, n), tuple(a_strides), a_offset)
    mod.compact(b, tb, (batch, n, p), tuple(b_strides), b_offset)
    if batch == 1:
        mod.matmul(ta, tb, out, m, n, p)
    else:
        resolve(mod, "batched_matmul")(ta, tb, out, batch, m, n, p)


def _fallback_matmul_strided_wide(
    mod, a, b, out, batch, m, n, p, a_offset, a_strides, b_offset, b_strides
):
    wide_a, wide_b = mod.Array(a.size, "float32"), mod.Array(b.size, "float32")
    resolve(mod, "astype")(a, wide_a)  # (exact: every 16-bit value is a float32)
    resolve(mod, "astype")(b, wide_b)
    views = (a_offset, a_strides, b_offset, b_strides)
    resolve(mod, "matmul_strided")(wide_a, wide_b, out, batch, m, n, p, *views)


TILE_SIZE = 8  # matmul_tiled's tile when a backend does not name its own (__tile_size__)


def tile_size(mod) -> int:
    return getattr(mod, "__tile_size__", TILE_SIZE)


def _fallback_matmul_tiled(mod, a, b, out, m, n, p):
    # Tile-major (rows/t, cols/t, t, t) operands are read as row-major (rows/t, t, cols/t, t)
    # views, multiplied by the core matmul and written back tile-major: the course's layout,
    # kept for compatibility, not speed.
    t = tile_size(mod)

    def row_major_view(rows, cols):
        return (rows // t, t, cols // t, t), (cols * t, t, t * t, 1)

    ta, tb, tc = _temp(mod, a, m * n), _temp(mod, b, n * p), _temp(mod, out, m * p)
    mod.compact(a, ta, *row_major_view(m, n), 0)
    mod.compact(b, tb, *row_major_view(n, p), 0)
    mod.matmul(ta, tb, tc, m, n, p)
    mod.ewise_setitem(tc, out, *row_major_view(m, p), 0)


def check_gather_indices(idx: np.ndarray, n: int, op: str = "gather") -> None:
    """IndexError naming an index of `idx` outside [0, n) (gather_axis's and
    scatter_add_axis's check)."""
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise IndexError(f"{op}: index {bad[0]} is out of range for an axis of size {n}")


def check_row_indices(idx: np.ndarray, rows: int, truncate: bool = False) -> np.ndarray:
    """`idx` as int64 after checking that it holds 1-D whole numbers in [0, rows): ValueError
    (not 1-D, not whole), TypeError (not a number) or IndexError (out of range). With
    `truncate`, as the course's ``.numpy().astype(int)``: any shape, flattened, and floats cut
    toward zero (NumPy's cast: a NaN or an infinity becomes the lowest int64 on x86, so out
    of range). nd.RowIndices and cross_entropy_rows check their indices with this."""
    if truncate:
        idx = idx.reshape(-1)
        if idx.dtype.kind not in "iu":
            with np.errstate(invalid="ignore"):  # NaN and inf: out of range, said below
                idx = idx.astype(np.int64)
    if idx.ndim != 1:
        raise ValueError(f"row indices must be 1-D, got shape {idx.shape}")
    if idx.dtype.kind == "f":
        if not np.all(np.isfinite(idx)) or np.any(idx != np.floor(idx)):
            raise ValueError("row indices must be whole numbers")
    elif idx.dtype.kind not in "iub":
        raise TypeError(f"row indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= rows):
        raise IndexError(f"row indices must lie in [0, {rows}), got {idx.min()}..{idx.max()}")
    return idx


def cross_entropy_of_rows(x: np.ndarray, labels: np.ndarray, truncate: bool):
    """cross_entropy_rows on the host: (mean loss, gradient) of the (rows, cols) logits `x`
    for `labels` (checked by check_row_indices), computed in x's dtype."""
    rows, cols = x.shape
    picked = check_row_indices(labels, cols, truncate)
    shifted = x - x.max(axis=1, keepdims=True) if cols else x
    e = np.exp(shifted)
    total = e.sum(axis=1, keepdims=True)
    at = np.arange(rows)
    loss = (
        (np.log(total[:, 0]) - shifted[at, picked]).sum(dtype=np.float64) / rows if rows else np.nan
    )
    scale = x.dtype.type(1) / x.dtype.type(max(rows, 1))
    grad = e / total * scale
    grad[at, picked] -= scale
    return x.dtype.type(loss), grad


def axis_positions(idx: np.ndarray, outer: int, n: int, inner: int) -> np.ndarray:
    """The flat positions (o n + idx[o, j, i]) inner + i of an (outer, m, inner) index."""
    o = np.arange(outer, dtype=np.int64).reshape(-1, 1, 1) * n
    return ((o + idx) * inner + np.arange(inner, dtype=np.int64)).reshape(-1)


def _fallback_cross_entropy_rows(mod, z, labels, loss, grad, rows, cols, truncate):
    # On the host, as astype's fallback: the labels are read there to be checked anyway.
    x = mod.to_numpy(z, (rows, cols), (cols, 1), 0)
    value, g = cross_entropy_of_rows(x, mod.to_numpy(labels, (rows,), (1,), 0), truncate)
    mod.from_numpy(np.array([value], dtype=x.dtype), loss)
    if g.size:
        mod.from_numpy(np.ascontiguousarray(g.reshape(-1)), grad)


def _fallback_gather_axis(mod, a, indices, out, outer, n, inner, m):
    # The flat positions o * n * inner + idx * inner + i on the host, then gather_rows of
    # one-element rows.
    count = outer * m * inner
    if count == 0:
        return
    idx = _host_indices(mod, indices, count).reshape(outer, m, inner)
    check_gather_indices(idx, n)
    positions = mod.Array(count, INDEX_DTYPE)
    mod.from_numpy(axis_positions(idx, outer, n, inner), positions)
    resolve(mod, "gather_rows")(a, positions, out, count, 1)


def _fallback_scatter_add_axis(mod, a, indices, out, outer, n, inner, m):
    # As gather_axis's: the flat positions, then scatter_add_rows of one-element rows.
    count = outer * m * inner
    if count == 0:
        return
    idx = _host_indices(mod, indices, count).reshape(outer, m, inner)
    check_gather_indices(idx, n, "scatter_add")
    positions = mod.Array(count, INDEX_DTYPE)
    mod.from_numpy(axis_positions(idx, outer, n, inner), positions)
    resolve(mod, "scatter_add_rows")(a, positions, out, count, 1)


def pool2d_out(h: int, w: int, kernel, stride, padding) -> tuple[int, int]:
    """pool2d's output plane (ho, wo)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _argmax_rows(mod, a, out, rows, cols):
    # On the host: no core primitive gives positions (NDArray uses argmax only where a
    # backend has pool2d itself, so this is the conformance suite's and emulators' path).
    host = mod.to_numpy(a, (rows, cols), (cols, 1), 0)
    mod.from_numpy(np.ascontiguousarray(host.argmax(axis=1).astype(host.dtype)), out)


def _fallback_pool2d(mod, a, out, planes, h, w, kernel, stride, padding, op):
    # The windows as a strided view of a (padded copy of) a, compacted, then the core
    # last-axis reduction over each window.
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = pool2d_out(h, w, kernel, stride, padding)
    if planes * ho * wo == 0:
        return
    hp, wp = h + 2 * ph, w + 2 * pw
    padded = a
    if ph or pw:
        padded = _temp(mod, a, planes * hp * wp)
        mod.fill(padded, 0.0 if op == "avg" else -math.inf)
        mod.ewise_setitem(a, padded, (planes, h, w), (hp * wp, wp, 1), ph * wp + pw)
    windows = _temp(mod, a, planes * ho * wo * kh * kw)
    view = (planes, ho, wo, kh, kw), (hp * wp, sh * wp, sw, wp, 1)
    mod.compact(padded, windows, *view, 0)
    if op == "argmax":
        _argmax_rows(mod, windows, out, planes * ho * wo, kh * kw)
    elif op == "max":
        mod.reduce_max(windows, out, kh * kw)
    else:
        total = _temp(mod, a, planes * ho * wo)
        mod.reduce_sum(windows, total, kh * kw)
        mod.scalar_div(total, float(kh * kw), out)


def _fallback_softmax_rows(mod, a, out, rows, cols, log):
    # The row maxima and sums repeated along each row by zero-stride compacts.
    n = rows * cols
    if n == 0:
        return
    stat, total = _temp(mod, a, rows), _temp(mod, a, rows)
    spread, shifted, e = _temp(mod, a, n), _temp(mod, a, n), _temp(mod, a, n)
    mod.reduce_max(a, stat, cols)
    mod.compact(stat, spread, (rows, cols), (1, 0), 0)
    mod.ewise_sub(a, spread, shifted)
    mod.ewise_exp(shifted, e)
    mod.reduce_sum(e, total, cols)
    if log:
        mod.ewise_log(total, stat)
    mod.compact(stat if log else total, spread, (rows, cols), (1, 0), 0)
    if log:
        mod.ewise_sub(shifted, spread, out)
    else:
        mod.ewise_div(e, spread, out)


def _fallback_softmax_grad_rows(mod, s, g, out, rows, cols):
    n = rows * cols
    if n == 0:
        return
    product, spread, diff = (_temp(mod, s, n) for _ in range(3))
    dot = _temp(mod, s, rows)
    mod.ewise_mul(g, s, product)
    mod.reduce_sum(product, dot, cols)
    mod.compact(dot, spread, (rows, cols), (1, 0), 0)
    mod.ewise_sub(g, spread, diff)
    mod.ewise_mul(s, diff, out)


def _fallback_layer_norm_rows(mod, a, out, rows, cols, eps):
    # Row means and inverse deviations repeated along each row by zero-stride compacts.
    n = rows * cols
    if n == 0:
        return
    total, mean, var, rstd = (_temp(mod, a, rows) for _ in range(4))
    spread, centred, square = (_temp(mod, a, n) for _ in range(3))

    def row_mean(x, into):
        mod.reduce_sum(x, total, cols)
        mod.scalar_div(total, float(cols), into)

    row_mean(a, mean)
    mod.compact(mean, spread, (rows, cols), (1, 0), 0)
    mod.ewise_sub(a, spread, centred)
    mod.ewise_mul(centred, centred, square)
    row_mean(square, var)
    mod.scalar_add(var, eps, mean)  # mean is free again
    mod.ewise_rsqrt(mean, rstd)
    mod.compact(rstd, spread, (rows, cols), (1, 0), 0)
    mod.ewise_mul(centred, spread, out)


def _fallback_layer_norm_grad_rows(mod, a, g, out, rows, cols, eps):
    # y = layer_norm(a) first, then rstd * (g - mean(g) - y * mean(g * y)), row statistics
    # repeated along each row by zero-stride compacts.
    n = rows * cols
    if n == 0:
        return
    y, spread, product, rstd_spread = (_temp(mod, a, n) for _ in range(4))
    total, stat, var = (_temp(mod, a, rows) for _ in range(3))
    _fallback_layer_norm_rows(mod, a, y, rows, cols, eps)

    def spread_row_mean(x, into):
        mod.reduce_sum(x, total, cols)
        mod.scalar_div(total, float(cols), stat)
        mod.compact(stat, into, (rows, cols), (1, 0), 0)

    # rstd = 1 / sqrt(var + eps) spread along the rows, var from the centred a
    spread_row_mean(a, spread)
    mod.ewise_sub(a, spread, product)
    mod.ewise_mul(product, product, rstd_spread)
    mod.reduce_sum(rstd_spread, total, cols)
    mod.scalar_div(total, float(cols), var)
    mod.scalar_add(var, eps, stat)
    mod.ewise_rsqrt(stat, var)
    mod.compact(var, rstd_spread, (rows, cols), (1, 0), 0)
    mod.ewise_mul(g, y, product)
    spread_row_mean(product, spread)
    mod.ewise_mul(y, spread, product)  # y * mean(g y)
    spread_row_mean(g, spread)
    mod.ewise_add(spread, product, y)  # mean(g) + y * mean(g y)
    mod.ewise_sub(g, y, product)
    mod.ewise_mul(rstd_spread, product, out)


def _lstm_views(batch: int, hidden: int, parts: int):
    """part k of each row of a compact (batch, parts, hidden) array: (shape, strides,
    offset(k)) of its (batch, hidden) view, simplified as the layout primitives take it."""
    return lambda k: simplify_view((batch, hidden), (parts * hidden, 1), k * hidden)


def _fallback_lstm_cell(mod, gates, c, out, act, batch, hidden):
    # Each gate compacted, activated and set into act; then the state from those.
    n = batch * hidden
    if n == 0:
        return
    in_gates, in_act = _lstm_views(batch, hidden, 4), _lstm_views(batch, hidden, 5)
    i, f, g, o, t, h, c_new = (_temp(mod, gates, n) for _ in range(7))
    for k, part in enumerate((i, f, g, o)):
        mod.compact(gates, t, *in_gates(k))
        (mod.ewise_tanh if k == 2 else mod.ewise_sigmoid)(t, part)
        mod.ewise_setitem(part, act, *in_act(k))
    mod.ewise_mul(f, c, t)
    mod.ewise_mul(i, g, h)
    mod.ewise_add(t, h, c_new)
    mod.ewise_tanh(c_new, t)
    mod.ewise_setitem(t, act, *in_act(4))
    mod.ewise_mul(o, t, h)
    mod.ewise_setitem(h, out, (n,), (1,), 0)
    mod.ewise_setitem(c_new, out, (n,), (1,), n)


def _fallback_lstm_cell_grad(mod, dy, act, c, d_gates, d_c, batch, hidden):
    # The reference's products in its order, each gate's gradient set into its part of d_gates.
    n = batch * hidden
    if n == 0:
        return
    in_act, in_grads = _lstm_views(batch, hidden, 5), _lstm_views(batch, hidden, 4)
    i, f, g, o, t = (_temp(mod, act, n) for _ in range(5))
    for k, part in enumerate((i, f, g, o, t)):
        mod.compact(act, part, *in_act(k))
    d_h, d_c_new, d_cell, x, s, u, r = (_temp(mod, act, n) for _ in range(7))
    mod.compact(dy, d_h, (n,), (1,), 0)
    mod.compact(dy, d_c_new, (n,), (1,), n)

    def derivative(a, b, k, sigmoid):  # r = a b k (1 - k), or a b (1 - k^2) for a tanh k
        mod.ewise_mul(a, b, x)
        if sigmoid:
            mod.ewise_mul(x, k, s)
            mod.scalar_rsub(k, 1.0, u)
            mod.ewise_mul(s, u, r)
        else:
            mod.ewise_mul(k, k, s)
            mod.scalar_rsub(s, 1.0, u)
            mod.ewise_mul(x, u, r)

    derivative(d_h, o, t, False)
    mod.ewise_add(d_c_new, r, d_cell)
    terms = ((d_cell, g, i, True), (d_cell, c, f, True), (d_cell, i, g, False), (d_h, t, o, True))
    for k, term in enumerate(terms):
        derivative(*term)
        mod.ewise_setitem(r, d_gates, *in_grads(k))
    mod.ewise_mul(d_cell, f, d_c)


def _conv_im2col(mod, x, n, h, w, c, kh, kw, stride, padding, transposed=False):
    """The (n oh ow, kh kw c) patch matrix of the zero-padded NHWC x (or its transpose) in a
    temporary, and (oh, ow)."""
    hp, wp = h + 2 * padding, w + 2 * padding
    oh, ow = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    padded = _temp(mod, x, n * hp * wp * c)
    mod.fill(padded, 0.0)
    if n * h * w * c:
        mod.ewise_setitem(
            x, padded, (n, h, w, c), (hp * wp * c, wp * c, c, 1), (padding * wp + padding) * c
        )
    shape = (n, oh, ow, kh, kw, c)
    strides = (hp * wp * c, stride * wp * c, stride * c, wp * c, c, 1)
    if transposed:
        shape, strides = shape[3:] + shape[:3], strides[3:] + strides[:3]
    cols = _temp(mod, x, n * oh * ow * kh * kw * c)
    mod.compact(padded, cols, shape, strides, 0)
    return cols, (oh, ow)


def _fallback_conv2d(mod, a, b, out, n, height, width, c_in, kh, kw, c_out, stride, padding):
    cols, (oh, ow) = _conv_im2col(mod, a, n, height, width, c_in, kh, kw, stride, padding)
    mod.matmul(cols, b, out, n * oh * ow, kh * kw * c_in, c_out)


def _fallback_conv2d_weight_grad(
    mod, a, b, out, n, height, width, c_in, kh, kw, c_out, stride, padding
):
    cols, (oh, ow) = _conv_im2col(mod, a, n, height, width, c_in, kh, kw, stride, padding, True)
    mod.matmul(cols, b, out, kh * kw * c_in, n * oh * ow, c_out)


def _fallback_conv2d_bias(
    mod, a, b, bias, out, n, height, width, c_in, kh, kw, c_out, stride, padding
):
    conv = _temp(mod, out, out.size)
    dims = (n, height, width, c_in, kh, kw, c_out, stride, padding)
    resolve(mod, "conv2d")(a, b, conv, *dims)
    _column_spread(mod, conv, bias, out.size // max(c_out, 1), c_out, "ewise_add", out)


def _fallback_conv2d_weight_bias_grad(
    mod, a, b, out, d_bias, n, height, width, c_in, kh, kw, c_out, stride, padding
):
    resolve(mod, "conv2d_weight_grad")(
        a, b, out, n, height, width, c_in, kh, kw, c_out, stride, padding
    )
    oh, ow = (height + 2 * padding - kh) // stride + 1, (width + 2 * padding - kw) // stride + 1
    _column_sum(mod, b, n * oh * ow, c_out, d_bias)


def _fallback_conv2d_input_grad(
    mod, a, b, out, n, height, width, c_in, kh, kw, c_out, stride, padding
):
    # The patch matrix's adjoint a @ b^T, then each tap's columns added into the padded dx.
    hp, wp, k = height + 2 * padding, width + 2 * padding, kh * kw * c_in
    oh, ow = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    m = n * oh * ow
    wt, cols = _temp(mod, b, k * c_out), _temp(mod, a, m * k)
    mod.compact(b, wt, (c_out, k), (1, c_out), 0)
    mod.matmul(a, wt, cols, m, c_out, k)
    padded = _temp(mod, a, n * hp * wp * c_in)
    mod.fill(padded, 0.0)
    size = m * c_in
    cur, piece, total = _temp(mod, a, size), _temp(mod, a, size), _temp(mod, a, size)
    view = (n, oh, ow, c_in), (hp * wp * c_in, stride * wp * c_in, stride * c_in, 1)
    for i in range(kh):
        for j in range(kw):
            if size == 0:
                break
            offset = (i * wp + j) * c_in
            mod.compact(padded, cur, *view, offset)
            mod.compact(
                cols, piece, (n, oh, ow, c_in), (oh * ow * k, ow * k, k, 1), (i * kw + j) * c_in
            )
            mod.ewise_add(cur, piece, total)
            mod.ewise_setitem(total, padded, *view, offset)
    mod.compact(
        padded,
        out,
        (n, height, width, c_in),
        (hp * wp * c_in, wp * c_in, c_in, 1),
        (padding * wp + padding) * c_in,
    )


def _column_spread(mod, a, v, rows, cols, op, out):
    """out = a (op) v repeated over the rows (v has cols elements)."""
    spread = _temp(mod, a, rows * cols)
    mod.compact(v, spread, (rows, cols), (0, 1), 0)
    getattr(mod, op)(a, spread, out)


def _column_sum(mod, a, rows, cols, out):
    """out[c] = sum over the rows of column c of the compact (rows, cols) a."""
    t = _temp(mod, a, rows * cols)
    mod.compact(a, t, (cols, rows), (1, cols), 0)
    mod.reduce_sum(t, out, rows)


def _fallback_batch_norm_rows(mod, a, weight, bias, out, mean, var, rows, cols, eps):
    n = rows * cols
    centred, square, scale = _temp(mod, a, n), _temp(mod, a, n), _temp(mod, a, cols)
    _column_sum(mod, a, rows, cols, scale)
    mod.scalar_div(scale, float(rows), mean)
    _column_spread(mod, a, mean, rows, cols, "ewise_sub", centred)
    mod.ewise_mul(centred, centred, square)
    _column_sum(mod, square, rows, cols, scale)
    mod.scalar_div(scale, float(rows), var)
    mod.scalar_add(var, eps, scale)
    mod.ewise_rsqrt(scale, scale)
    mod.ewise_mul(scale, weight, scale)
    _column_spread(mod, centred, scale, rows, cols, "ewise_mul", square)
    _column_spread(mod, square, bias, rows, cols, "ewise_add", out)


def _fallback_batch_norm_rows_grad(
    mod, dy, a, mean, inv_std, weight, dx, d_weight, d_bias, rows, cols
):
    n = rows * cols
    xhat, t, u, v = (_temp(mod, a, n) for _ in range(4))
    col = _temp(mod, a, cols)
    _column_spread(mod, a, mean, rows, cols, "ewise_sub", t)
    _column_spread(mod, t, inv_std, rows, cols, "ewise_mul", xhat)
    _column_sum(mod, dy, rows, cols, d_bias)
    mod.ewise_mul(dy, xhat, t)
    _column_sum(mod, t, rows, cols, d_weight)
    mod.scalar_div(d_bias, float(rows), col)
    _column_spread(mod, dy, col, rows, cols, "ewise_sub", u)
    mod.scalar_div(d_weight, float(rows), col)
    _column_spread(mod, xhat, col, rows, cols, "ewise_mul", v)
    mod.ewise_sub(u, v, t)
    mod.ewise_mul(weight, inv_std, col)
    _column_spread(mod, t, col, rows, cols, "ewise_mul", dx)


def _fallback_synchronize(mod):
    """A synchronous backend has nothing to wait for."""


# ---- the table ----------------------------------------------------------------------------
# Sums of integers and bools are taken in int64 (NDArray converts first), as NumPy and
# PyTorch do, so the sum rows need only the widest integer.
SUM_DTYPES: tuple[str, ...] = FLOATS + ("int64",)


def _table() -> dict[str, Primitive]:
    rows: list[Primitive] = []

    def add(name, spec, group, core, doc, **kw):
        rows.append(Primitive(name, _params(spec), group, core, doc, **kw))

    view = "shape:shape, strides:shape, offset:int"
    add(
        "to_numpy",
        "a:array, " + view,
        "memory",
        True,
        "a NumPy copy of the view of a (a compact array of the view's shape)",
    )
    add(
        "from_numpy",
        "a:numpy, out:out",
        "memory",
        True,
        "out = a, a C-contiguous NumPy array of out's dtype and size",
    )
    add("fill", "out:out, val:float", "memory", True, "every element of out = val")
    add(
        "compact",
        "a:array, out:out, " + view,
        "layout",
        True,
        "out = the view of a, row-major (any number of axes, signed strides)",
    )
    add(
        "ewise_setitem",
        "a:array, out:inout, " + view,
        "layout",
        True,
        "the view of out = a (compact, of the view's size)",
    )
    add(
        "scalar_setitem",
        "size:int, val:float, out:inout, " + view,
        "layout",
        True,
        "every element of the view of out (size elements) = val",
    )
    add(
        "astype",
        "a:array, out:out",
        "memory",
        False,
        "out = a converted to out's dtype, elementwise: to a 16-bit float rounded to nearest "
        "even (NaN stays NaN; to bfloat16 from float64 or an integer through float32, as "
        "torch), float to integer truncated toward zero (NaN and values out of "
        "the integer's range give an unspecified value, as in NumPy and torch), to bool nonzero",
        out_dtype=ANY_DTYPE,
        fallback=_fallback_astype,
    )
    # The elementwise families: one core row per entry of BINARY, SCALAR and UNARY.
    for group, prefix, ops, spec, doc in (
        ("binary", "ewise", BINARY, "a:array, b:array, out:out", "out = {}(a, b), elementwise"),
        (
            "scalar",
            "scalar",
            SCALAR,
            "a:array, val:float, out:out",
            "out = {}(a, val), val rounded to the dtype",
        ),
        ("unary", "ewise", UNARY, "a:array, out:out", "out = {}(a), elementwise"),
    ):
        for op, ref in ops.items():
            add(
                f"{prefix}_{op}",
                spec,
                group,
                True,
                doc.format(op),
                reference=ref,
                dtypes=elementwise_dtypes(op),
                out_dtype="bool" if op in COMPARISONS else None,
            )
    add(
        "ewise_axpby",
        "a:array, b:array, alpha:float, beta:float, out:out",
        "binary",
        False,
        "out = alpha * a + beta * b (scalars rounded to the dtype); out may be a or b",
        dtypes=FLOATS,
        fallback=_fallback_axpby,
    )
    add(
        "ewise_broadcast_binary",
        "op:str, full:array, vector:array, out:out, outer:int, inner:int, per_column:bool, "
        "vector_first:bool",
        "binary",
        False,
        "out = ewise_<op>(full, vector repeated): vector has `inner` elements repeated over "
        "`outer` rows (per_column) or `outer` elements each repeated `inner` times; operands "
        "swapped when vector_first (op: add, sub, mul, div or maximum)",
        dtypes=FLOATS,
        fallback=_fallback_broadcast_binary,
    )
    add(
        "matmul",
        "a:array, b:array, out:out, m:int, n:int, p:int",
        "linalg",
        True,
        "(m, n) @ (n, p) -> (m, p), compact row-major; 16-bit operands: products summed in "
        "float32, out rounded once",
        dtypes=MATMUL_DTYPES,
    )
    add(
        "batched_matmul",
        "a:array, b:array, out:out, batch:int, m:int, n:int, p:int",
        "linalg",
        False,
        "(batch, m, n) @ (batch, n, p), compact row-major",
        dtypes=MATMUL_DTYPES,
        fallback=_fallback_batched_matmul,
    )
    add(
        "matmul_strided",
        "a:array, b:array, out:out, batch:int, m:int, n:int, p:int, a_offset:int, "
        "a_strides:shape, b_offset:int, b_strides:shape",
        "linalg",
        False,
        "batched matmul of the strided views a (batch, m, n) and b (batch, n, p) with "
        "(batch, row, col) strides (>= 0) into a compact out",
        dtypes=MATMUL_DTYPES,
        fallback=_fallback_matmul_strided,
    )
    add(
        "matmul_strided_wide",
        "a:array, b:array, out:out, batch:int, m:int, n:int, p:int, a_offset:int, "
        "a_strides:shape, b_offset:int, b_strides:shape",
        "linalg",
        False,
        "matmul_strided of 16-bit a and b into a float32 out: the float32 sums, not rounded "
        "(the weight gradient of float32 master weights under autocast, without its cast)",
        dtypes=HALFS,
        out_dtype="float32",
        fallback=_fallback_matmul_strided_wide,
    )
    conv = (
        "a:array, b:array, out:out, n:int, height:int, width:int, c_in:int, kh:int, kw:int, "
        "c_out:int, stride:int, padding:int"
    )
    add(
        "conv2d",
        conv,
        "linalg",
        False,
        "out (n, oh, ow, c_out) = correlation of the NHWC a (n, height, width, c_in), zero-padded "
        "by `padding` on each side, with the weights b (kh, kw, c_in, c_out) at `stride`",
        dtypes=FLOATS,
        fallback=_fallback_conv2d,
    )
    add(
        "conv2d_input_grad",
        conv,
        "linalg",
        False,
        "out (n, height, width, c_in) = conv2d's gradient for its input: a the adjoint "
        "(n, oh, ow, c_out), b the weights",
        dtypes=FLOATS,
        fallback=_fallback_conv2d_input_grad,
    )
    add(
        "conv2d_weight_grad",
        conv,
        "linalg",
        False,
        "out (kh, kw, c_in, c_out) = conv2d's gradient for its weights: a the input, b the "
        "adjoint (n, oh, ow, c_out)",
        dtypes=FLOATS,
        fallback=_fallback_conv2d_weight_grad,
    )
    biased = conv.replace("out:out", "bias:array, out:out")
    add(
        "conv2d_bias",
        biased,
        "linalg",
        False,
        "conv2d's out, plus bias (c_out) added to each output pixel: one call where conv2d and "
        "a broadcast add were two",
        dtypes=FLOATS,
        fallback=_fallback_conv2d_bias,
    )
    add(
        "conv2d_weight_bias_grad",
        conv.replace("out:out", "out:out, d_bias:out"),
        "linalg",
        False,
        "conv2d_weight_grad's out, and the bias's gradient d_bias (c_out): the adjoint b summed "
        "over its pixels",
        dtypes=FLOATS,
        fallback=_fallback_conv2d_weight_bias_grad,
    )
    add(
        "matmul_tiled",
        "a:array, b:array, out:out, m:int, n:int, p:int",
        "linalg",
        False,
        "matmul over tile-major (rows/T, cols/T, T, T) operands, T = __tile_size__ "
        "(the course's layout)",
        dtypes=FLOATS,
        fallback=_fallback_matmul_tiled,
    )
    add(
        "reduce_sum",
        "a:array, out:out, reduce_size:int",
        "reduce",
        True,
        "out[i] = sum of a[i * reduce_size : (i + 1) * reduce_size]",
        dtypes=SUM_DTYPES,
    )
    add(
        "reduce_max",
        "a:array, out:out, reduce_size:int",
        "reduce",
        True,
        "out[i] = max of a[i * reduce_size : (i + 1) * reduce_size]",
        dtypes=COMPUTED,
    )
    add(
        "reduce_sum_axis",
        "a:array, out:out, outer:int, reduce_size:int, inner:int",
        "reduce",
        False,
        "sum over the middle axis of a compact (outer, reduce_size, inner) array",
        dtypes=SUM_DTYPES,
        fallback=_fallback_reduce_axis("reduce_sum"),
    )
    add(
        "reduce_max_axis",
        "a:array, out:out, outer:int, reduce_size:int, inner:int",
        "reduce",
        False,
        "max over the middle axis of a compact (outer, reduce_size, inner) array",
        fallback=_fallback_reduce_axis("reduce_max"),
        dtypes=COMPUTED,
    )
    add(
        "gather_rows",
        "a:array, indices:index, out:out, n:int, row_size:int",
        "rows",
        False,
        "row i of out = row indices[i] of a for i < n (indices: int64 row numbers, checked)",
        fallback=_fallback_gather_rows,
    )
    add(
        "gather_axis",
        "a:array, indices:index, out:out, outer:int, n:int, inner:int, m:int",
        "rows",
        False,
        "out[o, j, i] = a[o, indices[o, j, i], i] for compact (outer, n, inner) a and "
        "(outer, m, inner) indices and out (torch.gather along the middle axis); an index "
        "outside [0, n) raises IndexError naming it, before anything reads it",
        fallback=_fallback_gather_axis,
    )
    add(
        "scatter_add_axis",
        "a:array, indices:index, out:inout, outer:int, n:int, inner:int, m:int",
        "rows",
        False,
        "out[o, indices[o, j, i], i] += a[o, j, i] for compact (outer, m, inner) a and indices "
        "and (outer, n, inner) out, in index order (repeats add up; torch.scatter_add); an "
        "index outside [0, n) raises IndexError naming it",
        dtypes=FLOATS,
        fallback=_fallback_scatter_add_axis,
    )
    add(
        "scatter_add_rows",
        "a:array, indices:index, out:inout, n:int, row_size:int",
        "rows",
        False,
        "row indices[i] of out += row i of a, in index order (repeats add up)",
        dtypes=FLOATS,
        fallback=_fallback_scatter_add_rows,
    )
    add(
        "pool2d",
        "a:array, out:out, planes:int, h:int, w:int, kernel:shape, stride:shape, "
        "padding:shape, op:str",
        "reduce",
        False,
        "2-D pooling of compact (planes, h, w) into (planes, ho, wo): op 'max' (NaN "
        "propagating, padding -inf), 'avg' (window sum / kh kw, padding zeros) or 'argmax' "
        "(the row-major position in the padded window of the first max or NaN, as np.argmax)",
        dtypes=FLOATS,
        fallback=_fallback_pool2d,
    )
    add(
        "softmax_rows",
        "a:array, out:out, rows:int, cols:int, log:bool",
        "reduce",
        False,
        "each row of a compact (rows, cols) a: out = e / sum(e), e = exp(a - max), or with "
        "log (a - max) - log(sum(e)) (log_softmax)",
        dtypes=FLOATS,
        fallback=_fallback_softmax_rows,
    )
    add(
        "cross_entropy_rows",
        "z:array, labels:array, loss:out, grad:out, rows:int, cols:int, truncate:bool",
        "reduce",
        False,
        "softmax cross-entropy of the compact (rows, cols) logits z against labels (rows "
        "class numbers, in z's dtype; with truncate cut toward zero first): loss[0] = the "
        "mean over the rows of log(sum(exp(z - max))) + max - z[label], and grad = "
        "(softmax(z) - one_hot(labels)) / rows, its gradient. A label that is not a whole "
        "number raises ValueError, one outside [0, cols) IndexError, before anything is "
        "written (the messages of nd.RowIndices)",
        dtypes=FLOATS,
        fallback=_fallback_cross_entropy_rows,
    )
    add(
        "softmax_grad_rows",
        "s:array, g:array, out:out, rows:int, cols:int",
        "reduce",
        False,
        "each row of compact (rows, cols) s and g: out = s * (g - sum(g * s)) (softmax's "
        "adjoint, s the softmax, g its output's gradient)",
        dtypes=FLOATS,
        fallback=_fallback_softmax_grad_rows,
    )
    add(
        "layer_norm_rows",
        "a:array, out:out, rows:int, cols:int, eps:float",
        "reduce",
        False,
        "each row of a compact (rows, cols) a: out = (a - mean) / sqrt(var + eps), var the "
        "biased variance (layer_norm's normalisation)",
        dtypes=FLOATS,
        fallback=_fallback_layer_norm_rows,
    )
    add(
        "layer_norm_grad_rows",
        "a:array, g:array, out:out, rows:int, cols:int, eps:float",
        "reduce",
        False,
        "each row of compact (rows, cols) a and g: out = rstd * (g - mean(g) - y * mean(g * y)) "
        "with y = layer_norm_rows(a) and rstd = 1 / sqrt(var + eps) (its adjoint)",
        dtypes=FLOATS,
        fallback=_fallback_layer_norm_grad_rows,
    )
    add(
        "lstm_cell",
        "gates:array, c:array, out:out, act:out, batch:int, hidden:int",
        "rows",
        False,
        "an LSTM cell's state from compact gate pre-activations (batch, 4 * hidden), gates i, "
        "f, g, o, and c (batch, hidden): out = (h', c') as (2, batch, hidden), c' = sigmoid(f) "
        "c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c'); act = (sigmoid(i), sigmoid(f), "
        "tanh(g), sigmoid(o), tanh(c')) as (batch, 5, hidden), what lstm_cell_grad reads",
        dtypes=FLOATS,
        fallback=_fallback_lstm_cell,
    )
    add(
        "lstm_cell_grad",
        "dy:array, act:array, c:array, d_gates:out, d_c:out, batch:int, hidden:int",
        "rows",
        False,
        "lstm_cell's adjoint for dy = (d_h', d_c') (2, batch, hidden), from its act and c: "
        "d_gates (batch, 4 * hidden) and d_c (batch, hidden)",
        dtypes=FLOATS,
        fallback=_fallback_lstm_cell_grad,
    )
    add(
        "batch_norm_rows",
        "a:array, weight:array, bias:array, out:out, mean:out, var:out, rows:int, cols:int, "
        "eps:float",
        "reduce",
        False,
        "each column of a compact (rows, cols) a over the rows: out = (a - mean) / sqrt(var + "
        "eps) * weight + bias, and its mean and biased var (batch_norm's forward)",
        dtypes=FLOATS,
        fallback=_fallback_batch_norm_rows,
    )
    add(
        "batch_norm_rows_grad",
        "dy:array, a:array, mean:array, inv_std:array, weight:array, dx:out, d_weight:out, "
        "d_bias:out, rows:int, cols:int",
        "reduce",
        False,
        "batch_norm_rows's gradient: d_bias = column sums of dy, d_weight = of dy * xhat, dx = "
        "weight * inv_std * (dy - d_bias / rows - xhat * d_weight / rows), xhat = (a - mean) * "
        "inv_std",
        dtypes=FLOATS,
        fallback=_fallback_batch_norm_rows_grad,
    )
    add(
        "synchronize",
        "",
        "sync",
        False,
        "wait for every queued kernel (asynchronous devices)",
        fallback=_fallback_synchronize,
    )
    return {p.name: p for p in rows}


TABLE: dict[str, Primitive] = _table()
CORE: frozenset[str] = frozenset(n for n, p in TABLE.items() if p.core)
OPTIONAL: frozenset[str] = frozenset(n for n, p in TABLE.items() if not p.core)
GROUPS: tuple[str, ...] = (
    "memory",
    "layout",
    "binary",
    "scalar",
    "unary",
    "linalg",
    "reduce",
    "rows",
    "sync",
)


def family(group: str) -> Iterator[Primitive]:
    """The rows of one group, in table order."""
    return (p for p in TABLE.values() if p.group == group)


# ---- validation ---------------------------------------------------------------------------
class MissingPrimitiveError(RuntimeError):
    """A backend module lacks a core primitive of the table."""


def _backend_name(mod) -> str:
    return (
        f"'{getattr(mod, '__device_name__', '?')}' ({getattr(mod, '__name__', type(mod).__name__)})"
    )


def validate(mod) -> frozenset[str]:
    """Check `mod` against the table; return the optional primitives it implements itself.

    Raises MissingPrimitiveError naming the backend and every core primitive it lacks.
    """
    missing = sorted(n for n in CORE if not callable(getattr(mod, n, None)))
    if not callable(getattr(mod, "Array", None)):
        missing.insert(0, "Array(size, dtype)")
    if missing:
        listed = ", ".join(TABLE[n].signature if n in TABLE else n for n in missing)
        raise MissingPrimitiveError(
            f"backend {_backend_name(mod)} does not implement the core primitive"
            f"{'s' if len(missing) > 1 else ''} {listed}"
        )
    return frozenset(n for n in OPTIONAL if callable(getattr(mod, n, None)))


# Rows whose per-feature arrays stay float32 when a backend computes them on 16-bit data, as
# torch's norms keep their weights and statistics; every other array of those calls is 16-bit.
# A conv's weight gradient is its float32 sums, unrounded: the gradient of float32 master
# weights under autocast (as matmul_strided_wide's for Linear), with no cast back.
HALF_ROW_FLOAT32_PARAMS: dict[str, tuple[str, ...]] = {
    "batch_norm_rows": ("weight", "bias", "mean", "var"),
    "batch_norm_rows_grad": ("mean", "inv_std", "weight", "d_weight", "d_bias"),
    "conv2d_bias": ("bias",),  # (a float32 parameter: neither cast nor rounded before the add)
    "conv2d_weight_grad": ("out",),
    "conv2d_weight_bias_grad": ("out", "d_bias"),
}


def half_rows(mod) -> frozenset[str]:
    """The computing rows `mod` also runs on the 16-bit floats itself (its ``HALF_ROWS``):
    every array operand and out of one dtype of HALFS (a comparison's out stays bool), each
    element computed in float32 registers and rounded once: what NDArray's conversion gives
    (astype to float32, the float32 row, astype back), bit for bit for elementwise rows and
    reductions; rows that sum products (conv) may sum them in another order, as the matmul
    rows do (bfloat16 pairs on AVX512-BF16); the norms' per-feature arrays stay float32
    (HALF_ROW_FLOAT32_PARAMS). NDArray calls these
    rows with 16-bit arrays and gives every other row float32 copies. A name that is not a
    float row of the table is a ValueError naming the backend."""
    rows = frozenset(getattr(mod, "HALF_ROWS", ()))
    bad = sorted(n for n in rows if n not in TABLE or "float32" not in TABLE[n].dtypes)
    if bad:
        raise ValueError(
            f"backend {_backend_name(mod)} lists HALF_ROWS {bad}: not rows of the table that "
            "compute float32"
        )
    return rows


def backend_dtypes(mod) -> tuple[str, ...]:
    """The dtypes a backend module holds (its DTYPES, else the table's)."""
    return tuple(getattr(mod, "DTYPES", DTYPES))


class UnsupportedDtypeError(TypeError):
    """A dtype that a device cannot hold (float64 on Metal and WebGPU)."""


def held_dtype(device: str, dtype, dtypes, why_no_float64: str) -> str:
    """The name of `dtype` if a Python backend's device holds it (one of `dtypes`);
    UnsupportedDtypeError for float64 on a device without it (saying `why_no_float64`), else
    ValueError. The Metal and WebGPU Arrays check their dtype with it."""
    if isinstance(dtype, str) and dtype in dtypes:  # NDArray passes names
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name in dtypes and dtype != "":
        return name
    if name == "float64" and dtype != "":
        raise UnsupportedDtypeError(
            f"{device}() does not support float64: {why_no_float64}; use float32"
        )
    raise ValueError(f"{device}(): unsupported dtype {dtype!r} ({', '.join(dtypes)})")


def layout_view(device: str, kernel: str, source, out, shape, strides, offset):
    """The view of compact, ewise_setitem or scalar_setitem (`kernel`) checked and simplified
    for a Python backend's layout kernels: IndexError unless it lies in the array it is a
    view of, ValueError unless the compactly read or written array holds it. Returns (size,
    shape, strides, offset) with the fewest axes (at least one), or None for an empty view."""
    shape = tuple(operator.index(d) for d in shape)
    strides = tuple(operator.index(s) for s in strides)
    offset = operator.index(offset)
    viewed = source if kernel == "compact" else out  # the array the view is of
    check_view(device, shape, strides, offset, viewed.size)
    size = math.prod(shape)
    # The array read or written compactly (scalar_setitem's source is a number).
    compact_side = {"compact": out, "ewise_setitem": source}.get(kernel)
    if compact_side is not None and compact_side.size < size:
        raise ValueError(
            f"{device}: {kernel} of a {size}-element view with a {compact_side.size}-element array"
        )
    if size == 0:
        return None
    # NDArray passes simplified views; a view of any other form (0-d, size-1 axes) is
    # simplified here, so the kernels always see at least one axis.
    return (size, *simplify_view(shape, strides, offset))


def dtype_checked(prim: Primitive, impl: Callable, device: str, dtypes) -> Callable:
    """`impl` behind the dtype rules of its row, for backends written in Python (Metal,
    WebGPU): a TypeError naming the primitive and the dtype unless its first Array
    (from_numpy: out) has a dtype the row takes and the device holds (`dtypes`), the other
    Arrays share it (out: the row's out_dtype, bool for comparisons) and `index` Arrays are
    int64. Checked once per call, before anything is encoded."""
    names = prim.param_names
    kinds = [p.kind for p in prim.params]
    arrays = [i for i, k in enumerate(kinds) if k in ("array", "numpy", "out", "inout", "index")]
    main = next(i for i in arrays if kinds[i] not in ("index", "numpy"))
    takes = frozenset(d for d in prim.dtypes if d in dtypes)
    # (position, the dtype it must have: None for the main one's)
    checks = [
        (
            i,
            INDEX_DTYPE
            if kinds[i] == "index"
            else prim.out_dtype
            if kinds[i] == "out" and prim.out_dtype
            else None,
        )
        for i in arrays
    ]
    count = len(names)

    def primitive(*args, **kwargs):
        if kwargs:  # by keyword (the conformance suite calls so): the table's order
            if len(args) + len(kwargs) != count or not set(kwargs) <= set(names[len(args) :]):
                raise TypeError(f"{device}: {prim.signature} called with {args}, {kwargs}")
            args = (*args, *(kwargs[n] for n in names[len(args) :]))
        dtype = args[main].dtype
        if dtype not in takes:
            raise TypeError(
                f"{device}: {prim.name} does not take dtype {dtype} "
                f"(it takes {', '.join(sorted(takes))})"
            )
        for i, want in checks:
            got = args[i].dtype  # an Array's name, or a NumPy dtype (equal to its name)
            if want == ANY_DTYPE and got in dtypes:
                continue
            if got != (want or dtype):
                raise TypeError(
                    f"{device}: {prim.name}: {names[i]} is {getattr(got, 'name', got)}, "
                    f"not {want or dtype}"
                )
        return impl(*args)

    primitive.__name__ = primitive.__qualname__ = prim.name
    primitive.__doc__ = getattr(impl, "__doc__", None) or prim.doc
    return primitive


# ---- views --------------------------------------------------------------------------------
def simplify_view(
    shape: Sequence[int], strides: Sequence[int], offset: int
) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """The same memory walk with fewer axes: size-1 axes dropped and axes merged wherever the
    outer stride is the inner one times the inner size. (4, 5, 6) with strides (30, 6, 1)
    becomes (120,), (1,); a view of one element becomes (1,), (1,). Done once, here, so every
    backend's layout kernels see the fewest axes (fewer divisions per element)."""
    if 0 in shape:
        return (0,), (1,), offset
    merged_shape: list[int] = []
    merged_strides: list[int] = []
    for dim, stride in zip(shape, strides):
        if dim == 1:
            continue
        if merged_shape and merged_strides[-1] == stride * dim:
            merged_shape[-1] *= dim
            merged_strides[-1] = stride
        else:
            merged_shape.append(dim)
            merged_strides.append(stride)
    if not merged_shape:
        return (1,), (1,), offset
    return tuple(merged_shape), tuple(merged_strides), offset


def check_view(what: str, shape, strides, offset: int, size: int) -> None:
    """Raise IndexError unless every element of the view lies in a buffer of `size` elements
    (ValueError when shape and strides differ in length): NDArray checks every view it is
    given, and the Python backends check the views their layout primitives receive, so no
    view reaches outside its buffer whoever calls them."""
    if len(shape) != len(strides):
        raise ValueError(f"{what}: shape {shape} and strides {strides} differ in length")
    if math.prod(shape):
        low = offset + sum(s * (d - 1) for d, s in zip(shape, strides) if s < 0)
        high = offset + sum(s * (d - 1) for d, s in zip(shape, strides) if s > 0)
        if low < 0 or high >= size:
            raise IndexError(
                f"{what}: view of shape {tuple(shape)}, strides {tuple(strides)}, offset "
                f"{offset} reaches outside a buffer of {size} elements"
            )


def check_size(what: str, size: int, shape) -> None:
    """ValueError unless `size` is the number of elements of `shape` (scalar_setitem's)."""
    if size != math.prod(shape):
        raise ValueError(f"{what}: size {size} for a view of shape {tuple(shape)}")


# ---- docs ---------------------------------------------------------------------------------
def markdown_table() -> str:
    """The table as Markdown (docs/primitives.md is this text, checked by a test)."""
    lines = ["| primitive | group | core | dtypes | meaning |", "|---|---|---|---|---|"]
    for p in TABLE.values():
        lines.append(
            f"| `{p.signature}` | {p.group} | {'core' if p.core else 'optional'} | "
            f"{', '.join(p.dtypes)} | {p.doc} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m needle.backend_ndarray.primitives > docs/primitives.md
    print(
        "# The primitive table\n\nGenerated from `python/needle/backend_ndarray/primitives.py`"
        " by `python -m needle.backend_ndarray.primitives`.\n"
    )
    print(markdown_table(), end="")
