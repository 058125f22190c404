"""The WebGPU backend: needle's WGSL kernels (``webgpu/*.wgsl``) through wgpu, on whatever GPU
API the machine has (Metal on a Mac, Vulkan on Linux, D3D12 on Windows) or, without a GPU,
on Mesa's CPU Vulkan driver (lavapipe: correct and slow; CI runs the tests there).

``pip install "needle[webgpu]"``. Importing this module raises ImportError, with the reason,
without wgpu or an adapter, and ``ndl.webgpu().enabled()`` is then False (``.reason`` says
why). Dtypes: float32, int32, int64, uint8 and bool, and float16 where the adapter has 16-bit
floats (``shader-f16``: WGSL's f16 in 2 bytes; the rows that compute take it in float32); no
float64 (most GPUs have none) and no bfloat16 (WGSL has no such type). int64
is WGSL's i64 where the adapter has 64-bit integers (``shader-int64``), else pairs of u32
words with carries (helpers_int64_pairs.wgsl), so that every adapter holds int64 row
indices and class labels. WGSL stores nothing narrower than 32
bits, so a uint8 or bool element takes a 32-bit word on the device (converted on the way in
and out); uint8 arithmetic wraps to 8 bits as NumPy's does.

This file decides, for every primitive of the table, which kernel runs over which arrays with
which parameters and grid; ``webgpu_runtime`` owns the device, the buffer pool, the pipelines
and the command stream. Kernels are WGSL sections of ``webgpu/*.wgsl`` specialised per dtype
and operator by text substitution (``$T``, ``$EXPR``, ...), compiled once each.
"""

from __future__ import annotations

import math
import operator
import struct
from importlib import resources
from string import Template
from typing import Callable

import numpy as np

from . import primitives
from .primitives import StridedMatmul
from .webgpu_runtime import Block, WebGPURuntime

THREADS = 256  # common.wgsl THREADS: every kernel's workgroup size
REDUCE_SERIAL_MAX = 64  # rows up to this long get a thread each (reduce.wgsl serial)
MATMUL_TILE = 64  # matmul.wgsl BM = BN
MAX_AXES = 16  # strided.wgsl: shape and strides of up to 16 axes
INT32_MAX = 2**31 - 1  # kernels index with 32-bit integers

# dtype -> (WGSL storage type, helpers file, the NumPy type of its device words)
WGSL_TYPES: dict[str, tuple[str, str, type]] = {
    "float32": ("f32", "helpers_float.wgsl", np.float32),
    "float16": ("f16", "helpers_half.wgsl", np.float16),  # with shader-f16 only
    "int32": ("i32", "helpers_int.wgsl", np.int32),
    "int64": ("i64", "helpers_int.wgsl", np.int64),
    "uint8": ("u32", "helpers_byte.wgsl", np.uint32),
    "bool": ("u32", "helpers_byte.wgsl", np.uint32),
}

# The operators of the elementwise rows (primitives.UNARY, BINARY, SCALAR) over x and y, with
# the helpers of helpers_*.wgsl where WGSL's built-ins differ from NumPy.
UNARY_EXPR = {
    "neg": "neg_np(x)",
    "abs": "abs_np(x)",
    "sign": "sign_np(x)",
    "log": "log_np(x)",
    "exp": "exp_np(x)",
    "tanh": "tanh_np(x)",
    "sqrt": "sqrt(x)",
    "rsqrt": "inverseSqrt(x)",
    "sin": "sin(x)",
    "cos": "cos(x)",
    "relu": "maximum_nan(x, $T(0))",
    "sigmoid": "sigmoid_np(x)",
    "erf": "erf_np(x)",
    "gelu": "gelu_np(x)",
    "gelu_grad": "gelu_grad_np(x)",
}
BINARY_EXPR = {
    "add": "wrap(x + y)",
    "sub": "wrap(x - y)",
    "mul": "wrap(x * y)",
    "div": "x / y",
    "power": "power_np(x, y)",
    "maximum": "maximum_nan(x, y)",
    "eq": "select(0u, 1u, x == y)",
    "ge": "select(0u, 1u, x >= y)",
    "lt": "select(0u, 1u, x < y)",
    "le": "select(0u, 1u, x <= y)",
}
SCALAR_EXPR = {
    **BINARY_EXPR,
    # a ** 0.5 is sqrt, as in NumPy and PyTorch (-inf ** 0.5 is NaN; pow would give inf).
    "power": "select(power_np(x, y), sqrt(x), y == 0.5)",
    "rsub": "wrap(y - x)",
    "rdiv": "y / x",
}
EXPRESSIONS = {"unary": UNARY_EXPR, "binary": BINARY_EXPR, "scalar": SCALAR_EXPR}

# int64 without shader-int64: (low, high) u32 pairs and the functions of
# helpers_int64_pairs.wgsl instead of WGSL's operators.
INT64_PAIRS = ("vec2<u32>", "helpers_int64_pairs.wgsl", np.int64)
_PAIR_BINARY = {
    "add": "add64(x, y)",
    "sub": "sub64(x, y)",
    "mul": "mul64(x, y)",
    "maximum": "maximum_nan(x, y)",
    "eq": "select(0u, 1u, eq64(x, y))",
    "ge": "select(0u, 1u, !lt64(x, y))",
    "lt": "select(0u, 1u, lt64(x, y))",
    "le": "select(0u, 1u, !lt64(y, x))",
}
PAIR_EXPRESSIONS = {
    "unary": {
        "neg": "neg_np(x)",
        "abs": "abs_np(x)",
        "sign": "sign_np(x)",
        "relu": "maximum_nan(x, vec2<u32>(0u, 0u))",
    },
    "binary": _PAIR_BINARY,
    "scalar": {**_PAIR_BINARY, "rsub": "sub64(y, x)"},
}


# astype.wgsl: the storage word of each dtype (i64 storage is a vec2<u32> pair), element i of
# a as an f32's bits (floats) or an int64 pair (integers, bool), and that form x as out's word.
ASTYPE_TYPES = ("u32", "helpers_half.wgsl", np.uint32)
_ASTYPE_WORDS = dict.fromkeys(WGSL_TYPES, "u32") | {"int64": "vec2<u32>"}
_ASTYPE_LOAD = {
    "float32": "a[i]",
    "float16": "half_to_f32_bits((a[i / 2u] >> (16u * (i % 2u))) & 0xffffu)",
    "int32": "vec2<u32>(a[i], select(0u, 0xffffffffu, (a[i] >> 31u) == 1u))",
    "int64": "a[i]",
    "uint8": "vec2<u32>(a[i], 0u)",
    "bool": "vec2<u32>(a[i], 0u)",
}
_FLOAT_TO = {
    "float32": "x",
    "float16": "f32_to_half_bits(x)",
    "int32": "f32_to_i32(x)",
    "int64": "f32_to_i64(x)",
    "uint8": "f32_to_i32(x) & 255u",  # NumPy's (x86's) float to uint8: through int32
    "bool": "select(0u, 1u, (x & 0x7fffffffu) != 0u)",  # NaN is True, -0.0 False
}
_INT_TO = {
    "float32": "i64_to_f32(x)",
    "float16": "f32_to_half_bits(i64_to_f32(x))",  # one rounding: f32 is exact below 2^24
    "int32": "x.x",
    "int64": "x",
    "uint8": "x.x & 255u",
    "bool": "select(0u, 1u, (x.x | x.y) != 0u)",
}


def _read(name: str) -> str:
    return (resources.files(__package__) / "webgpu" / name).read_text()


def _sections(name: str) -> dict[str, str]:
    """A kernel file's sections ("//// name" lines), each with the file's header before the
    first one; a file without sections is one kernel, ""."""
    header, *parts = _read(name).split("\n//// ")
    if not parts:
        return {"": header}
    return {part.split("\n", 1)[0]: header + "\n" + part.split("\n", 1)[1] for part in parts}


_SOURCES: dict[str, dict[str, str]] = {}


def kernel_source(file: str, section: str, types: tuple[str, str, type], **subs: str) -> str:
    """The WGSL of one kernel: common.wgsl, the helpers of the element type (`types`, an
    entry of WGSL_TYPES), the section of `file`, with $T (and `subs`) substituted."""
    if file not in _SOURCES:
        _SOURCES[file] = _sections(file)
    wgsl_type, helpers, _ = types
    text = "\n".join((_read("common.wgsl"), _read(helpers), _SOURCES[file][section]))
    if wgsl_type == "f16":
        text = "enable f16;\n" + text  # a directive: before every declaration
    subs = {k: Template(v).safe_substitute(T=wgsl_type) for k, v in subs.items()}
    return Template(text).safe_substitute(T=wgsl_type, **subs)


def _u32s(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


def scalar_bytes(dtype: str, value) -> bytes:
    """A scalar as a kernel of `dtype` reads it: float32 or float16 rounded (overflow is inf,
    as in NumPy); integers wrap as C's casts (NDArray passes whole numbers); bool is value != 0."""
    if dtype in ("float32", "float16"):
        with np.errstate(over="ignore"):
            return np.array(value, dtype=dtype).tobytes()
    if dtype == "bool":
        return _u32s(value != 0)
    if dtype == "int64":
        return struct.pack("<Q", int(value) % 2**64)
    return _u32s(int(value) % (2**32 if dtype == "int32" else 256))


def _value_params(size: int, dtype: str, value) -> bytes:
    """Params {size: u32, value: $T}: the value at byte 4, or 8 for an i64 (its alignment)."""
    pad = b"\0" * 4 if dtype == "int64" else b""
    return _u32s(size) + pad + scalar_bytes(dtype, value)


class WebGPUBackend:
    """The primitive table (``primitives.TABLE``) as WGSL kernels on `runtime`."""

    def __init__(self, runtime: WebGPURuntime, device_name: str = "webgpu"):
        self.runtime = runtime
        self.device_name = device_name
        # float16 needs WGSL's f16 (shader-f16); bfloat16 has no WGSL type at all.
        f16 = "shader-f16" in runtime.features
        self.DTYPES: tuple[str, ...] = tuple(d for d in WGSL_TYPES if f16 or d != "float16")
        # int64 is native where the adapter has 64-bit integers, else pairs of u32.
        self.int64_pairs = "shader-int64" not in runtime.features
        self.types = dict(WGSL_TYPES, **({"int64": INT64_PAIRS} if self.int64_pairs else {}))
        backend = self

        class Array:
            """A flat device buffer of `size` elements of one of DTYPES, from the pool."""

            __slots__ = ("block", "_size", "_dtype", "__weakref__")  # (autograd's write record)

            def __init__(self, size: int, dtype: str = "float32"):
                self._dtype = backend.check_dtype(dtype)
                size = operator.index(size)
                if not 0 <= size <= INT32_MAX:
                    raise ValueError(
                        f"{backend.device_name}(): cannot allocate {size} elements "
                        f"(0 to {INT32_MAX})"
                    )
                self._size = size
                self.block: Block = runtime.allocate(
                    backend.itemsize(self._dtype) * max(size, 1),
                    f"an array of {size} {self._dtype}",
                )

            def __del__(self):
                block = getattr(self, "block", None)
                if block is not None:
                    runtime.release(block)

            @property
            def size(self) -> int:
                return self._size

            @property
            def dtype(self) -> str:
                return self._dtype

            def ptr(self) -> int:
                return self.block.key  # a buffer has no host address; unique while alive

        self.Array = Array

    # ---- dtypes ----------------------------------------------------------------------------
    @staticmethod
    def itemsize(dtype: str) -> int:
        """Bytes per element on the device (uint8 and bool take a 32-bit word)."""
        return 8 if dtype == "int64" else 2 if dtype == "float16" else 4

    def check_dtype(self, dtype) -> str:
        return primitives.held_dtype(
            self.device_name, dtype, self.DTYPES, "WebGPU has no double precision"
        )

    def capabilities(self) -> dict[str, object]:
        """The adapter, the dtypes it holds and the optional WebGPU features in use."""
        return dict(
            adapter=self.runtime.adapter_name,
            dtypes=self.DTYPES,
            features=sorted(self.runtime.features),
        )

    # ---- launching -------------------------------------------------------------------------
    def _launch(
        self, kernel: str, arrays, params: bytes, groups: tuple[int, int, int], source
    ) -> None:
        self.runtime.dispatch(kernel, [a.block for a in arrays], params, groups, source)

    def _elementwise(self, kernel: str, arrays, params: bytes, size: int, source) -> None:
        self._launch(kernel, arrays, params, self.runtime.grid(-(-size // THREADS)), source)

    def synchronize(self) -> None:
        """Submit every recorded kernel and wait until they have run."""
        self.runtime.synchronize()

    # ---- memory ----------------------------------------------------------------------------
    def to_numpy(self, a, shape, strides, offset) -> np.ndarray:
        shape = tuple(operator.index(d) for d in shape)
        strides = tuple(operator.index(s) for s in strides)
        offset = operator.index(offset)
        primitives.check_view(self.device_name, shape, strides, offset, a.size)
        if math.prod(shape) == 0:
            return np.empty(shape, dtype=a.dtype)
        low = offset + sum(s * (d - 1) for d, s in zip(shape, strides) if s < 0)
        high = offset + sum(s * (d - 1) for d, s in zip(shape, strides) if s > 0)
        word = self.types[a.dtype][2]
        size = self.itemsize(a.dtype)
        if size == 2:  # copies move whole 4-byte words: from an even element, an even count
            low -= low % 2
            high += 1 - (high - low) % 2
        data = self.runtime.read(a.block, low * size, (high - low + 1) * size, "to_numpy")
        host: np.ndarray = np.frombuffer(data, dtype=word)
        view = np.lib.stride_tricks.as_strided(
            host[offset - low :], shape, tuple(size * s for s in strides)
        )
        return view.astype(a.dtype)  # a copy, and uint8 / bool out of their words

    def from_numpy(self, a: np.ndarray, out) -> None:
        if a.dtype != out.dtype:
            raise TypeError(f"{self.device_name}: from_numpy needs {out.dtype} data, got {a.dtype}")
        if a.size != out.size:
            raise ValueError(
                f"{self.device_name}: from_numpy of {a.size} elements into an array of {out.size}"
            )
        if out.size:
            words: np.ndarray = np.ascontiguousarray(a, dtype=self.types[out.dtype][2]).reshape(-1)
            if words.nbytes % 4:  # writes are whole 4-byte words: one more half (the block has it)
                words = np.concatenate([words, words[:1]])
            runtime = self.runtime
            if runtime.busy(out.block):
                # Every element is replaced: rather than submitting the recorded dispatches
                # that use the block (a queue write lands before them), give the array an idle
                # block of the same size and the old one back to the pool.
                busy, out.block = out.block, runtime.allocate(out.block.nbytes, "from_numpy", True)
                runtime.release(busy)
            runtime.write(out.block, words, "from_numpy")

    def fill(self, out, val) -> None:
        if out.size:
            dtype = out.dtype
            self._elementwise(
                f"fill_{dtype}",
                [out],
                _value_params(out.size, dtype, val),
                out.size,
                lambda: kernel_source("elementwise.wgsl", "fill", self.types[dtype]),
            )

    def astype(self, a, out) -> None:
        """out = a converted to out's dtype (astype.wgsl: integer arithmetic, NumPy's bits)."""
        if a.size != out.size:
            raise ValueError(
                f"{self.device_name}: astype of {a.size} elements into an array of {out.size}"
            )
        if a.size:
            source, target = a.dtype, out.dtype
            floating = source in ("float32", "float16")
            subs = dict(
                A=_ASTYPE_WORDS[source],
                B=_ASTYPE_WORDS[target],
                MID="u32" if floating else "vec2<u32>",
                LOAD=_ASTYPE_LOAD[source],
                CONVERT=(_FLOAT_TO if floating else _INT_TO)[target],
            )
            section = "half" if target == "float16" else "words"
            self._elementwise(
                f"astype_{source}_{target}",
                [a, out],
                _u32s(a.size),
                -(-a.size // 2),
                lambda: kernel_source("astype.wgsl", section, ASTYPE_TYPES, **subs),
            )

    # ---- layout ----------------------------------------------------------------------------
    def _strided(self, kernel: str, source, out, shape, strides, offset) -> None:
        view = primitives.layout_view(self.device_name, kernel, source, out, shape, strides, offset)
        if view is None:
            return
        size, shape, strides, offset = view
        if len(shape) > MAX_AXES:
            raise ValueError(
                f"{self.device_name}: {kernel} of a view with {len(shape)} axes that do not "
                f"merge (at most {MAX_AXES})"
            )
        dtype = out.dtype
        pad = MAX_AXES - len(shape)
        params = (
            struct.pack("<IIiI", size, len(shape), offset, 0)
            + struct.pack(f"<{MAX_AXES}I", *shape, *[1] * pad)
            + struct.pack(f"<{MAX_AXES}i", *strides, *[0] * pad)
        )
        if kernel == "scalar_setitem":
            params += scalar_bytes(dtype, source)
            arrays = [out, out]  # binding 1 (a) is unused: out is bound in its place
        else:
            params += bytes(8)
            arrays = [source, out]
        body = {
            "compact": "out[i] = a[storage_index(i)];",
            "ewise_setitem": "out[storage_index(i)] = a[i];",
            "scalar_setitem": "out[storage_index(i)] = p.value;",
        }[kernel]
        self._elementwise(
            f"{kernel}_{dtype}",
            arrays,
            params,
            size,
            lambda: kernel_source("strided.wgsl", "", self.types[dtype], BODY=body),
        )

    def compact(self, a, out, shape, strides, offset) -> None:
        self._strided("compact", a, out, shape, strides, offset)

    def ewise_setitem(self, a, out, shape, strides, offset) -> None:
        self._strided("ewise_setitem", a, out, shape, strides, offset)

    def scalar_setitem(self, size: int, val, out, shape, strides, offset) -> None:
        primitives.check_size(f"{self.device_name} scalar_setitem", size, shape)
        self._strided("scalar_setitem", val, out, shape, strides, offset)

    # ---- rows by index ---------------------------------------------------------------------
    def _rows(self, section: str, a, indices, out, n: int, row_size: int, size: int) -> None:
        if size:
            dtype = a.dtype
            self._elementwise(
                f"{section}_rows_{dtype}",
                [a, indices, out],
                _u32s(n, row_size, size),
                size,
                lambda: kernel_source("rows.wgsl", section, self.types[dtype]),
            )

    def gather_rows(self, a, indices, out, n: int, row_size: int) -> None:
        """Row i of out = row indices[i] of a, for i < n (an embedding lookup)."""
        self._rows("gather", a, indices, out, n, row_size, n * row_size)

    def scatter_add_rows(self, a, indices, out, n: int, row_size: int) -> None:
        """Row indices[i] of out += row i of a, for i < n, in index order."""
        if n and row_size:
            whole_rows = out.size // row_size * row_size
            self._rows("scatter_add", a, indices, out, n, row_size, whole_rows)

    # ---- elementwise -----------------------------------------------------------------------
    def _family(self, prim: primitives.Primitive) -> Callable:
        """A primitive of an elementwise family: one kernel per dtype, out's type u32 for the
        bool of comparisons."""
        family, op = prim.group, prim.name.split("_", 1)[1]
        result = "u32" if prim.out_dtype == "bool" else "$T"

        def source(dtype):
            pairs = dtype == "int64" and self.int64_pairs
            expr = (PAIR_EXPRESSIONS if pairs else EXPRESSIONS)[family][op]
            types = self.types[dtype]
            return lambda: kernel_source("elementwise.wgsl", family, types, EXPR=expr, R=result)

        if family == "scalar":

            def scalar(a, val, out) -> None:
                if out.size:
                    self._elementwise(
                        f"{prim.name}_{a.dtype}",
                        [a, out],
                        _value_params(out.size, a.dtype, val),
                        out.size,
                        source(a.dtype),
                    )

            return scalar

        def elementwise(*arrays) -> None:
            out = arrays[-1]
            if out.size:
                dtype = arrays[0].dtype
                self._elementwise(
                    f"{prim.name}_{dtype}",
                    arrays,
                    _u32s(out.size),  # Params.value is unused here
                    out.size,
                    source(dtype),
                )

        return elementwise

    def ewise_axpby(self, a, b, alpha: float, beta: float, out) -> None:
        """out = alpha * a + beta * b; out may be a or b itself (an in-place update)."""
        if out.size:
            params = (
                _u32s(out.size) + scalar_bytes("float32", alpha) + scalar_bytes("float32", beta)
            )
            self._elementwise(
                "ewise_axpby",
                [a, b, out],
                params,
                out.size,
                lambda: kernel_source("elementwise.wgsl", "axpby", self.types["float32"]),
            )

    def ewise_broadcast_binary(
        self, op: str, full, vector, out, outer: int, inner: int, per_column, vector_first
    ) -> None:
        """out = op(full, vector repeated) in one pass (a bias add, a per-row scale)."""
        if op not in ("add", "sub", "mul", "div", "maximum"):
            raise ValueError(f"{self.device_name}: ewise_broadcast_binary of unknown op {op!r}")
        if out.size:
            dtype = full.dtype
            params = _u32s(outer * inner, inner, bool(per_column), bool(vector_first))
            self._elementwise(
                f"broadcast_{op}_{dtype}",
                [full, vector, out],
                params,
                out.size,
                lambda: kernel_source(
                    "elementwise.wgsl", "broadcast", self.types[dtype], EXPR=BINARY_EXPR[op], R="$T"
                ),
            )

    # ---- linear algebra --------------------------------------------------------------------
    def matmul_strided(self, a, b, out, *args, **kwargs) -> None:
        """The table's matmul_strided(a, b, out, batch, m, n, p, a_offset, a_strides,
        b_offset, b_strides): the arguments after out are a primitives.StridedMatmul."""
        self._matmul(a, b, out, StridedMatmul(*args, **kwargs))

    def matmul(self, a, b, out, m: int, n: int, p: int) -> None:
        self._matmul(a, b, out, StridedMatmul.compact(1, m, n, p))

    def batched_matmul(self, a, b, out, batch: int, m: int, n: int, p: int) -> None:
        self._matmul(a, b, out, StridedMatmul.compact(batch, m, n, p))

    def _matmul(self, a, b, out, views: StridedMatmul) -> None:
        views.check(self.device_name, a.size, b.size, out.size)
        if views.batch * views.m * views.p == 0:
            return
        if views.n == 0:
            self.scalar_setitem(
                views.batch * views.m * views.p,
                0.0,
                out,
                (views.batch * views.m * views.p,),
                (1,),
                0,
            )
            return
        groups = (-(-views.p // MATMUL_TILE), -(-views.m // MATMUL_TILE), views.batch)
        if max(groups) > self.runtime.max_groups:
            raise ValueError(
                f"{self.device_name}: matmul of {views.batch} ({views.m}, {views.n}) @ "
                f"({views.n}, {views.p}) needs a grid of {groups} workgroups (at most "
                f"{self.runtime.max_groups} per dimension)"
            )
        params = struct.pack(
            "<4I8i", *views[:5], *views.a_strides, views.b_offset, *views.b_strides
        )
        dtype = a.dtype
        # float16: the f32 sums rounded to nearest even once in integers (helpers_half.wgsl),
        # whatever rounding the driver's own conversion has, then converted exactly (naga
        # cannot bitcast to vec2<f16>).
        half = "half_to_f32_bits(f32_to_half_bits(bitcast<u32>(x)))"
        rounded = "x" if dtype == "float32" else f"f16(bitcast<f32>({half}))"
        self._launch(
            "matmul" if dtype == "float32" else f"matmul_{dtype}",
            [a, b, out],
            params,
            groups,
            lambda: kernel_source("matmul.wgsl", "", self.types[dtype], ROUND=rounded),
        )

    # ---- reductions ------------------------------------------------------------------------
    def _reduce(self, op: str, a, out, outer: int, reduce_size: int, inner: int) -> None:
        if outer * inner == 0:
            return
        dtype = a.dtype
        if reduce_size == 0:  # an empty sum (NDArray never asks for an empty max)
            self.fill(out, 0)
            return
        if inner > 1:
            section, groups = "axis", self.runtime.grid(-(-outer * inner // THREADS))
        elif reduce_size <= REDUCE_SERIAL_MAX:
            section, groups = "serial", self.runtime.grid(-(-outer // THREADS))
        else:
            subgroups = "subgroup" in self.runtime.features
            section = (
                "rows_subgroup" if op == "sum" and dtype == "float32" and subgroups else "rows"
            )
            groups = self.runtime.grid(outer)
        pairs = dtype == "int64" and self.int64_pairs
        if op == "max":
            combine, first = "maximum_nan(x, y)", "a[start]"
        elif pairs:
            combine, first = "add64(x, y)", "vec2<u32>(0u, 0u)"
        else:
            combine, first = "wrap(x + y)", "$T(0)"
        types = self.types[dtype]
        self._launch(
            f"reduce_{op}_{section}_{dtype}",
            [a, out],
            _u32s(outer, reduce_size, inner),
            groups,
            lambda: kernel_source("reduce.wgsl", section, types, COMBINE=combine, FIRST=first),
        )

    def reduce_sum(self, a, out, reduce_size: int) -> None:
        self._reduce("sum", a, out, out.size, reduce_size, 1)

    def reduce_max(self, a, out, reduce_size: int) -> None:
        self._reduce("max", a, out, out.size, reduce_size, 1)

    def reduce_sum_axis(self, a, out, outer: int, reduce_size: int, inner: int) -> None:
        self._reduce("sum", a, out, outer, reduce_size, inner)

    def reduce_max_axis(self, a, out, outer: int, reduce_size: int, inner: int) -> None:
        self._reduce("max", a, out, outer, reduce_size, inner)

    # ---- the module-level table ------------------------------------------------------------
    def primitive_table(self) -> dict[str, object]:
        """The names this module exports: every primitive of the table, bound to this backend
        and behind its row's dtype rules (primitives.dtype_checked)."""
        table: dict[str, object] = {
            "Array": self.Array,
            "DTYPES": self.DTYPES,
            "__device_name__": self.device_name,
        }
        for prim in primitives.TABLE.values():
            if prim.reference is not None:
                impl = self._family(prim)
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


runtime = WebGPURuntime()
backend = WebGPUBackend(runtime)
globals().update(backend.primitive_table())
memory_stats = runtime.memory_stats
empty_cache = runtime.empty_cache
capabilities = backend.capabilities


def stats() -> dict[str, int]:
    """Submissions, dispatches, buffer allocations and compiled pipelines so far."""
    return dict(runtime.counters)
