// The host table of host_table.h. Compiled by nvcc into the CUDA module (CMakeLists.txt) and
// by g++ into the tests' CUDA emulation; it reaches the GPU only through kernels.h and
// runtime.h.

#include "host_table.h"

#include <limits>

#include "../common/view_check.h"
#include "runtime.h"

namespace needle {
namespace cuda {

const std::vector<std::string>& dtype_names() {
  static const std::vector<std::string> names = {"float32", "float64"};
  return names;
}

const char* dtype_name(DType dt) { return dt == DType::f32 ? "float32" : "float64"; }

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::f32;
  if (name == "float64") return DType::f64;
  throw std::invalid_argument("unsupported dtype '" + name + "' (expected float32 or float64)");
}

Array::Array(size_t size, DType dtype) : size(size), dtype(dtype) {
  if (size > std::numeric_limits<size_t>::max() / 16) {
    throw OutOfMemory("CUDA out of memory: " + std::to_string(size) + " elements");
  }
  ptr = device_alloc(size * itemsize(dtype));
}

Array::~Array() { device_free(ptr); }

namespace {

// Python guarantees one dtype per call; a mismatch would reinterpret memory silently.
template <class... Rest> DType common_dtype(const Array& first, const Rest&... rest) {
  if (((rest.dtype != first.dtype) || ...)) {
    throw TypeError("all arrays of a primitive call must share one dtype");
  }
  return first.dtype;
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

void fill(Array& out, double val) { cuda::fill(out.dtype, out.ptr, out.size, val); }

// ---- layout ------------------------------------------------------------------------------

void compact(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset) {
  check_size("compact", "out", check_view("compact", shape, strides, offset, a.size), out.size);
  cuda::compact(common_dtype(a, out), a.ptr, out.ptr, shape, strides, offset);
}

void ewise_setitem(const Array& a, Array& out, const Shape& shape, const Shape& strides,
                   int64_t offset) {
  check_size("ewise_setitem", "a", check_view("ewise_setitem", shape, strides, offset, out.size),
             a.size);
  cuda::ewise_setitem(common_dtype(a, out), a.ptr, out.ptr, shape, strides, offset);
}

void scalar_setitem(int64_t size, double val, Array& out, const Shape& shape, const Shape& strides,
                    int64_t offset) {
  if (check_view("scalar_setitem", shape, strides, offset, out.size) != size) {
    throw std::invalid_argument("scalar_setitem: size is not the view's");
  }
  cuda::scalar_setitem(out.dtype, val, out.ptr, shape, strides, offset);
}

// ---- elementwise -------------------------------------------------------------------------

void unary(const UnaryKernel& op, const Array& a, Array& out) {
  op.run(common_dtype(a, out), a.ptr, out.ptr, static_cast<int64_t>(out.size));
}

void binary(const BinaryKernel& op, const Array& a, const Array& b, Array& out) {
  op.run(common_dtype(a, b, out), a.ptr, b.ptr, out.ptr, static_cast<int64_t>(out.size));
}

void scalar(const ScalarKernel& op, const Array& a, double val, Array& out) {
  op.run(common_dtype(a, out), a.ptr, val, out.ptr, static_cast<int64_t>(out.size));
}

// `out` may be `a` or `b` itself (an in-place update).
void ewise_axpby(const Array& a, const Array& b, double alpha, double beta, Array& out) {
  cuda::ewise_axpby(common_dtype(a, b, out), a.ptr, b.ptr, alpha, beta, out.ptr,
                    static_cast<int64_t>(out.size));
}

// ---- linear algebra: every product is a strided batched one ------------------------------

void matmul_strided(const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n,
                    int64_t p, int64_t a_offset, const Shape& a_strides, int64_t b_offset,
                    const Shape& b_strides) {
  if (a_strides.size() != 3 || b_strides.size() != 3) {
    throw std::invalid_argument("matmul_strided: strides must be (batch, row, col)");
  }
  check_view("matmul_strided (a)", {batch, m, n}, a_strides, a_offset, a.size);
  check_view("matmul_strided (b)", {batch, n, p}, b_strides, b_offset, b.size);
  check_view("matmul_strided", {batch, m, p}, {m * p, p, 1}, 0, out.size);
  cuda::matmul(common_dtype(a, b, out), {a.ptr, a_offset, a_strides[0], a_strides[1], a_strides[2]},
               {b.ptr, b_offset, b_strides[0], b_strides[1], b_strides[2]}, out.ptr, batch, m, n,
               p);
}

void matmul(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p) {
  matmul_strided(a, b, out, 1, m, n, p, 0, {0, n, 1}, 0, {0, p, 1});
}

void batched_matmul(const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n,
                    int64_t p) {
  matmul_strided(a, b, out, batch, m, n, p, 0, {m * n, n, 1}, 0, {n * p, p, 1});
}

// ---- reductions --------------------------------------------------------------------------

template <ReduceOp op> void reduce_rows(const Array& a, Array& out, int64_t reduce_size) {
  reduce_last(op, common_dtype(a, out), a.ptr, out.ptr, static_cast<int64_t>(out.size),
              reduce_size);
}

template <ReduceOp op>
void reduce_axis(const Array& a, Array& out, int64_t outer, int64_t reduce_size, int64_t inner) {
  reduce_middle(op, common_dtype(a, out), a.ptr, out.ptr, outer, reduce_size, inner);
}

template void reduce_rows<ReduceOp::sum>(const Array&, Array&, int64_t);
template void reduce_rows<ReduceOp::max>(const Array&, Array&, int64_t);
template void reduce_axis<ReduceOp::sum>(const Array&, Array&, int64_t, int64_t, int64_t);
template void reduce_axis<ReduceOp::max>(const Array&, Array&, int64_t, int64_t, int64_t);

// ---- rows by index -----------------------------------------------------------------------

void gather_rows(const Array& a, const Array& indices, Array& out, int64_t n, int64_t row_size) {
  cuda::gather_rows(common_dtype(a, indices, out), a.ptr, indices.ptr, out.ptr, n, row_size);
}

void scatter_add_rows(const Array& a, const Array& indices, Array& out, int64_t n,
                      int64_t row_size) {
  cuda::scatter_add_rows(common_dtype(a, indices, out), a.ptr, indices.ptr, out.ptr, n, row_size);
}

void synchronize() { cuda::synchronize(); }

}  // namespace table
}  // namespace cuda
}  // namespace needle
