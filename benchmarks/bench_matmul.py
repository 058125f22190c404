"""matmul: needle's C++ CPU backend against NumPy (OpenBLAS) and PyTorch, same run.

    python benchmarks/bench_matmul.py --threads 1 [--plot matmul.png] [--write RESULTS.md]
    python benchmarks/bench_matmul.py --dtypes float32,bfloat16 --sizes 1024,2048 --threads 1,2
    python benchmarks/bench_matmul.py --device cuda --dtypes float32,bfloat16,float16

--device cuda measures needle's CUDA GEMMs against torch.matmul on the same GPU (TF32 off, as
needle's float32 kernel computes; no NumPy column there).

"needle cpu" is the public path (NDArray `a @ b`, output allocated per call); "needle raw"
calls the backend's matmul primitive on preallocated buffers. A 16-bit dtype of --dtypes adds
needle and torch columns in it ("needle cpu bfloat16": the float32 draws rounded to it; NumPy
has no 16-bit GEMM, torch's float16 on the CPU runs at ~1 GFLOP/s and is left out). Timing,
thread pinning (every library gets each --threads count, BLAS by environment in a fresh
process), the machine description and the tables come from needle.apps.bench.harness.
"""

import argparse
import dataclasses
import sys

from needle.apps.bench import harness
from needle.apps.bench.workloads import matmul_workload

SIZES = [256, 512, 1024, 2048]
RECTANGULAR = [(1024, 4096, 1024)]
DTYPE_OF: dict[str, str] = {}  # column (backend name) -> its dtype, set by configure


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtypes", default="float32", help="float32, bfloat16, float16, ...")
    parser.add_argument("--sizes", help="comma-separated square sizes (default 256 to 2048)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))


def column(name: str, dtype: str) -> str:
    return name if dtype == "float32" else f"{name} {dtype}"


def in_column_dtype(case: harness.Case) -> harness.Case:
    """The case in its column's dtype; the backend primitive alone for "needle raw"."""
    m, n, p = (case.params[k] for k in "mnp")

    def build(backend: harness.Backend):
        dtype = DTYPE_OF.get(backend.name, "float32")
        raw = backend.name.startswith("needle raw")
        if dtype == "float32" and not raw:
            return case.build(backend)
        a, b = harness.arrays(backend, (m, n), (n, p))
        if dtype != "float32":
            torch = harness.import_torch()
            a, b = (
                x.astype(dtype) if backend.library == "needle" else x.to(getattr(torch, dtype))
                for x in (a, b)
            )
        if not raw:
            return lambda: a @ b
        mod = backend.handle.mod
        out = mod.Array(m * p, dtype)
        return lambda: mod.matmul(a._handle, b._handle, out, m, n, p)

    return dataclasses.replace(case, build=build)


def configure(args):
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else SIZES
    rectangular = [] if args.sizes else RECTANGULAR
    workload = matmul_workload(sizes, rectangular, repeats=5, warmup=2, min_time=0.2)
    workload.cases = [in_column_dtype(case) for case in workload.cases]
    dtypes = args.dtypes.split(",")
    workload.title = f"Matrix multiplication ({', '.join(dtypes)})"
    cpu = args.device == "cpu"
    if not cpu and (torch := harness.import_torch()) is not None:
        torch.backends.cuda.matmul.allow_tf32 = False  # cuBLAS's FP32 path, as needle computes
    backends = [harness.numpy_backend()] if "float32" in dtypes and cpu else []
    names = [f"needle {args.device}", "needle raw", f"torch {args.device}"]
    for dtype in dtypes:
        for name in names[: 2 + has_torch_column(dtype, args.device)]:
            make = harness.torch_backend if name.startswith("torch") else harness.needle_backend
            backends.append(make(args.device, column(name, dtype)))
            DTYPE_OF[column(name, dtype)] = dtype
    return [workload], backends


def has_torch_column(dtype: str, device: str) -> bool:
    return dtype != "float16" or device != "cpu"


def ratios(argv: list[str]) -> list[tuple[str, str]]:
    """needle against NumPy (CPU only) and torch in float32; in a 16-bit dtype against needle
    float32 and torch in that dtype."""
    parser = argparse.ArgumentParser(add_help=False)
    arguments(parser)
    args = parser.parse_known_args(argv)[0]
    dtypes, dev = args.dtypes.split(","), args.device
    f32 = "float32" in dtypes
    pairs = [(f"needle {dev}", f"torch {dev}")]
    if dev == "cpu":
        pairs = [("needle cpu", "numpy"), pairs[0], ("needle raw", "numpy")]
    float32_pairs = len(pairs)
    for half in (d for d in dtypes if d != "float32"):
        raw, torch = column("needle raw", half), column(f"torch {dev}", half)
        pairs += [(raw, "needle raw")] * f32 + [(raw, torch)] * has_torch_column(half, dev)
    return pairs if f32 else pairs[float32_pairs:]


if __name__ == "__main__":
    sys.exit(harness.script_main(sys.modules[__name__], ratios=ratios(sys.argv[1:])))
