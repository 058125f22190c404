"""Basic constructors: random and constant tensors on a device.

Every random constructor makes exactly one ``np.random.rand(*shape)`` or
``np.random.randn(*shape)`` call (through ``device.rand/randn``), so that code seeding NumPy's
global generator gets the course's numbers. ``device=None`` means ``ndl.cpu()``.
"""

import numpy as np

import needle as ndl
from needle.backend_ndarray import from_host

__all__ = [
    "rand",
    "randn",
    "constant",
    "ones",
    "zeros",
    "randb",
    "one_hot",
    "zeros_like",
    "ones_like",
]


def _device(device):
    return ndl.cpu() if device is None else device


def _draw(device, kind: str, shape: tuple, dtype):
    """One np.random.rand/randn(*shape) through the device: float64 in the numpy mode (the
    course computes in float64 there and casts at the end), `dtype` in the NDArray mode."""
    draw = getattr(device, kind)
    if ndl.BACKEND == "np" or dtype is None or np.dtype(dtype).kind != "f":
        return draw(*shape)
    return draw(*shape, dtype=dtype)


def rand(*shape, low=0.0, high=1.0, device=None, dtype="float32", requires_grad=False):
    """Uniform samples in [low, high): u * (high - low) + low."""
    device = _device(device)
    array = _draw(device, "rand", shape, dtype) * (high - low) + low
    return ndl.Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def randn(*shape, mean=0.0, std=1.0, device=None, dtype="float32", requires_grad=False):
    """Normal samples: z * std + mean."""
    device = _device(device)
    array = _draw(device, "randn", shape, dtype) * std + mean
    return ndl.Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def constant(*shape, c=1.0, device=None, dtype="float32", requires_grad=False):
    """A tensor filled with `c` (no random draw)."""
    device = _device(device)
    array = device.full(shape, c, dtype=dtype)
    return ndl.Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def ones(*shape, device=None, dtype="float32", requires_grad=False):
    return constant(*shape, c=1.0, device=device, dtype=dtype, requires_grad=requires_grad)


def zeros(*shape, device=None, dtype="float32", requires_grad=False):
    return constant(*shape, c=0.0, device=device, dtype=dtype, requires_grad=requires_grad)


def randb(*shape, p=0.5, device=None, dtype="bool", requires_grad=False):
    """Bernoulli(p) samples, u <= p for one uniform draw u: a 0/1 mask of `dtype` (True/False
    for the default "bool", 1.0/0.0 for a float dtype)."""
    device = _device(device)
    if ndl.BACKEND == "np":
        mask = np.asarray(device.rand(*shape)) <= p
        return ndl.Tensor(
            mask.astype(dtype), device=device, dtype=dtype, requires_grad=requires_grad
        )
    # Drawn and compared on the host as one from_host call (a captured step draws again).
    mask = from_host(_bernoulli, (), shape, p, device=device, dtype=dtype)
    return ndl.Tensor(mask, device=device, dtype=dtype, requires_grad=requires_grad)


def _bernoulli(shape: tuple, p: float) -> np.ndarray:
    """u <= p for u = np.random.rand(*shape) in float32 (device.rand's draw)."""
    return np.asarray(np.random.rand(*shape)).astype("float32") <= p


def one_hot(n, i, device=None, dtype="float32", requires_grad=False):
    """Rows of the n x n identity picked by the class ids `i` (a Tensor of any dtype, or an
    array): shape ``i.shape + (n,)``."""
    ids = i.numpy() if isinstance(i, ndl.Tensor) else np.asarray(i)
    ids = np.asarray(ids).astype("int32")
    device = _device(device)
    return ndl.Tensor(
        device.one_hot(n, ids, dtype=dtype),
        device=device,
        dtype=dtype,
        requires_grad=requires_grad,
    )


def zeros_like(array, *, device=None, requires_grad=False):
    """Zeros with the shape, dtype and (unless given) device of `array`."""
    device = array.device if device is None else device
    return zeros(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)


def ones_like(array, *, device=None, requires_grad=False):
    """Ones with the shape, dtype and (unless given) device of `array`."""
    device = array.device if device is None else device
    return ones(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)
