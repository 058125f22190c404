// int64 on an adapter without 64-bit integers (no shader-int64: Mesa's OpenGL driver, many
// mobile GPUs): a vec2<u32> of (low word, high word), two's complement, wrapping as NumPy's
// int64 does. The elementwise and reduction rows call these by name (the host's
// PAIR_EXPRESSIONS); layout, fill and gather kernels only move the pairs.
fn wrap(x: vec2<u32>) -> vec2<u32> { return x; }

fn add64(x: vec2<u32>, y: vec2<u32>) -> vec2<u32> {
    let low = x.x + y.x;
    return vec2<u32>(low, x.y + y.y + select(0u, 1u, low < x.x));
}

fn sub64(x: vec2<u32>, y: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(x.x - y.x, x.y - y.y - select(0u, 1u, x.x < y.x));
}

// The full 64-bit product of two u32, from 16-bit halves.
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let middle = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return vec2<u32>((p00 & 0xffffu) | (middle << 16u),
                     a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (middle >> 16u));
}

// Modulo 2^64, so signed and unsigned products agree.
fn mul64(x: vec2<u32>, y: vec2<u32>) -> vec2<u32> {
    let low = mul_wide(x.x, y.x);
    return vec2<u32>(low.x, low.y + x.x * y.y + x.y * y.x);
}

fn negative64(x: vec2<u32>) -> bool { return bitcast<i32>(x.y) < 0; }

fn lt64(x: vec2<u32>, y: vec2<u32>) -> bool {
    let xh = bitcast<i32>(x.y);
    let yh = bitcast<i32>(y.y);
    return xh < yh || (xh == yh && x.x < y.x);
}

fn eq64(x: vec2<u32>, y: vec2<u32>) -> bool { return x.x == y.x && x.y == y.y; }

fn maximum_nan(x: vec2<u32>, y: vec2<u32>) -> vec2<u32> { return select(y, x, lt64(y, x)); }

fn neg_np(x: vec2<u32>) -> vec2<u32> { return sub64(vec2<u32>(0u, 0u), x); }

fn abs_np(x: vec2<u32>) -> vec2<u32> { return select(x, neg_np(x), negative64(x)); }

fn sign_np(x: vec2<u32>) -> vec2<u32> {
    if (negative64(x)) { return vec2<u32>(0xffffffffu, 0xffffffffu); }
    return vec2<u32>(select(0u, 1u, x.x != 0u || x.y != 0u), 0u);
}
