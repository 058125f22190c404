// Elementwise primitives: one operator functor each, and three loop shapes (binary,
// scalar, unary) over compact Arrays, split across threads for large arrays.
//
// NaN handling follows NumPy (np.maximum, np.sign, np.max propagate NaN); the build does
// not use -ffast-math, so these comparisons keep IEEE meaning.

#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "array.h"
#include "simd.h"
#include "thread_pool.h"
#include "vector_math.h"

namespace needle {
namespace cpu {

// Each thread of a split elementwise loop gets at least this many elements. One parallel
// job costs a couple of microseconds once the workers are awake (they poll for 1 ms after a
// job); `a + b` on 2^16 float32 took 8.4 us on one thread and 6.1 us on two, on 2^15 4.8
// and 4.3 us: with 2^15 per thread, arrays from 2^16 elements up are split.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 15;

// Chunk boundaries in multiples of 16 elements: whole cache lines, whole SIMD vectors.
constexpr int64_t kChunkGrain = 16;

// body(begin, end) over [0, n), in parallel when n is large.
template <class Body> void parallel_for(int64_t n, Body &&body) {
  const int threads = threads_for(n, kMinElementsPerThread);
  if (threads <= 1) return body(int64_t{0}, n);
  parallel(threads, [&](int t, int nt) {
    const Range r = split_range(n, t, nt, kChunkGrain);
    if (r.begin < r.end) body(r.begin, r.end);
  });
}

template <class T> inline T max_nan(T x, T y) { return (x > y || x != x) ? x : y; }

// An operand smaller than `out` would be read past its end: a ValueError (NDArray never passes
// one; a direct call of the backend module might).
inline void require_operands(const Array &out, std::initializer_list<const Array *> operands) {
  for (const Array *a : operands)
    if (a->size < out.size)
      throw nb::value_error(("an operand has " + std::to_string(a->size) + " elements, out " +
                             std::to_string(out.size))
                                .c_str());
}

// Each operator works on a simd::Vec of lanes (a scalar-only function is applied lane by
// lane) for float32 and float64; float16 and bfloat16 arrays run the float32 operator on
// float32 lanes (simd.h widens on load and rounds on store), so each of their results is the
// float32 row's rounded once, as astype would round it. Loops run whole vectors and finish
// with one zero-padded vector, so every element goes through the same code and results do
// not depend on its position or the threads.
//
// Integer dtypes (int32, int64, uint8) go one element at a time through the operator's
// `integer` (plain loops the compiler vectorises). Add, sub, mul and neg compute in the
// unsigned type of the same width and cast back: two's complement wrap-around, as NumPy's
// arrays, and never C++'s undefined signed overflow.
using simd::Vec;
template <class T> using Unsigned = std::make_unsigned_t<T>;

struct Add {
  template <class V> V operator()(V x, V y) const { return x + y; }
  template <class T> static T integer(T x, T y) { return T(Unsigned<T>(x) + Unsigned<T>(y)); }
};
struct Sub {
  template <class V> V operator()(V x, V y) const { return x - y; }
  template <class T> static T integer(T x, T y) { return T(Unsigned<T>(x) - Unsigned<T>(y)); }
};
struct RSub {
  template <class V> V operator()(V x, V y) const { return y - x; }
  template <class T> static T integer(T x, T y) { return Sub::integer(y, x); }
};
struct Mul {  // uint8 operands promote to int, whose product cannot overflow
  template <class V> V operator()(V x, V y) const { return x * y; }
  template <class T> static T integer(T x, T y) { return T(Unsigned<T>(x) * Unsigned<T>(y)); }
};
struct Div {
  template <class V> V operator()(V x, V y) const { return x / y; }
};
struct RDiv {
  template <class V> V operator()(V x, V y) const { return y / x; }
};
struct Maximum {
  template <class V, class T = simd::Elem<V>> V operator()(V x, V y) const {
    return simd::max_nan<T>(x, y);
  }
  template <class T> static T integer(T x, T y) { return x > y ? x : y; }
};
// Comparisons write a bool out (1 where true): a lane mask on vectors, a bool on elements.
struct Eq {
  template <class V> auto operator()(V x, V y) const { return x == y; }
};
struct Ge {
  template <class V> auto operator()(V x, V y) const { return x >= y; }
};
struct Lt {
  template <class V> auto operator()(V x, V y) const { return x < y; }
};
struct Le {
  template <class V> auto operator()(V x, V y) const { return x <= y; }
};
struct Power {
  template <class V, class T = simd::Elem<V>> V operator()(V x, V y) const {
    for (int l = 0; l < simd::kWidth<T>; ++l) x[l] = std::pow(x[l], y[l]);
    return x;
  }
};

struct Neg {  // -uint8(1) == 255, -INT_MIN == INT_MIN
  template <class V> V operator()(V x) const { return -x; }
  template <class T> static T integer(T x) { return T(Unsigned<T>(0) - Unsigned<T>(x)); }
};
struct Abs {  // clear the sign bit: abs(-0.0) = 0.0 and NaN stays NaN; abs(INT_MIN) == INT_MIN
  template <class V, class T = simd::Elem<V>> V operator()(V x) const {
    return simd::from_bits<T>(simd::bits<T>(x) & ~simd::bits<T>(simd::splat(T(-0.0))));
  }
  template <class T> static T integer(T x) { return x < 0 ? Neg::integer(x) : x; }
};
struct Sign {  // zero and NaN map to themselves, as np.sign does
  template <class V, class T = simd::Elem<V>> V operator()(V x) const {
    return x > 0 ? simd::splat(T(1)) : x < 0 ? simd::splat(T(-1)) : x;
  }
  template <class T> static T integer(T x) { return T((x > 0) - (x < 0)); }
};
struct Relu {
  template <class V, class T = simd::Elem<V>> V operator()(V x) const {
    return simd::max_nan<T>(x, V{});
  }
  template <class T> static T integer(T x) { return x > 0 ? x : T(0); }
};
struct Sigmoid {
  Vec<float> operator()(Vec<float> x) const { return vmath::sigmoid(x); }
  Vec<double> operator()(Vec<double> x) const {
    return simd::per_lane<double>(x, [](double v) {  // e^-|x| never overflows
      const double e = std::exp(-std::abs(v));
      return v >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
    });
  }
};

// out[i] = op(inputs[i]...) over [0, n). Each vector is loaded before it is stored, so an
// in-place call (out aliasing an input exactly) is correct.
template <class T, class Op, class... In>
void map_lanes(T *out, int64_t n, Op op, const In *...in) {
  constexpr int W = simd::kWidth<T>;
  parallel_for(n, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + W <= end; i += W) simd::store(out + i, op(simd::load(in + i)...));
    if (i < end) simd::store_partial(out + i, op(simd::load_partial(in + i, end - i)...), end - i);
  });
}

// out[i] = f(in[i]...) over [0, n) one element at a time (integer dtypes, bool outs), in a
// function of its own: a uint8 store may alias a lambda's captures, which kept it scalar.
template <class R, class F, class... In>
void map_range(R *out, int64_t begin, int64_t end, F f, const In *...in) {
  for (int64_t i = begin; i < end; ++i) out[i] = f(in[i]...);
}
template <class R, class F, class... In>
void map_elements(R *out, int64_t n, F f, const In *...in) {
  parallel_for(n, [&](int64_t begin, int64_t end) { map_range(out, begin, end, f, in...); });
}

// out = op(inputs...) for any T: vectors for floating point, elements (op's `integer`) else.
template <class Op, class T, class... In> void map_op(T *out, int64_t n, Op op, const In *...in) {
  if constexpr (is_float_v<T>) {
    map_lanes(out, n, op, in...);
  } else {
    map_elements(out, n, [](auto... x) { return Op::integer(x...); }, in...);
  }
}

// out (bool) = f(inputs...) of a comparison: vector masks narrowed to bytes for floating
// point, elements else.
template <class T, class F, class... In>
void map_compare(bool *out, int64_t n, F f, const In *...in) {
  if constexpr (is_float_v<T>) {
    constexpr int W = simd::kWidth<T>;
    auto store = [](bool *p, simd::Mask<T> m, int64_t k) {
      const simd::Bytes<T> ones = __builtin_convertvector(m, simd::Bytes<T>) & 1;
      std::memcpy(p, &ones, k);
    };
    parallel_for(n, [&](int64_t begin, int64_t end) {
      int64_t i = begin;
      for (; i + W <= end; i += W) store(out + i, f(simd::load(in + i)...), W);
      if (i < end) store(out + i, f(simd::load_partial(in + i, end - i)...), end - i);
    });
  } else {
    map_elements(out, n, f, in...);
  }
}

template <class Op, class List> void ewise_binary(const Array &a, const Array &b, Array &out) {
  require_operands(out, {&a, &b});
  dispatch<List>(common_dtype(a, b, out), [&](auto tag) {
    using T = decltype(tag);
    GilRelease unlocked(out.size);
    map_op(out.data<T>(), out.size, Op{}, a.data<T>(), b.data<T>());
  });
}

// The scalar is converted to the dtype computed in first (scalar_as), as NumPy does for
// float32 and float64. A 16-bit array takes it as float32, as the float32 row it follows
// does (NumPy rounds it to the 16-bit type first: x + 0.1 can differ in the last bit).
template <class Op, class List> void scalar_binary(const Array &a, double val, Array &out) {
  require_operands(out, {&a});
  dispatch<List>(common_dtype(a, out), [&](auto tag) {
    using T = decltype(tag);
    const Compute<T> v = scalar_as<Compute<T>>(val);
    GilRelease unlocked(out.size);
    if constexpr (is_float_v<T>) {
      const Vec<T> vv = simd::splat(v);
      map_lanes(out.data<T>(), out.size, [&](Vec<T> x) { return Op{}(x, vv); }, a.data<T>());
    } else {
      map_elements(out.data<T>(), out.size, [v](T x) { return Op::integer(x, v); }, a.data<T>());
    }
  });
}

template <class Op, class List> void ewise_compare(const Array &a, const Array &b, Array &out) {
  require_operands(out, {&a, &b});
  require_dtype("out", out.dtype, DType::b8);
  dispatch<List>(common_dtype(a, b), [&](auto tag) {
    using T = decltype(tag);
    GilRelease unlocked(out.size);
    map_compare<T>(out.data<bool>(), out.size, Op{}, a.data<T>(), b.data<T>());
  });
}

template <class Op, class List> void scalar_compare(const Array &a, double val, Array &out) {
  require_operands(out, {&a});
  require_dtype("out", out.dtype, DType::b8);
  dispatch<List>(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const Compute<T> v = scalar_as<Compute<T>>(val);
    GilRelease unlocked(out.size);
    if constexpr (is_float_v<T>) {
      const Vec<T> vv = simd::splat(v);
      map_compare<T>(
          out.data<bool>(), out.size, [&](Vec<T> x) { return Op{}(x, vv); }, a.data<T>());
    } else {
      map_compare<T>(out.data<bool>(), out.size, [v](T x) { return Op{}(x, v); }, a.data<T>());
    }
  });
}

// a ** val. Squares (BatchNorm's variance and its gradient's x ** 1) skip std::pow, which
// goes lane by lane: 7 ms of a ResNet-9 step. NumPy takes the same shortcut for ** 2, and
// ** 0.5 is sqrt, as in NumPy and PyTorch: -inf ** 0.5 is NaN (std::pow gives +inf) and
// -0.0 ** 0.5 is -0.0.
template <class List> void scalar_power(const Array &a, double val, Array &out) {
  require<List>(common_dtype(a, out));
  if (val == 2.0) return ewise_binary<Mul, List>(a, a, out);
  if (val == 0.5) {
    dispatch<List>(a.dtype, [&](auto tag) {
      using T = decltype(tag);
      using C = Compute<T>;
      GilRelease unlocked(out.size);
      map_lanes(
          out.data<T>(), out.size,
          [](Vec<T> x) { return simd::per_lane<C>(x, [](C v) { return std::sqrt(v); }); },
          a.data<T>());
    });
    return;
  }
  if (val == 1.0) return scalar_binary<Mul, List>(a, 1.0, out);
  scalar_binary<Power, List>(a, val, out);
}

// out = alpha * a + beta * b (out may be a or b itself: an in-place update). The scalars are
// rounded to the dtype computed in first.
template <class List>
void ewise_axpby(const Array &a, const Array &b, double alpha, double beta, Array &out) {
  require_operands(out, {&a, &b});
  dispatch<List>(common_dtype(a, b, out), [&](auto tag) {
    using T = decltype(tag);
    GilRelease unlocked(out.size);
    using C = Compute<T>;
    const Vec<T> va = simd::splat(static_cast<C>(alpha)), vb = simd::splat(static_cast<C>(beta));
    map_lanes(
        out.data<T>(), out.size, [&](Vec<T> x, Vec<T> y) { return va * x + vb * y; }, a.data<T>(),
        b.data<T>());
  });
}

// A bias of `inner` values repeated to `period` (a multiple of inner and of the vector
// width), so that rows too short for a vector each are added whole vectors at a time.
constexpr int64_t kMaxPeriod = 512;

// out (outer x inner) = op(full, vector) (or op(vector, full) when `vector_first`), with
// `full` compact (outer x inner) and `vector` repeated along one axis: `per_column` holds
// inner values, the same for every row (a bias), otherwise outer values, one per row (each
// row's max or logsumexp). NDArray would otherwise copy the vector out to full size first.
template <class Op, class List>
void broadcast_binary(const Array &full, const Array &vector, Array &out, int64_t outer,
                      int64_t inner, bool per_column, bool vector_first) {
  const DType dtype = common_dtype(full, vector, out);
  if (outer <= 0 || inner <= 0) return require<List>(dtype);
  int64_t n = 0;
  if (__builtin_mul_overflow(outer, inner, &n) || full.size < static_cast<size_t>(n) ||
      out.size < static_cast<size_t>(n) ||
      vector.size < static_cast<size_t>(per_column ? inner : outer))
    throw nb::value_error("ewise_broadcast_binary: an array is smaller than outer x inner needs");
  dispatch<List>(dtype, [&](auto tag) {
    using T = decltype(tag);
    GilRelease unlocked(outer * inner);
    constexpr int W = simd::kWidth<T>;
    const T *f = full.data<T>(), *v = vector.data<T>();
    T *o = out.data<T>();
    auto apply = [&](Vec<T> x, Vec<T> y) { return vector_first ? Op{}(y, x) : Op{}(x, y); };
    // Short rows (a conv's bias over 16 or 32 channels): blocks of period / inner rows against
    // the bias repeated to `period`, whole vectors; a (8192, 16) bias add took 50 us as rows
    // of one vector each (bfloat16 67). The rows left over go row by row below.
    const int64_t period = inner / std::gcd<int64_t>(inner, W) * W;
    const bool repeat = per_column && inner < 4 * W && period <= kMaxPeriod;
    const int64_t block_rows = repeat ? period / inner : 1, blocks = outer / block_rows;
    T pattern[kMaxPeriod];
    for (int64_t j = 0; repeat && j < period; ++j) pattern[j] = v[j % inner];
    const int threads = threads_for(outer * inner, kMinElementsPerThread);
    parallel(threads, [&](int t, int n) {
      if (repeat) {
        const Range mine = split_range(blocks, t, n);
        for (int64_t b = mine.begin; b < mine.end; ++b)
          for (int64_t j = b * period, end = j + period, k = 0; j < end; j += W, k += W)
            simd::store(o + j, apply(simd::load(f + j), simd::load(pattern + k)));
      }
      const int64_t first = repeat ? blocks * block_rows : 0;
      const Range rows = split_range(outer - first, t, n);
      for (int64_t r = first + rows.begin; r < first + rows.end; ++r) {
        const T *fr = f + r * inner;
        T *orow = o + r * inner;
        const Vec<T> same = simd::splat(per_column ? Compute<T>(0) : widen(v[r]));
        int64_t j = 0;
        for (; j + W <= inner; j += W)
          simd::store(orow + j, apply(simd::load(fr + j), per_column ? simd::load(v + j) : same));
        if (j < inner) {
          const int64_t left = inner - j;
          simd::store_partial(orow + j,
                              apply(simd::load_partial(fr + j, left),
                                    per_column ? simd::load_partial(v + j, left) : same),
                              left);
        }
      }
    });
  });
}

template <class List, class Op> void ewise_unary(const Array &a, Array &out, Op op) {
  require_operands(out, {&a});
  dispatch<List>(common_dtype(a, out), [&](auto tag) {
    using T = decltype(tag);
    GilRelease unlocked(out.size);
    map_op(out.data<T>(), out.size, op, a.data<T>());
  });
}

// A unary operator from a scalar function of one lane (a generic lambda), applied lane by
// lane: how a new unary primitive starts, before it earns a vector version.
template <class F> struct Lanewise {
  F f;
  template <class V, class T = simd::Elem<V>> V operator()(V x) const {
    return simd::per_lane<T>(x, f);
  }
};
template <class F> Lanewise(F) -> Lanewise<F>;

// float32 through a vector function (vector_math.h's transcendentals), float64 lane by lane
// through a scalar one (std::).
template <class F32, class F64> struct SplitPrecision {
  F32 f32;
  F64 f64;
  Vec<float> operator()(Vec<float> x) const { return f32(x); }
  Vec<double> operator()(Vec<double> x) const { return simd::per_lane<double>(x, f64); }
};
template <class F32, class F64> SplitPrecision(F32, F64) -> SplitPrecision<F32, F64>;

// A row of the unary table of the bindings: primitive name, operator and the dtypes it takes.
template <class Op, class List> struct UnaryRow {
  const char *name;
  Op op;
  List dtypes;
};
template <class Op, class List> UnaryRow(const char *, Op, List) -> UnaryRow<Op, List>;

}  // namespace cpu
}  // namespace needle
