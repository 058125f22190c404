"""Dataset, DataLoader and dataset splitting, with the course's needle semantics.

A dataset item is a tuple of NumPy arrays (one per field: image, label, ...). The DataLoader
stacks the items of a batch along a new first axis and hands each field back as a Tensor.
"""

import math
from collections.abc import Iterator, Sequence
from typing import Optional, Union

import numpy as np

from ..autograd import Tensor

__all__ = ["Dataset", "DataLoader", "Subset", "random_split"]

# What `generator=` accepts everywhere in needle.data: None (NumPy's global generator, so
# np.random.seed reproduces a run as in the course), an int seed, or a NumPy generator.
GeneratorLike = Union[None, int, np.random.Generator, np.random.RandomState]


def as_rng(generator: GeneratorLike):
    """The random source behind `generator=`: np.random itself, or a seeded/given generator."""
    if generator is None:
        return np.random
    if isinstance(generator, (np.random.Generator, np.random.RandomState)):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    raise TypeError(
        f"generator must be None, an int seed or a numpy.random.Generator, got {generator!r}"
    )


def randint(rng, low: int, high: int, size=None):
    """Integers in [low, high) from np.random, a RandomState or a Generator alike."""
    integers = getattr(rng, "integers", None)  # Generator; RandomState and np.random: randint
    return integers(low, high, size=size) if integers else rng.randint(low, high, size=size)


def missing_file_error(path, what: str, how_to_get: str) -> FileNotFoundError:
    """A FileNotFoundError that names the missing file and says where to get the data."""
    return FileNotFoundError(f"{what} not found: {path}. {how_to_get}")


class Dataset:
    """An indexable collection of samples; subclasses define `__getitem__` and `__len__`.

    `transforms` is a list of callables applied in order to each image by `apply_transforms`
    (the course's list usage; there is no Compose).
    """

    def __init__(self, transforms: Optional[list] = None):
        self.transforms = transforms

    def __getitem__(self, index) -> object:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def apply_transforms(self, x: np.ndarray) -> np.ndarray:
        """Apply each transform of `self.transforms` in order to one sample."""
        if self.transforms is not None:
            for transform in self.transforms:
                x = transform(x)
        return x

    def get_items(self, indices: np.ndarray) -> tuple[np.ndarray, ...]:
        """The samples at `indices`, each field stacked along a new first axis.

        This generic version fetches one item at a time; datasets that hold arrays override it
        with one vectorised gather, which is the DataLoader's fast path.
        """
        return stack_items([self[int(i)] for i in indices])


def _as_numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, Tensor) else np.asarray(x)


def stack_items(items: Sequence) -> tuple[np.ndarray, ...]:
    """[(x0, y0), (x1, y1), ...] -> (stack(x), stack(y)); single-field items give a 1-tuple."""
    if len(items) == 0:
        raise ValueError("cannot stack an empty batch")
    if not isinstance(items[0], (tuple, list)):
        return (np.stack([_as_numpy(x) for x in items]),)
    return tuple(np.stack([_as_numpy(item[k]) for item in items]) for k in range(len(items[0])))


def _fetch(dataset, indices: np.ndarray) -> tuple[np.ndarray, ...]:
    get_items = getattr(dataset, "get_items", None)
    batch = (
        get_items(indices)
        if get_items is not None
        else stack_items([dataset[int(i)] for i in indices])
    )
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


class DataLoader:
    """Iterate over a dataset in batches: each batch is a tuple of Tensors, one per field.

    ``DataLoader(dataset, batch_size=1, shuffle=False, drop_last=False, generator=None,
    device=None, dtype="float32", sampler=None)``. Each field of a batch has shape
    (batch, *item_shape) and is a Tensor on `device` (default device if None) with `dtype` and
    requires_grad=False.
    Every field, labels included, is cast to `dtype` as in the course: labels arrive as float
    class indices, which `nn.SoftmaxLoss` and `init.one_hot` accept (they cast to integers).

    With `shuffle=True` each epoch (each `iter(loader)`) draws a fresh permutation from
    `generator`: None uses NumPy's global generator (np.random.seed reproduces it), an int
    seeds a private generator once, so two loaders with the same seed give the same sequence
    of epochs. Every sample appears exactly once per epoch; with `drop_last=True` the last,
    short batch is left out.

    A `sampler` (an iterable of dataset indices with a length, e.g.
    `needle.distributed.DistributedSampler`) decides the order and the subset instead; it
    cannot be combined with `shuffle=True`.
    """

    def __init__(
        self,
        dataset,
        batch_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: GeneratorLike = None,
        device=None,
        dtype="float32",
        sampler=None,
    ):
        if sampler is not None and shuffle:
            raise ValueError(
                "DataLoader: sampler and shuffle=True are mutually exclusive "
                "(the sampler decides the order)"
            )
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator
        self.device = device
        self.dtype = dtype
        self._rng = as_rng(generator)
        self.sampler = sampler

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        if self.sampler is not None:
            order = np.asarray(list(self.sampler), dtype=np.int64)
        else:
            n = len(self.dataset)
            order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            indices = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield tuple(
                Tensor(field, device=self.device, dtype=self.dtype, requires_grad=False)
                for field in _fetch(self.dataset, indices)
            )


class Subset(Dataset):
    """The items of `dataset` at `indices`, in that order (as torch.utils.data.Subset)."""

    def __init__(self, dataset, indices: Sequence[int]):
        super().__init__()
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(dataset)
        if self.indices.size and (self.indices.min() < -n or self.indices.max() >= n):
            raise IndexError(f"Subset indices must lie in [0, {n}) for a dataset of {n} items")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.dataset[int(self.indices[index])]
        return self.get_items(np.arange(len(self))[index])

    def get_items(self, indices: np.ndarray) -> tuple[np.ndarray, ...]:
        return _fetch(self.dataset, self.indices[np.asarray(indices, dtype=np.int64)])


def random_split(
    dataset, lengths: Sequence[Union[int, float]], generator: GeneratorLike = None
) -> list[Subset]:
    """Split `dataset` at random into Subsets of the given lengths (as torch's random_split).

    `lengths` are item counts summing to len(dataset), or fractions summing to 1; with
    fractions, the items left over by rounding down go one each to the first splits.
    """
    n = len(dataset)
    if (
        lengths
        and all(0 <= f <= 1 for f in lengths)
        and math.isclose(sum(lengths), 1.0)
        and sum(lengths) != n
    ):
        counts = [math.floor(n * f) for f in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
    else:
        counts = [int(c) for c in lengths]
        if any(c != length or c < 0 for c, length in zip(counts, lengths)):
            raise ValueError(f"lengths must be non-negative integers or fractions, got {lengths}")
    if sum(counts) != n:
        raise ValueError(f"lengths {list(lengths)} sum to {sum(counts)}, the dataset has {n} items")
    order = as_rng(generator).permutation(n)
    bounds = np.cumsum([0] + counts)
    return [Subset(dataset, order[start:stop]) for start, stop in zip(bounds[:-1], bounds[1:])]
