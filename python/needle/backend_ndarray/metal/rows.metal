// Rows by index: gather_rows (an embedding lookup: out row i = a row indices[i]) and
// scatter_add_rows (its gradient: out row indices[i] += a row i). Rows are row_size elements
// (gather_rows: every dtype, as gather_rows_DTYPE; scatter_add_rows_float32); indices are
// int64 row numbers (long), in range (NDArray checks).
// Buffer indices (both kernels): a [[buffer(0)]], indices [[buffer(1)]], out [[buffer(2)]],
// shape [[buffer(3)]] (a RowsShape).

// One thread per element of out's n rows: neighbouring threads copy neighbouring columns.
template <typename T>
[[kernel]] void gather_rows(device const T* a [[buffer(0)]],
                            device const long* indices [[buffer(1)]],
                            device T* out [[buffer(2)]],
                            constant RowsShape& shape [[buffer(3)]],
                            uint e [[thread_position_in_grid]]) {
  if (e < shape.size) {
    const uint i = e / shape.row_size;
    out[e] = a[uint(indices[i]) * shape.row_size + (e - i * shape.row_size)];
  }
}

// One thread per element of out (row r, column j), which walks all n indices and adds the
// rows of a sent to r, in index order, onto what out holds. Deterministic, without float
// atomics (atomic_float needs Metal 3), and the same additions in the same order as NumPy's
// np.add.at. The price: rows * row_size * n index reads and comparisons (every thread of a
// SIMD-group reads the same index, from cache), far more work than the n * row_size additions
// of an atomic scatter.
template <typename T>
[[kernel]] void scatter_add_rows(device const T* a [[buffer(0)]],
                                 device const long* indices [[buffer(1)]],
                                 device T* out [[buffer(2)]],
                                 constant RowsShape& shape [[buffer(3)]],
                                 uint e [[thread_position_in_grid]]) {
  if (e < shape.size) {
    const uint r = e / shape.row_size;
    const uint j = e - r * shape.row_size;
    T acc = out[e];
    bool added = false;
    for (uint i = 0; i < shape.n; ++i) {
      if (uint(indices[i]) == r) {
        acc += a[i * shape.row_size + j];
        added = true;
      }
    }
    if (added) out[e] = acc;  // only the rows some index names are written back
  }
}

NEEDLE_HELD(NEEDLE_TYPED, gather_rows)
NEEDLE_FLOATS(NEEDLE_TYPED, scatter_add_rows)
