"""MNIST from its IDX files (gzip-compressed or not), as in the course's hw0/hw2."""

import gzip
import math
import os
import struct
import zlib
from typing import BinaryIO, Optional

import numpy as np

from ..data_basic import Dataset, missing_file_error
from ..data_transforms import transform_batch

__all__ = ["MNISTDataset", "parse_mnist"]

IMAGES_MAGIC = 0x00000803  # IDX: unsigned bytes, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 0x00000801  # IDX: unsigned bytes, 1 dimension (count)
MAX_IDX_BYTES = 2**30  # an IDX file promising more data is refused before any of it is read

HOW_TO_GET = (
    "Get the MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from the original MNIST site "
    "(http://yann.lecun.com/exdb/mnist/) or a mirror of it, and pass the folder holding them "
    "with --data-dir."
)


def read_idx(path, magic: int, what: str) -> np.ndarray:
    """Read an IDX file of unsigned bytes into a uint8 array of the shape its header gives.

    Gzip data is streamed: the header is checked first, a payload over MAX_IDX_BYTES is refused
    unread, and no more than the bytes the header promises (and one to find the end) are read.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise missing_file_error(path, what, HOW_TO_GET)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"  # gzip magic, whatever the file's name
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            return _read_idx(f, path, magic, what)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt gzip data in {what} ({e})") from e


def _read_idx(f: BinaryIO, path: str, magic: int, what: str) -> np.ndarray:
    ndim = magic & 0xFF
    header = f.read(4)
    found = struct.unpack(">I", header)[0] if len(header) == 4 else None
    if found is not None and found != magic:
        hint = {IMAGES_MAGIC: " (an image file?)", LABELS_MAGIC: " (a label file?)"}.get(found, "")
        raise ValueError(
            f"{path}: bad magic number {found:#010x} for {what}, expected {magic:#010x}{hint}"
        )
    header += f.read(4 * ndim)
    if len(header) < 4 * (1 + ndim):
        raise ValueError(f"{path}: {what} is too short for an IDX header ({len(header)} bytes)")
    dims = struct.unpack(f">{ndim}I", header[4:])
    n = math.prod(dims)  # a Python int: no overflow
    if n > MAX_IDX_BYTES:
        raise ValueError(
            f"{path}: the header of {what} promises shape {dims}, {n} bytes, more than "
            f"MAX_IDX_BYTES ({MAX_IDX_BYTES}); refused unread"
        )
    data = bytearray()
    while len(data) < n and (chunk := f.read(min(n - len(data), 1 << 24))):
        data += chunk
    if len(data) != n or f.read(1):
        held = f"{len(header) + len(data)}" if len(data) < n else f"more than {len(header) + n}"
        raise ValueError(
            f"{path}: wrong size for {what}: the header says shape {dims}, "
            f"{len(header) + n} bytes, but the file holds {held} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def read_mnist(image_filename, label_filename) -> tuple[np.ndarray, np.ndarray]:
    """Raw MNIST: images uint8 (n, rows, cols) and labels uint8 (n,), checked to match."""
    images = read_idx(image_filename, IMAGES_MAGIC, "MNIST image file")
    labels = read_idx(label_filename, LABELS_MAGIC, "MNIST label file")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{image_filename} holds {images.shape[0]} images but {label_filename} holds "
            f"{labels.shape[0]} labels"
        )
    return images, labels


def parse_mnist(image_filename, label_filename) -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST images and labels: X float32 (n, rows*cols) in [0, 1], y uint8 (n,)."""
    images, labels = read_mnist(image_filename, label_filename)
    return _flat_unit_range(images), labels.copy()


def _flat_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 (n, rows, cols) -> float32 (n, rows*cols) / 255."""
    return images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)


class MNISTDataset(Dataset):
    """MNIST digits: ``MNISTDataset(image_filename, label_filename, transforms=None)``.

    `X` holds the images as flat float32 rows in [0, 1] (pixel / 255) and `y` the labels as
    uint8. ``ds[i]`` (an int) is ``(image (784,), label)``; a slice or an index array gives
    ``(images (k, 784), labels (k,))``. Transforms run at access time, per image in index
    order, on its (28, 28, 1) (H x W x C) view; the result is flattened back, as the course.
    """

    def __init__(self, image_filename: str, label_filename: str, transforms: Optional[list] = None):
        super().__init__(transforms)
        images, labels = read_mnist(image_filename, label_filename)
        self.image_shape = images.shape[1:] + (1,)
        self.X, self.y = _flat_unit_range(images), labels.copy()

    def __len__(self) -> int:
        return self.X.shape[0]

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return self.apply_transforms(x.reshape(self.image_shape)).reshape(x.shape)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            x = self.X[index]
            return (self._transform(x) if self.transforms else x), self.y[index]
        return self.get_items(index)

    def get_items(self, indices) -> tuple[np.ndarray, np.ndarray]:
        X = self.X[indices]
        if self.transforms and len(X):  # as _transform on each image, in one pass
            X = transform_batch(self.transforms, X.reshape((-1,) + self.image_shape))
            X = X.reshape(len(X), -1)
        return X, self.y[indices]
