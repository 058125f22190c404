"""Dataset, DataLoader and dataset splitting, with the course's needle semantics.

A dataset item is a tuple of NumPy arrays (one per field: image, label, ...). The DataLoader
takes ``dataset[index_array]`` (each field stacked along a new first axis) and hands each field
back as a Tensor, integer labels as integer Tensors.
"""

import functools
import math
import time
from collections.abc import Sequence
from typing import Optional, Union

import numpy as np

from ..autograd import Tensor, from_dlpack
from ..backend_ndarray import ndarray as nd
from ..backend_selection import BACKEND
from .workers import WorkerPool, reseed

# The integer dtypes Tensors hold; other integer fields widen to int64.
_INT_DTYPES = ("int32", "int64", "uint8")

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


def uniform(rng) -> float:
    """One draw in [0, 1): np.random.rand() (the course's call) or a Generator's random()."""
    rand = getattr(rng, "rand", None)
    return rand() if rand is not None else rng.random()


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


def _defining(cls: type, name: str):
    return next((c for c in cls.__mro__ if name in c.__dict__), None)


def _fetch(dataset, indices: np.ndarray) -> tuple[np.ndarray, ...]:
    """The fields of ``dataset[indices]`` (an index array, as the course), through needle's
    vectorised `get_items` where the dataset's class defines it with its `__getitem__`. A
    dataset that takes only int indices (a list, a PyTorch-style dataset: an index array
    raises or gives fields without a row per index) is read one item at a time."""
    getter, items = _defining(type(dataset), "__getitem__"), _defining(type(dataset), "get_items")
    if items not in (None, Dataset) and issubclass(items, getter):
        return tuple(dataset.get_items(indices))
    try:
        batch = dataset[indices]
        fields = tuple(map(_as_numpy, batch if isinstance(batch, (tuple, list)) else (batch,)))
        if fields and all(f.ndim and len(f) == len(indices) for f in fields):
            return fields
    except (TypeError, ValueError, IndexError, KeyError):
        pass
    return stack_items([dataset[int(i)] for i in indices])


def _field_dtype(field: np.ndarray, dtype):
    """The dtype a batch field gets: integer and bool fields (labels, ids, masks) keep theirs
    (an integer kind the NDArray backends lack widens to int64); float fields take `dtype`,
    or with dtype None the course's rule of section 2 (float32 in the NDArray mode, the
    array's own in the numpy mode)."""
    kind = field.dtype.kind
    if kind == "b":
        return "bool"
    if kind in "iu":
        return field.dtype.name if field.dtype.name in _INT_DTYPES else "int64"
    if dtype is not None:
        return dtype
    return None if BACKEND == "np" else "float32"


class DataLoader:
    """Iterate over a dataset in batches: each batch is a tuple of Tensors, one per field.

    ``DataLoader(dataset, batch_size=1, shuffle=False, drop_last=False, generator=None,
    device=None, dtype=None, sampler=None)``, as the course's needle: without shuffle the
    constructor sets ``.ordering = np.array_split(np.arange(n), range(batch_size, n,
    batch_size))``; ``iter(loader)`` starts an epoch and returns the loader itself (it has
    ``__next__``), with shuffle drawing ``np.random.permutation(n)`` right then and splitting
    it the same way, so every epoch reshuffles. A batch is ``dataset[index_array]`` turned
    into one Tensor per field (requires_grad=False, on `device`, the default device if None);
    the last batch may be short.

    Field dtypes: integer and bool fields keep their dtype (labels stay integer class ids,
    which `nn.SoftmaxLoss`, `init.one_hot` and `nn.Embedding` take exactly); float fields
    take `dtype`, or with dtype None the rules of `Tensor(x)` (float32 in the NDArray mode,
    the data's own dtype in the numpy mode).

    Beyond the course: `generator` (None: np.random; an int seeds a private generator once),
    `drop_last` (no short last batch), and `sampler` (dataset indices with a length, e.g.
    `needle.distributed.DistributedSampler`, read at each `iter()`; not with shuffle=True).

    Keyword-only (docs/data_loading.md): `num_workers` N > 0 builds the same batches in N
    worker processes, each up to `prefetch_factor` batches ahead; `persistent_workers` keeps
    them across epochs; `timeout` (s) bounds the wait for one batch. `seed`: epoch e (the e-th
    iter(), counted by `.epoch`) shuffles with default_rng((seed, e)), and np.random is seeded
    from (seed, e, b) while batch b is built, so its transforms' draws do not depend on N.
    `blocked_seconds` adds up the time iteration waited for batches that were not ready.
    """

    def __init__(
        self,
        dataset,
        batch_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: GeneratorLike = None,
        device=None,
        dtype=None,
        sampler=None,
        *,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        persistent_workers: bool = False,
        seed: Optional[int] = None,
        timeout: Optional[float] = None,
    ):
        _check_worker_options(
            num_workers, prefetch_factor, persistent_workers, seed, generator, timeout
        )
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
        self.index = 0
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.persistent_workers, self.seed, self.timeout = persistent_workers, seed, timeout
        self.epoch = 0
        # Seconds __next__ has spent on batches that were not ready: building them here (no
        # workers), or blocked until their worker sent them. The rest of a call (receiving a
        # ready batch, wrapping it in Tensors, the next request) is the loader's own cost.
        self.blocked_seconds = 0.0
        self._key: Optional[tuple] = None  # np.random's seed for this epoch's batches
        self._pool: Optional[WorkerPool] = None
        # The course sets the ordering here only without shuffle; a sampler's may change
        # per epoch (set_epoch), so it is read at iter() too.
        self.ordering = (
            self._split(np.arange(len(dataset))) if not shuffle and sampler is None else None
        )

    def _split(self, order: np.ndarray) -> list[np.ndarray]:
        n = len(order)
        if n == 0:
            return []
        batches = np.array_split(order, range(self.batch_size, n, self.batch_size))
        if self.drop_last and n % self.batch_size:
            batches = batches[:-1]
        return batches

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> "DataLoader":
        rng = self._rng if self.seed is None else np.random.default_rng((self.seed, self.epoch))
        if self.sampler is not None:
            self.ordering = self._split(np.asarray(list(self.sampler), dtype=np.int64))
        elif self.shuffle:
            self.ordering = self._split(rng.permutation(len(self.dataset)))
        self._key = (self.seed, self.epoch) if self.seed is not None else None
        if self.num_workers and self.seed is None:
            self._key = (int(randint(rng, 0, 2**31)),)
        self.epoch += 1
        self.index = 0
        if self.num_workers:
            if self._pool is None:
                fetch = functools.partial(_fetch, self.dataset)
                self._pool = WorkerPool(fetch, self.num_workers, self.prefetch_factor, self.timeout)
            self._pool.start(self.ordering or [], self._key)
        return self

    def __next__(self) -> tuple[Tensor, ...]:
        # With workers, an epoch ends at its last batch, at an error (which closes the pool:
        # iter() starts new workers) or when none was started by iter().
        if self.ordering is None or self.index >= len(self.ordering) or self._stopped():
            if self._pool is not None and not self.persistent_workers:
                self.close()
            raise StopIteration
        if self._pool is not None:
            blocked = self._pool.blocked
            try:
                batch = self._pool.next(self._tensors_over)
            except BaseException:  # KeyboardInterrupt too: a half-read pipe is unusable
                self.close()
                raise
            self.blocked_seconds += self._pool.blocked - blocked
        else:
            started = time.perf_counter()
            batch = self._build_here()
            self.blocked_seconds += time.perf_counter() - started
        self.index += 1
        return batch

    def _build_here(self) -> tuple[Tensor, ...]:
        """The next batch, built in this process (no workers)."""
        if self._key is None:
            return self._tensors(_fetch(self.dataset, self.ordering[self.index]))
        state = np.random.get_state()
        try:
            reseed(self._key + (self.index,))
            return self._tensors(_fetch(self.dataset, self.ordering[self.index]))
        finally:
            np.random.set_state(state)

    def _tensors_over(self, fields) -> tuple[Tensor, ...]:
        """A worker's batch as Tensors over its shared buffer where the C++ CPU backend can
        take that memory as it is (the fields' own dtypes), else copies (_tensors): the pool
        gives the buffer back to the worker only once they are gone (workers._hold). Copying a
        CIFAR batch of 128 (1.5 MiB of float32) took 0.25 ms of the main process's 0.47 per
        batch; wrapping its memory takes 0.09."""
        device = self.device if self.device is not None else nd.default_device()
        if BACKEND == "np" or device.name != "cpu":
            return self._tensors(fields)
        return tuple(
            from_dlpack(field, device)
            if _field_dtype(field, self.dtype) == field.dtype.name
            else self._tensors((field,))[0]
            for field in fields
        )

    def _tensors(self, fields) -> tuple[Tensor, ...]:
        # Tensor() copies (NDArray into its own buffer, the numpy mode by np.array): a worker
        # may reuse the buffer behind `fields` as soon as this returns.
        return tuple(
            Tensor(
                field,
                device=self.device,
                dtype=_field_dtype(field, self.dtype),
                requires_grad=False,
            )
            for field in fields
        )

    def _stopped(self) -> bool:
        return self.num_workers > 0 and self._pool is None

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the loader is collected)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _check_worker_options(num_workers, prefetch_factor, persistent, seed, generator, timeout):
    def whole(value, low: int) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low

    if not whole(num_workers, 0) or not whole(prefetch_factor, 1):
        raise ValueError(
            f"DataLoader: num_workers must be an integer >= 0 and prefetch_factor >= 1, got "
            f"{num_workers!r} and {prefetch_factor!r}"
        )
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"DataLoader: timeout must be None or seconds > 0, got {timeout!r}")
    if persistent and not num_workers:
        raise ValueError("DataLoader: persistent_workers=True needs num_workers > 0")
    if seed is not None and (not whole(seed, 0) or generator is not None):
        raise ValueError(
            f"DataLoader: seed must be an integer >= 0 and not given with generator, got "
            f"seed={seed!r}, generator={generator!r}"
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
