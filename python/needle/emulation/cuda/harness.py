"""Build and drive the CUDA emulation: the CUDA module's host table and kernels on the CPU.

``library()`` compiles what nvcc builds into ``ndarray_backend_cuda`` but its Python
bindings and runtime.cu, unchanged: the kernels ``src/cuda/{elementwise,layout,rows,reduce,
gemm}.cu`` and the host table ``src/cuda/host_table.cc``, with g++ against
``cuda_emulation.h``; together with ``launcher.cc`` (blocks of coroutine threads with real
barriers and warp exchanges), ``runtime_emulation.cc`` (src/cuda/runtime.h over guarded host
memory), ``capi.cc`` (a C interface over the host table, for ctypes) and ``selftest.cc``.
NEEDLE_CUDA_KERNELS=folder compiles a user's .cu files there in place of the shipped ones of
the same name. The library is cached (``needle.emulation.cache_dir()``) by a hash of
everything that goes into it.

``emulated_backend()`` is a module-like object built from the primitive table
(``needle.backend_ndarray.primitives.TABLE``): for every primitive the host table defines, a
function that marshals each argument by its parameter's kind and calls the host table by
name. So the host code that ships (dtype checks, to_numpy's gather-then-copy, the routing of
every matmul through the strided GEMM, ...) and the kernels with their launch planning are
tested against NumPy without a GPU, and a new row of the table needs nothing here. What it
cannot show: timing, real concurrency between blocks, the memory model beyond barriers, and
the CUDA runtime calls themselves (runtime.cu); those need a GPU.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import operator
import os
import subprocess
import types
from pathlib import Path

import numpy as np

from needle.backend_ndarray.primitives import TABLE, Param, Primitive
from needle.emulation import (
    BuildError,
    EmulationError,
    cache_dir,
    cached_build,
    compiler,
    require_compiler,
    source_hash,
    user_sources,
)

HERE = Path(__file__).resolve().parent


def source_root() -> Path:
    """The folder holding cuda/ and common/: the copy a wheel ships (CMakeLists.txt installs
    it next to this file), else the source checkout's src/ (an editable install)."""
    shipped = HERE / "src"
    return shipped if (shipped / "cuda").is_dir() else HERE.parents[3] / "src"


SRC = source_root()
KERNEL_NAMES = ("elementwise", "layout", "rows", "reduce", "gemm")
# The kernels' files: a user's own may replace any of them (NEEDLE_CUDA_KERNELS).
SHIPPED_KERNELS = {f"{name}.cu": SRC / "cuda" / f"{name}.cu" for name in KERNEL_NAMES}
HOST_SOURCES = [
    SRC / "cuda" / "host_table.cc",
    HERE / "launcher.cc",
    HERE / "runtime_emulation.cc",
    HERE / "capi.cc",
    HERE / "selftest.cc",
]
HEADERS = (
    sorted((SRC / "cuda").glob("*.h"))
    + sorted((SRC / "common").glob("*.h"))
    + sorted((SRC / "cuda").glob("*.cuh"))
    + sorted(HERE.glob("*.h"))
)
CXXFLAGS = [
    "-std=c++17",
    "-O1",
    "-fPIC",
    "-shared",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-unknown-pragmas",  # #pragma unroll
    "-Wno-unused-parameter",
    "-fno-strict-aliasing",
    "-DNEEDLE_CUDA_EMULATION",
]
# The compiler the suite's specs check for (the build reads $CXX when it runs).
CXX = compiler()


class CudaError(RuntimeError):
    """The host table's CudaError (ndarray_backend_cuda.CudaError)."""


class OutOfMemoryError(MemoryError):
    """The host table's OutOfMemory (ndarray_backend_cuda.OutOfMemoryError)."""


# capi.cc's error kinds.
_ERRORS = {1: ValueError, 2: TypeError, 3: OutOfMemoryError, 4: CudaError, 5: EmulationError}


class EmuArg(ctypes.Structure):
    """capi.cc's EmuArg: one argument of a primitive."""

    _fields_ = [
        ("ptr", ctypes.c_void_p),
        ("i", ctypes.c_int64),
        ("f", ctypes.c_double),
        ("dtype", ctypes.c_int32),
    ]


def kernel_sources() -> list[Path]:
    """The kernel files to compile: the shipped ones, or a user's from NEEDLE_CUDA_KERNELS."""
    return list(user_sources("NEEDLE_CUDA_KERNELS", SHIPPED_KERNELS, ".cu").values())


def _compile(cxx: str, kernels: list[Path], target: Path) -> None:
    # The user's folder first: a replaced file's own includes ("common.cuh") resolve to the
    # shipped headers through -I src/cuda.
    command = [
        cxx,
        *CXXFLAGS,
        f"-I{HERE}",
        f"-I{SRC}",
        f"-I{SRC / 'cuda'}",
        "-x",
        "c++",
        *map(str, kernels),
        "-x",
        "none",
        *map(str, HOST_SOURCES),
        "-o",
        str(target),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        log = target.with_suffix(".log")
        log.write_text(result.stderr)
        first = next((line for line in result.stderr.splitlines() if "error" in line), "")
        raise BuildError(f"the CUDA emulation does not compile: {first} (the full log: {log})")


_LIBRARY = None


def library() -> ctypes.CDLL:
    """The emulation library, built on first use (BuildError when g++ is missing or fails)."""
    global _LIBRARY
    if _LIBRARY is not None:
        return _LIBRARY
    cxx = require_compiler("the CUDA emulation")
    kernels = kernel_sources()
    digest = source_hash(cxx, CXXFLAGS, kernels + HOST_SOURCES + HEADERS)
    target = cache_dir() / f"needle-cuda-emulation-{digest}.so"
    cached_build(target, lambda partial: _compile(cxx, kernels, partial), "the CUDA emulation")
    lib = ctypes.CDLL(str(target))
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for name, restype, argtypes in [
        ("emu_last_error", s, []),
        ("emu_configure", None, [i, i]),
        ("emu_set_tight", None, [i]),
        ("emu_set_order_check", None, [i]),
        ("emu_live_bytes", ctypes.c_size_t, []),
        ("emu_tile_size", i, []),
        ("emu_dtypes", s, []),
        ("emu_primitives", s, []),
        ("emu_call", i, [s, ctypes.POINTER(EmuArg), i]),
        ("emu_array_new", p, [ctypes.c_size_t, s, ctypes.POINTER(i)]),
        ("emu_array_delete", None, [p]),
        ("emu_array_ptr", p, [p]),
        ("emu_selftest", i, [i, p, s, i]),
    ]:
        getattr(lib, name).restype = restype
        getattr(lib, name).argtypes = argtypes
    lib.emu_set_order_check(int(os.environ.get("NEEDLE_CUDA_ORDER_CHECK", "1") != "0"))
    _LIBRARY = lib
    return lib


def _raise(kind: int):
    raise _ERRORS.get(kind, EmulationError)(library().emu_last_error().decode())


def selftest(which: int) -> np.ndarray:
    """Runs selftest.cc's kernel `which` (0 shuffle, 1 misaligned vector store, 2 and 3
    divergent barrier / shuffle, 4 a block that is not whole warps, 5 threads at two barriers,
    6 and 7 writes past the end and before the start, 8 a null argument, 9 a missing
    __syncthreads()) on 256 floats; returns them, or raises EmulationError with the report."""
    out = Array(256, "float32")
    out.host_view()[:] = 0
    error = ctypes.create_string_buffer(1024)
    if library().emu_selftest(which, out.ptr(), error, len(error)) != 0:
        raise EmulationError(error.value.decode())
    return out.host_view().copy()


def configure(sm_count: int = 2, max_grid_y: int = 65535) -> None:
    """What the emulated device reports (grids are planned from it)."""
    library().emu_configure(sm_count, max_grid_y)


def set_order_check(on: bool) -> None:
    """Whether every launch runs a second time with each block's threads in reverse order and
    must give the same bytes (launcher.cc's check_order; twice the time). On unless
    NEEDLE_CUDA_ORDER_CHECK=0."""
    library().emu_set_order_check(int(on))


def live_bytes() -> int:
    return library().emu_live_bytes()


class Settings:
    # tight=True: buffers end exactly at an inaccessible page (starts then only 16-byte
    # aligned when the size is a multiple of 16 bytes: the scalar paths get exercised).
    tight = False


class Array:
    """An Array of the host table: a flat emulated device buffer of `size` elements."""

    def __init__(self, size: int, dtype: str = "float32"):
        lib = library()
        lib.emu_set_tight(int(Settings.tight))
        kind = ctypes.c_int(0)
        self._handle = lib.emu_array_new(
            operator.index(size), str(dtype).encode(), ctypes.byref(kind)
        )
        if not self._handle:
            _raise(kind.value)
        self.size, self.dtype = int(size), str(dtype)

    def __del__(self):
        if getattr(self, "_handle", None) and _LIBRARY is not None:
            _LIBRARY.emu_array_delete(self._handle)
            self._handle = None

    def ptr(self) -> int:
        return library().emu_array_ptr(self._handle)

    def host_view(self) -> np.ndarray:
        """The buffer as a NumPy array (no copy): the emulated device memory is host memory."""
        count = self.size * np.dtype(self.dtype).itemsize
        buf = (ctypes.c_char * count).from_address(self.ptr())
        return np.frombuffer(buf, dtype=self.dtype, count=self.size)


# ---- marshalling by parameter kind: each sets an EmuArg, returns what must stay alive -------
def _array(value, arg):
    if not isinstance(value, Array):
        raise TypeError(f"expected an Array of the CUDA emulation, got {type(value).__name__}")
    arg.ptr = value._handle


def _int(value, arg):
    arg.i = operator.index(value)


def _bool(value, arg):
    arg.i = bool(value)


def _float(value, arg):
    arg.f = float(value)


def _shape(value, arg):
    values = [operator.index(v) for v in value]
    buffer = (ctypes.c_int64 * max(len(values), 1))(*values)
    arg.ptr, arg.i = ctypes.addressof(buffer), len(values)
    return buffer


def _str(value, arg):
    buffer = ctypes.create_string_buffer(str(value).encode())
    arg.ptr = ctypes.addressof(buffer)
    return buffer


def _numpy(value, arg):
    # The dtype as its index in the host table's DTYPES (-1: one no Array holds).
    array = np.ascontiguousarray(value)
    arg.ptr, arg.i = array.ctypes.data, array.size
    codes = _dtype_codes()
    arg.dtype = codes.get(array.dtype.name, -1)
    return array


@functools.cache
def _dtype_codes() -> dict[str, int]:
    return {name: code for code, name in enumerate(library().emu_dtypes().decode().split(","))}


# An index parameter is an Array like any other (the host table checks that it is int64), and
# so is a comparison's out (bool: Primitive.out_dtype, checked there too).
MARSHAL = {
    "array": _array,
    "out": _array,
    "inout": _array,
    "index": _array,
    "int": _int,
    "bool": _bool,
    "float": _float,
    "shape": _shape,
    "str": _str,
    "numpy": _numpy,
}


def _primitive(row: Primitive):
    """The function of primitive `row`: called by position or keyword with the table's
    parameter names, it marshals each argument by its kind and calls the host table."""
    lib = library()
    names = row.param_names
    marshal = [MARSHAL[p.kind] for p in row.params]
    name, count = row.name.encode(), len(names)

    def primitive(*args, **kwargs):
        if len(args) > count:
            raise TypeError(f"{row.signature} takes {count} arguments, got {len(args)}")
        values = list(args)
        for param in names[len(args) :]:
            if param not in kwargs:
                raise TypeError(f"{row.signature}: missing argument '{param}'")
            values.append(kwargs.pop(param))
        if kwargs:
            raise TypeError(f"{row.signature}: unexpected arguments {sorted(kwargs)}")
        cargs = (EmuArg * max(count, 1))()
        alive = [m(v, cargs[k]) for k, (m, v) in enumerate(zip(marshal, values))]
        kind = lib.emu_call(name, cargs, count)
        del alive
        if kind:
            _raise(kind)

    primitive.__name__ = primitive.__qualname__ = row.name
    primitive.__doc__ = f"{row.signature}: {row.doc}"
    return primitive


# to_numpy is the one primitive that returns something: the host table writes the view into
# a host buffer (one more parameter, of kind numpy) that the function allocates and returns.
TO_NUMPY_OUT = Param("out", "numpy")


def _to_numpy(row: Primitive):
    call = _primitive(dataclasses.replace(row, params=row.params + (TO_NUMPY_OUT,)))

    def to_numpy(a, shape, strides, offset):
        if not isinstance(a, Array):
            raise TypeError(f"expected an Array of the CUDA emulation, got {type(a).__name__}")
        result = np.empty(tuple(operator.index(d) for d in shape), dtype=a.dtype)
        call(a, shape, strides, offset, result)
        return result

    to_numpy.__doc__ = f"{row.signature}: {row.doc}"
    return to_numpy


def host_primitives() -> dict[str, tuple[str, ...]]:
    """The primitives the host table defines, with their parameter names."""
    listing = library().emu_primitives().decode()
    found = {}
    for item in filter(None, listing.split(";")):
        name, params = item[:-1].split("(")
        found[name] = tuple(filter(None, params.split(",")))
    return found


def emulated_backend(name: str = "cuda_emulation") -> types.SimpleNamespace:
    """The CUDA module's primitives over the emulated device: every primitive of the table
    that the host table defines (builds the library first); `name` is its __device_name__."""
    lib = library()
    configure()
    host = host_primitives()
    unknown = sorted(set(host) - set(TABLE))
    if unknown:
        raise EmulationError(f"the host table defines primitives the table lacks: {unknown}")
    ns = types.SimpleNamespace(
        __name__=name,
        __device_name__=name,
        __tile_size__=lib.emu_tile_size(),
        DTYPES=tuple(lib.emu_dtypes().decode().split(",")),
        Array=Array,
        CudaError=CudaError,
        OutOfMemoryError=OutOfMemoryError,
    )
    for row in TABLE.values():
        if row.name not in host:
            continue
        expected = row.param_names + ((TO_NUMPY_OUT.name,) if row.name == "to_numpy" else ())
        if host[row.name] != expected:
            raise EmulationError(
                f"the host table's {row.name}{host[row.name]} is not the table's {row.signature}"
            )
        setattr(ns, row.name, (_to_numpy if row.name == "to_numpy" else _primitive)(row))
    return ns
