"""Elementwise ops and axis sums: needle's C++ CPU backend against NumPy and PyTorch, same run.

    python benchmarks/bench_ops.py --threads 1 [--plot ops.png]

float32: add, mul and exp of 1e7 elements and sums over each axis of a 4096 x 4096 array, in
GB/s of memory touched (inputs read, output written). Two tables: the public paths, which
allocate their output (`needle bench`'s elementwise workload), and the kernels alone on
preallocated output (NumPy's and torch's out=, needle's backend primitives). NumPy's ufuncs
and reductions are single-threaded whatever the thread count.
"""

import dataclasses
import sys

import numpy as np

from needle.apps.bench import harness
from needle.apps.bench.workloads import elementwise_workload

N, SIDE = 10**7, 4096
OPS = ("add", "mul", "exp", "sum0", "sum1")  # the order of the elementwise workload's cases


def kernel(op: str):
    """A case's build: the kernel of `op` alone, on preallocated output, for each library."""
    axis = {"sum0": 0, "sum1": 1}.get(op)
    size = N if axis is None else SIDE

    def build(backend: harness.Backend):
        shape = (N,) if axis is None else (SIDE, SIDE)
        x, y = harness.arrays(backend, shape, shape if op in ("add", "mul") else (1,))
        if backend.library == "needle":
            mod, a, b = backend.handle.mod, x._handle, y._handle
            out = mod.Array(size)
            return {
                "add": lambda: mod.ewise_add(a, b, out),
                "mul": lambda: mod.ewise_mul(a, b, out),
                "exp": lambda: mod.ewise_exp(a, out),
                "sum0": lambda: mod.reduce_sum_axis(a, out, 1, SIDE, SIDE),
                "sum1": lambda: mod.reduce_sum(a, out, SIDE),
            }[op]
        lib = np if backend.library == "numpy" else harness.import_torch()
        out = lib.empty(size, dtype=lib.float32)
        return {
            "add": lambda: lib.add(x, y, out=out),
            "mul": lambda: lib.multiply(x, y, out=out),
            "exp": lambda: lib.exp(x, out=out),
            "sum0": lambda: lib.sum(x, 0, out=out),
            "sum1": lambda: lib.sum(x, 1, out=out),
        }[op]

    return build


def configure(args):
    timing = dict(repeats=5, warmup=2, min_time=0.2)
    public = elementwise_workload(N, SIDE, **timing)
    kernels = harness.Workload(
        "kernels",
        "Kernels alone, preallocated output (float32)",
        "GB/s",
        "",
        [dataclasses.replace(case, build=kernel(op)) for case, op in zip(public.cases, OPS)],
        **timing,
    )
    return [public, kernels], [
        harness.numpy_backend(),
        harness.torch_backend("cpu"),
        harness.needle_backend("cpu"),
    ]


if __name__ == "__main__":
    sys.exit(
        harness.script_main(
            sys.modules[__name__], ratios=[("needle cpu", "numpy"), ("needle cpu", "torch cpu")]
        )
    )
