"""Issue 16: the layers people reach for in the first hour (PyTorch names and conventions)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from needle.autograd import Tensor, array_of, set_array

from .nn_basic import Module

__all__: list[str] = ["ModuleList", "ModuleDict", "optimizer_to"]


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
