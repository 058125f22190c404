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
