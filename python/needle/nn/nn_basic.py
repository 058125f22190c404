"""Module, Parameter and the basic layers and losses of needle.nn.

Layers follow the needle (CMU 10-714) API: constructors take ``device=None,
dtype="float32"`` and initialise weights as the course does; where that API is silent
(state_dict, zero_grad, parameter de-duplication) they follow PyTorch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np

import needle.init as init
from needle import ops
from needle.autograd import Tensor, array_of, set_array
from needle.backend_ndarray import axpby

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


def _named_tensors(value: Any, prefix: str, _path=()) -> Iterator[tuple[str, Tensor]]:
    """(dotted name, tensor) for every Tensor reachable from `value`, in attribute order.

    Walks into Modules, lists, tuples and dicts, as the course's ``_unpack_params`` does.
    A container already on the current path (a module that refers back to its parent) is
    not entered again.
    """
    if isinstance(value, Tensor):
        yield prefix, value
        return
    if isinstance(value, Module):
        items = vars(value).items()
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return
    if id(value) in _path:
        return
    path = _path + (id(value),)
    for key, item in items:
        yield from _named_tensors(item, f"{prefix}.{key}" if prefix else str(key), path)


def _unpack_params(value: Any) -> list[Parameter]:
    """Every Parameter reachable from `value`, in attribute order, as the course lists them:
    a Parameter reachable twice (shared by two layers) is listed twice."""
    return [tensor for _, tensor in _named_tensors(value, "") if isinstance(tensor, Parameter)]


def _child_modules(value: Any, _path=()) -> list[Module]:
    """Every Module reachable from `value` (through Modules, lists, tuples and dicts)."""
    if isinstance(value, Module):
        if id(value) in _path:
            return []
        return [value] + _child_modules(vars(value), _path + (id(value),))
    if isinstance(value, dict):
        return [m for item in value.values() for m in _child_modules(item, _path)]
    if isinstance(value, (list, tuple)):
        return [m for item in value for m in _child_modules(item, _path)]
    return []


class Module:
    """Base class of layers: holds Parameters, sub-Modules and buffers as attributes."""

    training = True  # also for subclasses whose __init__ skips Module.__init__

    def __init__(self):
        self.training = True

    def parameters(self) -> list[Parameter]:
        """The Parameters of this module and all its sub-modules, as a list (course order:
        ``vars(self)`` in insertion order, into Modules, dicts, lists and tuples; duplicates
        kept; plain Tensors such as BatchNorm's running statistics are not parameters)."""
        return _unpack_params(vars(self))

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        seen, named = set(), []
        for name, tensor in _named_tensors(self, ""):
            if isinstance(tensor, Parameter) and id(tensor) not in seen:
                seen.add(id(tensor))
                named.append((name, tensor))
        return named

    def _children(self) -> list[Module]:
        """Every sub-module, recursively (not including this one)."""
        return _child_modules(vars(self), (id(self),))

    def train(self, mode: bool = True) -> Module:
        self.training = mode
        for module in self._children():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

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

    def forward(self, *args, **kwargs):
        raise NotImplementedError()

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


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

    def forward(self, X: Tensor) -> Tensor:
        y = X @ self.weight
        bias = self.bias
        if bias is not None:
            # Read at call time, and any bias with out_features elements works: (1, out) as
            # made here, or (out,) as course code sometimes assigns.
            target = (1,) * (len(y.shape) - 1) + (self.out_features,)
            if (
                len(bias.shape) > len(target)
                or bias.shape != target[len(target) - len(bias.shape) :]
            ):
                bias = bias.reshape(target)
            y = y + bias.broadcast_to(y.shape)
        return y


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
        # Integer, uint8 or (whole-number) float labels, as the course's .numpy().astype(int).
        labels = np.asarray(y.numpy() if isinstance(y, Tensor) else y).reshape(-1)
        if labels.dtype.kind not in "iu":
            labels = labels.astype(np.int64)
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
                set_array(buffer, axpby(1 - m, old, m, batch.astype(old.dtype)))
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
