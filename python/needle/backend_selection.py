"""Which array library Tensors hold, chosen once by ``NEEDLE_BACKEND`` at first import.

``nd`` (the default): needle's NDArray on its devices (``cpu()``, ``cuda()``, ...).
``np``: the numpy-era mode of the course's first homeworks: Tensors hold NumPy arrays
(``cached_data`` is a ``numpy.ndarray`` keeping the input's dtype) on ``backend_numpy.cpu()``.
"""

import os
from typing import TYPE_CHECKING

from . import backend_ndarray as _nd

BACKEND = os.environ.get("NEEDLE_BACKEND", "nd")
if BACKEND not in ("nd", "np"):
    raise RuntimeError(f"NEEDLE_BACKEND must be 'nd' or 'np', got {BACKEND!r}")

get_num_threads, set_num_threads = _nd.get_num_threads, _nd.set_num_threads
metal, mps, webgpu = _nd.metal, _nd.mps, _nd.webgpu
cuda_emulated, metal_emulated = _nd.cuda_emulated, _nd.metal_emulated

# Type checkers see the NDArray mode (the numpy mode's names mirror it).
if TYPE_CHECKING or BACKEND == "nd":
    from . import backend_ndarray as array_api
    from .backend_ndarray import (
        BackendDevice as Device,
        NDArray,
        all_devices,
        cpu,
        cpu_numpy,
        cuda,
        default_device,
    )
else:
    import numpy as array_api
    from numpy import ndarray as NDArray

    from .backend_numpy import Device, all_devices, cpu, cuda, default_device
