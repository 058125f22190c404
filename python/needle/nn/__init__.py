"""Neural-network modules: Module, Parameter, layers and losses (the needle.nn API)."""

from .nn_basic import *  # noqa: F403
from .nn_conv import *  # noqa: F403
from .nn_layers import *  # noqa: F403
from .nn_sequence import *  # noqa: F403
from .nn_transformer import *  # noqa: F403
