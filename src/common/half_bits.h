// The scalar conversions between float32/float64 and the 16-bit floats' bit patterns, bit for
// bit as NumPy (float16) and ml_dtypes (bfloat16) do them, in integer arithmetic: one code for
// the CPU backend, the CUDA kernels (host and device) and the CUDA emulation, so that every
// backend rounds alike. What NumPy and ml_dtypes do is stated in src/cuda/convert.cuh and
// src/cpu/half.h, and tested over every 16-bit pattern (tests/test_halves_cpu.py,
// tests/test_cuda.py).

#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define NEEDLE_HOST_DEVICE __host__ __device__
#else
#define NEEDLE_HOST_DEVICE
#endif

namespace needle {

NEEDLE_HOST_DEVICE inline uint32_t bits_of(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof(u));
  return u;
}
NEEDLE_HOST_DEVICE inline uint64_t bits_of(double x) {
  uint64_t u;
  memcpy(&u, &x, sizeof(u));
  return u;
}
template <class F, class B> NEEDLE_HOST_DEVICE inline F value_of(B bits) {
  static_assert(sizeof(F) == sizeof(B), "a floating-point type and its bits");
  F x;
  memcpy(&x, &bits, sizeof(x));
  return x;
}

// The binary formats of float and double: bits, mantissa bits, exponent bias.
template <class F> struct Format;
template <> struct Format<float> {
  using Bits = uint32_t;
  static constexpr int kMant = 23, kBias = 127;
};
template <> struct Format<double> {
  using Bits = uint64_t;
  static constexpr int kMant = 52, kBias = 1023;
};

// The float16 bits of x (float or double), rounded once (NumPy's npy_floatbits_to_halfbits
// and npy_doublebits_to_halfbits).
template <class F> NEEDLE_HOST_DEVICE inline uint16_t half_bits(F x) {
  using B = typename Format<F>::Bits;
  constexpr int M = Format<F>::kMant, E = Format<F>::kBias, S = M - 10;  // S: bits dropped
  constexpr B kSign = B(1) << (8 * sizeof(B) - 1), kMantMask = (B(1) << M) - 1;
  constexpr B kInf = (kSign - 1) ^ kMantMask;
  const B u = bits_of(x), a = u & ~kSign;
  const uint16_t sign = static_cast<uint16_t>(u >> (8 * sizeof(B) - 16)) & 0x8000;
  if (a > kInf) {  // NaN: the payload's top bits, kept a NaN
    const uint16_t payload = static_cast<uint16_t>((a & kMantMask) >> S);
    return sign | 0x7c00 | (payload != 0 ? payload : 1);
  }
  // From 65520 (the largest float16 and half its ulp: a tie, to the even inf) on: inf.
  constexpr B kOverflow = (B(E + 15) << M) | (B(0x3ff) << S) | (B(1) << (S - 1));
  if (a >= kOverflow) return sign | 0x7c00;
  if (a >= (B(E - 14) << M)) {  // a normal float16: round the dropped bits (a carry is right)
    const B rounded = a + (B(1) << (S - 1)) - 1 + ((a >> S) & 1);
    return sign | static_cast<uint16_t>((rounded >> S) - (B(E - 15) << 10));
  }
  if (a <= (B(E - 25) << M)) return sign;  // at most half the least subnormal, 2^-25: zero
  // A float16 subnormal: the significand in units of 2^-24, rounded to nearest even.
  const int shift = E + M - 24 - static_cast<int>(a >> M);
  const B m = (a & kMantMask) | (B(1) << M);
  const B kept = m >> shift, rest = m & ((B(1) << shift) - 1), tie = B(1) << (shift - 1);
  return sign | static_cast<uint16_t>(kept + (rest > tie || (rest == tie && (kept & 1))));
}

// A float16's value as F (float or double), exact (NumPy's npy_halfbits_to_floatbits).
template <class F> NEEDLE_HOST_DEVICE inline F from_half_bits(uint16_t h) {
  using B = typename Format<F>::Bits;
  constexpr int M = Format<F>::kMant, E = Format<F>::kBias, S = M - 10;
  const B sign = B(h & 0x8000) << (8 * sizeof(B) - 16);
  int e = (h >> 10) & 0x1f;
  B m = h & 0x3ff;
  if (e == 0x1f) return value_of<F>(sign | (B(2 * E + 1) << M) | (m << S));  // inf, NaN
  if (e == 0) {
    if (m == 0) return value_of<F>(sign);
    for (e = 1; !(m & 0x400); --e) m <<= 1;  // a subnormal, normalised
    m &= 0x3ff;
  }
  return value_of<F>(sign | (B(e - 15 + E) << M) | (m << S));
}

// The bfloat16 bits of x, rounded to nearest even (ml_dtypes, Eigen's float_to_bfloat16_rtne).
NEEDLE_HOST_DEVICE inline uint16_t bfloat16_bits(float x) {
  const uint32_t u = bits_of(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) & 0x8000) | 0x7fc0;
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

// A bfloat16's value as a float32 (exact): its top half.
NEEDLE_HOST_DEVICE inline float from_bfloat16_bits(uint16_t b) {
  return value_of<float>(uint32_t(b) << 16);
}

}  // namespace needle
