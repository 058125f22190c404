"""A dataset over in-memory arrays that share their first axis."""

import numpy as np

from ..data_basic import Dataset

__all__ = ["NDArrayDataset"]


class NDArrayDataset(Dataset):
    """``NDArrayDataset(X, y, ...)``: item i is ``(X[i], y[i], ...)``.

    Indexing with a slice or an index array returns the stacked fields at once, which the
    DataLoader uses to build a batch in one gather per field.
    """

    def __init__(self, *arrays):
        super().__init__()
        if not arrays:
            raise ValueError("NDArrayDataset needs at least one array")
        self.arrays = tuple(np.asarray(a) for a in arrays)
        lengths = {a.shape[0] if a.ndim else None for a in self.arrays}
        if len(lengths) != 1 or None in lengths:
            shapes = [a.shape for a in self.arrays]
            raise ValueError(f"NDArrayDataset arrays must share their first axis, got {shapes}")

    def __len__(self) -> int:
        return self.arrays[0].shape[0]

    def __getitem__(self, index) -> tuple[np.ndarray, ...]:
        return tuple(a[index] for a in self.arrays)

    def get_items(self, indices: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(a[indices] for a in self.arrays)
