"""What is particular to the Metal backends, run on the CPU through the MSL emulation.

No Mac is needed: tests/metal_emulation compiles python/needle/backend_ndarray/metal/*.metal
(the files the Metal backends compile on a Mac) as C++ with g++ and runs each launch as a
grid of threadgroups of real threads (tests/README.md). The kernels' values, on every
primitive of the table, each tile and threadgroup edge and both matmul kernels, are checked
with every other backend's in tests/backends (as metal_emulated, and on a Mac as metal and
mps). Here: the emulation itself; the metal backend's launch planning (which kernel runs
with which grid, the command buffer's queue, dtype and size limits, the matmul kernel
choice, MPS matrix layouts).
"""

import re

import ml_dtypes
import numpy as np
import pytest

import needle as ndl
from needle.backend_ndarray import metal_primitives, primitives
from needle.backend_ndarray.metal_primitives import mps_matrix_layout
from needle.conformance.calls import read, to_array
from needle.emulation.metal import harness


@pytest.fixture(scope="module")
def emu():
    """The emulated backend (skipped, with the reason, where it does not build)."""
    harness.library_or_skip()
    return harness.emulated_backend()


# ---- the harness ---------------------------------------------------------------------------------
def launch(kernel, buffers, groups, threads, constants=()):
    """Run a kernel directly: buffers are NumPy arrays bound at their list index."""
    bindings = {i: (b.ctypes.data, b.nbytes) for i, b in enumerate(buffers) if b is not None}
    keep = []
    for index, data in constants:
        block = np.frombuffer(bytearray(data), dtype=np.uint8)
        keep.append(block)
        bindings[index] = (block.ctypes.data, block.nbytes)
    harness.library().launch(kernel, bindings, groups, threads)


def test_harness_delivers_every_position(emu):
    groups, threads = (3, 2, 1), (40, 2, 1)  # 80 threads: SIMD-groups of 32, 32 and 16
    width, height = groups[0] * threads[0], groups[1] * threads[1]
    out = np.zeros((height, width, 11), dtype=np.uint32)
    launch("selftest_positions", [out], groups, threads)
    y, x = np.mgrid[0:height, 0:width]
    t = (y % 2) * 40 + x % 40
    expected = np.stack(
        [x, y, 0 * x, x // 40, y // 2, 0 * x, x % 40, y % 2, t, t // 32, t % 32], axis=-1
    )
    np.testing.assert_array_equal(out, expected)


def test_harness_shares_threadgroup_memory_within_a_threadgroup(emu):
    x = np.arange(64 * 5, dtype=np.float32)
    out = np.zeros_like(x)
    launch("selftest_reverse", [x, out], (5, 1, 1), (64, 1, 1))
    np.testing.assert_array_equal(out, x.reshape(5, 64)[:, ::-1].reshape(-1))


def test_harness_reports_threads_that_skip_a_barrier(emu):
    with pytest.raises(harness.LaunchError, match="Metal requires every thread to reach it"):
        launch("selftest_early_return", [np.zeros(32, np.float32)], (1, 1, 1), (32, 1, 1))


# fill_float32's constants: the value 0.0 at [[buffer(1)]], 10 elements at [[buffer(2)]].
FILL_10 = [(1, bytes(4)), (2, (10).to_bytes(4, "little"))]


def test_harness_reports_writes_outside_a_buffer(emu):
    """Past the end: the guard page faults in the writing thread, which the report names;
    before the start: the guard bytes, checked after the launch."""
    runtime = emu.backend.runtime
    buffer = runtime.allocate(4 * 10)
    runtime.dispatch(
        "selftest_out_of_bounds",
        [(0, buffer, 0)],
        [(1, (10).to_bytes(4, "little"))],
        (1, 1, 1),
        (32, 1, 1),
    )
    with pytest.raises(
        harness.LaunchError,
        match=r"^kernel selftest_out_of_bounds, threadgroup \(0, 0, 0\), thread \(0, 0, 0\): "
        r"out-of-bounds write past the end of argument 'out' at \[\[buffer\(0\)\]\], "
        r"40 bytes bound \(at byte 40\)$",
    ):
        runtime.wait()
    buffer.raw[buffer.start - 1] = 0  # as a write to out[-1] would
    runtime.dispatch("fill_float32", [(0, buffer, 0)], FILL_10, (1, 1, 1), (32, 1, 1))
    with pytest.raises(harness.LaunchError, match="before the start of the buffer bound at"):
        runtime.wait()


def test_harness_reports_threads_at_different_barriers(emu):
    runtime = emu.backend.runtime
    buffer = runtime.allocate(4 * 32)
    runtime.dispatch("selftest_two_barriers", [(0, buffer, 0)], [], (2, 1, 1), (32, 1, 1))
    # Threads 0-15 wait at the first barrier, 16-31 at the second; they run concurrently, so
    # which of them the report names varies.
    with pytest.raises(
        harness.LaunchError,
        match=r"^kernel selftest_two_barriers, threadgroup \(0, 0, 0\), thread \(\d+, 0, 0\): "
        r"waits at threadgroup_barrier \(selftest.metal:\d+\) while thread \(\d+, 0, 0\) "
        r"waits at another one \(selftest.metal:\d+\): every thread of a threadgroup must",
    ):
        runtime.wait()


def test_harness_reports_a_host_access_before_the_kernels_ran(emu):
    """Missing synchronisation: the host touches a buffer that an encoded kernel uses before
    the command buffer ran (stale data on a GPU)."""
    runtime = emu.backend.runtime
    buffer = runtime.allocate(4 * 10)
    runtime.dispatch("fill_float32", [(0, buffer, 0)], FILL_10, (1, 1, 1), (32, 1, 1))
    with pytest.raises(harness.LaunchError, match=r"missing synchronisation: .* fill_float32"):
        runtime.host_view(buffer, 40)
    runtime.wait()
    assert np.frombuffer(runtime.host_view(buffer, 40), np.float32).tolist() == [0.0] * 10


def test_harness_checks_bindings(emu):
    x = np.zeros(256, np.float32)
    fill = "fill_float32"
    with pytest.raises(harness.LaunchError, match=r"nothing bound at .*buffer\(2\)"):
        launch(fill, [x], (1, 1, 1), (256, 1, 1), [(1, bytes(4))])
    with pytest.raises(harness.LaunchError, match="needs 4 bytes, 2 are bound"):
        launch(fill, [x], (1, 1, 1), (256, 1, 1), [(1, bytes(4)), (2, bytes(2))])
    with pytest.raises(harness.LaunchError, match="does not declare"):
        launch(fill, [x], (1, 1, 1), (256, 1, 1), [(1, bytes(4)), (2, bytes(4)), (5, bytes(4))])
    with pytest.raises(harness.LaunchError, match="1 to 1024"):
        launch(fill, [x], (1, 1, 1), (2048, 1, 1), [(1, bytes(4)), (2, bytes(4))])
    # a template's instantiation binds its own types: fill_int64's value is 8 bytes
    with pytest.raises(harness.LaunchError, match="needs 8 bytes, 4 are bound"):
        launch("fill_int64", [x], (1, 1, 1), (256, 1, 1), [(1, bytes(4)), (2, bytes(4))])


@pytest.mark.parametrize("threads", [32, 40, 64])
def test_harness_simd_group_functions(emu, threads, rng):
    x = rng.permutation(threads).astype(np.float32)
    out = np.zeros((threads, 4), np.float32)
    launch("selftest_simd", [x, out], (1, 1, 1), (threads, 1, 1))
    for start in range(0, threads, 32):
        lanes = x[start : start + 32]
        got = out[start : start + 32]
        np.testing.assert_array_equal(got[:, 0], lanes.sum())
        np.testing.assert_array_equal(got[:, 1], lanes.max())
        np.testing.assert_array_equal(got[:, 2], np.append(lanes[1:], lanes[-1]))
        np.testing.assert_array_equal(got[:, 3], lanes[3] if lanes.size > 3 else lanes)


def test_harness_simdgroup_matrix(emu, rng):
    a, b, c = (rng.standard_normal((8, 8)).astype(np.float32) for _ in range(3))
    out, out2 = np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32)
    launch("selftest_simdgroup_matrix", [a, b, c, out, out2], (1, 1, 1), (32, 1, 1))
    np.testing.assert_allclose(out, a @ b + c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out2, a.T @ b, rtol=1e-5, atol=1e-5)


def test_harness_has_every_kernel_of_the_libraries(emu):
    source = metal_primitives.kernel_source(
        dict.fromkeys(metal_primitives.CORE_SOURCES + metal_primitives.SIMDGROUP_SOURCES)
    )
    assert source.count("#line 1") == 7
    names = {k for k in harness.library().kernels if not k.startswith("selftest_")}

    def per_dtype(kernel, prim):  # one kernel per dtype the row takes on Metal
        return {f"{kernel}_{d}" for d in TABLE[prim].dtypes if d in metal_primitives.DTYPES}

    TABLE = primitives.TABLE
    held = metal_primitives.DTYPES
    expected = {f"astype_{a}_{b}" for a in held for b in held} | {"ewise_axpby"}
    expected |= {k for kernel in metal_primitives.MATMUL_TILES for k in per_dtype(kernel, "matmul")}
    for prim in TABLE.values():
        if prim.reference is not None or prim.name in (
            "fill",
            "compact",
            "ewise_setitem",
            "scalar_setitem",
            "gather_rows",
            "scatter_add_rows",
        ):
            expected |= per_dtype(prim.name, prim.name)
    for op in ("sum", "max"):
        for kind in ("rows", "serial", "axis"):
            expected |= per_dtype(f"reduce_{op}_{kind}", f"reduce_{op}")
    assert names == expected  # exactly the table's rows and dtypes, no more
    assert "ewise_add_bool" not in names and "ewise_log_int32" not in names
    assert "ewise_eq_bool" in names and "reduce_sum_rows_int64" in names
    assert "compact_float16" in names and "ewise_add_float16" not in names


def test_harness_binds_kernel_template_instantiations():
    """A kernel template is no kernel; each [[host_name]] instantiation is one, bound under
    its host name with the template's arguments."""
    source = """
        template <typename Op>
        [[kernel]] void apply(device float* out [[buffer(0)]],
                              uint i [[thread_position_in_grid]]) {}
        template [[host_name("apply_" "neg")]] [[kernel]] decltype(apply<neg_op>) apply<neg_op>;
        kernel void plain(device float* out [[buffer(1)]], uint i [[thread_position_in_grid]]) {}
    """
    kernels = harness.parse_kernels(source)
    assert [(name, callee) for name, _, callee in kernels] == [
        ("plain", "plain"),
        ("apply_neg", "apply<neg_op>"),
    ]
    assert kernels[1][1] == [
        ("device float*", "out", "buffer", 0),
        ("uint", "i", "thread_position_in_grid", None),
    ]
    with pytest.raises(harness.BuildError, match="not a kernel template"):
        harness.parse_kernels(source.replace("decltype(apply<", "decltype(other<"))


def test_kernels_respect_metal_address_spaces():
    """g++ sees device/constant/threadgroup as nothing; clang can see them as address spaces,
    between which pointers do not convert, as in Metal: a helper taking a plain `float*`, or
    a local pointer without its address space, fails here as it fails on a Mac."""
    errors = harness.check_address_spaces()
    if errors is None:
        pytest.skip("needs clang++ or the libclang wheel (pip install libclang)")
    assert errors == ""


def test_launch_geometry_matches_the_kernels():
    """metal_primitives' tile and threadgroup sizes are the constants of the .metal files."""

    def constants(name):
        source = metal_primitives.kernel_source([name])
        return {k: int(v) for k, v in re.findall(r"constant constexpr uint (\w+) = (\d+);", source)}

    mm, sg, red = (constants(f) for f in ("matmul.metal", "matmul_simdgroup.metal", "reduce.metal"))
    assert metal_primitives.MATMUL_TILES["matmul_threadgroup"] == (
        mm["MM_BM"],
        mm["MM_BN"],
        mm["MM_THREADS"],
    )
    assert metal_primitives.MATMUL_TILES["matmul_simdgroup"] == (
        sg["SG_BM"],
        sg["SG_BN"],
        sg["SG_THREADS"],
    )
    assert red["REDUCE_THREADS"] == metal_primitives.REDUCE_THREADS


# ---- the emulated module: dtypes and limits ----------------------------------------------
def test_module(emu):
    assert emu.DTYPES == ("float32", "float16", "int32", "int64", "uint8", "bool")
    assert emu.__device_name__ == "metal_emulated"
    assert primitives.validate(emu) == {
        "astype",
        "ewise_axpby",
        "batched_matmul",
        "matmul_strided",
        "reduce_sum_axis",
        "reduce_max_axis",
        "gather_rows",
        "scatter_add_rows",
        "synchronize",
    }
    page = harness.mmap.PAGESIZE
    for dtype in emu.DTYPES:
        for size in (0, 1, 5, 1000):  # the last byte abuts an inaccessible page
            arr = emu.Array(size, dtype)
            end = arr.ptr() + np.dtype(dtype).itemsize * max(size, 1)
            assert end % page == 0 and arr.dtype == dtype and arr.size == size
    assert emu.Array(3, np.int64).dtype == "int64" and emu.Array(3, np.bool_).dtype == "bool"


@pytest.mark.parametrize("dtype", ["float64", np.float64, np.dtype("float64")])
def test_float64_raises_a_type_error_naming_dtype_and_device(emu, dtype):
    with pytest.raises(
        primitives.UnsupportedDtypeError,
        match="metal_emulated\\(\\) does not support float64",
    ):
        emu.Array(4, dtype)


HELD = "float32, float16, int32, int64, uint8, bool"


@pytest.mark.parametrize("dtype", ["int8", "int16", "uint32", ""])
def test_other_dtypes_are_rejected(emu, dtype):
    with pytest.raises(ValueError, match=f"unsupported dtype .*{HELD}"):
        emu.Array(4, dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", ml_dtypes.bfloat16, np.dtype(ml_dtypes.bfloat16)])
def test_bfloat16_is_an_unsupported_dtype_error_saying_why(emu, dtype):
    """No bfloat16 (MSL's bfloat needs Metal 3.1): the backend says why, NDArray names the
    dtypes the device holds, as for WebGPU."""
    with pytest.raises(primitives.UnsupportedDtypeError, match=f"Metal 3.1.*it holds {HELD}"):
        emu.Array(4, dtype)
    device = ndl.backend_ndarray.BackendDevice("metal_emulated", emu)
    assert "bfloat16" not in device.dtypes and "float16" in device.dtypes
    message = f"metal_emulated() does not support dtype bfloat16 (it holds {HELD})"
    with pytest.raises(primitives.UnsupportedDtypeError, match=re.escape(message)):
        ndl.NDArray(np.zeros(3), device=device, dtype="bfloat16")


def test_from_numpy_checks_dtype_and_size(emu):
    arr = emu.Array(4)
    with pytest.raises(TypeError):
        emu.from_numpy(np.zeros(4, np.float64), arr)
    with pytest.raises(TypeError, match="from_numpy: a is int32, not float32"):
        emu.from_numpy(np.zeros(4, np.int32), arr)
    with pytest.raises(ValueError):
        emu.from_numpy(np.zeros(5, np.float32), arr)


def _args(emu, prim, dtype):
    """Arguments for `prim` with Arrays of `dtype` (out: the row's out_dtype; index: int64)."""
    values = {"int": 1, "float": 1.0, "shape": (2,), "str": "add", "bool": False}
    args = []
    for param in prim.params:
        if param.kind in ("array", "inout"):
            args.append(emu.Array(4, dtype))
        elif param.kind == "out":
            args.append(emu.Array(4, prim.out_dtype or dtype))
        elif param.kind == "index":
            args.append(emu.Array(4, "int64"))
        elif param.kind == "numpy":
            args.append(np.zeros(4, dtype))
        else:
            args.append(values[param.kind])
    return args


UNTAKEN = [
    (prim, dtype)
    for prim in primitives.TABLE.values()
    # the rows Metal implements (the table's fallbacks call those, which check in turn)
    if prim.params and (prim.reference or hasattr(metal_primitives.MetalBackend, prim.name))
    for dtype in metal_primitives.DTYPES
    if dtype not in prim.dtypes
]


@pytest.mark.parametrize("prim,dtype", UNTAKEN, ids=[f"{p.name}-{d}" for p, d in UNTAKEN])
def test_dtypes_a_row_does_not_take_raise_type_errors(emu, prim, dtype):
    """Every row refuses the dtypes it does not list, naming the primitive and the dtype,
    before anything is encoded (no kernel of that name exists to run)."""
    runtime = emu.backend.runtime
    emu.synchronize()
    with pytest.raises(TypeError, match=f"{prim.name} does not take dtype {dtype}"):
        getattr(emu, prim.name)(*_args(emu, prim, dtype))
    assert not runtime._pending


def test_mixed_dtypes_raise_type_errors(emu):
    i32, i64, f32 = (emu.Array(4, d) for d in ("int32", "int64", "float32"))
    with pytest.raises(TypeError, match="ewise_add: b is int64, not int32"):
        emu.ewise_add(i32, i64, emu.Array(4, "int32"))
    with pytest.raises(TypeError, match="ewise_lt: out is int32, not bool"):
        emu.ewise_lt(i32, i32, emu.Array(4, "int32"))  # comparisons write bool
    with pytest.raises(TypeError, match="scalar_eq: out is float32, not bool"):
        emu.scalar_eq(f32, 1.0, emu.Array(4, "float32"))
    with pytest.raises(TypeError, match="gather_rows: indices is float32, not int64"):
        emu.gather_rows(f32, f32, emu.Array(4), 1, 4)  # row numbers are int64 now
    with pytest.raises(TypeError, match="compact: out is int64, not float32"):
        emu.compact(f32, i64, (4,), (1,), 0)


def test_integers_wrap_around_as_numpy(emu):
    """Integer add/sub/mul/neg/abs wrap (two's complement), as NumPy's; the emulation does
    them in the unsigned type, so g++ sees no signed overflow."""
    cases = [
        ("ewise_add", "int32", [2**31 - 1, -(2**31)], [1, -1]),
        ("ewise_sub", "int64", [-(2**63), 5], [1, -(2**63)]),
        ("ewise_mul", "int64", [2**62, 3 * 2**61], [4, 3]),
        ("ewise_mul", "uint8", [16, 255], [16, 255]),
        ("ewise_neg", "uint8", [1, 0, 255], None),
        ("ewise_neg", "int32", [-(2**31), 5], None),
        ("ewise_abs", "int32", [-(2**31), -7], None),
        ("ewise_abs", "int64", [-(2**63), -7], None),
        ("ewise_sign", "uint8", [0, 1, 200], None),
        ("ewise_relu", "int64", [-(2**63), 3], None),
    ]
    for name, dtype, x, y in cases:
        ref = primitives.TABLE[name].reference
        x = np.array(x, dtype=dtype)
        args = [to_array(emu, x)] + ([] if y is None else [to_array(emu, np.array(y, dtype))])
        out = emu.Array(x.size, dtype)
        getattr(emu, name)(*args, out)
        with np.errstate(over="ignore"):
            expected = ref(x) if y is None else ref(x, np.array(y, dtype))
        np.testing.assert_array_equal(read(emu, out), expected, err_msg=f"{name} {dtype}")
        assert read(emu, out).dtype == dtype


def test_comparisons_write_bool(emu):
    for dtype in ("float32", "int32", "int64", "uint8", "bool"):
        x = np.array([0, 1, 1, 0], dtype=dtype)
        y = np.array([0, 0, 1, 1], dtype=dtype)
        out = emu.Array(4, "bool")
        emu.ewise_le(to_array(emu, x), to_array(emu, y), out)
        np.testing.assert_array_equal(read(emu, out), x <= y)
        emu.scalar_ge(to_array(emu, x), 1.0, out)
        np.testing.assert_array_equal(read(emu, out), x >= np.array(1, dtype))
        assert read(emu, out).dtype == np.bool_


def test_integer_reductions(emu):
    x = np.array([2**62, 2**62, 2**62, -5, 7, -(2**63)], dtype=np.int64)  # the sum wraps
    out = emu.Array(2, "int64")
    emu.reduce_sum(to_array(emu, x), out, 3)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(read(emu, out), x.reshape(2, 3).sum(axis=1))
    for dtype, x in [
        ("int32", np.full(70, -(2**31), np.int32)),  # the identity is the type's minimum
        ("uint8", np.zeros(70, np.uint8)),
        ("bool", np.zeros(70, bool)),
        ("int64", np.arange(-70, 0, dtype=np.int64)),
    ]:
        for reduce_size in (7, 70):  # a thread per row, a threadgroup per row
            out = emu.Array(70 // reduce_size, dtype)
            emu.reduce_max(to_array(emu, x), out, reduce_size)
            np.testing.assert_array_equal(read(emu, out), x.reshape(-1, reduce_size).max(axis=1))


@pytest.mark.parametrize(
    "dtype,value,expected",
    [
        ("float32", 1.5, np.float32(1.5).tobytes()),
        ("int32", -3.0, np.int32(-3).tobytes()),
        ("int64", float(2**53), np.int64(2**53).tobytes()),
        ("int64", -(2**63), np.int64(-(2**63)).tobytes()),
        ("uint8", 255.0, b"\xff"),
        ("bool", 2.0, b"\x01"),
        ("bool", 0.0, b"\x00"),
        ("float16", 1 / 3, np.float16(1 / 3).tobytes()),  # from double, rounded once
        ("float16", 65520.0, np.float16(np.inf).tobytes()),
    ],
)
def test_scalars_are_passed_in_the_arrays_type(dtype, value, expected):
    assert metal_primitives.scalar_bytes(dtype, value) == expected


def test_views_past_int32_are_refused(emu):
    # The kernels index with 32-bit ints; a buffer holds at most 2^31 - 1 elements, so a view
    # reaching past that reaches past its buffer, and the host refuses it before any launch.
    with pytest.raises(IndexError, match="reaches outside"):
        emu.compact(emu.Array(4), emu.Array(2), (2,), (2**31,), 0)


# ---- float16: conversions by bits, matmuls rounded once --------------------------------------
HALF_PATTERNS = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)


def _astype(emu, x, target):
    out = emu.Array(x.size, target)
    emu.astype(to_array(emu, x), out)
    return read(emu, out)


def test_float16_conversions_are_numpys_bits(emu):
    """Every float16 pattern to float32, and float32 patterns of every sign, exponent and top
    7 mantissa bits with low bits below, at and past a tie (kept bit even and odd) to float16:
    NumPy's bits, NaN payloads, subnormals and overflow included. To the integers and bool on
    the finite values (the row leaves the others unspecified)."""
    wide = _astype(emu, HALF_PATTERNS, "float32")
    np.testing.assert_array_equal(wide.view(np.uint32), HALF_PATTERNS.astype("f4").view("u4"))
    high = np.arange(2**16, dtype=np.uint32) << 16
    x = np.concatenate([high | low for low in (0, 0xFFF, 0x1000, 0x1001, 0x3000, 0xFFFF)])
    x = x.view(np.float32)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    np.testing.assert_array_equal(_astype(emu, x, "float16").view("u2"), want.view("u2"))
    finite = HALF_PATTERNS[np.isfinite(HALF_PATTERNS)]
    for target in ("int32", "int64", "bool"):
        np.testing.assert_array_equal(_astype(emu, finite, target), finite.astype(target))
    small = finite[(finite > -1) & (finite < 256)]
    np.testing.assert_array_equal(_astype(emu, small, "uint8"), small.astype(np.uint8))


def test_integers_convert_to_float16_rounded_once(emu):
    """Whole numbers past 2048 round to the even float16, from 65520 on to inf, as NumPy's."""
    x = np.array([0, -1, 2049, 2051, -2051, 4097, 65504, 65519, 65520, -70000, 2**31 - 1])
    for values in (x.astype(np.int32), np.append(x, [2**62, -(2**63)]), np.arange(256)):
        for dtype in ("int32", "int64", "uint8"):
            if dtype == "uint8" and values.size != 256:
                continue
            with np.errstate(over="ignore"):
                want = values.astype(dtype).astype(np.float16)
            got = _astype(emu, values.astype(dtype), "float16")
            np.testing.assert_array_equal(got.view("u2"), want.view("u2"), err_msg=dtype)
    flags = np.array([True, False])
    np.testing.assert_array_equal(_astype(emu, flags, "float16"), [1.0, 0.0])


@pytest.mark.parametrize("kernel", metal_primitives.MATMUL_TILES)
def test_float16_matmul_sums_in_float32_and_rounds_once(kernel):
    """Products of float16s whose float32 sums are exact but need up to 19 bits: out is each
    exact sum rounded once to the nearest even float16 (ties included), which sums kept in
    float16, or rounded toward zero, would miss. Two row and column tiles, a transposed b."""
    emu = harness.emulated_backend(matmul_kernels=(kernel,))
    rng = np.random.default_rng(0)
    batch, m, n, p = 2, 70, 100, 67
    a = rng.integers(-64, 65, (batch, m, n)).astype(np.float16)
    b = (rng.integers(-64, 65, (batch, p, n)) / 8).astype(np.float16)  # stored transposed
    exact = np.einsum("bmn,bpn->bmp", a.astype(np.float64), b.astype(np.float64))
    out = emu.Array(batch * m * p, "float16")
    emu.matmul_strided(
        to_array(emu, a), to_array(emu, b), out, batch, m, n, p, 0, (m * n, n, 1), 0, (p * n, 1, n)
    )
    want = exact.astype(np.float16)  # float64 to float16 directly: one rounding
    np.testing.assert_array_equal(read(emu, out).view("u2"), want.reshape(-1).view("u2"))
    ulp = np.abs(np.spacing(want)).astype(np.float64)  # float16 ulps
    assert ((np.abs(exact) / ulp) % 1 == 0.5).sum() > 50  # ties to even were exercised


def test_training_under_fp16_autocast_on_the_emulated_device(emu):
    """test_amp's fp16 training check (its `device` fixture has no emulated devices) on
    metal's kernels: an MLP under fp16 autocast keeps float32 master weights and follows its
    float32 run (~6 s: 823 launches; test_amp's other float16 checks pass here too, in ~80 s,
    and the conversions they check are covered above)."""
    import test_amp

    device = ndl.backend_ndarray.BackendDevice("metal_emulated", emu)
    test_amp.test_trainer_precision_keeps_float32_master_weights("fp16", device)


# ---- synchronisation -----------------------------------------------------------------------------
def test_kernels_wait_in_the_command_buffer_until_needed(emu):
    """Launches are encoded, not run, until the CPU needs their results (then in order);
    uploading into a buffer no kernel has used needs no wait."""
    runtime = emu.backend.runtime
    emu.synchronize()
    a = to_array(emu, np.arange(5.0), "float32")
    out = emu.Array(5)
    emu.scalar_add(a, 1.0, out)
    emu.ewise_mul(out, out, out)  # in place, after the add: launches keep their order
    to_array(emu, np.ones(1000), "float32")
    assert len(runtime._pending) == 2  # encoded, not run
    np.testing.assert_array_equal(read(emu, out), (np.arange(5) + 1.0) ** 2)  # waits first
    assert not runtime._pending


def test_from_numpy_waits_for_kernels_that_read_the_array(emu):
    a = to_array(emu, np.full(4, 3.0), "float32")
    out = emu.Array(4)
    emu.scalar_mul(a, 2.0, out)
    emu.from_numpy(np.zeros(4, np.float32), a)  # must not overwrite a before the kernel read it
    np.testing.assert_array_equal(read(emu, out), 6.0)


# ---- launch planning -----------------------------------------------------------------------
def launches(emu, run):
    """The (kernel, threadgroups, threads) that run() encodes."""
    runtime = emu.backend.runtime
    emu.synchronize()
    run()
    planned = [(kernel, groups, threads) for kernel, _, _, groups, threads in runtime._pending]
    emu.synchronize()
    return planned


@pytest.mark.parametrize("dtype", metal_primitives.DTYPES)
def test_each_elementwise_row_launches_its_own_kernel(emu, dtype):
    """One thread per element in threadgroups of 256, the kernel named as the row and the
    dtype, for every dtype the row takes."""
    a = to_array(emu, np.ones(257), dtype)
    for prim in primitives.TABLE.values():
        if prim.reference is None or dtype not in prim.dtypes:
            continue
        out = emu.Array(257, prim.out_dtype or dtype)
        args = {"unary": (a, out), "binary": (a, a, out), "scalar": (a, 2.0, out)}[prim.group]
        assert launches(emu, lambda: getattr(emu, prim.name)(*args)) == [
            (f"{prim.name}_{dtype}", (2, 1, 1), (256, 1, 1))
        ]


@pytest.mark.parametrize("dtype", ["float32", "int64"])
@pytest.mark.parametrize(
    "outer,reduce_size,inner,kernel,groups",
    [
        (300, 64, 1, "reduce_sum_serial", (2, 1, 1)),  # up to 64: a thread per row
        (3, 65, 1, "reduce_sum_rows", (3, 1, 1)),  # longer: a threadgroup per row
        (3, 5, 100, "reduce_sum_axis", (2, 1, 1)),  # a thread per output element
    ],
)
def test_reductions_pick_their_kernel(emu, outer, reduce_size, inner, kernel, groups, dtype):
    a, out = emu.Array(outer * reduce_size * inner, dtype), emu.Array(outer * inner, dtype)
    kernel = f"{kernel}_{dtype}"
    if inner == 1:
        run = lambda: emu.reduce_sum(a, out, reduce_size)  # noqa: E731
    else:
        run = lambda: emu.reduce_sum_axis(a, out, outer, reduce_size, inner)  # noqa: E731
    assert launches(emu, run) == [(kernel, groups, (256, 1, 1))]


def test_matmul_grid_is_one_threadgroup_per_output_tile(emu):
    a, b, out = emu.Array(130 * 7), emu.Array(7 * 65), emu.Array(3 * 130 * 65)
    kernel = emu.backend.matmul_kernel
    rows, columns, threads = metal_primitives.MATMUL_TILES[kernel]
    assert launches(
        emu, lambda: emu.matmul_strided(a, b, out, 3, 130, 7, 65, 0, (0, 7, 1), 0, (0, 65, 1))
    ) == [(f"{kernel}_float32", (-(-65 // columns), -(-130 // rows), 3), (threads, 1, 1))]
    assert launches(emu, lambda: emu.fill(emu.Array(0), 1.0)) == []  # nothing for no elements


def test_matmul_kernel_choice(emu, monkeypatch):
    backend = metal_primitives.MetalBackend(emu.backend.runtime, "metal_emulated")
    assert backend.matmul_kernel == "matmul_simdgroup"  # the runtime's first choice
    monkeypatch.setenv("NEEDLE_METAL_MATMUL", "threadgroup")
    assert (
        metal_primitives.MetalBackend(emu.backend.runtime, "x").matmul_kernel
        == "matmul_threadgroup"
    )
    with pytest.raises(ValueError):
        backend.matmul_kernel = "matmul_naive"


# ---- MPS matrix layouts ------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,expected",
    [
        # compact (batch, rows, cols)
        ((2, 3, 4, 0, (12, 4, 1), 24), (3, 4, 16, 48, 0, False)),
        # a transposed view: stored as (cols, rows)
        ((1, 3, 4, 0, (12, 1, 3), 12), (4, 3, 12, 48, 0, True)),
        # padded rows with an offset
        ((1, 3, 4, 2, (0, 6, 1), 20), (3, 4, 24, 72, 8, False)),
        # a single row: any row stride
        ((1, 1, 4, 0, (0, 0, 1), 4), (1, 4, 16, 16, 0, False)),
        # broadcast batch, broadcast rows, overlapping rows: not in place
        ((2, 3, 4, 0, (0, 4, 1), 12), None),
        ((1, 3, 4, 0, (0, 0, 1), 4), None),
        ((1, 3, 4, 0, (0, 2, 1), 8), None),
        # the last padded row would run past the buffer
        ((1, 3, 4, 0, (0, 6, 1), 16), None),
    ],
)
def test_mps_matrix_layout(args, expected):
    layout = mps_matrix_layout(*args)
    assert (tuple(layout) if layout else None) == expected
