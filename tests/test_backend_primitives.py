"""What is particular to the C++ CPU backend (its primitives' values are checked with every
other backend's in tests/backends): 64-byte aligned arrays, its argument checks, and work
split across threads (large views copied by rows, long reductions cut into chunks): the
same values whatever the thread count (the same bits but for sums, whose chunks may round
differently). Its GEMM is tested in test_cpu_matmul.py.
"""

import math

import numpy as np
import pytest

from needle.conformance.calls import Out, call, read, to_array

try:
    from needle.backend_ndarray import ndarray_backend_cpu as nb_cpu
except ImportError as exc:  # the extension is built by `pip install -e .`
    pytest.skip(f"ndarray_backend_cpu is not built: {exc}", allow_module_level=True)

DTYPES = ("float32", "float64")  # the floating-point dtypes (nb_cpu.DTYPES: all six)
EPS = {"float32": 1.2e-7, "float64": 2.3e-16}
RTOL = {"float32": 1e-5, "float64": 1e-12}


@pytest.fixture
def threads():
    """set_num_threads, with the thread count restored after the test."""
    before = nb_cpu.get_num_threads()
    try:
        yield nb_cpu.set_num_threads
    finally:
        nb_cpu.set_num_threads(before)


# ---- arrays and argument checks ----------------------------------------------------------
@pytest.mark.parametrize("dtype", nb_cpu.DTYPES)
def test_arrays_are_64_byte_aligned(dtype):
    for size in (0, 1, 5, 1000):
        assert nb_cpu.Array(size=size, dtype=dtype).ptr() % 64 == 0


@pytest.mark.parametrize("dtype", ["int8", "half", "uint16", "complex64", "bool_", ""])
def test_array_rejects_unsupported_dtype(dtype):
    with pytest.raises(ValueError):
        nb_cpu.Array(4, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_numpy_checks_dtype_and_size(dtype):
    arr = nb_cpu.Array(4, dtype)
    other = "float64" if dtype == "float32" else "float32"
    for bad in (np.zeros(4, other), np.zeros(4, np.int32), np.zeros(4, bool)):
        with pytest.raises(TypeError):
            nb_cpu.from_numpy(bad, arr)
    for size in (0, 3, 5):
        with pytest.raises(ValueError):
            nb_cpu.from_numpy(np.zeros(size, dtype), arr)


def test_from_numpy_checks_integer_and_bool_dtypes():
    """Same size and width is not enough: bool, uint8 and int32/float32 are each their own."""
    for dtype, bad in (("bool", np.uint8), ("uint8", bool), ("int32", np.float32)):
        with pytest.raises(TypeError):
            nb_cpu.from_numpy(np.zeros(4, bad), nb_cpu.Array(4, dtype))


def test_mixed_dtypes_raise():
    a, b = nb_cpu.Array(3, "float32"), nb_cpu.Array(3, "float64")
    with pytest.raises(TypeError):
        nb_cpu.ewise_add(a, b, nb_cpu.Array(3, "float32"))
    with pytest.raises(TypeError):
        nb_cpu.compact(a, b, (3,), (1,), 0)


def test_shape_arguments_accept_lists_and_numpy_ints():
    arr = to_array(nb_cpu, np.arange(6, dtype="float32"))
    got = nb_cpu.to_numpy(arr, [np.int64(3), 2], (np.int32(1), 3), np.int64(0))
    np.testing.assert_array_equal(got, np.arange(6, dtype="float32").reshape(2, 3).T)


def test_broadcast_binary_rejects_an_unknown_op():
    full = to_array(nb_cpu, np.ones(4))
    with pytest.raises(ValueError, match="unknown op 'pow'"):
        nb_cpu.ewise_broadcast_binary(
            "pow", full, full, nb_cpu.Array(4, "float64"), 2, 2, True, False
        )


def _small_calls():
    """(label, call) pairs: each primitive given arrays too small for its sizes, negative
    sizes, or row indices outside the table. Every one must raise before its kernel runs (an
    assert would be compiled out of the release build, and the kernel would read past a
    buffer)."""
    f = nb_cpu.Array
    a10, b10, o10, a5 = f(10, "float32"), f(10, "float32"), f(10, "float32"), f(5, "float32")
    idx = to_array(nb_cpu, np.array([0, 1000], dtype=np.int64))
    return [
        ("softmax_rows", lambda: nb_cpu.softmax_rows(a10, o10, 1000, 1000, False)),
        ("softmax_rows, negative", lambda: nb_cpu.softmax_rows(a10, o10, -1, 5, False)),
        ("layer_norm_rows", lambda: nb_cpu.layer_norm_rows(a10, o10, 100, 100, 1e-5)),
        ("softmax_grad_rows", lambda: nb_cpu.softmax_grad_rows(a10, b10, o10, 5, 5)),
        ("layer_norm_grad_rows", lambda: nb_cpu.layer_norm_grad_rows(a10, b10, o10, 5, 5, 1e-5)),
        ("reduce_sum", lambda: nb_cpu.reduce_sum(a10, o10, 1000)),
        ("reduce_max", lambda: nb_cpu.reduce_max(a10, o10, 0)),
        ("reduce_sum_axis", lambda: nb_cpu.reduce_sum_axis(a10, o10, 10, 10, 10)),
        ("reduce_max_axis", lambda: nb_cpu.reduce_max_axis(a10, o10, 2, 10, 1)),
        ("gather_rows, index", lambda: nb_cpu.gather_rows(a10, idx, o10, 2, 1)),
        ("gather_rows, out", lambda: nb_cpu.gather_rows(a10, idx, a5, 2, 5)),
        ("scatter_add_rows, index", lambda: nb_cpu.scatter_add_rows(a10, idx, o10, 2, 1)),
        ("gather_axis", lambda: nb_cpu.gather_axis(a10, idx, o10, 10, 10, 10, 10)),
        ("scatter_add_axis", lambda: nb_cpu.scatter_add_axis(a10, idx, o10, 10, 10, 10, 10)),
        ("pool2d", lambda: nb_cpu.pool2d(a10, o10, 10, 10, 10, (2, 2), (2, 2), (0, 0), "max")),
        (
            "pool2d, stride 0",
            lambda: nb_cpu.pool2d(a10, o10, 1, 2, 5, (1, 1), (0, 1), (0, 0), "max"),
        ),
        ("matmul_tiled", lambda: nb_cpu.matmul_tiled(a10, b10, o10, 64, 64, 64)),
        ("matmul", lambda: nb_cpu.matmul(a10, b10, o10, 100, 100, 100)),
        ("ewise_add", lambda: nb_cpu.ewise_add(a10, a5, o10)),
        ("scalar_mul", lambda: nb_cpu.scalar_mul(a5, 2.0, o10)),
        ("ewise_exp", lambda: nb_cpu.ewise_exp(a5, o10)),
        ("ewise_lt", lambda: nb_cpu.ewise_lt(a5, a10, f(10, "bool"))),
        ("ewise_axpby", lambda: nb_cpu.ewise_axpby(a5, b10, 1.0, 1.0, o10)),
        (
            "ewise_broadcast_binary",
            lambda: nb_cpu.ewise_broadcast_binary("add", a10, b10, o10, 100, 100, True, False),
        ),
    ]


# (Made in the test: arrays held by the parameters would outlive the extension at exit.)
SMALL_CALL_LABELS = [label for label, _ in _small_calls()]


@pytest.mark.parametrize("label", SMALL_CALL_LABELS)
def test_sizes_are_checked_before_a_kernel_runs(label):
    with pytest.raises((ValueError, IndexError)):
        dict(_small_calls())[label]()


def lstm_arrays(batch, hidden, dtype="float32", **sizes):
    """lstm_cell's and lstm_cell_grad's arrays for (batch, hidden), each of its right size
    unless `sizes` names another."""
    n = batch * hidden
    right = {"gates": 4 * n, "c": n, "out": 2 * n, "act": 5 * n}
    right.update(dy=2 * n, d_gates=4 * n, d_c=n)
    return {k: nb_cpu.Array(sizes.get(k, size), dtype) for k, size in right.items()}


def call_lstm(name, a, batch, hidden):
    if name == "lstm_cell":
        return nb_cpu.lstm_cell(a["gates"], a["c"], a["out"], a["act"], batch, hidden)
    return nb_cpu.lstm_cell_grad(a["dy"], a["act"], a["c"], a["d_gates"], a["d_c"], batch, hidden)


@pytest.mark.parametrize("name", ["lstm_cell", "lstm_cell_grad"])
def test_lstm_cell_checks_its_sizes(name):
    """An array too small for (batch, hidden), or sizes that are none, is a ValueError naming
    the primitive and the array, before anything is read or written; another dtype a
    TypeError."""
    used = ("gates", "c", "out", "act")
    if name == "lstm_cell_grad":
        used = ("dy", "act", "c", "d_gates", "d_c")
    for array in used:
        with pytest.raises(ValueError, match=rf"^{name}: {array} has \d+ elements"):
            call_lstm(name, lstm_arrays(3, 5, **{array: 1}), 3, 5)
    call_lstm(name, lstm_arrays(3, 5), 3, 5)  # all of the right size
    call_lstm(name, lstm_arrays(3, 5, c=99), 3, 5)  # larger than needed: its first elements
    for batch, hidden in ((-1, 5), (3, -2), (2**40, 2**30), (2**62, 2)):
        with pytest.raises(ValueError, match=rf"^{name}: batch {batch} and hidden {hidden}"):
            call_lstm(name, lstm_arrays(3, 5), batch, hidden)
    mixed = lstm_arrays(3, 5)
    mixed["c"] = nb_cpu.Array(15, "float64")
    with pytest.raises(TypeError, match=name):
        call_lstm(name, mixed, 3, 5)


# ---- work split across threads -----------------------------------------------------------
def every_thread_count(threads, name, *args, dtype, same_bits=True):
    """`name` called with 1, 2 and 3 threads: the results, the same bits each time unless
    `same_bits` is False (sums cut into chunks per thread may round differently)."""
    results = []
    for n in (1, 2, 3):
        threads(n)
        results.append(call(nb_cpu, name, *args, dtype=dtype))
    if same_bits:
        for got in results[1:]:
            np.testing.assert_array_equal(got, results[0])
    return results


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inner", [16, 10, 3])
def test_bias_add_of_short_rows_split_across_threads(threads, dtype, inner):
    """ewise_broadcast_binary over short rows (a conv's bias over 16 channels: blocks of rows
    against the bias repeated), large enough to be split across threads, with rows left over
    after the last whole block: every row gets the bias, whatever the thread count."""
    rng = np.random.default_rng(inner)
    outer = 40_003
    full, vector = rng.standard_normal(outer * inner), rng.standard_normal(inner)
    got = every_thread_count(
        threads,
        "ewise_broadcast_binary",
        "add",
        full,
        vector,
        Out(outer * inner),
        outer,
        inner,
        True,
        False,
        dtype=dtype,
    )[0]
    expected = full.astype(dtype).reshape(outer, inner) + vector.astype(dtype)
    np.testing.assert_array_equal(got, expected.reshape(-1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_compact_split_across_threads(threads, dtype):
    """An im2col view (overlapping 7x7 windows, stride 4), large enough to be split by rows
    across threads, including a thread count that splits rows unevenly; and rows of one
    element (a transposed view), none of which the split may lose or repeat."""
    data = np.arange(9 * 38 * 38 * 3, dtype=float)
    shape, strides = (9, 8, 8, 7, 7, 3), (4332, 456, 12, 114, 3, 1)
    got = every_thread_count(
        threads, "compact", data, Out(math.prod(shape)), shape, strides, 5, dtype=dtype
    )[0]
    expected = np.lib.stride_tricks.as_strided(data[5:], shape, [8 * s for s in strides])
    np.testing.assert_array_equal(got, expected.reshape(-1))
    data = np.arange(300 * 500, dtype=float)
    got = every_thread_count(
        threads, "compact", data, Out(data.size), (500, 300), (1, 500), 0, dtype=dtype
    )[0]
    np.testing.assert_array_equal(got, data.reshape(300, 500).T.reshape(-1))
    # NCHW -> NHWC (a short strided last axis: tiles interleaved), with an offset and a
    # partial last tile; and a transposed axis that is not next to the last
    for shape, strides in (((6, 1000, 3), (3003, 1, 1000)), ((3, 700, 5, 2), (7000, 1, 1400, 700))):
        data = np.arange(3 + 21000, dtype=float)
        got = every_thread_count(
            threads, "compact", data, Out(math.prod(shape)), shape, strides, 3, dtype=dtype
        )[0]
        expected = np.lib.stride_tricks.as_strided(data[3:], shape, [8 * s for s in strides])
        np.testing.assert_array_equal(got, expected.reshape(-1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_split_across_threads(threads, dtype, rng):
    """Rows of an LSTM cell large enough to split across threads (hidden not a multiple of a
    vector): the same bits whatever the split, and the reference's values."""
    from needle.backend_ndarray import ndarray_backend_numpy as nb_np

    batch, hidden = 70, 301
    n = batch * hidden
    gates, c, dy = (
        rng.standard_normal(4 * n) * 3,
        rng.standard_normal(n),
        rng.standard_normal(2 * n),
    )
    args = (gates, c, Out(2 * n), Out(5 * n), batch, hidden)
    got = every_thread_count(threads, "lstm_cell", *args, dtype=dtype)[0]
    want = call(nb_np, "lstm_cell", *args, dtype=dtype)
    np.testing.assert_allclose(got, want, rtol=10 * EPS[dtype], atol=10 * EPS[dtype])
    act = want[2 * n :]
    args = (dy, act, c, Out(4 * n), Out(n), batch, hidden)
    got = every_thread_count(threads, "lstm_cell_grad", *args, dtype=dtype)[0]
    want = call(nb_np, "lstm_cell_grad", *args, dtype=dtype)
    np.testing.assert_allclose(got, want, rtol=30 * EPS[dtype], atol=30 * EPS[dtype])


# (outer, reduce_size, inner): wider than one 4096-column chunk, few long reductions split
# across threads, many chunks split across threads, rows split across threads; inner 1 is a
# last-axis reduction (reduce_sum / reduce_max).
LARGE_REDUCTIONS = [
    (2, 3, 4097),
    (1, 300, 1000),
    (8, 100, 1000),
    (1, 70000, 3),
    (3, 1, 9000),
    (1, 10**6, 1),
    (3, 100_000, 1),
    (64, 5000, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outer,reduce_size,inner", LARGE_REDUCTIONS)
def test_large_reductions_split_across_threads(threads, outer, reduce_size, inner, dtype, rng):
    a = rng.standard_normal(outer * reduce_size * inner) + 0.5
    expected = a.astype(dtype).reshape(outer, reduce_size, inner)
    for op in ("sum", "max"):
        args = (
            (a, Out(outer), reduce_size)
            if inner == 1
            else (a, Out(outer * inner), outer, reduce_size, inner)
        )
        results = every_thread_count(
            threads,
            f"reduce_{op}{'_axis' * (inner > 1)}",
            *args,
            dtype=dtype,
            same_bits=op == "max",
        )
        want = expected.sum(axis=1, dtype=np.float64) if op == "sum" else expected.max(axis=1)
        for got in results:
            np.testing.assert_allclose(
                got, want.reshape(-1), rtol=RTOL[dtype], atol=10 * EPS[dtype] * reduce_size
            )


# (n, h, w, c_in, kh, kw, c_out, stride, padding): pixels split across threads (2048 of them),
# the same on 1x1 maps (only the centre tap: dw's other rows are zeros), and too few pixels
# (128), where dw's rows are split, unevenly on 3 threads.
@pytest.mark.parametrize(
    "dims",
    [
        (8, 16, 16, 8, 3, 3, 16, 1, 1),
        (2048, 1, 1, 32, 3, 3, 32, 1, 1),
        (128, 2, 2, 64, 3, 3, 128, 2, 1),
    ],
)
def test_large_conv_weight_grad_split_across_threads(threads, dims, rng):
    """Every element written (dw starts as NaNs), and the values NumPy's, on 1, 2, 3 threads."""
    n, h, w, c_in, kh, kw, c_out, stride, pad = dims
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    x = rng.standard_normal((n, h, w, c_in))
    g = rng.standard_normal((n, oh, ow, c_out))
    dw = Out(kh * kw * c_in * c_out, np.full(kh * kw * c_in * c_out, np.nan))
    got = every_thread_count(
        threads,
        "conv2d_weight_grad",
        x.ravel(),
        g.ravel(),
        dw,
        *dims,
        dtype="float64",
        same_bits=False,
    )
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    expected = np.zeros((kh, kw, c_in, c_out))
    for i in range(kh):
        for j in range(kw):
            win = xp[:, i : i + stride * oh : stride, j : j + stride * ow : stride]
            expected[i, j] = np.einsum("nyxc,nyxo->co", win, g)
    for result in got:
        np.testing.assert_allclose(result, expected.ravel(), rtol=1e-10, atol=1e-10)


def test_large_conv_input_grad_split_across_threads(threads, rng):
    """The transposed weights (4 taps of 64 x 128) split across threads: the same bits."""
    dims = n, h, w, c_in, kh, kw, c_out, _, _ = (16, 2, 2, 64, 3, 3, 128, 2, 1)
    g, wt = rng.standard_normal((n, 1, 1, c_out)), rng.standard_normal((kh, kw, c_in, c_out))
    dx = Out(n * h * w * c_in, np.full(n * h * w * c_in, np.nan))
    got = every_thread_count(
        threads, "conv2d_input_grad", g.ravel(), wt.ravel(), dx, *dims, dtype="float64"
    )[0]
    expected = np.einsum("no,ijco->nijc", g[:, 0, 0], wt[1:, 1:])  # output 0 reads taps 1, 2
    np.testing.assert_allclose(got, expected.ravel(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_elementwise_split_across_threads(threads, dtype, rng):
    """Past 2^16 elements the elementwise primitives split across threads, in place too."""
    x = rng.standard_normal(3 * 2**16 + 5)
    got = every_thread_count(threads, "ewise_tanh", x, Out(x.size), dtype=dtype)[0]
    np.testing.assert_allclose(got, np.tanh(x.astype(dtype)), rtol=10 * EPS[dtype])
    for n in (1, 3):
        threads(n)
        arr = to_array(nb_cpu, x, dtype)
        nb_cpu.ewise_axpby(arr, arr, 0.5, 0.25, arr)
        np.testing.assert_allclose(read(nb_cpu, arr), 0.75 * x.astype(dtype), rtol=2 * EPS[dtype])


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8", "bool"])
@pytest.mark.parametrize("outer,reduce_size,inner", LARGE_REDUCTIONS)
def test_large_integer_reductions_split_across_threads(
    threads, outer, reduce_size, inner, dtype, rng
):
    """Integer and bool reductions are exact: the same bits whatever the split, and NumPy's
    (int64 sums wrap around; bool's max is any); sums take int64 only."""
    if dtype == "bool":
        a = rng.random(outer * reduce_size * inner) < 0.5 / reduce_size
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, outer * reduce_size * inner, dtype, endpoint=True)
    x = a.reshape(outer, reduce_size, inner)
    for op in ("sum", "max") if dtype == "int64" else ("max",):
        args = (
            (a, Out(outer), reduce_size)
            if inner == 1
            else (a, Out(outer * inner), outer, reduce_size, inner)
        )
        name = f"reduce_{op}{'_axis' * (inner > 1)}"
        got = every_thread_count(threads, name, *args, dtype=dtype)[0]
        np.testing.assert_array_equal(
            got, (x.sum(axis=1) if op == "sum" else x.max(axis=1)).reshape(-1)
        )


# ---- views against their buffers (issue 13) -----------------------------------------------
BAD_VIEW_CALLS = """
import sys
from needle.conformance.cases import bad_views
from needle.backend_ndarray import ndarray_backend_cpu as c
a = c.Array(6, "float32")
calls = bad_views(c) + [("to_numpy", (a, [2], [1], -1)), ("to_numpy", (a, [9**6], [99], 0))]
for name, args in calls:
    try:
        getattr(c, name)(*args)
    except (ValueError, IndexError) as e:
        print("raised:", e)
    else:
        sys.exit(f"{name}{args[2:]}: no error")
"""


def test_raw_layout_primitives_check_views_against_buffers():
    # In a subprocess: before the checks, these read or wrote outside the buffers.
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    res = subprocess.run(
        [sys.executable, "-c", BAD_VIEW_CALLS], env=env, capture_output=True, text=True, timeout=99
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("raised:") == 16
