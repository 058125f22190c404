// Prepended to every kernel of needle's WebGPU backend (ndarray_backend_webgpu.py builds one
// shader module per kernel and element type from these files).
//
// Conventions. WGSL has no templates: the host substitutes $T, the storage type of the
// element (f32, i32, i64; u32 for uint8 and bool, which WGSL cannot store in 8 bits: one
// element per 32-bit word, and uint8 results are wrapped to 8 bits by `wrap`), and appends
// the helpers of that type's kind (helpers_float.wgsl, helpers_int.wgsl,
// helpers_byte.wgsl). Binding 0 is the kernel's parameters (a uniform struct at a dynamic
// offset of the host's uniform ring); bindings 1.. are the arrays, in the order of the
// primitive's parameters, all read_write storage so that `out` may alias an input (the
// optimizers' in-place updates). Sizes, shapes and strides are in elements and fit in 32 bits
// (the host checks). A grid too large for one dimension (65,535 workgroups) is folded into
// two: `flat_index` undoes that.

const THREADS: u32 = 256u;

fn flat_index(group: vec3<u32>, groups: vec3<u32>, local: u32) -> u32 {
    return (group.y * groups.x + group.x) * THREADS + local;
}
