"""float16 and bfloat16: conversions bit for bit against NumPy and ml_dtypes, every op of the
op-spec table in both types against torch in float64 on the same (rounded) inputs, autocast's
dtype rules against torch.autocast("cpu") op by op, and GradScaler."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from op_specs import SPECS
from test_ops import elements, torch_elements

import needle as ndl
from needle import amp, nn
from needle.backend_ndarray import ndarray as nd, primitives

HALVES = ("float16", "bfloat16")
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}  # one ulp at 1
TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def holds(device, dtype):
    if dtype not in device.dtypes:
        pytest.skip(f"{device} does not hold {dtype} (it holds {', '.join(device.dtypes)})")


def bits(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint16 if x.dtype.itemsize == 2 else np.uint32)


# ---- conversions --------------------------------------------------------------------------
@pytest.mark.parametrize("half", HALVES)
def test_every_16_bit_pattern_round_trips_through_float32(device, half):
    """All 65,536 patterns (finite, subnormal, infinities, NaNs with payloads): to float32
    exactly as ml_dtypes/NumPy widen them, and back to the same bits (NaNs stay NaN)."""
    holds(device, half)
    patterns = np.arange(1 << 16, dtype=np.uint16).view(primitives.numpy_dtype(half))
    array = nd.array(patterns, dtype=half, device=device)
    assert array.dtype == half
    np.testing.assert_array_equal(bits(array.numpy()), bits(patterns))
    wide = array.astype("float32").numpy()
    expected = patterns.astype(np.float32)
    np.testing.assert_array_equal(bits(wide), bits(expected))
    back = bits(array.astype("float32").astype(half).numpy())
    nan = np.isnan(expected)
    np.testing.assert_array_equal(back[~nan], bits(patterns)[~nan])
    assert (
        np.isnan(patterns[nan].astype(np.float32)).all()
        and np.isnan(array.astype("float32").astype(half).astype("float32").numpy()[nan]).all()
    )


def float32_samples(rng) -> np.ndarray:
    """Random bit patterns over every exponent, exact ties and their neighbours for both
    16-bit types, the overflow and subnormal boundaries, infinities and NaNs."""
    random = rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32)
    mantissas = rng.integers(0, 1 << 16, 4000, dtype=np.uint32)
    exponents = rng.integers(0, 256, 4000, dtype=np.uint32)
    # bfloat16 keeps the top 16 bits: low halves 0x8000 are ties, 0x7fff/0x8001 neighbours.
    ties = [
        (e << 23) | (m << 16) | low
        for e, m in zip(exponents, mantissas)
        for low in (0x7FFF, 0x8000, 0x8001)
    ]
    # float16 keeps 10 of 23 mantissa bits: low 13 bits 0x1000 are ties.
    half_ties = [
        ((e % 40 + 100) << 23) | ((m & 0x3FF) << 13) | low
        for e, m in zip(exponents, mantissas)
        for low in (0x0FFF, 0x1000, 0x1001)
    ]
    values = np.array(
        [65504.0, 65519.99, 65520.0, 6.1e-5, 5.96e-8, 2.98e-8, 3e-8, 1e-45, 3.4e38], np.float32
    )
    specials = np.array([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0], np.float32)
    payload_nans = np.array([0x7F800001, 0x7FC00001, 0xFF812345, 0x7FBFFFFF], np.uint32)
    return np.concatenate(
        [
            random,
            np.array(ties, np.uint32),
            np.array(half_ties, np.uint32),
            bits(values),
            bits(-values),
            bits(specials),
            payload_nans,
        ]
    ).view(np.float32)


@pytest.mark.parametrize("half", HALVES)
def test_float32_rounds_to_16_bits_as_ml_dtypes(device, half, rng):
    """Round to nearest even, overflow to infinity, subnormals, NaN payloads: bit for bit."""
    holds(device, half)
    x = float32_samples(rng)
    got = nd.array(x, dtype="float32", device=device).astype(half).numpy()
    with np.errstate(all="ignore"):
        expected = x.astype(primitives.numpy_dtype(half))
    np.testing.assert_array_equal(bits(got), bits(expected))


# ---- every op in both types ---------------------------------------------------------------
SAMPLES = [(spec, spec.samples[0]) for spec in SPECS]


def relative_close(got, expected, eps, label):
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1.0)
    np.testing.assert_allclose(got, expected, rtol=8 * eps, atol=8 * eps * scale, err_msg=label)


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("spec, sample", SAMPLES, ids=[repr(s) for s, _ in SAMPLES])
def test_op_in_16_bit_floats_against_torch(spec, sample, device, half):
    """The op on 16-bit inputs against torch in float64 on the same values: within a few
    ulps of the 16-bit type, scaled by the output's size (an op computes in float32 and
    rounds once; a composite op rounds once per op). Gradients alike, in the input's type."""
    holds(device, half)
    eps = EPS[half]
    arrays = [a.astype(primitives.numpy_dtype(half)).astype(np.float64) for a in sample.draw(spec)]
    tx = [torch.tensor(a, requires_grad=True) for a in arrays]
    nx = [ndl.Tensor(a, device=device, dtype=half) for a in arrays]
    t_outs = torch_elements(spec.torch(*tx, **sample.kwargs))
    n_outs = elements(spec.call(*nx, **sample.kwargs))
    for i, (n, t) in enumerate(zip(n_outs, t_outs)):
        if t.dtype.is_floating_point:
            assert n.dtype == half, f"output {i}: {n.dtype}"
        relative_close(n.numpy().astype(np.float64), t.detach().numpy(), eps, f"output {i}")
    floating = [
        (n, t) for n, t in zip(n_outs, t_outs) if t.dtype.is_floating_point and t.requires_grad
    ]
    if not floating:
        return
    ws = [np.random.uniform(-1, 1, t.shape) for _, t in floating]
    sum((t * torch.tensor(w)).sum() for (_, t), w in zip(floating, ws)).backward()
    loss = sum(
        (n * ndl.Tensor(w, device=device, dtype=half)).sum() for (n, _), w in zip(floating, ws)
    )
    loss.backward()
    for i, (n, t) in enumerate(zip(nx, tx)):
        if n.grad is None:
            assert t.grad is None or not t.grad.any(), f"input {i} got no gradient"
            continue
        assert n.grad.dtype == half, f"gradient of input {i}: {n.grad.dtype}"
        expected = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
        relative_close(n.grad.numpy().astype(np.float64), expected, eps, f"gradient of input {i}")


# ---- autocast's rules against torch's -------------------------------------------------------
def _cases():
    """(name, needle fn, torch fn, input shapes): ops both frameworks have."""
    lab = np.array([0, 1, 2, 3])

    def n_lab(d):
        return ndl.Tensor(lab, device=d, dtype="int64")

    def conv(d, x, k):
        return ndl.ops.conv(x, k, padding=0, layout="NCHW")

    def linear(d, x, w):
        layer = nn.Linear(8, 8, device=d)
        layer.weight.cached_data = ndl.Tensor(w.numpy(), device=d).cached_data
        return layer(x)

    def batch_norm(d, x):  # float32 weight and bias, as a BatchNorm2d layer has
        ones, zeros = (ndl.Tensor(f(3, np.float32), device=d) for f in (np.ones, np.zeros))
        return ndl.ops.batch_norm(x, ones, zeros)

    return [
        ("matmul", lambda d, x, w: x @ w, lambda x, w: x @ w, [(4, 8), (8, 8)]),
        ("linear", linear, lambda x, w: F.linear(x, w.T), [(4, 8), (8, 8)]),
        (
            "conv2d",
            conv,
            lambda x, k: F.conv2d(x, k.permute(3, 2, 0, 1)),
            [(2, 3, 8, 8), (3, 3, 3, 4)],
        ),
        ("softmax", lambda d, x: ndl.ops.softmax(x, -1), lambda x: F.softmax(x, -1), [(4, 8)]),
        (
            "log_softmax",
            lambda d, x: ndl.ops.log_softmax(x),
            lambda x: F.log_softmax(x, -1),
            [(4, 8)],
        ),
        (
            "layer_norm",
            lambda d, x: ndl.ops.layer_norm(x, (8,)),
            lambda x: F.layer_norm(x, (8,)),
            [(4, 8)],
        ),
        ("sum", lambda d, x: x.sum(), lambda x: x.sum(), [(4, 8)]),
        ("exp", lambda d, x: ndl.ops.exp(x), lambda x: x.exp(), [(4, 8)]),
        ("relu", lambda d, x: ndl.ops.relu(x), lambda x: F.relu(x), [(4, 8)]),
        ("gelu", lambda d, x: ndl.ops.gelu(x), lambda x: F.gelu(x), [(4, 8)]),
        ("add", lambda d, x, y: x + y, lambda x, y: x + y, [(4, 8), (4, 8)]),
        (
            "max_pool2d",
            lambda d, x: ndl.ops.max_pool2d(x, 2),
            lambda x: F.max_pool2d(x, 2),
            [(2, 3, 8, 8)],
        ),
        (
            "avg_pool2d",
            lambda d, x: ndl.ops.avg_pool2d(x, 2),
            lambda x: F.avg_pool2d(x, 2),
            [(2, 3, 8, 8)],
        ),
        (
            "batch_norm",
            batch_norm,
            lambda x: F.batch_norm(x, None, None, training=True),
            [(2, 3, 8, 8)],
        ),
        (
            "cross_entropy",
            lambda d, x: ndl.ops.cross_entropy(x, n_lab(d)),
            lambda x: F.cross_entropy(x, torch.tensor(lab)),
            [(4, 8)],
        ),
        (
            "mse_loss",
            lambda d, x, y: ndl.ops.mse_loss(x, y),
            lambda x, y: F.mse_loss(x, y),
            [(4, 8), (4, 8)],
        ),
        (
            "l1_loss",
            lambda d, x, y: ndl.ops.l1_loss(x, y),
            lambda x, y: F.l1_loss(x, y),
            [(4, 8), (4, 8)],
        ),
        (
            "bce_with_logits",
            lambda d, x, y: ndl.ops.binary_cross_entropy_with_logits(x, y),
            lambda x, y: F.binary_cross_entropy_with_logits(x, y),
            [(4, 8), (4, 8)],
        ),
        (
            "logsumexp",
            lambda d, x: ndl.ops.logsumexp(x, (1,)),
            lambda x: torch.logsumexp(x, 1),
            [(4, 8)],
        ),
        ("prod", lambda d, x: ndl.ops.prod(x), lambda x: x.prod(), [(4, 8)]),
        (
            "attention",
            lambda d, q, k, v: ndl.ops.scaled_dot_product_attention(q, k, v),
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
            [(1, 4, 8)] * 3,
        ),
    ]


CASES = _cases()


@pytest.mark.parametrize("low", HALVES)
@pytest.mark.parametrize("inputs", ["float32", "low"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_autocast_output_dtype_matches_torch(case, inputs, low, device):
    name, needle_fn, torch_fn, shapes = case
    holds(device, low)
    in_dtype = low if inputs == "low" else "float32"
    arrays = [np.random.uniform(-1, 1, s).astype(np.float32) for s in shapes]
    with torch.autocast("cpu", dtype=TORCH[low]):
        expected = torch_fn(*[torch.tensor(a).to(TORCH[in_dtype]) for a in arrays]).dtype
    with ndl.autocast(dtype=low):
        got = needle_fn(device, *[ndl.Tensor(a, device=device, dtype=in_dtype) for a in arrays])
    assert got.dtype == str(expected).replace("torch.", ""), (name, got.dtype, expected)


# ---- GradScaler against torch.amp.GradScaler -------------------------------------------------
def test_grad_scaler_skips_and_rescales_as_torch(device):
    """The same scripted run (steps 2 and 5 get an infinite gradient) in both: the same scale
    after every update, the same weights (skipped steps leave them), the skips counted."""
    x = np.array([0.5, -1.0, 2.0], np.float32)
    t_w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    t_opt = torch.optim.SGD([t_w], lr=0.1)
    t_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    n_w = ndl.nn.Parameter(ndl.Tensor(np.array([1.0, 2.0, 3.0], np.float32), device=device))
    n_opt = ndl.optim.SGD([n_w], lr=0.1)
    n_scaler = amp.GradScaler(init_scale=1024.0, growth_interval=2)
    for step in range(7):
        t_opt.zero_grad()
        t_scaler.scale((t_w * torch.tensor(x)).sum()).backward()
        n_opt.reset_grad()
        n_scaler.scale((n_w * ndl.Tensor(x, device=device)).sum()).backward()
        if step in (2, 5):
            t_w.grad[1] = float("inf")
            n_w.grad = ndl.Tensor(np.array([0.0, np.inf, 0.0], np.float32), device=device)
        stepped = n_scaler.step(n_opt)
        t_scaler.step(t_opt)
        n_scaler.update()
        t_scaler.update()
        assert stepped == (step not in (2, 5))
        assert n_scaler.get_scale() == t_scaler.get_scale(), step
        np.testing.assert_allclose(n_w.numpy(), t_w.detach().numpy(), rtol=1e-6)
    assert n_scaler.skipped == 2
    restored = amp.GradScaler()
    restored.load_state_dict(n_scaler.state_dict())
    assert restored.get_scale() == n_scaler.get_scale() and restored.skipped == 2


def test_grad_scaler_checks_its_factors():
    with pytest.raises(ValueError, match="backoff_factor"):
        amp.GradScaler(backoff_factor=2.0)
    with pytest.raises(ValueError, match="autocast: dtype"):
        ndl.autocast(dtype="float32")


@pytest.mark.parametrize("low", HALVES)
@pytest.mark.parametrize("create_graph", [False, True])
def test_linear_under_autocast_equals_its_composite_bit_for_bit(low, create_graph, device):
    """nn.Linear is one op (ops.linear) that casts its inputs itself: its output and
    gradients are those of the Tensor ops it replaced (casts, x @ W, + b) bit for bit, in the
    NDArray gradient and in the differentiable one (create_graph). One exception: in the NDArray
    gradient, a device with matmul_strided_wide keeps the weight gradient's float32 sums
    unrounded, which rounded to the 16-bit dtype are the composite's."""
    holds(device, low)
    rng = np.random.default_rng(0)
    layer = nn.Linear(12, 7, device=device)
    # (2-D: with leading axes the composite's weight gradient summed rounded per-batch
    # products, which the one product over all rows no longer does)
    x = ndl.Tensor(rng.standard_normal((10, 12)).astype(np.float32), device=device)
    g = ndl.Tensor(rng.standard_normal((10, 7)), device=device, dtype=low)

    def composite(x, w, b):
        return x @ w + b.astype(low).broadcast_to((10, 7))

    results = []
    for forward in (lambda x, w, b: layer(x), composite):
        x.grad = layer.weight.grad = layer.bias.grad = None
        leaves = [x, layer.weight, layer.bias]
        for leaf in leaves:
            leaf.requires_grad = True
        with ndl.autocast(dtype=low):
            y = forward(*leaves)
        y.backward(g, create_graph=create_graph)
        got = [y] + [leaf.grad for leaf in leaves]
        if create_graph:  # the gradients' own gradients, through the differentiable path
            (sum((t.astype("float32") ** 2).sum() for t in got[1:])).backward()
            got += [leaf.grad for leaf in leaves]
        results.append([bits(t.numpy()) for t in got])
    assert results[0][0].dtype == np.uint16  # the output is in the 16-bit dtype
    if not create_graph and x.device.has("matmul_strided_wide"):
        wide = results[0].pop(2).view(np.float32)
        rounded = wide.astype(primitives.numpy_dtype(low)).astype(np.float32)
        np.testing.assert_array_equal(bits(rounded), results[1].pop(2))
        assert not np.array_equal(wide, rounded)  # (the sums themselves, not rounded)
    for fused, reference in zip(*results, strict=True):
        np.testing.assert_array_equal(fused, reference)


@pytest.mark.parametrize("low", HALVES)
@pytest.mark.parametrize("create_graph", [False, True])
def test_conv_under_autocast_equals_its_composite_bit_for_bit(low, create_graph, device):
    """Where the device convolves 16-bit rows, nn.Conv under autocast is one Conv node that
    casts its input and weight itself, keeps the casts, and casts its gradients back: its
    gradients (and their own gradients, create_graph) are those of the AsType nodes and Conv
    it replaced, bit for bit. Its float32 bias is not cast: the device adds it to the rounded
    conv in float32 (conv2d_bias), rounded once more, and sums its gradient in float32 with
    the weights' (conv2d_weight_bias_grad); without create_graph the weights' gradient is the
    row's float32 sums, which the composite rounds to `low` and back. Elsewhere it is those
    nodes."""
    holds(device, low)
    rng = np.random.default_rng(1)
    layer = nn.Conv(3, 8, 3, device=device)
    x = ndl.Tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32), device=device)
    g = ndl.Tensor(rng.standard_normal((2, 8, 6, 6)), device=device, dtype=low)

    def composite(x, w, b):  # Conv made directly: autocast's AsType nodes cast its inputs
        return ndl.ops.Conv(1, 1, "NCHW")(x, w, b)

    results = []
    for forward in (lambda x, w, b: layer(x), composite):
        leaves = [x, layer.weight, layer.bias]
        for leaf in leaves:
            leaf.grad, leaf.requires_grad = None, True
        with ndl.autocast(dtype=low):
            y = forward(*leaves)
        results.append([y.op, y.inputs])
        y.backward(g, create_graph=create_graph)
        got = [y] + [leaf.grad for leaf in leaves]
        assert [t.dtype for t in got] == [low, "float32", "float32", "float32"]
        if create_graph:  # the gradients' own gradients, through the differentiable path
            (sum((t.astype("float32") ** 2).sum() for t in got[1:])).backward()
            got += [leaf.grad for leaf in leaves]
        results[-1] += [bits(t.numpy()) for t in got]
    (op, inputs, *fused), (_, composite_inputs, *reference) = results
    folded = nd.conv2d_native_for(x.device, low)
    leaves = (x, layer.weight, layer.bias)
    assert (op.low == low and all(a is b for a, b in zip(inputs, leaves, strict=True))) == folded
    assert all(type(t.op).__name__ == "AsType" for t in composite_inputs)
    if nd.conv2d_takes_bias(x.astype(low).cached_data, layer.bias.cached_data):
        with ndl.no_grad():
            plain = ndl.ops.Conv(1, 1, "NCHW")(x.astype(low), layer.weight.astype(low)).numpy()
        bias = layer.bias.numpy().reshape(1, -1, 1, 1)
        reference[0] = bits((plain.astype(np.float32) + bias).astype(plain.dtype))
        if not create_graph:  # (with create_graph, the Tensor ops' sum, rounded to low)
            d_bias = g.numpy().astype(np.float64).sum(axis=(0, 2, 3))
            np.testing.assert_allclose(fused.pop(3).view(np.float32), d_bias, rtol=1e-6)
            reference.pop(3)
    if folded and not create_graph:  # the weights' gradient: the float32 sums, not rounded
        wide = fused.pop(2).view(np.float32)
        rounded = wide.astype(primitives.numpy_dtype(low)).astype(np.float32)
        np.testing.assert_array_equal(bits(rounded), reference.pop(2))
        assert not np.array_equal(wide, rounded)
    for a, b in zip(fused, reference, strict=True):
        np.testing.assert_array_equal(a, b)


# ---- training under autocast ----------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trainer_precision_keeps_float32_master_weights(precision, device):
    """A few updates of an MLP under --precision: the parameters and their gradients stay
    float32, the logits are the 16-bit type, and the losses follow the float32 run's."""
    from needle.apps.trainer import PRECISIONS, Trainer

    holds(device, PRECISIONS[precision])
    rng = np.random.default_rng(0)
    batch = (
        ndl.Tensor(rng.standard_normal((16, 20)).astype(np.float32), device=device),
        ndl.Tensor(rng.integers(0, 5, 16), device=device, dtype="int64"),
    )
    data = [batch] * 6  # one batch again: its loss must fall
    losses = {}
    for p in ("fp32", precision):
        np.random.seed(0)
        model = nn.Sequential(
            nn.Linear(20, 32, device=device), nn.ReLU(), nn.Linear(32, 5, device=device)
        )
        trainer = Trainer(
            model, nn.SoftmaxLoss(), ndl.optim.SGD(model.parameters(), lr=0.1), precision=p
        )
        losses[p] = [float(trainer.train_step(x, y)[1].numpy()) for x, y in data]
        logits = trainer.forward(*data[0])[0]
        assert logits.dtype == (PRECISIONS[p] or "float32")
        assert all(q.dtype == "float32" and q.grad.dtype == "float32" for q in model.parameters())
    np.testing.assert_allclose(losses[precision], losses["fp32"], rtol=0.03)
    assert losses[precision][-1] < losses[precision][0]


def test_fp16_checkpoint_keeps_the_loss_scale(tmp_path):
    """A resumed fp16 run starts from the saved loss scale and skipped-step count, not from
    GradScaler's initial 2^16."""
    from needle.apps.trainer import Trainer

    def trainer():
        model = nn.Linear(3, 2)
        return Trainer(model, nn.SoftmaxLoss(), ndl.optim.SGD(model.parameters()), precision="fp16")

    saved = trainer()
    saved.scaler.load_state_dict({**saved.scaler.state_dict(), "scale": 512.0, "skipped": 3})
    saved.save(str(tmp_path / "ckpt.npz"), meta={"epoch": 2})
    resumed = trainer()
    assert resumed.load(str(tmp_path / "ckpt.npz"))["epoch"] == 2
    assert resumed.scaler.state_dict() == saved.scaler.state_dict() != trainer().scaler.state_dict()


def test_bench_train_step_under_autocast(device):
    """bench_train.py --precision bf16: needle's step (and torch's) under autocast."""
    from needle.apps.bench.workloads import TrainSpec, needle_train_step, torch_train_step

    holds(device, "bfloat16")
    spec = TrainSpec("mlp", (("sizes", (16, 8, 4)), ("batch", 4), ("precision", "bf16")))
    assert spec.autocast == "bfloat16" and spec.title.endswith("bf16 autocast")
    needle_train_step(spec, device)()
    torch_train_step(spec, "cpu")()


def test_bench_train_fp32_backend_times_the_rows_float32_step(monkeypatch):
    """bench_train's "needle cpu fp32" column: a 16-bit row's step without autocast, built in
    the same case (so timed in the same rounds as the row's own)."""
    from needle.apps.bench import workloads
    from needle.apps.bench.harness import Backend

    spec = workloads.TrainSpec("mlp", (("sizes", (16, 8, 4)), ("batch", 4), ("precision", "bf16")))
    assert spec.in_float32() == workloads.TrainSpec("mlp", spec.params[:2])
    assert spec.in_float32().autocast is None and "autocast" not in spec.in_float32().title
    built = []
    monkeypatch.setattr(workloads, "needle_train_step", lambda s, d, compiled: built.append(s))
    (case,) = workloads.train_workload([spec], repeats=1, warmup=0, min_time=0).cases
    for label in (None, f"needle cpu {workloads.FLOAT32}"):
        case.build(Backend("needle", "cpu", label=label))
    assert built == [spec, spec.in_float32()]


def test_dtype_shorthands(device):
    holds(device, "float16")
    t = ndl.Tensor(np.array([1.0, 2.5]), device=device)
    assert (t.half().dtype, t.float().dtype) == ("float16", "float32")
    if "bfloat16" in device.dtypes:
        assert t.bfloat16().dtype == "bfloat16"


# ---- rows a backend computes in 16 bits itself (HALF_ROWS) ---------------------------------
class _HalfRowsBackend:
    """The CPU backend claiming `rows` as its HALF_ROWS, each run by the contract of
    primitives.half_rows (astype to float32, the float32 row, astype back), every call
    counted: NDArray and the ops must call these rows with 16-bit arrays, and convert
    nothing themselves for them."""

    def __init__(self, rows):
        self._mod, self.HALF_ROWS, self.calls = ndl.cpu().mod, tuple(rows), {}

    def __getattr__(self, name):
        target = getattr(self._mod, name)
        if not callable(target) or name == "Array":
            return target
        params = primitives.TABLE[name].params if name in primitives.TABLE else ()

        def counted(*args):
            halves = {a.dtype for a in args if type(a) is self._mod.Array} & set(HALVES)
            self.calls[name, bool(halves)] = self.calls.get((name, bool(halves)), 0) + 1
            if not halves or name not in self.HALF_ROWS:
                return target(*args)
            wide = [
                self._widened(a) if p.kind in ("array", "out") else a for p, a in zip(params, args)
            ]
            target(*wide)
            for p, a, w in zip(params, args, wide):
                if p.kind == "out" and a.dtype != w.dtype:
                    self._mod.astype(w, a)

        return counted

    def _widened(self, a):
        if a.dtype not in HALVES:
            return a
        wide = self._mod.Array(a.size, "float32")
        self._mod.astype(a, wide)
        return wide


@pytest.mark.parametrize("half", HALVES)
def test_rows_a_backend_computes_in_16_bits_get_16_bit_arrays(half):
    """A ResNet-style block (conv, bias, batch norm, relu, residual add, sum) forward and
    backward under autocast on a backend that lists its rows in HALF_ROWS: those rows get the
    16-bit arrays and nothing converts for them (the astype calls left are autocast's casts
    and the adjoints of those casts), with results bit for bit those of the CPU backend."""
    rows = ["conv2d", "conv2d_input_grad", "conv2d_weight_grad", "ewise_add", "ewise_mul",
            "ewise_relu", "ewise_sign", "ewise_broadcast_binary", "reduce_sum", "reduce_sum_axis",
            "scalar_mul", "scalar_add", "ewise_ge", "scalar_ge", "batch_norm_rows",
            "batch_norm_rows_grad"]  # fmt: skip
    fake = _HalfRowsBackend(rows)
    device = nd.BackendDevice("cpu_half_rows", mod=fake)
    assert device.half_rows == frozenset(rows)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 6, 6, 4)), rng.standard_normal((3, 3, 4, 4)) / 6
    b = rng.standard_normal(4)

    def block(dev):
        xt, wt, bt, gt = (
            ndl.Tensor(v, device=dev, dtype="float32", requires_grad=True) for v in (x, w, b, b + 1)
        )
        with ndl.autocast(dtype=half):
            z = ndl.ops.conv(xt, wt, padding=1) + ndl.ops.astype(bt, half).reshape((1, 1, 1, 4))
            z = ndl.ops.batch_norm(z, gt, bt, axis=3)  # float32 weights on 16-bit features
            y = ndl.ops.relu(z) + ndl.ops.astype(xt, half)
        y.sum().backward()
        return [bits(t.numpy()) for t in (y, xt.grad, wt.grad, bt.grad, gt.grad)]

    # The weights' gradient is the conv row's float32 sums, unrounded: bfloat16's vdpbf16ps
    # kernel (where the CPU has one) adds its pairs in another order than the float32 row the
    # fake runs on the widened arrays, so those sums agree to float32's rounding, not bits.
    paired = half == "bfloat16" and ndl.cpu().mod.__gemm_bf16__ == "avx512_bf16"
    for i, (got, want) in enumerate(zip(block(device), block(ndl.cpu()))):
        if i == 2 and paired:
            got, want = got.view(np.float32), want.view(np.float32)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)
    computed = {name for (name, halves) in fake.calls if halves and name in rows}
    assert {"conv2d", "conv2d_input_grad", "conv2d_weight_grad", "ewise_relu"} <= computed
    assert {"batch_norm_rows", "batch_norm_rows_grad"} <= computed
    casts = fake.calls.get(("astype", True), 0)
    # x twice (autocast's cast for the conv, the block's own), w and b once, and the adjoints
    # of the casts of x and b back to float32 (w's gradient is the conv row's float32 sums):
    # nothing else.
    assert casts == 7, fake.calls
