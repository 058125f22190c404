"""Data loading: Dataset, DataLoader, transforms and the MNIST, CIFAR-10 and PTB datasets."""

from .data_basic import *  # noqa: F401,F403
from .data_transforms import *  # noqa: F401,F403
from .datasets import *  # noqa: F401,F403
