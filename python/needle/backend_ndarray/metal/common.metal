// Shared by every kernel file of needle's Metal backends (prepended to each library's source).
//
// Conventions: arrays are flat buffers of one element type (float, int, long, uchar or bool:
// needle's float32, int32, int64, uint8, bool; Metal has no double); shapes, strides and offsets are in elements;
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

// ---- element types ---------------------------------------------------------------------------
// The dtypes a kernel template is instantiated for, as the primitive table declares them per
// row (primitives.py): M(ARGS..., MSL type, dtype name) once per dtype of the set. A kernel is
// named for the host as its primitive, "_", the dtype name: ewise_add_int64.
#define NEEDLE_FLOATS(M, ...) M(__VA_ARGS__, float, float32)
#define NEEDLE_INTS(M, ...) \
  M(__VA_ARGS__, int, int32) M(__VA_ARGS__, long, int64) M(__VA_ARGS__, uchar, uint8)
#define NEEDLE_NUMERIC(M, ...) NEEDLE_FLOATS(M, __VA_ARGS__) NEEDLE_INTS(M, __VA_ARGS__)
#define NEEDLE_ALL(M, ...) NEEDLE_NUMERIC(M, __VA_ARGS__) M(__VA_ARGS__, bool, bool)
#define NEEDLE_SUM(M, ...) NEEDLE_FLOATS(M, __VA_ARGS__) M(__VA_ARGS__, long, int64)
// NEEDLE_KERNEL names one instantiation of a kernel template for the host ([[host_name]]);
// NEEDLE_TYPED(NAME, TYPE, DTYPE) is NAME<TYPE> as the kernel NAME_DTYPE, for the sets above:
// NEEDLE_ALL(NEEDLE_TYPED, compact) gives compact_float32, ..., compact_bool.
#define NEEDLE_KERNEL(HOST, ...) \
  template [[host_name(HOST)]] [[kernel]] decltype(__VA_ARGS__) __VA_ARGS__;
#define NEEDLE_TYPED(NAME, TYPE, DTYPE) NEEDLE_KERNEL(#NAME "_" #DTYPE, NAME<TYPE>)

// Integer arithmetic wraps around (two's complement) as NumPy's does: done in the unsigned
// type of the same width (defined wrapping in C++ too, where the emulation compiles these
// kernels; signed overflow would be undefined there) and converted back. Floats are plain.
template <typename T> struct unsigned_of { typedef T type; };
template <> struct unsigned_of<int> { typedef uint type; };
template <> struct unsigned_of<long> { typedef ulong type; };

template <typename T> inline T wrap_add(T x, T y) {
  typedef typename unsigned_of<T>::type U;
  return T(U(x) + U(y));
}
template <typename T> inline T wrap_sub(T x, T y) {
  typedef typename unsigned_of<T>::type U;
  return T(U(x) - U(y));
}
template <typename T> inline T wrap_mul(T x, T y) {
  typedef typename unsigned_of<T>::type U;
  return T(U(x) * U(y));
}
// -x: integers wrap (-INT_MIN is INT_MIN, -uchar(1) is 255); floats flip the sign (-0.0).
template <typename T> inline T wrap_neg(T x) { return wrap_sub(T(0), x); }
inline float wrap_neg(float x) { return -x; }

// NumPy's maximum: NaN wins (metal::fmax returns the other operand); plain for integers.
template <typename T> inline T maximum_nan(T x, T y) { return x > y ? x : y; }
inline float maximum_nan(float x, float y) {
  return (x > y || isnan(x)) ? x : y;
}
