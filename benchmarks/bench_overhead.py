"""Eager overhead of tiny ops: needle (each CPU device) against PyTorch, same run.

Tiny arrays make the arithmetic free, so what is timed is the framework's own cost per op:
Tensor creation, op dispatch, NDArray allocation and, for backward, graph traversal.

    python benchmarks/bench_overhead.py [--repeats 7] [--number 20000]
"""

import argparse
import statistics
import timeit

import numpy as np

import needle as ndl


def median_us(fn, number: int, repeats: int) -> float:
    """Median over `repeats` of the mean time per call (microseconds), after a warm-up."""
    fn()
    times = timeit.repeat(fn, number=number, repeat=repeats)
    return statistics.median(times) / number * 1e6


def needle_cases(device):
    a = ndl.Tensor(np.ones(4), device=device, requires_grad=False)
    b = ndl.Tensor(np.ones(4), device=device, requires_grad=False)
    x, y, z = (ndl.Tensor(np.ones(4), device=device) for _ in range(3))

    def backward():
        (x * y + z).sum().backward()

    return {"a + b (4 floats)": lambda: a + b, "(x*y+z).sum().backward()": backward}


def torch_cases():
    import torch

    torch.set_num_threads(1)
    a, b = torch.ones(4), torch.ones(4)
    x, y, z = (torch.ones(4, requires_grad=True) for _ in range(3))

    def backward():
        (x * y + z).sum().backward()

    return {"a + b (4 floats)": lambda: a + b, "(x*y+z).sum().backward()": backward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()

    columns = {}
    for device in (ndl.cpu(), ndl.cpu_numpy()):
        if device.enabled():
            columns[f"needle {device.name}"] = needle_cases(device)
    try:
        columns["torch cpu"] = torch_cases()
    except ImportError:
        print("(PyTorch not installed: no torch column)")

    rows = list(next(iter(columns.values())))
    results = {
        col: {row: median_us(fn, args.number if "backward" not in row else args.number // 10,
                             args.repeats) for row, fn in cases.items()}
        for col, cases in columns.items()
    }
    header = f"{'op (median us per call)':30}" + "".join(f"{c:>18}" for c in columns)
    if "torch cpu" in columns:
        header += f"{'needle cpu / torch':>20}"
    print(header)
    for row in rows:
        line = f"{row:30}" + "".join(f"{results[c][row]:18.2f}" for c in columns)
        if "torch cpu" in columns and "needle cpu" in results:
            line += f"{results['needle cpu'][row] / results['torch cpu'][row]:19.2f}x"
        print(line)


if __name__ == "__main__":
    main()
