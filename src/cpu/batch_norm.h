// Batch normalisation of a compact (rows, features) array in two passes over it for the
// statistics and one to apply them (batch_norm_rows), and its gradient in one pass for the
// sums and one for dx (batch_norm_rows_grad), instead of some ten elementwise and reduction
// primitives (each a pass, most an allocation) per direction.
//
// The per-feature sums are taken in double over chunks of kNormChunk rows, each chunk by
// whichever thread, then added in chunk order: the results do not depend on the thread count.

#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "elementwise.h"
#include "half.h"
#include "simd.h"
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
// statistics, their gradients) are float32, as torch's norms keep them. One vector loop over
// each row serves float32 and both 16-bit types: simd::load widens 16 values exactly and
// simd::store rounds 16 results once, so the arithmetic, and every bit of the results, is the
// float32 kernel's on the widened arrays (the columns past the last whole vector take the same
// vector arithmetic on partial loads; the double sums take 8 columns a step and a scalar tail).
// Widening whole runs of rows into float32 scratch first made bfloat16 1.2-2x slower than
// float32 (ResNet-9's norms, batch 128: 1.06 ms a step against 0.79). float64 keeps scalar
// loops.
namespace norm {
using simd::kWidth;
using simd::load;
using simd::Vec;
using F8 = simd::Lanes<8>::F32;

// 8 values of p as 8 float lanes (exactly).
template <class X> inline F8 load8(const X *p) {
  if constexpr (std::is_same_v<X, float>) {
    F8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
  } else {
    simd::Lanes<8>::U16 h;
    std::memcpy(&h, p, sizeof h);
    return simd::widen_lanes<8>(h, X{});
  }
}

// f(tail, c, m) for each run of m columns of a row: whole vectors, then (tail: true_type)
// the last m < kWidth, loaded and stored partially (simd::load_n, store_n).
template <class F> inline void each_vector(int64_t cols, F &&f) {
  constexpr int64_t W = kWidth<float>;
  int64_t c = 0;
  for (; c + W <= cols; c += W) f(std::false_type{}, c, W);
  if (c < cols) f(std::true_type{}, c, cols - c);
}

// For each of the sums (one or two arrays of per-column double sums), sums[k][c] += the
// sum over rows [r0, r1) of term(r, c)[k] for the columns in whole runs of 8: blocks of NV
// such runs held in registers across the rows (a sum kept in memory waited on its own store
// every row: ResNet-9's (8192, 16) norm took 3x its memory time); even and odd rows in two
// sums, added at the end (with one, each row waited on the last one's add; with the apply
// passes' restrict locals, (8192, 16) went 57 -> 47 us forward, 85 -> 69 us backward).
// Returns the first column left to the caller's scalar loop.
template <int NV, int K, class Term>
inline void column_block(double *const (&sums)[K], int64_t c0, int64_t r0, int64_t r1, Term &term) {
  Vec<double> a[2][K][NV];
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < NV; ++j)
      a[0][k][j] = load(sums[k] + c0 + 8 * j), a[1][k][j] = Vec<double>{};
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2)
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < NV; ++j) {
        const auto t = term(r + h, c0 + 8 * j);
        for (int k = 0; k < K; ++k) a[h][k][j] += t[k];
      }
  for (; r < r1; ++r)
    for (int j = 0; j < NV; ++j) {
      const auto t = term(r, c0 + 8 * j);
      for (int k = 0; k < K; ++k) a[0][k][j] += t[k];
    }
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < NV; ++j) simd::store(sums[k] + c0 + 8 * j, a[0][k][j] + a[1][k][j]);
}

template <int K, class Term>
inline int64_t column_sums(double *const (&sums)[K], int64_t cols, int64_t r0, int64_t r1,
                           Term &&term) {
  int64_t c = 0;
  for (; c + 32 <= cols; c += 32) column_block<4>(sums, c, r0, r1, term);
  for (; c + 16 <= cols; c += 16) column_block<2>(sums, c, r0, r1, term);
  for (; c + 8 <= cols; c += 8) column_block<1>(sums, c, r0, r1, term);
  return c;
}

}  // namespace norm

// y = (x - mean) / sqrt(var + eps) * w + b per feature, mean and biased var over the rows.
template <class X, class P>
void batch_norm_rows(const X *x, const P *w, const P *b, X *y, P *mean_out, P *var_out,
                     int64_t rows, int64_t cols, double eps) {
  constexpr bool vector = std::is_same_v<P, float>;
  std::vector<double> mean(cols), var(cols);
  const double n = static_cast<double>(rows);
  feature_sums(rows, cols, 1, mean.data(), [&](int64_t r0, int64_t r1, double *acc) {
    int64_t c0 = 0;
    if constexpr (vector)
      c0 = norm::column_sums<1>({acc}, cols, r0, r1, [&](int64_t r, int64_t c) {
        return std::array{simd::load_as_double(x + r * cols + c)};
      });
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < cols; ++c) acc[c] += widen(x[r * cols + c]);
  });
  for (double &m : mean) m /= n;
  feature_sums(rows, cols, 1, var.data(), [&](int64_t r0, int64_t r1, double *acc) {
    int64_t c0 = 0;
    if constexpr (vector)
      c0 = norm::column_sums<1>({acc}, cols, r0, r1, [&](int64_t r, int64_t c) {
        const Vec<double> d = simd::load_as_double(x + r * cols + c) - norm::load(&mean[c]);
        return std::array{d * d};
      });
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < cols; ++c) {
        const double d = widen(x[r * cols + c]) - mean[c];
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
    // Locals, not the captured pointers: the stores through `out` could have changed those
    // for all the compiler knew, so it reloaded them for every vector (a third of the pass).
    const P *__restrict mu = mean_out, *__restrict sc = scale.data(), *__restrict bc = b;
    for (int64_t r = r0; r < r1; ++r) {
      const X *row = x + r * cols;
      X *__restrict out = y + r * cols;
      if constexpr (vector)
        norm::each_vector(cols, [&](auto tail, int64_t c, int64_t m) {
          constexpr bool T = decltype(tail)::value;
          const auto v = [&](const auto *p) { return simd::load_n<T>(p + c, m); };
          simd::store_n<T>(out + c, (v(row) - v(mu)) * v(sc) + v(bc), m);
        });
      else
        for (int64_t c = 0; c < cols; ++c) out[c] = (row[c] - mean_out[c]) * scale[c] + b[c];
    }
  });
}

// d_bias = sum dy, d_weight = sum dy xhat, dx = w inv_std (dy - d_bias / n - xhat d_weight / n)
// with xhat = (x - mean) inv_std, sums over the rows.
template <class X, class P>
void batch_norm_rows_grad(const X *dy, const X *x, const P *mean, const P *inv_std, const P *w,
                          X *dx, P *d_weight, P *d_bias, int64_t rows, int64_t cols) {
  constexpr bool vector = std::is_same_v<P, float>;
  std::vector<double> sums(2 * cols);
  feature_sums(rows, cols, 2, sums.data(), [&](int64_t r0, int64_t r1, double *acc) {
    int64_t c0 = 0;
    if constexpr (vector)
      c0 = norm::column_sums<2>({acc, acc + cols}, cols, r0, r1, [&](int64_t r, int64_t c) {
        const Vec<double> g = simd::load_as_double(dy + r * cols + c);
        const norm::F8 xhat =
            (norm::load8(x + r * cols + c) - norm::load8(mean + c)) * norm::load8(inv_std + c);
        return std::array{g, g * __builtin_convertvector(xhat, Vec<double>)};
      });
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < cols; ++c) {
        const double g = widen(dy[r * cols + c]);
        acc[c] += g;
        acc[cols + c] += g * static_cast<P>((P(widen(x[r * cols + c])) - mean[c]) * inv_std[c]);
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
    const P *__restrict mu = mean, *__restrict is = inv_std, *__restrict kc = k.data(),
                        *__restrict mbc = mb.data(), *__restrict mwc = mw.data();  // (as above)
    for (int64_t r = r0; r < r1; ++r) {
      const X *gr = dy + r * cols, *xr = x + r * cols;
      X *__restrict out = dx + r * cols;
      if constexpr (vector)
        norm::each_vector(cols, [&](auto tail, int64_t c, int64_t m) {
          constexpr bool T = decltype(tail)::value;
          const auto v = [&](const auto *p) { return simd::load_n<T>(p + c, m); };
          const Vec<float> xhat = (v(xr) - v(mu)) * v(is);
          simd::store_n<T>(out + c, v(kc) * (v(gr) - v(mbc) - xhat * v(mwc)), m);
        });
      else
        for (int64_t c = 0; c < cols; ++c) {
          const P xhat = (xr[c] - mean[c]) * inv_std[c];
          out[c] = k[c] * (gr[c] - mb[c] - xhat * mw[c]);
        }
    }
  });
}

}  // namespace cpu
}  // namespace needle
