// The CUDA backend's runtime: one device, one stream, errors as exceptions, and device
// memory from the stream-ordered pool. Kernels (src/cuda/*.cu) and the host table
// (src/cuda/host_table.cc) reach CUDA's runtime API only through this header, which the
// CPU emulation of the tests (tests/cuda_emulation) implements as well.

#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>

#ifdef NEEDLE_CUDA_EMULATION
#include "cuda_emulation.h"
#else
#include <cuda_runtime.h>
#endif

namespace needle {
namespace cuda {

// A failed CUDA call or kernel launch; the message names the call and CUDA's error string.
// Python sees ndarray_backend_cuda.CudaError (a RuntimeError).
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Device memory exhausted, even after the pool's cached blocks were released.
// Python sees ndarray_backend_cuda.OutOfMemoryError (a MemoryError).
class OutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What the launch planning needs to know about the device.
struct DeviceInfo {
  std::string name;
  int ordinal = 0;
  int sm_count = 1;           // streaming multiprocessors: grids are sized in waves of them
  int max_grid_y = 65535;     // gridDim.y and gridDim.z limits
  int compute_capability = 0; // major * 10 + minor
  int driver_version = 0;     // CUDA versions as 1000 * major + 10 * minor
  int runtime_version = 0;
};

// The number of visible CUDA devices; 0 (never an exception) when there is no GPU or no
// driver, so that `import needle` works everywhere.
int device_count() noexcept;

// Initialises the device on first use (device 0, its stream, its memory pool); throws
// CudaError when there is none.
const DeviceInfo& device_info();

// Throws CudaError("<what>: <CUDA error name>: <CUDA error string>") unless `status` is
// cudaSuccess. A failed kernel reports at the next synchronising call, so `what` names the
// call that noticed, and the message says so.
void check(cudaError_t status, const char* what);

// Device memory, ordered on the backend's stream (a freed block is reused only by work
// queued after the free). Never returns null; throws OutOfMemory or CudaError.
void* device_alloc(size_t bytes);
void device_free(void* ptr) noexcept;

// Stream-ordered copies: device to device asynchronously; host transfers return once the
// host buffer may be reused (host_to_device) or has been written (device_to_host).
void copy_device_to_device(void* dst, const void* src, size_t bytes);
void copy_host_to_device(void* dst, const void* src, size_t bytes);
void copy_device_to_host(void* dst, const void* src, size_t bytes);

// Waits for all queued work; reports (as CudaError) any kernel that failed.
void synchronize();

// Device memory as the driver sees it (free, total) and as the backend's pool holds it
// (bytes in live allocations, bytes reserved from the driver including cached free blocks).
struct MemoryInfo { size_t free = 0, total = 0, used = 0, reserved = 0; };
MemoryInfo memory_info();

// Returns the pool's cached free blocks to the driver (after waiting for queued work).
void empty_cache();

#ifndef NEEDLE_CUDA_EMULATION
// The stream every kernel and copy of the backend goes to (non-blocking: it does not
// serialise with the legacy default stream of other libraries).
cudaStream_t stream();
#endif

// A device buffer owned by scope (temporaries such as reduction partials).
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : ptr_(device_alloc(bytes)) {}
  ~DeviceBuffer() { device_free(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T> T* get() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_;
};

}  // namespace cuda
}  // namespace needle
