// Strided views: one thread per element of the view, in row-major order, threadgroups of
// 256 threads. Buffer indices (the same for all three kernels):
//   source [[buffer(0)]]  (an array, or the scalar value for scalar_setitem)
//   out [[buffer(1)]], shape [[buffer(2)]], strides [[buffer(3)]], view [[buffer(4)]]
// The host merges axes that are contiguous in memory before launching, so most views reach
// the kernel with one or two axes.

// The storage index of the element at row-major position i of a strided view.
inline int storage_index(uint i, constant uint* shape, constant int* strides,
                         constant StridedView& view) {
  int index = view.offset;
  for (uint axis = view.ndim; axis > 0; --axis) {
    const uint dim = shape[axis - 1];
    index += int(i % dim) * strides[axis - 1];
    i /= dim;
  }
  return index;
}

// out = the view of a, made compact.
kernel void compact(device const float* a [[buffer(0)]],
                    device float* out [[buffer(1)]],
                    constant uint* shape [[buffer(2)]],
                    constant int* strides [[buffer(3)]],
                    constant StridedView& view [[buffer(4)]],
                    uint i [[thread_position_in_grid]]) {
  if (i < view.size) out[i] = a[storage_index(i, shape, strides, view)];
}

// The view of out = a (compact, view.size elements).
kernel void ewise_setitem(device const float* a [[buffer(0)]],
                          device float* out [[buffer(1)]],
                          constant uint* shape [[buffer(2)]],
                          constant int* strides [[buffer(3)]],
                          constant StridedView& view [[buffer(4)]],
                          uint i [[thread_position_in_grid]]) {
  if (i < view.size) out[storage_index(i, shape, strides, view)] = a[i];
}

// Every element of the view of out = value.
kernel void scalar_setitem(constant float& value [[buffer(0)]],
                           device float* out [[buffer(1)]],
                           constant uint* shape [[buffer(2)]],
                           constant int* strides [[buffer(3)]],
                           constant StridedView& view [[buffer(4)]],
                           uint i [[thread_position_in_grid]]) {
  if (i < view.size) out[storage_index(i, shape, strides, view)] = value;
}
