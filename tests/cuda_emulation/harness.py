"""Build and drive the CUDA emulation: the CUDA backend's kernels run on the CPU.

``library()`` compiles ``src/cuda/{elementwise,layout,rows,reduce,gemm}.cu`` (the files nvcc
builds into ``ndarray_backend_cuda``, unchanged) as C++ with g++ against
``cuda_emulation.h``, together with ``launcher.cc`` (blocks of coroutine threads with real
barriers and warp exchanges), ``runtime_emulation.cc`` (src/cuda/runtime.h over guarded host
memory) and ``capi.cc`` (a C interface for ctypes). The library is cached in the temp folder
by a hash of everything that goes into it.

``emulated_backend()`` is a module-like object with the primitive table of
``ndarray_backend_numpy`` over that library, doing what ``src/ndarray_backend_cuda.cu`` does
around the kernels (to_numpy gathers on the "device" first; matmul_tiled goes through
row-major copies), so the kernels and their launch planning are tested against NumPy
without a GPU. What it cannot show: timing, real concurrency between blocks, the memory
model beyond barriers, and the CUDA runtime calls themselves (runtime.cu); those need a GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent.parent / "src"
KERNEL_SOURCES = [SRC / "cuda" / f"{name}.cu"
                  for name in ("elementwise", "layout", "rows", "reduce", "gemm")]
HOST_SOURCES = [HERE / "launcher.cc", HERE / "runtime_emulation.cc", HERE / "capi.cc",
                HERE / "selftest.cc"]
HEADERS = sorted((SRC / "cuda").glob("*.h")) + sorted((SRC / "cuda").glob("*.cuh")) + sorted(
    HERE.glob("*.h")
)
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = [
    "-std=c++17", "-O1", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror",
    "-Wno-unknown-pragmas",  # #pragma unroll
    "-Wno-unused-parameter", "-fno-strict-aliasing", "-DNEEDLE_CUDA_EMULATION",
]

DTYPE_CODE = {"float32": 0, "float64": 1}
UNARY = ["neg", "abs", "sign", "log", "exp", "tanh", "sqrt", "sin", "cos", "relu", "sigmoid"]
BINARY = ["add", "sub", "rsub", "mul", "div", "rdiv", "power", "maximum", "eq", "ge"]
TILE = 8


class BuildError(RuntimeError):
    pass


class EmulationError(RuntimeError):
    """A kernel misbehaved in the emulation (or the C++ side raised)."""


_LIBRARY = None


def library() -> ctypes.CDLL:
    """The emulation library, built on first use (BuildError when g++ is missing or fails)."""
    global _LIBRARY
    if _LIBRARY is not None:
        return _LIBRARY
    if shutil.which(CXX) is None:
        raise BuildError(f"no C++ compiler ({CXX})")
    digest = hashlib.sha256()
    for path in KERNEL_SOURCES + HOST_SOURCES + HEADERS:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(" ".join([CXX] + CXXFLAGS).encode())
    target = Path(tempfile.gettempdir()) / f"needle-cuda-emulation-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        command = [CXX, *CXXFLAGS, f"-I{HERE}", f"-I{SRC}", f"-I{SRC / 'cuda'}", "-x", "c++",
                   *map(str, KERNEL_SOURCES), "-x", "none", *map(str, HOST_SOURCES),
                   "-o", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(result.stderr[-4000:])
        os.replace(partial, target)
    lib = ctypes.CDLL(str(target))
    p, i, i64, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double
    sz = ctypes.c_size_t
    ip = ctypes.POINTER(ctypes.c_int64)
    lib.emu_last_error.restype = ctypes.c_char_p
    lib.emu_alloc.restype = p
    lib.emu_alloc.argtypes = [sz, i]
    lib.emu_free.argtypes = [p]
    lib.emu_live_bytes.restype = sz
    lib.emu_configure.argtypes = [i, i]
    lib.emu_fill.argtypes = [i, p, i64, d]
    for name in ("emu_compact", "emu_ewise_setitem"):
        getattr(lib, name).argtypes = [i, p, p, i, ip, ip, i64]
    lib.emu_scalar_setitem.argtypes = [i, d, p, i, ip, ip, i64]
    lib.emu_unary.argtypes = [i, i, p, p, i64]
    lib.emu_binary.argtypes = [i, i, p, p, p, i64]
    lib.emu_scalar.argtypes = [i, i, p, d, p, i64]
    lib.emu_axpby.argtypes = [i, p, p, d, d, p, i64]
    lib.emu_gather_rows.argtypes = [i, p, p, p, i64, i64]
    lib.emu_scatter_add_rows.argtypes = [i, p, p, p, i64, i64]
    lib.emu_matmul.argtypes = [i, p, ip, p, ip, p, i64, i64, i64, i64]
    lib.emu_reduce_last.argtypes = [i, i, p, p, i64, i64]
    lib.emu_reduce_middle.argtypes = [i, i, p, p, i64, i64, i64]
    lib.emu_selftest.argtypes = [i, p, ctypes.c_char_p, i]
    _LIBRARY = lib
    return lib


def _call(name, *args):
    lib = library()
    if getattr(lib, name)(*args) != 0:
        raise EmulationError(lib.emu_last_error().decode())


def _int64s(values):
    values = [int(v) for v in values]
    return (ctypes.c_int64 * max(len(values), 1))(*values)


def selftest(which: int) -> np.ndarray:
    """Runs selftest.cc's kernel `which` (0 shuffle, 1 misaligned vector store, 2 and 3
    divergent barrier / shuffle, 4 a block that is not whole warps) on 256 floats; returns
    them, or raises EmulationError with the emulation's report."""
    out = Array(256, "float32")
    out.host_view()[:] = 0
    error = ctypes.create_string_buffer(1024)
    if library().emu_selftest(which, out.ptr(), error, len(error)) != 0:
        raise EmulationError(error.value.decode())
    return out.host_view().copy()


def configure(sm_count: int = 2, max_grid_y: int = 65535) -> None:
    """What the emulated device reports (grids are planned from it)."""
    library().emu_configure(sm_count, max_grid_y)


def live_bytes() -> int:
    return library().emu_live_bytes()


class Settings:
    # tight=True: buffers end exactly at an inaccessible page (starts then only 16-byte
    # aligned when the size is a multiple of 16 bytes: the scalar paths get exercised).
    tight = False


class Array:
    """A flat emulated device buffer of `size` elements."""

    def __init__(self, size: int, dtype: str = "float32"):
        if dtype not in DTYPE_CODE:
            raise ValueError(f"unsupported dtype '{dtype}'")
        self.size, self.dtype = int(size), dtype
        self._itemsize = np.dtype(dtype).itemsize
        self._ptr = library().emu_alloc(max(self.size * self._itemsize, 1), int(Settings.tight))
        if not self._ptr:
            raise MemoryError(library().emu_last_error().decode())

    def __del__(self):
        if getattr(self, "_ptr", None) and _LIBRARY is not None:
            _LIBRARY.emu_free(self._ptr)
            self._ptr = None

    def ptr(self) -> int:
        return self._ptr

    def host_view(self) -> np.ndarray:
        """The buffer as a NumPy array (no copy): the emulated device memory is host memory."""
        buf = (ctypes.c_char * (self.size * self._itemsize)).from_address(self._ptr)
        return np.frombuffer(buf, dtype=self.dtype, count=self.size)


def _dt(*arrays) -> int:
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1:
        raise TypeError("all arrays of a primitive call must share one dtype")
    return DTYPE_CODE[dtypes.pop()]


def _make_backend() -> types.SimpleNamespace:
    ns = types.SimpleNamespace(__device_name__="cuda_emulation", __tile_size__=TILE,
                               DTYPES=("float32", "float64"), Array=Array)

    def to_numpy(a, shape, strides, offset):
        shape, strides = tuple(int(s) for s in shape), tuple(int(s) for s in strides)
        n = int(np.prod(shape, dtype=np.int64))
        if n == 0:
            return np.empty(shape, dtype=a.dtype)
        packed = Array(n, a.dtype)  # gathered on the device, as ndarray_backend_cuda does
        compact(a, packed, shape, strides, offset)
        return packed.host_view().copy().reshape(shape)

    def from_numpy(src, out):
        src = np.ascontiguousarray(src)
        if src.dtype != np.dtype(out.dtype):
            raise TypeError("from_numpy: source dtype does not match Array dtype")
        if src.size != out.size:
            raise ValueError("from_numpy: sizes differ")
        out.host_view()[:] = src.reshape(-1)

    def fill(out, val):
        _call("emu_fill", _dt(out), out.ptr(), out.size, float(val))

    def compact(a, out, shape, strides, offset):
        _call("emu_compact", _dt(a, out), a.ptr(), out.ptr(), len(shape), _int64s(shape),
              _int64s(strides), int(offset))

    def ewise_setitem(a, out, shape, strides, offset):
        _call("emu_ewise_setitem", _dt(a, out), a.ptr(), out.ptr(), len(shape), _int64s(shape),
              _int64s(strides), int(offset))

    def scalar_setitem(size, val, out, shape, strides, offset):
        _call("emu_scalar_setitem", _dt(out), float(val), out.ptr(), len(shape), _int64s(shape),
              _int64s(strides), int(offset))

    for index, name in enumerate(UNARY):
        def unary(a, out, _op=index):
            _call("emu_unary", _op, _dt(a, out), a.ptr(), out.ptr(), out.size)
        setattr(ns, f"ewise_{name}", unary)
    for index, name in enumerate(BINARY):
        if name not in ("rsub", "rdiv"):
            def ewise(a, b, out, _op=index):
                _call("emu_binary", _op, _dt(a, b, out), a.ptr(), b.ptr(), out.ptr(), out.size)
            setattr(ns, f"ewise_{name}", ewise)

        def scalar(a, val, out, _op=index):
            _call("emu_scalar", _op, _dt(a, out), a.ptr(), float(val), out.ptr(), out.size)
        setattr(ns, f"scalar_{name}", scalar)

    def ewise_axpby(a, b, alpha, beta, out):
        _call("emu_axpby", _dt(a, b, out), a.ptr(), b.ptr(), float(alpha), float(beta),
              out.ptr(), out.size)

    def gather_rows(a, indices, out, n, row_size):
        _call("emu_gather_rows", _dt(a, indices, out), a.ptr(), indices.ptr(), out.ptr(), int(n),
              int(row_size))

    def scatter_add_rows(a, indices, out, n, row_size):
        _call("emu_scatter_add_rows", _dt(a, indices, out), a.ptr(), indices.ptr(), out.ptr(),
              int(n), int(row_size))

    def matmul_strided(a, b, out, batch, m, n, p, a_offset, a_strides, b_offset, b_strides):
        if len(a_strides) != 3 or len(b_strides) != 3:
            raise ValueError("matmul_strided: strides must be (batch, row, col)")
        _call("emu_matmul", _dt(a, b, out), a.ptr(), _int64s([a_offset, *a_strides]), b.ptr(),
              _int64s([b_offset, *b_strides]), out.ptr(), batch, m, n, p)

    def matmul(a, b, out, m, n, p):
        matmul_strided(a, b, out, 1, m, n, p, 0, (0, n, 1), 0, (0, p, 1))

    def batched_matmul(a, b, out, batch, m, n, p):
        matmul_strided(a, b, out, batch, m, n, p, 0, (m * n, n, 1), 0, (n * p, p, 1))

    def matmul_tiled(a, b, out, m, n, p):
        t = TILE
        a_rows, b_rows, c_rows = Array(m * n, a.dtype), Array(n * p, a.dtype), Array(m * p, a.dtype)
        compact(a, a_rows, (m // t, t, n // t, t), (n * t, t, t * t, 1), 0)
        compact(b, b_rows, (n // t, t, p // t, t), (p * t, t, t * t, 1), 0)
        matmul(a_rows, b_rows, c_rows, m, n, p)
        ewise_setitem(c_rows, out, (m // t, t, p // t, t), (p * t, t, t * t, 1), 0)

    def reduce_sum(a, out, reduce_size):
        _call("emu_reduce_last", 0, _dt(a, out), a.ptr(), out.ptr(), out.size, reduce_size)

    def reduce_max(a, out, reduce_size):
        _call("emu_reduce_last", 1, _dt(a, out), a.ptr(), out.ptr(), out.size, reduce_size)

    def reduce_sum_axis(a, out, outer, reduce_size, inner):
        _call("emu_reduce_middle", 0, _dt(a, out), a.ptr(), out.ptr(), outer, reduce_size, inner)

    def reduce_max_axis(a, out, outer, reduce_size, inner):
        _call("emu_reduce_middle", 1, _dt(a, out), a.ptr(), out.ptr(), outer, reduce_size, inner)

    def synchronize():
        return None

    for fn in (to_numpy, from_numpy, fill, compact, ewise_setitem, scalar_setitem, ewise_axpby,
               gather_rows, scatter_add_rows, matmul_strided, matmul, batched_matmul,
               matmul_tiled, reduce_sum, reduce_max, reduce_sum_axis, reduce_max_axis,
               synchronize):
        setattr(ns, fn.__name__, fn)
    return ns


def emulated_backend() -> types.SimpleNamespace:
    """The primitive table over the emulated kernels (builds the library first)."""
    library()
    configure()
    return _make_backend()
