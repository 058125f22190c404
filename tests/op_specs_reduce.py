"""The op-spec table's entries for needle.ops.ops_reduce (issue 16); see op_specs.py.

Ops with int64 outputs (argmax, argmin, the indices of max/min along a dim) are called through
`with_indices`: the values at the returned indices (a one-hot pick, so the gradient lands on
the chosen element and a wrong tie-break fails) and the indices as floats (compared exactly).
"""

import sys

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from op_specs import REAL, TIES, Error, OpSpec, Sample, tdims, uniform

import needle as ndl
from needle import ops

# (shape, dim): None, ints, negative dims, tuples.
DIM_CASES = [
    ((3, 4), None),
    ((3, 4), 0),
    ((3, 4), -1),
    ((2, 3, 4), (0, 2)),
    ((2, 3, 4), (-1, 0)),
    ((2, 3, 4), 1),
    ((5,), 0),
    ((2, 1, 3), 1),
]
# One dim (torch's argmax, max(x, dim), cumsum, softmax): ints, negative too.
ONE_DIM_CASES = [((3, 4), 0), ((3, 4), 1), ((3, 4), -1), ((2, 3, 4), 1), ((2, 3, 4), -3), ((7,), 0)]
# Ties (integers in [-2, 2]) and exact ties along every axis.
TIED = np.array([[1, 1, 0, 1], [2, -1, 2, 2], [0, 0, 0, 0]], np.float32)
LOGITS = uniform(-4.0, 4.0)
LARGE = np.array(
    [[1000.3, 999.1, 1001.7, 1000.0], [1000.0] * 4, [-1000.4, -1001.0, -999.9, -1000.2]],
    dtype=np.float32,
)


def _dim_samples(cases, **kwargs):
    return [
        Sample(shape, dim=dim, keepdim=keep, **kwargs)
        for shape, dim in cases
        for keep in (False, True)
    ]


def _bad_dim(name, kwargs=None, exception=ValueError):
    return Error(
        [(3, 4)],
        {"dim": 2, **(kwargs or {})},
        exception,
        rf"^{name}: dim 2 is out of range for shape \(3, 4\)",
    )


@st.composite
def dim_reductions(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    n = len(shape)
    dims = st.lists(st.integers(-n, n - 1), min_size=1, unique_by=lambda d: d % n).map(tuple)
    return Sample(shape, dim=draw(st.one_of(st.none(), dims)), keepdim=draw(st.booleans()))


@st.composite
def one_dims(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5))
    return Sample(shape, dim=draw(st.integers(-len(shape), len(shape) - 1)))


def _torch_dims(t, dim):
    return tdims(dim, t.ndim)


# ---- int64 outputs as values and float indices ----------------------------------------------
def pick(x, indices, dim, keepdim):
    """x at `indices` (argmax's, along dim or over the flattened x) by a one-hot constant."""
    idx = indices.numpy()
    mask = np.zeros(x.shape, dtype=x.dtype)
    if dim is None:
        mask.reshape(-1)[int(idx.reshape(-1)[0])] = 1.0
        axes = None
    else:
        np.put_along_axis(mask, idx if keepdim else np.expand_dims(idx, dim), 1.0, axis=dim)
        axes = (dim,)
    mask_t = ndl.Tensor(mask, device=x.device, dtype=x.dtype, requires_grad=False)
    values = ops.summation(x * mask_t, axes, keepdims=keepdim)
    return ops.make_tuple(values, ops.astype(indices, x.dtype))


def torch_pick(t, indices, dim, keepdim):
    if dim is None:
        values = t.reshape(-1)[indices.reshape(-1)[0]].reshape(indices.shape)
    else:
        full = indices if keepdim else indices.unsqueeze(dim)
        values = torch.gather(t, dim, full)
        values = values if keepdim else values.squeeze(dim)
    return values, indices.to(t.dtype)


def with_indices(fn):
    """fn(x, dim, keepdim) -> (values, int64 indices) as (values, indices in x's dtype)."""

    def call(x, dim=None, keepdim=False):
        values, indices = fn(x, dim, keepdim)
        return ops.make_tuple(values, ops.astype(indices, x.dtype))

    return call


def _arg_spec(op, function, torch_fn, method):
    def call(x, dim=None, keepdim=False):
        return pick(x, function(x, dim, keepdim), dim, keepdim)

    def reference(t, dim=None, keepdim=False):
        return torch_pick(t, torch_fn(t, dim=dim, keepdim=keepdim), dim, keepdim)

    return OpSpec(
        op,
        function,
        reference,
        _dim_samples(ONE_DIM_CASES + [((3, 4), None), ((2, 3, 4), None)], tol=None)
        + [Sample(TIED, dim=d) for d in (None, 0, 1, -1)]
        + [Sample(TIES(4, 5, 3), dim=d) for d in (0, 1, 2)],
        call=call,
        domain=TIES,
        fd=Sample(REAL(3, 4), dim=1),  # no ties: differentiable there
        forms=[
            lambda x, dim=None, keepdim=False: pick(x, op(dim, keepdim)(x), dim, keepdim),
            lambda x, dim=None, keepdim=False: pick(
                x, getattr(x, method)(dim, keepdim=keepdim), dim, keepdim
            ),
        ],
        errors=[
            _bad_dim(function.__name__),
            Error([(3, 4)], {"dim": (0, 1)}, TypeError, rf"^{function.__name__}: dim must be one"),
        ],
        random=one_dims(),
    )


def _along_spec(op, function, torch_fn, method=None):
    """max(x, dim) / min(x, dim): (values, indices); the values' adjoint goes to the index.
    `method`: the Tensor method that is torch's too (x.min(dim); x.max is the course's)."""

    def reference(t, dim, keepdim=False):
        values, indices = torch_fn(t, dim, keepdim=keepdim)
        return values, indices.to(t.dtype)

    return OpSpec(
        op,
        function,
        reference,
        _dim_samples(ONE_DIM_CASES)
        + [Sample(TIED, dim=d) for d in (0, 1, -1)]
        + [Sample(TIES(4, 5, 3), dim=d, keepdim=True) for d in (0, 2)],
        call=with_indices(function),
        domain=TIES,
        fd=Sample(REAL(3, 4), dim=1),  # no ties: differentiable there
        forms=[
            with_indices(lambda x, dim, keepdim: function(x, dim=dim, keepdim=keepdim)),
            with_indices(
                lambda x, dim, keepdim: (op(dim, keepdim)(x), function(x, dim, keepdim)[1])
            ),
        ]
        + (
            [with_indices(lambda x, dim, keepdim: getattr(x, method)(dim, keepdim=keepdim))]
            if method
            else []
        ),
        errors=[_bad_dim(function.__name__)],
        random=one_dims(),
    )


def _dim_reduction(op, function, torch_fn, cases, extra=(), domain=REAL, error=None, **options):
    """A reduction over dim (None, an int or a tuple), keepdim or not; also the op class and
    the Tensor method of the function's name."""
    name = function.__name__
    return OpSpec(
        op,
        function,
        lambda t, dim=None, keepdim=False, **kw: torch_fn(
            t, dim=_torch_dims(t, dim), keepdim=keepdim, **kw
        ),
        _dim_samples(cases) + list(extra),
        domain=domain,
        forms=[
            lambda x, dim=None, keepdim=False, **kw: getattr(x, name)(dim, keepdim=keepdim, **kw),
            lambda x, dim=None, keepdim=False, **kw: function(x, dim=dim, keepdim=keepdim, **kw),
        ],
        errors=[error or _bad_dim(name)],
        random=dim_reductions(),
        **options,
    )


def _without_dim_forms(spec, name):
    """torch.min(x) / x.min() with no dim: amin over every element (the dim=None samples)."""

    def whole(reduce):
        def call(x, dim=None, keepdim=False):
            if dim is None and not keepdim:
                return reduce(x)
            return spec.function(x, dim=dim, keepdim=keepdim)

        return call

    spec.forms += [whole(lambda x: getattr(x, name)()), whole(getattr(ops, name))]
    return spec


# (The (2, 1, 3) samples reduce over N = 1 element: correction 0 only, else no degrees of freedom.)
CORRECTIONS = [1, 0, 2, 1, 0, 1, 1, 0, 0, 1, 1, 2, 1, 0, 1, 0]


def _spread(op, function, torch_fn):
    """var or std with each correction."""
    samples = [
        Sample(shape, dim=dim, correction=c, keepdim=keep)
        for (shape, dim), c, keep in zip(DIM_CASES * 2, CORRECTIONS, [False, True] * 8)
    ]
    return OpSpec(
        op,
        function,
        lambda t, dim=None, correction=1, keepdim=False: torch_fn(
            t, dim=_torch_dims(t, dim), correction=correction, keepdim=keepdim
        ),
        [Sample((3, 4)), Sample((2, 3, 4), dim=1)] + samples,
        forms=[
            lambda x, dim=None, correction=1, keepdim=False: op(dim, correction, keepdim)(x),
            lambda x, dim=None, correction=1, keepdim=False: getattr(x, function.__name__)(
                dim, correction=correction, keepdim=keepdim
            ),
        ],
        errors=[_bad_dim(function.__name__)],
        random=dim_reductions(),
        tol=(1e-5, 2e-5),
    )


# Zeros in prod's input: one per slice (the gradient at it is the others' product), two in a
# slice (all gradients 0), and zero-free slices beside them.
ZEROS = np.array(
    [[0.5, 0.0, -1.5, 2.0], [1.5, -0.5, 0.75, 1.25], [0.0, 2.0, 0.0, -1.0]], np.float32
)


def _softmax_spec(op, function, torch_fn):
    return OpSpec(
        op,
        function,
        lambda t, dim=-1: torch_fn(t, dim=dim),
        [Sample((3, 5))]
        + [Sample(shape, dim=dim) for shape, dim in ONE_DIM_CASES]
        + [Sample(LARGE, dim=d, tol=(1e-5, 2e-4)) for d in (0, 1)],
        domain=LOGITS,
        forms=[
            lambda x, dim=-1: op(dim)(x),
            lambda x, dim=-1: getattr(x, function.__name__)(dim),
        ],
        errors=[_bad_dim(function.__name__)],
        random=one_dims(),
    )


SPECS: list = [
    _dim_reduction(ops.Mean, ops.mean, torch.mean, DIM_CASES),
    _spread(ops.Var, ops.var, torch.var),
    _spread(ops.Std, ops.std, torch.std),
    _dim_reduction(
        ops.AMax,
        ops.amax,
        torch.amax,
        DIM_CASES,
        [Sample(TIED, dim=d) for d in (None, 0, 1)],
        error=Error([(3, 4)], {"dim": 2}, ValueError, r"^amax: axis 2 is out of range.*\(3, 4\)"),
    ),
    _without_dim_forms(
        _dim_reduction(
            ops.AMin,
            ops.amin,
            torch.amin,
            DIM_CASES,
            [Sample(TIED, dim=d) for d in (None, 0, -1)],
            error=Error(
                [(3, 4)], {"dim": 2}, ValueError, r"^amin: axis 2 is out of range.*\(3, 4\)"
            ),
        ),
        "min",
    ),
    _along_spec(ops.MaxDim, ops.max, torch.max),
    _along_spec(ops.MinDim, ops.min, torch.min, method="min"),
    _arg_spec(ops.ArgMax, ops.argmax, torch.argmax, "argmax"),
    _arg_spec(ops.ArgMin, ops.argmin, torch.argmin, "argmin"),
    _dim_reduction(
        ops.Prod,
        ops.prod,
        lambda t, dim, keepdim: _torch_prod(t, dim, keepdim),
        DIM_CASES,
        [Sample(ZEROS, dim=d, keepdim=k) for d in (None, 0, 1, (0, 1)) for k in (False, True)],
        fd=Sample(ZEROS, dim=1),
    ),
    OpSpec(
        ops.CumSum,
        ops.cumsum,
        lambda t, dim: torch.cumsum(t, dim=dim),
        [Sample(shape, dim=dim) for shape, dim in ONE_DIM_CASES]
        + [
            Sample((2, 17), dim=1),
            Sample((9, 2), dim=-2),
            Sample((), dim=0),
            Sample((1, 3), dim=0),
        ],
        forms=[lambda x, dim: ops.CumSum(dim)(x), lambda x, dim: x.cumsum(dim)],
        errors=[_bad_dim("cumsum")],
        random=one_dims(),
    ),
    _softmax_spec(ops.Softmax, ops.softmax, torch.softmax),
    _softmax_spec(ops.LogSoftmaxDim, ops.log_softmax, torch.log_softmax),
]


def _torch_prod(t, dim, keepdim):
    """torch.prod over a tuple of dims (torch takes one): one dim at a time, last first."""
    dims = (dim,) if isinstance(dim, int) else dim
    for d in sorted((a % t.ndim for a in dims), reverse=True):
        t = torch.prod(t, dim=d, keepdim=keepdim)
    return t


def _extend_logsumexp_spec():
    """logsumexp keeps the course's spec (op_specs.py, which is loading us); torch's
    dim=/keepdim= keywords and the Tensor method join it as forms."""
    course = sys.modules.get("op_specs")
    if course is None:
        return
    spec = next(s for s in course.SPECS if s.op is ops.LogSumExp)
    spec.forms += [
        lambda x, axes=None, keepdims=False: ops.logsumexp(x, dim=axes, keepdim=keepdims),
        lambda x, axes=None, keepdims=False: x.logsumexp(axes, keepdims),
    ]


_extend_logsumexp_spec()
