// Walking strided views: the layout primitives (compact, setitem, to_numpy) in terms of
// gather/scatter over the rows of a simplified view.

#pragma once

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <vector>

namespace needle {
namespace cpu {

using Shape = std::vector<int64_t>;

// A strided view as the layout kernels walk it. NDArray has already dropped size-1 axes and
// merged the ones whose memory walk is the same (primitives.simplify_view), once for every
// backend, so the view is taken as given.
struct View {
  Shape shape;
  Shape strides;
  int64_t offset;
  int64_t size;
};

inline View make_view(const Shape &shape, const Shape &strides, int64_t offset) {
  assert(shape.size() == strides.size());
  View v{shape, strides, offset, 1};
  for (int64_t d : shape) {
    assert(d >= 0);
    v.size *= d;
  }
  return v;
}

// The number of innermost rows of the view (each shape.back() elements long).
inline int64_t row_count(const View &v) {
  if (v.size == 0) return 0;
  return v.shape.empty() ? 1 : v.size / v.shape.back();
}

// Calls row(start, length, stride) for innermost rows [first, last) of the view in C order
// (all of them by default).
template <class RowFn>
void for_each_row(const View &v, RowFn &&row, int64_t first = 0, int64_t last = -1) {
  if (v.size == 0) return;
  if (v.shape.empty()) return row(v.offset, int64_t{1}, int64_t{0});
  const size_t outer = v.shape.size() - 1;
  const int64_t len = v.shape[outer], stride = v.strides[outer];
  if (last < 0) last = v.size / len;
  std::vector<int64_t> idx(outer, 0);
  int64_t start = v.offset;
  for (size_t d = outer, rest = static_cast<size_t>(first); d-- > 0;) {  // row first's index
    idx[d] = static_cast<int64_t>(rest % static_cast<size_t>(v.shape[d]));
    rest /= static_cast<size_t>(v.shape[d]);
    start += idx[d] * v.strides[d];
  }
  for (int64_t r = first; r < last; ++r) {
    row(start, len, stride);
    for (size_t d = outer; d-- > 0;) {  // odometer increment over the outer dims
      start += v.strides[d];
      if (++idx[d] < v.shape[d]) break;
      start -= v.strides[d] * v.shape[d];
      idx[d] = 0;
    }
  }
}

// Copies rows [first, last) of the view to dst (row first at dst[0]).
template <class T>
void gather(const T *src, T *dst, const View &v, int64_t first = 0, int64_t last = -1) {
  for_each_row(
      v,
      [&](int64_t start, int64_t len, int64_t stride) {
        const T *s = src + start;
        if (stride == 1) {
          std::copy(s, s + len, dst);
        } else {
          for (int64_t k = 0; k < len; ++k) dst[k] = s[k * stride];
        }
        dst += len;
      },
      first, last);
}

// The axis other than the last with stride 1, when the last one's is not (-1 if none). The copy
// is then a transpose: NCHW -> NHWC read rows of 3 values 1024 apart one value at a time, 0.33
// ms for a 128 x 3 x 32 x 32 batch, where tiles read along that axis take 0.05 ms.
// Size-1 axes do not count: their stride can be anything.
inline int unit_stride_axis(const View &v) {
  const int last = static_cast<int>(v.shape.size()) - 1;
  if (last < 1 || v.size == 0 || v.strides[last] == 1 || v.shape[last] == 1) return -1;
  for (int d = last - 1; d >= 0; --d)
    if (v.strides[d] == 1 && v.shape[d] > 1) return d;
  return -1;
}

// Tiles of the transpose: kTransposeTile positions of the unit-stride axis by (up to)
// kTransposeTile / 4 of the last.
constexpr int64_t kTransposeTile = 64;
inline int64_t transpose_tiles(const View &v, int a) {
  const int64_t a_tiles = (v.shape[a] + kTransposeTile - 1) / kTransposeTile;
  return v.size / v.shape[a] * a_tiles / v.shape.back();
}

// dst[i * J + j] = src[j * stride + i] for i < n, j < J: a whole short last axis (RGB), read
// into a buffer by rows and written interleaved, 4x faster than a loop over runtime bounds.
template <int J, class T>
void interleave(const T *__restrict src, int64_t stride, int64_t n, T *__restrict dst) {
  T buf[J][kTransposeTile];
  for (int j = 0; j < J; ++j)
    for (int64_t i = 0; i < n; ++i) buf[j][i] = src[j * stride + i];
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < J; ++j) dst[i * J + j] = buf[j][i];
}

// Copies tiles [first, last) of the view to the compact dst, `a` its unit-stride axis: tile u
// is positions [i0, i0 + kTransposeTile) of axis a, all of the last axis, at outer index
// u / per (the other axes, C order).
template <class T>
void gather_transposed(const T *src, T *dst, const View &v, int a, int64_t first, int64_t last) {
  const int n = static_cast<int>(v.shape.size());
  const int64_t L = v.shape[n - 1], S = v.strides[n - 1], A = v.shape[a];
  const int64_t per = (A + kTransposeTile - 1) / kTransposeTile;
  Shape dst_strides(n, 1);
  for (int d = n - 1; d-- > 0;) dst_strides[d] = dst_strides[d + 1] * v.shape[d + 1];
  const int64_t Da = dst_strides[a];
  for (int64_t u = first; u < last; ++u) {
    int64_t s = v.offset, o = 0, rest = u / per;
    for (int d = n - 2; d >= 0; --d) {
      if (d == a) continue;
      const int64_t idx = rest % v.shape[d];
      rest /= v.shape[d];
      s += idx * v.strides[d];
      o += idx * dst_strides[d];
    }
    const int64_t i0 = u % per * kTransposeTile, i1 = std::min(A, i0 + kTransposeTile);
    const T *from = src + s + i0;
    T *to = dst + o + i0 * Da;
    if (Da == L && L >= 2 && L <= 4) {  // (a last axis of 1 is the plain loop's)
      if (L == 2) interleave<2>(from, S, i1 - i0, to);
      if (L == 3) interleave<3>(from, S, i1 - i0, to);
      if (L == 4) interleave<4>(from, S, i1 - i0, to);
      continue;
    }
    for (int64_t j0 = 0; j0 < L; j0 += kTransposeTile / 4) {  // written along rows
      const int64_t j1 = std::min(L, j0 + kTransposeTile / 4);
      for (int64_t i = 0; i < i1 - i0; ++i)
        for (int64_t j = j0; j < j1; ++j) to[i * Da + j] = from[j * S + i];
    }
  }
}

template <class T> void scatter(const T *src, T *dst, const View &v) {
  for_each_row(v, [&](int64_t start, int64_t len, int64_t stride) {
    T *d = dst + start;
    if (stride == 1) {
      std::copy(src, src + len, d);
    } else {
      for (int64_t k = 0; k < len; ++k) d[k * stride] = src[k];
    }
    src += len;
  });
}

template <class T> void scatter_scalar(T val, T *dst, const View &v) {
  for_each_row(v, [&](int64_t start, int64_t len, int64_t stride) {
    T *d = dst + start;
    for (int64_t k = 0; k < len; ++k) d[k * stride] = val;
  });
}

}  // namespace cpu
}  // namespace needle
