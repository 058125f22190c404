// CUDA backend for needle's NDArray: the primitive table of ndarray_backend_numpy.py (the
// executable specification) on an NVIDIA GPU, for float32 and float64.
//
// Conventions (shared with every backend): an Array is a flat device buffer of one dtype;
// strided views are (shape, strides, offset) in elements; `out` is a separate compact Array;
// bounds and sizes were checked in Python. Kernels run asynchronously on one stream; every
// transfer to the host (to_numpy) and synchronize() waits for them, and a kernel's failure
// surfaces there as CudaError with CUDA's error string.
//
// This file is the table and its Python bindings; the kernels are in src/cuda/ behind the
// plain interface of src/cuda/kernels.h, and the device, stream and memory pool in
// src/cuda/runtime.cu. Importing the module never touches the GPU: device_count() is 0 on a
// machine without one (ndl.cuda().enabled() is then False), and the device is initialised
// by the first Array.

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace needle {
namespace cuda {

constexpr int kTile = 8;  // matmul_tiled's tile, as in the course's CPU backend

inline const char* dtype_name(DType dt) { return dt == DType::f32 ? "float32" : "float64"; }

inline DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::f32;
  if (name == "float64") return DType::f64;
  throw nb::value_error(("unsupported dtype '" + name + "' (expected float32 or float64)").c_str());
}

// A flat device buffer of `size` elements; freed (stream-ordered) when the Array dies.
struct Array {
  Array(size_t size, DType dtype) : size(size), dtype(dtype) {
    if (size > std::numeric_limits<size_t>::max() / 16) {
      throw OutOfMemory("CUDA out of memory: " + std::to_string(size) + " elements");
    }
    ptr = device_alloc(size * itemsize(dtype));
  }
  ~Array() { device_free(ptr); }
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;

  size_t size;
  DType dtype;
  void* ptr = nullptr;
};

// Python guarantees one dtype per call; a mismatch would reinterpret memory silently.
template <class... Rest> DType common_dtype(const Array& first, const Rest&... rest) {
  if (((rest.dtype != first.dtype) || ...)) {
    throw nb::type_error("all arrays of a primitive call must share one dtype");
  }
  return first.dtype;
}

bool is_contiguous(const View& v) {
  return v.shape.empty() || (v.shape.size() == 1 && v.strides[0] == 1);
}

// ---- memory ----------------------------------------------------------------------------

using NumpyArray = nb::ndarray<nb::numpy>;

template <class T>
NumpyArray to_numpy_typed(const Array& a, const Shape& shape, const Shape& strides,
                          int64_t offset) {
  const View v = simplify_view(shape, strides, offset);
  T* buf = new T[std::max<int64_t>(v.size, 1)];
  nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  if (v.size > 0) {
    const size_t bytes = sizeof(T) * v.size;
    if (is_contiguous(v)) {
      copy_device_to_host(buf, static_cast<const T*>(a.ptr) + v.offset, bytes);
    } else {  // gather on the device, then one transfer
      DeviceBuffer packed(bytes);
      compact(a.dtype, a.ptr, packed.get<void>(), shape, strides, offset);
      copy_device_to_host(buf, packed.get<void>(), bytes);
    }
  }
  std::vector<size_t> dims(shape.begin(), shape.end());
  return NumpyArray(buf, dims.size(), dims.data(), owner, nullptr, nb::dtype<T>(),
                    nb::device::cpu::value);
}

NumpyArray to_numpy(const Array& a, const Shape& shape, const Shape& strides, int64_t offset) {
  if (a.dtype == DType::f32) return to_numpy_typed<float>(a, shape, strides, offset);
  return to_numpy_typed<double>(a, shape, strides, offset);
}

using InputArray = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;

void from_numpy(const InputArray& src, Array& out) {
  const bool f32 = out.dtype == DType::f32;
  if (src.dtype() != (f32 ? nb::dtype<float>() : nb::dtype<double>())) {
    throw nb::type_error((std::string("from_numpy: source dtype does not match Array dtype ") +
                          dtype_name(out.dtype)).c_str());
  }
  if (src.size() != out.size) {
    throw nb::value_error(("from_numpy: source has " + std::to_string(src.size()) +
                           " elements, Array has " + std::to_string(out.size)).c_str());
  }
  copy_host_to_device(out.ptr, src.data(), out.size * itemsize(out.dtype));
}

void fill_array(Array& out, double val) { fill(out.dtype, out.ptr, out.size, val); }

// ---- layout ------------------------------------------------------------------------------

void compact_array(const Array& a, Array& out, const Shape& shape, const Shape& strides,
                   int64_t offset) {
  compact(common_dtype(a, out), a.ptr, out.ptr, shape, strides, offset);
}

void ewise_setitem_array(const Array& a, Array& out, const Shape& shape, const Shape& strides,
                         int64_t offset) {
  ewise_setitem(common_dtype(a, out), a.ptr, out.ptr, shape, strides, offset);
}

void scalar_setitem_array(size_t size, double val, Array& out, const Shape& shape,
                          const Shape& strides, int64_t offset) {
  (void)size;  // the view's size; the kernel takes it from the shape
  scalar_setitem(out.dtype, val, out.ptr, shape, strides, offset);
}

void gather_rows_array(const Array& a, const Array& indices, Array& out, int64_t n,
                       int64_t row_size) {
  gather_rows(common_dtype(a, indices, out), a.ptr, indices.ptr, out.ptr, n, row_size);
}

void scatter_add_rows_array(const Array& a, const Array& indices, Array& out, int64_t n,
                            int64_t row_size) {
  scatter_add_rows(common_dtype(a, indices, out), a.ptr, indices.ptr, out.ptr, n, row_size);
}

// ---- linear algebra ----------------------------------------------------------------------

void matmul_strided(const Array& a, const Array& b, Array& out, int64_t batch, int64_t m,
                    int64_t n, int64_t p, int64_t a_offset, const Shape& a_strides,
                    int64_t b_offset, const Shape& b_strides) {
  if (a_strides.size() != 3 || b_strides.size() != 3) {
    throw nb::value_error("matmul_strided: strides must be (batch, row, col)");
  }
  const DType dt = common_dtype(a, b, out);
  matmul(dt, {a.ptr, a_offset, a_strides[0], a_strides[1], a_strides[2]},
         {b.ptr, b_offset, b_strides[0], b_strides[1], b_strides[2]}, out.ptr, batch, m, n, p);
}

void matmul_array(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p) {
  matmul_strided(a, b, out, 1, m, n, p, 0, {0, n, 1}, 0, {0, p, 1});
}

void batched_matmul(const Array& a, const Array& b, Array& out, int64_t batch, int64_t m,
                    int64_t n, int64_t p) {
  matmul_strided(a, b, out, batch, m, n, p, 0, {m * n, n, 1}, 0, {n * p, p, 1});
}

// Tile-major operands ((rows/T, cols/T, T, T) blocks) are gathered to row-major, multiplied,
// and scattered back: the course's layout, kept for compatibility, not speed.
void matmul_tiled(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p) {
  if (m % kTile || n % kTile || p % kTile) {
    throw nb::value_error("matmul_tiled: dimensions must be multiples of the tile size 8");
  }
  const DType dt = common_dtype(a, b, out);
  const int64_t t = kTile, size = static_cast<int64_t>(itemsize(dt));
  // A row-major (rows, cols) matrix read from tile-major storage: (rows/T, T, cols/T, T).
  auto tile_view = [t](int64_t cols) { return Shape{cols * t, t, t * t, 1}; };
  DeviceBuffer a_rows(size * m * n), b_rows(size * n * p), c_rows(size * m * p);
  compact(dt, a.ptr, a_rows.get<void>(), {m / t, t, n / t, t}, tile_view(n), 0);
  compact(dt, b.ptr, b_rows.get<void>(), {n / t, t, p / t, t}, tile_view(p), 0);
  matmul(dt, {a_rows.get<void>(), 0, 0, n, 1}, {b_rows.get<void>(), 0, 0, p, 1},
         c_rows.get<void>(), 1, m, n, p);
  ewise_setitem(dt, c_rows.get<void>(), out.ptr, {m / t, t, p / t, t}, tile_view(p), 0);
}

// ---- reductions ------------------------------------------------------------------------

template <ReduceOp op> void reduce_rows(const Array& a, Array& out, int64_t reduce_size) {
  reduce_last(op, common_dtype(a, out), a.ptr, out.ptr, static_cast<int64_t>(out.size),
              reduce_size);
}

template <ReduceOp op>
void reduce_axis(const Array& a, Array& out, int64_t outer, int64_t reduce_size, int64_t inner) {
  reduce_middle(op, common_dtype(a, out), a.ptr, out.ptr, outer, reduce_size, inner);
}

// ---- binding helpers -------------------------------------------------------------------

template <BinaryOp op> void ewise(const Array& a, const Array& b, Array& out) {
  ewise_binary(op, common_dtype(a, b, out), a.ptr, b.ptr, out.ptr, out.size);
}
template <BinaryOp op> void scalar(const Array& a, double val, Array& out) {
  scalar_binary(op, common_dtype(a, out), a.ptr, val, out.ptr, out.size);
}
template <UnaryOp op> void unary(const Array& a, Array& out) {
  ewise_unary(op, common_dtype(a, out), a.ptr, out.ptr, out.size);
}
// `out` may be `a` or `b` itself (an in-place update).
void axpby(const Array& a, const Array& b, double alpha, double beta, Array& out) {
  ewise_axpby(common_dtype(a, b, out), a.ptr, b.ptr, alpha, beta, out.ptr, out.size);
}

nb::dict memory_dict() {
  const MemoryInfo info = memory_info();
  nb::dict d;
  d["free"] = info.free, d["total"] = info.total, d["used"] = info.used;
  d["reserved"] = info.reserved;
  return d;
}

nb::dict device_dict() {
  const DeviceInfo& info = device_info();
  nb::dict d;
  d["name"] = info.name, d["ordinal"] = info.ordinal, d["sm_count"] = info.sm_count;
  d["compute_capability"] = nb::make_tuple(info.compute_capability / 10,
                                           info.compute_capability % 10);
  d["driver_version"] = info.driver_version, d["runtime_version"] = info.runtime_version;
  return d;
}

nb::dict plan_dict(const ReducePlan& plan) {
  nb::dict d;
  d["strategy"] = plan.strategy, d["chunks"] = plan.chunks, d["chunk_len"] = plan.chunk_len;
  d["grid"] = nb::make_tuple(plan.grid_x, plan.grid_y);
  d["block"] = nb::make_tuple(plan.block_x, plan.block_y);
  return d;
}

}  // namespace cuda
}  // namespace needle

// ---- bindings ------------------------------------------------------------------------------

NB_MODULE(ndarray_backend_cuda, m) {
  using namespace needle::cuda;
  m.doc() = "needle CUDA backend: the primitive table of ndarray_backend_numpy, on an NVIDIA GPU";
  m.attr("__device_name__") = "cuda";
  m.attr("__tile_size__") = kTile;
  m.attr("DTYPES") = nb::make_tuple("float32", "float64");

  nb::exception<CudaError>(m, "CudaError", PyExc_RuntimeError);
  nb::exception<OutOfMemory>(m, "OutOfMemoryError", PyExc_MemoryError);

  nb::class_<Array>(m, "Array", "A flat device buffer of `size` elements.")
      .def(
          "__init__",
          [](Array* self, size_t size, const std::string& dtype) {
            new (self) Array(size, parse_dtype(dtype));
          },
          "size"_a, "dtype"_a = "float32")
      .def_prop_ro("size", [](const Array& a) { return a.size; })
      .def_prop_ro("dtype", [](const Array& a) { return dtype_name(a.dtype); })
      .def("ptr", [](const Array& a) { return reinterpret_cast<uintptr_t>(a.ptr); });

  m.def("to_numpy", &to_numpy, "a"_a, "shape"_a, "strides"_a, "offset"_a);
  m.def("from_numpy", &from_numpy, "a"_a, "out"_a);
  m.def("fill", &fill_array, "out"_a, "val"_a);

  m.def("compact", &compact_array, "a"_a, "out"_a, "shape"_a, "strides"_a, "offset"_a);
  m.def("ewise_setitem", &ewise_setitem_array, "a"_a, "out"_a, "shape"_a, "strides"_a,
        "offset"_a);
  m.def("scalar_setitem", &scalar_setitem_array, "size"_a, "val"_a, "out"_a, "shape"_a,
        "strides"_a, "offset"_a);
  m.def("gather_rows", &gather_rows_array, "a"_a, "indices"_a, "out"_a, "n"_a, "row_size"_a);
  m.def("scatter_add_rows", &scatter_add_rows_array, "a"_a, "indices"_a, "out"_a, "n"_a,
        "row_size"_a);

  m.def("ewise_add", &ewise<BinaryOp::add>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_sub", &ewise<BinaryOp::sub>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_mul", &ewise<BinaryOp::mul>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_div", &ewise<BinaryOp::div>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_power", &ewise<BinaryOp::power>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_maximum", &ewise<BinaryOp::maximum>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_eq", &ewise<BinaryOp::eq>, "a"_a, "b"_a, "out"_a);
  m.def("ewise_ge", &ewise<BinaryOp::ge>, "a"_a, "b"_a, "out"_a);

  m.def("scalar_add", &scalar<BinaryOp::add>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_sub", &scalar<BinaryOp::sub>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_rsub", &scalar<BinaryOp::rsub>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_mul", &scalar<BinaryOp::mul>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_div", &scalar<BinaryOp::div>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_rdiv", &scalar<BinaryOp::rdiv>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_power", &scalar<BinaryOp::power>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_maximum", &scalar<BinaryOp::maximum>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_eq", &scalar<BinaryOp::eq>, "a"_a, "val"_a, "out"_a);
  m.def("scalar_ge", &scalar<BinaryOp::ge>, "a"_a, "val"_a, "out"_a);
  m.def("ewise_axpby", &axpby, "a"_a, "b"_a, "alpha"_a, "beta"_a, "out"_a);

  m.def("ewise_neg", &unary<UnaryOp::neg>, "a"_a, "out"_a);
  m.def("ewise_abs", &unary<UnaryOp::abs>, "a"_a, "out"_a);
  m.def("ewise_sign", &unary<UnaryOp::sign>, "a"_a, "out"_a);
  m.def("ewise_log", &unary<UnaryOp::log>, "a"_a, "out"_a);
  m.def("ewise_exp", &unary<UnaryOp::exp>, "a"_a, "out"_a);
  m.def("ewise_tanh", &unary<UnaryOp::tanh>, "a"_a, "out"_a);
  m.def("ewise_sqrt", &unary<UnaryOp::sqrt>, "a"_a, "out"_a);
  m.def("ewise_sin", &unary<UnaryOp::sin>, "a"_a, "out"_a);
  m.def("ewise_cos", &unary<UnaryOp::cos>, "a"_a, "out"_a);
  m.def("ewise_relu", &unary<UnaryOp::relu>, "a"_a, "out"_a);
  m.def("ewise_sigmoid", &unary<UnaryOp::sigmoid>, "a"_a, "out"_a);

  m.def("matmul", &matmul_array, "a"_a, "b"_a, "out"_a, "m"_a, "n"_a, "p"_a);
  m.def("batched_matmul", &batched_matmul, "a"_a, "b"_a, "out"_a, "batch"_a, "m"_a, "n"_a,
        "p"_a);
  m.def("matmul_tiled", &matmul_tiled, "a"_a, "b"_a, "out"_a, "m"_a, "n"_a, "p"_a);
  m.def("matmul_strided", &matmul_strided, "a"_a, "b"_a, "out"_a, "batch"_a, "m"_a, "n"_a,
        "p"_a, "a_offset"_a, "a_strides"_a, "b_offset"_a, "b_strides"_a);

  m.def("reduce_sum", &reduce_rows<ReduceOp::sum>, "a"_a, "out"_a, "reduce_size"_a);
  m.def("reduce_max", &reduce_rows<ReduceOp::max>, "a"_a, "out"_a, "reduce_size"_a);
  m.def("reduce_sum_axis", &reduce_axis<ReduceOp::sum>, "a"_a, "out"_a, "outer"_a,
        "reduce_size"_a, "inner"_a);
  m.def("reduce_max_axis", &reduce_axis<ReduceOp::max>, "a"_a, "out"_a, "outer"_a,
        "reduce_size"_a, "inner"_a);

  m.def("synchronize", &synchronize, "Wait for all queued kernels; raise CudaError if one failed.");
  m.def("device_count", &device_count, "Visible CUDA devices (0 without a GPU or driver).");
  m.def("device_info", &device_dict, "Name, SM count, compute capability and CUDA versions.");
  m.def("mem_info", &memory_dict,
        "Device memory in bytes: free and total (cudaMemGetInfo); used and reserved by the "
        "backend's memory pool.");
  m.def("empty_cache", &empty_cache, "Return the memory pool's cached free blocks to the driver.");

  // Launch planning, pure host arithmetic: exposed so that tests check it without a GPU.
  m.def("_grid_size", &grid_size, "items"_a, "block_threads"_a, "sm_count"_a);
  m.def("_simplify_view", [](const Shape& shape, const Shape& strides, int64_t offset) {
    const View v = simplify_view(shape, strides, offset);
    return nb::make_tuple(v.shape, v.strides, v.offset, v.size);
  }, "shape"_a, "strides"_a, "offset"_a);
  m.def("_gemm_tile_of_block", [](int64_t block, int64_t tiles_m, int64_t tiles_n) {
    const TileCoord t = gemm_tile_of_block(block, tiles_m, tiles_n);
    return nb::make_tuple(t.m, t.n);
  }, "block"_a, "tiles_m"_a, "tiles_n"_a);
  m.def("_gemm_tiling", [](const std::string& dtype) {
    const GemmTiling t = gemm_tiling(parse_dtype(dtype));
    nb::dict d;
    d["block_m"] = t.block_m, d["block_n"] = t.block_n, d["block_k"] = t.block_k;
    d["thread_m"] = t.thread_m, d["thread_n"] = t.thread_n, d["threads"] = t.threads;
    return d;
  }, "dtype"_a);
  m.def("_plan_reduce_last", [](int64_t rows, int64_t reduce_size, int sm_count) {
    return plan_dict(plan_reduce_last(rows, reduce_size, sm_count));
  }, "rows"_a, "reduce_size"_a, "sm_count"_a);
  m.def("_plan_reduce_middle", [](int64_t outer, int64_t reduce_size, int64_t inner,
                                  int sm_count) {
    return plan_dict(plan_reduce_middle(outer, reduce_size, inner, sm_count));
  }, "outer"_a, "reduce_size"_a, "inner"_a, "sm_count"_a);
}
