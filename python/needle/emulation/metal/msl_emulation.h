// MSL on the CPU: just enough of the Metal Shading Language for needle's .metal kernels to
// compile as C++17 with g++ and run under launcher.cc. A test tool (tests/README.md).
//
// What is mapped, and how:
//  - address spaces: `device`, `thread` vanish; `constant` is `const` (so program-scope
//    `constant uint N = 16;` stays a constant expression); `threadgroup` is `static`, which is
//    sound because the launcher runs the threadgroups of a grid one after another, each with
//    its own real threads sharing those statics. Hence `threadgroup` may only declare
//    variables in a kernel's body (the only form needle's kernels use).
//  - `kernel` vanishes; the `[[buffer(n)]]`, `[[thread_position_in_grid]]`, ... attributes
//    stay and are ignored by g++ (-Wno-attributes): the build script reads them from the
//    source to generate each kernel's argument binding.
//  - scalar and vector types (uint, ulong, half as storage, uint2/3, float2/4, ...), as_type,
//    the math functions with Metal's semantics where they differ from C (sign), mem_flags,
//    threadgroup_barrier and simdgroup_barrier (real barriers), the SIMD-group reductions and
//    shuffles (real data exchange between the threads of a 32-wide SIMD-group), and
//    simdgroup_matrix 8 x 8 load / store / multiply-accumulate.
// Every std header is included before the macros below are defined, so the macros cannot
// break the standard library; code after this header must not use those words otherwise.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---- scalar types (glibc already typedefs uint, ulong, ushort to these same types) -------
typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;
static_assert(sizeof(ulong) == 8, "MSL's ulong is 64 bits");
// MSL's half, as storage only (2 bytes, copied bit for bit): needle's kernels convert float16
// by bits (common.metal's float_to_half, half_to_float through as_type), so a kernel that
// converts or computes in half natively, which a GPU may do with other NaN or subnormal bits,
// does not compile here.
struct half {
  uint16_t bits;
};
static_assert(sizeof(half) == 2, "MSL's half is 16 bits");

// ---- vector types -------------------------------------------------------------------------
namespace msl {
template <typename T, int N> struct vec;

template <typename T> struct vec<T, 2> {
  T x, y;
  constexpr vec() : x(), y() {}
  constexpr vec(T s) : x(s), y(s) {}
  constexpr vec(T x_, T y_) : x(x_), y(y_) {}
  T& operator[](int i) { return i == 0 ? x : y; }
  const T& operator[](int i) const { return i == 0 ? x : y; }
};

template <typename T> struct vec<T, 3> {
  T x, y, z;
  constexpr vec() : x(), y(), z() {}
  constexpr vec(T s) : x(s), y(s), z(s) {}
  constexpr vec(T x_, T y_, T z_) : x(x_), y(y_), z(z_) {}
  T& operator[](int i) { return i == 0 ? x : (i == 1 ? y : z); }
  const T& operator[](int i) const { return i == 0 ? x : (i == 1 ? y : z); }
};

template <typename T> struct vec<T, 4> {
  T x, y, z, w;
  constexpr vec() : x(), y(), z(), w() {}
  constexpr vec(T s) : x(s), y(s), z(s), w(s) {}
  constexpr vec(T x_, T y_, T z_, T w_) : x(x_), y(y_), z(z_), w(w_) {}
  T& operator[](int i) { return i == 0 ? x : (i == 1 ? y : (i == 2 ? z : w)); }
  const T& operator[](int i) const { return i == 0 ? x : (i == 1 ? y : (i == 2 ? z : w)); }
};

// Elementwise arithmetic, vector-vector and vector-scalar.
#define MSL_VEC_OPERATOR(OP)                                                       \
  template <typename T, int N> vec<T, N> operator OP(vec<T, N> a, const vec<T, N>& b) { \
    for (int i = 0; i < N; ++i) a[i] = a[i] OP b[i];                               \
    return a;                                                                      \
  }                                                                                \
  template <typename T, int N> vec<T, N> operator OP(vec<T, N> a, T b) {           \
    for (int i = 0; i < N; ++i) a[i] = a[i] OP b;                                  \
    return a;                                                                      \
  }
MSL_VEC_OPERATOR(+)
MSL_VEC_OPERATOR(-)
MSL_VEC_OPERATOR(*)
MSL_VEC_OPERATOR(/)
MSL_VEC_OPERATOR(%)
#undef MSL_VEC_OPERATOR
}  // namespace msl

// uint2, uint3, uint4, int2, ..., float4.
#define MSL_VECTOR_TYPES(T) \
  typedef msl::vec<T, 2> T##2;  \
  typedef msl::vec<T, 3> T##3;  \
  typedef msl::vec<T, 4> T##4;
MSL_VECTOR_TYPES(uint)
MSL_VECTOR_TYPES(int)
MSL_VECTOR_TYPES(ushort)
MSL_VECTOR_TYPES(ulong)
MSL_VECTOR_TYPES(float)
#undef MSL_VECTOR_TYPES

// ---- the launcher's side (launcher.cc) ---------------------------------------------------
namespace msl {
// The built-in values of the calling thread, as [[attributes]] deliver them.
struct ThreadPosition {
  uint3 thread_position_in_grid;
  uint3 threadgroup_position_in_grid;
  uint3 thread_position_in_threadgroup;
  uint3 threads_per_threadgroup;
  uint3 threadgroups_per_grid;
  uint3 threads_per_grid;
  uint thread_index_in_threadgroup;
  uint simdgroup_index_in_threadgroup;
  uint thread_index_in_simdgroup;
  uint threads_per_simdgroup;
  uint simdgroups_per_threadgroup;
};

constexpr uint kSimdWidth = 32;  // Apple GPUs

// How the generated bindings (build.py) describe a kernel to the launcher.
struct ArgSpec {
  int index;          // n of [[buffer(n)]]
  bool by_reference;  // `constant T& x` (must be bound to at least `size` bytes) or a pointer
  size_t size;        // sizeof(T) (of the pointee for pointers)
  const char* name;
};
typedef void (*KernelFunction)(void* const* buffers, const ThreadPosition& position);
struct KernelEntry {
  const char* name;
  KernelFunction function;
  const ArgSpec* args;
  int num_args;
};

// `file` and `line`: where the kernel calls threadgroup_barrier (threads of a threadgroup that
// wait at different calls are reported).
void threadgroup_barrier_impl(const char* file, int line);
void simdgroup_barrier_impl();
uint current_lane();
uint current_simd_width();
// Publish this lane's value (16 bytes at most) and wait until all lanes of the SIMD-group
// have; then `slots` holds every lane's value, valid until simd_exchange_done().
const void* simd_exchange_begin(const void* value, size_t size);
void simd_exchange_done();

// The declared type of parameter K of a kernel, from its function pointer type: the bindings
// take each argument's type from the kernel itself, so that a kernel template's parameters
// (device const T* a) bind as each instantiation declares them (device const long* a).
template <unsigned K, typename... Args> struct nth_type;
template <typename A, typename... Rest> struct nth_type<0, A, Rest...> { typedef A type; };
template <unsigned K, typename A, typename... Rest> struct nth_type<K, A, Rest...> {
  typedef typename nth_type<K - 1, Rest...>::type type;
};
template <typename F, unsigned K> struct kernel_arg;
template <unsigned K, typename... Args> struct kernel_arg<void (*)(Args...), K> {
  typedef typename nth_type<K, Args...>::type type;
};
template <typename F, unsigned K> using kernel_arg_t = typename kernel_arg<F, K>::type;

// Conversions of the launcher's uint3 to the declared type of a position argument (uint,
// ushort, uint2, uint3, ...).
template <typename T> struct vec_traits { static constexpr int size = 1; using element = T; };
template <typename T, int N> struct vec_traits<vec<T, N>> {
  static constexpr int size = N;
  using element = T;
};
template <typename T> T position_as(uint3 v) {
  using E = typename vec_traits<T>::element;
  if constexpr (vec_traits<T>::size == 1) return static_cast<T>(v.x);
  else if constexpr (vec_traits<T>::size == 2) return T(static_cast<E>(v.x), static_cast<E>(v.y));
  else return T(static_cast<E>(v.x), static_cast<E>(v.y), static_cast<E>(v.z));
}
}  // namespace msl

// ---- the metal namespace -------------------------------------------------------------------
namespace metal {
using msl::vec;

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };

// Reinterpreting bits: T and U of one size (float and uint, half and ushort).
template <typename T, typename U> T as_type(U x) {
  static_assert(sizeof(T) == sizeof(U), "as_type between types of one size");
  T y;
  std::memcpy(&y, &x, sizeof(y));
  return y;
}

// (Default arguments are evaluated at the call site: the kernel's file and line.)
inline void threadgroup_barrier(mem_flags, const char* file = __builtin_FILE(),
                                int line = __builtin_LINE()) {
  msl::threadgroup_barrier_impl(file, line);
}
inline void simdgroup_barrier(mem_flags) { msl::simdgroup_barrier_impl(); }

// Math on float. Metal has overloads for half and vectors too; needle uses float only.
inline float exp(float x) { return std::exp(x); }
inline float exp2(float x) { return std::exp2(x); }
inline float log(float x) { return std::log(x); }
inline float log2(float x) { return std::log2(x); }
inline float tanh(float x) { return std::tanh(x); }
inline float sqrt(float x) { return std::sqrt(x); }
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline float sin(float x) { return std::sin(x); }
inline float cos(float x) { return std::cos(x); }
inline float pow(float x, float y) { return std::pow(x, y); }
inline float powr(float x, float y) { return std::pow(x, y); }
inline float fabs(float x) { return std::fabs(x); }
inline float abs(float x) { return std::fabs(x); }
inline int abs(int x) { return x < 0 ? -x : x; }
inline float floor(float x) { return std::floor(x); }
inline float ceil(float x) { return std::ceil(x); }
inline float fma(float x, float y, float z) { return std::fma(x, y, z); }
inline float fmod(float x, float y) { return std::fmod(x, y); }
inline float fmax(float x, float y) { return std::fmax(x, y); }
inline float fmin(float x, float y) { return std::fmin(x, y); }
inline bool isnan(float x) { return std::isnan(x); }
inline bool isinf(float x) { return std::isinf(x); }
inline bool isfinite(float x) { return std::isfinite(x); }
// Metal's sign: 0 for NaN (C has no sign; NumPy's differs, which kernels must handle).
inline float sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : (x == x ? x : 0.0f)); }
template <typename T> T max(T x, T y) { return x > y ? x : y; }
template <typename T> T min(T x, T y) { return x < y ? x : y; }
template <typename T> T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
template <typename T> T select(T a, T b, bool c) { return c ? b : a; }
namespace precise { using metal::exp; using metal::log; using metal::tanh; using metal::sqrt;
                    using metal::sin; using metal::cos; using metal::pow; }
namespace fast { using metal::exp; using metal::log; using metal::tanh; using metal::sqrt;
                 using metal::sin; using metal::cos; using metal::pow; }

// ---- SIMD-group functions: real exchange among the lanes of the calling SIMD-group ---------
template <typename T> T simd_broadcast(T value, ushort lane) {
  static_assert(sizeof(T) <= 16, "SIMD-group exchange of at most 16 bytes");
  const T* slots = static_cast<const T*>(msl::simd_exchange_begin(&value, sizeof(T)));
  const T result = lane < msl::current_simd_width() ? slots[lane] : value;
  msl::simd_exchange_done();
  return result;
}
template <typename T> T simd_shuffle(T value, ushort lane) { return simd_broadcast(value, lane); }
template <typename T> T simd_shuffle_down(T value, ushort delta) {
  static_assert(sizeof(T) <= 16, "SIMD-group exchange of at most 16 bytes");
  const T* slots = static_cast<const T*>(msl::simd_exchange_begin(&value, sizeof(T)));
  const uint source = msl::current_lane() + delta;
  const T result = source < msl::current_simd_width() ? slots[source] : value;
  msl::simd_exchange_done();
  return result;
}
template <typename T> T simd_shuffle_xor(T value, ushort mask) {
  const T* slots = static_cast<const T*>(msl::simd_exchange_begin(&value, sizeof(T)));
  const uint source = msl::current_lane() ^ mask;
  const T result = source < msl::current_simd_width() ? slots[source] : value;
  msl::simd_exchange_done();
  return result;
}
// Reductions visit the lanes in order, so every lane computes the same value.
template <typename T, typename Op> T simd_fold(T value, Op op) {
  const T* slots = static_cast<const T*>(msl::simd_exchange_begin(&value, sizeof(T)));
  T result = slots[0];
  for (uint lane = 1; lane < msl::current_simd_width(); ++lane) result = op(result, slots[lane]);
  msl::simd_exchange_done();
  return result;
}
template <typename T> T simd_sum(T value) {
  return simd_fold(value, [](T x, T y) { return x + y; });
}
template <typename T> T simd_max(T value) {
  return simd_fold(value, [](T x, T y) { return max(x, y); });
}
template <typename T> T simd_min(T value) {
  return simd_fold(value, [](T x, T y) { return min(x, y); });
}

// ---- simdgroup_matrix ------------------------------------------------------------------------
// A SIMD-group matrix is one matrix shared by the 32 lanes; how Metal spreads it over the
// lanes' registers is opaque to the kernel, so here every lane holds all of it and computes
// every operation. Loads read the same memory in every lane; stores are done by lane 0 only,
// so a kernel that reads another lane's stored values without a barrier fails here as it
// may on a GPU.
template <typename T, int Cols, int Rows> struct simdgroup_matrix {
  T e[Rows][Cols];
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;

template <typename T, int Cols, int Rows>
simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(T value) {
  simdgroup_matrix<T, Cols, Rows> m;
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Cols; ++c) m.e[r][c] = value;
  return m;
}

// matrix_origin is (column, row), as in Metal. The pointer may be to device or threadgroup
// memory (a template parameter, for the address-space check).
template <typename T, int Cols, int Rows, typename Pointer>
void simdgroup_load(simdgroup_matrix<T, Cols, Rows>& d, Pointer src, ulong elements_per_row = Cols,
                    ulong2 matrix_origin = ulong2(0), bool transpose_matrix = false) {
  src += matrix_origin.y * elements_per_row + matrix_origin.x;
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Cols; ++c)
      d.e[r][c] = transpose_matrix ? src[c * elements_per_row + r] : src[r * elements_per_row + c];
}

template <typename T, int Cols, int Rows, typename Pointer>
void simdgroup_store(const simdgroup_matrix<T, Cols, Rows>& a, Pointer dst,
                     ulong elements_per_row = Cols, ulong2 matrix_origin = ulong2(0),
                     bool transpose_matrix = false) {
  if (msl::current_lane() != 0) return;
  dst += matrix_origin.y * elements_per_row + matrix_origin.x;
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < Cols; ++c) {
      if (transpose_matrix) dst[c * elements_per_row + r] = a.e[r][c];
      else dst[r * elements_per_row + c] = a.e[r][c];
    }
}

// d = a * b + c, accumulating each dot product from c with fused multiply-adds.
template <typename T, int K, int Rows, int Cols>
void simdgroup_multiply_accumulate(simdgroup_matrix<T, Cols, Rows>& d,
                                   const simdgroup_matrix<T, K, Rows>& a,
                                   const simdgroup_matrix<T, Cols, K>& b,
                                   const simdgroup_matrix<T, Cols, Rows>& c) {
  simdgroup_matrix<T, Cols, Rows> result;
  for (int r = 0; r < Rows; ++r)
    for (int col = 0; col < Cols; ++col) {
      T acc = c.e[r][col];
      for (int k = 0; k < K; ++k) acc = std::fma(a.e[r][k], b.e[k][col], acc);
      result.e[r][col] = acc;
    }
  d = result;
}

template <typename T, int K, int Rows, int Cols>
void simdgroup_multiply(simdgroup_matrix<T, Cols, Rows>& d, const simdgroup_matrix<T, K, Rows>& a,
                        const simdgroup_matrix<T, Cols, K>& b) {
  simdgroup_multiply_accumulate(d, a, b, make_filled_simdgroup_matrix<T, Cols, Rows>(T(0)));
}
}  // namespace metal

// ---- the address-space qualifiers and the kernel keyword -------------------------------------
#if defined(MSL_CHECK_ADDRESS_SPACES)
// For a clang -fsyntax-only check (test_metal_kernels.py): Metal's address spaces become clang
// address spaces, between which pointers do not convert, so that a pointer passed where
// another address space is expected fails to compile here as it does with Metal.
#define kernel
#define thread
#define device __attribute__((address_space(1)))
#define constant const __attribute__((address_space(2)))
#define threadgroup static __attribute__((address_space(3)))
#elif !defined(MSL_EMULATION_NO_KEYWORDS)  // launcher.cc needs std::thread: it keeps the words
#define kernel
#define device
#define thread
#define constant const
#define threadgroup static
#endif
