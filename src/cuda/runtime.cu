// The runtime of runtime.h on the CUDA runtime API: device 0, one non-blocking stream, and
// the device's stream-ordered memory pool (cudaMallocAsync), which keeps freed blocks for
// reuse as PyTorch's caching allocator does, so that a training loop's allocations cost
// no cudaMalloc/cudaFree (each of which synchronises the device) after the first step.

#include <cstdio>
#include <string>

#include "runtime.h"

namespace needle {
namespace cuda {
namespace {

struct Runtime {
  DeviceInfo info;
  cudaStream_t stream = nullptr;
  bool pooled = false;  // cudaMallocAsync is supported (not on some virtualised GPUs)
  cudaMemPool_t pool = nullptr;
};

std::string describe(cudaError_t status) {
  return std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
}

Runtime* create_runtime() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    throw CudaError("no CUDA device available (" + describe(status) + ")");
  }
  if (count == 0) throw CudaError("no CUDA device available");
  auto* rt = new Runtime();
  check(cudaSetDevice(0), "cudaSetDevice");
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  rt->info.name = prop.name;
  rt->info.ordinal = 0;
  rt->info.sm_count = prop.multiProcessorCount;
  rt->info.max_grid_y = prop.maxGridSize[1];
  rt->info.compute_capability = prop.major * 10 + prop.minor;
  check(cudaDriverGetVersion(&rt->info.driver_version), "cudaDriverGetVersion");
  check(cudaRuntimeGetVersion(&rt->info.runtime_version), "cudaRuntimeGetVersion");
  check(cudaStreamCreateWithFlags(&rt->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  int pools = 0;
  check(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, 0),
        "cudaDeviceGetAttribute");
  if (pools) {
    rt->pooled = true;
    check(cudaDeviceGetDefaultMemPool(&rt->pool, 0), "cudaDeviceGetDefaultMemPool");
    // Keep freed memory in the pool instead of returning it at every synchronisation; it is
    // released (trimmed) when an allocation would otherwise fail, and by empty_cache().
    uint64_t threshold = UINT64_MAX;
    check(cudaMemPoolSetAttribute(rt->pool, cudaMemPoolAttrReleaseThreshold, &threshold),
          "cudaMemPoolSetAttribute");
  }
  return rt;
}

// Created on first use, never destroyed: Arrays freed while Python shuts down may outlive any
// static destructor order, and the driver reclaims everything at process exit.
Runtime& runtime() {
  static Runtime* rt = create_runtime();  // a throw leaves it uninitialised: retried next call
  return *rt;
}

cudaError_t raw_alloc(Runtime& rt, void** ptr, size_t bytes) {
  return rt.pooled ? cudaMallocAsync(ptr, bytes, rt.stream) : cudaMalloc(ptr, bytes);
}

}  // namespace

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

const DeviceInfo& device_info() { return runtime().info; }

cudaStream_t stream() { return runtime().stream; }

void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so that later calls start clean
  std::string message = std::string(what) + ": " + describe(status);
  if (status == cudaErrorIllegalAddress || status == cudaErrorLaunchFailure ||
      status == cudaErrorMisalignedAddress || status == cudaErrorIllegalInstruction) {
    message +=
        " (a kernel failed; the error is sticky: the CUDA context is unusable until the "
        "process restarts)";
  }
  throw CudaError(message);
}

void* device_alloc(size_t bytes) {
  Runtime& rt = runtime();
  bytes = bytes < 16 ? 16 : bytes;  // a real, unique pointer even for empty arrays
  void* ptr = nullptr;
  cudaError_t status = raw_alloc(rt, &ptr, bytes);
  if (status == cudaErrorMemoryAllocation) {
    // Give the pool's cached blocks back to the driver and try once more.
    cudaGetLastError();
    check(cudaStreamSynchronize(rt.stream), "cudaStreamSynchronize");
    if (rt.pooled) check(cudaMemPoolTrimTo(rt.pool, 0), "cudaMemPoolTrimTo");
    status = raw_alloc(rt, &ptr, bytes);
  }
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    cudaGetLastError();
    char message[256];
    std::snprintf(message, sizeof message,
                  "CUDA out of memory: tried to allocate %.1f MiB; %.1f MiB free of %.1f MiB",
                  bytes / 1048576.0, free_bytes / 1048576.0, total_bytes / 1048576.0);
    throw OutOfMemory(message);
  }
  check(status, "cudaMalloc");
  return ptr;
}

void device_free(void* ptr) noexcept {
  if (ptr == nullptr) return;
  Runtime& rt = runtime();
  // Errors are ignored: a destructor cannot raise, and after a sticky kernel error every
  // call fails anyway (the next checked call reports it).
  if ((rt.pooled ? cudaFreeAsync(ptr, rt.stream) : cudaFree(ptr)) != cudaSuccess) {
    cudaGetLastError();
  }
}

void copy_device_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()), "cudaMemcpyAsync");
}

void copy_host_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()), "cudaMemcpyAsync");
  // From pageable memory the call returns once the data is staged, but from pinned memory it
  // would return at once; waiting makes the host buffer free to reuse in both cases.
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize (after a host-to-device copy)");
}

void copy_device_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize (after a device-to-host copy)");
}

void synchronize() { check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize"); }

MemoryInfo memory_info() {
  Runtime& rt = runtime();
  MemoryInfo info;
  check(cudaMemGetInfo(&info.free, &info.total), "cudaMemGetInfo");
  if (rt.pooled) {
    uint64_t used = 0, reserved = 0;
    check(cudaMemPoolGetAttribute(rt.pool, cudaMemPoolAttrUsedMemCurrent, &used),
          "cudaMemPoolGetAttribute");
    check(cudaMemPoolGetAttribute(rt.pool, cudaMemPoolAttrReservedMemCurrent, &reserved),
          "cudaMemPoolGetAttribute");
    info.used = used, info.reserved = reserved;
  } else {  // without a pool every allocation is the driver's: used = reserved = total - free
    info.used = info.reserved = info.total - info.free;
  }
  return info;
}

void empty_cache() {
  Runtime& rt = runtime();
  synchronize();
  if (rt.pooled) check(cudaMemPoolTrimTo(rt.pool, 0), "cudaMemPoolTrimTo");
}

}  // namespace cuda
}  // namespace needle
