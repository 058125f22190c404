"""The Metal backends' MSL kernels, run on the CPU through the emulation, against NumPy.

No Mac is needed: tests/metal_emulation compiles python/needle/backend_ndarray/metal/*.metal
(the files the Metal backends compile on a Mac) as C++ with g++ and runs each launch as a
grid of threadgroups of real threads (tests/README.md). On a Mac with Metal the same
comparisons also run on the GPU, through ndl.metal() and ndl.mps(); elsewhere those are
skipped with the reason. The emulated backend is
metal_primitives.MetalBackend over that emulation, i.e. the metal backend's own planning of
kernels, buffers and grids with only the PyObjC calls replaced, and it is compared with
ndarray_backend_numpy primitive by primitive, by keyword, on shapes that cross every tile and
threadgroup edge. float32 only, as on Metal.

Sections: the harness itself; the table's surface; synchronisation; layout; elementwise;
matmul (both kernels); reductions; NDArray and a training step on the emulated device;
launch planning helpers (axis merging, MPS matrix layouts).
"""

import inspect
import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import needle as ndl
from needle.backend_ndarray import metal_primitives
from needle.backend_ndarray import ndarray_backend_numpy as nb_np
from needle.backend_ndarray.metal_primitives import merge_axes, mps_matrix_layout

import primitive_calls
from metal_emulation import harness
from primitive_calls import Out, operand, read, row_indices

DTYPE = "float32"
TOL = dict(rtol=1e-5, atol=1e-6)
EPS = 1.2e-7
MATMUL_KERNELS = tuple(metal_primitives.MATMUL_TILES)


_MAC_REASON = 'needs macOS with a Metal GPU and pip install "needle[metal]"'


@pytest.fixture(scope="module")
def emu():
    """The emulated backend (skipped, with the reason, where it does not build)."""
    try:
        harness.library()
    except harness.BuildError as error:
        pytest.skip(f"the MSL emulation does not build here: {error}")
    return harness.emulated_backend()


# The kernel comparisons run on the emulation everywhere, and on the real GPU on a Mac.
@pytest.fixture(scope="module", params=[
    pytest.param("emulated"),
    pytest.param("metal", marks=pytest.mark.skipif(not ndl.metal().enabled(), reason=_MAC_REASON)),
    pytest.param("mps", marks=pytest.mark.skipif(not ndl.mps().enabled(), reason=_MAC_REASON)),
])
def mod(request):
    if request.param == "emulated":
        return request.getfixturevalue("emu")
    return getattr(ndl, request.param)().mod


@pytest.fixture(params=MATMUL_KERNELS)
def mod_matmul(request, mod):
    """The backend with each matmul kernel in turn (on mps: its fallback for odd views)."""
    if request.param not in mod.backend.runtime.matmul_kernels():
        pytest.skip(f"this GPU does not run {request.param}")
    mod.backend.matmul_kernel = request.param
    yield mod
    mod.backend.matmul_kernel = mod.backend.runtime.matmul_kernels()[0]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---- helpers: call a primitive on both backends, by keyword ------------------------------------
def to_array(mod, x: np.ndarray):
    return primitive_calls.to_array(mod, x, DTYPE)


def call(mod, name, *args):
    return primitive_calls.call(mod, name, *args, dtype=DTYPE)


def check(mod, name, *args, exact=False, **tol):
    expected = call(nb_np, name, *args)
    actual = call(mod, name, *args)
    assert actual.dtype == expected.dtype == np.dtype(DTYPE)
    if exact:
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, equal_nan=True, **{**TOL, **tol})


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
    expected = np.stack([x, y, 0 * x, x // 40, y // 2, 0 * x, x % 40, y % 2, t, t // 32, t % 32],
                        axis=-1)
    np.testing.assert_array_equal(out, expected)


def test_harness_shares_threadgroup_memory_within_a_threadgroup(emu):
    x = np.arange(64 * 5, dtype=np.float32)
    out = np.zeros_like(x)
    launch("selftest_reverse", [x, out], (5, 1, 1), (64, 1, 1))
    np.testing.assert_array_equal(out, x.reshape(5, 64)[:, ::-1].reshape(-1))


def test_harness_reports_threads_that_skip_a_barrier(emu):
    with pytest.raises(harness.LaunchError, match="Metal requires every thread to reach it"):
        launch("selftest_early_return", [np.zeros(32, np.float32)], (1, 1, 1), (32, 1, 1))


def test_harness_reports_writes_outside_a_buffer(emu):
    runtime = emu.backend.runtime
    buffer = runtime.allocate(4 * 10)
    runtime.dispatch("selftest_out_of_bounds", [(0, buffer, 0)], [(1, (10).to_bytes(4, "little"))],
                     (1, 1, 1), (32, 1, 1))
    with pytest.raises(harness.LaunchError, match="wrote outside the buffer bound at"):
        runtime.wait()


def test_harness_checks_bindings(emu):
    x = np.zeros(256, np.float32)
    with pytest.raises(harness.LaunchError, match="nothing bound at .*buffer\\(2\\)"):
        launch("fill", [x], (1, 1, 1), (256, 1, 1), [(1, bytes(4))])
    with pytest.raises(harness.LaunchError, match="needs 4 bytes, 2 are bound"):
        launch("fill", [x], (1, 1, 1), (256, 1, 1), [(1, bytes(4)), (2, bytes(2))])
    with pytest.raises(harness.LaunchError, match="does not declare"):
        launch("fill", [x], (1, 1, 1), (256, 1, 1), [(1, bytes(4)), (2, bytes(4)), (5, bytes(4))])
    with pytest.raises(harness.LaunchError, match="1 to 1024"):
        launch("fill", [x], (1, 1, 1), (2048, 1, 1), [(1, bytes(4)), (2, bytes(4))])


@pytest.mark.parametrize("threads", [32, 40, 64])
def test_harness_simd_group_functions(emu, threads, rng):
    x = rng.permutation(threads).astype(np.float32)
    out = np.zeros((threads, 4), np.float32)
    launch("selftest_simd", [x, out], (1, 1, 1), (threads, 1, 1))
    for start in range(0, threads, 32):
        lanes = x[start: start + 32]
        got = out[start: start + 32]
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
    names = set(harness.library().kernels)
    expected = (set(metal_primitives.BINARY_KERNELS) | set(metal_primitives.SCALAR_KERNELS)
                | set(metal_primitives.UNARY_KERNELS) | set(metal_primitives.MATMUL_TILES)
                | {"fill", "compact", "ewise_setitem", "scalar_setitem", "ewise_axpby",
                   "gather_rows", "scatter_add_rows"}
                | {f"reduce_{op}_{kind}" for op in ("sum", "max")
                   for kind in ("rows", "serial", "axis")})
    assert expected <= names


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
    assert metal_primitives.MATMUL_TILES["matmul_threadgroup"] == (mm["MM_BM"], mm["MM_BN"],
                                                                   mm["MM_THREADS"])
    assert metal_primitives.MATMUL_TILES["matmul_simdgroup"] == (sg["SG_BM"], sg["SG_BN"],
                                                                 sg["SG_THREADS"])
    assert metal_primitives.REDUCE_THREADS == red["REDUCE_THREADS"]


# ---- the table's surface -------------------------------------------------------------------------
def test_same_primitive_table_and_parameter_names(emu):
    public = {n for n in dir(nb_np) if not n.startswith("_") and n not in ("np", "DTYPES")}
    for name in public:
        assert hasattr(emu, name), name
        if inspect.isfunction(getattr(nb_np, name)):
            expected = list(inspect.signature(getattr(nb_np, name)).parameters)
            assert list(inspect.signature(getattr(emu, name)).parameters) == expected, name
    assert emu.__tile_size__ == nb_np.__tile_size__ == 8
    assert emu.DTYPES == ("float32",)
    assert emu.__device_name__ == "metal_emulated"


@pytest.mark.parametrize("size", [0, 1, 5, 1000])
def test_array(mod, size):
    arr = mod.Array(size)
    assert arr.size == size and arr.dtype == "float32"
    assert arr.ptr() != 0 and arr.ptr() % 64 == 0


@pytest.mark.parametrize("dtype", ["float64", np.float64, np.dtype("float64")])
def test_float64_raises_a_type_error_naming_dtype_and_device(mod, dtype):
    with pytest.raises(TypeError, match=f"{mod.__device_name__}\\(\\) does not support float64"):
        mod.Array(4, dtype)


@pytest.mark.parametrize("dtype", ["int8", "float16", ""])
def test_other_dtypes_are_rejected(mod, dtype):
    with pytest.raises(ValueError, match="float32 only"):
        mod.Array(4, dtype)


def test_from_numpy_checks_dtype_and_size(mod):
    arr = mod.Array(4)
    with pytest.raises(TypeError):
        mod.from_numpy(np.zeros(4, np.float64), arr)
    with pytest.raises(ValueError):
        mod.from_numpy(np.zeros(5, np.float32), arr)


def test_from_numpy_accepts_any_layout(mod, rng):
    x = rng.standard_normal((6, 4)).astype(DTYPE)
    for src in (x, x.T, x[::2], x[:, ::-1], np.asfortranarray(x)):
        arr = mod.Array(src.size)
        mod.from_numpy(src, arr)
        np.testing.assert_array_equal(read(mod, arr), src.reshape(-1))


def test_to_numpy_returns_an_owned_copy(mod):
    arr = to_array(mod, np.arange(6))
    view = mod.to_numpy(arr, (2, 3), (3, 1), 0)
    mod.fill(arr, -1.0)
    mod.synchronize()
    np.testing.assert_array_equal(view, np.arange(6, dtype=DTYPE).reshape(2, 3))
    assert view.flags.writeable and view.flags.owndata


# ---- synchronisation -----------------------------------------------------------------------------
def test_kernels_wait_in_the_command_buffer_until_needed(emu):
    runtime = emu.backend.runtime
    emu.synchronize()
    a = to_array(emu, np.arange(5))
    out = emu.Array(5)
    emu.scalar_add(a, 1.0, out)
    emu.ewise_mul(out, out, out)  # in place, after the add: launches keep their order
    assert len(runtime._pending) == 2  # encoded, not run
    np.testing.assert_array_equal(read(emu, out), (np.arange(5) + 1.0) ** 2)  # waits first
    assert not runtime._pending


def test_from_numpy_waits_for_kernels_that_read_the_array(emu):
    a = to_array(emu, np.full(4, 3.0))
    out = emu.Array(4)
    emu.scalar_mul(a, 2.0, out)
    emu.from_numpy(np.zeros(4, DTYPE), a)  # must not overwrite a before the kernel read it
    np.testing.assert_array_equal(read(emu, out), 6.0)


def test_fresh_arrays_upload_without_waiting(emu):
    runtime = emu.backend.runtime
    emu.synchronize()
    a = to_array(emu, np.ones(3))
    out = emu.Array(3)
    emu.scalar_add(a, 1.0, out)
    pending = len(runtime._pending)
    to_array(emu, np.ones(1000))  # a buffer no kernel has used: no need to wait
    assert len(runtime._pending) == pending
    emu.synchronize()
    assert not runtime._pending


def test_synchronize(mod):
    assert mod.synchronize() is None


@pytest.mark.parametrize("size", [1, 255, 256, 257, 1000])
@pytest.mark.parametrize("val", [0.0, -2.5, 3, 1e30])
def test_fill(mod, size, val):
    check(mod, "fill", Out(size), val, exact=True)


# ---- layout ------------------------------------------------------------------------------------
@st.composite
def strided_views(draw, allow_broadcast=True):
    """(storage size, shape, strides, offset) of a random NumPy view of a compact parent:
    slices with steps (negative too), integer indices, permutations and broadcasting."""
    parent_shape = draw(st.lists(st.integers(1, 6), max_size=4))
    base = np.zeros(math.prod(parent_shape))
    view = base.reshape(parent_shape)
    index = tuple(
        draw(st.one_of(st.slices(n), st.integers(0, n - 1))) if n > 1 else draw(st.slices(n))
        for n in parent_shape
    )
    view = view[index + (Ellipsis,)]
    view = view.transpose(draw(st.permutations(range(view.ndim))))
    if allow_broadcast and draw(st.booleans()):
        lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
        grown = tuple(draw(st.integers(1, 3)) if n == 1 else n for n in view.shape)
        view = np.broadcast_to(view, lead + grown)
    itemsize = base.itemsize
    offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return base.size, view.shape, tuple(s // itemsize for s in view.strides), offset // itemsize


view_settings = settings(max_examples=60, deadline=None)


@view_settings
@given(spec=strided_views())
def test_to_numpy(mod, spec):
    size, shape, strides, offset = spec
    data = np.random.default_rng(size).standard_normal(size).astype(DTYPE)
    expected = nb_np.to_numpy(to_array(nb_np, data), shape, strides, offset)
    actual = mod.to_numpy(to_array(mod, data), shape, strides, offset)
    assert actual.shape == expected.shape == shape
    np.testing.assert_array_equal(actual, expected)


@view_settings
@given(spec=strided_views())
def test_compact(mod, spec):
    size, shape, strides, offset = spec
    data = np.random.default_rng(size).standard_normal(size)
    check(mod, "compact", data, Out(math.prod(shape)), shape, strides, offset, exact=True)


@view_settings
@given(spec=strided_views(allow_broadcast=False))
def test_ewise_setitem(mod, spec):
    size, shape, strides, offset = spec
    rng = np.random.default_rng(size)
    src, init = rng.standard_normal(math.prod(shape)), rng.standard_normal(size)
    check(mod, "ewise_setitem", src, Out(size, init), shape, strides, offset, exact=True)


@view_settings
@given(spec=strided_views(), val=st.floats(-1e6, 1e6))
def test_scalar_setitem(mod, spec, val):
    size, shape, strides, offset = spec
    init = np.random.default_rng(size).standard_normal(size)
    check(mod, "scalar_setitem", math.prod(shape), val, Out(size, init), shape, strides, offset,
          exact=True)


# Views NumPy slicing cannot produce (overlapping windows, mixed 0-strides), 0-d views, and
# views larger than one threadgroup of 256 threads.
ODD_VIEWS = [
    (5, (3, 3), (1, 1), 0),
    (10, (2, 3, 2), (2, 2, 1), 1),
    (6, (3, 2), (0, 1), 2),
    (7, (2, 2, 2), (3, 0, 1), 0),
    (11, (2, 2, 3), (2, 2, -1), 6),
    (4, (1, 4, 1), (5, 1, 7), 0),
    (9, (), (), 4),
    (3, (300,), (0,), 1),
    (600, (20, 30), (1, 20), 0),
    (1000, (7, 11, 13), (130, 1, 10), 5),
]


@pytest.mark.parametrize("size,shape,strides,offset", ODD_VIEWS)
def test_odd_views(mod, size, shape, strides, offset):
    data = np.arange(size, dtype=float) + 1
    n = math.prod(shape)
    check(mod, "compact", data, Out(n), shape, strides, offset, exact=True)
    check(mod, "scalar_setitem", n, -4.0, Out(size, data), shape, strides, offset, exact=True)
    expected = nb_np.to_numpy(to_array(nb_np, data), shape, strides, offset)
    np.testing.assert_array_equal(mod.to_numpy(to_array(mod, data), shape, strides, offset),
                                  expected)


# Views without overlapping elements (where the order of writes would matter).
SETITEM_VIEWS = [
    (4, (1, 4, 1), (5, 1, 7), 0),
    (9, (), (), 4),
    (600, (20, 30), (1, 20), 0),
    (1001, (7, 11, 13), (-143, 13, 1), 858),
]


@pytest.mark.parametrize("size,shape,strides,offset", SETITEM_VIEWS)
def test_ewise_setitem_odd_views(mod, size, shape, strides, offset):
    data = np.arange(size, dtype=float) + 1
    src = -np.arange(math.prod(shape), dtype=float)
    check(mod, "ewise_setitem", src, Out(size, data), shape, strides, offset, exact=True)


def test_views_past_int32_are_refused(mod):
    with pytest.raises(ValueError, match="2\\^31"):
        mod.compact(mod.Array(4), mod.Array(2), (2,), (2**31,), 0)


# ---- elementwise -------------------------------------------------------------------------------
SIZES = (1, 7, 255, 256, 257, 1001)  # around the 256-thread threadgroup


BINARY = {
    "ewise_add": ("normal", "normal"),
    "ewise_sub": ("normal", "normal"),
    "ewise_mul": ("normal", "normal"),
    "ewise_div": ("normal", "nonzero"),
    "ewise_power": ("positive", "normal"),
    "ewise_maximum": ("ties", "ties"),
    "ewise_eq": ("ties", "ties"),
    "ewise_ge": ("ties", "ties"),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", BINARY)
def test_ewise_binary(mod, name, size, rng):
    ka, kb = BINARY[name]
    check(mod, name, operand(rng, ka, size), operand(rng, kb, size), Out(size))


SCALAR = {
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


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", SCALAR)
def test_scalar_binary(mod, name, size, rng):
    kind, values = SCALAR[name]
    a = operand(rng, kind, size)
    for val in values:
        check(mod, name, a, val, Out(size))


# (alpha, beta) of ewise_axpby: the optimizers' update (1, -lr) and others, all distinct, so a
# kernel that swapped the scalars or read one operand twice fails.
AXPBY = [(1.0, -0.01), (0.9, 0.1), (-1.5, 2.25), (0.0, 3.0), (2.0, 0.0)]


def axpby_tol(a, b, alpha, beta):
    """Two ulps of the larger term: a fused multiply-add rounds once less than NumPy, which
    shows where the two terms cancel."""
    scale = np.max(np.abs(alpha * a) + np.abs(beta * b), initial=0.0)
    return {"rtol": 2 * EPS, "atol": 2 * EPS * scale}


@pytest.mark.parametrize("size", (0,) + SIZES)
@pytest.mark.parametrize("alpha,beta", AXPBY)
def test_ewise_axpby(mod, alpha, beta, size, rng):
    a, b = operand(rng, "normal", size), operand(rng, "normal", size)
    check(mod, "ewise_axpby", a, b, alpha, beta, Out(size), **axpby_tol(a, b, alpha, beta))


def axpby_in_place(mod, a, b, alpha, beta, target):
    """ewise_axpby on Arrays of `mod` holding a and b, with out the Array `target` itself;
    returns the contents of both Arrays afterwards."""
    arrays = {"a": to_array(mod, a), "b": to_array(mod, b)}
    mod.ewise_axpby(**arrays, alpha=alpha, beta=beta, out=arrays[target])
    return {name: read(mod, arr) for name, arr in arrays.items()}


def check_axpby_in_place(mod, a, b, alpha, beta, target):
    """out is a or b itself (the optimizers' w = w - lr * grad): every element is read before
    it is written, and the other operand is left as it was."""
    expected = axpby_in_place(nb_np, a, b, alpha, beta, target)
    actual = axpby_in_place(mod, a, b, alpha, beta, target)
    np.testing.assert_allclose(actual[target], expected[target], **axpby_tol(a, b, alpha, beta))
    other = "b" if target == "a" else "a"
    np.testing.assert_array_equal(actual[other], expected[other])


@pytest.mark.parametrize("size", (0,) + SIZES)
@pytest.mark.parametrize("target", ["a", "b"])
def test_ewise_axpby_in_place(mod, target, size, rng):
    a, b = operand(rng, "normal", size), operand(rng, "normal", size)
    for alpha, beta in [(1.0, -0.01), (-0.5, 2.0)]:
        check_axpby_in_place(mod, a, b, alpha, beta, target)


# ---- rows by index (an embedding lookup and its gradient) ------------------------------------
# (table rows, n indices, row_size, how the indices are drawn): row_size 1, odd sizes (3, 7,
# 257: a row is no whole number of anything), embedding-like rows (100, 130), out's rows on
# both sides of a threadgroup (256 threads); "same" sends every index to one row, "distinct"
# is a permutation, "random" repeats some.
ROWS_CASES = [
    (5, 0, 3, "random"), (5, 1, 3, "random"), (1, 1, 1, "random"), (300, 40, 1, "random"),
    (12, 12, 7, "distinct"), (50, 300, 7, "random"), (6, 33, 257, "same"),
    (40, 64, 100, "random"), (60, 200, 130, "random"), (3, 500, 130, "same"),
]


@pytest.mark.parametrize("rows,n,row_size,kind", ROWS_CASES)
def test_gather_rows(mod, rows, n, row_size, kind, rng):
    table, indices = rng.standard_normal(rows * row_size), row_indices(rng, rows, n, kind)
    check(mod, "gather_rows", table, indices, Out(n * row_size), n, row_size, exact=True)


@pytest.mark.parametrize("rows,n,row_size,kind", ROWS_CASES)
def test_scatter_add_rows(mod, rows, n, row_size, kind, rng):
    """Adds onto what out holds (random, not zeros), repeated indices adding up; the kernel
    makes NumPy's additions in NumPy's order, so the sums agree to the bit."""
    a, indices = rng.standard_normal(n * row_size), row_indices(rng, rows, n, kind)
    init = rng.standard_normal(rows * row_size)
    check(mod, "scatter_add_rows", a, indices, Out(rows * row_size, init), n, row_size,
          exact=True)


def test_rows_by_index_use_only_the_first_n_and_whole_rows(mod, rng):
    """indices and a may be longer than n needs, a table may end in a partial row: only the
    first n indices and whole rows count; a scatter leaves the rows nobody indexes as they
    were, -0.0 and NaN included."""
    row_size, n = 5, 4
    table = rng.standard_normal(7 * row_size + 3)  # 7 whole rows and 3 spare elements
    indices = np.array([6, 0, 6, 2, 1, 3, 5], dtype=float)  # only the first 4 are used
    check(mod, "gather_rows", table, indices, Out(n * row_size), n, row_size, exact=True)
    a = rng.standard_normal(6 * row_size)  # rows beyond n are not added
    init = rng.standard_normal(7 * row_size + 2)
    init[5:10] = -0.0  # row 1: not among the first 4 indices
    init[15] = np.nan  # row 3: neither
    actual = call(mod, "scatter_add_rows", a, indices, Out(init.size, init), n, row_size)
    np.testing.assert_array_equal(
        actual, call(nb_np, "scatter_add_rows", a, indices, Out(init.size, init), n, row_size))
    untouched = np.r_[5:10, 15:30, 35:init.size]  # rows 1, 3, 4, 5 and the spare elements
    np.testing.assert_array_equal(np.signbit(actual[untouched]), np.signbit(init[untouched]))


def test_rows_by_index_reach_far_rows(mod, rng):
    # Index 69,999 and its neighbours: an index that went through too few bits, or a row
    # offset computed in float, lands elsewhere.
    rows, n = 70_000, 300
    indices = np.concatenate([[rows - 1, rows - 2, 65_537, 0], rng.integers(0, rows, n - 4)])
    check(mod, "gather_rows", rng.standard_normal(rows), indices, Out(n), n, 1, exact=True)
    a, init = rng.standard_normal(n), rng.standard_normal(rows)
    check(mod, "scatter_add_rows", a, indices, Out(rows, init), n, 1, exact=True)


def test_power_of_negative_bases(mod):
    base = np.array([-2.0, -1.5, -0.5, -3.0, 0.0, -0.0, 2.0])
    with np.errstate(all="ignore"):
        for exponent in (2, 3, 0, -1, -2, 0.5, 7):
            check(mod, "scalar_power", base, exponent, Out(base.size))
            check(mod, "ewise_power", base, np.full(base.size, exponent), Out(base.size))


def test_scalar_is_rounded_to_float32(mod):
    a = np.array([0.1, 0.2])
    check(mod, "scalar_eq", a, 0.1, Out(2), exact=True)
    check(mod, "scalar_ge", a, 0.1, Out(2), exact=True)
    with np.errstate(over="ignore"):
        check(mod, "scalar_add", a, 1e39, Out(2), exact=True)  # inf, as NumPy's float32
    # 1e-46 is 0 in float32: 1e-46 * 1e38 is then 0, not the 1e-8 of a product in double.
    big, small = np.array([1e38, -3e38, 2.0]), np.array([1e-9, -2e-9, 0.5])
    check(mod, "ewise_axpby", big, small, 1e-46, 1.0, Out(3), rtol=4 * EPS, atol=0)
    check(mod, "ewise_axpby", small, big, 1.0, 1e-46, Out(3), rtol=4 * EPS, atol=0)


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


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", UNARY)
def test_ewise_unary(mod, name, size, rng):
    check(mod, name, operand(rng, UNARY[name], size), Out(size))


SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e30, -1e30, 2.0])


@pytest.mark.parametrize("name", ["ewise_neg", "ewise_abs", "ewise_sign", "ewise_relu",
                                  "ewise_sigmoid", "ewise_tanh", "ewise_exp"])
def test_unary_special_values(mod, name):
    with np.errstate(all="ignore"):
        check(mod, name, SPECIAL, Out(SPECIAL.size))


@pytest.mark.parametrize("name", ["ewise_add", "ewise_mul", "ewise_div", "ewise_maximum",
                                  "ewise_eq", "ewise_ge"])
def test_binary_special_values(mod, name):
    a, b = (np.array(p) for p in zip(*itertools.product(SPECIAL, repeat=2)))
    with np.errstate(all="ignore"):
        check(mod, name, a, b, Out(a.size))


def test_sigmoid_is_stable(mod):
    x = np.array([-1e4, -800, -100, -30, 0, 30, 100, 800, 1e4])
    got = call(mod, "ewise_sigmoid", x, Out(x.size))
    assert np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1))
    assert got[0] == 0 and got[-1] == 1 and got[4] == 0.5


# ---- matmul --------------------------------------------------------------------------------------
def matmul_tol(n):
    return dict(rtol=10 * EPS, atol=10 * EPS * n)


# Both kernels tile out in 64 x 64 blocks, step n by 16, and (simdgroup) split into 8 x 8
# fragments: sizes on each side of every one of those edges.
EDGE_DIMS = (1, 7, 8, 9, 15, 16, 17, 33, 63, 64, 65, 130)
MATMUL_SHAPES = sorted(
    set(itertools.product((1, 17, 65), repeat=3))
    | {(d, d, d) for d in EDGE_DIMS}
    | {(7, 130, 9), (130, 7, 64), (64, 9, 130), (33, 16, 63), (8, 15, 1), (1, 130, 65)}
)


@pytest.mark.parametrize("m,n,p", MATMUL_SHAPES)
def test_matmul(mod_matmul, m, n, p, rng):
    a, b = rng.standard_normal(m * n), rng.standard_normal(n * p)
    check(mod_matmul, "matmul", a, b, Out(m * p), m, n, p, **matmul_tol(n))


def test_matmul_ignores_trailing_storage(mod_matmul, rng):
    m, n, p = 5, 6, 7
    a, b = rng.standard_normal(m * n + 3), rng.standard_normal(n * p + 11)
    check(mod_matmul, "matmul", a, b, Out(m * p), m, n, p, **matmul_tol(n))


@pytest.mark.parametrize("batch,m,n,p",
                         [(1, 1, 1, 1), (3, 1, 9, 4), (4, 17, 8, 33), (2, 65, 20, 70)])
def test_batched_matmul(mod_matmul, batch, m, n, p, rng):
    a, b = rng.standard_normal(batch * m * n), rng.standard_normal(batch * n * p)
    check(mod_matmul, "batched_matmul", a, b, Out(batch * m * p), batch, m, n, p,
          **matmul_tol(n))


def _strided_case(kind, batch, m, n, p):
    """(a storage size, a offset, a strides, b size, b offset, b strides) of operand views."""
    if kind == "compact":
        return batch * m * n, 0, (m * n, n, 1), batch * n * p, 0, (n * p, p, 1)
    if kind == "transposed":  # a stored (batch, n, m), b stored (batch, p, n)
        return batch * m * n, 0, (m * n, 1, m), batch * n * p, 0, (n * p, 1, n)
    if kind == "broadcast":  # one a for every batch; b with a padded row stride and an offset
        return m * n, 0, (0, n, 1), 5 + batch * n * (p + 3), 5, (n * (p + 3), p + 3, 1)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["compact", "transposed", "broadcast"])
@pytest.mark.parametrize("batch,m,n,p", [(1, 7, 5, 3), (3, 17, 33, 65), (2, 64, 16, 64)])
def test_matmul_strided(mod_matmul, kind, batch, m, n, p, rng):
    a_size, a_offset, a_strides, b_size, b_offset, b_strides = _strided_case(kind, batch, m, n, p)
    a, b = rng.standard_normal(a_size), rng.standard_normal(b_size)
    check(mod_matmul, "matmul_strided", a, b, Out(batch * m * p), batch, m, n, p, a_offset,
          a_strides, b_offset, b_strides, **matmul_tol(n))


@pytest.mark.parametrize("m,n,p", [(8, 8, 8), (16, 8, 24), (8, 40, 16), (72, 64, 80)])
def test_matmul_tiled(mod, m, n, p, rng):
    a, b = rng.standard_normal(m * n), rng.standard_normal(n * p)
    check(mod, "matmul_tiled", a, b, Out(m * p), m, n, p, **matmul_tol(n))


def test_matmul_kernel_choice(emu, monkeypatch):
    backend = metal_primitives.MetalBackend(emu.backend.runtime, "metal_emulated")
    assert backend.matmul_kernel == "matmul_simdgroup"  # the runtime's first choice
    monkeypatch.setenv("NEEDLE_METAL_MATMUL", "threadgroup")
    assert metal_primitives.MetalBackend(emu.backend.runtime, "x").matmul_kernel == \
        "matmul_threadgroup"
    with pytest.raises(ValueError):
        backend.matmul_kernel = "matmul_naive"


# ---- reductions ----------------------------------------------------------------------------------
# Rows up to 64 long: one thread per row; longer: a 256-thread tree per row.
REDUCE_SIZES = (1, 2, 7, 64, 65, 255, 256, 257, 1000, 4097)


@pytest.mark.parametrize("outer", [1, 5, 300])
@pytest.mark.parametrize("reduce_size", REDUCE_SIZES)
def test_reduce_sum(mod, reduce_size, outer, rng):
    if outer == 300 and reduce_size > metal_primitives.REDUCE_SERIAL_MAX:
        pytest.skip("one threadgroup per row: 5 rows cover it")
    a = rng.standard_normal(outer * reduce_size) + 0.5
    check(mod, "reduce_sum", a, Out(outer), reduce_size, rtol=10 * EPS,
          atol=10 * EPS * reduce_size)


@pytest.mark.parametrize("outer", [1, 5, 300])
@pytest.mark.parametrize("reduce_size", REDUCE_SIZES)
def test_reduce_max(mod, reduce_size, outer, rng):
    if outer == 300 and reduce_size > metal_primitives.REDUCE_SERIAL_MAX:
        pytest.skip("one threadgroup per row: 5 rows cover it")
    check(mod, "reduce_max", rng.standard_normal(outer * reduce_size), Out(outer), reduce_size,
          exact=True)


@pytest.mark.parametrize("outer,reduce_size,inner",
                         [(1, 5, 3), (4, 1, 7), (3, 100, 257), (2, 7, 1), (1, 300, 1), (5, 2, 300)])
@pytest.mark.parametrize("op", ["sum", "max"])
def test_reduce_axis(mod, op, outer, reduce_size, inner, rng):
    a = rng.standard_normal(outer * reduce_size * inner)
    check(mod, f"reduce_{op}_axis", a, Out(outer * inner), outer, reduce_size, inner,
          rtol=10 * EPS, atol=10 * EPS * reduce_size)


@pytest.mark.parametrize("reduce_size", [3, 100])
def test_reduce_special_values(mod, reduce_size):
    a = np.array([1.0, np.nan, 3.0, np.nan, -np.inf, 2.0, -np.inf, -np.inf, np.inf, 5.0, 0.0, 1.0])
    a = np.tile(a, reduce_size // 3 + 1)[: 4 * reduce_size]
    with np.errstate(all="ignore"):
        check(mod, "reduce_max", a, Out(4), reduce_size, exact=True)
        check(mod, "reduce_sum", a, Out(4), reduce_size)
        check(mod, "reduce_max_axis", a, Out(4), 2, reduce_size, 2, exact=True)


# ---- NDArray and a training step on the emulated device ------------------------------------------
@pytest.fixture(scope="module")
def device(mod):
    if mod.__device_name__ in ("metal", "mps"):
        return getattr(ndl, mod.__device_name__)()
    return ndl.backend_ndarray.BackendDevice(mod.__device_name__, mod)


def test_ndarray_ops_on_the_device(device, rng):
    nd = ndl.backend_ndarray
    x = rng.standard_normal((4, 5, 6)).astype(DTYPE)
    y = rng.standard_normal((5, 1)).astype(DTYPE)
    a, b = nd.array(x, device=device), nd.array(y, device=device)
    np.testing.assert_allclose((a + b).numpy(), x + y, **TOL)
    np.testing.assert_allclose(a.permute((2, 0, 1)).compact().numpy(), x.transpose(2, 0, 1))
    np.testing.assert_allclose(a.sum(axis=1).numpy(), x.sum(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.max(axis=(0, 2)).numpy(), x.max(axis=(0, 2)))
    np.testing.assert_allclose((a[1:, ::2, 3] ** 2).numpy(), x[1:, ::2, 3] ** 2, **TOL)
    # matmul of a transposed view goes in without a copy (matmul_strided)
    np.testing.assert_allclose((a.permute((0, 2, 1)) @ a).numpy(),
                               x.transpose(0, 2, 1) @ x, rtol=1e-5, atol=1e-5)
    a[0, :2] = 7.0
    x[0, :2] = 7.0
    np.testing.assert_array_equal(a.numpy(), x)
    np.testing.assert_array_equal(a.flip((1,)).numpy(), x[:, ::-1])
    with pytest.raises(TypeError, match="float64"):
        nd.array(x, device=device, dtype="float64")


def test_a_training_step_matches_the_numpy_backend(device):
    """An MLP (Linear, ReLU, softmax loss, Adam) trains identically on both devices."""
    data = np.random.default_rng(1)
    x_np = data.standard_normal((16, 10)).astype(DTYPE)
    y_np = data.integers(0, 3, 16)

    def train(dev):
        np.random.seed(0)
        model = ndl.nn.Sequential(ndl.nn.Linear(10, 20, device=dev), ndl.nn.ReLU(),
                                  ndl.nn.Linear(20, 3, device=dev))
        opt = ndl.optim.Adam(model.parameters(), lr=0.01)
        losses = []
        for _ in range(3):
            loss = ndl.nn.SoftmaxLoss()(model(ndl.Tensor(x_np, device=dev)),
                                        ndl.Tensor(y_np, device=dev))
            opt.reset_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.numpy()))
        return losses, [p.numpy() for p in model.parameters()]

    losses, params = train(device)
    ref_losses, ref_params = train(ndl.cpu_numpy())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for p, ref in zip(params, ref_params):
        np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-5)


# ---- launch planning helpers ---------------------------------------------------------------------
@pytest.mark.parametrize("shape,strides,expected", [
    ((), (), ((1,), (0,))),
    ((1, 1), (5, 7), ((1,), (0,))),
    ((4, 5, 6), (30, 6, 1), ((120,), (1,))),
    ((4, 1, 6), (6, 99, 1), ((24,), (1,))),
    ((4, 5, 6), (1, 4, 20), ((4, 5, 6), (1, 4, 20))),
    ((3, 4), (0, 1), ((3, 4), (0, 1))),
    ((3, 4), (-4, -1), ((12,), (-1,))),
    ((2, 3, 4), (24, 4, 1), ((2, 12), (24, 1))),
])
def test_merge_axes(shape, strides, expected):
    assert merge_axes(shape, strides) == expected


@pytest.mark.parametrize("args,expected", [
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
])
def test_mps_matrix_layout(args, expected):
    layout = mps_matrix_layout(*args)
    assert (tuple(layout) if layout else None) == expected
