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

// Split by sign so that exp never overflows.
fn sigmoid_np(x: f32) -> f32 {
    let e = exp(-abs(x));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}

// tanh through exp(-2|x|) away from 0 (some drivers' tanh is (e^2x - 1) / (e^2x + 1): NaN
// past |x| = 44); the built-in near 0, where that form loses digits.
fn tanh_np(x: f32) -> f32 {
    if (is_nan(x)) { return x; }
    if (abs(x) < 0.5) { return tanh(x); }
    let e = exp(-2.0 * abs(x));
    let t = (1.0 - e) / (1.0 + e);
    return select(t, -t, x < 0.0);
}
