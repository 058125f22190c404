"""Spec section 3: Tensor and autograd (needle.autograd), in both modes."""

import gc

import numpy as np
import pytest

import needle as ndl
from needle import autograd, ops

NP_MODE = ndl.BACKEND == "np"


def test_contents():
    for name in (
        "Op", "TensorOp", "TensorTupleOp", "Value", "Tensor", "TensorTuple",
        "compute_gradient_of_variables", "find_topo_sort", "topo_sort_dfs", "sum_node_list",
        "array_api", "NDArray", "TENSOR_COUNTER",
    ):  # fmt: skip
        assert hasattr(autograd, name), name
    assert autograd.LAZY_MODE is False


class Twice(ndl.TensorOp):
    """A user-defined op, as course code writes them."""

    def compute(self, a):
        return a * 2

    def gradient(self, out_grad, node):
        return out_grad * 2


def test_user_ops_and_gradient_as_tuple():
    x = ndl.Tensor(np.arange(3.0))
    y = Twice()(x)
    assert isinstance(y, ndl.Tensor) and y.op.__class__ is Twice and y.inputs == [x]
    np.testing.assert_allclose(y.numpy(), [0, 2, 4])
    c = np.random.randn(3)
    (g,) = y.op.gradient_as_tuple(ndl.Tensor(c), y)
    np.testing.assert_allclose(g.numpy(), 2 * c, rtol=1e-6)
    pair = ops.split(ndl.Tensor(np.ones((2, 3))), axis=0)
    assert isinstance(pair, ndl.TensorTuple) and len(pair) == 2


def test_value_fields_and_methods():
    x = ndl.Tensor([1.0, 2.0])
    assert x.op is None and x.inputs == [] and x.is_leaf() and x.requires_grad
    assert x.num_outputs == 1
    y = x * 3
    assert not y.is_leaf() and y.requires_grad and y.realize_cached_data() is y.cached_data
    const = ndl.Tensor.make_const(x.realize_cached_data())
    assert not const.requires_grad and const.is_leaf()
    z = ndl.Tensor.make_from_op(ops.EWiseAdd(), [x, x])
    np.testing.assert_allclose(z.numpy(), [2.0, 4.0])
    v = ndl.Tensor.__new__(ndl.Tensor)
    v._init(None, [], cached_data=x.realize_cached_data())
    assert v.requires_grad is False  # no input requires grad
    w = ndl.Tensor.__new__(ndl.Tensor)
    w._init(ops.Negate(), [x], num_outputs=1)
    assert w.requires_grad is True


def test_no_input_requiring_grad_gives_a_detached_result():
    a = ndl.Tensor([1.0], requires_grad=False)
    b = a + 1
    assert not b.requires_grad and b.op is None and b.inputs == []


def test_tensor_counter_counts_live_values_and_graphs_are_freed():
    gc.collect()
    before = autograd.TENSOR_COUNTER
    x = ndl.Tensor(np.random.randn(4, 3))
    assert before + 1 == autograd.TENSOR_COUNTER
    for _ in range(5):
        loss = ((x * x).sum() + x.sum()).sum()
        loss.backward()
        del loss
    x.grad = None
    gc.collect()
    assert before + 1 == autograd.TENSOR_COUNTER
    del x
    gc.collect()
    assert before == autograd.TENSOR_COUNTER


@pytest.mark.parametrize(
    "data, want",
    [
        (np.random.randn(2, 3), "float64"),
        ([[1, 2], [3, 4]], "int64"),
        (np.arange(4, dtype=np.uint8), "uint8"),
        (np.float32(2.5), "float32"),
        ([1.5, 2.5], "float64"),
    ],
)
def test_construction_and_dtype(data, want):
    t = ndl.Tensor(data, unknown_keyword="ignored")
    np.testing.assert_array_equal(t.numpy(), np.array(data).astype(t.numpy().dtype))
    if NP_MODE:
        assert isinstance(t.cached_data, np.ndarray) and t.dtype == np.dtype(want)
        assert t.cached_data is not data  # a copy
    else:
        assert t.dtype == "float32" and t.cached_data.dtype == "float32"
    assert isinstance(t.shape, tuple) and t.shape == np.shape(data)


@pytest.mark.parametrize("dtype", ["float32", np.float32, np.dtype("float32")])
def test_dtype_spellings(dtype):
    t = ndl.Tensor(np.random.randn(3), dtype=dtype)
    assert t.dtype == "float32"


def test_a_tensor_argument_is_shared_or_copied():
    a = ndl.Tensor(np.random.randn(3), dtype="float32")
    assert ndl.Tensor(a).realize_cached_data() is a.realize_cached_data()
    if NP_MODE:
        b = ndl.Tensor(a, dtype="float64")
        assert b.dtype == np.float64 and b.realize_cached_data() is not a.realize_cached_data()
    else:
        b = ndl.Tensor(a, device=ndl.cpu_numpy())
        assert b.device == ndl.cpu_numpy()
        np.testing.assert_array_equal(b.numpy(), a.numpy())


def test_float64_stays_float64_in_numpy_mode_for_gradient_checks():
    x = ndl.Tensor(np.random.randn(5, 4))
    y = (x * x).sum()
    y.backward()
    if NP_MODE:
        assert x.grad.dtype == np.float64
        np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy(), rtol=1e-12)
    else:
        np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy(), rtol=1e-6)


def test_numpy_mode_cached_data_is_a_numpy_array_course_code_can_use():
    if not NP_MODE:
        assert isinstance(ndl.Tensor([1.0]).cached_data, ndl.backend_ndarray.NDArray)
        return
    x = ndl.Tensor(np.arange(12.0).reshape(4, 3))
    data = x.realize_cached_data()
    assert isinstance(data, np.ndarray)
    parts = np.array_split(data, 2)
    assert [p.shape for p in parts] == [(2, 3), (2, 3)]
    assert data.astype(np.uint8).dtype == np.uint8
    data.flat[4] += 0.5  # perturbing the data in place changes what ops see
    np.testing.assert_allclose((x * 1).numpy().flat[4], 4.5)
    total = x.sum()
    assert np.ndim(total.cached_data) == 0  # a NumPy scalar after a full reduction


def test_integer_labels_and_uint8_arrays_work():
    y = ndl.Tensor(np.array([3, 0, 2], dtype=np.uint8))
    z = ndl.Tensor(np.random.randn(3, 4))
    loss = ndl.nn.SoftmaxLoss()(z, y)
    zs = z.numpy()
    want = np.mean(np.log(np.exp(zs).sum(1)) - zs[np.arange(3), [3, 0, 2]])
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5)
    np.testing.assert_array_equal(y.numpy().astype(int), [3, 0, 2])


def test_members():
    x = ndl.Tensor(np.random.randn(2, 3).astype(np.float32))
    assert x.dtype == "float32"
    if NP_MODE:
        assert x.device == ndl.cpu() and repr(x.device) == "needle.cpu()"
    else:
        assert x.device == ndl.cpu()
    d = x.detach()
    assert d.is_leaf() and not d.requires_grad
    np.testing.assert_array_equal(d.numpy(), x.numpy())
    assert x.data.is_leaf() and not x.data.requires_grad
    assert repr(x).startswith("needle.Tensor(") and str(x) == str(x.realize_cached_data())
    assert x.sum(axes=(1,)).shape == (2,)
    assert x.reshape((3, 2)).shape == (3, 2)
    assert x.broadcast_to((4, 2, 3)).shape == (4, 2, 3)
    assert x.transpose().shape == (3, 2) and x.transpose((0, 1)).shape == (3, 2)
    assert x.matmul(ndl.Tensor(np.ones((3, 5)))).shape == (2, 5)


def test_data_setter_swaps_data_without_checking_shape():
    bias = ndl.nn.Parameter(np.zeros((1, 4)), dtype="float32")
    new = ndl.Tensor(np.arange(4.0), dtype="float32")
    bias.data = new
    assert bias.shape == (4,)
    np.testing.assert_array_equal(bias.numpy(), np.arange(4.0))
    with pytest.raises((TypeError, AssertionError)):
        bias.data = ndl.Tensor(np.arange(4.0), dtype="float64")


def test_grad_is_set_by_backward_and_reset_to_none():
    x = ndl.Tensor([1.0, 2.0])
    assert getattr(x, "grad", None) is None
    (x * x).sum().backward()
    assert x.grad is not None
    opt = ndl.optim.SGD([x], lr=0.1)
    opt.reset_grad()
    assert x.grad is None


def test_operators_record_the_course_ops():
    a, b = ndl.Tensor([2.0, 3.0]), ndl.Tensor([4.0, 5.0])
    cases = {
        a + b: ops.EWiseAdd, a * b: ops.EWiseMul, a / b: ops.EWiseDiv, a**b: ops.EWisePow,
        -a: ops.Negate, a + 1: ops.AddScalar, a * 2: ops.MulScalar, a / 2: ops.DivScalar,
        a**2: ops.PowerScalar, 1 + a: ops.AddScalar, 2 * a: ops.MulScalar,
    }  # fmt: skip
    for out, op in cases.items():
        assert type(out.op) is op
    m = ndl.Tensor(np.ones((2, 2))) @ ndl.Tensor(np.ones((2, 2)))
    assert type(m.op) is ops.MatMul
    d = a - b
    assert type(d.op) is ops.EWiseAdd and type(d.inputs[1].op) is ops.Negate
    assert d.inputs[0] is a and d.inputs[1].inputs[0] is b
    assert autograd.find_topo_sort([d]) == [a, b, d.inputs[1], d]
    e = a - 3
    assert type(e.op) is ops.AddScalar and e.op.scalar == -3
    np.testing.assert_allclose(e.numpy(), [-1.0, 0.0])


@pytest.mark.parametrize(
    "scalar", [2, 2.5, np.float32(2.5), np.int64(2), np.array(2.5), np.array([2.5])]
)
def test_scalars_may_be_numpy_objects(scalar):
    a = ndl.Tensor([1.0, 4.0])
    value = float(np.asarray(scalar).reshape(-1)[0])
    np.testing.assert_allclose(ops.divide_scalar(a, scalar).numpy(), np.array([1.0, 4.0]) / value)
    np.testing.assert_allclose(ops.add_scalar(a, scalar=scalar).numpy(), [1 + value, 4 + value])
    np.testing.assert_allclose(ops.power_scalar(a, np.int64(0)).numpy(), [1.0, 1.0])


def test_identity_semantics():
    a, b = ndl.Tensor([1.0]), ndl.Tensor([1.0])
    assert (a == a) is True and (a == b) is False and (a != b) is True
    assert bool(ndl.Tensor([0.0])) and bool(ndl.Tensor(np.zeros((0,))))
    assert (a, b) != (b, a) and (a, b) == (a, b)
    d = {a: 1, b: 2}
    assert d[a] == 1 and d[b] == 2 and len({a, b, a}) == 2
    np.testing.assert_array_equal(a.eq(b).numpy(), [True])  # PyTorch's == is eq()


def test_backward_defaults_and_semantics():
    x = ndl.Tensor(np.array([[1.0, 2.0], [3.0, 4.0]]))
    y = x * x  # a non-scalar output: out_grad defaults to ones
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())
    assert y.grad is not None  # every node's grad is assigned, intermediates included
    np.testing.assert_allclose(y.grad.numpy(), np.ones((2, 2)))
    z = (x * 3).sum()
    z.backward()  # a second backward replaces .grad
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 2), 3.0))


def test_gradients_have_graphs_the_course_hw1_check():
    x2 = ndl.Tensor([6])
    x3 = ndl.Tensor([0])
    y = x2 * x2 + x2 * x3
    # The course's gradients keep their graph: so do the numpy mode's by default (hw1's
    # mode); the NDArray mode's, as PyTorch's, only with create_graph=True (see backward).
    y.backward(**({} if NP_MODE else {"create_graph": True}))
    grad_x2, grad_x3 = x2.grad, x3.grad
    grad_x2.backward()  # the gradient of a gradient
    grad_x2_x2, grad_x2_x3 = x2.grad, x3.grad
    x2_val, x3_val = x2.numpy(), x3.numpy()
    assert y.numpy() == x2_val * x2_val + x2_val * x3_val
    assert grad_x2.numpy() == 2 * x2_val + x3_val
    assert grad_x3.numpy() == x2_val
    assert grad_x2_x2.numpy() == 2
    assert grad_x2_x3.numpy() == 1


def test_find_topo_sort_is_the_course_post_order():
    a1, b1 = ndl.Tensor(np.asarray([[0.88282157]])), ndl.Tensor(np.asarray([[0.90170084]]))
    c1 = 3 * a1 * a1 + 4 * b1 * a1 - a1
    order = autograd.find_topo_sort([c1])
    want = []

    def visit(node):
        if any(node is w for w in want):
            return
        for inp in node.inputs:
            visit(inp)
        want.append(node)

    visit(c1)
    assert len(order) == len(want) == 9 and all(p is q for p, q in zip(order, want))
    visited, topo = set(), []
    autograd.topo_sort_dfs(c1, visited, topo)
    assert all(p is q for p, q in zip(topo, want))


def test_sum_node_list_and_compute_gradient_of_variables():
    a, b = ndl.Tensor([1.0]), ndl.Tensor([2.0])
    total = autograd.sum_node_list([a, b, a])
    np.testing.assert_allclose(total.numpy(), [4.0])
    out = a * b
    autograd.compute_gradient_of_variables(out, ndl.Tensor([1.0]))
    np.testing.assert_allclose(a.grad.numpy(), [2.0])


def test_tensor_tuple():
    t = ops.make_tuple(ndl.Tensor([1.0]), ndl.Tensor([2.0, 3.0]))
    assert len(t) == 2 and t[1].shape == (2,)
    assert type(t[0].op) is not ops.TupleGetItem or t[0].inputs  # folded or a get-item node
    assert len(t.tuple()) == 2 and repr(t).startswith("needle.TensorTuple(")
    u = t + t
    np.testing.assert_allclose(u[1].numpy(), [4.0, 6.0])
    d = t.detach()
    assert isinstance(d, ndl.TensorTuple) and not d.requires_grad
    assert isinstance(t.cached_data, tuple)
