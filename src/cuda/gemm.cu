// Matrix multiplication: out (batch, m, p) = a (batch, m, n) @ b (batch, n, p) over strided
// views, so transposed, offset and batch-broadcast operands need no copy.
//
// The classic SIMT GEMM (as in CUTLASS's SIMT path and the well-known SGEMM write-ups):
//   - a block computes a BM x BN tile of out, stepping through n in slices of BK;
//   - the A and B slices are staged in shared memory, both k-major (As[k][i], Bs[k][j]), so
//     that the inner loop reads a thread's rows of A and columns of B as 16-byte vectors;
//   - each thread accumulates a TM x TN block of out in registers (register blocking): per
//     k, TM + TN shared-memory values feed TM * TN FMAs. The block is two (TM/2)-row by
//     two (TN/2)-column pieces half a tile apart, which keeps a warp's 16-byte shared loads
//     free of bank conflicts;
//   - double buffering: two shared-memory stages; while the block computes on one, each
//     thread's global loads for the next slice are already in flight into registers, and
//     are written to the other stage afterwards. One barrier per slice.
// Tile sizes: float32 128 x 128 x 8 with 8 x 8 per thread (256 threads, 64 accumulators,
// at most 128 registers so that two blocks fit an SM's 64K registers); float64 64 x 64 x 8
// with 4 x 4 per thread (FP64 units are the bottleneck there, not the loads).
// float16 and bfloat16 run the float32 kernel on operands converted as they are loaded: the
// shared tiles, the products and their sums are float32, and each element of out is rounded
// once to the 16-bit dtype as it is stored (what the primitive table's matmul rows say).
//
// Loads from global memory: each thread brings one vector of A and one of B per slice, 16
// bytes (8 for the 16-bit floats: four elements, as many as a float32 vector). Which elements
// depends on the operand's layout, chosen per call:
//   - along k when the operand is contiguous in k (A row-major, B transposed);
//   - along m (A) or p (B) when contiguous that way (A transposed, B row-major);
//   - element by element for any other strides (broadcast rows, steps, odd alignment).
// Edge tiles are zero-filled (loads) and masked (stores), so any m, n, p works.

#include "common.cuh"

namespace needle {
namespace cuda {
namespace {

// The block tile of linear block index `block` (see gemm_tile_of_block in kernels.h).
__host__ __device__ inline TileCoord tile_of_block(int64_t block, int64_t tiles_m,
                                                   int64_t tiles_n) {
  const int64_t per_group = kGemmGroupRows * tiles_n;
  const int64_t first_m = block / per_group * kGemmGroupRows;
  const int64_t rows = tiles_m - first_m < kGemmGroupRows ? tiles_m - first_m : kGemmGroupRows;
  const int64_t within = block % per_group;
  return {first_m + within % rows, within / rows};
}

enum Layout : int { kAlongK = 0, kAlongIndex = 1, kGeneric = 2 };

// One operand as the kernel sees it: X[b][i][k], i the output index (m for A, p for B).
// Dimensions are 32-bit (the host checks), strides and offsets 64-bit.
template <class T> struct Operand {
  const T* ptr;  // offset applied
  int64_t batch_stride, index_stride, k_stride;
  int extent;  // m for A, p for B
};

template <class T> struct GemmParams {
  Operand<T> a, b;
  T* out;
  int64_t batch0;  // the batch of blockIdx.y == 0 (a grid covers at most 65535 batches)
  int m, n, p;
  int tiles_m, tiles_n;
  bool vector_store;  // out rows are aligned to a vector (p a multiple of the vector width)
};

template <class T> struct Tiling;
template <> struct Tiling<float> {
  static constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8, kMinBlocksPerSm = 2;
};
template <> struct Tiling<double> {
  static constexpr int BM = 64, BN = 64, BK = 8, TM = 4, TN = 4, kMinBlocksPerSm = 2;
};
template <> struct Tiling<float16> : Tiling<float> {};
template <> struct Tiling<bfloat16> : Tiling<float> {};

// The type a GEMM of T computes in (shared tiles, products, sums): float for a 16-bit float.
template <class T> using acc_t = std::conditional_t<is_half<T>, float, T>;
// The elements of one operand load: a 16-byte vector of the computing type.
template <class T> constexpr int kLoad = kVec<acc_t<T>>;

// The share of one operand's BI x BK slice that a thread moves from global to shared
// memory: W elements (one vector, converted to the computing type A on the way). LAYOUT is
// a template parameter, so each kernel carries only the path it uses (registers: the float32
// kernel must stay within 128). Coordinates are recomputed from the thread index (shifts and
// masks) rather than kept.
template <class T, int BI, int BK, int THREADS, int LAYOUT> struct SliceLoader {
  using A = acc_t<T>;
  static constexpr int W = kLoad<T>;
  static constexpr int PAD = W;  // shared rows of BI + W elements: see store()
  static_assert(BI * BK == THREADS * W, "each thread moves exactly one vector per slice");
  static_assert(BK % W == 0 && BI % W == 0, "vectors must not straddle a tile edge");

  T reg[W];

  // This thread's element l of the slice, as (i, k) within the tile.
  __device__ __forceinline__ static void coord(const Operand<T>& x, int tid, int l, int& i,
                                               int& k) {
    if (LAYOUT == kAlongK) {
      i = tid / (BK / W), k = (tid % (BK / W)) * W + l;
    } else if (LAYOUT == kAlongIndex) {
      k = tid / (BI / W), i = (tid % (BI / W)) * W + l;
    } else {  // consecutive threads walk the dimension with the smaller stride (coalescing)
      const int e = tid + THREADS * l;
      if (x.k_stride <= x.index_stride) {
        k = e % BK, i = e / BK;
      } else {
        i = e % BI, k = e / BI;
      }
    }
  }

  // Loads the slice at tile origin (i0, k0) of a batch's operand `base`; zeros outside
  // [0, extent) x [0, n), so edge tiles add nothing.
  __device__ __forceinline__ void load(const Operand<T>& x, const T* base, int i0, int k0, int n,
                                       int tid) {
    int i, k;
    coord(x, tid, 0, i, k);
    i += i0, k += k0;
    if (LAYOUT == kAlongK) {  // k_stride == 1
      const T* src = base + int64_t(i) * x.index_stride + k;
      if (i < x.extent && k + W <= n) {
        load_pack<W>(src, reg);
      } else {
#pragma unroll
        for (int l = 0; l < W; ++l) reg[l] = (i < x.extent && k + l < n) ? src[l] : T{};
      }
    } else if (LAYOUT == kAlongIndex) {  // index_stride == 1
      const T* src = base + int64_t(k) * x.k_stride + i;
      if (k < n && i + W <= x.extent) {
        load_pack<W>(src, reg);
      } else {
#pragma unroll
        for (int l = 0; l < W; ++l) reg[l] = (k < n && i + l < x.extent) ? src[l] : T{};
      }
    } else {
#pragma unroll
      for (int l = 0; l < W; ++l) {
        coord(x, tid, l, i, k);
        i += i0, k += k0;
        reg[l] = (i < x.extent && k < n)
                     ? base[int64_t(i) * x.index_stride + int64_t(k) * x.k_stride]
                     : T{};
      }
    }
  }

  // Writes the loaded share into the k-major shared tile xs[k][i]. Transposing stores
  // (kAlongK) put a thread's W values in W different rows; with rows of BI + W elements the
  // lanes of a warp then hit different banks (float: rows 16 banks apart for k and k + 4).
  __device__ __forceinline__ void store(A (*xs)[BI + PAD], const Operand<T>& x, int tid) const {
    if (LAYOUT == kAlongIndex) {
      int i, k;
      coord(x, tid, 0, i, k);
      A v[W];
#pragma unroll
      for (int l = 0; l < W; ++l) v[l] = convert<A>(reg[l]);
      store_vec(&xs[k][i], v);
    } else {
#pragma unroll
      for (int l = 0; l < W; ++l) {
        int i, k;
        coord(x, tid, l, i, k);
        xs[k][i] = convert<A>(reg[l]);
      }
    }
  }
};

// W accumulators into out's row from column col, each rounded once to T.
template <class T>
__device__ __forceinline__ void store_row_piece(T* row, int col, int p, const acc_t<T>* acc,
                                                bool vector_store) {
  constexpr int W = kLoad<T>;
  T v[W];
#pragma unroll
  for (int l = 0; l < W; ++l) v[l] = convert<T>(acc[l]);
  if (vector_store && col + W <= p) {
    store_pack<W>(row + col, v);
  } else {
#pragma unroll
    for (int l = 0; l < W; ++l) {
      if (col + l < p) row[col + l] = v[l];
    }
  }
}

template <class T, int BM, int BN, int BK, int TM, int TN, int MIN_BLOCKS, int LA, int LB>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), MIN_BLOCKS) gemm_kernel(GemmParams<T> g) {
  using A = acc_t<T>;
  constexpr int THREADS = (BM / TM) * (BN / TN);
  constexpr int W = kVec<A>;
  static_assert(TM == 2 * W && TN == 2 * W, "a thread's block is two vectors each way");
  using LoaderA = SliceLoader<T, BM, BK, THREADS, LA>;
  using LoaderB = SliceLoader<T, BN, BK, THREADS, LB>;
  __shared__ __align__(16) A as[2][BK][BM + LoaderA::PAD];
  __shared__ __align__(16) A bs[2][BK][BN + LoaderB::PAD];

  const int tid = threadIdx.x;
  const int tx = tid % (BN / TN), ty = tid / (BN / TN);
  const TileCoord tile = tile_of_block(blockIdx.x, g.tiles_m, g.tiles_n);
  const int row0 = static_cast<int>(tile.m) * BM, col0 = static_cast<int>(tile.n) * BN;
  const int k_slices = (g.n + BK - 1) / BK;

  // One batch per block row of the grid. (A grid-stride loop over batches here would keep a
  // 64-bit counter and pointers live through the main loop, which costs the float32 kernel
  // register spills at its 128-register budget.)
  {
    const int64_t batch = g.batch0 + blockIdx.y;
    const T* a = g.a.ptr + batch * g.a.batch_stride;
    const T* b = g.b.ptr + batch * g.b.batch_stride;
    LoaderA load_a;
    LoaderB load_b;
    A acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = A(0);
    }

    load_a.load(g.a, a, row0, 0, g.n, tid);
    load_b.load(g.b, b, col0, 0, g.n, tid);
    load_a.store(as[0], g.a, tid);
    load_b.store(bs[0], g.b, tid);
    __syncthreads();

    for (int s = 0; s < k_slices; ++s) {
      const int stage = s & 1;
      const bool more = s + 1 < k_slices;
      if (more) {  // the next slice's loads are in flight during the FMAs below
        load_a.load(g.a, a, row0, (s + 1) * BK, g.n, tid);
        load_b.load(g.b, b, col0, (s + 1) * BK, g.n, tid);
      }
#pragma unroll
      for (int k = 0; k < BK; ++k) {
        A af[TM], bf[TN];
        const A* a_lo = &as[stage][k][ty * W];
        const A* b_lo = &bs[stage][k][tx * W];
        load_vec(a_lo, af);
        load_vec(a_lo + BM / 2, af + W);
        load_vec(b_lo, bf);
        load_vec(b_lo + BN / 2, bf + W);
#pragma unroll
        for (int i = 0; i < TM; ++i) {
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] += af[i] * bf[j];
        }
      }
      if (more) {  // the other stage was last read before the previous barrier
        load_a.store(as[stage ^ 1], g.a, tid);
        load_b.store(bs[stage ^ 1], g.b, tid);
      }
      __syncthreads();
    }

    // Thread rows: ty*W + [0, W) and BM/2 + ty*W + [0, W); columns likewise with tx.
    T* out = g.out + batch * g.m * g.p;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int row = row0 + (i < W ? ty * W + i : BM / 2 + ty * W + (i - W));
      if (row >= g.m) continue;
      T* out_row = out + int64_t(row) * g.p;
      store_row_piece(out_row, col0 + tx * W, g.p, &acc[i][0], g.vector_store);
      store_row_piece(out_row, col0 + BN / 2 + tx * W, g.p, &acc[i][W], g.vector_store);
    }
  }
}

template <class T>
Operand<T> make_operand(const MatrixView& v, int64_t extent, bool is_a, int& layout) {
  // A is (m, n): index = row, k = column. B is (n, p): index = column, k = row.
  Operand<T> x;
  x.ptr = static_cast<const T*>(v.ptr) + v.offset;
  x.batch_stride = v.batch_stride;
  x.index_stride = is_a ? v.row_stride : v.col_stride;
  x.k_stride = is_a ? v.col_stride : v.row_stride;
  x.extent = static_cast<int>(extent);
  constexpr int W = kLoad<T>;
  // Vector loads need every vector's first element aligned to the vector: the base pointer,
  // and every batch and row start (tile origins and vector offsets are multiples of W).
  const bool aligned = cuda::aligned(x.ptr, W * sizeof(T)) && x.batch_stride % W == 0;
  if (aligned && x.k_stride == 1 && x.index_stride % W == 0) {
    layout = kAlongK;
  } else if (aligned && x.index_stride == 1 && x.k_stride % W == 0) {
    layout = kAlongIndex;
  } else {
    layout = kGeneric;
  }
  return x;
}

template <class T, int LA, int LB>
void launch_gemm(const GemmParams<T>& g, const LaunchConfig& config) {
  using C = Tiling<T>;
  launch("matmul", gemm_kernel<T, C::BM, C::BN, C::BK, C::TM, C::TN, C::kMinBlocksPerSm, LA, LB>,
         config, g);
}

template <class T, int LA>
void launch_gemm(const GemmParams<T>& g, const LaunchConfig& config, int layout_b) {
  if (layout_b == kAlongK) return launch_gemm<T, LA, kAlongK>(g, config);
  if (layout_b == kAlongIndex) return launch_gemm<T, LA, kAlongIndex>(g, config);
  launch_gemm<T, LA, kGeneric>(g, config);
}

template <class T>
void matmul_typed(const MatrixView& a, const MatrixView& b, void* out, int64_t batch, int64_t m,
                  int64_t n, int64_t p) {
  using C = Tiling<T>;
  constexpr int64_t kMaxDim = 0x7fffffff - 2 * C::BM;  // 32-bit tile arithmetic never wraps
  if (m > kMaxDim || n > kMaxDim || p > kMaxDim) {
    throw std::invalid_argument("matmul: a dimension of 2^31 or more");
  }
  GemmParams<T> g;
  int layout_a, layout_b;
  g.a = make_operand<T>(a, m, true, layout_a);
  g.b = make_operand<T>(b, p, false, layout_b);
  g.out = static_cast<T*>(out);
  g.m = static_cast<int>(m), g.n = static_cast<int>(n), g.p = static_cast<int>(p);
  g.tiles_m = static_cast<int>(ceil_div<int64_t>(m, C::BM));
  g.tiles_n = static_cast<int>(ceil_div<int64_t>(p, C::BN));
  g.vector_store = aligned(out, kLoad<T> * sizeof(T)) && p % kLoad<T> == 0;
  const int64_t tiles = int64_t(g.tiles_m) * g.tiles_n;
  if (tiles > 0x7fffffff) throw std::invalid_argument("matmul: output too large for one grid");
  const int64_t max_y = device_info().max_grid_y;
  for (int64_t batch0 = 0; batch0 < batch; batch0 += max_y) {
    g.batch0 = batch0;
    const int64_t batches = batch - batch0 < max_y ? batch - batch0 : max_y;
    const LaunchConfig config{dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(batches)),
                              dim3((C::BM / C::TM) * (C::BN / C::TN))};
    if (layout_a == kAlongK) {
      launch_gemm<T, kAlongK>(g, config, layout_b);
    } else if (layout_a == kAlongIndex) {
      launch_gemm<T, kAlongIndex>(g, config, layout_b);
    } else {
      launch_gemm<T, kGeneric>(g, config, layout_b);
    }
  }
}

}  // namespace

TileCoord gemm_tile_of_block(int64_t block, int64_t tiles_m, int64_t tiles_n) {
  return tile_of_block(block, tiles_m, tiles_n);
}

GemmTiling gemm_tiling(DType dt) {
  return with_dtype<MatmulTypes>(dt, [](auto t) {
    using C = Tiling<decltype(t)>;
    return GemmTiling{C::BM, C::BN, C::BK, C::TM, C::TN, (C::BM / C::TM) * (C::BN / C::TN)};
  });
}

void matmul(DType dt, const MatrixView& a, const MatrixView& b, void* out, int64_t batch, int64_t m,
            int64_t n, int64_t p) {
  if (batch <= 0 || m <= 0 || p <= 0) return;
  with_dtype<MatmulTypes>(dt,
                          [&](auto t) { matmul_typed<decltype(t)>(a, b, out, batch, m, n, p); });
}

}  // namespace cuda
}  // namespace needle
