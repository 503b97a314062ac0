// The machinery under jrnn's compiled recurrence (recurrence.cc): 16-float vectors, a
// register-tiled matmul over packed panels of 32 columns, a team of threads that meets at a
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

using vf = float __attribute__((vector_size(64)));

constexpr int kLanes = 16;
constexpr int kPanel = 32;  // matmul output columns per packed panel: two vectors
constexpr int kTileRows = 8;

inline vf Load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void Store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

inline vf Splat(float a) { return vf{a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a}; }

// ---------------------------------------------------------------------------------------------
// Matmul: out (m, 32) = a (m, K) @ b (K, 32), b packed (K rows of 32 contiguous floats), a
// row-major with leading dimension lda. Register tiles of up to 8 rows x 32 columns; K in blocks
// of 256, whose part of b (32 KiB) stays in L1 while every row tile reads it.

template <int M, bool kAccumulate>
void TileKernel(const float* __restrict a, int64_t lda, const float* __restrict b, int64_t k,
                float* __restrict out) {
  vf acc[M][2];
#pragma GCC unroll 8
  for (int r = 0; r < M; ++r) {
    acc[r][0] = kAccumulate ? Load(out + r * kPanel) : vf{};
    acc[r][1] = kAccumulate ? Load(out + r * kPanel + kLanes) : vf{};
  }
#pragma GCC unroll 2
  for (int64_t kk = 0; kk < k; ++kk) {
    const vf b0 = Load(b + kk * kPanel), b1 = Load(b + kk * kPanel + kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < M; ++r) {
      const vf x = Splat(a[r * lda + kk]);
      acc[r][0] += x * b0;
      acc[r][1] += x * b1;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < M; ++r) {
    Store(out + r * kPanel, acc[r][0]);
    Store(out + r * kPanel + kLanes, acc[r][1]);
  }
}

template <bool kAccumulate>
void Tile(int m, const float* a, int64_t lda, const float* b, int64_t k, float* out) {
  switch (m) {
    case 1: return TileKernel<1, kAccumulate>(a, lda, b, k, out);
    case 2: return TileKernel<2, kAccumulate>(a, lda, b, k, out);
    case 3: return TileKernel<3, kAccumulate>(a, lda, b, k, out);
    case 4: return TileKernel<4, kAccumulate>(a, lda, b, k, out);
    case 5: return TileKernel<5, kAccumulate>(a, lda, b, k, out);
    case 6: return TileKernel<6, kAccumulate>(a, lda, b, k, out);
    case 7: return TileKernel<7, kAccumulate>(a, lda, b, k, out);
    default: return TileKernel<8, kAccumulate>(a, lda, b, k, out);
  }
}

inline void Matmul(int64_t m, const float* a, int64_t lda, const float* b, int64_t k,
                   float* out) {
  constexpr int64_t kBlock = 256;
  for (int64_t k0 = 0; k0 < k; k0 += kBlock) {
    const int64_t kb = std::min(kBlock, k - k0);
    for (int64_t r0 = 0; r0 < m; r0 += kTileRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - r0));
      const float *ar = a + r0 * lda + k0, *bk = b + k0 * kPanel;
      if (k0 == 0) {
        Tile<false>(rows, ar, lda, bk, kb, out + r0 * kPanel);
      } else {
        Tile<true>(rows, ar, lda, bk, kb, out + r0 * kPanel);
      }
    }
  }
}

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
        __builtin_ia32_pause();
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

  template <typename Body>
  void Run(Body body) {
    std::vector<std::thread> pool;
    for (int i = 1; i < threads_; ++i) pool.emplace_back(body, i);
    body(0);
    for (auto& t : pool) t.join();
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
