// The machinery under jrnn's compiled recurrence (recurrence.cc) that does not depend on the
// instruction set (loops.h holds what does): aligned buffers, a team of threads that meets at a
// barrier once per step, and shape checks for the XLA FFI handlers.

#ifndef JRNN_CSRC_COMMON_H_
#define JRNN_CSRC_COMMON_H_

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
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
  void operator()(float* p) const { std::free(p); }
};
using Floats = std::unique_ptr<float[], AlignedFree>;

Floats Allocate(size_t n) {
  size_t bytes = std::max<size_t>(64, (n * sizeof(float) + 63) / 64 * 64);
  return Floats(static_cast<float*>(std::aligned_alloc(64, bytes)));
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
        cursors_(new Cursor[2 * threads_]) {
    for (int i = 0; i < 2 * threads_; ++i) cursors_[i].next.store(Begin(i % threads_));
  }

  int threads() const { return threads_; }

  // Runs body(worker) on every worker, each on a core of its own: the calling thread stays on
  // the core it is on and each helper is pinned to another of the cores it may use, for the
  // call only (the caller's own set is restored at the end). Left to the scheduler, a new
  // thread starts on its parent's core and is moved only milliseconds later; two threads that
  // meet at a spinning barrier every few microseconds then share one core: an RNN-256 forward
  // pass (B = 32, T = 128) took 13-25 ms so against 3.5 ms pinned.
  template <typename Body>
  void Run(Body body) {
    cpu_set_t own;
    const bool known = threads_ > 1 && sched_getaffinity(0, sizeof own, &own) == 0;
    const std::vector<int> cores = known ? HereFirst(own) : std::vector<int>();
    const bool pin = static_cast<int>(cores.size()) >= threads_;
    if (pin) PinTo(cores[0]);
    std::vector<std::thread> pool;
    for (int i = 1; i < threads_; ++i) {
      pool.emplace_back([&, i] {
        if (pin) PinTo(cores[i]);
        body(i);
      });
    }
    body(0);
    for (auto& t : pool) t.join();
    if (pin) sched_setaffinity(0, sizeof own, &own);
  }

  void Sync() { barrier_.Wait(); }

  // Calls fn(unit) for this worker's units of step `step` (numbered 0, 1, 2, ... by the caller).
  template <typename Fn>
  void ForEach(int me, int64_t step, Fn fn) {
    Cursor* now = cursors_.get() + (step & 1) * threads_;
    if (me == 0) {  // the other parity's step ended before the last Sync: ready it for the next
      Cursor* next = cursors_.get() + ((step + 1) & 1) * threads_;
      for (int i = 0; i < threads_; ++i) next[i].next.store(Begin(i), std::memory_order_relaxed);
    }
    for (int k = 0; k < threads_; ++k) {
      const int j = (me + k) % threads_;
      for (int64_t u; (u = now[j].next.fetch_add(1, std::memory_order_relaxed)) < Begin(j + 1);) {
        fn(u);
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
    std::atomic<int64_t> next{0};
  };
  int64_t Begin(int i) const { return units_ * i / threads_; }

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
