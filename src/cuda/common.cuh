// Device-side building blocks shared by the kernels: 16-byte vector loads and stores, the
// operator functors (NumPy's semantics), warp reductions, and the one launch helper.

#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "kernels.h"
#include "runtime.h"

namespace needle {
namespace cuda {

template <class T> constexpr T ceil_div(T a, T b) { return (a + b - 1) / b; }

// Elements per 16-byte vector: float4 / double2.
template <class T> constexpr int kVec = 16 / sizeof(T);

__host__ __device__ inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// One 16-byte load or store (LDG.128 / STG.128 / LDS.128) of kVec<T> elements to or from the
// registers v[0..kVec); `p` must be 16-byte aligned.
// (The CPU emulation of the tests checks that alignment; on the GPU it costs nothing.)
#ifndef NEEDLE_CHECK_ALIGNED
#define NEEDLE_CHECK_ALIGNED(p) ((void)0)
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

// ---- operators: the meaning of each primitive, as in ndarray_backend_numpy ------------
// The build does not use --use_fast_math: the libdevice functions keep IEEE semantics
// (NaN, inf, denormals) and are within 2 ulp (float) or 1 ulp (double) of the true result.

__host__ __device__ inline float m_log(float x) { return logf(x); }
__host__ __device__ inline double m_log(double x) { return log(x); }
__host__ __device__ inline float m_exp(float x) { return expf(x); }
__host__ __device__ inline double m_exp(double x) { return exp(x); }
__host__ __device__ inline float m_tanh(float x) { return tanhf(x); }
__host__ __device__ inline double m_tanh(double x) { return tanh(x); }
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

// np.maximum: NaN in either operand gives NaN (fmax would drop it).
template <class T> __host__ __device__ inline T max_nan(T x, T y) {
  return (x > y || x != x) ? x : y;
}

// The unary operators of more than one expression (the others are lambdas in the rows of
// elementwise.cu).
struct Sign {  // zero and NaN map to themselves, as np.sign
  template <class T> __host__ __device__ T operator()(T x) const {
    return x > T(0) ? T(1) : x < T(0) ? T(-1) : x;
  }
};
struct Sigmoid {  // e^-|x| never overflows; the form is chosen by the sign
  template <class T> __host__ __device__ T operator()(T x) const {
    const T e = m_exp(-m_abs(x));
    return x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
  }
};

struct Add {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return x + y; }
};
struct Sub {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return x - y; }
};
struct RSub {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return y - x; }
};
struct Mul {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return x * y; }
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
struct Lt {
  template <class T> __host__ __device__ T operator()(T x, T y) const {
    return x < y ? T(1) : T(0);
  }
};
struct Le {
  template <class T> __host__ __device__ T operator()(T x, T y) const {
    return x <= y ? T(1) : T(0);
  }
};
struct Maximum {
  template <class T> __host__ __device__ T operator()(T x, T y) const { return max_nan(x, y); }
};
struct Eq {  // 1 where equal, else 0, in the array's dtype
  template <class T> __host__ __device__ T operator()(T x, T y) const {
    return x == y ? T(1) : T(0);
  }
};
struct Ge {
  template <class T> __host__ __device__ T operator()(T x, T y) const {
    return x >= y ? T(1) : T(0);
  }
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

struct SumOp {
  template <class T> __host__ __device__ static T identity() { return T(0); }
  template <class T> __host__ __device__ T operator()(T x, T y) const { return x + y; }
};
struct MaxOp {  // NaN propagates, as np.max
  template <class T> __host__ __device__ static T identity() { return -INFINITY; }
  template <class T> __host__ __device__ T operator()(T x, T y) const { return max_nan(x, y); }
};

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kWarpSize = 32;

// Butterfly reduction over the 32 lanes of a warp: every lane ends with the result. All 32
// lanes must call it (the kernels' blocks are whole warps and call it without divergence).
template <class T, class Op> __device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    v = op(v, __shfl_xor_sync(kFullWarp, v, offset));
  }
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
  emulation::launch(name, c.grid, c.block, [&] { kernel(static_cast<Params>(args)...); });
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
