"""Training-step time: needle's C++ CPU backend against PyTorch on the CPU, same threads.

One step is zero_grad, forward, softmax cross-entropy, backward and an SGD update, on fixed
random data: an MLP 784-512-512-10 (batch 128), ResNet-9 on 3x32x32 (batch 128) and a 2-layer
LSTM language model (seq 20 x batch 20, hidden and embedding 100, vocabulary 10,000). The
models and steps are needle.bench's, which `needle bench` times too.

Each thread count runs in its own process whose environment gives every library that many
threads (NumPy's BLAS reads it once, at load); needle and torch also get set_num_threads.

    python benchmarks/bench_train.py                   1 and 2 threads, all three models
    python benchmarks/bench_train.py --threads 1 --models mlp --profile

--profile breaks each needle step down: time inside each kind of backend kernel (measured by
wrapping the backend module's functions) and, by difference, time outside the kernels:
Python (autograd, op dispatch, NDArray bookkeeping) and NumPy calls such as one_hot's; then
cProfile's top functions.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import needle as ndl
from needle import bench

REPEATS = {"mlp": 30, "resnet9": 5, "lstm-lm": 7}
PROFILE_STEPS = {"mlp": 100, "resnet9": 3, "lstm-lm": 5}


def measure_models(models: List[str], threads: int, repeats_scale: float) -> Dict[str, dict]:
    """Median ms per step of needle cpu and torch cpu for each model, in this process."""
    import torch

    used = bench.set_threads(threads)
    specs = {s.model: s for s in bench.train_specs()}
    results = {}
    for model in models:
        spec = specs[model]
        repeats = max(3, int(REPEATS[model] * repeats_scale))
        row = {"title": spec.title}
        steps = {"needle cpu": lambda: bench.needle_train_step(spec, ndl.cpu()),
                 "torch cpu": lambda: bench.torch_train_step(spec, torch.device("cpu"))}
        for name, build in steps.items():
            time.sleep(0.2)  # let the previous library's worker threads go idle
            timing = bench.measure(build(), repeats=repeats, warmup=2, min_time=0.0)
            row[name] = {"median_ms": timing.median * 1e3, "spread": timing.spread,
                         "times_ms": [t * 1e3 for t in timing.times]}
        results[model] = row
    return {"threads": used, "models": results}


def run_pinned(threads: int, models: List[str], repeats_scale: float) -> Dict[str, dict]:
    """measure_models() in a child process whose environment pins every library's threads."""
    if bench.threads_pinned(threads):
        return measure_models(models, threads, repeats_scale)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--threads", str(threads),
                   "--models", ",".join(models), "--repeats-scale", str(repeats_scale),
                   "--json", path]
        subprocess.run(command, env=bench.thread_env(threads), check=True)
        with open(path) as f:
            return json.load(f)


def print_table(by_threads: Dict[int, Dict[str, dict]]) -> None:
    header = ["model", "threads", "needle cpu ms", "torch cpu ms", "needle / torch"]
    rows = []
    for threads, result in by_threads.items():
        for model, row in result["models"].items():
            needle_ms, torch_ms = row["needle cpu"]["median_ms"], row["torch cpu"]["median_ms"]
            rows.append([row["title"], str(threads),
                         f"{needle_ms:.2f} ±{row['needle cpu']['spread'] * 50:.0f}%",
                         f"{torch_ms:.2f} ±{row['torch cpu']['spread'] * 50:.0f}%",
                         f"{needle_ms / torch_ms:.2f}x"])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))))
    print("median of repeats after 2 warm-up steps; ± is half the interquartile range")


# ---- profile of the needle MLP step ----------------------------------------------------
KERNEL_KINDS = (("matmul", ("matmul",)), ("elementwise", ("ewise_", "scalar_")),
                ("reduction", ("reduce_",)), ("compact / setitem copies", ("compact",
                                                                          "ewise_setitem",
                                                                          "scalar_setitem")),
                ("allocation", ("Array",)), ("fill / transfers", ("fill", "from_numpy",
                                                                 "to_numpy")))


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
        self.seconds: Dict[str, float] = collections.defaultdict(float)
        self.calls: Dict[str, int] = collections.Counter()
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


def profile_step(model: str, threads: int, steps: int) -> None:
    """Where a needle cpu training step spends its time: kernels by kind, Python by difference,
    then cProfile's top functions."""
    bench.set_threads(threads)
    spec = next(s for s in bench.train_specs() if s.model == model)
    device = ndl.cpu()
    step = bench.needle_train_step(spec, device)
    plain = bench.measure(step, repeats=steps, warmup=5, min_time=0.0).median

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

    by_kind: Dict[str, float] = collections.defaultdict(float)
    calls_by_kind: Dict[str, int] = collections.Counter()
    for name, seconds in timed.seconds.items():
        by_kind[_kind(name)] += seconds / steps
        calls_by_kind[_kind(name)] += timed.calls[name] // steps
    kernels = sum(by_kind.values())
    # The wrapper's own cost (two clock reads and a dict update per call) is not the
    # framework's: take it out of the Python share, measured on an empty function.
    per_call = _wrapper_cost()
    n_calls = sum(timed.calls.values()) / steps
    python = max(0.0, wrapped - kernels - n_calls * per_call)
    print(f"\nneedle cpu {spec.title} step, {threads} thread(s): {plain * 1e3:.2f} ms median "
          f"({wrapped * 1e3:.2f} ms with the kernels wrapped, {n_calls:.0f} kernel calls/step)")
    rows = sorted(by_kind.items(), key=lambda kv: -kv[1]) + [("Python, NumPy (difference)", python)]
    for kind, seconds in rows:
        calls = f"{calls_by_kind[kind]:5d} calls" if kind in calls_by_kind else " " * 11
        print(f"  {kind:28s} {seconds * 1e3:7.2f} ms  {calls}  {seconds / wrapped * 100:5.1f}%")
    top = sorted(timed.seconds.items(), key=lambda kv: -kv[1])[:8]
    print("  top kernels: " + ", ".join(f"{name} {seconds / steps * 1e3:.2f} ms "
                                         f"({timed.calls[name] // steps})"
                                         for name, seconds in top))
    gflops = timed.matmul_flops / steps / 1e9
    needed = ""
    if model == "mlp":
        sizes, batch = spec.kwargs["sizes"], spec.kwargs["batch"]
        layers = list(zip(sizes[:-1], sizes[1:]))
        forward = sum(2.0 * batch * a * b for a, b in layers)
        # forward, d/dW of every layer, d/dX of every layer but the first (data needs none)
        minimum = 2 * forward + sum(2.0 * batch * a * b for a, b in layers[1:])
        needed = f"needed: {minimum / 1e9:.3f}; "
    print(f"  matmul work: {gflops:.3f} GFLOP/step ({needed}"
          f"{gflops / max(by_kind['matmul'], 1e-12):.0f} GFLOP/s inside the kernel)")

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--models", default="mlp,resnet9,lstm-lm",
                        help="comma-separated subset of mlp, resnet9, lstm-lm")
    parser.add_argument("--repeats-scale", type=float, default=1.0,
                        help="multiply every model's number of repeats")
    parser.add_argument("--profile", action="store_true",
                        help="also break each needle step down (at each thread count)")
    parser.add_argument("--json", help=argparse.SUPPRESS)  # a child's result, for its parent
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(measure_models(models, thread_counts[0], args.repeats_scale), f)
        return
    by_threads = {t: run_pinned(t, models, args.repeats_scale) for t in thread_counts}
    print_table(by_threads)
    if args.profile:
        for model in models:
            for t in thread_counts:
                profile_step(model, t, PROFILE_STEPS[model])


if __name__ == "__main__":
    main()
