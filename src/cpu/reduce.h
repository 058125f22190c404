// Sum and maximum over one axis of a compact array, without a permuted copy.
//
// Sums accumulate in double, so a float32 sum is accurate to the last bit whatever its
// length or order; float64 sums use pairwise summation over the reduced axis when it is
// contiguous (error growing with log n, like NumPy's). Maxima propagate NaN, like np.max.

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

extern template void sum_last_axis<float>(const float *, float *, int64_t, int64_t);
extern template void max_last_axis<float>(const float *, float *, int64_t, int64_t);
extern template void sum_middle_axis<float>(const float *, float *, int64_t, int64_t, int64_t);
extern template void max_middle_axis<float>(const float *, float *, int64_t, int64_t, int64_t);
extern template void sum_last_axis<double>(const double *, double *, int64_t, int64_t);
extern template void max_last_axis<double>(const double *, double *, int64_t, int64_t);
extern template void sum_middle_axis<double>(const double *, double *, int64_t, int64_t, int64_t);
extern template void max_middle_axis<double>(const double *, double *, int64_t, int64_t, int64_t);

}  // namespace cpu
}  // namespace needle
