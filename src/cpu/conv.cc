// Implicit-GEMM convolution (conv.h). Every output pixel (or, for the input gradient, every
// input pixel) is a GEMM row; the pixels are grouped into classes that see the same kernel
// taps inside the image, so each class is a dense product over only its valid taps: taps
// that fall on padding are skipped, not multiplied by packed zeros. That matters at the
// small maps of ResNet-9 (a 3x3, padding-1 conv on 1x1 maps uses 1 of its 9 taps, on 4x4
// maps 69% of them). Panels are packed from the input rows directly (the taps of one kernel
// row are one contiguous run of an NHWC row), and the micro-kernel is the GEMM's.
//
// Threads split each class's rows (forward, input gradient): each output element is summed in
// the same order whatever the split. The weight gradient's threads split the pixels and add
// their sums at the end, so its rounding depends on the thread count, as a split reduction's.
//
// 16-bit operands sum in float32, each output rounded once. Their panels (P below) are float32,
// widened while packing, for float32's kernel and blocking (so the sums are float32's on the
// widened operands, bit for bit), or bfloat16 pairs for gemm_bf16.h's vdpbf16ps kernel.

#include "conv.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "array.h"
#include "convert.h"
#include "gemm_bf16.h"
#include "gemm_kernel.h"
#include "thread_pool.h"

namespace needle {
namespace cpu {

using microkernel::Blocking;

namespace {

constexpr int64_t kMinMultiplyAddsPerThread = int64_t{1} << 20;  // as in gemm.cc

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Panels of P and their kernels; kPair, the depth unit.
template <class P> constexpr int64_t kPair = std::is_same_v<P, BFloat16> ? 2 : 1;
template <class P>
using Kernel = void (*)(int64_t, const P *, const P *, Acc<P> *, int64_t, bool, int64_t);
template <class P, int V, int... R> constexpr auto make_kernels(std::integer_sequence<int, R...>) {
#if NEEDLE_X86_DISPATCH
  if constexpr (kPair<P> == 2)
    return std::array<Kernel<P>, sizeof...(R) + 1>{nullptr, &bf16_kernel<R + 1, V>...};
  else
#endif
    return std::array<Kernel<P>, sizeof...(R) + 1>{nullptr,
                                                   &microkernel::micro_kernel<P, R + 1, V>...};
}
// Micro-tiles of V vectors per row: MR rows at the GEMM's width (2 vectors), twice as many at 1.
static_assert(microkernel::kVectorsPerRow == 2, "the bfloat16 kernel's width too");
template <class P, int V> constexpr int64_t kRows = Blocking<P>::MR * 2 / V;
template <class P, int V = 2>
constexpr auto kKernels = make_kernels<P, V>(std::make_integer_sequence<int, kRows<P, V>>{});

// Calls f(P{}) for the panels of operands of S: S, or for 16-bit types float32 or bfloat16.
template <class S, class F> void with_panels(F &&f) {
#if NEEDLE_X86_DISPATCH
  if constexpr (std::is_same_v<S, BFloat16>)
    if (bf16_kernel_used()) return f(BFloat16{});
#endif
  f(std::conditional_t<is_half_v<S>, float, S>{});
}

// A grow-only, 64-byte aligned scratch buffer per thread and slot.
template <class T, int Slot> T *scratch(int64_t elements) {
  struct Free {
    void operator()(void *p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> storage;
  thread_local size_t capacity = 0;
  const size_t bytes = static_cast<size_t>(std::max<int64_t>(elements, 1)) * sizeof(T);
  if (bytes > capacity) {
    storage.reset();
    storage.reset(aligned_bytes(bytes));
    capacity = bytes;
  }
  return static_cast<T *>(storage.get());
}

// Depth (or columns) [k0, k0 + len) of a class read at base + offset + (k - k0); `target` is
// where column k0 lands in the full weight-gradient matrix.
struct Run { int64_t k0, offset, len, target; };

// dst[0, n) = src[0, n) for the short runs of a gather (a kernel row's taps: tens of values),
// inline, every step masked: GCC turns a loop of plain vector loads and stores into a call to
// memmove, which cost more than the copy (9% of a 4x4-map input gradient). 16-bit values into
// float32 panels are widened (exact).
// With `limit` (the end of src's array), 64 bytes before it are loaded whole (pair_words says
// why), the stores still masked.
template <class S, class T>
inline void copy_run(const S *__restrict src, int64_t n, T *__restrict dst,
                     const char *limit = nullptr) {
  if constexpr (!std::is_same_v<S, T>) {
    to_float(src, dst, n);
  } else {
#if defined(__AVX512BW__)
    const char *from = reinterpret_cast<const char *>(src);
    char *to = reinterpret_cast<char *>(dst);
    for (int64_t i = 0, bytes = n * sizeof(T); i < bytes; i += 64) {
      const __mmask64 m = bytes - i >= 64 ? ~__mmask64{0} : (__mmask64{1} << (bytes - i)) - 1;
      const __m512i v = limit && from + i + 64 <= limit ? _mm512_loadu_si512(from + i)
                                                        : _mm512_maskz_loadu_epi8(m, from + i);
      _mm512_mask_storeu_epi8(to + i, m, v);
    }
#else
    std::copy_n(src, n, dst);
#endif
  }
}

// Copies depth [d0, d0 + dd) of one gathered row into dst. Unconverted runs go in whole 64-byte
// vectors where the source has them before `limit` (its array's end), each store running up to
// 63 bytes past its run: into the next run or the next row, both written after it, or the
// panel's slack (kSlack) past its last row. Masked loads and stores of exactly the run cost
// more: ResNet-9's 7x7 input conv (7 runs of 21 bfloat16 a pixel), 650 -> 535 us.
constexpr int64_t kSlack = 64;  // bytes
template <class S, class P>
inline void gather_runs(const S *base, const std::vector<Run> &runs, int64_t d0, int64_t dd, P *dst,
                        const char *limit) {
  for (const Run &r : runs) {
    const int64_t lo = std::max(r.k0, d0), hi = std::min(r.k0 + r.len, d0 + dd);
    if (lo >= hi) continue;
    const S *src = base + r.offset + (lo - r.k0);
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<S, P>) {
      const char *from = reinterpret_cast<const char *>(src);
      char *to = reinterpret_cast<char *>(dst + (lo - d0));
      const int64_t bytes = (hi - lo) * sizeof(S);
      if (from + round_up(bytes, kSlack) <= limit) {
        for (int64_t i = 0; i < bytes; i += 64)
          _mm512_storeu_si512(to + i, _mm512_loadu_si512(from + i));
        continue;
      }
    }
#endif
    copy_run(src, hi - lo, dst + (lo - d0));
  }
}

// The taps along one axis that a set of positions share: taps first, first + step, ...
// (count of them) lie inside the image for each position in `pos`.
struct AxisClass {
  int64_t first, count;
  std::vector<int64_t> pos;
};

void add_to_class(std::vector<AxisClass> &classes, int64_t first, int64_t count, int64_t pos) {
  if (count <= 0) first = count = 0;
  for (AxisClass &c : classes)
    if (c.first == first && c.count == count) return c.pos.push_back(pos);
  classes.push_back({first, count, {pos}});
}

// Output positions o along an axis of `size` (kernel k, stride s, padding p): taps
// [max(0, p - o s), min(k, size + p - o s)).
std::vector<AxisClass> output_classes(int64_t size, int64_t k, int64_t s, int64_t p, int64_t out) {
  std::vector<AxisClass> classes;
  for (int64_t o = 0; o < out; ++o) {
    const int64_t lo = std::max<int64_t>(0, p - o * s), hi = std::min(k, size + p - o * s);
    add_to_class(classes, lo, hi - lo, o);
  }
  return classes;
}

// Input positions i: the taps t = i + p - o s with o in [0, out), every s-th from the first.
std::vector<AxisClass> input_classes(int64_t size, int64_t k, int64_t s, int64_t p, int64_t out) {
  std::vector<AxisClass> classes;
  for (int64_t i = 0; i < size; ++i) {
    int64_t first = -1, count = 0;
    for (int64_t t = (i + p) % s; t < k; t += s) {
      const int64_t o = (i + p - t) / s;
      if (o < 0 || o >= out) continue;
      if (first < 0) first = t;
      ++count;
    }
    add_to_class(classes, first, count, i);
  }
  return classes;
}

// One class as a product C (m x p) = A (m x depth) @ B (depth x p): row i of A is gathered by
// `runs` from a_rows[i], row k of B is b_rows[k] (p contiguous values), row i of C goes to
// c_rows[i].
template <class T> struct Gathered {
  int64_t depth = 0, p = 0;
  std::vector<const T *> a_rows, b_rows;
  std::vector<T *> c_rows;
  std::vector<Run> runs;
  const char *a_end = nullptr;  // the end of the array a_rows point into (gather_runs' limit)
};

// One depth step of a B panel: row r0's `read` values, zeros up to `write`; bfloat16 pairs
// interleave it with the next step's row r1 (null past an odd depth: zeros).
template <class S, class P>
inline void pack_step(const S *r0, const S *r1, int64_t read, int64_t write, P *dst,
                      const char *limit = nullptr) {  // (copy_run's)
#if NEEDLE_X86_DISPATCH
  if constexpr (kPair<P> == 2) return interleave_pairs(r0, r1, read, write, dst, limit);
#endif
  copy_run(r0, read, dst, limit);
  std::fill(dst + read, dst + write, P{});
}

// The rows [t0, t1) of row tiles of one class on the calling thread, V vectors per row.
template <class S, class P, int V>
void gathered_rows(const Gathered<S> &g, int64_t t0, int64_t t1) {
  constexpr int64_t MR = kRows<P, V>, NR = Blocking<P>::NR * V / 2, KC = Blocking<P>::KC,
                    KA = Blocking<P>::KA;
  constexpr int64_t E = kPair<P>;
  const int64_t m = static_cast<int64_t>(g.a_rows.size()), p = g.p, depth = g.depth;
  if (depth == 0) {
    for (int64_t i = t0 * MR; i < std::min(m, t1 * MR); ++i) std::fill_n(g.c_rows[i], p, S{});
    return;
  }
  const int64_t pp = round_up(p, NR), col_tiles = pp / NR;
  const int64_t blocks = ceil_div(depth, KC), kc = round_up(ceil_div(depth, blocks), 8);
  P *const b_pack = scratch<P, 0>(round_up(depth, E) * pp);  // (kc is even)
  P *const a_panel = scratch<P, 1>(MR * KA + kSlack / sizeof(P));
  Acc<S> *const c_tile = scratch<Acc<S>, 4>(MR * pp);
  for (int64_t d0 = 0; d0 < depth; d0 += kc) {  // B: per depth block, NR-wide panels
    const int64_t dd = std::min(kc, depth - d0), ddk = round_up(dd, E);
    for (int64_t jt = 0; jt < col_tiles; ++jt)
      for (int64_t k = 0; k < dd; k += E)
        pack_step(g.b_rows[d0 + k] + jt * NR,
                  E == 2 && k + 1 < dd ? g.b_rows[d0 + k + 1] + jt * NR : nullptr,
                  std::min(NR, p - jt * NR), NR, b_pack + d0 * pp + jt * NR * ddk + k * NR);
  }
  for (int64_t it = t0; it < t1; ++it) {
    const int64_t i0 = it * MR, rows = std::min(MR, m - i0);
    const Kernel<P> kernel = kKernels<P, V>[rows];
    for (int64_t d0 = 0; d0 < depth; d0 += kc) {
      const int64_t dd = std::min(kc, depth - d0), ddk = round_up(dd, E);
      for (int64_t r = 0; r < rows; ++r) {
        gather_runs(g.a_rows[i0 + r], g.runs, d0, dd, a_panel + r * KA, g.a_end);
        if (ddk > dd) a_panel[r * KA + dd] = P{};
      }
      for (int64_t jt = 0; jt < col_tiles; ++jt)
        kernel(ddk, a_panel, b_pack + d0 * pp + jt * NR * ddk, c_tile + jt * NR, pp, d0 > 0, NR);
    }
    for (int64_t r = 0; r < rows; ++r) {
      if constexpr (is_half_v<S>)
        from_float(c_tile + r * pp, g.c_rows[i0 + r], p);  // rounded once
      else
        copy_run(c_tile + r * pp, p, g.c_rows[i0 + r]);
    }
  }
}

// Every class, each class's row tiles split across the threads. Outputs at most half the
// GEMM's NR wide use one vector per row (16 float channels: half the multiply-adds).
template <class S, class P, int V> void run_gathered_by(const std::vector<Gathered<S>> &classes) {
  int64_t work = 0;
  for (const auto &g : classes) work += static_cast<int64_t>(g.a_rows.size()) * g.depth * g.p;
  parallel(threads_for(work, kMinMultiplyAddsPerThread), [&](int t, int n) {
    for (const auto &g : classes) {
      const int64_t tiles = ceil_div(static_cast<int64_t>(g.a_rows.size()), kRows<P, V>);
      const Range mine = split_range(tiles, t, n);
      if (mine.begin < mine.end) gathered_rows<S, P, V>(g, mine.begin, mine.end);
    }
  });
}
template <class S> void run_gathered(const std::vector<Gathered<S>> &classes) {
  with_panels<S>([&](auto panel) {
    using P = decltype(panel);
    if (!classes.empty() && classes[0].p * 2 <= Blocking<P>::NR)
      return run_gathered_by<S, P, 1>(classes);
    run_gathered_by<S, P, 2>(classes);
  });
}

// The runs of a forward class: one per kernel row, its taps' channels contiguous in NHWC.
std::vector<Run> tap_runs(const ConvShape &s, const AxisClass &hc, const AxisClass &wc) {
  std::vector<Run> runs;
  const int64_t len = wc.count * s.c_in;
  for (int64_t dkh = 0; dkh < hc.count; ++dkh)
    runs.push_back(
        {dkh * len, dkh * s.w * s.c_in, len, ((hc.first + dkh) * s.kw + wc.first) * s.c_in});
  return runs;
}

// Calls f(n, oh, ow, pixel index) for the pixels of a class, in row-major order.
template <class F>
void for_pixels(const ConvShape &s, const AxisClass &hc, const AxisClass &wc, int64_t rows,
                int64_t cols, F &&f) {
  for (int64_t b = 0; b < s.n; ++b)
    for (int64_t y : hc.pos)
      for (int64_t x : wc.pos) f(b, y, x, (b * rows + y) * cols + x);
}

}  // namespace

template <class T> void conv2d(const ConvShape &s, const T *x, const T *w, T *out) {
  const int64_t oh = s.out_h(), ow = s.out_w();
  std::vector<Gathered<T>> classes;
  for (const AxisClass &hc : output_classes(s.h, s.kh, s.stride, s.pad, oh))
    for (const AxisClass &wc : output_classes(s.w, s.kw, s.stride, s.pad, ow)) {
      Gathered<T> &g = classes.emplace_back();
      g.depth = hc.count * wc.count * s.c_in;
      g.p = s.c_out;
      g.runs = tap_runs(s, hc, wc);
      g.a_end = reinterpret_cast<const char *>(x + s.n * s.h * s.w * s.c_in);
      for (const Run &r : g.runs)  // the weight rows of each kernel row's taps, in order
        for (int64_t k = 0; k < r.len; ++k) g.b_rows.push_back(w + (r.target + k) * s.c_out);
      for_pixels(s, hc, wc, oh, ow, [&](int64_t b, int64_t y, int64_t xx, int64_t pixel) {
        const int64_t iy = y * s.stride - s.pad + hc.first, ix = xx * s.stride - s.pad + wc.first;
        g.a_rows.push_back(g.depth ? x + ((b * s.h + iy) * s.w + ix) * s.c_in : x);
        g.c_rows.push_back(out + pixel * s.c_out);
      });
    }
  run_gathered(classes);
}

namespace {

// out[j ldo + i] = in[i ldi + j] for i < rows <= 16, j < cols, through 16 x 16 transposes of
// 32-bit words (16-bit values split from them). (Scalar: a fifth of dx at 2x2 maps.)
template <class T>
void transpose_rows(const T *in, int64_t ldi, int64_t rows, int64_t cols, T *out, int64_t ldo) {
  int64_t j0 = 0;
#if defined(__AVX512BW__) && defined(__AVX512VL__)
  if constexpr (sizeof(T) == 4 || sizeof(T) == 2) {
    const __mmask16 valid = static_cast<__mmask16>((1u << rows) - 1);
    __m512 r[16];
    for (; j0 + 64 / int64_t{sizeof(T)} <= cols; j0 += 64 / sizeof(T)) {
      for (int i = 0; i < 16; ++i)
        r[i] = _mm512_maskz_loadu_ps(i < rows ? ~0 : 0, in + i * ldi + j0);
      microkernel::transpose_16x16(r);
      for (int q = 0; q < 16; ++q) {
        const __m512i v = _mm512_castps_si512(r[q]);  // column j0 + q, or the pair at 2q
        if constexpr (sizeof(T) == 4) {
          _mm512_mask_storeu_epi32(out + (j0 + q) * ldo, valid, v);
        } else {
          _mm256_mask_storeu_epi16(out + (j0 + 2 * q) * ldo, valid, _mm512_cvtepi32_epi16(v));
          _mm256_mask_storeu_epi16(out + (j0 + 2 * q + 1) * ldo, valid,
                                   _mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16)));
        }
      }
    }
  }
#endif
  for (int64_t j = j0; j < cols; ++j)
    for (int64_t i = 0; i < rows; ++i) out[j * ldo + i] = in[i * ldi + j];
}

}  // namespace

template <class T> void conv2d_input_grad(const ConvShape &s, const T *g, const T *w, T *dx) {
  const int64_t oh = s.out_h(), ow = s.out_w();
  const auto h_classes = input_classes(s.h, s.kh, s.stride, s.pad, oh);
  const auto w_classes = input_classes(s.w, s.kw, s.stride, s.pad, ow);
  // B rows are (tap, c_out) rows of c_in values: the weights of the taps some class uses,
  // their last two axes swapped, in a scratch buffer of this thread (no page faults).
  std::vector<int64_t> slot(s.kh * s.kw, -1);
  int64_t used = 0;
  for (const AxisClass &hc : h_classes)
    for (const AxisClass &wc : w_classes)
      for (int64_t a = 0; a < hc.count; ++a)
        for (int64_t b = 0; b < wc.count; ++b) {
          int64_t &tap = slot[(hc.first + a * s.stride) * s.kw + wc.first + b * s.stride];
          if (tap < 0) tap = used++;
        }
  // Split across the threads in blocks of 16 input channels (whole lines of wt): done serially,
  // it was a fifth of the time on 2 threads at 2x2 maps (32768 values).
  T *const wt = scratch<T, 2>(used * s.c_out * s.c_in);
  std::vector<int64_t> taps;
  for (int64_t tap = 0; tap < s.kh * s.kw; ++tap)
    if (slot[tap] >= 0) taps.push_back(tap);
  const int64_t blocks = ceil_div(s.c_in, 16);
  parallel(threads_for(used * s.c_out * s.c_in, 8192), [&](int t, int n) {
    const Range mine = split_range(used * blocks, t, n);
    for (int64_t u = mine.begin; u < mine.end; ++u) {
      const int64_t tap = taps[u / blocks], ci0 = u % blocks * 16, ci1 = std::min(s.c_in, ci0 + 16);
      transpose_rows(w + (tap * s.c_in + ci0) * s.c_out, s.c_out, ci1 - ci0, s.c_out,
                     wt + slot[tap] * s.c_out * s.c_in + ci0, s.c_in);
    }
  });
  std::vector<Gathered<T>> classes;
  for (const AxisClass &hc : h_classes)
    for (const AxisClass &wc : w_classes) {
      Gathered<T> &c = classes.emplace_back();
      c.depth = hc.count * wc.count * s.c_out;
      c.p = s.c_in;
      c.a_end = reinterpret_cast<const char *>(g + s.n * oh * ow * s.c_out);
      // Tap (first + a s, first' + b s) reads the adjoint a rows and b columns before the first.
      for (int64_t a = 0; a < hc.count; ++a)
        for (int64_t b = 0; b < wc.count; ++b) {
          const int64_t k0 = (a * wc.count + b) * s.c_out;
          c.runs.push_back({k0, -(a * ow + b) * s.c_out, s.c_out, 0});
          const int64_t tap = slot[(hc.first + a * s.stride) * s.kw + wc.first + b * s.stride];
          for (int64_t co = 0; co < s.c_out; ++co)
            c.b_rows.push_back(wt + (tap * s.c_out + co) * s.c_in);
        }
      for_pixels(s, hc, wc, s.h, s.w, [&](int64_t b, int64_t y, int64_t xx, int64_t pixel) {
        const int64_t gy = (y + s.pad - hc.first) / s.stride,
                      gx = (xx + s.pad - wc.first) / s.stride;
        c.a_rows.push_back(c.depth ? g + ((b * oh + gy) * ow + gx) * s.c_out : g);
        c.c_rows.push_back(dx + pixel * s.c_in);
      });
    }
  run_gathered(classes);
}

namespace {

// A class of the weight gradient: its taps' runs, x's and g's rows of its pixels, its columns.
template <class T> struct WeightClass {
  std::vector<Run> runs;
  std::vector<const T *> x_rows, g_rows;
  int64_t cols;
  const char *x_end, *g_end;  // the ends of x and g (the packs' limits)
};

// Rows r < rows <= 16 of an A panel, src[k][off + r] at depth k: 16 x 16 blocks of 32-bit words
// (floats, bfloat16 pairs) transposed in registers; the depth done. (Scalar: 12% of bfloat16's
// weight gradient at 2x2 maps.)
template <class S, class P>
int64_t pack_transposed(const S *const *src, int64_t off, int64_t rows, int64_t depth, P *panel,
                        const char *limit) {  // (pair_words')
  int64_t k0 = 0;
#if defined(__AVX512F__) && NEEDLE_X86_DISPATCH
  if constexpr (std::is_same_v<S, P> && sizeof(P) <= 4) {
    constexpr int64_t E = kPair<P>, KA = Blocking<P>::KA;
    const __mmask16 valid = static_cast<__mmask16>((1u << rows) - 1);
    __m512 r[16];
    for (; k0 + 16 * E <= depth; k0 += 16 * E) {
      for (int i = 0; i < 16; ++i)
        if constexpr (E == 1)
          r[i] = limit && reinterpret_cast<const char *>(src[k0 + i] + off + 16) <= limit
                     ? _mm512_loadu_ps(src[k0 + i] + off)
                     : _mm512_maskz_loadu_ps(valid, src[k0 + i] + off);
        else
          r[i] = _mm512_castsi512_ps(
              pair_words(src[k0 + 2 * i] + off, src[k0 + 2 * i + 1] + off, rows, limit));
      microkernel::transpose_16x16(r);
      for (int64_t i = 0; i < rows; ++i) _mm512_storeu_ps(panel + i * KA + k0, r[i]);
    }
  }
#endif
  return k0;
}

// dw[target[j] co + r] += tile[r NR + j] for r < rows, j < width, through 16 x 16 transposes.
// (Scalar: 20% of bfloat16's weight gradient at 2x2 maps.)
template <int64_t NR, class A>
void add_transposed(const A *tile, int64_t rows, int64_t width, const int64_t *target, A *dw,
                    int64_t co) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<A, float> && NR % 16 == 0) {
    const __mmask16 valid = static_cast<__mmask16>((1u << rows) - 1);
    __m512 r[16];
    for (int64_t j0 = 0; j0 < width; j0 += 16) {
      for (int i = 0; i < 16; ++i)
        r[i] = _mm512_maskz_loadu_ps(i < rows ? ~0 : 0, tile + i * NR + j0);
      microkernel::transpose_16x16(r);
      for (int64_t j = 0; j < std::min<int64_t>(16, width - j0); ++j) {
        float *dst = dw + target[j0 + j] * co;
        _mm512_mask_storeu_ps(dst, valid, _mm512_add_ps(_mm512_maskz_loadu_ps(valid, dst), r[j]));
      }
    }
    return;
  }
#endif
  for (int64_t j = 0; j < width; ++j)
    for (int64_t r = 0; r < rows; ++r) dw[target[j] * co + r] += tile[r * NR + j];
}

// Part `part` of `parts` of every class's pixels, summed into the rows `owned` of dw (each co
// wide, from row `first` on), which the caller has zeroed; panels of P.
template <class S, class P>
void weight_grad_task(const std::vector<WeightClass<S>> &classes, int64_t co, int part, int parts,
                      Range owned, Acc<S> *dw, int64_t first) {
  constexpr int64_t MR = Blocking<P>::MR, NR = Blocking<P>::NR, KC = Blocking<P>::KC, E = kPair<P>;
  constexpr int64_t KA = Blocking<P>::KA;
  constexpr int64_t kColBlock = 8 * NR;
  const int64_t row_tiles = ceil_div(co, MR);
  P *const a_pack = scratch<P, 0>(row_tiles * MR * KA);
  P *const b_pack = scratch<P, 1>(KC * kColBlock);
  Acc<S> *const tile = scratch<Acc<S>, 4>(MR * NR);
  std::vector<Run> pieces;  // {panel position, source offset, length}
  std::vector<int64_t> target;
  for (const WeightClass<S> &c : classes) {
    target.resize(c.cols);  // the row of dw of each of the class's columns
    for (const Run &r : c.runs)
      for (int64_t k = 0; k < r.len; ++k) target[r.k0 + k] = r.target + k;
    const int64_t j0 = std::lower_bound(target.begin(), target.end(), owned.begin) - target.begin();
    const int64_t j1 = std::lower_bound(target.begin(), target.end(), owned.end) - target.begin();
    const Range px = split_range(static_cast<int64_t>(c.x_rows.size()), part, parts);
    for (int64_t d0 = px.begin; d0 < px.end; d0 += KC) {
      const int64_t dd = std::min(KC, px.end - d0), ddk = round_up(dd, E);

      for (int64_t it = 0; it < row_tiles; ++it) {  // A = g^T, MR channels per depth step
        P *panel = a_pack + it * MR * KA;
        const int64_t rows = std::min(MR, co - it * MR);
        for (int64_t k = pack_transposed(c.g_rows.data() + d0, it * MR, rows, dd, panel, c.g_end);
             k < dd; ++k) {
          const S *src = c.g_rows[d0 + k] + it * MR;
          for (int64_t r = 0; r < rows; ++r) panel[r * KA + k] = panel_value<P>(src[r]);
        }
        if (ddk > dd)
          for (int64_t r = 0; r < rows; ++r) panel[r * KA + dd] = P{};
      }
      for (int64_t c0 = j0; c0 < j1; c0 += kColBlock) {
        const int64_t cols = std::min(kColBlock, j1 - c0), col_tiles = ceil_div(cols, NR);
        // B = x's taps, NR columns per panel: the runs cut at the panels' edges once, then
        // per depth step one copy per piece (not a scan of every run per panel).
        pieces.clear();
        for (const Run &r : c.runs)
          for (int64_t j = std::max(r.k0, c0); j < std::min(r.k0 + r.len, c0 + cols);) {
            const int64_t jj = j - c0,
                          len = std::min({NR - jj % NR, r.k0 + r.len - j, c0 + cols - j});
            pieces.push_back({jj / NR * NR * ddk + jj % NR * E, r.offset + (j - r.k0), len, 0});
            j += len;
          }
        if (const int64_t width = cols - (col_tiles - 1) * NR; width < NR)
          for (int64_t k = 0; k < ddk; k += E) {  // (a pair row holds 2 NR values)
            P *row = b_pack + (col_tiles - 1) * NR * ddk + k * NR;
            std::fill(row + width * E, row + NR * E, P{});
          }
        for (int64_t k = 0; k < dd; k += E)
          for (const Run &piece : pieces) {
            const S *const *x = c.x_rows.data() + d0 + k;
            pack_step(x[0] + piece.offset, E == 2 && k + 1 < dd ? x[1] + piece.offset : nullptr,
                      piece.len, piece.len, b_pack + piece.k0 + k * NR, c.x_end);
          }
        for (int64_t it = 0; it < row_tiles; ++it) {
          const int64_t rows = std::min(MR, co - it * MR);
          for (int64_t jt = 0; jt < col_tiles; ++jt) {
            kKernels<P>[rows](ddk, a_pack + it *MR *KA, b_pack + jt *NR *ddk, tile, NR, false, NR);
            const int64_t jb = c0 + jt * NR, width = std::min(NR, cols - jt * NR);
            add_transposed<NR>(tile, rows, width, target.data() + jb, dw - first * co + it * MR,
                               co);
          }
        }
      }
    }
  }
}

}  // namespace

// dw^T (c_out x K) = sum over classes of g_c^T (c_out x pixels) @ x_c (pixels x the class's
// taps), K = kh kw c_in, each tile added into dw transposed.
template <class T>
void conv2d_weight_grad(const ConvShape &s, const T *x, const T *g, Compute<T> *dw) {
  const int64_t oh = s.out_h(), ow = s.out_w(), K = s.kh * s.kw * s.c_in, co = s.c_out;
  std::vector<WeightClass<T>> classes;
  int64_t work = 0;
  for (const AxisClass &hc : output_classes(s.h, s.kh, s.stride, s.pad, oh))
    for (const AxisClass &wc : output_classes(s.w, s.kw, s.stride, s.pad, ow)) {
      if (hc.count == 0 || wc.count == 0) continue;
      WeightClass<T> &c = classes.emplace_back();
      c.runs = tap_runs(s, hc, wc);
      c.cols = hc.count * wc.count * s.c_in;
      c.x_end = reinterpret_cast<const char *>(x + s.n * s.h * s.w * s.c_in);
      c.g_end = reinterpret_cast<const char *>(g + s.n * oh * ow * co);
      for_pixels(s, hc, wc, oh, ow, [&](int64_t b, int64_t y, int64_t xx, int64_t pixel) {
        const int64_t iy = y * s.stride - s.pad + hc.first, ix = xx * s.stride - s.pad + wc.first;
        c.x_rows.push_back(x + ((b * s.h + iy) * s.w + ix) * s.c_in);
        c.g_rows.push_back(g + pixel * co);
      });
      work += static_cast<int64_t>(c.x_rows.size()) * c.cols * co;
    }
  // With enough pixels, each thread sums its share of every class's pixels into a dw of its
  // own (the first into dw itself) over the rows some class touches, [lo, hi), and the sums
  // are added at the end: no thread repeats another's packing of g^T, as when they split dw's
  // rows (2 threads: 0.71 -> 0.62x 1 thread's time, ResNet-9's 4x4 maps and up). With few
  // (2x2 and 1x1 maps: 128), splitting dw's rows costs less than summing: 0.58 against 0.8x.
  int64_t lo = K, hi = 0, pixels = 0;
  std::vector<int64_t> col_work(K + 1, 0);  // multiply-adds of dw's rows, cumulated
  for (const WeightClass<T> &c : classes) {
    pixels += static_cast<int64_t>(c.x_rows.size());
    for (const Run &r : c.runs) {
      lo = std::min(lo, r.target), hi = std::max(hi, r.target + r.len);
      for (int64_t k = 0; k < r.len; ++k) col_work[r.target + k + 1] += c.x_rows.size();
    }
  }
  hi = std::max(lo, hi);
  for (int64_t k = 0; k < K; ++k) col_work[k + 1] += col_work[k];
  const int threads = threads_for(work, kMinMultiplyAddsPerThread);
  const int parts = pixels >= 1024 * threads ? threads : 1;
  std::vector<int64_t> bound(threads + 1, K);  // thread t's rows when they split dw's rows
  for (int t = 1; t < threads; ++t)
    bound[t] = std::lower_bound(col_work.begin(), col_work.end(), col_work[K] * t / threads) -
               col_work.begin();
  bound[0] = 0;
  // The first part's sums go to dw's rows [lo, hi), the others' to scratch, added at the end.
  const int64_t span = (hi - lo) * co;
  Acc<T> *const partial = scratch<Acc<T>, 3>((parts - 1) * span), *const sum0 = dw + lo * co;
  with_panels<T>([&](auto panel) {
    parallel(threads, [&](int t, int n) {
      for (int task = t; task < threads; task += n) {
        const int part = parts > 1 ? task : 0;
        const Range owned = parts > 1 ? Range{lo, hi} : Range{bound[task], bound[task + 1]};
        Acc<T> *const sum = part == 0 ? sum0 : partial + (part - 1) * span;
        const int64_t z0 = std::clamp(owned.begin, lo, hi), z1 = std::clamp(owned.end, lo, hi);
        std::fill(sum + (z0 - lo) * co, sum + (z1 - lo) * co, Acc<T>(0));
        const Range rows = split_range(K, task, threads);  // dw's untouched rows: zero
        std::fill(dw + rows.begin * co, dw + std::max(rows.begin, std::min(rows.end, lo)) * co,
                  Acc<T>{});
        std::fill(dw + std::min(rows.end, std::max(rows.begin, hi)) * co, dw + rows.end * co,
                  Acc<T>{});
        weight_grad_task<T, decltype(panel)>(classes, co, part, parts, owned, sum, lo);
      }
    });
  });
  if (parts > 1)
    parallel(threads, [&](int t, int n) {
      for (int task = t; task < threads; task += n) {
        const Range r = split_range(span, task, threads, 16);
        for (int p = 0; p < parts - 1; ++p)
          for (int64_t i = r.begin; i < r.end; ++i) sum0[i] += partial[p * span + i];
      }
    });
}

// Rows are taken a block at a time (4,096 values: 16 KiB of float32, in L1), each block as one
// flat vector against the bias repeated to its length: a conv's rows are 16-128 values, too
// short for a loop per row to vectorise well (the first ResNet-9 layer's add took 50 us).
constexpr int64_t kBiasBlock = 4096;

template <class T, class P> void add_bias_rows(T *out, const P *bias, int64_t rows, int64_t cols) {
  if (cols <= 0) return;
  const int64_t per = std::max<int64_t>(1, kBiasBlock / cols);
  std::vector<P> repeated(per * cols), block(is_half_v<T> ? per * cols : 0);
  for (int64_t r = 0; r < per; ++r) std::copy_n(bias, cols, repeated.data() + r * cols);
  const P *__restrict b = repeated.data();
  for (int64_t r0 = 0; r0 < rows; r0 += per) {
    const int64_t n = std::min(per, rows - r0) * cols;
    P *__restrict v;
    if constexpr (is_half_v<T>)
      to_float(out + r0 * cols, v = block.data(), n);
    else
      v = out + r0 * cols;
    for (int64_t j = 0; j < n; ++j) v[j] += b[j];
    if constexpr (is_half_v<T>) from_float(v, out + r0 * cols, n);
  }
}

template <class T, class P> void bias_gradient(const T *g, P *d_bias, int64_t rows, int64_t cols) {
  if (cols <= 0) return;
  const int64_t per = std::max<int64_t>(1, kBiasBlock / cols);
  std::vector<double> sums(per * cols, 0.0);  // the blocks summed as flat vectors
  std::vector<P> block(is_half_v<T> ? per * cols : 0);
  double *__restrict acc = sums.data();
  for (int64_t r0 = 0; r0 < rows; r0 += per) {
    const int64_t n = std::min(per, rows - r0) * cols;
    const P *__restrict v;
    if constexpr (is_half_v<T>)
      to_float(g + r0 * cols, block.data(), n), v = block.data();
    else
      v = g + r0 * cols;
    for (int64_t j = 0; j < n; ++j) acc[j] += v[j];
  }
  for (int64_t c = 0; c < cols; ++c) {
    double total = 0;
    for (int64_t r = 0; r < per; ++r) total += acc[r * cols + c];
    d_bias[c] = static_cast<P>(total);
  }
}

#define NEEDLE_CONV_ROWS(T, P)                                                       \
  template void conv2d<T>(const ConvShape &, const T *, const T *, T *);             \
  template void conv2d_input_grad<T>(const ConvShape &, const T *, const T *, T *);  \
  template void conv2d_weight_grad<T>(const ConvShape &, const T *, const T *, P *); \
  template void add_bias_rows<T, P>(T *, const P *, int64_t, int64_t);               \
  template void bias_gradient<T, P>(const T *, P *, int64_t, int64_t);
NEEDLE_CONV_ROWS(float, float)
NEEDLE_CONV_ROWS(double, double)
NEEDLE_CONV_ROWS(Float16, float)
NEEDLE_CONV_ROWS(BFloat16, float)
#undef NEEDLE_CONV_ROWS

}  // namespace cpu
}  // namespace needle
