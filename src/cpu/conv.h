// 2-D convolution as implicit GEMM: GEMM panels are packed straight from the NHWC input (or
// the adjoint), so no im2col matrix is materialised and no padding is copied.

#pragma once

#include <cstdint>

#include "half.h"  // Compute<T>

namespace needle {
namespace cpu {

// An NHWC input (n, h, w, c_in), weights (kh, kw, c_in, c_out), stride and zero padding on
// every side; the output is (n, out_h(), out_w(), c_out). The caller checks every size.
// T is float, double, Float16 or BFloat16 (16-bit: sums in float32, each output rounded once;
// the weight gradient's left in float32).
struct ConvShape {
  int64_t n, h, w, c_in, kh, kw, c_out, stride, pad;
  int64_t out_h() const { return (h + 2 * pad - kh) / stride + 1; }
  int64_t out_w() const { return (w + 2 * pad - kw) / stride + 1; }
};

// out = conv(x, w).
template <class T> void conv2d(const ConvShape &s, const T *x, const T *w, T *out);
// dx = d conv(x, w) / dx for the adjoint g (n, out_h, out_w, c_out).
template <class T> void conv2d_input_grad(const ConvShape &s, const T *g, const T *w, T *dx);
// dw = d conv(x, w) / dw for the adjoint g; for 16-bit T the float32 sums, not rounded.
template <class T>
void conv2d_weight_grad(const ConvShape &s, const T *x, const T *g, Compute<T> *dw);

// A conv's bias: out (rows, cols) += bias on every row, and d_bias = the rows of g summed (in
// double). P is T, or float for 16-bit T (widened, added, rounded once more).
template <class T, class P> void add_bias_rows(T *out, const P *bias, int64_t rows, int64_t cols);
template <class T, class P> void bias_gradient(const T *g, P *d_bias, int64_t rows, int64_t cols);

}  // namespace cpu
}  // namespace needle
