// CPU backend for needle's NDArray: the primitive table (primitives.py; the NumPy backend is
// its executable specification) implemented natively for float32, float64, int32, int64,
// uint8, bool, float16 and bfloat16, each primitive for the dtypes its row lists, and the rows
// of HALF_ROWS for the 16-bit floats too (computed in float32 lanes, rounded once).
//
// Conventions (shared with every backend): an Array is a flat, 64-byte aligned buffer of
// one dtype; strided views are (shape, strides, offset) in elements; `out` is a separate
// compact Array; the primitives that take a view (shape, strides, offset) check it against
// the buffer once per call, so a bad view from Python raises instead of reading outside it.
//
// This file is the table: each primitive unpacks its Arrays and calls a kernel from
// src/cpu/ (elementwise.h, reduce.h, gemm.h, thread_pool.h, strided.h). Each binding states
// the dtype set its row takes (Floats, Numeric, Computed, AllTypes... of cpu/array.h): another
// dtype is a TypeError naming the primitive.

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <Python.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "array_binding.h"
#include "common/view_check.h"
#include "cpu/array.h"
#include "cpu/batch_norm.h"
#include "cpu/conv.h"
#include "cpu/convert.h"
#include "cpu/elementwise.h"
#include "cpu/gemm.h"
#include "cpu/reduce.h"
#include "cpu/rows.h"
#include "cpu/strided.h"
#include "cpu/thread_pool.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace needle {
namespace cpu {

constexpr int kTile = 8;  // matmul_tiled's tile, as in the course's CPU backend

// ---- memory --------------------------------------------------------------------------

// The view (shape, strides, offset) of `what`, checked once per call (common/view_check.h):
// an element outside the buffer is an IndexError, a malformed view a ValueError.
View checked_view(const char *what, const Shape &shape, const Shape &strides, int64_t offset,
                  size_t buffer) {
  const ViewCheck r = check_view_bounds(shape, strides, offset, buffer);
  if (!r.problem.empty()) {
    const std::string msg = std::string(what) + ": " + r.problem;
    if (r.outside) throw nb::index_error(msg.c_str());
    throw nb::value_error(msg.c_str());
  }
  return make_view(shape, strides, offset);
}

void check_size(const char *what, const char *name, int64_t needed, size_t size) {
  const std::string problem = size_problem(name, needed, size);
  if (!problem.empty()) throw nb::value_error((std::string(what) + ": " + problem).c_str());
}

// The product of the sizes a primitive is given, checked: a negative size, or a product that
// overflows, is a ValueError naming the primitive (the kernels trust what this returns).
int64_t checked_count(const char *what, std::initializer_list<int64_t> sizes) {
  int64_t n = 1;
  for (int64_t d : sizes)
    if (d < 0 || __builtin_mul_overflow(n, d, &n))
      throw nb::value_error((std::string(what) + ": sizes must be whole numbers whose product "
                                                 "counts elements")
                                .c_str());
  return n;
}

// Row numbers in [0, rows), checked before a kernel follows them: an IndexError naming the
// first one outside.
void check_row_indices(const char *what, const Array &indices, int64_t n, int64_t rows) {
  const int64_t *idx = indices.data<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    if (idx[i] < 0 || idx[i] >= rows)
      throw nb::index_error((std::string(what) + ": row index " + std::to_string(idx[i]) +
                             " is out of range for " + std::to_string(rows) + " rows")
                                .c_str());
}

// rows x cols of each array, checked (a ValueError naming the primitive); the element count.
int64_t check_rows(const char *what, int64_t rows, int64_t cols,
                   std::initializer_list<const Array *> arrays) {
  const int64_t n = checked_count(what, {rows, cols});
  for (const Array *a : arrays) check_size(what, "an array", n, a->size);
  return n;
}

// A reduction of `a` into `groups` values of out, each over reduce_size: sizes checked.
void check_reduce(const char *what, const Array &a, const Array &out, int64_t groups,
                  int64_t reduce_size) {
  if (reduce_size < 1)
    throw nb::value_error((std::string(what) + ": reduce_size must be >= 1").c_str());
  check_size(what, "out", groups, out.size);
  check_size(what, "a", checked_count(what, {groups, reduce_size}), a.size);
}

using NumpyArray = nb::ndarray<nb::numpy>;

// NumPy's dtype of a 16-bit float dtype (bfloat16 is ml_dtypes', which NumPy has no buffer
// or DLPack code for: those arrays cross the binding as uint16 views).
nb::object numpy_half(DType dt) {
  if (dt == DType::f16) return nb::module_::import_("numpy").attr("dtype")("float16");
  return nb::module_::import_("numpy").attr("dtype")(
      nb::module_::import_("ml_dtypes").attr("bfloat16"));
}

template <class T> NumpyArray to_numpy_kernel(const Array &a, const Shape &shape, const View &v) {
  T *buf = new T[std::max<int64_t>(v.size, 1)];
  nb::capsule owner(buf, [](void *p) noexcept { delete[] static_cast<T *>(p); });
  {  // the copy without the GIL; the NumPy array is made with it
    GilRelease unlocked(v.size);
    gather(a.data<T>(), buf, v);
  }
  std::vector<size_t> dims(shape.begin(), shape.end());
  using Element = std::conditional_t<is_half_v<T>, uint16_t, T>;
  return NumpyArray(buf, dims.size(), dims.data(), owner, nullptr, nb::dtype<Element>(),
                    nb::device::cpu::value);
}

nb::object to_numpy(const Array &a, const Shape &shape, const Shape &strides, int64_t offset) {
  View v = checked_view("to_numpy", shape, strides, offset, a.size);
  nb::object array = dispatch<AllTypes>(
      a.dtype, [&](auto tag) { return nb::cast(to_numpy_kernel<decltype(tag)>(a, shape, v)); });
  if (a.dtype == DType::f16 || a.dtype == DType::bf16)
    return array.attr("view")(numpy_half(a.dtype));
  return array;
}

using InputArray = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;

void from_numpy(nb::handle a, Array &out) {
  nb::object src = nb::borrow(a);
  const bool half = out.dtype == DType::f16 || out.dtype == DType::bf16;
  if (half) {  // its bits, as uint16
    if (!nb::hasattr(src, "dtype") || !src.attr("dtype").equal(numpy_half(out.dtype)))
      throw DTypeError(std::string("source dtype does not match Array dtype ") +
                       dtype_name(out.dtype));
    src = src.attr("view")("uint16");
  }
  InputArray input;
  if (!nb::try_cast(src, input))
    throw nb::type_error("from_numpy: a must be a NumPy array (C-contiguous, on the CPU)");
  dispatch<AllTypes>(out.dtype, [&](auto tag) {
    using T = decltype(tag);
    const InputArray &src = input;
    if (!half && src.dtype() != nb::dtype<T>())
      throw DTypeError(std::string("source dtype does not match Array dtype ") +
                       dtype_name(out.dtype));
    if (src.size() != out.size)
      throw nb::value_error(("from_numpy: source has " + std::to_string(src.size()) +
                             " elements, Array has " + std::to_string(out.size))
                                .c_str());
    const void *from = src.data();  // src's owner is held by the caller's frame
    GilRelease unlocked(static_cast<int64_t>(out.size));
    if (out.size) std::memcpy(out.ptr, from, out.size * sizeof(T));
  });
}

void fill(Array &out, double val) {
  dispatch<AllTypes>(out.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T v = scalar_as<T>(val);
    GilRelease unlocked(static_cast<int64_t>(out.size));
    std::fill_n(out.data<T>(), out.size, v);
  });
}

// ---- layout --------------------------------------------------------------------------

// Calls kernel(a's data, out's data) with the pointers typed by the arrays' dtype.
template <class List, class Kernel> void with_typed(const Array &a, Array &out, Kernel &&kernel) {
  dispatch<List>(common_dtype(a, out), [&](auto tag) {
    using T = decltype(tag);
    kernel(a.data<T>(), out.data<T>());
  });
}

void compact(const Array &a, Array &out, const Shape &shape, const Shape &strides, int64_t offset) {
  View v = checked_view("compact", shape, strides, offset, a.size);
  check_size("compact", "out", v.size, out.size);
  const DType dtype = common_dtype(a, out);
  GilRelease unlocked(v.size);
  dispatch<AllTypes>(dtype, [&](auto tag) {
    using T = decltype(tag);
    // Split by rows across threads when large (im2col patch matrices are megabytes): the
    // output ranges are disjoint, so the copy is the same however it is split.
    const int64_t rows = row_count(v), len = rows ? v.size / rows : 0;
    const int axis = unit_stride_axis(v);
    const int64_t tiles = axis < 0 ? 0 : transpose_tiles(v, axis);
    const int threads = threads_for(v.size, kMinElementsPerThread);
    parallel(threads, [&](int t, int n) {
      const Range mine = split_range(axis < 0 ? rows : tiles, t, n);
      if (mine.begin >= mine.end) return;
      if (axis >= 0)
        return gather_transposed(a.data<T>(), out.data<T>(), v, axis, mine.begin, mine.end);
      gather(a.data<T>(), out.data<T>() + mine.begin * len, v, mine.begin, mine.end);
    });
  });
}

void ewise_setitem(const Array &a, Array &out, const Shape &shape, const Shape &strides,
                   int64_t offset) {
  View v = checked_view("ewise_setitem", shape, strides, offset, out.size);
  check_size("ewise_setitem", "a", v.size, a.size);
  GilRelease unlocked(v.size);
  with_typed<AllTypes>(a, out, [&](auto *x, auto *y) { scatter(x, y, v); });
}

void scalar_setitem(size_t size, double val, Array &out, const Shape &shape, const Shape &strides,
                    int64_t offset) {
  View v = checked_view("scalar_setitem", shape, strides, offset, out.size);
  if (static_cast<size_t>(v.size) != size)
    throw nb::value_error(("scalar_setitem: size " + std::to_string(size) + " is not the view's " +
                           std::to_string(v.size))
                              .c_str());
  dispatch<AllTypes>(out.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T value = scalar_as<T>(val);
    GilRelease unlocked(v.size);
    scatter_scalar(value, out.data<T>(), v);
  });
}

// Any dtype to any: the kernel is cpu/convert.h's.
void astype(const Array &a, Array &out) {
  if (a.size != out.size)
    throw nb::value_error(
        ("astype: a has " + std::to_string(a.size) + " elements, out " + std::to_string(out.size))
            .c_str());
  GilRelease unlocked(static_cast<int64_t>(out.size));
  convert(a, out);
}

// ---- elementwise: operator functors and loops are in cpu/elementwise.h --------------

// ---- linear algebra ------------------------------------------------------------------

// matmul_strided, and with `wide` matmul_strided_wide: 16-bit a and b, float32 out.
template <bool Wide = false>
void matmul_strided(const Array &a, const Array &b, Array &out, int64_t batch, int64_t m, int64_t n,
                    int64_t p, int64_t a_offset, const Shape &a_strides, int64_t b_offset,
                    const Shape &b_strides) {
  const char *what = Wide ? "matmul_strided_wide" : "matmul_strided";
  if (a_strides.size() != 3 || b_strides.size() != 3)
    throw nb::value_error((std::string(what) + ": strides must be (batch, row, col)").c_str());
  checked_view(Wide ? "matmul_strided_wide (a)" : "matmul_strided (a)", {batch, m, n}, a_strides,
               a_offset, a.size);
  checked_view(Wide ? "matmul_strided_wide (b)" : "matmul_strided (b)", {batch, n, p}, b_strides,
               b_offset, b.size);
  const View o = checked_view(what, {batch, m, p}, {m * p, p, 1}, 0, out.size);
  const DType dtype = Wide ? common_dtype(a, b) : common_dtype(a, b, out);
  if (Wide) require_dtype("matmul_strided_wide's out", out.dtype, DType::f32);
  if (o.size == 0) return Wide ? require<Halves>(dtype) : require<MatmulTypes>(dtype);
  GilRelease unlocked(o.size * std::max<int64_t>(n, 1));
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const MatrixView<T> av{a.data<T>() + a_offset, a_strides[0], a_strides[1], a_strides[2]};
    const MatrixView<T> bv{b.data<T>() + b_offset, b_strides[0], b_strides[1], b_strides[2]};
    if constexpr (Wide)
      gemm_wide<T>(batch, m, n, p, av, bv, out.data<float>());
    else
      gemm<T>(batch, m, n, p, av, bv, out.data<T>());
  };
  if constexpr (Wide)
    dispatch<Halves>(dtype, run);
  else
    dispatch<MatmulTypes>(dtype, run);
}

void matmul(const Array &a, const Array &b, Array &out, int64_t m, int64_t n, int64_t p) {
  matmul_strided<>(a, b, out, 1, m, n, p, 0, {0, n, 1}, 0, {0, p, 1});
}

void batched_matmul(const Array &a, const Array &b, Array &out, int64_t batch, int64_t m, int64_t n,
                    int64_t p) {
  matmul_strided<>(a, b, out, batch, m, n, p, 0, {m * n, n, 1}, 0, {n * p, p, 1});
}

// out_tile += a_tile @ b_tile for contiguous kTile x kTile tiles.
template <class T> void tile_madd(const T *__restrict a, const T *__restrict b, T *__restrict out) {
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
  if (m % kTile || n % kTile || p % kTile)
    throw nb::value_error("matmul_tiled: m, n and p must be multiples of the tile size");
  check_size("matmul_tiled", "a", checked_count("matmul_tiled", {int64_t(m), int64_t(n)}), a.size);
  check_size("matmul_tiled", "b", checked_count("matmul_tiled", {int64_t(n), int64_t(p)}), b.size);
  check_size("matmul_tiled", "out", checked_count("matmul_tiled", {int64_t(m), int64_t(p)}),
             out.size);
  const DType dtype = common_dtype(a, b, out);
  GilRelease unlocked(static_cast<int64_t>(m * std::max<size_t>(n, 1) * p));
  dispatch<Floats>(dtype, [&](auto tag) {
    using T = decltype(tag);
    matmul_tiled_kernel(a.data<T>(), b.data<T>(), out.data<T>(), m, n, p);
  });
}

// ---- convolution (cpu/conv.h) ---------------------------------------------------------

// The shape of a conv2d primitive's call, every parameter and array size checked: `first` is
// the array read as the NHWC input (x) or the adjoint (g), `second` the weights or the
// adjoint, `out` the result (y, dx or dw).
enum class ConvRole { Forward, InputGrad, WeightGrad };
ConvShape checked_conv(const char *what, ConvRole role, const Array &first, const Array &second,
                       const Array &out, int64_t n, int64_t h, int64_t w, int64_t c_in, int64_t kh,
                       int64_t kw, int64_t c_out, int64_t stride, int64_t pad) {
  auto fail = [&](const std::string &problem) {
    throw nb::value_error((std::string(what) + ": " + problem).c_str());
  };
  for (int64_t v : {n, h, w, c_in, kh, kw, c_out, stride, pad})
    if (v < 0 || v > (int64_t{1} << 31)) fail("sizes must lie in [0, 2^31]");
  if (kh < 1 || kw < 1 || stride < 1) fail("need kernel sizes and stride >= 1");
  if (h + 2 * pad < kh || w + 2 * pad < kw) fail("the kernel is larger than the padded input");
  const ConvShape s{n, h, w, c_in, kh, kw, c_out, stride, pad};
  auto elements = [&](std::initializer_list<int64_t> dims) {
    int64_t total = 1;
    for (int64_t d : dims)
      if (__builtin_mul_overflow(total, d, &total)) fail("sizes overflow");
    return total;
  };
  const int64_t xs = elements({n, h, w, c_in}), ws = elements({kh, kw, c_in, c_out});
  const int64_t gs = elements({n, s.out_h(), s.out_w(), c_out});
  const int64_t sizes[3][3] = {{xs, ws, gs}, {gs, ws, xs}, {xs, gs, ws}};
  const int64_t *need = sizes[static_cast<int>(role)];
  check_size(what, "first operand", need[0], first.size);
  check_size(what, "second operand", need[1], second.size);
  check_size(what, "out", need[2], out.size);
  return s;
}

// An array a conv row keeps in Compute<T> (a bias, its gradient, the weight gradient): float32
// for 16-bit operands, else their dtype.
void require_compute_dtype(const std::string &what, DType operands, DType got) {
  const bool half = operands == DType::f16 || operands == DType::bf16;
  require_dtype(what.c_str(), got, half ? DType::f32 : operands);
}

template <ConvRole Role>
void conv2d_primitive(const Array &a, const Array &b, Array &out, int64_t n, int64_t height,
                      int64_t width, int64_t c_in, int64_t kh, int64_t kw, int64_t c_out,
                      int64_t stride, int64_t padding) {
  constexpr const char *names[] = {"conv2d", "conv2d_input_grad", "conv2d_weight_grad"};
  const char *what = names[static_cast<int>(Role)];
  const ConvShape s =
      checked_conv(what, Role, a, b, out, n, height, width, c_in, kh, kw, c_out, stride, padding);
  // The weight gradient of 16-bit operands is their float32 sums, unrounded (float32 out):
  // the gradient of float32 master weights under autocast, which a cast back took ~5% of.
  constexpr bool wide = Role == ConvRole::WeightGrad;
  const DType dtype = wide ? common_dtype(a, b) : common_dtype(a, b, out);
  if (wide) require_compute_dtype(std::string(what) + "'s out", dtype, out.dtype);
  GilRelease unlocked(n * s.out_h() * s.out_w() * c_out * kh * kw * std::max<int64_t>(c_in, 1));
  dispatch<MatmulTypes>(dtype, [&](auto tag) {  // 16-bit: sums in float32, as matmul's
    using T = decltype(tag);
    const T *x = a.data<T>(), *y = b.data<T>();
    if constexpr (Role == ConvRole::Forward) conv2d(s, x, y, out.data<T>());
    if constexpr (Role == ConvRole::InputGrad) conv2d_input_grad(s, x, y, out.data<T>());
    if constexpr (wide) conv2d_weight_grad(s, x, y, out.data<Compute<T>>());
  });
}

// conv2d_bias and conv2d_weight_bias_grad: the conv row and its bias (conv.h) in one call,
// where a conv, the bias's cast and a broadcast add (a reduction and a cast back) took three
// from Python: ~20 us each in a ResNet-9 step. 16-bit rows take a float32 bias and d_bias.
void check_bias(const char *what, const Array &rows, const Array &bias, int64_t c_out) {
  check_size(what, "bias", c_out, bias.size);
  require_compute_dtype(std::string(what) + "'s bias", rows.dtype, bias.dtype);
}

void conv2d_bias(const Array &a, const Array &b, const Array &bias, Array &out, int64_t n,
                 int64_t height, int64_t width, int64_t c_in, int64_t kh, int64_t kw, int64_t c_out,
                 int64_t stride, int64_t padding) {
  const ConvShape s = checked_conv("conv2d_bias", ConvRole::Forward, a, b, out, n, height, width,
                                   c_in, kh, kw, c_out, stride, padding);
  check_bias("conv2d_bias", out, bias, c_out);
  conv2d_primitive<ConvRole::Forward>(a, b, out, n, height, width, c_in, kh, kw, c_out, stride,
                                      padding);
  GilRelease unlocked(out.size);
  dispatch<MatmulTypes>(out.dtype, [&](auto tag) {
    using T = decltype(tag);
    add_bias_rows(out.data<T>(), bias.data<Compute<T>>(), n * s.out_h() * s.out_w(), c_out);
  });
}

void conv2d_weight_bias_grad(const Array &a, const Array &b, Array &out, Array &d_bias, int64_t n,
                             int64_t height, int64_t width, int64_t c_in, int64_t kh, int64_t kw,
                             int64_t c_out, int64_t stride, int64_t padding) {
  const ConvShape s = checked_conv("conv2d_weight_bias_grad", ConvRole::WeightGrad, a, b, out, n,
                                   height, width, c_in, kh, kw, c_out, stride, padding);
  check_bias("conv2d_weight_bias_grad", b, d_bias, c_out);
  require_compute_dtype("conv2d_weight_bias_grad's out", common_dtype(a, b), out.dtype);
  conv2d_primitive<ConvRole::WeightGrad>(a, b, out, n, height, width, c_in, kh, kw, c_out, stride,
                                         padding);
  GilRelease unlocked(b.size);
  dispatch<MatmulTypes>(b.dtype, [&](auto tag) {
    using T = decltype(tag);
    bias_gradient(b.data<T>(), d_bias.data<Compute<T>>(), n * s.out_h() * s.out_w(), c_out);
  });
}

// ---- reductions -----------------------------------------------------------------------

// ---- binary ops against a repeated vector -----------------------------------------------
// A CPU-only specialised primitive (NDArray uses it when a backend has it, else compacts the
// broadcast operand): op is the name of a binary primitive without its "ewise_" prefix.
void ewise_broadcast_binary(const std::string &op, const Array &full, const Array &vector,
                            Array &out, int64_t outer, int64_t inner, bool per_column,
                            bool vector_first) {
  auto run = [&](auto op_tag) {
    broadcast_binary<decltype(op_tag), AndHalves<Floats>>(full, vector, out, outer, inner,
                                                          per_column, vector_first);
  };
  if (op == "add") return run(Add{});
  if (op == "sub") return run(Sub{});
  if (op == "mul") return run(Mul{});
  if (op == "div") return run(Div{});
  if (op == "maximum") return run(Maximum{});
  throw nb::value_error(("ewise_broadcast_binary: unknown op '" + op + "'").c_str());
}

// ---- rows by index ---------------------------------------------------------------------
// Indices are an int64 Array of row numbers; NDArray has checked that they are in range and
// that every size suffices (these asserts only document it).

void gather_rows(const Array &a, const Array &indices, Array &out, int64_t n, int64_t row_size) {
  check_size("gather_rows", "indices", n, indices.size);
  check_size("gather_rows", "out", checked_count("gather_rows", {n, row_size}), out.size);
  require_dtype("indices", indices.dtype, DType::i64);
  const DType dtype = common_dtype(a, out);
  if (n == 0 || row_size == 0) return require<AllTypes>(dtype);
  check_row_indices("gather_rows", indices, n, static_cast<int64_t>(a.size) / row_size);
  dispatch<AllTypes>(dtype, [&](auto tag) {
    using T = decltype(tag);
    GilRelease unlocked(n * row_size);
    const T *src = a.data<T>();
    const int64_t *idx = indices.data<int64_t>();
    T *dst = out.data<T>();
    parallel_for(n * row_size, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin / row_size; i * row_size < end; ++i) {
        const int64_t lo = std::max(begin, i * row_size), hi = std::min(end, (i + 1) * row_size);
        const T *row = src + idx[i] * row_size;
        std::memcpy(dst + lo, row + (lo - i * row_size), (hi - lo) * sizeof(T));
      }
    });
  });
}

// Serial in the index order, so repeated indices add up in the same order every time (and
// the same as NumPy's np.add.at); an embedding gradient is a few hundred rows.
void scatter_add_rows(const Array &a, const Array &indices, Array &out, int64_t n,
                      int64_t row_size) {
  check_size("scatter_add_rows", "indices", n, indices.size);
  check_size("scatter_add_rows", "a", checked_count("scatter_add_rows", {n, row_size}), a.size);
  require_dtype("indices", indices.dtype, DType::i64);
  if (row_size > 0)
    check_row_indices("scatter_add_rows", indices, n, static_cast<int64_t>(out.size) / row_size);
  dispatch<Floats>(common_dtype(a, out), [&](auto tag) {
    using T = decltype(tag);
    GilRelease unlocked(n * row_size);
    const T *src = a.data<T>();
    const int64_t *idx = indices.data<int64_t>();
    T *dst = out.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      T *row = dst + idx[i] * row_size;
      const T *add = src + i * row_size;
      for (int64_t j = 0; j < row_size; ++j) row[j] += add[j];
    }
  });
}

void reduce_sum(const Array &a, Array &out, int64_t reduce_size) {
  check_reduce("reduce_sum", a, out, int64_t(out.size), reduce_size);
  GilRelease unlocked(static_cast<int64_t>(out.size) * reduce_size);
  with_typed<AndHalves<SumTypes>>(
      a, out, [&](auto *x, auto *y) { sum_last_axis(x, y, out.size, reduce_size); });
}

void reduce_max(const Array &a, Array &out, int64_t reduce_size) {
  check_reduce("reduce_max", a, out, int64_t(out.size), reduce_size);
  GilRelease unlocked(static_cast<int64_t>(out.size) * reduce_size);
  with_typed<AndHalves<Computed>>(
      a, out, [&](auto *x, auto *y) { max_last_axis(x, y, out.size, reduce_size); });
}

// ---- fused row kernels (cpu/rows.h) ----------------------------------------------------

void softmax_rows(const Array &a, Array &out, int64_t rows, int64_t cols, bool log) {
  if (check_rows("softmax_rows", rows, cols, {&a, &out}) == 0) return;
  GilRelease unlocked(rows * cols);
  with_typed<AndHalves<Floats>>(a, out, [&](auto *x, auto *y) {
    if constexpr (is_half_v<std::remove_pointer_t<decltype(y)>>)
      rows_in_float32<1>({x}, y, rows, cols,
                         [&](float *in, float *o, int64_t n) { softmax_row(in, o, n, log); });
    else
      softmax_each_row(x, y, rows, cols, log);
  });
}

// The class numbers of cross_entropy_rows' labels, checked as primitives.check_row_indices
// checks them (the same messages): whole numbers (with `truncate`, cut toward zero, NaN and
// values past int64 becoming its lowest, as NumPy's cast on x86) in [0, cols).
template <class T>
std::vector<int64_t> class_numbers(const T *labels, int64_t rows, int64_t cols, bool truncate) {
  constexpr T kLimit = T(9223372036854775808.0);  // 2^63, exact in float and double
  std::vector<int64_t> k(rows);
  int64_t lo = std::numeric_limits<int64_t>::max(), hi = std::numeric_limits<int64_t>::min();
  for (int64_t r = 0; r < rows; ++r) {
    const T v = labels[r];
    if (!truncate && !(std::isfinite(v) && v == std::floor(v)))
      throw nb::value_error("row indices must be whole numbers");
    k[r] =
        v >= -kLimit && v < kLimit ? static_cast<int64_t>(v) : std::numeric_limits<int64_t>::min();
    lo = std::min(lo, k[r]);
    hi = std::max(hi, k[r]);
  }
  if (rows && (lo < 0 || hi >= cols))
    throw nb::index_error(("row indices must lie in [0, " + std::to_string(cols) + "), got " +
                           std::to_string(lo) + ".." + std::to_string(hi))
                              .c_str());
  return k;
}

void cross_entropy_rows(const Array &z, const Array &labels, Array &loss, Array &grad, int64_t rows,
                        int64_t cols, bool truncate) {
  check_rows("cross_entropy_rows", rows, cols, {&z, &grad});
  check_size("cross_entropy_rows", "labels", rows, labels.size);
  check_size("cross_entropy_rows", "loss", 1, loss.size);
  dispatch<Floats>(common_dtype(z, labels, loss, grad), [&](auto tag) {
    using T = decltype(tag);
    const std::vector<int64_t> k = class_numbers(labels.data<T>(), rows, cols, truncate);
    GilRelease unlocked(rows * cols);
    loss.data<T>()[0] = cross_entropy_each_row(z.data<T>(), k.data(), grad.data<T>(), rows, cols);
  });
}

void layer_norm_rows(const Array &a, Array &out, int64_t rows, int64_t cols, double eps) {
  if (check_rows("layer_norm_rows", rows, cols, {&a, &out}) == 0) return;
  GilRelease unlocked(rows * cols);
  with_typed<Floats>(a, out, [&](auto *x, auto *y) { layer_norm_each_row(x, y, rows, cols, eps); });
}

// The IndexError of gather_axis and scatter_add_axis: an index found outside [0, n).
[[noreturn]] void throw_out_of_range(const char *op, int64_t bad, int64_t n) {
  throw nb::index_error((std::string(op) + ": index " + std::to_string(bad) +
                         " is out of range for an axis of size " + std::to_string(n))
                            .c_str());
}

void gather_axis(const Array &a, const Array &indices, Array &out, int64_t outer, int64_t n,
                 int64_t inner, int64_t m) {
  check_size("gather", "indices", checked_count("gather", {outer, m, inner}), indices.size);
  check_size("gather", "out", checked_count("gather", {outer, m, inner}), out.size);
  check_size("gather", "a", checked_count("gather", {outer, n, inner}), a.size);
  require_dtype("indices", indices.dtype, DType::i64);
  int64_t bad = 0;
  bool ok = true;
  {
    GilRelease unlocked(outer * m * inner);
    with_typed<AllTypes>(a, out, [&](auto *x, auto *y) {
      ok = gather_middle_axis(x, indices.data<int64_t>(), y, outer, n, inner, m, bad);
    });
  }
  if (!ok) throw_out_of_range("gather", bad, n);
}

void pool2d(const Array &a, Array &out, int64_t planes, int64_t h, int64_t w, const Shape &kernel,
            const Shape &stride, const Shape &padding, const std::string &op) {
  if (kernel.size() != 2 || stride.size() != 2 || padding.size() != 2)
    throw nb::value_error("pool2d: kernel, stride and padding must be pairs");
  if (op != "max" && op != "avg" && op != "argmax")
    throw nb::value_error(("pool2d: op must be max, avg or argmax, got '" + op + "'").c_str());
  const PoolOp kind = op == "max" ? PoolOp::kMax : op == "avg" ? PoolOp::kAvg : PoolOp::kArgmax;
  const Pool2d g{planes, h, w, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1]};
  if (kernel[0] < 1 || kernel[1] < 1 || stride[0] < 1 || stride[1] < 1 || padding[0] < 0 ||
      padding[1] < 0)
    throw nb::value_error("pool2d: kernel and stride must be positive, padding not negative");
  check_size("pool2d", "a", checked_count("pool2d", {planes, h, w}), a.size);
  check_size("pool2d", "out", checked_count("pool2d", {planes, g.ho(), g.wo()}), out.size);
  GilRelease unlocked(planes * h * w);
  with_typed<Floats>(a, out, [&](auto *x, auto *y) { pool2d_planes(x, y, g, kind); });
}

void scatter_add_axis(const Array &a, const Array &indices, Array &out, int64_t outer, int64_t n,
                      int64_t inner, int64_t m) {
  check_size("scatter_add", "indices", checked_count("scatter_add", {outer, m, inner}),
             indices.size);
  check_size("scatter_add", "a", checked_count("scatter_add", {outer, m, inner}), a.size);
  check_size("scatter_add", "out", checked_count("scatter_add", {outer, n, inner}), out.size);
  require_dtype("indices", indices.dtype, DType::i64);
  int64_t bad = 0;
  bool ok = true;
  {
    GilRelease unlocked(outer * m * inner);
    with_typed<Floats>(a, out, [&](auto *x, auto *y) {
      ok = scatter_add_middle_axis(x, indices.data<int64_t>(), y, outer, n, inner, m, bad);
    });
  }
  if (!ok) throw_out_of_range("scatter_add", bad, n);
}

void layer_norm_grad_rows(const Array &a, const Array &g, Array &out, int64_t rows, int64_t cols,
                          double eps) {
  if (check_rows("layer_norm_grad_rows", rows, cols, {&a, &g, &out}) == 0) return;
  const DType dtype = common_dtype(a, g, out);
  GilRelease unlocked(rows * cols);
  dispatch<Floats>(dtype, [&](auto tag) {
    using T = decltype(tag);
    layer_norm_grad_each_row(a.data<T>(), g.data<T>(), out.data<T>(), rows, cols, eps);
  });
}

void softmax_grad_rows(const Array &s, const Array &g, Array &out, int64_t rows, int64_t cols) {
  if (check_rows("softmax_grad_rows", rows, cols, {&s, &g, &out}) == 0) return;
  const DType dtype = common_dtype(s, g, out);
  GilRelease unlocked(rows * cols);
  dispatch<AndHalves<Floats>>(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T *ps = s.data<T>(), *pg = g.data<T>();
    T *po = out.data<T>();
    if constexpr (is_half_v<T>) {
      rows_in_float32<2>({ps, pg}, po, rows, cols, [](float *in, float *o, int64_t n) {
        softmax_grad_row(in, in + n, o, n);
      });
    } else {
      parallel_rows(rows, cols, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r)
          softmax_grad_row(ps + r * cols, pg + r * cols, po + r * cols, cols);
      });
    }
  });
}

// batch * hidden, checked: a ValueError naming `what` for a negative size or one whose arrays
// (5 * batch * hidden elements at most) could not be counted.
int64_t lstm_units(const char *what, int64_t batch, int64_t hidden) {
  int64_t n = 0;
  if (batch < 0 || hidden < 0 || __builtin_mul_overflow(batch, hidden, &n) || n > INT64_MAX / 5)
    throw nb::value_error((std::string(what) + ": batch " + std::to_string(batch) + " and hidden " +
                           std::to_string(hidden) + " are not array sizes")
                              .c_str());
  return n;
}

void lstm_cell(const Array &gates, const Array &c, Array &out, Array &act, int64_t batch,
               int64_t hidden) {
  const int64_t n = lstm_units("lstm_cell", batch, hidden);
  check_size("lstm_cell", "gates", 4 * n, gates.size);
  check_size("lstm_cell", "c", n, c.size);
  check_size("lstm_cell", "out", 2 * n, out.size);
  check_size("lstm_cell", "act", 5 * n, act.size);
  const DType dtype = common_dtype(gates, c, out, act);
  GilRelease unlocked(4 * n);
  dispatch<Floats>(dtype, [&](auto tag) {
    using T = decltype(tag);
    lstm_cell_rows(gates.data<T>(), c.data<T>(), out.data<T>(), act.data<T>(), batch, hidden);
  });
}

void lstm_cell_grad(const Array &dy, const Array &act, const Array &c, Array &d_gates, Array &d_c,
                    int64_t batch, int64_t hidden) {
  const int64_t n = lstm_units("lstm_cell_grad", batch, hidden);
  check_size("lstm_cell_grad", "dy", 2 * n, dy.size);
  check_size("lstm_cell_grad", "act", 5 * n, act.size);
  check_size("lstm_cell_grad", "c", n, c.size);
  check_size("lstm_cell_grad", "d_gates", 4 * n, d_gates.size);
  check_size("lstm_cell_grad", "d_c", n, d_c.size);
  const DType dtype = common_dtype(dy, act, c, d_gates, d_c);
  GilRelease unlocked(4 * n);
  dispatch<Floats>(dtype, [&](auto tag) {
    using T = decltype(tag);
    lstm_cell_grad_rows(dy.data<T>(), act.data<T>(), c.data<T>(), d_gates.data<T>(), d_c.data<T>(),
                        batch, hidden);
  });
}

void batch_norm_rows_primitive(const Array &a, const Array &weight, const Array &bias, Array &out,
                               Array &mean, Array &var, int64_t rows, int64_t cols, double eps) {
  check_size("batch_norm_rows", "a", rows * cols, a.size);
  check_size("batch_norm_rows", "out", rows * cols, out.size);
  for (const Array *v :
       {&weight, &bias, static_cast<const Array *>(&mean), static_cast<const Array *>(&var)})
    check_size("batch_norm_rows", "a per-feature array", cols, v->size);
  // 16-bit a and out: per-feature arrays in float32 (batch_norm.h); else one dtype for all.
  const DType dtype = common_dtype(a, out);
  const bool half = dtype == DType::f16 || dtype == DType::bf16;
  if (!half) common_dtype(a, weight, bias, out, mean, var);
  for (const Array *v :
       {&weight, &bias, static_cast<const Array *>(&mean), static_cast<const Array *>(&var)})
    if (half) require_dtype("batch_norm_rows per-feature array", v->dtype, DType::f32);
  GilRelease unlocked(rows * cols);
  dispatch<AndHalves<Floats>>(dtype, [&](auto tag) {
    using X = decltype(tag);
    using P = std::conditional_t<is_half_v<X>, float, X>;
    batch_norm_rows(a.data<X>(), weight.data<P>(), bias.data<P>(), out.data<X>(), mean.data<P>(),
                    var.data<P>(), rows, cols, eps);
  });
}

void batch_norm_rows_grad_primitive(const Array &dy, const Array &a, const Array &mean,
                                    const Array &inv_std, const Array &weight, Array &dx,
                                    Array &d_weight, Array &d_bias, int64_t rows, int64_t cols) {
  for (const Array *v : {&dy, &a, static_cast<const Array *>(&dx)})
    check_size("batch_norm_rows_grad", "a (rows, cols) array", rows * cols, v->size);
  for (const Array *v : {&mean, &inv_std, &weight, static_cast<const Array *>(&d_weight),
                         static_cast<const Array *>(&d_bias)})
    check_size("batch_norm_rows_grad", "a per-feature array", cols, v->size);
  const DType dtype = common_dtype(dy, a, dx);  // 16-bit: per-feature arrays in float32
  const bool half = dtype == DType::f16 || dtype == DType::bf16;
  if (!half) common_dtype(dy, a, mean, inv_std, weight, dx, d_weight, d_bias);
  for (const Array *v : {&mean, &inv_std, &weight, static_cast<const Array *>(&d_weight),
                         static_cast<const Array *>(&d_bias)})
    if (half) require_dtype("batch_norm_rows_grad per-feature array", v->dtype, DType::f32);
  GilRelease unlocked(rows * cols);
  dispatch<AndHalves<Floats>>(dtype, [&](auto tag) {
    using X = decltype(tag);
    using P = std::conditional_t<is_half_v<X>, float, X>;
    batch_norm_rows_grad(dy.data<X>(), a.data<X>(), mean.data<P>(), inv_std.data<P>(),
                         weight.data<P>(), dx.data<X>(), d_weight.data<P>(), d_bias.data<P>(), rows,
                         cols);
  });
}

// The middle axis of a compact (outer, reduce_size, inner) array.
void check_middle_axis(const Array &a, const Array &out, int64_t outer, int64_t reduce_size,
                       int64_t inner) {
  check_reduce("reduce along an axis", a, out, checked_count("reduce", {outer, inner}),
               reduce_size);
}

void reduce_sum_axis(const Array &a, Array &out, int64_t outer, int64_t reduce_size,
                     int64_t inner) {
  check_middle_axis(a, out, outer, reduce_size, inner);
  GilRelease unlocked(outer * reduce_size * inner);
  with_typed<AndHalves<SumTypes>>(
      a, out, [&](auto *x, auto *y) { sum_middle_axis(x, y, outer, reduce_size, inner); });
}

void reduce_max_axis(const Array &a, Array &out, int64_t outer, int64_t reduce_size,
                     int64_t inner) {
  check_middle_axis(a, out, outer, reduce_size, inner);
  GilRelease unlocked(outer * reduce_size * inner);
  with_typed<AndHalves<Computed>>(
      a, out, [&](auto *x, auto *y) { max_middle_axis(x, y, outer, reduce_size, inner); });
}

// ---- threads ---------------------------------------------------------------------------

// Any Python int: a huge one is a ValueError too, not a signature mismatch.
void set_threads(const nb::int_ &n) {
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(n.ptr(), &overflow);
  if (v == -1 && PyErr_Occurred()) throw nb::python_error();
  if (overflow || v < 1 || v > kMaxThreads)
    throw nb::value_error(("set_num_threads: n must be in [1, " + std::to_string(kMaxThreads) +
                           "], got " + nb::str(n).c_str())
                              .c_str());
  set_num_threads(static_cast<int>(v));
}

// ---- bindings: a DTypeError becomes a TypeError naming the primitive -------------------

// The dtype sets of the elementwise rows of HALF_ROWS: their rows' sets and the 16-bit floats.
using FloatsH = AndHalves<Floats>;
using NumericH = AndHalves<Numeric>;
using ComputedH = AndHalves<Computed>;

template <class F> decltype(auto) as_primitive(const char *name, F &&f) {
  try {
    return f();
  } catch (const DTypeError &e) {
    throw nb::type_error((std::string(name) + ": " + e.what()).c_str());
  }
}

// m.def(name, fn, extra...) for the primitive `name`.
template <class R, class... A, class... Extra>
void def(nb::module_ &m, const char *name, R (*fn)(A...), const Extra &...extra) {
  m.def(
      name,
      [name, fn](A... args) -> R {
        return as_primitive(name, [&]() -> R { return fn(std::forward<A>(args)...); });
      },
      extra...);
}

}  // namespace cpu
}  // namespace needle

// ---- bindings ------------------------------------------------------------------------

NB_MODULE(ndarray_backend_cpu, m) {
  using namespace needle::cpu;
  m.doc() = "needle CPU backend: the primitive table of ndarray_backend_numpy, in C++";
  m.attr("__device_name__") = "cpu";
  m.attr("__tile_size__") = kTile;
  m.attr("DTYPES") = nb::make_tuple("float32", "float64", "int32", "int64", "uint8", "bool",
                                    "float16", "bfloat16");
  // The rows that compute float16 and bfloat16 although their rows in primitives.py do not list
  // them: in float32 lanes, each result the float32 row's rounded once (as astype rounds), so
  // NDArray calls them on 16-bit arrays instead of converting around the float32 row. A row
  // that takes the 16-bit floats names them in its dtype set (AndHalves) and is listed here;
  // tests/test_halves_cpu.py and test_conv_halves_cpu.py check that the two agree.
  m.attr("HALF_ROWS") = nb::make_tuple(
      "ewise_add", "ewise_sub", "ewise_mul", "ewise_div", "ewise_power", "ewise_maximum",
      "ewise_eq", "ewise_ge", "ewise_lt", "ewise_le", "scalar_add", "scalar_sub", "scalar_rsub",
      "scalar_mul", "scalar_div", "scalar_rdiv", "scalar_power", "scalar_maximum", "scalar_eq",
      "scalar_ge", "scalar_lt", "scalar_le", "ewise_axpby", "ewise_broadcast_binary", "ewise_neg",
      "ewise_abs", "ewise_sign", "ewise_relu", "ewise_sigmoid", "ewise_exp", "ewise_log",
      "ewise_tanh", "ewise_erf", "ewise_gelu", "ewise_gelu_grad", "ewise_sqrt", "ewise_sin",
      "ewise_cos", "ewise_rsqrt", "reduce_sum", "reduce_max", "reduce_sum_axis", "reduce_max_axis",
      "softmax_rows", "softmax_grad_rows", "conv2d", "conv2d_input_grad", "conv2d_weight_grad",
      "conv2d_bias", "conv2d_weight_bias_grad", "batch_norm_rows", "batch_norm_rows_grad");

  needle::bind_array<Array, parse_dtype, dtype_name>(
      m, "A flat, 64-byte aligned buffer of `size` elements.");

  // The buffer cache (array.h), outside the primitive table: ndl.cpu().memory_stats().
  m.def(
      "memory_stats",
      [] {
        const BufferCache::Stats s = BufferCache::instance().stats();
        nb::dict d;
        d["current"] = s.current;
        d["peak"] = s.peak;
        d["cached"] = s.cached;
        d["allocations"] = s.allocations;
        d["reused"] = s.reused;
        return d;
      },
      "Bytes in live Arrays (current, peak) and kept for reuse (cached); Array allocations "
      "so far and how many reused a cached buffer.");
  m.def(
      "empty_cache", [] { BufferCache::instance().empty(); },
      "Free the buffers the cache keeps for reuse.");

  def(m, "to_numpy", &to_numpy, "a"_a, "shape"_a, "strides"_a, "offset"_a,
      nb::sig("def to_numpy(a: Array, shape: collections.abc.Sequence[int], "
              "strides: collections.abc.Sequence[int], offset: int) -> NDArray"));
  def(m, "from_numpy", &from_numpy, "a"_a, "out"_a,
      nb::sig("def from_numpy(a: NDArray, out: Array) -> None"));
  def(m, "fill", &fill, "out"_a, "val"_a);

  def(m, "compact", &compact, "a"_a, "out"_a, "shape"_a, "strides"_a, "offset"_a);
  def(m, "ewise_setitem", &ewise_setitem, "a"_a, "out"_a, "shape"_a, "strides"_a, "offset"_a);
  def(m, "scalar_setitem", &scalar_setitem, "size"_a, "val"_a, "out"_a, "shape"_a, "strides"_a,
      "offset"_a);
  def(m, "astype", &astype, "a"_a, "out"_a);

  // The elementwise rows, each with its dtype set (primitives.elementwise_dtypes) and the
  // 16-bit floats (HALF_ROWS).
  def(m, "ewise_add", &ewise_binary<Add, NumericH>, "a"_a, "b"_a, "out"_a);
  def(m, "ewise_sub", &ewise_binary<Sub, NumericH>, "a"_a, "b"_a, "out"_a);
  def(m, "ewise_mul", &ewise_binary<Mul, NumericH>, "a"_a, "b"_a, "out"_a);
  def(m, "ewise_div", &ewise_binary<Div, FloatsH>, "a"_a, "b"_a, "out"_a);
  def(m, "ewise_power", &ewise_binary<Power, FloatsH>, "a"_a, "b"_a, "out"_a);
  def(m, "ewise_maximum", &ewise_binary<Maximum, NumericH>, "a"_a, "b"_a, "out"_a);
  def(m, "ewise_eq", &ewise_compare<Eq, ComputedH>, "a"_a, "b"_a, "out"_a);
  def(m, "ewise_ge", &ewise_compare<Ge, ComputedH>, "a"_a, "b"_a, "out"_a);
  def(m, "ewise_lt", &ewise_compare<Lt, ComputedH>, "a"_a, "b"_a, "out"_a);
  def(m, "ewise_le", &ewise_compare<Le, ComputedH>, "a"_a, "b"_a, "out"_a);

  def(m, "scalar_add", &scalar_binary<Add, NumericH>, "a"_a, "val"_a, "out"_a);
  def(m, "scalar_sub", &scalar_binary<Sub, NumericH>, "a"_a, "val"_a, "out"_a);
  def(m, "scalar_rsub", &scalar_binary<RSub, NumericH>, "a"_a, "val"_a, "out"_a);
  def(m, "scalar_mul", &scalar_binary<Mul, NumericH>, "a"_a, "val"_a, "out"_a);
  def(m, "scalar_div", &scalar_binary<Div, FloatsH>, "a"_a, "val"_a, "out"_a);
  def(m, "scalar_rdiv", &scalar_binary<RDiv, FloatsH>, "a"_a, "val"_a, "out"_a);
  def(m, "scalar_power", &scalar_power<FloatsH>, "a"_a, "val"_a, "out"_a);
  def(m, "scalar_maximum", &scalar_binary<Maximum, NumericH>, "a"_a, "val"_a, "out"_a);
  def(m, "scalar_eq", &scalar_compare<Eq, ComputedH>, "a"_a, "val"_a, "out"_a);
  def(m, "scalar_ge", &scalar_compare<Ge, ComputedH>, "a"_a, "val"_a, "out"_a);
  def(m, "scalar_lt", &scalar_compare<Lt, ComputedH>, "a"_a, "val"_a, "out"_a);
  def(m, "scalar_le", &scalar_compare<Le, ComputedH>, "a"_a, "val"_a, "out"_a);

  def(m, "ewise_axpby", &ewise_axpby<FloatsH>, "a"_a, "b"_a, "alpha"_a, "beta"_a, "out"_a);

  // The unary rows of the primitive table (primitives.py UNARY), one line each.
  // -fno-math-errno makes std::sqrt one instruction per lane.
  const auto unary_table = std::make_tuple(
      UnaryRow{"ewise_neg", Neg{}, NumericH{}}, UnaryRow{"ewise_abs", Abs{}, NumericH{}},
      UnaryRow{"ewise_sign", Sign{}, NumericH{}}, UnaryRow{"ewise_relu", Relu{}, NumericH{}},
      UnaryRow{"ewise_sigmoid", Sigmoid{}, FloatsH{}},
      UnaryRow{"ewise_exp",
               SplitPrecision{[](Vec<float> x) { return vmath::exp(x); },
                              [](double v) { return std::exp(v); }},
               FloatsH{}},
      UnaryRow{"ewise_log",
               SplitPrecision{[](Vec<float> x) { return vmath::log(x); },
                              [](double v) { return std::log(v); }},
               FloatsH{}},
      UnaryRow{"ewise_tanh",
               SplitPrecision{[](Vec<float> x) { return vmath::tanh(x); },
                              [](double v) { return std::tanh(v); }},
               FloatsH{}},
      UnaryRow{"ewise_erf",
               SplitPrecision{[](Vec<float> x) { return vmath::erf(x); },
                              [](double v) { return std::erf(v); }},
               FloatsH{}},
      UnaryRow{"ewise_gelu",
               SplitPrecision{[](Vec<float> x) { return vmath::gelu(x); },
                              [](double v) { return v * 0.5 * (1.0 + std::erf(v * M_SQRT1_2)); }},
               FloatsH{}},
      UnaryRow{"ewise_gelu_grad",
               SplitPrecision{[](Vec<float> x) { return vmath::gelu_grad(x); },
                              [](double v) {
                                return 0.5 * (1.0 + std::erf(v * M_SQRT1_2)) +
                                       v * std::exp(v * v * -0.5) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
                              }},
               FloatsH{}},
      UnaryRow{"ewise_sqrt", Lanewise{[](auto v) { return std::sqrt(v); }}, FloatsH{}},
      UnaryRow{"ewise_sin", Lanewise{[](auto v) { return std::sin(v); }}, FloatsH{}},
      UnaryRow{"ewise_cos", Lanewise{[](auto v) { return std::cos(v); }}, FloatsH{}},
      UnaryRow{"ewise_rsqrt", Lanewise{[](auto v) { return decltype(v)(1) / std::sqrt(v); }},
               FloatsH{}});
  std::apply(
      [&](auto... row) {
        (m.def(
             row.name,
             [name = row.name, op = row.op, dtypes = row.dtypes](const Array &a, Array &out) {
               as_primitive(name, [&] { ewise_unary<decltype(dtypes)>(a, out, op); });
             },
             "a"_a, "out"_a),
         ...);
      },
      unary_table);

  def(m, "matmul", &matmul, "a"_a, "b"_a, "out"_a, "m"_a, "n"_a, "p"_a);
  def(m, "batched_matmul", &batched_matmul, "a"_a, "b"_a, "out"_a, "batch"_a, "m"_a, "n"_a, "p"_a);
  def(m, "matmul_tiled", &matmul_tiled, "a"_a, "b"_a, "out"_a, "m"_a, "n"_a, "p"_a);

  def(m, "matmul_strided", &matmul_strided<false>, "a"_a, "b"_a, "out"_a, "batch"_a, "m"_a, "n"_a,
      "p"_a, "a_offset"_a, "a_strides"_a, "b_offset"_a, "b_strides"_a);
  def(m, "matmul_strided_wide", &matmul_strided<true>, "a"_a, "b"_a, "out"_a, "batch"_a, "m"_a,
      "n"_a, "p"_a, "a_offset"_a, "a_strides"_a, "b_offset"_a, "b_strides"_a);

  for (auto [name, fn] : {std::pair{"conv2d", &conv2d_primitive<ConvRole::Forward>},
                          std::pair{"conv2d_input_grad", &conv2d_primitive<ConvRole::InputGrad>},
                          std::pair{"conv2d_weight_grad", &conv2d_primitive<ConvRole::WeightGrad>}})
    def(m, name, fn, "a"_a, "b"_a, "out"_a, "n"_a, "height"_a, "width"_a, "c_in"_a, "kh"_a, "kw"_a,
        "c_out"_a, "stride"_a, "padding"_a);

  def(m, "conv2d_bias", &conv2d_bias, "a"_a, "b"_a, "bias"_a, "out"_a, "n"_a, "height"_a, "width"_a,
      "c_in"_a, "kh"_a, "kw"_a, "c_out"_a, "stride"_a, "padding"_a);
  def(m, "conv2d_weight_bias_grad", &conv2d_weight_bias_grad, "a"_a, "b"_a, "out"_a, "d_bias"_a,
      "n"_a, "height"_a, "width"_a, "c_in"_a, "kh"_a, "kw"_a, "c_out"_a, "stride"_a, "padding"_a);

  def(m, "ewise_broadcast_binary", &ewise_broadcast_binary, "op"_a, "full"_a, "vector"_a, "out"_a,
      "outer"_a, "inner"_a, "per_column"_a, "vector_first"_a);
  def(m, "gather_rows", &gather_rows, "a"_a, "indices"_a, "out"_a, "n"_a, "row_size"_a);
  def(m, "scatter_add_rows", &scatter_add_rows, "a"_a, "indices"_a, "out"_a, "n"_a, "row_size"_a);

  def(m, "softmax_rows", &softmax_rows, "a"_a, "out"_a, "rows"_a, "cols"_a, "log"_a);
  def(m, "cross_entropy_rows", &cross_entropy_rows, "z"_a, "labels"_a, "loss"_a, "grad"_a, "rows"_a,
      "cols"_a, "truncate"_a);
  def(m, "layer_norm_rows", &layer_norm_rows, "a"_a, "out"_a, "rows"_a, "cols"_a, "eps"_a);
  def(m, "gather_axis", &gather_axis, "a"_a, "indices"_a, "out"_a, "outer"_a, "n"_a, "inner"_a,
      "m"_a);
  def(m, "pool2d", &pool2d, "a"_a, "out"_a, "planes"_a, "h"_a, "w"_a, "kernel"_a, "stride"_a,
      "padding"_a, "op"_a);
  def(m, "scatter_add_axis", &scatter_add_axis, "a"_a, "indices"_a, "out"_a, "outer"_a, "n"_a,
      "inner"_a, "m"_a);
  def(m, "softmax_grad_rows", &softmax_grad_rows, "s"_a, "g"_a, "out"_a, "rows"_a, "cols"_a);
  def(m, "layer_norm_grad_rows", &layer_norm_grad_rows, "a"_a, "g"_a, "out"_a, "rows"_a, "cols"_a,
      "eps"_a);
  def(m, "lstm_cell", &lstm_cell, "gates"_a, "c"_a, "out"_a, "act"_a, "batch"_a, "hidden"_a);
  def(m, "lstm_cell_grad", &lstm_cell_grad, "dy"_a, "act"_a, "c"_a, "d_gates"_a, "d_c"_a, "batch"_a,
      "hidden"_a);
  def(m, "batch_norm_rows", &batch_norm_rows_primitive, "a"_a, "weight"_a, "bias"_a, "out"_a,
      "mean"_a, "var"_a, "rows"_a, "cols"_a, "eps"_a);
  def(m, "batch_norm_rows_grad", &batch_norm_rows_grad_primitive, "dy"_a, "a"_a, "mean"_a,
      "inv_std"_a, "weight"_a, "dx"_a, "d_weight"_a, "d_bias"_a, "rows"_a, "cols"_a);
  def(m, "reduce_sum", &reduce_sum, "a"_a, "out"_a, "reduce_size"_a);
  def(m, "reduce_max", &reduce_max, "a"_a, "out"_a, "reduce_size"_a);
  def(m, "reduce_sum_axis", &reduce_sum_axis, "a"_a, "out"_a, "outer"_a, "reduce_size"_a,
      "inner"_a);
  def(m, "reduce_max_axis", &reduce_max_axis, "a"_a, "out"_a, "outer"_a, "reduce_size"_a,
      "inner"_a);

  m.def("set_num_threads", &set_threads, "n"_a,
        "Use n threads (1 <= n <= 256) for large kernels (matmul, elementwise, reductions).");
  m.def("get_num_threads", &num_threads, "The number of threads large kernels use.");
  m.attr("__gemm_isa__") = gemm_isa();
  m.attr("__gemm_bf16__") = gemm_bf16_kernel();
  nb::dict blocking;
  auto describe = [](GemmBlocking b) {
    nb::dict d;
    d["MR"] = b.mr, d["NR"] = b.nr, d["KC"] = b.kc, d["NC"] = b.nc, d["MC"] = b.mc;
    return d;
  };
  blocking["float32"] = describe(gemm_blocking<float>());
  blocking["float64"] = describe(gemm_blocking<double>());
  if (std::string(gemm_bf16_kernel()) == "avx512_bf16")
    blocking["bfloat16"] = describe(gemm_blocking<BFloat16>());
  m.attr("__gemm_blocking__") = blocking;
  if (num_threads_env_invalid()) {
    // As OpenMP runtimes do with a bad OMP_NUM_THREADS: say so, and use the default.
    if (PyErr_WarnEx(PyExc_RuntimeWarning,
                     "NEEDLE_NUM_THREADS is not a positive integer; using the number of cores",
                     1) < 0)
      throw nb::python_error();
  }
  if (num_threads_env_clamped()) {
    const std::string msg = "NEEDLE_NUM_THREADS is above the maximum; using " +
                            std::to_string(kMaxThreads) + " threads";
    if (PyErr_WarnEx(PyExc_RuntimeWarning, msg.c_str(), 1) < 0) throw nb::python_error();
  }
  num_threads();  // read NEEDLE_NUM_THREADS now, at import

  m.def("synchronize", [] {}, "Nothing to wait for: CPU kernels are synchronous.");
}
