"""The numpy-era device (``NEEDLE_BACKEND=np``): Tensors hold NumPy arrays on one CPU device.

The course's first homeworks run in this mode: ``cached_data`` is a ``numpy.ndarray`` that
keeps the input's dtype (float64 stays float64), and ops follow NumPy's type promotion. The
ops themselves are the same as in the NDArray mode: autograd hands them the NumPy data as
NDArrays on the ``cpu_numpy`` backend, sharing memory, and keeps their results as NumPy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Device", "CPUDevice", "cpu", "cuda", "default_device", "all_devices"]


class Device:
    """A device that holds Tensor data."""


class CPUDevice(Device):
    """The one device of the numpy mode: data are NumPy arrays in host memory."""

    def __repr__(self) -> str:
        return "needle.cpu()"

    def __hash__(self) -> int:
        return hash(repr(self))

    def __eq__(self, other) -> bool:
        return isinstance(other, CPUDevice)

    def enabled(self) -> bool:
        return True

    def zeros(self, *shape, dtype="float32") -> np.ndarray:
        return np.zeros(_shape(shape), dtype=dtype)

    def ones(self, *shape, dtype="float32") -> np.ndarray:
        return np.ones(_shape(shape), dtype=dtype)

    def randn(self, *shape, dtype=None) -> np.ndarray:
        # One draw from NumPy's global generator, in float64 as the course's device gives.
        sample = np.random.randn(*shape)
        return sample if dtype is None else sample.astype(dtype)

    def rand(self, *shape, dtype=None) -> np.ndarray:
        sample = np.random.rand(*shape)
        return sample if dtype is None else sample.astype(dtype)

    def one_hot(self, n: int, i, dtype="float32") -> np.ndarray:
        return np.eye(n, dtype=dtype)[np.asarray(i, dtype=np.int64)]

    def empty(self, shape, dtype="float32") -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def full(self, shape, fill_value, dtype="float32") -> np.ndarray:
        return np.full(shape, fill_value, dtype=dtype)


class _DisabledDevice(Device):
    """A device this mode does not have (``cuda()``): ``enabled()`` is False."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"{self.name}()"

    def __eq__(self, other) -> bool:
        return isinstance(other, _DisabledDevice) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def enabled(self) -> bool:
        return False


def _shape(shape: tuple) -> tuple:
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


def cpu() -> CPUDevice:
    return CPUDevice()


def cuda() -> Device:
    """No CUDA in the numpy mode."""
    return _DisabledDevice("cuda")


def default_device() -> CPUDevice:
    return cpu()


def all_devices() -> list[Device]:
    return [cpu()]
