"""Spec section 2: backend selection and devices."""

import os
import subprocess
import sys

import numpy as np
import pytest

import needle as ndl
from needle import backend_ndarray as nd


def test_backend_is_read_from_the_environment():
    assert os.environ.get("NEEDLE_BACKEND", "nd") == ndl.BACKEND


def test_an_unknown_backend_raises_runtime_error():
    env = dict(os.environ, NEEDLE_BACKEND="jax")
    result = subprocess.run(
        [sys.executable, "-c", "import needle"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "RuntimeError" in result.stderr
    assert "NEEDLE_BACKEND" in result.stderr


def test_backend_ndarray_imports_in_both_modes():
    assert hasattr(nd, "NDArray") and hasattr(nd, "cpu")


@pytest.mark.skipif(ndl.BACKEND != "np", reason="the numpy mode's device")
def test_numpy_mode_device():
    dev = ndl.cpu()
    assert repr(dev) == "needle.cpu()" and dev == ndl.cpu() and hash(dev) == hash(ndl.cpu())
    assert dev.enabled() and ndl.default_device() == dev and ndl.all_devices() == [dev]
    assert isinstance(dev, ndl.Device)
    assert dev.zeros(2, 3).dtype == np.float32 and dev.ones(2, dtype="float64").dtype == np.float64
    np.testing.assert_array_equal(dev.one_hot(3, np.array([2, 0])), np.eye(3)[[2, 0]])
    assert dev.empty((2, 2)).shape == (2, 2)
    np.testing.assert_array_equal(dev.full((2,), 7.0), [7.0, 7.0])
    np.random.seed(3)
    want = np.random.rand(2, 3)
    np.random.seed(3)
    got = dev.rand(2, 3)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    np.random.seed(3)
    want = np.random.randn(4)
    np.random.seed(3)
    np.testing.assert_array_equal(dev.randn(4), want)


@pytest.mark.skipif(ndl.BACKEND != "nd", reason="the NDArray mode's devices")
class TestNDArrayModeDevices:
    def test_names_and_reprs(self):
        for make, name in ((nd.cpu, "cpu"), (nd.cuda, "cuda"), (nd.cpu_numpy, "cpu_numpy")):
            dev = make()
            assert dev.name == name and repr(dev) == str(dev) == f"{name}()"
            assert make() == dev  # the same object each call (the course makes new, equal ones)
        assert nd.cpu() != nd.cuda() and nd.cpu() != "cpu" and (nd.cpu() == 3) is False
        assert ndl.Device is nd.BackendDevice

    def test_module_and_forwarding(self):
        dev = nd.cpu()
        assert dev.mod is not None and dev.enabled()
        assert dev.Array is dev.mod.Array and dev.ewise_add is dev.mod.ewise_add
        assert dev.__tile_size__ == 8 and hasattr(dev, "matmul_tiled")
        with pytest.raises(AttributeError):
            dev.no_such_primitive  # noqa: B018

    def test_cuda_never_raises(self):
        dev = nd.cuda()  # without a GPU: disabled, not an error
        assert isinstance(dev.enabled(), bool)

    def test_all_devices_starts_with_the_course_three(self):
        assert nd.all_devices()[:3] == [nd.cpu(), nd.cuda(), nd.cpu_numpy()]

    @pytest.mark.parametrize("draw", ["rand", "randn"])
    def test_random_arrays_are_one_numpy_draw(self, draw):
        np.random.seed(5)
        want = getattr(np.random, draw)(3, 2).astype(np.float32)
        np.random.seed(5)
        got = getattr(nd.cpu(), draw)(3, 2)
        assert isinstance(got, nd.NDArray) and got.dtype == "float32"
        np.testing.assert_array_equal(got.numpy(), want)

    def test_constructors(self):
        dev = nd.cpu()
        np.testing.assert_array_equal(dev.one_hot(4, np.array([3, 1])).numpy(), np.eye(4)[[3, 1]])
        assert dev.empty((2, 3)).shape == (2, 3) and dev.empty((2,), dtype=None).dtype == "float32"
        np.testing.assert_array_equal(dev.full((2, 2), 1.5).numpy(), np.full((2, 2), 1.5))

    def test_results_do_not_depend_on_the_default_device(self):
        a = np.random.randn(3, 4)
        on_default = ndl.Tensor(a).numpy()
        for dev in (nd.cpu(), nd.cpu_numpy()):
            np.testing.assert_array_equal(ndl.Tensor(a, device=dev).numpy(), on_default)
        assert ndl.default_device() == nd.cpu()
