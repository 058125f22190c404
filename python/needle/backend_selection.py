"""The array API that autograd and ops compute with: needle's NDArray and its devices."""

from . import backend_ndarray as array_api
from .backend_ndarray import (
    BackendDevice as Device,
    NDArray,
    all_devices,
    cpu,
    cpu_numpy,
    cuda,
    default_device,
    get_num_threads,
    metal,
    mps,
    set_num_threads,
)
