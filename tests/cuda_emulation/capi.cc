// A C interface over src/cuda/kernels.h and the emulated memory, for ctypes (harness.py).
// Every call returns 0, or -1 with the message in emu_last_error(); after each kernel call
// the guard bytes of every live buffer are checked.

#include <stdexcept>
#include <string>

#include "cuda/kernels.h"
#include "cuda/runtime.h"
#include "emulated_memory.h"

using namespace needle::cuda;

namespace {

std::string last_error;

template <class F> int guarded(F&& f) {
  try {
    f();
    emulated::check_guards();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

Shape to_shape(int ndim, const int64_t* values) { return Shape(values, values + ndim); }

DType dtype(int dt) { return dt == 0 ? DType::f32 : DType::f64; }

}  // namespace

extern "C" {

const char* emu_last_error() { return last_error.c_str(); }

void emu_configure(int sm_count, int max_grid_y) {
  emulated::sm_count = sm_count;
  emulated::max_grid_y = max_grid_y;
}

void* emu_alloc(size_t bytes, int tight) {
  try {
    return emulated::allocate(bytes, tight != 0);
  } catch (const std::exception& e) {
    last_error = e.what();
    return nullptr;
  }
}

void emu_free(void* ptr) { emulated::release(ptr); }

size_t emu_live_bytes() { return emulated::live_bytes(); }

int emu_fill(int dt, void* out, int64_t n, double val) {
  return guarded([&] { fill(dtype(dt), out, n, val); });
}

int emu_compact(int dt, const void* src, void* dst, int ndim, const int64_t* shape,
                const int64_t* strides, int64_t offset) {
  return guarded([&] {
    compact(dtype(dt), src, dst, to_shape(ndim, shape), to_shape(ndim, strides), offset);
  });
}

int emu_ewise_setitem(int dt, const void* src, void* dst, int ndim, const int64_t* shape,
                      const int64_t* strides, int64_t offset) {
  return guarded([&] {
    ewise_setitem(dtype(dt), src, dst, to_shape(ndim, shape), to_shape(ndim, strides), offset);
  });
}

int emu_scalar_setitem(int dt, double val, void* dst, int ndim, const int64_t* shape,
                       const int64_t* strides, int64_t offset) {
  return guarded([&] {
    scalar_setitem(dtype(dt), val, dst, to_shape(ndim, shape), to_shape(ndim, strides), offset);
  });
}

int emu_unary(int op, int dt, const void* a, void* out, int64_t n) {
  return guarded([&] { ewise_unary(static_cast<UnaryOp>(op), dtype(dt), a, out, n); });
}

int emu_binary(int op, int dt, const void* a, const void* b, void* out, int64_t n) {
  return guarded([&] { ewise_binary(static_cast<BinaryOp>(op), dtype(dt), a, b, out, n); });
}

int emu_scalar(int op, int dt, const void* a, double val, void* out, int64_t n) {
  return guarded([&] { scalar_binary(static_cast<BinaryOp>(op), dtype(dt), a, val, out, n); });
}

int emu_axpby(int dt, const void* a, const void* b, double alpha, double beta, void* out,
              int64_t n) {
  return guarded([&] { ewise_axpby(dtype(dt), a, b, alpha, beta, out, n); });
}

int emu_gather_rows(int dt, const void* a, const void* indices, void* out, int64_t n,
                    int64_t row_size) {
  return guarded([&] { gather_rows(dtype(dt), a, indices, out, n, row_size); });
}

int emu_scatter_add_rows(int dt, const void* a, const void* indices, void* out, int64_t n,
                         int64_t row_size) {
  return guarded([&] { scatter_add_rows(dtype(dt), a, indices, out, n, row_size); });
}

// a_view / b_view: offset, batch stride, row stride, col stride.
int emu_matmul(int dt, const void* a, const int64_t* a_view, const void* b,
               const int64_t* b_view, void* out, int64_t batch, int64_t m, int64_t n,
               int64_t p) {
  return guarded([&] {
    matmul(dtype(dt), {a, a_view[0], a_view[1], a_view[2], a_view[3]},
           {b, b_view[0], b_view[1], b_view[2], b_view[3]}, out, batch, m, n, p);
  });
}

int emu_reduce_last(int op, int dt, const void* a, void* out, int64_t rows, int64_t len) {
  return guarded([&] { reduce_last(static_cast<ReduceOp>(op), dtype(dt), a, out, rows, len); });
}

int emu_reduce_middle(int op, int dt, const void* a, void* out, int64_t outer, int64_t len,
                      int64_t inner) {
  return guarded([&] {
    reduce_middle(static_cast<ReduceOp>(op), dtype(dt), a, out, outer, len, inner);
  });
}

}  // extern "C"
