"""ndl.profile (needle/profiler.py): the ops and primitive calls of a known graph with their
counts, shapes, dtypes and FLOPs, nested times, the table's sums, the Chrome trace, the
modules restored after the block, bench_train's step profile and `needle train --profile`."""

import json

import numpy as np
import pytest

import needle as ndl
from needle import autograd
from needle.apps import cli
from needle.apps.bench.step_profile import profile_step
from needle.apps.bench.workloads import train_specs
from needle.autograd import Op, Value
from needle.backend_ndarray import primitives

M, N, P = 5, 7, 3
DEVICES = [ndl.cpu_numpy()] + ([ndl.cpu()] if ndl.cpu().enabled() else [])
MATMULS = ("matmul", "batched_matmul", "matmul_strided", "matmul_tiled")


def profiled_graph(device):
    """relu(a @ b).sum() and its backward, with a (M, N) and b (N, P), under a profile."""
    rng = np.random.default_rng(0)
    a = ndl.Tensor(rng.standard_normal((M, N)), device=device, dtype="float32", requires_grad=True)
    b = ndl.Tensor(rng.standard_normal((N, P)), device=device, dtype="float32", requires_grad=True)
    with ndl.profile() as prof:
        ndl.relu(a @ b).sum().backward()
    return prof


def children(prof, event):
    return [e for e in prof.events if e.parent is event]


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.name)
def test_ops_and_primitives_of_a_matmul_graph(device):
    prof = profiled_graph(device)
    forward = [e for e in prof.events if e.cat == "op" and e.phase == "forward"]
    assert [e.name for e in forward] == ["MatMul", "ReLU", "Summation"]
    matmul = forward[0]
    assert matmul.device == device.name and matmul.parent is None
    assert matmul.args["inputs"] == [
        {"shape": (M, N), "dtype": "float32"},
        {"shape": (N, P), "dtype": "float32"},
    ]
    assert matmul.args["output"] == {"shape": (M, P), "dtype": "float32"}
    assert forward[2].args["output"] == {"shape": (), "dtype": "float32"}
    # The forward product and the two of the backward (dA = g @ b^T, dB = a^T @ g): 2*M*N*P
    # each, whatever the row (matmul, or matmul_strided on transposed views).
    gemms = [e for e in prof.events if e.name in MATMULS]
    assert [e.flops for e in gemms] == [2 * M * N * P] * 3
    assert [e.device for e in gemms] == [device.name] * 3
    assert matmul.flops == 2 * M * N * P and gemms[0].parent is matmul
    a_arg = gemms[0].args["a"]
    assert a_arg["dtype"] == "float32" and a_arg["bytes"] == a_arg["size"] * 4
    assert gemms[0].nbytes == sum(v["bytes"] for v in gemms[0].args.values() if isinstance(v, dict))
    # The output's allocation happens inside MatMul: M * P float32s.
    allocs = [e for e in children(prof, matmul) if e.cat == "alloc"]
    assert {"size": M * P, "dtype": "float32"} in [e.args for e in allocs]
    assert all(e.nbytes == e.args["size"] * 4 for e in prof.events if e.cat == "alloc")
    # Backward: one pass, each op's gradient inside it, the ops those ran in its phase.
    (backward,) = [e for e in prof.events if e.cat == "autograd"]
    grads = [e for e in prof.events if e.cat == "gradient"]
    assert {e.name for e in grads} == {"Summation.gradient", "ReLU.gradient", "MatMul.gradient"}
    assert all(e.parent is backward and e.phase == "backward" for e in grads)
    assert backward.flops == 2 * (2 * M * N * P)
    late = [e for e in prof.events if e.start > backward.start and e.cat == "op"]
    assert late and all(e.phase == "backward" for e in late)
    for e in prof.events:  # times non-negative, each event inside its parent
        assert 0 <= e.child <= e.net <= e.end - e.start
        if e.parent is not None:
            assert e.parent.start <= e.start <= e.end <= e.parent.end


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.name)
def test_flops_of_a_batched_matmul_and_a_strided_conv(device):
    rng = np.random.default_rng(1)

    def tensor(*shape):
        return ndl.Tensor(rng.standard_normal(shape), device=device, dtype="float32")

    # NHWC (2, 6, 6, 3) with (3, 3, 3, 4) weights at stride 2, padding 1: 3 x 3 outputs.
    x, w, a, b = tensor(2, 6, 6, 3), tensor(3, 3, 3, 4), tensor(2, M, N), tensor(2, N, P)
    with ndl.profile() as prof:
        ndl.conv(x, w, stride=2, padding=1)
        a @ b
    conv, matmul = [e for e in prof.events if e.cat == "op"]
    assert conv.name == "Conv" and conv.args["output"]["shape"] == (2, 3, 3, 4)
    assert conv.flops == 2 * (2 * 3 * 3) * (3 * 3 * 3) * 4  # as a conv2d row or an im2col GEMM
    assert matmul.flops == 2 * 2 * M * N * P
    if device.has("conv2d"):  # the gradients' rows: the same multiply-adds as conv2d's
        x.requires_grad = w.requires_grad = True
        with ndl.profile() as prof:
            ndl.conv(x, w, stride=2, padding=1).sum().backward()
        rows = {e.name: e.flops for e in prof.events if e.name.startswith("conv2d")}
        assert rows == dict.fromkeys(("conv2d", "conv2d_input_grad", "conv2d_weight_grad"), 3888)


def test_table_sums_and_sorting():
    prof = profiled_graph(DEVICES[-1])
    prims, ops = prof.rows("primitive"), prof.rows("op")
    assert sum(r.total for r in prims) == pytest.approx(prof.kernel_seconds)
    assert sum(r.calls for r in prims) == sum(e.cat in ("primitive", "alloc") for e in prof.events)
    assert sum(r.calls for r in ops) == sum(
        e.cat not in ("primitive", "alloc") for e in prof.events
    )
    assert all(0 <= r.self_time <= r.total <= prof.wall for r in prims + ops)
    # Self times add up to the time of the outermost events, which lie inside wall with the
    # profiler's bookkeeping; kernels, Python and that bookkeeping make up wall.
    outermost = sum(e.net for e in prof.events if e.parent is None) / 1e9
    assert sum(r.self_time for r in ops + prims) == pytest.approx(outermost, rel=1e-9)
    assert outermost + prof.overhead_seconds <= prof.wall
    parts = prof.kernel_seconds + prof.python_seconds + prof.overhead_seconds
    assert parts == pytest.approx(prof.wall, rel=1e-9)
    gemm = next(r for r in prims if r.name in MATMULS)
    assert gemm.calls == 3 and gemm.flops == 3 * 2 * M * N * P
    text = prof.table(sort_by="calls", top=4, group_by="primitive")
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["primitive", "device", "calls"] and len(lines) == 4 + 3
    calls = [int(line.split()[2]) for line in lines[1:5]]
    assert calls == sorted(calls, reverse=True) and calls[0] == max(r.calls for r in prims)
    assert "GFLOP/s" in lines[0] and "inside primitives" in lines[-2] and "(Python)" in lines[-2]
    assert "MatMul (backward)" in prof.table(top=100) and "backward" in prof.table()
    with pytest.raises(ValueError, match="sort_by"):
        prof.table(sort_by="speed")
    with pytest.raises(ValueError, match="group_by"):
        prof.table(group_by="layer")


def test_modules_are_restored_after_the_block_and_after_an_exception():
    device = DEVICES[-1]
    saved = (device.mod, Value._compute, Op.gradient_as_tuple)
    native = {name for name in primitives.OPTIONAL if device.has(name)}
    backward = autograd.compute_gradient_of_variables
    a = ndl.Tensor(np.ones((2, 3)), device=device, dtype="float32")
    with pytest.raises(ValueError), ndl.profile() as prof:
        assert device.mod is not saved[0] and Value._compute is not saved[1]
        assert device.matmul is not saved[0].matmul  # (the device keeps what it looks up)
        a @ a  # (2, 3) @ (2, 3): the op's ValueError, from inside an event
    assert (device.mod, Value._compute, Op.gradient_as_tuple) == saved
    assert autograd.compute_gradient_of_variables is backward
    assert device.matmul is saved[0].matmul  # not the stand-in's, looked up inside the block
    assert [e.name for e in prof.events if e.cat == "op"] == ["MatMul"]
    assert all(e.end >= e.start > 0 for e in prof.events)  # closed though it raised
    with ndl.profile(), pytest.raises(RuntimeError, match="already recording"), ndl.profile():
        pass
    with pytest.raises(RuntimeError, match="recorded already"):
        prof.start()
    assert device.mod is saved[0] and {n for n in primitives.OPTIONAL if device.has(n)} == native


def test_a_compiled_step_recorded_inside_a_profile_replays_after_it():
    device = DEVICES[-1]
    w = ndl.Tensor(np.ones((4, 4)), device=device, dtype="float32", requires_grad=True)
    step = ndl.compile(lambda x: (x @ w).sum())
    x = ndl.Tensor(np.arange(16.0).reshape(4, 4), device=device, dtype="float32")
    with ndl.profile() as prof:
        results = [step(x).numpy() for _ in range(4)]
    assert step.status == "replayed" and results == [results[0]] * 4
    events = len(prof.events)
    np.testing.assert_array_equal(step(x).numpy(), results[0])  # replays outside: not recorded
    assert len(prof.events) == events


def test_chrome_trace_is_valid_and_nested(tmp_path):
    prof = profiled_graph(DEVICES[-1])
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())["traceEvents"]
    spans = [e for e in trace if e["ph"] == "X"]
    assert len(spans) == len(prof.events) and all(e["dur"] >= 0 <= e["ts"] for e in spans)
    names = {e["name"] for e in spans}
    assert {"MatMul", "ReLU", "Summation", "backward", "MatMul.gradient", "Array"} <= names
    gemm = next(e for e in spans if e["name"] in MATMULS)
    assert gemm["args"]["flops"] == 2 * M * N * P and gemm["args"]["a"]["dtype"] == "float32"
    op = next(e for e in spans if e["name"] == "MatMul")
    assert op["args"]["inputs"][0] == {"shape": [M, N], "dtype": "float32"}
    # Each thread's events form a forest: a later event starts after an earlier one ends or
    # lies within it (1e-6 us: rounding of ns / 1000); backward > MatMul.gradient > MatMul >
    # a matmul row is four deep.
    depth = 0
    for tid in {e["tid"] for e in spans}:
        stack: list[dict] = []
        for e in sorted((e for e in spans if e["tid"] == tid), key=lambda e: e["ts"]):
            while stack and e["ts"] >= stack[-1]["ts"] + stack[-1]["dur"] - 1e-6:
                stack.pop()
            if stack:
                assert e["ts"] + e["dur"] <= stack[-1]["ts"] + stack[-1]["dur"] + 1e-6, e
            stack.append(e)
            depth = max(depth, len(stack))
    assert depth == 4


def test_step_profile_prints_kernels_by_kind(capsys):
    if not ndl.cpu().enabled():
        pytest.skip("bench_train --profile profiles the C++ CPU backend, not built here")
    profile_step(train_specs("tiny")[0], threads=1, steps=2)
    out = capsys.readouterr().out
    for line in ("matmul", "allocation", "Python, NumPy (difference)", "top kernels: "):
        assert f"\n  {line}" in out
    # MLP 784-32-32-10, batch 8: 2 * 8 * (784*32 + 32*32 + 32*10) * 2 + 2 * 8 * (32*32 + 32*10)
    # = 867,328 FLOPs needed (forward, the weights' gradients, the last two inputs').
    assert "matmul work: 0.001 GFLOP/step (needed: 0.001;" in out


def test_needle_train_profile_writes_the_table_and_the_trace(tmp_path, capsys):
    args = ["train", "--epochs", "1", "--max-batches", "4", "--no-progress", "--out"]
    assert cli.main([*args, str(tmp_path), "--profile", "2"]) == 0
    out = capsys.readouterr().out
    assert "profile of training steps 3-4:" in out and "profile.json" in out
    text = (tmp_path / "profile.txt").read_text()
    assert text.count("inside primitives") == 2 and "Linear" in text and "matmul" in text
    trace = json.loads((tmp_path / "profile.json").read_text())["traceEvents"]
    steps = [e for e in trace if e["name"] == "backward"]
    assert len(steps) == 2  # one backward pass per profiled step
    for flags, message in (
        (["--profile", "3"], "--profile 3 needs 2 warm-up steps and 3 more in an epoch"),
        (["--profile", "1", "--compile"], "--profile cannot see --compile"),
    ):
        with pytest.raises(SystemExit) as stop:
            cli.main([*args, str(tmp_path / "bad"), *flags])
        assert message in str(stop.value.code) and "\n" not in str(stop.value.code)
