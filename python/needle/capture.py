"""Graph capture and replay: ``step = ndl.compile(train_step)``.

A call of the compiled step runs ``train_step`` eagerly while it records every backend
primitive call the step makes (forward, backward, optimizer update). Once two consecutive
calls record the same calls, later calls with the same guards replay the recording: a loop
over (primitive, arguments) pairs, with no op dispatch, no graph and no allocation. Buffers
that the step frees before it ends share memory when their lifetimes do not overlap.

Each call first compares its guards with the recording's:
- the arguments' shapes, dtypes and devices, and the value of every other argument;
- the Python state the step can see. This covers every int, float, bool, str or None
  attribute of the Modules, Optimizers and schedulers reachable from the step's arguments,
  closure, ``self`` and the globals it names. It also covers those simple globals and
  closure variables themselves, the identity of those objects' tensors' buffers, and
  whether grad is enabled.
A difference records again. Work the step does on the host goes through ``nd.from_host``:
label and index checks, random draws. A replay runs that work again, so dropout draws fresh
masks from NumPy's generator and a bad label still raises. Some steps run eagerly instead,
with one warning that says why and where:
- a step that reads device data on the host any other way (``.numpy()``, ``float(loss)``);
- a step that changes the state it sees on every call, such as a counter it reads (Adam's
  step count is not one: it advances in a from_host call, and Adam lists it in
  ``_unguarded``, the attributes a class keeps out of the guards);
- a step whose recordings never agree.

What the guards do not see is not guarded: a global read only inside a function the step
calls, or the contents of a NumPy array over 64 KiB (compared by identity). Pass such values
as arguments. A replay does not repeat the step's Python side effects. Tensors the step
leaves behind (``p.grad``, optimizer buffers) hold the latest call's values. Returned tensors
are copies with no graph: a backward through one that required grad raises (it belongs in
the step).
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from . import autograd
from .autograd import Tensor, TensorOp, array_of
from .backend_ndarray import ndarray as nd, primitives

__all__ = ["compile", "CompiledStep", "CaptureError"]

_NEEDLE_DIR = os.path.dirname(os.path.abspath(__file__))
_SIMPLE_TYPES = (int, float, bool, str, type(None))
_SIMPLE = frozenset(_SIMPLE_TYPES)
# Recordings that may disagree before a step is declared uncapturable: the first call
# creates state (momentum buffers), the second and third then agree.
_MAX_RECORDINGS = 5
_MAX_PLANS = 4  # recordings kept, one per guard (input shapes, train/eval, ...)


class CaptureError(RuntimeError):
    """A replay found something its recording did not allow (a host computation whose
    result changed shape)."""


def compile(fn: Callable | None = None):
    """``ndl.compile(step)`` (or ``@ndl.compile``): `step` recorded once and replayed (see
    the module's doc). The result is a CompiledStep."""
    if fn is None:
        return compile
    return CompiledStep(fn)


def _user_site() -> str:
    """file:line of the innermost frame outside needle (where the user's code is), and of the
    needle code it called last."""
    frame, inner = sys._getframe(2), None
    while frame is not None and frame.f_code.co_filename.startswith(_NEEDLE_DIR):
        inner = inner or frame
        frame = frame.f_back
    where = "?" if frame is None else _site(frame)
    return where if inner is None else f"{where}, in needle/{_site(inner, _NEEDLE_DIR)}"


def _site(frame, root: str | None = None) -> str:
    name = frame.f_code.co_filename
    name = os.path.relpath(name, root) if root else os.path.basename(name)
    return f"{name}:{frame.f_lineno}"


class _Buf:
    """A buffer the recording refers to, held weakly while recording (so that an optimizer's
    "is this buffer private" check sees the references it would see without capture)."""

    __slots__ = ("ref", "role", "index", "size", "dtype", "first", "last", "handle", "alloc")

    def __init__(self, handle, role: str, index: int):
        self.ref = weakref.ref(handle)
        self.role, self.index = role, index  # role: "internal", "arg" or "external"
        self.size, self.dtype = handle.size, handle.dtype
        self.first = self.last = -1
        self.handle = None  # the handle a replay uses (resolved by _Plan)
        self.alloc: Callable | None = None  # the Array class that made an internal buffer

    def use(self, index: int) -> None:
        if self.first < 0:
            self.first = index
        self.last = index


class _Tape:
    """What one call of the step did: its primitive calls with buffers as _Bufs."""

    def __init__(self, array_types: tuple[type, ...]):
        self.array_types = array_types
        self.calls: list[tuple[str, Callable, tuple, str]] = []
        self.bufs: dict[int, _Buf] = {}  # id(handle) -> _Buf, for live handles
        self.all_bufs: list[_Buf] = []
        self.problem: str | None = None
        self.paused = 0

    def buf(self, handle, role: str = "external") -> _Buf:
        found = self.bufs.get(id(handle))
        if found is None or found.ref() is not handle:
            found = _Buf(handle, role, len(self.all_bufs))
            self.bufs[id(handle)] = found
            self.all_bufs.append(found)
        return found

    def refuse(self, why: str) -> None:
        if self.problem is None:
            self.problem = f"{why} (at {_user_site()})"

    def add(self, name: str, target: Callable, args: tuple) -> None:
        if self.paused:
            return
        index = len(self.calls)
        stored = []
        for a in args:
            if isinstance(a, self.array_types):
                a = self.buf(a)
                a.use(index)
            elif isinstance(a, np.ndarray):
                a = a.copy()
            stored.append(a)
        self.calls.append((name, target, tuple(stored), _user_site()))

    def signature(self) -> list:
        """The calls with buffers by role and order of appearance, for comparing two tapes."""
        order: dict[int, int] = {}

        def norm(a):
            if isinstance(a, _Buf):
                if a.role == "internal":
                    return ("i", order.setdefault(a.index, len(order)))
                if a.role == "arg":
                    return ("a", a.index)
                return ("e", id(a.handle if a.handle is not None else a.ref()))
            if isinstance(a, np.ndarray):
                return ("np", a.dtype.str, a.shape, a.tobytes())
            if isinstance(a, _HostStep):
                return a.signature(norm)
            return a

        return [(name, tuple(map(norm, args))) for name, _, args, _ in self.calls]


class _HostStep:
    """A from_host call: fn run again on the inputs' current data at each replay."""

    def __init__(self, fn, inputs, consts, out: _Buf, shape, dtype, mod):
        self.fn, self.consts, self.out, self.shape, self.dtype = fn, consts, out, shape, dtype
        self.inputs = inputs  # (buf, simplified view, shape, device module) per input
        self.mod = mod

    def signature(self, norm):
        views = tuple((norm(b), view, shape) for b, view, shape, _ in self.inputs)
        return ("host", self.fn, self.consts, views, norm(self.out), self.shape, self.dtype)

    def __call__(self) -> None:
        host = [
            mod.to_numpy(b.handle, *view).reshape(shape) if b.size else np.empty(shape)
            for b, view, shape, mod in self.inputs
        ]
        result = np.ascontiguousarray(self.fn(*host, *self.consts), dtype=self.dtype)
        if result.shape != self.shape:
            raise CaptureError(
                f"replay: {self.fn.__qualname__} gave shape {result.shape}, recorded {self.shape}"
            )
        if result.size:
            self.mod.from_numpy(result, self.out.handle)


class _Recorder:
    """Stands in for a backend module while a step is recorded: forwards every call and
    adds it to the tape."""

    def __init__(self, mod, tape: _Tape):
        self._mod, self._tape = mod, tape

    def __getattr__(self, name: str):
        target = getattr(self._mod, name)
        tape = self._tape
        if name == "Array":
            wrapper: Any = _Allocator(target, tape)
        elif name == "to_numpy":

            def wrapper(*args):
                if not tape.paused:
                    tape.refuse("the step reads device data on the host")
                return target(*args)

        elif callable(target):

            def wrapper(*args):
                tape.add(name, target, args)
                result = target(*args)
                if result is not None:
                    tape.refuse(f"{name} returned a value to Python")
                return result

        else:
            return target
        self.__dict__[name] = wrapper
        return wrapper


class _Allocator:
    """The module's Array class, recording each new buffer as internal to the step."""

    def __init__(self, array_class, tape: _Tape):
        self._class, self._tape = array_class, tape

    def __call__(self, size, dtype):
        handle = self._class(size, dtype)
        self._tape.buf(handle, "internal").alloc = self._class
        return handle

    def __getattr__(self, name: str):
        if name == "over":  # memory shared with NumPy (the numpy mode) is host data
            self._tape.refuse("the step shares NumPy memory with a device array")
        return getattr(self._class, name)


class _Plan:
    """A recording made ready to replay: handles resolved, dead temporaries given shared
    buffers, argument and output copies prepared."""

    def __init__(
        self, tape: _Tape, args: list[tuple[_Buf, Any]], outputs, tensors: list, arg_grads
    ):
        self.problem = self._resolve(tape) or _writes_argument(tape)
        # The tensors the step can see whose buffers it reads: rebinding one (p.data = ...,
        # load_state_dict) between calls makes the next call record again.
        read = {id(b.handle): b.handle for b in tape.all_bufs if b.role == "external"}
        self.watched = [
            (weakref.ref(t), t.cached_data._handle)
            for t in tensors
            if isinstance(t.cached_data, nd.NDArray) and id(t.cached_data._handle) in read
        ]
        self.calls = []
        for name, target, call_args, _ in tape.calls:
            if name == "__host__":
                self.calls.append((call_args[0], ()))
            else:
                handles = tuple(a.handle if isinstance(a, _Buf) else a for a in call_args)
                self.calls.append((target, handles))
        self.args = [(b.handle, mod) for b, mod in args]
        self.outputs, self.arg_grads = outputs, arg_grads

    def _resolve(self, tape: _Tape) -> str | None:
        free: dict[tuple, list] = {}
        dead = []
        for b in tape.all_bufs:
            b.handle = b.ref()
            if b.handle is not None or b.first < 0:
                continue
            if b.role != "internal":
                return (
                    "the step reads a buffer that it frees (state rebound to a new buffer "
                    "on every call rather than updated in place)"
                )
            dead.append(b)
        # Temporaries freed during the step: a buffer each, shared when lifetimes allow.
        starts = sorted(dead, key=lambda b: b.first)
        ends = sorted(dead, key=lambda b: b.last)
        e = 0
        for b in starts:
            while e < len(ends) and ends[e].last < b.first:
                done = ends[e]
                free.setdefault((done.size, done.dtype), []).append(done.handle)
                e += 1
            pool = free.get((b.size, b.dtype))
            assert b.alloc is not None
            b.handle = pool.pop() if pool else b.alloc(b.size, b.dtype)
        return None

    def state_unchanged(self) -> bool:
        for ref, handle in self.watched:
            tensor = ref()
            if tensor is None or getattr(tensor.cached_data, "_handle", None) is not handle:
                return False
        return True

    def replay(self, arrays: list[tuple[Tensor | None, nd.NDArray]]):
        for (handle, mod), (_, array) in zip(self.args, arrays):
            if array._handle is not handle:  # one copy, from the argument's view as it is
                mod.compact(array._handle, handle, *array._simplified_view())
        for target, args in self.calls:
            target(*args)
        for i, spec in self.arg_grads:  # what backward gave the arguments that require grad
            arrays[i][0].grad = _build(spec)  # type: ignore[union-attr]
        return _build(self.outputs)


def _build(spec):
    """The step's result from its recorded structure: tensors as detached copies."""
    kind = spec[0]
    if kind == "none":
        return None
    if kind == "seq":
        return spec[1](_build(s) for s in spec[2])
    _, buf, view, shape, device, dtype, requires_grad = spec
    out = nd.NDArray._make(shape, device=device, dtype=dtype)
    if out.size:
        device.mod.compact(buf.handle, out._handle, *view)
    if not requires_grad:
        return Tensor.make_const(out)
    # A replay has no graph: a backward through this tensor raises instead of reaching
    # nothing (the eager result required grad, so code may try).
    tensor = Tensor.__new__(Tensor)
    tensor._init(_ReplayedOutput(), [], cached_data=out, requires_grad=True)
    return tensor


class _ReplayedOutput(TensorOp):
    """The op of a replayed step's result that required grad: its gradient raises."""

    name = "compiled_step_output"

    def compute(self, *args):
        raise NotImplementedError  # never computed: the replay gives the data

    def gradient(self, out_grad, node):
        raise RuntimeError(
            "backward() through the result of a replayed ndl.compile step: replays record "
            "no graph; call backward inside the step"
        )


def _writes_argument(tape: _Tape) -> str | None:
    """Why a replay could not run the tape: it writes into an argument's buffer (a replay
    works on copies of the arguments)."""
    for name, _, args, site in tape.calls:
        prim = primitives.TABLE.get(name)
        if prim is None:
            continue
        for param, a in zip(prim.params, args):
            if param.kind in ("out", "inout") and isinstance(a, _Buf) and a.role == "arg":
                return f"the step writes into its argument {a.index} ({name} at {site})"
    return None


class CompiledStep:
    """A step function with its recordings (``ndl.compile``). ``status`` says what the last
    call did: "recorded", "replayed" or "eager"; ``reason`` why it runs eagerly (None while
    it may be captured)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.status = "new"
        self.reason: str | None = None
        self.recordings = self.replays = 0
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()
        # The latest recording's calls by the guards it left: a call that starts from those
        # and records the same calls makes a plan (steps that alternate shapes too).
        self._last: OrderedDict[tuple, list] = OrderedDict()
        self._failures = 0
        self._roots = _state_roots(fn)

    def __repr__(self) -> str:
        return f"ndl.compile({getattr(self.fn, '__qualname__', self.fn)!r}): {self.status}"

    def __call__(self, *args, **kwargs):
        if self.reason is None and (autograd._NUMPY_MODE or autograd.LAZY_MODE):
            self._give_up(
                "the numpy mode and the lazy mode compute outside recorded primitive calls"
            )
        if self.reason is not None or nd.HOST_RECORDER is not None:
            # (Inside another compiled step's recording: eager, so that it records these calls;
            # a replay here would bypass its recorder.)
            self.status = "eager"
            return self.fn(*args, **kwargs)
        arrays: list[tuple[Tensor | None, nd.NDArray]] = []
        key = self._guard(args, kwargs, arrays)
        plan = self._plans.get(key)
        if plan is not None and plan.state_unchanged():
            self._plans.move_to_end(key)
            self.status = "replayed"
            self.replays += 1
            return plan.replay(arrays)
        return self._record(key, arrays, args, kwargs)

    def _guard(self, args, kwargs, arrays: list, tensors: list | None = None) -> tuple:
        parts: list = [autograd.is_grad_enabled(), autograd._AUTOCAST]  # modes that change ops
        first: dict[int, int] = {}  # buffer -> the first argument on it (aliases are guarded)
        for value in _flatten(list(args) + [kwargs[k] for k in sorted(kwargs)]):
            tensor = value if isinstance(value, Tensor) else None
            if tensor is not None:
                value = array_of(tensor)
            if isinstance(value, nd.NDArray):
                alias = first.setdefault(id(value._handle), len(arrays))
                arrays.append((tensor, value))
                grad = tensor is not None and tensor.requires_grad
                parts.append(("array", value.shape, value.dtype, value.device.name, grad, alias))
            else:
                parts.append(("value", _describe(value, set(), tensors)))
        parts.append(tuple((name, _describe(get(), set(), tensors)) for name, get in self._roots))
        return tuple(parts)

    def _record(self, key: tuple, arrays: list, args, kwargs):
        devices = [d for d in nd.all_devices() if d.__dict__.get("mod") is not None]
        tape = _Tape(tuple({d.mod.Array for d in devices if isinstance(d.mod.Array, type)}))
        for i, (_, array) in enumerate(reversed(arrays)):  # an alias: the first argument's
            b = tape.buf(array._handle, "arg")
            b.index = len(arrays) - 1 - i
            if not array.is_compact():
                tape.refuse(f"argument {b.index} is a view (of a strided or larger buffer)")
        real = {d: d.mod for d in devices}
        for d in devices:
            d.mod = _Recorder(real[d], tape)
        previous = nd.HOST_RECORDER
        nd.HOST_RECORDER = _HostRecorder(tape, real)
        try:
            result = self.fn(*args, **kwargs)
        finally:
            nd.HOST_RECORDER = previous
            for d in devices:
                d.mod = real[d]
        self.status = "recorded"
        self.recordings += 1
        if any(d.__dict__.get("mod") is not None for d in nd.all_devices() if d not in real):
            self._last.clear()  # a device first used in this call was not recorded: again
            return result
        outputs = _outputs(result, tape)
        tensors: list[Tensor] = []
        after = self._guard(args, kwargs, [], tensors)
        if self._consider(key, after, tape, arrays, outputs, real, tensors):
            return _build(outputs)  # the plan reuses the result's buffers: a copy
        return result

    def _consider(self, before, after, tape: _Tape, arrays, outputs, real, tensors) -> bool:
        """Make a plan of `tape` when it agrees with the previous recording and leaves the
        state it saw as it was (so that replays are the calls eager code would make); give
        up on a step that cannot be replayed, or whose recordings keep differing."""
        problem = tape.problem
        if problem is None:
            signature = tape.signature()
            last = self._last.pop(before, None)  # the recording that led to this state
            self._last[after] = signature
            if len(self._last) > 2 * _MAX_PLANS:
                self._last.popitem(last=False)
            if last == signature and before == after:
                args = [(tape.buf(a._handle), real[a.device]) for _, a in arrays]
                grads = [
                    (i, _outputs(t.grad, tape))
                    for i, (t, _) in enumerate(arrays)
                    if t is not None and t.grad is not None
                ]
                plan = _Plan(tape, args, outputs, tensors, grads)
                problem = plan.problem
                if problem is None:
                    self._plans[after] = plan
                    if len(self._plans) > _MAX_PLANS:
                        self._plans.popitem(last=False)
                    self._last.pop(after, None)
                    self._failures = 0
                    return True
            else:
                self._failures += 1
                if self._failures < _MAX_RECORDINGS:
                    return False
                problem = f"{_MAX_RECORDINGS} recordings in a row differ: " + (
                    f"the step changes the state it sees ({_first_change(before, after)})"
                    if before != after
                    else _difference(last or [], signature, tape)
                )
        self._give_up(problem)
        return False

    def _give_up(self, reason: str) -> None:
        self.reason = reason
        self._plans.clear()
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        warnings.warn(f"ndl.compile({name}) runs eagerly: {reason}", stacklevel=4)


def _difference(before: list, after: list, tape: _Tape) -> str:
    """Where two recordings' calls first differ."""
    for i, (b, a) in enumerate(zip(before, after)):
        if b != a:
            return f"call {i}: {_short(b)} then {_short(a)} (at {tape.calls[i][3]})"
    return f"{len(before)} calls then {len(after)}"


def _first_change(before, after, path: str = "") -> str:
    """The first leaf where two guards differ, with the attribute names on its way."""
    if isinstance(before, tuple) and isinstance(after, tuple) and len(before) == len(after):
        if len(before) == 2 and isinstance(before[0], str) and before[0] == after[0]:
            return _first_change(before[1], after[1], f"{path}.{before[0]}")
        for b, a in zip(before, after):
            if b != a:
                return _first_change(b, a, path)
    return f"{path.lstrip('.') or 'a value'}: {_short(before)} -> {_short(after)}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "..."


class _HostRecorder:
    """nd.from_host while recording: runs fn now and records it to run again."""

    def __init__(self, tape: _Tape, real: dict):
        self.tape, self.real = tape, real

    def __call__(self, fn, inputs, consts, device, dtype):
        tape = self.tape
        tape.paused += 1
        try:
            host = [a.numpy() for a in inputs]
        finally:
            tape.paused -= 1
        result = np.ascontiguousarray(fn(*host, *consts), dtype=dtype)
        out = nd.NDArray._make(result.shape, device=device, dtype=dtype)
        mod = self.real[device]
        if result.size:
            mod.from_numpy(result, out._handle)
        views = []
        for a in inputs:
            views.append((tape.buf(a._handle), a._simplified_view(), a.shape, self.real[a.device]))
        step = _HostStep(fn, tuple(views), consts, tape.buf(out._handle), result.shape, dtype, mod)
        tape.add("__host__", step, (step,))
        for b in [step.out] + [v[0] for v in views]:
            b.use(len(tape.calls) - 1)
        return out


def _outputs(result, tape: _Tape):
    """The structure of the step's result, its tensors by buffer and view."""
    if result is None:
        return ("none",)
    if isinstance(result, (tuple, list)):
        return ("seq", type(result), [_outputs(r, tape) for r in result])
    if isinstance(result, Tensor):
        array = array_of(result)
        b = tape.buf(array._handle)
        b.use(len(tape.calls))  # alive after the last call
        view = array._simplified_view()
        return ("tensor", b, view, array.shape, array.device, array.dtype, result.requires_grad)
    tape.refuse(f"the step returns a {type(result).__name__} (only Tensors are replayed)")
    return ("none",)


def _flatten(values):
    """The arguments with tuples, lists and dicts opened (their tensors are arguments too),
    the containers' shapes kept as markers."""
    for value in values:
        if isinstance(value, (tuple, list)):
            yield (type(value).__name__, len(value))
            yield from _flatten(value)
        elif isinstance(value, dict):
            yield ("dict", tuple(value))
            yield from _flatten(value.values())
        else:
            yield value


def _state_roots(fn: Callable) -> list[tuple[str, Callable[[], Any]]]:
    """(name, getter) of what the step can see: its self, closure variables, named globals."""
    roots: list[tuple[str, Callable[[], Any]]] = []
    if hasattr(fn, "__self__"):
        owner = fn.__self__
        roots.append(("self", lambda: owner))
        fn = fn.__func__  # type: ignore[attr-defined]
    code = getattr(fn, "__code__", None)
    if code is None:
        if hasattr(fn, "__dict__"):  # a callable object (a Module): its attributes
            roots.append((type(fn).__name__, lambda: fn))
        return roots
    cells = getattr(fn, "__closure__", None) or ()
    for name, cell in zip(code.co_freevars, cells):
        roots.append((name, lambda cell=cell: _cell(cell)))
    names: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if hasattr(k, "co_names"))
    globals_ = fn.__globals__
    for name in sorted(names):
        if name in globals_ and not isinstance(globals_[name], type(sys)):
            roots.append((name, lambda name=name: globals_.get(name)))
    return roots


def _cell(cell) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # not yet bound
        return None


def _describe(value, seen: set, tensors: list | None = None) -> Any:
    """What of `value` a recording depends on: simple values themselves, a tensor's hooks
    (the plan watches the buffers it reads), and the simple attributes and tensors of needle
    objects (walked once each). Tensors met are added to `tensors` when given. Runs before
    every call (~50 objects for an MLP step): lists, not generators."""
    kind = type(value)
    if kind in _SIMPLE or isinstance(value, _SIMPLE_TYPES):  # (np.float64 is a float)
        return value
    if isinstance(value, Tensor):
        if tensors is not None:
            tensors.append(value)
        # Its buffer, and so its shape and dtype, the plan watches (when the step reads it).
        return ("T", len(value._grad_hooks or ()))
    if kind is np.ndarray:  # contents up to 64 KiB, identity beyond
        big = value.nbytes > 65536
        return ("np", value.shape, value.dtype.str, id(value) if big else value.tobytes())
    if id(value) in seen:
        return ("seen",)
    if kind is tuple or kind is list:
        seen.add(id(value))
        return tuple([_describe(v, seen, tensors) for v in value])
    if kind is dict:
        seen.add(id(value))
        return tuple(
            [(_describe(k, seen, tensors), _describe(v, seen, tensors)) for k, v in value.items()]
        )
    if not (kind.__module__ or "").startswith("needle.") or not hasattr(value, "__dict__"):
        return None
    seen.add(id(value))
    # Attributes a class declares its recorded work does not depend on, or that replays keep
    # current (Adam's t, which advances in a from_host call).
    skip = getattr(kind, "_unguarded", ())
    described = []
    for k, v in vars(value).items():
        if k in skip:
            continue
        if type(v) in _SIMPLE:
            described.append((k, v))
        elif not callable(v) or isinstance(v, Tensor) or hasattr(v, "__dict__"):
            described.append((k, _describe(v, seen, tensors)))
    return (kind.__name__, tuple(described))
