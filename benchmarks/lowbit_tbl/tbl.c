/* Spike (not part of sliver): a table-lookup W2A2 3x3 conv on NEON (ARMv8.0, no sdot),
 * counted under qemu against the same layer's reference.  Out of tree on purpose.
 *
 * Index: for channel c, kernel row kh and output pixel P (flattened oh*W + ow),
 *   Q[c][kh*W + P] = x[c][oh+kh-1][ow-1] | x[c][oh+kh-1][ow] << 2 | x[c][oh+kh-1][ow+1] << 4
 * (padded taps hold code 0 = the zero point here), so the 16 pixels of a group take
 * 16 consecutive bytes of Q: one load.  Table for (o, c, kh): 64 bytes,
 *   T[idx] = 18 + sum_k w[o][c][kh][k] * ((idx >> 2k) & 3)   in [0, 27]
 * (w in [-2, 1], x in [0, 3]), so nine lookups fit a byte; every 9 triples the byte sums
 * are widened into 16-bit sums kept in memory.  acc = sum - 18 * 192.
 * Blocking: G groups of 16 pixels x OC output channels per pass over the 192 triples. */
#include <arm_neon.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef HW
#define HW 56
#endif
#ifndef CH
#define CH 64
#endif
#ifndef G
#define G 4
#endif
#ifndef OC
#define OC 4
#endif
#define H HW
#define W HW
#define C CH
#define O CH
#define NT (C * 3) /* triples per output: (c, kh) */
#define NPIX (H * W)
#define NPIX_PAD ((NPIX + 15) / 16 * 16) /* lanes computed: 64-pixel blocks, then 16-pixel ones */
#define MARK_BASE 0x51100000L

static void mark(int k, int dump) { close((int)-(MARK_BASE + 2 * k + dump)); }

static uint8_t x[C][H][W];
static int8_t w[O][C][3][3];
static int32_t ref[O][NPIX];
static float out[O][NPIX_PAD], scale[O], bias[O];
#define CSTR ((H + 2) * W + 64 + NPIX_PAD - NPIX)
static uint8_t Q[C][CSTR] __attribute__((aligned(16))); /* per channel: rows kh..., pixel-flattened */
static uint8_t T[NT / 1][O][64] __attribute__((aligned(16))); /* [triple][o][idx] */
static uint8_t T2[O / OC][C][3][OC][64] __attribute__((aligned(16))); /* per output block, in loop order */

static void reference(void) {
  for (int o = 0; o < O; o++)
    for (int oh = 0; oh < H; oh++)
      for (int ow = 0; ow < W; ow++) {
        int32_t s = 0;
        for (int c = 0; c < C; c++)
          for (int kh = 0; kh < 3; kh++)
            for (int kw = 0; kw < 3; kw++) {
              int ih = oh + kh - 1, iw = ow + kw - 1;
              if (ih >= 0 && ih < H && iw >= 0 && iw < W) s += x[c][ih][iw] * w[o][c][kh][kw];
            }
        ref[o][oh * W + ow] = s;
      }
}

static uint8_t sched[O / OC][C + 1];
static int32_t obias[O];
/* adaptive chunks: each table offset to start at 0 (its minimum goes to obias), and per
 * output block the channels grouped so that the byte sums stay <= 255 */
static void offsets_and_schedule(void) {
  for (int o = 0; o < O; o++) obias[o] = 0;
  for (int b = 0; b < O / OC; b++) {
    int n = 0, run = 0, sum = 0;
    for (int c = 0; c < C; c++) {
      int cmax = 0; /* max over the block's channels of the 3 tables' ranges */
      for (int a = 0; a < OC; a++) {
        int r = 0;
        for (int kh = 0; kh < 3; kh++) {
          uint8_t* t = T2[b][c][kh][a];
          int lo = 255, hi = 0;
          for (int i = 0; i < 64; i++) { lo = t[i] < lo ? t[i] : lo; hi = t[i] > hi ? t[i] : hi; }
          for (int i = 0; i < 64; i++) t[i] -= lo;
          obias[b * OC + a] += lo - 18;
          r += hi - lo;
        }
        cmax = r > cmax ? r : cmax;
      }
      if (sum + cmax > 255) { sched[b][n++] = (uint8_t)run; run = 0; sum = 0; }
      run++; sum += cmax;
    }
    sched[b][n++] = (uint8_t)run;
    sched[b][n] = 0;
  }
}

static void build_tables(void) { /* compile time in a real kernel (constant weights) */
  for (int c = 0; c < C; c++)
    for (int kh = 0; kh < 3; kh++)
      for (int o = 0; o < O; o++)
        for (int idx = 0; idx < 64; idx++) {
          int s = 18;
          for (int k = 0; k < 3; k++) s += w[o][c][kh][k] * ((idx >> (2 * k)) & 3);
          T[c * 3 + kh][o][idx] = (uint8_t)s;
          T2[o / OC][c][kh][o % OC][idx] = (uint8_t)s; /* offset below */
        }
}

/* run time: the index image Q from the codes (padded row -1 and row H are zero rows) */
static void build_index(void) {
  for (int c = 0; c < C; c++) {
    uint8_t* q = Q[c];
    memset(q, 0, W);                     /* input row -1 */
    memset(q + (size_t)(H + 1) * W, 0, W); /* input row H */
    for (int ih = 0; ih < H; ih++) {
      const uint8_t* r = x[c][ih];
      uint8_t* d = q + (size_t)(ih + 1) * W;
      int ow = 0;
      for (; ow + 16 <= W; ow += 16) {
        /* left neighbour, centre, right neighbour (zero outside the row) */
        uint8x16_t cen = vld1q_u8(r + ow);
        uint8x16_t lft = ow ? vld1q_u8(r + ow - 1) : vextq_u8(vdupq_n_u8(0), cen, 15);
        uint8x16_t rgt = ow + 17 <= W ? vld1q_u8(r + ow + 1) : vextq_u8(cen, vdupq_n_u8(0), 1);
        vst1q_u8(d + ow, vorrq_u8(vorrq_u8(lft, vshlq_n_u8(cen, 2)), vshlq_n_u8(rgt, 4)));
      }
      for (; ow < W; ow++) {
        int l = ow ? r[ow - 1] : 0, rr = ow + 1 < W ? r[ow + 1] : 0;
        d[ow] = (uint8_t)(l | r[ow] << 2 | rr << 4);
      }
    }
  }
}

/* the asm inner kernel (gen.py -> tbl_asm.S): G=4 groups x OC=4 channels, all channels */
void tbl_block_g4(const uint8_t* q, const uint8_t* tp, uint16_t* wide, const uint8_t* sched, long w, long cstep);
void tbl_block_g1(const uint8_t* q, const uint8_t* tp, uint16_t* wide, const uint8_t* sched, long w, long cstep);

/* output stage with sliver's f32 epilogue (float(acc) * scale + bias, ReLU) */
static inline void store_f32(const uint16_t* wide, int o, int p) {
  const int32x4_t ob = vdupq_n_s32(obias[o]);
  const float32x4_t s = vdupq_n_f32(scale[o]), b = vdupq_n_f32(bias[o]), z = vdupq_n_f32(0.0f);
  for (int h = 0; h < 2; h++) {
    const uint16x8_t v = vld1q_u16(wide + 8 * h);
    float* d = out[o] + p + 8 * h;
    const int32x4_t a0 = vaddq_s32(vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(v))), ob);
    const int32x4_t a1 = vaddq_s32(vreinterpretq_s32_u32(vmovl_high_u16(v)), ob);
    vst1q_f32(d, vmaxq_f32(vaddq_f32(vmulq_f32(vcvtq_f32_s32(a0), s), b), z));
    vst1q_f32(d + 4, vmaxq_f32(vaddq_f32(vmulq_f32(vcvtq_f32_s32(a1), s), b), z));
  }
}

static void conv_tbl(void) {
  static uint16_t wide[OC * 4][16] __attribute__((aligned(16)));
  int p0 = 0;
  for (; p0 + 64 <= NPIX; p0 += 64)
    for (int o0 = 0; o0 < O; o0 += OC) {
      memset(wide, 0, sizeof wide);
      tbl_block_g4(Q[0] + p0, &T2[o0 / OC][0][0][0][0], &wide[0][0], sched[o0 / OC], W, CSTR - 3 * W);
      for (int a = 0; a < OC; a++)
        for (int g = 0; g < 4; g++) store_f32(wide[4 * a + g], o0 + a, p0 + 16 * g);
    }
  for (; p0 < NPIX; p0 += 16) /* the rest, 16 pixels at a time */
    for (int o0 = 0; o0 < O; o0 += OC) {
      memset(wide, 0, OC * 32);
      tbl_block_g1(Q[0] + p0, &T2[o0 / OC][0][0][0][0], &wide[0][0], sched[o0 / OC], W, CSTR - 3 * W);
      for (int a = 0; a < OC; a++) store_f32(wide[a], o0 + a, p0);
    }
}

int main(void) {
  srand(1);
  for (int c = 0; c < C; c++)
    for (int i = 0; i < H; i++)
      for (int j = 0; j < W; j++) x[c][i][j] = (uint8_t)(rand() & 3);
  for (int o = 0; o < O; o++)
    for (int c = 0; c < C; c++)
      for (int i = 0; i < 9; i++) w[o][c][i / 3][i % 3] = (int8_t)((rand() & 3) - 2);
  for (int o = 0; o < O; o++) {
    scale[o] = (float)(rand() % 1000 + 1) * 1e-5f;
    bias[o] = (float)(rand() % 2001 - 1000) * 1e-3f;
  }
  reference();
  build_tables();
  offsets_and_schedule();
  { int chunks = 0; for (int b = 0; b < O / OC; b++) for (int k = 0; sched[b][k]; k++) chunks++;
    printf("chunks per output block: %.2f (fixed 3-channel chunks: %d)\n", (double)chunks / (O / OC), (C + 2) / 3); }
  mark(0, 0);
  mark(1, 1);
  mark(2, 0);
  build_index();
  mark(3, 1);
  mark(4, 0);
  conv_tbl();
  mark(5, 1);
  long bad = 0;
  for (int o = 0; o < O; o++)
    for (int p = 0; p < NPIX; p++) {
      float y = (float)ref[o][p] * scale[o] + bias[o];
      y = y < 0.0f ? 0.0f : y;
      bad += out[o][p] != y;
    }
  printf("G=%d OC=%d %dx%dx%d mismatches: %ld\n", G, OC, H, W, C, bad);
  return bad != 0;
}
