// Batched matmul of strided views, tiled in threadgroup memory (portable: any Metal GPU), as
// matmul_threadgroup_float32 and matmul_threadgroup_float16 (operands widened to float as they
// are staged: float sums, each rounded once to float16 as it is stored).
// Buffer indices: a [[buffer(0)]], b [[buffer(1)]], out [[buffer(2)]], params [[buffer(3)]]
// (a MatmulParams). Grid: (ceil(p / MM_BN), ceil(m / MM_BM), batch) threadgroups of
// MM_THREADS threads.
//
// Each threadgroup computes a MM_BM x MM_BN tile of out. Per step of MM_BK along n it stages
// a MM_BM x MM_BK tile of a and a MM_BK x MM_BN tile of b in threadgroup memory (zero-padded
// past the matrix edges, so the inner loop has no bounds checks), then each of its 16 x 16
// threads accumulates a 4 x 4 block of outputs in registers: 8 threadgroup loads per 16
// fused multiply-adds. Thread (tx, ty) owns rows ty + 16 i and columns tx + 16 j, so the
// 16 threads of a row read 16 consecutive floats of b_tile and write 16 consecutive floats
// of out. Operands are read through their strides (transposed and batch-broadcast views
// need no copy); staging absorbs the uncoalesced reads of transposed operands.

constant constexpr uint MM_BM = 64;
constant constexpr uint MM_BN = 64;
constant constexpr uint MM_BK = 16;
constant constexpr uint MM_THREADS = 256;  // 16 x 16
constant constexpr uint MM_PER_THREAD = 4; // each thread: 4 x 4 outputs

template <typename T>
[[kernel]] void matmul_threadgroup(device const T* a [[buffer(0)]],
                                   device const T* b [[buffer(1)]],
                                   device T* out [[buffer(2)]],
                                   constant MatmulParams& params [[buffer(3)]],
                                   uint3 group [[threadgroup_position_in_grid]],
                                   uint t [[thread_index_in_threadgroup]]) {
  // a_tile is k-major (the inner loop reads a column of it); +1 column of padding so that the
  // staging stores, 16 consecutive threads down a column, hit 16 different banks.
  threadgroup float a_tile[MM_BK][MM_BM + 1];
  threadgroup float b_tile[MM_BK][MM_BN];

  const uint row0 = group.y * MM_BM;
  const uint col0 = group.x * MM_BN;
  device const T* a_batch = a + params.a_offset + int(group.z) * params.a_batch_stride;
  device const T* b_batch = b + params.b_offset + int(group.z) * params.b_batch_stride;
  const uint tx = t % 16;
  const uint ty = t / 16;

  float acc[MM_PER_THREAD][MM_PER_THREAD];
  for (uint i = 0; i < MM_PER_THREAD; ++i) {
    for (uint j = 0; j < MM_PER_THREAD; ++j) acc[i][j] = 0.0f;
  }

  for (uint k0 = 0; k0 < params.n; k0 += MM_BK) {
    // Consecutive threads take consecutive k of a (a row of a row-major a) and consecutive
    // columns of b, so compact operands are read in contiguous runs.
    for (uint e = t; e < MM_BM * MM_BK; e += MM_THREADS) {
      const uint r = e / MM_BK;
      const uint k = e % MM_BK;
      const uint row = row0 + r;
      const uint kk = k0 + k;
      a_tile[k][r] = (row < params.m && kk < params.n)
          ? cast_to<float>::from(
                a_batch[int(row) * params.a_row_stride + int(kk) * params.a_col_stride])
          : 0.0f;
    }
    for (uint e = t; e < MM_BK * MM_BN; e += MM_THREADS) {
      const uint k = e / MM_BN;
      const uint c = e % MM_BN;
      const uint kk = k0 + k;
      const uint col = col0 + c;
      b_tile[k][c] = (kk < params.n && col < params.p)
          ? cast_to<float>::from(
                b_batch[int(kk) * params.b_row_stride + int(col) * params.b_col_stride])
          : 0.0f;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    for (uint k = 0; k < MM_BK; ++k) {
      float a_reg[MM_PER_THREAD];
      float b_reg[MM_PER_THREAD];
      for (uint i = 0; i < MM_PER_THREAD; ++i) a_reg[i] = a_tile[k][ty + 16 * i];
      for (uint j = 0; j < MM_PER_THREAD; ++j) b_reg[j] = b_tile[k][tx + 16 * j];
      for (uint i = 0; i < MM_PER_THREAD; ++i) {
        for (uint j = 0; j < MM_PER_THREAD; ++j) acc[i][j] = fma(a_reg[i], b_reg[j], acc[i][j]);
      }
    }
    // The next step overwrites the tiles: everyone must be done reading them.
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  device T* out_batch = out + ulong(group.z) * params.m * params.p;
  for (uint i = 0; i < MM_PER_THREAD; ++i) {
    const uint row = row0 + ty + 16 * i;
    if (row >= params.m) break;
    for (uint j = 0; j < MM_PER_THREAD; ++j) {
      const uint col = col0 + tx + 16 * j;
      if (col < params.p) out_batch[ulong(row) * params.p + col] = cast_to<T>::from(acc[i][j]);
    }
  }
}

NEEDLE_FLOATS(NEEDLE_TYPED, matmul_threadgroup)
NEEDLE_HALF(NEEDLE_TYPED, matmul_threadgroup)
