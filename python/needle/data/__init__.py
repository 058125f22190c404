"""Data loading: Dataset, DataLoader, transforms, the MNIST, CIFAR-10 and PTB datasets, and
where data is found on disk (NEEDLE_DATA_DIR, then the shipped files)."""

from .data_basic import *  # noqa: F403
from .data_dir import *  # noqa: F403
from .data_transforms import *  # noqa: F403
from .datasets import *  # noqa: F403
