// Reductions of a compact (outer, reduce_size, inner) array over its middle axis; the host
// substitutes $COMBINE (wrap(x + y) for sum, maximum_nan(x, y) for max) and $FIRST, the
// value a row starts from ($T(0) for sum; for max the row's first element, so that no
// "lowest value" of each type is needed). Three kernels, chosen by the host per shape:
//   serial: inner = 1 and short rows (<= 64): a thread per row;
//   axis:   inner > 1: a thread per (outer, inner) output, reading down the axis (consecutive
//           threads read consecutive elements);
//   rows:   inner = 1 and long rows: a workgroup per row, a tree in workgroup memory (or
//           subgroupAdd for float32 sums where the adapter has subgroups: rows_subgroup;
//           not for max, as subgroupMax leaves NaN undefined and NumPy's max propagates it).

struct Params {
    outer: u32,
    reduce_size: u32,
    inner: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<$T>;
@group(0) @binding(2) var<storage, read_write> out: array<$T>;

fn combine(x: $T, y: $T) -> $T { return $COMBINE; }

//// serial
@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let row = flat_index(group, groups, local);
    if (row >= p.outer) { return; }
    let start = row * p.reduce_size;
    var acc = $FIRST;
    for (var i = 0u; i < p.reduce_size; i += 1u) { acc = combine(acc, a[start + i]); }
    out[row] = acc;
}

//// axis
@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let i = flat_index(group, groups, local);
    if (i >= p.outer * p.inner) { return; }
    let o = i / p.inner;
    let start = o * p.reduce_size * p.inner + (i - o * p.inner);
    var acc = $FIRST;
    for (var r = 0u; r < p.reduce_size; r += 1u) { acc = combine(acc, a[start + r * p.inner]); }
    out[i] = acc;
}

//// rows
var<workgroup> partial: array<$T, THREADS>;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
    // `row` depends only on the workgroup, so every thread of a workgroup takes the same path
    // through the barriers below (and a spare workgroup of a folded grid returns as one).
    let row = group.y * groups.x + group.x;
    if (row >= p.outer) { return; }
    let start = row * p.reduce_size;
    var acc = $FIRST;
    for (var i = t; i < p.reduce_size; i += THREADS) { acc = combine(acc, a[start + i]); }
    partial[t] = acc;
    workgroupBarrier();
    for (var half_width = THREADS / 2u; half_width > 0u; half_width /= 2u) {
        if (t < half_width) { partial[t] = combine(partial[t], partial[t + half_width]); }
        workgroupBarrier();
    }
    if (t == 0u) { out[row] = partial[0]; }
}

//// rows_subgroup
// One subgroupAdd per subgroup, then the first thread adds the partial sums (at most 32:
// subgroups have 8 to 128 threads). Subgroups are taken to be consecutive local indices.
var<workgroup> partial: array<$T, 32>;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) t: u32, @builtin(subgroup_size) width: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    let row = group.y * groups.x + group.x;
    if (row >= p.outer) { return; }
    let start = row * p.reduce_size;
    var acc = $FIRST;
    for (var i = t; i < p.reduce_size; i += THREADS) { acc = combine(acc, a[start + i]); }
    let total = subgroupAdd(acc);
    if (lane == 0u) { partial[t / width] = total; }
    workgroupBarrier();
    if (t == 0u) {
        var sum = partial[0];
        for (var s = 1u; s < THREADS / width; s += 1u) { sum = combine(sum, partial[s]); }
        out[row] = sum;
    }
}
