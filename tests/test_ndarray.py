"""The array layer (NDArray) agrees with NumPy: views, writes through views, arithmetic,
reductions, matmul, constructors, dtypes, and the errors it documents.

Most tests are hypothesis property tests over random shapes (0..4 dims of size 1..6),
random view chains (permute, broadcast_to, slicing with any step, ints, Ellipsis) and random
values, run on every device (see conftest.py) and both dtypes. NumPy is the reference.

NDArray follows the course API (issue 14): `x[i]` keeps axis i as size 1 (np_index writes the
same selection for NumPy; `_index_view` is the NumPy-semantics view, np_view_index), setitem
takes a value of the selection's size in any shape or one broadcastable to either selection
shape, comparisons give bool arrays, and mixed dtypes promote as dtypes.result_type.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from numpy.lib.stride_tricks import as_strided

import needle as ndl
from needle import backend_ndarray as nd
from needle.backend_ndarray import compact_strides

DTYPES = ("float32", "float64")
TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-12)}
# Reductions and matmul may add in another order than NumPy does.
SUM_TOL = {"float32": dict(rtol=1e-5, atol=1e-4), "float64": dict(rtol=1e-12, atol=1e-11)}

# `device` is a function-scoped fixture but immutable, so reusing it across examples is fine.
PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

needs_cpu = pytest.mark.skipif(not ndl.cpu().enabled(), reason="C++ CPU backend not built")
dtypes = pytest.mark.parametrize("dtype", DTYPES)


# ---- strategies and helpers -------------------------------------------------------------
shapes = st.lists(st.integers(1, 6), min_size=0, max_size=4).map(tuple)
nonempty_shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)
seeds = st.integers(0, 2**32 - 1)


def rand(seed, shape, dtype, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(dtype)


def to_nd(x, device, dtype):
    return nd.array(x, device=device, dtype=dtype)


def assert_matches(actual: nd.NDArray, expected: np.ndarray, dtype, tol=TOL):
    """`actual` has the expected shape and dtype, and NumPy's values."""
    assert isinstance(actual, nd.NDArray)
    assert actual.shape == expected.shape
    assert actual.dtype == dtype
    got = actual.numpy()
    assert got.dtype == np.dtype(dtype) and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **tol[dtype])


def assert_bools(actual: nd.NDArray, expected: np.ndarray):
    """`actual` is a bool NDArray with NumPy's (bool) values and shape."""
    assert expected.dtype == np.bool_
    assert isinstance(actual, nd.NDArray)
    assert actual.dtype == "bool" and actual.shape == expected.shape
    got = actual.numpy()
    assert got.dtype == np.bool_ and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@st.composite
def indices(draw, shape):
    """A NumPy basic index for `shape`: ints, slices (any bounds and step) and maybe '...'."""

    def one(dim):
        if dim and draw(st.booleans()):
            return draw(st.integers(-dim, dim - 1))
        bound = st.none() | st.integers(-dim - 2, dim + 2)
        step = st.none() | st.integers(1, 3) | st.integers(-3, -1)
        return slice(draw(bound), draw(bound), draw(step))

    ndim = len(shape)
    n_before = draw(st.integers(0, ndim))
    if draw(st.booleans()):  # with an Ellipsis standing for the axes in the middle
        n_after = draw(st.integers(0, ndim - n_before))
        idx = [one(d) for d in shape[:n_before]] + [Ellipsis]
        idx += [one(d) for d in shape[ndim - n_after :]]
    else:
        idx = [one(d) for d in shape[:n_before]]
    if len(idx) == 1 and draw(st.booleans()):
        return idx[0]  # a bare index, not a tuple
    return tuple(idx)


def np_view_index(idx):
    """The same index for NumPy (NumPy semantics: an int drops its axis, as
    NDArray._index_view reads it), made to give a view even when every axis gets an int."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    return idx if any(i is Ellipsis for i in idx) else idx + (Ellipsis,)


def np_index(idx):
    """The same index for NumPy, as NDArray.__getitem__ reads it: an int i selects like
    slice(i, i + 1), keeping its axis (the course's NDArray indexing; Tensor indexing drops
    it). Always a view."""
    return np_view_index(
        tuple(slice(i, i + 1 or None) if isinstance(i, int) else i for i in np_view_index(idx))
    )


def np_broadcast(x: np.ndarray, shape) -> np.ndarray:
    """A *writable* broadcast view (np.broadcast_to's is read-only)."""
    lead = len(shape) - x.ndim
    strides = (0,) * lead + tuple(
        s if d == n else 0 for d, n, s in zip(x.shape, shape[lead:], x.strides)
    )
    return as_strided(x, shape, strides)


@st.composite
def view_chains(draw, shape, max_len=4):
    """A list of view operations applicable one after another, starting from `shape`."""
    chain = []
    for _ in range(draw(st.integers(1, max_len))):
        kind = draw(st.sampled_from(["permute", "broadcast_to", "getitem"]))
        if kind == "permute":
            axes = tuple(draw(st.permutations(range(len(shape)))))
            chain.append(("permute", axes))
            shape = tuple(shape[a] for a in axes)
        elif kind == "broadcast_to":
            lead = draw(st.lists(st.integers(1, 3), max_size=2)) if len(shape) < 5 else []
            new = tuple(lead) + tuple(draw(st.integers(1, 3)) if d == 1 else d for d in shape)
            if int(np.prod(new)) > 4000:
                new = shape
            chain.append(("broadcast_to", new))
            shape = new
        else:
            idx = draw(indices(shape))
            chain.append(("getitem", idx))
            shape = np.empty(shape)[np_index(idx)].shape
    return chain


def apply_nd(x: nd.NDArray, chain) -> nd.NDArray:
    for kind, arg in chain:
        x = (
            x.permute(arg)
            if kind == "permute"
            else x.broadcast_to(arg)
            if kind == "broadcast_to"
            else x[arg]
        )
    return x


def apply_np(x: np.ndarray, chain) -> np.ndarray:
    for kind, arg in chain:
        x = (
            np.transpose(x, arg)
            if kind == "permute"
            else np_broadcast(x, arg)
            if kind == "broadcast_to"
            else x[np_index(arg)]
        )
    return x


def aliased(x: np.ndarray) -> bool:
    """True when several elements of the view share memory (a broadcast axis)."""
    return any(s == 0 and d > 1 for s, d in zip(x.strides, x.shape))


@st.composite
def broadcastable_to(draw, shape):
    """A shape that broadcasts to `shape`: some dims set to 1, some leading dims dropped."""
    new = [draw(st.sampled_from([d, 1])) for d in shape]
    return tuple(new[draw(st.integers(0, len(new))) :])


@st.composite
def broadcast_pairs(draw):
    shape = draw(shapes)
    other = draw(broadcastable_to(shape))
    return (shape, other) if draw(st.booleans()) else (other, shape)


@st.composite
def axis_args(draw, ndim):
    """axis=None, an int (maybe negative) or a tuple of distinct axes (maybe negative)."""
    kind = draw(st.sampled_from(["none", "int", "tuple"] if ndim else ["none", "empty"]))
    if kind == "empty":
        return ()
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    axes = draw(st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim))
    return tuple(a - ndim if draw(st.booleans()) else a for a in axes)


def maybe_noncompact(draw, x: np.ndarray, device, dtype) -> nd.NDArray:
    """An NDArray equal to `x`, either compact or a permuted view at a non-zero offset,
    maybe with one reversed (negative-stride) axis."""
    if not draw(st.booleans()):
        return to_nd(x, device, dtype)
    axes = tuple(draw(st.permutations(range(x.ndim))))
    inverse = tuple(np.argsort(axes))
    stored = np.transpose(x, axes)
    reverse = draw(st.none() | st.integers(0, x.ndim - 1)) if x.ndim else None
    if reverse is not None:
        stored = np.flip(stored, reverse)
    buffer = to_nd(np.stack([np.zeros_like(stored), stored]), device, dtype)
    view = buffer._index_view(1)  # NumPy's buffer[1]: the leading axis dropped
    if reverse is not None:
        view = view[(slice(None),) * reverse + (slice(None, None, -1),)]
    view = view.permute(inverse)
    assert view.shape == x.shape
    return view


def drawn(data, shape, device, dtype, low=-1.0, high=1.0):
    """Random values of `shape` in [low, high) and an NDArray of them (maybe_noncompact)."""
    x_np = rand(data.draw(seeds), shape, dtype, low, high)
    return x_np, maybe_noncompact(data.draw, x_np, device, dtype)


# ---- views --------------------------------------------------------------------------------
@dtypes
@PROPERTY
@given(data=st.data(), shape=shapes)
def test_view_chain_matches_numpy_and_shares_buffer(device, dtype, data, shape):
    base_np = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    base = to_nd(base_np, device, dtype)
    chain = data.draw(view_chains(shape), label="chain")
    view, view_np = apply_nd(base, chain), apply_np(base_np, chain)

    assert view.shape == view_np.shape
    assert view._handle is base._handle  # a view: no copy
    np.testing.assert_array_equal(view.numpy(), view_np)

    compacted = view.compact()
    assert compacted.is_compact()
    assert compacted.strides == compact_strides(view.shape)
    np.testing.assert_array_equal(compacted.numpy(), view_np)
    if view.is_compact():
        assert compacted is view
    copied = view.copy()  # a buffer of its own, a compact view's too
    assert copied.is_compact() and copied._handle is not base._handle
    np.testing.assert_array_equal(copied.numpy(), view_np)

    # Write through the view (into a sub-selection of it), exactly as NumPy would.
    idx = data.draw(indices(view.shape), label="setitem index")
    selection = view_np[np_index(idx)]
    if data.draw(st.booleans(), label="scalar") or aliased(selection):
        value = data.draw(st.integers(-100, -1), label="value")
        view[idx] = value
        selection[...] = value
    else:
        # NumPy's selection: the same elements with the int-indexed axes dropped.
        dropped = view_np[np_view_index(idx)]
        kind = data.draw(st.sampled_from(["kept", "dropped", "same size"]), label="value kind")
        if kind == "same size":  # any shape of the selection's size, read in row-major order
            value_shape = data.draw(
                st.sampled_from([(selection.size,), selection.shape[::-1], (1, selection.size)]),
                label="value shape",
            )
        else:
            target = selection.shape if kind == "kept" else dropped.shape
            value_shape = data.draw(broadcastable_to(target), label="value shape")
            if data.draw(st.booleans(), label="extra leading 1"):
                value_shape = (1,) + value_shape
        value_np = -1.0 - np.arange(int(np.prod(value_shape)), dtype=dtype).reshape(value_shape)
        view[idx] = to_nd(value_np, device, dtype)
        if kind == "same size":
            selection[...] = value_np.reshape(selection.shape)
        elif kind == "kept":
            selection[...] = value_np
        else:
            dropped[...] = value_np
    np.testing.assert_array_equal(base.numpy(), base_np)  # visible in the base
    np.testing.assert_array_equal(view.numpy(), view_np)
    before = apply_np(np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape), chain)
    if compacted is not view:  # compact() copied, so the copy kept the old values
        np.testing.assert_array_equal(compacted.numpy(), before)
    np.testing.assert_array_equal(copied.numpy(), before)  # copy() always did


@dtypes
@PROPERTY
@given(data=st.data(), shape=nonempty_shapes)
def test_reshape(device, dtype, data, shape):
    x_np = rand(data.draw(seeds), shape, dtype)
    chain = data.draw(st.none() | view_chains(shape, max_len=2), label="chain")
    base = to_nd(x_np, device, dtype)
    x = apply_nd(base, chain) if chain else base
    x_view_np = apply_np(x_np, chain) if chain else x_np
    size = x.size
    if size == 0:
        new_shape = data.draw(st.sampled_from([(0,), (2, 0), (0, 3, 1)]))
    else:
        dims, rest = [], size
        while rest > 1 and len(dims) < 4:
            d = data.draw(st.sampled_from([k for k in range(2, rest + 1) if rest % k == 0]))
            dims.append(d)
            rest //= d
        dims[-1:] = [dims[-1] * rest] if dims else []
        dims += [1] * data.draw(st.integers(0, 2))
        new_shape = tuple(data.draw(st.permutations(dims)))
        if new_shape and data.draw(st.booleans(), label="use -1"):
            i = data.draw(st.integers(0, len(new_shape) - 1))
            new_shape = new_shape[:i] + (-1,) + new_shape[i + 1 :]
    expected = x_view_np.reshape(new_shape)
    was_compact = x.is_compact()
    y = x.reshape(new_shape) if data.draw(st.booleans()) else nd.reshape(x, new_shape)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(y.numpy(), expected)
    if y.size and y.shape != x.shape:
        before = base.numpy()
        y[...] = -5.0
        if was_compact:  # a view: the write shows in the source
            assert y._handle is x._handle
            assert (x.numpy() == -5.0).all()
        else:  # a copy: the source is untouched
            np.testing.assert_array_equal(base.numpy(), before)


@dtypes
@PROPERTY
@given(data=st.data(), shape=shapes)
def test_flip(device, dtype, data, shape):
    x_np, x = drawn(data, shape, device, dtype)
    axes = data.draw(axis_args(len(shape)))
    y = x.flip(axes) if data.draw(st.booleans()) else nd.flip(x, axes)
    assert_matches(y, np.flip(x_np, axes), dtype)


@dtypes
@PROPERTY
@given(data=st.data(), shape=shapes)
def test_pad(device, dtype, data, shape):
    x_np, x = drawn(data, shape, device, dtype)
    pads = tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in shape)
    assert_matches(x.pad(pads), np.pad(x_np, pads) if shape else x_np, dtype)


@dtypes
def test_setitem_overlapping_source_and_target(device, dtype):
    x_np = np.arange(24, dtype=dtype).reshape(4, 6)
    x = to_nd(x_np, device, dtype)
    x[1:] = x[:-1]
    x_np[1:] = x_np[:-1]
    np.testing.assert_array_equal(x.numpy(), x_np)
    x[:, ::-1] = x
    x_np[:, ::-1] = x_np.copy()
    np.testing.assert_array_equal(x.numpy(), x_np)


@dtypes
def test_setitem_converts_dtype(device, dtype):
    other = "float64" if dtype == "float32" else "float32"
    x = nd.full((2, 3), 0.0, dtype=dtype, device=device)
    x[0] = to_nd(np.array([1.5, 2.5, 3.5]), device, other)
    assert x.dtype == dtype
    np.testing.assert_array_equal(x.numpy(), [[1.5, 2.5, 3.5], [0, 0, 0]])


def test_as_strided_view(device):
    x_np = np.arange(10, dtype="float32")
    x = to_nd(x_np, device, "float32")
    windows = x.as_strided((8, 3), (1, 1))  # overlapping sliding windows
    np.testing.assert_array_equal(windows.numpy(), as_strided(x_np, (8, 3), (4, 4)))
    assert windows._handle is x._handle
    backwards = x[::-1].as_strided((5,), (-2,))  # strides count buffer elements from the offset
    np.testing.assert_array_equal(backwards.numpy(), [9, 7, 5, 3, 1])


@pytest.mark.parametrize("ndim", [3, 40])
def test_permute_takes_negative_and_numpy_axes_at_any_rank(device, ndim):
    """permute's fast path (non-negative Python ints against a table of identity orders) and
    its general one give NumPy's transpose, past the table's ranks too; a repeated axis is
    refused."""
    shape = (2, 3, 4) + (1,) * (ndim - 3)
    x_np = np.arange(np.prod(shape), dtype="float32").reshape(shape)
    x = to_nd(x_np, device, "float32")
    order = [2, 0, 1] + list(range(3, ndim))
    for axes in (order, [a - ndim for a in order], [np.int64(a) for a in order]):
        np.testing.assert_array_equal(x.permute(axes).numpy(), x_np.transpose(order))
    with pytest.raises(ValueError, match="not a permutation"):
        x.permute([0, 0] + list(range(2, ndim)))


# ---- reductions ---------------------------------------------------------------------------
@dtypes
@pytest.mark.parametrize("name", ["sum", "max"])
@PROPERTY
@given(data=st.data(), shape=shapes)
def test_reductions(device, dtype, name, data, shape):
    x_np, x = drawn(data, shape, device, dtype)
    axis = data.draw(axis_args(len(shape)), label="axis")
    keepdims = data.draw(st.booleans(), label="keepdims")
    how = data.draw(st.sampled_from(["method", "function"]))
    reduce = (
        (lambda: getattr(x, name)(axis=axis, keepdims=keepdims))
        if how == "method"
        else (lambda: getattr(nd, name)(x, axis=axis, keepdims=keepdims))
    )
    if axis == ():  # an empty axis tuple is an error (axis=None reduces over every axis)
        with pytest.raises(ValueError, match="empty axis tuple"):
            reduce()
        return
    y = reduce()
    expected = getattr(np, name)(x_np, axis=axis, keepdims=keepdims)
    assert_matches(y, np.asarray(expected, dtype=dtype), dtype, SUM_TOL)


# ---- elementwise --------------------------------------------------------------------------
BINARY = {
    "add": (lambda a, b: a + b, (-2, 2), (-2, 2)),
    "sub": (lambda a, b: a - b, (-2, 2), (-2, 2)),
    "mul": (lambda a, b: a * b, (-2, 2), (-2, 2)),
    "div": (lambda a, b: a / b, (-2, 2), (0.5, 2)),
    "pow": (lambda a, b: a**b, (0.5, 2), (-2, 2)),
    "maximum": (
        lambda a, b: np.maximum(a, b) if isinstance(a, np.ndarray) else a.maximum(b),
        (-2, 2),
        (-2, 2),
    ),
}


@dtypes
@pytest.mark.parametrize("name", BINARY)
@PROPERTY
@given(data=st.data(), shapes_=broadcast_pairs())
def test_binary_ewise_with_broadcasting(device, dtype, name, data, shapes_):
    fn, range_a, range_b = BINARY[name]
    a_np, a = drawn(data, shapes_[0], device, dtype, *range_a)
    b_np, b = drawn(data, shapes_[1], device, dtype, *range_b)
    assert_matches(fn(a, b), fn(a_np, b_np), dtype)


SCALAR = {
    "a + c": lambda a, c: a + c,
    "c + a": lambda a, c: c + a,
    "a - c": lambda a, c: a - c,
    "c - a": lambda a, c: c - a,
    "a * c": lambda a, c: a * c,
    "c * a": lambda a, c: c * a,
    "a / c": lambda a, c: a / c,
    "c / a": lambda a, c: c / a,
    "a ** c": lambda a, c: a**c,
    "-a": lambda a, c: -a,
    "maximum(a, c)": lambda a, c: (
        np.maximum(a, c) if isinstance(a, np.ndarray) else nd.maximum(a, c)
    ),
}


@dtypes
@pytest.mark.parametrize("name", SCALAR)
@PROPERTY
@given(data=st.data(), shape=shapes, c=st.sampled_from([2, 0.5, -1.5, 3.0, -1, 2.25]))
def test_scalar_ops_and_reflected_ops(device, dtype, name, data, shape, c):
    low = 0.5 if name in ("c / a", "a ** c") else -2.0
    x_np, x = drawn(data, shape, device, dtype, low, 2.0)
    fn = SCALAR[name]
    assert_matches(fn(x, c), np.asarray(fn(x_np, c), dtype=dtype), dtype)


@dtypes
def test_numpy_scalar_on_the_left_gives_an_ndarray(device, dtype):
    x_np = np.array([0.5, 1.0, 2.0], dtype=dtype)
    x = to_nd(x_np, device, dtype)
    for scalar in (np.float64(2.0), np.float32(2.0)):
        for result, expected in (
            (scalar * x, 2.0 * x_np),
            (scalar - x, 2.0 - x_np),
            (scalar / x, 2.0 / x_np),
            (scalar + x, 2.0 + x_np),
        ):
            assert isinstance(result, nd.NDArray)
            assert_matches(result, expected.astype(dtype), dtype)


COMPARISONS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


@dtypes
@pytest.mark.parametrize("op", COMPARISONS)
@PROPERTY
@given(data=st.data(), shapes_=broadcast_pairs(), scalar=st.sampled_from([0, 1, 1.5, 3]))
def test_comparisons_give_bools(device, dtype, op, data, shapes_, scalar):
    rng = np.random.default_rng(data.draw(seeds))
    # Small integers, so that ties are common.
    a_np = rng.integers(0, 3, size=shapes_[0]).astype(dtype)
    b_np = rng.integers(0, 3, size=shapes_[1]).astype(dtype)
    a = maybe_noncompact(data.draw, a_np, device, dtype)
    b = maybe_noncompact(data.draw, b_np, device, dtype)
    fn = COMPARISONS[op]
    assert_bools(fn(a, b), fn(a_np, b_np))
    assert_bools(fn(a, scalar), np.asarray(fn(a_np, scalar)))


def _sigmoid(x):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))


UNARY = {
    "log": (np.log, (0.1, 5)),
    "exp": (np.exp, (-5, 5)),
    "tanh": (np.tanh, (-5, 5)),
    "sqrt": (np.sqrt, (0, 5)),
    "sin": (np.sin, (-5, 5)),
    "cos": (np.cos, (-5, 5)),
    "abs": (np.abs, (-5, 5)),
    "sign": (np.sign, (-2, 2)),
    "relu": (lambda x: np.maximum(x, 0), (-2, 2)),
    "sigmoid": (_sigmoid, (-20, 20)),
}


@dtypes
@pytest.mark.parametrize("name", UNARY)
@PROPERTY
@given(data=st.data(), shape=shapes)
def test_unary(device, dtype, name, data, shape):
    fn, (low, high) = UNARY[name]
    x_np = rand(data.draw(seeds), shape, dtype, low, high)
    if name in ("sign", "relu", "abs") and x_np.size:
        x_np.reshape(-1)[::3] = 0.0  # exact zeros
    x = maybe_noncompact(data.draw, x_np, device, dtype)
    y = getattr(x, name)()
    assert_matches(y, np.asarray(fn(x_np), dtype=dtype), dtype)
    if hasattr(nd, name):  # the module-level functions of the needle API
        assert_matches(getattr(nd, name)(x), np.asarray(fn(x_np), dtype=dtype), dtype)


@dtypes
def test_unary_extreme_inputs_stay_finite(device, dtype):
    x_np = np.array([-1000.0, -100.0, -20.0, 0.0, 20.0, 100.0, 1000.0], dtype=dtype)
    x = to_nd(x_np, device, dtype)
    np.testing.assert_allclose(x.sigmoid().numpy(), _sigmoid(x_np), **TOL[dtype])
    np.testing.assert_allclose(x.tanh().numpy(), np.tanh(x_np), **TOL[dtype])
    np.testing.assert_array_equal(x.relu().numpy(), np.maximum(x_np, 0))


# ---- matmul -------------------------------------------------------------------------------
@dtypes
@PROPERTY
@given(data=st.data(), m=st.integers(1, 9), n=st.integers(1, 9), p=st.integers(1, 9))
def test_matmul_2d(device, dtype, data, m, n, p):
    a_np, a = drawn(data, (m, n), device, dtype)
    b_np, b = drawn(data, (n, p), device, dtype)
    assert_matches(a @ b, a_np @ b_np, dtype, SUM_TOL)


@dtypes
@PROPERTY
@given(
    data=st.data(),
    batch=st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple),
    m=st.integers(1, 5),
    n=st.integers(1, 5),
    p=st.integers(1, 5),
)
def test_matmul_batched_broadcasts_leading_dims(device, dtype, data, batch, m, n, p):
    batch_a = data.draw(broadcastable_to(batch), label="batch a")
    batch_b = data.draw(broadcastable_to(batch), label="batch b")
    a_np, a = drawn(data, batch_a + (m, n), device, dtype)
    b_np, b = drawn(data, batch_b + (n, p), device, dtype)
    assert_matches(a @ b, np.matmul(a_np, b_np), dtype, SUM_TOL)


@dtypes
@pytest.mark.parametrize(
    "m,n,p", [(1, 1, 1), (8, 8, 8), (33, 65, 17), (64, 64, 64), (130, 70, 50), (5, 200, 3)]
)
def test_matmul_larger_sizes(device, dtype, m, n, p):
    a_np = rand(1, (m, n), dtype)
    b_np = rand(2, (n, p), dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else TOL[dtype]
    np.testing.assert_allclose(
        (to_nd(a_np, device, dtype) @ to_nd(b_np, device, dtype)).numpy(), a_np @ b_np, **tol
    )


def test_matmul_empty_operands(device):
    a = to_nd(np.ones((3, 0)), device, "float32")
    b = to_nd(np.ones((0, 4)), device, "float32")
    np.testing.assert_array_equal((a @ b).numpy(), np.zeros((3, 4)))
    assert (b @ to_nd(np.ones((4, 2)), device, "float32")).shape == (0, 2)
    batched = to_nd(np.ones((2, 3, 0)), device, "float32") @ to_nd(
        np.ones((0, 4)), device, "float32"
    )
    np.testing.assert_array_equal(batched.numpy(), np.zeros((2, 3, 4)))


# ---- stack and split ----------------------------------------------------------------------
@dtypes
@PROPERTY
@given(data=st.data(), shape=shapes, count=st.integers(1, 4))
def test_stack(device, dtype, data, shape, count):
    arrays_np, arrays = zip(*(drawn(data, shape, device, dtype) for _ in range(count)))
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)), label="axis")
    assert_matches(nd.stack(arrays, axis=axis), np.stack(arrays_np, axis=axis), dtype)


@dtypes
@PROPERTY
@given(data=st.data(), shape=nonempty_shapes)
def test_split_is_inverse_of_stack(device, dtype, data, shape):
    x_np, x = drawn(data, shape, device, dtype)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    parts = nd.split(x, axis=axis)
    assert len(parts) == shape[axis]
    for i, part in enumerate(parts):
        assert_matches(part, np.take(x_np, i, axis=axis), dtype)
    assert_matches(nd.stack(parts, axis=axis), x_np, dtype)


# ---- devices, constructors, dtypes ------------------------------------------------------------
@needs_cpu
@dtypes
@PROPERTY
@given(data=st.data(), shape=shapes)
def test_to_device_round_trip(dtype, data, shape):
    x_np, x = drawn(data, shape, ndl.cpu_numpy(), dtype)
    on_cpu = x.to(ndl.cpu())
    assert on_cpu.device == ndl.cpu() and on_cpu.dtype == dtype
    np.testing.assert_array_equal(on_cpu.numpy(), x_np)
    back = on_cpu.to(ndl.cpu_numpy())
    assert back.device == ndl.cpu_numpy() and back.dtype == dtype
    np.testing.assert_array_equal(back.numpy(), x_np)
    assert on_cpu.to(ndl.cpu()) is on_cpu  # already there: no copy
    moved = nd.NDArray(on_cpu, device=ndl.cpu_numpy())
    assert moved.device == ndl.cpu_numpy()
    np.testing.assert_array_equal(moved.numpy(), x_np)


def test_to_same_device_is_identity(device):
    x = to_nd(np.ones(3), device, "float32")
    assert x.to(device) is x


def test_numpy_returns_an_independent_copy(device):
    x = to_nd(np.arange(6.0).reshape(2, 3), device, "float32")
    out = x.numpy()
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    out[...] = 100.0
    np.testing.assert_array_equal(x.numpy(), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(np.asarray(x), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x[:, 1].numpy(), [[1.0], [4.0]])


def test_default_dtype_is_float32_even_for_float64_input(device):
    x64 = np.arange(4, dtype=np.float64) / 3
    x = nd.array(x64, device=device)
    assert x.dtype == "float32" and x.numpy().dtype == np.float32
    np.testing.assert_array_equal(x.numpy(), x64.astype(np.float32))
    assert nd.array([[1, 2], [3, 4]], device=device).dtype == "float32"
    assert nd.array(np.arange(3), device=device).dtype == "float32"


@pytest.mark.parametrize("spelling", ["float64", np.float64, np.dtype("float64")])
def test_float64_is_kept(device, spelling):
    x64 = np.arange(4, dtype=np.float64) / 3
    x = nd.array(x64, dtype=spelling, device=device)
    assert x.dtype == "float64"
    np.testing.assert_array_equal(x.numpy(), x64)  # exactly: no float32 round trip
    assert (x + 1).dtype == "float64" and (x * x).dtype == "float64"
    assert x.sum().dtype == "float64" and x.reshape(2, 2).compact().dtype == "float64"
    assert (x.reshape(2, 2) @ x.reshape(2, 2)).dtype == "float64"


def test_mixed_floats_promote_to_float64(device):
    a = nd.array(np.full((2, 2), 1 / 3), dtype="float32", device=device)
    b = nd.array(np.full((2, 2), 1 / 3), dtype="float64", device=device)
    expected = np.float32(1 / 3).astype(np.float64) + np.float64(1 / 3)
    for result in (a + b, b + a, a * b, a - b, a / b, a.maximum(b)):
        assert result.dtype == "float64"
    assert_bools(a == b, np.full((2, 2), 1 / 3, "float32") == np.full((2, 2), 1 / 3))
    np.testing.assert_array_equal((a + b).numpy(), np.full((2, 2), expected))
    assert (a @ b).dtype == "float64" and (b @ a).dtype == "float64"
    assert (a + b[0]).dtype == "float64"  # with broadcasting too
    assert a.astype("float64").dtype == "float64"
    assert b.astype("float32").dtype == "float32"
    assert nd.NDArray(a, dtype="float64").dtype == "float64"


PROMOTIONS = [  # PyTorch's rule: the higher category wins; within one, the wider type
    ("float32", "float64", "float64"),
    ("int32", "float32", "float32"),
    ("int64", "float32", "float32"),
    ("int64", "float64", "float64"),
    ("uint8", "int32", "int32"),
    ("int32", "int64", "int64"),
    ("uint8", "int64", "int64"),
    ("bool", "int32", "int32"),
    ("bool", "uint8", "uint8"),
    ("bool", "float32", "float32"),
    ("uint8", "float64", "float64"),
]


@pytest.mark.parametrize("a_dtype,b_dtype,torch_result", PROMOTIONS, ids=str)
def test_mixed_dtypes_promote_as_dtypes_result_type(device, a_dtype, b_dtype, torch_result):
    from needle.backend_ndarray import dtypes as promo

    expected_dtype = promo.result_type(a_dtype, b_dtype)
    if promo.promotion() == "torch":
        assert expected_dtype == torch_result
    rng = np.random.default_rng(0)
    a_np = rng.integers(0, 2 if a_dtype == "bool" else 5, size=(2, 3)).astype(a_dtype)
    b_np = rng.integers(1 if b_dtype != "bool" else 0, 2 if b_dtype == "bool" else 5, (3,))
    b_np = b_np.astype(b_dtype)
    a, b = to_nd(a_np, device, a_dtype), to_nd(b_np, device, b_dtype)
    assert a.dtype == a_dtype and b.dtype == b_dtype
    ref_a, ref_b = a_np.astype(expected_dtype), b_np.astype(expected_dtype)
    for got, expected in (
        (a + b, ref_a + ref_b),
        (b + a, ref_b + ref_a),
        (a * b, ref_a * ref_b),
        (a.maximum(b), np.maximum(ref_a, ref_b)),
    ):
        assert got.dtype == expected_dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got.numpy(), expected)
    if expected_dtype != "bool":
        got = a - b
        assert got.dtype == expected_dtype
        np.testing.assert_array_equal(got.numpy(), ref_a - ref_b)
    assert_bools(a == b, a_np == b_np)
    assert_bools(a < b, a_np < b_np)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_integer_and_bool_dtypes_round_trip_exactly(device, dtype):
    x_np = (np.arange(12).reshape(3, 4) % (2 if dtype == "bool" else 200)).astype(dtype)
    x = to_nd(x_np, device, dtype)
    assert x.dtype == dtype and x.numpy().dtype == np.dtype(dtype)
    np.testing.assert_array_equal(x.numpy(), x_np)
    np.testing.assert_array_equal(x.permute((1, 0)).compact().numpy(), x_np.T)
    np.testing.assert_array_equal(x[1:, ::-2].numpy(), x_np[1:, ::-2])
    # Sums of integers and bools are int64, as in PyTorch.
    s = x.sum(axis=0)
    assert s.dtype == "int64"
    np.testing.assert_array_equal(s.numpy(), x_np.sum(axis=0, dtype=np.int64))
    assert x.sum().shape == () and int(x.sum().numpy()) == int(x_np.sum(dtype=np.int64))
    assert nd.empty((2,), dtype=dtype, device=device).dtype == dtype
    np.testing.assert_array_equal(
        nd.full((2, 2), 1, dtype=dtype, device=device).numpy(), np.ones((2, 2), dtype)
    )


def test_array_from_ndarray_copies(device):
    x = to_nd(np.arange(4.0), device, "float32")
    y = nd.array(x)
    assert y.device == device and y.dtype == "float32"
    x[0] = 9.0
    np.testing.assert_array_equal(y.numpy(), np.arange(4.0))


@dtypes
def test_constructors(device, dtype):
    e = nd.empty((2, 3), dtype=dtype, device=device)
    assert e.shape == (2, 3) and e.dtype == dtype and e.device == device and e.is_compact()
    f = nd.full((3, 1, 2), 2.5, dtype=dtype, device=device)
    assert f.dtype == dtype and f.device == device
    np.testing.assert_array_equal(f.numpy(), np.full((3, 1, 2), 2.5, dtype=dtype))
    assert nd.empty(4, device=device).shape == (4,)
    assert nd.empty((2,), device=device).dtype == "float32"
    np.testing.assert_array_equal(device.zeros(2, 3, dtype=dtype).numpy(), np.zeros((2, 3)))
    np.testing.assert_array_equal(device.ones((2, 3), dtype=dtype).numpy(), np.ones((2, 3)))
    assert device.randn(4, 5, dtype=dtype).shape == (4, 5)
    r = device.rand(100, dtype=dtype).numpy()
    assert r.dtype == np.dtype(dtype) and (r >= 0).all() and (r < 1).all()
    hot = device.one_hot(3, [2, 0], dtype=dtype)
    assert hot.dtype == dtype
    np.testing.assert_array_equal(hot.numpy(), [[0, 0, 1], [1, 0, 0]])
    assert device.randn(3, dtype=dtype).dtype == dtype
    f.fill(-1.0)
    np.testing.assert_array_equal(f.numpy(), np.full((3, 1, 2), -1.0))


def test_size_zero_arrays(device):
    x = to_nd(np.zeros((2, 0, 3)), device, "float32")
    assert x.size == 0 and x.shape == (2, 0, 3)
    assert x.numpy().shape == (2, 0, 3)
    assert (x + x).shape == (2, 0, 3) and (x * 2).shape == (2, 0, 3) and x.exp().shape == (2, 0, 3)
    assert x.permute((2, 1, 0)).shape == (3, 0, 2)
    assert x.compact().shape == (2, 0, 3)
    assert x.reshape(0, 6).shape == (0, 6)
    assert x.broadcast_to((4, 2, 0, 3)).shape == (4, 2, 0, 3)
    assert x.sum(axis=0).shape == (0, 3)
    np.testing.assert_array_equal(x.sum(axis=1).numpy(), np.zeros((2, 3)))
    np.testing.assert_array_equal(x.sum().numpy(), np.zeros(()))
    assert x.max(axis=0).shape == (0, 3)
    x[...] = 1.0  # writing nothing is fine
    x[:, :, 1] = to_nd(np.zeros((2, 0)), device, "float32")
    y = to_nd(np.arange(6.0).reshape(2, 3), device, "float32")
    assert y[1:1].shape == (0, 3) and y[:, 3:].numpy().shape == (2, 0)
    assert nd.stack([x, x], axis=1).shape == (2, 2, 0, 3)
    assert len(nd.split(x, axis=1)) == 0
    assert x.flip((0, 1)).shape == (2, 0, 3) and x.pad(((1, 1), (0, 0), (0, 0))).shape == (4, 0, 3)


def test_zero_dim_arrays(device):
    x = nd.array(np.float64(2.5), device=device)
    assert x.shape == () and x.ndim == 0 and x.size == 1
    out = x.numpy()
    assert out.shape == () and out == 2.5
    assert nd.array(np.array(3.0), device=device).shape == ()
    assert (x + 1).shape == () and float((x * x).numpy()) == 6.25
    assert float((2 - x).numpy()) == -0.5
    np.testing.assert_array_equal(
        (x + to_nd(np.arange(3.0), device, "float32")).numpy(), [2.5, 3.5, 4.5]
    )
    assert x.sum().shape == () and x.max().shape == ()
    assert x.sum(keepdims=True).shape == ()
    np.testing.assert_array_equal(x.broadcast_to((2, 3)).numpy(), np.full((2, 3), 2.5))
    assert x.reshape(1, 1).shape == (1, 1) and x.reshape(()).shape == ()
    assert x.permute(()).shape == ()
    assert x[()].shape == () and x[...].shape == ()
    x[()] = 4.0
    assert float(x.numpy()) == 4.0
    x[...] = nd.array(np.array(5.0), device=device)
    assert float(x.numpy()) == 5.0
    v = to_nd(np.arange(3.0), device, "float32")
    assert v[1].shape == (1,)  # the course's indexing keeps the axis
    np.testing.assert_array_equal(v[-1].numpy(), [2.0])
    assert v._index_view(1).shape == ()  # NumPy's drops it
    assert float(v._index_view(-1).numpy()) == 2.0
    assert nd.stack([x, x]).shape == (2,)
    with pytest.raises(TypeError, match="0-d"):
        len(x)


# ---- errors -----------------------------------------------------------------------------------
def test_binary_shape_mismatch(device):
    a = to_nd(np.ones((2, 3)), device, "float32")
    b = to_nd(np.ones((4,)), device, "float32")
    for fn in (lambda: a + b, lambda: a * b, lambda: a - b, lambda: a == b, lambda: a.maximum(b)):
        with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
            fn()


def test_matmul_shape_mismatch(device):
    a = to_nd(np.ones((2, 3)), device, "float32")
    b = to_nd(np.ones((4, 5)), device, "float32")
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        a @ b
    with pytest.raises(ValueError, match=r"\(3,\)"):
        to_nd(np.ones(3), device, "float32") @ b
    with pytest.raises(ValueError, match=r"\(2, 2, 3\).*\(3, 3, 1\)"):
        to_nd(np.ones((2, 2, 3)), device, "float32") @ to_nd(np.ones((3, 3, 1)), device, "float32")


def test_bad_axis(device):
    a = to_nd(np.ones((2, 3)), device, "float32")
    for fn in (lambda: a.sum(axis=2), lambda: a.max(axis=-3), lambda: a.sum(axis=(0, 5))):
        with pytest.raises(ValueError, match="axis"):
            fn()
    with pytest.raises(ValueError, match="repeated axis"):
        a.sum(axis=(0, -2))
    with pytest.raises(ValueError, match="axis 2"):
        a.permute((0, 2))
    with pytest.raises(ValueError, match="not a permutation"):
        a.permute((0, 0))
    with pytest.raises(ValueError, match="not a permutation"):
        a.permute((0,))
    with pytest.raises(ValueError, match="axis"):
        a.flip(3)


def test_bad_index(device):
    a = to_nd(np.ones((2, 3)), device, "float32")
    with pytest.raises(IndexError, match="index 2 is out of bounds for axis 0 with size 2"):
        a[2]
    with pytest.raises(IndexError, match="index -4 is out of bounds for axis 1 with size 3"):
        a[0, -4]
    with pytest.raises(IndexError, match="too many indices"):
        a[0, 0, 0]
    with pytest.raises(IndexError, match="too many indices"):
        a[0, ..., 0, 0]
    with pytest.raises(IndexError, match="single ellipsis"):
        a[..., ...]
    with pytest.raises(IndexError, match="out of bounds"):
        a[5] = 1.0
    with pytest.raises(IndexError, match="too many indices"):
        a[0, 0, 0] = 1.0
    with pytest.raises(IndexError, match="ints, slices"):
        a[[0, 1]]


@needs_cpu
def test_device_mismatch():
    a = nd.array(np.ones((2, 2)), device=ndl.cpu_numpy())
    b = nd.array(np.ones((2, 2)), device=ndl.cpu())
    for fn in (lambda: a + b, lambda: b * a, lambda: a @ b, lambda: nd.stack([a, b])):
        with pytest.raises(ValueError, match=r"cpu_numpy\(\).*cpu\(\)|cpu\(\).*cpu_numpy\(\)"):
            fn()

    def assign():
        a[0] = b[0]

    with pytest.raises(ValueError, match=r"cpu_numpy\(\).*cpu\(\)"):
        assign()


def test_reshape_incompatible(device):
    a = to_nd(np.ones((2, 3)), device, "float32")
    with pytest.raises(ValueError, match=r"cannot reshape array of shape \(2, 3\) into \(4, 2\)"):
        a.reshape(4, 2)
    with pytest.raises(ValueError, match=r"into \(-1, 4\)"):
        a.reshape(-1, 4)
    with pytest.raises(ValueError, match="only one dimension can be -1"):
        a.reshape(-1, -1)
    with pytest.raises(ValueError, match="cannot reshape"):
        a.permute((1, 0)).reshape(5)


def test_broadcast_impossible(device):
    a = to_nd(np.ones((2, 3)), device, "float32")
    for shape in [(3, 3), (3,), (2, 1), (4, 2, 6)]:
        with pytest.raises(ValueError, match=r"cannot broadcast shape \(2, 3\) to"):
            a.broadcast_to(shape)
    with pytest.raises(ValueError, match="cannot broadcast"):
        nd.broadcast_to(a, (1, 3))


@pytest.mark.parametrize("bad", ["int8", "uint16", np.int16, "complex64"])
def test_unsupported_dtype(device, bad):
    with pytest.raises(TypeError, match="unsupported dtype"):
        nd.array(np.ones(3), dtype=bad, device=device)
    with pytest.raises(TypeError, match="unsupported dtype"):
        nd.empty((2,), dtype=bad, device=device)
    with pytest.raises(TypeError, match="unsupported dtype"):
        nd.full((2,), 1.0, dtype=bad, device=device)
    with pytest.raises(TypeError, match="unsupported dtype"):
        to_nd(np.ones(3), device, "float32").astype(bad)


def test_setitem_non_broadcastable(device):
    a = to_nd(np.zeros((4, 3)), device, "float32")
    with pytest.raises(
        ValueError,
        match=r"cannot assign an array of shape \(2,\) to a selection "
        r"of shape \(4, 3\)",
    ):
        a[...] = to_nd(np.ones(2), device, "float32")
    with pytest.raises(ValueError, match=r"shape \(3, 3\).*\(2, 3\)"):
        a[::2] = to_nd(np.ones((3, 3)), device, "float32")
    with pytest.raises(ValueError, match=r"shape \(2, 2, 3\)"):
        a[1:3] = to_nd(np.ones((2, 2, 3)), device, "float32")
    with pytest.raises(ValueError, match=r"shape \(2, 3\) to a selection of shape \(2,\)"):
        a[1, 1:] = to_nd(np.ones((2, 3)), device, "float32")
    np.testing.assert_array_equal(a.numpy(), np.zeros((4, 3)))  # nothing was written


def test_setitem_accepts_same_size_or_either_broadcast(device):
    a_np = np.zeros((4, 3), dtype="float32")
    a = to_nd(a_np, device, "float32")
    # The course's rule: a value of the selection's size, in any shape (row-major order).
    a[1:3] = to_nd(np.arange(6.0).reshape(2, 1, 3), device, "float32")
    a_np[1:3] = np.arange(6.0).reshape(2, 3)
    a[::2] = to_nd(np.arange(10.0, 16.0).reshape(3, 2), device, "float32")
    a_np[::2] = np.arange(10.0, 16.0).reshape(2, 3)
    np.testing.assert_array_equal(a.numpy(), a_np)
    # Broadcast to NumPy's selection (int axes dropped) or to the kept-axes one.
    a[1, :] = to_nd(np.array([7.0]), device, "float32")
    a_np[1, :] = 7.0
    a[:, 2] = to_nd(np.array([[-1.0], [-2.0], [-3.0], [-4.0]]), device, "float32")  # (4, 1)
    a_np[:, 2] = [-1.0, -2.0, -3.0, -4.0]
    a[2] = to_nd(np.array([[5.0, 6.0, 8.0]]), device, "float32")  # (1, 3), kept shape
    a_np[2] = [5.0, 6.0, 8.0]
    a[3, 1] = to_nd(np.array([[9.0]]), device, "float32")
    a_np[3, 1] = 9.0
    np.testing.assert_array_equal(a.numpy(), a_np)
    # (2, 1, 1) broadcasts to the kept selection (2, 1, 4) only, not to NumPy's (2, 4).
    b_np = np.zeros((2, 3, 4), dtype="float32")
    b = to_nd(b_np, device, "float32")
    b[:, 1, :] = to_nd(np.array([[[1.0]], [[2.0]]]), device, "float32")
    b_np[:, 1:2, :] = np.array([[[1.0]], [[2.0]]])
    np.testing.assert_array_equal(b.numpy(), b_np)


def test_as_strided_out_of_bounds(device):
    a = to_nd(np.arange(6.0), device, "float32")
    with pytest.raises(IndexError, match="outside a buffer of 6 elements"):
        a.as_strided((3, 3), (2, 1))
    with pytest.raises(IndexError, match="outside"):
        a[2:].as_strided((2,), (-3,))
    with pytest.raises(IndexError, match="outside"):
        a[5:].as_strided((2,), (1,))
    with pytest.raises(ValueError, match="differ in length"):
        a.as_strided((3,), (1, 1))


def test_cuda_not_available_here():
    cuda = ndl.cuda()
    if cuda.enabled():
        pytest.skip("a CUDA backend is available in this build")
    assert cuda.enabled() is False
    assert repr(cuda) == "cuda()"
    uses = [
        lambda: nd.array(np.ones(3), device=cuda),
        lambda: nd.empty((2,), device=cuda),
        lambda: nd.full((2,), 1.0, device=cuda),
        lambda: cuda.randn(2, 2),
        lambda: cuda.zeros(2),
        lambda: to_nd(np.ones(3), ndl.cpu_numpy(), "float32").to(cuda),
        lambda: cuda.matmul,
        lambda: ndl.Tensor(np.ones(3), device=cuda),
    ]
    for use in uses:
        with pytest.raises(RuntimeError, match=r"cuda\(\) is not available"):
            use()


# ---- axpby: the optimizers' fused update -------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_axpby(device, dtype):
    rng = np.random.default_rng(0)
    x_np, y_np = rng.standard_normal((3, 40)), rng.standard_normal((3, 40))
    expected = 0.5 * x_np.astype(dtype) - 0.25 * y_np.astype(dtype)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == "float32" else dict(rtol=1e-13, atol=1e-14)
    x, y = nd.array(x_np, dtype=dtype, device=device), nd.array(y_np, dtype=dtype, device=device)
    out = nd.axpby(0.5, x, -0.25, y)
    assert out.shape == (3, 40) and out.dtype == dtype and out.device == device
    np.testing.assert_allclose(out.numpy(), expected, **tol)
    np.testing.assert_array_equal(x.numpy(), x_np.astype(dtype))  # inputs untouched
    # Views are read through their strides.
    xt = nd.array(x_np.T.copy(), dtype=dtype, device=device).permute((1, 0))
    np.testing.assert_allclose(nd.axpby(0.5, xt, -0.25, y).numpy(), expected, **tol)
    # In place, into either operand: the same buffer, the new values.
    for into in ("x", "y"):
        x = nd.array(x_np, dtype=dtype, device=device)
        y = nd.array(y_np, dtype=dtype, device=device)
        target = x if into == "x" else y
        assert nd.axpby(0.5, x, -0.25, y, out=target) is target
        np.testing.assert_allclose(target.numpy(), expected, **tol)


def test_axpby_rejects_bad_operands(device):
    x = nd.array(np.ones((2, 3)), device=device)
    with pytest.raises(ValueError, match=r"shapes \(2, 3\) and \(3, 2\)"):
        nd.axpby(1.0, x, 1.0, nd.array(np.ones((3, 2)), device=device))
    # float32 with another float (float64; int32 where a device holds no float64) is refused.
    other = "float64" if "float64" in device.dtypes else "int32"
    with pytest.raises(TypeError, match=f"float32 and {other}"):
        nd.axpby(1.0, x, 1.0, nd.array(np.ones((2, 3)), dtype=other, device=device))
    with pytest.raises(TypeError, match="NDArrays"):
        nd.axpby(1.0, x, 1.0, np.ones((2, 3)))
    with pytest.raises(ValueError, match="out must be compact"):
        nd.axpby(1.0, x, 1.0, x, out=nd.array(np.ones((3, 2)), device=device).permute((1, 0)))
    with pytest.raises(ValueError, match=r"out is \(3,\) float32"):
        nd.axpby(1.0, x, 1.0, x, out=nd.array(np.ones(3), device=device))
    other = nd.cpu_numpy() if device != nd.cpu_numpy() else nd.cpu()
    if other.enabled():
        with pytest.raises(ValueError, match="different devices"):
            nd.axpby(1.0, x, 1.0, nd.array(np.ones((2, 3)), device=other))


# ---- rows by index: embedding lookups and their adjoint ---------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_take_rows_and_add_rows(device, dtype):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((6, 2, 3))
    idx = np.array([5, 0, 5, 2, 5])
    got = nd.take_rows(nd.array(table, dtype=dtype, device=device), idx)
    assert got.shape == (5, 2, 3) and got.dtype == dtype
    np.testing.assert_array_equal(got.numpy(), table.astype(dtype)[idx])
    # A view as the table (read through its strides), and indices checked once and reused.
    rows = nd.RowIndices(idx, 6, device)
    assert rows.array.dtype == "int64" and rows.host.dtype == np.int64
    view = nd.array(table[::-1].copy(), dtype=dtype, device=device).flip((0,))
    np.testing.assert_array_equal(nd.take_rows(view, rows).numpy(), table.astype(dtype)[idx])
    values = rng.standard_normal((5, 2, 3))
    summed = nd.add_rows(nd.array(values, dtype=dtype, device=device), rows, 6)
    expected = np.zeros((6, 2, 3), dtype)
    np.add.at(expected, idx, values.astype(dtype))
    np.testing.assert_allclose(summed.numpy(), expected, rtol=1e-6)
    onto = nd.array(np.ones((6, 2, 3)), dtype=dtype, device=device)  # adds onto what is there
    assert nd.add_rows(nd.array(values, dtype=dtype, device=device), rows, 6, out=onto) is onto
    np.testing.assert_allclose(onto.numpy(), expected + 1, rtol=1e-6)
    assert nd.take_rows(nd.array(table, device=device), []).shape == (0, 2, 3)


def test_row_indices_errors(device):
    table = nd.array(np.ones((4, 2)), device=device)
    with pytest.raises(ValueError, match="indices are for 5 rows, the table has 4"):
        nd.take_rows(table, nd.RowIndices([1], 5, device))
    with pytest.raises(ValueError, match="whole numbers"):
        nd.RowIndices([0.5], 2, device)
    with pytest.raises(TypeError, match="integers"):
        nd.RowIndices(np.array(["a"]), 2, device)
    # int64 indices are exact past float32's 2**24 (no dtype argument any more).
    big = nd.RowIndices([2**24 + 1, 3], 2**24 + 2, device)
    np.testing.assert_array_equal(big.array.numpy(), np.array([2**24 + 1, 3], dtype=np.int64))
    assert big.array.numpy().dtype == np.int64
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        nd.add_rows(table, [0, 4], 4)
    with pytest.raises(
        ValueError,
        match=r"compact \(4, 2\) float32 array, got \(4, 2\) "
        r"float32 \(a view\)",
    ):
        nd.add_rows(
            table[:2], [0, 1], 4, out=nd.array(np.ones((2, 4)), device=device).permute((1, 0))
        )


# ---- devices that need hardware are resolved on first use -------------------------------
def test_lazy_device_resolves_once_on_first_use():
    calls = []
    dev = nd.BackendDevice("lazy_cpu", resolve=lambda: calls.append(1) or nd.cpu_numpy().mod)
    assert calls == []
    assert dev.enabled() and calls == [1]
    x = nd.array(np.arange(3.0), device=dev)
    np.testing.assert_array_equal((x + 1).numpy(), [1.0, 2.0, 3.0])
    assert calls == [1]
    missing = nd.BackendDevice("lazy_missing", resolve=lambda: None)
    assert not missing.enabled()
    with pytest.raises(RuntimeError, match="lazy_missing"):
        nd.array(np.ones(2), device=missing)


# ---- backends with the core table only ----------------------------------------------------
FUSED = ("ewise_axpby", "gather_rows", "scatter_add_rows")


@pytest.fixture
def core_only():
    """A device whose backend has the core primitive table only (the NumPy reference without
    the fused primitives), as a third-party backend might: NDArray must fall back."""
    import types

    table = {
        n: getattr(nd.ndarray_backend_numpy, n)
        for n in dir(nd.ndarray_backend_numpy)
        if not n.startswith("_") and n not in FUSED
    }
    table["__device_name__"] = "core_only"
    return nd.BackendDevice("core_only", types.SimpleNamespace(**table))


def test_fused_primitives_fall_back_to_the_core_table(core_only):
    rng = np.random.default_rng(0)
    assert not any(hasattr(core_only.mod, n) for n in FUSED)
    x_np, y_np = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    x, y = nd.array(x_np, device=core_only), nd.array(y_np, device=core_only)
    expected = (0.5 * x_np - 2.0 * y_np).astype("float32")
    np.testing.assert_allclose(nd.axpby(0.5, x, -2.0, y).numpy(), expected, rtol=1e-6)
    assert nd.axpby(0.5, x, -2.0, y, out=x) is x
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6)

    table = rng.standard_normal((5, 2, 3))
    idx = np.array([4, 0, 4, 2])
    got = nd.take_rows(nd.array(table, device=core_only), idx)
    np.testing.assert_array_equal(got.numpy(), table.astype("float32")[idx])
    values = rng.standard_normal((4, 2, 3))
    summed = nd.add_rows(nd.array(values, device=core_only), idx, 5)
    reference = nd.add_rows(nd.array(values, device=nd.cpu_numpy()), idx, 5)
    np.testing.assert_array_equal(summed.numpy(), reference.numpy())


def test_training_step_on_a_core_only_backend(core_only):
    """An optimizer step (axpby), an embedding (rows by index) and the cross-entropy (label
    gathers) on the fallback paths give the reference backend's values."""
    results = []
    for device in (core_only, nd.cpu_numpy()):
        np.random.seed(0)
        emb = ndl.nn.Embedding(7, 4, device=device)
        lin = ndl.nn.Linear(4, 3, device=device)
        opt = ndl.optim.SGD(emb.parameters() + lin.parameters(), lr=0.5, momentum=0.9)
        for _ in range(2):
            opt.reset_grad()
            logits = lin(emb(ndl.Tensor(np.array([[1, 6], [1, 3]]), device=device)).reshape((4, 4)))
            ndl.nn.SoftmaxLoss()(
                logits, ndl.Tensor(np.array([0, 2, 1, 2]), device=device)
            ).backward()
            opt.step()
        results.append([p.numpy() for p in emb.parameters() + lin.parameters()])
    for got, expected in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "shapes",
    [
        ((4, 5), (5,)),
        ((4, 5), (4, 1)),
        ((5,), (4, 5)),
        ((4, 1), (4, 5)),
        ((2, 3, 4), (3, 4)),
        ((2, 3, 4), (2, 3, 1)),
        ((4, 1, 5), (1, 1, 5)),
        ((4, 5), (1, 4, 5)),
        ((2, 3, 4), (1, 3, 1)),
        ((3, 1), (1, 4)),
    ],
    ids=str,
)
def test_binary_ops_against_a_repeated_vector(device, shapes):
    """Broadcasting binary ops (on cpu, a repeated row or column vector goes to the
    backend's ewise_broadcast_binary without being copied out; other patterns compact it)."""
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal(shapes[0]).astype("float32")
    b_np = (rng.standard_normal(shapes[1]) + 3).astype("float32")
    a, b = nd.array(a_np, device=device), nd.array(b_np, device=device)
    for got, expected in [
        (a + b, a_np + b_np),
        (a - b, a_np - b_np),
        (b - a, b_np - a_np),
        (a * b, a_np * b_np),
        (a / b, a_np / b_np),
        (b / a, b_np / a_np),
        (a.maximum(b), np.maximum(a_np, b_np)),
        (a >= b, a_np >= b_np),
    ]:
        assert got.shape == expected.shape and got.numpy().dtype == expected.dtype
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    # A view as the full operand is read through its strides.
    t = nd.array(a_np.T.copy(), device=device).permute(tuple(reversed(range(a_np.ndim))))
    np.testing.assert_allclose((t - b).numpy(), a_np - b_np, rtol=1e-6)


# ---- issue 13: NaN comparisons, ** 0.5, empty selections, checked views -------------------
@dtypes
@pytest.mark.parametrize("op", COMPARISONS)
def test_comparisons_with_nan_follow_numpy(device, dtype, op):
    # NaN compares false but for !=, so a < b is not 1 - (a >= b).
    a_np = np.array([np.nan, 1.0, np.nan, -np.inf, 2.0], dtype=dtype)
    b_np = np.array([1.0, np.nan, np.nan, np.nan, 2.0], dtype=dtype)
    a, b = to_nd(a_np, device, dtype), to_nd(b_np, device, dtype)
    fn = COMPARISONS[op]
    assert_bools(fn(a, b), fn(a_np, b_np))
    for scalar in (np.nan, 1.0):
        assert_bools(fn(a, scalar), fn(a_np, scalar))
    # A broadcast vector (ewise_broadcast_binary where the backend has it), on either side.
    full_np = np.tile(a_np, (3, 1))
    full = to_nd(full_np, device, dtype)
    assert_bools(fn(full, b), fn(full_np, b_np))
    assert_bools(fn(b, full), fn(b_np, full_np))


@dtypes
def test_square_root_power_follows_numpy(device, dtype):
    # ** 0.5 is sqrt, as in NumPy and PyTorch: -inf ** 0.5 is NaN (pow gives +inf).
    x_np = np.array([-np.inf, np.inf, -1.0, -0.0, 0.0, 4.0, np.nan], dtype=dtype)
    with np.errstate(invalid="ignore"):  # NaNs are the point (cpu_numpy computes with NumPy)
        got = (to_nd(x_np, device, dtype) ** 0.5).numpy()
        np.testing.assert_array_equal(got, np.sqrt(x_np))
    assert np.isnan(got[0])


def test_setitem_into_an_empty_selection_checks_the_value(device):
    a = to_nd(np.arange(3.0), device, "float32")
    with pytest.raises(ValueError, match="shape"):
        a[4:] = to_nd(np.ones(2), device, "float32")
    a[4:] = to_nd(np.ones(1), device, "float32")  # broadcastable: fine, as in NumPy
    a[4:] = to_nd(np.ones(0), device, "float32")
    a[4:] = 7.0
    with pytest.raises((TypeError, ValueError)):
        a[4:] = "seven"
    other = nd.cpu_numpy() if device != nd.cpu_numpy() else nd.cpu()
    if other.enabled():
        with pytest.raises(ValueError, match="devices"):
            a[4:] = to_nd(np.ones(1), other, "float32")
    np.testing.assert_array_equal(a.numpy(), np.arange(3.0, dtype="float32"))


def test_make_checks_the_view_a_caller_gives(device):
    a = to_nd(np.arange(6.0), device, "float32")
    handle = a._handle
    bad = [
        dict(shape=(7,), handle=handle, device=device),
        dict(shape=(3,), handle=handle, device=device, offset=4),
        dict(shape=(3,), handle=handle, device=device, offset=-1),
        dict(shape=(3,), handle=handle, device=device, strides=(-1,), offset=1),
        dict(shape=(2, 3), handle=handle, device=device, strides=(4, 1)),
        dict(shape=(2,), handle=handle, device=device, strides=(2**62,)),
        dict(shape=(4,), strides=(2,), device=device),
        dict(shape=(2,), offset=1, device=device),
    ]
    for kwargs in bad:
        with pytest.raises(IndexError, match="outside a buffer"):
            nd.NDArray.make(**kwargs)
    with pytest.raises(ValueError, match="differ in length"):
        nd.NDArray.make((2, 3), strides=(1,), handle=handle, device=device)
    view = nd.NDArray.make((2, 3), strides=(1, 2), handle=handle, device=device, offset=0)
    np.testing.assert_array_equal(view.numpy(), np.arange(6.0).reshape(3, 2).T)
    back = nd.NDArray.make((3,), strides=(-2,), handle=handle, device=device, offset=5)
    np.testing.assert_array_equal(back.numpy(), [5.0, 3.0, 1.0])
    assert nd.NDArray.make((0,), handle=handle, device=device, offset=100).size == 0
    fresh = nd.NDArray.make((2, 2), device=device)
    assert fresh.shape == (2, 2) and fresh.is_compact()


def test_max_over_a_zero_size_axis_raises_even_when_the_result_is_empty(device):
    # NumPy: "zero-size array to reduction operation maximum which has no identity" for
    # shape (0, 0, 2) over axis 0 as for (0, 2); found by tests/test_fuzz.py (issue 13).
    x = nd.NDArray(np.zeros((0, 0, 2)), device=device)
    with pytest.raises(ValueError, match="zero-size axis"):
        x.max(axis=0)
    assert x.sum(axis=0).shape == (0, 2)
