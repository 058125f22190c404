// The emulated device's memory and settings (runtime_emulation.cc).
#pragma once

#include <cstddef>

namespace emulated {

extern int sm_count;    // what device_info() reports: grids are sized from it
extern int max_grid_y;  // likewise (lowered by tests to split batched launches)
extern bool tight;      // device_alloc's buffers end exactly at an inaccessible page

// A buffer whose end (`tight`) or 16-byte-rounded end abuts an inaccessible page.
void* allocate(size_t bytes, bool tight);
void release(void* ptr);
size_t live_bytes();
void check_guards();
void check_range(const void* ptr, size_t bytes, const char* what);

}  // namespace emulated
