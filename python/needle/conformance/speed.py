"""`needle check-backend --bench`: each row's speed against needle's cpu backend.

A row is timed on its largest conformance case (the most elements: the one that measures
throughput rather than call overhead), in float32 where the row takes it, through what
NDArray would call (the module's own row, else the table's fallback over its core rows), with
the benchmark harness's `measure` (warm-up, then blocks of calls of about 20 ms, median).
"""

from __future__ import annotations

import contextlib
from typing import Any

import needle as ndl
from needle.apps.bench.harness import measure
from needle.backend_ndarray import primitives
from needle.conformance import report
from needle.conformance.calls import marshal
from needle.conformance.cases import cases

# 3 repeats of ~20 ms blocks: ~0.1 s a row and module, 10 s for the whole table, where the
# default of `needle bench` (5 of 50 ms) would take 30 s; a ratio, not a published number.
REPEATS, BLOCK_S = 3, 0.02


def _seconds(mod, prim, case, dtype: str) -> float:
    kwargs, _ = marshal(mod, prim.name, *case.args, dtype=dtype)
    own = getattr(mod, prim.name, None)
    fn = own if own is not None else (lambda **kw: prim.fallback(mod, **kw))
    sync = getattr(mod, "synchronize", None) or (lambda: None)
    return measure(lambda: fn(**kwargs), sync, repeats=REPEATS, min_time=BLOCK_S).median


def bench(run, prim, dtypes: list[str]) -> dict[str, Any]:
    """{"dtype", "case", "seconds", "cpu_seconds"} of the row's largest case (cpu_seconds
    None where needle's cpu backend is not built or cannot run it)."""
    dtype = "float32" if "float32" in dtypes else dtypes[0]
    case = max(cases(prim, run.backend, dtype), key=lambda c: report.elements(c.args))
    run.send({"kind": "case", "row": prim.name, "dtype": dtype, "label": f"timing {case.label}",
              "call": report.reproducer(prim, case.args, dtype, run.course)})  # fmt: skip
    seconds = _seconds(run.subject, prim, case, dtype)
    cpu_seconds = None
    cpu = ndl.cpu()
    if cpu.enabled() and dtype in primitives.backend_dtypes(cpu.mod):
        # another tile size or a dtype the cpu row lacks: no ratio, not a failure
        with contextlib.suppress(TypeError, ValueError, IndexError, RuntimeError):
            cpu_seconds = _seconds(cpu.mod, prim, case, dtype)
    return {"dtype": dtype, "case": case.label, "seconds": seconds, "cpu_seconds": cpu_seconds}
