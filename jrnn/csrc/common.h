// The machinery under jrnn's compiled recurrence (recurrence.cc) that does not depend on the
// instruction set (loops.h holds what does): aligned buffers, a team of threads that meets at a
// barrier once per step, and shape checks for the XLA FFI handlers.

#ifndef JRNN_CSRC_COMMON_H_
#define JRNN_CSRC_COMMON_H_

#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace jrnn {
namespace {

namespace ffi = xla::ffi;

constexpr int kPanel = 32;  // matmul output columns per packed panel
constexpr int kLine = 16;   // floats per 64-byte cache line

// ---------------------------------------------------------------------------------------------
// Threads.

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
using Floats = std::unique_ptr<float[], AlignedFree>;
using Halves = std::unique_ptr<uint16_t[], AlignedFree>;  // bfloat16 bit patterns

Floats Allocate(size_t n) {
  size_t bytes = std::max<size_t>(64, (n * sizeof(float) + 63) / 64 * 64);
  return Floats(static_cast<float*>(std::aligned_alloc(64, bytes)));
}

// n bfloat16s, zeroed (the pads of odd-sized rows stay zero).
Halves AllocateHalves(size_t n) {
  size_t bytes = std::max<size_t>(64, (n * sizeof(uint16_t) + 63) / 64 * 64);
  Halves h(static_cast<uint16_t*>(std::aligned_alloc(64, bytes)));
  std::memset(h.get(), 0, bytes);
  return h;
}

// Asks the kernel to back the whole 2 MiB pages inside [p, p + bytes) with transparent huge
// pages (Linux with THP "madvise" or "always"; elsewhere a no-op): a hint, on which no result
// depends. For the forward call's outputs: XLA:CPU allocates an executable's temporaries with
// malloc, and under glibc's defaults a block over 32 MiB is a fresh mmap on every run, its 4 KiB
// pages faulted in one at a time as the loop first writes them. Measured on a 2-core AMD EPYC
// VM, glibc defaults, train steps: bidirectional LSTM-256 (B = 32, T = 128) 15,700 -> 5,000
// faults and 36 -> 18 ms of kernel time per step; the 2-layer one 364.8 -> 344.0 and 379.5 ->
// 362.8 ms (in-process, interleaved), LSTM-64 at T = 10,000 480.9 -> 397.3 ms; the 1-layer
// LSTM-256, whose temporaries glibc keeps in its heap, 59.0 / 58.4 ms.
inline void AdviseHugePages(void* p, size_t bytes) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  const uintptr_t begin = (at + kHuge - 1) & ~(kHuge - 1), end = (at + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// Tells the core that this thread is spinning.
inline void Pause() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// A spinning barrier: steps are tens of microseconds, too short to sleep between.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void Wait() {
    if (n_ == 1) return;
    int generation = generation_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < 1 << 14) {
        Pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  const int n_;
  std::atomic<int> count_{0};
  std::atomic<int> generation_{0};
};

int AvailableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Helper threads that outlive a call, one pinned to each core the process may use when the pool
// is made: a call borrows those on the cores other than its caller's instead of starting and
// pinning threads of its own. Measured on a 2-core VM, per call of a team of two: 650-900 us to
// start, pin and join a thread; 10-16 us to borrow a spinning helper, ~50 us a sleeping one
// (moving a thread to another core alone costs ~50 us). Between calls a helper spins (kSpin, yielding
// its core to any other thread that wants it after the first few microseconds), since the next
// call often follows at once (remat's next chunk), then sleeps on a condition variable. A call
// that finds a helper it needs busy (XLA running two calls at once) starts threads of its own.
// A child process after fork() has none of its parent's helpers and makes its own pool.
class Pool {
 public:
  using Job = void (*)(void* context, int worker);

  // The pool of this process, made at the first call that needs one.
  static Pool& Get() {
    static std::mutex made;
    static Pool* pool = nullptr;
    std::lock_guard<std::mutex> lock(made);
    if (pool == nullptr || pool->pid_ != getpid()) pool = new Pool();  // never freed: see above
    return *pool;
  }

  // Takes the helpers of `cores` (helper i runs worker i + 1); false, taking none, when one of
  // them is busy or missing (a core the process may use now but could not then).
  bool Acquire(const std::vector<int>& cores, std::vector<int>* taken) {
    taken->clear();
    for (int core : cores) {
      int found = -1;
      for (size_t h = 0; h < helpers_.size(); ++h) {
        if (helpers_[h]->core == core) found = static_cast<int>(h);
      }
      if (found < 0 || !helpers_[found]->busy.try_lock()) {
        Release(*taken);
        return false;
      }
      taken->push_back(found);
    }
    return true;
  }

  // Gives back what Acquire took.
  void Release(const std::vector<int>& taken) {
    for (int h : taken) helpers_[h]->busy.unlock();
  }

  // Runs job(context, i + 1) on the i-th taken helper, each adding 1 to *done when it is
  // through; Wait(done, n) returns once n have. (Two calls may hold disjoint helpers at once:
  // each counts in its own *done.)
  void Start(const std::vector<int>& taken, Job job, void* context, std::atomic<int>* done) {
    for (size_t i = 0; i < taken.size(); ++i) {
      Helper& helper = *helpers_[taken[i]];
      {
        std::lock_guard<std::mutex> lock(helper.mutex);
        helper.job = job;
        helper.context = context;
        helper.worker = static_cast<int>(i) + 1;
        helper.done = done;
        helper.generation.fetch_add(1, std::memory_order_release);
      }
      helper.wake.notify_one();
    }
  }

  static void Wait(const std::atomic<int>* done, int n) {
    for (int spins = 0; done->load(std::memory_order_acquire) < n; ++spins) {
      if (spins < 1 << 14) {
        Pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static constexpr auto kSpin = std::chrono::microseconds(200);

  struct Helper {
    int core;
    std::mutex busy;   // held by the call that borrows it
    std::mutex mutex;  // guards job, context, worker, done and the sleep on wake
    std::condition_variable wake;
    std::atomic<uint64_t> generation{0};
    Job job = nullptr;
    void* context = nullptr;
    int worker = 0;
    std::atomic<int>* done = nullptr;
  };

  Pool() : pid_(getpid()) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return;
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (!CPU_ISSET(c, &set)) continue;
      helpers_.push_back(std::make_unique<Helper>());
      helpers_.back()->core = c;
    }
    for (auto& helper : helpers_) {
      Helper* h = helper.get();
      std::thread thread([this, h] { Serve(h); });
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(h->core, &one);
      pthread_setaffinity_np(thread.native_handle(), sizeof one, &one);
      pthread_setname_np(thread.native_handle(), "jrnn-helper");
      thread.detach();
    }
  }

  void Serve(Helper* h) {
    uint64_t seen = 0;
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      for (int spins = 0; h->generation.load(std::memory_order_acquire) == seen; ++spins) {
        if (spins < 256) {
          Pause();
          continue;
        }
        if (std::chrono::steady_clock::now() - start > kSpin) {
          std::unique_lock<std::mutex> lock(h->mutex);
          h->wake.wait(lock, [&] { return h->generation.load() != seen; });
          break;
        }
        std::this_thread::yield();
      }
      Job job;
      void* context;
      int worker;
      std::atomic<int>* done;
      {
        std::lock_guard<std::mutex> lock(h->mutex);
        seen = h->generation.load(std::memory_order_relaxed);
        job = h->job;
        context = h->context;
        worker = h->worker;
        done = h->done;
      }
      job(context, worker);
      done->fetch_add(1, std::memory_order_acq_rel);
    }
  }

  const pid_t pid_;
  std::vector<std::unique_ptr<Helper>> helpers_;
};

// The threads of one call: `threads` workers (the calling thread is worker 0) that all run
// body(worker) and meet at Sync() after each step. A step's work is a list of units; ForEach
// hands each unit to exactly one worker. A worker takes its own share first, so that a unit's
// weights stay in one core's cache from step to step, then helps the others: the cores of a
// virtual machine seldom run at the same speed (here one ran 30% slower than the other).
class Team {
 public:
  Team(int64_t units, int64_t cores)
      : threads_(static_cast<int>(std::max<int64_t>(1, std::min(cores, units)))),
        units_(units),
        barrier_(threads_),
        cursors_(new Cursor[2 * threads_]) {}

  int threads() const { return threads_; }

  // Runs body(worker) on every worker, each on a core of its own: the calling thread stays on
  // the core it is on, pinned there for the call only (its own set is restored at the end),
  // and the other workers are the Pool's helpers on other cores of the caller's set. Left to
  // the scheduler, two workers may share a core for milliseconds; meeting at a spinning
  // barrier every few microseconds, they then crawl: an RNN-256 forward pass (B = 32,
  // T = 128) took 13-25 ms so against 3.5 ms pinned. Where the pool cannot serve the call, it
  // starts threads of its own, pinned likewise.
  template <typename Body>
  void Run(Body body) {
    if (threads_ == 1) return body(0);
    cpu_set_t own;
    const bool known = sched_getaffinity(0, sizeof own, &own) == 0;
    const std::vector<int> cores = known ? HereFirst(own) : std::vector<int>();
    const bool pin = static_cast<int>(cores.size()) >= threads_;
    Pool& pool = Pool::Get();  // before the pinning: the pool takes the caller's set as it is
    if (pin) PinTo(cores[0]);
    std::vector<int> taken;  // helpers on the workers' cores but the caller's
    if (pin && pool.Acquire({cores.begin() + 1, cores.begin() + threads_}, &taken)) {
      std::atomic<int> done{0};
      pool.Start(taken, [](void* b, int i) { (*static_cast<Body*>(b))(i); }, &body, &done);
      body(0);
      Pool::Wait(&done, static_cast<int>(taken.size()));
      pool.Release(taken);
    } else {
      std::vector<std::thread> started;
      for (int i = 1; i < threads_; ++i) {
        started.emplace_back([&, i] {
          if (pin) PinTo(cores[i]);
          body(i);
        });
      }
      body(0);
      for (auto& t : started) t.join();
    }
    if (pin) sched_setaffinity(0, sizeof own, &own);
  }

  void Sync() { barrier_.Wait(); }

  // Calls fn(unit) for this worker's units of step `step` (numbered 0, 1, 2, ... by the caller),
  // of `units` units in all (the team's number of units unless given).
  template <typename Fn>
  void ForEach(int me, int64_t step, Fn fn) {
    ForEach(me, step, units_, fn);
  }

  template <typename Fn>
  void ForEach(int me, int64_t step, int64_t units, Fn fn) {
    Cursor* now = cursors_.get() + (step & 1) * threads_;
    if (me == 0) {  // the other parity's step ended before the last Sync: ready it for the next
      Cursor* next = cursors_.get() + ((step + 1) & 1) * threads_;
      for (int i = 0; i < threads_; ++i) next[i].next.store(0, std::memory_order_relaxed);
    }
    for (int k = 0; k < threads_; ++k) {
      const int j = (me + k) % threads_;
      const int64_t begin = Begin(j, units), share = Begin(j + 1, units) - begin;
      for (int64_t c; (c = now[j].next.fetch_add(1, std::memory_order_relaxed)) < share;) {
        fn(begin + c);
      }
    }
  }

 private:
  // The cores of `set`, the one this thread is on first.
  static std::vector<int> HereFirst(const cpu_set_t& set) {
    std::vector<int> cores;
    const int here = sched_getcpu();
    if (here >= 0 && CPU_ISSET(here, &set)) cores.push_back(here);
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set) && c != here) cores.push_back(c);
    }
    return cores;
  }

  static void PinTo(int core) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(core, &one);
    sched_setaffinity(0, sizeof one, &one);
  }

  struct alignas(64) Cursor {
    std::atomic<int64_t> next{0};  // the next of a worker's share of units, counted from 0
  };
  int64_t Begin(int i, int64_t units) const { return units * i / threads_; }

  const int threads_;
  const int64_t units_;
  Barrier barrier_;
  std::unique_ptr<Cursor[]> cursors_;
};

inline void Put(float* dst, const float* src, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }

std::string Shape(ffi::Span<const int64_t> dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

ffi::Error Expect(const char* name, ffi::Span<const int64_t> dims,
                  ffi::Span<const int64_t> want) {
  if (std::equal(dims.begin(), dims.end(), want.begin(), want.end())) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string("jrnn: ") + name +
                                     ": expected shape " + Shape(want) + ", got " + Shape(dims));
}

ffi::Error Expect(const char* name, ffi::Span<const int64_t> dims,
                  std::initializer_list<int64_t> want) {
  return Expect(name, dims, ffi::Span<const int64_t>(want.begin(), want.size()));
}

#define JRNN_CHECK(expr)             \
  do {                               \
    ffi::Error error = (expr);       \
    if (error.failure()) return error; \
  } while (0)

}  // namespace
}  // namespace jrnn

#endif  // JRNN_CSRC_COMMON_H_
