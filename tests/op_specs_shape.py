"""The op-spec table's entries for needle.ops.ops_shape (issue 16); see op_specs.py."""

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from op_specs import REAL, TIES, Error, OpSpec, Sample

import needle as ndl
from needle import ops


def _index(shape, high, seed):
    """A fixed int64 index array of `shape` with values in [0, high) (repeats likely)."""
    return np.random.RandomState(seed).randint(0, high, size=shape).astype(np.int64)


def _as_tensor(index):
    return ndl.Tensor(index, dtype="int64", requires_grad=False)


def _t(index):
    return torch.tensor(np.asarray(index), dtype=torch.long)


# ---- random samples --------------------------------------------------------------------------
@st.composite
def cats(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=3))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    lengths = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    shapes = [shape[: dim % len(shape)] + (n,) + shape[dim % len(shape) + 1 :] for n in lengths]
    return Sample(*shapes, dim=dim)


@st.composite
def gathers(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    index_shape = tuple(
        draw(st.integers(1, 5)) if k == dim % len(shape) else draw(st.integers(1, s))
        for k, s in enumerate(shape)
    )
    seed = draw(st.integers(0, 1000))
    return Sample(shape, dim=dim, index=_index(index_shape, shape[dim], seed))


# ---- cat, split into sizes, chunk --------------------------------------------------------------
CAT_SAMPLES = [
    Sample((2, 3), (4, 3), dim=0),
    Sample((2, 3), (2, 1), (2, 2), dim=1),
    Sample((2, 3, 4), (2, 3, 1), dim=-1),
    Sample((2, 3, 4), (2, 1, 4), (2, 2, 4), dim=-2),
    Sample((3,), (2,), dim=0),
    Sample((2, 3), dim=0),
]


def _cat_spec(op, function):
    name = function.__name__
    return OpSpec(
        op,
        function,
        lambda *ts, dim=0: torch.cat(ts, dim=dim),
        CAT_SAMPLES,
        call=lambda *xs, dim=0: function(list(xs), dim),
        forms=[
            lambda *xs, dim=0: op(dim)(ops.make_tuple(*xs)),
            lambda *xs, dim=0: function(tuple(xs), dim=dim),
        ],
        errors=[
            Error(
                [(2, 3), (2, 4)],
                {"dim": 0},
                ValueError,
                rf"^{name}: tensors must match except along dim 0, got \(2, 3\) float32 and "
                r"\(2, 4\) float32",
            ),
            Error(
                [(2, 3), (2, 3)],
                {"dim": 2},
                ValueError,
                rf"^{name}: dim 2 is out of range for 2 dimensions \(inputs: ",
            ),
            Error([(), ()], {}, ValueError, rf"^{name}: zero-dimensional"),
        ],
        random=cats() if name == "cat" else None,
    )


SPLIT_CASES = [
    ((5, 4), 2, 0),
    ((5, 4), [1, 3], 1),
    ((2, 3, 4), [2, 0, 2], -1),
    ((6,), 3, 0),
    ((3, 4), 5, 0),
    ((2, 6, 3), [1, 2, 3], -2),
]

CHUNK_CASES = [((5, 4), 2, 0), ((6, 4), 3, 0), ((5, 4), 3, 1), ((2, 3, 5), 4, -1), ((3,), 5, 0)]

# ---- squeeze, unsqueeze, flatten ---------------------------------------------------------------
SQUEEZE_CASES = [
    ((3, 1, 4), None),
    ((1, 3, 1), 0),
    ((1, 3, 1), -1),
    ((3, 1, 4), 0),
    ((1, 1), (0, 1)),
    ((1, 3, 1, 2), (0, -2)),
    ((1,), None),
    ((), 0),
]
UNSQUEEZE_CASES = [((3, 4), 0), ((3, 4), -1), ((3, 4), 2), ((), 0), ((2, 3, 4), -2), ((5,), -2)]
FLATTEN_CASES = [
    ((2, 3, 4), 0, -1),
    ((2, 3, 4), 1, -1),
    ((2, 3, 4, 5), 1, 2),
    ((2, 3, 4), -2, -1),
    ((2, 3, 4), 1, 1),
    ((3,), 0, -1),
    ((), 0, -1),
]

# ---- expand, repeat, tile ----------------------------------------------------------------------
EXPAND_CASES = [
    ((3, 1), (3, 4)),
    ((1, 4), (2, -1, 4)),
    ((3, 1, 5), (2, 3, 4, -1)),
    ((), (2, 3)),
    ((2, 3), (-1, -1)),
]
REPEAT_CASES = [
    ((2, 3), (2, 1)),
    ((2, 3), (1, 2, 3)),
    ((3,), (2, 2)),
    ((2, 1, 3), (1, 3, 1)),
    ((), (2,)),
    ((2, 3), (1, 1)),
]
TILE_CASES = [((2, 3), (2,)), ((2, 3), (2, 2)), ((3,), (2, 1, 2)), ((2, 1, 3), (3, 1)), ((2,), ())]

# ---- roll, triu, tril --------------------------------------------------------------------------
ROLL_CASES = [
    ((3, 4), 1, 1),
    ((3, 4), -1, 0),
    ((3, 4), (1, 2), (0, 1)),
    ((2, 3, 4), 5, -1),
    ((3, 4), 2, None),
    ((5,), 7, 0),
    ((2, 3, 4), (-1, 1, 3), (0, 0, -2)),
]
TRIANGLE_CASES = [
    ((4, 4), 0),
    ((3, 5), 1),
    ((5, 3), -1),
    ((2, 3, 4), 0),
    ((3, 4), -5),
    ((3, 4), 10),
]


def _triangle_spec(op, function, torch_fn):
    name = function.__name__
    return OpSpec(
        op,
        function,
        lambda t, diagonal=0: torch_fn(t, diagonal),
        [Sample(shape, diagonal=k) for shape, k in TRIANGLE_CASES],
        forms=[
            lambda x, diagonal=0: getattr(x, name)(diagonal),
            lambda x, diagonal=0: op(diagonal)(x),
        ],
        errors=[Error([(4,)], {}, ValueError, rf"^{name}: needs at least 2 dimensions")],
    )


# ---- gather, scatter_add, index_select, index_add --------------------------------------------
GATHER_SAMPLES = [
    Sample((3, 4), dim=1, index=_index((3, 3), 4, 0)),
    Sample((3, 4), dim=0, index=_index((2, 4), 3, 1)),
    Sample((2, 3, 4), dim=1, index=_index((2, 5, 3), 3, 2)),
    Sample((2, 3, 4), dim=-1, index=_index((1, 2, 6), 4, 3)),
    Sample((5,), dim=0, index=np.array([4, 4, 0, 2])),
    Sample((2, 3, 4), dim=-3, index=_index((2, 3, 4), 2, 4)),
]
SCATTER_SAMPLES = [
    Sample((3, 4), (3, 3), dim=1, index=_index((3, 3), 4, 5)),
    Sample((3, 4), (4, 5), dim=1, index=_index((3, 3), 4, 6)),  # src larger than index
    Sample((2, 3, 4), (2, 5, 4), dim=1, index=_index((2, 5, 4), 3, 7)),
    Sample((5,), (3,), dim=0, index=np.array([4, 4, 0])),
    Sample((2, 3, 4), (2, 3, 6), dim=-1, index=_index((2, 3, 6), 4, 8)),
]
INDEX_SAMPLES = [
    Sample((5, 3), dim=0, index=np.array([3, 0, 3, 1])),
    Sample((3, 5), dim=1, index=np.array([4, 4, 0])),
    Sample((2, 3, 4), dim=-1, index=np.array([3, 0])),
    Sample((2, 3, 4), dim=1, index=np.array([2])),
    Sample((5,), dim=0, index=np.array([0, 4, 4])),
]
INDEX_ADD_SAMPLES = [
    Sample((5, 3), (4, 3), dim=0, index=np.array([3, 0, 3, 1])),
    Sample((3, 5), (3, 3), dim=1, index=np.array([4, 4, 0])),
    Sample((2, 3, 4), (2, 3, 2), dim=-1, index=np.array([3, 3])),
    Sample((2, 3, 4), (2, 1, 4), dim=-2, index=np.array([1])),
]


SPECS = [
    _cat_spec(ops.Cat, ops.cat),
    _cat_spec(ops.Concatenate, ops.concatenate),
    OpSpec(  # cat's adjoint: views of out_grad, one per piece
        ops.ops_shape.CatGradient,
        None,
        lambda t, sizes, dim: torch.split(t, sizes, dim),
        [
            Sample((6, 3), sizes=[4, 2], dim=0),
            Sample((2, 5), sizes=[3, 0, 2], dim=1),
            Sample((2, 3, 4), sizes=[1, 3], dim=-1),
            Sample((2, 3, 4), sizes=[4], dim=2),
        ],
        call=lambda g, sizes, dim: ops.ops_shape.CatGradient(sizes, dim)(g),
        errors=[
            Error(
                [(2, 5)],
                {"sizes": [3, 1], "dim": 1},
                ValueError,
                r"^cat_gradient: sizes \[3, 1\] do not add up to 5 along dim 1",
            )
        ],
    ),
    OpSpec(
        ops.SplitSizes,
        ops.split_sizes,
        lambda t, split_size_or_sections, dim=0: torch.split(t, split_size_or_sections, dim),
        [Sample(shape, split_size_or_sections=s, dim=d) for shape, s, d in SPLIT_CASES],
        forms=[
            lambda x, split_size_or_sections, dim=0: x.split(split_size_or_sections, dim),
            lambda x, split_size_or_sections, dim=0: ops.SplitSizes(split_size_or_sections, dim)(x),
        ],
        errors=[
            Error(
                [(3, 4)],
                {"split_size_or_sections": [1, 2], "dim": 1},
                ValueError,
                r"^split_sizes: sizes \[1, 2\] do not add up to 4 along dim 1 \(inputs: \(3, 4\)",
            ),
            Error(
                [(3, 4)],
                {"split_size_or_sections": 0},
                ValueError,
                r"^split_sizes: split size must be positive, got 0",
            ),
            Error(
                [(3, 4)],
                {"split_size_or_sections": 2, "dim": -3},
                ValueError,
                r"^split_sizes: dim -3 is out of range for 2 dimensions",
            ),
        ],
    ),
    OpSpec(
        ops.Chunk,
        ops.chunk,
        lambda t, chunks, dim=0: torch.chunk(t, chunks, dim),
        [Sample(shape, chunks=c, dim=d) for shape, c, d in CHUNK_CASES],
        forms=[
            lambda x, chunks, dim=0: x.chunk(chunks, dim),
            lambda x, chunks, dim=0: ops.Chunk(chunks, dim)(x),
        ],
        errors=[
            Error([(3, 4)], {"chunks": 0}, ValueError, r"^chunk: chunks must be a positive int"),
            Error([(3, 4)], {"chunks": 2, "dim": 2}, ValueError, r"^chunk: dim 2 is out of range"),
        ],
    ),
    OpSpec(
        ops.Squeeze,
        ops.squeeze,
        lambda t, dim=None: t.squeeze() if dim is None else t.squeeze(dim),
        [Sample(shape, dim=d) for shape, d in SQUEEZE_CASES],
        forms=[lambda x, dim=None: x.squeeze(dim), lambda x, dim=None: ops.Squeeze(dim)(x)],
        errors=[
            Error(
                [(3, 1, 4)],
                {"dim": 3},
                ValueError,
                r"^squeeze: dim 3 is out of range for 3 dimensions \(inputs: \(3, 1, 4\)",
            ),
            Error([(3, 1)], {"dim": 0.5}, TypeError, r"^squeeze: dim must be an int, got float"),
        ],
    ),
    OpSpec(
        ops.Unsqueeze,
        ops.unsqueeze,
        lambda t, dim: t.unsqueeze(dim),
        [Sample(shape, dim=d) for shape, d in UNSQUEEZE_CASES],
        forms=[lambda x, dim: x.unsqueeze(dim), lambda x, dim: ops.Unsqueeze(dim)(x)],
        errors=[
            Error(
                [(3, 4)],
                {"dim": 3},
                ValueError,
                r"^unsqueeze: dim 3 is out of range for 3 dimensions",
            ),
            Error([(3, 4)], {"dim": -4}, ValueError, r"^unsqueeze: dim -4 is out of range"),
        ],
    ),
    OpSpec(
        ops.Flatten,
        ops.flatten,
        lambda t, start_dim=0, end_dim=-1: torch.flatten(t, start_dim, end_dim),
        [Sample(shape, start_dim=s, end_dim=e) for shape, s, e in FLATTEN_CASES],
        forms=[
            lambda x, start_dim=0, end_dim=-1: x.flatten(start_dim, end_dim),
            lambda x, start_dim=0, end_dim=-1: ops.Flatten(start_dim, end_dim)(x),
        ],
        errors=[
            Error(
                [(2, 3, 4)],
                {"start_dim": 2, "end_dim": 1},
                ValueError,
                r"^flatten: start_dim 2 comes after end_dim 1 \(inputs: \(2, 3, 4\)",
            ),
            Error(
                [(2, 3)],
                {"start_dim": 0, "end_dim": 2},
                ValueError,
                r"^flatten: dim 2 is out of range for 2 dimensions",
            ),
        ],
    ),
    OpSpec(
        ops.Expand,
        ops.expand,
        lambda t, sizes: t.expand(*sizes),
        [Sample(shape, sizes=s) for shape, s in EXPAND_CASES],
        call=lambda x, sizes: ops.expand(x, *sizes),
        forms=[
            lambda x, sizes: x.expand(sizes),
            lambda x, sizes: x.expand(*sizes),
            lambda x, sizes: ops.Expand(*sizes)(x),
        ],
        errors=[
            Error(
                [(3, 4)],
                {"sizes": (2, 4)},
                ValueError,
                r"^expand: cannot expand shape \(3, 4\) to \(2, 4\) \(inputs: \(3, 4\) float32",
            ),
            Error([(3, 4)], {"sizes": (4,)}, ValueError, r"^expand: needs at least 2 sizes"),
            Error([(3,)], {"sizes": (-1, 3)}, ValueError, r"^expand: -1 is not allowed"),
        ],
    ),
    OpSpec(
        ops.Repeat,
        ops.repeat,
        lambda t, sizes: t.repeat(*sizes),
        [Sample(shape, sizes=s) for shape, s in REPEAT_CASES],
        call=lambda x, sizes: ops.repeat(x, *sizes),
        forms=[lambda x, sizes: x.repeat(sizes), lambda x, sizes: ops.Repeat(*sizes)(x)],
        errors=[
            Error(
                [(2, 3)],
                {"sizes": (2,)},
                ValueError,
                r"^repeat: needs at least one size per dimension \(2\), got 1 \(inputs: ",
            ),
            Error([(2, 3)], {"sizes": (2, -1)}, ValueError, r"^repeat: sizes must be >= 0"),
        ],
    ),
    OpSpec(
        ops.Tile,
        ops.tile,
        lambda t, dims: torch.tile(t, dims),
        [Sample(shape, dims=d) for shape, d in TILE_CASES],
        forms=[lambda x, dims: x.tile(dims), lambda x, dims: ops.Tile(dims)(x)],
        errors=[Error([(2, 3)], {"dims": (2, -1)}, ValueError, r"^tile: sizes must be >= 0")],
    ),
    OpSpec(
        ops.Roll,
        ops.roll,
        lambda t, shifts, dims=None: torch.roll(t, shifts, dims),
        [Sample(shape, shifts=s, dims=d) for shape, s, d in ROLL_CASES],
        forms=[
            lambda x, shifts, dims=None: x.roll(shifts, dims),
            lambda x, shifts, dims=None: ops.Roll(shifts, dims)(x),
        ],
        errors=[
            Error(
                [(3, 4)],
                {"shifts": (1, 2), "dims": 0},
                ValueError,
                r"^roll: shifts \(1, 2\) and dims 0 need one shift per dim",
            ),
            Error([(3, 4)], {"shifts": 1, "dims": 2}, ValueError, r"^roll: dim 2 is out of range"),
        ],
    ),
    _triangle_spec(ops.Triu, ops.triu, torch.triu),
    _triangle_spec(ops.Tril, ops.tril, torch.tril),
    OpSpec(
        ops.Gather,
        ops.gather,
        lambda t, dim, index: torch.gather(t, dim, _t(index)),
        GATHER_SAMPLES,
        forms=[
            lambda x, dim, index: x.gather(dim, index),
            lambda x, dim, index: ops.Gather(dim, index)(x),
            lambda x, dim, index: ops.gather(x, dim, _as_tensor(index)),
        ],
        errors=[
            Error(
                [(3, 4)],
                {"dim": 1, "index": np.array([[0, 4]])},
                IndexError,
                r"^gather: index 0\.\.4 is out of range for dim 1 of size 4",
            ),
            Error(
                [(3, 4)],
                {"dim": 1, "index": np.array([[-1, 0]])},
                IndexError,
                r"^gather: index -1\.\.0 is out of range",
            ),
            Error(
                [(3, 4)],
                {"dim": 1, "index": np.zeros((4, 2), np.int64)},
                ValueError,
                r"^gather: index \(4, 2\) is larger than \(3, 4\) outside dim 1 \(inputs: ",
            ),
            Error(
                [(3, 4)],
                {"dim": 0, "index": np.zeros(3, np.int64)},
                ValueError,
                r"^gather: index \(3,\) needs as many dimensions as the tensor \(3, 4\)",
            ),
            Error(
                [(3, 4)],
                {"dim": 0, "index": np.array([[0.5]])},
                ValueError,
                r"^gather: index must hold whole numbers",
            ),
            Error(
                [(3, 4)],
                {"dim": 2, "index": np.zeros((3, 4), np.int64)},
                ValueError,
                r"^gather: dim 2 is out of range for 2 dimensions",
            ),
        ],
        random=gathers(),
    ),
    OpSpec(
        ops.ScatterAdd,
        ops.scatter_add,
        # torch's backward rejects a src larger than index: the reference takes src's block.
        lambda t, s, dim, index: torch.scatter_add(
            t, dim, _t(index), s[tuple(slice(0, k) for k in index.shape)]
        ),
        SCATTER_SAMPLES,
        call=lambda x, s, dim, index: ops.scatter_add(x, dim, index, s),
        forms=[
            lambda x, s, dim, index: x.scatter_add(dim, index, s),
            lambda x, s, dim, index: ops.ScatterAdd(dim, index)(x, s),
            lambda x, s, dim, index: ops.scatter_add(x, dim, _as_tensor(index), s),
        ],
        errors=[
            Error(
                [(3, 4), (3, 2)],
                {"dim": 1, "index": np.zeros((3, 3), np.int64)},
                ValueError,
                r"^scatter_add: index \(3, 3\) is larger than src \(3, 2\) \(inputs: \(3, 4\) "
                r"float32 on \w+\(\), \(3, 2\) float32",
            ),
            Error(
                [(3, 4), (3, 3)],
                {"dim": 0, "index": np.full((3, 3), 3)},
                IndexError,
                r"^scatter_add: index 3\.\.3 is out of range for dim 0 of size 3",
            ),
        ],
    ),
    OpSpec(
        ops.IndexSelect,
        ops.index_select,
        lambda t, dim, index: torch.index_select(t, dim, _t(index)),
        INDEX_SAMPLES,
        forms=[
            lambda x, dim, index: x.index_select(dim, index),
            lambda x, dim, index: ops.IndexSelect(dim, index)(x),
            lambda x, dim, index: ops.index_select(x, dim, _as_tensor(index)),
        ],
        errors=[
            Error(
                [(3, 4)],
                {"dim": 1, "index": np.array([0, 4])},
                IndexError,
                r"^index_select: index 0\.\.4 is out of range for dim 1 of size 4",
            ),
            Error(
                [(3, 4)],
                {"dim": 0, "index": np.zeros((1, 2), np.int64)},
                ValueError,
                r"^index_select: index must be 1-D, got shape \(1, 2\)",
            ),
            Error(
                [(3, 4)],
                {"dim": 0, "index": np.array(["a"])},
                TypeError,
                r"^index_select: index must be integers",
            ),
        ],
    ),
    OpSpec(
        ops.IndexAdd,
        ops.index_add,
        lambda t, s, dim, index: torch.index_add(t, dim, _t(index), s),
        INDEX_ADD_SAMPLES,
        call=lambda x, s, dim, index: ops.index_add(x, dim, index, s),
        forms=[
            lambda x, s, dim, index: x.index_add(dim, index, s),
            lambda x, s, dim, index: ops.IndexAdd(dim, index)(x, s),
        ],
        errors=[
            Error(
                [(5, 3), (4, 2)],
                {"dim": 0, "index": np.array([3, 0, 3, 1])},
                ValueError,
                r"^index_add: source \(4, 2\) must have shape \(4, 3\) \(inputs: \(5, 3\)",
            )
        ],
    ),
]


# ---- sort, argsort, topk, einsum -------------------------------------------------------------
def _float_indices(values, indices, x):
    """(values, int64 indices) as a TensorTuple with the indices in x's dtype (compared as
    values; they carry no gradient)."""
    return ops.make_tuple(values, ops.astype(indices, x.dtype))


def _torch_float_indices(result, t):
    values, indices = result
    return values, indices.to(t.dtype)


@st.composite
def orderings(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    return Sample(shape, dim=dim, descending=draw(st.booleans()))


@st.composite
def top_ks(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    k = draw(st.integers(1, shape[dim]))
    return Sample(shape, k=k, dim=dim, largest=draw(st.booleans()))


# Ties (TIES draws whole numbers in -2..2) keep their order, as torch.sort(stable=True).
SORT_SAMPLES = [
    Sample((3, 5)),
    Sample((3, 5), dim=0),
    Sample((2, 3, 4), dim=1, descending=True),
    Sample((6,), dim=0, descending=True),
    Sample((), dim=0),
    Sample(TIES(4, 6), dim=1),
    Sample(TIES(4, 6), dim=0, descending=True),
    Sample(TIES(2, 3, 7), dim=-1, descending=True),
    Sample(
        TIES(
            9,
        ),
        dim=0,
    ),
]
# torch.topk does not promise which of tied elements it picks: values without ties.
TOPK_SAMPLES = [
    Sample((3, 5), k=2),
    Sample((3, 5), k=3, dim=0, largest=False),
    Sample((2, 3, 4), k=4, dim=-1),
    Sample((2, 3, 4), k=1, dim=1, largest=False),
    Sample((7,), k=5, dim=0),
]
EINSUM_SAMPLES = [
    Sample((2, 3), (3, 4), equation="ij,jk->ik"),
    Sample((2, 2, 3), (2, 3, 4), equation="bij,bjk->bik"),
    Sample((2, 3, 4, 5), (2, 3, 6, 5), equation="bhqd,bhkd->bhqk"),
    Sample((4, 4), equation="ii->i"),
    Sample((4, 4), equation="ii->"),
    Sample((4, 4), equation="ii"),
    Sample((3,), (4,), equation="i,j->ij"),
    Sample((2, 3), equation="ij->"),
    Sample((2, 3), equation="ij->ji"),
    Sample((2, 3), (3, 4), equation="ij,jk"),
    Sample((2, 3), (4, 3), equation="ij,kj"),
    Sample((3,), (3,), equation="i,i->"),
    Sample((2, 3, 4), equation="ijk->j"),
    Sample((3, 3, 2), (2, 4), equation="iij,jk->ik"),
    Sample((2, 3), (2, 3), (3,), equation="ij,ij,j->i"),
    Sample((2, 3), (3, 4), (4, 5), equation="ij, jk, kl -> il"),
]


def _einsum_error(shapes, equation, exception, match):
    return Error(shapes, {"equation": equation}, exception, match)


SPECS += [
    OpSpec(
        ops.Sort,
        ops.sort,
        lambda t, dim=-1, descending=False: _torch_float_indices(
            torch.sort(t, dim=dim, descending=descending, stable=True), t
        ),
        SORT_SAMPLES,
        call=lambda x, dim=-1, descending=False: _float_indices(*ops.sort(x, dim, descending), x),
        domain=REAL,
        fd=Sample(REAL(3, 5), dim=1),  # no ties: differentiable there
        forms=[
            lambda x, dim=-1, descending=False: _float_indices(
                *x.sort(dim=dim, descending=descending), x
            ),
            lambda x, dim=-1, descending=False: _float_indices(
                ops.Sort(dim, descending)(x), ops.argsort(x, dim, descending), x
            ),
        ],
        errors=[
            Error([(3, 4)], {"dim": 2}, ValueError, r"^sort: dim 2 is out of range for 2 "),
            Error([(3, 4)], {"dim": 0.5}, TypeError, r"^sort: dim must be an int, got float"),
        ],
        random=orderings(),
    ),
    OpSpec(
        ops.ArgSort,
        ops.argsort,
        # The int64 order picks x's elements (stable): the values, and a gradient, to compare.
        lambda t, dim=-1, descending=False: torch.gather(
            t, dim, torch.argsort(t, dim=dim, descending=descending, stable=True)
        ),
        [s for s in SORT_SAMPLES if s.inputs != [()]],
        call=lambda x, dim=-1, descending=False: ops.gather(
            x, dim, ops.argsort(x, dim, descending)
        ),
        fd=None,  # sort's, through the same order
        forms=[
            lambda x, dim=-1, descending=False: x.gather(
                dim, x.argsort(dim=dim, descending=descending)
            ),
            lambda x, dim=-1, descending=False: x.gather(dim, ops.ArgSort(dim, descending)(x)),
        ],
        errors=[Error([(3, 4)], {"dim": -3}, ValueError, r"^argsort: dim -3 is out of range")],
        random=orderings(),
    ),
    OpSpec(
        ops.TopK,
        ops.topk,
        lambda t, k, dim=-1, largest=True: _torch_float_indices(
            torch.topk(t, k, dim=dim, largest=largest, sorted=True), t
        ),
        TOPK_SAMPLES,
        call=lambda x, k, dim=-1, largest=True: _float_indices(
            *ops.topk(x, k, dim, largest, sorted=True), x
        ),
        forms=[
            lambda x, k, dim=-1, largest=True: _float_indices(
                *x.topk(k, dim=dim, largest=largest), x
            ),
            lambda x, k, dim=-1, largest=True: _float_indices(
                ops.TopK(k, dim, largest)(x), ops.ArgSort(dim, largest, k)(x), x
            ),
        ],
        errors=[
            Error(
                [(3, 4)],
                {"k": 5},
                ValueError,
                r"^topk: k 5 is out of range for dim -1 of size 4 \(inputs: \(3, 4\)",
            ),
            Error([(3, 4)], {"k": -1, "dim": 0}, ValueError, r"^topk: k -1 is out of range"),
            Error([(3, 4)], {"k": 1.5}, TypeError, r"^topk: k must be an int, got float"),
            Error([(3, 4)], {"k": 1, "dim": 2}, ValueError, r"^topk: dim 2 is out of range"),
        ],
        random=top_ks(),
    ),
    OpSpec(
        ops.Einsum,
        ops.einsum,
        lambda *ts, equation: torch.einsum(equation, *ts),
        EINSUM_SAMPLES,
        call=lambda *xs, equation: ops.einsum(equation, *xs),
        forms=[
            lambda *xs, equation: ops.Einsum(equation)(*xs),
            lambda *xs, equation: ops.einsum(equation, list(xs)),
        ],
        errors=[
            _einsum_error([(2, 3)], "i1->i", ValueError, r"^einsum: bad equation 'i1->i'"),
            _einsum_error([(2, 3)], "ij->k", ValueError, r"^einsum: bad equation 'ij->k'"),
            _einsum_error([(2, 3)], "ij->ii", ValueError, r"^einsum: bad equation 'ij->ii'"),
            _einsum_error([(2, 3)], "...j->j", ValueError, r"^einsum: '\.\.\.' is not supported"),
            _einsum_error([(2, 3)], 3, TypeError, r"^einsum: equation must be a str, got int"),
            _einsum_error(
                [(2, 3)],
                "ij,jk->ik",
                ValueError,
                r"^einsum: equation 'ij,jk->ik' has 2 operands, got 1 \(inputs: \(2, 3\)",
            ),
            _einsum_error(
                [(2, 3), (4, 5)],
                "ij,jk->ik",
                ValueError,
                r"^einsum: subscript j has size 3 in one operand and 4 in another",
            ),
            _einsum_error(
                [(2, 3)], "ijk->i", ValueError, r"^einsum: operand 0 has 2 dimensions, subscripts"
            ),
            _einsum_error(
                [(2, 3)], "ii->i", ValueError, r"^einsum: subscript i is repeated with sizes"
            ),
        ],
    ),
]


# ---- x[idx] and x[mask] --------------------------------------------------------------------------
def _mask(shape, seed):
    """A fixed boolean mask of `shape`, about half True."""
    return np.random.RandomState(seed).rand(*shape) < 0.5


def _lead(dim, index):
    """The index x[index] (dim 0) or x[:, index] (dim 1)."""
    return (slice(None),) * dim + (index,)


def _torch_index(index):
    index = np.asarray(index)
    return torch.tensor(index) if index.dtype == bool else _t(index)


INDEX_ARRAY_SAMPLES = [
    Sample((5, 3), index=np.array([3, 0, -1, 3])),
    Sample((4,), index=np.array([[0, -4], [2, 2]])),
    Sample((3, 2, 2), index=np.array([2])),
    Sample((3, 5), index=np.array([4, -5, 1]), dim=1),
    Sample((2, 4, 3), index=np.array([[1, 3], [0, 0]]), dim=1),
    Sample((3, 2), index=np.zeros(0, np.int64)),
]
MASK_SAMPLES = [
    Sample((3, 4), mask=_mask((3, 4), 0)),
    Sample((4, 3), mask=np.array([True, False, True, True])),
    Sample((2, 3, 4), mask=_mask((2, 3), 1)),
    Sample((6,), mask=_mask((6,), 2)),
    Sample((3, 4, 2), mask=_mask((4, 2), 3), dim=1),
    Sample((3, 4), mask=np.zeros((3, 4), bool)),
]


@st.composite
def index_arrays(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    dim = draw(st.integers(0, min(1, len(shape) - 1)))
    size = shape[dim]
    index = draw(
        hnp.arrays(
            np.int64, draw(hnp.array_shapes(max_dims=2)), elements=st.integers(-size, size - 1)
        )
    )
    return Sample(shape, index=index, dim=dim)


@st.composite
def masks(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    dim = draw(st.integers(0, min(1, len(shape) - 1)))
    k = draw(st.integers(1, len(shape) - dim))
    mask = draw(hnp.arrays(np.bool_, shape[dim : dim + k]))
    return Sample(shape, mask=mask, dim=dim)


SPECS += [
    OpSpec(
        ops.IndexArray,
        ops.index_array,
        lambda t, index, dim=0: t[_lead(dim, _t(index))],
        INDEX_ARRAY_SAMPLES,
        forms=[
            lambda x, index, dim=0: x[_lead(dim, index)],
            lambda x, index, dim=0: x[_lead(dim, list(index.tolist()))],
            lambda x, index, dim=0: x[_lead(dim, _as_tensor(index))],
            lambda x, index, dim=0: ops.IndexArray(index, dim)(x),
        ],
        orders=(1, 2),
        errors=[
            Error(
                [(3, 4)],
                {"index": np.array([0, 3])},
                IndexError,
                r"^index_array: index 0\.\.3 is out of range for dim 0 of size 3 \(tensor of shape "
                r"\(3, 4\)\)",
            ),
            Error(
                [(3, 4)],
                {"index": np.array([-5]), "dim": 1},
                IndexError,
                r"^index_array: index -5\.\.-5 is out of range for dim 1 of size 4",
            ),
            Error(
                [(3, 4)],
                {"index": np.array(["a"])},
                TypeError,
                r"^index_array: index must be integers, got dtype <U1",
            ),
        ],
        random=index_arrays(),
    ),
    OpSpec(
        ops.MaskIndex,
        ops.mask_index,
        lambda t, mask, dim=0: t[_lead(dim, torch.tensor(mask))],
        MASK_SAMPLES,
        forms=[
            lambda x, mask, dim=0: x[_lead(dim, mask)],
            lambda x, mask, dim=0: x[_lead(dim, ndl.Tensor(mask, dtype="bool"))],
            lambda x, mask, dim=0: ops.MaskIndex(mask, dim)(x),
        ],
        orders=(1, 2),
        errors=[
            Error(
                [(3, 4)],
                {"mask": np.ones(4, bool)},
                IndexError,
                r"^mask_index: mask of shape \(4,\) does not match the tensor's shape \(3, 4\) "
                r"at dims 0\.\.0$",
            ),
            Error(
                [(3, 4)],
                {"mask": np.ones((4, 3), bool)},
                IndexError,
                r"^mask_index: mask of shape \(4, 3\) does not match",
            ),
            Error(
                [(3,)],
                {"mask": np.ones((3, 1), bool)},
                IndexError,
                r"^mask_index: too many indices for a tensor of shape \(3,\)",
            ),
            Error(
                [(3,)],
                {"mask": np.ones(3, np.int64)},
                TypeError,
                r"^mask_index: mask must be bool, got dtype int64",
            ),
        ],
        random=masks(),
    ),
]

# clone (ops_inplace): a copy on a buffer of its own, the adjoint passing through. The
# in-place ops themselves are methods over existing ops (tests/test_inplace.py).
SPECS += [
    OpSpec(
        ops.Clone,
        ops.clone,
        lambda t: t.clone(),
        [Sample((3, 4)), Sample(()), Sample((2, 0, 3))],
        forms=[lambda x: x.clone(), lambda x: ops.Clone()(x)],
    ),
]
