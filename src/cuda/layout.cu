// Layout primitives over strided views: compact (gather), ewise_setitem (scatter),
// scalar_setitem (scatter of one value). One thread per element of the view, in a
// grid-stride loop: consecutive threads take consecutive elements in C order, so the
// compact side of every copy is coalesced, and the strided side is whenever the view's
// innermost axis is. Views that are one contiguous run become a plain device copy.
//
// Any view works (any number of axes, signed and zero strides); NDArray merges a view's
// axes first (primitives.simplify_view), which saves the kernels divisions per element.

#include <stdexcept>
#include <string>

#include "common.cuh"

namespace needle {
namespace cuda {
namespace {

// A view by value as a kernel argument (a few hundred bytes of parameter space), its axes of
// size 1 dropped (they never move the offset).
struct ViewArg {
  int ndim;
  int64_t offset;
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
};

ViewArg to_arg(const Shape& shape, const Shape& strides, int64_t offset) {
  ViewArg arg{};
  arg.offset = offset;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (arg.ndim == kMaxDims) {
      throw std::invalid_argument("a strided view with more than " + std::to_string(kMaxDims) +
                                  " axes longer than 1");
    }
    arg.shape[arg.ndim] = shape[d];
    arg.strides[arg.ndim++] = strides[d];
  }
  return arg;
}

// The storage offset of the i-th element (C order) of the view. `Index` is 32-bit when the
// view has fewer than 2^31 elements: the divisions are then a few instructions, where
// 64-bit ones are a slow software sequence.
template <class Index>
__device__ __forceinline__ int64_t element_offset(const ViewArg& v, Index i) {
  int64_t offset = v.offset;
  for (int d = v.ndim - 1; d >= 0; --d) {
    const Index dim = static_cast<Index>(v.shape[d]);
    const Index q = i / dim;
    offset += static_cast<int64_t>(i - q * dim) * v.strides[d];
    i = q;
  }
  return offset;
}

// What happens to element i of the view, stored at `at`.
template <class T> struct Gather {  // compact
  const T* src;
  T* dst;
  __device__ void operator()(int64_t i, int64_t at) const { dst[i] = src[at]; }
};
template <class T> struct Scatter {  // ewise_setitem
  const T* src;
  T* dst;
  __device__ void operator()(int64_t i, int64_t at) const { dst[at] = src[i]; }
};
template <class T> struct Put {  // scalar_setitem
  T val;
  T* dst;
  __device__ void operator()(int64_t, int64_t at) const { dst[at] = val; }
};

template <class Index, class Op> __global__ void strided_kernel(Op op, ViewArg view, Index n) {
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    op(static_cast<int64_t>(i), element_offset(view, i));
  }
}

// op over the n elements of a view, with 32-bit indices while i + the grid's stride cannot
// wrap them.
template <class Op>
void strided(const char* name, Op op, const Shape& shape, const Shape& strides, int64_t offset,
             int64_t n) {
  const ViewArg arg = to_arg(shape, strides, offset);
  const LaunchConfig config = grid_stride_config(n);
  if (n < (int64_t{1} << 31)) {
    launch(name, strided_kernel<uint32_t, Op>, config, op, arg, static_cast<uint32_t>(n));
  } else {
    launch(name, strided_kernel<uint64_t, Op>, config, op, arg, static_cast<uint64_t>(n));
  }
}

// Element `offset` of a buffer of dt.
const char* address(const void* p, int64_t offset, DType dt) {
  return static_cast<const char*>(p) + offset * static_cast<int64_t>(itemsize(dt));
}
char* address(void* p, int64_t offset, DType dt) {
  return static_cast<char*>(p) + offset * static_cast<int64_t>(itemsize(dt));
}

}  // namespace

int64_t view_size(const Shape& shape) {
  int64_t size = 1;
  for (const int64_t d : shape) {
    if (d < 0) throw std::invalid_argument("negative dimension in a view");
    size *= d;
  }
  return size;
}

bool is_contiguous(const Shape& shape, const Shape& strides) {
  int64_t expected = 1;  // the stride of a C-contiguous array, from the last axis
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] != 1 && strides[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

void compact(DType dt, const void* src, void* dst, const Shape& shape, const Shape& strides,
             int64_t offset) {
  const int64_t n = view_size(shape);
  if (n == 0) return;
  if (is_contiguous(shape, strides)) {  // one run of memory: a plain copy at full bandwidth
    return copy_device_to_device(dst, address(src, offset, dt), n * itemsize(dt));
  }
  with_dtype<AllTypes>(dt, [&](auto t) {
    using T = decltype(t);
    strided("compact", Gather<T>{static_cast<const T*>(src), static_cast<T*>(dst)}, shape, strides,
            offset, n);
  });
}

void ewise_setitem(DType dt, const void* src, void* dst, const Shape& shape, const Shape& strides,
                   int64_t offset) {
  const int64_t n = view_size(shape);
  if (n == 0) return;
  if (is_contiguous(shape, strides)) {
    return copy_device_to_device(address(dst, offset, dt), src, n * itemsize(dt));
  }
  with_dtype<AllTypes>(dt, [&](auto t) {
    using T = decltype(t);
    strided("ewise_setitem", Scatter<T>{static_cast<const T*>(src), static_cast<T*>(dst)}, shape,
            strides, offset, n);
  });
}

void scalar_setitem(DType dt, double val, void* dst, const Shape& shape, const Shape& strides,
                    int64_t offset) {
  const int64_t n = view_size(shape);
  if (n == 0) return;
  if (is_contiguous(shape, strides)) { return fill(dt, address(dst, offset, dt), n, val); }
  with_dtype<AllTypes>(dt, [&](auto t) {
    using T = decltype(t);
    strided("scalar_setitem", Put<T>{scalar_value<T>("scalar_setitem", val), static_cast<T*>(dst)},
            shape, strides, offset, n);
  });
}

}  // namespace cuda
}  // namespace needle
