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
 * the zero points moving with them, so (x - xz)(w - wz) is unchanged.  Sx (per output
 * pixel) comes from the activation planes' popcounts; Sw[o] is computed at compile time.
 *
 * Layout.  Weights are packed at compile time (backends/tvm/lowbit.py) as
 * uint8 [O][WB][RB]: for output channel o and weight plane j, one "row" of RB bytes
 * holding the bits of taps (kh, kw) in order, each tap ceil(Cg/8) bytes (channel c of
 * the group at bit c%8 of byte c/8), zero-filled to RB (a multiple of ROW_ALIGN bytes:
 * one vector register).
 * Activations are packed here at run time the same way: first every (padded) input
 * pixel of a group into tap-sized bit planes, then, one output row at a time, the
 * im2col rows of that output row.  Padding channel bits are 0 in both, so they never
 * count; padded pixels hold xz in every real channel.
 *
 * Inner loop.  aarch64: 16 bytes at a time, AND, `cnt` (vcntq_u8), and byte-pair
 * accumulation into 16-bit lanes (`uadalp`, vpadalq_u8) for a block of output channels
 * kept in registers; for narrow planes (W2A2, W1A*, ...) all plane pairs of a channel
 * are first fused per byte with `mla` (see FUSABLE), wider ones keep an accumulator
 * per plane pair.
 * x86 with AVX2 (no vector popcount before AVX-512 VPOPCNTDQ): 32 bytes at a time,
 * nibble-table popcount (vpshufb), bytes summed with vpsadbw.  Elsewhere: 64-bit
 * words and the scalar popcount.
 *
 * meta (int32[META_LEN]): see enum below; out: int32 [N][O][OH][OW].
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__aarch64__)
#include <arm_neon.h>
#define ROW_ALIGN 16 /* packed rows are a whole number of NEON registers */
#elif defined(__AVX2__)
#include <immintrin.h>
#define ROW_ALIGN 32 /* ... of AVX2 registers */
#else
#define ROW_ALIGN 8
#endif

#ifdef __cplusplus
#define SLIVER_EXTERN extern "C"
#else
#define SLIVER_EXTERN
#endif

/* ---- the TVM-FFI C ABI (tvm_ffi 0.1, include/tvm/ffi/c_api.h), the parts we use ---- */
typedef struct {
  void* data;
  struct { int32_t device_type; int32_t device_id; } device;
  int32_t ndim;
  struct { uint8_t code; uint8_t bits; uint16_t lanes; } dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} sliver_DLTensor;
typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  union { int64_t v_int64; double v_float64; void* v_ptr; } u;
} sliver_Any;
typedef struct { uint64_t ref; int32_t type_index; uint32_t pad; void* deleter; } sliver_Object;
enum { kAnyNone = 0, kAnyDLTensorPtr = 7 };
/* Raise an error the caller sees as a Python exception (libtvm_ffi, already loaded in
 * the process; weak, so the library still loads if it is not). */
SLIVER_EXTERN void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* message) __attribute__((weak));
static int fail(const char* message) {
  if (TVMFFIErrorSetRaisedFromCStr) TVMFFIErrorSetRaisedFromCStr("RuntimeError", message);
  return -1;
}

static sliver_DLTensor* as_tensor(const sliver_Any* a) {
  if (a->type_index == kAnyDLTensorPtr) return (sliver_DLTensor*)a->u.v_ptr;
  return (sliver_DLTensor*)((char*)a->u.v_ptr + sizeof(sliver_Object)); /* ffi::Tensor object */
}
static void* data_of(const sliver_Any* a) {
  sliver_DLTensor* t = as_tensor(a);
  return (char*)t->data + t->byte_offset;
}

/* ---- meta layout (kept in sync with lowbit.py: META_FIELDS) ---- */
enum {
  M_N, M_C, M_H, M_W, M_O, M_KH, M_KW, M_SH, M_SW, M_PT, M_PL, M_PB, M_PR, M_DH, M_DW, M_G,
  M_ABITS, M_ASIGNED, M_WBITS, M_WSIGNED, M_XZ, M_WZ, M_OH, M_OW, M_TAPB, M_RB, META_LEN
};


#if defined(__aarch64__)
static inline uint32_t count_row(const uint8_t* p, int rb) {
  uint32_t s = 0;
  for (int v = 0; v < rb; v += 16) s += vaddlvq_u8(vcntq_u8(vld1q_u8(p + v)));
  return s;
}
#else
static inline uint32_t count_row(const uint8_t* p, int rb) {
  uint32_t s = 0;
  for (int v = 0; v < rb; v += 8) {
    uint64_t a;
    memcpy(&a, p + v, 8);
    s += (uint32_t)__builtin_popcountll(a);
  }
  return s;
}
#endif

/* out[ob * ostride] = sum_ij coef[i*W+j] * popcount(row_i AND w_{ob, j}) + obias[ob] + base,
 * the popcounts over rb bytes, for a block of OB output channels; A, W and OB are
 * compile-time constants, so the accumulators live in registers. */
#if defined(__aarch64__)
/* Narrow planes (FUSABLE: (2^A - 1)(2^W - 1) <= 31) fuse all plane pairs of an output
 * channel into one byte per lane before widening: t = sum_ij 2^(i+j) cnt(x_i AND w_j)
 * <= 8 * 31 < 256 (one `mla` per pair instead of one accumulator per pair), then one
 * `uadalp`; the 16-bit lanes gain <= 510 per step, flushed every 128 steps.  Wider
 * planes keep one 16-bit accumulator per pair (<= 16 per step, flushed every 2048). */
#define FUSABLE(A, W) (((1 << (A)) - 1) * ((1 << (W)) - 1) <= 31)
#define NEON_CHUNK(A, W) (FUSABLE(A, W) ? 128 * 16 : 2048 * 16)
#define DEFINE_DOT(NAME, A, W, OB)                                                               \
  static inline __attribute__((always_inline)) void NAME##_chunk(                                \
      const uint8_t* row, const uint8_t* w, int rb, int v0, int v1, const int32_t* coef,         \
      int32x4_t* tot) {                                                                          \
    const int wstride = (W) * rb;                                                                \
    if (FUSABLE(A, W)) {                                                                         \
      uint16x8_t acc[OB];                                                                        \
      _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++) acc[ob] = vdupq_n_u16(0);       \
      for (int v = v0; v < v1; v += 16) {                                                        \
        uint8x16_t xv[A];                                                                        \
        _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++) xv[i] = vld1q_u8(row + i * rb + v); \
        _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++) {                             \
          uint8x16_t t = vdupq_n_u8(0);                                                          \
          _Pragma("GCC unroll 8") for (int j = 0; j < (W); j++) {                                \
            uint8x16_t wv = vld1q_u8(w + ob * wstride + j * rb + v);                             \
            _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++) {                              \
              uint8x16_t c = vcntq_u8(vandq_u8(xv[i], wv));                                      \
              t = (i + j == 0) ? c : vmlaq_u8(t, c, vdupq_n_u8((uint8_t)(1u << (i + j))));       \
            }                                                                                    \
          }                                                                                      \
          acc[ob] = vpadalq_u8(acc[ob], t);                                                      \
        }                                                                                        \
      }                                                                                          \
      _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++)                                 \
        tot[ob] = vaddq_s32(tot[ob], vreinterpretq_s32_u32(vpaddlq_u16(acc[ob])));               \
    } else {                                                                                     \
      uint16x8_t acc[OB][A][W];                                                                  \
      _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++)                                 \
      _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++)                                      \
      _Pragma("GCC unroll 8") for (int j = 0; j < (W); j++) acc[ob][i][j] = vdupq_n_u16(0);      \
      for (int v = v0; v < v1; v += 16) {                                                        \
        uint8x16_t xv[A];                                                                        \
        _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++) xv[i] = vld1q_u8(row + i * rb + v); \
        _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++)                               \
        _Pragma("GCC unroll 8") for (int j = 0; j < (W); j++) {                                  \
          uint8x16_t wv = vld1q_u8(w + ob * wstride + j * rb + v);                               \
          _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++)                                  \
            acc[ob][i][j] = vpadalq_u8(acc[ob][i][j], vcntq_u8(vandq_u8(xv[i], wv)));            \
        }                                                                                        \
      }                                                                                          \
      /* widen pairs of lanes to 32 bits, weight by the plane pair's coefficient */              \
      _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++)                                 \
      _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++)                                      \
      _Pragma("GCC unroll 8") for (int j = 0; j < (W); j++)                                      \
        tot[ob] = vmlaq_n_s32(tot[ob], vreinterpretq_s32_u32(vpaddlq_u16(acc[ob][i][j])), coef[i * (W) + j]); \
    }                                                                                            \
  }                                                                                              \
  static void NAME(const uint8_t* row, const uint8_t* w, int rb, const int32_t* coef,           \
                   int32_t* out, ptrdiff_t ostride, const int32_t* obias, int32_t base) {        \
    int32x4_t tot[OB];                                                                           \
    _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++) tot[ob] = vdupq_n_s32(0);         \
    if (rb <= NEON_CHUNK(A, W)) {                                                                \
      NAME##_chunk(row, w, rb, 0, rb, coef, tot);                                                \
    } else {                                                                                     \
      for (int v0 = 0; v0 < rb; v0 += NEON_CHUNK(A, W))                                          \
        NAME##_chunk(row, w, rb, v0, v0 + NEON_CHUNK(A, W) < rb ? v0 + NEON_CHUNK(A, W) : rb, coef, tot); \
    }                                                                                            \
    _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++)                                   \
      out[ob * ostride] = vaddvq_s32(tot[ob]) + obias[ob] + base;                                \
  }
#elif defined(__AVX2__)
/* x86 without a vector popcount: per 32 bytes, AND, then popcount by nibble lookup
 * (vpshufb), byte counts summed in 8-bit lanes for up to 31 steps (31 * 8 < 256) and
 * flushed to 64-bit lanes with vpsadbw. */
#define DEFINE_DOT(NAME, A, W, OB)                                                               \
  static void NAME(const uint8_t* row, const uint8_t* w, int rb, const int32_t* coef,           \
                   int32_t* out, ptrdiff_t ostride, const int32_t* obias, int32_t base) {        \
    const int wstride = (W) * rb;                                                                \
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,         \
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);        \
    const __m256i low = _mm256_set1_epi8(0x0f);                                                  \
    __m256i tot[OB][A][W];                                                                       \
    _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++)                                   \
    _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++)                                        \
    _Pragma("GCC unroll 8") for (int j = 0; j < (W); j++) tot[ob][i][j] = _mm256_setzero_si256(); \
    for (int v0 = 0; v0 < rb; v0 += 31 * 32) {                                                   \
      int v1 = v0 + 31 * 32 < rb ? v0 + 31 * 32 : rb;                                            \
      __m256i acc[OB][A][W];                                                                     \
      _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++)                                 \
      _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++)                                      \
      _Pragma("GCC unroll 8") for (int j = 0; j < (W); j++) acc[ob][i][j] = _mm256_setzero_si256(); \
      for (int v = v0; v < v1; v += 32) {                                                        \
        __m256i xv[A];                                                                           \
        _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++)                                    \
          xv[i] = _mm256_loadu_si256((const __m256i*)(row + i * rb + v));                        \
        _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++)                               \
        _Pragma("GCC unroll 8") for (int j = 0; j < (W); j++) {                                  \
          __m256i wv = _mm256_loadu_si256((const __m256i*)(w + ob * wstride + j * rb + v));      \
          _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++) {                                \
            __m256i a = _mm256_and_si256(xv[i], wv);                                             \
            __m256i c = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(a, low)),      \
                                        _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(a, 4), low))); \
            acc[ob][i][j] = _mm256_add_epi8(acc[ob][i][j], c);                                   \
          }                                                                                      \
        }                                                                                        \
      }                                                                                          \
      _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++)                                 \
      _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++)                                      \
      _Pragma("GCC unroll 8") for (int j = 0; j < (W); j++)                                      \
        tot[ob][i][j] = _mm256_add_epi64(tot[ob][i][j], _mm256_sad_epu8(acc[ob][i][j], _mm256_setzero_si256())); \
    }                                                                                            \
    for (int ob = 0; ob < (OB); ob++) {                                                          \
      int64_t s = 0;                                                                             \
      for (int i = 0; i < (A); i++)                                                              \
        for (int j = 0; j < (W); j++) {                                                          \
          int64_t q[4];                                                                          \
          memcpy(q, &tot[ob][i][j], sizeof(q));                                                  \
          s += (int64_t)coef[i * (W) + j] * (q[0] + q[1] + q[2] + q[3]);                         \
        }                                                                                        \
      out[ob * ostride] = (int32_t)s + obias[ob] + base;                                         \
    }                                                                                            \
  }
#else
#define DEFINE_DOT(NAME, A, W, OB)                                                               \
  static void NAME(const uint8_t* row, const uint8_t* w, int rb, const int32_t* coef,           \
                   int32_t* out, ptrdiff_t ostride, const int32_t* obias, int32_t base) {        \
    const int wstride = (W) * rb;                                                                \
    uint32_t acc[OB][A][W];                                                                      \
    memset(acc, 0, sizeof(acc));                                                                 \
    for (int v = 0; v < rb; v += 8) {                                                            \
      uint64_t xv[A];                                                                            \
      _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++) memcpy(&xv[i], row + i * rb + v, 8); \
      _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++)                                 \
      _Pragma("GCC unroll 8") for (int j = 0; j < (W); j++) {                                    \
        uint64_t wv;                                                                             \
        memcpy(&wv, w + ob * wstride + j * rb + v, 8);                                           \
        _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++)                                    \
          acc[ob][i][j] += (uint32_t)__builtin_popcountll(xv[i] & wv);                           \
      }                                                                                          \
    }                                                                                            \
    for (int ob = 0; ob < (OB); ob++) {                                                          \
      int32_t s = 0;                                                                             \
      for (int i = 0; i < (A); i++)                                                              \
        for (int j = 0; j < (W); j++) s += coef[i * (W) + j] * (int32_t)acc[ob][i][j];           \
      out[ob * ostride] = s + obias[ob] + base;                                                  \
    }                                                                                            \
  }
#endif

/* Output channels per block: as many as keep <= 16 plane-pair accumulators. */
#if defined(__aarch64__)
#define OB_OF(A, W) (FUSABLE(A, W) ? 4 : (A) * (W) >= 16 ? 1 : 16 / ((A) * (W)))
#else
#define OB_OF(A, W) ((A) * (W) >= 16 ? 1 : 16 / ((A) * (W)))
#endif

/* The dot products of one im2col row with the weights of output channels [0, og). */
#define DEFINE_PAIR(A, W)                                                                        \
  DEFINE_DOT(dot_blk_##A##_##W, A, W, OB_OF(A, W))                                               \
  DEFINE_DOT(dot_one_##A##_##W, A, W, 1)                                                         \
  static void conv_row_##A##_##W(const uint8_t* row, const uint8_t* wp, int rb, int og,          \
                                 const int32_t* coef, int32_t* out, ptrdiff_t ostride,           \
                                 const int32_t* obias, int32_t base) {                           \
    enum { OBK = OB_OF(A, W) };                                                                  \
    int o = 0;                                                                                   \
    for (; o + OBK <= og; o += OBK)                                                              \
      dot_blk_##A##_##W(row, wp + (size_t)o * (W) * rb, rb, coef, out + o * ostride, ostride,    \
                        obias + o, base);                                                        \
    for (; o < og; o++)                                                                          \
      dot_one_##A##_##W(row, wp + (size_t)o * (W) * rb, rb, coef, out + o * ostride, ostride,    \
                        obias + o, base);                                                        \
  }

typedef void (*row_fn)(const uint8_t*, const uint8_t*, int, int, const int32_t*, int32_t*, ptrdiff_t,
                       const int32_t*, int32_t);

#define PAIRS(X)                                                                                 \
  X(1, 1) X(1, 2) X(1, 3) X(1, 4) X(1, 5) X(1, 6) X(1, 7)                                        \
  X(2, 1) X(2, 2) X(2, 3) X(2, 4) X(2, 5) X(2, 6) X(2, 7)                                        \
  X(3, 1) X(3, 2) X(3, 3) X(3, 4) X(3, 5) X(3, 6) X(3, 7)                                        \
  X(4, 1) X(4, 2) X(4, 3) X(4, 4) X(4, 5) X(4, 6) X(4, 7)                                        \
  X(5, 1) X(5, 2) X(5, 3) X(5, 4) X(5, 5) X(5, 6) X(5, 7)                                        \
  X(6, 1) X(6, 2) X(6, 3) X(6, 4) X(6, 5) X(6, 6) X(6, 7)                                        \
  X(7, 1) X(7, 2) X(7, 3) X(7, 4) X(7, 5) X(7, 6) X(7, 7)

PAIRS(DEFINE_PAIR)

#define TABLE_ENTRY(A, W) conv_row_##A##_##W,
static const row_fn ROW_FNS[49] = {PAIRS(TABLE_ENTRY)};

/* args: x codes int8/uint8 [N][C][H][W], packed weights uint8 [O][WB][RB],
 * wsum int32 [O], meta int32 [META_LEN], out int32 [N][O][OH][OW]. */
/* (no-tree-loop-distribute-patterns: the short im2col copies stay inline word moves
 * instead of becoming one libc memcpy call per tap) */
SLIVER_EXTERN __attribute__((optimize("no-tree-loop-distribute-patterns"))) int __tvm_ffi_sliver_lowbit_bitserial(void* self, const sliver_Any* args, int32_t nargs,
                                                    sliver_Any* result) {
  (void)self;
  if (nargs != 5) return fail("sliver_lowbit_bitserial: expected 5 arguments (x, packed w, wsum, meta, out)");
  const uint8_t* x = (const uint8_t*)data_of(&args[0]);
  const uint8_t* wp = (const uint8_t*)data_of(&args[1]);
  const int32_t* wsum = (const int32_t*)data_of(&args[2]);
  const int32_t* m = (const int32_t*)data_of(&args[3]);
  int32_t* out = (int32_t*)data_of(&args[4]);
  const int N = m[M_N], C = m[M_C], H = m[M_H], W = m[M_W], O = m[M_O], KH = m[M_KH], KW = m[M_KW];
  const int SH = m[M_SH], SW = m[M_SW], PT = m[M_PT], PL = m[M_PL], DH = m[M_DH], DW = m[M_DW], G = m[M_G];
  const int AB = m[M_ABITS], WB = m[M_WBITS], wz = m[M_WZ];
  /* Signed activation codes become offset binary (x + 2^(A-1): flip the top bit), the
   * zero point moving with them, so every plane weighs +2^i.  (Signed weights arrive
   * packed that way already: WSIGNED must be 0.) */
  const int aflip = m[M_ASIGNED] ? 1 << (AB - 1) : 0;
  const int xz = m[M_XZ] + aflip;
  const int OH = m[M_OH], OW = m[M_OW], TAPB = m[M_TAPB], RB = m[M_RB];
  const int HP = H + PT + m[M_PB], WP = W + PL + m[M_PR];
  const int Cg = C / G, Og = O / G, K = KH * KW * Cg;
  if (AB < 1 || AB > 7 || WB < 1 || WB > 7 || RB % ROW_ALIGN || m[M_WSIGNED])
    return fail("sliver_lowbit_bitserial: bad meta (bit widths 1..7, row bytes a multiple of the vector, "
                "unsigned weight planes): the library was built by a different sliver");
  int32_t cx[8], cw[8];
  for (int i = 0; i < AB; i++) cx[i] = 1 << i;
  for (int j = 0; j < WB; j++) cw[j] = 1 << j;
  const row_fn fn = ROW_FNS[(AB - 1) * 7 + (WB - 1)];
  int32_t coef[64];
  for (int i = 0; i < AB; i++)
    for (int j = 0; j < WB; j++) coef[i * WB + j] = cx[i] * cw[j];

  /* padded input pixels of one group, each AB planes of TAPB bytes */
  const size_t pix = (size_t)AB * TAPB;
  uint8_t* pk = (uint8_t*)calloc((size_t)HP * WP * pix, 1);
  uint8_t* rows = (uint8_t*)calloc((size_t)OW * AB * RB, 1);
  int32_t* sx = (int32_t*)malloc(sizeof(int32_t) * OW);
  int32_t* obias = (int32_t*)malloc(sizeof(int32_t) * O);
  uint8_t* zpat = (uint8_t*)calloc(pix, 1);
  if (!pk || !rows || !sx || !obias || !zpat) {
    free(pk); free(rows); free(sx); free(obias); free(zpat);
    return fail("sliver_lowbit_bitserial: out of memory for the packed activations");
  }
  /* acc = Sxw - wz*Sx - xz*Sw[o] + K*xz*wz: the last two per output channel */
  for (int o = 0; o < O; o++) obias[o] = K * xz * wz - xz * wsum[o];
  /* a padded pixel: the code xz in every real channel of the group */
  for (int c = 0; c < Cg; c++)
    for (int i = 0; i < AB; i++) zpat[i * TAPB + c / 8] |= (uint8_t)((((unsigned)xz >> i) & 1u) << (c % 8));
  const size_t HW = (size_t)H * W;
  const ptrdiff_t ostride = (ptrdiff_t)OH * OW;
  for (int n = 0; n < N; n++) {
    for (int g = 0; g < G; g++) {
      /* 1. bit-pack the (padded) input pixels of this group */
      for (int hp = 0; hp < HP; hp++) {
        const int h = hp - PT;
        for (int wq = 0; wq < WP; wq++) {
          const int ww = wq - PL;
          uint8_t* dst = pk + ((size_t)hp * WP + wq) * pix;
          if (!(h >= 0 && h < H && ww >= 0 && ww < W)) {
            memcpy(dst, zpat, pix);
            continue;
          }
          const uint8_t* src = x + (((size_t)n * C + (size_t)g * Cg) * H + h) * W + ww;
          for (int cb = 0; cb < TAPB; cb++) {
            /* 8 channels' codes as the bytes of one word, then plane i's bits gathered
             * into one byte by a multiply (byte k's bit 0 -> bit k of the top byte) */
            const int c0 = cb * 8, nc = Cg - c0 < 8 ? Cg - c0 : 8;
            const uint8_t* s8 = src + (size_t)c0 * HW;
            uint64_t v = 0;
            if (nc == 8) {
              v = (uint64_t)s8[0] | (uint64_t)s8[HW] << 8 | (uint64_t)s8[2 * HW] << 16 | (uint64_t)s8[3 * HW] << 24 |
                  (uint64_t)s8[4 * HW] << 32 | (uint64_t)s8[5 * HW] << 40 | (uint64_t)s8[6 * HW] << 48 |
                  (uint64_t)s8[7 * HW] << 56;
            } else {
              for (int k = 0; k < nc; k++) v |= (uint64_t)s8[k * HW] << (8 * k);
            }
            v ^= (0x0101010101010101ull * (uint64_t)aflip) & (nc == 8 ? ~0ull : (1ull << (8 * nc)) - 1);
            for (int i = 0; i < AB; i++)
              dst[i * TAPB + cb] = (uint8_t)((((v >> i) & 0x0101010101010101ull) * 0x0102040810204080ull) >> 56);
          }
        }
      }
      const uint8_t* wg = wp + (size_t)g * Og * WB * RB;
      for (int oh = 0; oh < OH; oh++) {
        /* 2. the im2col rows of this output row */
        for (int ow = 0; ow < OW; ow++) {
          uint8_t* r = rows + (size_t)ow * AB * RB;
          for (int kh = 0; kh < KH; kh++)
            for (int kw = 0; kw < KW; kw++) {
              const uint8_t* s = pk + ((size_t)(oh * SH + kh * DH) * WP + (ow * SW + kw * DW)) * pix;
              const int off = (kh * KW + kw) * TAPB;
              for (int i = 0; i < AB; i++) {
                uint8_t* d = r + (size_t)i * RB + off;
                const uint8_t* si = s + i * TAPB;
                int k = 0;
                for (; k + 8 <= TAPB; k += 8) memcpy(d + k, si + k, 8);
                for (; k < TAPB; k++) d[k] = si[k];
              }
            }
          int32_t t = 0;
          for (int i = 0; i < AB; i++) t += cx[i] * (int32_t)count_row(r + (size_t)i * RB, RB);
          sx[ow] = t;
        }
        /* 3. popcount dot products, zero points folded, written to out[n, g*Og + o, oh, ow] */
        int32_t* orow = out + (((size_t)n * O + (size_t)g * Og) * OH + oh) * OW;
        for (int ow = 0; ow < OW; ow++)
          fn(rows + (size_t)ow * AB * RB, wg, RB, Og, coef, orow + ow, ostride, obias + g * Og, -wz * sx[ow]);
      }
    }
  }
  free(pk); free(rows); free(sx); free(obias); free(zpat);
  result->type_index = kAnyNone;
  result->u.v_int64 = 0;
  return 0;
}
