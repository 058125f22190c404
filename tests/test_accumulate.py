"""Gradient accumulation: ``backward(accumulate=True)`` adds into ``.grad`` (plain backward()
still assigns it, as the course's does), and the Trainer's ``accumulate`` N steps once per N
micro-batches, as one batch N times larger would."""

import numpy as np
import pytest
import torch

import needle as ndl
from needle import nn, optim
from needle.apps.trainer import Trainer


def make_model(device, dtype="float32"):
    return nn.Sequential(
        nn.Linear(6, 5, device=device, dtype=dtype),
        nn.Tanh(),
        nn.Linear(5, 3, device=device, dtype=dtype),
    )


def loss_of(model, x, y, device):
    return nn.SoftmaxLoss()(model(ndl.Tensor(x, device=device)), ndl.Tensor(y, device=device))


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, size=n)


def test_four_micro_batches_equal_one_batch_of_32(device):
    model = make_model(device)
    x, y = data(32)
    loss_of(model, x, y, device).backward()
    whole = [p.grad.numpy() for p in model.parameters()]
    model.zero_grad()
    for i in range(4):
        part = slice(8 * i, 8 * (i + 1))
        (loss_of(model, x[part], y[part], device) / 4).backward(accumulate=True)
    for p, expected in zip(model.parameters(), whole):
        assert p.grad.device == p.device
        np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_plain_backward_still_assigns(device):
    """The course semantics: a second backward() replaces .grad; accumulate=True adds to it,
    and with no .grad yet it sets it."""
    model = make_model(device)
    (x1, y1), (x2, y2) = data(8, 1), data(8, 2)
    loss_of(model, x2, y2, device).backward()
    second = [p.grad.numpy() for p in model.parameters()]
    model.zero_grad()
    loss_of(model, x1, y1, device).backward(accumulate=True)  # no .grad yet: sets it
    first = [p.grad.numpy() for p in model.parameters()]
    loss_of(model, x2, y2, device).backward()
    for p, g2 in zip(model.parameters(), second):
        np.testing.assert_allclose(p.grad.numpy(), g2, rtol=1e-6)
    model.zero_grad()
    loss_of(model, x1, y1, device).backward()
    for p, g1 in zip(model.parameters(), first):
        np.testing.assert_allclose(p.grad.numpy(), g1, rtol=1e-6)
    loss_of(model, x2, y2, device).backward(accumulate=True)
    for p, g1, g2 in zip(model.parameters(), first, second):
        np.testing.assert_allclose(p.grad.numpy(), g1 + g2, rtol=1e-5, atol=1e-7)


def test_hooks_see_each_backwards_own_gradient(device):
    seen = []
    x = ndl.Tensor(np.array([1.0, 2.0, 3.0], dtype="float32"), device=device)
    x.register_hook(lambda g: seen.append(g.numpy()))
    (x * x).sum().backward()
    (x * 3.0).sum().backward(accumulate=True)
    np.testing.assert_allclose(seen[0], 2 * x.numpy())
    np.testing.assert_allclose(seen[1], np.full(3, 3.0))
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy() + 3.0)


@pytest.mark.filterwarnings(r"ignore:Using backward\(\) with create_graph=True")
def test_accumulate_with_create_graph_differentiates_the_sum(device):
    """x.grad = d(x^3)/dx + d(x^2)/dx keeps a graph: its backward gives the second
    derivatives' sum, as torch's accumulated create_graph gradients do."""
    values = np.array([0.5, -1.0, 2.0], dtype="float32")
    x = ndl.Tensor(values, device=device)
    (x * x * x).sum().backward(create_graph=True)
    (x * x).sum().backward(create_graph=True, accumulate=True)
    grad = x.grad
    xt = torch.tensor(values, requires_grad=True)
    (xt * xt * xt).sum().backward(create_graph=True)
    (xt * xt).sum().backward(create_graph=True)
    grad_t = xt.grad
    np.testing.assert_allclose(grad.numpy(), grad_t.detach().numpy(), rtol=1e-6)
    x.grad, xt.grad = None, None
    grad.sum().backward()
    grad_t.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-6)


def make_trainer(device, batches, accumulate):
    np.random.seed(3)  # the same initial weights for every trainer
    model = make_model(device)
    opt = optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return Trainer(model, nn.SoftmaxLoss(), opt, train_data=batches, accumulate=accumulate)


def tensor_batches(x, y, size, device):
    return [
        (ndl.Tensor(x[i : i + size], device=device), ndl.Tensor(y[i : i + size], device=device))
        for i in range(0, len(x), size)
    ]


def test_trainer_accumulating_pairs_steps_as_batches_twice_as_large(device):
    """5 micro-batches of 8 with accumulate 2: updates over 16, 16 and (the pass's last) 8
    samples, the parameters of batches of 16, 16 and 8; the logged loss is the mean over the
    samples of the unscaled micro-batch losses."""
    x, y = data(40, 4)
    small = make_trainer(device, tensor_batches(x, y, 8, device), accumulate=2)
    large = make_trainer(device, tensor_batches(x, y, 16, device), accumulate=1)
    _, small_loss = small.run_epoch(True)
    large.run_epoch(True)
    assert (small.steps, large.steps) == (3, 3)
    for p, q in zip(small.model.parameters(), large.model.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-6)
    # The first update's two micro-batch losses come from the initial weights: their mean
    # (weighted by size, as the logged loss is) equals the big batch's first loss.
    fresh = make_trainer(device, tensor_batches(x, y, 16, device), accumulate=1)
    first = float(loss_of(fresh.model, x[:16], y[:16], device).numpy())
    micro = make_trainer(device, tensor_batches(x[:16], y[:16], 8, device), accumulate=2)
    assert micro.run_epoch(True)[1] == pytest.approx(first, rel=1e-5)
    assert np.isfinite(small_loss)


def test_trainer_rejects_accumulate_below_one():
    with pytest.raises(ValueError, match="accumulate"):
        Trainer(nn.Linear(2, 2), nn.SoftmaxLoss(), accumulate=0)
