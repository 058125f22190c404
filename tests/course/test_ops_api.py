"""Course API section 4 (ops): names, keywords, operators, scalars, values against NumPy (and
torch for conv), and the course's gradient check on every op, in both modes.

In the numpy mode (NEEDLE_BACKEND=np) the data are float64 NumPy arrays and the gradient check
runs at the course's tolerance (1e-6); in the NDArray mode it runs in float32 with a float32
tolerance.
"""

import inspect

import numpy as np
import pytest

import needle as ndl
from needle import Tensor, ops

NP_MODE = ndl.BACKEND == "np"
DTYPE = np.float64 if NP_MODE else np.float32
# Central differences: the course's eps and tolerance in float64; in float32 a larger eps and
# an elementwise tolerance that float32 rounding allows.
EPS = 1e-4 if NP_MODE else 1e-2


def rand(*shape, low=None):
    """Random data in the mode's dtype (away from 0 above `low` when given)."""
    x = np.random.randn(*shape)
    if low is not None:
        x = np.abs(x) + low
    return x.astype(DTYPE)


def T(x):
    return Tensor(np.asarray(x, dtype=DTYPE))


def full_reduction_shape(shape):
    """A full reduction is 0-d in the numpy mode and may be () or (1,) in the NDArray mode."""
    assert shape == () if NP_MODE else shape in ((), (1,)), shape


def close(actual, expected, rtol=None, atol=None):
    rtol = rtol if rtol is not None else (1e-10 if NP_MODE else 1e-5)
    atol = atol if atol is not None else (1e-10 if NP_MODE else 1e-5)
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


# ---- the course's gradient check ------------------------------------------------------------
def _grad_arrays(grads, inputs):
    """gradient_as_tuple's result as arrays, a TensorTuple expanded into its elements (stack's
    gradient is one TensorTuple for the tuple of its operands, as is TupleGetItem's)."""
    arrays = []
    for g, _x in zip(grads, inputs):
        if isinstance(g, ndl.TensorTuple):
            arrays.extend(g[k].numpy() for k in range(len(g)))
        else:
            arrays.append(g.numpy())
    return arrays


def _weighted(out, c):
    """sum(out * c) in NumPy, for a Tensor or a TensorTuple output."""
    if isinstance(out, ndl.TensorTuple):
        return sum(float((out[k].numpy() * ck).sum()) for k, ck in enumerate(c))
    return float((out.numpy() * c).sum())


def gradient_check(f, *args, op_inputs=True, **kwargs):
    """The course's check: perturb each input element in place through
    `realize_cached_data().flat[j]`, recompute, and compare the central differences with
    `out.op.gradient_as_tuple(Tensor(c), out)` (when the output's op takes `args` themselves,
    `op_inputs`) and with backward()."""
    out = f(*args, **kwargs)
    if isinstance(out, ndl.TensorTuple):
        c = [np.random.randn(*out[k].shape) for k in range(len(out))]
    else:
        c = np.asarray(np.random.randn(*out.shape))
    numerical = [np.zeros(a.shape) for a in args]
    for i in range(len(args)):
        for j in range(args[i].realize_cached_data().size):
            args[i].realize_cached_data().flat[j] += EPS
            f1 = _weighted(f(*args, **kwargs), c)
            args[i].realize_cached_data().flat[j] -= 2 * EPS
            f2 = _weighted(f(*args, **kwargs), c)
            args[i].realize_cached_data().flat[j] += EPS
            numerical[i].flat[j] = (f1 - f2) / (2 * EPS)

    out = f(*args, **kwargs)
    if isinstance(out, ndl.TensorTuple):
        out_grad = ops.make_tuple(*[Tensor(ck.astype(DTYPE)) for ck in c])
    else:
        out_grad = Tensor(c.astype(DTYPE))
    if op_inputs:
        computed = _grad_arrays(out.op.gradient_as_tuple(out_grad, out), out.inputs)

    for a in args:
        a.grad = None
    if isinstance(out, ndl.TensorTuple):
        loss = ops.summation(out[0] * Tensor(c[0].astype(DTYPE)))
        for k in range(1, len(out)):
            loss = loss + ops.summation(out[k] * Tensor(c[k].astype(DTYPE)))
        loss.backward()
    else:
        out.backward(Tensor(c.astype(DTYPE)))
    backward = [a.grad.numpy() for a in args]
    if not op_inputs:
        computed = backward

    assert len(computed) == len(args)
    for i, a in enumerate(args):
        assert computed[i].shape == a.shape, (i, computed[i].shape, a.shape)
        assert backward[i].shape == a.shape, (i, backward[i].shape, a.shape)
        if NP_MODE:  # the course's float64 criterion
            assert np.linalg.norm(computed[i] - numerical[i]) < 1e-6, (i, computed[i], numerical[i])
            assert np.linalg.norm(backward[i] - numerical[i]) < 1e-6, (i, backward[i], numerical[i])
        else:
            np.testing.assert_allclose(computed[i], numerical[i], rtol=2e-2, atol=2e-2)
            np.testing.assert_allclose(backward[i], numerical[i], rtol=2e-2, atol=2e-2)
    return computed


# ---- names and keywords ---------------------------------------------------------------------
FUNCTIONS = {
    "add": ("a", "b"),
    "add_scalar": ("a", "scalar"),
    "multiply": ("a", "b"),
    "mul_scalar": ("a", "scalar"),
    "divide": ("a", "b"),
    "divide_scalar": ("a", "scalar"),
    "power": ("a", "b"),
    "power_scalar": ("a", "scalar"),
    "negate": ("a",),
    "log": ("a",),
    "exp": ("a",),
    "relu": ("a",),
    "tanh": ("a",),
    "transpose": ("a", "axes"),
    "reshape": ("a", "shape"),
    "broadcast_to": ("a", "shape"),
    "summation": ("a", "axes"),
    "matmul": ("a", "b"),
    "logsoftmax": ("a",),
    "logsumexp": ("a", "axes"),
    "stack": ("args", "axis"),
    "split": ("a", "axis"),
    "flip": ("a", "axes"),
    "dilate": ("a", "axes", "dilation"),
    "undilate": ("a", "axes", "dilation"),
    "conv": ("a", "b", "stride", "padding"),
    "make_tuple": ("args",),
    "tuple_get_item": ("value", "index"),
    "fused_add_scalars": ("x", "c0", "c1"),
}
CLASSES = [
    "EWiseAdd",
    "AddScalar",
    "EWiseMul",
    "MulScalar",
    "EWiseDiv",
    "DivScalar",
    "EWisePow",
    "PowerScalar",
    "Negate",
    "Log",
    "Exp",
    "ReLU",
    "Tanh",
    "Transpose",
    "Reshape",
    "BroadcastTo",
    "Summation",
    "MatMul",
    "LogSoftmax",
    "LogSumExp",
    "Stack",
    "Split",
    "Flip",
    "Dilate",
    "UnDilate",
    "Conv",
    "MakeTensorTuple",
    "TupleGetItem",
    "FusedAddScalars",
]


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_function_names_and_parameters(name):
    fn = getattr(ops, name)
    assert getattr(ndl, name) is fn
    params = list(inspect.signature(fn).parameters)
    assert params[: len(FUNCTIONS[name])] == list(FUNCTIONS[name])


@pytest.mark.parametrize("name", CLASSES)
def test_classes_exported(name):
    cls = getattr(ops, name)
    assert getattr(ndl, name) is cls
    assert issubclass(
        cls,
        ops.TensorTupleOp
        if name in ("Split", "MakeTensorTuple", "FusedAddScalars")
        else ops.TensorOp,
    )


def test_graph_types_in_ops():
    for name in ("Tensor", "TensorTuple", "Value", "Op", "TensorOp", "TensorTupleOp"):
        assert getattr(ops, name) is getattr(ndl.autograd, name)


def test_class_keywords_and_defaults():
    assert ops.AddScalar(scalar=2).scalar == 2
    assert ops.MulScalar(scalar=2).scalar == 2
    assert ops.DivScalar(scalar=2).scalar == 2
    assert ops.PowerScalar(scalar=2).scalar == 2
    assert ops.Transpose().axes is None
    assert tuple(ops.Transpose(axes=(0, 2)).axes) == (0, 2)
    assert tuple(ops.Reshape(shape=(2, 3)).shape) == (2, 3)
    assert tuple(ops.BroadcastTo(shape=[2, 3]).shape) == (2, 3)
    assert ops.Summation().axes is None
    assert ops.LogSumExp().axes is None
    assert ops.Stack(axis=1).axis == 1
    assert ops.Split(axis=1).axis == 1
    assert tuple(ops.Flip(axes=(0,)).axes) == (0,)
    d = ops.Dilate(axes=(0,), dilation=2)
    assert tuple(d.axes) == (0,) and d.dilation == 2
    u = ops.UnDilate(axes=(1,), dilation=1)
    assert tuple(u.axes) == (1,) and u.dilation == 1
    conv = ops.Conv()
    assert (conv.stride, conv.padding) == (1, 0)  # the class defaults to no padding
    conv = ops.Conv(stride=2, padding=1)
    assert (conv.stride, conv.padding) == (2, 1)
    # the function defaults to padding 1
    sig = inspect.signature(ops.conv).parameters
    assert sig["stride"].default == 1 and sig["padding"].default == 1
    assert inspect.signature(ops.transpose).parameters["axes"].default is None
    assert inspect.signature(ops.summation).parameters["axes"].default is None
    assert inspect.signature(ops.logsumexp).parameters["axes"].default is None


# ---- operators ------------------------------------------------------------------------------
def _only_op(t):
    return type(t.op)


def test_operators_map_to_ops():
    a, b = T(rand(3, 4)), T(rand(3, 4, low=0.5))
    assert _only_op(a + b) is ops.EWiseAdd
    assert _only_op(a * b) is ops.EWiseMul
    assert _only_op(a / b) is ops.EWiseDiv
    assert _only_op(b**a) is ops.EWisePow
    assert _only_op(a @ T(rand(4, 2))) is ops.MatMul
    assert _only_op(-a) is ops.Negate
    assert _only_op(a + 2) is ops.AddScalar
    assert _only_op(2 + a) is ops.AddScalar
    assert _only_op(a * 2) is ops.MulScalar
    assert _only_op(2 * a) is ops.MulScalar
    assert _only_op(a / 2) is ops.DivScalar
    assert _only_op(a**2) is ops.PowerScalar


def test_subtraction_is_add_of_negate():
    a, b = T(rand(3, 4)), T(rand(3, 4))
    d = a - b
    assert type(d.op) is ops.EWiseAdd
    assert d.inputs[0] is a
    neg = d.inputs[1]
    assert type(neg.op) is ops.Negate and neg.inputs[0] is b
    nodes = ndl.autograd.find_topo_sort([d])
    assert nodes == [a, b, neg, d]
    close(d.numpy(), a.numpy() - b.numpy())

    e = a - 3
    assert type(e.op) is ops.AddScalar and e.op.scalar == -3
    close(e.numpy(), a.numpy() - 3)


def test_reflected_scalar_operators():
    a = T(rand(2, 3))
    close((3 + a).numpy(), 3 + a.numpy())
    close((3 * a).numpy(), 3 * a.numpy())


# ---- scalars --------------------------------------------------------------------------------
SCALARS = {
    "int": 3,
    "float": 2.5,
    "np.float32": np.float32(1.5),
    "np.float64": np.float64(-0.75),
    "np.int64": np.int64(2),
    "0-d": np.array(1.25),
    "(1,)": np.array([0.5]),
    "randn(1)": np.random.randn(1),
}


def _single(s):
    return np.asarray(s).reshape(-1)[0] if isinstance(s, np.ndarray) else s


def _expected_dtype(x, scalar_result):
    """NumPy's promotion in the numpy mode, float32 in the NDArray mode."""
    return scalar_result.dtype if NP_MODE else np.float32


@pytest.mark.parametrize("name", sorted(SCALARS))
@pytest.mark.parametrize(
    "op",
    [
        ("add_scalar", ops.AddScalar, lambda x, s: x + s),
        ("mul_scalar", ops.MulScalar, lambda x, s: x * s),
        ("divide_scalar", ops.DivScalar, lambda x, s: x / s),
    ],
    ids=lambda o: o[0],
)
def test_scalar_forms(op, name):
    fn_name, cls, ref = op
    s = SCALARS[name]
    x = rand(2, 3).astype(np.float32)  # float32 data: promotion shows in the numpy mode
    a = Tensor(x)
    expected = ref(x, _single(s))
    for out in (getattr(ops, fn_name)(a, scalar=s), cls(scalar=s)(a), cls(s)(a)):
        assert out.shape == (2, 3)
        assert np.dtype(out.dtype) == _expected_dtype(x, expected)
        close(out.numpy(), expected, rtol=1e-6, atol=1e-6)
    if fn_name == "divide_scalar":
        close((a / s).numpy(), expected, rtol=1e-6, atol=1e-6)
    if fn_name == "mul_scalar":
        close((a * s).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_scalar_operator_with_numpy_arrays():
    x = rand(2, 3)
    a = T(x)
    s = np.random.randn(1)
    out = a / s
    assert out.shape == (2, 3) and type(out.op) is ops.DivScalar
    close(out.numpy(), x / s[0], rtol=1e-6, atol=1e-6)
    out = a + np.array(2.0)
    assert out.shape == (2, 3) and type(out.op) is ops.AddScalar
    close(out.numpy(), x + 2.0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "scalar",
    [0, 1, 2, 3, -1, -1.5, 0.5, np.int64(2), np.random.randint(1), np.array([2.0])],
    ids=["0", "1", "2", "3", "-1", "-1.5", "0.5", "np.int64", "randint(1)", "(1,)"],
)
def test_power_scalar(scalar):
    x = rand(3, 4, low=0.5)
    a = T(x)
    s = _single(scalar)
    expected = x**s
    out = ops.power_scalar(a, scalar=scalar)
    assert type(out.op) is ops.PowerScalar and out.shape == x.shape
    if NP_MODE:
        assert out.dtype == expected.dtype
    close(out.numpy(), expected, rtol=1e-6, atol=1e-6)
    close((a**scalar).numpy(), expected, rtol=1e-6, atol=1e-6)
    # the gradient is scalar * a ** (scalar - 1)
    (g,) = out.op.gradient_as_tuple(T(np.ones(x.shape)), out)
    close(g.numpy(), s * x ** (s - 1) if s != 0 else np.zeros_like(x), rtol=1e-5, atol=1e-6)
    gradient_check(lambda t: ops.power_scalar(t, scalar=scalar), T(x))


# ---- elementwise ops: values and gradients --------------------------------------------------
ELEMENTWISE = {
    "add": (ops.add, lambda a, b: a + b),
    "multiply": (ops.multiply, lambda a, b: a * b),
    "divide": (ops.divide, lambda a, b: a / b),
    "power": (ops.power, lambda a, b: a**b),
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_binary_elementwise(name):
    fn, ref = ELEMENTWISE[name]
    x, y = rand(3, 4, low=0.5), rand(3, 4, low=0.5)
    out = fn(T(x), T(y))
    close(out.numpy(), ref(x, y), rtol=1e-5)
    assert out.shape == (3, 4)
    gradient_check(fn, T(x), T(y))


def test_divide_is_true_division():
    close(ops.divide(T([[3.0, 7.0]]), T([[2.0, 2.0]])).numpy(), [[1.5, 3.5]])
    close(ops.divide_scalar(T([3.0, 7.0]), scalar=2).numpy(), [1.5, 3.5])


def test_power_mixes_row_and_vector_shapes():
    """Course code raises a (1, k) tensor to a (k,) one; each gradient has its own input's shape
    and is computed from the values of the right input."""
    x, y = rand(1, 4, low=0.5), rand(4, low=0.5)
    out = ops.power(T(x), T(y))
    expected = x**y
    assert out.shape == expected.shape
    close(out.numpy(), expected, rtol=1e-5)
    ga, gb = gradient_check(ops.power, T(x), T(y))
    assert ga.shape == (1, 4) and gb.shape == (4,)
    # with ones as the adjoint: d/da = b a^(b-1) at a's shape, d/db = a^b log a summed to b's
    out = ops.power(T(x), T(y))
    ga, gb = (g.numpy() for g in out.op.gradient_as_tuple(T(np.ones(out.shape)), out))
    close(ga, y * x ** (y - 1), rtol=1e-5)
    close(gb, (x**y * np.log(x)).reshape(4), rtol=1e-5)
    # and the other way round
    out = ops.power(T(y), T(x))
    assert out.shape == (1, 4)
    ga, gb = (g.numpy() for g in out.op.gradient_as_tuple(T(np.ones(out.shape)), out))
    assert ga.shape == (4,) and gb.shape == (1, 4)
    close(ga, (x * y ** (x - 1)).reshape(4), rtol=1e-5)
    close(gb, y**x * np.log(y), rtol=1e-5)


UNARY = {
    "negate": (ops.negate, ops.Negate, lambda x: -x, None),
    "log": (ops.log, ops.Log, np.log, 0.5),
    "exp": (ops.exp, ops.Exp, np.exp, None),
    "relu": (ops.relu, ops.ReLU, lambda x: np.maximum(x, 0), None),
    "tanh": (ops.tanh, ops.Tanh, np.tanh, None),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name):
    fn, cls, ref, low = UNARY[name]
    x = rand(3, 5, low=low)
    if name == "relu":  # keep central differences away from the kink
        x = np.where(np.abs(x) < 0.1, 0.5, x).astype(DTYPE)
    out = fn(T(x))
    assert type(out.op) is cls
    close(out.numpy(), ref(x), rtol=1e-5)
    gradient_check(fn, T(x))


def test_relu_gradient_is_out_grad_times_positive():
    x = np.array([[-1.0, 0.0, 2.0], [3.0, -0.5, 0.25]], dtype=DTYPE)
    a = T(x)
    out = ops.relu(a)
    c = rand(2, 3)
    (g,) = out.op.gradient_as_tuple(T(c), out)
    close(g.numpy(), c * (x > 0))


# ---- shape ops ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,axes", [((3, 4), None), ((2, 3, 4), None), ((2, 3, 4), (0, 2)), ((2, 3, 4, 5), (1, 3))]
)
def test_transpose_swaps_two_axes(shape, axes):
    x = rand(*shape)
    out = ops.transpose(T(x), axes=axes)
    i, j = axes if axes is not None else (-2, -1)
    expected = np.swapaxes(x, i, j)
    assert out.shape == expected.shape
    close(out.numpy(), expected)
    close(T(x).transpose(axes).numpy(), expected)
    gradient_check(lambda t: ops.transpose(t, axes=axes), T(x))


@pytest.mark.parametrize("src,dst", [((3, 4), (4, 3)), ((2, 3, 4), (6, 4)), ((6,), (1, 2, 3))])
def test_reshape(src, dst):
    x = rand(*src)
    out = ops.reshape(T(x), shape=dst)
    close(out.numpy(), x.reshape(dst))
    assert out.shape == dst
    gradient_check(lambda t: ops.reshape(t, shape=dst), T(x))


@pytest.mark.parametrize(
    "src,dst",
    [
        ((3, 1), (3, 4)),
        ((1, 4), (3, 4)),
        ((4,), (2, 3, 4)),
        ((1, 3, 1), (2, 3, 5)),
        ((), (2, 3)),
        ((3, 1), [2, 3, 4]),
    ],
)
def test_broadcast_to(src, dst):
    x = rand(*src) if src else np.array(1.5, dtype=DTYPE)
    out = ops.broadcast_to(T(x), shape=dst)
    assert out.shape == tuple(dst)
    close(out.numpy(), np.broadcast_to(x, dst))
    grads = gradient_check(lambda t: ops.broadcast_to(t, shape=dst), T(x))
    assert grads[0].shape == src
    # with ones as the adjoint: each input element gets the number of its copies
    out = ops.broadcast_to(T(x), dst)
    (g,) = out.op.gradient_as_tuple(T(np.ones(out.shape)), out)
    close(g.numpy(), np.full(src, np.prod(dst) / max(np.prod(src), 1)))


@pytest.mark.parametrize(
    "shape,axes", [((3, 4), None), ((3, 4), 0), ((3, 4), 1), ((2, 3, 4), (0, 2)), ((2, 3, 4), (1,))]
)
def test_summation(shape, axes):
    x = rand(*shape)
    out = ops.summation(T(x), axes=axes)
    expected = x.sum(axis=axes)
    if axes is None:
        full_reduction_shape(out.shape)
    else:
        assert out.shape == expected.shape
    close(out.numpy().reshape(expected.shape), expected, rtol=1e-5)
    close(T(x).sum(axes).numpy().reshape(expected.shape), expected, rtol=1e-5)
    gradient_check(lambda t: ops.summation(t, axes=axes), T(x))


def test_summation_of_all_axes_as_a_tuple():
    x = rand(2, 3)
    out = ops.summation(T(x), axes=(0, 1))
    full_reduction_shape(out.shape)
    close(out.numpy().reshape(()), x.sum(), rtol=1e-5)


@pytest.mark.parametrize(
    "sa,sb",
    [
        ((3, 4), (4, 5)),
        ((2, 3, 4), (4, 5)),
        ((3, 4), (2, 4, 5)),
        ((2, 3, 4), (2, 4, 5)),
        ((2, 1, 3, 4), (5, 4, 2)),
    ],
)
def test_matmul(sa, sb):
    x, y = rand(*sa), rand(*sb)
    out = ops.matmul(T(x), T(y))
    expected = x @ y
    assert out.shape == expected.shape
    close(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    ga, gb = gradient_check(ops.matmul, T(x), T(y))
    assert ga.shape == sa and gb.shape == sb


# ---- log-softmax and log-sum-exp ------------------------------------------------------------
def _np_logsumexp(x, axes):
    m = x.max(axis=axes, keepdims=True)
    return (np.log(np.exp(x - m).sum(axis=axes, keepdims=True)) + m).sum(axis=axes)


def test_logsoftmax():
    x = rand(4, 6)
    out = ops.logsoftmax(T(x))
    assert type(out.op) is ops.LogSoftmax
    expected = x - _np_logsumexp(x, 1)[:, None]
    close(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    gradient_check(ops.logsoftmax, T(x))
    big = np.array([[1e4, 1e4 + 1.0, -1e4]], dtype=DTYPE)
    out = ops.logsoftmax(T(big)).numpy()
    assert np.isfinite(out).all()
    close(out, big - _np_logsumexp(big.astype(np.float64), 1)[:, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape,axes", [((3, 4), None), ((3, 4), 1), ((3, 4), (0,)), ((2, 3, 4), (0, 2)), ((2, 3, 4), 2)]
)
def test_logsumexp(shape, axes):
    x = rand(*shape)
    out = ops.logsumexp(T(x), axes=axes)
    assert type(out.op) is ops.LogSumExp
    expected = _np_logsumexp(x, axes)
    if axes is None:
        full_reduction_shape(out.shape)
    else:
        assert out.shape == expected.shape
    close(out.numpy().reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)
    gradient_check(lambda t: ops.logsumexp(t, axes=axes), T(x))
    # the gradient is the softmax over the reduced axes
    out = ops.logsumexp(T(x), axes=axes)
    (g,) = out.op.gradient_as_tuple(T(np.ones(out.shape)), out)
    e = np.exp(x - x.max(axis=axes, keepdims=True))
    close(g.numpy(), e / e.sum(axis=axes, keepdims=True), rtol=1e-5, atol=1e-6)


def test_logsumexp_is_stable_for_huge_inputs():
    x = np.array([[1e5, 1e5 + 2.0, -1e5], [3e5, 3e5, 3e5]], dtype=DTYPE)
    out = ops.logsumexp(T(x), axes=(1,)).numpy()
    assert np.isfinite(out).all()
    close(out, _np_logsumexp(x.astype(np.float64), (1,)), rtol=1e-6, atol=1e-2)
    a = T(x)
    ops.summation(ops.logsumexp(a, axes=(1,))).backward()
    g = a.grad.numpy()
    assert np.isfinite(g).all()
    close(g.sum(axis=1), [1.0, 1.0], rtol=1e-5, atol=1e-5)


# ---- stack and split ------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_stack(axis):
    xs = [rand(3, 4) for _ in range(3)]
    out = ops.stack([T(x) for x in xs], axis=axis)
    assert type(out.op) is ops.Stack
    assert type(out.inputs[0].op) is ops.MakeTensorTuple
    expected = np.stack(xs, axis=axis)
    assert out.shape == expected.shape
    close(out.numpy(), expected)
    grads = gradient_check(lambda *ts: ops.stack(list(ts), axis=axis), *[T(x) for x in xs])
    assert len(grads) == 3
    # the gradient is split(out_grad, axis): one TensorTuple
    out = ops.stack([T(x) for x in xs], axis=axis)
    c = rand(*out.shape)
    (g,) = out.op.gradient_as_tuple(T(c), out)
    assert isinstance(g, ndl.TensorTuple) and len(g) == 3
    for k in range(3):
        close(g[k].numpy(), np.take(c, k, axis=axis))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_split(axis):
    x = rand(2, 3, 4)
    out = ops.split(T(x), axis=axis)
    assert isinstance(out, ndl.TensorTuple) and type(out.op) is ops.Split
    assert len(out) == x.shape[axis]
    for k in range(len(out)):
        expected = np.take(x, k, axis=axis)
        assert out[k].shape == expected.shape
        close(out[k].numpy(), expected)
    gradient_check(lambda t: ops.split(t, axis=axis), T(x))


def test_stack_of_split_round_trip_backward():
    x = rand(3, 4)
    a = T(x)
    parts = ops.split(a, axis=0)
    out = ops.stack([parts[i] for i in range(3)], axis=1)
    close(out.numpy(), x.T)
    ops.summation(out * T(np.arange(12).reshape(4, 3))).backward()
    close(a.grad.numpy(), np.arange(12).reshape(4, 3).T)


# ---- flip, dilate, undilate -----------------------------------------------------------------
@pytest.mark.parametrize("axes", [(0,), (1,), (0, 2), (0, 1, 2)])
def test_flip(axes):
    x = rand(2, 3, 4)
    out = ops.flip(T(x), axes=axes)
    close(out.numpy(), np.flip(x, axes))
    gradient_check(lambda t: ops.flip(t, axes=axes), T(x))


def _np_dilate(x, axes, dilation):
    shape = [d * (1 + dilation) if i in axes else d for i, d in enumerate(x.shape)]
    out = np.zeros(shape, dtype=x.dtype)
    out[
        tuple(slice(None, None, dilation + 1) if i in axes else slice(None) for i in range(x.ndim))
    ] = x
    return out


@pytest.mark.parametrize("axes,dilation", [((0,), 1), ((1,), 2), ((0, 1), 1), ((0, 1), 0)])
def test_dilate_and_undilate(axes, dilation):
    x = rand(3, 4)
    out = ops.dilate(T(x), axes=axes, dilation=dilation)
    expected = _np_dilate(x, axes, dilation)
    assert out.shape == expected.shape
    close(out.numpy(), expected)
    if dilation == 0:
        close(out.numpy(), x)
    gradient_check(lambda t: ops.dilate(t, axes=axes, dilation=dilation), T(x))
    back = ops.undilate(T(expected), axes=axes, dilation=dilation)
    assert back.shape == x.shape
    close(back.numpy(), x)
    assert type(back.op) is ops.UnDilate
    gradient_check(lambda t: ops.undilate(t, axes=axes, dilation=dilation), T(expected))


# ---- conv -----------------------------------------------------------------------------------
def _torch_conv(x, w, stride, padding):
    torch = pytest.importorskip("torch")
    out = torch.nn.functional.conv2d(
        torch.tensor(x.astype(np.float64)).permute(0, 3, 1, 2),
        torch.tensor(w.astype(np.float64)).permute(3, 2, 0, 1),
        stride=stride,
        padding=padding,
    )
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(
    "n,h,cin,cout,k,stride,padding",
    [
        (2, 5, 3, 4, 3, 1, 1),
        (1, 6, 2, 3, 3, 2, 1),
        (2, 5, 2, 2, 1, 1, 0),
        (1, 7, 2, 3, 3, 2, 0),
        (1, 4, 1, 2, 3, 1, 2),
    ],
)
def test_conv(n, h, cin, cout, k, stride, padding):
    x, w = rand(n, h, h, cin), rand(k, k, cin, cout)
    out = ops.conv(T(x), T(w), stride=stride, padding=padding)
    size = (h + 2 * padding - k) // stride + 1
    assert out.shape == (n, size, size, cout)
    close(out.numpy(), _torch_conv(x, w, stride, padding), rtol=1e-5, atol=1e-4)
    out2 = ops.Conv(stride=stride, padding=padding)(T(x), T(w))
    close(out2.numpy(), out.numpy())
    gx, gw = gradient_check(lambda a, b: ops.conv(a, b, stride=stride, padding=padding), T(x), T(w))
    assert gx.shape == x.shape and gw.shape == w.shape


def test_conv_padding_defaults():
    x, w = rand(1, 5, 5, 2), rand(3, 3, 2, 3)
    assert ops.conv(T(x), T(w)).shape == (1, 5, 5, 3)  # function: padding 1
    close(ops.conv(T(x), T(w)).numpy(), _torch_conv(x, w, 1, 1), rtol=1e-5, atol=1e-4)
    assert ops.Conv()(T(x), T(w)).shape == (1, 3, 3, 3)  # class: padding 0
    close(ops.Conv()(T(x), T(w)).numpy(), _torch_conv(x, w, 1, 0), rtol=1e-5, atol=1e-4)


def test_conv_gradients_against_torch():
    torch = pytest.importorskip("torch")
    x, w = rand(2, 6, 6, 3), rand(3, 3, 3, 4)
    a, b = T(x), T(w)
    out = ops.conv(a, b, stride=2, padding=1)
    c = rand(*out.shape)
    out.backward(T(c))
    xt = torch.tensor(x.astype(np.float64)).permute(0, 3, 1, 2).requires_grad_()
    wt = torch.tensor(w.astype(np.float64)).permute(3, 2, 0, 1).requires_grad_()
    ot = torch.nn.functional.conv2d(xt, wt, stride=2, padding=1)
    ot.backward(torch.tensor(c.astype(np.float64)).permute(0, 3, 1, 2))
    close(a.grad.numpy(), xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-4)
    close(b.grad.numpy(), wt.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-5, atol=1e-4)


# ---- tuple plumbing -------------------------------------------------------------------------
def test_make_tuple_and_tuple_get_item():
    x, y = rand(2, 3), rand(4)
    a, b = T(x), T(y)
    t = ops.make_tuple(a, b)
    assert isinstance(t, ndl.TensorTuple) and type(t.op) is ops.MakeTensorTuple
    assert len(t) == 2
    assert ops.tuple_get_item(t, 1) is b  # folded: the element of a tuple just made
    close(t[0].numpy(), x)
    s = ops.split(T(x), axis=0)
    item = ops.tuple_get_item(s, 1)
    assert type(item.op) is ops.TupleGetItem
    close(item.numpy(), x[1])
    # the gradient of an element reaches only its slice
    a = T(x)
    ops.summation(ops.tuple_get_item(ops.split(a, axis=0), 1)).backward()
    close(a.grad.numpy(), np.array([[0, 0, 0], [1, 1, 1]]))
    gradient_check(lambda t: ops.tuple_get_item(ops.split(t, axis=1), 2), T(x), op_inputs=False)
    # the adjoint of the tuple: out_grad at the index, zeros elsewhere
    s = ops.split(T(x), axis=1)
    item = ops.tuple_get_item(s, 2)
    c = rand(2)
    (g,) = item.op.gradient_as_tuple(T(c), item)
    assert isinstance(g, ndl.TensorTuple)  # the course's form: zeros at the other indices
    dense = _grad_arrays((g,), (s,))
    assert len(dense) == 3
    for k in range(3):
        close(dense[k], c if k == 2 else np.zeros(2))


def test_fused_add_scalars():
    x = rand(2, 3)
    out = ops.fused_add_scalars(T(x), 1.5, -2.0)
    assert isinstance(out, ndl.TensorTuple) and type(out.op) is ops.FusedAddScalars
    close(out[0].numpy(), x + 1.5)
    close(out[1].numpy(), x - 2.0)
    gradient_check(lambda t: ops.fused_add_scalars(t, 1.5, -2.0), T(x))


# ---- gradients of gradients and the mode's dtype --------------------------------------------
def test_gradients_are_differentiable():
    """Gradients are built from needle ops, so they have graphs of their own."""
    x = rand(3, low=0.5)
    a = T(x)
    out = ops.power_scalar(a, 3)
    (g,) = out.op.gradient_as_tuple(T(np.ones(3)), out)  # 3 a^2
    close(g.numpy(), 3 * x**2, rtol=1e-5)
    ops.summation(g).backward()  # d/da sum(3 a^2) = 6 a
    close(a.grad.numpy(), 6 * x, rtol=1e-5)


def test_numpy_mode_keeps_float64():
    x = rand(3, 4)
    out = ops.logsumexp(ops.exp(ops.matmul(T(x), T(rand(4, 2)))), axes=(1,))
    expected = np.float64 if NP_MODE else np.float32
    assert np.dtype(out.dtype) == expected
    if NP_MODE:
        assert isinstance(out.realize_cached_data(), np.ndarray)
        assert isinstance(ops.summation(out).realize_cached_data(), np.generic | np.ndarray)
