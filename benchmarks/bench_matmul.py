"""float32 matmul: needle's C++ CPU backend against NumPy (OpenBLAS) and PyTorch, same run.

Every library gets the same thread count: needle by set_num_threads, PyTorch by
torch.set_num_threads, NumPy's BLAS by OPENBLAS_NUM_THREADS / OMP_NUM_THREADS /
MKL_NUM_THREADS, which BLAS reads only when it loads, so the script re-executes itself with
them set. Each library runs a block of calls per round, the order rotating between rounds,
and the table reports the median call (after warm-up calls).

    python benchmarks/bench_matmul.py --threads 1 [--plot matmul.png]

Columns: "needle a@b" is the public path (NDArray @, output allocated per call);
"needle raw" calls the backend primitive on preallocated buffers; "other load" is the number
of cores other processes kept busy meanwhile (a row with load > 0.1 was measured with
company and its ratios are unreliable, for 2 threads especially).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NEEDLE_NUM_THREADS")


# ---- shared harness (bench_ops.py imports these) ---------------------------------------
def pin_threads(threads: int) -> None:
    """Make every library use `threads`: re-exec with the BLAS variables set if they differ.

    Must run before numpy is imported."""
    if any(os.environ.get(k) != str(threads) for k in THREAD_ENV):
        env = dict(os.environ, **{k: str(threads) for k in THREAD_ENV})
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def set_library_threads(threads: int) -> str:
    """Set needle's and torch's threads; return a line describing every library's setting."""
    import needle.backend_ndarray as nd

    nd.set_num_threads(threads)
    parts = [f"needle {nd.get_num_threads()} ({nd.ndarray_backend_cpu.__gemm_isa__})"]
    try:
        import torch

        torch.set_num_threads(threads)
        parts.append(f"torch {torch.get_num_threads()}")
    except ImportError:
        pass
    try:
        import numpy  # noqa: F401  (loads the BLAS that threadpoolctl inspects)
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            if info["user_api"] == "blas":
                parts.append(
                    f"numpy {info['internal_api']} {info.get('version')} "
                    f"{info.get('architecture', '')} {info['num_threads']}"
                )
    except ImportError:
        parts.append(f"numpy BLAS {os.environ['OPENBLAS_NUM_THREADS']} (env)")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            parts.append(f"{var}={os.environ[var]}")
    return "threads: " + ", ".join(parts)


def blocked_medians(fns: Dict[str, Callable[[], object]], seconds: float, rounds: int = 3,
                    pause: float = 0.2) -> Dict[str, float]:
    """Median seconds per call of each function.

    Each round runs every function for a block of calls (about seconds / rounds in all),
    after a pause: BLAS and OpenMP workers spin for up to ~0.1 s after a call, and on a
    small machine one library's spinning threads would take the cores of the next. The
    order rotates between rounds, so slow drifts in the machine's load hit every library.
    """
    names = list(fns)
    calls = {}
    for name, fn in fns.items():  # warm-up (first-call allocations, thread start) and sizing
        start = time.perf_counter()
        fn()
        fn()
        one = max((time.perf_counter() - start) / 2, 1e-6)
        calls[name] = int(min(500, max(3, seconds / rounds / len(fns) / one)))
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            time.sleep(pause)
            fn = fns[name]
            for _ in range(calls[name]):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


class OtherLoad:
    """Cores used by other processes while a block of code ran (Linux; NaN elsewhere).

    Machine-wide busy time from /proc/stat minus this process's CPU time, over wall time:
    on a shared machine it tells which rows of a table were measured with company.
    """

    def __enter__(self) -> "OtherLoad":
        self._start = (self._machine_busy(), self._own_cpu(), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        busy, own, wall = self._machine_busy(), self._own_cpu(), time.perf_counter()
        b0, o0, w0 = self._start
        self.cores = max(0.0, (busy - b0) - (own - o0)) / (wall - w0)

    @staticmethod
    def _machine_busy() -> float:
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]
        except OSError:
            return float("nan")
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait

    @staticmethod
    def _own_cpu() -> float:
        t = os.times()
        return t.user + t.system


def print_table(header: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def write_plot(path: str, title: str, labels: List[str], series: Dict[str, List[float]],
               unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))], labels,
                  rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# ---- matmul ----------------------------------------------------------------------------
SHAPES = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048),
          (1024, 4096, 1024)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="rough time budget per shape and library")
    parser.add_argument("--plot", help="also write a bar chart of GFLOP/s to this PNG")
    args = parser.parse_args()
    pin_threads(args.threads)

    import numpy as np

    import needle.backend_ndarray as nd

    print(set_library_threads(args.threads))
    try:
        import torch
    except ImportError:
        torch = None
    cpu = nd.cpu()
    mod = nd.ndarray_backend_cpu
    rng = np.random.default_rng(0)

    header = ["m x n x p", "numpy", "torch", "needle a@b", "needle raw", "a@b/numpy",
              "a@b/torch", "raw/numpy", "other load"]
    rows, series = [], {"numpy": [], "torch": [], "needle a@b": []}
    for m, n, p in SHAPES:
        a = rng.standard_normal((m, n), dtype=np.float32)
        b = rng.standard_normal((n, p), dtype=np.float32)
        na, nb = nd.array(a, device=cpu), nd.array(b, device=cpu)
        ra, rb, ro = mod.Array(m * n), mod.Array(n * p), mod.Array(m * p)
        mod.from_numpy(a, ra)
        mod.from_numpy(b, rb)
        fns = {
            "numpy": lambda: a @ b,
            "needle a@b": lambda: na @ nb,
            "needle raw": lambda: mod.matmul(ra, rb, ro, m, n, p),
        }
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            fns["torch"] = lambda: ta @ tb
        flops = 2.0 * m * n * p
        with OtherLoad() as load:
            med = blocked_medians(fns, args.seconds * len(fns))
        gf = {k: flops / v / 1e9 for k, v in med.items()}
        got = (na @ nb).numpy()
        np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-3, atol=1e-3 * n**0.5)
        torch_gf = gf.get("torch", float("nan"))
        rows.append([
            f"{m} x {n} x {p}", f"{gf['numpy']:.1f}", f"{torch_gf:.1f}",
            f"{gf['needle a@b']:.1f}", f"{gf['needle raw']:.1f}",
            f"{gf['needle a@b'] / gf['numpy']:.2f}", f"{gf['needle a@b'] / torch_gf:.2f}",
            f"{gf['needle raw'] / gf['numpy']:.2f}", f"{load.cores:.2f}",
        ])
        for k in series:
            series[k].append(gf.get(k, 0.0))
    print(f"float32 matmul, GFLOP/s (median call), {args.threads} thread(s)")
    print_table(header, rows)
    if args.plot:
        write_plot(args.plot, f"float32 matmul, {args.threads} thread(s)",
                   [r[0] for r in rows], series, "GFLOP/s")


if __name__ == "__main__":
    main()
