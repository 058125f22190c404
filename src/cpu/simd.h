// Portable SIMD for the elementwise and reduction kernels: GCC/Clang vector extensions.
//
// A Vec<T> is 64 bytes of T (16 floats, 8 doubles): one AVX-512 register, two AVX2 ones,
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

template <class T> using Vec = typename Types<T>::Vec;
template <class T> using Mask = typename Types<T>::Mask;
template <class T> using Bytes = typename Types<T>::Bytes;
template <class T> constexpr int kWidth = kBytes / sizeof(T);
// The lane type of a Vec (Vec<T> is not deducible through the alias; this recovers T).
template <class V> using Elem = std::remove_cv_t<std::remove_reference_t<decltype(V{}[0])>>;

template <class T> inline Vec<T> splat(T x) {
  Vec<T> v;  // not Vec<T>{} + x, which turns -0.0 into +0.0
  for (int l = 0; l < kWidth<T>; ++l) v[l] = x;
  return v;
}

template <class T> inline Vec<T> load(const T *p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <class T> inline void store(T *p, Vec<T> v) { std::memcpy(p, &v, sizeof v); }

// The first n < kWidth lanes; the rest are zero. With AVX-512 one masked instruction (lanes
// past n are never touched), else a memcpy of n elements (a call: its size is not constant).
template <class T> inline Vec<T> load_partial(const T *p, int64_t n) {
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

template <class T> inline void store_partial(T *p, Vec<T> v, int64_t n) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    _mm512_mask_storeu_ps(p, (1u << n) - 1, reinterpret_cast<__m512>(v));
  else
    _mm512_mask_storeu_pd(p, (1u << n) - 1, reinterpret_cast<__m512d>(v));
#else
  std::memcpy(p, &v, n * sizeof(T));
#endif
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
