"""Tensor constructors and weight initialisers, with needle's signatures."""

from .init_basic import *  # noqa: F403
from .init_initializers import *  # noqa: F403
