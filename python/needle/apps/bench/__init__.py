"""`needle bench`: needle's devices against PyTorch, written up as tables, JSON and plots.

    needle bench --quick                          every available device, 1.5 min on 2 cores
    needle bench --threads 1 --out runs/bench-1t  the full sweep on one thread
    needle bench --devices cpu,cuda               needle and PyTorch on those devices only

Workloads: a float32 matmul sweep (square sizes and rectangular cases), elementwise and
reduction throughput, the eager overhead of one tiny op, and one training step (zero_grad,
forward, loss, backward, SGD update) of an MLP 784-512-512-10, ResNet-9 and a 2-layer LSTM
language model. Each measurement warms up, synchronises the device, runs enough calls per
repeat to outlast the clock's noise, interleaves the libraries' repeats and reports the
median repeat with its interquartile range. Every library gets the same thread count.

It writes, in --out: report.md (one table per workload, with each backend's speed relative
to PyTorch on the same device and to needle's cpu backend), results.json (raw timings and the
machine: CPU, GPU, threads, versions, commit) and PNG plots when matplotlib is installed.
`benchmarks/bench_train.py` times the same training steps from this module.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import needle as ndl
from needle import nn, optim
from needle.apps.models import LanguageModel, ResNet9

SCHEMA = "needle-bench/1"

# Thread counts of the BLAS libraries are read once, when the library loads, so they are set in
# the environment of a fresh process (see run()). NEEDLE_NUM_THREADS is the C++ backend's default.
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NEEDLE_NUM_THREADS")

TORCH_DEVICES = ("cpu", "cuda", "mps")
# needle device -> the PyTorch device that runs on the same hardware.
TORCH_COUNTERPART = {"cpu": "cpu", "cpu_numpy": "cpu", "cuda": "cuda", "metal": "mps", "mps": "mps"}


# ---- timing ----------------------------------------------------------------------------
@dataclass
class Timing:
    """Seconds per call, one entry per repeat (each the mean of `calls_per_repeat` calls)."""

    times: List[float]
    calls_per_repeat: int

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Interquartile range of the repeats, relative to the median."""
        q1, q3 = np.percentile(self.times, [25, 75])
        return float((q3 - q1) / self.median) if self.median > 0 else 0.0


def warm_up(fn: Callable[[], object], synchronize: Callable[[], None] = lambda: None, *,
            warmup: int = 1, min_time: float = 0.05) -> int:
    """Call `fn` `warmup` times plus once more to time it; return how many calls make a block
    of about `min_time` seconds (as timeit's autorange: long enough to outlast the timer's and
    the scheduler's noise)."""
    for _ in range(warmup):
        fn()
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    once = time.perf_counter() - start
    return max(1, min(100_000, int(min_time / max(once, 1e-9))))


def time_block(fn: Callable[[], object], synchronize: Callable[[], None], number: int) -> float:
    """Seconds per call over `number` calls, the device synchronised before the clock stops
    (GPU work is asynchronous)."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    synchronize()
    return (time.perf_counter() - start) / number


def measure(fn: Callable[[], object], synchronize: Callable[[], None] = lambda: None, *,
            repeats: int = 5, warmup: int = 1, min_time: float = 0.05) -> Timing:
    """Time `fn` after `warmup` calls: `repeats` blocks of calls, each about `min_time` s."""
    number = warm_up(fn, synchronize, warmup=warmup, min_time=min_time)
    return Timing([time_block(fn, synchronize, number) for _ in range(max(1, repeats))], number)


def thread_env(threads: int, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """`base` (default os.environ) with every library's thread variable set to `threads`."""
    env = dict(os.environ if base is None else base)
    env.update({name: str(threads) for name in THREAD_ENV})
    return env


def threads_pinned(threads: int) -> bool:
    """True when this process started with every thread variable at `threads`."""
    return all(os.environ.get(name) == str(threads) for name in THREAD_ENV)


def set_threads(threads: int) -> Dict[str, Any]:
    """Give needle's C++ backend and PyTorch `threads` threads; return what each now uses."""
    used: Dict[str, Any] = {"requested": threads}
    try:
        ndl.set_num_threads(threads)
        used["needle"] = ndl.get_num_threads()
    except (AttributeError, RuntimeError):  # a C++ build without a thread pool
        used["needle"] = "fixed by the build"
    torch = _import_torch()
    if torch is not None:
        torch.set_num_threads(threads)
        used["torch"] = torch.get_num_threads()
    used["blas_env"] = {name: os.environ.get(name) for name in THREAD_ENV}
    return used


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


# ---- backends --------------------------------------------------------------------------
@dataclass
class Backend:
    """A library on a device: needle's `cpu`, PyTorch's `cuda`, ... and whether it can run."""

    library: str  # "needle" or "torch"
    device: str
    available: bool = True
    reason: str = ""  # why it is not available
    handle: Any = None  # the needle BackendDevice or the torch.device

    @property
    def name(self) -> str:
        return f"{self.library} {self.device}"

    @property
    def hardware(self) -> str:
        """The PyTorch device name of the hardware this backend runs on."""
        return TORCH_COUNTERPART.get(self.device, self.device) if self.library == "needle" \
            else self.device

    def synchronize(self) -> None:
        if not self.available:
            return
        if self.library == "needle":
            sync = getattr(self.handle.mod, "synchronize", None)
            if sync is not None:
                sync()
        elif self.device == "cuda":
            _import_torch().cuda.synchronize()
        elif self.device == "mps":
            _import_torch().mps.synchronize()


def _needle_backend(name: str) -> Backend:
    devices = {d.name: d for d in ndl.all_devices()}
    if name not in devices:
        return Backend("needle", name, False,
                       f"no such needle device (needle has {', '.join(devices)})")
    device = devices[name]
    if not device.enabled():
        return Backend("needle", name, False, "not available in this build or on this machine",
                       device)
    return Backend("needle", name, True, "", device)


def _torch_backend(name: str) -> Backend:
    torch = _import_torch()
    if torch is None:
        return Backend("torch", name, False, "not installed")
    if name == "cuda" and not torch.cuda.is_available():
        return Backend("torch", name, False, "not available (torch.cuda.is_available() is False)")
    mps = getattr(torch.backends, "mps", None)
    if name == "mps" and not (mps is not None and mps.is_available()):
        return Backend("torch", name, False, "not available (torch.backends.mps)")
    return Backend("torch", name, True, "", torch.device(name))


def discover_backends(spec: Optional[str] = None) -> List[Backend]:
    """The backends named by `spec` ("cpu,cuda", "needle:cpu_numpy", "torch:mps"; a bare name
    means needle's device of that name and PyTorch's), or by default every enabled needle
    device, PyTorch's cpu (reported as missing when torch is not installed) and every other
    PyTorch device present."""
    if spec is None:
        backends = [_needle_backend(d.name) for d in ndl.all_devices() if d.enabled()]
        backends.append(_torch_backend("cpu"))
        for name in TORCH_DEVICES[1:]:
            candidate = _torch_backend(name)
            if candidate.available:
                backends.append(candidate)
        return backends
    needle_names = {d.name for d in ndl.all_devices()}
    backends: List[Backend] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        library, _, name = token.rpartition(":")
        if library not in ("", "needle", "torch"):
            raise ValueError(f"--devices: {token!r}: the library must be needle or torch")
        if library == "needle" or (not library and (name in needle_names
                                                    or name not in TORCH_DEVICES)):
            backends.append(_needle_backend(name))
        if library == "torch" or (not library and name in TORCH_DEVICES):
            if library == "torch" and name not in TORCH_DEVICES:
                raise ValueError(f"--devices: {token!r}: torch devices are "
                                 f"{', '.join(TORCH_DEVICES)}")
            backends.append(_torch_backend(name))
    unique = {b.name: b for b in backends}
    return list(unique.values())


def unlisted_devices(backends: List[Backend]) -> List[Dict[str, str]]:
    """needle's devices that `backends` leaves out because they are not available here, with
    the reason, so that a report says what it did not measure."""
    listed = {b.name for b in backends}
    return [{"name": f"needle {d.name}", "reason": _needle_backend(d.name).reason}
            for d in ndl.all_devices() if not d.enabled() and f"needle {d.name}" not in listed]


# ---- training steps (shared with benchmarks/bench_train.py) ----------------------------
@dataclass(frozen=True)
class TrainSpec:
    """One training-step workload: which model, at what size."""

    model: str  # "mlp", "resnet9" or "lstm-lm"
    params: Tuple[Tuple[str, Any], ...]

    @property
    def kwargs(self) -> Dict[str, Any]:
        return dict(self.params)

    @property
    def title(self) -> str:
        p = self.kwargs
        if self.model == "mlp":
            return f"MLP {'-'.join(map(str, p['sizes']))}, batch {p['batch']}"
        if self.model == "resnet9":
            return f"ResNet-9 {'x'.join(map(str, p['image']))}, batch {p['batch']}"
        return (f"LSTM LM {p['layers']} layers, hidden {p['hidden']}, vocab {p['vocab']}, "
                f"seq {p['seq_len']} x batch {p['batch']}")


def train_specs(scale: str = "full") -> List[TrainSpec]:
    """The course's three models at their usual sizes ("tiny": small enough for a test)."""
    if scale == "tiny":
        return [
            TrainSpec("mlp", (("sizes", (784, 32, 32, 10)), ("batch", 8))),
            TrainSpec("resnet9", (("image", (3, 32, 32)), ("batch", 2))),
            TrainSpec("lstm-lm", (("seq_len", 4), ("batch", 4), ("hidden", 16),
                                  ("embedding", 16), ("vocab", 200), ("layers", 2))),
        ]
    return [
        TrainSpec("mlp", (("sizes", (784, 512, 512, 10)), ("batch", 128))),
        TrainSpec("resnet9", (("image", (3, 32, 32)), ("batch", 128))),
        # Vocabulary of Penn Treebank's size: the (seq*batch, vocab) logits and their
        # softmax dominate the memory traffic.
        TrainSpec("lstm-lm", (("seq_len", 20), ("batch", 20), ("hidden", 100),
                              ("embedding", 100), ("vocab", 10000), ("layers", 2))),
    ]


def needle_model(spec: TrainSpec, device):
    """`spec`'s model on a needle device, with a batch of fixed random data: (model, X, y)."""
    p = spec.kwargs
    rng = np.random.default_rng(0)
    np.random.seed(0)  # needle's initialisers draw from NumPy's global generator
    if spec.model == "mlp":
        sizes = p["sizes"]
        layers: List[nn.Module] = []
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
        model = LanguageModel(p["embedding"], p["vocab"], hidden_size=p["hidden"],
                              num_layers=p["layers"], seq_model="lstm", device=device)
        x = rng.integers(0, p["vocab"], (p["seq_len"], p["batch"])).astype(np.float32)
        labels = rng.integers(0, p["vocab"], p["seq_len"] * p["batch"])
    else:
        raise ValueError(f"unknown model {spec.model!r}")
    X = ndl.Tensor(x, device=device, requires_grad=False)
    y = ndl.Tensor(labels.astype(np.float32), device=device, requires_grad=False)
    return model.train(), X, y


def needle_train_step(spec: TrainSpec, device, lr: float = 0.01) -> Callable[[], None]:
    """One SGD step of `spec`'s model on fixed random data, on a needle device."""
    model, X, y = needle_model(spec, device)
    opt = optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.SoftmaxLoss()
    sequence = spec.model == "lstm-lm"  # LanguageModel returns (logits, hidden state)

    def step() -> None:
        opt.reset_grad()
        out = model(X)[0] if sequence else model(X)
        loss_fn(out, y).backward()
        opt.step()

    return step


def torch_model(spec: TrainSpec, device):
    """The same model in PyTorch, same layers and sizes, with its data: (model, x, labels)."""
    import torch
    from torch import nn as tnn

    p = spec.kwargs
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    if spec.model == "mlp":
        sizes = p["sizes"]
        layers: List[Any] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(tnn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(tnn.ReLU())
        model = tnn.Sequential(*layers)
        x = torch.from_numpy(rng.standard_normal((p["batch"], sizes[0]), dtype=np.float32))
        labels = torch.from_numpy(rng.integers(0, sizes[-1], p["batch"]))
    elif spec.model == "resnet9":
        def conv_bn(c_in, c_out, k, s):
            return tnn.Sequential(tnn.Conv2d(c_in, c_out, k, s, padding=k // 2),
                                  tnn.BatchNorm2d(c_out), tnn.ReLU())

        class Residual(tnn.Module):
            def __init__(self, fn):
                super().__init__()
                self.fn = fn

            def forward(self, x):
                return self.fn(x) + x

        model = tnn.Sequential(
            conv_bn(3, 16, 7, 4), conv_bn(16, 32, 3, 2),
            Residual(tnn.Sequential(conv_bn(32, 32, 3, 1), conv_bn(32, 32, 3, 1))),
            conv_bn(32, 64, 3, 2), conv_bn(64, 128, 3, 2),
            Residual(tnn.Sequential(conv_bn(128, 128, 3, 1), conv_bn(128, 128, 3, 1))),
            tnn.Flatten(), tnn.Linear(128, 128), tnn.ReLU(), tnn.Linear(128, 10))
        x = torch.from_numpy(rng.standard_normal((p["batch"],) + tuple(p["image"]),
                                                 dtype=np.float32))
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

    def step() -> None:
        opt.zero_grad()
        loss_fn(model(x), labels).backward()
        opt.step()

    return step


# ---- workloads -------------------------------------------------------------------------
@dataclass
class Case:
    """One row of a workload's table: `build(backend)` returns the function to time."""

    name: str
    build: Callable[[Backend], Callable[[], object]]
    params: Dict[str, Any] = field(default_factory=dict)
    work: Optional[float] = None  # FLOPs or bytes per call, for throughput workloads
    headline: bool = False  # also shown in the report's summary


@dataclass
class Workload:
    key: str
    title: str
    unit: str  # "GFLOP/s", "GB/s", "us" or "ms"
    note: str
    cases: List[Case]
    repeats: int
    warmup: int
    min_time: float

    @property
    def throughput(self) -> bool:
        return self.unit in ("GFLOP/s", "GB/s")

    def value(self, seconds: float, case: Case) -> float:
        """The table's number for a call of `seconds`."""
        if self.throughput:
            return case.work / seconds / 1e9
        return seconds * {"us": 1e6, "ms": 1e3, "s": 1.0}[self.unit]


def _arrays(backend: Backend, *shapes: Tuple[int, ...]):
    """Standard-normal float32 arrays of `shapes` on the backend (seeded, so every backend
    gets the same numbers)."""
    rng = np.random.default_rng(0)
    data = [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]
    if backend.library == "needle":
        return [ndl.NDArray(a, device=backend.handle) for a in data]
    torch = _import_torch()
    return [torch.from_numpy(a).to(backend.handle) for a in data]


def matmul_workload(sizes: Sequence[int], rectangular: Sequence[Tuple[int, int, int]],
                    **timing) -> Workload:
    def case(m: int, n: int, p: int, label: str, headline: bool = False) -> Case:
        def build(backend: Backend):
            a, b = _arrays(backend, (m, n), (n, p))
            return lambda: a @ b

        return Case(label, build, {"m": m, "n": n, "p": p}, 2.0 * m * n * p, headline)

    cases = [case(s, s, s, f"{s} x {s} x {s}", s == max(sizes)) for s in sizes]
    cases += [case(m, n, p, f"{m} x {n} x {p}") for m, n, p in rectangular]
    return Workload("matmul", "Matrix multiplication (float32)", "GFLOP/s",
                    "(m x n) @ (n x p), output allocated per call: needle's NDArray `a @ b`, "
                    "`torch.matmul`. 2mnp FLOPs per call.", cases, **timing)


def elementwise_workload(n: int, side: int, **timing) -> Workload:
    def unary(fn_name: str):
        def build(backend: Backend):
            (x,) = _arrays(backend, (n,))
            return getattr(x, fn_name)  # x.exp: a method of NDArray and of torch.Tensor
        return build

    def binary(op: Callable[[Any, Any], Any]):
        def build(backend: Backend):
            x, y = _arrays(backend, (n,), (n,))
            return lambda: op(x, y)
        return build

    def reduce(axis: int):
        def build(backend: Backend):
            (m,) = _arrays(backend, (side, side))
            if backend.library == "needle":
                return lambda: m.sum(axis=axis)
            return lambda: m.sum(dim=axis)
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
    return Workload("elementwise", "Elementwise and reduction throughput (float32)", "GB/s",
                    "Memory touched per call (inputs read, output written) over time; outputs "
                    "allocated per call (NDArray ops, torch tensor ops).", cases, **timing)


def overhead_workload(**timing) -> Workload:
    def add(backend: Backend):
        if backend.library == "needle":
            a, b = (ndl.Tensor(np.ones(4), device=backend.handle, requires_grad=False)
                    for _ in range(2))
        else:
            torch = _import_torch()
            a, b = (torch.ones(4, device=backend.handle) for _ in range(2))
        return lambda: a + b

    def backward(backend: Backend):
        if backend.library == "needle":
            x, y, z = (ndl.Tensor(np.ones(4), device=backend.handle) for _ in range(3))
        else:
            torch = _import_torch()
            x, y, z = (torch.ones(4, device=backend.handle, requires_grad=True)
                       for _ in range(3))
        return lambda: (x * y + z).sum().backward()

    cases = [Case("a + b, 4 floats", add, headline=True),
             Case("(x * y + z).sum().backward(), 4 floats", backward)]
    return Workload("overhead", "Eager overhead of tiny ops", "us",
                    "Microseconds per call on 4-element tensors, where the arithmetic is free: "
                    "what is timed is the framework (Tensor creation, dispatch, allocation, "
                    "graph traversal).", cases, **timing)


def train_workload(specs: Sequence[TrainSpec], **timing) -> Workload:
    def case(spec: TrainSpec) -> Case:
        def build(backend: Backend):
            if backend.library == "needle":
                return needle_train_step(spec, backend.handle)
            return torch_train_step(spec, backend.handle)

        return Case(spec.title, build, {"model": spec.model, **spec.kwargs}, headline=True)

    return Workload("train", "Training step", "ms",
                    "One step: zero_grad, forward, softmax cross-entropy loss, backward, SGD "
                    "update (lr 0.01), on fixed random data of the given batch.",
                    [case(s) for s in specs], **timing)


# Presets. quick: 1.5 minutes on 2 cores; full: larger sweeps and more repeats (about 8 minutes);
# tiny: seconds, for the tests.
PRESETS: Dict[str, Dict[str, Any]] = {
    "full": dict(sizes=[64, 128, 256, 512, 1024, 2048],
                 rectangular=[(128, 784, 512), (1024, 4096, 1024), (4096, 256, 4096)],
                 ewise_n=10**7, side=4096, repeats=10, warmup=2, min_time=0.2,
                 train_repeats=7, train_min_time=0.2, scale="full", pause=0.25),
    "quick": dict(sizes=[64, 128, 256, 512, 1024], rectangular=[(128, 784, 512),
                                                                (1024, 4096, 1024)],
                  ewise_n=10**7, side=4096, repeats=5, warmup=1, min_time=0.05,
                  train_repeats=3, train_min_time=0.05, scale="full", pause=0.25),
    "tiny": dict(sizes=[32, 64], rectangular=[(16, 64, 32)], ewise_n=4096, side=64,
                 repeats=2, warmup=1, min_time=0.001, train_repeats=1, train_min_time=0.0,
                 scale="tiny", pause=0.0),
}
WORKLOADS = ("matmul", "elementwise", "overhead", "train")


def build_workloads(preset: Dict[str, Any], keys: Sequence[str] = WORKLOADS) -> List[Workload]:
    timing = dict(repeats=preset["repeats"], warmup=preset["warmup"],
                  min_time=preset["min_time"])
    train_timing = dict(repeats=preset["train_repeats"], warmup=preset["warmup"],
                        min_time=preset["train_min_time"])
    makers = {
        "matmul": lambda: matmul_workload(preset["sizes"], preset["rectangular"], **timing),
        "elementwise": lambda: elementwise_workload(preset["ewise_n"], preset["side"], **timing),
        "overhead": lambda: overhead_workload(**timing),
        "train": lambda: train_workload(train_specs(preset["scale"]), **train_timing),
    }
    return [makers[key]() for key in keys]


# ---- running ---------------------------------------------------------------------------
def _error(error: Exception) -> Dict[str, Any]:
    return {"status": "error", "reason": f"{type(error).__name__}: {error}"[:300]}


def run_case(workload: Workload, case: Case, backends: List[Backend], pause: float = 0.0,
             tick: Callable[[], None] = lambda: None) -> Dict[str, Dict[str, Any]]:
    """One case on every backend: backend name -> a JSON-ready row. A backend that cannot run
    it gets a status and a reason instead of timings.

    The repeats interleave the backends, in an order that rotates between rounds, so a change
    in the machine's load (other processes, clock speed) hits every library alike; each block
    follows an untimed call. `tick` is called once per block, for the progress bar.
    """
    rows: Dict[str, Dict[str, Any]] = {}
    running: Dict[str, Tuple[Backend, Callable[[], object], int]] = {}
    for backend in backends:
        if not backend.available:
            rows[backend.name] = {"status": "unavailable", "reason": backend.reason}
            continue
        try:  # report a failure in the table rather than stop the whole run
            fn = case.build(backend)
            number = warm_up(fn, backend.synchronize, warmup=workload.warmup,
                             min_time=workload.min_time)
            running[backend.name] = (backend, fn, number)
        except Exception as error:
            rows[backend.name] = _error(error)
    times: Dict[str, List[float]] = {name: [] for name in running}
    for round_ in range(max(1, workload.repeats)):
        names = list(running)
        for name in names[round_ % max(1, len(names)):] + names[:round_ % max(1, len(names))]:
            backend, fn, number = running[name]
            if pause and len(running) > 1:
                # BLAS and OpenMP workers spin for a while after a call (OpenBLAS about 0.1 s);
                # on a small machine they would take the cores of the next library.
                time.sleep(pause)
            try:
                # One untimed call first: the previous library left the caches, the TLB and
                # the allocator's free lists in its own state, and a training loop runs one
                # library continuously (this halved the needle cpu ResNet-9 step after a
                # NumPy-backend step).
                fn()
                times[name].append(time_block(fn, backend.synchronize, number))
            except Exception as error:
                rows[name] = _error(error)
                del running[name]
            tick()
    for name, (backend, fn, number) in running.items():
        timing = Timing(times[name], number)
        rows[name] = {"status": "ok", "times_s": timing.times, "calls_per_repeat": number,
                      "median_s": timing.median, "spread": timing.spread,
                      "value": workload.value(timing.median, case)}
    return {b.name: rows[b.name] for b in backends}


def _add_ratios(rows: Dict[str, Dict[str, Any]], backends: List[Backend]) -> None:
    """Speed relative to PyTorch on the same hardware and to needle's cpu backend (a ratio of
    median times: 0.86 = 86% of PyTorch's speed, 22.0 = 22x needle cpu's speed)."""
    def median(name: str) -> Optional[float]:
        row = rows.get(name, {})
        return row.get("median_s") if row.get("status") == "ok" else None

    cpu = median("needle cpu")
    for backend in backends:
        row = rows[backend.name]
        if row["status"] != "ok":
            continue
        torch_time = median(f"torch {backend.hardware}") if backend.library == "needle" else None
        row["speed_vs_torch"] = torch_time / row["median_s"] if torch_time else None
        row["speed_vs_needle_cpu"] = cpu / row["median_s"] if cpu else None


def run_benchmarks(workloads: List[Workload], backends: List[Backend], *, pause: float = 0.1,
                   progress: bool = True) -> List[Dict[str, Any]]:
    """Every case of every workload on every backend, with a progress bar."""
    from tqdm.auto import tqdm

    available = sum(b.available for b in backends)
    total = sum(len(w.cases) * max(1, w.repeats) for w in workloads) * available
    results, done = [], 0
    with tqdm(total=total, desc="needle bench", unit="block", leave=False,
              disable=None if progress else True) as bar:
        for workload in workloads:
            cases = []
            for case in workload.cases:
                bar.set_postfix_str(f"{workload.key}: {case.name}")
                rows = run_case(workload, case, backends, pause, tick=bar.update)
                done += max(1, workload.repeats) * available
                bar.update(done - bar.n)  # the blocks a failed backend did not run
                _add_ratios(rows, backends)
                cases.append({"name": case.name, "params": case.params, "work": case.work,
                              "headline": case.headline, "results": rows})
            results.append({"key": workload.key, "title": workload.title, "unit": workload.unit,
                            "higher_is_better": workload.throughput, "note": workload.note,
                            "repeats": workload.repeats, "warmup": workload.warmup,
                            "min_time_s": workload.min_time, "cases": cases})
    return results


# ---- machine description ---------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], text=True,
                                  capture_output=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_names(backends: List[Backend]) -> List[str]:
    names = []
    torch = _import_torch()
    if torch is not None and torch.cuda.is_available():
        names += [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if any(b.available and b.hardware == "mps" for b in backends):
        names.append(f"Apple GPU (Metal), {platform.machine()}")
    if not names and any(b.available and b.hardware == "cuda" for b in backends):
        names.append("CUDA GPU (name unknown: torch with CUDA is not installed)")
    return names


def git_commit() -> str:
    """The short commit of needle's source checkout (+"-dirty" with local changes), or
    "unknown" outside a git checkout."""
    folder = os.path.dirname(os.path.abspath(ndl.__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, text=True,
                                capture_output=True, timeout=10)
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=folder, text=True, capture_output=True, timeout=10)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info(backends: List[Backend], threads: Dict[str, Any],
                 load_start: Optional[List[float]] = None) -> Dict[str, Any]:
    torch = _import_torch()
    versions = {"needle": ndl.__version__, "python": platform.python_version(),
                "numpy": np.__version__, "torch": torch.__version__ if torch else None}
    cpu_backend = ndl.cpu().mod
    if cpu_backend is not None and hasattr(cpu_backend, "__gemm_isa__"):
        versions["needle_cpu_gemm"] = cpu_backend.__gemm_isa__
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "gpus": gpu_names(backends), "threads": threads, "versions": versions,
        "commit": git_commit(),
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                if k in os.environ},
        # Other processes' load skews every number: a reader should see it.
        "load_average": {"start": load_start, "end": _load_average()},
    }


# ---- report ----------------------------------------------------------------------------
def _format_value(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3g}"


def _format_cell(row: Dict[str, Any]) -> str:
    if row["status"] == "ok":
        return _format_value(row["value"])
    return "not installed" if row["reason"] == "not installed" else \
        ("not available" if row["status"] == "unavailable" else "error")


def _percent(ratio: Optional[float]) -> str:
    if not ratio:
        return "—"
    return f"{ratio * 100:.0f}%" if ratio >= 0.1 else f"{ratio * 100:.2g}%"


def _times(ratio: Optional[float]) -> str:
    return f"{ratio:.2f}x" if ratio else "—"


def _table(header: List[str], rows: List[List[str]], right_from: int = 1) -> List[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(r) + " |" for r in [header, align] + rows]


def render_workload(workload: Dict[str, Any], backends: List[str]) -> List[str]:
    better = "higher is better" if workload["higher_is_better"] else "lower is better"
    lines = [f"## {workload['title']}", "",
             f"{workload['unit']}, {better}. {workload['note']} Median of "
             f"{workload['repeats']} repeat(s) after {workload['warmup']} warm-up call(s); spread: "
             "half the interquartile range of the repeats, relative to the median.", ""]
    rows = []
    for case in workload["cases"]:
        for i, name in enumerate(backends):
            row = case["results"][name]
            first = case["name"] if i == 0 else ""
            if row["status"] != "ok":
                detail = row["reason"] if row["status"] == "error" else ""
                rows.append([first, name, _format_cell(row), detail, "", ""])
                continue
            vs_torch = _percent(row.get("speed_vs_torch")) if name.startswith("needle") else ""
            rows.append([first, name, _format_value(row["value"]),
                         f"±{row['spread'] * 50:.0f}%", vs_torch,
                         _times(row.get("speed_vs_needle_cpu"))])
    lines += _table(["case", "backend", workload["unit"], "spread", "speed vs torch (same device)",
                     "speed vs needle cpu"], rows, right_from=2)
    return lines + [""]


def render_summary(results: Dict[str, Any]) -> List[str]:
    """The headline cases, one column per backend, plus needle's speed relative to PyTorch."""
    names = [b["name"] for b in results["backends"]]
    available = {b["name"] for b in results["backends"] if b["available"]}
    pairs = [(b["name"], f"torch {b['hardware']}") for b in results["backends"]
             if b["library"] == "needle" and b["name"] in available
             and f"torch {b['hardware']}" in available]
    header = ["workload", "unit"] + names + [f"{n} vs {t}" for n, t in pairs]
    rows = []
    for workload in results["workloads"]:
        for case in workload["cases"]:
            if not case["headline"]:
                continue
            cells = [_format_cell(case["results"][n]) for n in names]
            ratios = [_percent(case["results"][n].get("speed_vs_torch")) for n, _ in pairs]
            label = case["name"] if workload["key"] != "matmul" else f"matmul {case['name']}"
            rows.append([label, workload["unit"]] + cells + ratios)
    return _table(header, rows, right_from=2)


def _load_sentence(load: Dict[str, Any]) -> str:
    if not load.get("start") or not load.get("end"):
        return ""
    return (f" Load average (1 min) {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at "
            "the end (other processes sharing the cores make every number noisier).")


def render_report(results: Dict[str, Any]) -> str:
    machine = results["machine"]
    threads = machine["threads"]
    gpus = ", ".join(machine["gpus"]) or "none"
    lines = [
        "# needle bench", "",
        f"{results['created']}, `{results['command']}` ({results['mode']} mode), needle "
        f"{machine['versions']['needle']} at commit {machine['commit']}.", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; GPU: {gpus}. Threads: "
        f"{threads['requested']} for every library (needle {threads.get('needle')}, torch "
        f"{threads.get('torch', 'n/a')}, BLAS by environment). Versions: "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v) + "."
        + _load_sentence(machine["load_average"]), "",
        "Speeds compare median times: 86% means 86% of PyTorch's speed on the same device "
        "(PyTorch takes 0.86x the time); 22x means 22 times needle cpu's speed.", "",
    ]
    missing = [b for b in results["backends"] if not b["available"]]
    missing += results.get("not_measured", [])
    for b in missing:
        lines.append(f"- {b['name']}: {b['reason']}")
    if missing:
        lines.append("")
    lines += ["## Summary", ""] + render_summary(results) + [""]
    names = [b["name"] for b in results["backends"]]
    for workload in results["workloads"]:
        lines += render_workload(workload, names)
    if results.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in results["plots"]] + [""]
    return "\n".join(lines)


# ---- plots -----------------------------------------------------------------------------
def write_plots(results: Dict[str, Any], out: str) -> List[str]:
    """matmul.png (GFLOP/s against size), elementwise.png and train.png (time per step); []
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    names = [b["name"] for b in results["backends"] if b["available"]]
    by_key = {w["key"]: w for w in results["workloads"]}
    threads = results["machine"]["threads"]["requested"]

    if "matmul" in by_key:
        square = [c for c in by_key["matmul"]["cases"]
                  if c["params"]["m"] == c["params"]["n"] == c["params"]["p"]]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in names:
            points = [(c["params"]["m"], c["results"][name]["value"]) for c in square
                      if c["results"][name]["status"] == "ok"]
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="matrix size n (n x n @ n x n)", ylabel="GFLOP/s",
               title=f"float32 matmul, {threads} thread(s)")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, plt, out, "matmul.png"))

    for key, filename, log in (("elementwise", "elementwise.png", False),
                               ("train", "train.png", True)):
        if key not in by_key:
            continue
        workload = by_key[key]
        fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(workload["cases"])), 4.5))
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            values = [c["results"][name].get("value", 0.0) or 0.0 for c in workload["cases"]]
            ax.bar([x + i * width for x in range(len(values))], values, width, label=name)
        ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(workload["cases"]))],
                      [c["name"].split(",")[0] for c in workload["cases"]])
        if log:
            ax.set_yscale("log")
        ax.set(ylabel=workload["unit"], title=f"{workload['title']}, {threads} thread(s)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
        written.append(_save(fig, plt, out, filename))
    return written


def _save(fig, plt, out: str, filename: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(out, filename), dpi=110)
    plt.close(fig)
    return filename


# ---- command line ----------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`needle bench`'s options (cli.py adds them to its `bench` subcommand)."""
    parser.add_argument("--quick", action="store_true",
                        help="smaller sweeps and fewer repeats: 1.5 minutes on 2 cores")
    parser.add_argument("--devices", default=None,
                        help="comma-separated: cpu, cuda, cpu_numpy, needle:cpu, torch:mps ... "
                             "(default: every available needle and PyTorch device)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every library (default: all cores)")
    parser.add_argument("--out", default=os.path.join("runs", "bench"),
                        help="output folder (default: runs/bench)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {', '.join(WORKLOADS)}")
    parser.add_argument("--sizes", default=None,
                        help="square matmul sizes, comma-separated (overrides the preset)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="repeats per measurement (overrides the preset)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Test budget: tiny arrays and models, so the whole pipeline runs in seconds.
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)


def _as_argv(args: argparse.Namespace) -> List[str]:
    """The options of `args` as command-line arguments, for the re-executed process."""
    argv = []
    for flag in ("quick", "no_progress", "tiny"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    for option in ("devices", "threads", "out", "workloads", "sizes", "repeats"):
        value = getattr(args, option)
        if value is not None and not (option == "workloads" and value == ",".join(WORKLOADS)):
            argv += ["--" + option, str(value)]
    return argv


def run(args: argparse.Namespace) -> int:
    """`needle bench`: measure, then write report.md, results.json and the plots in --out."""
    threads = args.threads or os.cpu_count() or 1
    if threads < 1:
        raise SystemExit("needle bench: --threads must be at least 1")
    if not threads_pinned(threads):
        # NumPy's BLAS took its thread count from the environment when it loaded: run the
        # benchmark in a fresh process whose environment gives every library `threads`.
        args.threads = threads
        command = [sys.executable, "-m", "needle", "bench"] + _as_argv(args)
        try:
            return subprocess.run(command, env=thread_env(threads)).returncode
        except KeyboardInterrupt:  # the child got the Ctrl-C too, and has stopped
            return 130

    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(WORKLOADS))
    if unknown:
        raise SystemExit(f"needle bench: unknown workload(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(WORKLOADS)}")
    mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    preset = dict(PRESETS[mode])
    if args.sizes:
        preset["sizes"] = [int(s) for s in args.sizes.split(",")]
    if args.repeats is not None:
        preset["repeats"] = preset["train_repeats"] = max(1, args.repeats)
    try:
        backends = discover_backends(args.devices)
    except ValueError as error:
        raise SystemExit(f"needle bench: {error}") from None
    if not backends:
        raise SystemExit("needle bench: no devices selected")

    used_threads = set_threads(threads)
    workloads = build_workloads(preset, keys)
    print(f"needle bench ({mode}): {', '.join(b.name for b in backends if b.available)} on "
          f"{threads} thread(s); writing to {args.out}", flush=True)
    started, load_start = time.perf_counter(), _load_average()
    measured = run_benchmarks(workloads, backends, pause=preset["pause"],
                              progress=not args.no_progress)
    results = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "needle bench " + " ".join(_as_argv(args)),
        "mode": mode,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine_info(backends, used_threads, load_start),
        "backends": [{"name": b.name, "library": b.library, "device": b.device,
                      "hardware": b.hardware, "available": b.available,
                      "reason": b.reason or None} for b in backends],
        "not_measured": unlisted_devices(backends),
        "workloads": measured,
    }
    os.makedirs(args.out, exist_ok=True)
    results["plots"] = write_plots(results, args.out)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(render_report(results))
    print("\n".join(render_summary(results)))
    plots = f", {', '.join(results['plots'])}" if results["plots"] else \
        " (install matplotlib for the plots)"
    print(f"done in {results['seconds']:.0f} s: wrote {os.path.join(args.out, 'report.md')}, "
          f"results.json{plots}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="needle bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
