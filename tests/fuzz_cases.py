"""Random cases of the public NDArray/Tensor API, each checked against NumPy (issue 13).

Case ``index`` of ``seed`` is deterministic: ``describe`` names it, ``check`` runs it (None
when needle agrees with NumPy, else a message). ``python tests/fuzz_cases.py SEED START
STOP [-v]`` runs cases, printing ``start <i>`` before each and ``mismatch <i> <message>``,
so a crash names its case. A case: an array from NumPy (float32/64, up to 4-d, 0-size, 0-d,
NaN, +-inf, +-0, huge values) on cpu or cpu_numpy; views (reshape, permute, broadcast_to,
slices with any step, ints, flip, compact, as_strided); then nothing, a unary op, a binary
one with an array or a scalar (arithmetic, **, maximum, comparisons), sum/max, matmul,
setitem, or a Tensor op with backward. Layouts compare bit for bit, arithmetic NaN-aware
within dtype tolerances; an error agrees when NumPy raises too and needle raises ValueError,
IndexError or TypeError. The NumPy model follows NDArray's course semantics (issue 14) where
they differ from NumPy's: an int index keeps its axis as size 1; setitem takes an array of
the selection's size in any shape, else one broadcasting (NumPy's rule) to the selection with
int axes dropped or kept; comparisons give bool arrays; sum/max over axis=() is a ValueError.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

import needle as ndl
from needle.backend_ndarray import NDArray

# the C++ backend when this build has it, and the NumPy one
DEVICES = tuple(name for name in ("cpu", "cpu_numpy") if getattr(ndl, name)().enabled())
DTYPES = (np.float32, np.float64)
NEEDLE_ERRORS = (ValueError, IndexError, TypeError)


# ---- values ---------------------------------------------------------------------------------
def _values(rng, shape, dtype, special: float, huge: bool = True) -> np.ndarray:
    scale = rng.choice([1.0, 1.0, 3.0, 0.1, 100.0])
    x = np.array(rng.standard_normal(shape) * scale, dtype=dtype)
    if x.size and rng.random() < special:
        pool = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, 2.0]
        if huge:
            big = float(np.finfo(dtype).max) / 4
            pool += [big, -big, float(np.finfo(dtype).tiny)]
        mask = rng.random(shape) < rng.choice([0.1, 0.3, 1.0])
        x[mask] = rng.choice(pool, size=int(mask.sum()))
    return np.asarray(x, dtype=dtype)


def _shape(rng, ndim=None, lo=0, hi=4) -> tuple[int, ...]:
    if ndim is None:
        ndim = int(rng.choice([0, 1, 1, 2, 2, 3, 3, 4]))
    sizes = [0, 1, 1, 2, 2, 3, 3, 4, 5]
    return tuple(max(int(rng.choice(sizes)), lo) if rng.random() < 0.95 else 0 for _ in range(ndim))


# ---- views: each is (needle view of a, NumPy view of x, description) ------------------------
def _view(rng, x):
    kind = rng.choice(
        ["reshape", "permute", "broadcast", "slice", "int", "flip", "compact", "strided"]
    )
    if kind == "reshape":
        shape = _shape(rng) if rng.random() < 0.1 else _factor(rng, x.size)
        if shape and rng.random() < 0.3:
            shape = list(shape)
            shape[int(rng.integers(len(shape)))] = -1
        shape = tuple(shape)
        return lambda a: a.reshape(shape), lambda: x.reshape(shape), f"reshape{shape}"
    if kind == "permute":
        axes = tuple(int(i) for i in rng.permutation(x.ndim))
        if rng.random() < 0.1 and x.ndim:
            axes = axes[:-1] + (axes[0],)
        return lambda a: a.permute(axes), lambda: x.transpose(axes), f"permute{axes}"
    if kind == "broadcast":
        shape = tuple(
            int(rng.choice([1, 2, 3])) if d == 1 and rng.random() < 0.7 else d for d in x.shape
        )
        shape = _shape(rng, ndim=int(rng.integers(0, 2))) + shape
        if rng.random() < 0.1:
            shape = _shape(rng)
        return (
            lambda a: a.broadcast_to(shape),
            lambda: np.broadcast_to(x, shape),
            f"broadcast_to{shape}",
        )
    if kind in ("slice", "int"):
        idx = _index(rng, x.shape, ints=kind == "int")
        return lambda a: a[idx], lambda: _getitem(x, idx), f"[{_fmt_index(idx)}]"
    if kind == "flip":
        axes = tuple(sorted({int(i) for i in rng.integers(0, max(x.ndim, 1), size=2)}))
        if not x.ndim:
            axes = ()
        return lambda a: a.flip(axes), lambda: np.flip(x, axes), f"flip{axes}"
    if kind == "compact":
        return lambda a: a.compact(), lambda: x, "compact()"
    # as_strided: a valid view over a 1-d copy, starting inside it, or one reaching outside
    n = x.size
    start = int(rng.integers(0, n)) if n else 0
    ndim = int(rng.integers(0, 4))
    shape = tuple(int(rng.integers(0, 4)) for _ in range(ndim))
    strides = tuple(int(rng.integers(-3, 4)) for _ in range(ndim))
    if n and all(shape):
        pos = [s * (d - 1) for d, s in zip(shape, strides)]
        low = start + sum(p for p in pos if p < 0)
        high = start + sum(p for p in pos if p > 0)
        inside = low >= 0 and high < n
    else:
        inside = True
    grid = np.indices(shape).reshape(ndim, -1) if ndim else np.zeros((0, 1), dtype=int)
    where = start + (np.asarray(strides).reshape(-1, 1) * grid).sum(axis=0)

    def numpy_view():
        if not inside:
            raise IndexError("outside")
        return x.reshape(-1)[where.astype(np.intp)].reshape(shape) if n else x.reshape(-1)[:0]

    if not n:
        shape, strides = (0,), (1,)
    return (
        lambda a: a.compact().reshape((n,))[start:].as_strided(shape, strides),
        numpy_view,
        f"flat[{start}:].as_strided({shape}, {strides})",
    )


def _factor(rng, n):
    """A random shape of n elements, up to 4-d."""
    if n == 0:
        dims = [int(rng.integers(1, 4)) for _ in range(int(rng.integers(0, 3)))]
        dims.insert(int(rng.integers(0, len(dims) + 1)), 0)
        return tuple(dims)
    dims = []
    for _ in range(int(rng.integers(0, 4))):
        dims.append(int(rng.choice([k for k in range(1, n + 1) if n % k == 0])))
        n //= dims[-1]
    return (*dims, n)


def _index(rng, shape, ints):
    idx = []
    for d in shape[: int(rng.integers(0, len(shape) + 1))]:
        if ints and rng.random() < 0.5:
            out_of_bounds = rng.random() < 0.05
            idx.append(int(rng.integers(-d - out_of_bounds, d + out_of_bounds)) if d else 0)
        else:
            lo, hi = -d - 2, d + 2
            start = None if rng.random() < 0.3 else int(rng.integers(lo, hi + 1))
            stop = None if rng.random() < 0.3 else int(rng.integers(lo, hi + 1))
            step = None if rng.random() < 0.3 else int(rng.choice([1, 2, 3, -1, -2, -3]))
            idx.append(slice(start, stop, step))
    if rng.random() < 0.15:
        idx.insert(int(rng.integers(0, len(idx) + 1)), Ellipsis)
    return tuple(idx) if len(idx) != 1 or rng.random() < 0.5 else idx[0]


def _kept_index(x, idx):
    """`idx` (valid for `x`) with each int i replaced by the slice (i mod d):(i mod d)+1 of its
    axis (of size d), as NDArray's indexing (the course's) reads an int: the axis stays."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(i is Ellipsis for i in idx):
        p = next(k for k, i in enumerate(idx) if i is Ellipsis)
        idx = idx[:p] + (slice(None),) * (x.ndim - len(idx) + 1) + idx[p + 1 :]
    return tuple(
        slice(i % x.shape[a], i % x.shape[a] + 1) if isinstance(i, int) else i
        for a, i in enumerate(idx)
    )


def _getitem(x, idx):
    """NDArray's x[idx]: NumPy's view, but an int keeps its axis as size 1 (x[1, 2:5] has
    shape (1, 3)); the errors are NumPy's (an index out of bounds, too many indices)."""
    x[idx]
    return x[_kept_index(x, idx)]


def _setitem(x, idx, value):
    """NDArray's x[idx] = value: a scalar, or an array of the selection's size in any shape
    (the course's rule), else one that broadcasts by NumPy's rule to the selection with its
    int-indexed axes dropped (NumPy's selection) or kept as size 1 (NDArray's view)."""
    if isinstance(value, float):
        x[idx] = value
        return
    selection = x[idx]
    if value.size == selection.size:
        x[idx] = value.reshape(selection.shape)
        return
    try:
        x[idx] = value
    except ValueError:
        x[_kept_index(x, idx)] = value


def _fmt_index(idx):
    def one(i):
        if isinstance(i, slice):
            return ":".join("" if v is None else str(v) for v in (i.start, i.stop, i.step))
        return "..." if i is Ellipsis else str(i)

    return ", ".join(map(one, idx if isinstance(idx, tuple) else (idx,))) + (
        "" if isinstance(idx, tuple) else ","
    )


# ---- comparison -----------------------------------------------------------------------------
def _exact(got: np.ndarray, want: np.ndarray) -> str | None:
    if got.shape != want.shape:
        return f"shape {got.shape}, want {want.shape}"
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, want {want.dtype}"
    g, w = got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}")
    if not np.array_equal(g, w):
        bad = tuple(int(i) for i in np.argwhere(g != w)[0])
        return f"at {bad}: got {got[bad]!r}, want {want[bad]!r}"
    return None


def _close(got, want, atol, rtol) -> str | None:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return f"shape {got.shape}, want {want.shape}"
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, want {want.dtype}"
    g, w = got.astype(np.float64), want.astype(np.float64)
    atol = np.broadcast_to(np.nan_to_num(np.asarray(atol, dtype=np.float64), nan=0.0), w.shape)
    if rtol or atol.any():  # and a few ulp of the subnormals, where rtol is no use
        atol = atol + 4 * float(np.finfo(want.dtype).smallest_subnormal)
    with np.errstate(all="ignore"):
        finite = np.isfinite(w)
        ok = np.where(
            finite,
            np.abs(g - w) <= atol + rtol * np.abs(w),
            (np.isnan(w) & np.isnan(g)) | (w == g),
        )
    if not ok.all():
        bad = tuple(int(i) for i in np.argwhere(~ok)[0])
        return f"at {bad}: got {got[bad]!r}, want {want[bad]!r}"
    return None


def _eps(dtype):
    return float(np.finfo(dtype).eps)


# ---- the cases ------------------------------------------------------------------------------
UNARY = {
    "neg": (lambda a: -a, np.negative),
    "abs": (lambda a: a.abs(), np.abs),
    "log": (lambda a: a.log(), np.log),
    "exp": (lambda a: a.exp(), np.exp),
    "tanh": (lambda a: a.tanh(), np.tanh),
    "sqrt": (lambda a: a.sqrt(), np.sqrt),
    "sin": (lambda a: a.sin(), np.sin),
    "cos": (lambda a: a.cos(), np.cos),
    "relu": (lambda a: a.relu(), lambda x: np.maximum(x, x.dtype.type(0))),
    "sigmoid": (lambda a: a.sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
}
# bounded results whose libm versions may differ by a few ulp of 1
BOUNDED = {"tanh", "sin", "cos", "sigmoid"}

BINARY = {
    "+": (lambda a, b: a + b, np.add),
    "-": (lambda a, b: a - b, np.subtract),
    "*": (lambda a, b: a * b, np.multiply),
    "/": (lambda a, b: a / b, np.divide),
    "**": (lambda a, b: a**b, np.power),
    "maximum": (lambda a, b: a.maximum(b), np.maximum),
    "==": (lambda a, b: a == b, np.equal),
    ">=": (lambda a, b: a >= b, np.greater_equal),
    ">": (lambda a, b: a > b, np.greater),
    "<": (lambda a, b: a < b, np.less),
    "<=": (lambda a, b: a <= b, np.less_equal),
    "!=": (lambda a, b: a != b, np.not_equal),
}
COMPARISONS = {"==", ">=", ">", "<", "<=", "!="}
REFLECTED = {
    "+": lambda s, a: s + a,
    "-": lambda s, a: s - a,
    "*": lambda s, a: s * a,
    "/": lambda s, a: s / a,
}
SCALARS = [0.0, -0.0, 1.0, -1.0, 2.0, 3.0, 0.5, -0.5, 1.5, -2.0, np.nan, np.inf, -np.inf, 0.1]
POWERS = [0.5, 0.5, 2.0, 2.0, 1.0, 0.0, 3.0, -0.5, -1.0, -2.0, 1.5, np.nan, np.inf, -np.inf]
OPS = ["none"] * 3 + ["unary"] * 4 + ["binary"] * 4 + ["scalar"] * 4
OPS += ["reduce"] * 3 + ["matmul"] * 2 + ["setitem"] * 2 + ["tensor"] * 2


def _case(seed: int, index: int):
    """(description, run) where run() returns None or a mismatch message."""
    rng = np.random.default_rng([seed, index])
    device = getattr(ndl, DEVICES[int(rng.integers(len(DEVICES)))])()
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    op = OPS[int(rng.integers(len(OPS)))]
    if op == "matmul":
        return _matmul_case(rng, device, dtype)
    if op == "tensor":
        return _tensor_case(rng, device, dtype)
    special = 0.0 if rng.random() < 0.5 else 1.0
    x = _values(rng, _shape(rng), dtype, special, huge=op != "reduce")
    desc = [f"{device.name} {np.dtype(dtype).name} x{x.shape}"]
    # The NumPy side of each view is computed now (the next view's choices depend on its
    # shape), the needle side when the case runs.
    steps, want = [], x
    for _ in range(int(rng.integers(0, 3))):
        na_fn, np_fn, d = _view(rng, want)
        steps.append(na_fn)
        desc.append(d)
        want = _np_attempt(np_fn)
        if isinstance(want, Exception):
            break
    final, final_desc = _final(rng, op, want, dtype, special)
    desc.append(final_desc)

    def run():
        a = NDArray(x, device=device, dtype=np.dtype(dtype).name)
        for na_fn in steps:
            a = _attempt(lambda: na_fn(a))
            if isinstance(a, Exception):
                break
        if isinstance(a, Exception) or isinstance(want, Exception):
            return _errors(a, want)
        return final(a, want)

    return " | ".join(desc), run


def _errors(got, want) -> str | None:
    if isinstance(got, Exception) and isinstance(want, Exception):
        if isinstance(got, NEEDLE_ERRORS):
            return None
        return f"raised {type(got).__name__}: {got} (NumPy raised {type(want).__name__})"
    if isinstance(got, Exception):
        return f"raised {type(got).__name__}: {got}; NumPy gives {want!r}"
    return f"gave {got!r}; NumPy raised {type(want).__name__}: {want}"


def _attempt(fn):
    try:
        return fn()
    except NEEDLE_ERRORS as error:
        return error


def _np_attempt(fn):
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except Exception as error:
        return error


def _final(rng, op, cur, dtype, special):
    """(check(a, x) -> message or None, description) for the op applied to view a (x in NumPy)."""
    eps = _eps(dtype)
    shape = cur.shape if isinstance(cur, np.ndarray) else ()
    if op == "none":
        return lambda a, x: _exact(a.numpy(), np.asarray(x)), "view"
    if op == "unary":
        name = list(UNARY)[int(rng.integers(len(UNARY)))]
        na_fn, np_fn = UNARY[name]
        atol = 4 * eps if name in BOUNDED else 0.0

        def check(a, x):
            got, want = _attempt(lambda: na_fn(a)), _np_attempt(lambda: np_fn(x))
            if isinstance(got, Exception) or isinstance(want, Exception):
                return _errors(got, want)
            return _close(got.numpy(), want, atol, 4 * eps)

        return check, name
    if op == "binary":
        name = list(BINARY)[int(rng.integers(len(BINARY)))]
        na_fn, np_fn = BINARY[name]
        other_shape = _broadcastable(rng, shape)
        other_dtype = dtype if rng.random() < 0.9 else DTYPES[int(rng.integers(2))]
        y = _values(rng, other_shape, other_dtype, special)
        swap = rng.random() < 0.5

        def check(a, x):
            b = NDArray(y, device=a.device, dtype=np.dtype(other_dtype).name)
            left, right, lx, rx = (b, a, y, x) if swap else (a, b, x, y)
            got = _attempt(lambda: na_fn(left, right))
            shape = None  # NumPy's power takes sqrt for a broadcast (or 0-d) exponent of 0.5
            if name == "**":  # (-inf ** 0.5 is NaN), pow otherwise (+inf): give it full arrays
                shape, (lx, rx) = _full(lx, rx)
            want = _np_attempt(lambda: np_fn(lx, rx))
            if isinstance(got, Exception) or isinstance(want, Exception):
                return _errors(got, want)
            if shape is not None:
                want = want.reshape(shape)
            tol = 4 * _eps(want.dtype) if name not in COMPARISONS else 0.0
            return _close(got.numpy(), want, 0.0, tol)

        return check, f"{name} y{other_shape} {np.dtype(other_dtype).name}" + (
            " (y first)" if swap else ""
        )
    if op == "scalar":
        # ** thrice: its exponents 2, 1 and 0.5 take fast paths of their own
        ops = list(BINARY) + ["**", "**"] + ["r" + k for k in REFLECTED]
        name = ops[int(rng.integers(len(ops)))]
        pool = POWERS if name == "**" else SCALARS
        s = (
            float(pool[int(rng.integers(len(pool)))])
            if rng.random() < 0.7
            else float(np.round(rng.standard_normal() * 3, 2))
        )

        def check(a, x):
            sv = np.asarray(s, dtype=x.dtype)
            if name.startswith("r"):
                got = _attempt(lambda: REFLECTED[name[1:]](s, a))
                want = _np_attempt(lambda: BINARY[name[1:]][1](sv, x))
            else:
                got = _attempt(lambda: BINARY[name][0](a, s))
                want = _np_attempt(lambda: BINARY[name][1](x, sv))
            if isinstance(got, Exception) or isinstance(want, Exception):
                return _errors(got, want)
            if name not in COMPARISONS:  # comparisons give bool arrays, as NumPy's
                want = np.asarray(want).astype(x.dtype)
            tol = 4 * eps if name not in COMPARISONS else 0.0
            return _close(got.numpy(), want, 0.0, tol)

        return check, f"{name} {s!r}"
    if op == "reduce":
        name = "sum" if rng.random() < 0.5 else "max"
        ndim = len(shape)
        r = rng.random()
        if r < 0.2:
            axis = None
        elif r < 0.6 and ndim:
            axis = int(rng.integers(-ndim, ndim))
        else:
            axis = tuple(sorted({int(i) for i in rng.integers(0, max(ndim, 1), size=2)}))
            if not ndim or rng.random() < 0.1:
                axis = ()
        keepdims = bool(rng.random() < 0.5)

        def check(a, x):
            got = _attempt(lambda: getattr(a, name)(axis=axis, keepdims=keepdims))
            if axis == ():  # the course's rule: no axes is an error (NumPy returns x)
                if isinstance(got, ValueError):
                    return None
                return f"gave {got!r}; want ValueError for axis=()"
            want = _np_attempt(lambda: getattr(np, name)(x, axis=axis, keepdims=keepdims))
            if isinstance(got, Exception) or isinstance(want, Exception):
                return _errors(got, want)
            want = np.asarray(want)
            atol = 0.0
            if name == "sum":
                with np.errstate(all="ignore"):
                    n = max(x.size // max(want.size, 1), 1)
                    scale = np.sum(np.abs(x.astype(np.float64)), axis=axis, keepdims=keepdims)
                    atol = 2 * (n + 1) * eps * scale
            return _close(got.numpy(), want, atol, 0.0)

        return check, f"{name}(axis={axis}, keepdims={keepdims})"
    # setitem: into a view of a fresh array; compares the whole array afterwards
    # The value: a scalar; an array broadcasting to the target, or to the selection with its
    # int-indexed axes dropped (NumPy's) or kept (NDArray's view); one of the selection's size
    # in another shape (the course's rule); or most likely a bad one.
    idx = _index(rng, shape, ints=rng.random() < 0.5)
    value_kind = rng.choice(["scalar", "array", "array", "bad", "size", "selection", "kept"])
    if value_kind == "scalar":
        value = float(SCALARS[int(rng.integers(len(SCALARS)))])
        v_desc = f"scalar {value!r}"
    else:
        selection = _np_attempt(lambda: cur[idx])
        if not isinstance(selection, np.ndarray):
            value_kind = "array"
        if value_kind == "array":
            vshape = _broadcast_source(rng, shape)
        elif value_kind == "selection":
            vshape = _broadcast_source(rng, selection.shape)
        elif value_kind == "kept":
            vshape = _broadcast_source(rng, _getitem(cur, idx).shape)
        elif value_kind == "size":
            vshape = _factor(rng, selection.size)
        else:
            vshape = _shape(rng)
        if rng.random() < (0.5 if value_kind == "kept" else 0.2):  # NumPy drops leading 1s
            vshape = (1,) * int(rng.integers(1, 3)) + vshape
        value = _values(rng, vshape, dtype, special)
        v_desc = f"array {vshape}"

    def check(a, x):
        # x is a NumPy view of the case's base array only when the chain made views; a copy
        # of both sides keeps the comparison to the selection and the target view's data.
        a = NDArray(a.numpy(), device=a.device, dtype=a.dtype)
        x = np.array(x, copy=True)
        v = value if isinstance(value, float) else NDArray(value, device=a.device, dtype=a.dtype)
        got = _attempt(lambda: a.__setitem__(idx, v))
        want = _np_attempt(lambda: _setitem(x, idx, value))
        if isinstance(got, Exception) or isinstance(want, Exception):
            return _errors(got, want)
        return _exact(a.numpy(), x)

    return check, f"[{_fmt_index(idx)}] = {v_desc}"


def _full(x, y):
    """(broadcast shape, x and y as 1-d copies of it), or (None, (x, y)) when they do not
    broadcast."""
    try:
        shape = np.broadcast_shapes(x.shape, y.shape)
    except ValueError:
        return None, (x, y)
    return shape, tuple(np.broadcast_to(v, shape).reshape(-1).copy() for v in (x, y))


def _broadcastable(rng, shape):
    r = rng.random()
    if r < 0.4:
        return shape
    if r < 0.85:
        return _broadcast_source(rng, shape)
    if r < 0.92:  # broadcasting the other way: x's size-1 axes grow
        return tuple(int(rng.choice([2, 3])) if d == 1 else d for d in shape)
    return _shape(rng)  # mostly incompatible


def _broadcast_source(rng, shape):
    keep = int(rng.integers(0, len(shape) + 1))
    tail = shape[len(shape) - keep :]
    return tuple(1 if rng.random() < 0.4 else d for d in tail)


def _matmul_case(rng, device, dtype):
    m, n, p = (int(rng.choice([0, 1, 2, 3, 5, 8, 17])) for _ in range(3))
    batch = _shape(rng, ndim=int(rng.integers(0, 3)), hi=3)
    ba = tuple(1 if rng.random() < 0.3 else d for d in batch)
    bb = tuple(1 if rng.random() < 0.3 else d for d in batch)
    if rng.random() < 0.5:
        ba = ba[int(rng.integers(0, len(ba) + 1)) :]
    else:
        bb = bb[int(rng.integers(0, len(bb) + 1)) :]
    n2 = n if rng.random() < 0.95 else n + 1
    ta, tb = bool(rng.random() < 0.4), bool(rng.random() < 0.4)
    special = 0.0 if rng.random() < 0.7 else 1.0
    x = _values(rng, ba + ((n, m) if ta else (m, n)), dtype, special, huge=False)
    y = _values(rng, bb + ((p, n2) if tb else (n2, p)), dtype, special, huge=False)
    eps = _eps(dtype)
    desc = f"{device.name} {np.dtype(dtype).name} matmul x{x.shape}{'.T' if ta else ''} @ "
    desc += f"y{y.shape}{'.T' if tb else ''}"

    def swap(arr, t):
        return arr.swapaxes(-1, -2) if t else arr

    def run():
        name = np.dtype(dtype).name
        a = swap(NDArray(x, device=device, dtype=name), ta)
        b = swap(NDArray(y, device=device, dtype=name), tb)
        xs, ys = swap(x, ta), swap(y, tb)
        got, want = _attempt(lambda: a @ b), _np_attempt(lambda: xs @ ys)
        if isinstance(got, Exception) or isinstance(want, Exception):
            return _errors(got, want)
        with np.errstate(all="ignore"):
            scale = np.abs(xs.astype(np.float64)) @ np.abs(ys.astype(np.float64))
        return _close(got.numpy(), want, 2 * (n + 2) * eps * scale, 0.0)

    return desc, run


TENSOR_UNARY = {
    "exp": (ndl.ops.exp, np.exp, np.exp),
    "tanh": (ndl.ops.tanh, np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "relu": (ndl.ops.relu, lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(x.dtype)),
    "sigmoid": (
        ndl.ops.sigmoid,
        lambda x: 1 / (1 + np.exp(-x)),
        lambda x: (1 / (1 + np.exp(-x))) * (1 - 1 / (1 + np.exp(-x))),
    ),
    "log": (ndl.ops.log, np.log, lambda x: 1 / x),
    "square": (lambda t: t * t, np.square, lambda x: 2 * x),
}


def _tensor_case(rng, device, dtype):
    """A Tensor op, summed against random weights, with backward vs the NumPy gradient."""
    kind = rng.choice(["unary", "unary", "matmul", "broadcast_sum"])
    name = np.dtype(dtype).name
    eps = _eps(dtype)
    tol = 1e3 * eps
    if kind == "unary":
        fn = list(TENSOR_UNARY)[int(rng.integers(len(TENSOR_UNARY)))]
        na_fn, np_fn, np_grad = TENSOR_UNARY[fn]
        shape = _shape(rng, lo=1)
        x = _values(rng, shape, dtype, 0.0)
        if fn == "log":
            x = np.abs(x) + dtype(0.5)
        w = _values(rng, shape, dtype, 0.0)

        def run():
            t = ndl.Tensor(x, device=device, dtype=name, requires_grad=True)
            out = na_fn(t)
            (out * ndl.Tensor(w, device=device, dtype=name, requires_grad=False)).sum().backward()
            return _close(out.numpy(), np_fn(x), tol, tol) or _close(
                t.grad.numpy(), np_grad(x) * w, tol, tol
            )

        return f"{device.name} {name} tensor {fn} x{shape} backward", run
    if kind == "matmul":
        m, n, p = (int(rng.integers(1, 6)) for _ in range(3))
        x = _values(rng, (m, n), dtype, 0.0)
        y = _values(rng, (n, p), dtype, 0.0)
        w = _values(rng, (m, p), dtype, 0.0)

        def run():
            ta = ndl.Tensor(x, device=device, dtype=name, requires_grad=True)
            tb = ndl.Tensor(y, device=device, dtype=name, requires_grad=True)
            out = ta @ tb
            (out * ndl.Tensor(w, device=device, dtype=name, requires_grad=False)).sum().backward()
            scale = np.abs(x) @ np.abs(y) + 1
            return (
                _close(out.numpy(), x @ y, tol * scale, 0.0)
                or _close(ta.grad.numpy(), w @ y.T, tol * (np.abs(w) @ np.abs(y.T) + 1), 0.0)
                or _close(tb.grad.numpy(), x.T @ w, tol * (np.abs(x.T) @ np.abs(w) + 1), 0.0)
            )

        return f"{device.name} {name} tensor matmul ({m},{n})@({n},{p}) backward", run
    # broadcast_to then summation over some axes
    src = _shape(rng, lo=1, hi=3)
    big = tuple(int(rng.choice([2, 3])) if d == 1 else d for d in src)
    big = _shape(rng, ndim=int(rng.integers(0, 2)), lo=1) + big
    axes = tuple(sorted({int(i) for i in rng.integers(0, max(len(big), 1), size=2)}))
    if not big:
        axes = None
    x = _values(rng, src, dtype, 0.0)
    w_shape = tuple(d for i, d in enumerate(big) if axes is not None and i not in axes)
    w = _values(rng, w_shape, dtype, 0.0)

    def run():
        t = ndl.Tensor(x, device=device, dtype=name, requires_grad=True)
        out = ndl.ops.summation(ndl.ops.broadcast_to(t, big), axes=axes)
        (out * ndl.Tensor(w, device=device, dtype=name, requires_grad=False)).sum().backward()
        want = np.sum(np.broadcast_to(x, big), axis=axes)
        g = np.broadcast_to(np.expand_dims(w, axes) if axes else w, big).astype(np.float64)
        lead = len(big) - len(src)
        g = g.sum(axis=tuple(range(lead)))
        g = g.sum(axis=tuple(i for i, d in enumerate(src) if d == 1), keepdims=True)
        return _close(out.numpy(), want.astype(dtype), tol * 10, tol) or _close(
            t.grad.numpy(), g.astype(dtype), tol * 10, tol
        )

    return f"{device.name} {name} tensor broadcast_to{big}.sum({axes}) of x{src} backward", run


def describe(seed: int, index: int) -> str:
    return _case(seed, index)[0]


def check(seed: int, index: int) -> str | None:
    desc, run = _case(seed, index)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        message = run()
    return None if message is None else f"{desc}: {message}"


def main(argv: list[str]) -> int:
    seed, start, stop = (int(v) for v in argv[:3])
    verbose = "-v" in argv
    out = sys.stdout
    for i in range(start, stop):
        out.write(f"start {i}\n")
        out.flush()
        if verbose:
            out.write(describe(seed, i) + "\n")
        message = check(seed, i)
        if message is not None:
            out.write(f"mismatch {i} {message}\n".replace("\n", " ").rstrip() + "\n")
    out.write("done\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
