#include "reduce.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "elementwise.h"
#include "simd.h"
#include "thread_pool.h"

namespace needle {
namespace cpu {
namespace {

// Independent accumulators in a contiguous reduction: 32 doubles are four AVX-512 (eight
// AVX2) registers, enough to cover the add latency (4 cycles, 2 ports) so the loop runs at
// load speed, and the compiler vectorises the fixed-width inner loop.
constexpr int kLanes = 32;
// Pairwise summation leaf: long enough that recursion costs nothing, short enough that
// each lane sums only kLeaf / kLanes = 64 terms in order.
constexpr int64_t kLeaf = 2048;
// Columns of a middle-axis reduction handled at once: the 4096-double accumulator row
// (32 KiB) stays in L1/L2, and each reduced row is read in runs of 16 KiB (float32), long
// enough for the hardware prefetchers (1024-column runs of 4 KiB ran at 60% of NumPy).
constexpr int64_t kInnerChunk = 4096;

// Leaf sums of R rows (`stride` apart, n elements each) in lockstep: R independent streams
// keep more memory requests in flight than one (a single row stream ran at ~60% of the
// bandwidth), and each row's arithmetic is exactly that of summing it alone.
template <int R, class T>
void sum_leaves(const T *x, int64_t stride, int64_t n, double *__restrict out) {
  constexpr int W = simd::kWidth<double>, kVecs = kLanes / W;
  simd::Vec<double> acc[R][kVecs] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kVecs; ++v) acc[r][v] += simd::load_as_double(x + r * stride + i + v * W);
  for (int r = 0; r < R; ++r) {
    double lanes[kLanes];
    std::memcpy(lanes, acc[r], sizeof lanes);
    for (int64_t j = i, l = 0; j < n; ++j, ++l) lanes[l] += widen(x[r * stride + j]);
    for (int width = kLanes / 2; width > 0; width /= 2)
      for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
    out[r] = lanes[0];
  }
}

inline int64_t pairwise_half(int64_t n) { return n / 2 / kLanes * kLanes; }

// Pairwise sums of R rows: the same tree for every row, so lockstep changes nothing.
template <int R, class T>
void pairwise_sums(const T *x, int64_t stride, int64_t n, double *__restrict out) {
  if (n <= kLeaf) return sum_leaves<R>(x, stride, n, out);
  const int64_t half = pairwise_half(n);
  double left[R], right[R];
  pairwise_sums<R>(x, stride, half, left);
  pairwise_sums<R>(x + half, stride, n - half, right);
  for (int r = 0; r < R; ++r) out[r] = left[r] + right[r];
}

template <class T> double pairwise_sum(const T *x, int64_t n) {
  double sum;
  pairwise_sums<1>(x, 0, n, &sum);
  return sum;
}

// Rows summed together by sum_last_axis.
constexpr int kRowsInLockstep = 4;

// The subtrees `levels` below the root of pairwise_sum's tree, in order (every node above
// them splits when n >= 2^(levels+1) * kLeaf).
inline void subtrees(int64_t start, int64_t n, int levels, std::vector<Range> &out) {
  if (levels == 0) return out.push_back({start, start + n});
  const int64_t half = pairwise_half(n);
  subtrees(start, half, levels - 1, out);
  subtrees(start + half, n - half, levels - 1, out);
}

// pairwise_sum with its top levels' subtrees summed by different threads, then combined
// in the same tree order: bitwise the serial result.
template <class T> double pairwise_sum_parallel(const T *x, int64_t n, int threads) {
  int levels = 0;
  while ((2 << levels) <= threads && n >= (int64_t{4} << levels) * kLeaf) ++levels;
  if (levels == 0) return pairwise_sum(x, n);
  std::vector<Range> parts;
  subtrees(0, n, levels, parts);
  std::vector<double> sums(parts.size());
  parallel(static_cast<int>(parts.size()), [&](int t, int nt) {
    for (size_t s = t; s < parts.size(); s += nt)
      sums[s] = pairwise_sum(x + parts[s].begin, parts[s].end - parts[s].begin);
  });
  for (size_t width = 1; width < sums.size(); width *= 2)
    for (size_t i = 0; i + width < sums.size(); i += 2 * width) sums[i] += sums[i + width];
  return sums[0];
}

template <class T> Compute<T> max_run(const T *x, int64_t n) {
  constexpr int W = simd::kWidth<T>, kVecs = kLanes / W;
  if (n < kLanes) {
    Compute<T> m = widen(x[0]);
    for (int64_t i = 1; i < n; ++i) m = max_nan(m, widen(x[i]));
    return m;
  }
  simd::Vec<T> acc[kVecs];
  for (int v = 0; v < kVecs; ++v) acc[v] = simd::load(x + v * W);
  int64_t i = kLanes;
  for (; i + kLanes <= n; i += kLanes)
    for (int v = 0; v < kVecs; ++v) acc[v] = simd::max_nan<T>(acc[v], simd::load(x + i + v * W));
  Compute<T> lanes[kLanes];
  std::memcpy(lanes, acc, sizeof lanes);
  for (int l = 0; i < n; ++i, ++l) lanes[l] = max_nan(lanes[l], widen(x[i]));
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] = max_nan(lanes[l], lanes[l + width]);
  return lanes[0];
}

// ---- middle axis -----------------------------------------------------------------------

// acc[0:len] = reduction over rows of a[r, 0:len], for the sum (in double) and the
// maximum. add_rows takes kRowsPerPass rows per pass over acc, in order (so the result is
// the same as one row at a time), to cut the accumulator traffic to L1/L2 by that factor.
constexpr int kRowsPerPass = 4;

// The sum accumulates in double; merge combines two accumulators, merge_lanes two vectors of
// them, load reads kWidth<Acc> elements of a row as a vector of accumulators.
template <class T> struct SumAccumulate {
  using Acc = double;
  static constexpr bool kVector = true;
  static Acc identity() { return 0.0; }
  static Acc merge(Acc x, Acc y) { return x + y; }
  static simd::Vec<Acc> merge_lanes(simd::Vec<Acc> x, simd::Vec<Acc> y) { return x + y; }
  static simd::Vec<Acc> load(const T *p) { return simd::load_as_double(p); }
};

template <class T> struct MaxAccumulate {
  using Acc = Compute<T>;
  static constexpr bool kVector = true;
  static Acc identity() { return -std::numeric_limits<Acc>::infinity(); }
  static Acc merge(Acc x, Acc y) { return max_nan(x, y); }
  static simd::Vec<Acc> merge_lanes(simd::Vec<Acc> x, simd::Vec<Acc> y) {
    return simd::max_nan<Acc>(x, y);
  }
  static simd::Vec<Acc> load(const T *p) { return simd::load(p); }
};

// Integers and bool (kVector false: element loops, which the compiler vectorises): exact, so
// any split of the work gives the same result. Sums wrap around (in the unsigned type) as
// NumPy's int64 sums do; the maximum of bools is any().
template <class T> struct WrappingSum {
  using Acc = T;
  static constexpr bool kVector = false;
  static T identity() { return T(0); }
  static T merge(T x, T y) { return T(std::make_unsigned_t<T>(x) + std::make_unsigned_t<T>(y)); }
};
template <class T> struct ExactMax {
  using Acc = T;
  static constexpr bool kVector = false;
  static T identity() { return std::numeric_limits<T>::lowest(); }
  static T merge(T x, T y) { return x > y ? x : y; }
};

// acc[0:len] merged with R rows of len elements, `stride` apart, one vector of acc at a time.
template <class Op, int R, class T>
void add_rows(typename Op::Acc *__restrict acc, const T *__restrict rows, int64_t stride,
              int64_t len) {
  using Acc = typename Op::Acc;
  int64_t j = 0;
  if constexpr (Op::kVector) {
    constexpr int W = simd::kWidth<Acc>;
    for (; j + W <= len; j += W) {
      simd::Vec<Acc> v = simd::load(acc + j);
      for (int r = 0; r < R; ++r) v = Op::merge_lanes(v, Op::load(rows + r * stride + j));
      simd::store(acc + j, v);
    }
  }
  for (; j < len; ++j)
    for (int r = 0; r < R; ++r) acc[j] = Op::merge(acc[j], widen(rows[r * stride + j]));
}

// acc[0:len] = reduction of a[r, 0:len] over r in [r0, r1), a's rows `inner` apart.
template <class Op, class T>
void accumulate_rows(const T *a, int64_t inner, int64_t r0, int64_t r1, int64_t len,
                     typename Op::Acc *acc) {
  std::fill_n(acc, len, Op::identity());
  int64_t r = r0;
  for (; r + kRowsPerPass <= r1; r += kRowsPerPass)
    add_rows<Op, kRowsPerPass>(acc, a + r * inner, inner, len);
  for (; r < r1; ++r) add_rows<Op, 1>(acc, a + r * inner, inner, len);
}

template <class Op, class T>
void reduce_middle(const T *a, T *out, int64_t outer, int64_t reduce_size, int64_t inner) {
  using Acc = typename Op::Acc;
  const int64_t chunks = (inner + kInnerChunk - 1) / kInnerChunk;
  const int64_t items = outer * chunks;  // (outer index, column chunk) pairs
  const int threads = threads_for(outer * reduce_size * inner, kMinElementsPerThread);
  auto item = [&](int64_t i, int64_t *o, int64_t *j0, int64_t *len) {
    *o = i / chunks;
    *j0 = i % chunks * kInnerChunk;
    *len = std::min(kInnerChunk, inner - *j0);
  };

  if (items >= threads) {  // enough independent column chunks for every thread
    parallel(threads, [&](int t, int nt) {
      Acc acc[kInnerChunk];
      const Range mine = split_range(items, t, nt);
      for (int64_t i = mine.begin; i < mine.end; ++i) {
        int64_t o, j0, len;
        item(i, &o, &j0, &len);
        accumulate_rows<Op>(a + o * reduce_size * inner + j0, inner, 0, reduce_size, len, acc);
        for (int64_t j = 0; j < len; ++j) out[o * inner + j0 + j] = narrow<T>(acc[j]);
      }
    });
    return;
  }
  // Few, long reductions (a bias gradient: sum over a large batch of a short row): split
  // the reduced axis; each thread accumulates its rows, then the partials are merged in
  // thread order.
  const std::unique_ptr<Acc[]> partial(new Acc[static_cast<size_t>(threads) * kInnerChunk]);
  for (int64_t i = 0; i < items; ++i) {
    int64_t o, j0, len;
    item(i, &o, &j0, &len);
    const T *base = a + o * reduce_size * inner + j0;
    parallel(threads, [&](int t, int nt) {
      for (int part = t; part < threads; part += nt) {  // nt < threads when nested
        const Range rows = split_range(reduce_size, part, threads);
        accumulate_rows<Op>(base, inner, rows.begin, rows.end, len,
                            partial.get() + part * kInnerChunk);
      }
    });
    for (int64_t j = 0; j < len; ++j) {
      Acc acc = partial[j];
      for (int t = 1; t < threads; ++t) acc = Op::merge(acc, partial[t * kInnerChunk + j]);
      out[o * inner + j0 + j] = narrow<T>(acc);
    }
  }
}

// Integer and bool rows: one run per row (split across threads for few, long rows).
template <class Op, class T> T reduce_run(const T *x, int64_t n) {
  T acc = Op::identity();
  for (int64_t i = 0; i < n; ++i) acc = Op::merge(acc, x[i]);
  return acc;
}

template <class Op, class T> void exact_last_axis(const T *a, T *out, int64_t outer, int64_t n) {
  const int threads = threads_for(outer * n, kMinElementsPerThread);
  if (outer < threads) {
    const std::unique_ptr<T[]> partial(new T[threads]);
    for (int64_t i = 0; i < outer; ++i) {
      parallel(threads, [&](int t, int nt) {
        for (int part = t; part < threads; part += nt) {  // nt < threads when nested
          const Range r = split_range(n, part, threads, kLanes);
          partial[part] = reduce_run<Op>(a + i * n + r.begin, r.end - r.begin);
        }
      });
      out[i] = reduce_run<Op>(partial.get(), threads);
    }
    return;
  }
  parallel(threads, [&](int t, int nt) {
    const Range rows = split_range(outer, t, nt);
    for (int64_t i = rows.begin; i < rows.end; ++i) out[i] = reduce_run<Op>(a + i * n, n);
  });
}

template <class T>
void float_sum_last_axis(const T *a, T *out, int64_t outer, int64_t reduce_size) {
  const int threads = threads_for(outer * reduce_size, kMinElementsPerThread);
  if (outer < threads) {
    for (int64_t i = 0; i < outer; ++i)
      out[i] = narrow<T>(pairwise_sum_parallel(a + i * reduce_size, reduce_size, threads));
    return;
  }
  parallel(threads, [&](int t, int nt) {
    const Range rows = split_range(outer, t, nt);
    int64_t i = rows.begin;
    double sums[kRowsInLockstep];
    for (; i + kRowsInLockstep <= rows.end; i += kRowsInLockstep) {
      pairwise_sums<kRowsInLockstep>(a + i * reduce_size, reduce_size, reduce_size, sums);
      for (int r = 0; r < kRowsInLockstep; ++r) out[i + r] = narrow<T>(sums[r]);
    }
    for (; i < rows.end; ++i) out[i] = narrow<T>(pairwise_sum(a + i * reduce_size, reduce_size));
  });
}

template <class T>
void float_max_last_axis(const T *a, T *out, int64_t outer, int64_t reduce_size) {
  const int threads = threads_for(outer * reduce_size, kMinElementsPerThread);
  if (outer < threads) {
    std::vector<Compute<T>> partial(threads);
    for (int64_t i = 0; i < outer; ++i) {
      const T *row = a + i * reduce_size;
      parallel(threads, [&](int t, int nt) {
        for (int part = t; part < threads; part += nt) {  // nt < threads when nested
          const Range r = split_range(reduce_size, part, threads, kLanes);
          partial[part] = r.begin < r.end ? max_run(row + r.begin, r.end - r.begin) : widen(row[0]);
        }
      });
      Compute<T> m = partial[0];
      for (int t = 1; t < threads; ++t) m = max_nan(m, partial[t]);
      out[i] = narrow<T>(m);
    }
    return;
  }
  parallel(threads, [&](int t, int nt) {
    const Range rows = split_range(outer, t, nt);
    for (int64_t i = rows.begin; i < rows.end; ++i)
      out[i] = narrow<T>(max_run(a + i * reduce_size, reduce_size));
  });
}

}  // namespace

template <class T> void sum_last_axis(const T *a, T *out, int64_t outer, int64_t reduce_size) {
  assert(reduce_size >= 1);
  if constexpr (is_float_v<T>) {
    float_sum_last_axis(a, out, outer, reduce_size);
  } else {
    exact_last_axis<WrappingSum<T>>(a, out, outer, reduce_size);
  }
}

template <class T> void max_last_axis(const T *a, T *out, int64_t outer, int64_t reduce_size) {
  assert(reduce_size >= 1);
  if constexpr (is_float_v<T>) {
    float_max_last_axis(a, out, outer, reduce_size);
  } else {
    exact_last_axis<ExactMax<T>>(a, out, outer, reduce_size);
  }
}

template <class T>
void sum_middle_axis(const T *a, T *out, int64_t outer, int64_t reduce_size, int64_t inner) {
  assert(reduce_size >= 1);
  if (inner == 1) return sum_last_axis(a, out, outer, reduce_size);
  if constexpr (is_float_v<T>) {
    reduce_middle<SumAccumulate<T>>(a, out, outer, reduce_size, inner);
  } else {
    reduce_middle<WrappingSum<T>>(a, out, outer, reduce_size, inner);
  }
}

template <class T>
void max_middle_axis(const T *a, T *out, int64_t outer, int64_t reduce_size, int64_t inner) {
  assert(reduce_size >= 1);
  if (inner == 1) return max_last_axis(a, out, outer, reduce_size);
  if constexpr (is_float_v<T>) {
    reduce_middle<MaxAccumulate<T>>(a, out, outer, reduce_size, inner);
  } else {
    reduce_middle<ExactMax<T>>(a, out, outer, reduce_size, inner);
  }
}

// The dtypes of the sum rows (SumTypes) and the max rows (Computed), and the 16-bit floats,
// summed and compared in float32 lanes (simd.h) as the float32 rows do, rounded once.
#define NEEDLE_REDUCTION(NAME, T)                                      \
  template void NAME##_last_axis<T>(const T *, T *, int64_t, int64_t); \
  template void NAME##_middle_axis<T>(const T *, T *, int64_t, int64_t, int64_t);
NEEDLE_REDUCTION(sum, float)
NEEDLE_REDUCTION(sum, double)
NEEDLE_REDUCTION(sum, int64_t)
NEEDLE_REDUCTION(sum, Float16)
NEEDLE_REDUCTION(sum, BFloat16)
NEEDLE_REDUCTION(max, Float16)
NEEDLE_REDUCTION(max, BFloat16)
NEEDLE_REDUCTION(max, float)
NEEDLE_REDUCTION(max, double)
NEEDLE_REDUCTION(max, int32_t)
NEEDLE_REDUCTION(max, int64_t)
NEEDLE_REDUCTION(max, uint8_t)
NEEDLE_REDUCTION(max, bool)
#undef NEEDLE_REDUCTION

}  // namespace cpu
}  // namespace needle
