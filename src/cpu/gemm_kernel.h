// The GEMM micro-kernel and the blocking constants of each instruction set.
//
// The micro-kernel computes one MR x NR tile of C = A @ B over a depth of kc from packed
// panels: A's panel holds MR rows, each kc long at a fixed stride of KC elements (so every
// row's broadcast is a constant displacement from one pointer), B's panel holds kc rows of
// NR contiguous values (NR/width vector loads per depth step). The MR x NR accumulators live
// in registers for the whole depth, and C is read and written once per call.
//
// The instruction set is picked at compile time from the compiler's predefined macros:
// AVX-512F (-march=native on this project's machines), AVX2+FMA, or portable C++ that
// the compiler vectorises for whatever the target is (NEEDLE_PORTABLE=ON builds).

#pragma once

#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace needle {
namespace cpu {
namespace microkernel {

// ---- vector traits -------------------------------------------------------------------
// Simd<T>: a register of `width` T's with the handful of operations the kernel needs. On
// x86 each instruction set is a table, a row per T: NEEDLE_X86_SIMD(T, Reg, prefix, suffix)
// makes Simd<T> of the intrinsics prefix_OP_suffix (_mm512_fmadd_ps, _mm256_loadu_pd, ...)
// on the register type Reg. The broadcast is set1 of the value in memory: one
// vbroadcastss/sd (with AVX2 GCC keeps the accumulators in registers across it, where
// _mm256_broadcast_ss(p) made it spill some of them every depth step).

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
template <class T> struct Simd;
#define NEEDLE_X86_SIMD(T, REG, PREFIX, SUFFIX)                                      \
  template <> struct Simd<T> {                                                       \
    using Reg = REG;                                                                 \
    static constexpr int width = sizeof(Reg) / sizeof(T);                            \
    static Reg zero() { return PREFIX##_setzero_##SUFFIX(); }                        \
    static Reg load(const T *p) { return PREFIX##_load_##SUFFIX(p); }                \
    static Reg loadu(const T *p) { return PREFIX##_loadu_##SUFFIX(p); }              \
    static Reg broadcast(const T *p) { return PREFIX##_set1_##SUFFIX(*p); }          \
    static Reg fma(Reg a, Reg b, Reg c) { return PREFIX##_fmadd_##SUFFIX(a, b, c); } \
    static Reg add(Reg a, Reg b) { return PREFIX##_add_##SUFFIX(a, b); }             \
    static void storeu(T *p, Reg v) { PREFIX##_storeu_##SUFFIX(p, v); }              \
  }
#endif

#if defined(__AVX512F__)
constexpr const char *kIsa = "avx512";
NEEDLE_X86_SIMD(float, __m512, _mm512, ps);
NEEDLE_X86_SIMD(double, __m512d, _mm512, pd);
// 32 zmm registers: 14 rows x 2 vectors = 28 accumulators + 2 for the B row; the A value
// is an embedded broadcast operand of the FMA and needs no register. Per depth step that
// is 28 FMAs for 2 loads + 14 broadcasts, under the 2 loads/cycle that keep 2 FMA ports busy.
constexpr int kMR = 14;
constexpr int kVectorsPerRow = 2;

// Transposes the 16 x 16 floats of r[0..16) in registers: unpack pairs, then 2 x 2 and 4 x 4
// blocks of 128-bit lanes.
inline void transpose_16x16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + i + 4], 0x88);
      t[8 * h + i + 4] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

#elif defined(__AVX2__) && defined(__FMA__)
constexpr const char *kIsa = "avx2";
NEEDLE_X86_SIMD(float, __m256, _mm256, ps);
NEEDLE_X86_SIMD(double, __m256d, _mm256, pd);
// 16 ymm registers: 6 rows x 2 vectors = 12 accumulators + 2 for B + 1 broadcast.
constexpr int kMR = 6;
constexpr int kVectorsPerRow = 2;

#else
constexpr const char *kIsa = "portable";
// 16-byte GCC/Clang vector types: SSE2 registers on any x86-64, NEON on ARM; the compiler
// emits FMA for a * b + c where the target has it.
template <class T> struct Simd {
  static constexpr int width = 16 / sizeof(T);
  typedef T Reg __attribute__((vector_size(16)));
  static Reg zero() { return Reg{}; }
  static Reg load(const T *p) { return loadu(p); }
  static Reg loadu(const T *p) {
    Reg r;
    __builtin_memcpy(&r, p, sizeof r);
    return r;
  }
  static Reg broadcast(const T *p) {
    Reg r;  // not Reg{} + *p, which turns -0.0 into +0.0
    for (int l = 0; l < width; ++l) r[l] = *p;
    return r;
  }
  static Reg fma(Reg a, Reg b, Reg c) { return a * b + c; }
  static Reg add(Reg a, Reg b) { return a + b; }
  static void storeu(T *p, Reg v) { __builtin_memcpy(p, &v, sizeof v); }
};
// 16 vector registers (SSE2): 6 rows x 2 vectors = 12 accumulators + 2 for B + 1 for A.
constexpr int kMR = 6;
constexpr int kVectorsPerRow = 2;
#endif
#undef NEEDLE_X86_SIMD

// ---- blocking --------------------------------------------------------------------------
// Loop order (outer to inner): rows of A in blocks of MC -> depth in blocks of KC (pack the
// MC x KC block of A) -> columns of B in blocks of NC (pack the KC x NC block of B) -> one
// A micro-panel (MR x KC) -> every B micro-panel of the block (KC x NR) -> micro-kernel.
// So the A micro-panel is reused NC/NR times from L1, the packed B block is reused by
// every micro-panel of A from L2, and the A block only needs to come from L3.
template <class T> struct Blocking {
  static constexpr int MR = kMR;
  static constexpr int NR = kVectorsPerRow * Simd<T>::width;
  // Depth per block: the A micro-panel, MR x KC, must stay in L1 (48 KiB on the Xeon this
  // is tuned for, 32 KiB on most AVX2 parts) while B micro-panels stream past it:
  // 14 x 384 x 4 B = 21 KiB for float32 (half that in depth for float64, same bytes).
  // Deeper blocks also mean fewer passes over C (one read+write of C per block).
  static constexpr int64_t KC = 1536 / sizeof(T);
  // Row stride of a packed A micro-panel: KC (1536 B, 24 cache lines: 14 or 28 rows fall in
  // 8 different L1 sets).
  static constexpr int64_t KA = KC;
  // Columns per block: the packed KC x NC block of B stays in L2 (2 MiB per core here,
  // 1 MiB or more on most recent x86): 384 x 672 x 4 B = 1 MiB, half of L2, leaving room
  // for the A panels and C tiles passing through. A multiple of NR.
  static constexpr int64_t NC = (1 << 20) / (KC * sizeof(T)) / NR * NR;
  // Rows per block: the packed MC x KC block of A is read once per B block from L3, so its
  // size is bounded only to keep the workspace small: 2016 x 384 x 4 B = 3 MiB.
  static constexpr int64_t MC = 2016 / MR * MR;
};

// ---- micro-kernel ----------------------------------------------------------------------

// C[0:ROWS, 0:cols] (+)= A_panel[0:ROWS, 0:kc] @ B_panel[0:kc, 0:NR] where ROWS <= MR is a
// template parameter (edge rows cost nothing extra) and cols <= NR is masked at the store
// (the packed B panel is zero-padded). `accumulate` adds to C instead of overwriting it.
// Each C element is one fused multiply-add chain in depth order, the same for every tile
// shape, so results do not depend on how the matrix was split into tiles or threads.
// V vectors per row (NR = V * width): the blocking's kVectorsPerRow, or 1 for narrow outputs
// (conv2d with 16 channels), whose tiles then take up to twice as many rows.
template <class T, int ROWS, int V = kVectorsPerRow>
void micro_kernel(int64_t kc, const T *__restrict a, const T *__restrict b, T *__restrict c,
                  int64_t ldc, bool accumulate, int64_t cols) {
  using S = Simd<T>;
  using Reg = typename S::Reg;
  constexpr int W = S::width, NR = V * W;
  constexpr int64_t KA = Blocking<T>::KA;  // row stride of the packed A panel

#if defined(__AVX512F__) || defined(__AVX2__)
  // The C tile is read (or written) right after the depth loop: start fetching it now.
  for (int i = 0; i < ROWS; ++i) {
    _mm_prefetch(reinterpret_cast<const char *>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char *>(c + i * ldc + NR - 1), _MM_HINT_T0);
  }
#endif

  Reg acc[ROWS][V];
#pragma GCC unroll 16
  for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[i][v] = S::zero();

#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    Reg bv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) bv[v] = S::load(b + v * W);
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i) {
      const Reg av = S::broadcast(a + i * KA);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[i][v] = S::fma(av, bv[v], acc[i][v]);
    }
    a += 1;
    b += NR;
  }

  if (cols == NR) {
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        T *p = c + i * ldc + v * W;
        S::storeu(p, accumulate ? S::add(S::loadu(p), acc[i][v]) : acc[i][v]);
      }
    return;
  }
  alignas(64) T tile[ROWS * NR];
  for (int i = 0; i < ROWS; ++i)
    for (int v = 0; v < V; ++v) S::storeu(tile + i * NR + v * W, acc[i][v]);
  for (int i = 0; i < ROWS; ++i)
    for (int64_t j = 0; j < cols; ++j)
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + tile[i * NR + j] : tile[i * NR + j];
}

}  // namespace microkernel
}  // namespace cpu
}  // namespace needle
