// compact, ewise_setitem and scalar_setitem: one thread per element of a strided view of
// up to 16 axes (the host simplifies views first: NDArray's have a handful). Element i of the
// view (row-major) lies at offset + sum(index_k * stride_k), strides signed.

struct Params {
    size: u32,
    ndim: u32,
    offset: i32,
    shape: array<vec4<u32>, 4>,  // at byte 16
    strides: array<vec4<i32>, 4>,  // at byte 80
    value: $T,  // at byte 144: scalar_setitem's value
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<$T>;
@group(0) @binding(2) var<storage, read_write> out: array<$T>;

fn storage_index(flat: u32) -> u32 {
    var i = flat;
    var index = p.offset;
    for (var axis = p.ndim; axis > 0u; axis -= 1u) {
        let k = axis - 1u;
        let dim = p.shape[k / 4u][k % 4u];
        index += i32(i % dim) * p.strides[k / 4u][k % 4u];
        i /= dim;
    }
    return u32(index);
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let i = flat_index(group, groups, local);
    if (i < p.size) {
        $BODY
    }
}
