// The loops over time of recurrence.cc and all that they run per step: float vectors and their
// exp, sigmoid and tanh, a register-tiled matmul over packed panels of 32 columns, and the
// forward and backward steps of one unit of work.
//
// This is the code whose speed depends on the instruction set. recurrence.cc includes the file
// once per instruction set, each time inside that set's namespace and `#pragma GCC target`,
// after defining there kLanes (floats per vector register), kTileRows (rows of the matmul's
// register tile), vf (a vector of kLanes floats) and Reciprocal (1 / x); its FFI handlers call
// the RunForward and RunBackward of the set chosen when the library is loaded. Hence no
// include guard.

using vi = int32_t __attribute__((vector_size(sizeof(vf))));
using vu = uint32_t __attribute__((vector_size(sizeof(vf))));

constexpr int kVectors = kPanel / kLanes;  // vectors per row of a panel

inline vf Load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void Store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

inline vf Splat(float a) { return a - vf{}; }  // a - 0 is a, also for a = -0

// ---------------------------------------------------------------------------------------------
// Vector math.

// min(a, b) and max(a, b), a where a is NaN: a NaN passes through the clamps below as the
// scan path's NaN does (a diverging run must show it), instead of becoming a bound.
inline vf Min(vf a, vf b) { return b < a ? b : a; }

inline vf Max(vf a, vf b) { return b > a ? b : a; }

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

// x rounded to the nearest bfloat16 (ties to even), as a float: what XLA's conversion to
// bfloat16 and back gives, NaN kept.
inline vf Bf16(vf x) {
  vu bits = __builtin_bit_cast(vu, x);
  bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
  return x == x ? __builtin_bit_cast(vf, bits) : x;
}

// dst[0, n) = Bf16(src[0, n)).
inline void RoundBf16(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) Store(dst + i, Bf16(Load(src + i)));
  for (; i < n; ++i) dst[i] = Bf16(Splat(src[i]))[0];
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
// Matmul: out (m, 32) = a (m, K) @ b (K, 32), b packed (K rows of 32 contiguous floats), a
// row-major with leading dimension lda (kColumns: a's row r, column kk at a[r + kk * lda], i.e. a
// is the transpose of a row-major (K, m) array). Register tiles of up to kTileRows rows x 32
// columns; K in blocks of 256, whose part of b (32 KiB) stays in L1 while every row tile reads it.

template <int M, bool kAccumulate, bool kColumns>
void TileKernel(const float* __restrict a, int64_t lda, const float* __restrict b, int64_t k,
                float* __restrict out) {
  vf acc[M][kVectors];
#pragma GCC unroll 8
  for (int r = 0; r < M; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) {
      acc[r][v] = kAccumulate ? Load(out + r * kPanel + v * kLanes) : vf{};
    }
  }
#pragma GCC unroll 2
  for (int64_t kk = 0; kk < k; ++kk) {
    vf bk[kVectors];
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) bk[v] = Load(b + kk * kPanel + v * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < M; ++r) {
      const vf x = Splat(kColumns ? a[r + kk * lda] : a[r * lda + kk]);
#pragma GCC unroll 8
      for (int v = 0; v < kVectors; ++v) acc[r][v] += x * bk[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < M; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < kVectors; ++v) Store(out + r * kPanel + v * kLanes, acc[r][v]);
  }
}

// The kernel for a tile of m <= M rows.
template <bool kAccumulate, bool kColumns, int M = kTileRows>
void Tile(int m, const float* a, int64_t lda, const float* b, int64_t k, float* out) {
  if constexpr (M > 1) {
    if (m < M) return Tile<kAccumulate, kColumns, M - 1>(m, a, lda, b, k, out);
  }
  TileKernel<M, kAccumulate, kColumns>(a, lda, b, k, out);
}

// out = a @ b, or out += a @ b with kAccumulate; a as in TileKernel.
template <bool kAccumulate, bool kColumns = false>
void Matmul(int64_t m, const float* a, int64_t lda, const float* b, int64_t k, float* out) {
  constexpr int64_t kBlock = 256;
  for (int64_t k0 = 0; k0 < k; k0 += kBlock) {
    const int64_t kb = std::min(kBlock, k - k0);
    for (int64_t r0 = 0; r0 < m; r0 += kTileRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - r0));
      const float *ar = a + (kColumns ? r0 + k0 * lda : r0 * lda + k0), *bk = b + k0 * kPanel;
      if (k0 == 0 && !kAccumulate) {
        Tile<false, kColumns>(rows, ar, lda, bk, kb, out + r0 * kPanel);
      } else {
        Tile<true, kColumns>(rows, ar, lda, bk, kb, out + r0 * kPanel);
      }
    }
  }
}

#ifdef JRNN_DOT
// The same with bfloat16 operands and the dot-product instruction (kDot): b is packed in pairs
// (PackPairs), K comes as its number of pairs, and a's pair kk of row r is the two bfloat16s at
// a + r * lda + kk * step: step 2 for rows of K bfloat16s lda apart, lda 2 for rows interleaved
// in pairs (PairUp: pair kk of every row, then pair kk + 1).
template <int M, bool kAccumulate>
void DotKernel(const uint16_t* __restrict a, int64_t lda, int64_t step,
               const uint16_t* __restrict b, int64_t pairs, float* __restrict out) {
  __m512 acc[M][2];
#pragma GCC unroll 8
  for (int r = 0; r < M; ++r) {
    acc[r][0] = kAccumulate ? _mm512_loadu_ps(out + r * kPanel) : _mm512_setzero_ps();
    acc[r][1] = kAccumulate ? _mm512_loadu_ps(out + r * kPanel + 16) : _mm512_setzero_ps();
  }
#pragma GCC unroll 2
  for (int64_t kk = 0; kk < pairs; ++kk) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + kk * 2 * kPanel);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + kk * 2 * kPanel + kPanel);
#pragma GCC unroll 8
    for (int r = 0; r < M; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + kk * step, sizeof pair);
      const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b1);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < M; ++r) {
    _mm512_storeu_ps(out + r * kPanel, acc[r][0]);
    _mm512_storeu_ps(out + r * kPanel + 16, acc[r][1]);
  }
}

template <bool kAccumulate, int M = kTileRows>
void DotTile(int m, const uint16_t* a, int64_t lda, int64_t step, const uint16_t* b,
             int64_t pairs, float* out) {
  if constexpr (M > 1) {
    if (m < M) return DotTile<kAccumulate, M - 1>(m, a, lda, step, b, pairs, out);
  }
  DotKernel<M, kAccumulate>(a, lda, step, b, pairs, out);
}

// out (m, 32) (+)= a @ b as DotKernel computes it; step 2 unless given (see there).
template <bool kAccumulate>
void DotMatmul(int64_t m, const uint16_t* a, int64_t lda, const uint16_t* b, int64_t pairs,
               float* out, int64_t step = 2) {
  constexpr int64_t kBlock = 256;  // pairs: 32 KiB of b
  for (int64_t k0 = 0; k0 < pairs; k0 += kBlock) {
    const int64_t kb = std::min(kBlock, pairs - k0);
    for (int64_t r0 = 0; r0 < m; r0 += kTileRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - r0));
      const uint16_t *ar = a + r0 * lda + k0 * step, *bk = b + k0 * 2 * kPanel;
      if (k0 == 0 && !kAccumulate) {
        DotTile<false>(rows, ar, lda, step, bk, kb, out + r0 * kPanel);
      } else {
        DotTile<true>(rows, ar, lda, step, bk, kb, out + r0 * kPanel);
      }
    }
  }
}
#endif  // JRNN_DOT

using vh = uint16_t __attribute__((vector_size(sizeof(vf) / 2)));

// The bits of x rounded to bfloat16 (Bf16) in the high half of each lane; a NaN keeps its quiet
// bit there (as Half does), so it does not become an infinity when the low half is dropped.
inline vu Bf16Bits(vf x) {
  const vu bits = __builtin_bit_cast(vu, Bf16(x));
  return x == x ? bits : bits | 0x00400000u;
}

// Writes the first n <= kLanes entries of x, rounded to bfloat16 (Bf16), as bfloat16s.
inline void StoreHalves(uint16_t* dst, vf x, int64_t n) {
  const vh h = __builtin_convertvector(Bf16Bits(x) >> 16, vh);
  std::memcpy(dst, &h, std::min<int64_t>(n, kLanes) * sizeof(uint16_t));
}

// Interleaves two rows of n floats as pairs of bfloat16s (rounded, Bf16): dst[2i] = even[i],
// dst[2i + 1] = odd[i] (0 where odd is nullptr: the pad of an odd count of rows).
inline void PairUp(const float* even, const float* odd, int64_t n, uint16_t* dst) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const vu low = Bf16Bits(Load(even + i)) >> 16;
    const vu high = odd ? Bf16Bits(Load(odd + i)) & 0xffff0000u : vu{};
    const vu pairs = low | high;
    std::memcpy(dst + 2 * i, &pairs, sizeof pairs);
  }
  for (; i < n; ++i) {
    dst[2 * i] = Half(even[i]);
    dst[2 * i + 1] = odd ? Half(odd[i]) : 0;
  }
}

// Rows (n, 32) as bfloat16s in pairs of rows (the layout of PackPairs with k = n).
inline void PairRows(const float* src, int64_t n, uint16_t* dst) {
  for (int64_t r = 0; r < n; r += 2) {
    PairUp(src + r * kPanel, r + 1 < n ? src + (r + 1) * kPanel : nullptr, kPanel,
           dst + r * kPanel);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward.

struct ForwardSteps : Forward {
  // Asks for the unit's lines of step s + 1 to be brought into L2 for writing: hs (with a
  // projection ms), aux and act. The gate math touches them right after the matmul, and their
  // short, row-strided runs escape the hardware prefetcher.
  void Prefetch(int64_t s, const Unit& u) const {
    const int64_t h = d.hidden, gh = d.gh(), time = d.Time(s + 1, u.it.dir);
    const int64_t slot = d.Slot(s + 1, u.it.dir);
    for (int64_t seq = u.b0; seq < u.b0 + u.m; ++seq) {
      const int64_t at = time * d.rows + d.Row(seq, u.it.dir);
      const int64_t st = slot * d.rows + d.Row(seq, u.it.dir);
      for (int64_t c = 0; c < u.it.nu; c += kLine) {
        if (act != nullptr) {
          for (int64_t g = 0; g < d.gates; ++g) {
            __builtin_prefetch(act + at * gh + g * h + u.it.u0 + c, 1, 2);
          }
        }
        __builtin_prefetch(d.proj != 0 ? ms + st * h + u.it.u0 + c : hs + at * h + u.it.u0 + c,
                           1, 2);
        if (d.gates > 1) __builtin_prefetch(aux + st * h + u.it.u0 + c, 1, 2);
      }
    }
  }

  // Step s of one unit: the matmuls of its item's gate columns for its rows, h_prev @ W_hh^T
  // and x_t @ W_ih^T into one tile per gate (GRU's n gate: two tiles, its halves apart), then
  // the gate math. packed: the item's weights (PackForward), or with hm16 paired: the same in
  // pairs (PackForwardPairs); tiles: (Tiles(d), kUnitRows, 32).
  void Step(int64_t s, const Unit& u, const float* packed, const uint16_t* paired,
            float* tiles) const {
#ifdef JRNN_DOT
    if (hm16 != nullptr) return DotStep(s, u, paired, tiles);
#endif
    const int64_t o = d.out(), in = d.input, j = u.it.dir, stride = kUnitRows * kPanel;
    // h_prev of the unit's sequences: rows of h0 (stride out) or of hs (stride k*out); with
    // bf16 the rounded copy, by step parity (h0's is the odd one)
    const float* hprev = hm        ? hm + (((s + 1) & 1) * d.rows + d.Row(u.b0, j)) * o
                         : s == 0 ? h0 + d.CarryRow(u.b0, j) * o
                                  : hs + (d.Time(s - 1, j) * d.rows + d.Row(u.b0, j)) * o;
    const int64_t lda = s == 0 && hm == nullptr ? o : d.dirs * o;
    const float* x = xs + (d.Time(s, j) * d.batch + u.b0) * in;
    if (s + 1 < d.steps) Prefetch(s, u);
    for (int64_t g = 0; g < d.gates; ++g) {
      const float* panel = packed + g * (o + in) * kPanel;
      float* tile = tiles + g * stride;
      Matmul<false>(u.m, hprev, lda, panel, o, tile);
      if (d.cell == kGru && g == 2) {
        Matmul<false>(u.m, x, in, panel + o * kPanel, in, tiles + 3 * stride);
      } else {
        Matmul<true>(u.m, x, in, panel + o * kPanel, in, tile);
      }
    }
    for (int i = 0; i < u.m; ++i) Pointwise(s, u.it, u.b0 + i, tiles + i * kPanel);
  }

#ifdef JRNN_DOT
  // Step with bfloat16 operands: hm16, xs16 and the paired weights, by the dot-product kernel.
  void DotStep(int64_t s, const Unit& u, const uint16_t* paired, float* tiles) const {
    const int64_t o = Pairs(d.out()), in = Pairs(d.input), j = u.it.dir;
    const int64_t stride = kUnitRows * kPanel;
    const uint16_t* hprev = hm16 + (((s + 1) & 1) * d.rows + d.Row(u.b0, j)) * 2 * o;
    const uint16_t* x = xs16 + (d.Time(s, j) * d.batch + u.b0) * 2 * in;
    if (s + 1 < d.steps) Prefetch(s, u);
    for (int64_t g = 0; g < d.gates; ++g) {
      const uint16_t* panel = paired + g * PairedGate(d);
      float* tile = tiles + g * stride;
      DotMatmul<false>(u.m, hprev, d.dirs * 2 * o, panel, o, tile);
      if (d.cell == kGru && g == 2) {
        DotMatmul<false>(u.m, x, 2 * in, panel + o * 2 * kPanel, in, tiles + 3 * stride);
      } else {
        DotMatmul<true>(u.m, x, 2 * in, panel + o * 2 * kPanel, in, tile);
      }
    }
    for (int i = 0; i < u.m; ++i) Pointwise(s, u.it, u.b0 + i, tiles + i * kPanel);
  }
#endif

  // h's row of sequence seq, direction j, in hm16 at step s (by parity), from unit u0.
  uint16_t* HalvesOut(int64_t s, int64_t seq, const Item& it) const {
    const int64_t row = (s & 1) * d.rows + d.Row(seq, it.dir);
    return hm16 + row * 2 * Pairs(d.out()) + it.u0;
  }

  // tile = the unit's rows of m_s @ its panel of W_hr^T.
  void ProjectMatmul(int64_t s, const Unit& u, const float* packed, const uint16_t* paired,
                     float* tile) const {
    const int64_t h = d.hidden, j = u.it.dir;
#ifdef JRNN_DOT
    if (ms16 != nullptr) {
      const int64_t lda = 2 * Pairs(h);
      return DotMatmul<false>(u.m, ms16 + d.Row(u.b0, j) * lda, d.dirs * lda, paired, Pairs(h),
                              tile);
    }
#endif
    const float* m = ms + (d.Slot(s, j) * d.rows + d.Row(u.b0, j)) * h;
    Matmul<false>(u.m, m, d.dirs * h, packed, h, tile);
  }

  // With a projection, step s's second half for one unit over the P units of h, once all of
  // m_s is written: h = m @ W_hr^T for its rows and columns, or h_prev where a sequence has
  // ended. packed: the item's (H, 32) panel of W_hr (PackProjection), or with ms16 paired:
  // the same in pairs; tile: (kUnitRows, 32).
  void Project(int64_t s, const Unit& u, const float* packed, const uint16_t* paired,
               float* tile) const {
    const int64_t o = d.out(), j = u.it.dir, time = d.Time(s, j);
    ProjectMatmul(s, u, packed, paired, tile);
    for (int i = 0; i < u.m; ++i) {
      const int64_t seq = u.b0 + i, at = time * d.rows + d.Row(seq, j);
      const bool keep = mask[time * d.batch + seq] != 0;
      Lanes lanes(u.it.nu);
      const float* hp = lanes.In(Carry(d, h0, hs, s, seq, u.it, o));
      float* h_out = lanes.Out(hs + at * o + u.it.u0);
      float* hm_out =
          hm ? lanes.Out(hm + ((s & 1) * d.rows + d.Row(seq, j)) * o + u.it.u0) : nullptr;
      uint16_t* halves = hm16 ? HalvesOut(s, seq, u.it) : nullptr;
      for (int v = 0; v < kPanel; v += kLanes) {
        const vf y = keep ? Load(tile + i * kPanel + v) : Load(hp + v);
        Store(h_out + v, y);
        if (hm_out != nullptr) Store(hm_out + v, Bf16(y));
        if (halves != nullptr && v < u.it.nu) StoreHalves(halves + v, y, u.it.nu - v);
      }
      lanes.Flush();
    }
  }

  // The gate math of sequence seq; gate g's matmul row is tile[g * kUnitRows * 32 ...]. With a
  // projection it writes m (with bf16 rounded: the projection's operand) where h would go, and
  // Project writes h.
  void Pointwise(int64_t s, const Item& it, int64_t seq, const float* tile) const {
    const int64_t h = d.hidden, gh = d.gh(), time = d.Time(s, it.dir);
    const bool projected = d.proj != 0;
    const int64_t at = time * d.rows + d.Row(seq, it.dir), stride = kUnitRows * kPanel;
    const int64_t st = d.Slot(s, it.dir) * d.rows + d.Row(seq, it.dir);  // in aux and ms
    const bool keep = mask[time * d.batch + seq] != 0, lstm = d.cell == kLstm;
    Lanes lanes(it.nu);
    const float *bias_i[4], *bias_h[4], *cp = nullptr;
    float *aux_out = nullptr, *a_out[4] = {}, *hm_out = nullptr;
    for (int64_t g = 0; g < d.gates; ++g) {
      bias_i[g] = lanes.In(b_ih + it.dir * gh + g * h + it.u0);
      bias_h[g] = lanes.In(b_hh + it.dir * gh + g * h + it.u0);
    }
    const float* hp = projected ? nullptr : lanes.In(Carry(d, h0, hs, s, seq, it, h));
    if (lstm) cp = lanes.In(Carry(d, c0, aux, s, seq, it, h, true));
    float* h_out = lanes.Out(projected ? ms + st * h + it.u0 : hs + at * h + it.u0);
    if (hm != nullptr && !projected) {
      hm_out = lanes.Out(hm + ((s & 1) * d.rows + d.Row(seq, it.dir)) * h + it.u0);
    }
    // bf16 on the dot-product kernel: h_prev's bfloat16 copy, with a projection m's instead
    uint16_t* halves = nullptr;
    if (hm16 != nullptr) {
      halves = projected ? ms16 + d.Row(seq, it.dir) * 2 * Pairs(h) + it.u0
                         : HalvesOut(s, seq, it);
    }
    if (d.gates > 1) aux_out = lanes.Out(aux + st * h + it.u0);
    if (act != nullptr) {
      for (int64_t g = 0; g < d.gates; ++g) a_out[g] = lanes.Out(act + at * gh + g * h + it.u0);
    }
    for (int v = 0; v < kPanel; v += kLanes) {
      // gate g before its activation: both matmuls and both biases
      auto pre = [&](int g) {
        return Load(tile + g * stride + v) + (Load(bias_i[g] + v) + Load(bias_h[g] + v));
      };
      const vf hv = projected ? vf{} : Load(hp + v);
      vf y;
      if (lstm) {
        const vf ig = Sigmoid(pre(0)), fg = Sigmoid(pre(1));
        const vf gg = Tanh(pre(2)), og = Sigmoid(pre(3));
        const vf c = fg * Load(cp + v) + ig * gg;
        y = og * Tanh(c);
        if (act != nullptr) {
          Store(a_out[0] + v, ig);
          Store(a_out[1] + v, fg);
          Store(a_out[2] + v, gg);
          Store(a_out[3] + v, og);
        }
        Store(aux_out + v, keep ? c : Load(cp + v));
      } else if (d.cell == kGru) {
        const vf rg = Sigmoid(pre(0)), zg = Sigmoid(pre(1));
        const vf hhn = Load(tile + 2 * stride + v) + Load(bias_h[2] + v);
        const vf xn = Load(tile + 3 * stride + v) + Load(bias_i[2] + v);
        const vf ng = Tanh(xn + rg * hhn);
        y = ng + zg * (hv - ng);
        if (act != nullptr) {
          Store(a_out[0] + v, rg);
          Store(a_out[1] + v, zg);
          Store(a_out[2] + v, ng);
        }
        Store(aux_out + v, hhn);
      } else {
        y = d.cell == kRnnTanh ? Tanh(pre(0)) : Max(pre(0), vf{});
      }
      if (projected) {
        Store(h_out + v, d.bf16 ? Bf16(y) : y);
        if (halves != nullptr && v < it.nu) StoreHalves(halves + v, y, it.nu - v);
        continue;
      }
      Store(h_out + v, keep ? y : hv);
      if (hm_out != nullptr) Store(hm_out + v, Bf16(keep ? y : hv));
      if (halves != nullptr && v < it.nu) StoreHalves(halves + v, keep ? y : hv, it.nu - v);
    }
    lanes.Flush();
  }
};

// The forward loop over time: packs weight_hh and weight_ih (and weight_hr), then runs the
// steps on a team of threads; with a projection each step in two halves, each ending at the
// barrier.
void RunForward(const Forward& forward) {
  ForwardSteps f{forward};
  const Dims& d = f.d;
  const int64_t o = d.out();
  // with bf16 the rounded operands: h by step parity and, for the dot-product kernel, the
  // weights in pairs and x as bfloat16s
  const bool dot = kDot && d.bf16;
  Floats rounded = Allocate(d.bf16 && !dot ? 2 * d.rows * o : 1);
  Halves hm16 = AllocateHalves(dot ? 2 * d.rows * 2 * Pairs(o) : 1);
  Halves xs16 = AllocateHalves(dot ? d.steps * d.batch * 2 * Pairs(d.input) : 1);
  if (d.bf16) {
    f.hm = dot ? nullptr : rounded.get();
    f.hm16 = dot ? hm16.get() : nullptr;
    f.xs16 = dot ? xs16.get() : nullptr;
  }
  const int64_t per_paired = dot ? d.gates * PairedGate(d) : 0;
  const int64_t items = d.dirs * d.panels(), per_item = d.gates * (o + d.input) * kPanel;
  const int64_t projs = d.proj != 0 ? d.dirs * Dims::Panels(o) : 0;
  const int64_t per_proj = dot ? Pairs(d.hidden) * 2 * kPanel : d.hidden * kPanel;
  const int64_t per_team = Tiles(d) * kUnitRows * kPanel;
  const int64_t units = Units(d), proj_units = d.proj != 0 ? Units(d, o) : 0;
  Team team(std::max(units, proj_units), Cores(d));
  Floats packed = Allocate(dot ? 1 : items * per_item);
  Halves paired = AllocateHalves(items * per_paired);
  Floats packed_hr = Allocate(dot ? 1 : projs * per_proj);
  Halves paired_hr = AllocateHalves(dot ? projs * per_proj : 1);
  Halves ms16 = AllocateHalves(dot && d.proj != 0 ? d.rows * 2 * Pairs(d.hidden) : 1);
  if (dot && d.proj != 0) f.ms16 = ms16.get();
  Floats tiles = Allocate(team.threads() * per_team);
  team.Run([&](int me) {
    for (int64_t i = me; i < items; i += team.threads()) {
      if (dot) {
        PackForwardPairs(d, f.w_hh, f.w_ih, ItemAt(d, i), paired.get() + i * per_paired);
      } else {
        PackForward(d, f.w_hh, f.w_ih, ItemAt(d, i), packed.get() + i * per_item);
      }
    }
    for (int64_t i = me; i < projs; i += team.threads()) {
      const Item it = ItemAt(d, i, o);
      if (!dot) {
        PackProjection(d, f.w_hr, it, packed_hr.get() + i * per_proj);
        continue;
      }
      const float* w = f.w_hr + (it.dir * d.proj + it.u0) * d.hidden;
      auto weight = [&](int64_t kk, int64_t c) { return c < it.nu ? w[c * d.hidden + kk] : 0.0f; };
      PackPairs(d.hidden, weight, paired_hr.get() + i * per_proj);
    }
    for (int64_t r = me; d.bf16 && r < d.rows; r += team.threads()) {
      // h0 rounded, where step 0 reads h_prev
      const int64_t j = r / d.batch, b = r % d.batch;  // r = CarryRow(b, j)
      const float* src = f.h0 + r * o;
      if (!dot) {
        RoundBf16(f.hm + (d.rows + d.Row(b, j)) * o, src, o);
        continue;
      }
      uint16_t* dst = f.hm16 + (d.rows + d.Row(b, j)) * 2 * Pairs(o);
      for (int64_t kk = 0; kk < o; ++kk) dst[kk] = Half(src[kk]);
    }
    for (int64_t r = me; dot && r < d.steps * d.batch; r += team.threads()) {
      uint16_t* dst = f.xs16 + r * 2 * Pairs(d.input);
      for (int64_t kk = 0; kk < d.input; ++kk) dst[kk] = Half(f.xs[r * d.input + kk]);
    }
    team.Sync();
    float* tile = tiles.get() + me * per_team;
    for (int64_t s = 0, step = 0; s < d.steps; ++s) {
      team.ForEach(me, step++, units, [&](int64_t index) {
        const Unit u = UnitAt(d, index);
        f.Step(s, u, packed.get() + u.it.index * per_item,
               paired.get() + u.it.index * per_paired, tile);
      });
      team.Sync();
      if (d.proj == 0) continue;
      team.ForEach(me, step++, proj_units, [&](int64_t index) {
        const Unit u = UnitAt(d, index, o);
        f.Project(s, u, packed_hr.get() + u.it.index * per_proj,
                  paired_hr.get() + u.it.index * per_proj, tile);
      });
      team.Sync();
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward.

struct BackwardSteps : Backward {
  // Gate cotangents of the unit's sequences at step s; leaves in dh / dc the part of the
  // previous carry's cotangent that does not go through the matmul. With a projection, dm:
  // the unit's (kUnitRows, 32) tile of m's cotangent (ProjectedRows), which stands for h's.
  void Rows(int64_t s, const Unit& u, const float* dm = nullptr) const {
    for (int i = 0; i < u.m; ++i) Row(s, u.it, u.b0 + i, dm ? dm + i * kPanel : nullptr);
  }

  void Row(int64_t s, const Item& it, int64_t b, const float* dm) const {
    const int64_t h = d.hidden, gh = d.gh(), time = d.Time(s, it.dir);
    const int64_t at = time * d.rows + d.Row(b, it.dir), row = d.CarryRow(b, it.dir);
    const int64_t carry = row * h + it.u0;
    const bool keep = mask[time * d.batch + b] != 0, lstm = d.cell == kLstm;
    const bool gru = d.cell == kGru;
    Lanes lanes(it.nu);
    // As in the forward pass, every input is read before any output is written, lane by lane.
    const float *a[4] = {}, *c = nullptr, *cp = nullptr, *dc_in = nullptr;
    float *dgx_out[4], *dgh_out[4] = {}, *dgm_out[4] = {}, *dc_out = nullptr, *dh_out = nullptr;
    const float *g_h_in = dm, *dh_in = nullptr;
    if (dm == nullptr) {
      g_h_in = lanes.In(dhs + at * h + it.u0);
      dh_in = lanes.In(dh + carry);
    }
    if (lstm) {
      dc_in = lanes.In(dc + carry);
      c = lanes.In(aux + at * h + it.u0);
      cp = lanes.In(Carry(d, c0, aux, s, b, it, h));
    } else if (gru) {
      c = lanes.In(Carry(d, h0, hs, s, b, it, h));  // h_{t-1}
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
      if (dgm[0] != nullptr) dgm_out[g] = lanes.Out(dgm[s & 1] + row * gh + g * h + it.u0);
    }
    uint16_t* halves = dgm16[0] ? dgm16[s & 1] + row * 2 * Pairs(gh) + it.u0 : nullptr;
    if (dm == nullptr) dh_out = lanes.Out(dh + carry);
    if (lstm) dc_out = lanes.Out(dc + carry);
    const vf one = Splat(1.0f);
    for (int v = 0; v < kPanel; v += kLanes) {
      // gate g's cotangent: gx of the input half, gr of the recurrent half (they differ only in
      // GRU's n gate), and with bf16 gr rounded for the recurrent matmul
      auto put = [&](int g, vf gx, vf gr) {
        Store(dgx_out[g] + v, gx);
        if (gru) Store(dgh_out[g] + v, gr);
        if (dgm_out[g] != nullptr) Store(dgm_out[g] + v, Bf16(gr));
        if (halves != nullptr && v < it.nu) StoreHalves(halves + g * h + v, gr, it.nu - v);
      };
      const vf g_h = dm ? Load(dm + v) : Load(g_h_in + v) + Load(dh_in + v);
      if (!keep) {
        for (int g = 0; g < d.gates; ++g) put(g, vf{}, vf{});
        if (dh_out != nullptr) Store(dh_out + v, g_h);
        if (lstm) Store(dc_out + v, Load(dc_in + v));
        continue;
      }
      if (lstm) {
        const vf ig = Load(a[0] + v), fg = Load(a[1] + v), gg = Load(a[2] + v);
        const vf og = Load(a[3] + v), tc = Tanh(Load(c + v));
        const vf g_c = Load(dc_in + v) + g_h * og * (one - tc * tc);
        const vf di = g_c * gg * ig * (one - ig), df = g_c * Load(cp + v) * fg * (one - fg);
        const vf dg = g_c * ig * (one - gg * gg), dout = g_h * tc * og * (one - og);
        put(0, di, di);
        put(1, df, df);
        put(2, dg, dg);
        put(3, dout, dout);
        if (dh_out != nullptr) Store(dh_out + v, vf{});
        Store(dc_out + v, g_c * fg);
      } else if (gru) {
        const vf rg = Load(a[0] + v), zg = Load(a[1] + v), ng = Load(a[2] + v);
        const vf hhn = Load(a[3] + v), hp = Load(c + v);
        const vf dn = g_h * (one - zg) * (one - ng * ng);
        const vf dr = dn * hhn * rg * (one - rg), dz = g_h * (hp - ng) * zg * (one - zg);
        put(0, dr, dr);
        put(1, dz, dz);
        put(2, dn, dn * rg);
        Store(dh_out + v, g_h * zg);
      } else {
        const vf hn = Load(c + v);
        const vf dg = d.cell == kRnnTanh ? g_h * (one - hn * hn) : (hn > vf{} ? g_h : vf{});
        put(0, dg, dg);
        Store(dh_out + v, vf{});
      }
    }
    lanes.Flush();
  }

  // With a projection, the first part of step s going back, for one unit over the P units of
  // h: the cotangent of h at step s, dhs plus the carried dh, goes to the projection (dp, with
  // bf16 rounded) where the sequence is valid, else on to h_{t-1} (dh).
  void ProjectBack(int64_t s, const Unit& u) const {
    const int64_t o = d.out(), j = u.it.dir, time = d.Time(s, j);
    for (int64_t b = u.b0; b < u.b0 + u.m; ++b) {
      const int64_t carry = d.CarryRow(b, j) * o + u.it.u0;
      const bool keep = mask[time * d.batch + b] != 0;
      Lanes lanes(u.it.nu);
      const float* g_in = lanes.In(dhs + (time * d.rows + d.Row(b, j)) * o + u.it.u0);
      const float* dh_in = lanes.In(dh + carry);
      float* dh_out = lanes.Out(dh + carry);
      float* dp_out = lanes.Out(dp[s & 1] + carry);
      for (int v = 0; v < kPanel; v += kLanes) {
        const vf g = Load(g_in + v) + Load(dh_in + v);
        Store(dp_out + v, keep ? (d.bf16 ? Bf16(g) : g) : vf{});
        Store(dh_out + v, keep ? vf{} : g);
      }
      lanes.Flush();
    }
  }

  // With a projection, the second part of step s going back, for one unit over the H units of
  // m, once all of dp is written: dm = dp @ W_hr for its rows and columns, then the gate math.
  // packed: the item's (P, 32) panel of W_hr (PackBackward); tile: (kUnitRows, 32).
  void ProjectedRows(int64_t s, const Unit& u, const float* packed, float* tile) const {
    const int64_t o = d.out();
    Matmul<false>(u.m, dp[s & 1] + d.CarryRow(u.b0, u.it.dir) * o, o, packed, o, tile);
    Rows(s, u, tile);
  }

  // h_prev of direction j's sequences at step s, the left operand of its weight gradients:
  // rows of h0 (stride out) or of hs (stride k*out); with bf16 rounded into `buffer` (B, out).
  const float* HPrev(int64_t s, int64_t j, float* buffer, int64_t* ldh) const {
    const int64_t h = d.out();
    const float* hprev = s == 0 ? h0 + d.CarryRow(0, j) * h
                                : hs + (d.Time(s - 1, j) * d.rows + d.Row(0, j)) * h;
    *ldh = s == 0 ? h : d.dirs * h;
    if (!d.bf16) return hprev;
    for (int64_t b = 0; b < d.batch; ++b) RoundBf16(buffer + b * h, hprev + b * *ldh, h);
    *ldh = h;
    return buffer;
  }

  // A thread's bfloat16 operands of the dot-product kernel for step s's weight gradients of one
  // direction, with the batch as K, its rows interleaved in pairs (PairUp): h_prev
  // (Pairs(B), out, 2), x_s (Pairs(B), D, 2), with a projection dp_s (Pairs(B), P, 2); pairs:
  // (Pairs(B), 32, 2) for the item's right operand.
  struct Interleaved {
    uint16_t *hprev, *x, *dp, *pairs;
  };

  // Fills t for step s, direction j.
  void Interleave(int64_t s, int64_t j, const Interleaved& t) const {
    const int64_t o = d.out(), in = d.input, time = d.Time(s, j);
    auto h_row = [&](int64_t b) {
      return s == 0 ? h0 + d.CarryRow(b, j) * o
                    : hs + (d.Time(s - 1, j) * d.rows + d.Row(b, j)) * o;
    };
    auto x_row = [&](int64_t b) { return xs + (time * d.batch + b) * in; };
    auto dp_row = [&](int64_t b) { return dp[s & 1] + d.CarryRow(b, j) * o; };
    for (int64_t b = 0; b < d.batch; b += 2) {
      const bool odd = b + 1 < d.batch;
      PairUp(h_row(b), odd ? h_row(b + 1) : nullptr, o, t.hprev + b * o);
      PairUp(x_row(b), odd ? x_row(b + 1) : nullptr, in, t.x + b * in);
      if (d.proj != 0) PairUp(dp_row(b), odd ? dp_row(b + 1) : nullptr, o, t.dp + b * o);
    }
  }

  // Adds step s's part to an item's weight and bias gradients, sum_b [h_prev | x_s]^T dg_s,
  // hprev as HPrev gives it. grads: the item's (G, out + D, 32) panels of [dW_hh | dW_ih]^T
  // (row kk < out: unit kk of h, then input feature kk - out; column c: gate row g*H + u0 + c),
  // its bias sums (2, G, 32), b_ih's then b_hh's, then with a projection the (P, 32) panel of
  // dW_hr^T (row p: unit p of h; column c: hidden unit u0 + c), sum_b dp_s^T m_s. gather:
  // (2, B, 32) scratch for the item's columns of dg_s. With bf16 the bias sums take dg_s as it
  // is, the matmuls dg_s rounded, and the item's columns of dgx are left rounded too, for the
  // input's gradient; with t (bf16 on the dot-product kernel) the matmuls take t's operands
  // instead of hprev and x.
  void AddWeights(int64_t s, const Item& it, const float* hprev, int64_t ldh, float* grads,
                  float* gather, const Interleaved* t) const {
    const int64_t h = d.hidden, o = d.out(), in = d.input, gh = d.gh(), j = it.dir;
    const int64_t time = d.Time(s, j), batch = d.batch;
    const bool gru = d.cell == kGru;
    const float* x = xs + time * batch * in;  // x_s: rows of xs
    float* bias_ih = grads + d.gates * (o + in) * kPanel;
    float* bias_hh = bias_ih + d.gates * kPanel;
    for (int64_t g = 0; g < d.gates; ++g) {
      // gate g's columns: dgx's, and for the recurrent half GRU's dgh (n's differs), zero-padded
      const bool apart = gru && g == 2;
      float *gx = gather, *gr = apart ? gather + batch * kPanel : gather;
      for (int64_t b = 0; b < batch; ++b) {
        Gather(gx + b * kPanel, dgx + (time * d.rows + d.Row(b, j)) * gh + g * h + it.u0, it.nu);
        if (apart) {
          Gather(gr + b * kPanel, dgh[s & 1] + d.CarryRow(b, j) * gh + g * h + it.u0, it.nu);
        }
      }
      for (int v = 0; v < kPanel; v += kLanes) {  // bias sums: b_hh's differ only where gr does
        vf sx = Load(bias_ih + g * kPanel + v), sr = Load(bias_hh + g * kPanel + v);
        for (int64_t b = 0; b < batch; ++b) sx += Load(gx + b * kPanel + v);
        if (apart) {
          for (int64_t b = 0; b < batch; ++b) sr += Load(gr + b * kPanel + v);
        } else {
          sr = sx;
        }
        Store(bias_ih + g * kPanel + v, sx);
        Store(bias_hh + g * kPanel + v, sr);
      }
      if (d.bf16) {
        RoundBf16(gather, gather, (apart ? 2 : 1) * batch * kPanel);
        for (int64_t b = 0; b < batch; ++b) {
          Put(dgx + (time * d.rows + d.Row(b, j)) * gh + g * h + it.u0, gx + b * kPanel, it.nu);
        }
      }
      float* panel = grads + g * (o + in) * kPanel;
#ifdef JRNN_DOT
      if (t != nullptr) {
        PairRows(gr, batch, t->pairs);
        DotMatmul<true>(o, t->hprev, 2, t->pairs, Pairs(batch), panel, 2 * o);
        if (gr != gx) PairRows(gx, batch, t->pairs);
        DotMatmul<true>(in, t->x, 2, t->pairs, Pairs(batch), panel + o * kPanel, 2 * in);
        continue;
      }
#endif
      Matmul<true, true>(o, hprev, ldh, gr, batch, panel);
      Matmul<true, true>(in, x, in, gx, batch, panel + o * kPanel);
    }
    if (d.proj == 0) return;
    for (int64_t b = 0; b < batch; ++b) {  // the item's columns of m_s, rounded with bf16
      Gather(gather + b * kPanel, ms + (time * d.rows + d.Row(b, j)) * h + it.u0, it.nu);
    }
    float* hr = bias_hh + d.gates * kPanel;
#ifdef JRNN_DOT
    if (t != nullptr) {
      PairRows(gather, batch, t->pairs);
      return DotMatmul<true>(o, t->dp, 2, t->pairs, Pairs(batch), hr, 2 * o);
    }
#endif
    Matmul<true, true>(o, dp[s & 1] + d.CarryRow(0, j) * o, o, gather, batch, hr);
  }

  // Writes an item's weight and bias gradients (AddWeights' grads) into the outputs.
  void Unpack(const Item& it, const float* grads) const {
    const int64_t h = d.hidden, o = d.out(), in = d.input, gh = d.gh();
    const float* bias_ih = grads + d.gates * (o + in) * kPanel;
    const float* bias_hh = bias_ih + d.gates * kPanel;
    for (int64_t g = 0; g < d.gates; ++g) {
      const float* panel = grads + g * (o + in) * kPanel;
      for (int64_t c = 0; c < it.nu; ++c) {
        const int64_t n = it.dir * gh + g * h + it.u0 + c;
        for (int64_t kk = 0; kk < o; ++kk) dw_hh[n * o + kk] = panel[kk * kPanel + c];
        for (int64_t kk = 0; kk < in; ++kk) dw_ih[n * in + kk] = panel[(o + kk) * kPanel + c];
        db_ih[n] = bias_ih[g * kPanel + c];
        db_hh[n] = bias_hh[g * kPanel + c];
      }
    }
    const float* hr = bias_hh + d.gates * kPanel;
    for (int64_t p = 0; p < d.proj; ++p) {
      for (int64_t c = 0; c < it.nu; ++c) {
        dw_hr[(it.dir * d.proj + p) * h + it.u0 + c] = hr[p * kPanel + c];
      }
    }
  }

  // tile = the unit's rows of dgh_s @ its panel of w (packed: PackBackward; with dgm16 paired:
  // the same in pairs).
  void RecurrentMatmul(int64_t s, const Unit& u, const float* packed, const uint16_t* paired,
                       float* tile) const {
    const int64_t gh = d.gh(), j = u.it.dir;
#ifdef JRNN_DOT
    if (dgm16[0] != nullptr) {
      const int64_t lda = 2 * Pairs(gh);
      const uint16_t* a = dgm16[s & 1] + d.CarryRow(u.b0, j) * lda;
      return DotMatmul<false>(u.m, a, lda, paired, Pairs(gh), tile);
    }
#endif
    // the unit's rows of dgh: with bf16 the rounded scratch (k*B, G*H), for GRU its own
    // scratch (k*B, G*H), else dgx (T, R, G*H)
    const bool scratch = d.cell == kGru || dgm[0] != nullptr;
    const float* rec = dgm[0] != nullptr ? dgm[s & 1] : dgh[s & 1];
    const float* a = scratch ? rec + d.CarryRow(u.b0, j) * gh
                             : dgx + (d.Time(s, j) * d.rows + d.Row(u.b0, j)) * gh;
    Matmul<false>(u.m, a, scratch ? gh : d.dirs * gh, packed, gh, tile);
  }

  // Adds the recurrent matmul's part, dgh_s @ w, to the unit's block of dh (a unit over the
  // units of h: with a projection its P, else its H).
  void AddRecurrent(int64_t s, const Unit& u, const float* packed, const uint16_t* paired,
                    float* tile) const {
    const int64_t h = d.out(), nu = u.it.nu, j = u.it.dir;
    RecurrentMatmul(s, u, packed, paired, tile);
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

// The backward loop over time, from the last step to the first.
void RunBackward(const Backward& backward) {
  BackwardSteps bw{backward};
  const Dims& d = bw.d;
  const int64_t T = d.steps, o = d.out(), gh = d.gh();
  const bool projected = d.proj != 0;
  // with bf16 the recurrent half's cotangents rounded, for the dot-product kernel as bfloat16s
  // with the weights in pairs
  const bool dot = kDot && d.bf16;
  Floats rounded = Allocate(d.bf16 && !dot ? 2 * d.rows * gh : 1);
  Halves rounded16 = AllocateHalves(dot ? 2 * d.rows * 2 * Pairs(gh) : 1);
  for (int parity = 0; d.bf16 && parity < 2; ++parity) {
    if (dot) {
      bw.dgm16[parity] = rounded16.get() + parity * d.rows * 2 * Pairs(gh);
    } else {
      bw.dgm[parity] = rounded.get() + parity * d.rows * gh;
    }
  }
  // Step t's matmul and step t - 1's gate math of a unit go together: the gate math needs the
  // unit's block of dh, which the matmul has just completed. With a projection the matmul's
  // units are over the P units of h, the gate math's over the H units of m, and dh goes
  // through dp = dh @ W_hr (ProjectBack, then ProjectedRows, after a barrier).
  const int64_t items = d.dirs * d.panels();  // of the gates' columns: weight gradient owners
  const int64_t recurrent = d.dirs * Dims::Panels(o), per_item = d.gh() * kPanel;
  const int64_t per_proj = d.proj * kPanel;
  const int64_t units = Units(d), recurrent_units = Units(d, o);
  const int64_t per_grads = Grads(d), per_gather = 2 * d.batch * kPanel;
  Team team(std::max(units, recurrent_units), Cores(d));
  const int64_t per_paired = dot ? Pairs(gh) * 2 * kPanel : 0;
  Floats packed = Allocate(dot ? 1 : recurrent * per_item);
  Halves paired = AllocateHalves(recurrent * per_paired);
  Floats packed_hr = Allocate(projected ? items * per_proj : 1);
  Floats grads = Allocate(items * per_grads);
  Floats tiles = Allocate(team.threads() * kUnitRows * kPanel);
  Floats gathered = Allocate(team.threads() * per_gather);
  const int64_t per_hprev = d.bf16 && !dot ? d.batch * o : 0;
  Floats hprevs = Allocate(team.threads() * per_hprev);
  const int64_t be = 2 * Pairs(d.batch);  // bfloat16s of a K of the batch
  const int64_t per_interleaved = dot ? (2 * o + d.input + kPanel) * be : 0;
  Halves interleaved = AllocateHalves(team.threads() * per_interleaved);
  team.Run([&](int me) {
    // an item's weight gradients are its owner's: the worker that packs its weights
    for (int64_t i = me; i < items; i += team.threads()) {
      if (projected) {
        PackBackward(bw.w_hr, d.proj, d.hidden, ItemAt(d, i), packed_hr.get() + i * per_proj);
      }
      std::memset(grads.get() + i * per_grads, 0, per_grads * sizeof(float));
    }
    for (int64_t i = me; i < recurrent; i += team.threads()) {
      const Item it = ItemAt(d, i, o);
      if (!dot) {
        PackBackward(bw.w, gh, o, it, packed.get() + i * per_item);
        continue;
      }
      const float* w = bw.w + it.dir * gh * o + it.u0;
      PackPairs(gh, [&](int64_t n, int64_t c) { return c < it.nu ? w[n * o + c] : 0.0f; },
                paired.get() + i * per_paired);
    }
    team.Sync();
    float* tile = tiles.get() + me * kUnitRows * kPanel;
    float* gather = gathered.get() + me * per_gather;
    uint16_t* mine = interleaved.get() + me * per_interleaved;
    const BackwardSteps::Interleaved own{mine, mine + o * be, mine + (o + d.input) * be,
                                         mine + (2 * o + d.input) * be};
    int64_t step = 0;
    // the gate math of step s, for every unit: with a projection after dp (ProjectBack)
    auto gate_math = [&](int64_t s) {
      team.ForEach(me, step++, units, [&](int64_t index) {
        const Unit u = UnitAt(d, index);
        if (projected) {
          bw.ProjectedRows(s, u, packed_hr.get() + u.it.index * per_proj, tile);
        } else {
          bw.Rows(s, u);
        }
      });
      team.Sync();
    };
    if (projected) {
      team.ForEach(me, step++, recurrent_units,
                   [&](int64_t index) { bw.ProjectBack(T - 1, UnitAt(d, index, o)); });
      team.Sync();
    }
    gate_math(T - 1);
    for (int64_t t = T - 1; t >= 0; --t) {
      // first the weight gradients of step t, owner by owner, then the shared units, which
      // even out what the owners' shares leave uneven
      const float* hprev = nullptr;
      int64_t ldh = 0;
      for (int64_t i = me, dir = -1; i < items; i += team.threads()) {
        const Item it = ItemAt(d, i);
        if (it.dir != dir && dot) bw.Interleave(t, dir = it.dir, own);
        if (it.dir != dir) hprev = bw.HPrev(t, dir = it.dir, hprevs.get() + me * per_hprev, &ldh);
        bw.AddWeights(t, it, hprev, ldh, grads.get() + i * per_grads, gather, dot ? &own : nullptr);
      }
      team.ForEach(me, step++, recurrent_units, [&](int64_t index) {
        const Unit u = UnitAt(d, index, o);
        bw.AddRecurrent(t, u, packed.get() + u.it.index * per_item,
                        paired.get() + u.it.index * per_paired, tile);
        if (t == 0) return;
        if (projected) {
          bw.ProjectBack(t - 1, u);
        } else {
          bw.Rows(t - 1, u);
        }
      });
      team.Sync();
      if (projected && t > 0) gate_math(t - 1);
    }
    for (int64_t i = me; i < items; i += team.threads()) {
      bw.Unpack(ItemAt(d, i), grads.get() + i * per_grads);
    }
  });
}
