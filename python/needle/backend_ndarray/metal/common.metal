// Shared by every kernel file of needle's Metal backends (prepended to each library's source).
//
// Conventions: arrays are flat float32 buffers; shapes, strides and offsets are in elements;
// sizes and strides fit in 32 bits (the host checks: arrays of fewer than 2^31 elements).
// Small parameters arrive as constant buffers set with setBytes; the structs below are packed
// on the host by python/needle/backend_ndarray/metal_primitives.py, which is the one place
// that knows each kernel's buffer indices and launch grid.
#include <metal_stdlib>
using namespace metal;

// A strided view for compact / ewise_setitem / scalar_setitem: `size` elements, `ndim` axes
// (shape and strides come in their own buffers), first element at `offset`.
struct StridedView {
  uint size;
  uint ndim;
  int offset;
};

// (outer, reduce_size, inner) geometry of a reduction; rows reductions use inner = 1.
struct ReduceShape {
  uint outer;
  uint reduce_size;
  uint inner;
};

// gather_rows / scatter_add_rows: n indexed rows of row_size elements; `size` elements of out
// get a thread each (n * row_size for a gather, every whole row of out for a scatter).
struct RowsShape {
  uint n;
  uint row_size;
  uint size;
};

// Batched matmul of strided views: a is (batch, m, n), b is (batch, n, p), out is compact
// (batch, m, p). Strides are (batch, row, column), non-negative, 0 for broadcast axes.
struct MatmulParams {
  uint batch;
  uint m;
  uint n;
  uint p;
  int a_offset;
  int a_batch_stride;
  int a_row_stride;
  int a_col_stride;
  int b_offset;
  int b_batch_stride;
  int b_row_stride;
  int b_col_stride;
};

// NumPy's maximum: NaN wins (metal::fmax returns the other operand).
inline float maximum_nan(float x, float y) {
  return (x > y || isnan(x)) ? x : y;
}
