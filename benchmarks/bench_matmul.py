"""float32 matmul: needle's C++ CPU backend against NumPy (OpenBLAS) and PyTorch, same run.

    python benchmarks/bench_matmul.py --threads 1 [--plot matmul.png] [--write RESULTS.md]

"needle cpu" is the public path (NDArray `a @ b`, output allocated per call); "needle raw"
calls the backend's matmul primitive on preallocated buffers. Timing, thread pinning (every
library gets each --threads count, BLAS by environment in a fresh process), the machine
description and the tables come from needle.apps.bench.harness, as for `needle bench`.
"""

import dataclasses
import sys

from needle.apps.bench import harness
from needle.apps.bench.workloads import matmul_workload

SIZES = [256, 512, 1024, 2048]
RECTANGULAR = [(1024, 4096, 1024)]


def with_raw_primitive(case: harness.Case) -> harness.Case:
    """The case, plus the backend primitive alone for the "needle raw" backend."""
    m, n, p = (case.params[k] for k in "mnp")

    def build(backend: harness.Backend):
        if backend.name != "needle raw":
            return case.build(backend)
        mod = backend.handle.mod
        a, b = (x._handle for x in harness.arrays(backend, (m, n), (n, p)))
        out = mod.Array(m * p)
        return lambda: mod.matmul(a, b, out, m, n, p)

    return dataclasses.replace(case, build=build)


def configure(args):
    workload = matmul_workload(SIZES, RECTANGULAR, repeats=5, warmup=2, min_time=0.2)
    workload.cases = [with_raw_primitive(case) for case in workload.cases]
    return [workload], [
        harness.numpy_backend(),
        harness.torch_backend("cpu"),
        harness.needle_backend("cpu"),
        harness.needle_backend("cpu", "needle raw"),
    ]


if __name__ == "__main__":
    sys.exit(
        harness.script_main(
            sys.modules[__name__],
            ratios=[("needle cpu", "numpy"), ("needle cpu", "torch cpu"), ("needle raw", "numpy")],
        )
    )
