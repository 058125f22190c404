// Reductions (sum, max) over the last axis of a compact array, or over a middle axis of a
// compact (outer, reduce, inner) array. Each thread accumulates a strided share of its
// elements (16-byte loads where aligned); warps combine with butterfly shuffles, blocks with
// a tree through shared memory. When rows are too few to fill the GPU, each row is cut
// into chunks reduced by separate blocks, and a second pass combines the chunks.

#include <algorithm>

#include "common.cuh"

namespace needle {
namespace cuda {
namespace {

constexpr int kWarps = kBlockThreads / kWarpSize;

// Rows up to this long take one thread each (a warp would idle most lanes).
constexpr int64_t kThreadRowMax = 16;
// Rows up to this long take one warp each, as do longer rows when there are enough of them
// to give every SM 64 resident warps (the Volta-to-Hopper maximum).
constexpr int64_t kWarpRowMax = 1024;
constexpr int64_t kWarpsToFill = 64;
// A chunk of a row is at least this long: 16 elements per thread of a block, so that a
// block's fixed costs (two barriers, the final tree) stay small against its loads.
constexpr int64_t kMinChunk = 16 * kBlockThreads;
// At most this many chunks per row, so the second pass is one warp per row.
constexpr int64_t kMaxChunks = 1024;

// op over p[lane], p[lane + lanes], ... p[len - 1] (16-byte loads when p is aligned).
template <class T, class Op>
__device__ __forceinline__ T accumulate(const T* p, int64_t len, int lane, int lanes, Op op) {
  T acc = Op::template identity<T>();
  for_each_share<T>(
      len, lane, lanes, aligned16(p),
      [&](int64_t i) {
        T x[kVec<T>];
        load_vec(p + i, x);
#pragma unroll
        for (int l = 0; l < kVec<T>; ++l) acc = op(acc, x[l]);
      },
      [&](int64_t i) { acc = op(acc, p[i]); });
  return acc;
}

// One thread per row: short rows.
template <class T, class Op>
__global__ void reduce_rows_thread_kernel(Op op, const T* a, T* out, int64_t rows, int64_t len) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < rows; row += stride) {
    const T* p = a + row * len;
    T acc = Op::template identity<T>();
    for (int64_t i = 0; i < len; ++i) acc = op(acc, p[i]);
    out[row] = acc;
  }
}

// One warp per row. Every lane of a warp runs the same rows, so the shuffles never diverge.
template <class T, class Op>
__global__ void reduce_rows_warp_kernel(Op op, const T* a, T* out, int64_t rows, int64_t len) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize; row < rows;
       row += warps) {
    const T acc = warp_reduce(accumulate(a + row * len, len, lane, kWarpSize, op), op);
    if (lane == 0) out[row] = acc;
  }
}

// One block per (row, chunk): out[row * chunks + c] = op over the chunk's elements.
template <class T, class Op>
__global__ void reduce_rows_block_kernel(Op op, const T* a, T* out, int64_t rows, int64_t len,
                                         int64_t chunk_len, int64_t chunks) {
  __shared__ T warp_results[kWarps];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  for (int64_t item = blockIdx.x; item < rows * chunks; item += gridDim.x) {
    const int64_t row = item / chunks, start = (item % chunks) * chunk_len;
    const int64_t count = len - start < chunk_len ? len - start : chunk_len;
    T acc = accumulate(a + row * len + start, count, threadIdx.x, blockDim.x, op);
    acc = warp_reduce(acc, op);
    if (lane == 0) warp_results[warp] = acc;
    __syncthreads();
    if (warp == 0) {
      acc = lane < kWarps ? warp_results[lane] : Op::template identity<T>();
      acc = warp_reduce(acc, op);
      if (lane == 0) out[item] = acc;
    }
    __syncthreads();  // warp_results is rewritten by the next item
  }
}

// The middle axis of (outer, len, inner): a block of (bx, by) threads, bx a power of two up
// to 32 along inner (so a warp reads 32 / bx rows of bx consecutive elements: coalesced
// even for small inner) and by = 256 / bx along the reduced axis. Block x-index: a tile of bx
// columns of one outer slice (grid-stride); block y-index: the chunk of the reduced axis.
// out[(o * chunks + c) * inner + i].
template <class T, class Op>
__global__ void reduce_middle_kernel(Op op, const T* a, T* out, int64_t outer, int64_t len,
                                     int64_t inner, int64_t chunk_len, int64_t chunks) {
  __shared__ T warp_results[kWarps][kWarpSize];
  const int bx = blockDim.x, by = blockDim.y;
  const int tid = threadIdx.y * bx + threadIdx.x;
  const int lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int64_t tiles = (inner + bx - 1) / bx;
  const int64_t c = blockIdx.y;
  const int64_t start = c * chunk_len;
  const int64_t stop = len < start + chunk_len ? len : start + chunk_len;
  for (int64_t item = blockIdx.x; item < outer * tiles; item += gridDim.x) {
    const int64_t o = item / tiles;
    const int64_t i = (item % tiles) * bx + threadIdx.x;
    T acc = Op::template identity<T>();
    if (i < inner) {
      const T* p = a + o * len * inner + i;
      for (int64_t r = start + threadIdx.y; r < stop; r += by) acc = op(acc, p[r * inner]);
    }
    // Lanes of one column sit bx apart within the warp: fold them together.
    for (int offset = kWarpSize / 2; offset >= bx; offset >>= 1) {
      acc = op(acc, shfl_xor(acc, offset));
    }
    if (lane < bx) warp_results[warp][lane] = acc;
    __syncthreads();
    if (tid < bx) {  // threadIdx.y == 0, threadIdx.x == tid: this thread's column is i
      acc = warp_results[0][tid];
      for (int w = 1; w < kWarps; ++w) acc = op(acc, warp_results[w][tid]);
      if (i < inner) out[(o * chunks + c) * inner + i] = acc;
    }
    __syncthreads();
  }
}

int64_t next_pow2(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

// Splits `len` into chunks of a multiple of 4 elements (chunk starts stay 16-byte aligned
// when the row start is) so that `items * chunks` reaches about `target` blocks.
void split_rows(ReducePlan& plan, int64_t items, int64_t len, int64_t target, int64_t min_chunk) {
  int64_t chunks = 1;
  if (items < target && len > 2 * min_chunk) {
    chunks = std::min({ceil_div(target, items), len / min_chunk, kMaxChunks});
    chunks = std::max<int64_t>(chunks, 1);
  }
  plan.chunk_len = ceil_div<int64_t>(ceil_div(len, chunks), 4) * 4;
  plan.chunks = ceil_div(len, plan.chunk_len);
}

template <class T, class Op>
void reduce_last_typed(const void* src, void* dst, int64_t rows, int64_t len) {
  const ReducePlan plan = plan_reduce_last(rows, len, device_info().sm_count);
  const LaunchConfig config{dim3(plan.grid_x, plan.grid_y), dim3(plan.block_x, plan.block_y)};
  const T* a = static_cast<const T*>(src);
  T* out = static_cast<T*>(dst);
  if (plan.strategy == 0) {
    launch("reduce (thread per row)", reduce_rows_thread_kernel<T, Op>, config, Op(), a, out, rows,
           len);
  } else if (plan.strategy == 1) {
    launch("reduce (warp per row)", reduce_rows_warp_kernel<T, Op>, config, Op(), a, out, rows,
           len);
  } else if (plan.chunks == 1) {
    launch("reduce (block per row)", reduce_rows_block_kernel<T, Op>, config, Op(), a, out, rows,
           len, plan.chunk_len, plan.chunks);
  } else {
    DeviceBuffer partial(sizeof(T) * rows * plan.chunks);
    launch("reduce (blocks per row)", reduce_rows_block_kernel<T, Op>, config, Op(), a,
           partial.get<T>(), rows, len, plan.chunk_len, plan.chunks);
    reduce_last_typed<T, Op>(partial.get<T>(), out, rows, plan.chunks);
  }
}

template <class T, class Op>
void reduce_middle_typed(const void* src, void* dst, int64_t outer, int64_t len, int64_t inner) {
  const ReducePlan plan = plan_reduce_middle(outer, len, inner, device_info().sm_count);
  const LaunchConfig config{dim3(plan.grid_x, plan.grid_y), dim3(plan.block_x, plan.block_y)};
  const T* a = static_cast<const T*>(src);
  if (plan.chunks == 1) {
    launch("reduce (middle axis)", reduce_middle_kernel<T, Op>, config, Op(), a,
           static_cast<T*>(dst), outer, len, inner, plan.chunk_len, plan.chunks);
    return;
  }
  DeviceBuffer partial(sizeof(T) * outer * plan.chunks * inner);
  launch("reduce (middle axis, chunks)", reduce_middle_kernel<T, Op>, config, Op(), a,
         partial.get<T>(), outer, len, inner, plan.chunk_len, plan.chunks);
  reduce_middle_typed<T, Op>(partial.get<T>(), dst, outer, plan.chunks, inner);
}

// f(T(), Op()) with Op the functor of op and T the type of dt, one of op's dtypes: sums in
// float32, float64 and int64 (NDArray sums the other integers and bool as int64), max in
// every dtype.
template <class F> void with_reduce(ReduceOp op, DType dt, F&& f) {
  if (op == ReduceOp::sum) return with_dtype<SumTypes>(dt, [&](auto t) { f(t, SumOp()); });
  with_dtype<Computed>(dt, [&](auto t) { f(t, MaxOp()); });
}

}  // namespace

ReducePlan plan_reduce_last(int64_t rows, int64_t len, int sm_count) {
  ReducePlan plan{};
  plan.chunks = 1;
  plan.chunk_len = len;
  plan.grid_y = plan.block_y = 1;
  plan.block_x = kBlockThreads;
  if (len <= kThreadRowMax) {
    plan.strategy = 0;
    plan.grid_x = grid_size(rows, kBlockThreads, sm_count);
  } else if (len <= kWarpRowMax || rows >= kWarpsToFill * sm_count) {
    plan.strategy = 1;
    plan.grid_x = grid_size(rows * kWarpSize, kBlockThreads, sm_count);
  } else {
    plan.strategy = 2;
    split_rows(plan, rows, len, int64_t{8} * sm_count, kMinChunk);
    plan.grid_x = grid_size(rows * plan.chunks * kBlockThreads, kBlockThreads, sm_count);
  }
  return plan;
}

ReducePlan plan_reduce_middle(int64_t outer, int64_t len, int64_t inner, int sm_count) {
  ReducePlan plan{};
  plan.strategy = 3;
  plan.block_x = static_cast<unsigned>(std::min<int64_t>(kWarpSize, next_pow2(inner)));
  plan.block_y = kBlockThreads / plan.block_x;
  const int64_t items = outer * ceil_div<int64_t>(inner, plan.block_x);
  // A chunk gives each thread at least 16 rows of the reduced axis.
  split_rows(plan, items, len, int64_t{8} * sm_count, int64_t{16} * plan.block_y);
  plan.grid_x = grid_size(items * kBlockThreads, kBlockThreads, sm_count);
  plan.grid_y = static_cast<unsigned>(plan.chunks);
  return plan;
}

void reduce_last(ReduceOp op, DType dt, const void* a, void* out, int64_t rows,
                 int64_t reduce_size) {
  if (rows <= 0 || reduce_size <= 0) return;
  with_reduce(op, dt, [&](auto t, auto o) {
    reduce_last_typed<decltype(t), decltype(o)>(a, out, rows, reduce_size);
  });
}

void reduce_middle(ReduceOp op, DType dt, const void* a, void* out, int64_t outer,
                   int64_t reduce_size, int64_t inner) {
  if (outer <= 0 || inner <= 0 || reduce_size <= 0) return;
  if (inner == 1) return reduce_last(op, dt, a, out, outer, reduce_size);  // rows: no stride
  with_reduce(op, dt, [&](auto t, auto o) {
    reduce_middle_typed<decltype(t), decltype(o)>(a, out, outer, reduce_size, inner);
  });
}

}  // namespace cuda
}  // namespace needle
