// Batched matmul of strided views on SIMD-group matrices (8 x 8 hardware MMA, Apple GPU
// family 7 = M1 and later), as matmul_simdgroup_float32 and _float16 (float16 operands widened
// to float as they are staged, float sums rounded once as they are stored). Compiled as a
// library of its own (with common.metal in front), so that GPUs without simdgroup_matrix still
// get every other kernel; the host falls back to matmul_threadgroup there. Same buffers as
// matmul_threadgroup: a [[buffer(0)]], b [[buffer(1)]], out [[buffer(2)]], params [[buffer(3)]]
// Grid: (ceil(p / SG_BN), ceil(m / SG_BM), batch) threadgroups of SG_THREADS threads.
//
// A threadgroup computes a 64 x 64 tile of out with four SIMD-groups in a 2 x 2 layout, each
// owning a 32 x 32 quarter as 4 x 4 accumulators of 8 x 8. Per step of SG_BK along n the
// threadgroup stages zero-padded tiles of a (64 x SG_BK) and b (SG_BK x 64) in threadgroup
// memory; each SIMD-group then loads 8 x 8 fragments from them and multiply-accumulates.
// Interior 8 x 8 blocks are stored straight to out; blocks that cross the matrix edge go
// through a per-SIMD-group scratch block and are written element by element.
#include <metal_simdgroup_matrix>

constant constexpr uint SG_BM = 64;
constant constexpr uint SG_BN = 64;
constant constexpr uint SG_BK = 16;
constant constexpr uint SG_THREADS = 128;  // 4 SIMD-groups of 32
constant constexpr uint SG_FRAGMENTS = 4;  // 8 x 8 fragments per SIMD-group and axis (32 / 8)

// An interior 8 x 8 block of float sums goes straight to float out; float16 out takes every
// block through the scratch block, rounded by bits (common.metal) as it is written.
inline bool store_block(simdgroup_float8x8 sums, device float* out, uint row_elements) {
  simdgroup_store(sums, out, row_elements);
  return true;
}
inline bool store_block(simdgroup_float8x8 sums, device half* out, uint row_elements) {
  return false;
}

template <typename T>
[[kernel]] void matmul_simdgroup(device const T* a [[buffer(0)]],
                                 device const T* b [[buffer(1)]],
                                 device T* out [[buffer(2)]],
                                 constant MatmulParams& params [[buffer(3)]],
                                 uint3 group [[threadgroup_position_in_grid]],
                                 uint t [[thread_index_in_threadgroup]],
                                 uint sg [[simdgroup_index_in_threadgroup]],
                                 uint lane [[thread_index_in_simdgroup]]) {
  threadgroup float a_tile[SG_BM * SG_BK];  // row-major SG_BM x SG_BK
  threadgroup float b_tile[SG_BK * SG_BN];  // row-major SG_BK x SG_BN
  threadgroup float edge[4][64];            // one 8 x 8 scratch block per SIMD-group

  const uint row0 = group.y * SG_BM;
  const uint col0 = group.x * SG_BN;
  device const T* a_batch = a + params.a_offset + int(group.z) * params.a_batch_stride;
  device const T* b_batch = b + params.b_offset + int(group.z) * params.b_batch_stride;
  const uint sg_row = (sg / 2) * 32;
  const uint sg_col = (sg % 2) * 32;

  simdgroup_float8x8 acc[SG_FRAGMENTS][SG_FRAGMENTS];
  for (uint i = 0; i < SG_FRAGMENTS; ++i) {
    for (uint j = 0; j < SG_FRAGMENTS; ++j) {
      acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
  }

  for (uint k0 = 0; k0 < params.n; k0 += SG_BK) {
    for (uint e = t; e < SG_BM * SG_BK; e += SG_THREADS) {
      const uint row = row0 + e / SG_BK;
      const uint kk = k0 + e % SG_BK;
      a_tile[e] = (row < params.m && kk < params.n)
          ? cast_to<float>::from(
                a_batch[int(row) * params.a_row_stride + int(kk) * params.a_col_stride])
          : 0.0f;
    }
    for (uint e = t; e < SG_BK * SG_BN; e += SG_THREADS) {
      const uint kk = k0 + e / SG_BN;
      const uint col = col0 + e % SG_BN;
      b_tile[e] = (kk < params.n && col < params.p)
          ? cast_to<float>::from(
                b_batch[int(kk) * params.b_row_stride + int(col) * params.b_col_stride])
          : 0.0f;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    for (uint k = 0; k < SG_BK; k += 8) {
      simdgroup_float8x8 a_frag[SG_FRAGMENTS];
      simdgroup_float8x8 b_frag[SG_FRAGMENTS];
      for (uint i = 0; i < SG_FRAGMENTS; ++i) {
        simdgroup_load(a_frag[i], a_tile + (sg_row + 8 * i) * SG_BK + k, SG_BK);
      }
      for (uint j = 0; j < SG_FRAGMENTS; ++j) {
        simdgroup_load(b_frag[j], b_tile + k * SG_BN + sg_col + 8 * j, SG_BN);
      }
      for (uint i = 0; i < SG_FRAGMENTS; ++i) {
        for (uint j = 0; j < SG_FRAGMENTS; ++j) {
          simdgroup_multiply_accumulate(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
        }
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  // The branches below depend only on sg, i and j: uniform across each SIMD-group, as the
  // simdgroup_* functions require.
  device T* out_batch = out + ulong(group.z) * params.m * params.p;
  for (uint i = 0; i < SG_FRAGMENTS; ++i) {
    for (uint j = 0; j < SG_FRAGMENTS; ++j) {
      const uint row = row0 + sg_row + 8 * i;
      const uint col = col0 + sg_col + 8 * j;
      if (row >= params.m || col >= params.p) continue;
      const bool interior = row + 8 <= params.m && col + 8 <= params.p;
      if (!interior || !store_block(acc[i][j], out_batch + ulong(row) * params.p + col, params.p)) {
        simdgroup_store(acc[i][j], &edge[sg][0], 8);
        simdgroup_barrier(mem_flags::mem_threadgroup);
        for (uint e = lane; e < 64; e += 32) {
          const uint r = row + e / 8;
          const uint c = col + e % 8;
          if (r < params.m && c < params.p) {
            out_batch[ulong(r) * params.p + c] = cast_to<T>::from(edge[sg][e]);
          }
        }
        // The next edge block reuses the scratch: all lanes must have read this one.
        simdgroup_barrier(mem_flags::mem_threadgroup);
      }
    }
  }
}

NEEDLE_FLOATS(NEEDLE_TYPED, matmul_simdgroup)
NEEDLE_HALF(NEEDLE_TYPED, matmul_simdgroup)
