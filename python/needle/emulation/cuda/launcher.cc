// Runs the kernels compiled against cuda_emulation.h: a grid's blocks one after another,
// a block's threads as coroutines (ucontext) on the calling thread. Each coroutine runs
// until it reaches a barrier or returns; the scheduler then releases a warp whose 32 lanes
// all wait at a warp barrier (shuffles), or the block when every thread waits at
// __syncthreads(), and runs the released threads again, in thread order. A thread that
// writes shared memory without a barrier before another thread reads it is therefore
// seen late, deterministically, as on a GPU the race would make it sometimes.
//
// Reported as errors (std::runtime_error from run()): barriers reached by only part of a
// block or warp (some threads returned or wait elsewhere: a hang or undefined behaviour on a
// GPU), shuffles with a partial mask, blocks that are not whole warps, misaligned vector
// accesses.

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_emulation.h"

namespace emulation {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr int kWarp = 32;

enum class State { ready, at_syncthreads, at_warp_barrier, done };

struct Thread {
  ucontext_t context;
  char* stack = nullptr;
  State state = State::ready;
  Coordinates where;
};

struct Launch {
  const char* name;
  const std::function<void()>* body;
  std::vector<Thread> threads;
  ucontext_t scheduler;
  int current = -1;
  std::string error;
  std::vector<unsigned char> slots;  // warp exchange buffers: [warp][lane][16 bytes]
};

Launch* active = nullptr;
std::vector<char*> stacks;  // reused across launches

Coordinates outside{};  // for code that reads threadIdx outside a kernel (it should not)

void fail(const std::string& message) {
  Launch& l = *active;
  if (l.error.empty()) {
    const Coordinates& c = l.threads[l.current].where;
    l.error = std::string("kernel ") + l.name + ", block (" + std::to_string(c.block.x) + ", " +
              std::to_string(c.block.y) + ", " + std::to_string(c.block.z) + "), thread (" +
              std::to_string(c.thread.x) + ", " + std::to_string(c.thread.y) + ", " +
              std::to_string(c.thread.z) + "): " + message;
  }
}

// Back to the scheduler in `state`; a failed launch never resumes the thread.
void yield(State state) {
  Launch& l = *active;
  Thread& t = l.threads[l.current];
  t.state = state;
  swapcontext(&t.context, &l.scheduler);
}

void entry() {
  Launch& l = *active;
  try {
    (*l.body)();
  } catch (const std::exception& e) {
    fail(e.what());
  }
  l.threads[l.current].state = State::done;  // uc_link returns to the scheduler
}

// One block: run every ready thread until it blocks, then release a barrier; repeat.
void run_block(Launch& l) {
  const int n = static_cast<int>(l.threads.size());
  for (;;) {
    for (int t = 0; t < n; ++t) {
      if (l.threads[t].state != State::ready) continue;
      l.current = t;
      swapcontext(&l.scheduler, &l.threads[t].context);
      if (!l.error.empty()) return;
    }
    int done = 0, at_sync = 0;
    for (const Thread& t : l.threads) {
      done += t.state == State::done;
      at_sync += t.state == State::at_syncthreads;
    }
    if (done == n) return;
    bool released = false;
    for (int w = 0; w < n / kWarp; ++w) {
      int waiting = 0;
      for (int lane = 0; lane < kWarp; ++lane) {
        waiting += l.threads[w * kWarp + lane].state == State::at_warp_barrier;
      }
      if (waiting == kWarp) {
        for (int lane = 0; lane < kWarp; ++lane) l.threads[w * kWarp + lane].state = State::ready;
        released = true;
      } else if (waiting > 0) {
        l.current = w * kWarp;
        fail("warp " + std::to_string(w) + ": " + std::to_string(waiting) +
             " lanes wait in a warp shuffle that the other lanes never reach");
        return;
      }
    }
    if (released) continue;
    if (at_sync == n) {
      for (Thread& t : l.threads) t.state = State::ready;
      continue;
    }
    l.current = 0;
    fail(std::to_string(at_sync) + " threads wait at __syncthreads() while " +
         std::to_string(done) + " have returned; every thread of a block must reach it");
    return;
  }
}

void on_segfault(int, siginfo_t* info, void*) {
  char message[512];
  int len;
  if (active != nullptr && active->current >= 0) {
    const Coordinates& c = active->threads[active->current].where;
    len = std::snprintf(message, sizeof message,
                        "cuda emulation: out-of-bounds access at %p in kernel %s, block (%u, %u, "
                        "%u), thread (%u, %u, %u)\n",
                        info->si_addr, active->name, c.block.x, c.block.y, c.block.z,
                        c.thread.x, c.thread.y, c.thread.z);
  } else {
    len = std::snprintf(message, sizeof message, "cuda emulation: segfault at %p\n", info->si_addr);
  }
  if (len > 0) (void)!write(2, message, static_cast<size_t>(len));
  signal(SIGSEGV, SIG_DFL);
  raise(SIGSEGV);
}

// Sets up `t` to start the kernel at its next switch (a function of its own: getcontext
// returns twice in principle, which must not clobber run()'s loop counters).
__attribute__((noinline)) void prepare(Thread& t, char* stack, ucontext_t* scheduler) {
  t.state = State::ready;
  getcontext(&t.context);
  t.context.uc_stack.ss_sp = stack;
  t.context.uc_stack.ss_size = kStackBytes;
  t.context.uc_link = scheduler;
  makecontext(&t.context, entry, 0);
}

}  // namespace

const Coordinates& coordinates() {
  if (active == nullptr || active->current < 0) return outside;
  return active->threads[active->current].where;
}

int lane_id() {
  const Coordinates& c = coordinates();
  const unsigned linear = c.thread.x + c.block_dim.x * (c.thread.y + c.block_dim.y * c.thread.z);
  return static_cast<int>(linear % kWarp);
}

void syncthreads() { yield(State::at_syncthreads); }

void warp_exchange(const void* value, void* result, size_t size, unsigned mask, int src_lane) {
  Launch& l = *active;
  if (mask != 0xffffffffu) {
    fail("warp shuffle with a partial mask (the kernels only use full warps)");
    yield(State::at_warp_barrier);
  }
  if (size > 16 || src_lane < 0 || src_lane >= kWarp) {
    fail("warp shuffle of an unsupported size or lane");
    yield(State::at_warp_barrier);
  }
  const int warp = l.current / kWarp, lane = l.current % kWarp;
  unsigned char* slots = l.slots.data() + static_cast<size_t>(warp) * kWarp * 16;
  std::memcpy(slots + lane * 16, value, size);
  yield(State::at_warp_barrier);
  std::memcpy(result, slots + src_lane * 16, size);
  yield(State::at_warp_barrier);  // nobody overwrites a slot before every lane has read
}

void check_aligned(const void* p, size_t alignment, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % alignment != 0) {
    if (active != nullptr && active->current >= 0) {
      fail(std::string(what) + " at a misaligned address");
      yield(State::at_syncthreads);  // never resumed: the launch has failed
    }
    throw std::runtime_error(std::string(what) + " at a misaligned address");
  }
}

void run(const char* name, dim3 grid, dim3 block, const std::function<void()>& body) {
  static bool handler_installed = false;
  if (!handler_installed) {
    struct sigaction action {};
    action.sa_sigaction = on_segfault;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &action, nullptr);
    handler_installed = true;
  }
  const unsigned n = block.x * block.y * block.z;
  if (n == 0 || n > 1024 || n % kWarp != 0) {
    throw std::runtime_error(std::string("kernel ") + name + ": " + std::to_string(n) +
                             " threads per block (whole warps, at most 1024)");
  }
  if (active != nullptr) throw std::runtime_error("cuda emulation: nested launch");
  while (stacks.size() < n) {
    void* mem = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (mem == MAP_FAILED) throw std::runtime_error("cuda emulation: no memory for stacks");
    stacks.push_back(static_cast<char*>(mem));
  }
  Launch l;
  l.name = name;
  l.body = &body;
  l.threads.resize(n);
  l.slots.assign(static_cast<size_t>(n) * 16, 0);
  active = &l;
  for (unsigned bz = 0; bz < grid.z && l.error.empty(); ++bz) {
    for (unsigned by = 0; by < grid.y && l.error.empty(); ++by) {
      for (unsigned bx = 0; bx < grid.x && l.error.empty(); ++bx) {
        for (unsigned t = 0; t < n; ++t) {
          Thread& th = l.threads[t];
          th.where.thread = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
          th.where.block = {bx, by, bz};
          th.where.block_dim = block;
          th.where.grid_dim = grid;
          prepare(th, stacks[t], &l.scheduler);
        }
        run_block(l);
      }
    }
  }
  active = nullptr;
  if (!l.error.empty()) throw std::runtime_error(l.error);
}

}  // namespace emulation
