// Layout primitives over strided views: compact (gather), ewise_setitem (scatter),
// scalar_setitem (scatter of one value). One thread per element of the view, in a
// grid-stride loop: consecutive threads take consecutive elements in C order, so the
// compact side of every copy is coalesced, and the strided side is whenever the view's
// innermost axis is. Views that are one contiguous run become a plain device copy.

#include <algorithm>
#include <stdexcept>

#include "common.cuh"

namespace needle {
namespace cuda {
namespace {

// A simplified view, by value as a kernel argument (a few hundred bytes of parameter space).
struct ViewArg {
  int ndim;
  int64_t offset;
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
};

// The storage offset of the i-th element (C order) of the view. `Index` is 32-bit when the
// view has fewer than 2^31 elements: the divisions are then a few instructions, where
// 64-bit ones are a slow software sequence.
template <class Index> __device__ __forceinline__ int64_t element_offset(const ViewArg& v, Index i) {
  int64_t offset = v.offset;
  for (int d = v.ndim - 1; d >= 0; --d) {
    const Index dim = static_cast<Index>(v.shape[d]);
    const Index q = i / dim;
    offset += static_cast<int64_t>(i - q * dim) * v.strides[d];
    i = q;
  }
  return offset;
}

enum class Copy { gather, scatter };

template <class T, class Index, Copy direction>
__global__ void strided_copy_kernel(const T* src, T* dst, ViewArg view, Index n) {
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t offset = element_offset(view, i);
    if (direction == Copy::gather) {
      dst[i] = src[offset];
    } else {
      dst[offset] = src[i];
    }
  }
}

template <class T, class Index>
__global__ void strided_fill_kernel(T val, T* dst, ViewArg view, Index n) {
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    dst[element_offset(view, i)] = val;
  }
}

ViewArg to_arg(const View& v) {
  if (v.shape.size() > static_cast<size_t>(kMaxDims)) {
    throw std::invalid_argument("a strided view with more than " + std::to_string(kMaxDims) +
                                " axes that cannot be merged");
  }
  ViewArg arg{};
  arg.ndim = static_cast<int>(v.shape.size());
  arg.offset = v.offset;
  for (int d = 0; d < arg.ndim; ++d) {
    arg.shape[d] = v.shape[d];
    arg.strides[d] = v.strides[d];
  }
  return arg;
}

// 32-bit indices while i + gridDim.x * blockDim.x cannot wrap.
bool small_index(int64_t n) { return n < (int64_t{1} << 31); }

bool contiguous(const View& v) {
  return v.shape.empty() || (v.shape.size() == 1 && v.strides[0] == 1);
}

template <class T> void copy_view(Copy direction, const void* src, void* dst, const View& v) {
  if (v.size == 0) return;
  const ViewArg arg = to_arg(v);
  const LaunchConfig config = grid_stride_config(v.size);
  const T* s = static_cast<const T*>(src);
  T* d = static_cast<T*>(dst);
  if (direction == Copy::gather) {
    if (small_index(v.size)) {
      launch("compact", strided_copy_kernel<T, uint32_t, Copy::gather>, config, s, d, arg,
             static_cast<uint32_t>(v.size));
    } else {
      launch("compact", strided_copy_kernel<T, uint64_t, Copy::gather>, config, s, d, arg,
             static_cast<uint64_t>(v.size));
    }
  } else {
    if (small_index(v.size)) {
      launch("ewise_setitem", strided_copy_kernel<T, uint32_t, Copy::scatter>, config, s, d, arg,
             static_cast<uint32_t>(v.size));
    } else {
      launch("ewise_setitem", strided_copy_kernel<T, uint64_t, Copy::scatter>, config, s, d, arg,
             static_cast<uint64_t>(v.size));
    }
  }
}

template <class T> void fill_view(T val, void* dst, const View& v) {
  if (v.size == 0) return;
  const ViewArg arg = to_arg(v);
  const LaunchConfig config = grid_stride_config(v.size);
  if (small_index(v.size)) {
    launch("scalar_setitem", strided_fill_kernel<T, uint32_t>, config, val, static_cast<T*>(dst),
           arg, static_cast<uint32_t>(v.size));
  } else {
    launch("scalar_setitem", strided_fill_kernel<T, uint64_t>, config, val, static_cast<T*>(dst),
           arg, static_cast<uint64_t>(v.size));
  }
}

}  // namespace

View simplify_view(const Shape& shape, const Shape& strides, int64_t offset) {
  if (shape.size() != strides.size()) {
    throw std::invalid_argument("shape and strides differ in length");
  }
  View v;
  v.offset = offset;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] < 0) throw std::invalid_argument("negative dimension in a view");
    v.size *= shape[d];
    if (shape[d] == 1) continue;  // a size-1 axis never moves the offset
    if (!v.shape.empty() && v.strides.back() == strides[d] * shape[d]) {
      v.shape.back() *= shape[d];  // the previous axis steps over this one exactly
      v.strides.back() = strides[d];
    } else {
      v.shape.push_back(shape[d]);
      v.strides.push_back(strides[d]);
    }
  }
  if (v.size == 0) v.shape.assign(1, 0), v.strides.assign(1, 1);
  return v;
}

void compact(DType dt, const void* src, void* dst, const Shape& shape, const Shape& strides,
             int64_t offset) {
  const View v = simplify_view(shape, strides, offset);
  const size_t size = itemsize(dt);
  if (v.size == 0) return;
  if (contiguous(v)) {  // one run of memory: a plain copy at full bandwidth
    return copy_device_to_device(dst, static_cast<const char*>(src) + v.offset * size,
                                 v.size * size);
  }
  if (dt == DType::f32) return copy_view<float>(Copy::gather, src, dst, v);
  copy_view<double>(Copy::gather, src, dst, v);
}

void ewise_setitem(DType dt, const void* src, void* dst, const Shape& shape,
                   const Shape& strides, int64_t offset) {
  const View v = simplify_view(shape, strides, offset);
  const size_t size = itemsize(dt);
  if (v.size == 0) return;
  if (contiguous(v)) {
    return copy_device_to_device(static_cast<char*>(dst) + v.offset * size, src, v.size * size);
  }
  if (dt == DType::f32) return copy_view<float>(Copy::scatter, src, dst, v);
  copy_view<double>(Copy::scatter, src, dst, v);
}

void scalar_setitem(DType dt, double val, void* dst, const Shape& shape, const Shape& strides,
                    int64_t offset) {
  const View v = simplify_view(shape, strides, offset);
  if (v.size == 0) return;
  if (contiguous(v)) {
    const size_t size = itemsize(dt);
    return fill(dt, static_cast<char*>(dst) + v.offset * size, v.size, val);
  }
  if (dt == DType::f32) return fill_view<float>(static_cast<float>(val), dst, v);
  fill_view<double>(val, dst, v);
}

}  // namespace cuda
}  // namespace needle
