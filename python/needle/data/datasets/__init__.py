"""Datasets: in-memory arrays, MNIST, CIFAR-10 and Penn Treebank."""

from .cifar10_dataset import *  # noqa: F403
from .mnist_dataset import *  # noqa: F403
from .ndarray_dataset import *  # noqa: F403
from .ptb_dataset import *  # noqa: F403
