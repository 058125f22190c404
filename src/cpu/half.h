// float16 and bfloat16: two-byte storage types, and their scalar conversions bit for bit as
// NumPy (float16) and ml_dtypes (bfloat16), the NumPy backend's, do them. Nothing here is
// arithmetic on 16-bit values: the rows that compute take float32 (NDArray converts).
//
// What they do, measured (NumPy 2.4, ml_dtypes 0.5): rounding is to nearest even with
// subnormals exact and overflow to inf. float16 keeps a NaN's payload (its top 10 bits; a
// NaN whose payload would vanish becomes 0x7c01) and does not quiet signaling NaNs, either
// way, and rounds a double once. bfloat16 turns every NaN into the quiet NaN 0x7fc0 (the sign
// kept), rounds a double or an integer through float32 (twice: 1 + 2^-8 + 2^-40 -> 1.0), and
// widens to double through float32 (a signaling NaN is quieted there). bfloat16 -> float16
// goes through float32 too, every NaN becoming 0x7e00 (sign kept): Eigen's conversion.
// (x86's F16C instructions quiet signaling NaNs, and AVX512-BF16's vcvtneps2bf16 flushes
// subnormals to zero and keeps payloads: convert.cc fixes up the first and avoids the second.)

#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace needle {
namespace cpu {

struct Float16 { uint16_t bits; };
struct BFloat16 { uint16_t bits; };
template <class T>
constexpr bool is_half_v = std::is_same_v<T, Float16> || std::is_same_v<T, BFloat16>;

template <class To, class From> inline To bit_cast(From x) {
  static_assert(sizeof(To) == sizeof(From));
  To y;
  std::memcpy(&y, &x, sizeof y);
  return y;
}

// Round to nearest even, from float or double: the exponent rebiased into the 16-bit
// format's, ties settled by adding half an ulp less one plus the kept lowest bit.
// Subnormal results are the sum |x| + magic rounded by the FPU at the 16-bit subnormal's
// ulp (2^-24): magic is 0.5 for float, 2^28 for double.
template <class F> inline uint16_t f16_from(F x) {
  using U = std::conditional_t<sizeof(F) == 4, uint32_t, uint64_t>;
  constexpr int mant = std::numeric_limits<F>::digits - 1, shift = mant - 10;
  constexpr U exp_mask = U((sizeof(F) == 4 ? 0xff : 0x7ff)) << mant;
  const U u = bit_cast<U>(x), a = u & ~(U(1) << (8 * sizeof(F) - 1));
  const uint16_t sign = uint16_t(u >> (8 * sizeof(F) - 16)) & 0x8000;
  if (a > exp_mask) {  // NaN: NumPy keeps the top of the payload (never 0: that is inf)
    const uint16_t payload = uint16_t(a >> shift) & 0x3ff;
    return sign | 0x7c00 | (payload ? payload : 1);
  }
  if (a >= bit_cast<U>(F(65520))) return sign | 0x7c00;  // rounds to inf (or is inf)
  if (a < bit_cast<U>(F(0x1p-14))) {                      // a subnormal float16, or zero
    const F magic = sizeof(F) == 4 ? F(0.5) : F(0x1p28);
    return sign | uint16_t(bit_cast<U>(bit_cast<F>(a) + magic) - bit_cast<U>(magic));
  }
  const U odd = (a >> shift) & 1;
  const U rebias = U(std::numeric_limits<F>::max_exponent - 16) << mant;  // 127 - 15
  return sign | uint16_t((a - rebias + ((U(1) << (shift - 1)) - 1) + odd) >> shift);
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, a = h & 0x7fff;
  if (a >= 0x7c00) return bit_cast<float>(sign | 0x7f800000 | (a & 0x3ff) << 13);  // inf, NaN
  if (a < 0x400) return bit_cast<float>(sign | bit_cast<uint32_t>(float(a) * 0x1p-24f));
  return bit_cast<float>(sign | (a + 0x1c000) << 13);
}
inline double f16_to_double(uint16_t h) {  // NaNs keep their payload and signaling bit
  if ((h & 0x7fff) <= 0x7c00) return f16_to_float(h);
  return bit_cast<double>(uint64_t(h & 0x8000) << 48 | 0x7ff0000000000000 |
                          uint64_t(h & 0x3ff) << 42);
}

inline uint16_t bf16_from_float(float x) {
  const uint32_t u = bit_cast<uint32_t>(x);
  if ((u & 0x7fffffff) > 0x7f800000) return uint16_t(u >> 16 & 0x8000) | 0x7fc0;
  return uint16_t((u + 0x7fff + (u >> 16 & 1)) >> 16);
}
inline float bf16_to_float(uint16_t b) { return bit_cast<float>(uint32_t(b) << 16); }

// A float as float16 the way Eigen (ml_dtypes' bfloat16 -> float16) rounds it.
inline uint16_t f16_from_float_eigen(float x) {
  const uint32_t u = bit_cast<uint32_t>(x);
  if ((u & 0x7fffffff) > 0x7f800000) return uint16_t(u >> 16 & 0x8000) | 0x7e00;
  return f16_from(x);
}

}  // namespace cpu
}  // namespace needle
