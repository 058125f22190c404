"""CIFAR-10 from its python pickle batches, as in the course's hw4."""

import codecs
import os
import pickle
from typing import Any, Optional

import numpy as np

from ..data_basic import Dataset, missing_file_error
from ..data_transforms import transform_batch

__all__ = ["CIFAR10Dataset"]

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
IMAGE_SHAPE = (3, 32, 32)

HOW_TO_GET = (
    "Get cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it "
    "(it holds cifar-10-batches-py/ with data_batch_1..5 and test_batch), and pass that folder "
    "with --data-dir."
)


def _field(batch: dict, name: str):
    # Batches pickled by Python 2 (the published ones) have bytes keys; accept str keys too.
    return batch[name.encode()] if name.encode() in batch else batch.get(name)


class _Refused(pickle.UnpicklingError):
    """The pickle asks for something a CIFAR-10 batch never holds."""


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles bytes at protocols 0-2 as _codecs.encode(text, "latin1"); allow only that.
    if not isinstance(text, str) or str(encoding).replace("-", "").lower() != "latin1":
        raise _Refused(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return codecs.encode(text, "latin1", errors)


# Every global a CIFAR-10 batch refers to: builtins (__builtin__ in protocol 0-2 pickles) and
# NumPy's array rebuilders, taken from its own reductions (_frombuffer is protocol 5's), under
# both numpy.core (NumPy 1, the published batches) and numpy._core (NumPy 2).
_BUILTINS = ("builtins", "__builtin__")
_RECONSTRUCT, _FROMBUFFER = (np.zeros(0).__reduce_ex__(protocol)[0] for protocol in (2, 5))
_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    **{(m, t.__name__): t for m in _BUILTINS for t in (dict, list, bytes, str, int)},
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds only the objects of `_ALLOWED`: no other class or function."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


def read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch -> images uint8 (n, 3072) and labels uint8 (n,).

    Read with a restricted unpickler: a pickle asking for any global not in `_ALLOWED` (which
    is how a pickle runs code) is refused with a ValueError naming it and the file.
    """
    if not os.path.isfile(path):
        raise missing_file_error(path, "CIFAR-10 batch file", HOW_TO_GET)
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise ValueError(
            f"{path}: refused to load: the pickle asks for {e}, which a CIFAR-10 batch never "
            "holds (only dicts, lists, bytes, str, int and NumPy arrays are allowed)"
        ) from None
    except Exception as e:  # a corrupt pickle can raise almost anything
        raise ValueError(f"{path}: not a readable CIFAR-10 python batch ({e!r})") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    data, labels = _field(batch, "data"), _field(batch, "labels")
    if data is None or labels is None:
        raise ValueError(f"{path}: a CIFAR-10 batch needs 'data' and 'labels' entries")
    data = np.asarray(data)
    labels = np.asarray(labels)
    size = int(np.prod(IMAGE_SHAPE))
    if data.ndim != 2 or data.shape[1] != size:
        raise ValueError(f"{path}: 'data' has shape {data.shape}, expected (n, {size})")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but 'labels' has shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be classes 0..9")
    return data.astype(np.uint8, copy=False), labels.astype(np.uint8)


class CIFAR10Dataset(Dataset):
    """CIFAR-10: item i is (image float32 (3, 32, 32) in [0, 1], label uint8 in 0..9).

    The batch files are pickles, read with a restricted unpickler that builds only the dicts,
    lists, bytes, ints and NumPy arrays a CIFAR-10 batch holds and refuses anything else.

    ``CIFAR10Dataset(base_folder, train=True, p=0.5, transforms=None)`` reads data_batch_1..5
    (train) or test_batch from `base_folder` (or from its cifar-10-batches-py/ subfolder).
    Transforms see each image as H x W x C, (32, 32, 3), and the result is turned back to
    C x H x W. `p` is kept for the course's signature and is not used: give the flip
    probability to RandomFlipHorizontal(p) instead.
    """

    def __init__(
        self,
        base_folder: str,
        train: bool = True,
        p: Optional[float] = 0.5,
        transforms: Optional[list] = None,
    ):
        super().__init__(transforms)
        self.p = p
        self.train = train
        base_folder = os.fspath(base_folder)
        names = TRAIN_FILES if train else TEST_FILES
        nested = os.path.join(base_folder, "cifar-10-batches-py")
        if not os.path.isfile(os.path.join(base_folder, names[0])) and os.path.isdir(nested):
            base_folder = nested
        batches = [read_cifar_batch(os.path.join(base_folder, name)) for name in names]
        data = np.concatenate([d for d, _ in batches])
        self.X = (data.astype(np.float32) / np.float32(255.0)).reshape((-1,) + IMAGE_SHAPE)
        self.y = np.concatenate([labels for _, labels in batches])

    def __len__(self) -> int:
        return self.X.shape[0]

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.apply_transforms(x.transpose(1, 2, 0)).transpose(2, 0, 1))

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            x = self.X[index]
            return (self._transform(x) if self.transforms else x), self.y[index]
        return self.get_items(index)

    def get_items(self, indices) -> tuple[np.ndarray, np.ndarray]:
        X = self.X[indices]
        if self.transforms and len(X):  # as _transform on each image, in one pass
            X = transform_batch(self.transforms, X.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
            X = np.ascontiguousarray(X)
        return X, self.y[indices]
