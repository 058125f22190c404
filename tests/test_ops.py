"""Every op of needle against PyTorch, forward and backward, through one helper.

``check_op`` runs a needle function on the device and the matching torch function (in
float64, on the same float32 inputs), compares the outputs, then back-propagates one random
adjoint through both and compares the gradient of every input. ``check_fd`` checks needle's
gradients against central finite differences in float64, and ``check_double_backward``
checks gradients of gradients (``backward(create_graph=True)``) against torch's.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import needle as ndl
from needle import backend_ndarray as nd
from needle import ops
from needle.ops import ops_logarithmic, ops_mathematic, ops_norm, ops_rnn, ops_tuple

HYPOTHESIS = settings(
    max_examples=15, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# ---- helpers ---------------------------------------------------------------------------
def rand(*shape, low=-2.0, high=2.0, dtype=np.float32):
    """Uniform samples in [low, high) as an array (also for shape ())."""
    return np.asarray(np.random.uniform(low, high, shape), dtype=dtype)


def away_from_zero(*shape, low=0.5, high=2.0):
    """Values with |x| in [low, high) and random sign (safe divisors)."""
    return rand(*shape, low=low, high=high) * np.where(np.random.rand(*shape) < 0.5, -1, 1)


def ties(*shape):
    """Small integers, so maxima and comparisons tie often."""
    return np.asarray(np.random.randint(-2, 3, size=shape), dtype=np.float32)


def _inputs(xs, dtype):
    """Each entry of `xs` is a shape (random in [-2, 2)) or an array."""
    return [rand(*x, dtype=dtype) if isinstance(x, tuple) else np.asarray(x, dtype=dtype)
            for x in xs]


def check_op(xs, torch_fn, ndl_fn, device, *, rtol=1e-5, atol=1e-5, grad_rtol=None,
             grad_atol=None, backward=True, dtype="float32"):
    """Compare ndl_fn on `device` with torch_fn (float64) forward and, for a random adjoint,
    the gradient of every input. `xs`: shapes (random inputs) or arrays, cast to `dtype`."""
    grad_rtol = rtol if grad_rtol is None else grad_rtol
    grad_atol = atol if grad_atol is None else grad_atol
    if dtype != "float32":
        needs_float64(device)
    xs = _inputs(xs, dtype)
    tx = [torch.tensor(x, dtype=torch.float64, requires_grad=backward) for x in xs]
    nx = [ndl.Tensor(x, device=device, dtype=dtype, requires_grad=backward) for x in xs]
    t_out = torch_fn(*tx)
    n_out = ndl_fn(*nx)
    assert isinstance(n_out, ndl.Tensor), type(n_out)
    assert n_out.shape == tuple(t_out.shape)
    assert n_out.dtype == dtype
    assert n_out.device == device
    np.testing.assert_allclose(n_out.numpy(), t_out.detach().numpy(), rtol=rtol, atol=atol,
                               err_msg="forward")
    if not backward:
        return
    out_grad = rand(*t_out.shape, low=-1, high=1, dtype=dtype)
    t_out.backward(torch.tensor(out_grad, dtype=torch.float64))
    n_out.backward(ndl.Tensor(out_grad, device=device, dtype=dtype, requires_grad=False))
    for i, (t, n) in enumerate(zip(tx, nx)):
        assert n.grad is not None, f"input {i} got no gradient"
        assert n.grad.shape == n.shape, f"gradient of input {i}: shape {n.grad.shape}"
        assert n.grad.dtype == dtype and n.grad.device == device
        expected = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
        np.testing.assert_allclose(n.grad.numpy(), expected, rtol=grad_rtol, atol=grad_atol,
                                   err_msg=f"gradient of input {i}")


def needs_float64(device):
    try:
        ndl.Tensor(np.zeros(1), device=device, dtype="float64")
    except (TypeError, RuntimeError, ValueError) as exc:
        pytest.skip(f"{device} has no float64: {exc}")


def check_fd(xs, ndl_fn, device, *, eps=1e-6, rtol=1e-5, atol=1e-6):
    """needle's gradients of sum(w * ndl_fn(*xs)) against central differences, in float64."""
    needs_float64(device)
    xs = _inputs(xs, np.float64)

    def forward(arrays, requires_grad=False):
        tensors = [ndl.Tensor(a, device=device, dtype="float64", requires_grad=requires_grad)
                   for a in arrays]
        return tensors, ndl_fn(*tensors)

    tensors, out = forward(xs, requires_grad=True)
    assert out.dtype == "float64"
    w = np.asarray(np.random.randn(*out.shape))
    out.backward(ndl.Tensor(w, device=device, dtype="float64", requires_grad=False))
    for i, x in enumerate(xs):
        numeric = np.zeros_like(x)
        for j in range(x.size):
            values = []
            for step in (eps, -eps):
                shifted = [a.copy() for a in xs]
                shifted[i].reshape(-1)[j] += step
                values.append(np.sum(forward(shifted)[1].numpy() * w))
            numeric.reshape(-1)[j] = (values[0] - values[1]) / (2 * eps)
        grad = tensors[i].grad
        assert grad is not None and grad.dtype == "float64", f"gradient of input {i}"
        np.testing.assert_allclose(grad.numpy(), numeric, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {i}")


def check_double_backward(xs, torch_fn, ndl_fn, device, *, rtol=1e-4, atol=1e-4):
    """Gradients g_i of sum(w * f(x)) taken with create_graph=True, then the gradients of
    sum_i sum(v_i * g_i), against torch.autograd.grad(create_graph=True)."""
    xs = _inputs(xs, np.float32)
    tx = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in xs]
    nx = [ndl.Tensor(x, device=device) for x in xs]
    t_out, n_out = torch_fn(*tx), ndl_fn(*nx)
    w = rand(*t_out.shape, low=-1, high=1)
    vs = [rand(*x.shape, low=-1, high=1) for x in xs]

    t_grads = torch.autograd.grad(t_out, tx, torch.tensor(w, dtype=torch.float64),
                                  create_graph=True)
    sum(torch.sum(g * torch.tensor(v, dtype=torch.float64)) for g, v in zip(t_grads, vs)).backward()

    n_out.backward(ndl.Tensor(w, device=device, requires_grad=False), create_graph=True)
    n_grads = [x.grad for x in nx]
    for i, (n, t) in enumerate(zip(n_grads, t_grads)):
        np.testing.assert_allclose(n.numpy(), t.detach().numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"first-order gradient of input {i}")
        assert n.requires_grad, f"first-order gradient of input {i} kept no graph"
    for x in nx:
        x.grad = None
    total = sum((g * ndl.Tensor(v, device=device, requires_grad=False)).sum()
                for g, v in zip(n_grads, vs))
    total.backward()
    for i, (n, t) in enumerate(zip(nx, tx)):
        got = n.grad.numpy() if n.grad is not None else np.zeros(n.shape)
        expected = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol,
                                   err_msg=f"second-order gradient of input {i}")


def tdims(axes, ndim):
    """needle axes (None, int or tuple) as a torch `dim` argument."""
    return tuple(range(ndim)) if axes is None else axes


def torch_index(t, idxs):
    """NumPy basic indexing (ints, slices with any step, Ellipsis) with torch autograd ops."""
    if not isinstance(idxs, tuple):
        idxs = (idxs,)
    if any(i is Ellipsis for i in idxs):
        pos = next(k for k, i in enumerate(idxs) if i is Ellipsis)
        idxs = idxs[:pos] + (slice(None),) * (t.ndim - len(idxs) + 1) + idxs[pos + 1:]
    idxs = idxs + (slice(None),) * (t.ndim - len(idxs))
    for axis in reversed(range(len(idxs))):  # last axis first, so axis numbers stay valid
        idx = idxs[axis]
        if isinstance(idx, slice):
            positions = list(range(*idx.indices(t.shape[axis])))
            t = t.index_select(axis, torch.tensor(positions, dtype=torch.long))
        else:
            t = t.select(axis, int(idx))
    return t


def torch_dilate(x, axes, dilation):
    axes = tuple(a % x.ndim for a in axes)
    shape = [d * (dilation + 1) if i in axes else d for i, d in enumerate(x.shape)]
    out = x.new_zeros(shape)
    out[tuple(slice(None, None, dilation + 1) if i in axes else slice(None)
              for i in range(x.ndim))] = x
    return out


def numpy_dilate(x, axes, dilation):
    axes = tuple(a % x.ndim for a in axes)
    shape = [d * (dilation + 1) if i in axes else d for i, d in enumerate(x.shape)]
    out = np.zeros(shape, dtype=x.dtype)
    out[tuple(slice(None, None, dilation + 1) if i in axes else slice(None)
              for i in range(x.ndim))] = x
    return out


def torch_conv(stride, padding):
    """needle's NHWC conv with (k, k, c_in, c_out) weights, through torch's NCHW conv2d."""
    def fn(x, w):
        # contiguous(): torch's float64 CPU conv backward rejects some permuted layouts.
        out = F.conv2d(x.permute(0, 3, 1, 2).contiguous(), w.permute(3, 2, 0, 1).contiguous(),
                       stride=stride, padding=padding)
        return out.permute(0, 2, 3, 1)
    return fn


# ---- completeness ----------------------------------------------------------------------
# Every Op class exported by the catalogue, and the test(s) that cover it.
TESTED_OPS = {
    "EWiseAdd", "AddScalar", "EWiseSub", "EWiseMul", "MulScalar", "EWiseDiv", "DivScalar",
    "PowerScalar", "EWisePow", "Negate", "Transpose", "Reshape", "BroadcastTo", "Summation",
    "MatMul", "Log", "Exp", "ReLU", "Tanh", "Sigmoid", "Sqrt", "Max", "Maximum", "Stack",
    "Split", "Flip", "Dilate", "UnDilate", "Pad", "Conv", "ConvWeightGrad", "GetItem",
    "GetItemGradient",
    "LogSoftmax", "LogSumExp", "MakeTensorTuple", "TupleGetItem", "FusedAddScalars", "AsType",
    "SoftmaxCrossEntropy", "SoftmaxCrossEntropyGrad", "BatchNorm", "TakeRows", "AddRows",
    "LSTMState",
}


def test_every_exported_op_is_tested():
    exported = set()
    for module in (ops_mathematic, ops_logarithmic, ops_norm, ops_rnn, ops_tuple):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, ndl.autograd.Op):
                exported.add(name)
    assert exported - TESTED_OPS == set(), "ops without a test in this file"


# ---- elementwise binary ops, broadcasting --------------------------------------------------
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


def _binary_cases():
    same = lambda a, b: (a, b)  # noqa: E731
    return [
        pytest.param(lambda a, b: a + b, lambda a, b: a + b, same, id="add"),
        pytest.param(lambda a, b: a - b, lambda a, b: a - b, same, id="sub"),
        pytest.param(lambda a, b: a * b, lambda a, b: a * b, same, id="mul"),
        pytest.param(lambda a, b: a / b, lambda a, b: a / b,
                     lambda a, b: (a, away_from_zero(*b.shape)), id="div"),
        pytest.param(lambda a, b: a ** b, lambda a, b: a ** b,
                     lambda a, b: (rand(*a.shape, low=0.5, high=2.0), b), id="pow"),
        pytest.param(torch.maximum, ops.maximum, same, id="maximum"),
    ]


@pytest.mark.parametrize("torch_fn, ndl_fn, make", _binary_cases())
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_binary_broadcast(shapes, torch_fn, ndl_fn, make, device):
    a, b = make(rand(*shapes[0]), rand(*shapes[1]))
    check_op([a, b], torch_fn, ndl_fn, device)


@pytest.mark.parametrize("ndl_fn, torch_fn", [
    (ops.add, torch.add), (ops.EWiseAdd(), torch.add), (ndl.add, torch.add),
    (ops.subtract, torch.sub), (ops.EWiseSub(), torch.sub),
    (ops.multiply, torch.mul), (ops.EWiseMul(), torch.mul),
    (ops.divide, torch.div), (ops.EWiseDiv(), torch.div),
    (ops.power, torch.pow), (ops.EWisePow(), torch.pow),
    (ops.Maximum(), torch.maximum),
], ids=lambda f: getattr(f, "__name__", type(f).__name__))
def test_binary_function_forms(ndl_fn, torch_fn, device):
    check_op([rand(2, 3, low=0.5, high=2), away_from_zero(3)], torch_fn, ndl_fn, device)


@HYPOTHESIS
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4,
                                                max_side=3),
       op=st.sampled_from(["add", "sub", "mul", "div", "maximum"]))
def test_binary_broadcast_random_shapes(shapes, op, device):
    a_shape, b_shape = shapes.input_shapes
    fns = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
           "div": lambda a, b: a / b}
    b = away_from_zero(*b_shape) if op == "div" else rand(*b_shape)
    if op == "maximum":
        check_op([rand(*a_shape), b], torch.maximum, ops.maximum, device)
    else:
        check_op([rand(*a_shape), b], fns[op], fns[op], device)


def test_maximum_ties_split_gradient(device):
    a, b = ties(4, 5), ties(4, 5)
    assert (a == b).any()
    check_op([a, b], torch.maximum, ops.maximum, device)
    check_op([ties(3, 1), ties(4)], torch.maximum, ops.maximum, device)


@pytest.mark.parametrize("c", [0.0, 1.0, -0.5])
def test_maximum_scalar(c, device):
    x = ties(4, 5) * 0.5  # includes exact ties with c
    assert (x == c).any()
    check_op([x], lambda t: torch.maximum(t, torch.tensor(c, dtype=t.dtype)),
             lambda t: ops.maximum(t, c), device)
    check_op([x], lambda t: torch.maximum(t, torch.tensor(c, dtype=t.dtype)),
             lambda t: ops.Maximum(c)(t), device)


def test_input_used_twice_accumulates(device):
    check_op([(3, 4)], lambda x: x * x + x.exp() * x - x, lambda x: x * x + x.exp() * x - x,
             device)
    check_op([(3, 4), (4,)], lambda a, b: (a + b) * (a - b) / (b * b + 1),
             lambda a, b: (a + b) * (a - b) / (b * b + 1), device)


# ---- scalar ops and the Tensor operators -------------------------------------------------
SCALAR_EXPRESSIONS = [
    ("x + 1.5", lambda x: x + 1.5), ("1.5 + x", lambda x: 1.5 + x),
    ("x - 0.7", lambda x: x - 0.7), ("2 - x", lambda x: 2 - x),
    ("x * -3", lambda x: x * -3), ("3 * x", lambda x: 3 * x),
    ("x / 4", lambda x: x / 4), ("2 / x", lambda x: 2 / x),
    ("2 ** x", lambda x: 2 ** x), ("0.5 ** x", lambda x: 0.5 ** x),
    ("x ** 2", lambda x: x ** 2), ("x ** 3", lambda x: x ** 3),
    ("-x", lambda x: -x), ("-(x * 2) + 1", lambda x: -(x * 2) + 1),
]


@pytest.mark.parametrize("fn", [f for _, f in SCALAR_EXPRESSIONS],
                         ids=[n for n, _ in SCALAR_EXPRESSIONS])
@pytest.mark.parametrize("shape", [(3, 4), (5,), ()], ids=str)
def test_tensor_scalar_operators(fn, shape, device):
    check_op([away_from_zero(*shape)], fn, fn, device)


@pytest.mark.parametrize("scalar_type", [np.float32, np.float64, np.int64])
def test_numpy_scalar_operands(scalar_type, device):
    """NumPy scalars act like Python numbers on either side (they must not turn the result
    into a NumPy array, which would silently cut the graph)."""
    c = scalar_type(2)
    for fn in (lambda x: c + x, lambda x: c - x, lambda x: c * x, lambda x: c / x,
               lambda x: x * c, lambda x: x - c, lambda x: x / c):
        check_op([away_from_zero(2, 3)], lambda t: fn(t), fn, device)


@pytest.mark.parametrize("name, ndl_fn, torch_fn", [
    ("add_scalar", lambda x: ops.add_scalar(x, 1.5), lambda x: x + 1.5),
    ("AddScalar", lambda x: ops.AddScalar(-2)(x), lambda x: x - 2),
    ("mul_scalar", lambda x: ops.mul_scalar(x, -0.5), lambda x: x * -0.5),
    ("MulScalar", lambda x: ops.MulScalar(3)(x), lambda x: x * 3),
    ("divide_scalar", lambda x: ops.divide_scalar(x, 4.0), lambda x: x / 4.0),
    ("DivScalar", lambda x: ops.DivScalar(-0.25)(x), lambda x: x / -0.25),
    ("power_scalar", lambda x: ops.power_scalar(x, 3), lambda x: x ** 3),
    ("negate", ops.negate, torch.neg),
    ("Negate", ops.Negate(), torch.neg),
])
def test_scalar_op_function_forms(name, ndl_fn, torch_fn, device):
    check_op([(4, 3)], torch_fn, ndl_fn, device)


@pytest.mark.parametrize("exponent", [0, 1, 2, 3, -1, -2, 0.5, -0.5, 1.5, 2.5, -1.5])
def test_power_scalar_positive_inputs(exponent, device):
    x = rand(3, 5, low=0.3, high=2.5)
    check_op([x], lambda t: t ** exponent, lambda t: ops.PowerScalar(exponent)(t), device,
             rtol=2e-5)


@pytest.mark.parametrize("exponent", [2, 3, 4, -1, -3])
def test_power_scalar_integer_exponent_negative_inputs(exponent, device):
    check_op([away_from_zero(3, 5)], lambda t: t ** exponent, lambda t: t ** exponent, device,
             rtol=2e-5)


def test_ewise_pow_gradient_both_inputs(device):
    check_op([rand(3, 4, low=0.2, high=3), rand(3, 4, low=-2, high=2)], torch.pow,
             lambda a, b: a ** b, device, rtol=2e-5)


@pytest.mark.parametrize("op", ["==", "!=", ">=", ">", "<=", "<"])
@pytest.mark.parametrize("other_kind", ["tensor", "broadcast", "scalar"])
def test_comparisons_give_constant_tensors(op, other_kind, device):
    x = ties(3, 4)
    y = {"tensor": ties(3, 4), "broadcast": ties(4), "scalar": 1.0}[other_kind]
    compare = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b,
               ">=": lambda a, b: a >= b, ">": lambda a, b: a > b,
               "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}[op]
    nx = ndl.Tensor(x, device=device)
    ny = ndl.Tensor(y, device=device) if other_kind != "scalar" else y
    out = compare(nx, ny)
    assert isinstance(out, ndl.Tensor)
    assert not out.requires_grad and out.op is None
    assert out.dtype == "float32"
    np.testing.assert_array_equal(out.numpy(), compare(x, y).astype(np.float32))


# ---- shape ops --------------------------------------------------------------------------
@pytest.mark.parametrize("shape, axes", [
    ((3, 4), None), ((2, 3, 4), None), ((2, 3, 4, 5), None),
    ((2, 3, 4), (0, 1)), ((2, 3, 4), (0, 2)), ((2, 3, 4), (2, 0)), ((2, 3, 4, 5), (1, 3)),
    ((2, 3, 4, 5), (-1, -3)), ((3, 4), (1, 1)),
], ids=str)
def test_transpose(shape, axes, device):
    dims = (-2, -1) if axes is None else axes
    check_op([shape], lambda t: t.transpose(*dims), lambda t: ops.transpose(t, axes), device)
    check_op([shape], lambda t: t.transpose(*dims), lambda t: ops.Transpose(axes)(t), device)


def test_transpose_method_and_T(device):
    check_op([(2, 3, 4)], lambda t: t.transpose(-2, -1), lambda t: t.T, device)
    check_op([(2, 3, 4)], lambda t: t.transpose(0, 2), lambda t: t.transpose((0, 2)), device)


@pytest.mark.parametrize("shape, new_shape", [
    ((3, 4), (12,)), ((3, 4), (4, 3)), ((2, 3, 4), (6, -1)), ((2, 3, 4), (-1,)),
    ((2, 3, 4), (2, -1, 2)), ((12,), (2, 3, 2)), ((1,), ()), ((), (1, 1)), ((4, 1), (1, 4)),
], ids=str)
def test_reshape(shape, new_shape, device):
    check_op([shape], lambda t: t.reshape(new_shape), lambda t: ops.reshape(t, new_shape), device)
    check_op([shape], lambda t: t.reshape(new_shape), lambda t: t.reshape(*new_shape), device)


def test_reshape_of_transposed_view(device):
    check_op([(3, 4)], lambda t: t.T.reshape(2, 6), lambda t: t.transpose().reshape((2, 6)),
             device)


@pytest.mark.parametrize("shape, new_shape", [
    ((3, 1), (3, 4)), ((1, 4), (3, 4)), ((4,), (3, 4)), ((1,), (2, 3)), ((), (2, 3)),
    ((3, 1, 5), (2, 3, 4, 5)), ((1, 1), (1, 1)), ((2, 3), (2, 3)), ((1, 3, 1), (1, 3, 2)),
], ids=str)
def test_broadcast_to(shape, new_shape, device):
    check_op([shape], lambda t: t.broadcast_to(new_shape),
             lambda t: ops.broadcast_to(t, new_shape), device)
    check_op([shape], lambda t: t.broadcast_to(new_shape),
             lambda t: ops.BroadcastTo(new_shape)(t), device)


SUM_CASES = [
    ((3, 4), None), ((3, 4), 0), ((3, 4), 1), ((3, 4), -1), ((2, 3, 4), (0, 2)),
    ((2, 3, 4), (1,)), ((2, 3, 4), (0, 1, 2)), ((2, 3, 4), (-1, 0)), ((5,), 0), ((2, 1, 3), 1),
]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("shape, axes", SUM_CASES, ids=str)
def test_summation(shape, axes, keepdims, device):
    check_op([shape], lambda t: torch.sum(t, dim=tdims(axes, t.ndim), keepdim=keepdims),
             lambda t: ops.summation(t, axes=axes, keepdims=keepdims), device)
    check_op([shape], lambda t: torch.sum(t, dim=tdims(axes, t.ndim), keepdim=keepdims),
             lambda t: t.sum(axes, keepdims=keepdims), device)


@HYPOTHESIS
@given(data=st.data())
def test_reductions_random_axes(data, device):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), label="shape")
    axes = data.draw(st.one_of(st.none(), st.lists(st.integers(0, len(shape) - 1), min_size=1,
                                                   unique=True).map(tuple)), label="axes")
    keepdims = data.draw(st.booleans(), label="keepdims")
    dim = lambda t: tdims(axes, t.ndim)  # noqa: E731
    check_op([shape], lambda t: torch.sum(t, dim=dim(t), keepdim=keepdims),
             lambda t: ops.summation(t, axes, keepdims), device)
    check_op([shape], lambda t: torch.amax(t, dim=dim(t), keepdim=keepdims),
             lambda t: ops.max(t, axes, keepdims), device)
    check_op([shape], lambda t: torch.logsumexp(t, dim=dim(t), keepdim=keepdims),
             lambda t: ops.logsumexp(t, axes, keepdims), device)


@HYPOTHESIS
@given(data=st.data())
def test_reshape_transpose_random(data, device):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=4, max_side=4), label="shape")
    i, j = data.draw(st.tuples(st.integers(0, len(shape) - 1), st.integers(0, len(shape) - 1)))
    size = int(np.prod(shape))
    first = data.draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
    check_op([shape], lambda t: t.transpose(i, j).reshape(first, -1),
             lambda t: ops.reshape(ops.transpose(t, (i, j)), (first, -1)), device)


# ---- matmul -----------------------------------------------------------------------------
MATMUL_SHAPES = [
    ((3, 4), (4, 5)), ((1, 4), (4, 1)), ((5, 1), (1, 3)), ((7, 16), (16, 9)),
    ((2, 3, 4), (2, 4, 5)), ((2, 3, 3, 4), (2, 3, 4, 2)),
    ((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)),
    ((1, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (1, 3, 4, 2)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul(shapes, device):
    check_op(list(shapes), torch.matmul, lambda a, b: a @ b, device, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("shapes", [[(4,), (4, 3)], [(3, 4), (4,)], [(4,), (4,)],
                                    [(2, 3, 4), (4,)], [(4,), (2, 4, 3)]])
def test_matmul_vector_operands(shapes, device):
    # 1-D operands act as a row (left) or column (right) vector, then drop, as in torch.
    check_op(shapes, torch.matmul, lambda a, b: a @ b, device, atol=2e-5)


def test_matmul_forms(device):
    check_op([(3, 4), (4, 2)], torch.matmul, ops.matmul, device)
    check_op([(3, 4), (4, 2)], torch.matmul, ops.MatMul(), device)
    check_op([(3, 4), (4, 2)], torch.matmul, ndl.matmul, device)
    check_op([(2, 3), (3, 4)], lambda a, b: a.T @ a @ b,
             lambda a, b: a.transpose() @ a @ b, device)  # transposed (non-compact) operand


@HYPOTHESIS
@given(batch=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3),
       mnp=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)))
def test_matmul_random_shapes(batch, mnp, device):
    (a_batch, b_batch), (m, n, p) = batch.input_shapes, mnp
    check_op([a_batch + (m, n), b_batch + (n, p)], torch.matmul, ops.matmul, device,
             atol=2e-5)


# ---- elementwise functions ----------------------------------------------------------------
UNARY = [
    ("log", torch.log, ops.log, (0.1, 3.0)),
    ("Log", torch.log, ops.Log(), (0.1, 3.0)),
    ("log_method", torch.log, lambda t: t.log(), (0.1, 3.0)),
    ("exp", torch.exp, ops.exp, (-3.0, 3.0)),
    ("Exp", torch.exp, ops.Exp(), (-3.0, 3.0)),
    ("exp_method", torch.exp, lambda t: t.exp(), (-3.0, 3.0)),
    ("relu", torch.relu, ops.relu, (-2.0, 2.0)),
    ("ReLU", torch.relu, ops.ReLU(), (-2.0, 2.0)),
    ("relu_method", torch.relu, lambda t: t.relu(), (-2.0, 2.0)),
    ("tanh", torch.tanh, ops.tanh, (-3.0, 3.0)),
    ("Tanh", torch.tanh, ops.Tanh(), (-3.0, 3.0)),
    ("tanh_method", torch.tanh, lambda t: t.tanh(), (-3.0, 3.0)),
    ("sigmoid", torch.sigmoid, ops.sigmoid, (-6.0, 6.0)),
    ("Sigmoid", torch.sigmoid, ops.Sigmoid(), (-6.0, 6.0)),
    ("sigmoid_method", torch.sigmoid, lambda t: t.sigmoid(), (-6.0, 6.0)),
    ("sqrt", torch.sqrt, ops.sqrt, (0.1, 3.0)),
    ("Sqrt", torch.sqrt, ops.Sqrt(), (0.1, 3.0)),
    ("sqrt_method", torch.sqrt, lambda t: t.sqrt(), (0.1, 3.0)),
]


@pytest.mark.parametrize("torch_fn, ndl_fn, domain", [pytest.param(*c[1:], id=c[0]) for c in UNARY])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4), ()], ids=str)
def test_unary(shape, torch_fn, ndl_fn, domain, device):
    check_op([rand(*shape, low=domain[0], high=domain[1])], torch_fn, ndl_fn, device)


def test_relu_gradient_at_zero_is_zero(device):
    x = np.array([-1.0, 0.0, 0.0, 2.0, -0.0], dtype=np.float32)
    check_op([x], torch.relu, ops.relu, device)


def test_saturating_functions_at_large_inputs(device):
    x = np.array([-1000.0, -100.0, -30.0, -10.0, 0.0, 10.0, 30.0, 100.0, 1000.0],
                 dtype=np.float32)
    check_op([x], torch.sigmoid, ops.sigmoid, device)
    check_op([x], torch.tanh, ops.tanh, device)
    n = ops.sigmoid(ndl.Tensor(x, device=device))
    assert np.all(np.isfinite(n.numpy()))


def test_exp_and_log_wide_range(device):
    check_op([np.array([-80.0, -20.0, 0.0, 20.0, 80.0], dtype=np.float32)], torch.exp, ops.exp,
             device)
    check_op([np.array([1e-30, 1e-5, 1.0, 1e5, 1e30], dtype=np.float32)], torch.log, ops.log,
             device)


# ---- log-sum-exp and log-softmax ----------------------------------------------------------
LSE_CASES = [((3, 4), None), ((3, 4), (1,)), ((3, 4), (0,)), ((3, 4), 1), ((2, 3, 4), (0, 2)),
             ((2, 3, 4), (-1,)), ((2, 3, 4), (0, 1, 2)), ((5,), None)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("shape, axes", LSE_CASES, ids=str)
def test_logsumexp(shape, axes, keepdims, device):
    check_op([rand(*shape, low=-4, high=4)],
             lambda t: torch.logsumexp(t, dim=tdims(axes, t.ndim), keepdim=keepdims),
             lambda t: ops.logsumexp(t, axes=axes, keepdims=keepdims), device)
    check_op([rand(*shape, low=-4, high=4)],
             lambda t: torch.logsumexp(t, dim=tdims(axes, t.ndim), keepdim=keepdims),
             lambda t: ops.LogSumExp(axes, keepdims)(t), device)


@pytest.mark.parametrize("offset", [1000.0, -1000.0, 80.0])
def test_logsumexp_large_values_do_not_overflow(offset, device):
    x = rand(3, 5) + np.float32(offset)
    x[1, :] = offset  # a row of equal large values
    check_op([x], lambda t: torch.logsumexp(t, dim=1), lambda t: ops.logsumexp(t, (1,)), device,
             rtol=1e-6, atol=2e-4)
    check_op([x], lambda t: torch.logsumexp(t, dim=(0, 1)), lambda t: ops.logsumexp(t), device,
             rtol=1e-6, atol=2e-4)


@pytest.mark.filterwarnings("ignore:divide by zero")  # log(0) for the all -inf row
def test_logsumexp_with_minus_infinity(device):
    x = np.array([[-np.inf, -np.inf, -np.inf], [1.0, -np.inf, 2.0], [0.5, 0.25, -1.0]],
                 dtype=np.float32)
    out = ops.logsumexp(ndl.Tensor(x, device=device), (1,))
    expected = torch.logsumexp(torch.tensor(x, dtype=torch.float64), dim=1).numpy()
    assert out.numpy()[0] == -np.inf
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    # Rows with some finite entries still have softmax gradients (0 at the -inf entries).
    check_op([x[1:]], lambda t: torch.logsumexp(t, dim=1), lambda t: ops.logsumexp(t, (1,)),
             device)


@pytest.mark.parametrize("shape, axis", [((3, 5), -1), ((3, 5), 0), ((3, 5), 1),
                                         ((2, 3, 4), 1), ((2, 3, 4), -1), ((6,), 0)], ids=str)
def test_logsoftmax(shape, axis, device):
    check_op([rand(*shape, low=-4, high=4)], lambda t: torch.log_softmax(t, dim=axis),
             lambda t: ops.logsoftmax(t, axis), device)
    check_op([rand(*shape, low=-4, high=4)], lambda t: torch.log_softmax(t, dim=axis),
             lambda t: ops.LogSoftmax(axis)(t), device)


def test_logsoftmax_default_axis_and_large_values(device):
    check_op([rand(4, 3) + 1000], lambda t: torch.log_softmax(t, dim=-1), ops.logsoftmax, device,
             atol=2e-4)
    check_op([rand(4, 3) - 1000], lambda t: torch.log_softmax(t, dim=-1), ops.logsoftmax, device,
             atol=2e-4)


# ---- softmax cross-entropy -----------------------------------------------------------------
LABELS = np.array([0, 4, 2, 2, 1, 3, 4])


def needle_ce(t, labels=LABELS):
    return ops.softmax_cross_entropy(t, labels)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_cross_entropy(dtype, device):
    ce = lambda t: F.cross_entropy(t, torch.tensor(LABELS))  # noqa: E731
    check_op([rand(7, 5, low=-4, high=4)], ce, needle_ce, device, dtype=dtype)
    check_op([rand(7, 5) * 1000], ce, needle_ce, device, dtype=dtype, atol=1e-3)  # no overflow
    check_op([rand(7, 5, low=-4, high=4)], ce,
             lambda t: ops.SoftmaxCrossEntropy(ops.ClassLabels(LABELS, 5, t.device, t.dtype))(t),
             device, dtype=dtype)
    check_op([rand(7, 5, low=-4, high=4)], ce,  # labels as a float Tensor, as loaders give
             lambda t: ops.softmax_cross_entropy(t, ndl.Tensor(LABELS, device=device)),
             device, dtype=dtype)


def test_softmax_cross_entropy_finite_differences(device):
    check_fd([rand(7, 5, low=-3, high=3)], needle_ce, device)
    # The gradient op against differences too, in both inputs (logits and the adjoint).
    check_fd([rand(7, 5, low=-3, high=3), rand(low=0.5, high=2)],
             lambda z, c: ops.SoftmaxCrossEntropyGrad(
                 ops.ClassLabels(LABELS, 5, z.device, z.dtype))(z, c), device)


def test_softmax_cross_entropy_double_backward(device):
    check_double_backward([rand(7, 5, low=-3, high=3)],
                          lambda t: F.cross_entropy(t, torch.tensor(LABELS)), needle_ce, device)
    # Scaled by a second input: its second-order gradient goes through the adjoint's.
    check_double_backward([rand(7, 5, low=-3, high=3), rand(1, low=0.5, high=2)],
                          lambda t, a: F.cross_entropy(t, torch.tensor(LABELS)) * a * a,
                          lambda t, a: needle_ce(t) * a * a, device)


def test_softmax_cross_entropy_past_exact_float32_positions(device, monkeypatch):
    """Logits of more than 2^24 float32 elements cannot have every label position as an
    exact float32: the labels become a one-hot array instead (the limit lowered here)."""
    monkeypatch.setattr(ops.ClassLabels, "exact_float32", 20)
    labels = ops.ClassLabels(LABELS, 5, device, "float32")
    assert labels.positions is None and labels.one_hot.shape == (7, 5)
    assert ops.ClassLabels(LABELS, 5, device, "float64").positions is not None
    ce = lambda t: F.cross_entropy(t, torch.tensor(LABELS))  # noqa: E731
    check_op([rand(7, 5, low=-4, high=4)], ce, needle_ce, device)
    check_fd([rand(7, 5, low=-3, high=3), rand(low=0.5, high=2)],  # float64: positions
             lambda z, c: ops.SoftmaxCrossEntropyGrad(
                 ops.ClassLabels(LABELS, 5, z.device, z.dtype))(z, c), device)
    check_double_backward([rand(7, 5, low=-3, high=3), rand(1, low=0.5, high=2)],
                          lambda t, a: F.cross_entropy(t, torch.tensor(LABELS)) * a * a,
                          lambda t, a: needle_ce(t) * a * a, device)


def test_softmax_cross_entropy_rejects_mismatched_labels(device):
    z = ndl.Tensor(rand(7, 5), device=device)
    with pytest.raises(IndexError, match=r"\[0, 5\), got 0..5"):  # a label past the classes
        ops.softmax_cross_entropy(z, np.array([0, 4, 2, 2, 1, 3, 5]))
    with pytest.raises(ValueError, match=r"logits \(7, 5\) for 6 labels"):
        ops.softmax_cross_entropy(z, LABELS[:6])
    with pytest.raises(ValueError, match="whole numbers"):
        ops.softmax_cross_entropy(z, LABELS + 0.5)


# ---- rows by index ---------------------------------------------------------------------------
ROWS = np.array([3, 0, 3, 1, 3, 4])  # repeats, and row 2 never taken


@pytest.mark.parametrize("shape", [(5, 4), (5, 2, 3), (5,)], ids=str)
def test_take_rows(shape, device):
    check_op([shape], lambda t: t[torch.tensor(ROWS)], lambda t: ops.take_rows(t, ROWS), device)
    check_op([shape], lambda t: t[torch.tensor(ROWS)],
             lambda t: ops.TakeRows(nd.RowIndices(ROWS, 5, device))(t), device)


@pytest.mark.parametrize("shape", [(6, 4), (6, 2, 3)], ids=str)
def test_add_rows(shape, device):
    def torch_add_rows(t):
        return torch.zeros((5,) + t.shape[1:], dtype=t.dtype).index_add(0, torch.tensor(ROWS), t)

    check_op([shape], torch_add_rows, lambda t: ops.add_rows(t, ROWS, 5), device)


def test_take_rows_gradients_of_gradients(device):
    check_fd([rand(5, 3)], lambda t: ops.take_rows(t, ROWS) * ops.take_rows(t, ROWS), device)
    check_double_backward([rand(5, 3)], lambda t: t[torch.tensor(ROWS)] ** 3,
                          lambda t: ops.take_rows(t, ROWS) ** 3, device)
    check_double_backward([rand(6, 3)],
                          lambda t: torch.zeros(5, 3, dtype=t.dtype).index_add(
                              0, torch.tensor(ROWS), t) ** 3,
                          lambda t: ops.add_rows(t, ROWS, 5) ** 3, device)


def test_take_rows_rejects_bad_indices(device):
    table = ndl.Tensor(rand(5, 3), device=device)
    with pytest.raises(IndexError, match=r"\[0, 5\), got 0..5"):
        ops.take_rows(table, [0, 5])
    with pytest.raises(IndexError, match=r"got -1..2"):
        ops.take_rows(table, [2, -1])
    with pytest.raises(ValueError, match="whole numbers"):
        ops.take_rows(table, np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        ops.take_rows(table, np.array([[0, 1]]))
    with pytest.raises(TypeError, match="integers"):
        ops.take_rows(table, np.array(["a"]))
    with pytest.raises(ValueError, match="2 rows of values for 6 indices"):
        ops.add_rows(ndl.Tensor(rand(2, 3), device=device), ROWS, 5)


# ---- LSTM state update ------------------------------------------------------------------------
def torch_lstm_state(gates, c):
    i, f, g, o = torch.chunk(gates, 4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.stack([torch.sigmoid(o) * torch.tanh(c_new), c_new])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lstm_state(dtype, device):
    """The cell update and its gradients in the gates and the cell state (on NDArrays when no
    graph is recorded) against torch."""
    check_op([rand(3, 8, low=-3, high=3), rand(3, 2)], torch_lstm_state, ops.lstm_state, device,
             dtype=dtype)


def test_lstm_state_finite_differences_and_double_backward(device):
    check_fd([rand(2, 12, low=-2, high=2), rand(2, 3)], ops.lstm_state, device)
    check_double_backward([rand(2, 12, low=-2, high=2), rand(2, 3)], torch_lstm_state,
                          ops.lstm_state, device)


def test_lstm_state_rejects_bad_shapes(device):
    with pytest.raises(ValueError, match=r"\(3, 7\) and \(3, 2\)"):
        ops.lstm_state(ndl.Tensor(rand(3, 7), device=device), ndl.Tensor(rand(3, 2), device=device))
    with pytest.raises(ValueError, match=r"\(3, 8\) and \(3, 3\)"):
        ops.lstm_state(ndl.Tensor(rand(3, 8), device=device), ndl.Tensor(rand(3, 3), device=device))


# ---- batch norm -----------------------------------------------------------------------------
def torch_batch_norm(x, w, b):
    return F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm(dtype, device):
    """Training-mode batch norm and its gradient in x, weight and bias (computed on NDArrays
    when no graph is recorded) against torch; the batch statistics it keeps, against NumPy."""
    x = rand(9, 4, low=-3, high=3) + np.arange(4, dtype=np.float32)
    check_op([x, rand(4, low=0.5, high=2), rand(4)], torch_batch_norm, ops.batch_norm, device,
             dtype=dtype, rtol=1e-4, atol=1e-4)
    y = ops.BatchNorm(1e-5)(ndl.Tensor(x, device=device, dtype=dtype),
                            ndl.Tensor(np.ones(4), device=device, dtype=dtype),
                            ndl.Tensor(np.zeros(4), device=device, dtype=dtype))
    np.testing.assert_allclose(y.saved.mean.numpy(), x.astype(dtype).mean(0), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(y.saved.var.numpy(), x.astype(dtype).var(0), rtol=1e-5, atol=1e-6)


def test_batch_norm_over_nchw_channels(device):
    """Features along axis 1 of an (N, C, H, W) array, normalised over N, H and W."""
    x = rand(3, 4, 2, 5, low=-3, high=3) + np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)
    check_op([x, rand(4, low=0.5, high=2), rand(4)], torch_batch_norm, ops.batch_norm, device,
             rtol=1e-4, atol=1e-4)
    check_fd([rand(2, 3, 2, 2, low=-2, high=2), rand(3, low=0.5, high=2), rand(3)],
             ops.batch_norm, device, rtol=1e-4, atol=1e-5)
    check_double_backward([rand(2, 3, 2, 2, low=-2, high=2), rand(3, low=0.5, high=2), rand(3)],
                          lambda x, w, b: torch_batch_norm(x * x, w, b) ** 2,
                          lambda x, w, b: ops.batch_norm(x * x, w, b) ** 2, device)
    # Another feature axis: the last one of (rows, cols, features).
    check_op([rand(3, 2, 4), rand(4, low=0.5, high=2), rand(4)],
             lambda x, w, b: torch_batch_norm(x.permute(0, 2, 1), w, b).permute(0, 2, 1),
             lambda x, w, b: ops.batch_norm(x, w, b, axis=-1), device, rtol=1e-4, atol=1e-4)


def test_batch_norm_finite_differences(device):
    check_fd([rand(7, 3, low=-2, high=2), rand(3, low=0.5, high=2), rand(3)], ops.batch_norm,
             device, rtol=1e-4, atol=1e-5)


def test_batch_norm_double_backward(device):
    # With create_graph the gradient is built from Tensor ops: its own gradients are checked.
    # (Squared, so that every first-order gradient depends on the inputs: the bias's
    # gradient of plain batch_norm is the constant sum of the adjoint.)
    check_double_backward([rand(6, 3, low=-2, high=2), rand(3, low=0.5, high=2), rand(3)],
                          lambda x, w, b: torch_batch_norm(x * x, w, b) ** 2,
                          lambda x, w, b: ops.batch_norm(x * x, w, b) ** 2, device)


def test_batch_norm_rejects_bad_shapes(device):
    x = ndl.Tensor(rand(5, 3), device=device)
    with pytest.raises(ValueError, match=r"axis 1 .*\(5, 3\), \(4,\) and \(3,\)"):
        ops.batch_norm(x, ndl.Tensor(rand(4), device=device), ndl.Tensor(rand(3), device=device))


# ---- max ----------------------------------------------------------------------------------
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("shape, axes", SUM_CASES, ids=str)
def test_max(shape, axes, keepdims, device):
    check_op([shape], lambda t: torch.amax(t, dim=tdims(axes, t.ndim), keepdim=keepdims),
             lambda t: ops.max(t, axes=axes, keepdims=keepdims), device)
    check_op([shape], lambda t: torch.amax(t, dim=tdims(axes, t.ndim), keepdim=keepdims),
             lambda t: ops.Max(axes, keepdims)(t), device)


@pytest.mark.parametrize("axes", [None, 0, 1, (0, 1)], ids=str)
def test_max_ties_share_gradient(axes, device):
    x = ties(5, 6)
    x[0, :] = 1.0  # a whole row tied
    check_op([x], lambda t: torch.amax(t, dim=tdims(axes, t.ndim)),
             lambda t: t.max(axes), device)


# ---- stack and split ----------------------------------------------------------------------
@pytest.mark.parametrize("n, shape, axis", [(3, (2, 4), 0), (2, (2, 4), 1), (4, (2, 4), 2),
                                            (3, (2, 4), -1), (1, (3,), 0), (2, (), 0)], ids=str)
def test_stack(n, shape, axis, device):
    check_op([shape] * n, lambda *t: torch.stack(t, dim=axis),
             lambda *t: ops.stack(list(t), axis), device)
    check_op([shape] * n, lambda *t: torch.stack(t, dim=axis),
             lambda *t: ops.Stack(axis)(ops.make_tuple(*t)), device)


@pytest.mark.parametrize("shape, axis", [((3, 4), 0), ((3, 4), 1), ((2, 3, 4), 2),
                                         ((2, 3, 4), -2)], ids=str)
def test_split(shape, axis, device):
    n = shape[axis]
    weights = [float(w) for w in np.linspace(-1.5, 2.0, n)]

    def weighted(pieces):
        return sum(p * w for p, w in zip(pieces, weights))

    check_op([shape], lambda t: weighted(torch.unbind(t, dim=axis)),
             lambda t: weighted(ops.split(t, axis)), device)
    # Only some pieces used (the others get zero gradient), one of them twice.
    check_op([shape], lambda t: torch.unbind(t, axis)[0] * 2 + torch.unbind(t, axis)[-1].exp()
             * torch.unbind(t, axis)[0],
             lambda t: (lambda p: p[0] * 2 + p[n - 1].exp() * p[0])(ops.Split(axis)(t)), device)


def test_split_then_stack_roundtrip(device):
    check_op([(3, 4)], lambda t: torch.stack(torch.unbind(t, 1)[::-1], 0) * 3,
             lambda t: ops.stack(list(ops.split(t, 1).tuple())[::-1], 0) * 3, device)


# ---- tuple ops ----------------------------------------------------------------------------
def test_tuple_ops(device):
    check_op([(2, 3), (2, 3)], lambda a, b: a * 2 + b.exp(),
             lambda a, b: (lambda t: t[0] * 2 + t[1].exp())(ops.make_tuple(a, b)), device)
    check_op([(2, 3), (2, 3)], lambda a, b: a * 2 + b.exp(),
             lambda a, b: (lambda t: ops.TupleGetItem(0)(t, fold_const=False) * 2
                           + ops.tuple_get_item(t, 1).exp())(ops.MakeTensorTuple()(a, b)), device)
    check_op([(2, 3)], lambda a: (a + 1.5) * (a - 2),
             lambda a: (lambda t: t[0] * t[1])(ops.fused_add_scalars(a, 1.5, -2)), device)
    check_op([(2, 3)], lambda a: (a + 1.0) * 3 + (a + 2.0),
             lambda a: (lambda t: t[0] * 3 + t[1])(ops.FusedAddScalars(1.0, 2.0)(a)), device)


def test_tuple_ops_unused_element_gets_zero_gradient(device):
    # b reaches the output only through the tuple: its gradient is TupleGetItem's zero fill.
    check_op([(2, 3), (4,)], lambda a, b: a * 2,
             lambda a, b: ops.TupleGetItem(0)(ops.MakeTensorTuple()(a, b), fold_const=False) * 2,
             device)
    nx = ndl.Tensor(rand(3), device=device)
    pair = ops.fused_add_scalars(nx, 1.0, 2.0)
    ops.TupleGetItem(1)(pair).sum().backward()
    np.testing.assert_allclose(nx.grad.numpy(), np.ones(3))


# ---- flip, dilate, undilate, pad ----------------------------------------------------------
@pytest.mark.parametrize("shape, axes", [((3, 4), (0,)), ((3, 4), (1,)), ((3, 4), (0, 1)),
                                         ((2, 3, 4), (0, 2)), ((2, 3, 4), (-1,)),
                                         ((2, 3, 4), None), ((5,), 0)], ids=str)
def test_flip(shape, axes, device):
    dims = tdims(axes if not isinstance(axes, int) else (axes,), len(shape))
    check_op([shape], lambda t: torch.flip(t, dims), lambda t: ops.flip(t, axes), device)
    check_op([shape], lambda t: torch.flip(t, dims), lambda t: ops.Flip(axes)(t), device)


DILATE_CASES = [((3, 4), (0,), 1), ((3, 4), (1,), 2), ((3, 4), (0, 1), 1),
                ((2, 3, 4), (1, 2), 1), ((2, 3, 4), (-1,), 3), ((3, 4), (0, 1), 0),
                ((2, 5), 1, 1)]


@pytest.mark.parametrize("shape, axes, dilation", DILATE_CASES, ids=str)
def test_dilate(shape, axes, dilation, device):
    axes_t = (axes,) if isinstance(axes, int) else axes
    x = rand(*shape)
    out = ops.dilate(ndl.Tensor(x, device=device), axes, dilation)
    np.testing.assert_array_equal(out.numpy(), numpy_dilate(x, axes_t, dilation))
    check_op([x], lambda t: torch_dilate(t, axes_t, dilation),
             lambda t: ops.Dilate(axes, dilation)(t), device)
    check_fd([shape], lambda t: ops.dilate(t, axes, dilation), device)


UNDILATE_CASES = [((6, 4), (0,), 1), ((6, 4), (1,), 1), ((6, 8), (0, 1), 1),
                  ((2, 6, 4), (1,), 2), ((5, 4), (0,), 1), ((7, 5), (0, 1), 2),
                  ((3, 4), (0, 1), 0), ((4, 5), -1, 3)]


@pytest.mark.parametrize("shape, axes, dilation", UNDILATE_CASES, ids=str)
def test_undilate(shape, axes, dilation, device):
    axes_t = (axes,) if isinstance(axes, int) else axes
    sl = tuple(slice(None, None, dilation + 1) if i in tuple(a % len(shape) for a in axes_t)
               else slice(None) for i in range(len(shape)))
    x = rand(*shape)
    out = ops.undilate(ndl.Tensor(x, device=device), axes, dilation)
    np.testing.assert_array_equal(out.numpy(), x[sl])
    check_op([x], lambda t: t[sl], lambda t: ops.UnDilate(axes, dilation)(t), device)
    check_fd([shape], lambda t: ops.undilate(t, axes, dilation), device)


def test_undilate_inverts_dilate(device):
    x = rand(2, 3, 4)
    t = ndl.Tensor(x, device=device)
    np.testing.assert_array_equal(ops.undilate(ops.dilate(t, (0, 2), 2), (0, 2), 2).numpy(), x)


@pytest.mark.parametrize("shape, pads", [
    ((3, 4), ((1, 2), (0, 3))), ((2, 3, 4), ((0, 0), (1, 1), (2, 0))), ((5,), ((3, 1),)),
    ((1, 4, 4, 2), ((0, 0), (2, 2), (2, 2), (0, 0))), ((3, 4), ((0, 0), (0, 0))),
], ids=str)
def test_pad(shape, pads, device):
    flat = [p for pair in reversed(pads) for p in pair]
    check_op([shape], lambda t: F.pad(t, flat), lambda t: ops.pad(t, pads), device)
    check_op([shape], lambda t: F.pad(t, flat), lambda t: ops.Pad(pads)(t), device)


# ---- convolution --------------------------------------------------------------------------
# (N, H, W, C_in, C_out, k, stride, padding); several have (H + 2p - k) % stride != 0.
CONV_CASES = [
    (2, 5, 5, 3, 4, 3, 1, 0), (2, 5, 5, 3, 4, 3, 1, 1), (1, 6, 5, 2, 3, 1, 1, 0),
    (1, 6, 5, 2, 3, 1, 2, 0), (1, 5, 4, 1, 2, 1, 3, 2), (1, 7, 6, 2, 3, 3, 2, 1),
    (1, 8, 8, 2, 2, 3, 2, 0), (2, 7, 9, 3, 2, 5, 3, 2), (1, 9, 7, 3, 2, 3, 3, 0),
    (1, 4, 4, 2, 2, 3, 3, 1), (2, 10, 8, 4, 5, 3, 2, 2), (1, 6, 6, 2, 3, 5, 2, 1),
    (1, 5, 7, 2, 2, 5, 1, 2), (1, 3, 3, 2, 2, 5, 1, 2), (1, 11, 6, 2, 3, 5, 3, 0),
    (1, 5, 5, 1, 1, 3, 2, 2),
]


@pytest.mark.parametrize("n, h, w, c_in, c_out, k, stride, padding", CONV_CASES,
                         ids=lambda v: str(v))
def test_conv(n, h, w, c_in, c_out, k, stride, padding, device):
    check_op([(n, h, w, c_in), (k, k, c_in, c_out)], torch_conv(stride, padding),
             lambda x, wt: ops.conv(x, wt, stride=stride, padding=padding), device,
             rtol=1e-4, atol=1e-4)


@HYPOTHESIS
@given(nhw=st.tuples(st.integers(1, 2), st.integers(1, 8), st.integers(1, 8)),
       channels=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       k=st.sampled_from([1, 2, 3, 5]), stride=st.integers(1, 3), padding=st.integers(0, 2))
def test_conv_random_shapes(nhw, channels, k, stride, padding, device):
    (n, h, w), (c_in, c_out) = nhw, channels
    assume(h + 2 * padding >= k and w + 2 * padding >= k)
    check_op([(n, h, w, c_in), (k, k, c_in, c_out)], torch_conv(stride, padding),
             lambda x, wt: ops.conv(x, wt, stride=stride, padding=padding), device,
             rtol=1e-4, atol=1e-4)


def test_conv_class_and_default_padding(device):
    check_op([(1, 5, 6, 2), (3, 3, 2, 3)], torch_conv(1, 1), ops.conv, device,
             rtol=1e-4, atol=1e-4)
    check_op([(1, 5, 6, 2), (3, 3, 2, 3)], torch_conv(2, 0), ops.Conv(2, 0), device,
             rtol=1e-4, atol=1e-4)
    check_op([(1, 5, 6, 2), (3, 3, 2, 3)], torch_conv(1, 0), ops.Conv(), device,
             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, k, stride, padding", [
    ((2, 6, 5, 3), 3, 1, 1), ((1, 7, 7, 2), 3, 2, 1), ((1, 8, 7, 2), 2, 3, 0),
    ((2, 9, 9, 1), 7, 4, 3)], ids=str)
def test_conv_weight_gradient_op(shape, k, stride, padding, device):
    """ConvWeightGrad is conv's weight gradient (against torch), and its own gradients in x
    and in the adjoint are right (against central differences)."""
    n, h, w, c_in = shape
    h_out, w_out = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    c_out = 2
    x_np, g_np = rand(*shape), rand(n, h_out, w_out, c_out)
    w_t = torch.zeros((k, k, c_in, c_out), dtype=torch.float64, requires_grad=True)
    torch_conv(stride, padding)(torch.tensor(x_np, dtype=torch.float64), w_t).backward(
        torch.tensor(g_np, dtype=torch.float64))
    op = ops.ConvWeightGrad(stride, padding, (k, k))
    got = op(ndl.Tensor(x_np, device=device), ndl.Tensor(g_np, device=device))
    assert got.shape == (k, k, c_in, c_out)
    np.testing.assert_allclose(got.numpy(), w_t.grad.numpy(), rtol=1e-4, atol=1e-4)
    check_fd([x_np, g_np], op, device)


def test_conv_weight_gradient_rejects_mismatched_adjoint(device):
    x = ndl.Tensor(rand(1, 5, 5, 2), device=device)
    with pytest.raises(ValueError, match=r"adjoint \(1, 4, 4, 3\).*\(1, 5, 5\)"):
        ops.ConvWeightGrad(1, 1, (3, 3))(x, ndl.Tensor(rand(1, 4, 4, 3), device=device))


def test_conv_rejects_bad_arguments(device):
    x = ndl.Tensor(rand(1, 4, 4, 2), device=device)
    with pytest.raises(ValueError):
        ops.conv(x, ndl.Tensor(rand(3, 3, 3, 2), device=device))  # channel mismatch
    with pytest.raises(ValueError):
        ops.conv(x, ndl.Tensor(rand(5, 5, 2, 2), device=device), padding=0)  # kernel > input
    with pytest.raises(ValueError):
        ops.Conv(stride=0)


# ---- indexing -----------------------------------------------------------------------------
GETITEM_CASES = [
    ((4, 5, 6), 1), ((4, 5, 6), -1), ((4, 5, 6), (1, 2)), ((4, 5, 6), (1, 2, 3)),
    ((4, 5, 6), slice(1, 3)), ((4, 5, 6), slice(None, None, -1)),
    ((4, 5, 6), (slice(None), slice(4, 0, -2))), ((4, 5, 6), (Ellipsis, 2)),
    ((4, 5, 6), (1, Ellipsis, slice(None, None, 2))), ((4, 5, 6), (-1, slice(None), -2)),
    ((4, 5, 6), (slice(-1, None, -3), 0, slice(1, 6, 2))), ((4, 5, 6), Ellipsis),
    ((4, 5, 6), (slice(None, None, -1), slice(None, None, -1), slice(None, None, -1))),
    ((4, 5, 6), (slice(1, 100), slice(-100, 3))), ((4, 5, 6), (slice(2, 2),)),
    ((7,), slice(5, None, -2)), ((3, 4), (Ellipsis, slice(None, None, -1))),
]


@pytest.mark.parametrize("shape, idx", GETITEM_CASES, ids=str)
def test_getitem(shape, idx, device):
    x = rand(*shape)
    expected = x[idx]
    out = ndl.Tensor(x, device=device)[idx]
    np.testing.assert_array_equal(out.numpy(), expected)
    check_op([x], lambda t: torch_index(t, idx), lambda t: t[idx], device)
    check_op([x], lambda t: torch_index(t, idx), lambda t: ops.getitem(t, idx), device)


@HYPOTHESIS
@given(data=st.data())
def test_getitem_random_indices(data, device):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), label="shape")
    idx = data.draw(hnp.basic_indices(shape, allow_newaxis=False, allow_ellipsis=True),
                    label="index")
    check_op([shape], lambda t: torch_index(t, idx), lambda t: t[idx], device)


@pytest.mark.parametrize("shape, idx", GETITEM_CASES[:13:3], ids=str)
def test_getitem_gradient_op(shape, idx, device):
    """GetItemGradient (the adjoint of GetItem) scatters into zeros; its adjoint gathers."""
    g = rand(*np.zeros(shape)[idx].shape)
    check_op([g], lambda t: _torch_scatter(t, shape, idx),
             lambda t: ops.GetItemGradient(idx, shape)(t), device)


def _torch_scatter(t, shape, idx):
    """Zeros of `shape` with t at `idx`, differentiable in t (built as a gather's adjoint)."""
    base = torch.zeros(shape, dtype=t.dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(torch_index(base, idx), base, t, create_graph=True)
    return grad


# ---- helpers that ops export --------------------------------------------------------------
@pytest.mark.parametrize("grad_shape, shape", [((2, 3, 4), (3, 4)), ((2, 3, 4), (3, 1)),
                                               ((2, 3, 4), (1, 1, 4)), ((2, 3), ()),
                                               ((2, 3), (2, 3))], ids=str)
def test_reduce_to_shape(grad_shape, shape, device):
    check_op([grad_shape],
             lambda t: t.sum_to_size(shape) if shape else t.sum(),
             lambda t: ops.reduce_to_shape(t, shape), device)


def test_zeros_like_data(device):
    x = ndl.Tensor(rand(2, 3), device=device)
    z = ops.zeros_like_data(x)
    assert z.shape == (2, 3) and z.dtype == x.dtype and z.device == device
    assert not z.requires_grad and z.op is None
    np.testing.assert_array_equal(z.numpy(), np.zeros((2, 3)))


# ---- the needle API forms ----------------------------------------------------------------
def test_needle_api_forms(device):
    check_op([(3, 4)], lambda t: t.sum(dim=1), lambda t: ndl.ops.summation(t, axes=(1,)), device)
    check_op([(3, 4)], lambda t: t.sum(), lambda t: ndl.summation(t), device)
    check_op([(3, 4)], lambda t: t.sum(dim=0), lambda t: ndl.summation(t, axes=0), device)
    check_op([(3, 4), (4, 2)], torch.matmul, lambda a, b: ndl.ops.matmul(a, b), device)
    check_op([(3, 4)], lambda t: torch.logsumexp(t, dim=1),
             lambda t: ndl.ops.logsumexp(t, axes=(1,)), device)
    check_op([(3, 4), (3, 4)], lambda a, b: torch.stack([a, b], dim=1),
             lambda a, b: ndl.ops.stack([a, b], axis=1), device)
    check_op([(2, 5, 5, 3), (3, 3, 3, 2)], torch_conv(1, 1),
             lambda x, w: ndl.ops.conv(x, w, stride=1, padding=1), device, rtol=1e-4, atol=1e-4)
    check_op([(2, 3)], lambda t: t.broadcast_to((4, 2, 3)).sum(dim=0),
             lambda t: ndl.broadcast_to(t, (4, 2, 3)).sum((0,)), device)
    check_op([(3, 4)], lambda t: t.exp().log(), lambda t: ndl.log(ndl.exp(t)), device)


def test_backward_default_adjoint_is_ones(device):
    x = rand(3, 4)
    t = ndl.Tensor(x, device=device)
    (t * t).backward()
    np.testing.assert_allclose(t.grad.numpy(), 2 * x, rtol=1e-6)
    assert not t.grad.requires_grad  # no graph kept without create_graph


def test_constant_inputs_get_no_gradient(device):
    a = ndl.Tensor(rand(3), device=device)
    b = ndl.Tensor(rand(3), device=device, requires_grad=False)
    out = (a * b).sum()
    out.backward()
    assert b.grad is None
    np.testing.assert_allclose(a.grad.numpy(), b.numpy())
    c = ops.exp(b)
    assert not c.requires_grad and c.op is None


# ---- finite differences in float64 --------------------------------------------------------
FD_CASES = [
    ("add_broadcast", [(3, 1, 2), (4, 1)], lambda a, b: a + b),
    ("sub_broadcast", [(1,), (2, 3)], lambda a, b: a - b),
    ("mul_broadcast", [(2, 3), (3,)], lambda a, b: a * b),
    ("div_broadcast", [(2, 3), np.array([0.7, -1.3, 1.1])], lambda a, b: a / b),
    ("pow_ewise", [np.array([[0.5, 1.5], [2.0, 0.8]]), (2, 2)], lambda a, b: a ** b),
    ("scalars", [(2, 3)], lambda x: (2 - x * 3 + 1.5) / 4),
    ("rdiv", [np.array([0.6, -1.2, 1.7])], lambda x: 2 / x),
    ("rpow", [(4,)], lambda x: 2 ** x),
    ("power_scalar", [np.array([0.4, 1.3, 2.2])], lambda x: x ** -1.5 + x ** 0.5 + x ** 3),
    ("negate", [(3,)], lambda x: -x),
    ("transpose", [(2, 3, 4)], lambda x: ops.transpose(x, (0, 2))),
    ("reshape", [(2, 3, 2)], lambda x: ops.reshape(x, (3, -1))),
    ("broadcast_to", [(3, 1)], lambda x: ops.broadcast_to(x, (2, 3, 4))),
    ("summation", [(2, 3, 4)], lambda x: ops.summation(x, (0, 2), keepdims=True)),
    ("matmul", [(2, 1, 3, 2), (4, 2, 3)], ops.matmul),
    ("log", [np.array([0.3, 1.0, 2.5])], ops.log),
    ("exp", [(4,)], ops.exp),
    ("relu", [np.array([-1.0, -0.2, 0.3, 1.7])], ops.relu),
    ("tanh", [(4,)], ops.tanh),
    ("sigmoid", [(4,)], ops.sigmoid),
    ("sqrt", [np.array([0.3, 1.0, 2.5])], ops.sqrt),
    ("logsoftmax", [(3, 4)], lambda x: ops.logsoftmax(x, 0)),
    ("logsumexp", [(2, 3, 4)], lambda x: ops.logsumexp(x, (0, 2))),
    ("max", [(3, 4)], lambda x: ops.max(x, 1, keepdims=True)),
    ("maximum", [(3, 4), (4,)], ops.maximum),
    ("maximum_scalar", [np.array([-1.0, -0.2, 0.3, 1.7])], lambda x: ops.maximum(x, 0.1)),
    ("stack", [(2, 3), (2, 3)], lambda a, b: ops.stack([a, b], 1)),
    ("split", [(3, 2)], lambda x: (lambda p: p[0] * 2 - p[2] * p[1])(ops.split(x, 0))),
    ("flip", [(3, 4)], lambda x: ops.flip(x, (0, 1))),
    ("pad", [(2, 3)], lambda x: ops.pad(x, ((1, 0), (2, 1)))),
    ("conv", [(1, 5, 4, 2), (3, 3, 2, 2)], lambda x, w: ops.conv(x, w, stride=2, padding=1)),
    ("conv_s3", [(1, 6, 5, 1), (2, 2, 1, 2)], lambda x, w: ops.conv(x, w, stride=3, padding=0)),
    ("getitem", [(3, 4)], lambda x: x[::-2, 1:3]),
    ("tuple_ops", [(3,)], lambda x: (lambda t: t[0] * t[1])(ops.fused_add_scalars(x, 1.0, -2.0))),
]


@pytest.mark.parametrize("xs, fn", [pytest.param(c[1], c[2], id=c[0]) for c in FD_CASES])
def test_finite_differences_float64(xs, fn, device):
    check_fd(xs, fn, device)


# ---- second-order gradients ---------------------------------------------------------------
SECOND_ORDER_CASES = [
    ("mul", [(3, 4), (3, 4)], lambda a, b: a * b * a, lambda a, b: a * b * a),
    ("div", [(3,), away_from_zero(3)], lambda a, b: a / b, lambda a, b: a / b),
    ("power_scalar", [rand(4, low=0.5, high=2)], lambda x: x ** 3 + x ** -0.5,
     lambda x: x ** 3 + x ** -0.5),
    ("pow_ewise", [rand(4, low=0.5, high=2), (4,)], torch.pow, ops.power),
    ("tanh", [(3, 4)], torch.tanh, ops.tanh),
    ("sigmoid", [(3, 4)], torch.sigmoid, ops.sigmoid),
    ("exp", [(3, 4)], torch.exp, ops.exp),
    ("log", [rand(3, 4, low=0.5, high=2)], torch.log, ops.log),
    ("sqrt", [rand(3, 4, low=0.5, high=2)], torch.sqrt, ops.sqrt),
    ("matmul", [(2, 3, 4), (4, 2)], torch.matmul, ops.matmul),
    ("matmul_squared", [(3, 3)], lambda a: a @ a, lambda a: a @ a),
    ("logsumexp", [(3, 4)], lambda t: torch.logsumexp(t, dim=1), lambda t: ops.logsumexp(t, (1,))),
    ("logsoftmax", [(3, 4)], lambda t: torch.log_softmax(t, -1), ops.logsoftmax),
    ("broadcast_mul", [(3, 1), (4,)], lambda a, b: (a * b) ** 2, lambda a, b: (a * b) ** 2),
    ("conv", [(1, 5, 5, 2), (3, 3, 2, 2)], torch_conv(1, 1), lambda x, w: ops.conv(x, w, 1, 1)),
    ("conv_stride2", [(1, 6, 5, 2), (3, 3, 2, 3)], torch_conv(2, 1),
     lambda x, w: ops.conv(x, w, 2, 1)),
    ("conv_stride3_remainder", [(2, 8, 7, 2), (2, 2, 2, 3)], torch_conv(3, 0),
     lambda x, w: ops.conv(x, w, 3, 0)),
    ("conv_squared", [(1, 5, 5, 2), (3, 3, 2, 2)], lambda x, w: torch_conv(2, 1)(x, w) ** 2,
     lambda x, w: ops.conv(x, w, 2, 1) ** 2),
    # Ops whose gradients use constant masks or only move data: the graph must stay connected.
    ("relu", [(3, 4)], lambda x: torch.relu(x) * x, lambda x: ops.relu(x) * x),
    ("max", [(3, 4)], lambda x: torch.amax(x * x, 1), lambda x: ops.max(x * x, 1)),
    ("maximum", [(3, 4), (4,)], lambda a, b: torch.maximum(a * b, b) * a,
     lambda a, b: ops.maximum(a * b, b) * a),
    ("getitem_pad_flip", [(3, 4)],
     lambda x: torch.flip(F.pad(torch_index(x, (slice(None, None, -1), slice(1, None))),
                                [1, 0, 0, 2]), (0,)) ** 2,
     lambda x: ops.flip(ops.pad(x[::-1, 1:], ((0, 2), (1, 0))), (0,)) ** 2),
    ("split_stack", [(3, 4)], lambda x: (lambda u: torch.stack([u[0] * u[1], u[2]], 1))(
        torch.unbind(x, 0)) ** 2,
     lambda x: (lambda u: ops.stack([u[0] * u[1], u[2]], 1))(ops.split(x, 0)) ** 2),
    ("sum_broadcast_reshape", [(3, 4)],
     lambda x: (x.sum(1, keepdim=True) * x).T.reshape(2, 6) ** 2,
     lambda x: (ops.summation(x, 1, keepdims=True) * x).T.reshape(2, 6) ** 2),
]


@pytest.mark.parametrize("xs, torch_fn, ndl_fn",
                         [pytest.param(*c[1:], id=c[0]) for c in SECOND_ORDER_CASES])
def test_second_order_gradients(xs, torch_fn, ndl_fn, device):
    check_double_backward(xs, torch_fn, ndl_fn, device)


# ---- float64 through the same helper ------------------------------------------------------
def _unary_chain(t):
    return t.log() + t.exp() + t.sqrt() + t.tanh() + t.sigmoid() + t.relu()


FLOAT64_CASES = [
    ("unary", [rand(3, 4, low=0.2, high=2)], _unary_chain, _unary_chain),
    ("binary", [(3, 1), away_from_zero(4)], lambda a, b: (a + b) * (a - b) / b + a ** 2 + 2 ** a,
     lambda a, b: (a + b) * (a - b) / b + a ** 2 + 2 ** a),
    ("matmul", [(2, 3, 4), (4, 5)], torch.matmul, ops.matmul),
    ("reductions", [(3, 4)], lambda t: t.sum(1) + t.amax(1) + torch.logsumexp(t, 1),
     lambda t: t.sum(1) + t.max(1) + ops.logsumexp(t, 1)),
    ("logsoftmax", [(3, 4)], lambda t: torch.log_softmax(t, 0), lambda t: ops.logsoftmax(t, 0)),
    ("conv", [(1, 6, 5, 2), (3, 3, 2, 3)], torch_conv(2, 1), lambda x, w: ops.conv(x, w, 2, 1)),
]


@pytest.mark.parametrize("xs, torch_fn, ndl_fn",
                         [pytest.param(*c[1:], id=c[0]) for c in FLOAT64_CASES])
def test_float64_against_torch(xs, torch_fn, ndl_fn, device):
    check_op(xs, torch_fn, ndl_fn, device, dtype="float64", rtol=1e-10, atol=1e-10)


def test_mixed_dtype_gradient_keeps_input_dtype(device):
    a = ndl.Tensor(rand(2, 3), device=device)
    b = ndl.Tensor(rand(3), device=device, dtype="float64")
    out = a * b
    assert out.dtype == "float64"
    out.sum().backward()
    assert a.grad.dtype == "float32" and b.grad.dtype == "float64"
    np.testing.assert_allclose(a.grad.numpy(), np.broadcast_to(b.numpy(), (2, 3)), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_astype(dtype, device):
    other = "float64" if dtype == "float32" else "float32"
    x = ndl.Tensor(rand(2, 3), device=device, dtype=dtype)
    y = ops.astype(x, other)
    assert y.dtype == other and x.astype(dtype) is x
    np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=1e-7)
    (ops.AsType(other)(x) * 3).sum().backward()
    assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 3), 3.0))
