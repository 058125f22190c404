// Portable SIMD for the elementwise and reduction kernels: GCC/Clang vector extensions.
//
// A Vec<T> is 64 bytes of T (16 floats, 8 doubles; 16 floats for the 16-bit floats, which
// load widens and store rounds: below): one AVX-512 register, two AVX2 ones,
// four SSE ones; the compiler lowers the same source to whatever the target has, so these
// loops vectorise reliably (the auto-vectoriser gives up on selects, converts and loops
// inside thread lambdas) without an intrinsics version per instruction set. The GEMM
// micro-kernel, where register allocation matters, uses intrinsics (gemm_kernel.h).

#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "half.h"

namespace needle {
namespace cpu {
namespace simd {

constexpr int kBytes = 64;

template <class T> struct Types;
template <> struct Types<float> {
  typedef float Vec __attribute__((vector_size(kBytes)));
  typedef int32_t Mask __attribute__((vector_size(kBytes)));  // comparison results, bits
  typedef float Half __attribute__((vector_size(kBytes / 2)));  // converts to a Vec<double>
  typedef int8_t Bytes __attribute__((vector_size(kBytes / 4)));  // a byte per lane (bool)
};
template <> struct Types<double> {
  typedef double Vec __attribute__((vector_size(kBytes)));
  typedef int64_t Mask __attribute__((vector_size(kBytes)));
  typedef int8_t Bytes __attribute__((vector_size(kBytes / 8)));
};
// The 16-bit floats compute in float32 lanes: load widens 16 stored values, store rounds 16
// floats to the type (below), so a kernel written on Vec<T> runs them as it runs float32.
template <> struct Types<Float16> : Types<float> {};
template <> struct Types<BFloat16> : Types<float> {};

template <class T> using Vec = typename Types<T>::Vec;
template <class T> using Mask = typename Types<T>::Mask;
template <class T> using Bytes = typename Types<T>::Bytes;
// The lane type of a Vec (Vec<T> is not deducible through the alias; this recovers T).
template <class V> using Elem = std::remove_cv_t<std::remove_reference_t<decltype(V{}[0])>>;
template <class T> constexpr int kWidth = sizeof(Vec<T>) / sizeof(Elem<Vec<T>>);

template <class T> inline Vec<T> splat(T x) {
  Vec<T> v;  // not Vec<T>{} + x, which turns -0.0 into +0.0
  for (int l = 0; l < kWidth<T>; ++l) v[l] = x;
  return v;
}

// ---- the 16-bit floats: N lanes widened exactly, or rounded as astype rounds -------------
// half_bits.h's scalar conversions (NumPy's float16, ml_dtypes' bfloat16 bits) lane by lane in
// integer vector arithmetic, which every target vectorises (the *_bits functions); where the
// CPU converts in one instruction, that instead, unless a lane holds a value it converts
// otherwise than NumPy (below). test_halves_cpu.py compares the rows using them with astype.
template <int N> struct Lanes {
  typedef uint16_t U16 __attribute__((vector_size(2 * N)));
  typedef uint32_t U32 __attribute__((vector_size(4 * N)));
  typedef float F32 __attribute__((vector_size(4 * N)));
};

// 16-bit lanes zero-extended to 32 bits and truncated back: one instruction each with AVX-512
// (GCC 12 lowers the generic converts in halves and a shuffle: bfloat16's relu took 1.8x
// float32's time with them).
template <int N> inline typename Lanes<N>::U32 extend(typename Lanes<N>::U16 h) {
  using U32 = typename Lanes<N>::U32;
#if defined(__AVX512F__)
  if constexpr (N == 16)
    return reinterpret_cast<U32>(_mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(h)));
  if constexpr (N == 8)
    return reinterpret_cast<U32>(_mm256_cvtepu16_epi32(reinterpret_cast<__m128i>(h)));
#endif
  return __builtin_convertvector(h, U32);
}
template <int N> inline typename Lanes<N>::U16 truncate(typename Lanes<N>::U32 w) {
  using U16 = typename Lanes<N>::U16;
#if defined(__AVX512F__)
  if constexpr (N == 16)
    return reinterpret_cast<U16>(_mm512_cvtepi32_epi16(reinterpret_cast<__m512i>(w)));
#endif
  return __builtin_convertvector(w, U16);
}

template <int N> inline typename Lanes<N>::F32 widen_bits(typename Lanes<N>::U16 h, BFloat16) {
  return reinterpret_cast<typename Lanes<N>::F32>(extend<N>(h) << 16);
}

// A normal float16 rebiased (15 -> 127); a subnormal or zero is em 2^-24 (exact, and no
// float32 denormal on the way); inf and NaN keep their payload (signaling NaNs too).
template <int N> inline typename Lanes<N>::F32 widen_bits(typename Lanes<N>::U16 h, Float16) {
  using U32 = typename Lanes<N>::U32;
  using F32 = typename Lanes<N>::F32;
  const U32 w = extend<N>(h), em = w & 0x7fff;
  const U32 tiny = reinterpret_cast<U32>(__builtin_convertvector(em, F32) * 0x1p-24f);
  U32 r = em < 0x400 ? tiny : (em << 13) + (112u << 23);
  r = em >= 0x7c00 ? (em << 13) | 0x7f800000 : r;
  return reinterpret_cast<F32>(r | (w & 0x8000) << 16);
}

template <int N> inline typename Lanes<N>::U16 narrow_bits(typename Lanes<N>::F32 x, BFloat16) {
  using U32 = typename Lanes<N>::U32;
  const U32 u = reinterpret_cast<U32>(x);
  const U32 rounded = (u + 0x7fff + (u >> 16 & 1)) >> 16, nan = (u >> 16 & 0x8000) | 0x7fc0;
  return truncate<N>((u & 0x7fffffff) > 0x7f800000 ? nan : rounded);
}

// A normal float16 rounds the 13 dropped bits to nearest even (a carry is right); below 2^-14
// adding 0.5 makes the FPU round |x| to the subnormal grid 2^-24; from 65520 on it is inf; a
// NaN keeps its payload's top 10 bits, at least 1.
template <int N> inline typename Lanes<N>::U16 narrow_bits(typename Lanes<N>::F32 x, Float16) {
  using U32 = typename Lanes<N>::U32;
  const U32 u = reinterpret_cast<U32>(x), a = u & 0x7fffffff, payload = a >> 13 & 0x3ff;
  const U32 tiny = reinterpret_cast<U32>(reinterpret_cast<typename Lanes<N>::F32>(a) + 0.5f);
  U32 r = a < 0x38800000 ? tiny - 0x3f000000 : ((a + 0xfff + (a >> 13 & 1)) >> 13) - (112u << 10);
  r = a >= 0x477ff000 ? U32{} + 0x7c00 : r;
  r = a > 0x7f800000 ? (payload | 0x7c00) - reinterpret_cast<U32>(payload == 0) : r;
  return truncate<N>(r | (u >> 16 & 0x8000));
}

// The instructions: F16C both ways, AVX512-BF16's vcvtneps2bf16 to bfloat16. F16C quiets
// signaling NaNs and vcvtneps2bf16 keeps NaN payloads and flushes float32 denormals, where
// NumPy and ml_dtypes do neither: a vector holding such a lane (rare: a branch) takes the
// generic code. With them float16's relu took 0.16 ns an element, against 0.51 generic, and
// bfloat16's 0.12 against 0.17 (float32: 0.09; one thread, 2^20 elements).
template <int N, class H> inline typename Lanes<N>::F32 widen_lanes(typename Lanes<N>::U16 h, H) {
#if defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__F16C__)
  if constexpr (N == 16 && std::is_same_v<H, Float16>) {
    const __m256i raw = reinterpret_cast<__m256i>(h);
    const __m256i magnitude = _mm256_and_si256(raw, _mm256_set1_epi16(0x7fff));
    if (!_mm256_cmpgt_epu16_mask(magnitude, _mm256_set1_epi16(0x7c00)))
      return reinterpret_cast<typename Lanes<N>::F32>(_mm512_cvtph_ps(raw));
  }
#endif
  return widen_bits<N>(h, H{});
}

template <int N, class H> inline typename Lanes<N>::U16 narrow_lanes(typename Lanes<N>::F32 x, H) {
#if defined(__AVX512F__) && (defined(__F16C__) || defined(__AVX512BF16__))
  if constexpr (N == 16) {
    using U16 = typename Lanes<N>::U16;
    const __m512 v = reinterpret_cast<__m512>(x);
#if defined(__F16C__)
    if constexpr (std::is_same_v<H, Float16>)
      if (!_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q))
        return reinterpret_cast<U16>(
            _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
#if defined(__AVX512BF16__)
    if constexpr (std::is_same_v<H, BFloat16>)
      if (!_mm512_fpclass_ps_mask(v, 0xa1))  // QNaN, SNaN, denormal
        return reinterpret_cast<U16>(_mm512_cvtneps_pbh(v));
#endif
  }
#endif
  return narrow_bits<N>(x, H{});
}

// ---- loads and stores: a Vec of lanes from memory (16-bit floats widened) and back --------
template <class T> inline Vec<T> load(const T *p) {
  if constexpr (is_half_v<T>) {
    typename Lanes<kWidth<T>>::U16 h;
    std::memcpy(&h, p, sizeof h);
    return widen_lanes<kWidth<T>>(h, T{});
  } else {
    Vec<T> v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
}

template <class T> inline void store(T *p, Vec<T> v) {
  if constexpr (is_half_v<T>) {
    const auto h = narrow_lanes<kWidth<T>>(v, T{});
    std::memcpy(p, &h, sizeof h);
  } else {
    std::memcpy(p, &v, sizeof v);
  }
}

// The first n < kWidth lanes; the rest are zero. With AVX-512 one masked instruction (lanes
// past n are never touched), else a memcpy of n elements (a call: its size is not constant).
template <class T> inline Vec<T> load_partial(const T *p, int64_t n) {
  if constexpr (is_half_v<T>) {
    typename Lanes<kWidth<T>>::U16 h{};
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    h = reinterpret_cast<decltype(h)>(_mm256_maskz_loadu_epi16((1u << n) - 1, p));
#else
    std::memcpy(&h, p, n * sizeof(T));
#endif
    return widen_lanes<kWidth<T>>(h, T{});
  } else {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>)
      return reinterpret_cast<Vec<T>>(_mm512_maskz_loadu_ps((1u << n) - 1, p));
    else
      return reinterpret_cast<Vec<T>>(_mm512_maskz_loadu_pd((1u << n) - 1, p));
#else
    Vec<T> v{};
    std::memcpy(&v, p, n * sizeof(T));
    return v;
#endif
  }
}

template <class T> inline void store_partial(T *p, Vec<T> v, int64_t n) {
  if constexpr (is_half_v<T>) {
    const auto h = narrow_lanes<kWidth<T>>(v, T{});
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    _mm256_mask_storeu_epi16(p, (1u << n) - 1, reinterpret_cast<__m256i>(h));
#else
    std::memcpy(p, &h, n * sizeof(T));
#endif
  } else {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>)
      _mm512_mask_storeu_ps(p, (1u << n) - 1, reinterpret_cast<__m512>(v));
    else
      _mm512_mask_storeu_pd(p, (1u << n) - 1, reinterpret_cast<__m512d>(v));
#else
    std::memcpy(p, &v, n * sizeof(T));
#endif
  }
}

// A whole vector at p, or (Tail) its first r lanes, the rest zero; and the store to match.
template <bool Tail, class T> inline Vec<T> load_n(const T *p, int64_t r) {
  return Tail ? load_partial(p, r) : load(p);
}
template <bool Tail, class T> inline void store_n(T *p, Vec<T> v, int64_t r) {
  if (Tail) return store_partial(p, v, r);
  store(p, v);
}

// kWidth<double> consecutive T's as a Vec<double>, where sums accumulate. (Every vector
// here is one 64-byte register's worth: the compiler spills wider vector types.)
inline Vec<double> load_as_double(const double *p) { return load(p); }
inline Vec<double> load_as_double(const float *p) {
#if defined(__AVX512F__)  // GCC 12 lowers the generic convert as two halves and an insert
  return reinterpret_cast<Vec<double>>(_mm512_cvtps_pd(_mm256_loadu_ps(p)));
#else
  Types<float>::Half h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, Vec<double>);
#endif
}
template <class H, class = std::enable_if_t<is_half_v<H>>>
inline Vec<double> load_as_double(const H *p) {
  typename Lanes<kWidth<double>>::U16 h;
  std::memcpy(&h, p, sizeof h);
#if defined(__AVX512F__)  // as float's
#if defined(__F16C__)
  // float16 through F16C alone (its sums: 0.14 ns an element, not 0.27): the convert to double
  // quiets signaling NaNs, as F16C does, so no lane needs the generic code here.
  if constexpr (std::is_same_v<H, Float16>)
    return reinterpret_cast<Vec<double>>(
        _mm512_cvtps_pd(_mm256_cvtph_ps(reinterpret_cast<__m128i>(h))));
#endif
  const auto f = widen_lanes<kWidth<double>>(h, H{});
  return reinterpret_cast<Vec<double>>(_mm512_cvtps_pd(reinterpret_cast<__m256>(f)));
#else
  return __builtin_convertvector(widen_lanes<kWidth<double>>(h, H{}), Vec<double>);
#endif
}

// Bit reinterpretation between a Vec and its Mask (same size: a plain vector cast).
template <class T> inline Mask<T> bits(Vec<T> v) { return reinterpret_cast<Mask<T> &>(v); }
template <class T> inline Vec<T> from_bits(Mask<T> m) { return reinterpret_cast<Vec<T> &>(m); }

// The lane-wise maximum, NaN propagating as np.maximum does.
template <class T> inline Vec<T> max_nan(Vec<T> x, Vec<T> y) {
  return ((x > y) | (x != x)) ? x : y;
}

// Applies a scalar function to each lane (for functions with no vector form here).
template <class T, class F> inline Vec<T> per_lane(Vec<T> v, F f) {
  for (int l = 0; l < kWidth<T>; ++l) v[l] = f(v[l]);
  return v;
}

}  // namespace simd
}  // namespace cpu
}  // namespace needle
