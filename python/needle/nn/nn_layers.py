"""Issue 16: the layers people reach for in the first hour (PyTorch names and conventions)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import needle.init as init
from needle import ops
from needle.autograd import Tensor, array_of, set_array

from .nn_basic import Module, Parameter

__all__: list[str] = [
    "ModuleList",
    "ModuleDict",
    "optimizer_to",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "ConvTranspose2d",
    "GELU",
    "SiLU",
    "Softmax",
    "GroupNorm",
    "LayerNorm",
    "CrossEntropyLoss",
    "MSELoss",
    "L1Loss",
    "BCEWithLogitsLoss",
]


def _check_module(value: Any, where: str) -> Module:
    if not isinstance(value, Module):
        raise TypeError(f"{where}: expected a Module, got {type(value).__name__}")
    return value


class ModuleList(Module):
    """A list of modules that parameters(), state_dict(), to(), train() and repr see, named
    ``0``, ``1``, ... as torch's (``layers.0.weight``). No forward: iterate over it."""

    def __init__(self, modules: Iterable[Module] | None = None):
        super().__init__()
        self._list: list[Module] = []
        if modules is not None:
            self.extend(modules)

    def _members(self) -> Iterable[tuple[Any, Any]]:
        return enumerate(self._list)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return ModuleList(self._list[index])
        return self._list[index]

    def __setitem__(self, index: int, module: Module) -> None:
        self._list[index] = _check_module(module, "ModuleList.__setitem__")

    def __delitem__(self, index: int | slice) -> None:
        del self._list[index]

    def __len__(self) -> int:
        return len(self._list)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._list)

    def __iadd__(self, modules: Iterable[Module]) -> ModuleList:
        return self.extend(modules)

    def __add__(self, other: Iterable[Module]) -> ModuleList:
        return ModuleList([*self._list, *other])

    def append(self, module: Module) -> ModuleList:
        self._list.append(_check_module(module, "ModuleList.append"))
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        self._list.insert(index, _check_module(module, "ModuleList.insert"))


class ModuleDict(Module):
    """A str -> module mapping (insertion order) that parameters(), state_dict(), to(),
    train() and repr see, its keys as names (``heads.cls.weight``), as torch's. No forward."""

    def __init__(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]] | None = None):
        super().__init__()
        self._dict: dict[str, Module] = {}
        if modules is not None:
            self.update(modules)

    def _members(self) -> Iterable[tuple[Any, Any]]:
        return self._dict.items()

    def __getitem__(self, key: str) -> Module:
        return self._dict[key]

    def __setitem__(self, key: str, module: Module) -> None:
        if not isinstance(key, str):
            raise TypeError(f"ModuleDict: keys must be str, got {type(key).__name__}")
        self._dict[key] = _check_module(module, f"ModuleDict[{key!r}]")

    def __getattr__(self, name: str) -> Module:
        # Only called when normal lookup fails: md.key as torch's. (Before __init__ has set
        # _dict, e.g. while unpickling, there is nothing to find.)
        found = self.__dict__.get("_dict", {})
        if name in found:
            return found[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or key {name!r}")

    def __delitem__(self, key: str) -> None:
        del self._dict[key]

    def __len__(self) -> int:
        return len(self._dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __contains__(self, key: object) -> bool:
        return key in self._dict

    def keys(self):
        return self._dict.keys()

    def values(self):
        return self._dict.values()

    def items(self):
        return self._dict.items()

    def pop(self, key: str) -> Module:
        return self._dict.pop(key)

    def clear(self) -> None:
        self._dict.clear()

    def update(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]]) -> None:
        pairs = modules.items() if isinstance(modules, Mapping) else modules
        for key, module in pairs:
            self[key] = module


def optimizer_to(optimizer: Any) -> Any:
    """Move an optimizer's per-parameter buffers (SGD's ``.u``, Adam's ``.m`` and ``.v``)
    to the device and dtype of the parameter each belongs to, after ``model.to(device)``:
    the buffers are Tensors of their own, so they stay where they were made, and the next
    ``step()`` would mix devices. The buffer objects stay the same. Returns the optimizer.

    (optim.py keys each buffer dict by the Parameter itself and lists the dicts' names in
    ``_buffers``; that is all this needs.)
    """
    for name in getattr(optimizer, "_buffers", ()):
        buffers: dict[Tensor, Tensor] = getattr(optimizer, name)
        for param, buffer in buffers.items():
            target = array_of(param)
            array = array_of(buffer)
            if array.dtype != target.dtype:
                array = array.astype(target.dtype)
            set_array(buffer, array.to(target.device))
    return optimizer


# ---- pooling ---------------------------------------------------------------------------
class MaxPool2d(Module):
    """NCHW max pooling, as torch.nn.MaxPool2d (stride defaults to the kernel size)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        ops.MaxPool2d(kernel_size, self.stride, padding)  # bad arguments fail here, not later

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x: Tensor) -> Tensor:
        return ops.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(MaxPool2d):
    """NCHW average pooling, as torch.nn.AvgPool2d (padding counts as zeros, torch's
    count_include_pad=True)."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d(Module):
    """NCHW -> (N, C, *output_size) averages over torch's adaptive windows (an int is a
    square size; None in a pair keeps that input size)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size
        ops.AdaptiveAvgPool2d(output_size)  # checks the size now

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"

    def forward(self, x: Tensor) -> Tensor:
        return ops.adaptive_avg_pool2d(x, self.output_size)


# ---- transposed convolution --------------------------------------------------------------
def _one_or_pair(value: Any, what: str) -> int | tuple[int, int]:
    """An int, or a (height, width) pair of ints (one int when they are equal)."""
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) for v in pair):
        raise ValueError(f"ConvTranspose2d: {what} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]) if pair[0] == pair[1] else (int(pair[0]), int(pair[1]))


class ConvTranspose2d(Module):
    """The adjoint of a 2-D convolution, as torch.nn.ConvTranspose2d: NCHW in and out,
    weight (in_channels, out_channels, kh, kw) and bias (out_channels,), both drawn as torch
    draws them, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = out_channels kh kw (torch's
    kaiming_uniform_ with a = sqrt(5) reads fan_in from the weight's second axis).
    kernel_size, stride, padding and output_padding: an int or a (height, width) pair."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        bias: bool = True,
        device=None,
        dtype="float32",
    ):
        super().__init__()
        k = _one_or_pair(kernel_size, "kernel_size")
        kh, kw = (k, k) if isinstance(k, int) else k
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.stride = _one_or_pair(stride, "stride")
        self.padding = _one_or_pair(padding, "padding")
        self.output_padding = _one_or_pair(output_padding, "output_padding")
        ops.ConvTranspose2d(self.stride, self.padding, self.output_padding)  # checks them
        bound = 1.0 / math.sqrt(out_channels * kh * kw)

        def uniform(*shape: int) -> Parameter:
            return Parameter(init.rand(*shape, low=-bound, high=bound, device=device, dtype=dtype))

        self.weight = uniform(in_channels, out_channels, kh, kw)
        self.bias = uniform(out_channels) if bias else None

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, "
            f"output_padding={self.output_padding}, bias={self.bias is not None}"
        )

    def forward(self, x: Tensor) -> Tensor:
        return ops.conv_transpose2d(
            x, self.weight, self.bias, self.stride, self.padding, self.output_padding
        )


# ---- activations -------------------------------------------------------------------------
class GELU(Module):
    """x Phi(x) ('none') or its tanh approximation ('tanh'), as torch.nn.GELU."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return ops.gelu(x, self.approximate)


class SiLU(Module):
    """x sigmoid(x)."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.silu(x)


class Softmax(Module):
    """softmax along `dim`. dim=None picks torch's legacy default (0 for 0-, 1- and 3-D
    inputs, else 1), as torch.nn.Softmax() does."""

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, x: Tensor) -> Tensor:
        dim = self.dim
        if dim is None:
            dim = 0 if len(x.shape) in (0, 1, 3) else 1
        return ops.softmax(x, dim)


# ---- normalisation -----------------------------------------------------------------------
class GroupNorm(Module):
    """(N, C, ...) normalised over each group of C / num_groups channels (and all the other
    axes), then scaled and shifted per channel, as torch.nn.GroupNorm."""

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype="float32",
    ):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(
                f"GroupNorm: num_channels={num_channels} must be divisible by "
                f"num_groups={num_groups}"
            )
        self.num_groups, self.num_channels, self.eps, self.affine = (
            num_groups,
            num_channels,
            eps,
            affine,
        )
        self.weight = (
            Parameter(init.ones(num_channels, device=device, dtype=dtype)) if affine else None
        )
        self.bias = (
            Parameter(init.zeros(num_channels, device=device, dtype=dtype)) if affine else None
        )

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"

    def forward(self, x: Tensor) -> Tensor:
        return ops.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(Module):
    """Normalised over the trailing `normalized_shape` axes, then scaled and shifted
    elementwise, as torch.nn.LayerNorm (LayerNorm1d, the course's, is a separate class)."""

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype="float32",
    ):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape = tuple(int(n) for n in shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        affine = elementwise_affine
        self.weight = (
            Parameter(init.ones(*self.normalized_shape, device=device, dtype=dtype))
            if affine
            else None
        )
        self.bias = (
            Parameter(init.zeros(*self.normalized_shape, device=device, dtype=dtype))
            if affine and bias
            else None
        )

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )

    def forward(self, x: Tensor) -> Tensor:
        return ops.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


# ---- losses ------------------------------------------------------------------------------
def _reduction(reduction: str, name: str) -> str:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


class CrossEntropyLoss(Module):
    """Softmax cross-entropy of (batch, classes) logits and class labels (or class
    probabilities), as torch.nn.CrossEntropyLoss, with its per-class `weight` (a constant:
    a list, NumPy array or Tensor of one number per class; 'mean' then divides by the summed
    weight of the counted targets' classes, as torch)."""

    def __init__(
        self,
        weight=None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.weight = weight
        self.ignore_index = ignore_index
        self.reduction = _reduction(reduction, "CrossEntropyLoss")
        self.label_smoothing = label_smoothing

    def forward(self, input: Tensor, target: Any) -> Tensor:
        return ops.cross_entropy(
            input,
            target,
            self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
        )


class MSELoss(Module):
    """(input - target)^2, reduced by `reduction`, as torch.nn.MSELoss."""

    _fn = staticmethod(ops.mse_loss)

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = _reduction(reduction, type(self).__name__)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return type(self)._fn(input, target, self.reduction)


class L1Loss(MSELoss):
    """|input - target|, reduced by `reduction`, as torch.nn.L1Loss."""

    _fn = staticmethod(ops.l1_loss)


class BCEWithLogitsLoss(MSELoss):
    """Binary cross-entropy of logits and targets in [0, 1], as torch.nn.BCEWithLogitsLoss
    (no weight or pos_weight)."""

    _fn = staticmethod(ops.binary_cross_entropy_with_logits)
