// The CUDA module's primitive table on the host: Arrays, the checks no kernel can make
// (dtypes, argument shapes), and every primitive of python/needle/backend_ndarray/primitives.py
// that the CUDA module implements, as a C++ function over Arrays that queues the kernels of
// kernels.h.
//
// Plain C++ with no Python and no CUDA types: src/ndarray_backend_cuda.cu binds it to Python
// (nanobind), and the tests' CUDA emulation (tests/cuda_emulation) compiles this same code
// with g++ over the same kernels and calls it through a C interface, so what the tests run
// without a GPU is the host code that ships. Errors are C++ exceptions that both translate:
// std::invalid_argument (ValueError), TypeError, and runtime.h's CudaError and OutOfMemory.

#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels.h"

namespace needle {
namespace cuda {

// The dtypes an Array holds (the module's DTYPES: all eight of the table), by name;
// kernels.h's dtype_name is the other way, and its TypeError Python's TypeError.
const std::vector<std::string>& dtype_names();
DType parse_dtype(const std::string& name);  // std::invalid_argument for any other name

// __tile_size__: the tile of matmul_tiled's tile-major operands, which the primitive table's
// fallback implements over compact and matmul.
constexpr int kTileSize = 8;

// A flat device buffer of `size` elements; freed (stream-ordered) when the Array dies.
struct Array {
  Array(size_t size, DType dtype);
  // Another library's device memory (from_dlpack): `owner` keeps it alive; never freed here.
  Array(void* foreign, size_t size, DType dtype, std::shared_ptr<void> owner)
      : size(size), dtype(dtype), ptr(foreign), owner(std::move(owner)) {}
  ~Array();
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;

  size_t size;
  DType dtype;
  void* ptr = nullptr;
  std::shared_ptr<void> owner;  // set for foreign memory
};

// A C-contiguous host buffer: NumPy's data on its way in (from_numpy) or out (to_numpy).
// `dtype` is empty for a dtype no Array holds.
struct HostArray {
  void* data;
  int64_t size;
  std::optional<DType> dtype;
};

namespace table {

// The two primitives that cross to the host. to_numpy writes the view of `a` into `out` (of
// the view's size and a's dtype), gathering it on the device first unless it is one run.
void to_numpy(const Array& a, const Shape& shape, const Shape& strides, int64_t offset,
              const HostArray& out);
void from_numpy(const HostArray& a, Array& out);

void fill(Array& out, double val);
void compact(const Array& a, Array& out, const Shape& shape, const Shape& strides, int64_t offset);
void ewise_setitem(const Array& a, Array& out, const Shape& shape, const Shape& strides,
                   int64_t offset);
void scalar_setitem(int64_t size, double val, Array& out, const Shape& shape, const Shape& strides,
                    int64_t offset);
void unary(const UnaryKernel& op, const Array& a, Array& out);
void binary(const BinaryKernel& op, const Array& a, const Array& b, Array& out);
void scalar(const ScalarKernel& op, const Array& a, double val, Array& out);
void astype(const Array& a, Array& out);
void ewise_axpby(const Array& a, const Array& b, double alpha, double beta, Array& out);
void matmul(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p);
void batched_matmul(const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n,
                    int64_t p);
void matmul_strided(const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n,
                    int64_t p, int64_t a_offset, const Shape& a_strides, int64_t b_offset,
                    const Shape& b_strides);
// reduce_sum and reduce_max (over the last axis), reduce_sum_axis and reduce_max_axis.
template <ReduceOp op> void reduce_rows(const Array& a, Array& out, int64_t reduce_size);
template <ReduceOp op>
void reduce_axis(const Array& a, Array& out, int64_t outer, int64_t reduce_size, int64_t inner);
void gather_rows(const Array& a, const Array& indices, Array& out, int64_t n, int64_t row_size);
void scatter_add_rows(const Array& a, const Array& indices, Array& out, int64_t n,
                      int64_t row_size);
void synchronize();

// Every primitive above but the two that cross to the host, as def(name, function,
// parameter names...): the names and parameters of primitives.py, one call a primitive
// (the elementwise families one call a row of kernels.h's tables). The Python bindings and
// the emulation's C interface both define their functions from this one list.
template <class Def> void define(Def&& def) {
  def("fill", &fill, "out", "val");
  def("compact", &compact, "a", "out", "shape", "strides", "offset");
  def("ewise_setitem", &ewise_setitem, "a", "out", "shape", "strides", "offset");
  def("scalar_setitem", &scalar_setitem, "size", "val", "out", "shape", "strides", "offset");
  for (const BinaryKernel& op : binary_kernels()) {
    def(
        op.name, [&op](const Array& a, const Array& b, Array& out) { binary(op, a, b, out); }, "a",
        "b", "out");
  }
  for (const ScalarKernel& op : scalar_kernels()) {
    def(
        op.name, [&op](const Array& a, double val, Array& out) { scalar(op, a, val, out); }, "a",
        "val", "out");
  }
  for (const UnaryKernel& op : unary_kernels()) {
    def(op.name, [&op](const Array& a, Array& out) { unary(op, a, out); }, "a", "out");
  }
  def("astype", &astype, "a", "out");
  def("ewise_axpby", &ewise_axpby, "a", "b", "alpha", "beta", "out");
  def("matmul", &matmul, "a", "b", "out", "m", "n", "p");
  def("batched_matmul", &batched_matmul, "a", "b", "out", "batch", "m", "n", "p");
  def("matmul_strided", &matmul_strided, "a", "b", "out", "batch", "m", "n", "p", "a_offset",
      "a_strides", "b_offset", "b_strides");
  def("reduce_sum", &reduce_rows<ReduceOp::sum>, "a", "out", "reduce_size");
  def("reduce_max", &reduce_rows<ReduceOp::max>, "a", "out", "reduce_size");
  def("reduce_sum_axis", &reduce_axis<ReduceOp::sum>, "a", "out", "outer", "reduce_size", "inner");
  def("reduce_max_axis", &reduce_axis<ReduceOp::max>, "a", "out", "outer", "reduce_size", "inner");
  def("gather_rows", &gather_rows, "a", "indices", "out", "n", "row_size");
  def("scatter_add_rows", &scatter_add_rows, "a", "indices", "out", "n", "row_size");
  def("synchronize", &synchronize);
}

}  // namespace table
}  // namespace cuda
}  // namespace needle
