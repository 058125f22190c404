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
// file compiles for every Metal GPU. Sums accumulate in float: Metal has no double.

constant constexpr uint REDUCE_THREADS = 256;  // a power of two, for the tree

inline float reduce_combine_sum(float x, float y) { return x + y; }
inline float reduce_combine_max(float x, float y) { return maximum_nan(x, y); }

#define NEEDLE_REDUCE_KERNELS(OP, IDENTITY)                                        \
  kernel void reduce_##OP##_rows(device const float* a [[buffer(0)]],              \
                                 device float* out [[buffer(1)]],                  \
                                 constant ReduceShape& shape [[buffer(2)]],        \
                                 uint row [[threadgroup_position_in_grid]],        \
                                 uint t [[thread_position_in_threadgroup]]) {      \
    threadgroup float partial[REDUCE_THREADS];                                     \
    device const float* x = a + ulong(row) * shape.reduce_size;                    \
    float acc = (IDENTITY);                                                        \
    for (uint i = t; i < shape.reduce_size; i += REDUCE_THREADS) {                 \
      acc = reduce_combine_##OP(acc, x[i]);                                        \
    }                                                                              \
    partial[t] = acc;                                                              \
    threadgroup_barrier(mem_flags::mem_threadgroup);                               \
    for (uint half_width = REDUCE_THREADS / 2; half_width > 0; half_width /= 2) {  \
      if (t < half_width) {                                                        \
        partial[t] = reduce_combine_##OP(partial[t], partial[t + half_width]);     \
      }                                                                            \
      threadgroup_barrier(mem_flags::mem_threadgroup);                             \
    }                                                                              \
    if (t == 0) out[row] = partial[0];                                             \
  }                                                                                \
                                                                                   \
  kernel void reduce_##OP##_serial(device const float* a [[buffer(0)]],            \
                                   device float* out [[buffer(1)]],                \
                                   constant ReduceShape& shape [[buffer(2)]],      \
                                   uint row [[thread_position_in_grid]]) {         \
    if (row >= shape.outer) return;                                                \
    device const float* x = a + ulong(row) * shape.reduce_size;                    \
    float acc = (IDENTITY);                                                        \
    for (uint i = 0; i < shape.reduce_size; ++i) acc = reduce_combine_##OP(acc, x[i]); \
    out[row] = acc;                                                                \
  }                                                                                \
                                                                                   \
  kernel void reduce_##OP##_axis(device const float* a [[buffer(0)]],              \
                                 device float* out [[buffer(1)]],                  \
                                 constant ReduceShape& shape [[buffer(2)]],        \
                                 uint i [[thread_position_in_grid]]) {             \
    if (i >= shape.outer * shape.inner) return;                                    \
    const uint o = i / shape.inner;                                                \
    const uint j = i % shape.inner;                                                \
    device const float* x = a + ulong(o) * shape.reduce_size * shape.inner + j;    \
    float acc = (IDENTITY);                                                        \
    for (uint r = 0; r < shape.reduce_size; ++r) {                                 \
      acc = reduce_combine_##OP(acc, x[ulong(r) * shape.inner]);                   \
    }                                                                              \
    out[i] = acc;                                                                  \
  }

NEEDLE_REDUCE_KERNELS(sum, 0.0f)
NEEDLE_REDUCE_KERNELS(max, -INFINITY)
