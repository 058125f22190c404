#include "gemm.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cassert>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>

#include "array.h"
#include "convert.h"
#include "gemm_bf16.h"
#include "gemm_kernel.h"
#include "thread_pool.h"

namespace needle {
namespace cpu {

using microkernel::Blocking;

namespace {

// The element types of a product: S the operands' in memory, P the packed panels' (S; float32
// for 16-bit operands, converted while packing; or bfloat16 pairs for the AVX512-BF16 kernel)
// and Acc<S> the sums' (gemm_bf16.h).

// n values of S from `from` into a panel of P.
template <class S, class P> inline void copy_run(const S *from, int64_t n, P *to) {
  if constexpr (std::is_same_v<S, P>) {
    std::memcpy(to, from, n * sizeof(S));
  } else {
    to_float(from, to, n);
  }
}

// Below this many multiply-adds per thread a GEMM is not split across threads: waking a
// worker and the extra barrier cost a few microseconds, ~2^20 multiply-adds' worth.
constexpr int64_t kMinMultiplyAddsPerThread = int64_t{1} << 20;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Splits `total` into equal blocks of at most `max_block` (a multiple of `unit`), so there
// is no thin remainder block: 1000 deep with KC = 384 gives 334 + 333 + 333, not 384 + 384
// + 232. Depends only on the problem size, never on the thread count.
inline int64_t balanced_block(int64_t total, int64_t max_block, int64_t unit) {
  const int64_t blocks = ceil_div(total, max_block);
  return std::min(max_block, round_up(ceil_div(total, blocks), unit));
}

// ---- packing ---------------------------------------------------------------------------

#if defined(__AVX512F__)
// A transposed A panel (MR <= 16 rows contiguous per depth step) through registers, for both
// panel types: per block of `step` depth, load(k0, q) gives vector q of 16 (a depth step of
// the rows, or for bfloat16 pairs a pair of steps), a 16 x 16 transpose turns them into one
// vector per row, stored at panel + i KA + k0. Returns the depth covered (a multiple of step).
template <class P, class Load>
inline int64_t pack_a_transposed_through(int64_t rows, int64_t depth, int64_t step,
                                         P *__restrict panel, Load load) {
  constexpr int64_t KA = Blocking<P>::KA;
  static_assert(Blocking<P>::MR <= 16, "a panel's rows must fit one register");
  const int64_t covered = depth / step * step;
  __m512 r[16];
  for (int64_t k0 = 0; k0 < covered; k0 += step) {
    for (int q = 0; q < 16; ++q) r[q] = load(k0, q);
    microkernel::transpose_16x16(r);
    for (int64_t i = 0; i < rows; ++i) _mm512_storeu_ps(panel + i * KA + k0, r[i]);
  }
  return covered;
}

// A transposed float A panel (row i at a + i, depth k at a + k * col_stride) 16 deep at a
// time, the rows past `rows` masked off (never read).
inline int64_t pack_a_transposed_blocks(const float *a, int64_t col_stride, int64_t rows,
                                        int64_t depth, float *__restrict panel) {
  const __mmask16 valid = static_cast<__mmask16>((1u << rows) - 1);
  return pack_a_transposed_through(rows, depth, 16, panel, [&](int64_t k0, int q) {
    return _mm512_maskz_loadu_ps(valid, a + (k0 + q) * col_stride);
  });
}

// The whole 16 x 16 blocks of a transposed float B panel (column j at b + j * col_stride,
// contiguous in depth) through registers: 16 loads, the transpose, 16 stores per block
// instead of 256 scalar moves. Returns the depth covered (a multiple of 16); columns past the
// last whole 16 are copied one by one over that depth.
inline int64_t pack_b_transposed_blocks(const float *b, int64_t col_stride, int64_t cols,
                                        int64_t depth, float *__restrict panel) {
  constexpr int64_t NR = Blocking<float>::NR;
  const int64_t k_blocks = depth / 16 * 16, j_blocks = cols / 16 * 16;
  __m512 r[16];
  for (int64_t j0 = 0; j0 < j_blocks; j0 += 16)
    for (int64_t k0 = 0; k0 < k_blocks; k0 += 16) {
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(b + (j0 + i) * col_stride + k0);
      microkernel::transpose_16x16(r);
      for (int i = 0; i < 16; ++i) _mm512_store_ps(panel + (k0 + i) * NR + j0, r[i]);
    }
  for (int64_t j = j_blocks; j < cols; ++j)
    for (int64_t k = 0; k < k_blocks; ++k) panel[k * NR + j] = b[j * col_stride + k];
  return k_blocks;
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && NEEDLE_X86_DISPATCH
#define NEEDLE_PAIR_TRANSPOSE 1
// Transposed bfloat16 A for the pair kernel, 32 deep at a time: for each pair of depth steps
// the 16 rows' pairs as 16 words (pair_words), then a 16 x 16 transpose of the words gives
// each row its 16 pairs, one store. Returns the depth covered (a multiple of 32). Against
// one element at a time, 784 x 128 x 512 (x.T @ g of an MLP layer at batch 128) went from
// 586 to 538 us on one core (torch's bfloat16 matmul: 483).
inline int64_t pack_a_transposed_pairs(const BFloat16 *a, int64_t col_stride, int64_t rows,
                                       int64_t depth, BFloat16 *__restrict panel) {
  return pack_a_transposed_through(rows, depth, 32, panel, [&](int64_t k0, int q) {
    const BFloat16 *step = a + (k0 + 2 * q) * col_stride;
    return _mm512_castsi512_ps(pair_words(step, step + col_stride, rows));
  });
}

// Transposed bfloat16 B (column j contiguous in depth, so a pair is one word of it) for the
// pair kernel: 16 columns x 16 pairs through a 16 x 16 transpose of words, 16 loads and 16
// stores instead of 256 word copies (128 x 512 x 512 as g @ W.T: 364 -> 329 us, torch 318).
// Returns the pairs covered (a multiple of 16); columns from `cols` up get zeros.
inline int64_t pack_b_transposed_pairs(const BFloat16 *b, int64_t col_stride, int64_t cols,
                                       int64_t depth, BFloat16 *__restrict panel) {
  constexpr int64_t NR = Blocking<BFloat16>::NR;
  const int64_t pair_blocks = depth / 32 * 16;
  __m512 r[16];
  for (int64_t q0 = 0; q0 < pair_blocks; q0 += 16)
    for (int64_t j0 = 0; j0 < NR; j0 += 16) {
      for (int64_t j = 0; j < 16; ++j)
        r[j] = j0 + j < cols ? _mm512_loadu_ps(b + (j0 + j) * col_stride + 2 * q0)
                             : _mm512_setzero_ps();
      microkernel::transpose_16x16(r);
      for (int q = 0; q < 16; ++q) _mm512_storeu_ps(panel + ((q0 + q) * NR + j0) * 2, r[q]);
    }
  return pair_blocks;
}
#endif

// Copies rows [0, rows) x depth [0, depth) of A (a points at the first element) into a
// micro-panel laid out row by row at stride KA, the layout the micro-kernel broadcasts from
// (a bfloat16 kernel reads a pair of depth steps at once: an odd depth gets a zero after).
template <class S, class P>
void pack_a_panel(const S *a, int64_t row_stride, int64_t col_stride, int64_t rows, int64_t depth,
                  P *__restrict panel) {
  constexpr int64_t KA = Blocking<P>::KA;
  if constexpr (std::is_same_v<P, BFloat16>)
    if (depth % 2)
      for (int64_t i = 0; i < rows; ++i) panel[i * KA + depth] = P{};
  if (col_stride == 1) {  // row-major A: each panel row is one contiguous run
    for (int64_t i = 0; i < rows; ++i) copy_run(a + i * row_stride, depth, panel + i * KA);
  } else if (row_stride == 1) {  // transposed A: MR contiguous values per depth step
    int64_t done = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<S, float>)  // (x.T @ g, a Linear layer's weight gradient)
      done = pack_a_transposed_blocks(a, col_stride, rows, depth, panel);
#endif
#if NEEDLE_PAIR_TRANSPOSE
    if constexpr (std::is_same_v<S, BFloat16> && std::is_same_v<P, BFloat16>)
      done = pack_a_transposed_pairs(a, col_stride, rows, depth, panel);
#endif
    for (int64_t k = done; k < depth; ++k) {
      const S *src = a + k * col_stride;
      for (int64_t i = 0; i < rows; ++i) panel[i * KA + k] = panel_value<P>(src[i]);
    }
  } else {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t k = 0; k < depth; ++k)
        panel[i * KA + k] = panel_value<P>(a[i * row_stride + k * col_stride]);
  }
}

// Copies depth [0, depth) x columns [0, cols) of B into a micro-panel of `depth` rows of NR
// contiguous values, zero-padding columns cols..NR so edge tiles need no special kernel.
template <class S, class P>
void pack_b_panel(const S *b, int64_t row_stride, int64_t col_stride, int64_t cols, int64_t depth,
                  P *__restrict panel) {
  constexpr int64_t NR = Blocking<P>::NR;
  if (col_stride == 1 && cols == NR) {  // row-major B: a fixed-size copy per depth step
    for (int64_t k = 0; k < depth; ++k) copy_run(b + k * row_stride, NR, panel + k * NR);
    return;
  }
  if (cols < NR)
    for (int64_t k = 0; k < depth; ++k)
      std::fill(panel + k * NR + cols, panel + (k + 1) * NR, P(0));
  if (col_stride == 1) {
    for (int64_t k = 0; k < depth; ++k) copy_run(b + k * row_stride, cols, panel + k * NR);
  } else if (row_stride == 1) {
    // Transposed B: each column is contiguous in depth. Go 16 deep at a time so the writes
    // stay within a few cache lines of the panel.
    constexpr int64_t kStep = 16;
    int64_t done = 0;
#if defined(__AVX512F__)
    // 128 x 512 x 512 with B transposed (x @ W.T, a Linear layer's input gradient) packed
    // 512 x 512 one element at a time for ~80 us of its ~500 us on one core.
    if constexpr (std::is_same_v<S, float>)
      done = pack_b_transposed_blocks(b, col_stride, cols, depth, panel);
#endif
    for (int64_t k0 = done; k0 < depth; k0 += kStep) {
      const int64_t k1 = std::min(depth, k0 + kStep);
      for (int64_t j = 0; j < cols; ++j) {
        const S *src = b + j * col_stride;
        for (int64_t k = k0; k < k1; ++k) panel[k * NR + j] = panel_value<P>(src[k]);
      }
    }
  } else {
    for (int64_t k = 0; k < depth; ++k)
      for (int64_t j = 0; j < cols; ++j)
        panel[k * NR + j] = panel_value<P>(b[k * row_stride + j * col_stride]);
  }
}

// ---- bfloat16 pairs (gemm_bf16.h) ---------------------------------------------------------
#if NEEDLE_X86_DISPATCH
constexpr int64_t kPairNR = Blocking<BFloat16>::NR;

// A row-major B's pairs of depth steps, the step past an odd depth zero. Returns the pairs.
__attribute__((target("avx512f,avx512bw,avx512vl"))) int64_t pack_b_pair_rows(
    const BFloat16 *b, int64_t row_stride, int64_t cols, int64_t depth, BFloat16 *panel) {
  for (int64_t k = 0; k < depth; k += 2)
    interleave_pairs(b + k * row_stride, k + 1 < depth ? b + (k + 1) * row_stride : nullptr, cols,
                     kPairNR, panel + k * kPairNR);
  return (depth + 1) / 2;
}

template <>
void pack_b_panel(const BFloat16 *b, int64_t row_stride, int64_t col_stride, int64_t cols,
                  int64_t depth, BFloat16 *__restrict panel) {
  int64_t k2 = 0;
  if (col_stride == 1) {
    k2 = pack_b_pair_rows(b, row_stride, cols, depth, panel);
  } else if (row_stride == 1) {  // transposed B: a pair is one 32-bit word of a column
    int64_t done = 0;
#if NEEDLE_PAIR_TRANSPOSE
    done = pack_b_transposed_pairs(b, col_stride, cols, depth, panel);
#endif
    for (int64_t p0 = done; p0 < depth / 2; p0 += 16) {
      const int64_t p1 = std::min(depth / 2, p0 + 16);
      for (int64_t j = 0; j < kPairNR; ++j)
        for (int64_t q = p0; q < p1; ++q) {
          if (j < cols)
            std::memcpy(panel + (q * kPairNR + j) * 2, b + j * col_stride + 2 * q, 4);
          else
            std::memset(panel + (q * kPairNR + j) * 2, 0, 4);
        }
    }
    k2 = depth / 2;
  }
  for (; k2 < (depth + 1) / 2; ++k2)
    for (int64_t j = 0; j < kPairNR; ++j)
      for (int64_t h = 0; h < 2; ++h) {
        const int64_t k = 2 * k2 + h;
        panel[(k2 * kPairNR + j) * 2 + h] =
            k < depth && j < cols ? b[k * row_stride + j * col_stride] : BFloat16{};
      }
}

#endif

// ---- the blocked algorithm -------------------------------------------------------------

template <class P>
using Kernel = void (*)(int64_t, const P *, const P *, Acc<P> *, int64_t, bool, int64_t);
// The bfloat16 tile kernel also takes where to write its sums rounded (gemm_bf16.h), or null.
using PairKernel = void (*)(int64_t, const BFloat16 *, const BFloat16 *, float *, int64_t, bool,
                            int64_t, BFloat16 *);
template <class P>
using TileKernel = std::conditional_t<std::is_same_v<P, BFloat16>, PairKernel, Kernel<P>>;

// kernels[r] computes an r-row tile, r in [1, MR].
template <class P, int... R> constexpr auto make_kernels(std::integer_sequence<int, R...>) {
#if NEEDLE_X86_DISPATCH
  if constexpr (std::is_same_v<P, BFloat16>)
    return std::array<PairKernel, sizeof...(R) + 1>{nullptr, &bf16_tile<R + 1>...};
  else
#endif
    return std::array<Kernel<P>, sizeof...(R) + 1>{nullptr,
                                                   &microkernel::micro_kernel<P, R + 1>...};
}
template <class P>
constexpr auto kKernels = make_kernels<P>(std::make_integer_sequence<int, Blocking<P>::MR>{});

// One 2-D matrix product c (m x p, row stride ldc) = a (m x n) @ b (n x p).
template <class S> struct Problem {
  int64_t m, n, p;
  const S *a;
  int64_t a_row, a_col;
  const S *b;
  int64_t b_row, b_col;
  Acc<S> *c;
  int64_t ldc;
  // 16-bit operands: c is float32 scratch, rounded into `rounded` (same layout) as each strip
  // of micro-tiles gets its last depth block, while it is in cache.
  S *rounded = nullptr;
};

template <class P> struct Plan {
  int64_t mc, kc, nc;  // block sizes for this problem (<= MC, KC, NC); kc even for pairs

  template <class S>
  explicit Plan(const Problem<S> &pr)
      : mc(balanced_block(pr.m, Blocking<P>::MC, Blocking<P>::MR)),
        kc(balanced_block(pr.n, Blocking<P>::KC, std::is_same_v<P, BFloat16> ? 2 : 1)),
        nc(balanced_block(pr.p, Blocking<P>::NC, Blocking<P>::NR)) {}

  int64_t a_block_elements() const { return mc * Blocking<P>::KA; }
  int64_t b_block_elements() const { return nc * kc; }
  // Elements of workspace the product needs: one packed A block and one packed B block.
  int64_t workspace_elements() const { return a_block_elements() + b_block_elements(); }
};

// A grow-only, 64-byte aligned scratch buffer per thread (the caller and each pool worker
// have their own) and slot, reused across calls so a GEMM does not pay for allocating and
// faulting in its pack buffers every time. Slot 0 holds pack buffers; a transposed product
// (gemm_product) keeps its output in kTransposeSlot while the product packs into slot 0.
constexpr int kPackSlot = 0, kTransposeSlot = 1;
template <class T, int Slot = kPackSlot> T *workspace(int64_t elements) {
  struct Free {
    void operator()(void *p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> storage;
  thread_local size_t capacity = 0;
  const size_t bytes = static_cast<size_t>(elements) * sizeof(T);
  if (bytes > capacity) {
    storage.reset();
    capacity = 0;
    storage.reset(aligned_bytes(bytes));
    capacity = bytes;
  }
  return static_cast<T *>(storage.get());
}

// One product on the calling thread, pack buffers (of P) from its workspace.
template <class S, class P> void gemm_serial(const Problem<S> &pr) {
  constexpr int64_t MR = Blocking<P>::MR, NR = Blocking<P>::NR, KA = Blocking<P>::KA;
  const Plan<P> plan(pr);
  P *const a_block = workspace<P>(plan.workspace_elements());
  P *const b_block = a_block + plan.a_block_elements();
  for (int64_t r0 = 0; r0 < pr.m; r0 += plan.mc) {
    const int64_t rows = std::min(plan.mc, pr.m - r0), row_tiles = ceil_div(rows, MR);
    for (int64_t d0 = 0; d0 < pr.n; d0 += plan.kc) {
      const int64_t depth = std::min(plan.kc, pr.n - d0);
      const int64_t kernel_depth = std::is_same_v<P, BFloat16> ? depth + depth % 2 : depth;
      for (int64_t it = 0; it < row_tiles; ++it)
        pack_a_panel(pr.a + (r0 + it * MR) * pr.a_row + d0 * pr.a_col, pr.a_row, pr.a_col,
                     std::min(MR, rows - it * MR), depth, a_block + it * MR * KA);
      for (int64_t c0 = 0; c0 < pr.p; c0 += plan.nc) {
        const int64_t cols = std::min(plan.nc, pr.p - c0), col_tiles = ceil_div(cols, NR);
        for (int64_t jt = 0; jt < col_tiles; ++jt)
          pack_b_panel(pr.b + d0 * pr.b_row + (c0 + jt * NR) * pr.b_col, pr.b_row, pr.b_col,
                       std::min(NR, cols - jt * NR), depth, b_block + jt * NR * kernel_depth);
        // Row of micro-tiles by row of micro-tiles, so each A micro-panel stays in L1
        // across the B micro-panels of the block.
        for (int64_t it = 0; it < row_tiles; ++it) {
          const int64_t i = r0 + it * MR;
          const TileKernel<P> kernel = kKernels<P>[std::min(MR, pr.m - i)];
          const bool last = d0 + depth == pr.n;
          for (int64_t jt = 0; jt < col_tiles; ++jt) {
            const int64_t j = c0 + jt * NR;
            if constexpr (std::is_same_v<P, BFloat16>)
              kernel(kernel_depth, a_block + it * MR * KA, b_block + jt * NR * kernel_depth,
                     pr.c + i * pr.ldc + j, pr.ldc, d0 > 0, std::min(NR, pr.p - j),
                     last && pr.rounded ? pr.rounded + i * pr.ldc + j : nullptr);
            else
              kernel(kernel_depth, a_block + it * MR * KA, b_block + jt * NR * kernel_depth,
                     pr.c + i * pr.ldc + j, pr.ldc, d0 > 0, std::min(NR, pr.p - j));
          }
          if constexpr (is_half_v<S> && !std::is_same_v<P, BFloat16>)
            if (pr.rounded && last)
              for (int64_t r = i; r < std::min(pr.m, i + MR); ++r)
                from_float(pr.c + r * pr.ldc + c0, pr.rounded + r * pr.ldc + c0, cols);
        }
      }
    }
  }
}

// One product on n_threads threads: each thread computes a slice of C's rows or of its
// columns, whole micro-tiles wide, as an independent serial product (its own pack buffers,
// no barriers), so the packed panels a core computes from are the ones it packed itself,
// in its own L2. Both operands are still read once per thread's slice, so the operand that
// is not sliced gets packed by every thread: slice C so that duplicated packing is the
// smaller one (a transposed operand counts double, its packing gathers rather than copies).
// On 2 cores this beat sharing packed blocks between threads behind barriers, which made
// each core read half of every block from the other's L2: MLP shapes (128 x 784 x 512 and
// the like) went from 205-265 to 255-310 GFLOP/s, square 256-2048 from 239-296 to 286-311.
// Slicing never changes the order of any element's sum, so results do not depend on the
// thread count.
template <class S, class P> void gemm_2d(const Problem<S> &pr, int n_threads) {
  constexpr int64_t MR = Blocking<P>::MR, NR = Blocking<P>::NR;
  const double a_packing = double(pr.m) * pr.n * (pr.a_col == 1 ? 1 : 2);
  const double b_packing = double(pr.p) * pr.n * (pr.b_col == 1 ? 1 : 2);
  const bool by_columns = a_packing <= b_packing;
  const int64_t tiles = by_columns ? ceil_div(pr.p, NR) : ceil_div(pr.m, MR);
  n_threads = static_cast<int>(std::min<int64_t>(
      {n_threads, tiles, std::max<int64_t>(1, pr.m * pr.n * pr.p / kMinMultiplyAddsPerThread)}));
  parallel(n_threads, [&](int t, int n) {
    const Range mine = split_range(tiles, t, n);  // n is 1 when the pool runs us nested
    Problem<S> slice = pr;
    if (by_columns) {
      const int64_t j0 = mine.begin * NR;
      slice.p = std::min(pr.p, mine.end * NR) - j0;
      slice.b += j0 * pr.b_col;
      slice.c += j0;
      if (pr.rounded) slice.rounded += j0;
    } else {
      const int64_t i0 = mine.begin * MR;
      slice.m = std::min(pr.m, mine.end * MR) - i0;
      slice.a += i0 * pr.a_row;
      slice.c += i0 * pr.ldc;
      if (pr.rounded) slice.rounded += i0 * pr.ldc;
    }
    if (slice.m > 0 && slice.p > 0) gemm_serial<S, P>(slice);
  });
}

// One product. An output whose width leaves much of its last NR-wide micro-tile as zero
// padding (a 10-class layer, a 16- or 48-channel conv) is computed transposed, C^T = B^T A^T,
// when C^T's width m pads less: short micro-tiles in the other direction cost little, since
// a tile of r < MR rows runs a kernel for r rows. C^T goes to scratch and is copied into C.
// Each element's sum is the same products in the same order, so the result is the same
// either way. On one core, 8192 x 288 x 16 went from 1807 to 1036 us, 4096 x 256 x 48 from
// 1230 to 991 us, 128 x 512 x 10 from 41 to 26 us; at p = 32, 64 or 128 it did not help.
template <class S, class P> void gemm_product(const Problem<S> &pr, int n_threads) {
  constexpr int64_t NR = Blocking<P>::NR;
  auto padding = [](int64_t width) {  // the share of the last tiles that is padding
    return 1.0 - double(width) / double(round_up(width, NR));
  };
  if (!(padding(pr.p) >= 0.25 && padding(pr.m) < padding(pr.p)))
    return gemm_2d<S, P>(pr, n_threads);
  Acc<S> *ct = workspace<Acc<S>, kTransposeSlot>(pr.p * pr.m);  // not the pack buffers' slot
  gemm_2d<S, P>(
      Problem<S>{pr.p, pr.n, pr.m, pr.b, pr.b_col, pr.b_row, pr.a, pr.a_col, pr.a_row, ct, pr.m},
      n_threads);
  for (int64_t i = 0; i < pr.m; ++i)
    for (int64_t j = 0; j < pr.p; ++j) {
      if constexpr (is_half_v<S>)
        if (pr.rounded) {
          from_float(ct + j * pr.m + i, pr.rounded + i * pr.ldc + j, 1);
          continue;
        }
      pr.c[i * pr.ldc + j] = ct[j * pr.m + i];  // (16-bit operands, no rounded: the sums)
    }
}

// Outputs from this size up have their pages faulted in before the product starts. A fresh
// output (NDArray allocates one per call) otherwise faults inside the kernels, and each fault
// zeroes a page, 2 MiB with transparent huge pages, through the cache, evicting the packed
// B block from L2 mid-product: 2048^3 on 2 threads ran 12% slower into a fresh output.
constexpr int64_t kPrefaultMinBytes = int64_t{1} << 20;

// Writes one zero per 4 KiB page of out (which the product overwrites entirely anyway), the
// pages split across threads; on pages already mapped this costs a few microseconds.
template <class T> void prefault(T *out, int64_t elements, int threads) {
  if (elements * static_cast<int64_t>(sizeof(T)) < kPrefaultMinBytes) return;
  constexpr int64_t kStride = 4096 / sizeof(T);
  const int64_t pages = (elements + kStride - 1) / kStride;
  parallel(threads, [&](int t, int n) {
    const Range mine = split_range(pages, t, n);
    volatile T *v = out;
    for (int64_t page = mine.begin; page < mine.end; ++page) v[page * kStride] = T(0);
  });
}

// The products, panels of P, into out (of the sums' type), then rounded into `rounded` for
// 16-bit operands.
template <class S, class P>
void gemm_run(int64_t batch, int64_t m, int64_t n, int64_t p, MatrixView<S> a, MatrixView<S> b,
              Acc<S> *out, S *rounded = nullptr) {
  using T = Acc<S>;
  if (n == 0) {
    if (rounded)
      std::fill_n(rounded, batch * m * p, S{});
    else
      std::fill_n(out, batch * m * p, T(0));
    return;
  }

  // A batch-broadcast B against a batch of A rows evenly spaced in memory (x @ W with x of
  // shape (batch, m, n)) is one (batch*m, n) @ (n, p) product: one packing of B, not batch.
  if (batch > 1 && b.batch_stride == 0 && a.batch_stride == m * a.row_stride) {
    m *= batch;
    batch = 1;
  }

  const int threads = num_threads();
  prefault(out, batch * m * p, threads);
  auto problem = [&](int64_t i) {
    return Problem<S>{m,
                      n,
                      p,
                      a.data + i * a.batch_stride,
                      a.row_stride,
                      a.col_stride,
                      b.data + i * b.batch_stride,
                      b.row_stride,
                      b.col_stride,
                      out + i * m * p,
                      p,
                      rounded ? rounded + i * m * p : nullptr};
  };
  // Whole products per thread (each with its own pack buffers, no barriers) when they are
  // too small to split, or when they share out evenly; else each product uses every thread.
  const bool small = m * n * p < threads * kMinMultiplyAddsPerThread;
  const bool even = batch % threads == 0 || batch >= 4 * threads;
  if (batch > 1 && threads > 1 && (small || even)) {
    const int n_threads = static_cast<int>(std::min<int64_t>(threads, batch));
    std::atomic<int64_t> next_product{0};
    parallel(n_threads, [&](int, int) {
      for (int64_t i; (i = next_product.fetch_add(1, std::memory_order_relaxed)) < batch;)
        gemm_product<S, P>(problem(i), 1);
    });
    return;
  }
  for (int64_t i = 0; i < batch; ++i) gemm_product<S, P>(problem(i), threads);
}

}  // namespace

// NEEDLE_GEMM_BF16=0 in the environment (read once) leaves bfloat16 to the float32 kernel (here
// and in conv.cc) even on a CPU with AVX512-BF16: how tests and benchmarks reach that path.
bool bf16_kernel_used() {
  static const bool used = [] {
    const char *env = std::getenv("NEEDLE_GEMM_BF16");
    return cpu_has_bf16() && !(env && std::strcmp(env, "0") == 0);
  }();
  return used;
}

// 16-bit operands: float32 sums into a float32 buffer, rounded once into out. float16 always,
// and bfloat16 without the AVX512-BF16 kernel, convert while packing for the float32 kernel.
// Each strip of micro-tiles is rounded as it gets its last depth block, from cache, rather
// than the whole buffer after the product from memory (a pass of ~1% of a 2048^3 product).
template <class T>
void gemm(int64_t batch, int64_t m, int64_t n, int64_t p, MatrixView<T> a, MatrixView<T> b,
          T *out) {
  assert(batch >= 0 && m >= 0 && n >= 0 && p >= 0);
  if (batch == 0 || m == 0 || p == 0) return;
  if constexpr (!is_half_v<T>) {
    gemm_run<T, T>(batch, m, n, p, a, b, out);
  } else {
    Array sums(batch * m * p, DType::f32);
    float *c = sums.data<float>();
    bool paired = false;
#if NEEDLE_X86_DISPATCH
    if constexpr (std::is_same_v<T, BFloat16>)
      if ((paired = bf16_kernel_used())) gemm_run<T, BFloat16>(batch, m, n, p, a, b, c, out);
#endif
    if (!paired) gemm_run<T, float>(batch, m, n, p, a, b, c, out);
  }
}

// 16-bit operands into a float32 out: the sums, not rounded (matmul_strided_wide: a weight
// gradient for float32 master weights, without a 16-bit result and its cast back).
template <class T>
void gemm_wide(int64_t batch, int64_t m, int64_t n, int64_t p, MatrixView<T> a, MatrixView<T> b,
               float *out) {
  if (batch == 0 || m == 0 || p == 0) return;
#if NEEDLE_X86_DISPATCH
  if constexpr (std::is_same_v<T, BFloat16>)
    if (bf16_kernel_used()) return gemm_run<T, BFloat16>(batch, m, n, p, a, b, out);
#endif
  gemm_run<T, float>(batch, m, n, p, a, b, out);
}
template void gemm_wide<Float16>(int64_t, int64_t, int64_t, int64_t, MatrixView<Float16>,
                                 MatrixView<Float16>, float *);
template void gemm_wide<BFloat16>(int64_t, int64_t, int64_t, int64_t, MatrixView<BFloat16>,
                                  MatrixView<BFloat16>, float *);

template void gemm<float>(int64_t, int64_t, int64_t, int64_t, MatrixView<float>, MatrixView<float>,
                          float *);
template void gemm<double>(int64_t, int64_t, int64_t, int64_t, MatrixView<double>,
                           MatrixView<double>, double *);
template void gemm<Float16>(int64_t, int64_t, int64_t, int64_t, MatrixView<Float16>,
                            MatrixView<Float16>, Float16 *);
template void gemm<BFloat16>(int64_t, int64_t, int64_t, int64_t, MatrixView<BFloat16>,
                             MatrixView<BFloat16>, BFloat16 *);

const char *gemm_isa() { return microkernel::kIsa; }
const char *gemm_bf16_kernel() { return bf16_kernel_used() ? "avx512_bf16" : "float32"; }

template <class T> GemmBlocking gemm_blocking() {
  return {Blocking<T>::MR, Blocking<T>::NR, Blocking<T>::KC, Blocking<T>::NC, Blocking<T>::MC};
}
template GemmBlocking gemm_blocking<float>();
template GemmBlocking gemm_blocking<double>();
template GemmBlocking gemm_blocking<BFloat16>();

}  // namespace cpu
}  // namespace needle
