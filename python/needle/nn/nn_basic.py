"""Module, Parameter and the basic layers and losses of needle.nn.

Layers follow the needle (CMU 10-714) API: constructors take ``device=None,
dtype="float32"`` and initialise weights as the course does; where that API is silent
(state_dict, zero_grad, parameter de-duplication) they follow PyTorch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

import needle.init as init
from needle import ops
from needle.autograd import (
    _NUMPY_MODE,
    RemovableHandle,
    Tensor,
    TensorTupleOp,
    _to_arguments,
    add_hook,
    array_device,
    array_of,
    cpu,
    is_grad_enabled,
    set_array,
)
from needle.backend_ndarray import axpby, capturing
from needle.backend_ndarray.ndarray import FLOATS as nd_FLOATS
from needle.ops.ops_logarithmic import ClassLabels

__all__ = [
    "Parameter",
    "Module",
    "Identity",
    "Linear",
    "Flatten",
    "ReLU",
    "Tanh",
    "Sigmoid",
    "Sequential",
    "SoftmaxLoss",
    "BatchNorm1d",
    "BatchNorm2d",
    "LayerNorm1d",
    "Dropout",
    "Residual",
]


class Parameter(Tensor):
    """A Tensor that a Module trains: ``Module.parameters()`` collects these."""


def _named_tensors(
    value: Any, prefix: str, _path=(), recurse: bool = True
) -> Iterator[tuple[str, Tensor]]:
    """(dotted name, tensor) for every Tensor reachable from `value`, in attribute order.

    Walks into Modules, lists, tuples and dicts, as the course's ``_unpack_params`` does.
    A container already on the current path (a module that refers back to its parent) is
    not entered again.
    """
    if isinstance(value, Tensor):
        yield prefix, value
        return
    if isinstance(value, Module):
        if _path and not recurse:
            return  # another module's tensors
        items = value._members()
    else:
        items = _container_items(value)
    if items is None or id(value) in _path:
        return
    path = _path + (id(value),)
    for key, item in items:
        yield from _named_tensors(item, f"{prefix}.{key}" if prefix else str(key), path, recurse)


def _unpack_params(value: Any) -> list[Parameter]:
    """Every Parameter reachable from `value`, in attribute order, as the course lists them:
    a Parameter reachable twice (shared by two layers) is listed twice."""
    return [tensor for _, tensor in _named_tensors(value, "") if isinstance(tensor, Parameter)]


def _child_modules(value: Any, _path=()) -> list[Module]:
    """Every Module reachable from `value` (through Modules, lists, tuples and dicts)."""
    if isinstance(value, Module):
        if id(value) in _path:
            return []
        return [value] + _child_modules(dict(value._members()), _path + (id(value),))
    if isinstance(value, dict):
        return [m for item in value.values() for m in _child_modules(item, _path)]
    if isinstance(value, (list, tuple)):
        return [m for item in value for m in _child_modules(item, _path)]
    return []


class _Hooks:
    """A module's hooks, {handle id: fn} per kind (an object, not a dict, so that the
    parameter, state_dict and module walks pass it by)."""

    def __init__(self):
        self.forward_pre: dict[int, Callable[..., Any]] = {}
        self.forward: dict[int, Callable[..., Any]] = {}
        self.backward: dict[int, Callable[..., Any]] = {}

    def call(self, module: Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """module.forward(*args, **kwargs) with its hooks, in torch's order: pre-hooks,
        backward-hook inputs, forward, forward hooks, backward-hook outputs."""
        for hook in list(self.forward_pre.values()):
            replaced = hook(module, args)
            if replaced is not None:
                args = replaced if isinstance(replaced, tuple) else (replaced,)
        backward = None
        if self.backward and is_grad_enabled():
            backward = _BackwardHook(module, self.backward)
            args = backward.wrap_inputs(args)
        output = module.forward(*args, **kwargs)
        for hook in list(self.forward.values()):
            replaced = hook(module, args, output)
            if replaced is not None:
                output = replaced
        return output if backward is None else backward.wrap_outputs(output)


class _HookIdentity(TensorTupleOp):
    """(a, b, ...) -> the same arrays as a TensorTuple; the adjoints pass through `callback`.
    One node for all of a module's inputs (or outputs), so that backward calls the callback
    once, with every adjoint summed, as torch's full backward hooks see them."""

    name = "backward_hook"

    def __init__(self, callback: Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]):
        self.callback = callback

    def compute(self, *arrays):
        return tuple(arrays)

    def gradient(self, out_grad, node):
        return self.callback(tuple(out_grad[i] for i in range(len(node.inputs))))


class _BackwardHook:
    """One call's register_full_backward_hook plumbing: identity nodes around the tensor
    inputs and outputs that need a gradient. The output node's adjoint is grad_output; the
    input node's adjoint, once complete, is grad_input, which the hooks may replace."""

    def __init__(self, module: Module, hooks: dict[int, Callable[..., Any]]):
        self.module = module
        self.hooks = hooks
        self.n_args = 0
        self.positions: list[int] = []  # the positional arguments wrapped
        self.grad_output: tuple[Tensor | None, ...] = ()

    def wrap_inputs(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        self.n_args = len(args)
        self.positions = [i for i, a in enumerate(args) if _needs_grad(a)]
        if not self.positions:
            return args
        wrapped = _HookIdentity(self._on_inputs)(*(args[i] for i in self.positions))
        out = list(args)
        for j, i in enumerate(self.positions):
            out[i] = wrapped[j]
        return tuple(out)

    def wrap_outputs(self, output: Any) -> Any:
        items = [output] if isinstance(output, Tensor) else output
        if not isinstance(items, (list, tuple)):
            return output  # a dict, a TensorTuple...: passed through, no hook
        positions = [i for i, o in enumerate(items) if _needs_grad(o)]
        if not positions:
            return output

        def on_outputs(grads: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            grad_output: list[Tensor | None] = [None] * len(items)
            for j, i in enumerate(positions):
                grad_output[i] = grads[j]
            self.grad_output = tuple(grad_output)
            if not self.positions:  # no input needs a gradient: the hooks run now
                self._run((None,) * self.n_args)
            return grads

        wrapped = _HookIdentity(on_outputs)(*(items[i] for i in positions))
        out = list(items)
        for j, i in enumerate(positions):
            out[i] = wrapped[j]
        if isinstance(output, Tensor):
            return out[0]
        return out if isinstance(output, list) else tuple(out)

    def _run(self, grad_input: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
        for hook in list(self.hooks.values()):
            replaced = hook(self.module, grad_input, self.grad_output)
            if replaced is None:
                continue
            replaced = tuple(replaced) if isinstance(replaced, (tuple, list)) else (replaced,)
            if len(replaced) != len(grad_input):
                raise ValueError(
                    f"register_full_backward_hook: hook {getattr(hook, '__name__', hook)!r} "
                    f"of {type(self.module).__name__} returned {len(replaced)} gradients for "
                    f"{len(grad_input)} inputs"
                )
            grad_input = replaced
        return grad_input

    def _on_inputs(self, grads: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        grad_input: list[Tensor | None] = [None] * self.n_args
        for j, i in enumerate(self.positions):
            grad_input[i] = grads[j]
        final = self._run(tuple(grad_input))
        out = []
        for j, i in enumerate(self.positions):
            g = final[i]
            if g is None:  # the hook dropped it: no gradient is a zero gradient
                g = grads[j] * 0.0
            elif not isinstance(g, Tensor) or g.shape != grads[j].shape:
                raise ValueError(
                    f"register_full_backward_hook: the replacement gradient of input {i} of "
                    f"{type(self.module).__name__} is {getattr(g, 'shape', type(g).__name__)}, "
                    f"the input's shape is {grads[j].shape}"
                )
            out.append(g)
        return tuple(out)


def _needs_grad(value: Any) -> bool:
    return isinstance(value, Tensor) and value.requires_grad


def _direct_children(value: Any, prefix: str, _path=()) -> Iterator[tuple[str, Module]]:
    """(dotted name, module) for the Modules reachable from `value` through dicts, lists and
    tuples, without entering a Module (a module's direct children)."""
    if isinstance(value, Module):
        yield prefix, value
        return
    items = _container_items(value)
    if items is None or id(value) in _path:
        return
    path = _path + (id(value),)
    for key, item in items:
        yield from _direct_children(item, f"{prefix}.{key}", path)


def _container_items(value: Any) -> Iterable[tuple[Any, Any]] | None:
    """(key, item) of a dict, list or tuple, the containers the module walks enter; None for
    anything else."""
    if isinstance(value, dict):
        return value.items()
    if isinstance(value, (list, tuple)):
        return enumerate(value)
    return None


def _move_array(array, device, dtype):
    """An NDArray on `device` (None: where it is) and, if it holds floats, in `dtype`."""
    if dtype is not None and array.dtype in nd_FLOATS:
        array = array.astype(dtype)
    if device is not None and not _NUMPY_MODE:
        array = array.to(device)
    return array


class _ModuleTuple(tuple):
    """The course's ``Sequential.modules`` tuple, which can also be called as torch's
    ``modules()`` method (the attribute and the method share a name)."""

    _owner: Module

    def __new__(cls, items: tuple, owner: Module) -> _ModuleTuple:
        value = super().__new__(cls, items)
        value._owner = owner
        return value

    def __call__(self) -> list[Module]:
        return self._owner._all_modules()


class _ModulesAttribute:
    """``Module.modules``: torch's ``modules()`` method, unless the instance has its own
    ``modules`` attribute (the course's Sequential keeps its tuple there), which wins; a
    tuple is returned callable (``seq.modules[0]`` and ``seq.modules()`` both work)."""

    def __get__(self, obj: Module | None, objtype: Any = None) -> Any:
        if obj is None:
            return self
        own = obj.__dict__.get("modules", _MISSING)
        if own is _MISSING:
            return obj._all_modules
        return _ModuleTuple(own, obj) if type(own) is tuple else own

    def __set__(self, obj: Module, value: Any) -> None:
        obj.__dict__["modules"] = value

    def __delete__(self, obj: Module) -> None:
        del obj.__dict__["modules"]


_MISSING = object()
_REPR_ACTIVE: set[int] = set()  # modules whose repr is being built (a back reference stops)


class Module:
    """Base class of layers: holds Parameters, sub-Modules and buffers as attributes.

    Sub-modules, parameters and buffers are found by walking the attributes (in insertion
    order, into dicts, lists and tuples), as the course does; names are the dotted paths
    ``state_dict`` uses (``modules.0.weight`` for the course's Sequential).
    """

    training = True  # also for subclasses whose __init__ skips Module.__init__
    _hooks: _Hooks | None = None  # set by the first hook registration
    modules = _ModulesAttribute()

    def __init__(self):
        self.training = True

    def _members(self) -> Iterable[tuple[Any, Any]]:
        """(name, value) of what this module holds: its attributes (ModuleList and
        ModuleDict give their elements instead)."""
        return vars(self).items()

    # ---- parameters, buffers and sub-modules -------------------------------------------
    def parameters(self, recurse: bool = True, remove_duplicate: bool = False) -> list[Parameter]:
        """The Parameters of this module and all its sub-modules, as a list (course order:
        attributes in insertion order, into Modules, dicts, lists and tuples; plain Tensors
        such as BatchNorm's running statistics are not parameters). As the course, a
        Parameter reached twice (shared by two layers) is listed twice unless
        `remove_duplicate` (torch's parameters() lists it once; so does
        named_parameters())."""
        if remove_duplicate or not recurse:
            return [p for _, p in self.named_parameters(recurse=recurse)]
        return _unpack_params(self)

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> list[tuple[str, Parameter]]:
        """(dotted name, Parameter), in parameters() order, each Parameter once (under the
        first name it is reached by) unless not `remove_duplicate`; the names are
        state_dict's. `recurse=False`: only this module's own parameters."""
        return [
            (n, t)
            for n, t in self._named_tensors(prefix, recurse, remove_duplicate)
            if isinstance(t, Parameter)
        ]

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> list[tuple[str, Tensor]]:
        """(dotted name, Tensor) of the tensors that are not Parameters (BatchNorm's running
        statistics), as torch's named_buffers."""
        return [
            (n, t)
            for n, t in self._named_tensors(prefix, recurse, remove_duplicate)
            if not isinstance(t, Parameter)
        ]

    def buffers(self, recurse: bool = True) -> list[Tensor]:
        return [t for _, t in self.named_buffers(recurse=recurse)]

    def _named_tensors(self, prefix: str, recurse: bool, remove_duplicate: bool):
        seen: set[int] = set()
        for name, tensor in _named_tensors(self, prefix, recurse=recurse):
            if remove_duplicate:
                if id(tensor) in seen:
                    continue
                seen.add(id(tensor))
            yield name, tensor

    def named_children(self) -> list[tuple[str, Module]]:
        """(name, module) of the direct sub-modules, each once: reached from an attribute
        through dicts, lists and tuples (``modules.0`` for a Sequential's first layer)."""
        seen, out = {id(self)}, []
        for key, value in self._members():
            for name, module in _direct_children(value, str(key)):
                if id(module) not in seen:
                    seen.add(id(module))
                    out.append((name, module))
        return out

    def children(self) -> list[Module]:
        return [module for _, module in self.named_children()]

    def named_modules(
        self, memo: set[int] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> list[tuple[str, Module]]:
        """(dotted name, module) for this module ('' unless `prefix`) and every sub-module,
        depth first in attribute order, each once unless not `remove_duplicate` (a module
        that refers back to an ancestor is never entered again)."""
        out: list[tuple[str, Module]] = []
        memo = set() if memo is None else memo

        def visit(module: Module, name: str, ancestors: frozenset[int]) -> None:
            if id(module) in ancestors or (remove_duplicate and id(module) in memo):
                return
            memo.add(id(module))
            out.append((name, module))
            inner = ancestors | {id(module)}
            for child_name, child in module.named_children():
                visit(child, f"{name}.{child_name}" if name else child_name, inner)

        visit(self, prefix, frozenset())
        return out

    def _all_modules(self) -> list[Module]:
        """torch's ``modules()``: this module and every sub-module, each once."""
        return [module for _, module in self.named_modules()]

    def _children(self) -> list[Module]:
        """Every sub-module, recursively (not including this one)."""
        return _child_modules(dict(self._members()), (id(self),))

    def apply(self, fn: Callable[[Module], Any]) -> Module:
        """fn(module) for every sub-module, children before their parent (as torch), each
        once, then fn(self); returns self."""
        order: list[Module] = []
        seen: set[int] = set()

        def visit(module: Module) -> None:
            seen.add(id(module))
            for child in module.children():
                if id(child) not in seen:
                    visit(child)
            order.append(module)

        visit(self)
        for module in order:
            fn(module)
        return self

    # ---- modes, gradients, devices -------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        self.training = mode
        for module in self._children():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient: None (torch's default), or zeros."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                data = array_of(p.grad)
                p.grad = Tensor.make_const(data.device.full(data.shape, 0.0, dtype=data.dtype))

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Set requires_grad on every parameter (e.g. to freeze a layer); returns self."""
        for p in self.parameters(remove_duplicate=True):
            p.requires_grad = requires_grad
        return self

    def to(self, *args: Any, device: Any = None, dtype: Any = None) -> Module:
        """Move every parameter and buffer (and their gradients) to `device` and/or cast
        the floating ones to `dtype`, in place, as torch's ``Module.to``: the Parameter and
        buffer objects stay the same (an optimizer holding them keeps them; its buffers
        follow with ``nn.optimizer_to``). Arguments as ``Tensor.to`` (the numpy mode
        ignores the device). Returns self."""
        device, dtype = _to_arguments(args, device, dtype)
        for _, tensor in self._named_tensors("", True, True):
            set_array(tensor, _move_array(array_of(tensor), device, dtype))
            if tensor.grad is not None:
                tensor.grad = Tensor.make_const(_move_array(array_of(tensor.grad), device, dtype))
        for module in self._all_modules():
            if isinstance(module, _DeviceModule):  # they make tensors with these later
                if device is not None:
                    module.device = device
                if dtype is not None:
                    module.dtype = dtype
        return self

    def cpu(self) -> Module:
        return self.to(cpu())

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Dotted names -> NumPy copies of every Parameter and Tensor buffer (e.g.
        BatchNorm's running statistics), as torch's ``state_dict``."""
        return OrderedDict((name, t.numpy().copy()) for name, t in _named_tensors(self, ""))

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Copy values into this module's tensors in place (optimizers keep pointing at the
        same Parameters). Shapes must match; with `strict`, so must the set of names."""
        own = OrderedDict(_named_tensors(self, ""))
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, tensor in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            value = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"load_state_dict: {name!r} has shape {tuple(value.shape)} in the "
                    f"state dict but {tuple(tensor.shape)} in the module"
                )
            tensor.cached_data = Tensor(
                value, device=tensor.device, dtype=tensor.dtype, requires_grad=False
            ).realize_cached_data()
            tensor.grad = None

    def save_weights(self, path: str) -> None:
        """state_dict() to a safetensors file (ndl.save; needle's names and layouts, atomic)."""
        from needle.serialization import save

        save(self.state_dict(), path)

    def load_weights(self, path: str, strict: bool = True) -> None:
        """load_state_dict of a safetensors file of weights: save_weights', or any flat one
        with needle's names and layouts (needle.interop ports PyTorch's)."""
        from needle.serialization import load

        state = load(path, as_numpy=True)
        if not isinstance(state, dict) or not all(
            isinstance(v, np.ndarray) for v in state.values()
        ):
            raise ValueError(f"load_weights: {path} holds no flat dict of weights")
        self.load_state_dict(state, strict)

    # ---- hooks ---------------------------------------------------------------------------
    def _hook_table(self) -> _Hooks:
        if self._hooks is None:
            self._hooks = _Hooks()
        return self._hooks

    def register_forward_pre_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """``hook(module, args)`` before each forward; a non-None return replaces the
        positional arguments (a tuple, or one value)."""
        return add_hook(self._hook_table().forward_pre, hook)

    def register_forward_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """``hook(module, args, output)`` after each forward; a non-None return replaces
        the output."""
        return add_hook(self._hook_table().forward, hook)

    def register_full_backward_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """``hook(module, grad_input, grad_output)`` during backward, once the gradients of
        the module's positional inputs are complete: tuples with one entry per positional
        input and per output (None where no gradient flows; an output that backward does not
        reach gets zeros). A non-None return (a tuple like grad_input) replaces the
        gradients of the inputs. Registered before the call it should see."""
        return add_hook(self._hook_table().backward, hook)

    def forward(self, *args, **kwargs):
        raise NotImplementedError()

    def __call__(self, *args, **kwargs):
        hooks = self._hooks
        if hooks is None:
            return self.forward(*args, **kwargs)
        return hooks.call(self, args, kwargs)

    # ---- printing ------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """What repr shows inside the parentheses: by default this module's own number,
        bool and str attributes (torch's layers define theirs; ours below do too)."""
        return ", ".join(
            f"{k}={v!r}"
            for k, v in self._members()
            if isinstance(k, str)
            and not k.startswith("_")
            and k not in ("training", "dtype")
            and type(v) in (bool, int, float, str)
        )

    def __repr__(self) -> str:
        """A tree as torch prints it: ``Name(extra)`` or ``Name(\n  (child): ...\n)``."""
        name = type(self).__name__
        if id(self) in _REPR_ACTIVE:  # a back reference to a module being printed
            return name + "(...)"
        _REPR_ACTIVE.add(id(self))
        try:
            extra = self.extra_repr()
            children = [
                f"({key}): " + repr(child).replace("\n", "\n  ")
                for key, child in self.named_children()
            ]
        finally:
            _REPR_ACTIVE.discard(id(self))
        lines = (extra.split("\n") if extra else []) + children
        if not lines:
            return name + "()"
        if not children and len(lines) == 1:
            return f"{name}({extra})"
        return name + "(\n  " + "\n  ".join(lines) + "\n)"


class _DeviceModule(Module):
    """A module that keeps the `device` and `dtype` it makes its weights with, as the
    course's sequence and attention layers do."""

    def __init__(self, device, dtype: str):
        super().__init__()
        self.device = device
        self.dtype = dtype


class Identity(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class Linear(Module):
    """(..., in_features) -> (..., out_features): X @ W + b."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype="float32"
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(
            init.kaiming_uniform(in_features, out_features, device=device, dtype=dtype)
        )
        # The course draws the bias with fan_in = out_features, as a (1, out) row.
        self.bias = (
            Parameter(
                init.kaiming_uniform(out_features, 1, device=device, dtype=dtype).reshape(
                    (1, out_features)
                )
            )
            if bias
            else None
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )

    def forward(self, X: Tensor) -> Tensor:
        # One op (ops.linear, in 16 bits under autocast): any bias with out_features values
        # works, (1, out) as made here or (out,) as course code sometimes assigns.
        return ops.linear(X, self.weight, self.bias, in_out=True)


class Flatten(Module):
    """(B, d1, d2, ...) -> (B, d1 * d2 * ...)."""

    def forward(self, X: Tensor) -> Tensor:
        return X.reshape((X.shape[0], int(np.prod(X.shape[1:], dtype=np.int64))))


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.relu(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.tanh(x)


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.sigmoid(x)


class Sequential(Module):
    """Applies its modules in order."""

    def __init__(self, *modules: Module):
        super().__init__()
        self.modules = modules

    def forward(self, x: Tensor) -> Tensor:
        for module in self.modules:
            x = module(x)
        return x


class SoftmaxLoss(Module):
    """Mean cross-entropy of logits (batch, classes) against integer labels (batch,)."""

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        if len(logits.shape) != 2:
            raise ValueError(f"SoftmaxLoss needs logits (batch, classes), got {logits.shape}")
        # Integer, uint8 or float labels, cut to integers as the course's .numpy().astype(int).
        labels = array_of(y) if isinstance(y, Tensor) else np.asarray(y)
        labels = ClassLabels(labels, logits.shape[1], array_device(logits), truncate=True)
        # One fused op, not logsumexp(logits) - sum(logits * one_hot(y)) in ~6 ops (and ~15
        # more in backward); same values and gradients, including gradients of gradients.
        return ops.softmax_cross_entropy(logits, labels)


class BatchNorm1d(Module):
    """(batch, dim) -> (batch, dim), normalised per feature over the batch.

    Training uses the batch statistics and updates ``running = (1 - momentum) * running +
    momentum * batch``. As in the course (and unlike torch, which stores the unbiased
    variance), running_var accumulates the biased batch variance, so that models and
    checkpoints behave as in needle.
    """

    def __init__(
        self, dim: int, eps: float = 1e-5, momentum: float = 0.1, device=None, dtype="float32"
    ):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype))
        self.running_mean = init.zeros(dim, device=device, dtype=dtype)
        self.running_var = init.ones(dim, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, x: Tensor) -> Tensor:
        # Features along axis 1: (batch, dim) here, (N, C, H, W) for BatchNorm2d.
        if self.training:
            # One op (ops.BatchNorm) rather than ~25 forward and ~40 backward Tensor ops.
            y = ops.batch_norm(x, self.weight, self.bias, self.eps, axis=1)
            y.realize_cached_data()  # lazy mode: the batch statistics come with the data
            m = self.momentum
            # Assigned in place (not rebound), so references to the buffers stay valid.
            stats = y.saved
            # array_of/set_array: the data as NDArrays in either mode (NumPy in the numpy mode).
            for buffer, batch in ((self.running_mean, stats.mean), (self.running_var, stats.var)):
                old = array_of(buffer)
                # In place while a step is recorded (needle.capture), so that its replays
                # update the one buffer; a new buffer otherwise, as the course's.
                out = old if capturing() and old.is_compact() else None
                set_array(buffer, axpby(1 - m, old, m, batch.astype(old.dtype), out=out))
            return y
        keep = (1, self.dim) + (1,) * (len(x.shape) - 2)

        def spread(v: Tensor) -> Tensor:
            return v.reshape(keep).broadcast_to(x.shape)

        std = spread((self.running_var + self.eps) ** 0.5)
        return (x - spread(self.running_mean)) / std * spread(self.weight) + spread(self.bias)


class BatchNorm2d(BatchNorm1d):
    """(N, C, H, W) -> (N, C, H, W), normalised per channel over N, H and W (BatchNorm1d's
    forward, which normalises along axis 1 over all the other axes)."""


class LayerNorm1d(Module):
    """(..., dim) -> (..., dim), normalised over the last axis."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype="float32"):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        axis = len(x.shape) - 1
        kept = x.shape[:-1] + (1,)
        mean = (x.sum((axis,)) / self.dim).reshape(kept).broadcast_to(x.shape)
        centred = x - mean
        var = ((centred**2).sum((axis,)) / self.dim).reshape(kept)
        std = ((var + self.eps) ** 0.5).broadcast_to(x.shape)
        ones = (1,) * axis + (self.dim,)
        weight = self.weight.reshape(ones).broadcast_to(x.shape)
        bias = self.bias.reshape(ones).broadcast_to(x.shape)
        return centred / std * weight + bias


class Dropout(Module):
    """Zeroes each entry with probability p in training and scales the rest by 1 / (1 - p)
    (inverted dropout), so evaluation is the identity."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must lie in [0, 1], got {p}")
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x  # no draw
        # One np.random.rand(*x.shape) per call, even at p = 0 (the course's draw order):
        # keep where u <= 1 - p, which at p = 0 keeps everything: x itself, no ops.
        if self.p == 0.0:
            np.random.rand(*x.shape)
            return x
        keep = init.randb(*x.shape, p=1 - self.p, device=x.device, dtype=x.dtype)
        if self.p == 1.0:
            return x * 0.0
        return x * keep / (1 - self.p)


class Residual(Module):
    """fn(x) + x."""

    def __init__(self, fn: Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) + x
