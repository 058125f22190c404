"""The array API that autograd and ops compute with: needle's NDArray and its devices."""

from . import backend_ndarray as array_api  # noqa: F401  (autograd computes through it)
from .backend_ndarray import (  # noqa: F401
    BackendDevice as Device,
    NDArray,
    all_devices,
    cpu,
    cpu_numpy,
    cuda,
    metal,
    mps,
    default_device,
    get_num_threads,
    set_num_threads,
)
