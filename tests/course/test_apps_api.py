"""COURSE_API section 10 (the apps helpers: apps/simple_ml.py, mlp_resnet.py, models.py), row by
row, in both modes. Values are checked against NumPy re-computations of the spec's formulas.
"""

import importlib
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle import data

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO, REPO / "apps"):  # as course code does: the homework root and apps/
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import mlp_resnet  # noqa: E402
import models  # noqa: E402
import simple_ml  # noqa: E402

import apps.models  # noqa: E402

NP_MODE = ndl.BACKEND == "np"
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MNIST_DIR = data.find_data_dir("mnist", *MNIST_FILES)


def seeded_state(seed):
    np.random.seed(seed)
    return np.random.get_state()[1].copy()


def assert_seeded(seed):
    np.testing.assert_array_equal(np.random.get_state()[1], seeded_state(seed))


def np_softmax_loss(Z, y):
    Z = Z - Z.max(axis=1, keepdims=True)
    return np.mean(np.log(np.exp(Z).sum(axis=1)) - Z[np.arange(len(y)), y])


# ---------------------------------------------------------------------------- imports


def test_both_import_routes_in_one_process_and_star_imports():
    assert models is not apps.models  # two module objects
    assert models.ResNet9 is apps.models.ResNet9
    for name in ("simple_ml", "mlp_resnet", "models", "apps.models"):
        ns = {}
        exec(f"from {name} import *", ns)
        assert ns["ndl"] is ndl and ns["nn"] is nn and ns["np"] is np, name
    ns = {}
    exec("from simple_ml import *", ns)  # hw4's simple_ml star-imports apps.models
    for name in ("ResNet9", "LanguageModel", "parse_mnist", "softmax_loss", "train_ptb"):
        assert name in ns
    assert simple_ml.device == ndl.cpu()


@pytest.mark.parametrize("module", [models, mlp_resnet, apps.models])
def test_models_and_mlp_resnet_seed_0_on_import(module):
    np.random.seed(123)
    importlib.reload(module)
    assert_seeded(0)


# ---------------------------------------------------------------------------- simple_ml (hw1)


@pytest.mark.skipif(
    MNIST_DIR is None, reason="MNIST t10k files not found (NEEDLE_DATA_DIR, shipped)"
)
def test_parse_mnist():
    X, y = simple_ml.parse_mnist(str(MNIST_DIR / MNIST_FILES[0]), str(MNIST_DIR / MNIST_FILES[1]))
    assert X.shape == (10000, 784) and X.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert X.min() == 0.0 and X.max() == 1.0
    import gzip

    with gzip.open(MNIST_DIR / MNIST_FILES[0]) as f:
        raw = np.frombuffer(f.read()[16:], dtype=np.uint8)
    np.testing.assert_array_equal(X, raw.reshape(10000, 784) / np.float32(255))
    np.testing.assert_array_equal(y[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])


def test_softmax_loss_value_and_gradient():
    rng = np.random.default_rng(0)
    Z, y = rng.standard_normal((6, 4)).astype(np.float32), rng.integers(0, 4, 6)
    Iy = np.eye(4, dtype=np.float32)[y]
    Zt = ndl.Tensor(Z)
    loss = simple_ml.softmax_loss(Zt, ndl.Tensor(Iy))
    assert isinstance(loss, ndl.Tensor)
    np.testing.assert_allclose(loss.numpy(), np_softmax_loss(Z, y), rtol=1e-5)
    loss.backward()
    P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(Zt.grad.numpy(), (P - Iy) / 6, rtol=1e-5, atol=1e-7)


def np_nn_epoch(X, y, W1, W2, lr, batch):
    for i in range(0, len(X), batch):
        x, yb = X[i : i + batch], y[i : i + batch]
        A = np.maximum(x @ W1, 0)
        Z = A @ W2
        P = np.exp(Z - Z.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        G2 = (P - np.eye(W2.shape[1])[yb]) / len(x)
        G1 = (A > 0) * (G2 @ W2.T)
        W1, W2 = W1 - lr * x.T @ G1, W2 - lr * A.T @ G2
    return W1, W2


def test_nn_epoch_matches_numpy_sgd():
    rng = np.random.default_rng(1)
    X = rng.random((25, 6)).astype(np.float32)
    y = rng.integers(0, 3, 25).astype(np.uint8)
    W1 = rng.standard_normal((6, 5)).astype(np.float32) / 3
    W2 = rng.standard_normal((5, 3)).astype(np.float32) / 3
    T1, T2 = ndl.Tensor(W1), ndl.Tensor(W2)
    N1, N2 = simple_ml.nn_epoch(X, y, T1, T2, lr=0.2, batch=10)  # 10, 10, 5 rows, in order
    R1, R2 = np_nn_epoch(X.astype(np.float64), y, W1.astype(np.float64), W2, 0.2, 10)
    assert isinstance(N1, ndl.Tensor) and N1.dtype == "float32"
    np.testing.assert_allclose(N1.numpy(), R1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(N2.numpy(), R2, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(T1.numpy(), W1)  # new tensors; the inputs are untouched


def test_loss_err():
    rng = np.random.default_rng(2)
    h, y = rng.standard_normal((8, 5)).astype(np.float32), rng.integers(0, 5, 8)
    loss, err = simple_ml.loss_err(ndl.Tensor(h), y)
    assert isinstance(loss, (np.ndarray, np.generic)) and isinstance(err, (np.ndarray, np.generic))
    np.testing.assert_allclose(loss, np_softmax_loss(h, y), rtol=1e-5)
    assert err == np.mean(h.argmax(axis=1) != y)


# ---------------------------------------------------------------------------- mlp_resnet (hw2)


def kinds(modules):
    return [type(m).__name__ for m in modules]


def test_residual_block_and_mlp_resnet_structure_and_draw_order():
    block = mlp_resnet.ResidualBlock(8, 4, norm=nn.LayerNorm1d, drop_prob=0.3)
    assert kinds(block.modules) == ["Residual", "ReLU"]
    inner = block.modules[0].fn.modules
    assert kinds(inner) == ["Linear", "LayerNorm1d", "ReLU", "Dropout", "Linear", "LayerNorm1d"]
    assert (inner[0].in_features, inner[0].out_features) == (8, 4) and inner[1].dim == 4
    assert (inner[4].in_features, inner[4].out_features) == (4, 8) and inner[5].dim == 8
    assert inner[3].p == 0.3

    np.random.seed(3)
    net = mlp_resnet.MLPResNet(12, hidden_dim=10, num_blocks=2, num_classes=3)
    assert kinds(net.modules) == ["Linear", "ReLU", "Sequential", "Sequential", "Linear"]
    assert isinstance(net.modules[2].modules[0].fn.modules[1], nn.BatchNorm1d)
    assert net.modules[2].modules[0].fn.modules[0].out_features == 5  # hidden_dim // 2
    np.random.seed(3)  # built in execution order: the same draws, layer by layer
    layers = [nn.Linear(12, 10)]
    for _ in range(2):
        layers += [nn.Linear(10, 5), nn.Linear(5, 10)]
    layers.append(nn.Linear(10, 3))
    got = [p.numpy() for m in walk(net) if isinstance(m, nn.Linear) for p in m.parameters()]
    expected = [p.numpy() for layer in layers for p in layer.parameters()]
    assert len(got) == len(expected) == 12
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def tiny_loader(n=23, batch=10, classes=4):
    rng = np.random.default_rng(4)
    X = rng.random((n, 784)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.uint8)
    return data.DataLoader(data.NDArrayDataset(X, y), batch_size=batch), X, y


def test_epoch_eval_values_seed_and_mode():
    loader, X, y = tiny_loader()
    model = mlp_resnet.MLPResNet(784, hidden_dim=16, num_classes=4)
    model.train()
    np.random.seed(99)
    err, loss = mlp_resnet.epoch(loader, model)
    assert_seeded(4)  # seeds 4; an eval pass draws nothing
    assert model.training is False
    logits = model(ndl.Tensor(X)).numpy()
    assert err == pytest.approx(np.mean(logits.argmax(axis=1) != y))
    assert loss == pytest.approx(np_softmax_loss(logits.astype(np.float64), y), rel=1e-5)


def test_epoch_trains_with_opt():
    loader, _, _ = tiny_loader()
    model = mlp_resnet.MLPResNet(784, hidden_dim=16, num_classes=4)
    before = [p.numpy().copy() for p in model.parameters()]
    opt = ndl.optim.SGD(model.parameters(), lr=0.1)
    err, loss = mlp_resnet.epoch(loader, model, opt)
    assert model.training is True and 0 <= err <= 1 and np.isfinite(loss)
    assert any(not np.array_equal(b, p.numpy()) for b, p in zip(before, model.parameters()))


def write_mnist(folder, prefix, n, rng):
    import gzip
    import struct

    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.tobytes())


def test_train_mnist_returns_last_epoch_and_held_out(tmp_path):
    rng = np.random.default_rng(5)
    write_mnist(tmp_path, "train", 30, rng)
    write_mnist(tmp_path, "t10k", 12, rng)
    out = mlp_resnet.train_mnist(batch_size=10, epochs=2, hidden_dim=8, data_dir=str(tmp_path))
    assert len(out) == 4 and all(np.isfinite(v) for v in out)
    assert 0 <= out[0] <= 1 and 0 <= out[2] <= 1
    # The same run by hand: seed 4, MLPResNet(784, hidden_dim), Adam, shuffled train loader.
    np.random.seed(4)
    model = mlp_resnet.MLPResNet(784, 8)
    opt = ndl.optim.Adam(model.parameters(), lr=0.001, weight_decay=0.001)
    train = data.MNISTDataset(
        str(tmp_path / "train-images-idx3-ubyte.gz"), str(tmp_path / "train-labels-idx1-ubyte.gz")
    )
    test = data.MNISTDataset(
        str(tmp_path / "t10k-images-idx3-ubyte.gz"), str(tmp_path / "t10k-labels-idx1-ubyte.gz")
    )
    for _ in range(2):
        train_err, train_loss = mlp_resnet.epoch(
            data.DataLoader(train, 10, shuffle=True), model, opt
        )
    test_err, test_loss = mlp_resnet.epoch(data.DataLoader(test, 10), model)
    np.testing.assert_allclose(out, (train_err, train_loss, test_err, test_loss), rtol=1e-5)


# ---------------------------------------------------------------------------- models (hw4)


def walk(module):
    """Every module below `module`, in creation (attribute) order, depth first."""
    out = []
    for value in module.__dict__.values():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, nn.Module):
                out.append(v)
                out += walk(v)
    return out


def test_resnet9_layer_order_and_shape():
    model = models.ResNet9()
    convs = [
        (m.in_channels, m.out_channels, m.kernel_size, m.stride)
        for m in walk(model)
        if isinstance(m, nn.Conv)
    ]
    assert convs == [
        (3, 16, 7, 4),
        (16, 32, 3, 2),
        (32, 32, 3, 1),
        (32, 32, 3, 1),
        (32, 64, 3, 2),
        (64, 128, 3, 2),
        (128, 128, 3, 1),
        (128, 128, 3, 1),
    ]
    names = [type(m).__name__ for m in walk(model)]
    compact = [
        n for n in names if n in ("Conv", "BatchNorm2d", "ReLU", "Residual", "Flatten", "Linear")
    ]
    block = ["Conv", "BatchNorm2d", "ReLU"]
    assert compact == (
        block * 2 + ["Residual"] + block * 2 + block * 2 + ["Residual"] + block * 2
    ) + ["Flatten", "Linear", "ReLU", "Linear"]
    linears = [(m.in_features, m.out_features) for m in walk(model) if isinstance(m, nn.Linear)]
    assert linears == [(128, 128), (128, 10)]
    bns = [m.dim for m in walk(model) if isinstance(m, nn.BatchNorm2d)]
    assert bns == [16, 32, 32, 32, 64, 128, 128, 128]
    model.eval()
    out = model(ndl.Tensor(np.random.rand(2, 3, 32, 32).astype(np.float32)))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("seq_model", ["rnn", "lstm", "transformer"])
def test_language_model_order_shapes_and_gradients(seq_model):
    np.random.seed(6)
    lm = models.LanguageModel(6, 11, 5, num_layers=2, seq_model=seq_model, seq_len=8)
    np.random.seed(6)
    np.testing.assert_allclose(lm.parameters()[0].numpy(), np.random.randn(11, 6), rtol=1e-6)
    assert lm.parameters()[0].shape == (11, 6)  # the Embedding first
    assert isinstance(lm.linear, nn.Linear) and lm.parameters()[-1].shape[-1] == 11  # linear last
    assert lm.linear.in_features == (6 if seq_model == "transformer" else 5)
    x = ndl.Tensor(np.random.randint(0, 11, (4, 3)), dtype="int64" if not NP_MODE else None)
    logits, h = lm(x)
    assert logits.shape == (12, 11)
    if seq_model == "lstm":
        assert isinstance(h, tuple) and len(h) == 2 and h[0].shape == (2, 3, 5)
    elif seq_model == "rnn":
        assert h.shape == (2, 3, 5)
    y = ndl.Tensor(np.random.randint(0, 11, 12), dtype="int64" if not NP_MODE else None)
    nn.SoftmaxLoss()(logits, y).backward()
    assert all(p.grad is not None for p in lm.parameters())


# ---------------------------------------------------------------------------- training helpers


class RecordingSGD(ndl.optim.SGD):
    made: typing.ClassVar[list] = []

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.steps = 0
        RecordingSGD.made.append((len(params), kwargs))

    def step(self):
        self.steps += 1
        super().step()


def cifar_like(n=10):
    rng = np.random.default_rng(7)
    X = rng.random((n, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.uint8)
    return data.DataLoader(data.NDArrayDataset(X, y), batch_size=4), X, y


def test_epoch_general_cifar10_eval_values_and_train_mode():
    loader, X, y = cifar_like()
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    np.random.seed(1)
    acc, loss = simple_ml.epoch_general_cifar10(loader, model)
    assert_seeded(4)
    assert model.training is False
    logits = model(ndl.Tensor(X)).numpy()
    assert acc == pytest.approx(np.mean(logits.argmax(axis=1) == y))
    assert loss == pytest.approx(np_softmax_loss(logits.astype(np.float64), y), rel=1e-5)
    opt = RecordingSGD(model.parameters(), lr=0.01)
    simple_ml.epoch_general_cifar10(loader, model, nn.SoftmaxLoss(), opt)
    assert model.training is True and opt.steps == 3


def test_train_and_evaluate_cifar10():
    loader, X, y = cifar_like()
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    RecordingSGD.made.clear()
    acc, loss = simple_ml.train_cifar10(
        model, loader, n_epochs=2, optimizer=RecordingSGD, lr=0.05, weight_decay=0.01
    )
    assert RecordingSGD.made == [(2, {"lr": 0.05, "weight_decay": 0.01})]
    assert 0 <= acc <= 1 and np.isfinite(loss)
    np.random.seed(1)
    acc, loss = simple_ml.evaluate_cifar10(model, loader)
    assert_seeded(4)
    logits = model(ndl.Tensor(X)).numpy()
    assert loss == pytest.approx(np_softmax_loss(logits.astype(np.float64), y), rel=1e-5)


def test_epoch_general_ptb_eval_matches_the_loop_by_hand():
    ids = np.random.default_rng(8).integers(0, 13, 90)
    batches = data.batchify(ids, 3, None, None)  # (30, 3)
    lm = models.LanguageModel(5, 13, 6, seq_model="rnn")
    np.random.seed(2)
    acc, loss = simple_ml.epoch_general_ptb(batches, lm, seq_len=8)
    assert_seeded(4)
    assert lm.training is False
    h, correct, total, count = None, 0, 0.0, 0
    for i in range(0, len(batches) - 1, 8):  # 0, 8, 16, 24 (a short last window)
        x, target = data.get_batch(batches, i, 8)
        logits, h = lm(ndl.Tensor(x.numpy(), dtype="int64" if not NP_MODE else None), h)
        h = h.detach()
        z, t = logits.numpy().astype(np.float64), target.numpy().astype(int)
        correct += np.sum(z.argmax(axis=1) == t)
        total += np_softmax_loss(z, t) * len(t)
        count += len(t)
    assert count == 29 * 3
    assert acc == pytest.approx(correct / count)
    assert loss == pytest.approx(total / count, rel=1e-5)


def test_train_and_evaluate_ptb():
    ids = np.random.default_rng(9).integers(0, 13, 90)
    batches = data.batchify(ids, 3, None, None)
    lm = models.LanguageModel(5, 13, 6, seq_model="rnn")
    RecordingSGD.made.clear()
    acc, loss = simple_ml.train_ptb(
        lm, batches, seq_len=8, n_epochs=2, optimizer=RecordingSGD, lr=0.5, clip=0.25
    )
    ((n_params, kwargs),) = RecordingSGD.made
    assert n_params == len(lm.parameters()) and kwargs == {"lr": 0.5, "weight_decay": 0.0}
    assert lm.training is True and 0 <= acc <= 1 and np.isfinite(loss)
    np.random.seed(3)
    acc, loss = simple_ml.evaluate_ptb(lm, batches, seq_len=8)
    assert_seeded(4)
    assert lm.training is False and np.isfinite(loss)
