// Packed, cache-blocked, multi-threaded matrix multiplication (GEMM) in the BLIS style.

#pragma once

#include <cstdint>

#include "half.h"

namespace needle {
namespace cpu {

// A (batch, rows, cols) view of a buffer: element (b, i, j) is data[b*batch + i*row + j*col].
// Strides are in elements and non-negative; 0 broadcasts (a batch-broadcast operand).
template <class T> struct MatrixView {
  const T *data;
  int64_t batch_stride, row_stride, col_stride;
};

// out[b] = a[b] @ b[b] for b < batch, with a[b] (m, n), b[b] (n, p) and out compact
// (batch, m, p). Operands are read through their strides by the packing routines, so
// transposed and broadcast views need no copy. The result does not depend on the thread
// count: every output element is summed in the same order.
template <class T>
void gemm(int64_t batch, int64_t m, int64_t n, int64_t p, MatrixView<T> a, MatrixView<T> b, T *out);

extern template void gemm<float>(int64_t, int64_t, int64_t, int64_t, MatrixView<float>,
                                 MatrixView<float>, float *);
extern template void gemm<double>(int64_t, int64_t, int64_t, int64_t, MatrixView<double>,
                                  MatrixView<double>, double *);
// float16 and bfloat16: products summed in float32, each output rounded once.
extern template void gemm<Float16>(int64_t, int64_t, int64_t, int64_t, MatrixView<Float16>,
                                   MatrixView<Float16>, Float16 *);
extern template void gemm<BFloat16>(int64_t, int64_t, int64_t, int64_t, MatrixView<BFloat16>,
                                    MatrixView<BFloat16>, BFloat16 *);
// The same products of 16-bit operands into a float32 out, not rounded.
template <class T>
void gemm_wide(int64_t batch, int64_t m, int64_t n, int64_t p, MatrixView<T> a, MatrixView<T> b,
               float *out);

// The instruction set the micro-kernel was compiled for ("avx512", "avx2", "portable").
const char *gemm_isa();
// What bfloat16 products run on: "avx512_bf16" (vdpbf16ps, when the CPU has it and
// NEEDLE_GEMM_BF16 is not 0) or "float32" (the float32 kernel, panels converted).
const char *gemm_bf16_kernel();

// The blocking of gemm<T> (see gemm_kernel.h): micro-tile MR x NR, depth block KC, column
// block NC, row block MC. For tests that aim at block edges, and for benchmark reports.
struct GemmBlocking { int64_t mr, nr, kc, nc, mc; };
template <class T> GemmBlocking gemm_blocking();
extern template GemmBlocking gemm_blocking<float>();
extern template GemmBlocking gemm_blocking<double>();
extern template GemmBlocking gemm_blocking<BFloat16>();

}  // namespace cpu
}  // namespace needle
