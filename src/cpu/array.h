// The CPU backend's buffer type and dtype dispatch.
//
// An Array is a flat, 64-byte aligned buffer of one dtype; every primitive takes Arrays
// plus sizes, strides and offsets in elements that Python has already bounds-checked.

#pragma once

#include <nanobind/nanobind.h>

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace needle {
namespace cpu {

namespace nb = nanobind;

constexpr size_t kAlignment = 64;  // a cache line, and the widest SIMD register (AVX-512)

enum class DType { f32, f64 };

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }

inline size_t itemsize(DType dt) { return dt == DType::f32 ? sizeof(float) : sizeof(double); }
inline const char *dtype_name(DType dt) { return dt == DType::f32 ? "float32" : "float64"; }

inline DType parse_dtype(const std::string &name) {
  if (name == "float32") return DType::f32;
  if (name == "float64") return DType::f64;
  throw nb::value_error(("unsupported dtype '" + name + "' (expected float32 or float64)").c_str());
}

// Buffers from this size up are placed on transparent huge pages (2 MiB), as NumPy does
// for its arrays: streaming through tens of MiB on 4 KiB pages misses the TLB every page,
// which costs a third of the bandwidth of a sum or an add here. Smaller buffers are not
// worth the rounding up to 2 MiB.
constexpr size_t kHugePageThreshold = size_t{4} << 20;
constexpr size_t kHugePage = size_t{2} << 20;

// Aligned storage for `bytes` bytes; never returns null (throws std::bad_alloc).
inline void *aligned_bytes(size_t bytes) {
  const size_t align = bytes >= kHugePageThreshold ? kHugePage : kAlignment;
  // A nonzero multiple of the alignment, as aligned allocators want.
  bytes = std::max(align, (bytes + align - 1) / align * align);
  // posix_memalign rather than std::aligned_alloc, which macOS lacks before 10.15.
  void *p = nullptr;
  if (posix_memalign(&p, align, bytes) != 0) p = nullptr;
  if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  if (align == kHugePage) madvise(p, bytes, MADV_HUGEPAGE);  // a hint: failure is harmless
#endif
  return p;
}

struct Array {
  Array(size_t size, DType dtype) : size(size), dtype(dtype) {
    if (size > std::numeric_limits<size_t>::max() / itemsize(dtype) - kAlignment)
      throw std::bad_alloc();
    // Size 0 still gets a real, unique pointer so ptr() is meaningful.
    ptr = aligned_bytes(size * itemsize(dtype));
  }
  ~Array() { std::free(ptr); }
  Array(const Array &) = delete;
  Array &operator=(const Array &) = delete;

  template <class T> T *data() const {
    assert(dtype == dtype_of<T>());
    return static_cast<T *>(ptr);
  }

  size_t size;
  DType dtype;
  void *ptr;
};

// Calls f with a value of the scalar type matching the runtime dtype, so kernels are
// written once as templates: dispatch(dt, [&](auto tag) { using T = decltype(tag); ... }).
template <class F> decltype(auto) dispatch(DType dt, F &&f) {
  if (dt == DType::f32) return f(float{});
  return f(double{});
}

// Python guarantees one dtype per call; checking is a couple of compares, and a mismatch
// would otherwise reinterpret memory silently.
template <class... Rest> DType common_dtype(const Array &first, const Rest &...rest) {
  if (((rest.dtype != first.dtype) || ...))
    throw nb::type_error("all arrays of a primitive call must share one dtype");
  return first.dtype;
}

// Releases the GIL for its scope when `work` (elements read or written, or multiply-adds) is
// at least kGilReleaseWork, so Python threads can run while a kernel does: ~4 us of native
// work or more. Below that the release is not worth it: a thread that drops the GIL while
// others run Python can wait a switch interval (5 ms) to get it back. Construct it after
// the last use of a Python object, and never inside another (the GIL is released once);
// throwing nb::value_error and the like inside is fine (plain C++ until nanobind catches).
// The Arrays a primitive is given stay alive meanwhile: the calling Python frame holds them.
constexpr int64_t kGilReleaseWork = 4096;

class GilRelease {
 public:
  explicit GilRelease(int64_t work)
      : state_(work >= kGilReleaseWork ? PyEval_SaveThread() : nullptr) {}
  ~GilRelease() {
    if (state_) PyEval_RestoreThread(state_);
  }
  GilRelease(const GilRelease &) = delete;
  GilRelease &operator=(const GilRelease &) = delete;

 private:
  PyThreadState *state_;
};
}  // namespace cpu
}  // namespace needle
