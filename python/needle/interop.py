"""PyTorch weights in and out of needle modules: names and layouts.

    needle.interop.load_torch_state_dict(model, torch_model.state_dict())   # or a .safetensors
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in
                                 needle.interop.export_torch_state_dict(model).items()})

The needle model is walked in parallel with the torch names its torch twin would have:
Sequential's children are ``0``, ``1``, ... (needle names them ``modules.0``); other modules
keep their attribute names. Per module type:

    Linear          weight (in, out) <-> torch (out, in); bias (1, out) <-> (out,)
    Conv            weight (k, k, C_in, C_out) <-> torch Conv2d's (C_out, C_in, k, k); torch's
                    twin has padding=k // 2, needle's "same" padding
    BatchNorm1d/2d  weight, bias, running_mean, running_var as they are; torch's
                    num_batches_tracked is ignored in and written as 0 out
    RNN/LSTM        lstm_cells.{k}.W_ih (in, 4h) <-> weight_ih_l{k} (4h, in), W_hh likewise;
                    bias_ih / bias_hh as they are (needle keeps torch's gate order i, f, g, o
                    and its two biases, so nothing is reordered or fused); cells: weight_ih ...
    any other       its tensors under the same names and layouts (Embedding, LayerNorm,
                    GroupNorm, ConvTranspose2d, ...)

needle's BatchNorm accumulates the biased batch variance in running_var where torch stores the
unbiased one: ported statistics give the same outputs, but after further training steps in
each framework the running variances differ by a factor of about n / (n - 1).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import ml_dtypes
import numpy as np

from . import nn
from .autograd import Tensor
from .nn.nn_basic import _direct_children

__all__ = ["load_torch_state_dict", "export_torch_state_dict"]


@dataclass
class _Layout:
    """How one needle tensor lies in torch: its shape there and the maps each way."""

    what: str
    torch_shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    to_torch: Callable[[np.ndarray], np.ndarray]
    to_needle: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


SAME = _Layout("the same layout", lambda s: s, lambda a: a, lambda a, s: a)
TRANSPOSED = _Layout(
    "(out, in), needle's transposed", lambda s: s[::-1], np.transpose, lambda a, s: a.T
)
VECTOR = _Layout("a vector", lambda s: (int(np.prod(s)),), np.ravel, lambda a, s: a.reshape(s))
CONV = _Layout(
    "(C_out, C_in, k, k), needle's (k, k, C_in, C_out)",
    lambda s: (s[3], s[2], s[0], s[1]),
    lambda a: a.transpose(3, 2, 0, 1),
    lambda a, s: a.transpose(2, 3, 1, 0),
)
BN_EXTRA = {"num_batches_tracked": np.array(0, np.int64)}  # torch-only, unused by needle


@dataclass
class _Entry:
    torch_name: str
    needle_names: list[str]  # more than one for a tensor shared by two modules (tied weights)
    tensor: Tensor
    layout: _Layout


def _rules(module: nn.Module) -> list[tuple[str, Any, _Layout]] | None:
    """(torch name, needle tensor, layout) of a module with a torch layout of its own, or None
    for one whose tensors and children keep their names and layouts."""
    if isinstance(module, nn.Linear):
        return [("weight", module.weight, TRANSPOSED), ("bias", module.bias, VECTOR)]
    if isinstance(module, nn.Conv):
        return [("weight", module.weight, CONV), ("bias", module.bias, SAME)]
    if isinstance(module, (nn.LSTMCell, nn.RNNCell)):
        return _cell_rules(module, "")
    if isinstance(module, (nn.LSTM, nn.RNN)):
        cells = module.lstm_cells if isinstance(module, nn.LSTM) else module.rnn_cells
        return [rule for k, cell in enumerate(cells) for rule in _cell_rules(cell, f"_l{k}")]
    return None


def _cell_rules(cell, suffix: str) -> list[tuple[str, Any, _Layout]]:
    return [
        ("weight_ih" + suffix, cell.W_ih, TRANSPOSED),
        ("weight_hh" + suffix, cell.W_hh, TRANSPOSED),
        ("bias_ih" + suffix, cell.bias_ih, SAME),
        ("bias_hh" + suffix, cell.bias_hh, SAME),
    ]


def _entries(model: nn.Module) -> tuple[list[_Entry], dict[str, np.ndarray]]:
    """Every needle tensor with its torch name and layout, and torch's extra entries."""
    names: dict[int, list[str]] = {}
    for name, tensor in model._named_tensors("", True, False):
        names.setdefault(id(tensor), []).append(name)
    entries: list[_Entry] = []
    extras: dict[str, np.ndarray] = {}

    def visit(module: nn.Module, prefix: str, ancestors: frozenset[int]) -> None:
        rules = _rules(module)
        own = rules or [(n, t, SAME) for n, t in module._named_tensors("", False, False)]
        for name, tensor, layout in own:
            if tensor is not None:
                entries.append(_Entry(prefix + name, names[id(tensor)], tensor, layout))
        if isinstance(module, nn.BatchNorm1d):
            extras.update({prefix + k: v.copy() for k, v in BN_EXTRA.items()})
        if rules is not None:
            return  # its sub-modules (an LSTM's cells) are in its rules
        # Every child under every name, as torch's state_dict lists a shared module under each
        # (named_children lists it once).
        children = (
            c for key, value in module._members() for c in _direct_children(value, str(key))
        )
        for name, child in children:
            if isinstance(module, nn.Sequential) and name.startswith("modules."):
                name = name[len("modules.") :]
            if id(child) not in ancestors:
                visit(child, prefix + name + ".", ancestors | {id(module)})

    visit(model, "", frozenset())
    return entries, extras


def export_torch_state_dict(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """The state dict `model`'s torch twin would have: torch's names and layouts, as NumPy
    arrays (torch.from_numpy each for torch's load_state_dict)."""
    entries, extras = _entries(model)
    out = OrderedDict(
        (e.torch_name, np.ascontiguousarray(e.layout.to_torch(e.tensor.numpy()))) for e in entries
    )
    out.update(extras)
    return out


def load_torch_state_dict(model: nn.Module, state: Any, strict: bool = True) -> None:
    """Copy a torch state dict into `model`, in place: a dict of torch tensors or NumPy arrays
    with torch's names and layouts, or the path of a safetensors file of one. With `strict`
    every tensor of the model must be given and every given name known. Raises ValueError
    naming the tensor for a shape that does not fit, KeyError for missing or unknown names."""
    if isinstance(state, (str, bytes)) or hasattr(state, "__fspath__"):
        from .serialization import load

        state = load(state, as_numpy=True)
    if not isinstance(state, dict):
        raise TypeError(
            f"load_torch_state_dict: a state dict or a path, not {type(state).__name__}"
        )
    arrays = {name: _numpy(name, value) for name, value in state.items()}
    entries, extras = _entries(model)
    ours, missing = {}, []
    for e in entries:
        if e.torch_name not in arrays:
            missing.append(e.torch_name)
            continue
        value, shape = arrays[e.torch_name], tuple(e.tensor.shape)
        if value.shape != e.layout.torch_shape(shape):
            raise ValueError(
                f"load_torch_state_dict: {e.torch_name} has shape {value.shape}, but needle's "
                f"{e.needle_names[0]} {shape} needs {e.layout.torch_shape(shape)} "
                f"({e.layout.what})"
            )
        ours.update(dict.fromkeys(e.needle_names, e.layout.to_needle(value, shape)))
    known = set(extras) | {e.torch_name for e in entries}
    unexpected = [k for k in arrays if k not in known]
    if strict and (missing or unexpected):
        raise KeyError(
            f"load_torch_state_dict: missing from the torch state dict {missing}, "
            f"unknown to the {type(model).__name__} {unexpected}"
        )
    model.load_state_dict(ours, strict=strict)


def _numpy(name: str, value: Any) -> np.ndarray:
    """A torch tensor (duck-typed: torch is not a dependency), Tensor or array as NumPy."""
    if isinstance(value, Tensor):
        return value.numpy()
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy lacks it; exact through float32
            return value.float().numpy().astype(ml_dtypes.bfloat16)
        return value.numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise TypeError(f"load_torch_state_dict: {name} is a {type(value).__name__}, not an array")
    return array
