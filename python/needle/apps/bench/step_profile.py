"""Where a needle training step spends its time: inside each kind of backend kernel (timed by
ndl.profile) and, by difference, outside them (Python: autograd, op dispatch, NDArray
bookkeeping, and NumPy calls such as one_hot's); then cProfile's top functions.
`python benchmarks/bench_train.py --profile` prints it."""

from __future__ import annotations

import collections
import cProfile
import io
import pstats

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


def profile_step(spec: TrainSpec, threads: int, steps: int) -> None:
    """Where a needle cpu training step (of `spec`, in its precision) spends its time: kernels by
    kind, Python by difference, then cProfile's top functions."""
    set_threads(threads)
    model = spec.model
    device = ndl.cpu()
    step = needle_train_step(spec, device)
    plain = measure(step, repeats=steps, warmup=5, min_time=0.0).median
    with ndl.profile() as prof:  # every primitive call on cpu() timed (needle.profiler)
        for _ in range(steps):
            step()
    wrapped = prof.wall / steps
    timed = [r for r in prof.rows("primitive") if r.device == device.name]

    by_kind: dict[str, float] = collections.defaultdict(float)
    calls_by_kind: dict[str, int] = collections.Counter()
    for row in timed:
        by_kind[_kind(row.name)] += row.total / steps
        calls_by_kind[_kind(row.name)] += row.calls // steps
    # Python by difference from the step without the profiler, whose own cost (a few us an
    # event, for ops as well as kernels) would otherwise count as Python.
    python = max(0.0, plain - sum(by_kind.values()))
    n_calls = sum(r.calls for r in timed) / steps
    print(
        f"\nneedle cpu {spec.title} step, {threads} thread(s): {plain * 1e3:.2f} ms median "
        f"({wrapped * 1e3:.2f} ms profiled, {n_calls:.0f} kernel calls/step)"
    )
    rows = sorted(by_kind.items(), key=lambda kv: -kv[1]) + [("Python, NumPy (difference)", python)]
    for kind, seconds in rows:
        calls = f"{calls_by_kind[kind]:5d} calls" if kind in calls_by_kind else " " * 11
        print(f"  {kind:28s} {seconds * 1e3:7.2f} ms  {calls}  {seconds / plain * 100:5.1f}%")
    top = sorted(timed, key=lambda r: -r.total)[:8]
    print(
        "  top kernels: "
        + ", ".join(f"{r.name} {r.total / steps * 1e3:.2f} ms ({r.calls // steps})" for r in top)
    )
    gflops = sum(r.flops for r in timed if _kind(r.name) == "matmul") / steps / 1e9
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
