// The subset of CUDA C++ that needle's kernels (src/cuda/*.cu) use, for g++: the same files
// compile as plain C++ against this header (with -DNEEDLE_CUDA_EMULATION) and run on the
// CPU through launcher.cc. A test tool, not a CUDA implementation.
//
// How it maps:
//  - a launch runs its blocks one after another; a block's threads are coroutines on one OS
//    thread, switched round-robin at every barrier: __syncthreads() (all threads of the
//    block) and each warp shuffle (the 32 lanes of a warp exchange through a buffer between
//    two warp barriers);
//  - `__shared__` is `static`: sound because blocks never run at the same time;
//  - threadIdx/blockIdx/blockDim/gridDim read the running coroutine's coordinates;
//  - atomicAdd is a plain add (nothing runs concurrently);
//  - each launch runs twice, the second time with every block's threads released in reverse
//    order, and must give the same bytes (a missing __syncthreads() does not);
//  - 16-byte vector loads and stores check their alignment (a misaligned float4 access
//    faults on a GPU but not on x86), and the launcher checks what the hardware would
//    reject or leave undefined: partial-warp blocks, shuffles with partial masks, barriers
//    reached by only some threads or by threads at different __syncthreads() calls.
// Device memory is host memory from the emulated runtime (runtime_emulation.cc), with a
// PROT_NONE page on each side of each buffer and guard bytes around it: the launcher checks
// the guard bytes of the buffers a launch's arguments point to after each thread runs, and
// turns a fault on a guard page into an error, so either names the thread.

#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };

enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

namespace emulation {

struct Coordinates {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};
const Coordinates& coordinates();  // of the running coroutine

void syncthreads(const char* file, int line);
// Publishes `size` bytes of this lane's value, waits for the warp, copies lane `src`'s.
void warp_exchange(const void* value, void* result, size_t size, unsigned mask, int src_lane);
int lane_id();
void check_aligned(const void* p, size_t alignment, const char* what);

// One argument of a launch, as bytes: the device pointers in it (a pointer argument, or one
// captured by a functor argument) tell the launcher which buffers the kernel may touch.
struct ArgBytes {
  const void* data;
  size_t size;
  bool is_pointer;
};

// Runs body() as every thread of a grid of blocks; throws std::runtime_error on misuse.
void run(const char* name, dim3 grid, dim3 block, const std::function<void()>& body,
         const ArgBytes* args, size_t nargs);

// Whether launches run a second time with each block's threads in reverse order, to find
// results that depend on it (launcher.cc's check_order); atomicAdd marks a launch unchecked.
void set_order_check(bool on);
void note_atomic();

template <class F, class... A>
void launch(const char* name, dim3 grid, dim3 block, F&& body, const A&... args) {
  const ArgBytes list[] = {{&args, sizeof(A), std::is_pointer<A>::value}..., {nullptr, 0, false}};
  run(name, grid, block, std::function<void()>(body), list, sizeof...(A));
}

}  // namespace emulation

#define threadIdx (::emulation::coordinates().thread)
#define blockIdx (::emulation::coordinates().block)
#define blockDim (::emulation::coordinates().block_dim)
#define gridDim (::emulation::coordinates().grid_dim)

// Where each call is (file and line, as default arguments evaluated at the call site): threads
// of a block that wait at different __syncthreads() calls are reported.
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::emulation::syncthreads(file, line);
}

template <class T> T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  T result;
  ::emulation::warp_exchange(&value, &result, sizeof(T), mask, ::emulation::lane_id() ^ lane_mask);
  return result;
}

// A plain read-modify-write is atomic here: blocks run one after another on one OS thread, and
// a block's threads switch only at barriers and shuffles. (So the emulation always adds in
// one order; on a GPU the order of concurrent atomicAdds varies.)
template <class T> T atomicAdd(T* address, T value) {
  ::emulation::note_atomic();
  const T old = *address;
  *address = old + value;
  return old;
}

// Kernels use 16- and 8-byte vector accesses only through these macros' targets (common.cuh).
#define NEEDLE_CHECK_ALIGNED(p) ::emulation::check_aligned((p), 16, "a 16-byte vector access")
#define NEEDLE_CHECK_ALIGNED_8(p) ::emulation::check_aligned((p), 8, "an 8-byte vector access")
