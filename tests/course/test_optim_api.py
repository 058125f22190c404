"""COURSE_API.md section 8: needle.optim, in both modes (NEEDLE_BACKEND=nd and np).

Updates are checked against the course's rules written out in NumPy (float64).
"""

import gc
import inspect

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
import needle.optim as optim

NP = ndl.BACKEND == "np"


def _params(seed=0, shapes=((3, 2), (2,))):
    rng = np.random.default_rng(seed)
    return [nn.Parameter(ndl.Tensor(rng.normal(size=s), dtype="float32")) for s in shapes]


def _set_grads(params, seed):
    rng = np.random.default_rng(seed)
    grads = [rng.normal(size=p.shape) for p in params]
    for p, g in zip(params, grads):
        p.grad = ndl.Tensor(g, dtype="float32", requires_grad=False)
    return [g.astype(np.float32).astype(np.float64) for g in grads]


def test_signatures():
    def spec(cls):
        return [(n, p.default) for n, p in inspect.signature(cls).parameters.items()]

    empty = inspect.Parameter.empty
    assert spec(optim.SGD) == [
        ("params", empty),
        ("lr", 0.01),
        ("momentum", 0.0),
        ("weight_decay", 0.0),
    ]
    assert spec(optim.Adam) == [
        ("params", empty),
        ("lr", 0.01),
        ("beta1", 0.9),
        ("beta2", 0.999),
        ("eps", 1e-8),
        ("weight_decay", 0.0),
    ]
    assert list(inspect.signature(optim.Optimizer).parameters) == ["params"]
    assert inspect.signature(optim.Optimizer.clip_grad_norm).parameters["max_norm"].default == 0.25


def test_optimizer_params_and_reset_grad():
    ps = _params()
    opt = optim.SGD(ps)
    assert opt.params is ps
    _set_grads(ps, 1)
    opt.reset_grad()
    assert all(p.grad is None for p in ps)


@pytest.mark.parametrize("momentum, wd", [(0.0, 0.0), (0.9, 0.0), (0.5, 0.1)])
def test_sgd_course_momentum(momentum, wd):
    ps = _params()
    ws = [p.numpy().astype(np.float64) for p in ps]
    us = [np.zeros_like(w) for w in ws]
    opt = optim.SGD(ps, lr=0.1, momentum=momentum, weight_decay=wd)
    assert opt.u == {}
    for step in range(4):
        gs = _set_grads(ps, step)
        opt.step()
        for k, (p, g) in enumerate(zip(ps, gs)):
            us[k] = momentum * us[k] + (1 - momentum) * (g + wd * ws[k])
            ws[k] = ws[k] - 0.1 * us[k]
            np.testing.assert_allclose(p.numpy(), ws[k], rtol=1e-5, atol=1e-6)
            # .u is keyed by the parameter itself
            np.testing.assert_allclose(opt.u[p].numpy(), us[k], rtol=1e-5, atol=1e-6)
    assert set(map(id, opt.u)) == set(map(id, ps))


def test_sgd_momentum_differs_from_pytorch():
    """PyTorch differs: its buffer is m*u + g; needle's is m*u + (1-m)*g."""
    torch = pytest.importorskip("torch")
    w0 = np.array([1.0, -2.0], dtype=np.float32)
    p = nn.Parameter(ndl.Tensor(w0))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    pt = torch.tensor(w0, requires_grad=True)
    topt = torch.optim.SGD([pt], lr=0.1, momentum=0.9)
    for _ in range(2):
        p.grad = ndl.Tensor(np.ones(2, dtype=np.float32))
        pt.grad = torch.ones(2)
        opt.step()
        topt.step()
    # course: u1 = 0.1, u2 = 0.19 -> w = w0 - 0.029; torch: u1 = 1, u2 = 1.9 -> w0 - 0.29
    np.testing.assert_allclose(p.numpy(), w0 - 0.029, rtol=1e-6)
    np.testing.assert_allclose(pt.detach().numpy(), w0 - 0.29, rtol=1e-6)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adam_course_rule(wd):
    b1, b2, eps, lr = 0.8, 0.95, 1e-6, 0.05
    ps = _params(2)
    ws = [p.numpy().astype(np.float64) for p in ps]
    ms = [np.zeros_like(w) for w in ws]
    vs = [np.zeros_like(w) for w in ws]
    opt = optim.Adam(ps, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd)
    assert opt.t == 0 and opt.m == {} and opt.v == {}
    for step in range(1, 5):
        gs = _set_grads(ps, 10 + step)
        opt.step()
        assert opt.t == step
        for k, (p, g) in enumerate(zip(ps, gs)):
            g = g + wd * ws[k]
            ms[k] = b1 * ms[k] + (1 - b1) * g
            vs[k] = b2 * vs[k] + (1 - b2) * g * g
            mh, vh = ms[k] / (1 - b1**step), vs[k] / (1 - b2**step)
            ws[k] = ws[k] - lr * mh / (np.sqrt(vh) + eps)
            np.testing.assert_allclose(p.numpy(), ws[k], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(opt.m[p].numpy(), ms[k], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(opt.v[p].numpy(), vs[k], rtol=1e-5, atol=1e-7)


def test_adam_t_counts_steps_even_when_a_param_is_skipped():
    ps = _params(3)
    w1 = ps[1].numpy().astype(np.float64)
    opt = optim.Adam(ps, lr=0.1)
    _set_grads(ps, 0)
    ps[1].grad = None
    opt.step()  # t = 1, parameter 1 skipped
    np.testing.assert_array_equal(ps[1].numpy(), w1.astype(np.float32))
    assert ps[1] not in opt.m
    g = _set_grads(ps, 1)[1]
    opt.step()  # t = 2: the bias correction uses t = 2 for parameter 1 too
    m, v = 0.1 * g, 0.001 * g * g
    expect = w1 - 0.1 * (m / (1 - 0.9**2)) / (np.sqrt(v / (1 - 0.999**2)) + 1e-8)
    np.testing.assert_allclose(ps[1].numpy(), expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: optim.Adam(ps, lr=0.1)]
)
def test_step_skips_none_grad_and_leaves_grad(make):
    ps = _params(4)
    before = [p.numpy().copy() for p in ps]
    opt = make(ps)
    _set_grads(ps, 5)
    ps[0].grad = None
    g1 = ps[1].grad
    opt.step()
    np.testing.assert_array_equal(ps[0].numpy(), before[0])
    assert not np.allclose(ps[1].numpy(), before[1])
    assert ps[1].grad is g1 and ps[0].grad is None  # .grad untouched


def _mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.01),
    ],
)
def test_no_graph_growth_dtype_kept_beside_batchnorm(make):
    np.random.seed(0)
    model = _mlp()
    opt = make(model.parameters())
    bn = model.modules[1]
    x = ndl.Tensor(np.random.randn(16, 4), dtype="float32")
    y = ndl.Tensor(np.random.randint(0, 3, size=16))
    counts = []
    for _ in range(5):
        opt.reset_grad()
        loss = nn.SoftmaxLoss()(model(x), y)
        loss.backward()
        opt.step()
        del loss
        gc.collect()
        counts.append(ndl.autograd.TENSOR_COUNTER)
    assert counts[-1] == counts[1], counts  # flat: no graph kept by the optimizer
    for p in model.parameters():
        assert p.dtype == "float32" and p.op is None and p.inputs == []
    assert bn.running_mean.op is None and bn.running_var.op is None
    assert not isinstance(bn.running_mean, nn.Parameter)
    # eval mode works too
    model.eval()
    opt.reset_grad()
    nn.SoftmaxLoss()(model(x), y).backward()
    opt.step()
    assert all(np.isfinite(p.numpy()).all() for p in model.parameters())


def test_training_converges():
    np.random.seed(1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    for make in (
        lambda ps: optim.SGD(ps, lr=0.2, momentum=0.9),
        lambda ps: optim.Adam(ps, lr=0.02),
    ):
        model = _mlp()
        opt = make(model.parameters())
        losses = []
        for _ in range(40):
            opt.reset_grad()
            loss = nn.SoftmaxLoss()(model(ndl.Tensor(x)), ndl.Tensor(y))
            loss.backward()
            opt.step()
            losses.append(float(loss.numpy()))
        assert losses[-1] < 0.5 * losses[0], losses


def test_keeps_float64_in_numpy_mode():
    if not NP:
        pytest.skip("float64 parameters are a numpy-mode feature")
    p = nn.Parameter(ndl.Tensor(np.ones(3)))
    assert p.dtype == np.float64
    for opt in (optim.SGD([p], lr=0.1, momentum=0.5), optim.Adam([p], lr=0.1)):
        p.grad = ndl.Tensor(np.full(3, 0.5))
        opt.step()
        assert p.dtype == np.float64 and isinstance(p.cached_data, np.ndarray)


def test_clip_grad_norm():
    ps = _params(6)
    gs = _set_grads(ps, 7)
    total = np.sqrt(sum((g**2).sum() for g in gs))
    opt = optim.SGD(ps)
    opt.clip_grad_norm(max_norm=0.25)
    scale = 0.25 / (total + 1e-6)
    for p, g in zip(ps, gs):
        np.testing.assert_allclose(p.grad.numpy(), g * scale, rtol=1e-5)
    clipped = np.sqrt(sum((p.grad.numpy().astype(np.float64) ** 2).sum() for p in ps))
    assert clipped <= 0.25 + 1e-6
    # below the limit nothing changes
    gs = _set_grads(ps, 8)
    opt.clip_grad_norm(max_norm=1e6)
    for p, g in zip(ps, gs):
        np.testing.assert_allclose(p.grad.numpy(), g, rtol=1e-6)
