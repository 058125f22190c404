"""The primitive table of needle's Metal backends, written against a small runtime interface.

Three runtimes run the kernels of ``metal/*.metal`` through this module:
``ndarray_backend_metal`` (PyObjC on a Mac), ``ndarray_backend_mps`` (the same, with
Metal Performance Shaders for matmul) and the tests' CPU emulation
(``tests/metal_emulation``), which compiles the same ``.metal`` files as C++. This module is
the one place that knows, for every primitive, which kernel runs, what goes to each
``[[buffer(n)]]`` index and how large the grid is, so the emulated tests check that planning
too. It imports neither PyObjC nor anything else outside NumPy.

A runtime provides:

- ``allocate(nbytes)``: a buffer in shared storage (the CPU and GPU see the same memory);
- ``host_view(buffer, nbytes)``: a writable memoryview of that memory;
- ``address(buffer)``: an integer address, for ``Array.ptr()``;
- ``dispatch(kernel, buffers, constants, threadgroups, threads)``: encode one kernel launch
  without waiting: ``buffers`` are ``(index, buffer, byte_offset)``, ``constants`` are
  ``(index, bytes)`` (setBytes), the grid is ``threadgroups`` x ``threads`` (3-tuples);
- ``wait()``: submit everything encoded and block until it has run;
- ``matmul_kernels()``: the matmul kernels this GPU can run, best first;
- ``batch`` / ``completed``: counters this module keeps on the runtime (start 0 / -1), so
  that backends sharing one runtime share them.

Kernels run in the order they were encoded. The CPU touches a buffer (``to_numpy``,
``from_numpy``) only after every launch that used it has completed: each Array remembers the
batch of its last launch, and ``synchronize()`` closes a batch.
"""

from __future__ import annotations

import math
import operator
import os
import struct
from collections.abc import Sequence
from importlib import resources
from typing import Callable, NamedTuple

import numpy as np

from . import primitives
from .primitives import StridedMatmul

# ---- kernel sources ---------------------------------------------------------------------
# Each library is compiled from one string: common.metal first, then the files that use it.
CORE_SOURCES = (
    "common.metal",
    "elementwise.metal",
    "layout.metal",
    "rows.metal",
    "reduce.metal",
    "matmul.metal",
)
# simdgroup_matrix needs Apple GPU family 7 (M1 and later): a library of its own, so that the
# core library compiles everywhere.
SIMDGROUP_SOURCES = ("common.metal", "matmul_simdgroup.metal")
SIMDGROUP_KERNELS = frozenset({"matmul_simdgroup_float32", "matmul_simdgroup_float16"})


def kernel_source(files: Sequence[str]) -> str:
    """The MSL source of one library: the files of metal/, in order, with #line markers."""
    root = resources.files(__package__) / "metal"
    return "\n".join(f'#line 1 "{name}"\n' + (root / name).read_text() for name in files)


# ---- launch geometry (each constant matches the kernel file named) --------------------------
THREADS = 256  # elementwise, layout and *_serial / *_axis reductions: 8 SIMD-groups of 32
REDUCE_THREADS = 256  # reduce.metal REDUCE_THREADS: one threadgroup per row in *_rows
# Rows up to this long are reduced by one thread each (*_serial): a 256-thread group per row
# would leave most threads idle. Longer rows get a threadgroup each (*_rows).
REDUCE_SERIAL_MAX = 64
# kernel: (rows of out per threadgroup, columns of out per threadgroup, threads); each is one
# kernel per dtype of the matmul rows that Metal holds (matmul_simdgroup_float16).
MATMUL_TILES = {
    "matmul_threadgroup": (64, 64, 256),  # matmul.metal MM_BM, MM_BN, MM_THREADS
    "matmul_simdgroup": (64, 64, 128),  # matmul_simdgroup.metal SG_BM, SG_BN, SG_THREADS
}
INT32_MAX = 2**31 - 1  # kernels index with 32-bit ints


# The dtypes Metal holds (no float64: Apple GPUs have no double precision) and their MSL types
# (common.metal): float, half, int, long, uchar, bool. A kernel for one dtype is named
# <kernel>_<dtype>: ewise_add_int64, compact_bool; astype's <from>_<to>: astype_float16_int32.
DTYPES: tuple[str, ...] = ("float32", "float16", "int32", "int64", "uint8", "bool")
NO_BFLOAT16 = "MSL has bfloat only from Metal 3.1 (macOS 14), so needle's kernels do not hold it"
ITEMSIZE = {dtype: np.dtype(dtype).itemsize for dtype in DTYPES}


def _groups(count: int, per_group: int) -> tuple[int, int, int]:
    return (max(1, -(-count // per_group)), 1, 1)


def _u32(value: int) -> bytes:
    return struct.pack("<I", value)


def _f32(value: float, dtype: str = "float32") -> bytes:
    # Rounded to float32 (float16) as the NumPy backend rounds scalars (overflow gives inf, as
    # there); a float16 from a Python float straight from double, as NumPy's.
    with np.errstate(over="ignore"):
        return np.array(value, dtype=dtype).tobytes()


_INT_FORMATS = {"int32": "<I", "int64": "<Q", "uint8": "<B"}


def scalar_bytes(dtype: str, value) -> bytes:
    """A scalar operand as the kernels of `dtype` read it (a `constant T&`): floats rounded;
    an integer converted as C's static_cast (NDArray passes a whole number in range;
    anything wider wraps, as NumPy's astype); bool is value != 0."""
    if dtype in ("float32", "float16"):
        return _f32(value, dtype)
    if dtype == "bool":
        return b"\x01" if value != 0 else b"\x00"
    fmt = _INT_FORMATS[dtype]
    return struct.pack(fmt, int(value) % (1 << (8 * ITEMSIZE[dtype])))


class MPSMatrixLayout(NamedTuple):
    """How MPSMatrix sees one operand: a batch of row-major (rows, columns) matrices."""

    rows: int
    columns: int
    row_bytes: int
    matrix_bytes: int
    offset_bytes: int
    transposed: bool  # the stored matrix is the transpose of the operand


def mps_matrix_layout(
    batch: int, rows: int, columns: int, offset: int, strides: Sequence[int], buffer_size: int
) -> MPSMatrixLayout | None:
    """The MPSMatrix description of the view (batch, rows, columns) with `strides` (batch, row,
    column) at `offset` in a buffer of `buffer_size` floats; None when MPS cannot read it in
    place (broadcast rows or batches, columns not unit-stride in either orientation).

    MPS reads matrices whose rows are unit-stride, `row_bytes` apart, `matrix_bytes` apart in a
    batch; a view that is unit-stride down its columns is given as its transpose. The whole
    last matrix must fit in the buffer, as MPS may read its row padding.
    """
    batch_stride, row_stride, column_stride = strides
    if (column_stride == 1 or columns == 1) and (row_stride >= columns or rows == 1):
        stored_rows, stored_columns, stride, transposed = rows, columns, row_stride, False
    elif (row_stride == 1 or rows == 1) and (column_stride >= rows or columns == 1):
        stored_rows, stored_columns, stride, transposed = columns, rows, column_stride, True
    else:
        return None
    stride = max(stride, stored_columns)  # a single row or column may report any stride
    matrix = stored_rows * stride
    if batch > 1:
        if batch_stride < matrix:
            return None  # broadcast or interleaved batches
        matrix = batch_stride
    if offset + batch * matrix > buffer_size:
        return None
    return MPSMatrixLayout(
        stored_rows, stored_columns, 4 * stride, 4 * matrix, 4 * offset, transposed
    )


# ---- arrays -----------------------------------------------------------------------------------
class MetalArray:
    """A flat buffer of one of DTYPES in shared storage. Each backend has its own subclass,
    `Array`."""

    __slots__ = ("buffer", "_size", "_dtype", "itemsize", "last_batch", "__weakref__")
    backend: MetalBackend

    def __init__(self, size: int, dtype: str = "float32"):
        backend = self.backend
        self._dtype = backend.check_dtype(dtype)
        self.itemsize = ITEMSIZE[self._dtype]
        size = operator.index(size)
        if not 0 <= size <= INT32_MAX:
            raise ValueError(
                f"{backend.device_name}(): cannot allocate {size} elements (0 to {INT32_MAX})"
            )
        self._size = size
        # Metal has no empty buffers
        self.buffer = backend.runtime.allocate(self.itemsize * max(size, 1))
        self.last_batch = -1  # the batch of the last launch that used this array

    @property
    def size(self) -> int:
        return self._size

    @property
    def dtype(self) -> str:
        return self._dtype

    def ptr(self) -> int:
        return self.backend.runtime.address(self.buffer)


# ---- the primitive table ---------------------------------------------------------------------
class MetalBackend:
    """The primitive table (``primitives.TABLE``), run as Metal kernels on `runtime`."""

    DTYPES = DTYPES

    def __init__(self, runtime, device_name: str):
        self.runtime = runtime
        self.device_name = device_name
        self.Array = type("Array", (MetalArray,), {"__slots__": (), "backend": self})
        self._matmul_kernel: str | None = None

    # -- dtypes and synchronisation --
    def check_dtype(self, dtype) -> str:
        """The name of `dtype` if this backend holds it."""
        if "bfloat16" in (str(dtype), getattr(dtype, "__name__", None)):
            raise primitives.UnsupportedDtypeError(
                f"{self.device_name}() does not support bfloat16: {NO_BFLOAT16}; it holds "
                f"{', '.join(self.DTYPES)}"
            )
        return primitives.held_dtype(
            self.device_name, dtype, self.DTYPES, "Apple GPUs have no double precision"
        )

    def synchronize(self) -> None:
        """Submit every encoded kernel and wait until they have run."""
        runtime = self.runtime
        runtime.wait()
        runtime.completed = runtime.batch
        runtime.batch += 1

    def _wait_for(self, array: MetalArray) -> None:
        if array.last_batch > self.runtime.completed:
            self.synchronize()

    def _launch(self, kernel: str, arrays, constants, threadgroups, threads) -> None:
        batch = self.runtime.batch
        for _, array, _ in arrays:
            array.last_batch = batch
        self.runtime.dispatch(
            kernel,
            [(index, array.buffer, array.itemsize * offset) for index, array, offset in arrays],
            constants,
            threadgroups,
            threads,
        )

    def _host(self, array: MetalArray) -> np.ndarray:
        view = self.runtime.host_view(array.buffer, array.itemsize * array.size)
        return np.frombuffer(view, dtype=array.dtype, count=array.size)

    # -- memory --
    def to_numpy(self, a: MetalArray, shape, strides, offset) -> np.ndarray:
        shape = tuple(operator.index(d) for d in shape)
        primitives.check_view(self.device_name, shape, strides, offset, a.size)
        if math.prod(shape) == 0:
            return np.empty(shape, dtype=a.dtype)
        self._wait_for(a)
        host = self._host(a)
        view = np.lib.stride_tricks.as_strided(
            host[operator.index(offset) :],
            shape,
            tuple(a.itemsize * operator.index(s) for s in strides),
        )
        return view.copy()

    def from_numpy(self, a: np.ndarray, out: MetalArray) -> None:
        if a.dtype != out.dtype:
            raise TypeError(f"{self.device_name}: from_numpy needs {out.dtype} data, got {a.dtype}")
        if a.size != out.size:
            raise ValueError(
                f"{self.device_name}: from_numpy of {a.size} elements into an array of {out.size}"
            )
        if out.size == 0:
            return
        self._wait_for(out)
        self._host(out).reshape(a.shape)[...] = a  # one (strided) copy into shared memory

    def fill(self, out: MetalArray, val: float) -> None:
        if out.size:
            self._launch(
                f"fill_{out.dtype}",
                [(0, out, 0)],
                [(1, scalar_bytes(out.dtype, val)), (2, _u32(out.size))],
                _groups(out.size, THREADS),
                (THREADS, 1, 1),
            )

    def astype(self, a: MetalArray, out: MetalArray) -> None:
        """out = a converted to out's dtype (common.metal's cast_to: NumPy's bits)."""
        if a.size != out.size:
            raise ValueError(
                f"{self.device_name}: astype of {a.size} elements into an array of {out.size}"
            )
        self.unary(f"astype_{a.dtype}_{out.dtype}", a, out)

    # -- layout --
    def _strided(self, kernel: str, source, out: MetalArray, shape, strides, offset) -> None:
        view = primitives.layout_view(self.device_name, kernel, source, out, shape, strides, offset)
        if view is None:
            return
        size, shape, strides, offset = view
        constants = [
            (2, struct.pack(f"<{len(shape)}I", *shape)),
            (3, struct.pack(f"<{len(strides)}i", *strides)),
            (4, struct.pack("<IIi", size, len(shape), offset)),
        ]
        arrays = [(1, out, 0)]
        if isinstance(source, MetalArray):
            arrays.insert(0, (0, source, 0))
        else:
            constants.insert(0, (0, scalar_bytes(out.dtype, source)))
        self._launch(
            f"{kernel}_{out.dtype}", arrays, constants, _groups(size, THREADS), (THREADS, 1, 1)
        )

    def compact(self, a: MetalArray, out: MetalArray, shape, strides, offset) -> None:
        self._strided("compact", a, out, shape, strides, offset)

    def ewise_setitem(self, a: MetalArray, out: MetalArray, shape, strides, offset) -> None:
        self._strided("ewise_setitem", a, out, shape, strides, offset)

    def scalar_setitem(
        self, size: int, val: float, out: MetalArray, shape, strides, offset
    ) -> None:
        primitives.check_size(f"{self.device_name} scalar_setitem", size, shape)
        self._strided("scalar_setitem", float(val), out, shape, strides, offset)

    # -- rows by index --
    def _rows(
        self,
        kernel: str,
        a: MetalArray,
        indices: MetalArray,
        out: MetalArray,
        n: int,
        row_size: int,
        size: int,
    ) -> None:
        if size:
            self._launch(
                f"{kernel}_{a.dtype}",
                [(0, a, 0), (1, indices, 0), (2, out, 0)],
                [(3, struct.pack("<3I", n, row_size, size))],
                _groups(size, THREADS),
                (THREADS, 1, 1),
            )

    def gather_rows(
        self, a: MetalArray, indices: MetalArray, out: MetalArray, n: int, row_size: int
    ) -> None:
        """Row i of out = row indices[i] of a, for i < n (an embedding lookup)."""
        self._rows("gather_rows", a, indices, out, n, row_size, n * row_size)

    def scatter_add_rows(
        self, a: MetalArray, indices: MetalArray, out: MetalArray, n: int, row_size: int
    ) -> None:
        """Row indices[i] of out += row i of a, for i < n: a thread per element of out's
        whole rows, adding in index order (no float atomics)."""
        if n and row_size:
            self._rows(
                "scatter_add_rows", a, indices, out, n, row_size, out.size // row_size * row_size
            )

    # -- elementwise --
    def ewise_binary(self, kernel: str, a: MetalArray, b: MetalArray, out: MetalArray) -> None:
        if out.size:
            self._launch(
                kernel,
                [(0, a, 0), (1, b, 0), (2, out, 0)],
                [(3, _u32(out.size))],
                _groups(out.size, THREADS),
                (THREADS, 1, 1),
            )

    def scalar_binary(self, kernel: str, a: MetalArray, val: float, out: MetalArray) -> None:
        if out.size:
            self._launch(
                kernel,
                [(0, a, 0), (2, out, 0)],
                [(1, scalar_bytes(a.dtype, val)), (3, _u32(out.size))],
                _groups(out.size, THREADS),
                (THREADS, 1, 1),
            )

    def unary(self, kernel: str, a: MetalArray, out: MetalArray) -> None:
        if out.size:
            self._launch(
                kernel,
                [(0, a, 0), (1, out, 0)],
                [(2, _u32(out.size))],
                _groups(out.size, THREADS),
                (THREADS, 1, 1),
            )

    def ewise_axpby(
        self, a: MetalArray, b: MetalArray, alpha: float, beta: float, out: MetalArray
    ) -> None:
        """out = alpha * a + beta * b; out may be a or b itself (an in-place update)."""
        if out.size:
            self._launch(
                "ewise_axpby",
                [(0, a, 0), (1, b, 0), (2, out, 0)],
                [(3, _u32(out.size)), (4, _f32(alpha)), (5, _f32(beta))],
                _groups(out.size, THREADS),
                (THREADS, 1, 1),
            )

    # -- linear algebra --
    @property
    def matmul_kernel(self) -> str:
        """The matmul kernel in use: NEEDLE_METAL_MATMUL, else the best this GPU runs."""
        if self._matmul_kernel is None:
            available = self.runtime.matmul_kernels()
            wanted = os.environ.get("NEEDLE_METAL_MATMUL")
            if wanted:
                wanted = wanted if wanted.startswith("matmul_") else "matmul_" + wanted
                if wanted not in available:
                    raise RuntimeError(
                        f"NEEDLE_METAL_MATMUL={wanted}: this GPU runs {', '.join(available)}"
                    )
                self._matmul_kernel = wanted
            else:
                self._matmul_kernel = available[0]
        return self._matmul_kernel

    @matmul_kernel.setter
    def matmul_kernel(self, kernel: str) -> None:
        if kernel not in MATMUL_TILES:
            raise ValueError(f"unknown matmul kernel {kernel!r}: {', '.join(MATMUL_TILES)}")
        self._matmul_kernel = kernel

    def matmul_strided(
        self, a: MetalArray, b: MetalArray, out: MetalArray, *args, **kwargs
    ) -> None:
        """The table's matmul_strided(a, b, out, batch, m, n, p, a_offset, a_strides,
        b_offset, b_strides): the arguments after out, by position or by name, are the fields
        of a primitives.StridedMatmul."""
        self._matmul(a, b, out, StridedMatmul(*args, **kwargs))

    def matmul(self, a: MetalArray, b: MetalArray, out: MetalArray, m: int, n: int, p: int) -> None:
        self._matmul(a, b, out, StridedMatmul.compact(1, m, n, p))

    def batched_matmul(
        self, a: MetalArray, b: MetalArray, out: MetalArray, batch: int, m: int, n: int, p: int
    ) -> None:
        self._matmul(a, b, out, StridedMatmul.compact(batch, m, n, p))

    def _matmul(self, a: MetalArray, b: MetalArray, out: MetalArray, views: StridedMatmul) -> None:
        """Every matmul primitive: out = a @ b, the operands and out as `views` says."""
        views.check(self.device_name, a.size, b.size, out.size)
        if views.batch * views.m * views.p == 0:
            return
        kernel = self.matmul_kernel
        rows_per_group, columns_per_group, threads = MATMUL_TILES[kernel]
        # The kernel's parameters: batch, m, n, p, a_offset, a_strides, b_offset, b_strides.
        params = struct.pack(
            "<4I8i", *views[:5], *views.a_strides, views.b_offset, *views.b_strides
        )
        self._launch(
            f"{kernel}_{a.dtype}",
            [(0, a, 0), (1, b, 0), (2, out, 0)],
            [(3, params)],
            (-(-views.p // columns_per_group), -(-views.m // rows_per_group), views.batch),
            (threads, 1, 1),
        )

    # -- reductions --
    def _reduce(
        self, op: str, a: MetalArray, out: MetalArray, outer: int, reduce_size: int, inner: int
    ) -> None:
        if outer * inner == 0:
            return
        shape = struct.pack("<3I", outer, reduce_size, inner)
        arrays = [(0, a, 0), (1, out, 0)]
        if inner > 1:
            self._launch(
                f"reduce_{op}_axis_{a.dtype}",
                arrays,
                [(2, shape)],
                _groups(outer * inner, THREADS),
                (THREADS, 1, 1),
            )
        elif reduce_size <= REDUCE_SERIAL_MAX:
            self._launch(
                f"reduce_{op}_serial_{a.dtype}",
                arrays,
                [(2, shape)],
                _groups(outer, THREADS),
                (THREADS, 1, 1),
            )
        else:
            self._launch(
                f"reduce_{op}_rows_{a.dtype}",
                arrays,
                [(2, shape)],
                (outer, 1, 1),
                (REDUCE_THREADS, 1, 1),
            )

    def reduce_sum(self, a: MetalArray, out: MetalArray, reduce_size: int) -> None:
        self._reduce("sum", a, out, out.size, reduce_size, 1)

    def reduce_max(self, a: MetalArray, out: MetalArray, reduce_size: int) -> None:
        self._reduce("max", a, out, out.size, reduce_size, 1)

    def reduce_sum_axis(
        self, a: MetalArray, out: MetalArray, outer: int, reduce_size: int, inner: int
    ) -> None:
        self._reduce("sum", a, out, outer, reduce_size, inner)

    def reduce_max_axis(
        self, a: MetalArray, out: MetalArray, outer: int, reduce_size: int, inner: int
    ) -> None:
        self._reduce("max", a, out, outer, reduce_size, inner)

    def _kernels(self, prim: primitives.Primitive) -> dict[str, str]:
        """An elementwise row's kernel per dtype it takes here: ewise_add_int64, ..."""
        return {d: f"{prim.name}_{d}" for d in prim.dtypes if d in self.DTYPES}

    def _binary_primitive(self, prim: primitives.Primitive) -> Callable:
        kernels = self._kernels(prim)

        def primitive(a: MetalArray, b: MetalArray, out: MetalArray) -> None:
            self.ewise_binary(kernels[a.dtype], a, b, out)

        return primitive

    def _scalar_primitive(self, prim: primitives.Primitive) -> Callable:
        kernels = self._kernels(prim)

        def primitive(a: MetalArray, val: float, out: MetalArray) -> None:
            self.scalar_binary(kernels[a.dtype], a, val, out)

        return primitive

    def _unary_primitive(self, prim: primitives.Primitive) -> Callable:
        kernels = self._kernels(prim)

        def primitive(a: MetalArray, out: MetalArray) -> None:
            self.unary(kernels[a.dtype], a, out)

        return primitive

    # -- the module-level table --
    def primitive_table(self) -> dict[str, object]:
        """The names a backend module exports: every primitive of the table this backend
        implements (primitives.TABLE, with the table's parameter names), bound to it and
        behind its row's dtype rules (primitives.dtype_checked). The optional ones it leaves out
        (ewise_broadcast_binary, matmul_tiled) are the table's fallbacks over these."""
        table: dict[str, object] = {
            "Array": self.Array,
            "DTYPES": self.DTYPES,
            "__device_name__": self.device_name,
        }
        families = {
            "binary": self._binary_primitive,
            "scalar": self._scalar_primitive,
            "unary": self._unary_primitive,
        }
        for prim in primitives.TABLE.values():
            if prim.reference is not None:  # an elementwise family: a kernel per dtype
                impl = families[prim.group](prim)
            elif hasattr(self, prim.name):
                impl = getattr(self, prim.name)
            else:
                continue
            table[prim.name] = (
                primitives.dtype_checked(prim, impl, self.device_name, self.DTYPES)
                if prim.params
                else impl
            )
        return table
