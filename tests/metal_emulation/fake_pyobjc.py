"""Stand-ins for PyObjC's ``Metal``, ``MetalPerformanceShaders`` and ``objc``, on the emulation.

They implement exactly the calls that ndarray_backend_metal / ndarray_backend_mps make, with
the names, argument order and return conventions of PyObjC (``(result, error)`` for NSError
out-parameters), so that those host modules run unchanged on Linux: kernels execute in the
MSL emulation, MPS matrix multiplications in NumPy from the MPSMatrix descriptions. They are
strict where Metal is: one encoder at a time per command buffer, no encoding after
``endEncoding`` or ``commit``, ``waitUntilCompleted`` only after ``commit`` (a real one would
hang), MPS encoding only while no compute encoder is open, every argument a kernel reads set
since its pipeline was. What they cannot show is that PyObjC itself behaves as assumed here;
only a Mac can (tests/README.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import types

import numpy as np

from needle.emulation.metal import harness


class FakeMetalError(AssertionError):
    """Host code used the Metal API in a way Metal forbids."""


MTLResourceStorageModeShared = 0
MTLCommandBufferStatusNotEnqueued, MTLCommandBufferStatusCommitted = 0, 2
MTLCommandBufferStatusCompleted, MTLCommandBufferStatusError = 4, 5
MTLGPUFamilyApple7 = 1007


class MTLSize:
    def __init__(self, width, height, depth):
        self.width, self.height, self.depth = int(width), int(height), int(depth)

    def tuple(self):
        return (self.width, self.height, self.depth)


class _Contents:
    def __init__(self, buffer):
        self._buffer = buffer

    def as_buffer(self, count: int) -> memoryview:
        memory = self._buffer.memory
        if count > memory.nbytes:
            raise FakeMetalError(f"as_buffer({count}) past a buffer of {memory.nbytes} bytes")
        return memoryview(memory.raw[memory.start : memory.start + count])


class Buffer:
    def __init__(self, nbytes: int):
        if nbytes <= 0:
            raise FakeMetalError("newBufferWithLength_options_: Metal has no empty buffers")
        self.memory = harness.EmulatedBuffer(nbytes)

    def length(self) -> int:
        return self.memory.nbytes

    def contents(self) -> _Contents:
        return _Contents(self)


class CompileOptions:
    @classmethod
    def new(cls):
        return cls()

    def __init__(self):
        self.fast_math = True  # Metal's default

    def setFastMathEnabled_(self, enabled: bool) -> None:
        self.fast_math = bool(enabled)


MTLCompileOptions = CompileOptions


class Function:
    def __init__(self, name: str):
        self.name = name


class Library:
    def __init__(self, source: str):
        self.source = source
        self.kernels = set(harness.kernels_in(source))  # what Metal would compile from it

    def newFunctionWithName_(self, name: str) -> Function | None:
        return Function(name) if name in self.kernels else None


class Pipeline:
    def __init__(self, function: Function):
        self.function = function

    def maxTotalThreadsPerThreadgroup(self) -> int:
        return 1024

    def threadExecutionWidth(self) -> int:
        return 32


class ComputeEncoder:
    def __init__(self, command_buffer):
        self.command_buffer = command_buffer
        self.ended = False
        self.pipeline: Pipeline | None = None
        self.bindings = {}

    def _check_open(self):
        if self.ended:
            raise FakeMetalError("encoding into an encoder after endEncoding")

    def setComputePipelineState_(self, pipeline: Pipeline) -> None:
        self._check_open()
        self.pipeline = pipeline
        self.bindings = {}  # stricter than Metal: a kernel must set what it reads

    def setBuffer_offset_atIndex_(self, buffer: Buffer, offset: int, index: int) -> None:
        self._check_open()
        if not isinstance(buffer, Buffer) or not 0 <= offset <= buffer.length():
            raise FakeMetalError(f"setBuffer_offset_atIndex_({buffer!r}, {offset}, {index})")
        self.bindings[index] = ("buffer", buffer, offset)

    def setBytes_length_atIndex_(self, data, length: int, index: int) -> None:
        self._check_open()
        data = bytes(data)
        if length != len(data) or not 0 < length <= 4096:
            raise FakeMetalError(f"setBytes_length_atIndex_: {len(data)} bytes, length {length}")
        self.bindings[index] = ("bytes", data)  # copied now, as Metal does

    def dispatchThreadgroups_threadsPerThreadgroup_(self, groups: MTLSize, threads: MTLSize):
        self._check_open()
        if self.pipeline is None:
            raise FakeMetalError("dispatch without a pipeline")
        self.command_buffer.ops.append(
            (
                "kernel",
                self.pipeline.function.name,
                dict(self.bindings),
                groups.tuple(),
                threads.tuple(),
            )
        )

    def endEncoding(self) -> None:
        self._check_open()
        self.ended = True
        self.command_buffer.encoder = None


class CommandBuffer:
    def __init__(self, queue):
        self.queue = queue
        self.ops: list[tuple] = []
        self.encoder: ComputeEncoder | None = None
        self._status = MTLCommandBufferStatusNotEnqueued

    def check_encodable(self, by: str) -> None:
        if self._status != MTLCommandBufferStatusNotEnqueued:
            raise FakeMetalError(f"{by} on a committed command buffer")
        if self.encoder is not None:
            raise FakeMetalError(f"{by} while a compute encoder is still open (endEncoding first)")

    def computeCommandEncoder(self) -> ComputeEncoder:
        self.check_encodable("computeCommandEncoder")
        self.encoder = ComputeEncoder(self)
        return self.encoder

    def commit(self) -> None:
        self.check_encodable("commit")
        self._status = MTLCommandBufferStatusCommitted
        self.queue.committed.append(self)

    def waitUntilCompleted(self) -> None:
        if self._status == MTLCommandBufferStatusNotEnqueued:
            raise FakeMetalError(
                "waitUntilCompleted on a command buffer never committed (Metal would wait forever)"
            )
        self.queue.run_through(self)

    def status(self) -> int:
        return self._status

    def error(self):
        return None

    def execute(self) -> None:
        for op in self.ops:
            if op[0] == "mps":
                op[1]()
                continue
            _, kernel, bindings, groups, threads = op
            blocks, resolved = [], {}
            for index, binding in bindings.items():
                if binding[0] == "buffer":
                    memory, offset = binding[1].memory, binding[2]
                    resolved[index] = (memory.address + offset, memory.nbytes - offset)
                else:
                    block = ctypes.create_string_buffer(binding[1], len(binding[1]))
                    blocks.append(block)
                    resolved[index] = (ctypes.addressof(block), len(binding[1]))
            harness.library().launch(kernel, resolved, groups, threads)
        self._status = MTLCommandBufferStatusCompleted


class CommandQueue:
    def __init__(self):
        self.committed: list[CommandBuffer] = []

    def commandBuffer(self) -> CommandBuffer:
        return CommandBuffer(self)

    def run_through(self, command_buffer: CommandBuffer) -> None:
        """Run committed command buffers in order, up to `command_buffer`."""
        while command_buffer in self.committed:
            self.committed.pop(0).execute()


class Device:
    def __init__(self, apple7: bool = True):
        self.apple7 = apple7
        self.libraries: list[Library] = []
        self.compile_options: list[CompileOptions] = []

    def newCommandQueue(self) -> CommandQueue:
        return CommandQueue()

    def newBufferWithLength_options_(self, nbytes: int, options: int) -> Buffer:
        if options != MTLResourceStorageModeShared:
            raise FakeMetalError("needle's buffers must use shared storage")
        return Buffer(nbytes)

    def newLibraryWithSource_options_error_(self, source, options, error):
        if not isinstance(source, str) or error is not None:
            raise FakeMetalError("newLibraryWithSource_options_error_(str, options, None)")
        self.compile_options.append(options)
        library = Library(source)
        self.libraries.append(library)
        return library, None

    def newComputePipelineStateWithFunction_error_(self, function, error):
        if not isinstance(function, Function) or error is not None:
            raise FakeMetalError("newComputePipelineStateWithFunction_error_(function, None)")
        return Pipeline(function), None

    def supportsFamily_(self, family: int) -> bool:
        return self.apple7 and family == MTLGPUFamilyApple7


def metal_module(device: Device) -> types.ModuleType:
    """A fake ``Metal`` whose MTLCreateSystemDefaultDevice returns `device`."""
    module = types.ModuleType("Metal")
    for name in (
        "MTLResourceStorageModeShared",
        "MTLCommandBufferStatusCompleted",
        "MTLCommandBufferStatusError",
        "MTLGPUFamilyApple7",
        "MTLSize",
        "MTLCompileOptions",
    ):
        setattr(module, name, globals()[name])
    module.MTLCreateSystemDefaultDevice = lambda: device
    return module


def objc_module() -> types.ModuleType:
    module = types.ModuleType("objc")
    module.autorelease_pool = contextlib.nullcontext
    return module


# ---- MetalPerformanceShaders -----------------------------------------------------------------
MPSDataTypeFloat32 = 0x10000000 | 32


class _Alloc:
    @classmethod
    def alloc(cls):
        return cls.__new__(cls)


class MPSMatrixDescriptor:
    @classmethod
    def matrixDescriptorWithRows_columns_matrices_rowBytes_matrixBytes_dataType_(
        cls, rows, columns, matrices, row_bytes, matrix_bytes, data_type
    ):
        if data_type != MPSDataTypeFloat32:
            raise FakeMetalError("needle's MPS matrices are float32")
        if row_bytes % 4 or row_bytes < 4 * columns or matrix_bytes < rows * row_bytes:
            raise FakeMetalError(
                f"MPSMatrixDescriptor: {rows} x {columns}, rowBytes {row_bytes},"
                f" matrixBytes {matrix_bytes}"
            )
        descriptor = cls()
        descriptor.shape = (matrices, rows, columns, row_bytes // 4, matrix_bytes // 4)
        return descriptor


class MPSMatrix(_Alloc):
    def initWithBuffer_offset_descriptor_(self, buffer: Buffer, offset: int, descriptor):
        matrices, _rows, _columns, _row_stride, matrix_stride = descriptor.shape
        if offset % 4 or offset + 4 * matrices * matrix_stride > buffer.length():
            raise FakeMetalError(f"MPSMatrix at offset {offset} runs past its buffer")
        self.buffer, self.offset, self.shape = buffer, offset // 4, descriptor.shape
        return self

    def array(self) -> np.ndarray:
        """(matrices, rows, columns) view of the buffer's floats."""
        matrices, rows, columns, row_stride, matrix_stride = self.shape
        floats = np.frombuffer(
            self.buffer.contents().as_buffer(self.buffer.length()), dtype=np.float32
        )
        return np.lib.stride_tricks.as_strided(
            floats[self.offset :], (matrices, rows, columns), (4 * matrix_stride, 4 * row_stride, 4)
        )


class MPSMatrixMultiplication(_Alloc):
    def initWithDevice_transposeLeft_transposeRight_resultRows_resultColumns_interiorColumns_alpha_beta_(  # noqa: E501
        self, device, transpose_left, transpose_right, rows, columns, interior, alpha, beta
    ):
        self.transposes = (bool(transpose_left), bool(transpose_right))
        self.shape = (rows, columns, interior)
        self.alpha, self.beta = alpha, beta
        self.batch_start, self.batch_size = 0, None
        return self

    def setBatchStart_(self, start: int) -> None:
        self.batch_start = start

    def setBatchSize_(self, size: int) -> None:
        self.batch_size = size

    def encodeToCommandBuffer_leftMatrix_rightMatrix_resultMatrix_(
        self, command_buffer, left, right, result
    ):
        command_buffer.check_encodable("an MPS kernel")
        start, size = self.batch_start, self.batch_size
        rows, columns, interior = self.shape
        transpose_left, transpose_right = self.transposes
        alpha, beta = self.alpha, self.beta

        def run():
            a = left.array()[start : start + size]
            b = right.array()[start : start + size]
            a = a.transpose(0, 2, 1) if transpose_left else a
            b = b.transpose(0, 2, 1) if transpose_right else b
            if a.shape[1:] != (rows, interior) or b.shape[1:] != (interior, columns):
                raise FakeMetalError(
                    f"MPS matmul of {a.shape} and {b.shape}, expected "
                    f"({rows}, {interior}) @ ({interior}, {columns})"
                )
            out = result.array()[start : start + size]
            product = alpha * np.matmul(a, b)
            out[...] = product if beta == 0 else product + beta * out  # BLAS: beta 0 ignores C

        command_buffer.ops.append(("mps", run))


def mps_module() -> types.ModuleType:
    module = types.ModuleType("MetalPerformanceShaders")
    for name in (
        "MPSDataTypeFloat32",
        "MPSMatrixDescriptor",
        "MPSMatrix",
        "MPSMatrixMultiplication",
    ):
        setattr(module, name, globals()[name])
    module.MPSSupportsMTLDevice = lambda device: isinstance(device, Device)
    return module
