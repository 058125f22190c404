// Kernels that test the emulation itself (tests/test_metal_kernels.py, "harness" section).
// Not part of needle: they exist to show that the launcher delivers positions, shares
// threadgroup memory, exchanges SIMD-group values and reports misuse as a GPU would not.

// 11 uints per thread at its linear index in the grid: every built-in position.
kernel void selftest_positions(device uint* out [[buffer(0)]],
                               uint3 grid_pos [[thread_position_in_grid]],
                               uint3 group [[threadgroup_position_in_grid]],
                               uint3 local [[thread_position_in_threadgroup]],
                               uint3 group_size [[threads_per_threadgroup]],
                               uint3 groups [[threadgroups_per_grid]],
                               uint t [[thread_index_in_threadgroup]],
                               uint sg [[simdgroup_index_in_threadgroup]],
                               uint lane [[thread_index_in_simdgroup]]) {
  const uint width = groups.x * group_size.x;
  const uint height = groups.y * group_size.y;
  const uint linear = (grid_pos.z * height + grid_pos.y) * width + grid_pos.x;
  device uint* o = out + linear * 11;
  o[0] = grid_pos.x; o[1] = grid_pos.y; o[2] = grid_pos.z;
  o[3] = group.x; o[4] = group.y; o[5] = group.z;
  o[6] = local.x; o[7] = local.y;
  o[8] = t; o[9] = sg; o[10] = lane;
}

// Reverses each threadgroup's block of 64 through threadgroup memory.
kernel void selftest_reverse(device const float* in [[buffer(0)]],
                             device float* out [[buffer(1)]],
                             uint group [[threadgroup_position_in_grid]],
                             uint t [[thread_position_in_threadgroup]]) {
  threadgroup float block[64];
  block[t] = in[group * 64 + t];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[group * 64 + t] = block[63 - t];
}

// Wrong on purpose: threads 5 and up return before a barrier the others wait at.
kernel void selftest_early_return(device float* out [[buffer(0)]],
                                  uint t [[thread_index_in_threadgroup]]) {
  if (t >= 5) return;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[t] = 1.0f;
}

// Wrong on purpose: threads 0-15 wait at one barrier and the others at the next.
kernel void selftest_two_barriers(device float* out [[buffer(0)]],
                                  uint t [[thread_index_in_threadgroup]]) {
  if (t < 16) threadgroup_barrier(mem_flags::mem_threadgroup);
  out[t] = 1.0f;
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

// Wrong on purpose: writes one element past `size`.
kernel void selftest_out_of_bounds(device float* out [[buffer(0)]],
                                   constant uint& size [[buffer(1)]],
                                   uint i [[thread_position_in_grid]]) {
  if (i == 0) out[size] = 1.0f;
}

// SIMD-group functions over x = in[t]: 4 results per thread.
kernel void selftest_simd(device const float* in [[buffer(0)]],
                          device float* out [[buffer(1)]],
                          uint t [[thread_index_in_threadgroup]]) {
  const float x = in[t];
  const float sum = simd_sum(x);
  const float biggest = simd_max(x);
  const float down = simd_shuffle_down(x, 1);
  const float third = simd_broadcast(x, 3);
  out[4 * t + 0] = sum;
  out[4 * t + 1] = biggest;
  out[4 * t + 2] = down;
  out[4 * t + 3] = third;
}

// out = a @ b + c for 8 x 8 row-major matrices; out2 = a^T @ b (a loaded transposed).
kernel void selftest_simdgroup_matrix(device const float* a [[buffer(0)]],
                                      device const float* b [[buffer(1)]],
                                      device const float* c [[buffer(2)]],
                                      device float* out [[buffer(3)]],
                                      device float* out2 [[buffer(4)]],
                                      uint lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 ma, mb, mc, at;
  simdgroup_load(ma, a, 8);
  simdgroup_load(mb, b, 8);
  simdgroup_load(mc, c, 8);
  simdgroup_load(at, a, 8, ulong2(0, 0), true);
  simdgroup_multiply_accumulate(mc, ma, mb, mc);
  simdgroup_store(mc, out, 8);
  simdgroup_multiply(at, at, mb);
  simdgroup_store(at, out2, 8);
}
