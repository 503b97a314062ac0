// The recurrent loop of one RNN / LSTM / GRU layer as two XLA FFI calls (CPU, float32).
//
// `jrnn.kernel` is the Python side: it projects the inputs with XLA (one large matmul), calls
// `jrnn_recurrence_fwd` for the loop over time, and in the backward pass calls
// `jrnn_recurrence_bwd` for the loop back, then forms the weight gradients with XLA (one large
// matmul each). The math is `jrnn.cells`'s, in PyTorch's layout; `jrnn.fused` is the pure-JAX
// path these calls are tested against.
//
// Shapes (float32 unless noted): T steps, B batch, k directions, R = B * k rows, H hidden units,
// G gates (1 RNN, 4 LSTM i f g o, 3 GRU r z n). Arrays over time are (T, B, k, ...) seen as
// (T, R, ...): a row is (batch b, direction j), row b * k + j, and time is real time, also for
// a direction that runs backwards (bit j of the attribute `reverse` set: it goes from t = T - 1
// down to 0). So the input projection of all directions is one matmul before the call, and hs
// is the layer's output as it is: no flips, no concatenations.
//   forward  in:  gx (T, R, G*H)   input half x @ weight_ih.T + bias_ih, per step
//                 w (k, G*H, H)    weight_hh per direction
//                 b (k, G*H)       bias_hh per direction (zeros without bias)
//                 h0, c0 (k*B, H)  initial carry, direction-major (c0 unused but for LSTM)
//                 mask (T, B) u8   1 where a sequence's step is valid; else the carry is kept
//           out:  hs (T, R, H)     the carry h after every step
//                 aux (T, R, H)    LSTM: the carry c; GRU: n's recurrent half; RNN: (1,)
//                 act (T, R, G*H)  LSTM, GRU: the gates after their activations; RNN: (1,)
//   backward in:  the forward's inputs but gx and its outputs; dhs, and dcs (aux's shape): the
//                 cotangents of hs and aux (dcs read for LSTM only)
//           out:  dgx (T, R, G*H)  cotangent of gx
//                 drec (T, R, H)   GRU: cotangent of n's recurrent half; else (1,)
//                 dh0, dc0 (k*B, H) cotangents of h0 and c0 (dc0 zero but for LSTM)
// The caller lets act (RNN: hs) overwrite gx, dgx act (RNN: dhs) and drec aux: each of those
// inputs is read, lane by lane, before the output that takes its place is written, and none is
// needed afterwards. That spares a 16 MB buffer and its cache misses per LSTM layer and call.
//
// Work split: a work item is (direction, panel of 32 hidden units); a unit of work is an item's
// block of up to 16 sequences of the batch. Its thread computes the unit's gate columns of the
// recurrent matmul (a register-tiled kernel over weights packed once per call) and the
// elementwise gate math of those units, so each step needs a single barrier: all of h (forward)
// or of the gate cotangents (backward) must be written before any thread starts the next step's
// matmul.
// Units are handed out per step as in common.h's Team (own share first, then help).

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "common.h"

namespace jrnn {
namespace {

using vi = int32_t __attribute__((vector_size(64)));

constexpr int kUnitRows = 16;  // rows per unit of work: two register tiles share its weights

enum Cell : int32_t { kRnnTanh = 0, kRnnRelu = 1, kLstm = 2, kGru = 3 };

int Gates(int32_t cell) { return cell == kLstm ? 4 : cell == kGru ? 3 : 1; }

// ---------------------------------------------------------------------------------------------
// Vector math on 16 floats.

inline vf Min(vf a, vf b) { return a < b ? a : b; }

inline vf Max(vf a, vf b) { return a > b ? a : b; }

// exp(x): x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-7 polynomial, 2^n by the
// exponent bits. Relative error about 1e-7 over the clamped range (exp(-87.3) is the smallest
// normal float; above 88.3 the result would overflow).
inline vf Exp(vf x) {
  x = Max(Min(x, Splat(88.3f)), Splat(-87.3f));
  const vf magic = Splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf n = (x * Splat(1.44269504088896341f) + magic) - magic;
  vf r = x - n * Splat(0.693359375f);
  r = r - n * Splat(-2.12194440e-4f);
  vf p = Splat(1.9875691500e-4f);
  p = p * r + Splat(1.3981999507e-3f);
  p = p * r + Splat(8.3334519073e-3f);
  p = p * r + Splat(4.1665795894e-2f);
  p = p * r + Splat(1.6666665459e-1f);
  p = p * r + Splat(5.0000001201e-1f);
  p = p * r * r + r + Splat(1.0f);
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * __builtin_bit_cast(vf, e);
}

// 1 / x: AVX-512's 14-bit estimate and one Newton step (relative error about 1e-8, a third of
// a division's time); elsewhere a division.
inline vf Reciprocal(vf x) {
#ifdef __AVX512F__
  const vf r = reinterpret_cast<vf>(_mm512_rcp14_ps(reinterpret_cast<__m512>(x)));
  return r * (Splat(2.0f) - x * r);
#else
  return Splat(1.0f) / x;
#endif
}

inline vf Sigmoid(vf x) { return Reciprocal(Splat(1.0f) + Exp(-x)); }

// tanh(x): an odd polynomial below |x| = 0.625 (fitted to tanh(x) / x in x^2, relative error
// under 1e-7), else sign(x) * (1 - 2 / (exp(2|x|) + 1)), which has no cancellation there.
inline vf Tanh(vf x) {
  vf ax = Max(x, -x);
  vf x2 = x * x;
  vf p = Splat(5.7188915e-3f);
  p = p * x2 + Splat(-2.0653063e-2f);
  p = p * x2 + Splat(5.3744640e-2f);
  p = p * x2 + Splat(-1.3331513e-1f);
  p = p * x2 + Splat(3.3333287e-1f);
  vf small = x - x * x2 * p;
  vf big = Splat(1.0f) - Splat(2.0f) * Reciprocal(Exp(ax + ax) + Splat(1.0f));
  big = x < Splat(0.0f) ? -big : big;
  return ax < Splat(0.625f) ? small : big;
}

// ---------------------------------------------------------------------------------------------
// Shapes shared by both directions of the computation.

struct Dims {
  int32_t cell, reverse;  // reverse: bit j set when direction j runs from the last step back
  int64_t steps, rows, dirs, batch, hidden, gates;
  int64_t panels() const { return (hidden + kPanel - 1) / kPanel; }
  int64_t gh() const { return gates * hidden; }
  // The time that direction j is at in its step s.
  int64_t Time(int64_t s, int64_t j) const { return (reverse >> j) & 1 ? steps - 1 - s : s; }
  // The row of sequence b, direction j, in arrays over time (T, R, ...).
  int64_t Row(int64_t b, int64_t j) const { return b * dirs + j; }
  // The row of sequence b, direction j, in h0, c0, dh0 and dc0 (k*B, H).
  int64_t CarryRow(int64_t b, int64_t j) const { return j * batch + b; }
};

// Threads to use: all cores, unless the call's matmuls are under 400 MFLOP (a few ms on one
// core). A helper thread waits for a core that XLA's own threads may hold, and that wait can
// cost milliseconds per call: an LSTM-64 on batch 16 in 100-step chunks (remat, 52 MFLOP per
// call) ran 3.4x slower on two threads than on one.
int64_t Cores(const Dims& d) {
  constexpr double kMinCallFlops = 4e8;
  const double flops = 2.0 * d.steps * d.rows * d.gh() * d.hidden;
  return flops < kMinCallFlops ? 1 : AvailableCores();
}

// A work item: one direction's panel of hidden units [u0, u0 + nu), whose weights are packed
// together.
struct Item {
  int64_t index, dir, u0, nu;
};

Item ItemAt(const Dims& d, int64_t i) {
  int64_t dir = i / d.panels(), u0 = (i % d.panels()) * kPanel;
  return {i, dir, u0, std::min<int64_t>(kPanel, d.hidden - u0)};
}

// A unit of one step's work: an item's sequences [b0, b0 + m), m <= kUnitRows.
struct Unit {
  Item it;
  int64_t b0;
  int m;
};

int64_t Blocks(const Dims& d) { return (d.batch + kUnitRows - 1) / kUnitRows; }

int64_t Units(const Dims& d) { return d.dirs * d.panels() * Blocks(d); }

Unit UnitAt(const Dims& d, int64_t u) {
  const Item it = ItemAt(d, u / Blocks(d));
  const int64_t first = (u % Blocks(d)) * kUnitRows;
  return {it, first, static_cast<int>(std::min<int64_t>(kUnitRows, d.batch - first))};
}

// The item's lanes of sequence b's carry entering step s: `first` (h0 or c0, (k*B, H)) at
// s = 0, else `all` (hs or the LSTM's cell states, (T, R, H)) at the time of step s - 1.
inline const float* Carry(const Dims& d, const float* first, const float* all, int64_t s,
                          int64_t b, const Item& it) {
  if (s == 0) return first + d.CarryRow(b, it.dir) * d.hidden + it.u0;
  return all + (d.Time(s - 1, it.dir) * d.rows + d.Row(b, it.dir)) * d.hidden + it.u0;
}

// Copies n <= 32 floats into a row of 32, zero-padded.
inline void Gather(float* dst, const float* src, int64_t n) {
  if (n < kPanel) std::memset(dst + n, 0, (kPanel - n) * sizeof(float));
  std::memcpy(dst, src, n * sizeof(float));
}

// ---------------------------------------------------------------------------------------------
// Forward.

// Packs weight_hh for the forward matmul: panel (item, gate) holds, for every input unit kk,
// the 32 weights w[dir][gate*H + u0 + c][kk] (zero past H).
void PackForward(const Dims& d, const float* w, const Item& it, float* out) {
  const int64_t h = d.hidden;
  for (int64_t g = 0; g < d.gates; ++g) {
    float* panel = out + g * h * kPanel;
    const float* rows = w + (it.dir * d.gh() + g * h + it.u0) * h;
    for (int64_t kk = 0; kk < h; ++kk) {
      for (int64_t c = 0; c < kPanel; ++c) {
        panel[kk * kPanel + c] = c < it.nu ? rows[c * h + kk] : 0.0f;
      }
    }
  }
}

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
  alignas(64) float pad_[16][kPanel];
  std::pair<float*, float*> outputs_[16];
};

struct Forward {
  Dims d;
  const float *gx, *w, *b, *h0, *c0;
  const uint8_t* mask;
  float *hs, *aux, *act;  // may alias gx (see the FFI handler)

  // Asks for the unit's lines of step s + 1 to be brought into L2 for writing: gx (which act
  // overwrites), hs and aux. The gate math touches them right after the matmul, and their
  // short, row-strided runs escape the hardware prefetcher.
  void Prefetch(int64_t s, const Unit& u) const {
    const int64_t h = d.hidden, gh = d.gh(), time = d.Time(s + 1, u.it.dir);
    for (int64_t seq = u.b0; seq < u.b0 + u.m; ++seq) {
      const int64_t at = time * d.rows + d.Row(seq, u.it.dir);
      for (int64_t c = 0; c < u.it.nu; c += kLanes) {
        for (int64_t g = 0; g < d.gates; ++g) {
          __builtin_prefetch(gx + at * gh + g * h + u.it.u0 + c, 1, 2);
        }
        __builtin_prefetch(hs + at * h + u.it.u0 + c, 1, 2);
        if (d.gates > 1) __builtin_prefetch(aux + at * h + u.it.u0 + c, 1, 2);
      }
    }
  }

  // Step s of one unit: the matmul of its item's gate columns for its rows, then the gate
  // math. packed: the item's weights; tiles: (gates, kUnitRows, 32).
  void Step(int64_t s, const Unit& u, const float* packed, float* tiles) const {
    const int64_t h = d.hidden, j = u.it.dir;
    // h_prev of the unit's sequences: rows of h0 (stride H) or of hs (stride k*H)
    const float* hprev = s == 0 ? h0 + d.CarryRow(u.b0, j) * h
                                : hs + (d.Time(s - 1, j) * d.rows + d.Row(u.b0, j)) * h;
    const int64_t lda = s == 0 ? h : d.dirs * h;
    if (s + 1 < d.steps) Prefetch(s, u);
    for (int64_t g = 0; g < d.gates; ++g) {
      Matmul(u.m, hprev, lda, packed + g * h * kPanel, h, tiles + g * kUnitRows * kPanel);
    }
    for (int i = 0; i < u.m; ++i) Pointwise(s, u.it, u.b0 + i, tiles + i * kPanel);
  }

  // The gate math of sequence seq; gate g's matmul row is tile[g * kUnitRows * 32 ...].
  void Pointwise(int64_t s, const Item& it, int64_t seq, const float* tile) const {
    const int64_t h = d.hidden, gh = d.gh(), time = d.Time(s, it.dir);
    const int64_t at = time * d.rows + d.Row(seq, it.dir), stride = kUnitRows * kPanel;
    const bool keep = mask[time * d.batch + seq] != 0, lstm = d.cell == kLstm;
    Lanes lanes(it.nu);
    // Every input is read before any output is written, lane by lane: the outputs may
    // overwrite gx (act, or hs for RNN).
    const float *x[4], *bias[4], *cp = nullptr;
    float *aux_out = nullptr, *a_out[4] = {};
    for (int64_t g = 0; g < d.gates; ++g) {
      x[g] = lanes.In(gx + at * gh + g * h + it.u0);
      bias[g] = lanes.In(b + it.dir * gh + g * h + it.u0);
    }
    const float* hp = lanes.In(Carry(d, h0, hs, s, seq, it));
    if (lstm) cp = lanes.In(Carry(d, c0, aux, s, seq, it));
    float* h_out = lanes.Out(hs + at * h + it.u0);
    if (d.gates > 1) {
      aux_out = lanes.Out(aux + at * h + it.u0);
      for (int64_t g = 0; g < d.gates; ++g) a_out[g] = lanes.Out(act + at * gh + g * h + it.u0);
    }
    for (int v = 0; v < kPanel; v += kLanes) {
      auto rec = [&](int g) { return Load(tile + g * stride + v) + Load(bias[g] + v); };
      const vf hv = Load(hp + v);
      vf y;
      if (lstm) {
        const vf ig = Sigmoid(rec(0) + Load(x[0] + v)), fg = Sigmoid(rec(1) + Load(x[1] + v));
        const vf gg = Tanh(rec(2) + Load(x[2] + v)), og = Sigmoid(rec(3) + Load(x[3] + v));
        const vf c = fg * Load(cp + v) + ig * gg;
        y = og * Tanh(c);
        Store(a_out[0] + v, ig);
        Store(a_out[1] + v, fg);
        Store(a_out[2] + v, gg);
        Store(a_out[3] + v, og);
        Store(aux_out + v, keep ? c : Load(cp + v));
      } else if (d.cell == kGru) {
        const vf rg = Sigmoid(rec(0) + Load(x[0] + v)), zg = Sigmoid(rec(1) + Load(x[1] + v));
        const vf hhn = rec(2), ng = Tanh(Load(x[2] + v) + rg * hhn);
        y = ng + zg * (hv - ng);
        Store(a_out[0] + v, rg);
        Store(a_out[1] + v, zg);
        Store(a_out[2] + v, ng);
        Store(aux_out + v, hhn);
      } else {
        const vf p = rec(0) + Load(x[0] + v);
        y = d.cell == kRnnTanh ? Tanh(p) : Max(p, vf{});
      }
      Store(h_out + v, keep ? y : hv);
    }
    lanes.Flush();
  }
};

// ---------------------------------------------------------------------------------------------
// Backward.

// Packs weight_hh for the backward matmul: the item's panel holds, for every gate row n, the
// 32 weights w[dir][n][u0 + c] (zero past H).
void PackBackward(const Dims& d, const float* w, const Item& it, float* out) {
  const int64_t h = d.hidden;
  for (int64_t n = 0; n < d.gh(); ++n) {
    const float* src = w + (it.dir * d.gh() + n) * h + it.u0;
    for (int64_t c = 0; c < kPanel; ++c) out[n * kPanel + c] = c < it.nu ? src[c] : 0.0f;
  }
}

struct Backward {
  Dims d;
  const float *w, *h0, *c0;
  const uint8_t* mask;
  const float *hs, *aux, *act, *dhs, *dcs;
  float *dgx, *drec;     // may alias act and aux, or dgx dhs (see the FFI handler)
  float *dh, *dc;        // the cotangent of the carry entering the present step
  float* dgh[2];         // GRU: cotangent of the recurrent half (k*B, G*H), by step parity

  // Gate cotangents of the unit's sequences at step s; leaves in dh / dc the part of the
  // previous carry's cotangent that does not go through the matmul.
  void Rows(int64_t s, const Unit& u) const {
    for (int64_t b = u.b0; b < u.b0 + u.m; ++b) Row(s, u.it, b);
  }

  void Row(int64_t s, const Item& it, int64_t b) const {
    const int64_t h = d.hidden, gh = d.gh(), time = d.Time(s, it.dir);
    const int64_t at = time * d.rows + d.Row(b, it.dir), row = d.CarryRow(b, it.dir);
    const int64_t carry = row * h + it.u0;
    const bool keep = mask[time * d.batch + b] != 0, lstm = d.cell == kLstm;
    const bool gru = d.cell == kGru;
    Lanes lanes(it.nu);
    // As in the forward pass, every input is read before any output is written, lane by lane.
    const float *a[4] = {}, *c = nullptr, *cp = nullptr, *g_c_in = nullptr, *dc_in = nullptr;
    float *dgx_out[4], *dgh_out[4] = {}, *dc_out = nullptr, *drec_out = nullptr;
    const float* g_h_in = lanes.In(dhs + at * h + it.u0);
    const float* dh_in = lanes.In(dh + carry);
    if (lstm) {
      g_c_in = lanes.In(dcs + at * h + it.u0);
      dc_in = lanes.In(dc + carry);
      c = lanes.In(aux + at * h + it.u0);
      cp = lanes.In(Carry(d, c0, aux, s, b, it));
    } else if (gru) {
      c = lanes.In(Carry(d, h0, hs, s, b, it));  // h_{t-1}
      a[3] = lanes.In(aux + at * h + it.u0);    // the recurrent half of n
    } else {
      c = lanes.In(hs + at * h + it.u0);
    }
    if (d.gates > 1) {
      for (int64_t g = 0; g < d.gates; ++g) a[g] = lanes.In(act + at * gh + g * h + it.u0);
    }
    for (int64_t g = 0; g < d.gates; ++g) {
      dgx_out[g] = lanes.Out(dgx + at * gh + g * h + it.u0);
      if (gru) dgh_out[g] = lanes.Out(dgh[s & 1] + row * gh + g * h + it.u0);
    }
    if (gru) drec_out = lanes.Out(drec + at * h + it.u0);
    float* dh_out = lanes.Out(dh + carry);
    if (lstm) dc_out = lanes.Out(dc + carry);
    const vf one = Splat(1.0f);
    for (int v = 0; v < kPanel; v += kLanes) {
      const vf g_h = Load(g_h_in + v) + Load(dh_in + v);
      if (!keep) {
        for (int64_t g = 0; g < d.gates; ++g) {
          Store(dgx_out[g] + v, vf{});
          if (gru) Store(dgh_out[g] + v, vf{});
        }
        if (gru) Store(drec_out + v, vf{});
        Store(dh_out + v, g_h);
        if (lstm) Store(dc_out + v, Load(g_c_in + v) + Load(dc_in + v));
        continue;
      }
      if (lstm) {
        const vf ig = Load(a[0] + v), fg = Load(a[1] + v), gg = Load(a[2] + v);
        const vf og = Load(a[3] + v), tc = Tanh(Load(c + v));
        const vf g_c = Load(g_c_in + v) + Load(dc_in + v) + g_h * og * (one - tc * tc);
        Store(dgx_out[0] + v, g_c * gg * ig * (one - ig));
        Store(dgx_out[1] + v, g_c * Load(cp + v) * fg * (one - fg));
        Store(dgx_out[2] + v, g_c * ig * (one - gg * gg));
        Store(dgx_out[3] + v, g_h * tc * og * (one - og));
        Store(dh_out + v, vf{});
        Store(dc_out + v, g_c * fg);
      } else if (gru) {
        const vf rg = Load(a[0] + v), zg = Load(a[1] + v), ng = Load(a[2] + v);
        const vf hhn = Load(a[3] + v), hp = Load(c + v);
        const vf dn = g_h * (one - zg) * (one - ng * ng);
        const vf dr = dn * hhn * rg * (one - rg), dz = g_h * (hp - ng) * zg * (one - zg);
        Store(dgx_out[0] + v, dr);
        Store(dgx_out[1] + v, dz);
        Store(dgx_out[2] + v, dn);
        Store(dgh_out[0] + v, dr);
        Store(dgh_out[1] + v, dz);
        Store(dgh_out[2] + v, dn * rg);
        Store(drec_out + v, dn * rg);
        Store(dh_out + v, g_h * zg);
      } else {
        const vf hn = Load(c + v);
        Store(dgx_out[0] + v,
              d.cell == kRnnTanh ? g_h * (one - hn * hn) : (hn > vf{} ? g_h : vf{}));
        Store(dh_out + v, vf{});
      }
    }
    lanes.Flush();
  }

  // Adds the recurrent matmul's part, dgh_s @ w, to the unit's block of dh.
  void AddRecurrent(int64_t s, const Unit& u, const float* packed, float* tile) const {
    const int64_t h = d.hidden, gh = d.gh(), nu = u.it.nu, j = u.it.dir;
    // the unit's rows of dgh: GRU's scratch (k*B, G*H), else dgx (T, R, G*H)
    const bool gru = d.cell == kGru;
    const float* a = gru ? dgh[s & 1] + d.CarryRow(u.b0, j) * gh
                         : dgx + (d.Time(s, j) * d.rows + d.Row(u.b0, j)) * gh;
    Matmul(u.m, a, gru ? gh : d.dirs * gh, packed, gh, tile);
    for (int i = 0; i < u.m; ++i) {
      float* dst = dh + d.CarryRow(u.b0 + i, j) * h + u.it.u0;
      const float* src = tile + i * kPanel;
      if (nu == kPanel) {
        for (int v = 0; v < kPanel; v += kLanes) Store(dst + v, Load(dst + v) + Load(src + v));
      } else {
        for (int64_t c = 0; c < nu; ++c) dst[c] += src[c];
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// FFI handlers.

ffi::Error MakeDims(int32_t cell, int32_t reverse, ffi::Span<const int64_t> gx,
                    ffi::Span<const int64_t> w, Dims* d) {
  if (cell < kRnnTanh || cell > kGru) {
    return ffi::Error::InvalidArgument("jrnn recurrence: cell: expected 0..3, got " +
                                       std::to_string(cell));
  }
  if (gx.size() != 3 || w.size() != 3) {
    return ffi::Error::InvalidArgument("jrnn recurrence: gx and w: expected rank 3, got " +
                                       Shape(gx) + " and " + Shape(w));
  }
  const int64_t gates = Gates(cell), dirs = w[0], hidden = w[2];
  if (w[1] != gates * hidden || gx[2] != gates * hidden || dirs < 1 || gx[1] % dirs != 0) {
    return ffi::Error::InvalidArgument(
        "jrnn recurrence: expected w (k, G*H, H) and gx (T, k*B, G*H) with G = " +
        std::to_string(gates) + ", got w " + Shape(w) + " and gx " + Shape(gx));
  }
  if (reverse < 0 || reverse >= (1 << dirs)) {
    return ffi::Error::InvalidArgument("jrnn recurrence: reverse: expected a bit mask of " +
                                       std::to_string(dirs) + " directions, got " +
                                       std::to_string(reverse));
  }
  *d = Dims{cell, reverse, gx[0], gx[1], dirs, gx[1] / dirs, hidden, gates};
  return ffi::Error::Success();
}

// Forward outputs: hs (T, R, H); aux, for LSTM c (T, R, H), for GRU the recurrent half of n
// (T, R, H), else (1,); act, the gate activations (T, R, G*H) for LSTM and GRU, else (1,). The
// caller may alias act (RNN: hs) to gx, whose every element is read before it is overwritten.
ffi::Error ForwardFfi(ffi::Buffer<ffi::F32> gx, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                      ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                      ffi::Buffer<ffi::U8> mask, int32_t cell, int32_t reverse,
                      ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> aux,
                      ffi::ResultBuffer<ffi::F32> act) {
  Dims d;
  JRNN_CHECK(MakeDims(cell, reverse, gx.dimensions(), w.dimensions(), &d));
  const int64_t T = d.steps, R = d.rows, H = d.hidden;
  const bool gated = d.gates > 1;
  JRNN_CHECK(Expect("b", b.dimensions(), {d.dirs, d.gh()}));
  JRNN_CHECK(Expect("h0", h0.dimensions(), {R, H}));
  JRNN_CHECK(Expect("c0", c0.dimensions(), {R, H}));
  JRNN_CHECK(Expect("mask", mask.dimensions(), {T, d.batch}));
  JRNN_CHECK(Expect("hs", hs->dimensions(), {T, R, H}));
  JRNN_CHECK(gated ? Expect("aux", aux->dimensions(), {T, R, H})
                   : Expect("aux", aux->dimensions(), {1}));
  JRNN_CHECK(gated ? Expect("act", act->dimensions(), {T, R, d.gh()})
                   : Expect("act", act->dimensions(), {1}));
  const Forward f{d,           gx.typed_data(), w.typed_data(),  b.typed_data(),
                  h0.typed_data(), c0.typed_data(), mask.typed_data(), hs->typed_data(),
                  aux->typed_data(), act->typed_data()};
  const int64_t items = d.dirs * d.panels(), per_item = d.gates * H * kPanel;
  Team team(Units(d), Cores(d));
  Floats packed = Allocate(items * per_item);
  Floats tiles = Allocate(team.threads() * d.gates * kUnitRows * kPanel);
  team.Run([&](int me) {
    for (int64_t i = me; i < items; i += team.threads()) {
      PackForward(d, f.w, ItemAt(d, i), packed.get() + i * per_item);
    }
    team.Sync();
    float* tile = tiles.get() + me * d.gates * kUnitRows * kPanel;
    for (int64_t s = 0; s < T; ++s) {
      team.ForEach(me, s, [&](int64_t index) {
        const Unit u = UnitAt(d, index);
        f.Step(s, u, packed.get() + u.it.index * per_item, tile);
      });
      team.Sync();
    }
  });
  return ffi::Error::Success();
}

// Backward inputs: the forward's inputs and outputs, and dhs, dcs: the cotangents of hs and
// of aux (read for LSTM only). Outputs: dgx (T, R, G*H); drec, for GRU the cotangent of n's
// recurrent half (T, R, H), else (1,); dh0 and dc0 (k*B, H). The caller may alias dgx to act
// (RNN: to dhs) and drec to aux.
ffi::Error BackwardFfi(ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::U8> mask,
                       ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> aux,
                       ffi::Buffer<ffi::F32> act, ffi::Buffer<ffi::F32> dhs,
                       ffi::Buffer<ffi::F32> dcs, int32_t cell, int32_t reverse,
                       ffi::ResultBuffer<ffi::F32> dgx, ffi::ResultBuffer<ffi::F32> drec,
                       ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0) {
  Dims d;
  JRNN_CHECK(MakeDims(cell, reverse, dgx->dimensions(), w.dimensions(), &d));
  const int64_t T = d.steps, R = d.rows, H = d.hidden;
  const bool gated = d.gates > 1;
  JRNN_CHECK(Expect("h0", h0.dimensions(), {R, H}));
  JRNN_CHECK(Expect("c0", c0.dimensions(), {R, H}));
  JRNN_CHECK(Expect("mask", mask.dimensions(), {T, d.batch}));
  JRNN_CHECK(Expect("hs", hs.dimensions(), {T, R, H}));
  JRNN_CHECK(Expect("dhs", dhs.dimensions(), {T, R, H}));
  JRNN_CHECK(gated ? Expect("aux", aux.dimensions(), {T, R, H})
                   : Expect("aux", aux.dimensions(), {1}));
  JRNN_CHECK(Expect("dcs", dcs.dimensions(), aux.dimensions()));
  JRNN_CHECK(gated ? Expect("act", act.dimensions(), {T, R, d.gh()})
                   : Expect("act", act.dimensions(), {1}));
  JRNN_CHECK(cell == kGru ? Expect("drec", drec->dimensions(), {T, R, H})
                          : Expect("drec", drec->dimensions(), {1}));
  JRNN_CHECK(Expect("dh0", dh0->dimensions(), {R, H}));
  JRNN_CHECK(Expect("dc0", dc0->dimensions(), {R, H}));
  Floats scratch = Allocate(cell == kGru ? 2 * R * d.gh() : 1);
  std::memset(dh0->typed_data(), 0, R * H * sizeof(float));
  std::memset(dc0->typed_data(), 0, R * H * sizeof(float));
  const Backward bw{d,
                    w.typed_data(),
                    h0.typed_data(),
                    c0.typed_data(),
                    mask.typed_data(),
                    hs.typed_data(),
                    aux.typed_data(),
                    act.typed_data(),
                    dhs.typed_data(),
                    dcs.typed_data(),
                    dgx->typed_data(),
                    drec->typed_data(),
                    dh0->typed_data(),
                    dc0->typed_data(),
                    {scratch.get(), scratch.get() + (cell == kGru ? R * d.gh() : 0)}};
  // Step t's matmul and step t - 1's gate math of a unit go together: the gate math needs the
  // unit's block of dh, which the matmul has just completed.
  const int64_t items = d.dirs * d.panels(), per_item = d.gh() * kPanel;
  Team team(Units(d), Cores(d));
  Floats packed = Allocate(items * per_item);
  Floats tiles = Allocate(team.threads() * kUnitRows * kPanel);
  team.Run([&](int me) {
    for (int64_t i = me; i < items; i += team.threads()) {
      PackBackward(d, bw.w, ItemAt(d, i), packed.get() + i * per_item);
    }
    team.Sync();
    float* tile = tiles.get() + me * kUnitRows * kPanel;
    int64_t step = 0;
    team.ForEach(me, step++, [&](int64_t index) { bw.Rows(T - 1, UnitAt(d, index)); });
    team.Sync();
    for (int64_t t = T - 1; t >= 0; --t) {
      team.ForEach(me, step++, [&](int64_t index) {
        const Unit u = UnitAt(d, index);
        bw.AddRecurrent(t, u, packed.get() + u.it.index * per_item, tile);
        if (t > 0) bw.Rows(t - 1, u);
      });
      team.Sync();
    }
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jrnn

XLA_FFI_DEFINE_HANDLER_SYMBOL(JrnnRecurrenceForward, jrnn::ForwardFfi,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // gx
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // w
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // b
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // h0
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // c0
                                  .Arg<xla::ffi::Buffer<xla::ffi::U8>>()   // mask
                                  .Attr<int32_t>("cell")
                                  .Attr<int32_t>("reverse")
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // hs
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // aux
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());  // act

XLA_FFI_DEFINE_HANDLER_SYMBOL(JrnnRecurrenceBackward, jrnn::BackwardFfi,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // w
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // h0
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // c0
                                  .Arg<xla::ffi::Buffer<xla::ffi::U8>>()   // mask
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // hs
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // aux
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // act
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // dhs
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()  // dcs
                                  .Attr<int32_t>("cell")
                                  .Attr<int32_t>("reverse")
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // dgx
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // drec
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // dh0
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());  // dc0
