// Runs the kernels compiled against cuda_emulation.h: a grid's blocks one after another,
// a block's threads as coroutines (ucontext) on the calling thread. Each coroutine runs
// until it reaches a barrier or returns; the scheduler then releases a warp whose 32 lanes
// all wait at a warp barrier (shuffles), or the block when every thread waits at
// __syncthreads(), and runs the released threads again, in thread order. A thread that
// writes shared memory without a barrier before another thread reads it is therefore
// seen late, deterministically, as on a GPU the race would make it sometimes.
//
// Reported as errors (std::runtime_error from run(), "kernel K, block (x, y, z), thread
// (x, y, z): what"): barriers reached by only part of a block or warp (some threads returned
// or wait elsewhere: a hang or undefined behaviour on a GPU), shuffles with a partial mask,
// blocks that are not whole warps, misaligned vector accesses, writes into the guard bytes of
// a buffer that an argument points to (checked each time a thread stops), and accesses that
// fault on a guard page or through a null pointer (the SIGSEGV handler ends the launch).

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_emulation.h"
#include "emulated_memory.h"

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
  const char* barrier_file = "";  // the __syncthreads() it waits at
  int barrier_line = 0;
};

// A buffer that a launch's argument `arg` (0-based) points to.
struct ArgBuffer {
  emulated::Buffer buffer;
  size_t arg;
};

struct Launch {
  const char* name;
  const std::function<void()>* body;
  dim3 grid, block;
  bool reversed = false;       // run a block's released threads last to first
  bool used_atomics = false;   // their order legitimately changes the result
  const char* watch = nullptr;  // a byte whose last writer is wanted (order_check)
  unsigned char watched = 0;
  Coordinates writer{};
  bool written = false;
  std::vector<Thread> threads;
  ucontext_t scheduler;
  int current = -1;  // the running thread; -1 while the scheduler runs
  std::string error;
  std::vector<unsigned char> slots;  // warp exchange buffers: [warp][lane][16 bytes]
  std::vector<ArgBuffer> buffers;
  std::vector<size_t> null_args;  // pointer arguments that are null
};

Launch* active = nullptr;
std::vector<char*> stacks;  // reused across launches
bool order_check = true;    // emu_set_order_check
struct sigaction previous_handler;

Coordinates outside{};  // for code that reads threadIdx outside a kernel (it should not)

std::string triple(const uint3& v) {
  return "(" + std::to_string(v.x) + ", " + std::to_string(v.y) + ", " + std::to_string(v.z) + ")";
}

// Fails the launch as thread `t` (the first failure is the one reported).
void fail_as(int t, const std::string& message) {
  Launch& l = *active;
  if (!l.error.empty()) return;
  const Coordinates& c = l.threads[t].where;
  l.error = std::string("kernel ") + l.name + ", block " + triple(c.block) + ", thread " +
            triple(c.thread) + ": " + message;
}
void fail(const std::string& message) { fail_as(active->current, message); }

// After a thread has stopped: did it change the watched byte?
void watch_writes(Launch& l, int t) {
  const auto now = static_cast<unsigned char>(*l.watch);
  if (now != l.watched) {
    l.watched = now;
    l.writer = l.threads[t].where;
    l.written = true;
  }
}

std::string site(const Thread& t) {
  const char* slash = std::strrchr(t.barrier_file, '/');
  return std::string(slash ? slash + 1 : t.barrier_file) + ":" + std::to_string(t.barrier_line);
}

std::string argument_name(size_t arg) { return "kernel argument " + std::to_string(arg + 1); }

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
  } catch (const std::exception& e) { fail(e.what()); }
  l.threads[l.current].state = State::done;  // uc_link returns to the scheduler
}

// After a thread has stopped: did it write into the guard bytes of an argument's buffer?
void check_writes(Launch& l) {
  for (const ArgBuffer& b : l.buffers) {
    const std::string damage = emulated::damaged_guards(b.buffer);
    if (!damage.empty()) {
      fail("out-of-bounds write " + damage + ", " + argument_name(b.arg));
      return;
    }
  }
}

// A block that cannot go on while some threads wait at __syncthreads(): names the first thread
// that is not at the barrier where the first waiting thread is, and what it does instead.
void barrier_divergence(Launch& l) {
  int w = 0;
  while (l.threads[w].state != State::at_syncthreads) ++w;
  const Thread& waiter = l.threads[w];
  for (size_t t = 0; t < l.threads.size(); ++t) {
    const Thread& other = l.threads[t];
    std::string doing;
    if (other.state == State::done) {
      doing = "has returned";
    } else if (other.state == State::at_warp_barrier) {
      doing = "waits in a warp shuffle";
    } else if (other.barrier_file != waiter.barrier_file ||
               other.barrier_line != waiter.barrier_line) {
      doing = "waits at another __syncthreads() (" + site(other) + ")";
    } else {
      continue;
    }
    fail_as(static_cast<int>(t), doing + " while thread " + triple(waiter.where.thread) +
                                     " waits at __syncthreads() (" + site(waiter) +
                                     "): every thread of a block must reach the same barrier");
    return;
  }
}

// Releases the warps whose 32 lanes all wait at a warp barrier (whether any did).
bool release_warps(Launch& l) {
  bool released = false;
  const int n = static_cast<int>(l.threads.size());
  for (int w = 0; w < n / kWarp; ++w) {
    int waiting = 0;
    for (int lane = 0; lane < kWarp; ++lane) {
      waiting += l.threads[w * kWarp + lane].state == State::at_warp_barrier;
    }
    if (waiting != kWarp) continue;
    for (int lane = 0; lane < kWarp; ++lane) l.threads[w * kWarp + lane].state = State::ready;
    released = true;
  }
  return released;
}

// A warp that cannot go on: some of its lanes wait in a shuffle, the others never will.
void shuffle_divergence(Launch& l) {
  int t = 0;
  while (l.threads[t].state != State::at_warp_barrier) ++t;
  int waiting = 0;
  for (int lane = 0; lane < kWarp; ++lane) {
    waiting += l.threads[t / kWarp * kWarp + lane].state == State::at_warp_barrier;
  }
  fail_as(t / kWarp * kWarp, "warp " + std::to_string(t / kWarp) + ": " + std::to_string(waiting) +
                                 " lanes wait in a warp shuffle that the other lanes never reach");
}

// One block: run every ready thread until it blocks, then release a barrier; repeat.
void run_block(Launch& l) {
  const int n = static_cast<int>(l.threads.size());
  for (;;) {
    for (int k = 0; k < n; ++k) {
      const int t = l.reversed ? n - 1 - k : k;
      if (l.threads[t].state != State::ready) continue;
      l.current = t;
      swapcontext(&l.scheduler, &l.threads[t].context);
      if (l.error.empty()) check_writes(l);
      if (l.watch != nullptr) watch_writes(l, t);
      l.current = -1;
      if (!l.error.empty()) return;
    }
    int done = 0, at_sync = 0;  // (after the loop, no thread is ready)
    for (const Thread& t : l.threads) {
      done += t.state == State::done;
      at_sync += t.state == State::at_syncthreads;
    }
    if (done == n) return;
    if (release_warps(l)) continue;
    if (at_sync > 0) {
      barrier_divergence(l);  // unless they all wait at one barrier
      if (!l.error.empty()) return;
      for (Thread& t : l.threads) t.state = State::ready;
      continue;
    }
    shuffle_divergence(l);
    return;
  }
}

// What a faulting address is: a guard page of a buffer, near null, or unknown memory.
std::string describe_fault(Launch& l, const void* address, bool write) {
  const std::string access = write ? "write" : "read";
  if (reinterpret_cast<uintptr_t>(address) < 65536) {
    std::string message = access + " through a null pointer";
    for (size_t arg : l.null_args) message += ", " + argument_name(arg) + " is null";
    return message;
  }
  emulated::Buffer b;
  if (emulated::find_buffer(address, &b)) {
    const long offset = static_cast<const char*>(address) - b.start;
    std::string message = "out-of-bounds " + access +
                          (offset < 0 ? " before the start" : " past the end") +
                          " of a buffer of " + std::to_string(b.bytes) + " bytes (at byte " +
                          std::to_string(offset) + ")";
    for (const ArgBuffer& a : l.buffers) {
      if (a.buffer.start == b.start) return message + ", " + argument_name(a.arg);
    }
    return message;
  }
  return "invalid " + access + " at an address outside every device buffer";
}

// A fault in a kernel thread ends the launch: the error names the thread and the scheduler
// resumes as if the thread had stopped (its stack is abandoned, as siglongjmp would). A fault
// elsewhere goes to the handler that was there before (Python's faulthandler, or the default).
void on_segfault(int, siginfo_t* info, void* context) {
  if (active == nullptr || active->current < 0) {
    sigaction(SIGSEGV, &previous_handler, nullptr);
    return;  // the access faults again, under the previous handler
  }
  bool write = false;
#if defined(__x86_64__)
  write = (static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
  (void)context;
#endif
  fail(describe_fault(*active, info->si_addr, write));
  active->threads[active->current].state = State::done;
  setcontext(&active->scheduler);
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

// The buffers the arguments point to: each pointer-sized word of an argument's bytes that
// lies in a live buffer (a pointer argument, or a pointer a functor argument captured).
void find_buffers(Launch& l, const ArgBytes* args, size_t nargs) {
  for (size_t k = 0; k < nargs; ++k) {
    const char* bytes = static_cast<const char*>(args[k].data);
    for (size_t at = 0; at + sizeof(void*) <= args[k].size; at += sizeof(void*)) {
      const void* word;
      std::memcpy(&word, bytes + at, sizeof word);
      if (args[k].is_pointer && word == nullptr) l.null_args.push_back(k);
      emulated::Buffer b;
      if (word == nullptr || !emulated::find_buffer(word, &b)) continue;
      bool seen = false;
      for (const ArgBuffer& a : l.buffers) seen = seen || a.buffer.start == b.start;
      if (!seen) l.buffers.push_back({b, k});
    }
  }
}

void install_handler() {
  struct sigaction action{};
  action.sa_sigaction = on_segfault;
  action.sa_flags = SA_SIGINFO;
  struct sigaction current{};
  sigaction(SIGSEGV, nullptr, &current);
  if (current.sa_sigaction == on_segfault) return;  // (again after a fault outside a kernel)
  previous_handler = current;
  sigaction(SIGSEGV, &action, nullptr);
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

void syncthreads(const char* file, int line) {
  Thread& t = active->threads[active->current];
  t.barrier_file = file;
  t.barrier_line = line;
  yield(State::at_syncthreads);
}

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

void set_order_check(bool on) { order_check = on; }

void note_atomic() {
  if (active != nullptr) active->used_atomics = true;
}

namespace {

void run_grid(Launch& l) {
  const dim3 grid = l.grid, block = l.block;
  const unsigned n = block.x * block.y * block.z;
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
}

using Contents = std::vector<std::string>;  // of each argument buffer

Contents save(const Launch& l) {
  Contents saved;
  for (const ArgBuffer& b : l.buffers) saved.emplace_back(b.buffer.start, b.buffer.bytes);
  return saved;
}

void restore(const Launch& l, const Contents& saved) {
  for (size_t k = 0; k < l.buffers.size(); ++k) {
    std::memcpy(const_cast<char*>(l.buffers[k].buffer.start), saved[k].data(), saved[k].size());
  }
}

// The order check: a correct kernel computes the same whatever order a block's threads run
// in between barriers, so the launch runs again with each block's threads released last to
// first; a byte that comes out different was written from memory that another thread of the
// block writes without a barrier in between (or from shared memory nobody wrote). A third,
// forward run finds the thread that wrote it last (a reversed one, if only that order wrote it).
// Launches that use atomicAdd are not checked: the order of their additions legitimately changes
// the rounding.
void check_order(Launch& l, const Contents& before) {
  const Contents forward = save(l);
  restore(l, before);
  l.reversed = true;
  run_grid(l);
  l.reversed = false;
  if (!l.error.empty()) return;
  for (size_t k = 0; k < l.buffers.size(); ++k) {
    const ArgBuffer& b = l.buffers[k];
    const size_t at = static_cast<size_t>(
        std::mismatch(forward[k].begin(), forward[k].end(), b.buffer.start).first -
        forward[k].begin());
    if (at == forward[k].size()) continue;
    // The last writer in forward order, or in reverse order if only that order wrote it.
    for (const bool reversed : {false, true}) {
      restore(l, before);
      l.watch = b.buffer.start + at;
      l.watched = static_cast<unsigned char>(*l.watch);
      l.reversed = reversed;
      run_grid(l);
      l.watch = nullptr;
      l.reversed = false;
      if (l.written) break;
    }
    const std::string what = "wrote byte " + std::to_string(at) + " of a buffer of " +
                             std::to_string(b.buffer.bytes) + " bytes (" + argument_name(b.arg) +
                             ") with a value that depends on the order in which the threads of "
                             "its block run: a missing __syncthreads() between a write and a "
                             "read of shared memory, or a read of shared memory no thread wrote";
    l.error = std::string("kernel ") + l.name + ", block " + triple(l.writer.block) + ", thread " +
              triple(l.writer.thread) + ": " + what;
    return;
  }
}

}  // namespace

void run(const char* name, dim3 grid, dim3 block, const std::function<void()>& body,
         const ArgBytes* args, size_t nargs) {
  install_handler();
  const unsigned n = block.x * block.y * block.z;
  if (n == 0 || n > 1024 || n % kWarp != 0) {
    throw std::runtime_error(std::string("kernel ") + name + ": " + std::to_string(n) +
                             " threads per block (whole warps, at most 1024)");
  }
  if (active != nullptr) throw std::runtime_error("cuda emulation: nested launch");
  while (stacks.size() < n) {
    void* mem =
        mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) throw std::runtime_error("cuda emulation: no memory for stacks");
    stacks.push_back(static_cast<char*>(mem));
  }
  Launch l;
  l.name = name;
  l.body = &body;
  l.grid = grid;
  l.block = block;
  l.threads.resize(n);
  l.slots.assign(static_cast<size_t>(n) * 16, 0);
  find_buffers(l, args, nargs);
  const Contents before = order_check ? save(l) : Contents();
  active = &l;
  run_grid(l);
  if (order_check && l.error.empty() && !l.used_atomics) check_order(l, before);
  active = nullptr;
  if (!l.error.empty()) throw std::runtime_error(l.error);
}

}  // namespace emulation
