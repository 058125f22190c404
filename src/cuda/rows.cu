// Rows by index: gather_rows (an embedding lookup: out row i = a row indices[i]) and
// scatter_add_rows (its gradient: out row indices[i] += a row i). One thread per element of
// the n indexed rows in a grid-stride loop, consecutive threads on consecutive columns, so
// the compact side (out of a gather, a of a scatter) is read or written coalesced, and the
// indexed side a row at a time; the threads of a row read the same index from one L1 line.
// Indices are whole numbers stored in the array's dtype (float32 holds them exactly up to
// 2^24) and in range, both checked by NDArray.
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
__global__ void rows_kernel(const T* a, const T* indices, T* out, Index size, Index row_size) {
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index e = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; e < size; e += stride) {
    const Index i = e / row_size;
    const int64_t indexed = static_cast<int64_t>(indices[i]) * static_cast<int64_t>(row_size) +
                            static_cast<int64_t>(e - i * row_size);
    if (direction == Rows::gather) {
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
  const T* idx = static_cast<const T*>(indices);
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
  with_dtype(dt, [&](auto t) {
    rows<decltype(t), Rows::gather>("gather_rows", a, indices, out, n, row_size);
  });
}

void scatter_add_rows(DType dt, const void* a, const void* indices, void* out, int64_t n,
                      int64_t row_size) {
  with_dtype(dt, [&](auto t) {
    rows<decltype(t), Rows::scatter_add>("scatter_add_rows", a, indices, out, n, row_size);
  });
}

}  // namespace cuda
}  // namespace needle
