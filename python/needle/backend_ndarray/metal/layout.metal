// Strided views: one thread per element of the view, in row-major order, threadgroups of
// 256 threads. Buffer indices (the same for all three kernels):
//   source [[buffer(0)]]  (an array, or the scalar value for scalar_setitem)
//   out [[buffer(1)]], shape [[buffer(2)]], strides [[buffer(3)]], view [[buffer(4)]]
// Each kernel is a template over the element type, instantiated for every dtype as
// NAME_DTYPE (compact_float32, ..., scalar_setitem_bool; value in the array's type).
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
template <typename T>
[[kernel]] void compact(device const T* a [[buffer(0)]],
                        device T* out [[buffer(1)]],
                        constant uint* shape [[buffer(2)]],
                        constant int* strides [[buffer(3)]],
                        constant StridedView& view [[buffer(4)]],
                        uint i [[thread_position_in_grid]]){
  if (i < view.size) out[i] = a[storage_index(i, shape, strides, view)];
}

// The view of out = a (compact, view.size elements).
template <typename T>
[[kernel]] void ewise_setitem(device const T* a [[buffer(0)]],
                              device T* out [[buffer(1)]],
                              constant uint* shape [[buffer(2)]],
                              constant int* strides [[buffer(3)]],
                              constant StridedView& view [[buffer(4)]],
                              uint i [[thread_position_in_grid]]){
  if (i < view.size) out[storage_index(i, shape, strides, view)] = a[i];
}

// Every element of the view of out = value.
template <typename T>
[[kernel]] void scalar_setitem(constant T& value [[buffer(0)]],
                               device T* out [[buffer(1)]],
                               constant uint* shape [[buffer(2)]],
                               constant int* strides [[buffer(3)]],
                               constant StridedView& view [[buffer(4)]],
                               uint i [[thread_position_in_grid]]){
  if (i < view.size) out[storage_index(i, shape, strides, view)] = value;
}

NEEDLE_HELD(NEEDLE_TYPED, compact)
NEEDLE_HELD(NEEDLE_TYPED, ewise_setitem)
NEEDLE_HELD(NEEDLE_TYPED, scalar_setitem)
