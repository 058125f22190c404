// CPU backend for needle's NDArray: the primitive table of ndarray_backend_numpy.py
// (the executable specification) implemented natively for float32 and float64.
//
// Conventions (shared with every backend): an Array is a flat, 64-byte aligned buffer of
// one dtype; strided views are (shape, strides, offset) in elements; `out` is a separate
// compact Array; bounds and sizes were checked in Python, so native code only asserts.

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <vector>

namespace nb = nanobind;
using namespace nb::literals;

namespace needle {
namespace cpu {

constexpr size_t kAlignment = 64;  // a cache line, and the widest SIMD register (AVX-512)
constexpr int kTile = 8;

using Shape = std::vector<int64_t>;

// ---- Array and dtype dispatch --------------------------------------------------------

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

struct Array {
  Array(size_t size, DType dtype) : size(size), dtype(dtype) {
    size_t isz = itemsize(dtype);
    if (size > std::numeric_limits<size_t>::max() / isz - kAlignment) throw std::bad_alloc();
    // aligned_alloc needs a nonzero multiple of the alignment; size 0 still gets a real,
    // unique pointer so ptr() is meaningful.
    size_t bytes = std::max(kAlignment, (size * isz + kAlignment - 1) / kAlignment * kAlignment);
    ptr = std::aligned_alloc(kAlignment, bytes);
    if (!ptr) throw std::bad_alloc();
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

// ---- strided views -------------------------------------------------------------------

// A strided view simplified for iteration: size-1 dims dropped and dims merged wherever the
// memory walk is the same, so the innermost loop is as long (and as often unit-stride) as
// possible.
struct View {
  Shape shape;
  Shape strides;
  int64_t offset;
  int64_t size;
};

inline View simplify(const Shape &shape, const Shape &strides, int64_t offset) {
  assert(shape.size() == strides.size());
  View v{{}, {}, offset, 1};
  for (size_t d = 0; d < shape.size(); ++d) {
    assert(shape[d] >= 0);
    v.size *= shape[d];
    if (shape[d] == 1) continue;
    if (!v.shape.empty() && v.strides.back() == strides[d] * shape[d]) {
      v.shape.back() *= shape[d];
      v.strides.back() = strides[d];
    } else {
      v.shape.push_back(shape[d]);
      v.strides.push_back(strides[d]);
    }
  }
  return v;
}

// Calls row(start, length, stride) for each innermost row of the view in C order.
template <class RowFn> void for_each_row(const View &v, RowFn &&row) {
  if (v.size == 0) return;
  if (v.shape.empty()) return row(v.offset, int64_t{1}, int64_t{0});
  const size_t outer = v.shape.size() - 1;
  const int64_t len = v.shape[outer], stride = v.strides[outer];
  std::vector<int64_t> idx(outer, 0);
  int64_t start = v.offset;
  for (int64_t done = 0; done < v.size; done += len) {
    row(start, len, stride);
    for (size_t d = outer; d-- > 0;) {  // odometer increment over the outer dims
      start += v.strides[d];
      if (++idx[d] < v.shape[d]) break;
      start -= v.strides[d] * v.shape[d];
      idx[d] = 0;
    }
  }
}

template <class T> void gather(const T *src, T *dst, const View &v) {
  for_each_row(v, [&](int64_t start, int64_t len, int64_t stride) {
    const T *s = src + start;
    if (stride == 1) {
      std::copy(s, s + len, dst);
    } else {
      for (int64_t k = 0; k < len; ++k) dst[k] = s[k * stride];
    }
    dst += len;
  });
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

// ---- memory --------------------------------------------------------------------------

using NumpyArray = nb::ndarray<nb::numpy>;

template <class T> NumpyArray to_numpy_kernel(const Array &a, const Shape &shape, const View &v) {
  T *buf = new T[std::max<int64_t>(v.size, 1)];
  nb::capsule owner(buf, [](void *p) noexcept { delete[] static_cast<T *>(p); });
  gather(a.data<T>(), buf, v);
  std::vector<size_t> dims(shape.begin(), shape.end());
  return NumpyArray(buf, dims.size(), dims.data(), owner, nullptr, nb::dtype<T>(),
                    nb::device::cpu::value);
}

NumpyArray to_numpy(const Array &a, const Shape &shape, const Shape &strides, int64_t offset) {
  View v = simplify(shape, strides, offset);
  return dispatch(a.dtype, [&](auto tag) {
    return to_numpy_kernel<decltype(tag)>(a, shape, v);
  });
}

using InputArray = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;

void from_numpy(const InputArray &src, Array &out) {
  dispatch(out.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (src.dtype() != nb::dtype<T>())
      throw nb::type_error(
          (std::string("from_numpy: source dtype does not match Array dtype ") + dtype_name(out.dtype))
              .c_str());
    if (src.size() != out.size)
      throw nb::value_error(("from_numpy: source has " + std::to_string(src.size()) +
                             " elements, Array has " + std::to_string(out.size))
                                .c_str());
    if (out.size) std::memcpy(out.ptr, src.data(), out.size * sizeof(T));
  });
}

void fill(Array &out, double val) {
  dispatch(out.dtype, [&](auto tag) {
    using T = decltype(tag);
    std::fill_n(out.data<T>(), out.size, static_cast<T>(val));
  });
}

// ---- layout --------------------------------------------------------------------------

void compact(const Array &a, Array &out, const Shape &shape, const Shape &strides,
             int64_t offset) {
  View v = simplify(shape, strides, offset);
  assert(static_cast<size_t>(v.size) <= out.size);
  dispatch(common_dtype(a, out), [&](auto tag) {
    using T = decltype(tag);
    gather(a.data<T>(), out.data<T>(), v);
  });
}

void ewise_setitem(const Array &a, Array &out, const Shape &shape, const Shape &strides,
                   int64_t offset) {
  View v = simplify(shape, strides, offset);
  assert(static_cast<size_t>(v.size) <= a.size);
  dispatch(common_dtype(a, out), [&](auto tag) {
    using T = decltype(tag);
    scatter(a.data<T>(), out.data<T>(), v);
  });
}

void scalar_setitem(size_t size, double val, Array &out, const Shape &shape,
                    const Shape &strides, int64_t offset) {
  View v = simplify(shape, strides, offset);
  assert(static_cast<size_t>(v.size) == size);
  (void)size;
  dispatch(out.dtype, [&](auto tag) {
    using T = decltype(tag);
    scatter_scalar(static_cast<T>(val), out.data<T>(), v);
  });
}

// ---- elementwise operators -----------------------------------------------------------
// NaN handling follows NumPy (np.maximum, np.sign, np.max propagate NaN); the build does
// not use -ffast-math, so these comparisons keep IEEE meaning.

template <class T> inline T max_nan(T x, T y) { return (x > y || x != x) ? x : y; }

struct Add { template <class T> T operator()(T x, T y) const { return x + y; } };
struct Sub { template <class T> T operator()(T x, T y) const { return x - y; } };
struct RSub { template <class T> T operator()(T x, T y) const { return y - x; } };
struct Mul { template <class T> T operator()(T x, T y) const { return x * y; } };
struct Div { template <class T> T operator()(T x, T y) const { return x / y; } };
struct RDiv { template <class T> T operator()(T x, T y) const { return y / x; } };
struct Power { template <class T> T operator()(T x, T y) const { return std::pow(x, y); } };
struct Maximum { template <class T> T operator()(T x, T y) const { return max_nan(x, y); } };
struct Eq { template <class T> T operator()(T x, T y) const { return T(x == y); } };
struct Ge { template <class T> T operator()(T x, T y) const { return T(x >= y); } };

struct Neg { template <class T> T operator()(T x) const { return -x; } };
struct Abs { template <class T> T operator()(T x) const { return std::abs(x); } };
struct Sign {  // zero and NaN map to themselves, as np.sign does
  template <class T> T operator()(T x) const { return x > 0 ? T(1) : x < 0 ? T(-1) : x; }
};
struct Log { template <class T> T operator()(T x) const { return std::log(x); } };
struct Exp { template <class T> T operator()(T x) const { return std::exp(x); } };
struct Tanh { template <class T> T operator()(T x) const { return std::tanh(x); } };
struct Sqrt { template <class T> T operator()(T x) const { return std::sqrt(x); } };
struct Sin { template <class T> T operator()(T x) const { return std::sin(x); } };
struct Cos { template <class T> T operator()(T x) const { return std::cos(x); } };
struct Relu { template <class T> T operator()(T x) const { return max_nan(x, T(0)); } };
struct Sigmoid {  // exp(-|x|) never overflows; pick the algebraically equal form by sign
  template <class T> T operator()(T x) const {
    T e = std::exp(-std::abs(x));
    return x >= 0 ? T(1) / (T(1) + e) : e / (T(1) + e);
  }
};

// No __restrict here: an in-place op (out aliasing an input) stays correct.
template <class T, class Op> void map_binary(const T *a, const T *b, T *out, size_t n, Op op) {
  for (size_t i = 0; i < n; ++i) out[i] = op(a[i], b[i]);
}

template <class T, class Op> void map_scalar(const T *a, T val, T *out, size_t n, Op op) {
  for (size_t i = 0; i < n; ++i) out[i] = op(a[i], val);
}

template <class T, class Op> void map_unary(const T *a, T *out, size_t n, Op op) {
  for (size_t i = 0; i < n; ++i) out[i] = op(a[i]);
}

template <class Op> void ewise_binary(const Array &a, const Array &b, Array &out) {
  assert(a.size >= out.size && b.size >= out.size);
  dispatch(common_dtype(a, b, out), [&](auto tag) {
    using T = decltype(tag);
    map_binary(a.data<T>(), b.data<T>(), out.data<T>(), out.size, Op{});
  });
}

// The scalar is rounded to the array dtype first, as NumPy does for a Python float.
template <class Op> void scalar_binary(const Array &a, double val, Array &out) {
  assert(a.size >= out.size);
  dispatch(common_dtype(a, out), [&](auto tag) {
    using T = decltype(tag);
    map_scalar(a.data<T>(), static_cast<T>(val), out.data<T>(), out.size, Op{});
  });
}

template <class Op> void ewise_unary(const Array &a, Array &out) {
  assert(a.size >= out.size);
  dispatch(common_dtype(a, out), [&](auto tag) {
    using T = decltype(tag);
    map_unary(a.data<T>(), out.data<T>(), out.size, Op{});
  });
}

// ---- linear algebra ------------------------------------------------------------------

// out[rows, jj:jj+len] += a[rows, k] * b[k, jj:jj+len] for R rows at once: each b row
// segment is loaded once per R output rows, and the j loop is contiguous so it vectorizes.
template <class T, int R>
void rank1_rows(const T *__restrict a, size_t lda, const T *__restrict b, T *__restrict out,
                size_t ldo, size_t len) {
  T av[R];
  for (int r = 0; r < R; ++r) av[r] = a[r * lda];
  for (size_t j = 0; j < len; ++j) {
    T bj = b[j];
    for (int r = 0; r < R; ++r) out[r * ldo + j] += av[r] * bj;
  }
}

// Blocked i-k-j matmul: a KB x JB panel of b (~128 KiB) stays in L2 while every row of a
// streams past it. A BLIS-style packed kernel is left to a later issue.
template <class T>
void matmul_kernel(const T *__restrict a, const T *__restrict b, T *__restrict out, size_t m,
                   size_t n, size_t p) {
  constexpr size_t KB = 128, JB = 256 * sizeof(float) / sizeof(T);
  std::fill_n(out, m * p, T(0));
  for (size_t kk = 0; kk < n; kk += KB) {
    const size_t kend = std::min(n, kk + KB);
    for (size_t jj = 0; jj < p; jj += JB) {
      const size_t len = std::min(p, jj + JB) - jj;
      size_t i = 0;
      for (; i + 4 <= m; i += 4)
        for (size_t k = kk; k < kend; ++k)
          rank1_rows<T, 4>(a + i * n + k, n, b + k * p + jj, out + i * p + jj, p, len);
      for (; i < m; ++i)
        for (size_t k = kk; k < kend; ++k)
          rank1_rows<T, 1>(a + i * n + k, n, b + k * p + jj, out + i * p + jj, p, len);
    }
  }
}

void matmul(const Array &a, const Array &b, Array &out, size_t m, size_t n, size_t p) {
  assert(a.size >= m * n && b.size >= n * p && out.size >= m * p);
  dispatch(common_dtype(a, b, out), [&](auto tag) {
    using T = decltype(tag);
    matmul_kernel(a.data<T>(), b.data<T>(), out.data<T>(), m, n, p);
  });
}

void batched_matmul(const Array &a, const Array &b, Array &out, size_t batch, size_t m,
                    size_t n, size_t p) {
  assert(a.size >= batch * m * n && b.size >= batch * n * p && out.size >= batch * m * p);
  dispatch(common_dtype(a, b, out), [&](auto tag) {
    using T = decltype(tag);
    for (size_t i = 0; i < batch; ++i)
      matmul_kernel(a.data<T>() + i * m * n, b.data<T>() + i * n * p, out.data<T>() + i * m * p,
                    m, n, p);
  });
}

// out_tile += a_tile @ b_tile for contiguous kTile x kTile tiles.
template <class T>
void tile_madd(const T *__restrict a, const T *__restrict b, T *__restrict out) {
  for (int i = 0; i < kTile; ++i)
    for (int k = 0; k < kTile; ++k) {
      const T aik = a[i * kTile + k];
      for (int j = 0; j < kTile; ++j) out[i * kTile + j] += aik * b[k * kTile + j];
    }
}

template <class T>
void matmul_tiled_kernel(const T *a, const T *b, T *out, size_t m, size_t n, size_t p) {
  constexpr size_t tt = kTile * kTile;
  const size_t mt = m / kTile, nt = n / kTile, pt = p / kTile;
  std::fill_n(out, m * p, T(0));
  for (size_t i = 0; i < mt; ++i)
    for (size_t j = 0; j < pt; ++j)
      for (size_t k = 0; k < nt; ++k)
        tile_madd(a + (i * nt + k) * tt, b + (k * pt + j) * tt, out + (i * pt + j) * tt);
}

void matmul_tiled(const Array &a, const Array &b, Array &out, size_t m, size_t n, size_t p) {
  assert(m % kTile == 0 && n % kTile == 0 && p % kTile == 0);
  assert(a.size >= m * n && b.size >= n * p && out.size >= m * p);
  dispatch(common_dtype(a, b, out), [&](auto tag) {
    using T = decltype(tag);
    matmul_tiled_kernel(a.data<T>(), b.data<T>(), out.data<T>(), m, n, p);
  });
}

// ---- reductions over the last axis ---------------------------------------------------

// Pairwise summation with 8 independent double accumulators at the leaves: error grows
// with log(n) rather than n, and the leaf loop vectorizes without -ffast-math.
template <class T> double pairwise_sum(const T *x, size_t n) {
  constexpr size_t kLeaf = 128;
  if (n > kLeaf) {
    const size_t half = n / 2 / 8 * 8;
    return pairwise_sum(x, half) + pairwise_sum(x + half, n - half);
  }
  double acc[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += x[i + l];
  for (; i < n; ++i) acc[i % 8] += x[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <class T> T max_of(const T *x, size_t n) {
  T m = x[0];
  for (size_t i = 1; i < n; ++i) m = max_nan(m, x[i]);
  return m;
}

void reduce_sum(const Array &a, Array &out, size_t reduce_size) {
  assert(reduce_size >= 1 && a.size >= out.size * reduce_size);
  dispatch(common_dtype(a, out), [&](auto tag) {
    using T = decltype(tag);
    const T *src = a.data<T>();
    T *dst = out.data<T>();
    for (size_t i = 0; i < out.size; ++i)
      dst[i] = static_cast<T>(pairwise_sum(src + i * reduce_size, reduce_size));
  });
}

void reduce_max(const Array &a, Array &out, size_t reduce_size) {
  assert(reduce_size >= 1 && a.size >= out.size * reduce_size);
  dispatch(common_dtype(a, out), [&](auto tag) {
    using T = decltype(tag);
    const T *src = a.data<T>();
    T *dst = out.data<T>();
    for (size_t i = 0; i < out.size; ++i) dst[i] = max_of(src + i * reduce_size, reduce_size);
  });
}

}  // namespace cpu
}  // namespace needle

// ---- bindings ------------------------------------------------------------------------

NB_MODULE(ndarray_backend_cpu, m) {
  using namespace needle::cpu;
  m.doc() = "needle CPU backend: the primitive table of ndarray_backend_numpy, in C++";
  m.attr("__device_name__") = "cpu";
  m.attr("__tile_size__") = kTile;
  m.attr("DTYPES") = nb::make_tuple("float32", "float64");

  nb::class_<Array>(m, "Array", "A flat, 64-byte aligned buffer of `size` elements.")
      .def(
          "__init__",
          [](Array *self, size_t size, const std::string &dtype) {
            new (self) Array(size, parse_dtype(dtype));
          },
          "size"_a, "dtype"_a = "float32")
      .def_prop_ro("size", [](const Array &a) { return a.size; })
      .def_prop_ro("dtype", [](const Array &a) { return dtype_name(a.dtype); })
      .def("ptr", [](const Array &a) { return reinterpret_cast<uintptr_t>(a.ptr); });

  m.def("to_numpy", &to_numpy, "a"_a, "shape"_a, "strides"_a, "offset"_a);
  m.def("from_numpy", &from_numpy, "a"_a, "out"_a);
  m.def("fill", &fill, "out"_a, "val"_a);

  m.def("compact", &compact, "a"_a, "out"_a, "shape"_a, "strides"_a, "offset"_a);
  m.def("ewise_setitem", &ewise_setitem, "a"_a, "out"_a, "shape"_a, "strides"_a, "offset"_a);
  m.def("scalar_setitem", &scalar_setitem, "size"_a, "val"_a, "out"_a, "shape"_a, "strides"_a,
        "offset"_a);

  m.def("ewise_add", &ewise_binary<Add>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_sub", &ewise_binary<Sub>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_mul", &ewise_binary<Mul>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_div", &ewise_binary<Div>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_power", &ewise_binary<Power>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_maximum", &ewise_binary<Maximum>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_eq", &ewise_binary<Eq>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_ge", &ewise_binary<Ge>, "a"_a, "b"_a, "out"_a);

  m.def("scalar_add", &scalar_binary<Add>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_sub", &scalar_binary<Sub>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_rsub", &scalar_binary<RSub>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_mul", &scalar_binary<Mul>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_div", &scalar_binary<Div>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_rdiv", &scalar_binary<RDiv>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_power", &scalar_binary<Power>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_maximum", &scalar_binary<Maximum>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_eq", &scalar_binary<Eq>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_ge", &scalar_binary<Ge>, "a"_a, "val"_a, "out"_a);

  m.def("ewise_neg", &ewise_unary<Neg>, "a"_a, "out"_a);
  m.def("ewise_abs", &ewise_unary<Abs>, "a"_a, "out"_a);
  m.def("ewise_sign", &ewise_unary<Sign>, "a"_a, "out"_a);
  m.def("ewise_log", &ewise_unary<Log>, "a"_a, "out"_a);
  m.def("ewise_exp", &ewise_unary<Exp>, "a"_a, "out"_a);
  m.def("ewise_tanh", &ewise_unary<Tanh>, "a"_a, "out"_a);
  m.def("ewise_sqrt", &ewise_unary<Sqrt>, "a"_a, "out"_a);
  m.def("ewise_sin", &ewise_unary<Sin>, "a"_a, "out"_a);
  m.def("ewise_cos", &ewise_unary<Cos>, "a"_a, "out"_a);
  m.def("ewise_relu", &ewise_unary<Relu>, "a"_a, "out"_a);
  m.def("ewise_sigmoid", &ewise_unary<Sigmoid>, "a"_a, "out"_a);

  m.def("matmul", &matmul, "a"_a, "b"_a, "out"_a, "m"_a, "n"_a, "p"_a);
  m.def("batched_matmul", &batched_matmul, "a"_a, "b"_a, "out"_a, "batch"_a, "m"_a, "n"_a,
        "p"_a);
  m.def("matmul_tiled", &matmul_tiled, "a"_a, "b"_a, "out"_a, "m"_a, "n"_a, "p"_a);

  m.def("reduce_sum", &reduce_sum, "a"_a, "out"_a, "reduce_size"_a);
  m.def("reduce_max", &reduce_max, "a"_a, "out"_a, "reduce_size"_a);

  m.def("synchronize", [] {}, "Nothing to wait for: CPU kernels are synchronous.");
}
