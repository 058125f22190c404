"""The op catalogue, one Op class per operation plus its lower-case function form."""

# The graph types too, as the course's ops module has them (``from needle.ops import Tensor``).
# Tensor's + and * make their nodes with one shared instance each (see autograd._OPS).
from .. import autograd as _autograd
from ..autograd import Op, Tensor, TensorOp, TensorTuple, TensorTupleOp, Value  # noqa: F401
from .ops_activation import *  # noqa: F403
from .ops_functional import *  # noqa: F403
from .ops_inplace import *  # noqa: F403
from .ops_logarithmic import *  # noqa: F403
from .ops_mathematic import *  # noqa: F403
from .ops_norm import *  # noqa: F403
from .ops_reduce import *  # noqa: F403
from .ops_rnn import *  # noqa: F403
from .ops_shape import *  # noqa: F403
from .ops_tuple import *  # noqa: F403

_autograd._OPS.add, _autograd._OPS.mul = EWiseAdd(), EWiseMul()  # noqa: F405
