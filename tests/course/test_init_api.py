"""COURSE_API.md section 7: needle.init, in both modes (NEEDLE_BACKEND=nd and np).

Each random function makes exactly one np.random.rand/randn(*shape) call; the numbers are
recomputed here with NumPy from the same seed.
"""

import inspect
import math

import numpy as np
import pytest

import needle as ndl
import needle.init as init

NP = ndl.BACKEND == "np"
TOL = dict(rtol=1e-6, atol=1e-6)


def _dev_cpu_ok(dtype):
    """Whether ndl.cpu() holds `dtype` yet (the native backend is being extended)."""
    try:
        ndl.Tensor(np.zeros(1, dtype=dtype), device=ndl.cpu(), dtype=dtype, requires_grad=False)
        return True
    except (ValueError, TypeError):
        return False


def _int_device():
    """A device that holds integer/bool data in this build: cpu() if it can, else cpu_numpy()."""
    if NP or (_dev_cpu_ok("int64") and _dev_cpu_ok("bool")):
        return ndl.cpu()
    return ndl.cpu_numpy()


def test_signatures():
    sig = lambda f: str(inspect.signature(f))  # noqa: E731
    assert sig(init.rand) == (
        "(*shape, low=0.0, high=1.0, device=None, dtype='float32', requires_grad=False)"
    )
    assert sig(init.randn) == (
        "(*shape, mean=0.0, std=1.0, device=None, dtype='float32', requires_grad=False)"
    )
    assert (
        sig(init.constant) == "(*shape, c=1.0, device=None, dtype='float32', requires_grad=False)"
    )
    assert sig(init.randb) == "(*shape, p=0.5, device=None, dtype='bool', requires_grad=False)"
    assert sig(init.one_hot) == "(n, i, device=None, dtype='float32', requires_grad=False)"
    assert sig(init.zeros_like) == "(array, *, device=None, requires_grad=False)"
    assert sig(init.ones_like) == "(array, *, device=None, requires_grad=False)"
    assert sig(init.xavier_uniform) == "(fan_in, fan_out, gain=1.0, **kwargs)"
    assert sig(init.xavier_normal) == "(fan_in, fan_out, gain=1.0, **kwargs)"
    ku = list(inspect.signature(init.kaiming_uniform).parameters)
    assert ku[:4] == ["fan_in", "fan_out", "shape", "nonlinearity"]
    kn = inspect.signature(init.kaiming_normal).parameters
    assert list(kn)[:3] == ["fan_in", "fan_out", "nonlinearity"]
    assert kn["nonlinearity"].default == "relu"


def test_defaults_device_dtype_requires_grad():
    t = init.rand(2, 3)
    assert t.shape == (2, 3) and t.dtype == "float32" and not t.requires_grad
    assert t.device == ndl.cpu()
    assert init.rand(2, requires_grad=True).requires_grad
    assert init.zeros(4).device == ndl.cpu()


def test_rand_one_draw():
    np.random.seed(3)
    t = init.rand(3, 4, low=-2.0, high=5.0)
    np.random.seed(3)
    u = np.random.rand(3, 4)
    np.testing.assert_allclose(t.numpy(), u * 7.0 - 2.0, **TOL)
    assert np.random.rand() == pytest.approx(np.random.RandomState(3).rand(13)[12])


def test_randn_one_draw():
    np.random.seed(4)
    t = init.randn(5, 2, mean=1.5, std=0.25)
    after = np.random.rand()
    np.random.seed(4)
    z = np.random.randn(5, 2)
    np.testing.assert_allclose(t.numpy(), z * 0.25 + 1.5, **TOL)
    assert after == np.random.rand()


def test_constant_ones_zeros_no_draw():
    np.random.seed(5)
    c = init.constant(2, 3, c=2.5)
    o, z = init.ones(3), init.zeros(1, 2)
    assert np.random.rand() == np.random.RandomState(5).rand()
    np.testing.assert_array_equal(c.numpy(), np.full((2, 3), 2.5))
    np.testing.assert_array_equal(o.numpy(), np.ones(3))
    np.testing.assert_array_equal(z.numpy(), np.zeros((1, 2)))
    assert c.dtype == "float32"


def test_randb_bool_mask():
    device = _int_device()
    np.random.seed(6)
    b = init.randb(4, 5, p=0.3, device=device)
    np.random.seed(6)
    expect = np.random.rand(4, 5) <= 0.3
    assert b.shape == (4, 5) and not b.requires_grad
    values = b.numpy()
    assert set(np.unique(values.astype(np.float64))) <= {0.0, 1.0}
    np.testing.assert_array_equal(values.astype(bool), expect)


def test_randb_float_mask():
    np.random.seed(7)
    b = init.randb(100, p=0.5, dtype="float32")
    np.random.seed(7)
    np.testing.assert_array_equal(b.numpy(), (np.random.rand(100) <= 0.5).astype(np.float32))
    assert b.dtype == "float32"


@pytest.mark.parametrize("ids_dtype", ["float32", "int64", "uint8", "int32"])
def test_one_hot_any_dtype_and_shape(ids_dtype):
    ids = np.array([[0, 2, 1], [3, 3, 0]])
    device = ndl.cpu() if ids_dtype == "float32" else _int_device()
    kw = {} if ids_dtype == "float32" else dict(dtype=ids_dtype)
    i = ndl.Tensor(ids.astype(ids_dtype), device=device, requires_grad=False, **kw)
    h = init.one_hot(4, i)
    assert h.shape == (2, 3, 4) and h.dtype == "float32"
    np.testing.assert_array_equal(h.numpy(), np.eye(4, dtype=np.float32)[ids])
    h1 = init.one_hot(5, ndl.Tensor([4.0, 0.0, 2.0], requires_grad=False))
    np.testing.assert_array_equal(h1.numpy(), np.eye(5)[[4, 0, 2]])


def test_zeros_like_ones_like():
    x = ndl.Tensor(np.arange(6.0).reshape(2, 3), dtype="float32")
    z, o = init.zeros_like(x), init.ones_like(x, requires_grad=True)
    assert z.shape == o.shape == (2, 3) and z.dtype == x.dtype and z.device == x.device
    assert o.requires_grad and not z.requires_grad
    np.testing.assert_array_equal(z.numpy(), np.zeros((2, 3)))
    np.testing.assert_array_equal(o.numpy(), np.ones((2, 3)))
    if NP:
        d = ndl.Tensor(np.ones((2, 2)))  # float64 stays float64 in the numpy mode
        assert init.zeros_like(d).dtype == np.float64
    else:
        cn = ndl.cpu_numpy()
        assert init.zeros_like(x, device=cn).device == cn


def test_xavier_uniform():
    np.random.seed(8)
    t = init.xavier_uniform(6, 4, gain=1.5)
    np.random.seed(8)
    a = 1.5 * math.sqrt(6 / 10)
    np.testing.assert_allclose(t.numpy(), np.random.rand(6, 4) * 2 * a - a, **TOL)
    assert t.shape == (6, 4)


def test_xavier_normal():
    np.random.seed(9)
    t = init.xavier_normal(3, 7, gain=0.5)
    np.random.seed(9)
    np.testing.assert_allclose(t.numpy(), np.random.randn(3, 7) * 0.5 * math.sqrt(2 / 10), **TOL)


def test_kaiming_uniform_and_shape():
    np.random.seed(10)
    t = init.kaiming_uniform(5, 3)
    s = init.kaiming_uniform(12, 8, shape=(2, 2, 3, 2))
    np.random.seed(10)
    b = math.sqrt(2) * math.sqrt(3 / 5)
    np.testing.assert_allclose(t.numpy(), np.random.rand(5, 3) * 2 * b - b, **TOL)
    b12 = math.sqrt(2) * math.sqrt(3 / 12)  # the bound uses fan_in even with `shape`
    np.testing.assert_allclose(s.numpy(), np.random.rand(2, 2, 3, 2) * 2 * b12 - b12, **TOL)
    assert s.shape == (2, 2, 3, 2)


def test_kaiming_normal():
    np.random.seed(11)
    t = init.kaiming_normal(8, 2)
    np.random.seed(11)
    np.testing.assert_allclose(
        t.numpy(), np.random.randn(8, 2) * math.sqrt(2) / math.sqrt(8), **TOL
    )


def test_nonlinearity_keyword_and_assertion():
    np.random.seed(12)
    a = init.kaiming_uniform(4, 4, nonlinearity="relu")
    b = init.kaiming_normal(4, 4, nonlinearity="relu")
    assert a.shape == b.shape == (4, 4)
    for f in (init.kaiming_uniform, init.kaiming_normal):
        with pytest.raises(AssertionError):
            f(4, 4, nonlinearity="tanh")


def test_kwargs_carry_device_dtype_requires_grad():
    t = init.xavier_uniform(2, 3, requires_grad=True, device=ndl.cpu(), dtype="float32")
    assert t.requires_grad and t.dtype == "float32" and t.device == ndl.cpu()
    if NP:
        d = init.kaiming_uniform(2, 3, dtype="float64")
        assert d.dtype == np.float64
