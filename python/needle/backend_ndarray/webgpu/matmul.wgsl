// out (batch, m, p) = a (batch, m, n) @ b (batch, n, p) for strided views of a and b (strides
// (batch, row, column) >= 0, 0 for broadcast axes) into a compact out: every matmul primitive
// of the table. A workgroup computes a 64 x 64 tile of out, 256 threads (16 x 16), each a
// 4 x 4 block held in registers; the k axis goes in steps of 16 through two tiles in
// workgroup memory, which each thread reads 4 + 4 values of per step and multiplies into
// its 16 accumulators (a 4x register blocking: 8 loads for 16 fused multiply-adds).
// Edge tiles are zero-padded on load and masked on store. $T is f32, or f16 (float16:
// loaded into f32 tiles, summed in f32, rounded once on store by $ROUND of x).

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

struct Params {
    batch: u32,
    m: u32,
    n: u32,
    p: u32,
    a_offset: i32,
    a_batch_stride: i32,
    a_row_stride: i32,
    a_col_stride: i32,
    b_offset: i32,
    b_batch_stride: i32,
    b_row_stride: i32,
    b_col_stride: i32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<$T>;
@group(0) @binding(2) var<storage, read_write> b: array<$T>;
@group(0) @binding(3) var<storage, read_write> out: array<$T>;

// a_tile is k-major (the inner loop reads a column of it); b_tile row-major.
var<workgroup> a_tile: array<array<f32, BM>, BK>;
var<workgroup> b_tile: array<array<f32, BN>, BK>;

fn rounded(x: f32) -> $T {
    return $ROUND;
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let row0 = group.y * BM;
    let col0 = group.x * BN;
    let a_base = p.a_offset + i32(group.z) * p.a_batch_stride;
    let b_base = p.b_offset + i32(group.z) * p.b_batch_stride;
    let tx = t % 16u;
    let ty = t / 16u;

    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < p.n; k0 += BK) {
        // Consecutive threads take consecutive k of a and consecutive columns of b, so compact
        // operands are read in contiguous runs.
        for (var e = t; e < BM * BK; e += THREADS) {
            let r = e / BK;
            let k = e % BK;
            let row = row0 + r;
            let kk = k0 + k;
            var v = 0.0;
            if (row < p.m && kk < p.n) {
                v = f32(a[a_base + i32(row) * p.a_row_stride + i32(kk) * p.a_col_stride]);
            }
            a_tile[k][r] = v;
        }
        for (var e = t; e < BK * BN; e += THREADS) {
            let k = e / BN;
            let c = e % BN;
            let kk = k0 + k;
            let col = col0 + c;
            var v = 0.0;
            if (kk < p.n && col < p.p) {
                v = f32(b[b_base + i32(kk) * p.b_row_stride + i32(col) * p.b_col_stride]);
            }
            b_tile[k][c] = v;
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k += 1u) {
            var a_reg: array<f32, 4>;
            var b_reg: array<f32, 4>;
            for (var i = 0u; i < 4u; i += 1u) { a_reg[i] = a_tile[k][ty + 16u * i]; }
            for (var j = 0u; j < 4u; j += 1u) { b_reg[j] = b_tile[k][tx + 16u * j]; }
            for (var i = 0u; i < 4u; i += 1u) {
                for (var j = 0u; j < 4u; j += 1u) {
                    acc[i][j] = fma(a_reg[i], b_reg[j], acc[i][j]);
                }
            }
        }
        // The next step overwrites the tiles: everyone must be done reading them.
        workgroupBarrier();
    }

    let out_base = group.z * p.m * p.p;
    for (var i = 0u; i < 4u; i += 1u) {
        let row = row0 + ty + 16u * i;
        if (row < p.m) {
            for (var j = 0u; j < 4u; j += 1u) {
                let col = col0 + tx + 16u * j;
                if (col < p.p) { out[out_base + row * p.p + col] = rounded(acc[i][j]); }
            }
        }
    }
}
