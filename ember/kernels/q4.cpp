// Native CPU kernels for int4/int8 weight-only inference (AVX-512 VNNI + F16C, OpenMP).
//
// Weights keep GGUF's own block codes. A Q4_1 block covers 32 inputs of one row: fp16 d,
// fp16 m and 16 bytes whose low nibbles are inputs 0..15 and high nibbles 16..31; the value
// is q*d + m (Q4_0 is the same with m = -8d). Q8_0 blocks: fp16 d and 32 int8, value q*d.
// Here a row is stored as three arrays: qs (K/2 bytes, blocks in GGUF order), d and m
// (K/32 fp16 each). Q8_0 rows store their int8 codes pair-permuted (see below).
//
// Activations are quantized per block of 32 to int8 (d = max|x|/127, as llama.cpp's
// q8_1), so a block dot product is an integer dot (vpdpbusd) times d_w*d_x, plus m_w times
// d_x*sum(q_x). Two blocks fill one 512-bit register: the 32 code bytes of blocks b, b+1
// unpack to [lo_b, lo_b1, hi_b, hi_b1] (16 bytes each), so activations are stored in that
// "pair-permuted" order and int32 lanes 0-3, 8-11 belong to block b, 4-7, 12-15 to b+1.
//
// The result of one (row, output) dot product never depends on the thread count, nor on how
// many rows are computed together as long as they are fewer than GEMM_ROWS (batched decode
// equals one-by-one decode bit for bit) or all GEMM_ROWS or more (the GEMM path, prefill):
// the two paths sum in different orders, so they agree to float rounding only.

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

namespace {

// ---- activation quantization ----------------------------------------------------------

// Position of input i of a K-long row in pair-permuted order.
inline int perm_index(int i) {
  int b = i >> 5, off = i & 15, half = (i >> 4) & 1;
  return (b >> 1) * 64 + half * 32 + (b & 1) * 16 + off;
}

// x (K floats, K % 64 == 0) -> xq (K int8, pair-permuted), dx and sx (K/32 floats).
void quantize_row(const float* x, int K, int8_t* xq, float* dx, float* sx) {
  for (int b = 0; b < K / 32; b++) {
    __m512 v0 = _mm512_loadu_ps(x + b * 32), v1 = _mm512_loadu_ps(x + b * 32 + 16);
    __m512 a = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
    float amax = _mm512_reduce_max_ps(a);
    float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
    __m512 s = _mm512_set1_ps(id);
    // cvtps rounds to nearest even (the MXCSR default), as torch.round does.
    __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, s));
    __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, s));
    int8_t* dst = xq + (b >> 1) * 64 + (b & 1) * 16;
    _mm_storeu_si128((__m128i*)dst, _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128((__m128i*)(dst + 32), _mm512_cvtsepi32_epi8(q1));
    dx[b] = d;
    sx[b] = d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
  }
}

// Lane pattern of the scale vector for pair j of a 16-block chunk.
inline __m512i pair_index(int j) {
  int a = 2 * j, b = 2 * j + 1;
  return _mm512_set_epi32(b, b, b, b, a, a, a, a, b, b, b, b, a, a, a, a);
}

// ---- weights --------------------------------------------------------------------------

struct Q4 {  // N rows of K inputs
  const uint8_t* qs;
  const uint16_t* d;
  const uint16_t* m;
  int N, K;
};

struct Q8 {
  const int8_t* qs;
  const uint16_t* d;
  int N, K;
};

struct Act {  // M quantized activation rows
  const int8_t* q;
  const float* d;
  const float* s;
  int K;
};

// Dot products of one Q4 row with MT activation rows (MT <= 4), added to out[0..MT).
template <int MT>
inline void dot_q4(const Q4& w, int n, const Act& a, int m0, float* out) {
  const int nb = w.K / 32;
  const uint8_t* qs = w.qs + (size_t)n * (w.K / 2);
  const uint16_t* dp = w.d + (size_t)n * nb;
  const uint16_t* mp = w.m + (size_t)n * nb;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[MT], macc[MT];
  for (int t = 0; t < MT; t++) acc[t] = macc[t] = _mm512_setzero_ps();
  for (int c = 0; c < nb; c += 16) {
    const int cnt = nb - c < 16 ? nb - c : 16;
    const __mmask16 mask = (__mmask16)((1u << cnt) - 1);
    const __m512 dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, dp + c));
    const __m512 mw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, mp + c));
    __m512 sc[MT];
    for (int t = 0; t < MT; t++) {
      const size_t r = (size_t)(m0 + t) * nb + c;
      sc[t] = _mm512_mul_ps(dw, _mm512_maskz_loadu_ps(mask, a.d + r));
      macc[t] = _mm512_fmadd_ps(mw, _mm512_maskz_loadu_ps(mask, a.s + r), macc[t]);
    }
    for (int j = 0; j < cnt / 2; j++) {
      const __m256i L = _mm256_loadu_si256((const __m256i*)(qs + (size_t)(c + 2 * j) * 16));
      const __m512i wv = _mm512_and_si512(
          _mm512_inserti64x4(_mm512_castsi256_si512(L), _mm256_srli_epi16(L, 4), 1), low);
      const __m512i idx = pair_index(j);
      for (int t = 0; t < MT; t++) {
        const int8_t* xp = a.q + (size_t)(m0 + t) * a.K + (size_t)(c + 2 * j) * 32;
        const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, _mm512_loadu_si512(xp));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(idx, sc[t]), acc[t]);
      }
    }
  }
  for (int t = 0; t < MT; t++) out[t] += _mm512_reduce_add_ps(acc[t]) + _mm512_reduce_add_ps(macc[t]);
}

// Q8_0 row (codes pair-permuted) with MT activation rows: signed x signed via |w| and
// x negated where w < 0 (vpdpbusd multiplies unsigned by signed bytes).
template <int MT>
inline void dot_q8(const Q8& w, int n, const Act& a, int m0, float* out) {
  const int nb = w.K / 32;
  const int8_t* qs = w.qs + (size_t)n * w.K;
  const uint16_t* dp = w.d + (size_t)n * nb;
  __m512 acc[MT];
  for (int t = 0; t < MT; t++) acc[t] = _mm512_setzero_ps();
  for (int c = 0; c < nb; c += 16) {
    const int cnt = nb - c < 16 ? nb - c : 16;
    const __mmask16 mask = (__mmask16)((1u << cnt) - 1);
    const __m512 dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, dp + c));
    __m512 sc[MT];
    for (int t = 0; t < MT; t++)
      sc[t] = _mm512_mul_ps(dw, _mm512_maskz_loadu_ps(mask, a.d + (size_t)(m0 + t) * nb + c));
    for (int j = 0; j < cnt / 2; j++) {
      const __m512i wv = _mm512_loadu_si512(qs + (size_t)(c + 2 * j) * 32);
      const __m512i aw = _mm512_abs_epi8(wv);
      const __mmask64 neg = _mm512_movepi8_mask(wv);
      const __m512i idx = pair_index(j);
      for (int t = 0; t < MT; t++) {
        const __m512i x = _mm512_loadu_si512(a.q + (size_t)(m0 + t) * a.K + (size_t)(c + 2 * j) * 32);
        const __m512i xs = _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x);
        const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), aw, xs);
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(idx, sc[t]), acc[t]);
      }
    }
  }
  for (int t = 0; t < MT; t++) out[t] += _mm512_reduce_add_ps(acc[t]);
}

// ---- many rows: a GEMM over panels of 16 weight rows -----------------------------------
// A panel's codes are repacked (on the fly, into a per-thread buffer) so that one vpdpbusd
// computes 16 output rows at once: int32 lane r holds 4 consecutive codes of weight row r,
// and 4 activation bytes are broadcast to all lanes. Per 32-input block that gives each
// lane the exact integer dot; then acc += idot * (d_w * d_x) (+ m_w * s_x for Q4), blocks in
// order. A (row, output) result is thus a fixed sequence of operations whatever M, the tile
// it shares or the thread count; it rounds differently from the dot path above, which rows
// fewer than GEMM_ROWS take.

// From this many activation rows on: the GEMM. It beats the dot path from ~8 rows (1.6x at 8),
// but decode batches below 16 rows stay on the dot path, bit for bit equal to one-by-one decode.
constexpr int GEMM_ROWS = 16;
constexpr int GEMM_TILE = 8;                // activation rows sharing each packed weight load

struct alignas(64) Packed {  // one block (32 inputs) of a 16-row panel
  __m512i q[8];   // codes: lane r of q[g] = row r's inputs 4g..4g+3 (g >= 4: 16 + 4(g-4)..)
  __m512i init;   // the integer dot's start: 0 (Q4), -128 * sum(codes) (Q8: x + 128 unsigned)
  __m512 dw, mw;  // the rows' scales and (Q4) minimums
};

// Offset of inputs 4g..4g+3 of block b in a pair-permuted row.
inline size_t group_offset(int b, int g) {
  return (size_t)(b >> 1) * 64 + (b & 1) * 16 + (g >> 2) * 32 + (g & 3) * 4;
}

inline __m512i lane_index(int stride) {  // r * stride in lane r
  return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(stride));
}

// fp16 values src[r * stride] for r < rows (0 beyond) as 16 floats.
inline __m512 gather_fp16(const uint16_t* src, size_t stride, int rows) {
  alignas(32) uint16_t h[16] = {0};
  for (int r = 0; r < rows; r++) h[r] = src[r * stride];
  return _mm512_cvtph_ps(_mm256_load_si256((const __m256i*)h));
}

void pack_panel(const Q4& w, int n0, int rows, Packed* pk) {
  const int nb = w.K / 32;
  const __mmask16 mask = (__mmask16)((1u << rows) - 1);
  const __m512i idx = lane_index(w.K / 2), low = _mm512_set1_epi8(0x0F);
  const uint8_t* base = w.qs + (size_t)n0 * (w.K / 2);
  for (int b = 0; b < nb; b++) {
    for (int j = 0; j < 4; j++) {
      const __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, idx, base + b * 16 + 4 * j, 1);
      pk[b].q[j] = _mm512_and_si512(v, low);
      pk[b].q[4 + j] = _mm512_and_si512(_mm512_srli_epi32(v, 4), low);
    }
    pk[b].init = _mm512_setzero_si512();
    pk[b].dw = gather_fp16(w.d + (size_t)n0 * nb + b, nb, rows);
    pk[b].mw = gather_fp16(w.m + (size_t)n0 * nb + b, nb, rows);
  }
}

void pack_panel(const Q8& w, int n0, int rows, Packed* pk) {
  const int nb = w.K / 32;
  const __mmask16 mask = (__mmask16)((1u << rows) - 1);
  const __m512i idx = lane_index(w.K), ones = _mm512_set1_epi8(1);
  const int8_t* base = w.qs + (size_t)n0 * w.K;
  for (int b = 0; b < nb; b++) {
    __m512i sum = _mm512_setzero_si512();
    for (int g = 0; g < 8; g++) {
      pk[b].q[g] = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, idx, base + group_offset(b, g), 1);
      sum = _mm512_dpbusd_epi32(sum, ones, pk[b].q[g]);
    }
    pk[b].init = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sum, 7));
    pk[b].dw = gather_fp16(w.d + (size_t)n0 * nb + b, nb, rows);
    pk[b].mw = _mm512_setzero_ps();
  }
}

// Rows m0..m0+MT-1 of y, outputs n0..n0+15 (mask), from a packed panel.
template <bool SIGNED, int MT>
void gemm_tile(const Packed* pk, int nb, const Act& a, int m0, float* y, int N, int n0, __mmask16 mask,
               bool accumulate) {
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  __m512 acc[MT];
  for (int t = 0; t < MT; t++) acc[t] = _mm512_setzero_ps();
  for (int b = 0; b < nb; b++) {
    const Packed& p = pk[b];
    __m512i ia[MT];
    for (int t = 0; t < MT; t++) ia[t] = p.init;
    for (int g = 0; g < 8; g++) {
      const size_t off = group_offset(b, g);
      for (int t = 0; t < MT; t++) {
        const __m512i x = _mm512_broadcastd_epi32(_mm_loadu_si32(a.q + (size_t)(m0 + t) * a.K + off));
        ia[t] = SIGNED ? _mm512_dpbusd_epi32(ia[t], _mm512_xor_si512(x, flip), p.q[g])
                       : _mm512_dpbusd_epi32(ia[t], p.q[g], x);
      }
    }
    for (int t = 0; t < MT; t++) {
      const size_t r = (size_t)(m0 + t) * nb + b;
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[t]), _mm512_mul_ps(p.dw, _mm512_set1_ps(a.d[r])), acc[t]);
      if (!SIGNED) acc[t] = _mm512_fmadd_ps(p.mw, _mm512_set1_ps(a.s[r]), acc[t]);
    }
  }
  for (int t = 0; t < MT; t++) {
    float* dst = y + (size_t)(m0 + t) * N + n0;
    const __m512 v = accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), acc[t]) : acc[t];
    _mm512_mask_storeu_ps(dst, mask, v);
  }
}

template <bool SIGNED, int MT = GEMM_TILE>
void gemm_rest(const Packed* pk, int nb, const Act& a, int m0, int mt, float* y, int N, int n0, __mmask16 mask,
               bool accumulate) {
  if constexpr (MT > 0) {
    if (mt < MT) return gemm_rest<SIGNED, MT - 1>(pk, nb, a, m0, mt, y, N, n0, mask, accumulate);
    gemm_tile<SIGNED, MT>(pk, nb, a, m0, y, N, n0, mask, accumulate);
  }
}

// A per-thread buffer of at least `bytes`, 64-byte aligned (kept for the thread's life).
void* scratch(size_t bytes) {
  static thread_local struct Buf {
    void* p = nullptr;
    size_t n = 0;
    ~Buf() { free(p); }
  } buf;
  if (bytes > buf.n) {
    free(buf.p);
    buf.n = (bytes + 4095) & ~(size_t)4095;
    buf.p = aligned_alloc(64, buf.n);
  }
  return buf.p;
}

// Outputs n0..n1-1 of y (M, N) (+)= a (M, K) @ W^T, panel by panel.
template <typename W>
void gemm_range(const W& w, const Act& a, int M, float* y, bool accumulate, int n0, int n1) {
  constexpr bool SIGNED = std::is_same<W, Q8>::value;  // Q8 codes are signed
  const int nb = w.K / 32;
  Packed* pk = (Packed*)scratch(sizeof(Packed) * nb);
  for (int p = n0; p < n1; p += 16) {
    const int rows = n1 - p < 16 ? n1 - p : 16;
    const __mmask16 mask = (__mmask16)((1u << rows) - 1);
    pack_panel(w, p, rows, pk);
    for (int m0 = 0; m0 < M; m0 += GEMM_TILE) {
      const int mt = M - m0 < GEMM_TILE ? M - m0 : GEMM_TILE;
      gemm_rest<SIGNED>(pk, nb, a, m0, mt, y, w.N, p, mask, accumulate);
    }
  }
}

// Rows n0..n1-1 of y (M, N) (+)= a (M, K) @ W^T.
template <typename W, typename F>
inline void rows_range(const W& w, const Act& a, int M, float* y, bool accumulate, F dot4, int n0, int n1) {
  if (M >= GEMM_ROWS) return gemm_range(w, a, M, y, accumulate, n0, n1);
  for (int n = n0; n < n1; n++) {
    for (int m0 = 0; m0 < M; m0 += 4) {
      float out[4] = {0, 0, 0, 0};
      dot4(w, n, a, m0, M - m0 < 4 ? M - m0 : 4, out);
      for (int t = 0; t < 4 && m0 + t < M; t++) {
        float* dst = y + (size_t)(m0 + t) * w.N + n;
        *dst = accumulate ? *dst + out[t] : out[t];
      }
    }
  }
}

// y (M, N) (+)= a (M, K) @ W^T; an orphaned `omp for` over output rows (implicit barrier):
// call it inside a parallel region (every thread), or from one thread alone.
template <typename W, typename F>
void matmul_rows(const W& w, const Act& a, int M, float* y, bool accumulate, F dot4) {
  const int chunk = 16;  // rows per scheduling unit
#pragma omp for schedule(static)
  for (int c = 0; c < (w.N + chunk - 1) / chunk; c++)
    rows_range(w, a, M, y, accumulate, dot4, c * chunk, (c + 1) * chunk < w.N ? (c + 1) * chunk : w.N);
}

// Each row's sum is computed the same way whatever mt is: tiles only share weight loads.
inline void q4_dot4(const Q4& w, int n, const Act& a, int m0, int mt, float* out) {
  (mt == 4 ? dot_q4<4> : mt == 3 ? dot_q4<3> : mt == 2 ? dot_q4<2> : dot_q4<1>)(w, n, a, m0, out);
}

inline void q8_dot4(const Q8& w, int n, const Act& a, int m0, int mt, float* out) {
  (mt == 4 ? dot_q8<4> : mt == 3 ? dot_q8<3> : mt == 2 ? dot_q8<2> : dot_q8<1>)(w, n, a, m0, out);
}

// fp32 -> bf16, rounding to nearest even (as torch's .to(torch.bfloat16); no NaNs here).
inline __m256i to_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

}  // namespace

#include "decode_step.inc"

extern "C" {

int ember_kernels_version() { return 1; }

// Activation rows from which matmuls take the GEMM path.
int ember_gemm_rows() { return GEMM_ROWS; }

// Quantize M rows of x (M, K) into caller buffers (for tests: the activation format).
void ember_quantize_q8(const float* x, int M, int K, int8_t* xq, float* dx, float* sx) {
  for (int m = 0; m < M; m++)
    quantize_row(x + (size_t)m * K, K, xq + (size_t)m * K, dx + (size_t)m * (K / 32), sx + (size_t)m * (K / 32));
}

// y (M, N) = x (M, K) @ W^T for a Q4 (kind 0) or Q8_0 (kind 1) weight; K % 64 == 0.
void ember_matmul(int kind, const void* qs, const uint16_t* d, const uint16_t* m, int N, int K,
                  const float* x, int M, float* y, int threads) {
  const int nb = K / 32;
  int8_t* xq = (int8_t*)malloc((size_t)M * K);
  float* dx = (float*)malloc(sizeof(float) * (size_t)M * nb);
  float* sx = (float*)malloc(sizeof(float) * (size_t)M * nb);
#pragma omp parallel for num_threads(threads) schedule(static) if (M > 8)
  for (int r = 0; r < M; r++)
    quantize_row(x + (size_t)r * K, K, xq + (size_t)r * K, dx + (size_t)r * nb, sx + (size_t)r * nb);
  Act a{xq, dx, sx, K};
#pragma omp parallel num_threads(threads)
  {
    if (kind == 0) matmul_rows(Q4{(const uint8_t*)qs, d, m, N, K}, a, M, y, false, q4_dot4);
    else matmul_rows(Q8{(const int8_t*)qs, d, N, K}, a, M, y, false, q8_dot4);
  }
  free(xq);
  free(dx);
  free(sx);
}

// Dequantize a Q4 weight to bf16 (N, K), rows in parallel: the prefill path the GEMM replaced,
// kept as bench/quant_matmul.py --gemm's baseline.
void ember_dequant_q4_bf16(const uint8_t* qs, const uint16_t* d, const uint16_t* m, int N, int K,
                           uint16_t* out, int threads) {
  const int nb = K / 32;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int n = 0; n < N; n++) {
    for (int b = 0; b < nb; b++) {
      const uint8_t* q = qs + (size_t)n * (K / 2) + b * 16;
      const __m512 dv = _mm512_set1_ps(_cvtsh_ss(d[(size_t)n * nb + b]));
      const __m512 mv = _mm512_set1_ps(_cvtsh_ss(m[(size_t)n * nb + b]));
      const __m128i raw = _mm_loadu_si128((const __m128i*)q);
      const __m512i lo = _mm512_cvtepu8_epi32(_mm_and_si128(raw, _mm_set1_epi8(0x0F)));
      const __m512i hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F)));
      const __m512 w0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), dv, mv);
      const __m512 w1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), dv, mv);
      _mm256_storeu_si256((__m256i*)(out + (size_t)n * K + b * 32), to_bf16(w0));
      _mm256_storeu_si256((__m256i*)(out + (size_t)n * K + b * 32 + 16), to_bf16(w1));
    }
  }
}

}  // extern "C"
