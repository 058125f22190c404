"""ndl.webgpu(): what the runtime promises beyond the conformance suite (tests/backends/).

- `import needle` and the cpu device never import wgpu; without wgpu or a matching adapter
  the device is disabled with a reason (subprocesses, so these run without wgpu too).
- Training on webgpu matches the cpu device step by step (an MLP-ResNet, SGD and Adam).
- A steady training loop neither allocates nor grows memory, and submits once per readback.
- Errors name the device, the dtype or the kernel; the pool reuses buffers; dispatches wait
  for a sync point; host writes are ordered after the recorded dispatches that use the buffer.
- uint8 and bool round-trip bit-exactly and uint8 arithmetic wraps as NumPy's.
- float16 (with shader-f16) reads back bit-exactly from any view; without it, and bfloat16
  always, NDArray raises UnsupportedDtypeError naming the dtypes the device holds.

Everything that needs the device skips with ``ndl.webgpu().reason`` where it is disabled. On
lavapipe (Mesa's CPU Vulkan driver) run with XDG_RUNTIME_DIR set and
VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json.
"""

import gc
import json
import os
import re
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

import needle as ndl
from needle import nn, optim
from needle.apps.models import MLPResNet
from needle.backend_ndarray.primitives import UnsupportedDtypeError

WEBGPU = ndl.webgpu()
needs_webgpu = pytest.mark.skipif(
    not WEBGPU.enabled(), reason=f"webgpu is disabled here: {WEBGPU.reason}"
)

# A meta-path finder that makes wgpu unimportable, installed before needle is imported.
BLOCK_WGPU = """
import sys

class NoWgpu:
    def find_spec(self, name, path=None, target=None):
        if name == "wgpu" or name.startswith("wgpu."):
            raise ImportError("wgpu is blocked by this test")
        return None

sys.meta_path.insert(0, NoWgpu())
"""


def run_python(code: str, **env: str) -> dict:
    """Run `code` in a fresh interpreter (with `env` added); it prints one JSON line last."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- 1. imports ---------------------------------------------------------------------------
def test_import_and_cpu_do_not_import_wgpu():
    out = run_python(
        """
import json, sys
import needle as ndl
after_import = "wgpu" in sys.modules
device = ndl.webgpu()  # the device object alone resolves nothing
names = [d.name for d in ndl.all_devices()]
x = ndl.Tensor([[1.0, 2.0], [3.0, 4.0]], device=ndl.cpu(), requires_grad=True)
loss = (x @ x).sum()
loss.backward()
print(json.dumps(dict(
    after_import=after_import,
    after_cpu="wgpu" in sys.modules,
    names=names,
    grad=x.grad.numpy().tolist(),
    webgpu_module_loaded="needle.backend_ndarray.ndarray_backend_webgpu" in sys.modules,
)))
"""
    )
    assert out["after_import"] is False
    assert out["after_cpu"] is False
    assert out["webgpu_module_loaded"] is False
    assert "webgpu" in out["names"]
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    # d/dx sum(x @ x) = ones @ x.T + x.T @ ones
    np.testing.assert_allclose(out["grad"], np.ones((2, 2)) @ x.T + x.T @ np.ones((2, 2)))


# ---- 2. disabled with a reason; the adapter by name -----------------------------------------
def test_unknown_adapter_disables_with_the_variable_and_the_adapters_found():
    out = run_python(
        """
import json
import needle as ndl
d = ndl.webgpu()
enabled, reason = d.enabled(), d.reason
try:
    import wgpu
    adapters = [a.info["device"] for a in wgpu.gpu.enumerate_adapters_sync()]
except ImportError:
    adapters = None
print(json.dumps(dict(enabled=enabled, reason=reason, adapters=adapters)))
""",
        NEEDLE_WEBGPU_ADAPTER="no-such-adapter",
    )
    assert out["enabled"] is False
    reason = out["reason"]
    if out["adapters"] is None:  # no wgpu here: the reason is the install hint
        assert "needle[webgpu]" in reason
        return
    assert "NEEDLE_WEBGPU_ADAPTER" in reason and "no-such-adapter" in reason
    for name in out["adapters"]:
        assert name in reason
    if not out["adapters"]:
        assert "none" in reason


def test_without_wgpu_the_reason_names_the_extra():
    out = run_python(
        BLOCK_WGPU
        + """
import json
import needle as ndl
d = ndl.webgpu()
enabled, reason = d.enabled(), d.reason
y = (ndl.Tensor([1.0, 2.0], device=ndl.cpu()) * 3).numpy().tolist()  # cpu still works
print(json.dumps(dict(enabled=enabled, reason=reason, y=y, wgpu="wgpu" in sys.modules)))
"""
    )
    assert out["enabled"] is False
    assert "needle[webgpu]" in out["reason"]
    assert "wgpu" in out["reason"]
    assert out["wgpu"] is False
    np.testing.assert_array_equal(out["y"], np.array([1.0, 2.0]) * 3)


SELECTED = """
import json
import numpy as np
import needle as ndl
d = ndl.webgpu()
out = dict(enabled=d.enabled(), reason=d.reason)
if d.enabled():
    out["adapter"] = d.mod.capabilities()["adapter"]
    x = np.arange(6, dtype=np.float32)
    out["y"] = (ndl.NDArray(x, device=d) * 2 + 1).numpy().tolist()
print(json.dumps(out))
"""


@needs_webgpu
def test_adapter_selected_by_a_substring_of_its_name():
    # The device part of the name ("llvmpipe" on lavapipe), in another case.
    wanted = WEBGPU.mod.capabilities()["adapter"].split(" (")[0].split()[0]
    out = run_python(SELECTED, NEEDLE_WEBGPU_ADAPTER=wanted.upper())
    assert out["enabled"], out["reason"]
    assert wanted.lower() in out["adapter"].lower()
    np.testing.assert_array_equal(out["y"], np.arange(6, dtype=np.float32) * 2 + 1)


@needs_webgpu
def test_adapter_selected_by_the_name_needle_reports():
    name = WEBGPU.mod.capabilities()["adapter"]
    out = run_python(SELECTED, NEEDLE_WEBGPU_ADAPTER=name)
    assert out["enabled"], out["reason"]
    assert out["adapter"] == name


# ---- 3. training matches the cpu device ---------------------------------------------------
def make_optimizer(name, params):
    if name == "sgd":
        return optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    return optim.Adam(params, lr=1e-3, weight_decay=1e-3)


@needs_webgpu
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_mlp_resnet_training_matches_cpu(opt_name):
    def build(device, seed):
        np.random.seed(seed)
        return MLPResNet(
            784, hidden_dim=32, num_blocks=2, num_classes=10, drop_prob=0.0, device=device
        )

    cpu_model = build(ndl.cpu(), 0)
    gpu_model = build(WEBGPU, 1)
    start = cpu_model.state_dict()
    assert any(
        not np.array_equal(a, b) for a, b in zip(start.values(), gpu_model.state_dict().values())
    )
    gpu_model.load_state_dict(start)  # the same initial weights (and BatchNorm statistics)
    for a, b in zip(start.values(), gpu_model.state_dict().values()):
        np.testing.assert_array_equal(a, b)

    runs = [
        (cpu_model, make_optimizer(opt_name, cpu_model.parameters()), ndl.cpu()),
        (gpu_model, make_optimizer(opt_name, gpu_model.parameters()), WEBGPU),
    ]
    rng = np.random.default_rng(0)
    losses = {"cpu": [], "webgpu": []}
    for _ in range(20):
        x = rng.random((32, 784), dtype=np.float32)
        y = rng.integers(0, 10, size=32)
        for model, opt, device in runs:
            opt.reset_grad()
            loss = nn.SoftmaxLoss()(model(ndl.Tensor(x, device=device)), y)
            loss.backward()
            opt.step()
            losses[device.name].append(loss.numpy())
    np.testing.assert_allclose(losses["webgpu"], losses["cpu"], rtol=1e-4)

    final_cpu, final_gpu = cpu_model.state_dict(), gpu_model.state_dict()
    assert list(final_cpu) == list(final_gpu)
    for name in final_cpu:
        np.testing.assert_allclose(
            final_gpu[name], final_cpu[name], rtol=1e-4, atol=1e-4, err_msg=name
        )
    # The comparison means something: training moved the weights well past the tolerance.
    moved = max(np.abs(final_cpu[k] - start[k]).max() for k in start)
    assert moved > 1e-2


# ---- 4 and 5. a steady training loop ------------------------------------------------------
def mlp(device):
    np.random.seed(0)
    return nn.Sequential(
        nn.Linear(32, 64, device=device), nn.ReLU(), nn.Linear(64, 10, device=device)
    )


def mlp_batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=(16, 32)).astype("float32"), rng.integers(0, 10, size=16))
        for _ in range(n)
    ]


def softmax_step(model, opt, x, y):
    """One step; the labels stay on the host (a device tensor would be read back by
    SoftmaxLoss); returns the loss read with .numpy()."""
    opt.reset_grad()
    loss = nn.SoftmaxLoss()(model(ndl.Tensor(x, device=WEBGPU)), y)
    loss.backward()
    opt.step()
    return loss.numpy()


def mse_step(model, opt, x, y):
    """One step with a loss made of elementwise ops and a sum (no readback of its own); the
    target is uploaded after the forward's dispatches (into an idle buffer: no submission)."""
    opt.reset_grad()
    outputs = model(ndl.Tensor(x, device=WEBGPU))
    target = ndl.Tensor(np.eye(10, dtype=np.float32)[y], device=WEBGPU)
    diff = outputs - target
    loss = (diff * diff).sum() / x.shape[0]
    loss.backward()
    opt.step()
    return loss.numpy()


@needs_webgpu
def test_memory_and_allocations_flat_over_500_steps():
    # An MLP-ResNet (32 -> hidden 32, 2 residual blocks with BatchNorm) for 500 steps, measured
    # on lavapipe (19 s): after its first steps, every step ends with 68 live buffers (54,272
    # bytes) and 74 cached (82,944 bytes), peak 130,048, 1 submission and 209 dispatches, and
    # allocates nothing (142 buffers in all). The strongest true statement: every field is
    # exactly equal at the end of every step after a warm-up of 10.
    mod = WEBGPU.mod
    np.random.seed(0)
    model = MLPResNet(32, hidden_dim=32, num_blocks=2, num_classes=10, drop_prob=0.0, device=WEBGPU)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = mlp_batches(8)
    gc.collect()
    history, losses = [], []
    for step in range(500):
        x, y = batches[step % len(batches)]
        losses.append(softmax_step(model, opt, x, y))
        history.append((mod.memory_stats(), mod.stats()["allocations"], mod.stats()["pipelines"]))
    warm_memory, warm_allocations, warm_pipelines = history[9]  # after 10 steps
    for step in range(10, 500):
        memory, allocations, pipelines = history[step]
        assert memory == warm_memory, f"step {step}: {memory} != {warm_memory}"
        assert allocations == warm_allocations, f"step {step} allocated"
        assert pipelines == warm_pipelines, f"step {step} compiled a pipeline"
    assert warm_memory["live_buffers"] > 0 and warm_memory["cached_buffers"] > 0
    assert warm_memory["peak_bytes"] >= warm_memory["live_bytes"]
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8])  # and it trained


def count_readbacks(monkeypatch, runtime):
    """Counts runtime.read calls (each .numpy() and synchronize() is one)."""
    calls = [0]
    read = runtime.read

    def counted(*args, **kwargs):
        calls[0] += 1
        return read(*args, **kwargs)

    monkeypatch.setattr(runtime, "read", counted)
    return calls


def step_deltas(step, monkeypatch, steps=3, warmup=3):
    """(dispatches, submissions, readbacks) of each of `steps` steady-state steps."""
    mod = WEBGPU.mod
    model = mlp(WEBGPU)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = mlp_batches(warmup + steps)
    for x, y in batches[:warmup]:
        step(model, opt, x, y)
    reads = count_readbacks(monkeypatch, mod.runtime)
    deltas = []
    for x, y in batches[warmup:]:
        before, reads[0] = mod.stats(), 0
        step(model, opt, x, y)
        after = mod.stats()
        assert after["allocations"] == before["allocations"]
        deltas.append(
            (
                after["dispatches"] - before["dispatches"],
                after["submissions"] - before["submissions"],
                reads[0],
            )
        )
    return deltas


@needs_webgpu
def test_one_submission_per_training_step(monkeypatch):
    # Linear(32, 64)-ReLU-Linear(64, 10), an MSE loss, SGD with momentum, batch 16: 36
    # dispatches and 1 submission (the loss's .numpy()) a step, measured on lavapipe.
    deltas = step_deltas(mse_step, monkeypatch)
    print("MSE step (dispatches, submissions, readbacks):", deltas)
    assert len(set(deltas)) == 1, deltas  # every steady step records the same work
    dispatches, submissions, readbacks = deltas[0]
    assert readbacks == 1
    assert submissions == 1
    assert dispatches > 10


@needs_webgpu
def test_softmax_step_submits_only_at_readbacks(monkeypatch):
    # The same MLP with SoftmaxLoss: 45 dispatches and 1 submission a step on lavapipe, the
    # loss's .numpy() (the loss's backward keeps its scale on the device: see the next test).
    deltas = step_deltas(softmax_step, monkeypatch)
    print("SoftmaxLoss step (dispatches, submissions, readbacks):", deltas)
    assert len(set(deltas)) == 1, deltas
    dispatches, submissions, readbacks = deltas[0]
    assert submissions == readbacks
    assert dispatches > 10


@needs_webgpu
def test_softmax_step_submits_once(monkeypatch):
    deltas = step_deltas(softmax_step, monkeypatch)
    assert deltas[0][1:] == (1, 1)


# ---- 6. errors name what failed -------------------------------------------------------------
@needs_webgpu
def test_too_large_an_array_is_a_memory_error_naming_webgpu():
    mod = WEBGPU.mod
    limit = mod.runtime.max_buffer_bytes
    before = mod.memory_stats(), mod.stats()["allocations"]
    sizes = [limit // 4 + 1]  # one float32 past the largest buffer
    if limit < 4 * 2**30:
        sizes.append(2**30)  # 4 GiB
    for n in sizes:
        with pytest.raises(MemoryError, match="webgpu") as error:
            WEBGPU.empty((n,))
        assert str(limit) in str(error.value)
    assert (mod.memory_stats(), mod.stats()["allocations"]) == before  # nothing leaked


LOSE_THE_DEVICE = """
import json
import numpy as np
import needle as ndl
d = ndl.webgpu()
a = ndl.NDArray(np.ones(4, dtype=np.float32), device=d)
(a + a).numpy()  # ewise_add compiled and run
d.mod.runtime.device.destroy()  # as a driver reset or an unplugged GPU would
out = {}
for name, step in [
    ("cached", lambda: (a + a).numpy()),  # a compiled kernel: fails at its submission
    ("new kernel", lambda: (a * a).numpy()),
    ("allocation", lambda: ndl.NDArray(np.ones(3, dtype=np.float32), device=d)),
]:
    try:
        step()
        out[name] = "no error"
    except Exception as error:
        out[name] = [type(error).__name__, str(error)]
print(json.dumps(out))
"""


@needs_webgpu
def test_a_lost_device_is_a_runtime_error_naming_the_op():
    out = run_python(LOSE_THE_DEVICE)
    # What failed first is named: the kernel, or the allocation of its output.
    for name, names in [
        ("cached", ["ewise_add_float32"]),
        ("new kernel", ["ewise_mul_float32", "an array of 4 float32"]),
        ("allocation", ["an array of 3 float32"]),
    ]:
        kind, message = out[name]
        assert kind == "RuntimeError", (name, kind, message)  # not a MemoryError, not a crash
        assert message.startswith("webgpu: ") and "lost" in message, message
        assert any(what in message for what in names), (name, message)


@needs_webgpu
def test_float64_is_an_unsupported_dtype_error():
    assert issubclass(UnsupportedDtypeError, TypeError)
    with pytest.raises(UnsupportedDtypeError, match="float64"):
        WEBGPU.empty((3,), dtype="float64")
    with pytest.raises(UnsupportedDtypeError, match="float64"):
        ndl.NDArray(np.zeros(3), device=WEBGPU, dtype="float64")
    with pytest.raises(UnsupportedDtypeError, match="float64"):
        ndl.Tensor(np.zeros(3), device=WEBGPU, dtype="float64")


@needs_webgpu
def test_a_kernel_that_does_not_compile_is_a_runtime_error_naming_it():
    mod = WEBGPU.mod
    pipelines = mod.stats()["pipelines"]
    for _ in range(2):  # not cached: the second call fails the same way
        with pytest.raises(RuntimeError, match="bad_kernel"):
            mod.runtime.pipeline("bad_kernel", 1, lambda: "this is not wgsl")
    assert mod.stats()["pipelines"] == pipelines
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal((ndl.NDArray(x, device=WEBGPU) + 1).numpy(), x + 1)


# ---- 7. the pool and the command stream -------------------------------------------------------
@needs_webgpu
def test_pool_reuses_a_freed_buffer():
    mod = WEBGPU.mod
    mod.empty_cache()  # no free buffer of any class (earlier tests leave some in the pool)
    n = 3001
    before = mod.stats()["allocations"]
    a = WEBGPU.empty((n,))
    key = a._handle.ptr()
    assert mod.stats()["allocations"] == before + 1
    memory = mod.memory_stats()
    del a
    freed = mod.memory_stats()
    assert freed["live_buffers"] == memory["live_buffers"] - 1
    assert freed["cached_buffers"] == memory["cached_buffers"] + 1
    b = WEBGPU.empty((n,))
    assert b._handle.ptr() == key  # the same buffer, from the pool
    assert mod.stats()["allocations"] == before + 1
    assert mod.memory_stats() == memory
    del b
    mod.empty_cache()
    assert mod.memory_stats()["cached_bytes"] == 0
    c = WEBGPU.empty((n,))  # the cache is gone: a new buffer
    assert mod.stats()["allocations"] == before + 2
    del c


@needs_webgpu
def test_dispatches_wait_for_a_sync_point(rng):
    mod = WEBGPU.mod
    mod.synchronize()
    x, y = rng.normal(size=(2, 500)).astype(np.float32)
    start = mod.stats()
    a, b = ndl.NDArray(x, device=WEBGPU), ndl.NDArray(y, device=WEBGPU)
    c = a + b
    e = c * 2 + a
    recorded = mod.stats()
    assert recorded["dispatches"] - start["dispatches"] == 3
    assert recorded["submissions"] == start["submissions"]  # nothing submitted yet
    np.testing.assert_allclose(e.numpy(), (x + y) * 2 + x, rtol=1e-6)
    assert mod.stats()["submissions"] == start["submissions"] + 1
    np.testing.assert_allclose(c.numpy(), x + y, rtol=1e-6)
    assert mod.stats()["submissions"] == start["submissions"] + 2


@needs_webgpu
def test_host_writes_are_ordered_after_recorded_dispatches(rng):
    """from_numpy replaces a whole array: into a buffer that a recorded dispatch uses, it
    writes an idle buffer of the same size instead (the array takes it over; the busy one
    goes back to the pool), so that neither a submission nor a wrong order results."""
    mod = WEBGPU.mod
    mod.synchronize()
    d1, d2, d3 = rng.normal(size=(3, 300)).astype(np.float32)
    submissions = mod.stats()["submissions"]

    # A write into a buffer that a recorded dispatch reads.
    x = ndl.NDArray(d1, device=WEBGPU)
    y = x + 1
    WEBGPU.from_numpy(d2, x._handle)
    # A write into a buffer that a recorded dispatch writes.
    w = x * 3
    WEBGPU.from_numpy(d3, w._handle)
    # A freed buffer that a recorded dispatch still reads, handed out again and written.
    v = ndl.NDArray(d1, device=WEBGPU)
    u = v * 3
    key = v._handle.ptr()
    del v
    z = ndl.NDArray(d2, device=WEBGPU)
    assert z._handle.ptr() != key  # not the busy buffer
    assert mod.stats()["submissions"] == submissions  # nothing submitted for the writes

    np.testing.assert_array_equal(y.numpy(), d1 + 1)
    np.testing.assert_array_equal(x.numpy(), d2)
    np.testing.assert_array_equal(w.numpy(), d3)
    np.testing.assert_array_equal(u.numpy(), d1 * 3)
    np.testing.assert_array_equal(z.numpy(), d2)


# ---- 8. uint8 and bool --------------------------------------------------------------------------
@needs_webgpu
def test_uint8_and_bool_round_trip_bit_exactly(rng):
    u8 = rng.integers(0, 256, size=(9, 37), dtype=np.uint8)
    u8[0, :2] = (0, 255)
    flags = rng.random((9, 37)) > 0.5
    for host, dtype in ((u8, "uint8"), (flags, "bool")):
        array = ndl.NDArray(host, device=WEBGPU, dtype=dtype)
        assert array.dtype == dtype
        back = array.numpy()
        assert back.dtype == host.dtype
        np.testing.assert_array_equal(back, host)
        view = array[1::2, ::-3]  # a strided, offset, reversed readback
        np.testing.assert_array_equal(view.numpy(), host[1::2, ::-3])


@needs_webgpu
def test_uint8_arithmetic_wraps_like_numpy(rng):
    a_host = rng.integers(0, 256, size=1000, dtype=np.uint8)
    b_host = rng.integers(0, 256, size=1000, dtype=np.uint8)
    a = ndl.NDArray(a_host, device=WEBGPU, dtype="uint8")
    b = ndl.NDArray(b_host, device=WEBGPU, dtype="uint8")
    wide_a, wide_b = a_host.astype(np.int64), b_host.astype(np.int64)
    cases = ((a + b, wide_a + wide_b), (a - b, wide_a - wide_b), (a * b, wide_a * wide_b))
    for got, exact in cases:
        assert got.dtype == "uint8"
        want = exact.astype(np.uint8)  # NumPy's uint8 arithmetic: mod 256
        assert (want != exact).any()  # the case wraps
        np.testing.assert_array_equal(got.numpy(), want)
    # Scalars against the cpu device (needle's scalar rules, computed there).
    a_cpu = ndl.NDArray(a_host, device=ndl.cpu(), dtype="uint8")
    for op in (lambda t: t + 200, lambda t: t - 250, lambda t: t * 7):
        got, want = op(a), op(a_cpu)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.numpy(), want.numpy())


# ---- 9. float16 ------------------------------------------------------------------------------
needs_f16 = pytest.mark.skipif(
    not WEBGPU.enabled() or "float16" not in WEBGPU.dtypes,
    reason="webgpu is disabled here or its adapter has no shader-f16",
)


@needs_f16
def test_float16_views_of_odd_offsets_and_sizes_read_back_bit_exactly(rng):
    """2-byte elements move in 4-byte words: readbacks from an odd element or of an odd
    count, and uploads of an odd count, keep every bit (NaN payloads too)."""
    host = rng.integers(0, 1 << 16, size=(7, 9), dtype=np.uint16).view(np.float16)
    array = ndl.NDArray(host, device=WEBGPU, dtype="float16")
    for view, want in (
        (array, host),
        (array[1:4, 3:8], host[1:4, 3:8]),
        (array[5::-2, ::-3], host[5::-2, ::-3]),
        (array[2:3, 1:2], host[2:3, 1:2]),
    ):
        np.testing.assert_array_equal(view.numpy().view(np.uint16), want.view(np.uint16))
    np.testing.assert_array_equal(
        array[1:4, 3:8].compact().numpy().view(np.uint16), host[1:4, 3:8].view(np.uint16)
    )


def test_without_shader_f16_float16_is_an_unsupported_dtype_error():
    """An adapter without 16-bit floats holds no float16 (a second device of this adapter,
    made without its optional features): NDArray names the dtypes it holds. bfloat16 has no
    WGSL type: no webgpu device holds it."""
    if not WEBGPU.enabled():
        pytest.skip(f"webgpu is disabled here: {WEBGPU.reason}")
    from needle.backend_ndarray import BackendDevice, ndarray_backend_webgpu as webgpu
    from needle.backend_ndarray.webgpu_runtime import WebGPURuntime

    backend = webgpu.WebGPUBackend(WebGPURuntime(features=()), "webgpu_basic")
    basic = BackendDevice("webgpu_basic", types.SimpleNamespace(**backend.primitive_table()))
    assert "float16" not in basic.dtypes and "float32" in basic.dtypes
    message = "webgpu_basic() does not support dtype float16 (it holds float32, int32, int64, "
    with pytest.raises(UnsupportedDtypeError, match=re.escape(message + "uint8, bool)")):
        ndl.NDArray(np.zeros(3), device=basic, dtype="float16")
    with pytest.raises(UnsupportedDtypeError, match="float16"):
        ndl.Tensor(np.zeros(3), device=basic, dtype="float16")
    with pytest.raises(UnsupportedDtypeError, match=r"does not support dtype bfloat16 \(it holds"):
        ndl.NDArray(np.zeros(3), device=WEBGPU, dtype="bfloat16")


# ---- grids past 65,535 workgroups in one dimension ----------------------------------------
@needs_webgpu
def test_grids_past_the_per_dimension_limit_are_folded():
    """More workgroups than one grid dimension takes (65,535) are folded into two: an
    elementwise op over 2^24 + 3 elements (65,537 workgroups of 256) and a row reduction over
    65,537 rows of 65 (a workgroup per row). The kernels also return early in a spare
    workgroup of a folded grid; lavapipe discards out-of-bounds writes, so that guard is not
    observable here, only the folding's index arithmetic."""
    mod, rng = WEBGPU.mod, np.random.default_rng(0)
    limit = mod.runtime.max_groups
    n = limit * 256 + 259
    x = rng.standard_normal(n, dtype=np.float32)
    got = (ndl.NDArray(x, device=WEBGPU) * 2.0).numpy()
    np.testing.assert_array_equal(got, x * np.float32(2.0))
    rows = limit + 2
    a = rng.standard_normal((rows, 65), dtype=np.float32)
    sums = ndl.NDArray(a, device=WEBGPU).sum(axis=1).numpy()
    np.testing.assert_allclose(sums, a.sum(axis=1), rtol=1e-5, atol=1e-5)
    maxima = ndl.NDArray(a, device=WEBGPU).max(axis=1).numpy()
    np.testing.assert_array_equal(maxima, a.max(axis=1))


class _AdapterThatHangs:
    """An adapter whose driver answers the device request only when `answer` is set, or
    refuses it (`refuse`): what wgpu's request looks like from needle."""

    def __init__(self, refuse: bool = False):
        self.answer, self.refuse = threading.Event(), refuse
        self.info = {"device": "Stuck GPU", "backend_type": "Vulkan", "adapter_type": "DiscreteGPU"}
        self.features: frozenset = frozenset()
        self.limits = {
            "max-buffer-size": 1 << 30,
            "max-storage-buffer-binding-size": 1 << 27,
            "max-compute-workgroups-per-dimension": 65535,
        }

    def request_device_sync(self, **descriptor):
        if self.refuse:
            raise RuntimeError("vkCreateDevice failed")
        self.answer.wait()
        raise RuntimeError("answered after the test")


@pytest.mark.parametrize("refuse", [False, True], ids=["no-answer", "refused"])
def test_a_device_request_the_driver_never_answers_is_an_import_error(monkeypatch, refuse):
    """A driver that does not answer wgpu's device request (an NVIDIA H200's Vulkan driver
    gave 12 processes no answer in 120 s) turns the backend off with the reason after
    DEVICE_REQUEST_TIMEOUT_S, instead of hanging; a driver that refuses the device is an
    ImportError naming the adapter too."""
    runtime = pytest.importorskip("needle.backend_ndarray.webgpu_runtime")
    monkeypatch.setattr(runtime, "DEVICE_REQUEST_TIMEOUT_S", 0.2)
    adapter = _AdapterThatHangs(refuse)
    start = time.perf_counter()
    try:
        with pytest.raises(ImportError) as raised:
            runtime.WebGPURuntime(adapter=adapter, features=())
    finally:
        adapter.answer.set()  # let the abandoned request's thread end
    message = str(raised.value)
    assert message.startswith("needle's webgpu backend: Stuck GPU (Vulkan, DiscreteGPU): ")
    if refuse:
        assert message.endswith("vkCreateDevice failed")
    else:
        assert "created no device in 0.2 s" in message
        assert 0.2 <= time.perf_counter() - start < 5
