// The recurrent loop of one RNN / LSTM / GRU layer as two XLA FFI calls (CPU, float32).
//
// `jrnn.methods.compiled` is the Python side: it calls `jrnn_recurrence_fwd` for the loop over
// time, input projection included, and in the backward pass calls `jrnn_recurrence_bwd` for
// the loop back, weight and bias gradients included, then forms the input's gradient with XLA
// (one large matmul). The math is `jrnn.cells`'s, in PyTorch's layout; `jrnn.methods.scan` is the
// pure-JAX path these calls are tested against.
//
// Shapes (float32 unless noted): T steps, B batch, k directions, R = B * k rows, H hidden units,
// G gates (1 RNN, 4 LSTM i f g o, 3 GRU r z n); O the size of h: P for an LSTM with a projection
// (h = m @ W_hr^T, m = o * tanh(c); PyTorch's proj_size), else H. Arrays over time are
// (T, B, k, ...) seen as (T, R, ...): a row is (batch b, direction j), row b * k + j, and time
// is real time, also for a direction that runs backwards (bit j of the attribute `reverse` set:
// it goes from t = T - 1 down to 0). So hs is the layer's output as it is: no flips, no
// concatenations.
//   forward  in:  xs (T, B, D)     the layer's input
//                 w_ih (k, G*H, D), b_ih (k, G*H)  weight_ih, bias_ih per direction
//                 w_hh (k, G*H, O), b_hh (k, G*H)  weight_hh, bias_hh (zero biases without bias)
//                 w_hr (k, P, H)   weight_hr, the projection; (1,) for none
//                 h0 (k*B, O), c0 (k*B, H)  initial carry, direction-major (c0 unused but for
//                                  LSTM)
//                 mask (T, B) u8   1 where a sequence's step is valid; else the carry is kept
//           attr: save             1: write act for a backward pass; 0: act is (1,)
//                 bf16             1: mixed precision (jrnn.cells.mixed_einsum's contract): the
//                                  caller passes xs, w_ih, w_hh rounded to bfloat16 and the loop
//                                  rounds each h_{t-1} (and, going back, each gate cotangent)
//                                  before its matmul; biases, gate math and carries stay float32
//           out:  hs (T, R, O)     the carry h after every step
//                 aux (T, R, H)    LSTM: the carry c; GRU: n's recurrent half; RNN: (1,)
//                 act (T, R, G*H)  LSTM, GRU with save: the gates after their activations;
//                                  else (1,)
//                 ms (T, R, H)     with a projection each step's m (with bf16 rounded); else (1,)
//   backward in:  w_hh, w_hr, xs, h0, c0, mask, the forward's outputs; dhs (T, R, O), the
//                 cotangent of hs; dhn (k*B, O), dcn (k*B, H), those of the final carry (dcn
//                 read for LSTM only)
//           attr: bf16             as in the forward pass (bias gradients from the exact
//                                  cotangents, weight gradients from the rounded ones)
//           out:  dgx (T, R, G*H)  cotangent of the gates before their activations (the input
//                                  half's, for GRU's n gate); with bf16 rounded
//                 dh0 (k*B, O), dc0 (k*B, H)  cotangents of h0 and c0 (dc0 zero but for LSTM)
//                 dw_ih (k, G*H, D), dw_hh (k, G*H, O), dw_hr (k, P, H) or (1,), db_ih, db_hh
//                                  (k, G*H)  the weights' and biases' gradients
// The caller lets dgx overwrite act (RNN: dhs): that input is read, lane by lane, before the
// output that takes its place is written, and it is not needed afterwards. That spares a 16 MB
// buffer and its cache misses per LSTM layer and call.
//
// Work split: a work item is (direction, panel of 32 hidden units); a unit of work is an item's
// block of up to 16 sequences of the batch. Its thread computes the unit's gate columns of the
// recurrent matmul and, in the forward pass, of the input projection (a register-tiled kernel
// over weights packed once per call; no (T, R, G*H) array of projected inputs) and the
// elementwise gate math of those units, so each step needs a single barrier: all of h (forward)
// or of the gate cotangents (backward) must be written before any thread starts the next step's
// matmul. In the backward pass an item's weight gradients belong to one thread, which adds each
// step's part, sum_b [h_prev | x]^T dg, to them while that step is in cache, so no (T, B, G*H)
// array is read again after the loop and no [x | h_prev] array is formed. With a projection a
// step has a second half and barrier: h = m @ W_hr^T in units over the P units of h (going back
// first the cotangent of h, split over P into the projection's and the carried part, then
// dm = dp @ W_hr and the gate math over H); the owners of the gates' weight gradients also add
// dW_hr's part, dp^T m, for their hidden units.
// Units are handed out per step as in common.h's Team (own share first, then help). What a
// unit computes is in loops.h, compiled once per instruction set (see "The loops" below).

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common.h"

namespace jrnn {
namespace {

constexpr int kUnitRows = 16;  // rows per unit of work: its register tiles share its weights

enum Cell : int32_t { kRnnTanh = 0, kRnnRelu = 1, kLstm = 2, kGru = 3 };

int Gates(int32_t cell) { return cell == kLstm ? 4 : cell == kGru ? 3 : 1; }

// ---------------------------------------------------------------------------------------------
// Shapes shared by both directions of the computation.

struct Dims {
  int32_t cell, reverse;  // reverse: bit j set when direction j runs from the last step back
  int64_t steps, rows, dirs, batch, hidden, gates;
  int64_t input;  // D, the layer's input size
  bool bf16;      // the matmuls' operands rounded to bfloat16 (products summed in float32)
  int64_t proj;   // P, the LSTM's projection size (h = m @ W_hr^T), or 0 for none
  // A forward pass that keeps no states for a backward pass: aux and ms hold the last two
  // steps, by step parity (2, R, H), instead of every step (T, R, H).
  bool ring = false;
  // The size of h, the output and the recurrent matmul's operand: P with a projection, else H.
  int64_t out() const { return proj != 0 ? proj : hidden; }
  static int64_t Panels(int64_t width) { return (width + kPanel - 1) / kPanel; }
  int64_t panels() const { return Panels(hidden); }
  int64_t gh() const { return gates * hidden; }
  // The time that direction j is at in its step s.
  int64_t Time(int64_t s, int64_t j) const { return (reverse >> j) & 1 ? steps - 1 - s : s; }
  // The row of sequence b, direction j, in arrays over time (T, R, ...).
  int64_t Row(int64_t b, int64_t j) const { return b * dirs + j; }
  // The slot of direction j's step s in aux and ms: its time, or with ring its parity.
  int64_t Slot(int64_t s, int64_t j) const { return ring ? s & 1 : Time(s, j); }
  // The row of sequence b, direction j, in h0, c0, dh0 and dc0 (k*B, H).
  int64_t CarryRow(int64_t b, int64_t j) const { return j * batch + b; }
};

// Threads to use: all cores, unless the call's matmuls are under 50 MFLOP (under a ms on one
// core). Measured on a 2-core AMD EPYC VM with the Pool (common.h), one thread against two,
// forward / train step: alone in the machine, LSTM-64 on batch 16, 10 steps (10 MFLOP) 0.46 /
// 1.08 against 0.24 / 0.68 ms, and a 100-step remat chunk (105 MFLOP) 3.57 / 10.75 against
// 2.26 / 6.36 ms; but with a second such process running (pytest -n 2, a data loader), 20
// steps of LSTM-128 (63 MFLOP) took 1.6 / 5.6 ms on one thread against 3.2-3.8 / 7.1-7.7 on
// two, whose spinning barrier waits whenever the other process holds a core. (When each call
// started its own helper thread, the cutoff had to be 400 MFLOP.)
int64_t Cores(const Dims& d) {
  constexpr double kMinCallFlops = 5e7;
  const double flops =
      2.0 * d.steps * d.rows * (d.gh() * (d.out() + d.input) + d.proj * d.hidden);
  return flops < kMinCallFlops ? 1 : AvailableCores();
}

// A work item: one direction's panel of units [u0, u0 + nu), whose weights are packed
// together: of the H hidden units (the gates' columns), or with a projection of the P units of h
// (the projection's and, going back, the recurrent matmul's columns).
struct Item {
  int64_t index, dir, u0, nu;
};

// Item i of the items over `width` units per direction (H unless given).
Item ItemAt(const Dims& d, int64_t i, int64_t width) {
  const int64_t panels = Dims::Panels(width), dir = i / panels, u0 = (i % panels) * kPanel;
  return {i, dir, u0, std::min<int64_t>(kPanel, width - u0)};
}

Item ItemAt(const Dims& d, int64_t i) { return ItemAt(d, i, d.hidden); }

// A unit of one step's work: an item's sequences [b0, b0 + m), m <= kUnitRows.
struct Unit {
  Item it;
  int64_t b0;
  int m;
};

int64_t Blocks(const Dims& d) { return (d.batch + kUnitRows - 1) / kUnitRows; }

// Units of the items over `width` units (H unless given), and unit u of them.
int64_t Units(const Dims& d, int64_t width) { return d.dirs * Dims::Panels(width) * Blocks(d); }

int64_t Units(const Dims& d) { return Units(d, d.hidden); }

Unit UnitAt(const Dims& d, int64_t u, int64_t width) {
  const Item it = ItemAt(d, u / Blocks(d), width);
  const int64_t first = (u % Blocks(d)) * kUnitRows;
  return {it, first, static_cast<int>(std::min<int64_t>(kUnitRows, d.batch - first))};
}

Unit UnitAt(const Dims& d, int64_t u) { return UnitAt(d, u, d.hidden); }

// The item's lanes of sequence b's carry entering step s: `first` (h0 or c0, (k*B, width)) at
// s = 0, else `all` (hs or the LSTM's cell states, (T, R, width)) at the time of step s - 1,
// or with `slots` (cell states of a forward call, see Dims::ring) at its slot; width: P or H
// for h (Dims::out), H for c.
inline const float* Carry(const Dims& d, const float* first, const float* all, int64_t s,
                          int64_t b, const Item& it, int64_t width, bool slots = false) {
  if (s == 0) return first + d.CarryRow(b, it.dir) * width + it.u0;
  const int64_t at = slots ? d.Slot(s - 1, it.dir) : d.Time(s - 1, it.dir);
  return all + (at * d.rows + d.Row(b, it.dir)) * width + it.u0;
}

// Copies n <= 32 floats into a row of 32, zero-padded.
inline void Gather(float* dst, const float* src, int64_t n) {
  if (n < kPanel) std::memset(dst + n, 0, (kPanel - n) * sizeof(float));
  std::memcpy(dst, src, n * sizeof(float));
}

// ---------------------------------------------------------------------------------------------
// Forward.

// Packs weight_hh and weight_ih for the forward matmuls: the item's panel of gate g holds, for
// every unit kk of h (Dims::out), the 32 weights w_hh[dir][g*H + u0 + c][kk], then for every
// input feature kk the 32 weights w_ih[dir][g*H + u0 + c][kk] (zero past H): (G, out + D, 32).
void PackForward(const Dims& d, const float* w_hh, const float* w_ih, const Item& it,
                 float* out) {
  const int64_t h = d.hidden, o = d.out(), in = d.input;
  for (int64_t g = 0; g < d.gates; ++g) {
    float* panel = out + g * (o + in) * kPanel;
    const float* rows = w_hh + (it.dir * d.gh() + g * h + it.u0) * o;
    const float* rows_ih = w_ih + (it.dir * d.gh() + g * h + it.u0) * in;
    for (int64_t c = 0; c < kPanel; ++c) {
      for (int64_t kk = 0; kk < o; ++kk) {
        panel[kk * kPanel + c] = c < it.nu ? rows[c * o + kk] : 0.0f;
      }
      for (int64_t kk = 0; kk < in; ++kk) {
        panel[(o + kk) * kPanel + c] = c < it.nu ? rows_ih[c * in + kk] : 0.0f;
      }
    }
  }
}

// Packs weight_hr (k, P, H) for the forward projection: the item's (over the P units of h)
// panel holds, for every hidden unit kk, the 32 weights w_hr[dir][u0 + c][kk]: (H, 32).
void PackProjection(const Dims& d, const float* w_hr, const Item& it, float* out) {
  const int64_t h = d.hidden;
  const float* rows = w_hr + (it.dir * d.proj + it.u0) * h;
  for (int64_t kk = 0; kk < h; ++kk) {
    for (int64_t c = 0; c < kPanel; ++c) out[kk * kPanel + c] = c < it.nu ? rows[c * h + kk] : 0.0f;
  }
}

// ---------------------------------------------------------------------------------------------
// bfloat16 operands for the dot-product instructions (AVX512-BF16: out += a[2i] b[2i] +
// a[2i+1] b[2i+1], float32 sums), which take K in pairs: a row of an operand is K bfloat16s
// padded to an even count, and a packed panel is K / 2 rows of 32 column pairs.

// Pairs of K.
inline int64_t Pairs(int64_t k) { return (k + 1) / 2; }

// The bfloat16 of x, rounded to nearest even (x comes rounded from XLA: then exact).
inline uint16_t Half(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// Packs value(kk, c) for kk < k, c < 32 in pairs: out[(kk / 2) * 64 + c * 2 + kk % 2], the odd
// pad zero: Pairs(k) rows of 64 bfloat16s.
template <typename Value>
void PackPairs(int64_t k, Value value, uint16_t* out) {
  std::memset(out, 0, Pairs(k) * 2 * kPanel * sizeof(uint16_t));
  for (int64_t kk = 0; kk < k; ++kk) {
    uint16_t* row = out + (kk / 2) * 2 * kPanel + kk % 2;
    for (int64_t c = 0; c < kPanel; ++c) row[c * 2] = Half(value(kk, c));
  }
}

// Halves per gate of an item's forward weights in pairs: W_hh's Pairs(out) rows, then W_ih's
// Pairs(D).
int64_t PairedGate(const Dims& d) { return (Pairs(d.out()) + Pairs(d.input)) * 2 * kPanel; }

// PackForward's weights in pairs (PairedGate per gate).
void PackForwardPairs(const Dims& d, const float* w_hh, const float* w_ih, const Item& it,
                      uint16_t* out) {
  const int64_t h = d.hidden, o = d.out(), in = d.input;
  for (int64_t g = 0; g < d.gates; ++g) {
    uint16_t* panel = out + g * PairedGate(d);
    const float* rows = w_hh + (it.dir * d.gh() + g * h + it.u0) * o;
    const float* rows_ih = w_ih + (it.dir * d.gh() + g * h + it.u0) * in;
    PackPairs(o, [&](int64_t kk, int64_t c) { return c < it.nu ? rows[c * o + kk] : 0.0f; }, panel);
    PackPairs(in, [&](int64_t kk, int64_t c) { return c < it.nu ? rows_ih[c * in + kk] : 0.0f; },
              panel + Pairs(o) * 2 * kPanel);
  }
}

// Matmul tiles per thread in the forward pass: one per gate, and GRU's n gate a second for
// its input half.
int64_t Tiles(const Dims& d) { return d.gates + (d.cell == kGru ? 1 : 0); }

// Hands out a work item's rows of 32 floats: in a full panel the arrays themselves, in a
// partial one (H not a multiple of 32) zero-padded copies, written back by Flush.
class Lanes {
 public:
  explicit Lanes(int64_t n) : n_(n) {}
  const float* In(const float* src) {
    if (n_ == kPanel) return src;
    Gather(pad_[used_], src, n_);
    return pad_[used_++];
  }
  float* Out(float* dst) {
    if (n_ == kPanel) return dst;
    outputs_[outs_] = {pad_[used_], dst};
    ++outs_;
    return pad_[used_++];
  }
  void Flush() const {
    for (int i = 0; i < outs_; ++i) Put(outputs_[i].second, outputs_[i].first, n_);
  }

 private:
  int64_t n_;
  int used_ = 0, outs_ = 0;
  alignas(64) float pad_[24][kPanel];
  std::pair<float*, float*> outputs_[24];
};

struct Forward {
  Dims d;
  const float *xs, *w_ih, *b_ih, *w_hh, *b_hh, *w_hr, *h0, *c0;
  const uint8_t* mask;
  float *hs, *aux;
  float* act;  // nullptr when the call keeps no gates for a backward pass
  // Scratch that RunForward sets with bf16: on the FMA kernel hm, h rounded, the recurrent
  // matmul's operand (2, R, out) by step parity; on the dot-product kernel (kDot) instead hm16,
  // the same as bfloat16s (2, R, 2 * Pairs(out)), and xs16, xs as bfloat16s (T, B, 2 * Pairs(D)).
  float* hm;
  uint16_t *hm16, *xs16;
  float* ms;   // with a projection: m = o * tanh(c) (T, R, H), with bf16 rounded; else nullptr
  uint16_t* ms16;  // with a projection on the dot-product kernel: m_s as bfloat16s
                   // (R, 2 * Pairs(H)), the projection's operand
};

// ---------------------------------------------------------------------------------------------
// Backward.

// Packs a (k, N, W) weight for a backward matmul over its rows: the item's (over the W columns)
// panel holds, for every row n, the 32 weights w[dir][n][u0 + c] (zero past W): (N, 32).
// weight_hh (N = G*H, W = out) for dh, weight_hr (N = P, W = H) for dm.
void PackBackward(const float* w, int64_t rows, int64_t width, const Item& it, float* out) {
  for (int64_t n = 0; n < rows; ++n) {
    const float* src = w + (it.dir * rows + n) * width + it.u0;
    for (int64_t c = 0; c < kPanel; ++c) out[n * kPanel + c] = c < it.nu ? src[c] : 0.0f;
  }
}

// Floats of one item's weight and bias gradients while the backward loop adds to them
// (BackwardSteps::AddWeights): (G, out + D, 32) panels, (2, G, 32) bias sums, then with a
// projection a (P, 32) panel of dW_hr^T.
int64_t Grads(const Dims& d) {
  return (d.gates * (d.out() + d.input + 2) + d.proj) * kPanel;
}

struct Backward {
  Dims d;
  const float *w, *w_hr, *xs, *h0, *c0;
  const uint8_t* mask;
  const float *hs, *aux, *act, *ms, *dhs;
  float* dgx;            // may alias act, or dhs (see the FFI handler)
  float *dh, *dc;        // the cotangent of the carry entering the present step
  float* dgh[2];         // GRU: cotangent of the recurrent half (k*B, G*H), by step parity
  // RunBackward's scratch with bf16, by step parity: on the FMA kernel the recurrent half's
  // cotangent rounded (k*B, G*H); on the dot-product kernel instead the same as bfloat16s
  // (k*B, 2 * Pairs(G*H))
  float* dgm[2];
  uint16_t* dgm16[2];
  float* dp[2];          // with a projection: the cotangent of m @ W_hr^T (k*B, P), ditto
  float *dw_ih, *dw_hh, *dw_hr, *db_ih, *db_hh;
};

}  // namespace
}  // namespace jrnn

// ---------------------------------------------------------------------------------------------
// The loops (loops.h), compiled once per instruction set. The library as a whole is built for a
// baseline that every CPU of its architecture runs (setup.py: x86-64-v2, up to SSE4.2, on
// x86-64), so it loads anywhere; on x86-64 the loops are compiled three times more, for AVX2
// with FMA, for AVX-512 and for AVX-512 with the bfloat16 dot product (AVX512-BF16: kDot, and
// loops.h's JRNN_DOT parts, which bf16 calls use), and the handlers run the widest set that the
// CPU has, or the one Python selects (jrnn.methods.compiled: the variable JRNN_ISA). Each set's
// vectors are its registers' width; its register tile (kTileRows rows of kPanel / kLanes
// vectors) is as tall as its registers hold, with one row of b and a broadcast beside it.

#ifdef __clang__
#error "jrnn/csrc needs GCC: it compiles loops.h once per instruction set with #pragma GCC target"
#endif

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")
namespace jrnn {
namespace {
namespace avx512bf16 {  // AVX-512 with the bfloat16 dot product (bf16 calls use it)
constexpr int kLanes = 16;
constexpr int kTileRows = 8;
constexpr bool kDot = true;
using vf = float __attribute__((vector_size(4 * kLanes)));

inline vf Reciprocal(vf x) {
  const vf r = reinterpret_cast<vf>(_mm512_rcp14_ps(reinterpret_cast<__m512>(x)));
  return r * (2.0f - x * r);
}

#define JRNN_DOT
#include "loops.h"
#undef JRNN_DOT
}  // namespace avx512bf16
}  // namespace
}  // namespace jrnn
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
namespace jrnn {
namespace {
namespace avx512 {
constexpr int kLanes = 16;    // 32 registers of 16 floats
constexpr int kTileRows = 8;  // 16 accumulators
constexpr bool kDot = false;  // no bfloat16 dot product: bf16 calls round, then use FMA
using vf = float __attribute__((vector_size(4 * kLanes)));

// The 14-bit estimate and one Newton step: relative error about 1e-8, a third of a division's
// time.
inline vf Reciprocal(vf x) {
  const vf r = reinterpret_cast<vf>(_mm512_rcp14_ps(reinterpret_cast<__m512>(x)));
  return r * (2.0f - x * r);
}

#include "loops.h"
}  // namespace avx512
}  // namespace
}  // namespace jrnn
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace jrnn {
namespace {
namespace avx2 {
constexpr int kLanes = 8;     // 16 registers of 8 floats
constexpr int kTileRows = 2;  // 8 accumulators
constexpr bool kDot = false;
using vf = float __attribute__((vector_size(4 * kLanes)));
inline vf Reciprocal(vf x) { return 1.0f / x; }
#include "loops.h"
}  // namespace avx2
}  // namespace
}  // namespace jrnn
#pragma GCC pop_options
#endif

namespace jrnn {
namespace {
namespace baseline {
constexpr int kLanes = 4;  // SSE (16 registers) or NEON (32 registers) of 4 floats
#if defined(__aarch64__)
constexpr int kTileRows = 2;  // 16 accumulators
#else
constexpr int kTileRows = 1;  // 8 accumulators
#endif
constexpr bool kDot = false;
using vf = float __attribute__((vector_size(4 * kLanes)));
inline vf Reciprocal(vf x) { return 1.0f / x; }
#include "loops.h"
}  // namespace baseline

struct Path {
  const char* name;
  bool (*runs)();  // whether this CPU has the instructions
  void (*forward)(const Forward&);
  void (*backward)(const Backward&);
};

#if defined(__x86_64__)
bool HasAvx512() {
  __builtin_cpu_init();  // may run before libgcc's own constructor does
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("fma");
}

bool HasAvx512Bf16() { return HasAvx512() && __builtin_cpu_supports("avx512bf16"); }

bool HasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

bool Always() { return true; }

// Widest first.
constexpr Path kPaths[] = {
#if defined(__x86_64__)
    {"avx512bf16", HasAvx512Bf16, avx512bf16::RunForward, avx512bf16::RunBackward},
    {"avx512", HasAvx512, avx512::RunForward, avx512::RunBackward},
    {"avx2", HasAvx2, avx2::RunForward, avx2::RunBackward},
#endif
    {"baseline", Always, baseline::RunForward, baseline::RunBackward},
};

// The widest path this CPU runs (the last one, the baseline, runs on every CPU).
const Path* Widest() {
  const Path* path = kPaths;
  while (!path->runs()) ++path;
  return path;
}

// The path the handlers run: the widest one, unless JrnnRecurrenceSelectIsa chose another.
const Path* selected = Widest();

// The paths this CPU runs, widest first, separated by ", ".
std::string Runnable() {
  std::string names;
  for (const Path& path : kPaths) {
    if (path.runs()) names += (names.empty() ? "" : ", ") + std::string(path.name);
  }
  return names;
}

// ---------------------------------------------------------------------------------------------
// FFI handlers.

// Dims of a call of `steps` steps on `batch` sequences of `input` features, from the shapes of
// w_hh (k, G*H, out) and w_hr ((k, P, H) with a projection, else (1,)).
ffi::Error MakeDims(int32_t cell, int32_t reverse, int32_t bf16, int64_t steps, int64_t batch,
                    int64_t input, ffi::Span<const int64_t> w, ffi::Span<const int64_t> w_hr,
                    Dims* d) {
  if (cell < kRnnTanh || cell > kGru) {
    return ffi::Error::InvalidArgument("jrnn recurrence: cell: expected 0..3, got " +
                                       std::to_string(cell));
  }
  if (w.size() != 3) {
    return ffi::Error::InvalidArgument("jrnn recurrence: w_hh: expected rank 3, got " + Shape(w));
  }
  const bool projected = w_hr.size() == 3;
  if (projected && (cell != kLstm || w_hr[0] != w[0] || w_hr[1] != w[2] || w_hr[1] < 1)) {
    return ffi::Error::InvalidArgument(
        "jrnn recurrence: w_hr: expected (k, P, H) for an LSTM with w_hh (k, 4*H, P), got " +
        Shape(w_hr) + " with w_hh " + Shape(w) + " for cell " + std::to_string(cell));
  }
  if (!projected && !(w_hr.size() == 1 && w_hr[0] == 1)) {
    return ffi::Error::InvalidArgument(
        "jrnn recurrence: w_hr: expected (k, P, H), or (1,) for no projection, got " +
        Shape(w_hr));
  }
  const int64_t gates = Gates(cell), dirs = w[0], hidden = projected ? w_hr[2] : w[2];
  if (w[1] != gates * hidden || dirs < 1) {
    return ffi::Error::InvalidArgument(
        "jrnn recurrence: expected w_hh (k, G*H, H) with G = " + std::to_string(gates) +
        (projected ? " and H = " + std::to_string(hidden) + " (w_hr)" : std::string()) +
        ", got " + Shape(w));
  }
  if (reverse < 0 || reverse >= (1 << dirs)) {
    return ffi::Error::InvalidArgument("jrnn recurrence: reverse: expected a bit mask of " +
                                       std::to_string(dirs) + " directions, got " +
                                       std::to_string(reverse));
  }
  *d = Dims{cell,  reverse, steps,     batch * dirs,          dirs, batch,
            hidden, gates,  input,     bf16 != 0, projected ? w_hr[1] : 0};
  return ffi::Error::Success();
}

// Forward outputs: hs (T, R, out); aux, for LSTM c (T, R, H), for GRU the recurrent half of n
// (T, R, H), else (1,); act, with save the gate activations (T, R, G*H) for LSTM and GRU, else
// (1,); ms, with a projection m (T, R, H), else (1,).
ffi::Error ForwardFfi(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_ih,
                      ffi::Buffer<ffi::F32> b_ih, ffi::Buffer<ffi::F32> w_hh,
                      ffi::Buffer<ffi::F32> b_hh, ffi::Buffer<ffi::F32> w_hr,
                      ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                      ffi::Buffer<ffi::U8> mask, int32_t cell, int32_t reverse, int32_t save,
                      int32_t bf16, ffi::ResultBuffer<ffi::F32> hs,
                      ffi::ResultBuffer<ffi::F32> aux, ffi::ResultBuffer<ffi::F32> act,
                      ffi::ResultBuffer<ffi::F32> ms) {
  if (xs.dimensions().size() != 3) {
    return ffi::Error::InvalidArgument("jrnn recurrence: xs: expected rank 3 (T, B, D), got " +
                                       Shape(xs.dimensions()));
  }
  const auto x = xs.dimensions();
  Dims d;
  JRNN_CHECK(MakeDims(cell, reverse, bf16, x[0], x[1], x[2], w_hh.dimensions(),
                      w_hr.dimensions(), &d));
  const int64_t T = d.steps, R = d.rows, H = d.hidden, O = d.out(), k = d.dirs;
  const bool gated = d.gates > 1, keep_gates = gated && save != 0;
  d.ring = save == 0;
  const int64_t slots = d.ring ? 2 : T;
  JRNN_CHECK(Expect("w_ih", w_ih.dimensions(), {k, d.gh(), d.input}));
  JRNN_CHECK(Expect("b_ih", b_ih.dimensions(), {k, d.gh()}));
  JRNN_CHECK(Expect("b_hh", b_hh.dimensions(), {k, d.gh()}));
  JRNN_CHECK(Expect("h0", h0.dimensions(), {R, O}));
  JRNN_CHECK(Expect("c0", c0.dimensions(), {R, H}));
  JRNN_CHECK(Expect("mask", mask.dimensions(), {T, d.batch}));
  JRNN_CHECK(Expect("hs", hs->dimensions(), {T, R, O}));
  JRNN_CHECK(d.proj != 0 ? Expect("ms", ms->dimensions(), {slots, R, H})
                         : Expect("ms", ms->dimensions(), {1}));
  JRNN_CHECK(gated ? Expect("aux", aux->dimensions(), {slots, R, H})
                   : Expect("aux", aux->dimensions(), {1}));
  JRNN_CHECK(keep_gates ? Expect("act", act->dimensions(), {T, R, d.gh()})
                        : Expect("act", act->dimensions(), {1}));
  const Forward f{d,
                  xs.typed_data(),
                  w_ih.typed_data(),
                  b_ih.typed_data(),
                  w_hh.typed_data(),
                  b_hh.typed_data(),
                  w_hr.typed_data(),
                  h0.typed_data(),
                  c0.typed_data(),
                  mask.typed_data(),
                  hs->typed_data(),
                  aux->typed_data(),
                  keep_gates ? act->typed_data() : nullptr,
                  nullptr,  // hm, hm16, xs16: RunForward's scratch
                  nullptr,
                  nullptr,
                  d.proj != 0 ? ms->typed_data() : nullptr,
                  nullptr};  // ms16: RunForward's scratch
  for (auto* out : {&hs, &aux, &act, &ms}) {  // the first to write them, in the loop
    AdviseHugePages((*out)->untyped_data(), (*out)->size_bytes());
  }
  selected->forward(f);
  return ffi::Error::Success();
}


// Backward inputs: w_hh, w_hr, xs, h0, c0, mask, the forward's outputs, dhs: the cotangent
// of hs, and dhn, dcn: those of the final carry (dcn read for LSTM only). Outputs: dgx
// (T, R, G*H); dh0 (k*B, out) and dc0 (k*B, H); dw_ih (k, G*H, D), dw_hh (k, G*H, out), dw_hr
// (k, P, H) or (1,), db_ih and db_hh (k, G*H). The caller may alias dgx to act (RNN: to dhs).
ffi::Error BackwardFfi(ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> w_hr,
                       ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::U8> mask,
                       ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> aux,
                       ffi::Buffer<ffi::F32> act, ffi::Buffer<ffi::F32> ms,
                       ffi::Buffer<ffi::F32> dhs, ffi::Buffer<ffi::F32> dhn,
                       ffi::Buffer<ffi::F32> dcn, int32_t cell, int32_t reverse, int32_t bf16,
                       ffi::ResultBuffer<ffi::F32> dgx, ffi::ResultBuffer<ffi::F32> dh0,
                       ffi::ResultBuffer<ffi::F32> dc0, ffi::ResultBuffer<ffi::F32> dw_ih,
                       ffi::ResultBuffer<ffi::F32> dw_hh, ffi::ResultBuffer<ffi::F32> dw_hr,
                       ffi::ResultBuffer<ffi::F32> db_ih, ffi::ResultBuffer<ffi::F32> db_hh) {
  if (xs.dimensions().size() != 3) {
    return ffi::Error::InvalidArgument("jrnn recurrence: xs: expected rank 3 (T, B, D), got " +
                                       Shape(xs.dimensions()));
  }
  const auto x = xs.dimensions();
  Dims d;
  JRNN_CHECK(MakeDims(cell, reverse, bf16, x[0], x[1], x[2], w.dimensions(), w_hr.dimensions(),
                      &d));
  const int64_t T = d.steps, R = d.rows, H = d.hidden, O = d.out(), k = d.dirs;
  const bool gated = d.gates > 1;
  JRNN_CHECK(Expect("dgx", dgx->dimensions(), {T, R, d.gh()}));
  JRNN_CHECK(Expect("h0", h0.dimensions(), {R, O}));
  JRNN_CHECK(Expect("c0", c0.dimensions(), {R, H}));
  JRNN_CHECK(Expect("mask", mask.dimensions(), {T, d.batch}));
  JRNN_CHECK(Expect("hs", hs.dimensions(), {T, R, O}));
  JRNN_CHECK(Expect("dhs", dhs.dimensions(), {T, R, O}));
  JRNN_CHECK(d.proj != 0 ? Expect("ms", ms.dimensions(), {T, R, H})
                         : Expect("ms", ms.dimensions(), {1}));
  JRNN_CHECK(d.proj != 0 ? Expect("dw_hr", dw_hr->dimensions(), {k, d.proj, H})
                         : Expect("dw_hr", dw_hr->dimensions(), {1}));
  JRNN_CHECK(gated ? Expect("aux", aux.dimensions(), {T, R, H})
                   : Expect("aux", aux.dimensions(), {1}));
  JRNN_CHECK(gated ? Expect("act", act.dimensions(), {T, R, d.gh()})
                   : Expect("act", act.dimensions(), {1}));
  JRNN_CHECK(Expect("dhn", dhn.dimensions(), {R, O}));
  JRNN_CHECK(Expect("dcn", dcn.dimensions(), {R, H}));
  JRNN_CHECK(Expect("dh0", dh0->dimensions(), {R, O}));
  JRNN_CHECK(Expect("dc0", dc0->dimensions(), {R, H}));
  JRNN_CHECK(Expect("dw_ih", dw_ih->dimensions(), {k, d.gh(), d.input}));
  JRNN_CHECK(Expect("dw_hh", dw_hh->dimensions(), {k, d.gh(), O}));
  JRNN_CHECK(Expect("db_ih", db_ih->dimensions(), {k, d.gh()}));
  JRNN_CHECK(Expect("db_hh", db_hh->dimensions(), {k, d.gh()}));
  Floats scratch = Allocate(cell == kGru ? 2 * R * d.gh() : 1);
  Floats projected = Allocate(2 * R * d.proj);
  // dh0 and dc0 hold the carry's cotangent as the loop goes back, starting from the final one
  Put(dh0->typed_data(), dhn.typed_data(), R * O);
  if (cell == kLstm) {
    Put(dc0->typed_data(), dcn.typed_data(), R * H);
  } else {
    std::memset(dc0->typed_data(), 0, R * H * sizeof(float));
  }
  const Backward bw{d,
                    w.typed_data(),
                    w_hr.typed_data(),
                    xs.typed_data(),
                    h0.typed_data(),
                    c0.typed_data(),
                    mask.typed_data(),
                    hs.typed_data(),
                    aux.typed_data(),
                    act.typed_data(),
                    ms.typed_data(),
                    dhs.typed_data(),
                    dgx->typed_data(),
                    dh0->typed_data(),
                    dc0->typed_data(),
                    {scratch.get(), scratch.get() + (cell == kGru ? R * d.gh() : 0)},
                    {nullptr, nullptr},  // dgm, dgm16: RunBackward's scratch
                    {nullptr, nullptr},
                    {projected.get(), projected.get() + R * d.proj},
                    dw_ih->typed_data(),
                    dw_hh->typed_data(),
                    dw_hr->typed_data(),
                    db_ih->typed_data(),
                    db_hh->typed_data()};
  selected->backward(bw);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jrnn

XLA_FFI_DEFINE_HANDLER_SYMBOL(JrnnRecurrenceForward, jrnn::ForwardFfi,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // xs
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // w_ih
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // b_ih
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // w_hh
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // b_hh
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // w_hr
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // h0
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // c0
                                  .Arg<xla::ffi::Buffer<xla::ffi::U8>>()   // mask
                                  .Attr<int32_t>("cell")
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("save")
                                  .Attr<int32_t>("bf16")
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // hs
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // aux
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // act
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());  // ms

XLA_FFI_DEFINE_HANDLER_SYMBOL(JrnnRecurrenceBackward, jrnn::BackwardFfi,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // w
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // w_hr
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // xs
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // h0
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // c0
                                  .Arg<xla::ffi::Buffer<xla::ffi::U8>>()   // mask
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // hs
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // aux
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // act
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // ms
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // dhs
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // dhn
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // dcn
                                  .Attr<int32_t>("cell")
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("bf16")
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // dgx
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // dh0
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // dc0
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // dw_ih
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // dw_hh
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // dw_hr
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // db_ih
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());  // db_hh

// For jrnn.methods.compiled: the instruction set the handlers run ("avx512bf16", "avx512",
// "avx2" or "baseline"), the sets this CPU runs, and the choice of one (what JRNN_ISA names).
extern "C" {

const char* JrnnRecurrenceIsa() { return jrnn::selected->name; }

// Widest first, separated by ", ".
const char* JrnnRecurrenceIsas() {
  static const std::string names = jrnn::Runnable();
  return names.c_str();
}

// Makes the handlers run the set `name`. Returns "" once they do, else why not.
const char* JrnnRecurrenceSelectIsa(const char* name) {
  static std::string reason;
  std::string known;
  for (const jrnn::Path& path : jrnn::kPaths) {
    known += (known.empty() ? "" : ", ") + std::string(path.name);
    if (std::strcmp(path.name, name) != 0) continue;
    if (!path.runs()) {
      reason = "this CPU cannot run it; it runs " + jrnn::Runnable();
      return reason.c_str();
    }
    jrnn::selected = &path;
    return "";
  }
  reason = "expected one of " + known;
  return reason.c_str();
}

}  // extern "C"
