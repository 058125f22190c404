// exp, log, tanh, sigmoid and erf on float32 vectors (simd::Vec<float>, 16 lanes): no calls,
// no branches (lane selects instead), integer bit tricks for the powers of two. glibc's
// expf/logf/tanhf are scalar calls, and the compiler may only use its SIMD math library
// under -ffast-math, which would also break NaN handling elsewhere.
//
// Accuracy: Cephes' single-precision polynomials (minimax on the reduced range), within
// about 2 ulp of the correctly rounded result over the whole float range, denormal
// results included; NaN, +-inf and 0 map as in C. float64 keeps the std:: functions.

#pragma once

#include <cstdint>

#include "simd.h"

namespace needle {
namespace cpu {
namespace vmath {

using V = simd::Vec<float>;
using I = simd::Mask<float>;

inline V splat(float x) { return simd::splat(x); }

// 2^n for n in [-126, 127], lane-wise.
inline V pow2(I n) { return simd::from_bits<float>((n + 127) << 23); }

// e^x = 2^n e^r with n = round(x / ln 2), |r| <= ln(2)/2; ln 2 is split in a part whose
// product with n is exact and a small correction (Cody-Waite), so r carries no rounding
// error from the reduction.
inline V exp(V x) {
  // Beyond these e^x is inf or rounds to 0 in float32; clamping keeps n in [-150, 128]
  // (NaN is clamped too, so the int conversion below is defined; it is put back at the end).
  V xc = x > -104.0f ? x : splat(-104.0f);
  xc = xc < 89.0f ? xc : splat(89.0f);
  // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (in round-to-nearest).
  constexpr float kRound = 12582912.0f;
  const V n = (xc * 1.44269504088896341f + kRound) - kRound;
  V r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V er = p * (r * r) + r + 1.0f;
  // 2^n in two factors so that n down to -150 (denormal results) and up to 128 (overflow
  // to inf) need no special case; the last multiply rounds once.
  const I ni = __builtin_convertvector(n, I);
  const I n1 = ni >> 1, n2 = ni - n1;
  const V y = er * pow2(n1) * pow2(n2);
  return x != x ? x : y;
}

// log x = e ln 2 + log m with x = 2^e m, m in [sqrt(1/2), sqrt(2)); the polynomial is in
// m - 1, and e ln 2 is added in two parts as in exp.
inline V log(V x) {
  // Denormal inputs: scale into the normal range first.
  const I tiny = x < 1.17549435e-38f;
  const V xs = tiny ? x * 8388608.0f : x;  // 2^23
  const I b = simd::bits<float>(xs);
  I e = ((b >> 23) & 0xff) - 126 + (tiny & -23);
  V m = simd::from_bits<float>((b & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const I low = m < 0.707106781186547524f;
  e = e + low;  // a true lane is -1
  m = low ? m + m - 1.0f : m - 1.0f;
  const V z = m * m;
  V p = splat(7.0376836292e-2f);
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  const V fe = __builtin_convertvector(e, V);
  V y = p * m * z;
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  V r = m + y;
  r = r + fe * 0.693359375f;
  // Special cases, as C's logf: log(+-0) = -inf, log(x < 0) = NaN, log(inf) = inf.
  constexpr float kInf = __builtin_huge_valf();
  r = x == 0.0f ? splat(-kInf) : r;
  r = x < 0.0f ? splat(__builtin_nanf("")) : r;
  r = x == kInf ? splat(kInf) : r;
  return x != x ? x : r;
}

// tanh: an odd polynomial below |x| = 0.625, where 1 - 2/(e^2x + 1) would cancel;
// above it that formula is accurate, and it saturates to +-1 (e^2x = inf) by itself.
inline V tanh(V x) {
  const V z = x < 0.0f ? -x : x;
  const V s = vmath::exp(2.0f * z);
  V large = 1.0f - 2.0f / (s + 1.0f);
  large = x < 0.0f ? -large : large;
  const V zz = x * x;
  V p = splat(-5.70498872745e-3f);
  p = p * zz + 2.06390887954e-2f;
  p = p * zz - 5.37397155531e-2f;
  p = p * zz + 1.33314422036e-1f;
  p = p * zz - 3.33332819422e-1f;
  V small = p * zz * x + x;
  small = z == 0.0f ? x : small;  // keeps the sign of -0.0
  return z >= 0.625f ? large : small;
}

// 1 / (1 + e^-x) via e^-|x|, which never overflows; the numerator is chosen by the sign
// (one division: the compiler computed both quotients of a select of them).
inline V sigmoid(V x) {
  const V e = vmath::exp(x < 0.0f ? x : -x);
  return (x >= 0.0f ? splat(1.0f) : e) / (1.0f + e);
}

// erf: Eigen's float rational x P(x^2) / Q(x^2) on x clamped to [-4, 4] (erf is 1 in float
// beyond), within 5e-7 of the true value; NaN is put back at the end.
inline V erf(V x) {
  V c = x > -4.0f ? x : splat(-4.0f);
  c = c < 4.0f ? c : splat(4.0f);
  const V z = c * c;
  V p = splat(-2.72614225801306e-10f);
  p = p * z + 2.77068142495902e-08f;
  p = p * z - 2.10102402082508e-06f;
  p = p * z - 5.69250639462346e-05f;
  p = p * z - 7.34990630326855e-04f;
  p = p * z - 2.95459980854025e-03f;
  p = p * z - 1.60960333262415e-02f;
  V q = splat(-1.45660718464996e-05f);
  q = q * z - 2.13374055278905e-04f;
  q = q * z - 1.68282697438203e-03f;
  q = q * z - 7.37332916720468e-03f;
  q = q * z - 1.42647390514189e-02f;
  const V r = c * p / q;
  return x != x ? x : r;
}

// gelu x Phi(x) and its derivative Phi(x) + x phi(x), Phi the normal CDF through erf.
inline V gelu(V x) { return x * 0.5f * (1.0f + vmath::erf(x * 0.707106781186547524f)); }
inline V gelu_grad(V x) {
  const V pdf = vmath::exp(x * x * -0.5f) * 0.398942280401432678f;
  return 0.5f * (1.0f + vmath::erf(x * 0.707106781186547524f)) + x * pdf;
}

}  // namespace vmath
}  // namespace cpu
}  // namespace needle
