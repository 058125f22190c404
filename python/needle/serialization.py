"""ndl.save / ndl.load: tensors, state dicts and optimizer or scheduler state in safetensors files,
written atomically. A safetensors file is a JSON header and raw array bytes, so loading one
never runs code: needle never unpickles, and refuses pickles, torch.save files and .npz archives.

    ndl.save({"model": model.state_dict(), "optim": opt.state_dict()}, "state.safetensors")
    state = ndl.load("state.safetensors")                # the same structure, arrays as saved
    weights = ndl.load("hf_model.safetensors")           # any safetensors file: name -> Tensor

Format: every array is one safetensors tensor, named by its path in the structure ("model.w",
"optim.state.0.u"; a top-level state dict keeps its keys); the header's ``__metadata__`` holds
one key, "needle", a JSON string of the structure with the arrays replaced by their names and
the kinds JSON lacks (tuples, int dict keys, Tensor / Parameter / NDArray / NumPy) tagged.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Any, Callable

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from . import backend_ndarray as nd
from .autograd import Tensor
from .backend_selection import cpu
from .nn.nn_basic import Parameter

__all__ = ["save", "load", "atomic_write", "remove_stale_temporaries"]

FORMAT_KEY = "needle"  # the __metadata__ entry holding the structure
FORMAT_VERSION = 1

# safetensors dtype names -> NumPy. safetensors.numpy.load has no BF16: ml_dtypes' bfloat16
# (needle's, bit for bit torch's) is read here from the raw bytes.
_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_SAVABLE = {np.dtype(t) for t in _DTYPES.values()}


# ---- atomic writes (ndl.save and the trainer's checkpoints) -------------------------------
def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """write(file) into a temporary file beside `path`, fsync it, rename it over `path` and
    fsync the directory: an interrupted save never leaves a torn file, only an old one (and
    maybe a .NAME.PID.tmp, which remove_stale_temporaries deletes)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make a rename in `directory` durable (POSIX; a no-op where directories can't be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(path: str) -> list[str]:
    """Delete the temporary files atomic_write(path) left when its process was killed
    mid-save (.NAME.PID.tmp of a process no longer running); returns their paths."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix) : -len(".tmp")]
        if not (name.startswith(prefix) and name.endswith(".tmp") and pid.isdigit()):
            continue
        if int(pid) != os.getpid() and _process_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.remove(os.path.join(directory, name))
            removed.append(os.path.join(directory, name))
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        pass
    return True


# ---- save -------------------------------------------------------------------------------
def save(obj: Any, path: str) -> None:
    """Write `obj` to `path` as a safetensors file, atomically. `obj`: a Tensor, NDArray or
    NumPy array, or dicts (str or int keys), lists and tuples of those and of JSON values
    (numbers, strings, bools, None): a state dict, an optimizer's or a scheduler's."""
    arrays: dict[str, np.ndarray] = {}
    structure = _encode(obj, "", arrays)
    header = json.dumps({"version": FORMAT_VERSION, "root": structure})
    data = safetensors.numpy.save(arrays, metadata={FORMAT_KEY: header})
    atomic_write(path, lambda f: f.write(data))


def _encode(obj: Any, where: str, arrays: dict[str, np.ndarray]) -> Any:
    """obj as JSON, its arrays moved into `arrays` (named by `where`, made unique)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (Tensor, nd.NDArray, np.ndarray, np.generic)):
        kind = _kind(obj)
        value = obj.numpy() if isinstance(obj, (Tensor, nd.NDArray)) else np.asarray(obj)
        if value.dtype not in _SAVABLE:
            raise TypeError(f"ndl.save: {where or 'the object'} holds {value.dtype} values")
        name, n = where or "tensor", 1
        while name in arrays:  # e.g. {"a.b": x, "a": {"b": y}}
            name, n = f"{where or 'tensor'}#{n}", n + 1
        arrays[name] = value if value.flags.c_contiguous else value.copy(order="C")
        return {"array": name, "kind": kind}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{where}.{i}" if where else str(i), arrays) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else {"tuple": items}
    if isinstance(obj, dict):
        for key in obj:
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(
                    f"ndl.save: dict keys must be str or int, got {key!r} in {where or 'the top'}"
                )
        return {
            "dict": [
                [k, _encode(v, f"{where}.{k}" if where else str(k), arrays)] for k, v in obj.items()
            ]
        }
    raise TypeError(
        f"ndl.save: cannot save a {type(obj).__name__} (at {where or 'the top'}): only Tensors, "
        "NDArrays, NumPy arrays, dicts, lists, tuples and JSON values (no pickling)"
    )


def _kind(obj: Any) -> str:
    if isinstance(obj, Parameter):
        return "Parameter"
    if isinstance(obj, Tensor):
        return "Tensor"
    if isinstance(obj, nd.NDArray):
        return "NDArray"
    return "scalar" if isinstance(obj, np.generic) else "numpy"


# ---- load -------------------------------------------------------------------------------
def load(path: str, device=None, as_numpy: bool = False) -> Any:
    """Read what ndl.save wrote: the same structure, Tensors and Parameters as Tensors and
    Parameters on `device` (default cpu()), NDArrays as NDArrays, NumPy as NumPy. A safetensors
    file without needle's metadata (from torch's safetensors.torch.save_file or Hugging Face)
    gives a dict name -> Tensor. `as_numpy`: every array as a NumPy array instead.
    Anything else (a pickle, a torch.save or .npz archive) raises ValueError: needle never
    unpickles, so loading a file cannot run code."""
    arrays, metadata = _read(path)

    def restore(name: str, kind: str) -> Any:
        if name not in arrays:
            raise KeyError(f"no tensor named {name!r}")
        return _restore(arrays[name], "numpy" if as_numpy else kind, device, f"{path}: {name}")

    if FORMAT_KEY not in metadata:
        return {name: restore(name, "Tensor") for name in arrays}
    try:
        header = json.loads(metadata[FORMAT_KEY])
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {header.get('version')!r}, not {FORMAT_VERSION}")
        return _decode(header["root"], restore)
    except _Unrestorable:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        raise ValueError(f"ndl.load: {path} has a damaged needle structure ({error})") from None


def _read(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and the __metadata__ of a safetensors file, checked by safetensors."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        tensors = safetensors.deserialize(data)
    except safetensors.SafetensorError as error:
        raise ValueError(
            f"ndl.load: {path} is not a safetensors file ({_looks_like(data, error)}); needle "
            "reads only safetensors and never unpickles, since loading a pickle can run code"
        ) from None
    arrays = {}
    for name, t in tensors:
        if t["dtype"] not in _DTYPES:
            raise ValueError(f"ndl.load: {path}: {name} has dtype {t['dtype']}, which needle lacks")
        arrays[name] = np.frombuffer(t["data"], dtype=_DTYPES[t["dtype"]]).reshape(t["shape"])
    size = int.from_bytes(data[:8], "little")  # deserialize checked the header
    return arrays, json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def _looks_like(data: bytes, error: Exception) -> str:
    if data[:1] == b"\x80":  # the PROTO opcode that starts pickles of protocol 2 and later
        return "it is a Python pickle"
    if data[:4] == b"PK\x03\x04":
        return "it is a zip archive, as torch.save and np.savez write"
    return f"its header does not parse: {error}"


def _decode(node: Any, restore: Callable[[str, str], Any]) -> Any:
    """The structure _encode made, its arrays from restore(name, kind)."""
    if isinstance(node, list):
        return [_decode(v, restore) for v in node]
    if not isinstance(node, dict):
        return node
    if "tuple" in node:
        return tuple(_decode(v, restore) for v in node["tuple"])
    if "dict" in node:
        for key, _ in node["dict"]:
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(f"dict key {key!r}")
        return {k: _decode(v, restore) for k, v in node["dict"]}
    return restore(node["array"], node["kind"])


def _restore(array: np.ndarray, kind: str, device, name: str) -> Any:
    if kind == "numpy":
        return array.copy()  # writable, not the file's buffer
    if kind == "scalar":
        return array[()]
    if kind not in ("Tensor", "Parameter", "NDArray"):
        raise ValueError(f"unknown array kind {kind!r}")
    dtype = array.dtype.name
    try:
        if kind == "NDArray":
            return nd.array(array, dtype=dtype, device=device or nd.cpu())
        make = Parameter if kind == "Parameter" else Tensor
        return make(array, device=device or cpu(), dtype=dtype, requires_grad=kind == "Parameter")
    except (ValueError, TypeError) as error:  # e.g. an int8 array of a Hugging Face file
        raise _Unrestorable(f"ndl.load: {name}: {error} (as_numpy=True reads it)") from None


class _Unrestorable(ValueError):
    """An array the file holds whole that needle cannot make a Tensor of on this device."""
