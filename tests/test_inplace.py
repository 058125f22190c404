"""In-place ops against PyTorch: values, aliasing, gradients through modified non-leaves, and
the version rule (a value backward needs, modified after it was used, is an error at backward).

Every case runs the same code on a needle tensor and a torch tensor (the methods have torch's
names); `conv` turns NumPy data into the library's tensors for operands and indices.
"""

import numpy as np
import pytest
import torch

import needle as ndl
from needle import nn

NUMPY_MODE = ndl.backend_selection.BACKEND == "np"
RNG = np.random.default_rng(16)
X = RNG.standard_normal((3, 4)).astype(np.float32)
OTHER = RNG.standard_normal((3, 4)).astype(np.float32)
ROW = RNG.standard_normal((4,)).astype(np.float32)
MASK = X > 0
ROWS = np.array([2, 0])


def needle_conv(device):
    return lambda a, grad=False: ndl.Tensor(
        a, device=device, dtype=str(a.dtype), requires_grad=grad
    )


def torch_conv(a, grad=False):
    return torch.tensor(a, requires_grad=grad)


def _iadd(t, o, conv):
    t += o
    return t


def _imul(t, o, conv):
    t *= o
    return t


def _isub(t, o, conv):
    t -= 2.0
    return t


def _idiv(t, o, conv=None):
    t /= o
    return t


def _set(index, value):
    """t[index] = value, index and value NumPy (converted for the library) or Python."""

    def case(t, o, conv):
        idx = conv(index) if isinstance(index, np.ndarray) else index
        t[idx] = conv(value) if isinstance(value, np.ndarray) else value
        return t

    return case


def _set_operand(index):
    """t[index] = the operand's values at that index (the operand gets a gradient)."""

    def case(t, o, conv):
        idx = conv(index) if isinstance(index, np.ndarray) else index
        t[idx] = o[idx]
        return t

    return case


CASES = {
    "add_": lambda t, o, c: t.add_(o),
    "add_alpha": lambda t, o, c: t.add_(o, alpha=2.5),
    "add_row": lambda t, o, c: t.add_(c(ROW)),
    "sub_": lambda t, o, c: t.sub_(o, alpha=0.5),
    "mul_": lambda t, o, c: t.mul_(o),
    "mul_scalar": lambda t, o, c: t.mul_(3.0),
    "add_itself": lambda t, o, c: t.add_(t),
    "div_": lambda t, o, c: t.div_(o * o + 1),
    "clamp_": lambda t, o, c: t.clamp_(-0.5, 0.25),
    "zero_": lambda t, o, c: t.zero_(),
    "fill_": lambda t, o, c: t.fill_(1.5),
    "copy_": lambda t, o, c: t.copy_(o),
    "copy_row": lambda t, o, c: t.copy_(c(ROW)),
    "iadd": _iadd,
    "isub": _isub,
    "imul": _imul,
    "idiv": lambda t, o, c: _idiv(t, o * o + 1),
    "set_int": _set(1, 7.0),
    "set_slice": _set((slice(None), slice(1, 3)), -2.0),
    "set_row_array": _set(0, ROW),
    "set_mask": _set(MASK, 0.0),
    "set_rows": _set(ROWS, ROW),
    "set_none_ellipsis": _set((None, Ellipsis, 2), 4.0),
    "set_from_operand": _set_operand((slice(0, 2), 1)),
    "set_mask_from_operand": _set_operand(MASK),
}


@pytest.mark.parametrize("case", CASES)
def test_values_and_aliases_match_torch(case, device):
    """Outside autograd: the values are torch's, the tensor is the same object, a detached
    alias (sharing the buffer) sees the write, and the version counts it."""
    conv = needle_conv(device)
    x, o = conv(X), conv(OTHER)
    alias = x.detach()
    out = CASES[case](x, o, conv)
    tx = torch_conv(X)
    CASES[case](tx, torch_conv(OTHER), torch_conv)
    assert out is x
    np.testing.assert_allclose(x.numpy(), tx.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(alias.numpy(), x.numpy())
    assert x._version >= 1


@pytest.mark.parametrize("case", CASES)
def test_gradients_through_a_modified_non_leaf_match_torch(case, device):
    """Inside autograd, on a non-leaf: the gradients of both leaves are torch's."""
    conv = needle_conv(device)
    w, o = conv(X, grad=True), conv(OTHER, grad=True)
    h = w * 1.5
    CASES[case](h, o, conv)
    (h * conv(OTHER + 2)).sum().backward()
    tw, to = torch_conv(X, grad=True), torch_conv(OTHER, grad=True)
    th = tw * 1.5
    CASES[case](th, to, torch_conv)
    (th * torch_conv(OTHER + 2)).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)
    if to.grad is None:
        assert o.grad is None
    else:
        np.testing.assert_allclose(o.grad.numpy(), to.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_consumers_from_before_get_the_old_node(device):
    """y used h before h.mul_(3); z uses it after: each gets the gradient of the h it saw."""
    conv = needle_conv(device)
    w = conv(X, grad=True)
    h = w + 1
    y = h * 2
    h.mul_(3)
    z = h + y
    z.sum().backward()
    tw = torch_conv(X, grad=True)
    th = tw + 1
    ty = th * 2
    th.mul_(3)
    (th + ty).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-6)


def test_modified_value_backward_needs_is_an_error(device):
    """Mul saves both operands: modifying one after the product raises at backward, naming
    the op and the in-place op, as torch raises."""
    conv = needle_conv(device)
    w = conv(X, grad=True)
    h = w * 2
    loss = (h * w).sum()
    h.add_(1)
    with pytest.raises(RuntimeError, match=r"multiply.*input 0.*add_"):
        loss.backward()
    tw = torch_conv(X, grad=True)
    th = tw * 2
    tloss = (th * tw).sum()
    th.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        tloss.backward()


@pytest.mark.parametrize("create_graph", [False, True])
def test_labels_modified_after_the_loss(create_graph, device):
    """Labels written in place after a softmax loss: backward, and a gradient of gradients,
    which reads them again (create_graph), use them as they were, as torch's saved target."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 2], dtype=np.float32)
    logits = ndl.Tensor(z, device=device, requires_grad=True)
    y = ndl.Tensor(labels, device=device, requires_grad=False)
    loss = nn.SoftmaxLoss()(logits, y)
    y.add_(-1.0)  # every label moves (one out of range)
    loss.backward(create_graph=create_graph)
    tz = torch.tensor(z, requires_grad=True)
    torch.nn.functional.cross_entropy(tz, torch.tensor(labels).long()).backward()
    np.testing.assert_allclose(logits.grad.numpy(), tz.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_modified_through_an_alias_is_an_error(device):
    """A write through a detached alias or a view of the same buffer counts too."""
    conv = needle_conv(device)
    w = conv(X, grad=True)
    h = w * 2
    flat = h.reshape((12,))
    loss = (flat * flat).sum()
    h.detach().mul_(0.5)
    with pytest.raises(RuntimeError, match="modified by mul_"):
        loss.backward()


def test_unneeded_values_may_be_modified(device):
    """Add needs no values: modifying its input afterwards is fine (as in torch)."""
    conv = needle_conv(device)
    w, o = conv(X, grad=True), conv(OTHER, grad=True)
    h = w * o
    y = h + o
    h.mul_(4)
    (y.sum() + h.sum()).backward()
    tw, to = torch_conv(X, grad=True), torch_conv(OTHER, grad=True)
    th = tw * to
    ty = th + to
    th.mul_(4)
    (ty.sum() + th.sum()).backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(o.grad.numpy(), to.grad.numpy(), rtol=1e-6)


def test_leaf_that_requires_grad(device):
    """add_ on such a leaf raises (torch's rule); under no_grad it writes; x += y on it gives
    a new tensor, as course code (whose tensors require grad by default) always had."""
    conv = needle_conv(device)
    w = conv(X, grad=True)
    with pytest.raises(RuntimeError, match="add_: a leaf tensor that requires grad"):
        w.add_(1)
    with ndl.no_grad():
        w.add_(1)
    np.testing.assert_allclose(w.numpy(), X + 1)
    before = w
    w += 1
    assert w is not before and not w.is_leaf()
    np.testing.assert_allclose(before.numpy(), X + 1)


def test_bad_writes_raise(device):
    conv = needle_conv(device)
    x = conv(X)
    with pytest.raises(ValueError, match=r"add_: the result has shape \(2, 3, 4\)"):
        x.add_(conv(np.stack([OTHER, OTHER])))
    if not NUMPY_MODE:  # the numpy mode's broadcast_to result is a copy: nothing to refuse
        with pytest.raises(RuntimeError, match="broadcast view"):
            conv(ROW).broadcast_to((3, 4)).add_(1)
    labels = ndl.Tensor(np.array([1, 2]), device=device, dtype="int64", requires_grad=False)
    with pytest.raises(TypeError, match=r"float(32|64) result cannot be written into a int64"):
        labels.add_(0.5)
    with pytest.raises(IndexError, match="setitem"):
        x[np.array([5])] = 1.0
    h = conv(X, grad=True) * 1
    with pytest.raises(ValueError, match="more than once"):
        h[np.array([1, 1])] = 0.0


def test_gradients_may_be_modified_independently(device):
    """Add gives both inputs its adjoint; zeroing one .grad in place leaves the other."""
    conv = needle_conv(device)
    a, b = conv(X, grad=True), conv(OTHER, grad=True)
    (a + b).sum().backward()
    a.grad.zero_()
    b.grad.mul_(2)
    np.testing.assert_array_equal(a.grad.numpy(), np.zeros_like(X))
    np.testing.assert_array_equal(b.grad.numpy(), np.full_like(X, 2))


def test_clone_is_a_private_copy_with_a_gradient(device):
    conv = needle_conv(device)
    w = conv(X, grad=True)
    c = w.clone()
    with ndl.no_grad():
        c.add_(1)
    np.testing.assert_array_equal(w.numpy(), X)
    (c * 3).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.full_like(X, 3))


def test_optimizer_steps_a_shared_parameter_once():
    """parameters() keeps duplicates (the course's rule); the optimizer steps each once."""
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, shared)
    assert len(model.parameters()) == 4 and len(model.parameters(remove_duplicate=True)) == 2
    opt = ndl.optim.SGD(model.parameters(), lr=0.1)
    assert len(opt.params) == 2
    before = shared.weight.numpy().copy()
    model(ndl.Tensor(X[:, :3])).sum().backward()
    opt.step()
    np.testing.assert_allclose(
        shared.weight.numpy(), before - 0.1 * shared.weight.grad.numpy(), rtol=1e-6
    )


# ---- reading with any NumPy index (the positions path shared with setitem) ----------------
INDICES = {
    "none": (None,),
    "rows_cols": (np.array([0, 2, 2]), np.array([1, 3, 3])),
    "int_and_array": (0, np.array([1, 3, 1])),
    "broadcast_arrays_and_slice": (np.array([[0], [2]]), slice(1, 3)),
    "ellipsis_none": (Ellipsis, None, 1),
    "repeated_list": ([0, 0, 1],),
}


@pytest.mark.parametrize("name", INDICES)
def test_any_numpy_index_matches_torch(name, device):
    """Values and the gradient (repeats add up) of x[index], against torch."""
    index = INDICES[name]
    w = needle_conv(device)(X, grad=True)
    out = w[index]
    (out * out).sum().backward()
    tw = torch_conv(X, grad=True)
    t_index = tuple(torch.tensor(p) if isinstance(p, (np.ndarray, list)) else p for p in index)
    t_out = tw[t_index]
    (t_out * t_out).sum().backward()
    np.testing.assert_allclose(out.numpy(), t_out.detach().numpy())
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-6)


def test_index_out_of_range_names_getitem(device):
    with pytest.raises(IndexError, match=r"getitem: .*\(tensor of shape \(3, 4\)\)"):
        needle_conv(device)(X)[np.array([0, 3]), np.array([0, 1])]


@pytest.mark.skipif(
    ndl.backend_selection.BACKEND == "np",
    reason="the numpy mode's optimizers give parameters new arrays, never writing in place",
)
@pytest.mark.parametrize(
    "layer, x",
    [
        (lambda: nn.Linear(3, 2), X[:, :3]),
        (lambda: nn.BatchNorm1d(3), X[:, :3]),
        (lambda: nn.Conv(1, 2, 3), X.reshape(1, 1, *X.shape)),
    ],
    ids=["linear", "batch_norm", "conv"],
)
def test_backward_through_a_graph_from_before_an_optimizer_step_raises(layer, x):
    """The optimizers update parameters in place (when nothing else holds their data): a
    graph made before the step would read the new weights, so backward raises, as in torch,
    where the gradient is Tensor ops (conv) and where it is NDArray arithmetic (linear,
    batch_norm). (Where the data is not private, the step writes a new buffer and the old
    graph keeps the old one: no error is needed.)"""
    model = layer()
    opt = ndl.optim.SGD(model.parameters(), lr=0.1)
    loss = (model(ndl.Tensor(x)) ** 2).sum()
    loss.backward()
    opt.step()
    with pytest.raises(RuntimeError, match=r"optimizer.step\(\)"):
        loss.backward()
    model(ndl.Tensor(x)).sum().backward()  # a graph made after the step is fine


def test_writes_through_views_inside_autograd_raise(device):
    """needle does not rebase views (torch does): writing into a view of a tensor that
    requires grad, or into the base after a view was taken and then differentiating through
    the view, raises instead of giving a gradient that misses the write."""
    conv = needle_conv(device)
    w = conv(X, grad=True)
    with pytest.raises(RuntimeError, match="mul_: this tensor is a view of another"):
        (w * 2).reshape((12,)).mul_(5)
    h = w * 2
    flat = h.reshape((12,))
    h.mul_(5)
    with pytest.raises(RuntimeError, match="output is a view of its input"):
        flat.sum().backward()


def test_the_write_record_keeps_no_buffer_alive(device):
    """backward's record of in-place writes refers to buffers weakly: a tensor written in
    place and dropped leaves nothing behind (a training loop would otherwise keep every
    activation it ever modified)."""
    from needle import autograd

    x = needle_conv(device)(X)
    x.add_(1)
    key = id(autograd._buffer(x.cached_data))
    assert key in autograd._WRITTEN
    del x
    assert key not in autograd._WRITTEN


def test_only_a_write_whose_gradient_needs_the_old_values_copies_them(device):
    """h.add_(o) keeps no copy of the old h (its gradient reads no values: a ResNet's
    out += identity would copy every block's output); h.mul_(o) with o requiring grad does
    (o's gradient is the old h), and both gradients are torch's."""
    conv = needle_conv(device)
    w, o = conv(X, grad=True), conv(OTHER, grad=True)
    h = w * 2
    h.add_(o)
    assert h._history[-1][1].cached_data is h.cached_data
    h.mul_(o)
    assert h._history[-1][1].cached_data is not h.cached_data
    h.sum().backward()
    tw, to = torch_conv(X, grad=True), torch_conv(OTHER, grad=True)
    th = tw * 2
    th.add_(to)
    th.mul_(to)
    th.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(o.grad.numpy(), to.grad.numpy(), rtol=1e-5, atol=1e-6)
