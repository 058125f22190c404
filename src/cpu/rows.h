// Row kernels of the fused optional primitives (softmax_rows, ...): each row of a compact
// (rows, cols) array is handled by one thread, in L1 while its passes run, instead of one
// full-array pass per elementwise step.

#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "convert.h"
#include "elementwise.h"
#include "simd.h"
#include "thread_pool.h"
#include "vector_math.h"

namespace needle {
namespace cpu {

inline Vec<float> vexp(Vec<float> x) { return vmath::exp(x); }
inline Vec<double> vexp(Vec<double> x) {
  return simd::per_lane<double>(x, [](double v) { return std::exp(v); });
}

// The lanes of x[i, i + n), n <= the width; the rest `fill`.
template <class T> inline Vec<T> load_tail(const T *x, int64_t n, T fill) {
  Vec<T> v = simd::splat(fill);
  std::memcpy(&v, x, n * sizeof(T));
  return v;
}

template <class T> T horizontal_max(Vec<T> v) {
  T m = v[0];
  for (int l = 1; l < simd::kWidth<T>; ++l) m = max_nan(m, v[l]);
  return m;
}

// body(first row, end row) over `rows` rows of `cols` elements, split across threads.
template <class Body> void parallel_rows(int64_t rows, int64_t cols, Body &&body) {
  const int threads = threads_for(rows * cols, kMinElementsPerThread);
  if (threads <= 1 || rows < 2) return body(int64_t{0}, rows);
  parallel(threads, [&](int t, int nt) {
    const Range r = split_range(rows, t, nt);
    if (r.begin < r.end) body(r.begin, r.end);
  });
}

// The max m of a row and sum(exp(x - m)); with a non-null e, exp(x - m) written there too.
// Shared by softmax_row and cross_entropy_row.
template <class T> std::pair<T, T> max_and_exp_sum(const T *x, T *e_out, int64_t n) {
  constexpr int W = simd::kWidth<T>;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const int64_t whole = n / W * W, tail = n - whole;
  Vec<T> mv = simd::splat(kNegInf);
  for (int64_t i = 0; i < whole; i += W) mv = simd::max_nan<T>(mv, simd::load(x + i));
  if (tail) mv = simd::max_nan<T>(mv, load_tail(x + whole, tail, kNegInf));
  const T m = horizontal_max<T>(mv);
  Vec<T> acc{};
  for (int64_t i = 0; i < whole; i += W) {
    const Vec<T> e = vexp(simd::load(x + i) - m);
    if (e_out) simd::store(e_out + i, e);
    acc += e;
  }
  if (tail) {
    // -inf lanes past the row give e = 0 (unless m is NaN or inf, then the row is NaN anyway).
    const Vec<T> e = vexp(load_tail(x + whole, tail, kNegInf) - m);
    if (e_out) simd::store_partial(e_out + whole, e, tail);
    acc += e;
  }
  T sum = 0;
  for (int l = 0; l < W; ++l) sum += acc[l];
  return {m, sum};
}

// One row of softmax (log: log_softmax): m = max, e = exp(x - m), y = e / sum e or
// (x - m) - log sum e. The same formula as the NumPy reference, NaN and infinities included.
template <class T> void softmax_row(const T *x, T *y, int64_t n, bool log) {
  constexpr int W = simd::kWidth<T>;
  const int64_t whole = n / W * W;
  const auto [m, sum] = max_and_exp_sum(x, log ? nullptr : y, n);
  if (log) {
    const T ls = std::log(sum);
    for (int64_t i = 0; i < whole; i += W) simd::store(y + i, (simd::load(x + i) - m) - ls);
    for (int64_t i = whole; i < n; ++i) y[i] = (x[i] - m) - ls;
    return;
  }
  const T scale = T(1) / sum;
  for (int64_t i = 0; i < whole; i += W) simd::store(y + i, simd::load(y + i) * scale);
  for (int64_t i = whole; i < n; ++i) y[i] *= scale;
}

// One row of layer_norm: y = (x - mean) / sqrt(var + eps), var the biased variance, both
// summed in double (as the sum rows do), so a float32 row's statistics are exact to the bit.
template <class T> void layer_norm_row(const T *x, T *y, int64_t n, double eps) {
  constexpr int W = simd::kWidth<double>;
  const int64_t whole = n / W * W;
  Vec<double> acc{};
  for (int64_t i = 0; i < whole; i += W) acc += simd::load_as_double(x + i);
  double sum = 0;
  for (int64_t i = whole; i < n; ++i) sum += x[i];
  for (int l = 0; l < W; ++l) sum += acc[l];
  const double mean = sum / n;
  Vec<double> sq{};
  for (int64_t i = 0; i < whole; i += W) {
    const Vec<double> c = simd::load_as_double(x + i) - mean;
    sq += c * c;
  }
  double var = 0;
  for (int64_t i = whole; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  for (int l = 0; l < W; ++l) var += sq[l];
  const T m = static_cast<T>(mean), r = static_cast<T>(1 / std::sqrt(var / n + eps));
  constexpr int WT = simd::kWidth<T>;
  const int64_t whole_t = n / WT * WT;
  for (int64_t i = 0; i < whole_t; i += WT) simd::store(y + i, (simd::load(x + i) - m) * r);
  for (int64_t i = whole_t; i < n; ++i) y[i] = (x[i] - m) * r;
}

template <class T>
void layer_norm_each_row(const T *a, T *out, int64_t rows, int64_t cols, double eps) {
  parallel_rows(rows, cols, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) layer_norm_row(a + r * cols, out + r * cols, cols, eps);
  });
}

// One row of layer_norm's adjoint: dx = rstd * (g - mean(g) - y * mean(g * y)), y the
// normalised row, its statistics recomputed here (summed in double, as layer_norm_row) rather
// than saved: four passes over a row in L1 instead of ten array passes of Tensor ops (2.9x
// torch). Double lanes with one accumulator per lane: scalar sums ran at the FP-add latency.
template <class T> void layer_norm_grad_row(const T *x, const T *g, T *dx, int64_t n, double eps) {
  constexpr int W = simd::kWidth<double>;
  const int64_t whole = n / W * W;
  auto lanes = [](Vec<double> v) {
    double t = 0;
    for (int l = 0; l < W; ++l) t += v[l];
    return t;
  };
  Vec<double> acc{};
  for (int64_t i = 0; i < whole; i += W) acc += simd::load_as_double(x + i);
  double sum = lanes(acc);
  for (int64_t i = whole; i < n; ++i) sum += x[i];
  const double mean = sum / n;
  Vec<double> sq{}, gs{}, gc{};
  for (int64_t i = 0; i < whole; i += W) {
    const Vec<double> c = simd::load_as_double(x + i) - mean, gv = simd::load_as_double(g + i);
    sq += c * c;
    gs += gv;
    gc += gv * c;
  }
  double var = lanes(sq), g_sum = lanes(gs), gc_sum = lanes(gc);
  for (int64_t i = whole; i < n; ++i) {
    const double c = x[i] - mean;
    var += c * c;
    g_sum += g[i];
    gc_sum += g[i] * c;
  }
  const double rstd = 1 / std::sqrt(var / n + eps);
  // y * mean(g y) = (x - mean) * rstd^2 * mean(g (x - mean))
  const T m = static_cast<T>(mean), r = static_cast<T>(rstd), g_mean = static_cast<T>(g_sum / n);
  const T k = static_cast<T>(rstd * rstd * gc_sum / n);
  constexpr int WT = simd::kWidth<T>;
  const int64_t whole_t = n / WT * WT;
  for (int64_t i = 0; i < whole_t; i += WT) {
    const Vec<T> c = simd::load(x + i) - m;
    simd::store(dx + i, r * (simd::load(g + i) - g_mean - c * k));
  }
  for (int64_t i = whole_t; i < n; ++i) dx[i] = r * (g[i] - g_mean - (x[i] - m) * k);
}

template <class T>
void layer_norm_grad_each_row(const T *a, const T *g, T *out, int64_t rows, int64_t cols,
                              double eps) {
  parallel_rows(rows, cols, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      layer_norm_grad_row(a + r * cols, g + r * cols, out + r * cols, cols, eps);
  });
}

// Whether every one of idx[0, count) lies in [0, n): unsigned compares, 8 lanes at a time.
inline bool all_below(const int64_t *idx, int64_t count, int64_t n) {
  using M = simd::Mask<double>;  // 8 int64 lanes
  constexpr int W = simd::kWidth<double>;
  using U = uint64_t __attribute__((vector_size(sizeof(M))));
  U limit;
  for (int l = 0; l < W; ++l) limit[l] = static_cast<uint64_t>(n);
  U outside{};
  int64_t k = 0;
  for (; k + W <= count; k += W) {
    U v;
    std::memcpy(&v, idx + k, sizeof v);
    outside |= reinterpret_cast<U>(v >= limit);
  }
  bool ok = true;
  for (int l = 0; l < W; ++l) ok &= outside[l] == 0;
  for (; k < count; ++k) ok &= static_cast<uint64_t>(idx[k]) < static_cast<uint64_t>(n);
  return ok;
}

// out[o, j, i] = a[o, idx[o, j, i], i] over compact (outer, n, inner) a and (outer, m,
// inner) idx and out. Each output row's indices are checked (vectorised) before any of
// them is read: returns false, with an offending index in `bad`, if one is outside [0, n).
template <class T>
bool gather_middle_axis(const T *__restrict a, const int64_t *__restrict idx, T *__restrict out,
                        int64_t outer, int64_t n, int64_t inner, int64_t m, int64_t &bad) {
  std::atomic<int64_t> first_bad_row{-1};
  parallel_rows(outer, m * inner, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const T *src = a + o * n * inner;
      const int64_t *ix = idx + o * m * inner;
      T *dst = out + o * m * inner;
      if (!all_below(ix, m * inner, n)) {
        first_bad_row.store(o);
        return;
      }
      if (inner == 1) {
        for (int64_t j = 0; j < m; ++j) dst[j] = src[ix[j]];
        continue;
      }
      for (int64_t j = 0; j < m * inner; j += inner)
        for (int64_t i = 0; i < inner; ++i) dst[j + i] = src[ix[j + i] * inner + i];
    }
  });
  const int64_t row = first_bad_row.load();
  if (row < 0) return true;
  for (int64_t k = 0; k < m * inner; ++k)
    if (static_cast<uint64_t>(idx[row * m * inner + k]) >= static_cast<uint64_t>(n))
      bad = idx[row * m * inner + k];
  return false;
}

// out[o, idx[o, j, i], i] += a[o, j, i] in index order (repeats add up, the same sums every
// time), serially, after every index is checked: false, with an offending index in `bad`,
// and out untouched, if one is outside [0, n).
template <class T>
bool scatter_add_middle_axis(const T *a, const int64_t *idx, T *out, int64_t outer, int64_t n,
                             int64_t inner, int64_t m, int64_t &bad) {
  const int64_t count = outer * m * inner;
  if (!all_below(idx, count, n)) {
    for (int64_t k = 0; k < count; ++k)
      if (static_cast<uint64_t>(idx[k]) >= static_cast<uint64_t>(n)) bad = idx[k];
    return false;
  }
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < m; ++j) {
      const int64_t *ix = idx + (o * m + j) * inner;
      const T *src = a + (o * m + j) * inner;
      T *dst = out + o * n * inner;
      for (int64_t i = 0; i < inner; ++i) dst[ix[i] * inner + i] += src[i];
    }
  return true;
}

// 2-D pooling of `planes` compact (h, w) planes into (ho, wo) ones: each output the max
// (NaN propagating; padding is -inf), the mean (padding counts as zeros: sum / kh kw) or the
// argmax (below) of its kh x kw window at (oy sh - ph, ox sw - pw). One thread per run of
// planes.
struct Pool2d {
  int64_t planes, h, w, kh, kw, sh, sw, ph, pw;
  int64_t ho() const { return (h + 2 * ph - kh) / sh + 1; }
  int64_t wo() const { return (w + 2 * pw - kw) / sw + 1; }
};

// One plane, output row by output row: each window element (ky, kx) is combined into the
// whole row at once (a loop over ox the compiler vectorises), over the ox whose element lies
// inside the plane (padding never read). Window elements combine in row-major order.
template <class T, bool Max>
void pool2d_plane(const T *src, T *dst, const Pool2d &g, int64_t ho, int64_t wo) {
  const T init = Max ? -std::numeric_limits<T>::infinity() : T(0);
  for (int64_t oy = 0; oy < ho; ++oy) {
    T *__restrict row = dst + oy * wo;
    std::fill_n(row, wo, init);
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const int64_t y = oy * g.sh - g.ph + ky;
      if (y < 0 || y >= g.h) continue;
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const int64_t off = kx - g.pw;  // x = ox sw + off must lie in [0, w)
        const int64_t lo = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
        const int64_t hi = std::min(wo, off < g.w ? (g.w - 1 - off) / g.sw + 1 : 0);
        const T *__restrict line = src + y * g.w + off;
        auto combine = [](T acc, T v) {  // NaN propagates: two selects (max_nan's || does not
          const T r = acc > v ? acc : v;  // vectorise here)
          return Max ? (acc != acc ? acc : r) : acc + v;
        };
        if (g.sw == 1)
          for (int64_t ox = lo; ox < hi; ++ox) row[ox] = combine(row[ox], line[ox]);
        else if (g.sw == 2)
          for (int64_t ox = lo; ox < hi; ++ox) row[ox] = combine(row[ox], line[2 * ox]);
        else
          for (int64_t ox = lo; ox < hi; ++ox) row[ox] = combine(row[ox], line[ox * g.sw]);
      }
    }
    if (!Max)
      for (int64_t ox = 0; ox < wo; ++ox) row[ox] /= static_cast<T>(g.kh * g.kw);
  }
}

// The position in its window (row-major, padding counted) of each window's first maximum,
// or of its first NaN; 0 for a window of -inf alone (np.argmax's answers).
template <class T>
void pool2d_argmax_plane(const T *src, T *dst, const Pool2d &g, int64_t ho, int64_t wo,
                         T *__restrict best) {
  for (int64_t oy = 0; oy < ho; ++oy) {
    T *__restrict row = dst + oy * wo;
    std::fill_n(row, wo, T(0));
    std::fill_n(best, wo, -std::numeric_limits<T>::infinity());
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const int64_t y = oy * g.sh - g.ph + ky;
      if (y < 0 || y >= g.h) continue;
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const int64_t off = kx - g.pw;
        const int64_t lo = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
        const int64_t hi = std::min(wo, off < g.w ? (g.w - 1 - off) / g.sw + 1 : 0);
        const T *__restrict line = src + y * g.w + off;
        const T k = static_cast<T>(ky * g.kw + kx);
        for (int64_t ox = lo; ox < hi; ++ox) {
          const T v = line[ox * g.sw], b = best[ox];
          const bool take = (v > b) | ((v != v) & (b == b));
          best[ox] = take ? v : b;
          row[ox] = take ? k : row[ox];
        }
      }
    }
  }
}

enum class PoolOp { kMax, kAvg, kArgmax };

template <class T> void pool2d_planes(const T *a, T *out, const Pool2d &g, PoolOp op) {
  const int64_t ho = g.ho(), wo = g.wo();
  parallel_rows(g.planes, g.h * g.w, [&](int64_t begin, int64_t end) {
    std::vector<T> best(op == PoolOp::kArgmax ? wo : 0);
    for (int64_t p = begin; p < end; ++p) {
      const T *src = a + p * g.h * g.w;
      T *dst = out + p * ho * wo;
      if (op == PoolOp::kMax) pool2d_plane<T, true>(src, dst, g, ho, wo);
      if (op == PoolOp::kAvg) pool2d_plane<T, false>(src, dst, g, ho, wo);
      if (op == PoolOp::kArgmax) pool2d_argmax_plane<T>(src, dst, g, ho, wo, best.data());
    }
  });
}

// One row of softmax's adjoint: out = s (g - sum(g s)), s the softmax, g the output's
// gradient; the dot product summed in double.
template <class T> void softmax_grad_row(const T *s, const T *g, T *out, int64_t n) {
  constexpr int W = simd::kWidth<double>;
  const int64_t whole = n / W * W;
  Vec<double> acc{};
  for (int64_t i = 0; i < whole; i += W)
    acc += simd::load_as_double(s + i) * simd::load_as_double(g + i);
  double dot = 0;
  for (int64_t i = whole; i < n; ++i) dot += double(s[i]) * double(g[i]);
  for (int l = 0; l < W; ++l) dot += acc[l];
  const T d = static_cast<T>(dot);
  constexpr int WT = simd::kWidth<T>;
  const int64_t whole_t = n / WT * WT;
  for (int64_t i = 0; i < whole_t; i += WT)
    simd::store(out + i, simd::load(s + i) * (simd::load(g + i) - d));
  for (int64_t i = whole_t; i < n; ++i) out[i] = s[i] * (g[i] - d);
}

// One row of the softmax cross-entropy: g = softmax(x) * scale with scale taken off at
// `label`, and the row's loss log(sum e) - (x[label] - m), e = exp(x - m), m the max.
template <class T> double cross_entropy_row(const T *x, T *g, int64_t n, int64_t label, T scale) {
  constexpr int W = simd::kWidth<T>;
  const int64_t whole = n / W * W;
  const auto [m, sum] = max_and_exp_sum(x, g, n);
  const T factor = scale / sum;
  for (int64_t i = 0; i < whole; i += W) simd::store(g + i, simd::load(g + i) * factor);
  for (int64_t i = whole; i < n; ++i) g[i] *= factor;
  g[label] -= scale;
  return double(std::log(sum)) - double(x[label] - m);
}

// cross_entropy_row over `rows` rows of checked labels: the mean loss, each row's summed in
// double in row order (the same total whatever the threads).
template <class T>
T cross_entropy_each_row(const T *z, const int64_t *labels, T *grad, int64_t rows, int64_t cols) {
  if (rows == 0) return std::numeric_limits<T>::quiet_NaN();
  std::vector<double> losses(rows);
  const T scale = T(1) / T(rows);
  parallel_rows(rows, cols, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      losses[r] = cross_entropy_row(z + r * cols, grad + r * cols, cols, labels[r], scale);
  });
  double total = 0;
  for (double v : losses) total += v;
  return static_cast<T>(total / rows);
}

template <class T> void softmax_each_row(const T *a, T *out, int64_t rows, int64_t cols, bool log) {
  parallel_rows(rows, cols, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) softmax_row(a + r * cols, out + r * cols, cols, log);
  });
}

// A float32 row kernel, kernel(inputs, out, cols) with N input rows laid end to end, run on
// 16-bit rows: each row is widened into float32 scratch and the result rounded once, so the
// arithmetic is the float32 row's exactly (the kernels keep partial results in out, which
// 16-bit storage would round).
template <int N, class T, class Kernel>
void rows_in_float32(const T *const (&in)[N], T *out, int64_t rows, int64_t cols, Kernel kernel) {
  parallel_rows(rows, cols, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch((N + 1) * cols);
    float *result = scratch.data() + N * cols;
    for (int64_t r = begin; r < end; ++r) {
      for (int k = 0; k < N; ++k) to_float(in[k] + r * cols, scratch.data() + k * cols, cols);
      kernel(scratch.data(), result, cols);
      from_float(result, out + r * cols, cols);
    }
  });
}

// ---- an LSTM cell (lstm_cell, lstm_cell_grad) ----------------------------------------------
// sigmoid and tanh as ewise_sigmoid and ewise_tanh compute them, so the fused cell agrees with
// the unfused ops.
template <class V> inline V vsigmoid(V x) { return Sigmoid{}(x); }
inline Vec<float> vtanh(Vec<float> x) { return vmath::tanh(x); }
inline Vec<double> vtanh(Vec<double> x) {
  return simd::per_lane<double>(x, [](double v) { return std::tanh(v); });
}

// Units [j, j + W) of a row (Tail: [j, j + r)): gates x (4, hidden) i, f, g, o and cb in;
// h', c' and a (5, hidden) = i, f, g, o activated, tanh(c') out. Every pointer a parameter:
// the stores (memcpy, which may alias anything) then force no reloads.
template <class T, bool Tail>
inline void lstm_cell_vector(const T *x, const T *cb, T *h, T *c_new, T *a, int64_t H, int64_t j,
                             int64_t r) {
  const Vec<T> i = vsigmoid(simd::load_n<Tail>(x + j, r)),
               f = vsigmoid(simd::load_n<Tail>(x + H + j, r));
  const Vec<T> g = vtanh(simd::load_n<Tail>(x + 2 * H + j, r));
  const Vec<T> o = vsigmoid(simd::load_n<Tail>(x + 3 * H + j, r));
  const Vec<T> cn = f * simd::load_n<Tail>(cb + j, r) + i * g, t = vtanh(cn);
  simd::store_n<Tail>(h + j, o * t, r);
  simd::store_n<Tail>(c_new + j, cn, r);
  simd::store_n<Tail>(a + j, i, r);
  simd::store_n<Tail>(a + H + j, f, r);
  simd::store_n<Tail>(a + 2 * H + j, g, r);
  simd::store_n<Tail>(a + 3 * H + j, o, r);
  simd::store_n<Tail>(a + 4 * H + j, t, r);
}

// One pass over each row b of gates (batch, 4, hidden) and c: out's rows b of its (h', c')
// halves and act's row b.
template <class T>
void lstm_cell_rows(const T *gates, const T *c, T *out, T *act, int64_t batch, int64_t hidden) {
  constexpr int W = simd::kWidth<T>;
  const int64_t H = hidden, whole = H / W * W;
  parallel_rows(batch, 4 * H, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const T *x = gates + b * 4 * H, *cb = c + b * H;
      T *h = out + b * H, *cn = out + (batch + b) * H, *a = act + b * 5 * H;
      for (int64_t j = 0; j < whole; j += W) lstm_cell_vector<T, false>(x, cb, h, cn, a, H, j, W);
      if (whole < H) lstm_cell_vector<T, true>(x, cb, h, cn, a, H, whole, H - whole);
    }
  });
}

// lstm_cell's adjoint at units [j, j + W) of a row (Tail: [j, j + r)): d_h', d_c', act a and
// cb in; d_gates dg (4, hidden) and d_c out, in the NumPy reference's order of products.
template <class T, bool Tail>
inline void lstm_cell_grad_vector(const T *dh, const T *dcn, const T *a, const T *cb, T *dg, T *dc,
                                  int64_t H, int64_t j, int64_t r) {
  const Vec<T> i = simd::load_n<Tail>(a + j, r), f = simd::load_n<Tail>(a + H + j, r);
  const Vec<T> g = simd::load_n<Tail>(a + 2 * H + j, r), o = simd::load_n<Tail>(a + 3 * H + j, r);
  const Vec<T> t = simd::load_n<Tail>(a + 4 * H + j, r), d_h = simd::load_n<Tail>(dh + j, r);
  const Vec<T> d_cell = simd::load_n<Tail>(dcn + j, r) + d_h * o * (T(1) - t * t);
  simd::store_n<Tail>(dg + j, d_cell * g * i * (T(1) - i), r);
  simd::store_n<Tail>(dg + H + j, d_cell * simd::load_n<Tail>(cb + j, r) * f * (T(1) - f), r);
  simd::store_n<Tail>(dg + 2 * H + j, d_cell * i * (T(1) - g * g), r);
  simd::store_n<Tail>(dg + 3 * H + j, d_h * t * o * (T(1) - o), r);
  simd::store_n<Tail>(dc + j, d_cell * f, r);
}

template <class T>
void lstm_cell_grad_rows(const T *dy, const T *act, const T *c, T *d_gates, T *d_c, int64_t batch,
                         int64_t hidden) {
  constexpr int W = simd::kWidth<T>;
  const int64_t H = hidden, whole = H / W * W;
  parallel_rows(batch, 4 * H, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const T *dh = dy + b * H, *dcn = dy + (batch + b) * H, *a = act + b * 5 * H, *cb = c + b * H;
      T *dg = d_gates + b * 4 * H, *dc = d_c + b * H;
      for (int64_t j = 0; j < whole; j += W)
        lstm_cell_grad_vector<T, false>(dh, dcn, a, cb, dg, dc, H, j, W);
      if (whole < H) lstm_cell_grad_vector<T, true>(dh, dcn, a, cb, dg, dc, H, whole, H - whole);
    }
  });
}

}  // namespace cpu
}  // namespace needle
