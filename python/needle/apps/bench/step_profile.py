"""Where a needle training step spends its time: inside each kind of backend kernel (timed by
wrapping the backend module's functions) and, by difference, outside them (Python: autograd,
op dispatch, NDArray bookkeeping, and NumPy calls such as one_hot's); then cProfile's top
functions. `python benchmarks/bench_train.py --profile` prints it."""

from __future__ import annotations

import collections
import cProfile
import io
import pstats
import time

import needle as ndl
from needle.apps.bench.harness import measure, set_threads
from needle.apps.bench.workloads import TrainSpec, needle_train_step

KERNEL_KINDS = (
    ("matmul", ("matmul",)),
    ("convolution", ("conv2d",)),
    ("dtype conversion", ("astype",)),
    ("elementwise", ("ewise_", "scalar_")),
    ("reduction", ("reduce_",)),
    ("compact / setitem copies", ("compact", "ewise_setitem", "scalar_setitem")),
    ("allocation", ("Array",)),
    ("fill / transfers", ("fill", "from_numpy", "to_numpy")),
)


def _kind(name: str) -> str:
    if name.endswith("setitem"):
        return "compact / setitem copies"
    for kind, prefixes in KERNEL_KINDS:
        if name.startswith(prefixes):
            return kind
    return "other kernels"


class TimedBackend:
    """Stands in for a backend module: forwards every call and adds up its time by name."""

    def __init__(self, mod):
        self._mod = mod
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.Counter()
        self.matmul_flops = 0.0

    def __getattr__(self, name):
        target = getattr(self._mod, name)
        if not callable(target):
            return target

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = target(*args, **kwargs)
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1
            if name == "matmul_strided":  # (a, b, out, batch, m, n, p, ...)
                self.matmul_flops += 2.0 * args[3] * args[4] * args[5] * args[6]
            elif name == "matmul":  # (a, b, out, m, n, p)
                self.matmul_flops += 2.0 * args[3] * args[4] * args[5]
            return out

        return timed


def profile_step(spec: TrainSpec, threads: int, steps: int) -> None:
    """Where a needle cpu training step (of `spec`, in its precision) spends its time: kernels by
    kind, Python by difference, then cProfile's top functions."""
    set_threads(threads)
    model = spec.model
    device = ndl.cpu()
    step = needle_train_step(spec, device)
    plain = measure(step, repeats=steps, warmup=5, min_time=0.0).median

    real = device.mod
    timed = TimedBackend(real)
    device.mod = timed  # every NDArray on cpu() dispatches through device.mod
    try:
        for _ in range(5):
            step()
        timed.seconds.clear()
        timed.calls.clear()
        timed.matmul_flops = 0.0
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wrapped = (time.perf_counter() - start) / steps
    finally:
        device.mod = real

    by_kind: dict[str, float] = collections.defaultdict(float)
    calls_by_kind: dict[str, int] = collections.Counter()
    for name, seconds in timed.seconds.items():
        by_kind[_kind(name)] += seconds / steps
        calls_by_kind[_kind(name)] += timed.calls[name] // steps
    kernels = sum(by_kind.values())
    # The wrapper's own cost (two clock reads and a dict update per call) is not the
    # framework's: take it out of the Python share, measured on an empty function.
    per_call = _wrapper_cost()
    n_calls = sum(timed.calls.values()) / steps
    python = max(0.0, wrapped - kernels - n_calls * per_call)
    print(
        f"\nneedle cpu {spec.title} step, {threads} thread(s): {plain * 1e3:.2f} ms median "
        f"({wrapped * 1e3:.2f} ms with the kernels wrapped, {n_calls:.0f} kernel calls/step)"
    )
    rows = sorted(by_kind.items(), key=lambda kv: -kv[1]) + [("Python, NumPy (difference)", python)]
    for kind, seconds in rows:
        calls = f"{calls_by_kind[kind]:5d} calls" if kind in calls_by_kind else " " * 11
        print(f"  {kind:28s} {seconds * 1e3:7.2f} ms  {calls}  {seconds / wrapped * 100:5.1f}%")
    top = sorted(timed.seconds.items(), key=lambda kv: -kv[1])[:8]
    print(
        "  top kernels: "
        + ", ".join(
            f"{name} {seconds / steps * 1e3:.2f} ms ({timed.calls[name] // steps})"
            for name, seconds in top
        )
    )
    gflops = timed.matmul_flops / steps / 1e9
    needed = ""
    if model == "mlp":
        sizes, batch = spec.kwargs["sizes"], spec.kwargs["batch"]
        layers = list(zip(sizes[:-1], sizes[1:]))
        forward = sum(2.0 * batch * a * b for a, b in layers)
        # forward, d/dW of every layer, d/dX of every layer but the first (data needs none)
        minimum = 2 * forward + sum(2.0 * batch * a * b for a, b in layers[1:])
        needed = f"needed: {minimum / 1e9:.3f}; "
    print(
        f"  matmul work: {gflops:.3f} GFLOP/step ({needed}"
        f"{gflops / max(by_kind['matmul'], 1e-12):.0f} GFLOP/s inside the kernel)"
    )

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    print("\ncProfile, top 15 by own time (" + f"{steps} steps" + "):")
    print("\n".join(line for line in text.getvalue().splitlines()[6:] if line.strip()))


def _wrapper_cost() -> float:
    probe = TimedBackend(type("Empty", (), {"f": staticmethod(lambda: None)}))
    fn = probe.f
    start = time.perf_counter()
    for _ in range(20000):
        fn()
    wrapped = (time.perf_counter() - start) / 20000
    start = time.perf_counter()
    for _ in range(20000):
        (lambda: None)()
    return max(0.0, wrapped - (time.perf_counter() - start) / 20000)
