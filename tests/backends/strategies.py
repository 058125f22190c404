"""Hypothesis strategies of the conformance suite (hypothesis is a test dependency, so they
stay here; the cases themselves are needle.conformance's)."""

import math

import numpy as np
from hypothesis import strategies as st

from needle.conformance.calls import view_of


@st.composite
def strided_views(draw, allow_broadcast=True):
    """(storage size, shape, strides, offset) of a random NumPy view of a compact parent:
    slices with steps (negative too), integer indices, permutations and broadcasting."""
    parent_shape = draw(st.lists(st.integers(1, 6), max_size=4))
    base = np.zeros(math.prod(parent_shape))
    view = base.reshape(parent_shape)
    index = tuple(
        draw(st.one_of(st.slices(n), st.integers(0, n - 1))) if n > 1 else draw(st.slices(n))
        for n in parent_shape
    )
    view = view[index + (Ellipsis,)]  # Ellipsis keeps a 0-d result a view, not a scalar
    view = view.transpose(draw(st.permutations(range(view.ndim))))
    if allow_broadcast and draw(st.booleans()):
        lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
        grown = tuple(draw(st.integers(1, 3)) if n == 1 else n for n in view.shape)
        view = np.broadcast_to(view, lead + grown)
    return view_of(base, view)
