"""The divergence finder: run the same function on several devices, with the same inputs and
weights, and name the first op whose output (forward) or whose gradient (backward) differs
beyond a tolerance: the op, where user code created it, its inputs, and the largest error and
where it is. ``ndl.debug.compare(fn, *inputs)``; ``needle train --compare-devices a,b``.

Each run records every op as it is made (Value.make_from_op, swapped in for the run only:
nothing is checked when no comparison runs) with a NumPy copy of its output, and every call
of an op's gradient with copies of the partial adjoints it sends each input. Forward ops are
compared in the order they were made; then, in the order backward visited them, the
adjoints each op's gradient produced (so an op whose gradient is wrong is named even when
the devices build that gradient from different ops: a native conv gradient against a
composite one).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import autograd
from .autograd import Op, Tensor, TensorTuple, Value

_HERE = os.path.dirname(os.path.abspath(__file__))
# Frames in these files are the framework's own: a creation site is the first frame outside.
_CORE = tuple(
    os.path.join(_HERE, p)
    for p in ("autograd.py", "ops", "backend_ndarray", "debug.py", "amp.py", "capture.py")
)
TOLERANCES = {  # (rtol, atol) when compare() is given none: a few ulps of accumulated rounding
    "float64": (1e-9, 1e-12),
    "float32": (1e-3, 1e-4),
    "float16": (2e-2, 1e-3),
    "bfloat16": (5e-2, 1e-2),
}


def _site() -> str:
    """The first frame outside needle's core (a module's forward, say) and, when that is
    needle's own, the first frame outside needle (the user's code that called it)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_CORE):
        frame = frame.f_back
    sites = []
    while frame is not None and len(sites) < 2:
        code = frame.f_code
        if not sites or not code.co_filename.startswith(_HERE):
            sites.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        if not code.co_filename.startswith(_HERE):
            break
        frame = frame.f_back
    return ", called from ".join(sites) or "?"


def _copy(value: Any) -> Any:
    """A NumPy copy of a Tensor's data (a tuple of them for a TensorTuple), None else."""
    if isinstance(value, TensorTuple):
        return tuple(_copy(v) for v in value)
    if isinstance(value, Value) and value.cached_data is not None:
        return np.array(value.numpy(), copy=True)
    return None


def _describe(values: Iterable[Any]) -> str:
    return ", ".join(
        f"{tuple(v.shape)} {v.dtype}" if isinstance(v, Tensor) else type(v).__name__ for v in values
    )


@dataclass
class OpRecord:
    """One op of a run: its name, where user code made it, its inputs, its output."""

    name: str
    site: str
    inputs: str
    output: Any
    node: Value = field(repr=False)


@dataclass
class Run:
    """What one device's run recorded."""

    device: str
    forward: list[OpRecord] = field(default_factory=list)
    # (the forward op, the partial adjoints its gradient sent to each input), in backward order
    backward: list[tuple[OpRecord, tuple[Any, ...]]] = field(default_factory=list)


@dataclass
class Divergence:
    """The first op at which two devices' runs differ beyond the tolerance."""

    phase: str  # "forward", or "backward" (the op's gradient)
    op: str
    site: str
    inputs: str
    devices: tuple[str, str]
    detail: str  # the largest errors and where, or what differs (shapes, dtypes, ops)

    def __str__(self) -> str:
        what = "output" if self.phase == "forward" else "gradient"
        return (
            f"{self.devices[0]} and {self.devices[1]} diverge at the {what} of {self.op} "
            f"({self.phase})\n  created at {self.site}\n  inputs: {self.inputs}\n"
            f"  {self.detail}"
        )


def _record(run: Run, fn: Callable[[], Any]) -> None:
    """fn() with every op it makes, and every gradient call, recorded into `run`."""
    make, gradient = Value.__dict__["make_from_op"], Op.gradient_as_tuple
    made: dict[int, OpRecord] = {}

    def make_from_op(cls, op, inputs):
        value = make.__func__(cls, op, inputs)
        record = OpRecord(op.name or type(op).__name__, _site(), _describe(inputs), None, value)
        record.output = _copy(value)
        made[id(value)] = record
        if not _in_backward():
            run.forward.append(record)
        return value

    def gradient_as_tuple(op, out_grad, node):
        grads = gradient(op, out_grad, node)
        if id(node) in made:
            run.backward.append((made[id(node)], tuple(_copy(g) for g in grads)))
        return grads

    Value.make_from_op = classmethod(make_from_op)  # type: ignore[method-assign,assignment]
    Op.gradient_as_tuple = gradient_as_tuple  # type: ignore[method-assign]
    try:
        fn()
    finally:
        Value.make_from_op = make  # type: ignore[method-assign]
        Op.gradient_as_tuple = gradient  # type: ignore[method-assign]


def _in_backward() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code is autograd.compute_gradient_of_variables.__code__:
            return True
        frame = frame.f_back
    return False


def _difference(a: Any, b: Any, rtol: float | None, atol: float | None) -> str | None:
    """Why arrays a and b (the first device's, the other's) differ beyond the tolerance
    (None when they agree)."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        if not (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)):
            return "different numbers of outputs"
        for i, (x, y) in enumerate(zip(a, b)):
            why = _difference(x, y, rtol, atol)
            if why:
                return f"output {i}: {why}"
        return None
    if a is None or b is None:
        return None if a is None and b is None else "one device gave no value"
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"shape/dtype {a.shape} {a.dtype} against {b.shape} {b.dtype}"
    if a.dtype.kind not in "fc":
        a, b = a.astype(np.float64), b.astype(np.float64)
    default_rtol, default_atol = TOLERANCES.get(a.dtype.name, TOLERANCES["float32"])
    rtol, atol = default_rtol if rtol is None else rtol, default_atol if atol is None else atol
    x, y = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore"):
        error = np.abs(x - y)
        bad = ~((error <= atol + rtol * np.abs(y)) | (np.isnan(x) & np.isnan(y)) | (x == y))
    if not bad.any():
        return None
    error = np.where(bad, np.nan_to_num(error, nan=np.inf), 0.0)
    where = tuple(int(i) for i in np.unravel_index(int(np.argmax(error)), x.shape))
    mine, theirs = float(x[where]), float(y[where])
    relative = float(error[where]) / max(abs(theirs), np.finfo(np.float64).tiny)
    return (
        f"max abs error {float(error[where]):.4g}, relative {relative:.4g} at index {where} "
        f"({mine:.7g} against {theirs:.7g}): {int(bad.sum())} of {bad.size} elements beyond "
        f"rtol={rtol:g}, atol={atol:g}"
    )


def first_divergence(
    runs: Sequence[Run], rtol: float | None = None, atol: float | None = None
) -> Divergence | None:
    """The first op at which a run differs from the first run (forward, then backward)."""
    base = runs[0]
    for other in runs[1:]:
        pair = (base.device, other.device)
        for mine, theirs in zip(base.forward, other.forward):
            why = (
                f"the devices made different ops: {mine.name} against {theirs.name}"
                if mine.name != theirs.name
                else _difference(mine.output, theirs.output, rtol, atol)
            )
            if why:
                return Divergence("forward", mine.name, mine.site, mine.inputs, pair, why)
        if len(base.forward) != len(other.forward):
            n, m = len(base.forward), len(other.forward)
            return Divergence("forward", "-", "-", "-", pair, f"{n} ops against {m}")
        for (mine, grads), (_, theirs) in zip(base.backward, other.backward):
            for i, (g, h) in enumerate(zip(grads, theirs)):
                why = _difference(g, h, rtol, atol)
                if why:
                    detail = f"its gradient for input {i}: {why}"
                    return Divergence("backward", mine.name, mine.site, mine.inputs, pair, detail)
    return None


def compare_runs(
    run: Callable[[Any], Any],
    devices: Sequence[Any] = ("cpu_numpy", "cpu"),
    rtol: float | None = None,
    atol: float | None = None,
    file: Any = None,
) -> Divergence | None:
    """run(device) once per device (it builds its own model, data and optimizer there, from
    the same seed), recorded and compared; prints and returns the first Divergence, or says
    that the runs agree and returns None (to `file`, default stdout)."""
    devices = [_device(d) for d in devices]
    if len(devices) < 2:
        raise ValueError(f"compare: needs two or more devices, got {devices}")
    runs = []
    for device in devices:
        runs.append(Run(device.name))
        _record(runs[-1], lambda device=device: run(device))
    found = first_divergence(runs, rtol, atol)
    names, n = ", ".join(d.name for d in devices), len(runs[0].forward)
    print(found or f"{names} agree on all {n} ops and their gradients", file=file or sys.stdout)
    return found


def compare(
    fn: Callable[..., Any],
    *inputs: Any,
    devices: Sequence[Any] = ("cpu_numpy", "cpu"),
    rtol: float | None = None,
    atol: float | None = None,
    file: Any = None,
) -> Divergence | None:
    """fn(*inputs) on each device, with identical inputs and weights: Tensors and NumPy
    arrays among `inputs` are copied to the device (keeping dtype and requires_grad), and
    Modules are moved there in place with the weights and buffers they had (restored, with
    their device, when the comparison ends). fn may run a forward, a loss and backward, or a
    whole training step (an optimizer it builds inside). Prints and returns the first
    Divergence (None when the runs agree): the op, where user code made it, its inputs, the
    largest error and where it is. Tolerances default per dtype (TOLERANCES)."""
    from .nn import Module

    modules = [m for m in inputs if isinstance(m, Module)]
    saved = [(m, m.state_dict(), _module_device(m)) for m in modules]

    def run(device):
        for module, state, _ in saved:
            module.load_state_dict(state)
            module.to(device)
        return fn(*(_on(x, device) for x in inputs))

    try:
        return compare_runs(run, devices, rtol, atol, file)
    finally:
        for module, state, device in saved:
            module.load_state_dict(state)
            if device is not None:
                module.to(device)


def _on(x: Any, device: Any) -> Any:
    if isinstance(x, Tensor):
        return Tensor(x.numpy(), device=device, dtype=x.dtype, requires_grad=x.requires_grad)
    if isinstance(x, np.ndarray):
        return Tensor(x, device=device, dtype=x.dtype.name, requires_grad=False)
    return x


def _module_device(module: Any) -> Any:
    return next((p.device for p in module.parameters()), None)


def _device(device: Any) -> Any:
    if not isinstance(device, str):
        return device
    from .backend_ndarray import ndarray as nd

    known = nd.devices_by_name()
    if device not in known:
        raise ValueError(f"compare: unknown device {device!r} (devices: {', '.join(known)})")
    if not known[device].enabled():
        raise ValueError(f"compare: device {device} is not available: {known[device].reason}")
    return known[device]
