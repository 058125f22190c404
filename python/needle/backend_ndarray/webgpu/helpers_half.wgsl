// float16 (the shader-f16 feature): stored as f16, computed in f32. Conversions between
// the bits of an f32 and of an f16 in integer arithmetic, NumPy's to the bit: drivers may
// flush subnormals, round otherwise or canonicalise NaNs (lavapipe returns 0x7e00 for every
// NaN and quiets signalling ones), and NumPy keeps NaN payloads.
fn half_to_f32_bits(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 31u) { return sign | 0x7f800000u | (m << 13u); }  // infinities, NaNs
    if (e != 0u) { return sign | ((e + 112u) << 23u) | (m << 13u); }
    if (m == 0u) { return sign; }
    let top = firstLeadingBit(m);  // a subnormal: m * 2^-24 = 2^(top - 24) * 1.f
    return sign | ((top + 103u) << 23u) | ((m << (23u - top)) & 0x7fffffu);
}

// Round to nearest even; overflow is infinity; a NaN keeps the top 10 bits of its payload,
// and 1 where those are 0 (as NumPy's npy_floatbits_to_halfbits).
fn f32_to_half_bits(f: u32) -> u32 {
    let sign = (f >> 16u) & 0x8000u;
    let e = (f >> 23u) & 0xffu;
    let m = f & 0x7fffffu;
    if (e == 255u) { return sign | 0x7c00u | select(0u, max(m >> 13u, 1u), m != 0u); }
    if (e >= 143u) { return sign | 0x7c00u; }  // |x| >= 2^16
    var kept: u32;
    var rest: u32;
    var half: u32;
    if (e > 112u) {  // a normal f16
        kept = ((e - 112u) << 10u) | (m >> 13u);
        rest = m & 0x1fffu;
        half = 0x1000u;
    } else {  // a subnormal f16 (units of 2^-24), or 0 below 2^-25
        if (e < 102u) { return sign; }
        let shift = 126u - e;  // 14 to 24
        kept = (m | 0x800000u) >> shift;
        rest = (m | 0x800000u) & ((1u << shift) - 1u);
        half = 1u << (shift - 1u);
    }
    // A carry out of the mantissa raises the exponent, up to infinity: the right result.
    return sign | (kept + select(0u, 1u, rest > half || (rest == half && (kept & 1u) == 1u)));
}
