"""Eager overhead of tiny ops: needle (each CPU device) against PyTorch, same run.

    python benchmarks/bench_overhead.py [--repeats 7]

Tiny arrays make the arithmetic free, so what is timed is the framework's own cost per op:
Tensor creation, op dispatch, NDArray allocation and, for backward, graph traversal. The
workload is `needle bench`'s; timing and threads come from needle.apps.bench.harness.
"""

import sys

from needle.apps.bench import harness
from needle.apps.bench.workloads import overhead_workload


def configure(args):
    return [overhead_workload(repeats=7, warmup=2, min_time=0.1)], harness.discover_backends(
        "needle:cpu,needle:cpu_numpy,torch:cpu"
    )


if __name__ == "__main__":
    sys.exit(harness.script_main(sys.modules[__name__], ratios=[("needle cpu", "torch cpu")]))
