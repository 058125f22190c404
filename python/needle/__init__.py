"""needle: a deep-learning framework with reverse-mode autodiff over strided NDArrays."""

from . import ops  # noqa: F401  (ndl.ops, as in the needle API)
from .ops import *  # noqa: F403
from .autograd import Tensor, TensorTuple, Value, no_grad, is_grad_enabled, from_dlpack  # noqa: F401
from .backend_selection import *  # noqa: F403
from . import backend_ndarray, init  # noqa: F401
from . import nn, optim  # noqa: F401
from .serialization import save, load  # noqa: F401  (ndl.save / ndl.load, as torch.save/load)
from . import interop  # noqa: F401  (PyTorch state dicts in and out)
from . import data, distributed  # noqa: F401
from .capture import CaptureError, compile  # noqa: F401  (ndl.compile, as torch.compile)
from . import amp, debug  # noqa: F401
from .amp import autocast  # noqa: F401  (ndl.autocast, as torch.autocast)
from .profiler import profile  # noqa: F401  (ndl.profile, as torch.profiler.profile)

__version__ = "0.1.0"
