"""Where a block of needle code spends its time, op by op and primitive by primitive.

    with ndl.profile() as prof:
        model(x).sum().backward()
    print(prof.table(sort_by="time", group_by="op"))  # or group_by="primitive"
    prof.export_chrome_trace("trace.json")  # opens in Perfetto and chrome://tracing

While a profile records, each loaded device's backend module is a stand-in (_Timed) that
times every primitive call and every Array allocation, and Value._compute,
Op.gradient_as_tuple and autograd.compute_gradient_of_variables are wrapped, so each op's
compute, each op's gradient and each backward pass is an event with the calls it made nested
inside. All of it is swapped in at enter and out at exit (also on an exception): without a
profile needle runs the very same code, with no check on any path. Profiles do not nest.
Not seen: a device first loaded inside the block (the default device and cpu_numpy are loaded
at enter), a step that ndl.compile replays from a recording made before the block (it calls
the kernels directly), and an optional primitive's fallback itself (its core calls are).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, NamedTuple

from . import autograd
from .autograd import Op, Value
from .backend_ndarray import ndarray as nd, primitives

_ARRAY_KINDS = frozenset({"array", "out", "inout", "index"})
_PRIMITIVE = ("primitive", "alloc")  # the categories of events inside backend modules
# table's sort_by: the Row field, largest first (but names in order)
_SORTS = dict(time="total", self="self_time", calls="calls", flops="flops", bytes="nbytes")
_SORTS["name"] = "name"
_ACTIVE: profile | None = None


def _matmul_flops(v: dict) -> int:
    return 2 * v.get("batch", 1) * v["m"] * v["n"] * v["p"]


def _conv_flops(v: dict) -> int:
    """conv2d and its two gradients: the same multiply-adds, n*oh*ow*kh*kw*c_in*c_out."""
    oh = (v["height"] + 2 * v["padding"] - v["kh"]) // v["stride"] + 1
    ow = (v["width"] + 2 * v["padding"] - v["kw"]) // v["stride"] + 1
    return 2 * v["n"] * oh * ow * v["kh"] * v["kw"] * v["c_in"] * v["c_out"]


_FLOPS = {
    **dict.fromkeys(("matmul", "batched_matmul", "matmul_strided", "matmul_tiled"), _matmul_flops),
    **dict.fromkeys(("conv2d", "conv2d_input_grad", "conv2d_weight_grad"), _conv_flops),
}
_ITEMSIZE = {d: primitives.numpy_dtype(d).itemsize for d in primitives.DTYPES}


class Event:
    """One timed call, [start, end] in perf_counter ns, inside `parent` (None at the top).
    flops and nbytes include its children's (an allocation's nbytes: what it allocated); lost
    is the profiler's own time inside [start, end] (its children's bookkeeping), child the
    time of its children without theirs."""

    __slots__ = ("name", "cat", "device", "tid", "parent", "args", "phase", "flops", "nbytes",
                 "start", "end", "child", "lost")  # fmt: skip

    def __init__(self, name, cat, device, tid, parent, args, phase, flops, nbytes):
        self.name, self.cat, self.device, self.tid, self.parent = name, cat, device, tid, parent
        self.args, self.phase, self.flops, self.nbytes = args, phase, flops, nbytes
        self.start = self.end = self.child = self.lost = 0

    @property
    def net(self) -> int:
        """Nanoseconds of the call, the profiler's bookkeeping inside it taken out."""
        return self.end - self.start - self.lost


class Row(NamedTuple):
    """A line of profile.table(): the events of one name on one device, times in seconds
    without the profiler's bookkeeping."""

    name: str
    device: str
    calls: int
    total: float
    self_time: float
    flops: int
    nbytes: int


class _Timed:
    """Stands in for a backend module: its primitives and Array timed, the rest as they are
    (an attribute the module lacks is missing here too, so validation sees the same module)."""

    def __init__(self, prof: profile, mod, device: str):
        self._prof, self._mod, self._device = prof, mod, device

    def __getattr__(self, name: str):
        target = getattr(self._mod, name)
        if name == "Array":
            wrapper: Any = _ArrayMeta("Array", (), {"_real": target, "_timed": self})
        elif name in primitives.TABLE and callable(target):
            wrapper = self._prof._primitive(target, primitives.TABLE[name], self._device)
        else:
            return target
        self.__dict__[name] = wrapper
        return wrapper


class _ArrayMeta(type):
    """The module's Array class as seen while profiling: still a type whose instances are the
    module's arrays (needle.capture's tape checks both), its construction an "alloc" event."""

    def __call__(cls, size, *rest):
        t, prof, real = time.perf_counter_ns(), cls._timed._prof, cls._real
        if not prof._on:  # a stand-in kept by a compiled plan after its profile ended
            return real(size, *rest)
        dtype = rest[0] if rest else "float32"
        nbytes, device = size * _ITEMSIZE[dtype], cls._timed._device
        args = {"size": size, "dtype": dtype}
        return prof._call(t, "Array", "alloc", device, args, 0, nbytes, real, size, *rest)

    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, cls._real)

    def __getattr__(cls, name: str):
        return getattr(cls._real, name)  # (Array.over)


def _data(data) -> Any:
    """The shape and dtype of an op's operand or result (a list for a tuple)."""
    if isinstance(data, tuple):
        return [_data(d) for d in data]
    return {"shape": tuple(data.shape), "dtype": str(data.dtype)}


class profile:
    """Records every op and primitive call of the block: ``with ndl.profile() as prof:``.
    ``prof.start()`` and ``prof.stop()`` do the same without a block. A profile records
    once; a second one inside the block is a RuntimeError."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.devices: list[str] = []  # the devices profiled
        self._on = self._done = False
        self._stacks: dict[int, list[Event]] = {}  # each thread's open events
        self._phase = "forward"
        self._saved: list[tuple[Any, str, Any]] = []  # (owner, attribute, original)
        self._t0 = self._t1 = self._own = 0  # _own: the bookkeeping's nanoseconds

    # ---- recording ------------------------------------------------------------------------
    def _begin(self, name, cat, device, args, flops=0, nbytes=0) -> Event:
        tid = threading.get_ident()
        stack = self._stacks.setdefault(tid, [])
        parent = stack[-1] if stack else None
        e = Event(name, cat, device, tid, parent, args, self._phase, flops, nbytes)
        stack.append(e)
        self.events.append(e)
        return e

    def _end(self, e: Event, t: int, value=None) -> None:
        """Closes e (timed from e.start to e.end, read next to the call), whose wrapper began
        its bookkeeping at t; describes an op's operands and result (`value`, the node)."""
        if value is not None:
            out = value.cached_data
            device = getattr(out[0] if isinstance(out, tuple) and out else out, "device", "")
            e.device = getattr(device, "name", str(device))
            e.args = {"inputs": [_data(x.cached_data) for x in value.inputs], "output": _data(out)}
        self._stacks[e.tid].pop()
        parent = e.parent
        own = e.start - t + time.perf_counter_ns() - e.end
        self._own += own
        if parent is not None:
            parent.child += e.net
            parent.lost += e.lost + own
            parent.flops += e.flops
            if e.cat != "alloc":
                parent.nbytes += e.nbytes

    def _call(self, t, name, cat, device, args, flops, nbytes, fn, *a, **kw):
        e = self._begin(name, cat, device, args, flops, nbytes)
        e.start = time.perf_counter_ns()
        try:
            return fn(*a, **kw)
        finally:
            e.end = time.perf_counter_ns()
            self._end(e, t)

    def _primitive(self, fn, prim: primitives.Primitive, device: str):
        names, kinds = prim.param_names, [p.kind for p in prim.params]
        flops_of, name = _FLOPS.get(prim.name), prim.name

        def timed(*args: Any) -> Any:
            t = time.perf_counter_ns()
            if not self._on:  # a stand-in kept by a compiled plan after its profile ended
                return fn(*args)
            described: dict[str, Any] = {}
            nbytes = 0
            for param, kind, value in zip(names, kinds, args):
                if kind in _ARRAY_KINDS:
                    n, dtype = value.size, value.dtype
                    described[param] = {"size": n, "dtype": dtype, "bytes": n * _ITEMSIZE[dtype]}
                    nbytes += n * _ITEMSIZE[dtype]
                elif kind == "numpy":
                    described[param] = {"shape": value.shape, "dtype": str(value.dtype)}
                else:
                    described[param] = value
            flops = flops_of(described) if flops_of is not None else 0
            e = self._begin(name, "primitive", device, described, flops, nbytes)
            e.start = time.perf_counter_ns()  # (the clock reads next to the call: _call's, inlined)
            try:
                return fn(*args)
            finally:
                e.end = time.perf_counter_ns()
                self._end(e, t)

        return timed

    def _wrappers(self):
        def compute(original):
            def _compute(value, op):
                t = time.perf_counter_ns()
                e = self._begin(type(op).__name__, "op", None, None)
                e.start = time.perf_counter_ns()
                try:
                    original(value, op)
                except BaseException:
                    e.end = time.perf_counter_ns()
                    self._end(e, t)
                    raise
                e.end = time.perf_counter_ns()
                self._end(e, t, value)

            return _compute

        def gradient(original):
            def gradient_as_tuple(op, out_grad, node):
                t, name = time.perf_counter_ns(), type(op).__name__ + ".gradient"
                return self._call(
                    t, name, "gradient", None, None, 0, 0, original, op, out_grad, node
                )

            return gradient_as_tuple

        def backward(original):
            def compute_gradient_of_variables(*args, **kwargs):
                t, previous, self._phase = time.perf_counter_ns(), self._phase, "backward"
                try:
                    return self._call(
                        t, "backward", "autograd", None, None, 0, 0, original, *args, **kwargs
                    )
                finally:
                    self._phase = previous

            return compute_gradient_of_variables

        yield Value, "_compute", compute
        yield Op, "gradient_as_tuple", gradient
        yield autograd, "compute_gradient_of_variables", backward
        for device in nd.all_devices():
            if device.__dict__.get("mod") is not None:
                self.devices.append(device.name)
                yield device, "mod", lambda mod, d=device.name: _Timed(self, mod, d)

    def __enter__(self) -> profile:
        global _ACTIVE
        if _ACTIVE is not None:
            raise RuntimeError("ndl.profile: a profile is already recording (they do not nest)")
        if self._done or self._on:
            raise RuntimeError("ndl.profile: this profile has recorded already; make a new one")
        _ACTIVE, self._on = self, True
        try:
            nd.default_device()  # (loads its module, and cpu_numpy's below)
            nd.cpu_numpy().enabled()
            for owner, attribute, make in self._wrappers():
                original = getattr(owner, attribute)
                self._saved.append((owner, attribute, original))
                setattr(owner, attribute, make(original))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self._t0 = time.perf_counter_ns()
        return self

    def __exit__(self, *exc) -> None:
        global _ACTIVE
        self._t1 = time.perf_counter_ns()
        self._on, self._done = False, True
        while self._saved:
            owner, attribute, original = self._saved.pop()
            setattr(owner, attribute, original)
        if _ACTIVE is self:
            _ACTIVE = None

    def start(self) -> profile:
        return self.__enter__()

    def stop(self) -> None:
        self.__exit__(None, None, None)

    # ---- results --------------------------------------------------------------------------
    @property
    def wall(self) -> float:
        """Seconds from enter to exit (to now while recording)."""
        return ((self._t1 if self._done else time.perf_counter_ns()) - self._t0) / 1e9

    @property
    def kernel_seconds(self) -> float:
        """Seconds inside the backend modules (primitive calls and allocations)."""
        return sum(e.net for e in self.events if e.cat in _PRIMITIVE) / 1e9

    @property
    def overhead_seconds(self) -> float:
        """Seconds of the profiler's own bookkeeping (measured: clock reads around it)."""
        return self._own / 1e9

    @property
    def python_seconds(self) -> float:
        """Wall time outside the backend modules, the profiler's own cost taken out."""
        return max(0.0, self.wall - self.kernel_seconds - self.overhead_seconds)

    def rows(self, group_by: str = "op") -> list[Row]:
        """One Row per event name and device: ops, gradients and backward passes for "op";
        primitive calls and allocations ("Array") for "primitive". Ops that ran in a backward
        pass are named "Op (backward)"."""
        if group_by not in ("op", "primitive"):
            raise ValueError(f"profile: group_by must be 'op' or 'primitive', not {group_by!r}")
        sums: dict[tuple[str, str], list] = {}
        for e in self.events:
            if (e.cat in _PRIMITIVE) == (group_by == "primitive"):
                name = e.name + (" (backward)" if e.cat == "op" and e.phase == "backward" else "")
                row = sums.setdefault((name, e.device or ""), [0, 0, 0, 0, 0])
                for i, value in enumerate((1, e.net, e.net - e.child, e.flops, e.nbytes)):
                    row[i] += value
        return [
            Row(name, device, calls, total / 1e9, own / 1e9, flops, nbytes)
            for (name, device), (calls, total, own, flops, nbytes) in sums.items()
        ]

    def table(self, sort_by: str = "time", top: int = 20, group_by: str = "op") -> str:
        """The `top` rows sorted by `sort_by` (time, self, calls, flops, bytes or name), as
        text: calls, total and self milliseconds, % of wall, GFLOP/s where known, megabytes
        (moved; allocated for "Array"); then wall time, time inside primitives and outside."""
        if sort_by not in _SORTS:
            raise ValueError(f"profile.table: sort_by must be one of {', '.join(_SORTS)}")
        field = _SORTS[sort_by]
        rows = sorted(self.rows(group_by), key=lambda r: getattr(r, field), reverse=field != "name")
        wall = max(self.wall, 1e-12)
        width = max([len(r.name) for r in rows[:top]] + [len(group_by)])
        lines = [
            f"{group_by:{width}s} {'device':9s} {'calls':>6s} {'total ms':>9s} {'self ms':>9s} "
            + f"{'% wall':>6s} {'GFLOP/s':>8s} {'MB':>8s}"
        ]
        for r in rows[:top]:
            rate = f"{r.flops / r.total / 1e9:8.2f}" if r.flops and r.total else ""
            lines.append(
                f"{r.name:{width}s} {r.device:9s} {r.calls:6d} {r.total * 1e3:9.3f} "
                f"{r.self_time * 1e3:9.3f} {r.total / wall:6.1%} {rate:>8s} {r.nbytes / 1e6:8.3f}"
            )
        kernels, python, own = self.kernel_seconds, self.python_seconds, self.overhead_seconds
        allocs = [e.nbytes for e in self.events if e.cat == "alloc"]
        lines.append(
            f"wall {wall * 1e3:.3f} ms: inside primitives {kernels * 1e3:.3f} ms "
            f"({kernels / wall:.1%}), outside them (Python) {python * 1e3:.3f} ms "
            f"({python / wall:.1%}) without the profiler's own cost (about {own * 1e3:.3f} ms "
            f"for {len(self.events)} events)"
        )
        lines.append(f"allocations: {len(allocs)} arrays, {sum(allocs) / 1e6:.3f} MB")
        return "\n".join(lines)

    def export_chrome_trace(self, path: str) -> None:
        """The events as Chrome trace-event JSON ("X" events, microseconds), which Perfetto
        (ui.perfetto.dev) and chrome://tracing open."""
        pid, tids = os.getpid(), dict[int, int]()
        trace = [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": "needle"}}]
        for e in self.events:
            args = dict(e.args or {}, phase=e.phase, device=e.device, flops=e.flops, bytes=e.nbytes)
            ts, dur = (e.start - self._t0) / 1e3, (e.end - e.start) / 1e3
            tid = tids.setdefault(e.tid, len(tids))
            trace.append(
                dict(name=e.name, cat=e.cat, ph="X", ts=ts, dur=dur, pid=pid, tid=tid, args=args)
            )
        with open(path, "w") as f:
            json.dump({"traceEvents": trace, "displayTimeUnit": "ms"}, f, default=_plain)


def _plain(value):
    """JSON for what the standard encoder lacks (NumPy scalars in a primitive's arguments)."""
    return value.item() if hasattr(value, "item") else str(value)
