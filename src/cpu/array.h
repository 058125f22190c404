// The CPU backend's buffer type and dtype dispatch.
//
// An Array is a flat, 64-byte aligned buffer of one dtype; every primitive takes Arrays
// plus sizes, strides and offsets in elements that Python has already bounds-checked.

#pragma once

#include <nanobind/nanobind.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "half.h"

namespace needle {
namespace cpu {

namespace nb = nanobind;

constexpr size_t kAlignment = 64;  // a cache line, and the widest SIMD register (AVX-512)

// The dtypes of the primitive table (primitives.py) and their C++ types, in the same order:
// bool is one byte holding 0 or 1 (NumPy's layout, and C++'s bool on every target built here);
// float16 and bfloat16 are two-byte structs (half.h), computed in float32 where a row takes them.
enum class DType { f32, f64, i32, i64, u8, b8, f16, bf16 };
template <class... Ts> struct TypeList;
using AllTypes = TypeList<float, double, int32_t, int64_t, uint8_t, bool, Float16, BFloat16>;
static_assert(sizeof(bool) == 1, "bool Arrays are one byte per element, as NumPy's");

inline const char *dtype_name(DType dt) {
  constexpr const char *names[] = {"float32", "float64", "int32",   "int64",
                                   "uint8",   "bool",    "float16", "bfloat16"};
  return names[static_cast<int>(dt)];
}
inline size_t itemsize(DType dt) {
  constexpr size_t sizes[] = {4, 8, 4, 8, 1, 1, 2, 2};
  return sizes[static_cast<int>(dt)];
}

template <class... Ts> struct TypeList {
  template <class T> static constexpr int index() {  // of T among Ts, -1 if absent
    int i = 0, found = -1;
    ((std::is_same_v<T, Ts> ? found = i : 0, ++i), ...);
    return found;
  }
  static std::string names() {  // "float32, float64", for error messages
    std::string s;
    ((s += (s.empty() ? "" : ", "), s += dtype_name(DType(AllTypes::index<Ts>()))), ...);
    return s;
  }
};
template <class T> constexpr DType dtype_of() {
  static_assert(AllTypes::index<T>() >= 0, "not the type of a dtype");
  return DType(AllTypes::index<T>());
}

// The dtype sets of the table's rows, stated once: each primitive's binding names the set it
// takes (dispatch<Set>), as its row in primitives.py does.
using Floats = TypeList<float, double>;
using Computed = TypeList<float, double, int32_t, int64_t, uint8_t, bool>;  // no 16-bit floats
using Numeric = TypeList<float, double, int32_t, int64_t, uint8_t>;
using SumTypes = TypeList<float, double, int64_t>;  // sums of other integers are taken in int64
// A set and the 16-bit floats: the rows of HALF_ROWS (ndarray_backend_cpu.cc), which compute
// them in float32 and round once, beyond what their rows in primitives.py list.
template <class List> struct WithHalves;
template <class... Ts> struct WithHalves<TypeList<Ts...>> {
  using type = TypeList<Ts..., Float16, BFloat16>;
};
template <class List> using AndHalves = typename WithHalves<List>::type;
using MatmulTypes = AndHalves<Floats>;  // 16-bit: sums in float32
using Halves = TypeList<Float16, BFloat16>;

// A dtype a primitive does not take, or arrays of different dtypes in one call. The binding
// (def in ndarray_backend_cpu.cc) turns it into a TypeError naming the primitive.
struct DTypeError : std::runtime_error { using std::runtime_error::runtime_error; };

inline DType parse_dtype(const std::string &name) {
  for (int i = 0; i <= static_cast<int>(DType::bf16); ++i)
    if (name == dtype_name(DType(i))) return DType(i);
  throw nb::value_error(
      ("unsupported dtype '" + name + "' (expected one of " + AllTypes::names() + ")").c_str());
}

// Calls f(T{}) for the T of runtime dtype `dt` among the types of List, so kernels are written
// once as templates: dispatch<Numeric>(dt, [&](auto tag) { using T = decltype(tag); ... }).
// A dtype outside List is a DTypeError; only List's types are instantiated.
template <class List, class F, class T, class... Rest>
decltype(auto) dispatch_in(DType dt, F &&f, TypeList<T, Rest...>) {
  if (dt == dtype_of<T>()) return f(T{});
  if constexpr (sizeof...(Rest) > 0) {
    return dispatch_in<List>(dt, f, TypeList<Rest...>{});
  } else {
    throw DTypeError(std::string("does not take dtype ") + dtype_name(dt) + " (it takes " +
                     List::names() + ")");
  }
}
template <class List, class F> decltype(auto) dispatch(DType dt, F &&f) {
  return dispatch_in<List>(dt, f, List{});
}

// A DTypeError unless List holds dt (for a primitive that dispatches later, or not at all).
template <class List> void require(DType dt) {
  dispatch<List>(dt, [](auto) {});
}

// A DTypeError unless `a` (a named argument: "out", "indices") has dtype `want`.
inline void require_dtype(const char *name, DType got, DType want) {
  if (got != want)
    throw DTypeError(std::string(name) + " is " + dtype_name(got) + ", not " + dtype_name(want));
}

// Buffers from this size up are placed on transparent huge pages (2 MiB), as NumPy does
// for its arrays: streaming through tens of MiB on 4 KiB pages misses the TLB every page,
// which costs a third of the bandwidth of a sum or an add here. Smaller buffers are not
// worth the rounding up to 2 MiB.
constexpr size_t kHugePageThreshold = size_t{4} << 20;
constexpr size_t kHugePage = size_t{2} << 20;

// The bytes a request of `bytes` really takes: a nonzero multiple of its alignment, and of
// 4 KiB from 64 KiB up, so that sizes a little apart share a slot of the buffer cache.
inline size_t rounded_bytes(size_t bytes) {
  const size_t align = bytes >= kHugePageThreshold   ? kHugePage
                       : bytes >= (size_t{64} << 10) ? size_t{4} << 10
                                                     : kAlignment;
  return std::max(align, (bytes + align - 1) / align * align);
}

// Aligned storage of rounded_bytes(bytes) bytes; never returns null (throws std::bad_alloc).
inline void *aligned_bytes(size_t bytes) {
  const size_t align = bytes >= kHugePageThreshold ? kHugePage : kAlignment;
  bytes = rounded_bytes(bytes);
  // posix_memalign rather than std::aligned_alloc, which macOS lacks before 10.15.
  void *p = nullptr;
  if (posix_memalign(&p, align, bytes) != 0) p = nullptr;
  if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  if (align == kHugePage) madvise(p, bytes, MADV_HUGEPAGE);  // a hint: failure is harmless
#endif
  return p;
}

// Freed Array buffers from kCacheThreshold up, kept by (rounded) size and handed out again:
// a training step allocates the same sizes every step, and each fresh one from the C library
// can be a new mapping that page-faults on every page it touches. a + b of (256, 4096) float32
// took 0.28 ms fresh and 0.16 ms reused, (1024, 4096) 2.4 -> 1.3 ms. Until 2026-12-04 only
// huge-page buffers (4 MiB up) were kept, but glibc returns freed blocks of 128 KiB-4 MiB to
// the system too (its mmap and trim thresholds): a float32 ResNet-9 step at batch 128 took
// ~1250 page faults and 14.3 ms, with these kept 0 faults and 11.7 ms (1 thread). Smaller
// buffers stay in malloc's heap, which reuses them. At most as many bytes are kept as the
// peak in use, so memory stays within twice the working set; empty_cache() frees them.
// memory_stats() counts every Array.
constexpr size_t kCacheThreshold = size_t{128} << 10;

class BufferCache {
 public:
  struct Stats { size_t current = 0, peak = 0, cached = 0, allocations = 0, reused = 0; };

  static BufferCache &instance() {
    // Never destroyed: Arrays can outlive static destructors at interpreter exit.
    static BufferCache *cache = new BufferCache;
    return *cache;
  }

  void *acquire(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.allocations;
      stats_.current += bytes;
      stats_.peak = std::max(stats_.peak, stats_.current);
      auto slot = bytes >= kCacheThreshold ? free_.find(bytes) : free_.end();
      if (slot != free_.end() && !slot->second.empty()) {
        void *p = slot->second.back();
        slot->second.pop_back();
        stats_.cached -= bytes;
        ++stats_.reused;
        return p;
      }
    }
    try {
      return aligned_bytes(bytes);
    } catch (...) {
      empty();  // what the cache holds may be what the system lacks: once more without it
      try {
        return aligned_bytes(bytes);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        stats_.current -= bytes;
        throw;
      }
    }
  }

  void release(void *p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.current -= bytes;
      if (bytes >= kCacheThreshold && stats_.cached + bytes <= stats_.peak) {
        free_[bytes].push_back(p);
        stats_.cached += bytes;
        return;
      }
    }
    std::free(p);
  }

  void empty() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto &slot : free_)
      for (void *p : slot.second) std::free(p);
    free_.clear();
    stats_.cached = 0;
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void *>> free_;  // by rounded size
  Stats stats_;
};

struct Array {
  Array(size_t size, DType dtype) : size(size), dtype(dtype) {
    if (size > std::numeric_limits<size_t>::max() / itemsize(dtype) - kHugePage)
      throw std::bad_alloc();
    // Size 0 still gets a real, unique pointer so ptr() is meaningful.
    bytes = rounded_bytes(size * itemsize(dtype));
    ptr = BufferCache::instance().acquire(bytes);
  }
  // Another library's memory (from_dlpack): `owner` keeps it alive, the cache never sees it.
  Array(void *foreign, size_t size, DType dtype, std::shared_ptr<void> owner)
      : size(size), dtype(dtype), bytes(0), ptr(foreign), owner(std::move(owner)) {}
  ~Array() {
    if (!owner) BufferCache::instance().release(ptr, bytes);
  }
  Array(const Array &) = delete;
  Array &operator=(const Array &) = delete;

  template <class T> T *data() const {
    assert(dtype == dtype_of<T>());
    return static_cast<T *>(ptr);
  }

  size_t size;
  DType dtype;
  size_t bytes;  // what the buffer really holds (rounded_bytes)
  void *ptr;
  std::shared_ptr<void> owner;  // set for foreign memory
};

// val (a Python float) as a T: floats round to the dtype (the 16-bit ones as NumPy's float16
// and ml_dtypes' bfloat16 do, half.h), bool is val != 0, an integer dtype takes a whole number
// in its range (NDArray guarantees one; anything else, NaN included, is a ValueError instead
// of C++'s undefined conversion).
template <class T> T scalar_as(double val) {
  if constexpr (std::is_same_v<T, Float16>) return {half_bits(val)};
  if constexpr (std::is_same_v<T, BFloat16>) return {bfloat16_bits(static_cast<float>(val))};
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    const double low = static_cast<double>(std::numeric_limits<T>::lowest());
    const double high = std::ldexp(1.0, std::numeric_limits<T>::digits);  // max + 1, exact
    if (!(val >= low && val < high))
      throw nb::value_error(("scalar " + std::to_string(val) + " is outside the range of " +
                             dtype_name(dtype_of<T>()))
                                .c_str());
  }
  if constexpr (!is_half_v<T>) return static_cast<T>(val);
}

// Python guarantees one dtype per call; checking is a couple of compares, and a mismatch
// would otherwise reinterpret memory silently.
template <class... Rest> DType common_dtype(const Array &first, const Rest &...rest) {
  if (((rest.dtype != first.dtype) || ...)) {
    std::string got = dtype_name(first.dtype);
    ((got += std::string(", ") + dtype_name(rest.dtype)), ...);
    throw DTypeError("all arrays must share one dtype (got " + got + ")");
  }
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
