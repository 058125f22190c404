"""The conformance cases of every primitive, generated from its row of the table.

``cases(prim, backend, dtype)`` yields the Cases of one row in one dtype: its arguments in
the table's order (NumPy data for array parameters, ``Out`` for outputs) and how closely
the backend must agree with the reference, which is the NumPy backend's own primitive or,
for an optional primitive that backend leaves to the table's fallback, an independent NumPy
definition here (``INDEPENDENT``). The elementwise families are generated from the table's
dictionaries, so a new operator is covered by its row; any other row needs a generator in
``GENERATORS`` (test_table.py fails for a row that has none).

What every family gets: sizes 0, 1, odd, around a vector (4) and a threadgroup (256) and
past one (1001, 1027; 70,001 on backends fast enough, several turns of a grid-stride loop);
NaN, infinities and signed zeros; layout primitives on contiguous, strided, negative-stride,
offset, broadcast, overlapping, 0-d, empty and 7-d to 10-d views; matmuls on each side of
every tile edge of the backends (8, 16, 64, 128); reductions on each side of their
thresholds (16, 64, 256, 1024).

Integer and bool dtypes (``INT_FAMILIES``) get data of their own, compared bitwise: values
over the whole range with the limits and their neighbours (where add, sub, mul, neg and abs
wrap around as NumPy's integers do), every pair of limits for the binary operators, scalars
at the limits, bool data and bool scalars for comparisons; the layout, memory and
rows-by-index rows run their float cases with the data made integer or bool (``fit``);
reductions get int64 sums that wrap and maxima of rows all at the minimum.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Callable, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from needle.backend_ndarray import ndarray, ndarray_backend_numpy as nb_np, primitives
from needle.conformance.calls import (
    Out,
    fit,
    int_operand,
    operand,
    row_indices,
    scalar_for,
    view_of,
    writes_each_element_once,
)

TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-14)}
EPS = {"float32": 1.2e-7, "float64": 2.3e-16, "float16": 2.0**-10, "bfloat16": 2.0**-7}


class Backend(NamedTuple):
    """A backend under test: its module and what the cases need to know of it."""

    id: str
    mod: object
    dtypes: tuple[str, ...]
    fast: bool = True
    ordered_scatter: bool = True

    @property
    def sizes(self) -> tuple[int, ...]:
        return SIZES + ((70001,) if self.fast else ())


class Case(NamedTuple):
    label: str
    args: tuple
    tol: Callable[[str], dict | None]  # dtype -> assert_allclose tolerances; None: bitwise
    # For scatter_add_rows run by an implementation that adds in no fixed order (atomics).
    unordered_tol: Callable[[str], dict] | None = None


def exact(dtype):
    return None


def elementwise(dtype):
    return TOL[dtype]


def matmul_tol(n):
    def tol(dtype):
        if dtype in primitives.HALFS:
            # Sums in float32 (in any order) rounded once: one ulp of the 16-bit result apart
            # at most. Sums kept in the 16-bit type would be ~sqrt(n) ulps off.
            return dict(rtol=EPS[dtype], atol=10 * EPS["float32"] * max(n, 1))
        return dict(rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * max(n, 1))

    return tol


def sum_tol(n):
    # NumPy's float32 pairwise sum rounds at every level; backends may accumulate in double.
    return lambda dtype: dict(rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * max(n, 1))


def axpby_tol(a, b, alpha, beta):
    """Two ulps of the larger term: a fused multiply-add rounds once less than NumPy, which
    shows where the two terms cancel."""
    scale = np.max(np.abs(alpha * a) + np.abs(beta * b), initial=0.0)
    return lambda dtype: {"rtol": 2 * EPS[dtype], "atol": 2 * EPS[dtype] * scale}


def scatter_add_tol(a, init, indices):
    """The rounding of as many additions as the most repeated index gets, each up to the
    largest partial sum in size: atomic additions come in no fixed order."""
    repeats = np.bincount(indices.astype(np.int64)).max(initial=0)
    scale = np.abs(init).max(initial=0) + repeats * np.abs(a).max(initial=0)
    return lambda dtype: {"rtol": 0, "atol": 2 * EPS[dtype] * repeats * scale}


# ---- elementwise families ---------------------------------------------------------------
SIZES = (0, 1, 3, 4, 5, 7, 255, 256, 257, 1001, 1027)
# Operators whose result is exact on every backend (no rounding): compared bitwise.
EXACT_OPS = {"neg", "abs", "sign", "relu", "maximum", "eq", "ge", "lt", "le"}
# Inputs where each operator is well defined (calls.operand kinds); others: "normal".
UNARY_DOMAIN = {
    "sign": "ties",
    "relu": "ties",
    "log": "positive",
    "sqrt": "positive",
    "rsqrt": "positive",
    "sin": "wide",
    "cos": "wide",
    "sigmoid": "wide",
}
BINARY_DOMAIN = {
    "div": ("normal", "nonzero"),
    "power": ("positive", "normal"),
    "maximum": ("ties", "ties"),
    "eq": ("ties", "ties"),
    "ge": ("ties", "ties"),
    "lt": ("ties", "ties"),
    "le": ("ties", "ties"),
}
SCALAR_VALUES = {  # op: (kind of a, values)
    "add": ("normal", [0.0, -1.5, 3]),
    "sub": ("normal", [0.0, 2.25, -7]),
    "rsub": ("normal", [0.0, 2.25, -7]),
    "mul": ("normal", [0.0, 0.1, -3]),
    "div": ("normal", [0.1, -3, 7.0]),
    "rdiv": ("nonzero", [0.0, 1, -2.5]),
    "power": ("positive", [0, 1, 2, 3, 0.5, -1.5, 0.1]),
    "maximum": ("ties", [0.0, 1, -0.5]),
    "eq": ("ties", [0.0, 1, 0.5]),
    "ge": ("ties", [0.0, 1, -0.5]),
    "lt": ("ties", [0.0, 1, -0.5]),
    "le": ("ties", [0.0, 1, -0.5]),
}
# 800: exp overflows even in float64 (sigmoid must not).
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e30, -1e30, 2.0, 800.0, -800.0])
# Special values are left out where backends may rightly differ: sin and cos of 1e30 (argument
# reduction differs between NumPy's float32 loops and libm), and power, where Metal's pow
# and NumPy's part ways on infinite exponents of negative bases (the negative-base case
# below covers what NDArray needs).
NO_SPECIAL = {"sin", "cos"}
NEGATIVE_BASES = np.array([-2.0, -1.5, -0.5, -3.0, 0.0, -0.0, 2.0])
# float32 sin/cos of |x| ~ 150 differ in the last bits between libm and CUDA's libdevice.
UNARY_TOL = {
    "sin": {"float32": dict(rtol=1e-5, atol=1e-5)},
    "cos": {"float32": dict(rtol=1e-5, atol=1e-5)},
    # float32 erf approximations are within 5e-7 of erf; gelu's x (1 + erf) scales that by
    # |x| / 2 where 1 + erf cancels (x near -5: 1e-6; torch's own gelu is off by as much).
    "gelu": {"float32": dict(rtol=1e-5, atol=2e-6)},
}


def _op(prim) -> str:
    return prim.name.split("_", 1)[1]


def _op_tol(op):
    if op in EXACT_OPS:
        return exact
    return lambda dtype: UNARY_TOL.get(op, {}).get(dtype, TOL[dtype])


def _unary(prim, backend, rng):
    op, tol = _op(prim), _op_tol(_op(prim))
    for size in backend.sizes:
        x = operand(rng, UNARY_DOMAIN.get(op, "normal"), size)
        yield Case(f"size {size}", (x, Out(size)), tol)
    if op not in NO_SPECIAL:
        yield Case("NaN, inf, signed zeros", (SPECIAL, Out(SPECIAL.size)), tol)


def _binary(prim, backend, rng):
    op, tol = _op(prim), _op_tol(_op(prim))
    ka, kb = BINARY_DOMAIN.get(op, ("normal", "normal"))
    for size in backend.sizes:
        a, b = operand(rng, ka, size), operand(rng, kb, size)
        yield Case(f"size {size}", (a, b, Out(size)), tol)
    if op not in NO_SPECIAL:
        a, b = (np.array(p) for p in zip(*itertools.product(SPECIAL, repeat=2)))
        yield Case("NaN, inf, signed zeros", (a, b, Out(a.size)), tol)
    if op == "power":
        for exponent in (2, 3, 0, -1, -2, 0.5, 7):
            b = np.full(NEGATIVE_BASES.size, exponent)
            yield Case(f"negative bases ** {exponent}", (NEGATIVE_BASES, b, Out(b.size)), tol)


def _scalar(prim, backend, rng):
    op, tol = _op(prim), _op_tol(_op(prim))
    kind, values = SCALAR_VALUES.get(op, ("normal", [0.0, -1.5, 3]))
    for size in backend.sizes:
        a = operand(rng, kind, size)
        for val in values:
            yield Case(f"size {size}, val {val}", (a, val, Out(size)), tol)
    if op not in NO_SPECIAL:
        for val in (np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0, 0.5):
            yield Case(f"NaN, inf, signed zeros, val {val}", (SPECIAL, val, Out(SPECIAL.size)), tol)
    if op == "power":
        for exponent in (2, 3, 0, -1, -2, 0.5, 7):
            yield Case(
                f"negative bases ** {exponent}",
                (NEGATIVE_BASES, exponent, Out(NEGATIVE_BASES.size)),
                tol,
            )
    # The scalar is rounded to the array's dtype first: 0.1 is float32(0.1) against a float32
    # array (eq finds it), 1e39 is inf.
    a = np.array([0.1, 0.2, 1.5, -3.0])
    for val in (0.1, 1e39):
        yield Case(f"val {val} rounded to the dtype", (a, val, Out(a.size)), tol)


FAMILIES = {"unary": _unary, "binary": _binary, "scalar": _scalar}


# ---- optional elementwise primitives ------------------------------------------------------
# (alpha, beta): the optimizers' update (1, -lr) and others, all distinct, so an
# implementation that swapped the scalars or read one operand twice fails.
AXPBY = [(1.0, -0.01), (0.9, 0.1), (-1.5, 2.25), (0.0, 3.0), (2.0, 0.0)]


def _axpby(prim, backend, rng):
    for size in (0,) + backend.sizes:
        a, b = operand(rng, "normal", size), operand(rng, "normal", size)
        for alpha, beta in AXPBY:
            yield Case(
                f"size {size}, alpha {alpha}, beta {beta}",
                (a, b, alpha, beta, Out(size)),
                axpby_tol(a, b, alpha, beta),
            )
    # 1e-46 is 0 in float32: 1e-46 * 1e38 is then 0, not the 1e-8 of a product in double.
    big, small = np.array([1e38, -3e38, 2.0]), np.array([1e-9, -2e-9, 0.5])
    rounding = lambda dtype: dict(rtol=4 * EPS[dtype], atol=0)  # noqa: E731
    yield Case("alpha rounded to the dtype", (big, small, 1e-46, 1.0, Out(3)), rounding)
    yield Case("beta rounded to the dtype", (small, big, 1.0, 1e-46, Out(3)), rounding)


# The ops NDArray sends to ewise_broadcast_binary (ndarray._VECTOR_OPS).
VECTOR_OPS = tuple(ndarray._VECTOR_OPS.values())


def _broadcast_binary(prim, backend, rng):
    shapes = [(1, 1), (3, 7), (5, 33), (20, 257)] + ([(300, 257)] if backend.fast else [])
    # Short rows that a backend may add as blocks of rows against the vector repeated (the
    # CPU's for inner < 64: whole blocks only, blocks and rows left over, one row per block).
    shapes += [(37, 16), (50, 10), (40, 3), (9, 32), (70, 1)]
    for op in VECTOR_OPS:
        kind = (
            "ties"
            if op in ("maximum", "eq", "ge", "lt", "le")
            else "nonzero"
            if op == "div"
            else "normal"
        )
        for (outer, inner), per_column, vector_first in itertools.product(
            shapes, (True, False), (False, True)
        ):
            full = operand(rng, kind, outer * inner)
            vector = operand(rng, kind, inner if per_column else outer)
            yield Case(
                f"{op} {outer}x{inner} per_column={per_column} vector_first={vector_first}",
                (op, full, vector, Out(outer * inner), outer, inner, per_column, vector_first),
                _op_tol(op),
            )


def _reference_broadcast_binary(backend):
    def broadcast_binary(op, full, vector, out, outer, inner, per_column, vector_first):
        f = full.array.reshape(outer, inner)
        v = vector.array.reshape((1, inner) if per_column else (outer, 1))
        reference = primitives.BINARY[op]
        out.array[:] = (reference(v, f) if vector_first else reference(f, v)).reshape(-1)

    return broadcast_binary


# ---- memory and layout --------------------------------------------------------------------
def _numpy_view(size, make):
    base = np.zeros(size)
    return view_of(base, make(base))


# label: (storage size, shape, strides, offset). Views from NumPy slicing, and ones it cannot
# produce (overlapping windows, mixed 0-strides), 0-d, empty, up to 10 axes, and views larger
# than a threadgroup of 256 threads.
VIEWS = {
    "contiguous": _numpy_view(24, lambda x: x.reshape(2, 3, 4)),
    "strided": _numpy_view(60, lambda x: x.reshape(6, 10)[::2, 1::3]),
    "negative strides": _numpy_view(60, lambda x: x.reshape(6, 10)[::-1, ::-2]),
    "offset": _numpy_view(30, lambda x: x[7:19].reshape(3, 4)),
    "transposed": _numpy_view(24, lambda x: x.reshape(2, 3, 4).transpose(2, 0, 1)),
    "broadcast rows": _numpy_view(4, lambda x: np.broadcast_to(x, (3, 4))),
    "broadcast columns": _numpy_view(3, lambda x: np.broadcast_to(x[:, None], (3, 5))),
    "broadcast, 300 of one": (3, (300,), (0,), 1),
    "7-d, no two axes mergeable": _numpy_view(
        432, lambda x: x.reshape(2, 3, 2, 3, 2, 3, 2).transpose(6, 5, 4, 3, 2, 1, 0)[:, ::-1]
    ),
    "10-d with size-1 axes": (
        40,
        (2, 1, 3, 1, 2, 1, 2, 1, 1, 1),
        (20, 9, 6, 4, 3, 2, 1, 7, 5, 3),
        0,
    ),
    "0-d": (9, (), (), 4),
    "empty": (4, (0, 3), (3, 1), 0),
    "one element, size-1 axes": (5, (1, 1), (5, 7), 2),
    "overlapping windows": (5, (3, 3), (1, 1), 0),
    "overlapping, 3-d": (10, (2, 3, 2), (2, 2, 1), 1),
    "mixed zero strides": (7, (2, 2, 2), (3, 0, 1), 0),
    "overlapping, negative": (11, (2, 2, 3), (2, 2, -1), 6),
    "size-1 axes with any stride": (4, (1, 4, 1), (5, 1, 7), 0),
    "transposed, past a threadgroup": (600, (20, 30), (1, 20), 0),
    "3-d, past a threadgroup": (1000, (7, 11, 13), (130, 1, 10), 5),
    "negative, past a threadgroup": (1001, (7, 11, 13), (-143, 13, 1), 858),
}


def _views(writes=False):
    for label, (size, shape, strides, offset) in VIEWS.items():
        if not writes or writes_each_element_once(shape, strides, offset):
            yield label, size, shape, strides, offset


def _to_numpy(prim, backend, rng):
    for label, size, shape, strides, offset in _views():
        yield Case(label, (np.arange(size) + 1.0, shape, strides, offset), exact)


def _from_numpy(prim, backend, rng):
    for size in (0, 1, 1001):
        yield Case(f"size {size}", (rng.standard_normal(size), Out(size)), exact)
    x = rng.standard_normal((6, 4))
    for label, src in [
        ("transposed", x.T),
        ("strided", x[::2]),
        ("reversed", x[:, ::-1]),
        ("Fortran order", np.asfortranarray(x)),
    ]:
        yield Case(f"a {label} array", (src, Out(src.size)), exact)


def _fill(prim, backend, rng):
    for size, val in itertools.product((0, 1, 7, 255, 256, 257, 1001), (0.0, -2.5, 3, 1e30)):
        yield Case(f"size {size}, val {val}", (Out(size), val), exact)


def _compact(prim, backend, rng):
    for label, size, shape, strides, offset in _views():
        n = int(np.prod(shape))
        yield Case(label, (np.arange(size) + 1.0, Out(n), shape, strides, offset), exact)


def _ewise_setitem(prim, backend, rng):
    for label, size, shape, strides, offset in _views(writes=True):
        src = -np.arange(int(np.prod(shape)), dtype=float)
        yield Case(label, (src, Out(size, np.arange(size) + 1.0), shape, strides, offset), exact)


def _scalar_setitem(prim, backend, rng):
    for label, size, shape, strides, offset in _views():
        n = int(np.prod(shape))
        yield Case(
            label, (n, -4.0, Out(size, np.arange(size) + 1.0), shape, strides, offset), exact
        )


# ---- linear algebra -----------------------------------------------------------------------
# Each side of every tile edge: 8 (tiles, SIMD-group matrices), 16 (k steps), 64 (Metal's and
# CUDA's float64 tiles), 128 (CUDA's float32 tile); products of small odd sizes; mixed shapes.
MATMUL_SHAPES = sorted(
    set(itertools.product((1, 7, 17, 65), repeat=3))
    | {(d, d, d) for d in (1, 3, 7, 8, 9, 15, 16, 17, 33, 63, 64, 65)}
    | {
        (7, 130, 9),
        (130, 7, 64),
        (64, 9, 130),
        (33, 16, 63),
        (8, 15, 1),
        (1, 130, 65),
        (129, 3, 9),
        (3, 129, 65),
    }
)
# On backends fast enough: cubes on each side of 128, and two row tiles of 128 with 33
# k-slices of 8 and ragged columns.
LARGE_MATMUL = [(127, 127, 127), (129, 129, 129), (130, 130, 130), (130, 257, 131)]


def _matmul(prim, backend, rng):
    for m, n, p in MATMUL_SHAPES + (LARGE_MATMUL if backend.fast else []):
        yield Case(
            f"{m}x{n} @ {n}x{p}",
            (rng.standard_normal(m * n), rng.standard_normal(n * p), Out(m * p), m, n, p),
            matmul_tol(n),
        )
    m, n, p = 5, 6, 7
    yield Case(
        "operands longer than the matrices",
        (rng.standard_normal(m * n + 3), rng.standard_normal(n * p + 11), Out(m * p), m, n, p),
        matmul_tol(n),
    )


BATCHED = [
    (1, 1, 1, 1),
    (1, 7, 33, 5),
    (3, 1, 9, 4),
    (4, 17, 8, 33),
    (2, 65, 20, 70),
    (2, 64, 130, 70),
    (5, 3, 4, 2),
]


def _batched_matmul(prim, backend, rng):
    for batch, m, n, p in BATCHED:
        yield Case(
            f"{batch} x {m}x{n} @ {n}x{p}",
            (
                rng.standard_normal(batch * m * n),
                rng.standard_normal(batch * n * p),
                Out(batch * m * p),
                batch,
                m,
                n,
                p,
            ),
            matmul_tol(n),
        )


def _strided_operand(rng, batch, rows, cols, form):
    """(flat storage, offset, (batch, row, col) strides) of a (batch, rows, cols) view."""
    pb = 1 if form == "broadcast" else batch
    if form == "transposed":
        return rng.standard_normal(pb * rows * cols), 0, (rows * cols, 1, rows)
    if form == "offset":  # row stride 4k + 1 and an odd offset: unaligned rows
        width = cols + 1
        return rng.standard_normal(pb * rows * width + 3), 3, (rows * width, width, 1)
    if form == "rowbroadcast":
        return rng.standard_normal(pb * cols), 0, (cols, 0, 1)
    if form == "stepped":  # every other row and column, from the second: no unit stride
        return rng.standard_normal(pb * 4 * rows * cols), 1, (4 * rows * cols, 4 * cols, 2)
    base = rng.standard_normal(pb * rows * cols)
    return base, 0, (0 if form == "broadcast" else rows * cols, cols, 1)


FORMS = ("rowmajor", "transposed", "broadcast", "offset", "rowbroadcast", "stepped")


def _matmul_strided(prim, backend, rng):
    shapes = [(2, 17, 9, 33)] + ([(2, 67, 36, 132)] if backend.fast else [])
    for (batch, m, n, p), a_form, b_form in itertools.product(shapes, FORMS, FORMS):
        a, a_off, a_str = _strided_operand(rng, batch, m, n, a_form)
        b, b_off, b_str = _strided_operand(rng, batch, n, p, b_form)
        yield Case(
            f"{batch} x {m}x{n} {a_form} @ {n}x{p} {b_form}",
            (a, b, Out(batch * m * p), batch, m, n, p, a_off, a_str, b_off, b_str),
            matmul_tol(n),
        )


def _matmul_tiled(prim, backend, rng):
    t = primitives.tile_size(backend.mod)
    for m, n, p in [(1, 1, 1), (2, 1, 3), (1, 5, 2), (4, 8, 6), (9, 8, 10)]:
        m, n, p = m * t, n * t, p * t
        yield Case(
            f"{m}x{n} @ {n}x{p} in {t}x{t} tiles",
            (rng.standard_normal(m * n), rng.standard_normal(n * p), Out(m * p), m, n, p),
            matmul_tol(n),
        )


def _reference_matmul_strided(backend):
    def view(x, shape, strides, offset):
        itemsize = x.array.itemsize
        return as_strided(x.array[offset:], shape, [s * itemsize for s in strides])

    def matmul_strided(a, b, out, batch, m, n, p, a_offset, a_strides, b_offset, b_strides):
        a_view = view(a, (batch, m, n), a_strides, a_offset)
        out.array[:] = (a_view @ view(b, (batch, n, p), b_strides, b_offset)).reshape(-1)

    return matmul_strided


def _reference_matmul_strided_wide(backend):
    strided = _reference_matmul_strided(backend)

    def matmul_strided_wide(a, b, out, **sizes_and_views):
        wide = [type(x).over(x.array.astype(np.float64)) for x in (a, b)]
        result = type(out).over(np.empty(out.array.size))
        strided(*wide, result, **sizes_and_views)
        out.array[:] = result.array

    return matmul_strided_wide


def _reference_matmul_tiled(backend):
    t = primitives.tile_size(backend.mod)

    def rows(x, r, c):  # tile-major (r/t, c/t, t, t) -> row-major (r, c)
        return x[: r * c].reshape(r // t, c // t, t, t).transpose(0, 2, 1, 3).reshape(r, c)

    def matmul_tiled(a, b, out, m, n, p):
        product = rows(a.array, m, n) @ rows(b.array, n, p)
        out.array[:] = product.reshape(m // t, t, p // t, t).transpose(0, 2, 1, 3).reshape(-1)

    return matmul_tiled


# ---- reductions ---------------------------------------------------------------------------
# Rows on each side of the backends' thresholds: 16 (CUDA: a thread per row), 64 (Metal: a
# thread per row), 256 (a threadgroup), 1024 (CUDA: a warp per row); 300 rows of few
# elements; few rows of many (a block per row, cut into chunks).
REDUCE_SIZES = (1, 2, 7, 8, 9, 16, 17, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 1024, 1025, 4097)
REDUCE_SHAPES = list(itertools.product((0, 1, 5), REDUCE_SIZES)) + [
    (300, 1),
    (300, 7),
    (300, 64),
    (40, 1100),
    (1, 9000),
    (2, 50001),
]
LARGE_REDUCE = [(300, 1100)]  # many long rows (CUDA: a warp per row past 64 rows per SM)
NAN_INF_ROWS = np.array(
    [1.0, np.nan, 3.0, np.nan, -np.inf, 2.0, -np.inf, -np.inf, np.inf, 5.0, 0.0, 1.0]
)


def _reduce_last(prim, backend, rng):
    tol = exact if prim.name.startswith("reduce_max") else None
    for outer, size in REDUCE_SHAPES + (LARGE_REDUCE if backend.fast else []):
        a = rng.standard_normal(outer * size) + 0.5
        yield Case(f"{outer} rows of {size}", (a, Out(outer), size), tol or sum_tol(size))
    for size in (3, 100):  # NaN, inf and -inf in every combination, short and long rows
        a = np.tile(NAN_INF_ROWS, size // 3 + 1)[: 4 * size]
        yield Case(f"NaN, inf, 4 rows of {size}", (a, Out(4), size), tol or elementwise)
    long = np.full(3000, -1.0)
    long[1717] = np.nan
    yield Case("one NaN in a long row", (long, Out(1), 3000), tol or elementwise)


# (outer, reduce_size, inner): inner 1 (rows), 2 and 3 (several rows of the reduced axis per
# warp), 32 and 33 (a tile edge), past a threadgroup and past a 4096-column chunk.
AXIS_SHAPES = [
    *[(0, 3, 4), (4, 1, 7), (2, 7, 1), (1, 300, 1)],  # empty, a reduced axis of 1, rows
    *[(1, 5, 3), (3, 5, 2), (1, 5000, 3)],  # inner 2 and 3
    *[(4, 100, 32), (2, 9, 33), (1, 300, 70)],  # inner 32 and 33 (a tile edge), 70
    *[(5, 2, 300), (3, 100, 257), (2, 3, 4097)],  # past a threadgroup, past a chunk
]


def _reduce_axis(prim, backend, rng):
    tol = exact if prim.name.startswith("reduce_max") else None
    for outer, size, inner in AXIS_SHAPES:
        a = rng.standard_normal(outer * size * inner) + 0.5
        yield Case(
            f"({outer}, {size}, {inner})",
            (a, Out(outer * inner), outer, size, inner),
            tol or sum_tol(size),
        )
    for inner in (1, 5, 40):
        a = rng.standard_normal(3 * 7 * inner)
        a[rng.integers(0, a.size, 4)] = np.nan
        a[rng.integers(0, a.size, 3)] = np.inf
        a[rng.integers(0, a.size, 3)] = -np.inf
        yield Case(
            f"NaN, inf, (3, 7, {inner})", (a, Out(3 * inner), 3, 7, inner), tol or elementwise
        )


# ---- rows by index ------------------------------------------------------------------------
# (table rows, n indices, row_size, how the indices are drawn): row_size 1, odd sizes (3, 7,
# 257: a row is no whole number of vectors), embedding-like rows (100, 130), out's rows on
# both sides of a threadgroup; "same" sends every index to one row, "distinct" is a
# permutation, "random" repeats some.
ROWS_CASES = [
    *[(5, 0, 3, "random"), (5, 1, 3, "random"), (1, 1, 1, "random")],  # no index, one, one row
    *[(9, 40, 1, "random"), (300, 40, 1, "random")],  # row_size 1
    *[(12, 12, 7, "distinct"), (50, 300, 7, "random"), (6, 33, 257, "same")],  # odd sizes
    *[(40, 64, 100, "random"), (50, 400, 100, "random")],  # embedding-like rows (100, 130)
    *[(60, 200, 130, "random"), (3, 500, 130, "same")],
]
LARGE_ROWS = (1000, 600, 130, "random")  # 78,000 elements: several turns of a grid-stride loop
FIRST_N = np.array([6, 0, 6, 2, 1, 3, 5], dtype=np.int64)  # only the first 4 are used


def _rows_cases(backend):
    return ROWS_CASES + ([LARGE_ROWS] if backend.fast else [])


def _gather_rows(prim, backend, rng):
    for rows, n, row_size, kind in _rows_cases(backend):
        table, indices = rng.standard_normal(rows * row_size), row_indices(rng, rows, n, kind)
        yield Case(
            f"{n} of {rows} rows of {row_size}, {kind}",
            (table, indices, Out(n * row_size), n, row_size),
            exact,
        )
    # indices longer than n, a table ending in a partial row: only the first n count
    yield Case(
        "the first n indices, whole rows",
        (rng.standard_normal(7 * 5 + 3), FIRST_N, Out(4 * 5), 4, 5),
        exact,
    )
    # Index 69,999 and its neighbours: an index that went through too few bits, or a row
    # offset computed in float, lands elsewhere.
    rows, n = 70_000, 300
    far = np.concatenate([[rows - 1, rows - 2, 65_537, 0], rng.integers(0, rows, n - 4)])
    yield Case("far rows", (rng.standard_normal(rows), far, Out(n), n, 1), exact)


def _scatter_add_rows(prim, backend, rng):
    def case(label, a, indices, init, n, row_size):
        return Case(
            label,
            (a, indices, Out(init.size, init), n, row_size),
            exact,
            scatter_add_tol(a, init, indices[:n]),
        )

    for rows, n, row_size, kind in _rows_cases(backend):
        a, indices = rng.standard_normal(n * row_size), row_indices(rng, rows, n, kind)
        # Adds onto what out holds (random, not zeros); repeated indices add up.
        yield case(
            f"{n} into {rows} rows of {row_size}, {kind}",
            a,
            indices,
            rng.standard_normal(rows * row_size),
            n,
            row_size,
        )
    yield case(
        "the first n indices and rows, whole rows",
        rng.standard_normal(6 * 5),
        FIRST_N,
        rng.standard_normal(7 * 5 + 2),
        4,
        5,
    )
    rows, n = 70_000, 300
    far = np.concatenate([[rows - 1, rows - 2, 65_537, 0], rng.integers(0, rows, n - 4)])
    yield case("far rows", rng.standard_normal(n), far, rng.standard_normal(rows), n, 1)


# (rows, cols) on each side of a vector (16 floats, 8 doubles) and of a thread's share.
SOFTMAX_SHAPES = [(0, 5), (1, 1), (3, 7), (4, 16), (5, 17), (2, 1000), (300, 33), (64, 1025)]


def _softmax_rows(prim, backend, rng):
    for (rows, cols), log in itertools.product(SOFTMAX_SHAPES, (False, True)):
        a = rng.standard_normal(rows * cols) * 4
        yield Case(
            f"{rows} rows of {cols}, log {log}", (a, Out(rows * cols), rows, cols, log), elementwise
        )
    special = np.array([[0.0, np.inf, 1.0], [np.nan, 0.0, 1.0], [-np.inf] * 3, [-np.inf, 0, 2]])
    for log in (False, True):
        yield Case(
            f"NaN and infinities, log {log}", (special.reshape(-1), Out(12), 4, 3, log), elementwise
        )


def _cross_entropy_rows(prim, backend, rng):
    def tol(dtype, cols):  # a mean of row logsumexps (the loss) and a softmax (the gradient)
        return dict(rtol=20 * EPS[dtype], atol=20 * EPS[dtype] * max(cols, 1) ** 0.5)

    for rows, cols in SOFTMAX_SHAPES:
        z = rng.standard_normal(rows * cols) * 4
        labels = rng.integers(0, cols, rows).astype(np.float64)
        yield Case(
            f"{rows} rows of {cols}",
            (z, labels, Out(1), Out(rows * cols), rows, cols, False),
            lambda dtype, c=cols: tol(dtype, c),
        )
    # Labels cut toward zero (2.9 -> 2, -0.5 -> 0) with truncate; logits far apart (a row
    # whose label's softmax underflows: its loss stays finite, ~2000).
    z = np.array([[1000.0, -1000.0, 0.0, 5.0], [-3.0, 2.0, 1000.0, 1.0], [0.5, 0.25, 0.0, -0.5]])
    labels = np.array([2.9, 0.0, -0.5])
    yield Case(
        "truncated labels, far logits",
        (z.reshape(-1), labels, Out(1), Out(12), 3, 4, True),
        lambda dtype: tol(dtype, 4),
    )


def _softmax_grad_rows(prim, backend, rng):
    for rows, cols in SOFTMAX_SHAPES:
        e = np.exp(rng.standard_normal((rows, cols)))
        s = (e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)).reshape(-1)
        g = rng.standard_normal(rows * cols)
        tol = lambda dtype, c=cols: dict(rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * c**0.5)  # noqa: E731
        yield Case(f"{rows} rows of {cols}", (s, g, Out(rows * cols), rows, cols), tol)


def _layer_norm_rows(prim, backend, rng):
    for (rows, cols), eps in itertools.product(SOFTMAX_SHAPES, (1e-5, 0.5)):
        # an offset mean, so that centring matters; a constant row (variance 0, eps alone)
        a = rng.standard_normal(rows * cols) * 3 + 2
        tol = lambda dtype, c=cols: dict(rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * c**0.5)  # noqa: E731
        yield Case(f"{rows} rows of {cols}, eps {eps}", (a, Out(rows * cols), rows, cols, eps), tol)
    yield Case("a constant row", (np.full(20, 1.5), Out(20), 2, 10, 1e-5), elementwise)


def _layer_norm_grad_rows(prim, backend, rng):
    for (rows, cols), eps in itertools.product(SOFTMAX_SHAPES, (1e-5, 0.5)):
        a = rng.standard_normal(rows * cols) * 3 + 2
        g = rng.standard_normal(rows * cols)
        tol = lambda dtype, c=cols: dict(rtol=100 * EPS[dtype], atol=100 * EPS[dtype] * c**0.5)  # noqa: E731
        yield Case(
            f"{rows} rows of {cols}, eps {eps}", (a, g, Out(rows * cols), rows, cols, eps), tol
        )


# (batch, hidden): empty, one unit, hidden across a vector (16 floats, 8 doubles), the LM's
# cell (20, 100), and one large enough to be split across threads.
LSTM_SHAPES = [(0, 5), (3, 0), (1, 1), (3, 1), (1, 7), (2, 16), (5, 17), (20, 100), (64, 257)]


def _lstm_cell(prim, backend, rng):
    """lstm_cell on gates across the activations' ranges, saturated, infinite and NaN;
    lstm_cell_grad from the activations of such gates."""
    for (batch, hidden), scale in itertools.product(LSTM_SHAPES, (3.0, 30.0)):
        n = batch * hidden
        gates, c = rng.standard_normal(4 * n) * scale, rng.standard_normal(n) * 2
        label = f"batch {batch}, hidden {hidden}, gates * {scale}"
        if prim.name == "lstm_cell":
            yield Case(label, (gates, c, Out(2 * n), Out(5 * n), batch, hidden), elementwise)
            continue
        x = gates.reshape(batch, 4, hidden)
        act = 1 / (1 + np.exp(-x))
        act[:, 2] = np.tanh(x[:, 2])
        c_new = act[:, 1] * c.reshape(batch, hidden) + act[:, 0] * act[:, 2]
        act = np.concatenate([act, np.tanh(c_new)[:, None]], axis=1).reshape(-1)
        dy = rng.standard_normal(2 * n)
        tol = lambda dtype: dict(rtol=16 * EPS[dtype], atol=16 * EPS[dtype])  # noqa: E731
        yield Case(label, (dy, act, c, Out(4 * n), Out(n), batch, hidden), tol)
    if prim.name == "lstm_cell":
        special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 100.0, -100.0, 1.0])
        gates = np.stack([np.roll(special, k) for k in range(4)]).reshape(-1)  # i, f, g, o
        yield Case("inf, NaN and zeros", (gates, np.linspace(-2, 2, 8), Out(16), Out(40), 1, 8),
                   elementwise)  # fmt: skip


# (outer, n, inner, m): inner 1 (the last axis), 3, 17; m below and above n; empty.
GATHER_AXIS_SHAPES = [(0, 4, 2, 3), (3, 1, 1, 2), (1, 7, 1, 20), (5, 9, 3, 4), (2, 300, 17, 5)]


def _gather_axis(prim, backend, rng):
    for outer, n, inner, m in GATHER_AXIS_SHAPES:
        a = rng.standard_normal(outer * n * inner)
        idx = rng.integers(0, n, outer * m * inner)
        if idx.size:
            idx[:2] = [n - 1, 0]  # both ends
        args = (a, idx, Out(outer * m * inner), outer, n, inner, m)
        yield Case(f"({outer}, {n}, {inner}) by ({outer}, {m}, {inner})", args, exact)


# (planes, h, w, kernel, stride, padding): torch's default stride (= kernel), overlapping
# windows, padding, odd sizes that leave a remainder, one window, a 1x1 kernel.
POOL_CASES = [
    (3, 4, 4, (2, 2), (2, 2), (0, 0)),
    (2, 7, 9, (3, 3), (1, 1), (1, 1)),
    (4, 9, 7, (3, 2), (2, 1), (1, 0)),
    (1, 5, 5, (5, 5), (5, 5), (2, 2)),
    (2, 3, 3, (1, 1), (1, 1), (0, 0)),
    (33, 16, 16, (2, 2), (2, 2), (0, 0)),
]


def _pool2d(prim, backend, rng):
    for (planes, h, w, k, s, p), op in itertools.product(POOL_CASES, ("max", "avg", "argmax")):
        ho, wo = primitives.pool2d_out(h, w, k, s, p)
        a = rng.standard_normal(planes * h * w)
        if op != "avg":
            a[rng.integers(0, a.size, 2)] = np.nan
        if op == "argmax":  # ties: the first maximum wins
            a = np.round(a)
        args = (a, Out(planes * ho * wo), planes, h, w, k, s, p, op)
        yield Case(f"{op} {planes}x{h}x{w}, kernel {k}, stride {s}, padding {p}", args, elementwise)


def _scatter_add_axis(prim, backend, rng):
    for outer, n, inner, m in GATHER_AXIS_SHAPES + [(2, 3, 1, 40)]:  # many repeats
        a, init = rng.standard_normal(outer * m * inner), rng.standard_normal(outer * n * inner)
        idx = rng.integers(0, n, outer * m * inner)
        if idx.size:
            idx[:2] = [n - 1, 0]
        positions = primitives.axis_positions(idx.reshape(outer, m, inner), outer, n, inner)
        yield Case(
            f"({outer}, {m}, {inner}) into ({outer}, {n}, {inner})",
            (a, idx, Out(init.size, init), outer, n, inner, m),
            exact,
            scatter_add_tol(a, init, positions),
        )


def _synchronize(prim, backend, rng):
    yield Case("returns None", (), exact)


# ---- the generators of every row ------------------------------------------------------------
# (n, height, width, c_in, kh, kw, c_out, stride, padding): windows all inside, past the
# border by up to the whole kernel, strides above the kernel (rows no window reads), 1x1 and
# 2x2 maps with padding (classes of pixels with a single tap), channels across the GEMM's
# micro-tiles (14 rows, 32 columns), depth across its 384-deep block.
CONV_SHAPES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 0),
    (2, 5, 7, 3, 3, 3, 4, 1, 1),
    (3, 5, 7, 4, 3, 2, 5, 2, 0),
    (2, 6, 5, 3, 4, 4, 2, 3, 2),
    (2, 3, 3, 2, 3, 3, 3, 1, 3),
    (1, 9, 9, 17, 5, 5, 33, 3, 2),
    (2, 7, 7, 30, 3, 3, 29, 1, 0),
    (4, 2, 2, 16, 3, 3, 40, 2, 1),
    (3, 1, 1, 50, 3, 3, 20, 1, 1),
    (2, 8, 8, 3, 7, 7, 16, 4, 3),
    (1, 4, 4, 45, 3, 3, 15, 1, 1),
]


def _conv2d(prim, backend, rng):
    for dims in CONV_SHAPES:
        n, h, w, c_in, kh, kw, c_out, stride, padding = dims
        oh, ow = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
        x, wt, y = n * h * w * c_in, kh * kw * c_in * c_out, n * oh * ow * c_out
        forward, weights = (x, wt, y), (x, y, wt)
        sizes = {
            "conv2d": forward,
            "conv2d_bias": forward,
            "conv2d_input_grad": (y, wt, x),
            "conv2d_weight_grad": weights,
            "conv2d_weight_bias_grad": weights,
        }[prim.name]
        depth = {"conv2d_input_grad": kh * kw * c_out}.get(
            prim.name, kh * kw * c_in if sizes is forward else n * oh * ow
        )
        # The outputs start as NaNs: every element must be written.
        first, second = rng.standard_normal(sizes[0]), rng.standard_normal(sizes[1])
        out = Out(sizes[2], np.full(sizes[2], np.nan))
        arrays = {
            "conv2d_bias": (first, second, rng.standard_normal(c_out), out),
            "conv2d_weight_bias_grad": (first, second, out, Out(c_out, np.full(c_out, np.nan))),
        }.get(prim.name, (first, second, out))
        yield Case(f"{dims}", (*arrays, *dims), matmul_tol(depth))


# (rows, features): one row, fewer rows than a chunk of the sums (256), several chunks with a
# ragged last one, features across a SIMD vector.
NORM_SHAPES = [(1, 3), (2, 1), (7, 5), (300, 16), (513, 33), (1030, 7)]


def _batch_norm_rows(prim, backend, rng):
    for rows, cols in NORM_SHAPES:
        x = rng.standard_normal(rows * cols) * 3 + 1.5
        w, b = rng.standard_normal(cols), rng.standard_normal(cols)
        if prim.name == "batch_norm_rows":
            outs = (Out(rows * cols), Out(cols), Out(cols))
            args = (x, w, b, *outs, rows, cols, 1e-5)
        else:
            mean, inv_std = rng.standard_normal(cols), rng.random(cols) + 0.5
            dy = rng.standard_normal(rows * cols)
            outs = (Out(rows * cols), Out(cols), Out(cols))
            args = (dy, x, mean, inv_std, w, *outs, rows, cols)
        yield Case(f"({rows}, {cols})", args, matmul_tol(4 * rows))


GENERATORS: dict[str, Callable] = {
    "to_numpy": _to_numpy,
    "from_numpy": _from_numpy,
    "fill": _fill,
    "compact": _compact,
    "ewise_setitem": _ewise_setitem,
    "scalar_setitem": _scalar_setitem,
    "ewise_axpby": _axpby,
    "ewise_broadcast_binary": _broadcast_binary,
    "matmul": _matmul,
    "batched_matmul": _batched_matmul,
    "matmul_strided": _matmul_strided,
    "matmul_strided_wide": _matmul_strided,
    "matmul_tiled": _matmul_tiled,
    "reduce_sum": _reduce_last,
    "reduce_max": _reduce_last,
    "reduce_sum_axis": _reduce_axis,
    "reduce_max_axis": _reduce_axis,
    "gather_rows": _gather_rows,
    "scatter_add_rows": _scatter_add_rows,
    "softmax_rows": _softmax_rows,
    "pool2d": _pool2d,
    "gather_axis": _gather_axis,
    "scatter_add_axis": _scatter_add_axis,
    "layer_norm_rows": _layer_norm_rows,
    "layer_norm_grad_rows": _layer_norm_grad_rows,
    "softmax_grad_rows": _softmax_grad_rows,
    "cross_entropy_rows": _cross_entropy_rows,
    "batch_norm_rows": _batch_norm_rows,
    "lstm_cell": _lstm_cell,
    "lstm_cell_grad": _lstm_cell,
    "batch_norm_rows_grad": _batch_norm_rows,
    "conv2d": _conv2d,
    "conv2d_input_grad": _conv2d,
    "conv2d_weight_grad": _conv2d,
    "conv2d_bias": _conv2d,
    "conv2d_weight_bias_grad": _conv2d,
    "synchronize": _synchronize,
}
# References for optional rows the NumPy backend leaves to the table's fallback: written
# here with NumPy directly, so the fallback is checked against something independent of it.
INDEPENDENT: dict[str, Callable] = {
    "ewise_broadcast_binary": _reference_broadcast_binary,
    "matmul_strided": _reference_matmul_strided,
    "matmul_strided_wide": _reference_matmul_strided_wide,
    "matmul_tiled": _reference_matmul_tiled,
}


# ---- integer and bool dtypes ----------------------------------------------------------------
# Integer kernels share their float twins' launch shapes, so fewer sizes (no 70,001) suffice.
INT_SIZES = (0, 1, 5, 16, 17, 257, 1027)


def int_scalars(dtype) -> list[float]:
    """Scalars as NDArray passes them for `dtype` (whole numbers in range; bool 0 and 1):
    the limits and small values. int64's largest double below 2**63 is 2**63 - 1024."""
    if dtype == "bool":
        return [0.0, 1.0]
    info = np.iinfo(dtype)
    top = float(2**63 - 1024) if dtype == "int64" else float(info.max)
    return sorted({0.0, 1.0, 2.0, float(max(info.min, -3)), top, float(info.min)})


def _edges(dtype) -> np.ndarray:
    return int_operand(np.random.default_rng(0), dtype, 8, ties=False)[:8]


def _int_elementwise(prim, backend, rng, dtype):
    group, scalars = prim.group, int_scalars(dtype)
    for i, size in enumerate(INT_SIZES):
        a = int_operand(rng, dtype, size)
        if group == "unary":
            yield Case(f"size {size}", (a, Out(size)), exact)
        elif group == "binary":
            b = np.roll(int_operand(rng, dtype, size), 3)
            b[::4] = a[::4]  # ties
            yield Case(f"size {size}", (a, b, Out(size)), exact)
        else:
            # Every scalar at 257 elements (and on the limits below), one at each other size.
            for val in scalars if size == 257 else [scalars[i % len(scalars)]]:
                yield Case(f"size {size}, val {val}", (a, val, Out(size)), exact)
    edges = _edges(dtype)
    if group == "binary":
        a, b = (np.array(p, dtype=dtype) for p in zip(*itertools.product(edges, repeat=2)))
        yield Case("every pair of limits", (a, b, Out(a.size)), exact)
    elif group == "scalar":
        for val in int_scalars(dtype):
            yield Case(f"limits, val {val}", (edges, val, Out(edges.size)), exact)


def _fit_args(prim, args, dtype) -> tuple:
    """A float case's arguments with its data (arrays, outs' initial values, scalars) made
    data of `dtype`; index arrays and sizes as they are."""
    fitted = []
    for param, arg in zip(prim.params, args):
        if param.kind in ("array", "numpy"):
            arg = fit(arg, dtype)
        elif isinstance(arg, Out) and arg.init is not None:
            arg = Out(arg.size, fit(arg.init, dtype))
        elif param.kind == "float":
            arg = scalar_for(dtype, arg)
        fitted.append(arg)
    return tuple(fitted)


def _int_fitted(prim, backend, rng, dtype):
    for case in GENERATORS[prim.name](prim, backend, rng):
        yield Case(case.label, _fit_args(prim, case.args, dtype), exact)


def _int_fill(prim, backend, rng, dtype):
    vals = int_scalars(dtype) + ([0.5, -2.5] if dtype == "bool" else [])  # bool: val != 0
    for size, val in itertools.product((0, 1, 7, 257, 1001), vals):
        yield Case(f"size {size}, val {val}", (Out(size), val), exact)


def _int_reduce_data(rng, prim, dtype, size):
    if dtype == "bool":  # sparse: short rows all false, long ones with a true somewhere
        return rng.random(size) < 0.01
    return int_operand(rng, dtype, size, ties=False)  # int64 sums wrap around


INT_REDUCE_SHAPES = [(0, 7), (5, 1), (1, 7), (5, 64), (5, 65), (1, 256), (5, 257)] + [
    (1, 1025),
    (300, 7),
    (40, 1100),
    (2, 50001),
]


def _int_reduce_last(prim, backend, rng, dtype):
    for outer, size in INT_REDUCE_SHAPES:
        a = _int_reduce_data(rng, prim, dtype, outer * size)
        yield Case(f"{outer} rows of {size}", (a, Out(outer), size), exact)
    low = _edges(dtype).min()  # a maximum that starts from 0 (or from a float -inf) fails
    for size in (3, 100, 2000):
        yield Case(
            f"rows of {size} all at the minimum", (np.full(2 * size, low), Out(2), size), exact
        )


def _int_reduce_axis(prim, backend, rng, dtype):
    for outer, size, inner in AXIS_SHAPES:
        a = _int_reduce_data(rng, prim, dtype, outer * size * inner)
        yield Case(
            f"({outer}, {size}, {inner})", (a, Out(outer * inner), outer, size, inner), exact
        )
    low = _edges(dtype).min()
    for inner in (1, 5, 40):
        yield Case(
            f"(3, 7, {inner}) all at the minimum",
            (np.full(21 * inner, low), Out(3 * inner), 3, 7, inner),
            exact,
        )


INT_FAMILIES: dict[str, Callable] = {
    "unary": _int_elementwise,
    "binary": _int_elementwise,
    "scalar": _int_elementwise,
    "fill": _int_fill,
    "reduce_sum": _int_reduce_last,
    "reduce_max": _int_reduce_last,
    "reduce_sum_axis": _int_reduce_axis,
    "reduce_max_axis": _int_reduce_axis,
}


# ---- 16-bit floats ---------------------------------------------------------------------------
def _half_fitted(prim, backend, rng, dtype):
    """The float cases with their data rounded to the 16-bit dtype: the layout, memory and
    rows-by-index rows copy it bitwise; the matmuls sum in float32 and round once."""
    for case in GENERATORS[prim.name](prim, backend, rng):
        yield Case(case.label, _fit_args(prim, case.args, dtype), case.tol)


def _astype_sources(rng, dtype) -> np.ndarray:
    """Data of `dtype` that converts into every dtype without overflow into an integer:
    for floats whole and fractional values in [-100, 250] with ties of rounding to a
    16-bit float, signed zeros (and, where the target is a float, NaN and infinities)."""
    if dtype == "bool" or dtype in primitives.INTS:
        low = 0 if dtype in ("uint8", "bool") else -100
        return (
            fit(rng.integers(low, 120, 300) / 37, dtype)
            if dtype == "bool"
            else rng.integers(low, 120, 300).astype(dtype)
        )
    ties = np.float32(1 + 2.0**-8) * np.arange(1, 9, dtype=np.float32)  # bfloat16 ties
    # just off them in float64 alone: to bfloat16 through float32 (the row's rule) they are
    # ties again, rounded once they are not
    off = np.outer(ties.astype(np.float64), [1 + 2.0**-40, 1 - 2.0**-40]).ravel()
    x = np.concatenate([rng.uniform(-100, 250, 300), ties, off, [0.0, -0.0, 0.5, -2.5, 65504.0]])
    return x.astype(primitives.numpy_dtype(dtype))


def _astype(prim, backend, rng, dtype):
    for target in backend.dtypes:
        x = _astype_sources(rng, dtype)
        if target in primitives.INTS or target == "bool":
            x = x[(x >= 0) & (x < 128)] if target in ("uint8",) else x
        yield Case(f"to {target}", (x, Out(x.size, dtype=target)), exact)
        if dtype in primitives.FLOATING and target in primitives.FLOATING:
            specials = np.array([np.nan, np.inf, -np.inf, 1e-40, -1e-30, 1e6, 3e38])
            with np.errstate(over="ignore"):  # 1e6 and 3e38 overflow float16: inf
                x = specials.astype(primitives.numpy_dtype(dtype))
            yield Case(f"specials to {target}", (x, Out(x.size, dtype=target)), exact)


def generator(prim, dtype="float32") -> Callable:
    """The case generator of one row in `dtype` (KeyError for a row without one)."""
    elementwise_row = prim.reference is not None and prim.group in FAMILIES
    if prim.name == "astype":
        return functools.partial(_astype, dtype=dtype)
    if dtype in primitives.HALFS:
        return functools.partial(_half_fitted, dtype=dtype)
    if dtype not in primitives.FLOATS:
        key = prim.group if elementwise_row else prim.name
        if key in INT_FAMILIES:
            return functools.partial(INT_FAMILIES[key], dtype=dtype)
        if prim.name not in GENERATORS:
            raise KeyError(prim.name)
        return functools.partial(_int_fitted, dtype=dtype)
    if elementwise_row:
        return FAMILIES[prim.group]
    return GENERATORS[prim.name]


def cases(prim, backend, dtype="float32") -> Iterator[Case]:
    """The cases of `prim` in `dtype` (its float cases for float32 and float64)."""
    rng = np.random.default_rng(sum(map(ord, prim.name)))
    return generator(prim, dtype)(prim, backend, rng)


def reference(prim, backend) -> Callable:
    """The definition a backend's `prim` is compared with: the NumPy backend's own
    primitive, else the independent one above."""
    own = getattr(nb_np, prim.name, None)
    return own if own is not None else INDEPENDENT[prim.name](backend)


def implementations(mod, prim) -> Iterator[tuple[str, Callable]]:
    """What runs `prim` on `mod`: its own function, and for an optional row also the table's
    fallback over its core primitives (so every fallback runs on every backend)."""
    own = getattr(mod, prim.name, None)
    if own is not None:
        yield "own", own
    if prim.fallback is not None:
        yield "fallback", lambda **kwargs: prim.fallback(mod, **kwargs)


def bad_views(mod) -> list[tuple[str, tuple]]:
    """(primitive, arguments) of `mod` whose view reaches outside a 6-element buffer (or does
    not fit the other operand): each must raise, not read or write past the buffer."""
    a, out, small = mod.Array(6, "float32"), mod.Array(6, "float32"), mod.Array(2, "float32")
    return [
        ("compact", (a, out, [7], [1], 0)),
        ("compact", (a, out, [3], [1], 4)),
        ("compact", (a, out, [3], [-1], 1)),
        ("compact", (a, out, [2, 2], [2**62, 1], 0)),
        ("compact", (a, out, [3, 2], [1], 0)),
        ("compact", (a, small, [3], [1], 0)),
        ("ewise_setitem", (a, out, [4], [2], 0)),
        ("ewise_setitem", (small, out, [3], [1], 0)),
        ("scalar_setitem", (3, 1.0, out, [3], [3], 0)),
        ("scalar_setitem", (5, 1.0, out, [3], [1], 0)),
        ("matmul_strided", (a, a, out, 1, 2, 3, 2, 1, [0, 3, 1], 0, [0, 2, 1])),
        ("matmul_strided", (a, a, out, 2, 1, 3, 2, 0, [0, 3, 1], 0, [6, 2, 1])),
        ("matmul_strided", (a, a, out, 1, 3, 2, 3, 0, [0, 2, 1], 0, [0, 3, 1])),
        ("matmul", (a, a, out, 3, 3, 3)),
    ]
