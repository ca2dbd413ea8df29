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
 *   Sxw = sum_ij cx_i * cw_j * popcount(xplane_i AND wplane_j)
 * where c_i = 2^i, except the top plane of a signed (two's-complement) operand,
 * whose weight is -2^(B-1).  Sx (per output pixel) comes from the activation planes'
 * popcounts; Sw[o] (per output channel) is computed at compile time.
 *
 * Layout.  Weights are packed at compile time (backends/tvm/lowbit.py) as
 * uint8 [O][WB][RB]: for output channel o and weight plane j, one "row" of RB bytes
 * holding the bits of taps (kh, kw) in order, each tap ceil(Cg/8) bytes (channel c of
 * the group at bit c%8 of byte c/8), zero-filled to RB (a multiple of 16 bytes).
 * Activations are packed here at run time the same way: first every (padded) input
 * pixel of a group into tap-sized bit planes, then, one output row at a time, the
 * im2col rows of that output row.  Padding channel bits are 0 in both, so they never
 * count; padded pixels hold xz in every real channel.
 *
 * Inner loop.  aarch64: 16 bytes at a time, AND, `cnt` (vcntq_u8), and byte-pair
 * accumulation into 16-bit lanes (`uadalp`, vpadalq_u8), a block of output channels
 * x all plane pairs kept in registers; lanes are flushed to 32 bits every 2048 steps.
 * Elsewhere: 64-bit words and the scalar popcount instruction.
 *
 * meta (int32[META_LEN]): see enum below; out: int32 [N][O][OH][OW].
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__aarch64__)
#include <arm_neon.h>
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

static inline int32_t plane_coef(int i, int bits, int is_signed) {
  return (is_signed && i == bits - 1) ? -(1 << i) : (1 << i);
}

#if defined(__aarch64__)
#define STEP 16
static inline uint32_t count_row(const uint8_t* p, int rb) {
  uint32_t s = 0;
  for (int v = 0; v < rb; v += 16) s += vaddlvq_u8(vcntq_u8(vld1q_u8(p + v)));
  return s;
}
#else
#define STEP 8
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

/* cnt[ob][i][j] += popcount(row_i AND w_{ob, j}) over rb bytes, for a block of OB output
 * channels; A, W and OB are compile-time constants, so the accumulators live in
 * registers. */
#if defined(__aarch64__)
#define DEFINE_DOT(NAME, A, W, OB)                                                               \
  static void NAME(const uint8_t* row, const uint8_t* w, int rb, uint32_t cnt[OB][A][W]) {       \
    const int wstride = (W) * rb;                                                                \
    for (int v0 = 0; v0 < rb; v0 += 2048 * 16) { /* 16-bit lanes: flush before overflow */     \
      int v1 = v0 + 2048 * 16 < rb ? v0 + 2048 * 16 : rb;                                        \
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
      _Pragma("GCC unroll 16") for (int ob = 0; ob < (OB); ob++)                                 \
      _Pragma("GCC unroll 8") for (int i = 0; i < (A); i++)                                      \
      _Pragma("GCC unroll 8") for (int j = 0; j < (W); j++) cnt[ob][i][j] += vaddlvq_u16(acc[ob][i][j]); \
    }                                                                                            \
  }
#else
#define DEFINE_DOT(NAME, A, W, OB)                                                               \
  static void NAME(const uint8_t* row, const uint8_t* w, int rb, uint32_t cnt[OB][A][W]) {       \
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
    for (int ob = 0; ob < (OB); ob++)                                                            \
      for (int i = 0; i < (A); i++)                                                              \
        for (int j = 0; j < (W); j++) cnt[ob][i][j] += acc[ob][i][j];                            \
  }
#endif

/* Output channels per block: as many as keep <= 16 plane-pair accumulators. */
#define OB_OF(A, W) ((A) * (W) >= 16 ? 1 : 16 / ((A) * (W)))

/* sxw[o] = sum_ij cx_i cw_j popcount(row_i AND w_oj) for o in [0, og). */
#define DEFINE_PAIR(A, W)                                                                        \
  DEFINE_DOT(dot_blk_##A##_##W, A, W, OB_OF(A, W))                                               \
  DEFINE_DOT(dot_one_##A##_##W, A, W, 1)                                                         \
  static void conv_row_##A##_##W(const uint8_t* row, const uint8_t* wp, int rb, int og,          \
                                 const int32_t* cx, const int32_t* cw, int32_t* sxw) {           \
    enum { OBK = OB_OF(A, W) };                                                                  \
    int o = 0;                                                                                   \
    for (; o + OBK <= og; o += OBK) {                                                            \
      uint32_t cnt[OBK][A][W];                                                                   \
      memset(cnt, 0, sizeof(cnt));                                                               \
      dot_blk_##A##_##W(row, wp + (size_t)o * (W) * rb, rb, cnt);                                \
      for (int ob = 0; ob < OBK; ob++) {                                                         \
        int32_t s = 0;                                                                           \
        for (int i = 0; i < (A); i++)                                                            \
          for (int j = 0; j < (W); j++) s += cx[i] * cw[j] * (int32_t)cnt[ob][i][j];            \
        sxw[o + ob] = s;                                                                         \
      }                                                                                          \
    }                                                                                            \
    for (; o < og; o++) {                                                                        \
      uint32_t cnt[1][A][W];                                                                     \
      memset(cnt, 0, sizeof(cnt));                                                               \
      dot_one_##A##_##W(row, wp + (size_t)o * (W) * rb, rb, cnt);                                \
      int32_t s = 0;                                                                             \
      for (int i = 0; i < (A); i++)                                                              \
        for (int j = 0; j < (W); j++) s += cx[i] * cw[j] * (int32_t)cnt[0][i][j];                \
      sxw[o] = s;                                                                                \
    }                                                                                            \
  }

typedef void (*row_fn)(const uint8_t*, const uint8_t*, int, int, const int32_t*, const int32_t*, int32_t*);

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
SLIVER_EXTERN int __tvm_ffi_sliver_lowbit_bitserial(void* self, const sliver_Any* args, int32_t nargs,
                                                    sliver_Any* result) {
  (void)self;
  if (nargs != 5) return -1;
  const uint8_t* x = (const uint8_t*)data_of(&args[0]);
  const uint8_t* wp = (const uint8_t*)data_of(&args[1]);
  const int32_t* wsum = (const int32_t*)data_of(&args[2]);
  const int32_t* m = (const int32_t*)data_of(&args[3]);
  int32_t* out = (int32_t*)data_of(&args[4]);
  const int N = m[M_N], C = m[M_C], H = m[M_H], W = m[M_W], O = m[M_O], KH = m[M_KH], KW = m[M_KW];
  const int SH = m[M_SH], SW = m[M_SW], PT = m[M_PT], PL = m[M_PL], DH = m[M_DH], DW = m[M_DW], G = m[M_G];
  const int AB = m[M_ABITS], WB = m[M_WBITS], xz = m[M_XZ], wz = m[M_WZ];
  const int OH = m[M_OH], OW = m[M_OW], TAPB = m[M_TAPB], RB = m[M_RB];
  const int HP = H + PT + m[M_PB], WP = W + PL + m[M_PR];
  const int Cg = C / G, Og = O / G, K = KH * KW * Cg;
  if (AB < 1 || AB > 7 || WB < 1 || WB > 7 || RB % 16) return -1;
  int32_t cx[8], cw[8];
  for (int i = 0; i < AB; i++) cx[i] = plane_coef(i, AB, m[M_ASIGNED]);
  for (int j = 0; j < WB; j++) cw[j] = plane_coef(j, WB, m[M_WSIGNED]);
  const row_fn fn = ROW_FNS[(AB - 1) * 7 + (WB - 1)];
  const int32_t zz = K * xz * wz;

  /* padded input pixels of one group, each AB planes of TAPB bytes */
  const size_t pix = (size_t)AB * TAPB;
  uint8_t* pk = (uint8_t*)calloc((size_t)HP * WP * pix, 1);
  uint8_t* rows = (uint8_t*)calloc((size_t)OW * AB * RB, 1);
  int32_t* sx = (int32_t*)malloc(sizeof(int32_t) * OW);
  int32_t* sxw = (int32_t*)malloc(sizeof(int32_t) * (Og > 0 ? Og : 1));
  if (!pk || !rows || !sx || !sxw) {
    free(pk); free(rows); free(sx); free(sxw);
    return -1;
  }
  const uint8_t zcode = (uint8_t)xz;
  for (int n = 0; n < N; n++) {
    for (int g = 0; g < G; g++) {
      /* 1. bit-pack the (padded) input pixels of this group */
      for (int hp = 0; hp < HP; hp++) {
        const int h = hp - PT;
        for (int wq = 0; wq < WP; wq++) {
          const int ww = wq - PL;
          const int inside = h >= 0 && h < H && ww >= 0 && ww < W;
          uint8_t* dst = pk + ((size_t)hp * WP + wq) * pix;
          const uint8_t* src = x + (((size_t)n * C + (size_t)g * Cg) * H + (inside ? h : 0)) * W + (inside ? ww : 0);
          for (int cb = 0; cb < TAPB; cb++) {
            uint8_t planes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            const int c0 = cb * 8, c1 = c0 + 8 < Cg ? c0 + 8 : Cg;
            for (int c = c0; c < c1; c++) {
              const uint8_t code = inside ? src[(size_t)c * H * W] : zcode;
              for (int i = 0; i < AB; i++) planes[i] |= (uint8_t)(((code >> i) & 1u) << (c - c0));
            }
            for (int i = 0; i < AB; i++) dst[i * TAPB + cb] = planes[i];
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
              for (int i = 0; i < AB; i++) memcpy(r + (size_t)i * RB + off, s + i * TAPB, TAPB);
            }
          int32_t s = 0;
          for (int i = 0; i < AB; i++) s += cx[i] * (int32_t)count_row(r + (size_t)i * RB, RB);
          sx[ow] = s;
        }
        /* 3. popcount dot products, zero points folded */
        for (int ow = 0; ow < OW; ow++) {
          fn(rows + (size_t)ow * AB * RB, wg, RB, Og, cx, cw, sxw);
          const int32_t base = zz - wz * sx[ow];
          for (int o = 0; o < Og; o++) {
            const int oc = g * Og + o;
            out[(((size_t)n * O + oc) * OH + oh) * OW + ow] = sxw[o] + base - xz * wsum[oc];
          }
        }
      }
    }
  }
  free(pk); free(rows); free(sx); free(sxw);
  result->type_index = kAnyNone;
  result->u.v_int64 = 0;
  return 0;
}
