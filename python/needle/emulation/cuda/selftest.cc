// Kernels that test the emulation itself (test_cuda.py): warp shuffles, barriers, and the
// misuse it must report. Written as the backend's kernels are, launched through launch().

#include "cuda/common.cuh"

using namespace needle::cuda;

namespace {

// Every lane ends with the warp's sum; the block's warps meet at a barrier in between.
__global__ void shuffle_kernel(float* out) {
  __shared__ float staged[256];
  const int t = threadIdx.x;
  staged[t] = static_cast<float>(t);
  __syncthreads();
  const float v = staged[(t + 1) % blockDim.x];  // another thread's write, after the barrier
  out[t] = warp_reduce(v, SumOp());
}

__global__ void misaligned_kernel(float* out) {
  float v[4] = {1, 2, 3, 4};
  store_vec(out + 1, v);
}

__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void divergent_shuffle_kernel(float* out) {
  if (threadIdx.x % 2 == 0) out[threadIdx.x] = __shfl_xor_sync(kFullWarp, 1.0f, 1);
}

// Threads 0-15 wait at one barrier and the others at the next: a barrier in divergent code.
__global__ void two_barriers_kernel(float* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
  __syncthreads();
}

// Thread 37 writes the element after the last (256 floats end at the guard page).
__global__ void past_the_end_kernel(float* out) {
  if (threadIdx.x == 37) out[256] = 1;
}

// Thread 5 writes the element before the first (into the guard bytes).
__global__ void before_the_start_kernel(float* out) {
  if (threadIdx.x == 5) out[-1] = 1;
}

__global__ void null_kernel(float* out, const float* in) { out[threadIdx.x] = in[threadIdx.x]; }

// Reads a neighbour's shared-memory write with no __syncthreads() in between (`base` differs
// between launches, as data would: what an earlier launch left in `staged` is stale).
__global__ void missing_barrier_kernel(float* out, float base) {
  __shared__ float staged[256];
  staged[threadIdx.x] = base + static_cast<float>(threadIdx.x);
  out[threadIdx.x] = staged[(threadIdx.x + 1) % 256];
}

}  // namespace

extern "C" int emu_selftest(int which, float* out, char* error, int error_size) {
  try {
    const LaunchConfig one_block{dim3(1), dim3(256)};
    if (which == 0) launch("shuffle", shuffle_kernel, one_block, out);
    if (which == 1) launch("misaligned", misaligned_kernel, LaunchConfig{dim3(1), dim3(32)}, out);
    if (which == 2) launch("divergent barrier", divergent_barrier_kernel, one_block, out);
    if (which == 3) launch("divergent shuffle", divergent_shuffle_kernel, one_block, out);
    if (which == 4) launch("partial warp", shuffle_kernel, LaunchConfig{dim3(1), dim3(48)}, out);
    if (which == 5) launch("two_barriers", two_barriers_kernel, one_block, out);
    if (which == 6) launch("past_the_end", past_the_end_kernel, one_block, out);
    if (which == 7) launch("before_the_start", before_the_start_kernel, one_block, out);
    if (which == 8) launch("null", null_kernel, one_block, out, static_cast<const float*>(nullptr));
    static int launches = 0;
    const float base = static_cast<float>(1000 * ++launches);
    if (which == 9) launch("missing_barrier", missing_barrier_kernel, one_block, out, base);
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(error, static_cast<size_t>(error_size), "%s", e.what());
    return -1;
  }
}
