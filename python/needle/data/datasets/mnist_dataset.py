"""MNIST from its IDX files (gzip-compressed or not), as in the course's hw0/hw2."""

import gzip
import os
import struct
import zlib
from typing import Optional

import numpy as np

from ..data_basic import Dataset, missing_file_error

__all__ = ["MNISTDataset", "parse_mnist"]

IMAGES_MAGIC = 0x00000803  # IDX: unsigned bytes, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 0x00000801  # IDX: unsigned bytes, 1 dimension (count)

HOW_TO_GET = (
    "Get the MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from the original MNIST site "
    "(http://yann.lecun.com/exdb/mnist/) or a mirror of it, and pass the folder holding them "
    "with --data-dir."
)


def _read_file(path: str, what: str) -> bytes:
    """The bytes of `path`, gunzipped when they start with the gzip magic (whatever the name)."""
    if not os.path.isfile(path):
        raise missing_file_error(path, what, HOW_TO_GET)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip data in {what} ({e})") from e
    return raw


def read_idx(path, magic: int, what: str) -> np.ndarray:
    """Read an IDX file of unsigned bytes into a uint8 array of the shape its header gives."""
    path = os.fspath(path)
    raw = _read_file(path, what)
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise ValueError(f"{path}: {what} is too short for an IDX header ({len(raw)} bytes)")
    found, *dims = struct.unpack(f">{1 + ndim}I", raw[:header])
    if found != magic:
        hint = {IMAGES_MAGIC: " (an image file?)", LABELS_MAGIC: " (a label file?)"}.get(found, "")
        raise ValueError(
            f"{path}: bad magic number {found:#010x} for {what}, expected {magic:#010x}{hint}"
        )
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise ValueError(
            f"{path}: wrong size for {what}: the header says shape {tuple(dims)}, "
            f"{expected} bytes, but the file holds {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


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
    """MNIST digits: item i is (image, label), label a uint8 class in 0..9.

    Without transforms an image is the flat (784,) float32 vector of `parse_mnist`; with
    transforms it is reshaped to (28, 28, 1) (H x W x C, as the transforms expect) before they
    are applied, and returned in that shape. A slice or index array returns stacked batches.
    """

    def __init__(self, image_filename: str, label_filename: str, transforms: Optional[list] = None):
        super().__init__(transforms)
        images, labels = read_mnist(image_filename, label_filename)
        self.image_shape = images.shape[1:] + (1,)
        self.X, self.y = _flat_unit_range(images), labels.copy()

    def __len__(self) -> int:
        return self.X.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            x = self.X[index]
            if self.transforms:
                x = self.apply_transforms(x.reshape(self.image_shape))
            return x, self.y[index]
        return self.get_items(index)

    def get_items(self, indices) -> tuple[np.ndarray, np.ndarray]:
        X = self.X[indices]
        if self.transforms:
            X = X.reshape((-1,) + self.image_shape)
            if len(X):
                X = np.stack([self.apply_transforms(x) for x in X])
        return X, self.y[indices]
