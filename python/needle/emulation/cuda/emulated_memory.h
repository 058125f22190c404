// The emulated device's memory and settings (runtime_emulation.cc).
#pragma once

#include <cstddef>
#include <string>

namespace emulated {

extern int sm_count;    // what device_info() reports: grids are sized from it
extern int max_grid_y;  // likewise (lowered by tests to split batched launches)
extern bool tight;      // device_alloc's buffers end exactly at an inaccessible page

// A buffer between two inaccessible pages, whose end (`tight`) or 16-byte-rounded end abuts
// the second one; guard bytes fill the rest.
void* allocate(size_t bytes, bool tight);
void release(void* ptr);
size_t live_bytes();
void check_guards();
void check_range(const void* ptr, size_t bytes, const char* what);

// A live buffer: `bytes` at `start`, `padded` with guard bytes up to the page after it.
struct Buffer {
  const char* start = nullptr;
  size_t bytes = 0, padded = 0;
};
// The live buffer whose memory, guard bytes or guard pages hold address p (false: none).
// Allocates nothing: the launcher calls it from its SIGSEGV handler.
bool find_buffer(const void* p, Buffer* found);
// "" when the guard bytes of `b` are intact, else where the first damage is ("past the end of
// a buffer of 40 bytes (at byte 40)"); the guard bytes are repaired, so that it is reported once.
std::string damaged_guards(const Buffer& b);

}  // namespace emulated
