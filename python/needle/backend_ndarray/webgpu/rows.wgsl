// gather_rows and scatter_add_rows: n rows of row_size elements, picked by int64 row numbers
// that the host has checked (NDArray's RowIndices). The indices are read as u32 pairs, the
// low word of each (row numbers < 2^31), so these kernels need no 64-bit integers.

struct Params {
    n: u32,
    row_size: u32,
    size: u32,  // elements of out that get a thread
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<$T>;
@group(0) @binding(2) var<storage, read_write> indices: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<$T>;

//// gather
@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let e = flat_index(group, groups, local);
    if (e < p.size) {
        let i = e / p.row_size;
        out[e] = a[indices[2u * i] * p.row_size + (e - i * p.row_size)];
    }
}

//// scatter_add
// A thread per element of out's whole rows, adding the rows that name it in index order, so
// repeated indices add up as NumPy's np.add.at does, to the bit (no float atomics in WGSL).
@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let e = flat_index(group, groups, local);
    if (e < p.size) {
        let r = e / p.row_size;
        let j = e - r * p.row_size;
        var acc = out[e];
        var added = false;
        for (var i = 0u; i < p.n; i += 1u) {
            if (indices[2u * i] == r) {
                acc = wrap(acc + a[i * p.row_size + j]);
                added = true;
            }
        }
        if (added) { out[e] = acc; }
    }
}
