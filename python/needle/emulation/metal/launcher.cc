// Runs MSL kernels (compiled as C++ with msl_emulation.h) on the CPU the way a GPU runs a
// dispatchThreadgroups call: a grid of threadgroups, each threadgroup's threads as real
// threads that share its threadgroup memory and meet at real barriers. A test tool.
//
// Threadgroups run one after another (their `threadgroup` variables are statics, see
// msl_emulation.h); within one, every thread is a std::thread from a pool, so the kernels'
// barriers, SIMD-group exchanges and data races behave as concurrent code. The launcher
// also checks what a GPU would not report: arguments missing or too small for their
// declared types, threads that reach a barrier that others of their group have left or
// that wait at different threadgroup_barrier calls (undefined behaviour on a GPU, where it
// usually hangs), and accesses that fault (a guard page after each buffer, null): the
// SIGSEGV handler ends the faulting thread and the launch, naming the thread.
#define MSL_EMULATION_NO_KEYWORDS
#include "msl_emulation.h"

#include <setjmp.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

extern "C" const msl::KernelEntry msl_kernel_table[];
extern "C" const int msl_kernel_count;

namespace msl {
namespace {

constexpr int kMaxBuffers = 31;                  // Metal's argument table
constexpr uint kMaxThreadsPerThreadgroup = 1024;  // Apple GPUs
constexpr auto kDeadlockTimeout = std::chrono::seconds(30);

struct Abort {};  // unwinds a thread out of a kernel once its launch has failed

class Launch;

// A barrier over `count` threads that also counts the threads that have left the kernel:
// when every thread has either arrived or left, and some have left, the arrivals would wait
// forever, so the launch fails instead.
class Barrier {
 public:
  void reset(uint count) {
    std::lock_guard<std::mutex> lock(mutex_);
    count_ = count;
    arrived_ = exited_ = 0;
  }
  // `file` / `line`: the call's site (null for the SIMD-group barriers, which have none).
  void arrive_and_wait(Launch& launch, const char* what, const char* file = nullptr,
                       int line = 0);
  // A thread has returned from the kernel; with `wait`, block until every thread has, and
  // run `on_release` (under this barrier's lock) in the last one.
  template <typename F> void exit(Launch& launch, bool wait, F on_release);
  void wake() {
    { std::lock_guard<std::mutex> lock(mutex_); }
    cv_.notify_all();
  }

 private:
  void wait_for_generation(std::unique_lock<std::mutex>& lock, Launch& launch,
                           unsigned long generation);
  std::mutex mutex_;
  std::condition_variable cv_;
  uint count_ = 0, arrived_ = 0, exited_ = 0;
  unsigned long generation_ = 0;
  const char* file_ = nullptr;  // where the first thread of this generation waits
  int line_ = 0;
  uint3 first_ = uint3();
};

struct SimdGroup {
  Barrier barrier;
  uint width = 0;
  alignas(16) unsigned char slots[kSimdWidth * 16];
};

class Launch {
 public:
  Launch(const KernelEntry& kernel, void* const* buffers, const size_t* lengths, uint3 groups,
         uint3 threads)
      : kernel_(kernel), buffers_(buffers), lengths_(lengths), groups_(groups), threads_(threads),
        num_threads_(threads.x * threads.y * threads.z),
        simd_groups_((num_threads_ + kSimdWidth - 1) / kSimdWidth) {
    for (uint s = 0; s < simd_groups_.size(); ++s) {
      simd_groups_[s].width = std::min(kSimdWidth, num_threads_ - s * kSimdWidth);
    }
    reset_barriers();
  }

  uint num_threads() const { return num_threads_; }
  const char* kernel_name() const { return kernel_.name; }
  bool failed() const {
    std::lock_guard<std::mutex> lock(error_mutex_);
    return failed_;
  }
  std::string error() const {
    std::lock_guard<std::mutex> lock(error_mutex_);
    return error_;
  }

  void fail(const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(error_mutex_);
      if (failed_) return;
      failed_ = true;
      error_ = message;
    }
    threadgroup_barrier_.wake();
    for (auto& s : simd_groups_) s.barrier.wake();
  }

  std::string where() const;
  void run_thread(uint t);
  // What a faulting address is, in the buffers bound to this launch.
  std::string describe_fault(const void* address, bool write) const;

  Barrier& threadgroup_barrier() { return threadgroup_barrier_; }
  SimdGroup& simd_group(uint s) { return simd_groups_[s]; }

 private:
  void reset_barriers() {
    threadgroup_barrier_.reset(num_threads_);
    for (auto& s : simd_groups_) s.barrier.reset(s.width);
  }

  const KernelEntry& kernel_;
  void* const* buffers_;
  const size_t* lengths_;
  uint3 groups_, threads_;
  uint num_threads_;
  Barrier threadgroup_barrier_;
  std::vector<SimdGroup> simd_groups_;
  mutable std::mutex error_mutex_;
  bool failed_ = false;
  std::string error_;

  friend class Barrier;
};

struct ThreadContext {
  Launch* launch;
  uint lane;
  uint simd_index;
  uint3 group;
  uint3 thread;  // thread_position_in_threadgroup
};
thread_local ThreadContext* current = nullptr;
thread_local sigjmp_buf* fault_exit = nullptr;  // where a faulting kernel thread resumes

std::string triple(uint3 v) {
  return "(" + std::to_string(v.x) + ", " + std::to_string(v.y) + ", " + std::to_string(v.z) +
         ")";
}

std::string site(const char* file, int line) {
  const char* slash = std::strrchr(file, '/');
  return std::string(slash ? slash + 1 : file) + ":" + std::to_string(line);
}

void Barrier::wait_for_generation(std::unique_lock<std::mutex>& lock, Launch& launch,
                                  unsigned long generation) {
  const bool released = cv_.wait_for(lock, kDeadlockTimeout, [&] {
    return generation_ != generation || launch.failed();
  });
  if (launch.failed()) throw Abort();
  if (!released) {
    lock.unlock();
    launch.fail("kernel " + std::string(launch.kernel_.name) +
                ": a barrier waited 30 s (deadlock: some threads wait at another barrier?)");
    throw Abort();
  }
}

void Barrier::arrive_and_wait(Launch& launch, const char* what, const char* file, int line) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (launch.failed()) throw Abort();
  const unsigned long generation = generation_;
  if (arrived_ == 0) {
    file_ = file, line_ = line, first_ = current->thread;
  } else if (file != nullptr && (file != file_ || line != line_)) {
    const std::string message = "kernel " + std::string(launch.kernel_.name) + ", " +
        launch.where() + ": waits at " + what + " (" + site(file, line) + ") while thread " +
        triple(first_) + " waits at another one (" + site(file_, line_) +
        "): every thread of a threadgroup must reach the same barrier";
    lock.unlock();
    launch.fail(message);
    throw Abort();
  }
  ++arrived_;
  if (arrived_ + exited_ == count_) {
    if (exited_ > 0) {
      const std::string message = "kernel " + std::string(launch.kernel_.name) + ", " +
          launch.where() + ": " + std::to_string(arrived_) + " threads reached " + what +
          " while " + std::to_string(exited_) +
          " had returned; Metal requires every thread to reach it";
      lock.unlock();
      launch.fail(message);
      throw Abort();
    }
    arrived_ = 0;
    ++generation_;
    lock.unlock();
    cv_.notify_all();
    return;
  }
  wait_for_generation(lock, launch, generation);
}

template <typename F> void Barrier::exit(Launch& launch, bool wait, F on_release) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (launch.failed()) throw Abort();
  const unsigned long generation = generation_;
  ++exited_;
  if (arrived_ > 0 && arrived_ + exited_ == count_) {
    const std::string message = "kernel " + std::string(launch.kernel_.name) + ", " +
        launch.where() + ": " + std::to_string(arrived_) +
        " threads wait at a barrier that the other " + std::to_string(exited_) +
        " left by returning; Metal requires every thread to reach it";
    lock.unlock();
    launch.fail(message);
    throw Abort();
  }
  if (!wait) return;
  if (exited_ == count_) {
    exited_ = 0;
    on_release();
    ++generation_;
    lock.unlock();
    cv_.notify_all();
    return;
  }
  wait_for_generation(lock, launch, generation);
}

// The threadgroup and thread of the calling thread, for messages.
std::string Launch::where() const {
  return "threadgroup " + triple(current->group) + ", thread " + triple(current->thread);
}

std::string Launch::describe_fault(const void* address, bool write) const {
  const std::string access = write ? "write" : "read";
  const uintptr_t a = reinterpret_cast<uintptr_t>(address);
  if (a < 65536) return access + " through a null pointer";
  for (int k = 0; k < kernel_.num_args; ++k) {
    const ArgSpec& arg = kernel_.args[k];
    const uintptr_t start = reinterpret_cast<uintptr_t>(buffers_[arg.index]);
    // The guard page after the buffer, or before it: within a page of its bound bytes.
    if (a + 4096 >= start && a < start + lengths_[arg.index] + 4096) {
      const long offset = static_cast<long>(a - start);
      return "out-of-bounds " + access + (offset < 0 ? " before the start" : " past the end") +
             " of argument '" + arg.name + "' at [[buffer(" + std::to_string(arg.index) +
             ")]], " + std::to_string(lengths_[arg.index]) + " bytes bound (at byte " +
             std::to_string(offset) + ")";
    }
  }
  return "invalid " + access + " at an address outside every bound buffer";
}

void Launch::run_thread(uint t) {
  ThreadPosition pos;
  pos.threads_per_threadgroup = threads_;
  pos.threadgroups_per_grid = groups_;
  pos.threads_per_grid = uint3(groups_.x * threads_.x, groups_.y * threads_.y,
                               groups_.z * threads_.z);
  pos.thread_position_in_threadgroup =
      uint3(t % threads_.x, (t / threads_.x) % threads_.y, t / (threads_.x * threads_.y));
  pos.thread_index_in_threadgroup = t;
  pos.simdgroup_index_in_threadgroup = t / kSimdWidth;
  pos.thread_index_in_simdgroup = t % kSimdWidth;
  pos.threads_per_simdgroup = kSimdWidth;
  pos.simdgroups_per_threadgroup = static_cast<uint>(simd_groups_.size());

  ThreadContext context{this, t % kSimdWidth, t / kSimdWidth, uint3(),
                        pos.thread_position_in_threadgroup};
  current = &context;
  SimdGroup& simd = simd_groups_[context.simd_index];
  sigjmp_buf on_fault;
  if (sigsetjmp(on_fault, 1) != 0) {  // the SIGSEGV handler has failed the launch
    fault_exit = nullptr;
    current = nullptr;
    return;
  }
  fault_exit = &on_fault;
  try {
    for (uint gz = 0; gz < groups_.z; ++gz) {
      for (uint gy = 0; gy < groups_.y; ++gy) {
        for (uint gx = 0; gx < groups_.x; ++gx) {
          context.group = uint3(gx, gy, gz);
          pos.threadgroup_position_in_grid = context.group;
          pos.thread_position_in_grid =
              context.group * threads_ + pos.thread_position_in_threadgroup;
          kernel_.function(buffers_, pos);
          simd.barrier.exit(*this, false, [] {});
          // The last thread out resets the SIMD-group barriers for the next threadgroup.
          threadgroup_barrier_.exit(*this, true, [this] {
            for (auto& s : simd_groups_) s.barrier.reset(s.width);
          });
        }
      }
    }
  } catch (const Abort&) {
  }
  fault_exit = nullptr;
  current = nullptr;
}

// A pool of threads reused across launches (a launch needs up to 1024 of them).
class Pool {
 public:
  void run(Launch& launch) {
    const uint n = launch.num_threads();
    std::unique_lock<std::mutex> lock(mutex_);
    while (workers_ < n) {
      std::thread(&Pool::work, this, workers_++).detach();
    }
    job_ = &launch;
    job_threads_ = n;
    done_ = 0;
    ++job_id_;
    start_.notify_all();
    finished_.wait(lock, [&] { return done_ == job_threads_; });
    job_ = nullptr;
  }

 private:
  void work(uint index) {
    unsigned long seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      start_.wait(lock, [&] { return job_id_ != seen && index < job_threads_; });
      seen = job_id_;
      Launch* launch = job_;
      lock.unlock();
      launch->run_thread(index);
      lock.lock();
      if (++done_ == job_threads_) finished_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable start_, finished_;
  uint workers_ = 0;
  unsigned long job_id_ = 0;
  Launch* job_ = nullptr;
  uint job_threads_ = 0;
  uint done_ = 0;
};

Pool& pool() {
  static Pool* instance = new Pool();  // never destroyed: its detached threads outlive main
  return *instance;
}

std::mutex launch_mutex;
struct sigaction previous_handler;

// A fault in a kernel thread fails the launch as that thread and ends it (siglongjmp back to
// run_thread); a fault anywhere else goes to the handler that was there before.
void on_segfault(int, siginfo_t* info, void* context) {
  if (current == nullptr || fault_exit == nullptr) {
    sigaction(SIGSEGV, &previous_handler, nullptr);
    return;  // the access faults again, under the previous handler
  }
  bool write = false;
#if defined(__x86_64__)
  write = (static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
  (void)context;
#endif
  Launch& launch = *current->launch;
  launch.fail("kernel " + std::string(launch.kernel_name()) + ", " + launch.where() + ": " +
              launch.describe_fault(info->si_addr, write));
  siglongjmp(*fault_exit, 1);
}

void install_handler() {
  struct sigaction action {}, installed{};
  action.sa_sigaction = on_segfault;
  action.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, nullptr, &installed);
  if (installed.sa_sigaction == on_segfault) return;
  previous_handler = installed;
  sigaction(SIGSEGV, &action, nullptr);
}

}  // namespace

void threadgroup_barrier_impl(const char* file, int line) {
  current->launch->threadgroup_barrier().arrive_and_wait(*current->launch, "threadgroup_barrier",
                                                         file, line);
}

void simdgroup_barrier_impl() {
  current->launch->simd_group(current->simd_index).barrier.arrive_and_wait(
      *current->launch, "a SIMD-group barrier or function");
}

uint current_lane() { return current->lane; }

uint current_simd_width() { return current->launch->simd_group(current->simd_index).width; }

const void* simd_exchange_begin(const void* value, size_t size) {
  SimdGroup& simd = current->launch->simd_group(current->simd_index);
  std::memcpy(simd.slots + current->lane * size, value, size);
  simdgroup_barrier_impl();
  return simd.slots;
}

void simd_exchange_done() { simdgroup_barrier_impl(); }

}  // namespace msl

namespace {
void set_error(char* error, size_t error_size, const std::string& message) {
  if (error_size == 0) return;
  std::snprintf(error, error_size, "%s", message.c_str());
}
}  // namespace

extern "C" {

// The names of the kernels in this library, one per line.
int msl_kernel_names(char* out, size_t out_size) {
  std::string names;
  for (int k = 0; k < msl_kernel_count; ++k) names += std::string(msl_kernel_table[k].name) + "\n";
  set_error(out, out_size, names);
  return static_cast<int>(names.size());
}

// Runs `kernel` over groups[0] x groups[1] x groups[2] threadgroups of
// threads[0] x threads[1] x threads[2] threads. buffers[i] / lengths[i] is what is bound at
// [[buffer(i)]] (nullptr / 0 when nothing is). Returns 0, or -1 with a message in `error`.
int msl_launch(const char* kernel, void* const* buffers, const size_t* lengths,
               const unsigned* groups, const unsigned* threads, char* error, size_t error_size) {
  using namespace msl;
  const KernelEntry* entry = nullptr;
  for (int k = 0; k < msl_kernel_count; ++k) {
    if (std::strcmp(msl_kernel_table[k].name, kernel) == 0) entry = &msl_kernel_table[k];
  }
  if (entry == nullptr) {
    set_error(error, error_size, std::string("no kernel named ") + kernel);
    return -1;
  }
  const std::string name = std::string("kernel ") + kernel + ": ";
  const uint num_threads = threads[0] * threads[1] * threads[2];
  if (num_threads == 0 || num_threads > kMaxThreadsPerThreadgroup) {
    set_error(error, error_size, name + std::to_string(num_threads) +
              " threads per threadgroup (Metal allows 1 to 1024)");
    return -1;
  }
  if (groups[0] == 0 || groups[1] == 0 || groups[2] == 0) {
    set_error(error, error_size, name + "a grid with no threadgroups");
    return -1;
  }
  bool declared[kMaxBuffers] = {};
  for (int a = 0; a < entry->num_args; ++a) {
    const ArgSpec& arg = entry->args[a];
    declared[arg.index] = true;
    if (buffers[arg.index] == nullptr) {
      set_error(error, error_size, name + "nothing bound at [[buffer(" +
                std::to_string(arg.index) + ")]] for argument '" + arg.name + "'");
      return -1;
    }
    if (lengths[arg.index] < arg.size) {
      set_error(error, error_size, name + "argument '" + arg.name + "' at [[buffer(" +
                std::to_string(arg.index) + ")]] needs " + std::to_string(arg.size) +
                " bytes, " + std::to_string(lengths[arg.index]) + " are bound");
      return -1;
    }
  }
  for (int i = 0; i < kMaxBuffers; ++i) {
    if (buffers[i] != nullptr && !declared[i]) {
      set_error(error, error_size, name + "something is bound at [[buffer(" +
                std::to_string(i) + ")]], which the kernel does not declare");
      return -1;
    }
  }
  std::lock_guard<std::mutex> lock(launch_mutex);
  install_handler();
  Launch launch(*entry, buffers, lengths, uint3(groups[0], groups[1], groups[2]),
                uint3(threads[0], threads[1], threads[2]));
  pool().run(launch);
  if (launch.failed()) {
    set_error(error, error_size, launch.error());
    return -1;
  }
  return 0;
}

}  // extern "C"
