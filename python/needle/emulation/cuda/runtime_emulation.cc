// src/cuda/runtime.h on the CPU, for the emulation: "device" memory is host memory laid out
// to catch overruns (a PROT_NONE page right after each buffer's slack, guard bytes before
// it and in the slack, checked after every call), copies are memcpy, and the device has a
// configurable, small number of SMs so that grid-stride loops take several turns.
// capi.cc exposes the host table (src/cuda/host_table.h) over it to Python (harness.py).

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>

#include "cuda/runtime.h"
#include "emulated_memory.h"

namespace needle {
namespace cuda {

int device_count() noexcept { return 1; }

const DeviceInfo& device_info() {
  static DeviceInfo info;
  info.name = "CUDA emulation (CPU)";
  info.sm_count = emulated::sm_count;
  info.max_grid_y = emulated::max_grid_y;
  info.compute_capability = 90;
  return info;
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw CudaError(std::string(what) + ": emulated CUDA error");
}

// As the real runtime, at least 16 bytes, unless tight: then exactly the bytes asked for
// (at least one), so that the end of every buffer faults.
void* device_alloc(size_t bytes) {
  const size_t least = emulated::tight ? 1 : 16;
  return emulated::allocate(bytes < least ? least : bytes, emulated::tight);
}
void device_free(void* ptr) noexcept { emulated::release(ptr); }

void copy_device_to_device(void* dst, const void* src, size_t bytes) {
  emulated::check_range(dst, bytes, "copy destination");
  emulated::check_range(src, bytes, "copy source");
  std::memmove(dst, src, bytes);
}
void copy_host_to_device(void* dst, const void* src, size_t bytes) {
  emulated::check_range(dst, bytes, "copy destination");
  std::memcpy(dst, src, bytes);
}
void copy_device_to_host(void* dst, const void* src, size_t bytes) {
  emulated::check_range(src, bytes, "copy source");
  std::memcpy(dst, src, bytes);
}
void synchronize() {}

MemoryInfo memory_info() {
  MemoryInfo info;
  info.used = info.reserved = emulated::live_bytes();
  info.total = size_t{1} << 34;
  info.free = info.total - info.used;
  return info;
}
void empty_cache() {}

}  // namespace cuda
}  // namespace needle

namespace emulated {

int sm_count = 2;
int max_grid_y = 65535;
bool tight = false;

namespace {

constexpr size_t kGuardBefore = 64;
constexpr unsigned char kCanary = 0xA5;

struct Allocation {
  char* mapping;
  size_t mapping_bytes;
  size_t bytes;   // requested
  size_t padded;  // requested, rounded up to 16 unless tight
};

std::map<const char*, Allocation>& live() {
  static auto* table = new std::map<const char*, Allocation>();
  return *table;
}

size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

}  // namespace

// [PROT_NONE page][canary bytes ... start: data, canary padding][PROT_NONE page]
void* allocate(size_t bytes, bool tight) {
  const size_t padded = tight ? bytes : (bytes + 15) / 16 * 16;
  const size_t page = page_size();
  const size_t data_pages = (padded + kGuardBefore + page - 1) / page;
  const size_t mapping_bytes = (data_pages + 2) * page;
  void* mem =
      mmap(nullptr, mapping_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) throw needle::cuda::OutOfMemory("emulated device out of memory");
  char* mapping = static_cast<char*>(mem);
  char* guard_page = mapping + (data_pages + 1) * page;
  mprotect(mapping, page, PROT_NONE);
  mprotect(guard_page, page, PROT_NONE);
  char* start = guard_page - padded;
  std::memset(mapping + page, kCanary, static_cast<size_t>(start - mapping - page));
  std::memset(start + bytes, kCanary, padded - bytes);
  std::memset(start, 0x7f, bytes);  // NaN-ish garbage, as uninitialised device memory
  live()[start] = {mapping, mapping_bytes, bytes, padded};
  return start;
}

void release(void* ptr) {
  auto it = live().find(static_cast<const char*>(ptr));
  if (it == live().end()) return;
  munmap(it->second.mapping, it->second.mapping_bytes);
  live().erase(it);
}

size_t live_bytes() {
  size_t total = 0;
  for (const auto& entry : live()) total += entry.second.bytes;
  return total;
}

bool find_buffer(const void* p, Buffer* found) {
  const char* address = static_cast<const char*>(p);
  auto next = live().upper_bound(address);  // the first buffer that starts after p
  for (int side = 0; side < 2; ++side) {
    if (side == 0 ? next == live().end() : next == live().begin()) continue;
    auto it = side == 0 ? next : std::prev(next);
    const Allocation& a = it->second;
    if (address >= a.mapping && address < a.mapping + a.mapping_bytes) {
      *found = {it->first, a.bytes, a.padded};
      return true;
    }
  }
  return false;
}

std::string damaged_guards(const Buffer& b) {
  const char* before = b.start - kGuardBefore;
  for (const char* p = before; p < b.start; ++p) {
    if (static_cast<unsigned char>(*p) != kCanary) {
      std::memset(const_cast<char*>(before), kCanary, kGuardBefore);
      return "before the start of a buffer of " + std::to_string(b.bytes) + " bytes (at byte " +
             std::to_string(p - b.start) + ")";
    }
  }
  for (const char* p = b.start + b.bytes; p < b.start + b.padded; ++p) {
    if (static_cast<unsigned char>(*p) != kCanary) {
      std::memset(const_cast<char*>(b.start + b.bytes), kCanary, b.padded - b.bytes);
      return "past the end of a buffer of " + std::to_string(b.bytes) + " bytes (at byte " +
             std::to_string(p - b.start) + ")";
    }
  }
  return "";
}

// Every live buffer's guard bytes are intact; names the first one that is not (a write that
// the launcher did not see happen: through a pointer no kernel argument held).
void check_guards() {
  for (const auto& entry : live()) {
    const std::string damage =
        damaged_guards({entry.first, entry.second.bytes, entry.second.padded});
    if (!damage.empty()) throw std::runtime_error("a kernel wrote " + damage);
  }
}

void check_range(const void* ptr, size_t bytes, const char* what) {
  const char* p = static_cast<const char*>(ptr);
  auto it = live().upper_bound(p);
  if (it == live().begin()) throw std::runtime_error(std::string(what) + " is not device memory");
  --it;
  if (p < it->first || p + bytes > it->first + it->second.bytes) {
    throw std::runtime_error(std::string(what) + " runs outside its device buffer");
  }
}

}  // namespace emulated
