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

#include "../common/half_bits.h"
#include "kernels.h"
#include "runtime.h"  // (CUDA's __host__ __device__, or the emulation's)

namespace needle {
namespace cuda {

template <class T>
constexpr bool is_half = std::is_same<T, float16>::value || std::is_same<T, bfloat16>::value;

// A 16-bit float's value as a float32 (exact): how the kernels compute with them.
__host__ __device__ inline float to_float(float16 x) { return from_half_bits<float>(x.bits); }
__host__ __device__ inline float to_float(bfloat16 x) { return from_bfloat16_bits(x.bits); }

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
