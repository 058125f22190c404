"""The PyObjC host modules (ndarray_backend_metal, ndarray_backend_mps), run on Linux.

PyObjC's Metal, MetalPerformanceShaders and objc modules are replaced by the strict stand-ins
of tests/metal_emulation/fake_pyobjc.py: the host modules import and run unchanged, their
kernels executing in the MSL emulation and their MPS matmuls in NumPy. This checks the host
code's own logic (pipeline cache, command-buffer batching and waiting, encoder lifecycle,
MPS matrix descriptions and fallbacks) against the NumPy backend; that PyObjC behaves as the
stand-ins assume is checked only on a Mac (tests/README.md).
"""

import importlib
import sys

import numpy as np
import pytest
from backends.test_table import assert_trains_like_cpu_numpy
from metal_emulation import fake_pyobjc as fake

import needle as ndl
from needle.backend_ndarray import ndarray_backend_numpy as nb_np, primitives
from needle.conformance.calls import Out, call, read, to_array
from needle.emulation.metal import harness

HOST_MODULES = ("ndarray_backend_metal", "ndarray_backend_mps")


@pytest.fixture(scope="module")
def host():
    """(fake device, metal module, mps module), imported against the stand-ins."""
    harness.library_or_skip()
    patch = pytest.MonkeyPatch()
    device = fake.Device()
    patch.setattr(sys, "platform", "darwin")
    patch.setitem(sys.modules, "Metal", fake.metal_module(device))
    patch.setitem(sys.modules, "objc", fake.objc_module())
    patch.setitem(sys.modules, "MetalPerformanceShaders", fake.mps_module())
    package = sys.modules["needle.backend_ndarray"]
    try:
        modules = [
            importlib.import_module(f"needle.backend_ndarray.{name}") for name in HOST_MODULES
        ]
        yield (device, *modules)
    finally:
        patch.undo()
        for name in HOST_MODULES:  # leave the package as `import needle` made it
            sys.modules.pop(f"needle.backend_ndarray.{name}", None)
            if hasattr(package, name):
                delattr(package, name)


@pytest.fixture(params=HOST_MODULES)
def mod(request, host):
    return host[1 + HOST_MODULES.index(request.param)]


def check(mod, name, *args, exact=False, rtol=1e-5, atol=1e-6, dtype="float32"):
    """`name` through the host module against the NumPy backend, its own primitive or the
    table's fallback over it (the values of every kernel are checked in tests/backends: here,
    that the host code runs them as planned)."""
    expected = call(nb_np, name, *args, dtype=dtype, impl=primitives.resolve(nb_np, name))
    actual = call(mod, name, *args, dtype=dtype)
    assert actual.dtype == expected.dtype
    if exact or dtype != "float32":
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def matmul_tol(n):
    return dict(rtol=1.2e-6, atol=1.2e-6 * n)


def check_axpby_in_place(mod, x, y, alpha, beta, target):
    """out bound to the buffer of a (or b): two indices of one MTLBuffer."""
    arrays = {"a": to_array(mod, x, "float32"), "b": to_array(mod, y, "float32")}
    mod.ewise_axpby(**arrays, alpha=alpha, beta=beta, out=arrays[target])
    expected = {"a": x.astype("float32"), "b": y.astype("float32")}
    expected[target] = np.float32(alpha) * expected["a"] + np.float32(beta) * expected["b"]
    for name, arr in arrays.items():
        np.testing.assert_allclose(read(mod, arr), expected[name], rtol=1e-6, atol=1e-6)


def test_modules_refuse_to_import_off_macos():
    for name in HOST_MODULES:
        with pytest.raises(ImportError, match="macOS"):
            importlib.import_module(f"needle.backend_ndarray.{name}")
    assert not ndl.metal().enabled() and not ndl.mps().enabled()
    with pytest.raises(RuntimeError, match="metal\\(\\) is not available"):
        ndl.Tensor([1.0], device=ndl.metal())


def test_table(host, mod):
    assert mod.__device_name__ in ("metal", "mps")
    assert mod.DTYPES == ("float32", "float16", "int32", "int64", "uint8", "bool")
    assert "matmul_strided" in primitives.validate(mod)
    with pytest.raises(TypeError, match=f"{mod.__device_name__}\\(\\) does not support float64"):
        mod.Array(3, "float64")
    with pytest.raises(TypeError, match="matmul does not take dtype int32"):
        mod.matmul(mod.Array(1, "int32"), mod.Array(1, "int32"), mod.Array(1, "int32"), 1, 1, 1)


def test_primitives(mod):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(300), rng.standard_normal(300)
    check(mod, "fill", Out(300), 2.5, exact=True)
    check(mod, "compact", x, Out(60), (3, 4, 5), (1, 60, 3), 2, exact=True)
    check(mod, "ewise_setitem", y[:60], Out(300, x), (3, 4, 5), (1, 60, 3), 2, exact=True)
    check(mod, "scalar_setitem", 60, -1.0, Out(300, x), (3, 4, 5), (1, 60, 3), 2, exact=True)
    check(mod, "ewise_add", x, y, Out(300))
    indices = np.array([2.0, 0.0, 5.0, 2.0, 2.0, 1.0, 5.0])  # repeats add up in a scatter
    check(mod, "gather_rows", x[:60], indices, Out(70), 7, 10, exact=True)
    check(mod, "scatter_add_rows", y[:70], indices, Out(60, x[:60]), 7, 10, exact=True)
    check(mod, "ewise_axpby", x, y, 0.9, -0.3, Out(300), rtol=1e-6, atol=1e-6)
    # out bound to the buffer of a, then of b (two indices of one MTLBuffer)
    check_axpby_in_place(mod, x, y, 1.0, -0.01, "a")
    check_axpby_in_place(mod, x, y, -0.5, 2.0, "b")
    check(mod, "scalar_power", np.abs(x), 1.5, Out(300))
    check(mod, "ewise_sigmoid", x * 30, Out(300))
    check(mod, "reduce_sum", x, Out(3), 100, rtol=1e-5, atol=1e-4)
    check(mod, "reduce_max", x, Out(30), 10, exact=True)
    check(mod, "reduce_max_axis", x, Out(50), 5, 6, 10, exact=True)
    check(mod, "ewise_rsqrt", np.abs(x) + 0.1, Out(300))


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_integer_and_bool_primitives(mod, dtype):
    """The new dtypes through the host modules: buffers of their item sizes, scalars in the
    array's type, comparisons into bool, sums in int64, int64 row indices."""
    rng = np.random.default_rng(1)
    if dtype == "bool":
        x, y = rng.integers(0, 2, 300).astype(bool), rng.integers(0, 2, 300).astype(bool)
    else:
        info = np.iinfo(dtype)
        x, y = (rng.integers(info.min, info.max, 300, dtype=dtype) for _ in range(2))
    check(mod, "fill", Out(300), 1.0, dtype=dtype)
    check(mod, "compact", x, Out(60), (3, 4, 5), (1, 60, 3), 2, dtype=dtype)
    check(mod, "ewise_setitem", y[:60], Out(300, x), (3, 4, 5), (1, 60, 3), 2, dtype=dtype)
    check(mod, "scalar_setitem", 60, 1.0, Out(300, x), (3, 4, 5), (1, 60, 3), 2, dtype=dtype)
    check(mod, "ewise_eq", x, np.where(rng.random(300) < 0.5, x, y), Out(300), dtype=dtype)
    check(mod, "scalar_lt", x, 1.0, Out(300), dtype=dtype)
    check(mod, "reduce_max", x, Out(30), 10, dtype=dtype)
    check(mod, "reduce_max_axis", x, Out(50), 5, 6, 10, dtype=dtype)
    indices = np.array([2, 0, 5, 2, 2, 1, 5])
    check(mod, "gather_rows", x[:60], indices, Out(70), 7, 10, dtype=dtype)
    if dtype != "bool":
        for name in ("ewise_add", "ewise_sub", "ewise_mul", "ewise_maximum"):
            check(mod, name, x, y, Out(300), dtype=dtype)
        for name in ("ewise_neg", "ewise_abs", "ewise_sign", "ewise_relu"):
            check(mod, name, x, Out(300), dtype=dtype)
        check(mod, "scalar_mul", x, 3.0, Out(300), dtype=dtype)
        check(mod, "scalar_rsub", x, 7.0, Out(300), dtype=dtype)
    if dtype == "int64":
        check(mod, "reduce_sum", x, Out(3), 100, dtype=dtype)
        check(mod, "reduce_sum_axis", x, Out(50), 5, 6, 10, dtype=dtype)


@pytest.mark.parametrize("m,n,p", [(1, 1, 1), (7, 33, 5), (65, 17, 130)])
def test_matmul(mod, m, n, p):
    rng = np.random.default_rng(m)
    check(
        mod,
        "matmul",
        rng.standard_normal(m * n),
        rng.standard_normal(n * p),
        Out(m * p),
        m,
        n,
        p,
        **matmul_tol(n),
    )


def test_float16_through_the_host_modules(mod, monkeypatch):
    """float16 (2-byte elements) through the PyObjC stand-ins: copies, conversions and matmuls,
    whose sums are exact here so that out is the NumPy backend's to the bit. mps runs them on
    the MSL kernel (float32 sums), never on MPSMatrixMultiplication."""
    rng = np.random.default_rng(2)
    x = rng.integers(-40, 41, 300) / 4
    check(mod, "compact", x, Out(60), (3, 4, 5), (1, 60, 3), 2, dtype="float16")
    check(mod, "fill", Out(300), 1 / 3, dtype="float16")
    for target in ("float32", "int64", "bool"):
        check(mod, "astype", x, Out(300, dtype=target), dtype="float16")
    check(mod, "astype", x * 1000.3, Out(300, dtype="float16"), dtype="float32")
    monkeypatch.setattr(mod.backend.runtime, "encode_with", lambda encode: pytest.fail("MPS"))
    a, b = rng.integers(-9, 10, 65 * 33), rng.integers(-9, 10, 33 * 70) / 8
    check(mod, "matmul", a, b, Out(65 * 70), 65, 33, 70, dtype="float16")


def _ops(device_queue_buffers):
    return [op[0] if op[0] == "mps" else op[1] for cb in device_queue_buffers for op in cb.ops]


# kind: (a storage, a offset, a strides, b storage, b offset, b strides, MPS reads it in place)
STRIDED = {
    "compact": (2 * 6 * 5, 0, (30, 5, 1), 2 * 5 * 4, 0, (20, 4, 1), True),
    "transposed": (2 * 6 * 5, 0, (30, 1, 6), 2 * 5 * 4, 0, (20, 1, 5), True),
    "padded with offsets": (3 + 2 * 6 * 7, 3, (42, 7, 1), 1 + 2 * 5 * 4, 1, (20, 4, 1), True),
    "broadcast batch": (6 * 5, 0, (0, 5, 1), 2 * 5 * 4, 0, (20, 4, 1), False),
}


@pytest.mark.parametrize("kind", STRIDED)
def test_matmul_strided_uses_mps_where_it_can(host, kind):
    _, _, mps = host
    a_size, a_offset, a_strides, b_size, b_offset, b_strides, in_place = STRIDED[kind]
    rng = np.random.default_rng(1)
    runtime = mps.backend.runtime
    mps.synchronize()
    encoded = []
    original = runtime.commit

    def commit():  # record what each command buffer holds before it runs
        if runtime._command_buffer is not None:
            encoded.append(runtime._command_buffer)
        original()

    runtime.commit = commit
    try:
        check(
            mps,
            "matmul_strided",
            rng.standard_normal(a_size),
            rng.standard_normal(b_size),
            Out(2 * 6 * 4),
            2,
            6,
            5,
            4,
            a_offset,
            a_strides,
            b_offset,
            b_strides,
            **matmul_tol(5),
        )
    finally:
        del runtime.commit
    ops = _ops(encoded)
    assert ("mps" in ops) == in_place, ops
    assert (f"{runtime.matmul_kernels()[0]}_float32" in ops) == (not in_place), ops


def test_kernels_are_batched_into_command_buffers(host):
    _, metal, _ = host
    runtime = metal.backend.runtime
    metal.synchronize()
    x = metal.Array(1000)
    metal.fill(x, 1.0)
    for _ in range(150):
        metal.scalar_add(x, 1.0, x)
    # 151 kernels: two full command buffers committed (not waited for), one still open
    assert len(runtime._in_flight) == 2 and runtime._encoded == 151 - 128
    assert all(cb.status() == fake.MTLCommandBufferStatusCommitted for cb in runtime._in_flight)
    np.testing.assert_array_equal(metal.to_numpy(x, (1000,), (1,), 0), 151.0)
    assert not runtime._in_flight and runtime._command_buffer is None


def test_kernels_compile_once_without_fast_math(host, mod):
    device = host[0]
    check(mod, "ewise_exp", np.zeros(3), Out(3))
    libraries = len(device.libraries)
    check(mod, "ewise_exp", np.ones(3), Out(3))
    check(mod, "ewise_log", np.ones(3), Out(3))
    assert len(device.libraries) == libraries <= 2  # core, and simdgroup for matmul
    assert device.compile_options and not any(o.fast_math for o in device.compile_options)


def test_older_gpus_get_the_threadgroup_matmul(host):
    device, metal, _ = host
    device.apple7 = False
    try:
        assert metal.MetalRuntime().matmul_kernels() == ("matmul_threadgroup",)
    finally:
        device.apple7 = True
    assert metal.runtime.matmul_kernels() == ("matmul_simdgroup", "matmul_threadgroup")


@pytest.mark.parametrize("name", HOST_MODULES)
def test_training_through_the_host_module(host, name):
    module = host[1 + HOST_MODULES.index(name)]
    assert_trains_like_cpu_numpy(ndl.backend_ndarray.BackendDevice(module.__device_name__, module))
