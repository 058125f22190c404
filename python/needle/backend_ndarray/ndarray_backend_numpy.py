"""NumPy reference backend: the executable specification of the primitive table.

Every other backend implements exactly these functions with the same meaning and is
tested against this module primitive by primitive. Clarity over speed.

Conventions shared by all backends:
- an ``Array`` is a flat buffer of ``size`` elements of one dtype ("float32" or "float64");
- ``shape``/``strides``/``offset`` describe a strided view, strides and offset in elements;
- ``out`` is a separate, compact Array of the right size and dtype, allocated by NDArray,
  except in ``ewise_axpby``, whose ``out`` may also be ``a`` or ``b`` itself (an in-place
  update); every bound has been checked in Python before a primitive is called.
"""

import numpy as np

__device_name__ = "cpu_numpy"
__tile_size__ = 8

DTYPES = ("float32", "float64")


class Array:
    """A flat buffer of `size` elements."""

    def __init__(self, size: int, dtype: str = "float32"):
        self.array = np.empty(size, dtype=dtype)

    @property
    def size(self) -> int:
        return self.array.size

    @property
    def dtype(self) -> str:
        return self.array.dtype.name

    def ptr(self) -> int:
        return self.array.ctypes.data


def _view(a: Array, shape, strides, offset) -> np.ndarray:
    itemsize = a.array.itemsize
    return np.lib.stride_tricks.as_strided(
        a.array[offset:], tuple(shape), tuple(s * itemsize for s in strides)
    )


# ---- memory -------------------------------------------------------------------------
def to_numpy(a: Array, shape, strides, offset) -> np.ndarray:
    return _view(a, shape, strides, offset).copy()


def from_numpy(a: np.ndarray, out: Array) -> None:
    out.array[:] = a.reshape(-1)


def fill(out: Array, val: float) -> None:
    out.array.fill(val)


# ---- layout -------------------------------------------------------------------------
def compact(a: Array, out: Array, shape, strides, offset) -> None:
    out.array[:] = _view(a, shape, strides, offset).reshape(-1)


def ewise_setitem(a: Array, out: Array, shape, strides, offset) -> None:
    _view(out, shape, strides, offset)[...] = a.array.reshape(shape)


def scalar_setitem(size: int, val: float, out: Array, shape, strides, offset) -> None:
    _view(out, shape, strides, offset)[...] = val


# ---- binary -------------------------------------------------------------------------
def ewise_add(a: Array, b: Array, out: Array) -> None:
    out.array[:] = a.array + b.array


def scalar_add(a: Array, val: float, out: Array) -> None:
    out.array[:] = a.array + val


def ewise_sub(a: Array, b: Array, out: Array) -> None:
    out.array[:] = a.array - b.array


def scalar_sub(a: Array, val: float, out: Array) -> None:
    out.array[:] = a.array - val


def scalar_rsub(a: Array, val: float, out: Array) -> None:
    """out = val - a"""
    out.array[:] = val - a.array


def ewise_mul(a: Array, b: Array, out: Array) -> None:
    out.array[:] = a.array * b.array


def scalar_mul(a: Array, val: float, out: Array) -> None:
    out.array[:] = a.array * val


def ewise_div(a: Array, b: Array, out: Array) -> None:
    out.array[:] = a.array / b.array


def scalar_div(a: Array, val: float, out: Array) -> None:
    out.array[:] = a.array / val


def scalar_rdiv(a: Array, val: float, out: Array) -> None:
    """out = val / a"""
    out.array[:] = val / a.array


def ewise_power(a: Array, b: Array, out: Array) -> None:
    out.array[:] = a.array ** b.array


def scalar_power(a: Array, val: float, out: Array) -> None:
    out.array[:] = a.array ** out.array.dtype.type(val)


def ewise_maximum(a: Array, b: Array, out: Array) -> None:
    out.array[:] = np.maximum(a.array, b.array)


def scalar_maximum(a: Array, val: float, out: Array) -> None:
    out.array[:] = np.maximum(a.array, val)


def ewise_eq(a: Array, b: Array, out: Array) -> None:
    out.array[:] = a.array == b.array


def scalar_eq(a: Array, val: float, out: Array) -> None:
    out.array[:] = a.array == out.array.dtype.type(val)


def ewise_ge(a: Array, b: Array, out: Array) -> None:
    out.array[:] = a.array >= b.array


def scalar_ge(a: Array, val: float, out: Array) -> None:
    out.array[:] = a.array >= out.array.dtype.type(val)


def ewise_axpby(a: Array, b: Array, alpha: float, beta: float, out: Array) -> None:
    """out = alpha * a + beta * b, the scalars rounded to the dtype first; out may be a or b
    (the optimizers' in-place update w = w - lr * grad is ewise_axpby(w, grad, 1, -lr, w))."""
    dt = out.array.dtype.type
    out.array[:] = dt(alpha) * a.array[: out.size] + dt(beta) * b.array[: out.size]


# ---- rows by index --------------------------------------------------------------------
def gather_rows(a: Array, indices: Array, out: Array, n: int, row_size: int) -> None:
    """Row i of out = row indices[i] of a, for i < n; rows are row_size elements. indices
    holds whole numbers (in a's dtype) in [0, a.size // row_size), checked by NDArray."""
    idx = indices.array[:n].astype(np.int64)
    out.array[: n * row_size] = a.array[: a.size // row_size * row_size].reshape(
        -1, row_size)[idx].reshape(-1)


def scatter_add_rows(a: Array, indices: Array, out: Array, n: int, row_size: int) -> None:
    """Row indices[i] of out += row i of a, for i < n; repeated indices add up. indices as in
    gather_rows, in [0, out.size // row_size)."""
    idx = indices.array[:n].astype(np.int64)
    rows = out.array[: out.size // row_size * row_size].reshape(-1, row_size)
    np.add.at(rows, idx, a.array[: n * row_size].reshape(n, row_size))


# ---- unary --------------------------------------------------------------------------
def ewise_neg(a: Array, out: Array) -> None:
    out.array[:] = -a.array


def ewise_abs(a: Array, out: Array) -> None:
    out.array[:] = np.abs(a.array)


def ewise_sign(a: Array, out: Array) -> None:
    out.array[:] = np.sign(a.array)


def ewise_log(a: Array, out: Array) -> None:
    out.array[:] = np.log(a.array)


def ewise_exp(a: Array, out: Array) -> None:
    out.array[:] = np.exp(a.array)


def ewise_tanh(a: Array, out: Array) -> None:
    out.array[:] = np.tanh(a.array)


def ewise_sqrt(a: Array, out: Array) -> None:
    out.array[:] = np.sqrt(a.array)


def ewise_sin(a: Array, out: Array) -> None:
    out.array[:] = np.sin(a.array)


def ewise_cos(a: Array, out: Array) -> None:
    out.array[:] = np.cos(a.array)


def ewise_relu(a: Array, out: Array) -> None:
    out.array[:] = np.maximum(a.array, 0)


def ewise_sigmoid(a: Array, out: Array) -> None:
    # Split by sign so exp never overflows: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) otherwise.
    x = a.array
    e = np.exp(-np.abs(x))
    out.array[:] = np.where(x >= 0, 1 / (1 + e), e / (1 + e))


# ---- linear algebra -----------------------------------------------------------------
def matmul(a: Array, b: Array, out: Array, m: int, n: int, p: int) -> None:
    """(m, n) @ (n, p) -> (m, p), all compact row-major."""
    out.array[:] = (a.array[: m * n].reshape(m, n) @ b.array[: n * p].reshape(n, p)).reshape(-1)


def batched_matmul(a: Array, b: Array, out: Array, batch: int, m: int, n: int, p: int) -> None:
    """(batch, m, n) @ (batch, n, p) -> (batch, m, p), all compact row-major."""
    out.array[:] = np.matmul(
        a.array.reshape(batch, m, n), b.array.reshape(batch, n, p)
    ).reshape(-1)


def matmul_strided(
    a: Array, b: Array, out: Array, batch: int, m: int, n: int, p: int,
    a_offset: int, a_strides, b_offset: int, b_strides,
) -> None:
    """Batched matmul of strided views, so transposed, offset or batch-broadcast operands need
    no compact copy: a is the view (batch, m, n) with strides a_strides = (batch, row, col) at
    a_offset, b the view (batch, n, p) likewise; out is compact (batch, m, p). Strides may be 0.
    """
    av = _view(a, (batch, m, n), a_strides, a_offset)
    bv = _view(b, (batch, n, p), b_strides, b_offset)
    out.array[:] = np.matmul(av, bv).reshape(-1)


def matmul_tiled(a: Array, b: Array, out: Array, m: int, n: int, p: int) -> None:
    """Matmul over tile-major operands: a is (m/T, n/T, T, T), b is (n/T, p/T, T, T)."""
    t = __tile_size__
    a2 = a.array.reshape(m // t, n // t, t, t).transpose(0, 2, 1, 3).reshape(m, n)
    b2 = b.array.reshape(n // t, p // t, t, t).transpose(0, 2, 1, 3).reshape(n, p)
    out.array[:] = (a2 @ b2).reshape(m // t, t, p // t, t).transpose(0, 2, 1, 3).reshape(-1)


# ---- reductions over the last axis of a compact array -------------------------------
def reduce_sum(a: Array, out: Array, reduce_size: int) -> None:
    out.array[:] = a.array.reshape(-1, reduce_size).sum(axis=1)


def reduce_max(a: Array, out: Array, reduce_size: int) -> None:
    out.array[:] = a.array.reshape(-1, reduce_size).max(axis=1)


def reduce_sum_axis(a: Array, out: Array, outer: int, reduce_size: int, inner: int) -> None:
    """Sum the middle axis of a compact (outer, reduce_size, inner) array into (outer, inner)."""
    out.array[:] = a.array.reshape(outer, reduce_size, inner).sum(axis=1).reshape(-1)


def reduce_max_axis(a: Array, out: Array, outer: int, reduce_size: int, inner: int) -> None:
    """Maximum over the middle axis of a compact (outer, reduce_size, inner) array."""
    out.array[:] = a.array.reshape(outer, reduce_size, inner).max(axis=1).reshape(-1)


def synchronize() -> None:
    """Nothing to wait for: NumPy is synchronous."""
