// Elementwise kernels over compact arrays: one thread per element, threadgroups of 256
// threads, the last threadgroup masked by `i < size`. Buffer indices:
//   fill:    out [[buffer(0)]], value [[buffer(1)]], size [[buffer(2)]]
//   binary:  a [[buffer(0)]], b [[buffer(1)]], out [[buffer(2)]], size [[buffer(3)]]
//   scalar:  a [[buffer(0)]], value [[buffer(1)]], out [[buffer(2)]], size [[buffer(3)]]
//   axpby:   as binary, then alpha [[buffer(4)]], beta [[buffer(5)]]
//   unary:   a [[buffer(0)]], out [[buffer(1)]], size [[buffer(2)]]
// The unary, binary and scalar families are one kernel template each, instantiated once per
// operator of the primitive table (primitives.py UNARY, BINARY, SCALAR) under the table's
// name ([[host_name]]): adding an operator is one line at the end of this file. Results
// follow NumPy (the reference backend) where Metal's built-ins differ: NaN propagates
// through maximum, relu and sign.

kernel void fill(device float* out [[buffer(0)]],
                 constant float& value [[buffer(1)]],
                 constant uint& size [[buffer(2)]],
                 uint i [[thread_position_in_grid]]) {
  if (i < size) out[i] = value;
}

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

// NumPy's sign: NaN stays NaN (metal::sign returns 0), zeros keep their sign.
inline float sign_nan(float x) {
  return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x);
}

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

// ---- the three kernel templates: Op is a functor of one or two floats --------------------
template <typename Op>
[[kernel]] void ewise_unary(device const float* a [[buffer(0)]],
                            device float* out [[buffer(1)]],
                            constant uint& size [[buffer(2)]],
                            uint i [[thread_position_in_grid]]) {
  if (i < size) out[i] = Op()(a[i]);
}

template <typename Op>
[[kernel]] void ewise_binary(device const float* a [[buffer(0)]],
                             device const float* b [[buffer(1)]],
                             device float* out [[buffer(2)]],
                             constant uint& size [[buffer(3)]],
                             uint i [[thread_position_in_grid]]) {
  if (i < size) out[i] = Op()(a[i], b[i]);
}

template <typename Op>
[[kernel]] void scalar_binary(device const float* a [[buffer(0)]],
                              constant float& value [[buffer(1)]],
                              device float* out [[buffer(2)]],
                              constant uint& size [[buffer(3)]],
                              uint i [[thread_position_in_grid]]) {
  if (i < size) out[i] = Op()(a[i], value);
}

// ---- the operators: one line each --------------------------------------------------------
// NEEDLE_KERNEL names one instantiation of a kernel template for the host ([[host_name]]).
#define NEEDLE_KERNEL(HOST, ...) \
  template [[host_name(HOST)]] [[kernel]] decltype(__VA_ARGS__) __VA_ARGS__;
// ewise_NAME(a, out): out = EXPR of x.
#define NEEDLE_UNARY(NAME, EXPR)                                          \
  struct NAME##_op { float operator()(float x) const { return (EXPR); } }; \
  NEEDLE_KERNEL("ewise_" #NAME, ewise_unary<NAME##_op>)
// scalar_NAME(a, value, out): out = EXPR of x = a[i] and y = value.
#define NEEDLE_SCALAR(NAME, EXPR)                                                   \
  struct NAME##_op { float operator()(float x, float y) const { return (EXPR); } }; \
  NEEDLE_KERNEL("scalar_" #NAME, scalar_binary<NAME##_op>)
// ewise_NAME(a, b, out) and scalar_NAME(a, value, out): out = EXPR of x = a[i], y = b[i] or value.
#define NEEDLE_BINARY(NAME, EXPR) \
  NEEDLE_SCALAR(NAME, EXPR)       \
  NEEDLE_KERNEL("ewise_" #NAME, ewise_binary<NAME##_op>)

NEEDLE_BINARY(add, x + y)
NEEDLE_BINARY(sub, x - y)
NEEDLE_BINARY(mul, x * y)
NEEDLE_BINARY(div, x / y)
// a ** 0.5 is sqrt, as in NumPy and PyTorch: -inf ** 0.5 is NaN (pow gives +inf).
NEEDLE_SCALAR(power, y == 0.5f ? sqrt(x) : power_numpy(x, y))
struct ewise_power_op { float operator()(float x, float y) const { return power_numpy(x, y); } };
NEEDLE_KERNEL("ewise_power", ewise_binary<ewise_power_op>)
NEEDLE_BINARY(maximum, maximum_nan(x, y))
NEEDLE_BINARY(eq, x == y ? 1.0f : 0.0f)
NEEDLE_BINARY(ge, x >= y ? 1.0f : 0.0f)
NEEDLE_BINARY(lt, x < y ? 1.0f : 0.0f)
NEEDLE_BINARY(le, x <= y ? 1.0f : 0.0f)
NEEDLE_SCALAR(rsub, y - x)
NEEDLE_SCALAR(rdiv, y / x)

NEEDLE_UNARY(neg, -x)
NEEDLE_UNARY(abs, fabs(x))
NEEDLE_UNARY(sign, sign_nan(x))
NEEDLE_UNARY(log, log(x))
NEEDLE_UNARY(exp, exp(x))
NEEDLE_UNARY(tanh, tanh(x))
NEEDLE_UNARY(sqrt, sqrt(x))
NEEDLE_UNARY(rsqrt, rsqrt(x))
NEEDLE_UNARY(sin, sin(x))
NEEDLE_UNARY(cos, cos(x))
NEEDLE_UNARY(relu, maximum_nan(x, 0.0f))
NEEDLE_UNARY(sigmoid, sigmoid_stable(x))
