"""The issue-16 nn modules against the torch modules of the same name, with the same weights.

``check_against_torch`` copies the torch module's parameters into the needle module (by
name, through NumPy: the state_dict keys must match torch's), runs both on the same input,
back-propagates one random adjoint through both and compares the output and the gradients
of the input and of every parameter, on every enabled device.
"""

import numpy as np
import pytest
import torch

import needle as ndl
from needle import nn

TOL = dict(rtol=1e-4, atol=1e-5)  # float32


def copy_weights(module, torch_module):
    """torch's parameters into `module`; the names (state_dict keys) must be torch's."""
    theirs = {k: v.detach().numpy() for k, v in torch_module.state_dict().items()}
    assert list(module.state_dict()) == list(theirs)
    module.load_state_dict(theirs)


def check_against_torch(module, torch_module, x_np, device, *extra):
    """module(x, *extra) vs torch_module(x, *extra): output, d/dx and d/dparameter."""
    copy_weights(module, torch_module)
    x = ndl.Tensor(x_np, device=device, dtype="float32", requires_grad=True)
    x_t = torch.tensor(x_np, dtype=torch.float32, requires_grad=True)
    y = module(x, *(ndl.Tensor(e, device=device, dtype="float32") for e in extra))
    y_t = torch_module(x_t, *(torch.tensor(e, dtype=torch.float32) for e in extra))
    assert y.shape == tuple(y_t.shape)
    adjoint = np.asarray(np.random.randn(*y.shape), dtype=np.float32)
    y.backward(ndl.Tensor(adjoint, device=device, dtype="float32"))
    y_t.backward(torch.tensor(adjoint))
    np.testing.assert_allclose(y.numpy(), y_t.detach().numpy(), **TOL)
    np.testing.assert_allclose(x.grad.numpy(), x_t.grad.numpy(), **TOL)
    theirs = dict(torch_module.named_parameters())
    ours = dict(module.named_parameters())
    assert list(ours) == list(theirs)
    for name, p in ours.items():
        np.testing.assert_allclose(p.grad.numpy(), theirs[name].grad.numpy(), **TOL, err_msg=name)


def randomise(torch_module):
    """Random values for parameters that torch starts at ones and zeros (so that their
    gradients and the affine part are really checked)."""
    with torch.no_grad():
        for p in torch_module.parameters():
            p.copy_(torch.randn(p.shape))
    return torch_module


def images(*shape):
    return np.random.randn(*shape).astype(np.float32)


@pytest.mark.parametrize(
    "args",
    [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(2, 3))],
)
@pytest.mark.parametrize("name", ["MaxPool2d", "AvgPool2d"])
def test_pooling(device, name, args):
    x = images(2, 3, 7, 8)
    check_against_torch(getattr(nn, name)(**args), getattr(torch.nn, name)(**args), x, device)


@pytest.mark.parametrize("size", [1, 3, (2, 5), (None, 3)])
def test_adaptive_avg_pool2d(device, size):
    x = images(2, 3, 7, 8)
    check_against_torch(nn.AdaptiveAvgPool2d(size), torch.nn.AdaptiveAvgPool2d(size), x, device)


@pytest.mark.parametrize(
    "args",
    [
        dict(kernel_size=3),
        dict(kernel_size=3, stride=2, padding=1, output_padding=1),
        dict(kernel_size=2, stride=2, bias=False),
        dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), output_padding=(1, 0)),
        dict(kernel_size=(2, 4), stride=(1, 3), padding=(0, 2)),
    ],
)
def test_conv_transpose2d(device, args):
    ours = nn.ConvTranspose2d(3, 4, device=device, **args)
    theirs = torch.nn.ConvTranspose2d(3, 4, **args)
    assert ours.weight.shape == tuple(theirs.weight.shape)
    check_against_torch(ours, theirs, images(2, 3, 5, 6), device)


@pytest.mark.parametrize("kernel_size", [3, (3, 5)])
def test_conv_transpose2d_init_bound(kernel_size):
    """Drawn within torch's bound 1/sqrt(out_channels kh kw), and spread over it."""
    layer = nn.ConvTranspose2d(8, 6, kernel_size)
    bound = 1.0 / np.sqrt(6 * np.prod(np.broadcast_to(kernel_size, 2)))
    for p in (layer.weight.numpy(), layer.bias.numpy()):
        assert np.abs(p).max() <= bound
    assert np.abs(layer.weight.numpy()).max() > 0.9 * bound


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(device, approximate):
    x = images(4, 9)
    check_against_torch(nn.GELU(approximate), torch.nn.GELU(approximate), x, device)


def test_silu(device):
    check_against_torch(nn.SiLU(), torch.nn.SiLU(), images(4, 9), device)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax(device, dim):
    check_against_torch(nn.Softmax(dim), torch.nn.Softmax(dim), images(3, 4, 5), device)


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 4), (2, 3, 4, 5)])
def test_softmax_default_dim(device, shape):
    """dim=None: torch's legacy choice of axis (torch warns about it)."""
    x = images(*shape)
    with pytest.warns(UserWarning, match="dimension"):
        theirs = torch.nn.Softmax()(torch.tensor(x))
    ours = nn.Softmax()(ndl.Tensor(x, device=device))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), **TOL)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm(device, groups, affine):
    theirs = randomise(torch.nn.GroupNorm(groups, 6, affine=affine))
    ours = nn.GroupNorm(groups, 6, affine=affine, device=device)
    check_against_torch(ours, theirs, images(2, 6, 4, 5), device)


@pytest.mark.parametrize(
    "shape, kwargs",
    [(8, {}), ((4, 8), dict(eps=1e-3)), (8, dict(elementwise_affine=False)), (8, dict(bias=False))],
)
def test_layer_norm(device, shape, kwargs):
    theirs = randomise(torch.nn.LayerNorm(shape, **kwargs))
    ours = nn.LayerNorm(shape, device=device, **kwargs)
    check_against_torch(ours, theirs, images(3, 4, 8), device)


def test_layer_norm1d_is_kept():
    """The course's LayerNorm1d is still there and still a different class."""
    assert nn.LayerNorm1d is not nn.LayerNorm
    assert nn.LayerNorm1d(4).weight.shape == (4,)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(reduction="sum"),
        dict(reduction="none"),
        dict(label_smoothing=0.1),
        dict(ignore_index=2),
        dict(weight=[0.5, 2.0, 1.0, 0.25, 3.0]),
        dict(weight=[0.5, 2.0, 1.0, 0.25, 3.0], ignore_index=2, label_smoothing=0.3),
        dict(weight=[0.5, 2.0, 1.0, 0.25, 3.0], reduction="none"),
    ],
)
def test_cross_entropy_loss(device, kwargs):
    logits = images(6, 5)
    labels = np.array([0, 2, 4, 1, 2, 3])
    x = ndl.Tensor(logits, device=device, requires_grad=True)
    x_t = torch.tensor(logits, requires_grad=True)
    loss = nn.CrossEntropyLoss(**kwargs)(x, ndl.Tensor(labels, device=device, dtype="int64"))
    if "weight" in kwargs:
        kwargs = dict(kwargs, weight=torch.tensor(kwargs["weight"]))
    loss_t = torch.nn.CrossEntropyLoss(**kwargs)(x_t, torch.tensor(labels))
    adjoint = np.asarray(np.random.randn(*loss.shape), dtype=np.float32)
    loss.backward(ndl.Tensor(adjoint, device=device))
    loss_t.backward(torch.tensor(adjoint))
    np.testing.assert_allclose(loss.numpy(), loss_t.detach().numpy(), **TOL)
    np.testing.assert_allclose(x.grad.numpy(), x_t.grad.numpy(), **TOL)


def test_cross_entropy_loss_class_weights_fit_the_classes():
    loss = nn.CrossEntropyLoss(weight=np.ones(3))
    with pytest.raises(ValueError, match=r"weight must hold one number per class \(5,\)"):
        loss(ndl.Tensor(images(6, 5)), np.array([0, 2, 4, 1, 2, 3]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["MSELoss", "L1Loss", "BCEWithLogitsLoss"])
def test_pair_losses(device, name, reduction):
    target = np.random.rand(4, 5).astype(np.float32)
    ours, theirs = getattr(nn, name)(reduction), getattr(torch.nn, name)(reduction=reduction)
    check_against_torch(ours, theirs, images(4, 5), device, target)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.MaxPool2d(2, padding=3),
        lambda: nn.AdaptiveAvgPool2d(0),
        lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2),
        lambda: nn.ConvTranspose2d(2, 2, (3, 2, 1)),
        lambda: nn.ConvTranspose2d(2, 2, 3, stride=(2, 0)),
        lambda: nn.GELU("erf"),
        lambda: nn.GroupNorm(4, 6),
        lambda: nn.MSELoss("average"),
        lambda: nn.CrossEntropyLoss(reduction="avg"),
    ],
)
def test_bad_arguments_fail_at_construction(make):
    with pytest.raises(ValueError):
        make()


# ---- dropout: statistics (a mask cannot match torch's draw) ------------------------------
Z = 5.0  # a 5-sigma bound: a correct dropout fails it about once in 1.7 million runs


def _dropout(kind, p):
    """ops.dropout in training, or the nn.Dropout module in training mode."""
    if kind == "function":
        return lambda x: ndl.ops.dropout(x, p, training=True)
    return nn.Dropout(p)


@pytest.mark.parametrize("kind", ["function", "module"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_statistics_within_binomial_bounds(device, kind, p):
    np.random.seed(0)
    n = 40_000
    x_np = np.random.uniform(0.5, 2.0, size=(200, n // 200)).astype(np.float32)  # no zeros
    x = ndl.Tensor(x_np, device=device, requires_grad=True)
    y = _dropout(kind, p)(x)
    out = y.numpy()
    dropped = out == 0
    # The count of zeros is Binomial(n, p).
    assert abs(dropped.mean() - p) <= Z * np.sqrt(p * (1 - p) / n), dropped.mean()
    # Kept entries are scaled by 1 / (1 - p), so the mean is kept: y_i = x_i b_i / (1 - p)
    # with b_i ~ Bernoulli(1 - p) has mean x_i and variance x_i^2 p / (1 - p).
    np.testing.assert_allclose(out[~dropped], x_np[~dropped] / (1 - p), rtol=1e-6)
    bound = Z * np.sqrt(np.sum(x_np.astype(np.float64) ** 2) * p / (1 - p)) / n
    assert abs(out.mean(dtype=np.float64) - x_np.mean(dtype=np.float64)) <= bound
    # The adjoint goes through the same mask: exactly zero where the output is.
    adjoint = np.random.randn(*x_np.shape).astype(np.float32)
    y.backward(ndl.Tensor(adjoint, device=device))
    grad = x.grad.numpy()
    assert np.all(grad[dropped] == 0)
    np.testing.assert_allclose(grad[~dropped], adjoint[~dropped] / (1 - p), rtol=1e-6)
    # Each call draws a new mask (two masks of 40000 entries agree with probability ~0).
    assert not np.array_equal(_dropout(kind, p)(x).numpy() == 0, dropped)


@pytest.mark.parametrize("kind", ["function", "module"])
def test_dropout_outside_training_is_the_identity(device, kind):
    x = ndl.Tensor(images(4, 5), device=device, requires_grad=True)
    if kind == "function":
        y = ndl.ops.dropout(x, 0.5, training=False)
    else:
        module = nn.Dropout(0.5)
        module.eval()
        y = module(x)
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    adjoint = images(4, 5)
    y.backward(ndl.Tensor(adjoint, device=device))
    np.testing.assert_array_equal(x.grad.numpy(), adjoint)
    # p = 0 keeps everything and p = 1 drops everything, in training too (as torch).
    np.testing.assert_array_equal(_dropout(kind, 0.0)(x).numpy(), x.numpy())
    np.testing.assert_array_equal(_dropout(kind, 1.0)(x).numpy(), np.zeros((4, 5)))
