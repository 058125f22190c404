// astype: out = a converted to out's dtype, in integer arithmetic (bit-exact on every
// driver, no 64-bit integers needed). Every element goes through one of two forms: a float
// as the bits of an f32 (float16 widens exactly), an integer or bool as an int64 pair
// (low word, high word). The host substitutes $A and $B (the storage words of a and out:
// u32, or vec2<u32> for int64, whose i64 storage is the same bytes), $LOAD (element i of a
// in its form) and $CONVERT (that form, x, as out's word). A thread converts elements 2t
// and 2t + 1, so that float16 out (two elements per u32 word) is written a word at a time.

struct Params {
    size: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<$A>;
@group(0) @binding(2) var<storage, read_write> out: array<$B>;

fn neg64(x: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(~x.x + 1u, ~x.y + select(0u, 1u, x.x == 0u));
}

// Truncated toward zero; NaN, infinities and |x| >= 2^63 give x86's "integer indefinite"
// (-2^63), which is NumPy's result there.
fn f32_to_i64(f: u32) -> vec2<u32> {
    let e = (f >> 23u) & 0xffu;  // x = m * 2^(e - 150)
    let m = (f & 0x7fffffu) | 0x800000u;
    var v = vec2<u32>(0u, 0u);
    if (e >= 190u) { return vec2<u32>(0u, 0x80000000u); }
    if (e < 127u) { return v; }  // |x| < 1
    if (e < 150u) {
        v.x = m >> (150u - e);
    } else if (e < 182u) {
        v = vec2<u32>(m << (e - 150u), select(0u, m >> (182u - e), e > 150u));
    } else {
        v.y = m << (e - 182u);
    }
    return select(v, neg64(v), (f >> 31u) == 1u);
}

// Out of int32's range: -2^31, as NumPy's float to int32 cast on x86.
fn f32_to_i32(f: u32) -> u32 {
    let v = f32_to_i64(f);
    return select(0x80000000u, v.x, v.y == select(0u, 0xffffffffu, (v.x >> 31u) == 1u));
}

// Rounded to nearest even.
fn i64_to_f32(x: vec2<u32>) -> u32 {
    let sign = x.y & 0x80000000u;
    let m = select(x, neg64(x), sign != 0u);  // |x| (2^63 for -2^63, unsigned)
    if ((m.x | m.y) == 0u) { return 0u; }
    // Shift the leading 1 to bit 63: 24 bits kept (bits 63-40), the rest rounds.
    let lz = select(countLeadingZeros(m.y), 32u + countLeadingZeros(m.x), m.y == 0u);
    var hi = m.y;
    var lo = m.x;
    if (lz >= 32u) {
        hi = m.x << (lz - 32u);
        lo = 0u;
    } else if (lz > 0u) {
        hi = (m.y << lz) | (m.x >> (32u - lz));
        lo = m.x << lz;
    }
    let kept = hi >> 8u;
    let rest = hi & 0xffu;
    let up = rest > 0x80u || (rest == 0x80u && (lo != 0u || (kept & 1u) == 1u));
    // kept holds the implicit 1 (2^23): added to exponent - 1, a rounding carry raises it.
    return sign | (((189u - lz) << 23u) + kept + select(0u, 1u, up));
}

fn load(i: u32) -> $MID {
    return $LOAD;
}

fn convert(x: $MID) -> $B {
    return $CONVERT;
}

//// half
@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let t = flat_index(group, groups, local);
    let i = 2u * t;
    if (i < p.size) {
        var high = out[t] >> 16u;  // past the last element of an odd size: kept
        if (i + 1u < p.size) { high = convert(load(i + 1u)); }
        out[t] = convert(load(i)) | (high << 16u);
    }
}

//// words
@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let i = 2u * flat_index(group, groups, local);
    if (i < p.size) {
        out[i] = convert(load(i));
        if (i + 1u < p.size) { out[i + 1u] = convert(load(i + 1u)); }
    }
}
