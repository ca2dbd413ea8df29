/* sliver's fused kernel for wq_linear (weight-only quantized linear layers):
 *
 *   y[m, o] = sum_k x[m, k] * (code[o, k] - zero[o, g]) * scale[o, g]  + outliers + bias[o]
 *
 * with float32 activations and bits-bit weight codes, unpacked in registers: no
 * dequantized weight matrix is ever written.  Exported as a TVM-FFI packed function
 * (`sliver_wq_linear`, called with relax.call_dps_packed and linked into the artifact's
 * library) and as a plain C function (`sliver_wq_linear_c`, serial) for tests and benchmarks.
 *
 * Layout (packed at compile time by backends/tvm/wq_linear.py).  Each output row o of K
 * weights is cut into groups of G weights (G = gcd(K, block), a multiple of 32), each
 * inside one of the op's quantization blocks, so one (scale, zero) pair holds for the
 * whole group: scale float32 [O][K/G], zero uint8 [O][K/G].  A group is a run of chunks
 * of 32 codes:
 *   LAYOUT_NIBBLE (codes of 2..4 bits): 16 bytes per chunk; byte j holds code j in its
 *     low nibble and code j + 16 in its high nibble (the two halves come out of one load
 *     with an AND and a shift, as in llama.cpp's Q4_0 blocks);
 *   LAYOUT_BYTE (5..8 bits): 32 bytes per chunk, one code per byte.
 * Rows are K/2 (nibble) or K (byte) bytes, stored one after another.
 *
 * Arithmetic.  Per group, p = sum_k x[k] * float(code - zero) (the integer difference
 * converted exactly), then acc += p * scale.  Each activation row keeps one accumulator
 * chain per vector of a chunk (a single chain would make a GEMV wait on every FMA's
 * latency), summed at the end.  The sums are the
 * op's reference semantics (dequantize, then x @ W.T) regrouped: they agree with it to
 * float32 rounding (~1e-6 relative), not bit for bit.  The kept float outliers (whose codes are the zero point, so they
 * contribute 0 above) and the bias are added last.
 *
 * Instructions per chunk of 32 codes (nibble layout), chosen by the compiler's macros,
 * which follow the target's flags (Target.gcc_flags):
 *   AVX-512 (F + BW): one 16-byte load, AND, shift + AND, vpsubb of the zero point; per
 *     16 codes vpmovsxbd + vcvtdq2ps, one FMA per activation row (a vpermps lookup in a
 *     16-float table of the group's weights measured slower on Zen 4);
 *   AVX2 + FMA: vpsubb of the zero point, per 8 codes vpmovsxbd + vcvtdq2ps, FMAs;
 *   NEON (aarch64): and / ushr, sub, sxtl / sxtl2 to int16 then int32, scvtf, fmla;
 *   elsewhere scalar C.
 * Up to MT activation rows share each unpacked chunk (prefill: several tokens; decode: 1).
 *
 * Threads.  The output rows o are cut into contiguous slices run on TVM's thread pool
 * (TVMBackendParallelLaunch: TVM_NUM_THREADS threads, the pool of the library's own
 * loops); each row is computed the same way in any slice, so the output does not depend
 * on the thread count.  Small calls run serially (WQ_MIN_WORK).
 *
 * meta int32[W_LEN]: M (activation rows), K, O, G, LAYOUT, NOUT (kept outliers), HAS_BIAS.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__aarch64__)
#include <arm_neon.h>
#elif defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "tvm_abi.h"
#define INLINE static inline __attribute__((always_inline))

enum { W_M, W_K, W_O, W_G, W_LAYOUT, W_NOUT, W_HASBIAS, W_ACT, W_LEN };
enum { WL_NIBBLE = 0, WL_BYTE = 1 };
/* below this many multiply-adds a call runs serially (waking the pool costs microseconds) */
#define WQ_MIN_WORK 65536.0

typedef struct {
  const float* x;
  const uint8_t* w;
  const float* scale;
  const uint8_t* zero;
  const int32_t* index;
  const float* value;
  const float* bias;
  float* out;
  int M, K, O, G, layout, nout, has_bias;
  int act; /* 1: activations quantized to int8 per group of G (the W4A8 path, nibble layout) */
  const int8_t* a8; /* the quantized activations of the row being computed (act = 1), in a8_order */
  const float* asx; /* per group: the activations' scale */
  const int32_t* asum; /* per group: the sum of its int8 activations (the zero point's term) */
} wq_job;

/* ---- decoding one chunk of 32 codes into float vectors of (code - zero) ---- */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define WQ_ISA "avx512"
#define VL 16
#define MT 4
typedef __m512 vf;
typedef struct { __m128i z8; __m512i z32; } zctx;
INLINE zctx make_z(int z, float s) {
  (void)s;
  zctx c;
  c.z8 = _mm_set1_epi8((char)z);
  c.z32 = _mm512_set1_epi32(z);
  return c;
}
INLINE void decode_nibble(const uint8_t* src, const zctx* z, vf* w) {
  const __m128i b = _mm_loadu_si128((const __m128i*)src), m = _mm_set1_epi8(0x0F);
  w[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_sub_epi8(_mm_and_si128(b, m), z->z8)));
  w[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), z->z8)));
}
INLINE void decode_byte(const uint8_t* src, const zctx* z, vf* w) {
  for (int i = 0; i < 2; i++) {
    const __m128i b = _mm_loadu_si128((const __m128i*)(src + 16 * i));
    w[i] = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(b), z->z32));
  }
}
INLINE vf vzero(void) { return _mm512_setzero_ps(); }
INLINE vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
INLINE vf vload(const float* p) { return _mm512_loadu_ps(p); }
INLINE vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
INLINE vf vset1(float s) { return _mm512_set1_ps(s); }
INLINE float vsum(vf a) { return _mm512_reduce_add_ps(a); }
#elif defined(__AVX2__) && defined(__FMA__)
#define WQ_ISA "avx2"
#define VL 8
#define MT 2
typedef __m256 vf;
typedef struct { __m128i z8; __m256i z32; } zctx;
INLINE zctx make_z(int z, float s) {
  (void)s;
  zctx c;
  c.z8 = _mm_set1_epi8((char)z);
  c.z32 = _mm256_set1_epi32(z);
  return c;
}
INLINE void decode_nibble(const uint8_t* src, const zctx* z, vf* w) {
  const __m128i b = _mm_loadu_si128((const __m128i*)src), m = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_sub_epi8(_mm_and_si128(b, m), z->z8); /* codes and zero in 0..15: fits int8 */
  const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), z->z8);
  w[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
  w[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
  w[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
  w[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}
INLINE void decode_byte(const uint8_t* src, const zctx* z, vf* w) {
  for (int i = 0; i < 4; i++) {
    const __m128i b = _mm_loadl_epi64((const __m128i*)(src + 8 * i));
    w[i] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(b), z->z32));
  }
}
INLINE vf vzero(void) { return _mm256_setzero_ps(); }
INLINE vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
INLINE vf vload(const float* p) { return _mm256_loadu_ps(p); }
INLINE vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
INLINE vf vset1(float s) { return _mm256_set1_ps(s); }
INLINE float vsum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#elif defined(__aarch64__)
#define WQ_ISA "neon"
#define VL 4
#define MT 2
typedef float32x4_t vf;
typedef struct { int8x16_t z8; int16x8_t z16; } zctx;
INLINE zctx make_z(int z, float s) {
  (void)s;
  zctx c;
  c.z8 = vdupq_n_s8((int8_t)z);
  c.z16 = vdupq_n_s16((int16_t)z);
  return c;
}
INLINE void widen16(int16x8_t h, vf* w) {
  w[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(h)));
  w[1] = vcvtq_f32_s32(vmovl_high_s16(h));
}
INLINE void decode_nibble(const uint8_t* src, const zctx* z, vf* w) {
  const uint8x16_t b = vld1q_u8(src);
  const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F))), z->z8);
  const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), z->z8);
  widen16(vmovl_s8(vget_low_s8(lo)), w);
  widen16(vmovl_high_s8(lo), w + 2);
  widen16(vmovl_s8(vget_low_s8(hi)), w + 4);
  widen16(vmovl_high_s8(hi), w + 6);
}
INLINE void decode_byte(const uint8_t* src, const zctx* z, vf* w) {
  for (int i = 0; i < 2; i++) {
    const uint8x16_t b = vld1q_u8(src + 16 * i);
    widen16(vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(b))), z->z16), w + 4 * i);
    widen16(vsubq_s16(vreinterpretq_s16_u16(vmovl_high_u8(b)), z->z16), w + 4 * i + 2);
  }
}
INLINE vf vzero(void) { return vdupq_n_f32(0.0f); }
INLINE vf vadd(vf a, vf b) { return vaddq_f32(a, b); }
INLINE vf vload(const float* p) { return vld1q_f32(p); }
INLINE vf vfma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
INLINE vf vset1(float s) { return vdupq_n_f32(s); }
INLINE float vsum(vf a) { return vaddvq_f32(a); }
#else
#define WQ_ISA "scalar"
#define VL 1
#define MT 4
typedef float vf;
typedef struct { int z; } zctx;
INLINE zctx make_z(int z, float s) {
  (void)s;
  zctx c = {z};
  return c;
}
INLINE void decode_nibble(const uint8_t* src, const zctx* z, vf* w) {
  for (int j = 0; j < 16; j++) {
    w[j] = (float)((src[j] & 15) - z->z);
    w[j + 16] = (float)((src[j] >> 4) - z->z);
  }
}
INLINE void decode_byte(const uint8_t* src, const zctx* z, vf* w) {
  for (int j = 0; j < 32; j++) w[j] = (float)(src[j] - z->z);
}
INLINE vf vzero(void) { return 0.0f; }
INLINE vf vadd(vf a, vf b) { return a + b; }
INLINE vf vload(const float* p) { return *p; }
INLINE vf vfma(vf a, vf b, vf c) { return a * b + c; }
INLINE vf vset1(float s) { return s; }
INLINE float vsum(vf a) { return a; }
#endif
#define NV (32 / VL) /* float vectors per chunk of 32 codes */
#define NA NV /* accumulator chains per activation row: one per vector of a chunk */

/* Rows m0 .. m0+mt-1 of the output for weight row o (mt <= MT, a constant at every call
 * site so the accumulators stay in registers).  Each activation row keeps NA independent
 * accumulator chains (one FMA's latency would otherwise bound a GEMV). */
INLINE void row_tile(const wq_job* j, int o, int m0, const int mt, const int layout) {
  const int K = j->K, G = j->G, ngroups = K / G, chunks = G / 32;
  const int rb = layout == WL_NIBBLE ? K / 2 : K, cb = layout == WL_NIBBLE ? 16 : 32;
  const uint8_t* wrow = j->w + (size_t)o * rb;
  const float* x = j->x + (size_t)m0 * K;
  vf acc[MT][NA];
  for (int m = 0; m < mt; m++)
    for (int a = 0; a < NA; a++) acc[m][a] = vzero();
  for (int g = 0; g < ngroups; g++) {
    const float sc = j->scale[(size_t)o * ngroups + g];
    const zctx z = make_z(j->zero[(size_t)o * ngroups + g], sc);
    vf p[MT][NA];
    for (int m = 0; m < mt; m++)
      for (int a = 0; a < NA; a++) p[m][a] = vzero();
    for (int c = 0; c < chunks; c++) {
      const int k = (g * chunks + c) * 32;
      vf w[NV];
      if (layout == WL_NIBBLE)
        decode_nibble(wrow + (size_t)(g * chunks + c) * cb, &z, w);
      else
        decode_byte(wrow + (size_t)(g * chunks + c) * cb, &z, w);
      for (int i = 0; i < NV; i++)
        for (int m = 0; m < mt; m++)
          p[m][i] = vfma(vload(x + (size_t)m * K + k + i * VL), w[i], p[m][i]);
    }
    const vf s = vset1(sc);
    for (int m = 0; m < mt; m++)
      for (int a = 0; a < NA; a++) acc[m][a] = vfma(p[m][a], s, acc[m][a]);
  }
  for (int m = 0; m < mt; m++) {
    vf t = acc[m][0];
    for (int a = 1; a < NA; a++) t = vadd(t, acc[m][a]);
    j->out[(size_t)(m0 + m) * j->O + o] = vsum(t);
  }
}


/* ---- int8 activations (W4A8): integer dot products per group ----
 *
 * With meta ACT = 1 each activation row is quantized once per call, per group of G
 * (the weight's group): a = rint(x * 127 / max|x|) clamped to [-127, 127], scale
 * sx = max|x| / 127 (a group of zeros: all 0, sx = 0), the op's reference semantics
 * (wq_linear act_block).  Then per output row and group, D = sum (code * a) in exact
 * int32 arithmetic (codes unsigned 0..15, activations signed), and
 *   y = sum_g scale_g * sx_g * (D_g - zero_g * sum_g a)
 * (the zero point's term from the per-group activation sums, computed once per call,
 * subtracted in int32 arithmetic: the integer part is exact).
 * Products: AVX-512 VNNI vpdpbusd (64 codes per instruction when G is a multiple of 64,
 * or G = 32 on rows of a multiple of 64 with a scale per half of the lanes: the
 * activations are stored in the order the two chunks' nibbles come out of one 32-byte
 * load), else vpmaddubsw + vpmaddwd (AVX-512BW / AVX2; no saturation: 2 * 15 *
 * 127 < 2^15); NEON sdot (dotprod) or smull + sadalp; scalar C elsewhere.  Output rows
 * are computed four at a time (independent chains). */
#define RT 4
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define A8_PAIRS 1 /* activations of a group of a multiple of 64 stored per pair of chunks */
#else
#define A8_PAIRS 0
#endif

/* position of code k (0..63) of a pair of chunks in the activation order of a pair */
INLINE int a8_pair_pos(int k) {
  const int c = k >> 5, i = k & 31; /* chunk c of the pair, code i of the chunk */
  return (i < 16 ? 0 : 32) + c * 16 + (i & 15);
}

/* quantize one activation row x[K] into a8 (order: pairs of chunks when G % 64 == 0 on
 * AVX-512, else natural), sx[K/G], asum[K/G] */
/* whether a row's activations are stored per pair of chunks (AVX-512: groups of a
 * multiple of 64, or of 32 on rows of a multiple of 64, a pair then spanning two groups) */
INLINE int a8_pairs(int K, int G) { return A8_PAIRS && (G % 64 == 0 || (G == 32 && K % 64 == 0)); }

static void quantize_row(const float* x, int K, int G, int8_t* a8, float* sx, int32_t* asum) {
  const int pairs = a8_pairs(K, G);
  for (int g = 0; g < K / G; g++) {
    const float* xg = x + (size_t)g * G;
    float amax = 0.0f;
    for (int k = 0; k < G; k++) {
      const float v = xg[k] < 0 ? -xg[k] : xg[k];
      amax = v > amax ? v : amax;
    }
    int sum = 0;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int k = 0; k < G; k++) {
      float r = __builtin_rintf(xg[k] * inv);
      r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
      const int q = (int)r;
      sum += q;
      const int kk = g * G + k; /* position in the row */
      a8[pairs ? (kk & ~63) + a8_pair_pos(kk & 63) : kk] = (int8_t)q;
    }
    sx[g] = amax / 127.0f;
    asum[g] = sum;
  }
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
INLINE __m512i dot64(__m512i acc, __m512i u, __m512i s) {
#if defined(__AVX512VNNI__)
  return _mm512_dpbusd_epi32(acc, u, s);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
#endif
}
#endif
#if defined(__AVX2__)
INLINE __m256i dot32(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}
/* one chunk's 32 codes, unsigned, in natural order (low nibbles are codes 0..15) */
INLINE __m256i codes32(const uint8_t* src) {
  const __m128i b = _mm_loadu_si128((const __m128i*)src), m = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}
INLINE float hsum8(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

/* output rows o .. o+RT-1 (all < O) for activation row m, int8 activations */
INLINE void rows_i8(const wq_job* j, int o, int m) {
  const int K = j->K, G = j->G, ngroups = K / G, chunks = G / 32;
  const size_t rb = (size_t)K / 2;
  const int8_t* a8 = j->a8 + (size_t)m * K;
  const float* asx = j->asx + (size_t)m * ngroups;
  const int32_t* asum = j->asum + (size_t)m * ngroups;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  if (G % 64 == 0) {
    __m512 acc[RT];
    for (int r = 0; r < RT; r++) acc[r] = _mm512_setzero_ps();
    const __m512i mask = _mm512_set1_epi8(0x0F);
    for (int g = 0; g < ngroups; g++) {
      __m512i dot[RT];
      for (int r = 0; r < RT; r++) /* the zero point's term, -zero * sum a, in lane 0 */
        dot[r] = _mm512_zextsi128_si512(_mm_cvtsi32_si128(-(int)j->zero[(size_t)(o + r) * ngroups + g] * asum[g]));
      for (int c = 0; c < chunks; c += 2) {
        const __m512i a = _mm512_loadu_si512((const void*)(a8 + (size_t)g * G + c * 32));
        for (int r = 0; r < RT; r++) {
          const __m256i b = _mm256_loadu_si256((const __m256i*)(j->w + (size_t)(o + r) * rb + (size_t)(g * chunks + c) * 16));
          const __m512i bb = _mm512_inserti64x4(_mm512_castsi256_si512(b), _mm256_srli_epi16(b, 4), 1);
          dot[r] = dot64(dot[r], _mm512_and_si512(bb, mask), a);
        }
      }
      for (int r = 0; r < RT; r++) {
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r]), _mm512_set1_ps(j->scale[(size_t)(o + r) * ngroups + g] * asx[g]), acc[r]);
      }
    }
    for (int r = 0; r < RT; r++) j->out[(size_t)m * j->O + o + r] = _mm512_reduce_add_ps(acc[r]);
    return;
  }
  if (a8_pairs(K, G)) { /* G = 32: a pair of chunks is two groups; lanes 4-7 and 12-15 are the second's */
    __m512 acc[RT];
    for (int r = 0; r < RT; r++) acc[r] = _mm512_setzero_ps();
    const __m512i mask = _mm512_set1_epi8(0x0F);
    for (int g = 0; g < ngroups; g += 2) {
      const __m512i a = _mm512_loadu_si512((const void*)(a8 + (size_t)g * 32));
      for (int r = 0; r < RT; r++) {
        const size_t gi = (size_t)(o + r) * ngroups + g;
        const __m256i b = _mm256_loadu_si256((const __m256i*)(j->w + (size_t)(o + r) * rb + (size_t)g * 16));
        const __m512i bb = _mm512_inserti64x4(_mm512_castsi256_si512(b), _mm256_srli_epi16(b, 4), 1);
        __m512i d = _mm512_maskz_set1_epi32(0x0001, -(int)j->zero[gi] * asum[g]);
        d = _mm512_mask_set1_epi32(d, 0x0010, -(int)j->zero[gi + 1] * asum[g + 1]);
        d = dot64(d, _mm512_and_si512(bb, mask), a);
        const __m512 s = _mm512_mask_blend_ps(0xF0F0, _mm512_set1_ps(j->scale[gi] * asx[g]),
                                              _mm512_set1_ps(j->scale[gi + 1] * asx[g + 1]));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[r]);
      }
    }
    for (int r = 0; r < RT; r++) j->out[(size_t)m * j->O + o + r] = _mm512_reduce_add_ps(acc[r]);
    return;
  }
#endif
#if defined(__AVX2__)
  __m256 acc[RT];
  for (int r = 0; r < RT; r++) acc[r] = _mm256_setzero_ps();
  for (int g = 0; g < ngroups; g++) {
    __m256i dot[RT];
    for (int r = 0; r < RT; r++)
      dot[r] = _mm256_zextsi128_si256(_mm_cvtsi32_si128(-(int)j->zero[(size_t)(o + r) * ngroups + g] * asum[g]));
    for (int c = 0; c < chunks; c++) {
      const __m256i a = _mm256_loadu_si256((const __m256i*)(a8 + (size_t)g * G + c * 32));
      for (int r = 0; r < RT; r++)
        dot[r] = dot32(dot[r], codes32(j->w + (size_t)(o + r) * rb + (size_t)(g * chunks + c) * 16), a);
    }
    for (int r = 0; r < RT; r++) {
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), _mm256_set1_ps(j->scale[(size_t)(o + r) * ngroups + g] * asx[g]), acc[r]);
    }
  }
  for (int r = 0; r < RT; r++) j->out[(size_t)m * j->O + o + r] = hsum8(acc[r]);
#elif defined(__aarch64__)
  float32x4_t acc[RT];
  for (int r = 0; r < RT; r++) acc[r] = vdupq_n_f32(0.0f);
  for (int g = 0; g < ngroups; g++) {
    int32x4_t dot[RT];
    for (int r = 0; r < RT; r++)
      dot[r] = vsetq_lane_s32(-(int)j->zero[(size_t)(o + r) * ngroups + g] * asum[g], vdupq_n_s32(0), 0);
    for (int c = 0; c < chunks; c++) {
      const int8x16_t a0 = vld1q_s8(a8 + (size_t)g * G + c * 32), a1 = vld1q_s8(a8 + (size_t)g * G + c * 32 + 16);
      for (int r = 0; r < RT; r++) {
        const uint8x16_t b = vld1q_u8(j->w + (size_t)(o + r) * rb + (size_t)(g * chunks + c) * 16);
        const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F)));
        const int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
#if defined(__ARM_FEATURE_DOTPROD)
        dot[r] = vdotq_s32(vdotq_s32(dot[r], lo, a0), hi, a1);
#else
        dot[r] = vpadalq_s16(dot[r], vmull_s8(vget_low_s8(lo), vget_low_s8(a0)));
        dot[r] = vpadalq_s16(dot[r], vmull_high_s8(lo, a0));
        dot[r] = vpadalq_s16(dot[r], vmull_s8(vget_low_s8(hi), vget_low_s8(a1)));
        dot[r] = vpadalq_s16(dot[r], vmull_high_s8(hi, a1));
#endif
      }
    }
    for (int r = 0; r < RT; r++) {
      acc[r] = vfmaq_f32(acc[r], vcvtq_f32_s32(dot[r]), vdupq_n_f32(j->scale[(size_t)(o + r) * ngroups + g] * asx[g]));
    }
  }
  for (int r = 0; r < RT; r++) j->out[(size_t)m * j->O + o + r] = vaddvq_f32(acc[r]);
#else
  for (int r = 0; r < RT; r++) {
    float y = 0.0f;
    for (int g = 0; g < ngroups; g++) {
      const size_t gi = (size_t)(o + r) * ngroups + g;
      int32_t d = -(int)j->zero[gi] * asum[g];
      for (int c = 0; c < chunks; c++) {
        const uint8_t* src = j->w + (size_t)(o + r) * rb + (size_t)(g * chunks + c) * 16;
        const int8_t* a = a8 + (size_t)g * G + c * 32;
        for (int i = 0; i < 16; i++) d += (src[i] & 15) * a[i] + (src[i] >> 4) * a[i + 16];
      }
      y += (float)d * (j->scale[gi] * asx[g]);
    }
    j->out[(size_t)m * j->O + o + r] = y;
  }
#endif
}

/* output rows [o0, o1) of activation row m, int8 activations (the last rows of a slice
 * that RT does not divide are computed as a tile ending at o1, overlapping the previous) */
static void wq_rows_i8(const wq_job* j, int o0, int o1, int m) {
  if (o1 - o0 < RT) { /* fewer rows than a tile: a tile inside [0, O) covering them */
    const int start = o1 - RT < 0 ? 0 : o1 - RT;
    if (start + RT > j->O) return; /* O < RT: never (checked by check_meta) */
    rows_i8(j, start, m);
    return;
  }
  int o = o0;
  for (; o + RT <= o1; o += RT) rows_i8(j, o, m);
  if (o < o1) rows_i8(j, o1 - RT, m);
}

#define TILE_CASES(L)                                                                     \
  switch (mt) {                                                                           \
    case 1: row_tile(j, o, m0, 1, L); break;                                             \
    case 2: row_tile(j, o, m0, 2 < MT ? 2 : MT, L); break;                               \
    case 3: row_tile(j, o, m0, 3 < MT ? 3 : MT, L); break;                               \
    case 4: row_tile(j, o, m0, 4 < MT ? 4 : MT, L); break;                               \
    case 5: row_tile(j, o, m0, 5 < MT ? 5 : MT, L); break;                               \
    case 6: row_tile(j, o, m0, 6 < MT ? 6 : MT, L); break;                               \
    case 7: row_tile(j, o, m0, 7 < MT ? 7 : MT, L); break;                               \
    default: row_tile(j, o, m0, MT, L); break;                                           \
  }

/* output rows [o0, o1) for every activation row */
static void wq_rows(const wq_job* j, int o0, int o1) {
  for (int m = 0; j->act && m < j->M; m++) wq_rows_i8(j, o0, o1, m);
  for (int o = o0; !j->act && o < o1; o++) {
    for (int m0 = 0; m0 < j->M; m0 += MT) {
      const int mt = j->M - m0 < MT ? j->M - m0 : MT;
      if (j->layout == WL_NIBBLE) {
        TILE_CASES(WL_NIBBLE)
      } else {
        TILE_CASES(WL_BYTE)
      }
    }
  }
  /* kept float outliers (flat index o*K + k; their codes are the zero point), then the bias */
  for (int i = 0; i < j->nout; i++) {
    const int o = j->index[i] / j->K, k = j->index[i] % j->K;
    if (o < o0 || o >= o1) continue;
    for (int m = 0; m < j->M; m++) j->out[(size_t)m * j->O + o] += j->x[(size_t)m * j->K + k] * j->value[i];
  }
  if (j->has_bias)
    for (int m = 0; m < j->M; m++)
      for (int o = o0; o < o1; o++) j->out[(size_t)m * j->O + o] += j->bias[o];
}

static const char* check_meta(const int32_t* meta) {
  const int K = meta[W_K], G = meta[W_G];
  if (meta[W_M] < 0 || K < 32 || meta[W_O] < 1 || G < 32 || G % 32 || K % G || meta[W_NOUT] < 0 ||
      (meta[W_LAYOUT] != WL_NIBBLE && meta[W_LAYOUT] != WL_BYTE) || (meta[W_ACT] != 0 && meta[W_ACT] != 1) ||
      (meta[W_ACT] && (meta[W_LAYOUT] != WL_NIBBLE || meta[W_O] < RT)))
    return "sliver_wq_linear: bad meta (groups of a multiple of 32 codes dividing K, layout 0 or 1, int8 activations "
           "only with 4-bit codes and at least 4 output rows): the library was built by a different sliver";
  return NULL;
}

static wq_job make_job(const float* x, const uint8_t* w, const float* scale, const uint8_t* zero,
                       const int32_t* index, const float* value, const float* bias, const int32_t* meta, float* out) {
  wq_job j = {x, w, scale, zero, index, value, bias, out, meta[W_M], meta[W_K], meta[W_O], meta[W_G],
              meta[W_LAYOUT], meta[W_NOUT], meta[W_HASBIAS], meta[W_ACT], NULL, NULL, NULL};
  return j;
}

/* int8 activations: quantize every activation row once (buffer: free it after the call);
 * returns 0, or -1 when out of memory */
static int quantize_job(wq_job* j, void** buffer) {
  *buffer = NULL;
  if (!j->act) return 0;
  const size_t n = (size_t)j->M * j->K, ng = (size_t)j->M * (j->K / j->G);
  char* buf = (char*)malloc(n + ng * (sizeof(float) + sizeof(int32_t)) + 64);
  if (!buf) return -1;
  float* sx = (float*)(buf + ((n + 63) & ~(size_t)63));
  for (int m = 0; m < j->M; m++)
    quantize_row(j->x + (size_t)m * j->K, j->K, j->G, (int8_t*)buf + (size_t)m * j->K,
                 sx + (size_t)m * (j->K / j->G), (int32_t*)(sx + ng) + (size_t)m * (j->K / j->G));
  j->a8 = (const int8_t*)buf;
  j->asx = sx;
  j->asum = (const int32_t*)(sx + ng);
  *buffer = buf;
  return 0;
}

/* The instruction set this copy of the kernel was compiled for ("avx512", "avx2", "neon", "scalar"). */
SLIVER_EXTERN const char* sliver_wq_isa(void) { return WQ_ISA; }

/* Serial entry point for tests and benchmarks (ctypes): returns 0, or -1 on bad meta. */
SLIVER_EXTERN int sliver_wq_linear_c(const float* x, const uint8_t* w, const float* scale, const uint8_t* zero,
                                     const int32_t* index, const float* value, const float* bias,
                                     const int32_t* meta, float* out) {
  if (check_meta(meta)) return -1;
  wq_job j = make_job(x, w, scale, zero, index, value, bias, meta, out);
  void* buffer;
  if (quantize_job(&j, &buffer)) return -1;
  wq_rows(&j, 0, j.O);
  free(buffer);
  return 0;
}

/* ---- the TVM-FFI packed function (tvm_abi.h) ---- */
static void wq_slice(void* job, int s, int nslice) {
  const wq_job* j = (const wq_job*)job;
  long lo, hi;
  slice_range(j->O, s, nslice, &lo, &hi);
  wq_rows(j, (int)lo, (int)hi);
}

/* args: x f32 [M][K], packed codes u8, scale f32 [O][K/G], zero u8 [O][K/G], out_index i32 [NOUT],
 * out_value f32 [NOUT], bias f32 [O], meta i32 [W_LEN], out f32 [M][O] */
SLIVER_EXTERN int __tvm_ffi_sliver_wq_linear(void* self, const sliver_Any* args, int32_t nargs, sliver_Any* result) {
  (void)self;
  if (nargs != 9)
    return fail("sliver_wq_linear: expected 9 arguments (x, codes, scale, zero, out_index, out_value, bias, meta, out)");
  const int32_t* meta = (const int32_t*)data_of(&args[7]);
  const char* bad = check_meta(meta);
  if (bad) return fail(bad);
  wq_job j = make_job((const float*)data_of(&args[0]), (const uint8_t*)data_of(&args[1]),
                            (const float*)data_of(&args[2]), (const uint8_t*)data_of(&args[3]),
                            (const int32_t*)data_of(&args[4]), (const float*)data_of(&args[5]),
                            (const float*)data_of(&args[6]), meta, (float*)data_of(&args[8]));
  /* slices: the pool's thread count, at most O; serial without a pool or for small calls */
  void* buffer;
  if (quantize_job(&j, &buffer)) return fail("sliver_wq_linear: out of memory for the int8 activations");
  pool_job p = {wq_slice, (void*)&j, pool_slices(j.O, (double)j.M * j.K * j.O, WQ_MIN_WORK)};
  pool_run(&p);
  free(buffer);
  return return_none(result);
}
