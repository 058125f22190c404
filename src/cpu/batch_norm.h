// Batch normalisation of a compact (rows, features) array in two passes over it for the
// statistics and one to apply them (batch_norm_rows), and its gradient in one pass for the
// sums and one for dx (batch_norm_rows_grad), instead of some ten elementwise and reduction
// primitives (each a pass, most an allocation) per direction.
//
// The per-feature sums are taken in double over chunks of kNormChunk rows, each chunk by
// whichever thread, then added in chunk order: the results do not depend on the thread count.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "elementwise.h"
#include "thread_pool.h"

namespace needle {
namespace cpu {

constexpr int64_t kNormChunk = 256;

// sums[0, width * cols) = the sum over row chunks of body(r0, r1, partial), which adds rows
// [r0, r1) into its partial sums (width of them per feature).
template <class Body>
void feature_sums(int64_t rows, int64_t cols, int width, double *sums, Body &&body) {
  const int64_t chunks = (rows + kNormChunk - 1) / kNormChunk, stride = width * cols;
  std::vector<double> partial(chunks * stride, 0.0);
  parallel(threads_for(rows * cols, kMinElementsPerThread), [&](int t, int n) {
    const Range mine = split_range(chunks, t, n);
    for (int64_t c = mine.begin; c < mine.end; ++c)
      body(c * kNormChunk, std::min(rows, (c + 1) * kNormChunk), partial.data() + c * stride);
  });
  std::fill(sums, sums + stride, 0.0);
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t i = 0; i < stride; ++i) sums[i] += partial[c * stride + i];
}

// body(r0, r1) over the rows, split across threads.
template <class Body> void each_rows(int64_t rows, int64_t cols, Body &&body) {
  parallel(threads_for(rows * cols, kMinElementsPerThread), [&](int t, int n) {
    const Range mine = split_range(rows, t, n);
    if (mine.begin < mine.end) body(mine.begin, mine.end);
  });
}

// y = (x - mean) / sqrt(var + eps) * w + b per feature, mean and biased var over the rows.
template <class T>
void batch_norm_rows(const T *x, const T *w, const T *b, T *y, T *mean_out, T *var_out,
                     int64_t rows, int64_t cols, double eps) {
  std::vector<double> mean(cols), var(cols);
  const double n = static_cast<double>(rows);
  feature_sums(rows, cols, 1, mean.data(), [&](int64_t r0, int64_t r1, double *acc) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < cols; ++c) acc[c] += x[r * cols + c];
  });
  for (double &m : mean) m /= n;
  feature_sums(rows, cols, 1, var.data(), [&](int64_t r0, int64_t r1, double *acc) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const double d = x[r * cols + c] - mean[c];
        acc[c] += d * d;
      }
  });
  std::vector<T> scale(cols);
  for (int64_t c = 0; c < cols; ++c) {
    var[c] /= n;
    const double s = w[c] / std::sqrt(var[c] + eps);
    scale[c] = static_cast<T>(s);
    mean_out[c] = static_cast<T>(mean[c]);
    var_out[c] = static_cast<T>(var[c]);
  }
  each_rows(rows, cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < cols; ++c)
        y[r * cols + c] = (x[r * cols + c] - mean_out[c]) * scale[c] + b[c];
  });
}

// d_bias = sum dy, d_weight = sum dy xhat, dx = w inv_std (dy - d_bias / n - xhat d_weight / n)
// with xhat = (x - mean) inv_std, sums over the rows.
template <class T>
void batch_norm_rows_grad(const T *dy, const T *x, const T *mean, const T *inv_std, const T *w,
                          T *dx, T *d_weight, T *d_bias, int64_t rows, int64_t cols) {
  std::vector<double> sums(2 * cols);
  feature_sums(rows, cols, 2, sums.data(), [&](int64_t r0, int64_t r1, double *acc) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const double g = dy[r * cols + c];
        acc[c] += g;
        acc[cols + c] += g * ((x[r * cols + c] - mean[c]) * inv_std[c]);
      }
  });
  const double n = static_cast<double>(rows);
  std::vector<T> k(cols), mb(cols), mw(cols);
  for (int64_t c = 0; c < cols; ++c) {
    d_bias[c] = static_cast<T>(sums[c]);
    d_weight[c] = static_cast<T>(sums[cols + c]);
    k[c] = w[c] * inv_std[c];
    mb[c] = static_cast<T>(sums[c] / n);
    mw[c] = static_cast<T>(sums[cols + c] / n);
  }
  each_rows(rows, cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const T xhat = (x[r * cols + c] - mean[c]) * inv_std[c];
        dx[r * cols + c] = k[c] * (dy[r * cols + c] - mb[c] - xhat * mw[c]);
      }
  });
}

}  // namespace cpu
}  // namespace needle
