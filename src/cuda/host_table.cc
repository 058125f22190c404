// The host table of host_table.h. Compiled by nvcc into the CUDA module (CMakeLists.txt) and
// by g++ into the tests' CUDA emulation; it reaches the GPU only through kernels.h and
// runtime.h.

#include "host_table.h"

#include <initializer_list>
#include <limits>

#include "../common/view_check.h"
#include "runtime.h"

namespace needle {
namespace cuda {

const std::vector<std::string>& dtype_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> all;
    for (int d = 0; d < kDTypes; ++d) all.push_back(dtype_name(static_cast<DType>(d)));
    return all;
  }();
  return names;
}

DType parse_dtype(const std::string& name) {
  for (int d = 0; d < kDTypes; ++d) {
    if (name == dtype_names()[d]) return static_cast<DType>(d);
  }
  std::string expected;
  for (const std::string& known : dtype_names()) expected += (expected.empty() ? "" : ", ") + known;
  throw std::invalid_argument("unsupported dtype '" + name + "' (expected one of " + expected +
                              ")");
}

Array::Array(size_t size, DType dtype) : size(size), dtype(dtype) {
  if (size > std::numeric_limits<size_t>::max() / 16) {
    throw OutOfMemory("CUDA out of memory: " + std::to_string(size) + " elements");
  }
  ptr = device_alloc(size * itemsize(dtype));
}

Array::~Array() {
  if (!owner) device_free(ptr);
}

namespace {

// The dtypes the primitives take, as their rows of primitives.py do.
constexpr DTypeSet kAll = dtype_set(AllTypes());
constexpr DTypeSet kComputed = dtype_set(Computed());
constexpr DTypeSet kFloats = dtype_set(Floats());
constexpr DTypeSet kMatmul = dtype_set(MatmulTypes());
constexpr DTypeSet kSums = dtype_set(SumTypes());

// The dtype of a call of primitive `what`, which takes the dtypes `set`: the Arrays' one
// dtype (NDArray guarantees one per call; a mismatch would reinterpret memory silently),
// and one of the set (TypeError naming the primitive and the dtype otherwise).
template <class... Rest>
DType call_dtype(const char* what, DTypeSet set, const Array& first, const Rest&... rest) {
  if (((rest.dtype != first.dtype) || ...)) {
    throw TypeError(std::string(what) + ": all arrays of a primitive call must share one dtype");
  }
  if (!set.has(first.dtype)) {
    std::string takes;
    for (int d = 0; d < kDTypes; ++d) {
      if (set.has(static_cast<DType>(d))) {
        takes += std::string(takes.empty() ? "" : ", ") + dtype_name(static_cast<DType>(d));
      }
    }
    throw TypeError(std::string(what) + " does not take dtype " + dtype_name(first.dtype) +
                    " (it takes " + takes + ")");
  }
  return first.dtype;
}

// An Array that must hold `dtype` whatever the call's (a comparison's out, row indices).
void require_dtype(const char* what, const char* name, const Array& array, DType dtype) {
  if (array.dtype != dtype) {
    throw TypeError(std::string(what) + ": " + name + " must be a " + dtype_name(dtype) +
                    " Array, not " + dtype_name(array.dtype));
  }
}

// A view's shape and strides pair up axis by axis, and every element it reaches lies in a
// buffer of `buffer` elements (common/view_check.h; std::invalid_argument, ValueError,
// otherwise). Returns the view's size.
int64_t check_view(const char* what, const Shape& shape, const Shape& strides, int64_t offset,
                   size_t buffer) {
  const ViewCheck r = check_view_bounds(shape, strides, offset, buffer);
  if (!r.problem.empty()) throw std::invalid_argument(std::string(what) + ": " + r.problem);
  return r.size;
}

void check_size(const char* what, const char* name, int64_t needed, size_t size) {
  const std::string problem = size_problem(name, needed, size);
  if (!problem.empty()) throw std::invalid_argument(std::string(what) + ": " + problem);
}

// The product of the sizes a primitive is given, checked: a negative size or an overflow is a
// ValueError naming the primitive (the kernels trust what this returns).
int64_t checked_count(const char* what, std::initializer_list<int64_t> sizes) {
  int64_t n = 1;
  for (int64_t d : sizes)
    if (d < 0 || __builtin_mul_overflow(n, d, &n))
      throw std::invalid_argument(std::string(what) +
                                  ": sizes must be whole numbers whose "
                                  "product counts elements");
  return n;
}

// Operands that an elementwise kernel reads for each of out's elements.
void check_operands(const char* what, const Array& out,
                    std::initializer_list<const Array*> operands) {
  for (const Array* a : operands) check_size(what, "an operand", int64_t(out.size), a->size);
}

}  // namespace

namespace table {

// ---- memory ------------------------------------------------------------------------------

void to_numpy(const Array& a, const Shape& shape, const Shape& strides, int64_t offset,
              const HostArray& out) {
  check_view("to_numpy", shape, strides, offset, a.size);
  if (out.dtype != a.dtype) throw TypeError("to_numpy: the host buffer's dtype is not the Array's");
  const int64_t n = view_size(shape);
  if (out.size != n)
    throw std::invalid_argument("to_numpy: the host buffer is not the view's size");
  const size_t bytes = itemsize(a.dtype) * n;
  if (bytes == 0) return;
  if (is_contiguous(shape, strides)) {
    copy_device_to_host(out.data, static_cast<const char*>(a.ptr) + offset * itemsize(a.dtype),
                        bytes);
  } else {  // gather on the device, then one transfer
    DeviceBuffer packed(bytes);
    cuda::compact(a.dtype, a.ptr, packed.get<void>(), shape, strides, offset);
    copy_device_to_host(out.data, packed.get<void>(), bytes);
  }
}

void from_numpy(const HostArray& a, Array& out) {
  if (a.dtype != out.dtype) {
    throw TypeError(std::string("from_numpy: source dtype does not match Array dtype ") +
                    dtype_name(out.dtype));
  }
  if (a.size < 0 || static_cast<size_t>(a.size) != out.size) {
    throw std::invalid_argument("from_numpy: source has " + std::to_string(a.size) +
                                " elements, Array has " + std::to_string(out.size));
  }
  copy_host_to_device(out.ptr, a.data, out.size * itemsize(out.dtype));
}

void fill(Array& out, double val) {
  cuda::fill(call_dtype("fill", kAll, out), out.ptr, out.size, val);
}

// ---- layout ------------------------------------------------------------------------------

void compact(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset) {
  check_size("compact", "out", check_view("compact", shape, strides, offset, a.size), out.size);
  cuda::compact(call_dtype("compact", kAll, a, out), a.ptr, out.ptr, shape, strides, offset);
}

void ewise_setitem(const Array& a, Array& out, const Shape& shape, const Shape& strides,
                   int64_t offset) {
  check_size("ewise_setitem", "a", check_view("ewise_setitem", shape, strides, offset, out.size),
             a.size);
  cuda::ewise_setitem(call_dtype("ewise_setitem", kAll, a, out), a.ptr, out.ptr, shape, strides,
                      offset);
}

void scalar_setitem(int64_t size, double val, Array& out, const Shape& shape, const Shape& strides,
                    int64_t offset) {
  if (check_view("scalar_setitem", shape, strides, offset, out.size) != size) {
    throw std::invalid_argument("scalar_setitem: size is not the view's");
  }
  cuda::scalar_setitem(call_dtype("scalar_setitem", kAll, out), val, out.ptr, shape, strides,
                       offset);
}

// ---- elementwise -------------------------------------------------------------------------

void unary(const UnaryKernel& op, const Array& a, Array& out) {
  check_operands(op.name, out, {&a});
  op.run(call_dtype(op.name, op.dtypes, a, out), a.ptr, out.ptr, static_cast<int64_t>(out.size));
}

// A comparison's out is bool whatever its inputs' dtype; any other row's is theirs.
void binary(const BinaryKernel& op, const Array& a, const Array& b, Array& out) {
  check_operands(op.name, out, {&a, &b});
  DType dt;
  if (op.bool_out) {
    dt = call_dtype(op.name, op.dtypes, a, b);
    require_dtype(op.name, "out", out, DType::b8);
  } else {
    dt = call_dtype(op.name, op.dtypes, a, b, out);
  }
  op.run(dt, a.ptr, b.ptr, out.ptr, static_cast<int64_t>(out.size));
}

void scalar(const ScalarKernel& op, const Array& a, double val, Array& out) {
  check_operands(op.name, out, {&a});
  DType dt;
  if (op.bool_out) {
    dt = call_dtype(op.name, op.dtypes, a);
    require_dtype(op.name, "out", out, DType::b8);
  } else {
    dt = call_dtype(op.name, op.dtypes, a, out);
  }
  op.run(dt, a.ptr, val, out.ptr, static_cast<int64_t>(out.size));
}

// Any dtype to any other: out's dtype is the target (the row's out_dtype is "any").
void astype(const Array& a, Array& out) {
  check_operands("astype", out, {&a});
  cuda::astype(call_dtype("astype", kAll, a), call_dtype("astype", kAll, out), a.ptr, out.ptr,
               static_cast<int64_t>(out.size));
}

// `out` may be `a` or `b` itself (an in-place update).
void ewise_axpby(const Array& a, const Array& b, double alpha, double beta, Array& out) {
  check_operands("ewise_axpby", out, {&a, &b});
  cuda::ewise_axpby(call_dtype("ewise_axpby", kFloats, a, b, out), a.ptr, b.ptr, alpha, beta,
                    out.ptr, static_cast<int64_t>(out.size));
}

// ---- linear algebra: every product is a strided batched one ------------------------------

namespace {

// Every product is matmul_strided's; `what` is the primitive called.
void strided_product(const char* what, const Array& a, const Array& b, Array& out, int64_t batch,
                     int64_t m, int64_t n, int64_t p, int64_t a_offset, const Shape& a_strides,
                     int64_t b_offset, const Shape& b_strides) {
  const DType dt = call_dtype(what, kMatmul, a, b, out);
  if (a_strides.size() != 3 || b_strides.size() != 3) {
    throw std::invalid_argument("matmul_strided: strides must be (batch, row, col)");
  }
  check_view("matmul_strided (a)", {batch, m, n}, a_strides, a_offset, a.size);
  check_view("matmul_strided (b)", {batch, n, p}, b_strides, b_offset, b.size);
  check_view("matmul_strided", {batch, m, p}, {m * p, p, 1}, 0, out.size);
  cuda::matmul(dt, {a.ptr, a_offset, a_strides[0], a_strides[1], a_strides[2]},
               {b.ptr, b_offset, b_strides[0], b_strides[1], b_strides[2]}, out.ptr, batch, m, n,
               p);
}

}  // namespace

void matmul_strided(const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n,
                    int64_t p, int64_t a_offset, const Shape& a_strides, int64_t b_offset,
                    const Shape& b_strides) {
  strided_product("matmul_strided", a, b, out, batch, m, n, p, a_offset, a_strides, b_offset,
                  b_strides);
}

void matmul(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p) {
  strided_product("matmul", a, b, out, 1, m, n, p, 0, {0, n, 1}, 0, {0, p, 1});
}

void batched_matmul(const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n,
                    int64_t p) {
  strided_product("batched_matmul", a, b, out, batch, m, n, p, 0, {m * n, n, 1}, 0, {n * p, p, 1});
}

// ---- reductions --------------------------------------------------------------------------

// Sums take float32, float64 and int64 (NDArray sums other integers and bool as int64), max
// every dtype but the 16-bit floats (NDArray computes those in float32).
template <ReduceOp op> void reduce_rows(const Array& a, Array& out, int64_t reduce_size) {
  const char* what = op == ReduceOp::sum ? "reduce_sum" : "reduce_max";
  const DType dt =
      op == ReduceOp::sum ? call_dtype(what, kSums, a, out) : call_dtype(what, kComputed, a, out);
  if (reduce_size < 1) throw std::invalid_argument(std::string(what) + ": reduce_size < 1");
  check_size(what, "a", checked_count(what, {int64_t(out.size), reduce_size}), a.size);
  reduce_last(op, dt, a.ptr, out.ptr, static_cast<int64_t>(out.size), reduce_size);
}

template <ReduceOp op>
void reduce_axis(const Array& a, Array& out, int64_t outer, int64_t reduce_size, int64_t inner) {
  const char* what = op == ReduceOp::sum ? "reduce_sum_axis" : "reduce_max_axis";
  const DType dt =
      op == ReduceOp::sum ? call_dtype(what, kSums, a, out) : call_dtype(what, kComputed, a, out);
  if (reduce_size < 1) throw std::invalid_argument(std::string(what) + ": reduce_size < 1");
  check_size(what, "out", checked_count(what, {outer, inner}), out.size);
  check_size(what, "a", checked_count(what, {outer, reduce_size, inner}), a.size);
  reduce_middle(op, dt, a.ptr, out.ptr, outer, reduce_size, inner);
}

template void reduce_rows<ReduceOp::sum>(const Array&, Array&, int64_t);
template void reduce_rows<ReduceOp::max>(const Array&, Array&, int64_t);
template void reduce_axis<ReduceOp::sum>(const Array&, Array&, int64_t, int64_t, int64_t);
template void reduce_axis<ReduceOp::max>(const Array&, Array&, int64_t, int64_t, int64_t);

// ---- rows by index -----------------------------------------------------------------------

// indices: int64 row numbers whatever a's dtype.
void gather_rows(const Array& a, const Array& indices, Array& out, int64_t n, int64_t row_size) {
  require_dtype("gather_rows", "indices", indices, DType::i64);
  check_size("gather_rows", "indices", n, indices.size);
  check_size("gather_rows", "out", checked_count("gather_rows", {n, row_size}), out.size);
  cuda::gather_rows(call_dtype("gather_rows", kAll, a, out), a.ptr, indices.ptr, out.ptr, n,
                    row_size);
}

void scatter_add_rows(const Array& a, const Array& indices, Array& out, int64_t n,
                      int64_t row_size) {
  require_dtype("scatter_add_rows", "indices", indices, DType::i64);
  check_size("scatter_add_rows", "indices", n, indices.size);
  check_size("scatter_add_rows", "a", checked_count("scatter_add_rows", {n, row_size}), a.size);
  cuda::scatter_add_rows(call_dtype("scatter_add_rows", kFloats, a, out), a.ptr, indices.ptr,
                         out.ptr, n, row_size);
}

void synchronize() { cuda::synchronize(); }

}  // namespace table
}  // namespace cuda
}  // namespace needle
