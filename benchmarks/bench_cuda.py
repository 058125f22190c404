"""needle's CUDA backend against PyTorch on the same GPU, in the same run.

    python benchmarks/bench_cuda.py [--sizes 512,1024,2048,4096,8192] [--batches 128,1024]
                                    [--write benchmarks/RESULTS.md]

1. float32 matmul sweep, n x n @ n x n: needle (NDArray @ on ndl.cuda(): the hand-written
   SGEMM, output allocated per call) against torch.matmul with TF32 off (cuBLAS's FP32 path:
   torch.backends.cuda.matmul.allow_tf32 = False). TFLOP/s = 2 n^3 / time.
2. One training step of the MLP 784-512-512-10 (ReLU, softmax cross-entropy, SGD lr 0.01:
   zero grads, forward, backward, update) at batch 128 and 1024: needle on ndl.cuda()
   against PyTorch on CUDA.
Targets (issue 5): SGEMM at 4096 at least 0.7x cuBLAS; the MLP step at most 2x PyTorch's time.

Timing: every measurement synchronises the device before starting and before stopping the
clock; each row reports the median of --repeats timed calls after warm-up calls. With
--write, a dated section (GPU, driver, CUDA, commit, the tables) is appended to the file.
Without a GPU (or without the CUDA backend, or without a CUDA build of PyTorch) the script
says so and exits 0; needle's side still runs when only PyTorch's CUDA is missing.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np


def median_time(fn: Callable[[], None], sync: Callable[[], None], warmup: int,
                repeats: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_torch():
    """PyTorch with CUDA, or None with the reason printed."""
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: the PyTorch columns are skipped")
        return None
    if not torch.cuda.is_available():
        print(f"PyTorch {torch.__version__} has no usable CUDA: the PyTorch columns are skipped")
        return None
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 cuBLAS, as needle computes
    torch.backends.cudnn.allow_tf32 = False
    return torch


def bench_matmul(sizes: List[int], torch, repeats: int) -> List[dict]:
    import needle as ndl
    from needle.backend_ndarray import NDArray

    device, mod = ndl.cuda(), ndl.cuda().mod
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        x = rng.standard_normal((n, n), dtype=np.float32)
        y = rng.standard_normal((n, n), dtype=np.float32)
        a, b = NDArray(x, device=device), NDArray(y, device=device)
        reps = max(3, min(repeats, int(2e11 / n**3)))
        t_needle = median_time(lambda: a @ b, mod.synchronize, 2, reps)
        # A spot check of the result against float64 NumPy on a few rows.
        got = (a @ b).numpy()[:4]
        expected = x[:4].astype(np.float64) @ y.astype(np.float64)
        error = float(np.max(np.abs(got - expected)) / np.sqrt(n))
        row = {"n": n, "needle_ms": t_needle * 1e3, "needle_tflops": 2 * n**3 / t_needle / 1e12,
               "check": error}
        if torch is not None:
            ta, tb = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
            t_torch = median_time(lambda: torch.matmul(ta, tb), torch.cuda.synchronize, 2, reps)
            row.update(torch_ms=t_torch * 1e3, torch_tflops=2 * n**3 / t_torch / 1e12,
                       ratio=t_torch / t_needle)
            del ta, tb
        rows.append(row)
    return rows


def needle_mlp_step(batch: int):
    import needle as ndl

    device = ndl.cuda()
    model = ndl.nn.Sequential(
        ndl.nn.Linear(784, 512, device=device), ndl.nn.ReLU(),
        ndl.nn.Linear(512, 512, device=device), ndl.nn.ReLU(),
        ndl.nn.Linear(512, 10, device=device))
    opt = ndl.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = ndl.nn.SoftmaxLoss()
    rng = np.random.default_rng(0)
    x = ndl.Tensor(rng.standard_normal((batch, 784), dtype=np.float32), device=device)
    y = ndl.Tensor(rng.integers(0, 10, batch).astype(np.float32), device=device)

    def step():
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step, device.mod.synchronize


def torch_mlp_step(torch, batch: int):
    nn = torch.nn
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, 784, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step, torch.cuda.synchronize


def bench_mlp(batches: List[int], torch, repeats: int) -> List[dict]:
    rows = []
    for batch in batches:
        step, sync = needle_mlp_step(batch)
        row = {"batch": batch, "needle_ms": median_time(step, sync, 5, repeats) * 1e3}
        if torch is not None:
            t_step, t_sync = torch_mlp_step(torch, batch)
            row["torch_ms"] = median_time(t_step, t_sync, 5, repeats) * 1e3
            row["ratio"] = row["needle_ms"] / row["torch_ms"]
        rows.append(row)
    return rows


def matmul_table(rows: List[dict]) -> str:
    lines = ["| n | needle ms | needle TFLOP/s | cuBLAS ms | cuBLAS TFLOP/s "
             "| needle / cuBLAS speed | max err / sqrt(n) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['needle_ms']:.3f} | {r['needle_tflops']:.1f} | "
            f"{r.get('torch_ms', float('nan')):.3f} | {r.get('torch_tflops', float('nan')):.1f} | "
            f"{r.get('ratio', float('nan')):.2f}x | {r['check']:.1e} |")
    return "\n".join(lines)


def mlp_table(rows: List[dict]) -> str:
    lines = ["| batch | needle ms/step | PyTorch ms/step | needle / PyTorch time |",
             "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['needle_ms']:.3f} | "
                     f"{r.get('torch_ms', float('nan')):.3f} | "
                     f"{r.get('ratio', float('nan')):.2f}x |")
    return "\n".join(lines)


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512,1024,2048,4096,8192")
    parser.add_argument("--batches", default="128,1024")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--write", type=Path, help="append a results section to this file")
    args = parser.parse_args(argv)

    import needle as ndl

    if not ndl.cuda().enabled():
        from needle.backend_ndarray import ndarray as nd

        why = "the CUDA backend is not built" if nd.ndarray_backend_cuda is None \
            else "no NVIDIA GPU is visible (the CUDA backend is built)"
        print(f"bench_cuda: needs an NVIDIA GPU: {why}; nothing to measure here.")
        return 0
    info = ndl.cuda().mod.device_info()
    torch = load_torch()
    header = (f"GPU: {info['name']} ({info['sm_count']} SMs, compute capability "
              f"{info['compute_capability'][0]}.{info['compute_capability'][1]}); driver CUDA "
              f"{cuda_version(info['driver_version'])}, needle built with CUDA runtime "
              f"{cuda_version(info['runtime_version'])}"
              + (f"; PyTorch {torch.__version__} (CUDA {torch.version.cuda})" if torch else ""))
    print(header)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    batches = [int(b) for b in args.batches.split(",") if b]
    matmul_rows = bench_matmul(sizes, torch, args.repeats)
    print("\nfloat32 matmul, n x n @ n x n (TF32 off)\n" + matmul_table(matmul_rows))
    mlp_rows = bench_mlp(batches, torch, args.repeats)
    print("\nMLP 784-512-512-10 training step (SGD)\n" + mlp_table(mlp_rows))
    if args.write:
        driver = ""
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                     "--format=csv,noheader"], capture_output=True, text=True,
                                    timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
        section = (f"\n## CUDA backend vs PyTorch — {datetime.date.today().isoformat()}\n\n"
                   f"`python benchmarks/bench_cuda.py` at commit {commit()}. {header}"
                   + (f"; NVIDIA driver {driver}" if driver else "") + ".\n\n"
                   "float32 matmul (n x n @ n x n), median call; cuBLAS through torch.matmul with"
                   " TF32 off. Target: at least 0.7x cuBLAS's speed at 4096.\n\n"
                   + matmul_table(matmul_rows) +
                   "\n\nMLP 784-512-512-10 training step (forward, backward, SGD), median step."
                   " Target: at most 2x PyTorch's time.\n\n" + mlp_table(mlp_rows) + "\n")
        with open(args.write, "a") as f:
            f.write(section)
        print(f"\nappended to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
