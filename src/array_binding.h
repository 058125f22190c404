// The Python class of a backend's Array, which every native backend module binds alike:
// Array(size, dtype="float32") makes a buffer of `size` elements of the dtype of that name,
// and a.size, a.dtype (the name) and a.ptr() (the address, an integer) describe it.

#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <cstddef>
#include <cstdint>
#include <new>
#include <string>

namespace needle {

// Binds Array as m.Array with the docstring `doc`. `parse_dtype` turns a dtype name into the
// backend's DType (raising for a name it does not hold), `dtype_name` turns it back.
template <class Array, auto parse_dtype, auto dtype_name>
void bind_array(nanobind::module_ &m, const char *doc) {
  namespace nb = nanobind;
  using namespace nb::literals;
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
      .def("ptr", [](const Array &a) { return reinterpret_cast<uintptr_t>(a.ptr); });
}

}  // namespace needle
