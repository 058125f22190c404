"""The CUDA backend: what is specific to it.

Every primitive's values against NumPy are the conformance suite's (tests/backends), which
runs the table's cases on the CUDA emulation: the module's host table
(src/cuda/host_table.cc) and kernels (src/cuda/*.cu) compiled by g++ against
tests/cuda_emulation and run on the CPU, and on the real module where a GPU is present.
Here, most of it without a GPU:
- build: the module is built whenever nvcc is (so a build break fails CI, which has nvcc but
  no GPU), imports without a GPU, reports no device, and raises CudaError with CUDA's
  error string when asked for memory there;
- the table: the module and the emulation define the same primitives, with the parameter
  names of primitives.TABLE; the host table's own errors;
- planning: the launch arithmetic (grid sizes, GEMM block order, reduction plans) through
  the module's private helpers;
- the emulation's protections: every primitive's conformance cases again with buffers that
  end at an inaccessible page (unaligned starts: the scalar paths), one SM (grid-stride
  loops take turns), batches beyond one grid; buffers freed; barriers and shuffles; NDArray
  and a training step over the emulated device;
- GPU only (skipped here with the reason): large sizes, memory that stays flat over 1,000
  allocations, out-of-memory as MemoryError, NDArray and a training step on ndl.cuda().
The device-parametrised suites (test_ops, test_ndarray, test_nn, ...) cover ndl.cuda() as a
device when a GPU is present. To run these under compute-sanitizer on a GPU machine:
    compute-sanitizer --tool memcheck --leak-check full python -m pytest -q tests/test_cuda.py
"""

import gc
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from backends.test_conformance import compare

import needle as ndl
from needle.backend_ndarray import ndarray_backend_numpy as nb_np, primitives
from needle.conformance.calls import Out, call, read, to_array
from needle.conformance.cases import (
    Backend,
    bad_views,
    cases,
    matmul_tol,
    reference,
    scatter_add_tol,
)
from needle.emulation.cuda import harness

try:
    from needle.backend_ndarray import ndarray_backend_cuda as nb_cuda
except ImportError as _error:
    nb_cuda = None
    _IMPORT_ERROR = str(_error)

HAS_GPU = nb_cuda is not None and nb_cuda.device_count() > 0
_GPU_REASON = (
    "needs an NVIDIA GPU (the CUDA backend is built but no device is visible)"
    if nb_cuda is not None
    else "the CUDA backend is not built (no nvcc at install time)"
)
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason=_GPU_REASON)
needs_module = pytest.mark.skipif(nb_cuda is None, reason="the CUDA backend is not built")

DTYPES = primitives.DTYPES
FLOATS = primitives.FLOATS


def _nvcc_available() -> bool:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or ""
    candidates = [
        "/usr/local/cuda/bin/nvcc",
        "/opt/cuda/bin/nvcc",
        os.path.join(cuda_home, "bin", "nvcc"),
    ]
    return (
        shutil.which("nvcc") is not None
        or any(os.path.exists(c) for c in candidates[:2])
        or (bool(cuda_home) and os.path.exists(candidates[2]))
    )


@pytest.fixture(scope="module")
def emulated():
    try:
        return harness.emulated_backend()
    except harness.BuildError as error:
        pytest.skip(f"the CUDA emulation does not build here: {error}")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def check(m, name, *args, dtype, exact=False, **tol):
    """Primitive `name` of `m` against the NumPy backend's, by keyword."""
    expected = call(nb_np, name, *args, dtype=dtype)
    actual = call(m, name, *args, dtype=dtype)
    assert actual.dtype == expected.dtype == np.dtype(primitives.TABLE[name].out_dtype or dtype)
    if exact:
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, equal_nan=True, **tol)


# ---- build -------------------------------------------------------------------------------
def test_cuda_backend_is_built_where_nvcc_is():
    if os.environ.get("NEEDLE_CUDA", "ON").upper() in ("OFF", "0", "FALSE", "NO"):
        pytest.skip("NEEDLE_CUDA=OFF: the CUDA backend was not asked for")
    if not _nvcc_available():
        pytest.skip("no nvcc on this machine: the CUDA backend is not built")
    assert nb_cuda is not None, f"nvcc is here but the CUDA backend did not build: {_IMPORT_ERROR}"


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
    code = (
        "import needle as ndl, needle.backend_ndarray.ndarray as nd\n"
        "print(ndl.cuda().enabled(), nd.ndarray_backend_cuda is not None)"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    enabled, built = result.stdout.split()
    assert enabled == str(HAS_GPU)
    assert built == str(nb_cuda is not None)


# ---- the table: one host table behind the module and the emulation -------------------------
def _parameters(function) -> tuple:
    """The parameter names of a nanobind function, from its signature line."""
    signature = function.__doc__.splitlines()[0]
    return tuple(re.findall(r"(\w+):", signature[signature.index("(") :]))


@needs_module
def test_module_defines_the_table_and_nothing_else(emulated):
    """Both are bound from the host table's one list (table::define): the same primitives,
    each with the parameter names of its row, so NDArray and the tests call by keyword."""
    assert primitives.validate(nb_cuda) == primitives.validate(emulated)
    module = {n for n in dir(nb_cuda) if n in primitives.TABLE}
    assert module == {n for n in vars(emulated) if n in primitives.TABLE}
    for name in module:
        assert _parameters(getattr(nb_cuda, name)) == primitives.TABLE[name].param_names, name
    # Every other public name is an extra of the module, not an unlisted primitive.
    extras = {n for n in dir(nb_cuda) if not n.startswith("_")} - module
    assert extras == {
        "Array",
        "CudaError",
        "OutOfMemoryError",
        "DTYPES",
        "device_count",
        "device_info",
        "mem_info",
        "empty_cache",
    }
    assert nb_cuda.__device_name__ == "cuda" and emulated.__device_name__ == "cuda_emulation"
    assert nb_cuda.__tile_size__ == emulated.__tile_size__ == nb_np.__tile_size__
    assert tuple(nb_cuda.DTYPES) == emulated.DTYPES == nb_np.DTYPES
    assert issubclass(nb_cuda.CudaError, RuntimeError)
    assert issubclass(nb_cuda.OutOfMemoryError, MemoryError)


def test_emulation_runs_the_host_tables_list(emulated):
    """The emulation's primitives are what the host table defines, marshalled from the
    table's rows; matmul_tiled is the table's fallback on CUDA."""
    host = harness.host_primitives()
    for name, params in host.items():
        extra = ("out",) if name == "to_numpy" else ()  # the host buffer it writes
        assert params == primitives.TABLE[name].param_names + extra, name
    assert set(host) == {n for n in vars(emulated) if n in primitives.TABLE}
    assert set(host) >= primitives.CORE
    assert "matmul_tiled" not in host and "ewise_rsqrt" in host


def test_host_table_errors(emulated):
    """The host table's checks, as the module raises them: ValueError, TypeError."""
    a32, a64 = emulated.Array(4, "float32"), emulated.Array(4, "float64")
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        emulated.Array(4, "int8")
    with pytest.raises(TypeError, match="share one dtype"):
        emulated.ewise_add(a32, a64, a32)
    with pytest.raises(TypeError, match="share one dtype"):
        emulated.compact(a32, a64, (4,), (1,), 0)
    with pytest.raises(TypeError, match="source dtype"):
        emulated.from_numpy(np.zeros(4, dtype="int64"), a32)
    with pytest.raises(ValueError, match="source has 3 elements"):
        emulated.from_numpy(np.zeros(3, dtype="float32"), a32)
    with pytest.raises(ValueError, match="shape and strides"):
        emulated.compact(a32, a32, (2, 2), (1,), 0)
    with pytest.raises(ValueError, match="batch, row, col"):
        emulated.matmul_strided(a32, a32, a32, 1, 2, 2, 2, 0, (2, 1), 0, (0, 2, 1))
    with pytest.raises(TypeError, match="expected an Array"):
        emulated.fill(np.zeros(4), 1.0)
    emulated.fill(out=a32, val=2.5)  # by keyword, as NDArray calls
    np.testing.assert_array_equal(read(emulated, a32), 2.5)


def test_host_table_checks_sizes_before_a_kernel_runs(emulated):
    """Arrays too small for a call's sizes, or negative sizes, are a ValueError naming the
    primitive before a kernel reads past a buffer (the emulation's guard bytes would catch
    the read; a GPU would fault)."""
    m = emulated
    a10, b10, o10, a5 = m.Array(10), m.Array(10), m.Array(10), m.Array(5)
    idx = to_array(m, np.zeros(2, dtype="int64"))
    calls = {
        "ewise_add": lambda: m.ewise_add(a10, a5, o10),
        "scalar_mul": lambda: m.scalar_mul(a5, 2.0, o10),
        "ewise_exp": lambda: m.ewise_exp(a5, o10),
        "ewise_axpby": lambda: m.ewise_axpby(a5, b10, 1.0, 1.0, o10),
        "reduce_sum": lambda: m.reduce_sum(a10, o10, 1000),
        "reduce_max": lambda: m.reduce_max(a10, o10, 0),
        "reduce_sum_axis": lambda: m.reduce_sum_axis(a10, o10, 10, 10, 10),
        "gather_rows": lambda: m.gather_rows(a10, idx, a5, 2, 5),
        "scatter_add_rows": lambda: m.scatter_add_rows(a5, idx, o10, 2, 5),
        "reduce_max_axis": lambda: m.reduce_max_axis(a10, o10, -1, 2, 1),
        "astype": lambda: m.astype(a5, m.Array(10, "float16")),
    }
    for name, call_it in calls.items():
        with pytest.raises(ValueError, match=name):
            call_it()


def _arguments(m, prim, dtype):
    """Valid arguments for a call of `prim` on Arrays of `dtype` (out: the row's out dtype,
    indices int64): four elements each, products of 1 x 1 matrices."""
    values = {"shape": (4,), "strides": (1,), "a_strides": (1, 1, 1), "b_strides": (1, 1, 1)}
    args = []
    for param in prim.params:
        if param.kind in ("array", "inout") or (
            param.kind == "out" and prim.out_dtype in (None, primitives.ANY_DTYPE)
        ):
            args.append(m.Array(4, dtype))
        elif param.kind == "out":
            args.append(m.Array(4, prim.out_dtype))
        elif param.kind == "index":
            args.append(to_array(m, np.zeros(4, dtype="int64")))
        elif param.kind == "float":
            args.append(1.0)
        elif param.kind == "int":
            args.append(4 if param.name == "size" else 0 if "offset" in param.name else 1)
        else:
            args.append(values[param.name])
    return args


def _own_rows(m):
    return [p for p in primitives.TABLE.values() if p.name in vars(m) or p.name in dir(m)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_take_exactly_their_dtypes(emulated, dtype):
    """Every primitive of the host table runs on each dtype its row lists and raises a
    TypeError naming the primitive and the dtype for each other one (the host table's
    dtype sets mirror the table's rows)."""
    checked = 0
    for prim in _own_rows(emulated):
        if prim.name in ("to_numpy", "from_numpy", "synchronize"):
            continue
        args = _arguments(emulated, prim, dtype)
        if dtype in prim.dtypes:
            getattr(emulated, prim.name)(*args)
        else:
            with pytest.raises(TypeError, match=rf"{prim.name}\b.*{dtype}"):
                getattr(emulated, prim.name)(*args)
        checked += 1
    assert checked == len(_own_rows(emulated)) - 3


def test_host_table_dtype_errors(emulated):
    """Comparisons write bool; indices are int64; the others share the inputs' dtype; a
    scalar an integer dtype cannot hold is refused (NDArray never passes one)."""
    i32, f32 = emulated.Array(4, "int32"), emulated.Array(4, "float32")
    with pytest.raises(TypeError, match="ewise_eq: out must be a bool Array, not int32"):
        emulated.ewise_eq(i32, i32, i32)
    with pytest.raises(TypeError, match="scalar_lt: out must be a bool Array"):
        emulated.scalar_lt(f32, 1.0, f32)
    with pytest.raises(TypeError, match="share one dtype"):
        emulated.ewise_ge(i32, f32, emulated.Array(4, "bool"))
    indices = to_array(emulated, np.zeros(2, dtype="int32"))
    with pytest.raises(TypeError, match="gather_rows: indices must be a int64 Array, not int32"):
        emulated.gather_rows(f32, indices, f32, 2, 2)
    with pytest.raises(TypeError, match="scatter_add_rows: indices must be a int64 Array"):
        emulated.scatter_add_rows(f32, to_array(emulated, np.zeros(2)), f32, 2, 2)
    u8 = emulated.Array(4, "uint8")
    with pytest.raises(ValueError, match=r"scalar_add: 256.* outside the range of uint8"):
        emulated.scalar_add(u8, 256.0, u8)
    with pytest.raises(ValueError, match="fill: nan is outside the range of int32"):
        emulated.fill(i32, math.nan)
    with pytest.raises(ValueError, match="outside the range of int64"):
        emulated.fill(emulated.Array(1, "int64"), 2.0**63)
    emulated.fill(emulated.Array(1, "int64"), -(2.0**63))  # the least int64 is one


INT_EDGES = {
    "int32": [-(2**31), -(2**31) + 1, -1, 0, 1, 2**31 - 1, 46341, -46341, 65536],
    "int64": [-(2**63), -(2**63) + 1, -1, 0, 1, 2**63 - 1, 3037000500, 2**32, -(2**32)],
    "uint8": [0, 1, 2, 127, 128, 200, 254, 255, 16],
}


@pytest.mark.parametrize("tight_buffers", [False, True])
@pytest.mark.parametrize("dtype", sorted(INT_EDGES) + ["bool"])
def test_integers_and_bool_bitwise_as_numpy(emulated, rng, dtype, tight_buffers):
    """Wrapping add, sub, mul, neg, abs (abs(INT_MIN) == INT_MIN, -uint8(1) == 255), sign,
    relu, maximum and the comparisons, against the array or a scalar, bitwise as NumPy, at
    sizes that take the vector path and its tail; on tightly placed buffers too."""
    harness.Settings.tight = tight_buffers
    try:
        pool = np.array(INT_EDGES.get(dtype, [0, 1]), dtype=dtype)
        for n in (1, 7, 16, 33, 1001):
            a = rng.choice(pool, n).astype(dtype)
            b = rng.choice(pool, n).astype(dtype)
            for prim in primitives.TABLE.values():
                if prim.group not in ("unary", "binary", "scalar") or dtype not in prim.dtypes:
                    continue
                if prim.name in ("ewise_axpby", "ewise_broadcast_binary"):
                    continue
                out = primitives.TABLE[prim.name].out_dtype or dtype
                for val in [float(v) for v in pool[:3]] if prim.group == "scalar" else [None]:
                    args = {"unary": (a,), "binary": (a, b), "scalar": (a, val)}[prim.group]
                    results = []
                    for m in (nb_np, emulated):
                        arrays = [to_array(m, x) if isinstance(x, np.ndarray) else x for x in args]
                        o = m.Array(n, out)
                        with np.errstate(all="ignore"):
                            getattr(m, prim.name)(*arrays, o)
                        results.append(read(m, o))
                    assert results[1].dtype == np.dtype(out)
                    np.testing.assert_array_equal(results[1], results[0], err_msg=prim.name)
    finally:
        harness.Settings.tight = False


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_integer_reductions_identities_and_wrapping(emulated, rng, dtype):
    """reduce_max on ints and bool (bool: any) starts from the least value of the dtype:
    rows of INT_MIN, of zeros, all-false rows; int64 sums wrap. Every strategy of the plans
    (thread, warp, blocks per row, middle axis with chunks), and with one SM."""
    lowest = 0 if dtype in ("uint8", "bool") else np.iinfo(dtype).min
    for sms in (2, 1):
        harness.configure(sm_count=sms)
        try:
            for rows, size in [(5, 3), (40, 17), (3, 1100), (1, 70001)]:
                a = np.full(rows * size, lowest, dtype=dtype)
                a[rng.integers(0, a.size, rows)] = rng.choice(INT_EDGES.get(dtype, [1]), rows)
                a[:size] = lowest  # one row of nothing but the least value
                check(emulated, "reduce_max", a, Out(rows), size, dtype=dtype, exact=True)
                if dtype == "int64":
                    check(emulated, "reduce_sum", a, Out(rows), size, dtype=dtype, exact=True)
            for outer, size, inner in [(3, 40, 7), (1, 5000, 3), (2, 9, 33)]:
                a = rng.choice(INT_EDGES.get(dtype, [0, 1]), outer * size * inner).astype(dtype)
                for name in ("reduce_max_axis", "reduce_sum_axis"):
                    if dtype in primitives.TABLE[name].dtypes:
                        check(
                            emulated,
                            name,
                            a,
                            Out(outer * inner),
                            outer,
                            size,
                            inner,
                            dtype=dtype,
                            exact=True,
                        )
            if dtype == "int64":  # wraps as NumPy: INT64_MAX + 1 == INT64_MIN
                a = np.array([2**63 - 1, 1, 2**62, 2**62, 2**62, 2**62], dtype="int64")
                check(emulated, "reduce_sum", a, Out(3), 2, dtype=dtype, exact=True)
        finally:
            harness.configure()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows_with_int64_indices_every_dtype(emulated, rng, dtype):
    table = rng.integers(0, 2 if dtype == "bool" else 100, 50 * 3).astype(dtype)
    indices = rng.integers(0, 50, 37)
    results = []
    for m in (nb_np, emulated):
        out = m.Array(37 * 3, dtype)
        m.gather_rows(to_array(m, table), to_array(m, indices, "int64"), out, 37, 3)
        results.append(read(m, out))
    assert results[1].dtype == results[0].dtype
    np.testing.assert_array_equal(results[1].view(np.uint8), results[0].view(np.uint8))


# ---- conversions: bit for bit as NumPy's astype (ml_dtypes' for bfloat16) ------------------
def _astype(m, x: np.ndarray, target: str) -> np.ndarray:
    out = m.Array(x.size, target)
    m.astype(to_array(m, x, x.dtype.name), out)
    return read(m, out)


def _bits(x: np.ndarray) -> np.ndarray:
    """A floating-point array's bit patterns (NaN payloads compared too); others as they are."""
    return x.view(f"uint{8 * x.dtype.itemsize}") if x.dtype.name in primitives.FLOATING else x


def _check_astype(m, x: np.ndarray, target: str):
    """astype of x to target against NumPy's, bit for bit; to an integer, where x truncates
    into its range (NumPy leaves the rest undefined: the row gives NaN 0, beyond the range
    the nearest end)."""
    got = _astype(m, x, target)
    with np.errstate(all="ignore"):  # (NumPy's warnings on NaN and overflow)
        # bfloat16 from anything but float32 through float32 (needle's rule, torch's; ml_dtypes
        # rounds float64 and integers once from 0.7)
        through = target == "bfloat16" and x.dtype.name not in ("float32", "bfloat16")
        want = (x.astype(np.float32) if through else x).astype(primitives.numpy_dtype(target))
        wide = x.astype(np.float64)
    what = f"{x.dtype.name} to {target}"
    if target in primitives.INTS and x.dtype.name in primitives.FLOATING:
        info = np.iinfo(target)
        inside = (wide > float(info.min) - 1) & (wide < float(info.max) + 1)  # NaN: False
        clamped = np.where(np.isnan(wide), 0, np.where(wide > 0, info.max, info.min))
        want = np.where(inside, want, clamped).astype(target)
    np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=what)


def _float_samples(rng) -> np.ndarray:
    """float32 bit patterns around every rounding point of both 16-bit floats: each of the
    2^16 upper halves (bfloat16's bits) with low halves at and beside the ties of bfloat16
    (0x8000) and of float16 (bit 12, with bits 13 to 15 in each combination), and random ones."""
    near_tie = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF], dtype=np.uint32)
    lows = (np.arange(8, dtype=np.uint32)[:, None] << 13 | near_tie).ravel()
    lows = np.concatenate([lows, [0x7FFF, 0x8001, 0xFFFF], rng.integers(0, 2**16, 8)])
    highs = np.arange(2**16, dtype=np.uint32) << 16
    return (highs[:, None] | lows.astype(np.uint32)).ravel().view(np.float32)


@pytest.mark.parametrize("source", primitives.HALFS)
def test_astype_of_every_16_bit_pattern(emulated, source):
    """Every float16 and bfloat16 pattern (NaNs, infinities, subnormals, both zeros) into
    every dtype the module holds."""
    x = np.arange(2**16, dtype=np.uint16).view(primitives.numpy_dtype(source))
    for target in emulated.DTYPES:
        _check_astype(emulated, x, target)


@pytest.mark.parametrize("target", primitives.HALFS)
def test_astype_rounds_into_16_bit_floats(emulated, rng, target):
    """float32 at and beside every tie of the 16-bit floats (so every exponent, subnormals and
    overflow included); float64 as well, and one double ulp either side of each (float16 is
    rounded once from float64, bfloat16 through float32, as torch); integers (int64 through
    float32 too: 2^62 + 2^54 + 2^38 + 1 rounds differently through float64)."""
    f32 = _float_samples(rng)
    _check_astype(emulated, f32, target)
    with np.errstate(invalid="ignore"):
        f64 = f32[::3].astype(np.float64)
    _check_astype(emulated, np.concatenate([f64, np.nextafter(f64, -np.inf)]), target)
    _check_astype(emulated, np.nextafter(f64, np.inf), target)
    wide = 2**62 + 2**54 + 2**38 + 1
    ints = [np.arange(-70000, 70000), rng.integers(-(2**63), 2**63 - 1, 4096), [wide, -wide]]
    for dtype in ("int64", "int32", "uint8", "bool"):
        _check_astype(emulated, np.concatenate(ints).astype(dtype), target)


def test_astype_keeps_nan_payloads_of_float32_and_float64(emulated):
    """Signalling and quiet NaNs with payloads: between float32 and float64 as x86's
    conversions (quiet, payload kept: the GPU's cvt would give its own NaN), into the 16-bit
    floats as NumPy and ml_dtypes."""
    f32 = np.array([0x7F800001, 0xFFA00000, 0x7FC00001, 0x7F800000, 1, 0x80000001], np.uint32)
    f64 = np.array([0x7FF0000000000001, 0xFFF4000000000000, 0x7FF8000020000000, 1], np.uint64)
    for x in (f32.view(np.float32), f64.view(np.float64)):
        for target in primitives.FLOATING:
            _check_astype(emulated, x, target)


# ---- launch planning (host arithmetic, no device) ------------------------------------------
@needs_module
@pytest.mark.parametrize(
    "items,block,sms,expected",
    [
        (0, 256, 132, 1),
        (1, 256, 132, 1),
        (256, 256, 132, 1),
        (257, 256, 132, 2),
        (10**9, 256, 132, 132 * 32),
        (10**9, 256, 0, 32),
        (5000, 128, 2, 40),
    ],
)
def test_grid_size(items, block, sms, expected):
    assert nb_cuda._grid_size(items, block, sms) == expected


@needs_module
@pytest.mark.parametrize(
    "tiles_m,tiles_n", [(1, 1), (1, 7), (7, 1), (8, 3), (9, 5), (17, 17), (64, 2), (3, 64)]
)
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
    for half in primitives.HALFS:  # the float32 kernel, on operands converted as loaded
        assert nb_cuda._gemm_tiling(half) == f32


@needs_module
@pytest.mark.parametrize(
    "rows,size,sms",
    [
        (1, 1, 132),
        (10**6, 16, 132),
        (5, 17, 132),
        (3, 1024, 132),
        (10**5, 10**5, 132),
        (1, 10**8, 132),
        (7, 3 * 10**6, 2),
        (2, 5000, 132),
    ],
)
def test_reduce_last_plan(rows, size, sms):
    plan = nb_cuda._plan_reduce_last(rows, size, sms)
    assert plan["strategy"] == (0 if size <= 16 else 1 if size <= 1024 or rows >= 64 * sms else 2)
    assert plan["block"] == (256, 1) and 1 <= plan["grid"][0] <= max(32 * sms, 1)
    chunks, chunk_len = plan["chunks"], plan["chunk_len"]
    assert (1 <= chunks <= 1024 and chunk_len % 4 == 0) or chunks == 1
    assert (chunks - 1) * chunk_len < size <= chunks * chunk_len
    if plan["strategy"] == 2 and rows == 1 and size >= 10**7:
        assert chunks > 1  # one row is spread over many blocks


@needs_module
@pytest.mark.parametrize(
    "outer,size,inner,sms",
    [
        (1, 10, 2, 132),
        (4, 3, 33, 132),
        (1, 10**6, 3, 132),
        (100, 100, 1000, 132),
        (1, 5000, 3, 2),
        (2, 7, 1, 2),
    ],
)
def test_reduce_middle_plan(outer, size, inner, sms):
    plan = nb_cuda._plan_reduce_middle(outer, size, inner, sms)
    bx, by = plan["block"]
    assert bx == min(32, 1 << max(inner - 1, 0).bit_length()) and bx * by == 256
    assert plan["grid"][1] == plan["chunks"]
    assert (plan["chunks"] - 1) * plan["chunk_len"] < size <= plan["chunks"] * plan["chunk_len"]


# ---- the emulation's protections ---------------------------------------------------------
@pytest.fixture
def tight():
    """Emulated buffers that end exactly at an inaccessible page: their starts are unaligned
    for most sizes (the kernels' scalar paths), and any overrun faults."""
    harness.Settings.tight = True
    yield
    harness.Settings.tight = False


@pytest.mark.parametrize(
    "prim,dtype",
    [(p, d) for p in primitives.TABLE.values() for d in p.dtypes],
    ids=lambda x: getattr(x, "name", x),
)
def test_conformance_cases_with_buffers_ending_at_a_fault(emulated, tight, prim, dtype):
    """The conformance suite's cases of every row, through the host table's own primitive
    or, where it has none, the table's fallback over its core ones, on tightly placed
    buffers."""
    backend = Backend("cuda_emulated_tight", emulated, DTYPES, fast=True, ordered_scatter=False)
    ref = reference(prim, backend)
    own = getattr(emulated, prim.name, None) or (lambda **kwargs: prim.fallback(emulated, **kwargs))
    with np.errstate(all="ignore"):
        for case in cases(prim, backend, dtype):
            expected = call(nb_np, prim.name, *case.args, dtype=dtype, impl=ref)
            actual = call(emulated, prim.name, *case.args, dtype=dtype, impl=own)
            tol = case.tol(dtype) or (case.unordered_tol(dtype) if case.unordered_tol else None)
            what = f"{prim.name} in {dtype}: {case.label}"
            compare(actual, expected, tol, prim.out_dtype or dtype, what)


def test_grid_stride_loops_with_one_sm(emulated, rng):
    # One SM: grids of at most 32 blocks, so blocks take several rows, tiles or items in turn.
    harness.configure(sm_count=1)
    try:
        tol = dict(rtol=1e-12, atol=1e-10)
        for rows, size in [(40, 1100), (3000, 20), (500, 40)]:
            a = rng.standard_normal(rows * size)
            check(emulated, "reduce_sum", a, Out(rows), size, dtype="float64", **tol)
            check(emulated, "reduce_max", a, Out(rows), size, dtype="float64", exact=True)
        for outer, size, inner in [(70, 9, 5), (3, 40, 700)]:
            a = rng.standard_normal(outer * size * inner)
            check(
                emulated,
                "reduce_sum_axis",
                a,
                Out(outer * inner),
                outer,
                size,
                inner,
                dtype="float64",
                **tol,
            )
        x = rng.standard_normal(300_001)
        check(emulated, "ewise_tanh", x, Out(x.size), dtype="float32", rtol=1e-5, atol=1e-6)
        check(
            emulated,
            "compact",
            x,
            Out(100_000),
            (100_000,),
            (-3,),
            300_000,
            dtype="float64",
            exact=True,
        )
    finally:
        harness.configure()


def test_matmul_batches_beyond_one_grid(emulated, rng):
    # gridDim.y is limited (65535 on a GPU); the emulation is told 2, so 5 batches take 3 grids.
    harness.configure(sm_count=2, max_grid_y=2)
    try:
        a, b = rng.standard_normal(5 * 3 * 4), rng.standard_normal(5 * 4 * 2)
        check(
            emulated,
            "batched_matmul",
            a,
            b,
            Out(5 * 3 * 2),
            5,
            3,
            4,
            2,
            dtype="float64",
            **matmul_tol(4)("float64"),
        )
    finally:
        harness.configure()


def test_layout_kernels_take_views_nobody_merged(emulated, rng):
    """NDArray merges a view's axes before it calls a layout primitive, but the kernels take
    any view: here 40 axes, 30 of them of size 1, the others a reversed 10-d transpose."""
    data = rng.standard_normal(2**10)
    shape = (1, 1, 1, 2) * 10
    strides = tuple(s for i in range(10) for s in (7, -3, 0, 2**i))
    n = 2**10
    check(emulated, "compact", data, Out(n), shape, strides, 0, dtype="float64", exact=True)
    check(
        emulated,
        "ewise_setitem",
        data,
        Out(n, data),
        shape,
        strides,
        0,
        dtype="float64",
        exact=True,
    )
    check(
        emulated,
        "scalar_setitem",
        n,
        3.0,
        Out(n, data),
        shape,
        strides,
        0,
        dtype="float64",
        exact=True,
    )
    np.testing.assert_array_equal(
        emulated.to_numpy(to_array(emulated, data), shape, strides, 0),
        nb_np.to_numpy(to_array(nb_np, data), shape, strides, 0),
    )


# ---- NDArray, autograd and a training step over the emulated kernels -----------------------
def test_ndarray_and_training_on_the_emulated_device(emulated, rng):
    """NDArray's dispatch (strided matmuls, axis reductions, broadcasts, setitem) and an MLP's
    SGD steps over the emulated kernels agree with the NumPy backend."""
    from needle.backend_ndarray import BackendDevice, NDArray

    emu, ref = BackendDevice("cuda_emulation", emulated), ndl.cpu_numpy()
    x = rng.standard_normal((2, 33, 17))
    a, b = NDArray(x, device=emu), NDArray(x, device=ref)
    for f in (
        lambda t: t @ t.permute((0, 2, 1)),
        lambda t: t.sum(axis=1),
        lambda t: t.max(axis=(0, 2)),
        lambda t: (t[:, ::-2, 3:] + 1).exp(),
        lambda t: t.broadcast_to((3, 2, 33, 17)).sum(axis=(0, 3)),
    ):
        np.testing.assert_allclose(f(a).numpy(), f(b).numpy(), rtol=1e-5, atol=1e-5)
    a[0, 1:5, :] = 7.0
    b[0, 1:5, :] = 7.0
    np.testing.assert_array_equal(a.numpy(), b.numpy())

    (loss_e, params_e), (loss_r, params_r) = _sgd_steps(emu), _sgd_steps(ref)
    np.testing.assert_allclose(loss_e, loss_r, rtol=1e-5)
    for pe, pr in zip(params_e, params_r):
        np.testing.assert_allclose(pe, pr, rtol=1e-4, atol=1e-5)


def _sgd_steps(device, autocast=None):
    """Three SGD steps (momentum) of a small MLP on seeded data, forward and loss under
    ndl.autocast(autocast) when given: (losses, parameters as NumPy arrays)."""
    np.random.seed(3)
    model = ndl.nn.Sequential(
        ndl.nn.Linear(20, 32, device=device), ndl.nn.ReLU(), ndl.nn.Linear(32, 5, device=device)
    )
    opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = np.random.default_rng(1)
    losses = []
    for _ in range(3):
        xb = ndl.Tensor(data.standard_normal((16, 20)), device=device)
        yb = ndl.Tensor(data.integers(0, 5, 16), device=device)
        with ndl.autocast(dtype=autocast or "bfloat16", enabled=autocast is not None):
            loss = ndl.nn.SoftmaxLoss()(model(xb), yb)
        opt.reset_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.numpy()))
    return losses, [p.numpy() for p in model.parameters()]


@pytest.mark.parametrize("dtype", primitives.HALFS)
def test_16_bit_floats_and_autocast_on_the_emulated_device(emulated, rng, dtype):
    """NDArray in a 16-bit float (its matmuls native, the rest computed in float32 and
    rounded once) and SGD steps under autocast over the emulated kernels agree with the
    NumPy backend to the last bit or so."""
    from needle.backend_ndarray import BackendDevice, NDArray

    emu, ref = BackendDevice("cuda_emulation", emulated), ndl.cpu_numpy()
    x = rng.standard_normal((2, 33, 17))
    a, b = (NDArray(x, device=d).astype(dtype) for d in (emu, ref))
    for f in (
        lambda t: t @ t.permute((0, 2, 1)),
        lambda t: t.sum(axis=1),
        lambda t: (t[:, ::-2, 3:] + 1).exp(),
        lambda t: t.astype("float32"),
    ):
        got, want = f(a).numpy(), f(b).numpy()
        assert got.dtype == want.dtype
        eps = 2.0 ** -(10 if dtype == "float16" else 7)
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=eps)

    for pe, pr in zip(_sgd_steps(emu, dtype)[1], _sgd_steps(ref, dtype)[1]):
        assert pe.dtype == pr.dtype == np.float32
        np.testing.assert_allclose(pe, pr, rtol=1e-4, atol=1e-5)


# ---- the emulation itself ------------------------------------------------------------------
def test_emulation_frees_every_buffer(emulated, rng):
    gc.collect()  # earlier tests' garbage (autograd graphs hold cycles) is not this test's
    before = harness.live_bytes()
    check(
        emulated,
        "reduce_sum",
        rng.standard_normal(50001),
        Out(1),
        50001,
        dtype="float32",
        rtol=1e-4,
        atol=1e-3,
    )
    check(
        emulated,
        "to_numpy",
        rng.standard_normal(12),
        (3, 2),
        (1, 3),
        0,
        dtype="float64",
        exact=True,
    )  # gathered into a device temporary first
    gc.collect()
    assert harness.live_bytes() == before  # the partials and the temporaries were freed too


def test_emulation_reports_writes_past_a_buffer(emulated):
    """A kernel that writes past its output is caught by the guard bytes when the writing
    thread stops. Here scatter_add_rows adds a row of 2 at row 1 of a 3-element out: the host
    table checks the sizes, not the index values (NDArray has checked them; a GPU kernel would
    have to). The second lane of the row writes out[3], 24 bytes in, through the kernel's
    third argument; the guard bytes are repaired, so the next call runs clean."""
    a, out = to_array(emulated, np.arange(4.0)), emulated.Array(3, "float64")
    indices = to_array(emulated, np.array([0, 1]), "int64")
    with pytest.raises(
        harness.EmulationError,
        match=r"^kernel scatter_add_rows, block \(0, 0, 0\), thread \(3, 0, 0\): out-of-bounds "
        r"write past the end of a buffer of 24 bytes \(at byte 24\), kernel argument 3$",
    ):
        emulated.scatter_add_rows(a, indices, out, 2, 2)
    emulated.fill(out, 1.0)
    np.testing.assert_array_equal(read(emulated, out), [1.0, 1.0, 1.0])


def test_emulation_warp_shuffles_and_barriers(emulated):
    out = harness.selftest(0)
    # lane l of warp w holds staged[(32w + l + 1) % 256]; the warp's sum reaches every lane.
    expected = [sum((32 * w + lane + 1) % 256 for lane in range(32)) for w in range(8)]
    np.testing.assert_array_equal(out, np.repeat(expected, 32))


BLOCK_0 = r"block \(0, 0, 0\), thread "


@pytest.mark.parametrize(
    "which,message",
    [
        (1, "misaligned"),
        (
            2,
            r"^kernel divergent barrier, " + BLOCK_0 + r"\(32, 0, 0\): has returned while "
            r"thread \(0, 0, 0\) waits at __syncthreads\(\) \(selftest.cc:\d+\): every thread",
        ),
        (3, "warp 0: 16 lanes wait in a warp shuffle that the other lanes never reach"),
        (4, "bad launch configuration"),
        (
            5,
            r"^kernel two_barriers, " + BLOCK_0 + r"\(16, 0, 0\): waits at another "
            r"__syncthreads\(\) \(selftest.cc:(\d+)\) while thread \(0, 0, 0\) waits at "
            r"__syncthreads\(\) \(selftest.cc:(?!\1)\d+\)",
        ),
        (
            6,
            r"^kernel past_the_end, " + BLOCK_0 + r"\(37, 0, 0\): out-of-bounds write past the "
            r"end of a buffer of 1024 bytes \(at byte 1024\), kernel argument 1$",
        ),
        (
            7,
            r"^kernel before_the_start, " + BLOCK_0 + r"\(5, 0, 0\): out-of-bounds write before "
            r"the start of a buffer of 1024 bytes \(at byte -4\), kernel argument 1$",
        ),
        (
            8,
            r"^kernel null, " + BLOCK_0 + r"\(0, 0, 0\): read through a null pointer, kernel "
            r"argument 2 is null$",
        ),
        (
            9,
            r"^kernel missing_barrier, " + BLOCK_0 + r"\(0, 0, 0\): wrote byte \d+ of a buffer "
            r"of 1024 bytes \(kernel argument 1\) with a value that depends on the order",
        ),
    ],
)
def test_emulation_reports_misuse(emulated, which, message):
    """selftest.cc's faulty kernels: each report names the kernel, block and thread. 6 and 8
    fault (a guard page, null): the launch ends and the emulation goes on."""
    with pytest.raises(harness.EmulationError, match=message):
        harness.selftest(which)
    np.testing.assert_array_equal(harness.selftest(0)[:32], np.full(32, 528.0))


def test_emulation_order_check_can_be_turned_off(emulated):
    """Without the second, reversed run (NEEDLE_CUDA_ORDER_CHECK=0) the missing barrier goes
    unreported: thread t reads staged[t + 1] before thread t + 1 wrote it, so it gets what the
    previous launch left there (1000 less); only thread 255 reads this launch's (thread 0's)."""
    harness.set_order_check(False)
    try:
        harness.selftest(9)  # (so that `staged` holds a launch's values)
        out = harness.selftest(9)
    finally:
        harness.set_order_check(True)
    np.testing.assert_array_equal(out[:255] - out[255], np.arange(1.0, 256.0) - 1000.0)
    with pytest.raises(harness.EmulationError, match="missing __syncthreads"):
        harness.selftest(9)


# ---- GPU only ------------------------------------------------------------------------------
@needs_gpu
def test_gpu_device_info():
    info = nb_cuda.device_info()
    assert info["sm_count"] > 0 and info["compute_capability"][0] >= 7
    mem = nb_cuda.mem_info()
    assert 0 < mem["free"] <= mem["total"]


@needs_gpu
@pytest.mark.parametrize("dtype", FLOATS)
def test_gpu_large_elementwise_and_reductions(dtype, rng):
    n = (1 << 25) + 3
    x = rng.standard_normal(n).astype(dtype)
    a = to_array(nb_cuda, x)
    out = nb_cuda.Array(n, dtype)
    nb_cuda.ewise_add(a, a, out)
    np.testing.assert_array_equal(nb_cuda.to_numpy(out, (n,), (1,), 0), x + x)
    total = nb_cuda.Array(1, dtype)
    nb_cuda.reduce_sum(a, total, n)
    assert abs(
        nb_cuda.to_numpy(total, (1,), (1,), 0)[0] - x.astype(np.float64).sum()
    ) < 1e-2 * math.sqrt(n)
    nb_cuda.reduce_max(a, total, n)
    assert nb_cuda.to_numpy(total, (1,), (1,), 0)[0] == x.max()
    cols = nb_cuda.Array(1024, dtype)
    nb_cuda.reduce_sum_axis(a, cols, 1, (n - 3) // 1024, 1024)  # a prefix, as (1, R, 1024)
    expected = x[: n - 3].reshape(-1, 1024).astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(
        nb_cuda.to_numpy(cols, (1024,), (1,), 0), expected, rtol=1e-4, atol=1e-2
    )


@needs_gpu
@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_gpu_large_integer_and_bool_rows(dtype, rng):
    """Many grid-stride turns of the 16-byte integer vectors (16 uint8 or bool per load),
    comparisons into bool, wrapping adds, and max (and int64 sums) over blocks per row."""
    n = (1 << 25) + 3
    pool = INT_EDGES.get(dtype, [0, 1])
    x, y = (rng.choice(pool, n).astype(dtype) for _ in range(2))
    a, b = to_array(nb_cuda, x), to_array(nb_cuda, y)
    flags = nb_cuda.Array(n, "bool")
    nb_cuda.ewise_lt(a, b, flags)
    np.testing.assert_array_equal(read(nb_cuda, flags), x < y)
    if dtype != "bool":
        out = nb_cuda.Array(n, dtype)
        nb_cuda.ewise_add(a, b, out)
        np.testing.assert_array_equal(read(nb_cuda, out), np.add(x, y))
    total = nb_cuda.Array(1, dtype)
    nb_cuda.reduce_max(a, total, n)
    assert read(nb_cuda, total)[0] == x.max()
    if dtype == "int64":
        nb_cuda.reduce_sum(a, total, n)
        assert read(nb_cuda, total)[0] == x.sum()


@needs_gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("m,n,p", [(1024, 1024, 1024), (1023, 517, 1031), (4096, 64, 4096)])
def test_gpu_large_matmul(m, n, p, dtype, rng):
    a, b = rng.standard_normal((m, n)), rng.standard_normal((n, p))
    out = nb_cuda.Array(m * p, dtype)
    nb_cuda.matmul(
        to_array(nb_cuda, a.astype(dtype)), to_array(nb_cuda, b.astype(dtype)), out, m, n, p
    )
    np.testing.assert_allclose(
        nb_cuda.to_numpy(out, (m, p), (p, 1), 0), a @ b, **matmul_tol(n)(dtype)
    )


@needs_gpu
@pytest.mark.parametrize("dtype", FLOATS)
def test_gpu_embedding_sized_rows_by_index(dtype, rng):
    """An embedding's lookup and gradient at language-model size: 10,000 rows of 512, 700
    indices, half of them on 4 hot rows (hundreds of atomicAdds on one element at once)."""
    rows, n, row_size = 10_000, 700, 512
    indices = np.concatenate([rng.integers(0, rows, n // 2), rng.integers(0, 4, n - n // 2)])
    table, a = rng.standard_normal(rows * row_size), rng.standard_normal(n * row_size)
    check(
        nb_cuda,
        "gather_rows",
        table,
        indices,
        Out(n * row_size),
        n,
        row_size,
        dtype=dtype,
        exact=True,
    )
    init = rng.standard_normal(rows * row_size)
    for _ in range(3):  # the order of the atomic additions differs from run to run
        check(
            nb_cuda,
            "scatter_add_rows",
            a,
            indices,
            Out(rows * row_size, init),
            n,
            row_size,
            dtype=dtype,
            **scatter_add_tol(a, init, indices)(dtype),
        )


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
    model = ndl.nn.Sequential(
        ndl.nn.Linear(64, 128, device=device), ndl.nn.ReLU(), ndl.nn.Linear(128, 10, device=device)
    )
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


def test_host_table_checks_views_against_buffers(emulated):
    # The host table raises before a kernel reads or writes outside a buffer (issue 13).
    for name, args in bad_views(emulated):
        with pytest.raises(ValueError, match=r"buffer|elements|view"):
            getattr(emulated, name)(*args)
