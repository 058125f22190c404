#include "convert.h"

#include <cstring>
#include <limits>
#include <type_traits>

#include "elementwise.h"  // parallel_for

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NEEDLE_X86_DISPATCH 1
#endif

namespace needle {
namespace cpu {

bool cpu_has_bf16() {
#if NEEDLE_X86_DISPATCH
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

namespace {

// float -> integer, truncated toward zero; NaN is 0 and values outside the range clamp
// (unspecified by the row; never C++'s undefined conversion).
template <class I, class F> I to_integer(F x) {
  constexpr I low = std::numeric_limits<I>::lowest(), high = std::numeric_limits<I>::max();
  const F past_high = static_cast<F>(high / 2 + 1) * 2;  // max + 1, exact
  if (!(x > static_cast<F>(low))) return x == x ? low : I(0);
  return x >= past_high ? high : static_cast<I>(x);
}

// One value of S as D (see convert.h and half.h for the rules of the 16-bit floats).
template <class D, class S> D convert_one(S x) {
  if constexpr (std::is_same_v<D, S>) {
    return x;
  } else if constexpr (std::is_same_v<S, Float16>) {
    if constexpr (std::is_same_v<D, double>)
      return from_half_bits<double>(x.bits);
    else
      return convert_one<D>(from_half_bits<float>(x.bits));
  } else if constexpr (std::is_same_v<S, BFloat16>) {
    if constexpr (std::is_same_v<D, Float16>)
      return {f16_from_float_eigen(from_bfloat16_bits(x.bits))};
    else
      return convert_one<D>(from_bfloat16_bits(x.bits));
  } else if constexpr (std::is_same_v<D, Float16>) {
    return {std::is_same_v<S, double> ? half_bits(double(x)) : half_bits(static_cast<float>(x))};
  } else if constexpr (std::is_same_v<D, BFloat16>) {
    return {bfloat16_bits(static_cast<float>(x))};  // doubles and integers through float32
  } else if constexpr (std::is_same_v<D, bool>) {
    return x != 0;
  } else if constexpr (std::is_integral_v<D> && std::is_floating_point_v<S>) {
    return to_integer<D>(x);
  } else {
    return static_cast<D>(x);  // integers wrap (modulo 2^bits), as NumPy's casts
  }
}

// A plain loop in a function of its own, which the compiler vectorises where it can.
template <class D, class S> void convert_range(const S *in, D *out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = convert_one<D>(in[i]);
}

// n values widened or rounded through simd.h's vector conversions (F16C and AVX512-BF16 where
// the build targets them, integer vector code else): the elementwise rows' own.
template <class D, class S> void convert_lanes(const S *in, D *out, int64_t n) {
  constexpr int W = simd::kWidth<S>;
  int64_t i = 0;
  for (; i + W <= n; i += W) simd::store(out + i, simd::load(in + i));
  if (i < n) simd::store_partial(out + i, simd::load_partial(in + i, n - i), n - i);
}

}  // namespace

void to_float(const Float16 *in, float *out, int64_t n) { convert_lanes(in, out, n); }
void to_float(const BFloat16 *in, float *out, int64_t n) { convert_lanes(in, out, n); }
void from_float(const float *in, Float16 *out, int64_t n) { convert_lanes(in, out, n); }
void from_float(const float *in, BFloat16 *out, int64_t n) { convert_lanes(in, out, n); }

void convert(const Array &a, Array &out) {
  dispatch<AllTypes>(a.dtype, [&](auto from) {
    dispatch<AllTypes>(out.dtype, [&](auto to) {
      using S = decltype(from);
      using D = decltype(to);
      const S *in = a.data<S>();
      D *o = out.data<D>();
      parallel_for(out.size, [&](int64_t begin, int64_t end) {
        if constexpr (std::is_same_v<S, D>)
          std::memmove(o + begin, in + begin, (end - begin) * sizeof(S));
        else if constexpr (is_half_v<S> && std::is_same_v<D, float>)
          to_float(in + begin, o + begin, end - begin);
        else if constexpr (std::is_same_v<S, float> && is_half_v<D>)
          from_float(in + begin, o + begin, end - begin);
        else
          convert_range(in + begin, o + begin, end - begin);
      });
    });
  });
}

}  // namespace cpu
}  // namespace needle
