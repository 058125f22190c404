"""Issue 16's Tensor and Module habits, against PyTorch where it has the same thing.

Module walks (named_parameters, named_modules, children, apply, repr), ModuleList and
ModuleDict, zero_grad and requires_grad_, shared-parameter de-duplication, ``to()`` for
tensors, modules and optimizer buffers across devices, and hooks (tensor, forward,
forward-pre, full backward) with their handles. needle's Sequential keeps the course's
``modules`` tuple, so its names are torch's with a ``modules.`` in front; ModuleList and
ModuleDict name their elements as torch does.
"""

import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn
from needle.backend_ndarray import all_devices

NUMPY_MODE = ndl.backend_selection.BACKEND == "np"
DEVICES = [d for d in all_devices() if d.enabled()]
# Moves between devices (none in the numpy mode, whose data are all NumPy arrays).
PAIRS = [
    pytest.param(a, b, id=f"{a.name}-{b.name}")
    for a in DEVICES
    for b in DEVICES
    if a != b and not NUMPY_MODE
]


def torch_name(name: str) -> str:
    """needle's dotted name as torch's: Sequential's children sit under its `modules` tuple."""
    return name.replace("modules.", "")


# ---- the same architecture in both ----------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 6), nn.ReLU(), nn.Tanh()])
        self.heads = nn.ModuleDict({"cls": nn.Linear(6, 3), "act": nn.Sigmoid()})
        self.extra = nn.Identity()


def kind(module) -> str:
    return type(module).__name__.replace("TorchNet", "Net")


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Tanh()])
        self.heads = torch.nn.ModuleDict({"cls": torch.nn.Linear(6, 3), "act": torch.nn.Sigmoid()})
        self.extra = torch.nn.Identity()


def _seq_pair():
    model = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Sequential(nn.Linear(6, 2), nn.Tanh())
    )
    ref = torch.nn.Sequential(
        torch.nn.Linear(4, 6),
        torch.nn.BatchNorm1d(6),
        torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Linear(6, 2), torch.nn.Tanh()),
    )
    return model, ref


def _shape(name: str, shape) -> tuple:
    """A torch parameter's shape in needle's layout: Linear weights are (in, out)."""
    if name.endswith("weight") and len(shape) == 2:
        return tuple(shape)[::-1]
    return tuple(shape)


def test_module_list_and_dict_names_match_torch():
    model, ref = Net(), TorchNet()
    names = [(n, p.shape) for n, p in model.named_parameters()]
    expected = [(n, _shape(n, p.shape)) for n, p in ref.named_parameters()]
    # needle's Linear bias is (1, out): compare names and element counts of biases.
    assert [n for n, _ in names] == [n for n, _ in expected]
    for (_, got), (n, want) in zip(names, expected):
        assert int(np.prod(got)) == int(np.prod(want)), n
    assert list(model.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in model.named_modules()] == [n for n, _ in ref.named_modules()]
    assert [kind(m) for m in model.modules()] == [kind(m) for m in ref.modules()]
    assert [n for n, _ in model.named_children()] == [n for n, _ in ref.named_children()]
    assert [type(m).__name__ for m in model.children()] == [
        type(m).__name__ for m in ref.children()
    ]
    assert len(model.layers) == 3 and isinstance(model.layers[0], nn.Linear)
    assert model.heads["cls"] is model.heads.cls and "act" in model.heads


def test_sequential_names_are_torchs_under_modules():
    model, ref = _seq_pair()
    got = [(torch_name(n), p.shape) for n, p in model.named_parameters()]
    want = [(n, p.shape) for n, p in ref.named_parameters()]
    assert [n for n, _ in got] == [n for n, _ in want]
    assert [torch_name(n) for n in model.state_dict()] == [
        n for n in ref.state_dict() if not n.endswith("num_batches_tracked")
    ]
    assert [torch_name(n) for n, _ in model.named_modules()] == [n for n, _ in ref.named_modules()]
    # The course's tuple is still there, and also callable as torch's modules().
    assert model.modules[0] is model.children()[0]
    assert [type(m).__name__ for m in model.modules()] == [type(m).__name__ for m in ref.modules()]


def test_named_parameters_recurse_and_prefix():
    model, ref = _seq_pair()
    assert model.named_parameters(recurse=False) == [] == list(ref.named_parameters(recurse=False))
    lin = model.modules[0]
    assert [n for n, _ in lin.named_parameters(prefix="first")] == ["first.weight", "first.bias"]
    assert [torch_name(n) for n, _ in model.named_buffers()] == [
        n for n, _ in ref.named_buffers() if not n.endswith("num_batches_tracked")
    ]


def test_apply_order_matches_torch():
    for model, ref in (_seq_pair(), (Net(), TorchNet())):
        got, want = [], []
        assert model.apply(lambda m: got.append(kind(m))) is model
        ref.apply(lambda m: want.append(kind(m)))
        assert got == want


def test_apply_initialises_weights():
    model = Net()

    def zero_linear(m):
        if isinstance(m, nn.Linear):
            m.weight.data = ndl.Tensor(np.zeros(m.weight.shape, dtype="float32"))

    model.apply(zero_linear)
    assert all(not p.numpy().any() for n, p in model.named_parameters() if n.endswith("weight"))


def test_shared_parameters_listed_once_like_torch():
    # Weight tying: one Linear reached from two places.
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(3, 3)
            self.dec = self.enc
            self.blocks = nn.ModuleList([self.enc, nn.Linear(3, 2)])

    class TorchTied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(3, 3)
            self.dec = self.enc
            self.blocks = torch.nn.ModuleList([self.enc, torch.nn.Linear(3, 2)])

    model, ref = Tied(), TorchTied()
    names = [n for n, _ in model.named_parameters()]
    assert names == [n for n, _ in ref.named_parameters()]
    unique = model.parameters(remove_duplicate=True)
    assert len(unique) == len(list(ref.parameters())) == len({id(p) for p in unique})
    assert [id(p) for p in unique] == [id(p) for _, p in model.named_parameters()]
    # The course's parameters() keeps each reach (COURSE_API section 6), in the same order.
    course = model.parameters()
    assert len(course) == 3 * 2 + 2
    assert [id(p) for p in dict.fromkeys(course)] == [id(p) for p in unique]
    assert [n for n, _ in model.named_modules()] == [n for n, _ in ref.named_modules()]


def test_module_refers_to_its_parent():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    model.modules[1].parent = model
    assert [n for n, _ in model.named_modules()] == ["", "modules.0", "modules.1"]
    assert "Sequential(...)" in repr(model)  # a back reference, not endless recursion
    seen = []
    model.apply(seen.append)
    assert len(seen) == 3


def test_zero_grad_and_requires_grad_like_torch(device):
    model, ref = _seq_pair()
    model.to(device)
    model.modules[0].requires_grad_(False)
    ref[0].requires_grad_(False)
    assert model.modules[3].requires_grad_() is model.modules[3]
    x = np.random.randn(5, 4).astype(np.float32)
    model(ndl.Tensor(x, device=device)).sum().backward()
    ref(torch.tensor(x)).sum().backward()
    got = [p.grad is None for _, p in model.named_parameters()]
    want = [p.grad is None for _, p in ref.named_parameters()]
    assert got == want and any(got) and not all(got)
    model.zero_grad(set_to_none=False)
    ref.zero_grad(set_to_none=False)
    for (_, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert p.grad.shape == p.shape and p.grad.device == p.device
            assert not p.grad.numpy().any() and not q.grad.numpy().any()
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_repr_matches_torch():
    # Layers whose constructor arguments print the same in both.
    assert repr(Net()) == repr(TorchNet()).replace("TorchNet", "Net")
    assert repr(nn.Linear(3, 2, bias=False)) == repr(torch.nn.Linear(3, 2, bias=False))
    assert repr(nn.ModuleList()) == repr(torch.nn.ModuleList())


def test_repr_of_other_layers():
    model, _ = _seq_pair()
    text = repr(model)
    assert text.splitlines()[:3] == [
        "Sequential(",
        "  (modules.0): Linear(in_features=4, out_features=6, bias=True)",
        "  (modules.1): BatchNorm1d(6, eps=1e-05, momentum=0.1)",
    ]
    assert "    (modules.1): Tanh()" in text
    # Layers without their own extra_repr show their number, bool and str attributes.
    assert repr(nn.Conv(2, 3, 3)) == "Conv(in_channels=2, out_channels=3, kernel_size=3, stride=1)"
    assert repr(nn.Dropout(0.25)) == "Dropout(p=0.25)"
    lstm = repr(nn.LSTM(3, 4, num_layers=2))
    assert "(lstm_cells.1): LSTMCell(input_size=4, hidden_size=4, bias=True)" in lstm


def test_module_list_and_dict_edits():
    layers = nn.ModuleList([nn.Linear(2, 2)])
    layers.append(nn.ReLU())
    layers += [nn.Linear(2, 3)]
    layers.insert(0, nn.Identity())
    assert [type(m).__name__ for m in layers] == ["Identity", "Linear", "ReLU", "Linear"]
    assert len(layers[1:]) == 3 and isinstance(layers[1:], nn.ModuleList)
    del layers[0]
    assert list(layers.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    layers.eval()
    assert not any(m.training for m in layers)
    with pytest.raises(TypeError, match="Module"):
        layers.append(ndl.Tensor([1.0]))
    heads = nn.ModuleDict([("a", nn.Linear(2, 2))])
    heads["b"] = nn.Linear(2, 1)
    assert list(heads) == ["a", "b"] and list(heads.state_dict())[-1] == "b.bias"
    with pytest.raises(TypeError, match="str"):
        heads[1] = nn.ReLU()
    with pytest.raises(AttributeError, match="'c'"):
        heads.c  # noqa: B018


# ---- to() -----------------------------------------------------------------------------------
@pytest.mark.parametrize("source, target", PAIRS)
def test_tensor_to_like_torch(source, target):
    x_np = np.random.randn(3, 4).astype(np.float32)
    x = ndl.Tensor(x_np, device=source)
    assert x.to(source) is x and x.to("float32") is x and x.to(x) is x
    y = x.to(target)
    assert y.device == target and y.dtype == "float32"
    np.testing.assert_array_equal(y.numpy(), x_np)
    if "float64" in target.dtypes:  # cast after the move when the source lacks float64
        z = x.to(target, "float64")
        assert (z.device, z.dtype) == (target, "float64")
        assert x.to(dtype="float64", device=target).dtype == "float64"
        back = z.to(source, "float32")  # cast before the move when the target lacks float64
        assert (back.device, back.dtype) == (source, "float32")
        np.testing.assert_array_equal(back.numpy(), x_np)
    # Differentiable, as torch's: the gradient comes back on the source device.
    w = ndl.Tensor(np.random.randn(4, 2).astype(np.float32), device=target)
    (x.to(target) @ w).sum().backward()
    xt = torch.tensor(x_np, requires_grad=True)
    (xt.to(torch.float32) @ torch.tensor(w.numpy())).sum().backward()
    assert x.grad.device == source
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-6)
    assert x.cpu().device == ndl.cpu()


def test_tensor_to_dtype_gradient_keeps_dtype():
    x_np = np.random.randn(3).astype(np.float32)
    x = ndl.Tensor(x_np)
    xt = torch.tensor(x_np, requires_grad=True)
    (x.to("float64") ** 2).sum().backward()
    (xt.to(torch.float64) ** 2).sum().backward()
    assert x.grad.dtype == "float32"
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-6)
    with pytest.raises(TypeError, match="to:"):
        x.to(3)
    with pytest.raises(TypeError, match=r"to:.*dtype"):
        x.to("complex7")


@pytest.mark.parametrize("source, target", PAIRS)
def test_device_mismatch_advice_is_true(source, target):
    x = ndl.Tensor(np.ones(3), device=source)
    y = ndl.Tensor(np.ones(3), device=target)
    with pytest.raises(ValueError, match=r"different devices.*\.to\(device\)"):
        x + y
    np.testing.assert_array_equal((x.to(y.device) + y).numpy(), np.full(3, 2.0))


def _train(model, device, steps=3, opt=None):
    rng = np.random.default_rng(1)
    opt = opt or ndl.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        x = ndl.Tensor(rng.normal(size=(8, 4)).astype(np.float32) * 2 + 1, device=device)
        y = ndl.Tensor(rng.integers(0, 2, 8), device=device, dtype="float32")
        opt.reset_grad()
        nn.SoftmaxLoss()(model(x), y).backward()
        opt.step()
    return opt


def _bn_model(device):
    np.random.seed(0)
    return nn.Sequential(
        nn.Linear(4, 6, device=device),
        nn.BatchNorm1d(6, device=device),
        nn.ReLU(),
        nn.Linear(6, 2, device=device),
    )


@pytest.mark.parametrize("source, target", PAIRS)
def test_module_to_moves_parameters_and_buffers(source, target):
    model = _bn_model(source)
    _train(model, source)
    state = model.state_dict()
    bn = model.modules[1]
    objects = [id(t) for t in model.parameters()] + [id(bn.running_mean), id(bn.running_var)]
    assert not np.allclose(state["modules.1.running_mean"], 0)  # trained statistics
    model.eval()
    x = np.random.randn(5, 4).astype(np.float32)
    before = model(ndl.Tensor(x, device=source)).numpy()

    assert model.to(target) is model
    assert [id(t) for t in model.parameters()] + [id(bn.running_mean), id(bn.running_var)] == (
        objects
    )
    assert all(t.device == target for _, t in model._named_tensors("", True, True))
    assert all(p.grad is None or p.grad.device == target for p in model.parameters())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    after = model(ndl.Tensor(x, device=target)).numpy()
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def _mlp(device):
    np.random.seed(0)
    return nn.Sequential(nn.Linear(4, 6, device=device), nn.ReLU(), nn.Linear(6, 2, device=device))


@pytest.mark.parametrize("source, target", PAIRS)
@pytest.mark.parametrize("make", ["SGD", "Adam"])
def test_optimizer_buffers_follow_the_model(source, target, make):
    def optimizer(model):
        params = model.parameters()
        if make == "SGD":
            return ndl.optim.SGD(params, lr=0.1, momentum=0.9)
        return ndl.optim.Adam(params, lr=0.01)

    # No BatchNorm here: the bias before a BatchNorm gets a gradient of rounding noise, which
    # Adam scales up to full steps whose signs differ between devices.
    moved, stayed = _mlp(source), _mlp(source)
    opt_moved = _train(moved, source, opt=optimizer(moved))
    opt_stayed = _train(stayed, source, opt=optimizer(stayed))
    moved.to(target)
    buffers = {name: dict(getattr(opt_moved, name)) for name in opt_moved._buffers}
    assert nn.optimizer_to(opt_moved) is opt_moved
    for name, by_param in buffers.items():
        for p, buf in by_param.items():
            assert getattr(opt_moved, name)[p] is buf and buf.device == target
    _train(moved, target, opt=opt_moved)
    _train(stayed, source, opt=opt_stayed)
    for (key, a), b in zip(moved.state_dict().items(), stayed.state_dict().values()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=key)


def test_module_to_dtype_casts_floats_only():
    model = _bn_model(ndl.cpu())
    model.counts = ndl.Tensor(np.arange(3), dtype="int32", requires_grad=False)
    model.to("float64")
    floats = [t for n, t in model._named_tensors("", True, True) if n != "counts"]
    assert len(floats) == 8 and all(t.dtype == "float64" for t in floats)
    assert model.counts.dtype == "int32"  # as torch: to(dtype) casts floating tensors only
    np.testing.assert_array_equal(model.counts.numpy(), np.arange(3))
    out = model(ndl.Tensor(np.random.randn(3, 4), dtype="float64"))
    assert out.dtype == "float64"


# ---- hooks ----------------------------------------------------------------------------------
def test_tensor_hooks_like_torch():
    x_np = np.random.randn(3, 4).astype(np.float32)
    x = ndl.Tensor(x_np)
    xt = torch.tensor(x_np, requires_grad=True)
    log, log_t = [], []
    y, yt = x.exp(), xt.exp()
    y.register_hook(lambda g: log.append(g.numpy()))  # observes: returns None
    yt.register_hook(lambda g: log_t.append(g.numpy()))
    h1 = y.register_hook(lambda g: g * 3.0)  # replaces: flows on to x
    yt.register_hook(lambda g: g * 3.0)
    x.register_hook(lambda g: g + 1.0)  # on a leaf: what lands in .grad
    xt.register_hook(lambda g: g + 1.0)
    (y * y).sum().backward()
    (yt * yt).sum().backward()
    np.testing.assert_allclose(log[0], log_t[0], rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-5)
    h1.remove()
    h1.remove()  # a second remove is a no-op
    (x.exp() * 1.0).sum().backward()  # a new graph: y's hooks are not on it
    np.testing.assert_allclose(x.grad.numpy(), np.exp(x_np) + 1.0, rtol=1e-6)
    z = x.exp()
    with z.register_hook(lambda g: g * 0.0):
        pass  # the context manager removes it on exit
    z.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp(x_np) + 1.0, rtol=1e-6)


def test_tensor_hook_errors():
    with pytest.raises(RuntimeError, match="does not require"):
        ndl.Tensor([1.0], requires_grad=False).register_hook(lambda g: g)
    x = ndl.Tensor(np.ones(3))
    x.register_hook(lambda g: g.sum())
    with pytest.raises(ValueError, match=r"register_hook.*\(3,\)"):
        (x * 2).sum().backward()


def _linear_pair():
    lin = nn.Linear(3, 2)
    ref = torch.nn.Linear(3, 2)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(lin.weight.numpy().T))
        ref.bias.copy_(torch.tensor(lin.bias.numpy().reshape(-1)))
    return lin, ref


def test_forward_hooks_replace_like_torch():
    lin, ref = _linear_pair()
    x_np = np.random.randn(4, 3).astype(np.float32)
    for m in (lin, ref):
        m.register_forward_pre_hook(lambda mod, args: (args[0] * 2.0,))
        m.register_forward_hook(lambda mod, args, out: out + 1.0)
    seen = []
    handle = lin.register_forward_hook(lambda mod, args, out: seen.append((mod, args, out)))
    out = lin(ndl.Tensor(x_np))
    np.testing.assert_allclose(out.numpy(), ref(torch.tensor(x_np)).detach().numpy(), rtol=1e-5)
    mod, args, hooked = seen[0]
    assert mod is lin and hooked is out
    np.testing.assert_allclose(args[0].numpy(), x_np * 2.0)  # the inputs after the pre-hook
    handle.remove()
    lin(ndl.Tensor(x_np))
    assert len(seen) == 1
    # A pre-hook may return a single value instead of a tuple, as in torch.
    ident = nn.Identity()
    ident.register_forward_pre_hook(lambda mod, args: args[0] * 0.0)
    assert not ident(ndl.Tensor(x_np)).numpy().any()


def _backward_logs(module, ref):
    log, log_t = [], []

    def record(into):
        return lambda mod, gi, go: into.append(
            ([None if g is None else g.numpy() for g in gi], [g.numpy() for g in go])
        )

    return (
        log,
        log_t,
        module.register_full_backward_hook(record(log)),
        ref.register_full_backward_hook(record(log_t)),
    )


def _same(log, log_t):
    assert len(log) == len(log_t) == 1
    for got, want in zip(log[0], log_t[0]):
        assert [g is None for g in got] == [g is None for g in want]
        for g, w in zip(got, want):
            if g is not None:
                np.testing.assert_allclose(g, w.reshape(g.shape), rtol=1e-5, atol=1e-6)


# torch warns that the hook fires at the outputs when no input needs a gradient.
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_full_backward_hook_like_torch():
    lin, ref = _linear_pair()
    log, log_t, handle, _ = _backward_logs(lin, ref)
    x_np = np.random.randn(4, 3).astype(np.float32)
    x, xt = ndl.Tensor(x_np), torch.tensor(x_np, requires_grad=True)
    (lin(x) ** 2).sum().backward()
    (ref(xt) ** 2).sum().backward()
    _same(log, log_t)
    # Inputs that need no gradient: the hook still runs, with grad_input (None,).
    log.clear(), log_t.clear()
    (lin(ndl.Tensor(x_np, requires_grad=False)) ** 2).sum().backward()
    (ref(torch.tensor(x_np)) ** 2).sum().backward()
    _same(log, log_t)
    handle.remove()
    log.clear()
    lin(x).sum().backward()
    assert log == []


class Mix(nn.Module):
    """Two inputs (and a non-tensor one), two outputs."""

    def forward(self, a, b, scale):
        return a * b * scale, a.exp()


class TorchMix(torch.nn.Module):
    def forward(self, a, b, scale):
        return a * b * scale, a.exp()


def test_full_backward_hook_replaces_grad_input_like_torch():
    a_np, b_np = np.random.randn(2, 3).astype(np.float32), np.random.randn(2, 3).astype(np.float32)
    mix, ref = Mix(), TorchMix()
    log, log_t, _, _ = _backward_logs(mix, ref)
    for m in (mix, ref):
        m.register_full_backward_hook(lambda mod, gi, go: (gi[0] * 10.0, gi[1], None))
    a, b = ndl.Tensor(a_np), ndl.Tensor(b_np)
    at, bt = torch.tensor(a_np, requires_grad=True), torch.tensor(b_np, requires_grad=True)
    u, v = mix(a, b, 2.0)
    ut, vt = ref(at, bt, 2.0)
    ((u * v).sum() + (u**2).sum()).backward()
    ((ut * vt).sum() + (ut**2).sum()).backward()
    _same(log, log_t)  # grad_input has a None for the float argument, as in torch
    np.testing.assert_allclose(a.grad.numpy(), at.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(b.grad.numpy(), bt.grad.numpy(), rtol=1e-5)


def test_full_backward_hook_errors_and_no_grad():
    lin = nn.Linear(3, 2)
    lin.register_full_backward_hook(lambda mod, gi, go: (gi[0], gi[0]))
    with pytest.raises(ValueError, match="Linear returned 2 gradients for 1 inputs"):
        lin(ndl.Tensor(np.ones((1, 3)))).sum().backward()
    with ndl.no_grad():  # no graph: nothing is wrapped, nothing fires
        out = lin(ndl.Tensor(np.ones((1, 3))))
    assert not out.requires_grad


def test_hooks_in_a_model_and_state_untouched():
    model, _ = _seq_pair()
    names = list(model.state_dict())
    calls = []
    handles = [
        m.register_forward_hook(lambda mod, args, out: calls.append(type(mod).__name__))
        for m in model.modules()
    ]
    model(ndl.Tensor(np.random.randn(5, 4)))
    assert calls == ["Linear", "BatchNorm1d", "ReLU", "Linear", "Tanh", "Sequential", "Sequential"]
    assert list(model.state_dict()) == names and len(model.parameters()) == 6
    for h in handles:
        h.remove()
    calls.clear()
    model(ndl.Tensor(np.random.randn(5, 4)))
    assert calls == []
