// CUDA backend for needle's NDArray: the Python bindings of the host table.
//
// The primitives (python/needle/backend_ndarray/primitives.py) are implemented by the host
// table, src/cuda/host_table.{h,cc}: plain C++ over Arrays that checks dtypes and queues the
// kernels of src/cuda/ (kernels.h), on the device, stream and memory pool of
// src/cuda/runtime.cu. The tests' CUDA emulation runs that same host table and kernels on
// the CPU. This file only binds: it defines a Python function for each primitive of
// table::define, converts NumPy arrays for the two transfers, and turns the table's C++
// exceptions into Python's. Kernels run asynchronously on one stream; every transfer to the
// host (to_numpy) and synchronize() waits for them, and a kernel's failure surfaces there
// as CudaError with CUDA's error string. Importing the module never touches the GPU:
// device_count() is 0 on a machine without one (ndl.cuda().enabled() is then False), and
// the device is initialised by the first Array.

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "array_binding.h"
#include "cuda/host_table.h"
#include "cuda/runtime.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace needle {
namespace cuda {

using NumpyArray = nb::ndarray<nb::numpy>;
using InputArray = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;

// The 16-bit floats cross as uint16 bit patterns (DLPack and the buffer protocol have no
// bfloat16 NumPy takes), viewed as NumPy's float16 or ml_dtypes' bfloat16 on the Python side.
template <class T> using host_t = std::conditional_t<sizeof(T) == 2, uint16_t, T>;

nb::object half_dtype(DType dt) {
  return dt == DType::bf16 ? nb::module_::import_("ml_dtypes").attr("bfloat16")
                           : nb::module_::import_("numpy").attr("float16");
}

nb::object to_numpy(const Array& a, const Shape& shape, const Shape& strides, int64_t offset) {
  return with_dtype<AllTypes>(a.dtype, [&](auto t) {
    using T = host_t<decltype(t)>;
    const int64_t n = view_size(shape);
    T* buf = new T[n > 0 ? n : 1];
    nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<T*>(p); });
    table::to_numpy(a, shape, strides, offset, HostArray{buf, n, a.dtype});
    std::vector<size_t> dims(shape.begin(), shape.end());
    nb::object array = NumpyArray(buf, dims.size(), dims.data(), owner, nullptr, nb::dtype<T>(),
                                  nb::device::cpu::value)
                           .cast();
    return sizeof(T) == 2 ? array.attr("view")(half_dtype(a.dtype)) : array;
  });
}

// The DType of NumPy data, if any Array holds it.
template <class... T> std::optional<DType> dtype_of_numpy(nb::dlpack::dtype dt, Types<T...>) {
  std::optional<DType> found;
  ((dt == nb::dtype<T>() ? (void)(found = dtype_of<T>) : (void)0), ...);
  return found;
}

void from_numpy(nb::object src, Array& out) {
  std::optional<DType> dtype;
  if (nb::hasattr(src, "dtype")) {  // a 16-bit float: its bits, as uint16
    const auto name = nb::cast<std::string>(src.attr("dtype").attr("name"));
    if (name == "float16" || name == "bfloat16") {
      dtype = parse_dtype(name);
      src = src.attr("view")(nb::module_::import_("numpy").attr("uint16"));
    }
  }
  InputArray data;
  if (!nb::try_cast(src, data)) throw TypeError("from_numpy: expected a NumPy array");
  if (!dtype) dtype = dtype_of_numpy(data.dtype(), Computed());
  table::from_numpy(
      HostArray{const_cast<void*>(data.data()), static_cast<int64_t>(data.size()), dtype}, out);
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
  d["compute_capability"] =
      nb::make_tuple(info.compute_capability / 10, info.compute_capability % 10);
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

NB_MODULE(ndarray_backend_cuda, m) {
  using namespace needle::cuda;
  m.doc() =
      "needle CUDA backend: the primitive table (needle.backend_ndarray.primitives) on an NVIDIA "
      "GPU";
  m.attr("__device_name__") = "cuda";
  m.attr("__tile_size__") = kTileSize;
  m.attr("DTYPES") = nb::steal(PySequence_Tuple(nb::cast(dtype_names()).ptr()));

  // The host table's errors: std::invalid_argument is a ValueError already (nanobind).
  nb::exception<CudaError>(m, "CudaError", PyExc_RuntimeError);
  nb::exception<OutOfMemory>(m, "OutOfMemoryError", PyExc_MemoryError);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const TypeError& e) { PyErr_SetString(PyExc_TypeError, e.what()); }
  });

  needle::bind_array<Array, parse_dtype, dtype_name, nb::device::cuda>(
      m, "A flat device buffer of `size` elements.", [] {
        int device = 0;
        cudaGetDevice(&device);  // DLPack's device index: the current device
        return device;
      });

  // (The 16-bit dtypes cross as uint16 views, so nanobind sees object: the table's types.)
  m.def("to_numpy", &to_numpy, "a"_a, "shape"_a, "strides"_a, "offset"_a,
        nb::sig("def to_numpy(a: Array, shape: collections.abc.Sequence[int], "
                "strides: collections.abc.Sequence[int], offset: int) -> NDArray"));
  m.def("from_numpy", &from_numpy, "a"_a, "out"_a,
        nb::sig("def from_numpy(a: NDArray, out: Array) -> None"));
  table::define([&m](const char* name, auto function, auto... params) {
    m.def(name, function, nb::arg(params)...);
  });

  m.def("device_count", &device_count, "Visible CUDA devices (0 without a GPU or driver).");
  m.def("device_info", &device_dict, "Name, SM count, compute capability and CUDA versions.");
  m.def("mem_info", &memory_dict,
        "Device memory in bytes: free and total (cudaMemGetInfo); used and reserved by the "
        "backend's memory pool.");
  m.def("empty_cache", &empty_cache, "Return the memory pool's cached free blocks to the driver.");

  // Launch planning, pure host arithmetic: exposed so that tests check it without a GPU.
  m.def("_grid_size", &grid_size, "items"_a, "block_threads"_a, "sm_count"_a);
  m.def(
      "_gemm_tile_of_block",
      [](int64_t block, int64_t tiles_m, int64_t tiles_n) {
        const TileCoord t = gemm_tile_of_block(block, tiles_m, tiles_n);
        return nb::make_tuple(t.m, t.n);
      },
      "block"_a, "tiles_m"_a, "tiles_n"_a);
  m.def(
      "_gemm_tiling",
      [](const std::string& dtype) {
        const GemmTiling t = gemm_tiling(parse_dtype(dtype));
        nb::dict d;
        d["block_m"] = t.block_m, d["block_n"] = t.block_n, d["block_k"] = t.block_k;
        d["thread_m"] = t.thread_m, d["thread_n"] = t.thread_n, d["threads"] = t.threads;
        return d;
      },
      "dtype"_a);
  m.def(
      "_plan_reduce_last",
      [](int64_t rows, int64_t reduce_size, int sm_count) {
        return plan_dict(plan_reduce_last(rows, reduce_size, sm_count));
      },
      "rows"_a, "reduce_size"_a, "sm_count"_a);
  m.def(
      "_plan_reduce_middle",
      [](int64_t outer, int64_t reduce_size, int64_t inner, int sm_count) {
        return plan_dict(plan_reduce_middle(outer, reduce_size, inner, sm_count));
      },
      "outer"_a, "reduce_size"_a, "inner"_a, "sm_count"_a);
}
