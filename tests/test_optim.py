"""needle.optim against torch.optim (or, for the course's SGD, a hand-written reference).

Each test trains the same small MLP in needle and in torch from the same weights on the
same batches for several steps, and compares the parameters after every step.
"""

import gc
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import needle as ndl
from needle import nn, optim

DTYPES = ["float32", "float64"]


def tolerance(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-9, atol=1e-11)


def make_model(device, dtype="float32"):
    return nn.Sequential(
        nn.Linear(4, 5, device=device, dtype=dtype),
        nn.Tanh(),
        nn.Linear(5, 3, device=device, dtype=dtype),
    )


def torch_loss(params, x, y):
    w1, b1, w2, b2 = params
    return F.cross_entropy(torch.tanh(x @ w1 + b1) @ w2 + b2, y)


def batches(n, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(8, 4)).astype(dtype), rng.integers(0, 3, size=8)) for _ in range(n)]


def needle_backward(model, x, y, device, dtype):
    loss = nn.SoftmaxLoss()(
        model(ndl.Tensor(x, device=device, dtype=dtype)), ndl.Tensor(y, device=device)
    )
    loss.backward()


def run_against(model, opt, params_t, torch_step, device, dtype, steps=6, skip=None):
    """Train both for `steps`; `skip(step)` names a parameter index whose grad is dropped."""
    params = model.parameters()
    tol = tolerance(dtype)
    for step, (x, y) in enumerate(batches(steps, dtype)):
        opt.reset_grad()
        needle_backward(model, x, y, device, dtype)
        for p in params_t:
            p.grad = None
        torch_loss(params_t, torch.tensor(x), torch.tensor(y)).backward()
        if skip is not None and skip(step) is not None:
            params[skip(step)].grad = None
            params_t[skip(step)].grad = None
        opt.step()
        torch_step()
        for p, p_t in zip(params, params_t):
            assert p.dtype == dtype
            np.testing.assert_allclose(p.numpy(), p_t.detach().numpy(), **tol)


def torch_copy(model):
    return [torch.tensor(p.numpy(), requires_grad=True) for p in model.parameters()]


def course_sgd_reference(params_t, lr, momentum, weight_decay):
    """needle's SGD by hand: u = m u + (1 - m)(g + wd w), w -= lr u, u starts at 0."""
    buffers = [torch.zeros_like(p) for p in params_t]

    @torch.no_grad()
    def step():
        for p, u in zip(params_t, buffers):
            if p.grad is None:
                continue
            u.mul_(momentum).add_((1 - momentum) * (p.grad + weight_decay * p))
            p.sub_(lr * u)

    return step


def course_adam_reference(params_t, lr, weight_decay, decoupled, b1=0.9, b2=0.999, eps=1e-8):
    """needle's Adam by hand, as the course's: t counts step() calls (torch counts steps per
    parameter), g = grad + wd w (AdamW: w *= 1 - lr wd instead), m, v from 0, bias-corrected."""
    ms = [torch.zeros_like(p) for p in params_t]
    vs = [torch.zeros_like(p) for p in params_t]
    t = [0]

    @torch.no_grad()
    def step():
        t[0] += 1
        for p, m, v in zip(params_t, ms, vs):
            if p.grad is None:
                continue
            g = p.grad if decoupled else p.grad + weight_decay * p
            if decoupled:
                p.mul_(1 - lr * weight_decay)
            m.mul_(b1).add_((1 - b1) * g)
            v.mul_(b2).add_((1 - b2) * g * g)
            m_hat, v_hat = m / (1 - b1 ** t[0]), v / (1 - b2 ** t[0])
            p.sub_(lr * m_hat / (v_hat.sqrt() + eps))

    return step


# ---- update rules ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.5, 0.01)])
def test_sgd_course_rule(device, dtype, momentum, weight_decay):
    model = make_model(device, dtype)
    params_t = torch_copy(model)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    run_against(
        model,
        opt,
        params_t,
        course_sgd_reference(params_t, 0.1, momentum, weight_decay),
        device,
        dtype,
    )


def _adam(weight_decay):
    return (
        lambda ps: optim.Adam(
            ps, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=weight_decay
        ),
        lambda ps: torch.optim.Adam(
            ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay
        ),
    )


def _adamw(weight_decay):
    return (
        lambda ps: optim.AdamW(ps, lr=0.02, weight_decay=weight_decay),
        lambda ps: torch.optim.AdamW(
            ps, lr=0.02, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay
        ),
    )


# (needle optimizer, the torch optimizer with the same rule), each from a parameter list.
SAME_AS_TORCH = [
    pytest.param(
        lambda ps: optim.SGD(ps, lr=0.1, weight_decay=0.05),
        lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.05),
        id="sgd_without_momentum",
    ),
    pytest.param(*_adam(0.0), id="adam"),
    pytest.param(*_adam(0.1), id="adam_weight_decay"),
    pytest.param(*_adamw(0.01), id="adamw"),
    pytest.param(*_adamw(0.3), id="adamw_weight_decay_0.3"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make, make_torch", SAME_AS_TORCH)
def test_matches_torch(device, dtype, make, make_torch):
    model = make_model(device, dtype)
    params_t = torch_copy(model)
    run_against(model, make(model.parameters()), params_t, make_torch(params_t).step, device, dtype)


def test_adamw_default_weight_decay():
    assert optim.AdamW([]).weight_decay == 0.01 and optim.Adam([]).weight_decay == 0.0


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_params_without_grad_are_skipped(device, name):
    """A parameter whose grad is None is left alone (its moments too). Adam's bias correction
    uses the optimizer's step count t (the course's), not a per-parameter count as torch's,
    so the reference is the course rule written out."""
    model = make_model(device)
    params_t = torch_copy(model)
    if name == "sgd":
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
        torch_step = course_sgd_reference(params_t, 0.1, 0.9, 0.1)
    else:
        cls = {"adam": optim.Adam, "adamw": optim.AdamW}[name]
        opt = cls(model.parameters(), lr=0.01, weight_decay=0.1)
        torch_step = course_adam_reference(params_t, 0.01, 0.1, decoupled=name == "adamw")
    # Parameter 1 misses its gradient on even steps, parameter 3 from step 2 on.
    run_against(
        model,
        opt,
        params_t,
        torch_step,
        device,
        "float32",
        steps=6,
        skip=lambda step: 1 if step % 2 == 0 else (3 if step >= 2 else None),
    )


# ---- no graph, dtypes ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda ps: optim.Adam(ps, weight_decay=0.01),
        lambda ps: optim.AdamW(ps),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_step_builds_no_graph(device, make_opt):
    model = make_model(device)
    params = model.parameters()
    ids = [id(p) for p in params]
    opt = make_opt(params)
    for x, y in batches(3, "float32"):
        opt.reset_grad()
        needle_backward(model, x, y, device, "float32")
        opt.step()
    assert [id(p) for p in model.parameters()] == ids  # updated in place
    for p in model.parameters():
        assert p.op is None and p.inputs == [] and p.requires_grad and p.dtype == "float32"
    for state in opt.state.values():
        for buffer in state.values():
            if isinstance(buffer, ndl.Tensor):
                assert buffer.op is None and not buffer.requires_grad
    assert ndl.is_grad_enabled()


OPTIMIZERS = [
    lambda ps: optim.SGD(ps, lr=0.1),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda ps: optim.Adam(ps, lr=0.1, weight_decay=0.01),
    lambda ps: optim.AdamW(ps, lr=0.1),
]
OPTIMIZER_IDS = ["sgd", "sgd-momentum", "adam", "adamw"]


@pytest.mark.parametrize("make_opt", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_step_updates_private_data_in_place(device, make_opt):
    """A parameter whose data nothing else holds is updated in its own buffer (as torch
    does), and so are the optimizer's own buffers; the values are checked by the tests above."""
    model = make_model(device)
    opt = make_opt(model.parameters())
    for step, (x, y) in enumerate(batches(3, "float32")):
        opt.reset_grad()
        needle_backward(model, x, y, device, "float32")
        # backward() keeps the gradients' graph (as needle), and that graph holds views of
        # the parameters' data: drop it, so that the data are private again.
        for p in model.parameters():
            p.grad = p.grad.detach()
        gc.collect()
        handles = [id(p.cached_data._handle) for p in model.parameters()]
        buffers = {
            (i, k): id(b.cached_data._handle)
            for i, s in opt.state.items()
            for k, b in s.items()
            if isinstance(b, ndl.Tensor)
        }
        opt.step()
        assert [id(p.cached_data._handle) for p in model.parameters()] == handles
        # The buffers exist from the first step on; plain SGD's u is the gradient itself
        # (u = g when momentum is 0: nothing to update in place).
        if step and getattr(opt, "momentum", None) != 0:
            assert {
                (i, k): id(b.cached_data._handle)
                for i, s in opt.state.items()
                for k, b in s.items()
                if isinstance(b, ndl.Tensor)
            } == buffers


@pytest.mark.parametrize("make_opt", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_step_leaves_what_others_hold_unchanged(device, make_opt):
    """needle's value semantics: a detached Tensor, an NDArray view or a Tensor made from a
    parameter's data keeps the values it had; only the parameter moves."""
    model = make_model(device)
    opt = make_opt(model.parameters())
    x, y = batches(1, "float32")[0]
    needle_backward(model, x, y, device, "float32")
    opt.step()  # the optimizer's buffers exist from here on
    w1, b1, w2, _b2 = model.parameters()
    kept = {"detached": w1.detach(), "view": b1.cached_data.permute((1, 0)), "data": w2.data}
    buffers = [b for s in opt.state.values() for b in s.values() if isinstance(b, ndl.Tensor)]
    if buffers:
        kept["buffer"] = buffers[0].detach()
    before = {k: v.numpy().copy() for k, v in kept.items()}
    params_before = [p.numpy().copy() for p in model.parameters()]
    opt.reset_grad()
    needle_backward(model, x, y, device, "float32")
    opt.step()
    for k, v in kept.items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)
    for p, old in zip(model.parameters(), params_before):
        assert not np.array_equal(p.numpy(), old)


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_step_keeps_parameter_dtype(device, cls):
    """A float64 gradient (set by hand) does not turn a float32 parameter into float64."""
    p = nn.Parameter(ndl.Tensor(np.ones((2, 3)), device=device, dtype="float32"))
    opt = cls([p], lr=0.1) if cls is not optim.SGD else cls([p], lr=0.1, momentum=0.5)
    for _ in range(2):
        p.grad = ndl.Tensor(np.full((2, 3), 0.5), device=device, dtype="float64")
        opt.step()
    assert p.dtype == "float32" and p.device == device
    assert all(
        b.dtype == "float32"
        for s in opt.state.values()
        for b in s.values()
        if isinstance(b, ndl.Tensor)
    )
    assert np.all(p.numpy() < 1)


def test_reset_grad_and_zero_grad(device):
    model = make_model(device)
    opt = optim.SGD(model.parameters())
    for clear in (opt.reset_grad, opt.zero_grad):
        needle_backward(model, *batches(1, "float32")[0], device, "float32")
        assert all(p.grad is not None for p in model.parameters())
        clear()
        assert all(p.grad is None for p in model.parameters())


# ---- state dicts -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda ps: optim.Adam(ps, lr=0.02, weight_decay=0.01),
        lambda ps: optim.AdamW(ps, lr=0.02, weight_decay=0.1),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_optimizer_state_dict_resumes_identically(device, make_opt):
    data = batches(6, "float32")

    def train(model, opt, part):
        for x, y in part:
            opt.reset_grad()
            needle_backward(model, x, y, device, "float32")
            opt.step()

    model = make_model(device)
    opt = make_opt(model.parameters())
    train(model, opt, data[:3])
    # Through pickle, as a checkpoint file would be.
    saved_model = pickle.loads(pickle.dumps(model.state_dict()))
    saved_opt = pickle.loads(pickle.dumps(opt.state_dict()))
    assert saved_opt["state"], "the optimizer should have state after three steps"

    resumed = make_model(device)
    resumed_opt = make_opt(resumed.parameters())
    resumed_opt.lr = 123.0  # overwritten by the loaded hyper-parameters
    resumed.load_state_dict(saved_model)
    resumed_opt.load_state_dict(saved_opt)
    assert resumed_opt.lr == opt.lr

    train(model, opt, data[3:])
    train(resumed, resumed_opt, data[3:])
    for p, q in zip(model.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_optimizer_state_dict_is_a_copy(device):
    model = make_model(device)
    opt = optim.Adam(model.parameters())
    needle_backward(model, *batches(1, "float32")[0], device, "float32")
    opt.step()
    saved = opt.state_dict()
    before = saved["state"][0]["m"].copy()
    needle_backward(model, *batches(1, "float32", seed=2)[0], device, "float32")
    opt.step()
    np.testing.assert_array_equal(saved["state"][0]["m"], before)
    assert saved["hyperparameters"]["t"] == 1 and opt.t == 2


def test_optimizer_load_state_dict_errors(device):
    model = make_model(device)
    opt = optim.SGD(model.parameters(), momentum=0.9)
    needle_backward(model, *batches(1, "float32")[0], device, "float32")
    opt.step()
    saved = opt.state_dict()
    with pytest.raises(KeyError, match="parameter 9"):
        opt.load_state_dict({**saved, "state": {9: saved["state"][0]}})
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict({**saved, "state": {0: saved["state"][1]}})
    with pytest.raises(KeyError, match="beta1"):
        opt.load_state_dict({**saved, "hyperparameters": {"beta1": 0.9}})


# ---- learning-rate schedules -----------------------------------------------------------------
def _compare_schedule(make, make_torch, steps):
    opt = optim.SGD([], lr=0.1)
    scheduler = make(opt)
    torch_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    torch_scheduler = make_torch(torch_opt)
    assert opt.lr == torch_scheduler.get_last_lr()[0]
    lrs = []
    for _ in range(steps):
        torch_opt.step()
        torch_scheduler.step()
        scheduler.step()
        assert math.isclose(opt.lr, torch_scheduler.get_last_lr()[0], rel_tol=1e-9, abs_tol=1e-15)
        assert scheduler.get_last_lr() == opt.lr
        lrs.append(opt.lr)
    return lrs


def test_step_lr_matches_torch():
    lrs = _compare_schedule(
        lambda o: optim.StepLR(o, step_size=3, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5),
        10,
    )
    assert lrs[:3] == [0.1, 0.1, 0.05]


def test_cosine_annealing_matches_torch():
    lrs = _compare_schedule(
        lambda o: optim.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
        25,
    )
    assert math.isclose(lrs[9], 0.001)  # the minimum at T_max


def test_scheduler_drives_the_update(device):
    """The step uses the scheduled lr; the scheduler's state resumes too."""
    p = nn.Parameter(ndl.Tensor(np.zeros(3), device=device))
    opt = optim.SGD([p], lr=1.0)
    scheduler = optim.StepLR(opt, step_size=1, gamma=0.5)
    previous = p.numpy().copy()
    for expected_lr in [1.0, 0.5, 0.25]:
        p.grad = ndl.Tensor(np.ones(3), device=device)
        opt.step()
        np.testing.assert_allclose(previous - p.numpy(), expected_lr)
        previous = p.numpy().copy()
        scheduler.step()
    other = optim.StepLR(optim.SGD([p], lr=1.0), step_size=1, gamma=0.5)
    other.load_state_dict(scheduler.state_dict())
    other.step()
    assert other.optimizer.lr == 0.0625


# Devices a model can move to from cpu_numpy (the C++ cpu, a GPU, webgpu when enabled); none
# in the numpy mode, where every Tensor is NumPy's.
MOVE_TARGETS = [
    pytest.param(d, id=d.name)
    for d in ndl.backend_ndarray.all_devices()
    if d.enabled() and d.name != "cpu_numpy" and ndl.backend_selection.BACKEND != "np"
]
OPTIMIZERS = [
    pytest.param(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01), id="sgd"),
    pytest.param(lambda ps: optim.Adam(ps, lr=0.02, weight_decay=0.01), id="adam"),
]


def train_steps(model, opt, part, device, dtype="float32"):
    for x, y in part:
        opt.reset_grad()
        needle_backward(model, x, y, device, dtype)
        opt.step()


@pytest.mark.skipif(
    not MOVE_TARGETS,
    reason="no device to move to from cpu_numpy (the numpy mode, or no other device)",
)
@pytest.mark.parametrize("target", MOVE_TARGETS)
@pytest.mark.parametrize("make_opt", OPTIMIZERS)
def test_buffers_follow_a_model_moved_to_another_device(target, make_opt):
    """Steps after model.to(target) move the optimizer's buffers too (no optimizer_to call)
    and give what a run that never moved gives."""
    start, data = ndl.backend_ndarray.cpu_numpy(), batches(6, "float32")
    np.random.seed(0)
    stay = make_model(start)
    stay_opt = make_opt(stay.parameters())
    train_steps(stay, stay_opt, data, start)
    np.random.seed(0)
    moved = make_model(start)
    opt = make_opt(moved.parameters())
    train_steps(moved, opt, data[:3], start)
    moved.to(target)
    train_steps(moved, opt, data[3:], target)
    for name in opt._buffers:
        for p, buffer in getattr(opt, name).items():
            assert buffer.device == p.device == target, name
    for p, q in zip(stay.parameters(), moved.parameters()):
        np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make_opt", OPTIMIZERS)
def test_buffers_follow_a_model_cast_to_another_dtype(device, make_opt):
    """model.to(dtype="float64") mid-run: the buffers become float64 and the steps equal a
    float64 model resumed from the float32 run's state_dict (the checkpoint path)."""
    data = batches(6, "float32")
    cast = make_model(device)
    opt = make_opt(cast.parameters())
    train_steps(cast, opt, data[:3], device)
    resumed = make_model(device, "float64")
    resumed_opt = make_opt(resumed.parameters())
    resumed.load_state_dict(cast.state_dict())
    resumed_opt.load_state_dict(opt.state_dict())
    cast.to(dtype="float64")
    as64 = [(x.astype("float64"), y) for x, y in data[3:]]
    train_steps(cast, opt, as64, device, "float64")
    train_steps(resumed, resumed_opt, as64, device, "float64")
    for name in opt._buffers:
        assert all(b.dtype == "float64" for b in getattr(opt, name).values()), name
    for p, q in zip(resumed.parameters(), cast.parameters()):
        assert q.dtype == "float64"
        np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=1e-12)
