"""Calling a backend's primitives the way the NumPy reference names them.

Shared by the primitive suites of every backend (C++ CPU, CUDA emulation, Metal emulation):
a primitive is called by keyword with the parameter names of ``ndarray_backend_numpy``, so a
backend whose names or argument order differ fails, and NumPy inputs become Arrays of the
backend under test.
"""

import inspect

import numpy as np

from needle.backend_ndarray import ndarray_backend_numpy as nb_np


class Out:
    """An output Array argument: `size` elements, optionally initialised from `init`."""

    def __init__(self, size, init=None):
        self.size, self.init = size, init


def to_array(mod, x: np.ndarray, dtype=None):
    """An Array of `mod` holding `x` (in `dtype`, default x's own)."""
    dtype = x.dtype.name if dtype is None else dtype
    arr = mod.Array(x.size, dtype)
    mod.from_numpy(np.ascontiguousarray(x, dtype=dtype), arr)
    return arr


def read(mod, arr) -> np.ndarray:
    """The whole flat contents of an Array of `mod`."""
    return mod.to_numpy(arr, (arr.size,), (1,), 0)


def call(mod, name, *args, dtype):
    """Call primitive `name` of `mod` by keyword; NumPy inputs become `dtype` Arrays of `mod`.

    Returns the contents of the Out argument.
    """
    params = list(inspect.signature(getattr(nb_np, name)).parameters)
    assert len(args) == len(params), (name, params)
    kwargs, out = {}, None
    for param, arg in zip(params, args):
        if isinstance(arg, Out):
            out = mod.Array(arg.size, dtype)
            if arg.init is not None:
                mod.from_numpy(arg.init.astype(dtype), out)
            arg = out
        elif isinstance(arg, np.ndarray):
            arg = to_array(mod, arg, dtype)
        kwargs[param] = arg
    getattr(mod, name)(**kwargs)
    return read(mod, out)


def row_indices(rng, rows, n, kind):
    """n row indices (as floats, as the rows-by-index primitives read them) into `rows`
    rows: "same" sends all to the last row, "distinct" is part of a permutation, "random"
    repeats some."""
    if kind == "same":
        return np.full(n, rows - 1, dtype=float)
    if kind == "distinct":
        return rng.permutation(rows)[:n].astype(float)
    return rng.integers(0, rows, n).astype(float)


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
