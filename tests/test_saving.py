"""ndl.save / ndl.load, Module.save_weights / load_weights and needle.interop against PyTorch:
structures and dtypes round-trip bit for bit, files from torch's safetensors read back, pickles
are refused without running, and torch models ported either way give the same outputs."""

import os
import pickle

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import needle as ndl
from needle import interop, nn
from needle.apps.models import LanguageModel, MLPResNet, ResNet9

BF16_BITS = np.arange(2**16, dtype=np.uint16)  # every bfloat16, NaNs and infinities included


def test_structures_round_trip_with_their_kinds_and_bits(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = ndl.optim.Adam(model.parameters(), lr=0.01)
    model(ndl.Tensor(np.random.randn(5, 3))).sum().backward()
    opt.step()
    sched = ndl.optim.StepLR(opt, step_size=2)
    arrays = {dt: np.arange(-3, 3).astype(dt) for dt in ("float64", "int32", "uint8", "bool")}
    obj = {
        "model": model.state_dict(),
        "optim": opt.state_dict(),  # buffers keyed by int
        "sched": sched.state_dict(),
        "json": (1, "a", None, [2.5, True, float("inf")], {"x": -7}),
        "bf16": ndl.Tensor(BF16_BITS.view(ml_dtypes.bfloat16), dtype="bfloat16"),
        "f16": ndl.Tensor(BF16_BITS.view(np.float16), dtype="float16"),
        "param": model.modules[0].weight,
        "ndarray": model.modules[0].weight.cached_data,
        "scalar": np.float32(2.5),
        "0-d": np.zeros(()),
        "transposed": np.arange(6.0).reshape(2, 3).T,  # not C-contiguous
        **arrays,
    }
    ndl.save(obj, str(tmp_path / "s.safetensors"))
    got = ndl.load(str(tmp_path / "s.safetensors"))
    assert list(got) == list(obj) and got["json"] == obj["json"] and got["sched"] == obj["sched"]
    assert (
        sorted(got["optim"]["state"]) == [0, 1, 2, 3] and got["optim"]["hyperparameters"]["t"] == 1
    )
    for key in ("bf16", "f16"):
        assert type(got[key]) is ndl.Tensor and got[key].dtype == obj[key].dtype
        assert np.array_equal(got[key].numpy().view(np.uint16), BF16_BITS)
    assert type(got["param"]) is nn.Parameter and got["param"].requires_grad
    assert isinstance(got["ndarray"], ndl.backend_ndarray.NDArray)
    assert type(got["scalar"]) is np.float32 and got["scalar"] == 2.5 and got["0-d"].shape == ()
    for key in ("transposed", *arrays):
        assert got[key].dtype == obj[key].dtype and np.array_equal(got[key], obj[key])
    # The optimizer resumes: the same step from the loaded state as from the live one.
    again = ndl.optim.Adam(model.parameters(), lr=0.5)
    again.load_state_dict(got["optim"])
    for p in model.parameters():
        np.testing.assert_array_equal(again.m[p].numpy(), opt.m[p].numpy())
    assert again.lr == 0.01 and again.t == 1
    assert all(
        isinstance(v, np.ndarray)
        for v in ndl.load(tmp_path / "s.safetensors", as_numpy=True)["model"].values()
    )


def test_bfloat16_files_read_both_ways_with_torch(tmp_path):
    ours, theirs = str(tmp_path / "ours.safetensors"), str(tmp_path / "theirs.safetensors")
    ndl.save({"w": ndl.Tensor(BF16_BITS.view(ml_dtypes.bfloat16), dtype="bfloat16")}, ours)
    read = safetensors.torch.load_file(ours)["w"]
    assert read.dtype == torch.bfloat16
    assert np.array_equal(read.view(torch.int16).numpy().view(np.uint16), BF16_BITS)
    bits = torch.from_numpy(BF16_BITS.view(np.int16))
    safetensors.torch.save_file({"w": bits.view(torch.bfloat16), "i": torch.arange(3)}, theirs)
    got = ndl.load(theirs)  # no needle metadata: name -> Tensor
    assert got["w"].dtype == "bfloat16" and got["i"].dtype == "int64"
    assert np.array_equal(got["w"].numpy().view(np.uint16), BF16_BITS)


class _RunsCode:
    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_anything_but_safetensors_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "the pickle ran"
    evil = _RunsCode()
    evil.path = str(marker)
    files = {
        "evil.pkl": lambda p: p.write_bytes(pickle.dumps(evil)),
        "torch.pt": lambda p: torch.save({"w": torch.ones(2)}, p),
        "objects.npz": lambda p: np.savez(p, a=np.array([None], dtype=object)),
        "empty": lambda p: p.write_bytes(b""),
    }
    for name, write in files.items():
        write(tmp_path / name)
        with pytest.raises(ValueError, match=f"{name} is not a safetensors file.*never unpickles"):
            ndl.load(str(tmp_path / name))
    assert not marker.exists()
    damaged = str(tmp_path / "damaged.safetensors")
    safetensors.numpy.save_file({"w": np.ones(2)}, damaged, {"needle": '{"version": 1}'})
    with pytest.raises(ValueError, match=r"damaged\.safetensors has a damaged needle structure"):
        ndl.load(damaged)
    safetensors.numpy.save_file({"q": np.ones(2, np.int8)}, damaged)  # needle has no int8
    with pytest.raises(ValueError, match=r"q: unsupported dtype 'int8'.*as_numpy=True"):
        ndl.load(damaged)
    assert ndl.load(damaged, as_numpy=True)["q"].dtype == np.int8
    with pytest.raises(ValueError, match="pickle"):
        ndl.load(str(tmp_path / "evil.pkl"))
    with pytest.raises(ValueError, match="zip archive"):
        ndl.load(str(tmp_path / "torch.pt"))


def test_save_refuses_what_it_cannot_write_and_never_tears_a_file(tmp_path, monkeypatch):
    path = str(tmp_path / "s.safetensors")
    for bad, what in (({"f": len}, "builtin_function"), ({True: 1}, "keys"), ({1.5: 1}, "keys")):
        with pytest.raises(TypeError, match=what):
            ndl.save(bad, path)
    with pytest.raises(TypeError, match=r"a\.b holds object"):
        ndl.save({"a": {"b": np.array([None])}}, path)
    ndl.save({"w": np.ones(3)}, path)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        ndl.save({"w": np.zeros(3)}, path)
    assert os.listdir(tmp_path) == ["s.safetensors"]  # no temporary left
    assert np.array_equal(ndl.load(path)["w"], np.ones(3))  # the old file, whole


def test_save_weights_and_load_weights(tmp_path):
    path = str(tmp_path / "w.safetensors")
    model, other = MLPResNet(6, 8, 1), MLPResNet(6, 8, 1)
    model.save_weights(path)
    other.load_weights(path)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert sorted(safetensors.torch.load_file(path)) == sorted(model.state_dict())
    with pytest.raises(KeyError, match="missing keys"):
        MLPResNet(6, 8, 2).load_weights(path)
    ndl.save({"nested": {"w": np.ones(2)}}, str(tmp_path / "n.safetensors"))
    with pytest.raises(ValueError, match="no flat dict of weights"):
        model.load_weights(str(tmp_path / "n.safetensors"))


# ---- needle.interop against torch --------------------------------------------------------
def _perturb_torch(module):
    """Move every float tensor off its initial value (BatchNorm's ones and zeros too)."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand_like(t) + 0.5
                    if "running_var" in name
                    else t + 0.1 * torch.randn_like(t)
                )


def _perturb_needle(module):
    state = {
        name: (
            np.random.rand(*v.shape) + 0.5
            if "running_var" in name
            else v + 0.1 * np.random.randn(*v.shape)
        ).astype(v.dtype)
        for name, v in module.state_dict().items()
    }
    module.load_state_dict(state)


def _close(needle_out, torch_out):
    for a, b in zip(needle_out, torch_out):
        b = b.detach().numpy()
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def _port_both_ways(make_torch, make_needle, x, training=False, needle_forward=None):
    """torch -> needle and needle -> torch (fresh, perturbed weights each way): the same
    outputs on the same input x (a NumPy array)."""
    needle_forward = needle_forward or (lambda m, x: m(ndl.Tensor(x, dtype=str(x.dtype))))

    def outputs(t, m):
        t.train(training), m.train(training)
        got, want = needle_forward(m, x), t(torch.from_numpy(x))
        flat = lambda o: [v for item in o for v in flat(item)] if isinstance(o, tuple) else [o]  # noqa: E731
        return flat(got), flat(want)

    t, m = make_torch(), make_needle()
    _perturb_torch(t)
    interop.load_torch_state_dict(m, t.state_dict())
    _close(*outputs(t, m))
    t, m = make_torch(), make_needle()
    _perturb_needle(m)
    t.load_state_dict(
        {k: torch.from_numpy(v) for k, v in interop.export_torch_state_dict(m).items()}
    )
    _close(*outputs(t, m))
    return t, m


def _rand(*shape):
    return np.random.randn(*shape).astype(np.float32)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_ports(bias):
    _port_both_ways(lambda: torch.nn.Linear(5, 3, bias), lambda: nn.Linear(5, 3, bias), _rand(4, 5))


@pytest.mark.parametrize("k,stride,bias", [(3, 1, True), (5, 2, False), (1, 2, True)])
def test_conv_ports(k, stride, bias):
    _port_both_ways(
        lambda: torch.nn.Conv2d(3, 4, k, stride, padding=k // 2, bias=bias),
        lambda: nn.Conv(3, 4, k, stride, bias=bias),
        _rand(2, 3, 9, 9),
    )


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("norm,shape", [("1d", (8, 5)), ("2d", (4, 5, 3, 3))])
def test_batch_norm_ports_in_train_and_eval(norm, shape, training):
    make_torch = getattr(torch.nn, f"BatchNorm{norm}")
    t, m = _port_both_ways(
        lambda: make_torch(5), lambda: getattr(nn, f"BatchNorm{norm}")(5), _rand(*shape), training
    )
    exported = interop.export_torch_state_dict(m)
    assert exported["num_batches_tracked"] == 0
    # One training step moved both running means alike (the variances differ: needle's biased).
    np.testing.assert_allclose(
        exported["running_mean"], t.running_mean.numpy(), rtol=1e-5, atol=1e-6
    )


def test_layer_norm_and_embedding_port():
    _port_both_ways(lambda: torch.nn.LayerNorm(6), lambda: nn.LayerNorm(6), _rand(3, 6))
    ids = np.random.randint(0, 7, size=(5, 2)).astype(np.int64)
    _port_both_ways(lambda: torch.nn.Embedding(7, 4), lambda: nn.Embedding(7, 4), ids)


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_ports(layers):
    _port_both_ways(
        lambda: torch.nn.LSTM(5, 4, layers), lambda: nn.LSTM(5, 4, layers), _rand(6, 3, 5)
    )


def test_lstm_cell_ports():
    _port_both_ways(lambda: torch.nn.LSTMCell(5, 4), lambda: nn.LSTMCell(5, 4), _rand(3, 5))


class _Residual(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def _torch_mlp_resnet(dim, hidden, blocks, classes, drop):
    T = torch.nn

    def block(d, h):
        inner = T.Sequential(
            T.Linear(d, h),
            T.BatchNorm1d(h),
            T.ReLU(),
            T.Dropout(drop),
            T.Linear(h, d),
            T.BatchNorm1d(d),
        )
        return T.Sequential(_Residual(inner), T.ReLU())

    return T.Sequential(
        T.Linear(dim, hidden),
        T.ReLU(),
        *[block(hidden, hidden // 2) for _ in range(blocks)],
        T.Linear(hidden, classes),
    )


class _TorchConvBN(torch.nn.Module):
    def __init__(self, a, b, k, s):
        super().__init__()
        self.conv = torch.nn.Conv2d(a, b, k, s, padding=k // 2)
        self.bn = torch.nn.BatchNorm2d(b)
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class _TorchResNet9(torch.nn.Module):
    def __init__(self):
        super().__init__()
        C, T = _TorchConvBN, torch.nn

        def residual(c):
            return _Residual(T.Sequential(C(c, c, 3, 1), C(c, c, 3, 1)))

        self.model = T.Sequential(
            C(3, 16, 7, 4), C(16, 32, 3, 2), residual(32), C(32, 64, 3, 2), C(64, 128, 3, 2),
            residual(128), T.Flatten(), T.Linear(128, 128), T.ReLU(), T.Linear(128, 10),
        )  # fmt: skip

    def forward(self, x):
        return self.model(x)


class _TorchLM(torch.nn.Module):
    def __init__(self, emb, vocab, hidden, layers):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, emb)
        self.seq_model = torch.nn.LSTM(emb, hidden, layers)
        self.linear = torch.nn.Linear(hidden, vocab)

    def forward(self, x):
        out, h = self.seq_model(self.embedding(x))
        return self.linear(out.reshape(-1, out.shape[-1])), h


def test_example_models_port():
    for training, drop in ((False, 0.1), (True, 0.0)):  # (the frameworks' dropout masks differ)
        _port_both_ways(
            lambda: _torch_mlp_resnet(8, 6, 2, 10, drop),
            lambda: MLPResNet(8, 6, 2, drop_prob=drop),
            _rand(4, 8),
            training,
        )
    _port_both_ways(_TorchResNet9, ResNet9, _rand(2, 3, 32, 32))
    ids = np.random.randint(0, 11, size=(7, 3)).astype(np.int64)
    _port_both_ways(lambda: _TorchLM(4, 11, 5, 2), lambda: LanguageModel(4, 11, 5, 2, "lstm"), ids)


def test_a_torch_safetensors_file_ports_and_comes_back(tmp_path):
    path = str(tmp_path / "lm.safetensors")
    t, m = _TorchLM(4, 11, 5, 2), LanguageModel(4, 11, 5, 2, "lstm")
    safetensors.torch.save_file(t.state_dict(), path)
    interop.load_torch_state_dict(m, path)
    back = _TorchLM(4, 11, 5, 2)
    back.load_state_dict(
        {k: torch.from_numpy(v) for k, v in interop.export_torch_state_dict(m).items()}
    )
    for a, b in zip(back.state_dict().values(), t.state_dict().values()):
        assert torch.equal(a, b)
    bf16 = torch.nn.Linear(3, 2).to(torch.bfloat16)
    linear = nn.Linear(3, 2)
    interop.load_torch_state_dict(linear, bf16.state_dict())  # cast to needle's float32, exactly
    np.testing.assert_array_equal(linear.weight.numpy(), bf16.weight.float().detach().numpy().T)


def test_mismatches_name_the_tensor_and_the_shapes():
    with pytest.raises(
        ValueError,
        match=r"0.weight has shape \(3, 5\), but needle's modules.0.weight \(3, 5\) needs \(5, 3\)",
    ):
        interop.load_torch_state_dict(
            nn.Sequential(nn.Linear(3, 5)), torch.nn.Sequential(torch.nn.Linear(5, 3)).state_dict()
        )
    with pytest.raises(KeyError, match=r"missing from the torch state dict \['bias'\]"):
        interop.load_torch_state_dict(
            nn.Linear(3, 2), torch.nn.Linear(3, 2, bias=False).state_dict()
        )
    with pytest.raises(KeyError, match=r"unknown to the LSTM \['weight_ih_l1'"):
        interop.load_torch_state_dict(nn.LSTM(3, 2), torch.nn.LSTM(3, 2, 2).state_dict())
    partial = nn.LSTM(3, 2)
    interop.load_torch_state_dict(partial, {"bias_ih_l0": np.ones(8)}, strict=False)
    np.testing.assert_array_equal(partial.lstm_cells[0].bias_ih.numpy(), np.ones(8))


def test_a_module_shared_twice_ports_under_both_names():
    shared = nn.Linear(3, 3)
    t = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
    t.append(t[0])  # torch's state dict lists it as 0.* and 2.*
    _port_both_ways(lambda: t, lambda: nn.Sequential(shared, nn.ReLU(), shared), _rand(2, 3))
