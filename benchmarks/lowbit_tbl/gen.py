# generates tbl_asm.S: void tbl_block(const uint8_t* q, const uint8_t* tp, uint16_t* wide,
#                                      long nch, long W, long cstep)
# q: Q[0] + p0 (channel stride: cstep + 3*W after the 3 post-incremented row loads)
# tp: tables of this output block, [c][kh][a][64] contiguous
# wide: u16 [16 acc][16 lanes] (acc = 4*a + g), accumulated into
# x3: chunk schedule (channels per chunk, chosen at compile time so byte sums <= 255)
import sys
OC = 4
out = []

def gen(G):
  L = []
  e = L.append
  def triple(first):
      e("ld1 {v16.16b-v19.16b}, [x0], x4" if G == 4 else "ld1 {v16.16b}, [x0], x4")          # 64 index bytes: 4 groups of 16 pixels
      for a in range(OC):
          e("ld1 {v20.16b-v23.16b}, [x1], #64")     # table (o0 + a, c, kh)
          for g in range(G):
              acc = G * a + g
              if first:
                  e(f"tbl v{acc}.16b, {{v20.16b-v23.16b}}, v{16+g}.16b")
              else:
                  e(f"tbl v{24+g}.16b, {{v20.16b-v23.16b}}, v{16+g}.16b")
          if not first:
              for g in range(G):
                  acc = G * a + g
                  e(f"add v{acc}.16b, v{acc}.16b, v{24+g}.16b")
  e(".text"); e(f".global tbl_block_g{G}"); e(f".type tbl_block_g{G}, %function"); e(f"tbl_block_g{G}:")
  e("stp d8, d9, [sp, #-64]!"); e("stp d10, d11, [sp, #16]"); e("stp d12, d13, [sp, #32]"); e("stp d14, d15, [sp, #48]")
  e("0:")  # chunk: x3 = schedule (channels per chunk, 0-terminated)
  e("ldrb w6, [x3], #1")
  # first channel: kh0 writes, kh1, kh2 add
  triple(True); triple(False); triple(False)
  e("add x0, x0, x5")
  e("subs x6, x6, #1"); e("b.eq 2f")
  e("1:")
  triple(False); triple(False); triple(False)
  e("add x0, x0, x5")
  e("subs x6, x6, #1"); e("b.ne 1b")
  e("2:")
  # widen 16 byte-accumulators into wide (u16, memory)
  e("mov x7, x2")
  for acc in range(G * OC):
      e("ldp q28, q29, [x7]")
      e(f"uaddw v28.8h, v28.8h, v{acc}.8b"); e(f"uaddw2 v29.8h, v29.8h, v{acc}.16b")
      e("stp q28, q29, [x7], #32")
  e("ldrb w6, [x3]"); e("cbnz w6, 0b")
  e("ldp d14, d15, [sp, #48]"); e("ldp d12, d13, [sp, #32]"); e("ldp d10, d11, [sp, #16]"); e("ldp d8, d9, [sp], #64")
  e("ret")
  return L

for G in (4, 1):
    out += gen(G)
open(sys.argv[1] if len(sys.argv) > 1 else "tbl_asm.S", "w").write("\n".join("\t" + l if not l.endswith(":") else l for l in out) + "\n")
