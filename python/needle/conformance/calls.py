"""Calling a backend's primitives the way the primitive table names them.

Shared by the conformance suite (tests/backends), the backend-specific suites and `needle
check-backend` (check.py): a primitive is called by keyword with the parameter names of its
row in ``primitives.TABLE``, so a backend (or a fallback) whose names or argument order
differ fails, and each argument is marshalled by its kind: NumPy data for an ``array``
parameter becomes an Array of the backend under test (in the dtype under test), for an
``index`` parameter an int64 Array, an ``Out`` becomes a fresh output Array (of the row's
``out_dtype`` where it has one: comparisons write bool).
"""

import numpy as np

from needle.backend_ndarray import primitives


class Out:
    """An output Array argument: `size` elements, optionally initialised from `init`, of the
    dtype under test unless `dtype` names another (astype's out)."""

    def __init__(self, size, init=None, dtype=None):
        self.size, self.init, self.dtype = size, init, dtype

    def make(self, mod, dtype):
        dtype = self.dtype or dtype
        out = mod.Array(self.size, dtype)
        if self.init is not None:
            mod.from_numpy(np.ascontiguousarray(self.init, dtype=dtype), out)
        return out


def to_array(mod, x: np.ndarray, dtype=None):
    """An Array of `mod` holding `x` (in `dtype`, default x's own)."""
    dtype = x.dtype.name if dtype is None else dtype
    arr = mod.Array(x.size, dtype)
    mod.from_numpy(np.ascontiguousarray(x, dtype=dtype), arr)
    return arr


def read(mod, arr) -> np.ndarray:
    """The whole flat contents of an Array of `mod`."""
    return mod.to_numpy(arr, (arr.size,), (1,), 0)


def marshal(mod, name, *args, dtype) -> tuple[dict, list]:
    """The keyword arguments of primitive `name` of `mod` for `args` (in the table's order),
    Arrays made of `mod`, and the out (and inout) Arrays among them."""
    prim = primitives.TABLE[name]
    assert len(args) == len(prim.params), (name, prim.param_names)
    kwargs, outs = {}, []
    for param, arg in zip(prim.params, args):
        if param.kind in ("out", "inout"):
            out_dtype = prim.out_dtype if param.kind == "out" and prim.out_dtype else dtype
            arg = arg.make(mod, out_dtype)
            outs.append(arg)
        elif param.kind == "array":
            arg = to_array(mod, np.asarray(arg), dtype)
        elif param.kind == "index":
            arg = to_array(mod, np.asarray(arg), primitives.INDEX_DTYPE)
        elif param.kind == "numpy":
            arg = arg.astype(dtype)
        kwargs[param.name] = arg
    return kwargs, outs


def call(mod, name, *args, dtype, impl=None):
    """Call primitive `name` of `mod` by keyword (or `impl`, a function with the table's
    parameters, such as the table's fallback bound to `mod`), with args in the table's order.

    Returns the contents of the out (or inout) argument (of all of them, concatenated, when
    there are several), else what the primitive returns.
    """
    kwargs, outs = marshal(mod, name, *args, dtype=dtype)
    result = (getattr(mod, name) if impl is None else impl)(**kwargs)
    if len(outs) > 1:  # every output, one after another
        return np.concatenate([read(mod, out) for out in outs])
    return read(mod, outs[0]) if outs else result


def row_indices(rng, rows, n, kind):
    """n row indices (int64, as the rows-by-index primitives read them) into `rows` rows:
    "same" sends all to the last row, "distinct" is part of a permutation, "random" repeats
    some."""
    if kind == "same":
        return np.full(n, rows - 1, dtype=np.int64)
    if kind == "distinct":
        return rng.permutation(rows)[:n].astype(np.int64)
    return rng.integers(0, rows, n, dtype=np.int64)


def fit(x, dtype) -> np.ndarray:
    """Float test data made data of `dtype`: floats as they are; integers from round(37 x)
    wrapped into the dtype's range as NumPy's integer casts wrap (37 is odd, so consecutive
    values stay distinct modulo 256); bool where round(37 x) is a multiple of 3."""
    x = np.asarray(x)
    if dtype in primitives.FLOATING or x.dtype == np.dtype(dtype):
        return x.astype(dtype)
    whole = np.round(x * 37).astype(np.int64)
    return (whole % 3 == 0) if dtype == "bool" else whole.astype(dtype)


def scalar_for(dtype, val: float) -> float:
    """`val` as NDArray would pass it to a primitive on `dtype`: a whole number in range for
    an integer dtype (int(val) wrapped into it), as it is for floats and bool (val != 0)."""
    if dtype in primitives.FLOATING or np.dtype(dtype).kind not in "iu":
        return val
    return float(np.array(int(val), dtype=np.int64).astype(dtype))


def int_operand(rng, dtype, size, ties=True):
    """`size` values of an integer or bool dtype: over its whole range, with its limits and
    their neighbours first (where add, sub, mul and neg wrap around) and, with `ties`, about
    a third of small values (so eq, ge, maximum see equal operands)."""
    if dtype == "bool":
        return rng.integers(0, 2, size).astype(bool)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, size, dtype=dtype, endpoint=True)
    if ties:
        small = rng.integers(max(info.min, -3), 4, size).astype(dtype)
        x = np.where(rng.integers(0, 3, size) == 0, small, x)
    edges = np.array(
        sorted({info.min, info.min + 1, info.max, info.max - 1, 0, 1, max(info.min, -1), 2})
    ).astype(dtype)
    x[: min(size, edges.size)] = edges[: min(size, edges.size)]
    return x


def operand(rng, kind, size):
    """Inputs where every op is well defined; "ties" makes eq/ge/maximum see equal values."""
    if kind == "positive":
        return rng.uniform(0.1, 4.0, size)
    if kind == "nonzero":
        return rng.choice([-1, 1], size) * rng.uniform(0.2, 3.0, size)
    if kind == "ties":
        return rng.integers(-2, 3, size).astype(float)
    if kind == "wide":
        return rng.standard_normal(size) * 50
    return rng.standard_normal(size) * 3


def view_of(base: np.ndarray, view: np.ndarray):
    """(storage size, shape, strides, offset) of `view`, a NumPy view of the flat `base`,
    strides and offset in elements."""
    itemsize = base.itemsize
    offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return base.size, view.shape, tuple(s // itemsize for s in view.strides), offset // itemsize


def element_offsets(shape, strides, offset) -> np.ndarray:
    """The storage offset of every element of a view, in row-major order."""
    if not shape:
        return np.array([offset])
    idx = np.indices(shape).reshape(len(shape), -1)
    return offset + (np.asarray(strides, dtype=np.int64)[:, None] * idx).sum(axis=0)


def writes_each_element_once(shape, strides, offset) -> bool:
    """Whether no two elements of the view share storage (where writes would race)."""
    offsets = element_offsets(shape, strides, offset)
    return len(np.unique(offsets)) == offsets.size
