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

}  // namespace

extern "C" int emu_selftest(int which, float* out, char* error, int error_size) {
  try {
    const LaunchConfig one_block{dim3(1), dim3(256)};
    if (which == 0) launch("shuffle", shuffle_kernel, one_block, out);
    if (which == 1) launch("misaligned", misaligned_kernel, LaunchConfig{dim3(1), dim3(32)}, out);
    if (which == 2) launch("divergent barrier", divergent_barrier_kernel, one_block, out);
    if (which == 3) launch("divergent shuffle", divergent_shuffle_kernel, one_block, out);
    if (which == 4) launch("partial warp", shuffle_kernel, LaunchConfig{dim3(1), dim3(48)}, out);
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(error, static_cast<size_t>(error_size), "%s", e.what());
    return -1;
  }
}
