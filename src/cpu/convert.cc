#include "convert.h"

#include <cstring>
#include <limits>
#include <type_traits>

#include "elementwise.h"  // parallel_for

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NEEDLE_X86_DISPATCH 1
#endif

namespace needle {
namespace cpu {

bool cpu_has_f16c() {
#if NEEDLE_X86_DISPATCH
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

bool cpu_has_bf16() {
#if NEEDLE_X86_DISPATCH
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") &&
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

typedef uint32_t U32x16 __attribute__((vector_size(64)));
typedef uint16_t U16x16 __attribute__((vector_size(32)));

#if NEEDLE_X86_DISPATCH
// F16C converts as IEEE says but quiets signaling NaNs (NumPy does not): those lanes are
// redone from the bits.
__attribute__((target("avx512f,f16c"))) int64_t to_float_f16c(const Float16 *in, float *out,
                                                              int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(in + i));
    __m512i f = _mm512_castps_si512(_mm512_cvtph_ps(h));
    const __m512i w = _mm512_cvtepu16_epi32(h);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(w, _mm512_set1_epi32(0x7fff)),
                                                  _mm512_set1_epi32(0x7c00));
    const __mmask16 signaling = nan & ~_mm512_test_epi32_mask(w, _mm512_set1_epi32(0x200));
    if (signaling) f = _mm512_mask_and_epi32(f, signaling, f, _mm512_set1_epi32(~0x400000));
    _mm512_storeu_si512(out + i, f);
  }
  return i;
}

__attribute__((target("avx512f,f16c"))) int64_t from_float_f16c(const float *in, Float16 *out,
                                                                int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_loadu_ps(in + i);
    __m256i h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
    const __m512i u = _mm512_castps_si512(x);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    if (nan) {  // NumPy's NaN: the payload's top 10 bits, at least 1, quiet bit as it was
      const __m512i payload =
          _mm512_max_epu32(_mm512_and_si512(_mm512_srli_epi32(u, 13), _mm512_set1_epi32(0x3ff)),
                           _mm512_set1_epi32(1));
      const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000));
      const __m512i fixed =
          _mm512_or_si512(_mm512_or_si512(sign, payload), _mm512_set1_epi32(0x7c00));
      h = _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(_mm512_cvtepu16_epi32(h), nan, fixed));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(out + i), h);
  }
  return i;
}
#endif

}  // namespace

void to_float(const Float16 *in, float *out, int64_t n) {
  int64_t i = 0;
#if NEEDLE_X86_DISPATCH
  if (cpu_has_f16c()) i = to_float_f16c(in, out, n);
#endif
  for (; i < n; ++i) out[i] = from_half_bits<float>(in[i].bits);
}

void from_float(const float *in, Float16 *out, int64_t n) {
  int64_t i = 0;
#if NEEDLE_X86_DISPATCH
  if (cpu_has_f16c()) i = from_float_f16c(in, out, n);
#endif
  for (; i < n; ++i) out[i] = {half_bits(in[i])};
}

void to_float(const BFloat16 *in, float *out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    U16x16 h;
    std::memcpy(&h, in + i, sizeof h);
    const U32x16 w = __builtin_convertvector(h, U32x16) << 16;
    std::memcpy(out + i, &w, sizeof w);
  }
  for (; i < n; ++i) out[i] = from_bfloat16_bits(in[i].bits);
}

void from_float(const float *in, BFloat16 *out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {  // bfloat16_bits, lane by lane
    U32x16 u;
    std::memcpy(&u, in + i, sizeof u);
    const U32x16 rounded = (u + 0x7fff + (u >> 16 & 1)) >> 16;
    const U32x16 nan = (u >> 16 & 0x8000) | 0x7fc0;
    const U16x16 h = __builtin_convertvector((u & 0x7fffffff) > 0x7f800000 ? nan : rounded, U16x16);
    std::memcpy(out + i, &h, sizeof h);
  }
  for (; i < n; ++i) out[i] = {bfloat16_bits(in[i])};
}

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
