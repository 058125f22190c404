"""The array layer: NDArray views over device buffers, and the devices that hold them."""

from .ndarray import *  # noqa: F403
from .ndarray import DTYPES, BackendDevice, NDArray  # noqa: F401
