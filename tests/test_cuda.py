"""The CUDA backend: its build, its launch planning, and its kernels against NumPy.

Most of this runs without a GPU:
- build: the module is built whenever nvcc is (so a build break fails CI, which has nvcc but
  no GPU), imports without a GPU, reports no device, and raises CudaError with CUDA's
  error string when asked for memory there;
- planning: the launch arithmetic (grid sizes, view simplification, GEMM block order,
  reduction plans) through the module's private helpers;
- kernels: src/cuda/*.cu compiled by g++ against tests/cuda_emulation and run on the CPU,
  compared with ndarray_backend_numpy primitive by primitive, by keyword, on shapes that
  cross every tile, vector and block edge. Where a GPU is present the same comparisons also
  run on the real module (the `mod` fixture);
- GPU only (skipped here with the reason): large sizes, memory that stays flat over 1,000
  allocations, out-of-memory as MemoryError, NDArray and a training step on ndl.cuda().
The device-parametrised suites (test_ops, test_ndarray, test_nn, ...) cover ndl.cuda() as a
device when a GPU is present. To run these under compute-sanitizer on a GPU machine:
    compute-sanitizer --tool memcheck --leak-check full python -m pytest -q tests/test_cuda.py
"""

import inspect
import itertools
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import needle as ndl
from needle.backend_ndarray import ndarray_backend_numpy as nb_np

from cuda_emulation import harness
from primitive_calls import Out, call, operand, read, row_indices, to_array

try:
    from needle.backend_ndarray import ndarray_backend_cuda as nb_cuda
except ImportError as _error:
    nb_cuda = None
    _IMPORT_ERROR = str(_error)

HAS_GPU = nb_cuda is not None and nb_cuda.device_count() > 0
_GPU_REASON = "needs an NVIDIA GPU (the CUDA backend is built but no device is visible)" \
    if nb_cuda is not None else "the CUDA backend is not built (no nvcc at install time)"
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason=_GPU_REASON)
needs_module = pytest.mark.skipif(nb_cuda is None, reason="the CUDA backend is not built")

DTYPES = ("float32", "float64")
TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-14)}
EPS = {"float32": 1.2e-7, "float64": 2.3e-16}


def _nvcc_available() -> bool:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or ""
    candidates = ["/usr/local/cuda/bin/nvcc", "/opt/cuda/bin/nvcc",
                  os.path.join(cuda_home, "bin", "nvcc")]
    return shutil.which("nvcc") is not None or any(os.path.exists(c) for c in candidates[:2]) \
        or (bool(cuda_home) and os.path.exists(candidates[2]))


# ---- build -------------------------------------------------------------------------------
def test_cuda_backend_is_built_where_nvcc_is():
    if os.environ.get("NEEDLE_CUDA", "ON").upper() in ("OFF", "0", "FALSE", "NO"):
        pytest.skip("NEEDLE_CUDA=OFF: the CUDA backend was not asked for")
    if not _nvcc_available():
        pytest.skip("no nvcc on this machine: the CUDA backend is not built")
    assert nb_cuda is not None, f"nvcc is here but the CUDA backend did not build: {_IMPORT_ERROR}"


@needs_module
def test_module_surface():
    public = {n for n in dir(nb_np) if not n.startswith("_") and n != "np"}
    assert public <= set(dir(nb_cuda))
    assert nb_cuda.__device_name__ == "cuda"
    assert nb_cuda.__tile_size__ == nb_np.__tile_size__
    assert tuple(nb_cuda.DTYPES) == nb_np.DTYPES
    # Same parameter names as the reference, since NDArray and the tests call by keyword.
    for name in ("compact", "matmul_strided", "reduce_sum_axis", "scalar_setitem", "to_numpy",
                 "ewise_axpby", "gather_rows", "scatter_add_rows"):
        doc = getattr(nb_cuda, name).__doc__ or ""
        for param in inspect.signature(getattr(nb_np, name)).parameters:
            assert param in doc, (name, param)
    assert issubclass(nb_cuda.CudaError, RuntimeError)
    assert issubclass(nb_cuda.OutOfMemoryError, MemoryError)


@needs_module
def test_without_a_gpu_nothing_raises_and_cuda_is_disabled():
    if HAS_GPU:
        pytest.skip("a GPU is present")
    assert nb_cuda.device_count() == 0
    assert ndl.cuda().enabled() is False
    # Asking for device memory says why it cannot, with CUDA's own error string.
    with pytest.raises(nb_cuda.CudaError, match="no CUDA device available"):
        nb_cuda.Array(4)
    with pytest.raises(nb_cuda.CudaError, match="no CUDA device available"):
        nb_cuda.mem_info()
    # Argument checks come before the device is touched.
    with pytest.raises(ValueError, match="unsupported dtype"):
        nb_cuda.Array(4, "int8")


def test_import_needle_with_the_cuda_module_but_no_gpu_in_a_fresh_process():
    code = ("import needle as ndl, needle.backend_ndarray.ndarray as nd\n"
            "print(ndl.cuda().enabled(), nd.ndarray_backend_cuda is not None)")
    result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    enabled, built = result.stdout.split()
    assert enabled == str(HAS_GPU)
    assert built == str(nb_cuda is not None)


# ---- launch planning (host arithmetic, no device) ------------------------------------------
@needs_module
@pytest.mark.parametrize("items,block,sms,expected", [
    (0, 256, 132, 1), (1, 256, 132, 1), (256, 256, 132, 1), (257, 256, 132, 2),
    (10**9, 256, 132, 132 * 32), (10**9, 256, 0, 32), (5000, 128, 2, 40),
])
def test_grid_size(items, block, sms, expected):
    assert nb_cuda._grid_size(items, block, sms) == expected


@st.composite
def views(draw):
    """(storage size, shape, strides, offset) of a random NumPy view (negative steps too)."""
    parent = draw(st.lists(st.integers(1, 5), max_size=5))
    base = np.zeros(math.prod(parent))
    view = base.reshape(parent)
    index = tuple(draw(st.slices(n)) for n in parent)
    view = view[index + (Ellipsis,)].transpose(draw(st.permutations(range(len(parent)))))
    if draw(st.booleans()):
        view = np.broadcast_to(view, (draw(st.integers(1, 3)),) + view.shape)
    offset = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // 8
    return base.size, view.shape, tuple(s // 8 for s in view.strides), offset


def _offsets(shape, strides, offset):
    """Storage offset of every element of a view, in C order."""
    idx = np.indices(shape).reshape(len(shape), -1) if shape else np.zeros((0, 1), int)
    return offset + (np.asarray(strides, dtype=np.int64)[:, None] * idx).sum(axis=0)


@needs_module
@settings(max_examples=200, deadline=None)
@given(spec=views())
def test_simplify_view_walks_the_same_offsets(spec):
    _, shape, strides, offset = spec
    s_shape, s_strides, s_offset, size = nb_cuda._simplify_view(shape, strides, offset)
    assert size == math.prod(shape) and len(s_shape) <= max(len(shape), 1)
    assert all(d != 1 for d in s_shape) or size == 0
    if size:
        np.testing.assert_array_equal(_offsets(tuple(s_shape), s_strides, s_offset),
                                      _offsets(shape, strides, offset))


@needs_module
@pytest.mark.parametrize("tiles_m,tiles_n", [(1, 1), (1, 7), (7, 1), (8, 3), (9, 5), (17, 17),
                                             (64, 2), (3, 64)])
def test_gemm_block_order_is_a_bijection_in_groups(tiles_m, tiles_n):
    tiles = [nb_cuda._gemm_tile_of_block(b, tiles_m, tiles_n) for b in range(tiles_m * tiles_n)]
    assert sorted(tiles) == [(m, n) for m in range(tiles_m) for n in range(tiles_n)]
    # Consecutive blocks stay within one group of 8 tile rows.
    for block, (m, _) in enumerate(tiles):
        assert m // 8 == block // (8 * tiles_n)


@needs_module
def test_gemm_tiling():
    f32, f64 = nb_cuda._gemm_tiling("float32"), nb_cuda._gemm_tiling("float64")
    assert (f32["block_m"], f32["block_n"], f32["block_k"], f32["threads"]) == (128, 128, 8, 256)
    assert (f64["block_m"], f64["block_n"], f64["thread_m"], f64["threads"]) == (64, 64, 4, 256)


@needs_module
@pytest.mark.parametrize("rows,size,sms", [(1, 1, 132), (10**6, 16, 132), (5, 17, 132),
                                           (3, 1024, 132), (10**5, 10**5, 132), (1, 10**8, 132),
                                           (7, 3 * 10**6, 2), (2, 5000, 132)])
def test_reduce_last_plan(rows, size, sms):
    plan = nb_cuda._plan_reduce_last(rows, size, sms)
    assert plan["strategy"] == (0 if size <= 16 else 1 if size <= 1024 or rows >= 64 * sms else 2)
    assert plan["block"] == (256, 1) and 1 <= plan["grid"][0] <= max(32 * sms, 1)
    chunks, chunk_len = plan["chunks"], plan["chunk_len"]
    assert 1 <= chunks <= 1024 and chunk_len % 4 == 0 or chunks == 1
    assert (chunks - 1) * chunk_len < size <= chunks * chunk_len
    if plan["strategy"] == 2 and rows == 1 and size >= 10**7:
        assert chunks > 1  # one row is spread over many blocks


@needs_module
@pytest.mark.parametrize("outer,size,inner,sms", [(1, 10, 2, 132), (4, 3, 33, 132),
                                                  (1, 10**6, 3, 132), (100, 100, 1000, 132),
                                                  (1, 5000, 3, 2), (2, 7, 1, 2)])
def test_reduce_middle_plan(outer, size, inner, sms):
    plan = nb_cuda._plan_reduce_middle(outer, size, inner, sms)
    bx, by = plan["block"]
    assert bx == min(32, 1 << max(inner - 1, 0).bit_length()) and bx * by == 256
    assert plan["grid"][1] == plan["chunks"]
    assert (plan["chunks"] - 1) * plan["chunk_len"] < size <= plan["chunks"] * plan["chunk_len"]


# ---- kernels: the emulation everywhere, the GPU where there is one -------------------------
@pytest.fixture(scope="module")
def emulated():
    try:
        return harness.emulated_backend()
    except harness.BuildError as error:
        pytest.skip(f"the CUDA emulation does not build here: {error}")


@pytest.fixture(scope="module", params=[
    pytest.param("emulated"),
    pytest.param("cuda", marks=needs_gpu),
])
def mod(request):
    if request.param == "emulated":
        return request.getfixturevalue("emulated")
    return nb_cuda


@pytest.fixture(params=[False, True], ids=["aligned", "tight"])
def layout(request, mod):
    """Emulated buffers 16-byte aligned (vector paths), or ending exactly at an inaccessible
    page (starts unaligned for most sizes: scalar paths, and any overrun faults)."""
    if mod is nb_cuda:
        if request.param:
            pytest.skip("buffer placement is an emulation setting")
        return False
    harness.Settings.tight = request.param
    yield request.param
    harness.Settings.tight = False


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def check(m, name, *args, dtype, exact=False, **tol):
    expected = call(nb_np, name, *args, dtype=dtype)
    actual = call(m, name, *args, dtype=dtype)
    assert actual.dtype == expected.dtype == np.dtype(dtype)
    if exact:
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, equal_nan=True, **{**TOL[dtype], **tol})


# ---- memory and layout ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 1000, 1027])
def test_fill_and_round_trip(mod, layout, dtype, size, rng):
    check(mod, "fill", Out(size), -2.5, dtype=dtype, exact=True)
    x = rng.standard_normal(size).astype(dtype)
    np.testing.assert_array_equal(mod.to_numpy(to_array(mod, x), (size,), (1,), 0), x)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(spec=views())
def test_compact_and_to_numpy(mod, dtype, spec):
    size, shape, strides, offset = spec
    data = np.random.default_rng(size).standard_normal(size)
    check(mod, "compact", data, Out(math.prod(shape)), shape, strides, offset, dtype=dtype,
          exact=True)
    expected = nb_np.to_numpy(to_array(nb_np, data.astype(dtype)), shape, strides, offset)
    actual = mod.to_numpy(to_array(mod, data.astype(dtype)), shape, strides, offset)
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(spec=views(), val=st.floats(-1e6, 1e6))
def test_setitem(mod, dtype, spec, val):
    size, shape, strides, offset = spec
    if any(s == 0 and d > 1 for d, s in zip(shape, strides)):
        shape = tuple(1 if s == 0 else d for d, s in zip(shape, strides))  # no repeated targets
    rng = np.random.default_rng(size)
    src, init = rng.standard_normal(math.prod(shape)), rng.standard_normal(size)
    check(mod, "ewise_setitem", src, Out(size, init), shape, strides, offset, dtype=dtype,
          exact=True)
    check(mod, "scalar_setitem", math.prod(shape), val, Out(size, init), shape, strides, offset,
          dtype=dtype, exact=True)


# Views NumPy slicing cannot produce: overlapping windows, mixed 0-strides, 0-d, and a large
# one that needs 64-bit element indices in no dimension but many in total.
ODD_VIEWS = [
    (5, (3, 3), (1, 1), 0),
    (10, (2, 3, 2), (2, 2, 1), 1),
    (6, (3, 2), (0, 1), 2),
    (7, (2, 2, 2), (3, 0, 1), 0),
    (11, (2, 2, 3), (2, 2, -1), 6),
    (4, (1, 4, 1), (5, 1, 7), 0),
    (3, (), (), 2),
    (40, (2, 1, 3, 1, 2, 1, 2, 1, 1, 1), (20, 9, 6, 4, 3, 2, 1, 7, 5, 3), 0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,shape,strides,offset", ODD_VIEWS)
def test_odd_views(mod, size, shape, strides, offset, dtype):
    data = np.arange(size, dtype=float) + 1
    n = math.prod(shape)
    check(mod, "compact", data, Out(n), shape, strides, offset, dtype=dtype, exact=True)
    check(mod, "scalar_setitem", n, -4.0, Out(size, data), shape, strides, offset, dtype=dtype,
          exact=True)


# ---- elementwise ---------------------------------------------------------------------------
BINARY = {"ewise_add": ("normal", "normal"), "ewise_sub": ("normal", "normal"),
          "ewise_mul": ("normal", "normal"), "ewise_div": ("normal", "nonzero"),
          "ewise_power": ("positive", "normal"), "ewise_maximum": ("ties", "ties"),
          "ewise_eq": ("ties", "ties"), "ewise_ge": ("ties", "ties")}
SCALAR = {"scalar_add": ("normal", [0.0, -1.5]), "scalar_sub": ("normal", [2.25]),
          "scalar_rsub": ("normal", [2.25]), "scalar_mul": ("normal", [0.1, -3]),
          "scalar_div": ("normal", [0.1, -3]), "scalar_rdiv": ("nonzero", [0.0, -2.5]),
          "scalar_power": ("positive", [0, 2, 0.5, -1.5]),
          "scalar_maximum": ("ties", [0.0, -0.5]), "scalar_eq": ("ties", [1, 0.5]),
          "scalar_ge": ("ties", [0.0, -0.5])}
UNARY = {"ewise_neg": "normal", "ewise_abs": "normal", "ewise_sign": "ties",
         "ewise_log": "positive", "ewise_exp": "normal", "ewise_tanh": "normal",
         "ewise_sqrt": "positive", "ewise_sin": "wide", "ewise_cos": "wide",
         "ewise_relu": "ties", "ewise_sigmoid": "wide"}
# Around the vector width (4 floats, 2 doubles) and a block (256 threads); 70001 elements take
# several turns of the grid-stride loop on the emulated 2-SM device.
SIZES = (1, 3, 4, 5, 255, 257, 1027, 70001)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_ewise_binary(mod, layout, size, dtype, rng):
    for name, (ka, kb) in BINARY.items():
        check(mod, name, operand(rng, ka, size), operand(rng, kb, size), Out(size), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_scalar_binary(mod, layout, size, dtype, rng):
    for name, (kind, values) in SCALAR.items():
        a = operand(rng, kind, size)
        for val in values:
            check(mod, name, a, val, Out(size), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_ewise_unary(mod, layout, size, dtype, rng):
    for name, kind in UNARY.items():
        # float32 sin/cos of |x| ~ 150 differ in the last bits between libm and libdevice.
        tol = dict(atol=1e-5) if dtype == "float32" and name in ("ewise_sin", "ewise_cos") else {}
        check(mod, name, operand(rng, kind, size), Out(size), dtype=dtype, **tol)


SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e30, -1e30, 2.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values(mod, dtype):
    with np.errstate(all="ignore"):
        for name in ("ewise_neg", "ewise_abs", "ewise_sign", "ewise_relu", "ewise_sigmoid",
                     "ewise_tanh", "ewise_exp"):
            check(mod, name, SPECIAL, Out(SPECIAL.size), dtype=dtype)
        a, b = (np.array(p) for p in zip(*itertools.product(SPECIAL, repeat=2)))
        for name in ("ewise_add", "ewise_mul", "ewise_div", "ewise_maximum", "ewise_eq",
                     "ewise_ge"):
            check(mod, name, a, b, Out(a.size), dtype=dtype)


# (alpha, beta) of ewise_axpby: the optimizers' update (1, -lr) and others, all distinct, so a
# kernel that swapped the scalars or read one operand twice fails.
AXPBY = [(1.0, -0.01), (0.9, 0.1), (-1.5, 2.25), (0.0, 3.0), (2.0, 0.0)]


def axpby_tol(dtype, a, b, alpha, beta):
    """Two ulps of the larger term: the GPU's fused multiply-add rounds once less than NumPy,
    which shows where the two terms cancel."""
    scale = np.max(np.abs(alpha * a) + np.abs(beta * b), initial=0.0)
    return {"rtol": 2 * EPS[dtype], "atol": 2 * EPS[dtype] * scale}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", (0,) + SIZES)
def test_ewise_axpby(mod, layout, size, dtype, rng):
    a, b = operand(rng, "normal", size), operand(rng, "normal", size)
    for alpha, beta in AXPBY:
        check(mod, "ewise_axpby", a, b, alpha, beta, Out(size), dtype=dtype,
              **axpby_tol(dtype, a, b, alpha, beta))


def axpby_in_place(m, a, b, alpha, beta, target, dtype):
    """ewise_axpby on Arrays of `m` holding a and b, with out the Array `target` itself;
    returns the contents of both Arrays afterwards."""
    arrays = {"a": to_array(m, a, dtype), "b": to_array(m, b, dtype)}
    m.ewise_axpby(**arrays, alpha=alpha, beta=beta, out=arrays[target])
    return {name: read(m, arr) for name, arr in arrays.items()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", (0,) + SIZES)
@pytest.mark.parametrize("target", ["a", "b"])
def test_ewise_axpby_in_place(mod, layout, size, dtype, target, rng):
    """out is a or b itself (the optimizers' w = w - lr * grad): every element is read before
    it is written, and the other operand is left as it was."""
    a, b = operand(rng, "normal", size), operand(rng, "normal", size)
    for alpha, beta in [(1.0, -0.01), (-0.5, 2.0)]:
        expected = axpby_in_place(nb_np, a, b, alpha, beta, target, dtype)
        actual = axpby_in_place(mod, a, b, alpha, beta, target, dtype)
        np.testing.assert_allclose(actual[target], expected[target],
                                   **axpby_tol(dtype, a, b, alpha, beta))
        other = "b" if target == "a" else "a"
        np.testing.assert_array_equal(actual[other], expected[other])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ewise_axpby_rounds_the_scalars_to_the_dtype(mod, dtype):
    # 1e-46 is 0 in float32: 1e-46 * 1e38 is then 0, not the 1e-8 of a product in double.
    big, small = np.array([1e38, -3e38, 2.0]), np.array([1e-9, -2e-9, 0.5])
    check(mod, "ewise_axpby", big, small, 1e-46, 1.0, Out(3), dtype=dtype, rtol=4 * EPS[dtype],
          atol=0)
    check(mod, "ewise_axpby", small, big, 1.0, 1e-46, Out(3), dtype=dtype, rtol=4 * EPS[dtype],
          atol=0)


# ---- rows by index (an embedding lookup and its gradient) ----------------------------------
# (table rows, n indices, row_size, how the indices are drawn): row_size 1, sizes that are no
# multiple of a vector width (3, 7, 257), embedding-like rows (100, 130); "same" sends every
# index to one row (every scatter thread of a column meets on one element), "distinct" is a
# permutation, "random" repeats some; n * row_size = 78,000 takes several turns of the
# grid-stride loop on the emulated 2-SM device.
ROWS_CASES = [
    (5, 0, 3, "random"), (5, 1, 3, "random"), (1, 1, 1, "random"), (9, 40, 1, "random"),
    (12, 12, 7, "distinct"), (50, 300, 7, "random"), (6, 33, 257, "same"),
    (40, 64, 100, "random"), (1000, 600, 130, "random"), (3, 500, 130, "same"),
]


def scatter_add_tol(dtype, a, init, indices):
    """The rounding of as many additions as the most repeated index gets, each up to the
    largest partial sum in size: atomicAdd adds in no fixed order."""
    repeats = np.bincount(indices.astype(np.int64)).max(initial=0)
    scale = np.abs(init).max(initial=0) + repeats * np.abs(a).max(initial=0)
    return {"rtol": 0, "atol": 2 * EPS[dtype] * repeats * scale}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n,row_size,kind", ROWS_CASES)
def test_gather_rows(mod, layout, rows, n, row_size, kind, dtype, rng):
    table, indices = rng.standard_normal(rows * row_size), row_indices(rng, rows, n, kind)
    check(mod, "gather_rows", table, indices, Out(n * row_size), n, row_size, dtype=dtype,
          exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n,row_size,kind", ROWS_CASES)
def test_scatter_add_rows(mod, layout, rows, n, row_size, kind, dtype, rng):
    """Adds onto what out holds (random, not zeros), repeated indices adding up."""
    a, indices = rng.standard_normal(n * row_size), row_indices(rng, rows, n, kind)
    init = rng.standard_normal(rows * row_size)
    check(mod, "scatter_add_rows", a, indices, Out(rows * row_size, init), n, row_size,
          dtype=dtype, **scatter_add_tol(dtype, a, init, indices))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_by_index_use_only_the_first_n_and_whole_rows(mod, dtype, rng):
    """indices and a may be longer than n needs, a table may end in a partial row: only the
    first n indices and whole rows count; a scatter leaves the rows nobody indexes as they
    were, -0.0 and NaN included."""
    row_size, n = 5, 4
    table = rng.standard_normal(7 * row_size + 3)  # 7 whole rows and 3 spare elements
    indices = np.array([6, 0, 6, 2, 1, 3, 5], dtype=float)  # only the first 4 are used
    check(mod, "gather_rows", table, indices, Out(n * row_size), n, row_size, dtype=dtype,
          exact=True)
    a = rng.standard_normal(6 * row_size)  # rows beyond n are not added
    init = rng.standard_normal(7 * row_size + 2)
    init[5:10] = -0.0  # row 1: not among the first 4 indices
    init[15] = np.nan  # row 3: neither
    actual = call(mod, "scatter_add_rows", a, indices, Out(init.size, init), n, row_size,
                  dtype=dtype)
    expected = call(nb_np, "scatter_add_rows", a, indices, Out(init.size, init), n, row_size,
                    dtype=dtype)
    np.testing.assert_allclose(actual, expected, **TOL[dtype])
    untouched = np.r_[5:10, 15:30, 35:init.size]  # rows 1, 3, 4, 5 and the spare elements
    np.testing.assert_array_equal(np.signbit(actual[untouched]), np.signbit(init[untouched]))
    np.testing.assert_array_equal(actual[untouched], init[untouched].astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_by_index_reach_far_rows(mod, dtype, rng):
    # Index 69,999 and its neighbours: an index that went through too few bits, or a row
    # offset computed in float, lands elsewhere.
    rows, n = 70_000, 300
    indices = np.concatenate([[rows - 1, rows - 2, 65_537, 0], rng.integers(0, rows, n - 4)])
    table = rng.standard_normal(rows)
    check(mod, "gather_rows", table, indices, Out(n), n, 1, dtype=dtype, exact=True)
    a, init = rng.standard_normal(n), rng.standard_normal(rows)
    check(mod, "scatter_add_rows", a, indices, Out(rows, init), n, 1, dtype=dtype,
          **scatter_add_tol(dtype, a, init, indices))


# ---- matrix multiplication -----------------------------------------------------------------
def matmul_tol(dtype, n):
    return dict(rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * max(n, 1))


# Each side of the float32 tile (128), the float64 tile (64), the k-slice (8), the vector
# width (4, 2) and the thread block's half tiles (64, 32).
MATMUL_DIMS = (1, 3, 8, 9, 63, 65, 129)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,p", [(m, n, p) for m, n, p in itertools.product(MATMUL_DIMS, repeat=3)
                                   if m * n * p <= 65 * 129 * 129])
def test_matmul(mod, m, n, p, dtype, rng):
    a, b = rng.standard_normal(m * n), rng.standard_normal(n * p)
    check(mod, "matmul", a, b, Out(m * p), m, n, p, dtype=dtype, **matmul_tol(dtype, n))


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_large_edges(mod, dtype, rng):
    m, n, p = 130, 257, 131  # two row tiles, 33 k-slices (double buffering), ragged columns
    a, b = rng.standard_normal(m * n), rng.standard_normal(n * p)
    check(mod, "matmul", a, b, Out(m * p), m, n, p, dtype=dtype, **matmul_tol(dtype, n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,m,n,p", [(1, 1, 1, 1), (3, 1, 9, 4), (4, 17, 8, 33),
                                         (2, 64, 130, 70)])
def test_batched_matmul(mod, batch, m, n, p, dtype, rng):
    a, b = rng.standard_normal(batch * m * n), rng.standard_normal(batch * n * p)
    check(mod, "batched_matmul", a, b, Out(batch * m * p), batch, m, n, p, dtype=dtype,
          **matmul_tol(dtype, n))


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_tiled(mod, dtype, rng):
    for m, n, p in [(8, 8, 8), (16, 8, 24), (32, 64, 48)]:
        a, b = rng.standard_normal(m * n), rng.standard_normal(n * p)
        check(mod, "matmul_tiled", a, b, Out(m * p), m, n, p, dtype=dtype, **matmul_tol(dtype, n))


def _operand(rng, batch, rows, cols, form):
    """(flat storage, offset, (batch, row, col) strides) of a (batch, rows, cols) view.

    row-major and transposed storage take the two vector paths (when aligned), the others
    the element-by-element one."""
    pb = 1 if form == "broadcast" else batch
    if form == "transposed":
        base = rng.standard_normal(pb * rows * cols)
        return base, 0, (rows * cols, 1, rows)
    if form == "offset":  # row stride 4k + 1 and an odd offset: unaligned rows
        width = cols + 1
        base = rng.standard_normal(pb * rows * width + 3)
        return base, 3, (rows * width, width, 1)
    if form == "rowbroadcast":
        base = rng.standard_normal(pb * cols)
        return base, 0, (cols, 0, 1)
    base = rng.standard_normal(pb * rows * cols)
    return base, 0, (0 if form == "broadcast" else rows * cols, cols, 1)


FORMS = ("rowmajor", "transposed", "broadcast", "offset", "rowbroadcast")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a_form,b_form", list(itertools.product(FORMS, repeat=2)))
def test_matmul_strided(mod, a_form, b_form, dtype, rng):
    batch, m, n, p = 2, 67, 36, 132
    a, a_off, a_str = _operand(rng, batch, m, n, a_form)
    b, b_off, b_str = _operand(rng, batch, n, p, b_form)
    check(mod, "matmul_strided", a, b, Out(batch * m * p), batch, m, n, p, a_off, a_str, b_off,
          b_str, dtype=dtype, **matmul_tol(dtype, n))


def test_matmul_batches_beyond_one_grid(emulated, rng):
    # gridDim.y is limited (65535 on a GPU); the emulation is told 2, so 5 batches take 3 grids.
    harness.configure(sm_count=2, max_grid_y=2)
    try:
        a, b = rng.standard_normal(5 * 3 * 4), rng.standard_normal(5 * 4 * 2)
        check(emulated, "batched_matmul", a, b, Out(5 * 3 * 2), 5, 3, 4, 2, dtype="float64",
              **matmul_tol("float64", 4))
    finally:
        harness.configure()


# ---- reductions ----------------------------------------------------------------------------
# With 2 SMs (the emulation): up to 16 a thread per row, up to 1024 a warp per row, beyond
# that a block per row, cut into chunks (and a second pass) when rows are few.
REDUCE_CASES = [(5, 1), (3, 16), (4, 17), (2, 1024), (300, 1100), (1, 9000), (2, 50001),
                (0, 7)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,size", REDUCE_CASES)
def test_reduce_last(mod, layout, rows, size, dtype, rng):
    a = rng.standard_normal(rows * size) + 0.5
    tol = dict(rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * size)
    check(mod, "reduce_sum", a, Out(rows), size, dtype=dtype, **tol)
    check(mod, "reduce_max", a, Out(rows), size, dtype=dtype, exact=True)


# inner 1 (rows), 2 and 3 (several rows of the reduced axis per warp), 32 and 33 (a tile edge);
# (1, 5000, 3) is cut into chunks on the emulated device.
MIDDLE_CASES = [(2, 7, 1), (3, 5, 2), (1, 5000, 3), (4, 100, 32), (2, 9, 33), (1, 300, 70)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outer,size,inner", MIDDLE_CASES)
def test_reduce_middle(mod, layout, outer, size, inner, dtype, rng):
    a = rng.standard_normal(outer * size * inner) + 0.5
    tol = dict(rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * size)
    check(mod, "reduce_sum_axis", a, Out(outer * inner), outer, size, inner, dtype=dtype, **tol)
    check(mod, "reduce_max_axis", a, Out(outer * inner), outer, size, inner, dtype=dtype,
          exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reduce_special_values(mod, dtype):
    a = np.array([1.0, np.nan, 3.0, np.nan, -np.inf, 2.0, -np.inf, -np.inf, np.inf, 5.0, 0.0, 1.0])
    with np.errstate(all="ignore"):
        check(mod, "reduce_max", a, Out(4), 3, dtype=dtype, exact=True)
        check(mod, "reduce_sum", a, Out(4), 3, dtype=dtype)
        long = np.full(3000, -1.0)
        long[1717] = np.nan
        check(mod, "reduce_max", long, Out(1), 3000, dtype=dtype, exact=True)


# ---- NDArray, autograd and a training step over the emulated kernels -----------------------
def test_grid_stride_loops_with_one_sm(emulated, rng):
    # One SM: grids of at most 32 blocks, so blocks take several rows, tiles or items in turn.
    harness.configure(sm_count=1)
    try:
        for rows, size in [(40, 1100), (3000, 20), (500, 40)]:
            a = rng.standard_normal(rows * size)
            check(emulated, "reduce_sum", a, Out(rows), size, dtype="float64", rtol=1e-12,
                  atol=1e-12 * size)
            check(emulated, "reduce_max", a, Out(rows), size, dtype="float64", exact=True)
        for outer, size, inner in [(70, 9, 5), (3, 40, 700)]:
            a = rng.standard_normal(outer * size * inner)
            check(emulated, "reduce_sum_axis", a, Out(outer * inner), outer, size, inner,
                  dtype="float64", rtol=1e-12, atol=1e-12 * size)
        x = rng.standard_normal(300_001)
        check(emulated, "ewise_tanh", x, Out(x.size), dtype="float32")
    finally:
        harness.configure()


def test_ndarray_and_training_on_the_emulated_device(emulated, rng):
    """NDArray's dispatch (strided matmuls, axis reductions, broadcasts, setitem) and an MLP's
    SGD steps over the emulated kernels agree with the NumPy backend."""
    from needle.backend_ndarray import BackendDevice, NDArray

    emu, ref = BackendDevice("cuda_emulation", emulated), ndl.cpu_numpy()
    x = rng.standard_normal((2, 33, 17))
    a, b = NDArray(x, device=emu), NDArray(x, device=ref)
    for f in (lambda t: t @ t.permute((0, 2, 1)), lambda t: t.sum(axis=1),
              lambda t: t.max(axis=(0, 2)), lambda t: (t[:, ::-2, 3:] + 1).exp(),
              lambda t: t.broadcast_to((3, 2, 33, 17)).sum(axis=(0, 3))):
        np.testing.assert_allclose(f(a).numpy(), f(b).numpy(), rtol=1e-5, atol=1e-5)
    a[0, 1:5, :] = 7.0
    b[0, 1:5, :] = 7.0
    np.testing.assert_array_equal(a.numpy(), b.numpy())

    def train(device):
        np.random.seed(3)
        model = ndl.nn.Sequential(ndl.nn.Linear(20, 32, device=device), ndl.nn.ReLU(),
                                  ndl.nn.Linear(32, 5, device=device))
        opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        data = np.random.default_rng(1)
        losses = []
        for _ in range(3):
            xb = ndl.Tensor(data.standard_normal((16, 20)), device=device)
            yb = ndl.Tensor(data.integers(0, 5, 16), device=device)
            loss = ndl.nn.SoftmaxLoss()(model(xb), yb)
            opt.reset_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.numpy()))
        return losses, [p.numpy() for p in model.parameters()]

    (loss_e, params_e), (loss_r, params_r) = train(emu), train(ref)
    np.testing.assert_allclose(loss_e, loss_r, rtol=1e-5)
    for pe, pr in zip(params_e, params_r):
        np.testing.assert_allclose(pe, pr, rtol=1e-4, atol=1e-5)


# ---- the emulation itself ------------------------------------------------------------------
def test_emulation_frees_every_buffer(emulated, rng):
    before = harness.live_bytes()
    check(emulated, "reduce_sum", rng.standard_normal(50001), Out(1), 50001, dtype="float32",
          rtol=1e-4, atol=1e-3)
    import gc

    gc.collect()
    assert harness.live_bytes() == before  # the chunked reduction's partials were freed too


def test_emulation_warp_shuffles_and_barriers(emulated):
    out = harness.selftest(0)
    # lane l of warp w holds staged[(32w + l + 1) % 256]; the warp's sum reaches every lane.
    expected = [sum((32 * w + lane + 1) % 256 for lane in range(32)) for w in range(8)]
    np.testing.assert_array_equal(out, np.repeat(expected, 32))


@pytest.mark.parametrize("which,message", [
    (1, "misaligned"), (2, "__syncthreads"), (3, "warp shuffle"), (4, "bad launch configuration"),
])
def test_emulation_reports_misuse(emulated, which, message):
    with pytest.raises(harness.EmulationError, match=message):
        harness.selftest(which)


# ---- GPU only ------------------------------------------------------------------------------
@needs_gpu
def test_gpu_device_info():
    info = nb_cuda.device_info()
    assert info["sm_count"] > 0 and info["compute_capability"][0] >= 7
    mem = nb_cuda.mem_info()
    assert 0 < mem["free"] <= mem["total"]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_large_elementwise_and_reductions(dtype, rng):
    n = (1 << 25) + 3
    x = rng.standard_normal(n).astype(dtype)
    a = to_array(nb_cuda, x)
    out = nb_cuda.Array(n, dtype)
    nb_cuda.ewise_add(a, a, out)
    np.testing.assert_array_equal(nb_cuda.to_numpy(out, (n,), (1,), 0), x + x)
    total = nb_cuda.Array(1, dtype)
    nb_cuda.reduce_sum(a, total, n)
    assert abs(nb_cuda.to_numpy(total, (1,), (1,), 0)[0] - x.astype(np.float64).sum()) < 1e-2 * \
        math.sqrt(n)
    nb_cuda.reduce_max(a, total, n)
    assert nb_cuda.to_numpy(total, (1,), (1,), 0)[0] == x.max()
    cols = nb_cuda.Array(1024, dtype)
    nb_cuda.reduce_sum_axis(a, cols, 1, (n - 3) // 1024, 1024)  # a prefix, as (1, R, 1024)
    expected = x[: n - 3].reshape(-1, 1024).astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(nb_cuda.to_numpy(cols, (1024,), (1,), 0), expected, rtol=1e-4,
                               atol=1e-2)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,p", [(1024, 1024, 1024), (1023, 517, 1031), (4096, 64, 4096)])
def test_gpu_large_matmul(m, n, p, dtype, rng):
    a, b = rng.standard_normal((m, n)), rng.standard_normal((n, p))
    out = nb_cuda.Array(m * p, dtype)
    nb_cuda.matmul(to_array(nb_cuda, a.astype(dtype)), to_array(nb_cuda, b.astype(dtype)), out,
                   m, n, p)
    np.testing.assert_allclose(nb_cuda.to_numpy(out, (m, p), (p, 1), 0), a @ b,
                               **matmul_tol(dtype, n))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_embedding_sized_rows_by_index(dtype, rng):
    """An embedding's lookup and gradient at language-model size: 10,000 rows of 512, 700
    indices, half of them on 4 hot rows (hundreds of atomicAdds on one element at once)."""
    rows, n, row_size = 10_000, 700, 512
    indices = np.concatenate([rng.integers(0, rows, n // 2), rng.integers(0, 4, n - n // 2)])
    table, a = rng.standard_normal(rows * row_size), rng.standard_normal(n * row_size)
    check(nb_cuda, "gather_rows", table, indices, Out(n * row_size), n, row_size, dtype=dtype,
          exact=True)
    init = rng.standard_normal(rows * row_size)
    for _ in range(3):  # the order of the atomic additions differs from run to run
        check(nb_cuda, "scatter_add_rows", a, indices, Out(rows * row_size, init), n, row_size,
              dtype=dtype, **scatter_add_tol(dtype, a, init, indices))


@needs_gpu
def test_gpu_memory_stays_flat_over_1000_allocations():
    def churn():
        for i in range(1000):
            arr = nb_cuda.Array(256 * 1024 + i, "float32")  # ~1 MiB each, all sizes different
            nb_cuda.fill(arr, float(i))
            del arr
        nb_cuda.synchronize()

    churn()  # let the pool reach its working size
    before = nb_cuda.mem_info()
    churn()
    after = nb_cuda.mem_info()
    assert after["used"] == before["used"]
    assert abs(after["reserved"] - before["reserved"]) <= 8 << 20
    assert abs(after["free"] - before["free"]) <= 64 << 20  # other processes may allocate too


@needs_gpu
def test_gpu_training_loop_memory_is_flat():
    device = ndl.cuda()
    model = ndl.nn.Sequential(ndl.nn.Linear(64, 128, device=device), ndl.nn.ReLU(),
                              ndl.nn.Linear(128, 10, device=device))
    opt = ndl.optim.SGD(model.parameters(), lr=0.01)
    x = ndl.Tensor(np.random.randn(32, 64), device=device)
    y = ndl.Tensor(np.random.randint(0, 10, 32), device=device)
    loss_fn = ndl.nn.SoftmaxLoss()

    def step():
        opt.reset_grad() if hasattr(opt, "reset_grad") else opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.numpy())

    for _ in range(20):
        step()
    used = nb_cuda.mem_info()["used"]
    losses = [step() for _ in range(200)]
    assert nb_cuda.mem_info()["used"] <= used
    assert losses[-1] < losses[0]


@needs_gpu
def test_gpu_out_of_memory_is_a_memory_error_and_the_device_stays_usable():
    with pytest.raises(MemoryError, match="CUDA out of memory"):
        nb_cuda.Array(1 << 44, "float32")  # 64 TiB
    with pytest.raises(MemoryError):
        nb_cuda.Array(1 << 62, "float64")  # overflows size_t in bytes
    a = to_array(nb_cuda, np.arange(4, dtype="float32"))
    np.testing.assert_array_equal(nb_cuda.to_numpy(a, (4,), (1,), 0), np.arange(4))


@needs_gpu
def test_gpu_ndarray_on_cuda_matches_numpy(rng):
    dev = ndl.cuda()
    x = rng.standard_normal((33, 65)).astype("float32")
    a = ndl.NDArray(x, device=dev)
    np.testing.assert_allclose((a @ a.permute((1, 0))).numpy(), x @ x.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a.sum(axis=0).numpy(), x.sum(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a[3:20:2, ::-3].exp().numpy(), np.exp(x[3:20:2, ::-3]), rtol=1e-6)
    np.testing.assert_array_equal(a.max(axis=1).numpy(), x.max(axis=1))
