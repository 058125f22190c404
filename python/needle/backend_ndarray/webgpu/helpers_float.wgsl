// float32: NumPy's results where WGSL's built-ins differ or are left undefined.
fn wrap(x: $T) -> $T { return x; }

// x != x may be folded away by a fast-math compiler: test the bits.
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }

// NaN wins, as in NumPy (WGSL's max is undefined with NaN).
fn maximum_nan(x: f32, y: f32) -> f32 { return select(y, x, x > y || is_nan(x)); }

fn sign_np(x: f32) -> f32 { return select(select(x, -1.0, x < 0.0), 1.0, x > 0.0); }
fn abs_np(x: f32) -> f32 { return abs(x); }
fn neg_np(x: f32) -> f32 { return -x; }

// IEEE pow as NumPy has it, case by case: drivers' pow is exp2(y * log2(x)), which is NaN
// for a negative base ((-2)^3 is -8), and lavapipe's ignores NaN operands.
fn inf() -> f32 { return bitcast<f32>(0x7f800000u); }

fn power_of_magnitude(ax: f32, y: f32) -> f32 {  // ax >= 0, neither NaN
    if (ax == 0.0) { return select(0.0, inf(), y < 0.0); }
    if (ax == inf()) { return select(0.0, inf(), y > 0.0); }
    if (ax == 1.0) { return 1.0; }
    if (abs(y) == inf()) { return select(0.0, inf(), (ax > 1.0) == (y > 0.0)); }
    // The exponents of squares, variances and reciprocals, to 1 ulp: pow is exp2(y log2 x),
    // whose error grows with |y log2 x| (69 ulp at |y| = 10 on lavapipe).
    if (y == 2.0) { return ax * ax; }
    if (y == -1.0) { return 1.0 / ax; }
    if (y == 0.5) { return sqrt(ax); }
    if (y == -0.5) { return 1.0 / sqrt(ax); }
    return pow(ax, y);
}

fn power_np(x: f32, y: f32) -> f32 {
    if (y == 0.0 || x == 1.0) { return 1.0; }
    if (is_nan(x) || is_nan(y)) { return x + y; }
    let integral = abs(y) < inf() && y == floor(y);
    if (x < 0.0 && x > -inf() && abs(y) < inf() && !integral) { return bitcast<f32>(0x7fc00000u); }
    let magnitude = power_of_magnitude(abs(x), y);
    let odd = integral && (y - 2.0 * floor(y * 0.5)) != 0.0;
    return select(magnitude, -magnitude, odd && (bitcast<u32>(x) >> 31u) == 1u);
}

// e^x to about 1 ulp, as NumPy's: WGSL allows exp an error of 3 + 2|x| ulp (lavapipe's is
// 3e-6 relative at x = 44, 25 ulp). Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2, with
// ln2 in two parts, then Cephes' expf polynomial for e^r, scaled by 2^k in two steps (so that
// neither factor overflows or underflows before the product does).
fn exp_np(x: f32) -> f32 {
    if (is_nan(x)) { return x; }
    if (x > 88.72284) { return inf(); }
    if (x < -103.97208) { return 0.0; }
    let k = round(x * 1.44269504);
    let r = (x - k * 0.693359375) + k * 2.12194440e-4;
    var q = 1.9875691500e-4;
    q = q * r + 1.3981999507e-3;
    q = q * r + 8.3334519073e-3;
    q = q * r + 4.1665795894e-2;
    q = q * r + 1.6666665459e-1;
    q = q * r + 5.0000001201e-1;
    let y = q * r * r + r + 1.0;
    let half = i32(k) / 2;
    return ldexp(ldexp(y, half), i32(k) - half);
}

// Split by sign so that exp never overflows.
fn sigmoid_np(x: f32) -> f32 {
    let e = exp_np(-abs(x));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}

// tanh to a few ulp, as Cephes' tanhf: an odd polynomial below |x| = 0.625 (drivers' tanh
// may be (e^2x - 1) / (e^2x + 1), which is 1 ulp of 1.0 for tiny x on lavapipe and NaN past
// |x| = 44), else 1 - 2 / (e^2|x| + 1) with the sign of x.
fn tanh_np(x: f32) -> f32 {
    if (is_nan(x)) { return x; }
    let a = abs(x);
    if (a < 0.625) {
        let s = x * x;
        var q = -5.70498872745e-3;
        q = q * s + 2.06390887954e-2;
        q = q * s - 5.37397155531e-2;
        q = q * s + 1.33314422036e-1;
        q = q * s - 3.33332819422e-1;
        return q * s * x + x;
    }
    let t = 1.0 - 2.0 / (exp_np(2.0 * a) + 1.0);
    return select(t, -t, x < 0.0);
}

// log to a few ulp, as Cephes' logf (WGSL promises log only an absolute error of 2^-21 near
// 1, where the result is small: thousands of ulp on lavapipe). x = 2^e * m, sqrt(1/2) <= m <
// sqrt(2); a polynomial in m - 1; ln2 in two parts.
fn log_np(x: f32) -> f32 {
    if (is_nan(x) || x < 0.0) { return bitcast<f32>(0x7fc00000u); }
    if (x == 0.0) { return -inf(); }
    if (x == inf()) { return x; }
    var scaled = x;
    var e = 0;
    if (x < 1.17549435e-38) {  // subnormal: scale into the normal range first
        scaled = x * 8388608.0;
        e = -23;
    }
    let parts = frexp(scaled);
    var m = parts.fract;
    e += parts.exp;
    if (m < 0.707106781) {
        e -= 1;
        m = m + m - 1.0;
    } else {
        m = m - 1.0;
    }
    let z = m * m;
    var y = 7.0376836292e-2;
    y = y * m - 1.1514610310e-1;
    y = y * m + 1.1676998740e-1;
    y = y * m - 1.2420140846e-1;
    y = y * m + 1.4249322787e-1;
    y = y * m - 1.6668057665e-1;
    y = y * m + 2.0000714765e-1;
    y = y * m - 2.4999993993e-1;
    y = y * m + 3.3333331174e-1;
    y = y * m * z;
    let fe = f32(e);
    y += -2.12194440e-4 * fe;
    y += -0.5 * z;
    return m + y + 0.693359375 * fe;
}

// WGSL has no erf: Eigen's float rational x P(x^2) / Q(x^2) on x clamped to [-4, 4] (erf is
// 1 in float beyond), within 5e-7; NaN stays NaN.
fn erf_np(x: f32) -> f32 {
    if (is_nan(x)) { return x; }
    let c = clamp(x, -4.0, 4.0);
    let z = c * c;
    var p = -2.72614225801306e-10;
    p = p * z + 2.77068142495902e-08;
    p = p * z - 2.10102402082508e-06;
    p = p * z - 5.69250639462346e-05;
    p = p * z - 7.34990630326855e-04;
    p = p * z - 2.95459980854025e-03;
    p = p * z - 1.60960333262415e-02;
    var q = -1.45660718464996e-05;
    q = q * z - 2.13374055278905e-04;
    q = q * z - 1.68282697438203e-03;
    q = q * z - 7.37332916720468e-03;
    q = q * z - 1.42647390514189e-02;
    return c * p / q;
}

// gelu x Phi(x) and its derivative Phi(x) + x phi(x), Phi the normal CDF through erf.
fn gelu_np(x: f32) -> f32 { return x * 0.5 * (1.0 + erf_np(x * 0.707106781186547524)); }
fn gelu_grad_np(x: f32) -> f32 {
    let pdf = exp_np(x * x * -0.5) * 0.398942280401432678;
    return 0.5 * (1.0 + erf_np(x * 0.707106781186547524)) + x * pdf;
}
