// Elementwise primitives over compact arrays: fill, the unary and binary operators, the
// binary operators against a scalar, and axpby. Grid-stride loops, memory bound: each thread
// moves 16 bytes per access (float4 / double2) when every pointer is 16-byte aligned, which
// Arrays from the allocator always are; a scalar loop covers the tail and unaligned calls.

#include "common.cuh"

namespace needle {
namespace cuda {
namespace {

// out[i] = f(a[i]) for the unary operators and the scalar ones (f binds the scalar).
template <class T, class F>
__global__ void map_unary_kernel(F f, const T* a, T* out, int64_t n, bool vectorized) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if (vectorized) {
    constexpr int W = kVec<T>;
    const int64_t vectors = n / W;
    for (int64_t v = tid; v < vectors; v += stride) {
      T x[W];
      load_vec(a + v * W, x);
#pragma unroll
      for (int l = 0; l < W; ++l) x[l] = f(x[l]);
      store_vec(out + v * W, x);
    }
    tail = vectors * W;
  }
  for (int64_t i = tail + tid; i < n; i += stride) out[i] = f(a[i]);
}

template <class T, class F>
__global__ void map_binary_kernel(F f, const T* a, const T* b, T* out, int64_t n,
                                  bool vectorized) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if (vectorized) {
    constexpr int W = kVec<T>;
    const int64_t vectors = n / W;
    for (int64_t v = tid; v < vectors; v += stride) {
      T x[W], y[W];
      load_vec(a + v * W, x);
      load_vec(b + v * W, y);
#pragma unroll
      for (int l = 0; l < W; ++l) x[l] = f(x[l], y[l]);
      store_vec(out + v * W, x);
    }
    tail = vectors * W;
  }
  for (int64_t i = tail + tid; i < n; i += stride) out[i] = f(a[i], b[i]);
}

template <class T>
__global__ void fill_kernel(T* out, T val, int64_t n, bool vectorized) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if (vectorized) {
    constexpr int W = kVec<T>;
    const int64_t vectors = n / W;
    T x[W];
#pragma unroll
    for (int l = 0; l < W; ++l) x[l] = val;
    for (int64_t v = tid; v < vectors; v += stride) store_vec(out + v * W, x);
    tail = vectors * W;
  }
  for (int64_t i = tail + tid; i < n; i += stride) out[i] = val;
}

// A binary operator with its second operand fixed: f(x) = Op(x, val).
template <class Op, class T> struct BindScalar {
  T val;
  __host__ __device__ T operator()(T x) const { return Op()(x, val); }
};

// Work items of a map: one per vector when vectorized (the tail is spread over the same grid).
template <class T> int64_t map_items(int64_t n, bool vectorized) {
  return vectorized ? ceil_div<int64_t>(n, kVec<T>) : n;
}

template <class T, class F> void map_unary(F f, const void* a, void* out, int64_t n) {
  if (n <= 0) return;
  const bool vec = aligned16(a) && aligned16(out);
  launch("map_unary", map_unary_kernel<T, F>, grid_stride_config(map_items<T>(n, vec)), f,
         static_cast<const T*>(a), static_cast<T*>(out), n, vec);
}

// Each thread loads its elements of a and b before it stores the same elements of out, so out
// may be a or b itself.
template <class T, class F>
void map_binary(F f, const void* a, const void* b, void* out, int64_t n) {
  if (n <= 0) return;
  const bool vec = aligned16(a) && aligned16(b) && aligned16(out);
  launch("map_binary", map_binary_kernel<T, F>, grid_stride_config(map_items<T>(n, vec)), f,
         static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out), n, vec);
}

template <class T> void unary(UnaryOp op, const void* a, void* out, int64_t n) {
  switch (op) {
    case UnaryOp::neg: return map_unary<T>(Neg(), a, out, n);
    case UnaryOp::abs: return map_unary<T>(Abs(), a, out, n);
    case UnaryOp::sign: return map_unary<T>(Sign(), a, out, n);
    case UnaryOp::log: return map_unary<T>(Log(), a, out, n);
    case UnaryOp::exp: return map_unary<T>(Exp(), a, out, n);
    case UnaryOp::tanh: return map_unary<T>(Tanh(), a, out, n);
    case UnaryOp::sqrt: return map_unary<T>(Sqrt(), a, out, n);
    case UnaryOp::sin: return map_unary<T>(Sin(), a, out, n);
    case UnaryOp::cos: return map_unary<T>(Cos(), a, out, n);
    case UnaryOp::relu: return map_unary<T>(Relu(), a, out, n);
    case UnaryOp::sigmoid: return map_unary<T>(Sigmoid(), a, out, n);
  }
  throw std::invalid_argument("ewise_unary: unknown operator");
}

template <class T> void binary(BinaryOp op, const void* a, const void* b, void* out, int64_t n) {
  switch (op) {
    case BinaryOp::add: return map_binary<T>(Add(), a, b, out, n);
    case BinaryOp::sub: return map_binary<T>(Sub(), a, b, out, n);
    case BinaryOp::mul: return map_binary<T>(Mul(), a, b, out, n);
    case BinaryOp::div: return map_binary<T>(Div(), a, b, out, n);
    case BinaryOp::power: return map_binary<T>(Power(), a, b, out, n);
    case BinaryOp::maximum: return map_binary<T>(Maximum(), a, b, out, n);
    case BinaryOp::eq: return map_binary<T>(Eq(), a, b, out, n);
    case BinaryOp::ge: return map_binary<T>(Ge(), a, b, out, n);
    case BinaryOp::rsub:  // only meaningful against a scalar
    case BinaryOp::rdiv: break;
  }
  throw std::invalid_argument("ewise_binary: operator has no elementwise form");
}

template <class T> void scalar(BinaryOp op, const void* a, T val, void* out, int64_t n) {
  switch (op) {
    case BinaryOp::add: return map_unary<T>(BindScalar<Add, T>{val}, a, out, n);
    case BinaryOp::sub: return map_unary<T>(BindScalar<Sub, T>{val}, a, out, n);
    case BinaryOp::rsub: return map_unary<T>(BindScalar<RSub, T>{val}, a, out, n);
    case BinaryOp::mul: return map_unary<T>(BindScalar<Mul, T>{val}, a, out, n);
    case BinaryOp::div: return map_unary<T>(BindScalar<Div, T>{val}, a, out, n);
    case BinaryOp::rdiv: return map_unary<T>(BindScalar<RDiv, T>{val}, a, out, n);
    case BinaryOp::power: return map_unary<T>(BindScalar<Power, T>{val}, a, out, n);
    case BinaryOp::maximum: return map_unary<T>(BindScalar<Maximum, T>{val}, a, out, n);
    case BinaryOp::eq: return map_unary<T>(BindScalar<Eq, T>{val}, a, out, n);
    case BinaryOp::ge: return map_unary<T>(BindScalar<Ge, T>{val}, a, out, n);
  }
  throw std::invalid_argument("scalar_binary: unknown operator");
}

template <class T> void fill_typed(void* out, int64_t n, T val) {
  if (n <= 0) return;
  const bool vec = aligned16(out);
  launch("fill", fill_kernel<T>, grid_stride_config(map_items<T>(n, vec)),
         static_cast<T*>(out), val, n, vec);
}

}  // namespace

unsigned grid_size(int64_t items, int block_threads, int sm_count) {
  const int64_t needed = ceil_div<int64_t>(items, block_threads);
  const int64_t cap = int64_t(sm_count > 0 ? sm_count : 1) * kBlocksPerSm;
  return static_cast<unsigned>(needed < 1 ? 1 : needed < cap ? needed : cap);
}

void fill(DType dt, void* out, int64_t n, double val) {
  // The scalar is rounded to the array's dtype first, as NumPy does with a Python float.
  if (dt == DType::f32) return fill_typed<float>(out, n, static_cast<float>(val));
  fill_typed<double>(out, n, val);
}

void ewise_unary(UnaryOp op, DType dt, const void* a, void* out, int64_t n) {
  if (dt == DType::f32) return unary<float>(op, a, out, n);
  unary<double>(op, a, out, n);
}

void ewise_binary(BinaryOp op, DType dt, const void* a, const void* b, void* out, int64_t n) {
  if (dt == DType::f32) return binary<float>(op, a, b, out, n);
  binary<double>(op, a, b, out, n);
}

void scalar_binary(BinaryOp op, DType dt, const void* a, double val, void* out, int64_t n) {
  if (dt == DType::f32) return scalar<float>(op, a, static_cast<float>(val), out, n);
  scalar<double>(op, a, val, out, n);
}

void ewise_axpby(DType dt, const void* a, const void* b, double alpha, double beta, void* out,
                 int64_t n) {
  if (dt == DType::f32) {
    const Axpby<float> f{static_cast<float>(alpha), static_cast<float>(beta)};
    return map_binary<float>(f, a, b, out, n);
  }
  map_binary<double>(Axpby<double>{alpha, beta}, a, b, out, n);
}

}  // namespace cuda
}  // namespace needle
