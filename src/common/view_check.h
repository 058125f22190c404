// The one bounds check of a strided view, for every native backend's layout and matmul
// primitives: run once per call, in release builds too, so a bad view from Python (course
// code may call the primitives directly) raises instead of reading or writing outside its
// buffer. Plain C++: each backend throws its own exception from the problem found.

#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace needle {

struct ViewCheck {
  int64_t size = 0;     // the view's number of elements
  std::string problem;  // empty when the view is good
  bool outside = false; // the problem is an element outside the buffer (else a bad shape)
};

// Checks that shape and strides pair up, that the shape is valid, and that every element of
// the view (shape, strides, offset) lies in [0, buffer), with overflow-checked arithmetic.
inline ViewCheck check_view_bounds(const std::vector<int64_t> &shape,
                                   const std::vector<int64_t> &strides, int64_t offset,
                                   size_t buffer) {
  ViewCheck r;
  if (shape.size() != strides.size())
    return {0, "a view's shape and strides differ in length", false};
  int64_t size = 1, low = offset, high = offset;
  bool overflow = false;
  for (int64_t d : shape) {
    if (d < 0) return {0, "negative dimension in shape", false};
    overflow |= __builtin_mul_overflow(size, d, &size);
  }
  if (overflow) return {0, "shape too large", false};
  r.size = size;
  if (size == 0) return r;
  for (size_t i = 0; i < shape.size(); ++i) {
    int64_t reach;
    overflow |= __builtin_mul_overflow(strides[i], shape[i] - 1, &reach);
    overflow |= __builtin_add_overflow(reach < 0 ? low : high, reach, reach < 0 ? &low : &high);
  }
  if (overflow || low < 0 || high < 0 || static_cast<uint64_t>(high) >= buffer) {
    r.problem = "view of offset " + std::to_string(offset) + " reaches outside a buffer of " +
                std::to_string(buffer) + " elements";
    r.outside = true;
  }
  return r;
}

// The problem, if any, of an array of `size` elements where a view needs `needed`.
inline std::string size_problem(const char *name, int64_t needed, size_t size) {
  if (needed >= 0 && static_cast<uint64_t>(needed) <= size) return {};
  return std::string(name) + " has " + std::to_string(size) + " elements, the view needs " +
         std::to_string(needed);
}

}  // namespace needle
