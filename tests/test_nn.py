"""needle.nn modules against their PyTorch counterparts, with the same weights.

``check_module`` runs a needle module and a torch function that takes the same input and
the module's parameters in needle's layout (so torch differentiates through any layout
change), back-propagates one random adjoint through both, and compares the output and the
gradients of the input and of every parameter.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import needle as ndl
from needle import nn

DTYPES = ["float32", "float64"]


def tolerance(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-9, atol=1e-10)


def tensor(array, device, dtype, requires_grad=False):
    return ndl.Tensor(np.asarray(array), device=device, dtype=dtype, requires_grad=requires_grad)


def check_module(module, torch_fn, x_np, device, dtype):
    """Compare module(x) and its gradients with torch_fn(x, *params) in the same dtype."""
    x = tensor(x_np, device, dtype, requires_grad=True)
    y = module(x)
    assert y.dtype == dtype
    adjoint = np.random.randn(*y.shape)
    y.backward(tensor(adjoint, device, dtype))

    params = module.parameters()
    x_t = torch.tensor(x_np.astype(dtype), requires_grad=True)
    params_t = [torch.tensor(p.numpy(), requires_grad=True) for p in params]
    y_t = torch_fn(x_t, *params_t)
    y_t.backward(torch.tensor(adjoint.astype(dtype)))

    tol = tolerance(dtype)
    np.testing.assert_allclose(y.numpy(), y_t.detach().numpy(), **tol)
    np.testing.assert_allclose(x.grad.numpy(), x_t.grad.numpy(), **tol)
    for p, p_t in zip(params, params_t):
        assert p.grad.dtype == dtype
        np.testing.assert_allclose(p.grad.numpy(), p_t.grad.numpy(), **tol)
    return y


# ---- layers ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(device, dtype, bias):
    layer = nn.Linear(5, 7, bias=bias, device=device, dtype=dtype)
    assert layer.weight.shape == (5, 7) and layer.weight.dtype == dtype
    if bias:
        assert layer.bias.shape == (1, 7)
        fn = lambda x, w, b: F.linear(x, w.T, b.reshape(-1))  # noqa: E731
    else:
        assert layer.bias is None and len(layer.parameters()) == 1
        fn = lambda x, w: x @ w  # noqa: E731
    check_module(layer, fn, np.random.randn(4, 5), device, dtype)
    # Leading batch axes broadcast through the matmul.
    check_module(layer, fn, np.random.randn(2, 3, 5), device, dtype)


def test_linear_init_bounds(device):
    layer = nn.Linear(50, 40, device=device)
    w, b = layer.weight.numpy(), layer.bias.numpy()
    # kaiming_uniform: bound sqrt(6 / fan_in); the bias uses fan_in = out_features (course).
    assert np.abs(w).max() <= math.sqrt(6 / 50) and np.abs(w).max() > 0.8 * math.sqrt(6 / 50)
    assert np.abs(b).max() <= math.sqrt(6 / 40)
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.requires_grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "module, torch_fn",
    [
        (nn.ReLU(), torch.relu),
        (nn.Tanh(), torch.tanh),
        (nn.Sigmoid(), torch.sigmoid),
        (nn.Identity(), lambda x: x * 1),
    ],
    ids=["relu", "tanh", "sigmoid", "identity"],
)
def test_activations(device, dtype, module, torch_fn):
    check_module(module, torch_fn, np.random.randn(6, 4) * 3, device, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequential_flatten(device, dtype):
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 8, device=device, dtype=dtype),
        nn.ReLU(),
        nn.Linear(8, 3, device=device, dtype=dtype),
        nn.Tanh(),
    )

    def torch_fn(x, w1, b1, w2, b2):
        h = torch.relu(x.reshape(x.shape[0], -1) @ w1 + b1)
        return torch.tanh(h @ w2 + b2)

    check_module(model, torch_fn, np.random.randn(5, 2, 3, 2), device, dtype)
    assert nn.Flatten()(tensor(np.zeros((4, 2, 3, 5)), device, dtype)).shape == (4, 30)


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual(device, dtype):
    model = nn.Residual(
        nn.Sequential(
            nn.Linear(6, 9, device=device, dtype=dtype),
            nn.ReLU(),
            nn.Linear(9, 6, device=device, dtype=dtype),
        )
    )
    check_module(
        model,
        lambda x, w1, b1, w2, b2: torch.relu(x @ w1 + b1) @ w2 + b2 + x,
        np.random.randn(4, 6),
        device,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_loss(device, dtype):
    logits_np = np.random.randn(7, 5) * 3
    labels = np.random.randint(0, 5, size=7)
    logits = tensor(logits_np, device, dtype, requires_grad=True)
    loss = nn.SoftmaxLoss()(logits, ndl.Tensor(labels, device=device))
    loss.backward()
    logits_t = torch.tensor(logits_np.astype(dtype), requires_grad=True)
    loss_t = F.cross_entropy(logits_t, torch.tensor(labels))
    loss_t.backward()
    tol = tolerance(dtype)
    assert loss.shape == () and loss.dtype == dtype
    np.testing.assert_allclose(loss.numpy(), loss_t.item(), **tol)
    np.testing.assert_allclose(logits.grad.numpy(), logits_t.grad.numpy(), **tol)


def test_softmax_loss_under_no_grad_keeps_nothing_for_a_backward(device):
    """An evaluation's loss (no_grad) holds no gradient of its logits: a list of them costs a
    number each, not the logits' size (the fused loss computes the gradient with the loss)."""
    logits = tensor(np.random.randn(6, 4), device, "float32", requires_grad=True)
    labels = ndl.Tensor(np.array([0, 3, 1, 2, 2, 0]), device=device)
    with ndl.no_grad():
        quiet = nn.SoftmaxLoss()(logits, labels)
    loud = nn.SoftmaxLoss()(logits, labels)
    assert quiet.saved is None and quiet.op is None
    np.testing.assert_array_equal(quiet.numpy(), loud.numpy())


def test_softmax_loss_is_stable_for_large_logits(device):
    logits = tensor(np.array([[1000.0, 0.0], [0.0, -1000.0]]), device, "float32")
    loss = nn.SoftmaxLoss()(logits, ndl.Tensor(np.array([0, 1]), device=device))
    np.testing.assert_allclose(loss.numpy(), 500.0, rtol=1e-5)


# ---- normalisation -------------------------------------------------------------------------
def _batch_norm_reference(batches, momentum, axes):
    """Running statistics as needle keeps them: EMA of the batch mean and *biased* variance."""
    mean, var = 0.0, 1.0
    for b in batches:
        mean = (1 - momentum) * mean + momentum * b.mean(axis=axes)
        var = (1 - momentum) * var + momentum * b.var(axis=axes)
    return mean, var


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("two_d", [False, True], ids=["1d", "2d"])
def test_batch_norm(device, dtype, two_d):
    dim, momentum, eps = 4, 0.2, 1e-3
    if two_d:
        bn = nn.BatchNorm2d(dim, eps=eps, momentum=momentum, device=device, dtype=dtype)
        shape, axes = (3, dim, 5, 2), (0, 2, 3)
        view = lambda p: p.reshape(1, -1, 1, 1)  # noqa: E731
    else:
        bn = nn.BatchNorm1d(dim, eps=eps, momentum=momentum, device=device, dtype=dtype)
        shape, axes = (6, dim), (0,)
        view = lambda p: p.reshape(1, -1)  # noqa: E731
    bn.weight.data = tensor(np.random.rand(dim) + 0.5, device, dtype)
    bn.bias.data = tensor(np.random.randn(dim), device, dtype)

    def torch_train(x, w, b):
        # The output uses the biased batch variance in torch too; only the running_var differs.
        return F.batch_norm(x, None, None, w, b, training=True, eps=eps)

    batches = [np.random.randn(*shape) * 2 + 1 for _ in range(4)]
    for x_np in batches:
        check_module(bn, torch_train, x_np, device, dtype)
    mean, var = _batch_norm_reference(batches, momentum, axes)
    tol = tolerance(dtype)
    assert bn.running_mean.dtype == dtype and bn.running_mean.op is None
    np.testing.assert_allclose(bn.running_mean.numpy(), mean, **tol)
    np.testing.assert_allclose(bn.running_var.numpy(), var, **tol)

    # torch's running_mean follows the same recursion; its running_var uses the unbiased
    # variance (the documented difference).
    running_mean_t, running_var_t = (
        torch.zeros(dim, dtype=torch.float64),
        torch.ones(dim, dtype=torch.float64),
    )
    for x_np in batches:
        F.batch_norm(
            torch.tensor(x_np),
            running_mean_t,
            running_var_t,
            training=True,
            momentum=momentum,
            eps=eps,
        )
    np.testing.assert_allclose(bn.running_mean.numpy(), running_mean_t.numpy(), **tol)

    bn.eval()
    x_np = np.random.randn(*shape)

    def torch_eval(x, w, b):
        mean_t = torch.tensor(bn.running_mean.numpy())
        var_t = torch.tensor(bn.running_var.numpy())
        return F.batch_norm(x, mean_t, var_t, w, b, training=False, eps=eps)

    before = bn.running_mean.numpy().copy()
    y = check_module(bn, torch_eval, x_np, device, dtype)
    np.testing.assert_array_equal(bn.running_mean.numpy(), before)  # eval leaves stats alone
    expected = (x_np - view(mean)) / np.sqrt(view(var) + eps) * view(bn.weight.numpy()) + view(
        bn.bias.numpy()
    )
    np.testing.assert_allclose(y.numpy(), expected, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 8)])
def test_layer_norm(device, dtype, shape):
    eps = 1e-5
    ln = nn.LayerNorm1d(8, eps=eps, device=device, dtype=dtype)
    ln.weight.data = tensor(np.random.rand(8) + 0.5, device, dtype)
    ln.bias.data = tensor(np.random.randn(8), device, dtype)
    check_module(
        ln,
        lambda x, w, b: F.layer_norm(x, (8,), w, b, eps=eps),
        np.random.randn(*shape) * 3 + 2,
        device,
        dtype,
    )


# ---- dropout -----------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_statistics(device, p):
    drop = nn.Dropout(p)
    x = tensor(np.ones((200, 100)), device, "float32", requires_grad=True)
    y = drop(x)
    out = y.numpy()
    zeroed = np.mean(out == 0)
    assert abs(zeroed - p) < 0.02, zeroed  # 20000 draws: std of the fraction < 0.004
    np.testing.assert_allclose(out[out != 0], 1 / (1 - p), rtol=1e-6)
    y.sum().backward()  # the gradient is the same scaled mask
    np.testing.assert_allclose(x.grad.numpy(), out, rtol=1e-6)

    drop.eval()
    x_np = np.random.randn(10, 10)
    np.testing.assert_array_equal(
        drop(tensor(x_np, device, "float32")).numpy(), x_np.astype("float32")
    )


def test_dropout_edge_cases(device):
    x = tensor(np.random.randn(10, 10), device, "float64")
    np.testing.assert_array_equal(nn.Dropout(0.0)(x).numpy(), x.numpy())
    np.testing.assert_array_equal(nn.Dropout(1.0)(x).numpy(), np.zeros((10, 10)))
    assert nn.Dropout(0.3)(x).dtype == "float64"
    with pytest.raises(ValueError):
        nn.Dropout(1.5)


# ---- convolution -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kernel_size, stride, bias, size",
    [
        (1, 1, True, 6),
        (1, 2, False, 7),
        (3, 1, True, 7),
        (3, 2, True, 8),
        (3, 2, False, 7),
        (5, 1, False, 8),
        (5, 2, True, 9),
    ],
)
def test_conv(device, kernel_size, stride, bias, size):
    dtype = "float32"
    conv = nn.Conv(3, 4, kernel_size, stride=stride, bias=bias, device=device, dtype=dtype)
    assert conv.weight.shape == (kernel_size, kernel_size, 3, 4)

    def torch_fn(x, w, b=None):
        return F.conv2d(x, w.permute(3, 2, 0, 1), b, stride=stride, padding=kernel_size // 2)

    y = check_module(conv, torch_fn, np.random.randn(2, 3, size, size + 1), device, dtype)
    assert y.shape == (2, 4, math.ceil(size / stride), math.ceil((size + 1) / stride))


def test_conv_float64(device):
    conv = nn.Conv(2, 3, 3, stride=2, device=device, dtype="float64")
    check_module(
        conv,
        lambda x, w, b: F.conv2d(x, w.permute(3, 2, 0, 1), b, stride=2, padding=1),
        np.random.randn(2, 2, 5, 5),
        device,
        "float64",
    )


def test_conv_init_bounds(device):
    conv = nn.Conv(8, 16, 3, device=device)
    fan_in = 8 * 3 * 3
    w, b = conv.weight.numpy(), conv.bias.numpy()
    bound = math.sqrt(6 / fan_in)  # kaiming_uniform with fan_in = in_channels * k * k
    assert 0.9 * bound < np.abs(w).max() <= bound
    assert b.shape == (16,) and np.abs(b).max() <= 1 / math.sqrt(fan_in)


# ---- Module machinery ----------------------------------------------------------------------
class _Nested(nn.Module):
    def __init__(self):
        super().__init__()
        shared = nn.Linear(3, 3)
        self.blocks = [[nn.Linear(3, 4), shared], (nn.ReLU(), nn.BatchNorm1d(4))]
        self.heads = {"a": nn.Linear(4, 2), "b": nn.Sequential(nn.Linear(4, 2), nn.Dropout())}
        self.again = shared  # the same Parameters, reached twice
        self.scale = nn.Parameter(ndl.Tensor(np.ones(1)))
        self.note = "not a tensor"


def test_parameters_discovery():
    model = _Nested()
    params = model.parameters()
    # 4 Linear layers with weight+bias, BatchNorm weight+bias, scale. As the course's
    # parameters() (COURSE_API.md section 6), the shared Linear is listed each time it is
    # reached (here twice); named_parameters() lists it once, as torch.
    assert len(params) == 2 * 4 + 2 + 1 + 2
    assert len({id(p) for p in params}) == 2 * 4 + 2 + 1
    shared = model.again
    assert [p for p in params if p is shared.weight] == [shared.weight, shared.weight]
    assert len(model.named_parameters()) == 2 * 4 + 2 + 1
    assert all(isinstance(p, nn.Parameter) for p in params)
    # Buffers are not parameters.
    bn = model.blocks[1][1]
    assert all(p is not bn.running_mean and p is not bn.running_var for p in params)
    names = [name for name, _ in model.named_parameters()]
    assert "blocks.0.0.weight" in names and "heads.b.modules.0.bias" in names and "scale" in names

    children = model._children()
    assert any(isinstance(m, nn.Dropout) for m in children)
    model.eval()
    assert not model.training and all(not m.training for m in children)
    model.train()
    assert all(m.training for m in children)


def test_module_referring_to_its_parent():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    model.modules[1].parent = model  # a back reference must not loop forever
    assert len(model.parameters()) == 2
    assert list(model.state_dict()) == ["modules.0.weight", "modules.0.bias"]
    assert len(model._children()) == 2
    model.eval()
    assert not model.modules[0].training


def test_zero_grad(device):
    model = nn.Sequential(nn.Linear(3, 2, device=device))
    model(ndl.Tensor(np.random.randn(4, 3), device=device)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def _small_model(device, dtype="float32"):
    return nn.Sequential(
        nn.Linear(4, 6, device=device, dtype=dtype),
        nn.BatchNorm1d(6, device=device, dtype=dtype),
        nn.ReLU(),
        nn.Linear(6, 2, device=device, dtype=dtype),
    )


def test_state_dict_round_trip(device):
    model = _small_model(device)
    for _ in range(3):  # move the running statistics away from their initial values
        model(ndl.Tensor(np.random.randn(8, 4) * 3 + 1, device=device))
    state = model.state_dict()
    assert list(state) == [
        "modules.0.weight",
        "modules.0.bias",
        "modules.1.weight",
        "modules.1.bias",
        "modules.1.running_mean",
        "modules.1.running_var",
        "modules.3.weight",
        "modules.3.bias",
    ]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert not np.allclose(state["modules.1.running_mean"], 0)

    other = _small_model(device)
    weight = other.modules[0].weight
    other.load_state_dict(state)
    assert other.modules[0].weight is weight  # loaded in place: optimizers keep their params
    assert weight.dtype == "float32" and weight.device == device
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    model.eval(), other.eval()
    x = ndl.Tensor(np.random.randn(5, 4), device=device)
    np.testing.assert_array_equal(model(x).numpy(), other(x).numpy())
    # The state dict is a copy, not a view of the live tensors.
    state["modules.0.weight"][:] = 0
    assert not np.allclose(model.modules[0].weight.numpy(), 0)


def test_state_dict_casts_to_module_dtype(device):
    model = _small_model(device, dtype="float32")
    state = {k: v.astype(np.float64) for k, v in _small_model(device).state_dict().items()}
    model.load_state_dict(state)
    assert all(p.dtype == "float32" for p in model.parameters())
    assert model.modules[1].running_var.dtype == "float32"


def test_load_state_dict_errors(device):
    model = _small_model(device)
    state = model.state_dict()
    missing = dict(state)
    del missing["modules.1.running_var"]
    with pytest.raises(KeyError, match="running_var"):
        model.load_state_dict(missing)
    with pytest.raises(KeyError, match="extra"):
        model.load_state_dict({**state, "extra": np.zeros(1)})
    wrong = dict(state)
    wrong["modules.3.weight"] = np.zeros((2, 6))
    with pytest.raises(ValueError, match=r"modules\.3\.weight.*\(2, 6\).*\(6, 2\)"):
        model.load_state_dict(wrong)
    # strict=False loads what is there and ignores the rest.
    model.load_state_dict(
        {"modules.3.bias": np.full((1, 2), 7.0), "extra": np.zeros(1)}, strict=False
    )
    np.testing.assert_array_equal(model.modules[3].bias.numpy(), np.full((1, 2), 7.0))


# ---- end to end ------------------------------------------------------------------------------
def test_mlp_learns_blobs(device):
    """An MLP with BatchNorm and Dropout learns 3 Gaussian blobs to >= 95% held-out accuracy."""
    rng = np.random.default_rng(0)
    centres = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])

    def sample(n):
        y = rng.integers(0, 3, size=n)
        return (centres[y] + rng.normal(scale=0.6, size=(n, 2))).astype(np.float32), y

    x_train, y_train = sample(600)
    x_test, y_test = sample(300)
    model = nn.Sequential(
        nn.Linear(2, 32, device=device),
        nn.BatchNorm1d(32, device=device),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(32, 3, device=device),
    )
    opt = ndl.optim.Adam(model.parameters(), lr=0.02)
    loss_fn = nn.SoftmaxLoss()
    for _epoch in range(10):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), 60):
            batch = order[start : start + 60]
            loss = loss_fn(
                model(ndl.Tensor(x_train[batch], device=device)),
                ndl.Tensor(y_train[batch], device=device),
            )
            opt.reset_grad()
            loss.backward()
            opt.step()
    model.eval()
    logits = model(ndl.Tensor(x_test, device=device)).numpy()
    accuracy = np.mean(logits.argmax(axis=1) == y_test)
    assert accuracy >= 0.95, accuracy
