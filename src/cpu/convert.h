// Conversions between dtypes: the astype primitive's kernel, and the float32 <-> 16-bit
// paths the GEMM packs and rounds through.

#pragma once

#include <cstdint>

#include "array.h"

namespace needle {
namespace cpu {

// n values to float32 (exact) or from float32 (rounded to nearest even), bit for bit as
// half.h's scalar conversions, on the calling thread: simd.h's vector conversions, which the
// elementwise rows inline.
void to_float(const Float16 *in, float *out, int64_t n);
void to_float(const BFloat16 *in, float *out, int64_t n);
void from_float(const float *in, Float16 *out, int64_t n);
void from_float(const float *in, BFloat16 *out, int64_t n);

// out = a converted to out's dtype elementwise, any pair of dtypes, split across threads when
// large (out.size elements; the caller has checked a.size). Floats to 16 bits as half.h says;
// float to integer truncates toward zero, NaN and values outside the integer's range giving
// an unspecified value in it (NumPy's differ across platforms: here NaN is 0, the rest
// clamp); to bool is != 0 (NaN is true); integers wrap as NumPy's casts do.
void convert(const Array &a, Array &out);

// True when the CPU has AVX512-BF16 (the bfloat16 GEMM kernel's vdpbf16ps), at run time;
// false off x86.
bool cpu_has_bf16();

}  // namespace cpu
}  // namespace needle
