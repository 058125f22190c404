// The Python class of a backend's Array, which every native backend module binds alike:
// Array(size, dtype="float32") makes a buffer of `size` elements of the dtype of that name,
// and a.size, a.dtype (the name) and a.ptr() (the address, an integer) describe it.

#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "common/view_check.h"

namespace needle {

// The DLPack dtype of each dtype an Array may hold (bool: DLPack 0.8's kDLBool, one byte).
struct DLPackDType {
  const char *name;
  nanobind::dlpack::dtype dtype;
};
inline constexpr std::array<DLPackDType, 8> kDLPackDTypes{{
    {"float32", {2, 32, 1}},
    {"float64", {2, 64, 1}},
    {"float16", {2, 16, 1}},
    {"bfloat16", {4, 16, 1}},
    {"int32", {0, 32, 1}},
    {"int64", {0, 64, 1}},
    {"uint8", {1, 8, 1}},
    {"bool", {6, 8, 1}},
}};

// Binds Array as m.Array with the docstring `doc`. `parse_dtype` turns a dtype name into the
// backend's DType (raising for a name it does not hold), `dtype_name` turns it back. `Device`
// is nanobind's DLPack device of the memory (nb::device::cpu or cuda), `device_id()` its
// index (0 when null), for DLPack: Array.dlpack_view exports a checked view (zero copy, the Array
// kept alive by it) and Array.from_dlpack wraps a C-contiguous array of another library without
// copying (the Array keeps it alive); the Array's constructor (ptr, size, dtype, owner)
// takes such foreign memory.
template <class Array, auto parse_dtype, auto dtype_name, class Device = nanobind::device::cpu>
void bind_array(nanobind::module_ &m, const char *doc, int (*device_id)() = nullptr) {
  namespace nb = nanobind;
  using namespace nb::literals;
  using Foreign = nb::ndarray<Device, nb::c_contig>;
  // Weakly referenceable: autograd's record of in-place writes must not keep buffers alive.
  nb::class_<Array>(m, "Array", doc, nb::is_weak_referenceable())
      .def(
          "__init__",
          [](Array *self, size_t size, const std::string &dtype) {
            new (self) Array(size, parse_dtype(dtype));
          },
          "size"_a, "dtype"_a = "float32")
      .def_prop_ro("size", [](const Array &a) { return a.size; })
      .def_prop_ro("dtype", [](const Array &a) { return dtype_name(a.dtype); })
      .def("ptr", [](const Array &a) { return reinterpret_cast<uintptr_t>(a.ptr); })
      .def(
          "dlpack_view",
          [device_id](nb::handle self, const std::vector<int64_t> &shape,
                      const std::vector<int64_t> &strides, int64_t offset) {
            const Array &a = nb::cast<const Array &>(self);
            const ViewCheck view = check_view_bounds(shape, strides, offset, a.size);
            if (!view.problem.empty())
              throw nb::value_error(("dlpack_view: " + view.problem).c_str());
            const std::string name = dtype_name(a.dtype);
            const DLPackDType *d = nullptr;
            for (const DLPackDType &e : kDLPackDTypes)
              if (name == e.name) d = &e;
            if (!d) throw nb::type_error(("dlpack_view: no DLPack dtype for " + name).c_str());
            std::vector<size_t> dims(shape.begin(), shape.end());
            char *base = static_cast<char *>(a.ptr) + offset * (d->dtype.bits / 8);
            return nb::ndarray<nb::array_api, Device>(base, dims.size(), dims.data(), self,
                                                      strides.data(), d->dtype, Device::value,
                                                      device_id ? device_id() : 0);
          },
          "shape"_a, "strides"_a, "offset"_a,
          "An object with __dlpack__ and the buffer protocol: the view (shape, strides, "
          "offset) in elements, checked to lie in the buffer, which it keeps alive.")
      .def(
          "dlpack_device",
          [device_id](const Array &) {
            return std::make_pair(int(Device::value), device_id ? device_id() : 0);
          },
          "(DLPack device type, device index) of the memory, as __dlpack_device__ says.")
      .def_static(
          "from_dlpack",
          [](Foreign x) {
            const DLPackDType *d = nullptr;
            for (const DLPackDType &e : kDLPackDTypes)
              if (x.dtype() == e.dtype) d = &e;
            if (!d) throw nb::type_error("from_dlpack: an array of a dtype needle does not hold");
            auto owner = std::shared_ptr<void>(new Foreign(x), [](void *p) {
              nb::gil_scoped_acquire gil;  // the ndarray may hold a Python reference
              delete static_cast<Foreign *>(p);
            });
            return new Array(x.data(), x.size(), parse_dtype(d->name), std::move(owner));
          },
          "x"_a,
          "An Array over the memory of a C-contiguous array of another library (its "
          "__dlpack__ or buffer), without a copy: writes through either show in the other.",
          nb::rv_policy::take_ownership);
}

}  // namespace needle
