"""The nn ops of issue 16: needle's C++ CPU backend against PyTorch's CPU, same run and threads.

    python benchmarks/bench_nn_ops.py [--threads 1] [--repeats 7] [--cases cat,gelu] [--tiny]

float32, at sizes a small CNN or GPT block uses: max_pool2d and avg_pool2d of 32x64x32x32
with a 2x2 kernel; cat of 4 x (256, 1024) along dim 1; gather from (256, 1024) with a
(256, 256) index along dim 1; softmax along the last dim and layer_norm over the last dim of
(256, 1024); gelu exact and tanh of (256, 1024); causal scaled_dot_product_attention of
(8, 8, 128, 64) queries, keys and values. Two tables: the forward alone (inputs that need no
gradient) and forward plus backward (inputs that need one, backward from a fixed random
gradient of the output). The ratio column is torch's time over needle's: 100% = as fast,
67% = needle takes 1.5x torch's time. --tiny shrinks every size and the timing, to check
that the script runs.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np

import needle as ndl
from needle.apps.bench import harness

FULL = dict(image=(32, 64, 32, 32), rows=(256, 1024), index=(256, 256), heads=(8, 8, 128, 64))
TINY = dict(image=(2, 3, 8, 8), rows=(4, 16), index=(4, 5), heads=(1, 2, 8, 4))


def cases(sizes: dict[str, tuple[int, ...]]) -> list[tuple[str, list, Callable, Callable, Any]]:
    """(name, input shapes, needle fn, torch fn, gather index): the needle fn takes (needle,
    *Tensors), the torch fn (torch.nn.functional with torch and the index as _TorchF, *tensors).
    """
    img, rows, heads = sizes["image"], sizes["rows"], sizes["heads"]
    index = np.random.default_rng(1).integers(0, rows[1], size=sizes["index"])
    shape = "x".join(map(str, img))

    def gelu(approximate: str):
        return (
            lambda nd, x: nd.ops.gelu(x, approximate=approximate),
            lambda F, x: F.gelu(x, approximate=approximate),
        )

    table = [
        (
            f"max_pool2d {shape} k2",
            [img],
            lambda nd, x: nd.ops.max_pool2d(x, 2),
            lambda F, x: F.max_pool2d(x, 2),
        ),
        (
            f"avg_pool2d {shape} k2",
            [img],
            lambda nd, x: nd.ops.avg_pool2d(x, 2),
            lambda F, x: F.avg_pool2d(x, 2),
        ),
        (
            f"cat 4 x {rows} dim 1",
            [rows] * 4,
            lambda nd, *xs: nd.ops.cat(xs, 1),
            lambda F, *xs: F.torch.cat(xs, 1),
        ),
        (
            f"gather {rows} index {tuple(index.shape)} dim 1",
            [rows],
            lambda nd, x: nd.ops.gather(x, 1, index),
            lambda F, x: F.torch.gather(x, 1, F.index),
        ),
        (
            f"softmax {rows} dim -1",
            [rows],
            lambda nd, x: nd.ops.softmax(x, -1),
            lambda F, x: F.softmax(x, -1),
        ),
        (
            f"layer_norm {rows}",
            [rows],
            lambda nd, x: nd.ops.layer_norm(x, (rows[1],)),
            lambda F, x: F.layer_norm(x, (rows[1],)),
        ),
        (f"gelu exact {rows}", [rows], *gelu("none")),
        (f"gelu tanh {rows}", [rows], *gelu("tanh")),
        (
            f"sdpa {heads} causal",
            [heads] * 3,
            lambda nd, q, k, v: nd.ops.scaled_dot_product_attention(q, k, v, is_causal=True),
            lambda F, q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        ),
    ]
    return [(name, shapes, fn, tfn, index) for name, shapes, fn, tfn in table]


class _TorchF:
    """torch.nn.functional with torch itself and the gather index at hand, for the cases."""

    def __init__(self, torch, index: np.ndarray):
        import torch.nn.functional as functional

        self._functional, self.torch = functional, torch
        self.index = torch.from_numpy(index)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._functional, name)


def build(shapes, needle_fn, torch_fn, index, backward: bool):
    """A case's build: its inputs made once, then a call of the op (and its backward)."""

    def make(backend: harness.Backend) -> Callable[[], object]:
        rng = np.random.default_rng(0)
        data = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
        if backend.library == "needle":
            xs = [ndl.Tensor(a, device=backend.handle, requires_grad=backward) for a in data]
            if not backward:
                return lambda: needle_fn(ndl, *xs).realize_cached_data()
            grad = ndl.Tensor(
                rng.standard_normal(needle_fn(ndl, *xs).shape, dtype=np.float32),
                device=backend.handle,
                requires_grad=False,
            )
            return lambda: needle_fn(ndl, *xs).backward(grad)
        torch = harness.import_torch()
        F = _TorchF(torch, index)
        ts = [torch.from_numpy(a).to(backend.handle).requires_grad_(backward) for a in data]
        if not backward:
            return lambda: torch_fn(F, *ts)
        grad = torch.from_numpy(
            rng.standard_normal(tuple(torch_fn(F, *ts).shape), dtype=np.float32)
        ).to(backend.handle)
        return lambda: torch_fn(F, *ts).backward(grad)

    return make


def arguments(parser) -> None:
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and timing (a check)")
    parser.add_argument("--cases", help="comma-separated ops to run (e.g. cat,gelu; default all)")


def configure(args):
    tiny = getattr(args, "tiny", False)
    timing = (
        dict(repeats=1, warmup=0, min_time=0.0, max_time=0.0)
        if tiny
        else dict(repeats=7, warmup=2, min_time=0.1)
    )
    table = cases(TINY if tiny else FULL)
    if getattr(args, "cases", None):
        wanted = set(args.cases.split(","))
        table = [case for case in table if case[0].split()[0] in wanted]
    workloads = [
        harness.Workload(
            key,
            title,
            "ms",
            "",
            [harness.Case(name, build(s, f, t, i, backward)) for name, s, f, t, i in table],
            **timing,
        )
        for key, title, backward in (
            ("forward", "nn ops, forward (float32)", False),
            ("backward", "nn ops, forward + backward (float32)", True),
        )
    ]
    return workloads, [harness.needle_backend("cpu"), harness.torch_backend("cpu")]


if __name__ == "__main__":
    sys.exit(harness.script_main(sys.modules[__name__], ratios=[("needle cpu", "torch cpu")]))
