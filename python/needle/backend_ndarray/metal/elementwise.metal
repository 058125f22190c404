// Elementwise kernels over compact arrays: one thread per element, threadgroups of 256
// threads, the last threadgroup masked by `i < size`. Buffer indices:
//   fill:    out [[buffer(0)]], value [[buffer(1)]], size [[buffer(2)]]
//   binary:  a [[buffer(0)]], b [[buffer(1)]], out [[buffer(2)]], size [[buffer(3)]]
//   scalar:  a [[buffer(0)]], value [[buffer(1)]], out [[buffer(2)]], size [[buffer(3)]]
//   axpby:   as binary, then alpha [[buffer(4)]], beta [[buffer(5)]]
//   unary:   a [[buffer(0)]], out [[buffer(1)]], size [[buffer(2)]]
// Results follow NumPy (the reference backend) where Metal's built-ins differ: NaN
// propagates through maximum, relu and sign.

kernel void fill(device float* out [[buffer(0)]],
                 constant float& value [[buffer(1)]],
                 constant uint& size [[buffer(2)]],
                 uint i [[thread_position_in_grid]]) {
  if (i < size) out[i] = value;
}

// NumPy's sign: NaN stays NaN (metal::sign returns 0), zeros keep their sign.
inline float sign_nan(float x) {
  return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x);
}

// NumPy's power: a negative base with an integral exponent is defined ((-2)^3 = -8), which
// Metal does not promise for pow (in fast math it is exp2(y * log2(x)), NaN for x < 0).
inline float power_numpy(float x, float y) {
  if (x < 0.0f && y == floor(y)) {
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

#define NEEDLE_EWISE_BINARY(NAME, EXPR)                                        \
  kernel void NAME(device const float* a [[buffer(0)]],                        \
                   device const float* b [[buffer(1)]],                        \
                   device float* out [[buffer(2)]],                            \
                   constant uint& size [[buffer(3)]],                          \
                   uint i [[thread_position_in_grid]]) {                       \
    if (i < size) {                                                            \
      const float x = a[i];                                                    \
      const float y = b[i];                                                    \
      out[i] = (EXPR);                                                         \
    }                                                                          \
  }

#define NEEDLE_SCALAR_BINARY(NAME, EXPR)                                       \
  kernel void NAME(device const float* a [[buffer(0)]],                        \
                   constant float& value [[buffer(1)]],                        \
                   device float* out [[buffer(2)]],                            \
                   constant uint& size [[buffer(3)]],                          \
                   uint i [[thread_position_in_grid]]) {                       \
    if (i < size) {                                                            \
      const float x = a[i];                                                    \
      const float y = value;                                                   \
      out[i] = (EXPR);                                                         \
    }                                                                          \
  }

#define NEEDLE_UNARY(NAME, EXPR)                                               \
  kernel void NAME(device const float* a [[buffer(0)]],                        \
                   device float* out [[buffer(1)]],                            \
                   constant uint& size [[buffer(2)]],                          \
                   uint i [[thread_position_in_grid]]) {                       \
    if (i < size) {                                                            \
      const float x = a[i];                                                    \
      out[i] = (EXPR);                                                         \
    }                                                                          \
  }

NEEDLE_EWISE_BINARY(ewise_add, x + y)
NEEDLE_EWISE_BINARY(ewise_sub, x - y)
NEEDLE_EWISE_BINARY(ewise_mul, x * y)
NEEDLE_EWISE_BINARY(ewise_div, x / y)
NEEDLE_EWISE_BINARY(ewise_power, power_numpy(x, y))
NEEDLE_EWISE_BINARY(ewise_maximum, maximum_nan(x, y))
NEEDLE_EWISE_BINARY(ewise_eq, x == y ? 1.0f : 0.0f)
NEEDLE_EWISE_BINARY(ewise_ge, x >= y ? 1.0f : 0.0f)

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

NEEDLE_SCALAR_BINARY(scalar_add, x + y)
NEEDLE_SCALAR_BINARY(scalar_sub, x - y)
NEEDLE_SCALAR_BINARY(scalar_rsub, y - x)
NEEDLE_SCALAR_BINARY(scalar_mul, x * y)
NEEDLE_SCALAR_BINARY(scalar_div, x / y)
NEEDLE_SCALAR_BINARY(scalar_rdiv, y / x)
NEEDLE_SCALAR_BINARY(scalar_power, power_numpy(x, y))
NEEDLE_SCALAR_BINARY(scalar_maximum, maximum_nan(x, y))
NEEDLE_SCALAR_BINARY(scalar_eq, x == y ? 1.0f : 0.0f)
NEEDLE_SCALAR_BINARY(scalar_ge, x >= y ? 1.0f : 0.0f)

NEEDLE_UNARY(ewise_neg, -x)
NEEDLE_UNARY(ewise_abs, fabs(x))
NEEDLE_UNARY(ewise_sign, sign_nan(x))
NEEDLE_UNARY(ewise_log, log(x))
NEEDLE_UNARY(ewise_exp, exp(x))
NEEDLE_UNARY(ewise_tanh, tanh(x))
NEEDLE_UNARY(ewise_sqrt, sqrt(x))
NEEDLE_UNARY(ewise_sin, sin(x))
NEEDLE_UNARY(ewise_cos, cos(x))
NEEDLE_UNARY(ewise_relu, maximum_nan(x, 0.0f))
NEEDLE_UNARY(ewise_sigmoid, sigmoid_stable(x))
