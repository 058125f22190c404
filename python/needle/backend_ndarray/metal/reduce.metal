// Reductions of a compact (outer, reduce_size, inner) array into (outer, inner).
// Buffer indices: a [[buffer(0)]], out [[buffer(1)]], shape [[buffer(2)]] (a ReduceShape).
//
// Three launch shapes, chosen by the host:
//   *_rows:   inner == 1 and long rows: one threadgroup of REDUCE_THREADS per row; each
//             thread sums a strided slice (reads coalesced across the threadgroup), then a
//             tree in threadgroup memory combines the partial results.
//   *_serial: inner == 1 and short rows: one thread per row.
//   *_axis:   inner > 1: one thread per output; neighbouring threads read neighbouring
//             addresses, so every step of the loop over the reduced axis is coalesced.
// The tree uses threadgroup memory and barriers only (no SIMD-group functions), so this
// file compiles for every Metal GPU. Float sums accumulate in float: Metal has no double.

constant constexpr uint REDUCE_THREADS = 256;  // a power of two, for the tree

// The operations: combine two partial results; identity() is the result of no elements.
// Sums wrap around for int64 (the only integer sum: NDArray sums other integers in int64);
// max is NumPy's (NaN wins) and, for bool, any.
struct sum_op {
  template <typename T> static T identity() { return T(0); }
  template <typename T> static T combine(T x, T y) { return wrap_add(x, y); }
};
template <typename T> struct lowest;
template <> struct lowest<float> { static float value() { return -INFINITY; } };
template <> struct lowest<int> { static int value() { return -2147483647 - 1; } };
template <> struct lowest<long> { static long value() { return -9223372036854775807L - 1; } };
template <> struct lowest<uchar> { static uchar value() { return 0; } };
template <> struct lowest<bool> { static bool value() { return false; } };
struct max_op {
  template <typename T> static T identity() { return lowest<T>::value(); }
  template <typename T> static T combine(T x, T y) { return maximum_nan(x, y); }
};

// Named for the host reduce_OP_KIND_DTYPE: reduce_sum_rows_int64, reduce_max_axis_bool.
template <typename Op, typename T>
[[kernel]] void reduce_rows(device const T* a [[buffer(0)]],
                            device T* out [[buffer(1)]],
                            constant ReduceShape& shape [[buffer(2)]],
                            uint row [[threadgroup_position_in_grid]],
                            uint t [[thread_position_in_threadgroup]]) {
  threadgroup T partial[REDUCE_THREADS];
  device const T* x = a + ulong(row) * shape.reduce_size;
  T acc = Op::template identity<T>();
  for (uint i = t; i < shape.reduce_size; i += REDUCE_THREADS) {
    acc = Op::combine(acc, x[i]);
  }
  partial[t] = acc;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (uint half_width = REDUCE_THREADS / 2; half_width > 0; half_width /= 2) {
    if (t < half_width) {
      partial[t] = Op::combine(partial[t], partial[t + half_width]);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  if (t == 0) out[row] = partial[0];
}

template <typename Op, typename T>
[[kernel]] void reduce_serial(device const T* a [[buffer(0)]],
                              device T* out [[buffer(1)]],
                              constant ReduceShape& shape [[buffer(2)]],
                              uint row [[thread_position_in_grid]]) {
  if (row >= shape.outer) return;
  device const T* x = a + ulong(row) * shape.reduce_size;
  T acc = Op::template identity<T>();
  for (uint i = 0; i < shape.reduce_size; ++i) acc = Op::combine(acc, x[i]);
  out[row] = acc;
}

template <typename Op, typename T>
[[kernel]] void reduce_axis(device const T* a [[buffer(0)]],
                            device T* out [[buffer(1)]],
                            constant ReduceShape& shape [[buffer(2)]],
                            uint i [[thread_position_in_grid]]) {
  if (i >= shape.outer * shape.inner) return;
  const uint o = i / shape.inner;
  const uint j = i % shape.inner;
  device const T* x = a + ulong(o) * shape.reduce_size * shape.inner + j;
  T acc = Op::template identity<T>();
  for (uint r = 0; r < shape.reduce_size; ++r) {
    acc = Op::combine(acc, x[ulong(r) * shape.inner]);
  }
  out[i] = acc;
}

#define NEEDLE_REDUCE_AS(OP, TYPE, DTYPE)                                              \
  NEEDLE_KERNEL("reduce_" #OP "_rows_" #DTYPE, reduce_rows<OP##_op, TYPE>)     \
  NEEDLE_KERNEL("reduce_" #OP "_serial_" #DTYPE, reduce_serial<OP##_op, TYPE>) \
  NEEDLE_KERNEL("reduce_" #OP "_axis_" #DTYPE, reduce_axis<OP##_op, TYPE>)
NEEDLE_SUM(NEEDLE_REDUCE_AS, sum)
NEEDLE_ALL(NEEDLE_REDUCE_AS, max)
