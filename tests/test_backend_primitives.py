"""The C++ CPU backend agrees with the NumPy reference backend, primitive by primitive.

Every primitive is called on both modules with the same inputs and by keyword, using the
parameter names of the NumPy module, so argument names and order are checked as well.
"""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from needle.backend_ndarray import ndarray_backend_numpy as nb_np
from primitive_calls import Out, call, operand, read, to_array

try:
    from needle.backend_ndarray import ndarray_backend_cpu as nb_cpu
except ImportError as exc:  # the extension is built by `pip install -e .`
    pytest.skip(f"ndarray_backend_cpu is not built: {exc}", allow_module_level=True)

DTYPES = ("float32", "float64")
TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-14)}
EPS = {"float32": 1.2e-7, "float64": 2.3e-16}
SIZES = (0, 1, 7, 64, 1001)


# ---- helpers ---------------------------------------------------------------------------
def check(name, *args, dtype, exact=False, **tol):
    expected = call(nb_np, name, *args, dtype=dtype)
    actual = call(nb_cpu, name, *args, dtype=dtype)
    assert actual.dtype == expected.dtype == np.dtype(dtype)
    if exact:
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, equal_nan=True, **{**TOL[dtype], **tol})


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---- module surface --------------------------------------------------------------------
def test_same_primitive_table():
    public = {n for n in dir(nb_np) if not n.startswith("_") and n != "np"}
    assert public <= set(dir(nb_cpu))
    assert nb_cpu.__device_name__ == "cpu"
    assert nb_cpu.__tile_size__ == nb_np.__tile_size__ == 8
    assert tuple(nb_cpu.DTYPES) == nb_np.DTYPES


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [0, 1, 5, 1000])
def test_array(dtype, size):
    arr = nb_cpu.Array(size, dtype)
    assert arr.size == size and arr.dtype == dtype
    assert arr.ptr() != 0 and arr.ptr() % 64 == 0


def test_array_default_dtype():
    assert nb_cpu.Array(3).dtype == nb_np.Array(3).dtype == "float32"
    assert nb_cpu.Array(size=3, dtype="float64").dtype == "float64"


@pytest.mark.parametrize("dtype", ["int8", "float16", "int64", "complex64", ""])
def test_array_rejects_unsupported_dtype(dtype):
    with pytest.raises(ValueError):
        nb_cpu.Array(4, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_numpy_rejects_wrong_dtype(dtype):
    arr = nb_cpu.Array(4, dtype)
    other = "float64" if dtype == "float32" else "float32"
    for bad in (np.zeros(4, other), np.zeros(4, np.int32), np.zeros(4, bool)):
        with pytest.raises(TypeError):
            nb_cpu.from_numpy(bad, arr)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [0, 3, 5])
def test_from_numpy_rejects_wrong_size(dtype, size):
    arr = nb_cpu.Array(4, dtype)
    with pytest.raises(ValueError):
        nb_cpu.from_numpy(np.zeros(size, dtype), arr)


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_numpy_accepts_any_layout(dtype, rng):
    x = rng.standard_normal((6, 4)).astype(dtype)
    for src in (x, x.T, x[::2], x[:, ::-1], np.asfortranarray(x)):
        arr = nb_cpu.Array(src.size, dtype)
        nb_cpu.from_numpy(src, arr)
        np.testing.assert_array_equal(read(nb_cpu, arr), src.reshape(-1))


def test_mixed_dtypes_raise():
    a, b = nb_cpu.Array(3, "float32"), nb_cpu.Array(3, "float64")
    with pytest.raises(TypeError):
        nb_cpu.ewise_add(a, b, nb_cpu.Array(3, "float32"))
    with pytest.raises(TypeError):
        nb_cpu.compact(a, b, (3,), (1,), 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_numpy_returns_an_owned_copy(dtype):
    arr = to_array(nb_cpu, np.arange(6, dtype=dtype))
    view = nb_cpu.to_numpy(arr, (2, 3), (3, 1), 0)
    nb_cpu.fill(arr, -1.0)
    del arr
    np.testing.assert_array_equal(view, np.arange(6, dtype=dtype).reshape(2, 3))
    assert view.dtype == np.dtype(dtype) and view.flags.writeable
    view[0, 0] = 5.0


def test_shape_arguments_accept_lists_and_numpy_ints():
    arr = to_array(nb_cpu, np.arange(6, dtype="float32"))
    got = nb_cpu.to_numpy(arr, [np.int64(3), 2], (np.int32(1), 3), np.int64(0))
    np.testing.assert_array_equal(got, np.arange(6, dtype="float32").reshape(2, 3).T)


def test_synchronize():
    assert nb_cpu.synchronize() is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("val", [0.0, -2.5, 3, 1e30])
def test_fill(dtype, val):
    check("fill", Out(17), val, dtype=dtype, exact=True)


# ---- strided views (hypothesis) --------------------------------------------------------
@st.composite
def strided_views(draw, allow_broadcast=True):
    """(storage size, shape, strides, offset) of a random numpy view of a compact parent.

    NumPy does the geometry: slices with steps (negative included), integer indices,
    permutations and broadcasting; strides and offset are then read back in elements.
    """
    parent_shape = draw(st.lists(st.integers(1, 6), max_size=4))
    base = np.zeros(math.prod(parent_shape))
    view = base.reshape(parent_shape)
    index = tuple(
        draw(st.one_of(st.slices(n), st.integers(0, n - 1))) if n > 1 else draw(st.slices(n))
        for n in parent_shape
    )
    view = view[index + (Ellipsis,)]  # Ellipsis keeps a 0-d result a view, not a scalar
    view = view.transpose(draw(st.permutations(range(view.ndim))))
    if allow_broadcast and draw(st.booleans()):
        lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
        grown = tuple(draw(st.integers(1, 3)) if n == 1 else n for n in view.shape)
        view = np.broadcast_to(view, lead + grown)
    itemsize = base.itemsize
    offset = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0])
    return (
        base.size,
        view.shape,
        tuple(s // itemsize for s in view.strides),
        offset // itemsize,
    )


view_settings = settings(max_examples=150, deadline=None)


@pytest.mark.parametrize("dtype", DTYPES)
@view_settings
@given(spec=strided_views())
def test_to_numpy(dtype, spec):
    size, shape, strides, offset = spec
    data = np.random.default_rng(size).standard_normal(size).astype(dtype)
    expected = nb_np.to_numpy(to_array(nb_np, data), shape, strides, offset)
    actual = nb_cpu.to_numpy(to_array(nb_cpu, data), shape, strides, offset)
    assert actual.shape == expected.shape == shape and actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@view_settings
@given(spec=strided_views())
def test_compact(dtype, spec):
    size, shape, strides, offset = spec
    data = np.random.default_rng(size).standard_normal(size)
    check("compact", data, Out(math.prod(shape)), shape, strides, offset, dtype=dtype, exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
@view_settings
@given(spec=strided_views(allow_broadcast=False))
def test_ewise_setitem(dtype, spec):
    size, shape, strides, offset = spec
    rng = np.random.default_rng(size)
    src, init = rng.standard_normal(math.prod(shape)), rng.standard_normal(size)
    check("ewise_setitem", src, Out(size, init), shape, strides, offset, dtype=dtype, exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
@view_settings
@given(spec=strided_views(), val=st.floats(-1e6, 1e6))
def test_scalar_setitem(dtype, spec, val):
    size, shape, strides, offset = spec
    init = np.random.default_rng(size).standard_normal(size)
    check(
        "scalar_setitem", math.prod(shape), val, Out(size, init), shape, strides, offset,
        dtype=dtype, exact=True,
    )


# Views NumPy slicing cannot produce: overlapping windows and mixed 0-strides.
ODD_VIEWS = [
    (5, (3, 3), (1, 1), 0),
    (10, (2, 3, 2), (2, 2, 1), 1),
    (6, (3, 2), (0, 1), 2),
    (7, (2, 2, 2), (3, 0, 1), 0),
    (11, (2, 2, 3), (2, 2, -1), 6),
    (4, (1, 4, 1), (5, 1, 7), 0),
]


BROADCAST_OPS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
                 "maximum": np.maximum, "eq": np.equal, "ge": np.greater_equal}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outer, inner", [(1, 1), (3, 7), (5, 33), (300, 257)])
@pytest.mark.parametrize("op", BROADCAST_OPS)
def test_ewise_broadcast_binary(op, outer, inner, dtype, rng):
    """The CPU backend's binary ops against a vector repeated along rows or columns (a
    specialised primitive: the NumPy reference has none), against NumPy's broadcasting."""
    full = operand(rng, "ties" if op in ("maximum", "eq", "ge") else "normal", outer * inner)
    for per_column in (True, False):
        size = inner if per_column else outer
        vector = operand(rng, "ties" if op in ("maximum", "eq", "ge") else "nonzero", size)
        v2 = vector.reshape(1, inner) if per_column else vector.reshape(outer, 1)
        f2 = full.reshape(outer, inner)
        for vector_first in (False, True):
            out = nb_cpu.Array(outer * inner, dtype)
            nb_cpu.ewise_broadcast_binary(op, to_array(nb_cpu, full, dtype),
                                          to_array(nb_cpu, vector, dtype), out, outer, inner,
                                          per_column, vector_first)
            x, y = f2.astype(dtype), v2.astype(dtype)
            expected = BROADCAST_OPS[op](y, x) if vector_first else BROADCAST_OPS[op](x, y)
            np.testing.assert_allclose(read(nb_cpu, out), expected.astype(dtype).reshape(-1),
                                       **TOL[dtype])
    with pytest.raises(ValueError, match="unknown op 'pow'"):
        nb_cpu.ewise_broadcast_binary("pow", to_array(nb_cpu, full, dtype),
                                      to_array(nb_cpu, full, dtype), nb_cpu.Array(1, dtype),
                                      1, 1, True, False)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_compact_split_across_threads(threads):
    """An im2col view (overlapping 7x7 windows, stride 4), large enough to be split by rows
    across threads, including a thread count that splits rows unevenly."""
    before = nb_cpu.get_num_threads()
    nb_cpu.set_num_threads(threads)
    try:
        data = np.arange(9 * 38 * 38 * 3, dtype=float)
        shape, strides = (9, 8, 8, 7, 7, 3), (4332, 456, 12, 114, 3, 1)
        check("compact", data, Out(math.prod(shape)), shape, strides, 5, dtype="float32",
              exact=True)
        # Rows of one element (a transposed view): the split must not lose or repeat any.
        check("compact", np.arange(300 * 500, dtype=float), Out(300 * 500), (500, 300),
              (1, 500), 0, dtype="float64", exact=True)
    finally:
        nb_cpu.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,shape,strides,offset", ODD_VIEWS)
def test_overlapping_views(size, shape, strides, offset, dtype):
    data = np.arange(size, dtype=float) + 1
    n = math.prod(shape)
    check("compact", data, Out(n), shape, strides, offset, dtype=dtype, exact=True)
    check("scalar_setitem", n, -4.0, Out(size, data), shape, strides, offset,
          dtype=dtype, exact=True)
    expected = nb_np.to_numpy(to_array(nb_np, data.astype(dtype)), shape, strides, offset)
    actual = nb_cpu.to_numpy(to_array(nb_cpu, data.astype(dtype)), shape, strides, offset)
    np.testing.assert_array_equal(actual, expected)


# ---- elementwise -----------------------------------------------------------------------
BINARY = {  # name: (kind of a, kind of b)
    "ewise_add": ("normal", "normal"),
    "ewise_sub": ("normal", "normal"),
    "ewise_mul": ("normal", "normal"),
    "ewise_div": ("normal", "nonzero"),
    "ewise_power": ("positive", "normal"),
    "ewise_maximum": ("ties", "ties"),
    "ewise_eq": ("ties", "ties"),
    "ewise_ge": ("ties", "ties"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", BINARY)
def test_ewise_binary(name, size, dtype, rng):
    ka, kb = BINARY[name]
    check(name, operand(rng, ka, size), operand(rng, kb, size), Out(size), dtype=dtype)


SCALAR = {  # name: (kind of a, values)
    "scalar_add": ("normal", [0.0, -1.5, 3]),
    "scalar_sub": ("normal", [0.0, 2.25, -7]),
    "scalar_rsub": ("normal", [0.0, 2.25, -7]),
    "scalar_mul": ("normal", [0.0, 0.1, -3]),
    "scalar_div": ("normal", [0.1, -3, 7.0]),
    "scalar_rdiv": ("nonzero", [0.0, 1, -2.5]),
    "scalar_power": ("positive", [0, 1, 2, 3, 0.5, -1.5, 0.1]),
    "scalar_maximum": ("ties", [0.0, 1, -0.5]),
    "scalar_eq": ("ties", [0.0, 1, 0.5]),
    "scalar_ge": ("ties", [0.0, 1, -0.5]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", SCALAR)
def test_scalar_binary(name, size, dtype, rng):
    kind, values = SCALAR[name]
    a = operand(rng, kind, size)
    for val in values:
        check(name, a, val, Out(size), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_ewise_axpby(size, dtype, rng):
    a, b = operand(rng, "normal", size), operand(rng, "normal", size)
    for alpha, beta in [(1.0, -0.01), (0.9, 0.1), (0.0, 2.5), (-3, 0)]:
        check("ewise_axpby", a, b, alpha, beta, Out(size), dtype=dtype)
        expected = (np.asarray(alpha, dtype) * a.astype(dtype)
                    + np.asarray(beta, dtype) * b.astype(dtype))
        np.testing.assert_allclose(call(nb_cpu, "ewise_axpby", a, b, alpha, beta, Out(size),
                                        dtype=dtype), expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("into", ["a", "b"])
def test_ewise_axpby_in_place(into, dtype, rng):
    """out may be a or b itself: the optimizers' w = w - lr * grad into w's own buffer."""
    size = 1001
    a, b = operand(rng, "normal", size), operand(rng, "normal", size)
    expected = np.asarray(0.5, dtype) * a.astype(dtype) + np.asarray(-2.0, dtype) * b.astype(dtype)
    for mod in (nb_np, nb_cpu):
        arr_a, arr_b = to_array(mod, a, dtype), to_array(mod, b, dtype)
        out = arr_a if into == "a" else arr_b
        mod.ewise_axpby(a=arr_a, b=arr_b, alpha=0.5, beta=-2.0, out=out)
        np.testing.assert_allclose(read(mod, out), expected, **TOL[dtype])
        np.testing.assert_array_equal(read(mod, arr_b if into == "a" else arr_a),
                                      (b if into == "a" else a).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, rows, row_size", [(0, 3, 4), (1, 1, 1), (7, 5, 3), (400, 50, 100)])
def test_gather_rows(n, rows, row_size, dtype, rng):
    table = operand(rng, "normal", rows * row_size)
    indices = rng.integers(0, rows, n).astype(float)
    check("gather_rows", table, indices, Out(n * row_size), n, row_size, dtype=dtype,
          exact=True)
    if n:  # against plain NumPy too
        got = call(nb_cpu, "gather_rows", table, indices, Out(n * row_size), n, row_size,
                   dtype=dtype)
        np.testing.assert_array_equal(
            got, table.astype(dtype).reshape(rows, row_size)[indices.astype(int)].reshape(-1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, rows, row_size", [(0, 3, 4), (1, 1, 1), (7, 5, 3), (400, 50, 100)])
def test_scatter_add_rows(n, rows, row_size, dtype, rng):
    """Adds onto what out holds; repeated indices (many, with 50 rows) add up."""
    values = operand(rng, "normal", n * row_size)
    indices = rng.integers(0, rows, n).astype(float)
    start = operand(rng, "normal", rows * row_size)
    check("scatter_add_rows", values, indices, Out(rows * row_size, start), n, row_size,
          dtype=dtype)
    expected = start.astype(dtype).reshape(rows, row_size).copy()
    for i, r in enumerate(indices.astype(int)):
        expected[r] += values.astype(dtype).reshape(max(n, 1), row_size)[i]
    got = call(nb_cpu, "scatter_add_rows", values, indices, Out(rows * row_size, start), n,
               row_size, dtype=dtype)
    np.testing.assert_allclose(got, expected.reshape(-1), **TOL[dtype])


def test_scalar_is_rounded_to_the_array_dtype():
    # 0.1 is not a float32; both backends compare against float32(0.1).
    a = np.array([0.1, 0.2], dtype="float32")
    check("scalar_eq", a, 0.1, Out(2), dtype="float32", exact=True)
    check("scalar_ge", a, 0.1, Out(2), dtype="float32", exact=True)
    check("scalar_eq", a, np.float32(0.2), Out(2), dtype="float32", exact=True)


UNARY = {
    "ewise_neg": "normal",
    "ewise_abs": "normal",
    "ewise_sign": "ties",
    "ewise_log": "positive",
    "ewise_exp": "normal",
    "ewise_tanh": "normal",
    "ewise_sqrt": "positive",
    "ewise_sin": "wide",
    "ewise_cos": "wide",
    "ewise_relu": "ties",
    "ewise_sigmoid": "wide",
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", UNARY)
def test_ewise_unary(name, size, dtype, rng):
    check(name, operand(rng, UNARY[name], size), Out(size), dtype=dtype)


SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e30, -1e30, 2.0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["ewise_neg", "ewise_abs", "ewise_sign", "ewise_relu",
                                  "ewise_sigmoid", "ewise_tanh", "ewise_exp"])
def test_unary_special_values(name, dtype):
    with np.errstate(all="ignore"):
        check(name, SPECIAL, Out(SPECIAL.size), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["ewise_add", "ewise_mul", "ewise_div", "ewise_maximum",
                                  "ewise_eq", "ewise_ge"])
def test_binary_special_values(name, dtype):
    a, b = (np.array(p) for p in zip(*itertools.product(SPECIAL, repeat=2)))
    with np.errstate(all="ignore"):
        check(name, a, b, Out(a.size), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_is_stable(dtype):
    x = np.array([-1e4, -800, -100, -30, 0, 30, 100, 800, 1e4])
    got = call(nb_cpu, "ewise_sigmoid", x, Out(x.size), dtype=dtype)
    assert np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1))
    assert got[0] == 0 and got[-1] == 1 and got[4] == 0.5


# ---- linear algebra --------------------------------------------------------------------
def matmul_tol(dtype, n):
    # Operands are standard normal: each output sums n products of size ~1.
    return dict(rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * n)


MATMUL_DIMS = (1, 7, 33, 127, 257)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,p", list(itertools.product(MATMUL_DIMS, repeat=3)))
def test_matmul(m, n, p, dtype, rng):
    a, b = rng.standard_normal(m * n), rng.standard_normal(n * p)
    check("matmul", a, b, Out(m * p), m, n, p, dtype=dtype, **matmul_tol(dtype, n))


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_ignores_trailing_storage(dtype, rng):
    m, n, p = 5, 6, 7
    a, b = rng.standard_normal(m * n + 3), rng.standard_normal(n * p + 11)
    check("matmul", a, b, Out(m * p), m, n, p, dtype=dtype, **matmul_tol(dtype, n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "batch,m,n,p", [(1, 1, 1, 1), (1, 7, 33, 5), (3, 1, 9, 4), (4, 17, 8, 33), (2, 64, 130, 70)]
)
def test_batched_matmul(batch, m, n, p, dtype, rng):
    a, b = rng.standard_normal(batch * m * n), rng.standard_normal(batch * n * p)
    check(
        "batched_matmul", a, b, Out(batch * m * p), batch, m, n, p,
        dtype=dtype, **matmul_tol(dtype, n),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,p", [(8, 8, 8), (16, 8, 24), (8, 40, 16), (32, 64, 48)])
def test_matmul_tiled(m, n, p, dtype, rng):
    a, b = rng.standard_normal(m * n), rng.standard_normal(n * p)
    check("matmul_tiled", a, b, Out(m * p), m, n, p, dtype=dtype, **matmul_tol(dtype, n))


# ---- reductions ------------------------------------------------------------------------
REDUCE_SIZES = (1, 2, 7, 8, 9, 127, 128, 129, 1000, 4097)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outer", [0, 1, 5])
@pytest.mark.parametrize("reduce_size", REDUCE_SIZES)
def test_reduce_sum(reduce_size, outer, dtype, rng):
    a = rng.standard_normal(outer * reduce_size) + 0.5
    # NumPy's float32 pairwise sum rounds at every level; ours accumulates in double.
    tol = dict(rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * reduce_size)
    check("reduce_sum", a, Out(outer), reduce_size, dtype=dtype, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outer", [0, 1, 5])
@pytest.mark.parametrize("reduce_size", REDUCE_SIZES)
def test_reduce_max(reduce_size, outer, dtype, rng):
    a = rng.standard_normal(outer * reduce_size)
    check("reduce_max", a, Out(outer), reduce_size, dtype=dtype, exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reduce_special_values(dtype):
    a = np.array([1.0, np.nan, 3.0, np.nan, -np.inf, 2.0, -np.inf, -np.inf, np.inf, 5.0, 0.0, 1.0])
    with np.errstate(all="ignore"):
        check("reduce_max", a, Out(4), 3, dtype=dtype, exact=True)
        check("reduce_sum", a, Out(4), 3, dtype=dtype)


# ---- strided matmul (hypothesis) -------------------------------------------------------
@st.composite
def matmul_operands(draw, batch, rows, cols):
    """(flat storage, offset, (batch, row, col) strides) of a random (batch, rows, cols) view.

    The view may be a window with an offset and steps, stored transposed (row stride 1),
    broadcast over the batch (batch stride 0) or over its rows (row stride 0).
    """
    step_r, step_c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    start_r, start_c = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    batch_broadcast = batch > 1 and draw(st.booleans())
    row_broadcast = rows > 1 and draw(st.integers(0, 5)) == 0
    stored_rows = 1 if row_broadcast else rows
    pb = 1 if batch_broadcast else batch
    pr = start_r + step_r * (stored_rows - 1) + 1 + draw(st.integers(0, 2))
    pc = start_c + step_c * (cols - 1) + 1 + draw(st.integers(0, 2))
    base = np.zeros(pb * pr * pc)
    if draw(st.booleans()):  # transposed storage: the parent is (pb, pc, pr)
        parent = base.reshape(pb, pc, pr).transpose(0, 2, 1)
    else:
        parent = base.reshape(pb, pr, pc)
    view = parent[:, start_r::step_r, start_c::step_c][:, :stored_rows, :cols]
    view = np.broadcast_to(view, (batch, rows, cols))
    itemsize = base.itemsize
    offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return base.size, offset // itemsize, tuple(s // itemsize for s in view.strides)


@st.composite
def matmul_problems(draw):
    batch, m, n, p = (draw(st.integers(1, 3)), draw(st.integers(1, 40)),
                      draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    return (batch, m, n, p, draw(matmul_operands(batch, m, n)),
            draw(matmul_operands(batch, n, p)))


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=100, deadline=None)
@given(problem=matmul_problems())
def test_matmul_strided(dtype, problem):
    batch, m, n, p, (a_size, a_offset, a_strides), (b_size, b_offset, b_strides) = problem
    rng = np.random.default_rng(a_size * 1000 + b_size)
    a, b = rng.standard_normal(a_size), rng.standard_normal(b_size)
    check(
        "matmul_strided", a, b, Out(batch * m * p), batch, m, n, p, a_offset, a_strides,
        b_offset, b_strides, dtype=dtype, **matmul_tol(dtype, n),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,m,n,p", [(2, 300, 500, 700), (3, 20, 900, 30)])
def test_matmul_strided_large(batch, m, n, p, dtype, rng):
    # Several cache blocks deep and wide, transposed a against a batch-broadcast b.
    a = rng.standard_normal(batch * m * n)
    b = rng.standard_normal(n * p)
    check(
        "matmul_strided", a, b, Out(batch * m * p), batch, m, n, p, 0, (m * n, 1, m), 0,
        (0, p, 1), dtype=dtype, **matmul_tol(dtype, n),
    )


# ---- reductions over a middle axis -----------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=150, deadline=None)
@given(outer=st.integers(0, 4), reduce_size=st.integers(1, 300), inner=st.integers(1, 70))
def test_reduce_axis(dtype, outer, reduce_size, inner):
    a = np.random.default_rng(reduce_size).standard_normal(outer * reduce_size * inner) + 0.5
    tol = dict(rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * reduce_size)
    check("reduce_sum_axis", a, Out(outer * inner), outer, reduce_size, inner, dtype=dtype, **tol)
    check("reduce_max_axis", a, Out(outer * inner), outer, reduce_size, inner, dtype=dtype,
          exact=True)


@pytest.fixture
def two_threads():
    before = nb_cpu.get_num_threads()
    nb_cpu.set_num_threads(2)
    yield
    nb_cpu.set_num_threads(before)


# Shapes that take every path: wider than one 4096-column chunk, few long reductions split
# across threads, many chunks split across threads, and rows split across threads.
LARGE_REDUCTIONS = [(2, 3, 4097), (1, 300, 1000), (8, 100, 1000), (1, 70000, 3), (3, 1, 9000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outer,reduce_size,inner", LARGE_REDUCTIONS)
def test_reduce_axis_large(outer, reduce_size, inner, dtype, rng, two_threads):
    a = rng.standard_normal(outer * reduce_size * inner) + 0.5
    tol = dict(rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * reduce_size)
    check("reduce_sum_axis", a, Out(outer * inner), outer, reduce_size, inner, dtype=dtype, **tol)
    check("reduce_max_axis", a, Out(outer * inner), outer, reduce_size, inner, dtype=dtype,
          exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outer,reduce_size", [(1, 10**6), (3, 100_000), (64, 5000)])
def test_reduce_last_axis_threaded(outer, reduce_size, dtype, rng, two_threads):
    a = rng.standard_normal(outer * reduce_size) + 0.5
    tol = dict(rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * reduce_size)
    check("reduce_sum", a, Out(outer), reduce_size, dtype=dtype, **tol)
    check("reduce_max", a, Out(outer), reduce_size, dtype=dtype, exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inner", [1, 5, 40])
def test_reduce_axis_special_values(inner, dtype, rng):
    a = rng.standard_normal(3 * 7 * inner)
    a[rng.integers(0, a.size, 4)] = np.nan
    a[rng.integers(0, a.size, 3)] = np.inf
    a[rng.integers(0, a.size, 3)] = -np.inf
    with np.errstate(all="ignore"):
        check("reduce_max_axis", a, Out(3 * inner), 3, 7, inner, dtype=dtype, exact=True)
        check("reduce_sum_axis", a, Out(3 * inner), 3, 7, inner, dtype=dtype)
