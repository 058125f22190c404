"""Datasets: in-memory arrays, MNIST, CIFAR-10 and Penn Treebank."""

from .ndarray_dataset import *  # noqa: F401,F403
from .mnist_dataset import *  # noqa: F401,F403
from .cifar10_dataset import *  # noqa: F401,F403
from .ptb_dataset import *  # noqa: F401,F403
