// Elementwise kernels over compact arrays: one thread per element, threadgroups of 256
// threads, the last threadgroup masked by `i < size`. Buffer indices:
//   fill:    out [[buffer(0)]], value [[buffer(1)]], size [[buffer(2)]]
//   binary:  a [[buffer(0)]], b [[buffer(1)]], out [[buffer(2)]], size [[buffer(3)]]
//   scalar:  a [[buffer(0)]], value [[buffer(1)]], out [[buffer(2)]], size [[buffer(3)]]
//   axpby:   as binary, then alpha [[buffer(4)]], beta [[buffer(5)]]
//   unary:   a [[buffer(0)]], out [[buffer(1)]], size [[buffer(2)]]; astype likewise
// Scalars (value) arrive in the array's own type, converted by the host.
// The unary, binary and scalar families are one kernel template each, instantiated once per
// operator of the primitive table (primitives.py UNARY, BINARY, SCALAR) and per dtype that
// its row takes (common.metal's dtype sets), under the table's name and the dtype's
// ([[host_name]]: ewise_add_int64): adding an operator is one line at the end of this file.
// Results follow NumPy (the reference backend) where Metal's built-ins differ: NaN
// propagates through maximum, relu and sign; integers wrap around; comparisons write bool.

template <typename T>
[[kernel]] void fill(device T* out [[buffer(0)]],
                     constant T& value [[buffer(1)]],
                     constant uint& size [[buffer(2)]],
                     uint i [[thread_position_in_grid]]) {
  if (i < size) out[i] = value;
}

NEEDLE_HELD(NEEDLE_TYPED, fill)

// out = a converted to out's dtype (common.metal's cast_to): astype_FROM_TO for every pair of
// held dtypes (the targets spelled out: a macro cannot expand itself).
template <typename From, typename To>
[[kernel]] void astype(device const From* a [[buffer(0)]],
                       device To* out [[buffer(1)]],
                       constant uint& size [[buffer(2)]],
                       uint i [[thread_position_in_grid]]) {
  if (i < size) out[i] = cast_to<To>::from(a[i]);
}
#define NEEDLE_ASTYPE(FROM, FROM_DTYPE, TO, TO_DTYPE) \
  NEEDLE_KERNEL("astype_" #FROM_DTYPE "_" #TO_DTYPE, astype<FROM, TO>)
#define NEEDLE_ASTYPE_TO_HELD(NAME, FROM, FROM_DTYPE)                                         \
  NEEDLE_ASTYPE(FROM, FROM_DTYPE, float, float32) NEEDLE_ASTYPE(FROM, FROM_DTYPE, half, float16) \
  NEEDLE_ASTYPE(FROM, FROM_DTYPE, int, int32) NEEDLE_ASTYPE(FROM, FROM_DTYPE, long, int64)       \
  NEEDLE_ASTYPE(FROM, FROM_DTYPE, uchar, uint8) NEEDLE_ASTYPE(FROM, FROM_DTYPE, bool, bool)
NEEDLE_HELD(NEEDLE_ASTYPE_TO_HELD, astype)

// out = alpha * a + beta * b. `out` may be bound to the buffer of `a` or `b` (the optimizers'
// in-place update): each thread reads its element before writing it.
kernel void ewise_axpby(device const float* a [[buffer(0)]],
                        device const float* b [[buffer(1)]],
                        device float* out [[buffer(2)]],
                        constant uint& size [[buffer(3)]],
                        constant float& alpha [[buffer(4)]],
                        constant float& beta [[buffer(5)]],
                        uint i [[thread_position_in_grid]]) {
  if (i < size) {
    const float x = a[i];
    const float y = b[i];
    out[i] = alpha * x + beta * y;
  }
}

// NumPy's sign, abs and relu. Floats: NaN stays NaN (metal::sign returns 0), zeros keep
// their sign. Integers: abs wraps (abs(INT_MIN) is INT_MIN); an unsigned value is its own
// abs, and its sign is 0 or 1.
inline float sign_numpy(float x) {
  return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x);
}
template <typename T> inline T sign_numpy(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
}
inline uchar sign_numpy(uchar x) { return x > 0 ? uchar(1) : uchar(0); }
inline float abs_numpy(float x) { return fabs(x); }
template <typename T> inline T abs_numpy(T x) { return x < T(0) ? wrap_neg(x) : x; }
inline uchar abs_numpy(uchar x) { return x; }

// NumPy's power: a negative base with an integral exponent is defined ((-2)^3 = -8), which
// Metal does not promise for pow (in fast math it is exp2(y * log2(x)), NaN for x < 0).
inline float power_numpy(float x, float y) {
  if (x < 0.0f && y == floor(y) && isfinite(y)) {
    const float magnitude = pow(-x, y);
    return fmod(y, 2.0f) != 0.0f ? -magnitude : magnitude;
  }
  return pow(x, y);
}

// 1 / (1 + e^-x) split by sign so that exp never overflows.
inline float sigmoid_stable(float x) {
  const float e = exp(-fabs(x));
  return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

// MSL has no erf: Eigen's float rational x P(x^2) / Q(x^2) on x clamped to [-4, 4] (erf is
// 1 in float beyond), within 5e-7; NaN stays NaN.
inline float erf_rational(float x) {
  const float c = clamp(x, -4.0f, 4.0f);
  const float z = c * c;
  float p = -2.72614225801306e-10f;
  p = p * z + 2.77068142495902e-08f;
  p = p * z - 2.10102402082508e-06f;
  p = p * z - 5.69250639462346e-05f;
  p = p * z - 7.34990630326855e-04f;
  p = p * z - 2.95459980854025e-03f;
  p = p * z - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * z - 2.13374055278905e-04f;
  q = q * z - 1.68282697438203e-03f;
  q = q * z - 7.37332916720468e-03f;
  q = q * z - 1.42647390514189e-02f;
  return isnan(x) ? x : c * p / q;
}

// gelu x Phi(x) and its derivative Phi(x) + x phi(x), Phi the normal CDF through erf.
inline float gelu_exact(float x) { return x * 0.5f * (1.0f + erf_rational(x * 0.707106781186547524f)); }
inline float gelu_grad(float x) {
  const float pdf = exp(x * x * -0.5f) * 0.398942280401432678f;
  return 0.5f * (1.0f + erf_rational(x * 0.707106781186547524f)) + x * pdf;
}

// ---- the three kernel templates: Op a functor, T the element type, R out's (T or bool) ----
template <typename Op, typename T>
[[kernel]] void ewise_unary(device const T* a [[buffer(0)]],
                            device T* out [[buffer(1)]],
                            constant uint& size [[buffer(2)]],
                            uint i [[thread_position_in_grid]]) {
  if (i < size) out[i] = Op()(a[i]);
}

template <typename Op, typename T, typename R>
[[kernel]] void ewise_binary(device const T* a [[buffer(0)]],
                             device const T* b [[buffer(1)]],
                             device R* out [[buffer(2)]],
                             constant uint& size [[buffer(3)]],
                             uint i [[thread_position_in_grid]]) {
  if (i < size) out[i] = Op()(a[i], b[i]);
}

template <typename Op, typename T, typename R>
[[kernel]] void scalar_binary(device const T* a [[buffer(0)]],
                              constant T& value [[buffer(1)]],
                              device R* out [[buffer(2)]],
                              constant uint& size [[buffer(3)]],
                              uint i [[thread_position_in_grid]]) {
  if (i < size) out[i] = Op()(a[i], value);
}

// ---- instantiation -------------------------------------------------------------------------
// The type of out given the element type T: T itself, or bool (comparisons).
#define NEEDLE_SAME(T) T
#define NEEDLE_BOOL(T) bool
// One kernel of a family for one dtype (called by the dtype sets of common.metal).
#define NEEDLE_UNARY_AS(NAME, TYPE, DTYPE) \
  NEEDLE_KERNEL("ewise_" #NAME "_" #DTYPE, ewise_unary<NAME##_op, TYPE>)
#define NEEDLE_SCALAR_AS(NAME, RESULT, TYPE, DTYPE) \
  NEEDLE_KERNEL("scalar_" #NAME "_" #DTYPE, scalar_binary<NAME##_op, TYPE, RESULT(TYPE)>)
#define NEEDLE_EWISE_AS(NAME, RESULT, TYPE, DTYPE) \
  NEEDLE_KERNEL("ewise_" #NAME "_" #DTYPE, ewise_binary<NAME##_op, TYPE, RESULT(TYPE)>)
#define NEEDLE_OP(NAME, RESULT, EXPR) \
  struct NAME##_op { template <typename T> RESULT(T) operator()(T x, T y) const { return (EXPR); } };

// ---- the operators: one line each, with the dtypes of their rows ------------------------------
// ewise_NAME(a, out): out = EXPR of x, for every dtype of DTYPES.
#define NEEDLE_UNARY(NAME, DTYPES, EXPR)                                    \
  struct NAME##_op { template <typename T> T operator()(T x) const { return (EXPR); } }; \
  DTYPES(NEEDLE_UNARY_AS, NAME)
// scalar_NAME(a, value, out): out = EXPR of x = a[i] and y = value.
#define NEEDLE_SCALAR(NAME, DTYPES, EXPR) \
  NEEDLE_OP(NAME, NEEDLE_SAME, EXPR) DTYPES(NEEDLE_SCALAR_AS, NAME, NEEDLE_SAME)
// ewise_NAME(a, b, out) and scalar_NAME(a, value, out): out = EXPR of x = a[i], y = b[i] or value.
#define NEEDLE_BINARY(NAME, DTYPES, EXPR) \
  NEEDLE_SCALAR(NAME, DTYPES, EXPR) DTYPES(NEEDLE_EWISE_AS, NAME, NEEDLE_SAME)
// A comparison: both forms, every dtype, a bool out (1 where EXPR holds).
#define NEEDLE_COMPARISON(NAME, EXPR)                                   \
  NEEDLE_OP(NAME, NEEDLE_BOOL, EXPR)                                    \
  NEEDLE_ALL(NEEDLE_SCALAR_AS, NAME, NEEDLE_BOOL) NEEDLE_ALL(NEEDLE_EWISE_AS, NAME, NEEDLE_BOOL)

NEEDLE_BINARY(add, NEEDLE_NUMERIC, wrap_add(x, y))
NEEDLE_BINARY(sub, NEEDLE_NUMERIC, wrap_sub(x, y))
NEEDLE_BINARY(mul, NEEDLE_NUMERIC, wrap_mul(x, y))
NEEDLE_BINARY(div, NEEDLE_FLOATS, x / y)
// a ** 0.5 is sqrt, as in NumPy and PyTorch: -inf ** 0.5 is NaN (pow gives +inf).
NEEDLE_SCALAR(power, NEEDLE_FLOATS, y == 0.5f ? sqrt(x) : power_numpy(x, y))
NEEDLE_OP(ewise_power, NEEDLE_SAME, power_numpy(x, y))
NEEDLE_KERNEL("ewise_power_float32", ewise_binary<ewise_power_op, float, float>)
NEEDLE_BINARY(maximum, NEEDLE_NUMERIC, maximum_nan(x, y))
NEEDLE_COMPARISON(eq, x == y)
NEEDLE_COMPARISON(ge, x >= y)
NEEDLE_COMPARISON(lt, x < y)
NEEDLE_COMPARISON(le, x <= y)
NEEDLE_SCALAR(rsub, NEEDLE_NUMERIC, wrap_sub(y, x))
NEEDLE_SCALAR(rdiv, NEEDLE_FLOATS, y / x)

NEEDLE_UNARY(neg, NEEDLE_NUMERIC, wrap_neg(x))
NEEDLE_UNARY(abs, NEEDLE_NUMERIC, abs_numpy(x))
NEEDLE_UNARY(sign, NEEDLE_NUMERIC, sign_numpy(x))
NEEDLE_UNARY(log, NEEDLE_FLOATS, log(x))
NEEDLE_UNARY(exp, NEEDLE_FLOATS, exp(x))
NEEDLE_UNARY(tanh, NEEDLE_FLOATS, tanh(x))
NEEDLE_UNARY(sqrt, NEEDLE_FLOATS, sqrt(x))
NEEDLE_UNARY(rsqrt, NEEDLE_FLOATS, rsqrt(x))
NEEDLE_UNARY(sin, NEEDLE_FLOATS, sin(x))
NEEDLE_UNARY(cos, NEEDLE_FLOATS, cos(x))
NEEDLE_UNARY(relu, NEEDLE_NUMERIC, maximum_nan(x, T(0)))
NEEDLE_UNARY(sigmoid, NEEDLE_FLOATS, sigmoid_stable(x))
NEEDLE_UNARY(erf, NEEDLE_FLOATS, erf_rational(x))
NEEDLE_UNARY(gelu, NEEDLE_FLOATS, gelu_exact(x))
NEEDLE_UNARY(gelu_grad, NEEDLE_FLOATS, gelu_grad(x))
