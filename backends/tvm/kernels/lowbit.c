/* sliver's bit-serial convolution kernel (qconv2d / qdense with 1..7-bit codes).
 *
 * Exported as a TVM-FFI packed function (`sliver_lowbit_bitserial`) and linked into
 * the artifact's own library (relax.call_dps_packed), for x86-64 and aarch64.
 *
 *   acc[n,o,oh,ow] = sum_{c,kh,kw} (xpad - xz) * (w - wz)          (int32, exact)
 *                  = Sxw - wz*Sx - xz*Sw[o] + K*xz*wz
 *
 * Sxw = sum x*w over the receptive field (padded taps hold the code xz), computed bit
 * serially: x and w are split into bit planes; for planes i, j
 *   Sxw = sum_ij 2^(i+j) * popcount(xplane_i AND wplane_j).
 * Every plane weighs +2^i because signed codes are re-based to offset binary first
 * (w + 2^(W-1) at compile time in lowbit.py, x + 2^(A-1) here by flipping the top bit),
 * the zero points moving with them, so (x - xz)(w - wz) is unchanged.  (Exception: the
 * aarch64 W2A2 kernel takes signed weights as two's complement planes, the top one
 * weighing -2 (LAYOUT 2), so symmetric weights keep wz = 0.)  Sx (per output pixel, only
 * needed when wz != 0) comes from the activation planes' popcounts; Sw[o] is computed
 * at compile time.
 *
 * Layout.  Weights are packed at compile time (backends/tvm/lowbit.py) as
 * uint8 [O][WB][RB]: for output channel o and weight plane j, one "row" of RB bytes
 * holding the bits of taps (kh, kw) in order, each tap ceil(Cg/8) bytes (channel c of
 * the group at bit c%8 of byte c/8), zero-filled to RB (a multiple of ROW_ALIGN = 8
 * bytes: the inner loops finish a row with one 8-byte step instead of padding it to a
 * vector register, so a 64-channel 3x3 row is 72 bytes, not 80).
 * Activations are packed here at run time the same way: first the input pixels of a
 * group into tap-sized bit planes, laid out per input row and plane (on aarch64 16
 * pixels at a time with NEON shift-and-insert), the padded border written once; then,
 * one output row at a time, the im2col rows of that output row, one copy per kernel row
 * and plane (the KW taps of a kernel row are contiguous).  Padding channel bits are 0
 * in both, so they never count; padded pixels hold xz in every real channel.
 *
 * Inner loop.  aarch64: 16 bytes at a time, AND, `cnt` (vcntq_u8), and byte-pair
 * accumulation into 16-bit lanes (`uadalp`, vpadalq_u8) for a block of output channels
 * kept in registers; for narrow planes (W2A2, W1A*, ...) all plane pairs of a channel
 * are first fused per byte with `mla` (see FUSABLE), wider ones keep an accumulator
 * per plane pair; narrow planes also take two output pixels at a time, so each weight
 * register serves both.  W2A2 (the hot case) is written out in inline assembly.
 * x86 with AVX2 (no vector popcount before AVX-512 VPOPCNTDQ): 32 bytes at a time,
 * nibble-table popcount (vpshufb), bytes summed with vpsadbw, the last rb % 32 bytes
 * with the scalar popcount.  Elsewhere: 64-bit words and the scalar popcount.
 *
 * Threads.  Both kernels cut a call's output rows (of all images and groups, in order)
 * into contiguous slices run on TVM's thread pool (TVMBackendParallelLaunch, the pool the
 * library's TVM-generated loops use: TVM_NUM_THREADS), one slice per thread, each with
 * its own scratch and packing only the input rows its output rows read; a row is
 * computed the same way whatever slice it falls in, so the output is bit-identical for
 * any thread count.  Calls too small to pay for the pool run serially (*_MIN_WORK).
 *
 * meta (int32[META_LEN]): see enum below; scale, bias, epi: the fused epilogue (see
 * apply_epilogue); out: f32 or one-byte codes [N][O][OH][OW].
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__aarch64__)
#include <arm_neon.h>
#elif defined(__AVX2__)
#include <immintrin.h>
#endif
#include "tvm_abi.h"
#define ROW_ALIGN 8 /* packed rows are a whole number of 64-bit words */

#define INLINE static inline __attribute__((always_inline))

/* The run of a slice's items [item, hi) (item = (n*G + g)*OH + oh) that starts at item:
 * image *n, group *g, output rows [*oh0, *oh1); returns the item after the run. */
static long next_run(long item, long hi, int G, int OH, int* n, int* g, int* oh0, int* oh1) {
  const long ng = item / OH;
  *n = (int)(ng / G);
  *g = (int)(ng % G);
  *oh0 = (int)(item - ng * OH);
  *oh1 = hi - ng * OH < OH ? (int)(hi - ng * OH) : OH;
  return ng * OH + *oh1;
}
/* The input rows [*h0, *h1) that output rows [oh0, oh1) read (padded rows oh*SH + kh*DH,
 * minus the top padding), and the padded rows [*hp0, *hp1) they span. */
static void rows_read(int oh0, int oh1, int SH, int KH, int DH, int PT, int H, int* hp0, int* hp1, int* h0,
                      int* h1) {
  *hp0 = oh0 * SH;
  *hp1 = (oh1 - 1) * SH + (KH - 1) * DH + 1;
  *h0 = *hp0 - PT > 0 ? *hp0 - PT : 0;
  *h1 = *hp1 - PT < H ? *hp1 - PT : H;
}
/* Carve n pieces of sizes[i] bytes (each rounded up to 64: no two slices share a cache
 * line) out of base; returns the total, so call with base = NULL to size the block. */
static size_t carve(uint8_t* base, const size_t* sizes, void** ptrs, int n) {
  size_t at = 0;
  for (int i = 0; i < n; i++) {
    if (ptrs) ptrs[i] = sizes[i] ? base + at : NULL;
    at += (sizes[i] + 63) & ~(size_t)63;
  }
  return at;
}

/* Weights of W2A2 layers in the W2A2 block layout (aarch64 only; lowbit.py packs them
 * so when this holds and says so in meta LAYOUT): see w2a2_pair_blocks.  LAYOUT 1:
 * offset-binary planes; LAYOUT 2 (signed weights, rows of at most W2A2_TC_MAX_RB bytes,
 * whole blocks of four channels): two's complement planes. */
#define W2A2_MAX_RB 904
#define W2A2_TC_MAX_RB 680
#define W2A2_BLOCKS(A, W, rb, og) ((A) == 2 && (W) == 2 && (rb) >= 16 && (rb) <= W2A2_MAX_RB && (og) >= 4)
#define W2A2_TC_OK(rb, og) ((rb) <= W2A2_TC_MAX_RB && (og) % 4 == 0)
enum { LAYOUT_PLAIN = 0, LAYOUT_W2A2 = 1, LAYOUT_W2A2_TC = 2, LAYOUT_W2A2_TC8 = 3, LAYOUT_I8_TILE = 4, LAYOUT_I8_LANES = 5,
       LAYOUT_I8_ROWS = 6 };

/* ---- meta layout (kept in sync with lowbit.py: META_FIELDS) ---- */
enum {
  M_N, M_C, M_H, M_W, M_O, M_KH, M_KW, M_SH, M_SW, M_PT, M_PL, M_PB, M_PR, M_DH, M_DW, M_G,
  M_ABITS, M_ASIGNED, M_WBITS, M_WSIGNED, M_XZ, M_WZ, M_OH, M_OW, M_TAPB, M_RB, M_OUT, M_QMIN, M_QMAX, M_LAYOUT, META_LEN
};


/* The arguments both kernels take: x codes, packed weights, sum of weights per output
 * channel, meta, the epilogue's scale[O], bias[O] and epi = {clamp_min, clamp_max,
 * 1/out_scale, out_zero_point} (f32; -inf/+inf for no clamp), out. */
typedef struct {
  const uint8_t* x;
  const uint8_t* w;
  const int32_t* wsum;
  const int32_t* m;
  const float* scale;
  const float* bias;
  const float* epi;
  void* out;
} kernel_args;
static int unpack_args(const sliver_Any* args, int32_t nargs, const char* count_error, kernel_args* k) {
  if (nargs != 8) return fail(count_error);
  k->x = (const uint8_t*)data_of(&args[0]);
  k->w = (const uint8_t*)data_of(&args[1]);
  k->wsum = (const int32_t*)data_of(&args[2]);
  k->m = (const int32_t*)data_of(&args[3]);
  k->scale = (const float*)data_of(&args[4]);
  k->bias = (const float*)data_of(&args[5]);
  k->epi = (const float*)data_of(&args[6]);
  k->out = data_of(&args[7]);
  return 0;
}

/* ---- the fused epilogue of qconv2d / qdense (both kernels), per output row ----
 *   y = float(acc) * scale[o] + bias[o], clamped to [clamp_min, clamp_max]; out_dtype f32:
 *   y, else the codes clamp(roundeven(y * (1/out_scale)) + out_zero_point, qmin, qmax)
 * in exactly the float32 operations (no fused multiply-add: built with -ffp-contract=off)
 * and order of the interpreter and of backends/tvm/lowbit.py's Relax epilogue. */
enum { OUT_F32 = 0, OUT_U8 = 1, OUT_I8 = 2 };
typedef struct {
  const float *scale, *bias;
  float lo, hi, inv, zp, qmin, qmax;
  int kind;
} epilogue;
static inline float epi1(const epilogue* e, int32_t a, float s, float b) {
  float y = (float)a * s + b;
  y = y < e->lo ? e->lo : y;
  return y > e->hi ? e->hi : y;
}
static inline int32_t code1(const epilogue* e, float y) {
  float q = __builtin_roundevenf(y * e->inv) + e->zp;
  q = q < e->qmin ? e->qmin : q;
  return (int32_t)(q > e->qmax ? e->qmax : q);
}
/* out[o * ostride + p] (element index) for o < og, p < npix, from acc[o * astride + p] */
static __attribute__((noinline)) void apply_epilogue(const epilogue* e, const int32_t* acc, int astride, int og, int npix, void* out,
                           ptrdiff_t ostride) {
#if defined(__aarch64__)
  const float32x4_t lo = vdupq_n_f32(e->lo), hi = vdupq_n_f32(e->hi), inv = vdupq_n_f32(e->inv),
                    zp = vdupq_n_f32(e->zp), qmin = vdupq_n_f32(e->qmin), qmax = vdupq_n_f32(e->qmax);
#define EPI4(a) vminq_f32(vmaxq_f32(vaddq_f32(vmulq_f32(vcvtq_f32_s32(vld1q_s32(a)), s4), b4), lo), hi)
#define CODE4(y) vcvtq_s32_f32(vminq_f32(vmaxq_f32(vaddq_f32(vrndnq_f32(vmulq_f32(y, inv)), zp), qmin), qmax))
#endif
  for (int o = 0; o < og; o++) {
    const int32_t* a = acc + (size_t)o * astride;
    const float s = e->scale[o], b = e->bias[o];
    int p = 0;
#if defined(__aarch64__)
    const float32x4_t s4 = vdupq_n_f32(s), b4 = vdupq_n_f32(b);
#endif
    if (e->kind == OUT_F32) {
      float* d = (float*)out + o * ostride;
#if defined(__aarch64__)
      for (; p + 8 <= npix; p += 8) {
        const float32x4_t y0 = EPI4(a + p), y1 = EPI4(a + p + 4);
        vst1q_f32(d + p, y0);
        vst1q_f32(d + p + 4, y1);
      }
#endif
      for (; p < npix; p++) d[p] = epi1(e, a[p], s, b);
    } else {
      uint8_t* d = (uint8_t*)out + o * ostride; /* codes fit their byte: int8 stores the same bits */
#if defined(__aarch64__)
      for (; p + 8 <= npix; p += 8) {
        const int32x4_t q0 = CODE4(EPI4(a + p)), q1 = CODE4(EPI4(a + p + 4));
        vst1_u8(d + p, vreinterpret_u8_s8(vmovn_s16(vcombine_s16(vmovn_s32(q0), vmovn_s32(q1)))));
      }
#endif
      for (; p < npix; p++) d[p] = (uint8_t)code1(e, epi1(e, a[p], s, b));
    }
  }
#undef EPI4
#undef CODE4
}
static void make_epilogue(const kernel_args* k, epilogue* e) {
  e->scale = k->scale;
  e->bias = k->bias;
  e->lo = k->epi[0];
  e->hi = k->epi[1];
  e->inv = k->epi[2];
  e->zp = k->epi[3];
  e->qmin = (float)k->m[M_QMIN];
  e->qmax = (float)k->m[M_QMAX];
  e->kind = k->m[M_OUT];
}
/* bytes of one output element */
/* e for the output channels of group g (Og each): its scale and bias from channel g*Og */
static inline epilogue group_epilogue(const epilogue* e, int g, int Og) {
  epilogue eg = *e;
  eg.scale += (size_t)g * Og;
  eg.bias += (size_t)g * Og;
  return eg;
}
static size_t out_size(const int32_t* m) { return m[M_OUT] == OUT_F32 ? 4 : 1; }

/* the convolution geometry from meta, as locals */
#define CONV_GEOMETRY(m)                                                                                    \
  const int N = m[M_N], C = m[M_C], H = m[M_H], W = m[M_W], O = m[M_O], KH = m[M_KH], KW = m[M_KW];        \
  const int SH = m[M_SH], SW = m[M_SW], PT = m[M_PT], PL = m[M_PL], DH = m[M_DH], DW = m[M_DW], G = m[M_G]; \
  const int OH = m[M_OH], OW = m[M_OW], RB = m[M_RB];                                                      \
  const int HP = H + PT + m[M_PB], WP = W + PL + m[M_PR];                                                 \
  const int Cg = C / G, Og = O / G, K = KH * KW * Cg


/* Sum of the bits of n bytes (any n). */
static inline uint32_t count_bytes(const uint8_t* p, int n) {
  uint32_t s = 0;
  int k = 0;
  for (; k + 8 <= n; k += 8) {
    uint64_t a;
    memcpy(&a, p + k, 8);
    s += (uint32_t)__builtin_popcountll(a);
  }
  for (; k < n; k++) s += (uint32_t)__builtin_popcount(p[k]);
  return s;
}

/* One output row's dot products: for every pixel p < npix (im2col row rows + p*A*rb:
 * A planes of rb bytes) and output channel o < og (weights w + o*W*rb: W planes),
 *   out[o*ostride + p] = sum_ij 2^(i+j) popcount(x_i AND w_j) + obias[o] + base[p].
 * conv_row_impl is instantiated per (A, W) with constants, so its loops unroll and the
 * accumulators of a block of OB output channels live in registers. */
typedef struct {
  const uint8_t* rows;
  const uint8_t* w;
  int rb, og, npix;
  int32_t* out;
  ptrdiff_t ostride;
  const int32_t* obias;
  const int32_t* base;
  int layout; /* LAYOUT_*: the weights' layout (meta LAYOUT) */
  /* fused (FUSED_*, LAYOUT_W2A2_TC and _TC8 only): the epilogue is applied here; out is then the
   * output row itself (f32 or one-byte codes), with the group's scale[og], bias[og] and
   * e = {clamp_min, clamp_max, 1/out_scale, out_zero_point, qmin, qmax} */
  int fused;
  const float *scale, *bias, *e;
} row_args;
enum { FUSED_NONE = 0, FUSED_F32 = 1, FUSED_CODES = 2 };

#if defined(__aarch64__)
/* Narrow planes (FUSABLE: (2^A - 1)(2^W - 1) <= 31) fuse all plane pairs of an output
 * channel into one byte per lane before widening: t = sum_ij 2^(i+j) cnt(x_i AND w_j)
 * <= 8 * 31 < 256 (one `mla` per pair instead of one accumulator per pair), then one
 * `uadalp`; the 16-bit lanes gain <= 510 per 16-byte step, flushed every 128 steps.
 * Wider planes keep one 16-bit accumulator per pair (<= 16 per step, flushed every 2048).
 * Rows are a multiple of 8 bytes: a last 8-byte step handles the rest (for fused planes,
 * two output channels at once: their weights in the two halves of one register). */
#define FUSABLE(A, W) (((1 << (A)) - 1) * ((1 << (W)) - 1) <= 31)
#define NEON_CHUNK(A, W) (FUSABLE(A, W) ? 128 * 16 : 2048 * 16)
#define OB_OF(A, W) (FUSABLE(A, W) ? 4 : (A) * (W) >= 16 ? 1 : 16 / ((A) * (W)))

/* One plane pair's contribution to the fused byte t: t (+)= 2^(i+j) cnt(x AND w). */
#define FUSE(t, x, w, i, j, and_, cnt_, mla_, dup_)                                                \
  do {                                                                                             \
    const __typeof__(x) c_ = cnt_(and_(x, w));                                                     \
    t = ((i) + (j) == 0) ? c_ : mla_(t, c_, dup_((uint8_t)(1u << ((i) + (j)))));                   \
  } while (0)

/* tot[p*OB + ob] (4 x u32 lanes) += the plane-pair sums of bytes [v0, v1) of pixel p's
 * row (r0, r1) with channel ob's weights, for NP pixels (1 or 2) and OB channels.  With
 * two pixels each weight register is loaded once for both. */
INLINE void dot_chunk(const uint8_t* r0, const uint8_t* r1, const uint8_t* w, int rb, int v0, int v1, const int A,
                      const int W, const int OB, const int NP, uint32x4_t* tot) {
  const int ws = W * rb;
  const uint8_t* rp[2] = {r0, r1};
  if (FUSABLE(A, W)) {
    uint16x8_t acc[8]; /* [p][ob] */
    _Pragma("GCC unroll 8") for (int k = 0; k < NP * OB; k++) acc[k] = vdupq_n_u16(0);
    int v = v0;
    for (; v + 16 <= v1; v += 16) {
      uint8x16_t xv[16]; /* [p][i] */
      _Pragma("GCC unroll 2") for (int p = 0; p < NP; p++)
      _Pragma("GCC unroll 8") for (int i = 0; i < A; i++) xv[p * A + i] = vld1q_u8(rp[p] + i * rb + v);
      _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++) {
        uint8x16_t t[2] = {vdupq_n_u8(0), vdupq_n_u8(0)};
        _Pragma("GCC unroll 8") for (int j = 0; j < W; j++) {
          const uint8x16_t wv = vld1q_u8(w + ob * ws + j * rb + v);
          _Pragma("GCC unroll 2") for (int p = 0; p < NP; p++)
          _Pragma("GCC unroll 8") for (int i = 0; i < A; i++)
            FUSE(t[p], xv[p * A + i], wv, i, j, vandq_u8, vcntq_u8, vmlaq_u8, vdupq_n_u8);
        }
        _Pragma("GCC unroll 2") for (int p = 0; p < NP; p++) acc[p * OB + ob] = vpadalq_u8(acc[p * OB + ob], t[p]);
      }
    }
    if (v < v1) { /* the last 8 bytes: two pixels, or two channels, per register */
      if (NP == 2) {
        uint8x16_t xd[8];
        _Pragma("GCC unroll 8") for (int i = 0; i < A; i++)
          xd[i] = vcombine_u8(vld1_u8(r0 + i * rb + v), vld1_u8(r1 + i * rb + v));
        _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++) {
          uint8x16_t t = vdupq_n_u8(0);
          _Pragma("GCC unroll 8") for (int j = 0; j < W; j++) {
            const uint8x16_t wv = vreinterpretq_u8_u64(vld1q_dup_u64((const uint64_t*)(w + ob * ws + j * rb + v)));
            _Pragma("GCC unroll 8") for (int i = 0; i < A; i++) FUSE(t, xd[i], wv, i, j, vandq_u8, vcntq_u8, vmlaq_u8, vdupq_n_u8);
          }
          acc[ob] = vaddw_u8(acc[ob], vget_low_u8(t));
          acc[OB + ob] = vaddw_high_u8(acc[OB + ob], t);
        }
      } else if (OB % 2 == 0) {
        uint8x16_t xd[8];
        _Pragma("GCC unroll 8") for (int i = 0; i < A; i++)
          xd[i] = vreinterpretq_u8_u64(vld1q_dup_u64((const uint64_t*)(r0 + i * rb + v)));
        _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob += 2) {
          uint8x16_t t = vdupq_n_u8(0);
          _Pragma("GCC unroll 8") for (int j = 0; j < W; j++) {
            const uint8x16_t wv = vcombine_u8(vld1_u8(w + ob * ws + j * rb + v), vld1_u8(w + (ob + 1) * ws + j * rb + v));
            _Pragma("GCC unroll 8") for (int i = 0; i < A; i++) FUSE(t, xd[i], wv, i, j, vandq_u8, vcntq_u8, vmlaq_u8, vdupq_n_u8);
          }
          acc[ob] = vaddw_u8(acc[ob], vget_low_u8(t));
          acc[ob + 1] = vaddw_high_u8(acc[ob + 1], t);
        }
      } else {
        uint8x8_t x8[8];
        _Pragma("GCC unroll 8") for (int i = 0; i < A; i++) x8[i] = vld1_u8(r0 + i * rb + v);
        _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++) {
          uint8x8_t t = vdup_n_u8(0);
          _Pragma("GCC unroll 8") for (int j = 0; j < W; j++) {
            const uint8x8_t wv = vld1_u8(w + ob * ws + j * rb + v);
            _Pragma("GCC unroll 8") for (int i = 0; i < A; i++) FUSE(t, x8[i], wv, i, j, vand_u8, vcnt_u8, vmla_u8, vdup_n_u8);
          }
          acc[ob] = vaddw_u8(acc[ob], t);
        }
      }
    }
    _Pragma("GCC unroll 8") for (int k = 0; k < NP * OB; k++) tot[k] = vpadalq_u16(tot[k], acc[k]);
  } else {
    const uint8_t* row = r0; /* one pixel */
    uint16x8_t acc[64]; /* [ob][i][j]: OB*A*W <= 49 */
    _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++)
    _Pragma("GCC unroll 8") for (int i = 0; i < A; i++)
    _Pragma("GCC unroll 8") for (int j = 0; j < W; j++) acc[(ob * A + i) * W + j] = vdupq_n_u16(0);
    int v = v0;
    for (; v + 16 <= v1; v += 16) {
      uint8x16_t xv[8];
      _Pragma("GCC unroll 8") for (int i = 0; i < A; i++) xv[i] = vld1q_u8(row + i * rb + v);
      _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++)
      _Pragma("GCC unroll 8") for (int j = 0; j < W; j++) {
        const uint8x16_t wv = vld1q_u8(w + ob * ws + j * rb + v);
        _Pragma("GCC unroll 8") for (int i = 0; i < A; i++)
          acc[(ob * A + i) * W + j] = vpadalq_u8(acc[(ob * A + i) * W + j], vcntq_u8(vandq_u8(xv[i], wv)));
      }
    }
    if (v < v1) {
      uint8x8_t x8[8];
      _Pragma("GCC unroll 8") for (int i = 0; i < A; i++) x8[i] = vld1_u8(row + i * rb + v);
      _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++)
      _Pragma("GCC unroll 8") for (int j = 0; j < W; j++) {
        const uint8x8_t wv = vld1_u8(w + ob * ws + j * rb + v);
        _Pragma("GCC unroll 8") for (int i = 0; i < A; i++)
          acc[(ob * A + i) * W + j] = vaddw_u8(acc[(ob * A + i) * W + j], vcnt_u8(vand_u8(x8[i], wv)));
      }
    }
    /* widen pairs of lanes to 32 bits, weight by the plane pair's coefficient */
    _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++)
    _Pragma("GCC unroll 8") for (int i = 0; i < A; i++)
    _Pragma("GCC unroll 8") for (int j = 0; j < W; j++)
      tot[ob] = vmlaq_n_u32(tot[ob], vpaddlq_u16(acc[(ob * A + i) * W + j]), 1u << (i + j));
  }
}

/* The hot case written out: W2A2, two pixels, four output channels (NP=2, OB=4), rows
 * of 16..W2A2_MAX_RB bytes.  The same arithmetic as dot_chunk, register-allocated by
 * hand: 4 activation loads, 4 weight load pairs, 32 and + 32 cnt, 24 mla, 8 uadalp per
 * 16 bytes (GCC's allocation of the generic code spills and copies: ~10% more
 * instructions, and its loop around an asm block per 4 channels another ~10%: the asm
 * loops over the blocks itself, w2a2_pair_blocks).
 * Weights come in the W2A2 block layout (lowbit.py, LAYOUT = 1): the 8 rows (4 channels
 * x 2 planes) of a block interleaved in the order the loop reads them, per 16-byte step
 * [ch0 plane0][ch0 plane1][ch1 plane0]...[ch3 plane1], then the 8-byte tails in the same
 * order, so one pointer walks them (`ldp` of both planes of a channel, `ld2r` of both
 * tails) and the blocks follow one another.  Activation rows are read through four
 * post-incremented pointers.  The first step initialises the accumulators (uaddlp).
 * The 16-bit lane sums of pixel p, channel ob are in v20+ob (p = 0) and v24+ob (p = 1)
 * and are reduced in 16 bits (pairwise adds): a channel's total is at most 72 * rb (8
 * bits per byte, plane weights 1+2+2+4), which fits 16 bits for rb <= W2A2_MAX_RB. */
#define W2A2_OB(ACC, A0, A1, K01, K11)                                                            \
  "ldp q4, q5, [%[w]], #32\n\t"                                                                     \
  "and v6.16b, v0.16b, v4.16b\n\tcnt v6.16b, v6.16b\n\t"                                           \
  "and v7.16b, v2.16b, v4.16b\n\tcnt v7.16b, v7.16b\n\t"                                           \
  "and v16.16b, v1.16b, v4.16b\n\tcnt v16.16b, v16.16b\n\tmla v6.16b, v16.16b, v30.16b\n\t"         \
  "and v17.16b, v3.16b, v4.16b\n\tcnt v17.16b, v17.16b\n\tmla v7.16b, v17.16b, v30.16b\n\t"         \
  "and v16.16b, v0.16b, v5.16b\n\tcnt v16.16b, v16.16b\n\tmla v6.16b, v16.16b, " K01 ".16b\n\t"     \
  "and v17.16b, v2.16b, v5.16b\n\tcnt v17.16b, v17.16b\n\tmla v7.16b, v17.16b, " K01 ".16b\n\t"     \
  "and v16.16b, v1.16b, v5.16b\n\tcnt v16.16b, v16.16b\n\tmla v6.16b, v16.16b, " K11 ".16b\n\t"     \
  "and v17.16b, v3.16b, v5.16b\n\tcnt v17.16b, v17.16b\n\tmla v7.16b, v17.16b, " K11 ".16b\n\t"     \
  ACC " " A0 ".8h, v6.16b\n\t"                                                                      \
  ACC " " A1 ".8h, v7.16b\n\t"
#define W2A2_STEP(ACC, K01, K11)                                                                  \
  "ldr q0, [%[p0]], #16\n\tldr q1, [%[p1]], #16\n\tldr q2, [%[p2]], #16\n\tldr q3, [%[p3]], #16\n\t" \
  W2A2_OB(ACC, "v20", "v24", K01, K11) W2A2_OB(ACC, "v21", "v25", K01, K11)                         \
  W2A2_OB(ACC, "v22", "v26", K01, K11) W2A2_OB(ACC, "v23", "v27", K01, K11)
/* the last 8 bytes: both pixels in one register, each weight plane's tail duplicated */
#define W2A2_TAIL_OB(A0, A1, K01, K11, ADDW, ADDW2)                                               \
  "ld2r {v4.2d, v5.2d}, [%[w]], #16\n\t"                                                            \
  "and v6.16b, v0.16b, v4.16b\n\tcnt v6.16b, v6.16b\n\t"                                           \
  "and v16.16b, v1.16b, v4.16b\n\tcnt v16.16b, v16.16b\n\tmla v6.16b, v16.16b, v30.16b\n\t"         \
  "and v16.16b, v0.16b, v5.16b\n\tcnt v16.16b, v16.16b\n\tmla v6.16b, v16.16b, " K01 ".16b\n\t"     \
  "and v16.16b, v1.16b, v5.16b\n\tcnt v16.16b, v16.16b\n\tmla v6.16b, v16.16b, " K11 ".16b\n\t"     \
  ADDW " " A0 ".8h, " A0 ".8h, v6.8b\n\t"                                                           \
  ADDW2 " " A1 ".8h, " A1 ".8h, v6.16b\n\t"

/* All nblk four-channel blocks of a pixel pair in one asm loop (no C between blocks):
 * out[(4k + ob) * ostride + p] = dot(pixel p, channel 4k + ob) + obias[4k + ob] + base[p]
 * for p = 0, 1 (adjacent outputs), w the first block (W2A2 block layout), rows of
 * 16..W2A2_MAX_RB bytes (w2a2_pair_blocks*, below).  Offset-binary weight planes
 * (LAYOUT 1: plane pairs weigh 1, 2, 2, 4; unsigned byte and 16-bit sums), and two's
 * complement ones (LAYOUT 2, signed weights: the top weight plane weighs -2, so the pairs
 * weigh 1, 2, -2, -4 and a byte t lies in [-48, 24]: signed widening, sadalp / saddw /
 * sxtl; a channel's total lies in [-48 * rb, 24 * rb], which fits 16 bits for
 * rb <= W2A2_TC_MAX_RB).  Two's complement needs no weight zero point for symmetric
 * weights, so the kernel skips the Sx sums. */
/* The asm function of every variant: arguments as above, plus (fused epilogue)
 * scale, bias of the first channel and e = {clamp_min, clamp_max, inv, zp, qmin, qmax};
 * BODY is its asm (W2A2_LOOP), the rest its vector clobbers.  In/out operands are
 * early-clobber: they change while inputs are still read (GCC may otherwise give an input
 * holding the same value the same register). */
#define W2A2_ASM_FN(NAME, ESIZE, BODY, ...)                                                                        \
  static inline __attribute__((always_inline)) void NAME(const uint8_t* r0, const uint8_t* r1, const uint8_t* w,     \
                                                         int rb, long nblk, const int32_t* obias,                    \
                                                         const int32_t* base, int32_t* out, ptrdiff_t ostride,       \
                                                         const float* scale, const float* bias, const float* e) {    \
    const long tail = rb & 8, more = (rb >> 4) - 1, ostride_b = (long)ostride * ESIZE;                              \
    const uint8_t* x01 = r0 + rb;                                                                                    \
    const uint8_t* x11 = r1 + rb;                                                                                    \
    const float* e16 = e ? e + 4 : e;                                                                                \
    long n;                                                                                                          \
    const uint8_t *p0, *p1, *p2, *p3, *t;                                                                            \
    __asm__ volatile(BODY                                                                                            \
        : [nblk] "+&r"(nblk), [w] "+&r"(w), [out] "+&r"(out), [obias] "+&r"(obias), [n] "=&r"(n), [t] "=&r"(t),      \
          [p0] "=&r"(p0), [p1] "=&r"(p1), [p2] "=&r"(p2), [p3] "=&r"(p3), [scale] "+&r"(scale), [bias] "+&r"(bias)   \
        : [x00] "r"(r0), [x10] "r"(r1), [x01] "r"(x01), [x11] "r"(x11), [tail] "r"(tail), [more] "r"(more),          \
          [base] "r"(base), [os] "r"(ostride_b), [e] "r"(e), [e16] "r"(e16)                                          \
        : "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v16", "v17", "v18", "v19", "v20", "v21", "v22", "v23",    \
          "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31", __VA_ARGS__, "cc");                                \
  }
/* The loop over the blocks: the first 16-byte step (STEP0: initialising the sums), the
 * others (STEP), the 8-byte tail (TAIL: both pixels in v0 and v1), then FINISH (the
 * block's sums to out) */
#define W2A2_LOOP(CONSTS, STEP0, STEP, TAIL, FINISH)                                                               \
  CONSTS                                                                                                           \
  "ld1r {v28.4s}, [%[base]]\n\t"                                                                                   \
  "add %[t], %[base], #4\n\t"                                                                                      \
  "ld1r {v29.4s}, [%[t]]\n\t"                                                                                      \
  "0:\n\t"                                                                                                         \
  "mov %[p0], %[x00]\n\tmov %[p1], %[x01]\n\tmov %[p2], %[x10]\n\tmov %[p3], %[x11]\n\t"                           \
  STEP0                                                                                                            \
  "mov %[n], %[more]\n\t"                                                                                          \
  "cbz %[n], 2f\n\t"                                                                                               \
  "1:\n\t"                                                                                                         \
  STEP                                                                                                             \
  "subs %[n], %[n], #1\n\t"                                                                                        \
  "b.ne 1b\n\t"                                                                                                    \
  "2:\n\t"                                                                                                         \
  "cbz %[tail], 3f\n\t"                                                                                            \
  "ldr d0, [%[p0]]\n\tld1 {v0.d}[1], [%[p2]]\n\t"                                                                  \
  "ldr d1, [%[p1]]\n\tld1 {v1.d}[1], [%[p3]]\n\t"                                                                  \
  TAIL                                                                                                             \
  "3:\n\t"                                                                                                         \
  FINISH                                                                                                           \
  "subs %[nblk], %[nblk], #1\n\t"                                                                                  \
  "b.ne 0b\n\t"
/* four channels' sums (lanes 0-3: pixel 0, 4-7: pixel 1, 16 bits in R) widened, + obias
 * + base, the epilogue EPI if fused, to out (channel ob's two pixels are adjacent in out:
 * STORE writes them as one pair) */
#define W2A2_HALF(R, XTL, XTL2, EPI, STORE)                                                                        \
  XTL " v5.4s, " R ".4h\n\t" XTL2 " v6.4s, " R ".8h\n\t"                                                           \
  "ldr q4, [%[obias]], #16\n\t"                                                                                    \
  "add v5.4s, v5.4s, v4.4s\n\tadd v5.4s, v5.4s, v28.4s\n\t"                                                        \
  "add v6.4s, v6.4s, v4.4s\n\tadd v6.4s, v6.4s, v29.4s\n\t"                                                        \
  EPI "zip1 v7.4s, v5.4s, v6.4s\n\tzip2 v16.4s, v5.4s, v6.4s\n\t" STORE
/* blocks of four: 16-bit pairwise adds, lanes 0-3 of v20 = channels 0-3 of pixel 0, 4-7 of pixel 1 */
#define W2A2_FINISH4(XTL, XTL2, EPI, STORE)                                                                        \
  "addp v20.8h, v20.8h, v21.8h\n\taddp v22.8h, v22.8h, v23.8h\n\taddp v20.8h, v20.8h, v22.8h\n\t"                  \
  "addp v24.8h, v24.8h, v25.8h\n\taddp v26.8h, v26.8h, v27.8h\n\taddp v24.8h, v24.8h, v26.8h\n\t"                  \
  "addp v20.8h, v20.8h, v24.8h\n\t" W2A2_HALF("v20", XTL, XTL2, EPI, STORE)
#define W2A2_BODY4(CONSTS, K01, K11, ACC0, ACC, ADDW, ADDW2, XTL, XTL2, EPI, STORE)                                \
  W2A2_LOOP(CONSTS, W2A2_STEP(ACC0, K01, K11), W2A2_STEP(ACC, K01, K11),                                           \
            W2A2_TAIL_OB("v20", "v24", K01, K11, ADDW, ADDW2) W2A2_TAIL_OB("v21", "v25", K01, K11, ADDW, ADDW2)    \
            W2A2_TAIL_OB("v22", "v26", K01, K11, ADDW, ADDW2) W2A2_TAIL_OB("v23", "v27", K01, K11, ADDW, ADDW2),   \
            W2A2_FINISH4(XTL, XTL2, EPI, STORE))
/* the int32 (or f32) results of a channel pair as 64-bit pairs */
#define W2A2_STORE32                                                                                              \
  "st1 {v7.d}[0], [%[out]], %[os]\n\tst1 {v7.d}[1], [%[out]], %[os]\n\t"                                           \
  "st1 {v16.d}[0], [%[out]], %[os]\n\tst1 {v16.d}[1], [%[out]], %[os]\n\t"
W2A2_ASM_FN(w2a2_pair_blocks, 4,
            W2A2_BODY4("movi v30.16b, #2\n\tmovi v31.16b, #4\n\t", "v30", "v31", "uaddlp", "uadalp", "uaddw", "uaddw2",
                       "uxtl", "uxtl2", "", W2A2_STORE32),
            "memory")
#define W2A2_TC_CONSTS "movi v30.16b, #2\n\tmovi v18.16b, #0xfe\n\tmovi v19.16b, #0xfc\n\t"
#define W2A2_BODY4_TC(CONSTS, EPI, STORE)                                                                          \
  W2A2_BODY4(W2A2_TC_CONSTS CONSTS, "v18", "v19", "saddlp", "sadalp", "saddw", "saddw2", "sxtl", "sxtl2", EPI, STORE)
W2A2_ASM_FN(w2a2_pair_blocks_tc, 4, W2A2_BODY4_TC("", "", W2A2_STORE32), "memory")
/* ... and with the epilogue fused (apply_epilogue's steps, in its order): float(acc) *
 * scale[o] + bias[o], max clamp_min, min clamp_max; for codes then roundeven(y * inv) + zp,
 * max qmin, min qmax, to int.  out is then the output itself, scale and bias the block's
 * first channel's, e = {clamp_min, clamp_max, inv, zp, qmin, qmax} (f32). */
#define W2A2_EPI_CONSTS                                                                                            \
  "ld1r {v31.4s}, [%[e]]\n\tadd %[t], %[e], #4\n\tld1r {v8.4s}, [%[t]]\n\t"                                       \
  "add %[t], %[e], #8\n\tld1r {v9.4s}, [%[t]]\n\tadd %[t], %[e], #12\n\tld1r {v10.4s}, [%[t]]\n\t"                 \
  "add %[t], %[e], #16\n\tld1r {v11.4s}, [%[t]]\n\tadd %[t], %[e], #20\n\tld1r {v12.4s}, [%[t]]\n\t"
/* (the constants' registers as arguments: the 8-channel asm keeps them elsewhere) */
#define W2A2_EPI_F32_R(LO, HI)                                                                                     \
  "scvtf v5.4s, v5.4s\n\tscvtf v6.4s, v6.4s\n\t"                                                                   \
  "ldr q4, [%[scale]], #16\n\tldr q7, [%[bias]], #16\n\t"                                                          \
  "fmul v5.4s, v5.4s, v4.4s\n\tfmul v6.4s, v6.4s, v4.4s\n\t"                                                       \
  "fadd v5.4s, v5.4s, v7.4s\n\tfadd v6.4s, v6.4s, v7.4s\n\t"                                                       \
  "fmax v5.4s, v5.4s, " LO ".4s\n\tfmax v6.4s, v6.4s, " LO ".4s\n\t"                                                 \
  "fmin v5.4s, v5.4s, " HI ".4s\n\tfmin v6.4s, v6.4s, " HI ".4s\n\t"
#define W2A2_EPI_CODES_R(LO, HI, INV, ZP, QMIN, QMAX)                                                              \
  W2A2_EPI_F32_R(LO, HI)                                                                                           \
  "fmul v5.4s, v5.4s, " INV ".4s\n\tfmul v6.4s, v6.4s, " INV ".4s\n\t"                                               \
  "frintn v5.4s, v5.4s\n\tfrintn v6.4s, v6.4s\n\t"                                                                 \
  "fadd v5.4s, v5.4s, " ZP ".4s\n\tfadd v6.4s, v6.4s, " ZP ".4s\n\t"                                                 \
  "fmax v5.4s, v5.4s, " QMIN ".4s\n\tfmax v6.4s, v6.4s, " QMIN ".4s\n\t"                                             \
  "fmin v5.4s, v5.4s, " QMAX ".4s\n\tfmin v6.4s, v6.4s, " QMAX ".4s\n\t"                                             \
  "fcvtzs v5.4s, v5.4s\n\tfcvtzs v6.4s, v6.4s\n\t"
#define W2A2_EPI_F32 W2A2_EPI_F32_R("v31", "v8")
#define W2A2_EPI_CODES W2A2_EPI_CODES_R("v31", "v8", "v9", "v10", "v11", "v12")
/* one-byte codes (they fit their byte; int8 stores the same bits): a channel's pixel pair as 16 bits */
#define W2A2_STORE8                                                                                               \
  "xtn v7.4h, v7.4s\n\txtn2 v7.8h, v16.4s\n\txtn v7.8b, v7.8h\n\t"                                                 \
  "st1 {v7.h}[0], [%[out]], %[os]\n\tst1 {v7.h}[1], [%[out]], %[os]\n\t"                                           \
  "st1 {v7.h}[2], [%[out]], %[os]\n\tst1 {v7.h}[3], [%[out]], %[os]\n\t"
W2A2_ASM_FN(w2a2_pair_blocks_tc_f32, 4, W2A2_BODY4_TC(W2A2_EPI_CONSTS, W2A2_EPI_F32, W2A2_STORE32), "v8", "v9",
            "v10", "v11", "v12", "memory")
W2A2_ASM_FN(w2a2_pair_blocks_tc_codes, 1, W2A2_BODY4_TC(W2A2_EPI_CONSTS, W2A2_EPI_CODES, W2A2_STORE8), "v8", "v9",
            "v10", "v11", "v12", "memory")

/* Blocks of eight channels (two's complement planes, LAYOUT_W2A2_TC8: og a multiple of 8):
 * the same arithmetic, the four activation loads of a step shared by twice the channels
 * (12 loads per 16 pixel-channel pairs instead of 16) and the pointer resets, loop
 * control and tail loads per 16 outputs instead of 8.  Accumulators: pixel 0 in v20-v27,
 * pixel 1 in v8-v15; the epilogue's constants are loaded into the freed v8-v13 after
 * each block's reduction (EPI_LOAD). */
#define W2A2_STEP8(ACC)                                                                                           \
  "ldr q0, [%[p0]], #16\n\tldr q1, [%[p1]], #16\n\tldr q2, [%[p2]], #16\n\tldr q3, [%[p3]], #16\n\t"                 \
  W2A2_OB(ACC, "v20", "v8", "v18", "v19") W2A2_OB(ACC, "v21", "v9", "v18", "v19")                                   \
  W2A2_OB(ACC, "v22", "v10", "v18", "v19") W2A2_OB(ACC, "v23", "v11", "v18", "v19")                                 \
  W2A2_OB(ACC, "v24", "v12", "v18", "v19") W2A2_OB(ACC, "v25", "v13", "v18", "v19")                                 \
  W2A2_OB(ACC, "v26", "v14", "v18", "v19") W2A2_OB(ACC, "v27", "v15", "v18", "v19")
#define W2A2_TAIL8_OB(A0, A1) W2A2_TAIL_OB(A0, A1, "v18", "v19", "saddw", "saddw2")
/* channels 0-3 (pixel 0 | pixel 1) into v20, channels 4-7 into v24 */
#define W2A2_FINISH8(EPI_LOAD, EPI, STORE)                                                                         \
  "addp v20.8h, v20.8h, v21.8h\n\taddp v22.8h, v22.8h, v23.8h\n\taddp v20.8h, v20.8h, v22.8h\n\t"                  \
  "addp v8.8h, v8.8h, v9.8h\n\taddp v10.8h, v10.8h, v11.8h\n\taddp v8.8h, v8.8h, v10.8h\n\t"                       \
  "addp v20.8h, v20.8h, v8.8h\n\t"                                                                                 \
  "addp v24.8h, v24.8h, v25.8h\n\taddp v26.8h, v26.8h, v27.8h\n\taddp v24.8h, v24.8h, v26.8h\n\t"                  \
  "addp v12.8h, v12.8h, v13.8h\n\taddp v14.8h, v14.8h, v15.8h\n\taddp v12.8h, v12.8h, v14.8h\n\t"                  \
  "addp v24.8h, v24.8h, v12.8h\n\t" EPI_LOAD                                                                       \
  W2A2_HALF("v20", "sxtl", "sxtl2", EPI, STORE) W2A2_HALF("v24", "sxtl", "sxtl2", EPI, STORE)
#define W2A2_BODY8(EPI_LOAD, EPI, STORE)                                                                           \
  W2A2_LOOP(W2A2_TC_CONSTS, W2A2_STEP8("saddlp"), W2A2_STEP8("sadalp"),                                            \
            W2A2_TAIL8_OB("v20", "v8") W2A2_TAIL8_OB("v21", "v9") W2A2_TAIL8_OB("v22", "v10")                     \
            W2A2_TAIL8_OB("v23", "v11") W2A2_TAIL8_OB("v24", "v12") W2A2_TAIL8_OB("v25", "v13")                   \
            W2A2_TAIL8_OB("v26", "v14") W2A2_TAIL8_OB("v27", "v15"),                                              \
            W2A2_FINISH8(EPI_LOAD, EPI, STORE))
#define W2A2_V8_15 "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15"
W2A2_ASM_FN(w2a2_pair_blocks8_tc, 4, W2A2_BODY8("", "", W2A2_STORE32), W2A2_V8_15, "memory")
W2A2_ASM_FN(w2a2_pair_blocks8_tc_f32, 4,
            W2A2_BODY8("ld2r {v8.4s, v9.4s}, [%[e]]\n\t", W2A2_EPI_F32_R("v8", "v9"), W2A2_STORE32), W2A2_V8_15,
            "memory")
W2A2_ASM_FN(w2a2_pair_blocks8_tc_codes, 1,
            W2A2_BODY8("ld4r {v8.4s, v9.4s, v10.4s, v11.4s}, [%[e]]\n\tld2r {v12.4s, v13.4s}, [%[e16]]\n\t",
                       W2A2_EPI_CODES_R("v8", "v9", "v10", "v11", "v12", "v13"), W2A2_STORE8),
            W2A2_V8_15, "memory")

/* out[ob * ostride + p] = dot(pixel p's row, channel ob) + obias[ob] + base[p] for OB
 * channels and NP pixels (rows r0, r1) */
INLINE void dot_block(const uint8_t* r0, const uint8_t* r1, const uint8_t* w, int rb, const int A, const int W,
                      const int OB, const int NP, int32_t* out, ptrdiff_t ostride, const int32_t* obias,
                      const int32_t* base) {
  uint32x4_t tot[16]; /* [p][ob] */
  if (rb <= NEON_CHUNK(A, W)) {
    _Pragma("GCC unroll 16") for (int k = 0; k < NP * OB; k++) tot[k] = vdupq_n_u32(0);
    dot_chunk(r0, r1, w, rb, 0, rb, A, W, OB, NP, tot);
  } else {
    _Pragma("GCC unroll 16") for (int k = 0; k < NP * OB; k++) tot[k] = vdupq_n_u32(0);
    for (int v0 = 0; v0 < rb; v0 += NEON_CHUNK(A, W))
      dot_chunk(r0, r1, w, rb, v0, v0 + NEON_CHUNK(A, W) < rb ? v0 + NEON_CHUNK(A, W) : rb, A, W, OB, NP, tot);
  }
  _Pragma("GCC unroll 2") for (int p = 0; p < NP; p++) {
    const uint32x4_t* tp = tot + p * OB;
    if (OB % 4 == 0) { /* four channels' sums in one register: pairwise adds */
      const int32x4_t b = vdupq_n_s32(base[p]);
      _Pragma("GCC unroll 4") for (int k = 0; k < OB; k += 4) {
        const uint32x4_t s = vpaddq_u32(vpaddq_u32(tp[k], tp[k + 1]), vpaddq_u32(tp[k + 2], tp[k + 3]));
        const int32x4_t r = vaddq_s32(vaddq_s32(vreinterpretq_s32_u32(s), vld1q_s32(obias + k)), b);
        int32_t* d = out + k * ostride + p;
        vst1q_lane_s32(d, r, 0);
        vst1q_lane_s32(d + ostride, r, 1);
        vst1q_lane_s32(d + 2 * ostride, r, 2);
        vst1q_lane_s32(d + 3 * ostride, r, 3);
      }
    } else {
      _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++)
        out[ob * ostride + p] = (int32_t)vaddvq_u32(tp[ob]) + obias[ob] + base[p];
    }
  }
}

INLINE void conv_row_impl(const row_args* ra, const int A, const int W) {
  const int OB = OB_OF(A, W), NP = FUSABLE(A, W) ? 2 : 1, rb = ra->rb, og = ra->og;
  const ptrdiff_t ostride = ra->ostride;
  int p = 0;
  /* two's complement planes in the W2A2 block layout (og a multiple of the block size):
   * every pixel pair through the asm variant for the block size and the fused epilogue */
#define W2A2_TC_PAIRS(FN, NB)                                                                                     \
  for (; p < ra->npix; p += 2) {                                                                                  \
    const uint8_t* row = ra->rows + (size_t)p * A * rb;                                                           \
    const uint8_t* twin = p + 1 < ra->npix ? row + A * rb : row;                                                  \
    if (ra->fused == FUSED_F32)                                                                                   \
      FN##_f32(row, twin, ra->w, rb, NB, ra->obias, ra->base + p, ra->out + p, ostride, ra->scale, ra->bias, ra->e); \
    else if (ra->fused == FUSED_CODES) /* out: one-byte codes */                                                  \
      FN##_codes(row, twin, ra->w, rb, NB, ra->obias, ra->base + p, (int32_t*)(void*)((uint8_t*)ra->out + p),     \
                 ostride, ra->scale, ra->bias, ra->e);                                                            \
    else                                                                                                          \
      FN(row, twin, ra->w, rb, NB, ra->obias, ra->base + p, ra->out + p, ostride, NULL, NULL, NULL);              \
  }
  if (A == 2 && W == 2 && ra->layout == LAYOUT_W2A2_TC8) {
    W2A2_TC_PAIRS(w2a2_pair_blocks8_tc, og / 8);
    return;
  }
  if (A == 2 && W == 2 && ra->layout == LAYOUT_W2A2_TC) {
    W2A2_TC_PAIRS(w2a2_pair_blocks_tc, og / 4);
    return;
  }
#undef W2A2_TC_PAIRS
  if (A == 2 && W == 2 && ra->layout == LAYOUT_W2A2) {
    /* weights in the W2A2 block layout: every pixel through the asm, an odd last one
     * paired with itself (its twin lands in the padding column: ostride > npix), then
     * the og % 4 channels left in the plain layout */
    const int nb = og / 4;
    for (; p < ra->npix; p += 2) {
      const uint8_t* row = ra->rows + (size_t)p * A * rb;
      w2a2_pair_blocks(row, p + 1 < ra->npix ? row + A * rb : row, ra->w, rb, nb, ra->obias, ra->base + p, ra->out + p,
                       ostride, NULL, NULL, NULL);
    }
    for (p = 0; p < ra->npix; p++) {
      const uint8_t* row = ra->rows + (size_t)p * A * rb;
      for (int o = nb * 4; o < og; o++)
        dot_block(row, row, ra->w + (size_t)o * W * rb, rb, A, W, 1, 1, ra->out + o * ostride + p, ostride,
                  ra->obias + o, ra->base + p);
    }
    return;
  }
  if (NP == 2) {
    for (; p + 2 <= ra->npix; p += 2) {
      const uint8_t* row = ra->rows + (size_t)p * A * rb;
      int o = 0;
      for (; o + OB <= og; o += OB)
        dot_block(row, row + A * rb, ra->w + (size_t)o * W * rb, rb, A, W, OB, 2, ra->out + o * ostride + p, ostride,
                  ra->obias + o, ra->base + p);
      for (; o < og; o++)
        dot_block(row, row + A * rb, ra->w + (size_t)o * W * rb, rb, A, W, 1, 2, ra->out + o * ostride + p, ostride,
                  ra->obias + o, ra->base + p);
    }
  }
  for (; p < ra->npix; p++) {
    const uint8_t* row = ra->rows + (size_t)p * A * rb;
    int o = 0;
    for (; o + OB <= og; o += OB)
      dot_block(row, row, ra->w + (size_t)o * W * rb, rb, A, W, OB, 1, ra->out + o * ostride + p, ostride,
                ra->obias + o, ra->base + p);
    for (; o < og; o++)
      dot_block(row, row, ra->w + (size_t)o * W * rb, rb, A, W, 1, 1, ra->out + o * ostride + p, ostride,
                ra->obias + o, ra->base + p);
  }
}

#elif defined(__AVX2__)
/* x86 without a vector popcount: per 32 bytes, AND, then popcount by nibble lookup
 * (vpshufb), byte counts summed in 8-bit lanes for up to 31 steps (31 * 8 < 256) and
 * flushed to 64-bit lanes with vpsadbw; the last rb % 32 bytes with the scalar popcount. */
#define OB_OF(A, W) ((A) * (W) >= 16 ? 1 : 16 / ((A) * (W)))
INLINE void dot_block(const uint8_t* row, const uint8_t* w, int rb, const int A, const int W, const int OB,
                      int32_t* out, ptrdiff_t ostride, const int32_t* obias, int32_t base) {
  const int ws = W * rb, rb32 = rb & ~31;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  __m256i tot[64]; /* [ob][i][j]: OB*A*W <= 49 */
  _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++)
  _Pragma("GCC unroll 8") for (int i = 0; i < A; i++)
  _Pragma("GCC unroll 8") for (int j = 0; j < W; j++) tot[(ob * A + i) * W + j] = _mm256_setzero_si256();
  for (int v0 = 0; v0 < rb32; v0 += 31 * 32) {
    const int v1 = v0 + 31 * 32 < rb32 ? v0 + 31 * 32 : rb32;
    __m256i acc[64];
    _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++)
    _Pragma("GCC unroll 8") for (int i = 0; i < A; i++)
    _Pragma("GCC unroll 8") for (int j = 0; j < W; j++) acc[(ob * A + i) * W + j] = _mm256_setzero_si256();
    for (int v = v0; v < v1; v += 32) {
      __m256i xv[8];
      _Pragma("GCC unroll 8") for (int i = 0; i < A; i++) xv[i] = _mm256_loadu_si256((const __m256i*)(row + i * rb + v));
      _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++)
      _Pragma("GCC unroll 8") for (int j = 0; j < W; j++) {
        const __m256i wv = _mm256_loadu_si256((const __m256i*)(w + ob * ws + j * rb + v));
        _Pragma("GCC unroll 8") for (int i = 0; i < A; i++) {
          const __m256i a = _mm256_and_si256(xv[i], wv);
          const __m256i c = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(a, low)),
                                            _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(a, 4), low)));
          acc[(ob * A + i) * W + j] = _mm256_add_epi8(acc[(ob * A + i) * W + j], c);
        }
      }
    }
    _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++)
    _Pragma("GCC unroll 8") for (int i = 0; i < A; i++)
    _Pragma("GCC unroll 8") for (int j = 0; j < W; j++)
      tot[(ob * A + i) * W + j] = _mm256_add_epi64(tot[(ob * A + i) * W + j], _mm256_sad_epu8(acc[(ob * A + i) * W + j], _mm256_setzero_si256()));
  }
  for (int ob = 0; ob < OB; ob++) {
    int64_t s = 0;
    for (int i = 0; i < A; i++)
      for (int j = 0; j < W; j++) {
        int64_t q[4];
        memcpy(q, &tot[(ob * A + i) * W + j], sizeof(q));
        int64_t c = q[0] + q[1] + q[2] + q[3];
        for (int v = rb32; v < rb; v += 8) {
          uint64_t a, b;
          memcpy(&a, row + i * rb + v, 8);
          memcpy(&b, w + ob * ws + j * rb + v, 8);
          c += __builtin_popcountll(a & b);
        }
        s += c << (i + j);
      }
    out[ob * ostride] = (int32_t)s + obias[ob] + base;
  }
}
#else
#define OB_OF(A, W) ((A) * (W) >= 16 ? 1 : 16 / ((A) * (W)))
INLINE void dot_block(const uint8_t* row, const uint8_t* w, int rb, const int A, const int W, const int OB,
                      int32_t* out, ptrdiff_t ostride, const int32_t* obias, int32_t base) {
  const int ws = W * rb;
  uint32_t acc[64];
  memset(acc, 0, sizeof(acc));
  for (int v = 0; v < rb; v += 8) {
    uint64_t xv[8];
    _Pragma("GCC unroll 8") for (int i = 0; i < A; i++) memcpy(&xv[i], row + i * rb + v, 8);
    _Pragma("GCC unroll 16") for (int ob = 0; ob < OB; ob++)
    _Pragma("GCC unroll 8") for (int j = 0; j < W; j++) {
      uint64_t wv;
      memcpy(&wv, w + ob * ws + j * rb + v, 8);
      _Pragma("GCC unroll 8") for (int i = 0; i < A; i++) acc[(ob * A + i) * W + j] += (uint32_t)__builtin_popcountll(xv[i] & wv);
    }
  }
  for (int ob = 0; ob < OB; ob++) {
    uint32_t s = 0;
    for (int i = 0; i < A; i++)
      for (int j = 0; j < W; j++) s += acc[(ob * A + i) * W + j] << (i + j);
    out[ob * ostride] = (int32_t)s + obias[ob] + base;
  }
}

#endif

#if !defined(__aarch64__)
INLINE void conv_row_impl(const row_args* ra, const int A, const int W) {
  const int OB = OB_OF(A, W), rb = ra->rb, og = ra->og;
  const ptrdiff_t ostride = ra->ostride;
  for (int p = 0; p < ra->npix; p++) {
    const uint8_t* row = ra->rows + (size_t)p * A * rb;
    int32_t* out = ra->out + p;
    int o = 0;
    for (; o + OB <= og; o += OB)
      dot_block(row, ra->w + (size_t)o * W * rb, rb, A, W, OB, out + o * ostride, ostride, ra->obias + o, ra->base[p]);
    for (; o < og; o++)
      dot_block(row, ra->w + (size_t)o * W * rb, rb, A, W, 1, out + o * ostride, ostride, ra->obias + o, ra->base[p]);
  }
}
#endif

typedef void (*row_fn)(const row_args*);
#define DEFINE_PAIR(A, W) \
  static void conv_row_##A##_##W(const row_args* ra) { conv_row_impl(ra, A, W); }

#define PAIRS(X)                                                                                 \
  X(1, 1) X(1, 2) X(1, 3) X(1, 4) X(1, 5) X(1, 6) X(1, 7)                                        \
  X(2, 1) X(2, 2) X(2, 3) X(2, 4) X(2, 5) X(2, 6) X(2, 7)                                        \
  X(3, 1) X(3, 2) X(3, 3) X(3, 4) X(3, 5) X(3, 6) X(3, 7)                                        \
  X(4, 1) X(4, 2) X(4, 3) X(4, 4) X(4, 5) X(4, 6) X(4, 7)                                        \
  X(5, 1) X(5, 2) X(5, 3) X(5, 4) X(5, 5) X(5, 6) X(5, 7)                                        \
  X(6, 1) X(6, 2) X(6, 3) X(6, 4) X(6, 5) X(6, 6) X(6, 7)                                        \
  X(7, 1) X(7, 2) X(7, 3) X(7, 4) X(7, 5) X(7, 6) X(7, 7)

PAIRS(DEFINE_PAIR)

/* The width pairs a library carries: all 49, or (built with -DSLIVER_LOWBIT_SELECT, as
 * lowbit.py builds artifacts) only those defined as -DSLIVER_LOWBIT_PAIR_<A>_<W>=1: the
 * ones its layers use (each pair is ~5 KB of unrolled code; the others are dropped as
 * unreferenced). */
#define SLIVER_PLACEHOLDER_1 0,
#define SLIVER_SECOND(ignored, val, ...) val
#define SLIVER_IS_ONE(x) SLIVER_IS_ONE_(x)
#define SLIVER_IS_ONE_(val) SLIVER_IS_ONE__(SLIVER_PLACEHOLDER_##val)
#define SLIVER_IS_ONE__(arg) SLIVER_SECOND(arg 1, 0, 0)
#ifdef SLIVER_LOWBIT_SELECT
#define PAIR_BUILT(A, W) SLIVER_IS_ONE(SLIVER_LOWBIT_PAIR_##A##_##W)
#else
#define PAIR_BUILT(A, W) 1
#endif
#define TABLE_ENTRY(A, W) (PAIR_BUILT(A, W) ? conv_row_##A##_##W : (row_fn)0),
static const row_fn ROW_FNS[49] = {PAIRS(TABLE_ENTRY)};

/* Bit planes of 8 channels' codes (bytes of v, one per channel; channels >= nc zero)
 * for ab planes, written to dst[i * pstride]: bit k of plane i = bit i of channel k. */
static inline void planes_of_word(uint64_t v, int ab, uint8_t* dst, size_t pstride) {
  for (int i = 0; i < ab; i++)
    dst[i * pstride] = (uint8_t)((((v >> i) & 0x0101010101010101ull) * 0x0102040810204080ull) >> 56);
}

#if defined(__aarch64__)
/* Plane i of 8 channel bytes (x[k]: channel k, one lane per pixel): bit k of each lane
 * is bit i of x[k].  Shift-left-and-insert keeps the bits below k. */
INLINE uint8x16_t plane_of_bytes(const uint8x16_t x[8], int i) {
  uint8x16_t y[8];
  const int8x16_t sh = vdupq_n_s8((int8_t)-i);
  _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) y[k] = i ? vshlq_u8(x[k], sh) : x[k];
  uint8x16_t r = y[0];
  r = vsliq_n_u8(r, y[1], 1);
  r = vsliq_n_u8(r, y[2], 2);
  r = vsliq_n_u8(r, y[3], 3);
  r = vsliq_n_u8(r, y[4], 4);
  r = vsliq_n_u8(r, y[5], 5);
  r = vsliq_n_u8(r, y[6], 6);
  r = vsliq_n_u8(r, y[7], 7);
  return r;
}

/* Bit-pack 16 consecutive pixels of one input row: channel byte cb of the tap (8 channels
 * from src + k*HW, nc of them real) for every plane, to dst + i*pstride + p*tapb. */
INLINE void pack16(const uint8_t* src, size_t HW, int nc, uint8_t flip, int ab, uint8_t* dst, size_t pstride,
                   int tapb) {
  uint8x16_t x[8];
  const uint8x16_t f = vdupq_n_u8(flip);
  _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) x[k] = k < nc ? veorq_u8(vld1q_u8(src + k * HW), f) : vdupq_n_u8(0);
  for (int i = 0; i < ab; i++) {
    const uint8x16_t r = plane_of_bytes(x, i);
    uint8_t* d = dst + i * pstride;
    if (tapb == 1) {
      vst1q_u8(d, r);
    } else {
#define LANE(p) vst1q_lane_u8(d + (p) * tapb, r, p);
      LANE(0) LANE(1) LANE(2) LANE(3) LANE(4) LANE(5) LANE(6) LANE(7)
      LANE(8) LANE(9) LANE(10) LANE(11) LANE(12) LANE(13) LANE(14) LANE(15)
#undef LANE
    }
  }
}

/* Bit-pack 16 consecutive pixels of one input row for 8 channel bytes at once (64
 * channels from src + k*HW, nc of them real): per plane, the 8 bytes of each pixel are
 * gathered in registers (a byte/halfword/word zip transpose) and written as whole taps
 * (tapb a multiple of 8), instead of 16 single-byte stores per channel byte. */
INLINE void pack16x8(const uint8_t* src, size_t HW, int nc, uint8_t flip, int ab, uint8_t* dst, size_t pstride,
                     int tapb) {
  uint8x16_t tile[7][8]; /* [plane][channel byte]: lane p = pixel p */
  const uint8x16_t f = vdupq_n_u8(flip);
  for (int cb = 0; cb < 8; cb++) {
    uint8x16_t x[8];
    _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) {
      const int c = cb * 8 + k;
      x[k] = c < nc ? veorq_u8(vld1q_u8(src + c * HW), f) : vdupq_n_u8(0);
    }
    for (int i = 0; i < ab; i++) tile[i][cb] = plane_of_bytes(x, i);
  }
  for (int i = 0; i < ab; i++) {
    const uint8x16_t* t = tile[i];
    const uint8x16x2_t a01 = vzipq_u8(t[0], t[1]), a23 = vzipq_u8(t[2], t[3]);
    const uint8x16x2_t a45 = vzipq_u8(t[4], t[5]), a67 = vzipq_u8(t[6], t[7]);
#define U16(v) vreinterpretq_u16_u8(v)
    const uint16x8x2_t b0 = vzipq_u16(U16(a01.val[0]), U16(a23.val[0])), b1 = vzipq_u16(U16(a01.val[1]), U16(a23.val[1]));
    const uint16x8x2_t c0 = vzipq_u16(U16(a45.val[0]), U16(a67.val[0])), c1 = vzipq_u16(U16(a45.val[1]), U16(a67.val[1]));
#undef U16
#define U32(v) vreinterpretq_u32_u16(v)
    uint32x4x2_t d[4];
    d[0] = vzipq_u32(U32(b0.val[0]), U32(c0.val[0])); /* pixels 0, 1 | 2, 3 */
    d[1] = vzipq_u32(U32(b0.val[1]), U32(c0.val[1])); /* 4, 5 | 6, 7 */
    d[2] = vzipq_u32(U32(b1.val[0]), U32(c1.val[0])); /* 8, 9 | 10, 11 */
    d[3] = vzipq_u32(U32(b1.val[1]), U32(c1.val[1])); /* 12, 13 | 14, 15 */
#undef U32
    uint8_t* o = dst + i * pstride;
    if (tapb == 8) {
      _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++) {
        vst1q_u8(o + 32 * q, vreinterpretq_u8_u32(d[q].val[0]));
        vst1q_u8(o + 32 * q + 16, vreinterpretq_u8_u32(d[q].val[1]));
      }
    } else {
      _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++)
      _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {
        const uint8x16_t v = vreinterpretq_u8_u32(d[q].val[h]);
        vst1_u8(o + (4 * q + 2 * h) * tapb, vget_low_u8(v));
        vst1_u8(o + (4 * q + 2 * h + 1) * tapb, vget_high_u8(v));
      }
    }
  }
}
#endif

/* Copy n bytes (n >= 1) with a few wide moves (the last one overlapping). */
static inline void copy_bytes(uint8_t* d, const uint8_t* s, int n) {
  if (n >= 16) {
    int k = 0;
    for (; k + 16 <= n; k += 16) memcpy(d + k, s + k, 16);
    if (k < n) memcpy(d + n - 16, s + n - 16, 16);
  } else if (n >= 8) {
    memcpy(d, s, 8);
    memcpy(d + n - 8, s + n - 8, 8);
  } else {
    for (int k = 0; k < n; k++) d[k] = s[k];
  }
}

/* n bytes, n a compile-time constant: 16- and 8-byte moves */
INLINE void copy_fixed(uint8_t* d, const uint8_t* s, const int n) {
  int k = 0;
  for (; k + 16 <= n; k += 16) memcpy(d + k, s + k, 16);
  if (n - k >= 8) {
    memcpy(d + k, s + k, 8);
    k += 8;
  }
  for (; k < n; k++) d[k] = s[k];
}

/* The im2col copies of one kernel row and plane for cnt output pixels: n bytes from
 * s + p*sstep to d + p*dstep (the row sizes of common layers get straight-line moves). */
static inline __attribute__((optimize("no-tree-loop-distribute-patterns"))) void copy_strided(
    uint8_t* d, ptrdiff_t dstep, const uint8_t* s, ptrdiff_t sstep, int n, int cnt) {
#define COPY_N(N) \
  case N:         \
    for (int p = 0; p < cnt; p++, d += dstep, s += sstep) copy_fixed(d, s, N); \
    break;
  switch (n) {
    COPY_N(8) COPY_N(12) COPY_N(16) COPY_N(24) COPY_N(48) COPY_N(96)
    default:
      for (int p = 0; p < cnt; p++, d += dstep, s += sstep) copy_bytes(d, s, n);
  }
#undef COPY_N
}

/* The bit-serial kernel's geometry and buffers for one call.  Its phases are functions
 * of their own (noinline: one call per image and group, or per output row), so the
 * instruction counter (sliver.tools.emulator.icount, bench_lowbit's breakdown) attributes
 * the executed instructions to them: pack_input (1), pixel_sums and window_sums (the
 * Sx of the zero-point fold, only with a weight zero point), im2col_row (2),
 * conv_row_A_W (3: the dot products), apply_epilogue (4). */
typedef struct {
  int C, H, W, KH, KW, SH, SW, PT, PL, DH, DW, Cg, OW, HP, WP, AB, TAPB, RB, aflip;
  size_t PSTR;              /* bytes of one padded input row of one plane */
  uint8_t* pk;              /* the padded, bit-packed input of a group [HP][AB][PSTR] */
  uint8_t* rows;            /* the im2col rows of one output row [OW][AB][RB] */
  uint8_t* flat;            /* NULL, or the packed input as one run of H*W pixels [AB][H*W*TAPB] (pack_input) */
  int32_t *px, *colsum, *sx; /* code sums per padded pixel [HP*WP], per column [WP], -wz*Sx per output [OWS] */
  int32_t* acc;             /* the sums of one output row [Og][OWS] (unless the row function applies the epilogue) */
} bs_call;

/* Bit-pack `width` consecutive pixels (src: channel 0 of the first; channels HW apart)
 * into dst + i*pstride (plane i) + p*TAPB (pixel p). */
static inline void pack_pixels(const bs_call* b, const uint8_t* src, int width, uint8_t* dst, size_t pstride) {
  const int AB = b->AB, TAPB = b->TAPB, Cg = b->Cg, aflip = b->aflip;
  const size_t HW = (size_t)b->H * b->W;
  const uint64_t flip8 = 0x0101010101010101ull * (uint64_t)aflip;
  int cb = 0;
#if defined(__aarch64__)
  /* 64 channels (8 channel bytes) and 16 pixels at a time, taps written whole */
  if (width >= 16 && TAPB % 8 == 0)
    for (; cb < TAPB; cb += 8)
      for (int ww = 0; ww < width; ww += 16) {
        const int w0 = ww + 16 <= width ? ww : width - 16;
        pack16x8(src + (size_t)cb * 8 * HW + w0, HW, Cg - cb * 8, (uint8_t)aflip, AB, dst + (size_t)w0 * TAPB + cb,
                 pstride, TAPB);
      }
#endif
  for (; cb < TAPB; cb++) {
    const int c0 = cb * 8, nc = Cg - c0 < 8 ? Cg - c0 : 8;
    const uint8_t* s8 = src + (size_t)c0 * HW;
    int ww = 0;
#if defined(__aarch64__)
    /* 16 pixels at a time; a last partial group overlaps the previous one */
    if (width >= 16) {
      for (; ww < width; ww += 16) {
        const int w0 = ww + 16 <= width ? ww : width - 16;
        pack16(s8 + w0, HW, nc, (uint8_t)aflip, AB, dst + (size_t)w0 * TAPB + cb, pstride, TAPB);
      }
    }
#endif
    for (; ww < width; ww++) {
      /* 8 channels' codes as the bytes of one word, then plane i's bits gathered
       * into one byte by a multiply (byte k's bit 0 -> bit k of the top byte) */
      uint64_t v = 0;
      for (int k = 0; k < nc; k++) v |= (uint64_t)s8[k * HW + ww] << (8 * k);
      v ^= flip8 & (nc == 8 ? ~0ull : (1ull << (8 * nc)) - 1);
      planes_of_word(v, AB, dst + (size_t)ww * TAPB + cb, pstride);
    }
  }
}

/* 1. bit-pack input rows [h0, h1) of one group (xg: its first channel) into pk's interior
 * (a slice packs the rows its output rows read): row by row, or, for rows narrower than
 * the 16 pixels the NEON packing takes at a time (14x14, 7x7 layers), the rows as one run
 * of pixels into b->flat, then copied into place */
static __attribute__((noinline, optimize("no-tree-loop-distribute-patterns"))) void pack_input(const bs_call* b,
                                                                                              const uint8_t* xg,
                                                                                              int h0, int h1) {
  const int W = b->W, AB = b->AB, TAPB = b->TAPB;
  const size_t PSTR = b->PSTR, row = (size_t)W * TAPB;
  uint8_t* interior = b->pk + (size_t)b->PT * AB * PSTR + (size_t)b->PL * TAPB;
  if (b->flat) {
    const size_t fstr = (size_t)(h1 - h0) * row;
    pack_pixels(b, xg + (size_t)h0 * W, (h1 - h0) * W, b->flat, fstr);
    for (int h = h0; h < h1; h++)
      for (int i = 0; i < AB; i++)
        copy_bytes(interior + ((size_t)h * AB + i) * PSTR, b->flat + i * fstr + (size_t)(h - h0) * row, (int)row);
    return;
  }
  for (int h = h0; h < h1; h++) pack_pixels(b, xg + (size_t)h * W, W, interior + (size_t)h * AB * PSTR, PSTR);
}

/* the code sum of every padded input pixel of rows [hp0, hp1) (its planes' popcounts,
 * plane i weighing 2^i) */
static __attribute__((noinline)) void pixel_sums(const bs_call* b, int hp0, int hp1) {
  const int WP = b->WP, AB = b->AB, TAPB = b->TAPB;
  const size_t PSTR = b->PSTR;
  const uint8_t* pk = b->pk;
  int32_t* px = b->px;
  for (int hp = hp0; hp < hp1; hp++)
    for (int wq = 0; wq < WP; wq++) {
      int32_t t = 0;
      for (int i = 0; i < AB; i++) t += (int32_t)count_bytes(pk + (hp * AB + i) * PSTR + (size_t)wq * TAPB, TAPB) << i;
      px[(size_t)hp * WP + wq] = t;
    }
}

/* 2. the im2col rows of output row oh: per kernel row and plane, KW*TAPB contiguous
 * bytes (one copy), or a copy per tap when the width is dilated */
static __attribute__((noinline, optimize("no-tree-loop-distribute-patterns"))) void im2col_row(const bs_call* b, int oh) {
  const int AB = b->AB, RB = b->RB, TAPB = b->TAPB, KW = b->KW;
  for (int kh = 0; kh < b->KH; kh++) {
    const uint8_t* s = b->pk + (size_t)(oh * b->SH + kh * b->DH) * AB * b->PSTR;
    for (int i = 0; i < AB; i++) {
      uint8_t* d = b->rows + (size_t)i * RB + kh * KW * TAPB;
      const uint8_t* si = s + i * b->PSTR;
      if (b->DW == 1) {
        copy_strided(d, (ptrdiff_t)AB * RB, si, (ptrdiff_t)b->SW * TAPB, KW * TAPB, b->OW);
      } else {
        for (int kw = 0; kw < KW; kw++)
          copy_strided(d + kw * TAPB, (ptrdiff_t)AB * RB, si + (size_t)kw * b->DW * TAPB, (ptrdiff_t)b->SW * TAPB, TAPB,
                       b->OW);
      }
    }
  }
}

/* -wz * Sx of each output pixel of row oh: its window's sum of the input pixels' code sums */
static __attribute__((noinline)) void window_sums(const bs_call* b, int oh, int wz) {
  const int WP = b->WP, OW = b->OW, KH = b->KH, KW = b->KW, SW = b->SW, DW = b->DW;
  const int32_t* px = b->px + (size_t)oh * b->SH * WP;
  const size_t rstep = (size_t)b->DH * WP;
  int32_t *colsum = b->colsum, *sx = b->sx;
  for (int wq = 0; wq < WP; wq++) {
    int32_t t = 0;
    for (int kh = 0; kh < KH; kh++) t += px[kh * rstep + wq];
    colsum[wq] = t;
  }
  for (int ow = 0; ow < OW; ow++) {
    int32_t t = 0;
    for (int kw = 0; kw < KW; kw++) t += colsum[ow * SW + kw * DW];
    sx[ow] = -wz * t;
  }
}

/* What a bit-serial call's slices share, and their scratch (one bs_call each). */
typedef struct {
  const uint8_t *x, *wp, *zpat;
  uint8_t* out;
  const int32_t* obias;
  epilogue epi;
  const float* e6;
  row_fn fn;
  int N, G, O, OH, Og, WB, wz, layout, fused, OWS;
  size_t osz;
  const bs_call* slices;
} bs_job;
/* A call's work, for deciding whether to wake the pool: per output value (pixel x
 * channel) its row's byte ANDs plus a fixed cost worth BITSERIAL_PER_OUTPUT of them (the
 * horizontal sums, im2col and epilogue; fitted on x86 to the small CNN's layers, 0.34-0.66
 * ms at one thread: about 36 ns per output value there, with 46 byte ANDs per ns).  Calls
 * below BITSERIAL_MIN_WORK (about 85 us of work there) run serially: waking the pool costs
 * tens of microseconds on a busy machine; see docs/lowbit-kernels.md. */
#define BITSERIAL_PER_OUTPUT 1600.0
#define BITSERIAL_MIN_WORK 4e6

/* Slice s of nslice: its share of the output rows of every (image, group), in order.
 * For each (image, group) it meets it packs the input rows those output rows read, then
 * per output row: 2. im2col, 3. dot products, 4. epilogue. */
static __attribute__((optimize("no-tree-loop-distribute-patterns"))) void bitserial_slice(void* job, int s,
                                                                                        int nslice) {
  const bs_job* j = (const bs_job*)job;
  const bs_call* b = &j->slices[s];
  const int H = b->H, W = b->W, C = b->C, Cg = b->Cg, OW = b->OW, AB = b->AB, TAPB = b->TAPB, RB = b->RB;
  const int HP = b->HP, WP = b->WP, PT = b->PT, PL = b->PL, G = j->G, OH = j->OH, Og = j->Og, wz = j->wz;
  const size_t PSTR = b->PSTR;
  long lo, hi;
  slice_range((long)j->N * G * OH, s, nslice, &lo, &hi);
  if (lo >= hi) return;
  /* the border of the padded input: written once, the interior is packed per image and group */
  for (int hp = 0; hp < HP; hp++) {
    const int inside = hp >= PT && hp < PT + H; /* interior rows: only the left and right border */
    for (int i = 0; i < AB; i++)
      for (int wq = 0; wq < WP; wq++) {
        if (inside && wq == PL) wq = PL + W;
        if (wq < WP) copy_bytes(b->pk + (hp * AB + i) * PSTR + (size_t)wq * TAPB, j->zpat + i * TAPB, TAPB);
      }
  }
  const epilogue* epi = &j->epi;
  const ptrdiff_t ostride = (ptrdiff_t)OH * OW;
  for (long item = lo; item < hi;) {
    int n, g, oh0, oh1, hp0, hp1, h0, h1;
    const long next = next_run(item, hi, G, OH, &n, &g, &oh0, &oh1);
    rows_read(oh0, oh1, b->SH, b->KH, b->DH, PT, H, &hp0, &hp1, &h0, &h1);
    if (h0 < h1) pack_input(b, j->x + ((size_t)n * C + (size_t)g * Cg) * H * W, h0, h1);
    if (wz) pixel_sums(b, hp0, hp1);
    const uint8_t* wg = j->wp + (size_t)g * Og * j->WB * RB;
    const epilogue eg = group_epilogue(epi, g, Og);
    for (int oh = oh0; oh < oh1; oh++) {
      im2col_row(b, oh);
      if (wz) window_sums(b, oh, wz);
      /* 3. popcount dot products, zero points folded, written to out[n, g*Og + o, oh, ow] */
      uint8_t* orow = j->out + ((((size_t)n * j->O + (size_t)g * Og) * OH + oh) * OW) * j->osz;
      const row_args ra = {b->rows, wg, RB, Og, OW, j->fused ? (int32_t*)(void*)orow : b->acc,
                           j->fused ? ostride : j->OWS, j->obias + g * Og, b->sx, j->layout, j->fused,
                           eg.scale, eg.bias, j->e6};
      j->fn(&ra);
      /* 4. the epilogue into out[n, g*Og + o, oh, :] (unless fused into 3) */
      if (!j->fused) apply_epilogue(&eg, b->acc, j->OWS, Og, OW, orow, ostride);
    }
    item = next;
  }
}

/* args: x codes int8/uint8 [N][C][H][W], packed weights uint8 [O][WB][RB],
 * wsum int32 [O], meta int32 [META_LEN], scale/bias f32 [O], epi f32 [4], out f32 or codes [N][O][OH][OW]. */
/* (no-tree-loop-distribute-patterns: the short copies stay inline moves instead of
 * becoming libc memcpy calls) */
SLIVER_EXTERN __attribute__((optimize("no-tree-loop-distribute-patterns"))) int __tvm_ffi_sliver_lowbit_bitserial(
    void* self, const sliver_Any* args, int32_t nargs, sliver_Any* result) {
  (void)self;
  kernel_args ka;
  if (unpack_args(args, nargs, "sliver_lowbit_bitserial: expected 8 arguments (x, packed w, wsum, meta, scale, bias, epi, out)", &ka)) return -1;
  const uint8_t *x = ka.x, *wp = ka.w;
  const int32_t *wsum = ka.wsum, *m = ka.m;
  uint8_t* out = (uint8_t*)ka.out;
  epilogue epi;
  make_epilogue(&ka, &epi);
  const size_t osz = out_size(m);
  CONV_GEOMETRY(m);
  const int AB = m[M_ABITS], WB = m[M_WBITS], wz = m[M_WZ];
  /* Signed activation codes become offset binary (x + 2^(A-1): flip the top bit), the
   * zero point moving with them, so every plane weighs +2^i.  (Signed weights arrive
   * packed that way already: WSIGNED must be 0.) */
  const int aflip = m[M_ASIGNED] ? 1 << (AB - 1) : 0;
  const int xz = m[M_XZ] + aflip;
  const int TAPB = m[M_TAPB];
  if (AB < 1 || AB > 7 || WB < 1 || WB > 7 || RB % ROW_ALIGN || RB < KH * KW * TAPB || m[M_WSIGNED])
    return fail("sliver_lowbit_bitserial: bad meta (bit widths 1..7, row bytes a multiple of 8, "
                "unsigned weight planes): the library was built by a different sliver");
  const row_fn fn = ROW_FNS[(AB - 1) * 7 + (WB - 1)];
  if (!fn)
    return fail("sliver_lowbit_bitserial: this library was built without the kernel for the layer's bit widths "
                "(SLIVER_LOWBIT_PAIR_<A>_<W>): the library was built by a different sliver");
  const int layout = m[M_LAYOUT];
#if defined(__aarch64__)
  const int blocks = W2A2_BLOCKS(AB, WB, RB, Og);
  const int layout_ok = blocks ? layout == LAYOUT_W2A2 || (layout == LAYOUT_W2A2_TC && W2A2_TC_OK(RB, Og)) ||
                                     (layout == LAYOUT_W2A2_TC8 && W2A2_TC_OK(RB, Og) && Og % 8 == 0)
                               : layout == LAYOUT_PLAIN;
#else
  const int layout_ok = layout == LAYOUT_PLAIN;
#endif
  if (!layout_ok)
    return fail("sliver_lowbit_bitserial: the weights are not in the layout this kernel reads (meta LAYOUT): "
                "the library was built by a different sliver");
  const int OWS = OW + (OW & 1); /* the row sums' stride: an odd row gets a padding column */
  /* the W2A2 asm applies the epilogue and writes the output itself (an even row: its
   * pixel pairs never spill over) */
  const int fused = (layout != LAYOUT_W2A2_TC && layout != LAYOUT_W2A2_TC8) || OW % 2 ? FUSED_NONE
                    : epi.kind == OUT_F32                                         ? FUSED_F32
                                                                                  : FUSED_CODES;
  const float e6[6] = {epi.lo, epi.hi, epi.inv, epi.zp, epi.qmin, epi.qmax};

  /* The padded input of one group, bit-packed: per input row hp and plane i, the WP
   * pixels' TAPB-byte taps in a row (pk[(hp*AB + i)*PSTR + wq*TAPB]), so the KW taps of
   * one kernel row are contiguous (stride-1 width, no dilation: one copy per row). */
  const bs_call geo = {C, H, W, KH, KW, SH, SW, PT, PL, DH, DW, Cg, OW, HP, WP, AB, TAPB, RB, aflip, (size_t)WP * TAPB,
                       NULL, NULL, NULL, NULL, NULL, NULL, NULL};
  /* The output rows of all images and groups are cut into slices run on TVM's pool, each
   * with its own scratch (bs_call): packed input, im2col rows, sums.  All of it is
   * allocated here, before any output is written. */
  const long items = (long)N * G * OH;
  const int nslice =
      pool_slices(items, (double)items * OW * Og * ((double)RB * AB * WB + BITSERIAL_PER_OUTPUT), BITSERIAL_MIN_WORK);
#if defined(__aarch64__)
  const int flat = W < 16 && H * W >= 16;
#else
  const int flat = 0;
#endif
  enum { S_PK, S_ROWS, S_FLAT, S_SX, S_PX, S_ACC, S_N };
  const size_t sizes[S_N] = {(size_t)HP * AB * geo.PSTR, (size_t)OW * AB * RB, flat ? (size_t)AB * H * W * TAPB : 0,
                             sizeof(int32_t) * OWS, sizeof(int32_t) * ((size_t)HP * WP + WP),
                             sizeof(int32_t) * (size_t)Og * OWS};
  const size_t slice_bytes = carve(NULL, sizes, NULL, S_N);
  uint8_t* scratch = (uint8_t*)calloc(nslice, slice_bytes);
  bs_call* slices = (bs_call*)malloc(sizeof(bs_call) * nslice);
  int32_t* obias = (int32_t*)malloc(sizeof(int32_t) * O);
  uint8_t* zpat = (uint8_t*)calloc((size_t)AB * TAPB, 1);
  if (!scratch || !slices || !obias || !zpat) {
    free(scratch); free(slices); free(obias); free(zpat);
    return fail("sliver_lowbit_bitserial: out of memory for the packed activations");
  }
  for (int s = 0; s < nslice; s++) {
    void* p[S_N];
    carve(scratch + (size_t)s * slice_bytes, sizes, p, S_N);
    bs_call* b = &slices[s];
    *b = geo;
    b->pk = (uint8_t*)p[S_PK];
    b->rows = (uint8_t*)p[S_ROWS];
    b->flat = (uint8_t*)p[S_FLAT];
    b->sx = (int32_t*)p[S_SX];
    b->px = (int32_t*)p[S_PX];
    b->colsum = b->px + (size_t)HP * WP;
    b->acc = (int32_t*)p[S_ACC];
  }
  /* acc = Sxw - wz*Sx - xz*Sw[o] + K*xz*wz: the last two per output channel */
  for (int o = 0; o < O; o++) obias[o] = K * xz * wz - xz * wsum[o];
  /* a padded pixel holds the code xz in every real channel of the group */
  for (int c = 0; c < Cg; c++)
    for (int i = 0; i < AB; i++) zpat[i * TAPB + c / 8] |= (uint8_t)((((unsigned)xz >> i) & 1u) << (c % 8));
  const bs_job job = {x, wp, zpat, out, obias, epi, e6, fn, N, G, O, OH, Og, WB, wz, layout, fused, OWS, osz, slices};
  pool_job pj = {bitserial_slice, (void*)&job, nslice};
  pool_run(&pj);
  free(scratch); free(slices); free(obias); free(zpat);
  return return_none(result);
}

/* ---- the int8 kernel: qconv2d / qdense with codes of up to 8 bits, byte per code ----
 *
 *   acc = sum (x' - xz')(w' - wz') = Sx'w' - wz'*Sx' - xz'*Sw'[o] + K*xz'*wz'
 *
 * on signed bytes: unsigned activation codes become x' = x - 128 here (flip the top
 * bit), unsigned weight codes w' = w - 128 at compile time (lowbit.py), the zero points
 * moving with them.  Weights: int8 [O][RB], the taps (kh, kw) in order, Cg bytes each
 * (TAPB = Cg), zero-filled to RB (a multiple of 16).  Activations: the padded input of
 * a group as [hp][wp][Cg] bytes (the border holds xz'), im2col rows built per output row
 * as in the bit-serial kernel; Sx' per row.
 * aarch64 with the dot product extension (Cortex-A76, the Pi 5): per 16 bytes and output
 * channel one `sdot` (four s8 x s8 products into each int32 lane, exact).  ARMv8.0
 * (Cortex-A72, the Pi 4: no sdot): `smull` + `smlal2` (two products per 16-bit lane:
 * safe when no weight is -128, which the compiler checks and states in WSIGNED=1;
 * otherwise `smull` + `smull2`) and `sadalp` into 32-bit lanes; register tiles of 4
 * pixels x 4 output channels (i8n_tile).  On aarch64, symmetric weights with Cg a multiple
 * of 16 take the direct form (i8_direct: no im2col rows).  x86 with AVX-512 VNNI / AVX-VNNI: activations stay unsigned (signed codes
 * become x + 128, I8_UNSIGNED_X) and `vpdpbusd` multiplies u8 x s8, four products into
 * each int32 lane, exact (no saturation: that is `vpdpbusds`).  x86 AVX2: bytes widened
 * to int16 and `vpmaddwd` (exact; `vpmaddubsw` would saturate its int16 pair sums on
 * 8-bit activations).  Elsewhere: scalar.  The compiler records the choice
 * (``Target.int8_dot``) from the same features. */
#if defined(__aarch64__)
INLINE void i8_block(const int8_t* row, const int8_t* w, int rb, const int OB, const int NARROW, int32_t* out,
                     ptrdiff_t ostride, const int32_t* obias, int32_t base) {
  int32x4_t tot[4];
  _Pragma("GCC unroll 4") for (int ob = 0; ob < OB; ob++) tot[ob] = vdupq_n_s32(0);
  for (int v = 0; v < rb; v += 16) {
    const int8x16_t xv = vld1q_s8(row + v);
    _Pragma("GCC unroll 4") for (int ob = 0; ob < OB; ob++) {
      const int8x16_t wv = vld1q_s8(w + (size_t)ob * rb + v);
#if defined(__ARM_FEATURE_DOTPROD)
      (void)NARROW;
      tot[ob] = vdotq_s32(tot[ob], xv, wv);
      continue;
#endif
      if (NARROW) {
        tot[ob] = vpadalq_s16(tot[ob], vmlal_high_s8(vmull_s8(vget_low_s8(xv), vget_low_s8(wv)), xv, wv));
      } else {
        tot[ob] = vpadalq_s16(tot[ob], vmull_s8(vget_low_s8(xv), vget_low_s8(wv)));
        tot[ob] = vpadalq_s16(tot[ob], vmull_high_s8(xv, wv));
      }
    }
  }
  if (OB == 4) {
    const int32x4_t r = vaddq_s32(vaddq_s32(vpaddq_s32(vpaddq_s32(tot[0], tot[1]), vpaddq_s32(tot[2], tot[3])),
                                            vld1q_s32(obias)), vdupq_n_s32(base));
    vst1q_lane_s32(out, r, 0);
    vst1q_lane_s32(out + ostride, r, 1);
    vst1q_lane_s32(out + 2 * ostride, r, 2);
    vst1q_lane_s32(out + 3 * ostride, r, 3);
  } else {
    _Pragma("GCC unroll 4") for (int ob = 0; ob < OB; ob++) out[ob * ostride] = vaddvq_s32(tot[ob]) + obias[ob] + base;
  }
}
static inline int32_t i8_row_sum(const int8_t* row, int rb) {
  int32x4_t s = vdupq_n_s32(0);
  for (int v = 0; v < rb; v += 16) s = vpadalq_s16(s, vpaddlq_s8(vld1q_s8(row + v)));
  return vaddvq_s32(s);
}
#elif (defined(__AVX512VNNI__) && defined(__AVX512BW__)) || defined(__AVXVNNI__)
#define I8_UNSIGNED_X 1
/* rows of unsigned bytes (x'), weights signed; a vector of bytes per step, the rest (RB is
 * a multiple of 16) through a masked (AVX-512) or half (AVX-VNNI: 16 bytes) load */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
typedef __m512i i8v;
#define I8V_BYTES 64
#define I8V_ZERO() _mm512_setzero_si512()
#define I8V_LOAD(p) _mm512_loadu_si512((const void*)(p))
#define I8V_TAIL(p, n) _mm512_maskz_loadu_epi8((~0ull) >> (64 - (n)), (p))
#define I8V_DOT(a, x, w) _mm512_dpbusd_epi32((a), (x), (w))
#else
typedef __m256i i8v;
#define I8V_BYTES 32
#define I8V_ZERO() _mm256_setzero_si256()
#define I8V_LOAD(p) _mm256_loadu_si256((const __m256i*)(p))
#define I8V_TAIL(p, n) _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i*)(p))) /* n == 16 */
#define I8V_DOT(a, x, w) _mm256_dpbusd_avx_epi32((a), (x), (w))
#endif
INLINE void i8_block(const int8_t* row, const int8_t* w, int rb, const int OB, const int NARROW, int32_t* out,
                     ptrdiff_t ostride, const int32_t* obias, int32_t base) {
  (void)NARROW;
  i8v tot[4];
  _Pragma("GCC unroll 4") for (int ob = 0; ob < OB; ob++) tot[ob] = I8V_ZERO();
  int v = 0;
  for (; v + I8V_BYTES <= rb; v += I8V_BYTES) {
    const i8v xv = I8V_LOAD(row + v);
    _Pragma("GCC unroll 4") for (int ob = 0; ob < OB; ob++) tot[ob] = I8V_DOT(tot[ob], xv, I8V_LOAD(w + (size_t)ob * rb + v));
  }
  if (v < rb) {
    const i8v xv = I8V_TAIL(row + v, rb - v);
    _Pragma("GCC unroll 4") for (int ob = 0; ob < OB; ob++)
      tot[ob] = I8V_DOT(tot[ob], xv, I8V_TAIL(w + (size_t)ob * rb + v, rb - v));
  }
  for (int ob = 0; ob < OB; ob++) {
    int32_t q[I8V_BYTES / 4], sum = 0;
    memcpy(q, &tot[ob], sizeof(q));
    for (int i = 0; i < I8V_BYTES / 4; i++) sum += q[i];
    out[ob * ostride] = sum + obias[ob] + base;
  }
}
static inline int32_t i8_row_sum(const int8_t* row, int rb) {
  int32_t s = 0;
  for (int v = 0; v < rb; v++) s += (uint8_t)row[v];
  return s;
}
#elif defined(__AVX2__)
INLINE void i8_block(const int8_t* row, const int8_t* w, int rb, const int OB, const int NARROW, int32_t* out,
                     ptrdiff_t ostride, const int32_t* obias, int32_t base) {
  (void)NARROW;
  __m256i tot[4];
  _Pragma("GCC unroll 4") for (int ob = 0; ob < OB; ob++) tot[ob] = _mm256_setzero_si256();
  for (int v = 0; v < rb; v += 16) {
    const __m256i xv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(row + v)));
    _Pragma("GCC unroll 4") for (int ob = 0; ob < OB; ob++) {
      const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + (size_t)ob * rb + v)));
      tot[ob] = _mm256_add_epi32(tot[ob], _mm256_madd_epi16(xv, wv));
    }
  }
  for (int ob = 0; ob < OB; ob++) {
    int32_t q[8];
    memcpy(q, &tot[ob], sizeof(q));
    out[ob * ostride] = q[0] + q[1] + q[2] + q[3] + q[4] + q[5] + q[6] + q[7] + obias[ob] + base;
  }
}
static inline int32_t i8_row_sum(const int8_t* row, int rb) {
  int32_t s = 0;
  for (int v = 0; v < rb; v++) s += row[v];
  return s;
}
#else
INLINE void i8_block(const int8_t* row, const int8_t* w, int rb, const int OB, const int NARROW, int32_t* out,
                     ptrdiff_t ostride, const int32_t* obias, int32_t base) {
  (void)NARROW;
  for (int ob = 0; ob < OB; ob++) {
    int32_t s = 0;
    for (int v = 0; v < rb; v++) s += (int32_t)row[v] * w[(size_t)ob * rb + v];
    out[ob * ostride] = s + obias[ob] + base;
  }
}
static inline int32_t i8_row_sum(const int8_t* row, int rb) {
  int32_t s = 0;
  for (int v = 0; v < rb; v++) s += row[v];
  return s;
}
#endif

#if defined(__aarch64__)
/* r[p] = the sums of channels o0..o0+3 of pixel p (p < 4), + ob (per channel) and bv (per
 * pixel): acc[(o0 + i) * astride + p] for i < nch, one vector store of 4 pixels per channel */
INLINE void i8_store4x4(int32x4_t r0, int32x4_t r1, int32x4_t r2, int32x4_t r3, int32x4_t ob, int32x4_t bv,
                        int32_t* acc, ptrdiff_t astride, int nch) {
  r0 = vaddq_s32(r0, ob), r1 = vaddq_s32(r1, ob), r2 = vaddq_s32(r2, ob), r3 = vaddq_s32(r3, ob);
  const int64x2_t l01 = vreinterpretq_s64_s32(vtrn1q_s32(r0, r1)), h01 = vreinterpretq_s64_s32(vtrn2q_s32(r0, r1)),
                  l23 = vreinterpretq_s64_s32(vtrn1q_s32(r2, r3)), h23 = vreinterpretq_s64_s32(vtrn2q_s32(r2, r3));
  const int32x4_t c[4] = {vreinterpretq_s32_s64(vtrn1q_s64(l01, l23)), vreinterpretq_s32_s64(vtrn1q_s64(h01, h23)),
                          vreinterpretq_s32_s64(vtrn2q_s64(l01, l23)), vreinterpretq_s32_s64(vtrn2q_s64(h01, h23))};
  _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++)
    if (i < nch) vst1q_s32(acc + (size_t)i * astride, vaddq_s32(c[i], bv));
}
#endif

/* ---- the tiled int8 kernel (meta LAYOUT = LAYOUT_I8_TILE): a register tile of P pixels x
 * NB blocks of 16 output channels, the whole reduction in registers, no horizontal sums.
 * Weights of a group: [ceil(Og/16)][RB/4][16][4] bytes (per block of 16 channels and 4
 * consecutive row bytes, 16 channels x 4 bytes), zero channels filling the last block.
 * AVX-512 VNNI (this is oneDNN's and MLAS's scheme): per 4 row bytes one vpbroadcastd of
 * each pixel's 4 bytes and one vpdpbusd per (pixel, block): 6 x 4 accumulators.
 * aarch64 dot product: per 16 row bytes of each pixel one load, and per 4 of them one
 * sdot by element (vdotq_laneq_s32) per (pixel, 4 channels): 4 pixels x 16 channels. */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define I8_TILE 1
#define TILE_P 6
#define TILE_NB 4
INLINE void i8_tile(const int8_t* rows, int rb, const int8_t* wb, int32_t* acc, ptrdiff_t astride, int og_left,
                    const int32_t* obias, const int32_t* base, const int P, const int NB) {
  __m512i a[TILE_P][TILE_NB];
  const size_t bstride = (size_t)rb * 16;
  _Pragma("GCC unroll 6") for (int p = 0; p < P; p++)
    _Pragma("GCC unroll 4") for (int nb = 0; nb < NB; nb++) a[p][nb] = _mm512_setzero_si512();
  for (int q = 0; q < rb; q += 4) {
    __m512i wv[TILE_NB];
    _Pragma("GCC unroll 4") for (int nb = 0; nb < NB; nb++) wv[nb] = _mm512_loadu_si512((const void*)(wb + nb * bstride + (size_t)q * 16));
    _Pragma("GCC unroll 6") for (int p = 0; p < P; p++) {
      int32_t x4;
      memcpy(&x4, rows + (size_t)p * rb + q, 4);
      const __m512i xb = _mm512_set1_epi32(x4);
      _Pragma("GCC unroll 4") for (int nb = 0; nb < NB; nb++) a[p][nb] = _mm512_dpbusd_epi32(a[p][nb], xb, wv[nb]);
    }
  }
  const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32((int)astride));
  _Pragma("GCC unroll 4") for (int nb = 0; nb < NB; nb++) {
    const int left = og_left - nb * 16;
    const __mmask16 k = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
    const __m512i ob = _mm512_maskz_loadu_epi32(k, obias + nb * 16);
    _Pragma("GCC unroll 6") for (int p = 0; p < P; p++)
      _mm512_mask_i32scatter_epi32(acc + (size_t)nb * 16 * astride + p, k, idx,
                                   _mm512_add_epi32(_mm512_add_epi32(a[p][nb], ob), _mm512_set1_epi32(base[p])), 4);
  }
}
#elif defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#define I8_TILE 1
#define TILE_P 4
#define TILE_NB 1
/* Per 16 row bytes: one load of each pixel's 16 bytes, and per 4 of them (J) one 64-byte
 * `ld1` of the block's 16 channels x 4 bytes feeding P x 4 `sdot`s: 16 accumulators, 4
 * pixel and 4 weight registers (no spills).  A full tile leaves through 4x4 transposes:
 * one vector store of 4 pixels per channel. */
#define I8_SDOT_STEP(a, xv, wq, P)                                                                       \
  {                                                                                                      \
    _Pragma("GCC unroll 4") for (int J = 0; J < 4; J++) {                                                \
      const int8x16x4_t w4 = vld1q_s8_x4((wq) + J * 64);                                                 \
      _Pragma("GCC unroll 4") for (int p = 0; p < (P); p++) {                                            \
        a[p][0] = vdotq_laneq_s32(a[p][0], w4.val[0], xv[p], J);                                         \
        a[p][1] = vdotq_laneq_s32(a[p][1], w4.val[1], xv[p], J);                                         \
        a[p][2] = vdotq_laneq_s32(a[p][2], w4.val[2], xv[p], J);                                         \
        a[p][3] = vdotq_laneq_s32(a[p][3], w4.val[3], xv[p], J);                                         \
      }                                                                                                  \
    }                                                                                                    \
  }
/* acc[o * astride + p] = a[p][o/4] lane o%4 + obias[o] + base[p], o < og_left */
INLINE void i8_tile_store(int32x4_t a[TILE_P][4], int32_t* acc, ptrdiff_t astride, int og_left, const int32_t* obias,
                          const int32_t* base, const int P) {
  if (P == 4) {
    const int32x4_t bv = vld1q_s32(base);
    _Pragma("GCC unroll 4") for (int cb = 0; cb < 4; cb++) {
      const int o0 = cb * 4;
      if (o0 >= og_left) break;
      int32x4_t ob;
      if (og_left - o0 >= 4) {
        ob = vld1q_s32(obias + o0);
      } else {
        int32_t t[4] = {0, 0, 0, 0};
        for (int i = 0; i < og_left - o0; i++) t[i] = obias[o0 + i];
        ob = vld1q_s32(t);
      }
      i8_store4x4(a[0][cb], a[1][cb], a[2][cb], a[3][cb], ob, bv, acc + (size_t)o0 * astride, astride, og_left - o0);
    }
    return;
  }
  _Pragma("GCC unroll 4") for (int cb = 0; cb < 4; cb++) {
    int32_t v[TILE_P][4];
    _Pragma("GCC unroll 4") for (int p = 0; p < P; p++) vst1q_s32(v[p], a[p][cb]);
    for (int i = 0; i < 4; i++) {
      const int o = cb * 4 + i;
      if (o >= og_left) break;
      for (int p = 0; p < P; p++) acc[(size_t)o * astride + p] = v[p][i] + obias[o] + base[p];
    }
  }
}
INLINE void i8_tile(const int8_t* rows, int rb, const int8_t* wb, int32_t* acc, ptrdiff_t astride, int og_left,
                    const int32_t* obias, const int32_t* base, const int P, const int NB) {
  (void)NB;
  int32x4_t a[TILE_P][4];
  _Pragma("GCC unroll 4") for (int p = 0; p < P; p++)
    _Pragma("GCC unroll 4") for (int cb = 0; cb < 4; cb++) a[p][cb] = vdupq_n_s32(0);
  const int8_t* wq = wb;
  for (int s = 0; s < rb; s += 16) {
    int8x16_t xv[TILE_P];
    _Pragma("GCC unroll 4") for (int p = 0; p < P; p++) xv[p] = vld1q_s8(rows + (size_t)p * rb + s);
    I8_SDOT_STEP(a, xv, wq, P)
    wq += 256;
  }
  i8_tile_store(a, acc, astride, og_left, obias, base, P);
}
/* The direct form (no im2col rows): pixel p's row is its taps' Cg bytes in the padded
 * channels-last input, px[p] + tapoff[t] (Cg a multiple of 16, so the tiled weights' row
 * bytes RB = KH*KW*Cg run tap by tap), base 0 (symmetric weights: no Sx term). */
#define I8_DIRECT 1
INLINE void i8_tile_direct(const int8_t* const* px, const int32_t* tapoff, int ntap, int cg, const int8_t* wb,
                           int32_t* acc, ptrdiff_t astride, int og_left, const int32_t* obias, const int P) {
  static const int32_t zero[4] = {0, 0, 0, 0};
  int32x4_t a[TILE_P][4];
  _Pragma("GCC unroll 4") for (int p = 0; p < P; p++)
    _Pragma("GCC unroll 4") for (int cb = 0; cb < 4; cb++) a[p][cb] = vdupq_n_s32(0);
  const int8_t* wq = wb;
  for (int t = 0; t < ntap; t++) {
    const int8_t* xp[TILE_P];
    _Pragma("GCC unroll 4") for (int p = 0; p < P; p++) xp[p] = px[p] + tapoff[t];
    for (int c = 0; c < cg; c += 16) {
      int8x16_t xv[TILE_P];
      _Pragma("GCC unroll 4") for (int p = 0; p < P; p++) xv[p] = vld1q_s8(xp[p] + c);
      I8_SDOT_STEP(a, xv, wq, P)
      wq += 256;
    }
  }
  i8_tile_store(a, acc, astride, og_left, obias, zero, P);
}
/* pixels [0, npix) (pointers px) x the group's og channels into acc[o * astride + p] */
static void i8_direct(const int8_t* const* px, int npix, const int32_t* tapoff, int ntap, int cg, const int8_t* w,
                      int og, int32_t* acc, ptrdiff_t astride, const int32_t* obias, int narrow) {
  (void)narrow; /* sdot: exact for any weight */
  const int rb = ntap * cg, nblk = (og + 15) / 16;
  for (int b = 0; b < nblk; b++) {
    const int8_t* wb = w + (size_t)b * 16 * rb;
    int32_t* out = acc + (size_t)b * 16 * astride;
    const int og_left = og - b * 16;
    int p = 0;
    for (; p + 4 <= npix; p += 4) i8_tile_direct(px + p, tapoff, ntap, cg, wb, out + p, astride, og_left, obias + b * 16, 4);
    switch (npix - p) {
      case 3: i8_tile_direct(px + p, tapoff, ntap, cg, wb, out + p, astride, og_left, obias + b * 16, 3); break;
      case 2: i8_tile_direct(px + p, tapoff, ntap, cg, wb, out + p, astride, og_left, obias + b * 16, 2); break;
      case 1: i8_tile_direct(px + p, tapoff, ntap, cg, wb, out + p, astride, og_left, obias + b * 16, 1); break;
      default: break;
    }
  }
}
#endif

#ifdef I8_TILE
/* rows [npix][RB] against the group's tiled weights, into out[o * ostride + p] */
static void i8_row_tile(const row_args* ra) {
  const int rb = ra->rb, og = ra->og, nblk = (og + 15) / 16;
  const int8_t* rows = (const int8_t*)ra->rows;
  const int8_t* w = (const int8_t*)ra->w;
  for (int b = 0; b < nblk; b += TILE_NB) {
    const int nb = nblk - b < TILE_NB ? nblk - b : TILE_NB;
    const int8_t* wb = w + (size_t)b * 16 * rb;
    int32_t* out = ra->out + (size_t)b * 16 * ra->ostride;
    const int og_left = og - b * 16;
    for (int p = 0; p < ra->npix; p += TILE_P) {
      const int np = ra->npix - p < TILE_P ? ra->npix - p : TILE_P;
      const int8_t* r = rows + (size_t)p * rb;
#define I8_TILE_CASE(PP, NN) \
  case (PP) * 8 + (NN): i8_tile(r, rb, wb, out + p, ra->ostride, og_left, ra->obias + b * 16, ra->base + p, PP, NN); break;
      switch (np * 8 + nb) {
#if TILE_NB == 4
        I8_TILE_CASE(1, 1) I8_TILE_CASE(2, 1) I8_TILE_CASE(3, 1) I8_TILE_CASE(4, 1) I8_TILE_CASE(5, 1) I8_TILE_CASE(6, 1)
        I8_TILE_CASE(1, 2) I8_TILE_CASE(2, 2) I8_TILE_CASE(3, 2) I8_TILE_CASE(4, 2) I8_TILE_CASE(5, 2) I8_TILE_CASE(6, 2)
        I8_TILE_CASE(1, 3) I8_TILE_CASE(2, 3) I8_TILE_CASE(3, 3) I8_TILE_CASE(4, 3) I8_TILE_CASE(5, 3) I8_TILE_CASE(6, 3)
        I8_TILE_CASE(1, 4) I8_TILE_CASE(2, 4) I8_TILE_CASE(3, 4) I8_TILE_CASE(4, 4) I8_TILE_CASE(5, 4) I8_TILE_CASE(6, 4)
#else
        I8_TILE_CASE(1, 1) I8_TILE_CASE(2, 1) I8_TILE_CASE(3, 1) I8_TILE_CASE(4, 1)
#endif
        default: break;
      }
#undef I8_TILE_CASE
    }
  }
}
#endif

INLINE void i8_row_impl(const row_args* ra, const int NARROW) {
  const int rb = ra->rb, og = ra->og;
  const ptrdiff_t ostride = ra->ostride;
  for (int p = 0; p < ra->npix; p++) {
    const int8_t* row = (const int8_t*)ra->rows + (size_t)p * rb;
    const int8_t* w = (const int8_t*)ra->w;
    int o = 0;
    for (; o + 4 <= og; o += 4)
      i8_block(row, w + (size_t)o * rb, rb, 4, NARROW, ra->out + o * ostride + p, ostride, ra->obias + o, ra->base[p]);
    for (; o < og; o++)
      i8_block(row, w + (size_t)o * rb, rb, 1, NARROW, ra->out + o * ostride + p, ostride, ra->obias + o, ra->base[p]);
  }
}
#if defined(__aarch64__) && !defined(__ARM_FEATURE_DOTPROD)
/* ARMv8.0 (the Pi 4): a register tile of 4 pixels x 4 output channels, 16 int32x4 sums;
 * per 16 row bytes one load of each pixel and of each channel, then per (pixel, channel)
 * `smull` + `smlal2` + `sadalp` (NARROW: no weight is -128, so two products fit a 16-bit
 * lane) or `smull` + `sadalp` + `smull2` + `sadalp`.  Pixel p's bytes are xp[p] + v, channel
 * ob's w + ob * rb + v, for v < len. */
INLINE void i8n_span(int32x4_t a[4][4], const int8_t* const* xp, const int8_t* w, size_t rb, int len, const int P,
                     const int OB, const int NARROW) {
  for (int v = 0; v < len; v += 16) {
    int8x16_t xv[4];
    _Pragma("GCC unroll 4") for (int p = 0; p < P; p++) xv[p] = vld1q_s8(xp[p] + v);
    _Pragma("GCC unroll 4") for (int ob = 0; ob < OB; ob++) {
      const int8x16_t wv = vld1q_s8(w + (size_t)ob * rb + v);
      _Pragma("GCC unroll 4") for (int p = 0; p < P; p++) {
        if (NARROW) {
          a[p][ob] = vpadalq_s16(a[p][ob], vmlal_high_s8(vmull_s8(vget_low_s8(xv[p]), vget_low_s8(wv)), xv[p], wv));
        } else {
          a[p][ob] = vpadalq_s16(a[p][ob], vmull_s8(vget_low_s8(xv[p]), vget_low_s8(wv)));
          a[p][ob] = vpadalq_s16(a[p][ob], vmull_high_s8(xv[p], wv));
        }
      }
    }
  }
}
/* acc[ob * astride + p] = the sum of a[p][ob] + obias[ob] + base[p] */
INLINE void i8n_store(int32x4_t a[4][4], int32_t* acc, ptrdiff_t astride, const int32_t* obias, const int32_t* base,
                      const int P, const int OB) {
  if (P == 4 && OB == 4) {
    int32x4_t r[4];
    _Pragma("GCC unroll 4") for (int p = 0; p < 4; p++)
      r[p] = vpaddq_s32(vpaddq_s32(a[p][0], a[p][1]), vpaddq_s32(a[p][2], a[p][3]));
    i8_store4x4(r[0], r[1], r[2], r[3], vld1q_s32(obias), vld1q_s32(base), acc, astride, 4);
    return;
  }
  _Pragma("GCC unroll 4") for (int ob = 0; ob < OB; ob++)
    _Pragma("GCC unroll 4") for (int p = 0; p < P; p++) acc[ob * astride + p] = vaddvq_s32(a[p][ob]) + obias[ob] + base[p];
}
/* P pixels x OB channels: im2col rows (ntap == 0: pixel p's row at px[0] + p * rb, of rb
 * bytes) or the direct form (pixel p's tap t at px[p] + tapoff[t], cg bytes) */
INLINE void i8n_tile(const int8_t* const* px, int rb, const int32_t* tapoff, int ntap, int cg, const int8_t* w,
                     int32_t* acc, ptrdiff_t astride, const int32_t* obias, const int32_t* base, const int P, const int OB,
                     const int NARROW) {
  int32x4_t a[4][4];
  _Pragma("GCC unroll 4") for (int p = 0; p < P; p++)
    _Pragma("GCC unroll 4") for (int ob = 0; ob < OB; ob++) a[p][ob] = vdupq_n_s32(0);
  const int8_t* xp[4];
  if (!ntap) {
    _Pragma("GCC unroll 4") for (int p = 0; p < P; p++) xp[p] = px[0] + (size_t)p * rb;
    i8n_span(a, xp, w, rb, rb, P, OB, NARROW);
  } else {
    for (int t = 0; t < ntap; t++) {
      _Pragma("GCC unroll 4") for (int p = 0; p < P; p++) xp[p] = px[p] + tapoff[t];
      i8n_span(a, xp, w + (size_t)t * cg, rb, cg, P, OB, NARROW);
    }
  }
  i8n_store(a, acc, astride, obias, base, P, OB);
}
/* pixels [0, npix) x og channels into acc[o * astride + p], tiles of 4 x 4 */
INLINE void i8n_run(const int8_t* const* px, int npix, int rb, const int32_t* tapoff, int ntap, int cg, const int8_t* w,
                    int og, int32_t* acc, ptrdiff_t astride, const int32_t* obias, const int32_t* base, const int NARROW) {
#define I8N_TILE(PP, OO)                                                                                           \
  i8n_tile(ntap ? px + p : &r, rb, tapoff, ntap, cg, w + (size_t)o * rb, acc + (size_t)o * astride + p, astride, \
           obias + o, base + p, PP, OO, NARROW)
  for (int p = 0; p < npix; p += 4) {
    const int8_t* r = px[0] + (size_t)p * rb;
    const int np = npix - p < 4 ? npix - p : 4;
    int o = 0;
    for (; o + 4 <= og; o += 4) {
      switch (np) {
        case 4: I8N_TILE(4, 4); break;
        case 3: I8N_TILE(3, 4); break;
        case 2: I8N_TILE(2, 4); break;
        default: I8N_TILE(1, 4); break;
      }
    }
    for (; o < og; o++) {
      switch (np) {
        case 4: I8N_TILE(4, 1); break;
        case 3: I8N_TILE(3, 1); break;
        case 2: I8N_TILE(2, 1); break;
        default: I8N_TILE(1, 1); break;
      }
    }
  }
#undef I8N_TILE
}
/* (no pre-allocation scheduling: it interleaves the products until the 16 sums spill) */
#define I8N_FN static __attribute__((optimize("no-schedule-insns"))) void
I8N_FN i8_row_narrow(const row_args* ra) {
  const int8_t* r = (const int8_t*)ra->rows;
  i8n_run(&r, ra->npix, ra->rb, NULL, 0, 0, (const int8_t*)ra->w, ra->og, ra->out, ra->ostride, ra->obias, ra->base, 1);
}
I8N_FN i8_row_wide(const row_args* ra) {
  const int8_t* r = (const int8_t*)ra->rows;
  i8n_run(&r, ra->npix, ra->rb, NULL, 0, 0, (const int8_t*)ra->w, ra->og, ra->out, ra->ostride, ra->obias, ra->base, 0);
}
/* The direct form (as with sdot): plain weights [Og][RB], RB = KH*KW*Cg, Cg a multiple of 16 */
#define I8_DIRECT 1
I8N_FN i8_direct(const int8_t* const* px, int npix, const int32_t* tapoff, int ntap, int cg, const int8_t* w,
                      int og, int32_t* acc, ptrdiff_t astride, const int32_t* obias, int narrow) {
  static const int32_t zero[4] = {0, 0, 0, 0}; /* base: symmetric weights, no Sx term */
  const int rb = ntap * cg;
  for (int p = 0; p < npix; p += 4) {
    const int np = npix - p < 4 ? npix - p : 4;
    if (narrow)
      i8n_run(px + p, np, rb, tapoff, ntap, cg, w, og, acc + p, astride, obias, zero, 1);
    else
      i8n_run(px + p, np, rb, tapoff, ntap, cg, w, og, acc + p, astride, obias, zero, 0);
  }
}
#else
static void i8_row_narrow(const row_args* ra) { i8_row_impl(ra, 1); }
static void i8_row_wide(const row_args* ra) { i8_row_impl(ra, 0); }
#endif

/* Input row h of a group (src: channel 0, channels hw apart) channels last into dst
 * (pixels pix bytes apart), each byte ^ flip; on aarch64 by 16 x 16 byte transposes. */
static void nhwc_row(const uint8_t* src, size_t hw, int w, int cg, int8_t* dst, size_t pix, uint8_t flip) {
  int w16 = 0, c16 = 0;
#if defined(__aarch64__)
  w16 = w & ~15;
  c16 = cg & ~15;
  const uint8x16_t f = vdupq_n_u8(flip);
  for (int c0 = 0; c0 < c16; c0 += 16)
    for (int w0 = 0; w0 < w16; w0 += 16) {
      uint8x16_t t[16];
      _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) t[i] = veorq_u8(vld1q_u8(src + (size_t)(c0 + i) * hw + w0), f);
      /* 8-, 16-, 32-, 64-bit transposes of pairs 1, 2, 4, 8 rows apart: t[p] = pixel w0+p's 16 channels */
      _Pragma("GCC unroll 8") for (int i = 0; i < 16; i += 2) {
        const uint8x16_t x = t[i], y = t[i + 1];
        t[i] = vtrn1q_u8(x, y);
        t[i + 1] = vtrn2q_u8(x, y);
      }
      _Pragma("GCC unroll 8") for (int i = 0; i < 16; i++) if (!(i & 2)) {
        const uint16x8_t x = vreinterpretq_u16_u8(t[i]), y = vreinterpretq_u16_u8(t[i + 2]);
        t[i] = vreinterpretq_u8_u16(vtrn1q_u16(x, y));
        t[i + 2] = vreinterpretq_u8_u16(vtrn2q_u16(x, y));
      }
      _Pragma("GCC unroll 8") for (int i = 0; i < 16; i++) if (!(i & 4)) {
        const uint32x4_t x = vreinterpretq_u32_u8(t[i]), y = vreinterpretq_u32_u8(t[i + 4]);
        t[i] = vreinterpretq_u8_u32(vtrn1q_u32(x, y));
        t[i + 4] = vreinterpretq_u8_u32(vtrn2q_u32(x, y));
      }
      _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
        const uint64x2_t x = vreinterpretq_u64_u8(t[i]), y = vreinterpretq_u64_u8(t[i + 8]);
        t[i] = vreinterpretq_u8_u64(vtrn1q_u64(x, y));
        t[i + 8] = vreinterpretq_u8_u64(vtrn2q_u64(x, y));
      }
      _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) vst1q_u8((uint8_t*)dst + (size_t)(w0 + i) * pix + c0, t[i]);
    }
#endif
  for (int ww = 0; ww < w; ww++)
    for (int c = ww < w16 ? c16 : 0; c < cg; c++) dst[(size_t)ww * pix + c] = (int8_t)(src[c * hw + ww] ^ flip);
}

/* One int8 slice's scratch, and what a call's slices share. */
#define I8_MAX_TAPS 64
typedef struct {
  int8_t* pk;   /* the padded input of a group [HP][WP][Cg] */
  int8_t* rows; /* the im2col rows of one output row [OW][RB] */
  int32_t *sx, *acc;
  const int8_t** px; /* the direct form's pixel pointers (I8_DIRECT) */
} i8_scratch;
typedef struct {
  const uint8_t* x;
  const int8_t* wp;
  uint8_t* out;
  const int32_t *obias, *m;
  epilogue epi;
  row_fn fn;
  uint8_t flip;
  int xz, wz;
  size_t osz;
  const i8_scratch* slices;
  int og_stored; /* weight rows stored per group: Og, or Og rounded up to 16 (LAYOUT_I8_TILE) */
  int direct;    /* pixels per chunk of the direct form (0: im2col rows) */
  int32_t tapoff[I8_MAX_TAPS]; /* the direct form's tap offsets in the padded input */
} i8_job;
/* As BITSERIAL_*: per output value, its row's byte products plus a fixed cost worth
 * INT8_PER_OUTPUT of them (fitted on x86 to the small CNN's layers: the 3-channel stem,
 * 32-byte rows, takes 0.4 ms at one thread, 12 ns per output value; 38 byte products per
 * ns); below INT8_MIN_WORK (about 80 us there) serially. */
#define INT8_PER_OUTPUT 430.0
#define INT8_MIN_WORK 3e6

/* Slice s of nslice of an int8 call: as bitserial_slice. */
static __attribute__((optimize("no-tree-loop-distribute-patterns"))) void int8_slice(void* job, int s, int nslice) {
  const i8_job* j = (const i8_job*)job;
  const int32_t* m = j->m;
  CONV_GEOMETRY(m);
  (void)K;
  const i8_scratch* sc = &j->slices[s];
  int8_t *pk = sc->pk, *rows = sc->rows;
  const size_t PIX = (size_t)Cg, HW = (size_t)H * W;
  const ptrdiff_t ostride = (ptrdiff_t)OH * OW;
  long lo, hi;
  slice_range((long)N * G * OH, s, nslice, &lo, &hi);
  if (lo >= hi) return;
  memset(pk, (int8_t)j->xz, (size_t)HP * WP * PIX); /* padded pixels hold xz' */
  for (long item = lo; item < hi;) {
    int n, g, oh0, oh1, hp0, hp1, h0, h1;
    const long next = next_run(item, hi, G, OH, &n, &g, &oh0, &oh1);
    rows_read(oh0, oh1, SH, KH, DH, PT, H, &hp0, &hp1, &h0, &h1);
    /* 1. the input rows these output rows read, channels last */
    for (int h = h0; h < h1; h++) {
      const uint8_t* src = j->x + (((size_t)n * C + (size_t)g * Cg) * H + h) * W;
      nhwc_row(src, HW, W, Cg, pk + ((size_t)(h + PT) * WP + PL) * PIX, PIX, j->flip);
    }
    const int8_t* wg = j->wp + (size_t)g * j->og_stored * RB; /* the tiled layout pads Og to whole blocks of 16 */
    const epilogue eg = group_epilogue(&j->epi, g, Og);
#ifdef I8_DIRECT
    if (j->direct) { /* rows [oh0, oh1) are contiguous in out: their pixels in chunks, tiles across rows */
      const long npx = (long)(oh1 - oh0) * OW;
      uint8_t* og0 = j->out + ((((size_t)n * O + (size_t)g * Og) * OH + oh0) * OW) * j->osz;
      for (long q0 = 0; q0 < npx; q0 += j->direct) {
        const int cnt = npx - q0 < j->direct ? (int)(npx - q0) : j->direct;
        for (int i = 0; i < cnt; i++) {
          const long q = q0 + i;
          const int oh = oh0 + (int)(q / OW), ow = (int)(q % OW);
          sc->px[i] = pk + ((size_t)oh * SH * WP + (size_t)ow * SW) * PIX;
        }
        i8_direct(sc->px, cnt, j->tapoff, KH * KW, Cg, wg, Og, sc->acc, cnt, j->obias + g * Og, m[M_WSIGNED]);
        apply_epilogue(&eg, sc->acc, cnt, Og, cnt, og0 + (size_t)q0 * j->osz, ostride);
      }
      item = next;
      continue;
    }
#endif
    for (int oh = oh0; oh < oh1; oh++) {
      /* 2. the im2col rows of this output row */
      for (int ow = 0; ow < OW; ow++) {
        int8_t* r = rows + (size_t)ow * RB;
        for (int kh = 0; kh < KH; kh++) {
          const int8_t* src = pk + ((size_t)(oh * SH + kh * DH) * WP + (size_t)ow * SW) * PIX;
          if (DW == 1) {
            copy_bytes((uint8_t*)r + kh * KW * Cg, (const uint8_t*)src, KW * Cg);
          } else {
            for (int kw = 0; kw < KW; kw++)
              copy_bytes((uint8_t*)r + (kh * KW + kw) * Cg, (const uint8_t*)src + (size_t)kw * DW * PIX, Cg);
          }
        }
        sc->sx[ow] = j->wz ? -j->wz * i8_row_sum(r, RB) : 0; /* symmetric weights: no Sx term */
      }
      /* 3. dot products, zero points folded, written to out[n, g*Og + o, oh, ow] */
      const row_args ra = {(const uint8_t*)rows, (const uint8_t*)wg, RB, Og, OW, sc->acc, OW, j->obias + g * Og, sc->sx,
                           0, 0, NULL, NULL, NULL};
      j->fn(&ra);
      /* 4. the epilogue into out[n, g*Og + o, oh, :] */
      apply_epilogue(&eg, sc->acc, OW, Og, OW, j->out + ((((size_t)n * O + (size_t)g * Og) * OH + oh) * OW) * j->osz,
                     ostride);
    }
    item = next;
  }
}

/* ---- the lane kernel (meta LAYOUT = LAYOUT_I8_LANES; AVX-512 VNNI): output pixels in the
 * vector lanes, read straight from a packed copy of the input, no im2col, no transposes.
 *
 * The input of a call is packed once: per group, per quad of 4 channels (the last quad
 * filled with the zero point) and per phase (the row and column residues of the stride),
 * a plane of 4-byte pixels [HPs][WPs] (HPs = ceil(HP/SH), WPs = ceil(WP/SW), the border
 * holding xz').  Output pixel p = oh*WPs + ow of the "wide" grid (ow < WPs, of which the
 * first OW are real) reads, for tap (kh, kw), the pixel p + (kh/SH)*WPs + kw/SW of phase
 * (kh%SH, kw%SW): 16 consecutive output pixels are one 64-byte load, for any stride.
 * One vpdpbusd multiplies them by a broadcast 4-byte weight (4 channels of one tap) of an
 * output channel: 16 pixels x 4 products into the int32 lanes, exact.
 *
 * Dense groups (Og >= 8): a register tile of up to 3 vectors (48 pixels) x 8 output
 * channels; weights of a group [ceil(Og/8)][KH*KW*Cq][8][4] (Cq = ceil(Cg/4) quads,
 * zero channels filling the last quad and block).  Depthwise (Cg = Og = 1): the input
 * packed as one group of C channels; per quad of 4 channels a tile of up to 6 vectors x
 * 4 channels, weights [C/4][KH*KW][4][4] (channel j of a quad has its weight in byte j,
 * zeros elsewhere).  The fused epilogue runs on the sums in registers and stores each
 * vector's real pixels (ow < OW) with a compress: they are consecutive in the output.
 * Symmetric weights only (WZ = 0: no sum of x' per pixel needed); lowbit.py asks for
 * this layout only then. */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define I8_LANES 1
typedef struct {
  const uint8_t* x;
  uint8_t* pk; /* packed input of all images */
  const int8_t* wp;
  uint8_t* out;
  const int32_t* obias;
  const int32_t* m;
  epilogue epi;
  const int32_t* soff; /* dword offset of each weight step (tap, quad) in a group's planes */
  const uint16_t* vmask; /* per lane vector: the real pixels */
  const int32_t* vdst;   /* per lane vector: output index of its first real pixel */
  uint8_t flip, xz;
  int Cq, HPs, WPs, PLEN, V, nsteps, nblk, ntile, depthwise;
  size_t img_bytes; /* packed bytes per image */
  int rows; /* LAYOUT_I8_ROWS: x [W][C] and out [OW][O] row-major (a qdense's rows are the pixels) */
} lanes_job;
#define LANES_PV 3
#define LANES_NO 8
#define LANES_DW_PV 6

/* the epilogue of one vector of sums (of output channel o) and the store of its real pixels.
 * Codes: clamp(roundeven(clamp(y, lo, hi) * inv) + zp, qmin, qmax) is computed as
 * clamp(roundeven(y * inv) + zp, qlo, qhi) with qlo = max(qmin, f(lo)), qhi = min(qmax, f(hi)),
 * f(v) = roundeven(v * inv) + zp in the same float32 steps: f is non-decreasing (inv > 0), so
 * f(max(y, lo)) = max(f(y), f(lo)) and likewise for min: the same codes, two operations fewer. */
INLINE void lanes_store(const epilogue* e, float qlo, float qhi, int o, __m512i a, __mmask16 mask, void* out, size_t at) {
  __m512 y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(e->scale[o])), _mm512_set1_ps(e->bias[o]));
  if (e->kind == OUT_F32) {
    y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(e->lo)), _mm512_set1_ps(e->hi));
    if (mask == 0xFFFF) {
      _mm512_storeu_ps((float*)out + at, y);
    } else {
      const __mmask16 head = (__mmask16)((1u << __builtin_popcount(mask)) - 1u);
      _mm512_mask_storeu_ps((float*)out + at, head, _mm512_maskz_compress_ps(mask, y));
    }
    return;
  }
  __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(y, _mm512_set1_ps(e->inv)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  q = _mm512_add_ps(q, _mm512_set1_ps(e->zp));
  q = _mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps(qlo)), _mm512_set1_ps(qhi));
  const __m512i c = _mm512_cvttps_epi32(q);
  if (mask == 0xFFFF) {
    _mm_storeu_si128((__m128i*)((uint8_t*)out + at), _mm512_cvtepi32_epi8(c));
  } else {
    const __mmask16 head = (__mmask16)((1u << __builtin_popcount(mask)) - 1u);
    _mm_mask_storeu_epi8((uint8_t*)out + at, head, _mm512_cvtepi32_epi8(_mm512_maskz_compress_epi32(mask, c)));
  }
}
/* LAYOUT_I8_ROWS: channel o's vector of values into column o of a [16][LANES_NO] tile of
 * pixel rows (elements of osz bytes), for lanes_rows_out */
INLINE void lanes_store_tile(const epilogue* e, float qlo, float qhi, int o, __m512i a, uint8_t* tile) {
  float buf[16] __attribute__((aligned(64)));
  lanes_store(e, qlo, qhi, o, a, 0xFFFF, buf, 0);
  if (e->kind == OUT_F32) {
    for (int l = 0; l < 16; l++) ((float*)tile)[l * 8 + o] = buf[l];
  } else {
    for (int l = 0; l < 16; l++) tile[l * 8 + o] = ((const uint8_t*)buf)[l];
  }
}
/* the tile's first n pixel rows, og channels each, to out[(at + l) * O] (out at the block's first channel) */
INLINE void lanes_rows_out(const uint8_t* tile, int n, int og, size_t osz, uint8_t* out, size_t at, size_t O) {
  for (int l = 0; l < n; l++) memcpy(out + (at + l) * O * osz, tile + (size_t)l * 8 * osz, (size_t)og * osz);
}
static inline float lanes_code_of(const epilogue* e, float v) {
  return __builtin_roundevenf(v * e->inv) + e->zp;
}
#define LANES_QLO(e) (lanes_code_of((e), (e)->lo) > (e)->qmin ? lanes_code_of((e), (e)->lo) : (e)->qmin)
#define LANES_QHI(e) (lanes_code_of((e), (e)->hi) < (e)->qmax ? lanes_code_of((e), (e)->hi) : (e)->qmax)

/* dense: vectors [v0, v0+PV) x channels [8b, 8b+8) of group g */
INLINE void lanes_dense(const lanes_job* j, const uint8_t* planes, const int8_t* wb, int v0, const int PV,
                        const epilogue* e, const int32_t* obias, int og_left, uint8_t* out, ptrdiff_t ostride) {
  __m512i a[LANES_PV][LANES_NO];
  _Pragma("GCC unroll 3") for (int v = 0; v < PV; v++)
    _Pragma("GCC unroll 8") for (int o = 0; o < LANES_NO; o++) a[v][o] = _mm512_setzero_si512();
  const uint8_t* xp = planes + (size_t)v0 * 64;
  for (int s = 0; s < j->nsteps; s++) {
    const uint8_t* xs = xp + (size_t)j->soff[s] * 4;
    __m512i xv[LANES_PV];
    _Pragma("GCC unroll 3") for (int v = 0; v < PV; v++) xv[v] = _mm512_loadu_si512((const void*)(xs + v * 64));
    const int8_t* ws = wb + (size_t)s * LANES_NO * 4;
    _Pragma("GCC unroll 8") for (int o = 0; o < LANES_NO; o++) {
      int32_t w4;
      memcpy(&w4, ws + o * 4, 4);
      const __m512i wv = _mm512_set1_epi32(w4);
      _Pragma("GCC unroll 3") for (int v = 0; v < PV; v++) a[v][o] = _mm512_dpbusd_epi32(a[v][o], xv[v], wv);
    }
  }
  const size_t osz = e->kind == OUT_F32 ? 4 : 1;
  const float qlo = LANES_QLO(e), qhi = LANES_QHI(e);
  if (j->rows) { /* rows of 8 channels: transposed through a small tile, stored 8 channels at a time */
    uint8_t tile[16 * LANES_NO * 4] __attribute__((aligned(64)));
    const int og = og_left < LANES_NO ? og_left : LANES_NO;
    _Pragma("GCC unroll 3") for (int v = 0; v < PV; v++) {
      _Pragma("GCC unroll 8") for (int o = 0; o < LANES_NO; o++) {
        if (o >= og) break;
        lanes_store_tile(e, qlo, qhi, o, _mm512_add_epi32(a[v][o], _mm512_set1_epi32(obias[o])), tile);
      }
      lanes_rows_out(tile, __builtin_popcount(j->vmask[v0 + v]), og, osz, out, j->vdst[v0 + v], (size_t)j->m[M_O]);
    }
    return;
  }
  _Pragma("GCC unroll 8") for (int o = 0; o < LANES_NO; o++) {
    if (o >= og_left) break;
    const __m512i ob = _mm512_set1_epi32(obias[o]);
    _Pragma("GCC unroll 3") for (int v = 0; v < PV; v++)
      lanes_store(e, qlo, qhi, o, _mm512_add_epi32(a[v][o], ob), j->vmask[v0 + v], out + (size_t)o * ostride * osz, j->vdst[v0 + v]);
  }
}

/* depthwise: vectors [v0, v0+PV) x the 4 channels of quad q */
INLINE void lanes_dw(const lanes_job* j, const uint8_t* planes, const int8_t* wq, int v0, const int PV,
                     const epilogue* e, const int32_t* obias, int og_left, uint8_t* out, ptrdiff_t ostride) {
  __m512i a[LANES_DW_PV][4];
  _Pragma("GCC unroll 6") for (int v = 0; v < PV; v++)
    _Pragma("GCC unroll 4") for (int o = 0; o < 4; o++) a[v][o] = _mm512_setzero_si512();
  const uint8_t* xp = planes + (size_t)v0 * 64;
  for (int s = 0; s < j->nsteps; s++) { /* steps: taps (Cq = 1 per quad) */
    const uint8_t* xs = xp + (size_t)j->soff[s] * 4;
    __m512i wv[4];
    _Pragma("GCC unroll 4") for (int o = 0; o < 4; o++) {
      int32_t w4;
      memcpy(&w4, wq + (size_t)s * 16 + o * 4, 4);
      wv[o] = _mm512_set1_epi32(w4);
    }
    _Pragma("GCC unroll 6") for (int v = 0; v < PV; v++) {
      const __m512i xv = _mm512_loadu_si512((const void*)(xs + v * 64));
      _Pragma("GCC unroll 4") for (int o = 0; o < 4; o++) a[v][o] = _mm512_dpbusd_epi32(a[v][o], xv, wv[o]);
    }
  }
  const size_t osz = e->kind == OUT_F32 ? 4 : 1;
  const float qlo = LANES_QLO(e), qhi = LANES_QHI(e);
  _Pragma("GCC unroll 4") for (int o = 0; o < 4; o++) {
    if (o >= og_left) break;
    const __m512i ob = _mm512_set1_epi32(obias[o]);
    _Pragma("GCC unroll 6") for (int v = 0; v < PV; v++)
      lanes_store(e, qlo, qhi, o, _mm512_add_epi32(a[v][o], ob), j->vmask[v0 + v], out + (size_t)o * ostride * osz, j->vdst[v0 + v]);
  }
}

/* pack image n, quads [q0, q1) (over all groups: quad index g*Cq + cq) into its planes:
 * per input row, 16 pixels at a time (a masked load for the last ones), the 4 channel rows
 * interleaved into 4-byte pixels (channels past the group's last hold xz'), then copied
 * to the row's place in its phase planes (split into column phases for strides > 1) */
static void lanes_pack(const lanes_job* j, int n, long q0, long q1) {
  const int32_t* m = j->m;
  CONV_GEOMETRY(m);
  (void)N, (void)O, (void)KH, (void)KW, (void)DH, (void)DW, (void)OH, (void)OW, (void)RB, (void)K, (void)Og, (void)HP, (void)WP;
  const int cg = j->depthwise ? C : Cg, Cq = j->Cq, SS = SH * SW;
  const size_t HW = (size_t)H * W;
  uint32_t row[W + 48]; /* slack: whole vectors are stored and read */
  const size_t PLEN = (size_t)j->PLEN, WPs = (size_t)j->WPs;
  const __m128i flip = _mm_set1_epi8((char)j->flip), fill = _mm_set1_epi8((char)j->xz);
  /* where input row h goes (dword offset of its first pixel's phase row), per column phase
   * the first column and the count of columns it takes */
  size_t rdst[H];
  int s0[SW], cnt[SW];
  size_t cdst[SW];
  for (int h = 0; h < H; h++) {
    const int hp = h + PT;
    rdst[h] = (size_t)(hp % SH) * SW * PLEN + (size_t)(hp / SH) * WPs;
  }
  for (int pw = 0; pw < SW; pw++) {
    s0[pw] = ((pw - PL) % SW + SW) % SW;
    cnt[pw] = s0[pw] < W ? (W - s0[pw] + SW - 1) / SW : 0;
    cdst[pw] = (size_t)pw * PLEN + (size_t)(s0[pw] + PL) / SW;
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  if (j->rows) { /* x [W][C]: pixel w's quad is 4 consecutive bytes of its row (one image and row, no padding) */
    for (long qi = q0; qi < q1; qi++) {
      uint8_t* base = j->pk + (size_t)qi * PLEN * 4;
      memset(base, j->xz, PLEN * 4);
      const int c0 = (int)qi * 4, nc = C - c0 < 4 ? C - c0 : 4;
      for (int w = 0; w < W; w++)
        for (int k = 0; k < nc; k++) base[(size_t)w * 4 + k] = j->x[(size_t)w * C + c0 + k] ^ j->flip;
    }
    return;
  }
  for (long qi = q0; qi < q1; qi++) {
    const int g = (int)(qi / Cq), cq = (int)(qi % Cq);
    uint32_t* base = (uint32_t*)(j->pk + (size_t)n * j->img_bytes) + (size_t)qi * SS * PLEN;
    memset(base, j->xz, sizeof(uint32_t) * SS * PLEN);
    const uint8_t* src[4];
    int real[4];
    for (int k = 0; k < 4; k++) {
      const int c = cq * 4 + k;
      real[k] = c < cg;
      src[k] = real[k] ? j->x + ((size_t)n * C + (size_t)g * cg + c) * HW : NULL;
    }
    for (int h = 0; h < H; h++) {
      for (int w = 0; w < W; w += 16) {
        const __mmask16 k16 = W - w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (W - w)) - 1u);
        __m128i r[4];
        for (int k = 0; k < 4; k++)
          r[k] = real[k] ? _mm_xor_si128(_mm_maskz_loadu_epi8(k16, src[k] + (size_t)h * W + w), flip) : fill;
        const __m128i a = _mm_unpacklo_epi8(r[0], r[1]), b = _mm_unpackhi_epi8(r[0], r[1]);
        const __m128i c = _mm_unpacklo_epi8(r[2], r[3]), d = _mm_unpackhi_epi8(r[2], r[3]);
        _mm_storeu_si128((__m128i*)(row + w), _mm_unpacklo_epi16(a, c));
        _mm_storeu_si128((__m128i*)(row + w + 4), _mm_unpackhi_epi16(a, c));
        _mm_storeu_si128((__m128i*)(row + w + 8), _mm_unpacklo_epi16(b, d));
        _mm_storeu_si128((__m128i*)(row + w + 12), _mm_unpackhi_epi16(b, d));
      }
      uint32_t* dst = base + rdst[h];
      if (SW == 1) {
        memcpy(dst + PL, row, sizeof(uint32_t) * W);
        continue;
      }
      for (int pw = 0; pw < SW; pw++) {
        uint32_t* d = dst + cdst[pw];
        const uint32_t* r = row + s0[pw];
        int k = 0;
        if (SW == 2) {
          for (; k + 16 <= cnt[pw]; k += 16)
            _mm512_storeu_si512((void*)(d + k), _mm512_permutex2var_epi32(_mm512_loadu_si512((const void*)(r + 2 * k)), even,
                                                                       _mm512_loadu_si512((const void*)(r + 2 * k + 16))));
          if (k < cnt[pw]) {
            const __mmask16 km = (__mmask16)((1u << (cnt[pw] - k)) - 1u);
            _mm512_mask_storeu_epi32((void*)(d + k), km, _mm512_permutex2var_epi32(_mm512_loadu_si512((const void*)(r + 2 * k)), even,
                                                                                 _mm512_loadu_si512((const void*)(r + 2 * k + 16))));
            k = cnt[pw];
          }
        }
        for (; k < cnt[pw]; k++) d[k] = r[(size_t)k * SW];
      }
    }
  }
}

static void lanes_pack_slice(void* job, int s, int nslice) {
  const lanes_job* j = (const lanes_job*)job;
  const int N = j->m[M_N], G = j->depthwise ? 1 : j->m[M_G];
  long lo, hi;
  slice_range((long)N * G * j->Cq, s, nslice, &lo, &hi);
  const long per = (long)G * j->Cq;
  for (long it = lo; it < hi;) {
    const int n = (int)(it / per);
    const long end = ((long)n + 1) * per < hi ? ((long)n + 1) * per : hi;
    lanes_pack(j, n, it - (long)n * per, end - (long)n * per);
    it = end;
  }
}

/* items (n, g, block, tile), tiles innermost: a slice keeps a weight block over its tiles */
static void lanes_slice(void* job, int s, int nslice) {
  const lanes_job* j = (const lanes_job*)job;
  const int32_t* m = j->m;
  CONV_GEOMETRY(m);
  (void)H, (void)W, (void)KH, (void)KW, (void)SH, (void)SW, (void)PT, (void)PL, (void)DH, (void)DW, (void)RB, (void)K,
      (void)HP, (void)WP, (void)Cg;
  const ptrdiff_t ostride = (ptrdiff_t)OH * OW;
  const size_t osz = j->epi.kind == OUT_F32 ? 4 : 1;
  const int Gi = j->depthwise ? 1 : G; /* groups as the packing sees them */
  const long per_g = (long)j->nblk * j->ntile;
  long lo, hi;
  slice_range((long)N * Gi * per_g, s, nslice, &lo, &hi);
  const int PV = j->depthwise ? LANES_DW_PV : LANES_PV;
  const size_t plane_group = (size_t)j->Cq * SH * SW * j->PLEN * 4;
  for (long it = lo; it < hi; it++) {
    const int t = (int)(it % j->ntile);
    const int b = (int)(it / j->ntile % j->nblk);
    const long ng = it / per_g;
    const int n = (int)(ng / Gi), g = (int)(ng % Gi);
    const int v0 = t * PV, pv = j->V - v0 < PV ? j->V - v0 : PV;
    if (j->depthwise) {
      /* quad b: channels 4b..4b+3, reading planes of quad b */
      const uint8_t* planes = j->pk + (size_t)n * j->img_bytes + (size_t)b * SH * SW * j->PLEN * 4;
      const int8_t* wq = j->wp + (size_t)b * j->nsteps * 16;
      const epilogue eg = group_epilogue(&j->epi, 4 * b, 1);
      uint8_t* out = j->out + ((size_t)n * O + 4 * b) * ostride * osz;
      const int left = O - 4 * b;
      switch (pv) {
#define DW_CASE(P) case P: lanes_dw(j, planes, wq, v0, P, &eg, j->obias + 4 * b, left, out, ostride); break;
        DW_CASE(1) DW_CASE(2) DW_CASE(3) DW_CASE(4) DW_CASE(5) DW_CASE(6)
#undef DW_CASE
        default: break;
      }
    } else {
      const uint8_t* planes = j->pk + (size_t)n * j->img_bytes + (size_t)g * plane_group;
      const int ogs = j->nblk * LANES_NO;
      const int8_t* wb = j->wp + ((size_t)g * ogs + (size_t)b * LANES_NO) * j->nsteps * 4;
      const epilogue eg = group_epilogue(&j->epi, g, Og);
      const epilogue eb = group_epilogue(&eg, b, LANES_NO);
      uint8_t* out = j->rows ? j->out + (size_t)b * LANES_NO * osz
                             : j->out + ((size_t)n * O + (size_t)g * Og + (size_t)b * LANES_NO) * ostride * osz;
      const int32_t* ob = j->obias + (size_t)g * Og + (size_t)b * LANES_NO;
      const int left = Og - b * LANES_NO;
      switch (pv) {
#define DENSE_CASE(P) case P: lanes_dense(j, planes, wb, v0, P, &eb, ob, left, out, ostride); break;
        DENSE_CASE(1) DENSE_CASE(2) DENSE_CASE(3)
#undef DENSE_CASE
        default: break;
      }
    }
  }
}

/* One pool launch for the whole call: each task packs its share of the input, waits for
 * the others at the barrier, then computes its share of the output (slices by the pool's
 * task count; the same rows however they are cut).  Two launches (and the empty launches
 * asking the pool's size before each) cost a layer of tens of microseconds several
 * fork-joins. */
static int lanes_task(int task_id, sliver_ParallelGroupEnv* penv, void* cdata) {
  const int n = penv->num_task > 0 ? penv->num_task : 1;
  lanes_pack_slice(cdata, task_id, n);
  if (n > 1) TVMBackendParallelBarrier(task_id, penv);
  lanes_slice(cdata, task_id, n);
  return 0;
}

/* the whole call with LAYOUT_I8_LANES; 0, or -1 after fail() */
static int int8_lanes(const kernel_args* ka, const epilogue* epi, uint8_t flip, int xz, const int32_t* obias) {
  const int32_t* m = ka->m;
  CONV_GEOMETRY(m);
  (void)RB, (void)K;
  const int depthwise = Cg == 1 && Og == 1 && G > 1;
  const int cg = depthwise ? C : Cg;
  const int Cq = (cg + 3) / 4;
  const int HPs = (HP + SH - 1) / SH, WPs = (WP + SW - 1) / SW;
  const int V = (OH * WPs + 15) / 16;
  const int maxoff = ((KH - 1) / SH) * WPs + (KW - 1) / SW;
  int PLEN = HPs * WPs;
  if (PLEN < V * 16 + maxoff) PLEN = V * 16 + maxoff;
  const int taps = KH * KW, nsteps = depthwise ? taps : taps * Cq;
  const int rows = m[M_LAYOUT] == LAYOUT_I8_ROWS;
  if (DH != 1 || DW != 1 || m[M_WZ] != 0 || (depthwise ? m[M_RB] != taps * 16 : m[M_RB] != nsteps * 4) ||
      (rows && (N != 1 || H != 1 || G != 1 || KH != 1 || KW != 1 || SW != 1 || WP != W || HP != H)))
    return fail("sliver_lowbit_int8: bad meta for the lane layout: the library was built by a different sliver");
  const int Gi = depthwise ? 1 : G;
  const size_t img_bytes = (size_t)Gi * Cq * SH * SW * PLEN * 4;
  int32_t* soff = (int32_t*)malloc(sizeof(int32_t) * nsteps);
  uint16_t* vmask = (uint16_t*)malloc(sizeof(uint16_t) * V);
  int32_t* vdst = (int32_t*)malloc(sizeof(int32_t) * V);
  uint8_t* pk = (uint8_t*)aligned_alloc(64, (img_bytes * N + 63) / 64 * 64);
  if (!soff || !vmask || !vdst || !pk) {
    free(soff); free(vmask); free(vdst); free(pk);
    return fail("sliver_lowbit_int8: out of memory for the packed activations");
  }
  for (int kh = 0, s = 0; kh < KH; kh++)
    for (int kw = 0; kw < KW; kw++)
      for (int cq = 0; cq < (depthwise ? 1 : Cq); cq++, s++)
        soff[s] = (int32_t)(((size_t)cq * SH * SW + (size_t)(kh % SH) * SW + kw % SW) * PLEN +
                            (size_t)(kh / SH) * WPs + kw / SW);
  for (int v = 0; v < V; v++) {
    uint16_t mk = 0;
    int first = -1;
    for (int l = 0; l < 16; l++) {
      const int p = v * 16 + l, oh = p / WPs, ow = p % WPs;
      if (oh < OH && ow < OW) {
        mk |= (uint16_t)(1u << l);
        if (first < 0) first = oh * OW + ow;
      }
    }
    vmask[v] = mk;
    vdst[v] = first < 0 ? 0 : first;
  }
  const int PV = depthwise ? LANES_DW_PV : LANES_PV;
  lanes_job j = {ka->x, pk, (const int8_t*)ka->w, (uint8_t*)ka->out, obias, m, *epi, soff, vmask, vdst, flip,
                 (uint8_t)xz, Cq, HPs, WPs, PLEN, V, nsteps, depthwise ? Cq : (Og + LANES_NO - 1) / LANES_NO,
                 (V + PV - 1) / PV, depthwise, img_bytes, rows};
  const long items = (long)N * Gi * j.nblk * j.ntile;
  const double work = (double)N * O * OH * OW * ((double)(depthwise ? taps : K) + INT8_PER_OUTPUT);
  if (!TVMBackendParallelLaunch || !TVMBackendParallelBarrier || items < 2 || work < INT8_MIN_WORK ||
      TVMBackendParallelLaunch(lanes_task, (void*)&j, 0) != 0) { /* serial (tasks never fail) */
    lanes_pack_slice((void*)&j, 0, 1);
    lanes_slice((void*)&j, 0, 1);
  }
  free(soff); free(vmask); free(vdst); free(pk);
  return 0;
}
#endif

/* args: x codes int8/uint8 [N][C][H][W], weights int8 [O][RB], wsum int32 [O] (of w'),
 * meta int32 [META_LEN] (ABITS/WBITS unused; WSIGNED=1: no weight is -128; XZ the
 * activation zero point of the codes as given, WZ that of w'), scale, bias, epi, out as the bit-serial kernel. */
SLIVER_EXTERN __attribute__((optimize("no-tree-loop-distribute-patterns"))) int __tvm_ffi_sliver_lowbit_int8(
    void* self, const sliver_Any* args, int32_t nargs, sliver_Any* result) {
  (void)self;
  kernel_args ka;
  if (unpack_args(args, nargs, "sliver_lowbit_int8: expected 8 arguments (x, packed w, wsum, meta, scale, bias, epi, out)", &ka)) return -1;
  const uint8_t *x = ka.x, *wp = ka.w;
  const int32_t *wsum = ka.wsum, *m = ka.m;
  uint8_t* out = (uint8_t*)ka.out;
  epilogue epi;
  make_epilogue(&ka, &epi);
  const size_t osz = out_size(m);
  CONV_GEOMETRY(m);
  (void)SH, (void)SW, (void)DH, (void)DW; /* int8_slice reads them */
  const int wz = m[M_WZ];
#ifdef I8_UNSIGNED_X
  const uint8_t flip = m[M_ASIGNED] ? 0x80 : 0; /* u8 x s8 products: signed codes become x' = x + 128 */
  const int xz = m[M_XZ] + (flip ? 128 : 0), xz_lo = 0, xz_hi = 255;
#else
  const uint8_t flip = m[M_ASIGNED] ? 0 : 0x80; /* s8 x s8 products: unsigned codes become x' = x - 128 */
  const int xz = m[M_XZ] - (flip ? 128 : 0), xz_lo = -128, xz_hi = 127;
#endif
  const int layout = m[M_LAYOUT];
  if ((layout != LAYOUT_I8_LANES && layout != LAYOUT_I8_ROWS && (RB % 16 || RB < K)) || m[M_TAPB] != Cg || xz < xz_lo || xz > xz_hi)
    return fail("sliver_lowbit_int8: bad meta (row bytes a multiple of 16 holding KH*KW*Cg bytes, one byte per "
                "channel): the library was built by a different sliver");
  if (layout == LAYOUT_I8_LANES || layout == LAYOUT_I8_ROWS) {
#ifdef I8_LANES
    int32_t* lb = (int32_t*)malloc(sizeof(int32_t) * O);
    if (!lb) return fail("sliver_lowbit_int8: out of memory");
    for (int o = 0; o < O; o++) lb[o] = -xz * wsum[o]; /* WZ = 0 */
    const int rc = int8_lanes(&ka, &epi, flip, xz, lb);
    free(lb);
    if (rc) return rc;
    return return_none(result);
#else
    return fail("sliver_lowbit_int8: the weights are laid out for the AVX-512 VNNI lane kernel this library was "
                "built without (the artifact was compiled for another CPU)");
#endif
  }
#ifdef I8_TILE
  const row_fn fn = layout == LAYOUT_I8_TILE ? i8_row_tile : m[M_WSIGNED] ? i8_row_narrow : i8_row_wide;
#else
  if (layout == LAYOUT_I8_TILE)
    return fail("sliver_lowbit_int8: the weights are tiled for a dot-product kernel this library was built "
                "without (the artifact was compiled for another CPU)");
  const row_fn fn = m[M_WSIGNED] ? i8_row_narrow : i8_row_wide;
#endif
  if (layout != LAYOUT_PLAIN && layout != LAYOUT_I8_TILE)
    return fail("sliver_lowbit_int8: bad meta LAYOUT: the library was built by a different sliver");
  /* output rows cut into slices on TVM's pool as in the bit-serial kernel, each with its
   * own padded input [HP][WP][Cg], im2col rows, sums: all allocated before any output is written */
  const long items = (long)N * G * OH;
  const int nslice = pool_slices(items, (double)items * OW * Og * ((double)RB + INT8_PER_OUTPUT), INT8_MIN_WORK);
  /* the direct form on aarch64 (tiles reading the padded input, no im2col rows): symmetric
   * weights (no Sx term), whole 16-byte steps per tap; output pixels in chunks whose sums
   * (Og x chunk int32) stay near 64 KB */
  int direct = 0;
#ifdef I8_DIRECT
#ifdef I8_TILE
  const int direct_layout = LAYOUT_I8_TILE; /* sdot: the tiled weights */
#else
  const int direct_layout = LAYOUT_PLAIN; /* ARMv8.0: weight rows */
#endif
  if (layout == direct_layout && wz == 0 && Cg % 16 == 0 && RB == K && KH * KW <= I8_MAX_TAPS) {
    direct = (16384 / Og) & ~3;
    direct = direct < 4 ? 4 : direct;
  }
#endif
  const int npx_scratch = direct > OW ? direct : OW;
  enum { S_PK, S_ROWS, S_SX, S_ACC, S_PX, S_N };
  const size_t sizes[S_N] = {(size_t)HP * WP * Cg, direct ? 0 : (size_t)OW * RB, sizeof(int32_t) * OW,
                             sizeof(int32_t) * (size_t)Og * npx_scratch, sizeof(int8_t*) * (size_t)(direct ? direct : 1)};
  const size_t slice_bytes = carve(NULL, sizes, NULL, S_N);
  uint8_t* scratch = (uint8_t*)calloc(nslice, slice_bytes);
  i8_scratch* slices = (i8_scratch*)malloc(sizeof(i8_scratch) * nslice);
  int32_t* obias = (int32_t*)malloc(sizeof(int32_t) * O);
  if (!scratch || !slices || !obias) {
    free(scratch); free(slices); free(obias);
    return fail("sliver_lowbit_int8: out of memory for the packed activations");
  }
  for (int s = 0; s < nslice; s++) {
    void* p[S_N];
    carve(scratch + (size_t)s * slice_bytes, sizes, p, S_N);
    slices[s] = (i8_scratch){(int8_t*)p[S_PK], (int8_t*)p[S_ROWS], (int32_t*)p[S_SX], (int32_t*)p[S_ACC],
                             (const int8_t**)p[S_PX]};
  }
  for (int o = 0; o < O; o++) obias[o] = K * xz * wz - xz * wsum[o];
  i8_job job = {x, (const int8_t*)wp, out, obias, m, epi, fn, flip, xz, wz, osz, slices,
                layout == LAYOUT_I8_TILE ? (Og + 15) / 16 * 16 : Og, direct, {0}};
  if (direct)
    for (int kh = 0; kh < KH; kh++)
      for (int kw = 0; kw < KW; kw++) job.tapoff[kh * KW + kw] = (int32_t)(((size_t)kh * DH * WP + (size_t)kw * DW) * Cg);
  pool_job pj = {int8_slice, (void*)&job, nslice};
  pool_run(&pj);
  free(scratch); free(slices); free(obias);
  return return_none(result);
}
