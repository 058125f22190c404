"""The op-spec table: one OpSpec per Op class that needle.ops exports, read by the generic
tests of test_ops.py (values and gradients against torch in float32 and float64, float64
central differences, second-order gradients, errors, random samples, the op contract).

An OpSpec says, for one op:

    op        the Op class it covers (test_ops.py checks that every exported one has a spec)
    function  the exported function form (None for ops only made by other ops' gradients)
    call      how a test calls it: call(*input_tensors, **sample.kwargs); default `function`
    torch     the reference: torch(*float64_torch_tensors, **sample.kwargs)
    samples   Sample(*inputs, **kwargs): each input a shape (drawn from the spec's domain),
              a Draw (a shape from another domain, e.g. NONZERO(3, 4)) or a fixed array
    domain    where shape inputs are drawn from: one Domain, or one per input
    forms     other spellings that must agree with torch too (the class, Tensor operators)
    orders    derivative orders checked against torch: (1,) or (1, 2)
    fd        the sample whose float64 gradients are checked by central differences
              (default: the first), or None
    errors    Error(inputs, kwargs, exception, message regex) for bad inputs
    random    a hypothesis strategy of Samples (property tests over random shapes)
    tol       float32 (rtol, atol) against torch; a Sample's tol overrides it

Outputs may be Tensors or TensorTuples (then torch returns a tuple).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import needle as ndl
from needle import backend_ndarray as nd, ops


# ---- input domains --------------------------------------------------------------------------
@dataclass(frozen=True)
class Draw:
    """An input of `shape` drawn from `domain` when a test runs (after it seeds NumPy)."""

    domain: "Domain"
    shape: tuple


@dataclass(frozen=True)
class Domain:
    """Where inputs are drawn from: `draw(shape)` gives a float32 array."""

    name: str
    draw: Callable[[tuple], np.ndarray]

    def __call__(self, *shape) -> Draw:
        return Draw(self, shape)

    def __repr__(self) -> str:
        return self.name


def uniform(low: float, high: float) -> Domain:
    return Domain(
        f"uniform({low}, {high})",
        lambda shape: np.asarray(np.random.uniform(low, high, shape), dtype=np.float32),
    )


def _away_from_zero(shape):
    sign = np.where(np.random.rand(*shape) < 0.5, -1, 1)
    return np.asarray(np.random.uniform(0.5, 2.0, shape) * sign, dtype=np.float32)


REAL = uniform(-2.0, 2.0)
POSITIVE = uniform(0.1, 3.0)  # log, sqrt
NONZERO = Domain("nonzero", _away_from_zero)  # |x| in [0.5, 2): safe divisors
TIES = Domain(
    "ties", lambda shape: np.asarray(np.random.randint(-2, 3, size=shape), dtype=np.float32)
)  # maxima tie often


class Sample:
    """Inputs (shapes, Draws or arrays) and the op's keyword arguments; `tol` overrides the
    spec's float32 (rtol, atol)."""

    def __init__(self, *inputs, tol: Optional[tuple] = None, **kwargs):
        self.inputs, self.kwargs, self.tol = list(inputs), kwargs, tol

    def __repr__(self) -> str:
        def short(x):
            if isinstance(x, np.ndarray):
                return f"array{x.shape}"
            if isinstance(x, Draw):
                return f"{x.domain.name}{x.shape}"
            return str(x)

        parts = [short(x) for x in self.inputs] + [
            f"{k}={short(v)}" for k, v in self.kwargs.items()
        ]
        return ",".join(parts)

    def draw(self, spec: "OpSpec", dtype="float32") -> list:
        """The input arrays, in `dtype`."""
        arrays = []
        for i, x in enumerate(self.inputs):
            if isinstance(x, Draw):
                x = x.domain.draw(x.shape)
            elif isinstance(x, tuple):
                x = spec.domain_of(i).draw(x)
            arrays.append(np.asarray(x, dtype=dtype))
        return arrays


@dataclass
class Error:
    """Inputs (shapes, drawn from the spec's domain, or arrays) and keyword arguments that must
    raise `exception` with a message matching `match` (re.search)."""

    inputs: Sequence[Any]
    kwargs: dict
    exception: type
    match: str


@dataclass
class OpSpec:
    op: type
    function: Optional[Callable]
    torch: Callable
    samples: list
    call: Optional[Callable] = None
    domain: Any = REAL
    forms: list = field(default_factory=list)
    orders: tuple = (1, 2)
    fd: Any = 0
    errors: list = field(default_factory=list)
    random: Any = None
    tol: tuple = (1e-5, 1e-5)  # float32 (rtol, atol) against torch

    def __post_init__(self):
        if self.call is None:
            self.call = self.function
        if isinstance(self.fd, int):
            self.fd = self.samples[self.fd]

    @property
    def name(self) -> str:
        """The op's name in error messages."""
        return self.op.name or self.op.__name__.lower()

    def domain_of(self, i: int) -> Domain:
        return self.domain[i] if isinstance(self.domain, (tuple, list)) else self.domain

    def __repr__(self) -> str:
        return self.name


# ---- torch references -----------------------------------------------------------------------
def tdims(axes, ndim):
    """needle axes (None, an int or a tuple) as a torch `dim` argument."""
    return tuple(range(ndim)) if axes is None else axes


def torch_index(t, idxs):
    """NumPy basic indexing (ints, slices with any step, Ellipsis) with torch autograd ops."""
    if not isinstance(idxs, tuple):
        idxs = (idxs,)
    if any(i is Ellipsis for i in idxs):
        pos = next(k for k, i in enumerate(idxs) if i is Ellipsis)
        idxs = idxs[:pos] + (slice(None),) * (t.ndim - len(idxs) + 1) + idxs[pos + 1 :]
    idxs = idxs + (slice(None),) * (t.ndim - len(idxs))
    for axis in reversed(range(len(idxs))):  # last axis first, so axis numbers stay valid
        idx = idxs[axis]
        if isinstance(idx, slice):
            positions = list(range(*idx.indices(t.shape[axis])))
            t = t.index_select(axis, torch.tensor(positions, dtype=torch.long))
        else:
            t = t.select(axis, int(idx))
    return t


def torch_scatter(t, idxs, shape):
    """Zeros of `shape` with t at `idxs`, differentiable in t (a gather's adjoint)."""
    base = torch.zeros(shape, dtype=t.dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(torch_index(base, idxs), base, t, create_graph=True)
    return grad


def _dilation_index(ndim, axes, dilation):
    axes = {a % ndim for a in ((axes,) if isinstance(axes, int) else axes)}
    return tuple(slice(None, None, dilation + 1) if i in axes else slice(None) for i in range(ndim))


def torch_dilate(t, axes, dilation):
    index = _dilation_index(t.ndim, axes, dilation)
    shape = [d * (dilation + 1) if s.step else d for d, s in zip(t.shape, index)]
    out = t.new_zeros(shape)
    out[index] = t
    return out


def torch_undilate(t, axes, dilation):
    return t[_dilation_index(t.ndim, axes, dilation)]


def torch_conv(x, w, stride=1, padding=1):
    """needle's NHWC conv with (k, k, c_in, c_out) weights, through torch's NCHW conv2d."""
    # contiguous(): torch's float64 CPU conv backward rejects some permuted layouts.
    out = F.conv2d(
        x.permute(0, 3, 1, 2).contiguous(),
        w.permute(3, 2, 0, 1).contiguous(),
        stride=stride,
        padding=padding,
    )
    return out.permute(0, 2, 3, 1)


def torch_conv_nchw(x, w, b, stride=1, padding=1):
    """ops.conv with layout "NCHW" and a bias: torch's conv2d, weights (k, k, c_in, c_out)."""
    return F.conv2d(x, w.permute(3, 2, 0, 1).contiguous(), b, stride=stride, padding=padding)


def torch_conv_any(x, w, *bias, stride=1, padding=1, layout="NHWC"):
    """Conv's one spec: NHWC without a bias, or NCHW with one (samples with layout="NCHW")."""
    if layout == "NCHW":
        return torch_conv_nchw(x, w, *bias, stride=stride, padding=padding)
    return torch_conv(x, w, stride, padding)


def torch_conv_weight_gradient(x, g, stride, padding, kernel):
    w = torch.zeros(kernel + (x.shape[3], g.shape[3]), dtype=x.dtype, requires_grad=True)
    (dw,) = torch.autograd.grad(torch_conv(x, w, stride, padding), w, g, create_graph=True)
    return dw


def torch_conv_input_gradient(g, w, stride, padding, size):
    shape = (g.shape[0],) + tuple(size) + (w.shape[2],)
    x = torch.zeros(shape, dtype=g.dtype, requires_grad=True)
    (dx,) = torch.autograd.grad(torch_conv(x, w, stride, padding), x, g, create_graph=True)
    return dx


def torch_batch_norm(x, w, b, axis=1):
    if axis == -1:  # features last: torch normalises along axis 1
        return torch_batch_norm(x.movedim(-1, 1), w, b).movedim(1, -1)
    return F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)


def torch_lstm_state(gates, c):
    i, f, g, o = torch.chunk(gates, 4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.stack([torch.sigmoid(o) * torch.tanh(c_new), c_new])


def torch_cross_entropy(z, labels):
    return F.cross_entropy(z, torch.tensor(np.asarray(labels), dtype=torch.long))


def torch_cross_entropy_gradient(z, c, labels):
    (dz,) = torch.autograd.grad(torch_cross_entropy(z, labels), z, create_graph=True)
    return dz * c


def torch_maximum(a, b):
    return torch.maximum(a, b if torch.is_tensor(b) else torch.tensor(b, dtype=a.dtype))


def number(scalar) -> float:
    """A scalar operand (a number, or a 0-d or (1,) array) as a Python float, for torch."""
    return float(np.asarray(scalar).reshape(-1)[0])


def labels_of(z, labels):
    return ops.ClassLabels(labels, z.shape[1], z.device)


def shift_and_logsumexp(z):
    """Constants m = max(z) over the classes (batch, 1) and logsumexp(z - m) over them."""
    m = ops.max(z, (1,), keepdims=True).detach()
    return m, ops.logsumexp(z - ops.broadcast_to(m, z.shape), (1,), keepdims=True).detach()


# ---- random samples (hypothesis) ------------------------------------------------------------
def broadcast_pairs():
    return hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3).map(
        lambda s: Sample(*s.input_shapes)
    )


@st.composite
def reductions(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    axes = draw(
        st.one_of(
            st.none(), st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True).map(tuple)
        )
    )
    return Sample(shape, axes=axes, keepdims=draw(st.booleans()))


@st.composite
def reshapes(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, max_side=4))
    size = int(np.prod(shape))
    first = draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
    return Sample(shape, shape=(first, -1))


@st.composite
def transposes(draw):
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=4, max_side=4))
    axis = st.integers(-len(shape), len(shape) - 1)
    return Sample(shape, axes=(draw(axis), draw(axis)))


@st.composite
def matmuls(draw):
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3))
    m, n, p = (draw(st.integers(1, 5)) for _ in range(3))
    a_batch, b_batch = batch.input_shapes
    return Sample(a_batch + (m, n), b_batch + (n, p))


@st.composite
def indexings(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5))
    return Sample(
        shape, idxs=draw(hnp.basic_indices(shape, allow_newaxis=False, allow_ellipsis=True))
    )


@st.composite
def convolutions(draw):
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k, stride, padding = (
        draw(st.sampled_from([1, 2, 3, 5])),
        draw(st.integers(1, 3)),
        draw(st.integers(0, 2)),
    )
    # A kernel larger than the padded input is an error (tested in the table's errors).
    k = min(k, h + 2 * padding, w + 2 * padding)
    return Sample((n, h, w, c_in), (k, k, c_in, c_out), stride=stride, padding=padding)


# ---- the table ------------------------------------------------------------------------------
BROADCAST_SHAPES = [
    ((3, 4), (3, 4)),
    ((3, 1, 5), (4, 1)),
    ((1,), (2, 3)),
    ((2, 3), (1,)),
    ((2, 1), (1, 3)),
    ((1, 1, 1), (1,)),
    ((1,), (1, 1)),
    ((), (2, 3)),
    ((2, 1, 4), ()),
]
BROADCAST_SAMPLES = [Sample(*shapes) for shapes in BROADCAST_SHAPES]
NOT_BROADCASTING = [(3, 4), (2, 4)]


def _no_broadcast(name):
    return Error(
        NOT_BROADCASTING,
        {},
        ValueError,
        rf"^{name}: shapes \(3, 4\) and \(2, 4\) do not broadcast \(inputs: \(3, 4\) "
        r"float32 on \w+\(\), \(2, 4\) float32",
    )


def _binary(op, function, torch_fn, operator, domain=REAL, extra=()):
    return OpSpec(
        op,
        function,
        torch_fn,
        BROADCAST_SAMPLES + list(extra),
        domain=domain,
        forms=[operator, op()],
        errors=[_no_broadcast(function.__name__)],
        random=broadcast_pairs(),
    )


def _scalar_op(op, function, torch_fn, operators, scalars, samples=(), tol=(1e-5, 1e-5)):
    """Scalars may be Python or NumPy numbers, or 0-d or (1,) arrays (course code divides by
    np.random.randn(1))."""
    samples = [
        Sample(shape, scalar=c) for shape, c in zip([(3, 4), (5,), (), (2, 3)] * 2, scalars)
    ] + list(samples)
    return OpSpec(
        op,
        function,
        lambda t, scalar: torch_fn(t, number(scalar)),
        samples,
        domain=NONZERO,
        forms=[*operators, lambda x, scalar: op(scalar)(x)],
        tol=tol,
        errors=[
            Error(
                [(2, 3)],
                {"scalar": "2"},
                TypeError,
                rf"^{function.__name__}: expected a number, got str",
            )
        ],
    )


def _unary(op, function, torch_fn, domain, values=None):
    """An elementwise function of one tensor, drawn from `domain`, and of the float32 `values`
    (extremes); also called as the Tensor method of its name (x.exp())."""
    samples = [Sample(s) for s in [(7,), (3, 4), (2, 3, 4), ()]]
    if values is not None:
        samples.append(Sample(np.array(values, dtype=np.float32)))
    return OpSpec(
        op,
        function,
        torch_fn,
        samples,
        domain=domain,
        forms=[op(), lambda x: getattr(x, function.__name__)()],
    )


# Where tanh and sigmoid saturate, out to where exp(-x) overflows float32.
SATURATING = [-1000.0, -100.0, -30.0, -10.0, 0.0, 10.0, 30.0, 100.0, 1000.0]

SUM_CASES = [
    ((3, 4), None),
    ((3, 4), 0),
    ((3, 4), 1),
    ((3, 4), -1),
    ((2, 3, 4), (0, 2)),
    ((2, 3, 4), (1,)),
    ((2, 3, 4), (0, 1, 2)),
    ((2, 3, 4), (-1, 0)),
    ((5,), 0),
    ((2, 1, 3), 1),
]


def _reduction_samples(cases):
    return [
        Sample(shape, axes=axes, keepdims=keep) for shape, axes in cases for keep in (False, True)
    ]


def _axis_error(name):
    return Error(
        [(3, 4)],
        {"axes": (3,)},
        ValueError,
        rf"^{name}: axis 3 is out of range for an array with 2 dimensions",
    )


def _reduction(op, function, torch_fn, cases, extra=(), method=None, **options):
    """A reduction over `axes` (None, an int or a tuple), with or without keepdims, on `cases`
    (shape, axes) and the `extra` samples; torch_fn(t, dim=..., keepdim=...) is the reference,
    and `method` names the Tensor method that reduces too (x.sum(axes, keepdims=...))."""
    forms = [lambda x, axes=None, keepdims=False: op(axes, keepdims)(x)]
    if method is not None:
        forms.append(
            lambda x, axes=None, keepdims=False: getattr(x, method)(axes, keepdims=keepdims)
        )
    return OpSpec(
        op,
        function,
        lambda t, axes=None, keepdims=False: torch_fn(t, dim=tdims(axes, t.ndim), keepdim=keepdims),
        _reduction_samples(cases) + list(extra),
        forms=forms,
        errors=[_axis_error(function.__name__)],
        random=reductions(),
        **options,
    )


LSE_CASES = [
    ((3, 4), None),
    ((3, 4), (1,)),
    ((3, 4), (0,)),
    ((3, 4), 1),
    ((2, 3, 4), (0, 2)),
    ((2, 3, 4), (-1,)),
    ((2, 3, 4), (0, 1, 2)),
    ((5,), None),
]
LARGE = np.array(
    [
        [1000.3, 999.1, 1001.7, 1000.0, 998.2],
        [1000.0] * 5,
        [-1000.4, -1001.0, -999.9, -1000.2, -1000.0],
    ],
    dtype=np.float32,
)
# Ties and near-ties far from 0: float32 cannot hold z - logsumexp(z) there (its rounding is
# 0.06 at 1e6), so log-softmax and cross-entropy must come from z - max(z).
HUGE = np.array([[1e6, 1e6], [1e3, 1e3], [-3e7, -3e7], [1e6, 1e6 - 1.0]], dtype=np.float32)

MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((1, 4), (4, 1)),
    ((5, 1), (1, 3)),
    ((7, 16), (16, 9)),
    ((2, 3, 4), (2, 4, 5)),
    ((2, 3, 3, 4), (2, 3, 4, 2)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((3, 4), (2, 4, 5)),
    ((2, 3, 4), (4, 5)),
    ((1, 3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (1, 3, 4, 2)),
    # 1-D operands are a row (left) or column (right) vector whose axis is dropped, as in torch.
    ((4,), (4, 3)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((2, 3, 4), (4,)),
    ((4,), (2, 4, 3)),
]

# (N, H, W, C_in, C_out, k, stride, padding); several have (H + 2p - k) % stride != 0.
CONV_CASES = [
    (1, 5, 4, 2, 2, 3, 2, 1),
    (2, 5, 5, 3, 4, 3, 1, 0),
    (2, 5, 5, 3, 4, 3, 1, 1),
    (1, 6, 5, 2, 3, 1, 1, 0),
    (1, 6, 5, 2, 3, 1, 2, 0),
    (1, 5, 4, 1, 2, 1, 3, 2),
    (1, 7, 6, 2, 3, 3, 2, 1),
    (1, 8, 8, 2, 2, 3, 2, 0),
    (2, 7, 9, 3, 2, 5, 3, 2),
    (1, 9, 7, 3, 2, 3, 3, 0),
    (1, 4, 4, 2, 2, 3, 3, 1),
    (2, 10, 8, 4, 5, 3, 2, 2),
    (1, 6, 6, 2, 3, 5, 2, 1),
    (1, 5, 7, 2, 2, 5, 1, 2),
    (1, 3, 3, 2, 2, 5, 1, 2),
    (1, 11, 6, 2, 3, 5, 3, 0),
    (1, 5, 5, 1, 1, 3, 2, 2),
    (1, 6, 5, 1, 2, 2, 3, 0),
]

# Conv weight gradients: (input shape, kernel, stride, padding), c_out = 2.
CONV_WEIGHT_CASES = [
    ((1, 5, 4, 2), 3, 2, 1),
    ((2, 6, 5, 3), 3, 1, 1),
    ((1, 7, 7, 2), 3, 2, 1),
    ((1, 8, 7, 2), 2, 3, 0),
    ((2, 9, 9, 1), 7, 4, 3),
]


def _conv_weight_sample(shape, k, stride, padding):
    n, h, w, _ = shape
    out = (n, (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1, 2)
    return Sample(shape, out, stride=stride, padding=padding, kernel=(k, k))


def _conv_input_sample(shape, k, stride, padding):
    _, h, w, c_in = shape
    g = _conv_weight_sample(shape, k, stride, padding).inputs[1]
    return Sample(g, (k, k, c_in, 2), stride=stride, padding=padding, size=(h, w))


# (input shape, shape)
RESHAPE_CASES = [
    ((3, 4), (12,)),
    ((3, 4), (4, 3)),
    ((2, 3, 4), (6, -1)),
    ((2, 3, 4), (-1,)),
    ((2, 3, 4), (2, -1, 2)),
    ((12,), (2, 3, 2)),
    ((1,), ()),
    ((), (1, 1)),
    ((4, 1), (1, 4)),
]
BROADCAST_TO_CASES = [
    ((3, 1), (3, 4)),
    ((1, 4), (3, 4)),
    ((4,), (3, 4)),
    ((1,), (2, 3)),
    ((), (2, 3)),
    ((3, 1, 5), (2, 3, 4, 5)),
    ((1, 1), (1, 1)),
    ((2, 3), (2, 3)),
    ((1, 3, 1), (1, 3, 2)),
    ((3, 1), [2, 3, 4]),
]


def _to_shape(op, function, cases, bad_shape, match, forms=(), **options):
    """Reshape or BroadcastTo on `cases`, the reference the torch method of the function's
    name (also a Tensor method); a (3, 4) input to `bad_shape` is an error matching `match`."""
    name = function.__name__
    return OpSpec(
        op,
        function,
        lambda t, shape: getattr(t, name)(shape),
        [Sample(s, shape=n) for s, n in cases],
        forms=[lambda x, shape: getattr(x, name)(shape), lambda x, shape: op(shape)(x), *forms],
        errors=[Error([(3, 4)], {"shape": bad_shape}, ValueError, match)],
        **options,
    )


# (shape, axes, dilation)
DILATE_CASES = [
    ((3, 4), (0,), 1),
    ((3, 4), (1,), 2),
    ((3, 4), (0, 1), 1),
    ((2, 3, 4), (1, 2), 1),
    ((2, 3, 4), (-1,), 3),
    ((3, 4), (0, 1), 0),
    ((2, 5), 1, 1),
]
UNDILATE_CASES = [
    ((6, 4), (0,), 1),
    ((6, 4), (1,), 1),
    ((6, 8), (0, 1), 1),
    ((2, 6, 4), (1,), 2),
    ((5, 4), (0,), 1),
    ((7, 5), (0, 1), 2),
    ((3, 4), (0, 1), 0),
    ((4, 5), -1, 3),
]


def _dilation(op, function, torch_fn, cases, bad_axis, match, forms=()):
    """Dilate or UnDilate on `cases`; an axis `bad_axis` out of a (3, 4) input's range is an
    error whose message matches `match`."""
    return OpSpec(
        op,
        function,
        torch_fn,
        [Sample(shape, axes=axes, dilation=d) for shape, axes, d in cases],
        forms=[lambda x, axes, dilation: op(axes, dilation)(x), *forms],
        errors=[Error([(3, 4)], {"axes": (bad_axis,), "dilation": 1}, ValueError, match)],
    )


GETITEM_CASES = [
    ((3, 4), (slice(None, None, -2), slice(1, 3))),
    ((4, 5, 6), 1),
    ((4, 5, 6), -1),
    ((4, 5, 6), (1, 2)),
    ((4, 5, 6), (1, 2, 3)),
    ((4, 5, 6), slice(1, 3)),
    ((4, 5, 6), slice(None, None, -1)),
    ((4, 5, 6), (slice(None), slice(4, 0, -2))),
    ((4, 5, 6), (Ellipsis, 2)),
    ((4, 5, 6), (1, Ellipsis, slice(None, None, 2))),
    ((4, 5, 6), (-1, slice(None), -2)),
    ((4, 5, 6), (slice(-1, None, -3), 0, slice(1, 6, 2))),
    ((4, 5, 6), Ellipsis),
    ((4, 5, 6), (slice(None, None, -1), slice(None, None, -1), slice(None, None, -1))),
    ((4, 5, 6), (slice(1, 100), slice(-100, 3))),
    ((4, 5, 6), (slice(2, 2),)),
    ((7,), slice(5, None, -2)),
    ((3, 4), (Ellipsis, slice(None, None, -1))),
]

ROWS = np.array([3, 0, 3, 1, 3, 4])  # repeats, and row 2 never taken
LABELS = np.array([0, 4, 2, 2, 1, 3, 4])
BN_X = (uniform(-3.0, 3.0), POSITIVE, REAL)  # batch norm: x, weight, bias


SPECS = [
    # ---- elementwise arithmetic
    _binary(ops.EWiseAdd, ops.add, torch.add, lambda a, b: a + b),
    _binary(ops.EWiseSub, ops.subtract, torch.sub, lambda a, b: a - b),
    _binary(ops.EWiseMul, ops.multiply, torch.mul, lambda a, b: a * b),
    _binary(ops.EWiseDiv, ops.divide, torch.div, lambda a, b: a / b, domain=(REAL, NONZERO)),
    _binary(ops.EWisePow, ops.power, torch.pow, lambda a, b: a**b, domain=(POSITIVE, REAL)),
    OpSpec(
        ops.Maximum,
        ops.maximum,
        torch_maximum,
        BROADCAST_SAMPLES
        + [Sample(TIES(4, 5), TIES(4, 5)), Sample(TIES(3, 1), TIES(4))]
        + [
            Sample(np.arange(-5, 5, dtype=np.float32).reshape(2, 5) / 2, b=c)
            for c in (0.0, 1.0, -0.5)
        ],  # including exact ties with c
        forms=[
            lambda a, b: ops.Maximum()(a, b) if isinstance(b, ndl.Tensor) else ops.Maximum(b)(a)
        ],
        errors=[_no_broadcast("maximum")],
        random=broadcast_pairs(),
    ),
    _scalar_op(
        ops.AddScalar,
        ops.add_scalar,
        torch.add,
        [
            lambda x, scalar: x + scalar,
            lambda x, scalar: scalar + x,
            lambda x, scalar: x - (-scalar),
        ],
        [1.5, -2, np.float32(2), np.array([0.75]), 0, np.array(-1.25)],
    ),
    _scalar_op(
        ops.MulScalar,
        ops.mul_scalar,
        torch.mul,
        [lambda x, scalar: x * scalar, lambda x, scalar: scalar * x],
        [-0.5, 3, np.float64(2), np.array([1.5]), 0, np.array(-2.0)],
    ),
    _scalar_op(
        ops.DivScalar,
        ops.divide_scalar,
        torch.div,
        [lambda x, scalar: x / scalar],
        [4.0, -0.25, np.int64(2), np.array([-1.5]), 3, np.array(0.5)],
    ),
    _scalar_op(
        ops.PowerScalar,
        ops.power_scalar,
        torch.pow,
        [lambda x, scalar: x**scalar],
        [2, 3, -1, np.int64(0), 4, np.array([-3.0])],  # integers: any sign of x
        [
            Sample(uniform(0.3, 2.5)(3, 5), scalar=c)
            for c in [0, 1, 2, -1, -2, 0.5, -0.5, 1.5, 2.5, -1.5, np.array([0.5])]
        ],
        tol=(2e-5, 1e-5),
    ),
    OpSpec(
        ops.Negate,
        ops.negate,
        torch.neg,
        [Sample((3, 4)), Sample(()), Sample((2, 3, 1))],
        forms=[lambda x: -x, ops.Negate(), lambda x: 0 - x],
    ),
    # ---- shapes
    OpSpec(
        ops.Transpose,
        ops.transpose,
        lambda t, axes=None: t.transpose(*(axes if axes is not None else (-2, -1))),
        [Sample((3, 4)), Sample((2, 3, 4)), Sample((2, 3, 4, 5))]
        + [
            Sample(shape, axes=axes)
            for shape, axes in [
                ((2, 3, 4), (0, 1)),
                ((2, 3, 4), (0, 2)),
                ((2, 3, 4), (2, 0)),
                ((2, 3, 4, 5), (1, 3)),
                ((2, 3, 4, 5), (-1, -3)),
                ((3, 4), (1, 1)),
            ]
        ],
        forms=[
            lambda x, axes=None: ops.Transpose(axes)(x),
            lambda x, axes=None: x.T if axes is None else x.transpose(axes),
        ],
        errors=[
            Error([(5,)], {}, ValueError, r"^transpose: needs at least 2 dimensions"),
            Error([(2, 3, 4)], {"axes": (0, 1, 2)}, ValueError, r"^transpose: swaps two axes"),
        ],
        random=transposes(),
    ),
    _to_shape(
        ops.Reshape,
        ops.reshape,
        RESHAPE_CASES,
        (5,),
        r"^reshape: cannot reshape array of shape \(3, 4\) into \(5,\)",
        forms=[lambda x, shape: x.reshape(*shape)],
        random=reshapes(),
    ),
    _to_shape(
        ops.BroadcastTo,
        ops.broadcast_to,
        BROADCAST_TO_CASES,
        (2, 4),
        r"^broadcast_to: cannot broadcast shape \(3, 4\) to \(2, 4\)",
    ),
    _reduction(ops.Summation, ops.summation, torch.sum, SUM_CASES, method="sum"),
    _reduction(
        ops.Max,
        ops.max,
        torch.amax,
        SUM_CASES,
        [
            Sample(np.array([[1, 1, 0], [2, -1, 2], [0, 0, 0]], np.float32), axes=axes)
            for axes in (None, 0, 1, (0, 1))
        ],  # ties share the gradient, as torch.amax
        method="max",
    ),
    OpSpec(
        ops.AsType,
        ops.astype,
        lambda t, dtype: t.to(torch.float32 if dtype == "float32" else torch.float64),
        # Cast and cast back: exact either way.
        [Sample((2, 3), dtype="float64"), Sample((4,), dtype=np.float64)],
        call=lambda x, dtype: ops.astype(ops.AsType(dtype)(x), x.dtype),
        forms=[lambda x, dtype: x.astype(dtype).astype(x.dtype)],
    ),
    # ---- matmul
    OpSpec(
        ops.MatMul,
        ops.matmul,
        torch.matmul,
        [Sample(*s) for s in MATMUL_SHAPES],
        forms=[lambda a, b: a @ b, ops.MatMul()],
        tol=(1e-5, 2e-5),
        errors=[
            Error(
                [(3, 4), (2, 4)],
                {},
                ValueError,
                r"^matmul: shapes \(3, 4\) and \(2, 4\) do not align \(4 != 2\) "
                r"\(inputs: \(3, 4\) float32",
            ),
            Error([(), (3,)], {}, ValueError, r"^matmul: does not take 0-d operands"),
        ],
        random=matmuls(),
    ),
    # ---- elementwise functions
    _unary(ops.Log, ops.log, torch.log, POSITIVE, [1e-30, 1e-5, 1.0, 1e5, 1e30]),
    _unary(ops.Exp, ops.exp, torch.exp, uniform(-3.0, 3.0), [-80.0, -20.0, 0.0, 20.0, 80.0]),
    _unary(ops.ReLU, ops.relu, torch.relu, REAL, [-1.0, 0.0, 0.0, 2.0, -0.0]),  # 0 at 0
    _unary(ops.Tanh, ops.tanh, torch.tanh, uniform(-3.0, 3.0), SATURATING),
    _unary(ops.Sigmoid, ops.sigmoid, torch.sigmoid, uniform(-6.0, 6.0), SATURATING),
    _unary(ops.Sqrt, ops.sqrt, torch.sqrt, POSITIVE),
    # ---- log-sum-exp, log-softmax, cross-entropy
    _reduction(
        ops.LogSumExp,
        ops.logsumexp,
        torch.logsumexp,
        LSE_CASES,
        [Sample(LARGE, axes=(1,), tol=(1e-6, 2e-4)), Sample(LARGE, tol=(1e-6, 2e-4))],
        domain=uniform(-4.0, 4.0),
    ),
    OpSpec(
        ops.LogSoftmax,
        ops.logsoftmax,
        lambda t, axis=-1: torch.log_softmax(t, dim=axis),
        [Sample((3, 5))]
        + [
            Sample(shape, axis=axis)
            for shape, axis in [
                ((3, 5), 0),
                ((3, 5), 1),
                ((2, 3, 4), 1),
                ((2, 3, 4), -1),
                ((6,), 0),
            ]
        ]
        + [Sample(LARGE, tol=(1e-5, 2e-4)), Sample(LARGE, axis=0, tol=(1e-5, 2e-4))]
        + [Sample(HUGE, tol=(1e-6, 1e-7)), Sample(HUGE.T, axis=0, tol=(1e-6, 1e-7))],
        domain=uniform(-4.0, 4.0),
        forms=[lambda x, axis=-1: ops.LogSoftmax(axis)(x)],
    ),
    OpSpec(
        ops.SoftmaxCrossEntropy,
        ops.softmax_cross_entropy,
        torch_cross_entropy,
        [
            Sample((7, 5), labels=LABELS),
            Sample(LARGE, labels=np.array([4, 0, 2])),
            Sample(uniform(-1000.0, 1000.0)(7, 5), labels=LABELS, tol=(1e-5, 1e-3)),
            Sample(HUGE, labels=np.array([0, 1, 1, 1]), tol=(1e-6, 1e-7)),
        ],
        domain=uniform(-4.0, 4.0),
        forms=[
            lambda z, labels: ops.SoftmaxCrossEntropy(labels_of(z, labels))(z),
            lambda z, labels: ops.softmax_cross_entropy(z, ndl.Tensor(labels, device=z.device)),
            lambda z, labels: ops.softmax_cross_entropy(z, list(labels)),
        ],
        errors=[
            Error(
                [(7, 5)],
                {"labels": LABELS[:6]},
                ValueError,
                r"^softmax_cross_entropy: logits \(7, 5\) for 6 labels of 5 classes",
            ),
            Error(
                [(7, 5)],
                {"labels": np.array([0, 4, 2, 2, 1, 3, 5])},
                IndexError,
                r"\[0, 5\), got 0..5",
            ),
            Error([(7, 5)], {"labels": LABELS + 0.5}, ValueError, "whole numbers"),
        ],
    ),
    OpSpec(
        ops.SoftmaxCrossEntropyGrad,
        None,
        torch_cross_entropy_gradient,
        [
            Sample((7, 5), uniform(0.5, 2.0)(), labels=LABELS),
            Sample(LARGE, uniform(0.5, 2.0)(1), labels=np.array([1, 3, 0])),
            Sample(HUGE, uniform(0.5, 2.0)(), labels=np.array([1, 0, 1, 0]), tol=(1e-6, 1e-7)),
        ],
        call=lambda z, c, labels: ops.SoftmaxCrossEntropyGrad(labels_of(z, labels))(z, c),
        domain=uniform(-3.0, 3.0),
        # With the forward's shift and logsumexp passed in (constant inputs: no gradient).
        forms=[
            lambda z, c, labels: ops.SoftmaxCrossEntropyGrad(labels_of(z, labels))(
                z, c, *shift_and_logsumexp(z)
            )
        ],
    ),
    # ---- stack, split, tuples
    OpSpec(
        ops.Stack,
        ops.stack,
        lambda *ts, axis: torch.stack(ts, dim=axis),
        [Sample(*[(2, 4)] * n, axis=axis) for n, axis in [(3, 0), (2, 1), (4, 2), (3, -1)]]
        + [Sample((3,), axis=0), Sample((), (), axis=0)],
        call=lambda *xs, axis: ops.stack(list(xs), axis),
        forms=[lambda *xs, axis: ops.Stack(axis)(ops.make_tuple(*xs))],
        errors=[Error([(2, 3), (2, 4)], {"axis": 0}, ValueError, r"^stack: ")],
    ),
    OpSpec(
        ops.Split,
        ops.split,
        lambda t, axis: torch.unbind(t, dim=axis),
        [
            Sample(shape, axis=axis)
            for shape, axis in [((3, 4), 0), ((3, 4), 1), ((2, 3, 4), 2), ((2, 3, 4), -2)]
        ],
        forms=[lambda x, axis: ops.Split(axis)(x)],
    ),
    OpSpec(
        ops.MakeTensorTuple,
        ops.make_tuple,
        lambda *ts: ts,
        [Sample((2, 3), (4,)), Sample((3,)), Sample((2,), (), (1, 2))],
        forms=[lambda *xs: ops.MakeTensorTuple()(*xs)],
    ),
    # An element of a tuple that is not just made (split's): the others get zero adjoints.
    OpSpec(
        ops.TupleGetItem,
        ops.tuple_get_item,
        lambda t, index: torch.unbind(t, 0)[index],
        [Sample((3, 4), index=1), Sample((2, 3), index=-1), Sample((1, 5), index=0)],
        call=lambda x, index: ops.tuple_get_item(ops.split(x, 0), index),
        forms=[
            lambda x, index: ops.split(x, 0)[index],
            lambda x, index: ops.TupleGetItem(index)(
                ops.make_tuple(*ops.split(x, 0)), fold_const=False
            ),
        ],
    ),
    OpSpec(
        ops.FusedAddScalars,
        ops.fused_add_scalars,
        lambda t, c0, c1: (t + c0, t + c1),
        [Sample((2, 3), c0=1.5, c1=-2.0), Sample((4,), c0=0.0, c1=3.0)],
        forms=[lambda x, c0, c1: ops.FusedAddScalars(c0, c1)(x)],
    ),
    # ---- flip, dilate, pad
    OpSpec(
        ops.Flip,
        ops.flip,
        lambda t, axes: torch.flip(t, tdims((axes,) if isinstance(axes, int) else axes, t.ndim)),
        [
            Sample(shape, axes=axes)
            for shape, axes in [
                ((3, 4), (0, 1)),
                ((3, 4), (0,)),
                ((3, 4), (1,)),
                ((2, 3, 4), (0, 2)),
                ((2, 3, 4), (-1,)),
                ((2, 3, 4), None),
                ((5,), 0),
            ]
        ],
        forms=[lambda x, axes: ops.Flip(axes)(x)],
    ),
    _dilation(
        ops.Dilate,
        ops.dilate,
        torch_dilate,
        DILATE_CASES,
        bad_axis=2,
        match=r"^dilate: axis 2 is out of range for 2 dimensions",
    ),
    _dilation(
        ops.UnDilate,
        ops.undilate,
        torch_undilate,
        UNDILATE_CASES,
        bad_axis=-3,
        match=r"^undilate: axis -3 is out of range",
        forms=[
            lambda x, axes, dilation: ops.undilate(
                ops.dilate(ops.undilate(x, axes, dilation), axes, dilation), axes, dilation
            )
        ],
    ),
    OpSpec(
        ops.Pad,
        ops.pad,
        lambda t, axes: F.pad(t, [p for pair in reversed(axes) for p in pair]),
        [
            Sample(shape, axes=pads)
            for shape, pads in [
                ((2, 3), ((1, 0), (2, 1))),
                ((3, 4), ((1, 2), (0, 3))),
                ((2, 3, 4), ((0, 0), (1, 1), (2, 0))),
                ((5,), ((3, 1),)),
                ((1, 4, 4, 2), ((0, 0), (2, 2), (2, 2), (0, 0))),
                ((3, 4), ((0, 0), (0, 0))),
            ]
        ],
        forms=[lambda x, axes: ops.Pad(axes)(x)],
        errors=[Error([(3, 4)], {"axes": ((1,),)}, ValueError, r"^pad: needs one")],
    ),
    # ---- convolution
    OpSpec(
        ops.Conv,
        ops.conv,
        torch_conv_any,
        [
            Sample((n, h, w, c_in), (k, k, c_in, c_out), stride=s, padding=p)
            for n, h, w, c_in, c_out, k, s, p in CONV_CASES
        ]
        + [Sample((1, 5, 6, 2), (3, 3, 2, 3))]
        # NCHW input and output (views of NHWC data) with a bias: nn.Conv's one op.
        + [
            Sample(
                (n, c_in, h, w), (k, k, c_in, c_out), (c_out,), stride=s, padding=p, layout="NCHW"
            )
            for n, h, w, c_in, c_out, k, s, p in CONV_CASES[::3]
        ],
        call=lambda x, w, *b, stride=1, padding=1, layout="NHWC": ops.conv(
            x, w, stride, padding, bias=b[0] if b else None, layout=layout
        ),
        forms=[
            lambda x, w, *b, stride=1, padding=1, layout="NHWC": ops.Conv(stride, padding, layout)(
                x, w, *b
            )
        ],
        tol=(1e-4, 1e-4),
        random=convolutions(),
        errors=[
            Error(
                [(1, 4, 4, 2), (3, 3, 3, 2)],
                {},
                ValueError,
                r"^conv: input channels 2 do not match weight channels 3 \(inputs: "
                r"\(1, 4, 4, 2\) float32 on \w+\(\), \(3, 3, 3, 2\) float32",
            ),
            Error(
                [(1, 4, 4, 2), (5, 5, 2, 2)],
                {"padding": 0},
                ValueError,
                r"^conv: kernel 5x5 is larger than the padded input 4x4",
            ),
            Error([(4, 4, 2), (3, 3, 2, 2)], {}, ValueError, r"^conv: needs a 4-D"),
            Error(
                [(1, 4, 4, 2), (3, 3, 2, 2)], {"stride": 0}, ValueError, r"^conv: need stride >= 1"
            ),
        ],
    ),
    OpSpec(
        ops.ConvWeightGrad,
        None,
        torch_conv_weight_gradient,
        [_conv_weight_sample(*case) for case in CONV_WEIGHT_CASES],
        call=lambda x, g, stride, padding, kernel: ops.ConvWeightGrad(stride, padding, kernel)(
            x, g
        ),
        tol=(1e-4, 1e-4),
        errors=[
            Error(
                [(1, 5, 5, 2), (1, 4, 4, 3)],
                {"stride": 1, "padding": 1, "kernel": (3, 3)},
                ValueError,
                r"^conv_weight_gradient: adjoint \(1, 4, 4, 3\) does not match the "
                r"output \(1, 5, 5\)",
            )
        ],
    ),
    OpSpec(
        ops.ConvInputGrad,
        None,
        torch_conv_input_gradient,
        [_conv_input_sample(*case) for case in CONV_WEIGHT_CASES],
        call=lambda g, w, stride, padding, size: ops.ConvInputGrad(stride, padding, size)(g, w),
        tol=(1e-4, 1e-4),
    ),
    # ---- indexing
    OpSpec(
        ops.GetItem,
        ops.getitem,
        torch_index,
        [Sample(shape, idxs=idx) for shape, idx in GETITEM_CASES],
        forms=[lambda x, idxs: x[idxs], lambda x, idxs: ops.GetItem(idxs)(x)],
        errors=[Error([(3, 4)], {"idxs": (0, 0, 0)}, IndexError, r"too many indices")],
        random=indexings(),
    ),
    OpSpec(
        ops.GetItemGradient,
        None,
        lambda t, idxs, shape: torch_scatter(t, idxs, shape),
        [
            Sample(np.zeros(shape)[idx].shape, idxs=idx, shape=shape)
            for shape, idx in GETITEM_CASES[:14:3]
        ],
        call=lambda g, idxs, shape: ops.GetItemGradient(idxs, shape)(g),
    ),
    OpSpec(
        ops.TakeRows,
        ops.take_rows,
        lambda t, indices: t[torch.tensor(indices)],
        [
            Sample((5, 3), indices=ROWS),
            Sample((5, 4), indices=ROWS),
            Sample((5, 2, 3), indices=ROWS),
            Sample((5,), indices=ROWS),
        ],
        forms=[lambda x, indices: ops.TakeRows(nd.RowIndices(indices, x.shape[0], x.device))(x)],
        errors=[
            Error([(5, 3)], {"indices": [0, 5]}, IndexError, r"\[0, 5\), got 0..5"),
            Error([(5, 3)], {"indices": [2, -1]}, IndexError, r"got -1..2"),
            Error([(5, 3)], {"indices": np.array([0.5, 1.0])}, ValueError, "whole numbers"),
            Error([(5, 3)], {"indices": np.array([[0, 1]])}, ValueError, "1-D"),
            Error([(5, 3)], {"indices": np.array(["a"])}, TypeError, "integers"),
        ],
    ),
    OpSpec(
        ops.AddRows,
        ops.add_rows,
        lambda t, indices, rows: torch.zeros((rows,) + t.shape[1:], dtype=t.dtype).index_add(
            0, torch.tensor(indices), t
        ),
        [
            Sample((6, 3), indices=ROWS, rows=5),
            Sample((6, 4), indices=ROWS, rows=5),
            Sample((6, 2, 3), indices=ROWS, rows=5),
        ],
        errors=[
            Error(
                [(2, 3)],
                {"indices": ROWS, "rows": 5},
                ValueError,
                r"^add_rows: .*2 rows of values for 6 indices",
            )
        ],
    ),
    # ---- fused layers
    OpSpec(
        ops.BatchNorm,
        ops.batch_norm,
        torch_batch_norm,
        [
            Sample((7, 3), (3,), (3,)),
            Sample((9, 4), (4,), (4,)),
            Sample((3, 4, 2, 5), (4,), (4,)),  # NCHW: features along axis 1
            Sample((3, 2, 4), (4,), (4,), axis=-1),
        ],
        forms=[lambda x, w, b, axis=1: ops.BatchNorm(axis=axis)(x, w, b)],
        domain=BN_X,
        tol=(1e-4, 1e-4),
        fd=Sample((2, 3, 2, 2), (3,), (3,)),
        errors=[
            Error(
                [(5, 3), (4,), (3,)],
                {},
                ValueError,
                r"^batch_norm: needs x with features along axis 1 .*\(5, 3\), \(4,\) "
                r"and \(3,\)",
            )
        ],
    ),
    OpSpec(
        ops.LSTMState,
        ops.lstm_state,
        torch_lstm_state,
        [Sample((2, 12), (2, 3)), Sample((3, 8), (3, 2))],
        domain=(uniform(-3.0, 3.0), REAL),
        forms=[ops.LSTMState()],
        errors=[
            Error(
                [(3, 7), (3, 2)],
                {},
                ValueError,
                r"^lstm_state: needs gates .*\(3, 7\) and \(3, 2\)",
            ),
            Error([(3, 8), (3, 3)], {}, ValueError, r"\(3, 8\) and \(3, 3\)"),
        ],
    ),
]

# Exported ops' functions that are not ops of their own: helpers for writing gradients, with
# their own tests in test_ops.py.
HELPER_FUNCTIONS = {"reduce_to_shape", "zeros_like_data"}

# Issue 16's ops, one spec file per op module (ops_reduce, ops_shape, ops_activation,
# ops_functional), joined here so that SPECS stays the one table.
from op_specs_activation import SPECS as _ACTIVATION_SPECS  # noqa: E402
from op_specs_functional import SPECS as _FUNCTIONAL_SPECS  # noqa: E402
from op_specs_reduce import SPECS as _REDUCE_SPECS  # noqa: E402
from op_specs_shape import SPECS as _SHAPE_SPECS  # noqa: E402

SPECS += _REDUCE_SPECS + _SHAPE_SPECS + _ACTIVATION_SPECS + _FUNCTIONAL_SPECS
