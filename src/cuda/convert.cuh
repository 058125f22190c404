// Conversions between the dtypes (astype, a 16-bit float's scalar, the GEMM's loads and
// stores of 16-bit floats), bit for bit as NumPy's astype (ml_dtypes' for bfloat16) on x86-64.
// Integer arithmetic on the bit patterns wherever a 16-bit float or a NaN is involved, so the
// GPU (whose cvt instructions make their own NaNs) and the tests' CPU emulation give the same
// bits; cuda_fp16.h is not used (the emulation cannot compile it; its NaNs are not NumPy's).
// What NumPy and ml_dtypes do (tests/test_cuda.py compares every 16-bit pattern):
//  - float32, float64 -> float16 (NumPy): one rounding to nearest even from the source,
//    subnormals exact, overflow to inf; a NaN keeps its sign and its payload's top 10 bits
//    (0x7c01 when those are zero), not made quiet. float16 -> float32, float64: exact, a NaN's
//    payload shifted up.
//  - float32 -> bfloat16 (ml_dtypes): the same rounding, every NaN sign | 0x7fc0; float64 and
//    the integers go through float32 (float64 is rounded twice, as ml_dtypes does). bfloat16
//    -> float32 is its top half; bfloat16 -> float16: NaN sign | 0x7e00, else rounded once.
//  - float32 <-> float64 as x86's cvtss2sd / cvtsd2ss: a NaN made quiet, sign and payload kept.
//  - to an integer: truncation toward zero; NaN 0 and values out of range clamped (where
//    NumPy's result is undefined); to bool: nonzero (NaN too); the integers among themselves
//    wrap (two's complement), as NumPy's do.

#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels.h"
#include "runtime.h"  // (CUDA's __host__ __device__, or the emulation's)

namespace needle {
namespace cuda {

template <class T>
constexpr bool is_half = std::is_same<T, float16>::value || std::is_same<T, bfloat16>::value;

__host__ __device__ inline uint32_t bits_of(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof(u));
  return u;
}
__host__ __device__ inline uint64_t bits_of(double x) {
  uint64_t u;
  memcpy(&u, &x, sizeof(u));
  return u;
}
template <class F, class B> __host__ __device__ inline F value_of(B bits) {
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
template <class F> __host__ __device__ inline uint16_t half_bits(F x) {
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
template <class F> __host__ __device__ inline F from_half_bits(uint16_t h) {
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
__host__ __device__ inline uint16_t bfloat16_bits(float x) {
  const uint32_t u = bits_of(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) & 0x8000) | 0x7fc0;
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

// A 16-bit float's value as a float32 (exact): how the kernels compute with them.
__host__ __device__ inline float to_float(float16 x) { return from_half_bits<float>(x.bits); }
__host__ __device__ inline float to_float(bfloat16 x) {
  return value_of<float>(uint32_t(x.bits) << 16);
}

// float32 <-> float64 with x86's NaNs: quiet, sign and payload kept.
__host__ __device__ inline double widen(float x) {
  if (x == x) return static_cast<double>(x);
  const uint32_t u = bits_of(x);
  return value_of<double>((uint64_t(u >> 31) << 63) | 0x7ff8000000000000ull |
                          (uint64_t(u & 0x7fffffu) << 29));
}
__host__ __device__ inline float narrow(double x) {
  if (x == x) return static_cast<float>(x);
  const uint64_t u = bits_of(x);
  return value_of<float>((uint32_t(u >> 63) << 31) | 0x7fc00000u | uint32_t((u >> 29) & 0x7fffff));
}

// x truncated toward zero into the integer type I; NaN 0, out of range the nearest end.
template <class I, class F> __host__ __device__ inline I to_integer(F x) {
  // [low, high): the values whose truncation I holds, both ends exact in float and double.
  constexpr F low =
      std::is_same<I, uint8_t>::value ? F(0) : F(-0x1p31) * (sizeof(I) == 8 ? F(0x1p32) : F(1));
  constexpr F high = std::is_same<I, uint8_t>::value ? F(256) : -low;
  if (!(x == x)) return I(0);
  if (x <= low) return static_cast<I>(low);
  if (x >= high) return static_cast<I>(~static_cast<I>(low));
  return static_cast<I>(x);
}

// x converted to the dtype To, as astype does.
template <class To, class From> __host__ __device__ inline To convert(From x) {
  if constexpr (std::is_same<To, From>::value) {
    return x;
  } else if constexpr (is_half<From>) {
    if constexpr (std::is_same<To, bool>::value) {
      return (x.bits & 0x7fff) != 0;
    } else if constexpr (std::is_same<From, float16>::value && std::is_same<To, double>::value) {
      return from_half_bits<double>(x.bits);  // (through float32, x86 would quiet a NaN)
    } else if constexpr (std::is_same<To, float16>::value) {  // from bfloat16
      return (x.bits & 0x7fff) > 0x7f80 ? float16{static_cast<uint16_t>((x.bits & 0x8000) | 0x7e00)}
                                        : float16{half_bits(to_float(x))};
    } else {
      return convert<To>(to_float(x));
    }
  } else if constexpr (std::is_same<To, float16>::value) {
    if constexpr (std::is_same<From, double>::value) {
      return float16{half_bits(x)};
    } else {
      return float16{half_bits(convert<float>(x))};
    }
  } else if constexpr (std::is_same<To, bfloat16>::value) {
    return bfloat16{bfloat16_bits(convert<float>(x))};
  } else if constexpr (std::is_same<To, bool>::value) {
    return x != From(0);
  } else if constexpr (std::is_floating_point<From>::value && std::is_integral<To>::value) {
    return to_integer<To>(x);
  } else if constexpr (std::is_same<From, float>::value && std::is_same<To, double>::value) {
    return widen(x);
  } else if constexpr (std::is_same<From, double>::value && std::is_same<To, float>::value) {
    return narrow(x);
  } else {
    return static_cast<To>(x);  // an integer or bool to a float or an integer
  }
}

}  // namespace cuda
}  // namespace needle
