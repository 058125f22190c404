// Shared by every kernel file of needle's Metal backends (prepended to each library's source).
//
// Conventions: arrays are flat buffers of one element type (float, half, int, long, uchar or
// bool: needle's float32, float16, int32, int64, uint8, bool; Metal has no double, and bfloat
// only from MSL 3.1); shapes, strides and offsets are in elements;
// sizes and strides fit in 32 bits (the host checks: arrays of fewer than 2^31 elements).
// Small parameters arrive as constant buffers set with setBytes; the structs below are packed
// on the host by python/needle/backend_ndarray/metal_primitives.py, which is the one place
// that knows each kernel's buffer indices and launch grid.
#include <metal_stdlib>
using namespace metal;

// A strided view for compact / ewise_setitem / scalar_setitem: `size` elements, `ndim` axes
// (shape and strides come in their own buffers), first element at `offset`.
struct StridedView {
  uint size;
  uint ndim;
  int offset;
};

// (outer, reduce_size, inner) geometry of a reduction; rows reductions use inner = 1.
struct ReduceShape {
  uint outer;
  uint reduce_size;
  uint inner;
};

// gather_rows / scatter_add_rows: n indexed rows of row_size elements; `size` elements of out
// get a thread each (n * row_size for a gather, every whole row of out for a scatter).
struct RowsShape {
  uint n;
  uint row_size;
  uint size;
};

// Batched matmul of strided views: a is (batch, m, n), b is (batch, n, p), out is compact
// (batch, m, p). Strides are (batch, row, column), non-negative, 0 for broadcast axes.
struct MatmulParams {
  uint batch;
  uint m;
  uint n;
  uint p;
  int a_offset;
  int a_batch_stride;
  int a_row_stride;
  int a_col_stride;
  int b_offset;
  int b_batch_stride;
  int b_row_stride;
  int b_col_stride;
};

// ---- element types ---------------------------------------------------------------------------
// The dtypes a kernel template is instantiated for, as the primitive table declares them per
// row (primitives.py): M(ARGS..., MSL type, dtype name) once per dtype of the set. A kernel is
// named for the host as its primitive, "_", the dtype name: ewise_add_int64.
#define NEEDLE_FLOATS(M, ...) M(__VA_ARGS__, float, float32)
#define NEEDLE_INTS(M, ...) \
  M(__VA_ARGS__, int, int32) M(__VA_ARGS__, long, int64) M(__VA_ARGS__, uchar, uint8)
#define NEEDLE_NUMERIC(M, ...) NEEDLE_FLOATS(M, __VA_ARGS__) NEEDLE_INTS(M, __VA_ARGS__)
#define NEEDLE_ALL(M, ...) NEEDLE_NUMERIC(M, __VA_ARGS__) M(__VA_ARGS__, bool, bool)
#define NEEDLE_SUM(M, ...) NEEDLE_FLOATS(M, __VA_ARGS__) M(__VA_ARGS__, long, int64)
// float16 is stored, copied, converted and multiplied (the rows of primitives.HALFS); the other
// rows take float32, to which NDArray converts it.
#define NEEDLE_HALF(M, ...) M(__VA_ARGS__, half, float16)
#define NEEDLE_HELD(M, ...) NEEDLE_ALL(M, __VA_ARGS__) NEEDLE_HALF(M, __VA_ARGS__)
// NEEDLE_KERNEL names one instantiation of a kernel template for the host ([[host_name]]);
// NEEDLE_TYPED(NAME, TYPE, DTYPE) is NAME<TYPE> as the kernel NAME_DTYPE, for the sets above:
// NEEDLE_HELD(NEEDLE_TYPED, compact) gives compact_float32, ..., compact_bool, compact_float16.
#define NEEDLE_KERNEL(HOST, ...) \
  template [[host_name(HOST)]] [[kernel]] decltype(__VA_ARGS__) __VA_ARGS__;
#define NEEDLE_TYPED(NAME, TYPE, DTYPE) NEEDLE_KERNEL(#NAME "_" #DTYPE, NAME<TYPE>)

// Integer arithmetic wraps around (two's complement) as NumPy's does: done in the unsigned
// type of the same width (defined wrapping in C++ too, where the emulation compiles these
// kernels; signed overflow would be undefined there) and converted back. Floats are plain.
template <typename T> struct unsigned_of { typedef T type; };
template <> struct unsigned_of<int> { typedef uint type; };
template <> struct unsigned_of<long> { typedef ulong type; };

template <typename T> inline T wrap_add(T x, T y) {
  typedef typename unsigned_of<T>::type U;
  return T(U(x) + U(y));
}
template <typename T> inline T wrap_sub(T x, T y) {
  typedef typename unsigned_of<T>::type U;
  return T(U(x) - U(y));
}
template <typename T> inline T wrap_mul(T x, T y) {
  typedef typename unsigned_of<T>::type U;
  return T(U(x) * U(y));
}
// -x: integers wrap (-INT_MIN is INT_MIN, -uchar(1) is 255); floats flip the sign (-0.0).
template <typename T> inline T wrap_neg(T x) { return wrap_sub(T(0), x); }
inline float wrap_neg(float x) { return -x; }

// NumPy's maximum: NaN wins (metal::fmax returns the other operand); plain for integers.
template <typename T> inline T maximum_nan(T x, T y) { return x > y ? x : y; }
inline float maximum_nan(float x, float y) {
  return (x > y || isnan(x)) ? x : y;
}

// ---- conversions (astype, and the matmuls' float16 operands) -------------------------------
// float16 <-> float32 by bits, NumPy's to the bit (npy_floatbits_to_halfbits and back, as
// src/common/half_bits.h): round to nearest even, subnormals kept, a NaN keeps the top 10 bits
// of its payload (1 where those are 0). A GPU's own conversions may flush subnormals or make
// NaNs canonical; integer arithmetic gives the same bits on every GPU and in the emulation.
inline half float_to_half(float x) {
  const uint u = as_type<uint>(x);
  const uint a = u & 0x7fffffffu;
  uint h;
  if (a > 0x7f800000u) {
    h = 0x7c00u | max((a >> 13) & 0x3ffu, 1u);  // NaN
  } else if (a >= 0x477ff000u) {
    h = 0x7c00u;  // from 65520 (65504 and half its ulp: a tie, to the even inf) on: inf
  } else if (a >= 0x38800000u) {
    // A normal float16 (from 2^-14): the 13 dropped bits rounded; a carry is right.
    h = ((a + 0xfffu + ((a >> 13) & 1u)) >> 13) - (112u << 10);
  } else if (a <= 0x33000000u) {
    h = 0u;  // at most 2^-25, half the least subnormal
  } else {  // a subnormal, in units of 2^-24
    const uint shift = 126u - (a >> 23);
    const uint m = (a & 0x7fffffu) | 0x800000u;
    const uint kept = m >> shift, rest = m & ((1u << shift) - 1u), tie = 1u << (shift - 1u);
    h = kept + uint(rest > tie || (rest == tie && (kept & 1u) != 0u));
  }
  return as_type<half>(ushort(((u >> 16) & 0x8000u) | h));
}

inline float half_to_float(half x) {
  const uint u = as_type<ushort>(x);
  const uint sign = (u & 0x8000u) << 16, e = (u >> 10) & 0x1fu, m = u & 0x3ffu;
  if (e == 0u) {  // zero or a subnormal: m 2^-24, a normal float, exact
    return as_type<float>(sign | as_type<uint>(float(m) * 5.9604644775390625e-8f));
  }
  return as_type<float>(sign | ((e == 31u ? 255u : e + 112u) << 23) | (m << 13));
}

// float to int or long: truncated toward zero; NaN and values out of range (unspecified by
// the astype row) give the minimum, x86's "integer indefinite" and so NumPy's there, instead
// of undefined behaviour in the emulation's C++.
template <typename I> inline I truncate_float(float x) {
  const float limit = sizeof(I) == 8 ? 9223372036854775808.0f : 2147483648.0f;
  return (x >= -limit && x < limit) ? I(x) : I(-limit);
}

// cast_to<To>::from(x): x as NumPy's astype converts it. Integers wrap, as C's conversions;
// uint8 from a float through int32, as NumPy's cast on x86.
template <typename To> struct cast_to {  // int, long, uchar
  template <typename From> static To from(From x) { return To(x); }
  static To from(float x) {
    return sizeof(To) == 8 ? To(truncate_float<long>(x)) : To(truncate_float<int>(x));
  }
  static To from(half x) { return from(half_to_float(x)); }
};
template <> struct cast_to<float> {
  template <typename From> static float from(From x) { return float(x); }
  static float from(half x) { return half_to_float(x); }
};
// From an integer through float: exact below 2^24, and anything from 65520 on is inf anyway.
template <> struct cast_to<half> {
  template <typename From> static half from(From x) {
    return float_to_half(cast_to<float>::from(x));
  }
};
template <> struct cast_to<bool> {  // nonzero (NaN too)
  template <typename From> static bool from(From x) { return cast_to<float>::from(x) != 0.0f; }
};
