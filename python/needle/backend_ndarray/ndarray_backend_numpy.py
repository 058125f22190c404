"""NumPy reference backend: the executable specification of the primitive table.

The table itself (names, parameters, core or optional, dtypes) is declared in
``primitives.py``; this module implements its core rows, and the optional rows it can state
more plainly than their fallbacks, with NumPy, clarity over speed. Every other backend is
tested against it primitive by primitive (``tests/backends``). The elementwise families are
generated from the table's NumPy references. The conventions every backend shares are in
``primitives.py``'s docstring.
"""

import functools

import numpy as np

from . import primitives

__device_name__ = "cpu_numpy"
__tile_size__ = 8  # matmul_tiled (the table's fallback) reads tiles of this size

DTYPES = primitives.DTYPES


class Array:
    """A flat buffer of `size` elements of one of the table's dtypes (bool: NumPy's bool)."""

    def __init__(self, size: int, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise TypeError(f"cpu_numpy: Array dtype {dtype!r} is not one of {DTYPES}")
        self.array = np.empty(size, dtype=primitives.numpy_dtype(dtype))

    @classmethod
    def over(cls, flat: np.ndarray) -> "Array":
        """An Array whose buffer is the 1-D NumPy array `flat` itself (no copy): the numpy
        mode's data, shared with the ops (a dtype outside the table is refused by its rows)."""
        array = cls.__new__(cls)
        array.array = flat
        return array

    @property
    def size(self) -> int:
        return self.array.size

    @property
    def dtype(self) -> str:
        return self.array.dtype.name

    def ptr(self) -> int:
        return self.array.ctypes.data


def _view(a: Array, shape, strides, offset) -> np.ndarray:
    # as_strided reads whatever memory a view names: check it against the buffer first.
    primitives.check_view("cpu_numpy", shape, strides, offset, a.size)
    itemsize = a.array.itemsize
    return np.lib.stride_tricks.as_strided(
        a.array[offset:], tuple(shape), tuple(s * itemsize for s in strides)
    )


# ---- memory -------------------------------------------------------------------------
def to_numpy(a: Array, shape, strides, offset) -> np.ndarray:
    return _view(a, shape, strides, offset).copy()


def from_numpy(a: np.ndarray, out: Array) -> None:
    out.array[:] = a.reshape(-1)


def astype(a: Array, out: Array) -> None:
    """out = a converted to out's dtype (NumPy's astype; ml_dtypes' for bfloat16)."""
    with np.errstate(all="ignore"):  # overflow to inf, NaN: as the row says
        out.array[:] = primitives.to_numpy_dtype(a.array, out.array.dtype.name)


def _scalar_of(a: Array, val: float):
    """val in a's dtype: bool is val != 0; an integer dtype takes a whole number in range
    (NDArray guarantees it; int() keeps it exact, and NumPy raises outside the range)."""
    dt = a.array.dtype
    if dt.kind in "iu":
        return dt.type(int(val))
    with np.errstate(over="ignore"):  # beyond a 16-bit float's range: inf, as the row says
        return dt.type(np.float32(val) if dt.name == "bfloat16" else val)  # (to_numpy_dtype's)


def fill(out: Array, val: float) -> None:
    out.array.fill(_scalar_of(out, val))


# ---- layout -------------------------------------------------------------------------
def compact(a: Array, out: Array, shape, strides, offset) -> None:
    out.array[:] = _view(a, shape, strides, offset).reshape(-1)


def ewise_setitem(a: Array, out: Array, shape, strides, offset) -> None:
    _view(out, shape, strides, offset)[...] = a.array.reshape(shape)


def scalar_setitem(size: int, val: float, out: Array, shape, strides, offset) -> None:
    primitives.check_size("scalar_setitem", size, shape)
    _view(out, shape, strides, offset)[...] = _scalar_of(out, val)


# ---- elementwise families: generated from the table's rows ----------------------------
# Integers wrap around on overflow as NumPy's array arithmetic does (abs(INT_MIN) == INT_MIN,
# -uint8(1) == 255); errstate keeps NumPy from warning where it would on a scalar operand.
def _unary(reference):
    def primitive(a: Array, out: Array) -> None:
        with np.errstate(over="ignore"):
            out.array[:] = reference(a.array)

    return primitive


def _binary(reference):
    def primitive(a: Array, b: Array, out: Array) -> None:
        with np.errstate(over="ignore"):
            out.array[:] = reference(a.array, b.array)

    return primitive


def _scalar(reference):
    def primitive(a: Array, val: float, out: Array) -> None:
        with np.errstate(over="ignore"):
            out.array[:] = reference(a.array, _scalar_of(a, val))

    return primitive


for _prim in primitives.TABLE.values():
    _make = {"unary": _unary, "binary": _binary, "scalar": _scalar}.get(_prim.group)
    if _make is not None and _prim.reference is not None:
        globals()[_prim.name] = _make(_prim.reference)
        globals()[_prim.name].__name__ = _prim.name
        globals()[_prim.name].__doc__ = _prim.doc
del _prim, _make


def ewise_axpby(a: Array, b: Array, alpha: float, beta: float, out: Array) -> None:
    """out = alpha * a + beta * b, the scalars rounded to the dtype first; out may be a or b
    (the optimizers' in-place update w = w - lr * grad is ewise_axpby(w, grad, 1, -lr, w))."""
    dt = out.array.dtype.type
    out.array[:] = dt(alpha) * a.array[: out.size] + dt(beta) * b.array[: out.size]


# ---- fused row primitives ----
def pool2d(a, out, planes, h, w, kernel, stride, padding, op) -> None:
    """Max ('max', padding -inf), mean ('avg', padding zeros) or first argmax of each window."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = primitives.pool2d_out(h, w, kernel, stride, padding)
    if planes * ho * wo == 0:
        return
    x = a.array[: planes * h * w].reshape(planes, h, w)
    fill = 0.0 if op == "avg" else -np.inf
    x = np.pad(x, ((0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    s = x.strides
    windows = np.lib.stride_tricks.as_strided(
        x, (planes, ho, wo, kh, kw), (s[0], s[1] * sh, s[2] * sw, s[1], s[2])
    ).reshape(planes, ho, wo, kh * kw)
    if op == "argmax":
        result = windows.argmax(axis=3)
    else:
        result = windows.max(axis=3) if op == "max" else windows.sum(axis=3) / (kh * kw)
    out.array[: planes * ho * wo] = result.reshape(-1)


def softmax_rows(a: Array, out: Array, rows: int, cols: int, log: bool) -> None:
    """softmax (log_softmax with `log`) of each row of the compact (rows, cols) a."""
    if rows * cols == 0:
        return
    x = a.array[: rows * cols].reshape(rows, cols)
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=1, keepdims=True)
    out.array[: rows * cols] = (shifted - np.log(total) if log else e / total).reshape(-1)


def cross_entropy_rows(
    z: Array, labels: Array, loss: Array, grad: Array, rows: int, cols: int, truncate: bool
) -> None:
    """Mean softmax cross-entropy of the compact (rows, cols) z and its gradient."""
    x = z.array[: rows * cols].reshape(rows, cols)
    value, g = primitives.cross_entropy_of_rows(x, labels.array[:rows], truncate)
    loss.array[0] = value
    grad.array[: rows * cols] = g.reshape(-1)


def softmax_grad_rows(s: Array, g: Array, out: Array, rows: int, cols: int) -> None:
    """s * (g - sum(g * s)) on each row of the compact (rows, cols) s and g."""
    if rows * cols == 0:
        return
    sv, gv = (x.array[: rows * cols].reshape(rows, cols) for x in (s, g))
    out.array[: rows * cols] = (sv * (gv - (gv * sv).sum(axis=1, keepdims=True))).reshape(-1)


def layer_norm_rows(a: Array, out: Array, rows: int, cols: int, eps: float) -> None:
    """(x - mean) / sqrt(var + eps) of each row of the compact (rows, cols) a (biased var)."""
    if rows * cols == 0:
        return
    x = a.array[: rows * cols].reshape(rows, cols)
    centred = x - x.mean(axis=1, keepdims=True)
    var = (centred * centred).mean(axis=1, keepdims=True)
    out.array[: rows * cols] = (centred / np.sqrt(var + eps)).reshape(-1)


def layer_norm_grad_rows(a: Array, g: Array, out: Array, rows: int, cols: int, eps: float) -> None:
    """layer_norm_rows' adjoint on each row: rstd * (g - mean(g) - y * mean(g * y))."""
    if rows * cols == 0:
        return
    x, gv = (v.array[: rows * cols].reshape(rows, cols) for v in (a, g))
    centred = x - x.mean(axis=1, keepdims=True)
    rstd = 1 / np.sqrt((centred * centred).mean(axis=1, keepdims=True) + eps)
    y = centred * rstd
    dx = rstd * (gv - gv.mean(axis=1, keepdims=True) - y * (gv * y).mean(axis=1, keepdims=True))
    out.array[: rows * cols] = dx.reshape(-1)


def lstm_cell(gates: Array, c: Array, out: Array, act: Array, batch: int, hidden: int) -> None:
    """An LSTM cell's new state from gate pre-activations (batch, 4, hidden) in the order i,
    f, g, o: out = (h', c') as (2, batch, hidden) and act = (i, f, g, o, tanh(c')) activated,
    as (batch, 5, hidden)."""
    n = batch * hidden
    if n == 0:
        return
    x = gates.array[: 4 * n].reshape(batch, 4, hidden)
    i, f, o = (primitives.UNARY["sigmoid"](x[:, k]) for k in (0, 1, 3))
    g = np.tanh(x[:, 2])
    c_new = f * c.array[:n].reshape(batch, hidden) + i * g
    tanh_c = np.tanh(c_new)
    out.array[: 2 * n] = np.stack([o * tanh_c, c_new]).reshape(-1)
    act.array[: 5 * n] = np.stack([i, f, g, o, tanh_c], axis=1).reshape(-1)


def lstm_cell_grad(
    dy: Array, act: Array, c: Array, d_gates: Array, d_c: Array, batch: int, hidden: int
) -> None:
    """lstm_cell's adjoint for dy = (d_h', d_c') (2, batch, hidden), from its act and c."""
    n = batch * hidden
    if n == 0:
        return
    i, f, g, o, tanh_c = np.moveaxis(act.array[: 5 * n].reshape(batch, 5, hidden), 1, 0)
    d_h, d_c_new = dy.array[: 2 * n].reshape(2, batch, hidden)
    d_cell = d_c_new + d_h * o * (1 - tanh_c * tanh_c)
    grads = [
        d_cell * g * i * (1 - i),
        d_cell * c.array[:n].reshape(batch, hidden) * f * (1 - f),
        d_cell * i * (1 - g * g),
        d_h * tanh_c * o * (1 - o),
    ]
    d_gates.array[: 4 * n] = np.stack(grads, axis=1).reshape(-1)
    d_c.array[:n] = (d_cell * f).reshape(-1)


# ---- convolution ----------------------------------------------------------------------
def _conv_views(n, height, width, c_in, kh, kw, c_out, stride, padding):
    """The output size and, per kernel tap, the (n, oh, ow, c) slices of the padded input."""
    oh = (height + 2 * padding - kh) // stride + 1
    ow = (width + 2 * padding - kw) // stride + 1
    taps = [
        (
            i,
            j,
            np.s_[
                :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride
            ],
        )
        for i in range(kh)
        for j in range(kw)
    ]
    return oh, ow, taps


def _conv_padded(x, padding):
    return np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def conv2d(a, b, out, n, height, width, c_in, kh, kw, c_out, stride, padding) -> None:
    """out (n, oh, ow, c_out) = the correlation of the NHWC input a (n, height, width, c_in),
    zero-padded by `padding`, with the weights b (kh, kw, c_in, c_out) at `stride`."""
    oh, ow, taps = _conv_views(n, height, width, c_in, kh, kw, c_out, stride, padding)
    x = _conv_padded(a.array[: n * height * width * c_in].reshape(n, height, width, c_in), padding)
    w = b.array[: kh * kw * c_in * c_out].reshape(kh, kw, c_in, c_out)
    y = np.zeros((n, oh, ow, c_out), dtype=out.array.dtype)
    for i, j, view in taps:
        y += x[view] @ w[i, j]
    out.array[: y.size] = y.reshape(-1)


def conv2d_input_grad(a, b, out, n, height, width, c_in, kh, kw, c_out, stride, padding) -> None:
    """out (n, height, width, c_in) = d conv2d / d input for the adjoint a (n, oh, ow, c_out)
    and the weights b."""
    oh, ow, taps = _conv_views(n, height, width, c_in, kh, kw, c_out, stride, padding)
    g = a.array[: n * oh * ow * c_out].reshape(n, oh, ow, c_out)
    w = b.array[: kh * kw * c_in * c_out].reshape(kh, kw, c_in, c_out)
    shape = (n, height + 2 * padding, width + 2 * padding, c_in)
    dx = np.zeros(shape, dtype=out.array.dtype)
    for i, j, view in taps:
        dx[view] += g @ w[i, j].T
    dx = dx[:, padding : padding + height, padding : padding + width]
    out.array[: dx.size] = dx.reshape(-1)


def conv2d_weight_grad(a, b, out, n, height, width, c_in, kh, kw, c_out, stride, padding) -> None:
    """out (kh, kw, c_in, c_out) = d conv2d / d weights for the input a and the adjoint b
    (n, oh, ow, c_out)."""
    oh, ow, taps = _conv_views(n, height, width, c_in, kh, kw, c_out, stride, padding)
    x = _conv_padded(a.array[: n * height * width * c_in].reshape(n, height, width, c_in), padding)
    g = b.array[: n * oh * ow * c_out].reshape(-1, c_out)
    dw = np.zeros((kh, kw, c_in, c_out), dtype=out.array.dtype)
    for i, j, view in taps:
        dw[i, j] = x[view].reshape(-1, c_in).T @ g
    out.array[: dw.size] = dw.reshape(-1)


def conv2d_bias(a, b, bias, out, n, height, width, c_in, kh, kw, c_out, stride, padding) -> None:
    """conv2d's out plus bias (c_out) on each output pixel."""
    conv2d(a, b, out, n, height, width, c_in, kh, kw, c_out, stride, padding)
    if out.size:
        y = out.array[: out.size].reshape(-1, c_out)
        y += bias.array[:c_out]


def conv2d_weight_bias_grad(
    a, b, out, d_bias, n, height, width, c_in, kh, kw, c_out, stride, padding
) -> None:
    """conv2d_weight_grad's out, and d_bias (c_out): the adjoint b summed over its pixels."""
    conv2d_weight_grad(a, b, out, n, height, width, c_in, kh, kw, c_out, stride, padding)
    oh, ow, _ = _conv_views(n, height, width, c_in, kh, kw, c_out, stride, padding)
    g = b.array[: n * oh * ow * c_out].reshape(-1, c_out)
    d_bias.array[:c_out] = g.sum(axis=0, dtype=np.float64)


def batch_norm_rows(a, weight, bias, out, mean, var, rows, cols, eps) -> None:
    """Each column (feature) of the compact (rows, cols) a normalised over the rows: out =
    (a - mean) / sqrt(var + eps) * weight + bias, with the mean and biased var also written."""
    x = a.array[: rows * cols].reshape(rows, cols).astype(np.float64)
    m, v = x.mean(axis=0), x.var(axis=0)
    w, b = weight.array[:cols], bias.array[:cols]
    y = (x - m) / np.sqrt(v + eps) * w + b
    out.array[: rows * cols] = y.reshape(-1)
    mean.array[:cols], var.array[:cols] = m, v


def batch_norm_rows_grad(dy, a, mean, inv_std, weight, dx, d_weight, d_bias, rows, cols) -> None:
    """batch_norm_rows's gradient for the adjoint dy: d_bias = sum dy, d_weight = sum dy xhat,
    dx = weight inv_std (dy - d_bias / rows - xhat d_weight / rows), xhat = (a - mean) inv_std."""
    g = dy.array[: rows * cols].reshape(rows, cols).astype(np.float64)
    x = a.array[: rows * cols].reshape(rows, cols)
    m, s, w = mean.array[:cols], inv_std.array[:cols], weight.array[:cols]
    xhat = (x - m) * s
    db, dw = g.sum(axis=0), (g * xhat).sum(axis=0)
    dx.array[: rows * cols] = (w * s * (g - db / rows - xhat * dw / rows)).reshape(-1)
    d_weight.array[:cols], d_bias.array[:cols] = dw, db


# ---- rows by index --------------------------------------------------------------------
def gather_rows(a: Array, indices: Array, out: Array, n: int, row_size: int) -> None:
    """Row i of out = row indices[i] of a, for i < n; rows are row_size elements. indices
    is an int64 Array of row numbers in [0, a.size // row_size), checked by NDArray."""
    idx = indices.array[:n]
    out.array[: n * row_size] = (
        a.array[: a.size // row_size * row_size].reshape(-1, row_size)[idx].reshape(-1)
    )


def gather_axis(
    a: Array, indices: Array, out: Array, outer: int, n: int, inner: int, m: int
) -> None:
    """out[o, j, i] = a[o, indices[o, j, i], i]; IndexError for an index outside [0, n)."""
    count = outer * m * inner
    if count == 0:
        return
    src = a.array[: outer * n * inner].reshape(outer, n, inner)
    idx = indices.array[:count].reshape(outer, m, inner)
    primitives.check_gather_indices(idx, n)
    out.array[:count] = np.take_along_axis(src, idx, axis=1).reshape(-1)


def scatter_add_axis(
    a: Array, indices: Array, out: Array, outer: int, n: int, inner: int, m: int
) -> None:
    """out[o, indices[o, j, i], i] += a[o, j, i] in index order; IndexError outside [0, n)."""
    count = outer * m * inner
    if count == 0:
        return
    idx = indices.array[:count].reshape(outer, m, inner)
    primitives.check_gather_indices(idx, n, "scatter_add")
    np.add.at(out.array, primitives.axis_positions(idx, outer, n, inner), a.array[:count])


def scatter_add_rows(a: Array, indices: Array, out: Array, n: int, row_size: int) -> None:
    """Row indices[i] of out += row i of a, for i < n; repeated indices add up. indices as in
    gather_rows, in [0, out.size // row_size)."""
    idx = indices.array[:n]
    rows = out.array[: out.size // row_size * row_size].reshape(-1, row_size)
    np.add.at(rows, idx, a.array[: n * row_size].reshape(n, row_size))


# ---- linear algebra -----------------------------------------------------------------
def _wide(x: np.ndarray) -> np.ndarray:
    """A 16-bit float array in float32 (exact), where its products are summed; else x."""
    return x.astype(np.float32) if x.dtype.name in primitives.HALFS else x


def matmul(a: Array, b: Array, out: Array, m: int, n: int, p: int) -> None:
    """(m, n) @ (n, p) -> (m, p), all compact row-major; 16-bit operands in float32, the
    result rounded once into out."""
    out.array[:] = (
        _wide(a.array[: m * n]).reshape(m, n) @ _wide(b.array[: n * p]).reshape(n, p)
    ).reshape(-1)


def batched_matmul(a: Array, b: Array, out: Array, batch: int, m: int, n: int, p: int) -> None:
    """(batch, m, n) @ (batch, n, p) -> (batch, m, p), all compact row-major (as matmul)."""
    out.array[:] = np.matmul(
        _wide(a.array).reshape(batch, m, n), _wide(b.array).reshape(batch, n, p)
    ).reshape(-1)


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


# ---- dtype checks: every row above, generated from its dtypes ------------------------
def _checked(prim: primitives.Primitive, impl):
    """`impl` behind a TypeError naming the primitive and dtype unless its first Array (or
    out) has a dtype the row lists, the other Arrays share it (out: the row's out_dtype)
    and index Arrays are int64."""
    names = prim.param_names
    kinds = {p.name: p.kind for p in prim.params}
    arrays = [n for n in names if kinds[n] in ("array", "numpy", "out", "inout", "index")]
    main = next(n for n in arrays if kinds[n] != "index")
    if kinds[main] == "numpy":  # from_numpy: out's dtype is the one the row takes
        main = next(n for n in arrays if kinds[n] in ("out", "inout"))

    @functools.wraps(impl)  # keeps impl's signature: the table's parameter names
    def primitive(*args, **kwargs):
        bound = dict(zip(names, args), **kwargs)
        dtype = bound[main].dtype
        if dtype not in prim.dtypes:
            raise TypeError(f"cpu_numpy: {prim.name} does not take dtype {dtype}")
        for n in arrays:
            got = getattr(bound[n].dtype, "name", bound[n].dtype)  # an Array's or NumPy's
            want = (
                primitives.INDEX_DTYPE
                if kinds[n] == "index"
                else prim.out_dtype
                if kinds[n] == "out" and prim.out_dtype
                else dtype
            )
            if want == primitives.ANY_DTYPE and got in DTYPES:
                continue
            if got != want:
                raise TypeError(f"cpu_numpy: {prim.name}: {n} is {got}, not {want}")
        return impl(*args, **kwargs)

    primitive.__doc__ = impl.__doc__ or prim.doc
    return primitive


for _prim in primitives.TABLE.values():
    if _prim.name in globals() and _prim.params:
        globals()[_prim.name] = _checked(_prim, globals()[_prim.name])
del _prim
