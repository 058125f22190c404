// The CPU backend's threads: a small pool of its own rather than OpenMP.
//
// Why not OpenMP: test processes also load PyTorch, which brings its own libgomp; two
// OpenMP runtimes (or one shared with torch and tuned by its settings) make our thread
// count depend on torch's, and GNU libgomp is not fork-safe (a child forked after a
// parallel region, such as a DataLoader worker, can hang in its next one). This pool is
// re-created after fork, sized only by set_num_threads, and its workers poll for the next
// job (yielding) for 1 ms after one ends and then sleep, so they never compete with NumPy's
// or torch's threads for long.

#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

namespace needle {
namespace cpu {

// The most threads set_num_threads accepts (NEEDLE_NUM_THREADS above it is clamped to it).
constexpr int kMaxThreads = 256;

// Threads a parallel kernel may use: the caller plus num_threads() - 1 workers.
int num_threads();
// 1 <= n <= kMaxThreads (checked by the binding). Workers are started lazily by the next parallel
// job.
void set_num_threads(int n);
// NEEDLE_NUM_THREADS if it is a positive integer, else the cores this process may run on.
int default_num_threads();
// True when NEEDLE_NUM_THREADS is set but is not a positive integer (the binding warns).
bool num_threads_env_invalid();
// True when NEEDLE_NUM_THREADS is an integer above kMaxThreads (used as kMaxThreads).
bool num_threads_env_clamped();

using TaskFn = void (*)(void *context, int thread, int n_threads);

// Runs fn(context, t, n) for t in [0, n) on n threads, the caller being t = 0, and returns
// when all have finished. A call made from inside a task runs serially with n = 1, so
// kernels can nest without oversubscribing. Calls from several threads at once (Python
// threads, the GIL released) take the pool in turn.
void parallel_run(int n_threads, TaskFn fn, void *context);

// parallel(n, [&](int thread, int n_threads) { ... }) with the same semantics; the task
// must not throw (a worker has nowhere to send the exception).
template <class F> void parallel(int n_threads, F &&f) {
  using Fn = std::remove_reference_t<F>;
  if (n_threads <= 1) return f(0, 1);
  parallel_run(
      n_threads, [](void *ctx, int t, int n) { (*static_cast<Fn *>(ctx))(t, n); },
      const_cast<void *>(static_cast<const void *>(&f)));
}

// The part [begin, end) of [0, total) that thread t of n gets: contiguous, in multiples of
// `grain` (so chunk boundaries stay aligned), as even as the grain allows.
struct Range { int64_t begin, end; };
inline Range split_range(int64_t total, int t, int n, int64_t grain = 1) {
  const int64_t units = (total + grain - 1) / grain;
  const int64_t per = units / n, extra = units % n;
  const int64_t first = t * per + std::min<int64_t>(t, extra);
  const int64_t count = per + (t < extra ? 1 : 0);
  return {std::min(total, first * grain), std::min(total, (first + count) * grain)};
}

// Threads worth using for `work` units when each thread should get at least `min_per_thread`.
inline int threads_for(int64_t work, int64_t min_per_thread) {
  const int64_t by_work = std::max<int64_t>(1, work / std::max<int64_t>(1, min_per_thread));
  return static_cast<int>(std::min<int64_t>(num_threads(), by_work));
}

// Spin-wait helper: a few pauses (about a microsecond: a pause is ~100 cycles on recent
// Intel cores), then yield on every poll. Yielding is what keeps spinning harmless when two
// of our threads share a core (a loaded machine can leave them so): the waiter hands the
// core to the thread it waits for, instead of burning the time slice that thread needs.
// On an otherwise idle core, yield returns at once.
class Backoff {
 public:
  void operator()();

 private:
  int spins_ = 0;
};

}  // namespace cpu
}  // namespace needle
