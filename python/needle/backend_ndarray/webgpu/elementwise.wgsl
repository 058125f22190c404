// The elementwise families: one thread per element of a compact out. Each section below
// ("//// name") is one kernel; the host substitutes $EXPR, the operator of one row of the
// primitive table over x (= a[i]) and y (= b[i] or the scalar), and $R, out's storage type
// ($T, or u32 for the bool that comparisons write).

// fill, unary, binary and scalar take these parameters.
struct Params {
    size: u32,
    value: $T,  // scalar_*: the scalar, already in the array's type; fill: the value
}

//// fill
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<$T>;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let i = flat_index(group, groups, local);
    if (i < p.size) { out[i] = p.value; }
}

//// unary
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<$T>;
@group(0) @binding(2) var<storage, read_write> out: array<$R>;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let i = flat_index(group, groups, local);
    if (i < p.size) {
        let x = a[i];
        out[i] = $EXPR;
    }
}

//// binary
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<$T>;
@group(0) @binding(2) var<storage, read_write> b: array<$T>;
@group(0) @binding(3) var<storage, read_write> out: array<$R>;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let i = flat_index(group, groups, local);
    if (i < p.size) {
        let x = a[i];
        let y = b[i];
        out[i] = $EXPR;
    }
}

//// scalar
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<$T>;
@group(0) @binding(2) var<storage, read_write> out: array<$R>;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let i = flat_index(group, groups, local);
    if (i < p.size) {
        let x = a[i];
        let y = p.value;
        out[i] = $EXPR;
    }
}

//// broadcast
// ewise_broadcast_binary: out = op(full, vector repeated). The vector has `inner` elements
// repeated over rows (per_column = 1: index i % inner) or one element per row of `inner`
// elements (per_column = 0: index i / inner); operands swapped when vector_first.
struct Broadcast {
    size: u32,
    inner: u32,
    per_column: u32,
    vector_first: u32,
}
@group(0) @binding(0) var<uniform> p: Broadcast;
@group(0) @binding(1) var<storage, read_write> full: array<$T>;
@group(0) @binding(2) var<storage, read_write> vector: array<$T>;
@group(0) @binding(3) var<storage, read_write> out: array<$R>;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let i = flat_index(group, groups, local);
    if (i < p.size) {
        let v = vector[select(i / p.inner, i % p.inner, p.per_column != 0u)];
        let f = full[i];
        let x = select(f, v, p.vector_first != 0u);
        let y = select(v, f, p.vector_first != 0u);
        out[i] = $EXPR;
    }
}

//// axpby
// out = alpha * a + beta * b; `out` may be the buffer of `a` or `b` (the optimizers'
// in-place update): each thread reads its elements before writing.
struct Coefficients {
    size: u32,
    alpha: f32,
    beta: f32,
}
@group(0) @binding(0) var<uniform> p: Coefficients;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let i = flat_index(group, groups, local);
    if (i < p.size) {
        out[i] = p.alpha * a[i] + p.beta * b[i];
    }
}
