"""NDArray: shape, strides and offset over a flat device buffer.

Views (reshape of compact arrays, permute, broadcast_to, slicing with steps, flip) change
metadata only; ``compact()`` materialises a view. Everything numeric goes to the device's
backend module through the primitive table documented in ``ndarray_backend_numpy.py``.
Every index and shape is checked here, before any backend is called, so native code never
sees an out-of-range view.
"""

from __future__ import annotations

import builtins
import importlib
import math
import numbers
import operator
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache, reduce
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import ndarray_backend_numpy, primitives
from .dtypes import (
    float_type,
    promotion,
    result_type,
    scalar_result_type,
    set_promotion,
)
from .primitives import DTYPES, FLOATING, FLOATS, HALFS

# The native modules, or None where they are not built.
ndarray_backend_cpu: ModuleType | None
ndarray_backend_cuda: ModuleType | None
try:
    from . import ndarray_backend_cpu
except ImportError as _error:  # pragma: no cover - exercised only without a native build
    ndarray_backend_cpu = None
    warnings.warn(
        f"needle: the C++ CPU backend is not built ({_error}); only ndl.cpu_numpy() is "
        "available. Reinstall with `pip install -e .` to build it.",
        RuntimeWarning,
        stacklevel=2,
    )

try:
    from . import ndarray_backend_cuda
except ImportError:
    ndarray_backend_cuda = None


class BackendUnavailable(Exception):
    """Raised by a device's resolve function: the reason the device is disabled here."""


def _cuda_backend():
    """The CUDA module when it is built and a GPU is visible (so that cuda() is disabled
    rather than failing at first use): a machine with nvcc but no GPU or driver builds and
    imports the module, and its device_count() is 0 there."""
    if ndarray_backend_cuda is None:
        raise BackendUnavailable(
            "this build of needle has no CUDA backend (built without nvcc, or NEEDLE_CUDA=OFF)"
        )
    if ndarray_backend_cuda.device_count() == 0:
        raise BackendUnavailable("no CUDA GPU is visible")
    return ndarray_backend_cuda


def _optional_backend(name: str):
    """A backend module that only some machines have (metal, mps: macOS with PyObjC; webgpu:
    wgpu and an adapter)."""
    try:
        return importlib.import_module(f".{name}", __package__)
    except ImportError as error:  # not macOS, no PyObjC, no wgpu, no adapter: just disabled
        raise BackendUnavailable(str(error)) from error
    except Exception as error:  # pragma: no cover - a broken install must not break import
        warnings.warn(
            f"needle: the {name} backend failed to load ({error!r})", RuntimeWarning, stacklevel=2
        )
        raise BackendUnavailable(f"the {name} backend failed to load ({error!r})") from error


def _emulated_backend(kind: str):
    """The CUDA or Metal kernels compiled for the CPU (needle.emulation), built on first use;
    unavailable, with a one-line reason, without a C++ compiler or when they do not build."""
    from ..emulation import BuildError

    try:
        harness = importlib.import_module(f"..emulation.{kind}.harness", __package__)
        return harness.emulated_backend(f"{kind}_emulated")
    except BuildError as error:
        raise BackendUnavailable(str(error).splitlines()[0]) from error


__all__ = [
    "NDArray",
    "from_host",
    "capturing",
    "BackendDevice",
    "DTYPES",
    "array",
    "from_dlpack",
    "empty",
    "full",
    "broadcast_to",
    "reshape",
    "maximum",
    "log",
    "exp",
    "tanh",
    "sum",
    "max",
    "flip",
    "stack",
    "split",
    "cpu",
    "cpu_numpy",
    "cuda",
    "metal",
    "mps",
    "webgpu",
    "cuda_emulated",
    "metal_emulated",
    "default_device",
    "all_devices",
    "devices_by_name",
    "compact_strides",
    "broadcast_shapes",
    "prod",
    "canonical_dtype",
    "FLOATS",
    "FLOATING",
    "HALFS",
    "in_float32",
    "set_promotion",
    "promotion",
    "result_type",
    "shared_numpy",
    "numpy_shared",
    "set_num_threads",
    "get_num_threads",
    "axpby",
    "RowIndices",
    "take_rows",
    "add_rows",
    "take_along_axis",
    "scatter_add_along_axis",
    "conv2d",
    "conv2d_native",
    "conv2d_native_for",
    "conv2d_takes_bias",
    "matmul_float32",
]

default_dtype = "float32"


def prod(xs: Iterable[int]) -> int:
    return reduce(operator.mul, xs, 1)


def canonical_dtype(dtype) -> str:
    """Map 'float32', np.float32, np.dtype('float32'), int, bool (and None -> default) to a
    dtype name."""
    if dtype is None:
        return default_dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in DTYPES:
        raise TypeError(f"unsupported dtype {dtype!r}: needle supports {', '.join(DTYPES)}")
    return name


class BackendDevice:
    """A device: a name plus the backend module that implements the primitive table.

    The module is resolved and validated against the table (``primitives.validate``) on
    first use (``enabled()``, ``mod``, an array on the device), not at construction: a device
    that needs hardware (cuda, metal, mps) is given `resolve`, a function that returns the
    module or None when the device is unavailable, so `import needle` neither initialises
    the CUDA driver nor loads PyObjC. ``mod`` is a plain attribute from then on, as cheap to
    read as any. Other attributes forward to the module (``device.Array``,
    ``device.ewise_add``); an optional primitive the module lacks forwards to the table's
    fallback over its core primitives, and ``has(name)`` says which the module has itself.
    """

    def __init__(self, name: str, mod=None, resolve=None):
        self.name = name
        self._resolve = (lambda: mod) if resolve is None else resolve

    def __eq__(self, other) -> bool:
        return isinstance(other, BackendDevice) and self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return self.name + "()"

    def _load(self):
        try:
            self.mod = self._resolve()
        except BackendUnavailable as error:
            self.__dict__["_reason"] = str(error)
            self.mod = None
        return self.mod

    def __setattr__(self, name, value):
        if name == "mod":  # (re)placing the module: validate it, forget primitives looked up
            for cached in [n for n in self.__dict__ if n in primitives.TABLE]:
                del self.__dict__[cached]
            self.__dict__["_native"] = (
                primitives.validate(value) if value is not None else frozenset()
            )
            self.__dict__["half_rows"] = (
                primitives.half_rows(value) if value is not None else frozenset()
            )
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        if name == "mod":  # first use
            return self._load()
        if name == "half_rows":  # the rows computing 16-bit floats itself (primitives.half_rows)
            self.mod  # noqa: B018 (loads the module, which sets half_rows)
            return self.__dict__.get("half_rows", frozenset())
        if name in ("name", "_resolve", "_native", "_reason") or (
            name.startswith("__") and name not in ("__tile_size__", "__device_name__")
        ):
            raise AttributeError(name)
        mod = self.mod
        if mod is None:
            self._check_enabled()
        if name in primitives.TABLE:
            found = primitives.resolve(mod, name)
            self.__dict__[name] = found  # looked up once; a plain attribute from then on
            return found
        return getattr(mod, name)

    def has(self, name: str) -> bool:
        """Whether the backend module implements primitive `name` itself (for an optional
        one: rather than through the table's fallback)."""
        if name not in primitives.TABLE:
            raise ValueError(f"{name!r} is not a primitive of the table")
        return self.mod is not None and (name in primitives.CORE or name in self._native)

    @property
    def dtypes(self) -> tuple[str, ...]:
        """The dtypes this device holds."""
        return primitives.backend_dtypes(self.mod) if self.mod is not None else ()

    def enabled(self) -> bool:
        return self.mod is not None

    @property
    def reason(self) -> str | None:
        """Why this device is disabled here (None when it is enabled)."""
        if self.mod is not None:
            return None
        return self.__dict__.get("_reason", f"device {self.name}() is not available")

    def _check_enabled(self) -> None:
        if self.mod is None:  # the reason in one line, whatever the backend wrote
            reason = " ".join(str(self.reason).split())
            raise RuntimeError(f"device {self.name}() is not available: {reason}")

    def randn(self, *shape, dtype=None) -> NDArray:
        dtype = canonical_dtype(dtype)
        return from_host(_draw, (), "randn", shape, dtype, device=self, dtype=dtype)

    def rand(self, *shape, dtype=None) -> NDArray:
        dtype = canonical_dtype(dtype)
        return from_host(_draw, (), "rand", shape, dtype, device=self, dtype=dtype)

    def one_hot(self, n: int, i, dtype=None) -> NDArray:
        i = np.asarray(i).astype(np.int64)
        if i.size and (i.min() < 0 or i.max() >= n):
            raise IndexError(
                f"one_hot: class indices must lie in [0, {n}), got {i.min()}..{i.max()}"
            )
        dtype = canonical_dtype(dtype)
        # Scatter ones into zeros: np.eye(n)[i] would build an n x n matrix first.
        out = np.zeros(i.shape + (n,), dtype=dtype)
        np.put_along_axis(out, i[..., None], 1, axis=-1)
        return NDArray(out, device=self, dtype=dtype)

    def empty(self, shape, dtype=None) -> NDArray:
        return NDArray._make(_as_shape(shape), device=self, dtype=canonical_dtype(dtype))

    def full(self, shape, fill_value, dtype=None) -> NDArray:
        arr = self.empty(shape, dtype)
        arr.fill(fill_value)
        return arr

    def zeros(self, *shape, dtype=None) -> NDArray:
        return self.full(_shape_args(shape), 0.0, dtype)

    def ones(self, *shape, dtype=None) -> NDArray:
        return self.full(_shape_args(shape), 1.0, dtype)


def _draw(kind: str, shape: tuple, dtype: str) -> np.ndarray:
    """One np.random.rand/randn(*shape) in `dtype` (NumPy's global generator)."""
    return np.asarray(getattr(np.random, kind)(*shape)).astype(dtype)


# needle.capture sets this while it records a step: from_host calls go to it, so that a replay
# runs their host computation again (None otherwise).
HOST_RECORDER: Callable[..., NDArray] | None = None


def capturing() -> bool:
    """Whether needle.capture is recording a step (whose replays cannot read the device on the
    host)."""
    return HOST_RECORDER is not None


def from_host(fn, inputs=(), *consts, device: BackendDevice, dtype) -> NDArray:
    """An NDArray on `device` of fn(*host copies of `inputs` (NDArrays), *consts): data that a
    step computes on the host (labels checked there, random draws). A step recorded by
    needle.capture runs fn again at each replay, so fn must be a pure function of its
    arguments (and of NumPy's global generator), with results of one shape for inputs of one
    shape."""
    if HOST_RECORDER is not None:
        return HOST_RECORDER(fn, inputs, consts, device, canonical_dtype(dtype))
    return NDArray(fn(*[a.numpy() for a in inputs], *consts), device=device, dtype=dtype)


_cpu_numpy = BackendDevice("cpu_numpy", resolve=lambda: ndarray_backend_numpy)
_cpu = BackendDevice("cpu", resolve=lambda: ndarray_backend_cpu)
_cuda = BackendDevice("cuda", resolve=_cuda_backend)
_metal = BackendDevice("metal", resolve=lambda: _optional_backend("ndarray_backend_metal"))
_mps = BackendDevice("mps", resolve=lambda: _optional_backend("ndarray_backend_mps"))
_webgpu = BackendDevice("webgpu", resolve=lambda: _optional_backend("ndarray_backend_webgpu"))
_cuda_emulated = BackendDevice("cuda_emulated", resolve=lambda: _emulated_backend("cuda"))
_metal_emulated = BackendDevice("metal_emulated", resolve=lambda: _emulated_backend("metal"))


def cpu_numpy() -> BackendDevice:
    """The NumPy reference backend."""
    return _cpu_numpy


def cpu() -> BackendDevice:
    """The C++ CPU backend."""
    return _cpu


def cuda() -> BackendDevice:
    """The CUDA backend (``enabled()`` is False when it was not built or no GPU is present)."""
    return _cuda


def metal() -> BackendDevice:
    """needle's MSL kernels on an Apple GPU (macOS; float32 only; ``enabled()`` is False
    elsewhere or without ``pip install "needle[metal]"``)."""
    return _metal


def mps() -> BackendDevice:
    """Like metal(), with matmul on Metal Performance Shaders."""
    return _mps


def webgpu() -> BackendDevice:
    """needle's WGSL kernels through wgpu: any GPU with Metal, Vulkan or D3D12, or a CPU
    Vulkan driver (``pip install "needle[webgpu]"``; ``enabled()`` is False, with
    ``reason``, without wgpu or an adapter; NEEDLE_WEBGPU_ADAPTER picks one by name)."""
    return _webgpu


def cuda_emulated() -> BackendDevice:
    """The CUDA backend's host code and kernels compiled with the system C++ compiler ($CXX)
    and run on the CPU, one GPU thread at a time: slow, for correctness. A kernel that
    diverges at a barrier, accesses memory out of bounds or dereferences a null argument
    raises needle.emulation.EmulationError naming the kernel, block and thread.
    NEEDLE_CUDA_KERNELS=folder uses its .cu files in place of the shipped ones of the same
    name (docs/emulated_devices.md). Not in all_devices(): enabled() builds it (once per
    version, cached)."""
    return _cuda_emulated


def metal_emulated() -> BackendDevice:
    """needle's MSL kernels compiled as C++ and run on the CPU, as cuda_emulated() is
    (NEEDLE_METAL_KERNELS=folder for a user's .metal files)."""
    return _metal_emulated


def default_device() -> BackendDevice:
    """The C++ CPU backend when built, else the NumPy one."""
    return _cpu if _cpu.enabled() else _cpu_numpy


def set_num_threads(n: int) -> None:
    """Threads of the C++ CPU backend's kernels, as torch.set_num_threads. The default is the
    environment variable NEEDLE_NUM_THREADS when set, else the number of cores."""
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"set_num_threads needs n >= 1, got {n}")
    if ndarray_backend_cpu is not None:
        ndarray_backend_cpu.set_num_threads(n)


def get_num_threads() -> int:
    """Threads of the C++ CPU backend (1 when it is not built: NumPy's backend is serial here)."""
    return ndarray_backend_cpu.get_num_threads() if ndarray_backend_cpu is not None else 1


def all_devices():
    """Every device known to needle, enabled or not."""
    # The course's three first, in its order.
    return [cpu(), cuda(), cpu_numpy(), metal(), mps(), webgpu()]


def devices_by_name() -> dict[str, BackendDevice]:
    """Every device by name, the emulated ones too (not in all_devices(): their enabled()
    builds them), for what names a device: needle train --device, ndl.debug.compare."""
    return {d.name: d for d in [*all_devices(), cuda_emulated(), metal_emulated()]}


def _as_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    shape = tuple(operator.index(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    return shape


_check_view = primitives.check_view


def _shape_args(shape: tuple) -> tuple:
    """Accept both f(2, 3) and f((2, 3))."""
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


@lru_cache(maxsize=4096)
def _size(shape: tuple[int, ...]) -> int:
    """The number of elements of a shape (cached: it is asked on every op)."""
    return prod(shape)


def compact_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major strides (in elements) of a compact array of this shape."""
    return _compact_strides(tuple(shape))


@lru_cache(maxsize=4096)
def _compact_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride = 1
    res = []
    for dim in reversed(shape):
        res.append(stride)
        stride *= dim
    return tuple(reversed(res))


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy's broadcasting rule; ValueError naming the shapes when they do not broadcast."""
    ndim = builtins.max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        dim = 1
        for s in shapes:
            d = s[i - ndim + len(s)] if i - ndim + len(s) >= 0 else 1
            if d != 1:
                if dim != 1 and d != dim:
                    raise ValueError(
                        "shapes "
                        + " and ".join(str(tuple(s)) for s in shapes)
                        + " do not broadcast"
                    )
                dim = d
        out.append(dim)
    return tuple(out)


_AXES = [list(range(n)) for n in range(33)]  # the identity permutation of each rank


def _normalize_axis(axis: int, ndim: int) -> int:
    axis = operator.index(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an array with {ndim} dimensions")
    return axis % ndim


def _normalize_axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (axis,)
    axes = tuple(_normalize_axis(a, ndim) for a in axis)
    if len(set(axes)) != len(axes):
        raise ValueError(f"repeated axis in {tuple(axis)}")
    return axes


def _matmul_strides(a: NDArray) -> tuple[int, int, int] | None:
    """(batch, row, col) strides of a (..., rows, cols) view whose batch axes merge into one
    axis of uniform stride, with no negative stride; None when it needs a compact copy."""
    if builtins.min(a._strides, default=0) < 0:
        return None
    batch_stride = 0
    dims = [(d, s) for d, s in zip(a._shape[:-2], a._strides[:-2]) if d != 1]
    for (_, s), (d_next, s_next) in zip(dims, dims[1:]):
        if s != s_next * d_next:
            return None
    if dims:
        batch_stride = dims[-1][1]
    return (batch_stride, a._strides[-2], a._strides[-1])


# Each primitive's dtypes and output dtype, from the table: NDArray converts operands to a
# dtype the row takes before calling it.
_TAKES = {name: frozenset(p.dtypes) for name, p in primitives.TABLE.items()}
_OUT = {name: p.out_dtype for name, p in primitives.TABLE.items()}
_FLOAT_SET = frozenset(FLOATS)
_HALF_SET = frozenset(HALFS)
_FLOATING_SET = frozenset(FLOATING)
_MATMUL_SET = frozenset(primitives.MATMUL_DTYPES)


def in_float32(method: Callable[..., Any], *args: Any, first: bool = False) -> Any:
    """`method` on `args` with their 16-bit float arrays in float32 (exact), its float32
    results rounded once back to the 16-bit dtype when that was every floating operand's:
    what a kernel computing in float32 registers gives. Mixed with float32 or float64, the
    result keeps the promoted dtype (torch's rule), and bfloat16 with float16 is float32;
    with `first`, it has the first operand's dtype (a norm's float32 weights on 16-bit input,
    as torch's norms)."""
    floating = {a._dtype for a in args if type(a) is NDArray and a._dtype in _FLOATING_SET}
    if first:
        floating = {args[0]._dtype}
    wide = [
        a.astype("float32") if type(a) is NDArray and a._dtype in _HALF_SET else a for a in args
    ]
    result = method(*wide)
    half = floating.pop() if len(floating) == 1 else None
    if half not in _HALF_SET:
        return result
    if type(result) is tuple:
        return tuple(_rounded(r, half) for r in result)
    return _rounded(result, half)


def _rounded(array: Any, half: str) -> Any:
    """A float32 result in the 16-bit dtype `half`; anything else (bool, int64) as it is."""
    return array.astype(half) if type(array) is NDArray and array._dtype == "float32" else array


_Row = tuple  # (primitive name, the dtypes it takes, its out dtype or None)
_BinaryMethod = Callable[["NDArray", "NDArray | float"], "NDArray"]


def _binary_method(op: str, scalar_op: str | None = None) -> _BinaryMethod:
    """The NDArray method self (op) other: ewise_<op> when other is an NDArray, else
    scalar_<scalar_op> (default: scalar_<op>)."""
    ewise_name, scalar_name = f"ewise_{op}", f"scalar_{scalar_op or op}"
    # (name, dtypes the row takes, its out dtype), looked up once here, not per call.
    ewise = (ewise_name, _TAKES[ewise_name], _OUT[ewise_name])
    scalar = (scalar_name, _TAKES[scalar_name], _OUT[scalar_name])

    kernel, takes, out_dtype = ewise

    def method(self: NDArray, other: NDArray | float) -> NDArray:
        if (  # _binary's common case, here to save a call frame (~0.1 us of 1.1)
            type(other) is NDArray
            and self._compact is True
            and other._compact is True
            and other._shape == self._shape
            and other._dtype == self._dtype
            and other._device is self._device
            and self._dtype in takes
        ):
            out = NDArray._compact_on(self._device, self._shape, out_dtype or self._dtype)
            if _size(self._shape):
                getattr(self._device.mod, kernel)(self._handle, other._handle, out._handle)
            return out
        return self._binary(other, ewise, scalar)

    method.__doc__ = f"self ({op}) other: {ewise_name}, or {scalar_name} for a number"
    return method


_INT_RANGE = {
    dt: (int(np.iinfo(dt).min), int(np.iinfo(dt).max)) for dt in ("int32", "int64", "uint8")
}


def _compute_dtype(name: str, dtype: str) -> str:
    """The dtype primitive `name` computes a `dtype` result in: `dtype` itself when the row
    takes it, the float of the promotion rule for floating-point-only rows (division, exp),
    else a TypeError (arithmetic on bools)."""
    if dtype in _TAKES[name] or dtype in _HALF_SET:  # (16-bit: a row of device.half_rows)
        return dtype
    if dtype != "bool" or _TAKES[name] <= _FLOAT_SET:
        return float_type(dtype)
    raise TypeError(f"{name}: not defined for bool arrays; convert with astype() first")


def _scalar_operands(a: NDArray, value: Any, name: str) -> tuple[NDArray, float]:
    """`a` converted to the dtype of `a (op) value` and `value` as the float the scalar
    primitive takes: a whole number in range for an integer array (else the array is
    compared as float64, or for arithmetic OverflowError, as NumPy)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    number: Any = value
    if not isinstance(value, (numbers.Real, np.bool_, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    dtype = _compute_dtype(name, scalar_result_type(a._dtype, value))
    if dtype in _INT_RANGE:
        low, high = _INT_RANGE[dtype]
        if not low <= int(number) <= high:
            if _OUT[name] is None:
                raise OverflowError(f"{name}: {value} is out of range for {dtype}")
            dtype = "float64"
    elif dtype == "bool" and value not in (0, 1):
        dtype = "float64" if _OUT[name] else dtype
    return (a if dtype == a._dtype else a.astype(dtype)), float(value)


def _element(value, dtype: str, what: str) -> float:
    """A number to store in a `dtype` array, as the float fill/scalar_setitem take: for an
    integer dtype truncated toward zero and checked to fit (NumPy's casting of a float)."""
    value = value.item() if isinstance(value, (np.ndarray, np.generic)) else value
    if dtype in _INT_RANGE:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{what}: cannot store {value} in an {dtype} array")
        value = int(value)
        low, high = _INT_RANGE[dtype]
        if not low <= value <= high:
            raise OverflowError(f"{what}: {value} is out of range for {dtype}")
    elif dtype == "bool":
        return float(bool(value))
    return float(value)


class NDArray:
    """A strided n-dimensional array on a device.

    ``NDArray(x, device=None, dtype=None)`` copies ``x`` (an NDArray, NumPy array or
    anything ``np.array`` accepts) onto ``device`` (default: ``default_device()``). As in
    needle, the dtype is float32 unless given, whatever the dtype of a NumPy input; an
    NDArray input keeps its own.
    """

    _shape: tuple[int, ...]
    _strides: tuple[int, ...]  # in elements
    _offset: int
    _device: BackendDevice
    _handle: primitives.BackendArray  # an Array of the device's backend module
    _dtype: str
    _compact: bool | None  # caches is_compact(): True/False, or None when not yet known
    __slots__ = (
        "_shape",
        "_strides",
        "_offset",
        "_device",
        "_handle",
        "_dtype",
        "_compact",
        "__weakref__",
    )
    __array_priority__ = 1000  # so that np_scalar * NDArray calls our __rmul__

    def __init__(self, other, device: BackendDevice | None = None, dtype=None):
        if isinstance(other, NDArray):
            device = other.device if device is None else device
            dtype = other.dtype if dtype is None else canonical_dtype(dtype)
            if dtype != other.dtype:
                host = primitives.to_numpy_dtype(other.numpy(), dtype)
                self._init(NDArray(host, device=device, dtype=dtype))
            else:
                self._init(other.to(device) + 0.0 if device == other.device else other.to(device))
            return
        device = default_device() if device is None else device
        device._check_enabled()
        dtype = canonical_dtype(dtype)
        # asarray(order="C"), not ascontiguousarray, which turns 0-d input into shape (1,).
        host = primitives.to_numpy_dtype(other, dtype) if dtype == "bfloat16" else other
        array = np.asarray(host, dtype=dtype, order="C")
        out = NDArray._make(array.shape, device=device, dtype=dtype)
        if array.size:
            device.mod.from_numpy(array, out._handle)
        self._init(out)

    def _init(self, other: NDArray) -> None:
        self._shape = other._shape
        self._strides = other._strides
        self._offset = other._offset
        self._device = other._device
        self._handle = other._handle
        self._dtype = other._dtype
        self._compact = other._compact

    @staticmethod
    def make(shape, strides=None, device=None, handle=None, offset=0, dtype=None) -> NDArray:
        """Create an NDArray over `handle` (or a fresh buffer) without copying. A view the
        caller describes (handle, strides or offset) is checked to lie within the buffer:
        IndexError otherwise, never a read outside it."""
        shape = _as_shape(shape)
        if handle is None and strides is None and not offset:
            return NDArray._make(shape, device=device, dtype=dtype)
        offset = operator.index(offset)
        strides = (
            _compact_strides(shape) if strides is None else tuple(map(operator.index, strides))
        )
        array = NDArray._make(shape, strides, device, handle, offset, dtype)
        _check_view("NDArray.make", shape, strides, offset, array._handle.size)
        return array

    @staticmethod
    def _make(shape, strides=None, device=None, handle=None, offset=0, dtype=None) -> NDArray:
        """make() unchecked, for NDArray's own views (already in bounds)."""
        # This is the hot path of every op: keep it to attribute stores and cached lookups.
        array = object.__new__(NDArray)
        shape = tuple(shape)
        array._shape = shape
        array._offset = offset
        if device is None:
            device = default_device()
        array._device = device
        if handle is None:
            if type(dtype) is not str or dtype not in DTYPES:
                dtype = canonical_dtype(dtype)
            if device.mod is None:
                device._check_enabled()
            try:
                array._handle = device.mod.Array(_size(shape), dtype)
            except (TypeError, ValueError):
                if dtype not in device.dtypes:  # a dtype of the table this device lacks
                    raise primitives.UnsupportedDtypeError(
                        f"{device.name}() does not support dtype {dtype} (it holds "
                        f"{', '.join(device.dtypes)})"
                    ) from None
                raise
            array._dtype = dtype
            array._strides = _compact_strides(shape) if strides is None else tuple(strides)
            array._compact = True if strides is None else None
        else:
            array._handle = handle
            array._dtype = handle.dtype
            array._strides = _compact_strides(shape) if strides is None else tuple(strides)
            array._compact = None
        return array

    @staticmethod
    def _compact_on(device: BackendDevice, shape: tuple[int, ...], dtype: str) -> NDArray:
        """A fresh compact array: _make's fast path for a known device, shape and dtype."""
        array = object.__new__(NDArray)
        array._shape = shape
        array._offset = 0
        array._device = device
        array._handle = device.mod.Array(_size(shape), dtype)
        array._dtype = dtype
        array._strides = _compact_strides(shape)
        array._compact = True
        return array

    # ---- properties -----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def strides(self) -> tuple[int, ...]:
        return self._strides

    @property
    def device(self) -> BackendDevice:
        return self._device

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        return _size(self._shape)

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d NDArray")
        return self._shape[0]

    def __repr__(self) -> str:
        return f"NDArray({self.numpy()!r}, device={self.device})"

    def __str__(self) -> str:
        return str(self.numpy())

    # ---- memory ---------------------------------------------------------------------
    def fill(self, value: float) -> None:
        """Set every element to `value`, in place (the array must be compact)."""
        if not self.is_compact():
            raise ValueError("fill() needs a compact array; use arr[...] = value on views")
        if self.size:
            self._device.mod.fill(self._handle, _element(value, self._dtype, "fill"))

    def to(self, device: BackendDevice) -> NDArray:
        """Copy to `device` (no copy when already there)."""
        if device == self._device:
            return self
        return NDArray(self.numpy(), device=device, dtype=self._dtype)

    def numpy(self) -> np.ndarray:
        """A NumPy copy of this array."""
        if self.size == 0:
            return np.empty(self._shape, dtype=self._dtype)
        view = self._simplified_view()
        return self._device.mod.to_numpy(self._handle, *view).reshape(self._shape)

    def __array__(self, dtype=None, copy=None):
        """np.asarray(a): a view of a's memory where NumPy can read it in place (host memory
        in a dtype of NumPy's DLPack: not bfloat16), else a copy; `copy` as NumPy 2 says."""
        if copy is not True and dtype in (None, self._dtype):
            view = self._host_view()
            if view is not None:
                return view
        if copy is False:
            raise ValueError(f"a {self._dtype} array on {self._device} has no NumPy view")
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    # ---- DLPack ---------------------------------------------------------------------
    def __dlpack__(self, **kwargs: Any) -> Any:
        """DLPack export, zero copy (``torch.from_dlpack(a)``, ``np.from_dlpack(a)``): the
        native backends' bounds-checked view, NumPy's for cpu_numpy."""
        handle = self._handle
        if hasattr(handle, "dlpack_view"):
            view = handle.dlpack_view(list(self._shape), list(self._strides), self._offset)
            return view.__dlpack__(**kwargs)
        return self._numpy_view().__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        handle = self._handle
        return handle.dlpack_device() if hasattr(handle, "dlpack_device") else (1, 0)

    def _numpy_view(self) -> np.ndarray:
        """The cpu_numpy array's view of its buffer (its Array wraps a NumPy array)."""
        flat = getattr(self._handle, "array", None)
        if self._device.name != "cpu_numpy" or not isinstance(flat, np.ndarray):
            raise TypeError(f"DLPack: {self._device} arrays cannot be exported")
        strides = tuple(s * flat.itemsize for s in self._strides)
        return np.lib.stride_tricks.as_strided(flat[self._offset :], self._shape, strides)

    def _host_view(self) -> np.ndarray | None:
        """A NumPy view of this array on the host backends (None elsewhere, and for bfloat16,
        which NumPy's DLPack cannot take)."""
        if self._dtype == "bfloat16" or self._device.name not in ("cpu", "cpu_numpy"):
            return None
        return np.from_dlpack(self)

    def astype(self, dtype) -> NDArray:
        """This array in `dtype` (itself when it has it), converted on its device by the
        astype primitive: to a 16-bit float rounded to nearest even, float to integer
        truncated toward zero."""
        dtype = canonical_dtype(dtype)
        if dtype == self._dtype:
            return self
        if self._compact is not True and self._dense_view():
            # A permuted compact array (NCHW views of NHWC data): its buffer converted as it
            # lies, the result in the same layout, not a compacting copy first (which left the
            # 16-bit activations of a conv net in NCHW for the next conv to copy back).
            out = NDArray._make(self._shape, self._strides, self._device, dtype=dtype)
            self._device.astype(self._handle, out._handle)
            return out
        source = self.compact()
        out = NDArray._make(self._shape, device=self._device, dtype=dtype)
        if _size(self._shape):
            self._device.astype(source._handle, out._handle)
        return out

    def is_compact(self) -> bool:
        """True when the array is row-major over its whole buffer (so its buffer is its data)."""
        compact = self._compact
        if compact is None:
            compact = self._compact = (
                self._strides == _compact_strides(self._shape)
                and _size(self._shape) == self._handle.size
            )
        return compact

    def _simplified_view(self) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """(shape, strides, offset) as the layout primitives take them (simplify_view)."""
        return primitives.simplify_view(self._shape, self._strides, self._offset)

    def compact(self) -> NDArray:
        """This array, or a row-major copy of it when it is a view."""
        if self.is_compact():
            return self
        out = NDArray._make(self._shape, device=self._device, dtype=self._dtype)
        if out.size:
            view = self._simplified_view()
            self._device.mod.compact(self._handle, out._handle, *view)
        return out

    def copy(self) -> NDArray:
        """A compact copy with a buffer of its own (one compact call, a view or not)."""
        out = NDArray._make(self._shape, device=self._device, dtype=self._dtype)
        if _size(self._shape):
            self._device.mod.compact(self._handle, out._handle, *self._simplified_view())
        return out

    def as_strided(self, shape, strides) -> NDArray:
        """A view with the given shape and strides (in elements) over the same buffer."""
        shape, strides = _as_shape(shape), tuple(operator.index(s) for s in strides)
        _check_view("as_strided", shape, strides, self._offset, self._handle.size)
        return NDArray._make(
            shape, strides=strides, device=self._device, handle=self._handle, offset=self._offset
        )

    compact_strides = staticmethod(compact_strides)

    @property
    def flat(self) -> NDArray:
        return self.reshape((self.size,))

    # ---- shape manipulation (views) -------------------------------------------------
    def reshape(self, *new_shape) -> NDArray:
        """A view with a new shape (one -1 allowed); copies first if the array is not compact."""
        new_shape = tuple(operator.index(s) for s in _shape_args(new_shape))
        if new_shape.count(-1) > 1:
            raise ValueError(f"reshape: only one dimension can be -1, got {new_shape}")
        if -1 in new_shape:
            known = prod(s for s in new_shape if s != -1)
            if known == 0 or self.size % known:
                raise ValueError(f"cannot reshape array of shape {self._shape} into {new_shape}")
            new_shape = tuple(self.size // known if s == -1 else s for s in new_shape)
        if any(s < 0 for s in new_shape) or prod(new_shape) != self.size:
            raise ValueError(f"cannot reshape array of shape {self._shape} into {new_shape}")
        if new_shape == self._shape:
            return self
        base = self.compact()
        return NDArray._make(
            new_shape, device=base._device, handle=base._handle, offset=base._offset
        )

    def permute(self, new_axes) -> NDArray:
        """Reorder the axes (a view): ``new_axes[i]`` is the old axis that becomes axis i."""
        shape, strides = self._shape, self._strides
        new_axes = tuple(new_axes)
        # Non-negative Python ints, the usual case, skip the per-axis normalisation (a permute
        # 2.3 -> 2.1 us; a ResNet-9 step permutes ~100 times).
        identity = _AXES[len(shape)] if len(shape) < len(_AXES) else list(range(len(shape)))
        if not all(type(a) is int for a in new_axes) or sorted(new_axes) != identity:
            new_axes = tuple(_normalize_axis(a, len(shape)) for a in new_axes)
            if sorted(new_axes) != identity:
                raise ValueError(f"permute: {new_axes} is not a permutation of the axes of {shape}")
        return NDArray._make(
            tuple([shape[a] for a in new_axes]),
            strides=tuple([strides[a] for a in new_axes]),
            device=self._device,
            handle=self._handle,
            offset=self._offset,
        )

    def swapaxes(self, a: int, b: int) -> NDArray:
        axes = list(range(self.ndim))
        a, b = _normalize_axis(a, self.ndim), _normalize_axis(b, self.ndim)
        axes[a], axes[b] = axes[b], axes[a]
        return self.permute(axes)

    def broadcast_to(self, new_shape) -> NDArray:
        """A view repeating size-1 (or missing leading) dimensions, as NumPy's broadcast_to."""
        new_shape = _as_shape(new_shape)
        if new_shape == self._shape:
            return self
        lead = len(new_shape) - self.ndim
        if lead < 0:
            raise ValueError(f"cannot broadcast shape {self._shape} to {new_shape}")
        strides = [0] * lead
        for old, new, stride in zip(self._shape, new_shape[lead:], self._strides):
            if old == new:
                strides.append(stride)
            elif old == 1:
                strides.append(0)
            else:
                raise ValueError(f"cannot broadcast shape {self._shape} to {new_shape}")
        return NDArray._make(
            new_shape,
            strides=strides,
            device=self._device,
            handle=self._handle,
            offset=self._offset,
        )

    # ---- indexing -------------------------------------------------------------------
    def _index_view(self, idxs, keep_dims: bool = False) -> NDArray:
        """The view selected by ints, slices (any step) and one Ellipsis, as in NumPy; with
        `keep_dims` an int i selects like slice(i, i + 1), keeping its axis (the course's
        NDArray indexing)."""
        if not isinstance(idxs, tuple):
            idxs = (idxs,)
        if builtins.sum(1 for i in idxs if i is Ellipsis) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if Ellipsis in [i for i in idxs if i is Ellipsis]:
            pos = next(k for k, i in enumerate(idxs) if i is Ellipsis)
            fill = self.ndim - (len(idxs) - 1)
            idxs = idxs[:pos] + (slice(None),) * builtins.max(fill, 0) + idxs[pos + 1 :]
        if len(idxs) > self.ndim:
            raise IndexError(
                f"too many indices for array of shape {self._shape}: {len(idxs)} given"
            )
        idxs = idxs + (slice(None),) * (self.ndim - len(idxs))
        shape, strides, offset = [], [], self._offset
        for axis, (idx, dim, stride) in enumerate(zip(idxs, self._shape, self._strides)):
            if isinstance(idx, slice):
                start, stop, step = idx.indices(dim)
                shape.append(len(range(start, stop, step)))
                strides.append(stride * step)
                offset += start * stride if shape[-1] else 0
            elif isinstance(idx, (int, np.integer)) and not isinstance(idx, bool):
                if not -dim <= idx < dim:
                    raise IndexError(
                        f"index {idx} is out of bounds for axis {axis} with size {dim}"
                    )
                offset += (idx % dim) * stride
                if keep_dims:
                    shape.append(1)
                    strides.append(stride)
            else:
                raise IndexError(
                    f"NDArray indices must be ints, slices or '...', got {type(idx).__name__}"
                )
        return NDArray._make(
            shape, strides=strides, device=self._device, handle=self._handle, offset=offset
        )

    def __getitem__(self, idxs) -> NDArray:
        """A view (no copy) selected by ints, slices and '...'. As in needle, an int i selects
        like slice(i, i + 1) and keeps its axis: axes are never dropped (NumPy and PyTorch
        drop them; Tensor indexing does, as PyTorch's)."""
        return self._index_view(idxs, keep_dims=True)

    def process_slice(self, sl: slice, dim: int) -> slice:
        """`sl` with explicit start, stop and step for axis `dim`: negative start and stop
        counted from the end, None as the axis' bounds, step 1 by default (needle's helper)."""
        start, stop, step = sl.start, sl.stop, sl.step
        size = self._shape[dim]
        start = 0 if start is None else (start + size if start < 0 else start)
        stop = size if stop is None else (stop + size if stop < 0 else stop)
        step = 1 if step is None else step
        if not (stop > start and step > 0):
            raise ValueError(f"process_slice: {sl} selects nothing on an axis of size {size}")
        return slice(start, stop, step)

    def __setitem__(self, idxs, other) -> None:
        """Write an NDArray (broadcast to the selection) or a scalar into the selection."""
        view = self._index_view(idxs)
        # An empty selection writes nothing, but the value is checked first, as NumPy does:
        # device and shape (a (2,) array into a (0,) selection is an error, (1,) is not).
        if isinstance(other, NDArray):
            self._check_same_device(other)
            if other.shape != view.shape:
                other = _fit_selection(other, view, self._index_view(idxs, keep_dims=True))
            if view.size == 0:
                return
            if other._handle is view._handle:  # overlapping source and target: copy first
                other = other + 0.0
            other = other.astype(self._dtype).compact()
            self._device.mod.ewise_setitem(other._handle, view._handle, *view._simplified_view())
        else:
            value = _element(other, self._dtype, "setitem")
            if view.size == 0:
                return
            self._device.mod.scalar_setitem(
                view.size, value, view._handle, *view._simplified_view()
            )

    # ---- elementwise ----------------------------------------------------------------
    def _check_same_device(self, other: NDArray) -> None:
        if other._device is not self._device and other._device != self._device:
            raise ValueError(
                f"operands are on different devices: {self._device} and {other._device}; "
                "move one with .to(device)"
            )

    def _binary(self, other, ewise: _Row, scalar: _Row) -> NDArray:
        device = self._device
        if self._dtype in _HALF_SET or (isinstance(other, NDArray) and other._dtype in _HALF_SET):
            same = not isinstance(other, NDArray) or other._dtype == self._dtype
            row = (ewise if isinstance(other, NDArray) else scalar)[0]
            if not (same and row in device.half_rows):
                return in_float32(NDArray._binary, self, other, ewise, scalar)
        if isinstance(other, NDArray):
            ewise_name, takes, out_dtype = ewise
            a = self
            if other._device is not device:
                a._check_same_device(other)
            if other._dtype != a._dtype or (a._dtype not in takes and a._dtype not in _HALF_SET):
                dtype = _compute_dtype(ewise_name, result_type(a._dtype, other._dtype))
                a, other = a.astype(dtype), other.astype(dtype)
            if other._shape != a._shape:
                shape = broadcast_shapes(a._shape, other._shape)
                if device.has("ewise_broadcast_binary") and ewise_name in _VECTOR_OPS:
                    out = _repeated_vector_binary(a, other, shape, ewise_name)
                    if out is not None:
                        return out
                a, other = a.broadcast_to(shape), other.broadcast_to(shape)
            elif (
                (0 in a._strides or 0 in other._strides)
                and ewise_name in _VECTOR_OPS
                and _size(a._shape) >= _BROADCAST_PASS_SIZE
                and device.has("ewise_broadcast_binary")
            ):
                # A broadcast view (a bias spread over the rows) against a full array: one
                # pass over the vector as it is, not a copy of it at full size first (the
                # (400, 10000) logits of a language model: 1.4 ms of a step).
                out = _repeated_vector_binary(
                    _collapsed(a), _collapsed(other), a._shape, ewise_name
                )
                if out is not None:
                    return out
            if a._strides == other._strides and a._dense_view():
                # Same permuted layout (NCHW views of NHWC data): run over the buffers as
                # they lie, the result in that layout too, instead of compacting both.
                out = NDArray._make(a._shape, a._strides, device, dtype=out_dtype or a._dtype)
                getattr(device.mod, ewise_name)(a._handle, other._handle, out._handle)
                return out
            out = NDArray._make(a._shape, device=device, dtype=out_dtype or a._dtype)
            if _size(out._shape):
                getattr(device.mod, ewise_name)(
                    a.compact()._handle, other.compact()._handle, out._handle
                )
            return out
        scalar_name, _, out_dtype = scalar
        a = self
        if type(other) is not float or a._dtype not in FLOATS:
            a, other = _scalar_operands(a, other, scalar_name)
        a, out = a._elementwise_operand_and_out(out_dtype or a._dtype)
        if _size(out._shape):
            getattr(device.mod, scalar_name)(a._handle, other, out._handle)
        return out

    def _unary(self, name: str) -> NDArray:
        a = self
        if a._dtype in _HALF_SET:
            if name not in a._device.half_rows:
                return in_float32(NDArray._unary, a, name)
        elif a._dtype not in _TAKES[name]:
            a = a.astype(_compute_dtype(name, a._dtype))
        a, out = a._elementwise_operand_and_out(a._dtype)
        if _size(out._shape):
            getattr(a._device.mod, name)(a._handle, out._handle)
        return out

    def _elementwise_operand_and_out(self, out_dtype: str) -> tuple[NDArray, NDArray]:
        """(this array or its compact copy, the output) for a one-operand elementwise kernel:
        a permuted dense view keeps its layout in the output instead of being compacted."""
        if self._compact is True:  # the common case, without _dense_view's walk (~0.3 us)
            return self, NDArray._compact_on(self._device, self._shape, out_dtype)
        if self._dense_view():
            return self, NDArray._make(self._shape, self._strides, self._device, dtype=out_dtype)
        return self.compact(), NDArray._make(self._shape, device=self._device, dtype=out_dtype)

    def _dense_view(self) -> bool:
        """Whether this is a non-compact view that covers its whole buffer once in another
        axis order (a permuted compact array): elementwise ops then keep its layout."""
        if self._offset or self.is_compact() or _size(self._shape) != self._handle.size:
            return False
        expect = 1
        for stride, n in sorted((s, n) for s, n in zip(self._strides, self._shape) if n != 1):
            if stride != expect:
                return False
            expect *= n
        return True

    # The operators: self (op) other for an NDArray other (broadcast) or a number, each
    # through the primitive pair ewise_<op> / scalar_<op> (reflected: scalar_r<op>).
    __add__ = __radd__ = _binary_method("add")
    __sub__ = _binary_method("sub")
    __rsub__ = _binary_method("sub", "rsub")
    __mul__ = __rmul__ = _binary_method("mul")
    __truediv__ = _binary_method("div")
    __rtruediv__ = _binary_method("div", "rdiv")
    __pow__ = _binary_method("power")
    maximum = _binary_method("maximum")
    # Comparisons give bool arrays (as NumPy and PyTorch; the course's NDArray gives 1.0/0.0
    # float32, equal in value and arithmetic). == is an array, not the bool of
    # object.__eq__ (as NumPy's): a deliberate incompatible override.
    __eq__ = _binary_method("eq")  # type: ignore[assignment]
    __ge__ = _binary_method("ge")
    # Each comparison its own primitive: with a NaN operand only != is true, as in NumPy.
    __lt__ = _binary_method("lt")
    __le__ = _binary_method("le")

    def __neg__(self) -> NDArray:
        return self._unary("ewise_neg")

    def __abs__(self) -> NDArray:
        return self._unary("ewise_abs")

    def __ne__(self, other):
        return (self == other) == False  # noqa: E712  (an elementwise not, on bools)

    def __gt__(self, other):
        # On bools, x < y is (not x) and y: a > b is (a >= b) and not (a == b), NaN false.
        return (self == other) < (self >= other)

    __hash__ = object.__hash__

    if TYPE_CHECKING:
        # log(), exp(), tanh(), ...: one method per unary row of the primitive table but
        # ewise_neg (-a), added after the class, so a new row needs no edit here. For type
        # checkers, an attribute NDArray does not define is such a method.
        def __getattr__(self, name: str) -> Callable[[], NDArray]: ...

    # ---- matrix multiplication ------------------------------------------------------
    def __matmul__(self, other: NDArray) -> NDArray:
        """(..., m, n) @ (..., n, p) -> (..., m, p), broadcasting the leading dimensions."""
        self._check_same_device(other)
        if self.ndim < 2 or other.ndim < 2:
            raise ValueError(
                f"matmul needs operands with at least 2 dimensions, got shapes {self._shape} "
                f"and {other._shape}"
            )
        (m, n), (n2, p) = self._shape[-2:], other._shape[-2:]
        if n != n2:
            raise ValueError(
                f"matmul: shapes {self._shape} and {other._shape} do not align ({n} != {n2})"
            )
        a, b = self, other
        if (
            len(a._shape) == 2 == len(b._shape)
            and a._dtype == b._dtype
            and a._dtype in _MATMUL_SET
            and m * n * p
            and a._device.has("matmul_strided")
            and builtins.min(a._strides + b._strides) >= 0
        ):  # plain matrices (most calls): 8.2 -> 2.5 us a call for 8x8 ones (0.9 the kernel)
            out = NDArray._compact_on(a._device, (m, p), a._dtype)
            a._device.matmul_strided(
                a._handle, b._handle, out._handle, 1, m, n, p, a._offset, (0,) + a._strides,
                b._offset, (0,) + b._strides,
            )  # fmt: skip
            return out
        if a._dtype != b._dtype:
            dtype = result_type(a._dtype, b._dtype)
            a, b = a.astype(dtype), b.astype(dtype)
        if a._dtype not in _MATMUL_SET:  # integers: exact in float64 up to 2^53
            return (a.astype("float64") @ b.astype("float64")).astype(a._dtype)
        try:
            batch_shape = broadcast_shapes(a._shape[:-2], b._shape[:-2])
        except ValueError:
            raise ValueError(
                f"matmul: the leading dimensions of shapes {self._shape} and {other._shape} do "
                "not broadcast"
            ) from None
        batch = prod(batch_shape)
        out = NDArray._make(batch_shape + (m, p), device=a._device, dtype=a._dtype)
        if out.size == 0:
            return out
        if n == 0:
            out.fill(0.0)
            return out
        a = a.broadcast_to(batch_shape + (m, n))
        b = b.broadcast_to(batch_shape + (n, p))
        device = self._device
        if device.has("matmul_strided"):
            # Transposed, offset and batch-broadcast views go in as they are: packing reads any
            # non-negative strides. Only views whose batch axes do not merge are copied.
            a_strides, b_strides = _matmul_strides(a), _matmul_strides(b)
            if a_strides is None:
                a = a.compact()
                a_strides = _matmul_strides(a)
            if b_strides is None:
                b = b.compact()
                b_strides = _matmul_strides(b)
            device.matmul_strided(
                a._handle,
                b._handle,
                out._handle,
                batch,
                m,
                n,
                p,
                a._offset,
                a_strides,
                b._offset,
                b_strides,
            )
        elif not batch_shape:
            device.mod.matmul(a.compact()._handle, b.compact()._handle, out._handle, m, n, p)
        else:  # batched_matmul, the backend's own or the table's fallback over matmul
            device.batched_matmul(
                a.compact()._handle, b.compact()._handle, out._handle, batch, m, n, p
            )
        return out

    # ---- reductions -----------------------------------------------------------------
    def _reduce(self, axis, keepdims: bool, name: str) -> NDArray:
        if self._dtype in _HALF_SET:  # accumulated in float32, rounded once
            rows = self._device.half_rows
            if name not in rows or f"{name}_axis" not in rows:
                return in_float32(NDArray._reduce, self, axis, keepdims, name)
        elif self._dtype not in _TAKES[name]:  # sums of integers and bools: in int64
            return self.astype("int64")._reduce(axis, keepdims, name)
        if axis == ():
            raise ValueError(f"{name[len('reduce_') :]}: empty axis tuple (use axis=None for all)")
        axes = _normalize_axes(axis, self.ndim)
        if self._dense_view():
            # A permuted compact array (NCHW views of NHWC data): reduce it in memory order,
            # where the reduced axes are often a run (no permuted copy), and permute back.
            order = tuple(sorted(range(self.ndim), key=lambda i: -self._strides[i]))
            moved = self.permute(order)
            if moved.is_compact():
                res = moved._reduce(tuple(sorted(order.index(a) for a in axes)), keepdims, name)
                if keepdims:
                    return res.permute(tuple(order.index(i) for i in range(self.ndim)))
                rest = [a for a in order if a not in axes]
                return res.permute(tuple(rest.index(a) for a in sorted(rest)))
        kept = tuple(i for i in range(self.ndim) if i not in axes)
        out_shape = (
            tuple(1 if i in axes else d for i, d in enumerate(self._shape))
            if keepdims
            else tuple(self._shape[i] for i in kept)
        )
        reduce_size = prod(self._shape[i] for i in axes)
        if reduce_size == 0 and name == "reduce_max":  # as NumPy, even when out is empty
            raise ValueError(f"max over a zero-size axis of an array of shape {self._shape}")
        out = NDArray._make(out_shape, device=self._device, dtype=self._dtype)
        if out.size == 0:
            return out
        if reduce_size == 0:
            out.fill(0.0)
            return out
        mod = self._device.mod
        if axes == tuple(range(self.ndim - len(axes), self.ndim)):  # trailing axes: rows
            getattr(mod, name)(self.compact()._handle, out._handle, reduce_size)
        elif axes == tuple(range(axes[0], axes[0] + len(axes))) and self._device.has(
            name + "_axis"
        ):
            # A run of middle axes: reduce (outer, reduce, inner) in place, no permuted copy.
            outer = prod(self._shape[: axes[0]])
            inner = prod(self._shape[axes[-1] + 1 :])
            getattr(mod, name + "_axis")(
                self.compact()._handle, out._handle, outer, reduce_size, inner
            )
        else:
            view = self.permute(kept + axes).compact()
            getattr(mod, name)(view._handle, out._handle, reduce_size)
        return out

    def reduce_view_out(self, axis, keepdims: bool = False) -> tuple[NDArray, NDArray]:
        """needle's reduction set-up: a view with the reduced axis last (all axes flattened
        when `axis` is None) and an uninitialised output array."""
        if isinstance(axis, (tuple, list)):
            if len(axis) != 1:
                raise ValueError(f"reduce_view_out takes one axis, got {axis}")
            axis = axis[0]
        if axis is None:
            view = self.compact().reshape((1,) * (self.ndim - 1) + (self.size,))
            return view, NDArray._make((1,), device=self._device, dtype=self._dtype)
        axis = _normalize_axis(axis, self.ndim)
        view = self.permute(tuple(a for a in range(self.ndim) if a != axis) + (axis,))
        shape = tuple(
            1 if i == axis else d for i, d in enumerate(self._shape) if keepdims or i != axis
        )
        return view, NDArray._make(shape, device=self._device, dtype=self._dtype)

    def sum(self, axis=None, keepdims: bool = False) -> NDArray:
        """Sum over `axis` (an int, a tuple of ints, or None for all)."""
        return self._reduce(axis, keepdims, "reduce_sum")

    def max(self, axis=None, keepdims: bool = False) -> NDArray:
        """Maximum over `axis` (an int, a tuple of ints, or None for all)."""
        return self._reduce(axis, keepdims, "reduce_max")

    def _rows_along(self, axis: int) -> tuple[NDArray, tuple[int, ...] | None]:
        """A compact copy (or self) with `axis` last, and the permutation that puts it back
        (None when it already was last): the fused row primitives work on last-axis rows."""
        if self.ndim == 0:
            return self.reshape((1,)), None
        axis = _normalize_axis(axis, self.ndim)
        if axis == self.ndim - 1:
            return self.compact(), None
        order = tuple(i for i in range(self.ndim) if i != axis) + (axis,)
        return self.permute(order).compact(), tuple(order.index(i) for i in range(self.ndim))

    def softmax(self, axis: int = -1, log: bool = False) -> NDArray:
        """softmax (log_softmax with `log`) along `axis`: softmax_rows on the rows of the axis
        moved last."""
        rows, back = self._rows_along(axis)
        out = NDArray._make(rows.shape, device=self._device, dtype=self._dtype)
        cols = rows.shape[-1]
        if out.size:
            self._device.softmax_rows(rows._handle, out._handle, out.size // cols, cols, log)
        if self.ndim == 0:
            return out.reshape(())
        return out if back is None else out.permute(back)

    def cross_entropy(self, labels: NDArray, truncate: bool = False) -> tuple[NDArray, NDArray]:
        """(the mean softmax cross-entropy, 0-d; its gradient (softmax - one_hot) / rows) of
        these (rows, cols) logits against `labels`: rows class numbers in this array's dtype
        (with `truncate` cut toward zero first), checked by the one cross_entropy_rows call
        (ValueError, IndexError) before it writes anything."""
        if self.ndim != 2 or labels.size != self._shape[0]:
            raise ValueError(f"cross_entropy: logits {self._shape} for {labels.size} labels")
        if labels._dtype != self._dtype:
            raise TypeError(f"cross_entropy: labels {labels._dtype}, logits {self._dtype}")
        self._check_same_device(labels)
        rows, cols = self._shape
        loss = NDArray._make((), device=self._device, dtype=self._dtype)
        grad = NDArray._make(self._shape, device=self._device, dtype=self._dtype)
        self._device.cross_entropy_rows(
            self.compact()._handle, labels.compact()._handle, loss._handle, grad._handle,
            rows, cols, truncate,
        )  # fmt: skip
        return loss, grad

    def softmax_grad(self, grad: NDArray, axis: int = -1) -> NDArray:
        """softmax's adjoint s * (g - sum(g * s)) along `axis`, self the softmax s and `grad`
        g of its shape: softmax_grad_rows on the rows of the axis moved last."""
        rows, back = self._rows_along(axis)
        g_rows, _ = grad._rows_along(axis)
        out = NDArray._make(rows.shape, device=self._device, dtype=self._dtype)
        cols = rows.shape[-1]
        if out.size:
            self._device.softmax_grad_rows(
                rows._handle, g_rows._handle, out._handle, out.size // cols, cols
            )
        if self.ndim == 0:
            return out.reshape(())
        return out if back is None else out.permute(back)

    def layer_norm(self, dims: int, eps: float) -> NDArray:
        """(x - mean) / sqrt(var + eps) over the last `dims` axes (biased variance), by
        layer_norm_rows on the rows of those axes."""
        cols = prod(self._shape[self.ndim - dims :])
        out = NDArray._make(self._shape, device=self._device, dtype=self._dtype)
        if out.size:
            rows = self.compact()
            self._device.layer_norm_rows(rows._handle, out._handle, out.size // cols, cols, eps)
        return out

    def layer_norm_grad(self, grad: NDArray, dims: int, eps: float) -> NDArray:
        """layer_norm's adjoint for the output gradient `grad` (self the input), over the
        last `dims` axes: layer_norm_grad_rows, the row statistics recomputed in the row."""
        cols = prod(self._shape[self.ndim - dims :])
        out = NDArray._make(self._shape, device=self._device, dtype=self._dtype)
        if out.size:
            rows, g = self.compact(), grad.compact()
            self._device.layer_norm_grad_rows(
                rows._handle, g._handle, out._handle, out.size // cols, cols, eps
            )
        return out

    def lstm_cell(self, c: NDArray) -> tuple[NDArray, NDArray]:
        """An LSTM cell's new state from self, the gate pre-activations (batch, 4 * hidden) in
        the order i, f, g, o, and the cell state c (batch, hidden) of its dtype: (h', c')
        stacked as (2, batch, hidden), and the activations (batch, 5, hidden) that
        lstm_cell_grad reads. One lstm_cell call."""
        batch, hidden = self._shape[0], self._shape[1] // 4
        out = NDArray._make((2, batch, hidden), device=self._device, dtype=self._dtype)
        act = NDArray._make((batch, 5, hidden), device=self._device, dtype=self._dtype)
        if out.size:
            handles = (self.compact()._handle, c.compact()._handle, out._handle, act._handle)
            self._device.lstm_cell(*handles, batch, hidden)
        return out, act

    def lstm_cell_grad(self, act: NDArray, c: NDArray) -> tuple[NDArray, NDArray]:
        """lstm_cell's adjoint for self = (d_h', d_c') (2, batch, hidden), from its
        activations and c: the gradients of the gates (batch, 4 * hidden) and of c."""
        batch, _, hidden = act.shape
        d_gates = NDArray._make((batch, 4 * hidden), device=self._device, dtype=self._dtype)
        d_c = NDArray._make((batch, hidden), device=self._device, dtype=self._dtype)
        if d_c.size:
            handles = (self.compact(), act.compact(), c.compact(), d_gates, d_c)
            self._device.lstm_cell_grad(*(h._handle for h in handles), batch, hidden)
        return d_gates, d_c

    def pool2d(self, kernel, stride, padding, op: str) -> NDArray:
        """Max ('max') or mean ('avg', padding counted as zeros) pooling of an NCHW array over
        kh x kw windows (pairs kernel, stride, padding): one pool2d call."""
        n, c, h, w = self._shape
        ho, wo = primitives.pool2d_out(h, w, kernel, stride, padding)
        out = NDArray._make((n, c, ho, wo), device=self._device, dtype=self._dtype)
        if out.size:
            args = (n * c, h, w, tuple(kernel), tuple(stride), tuple(padding), op)
            self._device.pool2d(self.compact()._handle, out._handle, *args)
        return out

    # ---- flip and pad ---------------------------------------------------------------
    def flip(self, axes=None) -> NDArray:
        """Reverse the order of elements along `axes` (a copy, as needle's flip)."""
        axes = _normalize_axes(axes, self.ndim)
        offset, strides = self._offset, list(self._strides)
        for a in axes:
            if self._shape[a]:
                offset += (self._shape[a] - 1) * strides[a]
            strides[a] = -strides[a]
        return NDArray._make(
            self._shape, strides=strides, device=self._device, handle=self._handle, offset=offset
        ).compact()

    def pad(self, axes) -> NDArray:
        """Zero-pad: `axes` gives (before, after) for every axis."""
        axes = tuple(tuple(operator.index(x) for x in a) for a in axes)
        if len(axes) != self.ndim or any(len(a) != 2 or min(a) < 0 for a in axes):
            raise ValueError(
                f"pad needs one non-negative (before, after) pair per axis of {self._shape}, "
                f"got {axes}"
            )
        out = self._device.full(
            tuple(d + lo + hi for d, (lo, hi) in zip(self._shape, axes)), 0.0, self._dtype
        )
        out[tuple(slice(lo, lo + d) for d, (lo, _) in zip(self._shape, axes))] = self
        return out


def _fit_selection(other: NDArray, view: NDArray, kept: NDArray) -> NDArray:
    """`other` shaped to write into `view`, a selection whose int indices dropped their axes
    (`kept`: the same selection keeping them, as the course's NDArray indexing gives it): an
    array of the same size in any shape (the course's rule), else one that broadcasts to
    either form, leading 1s aside (NumPy's rule)."""
    if other.size == view.size:
        return other.compact().reshape(view.shape)
    squeezed = other.shape
    while len(squeezed) > view.ndim and squeezed[0] == 1:
        squeezed = squeezed[1:]
    try:
        return other.reshape(squeezed).broadcast_to(view.shape)
    except ValueError:
        pass
    squeezed = other.shape
    while len(squeezed) > kept.ndim and squeezed[0] == 1:
        squeezed = squeezed[1:]
    try:
        return other.reshape(squeezed).broadcast_to(kept.shape).compact().reshape(view.shape)
    except ValueError:
        raise ValueError(
            f"cannot assign an array of shape {other.shape} to a selection of shape {view.shape}"
        ) from None


def _unary_method(primitive: primitives.Primitive):
    def method(self: NDArray) -> NDArray:
        return self._unary(primitive.name)

    method.__name__ = primitive.name[len("ewise_") :]
    method.__doc__ = primitive.doc
    return method


for _primitive in primitives.family("unary"):
    if _primitive.name != "ewise_neg":  # -a
        setattr(NDArray, _primitive.name[len("ewise_") :], _unary_method(_primitive))


# The ops ewise_broadcast_binary takes (float arrays only, as its row says).
_VECTOR_OPS = {
    "ewise_add": "add",
    "ewise_sub": "sub",
    "ewise_mul": "mul",
    "ewise_div": "div",
    "ewise_maximum": "maximum",
}


# Below this many elements copying a broadcast operand out costs less than the Python of
# finding its vector (4 floats: 16 us a call through _repeated_vector_binary, 5 us copied).
_BROADCAST_PASS_SIZE = 1 << 14


def _collapsed(a: NDArray) -> NDArray:
    """A broadcast view as the array it spreads: its stride-0 axes of size 1."""
    if 0 not in a._strides:
        return a
    shape = tuple(1 if s == 0 else n for n, s in zip(a._shape, a._strides))
    return NDArray._make(shape, a._strides, a._device, a._handle, a._offset)


def _repeated_vector_binary(a: NDArray, b: NDArray, shape, ewise_name: str):
    """a (op) b through the backend's ewise_broadcast_binary when one operand has the full
    `shape` and the other broadcasts to it as a vector repeated along one axis: over the
    leading axes (shape (..., 1, 1, d_k, ..., d_n): a bias) or the trailing ones (shape
    (d_0, ..., d_k, 1, ..., 1): a per-row statistic). None when the operands are not so."""
    op = _VECTOR_OPS[ewise_name]
    if a._dtype not in FLOATS and (
        a._dtype not in _HALF_SET or "ewise_broadcast_binary" not in a._device.half_rows
    ):
        return None
    if a._shape == shape:
        full, vector, vector_first = a, b, False
    elif b._shape == shape:
        full, vector, vector_first = b, a, True
    else:
        return None
    dims = (1,) * (len(shape) - vector.ndim) + vector._shape
    lead = 0  # leading 1s of the vector, where it repeats
    while lead < len(dims) and dims[lead] == 1 and shape[lead] != 1:
        lead += 1
    if _size(dims) == 1:  # one number: one run over everything (not rows of length 1)
        per_column, split = False, 0
    elif dims[lead:] == shape[lead:]:
        per_column, split = True, lead
    else:
        tail = len(dims)  # trailing 1s, where a per-row vector repeats
        while tail > 0 and dims[tail - 1] == 1:
            tail -= 1
        if dims[:tail] != shape[:tail]:
            return None
        per_column, split = False, tail
    outer, inner = _size(shape[:split]), _size(shape[split:])
    out = NDArray._make(shape, device=full._device, dtype=full._dtype)
    if outer and inner:
        full._device.ewise_broadcast_binary(
            op,
            full.compact()._handle,
            vector.compact()._handle,
            out._handle,
            outer,
            inner,
            per_column,
            vector_first,
        )
    return out


# ---- module-level constructors and functions (the needle API) ------------------------
def from_dlpack(x: Any, device: BackendDevice | None = None) -> NDArray:
    """An NDArray over the memory of `x` (an object with __dlpack__: a NumPy array, a torch
    tensor), without a copy when it is C-contiguous on `device`'s memory (default: cpu for
    host memory, cuda for CUDA memory): writes through either show in the other. Otherwise
    (another layout, or NumPy's bfloat16, which DLPack cannot pass) a copy."""
    kind = x.__dlpack_device__()[0] if hasattr(x, "__dlpack_device__") else 1
    if device is None:
        device = cuda() if kind == 2 else cpu() if cpu().enabled() else cpu_numpy()
    shape = tuple(int(n) for n in x.shape)
    native = getattr(device.mod.Array, "from_dlpack", None)
    try:
        if native is not None:
            return _over(native(x), shape, device)
        if device.name == "cpu_numpy":
            flat = np.from_dlpack(x)
            if flat.flags.c_contiguous:
                return _over(device.mod.Array.over(flat.reshape(-1)), shape, device)
    except (TypeError, BufferError):  # not contiguous, or no DLPack dtype: copied below
        pass
    if kind != 1:
        raise TypeError(f"from_dlpack: cannot take memory of DLPack device type {kind} on {device}")
    return NDArray(np.asarray(x), device=device, dtype=str(np.asarray(x).dtype))


def _over(handle: Any, shape: tuple[int, ...], device: BackendDevice) -> NDArray:
    if handle.size != _size(shape):
        raise ValueError(f"from_dlpack: {handle.size} elements for shape {shape}")
    return NDArray._make(shape, device=device, handle=handle)


def array(a, dtype=None, device: BackendDevice | None = None) -> NDArray:
    """An NDArray copy of `a`: float32 unless `dtype` says otherwise (or `a` is an NDArray)."""
    return NDArray(a, device=device, dtype=dtype)


def empty(shape, dtype=None, device: BackendDevice | None = None) -> NDArray:
    device = default_device() if device is None else device
    return device.empty(shape, dtype)


def full(shape, fill_value, dtype=None, device: BackendDevice | None = None) -> NDArray:
    device = default_device() if device is None else device
    return device.full(shape, fill_value, dtype)


def axpby(alpha: float, x: NDArray, beta: float, y: NDArray, out: NDArray | None = None) -> NDArray:
    """alpha * x + beta * y in one pass over memory (one primitive call, ewise_axpby).

    x and y need one shape, dtype and device (no broadcasting, no promotion). With `out`
    (a compact array of that shape, dtype and device) the result is written there and `out`
    is returned; `out` may be x or y itself, which is how the optimizers update parameters in
    place: axpby(1.0, w, -lr, grad, out=w).
    """
    if not isinstance(x, NDArray) or not isinstance(y, NDArray):
        raise TypeError(f"axpby needs NDArrays, got {type(x).__name__} and {type(y).__name__}")
    x._check_same_device(y)
    if x._shape != y._shape:
        raise ValueError(f"axpby: shapes {x._shape} and {y._shape} differ")
    if x._dtype != y._dtype:
        raise TypeError(f"axpby: dtypes {x._dtype} and {y._dtype} differ")
    if out is None:
        out = NDArray._make(x._shape, device=x._device, dtype=x._dtype)
    else:
        if not isinstance(out, NDArray):
            raise TypeError(f"axpby: out must be an NDArray, got {type(out).__name__}")
        x._check_same_device(out)
        if out._shape != x._shape or out._dtype != x._dtype:
            raise ValueError(
                f"axpby: out is {out._shape} {out._dtype}, the result {x._shape} {x._dtype}"
            )
        if not out.is_compact():
            raise ValueError("axpby: out must be compact (not a view)")
    if out.size:
        # A compact out covers its whole buffer, so an input that shares it after compact()
        # is element for element the same array: the primitive's in-place case.
        x._device.ewise_axpby(
            x.compact()._handle, y.compact()._handle, float(alpha), float(beta), out._handle
        )
    return out


class RowIndices:
    """Whole-number indices into the first axis of an array with `rows` rows, checked once
    and kept on `device` as the int64 array the gather_rows / scatter_add_rows primitives
    read (exact for any number of rows). `host` keeps them as a NumPy int64 array."""

    def __init__(self, indices, rows: int, device: BackendDevice | None = None):
        idx = RowIndices.check(indices, rows)
        self.host: np.ndarray | None = idx
        self.rows = int(rows)
        self.array = NDArray(idx, device=device, dtype=primitives.INDEX_DTYPE)

    @staticmethod
    def of(indices: NDArray, rows: int, device: BackendDevice, truncate: bool = False):
        """RowIndices of the NDArray `indices`, checked (``check``) on the host through
        from_host, so that a captured step checks each call's indices; kept on `device` only
        (``host`` is None)."""
        return RowIndices.on_device(
            from_host(RowIndices.check, (indices,), rows, truncate, device=device, dtype="int64"),
            rows,
        )

    @staticmethod
    def on_device(array: NDArray, rows: int) -> RowIndices:
        """RowIndices over `array`, int64 positions already checked to lie in [0, rows)."""
        out = RowIndices.__new__(RowIndices)
        out.host, out.rows, out.array = None, int(rows), array
        return out

    @staticmethod
    def check(indices, rows: int, truncate: bool = False) -> np.ndarray:
        """`indices` as int64 after checking that they are 1-D whole numbers in [0, rows).
        With `truncate`, as the course's ``.numpy().astype(int)``: any shape, flattened, and
        floats cut to integers (primitives.check_row_indices)."""
        idx = indices.numpy() if isinstance(indices, NDArray) else np.asarray(indices)
        return primitives.check_row_indices(idx, rows, truncate)

    def __len__(self) -> int:
        return self.array.size

    def on(self, device: BackendDevice) -> RowIndices:
        """These indices on `device` (self when they already are)."""
        if self.array.device == device:
            return self
        return RowIndices(self.array.numpy() if self.host is None else self.host, self.rows, device)


def take_rows(table: NDArray, indices) -> NDArray:
    """Rows of `table` picked by `indices` (a RowIndices or 1-D whole numbers): shape
    (len(indices),) + table.shape[1:]; an embedding lookup. One gather_rows call."""
    if not isinstance(table, NDArray) or table.ndim < 1:
        raise ValueError("take_rows needs an NDArray with at least one axis")
    if not isinstance(indices, RowIndices):
        indices = RowIndices(indices, table.shape[0], table.device)
    elif indices.rows != table.shape[0]:
        raise ValueError(
            f"take_rows: indices are for {indices.rows} rows, the table has {table.shape[0]}"
        )
    idx = indices.on(table.device)
    out = NDArray._make((len(idx),) + table.shape[1:], device=table.device, dtype=table.dtype)
    return _by_rows("gather_rows", table, idx, out)


def _index_on(indices, device: BackendDevice, op: str) -> NDArray:
    """Integer indices as a compact int64 NDArray on `device` (one that already is, as is)."""
    if isinstance(indices, NDArray) and indices.device == device and indices.dtype == "int64":
        return indices.compact()
    host = indices.numpy() if isinstance(indices, NDArray) else np.asarray(indices)
    if host.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be integers, got dtype {host.dtype}")
    # (ascontiguousarray makes a 0-d array 1-d: keep the shape)
    host = np.ascontiguousarray(host, dtype=np.int64).reshape(host.shape)
    return NDArray(host, device=device, dtype="int64")


def scatter_add_along_axis(base: NDArray, values: NDArray, indices, axis: int) -> NDArray:
    """torch.scatter_add on NDArrays, for values and indices of one shape that matches base's
    off `axis`: a copy of base with values[.., j, ..] added at [.., indices[.., j, ..], ..]
    along `axis`, in index order (repeats add up). One scatter_add_axis call, which raises
    IndexError for an index outside [0, base.shape[axis]) before it adds anything."""
    idx = _index_on(indices, base.device, "scatter_add")
    shape = idx.shape
    axis = _normalize_axis(axis, base.ndim)
    off_axis = [k for k in range(base.ndim) if k != axis]
    if (
        values.shape != shape
        or len(shape) != base.ndim
        or any(shape[k] != base.shape[k] for k in off_axis)
    ):
        raise ValueError(
            f"scatter_add: values {values.shape} and index {shape} must match {base.shape} "
            f"off axis {axis}"
        )
    out = base + 0.0  # a compact copy
    if values.size:
        outer, inner = prod(shape[:axis]), prod(shape[axis + 1 :])
        n, m = base.shape[axis], shape[axis]
        base.device.scatter_add_axis(
            values.compact()._handle, idx._handle, out._handle, outer, n, inner, m
        )
    return out


def take_along_axis(a: NDArray, indices, axis: int) -> NDArray:
    """torch.gather on NDArrays: out[.., j, ..] = a[.., indices[.., j, ..], ..] along `axis`,
    indices (whole numbers, as many axes as a) of the output's shape, which may be smaller than
    a's off `axis` (a's leading block is read); an int64 NDArray on a's device is used as it
    is, anything else copied there. One gather_axis call, which raises IndexError for an index
    outside [0, a.shape[axis]) (checked as it reads them)."""
    idx = _index_on(indices, a.device, "gather")
    shape = idx.shape
    if len(shape) != a.ndim:
        raise ValueError(f"gather: index {shape} needs as many axes as the array {a.shape}")
    if a.ndim == 0:
        return take_along_axis(a.reshape((1,)), idx.reshape((1,)), 0).reshape(())
    axis = _normalize_axis(axis, a.ndim)
    if any(i > s for k, (i, s) in enumerate(zip(shape, a.shape)) if k != axis):
        raise ValueError(f"gather: index {shape} is larger than {a.shape} off axis {axis}")
    out = NDArray._make(shape, device=a.device, dtype=a.dtype)
    if out.size == 0:
        return out
    block = a
    if any(i != s for k, (i, s) in enumerate(zip(shape, a.shape)) if k != axis):
        block = a[tuple(slice(None) if k == axis else slice(0, i) for k, i in enumerate(shape))]
    outer, inner = prod(shape[:axis]), prod(shape[axis + 1 :])
    a.device.gather_axis(
        block.compact()._handle, idx._handle, out._handle, outer, a.shape[axis], inner, shape[axis]
    )
    return out


def add_rows(values: NDArray, indices, rows: int, out: NDArray | None = None) -> NDArray:
    """Zeros of shape (rows,) + values.shape[1:] with each values[i] added to row
    indices[i] (repeats add up): take_rows's adjoint. One scatter_add_rows call. With `out`
    (compact, of that shape, dtype and device) the rows are added onto out instead."""
    if not isinstance(values, NDArray) or values.ndim < 1:
        raise ValueError("add_rows needs an NDArray with at least one axis")
    if not isinstance(indices, RowIndices):
        indices = RowIndices(indices, rows, values.device)
    elif indices.rows != rows:
        raise ValueError(f"add_rows: indices are for {indices.rows} rows, not {rows}")
    if values.shape[0] != len(indices):
        raise ValueError(f"add_rows: {values.shape[0]} rows of values for {len(indices)} indices")
    idx = indices.on(values.device)
    shape = (rows,) + values.shape[1:]
    if out is None:
        out = values.device.full(shape, 0.0, dtype=values.dtype)
    else:
        values._check_same_device(out)
        if out.shape != shape or out.dtype != values.dtype or not out.is_compact():
            raise ValueError(
                f"add_rows: out must be a compact {shape} {values.dtype} array, "
                f"got {out.shape} {out.dtype}"
                f"{'' if out.is_compact() else ' (a view)'}"
            )
    return _by_rows("scatter_add_rows", values, idx, out)


def _by_rows(primitive: str, a: NDArray, idx: RowIndices, out: NDArray) -> NDArray:
    """Run the rows-by-index `primitive` (gather_rows or scatter_add_rows) over the rows of `a`
    (a.shape[1:] each), the indices `idx` and `out`, and return out. No indices or empty rows:
    nothing to do."""
    row_size = _size(a.shape[1:])
    if len(idx) and row_size:
        getattr(a.device, primitive)(
            a.compact()._handle, idx.array._handle, out._handle, len(idx), row_size
        )
    return out


def shared_numpy(a) -> NDArray:
    """An NDArray on cpu_numpy over the memory of the NumPy array `a` (no copy when `a` is
    C-contiguous: writes through either show in both): how the numpy mode hands its data to
    the ops."""
    a = np.asarray(a)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    device = cpu_numpy()
    return NDArray._make(a.shape, device=device, handle=device.mod.Array.over(a.reshape(-1)))


def numpy_shared(array: NDArray) -> np.ndarray:
    """The NumPy form of an NDArray result for the numpy mode: a view of a compact cpu_numpy
    buffer (else a copy), and a NumPy scalar for a 0-d array."""
    if array._device.name == "cpu_numpy" and array.is_compact():
        data = array._handle.array[array._offset : array._offset + array.size]  # type: ignore[attr-defined]
        data = data.reshape(array._shape)
    else:
        data = array.numpy()
    return data[()] if data.ndim == 0 else data


def broadcast_to(array: NDArray, new_shape) -> NDArray:
    return array.broadcast_to(new_shape)


def reshape(array: NDArray, new_shape) -> NDArray:
    return array.reshape(new_shape)


def maximum(a: NDArray, b) -> NDArray:
    return a.maximum(b)


def log(a: NDArray) -> NDArray:
    return a.log()


def exp(a: NDArray) -> NDArray:
    return a.exp()


def tanh(a: NDArray) -> NDArray:
    return a.tanh()


def sum(a: NDArray, axis=None, keepdims: bool = False) -> NDArray:
    return a.sum(axis=axis, keepdims=keepdims)


def max(a: NDArray, axis=None, keepdims: bool = False) -> NDArray:
    return a.max(axis=axis, keepdims=keepdims)


def flip(a: NDArray, axes) -> NDArray:
    return a.flip(axes)


def stack(arrays: Sequence[NDArray], axis: int = 0) -> NDArray:
    """Join arrays of one shape along a new axis."""
    arrays = list(arrays)
    if not arrays:
        raise ValueError("stack needs at least one array")
    shape = arrays[0].shape
    for a in arrays[1:]:
        if a.shape != shape:
            raise ValueError(f"stack: all arrays need one shape, got {shape} and {a.shape}")
        arrays[0]._check_same_device(a)
    axis = _normalize_axis(axis, len(shape) + 1)
    out = NDArray._make(
        shape[:axis] + (len(arrays),) + shape[axis:],
        device=arrays[0].device,
        dtype=arrays[0].dtype,
    )
    for i, a in enumerate(arrays):
        out[(slice(None),) * axis + (i,)] = a
    return out


def split(a: NDArray, axis: int = 0) -> tuple[NDArray, ...]:
    """Views of `a` along `axis`, one per index (the inverse of stack)."""
    axis = _normalize_axis(axis, a.ndim)
    return tuple(a._index_view((slice(None),) * axis + (i,)) for i in range(a.shape[axis]))


# ---- convolution ------------------------------------------------------------------------
def conv2d_native(device: BackendDevice, *arrays: NDArray) -> bool:
    """Whether `device` has its own conv2d primitives for these operands (one float dtype):
    else ops use their composite over im2col views and matmuls."""
    dtype = arrays[0].dtype
    return conv2d_native_for(device, dtype) and all(a.dtype == dtype for a in arrays)


def conv2d_native_for(device: BackendDevice, dtype: str) -> bool:
    """conv2d_native for operands of `dtype`."""
    return device.has("conv2d") and (
        dtype in FLOATS or (dtype in _HALF_SET and "conv2d" in device.half_rows)
    )


def matmul_float32(a: NDArray, b: NDArray) -> NDArray:
    """a @ b as float32: for 2-D 16-bit a and b, the float32 sums themselves where the device
    has matmul_strided_wide (a weight gradient for float32 master weights: no rounding to 16
    bits and no cast back, 79 us of a bf16 MLP step), else the product cast to float32."""
    device, dtype = a.device, a.dtype
    if not (
        a.ndim == 2 == b.ndim
        and dtype == b.dtype
        and dtype in _HALF_SET
        and a.shape[1] == b.shape[0]
        and a.size * b.shape[1]
        and builtins.min(a.strides + b.strides) >= 0
        and device.has("matmul_strided_wide")
    ):
        return (a @ b).astype("float32")
    (m, n), p = a.shape, b.shape[1]
    out = NDArray._compact_on(device, (m, p), "float32")
    device.matmul_strided_wide(
        a._handle, b._handle, out._handle, 1, m, n, p, a._offset, (0,) + a.strides,
        b._offset, (0,) + b.strides,
    )  # fmt: skip
    return out


def conv2d_takes_bias(rows: NDArray, bias: NDArray) -> bool:
    """Whether rows' device adds a conv's bias in its conv2d rows itself (conv2d_bias, and
    conv2d_weight_bias_grad for its gradient): a bias in rows' dtype, or float32 for 16-bit."""
    device, dtype = rows.device, rows.dtype
    fused = device.has("conv2d_bias") and device.has("conv2d_weight_bias_grad")
    if dtype in _HALF_SET:
        return fused and "conv2d_bias" in device.half_rows and bias.dtype == "float32"
    return fused and conv2d_native_for(device, dtype) and bias.dtype == dtype


def conv2d(
    kind: str,
    a: NDArray,
    b: NDArray,
    dims: tuple[int, ...],
    stride: int,
    padding: int,
    bias: NDArray | None = None,
):
    """One conv2d primitive on compact copies of a and b. kind "forward": a the NHWC input,
    b the (kh, kw, c_in, c_out) weights, the result the output; "input_grad": a the adjoint,
    b the weights, the result dx; "weight_grad": a the input, b the adjoint, the result dw.
    dims = (n, h, w, c_in, kh, kw, c_out) of the forward conv. With the conv's `bias`
    (conv2d_takes_bias), "forward" adds it and "weight_grad" returns (dw, its gradient).
    "weight_grad" of 16-bit operands is float32: the sums, unrounded (HALF_ROW_FLOAT32_PARAMS)."""
    n, h, w, c_in, kh, kw, c_out = dims
    if stride < 1 or padding < 0 or h + 2 * padding < kh or w + 2 * padding < kw:
        raise ValueError(f"conv2d: bad stride {stride} or padding {padding} for {dims}")
    oh, ow = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    x, wt, y = (n, h, w, c_in), (kh, kw, c_in, c_out), (n, oh, ow, c_out)
    shapes = {"forward": (x, wt, y), "input_grad": (y, wt, x), "weight_grad": (x, y, wt)}[kind]
    if a.shape != shapes[0] or b.shape != shapes[1]:
        raise ValueError(f"conv2d {kind}: operands {a.shape}, {b.shape} for {dims}")
    wide = kind == "weight_grad" and a.dtype in _HALF_SET
    out = NDArray._make(shapes[2], device=a.device, dtype="float32" if wide else a.dtype)
    args = (a.compact()._handle, b.compact()._handle, out._handle, *dims, stride, padding)
    if bias is None or kind == "input_grad":
        getattr(a.device, "conv2d" if kind == "forward" else f"conv2d_{kind}")(*args)
        return out
    if bias.shape != (c_out,) or not conv2d_takes_bias(a, bias):
        raise ValueError(f"conv2d {kind}: bias {bias.shape} {bias.dtype} for {a.dtype} {dims}")
    if kind == "forward":
        a.device.conv2d_bias(*args[:2], bias.compact()._handle, *args[2:])
        return out
    d_bias = NDArray._make((c_out,), device=a.device, dtype=bias.dtype)
    a.device.conv2d_weight_bias_grad(*args[:3], d_bias._handle, *args[3:])
    return out, d_bias
