// Rows by index: gather_rows (an embedding lookup: out row i = a row indices[i]) and
// scatter_add_rows (its gradient: out row indices[i] += a row i). One thread per element of
// the n indexed rows in a grid-stride loop, consecutive threads on consecutive columns, so
// the compact side (out of a gather, a of a scatter) is read or written coalesced, and the
// indexed side a row at a time; the threads of a row read the same index from one L1 line.
// Indices are an int64 Array of row numbers, in range (checked by NDArray). gather_rows
// takes every dtype, scatter_add_rows float32 and float64.
//
// Repeated indices make scatter_add's threads meet on one element: they add with atomicAdd
// (float and double atomics exist from sm_60 on; CUDA 13 targets sm_75 and later), so the
// order of the additions, and with it the last bits of a sum, varies from run to run.

#include "common.cuh"

namespace needle {
namespace cuda {
namespace {

enum class Rows { gather, scatter_add };

// `Index` is 32-bit when the n indexed rows hold fewer than 2^31 elements (always, for an
// embedding): the division by row_size is then a few instructions, not a 64-bit sequence.
template <class T, class Index, Rows direction>
__global__ void rows_kernel(const T* a, const int64_t* indices, T* out, Index size,
                            Index row_size) {
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index e = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; e < size; e += stride) {
    const Index i = e / row_size;
    const int64_t indexed =
        indices[i] * static_cast<int64_t>(row_size) + static_cast<int64_t>(e - i * row_size);
    if constexpr (direction == Rows::gather) {
      out[e] = a[indexed];
    } else {
      atomicAdd(out + indexed, a[e]);
    }
  }
}

template <class T, Rows direction>
void rows(const char* name, const void* a, const void* indices, void* out, int64_t n,
          int64_t row_size) {
  const int64_t size = n * row_size;
  if (size <= 0) return;
  const LaunchConfig config = grid_stride_config(size);
  const T* src = static_cast<const T*>(a);
  const int64_t* idx = static_cast<const int64_t*>(indices);
  T* dst = static_cast<T*>(out);
  if (size < (int64_t{1} << 31)) {  // e + the grid's stride cannot wrap 32 bits
    launch(name, rows_kernel<T, uint32_t, direction>, config, src, idx, dst,
           static_cast<uint32_t>(size), static_cast<uint32_t>(row_size));
  } else {
    launch(name, rows_kernel<T, uint64_t, direction>, config, src, idx, dst,
           static_cast<uint64_t>(size), static_cast<uint64_t>(row_size));
  }
}

}  // namespace

void gather_rows(DType dt, const void* a, const void* indices, void* out, int64_t n,
                 int64_t row_size) {
  with_dtype<AllTypes>(dt, [&](auto t) {
    rows<decltype(t), Rows::gather>("gather_rows", a, indices, out, n, row_size);
  });
}

void scatter_add_rows(DType dt, const void* a, const void* indices, void* out, int64_t n,
                      int64_t row_size) {
  with_dtype<Floats>(dt, [&](auto t) {
    rows<decltype(t), Rows::scatter_add>("scatter_add_rows", a, indices, out, n, row_size);
  });
}

}  // namespace cuda
}  // namespace needle
