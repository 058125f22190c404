"""Reverse-mode automatic differentiation over a graph of Values.

A Tensor made by an Op remembers the op and its inputs; ``backward()`` walks that graph
in reverse topological order, summing the partial adjoints each op's ``gradient`` returns.
Gradients are themselves Tensors built from ops, so with ``create_graph=True`` they can be
differentiated again.
"""

from __future__ import annotations

import atexit
import functools
import operator
import sys
import weakref
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy

from . import backend_ndarray as nd
from .backend_selection import (  # noqa: F401  (cpu, all_devices: the course imports them from here)
    BACKEND,
    Device,
    NDArray,
    all_devices,
    array_api,
    cpu,
    default_device,
)

if TYPE_CHECKING:
    from typing_extensions import Self, TypeAlias

    # What gradient() gives one input: its adjoint, None for an input that needs none, or for
    # a TensorTuple input, optionally sparse, {index: adjoint}.
    Adjoint: TypeAlias = "Value | dict[int, Value] | None"

# Lazy mode builds the graph without computing; realize_cached_data() computes on demand.
LAZY_MODE = False
_GRAD_ENABLED = True
# The 16-bit dtype of the enclosing ndl.autocast (needle.amp), None outside one.
_AUTOCAST: str | None = None
# Live Values (course code reads it after training loops to check that graphs are freed).
TENSOR_COUNTER = 0
# In-place writes (Tensor._inplace) so far: the clock that orders them against node creation.
_INPLACE_CLOCK = 0
# id(buffer) -> [weak reference to the buffer, clock of its last in-place write, writes so
# far, the writing op]. A node's gradient may not read a buffer written after the node was
# made (PyTorch's version counter; views and detached aliases share the buffer, so they share
# the entry). The entry goes with the buffer (a buffer type without weak references is held
# instead, so that its id is not reused, and dropped when only this dict holds it: _prune).
_WRITTEN: dict[int, list[Any]] = {}
atexit.register(_WRITTEN.clear)  # before the native modules go: they report buffers still held
_PRUNE_AT = 64
# While backward runs a node's gradient: (node, {id(buffer): what it is}) for the buffers
# the node saw that were written since; _compute refuses to read them.
_GUARD: tuple[Value, dict[int, str]] | None = None
# The numpy mode (NEEDLE_BACKEND=np): data are NumPy arrays; ops still compute on NDArrays,
# which share the arrays' memory (nd.shared_numpy), and their results are kept as NumPy.
_NUMPY_MODE = BACKEND == "np"
if _NUMPY_MODE:
    nd.set_promotion("numpy")


def _to_nd(data):
    """The numpy mode's data (an array, or a tuple of them) as NDArrays sharing memory."""
    if isinstance(data, tuple):
        return tuple(_to_nd(x) for x in data)
    return nd.shared_numpy(data)


def _mode_data(data):
    """Data for a numpy-mode Value: NDArrays (an op's result, or a tuple of them) become
    NumPy (a NumPy scalar for a 0-d result); anything else stays as it is."""
    if isinstance(data, nd.NDArray):
        return nd.numpy_shared(data)
    if isinstance(data, tuple):
        return tuple(_mode_data(x) for x in data)
    return data


def array_of(value: Value) -> nd.NDArray:
    """A Value's data as an NDArray (a tuple of them for a TensorTuple), in either mode: the
    data itself, or in the numpy mode an NDArray sharing the NumPy array's memory. Code that
    works on data directly (optimizers, running statistics) goes through this and
    ``set_array``."""
    data = value.realize_cached_data()
    return _to_nd(data) if _NUMPY_MODE else data


def array_device(value: Value) -> nd.BackendDevice:
    """The device of a Value's data as NDArrays (cpu_numpy in the numpy mode)."""
    return nd.cpu_numpy() if _NUMPY_MODE else value.realize_cached_data().device


def set_array(value: Value, array: nd.NDArray) -> None:
    """Make an NDArray the Value's data (stored as NumPy in the numpy mode)."""
    value.cached_data = _mode_data(array) if _NUMPY_MODE else array


class RemovableHandle:
    """What register_hook and the Module hook registrations return: ``remove()`` takes the
    hook out (again is a no-op), as torch.utils.hooks.RemovableHandle; also a context manager
    that removes it on exit."""

    _next_id = 0

    def __init__(self, hooks: dict[int, Any]):
        self._hooks = hooks
        self.id = RemovableHandle._next_id
        RemovableHandle._next_id += 1

    def remove(self) -> None:
        self._hooks.pop(self.id, None)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def add_hook(hooks: dict[int, Any], fn: Callable[..., Any]) -> RemovableHandle:
    """Put `fn` into `hooks` (kept in registration order) and return its handle."""
    if not callable(fn):
        raise TypeError(f"a hook must be callable, got {type(fn).__name__}")
    handle = RemovableHandle(hooks)
    hooks[handle.id] = fn
    return handle


class no_grad:
    """Context manager (and decorator) under which ops record no graph, as torch.no_grad."""

    def __new__(cls, fn=None):
        # Bare @no_grad decorates directly; no_grad() gives the context manager / decorator.
        if fn is None:
            return super().__new__(cls)
        return cls()(fn)

    def __enter__(self):
        global _GRAD_ENABLED
        self._previous, _GRAD_ENABLED = _GRAD_ENABLED, False

    def __exit__(self, *exc):
        global _GRAD_ENABLED
        _GRAD_ENABLED = self._previous

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


def is_grad_enabled() -> bool:
    return _GRAD_ENABLED


# The kind of Value an op makes: Tensor (TensorOp) or TensorTuple (TensorTupleOp).
_Out = TypeVar("_Out", bound="Value")


class Op(Generic[_Out]):
    """An operator: ``compute`` on NDArrays, ``gradient`` as Tensor ops.

    An instance holds only its configuration (axes, a scalar, ...), never per-call state, so
    one instance can be called any number of times. Values that ``gradient`` needs from the
    forward pass travel with the output: ``compute`` returns ``Saved(data, name=value)`` and
    ``gradient`` reads ``node.saved.name``.
    """

    # Short lowercase name for error messages (the function form's name, e.g. "add"); None
    # means the class name in lower case.
    name: str | None = None
    # What backward uses instead of gradient() when set (tuple_get_item's sparse adjoint).
    sparse_gradient: Callable[[Any, Any], Any] | None = None
    # Whether compute takes 16-bit float arrays as they are: ops that move or convert data
    # (views, copies, astype), matmul, whose rows take them, and ops that are one NDArray
    # elementwise or reduction call, which rounds once itself (natively where the device lists
    # the row in HALF_ROWS, else through float32). Every other op sees them in float32 and has
    # its float32 results rounded back once (Value._compute), unless computes_halves says so.
    half_native: bool = False
    # Where autocast runs the op (needle.amp): "low" casts its floating inputs to the 16-bit
    # dtype (matmul, conv, attention), "float32" to float32 (losses); None leaves them.
    autocast: str | None = None
    # Whether a 16-bit first input gives a result of its dtype whatever the others' (norms
    # with float32 weights, as torch's); else the inputs' promoted dtype.
    keeps_input_dtype: bool = False

    def __call__(self, *args: Any) -> _Out:
        raise NotImplementedError()

    def computes_halves(self, arrays: list[Any]) -> bool:
        """Whether compute takes these 16-bit arrays as they are, for an op that is not
        half_native everywhere (conv, where the device computes its rows in 16 bits)."""
        return False

    def compute(self, *args: Any) -> Any:
        """Forward pass on NDArrays (a tuple of them for a TensorTuple), each op with its own
        operands: an NDArray, a tuple of NDArrays, or Saved."""
        raise NotImplementedError()

    def gradient(self, out_grad: _Out, node: _Out) -> Adjoint | tuple[Adjoint, ...]:
        """Partial adjoints of each input, given the adjoint of the output: None for an input
        that needs none; for a TensorTuple input, optionally sparse, {index: adjoint}."""
        raise NotImplementedError()

    def gradient_as_tuple(self, out_grad: _Out, node: _Out) -> tuple[Adjoint, ...]:
        output = self.gradient(out_grad, node)
        if isinstance(output, tuple):
            return output
        if isinstance(output, list):
            return tuple(output)
        return (output,)


class Saved:
    """What ``compute`` returns to keep values for ``gradient``: ``Saved(data, xhat=xhat)``.
    The output node gets ``data`` as its data and the values as ``node.saved``."""

    __slots__ = ("data", "values")

    def __init__(self, data: Any, **values: Any):
        self.data = data
        self.values = SimpleNamespace(**values)


class TensorOp(Op["Tensor"]):
    """An op whose output is a Tensor."""

    def __call__(self, *args: Any) -> Tensor:
        if _AUTOCAST is not None and self.autocast is not None:
            args = _autocast_inputs(self.autocast, args)
        return Tensor.make_from_op(self, args)


class TensorTupleOp(Op["TensorTuple"]):
    """An op whose output is a TensorTuple."""

    def __call__(self, *args: Any) -> TensorTuple:
        return TensorTuple.make_from_op(self, args)


class Value:
    """A node in the graph: an op and its inputs, or a leaf holding data."""

    op: Op[Any] | None
    # The op's operands: Tensors, or a TensorTuple for an op that takes one (stack). Each op
    # knows which it takes, so its gradient reads them as such (a.shape) without a check.
    inputs: list[Any]
    cached_data: NDArray
    requires_grad: bool
    grad: Value | None = None  # set by backward()
    saved: SimpleNamespace | None = None  # the values compute saved for gradient (see Saved)
    # register_hook's functions, {handle id: fn}; set on the instance by the first hook (the
    # class default keeps nodes without hooks as small and fast as before).
    _grad_hooks: dict[int, Callable[[Any], Any]] | None = None
    # In-place writes (class defaults, so nodes that never meet one pay nothing): the clock
    # when the node was made; for a tensor modified inside autograd, [(clock, snapshot)], the
    # node it was before each write (its consumers from before see that one); _cow marks a
    # .grad that may share its buffer (an in-place write copies it first).
    _birth = 0
    _history: list[tuple[int, Value]] | None = None
    _is_snapshot = False  # a node an in-place write left behind (see Tensor._inplace)
    _cow = False

    if TYPE_CHECKING:  # Tensor and TensorTuple add; sum_node_list adds Values

        def __add__(self, other: Any) -> Value: ...

    def realize_cached_data(self):
        """Compute (once) and return the data of this node."""
        if self.cached_data is not None:
            return self.cached_data
        # Inputs first, with an explicit stack rather than recursion, so that a long lazy graph
        # (an unrolled RNN) does not hit the recursion limit.
        stack = [(self, False)]
        while stack:
            node, inputs_ready = stack.pop()
            if node.cached_data is not None:
                continue
            if inputs_ready:
                node._compute(node.op)
            else:
                stack.append((node, True))
                stack.extend((x, False) for x in node.inputs if x.cached_data is None)
        return self.cached_data

    def _compute(self, op: Op[Any]) -> None:
        """Run the op (this node's) on the inputs' data; keep the result and what compute
        saved."""
        arrays = [
            x.cached_data if x.cached_data is not None else x.realize_cached_data()
            for x in self.inputs
        ]
        if _GUARD is not None:
            _check_guard(arrays)
        if _NUMPY_MODE:
            arrays = [_to_nd(a) for a in arrays]
        try:
            if op.half_native or not _any_half(arrays) or op.computes_halves(arrays):
                data = op.compute(*arrays)
            else:
                data = _compute_in_float32(op, arrays)
        except (ValueError, TypeError) as error:
            described = _in_context(error, op, arrays)
            if described is None:
                raise
            raise described from error
        if type(data) is Saved:
            data, self.saved = data.data, data.values
        # Integer and bool results carry no gradient in the NDArray mode (a TensorTuple's
        # elements are checked where they are taken); the numpy mode differentiates them, as
        # the course's hw1 does with Tensor([6]).
        if (
            self.requires_grad
            and type(data) is _NDARRAY
            and data._dtype not in _FLOAT_DTYPES
            and not _NUMPY_MODE
        ):
            self.requires_grad = False
        self.cached_data = _mode_data(data) if _NUMPY_MODE else data

    def is_leaf(self) -> bool:
        return self.op is None

    def _init(self, op, inputs, *, num_outputs=1, cached_data=None, requires_grad=None):
        global TENSOR_COUNTER
        TENSOR_COUNTER += 1
        if requires_grad is None:
            requires_grad = _GRAD_ENABLED and _any_requires_grad(inputs)
        self.op = op
        self.inputs = inputs
        self.num_outputs = num_outputs
        self.cached_data = cached_data
        self.requires_grad = requires_grad

    def __del__(self):
        global TENSOR_COUNTER
        TENSOR_COUNTER -= 1

    @classmethod
    def make_const(cls, data: Any, *, requires_grad: bool = False) -> Self:
        if _NUMPY_MODE:
            data = _mode_data(data)
        value = cls.__new__(cls)
        value._init(None, [], cached_data=data, requires_grad=requires_grad)
        return value

    @classmethod
    def make_from_op(cls, op: Op[Any], inputs: Sequence[Value]) -> Self:
        global TENSOR_COUNTER
        value = cls.__new__(cls)
        requires_grad = _GRAD_ENABLED and _any_requires_grad(inputs)
        # _init's stores, inlined: this runs on every op (~0.15 us of a 2.7 us eager add).
        TENSOR_COUNTER += 1
        value.op = op
        value.inputs = list(inputs)
        value.num_outputs = 1
        value.cached_data = None  # type: ignore[assignment]
        value.requires_grad = requires_grad
        if requires_grad:
            value._birth = _INPLACE_CLOCK
        if not LAZY_MODE:
            value._compute(op)
            if not requires_grad:  # nothing upstream needs a gradient: keep the data only
                value.op, value.inputs = None, []
        return value

    def _sum_adjoints(self, grads: list[Value]) -> Value:
        """The adjoint of this node from the partial adjoints its consumers sent."""
        return grads[0] if len(grads) == 1 else sum_node_list(grads)


def _in_context(error: Exception, op: Op[Any], arrays) -> Exception | None:
    """`error` again, its message led by the op's name and followed by its inputs' shapes,
    dtypes and devices: "add: shapes (3, 4) and (2, 4) do not broadcast (inputs: ...)".
    None if the exception type cannot be rebuilt from a message."""
    name = op.name or type(op).__name__.lower()
    message = str(error)
    for lead in (name + ": ", name + " "):  # messages that name the op already
        if message.startswith(lead):
            message = message[len(lead) :]
            break
    message = f"{name}: {message}"
    inputs = ", ".join(_describe(a) for a in arrays)
    try:
        return type(error)(f"{message} (inputs: {inputs})")
    except Exception:  # an exception class with another signature: leave it as it was
        return None


def _describe(array) -> str:
    if isinstance(array, tuple):
        return "(" + ", ".join(_describe(a) for a in array) + ")"
    shape, dtype = getattr(array, "shape", None), getattr(array, "dtype", None)
    if shape is None:
        return type(array).__name__
    return f"{shape} {dtype} on {getattr(array, 'device', '?')}"


_NDARRAY = nd.NDArray
_FLOAT_DTYPES = frozenset(nd.FLOATING)
_HALF_DTYPES = frozenset(nd.HALFS)


def _autocast_inputs(rule: str, args: tuple) -> tuple:
    """The op's floating-point Tensor inputs cast for autocast: to its 16-bit dtype ("low")
    or to float32; astype ops, so that their adjoints go back to the inputs' dtypes."""
    dtype = _AUTOCAST if rule == "low" else "float32"
    return tuple(
        ops.astype(x, dtype)
        if isinstance(x, Tensor) and x.dtype in _FLOAT_DTYPES and x.dtype != dtype
        else x
        for x in args
    )


def _any_half(arrays) -> bool:
    # A loop, not any(genexpr): this runs on every op, and the generator costs ~0.2 us.
    for a in arrays:  # noqa: SIM110
        if type(a) is _NDARRAY and a._dtype in _HALF_DTYPES:
            return True
    return False


def _compute_in_float32(op: Op[Any], arrays: list[Any]) -> Any:
    """op.compute with the 16-bit float arrays in float32 and its results rounded back once
    (nd.in_float32), the values it saved for gradient kept in float32."""
    saved = None

    def compute(*wide):
        nonlocal saved
        data = op.compute(*wide)
        if type(data) is Saved:
            data, saved = data.data, data.values
        return data

    data = nd.in_float32(compute, *arrays, first=op.keeps_input_dtype)
    return data if saved is None else Saved(data, **vars(saved))


def _any_requires_grad(inputs) -> bool:
    # A loop, not any(genexpr): this runs on every op, and the generator costs ~0.2 us.
    for x in inputs:  # noqa: SIM110
        if x.requires_grad:
            return True
    return False


class TensorTuple(Value):
    """A tuple of Tensors produced by one op (e.g. split)."""

    def __len__(self) -> int:
        return len(self.realize_cached_data())

    def __getitem__(self, index: int) -> Tensor:
        return ops.tuple_get_item(self, index)

    def tuple(self):
        return tuple(self[i] for i in range(len(self)))

    def __iter__(self):
        return iter(self.tuple())

    def __repr__(self) -> str:
        return "needle.TensorTuple" + str(self.tuple())

    def __str__(self) -> str:
        return self.__repr__()

    def __add__(self, other: TensorTuple) -> TensorTuple:
        assert isinstance(other, TensorTuple) and len(self) == len(other)
        return ops.make_tuple(*[self[i] + other[i] for i in range(len(self))])

    def detach(self) -> TensorTuple:
        return TensorTuple.make_const(self.realize_cached_data())

    def _sum_adjoints(self, grads) -> TensorTuple:
        """The adjoint of this tuple, summed element by element. A partial adjoint is a
        TensorTuple, or sparse: {index: adjoint}, zeros at the other elements (what taking one
        element sends back). Summing sparse adjoints by element costs an add per element
        taken twice; adding whole tuples would cost n^2 ops for the n elements of an n-way
        split (an unrolled RNN's split over its time steps)."""
        if len(grads) == 1 and not isinstance(grads[0], dict):
            return grads[0]
        arrays = array_of(self)
        parts: dict[int, list[Value]] = {}
        for grad in grads:
            items = grad.items() if isinstance(grad, dict) else enumerate(grad)
            for i, g in items:
                parts.setdefault(i % len(arrays), []).append(g)
        elements = []
        for i, array in enumerate(arrays):
            if i in parts:
                elements.append(sum_node_list(parts[i]))
            else:
                zeros = array.device.full(array.shape, 0.0, dtype=array.dtype)
                elements.append(Tensor.make_const(zeros))
        return ops.make_tuple(*elements)


def _comparison(fn):
    """A Tensor comparison: `fn` on the data, as a constant bool Tensor."""

    def compare(self, other):
        b = array_of(other) if isinstance(other, Tensor) else other
        return Tensor.make_const(fn(array_of(self), b))  # NumPy again in the numpy mode

    return compare


def _elementwise(op: str) -> Callable[[Tensor], Tensor]:
    """The Tensor method that applies the elementwise op class ops.<op>: x.exp() is
    ops.Exp()(x). (Looked up when called: the op catalogue imports this module.)"""

    def method(self: Tensor) -> Tensor:
        return getattr(ops, op)()(self)

    method.__name__ = op.lower()
    method.__qualname__ = "Tensor." + method.__name__
    method.__doc__ = f"ops.{method.__name__}(self)"
    return method


class Tensor(Value):
    """An n-dimensional array that records the ops applied to it, for backward().

    ``Tensor(array, device=None, dtype=None, requires_grad=True)``: `array` may be a Tensor,
    an NDArray, a NumPy array or anything NumPy accepts. In the NDArray mode the dtype is
    float32 unless given (integer data too: course code differentiates ``Tensor([6])``), an
    NDArray or Tensor keeps its own, and integer and bool tensors never require a gradient.
    In the numpy mode the data are a NumPy copy keeping the input's dtype.
    """

    # So that np_scalar - tensor calls our __rsub__ instead of NumPy turning the tensor into
    # an array (a NumPy result would silently cut the graph).
    __array_priority__ = 1000

    def __init__(
        self, array, *, device: Device | None = None, dtype=None, requires_grad=True, **kwargs
    ):
        if _NUMPY_MODE:
            self._init(None, [], cached_data=_numpy_data(array, dtype), requires_grad=requires_grad)
            return
        if isinstance(array, Tensor):
            if device is None:
                device = array.device
            if dtype is None:
                dtype = array.dtype
            if device == array.device and dtype == array.dtype:
                cached_data = array.realize_cached_data()
            else:
                cached_data = Tensor._array_from_numpy(array.numpy(), device=device, dtype=dtype)
        elif isinstance(array, NDArray):
            if dtype is None:
                dtype = array.dtype
            device = array.device if device is None else device
            cached_data = (
                array
                if device == array.device and dtype == array.dtype
                else NDArray(array, device=device, dtype=dtype)
            )
        else:
            device = device if device else default_device()
            cached_data = Tensor._array_from_numpy(array, device=device, dtype=dtype)
        if cached_data.dtype not in nd.FLOATING:
            requires_grad = False
        self._init(None, [], cached_data=cached_data, requires_grad=requires_grad)

    @staticmethod
    def _array_from_numpy(numpy_array, device, dtype):
        return array_api.array(numpy_array, device=device, dtype=dtype)

    @staticmethod
    def make_const(data, requires_grad=False):
        if _NUMPY_MODE:
            data = _mode_data(data)
        tensor = Tensor.__new__(Tensor)
        tensor._init(
            None,
            [],
            cached_data=data if not isinstance(data, Tensor) else data.realize_cached_data(),
            requires_grad=requires_grad,
        )
        return tensor

    @property
    def data(self) -> Tensor:
        """The same data, detached from the graph."""
        return self.detach()

    @data.setter
    def data(self, value: Tensor) -> None:
        """Swap in another tensor's data. The dtype must match; the shape may differ (as in
        needle and PyTorch: course code sets a (1, n) bias's data to an (n,) tensor)."""
        if not isinstance(value, Tensor):
            raise TypeError(f"data must be set to a Tensor, got {type(value).__name__}")
        if value.dtype != self.dtype:
            raise TypeError(f"cannot assign data of dtype {value.dtype} to a {self.dtype} tensor")
        self.cached_data = value.realize_cached_data()

    def detach(self) -> Tensor:
        """A new leaf Tensor sharing this one's data, with no graph and no gradient."""
        return Tensor.make_const(self.realize_cached_data())

    @property
    def shape(self) -> tuple[int, ...]:
        data = self.cached_data
        return (data if data is not None else self.realize_cached_data()).shape

    @property
    def dtype(self) -> str:
        data = self.cached_data
        return (data if data is not None else self.realize_cached_data()).dtype

    @property
    def device(self) -> Device:
        if _NUMPY_MODE:
            return default_device()
        return self.realize_cached_data().device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def size(self) -> int:
        return self.realize_cached_data().size

    def to(self, *args: Any, device: Device | None = None, dtype: Any = None) -> Tensor:
        """This tensor on `device` and/or in `dtype`, as torch's ``Tensor.to``: positional
        arguments may be a device (``x.to(ndl.cpu())``), a dtype (``x.to("float64")``), both,
        or a Tensor whose device and dtype to take (the numpy mode ignores the device, as
        ``Tensor(..., device=...)`` does there). Returns self when nothing changes;
        otherwise a new tensor, differentiable (the gradient goes back to this tensor's
        device and dtype)."""
        device, dtype = _to_arguments(args, device, dtype)
        cast = dtype is not None and nd.canonical_dtype(dtype) != self.dtype
        # The numpy mode keeps all data in NumPy: a device means nothing there, as in
        # Tensor(..., device=...).
        move = device is not None and device != self.device and not _NUMPY_MODE
        out = self
        # Cast where the new dtype exists: on this device if it holds it (float64 -> float32
        # before going to a float32-only device), else after the move (float32 on webgpu
        # -> float64 on cpu).
        if cast and nd.canonical_dtype(dtype) in getattr(self.device, "dtypes", ()):
            out, cast = ops.astype(out, dtype), False
        if move:
            out = ToDevice(device)(out)
        return ops.astype(out, dtype) if cast else out

    def cpu(self) -> Tensor:
        """``self.to(ndl.cpu())`` (self when already there)."""
        return self.to(cpu())

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Set requires_grad in place on a leaf (integer and bool tensors cannot require a
        gradient); returns self, as torch."""
        if not self.is_leaf() and not requires_grad:
            raise RuntimeError(
                "requires_grad_(False) on a tensor computed by an op: use detach() instead"
            )
        if requires_grad and self.dtype not in _FLOAT_DTYPES and not _NUMPY_MODE:
            raise RuntimeError(f"requires_grad_: a {self.dtype} tensor cannot require a gradient")
        self.requires_grad = requires_grad
        return self

    def register_hook(self, hook: Callable[[Tensor], Tensor | None]) -> RemovableHandle:
        """Call ``hook(grad)`` each time backward computes this tensor's gradient; a non-None
        return (a Tensor of the same shape) replaces the gradient, both in ``.grad`` and in
        what flows on to this tensor's inputs. Hooks run in registration order, each on the
        previous one's result. Returns a handle whose ``remove()`` takes the hook out."""
        if not self.requires_grad:
            raise RuntimeError(
                "register_hook: cannot register a hook on a tensor that does not require a gradient"
            )
        if self._grad_hooks is None:
            self._grad_hooks = {}
        return add_hook(self._grad_hooks, hook)

    @property
    def _version(self) -> int:
        """How many in-place writes this tensor's buffer has had (PyTorch's ``_version``)."""
        entry = _WRITTEN.get(id(_buffer(self.realize_cached_data())))
        return 0 if entry is None else entry[2]

    def _inplace(
        self,
        name: str,
        compute: Callable[..., Tensor],
        *operands: Any,
        write: Callable[[Any], None] | None = None,
        keeps_old: bool = True,
    ) -> Tensor:
        """Write ``compute(self, *operands)`` into this tensor's buffer (its views and detached
        aliases see it) and return self; when no graph is recorded, ``write(data)`` instead,
        if given (a direct write of a selection). Inside autograd this tensor becomes the
        result's node; what it was is kept as a snapshot for the nodes made before, which
        backward then finds (_as_seen_by). The snapshot keeps a copy of the old data only
        with `keeps_old`, for a result whose gradient reads it (x.mul_(y) for y's); else it
        shares the buffer, and a gradient that reads the old values raises, as in torch."""
        global _INPLACE_CLOCK
        if self.requires_grad and self.op is None and _GRAD_ENABLED:
            raise RuntimeError(
                f"{name}: a leaf tensor that requires grad ({_describe(self.cached_data)}) cannot "
                "be modified in place; do it under ndl.no_grad(), or on x.data"
            )
        data = self.realize_cached_data()
        if self._cow:  # a .grad that may share its buffer with other gradients
            data = self.cached_data = copy_data(data)
            self._cow = False
        _check_writable(name, data)
        _INPLACE_CLOCK += 1
        tracked = _GRAD_ENABLED and (
            self.requires_grad or any(getattr(x, "requires_grad", False) for x in operands)
        )
        if write is not None and not tracked:
            write(data)
            _record_write(name, data)
            return self
        if tracked and _is_view(self):
            raise RuntimeError(
                f"{name}: this tensor is a view of another ({_op_name(self)}); writes through a "
                "view are not tracked by autograd: clone() it, or write into the base tensor"
            )
        old = self._snapshot(copy_data(data) if keeps_old else data) if tracked else self
        # x.add_(x): the operand is the old x too (the tensor itself becomes the result)
        operands = tuple(old if x is self else x for x in operands)
        result = _fit_result(name, self, compute(old, *operands))
        _write(name, self, data, result.realize_cached_data())
        if tracked:
            self._history = [*(self._history or ()), (_INPLACE_CLOCK, old)]
            self.op, self.inputs, self.saved = result.op, result.inputs, result.saved
            self.requires_grad, self._birth = result.requires_grad, _INPLACE_CLOCK
        return self

    def _snapshot(self, data: Any) -> Tensor:
        """This node as it is, on `data` (for the nodes made before an in-place write)."""
        snapshot = Tensor.__new__(Tensor)
        snapshot._init(self.op, self.inputs, cached_data=data, requires_grad=self.requires_grad)
        snapshot.saved, snapshot._birth, snapshot._is_snapshot = self.saved, self._birth, True
        return snapshot

    def backward(
        self,
        out_grad: Tensor | None = None,
        create_graph: bool | None = None,
        accumulate: bool = False,
    ) -> None:
        """Set ``.grad`` of every node of the graph that requires a gradient.

        `out_grad` defaults to ones of this Tensor's shape, whatever the shape. Gradients
        overwrite ``.grad`` (as needle does; call the optimizer's ``reset_grad`` between steps
        either way). ``accumulate=True`` adds them to the ``.grad`` a node already has instead
        (one that has none gets its gradient), as torch always does: gradient accumulation
        over micro-batches, each loss scaled by 1/N, then one optimizer step. Hooks see the
        new gradient, before it is added; the nodes below get the new gradient too. With
        ``create_graph=True`` the gradients keep their own graph, for higher derivatives
        (``x.grad.backward()``; accumulated ones too). The default is the mode's: True in the
        numpy mode (the course's first homeworks differentiate gradients), False in the
        NDArray mode (PyTorch's): a gradient's graph leads back to the forward graph, and
        from each .grad back to its node, so keeping it held a ResNet-9 step's activations
        until the garbage collector ran (RSS 52 -> 168 MB over 40 steps, 27% slower).
        """
        if create_graph is None:
            create_graph = _NUMPY_MODE
        global _GRAD_ENABLED
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad (no graph "
                "leads to it from a tensor with requires_grad=True)"
            )
        if out_grad is None:
            data = self.realize_cached_data()
            device = default_device() if _NUMPY_MODE else data.device
            out_grad = Tensor.make_const(device.full(data.shape, 1.0, dtype=data.dtype))
        elif out_grad.shape != self.shape:
            raise ValueError(
                f"backward: out_grad of shape {out_grad.shape} does not match the "
                f"output's shape {self.shape}"
            )
        previous, _GRAD_ENABLED = _GRAD_ENABLED, create_graph
        try:
            compute_gradient_of_variables(self, out_grad, accumulate)
        finally:
            _GRAD_ENABLED = previous

    def __repr__(self) -> str:
        return "needle.Tensor(" + str(self.realize_cached_data()) + ")"

    def __str__(self) -> str:
        return self.realize_cached_data().__str__()

    def numpy(self) -> numpy.ndarray:
        data = self.realize_cached_data()
        return numpy.array(data) if _NUMPY_MODE else data.numpy()

    def item(self) -> float:
        if self.size() != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return float(self.numpy().reshape(-1)[0])

    def __float__(self) -> float:
        return self.item()

    def __len__(self) -> int:
        return len(self.realize_cached_data())

    def __bool__(self) -> bool:
        # Every Tensor is true, as in needle: `==` compares identity, and course code tests
        # `if a != b` on tuples of Tensors (PyTorch raises for more than one element).
        return True

    def __array__(self, dtype=None, copy=None):
        """np.asarray(t): a view of the tensor's memory where NumPy can read it in place (host
        memory, not bfloat16: NDArray.__array__), else a copy."""
        if _NUMPY_MODE:
            a = self.numpy()
            return a if dtype is None else a.astype(dtype)
        return self.realize_cached_data().__array__(dtype, copy)

    def __dlpack__(self, **kwargs: Any) -> Any:
        """DLPack export of the tensor's memory, zero copy (torch.from_dlpack(t))."""
        return self.realize_cached_data().__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.realize_cached_data().__dlpack_device__()

    # ---- operators --------------------------------------------------------------------
    # The two commonest operators make their node directly with one shared (stateless) op:
    # 0.2 us of a 2.7 us eager add.
    def __add__(self, other):
        if isinstance(other, Tensor):
            return Tensor.make_from_op(_OPS.add, (self, other))
        return ops.AddScalar(other)(self)

    def __mul__(self, other):
        if isinstance(other, Tensor):
            return Tensor.make_from_op(_OPS.mul, (self, other))
        return ops.MulScalar(other)(self)

    def __pow__(self, other):
        if isinstance(other, Tensor):
            return ops.EWisePow()(self, other)
        return ops.PowerScalar(other)(self)

    def __rpow__(self, other):
        return ops.EWisePow()(
            Tensor.make_const(self.device.full(self.shape, other, dtype=self.dtype)), self
        )

    def __sub__(self, other):
        # a + (-b), two nodes, as in needle: course code checks the graph's nodes.
        if isinstance(other, Tensor):
            return ops.EWiseAdd()(self, ops.Negate()(other))
        return ops.AddScalar(-other)(self)

    def __rsub__(self, other):
        return ops.AddScalar(other)(ops.Negate()(self))

    def __truediv__(self, other):
        if isinstance(other, Tensor):
            return ops.EWiseDiv()(self, other)
        return ops.DivScalar(other)(self)

    def __rtruediv__(self, other):
        return ops.MulScalar(other)(ops.PowerScalar(-1)(self))

    def __matmul__(self, other):
        return ops.matmul(self, other)

    def __rmatmul__(self, other):
        return ops.matmul(other, self)

    def __neg__(self):
        return ops.Negate()(self)

    def __getitem__(self, idxs):
        # An integer array or boolean mask (PyTorch's advanced indexing) goes to ops_shape's
        # IndexArray / MaskIndex; ints and slices stay GetItem's.
        picked = ops.ops_shape.array_getitem(self, idxs)
        if picked is not None:
            return picked
        # Anything else NumPy allows (None, several arrays, arrays with ints): by positions.
        if ops.ops_inplace.needs_positions(idxs):
            return ops.ops_inplace.take(self, idxs)
        return ops.GetItem(idxs)(self)

    __radd__ = __add__
    __rmul__ = __mul__

    # == and != compare identity and Tensors hash by identity, as in needle (graph and
    # optimizer dicts key on them; course code compares tuples of Tensors with !=): PyTorch's
    # elementwise equality is eq() / ne(). The order comparisons are elementwise and give
    # constant bool tensors (not differentiable).
    eq = _comparison(operator.eq)
    ne = _comparison(operator.ne)
    __ge__ = _comparison(operator.ge)
    __gt__ = _comparison(operator.gt)
    __le__ = _comparison(operator.le)
    __lt__ = _comparison(operator.lt)

    # ---- methods in the needle API ----------------------------------------------------
    def sum(self, axes=None, keepdims=False):
        return ops.Summation(axes, keepdims)(self)

    def max(self, axes=None, keepdims=False):
        return ops.Max(axes, keepdims)(self)

    def broadcast_to(self, shape):
        return ops.BroadcastTo(shape)(self)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        return ops.Reshape(tuple(shape))(self)

    def astype(self, dtype):
        return ops.astype(self, dtype)

    # PyTorch's dtype shorthands.
    def float(self):
        return ops.astype(self, "float32")

    def double(self):
        return ops.astype(self, "float64")

    def half(self):
        return ops.astype(self, "float16")

    def bfloat16(self):
        return ops.astype(self, "bfloat16")

    def transpose(self, axes=None):
        return ops.Transpose(axes)(self)

    def matmul(self, other):
        return ops.matmul(self, other)

    exp = _elementwise("Exp")
    log = _elementwise("Log")
    relu = _elementwise("ReLU")
    tanh = _elementwise("Tanh")
    sigmoid = _elementwise("Sigmoid")
    sqrt = _elementwise("Sqrt")

    @property
    def T(self):
        return self.transpose()


def from_dlpack(x: Any, device: Any = None, requires_grad: bool = False) -> Tensor:
    """ndl.from_dlpack(x): a Tensor over the memory of x (a NumPy array, a torch tensor:
    anything with __dlpack__), without a copy when it is C-contiguous (nd.from_dlpack)."""
    return Tensor.make_const(nd.from_dlpack(x, device), requires_grad=requires_grad)


def compute_gradient_of_variables(
    output_tensor: Tensor, out_grad: Tensor, accumulate: bool = False
) -> None:
    """Reverse-mode AD: set ``.grad`` on every node of the graph that requires a gradient
    (with `accumulate`, add to the ``.grad`` a node has; its consumers' adjoint alone
    propagates to its inputs)."""
    global _GUARD
    # Partial adjoints: Values, or for a TensorTuple also {index: adjoint} (see _sum_adjoints).
    node_to_output_grads: dict[int, list[Any]] = {id(output_tensor): [out_grad]}
    order: list[Value] = []
    _topo_sort(output_tensor, set(), order, needs_grad=True)
    given: set[int] = set()  # the .grad objects set so far
    for node in reversed(order):
        adjoint = node._sum_adjoints(node_to_output_grads.pop(id(node)))
        if node._grad_hooks:
            adjoint = _run_grad_hooks(node, adjoint)
        keep = accumulate and node.grad is not None
        node.grad = _plus(node.grad, adjoint) if keep else adjoint
        if type(node.grad) is Tensor:
            node.grad = _own_grad(node.grad, given)
        if node.op is None:
            continue
        sparse = node.op.sparse_gradient  # tuple_get_item's
        # Only a node made before the latest in-place write can have read an overwritten value.
        _GUARD = _stale_buffers(node) if node._birth < _INPLACE_CLOCK else None
        try:
            grads = (sparse(adjoint, node),) if sparse else node.op.gradient_as_tuple(adjoint, node)
        finally:
            _GUARD = None
        for inp, grad in zip(node.inputs, grads):
            if inp._history is not None:
                inp = _as_seen_by(inp, node)
            if inp.requires_grad:
                # A float32 input of a promoted (float64) op gets a float32 gradient, as in torch.
                if isinstance(grad, Tensor) and grad.dtype != inp.dtype:
                    grad = ops.astype(grad, inp.dtype)
                node_to_output_grads.setdefault(id(inp), []).append(grad)


def _own_grad(grad: Tensor, given: set[int]) -> Tensor:
    """The .grad to set: `grad`, marked copy-on-write (it may share its buffer with other
    gradients: an in-place op on it copies first), or a new object on the same data when
    another node already has this one (Add gives both inputs its adjoint: zeroing one
    .grad in place must not zero the other)."""
    if id(grad) in given and not grad.requires_grad:
        grad = Tensor.make_const(grad.cached_data)
    given.add(id(grad))
    grad._cow = True
    return grad


# ---- in-place writes: which node a consumer saw, and reads of overwritten values ----------
def _buffer(data: Any) -> Any:
    """The object that owns `data`'s memory: an NDArray's device buffer, a NumPy array's base
    (the numpy mode); views and detached aliases give the same one."""
    if type(data) is _NDARRAY:
        return data._handle
    while isinstance(getattr(data, "base", None), numpy.ndarray):
        data = data.base
    return data


def _op_name(node: Value) -> str:
    return node.op.name or type(node.op).__name__.lower()  # type: ignore[union-attr]


def _is_view(node: Value) -> bool:
    """Whether node's data is on the buffer of one of its inputs (reshape, transpose, ...);
    the snapshot an in-place write left as an input shares it by design and does not count."""
    if node.op is None or node.cached_data is None:
        return False
    buffer = _buffer(node.cached_data)
    return any(_buffer(x.cached_data) is buffer and not x._is_snapshot for x in node.inputs)


def _as_seen_by(value: Value, consumer: Value) -> Value:
    """The node `value` was when `consumer` was made: the snapshot taken by the first
    in-place write after that, or `value` itself."""
    for clock, snapshot in value._history or ():
        if clock > consumer._birth:
            return snapshot
    return value


def _stale_buffers(node: Value) -> tuple[Value, dict[int, str]] | None:
    """The guard for node's gradient: the buffers of its output and inputs written in place
    after it was made. Saved values are read by gradient for sure: one of them on such a
    buffer is an error now."""
    stale = {}
    for i, value in enumerate((node, *node.inputs)):
        key = id(_buffer(value.cached_data))
        entry = _WRITTEN.get(key)
        if entry is not None and entry[1] > node._birth:
            stale[key] = f"its input {i - 1}" if i else "its output"
            stale[key] += f" ({_describe(value.cached_data)}), modified by {entry[3]}"
    if not stale:
        return None
    if _is_view(node) and id(_buffer(node.cached_data)) in stale:
        raise RuntimeError(
            f"backward: {_op_name(node)}'s output is a view of its input, and that tensor was "
            "modified in place after the view was taken; autograd does not follow writes "
            "into views: take the view after the write, or clone() it"
        )
    for saved in vars(node.saved or SimpleNamespace()).values():
        for array in saved if isinstance(saved, tuple) else (saved,):
            if id(_buffer(array)) in stale:
                raise _stale_error(node, stale[id(_buffer(array))])
    return node, stale


def check_gradient_reads(*arrays: Any) -> None:
    """For a gradient computed on NDArrays (no Tensor ops, which Value._compute checks): raise
    if one of `arrays` was modified in place after the node being differentiated was made."""
    if _GUARD is not None:
        _check_guard(list(arrays))


def _check_guard(arrays: list[Any]) -> None:
    """Raise if an op run by a gradient reads a value modified after its node was made."""
    assert _GUARD is not None
    node, stale = _GUARD
    for array in arrays:
        what = stale.get(id(_buffer(array)))
        if what is not None:
            raise _stale_error(node, what)


def _stale_error(node: Value, what: str) -> RuntimeError:
    name = _op_name(node)
    return RuntimeError(
        f"backward: the gradient of {name} needs {what} after {name} used it: one of the "
        "values needed for gradient computation has been modified by an in-place operation "
        "(clone() it before modifying, or modify it after backward)"
    )


def copy_data(data: Any) -> Any:
    """A private copy of an NDArray or NumPy array (or NumPy scalar)."""
    if type(data) is not _NDARRAY:
        return numpy.array(data, copy=True) if isinstance(data, numpy.ndarray) else data
    return data.copy()


def _check_writable(name: str, data: Any) -> None:
    """An in-place write into a broadcast view would write one element many times."""
    strides = getattr(data, "strides", ())
    if any(st == 0 and n > 1 for st, n in zip(strides, data.shape)):
        raise RuntimeError(
            f"{name}: the tensor ({_describe(data)}) is a broadcast view: more than one element "
            "shares one memory location; clone() it before modifying it in place"
        )


def _fit_result(name: str, target: Tensor, result: Tensor) -> Tensor:
    """An in-place op's result in the target's dtype (which it cannot change, nor the
    shape: float into an integer tensor is an error, as in PyTorch)."""
    if result.shape != target.shape:
        raise ValueError(
            f"{name}: the result has shape {result.shape}, but the tensor modified in place has "
            f"shape {target.shape} (an in-place op cannot broadcast the tensor it modifies)"
        )
    if result.dtype == target.dtype:
        return result
    # str(): the numpy mode's dtypes are NumPy's, equal to the names but hashed otherwise
    if str(target.dtype) not in _FLOAT_DTYPES and str(result.dtype) in _FLOAT_DTYPES:
        raise TypeError(
            f"{name}: a {result.dtype} result cannot be written into a {target.dtype} tensor"
        )
    return ops.astype(result, target.dtype)


def _write(name: str, target: Tensor, data: Any, value: Any) -> None:
    """Copy an in-place op's result into the target's buffer and record the write."""
    if (isinstance(data, numpy.ndarray) and data.ndim) or type(data) is _NDARRAY:
        data[...] = value
    else:  # the numpy mode keeps a 0-d value as an immutable NumPy scalar: replace it
        target.cached_data = _mode_data(value)
    _record_write(name, target.cached_data)


def note_inplace_write(name: str, data: Any) -> None:
    """Record a write into `data`'s buffer made below the Tensor layer (the optimizers'
    in-place updates), so that backward through a graph made before it raises."""
    global _INPLACE_CLOCK
    _INPLACE_CLOCK += 1
    _record_write(name, data)


def written_in_place(data: Any) -> bool:
    """Whether _WRITTEN holds `data`'s buffer itself (one more reference to it)."""
    entry = _WRITTEN.get(id(_buffer(data)))
    return entry is not None and not isinstance(entry[0], weakref.ref)


def _record_write(name: str, data: Any) -> None:
    global _PRUNE_AT
    buffer = _buffer(data)
    key = id(buffer)
    entry = _WRITTEN.get(key)
    if entry is not None:
        entry[1], entry[2], entry[3] = _INPLACE_CLOCK, entry[2] + 1, name
        return
    try:  # a weak reference: the entry goes when the buffer does (nothing kept alive)
        held: Any = weakref.ref(buffer, functools.partial(_forget, key))
    except TypeError:  # a buffer type without weak references: held, and pruned
        held = buffer
    _WRITTEN[key] = [held, _INPLACE_CLOCK, 1, name]
    if len(_WRITTEN) > _PRUNE_AT:
        _prune()
        _PRUNE_AT = 2 * len(_WRITTEN) + 64


def _forget(key: int, ref: weakref.ref) -> None:
    entry = _WRITTEN.get(key)
    if entry is not None and entry[0] is ref:
        del _WRITTEN[key]


def _prune() -> None:
    """Drop the entries holding buffers that nothing else holds (references: the entry and
    getrefcount's argument): no node can read them any more."""
    for key, entry in list(_WRITTEN.items()):
        if not isinstance(entry[0], weakref.ref) and sys.getrefcount(entry[0]) <= 2:
            del _WRITTEN[key]


def _plus(old: Any, new: Any) -> Any:
    """old + new for backward(accumulate=True): Tensors, or TensorTuples element by element."""
    if isinstance(new, TensorTuple):
        return ops.make_tuple(*(old[i] + new[i] for i in range(len(new))))
    return old + new


def _run_grad_hooks(node: Value, grad: Any) -> Any:
    """The gradient after node's register_hook functions (each may replace it); only
    Tensors have hooks, so `grad` is a Tensor."""
    for hook in list(node._grad_hooks.values()):  # type: ignore[union-attr]
        replaced = hook(grad)
        if replaced is None:
            continue
        if not isinstance(replaced, Tensor) or replaced.shape != grad.shape:
            got = getattr(replaced, "shape", type(replaced).__name__)
            raise ValueError(
                f"register_hook: hook {getattr(hook, '__name__', hook)!r} returned {got} for a "
                f"gradient of shape {grad.shape}; return None or a Tensor of that shape"
            )
        grad = replaced
    return grad


class ToDevice(TensorOp):
    """A copy on another device (Tensor.to); the adjoint goes back to the input's device."""

    name = "to"

    def __init__(self, device: Device):
        self.device = device

    def compute(self, a: NDArray) -> NDArray:
        return a.to(self.device)

    def gradient(self, out_grad: Tensor, node: Tensor) -> Tensor:
        return ToDevice(node.inputs[0].device)(out_grad)


def _to_arguments(args: tuple[Any, ...], device: Any, dtype: Any) -> tuple[Any, Any]:
    """(device, dtype) from Tensor.to's arguments: devices, dtypes or a Tensor, in any order."""
    for arg in args:
        if isinstance(arg, Tensor):
            device, dtype = arg.device, arg.dtype
        elif isinstance(arg, (nd.BackendDevice, Device)):
            device = arg
        elif isinstance(arg, (str, numpy.dtype, type)):
            dtype = arg
        else:
            raise TypeError(
                f"to: expected a device (e.g. ndl.cpu()), a dtype (e.g. 'float64') or a Tensor, "
                f"got {arg!r}"
            )
    if dtype is not None:
        try:
            nd.canonical_dtype(dtype)
        except (TypeError, ValueError) as error:
            raise TypeError(f"to: {dtype!r} is not a dtype needle knows ({error})") from None
    return device, dtype


def find_topo_sort(node_list: list[Value]) -> list[Value]:
    """Every node the given ones depend on, inputs before the nodes that use them: a
    post-order depth-first walk over ``inputs`` left to right, each node once (the course's
    exact order)."""
    visited: set = set()
    order: list[Value] = []
    for root in node_list:
        topo_sort_dfs(root, visited, order)
    return order


def topo_sort_dfs(node: Value, visited: set, topo_order: list[Value]) -> None:
    """Post-order DFS from `node`: append it and the inputs it depends on, inputs first,
    skipping nodes in `visited` (a set of nodes or of their id()s)."""
    _topo_sort(node, visited, topo_order, needs_grad=False)


def _topo_sort(node: Value, visited: set, topo_order: list[Value], needs_grad: bool) -> None:
    """topo_sort_dfs, optionally only through inputs that require a gradient (backward's
    walk). Iterative, so long graphs (an unrolled RNN) do not hit the recursion limit."""
    stack = [(node, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            topo_order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for inp in reversed(node.inputs):
            if inp._history is not None:
                inp = _as_seen_by(inp, node)
            if (inp.requires_grad or not needs_grad) and id(inp) not in visited:
                stack.append((inp, False))


def sum_node_list(node_list: list[Value]) -> Value:
    """Sum a list of Values (Tensors or TensorTuples) without a reduce over a zero start."""
    total = node_list[0]
    for node in node_list[1:]:
        total = total + node
    return total


def _numpy_data(array, dtype) -> numpy.ndarray:
    """The numpy mode's data for Tensor(array, dtype): a Tensor's own array when the dtype
    matches, else a NumPy copy keeping the input's dtype unless `dtype` is given."""
    if isinstance(array, Tensor):
        data = array.realize_cached_data()
        if dtype is None or numpy.dtype(dtype) == data.dtype:
            return data
        array = data
    if isinstance(array, nd.NDArray):
        array = array.numpy()
    return numpy.array(array, dtype=dtype)


# The op catalogue imports this module, so it is imported last (by the time a Tensor method
# runs, needle.ops is complete).
from . import ops  # noqa: E402

# Shared instances of the ops Tensor's + and * build directly (ops are stateless); filled
# by needle.ops once its classes exist (it imports this module first).
_OPS = SimpleNamespace()
