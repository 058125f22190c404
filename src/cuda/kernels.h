// The CUDA backend's kernels behind a plain C++ interface: raw device pointers, sizes,
// strides and offsets in elements, a dtype tag. No CUDA types, so the host table
// (src/cuda/host_table.cc) compiles with nvcc into the module and with g++ into the tests'
// CPU emulation (tests/cuda_emulation), over the same kernels. Every function queues its
// kernels on the backend's stream and returns.

#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace needle {
namespace cuda {

// The dtypes of the primitive table (primitives.DTYPES), in its order; bool is one byte, 0 or 1.
enum class DType { f32, f64, i32, i64, u8, b8, f16, bf16 };
constexpr int kDTypes = 8;

// The 16-bit floats are stored as their bit patterns (IEEE binary16; bfloat16, the top half
// of a float32). Kernels that compute with them convert to float32 and back (convert.cuh,
// bit for bit as NumPy and ml_dtypes); the rows that only move data copy the 2 bytes.
struct float16 { uint16_t bits; };
struct bfloat16 { uint16_t bits; };

// The C++ type of each dtype, its name and its size: the one place they are listed.
template <class T> struct DTypeOf;  // (no dtype for any other type)
template <> struct DTypeOf<float> { static constexpr DType value = DType::f32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::f64; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::i32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::i64; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::u8; };
template <> struct DTypeOf<bool> { static constexpr DType value = DType::b8; };
template <> struct DTypeOf<float16> { static constexpr DType value = DType::f16; };
template <> struct DTypeOf<bfloat16> { static constexpr DType value = DType::bf16; };
template <class T> constexpr DType dtype_of = DTypeOf<T>::value;

inline const char* dtype_name(DType dt) {
  constexpr const char* names[kDTypes] = {"float32", "float64", "int32",   "int64",
                                          "uint8",   "bool",    "float16", "bfloat16"};
  return names[static_cast<int>(dt)];
}
inline size_t itemsize(DType dt) {
  constexpr size_t sizes[kDTypes] = {4, 8, 4, 8, 1, 1, 2, 2};
  return sizes[static_cast<int>(dt)];
}

// Python's TypeError: an argument of a dtype the primitive does not take.
class TypeError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// A set of dtypes as a list of C++ types: the sets the primitive table's rows take
// (primitives.py FLOATS, NUMERIC, COMPUTED, DTYPES, MATMUL_DTYPES and the sums' SUM_DTYPES).
// A primitive states its set once: the host table checks a call's dtype against it
// (DTypeSet, a TypeError naming the primitive) and the kernels are instantiated for exactly
// its types (with_dtype).
template <class... T> struct Types {};
using Floats = Types<float, double>;
using Numeric = Types<float, double, int32_t, int64_t, uint8_t>;
using Computed = Types<float, double, int32_t, int64_t, uint8_t, bool>;
using AllTypes = Types<float, double, int32_t, int64_t, uint8_t, bool, float16, bfloat16>;
using MatmulTypes = Types<float, double, float16, bfloat16>;
using SumTypes = Types<float, double, int64_t>;

// A set of dtypes at run time (a bit per dtype).
struct DTypeSet {
  unsigned bits;
  bool has(DType dt) const { return (bits >> static_cast<int>(dt)) & 1u; }
};
template <class... T> constexpr DTypeSet dtype_set(Types<T...>) {
  DTypeSet set{0};
  set.bits = ((1u << static_cast<unsigned>(dtype_of<T>)) | ...);
  return set;
}

namespace detail {
template <class F, class T, class... Rest> decltype(auto) dispatch(DType dt, F& f) {
  if (dt == dtype_of<T>) return f(T());
  if constexpr (sizeof...(Rest) > 0) {
    return dispatch<F, Rest...>(dt, f);
  } else {  // the host table checks dtypes first: reached only by a bug
    throw TypeError(std::string("no kernel for dtype ") + dtype_name(dt));
  }
}
template <class F, class... T> decltype(auto) dispatch_list(DType dt, F& f, Types<T...>) {
  return dispatch<F, T...>(dt, f);
}
}  // namespace detail

// f(T()) with T the C++ type of dt, one of the set's: the one place a dtype tag becomes a
// type, once per call (never per element).
template <class Set, class F> decltype(auto) with_dtype(DType dt, F&& f) {
  return detail::dispatch_list(dt, f, Set());
}

using Shape = std::vector<int64_t>;

// ---- launch planning (host arithmetic; exposed to Python for the tests) ---------------

// Threads per block of the memory-bound kernels: 8 warps, enough independent loads in
// flight per SM once several blocks are resident, and a multiple of 32 as the warp
// shuffles need.
constexpr int kBlockThreads = 256;
// A grid-stride kernel gets at most this many blocks per SM: 2048 resident threads per
// SM (Volta to Hopper) are 8 blocks of 256, times 4 waves so that blocks finishing early
// are replaced without a tail of idle SMs.
constexpr int kBlocksPerSm = 32;

// Blocks for a grid-stride loop over `items` work items of one thread each.
unsigned grid_size(int64_t items, int block_threads, int sm_count);

// The most axes of size > 1 a strided view may have (the kernels get shape and strides by
// value). NDArray merges a view's axes before it calls a layout primitive
// (primitives.simplify_view), so views reach the kernels with a few.
constexpr int kMaxDims = 32;

// The GEMM's block tile for the linear block index `block` of a tiles_m x tiles_n grid:
// blocks are grouped kGemmGroupRows tile rows at a time so that neighbouring blocks share
// their A and B panels in L2 (the order in which Triton's tutorials launch a matmul).
constexpr int kGemmGroupRows = 8;
struct TileCoord { int64_t m, n; };
TileCoord gemm_tile_of_block(int64_t block, int64_t tiles_m, int64_t tiles_n);

// ---- memory and layout ----------------------------------------------------------------
// A strided view is (shape, strides, offset) in elements, any number of axes, signed strides.

// The number of elements of a view of this shape.
int64_t view_size(const Shape& shape);
// Whether the view walks offset, offset + 1, ... in C order (one run of memory).
bool is_contiguous(const Shape& shape, const Shape& strides);

void fill(DType dt, void* out, int64_t n, double val);

// dst[i] = src[offset + <i-th index of shape> . strides], i in C order.
void compact(DType dt, const void* src, void* dst, const Shape& shape, const Shape& strides,
             int64_t offset);
// dst[offset + <i-th index> . strides] = src[i]. Overlapping targets get one of the values.
void ewise_setitem(DType dt, const void* src, void* dst, const Shape& shape, const Shape& strides,
                   int64_t offset);
// dst[offset + <i-th index> . strides] = val.
void scalar_setitem(DType dt, double val, void* dst, const Shape& shape, const Shape& strides,
                    int64_t offset);

// ---- elementwise over compact arrays of n elements ------------------------------------
// The elementwise families of the primitive table (primitives.py UNARY, BINARY, SCALAR), one
// row a primitive: its name, the dtypes it takes (its row's in primitives.py) and its launch.
// The rows are written once, in elementwise.cu; the host table binds every row and checks
// each call's dtype against the row's, so a new unary primitive is one row there.

struct UnaryKernel {  // ewise_<op>(a, out): out = op(a)
  const char* name;
  DTypeSet dtypes;
  std::function<void(DType, const void* a, void* out, int64_t n)> run;
};
struct BinaryKernel {  // ewise_<op>(a, b, out): out = op(a, b); comparisons write a bool out
  const char* name;
  DTypeSet dtypes;
  bool bool_out;
  std::function<void(DType, const void* a, const void* b, void* out, int64_t n)> run;
};
struct ScalarKernel {  // scalar_<op>(a, val, out): out = op(a, val), val converted to the dtype
  const char* name;
  DTypeSet dtypes;
  bool bool_out;
  std::function<void(DType, const void* a, double val, void* out, int64_t n)> run;
};
const std::vector<UnaryKernel>& unary_kernels();
const std::vector<BinaryKernel>& binary_kernels();
const std::vector<ScalarKernel>& scalar_kernels();

// out[i] = a[i] converted from dtype `from` to dtype `to` (any two, equal ones a copy): to a
// 16-bit float rounded to nearest even, float to integer truncated toward zero (NaN 0, out of
// range clamped), to bool nonzero; NaN payloads as NumPy's and ml_dtypes' astype (convert.cuh).
void astype(DType from, DType to, const void* a, void* out, int64_t n);

// out[i] = alpha * a[i] + beta * b[i], the scalars rounded to dt first. `out` may be `a` or `b`
// itself (the optimizers' in-place update): every element is read before it is written.
void ewise_axpby(DType dt, const void* a, const void* b, double alpha, double beta, void* out,
                 int64_t n);

// ---- rows by index: an embedding lookup and its gradient ------------------------------
// Rows are row_size elements of dt; indices[0..n) are int64 row numbers, in range of the
// indexed side's rows (checked in Python).

// out row i = a row indices[i], for i < n.
void gather_rows(DType dt, const void* a, const void* indices, void* out, int64_t n,
                 int64_t row_size);
// out row indices[i] += a row i, for i < n: adds onto out, repeated indices add up (in an
// order that may vary between runs).
void scatter_add_rows(DType dt, const void* a, const void* indices, void* out, int64_t n,
                      int64_t row_size);

// ---- matrix multiplication ------------------------------------------------------------

// A (batch, rows, cols) view: element (b, i, j) at ptr[offset + b*batch_stride +
// i*row_stride + j*col_stride]. Strides are >= 0 (0 broadcasts).
struct MatrixView {
  const void* ptr;
  int64_t offset, batch_stride, row_stride, col_stride;
};

// out (batch, m, p), compact = a (batch, m, n) @ b (batch, n, p).
void matmul(DType dt, const MatrixView& a, const MatrixView& b, void* out, int64_t batch, int64_t m,
            int64_t n, int64_t p);

// The GEMM's tiling for a dtype, for the tests and the benchmarks' notes.
struct GemmTiling { int block_m, block_n, block_k, thread_m, thread_n, threads; };
GemmTiling gemm_tiling(DType dt);

// ---- reductions -----------------------------------------------------------------------

enum class ReduceOp { sum, max };

// out[r] = op over a[r * reduce_size : (r + 1) * reduce_size], r < rows; reduce_size >= 1.
void reduce_last(ReduceOp op, DType dt, const void* a, void* out, int64_t rows,
                 int64_t reduce_size);
// out[o, i] = op over r of a[o, r, i] for a compact (outer, reduce_size, inner) array.
void reduce_middle(ReduceOp op, DType dt, const void* a, void* out, int64_t outer,
                   int64_t reduce_size, int64_t inner);

// How reduce_last / reduce_middle split the work (exposed for the tests).
struct ReducePlan {
  int strategy;        // reduce_last: 0 a thread per row, 1 a warp per row, 2 blocks per row;
                       // reduce_middle: 3
  int64_t chunks;      // pieces each row is split into (>1: a second pass adds the pieces)
  int64_t chunk_len;   // elements (rows of the middle axis) per piece
  unsigned grid_x, grid_y, block_x, block_y;
};
ReducePlan plan_reduce_last(int64_t rows, int64_t reduce_size, int sm_count);
ReducePlan plan_reduce_middle(int64_t outer, int64_t reduce_size, int64_t inner, int sm_count);

}  // namespace cuda
}  // namespace needle
