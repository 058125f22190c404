#include "thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace needle {
namespace cpu {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

constexpr int kPausesBeforeYield = 16;  // see Backoff in thread_pool.h

// How long an idle worker keeps polling for the next job before it sleeps. Long enough to
// cover the Python between two parallel kernels of a training step: a loss on small arrays
// runs ~150 us of Python ops with no parallel kernel, and waking a sleeping worker costs
// ~40 us on a VM (a 128 x 512 x 512 product after a 0.5 ms pause took 345 us with a 100 us
// spin, 279 us with 1 ms; hot, 265 us). Short enough that a worker does not hold a core for
// long once needle goes idle; polls yield, so other threads get the core meanwhile.
constexpr auto kSpinBeforeSleep = std::chrono::microseconds(1000);

int parse_env_threads(bool *invalid, bool *clamped = nullptr) {
  *invalid = false;
  if (clamped) *clamped = false;
  const char *env = std::getenv("NEEDLE_NUM_THREADS");
  if (!env || !*env) return 0;
  char *end = nullptr;
  long v = std::strtol(env, &end, 10);
  while (end && (*end == ' ' || *end == '\t' || *end == '\n')) ++end;
  if (!end || *end != '\0' || v < 1) {
    *invalid = true;
    return 0;
  }
  if (v > kMaxThreads) {  // strtol's overflow (LONG_MAX) included
    if (clamped) *clamped = true;
    return kMaxThreads;
  }
  return static_cast<int>(v);
}

int available_cores() {
#ifdef __linux__
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

class Pool {
 public:
  // Starts `workers` threads, each serving jobs with its own thread index 1..workers.
  explicit Pool(int workers) : claims_(new std::atomic<uint64_t>[workers + 1]) {
    for (int i = 0; i <= workers; ++i) claims_[i].store(0);
    threads_.reserve(workers);
    try {
      for (int i = 1; i <= workers; ++i) threads_.emplace_back([this, i] { serve(i); });
    } catch (...) {  // could not start a thread: stop the ones that did start
      shut_down();
      throw;
    }
  }

  ~Pool() { shut_down(); }

  int workers() const { return static_cast<int>(threads_.size()); }

  // Task t of the job is run by worker t or, when that worker has not claimed it by the time
  // the caller is done with task 0, by the caller: a worker that the OS has not scheduled
  // (another process on its core) delays the job by at most the task, not by a time slice.
  // Each task still gets its own index, so results are the same whoever runs it.
  void run(int n, TaskFn fn, void *context) {
    fn_ = fn;
    context_ = context;
    n_threads_ = n;
    const uint64_t job = generation_.load() + 1;
    for (int i = n; i <= workers(); ++i) claims_[i].store(job, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    publish();  // generation_ becomes `job`
    fn(context, 0, n);
    for (int i = 1; i < n; ++i)
      if (claim(i, job)) {
        fn(context, i, n);
        done_.fetch_add(1, std::memory_order_release);
      }
    for (Backoff backoff; done_.load(std::memory_order_acquire) != n - 1;) backoff();
  }

 private:
  void shut_down() {
    stop_.store(true);
    publish();
    for (auto &t : threads_) t.join();
    threads_.clear();
  }

  // Makes the job (or stop_) visible and wakes sleeping workers. The seq_cst pair
  // generation_/sleeping_ (here, and in serve) guarantees that a worker about to sleep
  // either sees the new generation or is counted in sleeping_ and gets notified.
  void publish() {
    generation_.fetch_add(1);
    if (sleeping_.load() > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      wake_.notify_all();
    }
  }

  void serve(int index) {
    uint64_t seen = 0;
    for (;;) {
      const auto deadline = std::chrono::steady_clock::now() + kSpinBeforeSleep;
      Backoff backoff;
      for (int polls = 1; generation_.load() == seen; ++polls) {
        backoff();
        if (polls % 16 == 0 && std::chrono::steady_clock::now() > deadline) {
          std::unique_lock<std::mutex> lock(mutex_);
          sleeping_.fetch_add(1);
          wake_.wait(lock, [&] { return generation_.load() != seen; });
          sleeping_.fetch_sub(1);
          break;
        }
      }
      seen = generation_.load();
      if (stop_.load()) return;
      // A claim succeeds only while job `seen` runs (it waits for every claimed task), so
      // the job's fields are still its own; a late worker finds its task taken.
      if (claim(index, seen)) {
        run_task(fn_, context_, index, n_threads_);
        done_.fetch_add(1, std::memory_order_release);
      }
    }
  }

  // Takes task `index` of job `job` unless someone (its worker or the caller) has.
  bool claim(int index, uint64_t job) {
    uint64_t v = claims_[index].load(std::memory_order_acquire);
    return v < job && claims_[index].compare_exchange_strong(v, job, std::memory_order_acq_rel);
  }

  static void run_task(TaskFn fn, void *context, int index, int n);

  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> sleeping_{0};
  std::unique_ptr<std::atomic<uint64_t>[]> claims_;  // per task: the last job that took it
  std::atomic<int> done_{0};                          // tasks 1.. of the current job done
  std::atomic<bool> stop_{false};
  // The current job; written before publish() and read by workers after they see it.
  TaskFn fn_ = nullptr;
  void *context_ = nullptr;
  int n_threads_ = 1;
};

thread_local bool t_in_task = false;

void Pool::run_task(TaskFn fn, void *context, int index, int n) {
  t_in_task = true;
  fn(context, index, n);
  t_in_task = false;
}

std::atomic<int> g_num_threads{0};  // 0: not yet initialised
// One job at a time, and pool replacement. Python threads call kernels with the GIL
// released, so two callers can get here at once: the second waits for the first's job to
// end (it cannot run its own with fewer threads instead: a reduction's split, and so its
// rounding, depends on the thread count). A pool worker never waits here (t_in_task: it
// runs a nested call serially), so the wait cannot deadlock.
std::mutex g_pool_mutex;
Pool *g_pool = nullptr;             // never destroyed: workers may outlive static teardown

// In a forked child only the forking thread exists: drop the parent's pool without touching
// it (its threads are gone) and start a new one on demand.
void after_fork_in_child() {
  new (&g_pool_mutex) std::mutex();
  g_pool = nullptr;
}

int ensure_initialised() {
  int n = g_num_threads.load(std::memory_order_relaxed);
  if (n == 0) {
    static const bool registered = [] {
      pthread_atfork(nullptr, nullptr, after_fork_in_child);
      return true;
    }();
    (void)registered;
    n = default_num_threads();
    int expected = 0;
    if (!g_num_threads.compare_exchange_strong(expected, n)) n = expected;
  }
  return n;
}

}  // namespace

int default_num_threads() {
  bool invalid;
  int env = parse_env_threads(&invalid);
  return env > 0 ? env : std::min(available_cores(), kMaxThreads);
}

bool num_threads_env_invalid() {
  bool invalid;
  parse_env_threads(&invalid);
  return invalid;
}

bool num_threads_env_clamped() {
  bool invalid, clamped;
  parse_env_threads(&invalid, &clamped);
  return clamped;
}

int num_threads() { return ensure_initialised(); }

void set_num_threads(int n) {
  ensure_initialised();
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  g_num_threads.store(std::max(1, n));
  if (g_pool && g_pool->workers() != g_num_threads.load() - 1) {
    delete g_pool;  // joins its idle workers
    g_pool = nullptr;
  }
}

void parallel_run(int n_threads, TaskFn fn, void *context) {
  n_threads = std::min(n_threads, num_threads());
  if (n_threads <= 1 || t_in_task) return fn(context, 0, 1);
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (!g_pool) g_pool = new Pool(g_num_threads.load() - 1);
  n_threads = std::min(n_threads, g_pool->workers() + 1);
  t_in_task = true;
  g_pool->run(n_threads, fn, context);
  t_in_task = false;
}

void Backoff::operator()() {
  if (++spins_ <= kPausesBeforeYield) {
    cpu_relax();
  } else {
    std::this_thread::yield();
  }
}

}  // namespace cpu
}  // namespace needle
