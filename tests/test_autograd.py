"""The autograd engine: graph building, backward order and accumulation, requires_grad,
detach/no_grad, higher-order gradients (against torch), memory, tuples, long graphs, lazy mode.

Per-op values and gradients are tested in test_ops.py; here the ops are only the means.
"""

import gc
import tracemalloc

import numpy as np
import pytest

import needle as ndl
import needle.autograd as autograd
from needle import backend_ndarray as nd

torch = pytest.importorskip("torch")


def tensor(x, device, dtype="float64", requires_grad=True):
    return ndl.Tensor(np.asarray(x), device=device, dtype=dtype, requires_grad=requires_grad)


def numerical_grad(f, x: np.ndarray, eps=1e-6) -> np.ndarray:
    """Central differences of the scalar function f at x (float64)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad


def assert_detached(t):
    assert t.requires_grad is False
    assert t.op is None and t.inputs == []


# ---- backward: order and accumulation ----------------------------------------------------
def test_reused_nodes_accumulate_gradients(device):
    x_np = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])

    def f(x):
        y = x * x + x  # x used three times
        z = y * y  # y used twice
        return z.sum()

    x = tensor(x_np, device)
    f(x).backward()
    expected = 2 * (x_np**2 + x_np) * (2 * x_np + 1)
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12)
    numeric = numerical_grad(lambda v: f(tensor(v, device, requires_grad=False)).numpy(), x_np)
    np.testing.assert_allclose(x.grad.numpy(), numeric, rtol=1e-6, atol=1e-8)


def test_diamond_graph_against_torch(device):
    rng = np.random.default_rng(0)
    x_np, w_np = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))

    def f(lib, x, w):
        a = x @ w  # one node feeding two branches which meet again
        b = lib.exp(a) if lib is torch else ndl.exp(a)
        c = a * 3.0
        d = b * c + a
        e = d / (1.0 + b)
        return (e.sum() if lib is torch else ndl.summation(e)) + (a * d).sum()

    x, w = tensor(x_np, device), tensor(w_np, device)
    f(ndl, x, w).backward()
    tx = torch.tensor(x_np, requires_grad=True)
    tw = torch.tensor(w_np, requires_grad=True)
    f(torch, tx, tw).backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_topological_order_visits_each_node_once_after_all_its_uses(device):
    x = tensor([1.0, 2.0], device)
    a = x * 2.0
    b = a + x
    c = a * b
    d = c + a
    order = autograd.find_topo_sort([d])
    assert len(order) == len({id(n) for n in order}) == 5
    visited, from_a = set(), []
    autograd.topo_sort_dfs(a, visited, from_a)  # the course's helper, one root at a time
    assert from_a == order[:2] and len(visited) == 2
    position = {id(n): i for i, n in enumerate(order)}
    for node in order:
        for inp in node.inputs:
            assert position[id(inp)] < position[id(node)]


def test_backward_twice_overwrites_rather_than_accumulates(device):
    x = tensor([1.0, 2.0, 3.0], device)
    y = (x * x).sum()
    y.backward()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0, 6.0])


def test_grad_is_none_before_backward(device):
    x = tensor([1.0, 2.0], device)
    y = x * 3.0
    assert x.grad is None and y.grad is None


def test_backward_default_adjoint_is_ones_also_for_non_scalars(device):
    x_np = np.arange(6.0).reshape(2, 3)
    x = tensor(x_np, device)
    (x * x).backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x_np)
    assert not x.grad.requires_grad  # no graph kept without create_graph


def test_course_topo_sort_example(device):
    """needle's hw1 example: subtraction is add(a, negate(b)), so the negation is a node."""
    a = tensor([[0.88282157]], device)
    b = tensor([[0.90170084]], device)
    c = 3 * a * a + 4 * b * a - a
    order = [n.numpy().item() for n in autograd.find_topo_sort([c])]
    np.testing.assert_allclose(
        order,
        [
            0.88282157,
            2.64846471,
            2.33812177,
            0.90170084,
            3.60680336,
            3.18415326,
            5.52227503,
            -0.88282157,
            4.63945346,
        ],
        rtol=1e-5,
    )


def test_backward_with_explicit_out_grad(device):
    x_np = np.arange(6.0).reshape(2, 3)
    g_np = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
    x = tensor(x_np, device)
    y = x * x * 3.0
    y.backward(tensor(g_np, device, requires_grad=False))
    np.testing.assert_allclose(x.grad.numpy(), 6.0 * x_np * g_np)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        y.backward(tensor(np.ones(3), device, requires_grad=False))


def test_backward_without_grad_raises(device):
    c = tensor([1.0, 2.0], device, requires_grad=False)
    with pytest.raises(RuntimeError, match="does not require grad"):
        c.backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        (c * 2.0).sum().backward()


# ---- requires_grad, detach, data, no_grad ------------------------------------------------
def test_requires_grad_propagation(device):
    a = tensor([1.0, 2.0, 3.0], device)
    c = tensor([4.0, 5.0, 6.0], device, requires_grad=False)
    assert a.requires_grad and not c.requires_grad
    both = a * c
    assert both.requires_grad and both.op is not None
    const_only = (c * 2.0 + c).exp()
    assert_detached(const_only)
    both.sum().backward()
    assert c.grad is None  # a constant input gets no gradient
    np.testing.assert_allclose(a.grad.numpy(), c.numpy())


def test_detach_shares_data_but_stops_gradients(device):
    x = tensor([1.0, 2.0, 3.0], device)
    y = x * 2.0
    d = y.detach()
    assert_detached(d)
    assert d.realize_cached_data() is y.realize_cached_data()
    (d * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0, 6.0])  # d is a constant


def test_data_getter_and_setter(device):
    x = tensor([1.0, 2.0, 3.0], device)
    y = x * 2.0
    data = y.data
    assert_detached(data)
    np.testing.assert_array_equal(data.numpy(), [2.0, 4.0, 6.0])
    x.data = tensor([5.0, 6.0, 7.0], device, requires_grad=False)
    assert x.requires_grad
    np.testing.assert_array_equal(x.numpy(), [5.0, 6.0, 7.0])
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [10.0, 12.0, 14.0])
    # Another shape is accepted, as in needle and PyTorch (course code sets a (1, n) bias's
    # data to an (n,) tensor).
    x.data = tensor([1.0, 2.0], device)
    assert x.shape == (2,)
    with pytest.raises(TypeError, match=r"float32.*float64"):
        x.data = tensor([1.0, 2.0, 3.0], device, dtype="float32")


def test_no_grad_context_manager(device):
    x = tensor([1.0, 2.0], device)
    assert ndl.is_grad_enabled()
    with ndl.no_grad():
        assert not ndl.is_grad_enabled()
        y = (x * 2.0 + x).sum()
        with ndl.no_grad():
            pass
        assert not ndl.is_grad_enabled()  # nested exit restores the outer state
    assert ndl.is_grad_enabled()
    assert_detached(y)
    np.testing.assert_allclose(y.numpy(), 9.0)
    with pytest.raises(KeyError), ndl.no_grad():
        raise KeyError("boom")
    assert ndl.is_grad_enabled()  # restored after an exception too
    assert (x * 2.0).requires_grad


def test_no_grad_decorator(device):
    @ndl.no_grad()
    def double(t):
        """Docstring kept."""
        assert not ndl.is_grad_enabled()
        return t * 2.0

    x = tensor([1.0, 2.0], device)
    y = double(x)
    assert_detached(y)
    np.testing.assert_array_equal(y.numpy(), [2.0, 4.0])
    assert double.__name__ == "double" and double.__doc__ == "Docstring kept."
    assert ndl.is_grad_enabled()
    assert (x * 2.0).requires_grad


def test_no_grad_bare_decorator(device):
    @ndl.no_grad  # without parentheses, as torch also accepts
    def double(t):
        assert not ndl.is_grad_enabled()
        return t * 2.0

    x = tensor([1.0, 2.0], device)
    assert_detached(double(x))
    assert ndl.is_grad_enabled()


# ---- Tensor basics and the needle API ------------------------------------------------------
def test_tensor_properties(device):
    x_np = np.arange(6.0).reshape(2, 3)
    t = ndl.Tensor(x_np, device=device)
    assert t.dtype == "float32"  # the default, even for float64 NumPy input
    assert t.device == device and t.shape == (2, 3) and t.ndim == 2
    out = t.numpy()
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, x_np)
    data = t.realize_cached_data()
    assert isinstance(data, nd.NDArray) and data.device == device
    np.testing.assert_array_equal(data.numpy(), x_np)
    assert t.requires_grad and t.is_leaf()
    assert ndl.Tensor([[1, 2]], device=device).dtype == "float32"
    assert (t * 2).dtype == "float32" and (t + t).sum().dtype == "float32"


def test_float64_tensors_stay_float64(device):
    x_np = np.array([1 / 3, 2 / 3, 1.0])
    t = ndl.Tensor(x_np, device=device, dtype="float64")
    assert t.dtype == "float64" and t.device == device
    np.testing.assert_array_equal(t.numpy(), x_np)  # exact: no float32 round trip
    y = (t * t + 1.0).exp().sum()
    assert y.dtype == "float64"
    y.backward()
    assert t.grad.dtype == "float64"
    np.testing.assert_allclose(t.grad.numpy(), 2 * x_np * np.exp(x_np**2 + 1), rtol=1e-14)
    again = ndl.Tensor(t, dtype="float32")
    assert again.dtype == "float32" and again.device == device


def test_tensor_from_ndarray_and_tensor(device):
    a = nd.array(np.arange(3.0), device=device)
    t = ndl.Tensor(a)
    assert t.device == device and t.dtype == "float32"
    assert ndl.Tensor(t).device == device
    np.testing.assert_array_equal(ndl.Tensor(t).numpy(), [0.0, 1.0, 2.0])


def test_needle_api_example(device):
    x = np.random.randn(3, 4).astype(np.float32)
    t = ndl.Tensor(x, device=device)
    s = ndl.ops.summation(t, axes=(1,))
    np.testing.assert_allclose(s.numpy(), x.sum(axis=1), rtol=1e-5, atol=1e-6)
    (s * ndl.Tensor([1.0, 2.0, 3.0], device=device)).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), np.repeat([[1.0], [2.0], [3.0]], 4, axis=1))
    assert t.grad.device == device

    a = ndl.backend_ndarray.array(x, device=device)
    assert isinstance(a, ndl.backend_ndarray.NDArray) and a.device == device
    np.testing.assert_array_equal(a.numpy(), x)
    np.testing.assert_allclose(
        ndl.summation(ndl.Tensor(a), axes=(1,)).numpy(), x.sum(axis=1), rtol=1e-5, atol=1e-6
    )


# ---- gradients of gradients --------------------------------------------------------------
def test_gradients_without_create_graph_are_detached(device):
    rng = np.random.default_rng(1)
    x = tensor(rng.standard_normal((3, 4)), device)
    w = tensor(rng.standard_normal((4, 2)), device)
    ndl.relu(x @ w).sum().backward()
    for g in (x.grad, w.grad):
        assert_detached(g)
    y = x * w.sum()  # a gradient must not be a graph node either when it is an input's data
    y.backward(tensor(np.ones((3, 4)), device, requires_grad=False))
    assert_detached(x.grad)
    assert_detached(w.grad)


def test_second_derivative_of_cube(device):
    x_np = np.array([-1.5, 0.5, 2.0, 3.0])
    x = tensor(x_np, device)
    (x**3).sum().backward(create_graph=True)
    first = x.grad
    assert first.requires_grad and first.op is not None
    np.testing.assert_allclose(first.numpy(), 3 * x_np**2)
    first.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 6 * x_np)
    assert_detached(x.grad)


def test_hessian_vector_product_against_torch_double_backward(device):
    rng = np.random.default_rng(2)
    x_np, w_np, v_np = (
        rng.standard_normal((3, 4)),
        rng.standard_normal((4, 2)),
        rng.standard_normal((3, 4)),
    )

    def f(x, w, lib):
        if lib is torch:
            return (torch.tanh(x @ w) ** 2).sum() + (torch.exp(x) / (1.0 + x * x)).sum()
        return (ndl.tanh(x @ w) ** 2).sum() + (ndl.exp(x) / (1.0 + x * x)).sum()

    x, w, v = tensor(x_np, device), tensor(w_np, device), tensor(v_np, device, requires_grad=False)
    f(x, w, ndl).backward(create_graph=True)
    gx = x.grad
    (gx * v).sum().backward()

    tx = torch.tensor(x_np, requires_grad=True)
    tw = torch.tensor(w_np, requires_grad=True)
    (tgx,) = torch.autograd.grad(f(tx, tw, torch), tx, create_graph=True)
    hx, hw = torch.autograd.grad((tgx * torch.tensor(v_np)).sum(), (tx, tw))

    np.testing.assert_allclose(gx.numpy(), tgx.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), hx.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(w.grad.numpy(), hw.numpy(), rtol=1e-9, atol=1e-11)


def test_third_derivative(device):
    x_np = np.array([-1.0, 0.5, 2.0])
    x = tensor(x_np, device)
    (x**4).sum().backward(create_graph=True)
    x.grad.sum().backward(create_graph=True)
    np.testing.assert_allclose(x.grad.numpy(), 12 * x_np**2)
    x.grad.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 24 * x_np)

    y = tensor(x_np, device)
    (ndl.exp(y * 2.0)).sum().backward(create_graph=True)
    for _ in range(2):
        y.grad.sum().backward(create_graph=True)
    np.testing.assert_allclose(y.grad.numpy(), 8 * np.exp(2 * x_np), rtol=1e-12)


# ---- memory --------------------------------------------------------------------------------
def _live_tensors() -> int:
    gc.collect()
    return autograd.TENSOR_COUNTER  # live Values, as needle counts them


def _train_mlp(device, steps=200, probes=(50, 200), keep_losses=False):
    """Manual-SGD steps of a 2-layer MLP on one fixed batch; live Tensors and traced bytes
    at each probe step, plus the first and last loss."""
    rng = np.random.default_rng(0)
    x = tensor(rng.standard_normal((16, 8)), device, "float32", requires_grad=False)
    y = tensor(rng.standard_normal((16, 4)), device, "float32", requires_grad=False)
    w1 = tensor(rng.standard_normal((8, 32)) / 3, device, "float32")
    w2 = tensor(rng.standard_normal((32, 4)) / 6, device, "float32")
    kept, counts, traced, losses = [], {}, {}, {}
    tracemalloc.start()
    try:
        for step in range(1, steps + 1):
            loss = ((ndl.relu(x @ w1) @ w2 - y) ** 2).sum() / 16
            loss.backward()
            w1.data = w1.data - 0.01 * w1.grad
            w2.data = w2.data - 0.01 * w2.grad
            if step in (1, steps):
                losses[step] = float(loss.numpy())
            if keep_losses:
                kept.append(loss)
            del loss
            if step in probes:
                counts[step] = _live_tensors()
                traced[step] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return counts, traced, losses


def test_tensor_counter_counts_live_values(device):
    gc.collect()
    start = autograd.TENSOR_COUNTER
    x = tensor([1.0, 2.0], device)
    y = (x * 2.0 + 1.0).sum()  # x, three op nodes
    assert autograd.TENSOR_COUNTER - start == 4
    y.backward()  # grads: ones for y, and the gradients of the three other nodes
    del x, y
    gc.collect()
    assert start == autograd.TENSOR_COUNTER


def test_training_memory_stays_flat(device):
    counts, traced, losses = _train_mlp(device)
    assert losses[200] < 0.5 * losses[1]  # it trains
    assert counts[200] - counts[50] <= 2, counts
    assert traced[200] - traced[50] < 64 * 1024, traced

    # The same measurement detects a per-step leak: keeping each step's loss (and with it its
    # graph) alive must grow both numbers well past the thresholds above.
    counts, traced, _ = _train_mlp(device, keep_losses=True)
    assert counts[200] - counts[50] >= 150 * 5, counts
    assert traced[200] - traced[50] > 4 * 64 * 1024, traced


# ---- the op contract ------------------------------------------------------------------------
def test_one_op_instance_serves_many_calls(device):
    """What an op saves for its gradient lives on the output node, not on the op: with one
    BatchNorm and one LSTMState instance each called twice, the first call's backward is
    still right (against torch), also through gradient_as_tuple on the finished node."""
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)) * 5 + 2
    w_np, b_np, g_np = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal((6, 3))
    x, w, b = tensor(x1, device), tensor(w_np, device), tensor(b_np, device)
    batch_norm = ndl.ops.BatchNorm()
    first = batch_norm(x, w, b)
    second = batch_norm(tensor(x2, device), w, b)
    np.testing.assert_allclose(first.saved.mean.numpy(), x1.mean(0), rtol=1e-12)
    np.testing.assert_allclose(second.saved.mean.numpy(), x2.mean(0), rtol=1e-12)
    first.backward(tensor(g_np, device, requires_grad=False))
    xt, wt, bt = (torch.tensor(v, requires_grad=True) for v in (x1, w_np, b_np))
    torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True).backward(
        torch.tensor(g_np)
    )
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(w.grad.numpy(), wt.grad.numpy(), rtol=1e-8, atol=1e-10)
    direct = batch_norm.gradient_as_tuple(tensor(g_np, device, requires_grad=False), first)
    np.testing.assert_allclose(direct[0].numpy(), xt.grad.numpy(), rtol=1e-8, atol=1e-10)

    gates1, gates2, c_np = (rng.standard_normal(s) for s in ((2, 8), (2, 8), (2, 2)))
    gates, c = tensor(gates1, device), tensor(c_np, device)
    lstm_state = ndl.ops.LSTMState()
    first = lstm_state(gates, c)
    lstm_state(tensor(gates2, device), tensor(-c_np, device))
    first.sum().backward()
    gt, ct = torch.tensor(gates1, requires_grad=True), torch.tensor(c_np, requires_grad=True)
    i, f, g, o = torch.chunk(gt, 4, dim=1)
    c_new = torch.sigmoid(f) * ct + torch.sigmoid(i) * torch.tanh(g)
    (torch.sigmoid(o) * torch.tanh(c_new) + c_new).sum().backward()
    np.testing.assert_allclose(gates.grad.numpy(), gt.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(c.grad.numpy(), ct.grad.numpy(), rtol=1e-10)


def test_op_errors_name_the_op_and_its_inputs(device):
    """A ValueError or TypeError from an op's compute comes back as the same type, led by the
    op's name and followed by its inputs' shapes, dtypes and devices, chained to the original."""
    a = ndl.Tensor(np.ones((3, 4)), device=device)
    b = ndl.Tensor(np.ones((2, 4)), device=device)
    with pytest.raises(ValueError) as info:
        a + b
    message = str(info.value)
    assert message.startswith("add: shapes (3, 4) and (2, 4) do not broadcast"), message
    assert f"(3, 4) float32 on {device}, (2, 4) float32 on {device}" in message
    assert type(info.value.__cause__) is ValueError
    with pytest.raises(ValueError, match=r"^matmul: shapes \(3, 4\) and \(2, 4\)"):
        a @ b  # NDArray's message names matmul already: once, not twice
    with pytest.raises(TypeError, match=r"^reshape: .*\(inputs: \(3, 4\) float32"):
        ndl.reshape(a, ("x",))
    with pytest.raises(ValueError, match=r"^stack: .*\(inputs: \(\(3, 4\) float32.*\(2, 4\)"):
        ndl.stack([a, b], 0)  # a tuple input, described element by element


def test_op_errors_in_lazy_mode_come_at_realize(device, lazy_mode):
    a = ndl.Tensor(np.ones((3, 4)), device=device)
    out = a + ndl.Tensor(np.ones((2, 4)), device=device)
    with pytest.raises(ValueError, match=r"^add: shapes \(3, 4\) and \(2, 4\)"):
        out.realize_cached_data()


def test_engine_names_no_op():
    """Tuple adjoints are combined by the tuple (TensorTuple._sum_adjoints), not by the
    engine singling out TupleGetItem."""
    import inspect

    engine = inspect.getsource(autograd.compute_gradient_of_variables)
    op_classes = [
        name
        for name, obj in vars(ndl.ops).items()
        if isinstance(obj, type)
        and issubclass(obj, autograd.Op)
        and obj.compute is not autograd.Op.compute
    ]
    assert "TupleGetItem" in op_classes
    assert not [name for name in op_classes if name in engine]


def test_sparse_tuple_adjoints_from_any_op(device):
    """An op of our own taking one element of a tuple may send back a sparse adjoint, {index:
    adjoint}: elements taken twice are summed, elements never taken get zeros."""

    class Second(ndl.autograd.TensorOp):
        def compute(self, t):
            return t[1]

        def gradient(self, out_grad, node):
            return {1: out_grad}

    a, b = tensor([1.0, 2.0], device), tensor([3.0, 4.0], device)
    pair = ndl.ops.fused_add_scalars(a * b, 0.0, 1.0)
    (Second()(pair) * Second()(pair) + ndl.ops.tuple_get_item(pair, 1)).sum().backward()
    # d/d(ab) sum((ab + 1)^2 + ab + 1) = 2 (ab + 1) + 1
    np.testing.assert_allclose(a.grad.numpy(), (2 * (a.numpy() * b.numpy() + 1) + 1) * b.numpy())


# ---- tuples ------------------------------------------------------------------------------------
def test_make_tuple(device):
    a = tensor([1.0, 2.0], device)
    b = tensor([[3.0]], device, requires_grad=False)
    t = ndl.make_tuple(a, b)
    assert isinstance(t, ndl.TensorTuple) and len(t) == 2 and t.requires_grad
    assert t[0] is a and t[1] is b  # taking apart a tuple just made needs no node
    assert len(t.tuple()) == 2 and all(p is q for p, q in zip(t.tuple(), (a, b)))
    assert [p.shape for p in t] == [(2,), (1, 1)]
    assert "TensorTuple" in repr(t)
    detached = t.detach()
    assert isinstance(detached, ndl.TensorTuple) and not detached.requires_grad
    assert len(detached) == 2
    summed = t + ndl.make_tuple(a, b)
    np.testing.assert_array_equal(summed[0].numpy(), [2.0, 4.0])
    np.testing.assert_array_equal(summed[1].numpy(), [[6.0]])


def test_tuple_get_item_gradient(device):
    a = tensor([1.0, 2.0], device)
    b = tensor([3.0, 4.0, 5.0], device)
    t = ndl.make_tuple(a, b)
    second = ndl.ops.TupleGetItem(1)(t, fold_const=False)  # a real graph node this time
    assert second.op is not None
    (second * second).sum().backward()
    np.testing.assert_allclose(b.grad.numpy(), [6.0, 8.0, 10.0])
    np.testing.assert_allclose(a.grad.numpy(), [0.0, 0.0])


def test_split_values_and_gradients(device):
    x_np = np.arange(12.0).reshape(3, 4)
    x = tensor(x_np, device)
    parts = ndl.split(x, 1)
    assert isinstance(parts, ndl.TensorTuple) and len(parts) == 4
    for i, part in enumerate(parts):
        np.testing.assert_array_equal(part.numpy(), x_np[:, i])
    # Two elements of one tuple: their adjoints meet as a sum of TensorTuples.
    (parts[0] * 2.0 + parts[2] * parts[2]).sum().backward()
    expected = np.zeros((3, 4))
    expected[:, 0] = 2.0
    expected[:, 2] = 2 * x_np[:, 2]
    np.testing.assert_allclose(x.grad.numpy(), expected)

    y = tensor(x_np, device)
    restacked = ndl.stack(list(ndl.split(y, 0)), 0)
    np.testing.assert_array_equal(restacked.numpy(), x_np)
    (restacked * restacked).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), 2 * x_np)


def test_split_adjoints_are_combined_by_element(device, monkeypatch):
    """An element taken twice gets the sum of its adjoints, one never taken gets zeros, and
    a 20-way split costs O(20) backward ops (not 20 tuples of 20 added up); gradients of
    gradients flow through it (against torch)."""
    x_np = np.random.default_rng(0).standard_normal((3, 20))
    v_np = np.random.default_rng(1).standard_normal((3, 20))
    taken = [i for i in range(20) if i != 7] + [3]

    def loss(parts, x):
        return sum(((parts[i] * parts[i]) * x.sum()).sum() for i in taken)

    x = tensor(x_np, device)
    out = loss(ndl.split(x, 1), x)
    made = []
    original = ndl.Tensor.make_from_op.__func__
    monkeypatch.setattr(
        ndl.Tensor,
        "make_from_op",
        classmethod(lambda cls, op, inputs: made.append(op) or original(cls, op, inputs)),
    )
    out.backward(create_graph=True)
    monkeypatch.undo()
    assert len(made) < 400, f"{len(made)} ops in backward"
    first = x.grad
    (first * tensor(v_np, device, requires_grad=False)).sum().backward()

    xt = torch.tensor(x_np, requires_grad=True)
    (first_t,) = torch.autograd.grad(loss(torch.unbind(xt, 1), xt), xt, create_graph=True)
    (first_t * torch.tensor(v_np)).sum().backward()
    np.testing.assert_allclose(first.numpy(), first_t.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-10)


def test_fused_tuple_op(device):
    x = tensor([1.0, 2.0], device)
    first, second = ndl.fused_add_scalars(x, 1.0, 10.0)
    np.testing.assert_array_equal(first.numpy(), [2.0, 3.0])
    np.testing.assert_array_equal(second.numpy(), [11.0, 12.0])
    (first * second).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), (x.numpy() + 10.0) + (x.numpy() + 1.0))


# ---- long graphs -----------------------------------------------------------------------------
def test_long_chain_backward_has_no_recursion_limit(device):
    x = tensor([1.0, -2.0], device)
    y = x
    for _ in range(5000):
        y = y + x  # x feeds every node: 5001 adjoints to sum
    y = y * 1.0
    for _ in range(5000):
        y = y + 1.0  # and a 5000-deep chain
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5001.0, 5001.0])
    np.testing.assert_allclose(y.numpy(), 5001 * x.numpy() + 5000)
    del y  # freeing a deep graph must not overflow the stack either
    gc.collect()


# ---- lazy mode ---------------------------------------------------------------------------------
@pytest.fixture
def lazy_mode():
    previous = autograd.LAZY_MODE
    autograd.LAZY_MODE = True
    try:
        yield
    finally:
        autograd.LAZY_MODE = previous


def _lazy_model(x, w):
    h = (x * 2.0 + 1.0).exp()
    return ndl.summation(ndl.tanh(h @ w) / 3.0, axes=(1,))


def test_lazy_mode_defers_computation(device, lazy_mode):
    rng = np.random.default_rng(3)
    x_np, w_np = rng.standard_normal((3, 4)) / 4, rng.standard_normal((4, 2))
    x, w = tensor(x_np, device), tensor(w_np, device)
    c = tensor(np.ones(2), device, requires_grad=False)
    out = _lazy_model(x, w)
    const = c * 2.0  # without requires_grad too: the node is kept, not computed
    nodes = autograd.find_topo_sort([out])
    assert all(n.cached_data is None for n in nodes if n.op is not None)
    assert const.cached_data is None and const.op is not None

    data = out.realize_cached_data()
    assert isinstance(data, nd.NDArray)
    assert all(n.cached_data is not None for n in nodes)  # every input was realized on the way
    assert out.realize_cached_data() is data  # and only once
    np.testing.assert_array_equal(const.numpy(), [2.0, 2.0])

    out.sum().backward()
    lazy_grads = x.grad.numpy(), w.grad.numpy()

    autograd.LAZY_MODE = False
    xe, we = tensor(x_np, device), tensor(w_np, device)
    eager = _lazy_model(xe, we)
    assert eager.cached_data is not None
    np.testing.assert_allclose(data.numpy(), eager.numpy(), rtol=1e-14)
    eager.sum().backward()
    np.testing.assert_allclose(lazy_grads[0], xe.grad.numpy(), rtol=1e-14)
    np.testing.assert_allclose(lazy_grads[1], we.grad.numpy(), rtol=1e-14)


def test_lazy_long_chain_realizes_without_recursion_limit(device, lazy_mode):
    x = tensor([1.0, 2.0], device)
    y = x
    for _ in range(5000):
        y = y + 1.0
    assert y.cached_data is None
    np.testing.assert_allclose(y.numpy(), [5001.0, 5002.0])
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 1.0])
