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
#include <type_traits>
#include <vector>

#include "convert.h"
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

// The (rows, cols) arrays may hold float16 or bfloat16 while the per-feature ones (weights,
// statistics, their gradients) are float32, as torch's norms keep them: each run of rows is then
// widened into float32 scratch first (exactly) and each result rounded once at the store, so
// the arithmetic, and every bit of the results, is the float32 kernel's on the widened arrays.
// Without this NDArray converted the whole arrays around the float32 rows: five passes over a
// ResNet-9 activation per norm, 35% of a bfloat16 step.

// Rows [r0, r1) of x as P values: x itself when it holds P, else widened into `scratch`.
template <class P, class X>
const P *rows_of(const X *x, int64_t r0, int64_t r1, int64_t cols, std::vector<P> &scratch) {
  if constexpr (std::is_same_v<X, P>) {
    return x + r0 * cols;
  } else {
    scratch.resize((r1 - r0) * cols);
    to_float(x + r0 * cols, scratch.data(), (r1 - r0) * cols);
    return scratch.data();
  }
}

// body(r0, r1, out rows as P) over row chunks of the rows [r0, r1) a thread has, then those
// rows of `out` rounded from scratch when it does not hold P.
template <class P, class X, class Body>
void write_rows(X *out, int64_t r0, int64_t r1, int64_t cols, Body &&body) {
  if constexpr (std::is_same_v<X, P>) {
    body(r0, r1, out + r0 * cols);
  } else {
    thread_local std::vector<P> scratch;
    for (int64_t q = r0; q < r1; q += kNormChunk) {
      const int64_t q1 = std::min(r1, q + kNormChunk);
      scratch.resize((q1 - q) * cols);
      body(q, q1, scratch.data());
      from_float(scratch.data(), out + q * cols, (q1 - q) * cols);
    }
  }
}

// y = (x - mean) / sqrt(var + eps) * w + b per feature, mean and biased var over the rows.
template <class X, class P>
void batch_norm_rows(const X *x, const P *w, const P *b, X *y, P *mean_out, P *var_out,
                     int64_t rows, int64_t cols, double eps) {
  std::vector<double> mean(cols), var(cols);
  const double n = static_cast<double>(rows);
  feature_sums(rows, cols, 1, mean.data(), [&](int64_t r0, int64_t r1, double *acc) {
    thread_local std::vector<P> scratch;
    const P *xs = rows_of<P>(x, r0, r1, cols, scratch);
    for (int64_t r = 0; r < r1 - r0; ++r)
      for (int64_t c = 0; c < cols; ++c) acc[c] += xs[r * cols + c];
  });
  for (double &m : mean) m /= n;
  feature_sums(rows, cols, 1, var.data(), [&](int64_t r0, int64_t r1, double *acc) {
    thread_local std::vector<P> scratch;
    const P *xs = rows_of<P>(x, r0, r1, cols, scratch);
    for (int64_t r = 0; r < r1 - r0; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const double d = xs[r * cols + c] - mean[c];
        acc[c] += d * d;
      }
  });
  std::vector<P> scale(cols);
  for (int64_t c = 0; c < cols; ++c) {
    var[c] /= n;
    const double s = w[c] / std::sqrt(var[c] + eps);
    scale[c] = static_cast<P>(s);
    mean_out[c] = static_cast<P>(mean[c]);
    var_out[c] = static_cast<P>(var[c]);
  }
  each_rows(rows, cols, [&](int64_t r0, int64_t r1) {
    write_rows<P>(y, r0, r1, cols, [&](int64_t q0, int64_t q1, P *ys) {
      thread_local std::vector<P> scratch;
      const P *xs = rows_of<P>(x, q0, q1, cols, scratch);
      for (int64_t r = 0; r < q1 - q0; ++r)
        for (int64_t c = 0; c < cols; ++c)
          ys[r * cols + c] = (xs[r * cols + c] - mean_out[c]) * scale[c] + b[c];
    });
  });
}

// d_bias = sum dy, d_weight = sum dy xhat, dx = w inv_std (dy - d_bias / n - xhat d_weight / n)
// with xhat = (x - mean) inv_std, sums over the rows.
template <class X, class P>
void batch_norm_rows_grad(const X *dy, const X *x, const P *mean, const P *inv_std, const P *w,
                          X *dx, P *d_weight, P *d_bias, int64_t rows, int64_t cols) {
  std::vector<double> sums(2 * cols);
  feature_sums(rows, cols, 2, sums.data(), [&](int64_t r0, int64_t r1, double *acc) {
    thread_local std::vector<P> gbuf, xbuf;
    const P *gs = rows_of<P>(dy, r0, r1, cols, gbuf), *xs = rows_of<P>(x, r0, r1, cols, xbuf);
    for (int64_t r = 0; r < r1 - r0; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const double g = gs[r * cols + c];
        acc[c] += g;
        acc[cols + c] += g * ((xs[r * cols + c] - mean[c]) * inv_std[c]);
      }
  });
  const double n = static_cast<double>(rows);
  std::vector<P> k(cols), mb(cols), mw(cols);
  for (int64_t c = 0; c < cols; ++c) {
    d_bias[c] = static_cast<P>(sums[c]);
    d_weight[c] = static_cast<P>(sums[cols + c]);
    k[c] = w[c] * inv_std[c];
    mb[c] = static_cast<P>(sums[c] / n);
    mw[c] = static_cast<P>(sums[cols + c] / n);
  }
  each_rows(rows, cols, [&](int64_t r0, int64_t r1) {
    write_rows<P>(dx, r0, r1, cols, [&](int64_t q0, int64_t q1, P *out) {
      thread_local std::vector<P> gbuf, xbuf;
      const P *gs = rows_of<P>(dy, q0, q1, cols, gbuf), *xs = rows_of<P>(x, q0, q1, cols, xbuf);
      for (int64_t r = 0; r < q1 - q0; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const P xhat = (xs[r * cols + c] - mean[c]) * inv_std[c];
          out[r * cols + c] = k[c] * (gs[r * cols + c] - mb[c] - xhat * mw[c]);
        }
    });
  });
}

}  // namespace cpu
}  // namespace needle
