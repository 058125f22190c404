"""`needle bench`'s workloads, which the scripts in benchmarks/ reuse: a float32 matmul sweep,
elementwise and reduction throughput, the eager overhead of tiny ops, and one training step
(zero_grad, forward, loss, backward, SGD update) of the same MLP, ResNet-9 and LSTM language
model in needle and in PyTorch; and the presets of `needle bench` (quick, full, tiny)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import needle as ndl
from needle import nn, optim
from needle.apps.bench.harness import Backend, Case, Workload, arrays, import_torch
from needle.apps.models import LanguageModel, ResNet9


# ---- training steps ----------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSpec:
    """One training-step workload: which model, at what size."""

    model: str  # "mlp", "resnet9" or "lstm-lm"
    params: tuple[tuple[str, Any], ...]

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def autocast(self) -> str | None:
        """The 16-bit dtype forward and loss run in under autocast (the "precision" param:
        bf16 or fp16), None for float32."""
        return {"bf16": "bfloat16", "fp16": "float16"}.get(self.kwargs.get("precision", ""))

    def in_float32(self) -> TrainSpec:
        """The same step without autocast."""
        return TrainSpec(self.model, tuple(p for p in self.params if p[0] != "precision"))

    @property
    def title(self) -> str:
        p = self.kwargs
        low = f", {p['precision']} autocast" if self.autocast else ""
        if self.model == "mlp":
            return f"MLP {'-'.join(map(str, p['sizes']))}, batch {p['batch']}{low}"
        if self.model == "resnet9":
            return f"ResNet-9 {'x'.join(map(str, p['image']))}, batch {p['batch']}{low}"
        return (
            f"LSTM LM {p['layers']} layers, hidden {p['hidden']}, vocab {p['vocab']}, "
            f"seq {p['seq_len']} x batch {p['batch']}{low}"
        )


# The three models' sizes at each scale: the course's usual ones ("full") and small enough for
# a test ("tiny"). The full LSTM LM has Penn Treebank's vocabulary: the (seq*batch, vocab)
# logits and their softmax dominate the memory traffic.
TRAIN_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "mlp": dict(sizes=(784, 512, 512, 10), batch=128),
        "resnet9": dict(image=(3, 32, 32), batch=128),
        "lstm-lm": dict(seq_len=20, batch=20, hidden=100, embedding=100, vocab=10000, layers=2),
    },
    "tiny": {
        "mlp": dict(sizes=(784, 32, 32, 10), batch=8),
        "resnet9": dict(image=(3, 32, 32), batch=2),
        "lstm-lm": dict(seq_len=4, batch=4, hidden=16, embedding=16, vocab=200, layers=2),
    },
}


def train_specs(scale: str = "full") -> list[TrainSpec]:
    """The course's three models at a scale of TRAIN_SIZES ("full" or "tiny")."""
    return [TrainSpec(model, tuple(sizes.items())) for model, sizes in TRAIN_SIZES[scale].items()]


def needle_model(spec: TrainSpec, device):
    """`spec`'s model on a needle device, with a batch of fixed random data: (model, X, y)."""
    p = spec.kwargs
    rng = np.random.default_rng(0)
    np.random.seed(0)  # needle's initialisers draw from NumPy's global generator
    if spec.model == "mlp":
        sizes = p["sizes"]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out, device=device))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        model = nn.Sequential(*layers)
        x = rng.standard_normal((p["batch"], sizes[0]), dtype=np.float32)
        labels = rng.integers(0, sizes[-1], p["batch"])
    elif spec.model == "resnet9":
        model = ResNet9(device=device)
        x = rng.standard_normal((p["batch"],) + tuple(p["image"]), dtype=np.float32)
        labels = rng.integers(0, 10, p["batch"])
    elif spec.model == "lstm-lm":
        model = LanguageModel(
            p["embedding"],
            p["vocab"],
            hidden_size=p["hidden"],
            num_layers=p["layers"],
            seq_model="lstm",
            device=device,
        )
        x = rng.integers(0, p["vocab"], (p["seq_len"], p["batch"])).astype(np.float32)
        labels = rng.integers(0, p["vocab"], p["seq_len"] * p["batch"])
    else:
        raise ValueError(f"unknown model {spec.model!r}")
    X = ndl.Tensor(x, device=device, requires_grad=False)
    y = ndl.Tensor(labels.astype(np.float32), device=device, requires_grad=False)
    return model.train(), X, y


def needle_train_step(
    spec: TrainSpec, device, lr: float = 0.01, compiled: bool = False
) -> Callable[[], None]:
    """One SGD step of `spec`'s model on fixed random data, on a needle device; with
    `compiled`, through ndl.compile (recorded, then replayed)."""
    model, X, y = needle_model(spec, device)
    opt = optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.SoftmaxLoss()
    sequence = spec.model == "lstm-lm"  # LanguageModel returns (logits, hidden state)

    def step() -> None:
        opt.reset_grad()
        with ndl.autocast(dtype=spec.autocast or "bfloat16", enabled=spec.autocast is not None):
            out = model(X)[0] if sequence else model(X)
            loss = loss_fn(out, y)
        loss.backward()
        opt.step()

    if not compiled:
        return step
    captured = ndl.compile(step)
    for _ in range(5):  # record until it replays (two or three calls), before any timing
        captured()
        if captured.status == "replayed":
            break
    return captured


def torch_model(spec: TrainSpec, device):
    """The same model in PyTorch, same layers and sizes, with its data: (model, x, labels)."""
    import torch
    from torch import nn as tnn

    p = spec.kwargs
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    if spec.model == "mlp":
        sizes = p["sizes"]
        layers: list[Any] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(tnn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(tnn.ReLU())
        model = tnn.Sequential(*layers)
        x = torch.from_numpy(rng.standard_normal((p["batch"], sizes[0]), dtype=np.float32))
        labels = torch.from_numpy(rng.integers(0, sizes[-1], p["batch"]))
    elif spec.model == "resnet9":

        def conv_bn(c_in, c_out, k, s):
            return tnn.Sequential(
                tnn.Conv2d(c_in, c_out, k, s, padding=k // 2), tnn.BatchNorm2d(c_out), tnn.ReLU()
            )

        class Residual(tnn.Module):
            def __init__(self, fn):
                super().__init__()
                self.fn = fn

            def forward(self, x):
                return self.fn(x) + x

        model = tnn.Sequential(
            conv_bn(3, 16, 7, 4),
            conv_bn(16, 32, 3, 2),
            Residual(tnn.Sequential(conv_bn(32, 32, 3, 1), conv_bn(32, 32, 3, 1))),
            conv_bn(32, 64, 3, 2),
            conv_bn(64, 128, 3, 2),
            Residual(tnn.Sequential(conv_bn(128, 128, 3, 1), conv_bn(128, 128, 3, 1))),
            tnn.Flatten(),
            tnn.Linear(128, 128),
            tnn.ReLU(),
            tnn.Linear(128, 10),
        )
        x = torch.from_numpy(
            rng.standard_normal((p["batch"],) + tuple(p["image"]), dtype=np.float32)
        )
        labels = torch.from_numpy(rng.integers(0, 10, p["batch"]))
    elif spec.model == "lstm-lm":

        class LanguageModelTorch(tnn.Module):
            def __init__(self):
                super().__init__()
                self.embedding = tnn.Embedding(p["vocab"], p["embedding"])
                self.lstm = tnn.LSTM(p["embedding"], p["hidden"], p["layers"])
                self.linear = tnn.Linear(p["hidden"], p["vocab"])

            def forward(self, x):
                out, _ = self.lstm(self.embedding(x))
                return self.linear(out.reshape(-1, p["hidden"]))

        model = LanguageModelTorch()
        x = torch.from_numpy(rng.integers(0, p["vocab"], (p["seq_len"], p["batch"])))
        labels = torch.from_numpy(rng.integers(0, p["vocab"], p["seq_len"] * p["batch"]))
    else:
        raise ValueError(f"unknown model {spec.model!r}")
    return model.to(device).train(), x.to(device), labels.to(device)


def torch_train_step(spec: TrainSpec, device, lr: float = 0.01) -> Callable[[], None]:
    """The same step in PyTorch: same model, loss and optimizer."""
    import torch

    model, x, labels = torch_model(spec, device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()

    low = getattr(torch, spec.autocast) if spec.autocast else None

    def step() -> None:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=low, enabled=low is not None):
            loss = loss_fn(model(x), labels)
        loss.backward()
        opt.step()

    return step


# ---- workloads -------------------------------------------------------------------------
def matmul_workload(
    sizes: Sequence[int], rectangular: Sequence[tuple[int, int, int]], **timing
) -> Workload:
    def case(m: int, n: int, p: int, label: str, headline: bool = False) -> Case:
        def build(backend: Backend):
            a, b = arrays(backend, (m, n), (n, p))
            return lambda: a @ b

        return Case(label, build, {"m": m, "n": n, "p": p}, 2.0 * m * n * p, headline)

    cases = [case(s, s, s, f"{s} x {s} x {s}", s == max(sizes)) for s in sizes]
    cases += [case(m, n, p, f"{m} x {n} x {p}") for m, n, p in rectangular]
    return Workload(
        "matmul",
        "Matrix multiplication (float32)",
        "GFLOP/s",
        "(m x n) @ (n x p), output allocated per call: needle's NDArray `a @ b`, "
        "`torch.matmul`. 2mnp FLOPs per call.",
        cases,
        **timing,
    )


def elementwise_workload(n: int, side: int, **timing) -> Workload:
    def unary(fn_name: str):
        def build(backend: Backend):
            (x,) = arrays(backend, (n,))
            if backend.library == "numpy":
                return lambda: getattr(np, fn_name)(x)
            return getattr(x, fn_name)  # x.exp: a method of NDArray and of torch.Tensor

        return build

    def binary(op: Callable[[Any, Any], Any]):
        def build(backend: Backend):
            x, y = arrays(backend, (n,), (n,))
            return lambda: op(x, y)

        return build

    def reduce(axis: int):
        def build(backend: Backend):
            (m,) = arrays(backend, (side, side))
            if backend.library == "torch":
                return lambda: m.sum(dim=axis)
            return lambda: m.sum(axis=axis)

        return build

    vector, matrix = 4 * n, 4 * side * side
    label = f"{n:.0e}".replace("e+0", "e") if n >= 1e5 else str(n)
    cases = [
        Case(f"add, {label} floats", binary(lambda x, y: x + y), {"n": n}, 3 * vector, True),
        Case(f"mul, {label} floats", binary(lambda x, y: x * y), {"n": n}, 3 * vector),
        Case(f"exp, {label} floats", unary("exp"), {"n": n}, 2 * vector),
        Case(f"sum over axis 0, {side} x {side}", reduce(0), {"side": side}, matrix, True),
        Case(f"sum over axis 1, {side} x {side}", reduce(1), {"side": side}, matrix),
    ]
    return Workload(
        "elementwise",
        "Elementwise and reduction throughput (float32)",
        "GB/s",
        "Memory touched per call (inputs read, output written) over time; outputs "
        "allocated per call (NDArray ops, torch tensor ops).",
        cases,
        **timing,
    )


def overhead_workload(**timing) -> Workload:
    def add(backend: Backend):
        if backend.library == "needle":
            a, b = (
                ndl.Tensor(np.ones(4), device=backend.handle, requires_grad=False) for _ in range(2)
            )
        else:
            torch = import_torch()
            a, b = (torch.ones(4, device=backend.handle) for _ in range(2))
        return lambda: a + b

    def backward(backend: Backend):
        if backend.library == "needle":
            x, y, z = (ndl.Tensor(np.ones(4), device=backend.handle) for _ in range(3))
        else:
            torch = import_torch()
            x, y, z = (torch.ones(4, device=backend.handle, requires_grad=True) for _ in range(3))
        return lambda: (x * y + z).sum().backward()

    cases = [
        Case("a + b, 4 floats", add, headline=True),
        Case("(x * y + z).sum().backward(), 4 floats", backward),
    ]
    return Workload(
        "overhead",
        "Eager overhead of tiny ops",
        "us",
        "Microseconds per call on 4-element tensors, where the arithmetic is free: "
        "what is timed is the framework (Tensor creation, dispatch, allocation, "
        "graph traversal).",
        cases,
        **timing,
    )


# The suffix of a needle backend's label whose train steps run through ndl.compile, and of
# one whose steps run in float32 whatever the row's precision (a 16-bit row's float32 step,
# timed in the same rounds: the gain of autocast).
COMPILED = "compiled"
FLOAT32 = "fp32"


def train_workload(specs: Sequence[TrainSpec], compiled_rows: bool = False, **timing) -> Workload:
    """The training steps; with `compiled_rows`, each model also has a row whose needle steps
    run through ndl.compile (torch eager in it too). A needle backend labelled "... compiled"
    runs every row compiled, one labelled "... fp32" every row in float32."""

    def case(spec: TrainSpec, compiled: bool = False) -> Case:
        def build(backend: Backend):
            if backend.library == "needle":
                on = compiled or backend.name.endswith(COMPILED)
                run = spec.in_float32() if backend.name.endswith(FLOAT32) else spec
                return needle_train_step(run, backend.handle, compiled=on)
            return torch_train_step(spec, backend.handle)

        title = f"{spec.title}, needle compiled" if compiled else spec.title
        params = {"model": spec.model, **spec.kwargs, "compiled": compiled}
        return Case(title, build, params, headline=True)

    return Workload(
        "train",
        "Training step",
        "ms",
        "One step: zero_grad, forward, softmax cross-entropy loss, backward, SGD "
        "update (lr 0.01), on fixed random data of the given batch. In the rows marked "
        "'needle compiled' needle's step is recorded once and replayed (ndl.compile); "
        "torch runs eagerly in every row.",
        [case(s, c) for s in specs for c in ((False, True) if compiled_rows else (False,))],
        **timing,
    )


# Presets. quick: 2-5 minutes on 2 cores (cpu devices, compiled train rows included; longer when
# busy: rounds run up to max_time per case); full: larger sweeps and more repeats (8+ minutes);
# tiny: seconds, for the tests.
# What each preset measures: the matmul sizes (square and rectangular (m, k, n)), the elementwise
# lengths and the scale of the train models. quick is full with fewer matmul sizes.
_FULL_PROBLEMS: dict[str, Any] = dict(
    sizes=[64, 128, 256, 512, 1024, 2048],
    rectangular=[(128, 784, 512), (1024, 4096, 1024), (4096, 256, 4096)],
    ewise_n=10**7,
    side=4096,
    scale="full",
)
_PROBLEMS: dict[str, dict[str, Any]] = {
    "full": _FULL_PROBLEMS,
    "quick": {
        **_FULL_PROBLEMS,
        "sizes": [64, 128, 256, 512, 1024],
        "rectangular": [(128, 784, 512), (1024, 4096, 1024)],
    },
    "tiny": dict(sizes=[32, 64], rectangular=[(16, 64, 32)], ewise_n=4096, side=64, scale="tiny"),
}
# How each preset times: the least repeats, warmup calls and the least seconds a repeat runs, the
# same two for the train workload, the pause (seconds) between backends, and the seconds of
# rounds per case (harness.run_case) before a wide row is reported unreliable.
_TIMING_FIELDS = (
    "repeats", "warmup", "min_time", "train_repeats", "train_min_time", "pause", "max_time"
)  # fmt: skip
_TIMINGS: dict[str, tuple[float, ...]] = {
    "full": (10, 2, 0.2, 7, 0.2, 0.25, 10.0),
    "quick": (5, 1, 0.05, 3, 0.05, 0.25, 10.0),
    "tiny": (2, 1, 0.001, 1, 0.0, 0.0, 0.0),
}
PRESETS: dict[str, dict[str, Any]] = {
    name: {**problems, **dict(zip(_TIMING_FIELDS, _TIMINGS[name], strict=True))}
    for name, problems in _PROBLEMS.items()
}
WORKLOADS = ("matmul", "elementwise", "overhead", "train")


def build_workloads(preset: dict[str, Any], keys: Sequence[str] = WORKLOADS) -> list[Workload]:
    timing = {key: preset[key] for key in ("repeats", "warmup", "min_time", "max_time")}
    train_timing = dict(timing, repeats=preset["train_repeats"], min_time=preset["train_min_time"])
    makers = {
        "matmul": lambda: matmul_workload(preset["sizes"], preset["rectangular"], **timing),
        "elementwise": lambda: elementwise_workload(preset["ewise_n"], preset["side"], **timing),
        "overhead": lambda: overhead_workload(**timing),
        "train": lambda: train_workload(
            train_specs(preset["scale"]), compiled_rows=True, **train_timing
        ),
    }
    return [makers[key]() for key in keys]
