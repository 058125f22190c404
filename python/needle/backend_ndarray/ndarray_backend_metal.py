"""The Metal backend: needle's MSL kernels (``metal/*.metal``) on an Apple GPU, through PyObjC.

macOS only, with ``pip install "needle[metal]"`` (pyobjc-framework-Metal). Elsewhere, or on a
Mac without a Metal GPU, importing this module raises ImportError and ``ndl.metal().enabled()``
is False. Dtypes float32, float16, int32, int64, uint8 and bool (MSL float, half, int, long,
uchar, bool): no float64, as Apple GPUs have no double precision, and no bfloat16 (MSL's bfloat
needs Metal 3.1). float16 is stored, converted and multiplied (float32 sums); the rows that
compute take float32, to which NDArray converts it.

This file is the part that only a Mac runs: the device, one command queue, the kernel
libraries (compiled from source at first use, then one pipeline per kernel, cached), and one
open command buffer into which kernels are encoded back to back. Which kernel a primitive
runs, with which buffers and grid, is decided in ``metal_primitives``, which the tests run on
Linux through a CPU emulation of the same kernels (tests/metal_emulation).

Buffers use shared storage, so ``to_numpy`` / ``from_numpy`` are single copies through the
CPU's view of GPU memory. Nothing waits for the GPU until ``synchronize()``, or until the CPU
reads or writes an array that an unfinished kernel uses.
"""

from __future__ import annotations

import ctypes
import sys
import warnings
from typing import Any

from .metal_primitives import (
    CORE_SOURCES,
    SIMDGROUP_KERNELS,
    SIMDGROUP_SOURCES,
    MetalBackend,
    kernel_source,
)


def _on_macos() -> bool:
    # A call rather than `sys.platform != "darwin"` at module level, which type checkers on
    # other systems would take as making the rest of this module unreachable (unchecked).
    return sys.platform == "darwin"


if not _on_macos():
    raise ImportError("needle's metal backend needs macOS")
try:
    import Metal
    import objc
except ImportError as _error:
    raise ImportError(
        f"needle's metal backend needs pyobjc-framework-Metal ({_error}); "
        'install it with pip install "needle[metal]"'
    ) from _error

# Kernels encoded into one command buffer before it is committed (without waiting), so that the
# GPU starts on a long sequence while Python is still encoding the rest of it.
KERNELS_PER_COMMAND_BUFFER = 64


def _describe(error) -> str:
    return str(error.localizedDescription()) if error is not None else "no error message"


class MetalRuntime:
    """The device, its command queue, the compiled kernels and the open command buffer."""

    def __init__(self) -> None:
        device = Metal.MTLCreateSystemDefaultDevice()
        if device is None:
            raise ImportError("needle's metal backend: this Mac has no Metal device")
        self.device = device
        self.queue = device.newCommandQueue()
        # PyObjC objects (libraries, pipelines, command buffers, the encoder) are untyped: Any.
        self._libraries: dict[str, Any] = {}
        self._pipelines: dict[str, Any] = {}
        self._matmul_kernels: tuple[str, ...] | None = None
        self._command_buffer: Any = None
        self._encoder: Any = None
        self._encoded = 0
        self._in_flight: list[Any] = []  # committed command buffers not yet waited for
        self.batch, self.completed = 0, -1  # kept by metal_primitives.MetalBackend

    # ---- memory ---------------------------------------------------------------------------
    def allocate(self, nbytes: int):
        buffer = self.device.newBufferWithLength_options_(
            nbytes, Metal.MTLResourceStorageModeShared
        )
        if buffer is None:
            raise MemoryError(f"metal: cannot allocate a buffer of {nbytes} bytes")
        return buffer

    def host_view(self, buffer, nbytes: int) -> memoryview:
        return buffer.contents().as_buffer(nbytes)

    def address(self, buffer) -> int:
        try:
            return ctypes.addressof(ctypes.c_char.from_buffer(buffer.contents().as_buffer(1)))
        except TypeError:  # a read-only view: no address to give, but ptr() must be unique
            return id(buffer)

    # ---- kernels ----------------------------------------------------------------------------
    def _library(self, name: str):
        library = self._libraries.get(name)
        if library is None:
            files = SIMDGROUP_SOURCES if name == "simdgroup" else CORE_SOURCES
            options = Metal.MTLCompileOptions.new()
            # Fast math assumes no NaN or inf; needle's results must match NumPy's on them.
            options.setFastMathEnabled_(False)
            library, error = self.device.newLibraryWithSource_options_error_(
                kernel_source(files), options, None
            )
            if library is None:
                raise RuntimeError(
                    f"metal: compiling {', '.join(files)} failed: {_describe(error)}"
                )
            self._libraries[name] = library
        return library

    def pipeline(self, kernel: str):
        """The compute pipeline of `kernel`, created at its first use."""
        pipeline = self._pipelines.get(kernel)
        if pipeline is None:
            library = self._library("simdgroup" if kernel in SIMDGROUP_KERNELS else "core")
            function = library.newFunctionWithName_(kernel)
            if function is None:
                raise RuntimeError(f"metal: the kernel library has no kernel {kernel}")
            pipeline, error = self.device.newComputePipelineStateWithFunction_error_(function, None)
            if pipeline is None:
                raise RuntimeError(
                    f"metal: cannot create the pipeline of {kernel}: {_describe(error)}"
                )
            self._pipelines[kernel] = pipeline
        return pipeline

    def matmul_kernels(self) -> tuple[str, ...]:
        """matmul_simdgroup first where the GPU has simdgroup_matrix (Apple7: M1 and later)."""
        if self._matmul_kernels is None:
            kernels = ["matmul_threadgroup"]
            family = getattr(Metal, "MTLGPUFamilyApple7", None)
            if family is not None and self.device.supportsFamily_(family):
                try:
                    self.pipeline("matmul_simdgroup_float32")
                    kernels.insert(0, "matmul_simdgroup")
                except RuntimeError as error:
                    warnings.warn(
                        f"metal: using the threadgroup matmul kernel ({error})",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            self._matmul_kernels = tuple(kernels)
        return self._matmul_kernels

    # ---- command buffers --------------------------------------------------------------------
    def command_buffer(self):
        """The open command buffer (created when needed)."""
        if self._command_buffer is None:
            self._command_buffer = self.queue.commandBuffer()
        return self._command_buffer

    def _end_encoder(self) -> None:
        if self._encoder is not None:
            self._encoder.endEncoding()
            self._encoder = None

    def _count_encoded(self) -> None:
        self._encoded += 1
        if self._encoded >= KERNELS_PER_COMMAND_BUFFER:
            self.commit()

    def dispatch(self, kernel: str, buffers, constants, threadgroups, threads) -> None:
        """Encode one kernel launch into the open command buffer; no waiting."""
        pipeline = self.pipeline(kernel)
        per_group = threads[0] * threads[1] * threads[2]
        if per_group > pipeline.maxTotalThreadsPerThreadgroup():
            raise RuntimeError(
                f"metal: {kernel} needs {per_group} threads per threadgroup, this GPU runs it "
                f"with at most {pipeline.maxTotalThreadsPerThreadgroup()}"
            )
        with objc.autorelease_pool():
            if self._encoder is None:
                # Serial dispatch (the default): each launch sees the writes of the previous.
                self._encoder = self.command_buffer().computeCommandEncoder()
            encoder = self._encoder
            encoder.setComputePipelineState_(pipeline)
            for index, buffer, offset in buffers:
                encoder.setBuffer_offset_atIndex_(buffer, offset, index)
            for index, data in constants:
                encoder.setBytes_length_atIndex_(data, len(data), index)
            encoder.dispatchThreadgroups_threadsPerThreadgroup_(
                Metal.MTLSize(*threadgroups), Metal.MTLSize(*threads)
            )
        self._count_encoded()

    def encode_with(self, encode) -> None:
        """Let `encode(command_buffer)` encode work of its own (an MPS kernel) in order."""
        with objc.autorelease_pool():
            self._end_encoder()
            encode(self.command_buffer())
        self._count_encoded()

    def commit(self) -> None:
        """Submit the open command buffer without waiting."""
        self._end_encoder()
        if self._command_buffer is not None:
            self._command_buffer.commit()
            self._in_flight.append(self._command_buffer)
            self._command_buffer = None
            self._encoded = 0
            if len(self._in_flight) > 32:  # forget finished ones, reporting failures
                self._check([cb for cb in self._in_flight[:-1] if _finished(cb)])
                self._in_flight = [cb for cb in self._in_flight if not _finished(cb)]

    def wait(self) -> None:
        """Submit the open command buffer and wait until everything submitted has run."""
        self.commit()
        in_flight, self._in_flight = self._in_flight, []
        for command_buffer in in_flight:
            command_buffer.waitUntilCompleted()
        self._check(in_flight)

    @staticmethod
    def _check(command_buffers) -> None:
        for command_buffer in command_buffers:
            if command_buffer.status() == Metal.MTLCommandBufferStatusError:
                raise RuntimeError(
                    f"metal: a command buffer failed: {_describe(command_buffer.error())}"
                )


def _finished(command_buffer) -> bool:
    return command_buffer.status() in (
        Metal.MTLCommandBufferStatusCompleted,
        Metal.MTLCommandBufferStatusError,
    )


runtime = MetalRuntime()
backend = MetalBackend(runtime, "metal")
# The primitive table (Array, to_numpy, from_numpy, fill, compact, ewise_add, ..., synchronize):
# the names and parameters of primitives.TABLE, bound to this backend.
globals().update(backend.primitive_table())
