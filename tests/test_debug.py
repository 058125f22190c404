"""The divergence finder (ndl.debug.compare, needle train --compare-devices): it names the op
whose output, or whose gradient, one backend primitive made wrong."""

import numpy as np
import pytest
from test_train_cli import write_cifar_batches

import needle as ndl
from needle import debug, nn
from needle.apps import cli


class _Wrong:
    """A backend module whose primitive `name` adds 0.01 to what it writes."""

    def __init__(self, mod, name):
        self._mod, self._name = mod, name

    def __getattr__(self, attr):
        target = getattr(self._mod, attr)
        if attr != self._name:
            return target

        def wrong(*args):
            target(*args)
            out = next(a for a in reversed(args) if isinstance(a, self._mod.Array))
            self._mod.scalar_add(out, 0.01, out)

        return wrong


@pytest.fixture
def broken_cpu():
    """Make one primitive of the cpu device wrong for the test (restored after)."""
    device = ndl.cpu()
    real = device.mod

    def break_(name):
        device.mod = _Wrong(real, name)

    yield break_
    device.mod = real


def _loss_and_backward(model, x):
    loss = model(x).sum()
    loss.backward()
    return loss


def _conv_net():
    np.random.seed(0)
    return nn.Sequential(nn.Conv(3, 4, 3), nn.ReLU(), nn.Conv(4, 2, 3, stride=2), nn.Tanh())


X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


def test_devices_that_agree(capsys):
    model = _conv_net()
    before = [p.numpy().copy() for p in model.parameters()]
    assert debug.compare(_loss_and_backward, model, X) is None
    assert "cpu_numpy, cpu agree on all" in capsys.readouterr().out
    # The model is back on its device with its weights.
    assert all(p.device == ndl.cpu() for p in model.parameters())
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)


def test_a_primitive_wrong_in_forward_is_named_at_its_op(broken_cpu, capsys):
    broken_cpu("ewise_tanh")
    found = debug.compare(_loss_and_backward, _conv_net(), X)
    assert found.phase == "forward" and found.op == "tanh"
    assert found.devices == ("cpu_numpy", "cpu")
    assert "nn_activation" in found.site or "nn_basic" in found.site  # nn.Tanh's forward
    assert "test_debug.py" in found.site  # and the user code that called it
    assert "max abs error 0.01" in found.detail
    assert str(found) in capsys.readouterr().out


def test_a_primitive_wrong_in_backward_is_named_at_the_op_whose_gradient_uses_it(broken_cpu):
    # The cpu's gradient of a conv's weights and bias (its last out: the bias's); the NumPy
    # backend composes it.
    broken_cpu("conv2d_weight_bias_grad")
    found = debug.compare(_loss_and_backward, _conv_net(), X)
    assert found.phase == "backward" and found.op == "Conv"
    assert "gradient for input 2" in found.detail  # the bias
    # The first gradient past the tolerance in backward order: the first conv's bias (the
    # second conv's bias gradients are ~19, where the 0.01 stays within rtol=1e-3).
    assert found.inputs == "(2, 3, 8, 8) float32, (3, 3, 3, 4) float32, (4,) float32"


def test_the_first_divergence_and_tolerances():
    a, b = debug.Run("a"), debug.Run("b")
    for run, shift in ((a, 0.0), (b, 1e-3)):
        for i in range(3):
            out = np.full(4, float(i)) + (shift if i >= 1 else 0.0)
            run.forward.append(debug.OpRecord(f"op{i}", f"site{i}", "(4,) float64", out, None))
    found = debug.first_divergence([a, b])
    assert (found.op, found.site) == ("op1", "site1") and "index (0,)" in found.detail
    assert debug.first_divergence([a, b], rtol=0, atol=1e-2) is None


def test_compare_rejects_unknown_devices():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        debug.compare(lambda x: x, X, devices=("cpu", "tpu"))


def test_train_compare_devices(tmp_path, capsys, broken_cpu):
    write_cifar_batches(tmp_path / "cifar")
    data = ["--model", "resnet9", "--data-dir", str(tmp_path / "cifar"), "--batch-size", "4"]
    argv = ["train", *data, "--compare-devices", "cpu_numpy,cpu", "--max-batches", "1"]
    assert cli.main(argv) == 0
    assert "cpu_numpy, cpu agree on all" in capsys.readouterr().out
    broken_cpu("batch_norm_rows_grad")
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "diverge at the gradient of batch_norm (backward)" in out, out
    with pytest.raises(SystemExit, match="--compare-devices needs two devices"):
        cli.main(argv[:-3] + ["cpu", "--max-batches", "1"])
