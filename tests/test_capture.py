"""ndl.compile: a recorded step replays to the same bits as eager calls, and records again
(or runs eagerly, with a warning) whenever a replay could be stale."""

import warnings

import numpy as np
import pytest

import needle as ndl
from needle import nn, optim
from needle.apps.models import LanguageModel

# The NumPy reference backend and the C++ one (the GPU backends record alike; their tests
# would only repeat these, slowly, on emulations).
DEVICES = [pytest.param(d, id=d.name) for d in (ndl.cpu_numpy(), ndl.cpu()) if d.enabled()]
pytestmark = pytest.mark.skipif(ndl.BACKEND == "np", reason="the numpy mode runs eagerly")


def _mlp(device, dropout=0.0, batch_norm=False):
    np.random.seed(1)
    layers = [nn.Linear(12, 16, device=device)]
    layers += [nn.BatchNorm1d(16, device=device)] if batch_norm else []
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 5, device=device)]
    return nn.Sequential(*layers)


def _train_step(model, opt):
    loss_fn = nn.SoftmaxLoss()

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def _batches(device, n, batch=8, features=12, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (
            ndl.Tensor(rng.standard_normal((batch, features)), device=device, dtype="float32"),
            ndl.Tensor(rng.integers(0, classes, batch), device=device, dtype="float32"),
        )
        for _ in range(n)
    ]


def _run_both(make, device, batches, seed=2):
    """Parameters and losses after the steps, eager and compiled (same seeds)."""
    results = []
    for compiled in (False, True):
        model, step = make(device)
        run = ndl.compile(step) if compiled else step
        np.random.seed(seed)
        losses = [run(x, y).numpy() for x, y in batches]
        results.append(([p.numpy() for p in model.parameters()], losses, run))
    return results


def _assert_same(eager, compiled):
    for a, b in zip(eager[0] + eager[1], compiled[0] + compiled[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dropout, batch_norm, momentum", [(0.0, False, 0.0), (0.3, True, 0.9), (0.5, False, 0.5)]
)
def test_replay_bitwise_equal_to_eager_after_20_steps(device, dropout, batch_norm, momentum):
    def make(device):
        model = _mlp(device, dropout, batch_norm)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=1e-3)
        return model, _train_step(model, opt)

    eager, compiled = _run_both(make, device, _batches(device, 20))
    _assert_same(eager, compiled)
    run = compiled[2]
    assert run.reason is None and run.status == "replayed"
    assert run.replays >= 16, run.recordings  # recorded at most 4 times


@pytest.mark.parametrize("device", DEVICES)
def test_language_model_replays_bitwise_equal(device):
    def make(device):
        np.random.seed(3)
        model = LanguageModel(8, 30, hidden_size=8, num_layers=2, seq_model="lstm", device=device)
        opt = optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        loss_fn = nn.SoftmaxLoss()

        def step(x, y):
            opt.reset_grad()
            loss = loss_fn(model(x)[0], y)
            loss.backward()
            opt.step()
            return loss

        return model, step

    rng = np.random.default_rng(0)
    batches = [
        (
            ndl.Tensor(rng.integers(0, 30, (5, 3)), device=device, dtype="float32"),
            ndl.Tensor(rng.integers(0, 30, 15), device=device, dtype="float32"),
        )
        for _ in range(20)
    ]
    eager, compiled = _run_both(make, device, batches)
    _assert_same(eager, compiled)
    assert compiled[2].status == "replayed"


def _compiled_sgd(device, **kwargs):
    model = _mlp(device)
    opt = optim.SGD(model.parameters(), lr=0.1, **kwargs)
    return model, opt, ndl.compile(_train_step(model, opt))


def _warm(run, batches):
    for x, y in batches:
        run(x, y)
    assert run.status == "replayed", (run.status, run.reason)


@pytest.mark.parametrize("device", DEVICES)
def test_new_input_shape_records_again(device):
    def make(device):
        model = _mlp(device)
        return model, _train_step(model, optim.SGD(model.parameters(), lr=0.1))

    batches = _batches(device, 4) + _batches(device, 4, batch=3) + _batches(device, 4)
    eager, compiled = _run_both(make, device, batches)
    _assert_same(eager, compiled)
    # Plain SGD has no state to create: two recordings agree. 4 calls at batch 8 (2 recorded),
    # 4 at batch 3 (2 recorded), then 4 replays of the plan kept for batch 8.
    assert compiled[2].replays == 2 + 2 + 4 and compiled[2].recordings == 4


@pytest.mark.parametrize("device", DEVICES)
def test_python_state_changes_record_again(device):
    model, opt, run = _compiled_sgd(device)
    batches = _batches(device, 4)
    _warm(run, batches)
    opt.lr = 0.01  # a scheduler's change
    run(*batches[0])
    assert run.status == "recorded"
    model.eval()  # dropout and batch norm change behaviour
    run(*batches[1])
    assert run.status == "recorded"
    model.train()
    run(*batches[2])
    assert run.status == "recorded"  # the plan for lr 0.1 is not the one for 0.01
    _warm(run, batches)


FLAG = {"clip": False}
SCALE = 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_globals_and_branches_are_guarded(device):
    global SCALE
    model = _mlp(device)
    opt = optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.SoftmaxLoss()

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y) * SCALE
        loss.backward()
        opt.step()
        return loss

    run = ndl.compile(step)
    batches = _batches(device, 4)
    _warm(run, batches)
    before = run(*batches[0]).numpy()
    SCALE = 3.0
    try:
        after = run(*batches[0])
        assert run.status == "recorded"
        # the recorded call is eager: three times the loss of a model one step further on
        assert after.numpy() != before
    finally:
        SCALE = 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_host_read_in_step_runs_eagerly_with_warning(device):
    model = _mlp(device)
    opt = optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.SoftmaxLoss()
    seen = []

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        seen.append(float(loss.numpy()))  # data-dependent Python
        loss.backward()
        opt.step()
        return loss

    run = ndl.compile(step)
    with pytest.warns(UserWarning, match="reads device data on the host.*test_capture.py"):
        run(*_batches(device, 1)[0])
    for x, y in _batches(device, 3):
        run(x, y)
    assert run.status == "eager" and len(seen) == 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer", [optim.Adam, optim.AdamW])
def test_adam_replays_bitwise_equal_and_counts_steps(device, optimizer):
    opts = []

    def make(device):
        model = _mlp(device, dropout=0.2)
        opts.append(optimizer(model.parameters(), lr=0.01, weight_decay=0.01))
        return model, _train_step(model, opts[-1])

    eager, compiled = _run_both(make, device, _batches(device, 12))
    _assert_same(eager, compiled)
    assert compiled[2].status == "replayed" and opts[0].t == opts[1].t == 12


COUNT = 0


@pytest.mark.parametrize("device", DEVICES)
def test_state_changing_every_call_gives_up_with_reason(device):
    global COUNT
    COUNT = 0
    model = _mlp(device)
    opt = optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.SoftmaxLoss()

    def step(x, y):
        global COUNT
        COUNT += 1
        opt.reset_grad()
        loss = loss_fn(model(x), y) * (1.0 + 0.01 * COUNT)
        loss.backward()
        opt.step()
        return loss

    run = ndl.compile(step)
    with pytest.warns(UserWarning, match=r"changes the state it sees \(COUNT: \d+ -> \d+\)"):
        for x, y in _batches(device, 8):
            run(x, y)
    assert run.status == "eager" and COUNT == 8


@pytest.mark.parametrize("device", DEVICES)
def test_replay_checks_labels_again(device):
    _, _, run = _compiled_sgd(device)
    batches = _batches(device, 4)
    _warm(run, batches)
    x, _ = batches[0]
    bad = ndl.Tensor(np.full(8, 5.0), device=device, dtype="float32")  # 5 classes: 0..4
    with pytest.raises(IndexError, match=r"\[0, 5\)"):
        run(x, bad)


@pytest.mark.parametrize("device", DEVICES)
def test_rebound_parameter_records_again(device):
    batches = _batches(device, 8)
    results, statuses = [], []
    for compiled in (False, True):
        model = _mlp(device)
        step = _train_step(model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        run = ndl.compile(step) if compiled else step
        for i, (x, y) in enumerate(batches):
            if i == 5:  # rebinding a parameter's data: the recording read the old buffer
                w = model.modules[0].weight
                w.data = ndl.Tensor(np.full(w.shape, 0.1), device=device, dtype="float32")
            run(x, y)
            statuses.append(getattr(run, "status", None))
        results.append([p.numpy() for p in model.parameters()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert statuses[-4:] == ["replayed", "recorded", "recorded", "replayed"]


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_are_copies(device):
    _, _, run = _compiled_sgd(device)
    batches = _batches(device, 6)
    losses = [run(x, y) for x, y in batches]
    assert run.status == "replayed"
    values = [float(loss.numpy()) for loss in losses]
    assert len(set(values)) == len(values)
    # the loss required grad eagerly: so does the replayed one, whose backward says why not
    assert losses[-1].requires_grad
    with pytest.raises(RuntimeError, match="replays record no graph"):
        losses[-1].backward()


@pytest.mark.parametrize("device", DEVICES)
def test_step_writing_its_argument_runs_eagerly(device):
    x = ndl.Tensor(np.ones(4), device=device, dtype="float32", requires_grad=False)

    def step(x):
        with ndl.no_grad():
            x += 1.0
        return x * 2.0

    run = ndl.compile(step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [run(x).numpy() for _ in range(4)]
    assert any("writes into its argument 0" in str(w.message) for w in caught)
    np.testing.assert_array_equal(outs[-1], np.full(4, 10.0))
    np.testing.assert_array_equal(x.numpy(), np.full(4, 5.0))


def test_decorator_form_and_repr():
    @ndl.compile
    def double(x):
        return x * 2.0

    x = ndl.Tensor(np.arange(3.0), device=ndl.cpu_numpy(), dtype="float32")
    for _ in range(3):
        out = double(x)
    np.testing.assert_array_equal(out.numpy(), np.arange(3.0) * 2)
    assert double.status == "replayed" and "double" in repr(double)


@pytest.mark.parametrize("device", DEVICES)
def test_tensors_inside_argument_containers_are_inputs(device):
    def step(pair, scale):
        a, b = pair["a"], pair["b"]
        return (a * b).sum() * scale

    run = ndl.compile(step)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = (ndl.Tensor(rng.standard_normal(6), device=device, dtype="float32") for _ in "ab")
        out = run({"a": a, "b": b}, 2.0)
        np.testing.assert_allclose(out.numpy(), (a.numpy() * b.numpy()).sum() * 2.0, rtol=1e-6)
    assert run.status == "replayed"


@pytest.mark.parametrize("device", DEVICES)
def test_arguments_that_require_grad_get_their_gradient(device):
    w = ndl.Tensor(np.arange(4.0), device=device, dtype="float32")

    def step(x):
        loss = (x * w).sum()
        loss.backward()
        return loss

    run = ndl.compile(step)
    for i in range(4):
        x = ndl.Tensor(np.full(4, float(i)), device=device, dtype="float32", requires_grad=True)
        run(x)
        np.testing.assert_array_equal(x.grad.numpy(), np.arange(4.0))
        np.testing.assert_array_equal(w.grad.numpy(), np.full(4, float(i)))
    assert run.status == "replayed"


@pytest.mark.parametrize("device", DEVICES)
def test_a_new_gradient_hook_records_again(device):
    model, _, run = _compiled_sgd(device)
    batches = _batches(device, 4)
    _warm(run, batches)
    seen = []
    model.modules[0].weight.register_hook(lambda g: seen.append(g.shape))
    run(*batches[0])
    assert run.status == "recorded" and seen == [(12, 16)]


@pytest.mark.parametrize("device", DEVICES)
def test_aliased_arguments_are_guarded(device):
    def step(a, b):
        return a * 2.0 + b

    run = ndl.compile(step)
    x = ndl.Tensor(np.arange(3.0), device=device, dtype="float32")
    for _ in range(3):
        run(x, x)  # recorded with both arguments on one buffer
    assert run.status == "replayed"
    y = ndl.Tensor(np.full(3, 10.0), device=device, dtype="float32")
    np.testing.assert_array_equal(run(x, y).numpy(), np.arange(3.0) * 2 + 10)
    assert run.status == "recorded"


@pytest.mark.parametrize("device", DEVICES)
def test_calls_alternating_between_two_shapes_both_replay(device):
    def step(x):
        return (x * 2.0).sum()

    run = ndl.compile(step)
    a = ndl.Tensor(np.ones(3), device=device, dtype="float32")
    b = ndl.Tensor(np.ones(5), device=device, dtype="float32")
    statuses = []
    for _ in range(4):
        for x in (a, b):
            assert run(x).numpy() == 2.0 * x.shape[0]
            statuses.append(run.status)
    assert statuses == ["recorded"] * 4 + ["replayed"] * 4


@pytest.mark.parametrize("device", DEVICES)
def test_a_compiled_step_inside_another_records_into_it(device):
    inner = ndl.compile(lambda x: x * 3.0)
    x = ndl.Tensor(np.arange(4.0), device=device, dtype="float32")
    for _ in range(3):
        inner(x)  # a plan of its own
    outer = ndl.compile(lambda x: inner(x) + 1.0)
    for i in range(4):
        y = ndl.Tensor(np.full(4, float(i)), device=device, dtype="float32")
        np.testing.assert_array_equal(outer(y).numpy(), np.full(4, 3.0 * i + 1.0))
    assert outer.status == "replayed"


@pytest.mark.parametrize("device", DEVICES)
def test_a_strided_argument_is_copied_in_from_its_view(device):
    run = ndl.compile(lambda x: x * 2.0 + 1.0)
    for _ in range(3):
        run(ndl.Tensor(np.ones((3, 4)), device=device, dtype="float32"))
    assert run.status == "replayed"
    data = np.arange(12.0).reshape(4, 3)
    view = ndl.Tensor(data, device=device, dtype="float32").transpose()  # (3, 4), strided
    np.testing.assert_array_equal(run(view).numpy(), data.T * 2.0 + 1.0)
    assert run.status == "replayed"
