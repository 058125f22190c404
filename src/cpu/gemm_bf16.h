// What the GEMM (gemm.cc) and the convolution (conv.cc) share for 16-bit operands, and the
// bfloat16 micro-kernel (AVX512-BF16, chosen at run time). vdpbf16ps adds to each of 16 float32
// sums the products of a pair of bfloat16 values, two consecutive depth steps: A's panel has
// them side by side (a row is contiguous in depth), B's holds for each pair of steps NR pairs
// (b[k][j], b[k+1][j]); an odd depth gets a zero step in both. Products are exact in float32
// and added in float32, but subnormal inputs count as zero and subnormal sums are flushed.

#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "gemm_kernel.h"
#include "half.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NEEDLE_X86_DISPATCH 1
#endif

namespace needle {
namespace cpu {

// The type of the sums of a product of T: float32 for the 16-bit types, rounded once at the end.
template <class T> using Acc = std::conditional_t<is_half_v<T>, float, T>;

// One value of S in a panel of P: S itself, or a 16-bit value widened to float32 (exact).
template <class P, class S> inline P panel_value(S x) {
  if constexpr (std::is_same_v<S, P>)
    return x;
  else if constexpr (std::is_same_v<S, Float16>)
    return from_half_bits<float>(x.bits);
  else
    return from_bfloat16_bits(x.bits);
}

// The bfloat16 kernel's blocking: 14 rows x 32 columns of float32 sums, as the AVX-512 float32
// kernel's, depth in pairs. KC = 1024 (an A micro-panel of 28 KiB) and a B block of 512 KiB,
// half this EPYC's 1 MiB L2, were the best of KC 256-2048 x B 256 KiB-1 MiB, pinned to one
// core: against torch's bfloat16 matmul 1024^3 went from 93% (KC 768, B 1 MiB) to 98%, 2048^3
// from 99% to 102%; deeper A panels mean fewer passes over the float32 sums, and 1024^3 has
// none. (The conv rows share KC as their panel stride; ResNet-9's convs timed the same.)
template <> struct microkernel::Blocking<BFloat16> {
  static constexpr int MR = 14, NR = 32;
  static constexpr int64_t KC = 1024, NC = (1 << 19) / (KC * 2) / NR * NR, MC = 2016 / MR * MR;
  // A panel rows 64 bytes longer than KC: at 2048 bytes every row fell in one of 2 of L1's
  // 64 sets (8 ways each), so a conv's 28-row tiles (16 channels, one vector per row)
  // evicted their own A rows every depth step; at 2112 bytes (33 lines) the rows spread
  // over distinct sets. ResNet-9's 7x7 input conv, bfloat16: 620 -> 465 us.
  static constexpr int64_t KA = KC + 32;
};

// Whether bfloat16 products run on the kernel below: the CPU has AVX512-BF16 and the
// environment's NEEDLE_GEMM_BF16 (read once, at first use) is not 0. (gemm.cc)
bool bf16_kernel_used();

#if NEEDLE_X86_DISPATCH
// The pairs (r0[j], r1[j]), j < 16, as 16 32-bit words, from n values of each row (r1 null:
// the zero step past an odd depth) and zeros past them. Masked loads: nothing past n is read.
// With `limit` (the end of the rows' array) a row with 16 values before it is loaded whole,
// its words past n then whatever follows, for callers that store only the first n: masked
// loads cost more (Zen 4: most of packing a conv's weight-gradient panels).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512i pair_row(const BFloat16 *r,
                                                                             __mmask16 m,
                                                                             const void *limit) {
  if (limit && static_cast<const void *>(r + 16) <= limit)
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(r)));
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r));
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512i pair_words(
    const BFloat16 *r0, const BFloat16 *r1, int64_t n, const void *limit = nullptr) {
  const __mmask16 m = static_cast<__mmask16>((1u << std::clamp<int64_t>(n, 0, 16)) - 1);
  const __m512i low = pair_row(r0, m, limit);
  if (!r1) return low;
  return _mm512_or_si512(low, _mm512_slli_epi32(pair_row(r1, m, limit), 16));
}

// dst[2j] = r0[j], dst[2j + 1] = r1[j] for j < write (<= 32): the pairs of two rows of B, from
// `read` <= write values of each and zeros past them; nothing past dst[2 write] is written.
// (`limit`: pair_words', for read == write.)
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void interleave_pairs(
    const BFloat16 *r0, const BFloat16 *r1, int64_t read, int64_t write, BFloat16 *dst,
    const void *limit = nullptr) {
  if (read < write) limit = nullptr;  // (the zeros)
  for (int h = 0; h < 2 && write > 16 * h; ++h) {
    const int64_t words = std::min<int64_t>(write - 16 * h, 16);
    _mm512_mask_storeu_epi32(
        dst + 32 * h, static_cast<__mmask16>((1u << words) - 1),
        pair_words(r0 + 16 * h, r1 ? r1 + 16 * h : nullptr, read - 16 * h, limit));
  }
}

// x's lanes in `lanes` rounded to bfloat16 at p, bit for bit as bfloat16_bits (half.h) rounds
// them: vcvtneps2bf16 rounds to nearest even too, but flushes float32 subnormals and keeps NaN
// payloads unquieted, so a vector holding such a lane (rare) goes lane by lane (simd.h's rule).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) inline void store_rounded(
    BFloat16 *p, __m512 x, __mmask16 lanes) {
  if (!(_mm512_fpclass_ps_mask(x, 0xa1) & lanes)) {  // QNaN, SNaN, denormal
    _mm256_mask_storeu_epi16(p, lanes, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x)));
    return;
  }
  alignas(64) float wide[16];
  _mm512_store_ps(wide, x);
  for (int j = 0; j < 16; ++j)
    if (lanes >> j & 1) p[j] = BFloat16{bfloat16_bits(wide[j])};
}

// C[0:ROWS, 0:cols] (+)= A_panel @ B_panel as gemm_kernel.h's micro_kernel, V vectors of 16
// float32 sums per row (NR = 16 V), kc even (the depth in bfloat16 values). With `rounded`
// (the last depth block of a product) the sums go rounded to bfloat16 there, same layout,
// instead of to C: rounding from registers saves a pass over the float32 sums, which was
// ~2% of a 1024^3 product. (bf16_kernel below: the same without `rounded`, for conv.cc.)
template <int ROWS, int V = 2>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) void bf16_tile(
    int64_t kc, const BFloat16 *__restrict a, const BFloat16 *__restrict b, float *__restrict c,
    int64_t ldc, bool accumulate, int64_t cols, BFloat16 *__restrict rounded) {
  constexpr int64_t KA = microkernel::Blocking<BFloat16>::KA, NR = 16 * V;
  for (int i = 0; i < ROWS; ++i) {
    _mm_prefetch(reinterpret_cast<const char *>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char *>(c + i * ldc + NR - 1), _MM_HINT_T0);
  }
  __m512 acc[ROWS][V];
#pragma GCC unroll 16
  for (int i = 0; i < ROWS; ++i)
    for (int v = 0; v < V; ++v) acc[i][v] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; k += 2) {
    __m512bh bv[V];
    for (int v = 0; v < V; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + 32 * v);
#pragma GCC unroll 32
    for (int i = 0; i < ROWS; ++i) {
      int32_t pair;
      std::memcpy(&pair, a + i * KA, sizeof pair);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
      for (int v = 0; v < V; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
    }
    a += 2;
    b += 2 * NR;
  }
  for (int v = 0; v < V; ++v) {
    const int64_t n = std::clamp<int64_t>(cols - 16 * v, 0, 16);
    const __mmask16 lanes = static_cast<__mmask16>((1u << n) - 1);
#pragma GCC unroll 32
    for (int i = 0; i < ROWS; ++i) {
      float *p = c + i * ldc + 16 * v;
      const __m512 sum =
          accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, p), acc[i][v]) : acc[i][v];
      if (rounded)
        store_rounded(rounded + i * ldc + 16 * v, sum, lanes);
      else
        _mm512_mask_storeu_ps(p, lanes, sum);
    }
  }
}

template <int ROWS, int V = 2>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) void bf16_kernel(
    int64_t kc, const BFloat16 *__restrict a, const BFloat16 *__restrict b, float *__restrict c,
    int64_t ldc, bool accumulate, int64_t cols) {
  bf16_tile<ROWS, V>(kc, a, b, c, ldc, accumulate, cols, nullptr);
}
#endif

}  // namespace cpu
}  // namespace needle
