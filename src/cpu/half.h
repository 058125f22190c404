// float16 and bfloat16: two-byte storage types, and their scalar conversions bit for bit as
// NumPy (float16) and ml_dtypes (bfloat16), the NumPy backend's, do them. Nothing here is
// arithmetic on 16-bit values: the rows that compute them do it in float32 (widen), rounding
// each result once as astype does (narrow); simd.h has the same conversions on vectors.
//
// What they do, measured (NumPy 2.4, ml_dtypes 0.5): rounding is to nearest even with
// subnormals exact and overflow to inf. float16 keeps a NaN's payload (its top 10 bits; a
// NaN whose payload would vanish becomes 0x7c01) and does not quiet signaling NaNs, either
// way, and rounds a double once. bfloat16 turns every NaN into the quiet NaN 0x7fc0 (the sign
// kept), rounds a double or an integer through float32 (twice: 1 + 2^-8 + 2^-40 -> 1.0), and
// widens to double through float32 (a signaling NaN is quieted there). bfloat16 -> float16
// goes through float32 too, every NaN becoming 0x7e00 (sign kept): Eigen's conversion.
// (x86's F16C instructions quiet signaling NaNs, and AVX512-BF16's vcvtneps2bf16 flushes
// subnormals to zero and keeps payloads: simd.h leaves vectors with such lanes to its generic
// code.)

#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../common/half_bits.h"  // the scalar conversions, shared with the CUDA backend

namespace needle {
namespace cpu {

struct Float16 { uint16_t bits; };
struct BFloat16 { uint16_t bits; };
template <class T>
constexpr bool is_half_v = std::is_same_v<T, Float16> || std::is_same_v<T, BFloat16>;
template <class T> constexpr bool is_float_v = std::is_floating_point_v<T> || is_half_v<T>;
// The type a T is computed in: float for the 16-bit floats, T itself otherwise.
template <class T> using Compute = std::conditional_t<is_half_v<T>, float, T>;

// A value as its compute type (exact), and a computed value (float or double) as a T: the
// 16-bit floats round once from float32, as astype of the float32 row's result does.
template <class T> inline Compute<T> widen(T x) {
  if constexpr (std::is_same_v<T, Float16>) return from_half_bits<float>(x.bits);
  if constexpr (std::is_same_v<T, BFloat16>) return from_bfloat16_bits(x.bits);
  if constexpr (!is_half_v<T>) return x;
}
template <class T, class F> inline T narrow(F x) {
  if constexpr (std::is_same_v<T, Float16>) return {half_bits(static_cast<float>(x))};
  if constexpr (std::is_same_v<T, BFloat16>) return {bfloat16_bits(static_cast<float>(x))};
  if constexpr (!is_half_v<T>) return static_cast<T>(x);
}

template <class To, class From> inline To bit_cast(From x) {
  static_assert(sizeof(To) == sizeof(From));
  To y;
  std::memcpy(&y, &x, sizeof y);
  return y;
}

// A float as float16 the way Eigen (ml_dtypes' bfloat16 -> float16) rounds it.
inline uint16_t f16_from_float_eigen(float x) {
  const uint32_t u = bit_cast<uint32_t>(x);
  if ((u & 0x7fffffff) > 0x7f800000) return uint16_t(u >> 16 & 0x8000) | 0x7e00;
  return half_bits(x);
}

}  // namespace cpu
}  // namespace needle
