// Device-side building blocks shared by the kernels: 16-byte vector loads and stores, the
// operator functors (NumPy's semantics), warp reductions, and the one launch helper.

#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "convert.cuh"
#include "kernels.h"
#include "runtime.h"

namespace needle {
namespace cuda {

template <class T> constexpr T ceil_div(T a, T b) { return (a + b - 1) / b; }

// Elements per 16-byte vector: float4 / double2 (16 bytes of any dtype).
template <class T> constexpr int kVec = 16 / sizeof(T);

__host__ __device__ inline bool aligned(const void* p, size_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}
__host__ __device__ inline bool aligned16(const void* p) { return aligned(p, 16); }

// One 16-byte load or store (LDG.128 / STG.128 / LDS.128) of kVec<T> elements to or from the
// registers v[0..kVec); `p` must be 16-byte aligned.
// (The CPU emulation of the tests checks that alignment; on the GPU it costs nothing.)
#ifndef NEEDLE_CHECK_ALIGNED
#define NEEDLE_CHECK_ALIGNED(p) ((void)0)
#define NEEDLE_CHECK_ALIGNED_8(p) ((void)0)
#endif
__device__ __forceinline__ void load_vec(const float* p, float* v) {
  NEEDLE_CHECK_ALIGNED(p);
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
}
__device__ __forceinline__ void load_vec(const double* p, double* v) {
  NEEDLE_CHECK_ALIGNED(p);
  const double2 t = *reinterpret_cast<const double2*>(p);
  v[0] = t.x, v[1] = t.y;
}
__device__ __forceinline__ void store_vec(float* p, const float* v) {
  NEEDLE_CHECK_ALIGNED(p);
  float4 t;
  t.x = v[0], t.y = v[1], t.z = v[2], t.w = v[3];
  *reinterpret_cast<float4*>(p) = t;
}
__device__ __forceinline__ void store_vec(double* p, const double* v) {
  NEEDLE_CHECK_ALIGNED(p);
  double2 t;
  t.x = v[0], t.y = v[1];
  *reinterpret_cast<double2*>(p) = t;
}
// The integer, bool and 16-bit float dtypes: one uint4 (16 bytes) moved as it is.
template <class T> __device__ __forceinline__ void load_vec(const T* p, T* v) {
  NEEDLE_CHECK_ALIGNED(p);
  const uint4 t = *reinterpret_cast<const uint4*>(p);
  memcpy(v, &t, sizeof(t));
}
template <class T> __device__ __forceinline__ void store_vec(T* p, const T* v) {
  NEEDLE_CHECK_ALIGNED(p);
  uint4 t;
  memcpy(&t, v, sizeof(t));
  *reinterpret_cast<uint4*>(p) = t;
}

// N elements of T in one access of N * sizeof(T) bytes: 16 (the above) or 8 (LDG.64 / STG.64,
// the GEMM's four 16-bit floats), `p` aligned to that.
template <int N, class T> __device__ __forceinline__ void load_pack(const T* p, T* v) {
  if constexpr (N * sizeof(T) == 16) {
    load_vec(p, v);
  } else {
    static_assert(N * sizeof(T) == 8, "a pack is 8 or 16 bytes");
    NEEDLE_CHECK_ALIGNED_8(p);
    const uint2 t = *reinterpret_cast<const uint2*>(p);
    memcpy(v, &t, sizeof(t));
  }
}
template <int N, class T> __device__ __forceinline__ void store_pack(T* p, const T* v) {
  if constexpr (N * sizeof(T) == 16) {
    store_vec(p, v);
  } else {
    static_assert(N * sizeof(T) == 8, "a pack is 8 or 16 bytes");
    NEEDLE_CHECK_ALIGNED_8(p);
    uint2 t;
    memcpy(&t, v, sizeof(t));
    *reinterpret_cast<uint2*>(p) = t;
  }
}

// ---- operators: the meaning of each primitive, as in ndarray_backend_numpy ------------
// The build does not use --use_fast_math: the libdevice functions keep IEEE semantics
// (NaN, inf, denormals) and are within 2 ulp (float) or 1 ulp (double) of the true result.

__host__ __device__ inline float m_log(float x) { return logf(x); }
__host__ __device__ inline double m_log(double x) { return log(x); }
__host__ __device__ inline float m_exp(float x) { return expf(x); }
__host__ __device__ inline double m_exp(double x) { return exp(x); }
__host__ __device__ inline float m_tanh(float x) { return tanhf(x); }
__host__ __device__ inline double m_tanh(double x) { return tanh(x); }
__host__ __device__ inline float m_erf(float x) { return erff(x); }
__host__ __device__ inline double m_erf(double x) { return erf(x); }
__host__ __device__ inline float m_sqrt(float x) { return sqrtf(x); }
__host__ __device__ inline double m_sqrt(double x) { return sqrt(x); }
__host__ __device__ inline float m_sin(float x) { return sinf(x); }
__host__ __device__ inline double m_sin(double x) { return sin(x); }
__host__ __device__ inline float m_cos(float x) { return cosf(x); }
__host__ __device__ inline double m_cos(double x) { return cos(x); }
__host__ __device__ inline float m_abs(float x) { return fabsf(x); }
__host__ __device__ inline double m_abs(double x) { return fabs(x); }
__host__ __device__ inline float m_pow(float x, float y) { return powf(x, y); }
__host__ __device__ inline double m_pow(double x, double y) { return pow(x, y); }

// Integer add, subtract, multiply and negate wrap around as NumPy's do (two's complement):
// computed in the unsigned type of the same width (or unsigned int for uint8), where
// overflow is defined, and converted back (modular since C++20, and in every compiler
// before). Floating point and bool pass through as they are.
template <class T> struct Wrap { using type = T; };
template <> struct Wrap<int32_t> { using type = uint32_t; };
template <> struct Wrap<int64_t> { using type = uint64_t; };
template <> struct Wrap<uint8_t> { using type = uint32_t; };
template <class T> using wrap_t = typename Wrap<T>::type;

template <class T> __host__ __device__ inline T wrap_add(T x, T y) {
  return static_cast<T>(static_cast<wrap_t<T>>(x) + static_cast<wrap_t<T>>(y));
}
template <class T> __host__ __device__ inline T wrap_sub(T x, T y) {
  return static_cast<T>(static_cast<wrap_t<T>>(x) - static_cast<wrap_t<T>>(y));
}
template <class T> __host__ __device__ inline T wrap_mul(T x, T y) {
  return static_cast<T>(static_cast<wrap_t<T>>(x) * static_cast<wrap_t<T>>(y));
}
template <class T> __host__ __device__ inline T wrap_neg(T x) {
  if constexpr (std::is_floating_point<T>::value) {
    return -x;
  } else {
    return static_cast<T>(wrap_t<T>(0) - static_cast<wrap_t<T>>(x));
  }
}

// np.maximum: NaN in either operand gives NaN (fmax would drop it).
template <class T> __host__ __device__ inline T max_nan(T x, T y) {
  if constexpr (std::is_floating_point<T>::value) {
    return (x > y || x != x) ? x : y;
  } else {
    return x > y ? x : y;
  }
}

// The unary operators of more than one expression (the others are lambdas in the rows of
// elementwise.cu).
struct Neg {  // -x; wraps for integers (-INT_MIN == INT_MIN, -uint8(1) == 255)
  template <class T> __host__ __device__ T operator()(T x) const { return wrap_neg(x); }
};
struct Abs {  // abs(INT_MIN) == INT_MIN, as np.abs
  template <class T> __host__ __device__ T operator()(T x) const {
    if constexpr (std::is_floating_point<T>::value) {
      return m_abs(x);
    } else if constexpr (std::is_unsigned<T>::value) {
      return x;
    } else {
      return x < T(0) ? wrap_neg(x) : x;
    }
  }
};
struct Sign {  // zero and NaN map to themselves, as np.sign; uint8 gives 0 or 1
  template <class T> __host__ __device__ T operator()(T x) const {
    if constexpr (std::is_unsigned<T>::value) {
      return x > T(0) ? T(1) : T(0);
    } else {
      return x > T(0) ? T(1) : x < T(0) ? T(-1) : x;
    }
  }
};
struct Sigmoid {  // e^-|x| never overflows; the form is chosen by the sign
  template <class T> __host__ __device__ T operator()(T x) const {
    const T e = m_exp(-m_abs(x));
    return x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
  }
};

struct Gelu {  // x Phi(x), Phi the normal CDF
  template <class T> __host__ __device__ T operator()(T x) const {
    return x * T(0.5) * (T(1) + m_erf(x * T(0.707106781186547524)));
  }
};
struct GeluGrad {  // Phi(x) + x phi(x), phi the normal density
  template <class T> __host__ __device__ T operator()(T x) const {
    const T pdf = m_exp(x * x * T(-0.5)) * T(0.398942280401432678);
    return T(0.5) * (T(1) + m_erf(x * T(0.707106781186547524))) + x * pdf;
  }
};

struct Add {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return wrap_add(x, y); }
};
struct Sub {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return wrap_sub(x, y); }
};
struct RSub {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return wrap_sub(y, x); }
};
struct Mul {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return wrap_mul(x, y); }
};
struct Div {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return x / y; }
};
struct RDiv {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return y / x; }
};
struct Power {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return m_pow(x, y); }
};
struct Maximum {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return max_nan(x, y); }
};
// The comparisons write a bool (one byte, 1 where true), whatever the inputs' dtype.
struct Eq {
  template <class T> __host__ __device__ bool operator()(T x, T y) const { return x == y; }
};
struct Ge {
  template <class T> __host__ __device__ bool operator()(T x, T y) const { return x >= y; }
};
struct Lt {
  template <class T> __host__ __device__ bool operator()(T x, T y) const { return x < y; }
};
struct Le {
  template <class T> __host__ __device__ bool operator()(T x, T y) const { return x <= y; }
};
// alpha * x + beta * y; nvcc contracts it into one multiply and one fused multiply-add.
template <class T> struct Axpby {
  T alpha, beta;
  __host__ __device__ T operator()(T x, T y) const { return alpha * x + beta * y; }
};

// The elements [0, n) that one thread of a grid- or block-stride loop visits, `first` its first
// index and `step` the loop's stride: with `vectorized` (every pointer involved 16-byte
// aligned), vector(i) for each whole vector of kVec<T> elements that starts at i, then one(i)
// for each element of the tail; otherwise one(i) for every element.
template <class T, class Vector, class One>
__device__ __forceinline__ void for_each_share(int64_t n, int64_t first, int64_t step,
                                               bool vectorized, Vector&& vector, One&& one) {
  int64_t tail = 0;
  if (vectorized) {
    constexpr int W = kVec<T>;
    const int64_t vectors = n / W;
    // Four vectors in flight per thread (nvcc unrolls such a loop by itself when it is
    // written out in a kernel, but not through the lambda).
#pragma unroll 4
    for (int64_t v = first; v < vectors; v += step) vector(v * W);
    tail = vectors * W;
  }
  for (int64_t i = tail + first; i < n; i += step) one(i);
}

// ---- reductions -----------------------------------------------------------------------

// The smallest value of T: max's identity (-inf for floating point, false for bool).
template <class T> __host__ __device__ constexpr T lowest() {
  if constexpr (std::is_floating_point<T>::value) {
    return -INFINITY;
  } else if constexpr (std::is_same<T, int32_t>::value) {
    return INT32_MIN;
  } else if constexpr (std::is_same<T, int64_t>::value) {
    return INT64_MIN;
  } else {
    return T(0);  // uint8, bool
  }
}

// val in the dtype T: a bool is val != 0; an integer dtype takes a whole number in its range
// (NDArray guarantees it: anything else, NaN included, would be undefined behaviour in C++,
// so it is refused rather than converted); a 16-bit float is rounded as NumPy's scalar is.
template <class T> T scalar_value(const char* name, double val) {
  if constexpr (std::is_integral<T>::value && !std::is_same<T, bool>::value) {
    // The range as doubles, [min, max + 1): exact for every integer dtype (uint8 is the one
    // unsigned one).
    const double low = static_cast<double>(lowest<T>());
    const double high = std::is_unsigned<T>::value ? 256.0 : -low;
    if (!(val >= low && val < high)) {
      throw std::invalid_argument(std::string(name) + ": " + std::to_string(val) +
                                  " is outside the range of " + dtype_name(dtype_of<T>));
    }
  }
  return convert<T>(val);
}

struct SumOp {  // integers wrap, as NumPy's int64 sums
  template <class T> __host__ __device__ static T identity() { return T(0); }
  template <class T> __host__ __device__ T operator()(T x, T y) const { return wrap_add(x, y); }
};
struct MaxOp {  // NaN propagates, as np.max; bool: any
  template <class T> __host__ __device__ static T identity() { return lowest<T>(); }
  template <class T> __host__ __device__ T operator()(T x, T y) const { return max_nan(x, y); }
};

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kWarpSize = 32;

// __shfl_xor_sync for every dtype: CUDA has no 1-byte overloads, so uint8 and bool travel as
// an int.
template <class T> __device__ __forceinline__ T shfl_xor(T v, int lane_mask) {
  if constexpr (sizeof(T) < sizeof(int)) {
    return static_cast<T>(__shfl_xor_sync(kFullWarp, static_cast<int>(v), lane_mask));
  } else {
    return __shfl_xor_sync(kFullWarp, v, lane_mask);
  }
}

// Butterfly reduction over the 32 lanes of a warp: every lane ends with the result. All 32
// lanes must call it (the kernels' blocks are whole warps and call it without divergence).
template <class T, class Op> __device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v = op(v, shfl_xor(v, offset));
  return v;
}

// ---- launching ------------------------------------------------------------------------

struct LaunchConfig {
  dim3 grid;
  dim3 block;
};

// A grid-stride kernel over `items` work items, kBlockThreads threads per block.
inline LaunchConfig grid_stride_config(int64_t items) {
  return {dim3(grid_size(items, kBlockThreads, device_info().sm_count)), dim3(kBlockThreads)};
}

// Every kernel of the backend is launched here: the configuration is checked against the
// hardware limits (a bad one is a bug in the planning, reported with the kernel's name), the
// kernel is queued on the backend's stream, and the launch error, if any, is raised.
template <class... Params, class... Args>
void launch(const char* name, void (*kernel)(Params...), const LaunchConfig& c, Args... args) {
  const unsigned threads = c.block.x * c.block.y * c.block.z;
  if (threads == 0 || threads > 1024 || threads % kWarpSize != 0 || c.grid.x == 0 ||
      c.grid.y == 0 || c.grid.z == 0 || c.grid.y > 65535 || c.grid.z > 65535) {
    throw CudaError(std::string("bad launch configuration for kernel ") + name + ": grid (" +
                    std::to_string(c.grid.x) + ", " + std::to_string(c.grid.y) + ", " +
                    std::to_string(c.grid.z) + "), block (" + std::to_string(c.block.x) + ", " +
                    std::to_string(c.block.y) + ", " + std::to_string(c.block.z) + ")");
  }
#ifdef NEEDLE_CUDA_EMULATION
  // The arguments go along as bytes too: the emulation checks the buffers they point to.
  emulation::launch(name, c.grid, c.block, [&] { kernel(static_cast<Params>(args)...); }, args...);
#else
  // (clang-format reads a .cuh file as plain C++, and would split the >>>.)
  // clang-format off
  kernel<<<c.grid, c.block, 0, stream()>>>(static_cast<Params>(args)...);
  // clang-format on
  check(cudaGetLastError(), name);
#endif
}

}  // namespace cuda
}  // namespace needle
