"""Elementwise ops and axis sums: needle's C++ CPU backend against NumPy and PyTorch, same run.

float32 throughout: add, mul and exp of 1e7 elements, and sums over axis 0 and axis 1 of a
4096 x 4096 array, in GB/s of memory touched (inputs read plus output written). The same
thread count goes to every library (see bench_matmul.py, whose harness this reuses); NumPy's
ufuncs and reductions are single-threaded whatever it is.

    python benchmarks/bench_ops.py --threads 1 [--plot ops.png]

"other load" is the cores other processes used meanwhile (see bench_matmul.py).
Two tables: the public paths, which allocate their output (needle NDArray ops, `x + y`,
`a.sum(axis=0)`), and the kernels alone on preallocated output (NumPy's out=, torch's out=,
needle's backend primitives).
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Tuple

from bench_matmul import (
    OtherLoad,
    blocked_medians,
    pin_threads,
    print_table,
    set_library_threads,
    write_plot,
)

N = 10**7
SIDE = 4096


def build_cases(np, nd, torch):
    """name -> (bytes touched, {library: fn}) for the public paths and the kernels alone."""
    rng = np.random.default_rng(0)
    mod, cpu = nd.ndarray_backend_cpu, nd.cpu()
    x = rng.standard_normal(N, dtype=np.float32)
    y = rng.standard_normal(N, dtype=np.float32)
    m = rng.standard_normal((SIDE, SIDE), dtype=np.float32)
    nx, ny, nm = nd.array(x, device=cpu), nd.array(y, device=cpu), nd.array(m, device=cpu)
    out = np.empty_like(x)
    out_row = np.empty(SIDE, np.float32)
    raw_x, raw_y, raw_m = nx._handle, ny._handle, nm._handle
    raw_out, raw_row = mod.Array(N), mod.Array(SIDE)
    vec, mat = 4 * N, 4 * SIDE * SIDE

    public: Dict[str, Tuple[int, Dict[str, Callable]]] = {
        "add 1e7": (3 * vec, {"numpy": lambda: x + y, "needle": lambda: nx + ny}),
        "mul 1e7": (3 * vec, {"numpy": lambda: x * y, "needle": lambda: nx * ny}),
        "exp 1e7": (2 * vec, {"numpy": lambda: np.exp(x), "needle": lambda: nx.exp()}),
        "sum axis 0 4096^2": (mat, {"numpy": lambda: m.sum(axis=0),
                                    "needle": lambda: nm.sum(axis=0)}),
        "sum axis 1 4096^2": (mat, {"numpy": lambda: m.sum(axis=1),
                                    "needle": lambda: nm.sum(axis=1)}),
    }
    kernels: Dict[str, Tuple[int, Dict[str, Callable]]] = {
        "add 1e7": (3 * vec, {"numpy": lambda: np.add(x, y, out=out),
                              "needle": lambda: mod.ewise_add(raw_x, raw_y, raw_out)}),
        "mul 1e7": (3 * vec, {"numpy": lambda: np.multiply(x, y, out=out),
                              "needle": lambda: mod.ewise_mul(raw_x, raw_y, raw_out)}),
        "exp 1e7": (2 * vec, {"numpy": lambda: np.exp(x, out=out),
                              "needle": lambda: mod.ewise_exp(raw_x, raw_out)}),
        "sum axis 0 4096^2": (mat, {
            "numpy": lambda: np.sum(m, axis=0, out=out_row),
            "needle": lambda: mod.reduce_sum_axis(raw_m, raw_row, 1, SIDE, SIDE)}),
        "sum axis 1 4096^2": (mat, {
            "numpy": lambda: np.sum(m, axis=1, out=out_row),
            "needle": lambda: mod.reduce_sum(raw_m, raw_row, SIDE)}),
    }
    if torch is not None:
        tx, ty, tm = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(m)
        tout, trow = torch.empty(N), torch.empty(SIDE)
        public["add 1e7"][1]["torch"] = lambda: tx + ty
        public["mul 1e7"][1]["torch"] = lambda: tx * ty
        public["exp 1e7"][1]["torch"] = lambda: torch.exp(tx)
        public["sum axis 0 4096^2"][1]["torch"] = lambda: tm.sum(dim=0)
        public["sum axis 1 4096^2"][1]["torch"] = lambda: tm.sum(dim=1)
        kernels["add 1e7"][1]["torch"] = lambda: torch.add(tx, ty, out=tout)
        kernels["mul 1e7"][1]["torch"] = lambda: torch.mul(tx, ty, out=tout)
        kernels["exp 1e7"][1]["torch"] = lambda: torch.exp(tx, out=tout)
        kernels["sum axis 0 4096^2"][1]["torch"] = lambda: torch.sum(tm, dim=0, out=trow)
        kernels["sum axis 1 4096^2"][1]["torch"] = lambda: torch.sum(tm, dim=1, out=trow)
    # Check the needle results once against NumPy before timing anything.
    np.testing.assert_allclose((nx + ny).numpy(), x + y)
    np.testing.assert_allclose(nx.exp().numpy(), np.exp(x), rtol=1e-5)
    np.testing.assert_allclose(nm.sum(axis=0).numpy(), m.sum(axis=0, dtype=np.float64), rtol=1e-4,
                               atol=1e-3)
    np.testing.assert_allclose(nm.sum(axis=1).numpy(), m.sum(axis=1, dtype=np.float64), rtol=1e-4,
                               atol=1e-3)
    return public, kernels


def run_table(title: str, cases, seconds: float) -> Tuple[List[str], Dict[str, List[float]]]:
    header = ["op", "numpy GB/s", "torch GB/s", "needle GB/s", "needle/numpy", "needle/torch",
              "other load"]
    rows, series = [], {"numpy": [], "torch": [], "needle": []}
    for name, (nbytes, fns) in cases.items():
        with OtherLoad() as load:
            med = blocked_medians(fns, seconds * len(fns))
        gbs = {k: nbytes / v / 1e9 for k, v in med.items()}
        torch_gbs = gbs.get("torch", float("nan"))
        rows.append([name, f"{gbs['numpy']:.1f}", f"{torch_gbs:.1f}", f"{gbs['needle']:.1f}",
                     f"{gbs['needle'] / gbs['numpy']:.2f}", f"{gbs['needle'] / torch_gbs:.2f}",
                     f"{load.cores:.2f}"])
        for k in series:
            series[k].append(gbs.get(k, 0.0))
    print(title)
    print_table(header, rows)
    print()
    return [r[0] for r in rows], series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.5,
                        help="rough time budget per op and library")
    parser.add_argument("--plot", help="also write a bar chart of the public-path GB/s here")
    args = parser.parse_args()
    pin_threads(args.threads)

    import numpy as np

    import needle.backend_ndarray as nd

    print(set_library_threads(args.threads))
    try:
        import torch
    except ImportError:
        torch = None
    public, kernels = build_cases(np, nd, torch)
    labels, series = run_table(
        f"public paths (output allocated per call), {args.threads} thread(s)", public,
        args.seconds)
    run_table(f"kernels alone (preallocated output), {args.threads} thread(s)", kernels,
              args.seconds)
    if args.plot:
        write_plot(args.plot, f"float32 elementwise and sums, {args.threads} thread(s)", labels,
                   series, "GB/s")


if __name__ == "__main__":
    main()
