// Elementwise primitives over compact arrays: fill, the unary and binary operators, the
// binary operators against a scalar, astype and axpby, all as one map kernel. Grid-stride
// loops, memory bound: each thread moves 16 bytes per access (float4 / double2, a uint4 of
// the integer, bool and 16-bit float dtypes) when every pointer is 16-byte aligned, which
// Arrays from the allocator always are; a scalar loop covers the tail and unaligned calls.
//
// The families of the primitive table are tables here, one row a primitive with the dtypes
// its row takes: a new unary primitive is one row of unary_kernels() (plus its row in
// primitives.py).

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "common.cuh"

namespace needle {
namespace cuda {
namespace {

// The inputs of a map: N compact arrays (none for fill).
template <class T, int N> struct Inputs { const T* p[N > 0 ? N : 1]; };

// f(x[0][l], ..., x[N-1][l]) for the N inputs' values x of lane l.
template <int N, class F, class Get> __device__ __forceinline__ auto apply(const F& f, Get get) {
  if constexpr (N == 0) {
    return f();
  } else if constexpr (N == 1) {
    return f(get(0));
  } else {
    static_assert(N == 2, "maps take at most two inputs");
    return f(get(0), get(1));
  }
}

// out[i] = f(in[0][i], ..., in[N-1][i]), out of f's result type R (the inputs' T, bool for
// the comparisons, astype's target). Each thread loads its elements of every input before it
// stores the same elements of out, so out may be one of the inputs.
template <class T, class R, int N, class F>
__global__ void map_kernel(F f, Inputs<T, N> in, R* out, int64_t n, bool vectorized) {
  constexpr int W = kVec<T>;
  for_each_share<T>(
      n, int64_t(blockIdx.x) * blockDim.x + threadIdx.x, int64_t(gridDim.x) * blockDim.x,
      vectorized,
      [&](int64_t i) {
        T x[N > 0 ? N : 1][W];
        R y[W];
#pragma unroll
        for (int k = 0; k < N; ++k) load_vec(in.p[k] + i, x[k]);
#pragma unroll
        for (int l = 0; l < W; ++l) y[l] = apply<N>(f, [&](int k) { return x[k][l]; });
        if constexpr (sizeof(R) == sizeof(T)) {
          store_vec(out + i, y);
        } else {  // a comparison, or astype, into another width: stored one by one
#pragma unroll
          for (int l = 0; l < W; ++l) out[i + l] = y[l];
        }
      },
      [&](int64_t i) { out[i] = apply<N>(f, [&](int k) { return in.p[k][i]; }); });
}

// Launches map_kernel over n elements; `in` are the inputs' device pointers, of dtype T, and
// out holds R.
template <class T, class R = T, class F, class... In>
void map(const char* name, F f, void* out, int64_t n, In... in) {
  if (n <= 0) return;
  constexpr int N = sizeof...(In);
  const Inputs<T, N> inputs{{static_cast<const T*>(in)...}};
  const bool vec = aligned16(out) && (aligned16(in) && ...);
  // Work items: one per vector when vectorized (the tail is spread over the same grid).
  const int64_t items = vec ? ceil_div<int64_t>(n, kVec<T>) : n;
  launch(name, map_kernel<T, R, N, F>, grid_stride_config(items), f, inputs, static_cast<R*>(out),
         n, vec);
}

template <class T> struct Constant {
  T val;
  __host__ __device__ T operator()() const { return val; }
};

// astype's operator: x converted to R (convert.cuh).
template <class R> struct ConvertTo {
  template <class T> __host__ __device__ R operator()(T x) const { return convert<R>(x); }
};

// A binary operator with its second operand fixed: f(x) = op(x, val).
template <class Op, class T> struct BindScalar {
  Op op;
  T val;
  __host__ __device__ auto operator()(T x) const { return op(x, val); }
};
// a ** 0.5 is sqrt, as in NumPy and PyTorch: -inf ** 0.5 is NaN (pow gives +inf).
template <class T> struct BindScalar<Power, T> {
  Power op;
  T val;
  __host__ __device__ T operator()(T x) const { return val == T(0.5) ? m_sqrt(x) : op(x, val); }
};

// The rows of the three families, from the operator of each and the dtypes it takes (the
// kernels are instantiated for exactly those).
template <class Set, class F> UnaryKernel unary(const char* name, F f) {
  return {name, dtype_set(Set()), [name, f](DType dt, const void* a, void* out, int64_t n) {
            with_dtype<Set>(dt, [&](auto t) { map<decltype(t)>(name, f, out, n, a); });
          }};
}
// Whether binary operator Op is a comparison (writes bool), and then the type of out.
template <class Op>
constexpr bool is_comparison = std::is_same<decltype(Op()(0.0f, 0.0f)), bool>::value;
template <class Op, class T> using out_t = std::conditional_t<is_comparison<Op>, bool, T>;

template <class Set, class F> BinaryKernel binary(const char* name, F f) {
  return {name, dtype_set(Set()), is_comparison<F>,
          [name, f](DType dt, const void* a, const void* b, void* out, int64_t n) {
            with_dtype<Set>(dt, [&](auto t) {
              using T = decltype(t);
              map<T, out_t<F, T>>(name, f, out, n, a, b);
            });
          }};
}
template <class Set, class F> ScalarKernel scalar(const char* name, F f) {
  return {name, dtype_set(Set()), is_comparison<F>,
          [name, f](DType dt, const void* a, double val, void* out, int64_t n) {
            with_dtype<Set>(dt, [&](auto t) {
              // The scalar is converted to the array's dtype first, as NumPy does.
              using T = decltype(t);
              map<T, out_t<F, T>>(name, BindScalar<F, T>{f, scalar_value<T>(name, val)}, out, n, a);
            });
          }};
}

// The binary operators, in the primitive table's order, each visit(ewise name, scalar name,
// operator, dtypes): the operator of ewise_<op> (two arrays) and of scalar_<op> (an array
// and a scalar), and the dtypes both take (primitives.elementwise_dtypes). The two with the
// scalar first (val - a, val / a) have no ewise_ twin (nullptr): with two arrays they are
// ewise_sub and ewise_div with the operands swapped.
template <class Visit> void for_each_binary_operator(Visit visit) {
  visit("ewise_add", "scalar_add", Add(), Numeric());
  visit("ewise_sub", "scalar_sub", Sub(), Numeric());
  visit(nullptr, "scalar_rsub", RSub(), Numeric());
  visit("ewise_mul", "scalar_mul", Mul(), Numeric());
  visit("ewise_div", "scalar_div", Div(), Floats());
  visit(nullptr, "scalar_rdiv", RDiv(), Floats());
  visit("ewise_power", "scalar_power", Power(), Floats());
  visit("ewise_maximum", "scalar_maximum", Maximum(), Numeric());
  visit("ewise_eq", "scalar_eq", Eq(), Computed());
  visit("ewise_ge", "scalar_ge", Ge(), Computed());
  visit("ewise_lt", "scalar_lt", Lt(), Computed());
  visit("ewise_le", "scalar_le", Le(), Computed());
}

}  // namespace

// The operators mean what ndarray_backend_numpy's do (common.cuh: NaN as NumPy, libdevice
// within 2 ulp in float and 1 ulp in double).
const std::vector<UnaryKernel>& unary_kernels() {
  static const std::vector<UnaryKernel> rows = {
      unary<Numeric>("ewise_neg", Neg()),
      unary<Numeric>("ewise_abs", Abs()),
      unary<Numeric>("ewise_sign", Sign()),
      unary<Floats>("ewise_log", [] __device__(auto x) { return m_log(x); }),
      unary<Floats>("ewise_exp", [] __device__(auto x) { return m_exp(x); }),
      unary<Floats>("ewise_tanh", [] __device__(auto x) { return m_tanh(x); }),
      unary<Floats>("ewise_sqrt", [] __device__(auto x) { return m_sqrt(x); }),
      unary<Floats>("ewise_rsqrt", [] __device__(auto x) { return decltype(x)(1) / m_sqrt(x); }),
      unary<Floats>("ewise_sin", [] __device__(auto x) { return m_sin(x); }),
      unary<Floats>("ewise_cos", [] __device__(auto x) { return m_cos(x); }),
      unary<Numeric>("ewise_relu", [] __device__(auto x) { return max_nan(x, decltype(x)(0)); }),
      unary<Floats>("ewise_sigmoid", Sigmoid()),
      unary<Floats>("ewise_erf", [] __device__(auto x) { return m_erf(x); }),
      unary<Floats>("ewise_gelu", Gelu()),
      unary<Floats>("ewise_gelu_grad", GeluGrad()),
  };
  return rows;
}

const std::vector<BinaryKernel>& binary_kernels() {
  static const std::vector<BinaryKernel> rows = [] {
    std::vector<BinaryKernel> ewise;
    for_each_binary_operator([&ewise](const char* name, const char*, auto op, auto set) {
      if (name != nullptr) ewise.push_back(binary<decltype(set)>(name, op));
    });
    return ewise;
  }();
  return rows;
}

const std::vector<ScalarKernel>& scalar_kernels() {
  static const std::vector<ScalarKernel> rows = [] {
    std::vector<ScalarKernel> scalars;
    for_each_binary_operator([&scalars](const char*, const char* name, auto op, auto set) {
      scalars.push_back(scalar<decltype(set)>(name, op));
    });
    return scalars;
  }();
  return rows;
}

unsigned grid_size(int64_t items, int block_threads, int sm_count) {
  const int64_t needed = ceil_div<int64_t>(items, block_threads);
  const int64_t cap = int64_t(sm_count > 0 ? sm_count : 1) * kBlocksPerSm;
  return static_cast<unsigned>(needed < 1 ? 1 : needed < cap ? needed : cap);
}

void fill(DType dt, void* out, int64_t n, double val) {
  with_dtype<AllTypes>(dt, [&](auto t) {
    using T = decltype(t);
    map<T>("fill", Constant<T>{scalar_value<T>("fill", val)}, out, n);
  });
}

void astype(DType from, DType to, const void* a, void* out, int64_t n) {
  if (n <= 0) return;
  if (from == to) return copy_device_to_device(out, a, n * itemsize(from));
  with_dtype<AllTypes>(from, [&](auto f) {
    with_dtype<AllTypes>(to, [&](auto t) {
      using T = decltype(f);
      using R = decltype(t);
      if constexpr (!std::is_same<T, R>::value) map<T, R>("astype", ConvertTo<R>(), out, n, a);
    });
  });
}

void ewise_axpby(DType dt, const void* a, const void* b, double alpha, double beta, void* out,
                 int64_t n) {
  with_dtype<Floats>(dt, [&](auto t) {
    using T = decltype(t);
    map<T>("ewise_axpby", Axpby<T>{static_cast<T>(alpha), static_cast<T>(beta)}, out, n, a, b);
  });
}

}  // namespace cuda
}  // namespace needle
