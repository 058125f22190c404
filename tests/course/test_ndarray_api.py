"""Spec section 5: NDArray (needle.backend_ndarray) and the backend module table."""

import numpy as np
import pytest

from needle import backend_ndarray as nd

# The course's devices, and webgpu where it is enabled (CI: lavapipe), which keeps the same API.
DEVICES = [d for d in (nd.cpu(), nd.cpu_numpy(), nd.webgpu()) if d.enabled()]
dev_params = pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.name)


def test_package_exports():
    for name in (
        "NDArray", "BackendDevice", "prod", "cpu", "cuda", "cpu_numpy", "default_device",
        "all_devices", "array", "empty", "full", "broadcast_to", "reshape", "maximum", "log",
        "exp", "tanh", "sum", "flip",
    ):  # fmt: skip
        assert hasattr(nd, name), name
    assert nd.prod([2, 3, 4]) == 24


@dev_params
def test_functions(device):
    a = np.random.randn(3, 4).astype(np.float32)
    x = nd.array(a, dtype="float32", device=device)
    assert x.dtype == "float32" and x.device == device
    assert nd.empty((2, 3), device=device).shape == (2, 3)
    np.testing.assert_array_equal(nd.full((2,), 4.0, device=device).numpy(), [4.0, 4.0])
    np.testing.assert_array_equal(nd.broadcast_to(x[0, :], (2, 4)).numpy(), np.tile(a[0], (2, 1)))
    np.testing.assert_array_equal(nd.reshape(x, (4, 3)).numpy(), a.reshape(4, 3))
    np.testing.assert_allclose(nd.maximum(x, 0.0).numpy(), np.maximum(a, 0))
    np.testing.assert_allclose(nd.log(nd.exp(x)).numpy(), a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nd.tanh(x).numpy(), np.tanh(a), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(nd.sum(x, axis=1).numpy(), a.sum(1), rtol=1e-5)
    np.testing.assert_allclose(
        nd.sum(x, axis=1, keepdims=True).numpy(), a.sum(1, keepdims=True), rtol=1e-5
    )
    np.testing.assert_array_equal(nd.flip(x, (0, 1)).numpy(), np.flip(a, (0, 1)))


@dev_params
def test_state(device):
    x = nd.array(np.arange(24.0).reshape(2, 3, 4), device=device)
    assert x._shape == x.shape == (2, 3, 4) and x._strides == x.strides == (12, 4, 1)
    assert isinstance(x.strides, tuple) and all(isinstance(s, int) for s in x.strides)
    assert x._offset == 0 and x._device == x.device and x.ndim == 3 and x.size == 24
    assert x.dtype == "float32" and x._handle.size == 24
    p = x.permute((2, 0, 1))
    want = tuple(
        s // 4
        for s in np.arange(24.0, dtype=np.float32).reshape(2, 3, 4).transpose(2, 0, 1).strides
    )
    assert p.strides == want and p._handle.ptr() == x._handle.ptr()
    b = nd.array(np.ones((3, 1)), device=device).broadcast_to((3, 5))
    assert b.strides == (1, 0)
    assert x[1, :, :]._offset == 12


@dev_params
def test_construction(device):
    a = np.random.randn(2, 3)
    x = nd.NDArray(a, device=device)
    assert x.dtype == "float32" and x.device == device
    np.testing.assert_allclose(x.numpy(), a.astype(np.float32))
    y = nd.NDArray(x)
    assert y._handle is not x._handle  # a copy
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    z = nd.NDArray([[1, 2], [3, 4]], device=device)
    np.testing.assert_array_equal(z.numpy(), [[1, 2], [3, 4]])
    assert nd.NDArray(np.ones(3)).device == nd.default_device()

    class Sub(nd.NDArray):  # course code subclasses NDArray and builds it from NumPy
        pass

    s = Sub(np.arange(3.0))
    np.testing.assert_array_equal(s.numpy(), [0.0, 1.0, 2.0])
    made = nd.NDArray.make((2, 2), device=device)
    assert made.shape == (2, 2) and made._handle.size == 4
    view = nd.NDArray.make((2,), strides=(2,), device=device, handle=x._handle, offset=1)
    np.testing.assert_array_equal(view.numpy(), x.numpy().reshape(-1)[[1, 3]])
    assert nd.NDArray.compact_strides((2, 3, 4)) == (12, 4, 1)


@dev_params
def test_methods(device):
    a = np.random.randn(4, 3).astype(np.float32)
    x = nd.array(a, device=device)
    y = nd.empty((2, 2), device=device)
    y.fill(3.0)
    np.testing.assert_array_equal(y.numpy(), np.full((2, 2), 3.0))
    assert x.to(device) is x
    other = nd.cpu_numpy() if device != nd.cpu_numpy() else nd.cpu()
    if other.enabled():
        np.testing.assert_array_equal(x.to(other).numpy(), a)
    assert x.numpy().dtype == np.float32
    assert x.is_compact() and x.compact() is x
    t = x.permute((1, 0))
    assert not t.is_compact() and t.compact().is_compact()
    np.testing.assert_array_equal(t.compact().numpy(), a.T)
    s = x.as_strided((2, 2), (3, 1))
    assert s._handle is x._handle
    np.testing.assert_array_equal(s.numpy(), a.reshape(-1)[[0, 1, 3, 4]].reshape(2, 2))
    f = nd.array(np.zeros(4), device=device)
    f.flat[2] += 1.5  # course code perturbs inputs this way
    np.testing.assert_array_equal(f.numpy(), [0, 0, 1.5, 0])
    with pytest.raises(ValueError):
        x.reshape((5, 3))


@dev_params
def test_process_slice(device):
    x = nd.array(np.zeros((5, 6)), device=device)
    assert x.process_slice(slice(None, None, None), 0) == slice(0, 5, 1)
    assert x.process_slice(slice(1, -1, 2), 1) == slice(1, 5, 2)
    assert x.process_slice(slice(-3, None, None), 1) == slice(3, 6, 1)  # negative start, as NumPy
    with pytest.raises((ValueError, AssertionError)):
        x.process_slice(slice(4, 2, 1), 0)


@dev_params
def test_getitem_keeps_axes_and_setitem_writes_through(device):
    a = np.arange(30.0, dtype=np.float32).reshape(5, 6)
    x = nd.array(a, device=device)
    v = x[1, 2:5]
    assert v.shape == (1, 3) and v._handle is x._handle
    np.testing.assert_array_equal(v.numpy(), a[1:2, 2:5])
    np.testing.assert_array_equal(x[3:4, 3:4].numpy(), a[3:4, 3:4])
    np.testing.assert_array_equal(x[::2, ::-3].numpy(), a[::2, ::-3])
    x[0:2, 0:2] = nd.array(np.full((2, 2), 7.0), device=device)
    x[4, :] = -1.0
    a[0:2, 0:2], a[4, :] = 7.0, -1.0
    np.testing.assert_array_equal(x.numpy(), a)
    x[1:3, 3:5] = nd.array(np.arange(4.0).reshape(4, 1), device=device).permute((1, 0))
    a[1:3, 3:5] = np.arange(4.0).reshape(2, 2)
    np.testing.assert_array_equal(x.numpy(), a)


OPS = [
    lambda x, y: x + y, lambda x, y: x - y, lambda x, y: x * y, lambda x, y: x / y,
    lambda x, y: np.maximum(x, y) if isinstance(x, np.ndarray) else x.maximum(y),
]  # fmt: skip
CMPS = [
    lambda x, y: x == y, lambda x, y: x >= y, lambda x, y: x != y, lambda x, y: x > y,
    lambda x, y: x < y, lambda x, y: x <= y,
]  # fmt: skip


@dev_params
def test_elementwise(device):
    a = np.random.randn(3, 4).astype(np.float32)
    b = np.where(np.random.rand(3, 4) < 0.3, a, np.random.randn(3, 4)).astype(np.float32)
    x, y = nd.array(a, device=device), nd.array(b, device=device)
    for fn in OPS:
        np.testing.assert_allclose(fn(x, y).numpy(), fn(a, b), rtol=1e-6)
        np.testing.assert_allclose(fn(x, 0.5).numpy(), fn(a, np.float32(0.5)), rtol=1e-6)
    for fn in CMPS:
        # Comparisons give 1/0 (bool here; float32 in the course): equal values, either way
        np.testing.assert_array_equal(fn(x, y).numpy().astype(np.float32), fn(a, b))
        np.testing.assert_allclose(fn(x, y).numpy(), fn(a, b))
        np.testing.assert_array_equal(fn(x, 0.1).numpy(), fn(a, np.float32(0.1)))
    np.testing.assert_allclose((-x).numpy(), -a)
    np.testing.assert_allclose((2.0 + x).numpy(), 2 + a)
    np.testing.assert_allclose((2.0 - x).numpy(), 2 - a)
    np.testing.assert_allclose((2.0 * x).numpy(), 2 * a)
    np.testing.assert_allclose((abs(x) ** 1.5).numpy(), np.abs(a) ** 1.5, rtol=1e-5)
    for name in ("log", "exp", "tanh"):
        data = np.abs(a) + 0.1 if name == "log" else a
        got = getattr(nd.array(data, device=device), name)().numpy()
        np.testing.assert_allclose(got, getattr(np, name)(data), rtol=1e-5, atol=1e-6)


@dev_params
@pytest.mark.parametrize("m, n, p", [(8, 16, 24), (5, 7, 3), (16, 8, 8)])
def test_matmul(device, m, n, p):
    a, b = np.random.randn(m, n).astype(np.float32), np.random.randn(n, p).astype(np.float32)
    got = (nd.array(a, device=device) @ nd.array(b, device=device)).numpy()
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4)


def test_matmul_tiled_on_tiles_course_code_builds():
    device = nd.cpu()
    assert hasattr(device, "matmul_tiled")
    t = device.__tile_size__
    m, n, p = 2 * t, 3 * t, 4 * t
    a, b = np.random.randn(m, n).astype(np.float32), np.random.randn(n, p).astype(np.float32)
    A = nd.array(a, device=device).reshape((m // t, t, n // t, t)).permute((0, 2, 1, 3)).compact()
    B = nd.array(b, device=device).reshape((n // t, t, p // t, t)).permute((0, 2, 1, 3)).compact()
    C = nd.NDArray.make((m // t, p // t, t, t), device=device)
    device.matmul_tiled(A._handle, B._handle, C._handle, m, n, p)
    got = C.permute((0, 2, 1, 3)).compact().reshape((m, p)).numpy()
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4)


@dev_params
def test_reductions(device):
    a = np.random.randn(3, 4, 5).astype(np.float32)
    x = nd.array(a, device=device)
    for axis in (0, 1, 2, (1,)):
        for keepdims in (False, True):
            np.testing.assert_allclose(
                x.sum(axis=axis, keepdims=keepdims).numpy(),
                a.sum(axis=axis, keepdims=keepdims),
                rtol=1e-5,
                atol=1e-5,
            )
            np.testing.assert_array_equal(
                x.max(axis=axis, keepdims=keepdims).numpy(), a.max(axis=axis, keepdims=keepdims)
            )
    total = x.sum(axis=None).numpy()
    assert total.size == 1  # (1,) in the course, () here: code must accept either
    np.testing.assert_allclose(total.reshape(-1), [a.sum()], rtol=1e-5)
    with pytest.raises(ValueError):
        x.sum(axis=())
    view, out = x.reduce_view_out(1, keepdims=True)
    assert view.shape == (3, 5, 4) and out.shape == (3, 1, 5)
    view, out = x.reduce_view_out(None)
    assert view.shape == (1, 1, 60) and out.shape == (1,)


@dev_params
def test_flip_and_pad(device):
    a = np.random.randn(3, 4).astype(np.float32)
    x = nd.array(a, device=device)
    f = x.flip((1,))
    assert f.is_compact()
    np.testing.assert_array_equal(f.numpy(), np.flip(a, 1))
    np.testing.assert_array_equal(x.pad(((1, 0), (2, 1))).numpy(), np.pad(a, ((1, 0), (2, 1))))


def _backend_modules():
    mods = [nd.ndarray_backend_numpy]
    if nd.cpu().enabled():
        mods.append(nd.cpu().mod)
    return mods


@pytest.mark.parametrize("mod", _backend_modules(), ids=lambda m: m.__device_name__)
def test_backend_module_table(mod):
    assert mod.__device_name__ in ("cpu_numpy", "numpy", "cpu")
    if mod.__device_name__ == "cpu":
        assert mod.__tile_size__ == 8
    arr = mod.Array(6, "float32")
    assert arr.size == 6 and isinstance(arr.ptr(), int)
    mod.from_numpy(np.arange(6, dtype=np.float32), arr)
    np.testing.assert_array_equal(mod.to_numpy(arr, (2, 3), (3, 1), 0), np.arange(6).reshape(2, 3))
    out = mod.Array(6, "float32")
    # 7 dimensions and a negative stride
    mod.compact(arr, out, (1, 1, 1, 1, 1, 2, 3), (6, 6, 6, 6, 6, -3, 1), 3)
    np.testing.assert_array_equal(mod.to_numpy(out, (6,), (1,), 0), [3, 4, 5, 0, 1, 2])
    mod.fill(out, 2.0)
    mod.scalar_setitem(2, 9.0, out, (2,), (3,), 0)
    np.testing.assert_array_equal(mod.to_numpy(out, (6,), (1,), 0), [9, 2, 2, 9, 2, 2])
    b = mod.Array(6, "float32")
    mod.ewise_add(arr, out, b)
    np.testing.assert_array_equal(mod.to_numpy(b, (6,), (1,), 0), np.arange(6) + [9, 2, 2, 9, 2, 2])
    red = mod.Array(2, "float32")
    mod.reduce_sum(arr, red, 3)
    np.testing.assert_array_equal(mod.to_numpy(red, (2,), (1,), 0), [3, 12])
    mod.reduce_max(arr, red, 3)
    np.testing.assert_array_equal(mod.to_numpy(red, (2,), (1,), 0), [2, 5])
    c = mod.Array(4, "float32")
    mod.matmul(arr, arr, c, 2, 3, 2) if False else None  # (2,3)@(3,2) needs 6 and 6
    a23 = mod.Array(6, "float32")
    mod.from_numpy(np.arange(6, dtype=np.float32), a23)
    mod.matmul(arr, a23, c, 2, 3, 2)
    want = np.arange(6.0).reshape(2, 3) @ np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(mod.to_numpy(c, (2, 2), (2, 1), 0), want)
