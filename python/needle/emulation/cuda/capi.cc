// A C interface over the CUDA module's host table (src/cuda/host_table.h), for ctypes
// (harness.py): Arrays are the host table's own, and every primitive is called by name
// through emu_call, which unpacks the arguments by the C++ parameter types of the function
// the host table defines for it (table::define). Nothing here calls a kernel: what the
// emulation runs is the shipped host code over the shipped kernels.
//
// Every call returns 0, or an error kind (EMU_VALUE_ERROR...) with the message in
// emu_last_error(); after each primitive the guard bytes of every live buffer are checked.

#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda/host_table.h"
#include "cuda/runtime.h"
#include "cuda_emulation.h"
#include "emulated_memory.h"

using namespace needle::cuda;

extern "C" {
// One argument of a primitive, as harness.py marshals it by the parameter's kind:
//   array, out, inout: ptr = an Array* (emu_array_new)     int, bool: i
//   float: f          shape: ptr = int64_t[i]               str: ptr = a C string
//   index: ptr = an Array* of int64 row numbers
//   numpy: ptr = the data, i = its size, dtype = its index in emu_dtypes(), -1 another dtype
struct EmuArg {
  void* ptr;
  int64_t i;
  double f;
  int32_t dtype;
};
}

namespace {

enum ErrorKind {
  kOk = 0,
  kValueError = 1,
  kTypeError = 2,
  kOutOfMemory = 3,
  kCudaError = 4,
  kOther = 5
};

thread_local std::string last_error;  // of this thread's last call
// One call at a time: the launcher, the allocation table and the guard checks are global
// state (Python threads call in with the GIL released, and Arrays are freed from any thread).
std::mutex calls;

template <class F> int guarded(F&& f) {
  std::lock_guard<std::mutex> lock(calls);
  try {
    f();
    emulated::check_guards();
    return kOk;
  } catch (const TypeError& e) {
    last_error = e.what();
    return kTypeError;
  } catch (const std::invalid_argument& e) {
    last_error = e.what();
    return kValueError;
  } catch (const OutOfMemory& e) {
    last_error = e.what();
    return kOutOfMemory;
  } catch (const CudaError& e) {
    last_error = e.what();
    return kCudaError;
  } catch (const std::exception& e) {  // the launcher's and the guards' reports
    last_error = e.what();
    return kOther;
  }
}

// ---- unpacking an EmuArg as a parameter type ----------------------------------------------
template <class T> struct From;
template <> struct From<Array> {
  static Array& get(const EmuArg& a) { return *static_cast<Array*>(a.ptr); }
};
template <> struct From<int64_t> {
  static int64_t get(const EmuArg& a) { return a.i; }
};
template <> struct From<bool> {
  static bool get(const EmuArg& a) { return a.i != 0; }
};
template <> struct From<double> {
  static double get(const EmuArg& a) { return a.f; }
};
template <> struct From<Shape> {
  static Shape get(const EmuArg& a) {
    const auto* values = static_cast<const int64_t*>(a.ptr);
    return Shape(values, values + a.i);
  }
};
template <> struct From<std::string> {
  static std::string get(const EmuArg& a) { return static_cast<const char*>(a.ptr); }
};
template <> struct From<HostArray> {
  static HostArray get(const EmuArg& a) {
    std::optional<DType> dtype;
    if (a.dtype >= 0 && static_cast<size_t>(a.dtype) < dtype_names().size()) {
      dtype = parse_dtype(dtype_names()[a.dtype]);
    }
    return {a.ptr, a.i, dtype};
  }
};

// The parameter types of a function pointer or a lambda.
template <class F> struct Params : Params<decltype(&F::operator())> {};
template <class R, class... A> struct Params<R (*)(A...)> { using type = std::tuple<A...>; };
template <class C, class R, class... A> struct Params<R (C::*)(A...) const> {
  using type = std::tuple<A...>;
};

template <class F, class... A, size_t... I>
void invoke(const F& f, const EmuArg* args, std::tuple<A...>*, std::index_sequence<I...>) {
  f(From<std::decay_t<A>>::get(args[I])...);
}

struct Primitive {
  std::string params;  // the parameter names, comma-separated
  size_t arity;
  std::function<void(const EmuArg*)> call;
};

// What the host table defines, by name: table::define plus the two transfers.
std::map<std::string, Primitive>& primitives() {
  static auto* found = [] {
    auto* table = new std::map<std::string, Primitive>();
    auto def = [table](const char* name, auto function, auto... params) {
      using Types = typename Params<decltype(function)>::type;
      static_assert(std::tuple_size<Types>::value == sizeof...(params), "a name per parameter");
      std::string names;
      ((names += (names.empty() ? "" : ",") + std::string(params)), ...);
      (*table)[name] = {names, sizeof...(params), [function](const EmuArg* args) {
                          invoke(function, args, static_cast<Types*>(nullptr),
                                 std::make_index_sequence<std::tuple_size<Types>::value>());
                        }};
    };
    def("to_numpy", &table::to_numpy, "a", "shape", "strides", "offset", "out");
    def("from_numpy", &table::from_numpy, "a", "out");
    table::define(def);
    return table;
  }();
  return *found;
}

}  // namespace

extern "C" {

const char* emu_last_error() { return last_error.c_str(); }

void emu_configure(int sm_count, int max_grid_y) {
  emulated::sm_count = sm_count;
  emulated::max_grid_y = max_grid_y;
}

// Whether each launch also runs with its blocks' threads in reverse order (launcher.cc).
void emu_set_order_check(int on) { emulation::set_order_check(on != 0); }

// Buffers allocated from now on end exactly at an inaccessible page (see emulated_memory.h).
void emu_set_tight(int tight) { emulated::tight = tight != 0; }

size_t emu_live_bytes() {
  std::lock_guard<std::mutex> lock(calls);
  return emulated::live_bytes();
}

int emu_tile_size() { return kTileSize; }

// The module's DTYPES, comma-separated.
const char* emu_dtypes() {
  static const std::string names = [] {
    std::string joined;
    for (const std::string& name : dtype_names()) joined += (joined.empty() ? "" : ",") + name;
    return joined;
  }();
  return names.c_str();
}

// The primitives, "name(param,param,...)" separated by ";".
const char* emu_primitives() {
  static const std::string listing = [] {
    std::string joined;
    for (const auto& [name, primitive] : primitives()) {
      joined += (joined.empty() ? "" : ";") + name + "(" + primitive.params + ")";
    }
    return joined;
  }();
  return listing.c_str();
}

int emu_call(const char* name, const EmuArg* args, int nargs) {
  auto found = primitives().find(name);
  if (found == primitives().end()) {
    last_error = std::string("the host table has no primitive ") + name;
    return kOther;
  }
  if (static_cast<size_t>(nargs) != found->second.arity) {
    last_error = std::string(name) + ": wrong number of arguments";
    return kTypeError;
  }
  return guarded([&] { found->second.call(args); });
}

// An Array of the host table (device memory from the emulated runtime), or null with the
// error in emu_last_error() and its kind in *kind.
void* emu_array_new(size_t size, const char* dtype, int* kind) {
  Array* array = nullptr;
  *kind = guarded([&] { array = new Array(size, parse_dtype(dtype)); });
  return array;
}

void emu_array_delete(void* array) {
  std::lock_guard<std::mutex> lock(calls);
  delete static_cast<Array*>(array);
}

void* emu_array_ptr(void* array) { return static_cast<Array*>(array)->ptr; }

}  // extern "C"
