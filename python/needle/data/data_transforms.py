"""Random image augmentations on H x W x C NumPy images, with the course's semantics.

Pass a list of them as a dataset's `transforms`; each is applied to one image at a time.
With `generator=None` they draw from NumPy's global generator exactly as the course's
versions do (so np.random.seed reproduces the course's numbers); an int or a
numpy.random.Generator gives them a private, reproducible stream instead.
"""

import numpy as np

from .data_basic import GeneratorLike, as_rng, randint, uniform

__all__ = ["Transform", "RandomFlipHorizontal", "RandomCrop"]


class Transform:
    """A callable image -> image."""

    def __call__(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class RandomFlipHorizontal(Transform):
    """Mirror the image left-right (along W) with probability `p`."""

    def __init__(self, p: float = 0.5, generator: GeneratorLike = None):
        self.p = p
        self._rng = as_rng(generator)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """(H, W, C) -> (H, W, C): one np.random.rand() draw u per call, flipped if u < p."""
        flip = uniform(self._rng) < self.p
        return np.flip(img, axis=1) if flip else img


class RandomCrop(Transform):
    """Zero-pad by `padding` on each side of H and W, then crop H x W at a random shift.

    Per call, ``shift_x, shift_y = np.random.randint(low=-padding, high=padding + 1, size=2)``;
    the result is the H x W window of the padded image starting at row padding + shift_x and
    column padding + shift_y (the image moved by (-shift_x, -shift_y), zeros filling the
    vacated border), as the course's RandomCrop.
    """

    def __init__(self, padding: int = 3, generator: GeneratorLike = None):
        self.padding = padding
        self._rng = as_rng(generator)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """(H, W, C) -> (H, W, C); a 2-D (H, W) image works too."""
        p = self.padding
        shift_x, shift_y = randint(self._rng, -p, p + 1, size=2)
        height, width = img.shape[:2]
        padded = np.pad(img, [(p, p), (p, p)] + [(0, 0)] * (img.ndim - 2))
        return padded[p + shift_x : p + shift_x + height, p + shift_y : p + shift_y + width]
