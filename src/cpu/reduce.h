// Sum and maximum over one axis of a compact array, without a permuted copy.
//
// Sums accumulate in double, so a float32 sum is accurate to the last bit whatever its
// length or order; float64 sums use pairwise summation over the reduced axis when it is
// contiguous (error growing with log n, like NumPy's). Maxima propagate NaN, like np.max.
// int64 sums wrap around as NumPy's; integer and bool results are exact (bool's max: any).

#pragma once

#include <cstdint>

namespace needle {
namespace cpu {

// out[i] = sum / max of a[i*reduce_size : (i+1)*reduce_size] for i < outer.
template <class T> void sum_last_axis(const T *a, T *out, int64_t outer, int64_t reduce_size);
template <class T> void max_last_axis(const T *a, T *out, int64_t outer, int64_t reduce_size);

// out[o, j] = sum / max over r of a[o, r, j] for a compact (outer, reduce_size, inner).
template <class T>
void sum_middle_axis(const T *a, T *out, int64_t outer, int64_t reduce_size, int64_t inner);
template <class T>
void max_middle_axis(const T *a, T *out, int64_t outer, int64_t reduce_size, int64_t inner);

// Instantiated in reduce.cc for the dtypes of the sum rows (float32, float64, int64) and the
// max rows (all six), and for float16 and bfloat16: read into float32 lanes, reduced exactly
// as float32 is, the result rounded once.

}  // namespace cpu
}  // namespace needle
