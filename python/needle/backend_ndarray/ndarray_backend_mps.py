"""The MPS backend: matmul on Metal Performance Shaders, everything else on needle's MSL kernels.

macOS only, with ``pip install "needle[metal]"`` (pyobjc-framework-MetalPerformanceShaders);
elsewhere importing this module raises ImportError and ``ndl.mps().enabled()`` is False.

``matmul``, ``batched_matmul``, ``matmul_strided`` (and so the table's ``matmul_tiled``) run as
``MPSMatrixMultiplication``, Apple's tuned GEMM, encoded into the same command buffer as the
MSL kernels (it shares the metal backend's device, queue and open command buffer). Operands
go in place, as MPS matrices with a row stride, transposed when a view is unit-stride down its
columns; views MPS cannot describe (broadcast rows or batches) use the MSL matmul kernel.
float16 matmuls run on the MSL kernel too: the matmul rows sum in float32, and
MPSMatrixMultiplication's documentation does not say in what precision it sums float16
operands (which only a Mac could measure). The rest of the table, every
dtype included, is the metal backend's: MPS offers nothing for strided copies, and its
elementwise filters (MPSMatrixNeuron, ...) cover only some of needle's ops and are no faster
on memory-bound work than the MSL kernels.
"""

from __future__ import annotations

from collections import OrderedDict

from . import ndarray_backend_metal as _metal  # ImportError off macOS, as intended

try:
    import MetalPerformanceShaders as MPS
except ImportError as _error:
    raise ImportError(
        f"needle's mps backend needs pyobjc-framework-MetalPerformanceShaders ({_error}); "
        'install it with pip install "needle[metal]"'
    ) from _error

from .metal_primitives import MetalArray, MetalBackend, MPSMatrixLayout, mps_matrix_layout
from .primitives import StridedMatmul

if not MPS.MPSSupportsMTLDevice(_metal.runtime.device):
    raise ImportError("needle's mps backend: Metal Performance Shaders do not support this GPU")

# MPSMatrixMultiplication objects kept for reuse, keyed by shape and transposes.
MATMUL_CACHE_SIZE = 256


class MPSBackend(MetalBackend):
    """The metal primitive table with matmul on MPSMatrixMultiplication."""

    def __init__(self, runtime, device_name: str):
        super().__init__(runtime, device_name)
        self._matmuls: OrderedDict[tuple, object] = OrderedDict()

    def _kernel(self, transpose_left: bool, transpose_right: bool, m: int, n: int, p: int):
        key = (transpose_left, transpose_right, m, n, p)
        kernel = self._matmuls.get(key)
        if kernel is None:
            kernel = MPS.MPSMatrixMultiplication.alloc().initWithDevice_transposeLeft_transposeRight_resultRows_resultColumns_interiorColumns_alpha_beta_(  # noqa: E501
                self.runtime.device, transpose_left, transpose_right, m, p, n, 1.0, 0.0
            )
            self._matmuls[key] = kernel
            if len(self._matmuls) > MATMUL_CACHE_SIZE:
                self._matmuls.popitem(last=False)
        else:
            self._matmuls.move_to_end(key)
        return kernel

    @staticmethod
    def _matrix(array, layout: MPSMatrixLayout, batch: int):
        descriptor = MPS.MPSMatrixDescriptor.matrixDescriptorWithRows_columns_matrices_rowBytes_matrixBytes_dataType_(  # noqa: E501
            layout.rows,
            layout.columns,
            batch,
            layout.row_bytes,
            layout.matrix_bytes,
            MPS.MPSDataTypeFloat32,
        )
        return MPS.MPSMatrix.alloc().initWithBuffer_offset_descriptor_(
            array.buffer, layout.offset_bytes, descriptor
        )

    def _matmul(self, a: MetalArray, b: MetalArray, out: MetalArray, views: StridedMatmul) -> None:
        """Every matmul primitive, on MPS where it can read the operands in place."""
        views.check(self.device_name, a.size, b.size, out.size)
        batch, m, n, p = views[:4]
        if batch * m * p == 0:
            return
        left = mps_matrix_layout(batch, m, n, views.a_offset, views.a_strides, a.size)
        right = mps_matrix_layout(batch, n, p, views.b_offset, views.b_strides, b.size)
        if n == 0 or left is None or right is None or a.dtype != "float32":
            super()._matmul(a, b, out, views)
            return
        result = MPSMatrixLayout(m, p, 4 * p, 4 * m * p, 0, False)
        kernel = self._kernel(left.transposed, right.transposed, m, n, p)
        kernel.setBatchStart_(0)
        kernel.setBatchSize_(batch)
        matrices = (
            self._matrix(a, left, batch),
            self._matrix(b, right, batch),
            self._matrix(out, result, batch),
        )
        for array in (a, b, out):
            array.last_batch = self.runtime.batch
        self.runtime.encode_with(
            lambda command_buffer: (
                kernel.encodeToCommandBuffer_leftMatrix_rightMatrix_resultMatrix_(
                    command_buffer, *matrices
                )
            )
        )


backend = MPSBackend(_metal.runtime, "mps")
# The primitive table, as in ndarray_backend_metal, bound to the MPS backend.
globals().update(backend.primitive_table())
