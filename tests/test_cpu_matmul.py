"""The C++ CPU backend's packed GEMM and its thread controls.

matmul, batched_matmul and matmul_strided are checked against a float64 NumPy reference on
every blocking edge (sizes around the micro-tile MR x NR and the cache blocks KC, NC, MC
the module reports for the instruction set it was built for), on transposed, offset and
batch-broadcast views, and for bitwise agreement between 1 and 2 threads.

The float32 tolerance is the classical bound for a sum of k products computed with
rounding unit u, |error| <= k u (|A| @ |B|) (Higham, Accuracy and Stability, 3.5), with a
factor 2 of margin: rigorous for any summation order, yet a dropped or repeated term (of
size ~ |A| @ |B| / k) exceeds it by orders of magnitude for the k tested here.
"""

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

try:
    from needle.backend_ndarray import ndarray_backend_cpu as cpu
except ImportError as exc:  # the extension is built by `pip install -e .`
    pytest.skip(f"ndarray_backend_cpu is not built: {exc}", allow_module_level=True)

EPS = {"float32": np.finfo(np.float32).eps, "float64": np.finfo(np.float64).eps}
BLOCK = cpu.__gemm_blocking__


# ---- helpers ---------------------------------------------------------------------------
def to_array(x: np.ndarray):
    arr = cpu.Array(x.size, x.dtype.name)
    cpu.from_numpy(np.ascontiguousarray(x).reshape(-1), arr)
    return arr


def read(arr, shape) -> np.ndarray:
    return cpu.to_numpy(arr, shape, [math.prod(shape[i + 1 :]) for i in range(len(shape))], 0)


def view_spec(base: np.ndarray, view: np.ndarray):
    """(offset, strides) in elements of a NumPy view into the flat array `base`."""
    itemsize = base.itemsize
    offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return offset // itemsize, tuple(s // itemsize for s in view.strides)


def assert_matmul_close(actual, a, b, dtype):
    """|actual - a@b| <= 2 k u (|a| @ |b|), with the reference in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    expected = a64 @ b64
    k = a.shape[-1]
    bound = 2 * (k + 2) * (EPS[dtype] / 2) * (np.abs(a64) @ np.abs(b64))
    err = np.abs(actual.astype(np.float64) - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (
        f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} (k={k})"
    )


def run_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    (m, n), p = a.shape, b.shape[1]
    out = cpu.Array(m * p, a.dtype.name)
    cpu.matmul(to_array(a), to_array(b), out, m, n, p)
    return read(out, (m, p))


def run_strided(a_base, a_view, b_base, b_view) -> np.ndarray:
    """matmul_strided on views (batch, m, n) and (batch, n, p) of flat bases."""
    batch, m, n = a_view.shape
    p = b_view.shape[2]
    a_off, a_str = view_spec(a_base, a_view)
    b_off, b_str = view_spec(b_base, b_view)
    out = cpu.Array(batch * m * p, a_base.dtype.name)
    cpu.matmul_strided(
        to_array(a_base), to_array(b_base), out, batch, m, n, p, a_off, a_str, b_off, b_str
    )
    return read(out, (batch, m, p))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def threads():
    """Restores the thread count a test changes."""
    before = cpu.get_num_threads()
    yield
    cpu.set_num_threads(before)


def edge_sizes(block: int):
    return sorted({1, block - 1, block, block + 1} - {0})


# ---- matmul on every blocking edge -----------------------------------------------------
BRIEF_SIZES = (1, 7, 33, 127, 257, 1000)


@pytest.mark.parametrize(
    "m,n,p",
    [
        (m, n, p)
        for m in BRIEF_SIZES
        for n in BRIEF_SIZES
        for p in BRIEF_SIZES
        if (m == 1000) + (n == 1000) + (p == 1000) <= 1  # two 1000s: see the test below
    ],
)
def test_matmul_sizes_float32(m, n, p, rng):
    a = rng.standard_normal((m, n)).astype(np.float32)
    b = rng.standard_normal((n, p)).astype(np.float32)
    assert_matmul_close(run_matmul(a, b), a, b, "float32")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_1000_cubed(dtype, rng):
    a = rng.standard_normal((1000, 1000)).astype(dtype)
    b = rng.standard_normal((1000, 1000)).astype(dtype)
    assert_matmul_close(run_matmul(a, b), a, b, dtype)


def block_edge_cases(dtype):
    blk = BLOCK[dtype]
    mr, nr, kc, nc, mc = blk["MR"], blk["NR"], blk["KC"], blk["NC"], blk["MC"]
    cases = set()
    for m in edge_sizes(mr) + [2 * mr + 1]:
        for p in edge_sizes(nr) + [2 * nr + 3]:
            cases.add((m, 5, p))
    for n in edge_sizes(kc) + [2 * kc + 1]:
        cases.add((mr + 1, n, nr + 1))
    for p in edge_sizes(nc) + [2 * nc + 1]:
        cases.add((3, 9, p))
    for m in (mc, mc + 1):
        cases.add((m, 3, nr + 2))
    cases.add((mc + mr + 3, kc + 5, nc + nr + 7))  # every block edge at once
    return sorted(cases)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_block_edges(dtype, rng):
    for m, n, p in block_edge_cases(dtype):
        a = rng.standard_normal((m, n)).astype(dtype)
        b = rng.standard_normal((n, p)).astype(dtype)
        assert_matmul_close(run_matmul(a, b), a, b, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m,n,p", [(7, 33, 127), (127, 7, 33), (257, 1000, 33)])
def test_matmul_nonsquare_both_dtypes(m, n, p, dtype, rng):
    a = rng.standard_normal((m, n)).astype(dtype)
    b = rng.standard_normal((n, p)).astype(dtype)
    assert_matmul_close(run_matmul(a, b), a, b, dtype)


def test_matmul_exact_on_integers(rng):
    # Small integers: every product and partial sum is exact in float32, so any summation
    # order gives the exact answer.
    a = rng.integers(-8, 9, (65, 300)).astype(np.float32)
    b = rng.integers(-8, 9, (300, 70)).astype(np.float32)
    np.testing.assert_array_equal(run_matmul(a, b), a.astype(np.float64) @ b)


def test_matmul_overwrites_output(rng):
    a = rng.standard_normal((20, 30)).astype(np.float32)
    b = rng.standard_normal((30, 40)).astype(np.float32)
    out = to_array(np.full(20 * 40, np.nan, np.float32))
    cpu.matmul(to_array(a), to_array(b), out, 20, 30, 40)
    assert_matmul_close(read(out, (20, 40)), a, b, "float32")


# ---- batched and strided ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "batch,m,n,p", [(1, 1, 1, 1), (3, 7, 33, 5), (5, 40, 64, 33), (2, 129, 257, 65), (16, 8, 8, 8)]
)
def test_batched_matmul(batch, m, n, p, dtype, rng):
    a = rng.standard_normal((batch, m, n)).astype(dtype)
    b = rng.standard_normal((batch, n, p)).astype(dtype)
    out = cpu.Array(batch * m * p, dtype)
    cpu.batched_matmul(to_array(a), to_array(b), out, batch, m, n, p)
    assert_matmul_close(read(out, (batch, m, p)), a, b, dtype)


def strided_views(rng, dtype, batch, m, n, p, a_kind, b_kind):
    """Flat bases and (batch, m, n) / (batch, n, p) views of the named kinds."""

    def make(kind, rows, cols):
        if kind == "compact":
            base = rng.standard_normal(batch * rows * cols).astype(dtype)
            return base, base.reshape(batch, rows, cols)
        if kind == "transposed":  # stored (batch, cols, rows): row stride 1
            base = rng.standard_normal(batch * rows * cols).astype(dtype)
            return base, base.reshape(batch, cols, rows).transpose(0, 2, 1)
        if kind == "offset":  # a window of a larger matrix: row stride > cols, offset > 0
            base = rng.standard_normal(batch * (rows + 3) * (cols + 5)).astype(dtype)
            return base, base.reshape(batch, rows + 3, cols + 5)[:, 2 : 2 + rows, 3 : 3 + cols]
        if kind == "broadcast":  # one matrix for the whole batch: batch stride 0
            base = rng.standard_normal(rows * cols).astype(dtype)
            return base, np.broadcast_to(base.reshape(rows, cols), (batch, rows, cols))
        if kind == "broadcast_transposed":
            base = rng.standard_normal(rows * cols).astype(dtype)
            return base, np.broadcast_to(base.reshape(cols, rows).T, (batch, rows, cols))
        if kind == "stepped":  # every other row and column, batches reversed-free order
            base = rng.standard_normal(batch * 2 * rows * 2 * cols).astype(dtype)
            return base, base.reshape(batch, 2 * rows, 2 * cols)[:, ::2, ::2]
        if kind == "row_broadcast":  # every row the same: row stride 0
            base = rng.standard_normal(batch * cols).astype(dtype)
            return base, np.broadcast_to(base.reshape(batch, 1, cols), (batch, rows, cols))
        raise ValueError(kind)

    a_base, a_view = make(a_kind, m, n)
    b_base, b_view = make(b_kind, n, p)
    return a_base, a_view, b_base, b_view


KINDS = [
    "compact",
    "transposed",
    "offset",
    "broadcast",
    "broadcast_transposed",
    "stepped",
    "row_broadcast",
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("a_kind", KINDS)
@pytest.mark.parametrize("b_kind", KINDS)
def test_matmul_strided_views(a_kind, b_kind, dtype, rng):
    for batch, m, n, p in [(3, 17, 45, 37), (2, 1, 7, 1), (1, 60, 400, 70)]:
        a_base, a_view, b_base, b_view = strided_views(rng, dtype, batch, m, n, p, a_kind, b_kind)
        got = run_strided(a_base, a_view, b_base, b_view)
        assert_matmul_close(got, a_view, b_view, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_strided_large_transposed(dtype, rng):
    # Transposed operands across several KC and NC blocks, with threads; wide and tall
    # outputs, so that threads split C by columns and by rows.
    blk = BLOCK[dtype]
    short, long = 2 * blk["MR"] * 7 + 3, blk["NC"] + 2 * blk["NR"] + 5
    for m, n, p in [(short, 2 * blk["KC"] + 9, long), (long, 2 * blk["KC"] + 9, short)]:
        for a_kind, b_kind in [
            ("transposed", "compact"),
            ("compact", "transposed"),
            ("transposed", "transposed"),
            ("offset", "broadcast"),
        ]:
            a_base, a_view, b_base, b_view = strided_views(rng, dtype, 2, m, n, p, a_kind, b_kind)
            assert_matmul_close(run_strided(a_base, a_view, b_base, b_view), a_view, b_view, dtype)


def test_matmul_strided_ignores_other_storage(rng):
    # Elements outside the view (NaN here) must never be read.
    base = np.full(2 * 10 * 12, np.nan, np.float32)
    grid = base.reshape(2, 10, 12)
    grid[:, 1:8, 2:11] = rng.standard_normal((2, 7, 9))
    a_view = grid[:, 1:8, 2:11]
    b_base = rng.standard_normal(9 * 4).astype(np.float32)
    b_view = np.broadcast_to(b_base.reshape(9, 4), (2, 9, 4))
    got = run_strided(base, a_view, b_base, b_view)
    assert np.all(np.isfinite(got))
    assert_matmul_close(got, a_view, b_view, "float32")


# ---- threads ---------------------------------------------------------------------------
def test_num_threads_round_trip(threads):
    assert isinstance(cpu.get_num_threads(), int) and cpu.get_num_threads() >= 1
    for n in (1, 3, 2):
        cpu.set_num_threads(n)
        assert cpu.get_num_threads() == n


@pytest.mark.parametrize("bad", [0, -1, -100])
def test_set_num_threads_rejects_nonpositive(bad, threads):
    before = cpu.get_num_threads()
    with pytest.raises(ValueError):
        cpu.set_num_threads(bad)
    assert cpu.get_num_threads() == before


@pytest.mark.parametrize("bad", [257, 10_000, 2**31, 2**80])
def test_set_num_threads_rejects_too_many(bad, threads):
    # 10,000 threads would start 10,000 workers; 2**31 was a nanobind signature mismatch.
    before = cpu.get_num_threads()
    with pytest.raises(ValueError, match=r"\[1, 256\]"):
        cpu.set_num_threads(bad)
    assert cpu.get_num_threads() == before
    cpu.set_num_threads(256)
    assert cpu.get_num_threads() == 256


def test_set_num_threads_rejects_non_integers():
    with pytest.raises(TypeError):
        cpu.set_num_threads(1.5)


def import_and_print_threads(env_value):
    env = {k: v for k, v in os.environ.items() if k != "NEEDLE_NUM_THREADS"}
    if env_value is not None:
        env["NEEDLE_NUM_THREADS"] = env_value
    code = (
        "import warnings; warnings.simplefilter('always');"
        "from needle.backend_ndarray import ndarray_backend_cpu as c;"
        "print(c.get_num_threads())"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip()), res.stderr


def test_default_threads_from_environment():
    assert import_and_print_threads("3")[0] == 3
    assert import_and_print_threads("1")[0] == 1


def test_too_many_threads_in_environment_warns_and_clamps():
    n, stderr = import_and_print_threads("10000")
    assert n == 256
    assert "NEEDLE_NUM_THREADS" in stderr and "256" in stderr


def test_default_threads_is_the_available_cores():
    assert import_and_print_threads(None)[0] == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("bad", ["0", "-2", "many", "2.5"])
def test_invalid_environment_warns_and_uses_the_cores(bad):
    n, stderr = import_and_print_threads(bad)
    assert n == len(os.sched_getaffinity(0))
    assert "NEEDLE_NUM_THREADS" in stderr


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_threads_give_bitwise_identical_results(dtype, rng, threads):
    # Every output element is one FMA chain per depth block, added in block order, whatever
    # the split across threads: results must not change with the thread count.
    blk = BLOCK[dtype]
    # The last two are narrow outputs, computed transposed (C^T = B^T A^T).
    shapes = [
        (257, 385, 673),
        (3 * blk["MR"] + 1, 2 * blk["KC"] + 3, 2 * blk["NC"] + 5),
        (blk["MC"] + 5, 40, 70),
        (1500, 2 * blk["KC"] + 3, 10),
    ]
    for m, n, p in shapes:
        a = rng.standard_normal((m, n)).astype(dtype)
        b = rng.standard_normal((n, p)).astype(dtype)
        results = []
        for t in (1, 2, 3):
            cpu.set_num_threads(t)
            results.append(run_matmul(a, b))
        np.testing.assert_array_equal(results[0], results[1])
        np.testing.assert_array_equal(results[0], results[2])
    # Many small products go one per thread; a broadcast batch folds into rows.
    a = rng.standard_normal((12, 30, 20)).astype(dtype)
    b = rng.standard_normal((20, 25)).astype(dtype)
    b_tiled = np.tile(b, (12, 1))
    outs = []
    for t in (1, 2):
        cpu.set_num_threads(t)
        outs.append(run_strided(a.reshape(-1), a, b.reshape(-1), np.broadcast_to(b, (12, 20, 25))))
        outs.append(run_strided(a.reshape(-1), a, b_tiled.reshape(-1), b_tiled.reshape(12, 20, 25)))
    for got in outs[1:]:
        np.testing.assert_array_equal(got, outs[0])


def test_parallel_work_survives_fork(threads):
    # A child forked after the pool has run (a DataLoader worker) must get working threads
    # of its own rather than wait forever on the parent's.
    cpu.set_num_threads(2)
    a = np.random.default_rng(1).standard_normal((300, 300)).astype(np.float32)
    expected = run_matmul(a, a)
    pid = os.fork()
    if pid == 0:  # child: exit status says whether it computed the same thing
        try:
            ok = np.array_equal(run_matmul(a, a), expected)
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("matmul in a forked child hung")


def test_interleaves_with_torch_threads(threads):
    torch = pytest.importorskip("torch")
    cpu.set_num_threads(2)
    torch.set_num_threads(2)
    a = np.random.default_rng(2).standard_normal((200, 200)).astype(np.float32)
    t = torch.from_numpy(a)
    for _ in range(5):
        expected = (t @ t).numpy()
        np.testing.assert_allclose(run_matmul(a, a), expected, rtol=1e-4, atol=1e-3)
