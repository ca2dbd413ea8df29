"""Winograd convolutions F(m x m, 3 x 3) for dense 3x3 stride-1 NHWC float32 convs.

A 3x3 conv computes each ``m x m`` output tile from an ``a x a`` input tile
(``a = m + 2``) with ``a²`` multiplications per (input, output) channel pair instead of
``9 m²``: 2.25x fewer with F(2x2, 3x3), 4x fewer with F(4x4, 3x3)
(Lavin & Gray, arXiv:1509.09308).  ``Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`` per tile and
channel pair, summed over input channels: the sum is a batched GEMM over the ``a²``
tile positions.  One PrimFunc (:func:`conv2d_te`) holds the three stages:

1. ``winograd_input``: ``V[i, j, p, c] = (Bᵀ d_p B)[i, j]`` for every tile ``p`` of the
   zero-padded input (``winograd_pad``), channel ``c`` and tile position ``(i, j)``;
2. ``winograd_gemm``: ``M[e, p, k] = Σ_c V[e // a, e % a, p, c] · U[e, k // b, c, k % b]``, with
   ``U = G g Gᵀ`` the transformed weights, packed ``[a², K / b, C, b]`` (``b`` the
   register tile's width) by :func:`weight_te`, a ``call_tir`` on the constant weight
   that FoldConstant evaluates at compile time (in float64, rounded once);
3. ``winograd_output``: ``Y[n, h, w, k] = (Aᵀ M_p A)[h % m, w % m]``.

The transforms are separable (``Bᵀ (d B)``: ``winograd_input_rows`` then
``winograd_input``; ``(Aᵀ (M A))``: ``winograd_output_rows`` then the output), each
half written out term by term (the matrices' zeros dropped, ±1 as adds) and
selected by the tile position; the schedule computes the first half per tile in a
stack buffer (a group of columns at a time) and unrolls the positions, so the selections fold to constants.
(Unseparated, the unrolled expressions took TVM's CSE pass ~8 s per conv to
compile — ResNet-18 146 s instead of 36 s — for no runtime gain.)  The
function is annotated ``op_pattern = kOutEWiseFusable``, like a conv, so FuseOps
fuses the bias / residual add / ReLU epilogue into it and :func:`schedule` inlines
that epilogue into the output transform.

:func:`choose` decides which convs use it (and which ``m``); ``winograd=False``
(``sliver.lower(..., winograd=False)``) keeps every conv direct.
"""

from __future__ import annotations

from functools import lru_cache

from sliver.backends.tvm.schedules import common
from sliver.backends.tvm.schedules.common import (CPU, OUT_EWISE_FUSABLE, NotApplicable, block_name, extent,
                                                  pick_lanes, register_tile, tile_reduction)

INPUT, GEMM, OUTPUT, PAD = "winograd_input", "winograd_gemm", "winograd_output", "winograd_pad"
#: the first (row) halves of the separable transforms, computed per tile in registers
INPUT_ROWS, OUTPUT_ROWS = "winograd_input_rows", "winograd_output_rows"
#: Convs with fewer input or output channels stay direct: the transforms cost
#: O(C + K) per tile, the GEMM O(C K).  Measured on 56x56 maps, one Zen 3 core
#: (thread CPU time, F(4x4) vs direct): 32->32 0.46 vs 0.87 ms, 24->24 0.32 vs
#: 0.51 ms, 16->16 0.17 vs 0.19 ms.  So 24 would still gain 1.6x; 32 keeps the small
#: test convs (and any 16-31 channel layer) direct until that is tested.
MIN_CHANNELS = 32
#: The transformed weights are a²/9 times the size of the direct ones (4x for
#: F(4x4)) and a whole model streams them from memory on every inference: a tile
#: whose weights would exceed this falls back to F(2x2), then to a direct conv.
#: ResNet-18 at 224x224 (Zen 3, one thread, CPU time, one run): F(4x4) everywhere
#: 33.8 ms and a 160 MB library; F(2x2) on the 512-channel 7x7 convs (this cap)
#: 33.1 ms, 97 MB; those direct (a 12 MB cap) 34.9 ms, 75 MB; no Winograd 49.4 ms, 47 MB.
MAX_WEIGHT_BYTES = 16 << 20


@lru_cache(maxsize=None)
def matrices(m: int):
    """``(A, B, G)`` of F(m x m, 3 x 3) as float64 numpy arrays (``a x m``, ``a x a``,
    ``a x 3``), from TVM's Cook-Toom construction with its accuracy-tuned points."""
    from tvm.topi.nn import winograd_util

    a, b, g = winograd_util._cook_toom_convolution(winograd_util._interpolation_points(m + 2), m, 3)
    return a.astype("float64"), b.astype("float64"), g.astype("float64")


def choose(cin: int, cout: int, oh: int, ow: int, cpu: CPU) -> int | None:
    """The tile size ``m`` for a dense 3x3 stride-1 conv with these channels and
    output size, or None to keep it direct."""
    if cin < MIN_CHANNELS or cout < MIN_CHANNELS or cout % cpu.lanes or cin % 4:
        return None  # (an input transform over 45 channels is scalar; its unrolled code took minutes to compile)
    if min(oh, ow) < 4:
        return None
    # multiplications per channel pair: tiles x a²; F(2x2) on ties (smaller weights,
    # cheaper transforms).  7x7 maps: F(4x4) 144, F(2x2) 256.
    for m in sorted((2, 4), key=lambda m: -(-oh // m) * -(-ow // m) * (m + 2) ** 2):
        if (m + 2) ** 2 * cin * cout * 4 <= MAX_WEIGHT_BYTES:
            return m
    return None


# -- compute definitions ----------------------------------------------------------------------------


def _lin(terms):
    """``Σ coef · x`` over ``(coef, x)`` with zero coefficients dropped and ±1 as add/sub."""
    out = None
    for coef, x in terms:
        if coef == 0:
            continue
        if coef == 1:
            out = x if out is None else out + x
        elif coef == -1:
            out = -x if out is None else out - x
        else:
            t = x * float(coef)
            out = t if out is None else out + t
    return out


def _select(index, values):
    """``values[index]`` for a loop variable ``index`` (a chain of selects that the
    simplifier folds once the loop is unrolled)."""
    from tvm import tirx

    out = values[-1]
    for i in range(len(values) - 2, -1, -1):
        out = tirx.Select(index == i, values[i], out)
    return out


def _half(coef, load, col):
    """``Σ_j C[j, col] · load(j)`` for an ``n x k`` matrix ``C`` (``coef``) and a loop
    variable ``col`` in ``[0, k)``: one half of a separable transform ``Cᵀ X C``."""
    n, k = coef.shape
    sums = [_lin((coef[j, c], load(j)) for j in range(n)) for c in range(k)]
    zero = next(x for x in sums if x is not None) * 0.0
    return _select(col, [x if x is not None else zero for x in sums])


def weight_te(w, m: int, b: int):
    """HWIO ``[3, 3, C, K]`` → ``U [a², K / b, C, b]``, ``U[e] = (G g Gᵀ)[e // a, e % a]``,
    computed in float64 and rounded once to float32."""
    from tvm import te
    from tvm.topi.utils import const_matrix

    _, _, g_ = matrices(m)
    a = m + 2
    _, _, cin, cout = w.shape
    G = const_matrix(g_, "winograd_G")
    ry = te.reduce_axis((0, 3), "ry")
    gw = te.compute((a, 3, cin, cout), lambda i, x, c, k: te.sum(G[i, ry] * w[ry, x, c, k].astype("float64"), axis=ry),
                    name="winograd_weight_rows")
    rx = te.reduce_axis((0, 3), "rx")
    u = te.compute((a, a, cin, cout), lambda i, j, c, k: te.sum(gw[i, rx, c, k] * G[j, rx], axis=rx),
                   name="winograd_weight_cols")
    return te.compute((a * a, cout // b, cin, b), lambda e, o, c, j: u[e // a, e % a, c, o * b + j].astype(w.dtype),
                      name="winograd_weight")


def _i64(*dims):
    from tvm import tirx

    return [tirx.IntImm("int64", int(d)) for d in dims]


def conv2d_te(data, u, padding, m: int):
    """``out[n, y, x, k] = Σ pad(data)[n, y + ry, x + rx, c] · g[ry, rx, c, k]`` (NHWC,
    3x3, stride 1) through F(m x m, 3 x 3), ``u`` from :func:`weight_te`."""
    from tvm import te, topi

    a_, b_, _ = matrices(m)
    a = m + 2
    n, h, w, cin = (int(d) for d in data.shape)
    e2, kb, _, b = (int(d) for d in u.shape)
    cout = kb * b
    pt, pl, pb, pr = (int(p) for p in padding)
    oh, ow = h + pt + pb - 2, w + pl + pr - 2
    nh, nw = -(-oh // m), -(-ow // m)
    tiles = n * nh * nw
    # pad to whole tiles (the extra rows and columns are zeros; their outputs are dropped)
    dp = topi.nn.pad(data, _i64(0, pt, pl, 0), _i64(0, nh * m + 2 - h - pt, nw * m + 2 - w - pl, 0), name=PAD)

    def rows(p, i, nu, c):  # (d B)[i, nu] of tile p
        bn, th, tw = p // (nh * nw), p // nw % nh, p % nw
        return _half(b_, lambda j: dp[bn, th * m + i, tw * m + j, c], nu)

    dr = te.compute(_i64(tiles, a, a, cin), rows, name=INPUT_ROWS)
    # V by row and column of the tile (not by e = row * a + column): the schedule computes
    # (d B) a group of columns at a time, which needs the columns V reads to be plain indices
    vt = te.compute(_i64(a, a, tiles, cin), lambda r, col, p, c: _half(b_, lambda i: dr[p, i, col, c], r),
                    name=INPUT)
    rc = te.reduce_axis((0, cin), "rc")
    mt = te.compute(_i64(e2, tiles, cout),
                    lambda e, p, k: te.sum(vt[e // a, e % a, p, rc] * u[e, k // b, rc, k % b], axis=rc), name=GEMM)

    # (M A)[i, vw] of tile p
    mr = te.compute(_i64(tiles, a, m, cout), lambda p, i, vw, k: _half(a_, lambda j: mt[i * a + j, p, k], vw),
                    name=OUTPUT_ROWS)

    def y(bn, yy, xx, k):
        p = (bn * nh + yy // m) * nw + xx // m
        return _half(a_, lambda i: mr[p, i, xx % m, k], yy % m)

    return te.compute(_i64(n, oh, ow, cout), y, name=OUTPUT)


def legalize_call(bb, x, w, xs, cout: int, padding, m: int, cpu: CPU, select=None, extra=()):
    """Emit the weight transform and the Winograd conv for ``relax.nn.conv2d(x, w)``
    (NHWC input of static shape ``xs``, HWIO weights with ``cout`` outputs); returns
    the conv's output expression.  ``select`` (a TE function of ``x`` and the Relax
    values ``extra``, e.g. a channel gather and its indices) computes the conv's
    input from ``x`` inside the same PrimFunc: :func:`schedule` inlines it into the
    input's padding copy (:mod:`.channel_select`)."""
    n, h, wd, _ = xs
    oh, ow = h + padding[0] + padding[2] - 2, wd + padding[1] + padding[3] - 2
    tiles = n * (-(-oh // m)) * (-(-ow // m))
    _, nv = register_tile(tiles, cout, cpu)
    b = nv * cpu.lanes
    u = bb.emit_te(weight_te, w, m, b, primfunc_name_hint="winograd_weight")
    if select is None:
        call = bb.call_te(conv2d_te, x, u, padding, m, primfunc_name_hint=f"conv2d_winograd{m}x{m}")
    else:
        call = bb.call_te(lambda data, u_, *rest: conv2d_te(select(data, *rest), u_, padding, m), x, u, *extra,
                          primfunc_name_hint=f"conv2d_winograd{m}x{m}")
    gv = call.args[0]
    func = bb.get()[gv].with_attr("op_pattern", OUT_EWISE_FUSABLE)
    bb.update_func(gv, func)
    # The BlockBuilder deduplicates functions by structure, but only as call_te made
    # them (without the attribute): share the first equal conv's function (FuseOps then
    # fuses equal convs + epilogues into one function too; the unused copy is dropped
    # by dead-code elimination) — ResNet-18: 13 Winograd functions -> 5.
    import tvm_ffi
    from tvm import relax

    for other, f in bb.get().functions_items():
        if not other.same_as(gv) and other.name_hint.startswith("conv2d_winograd") and tvm_ffi.structural_equal(f, func):
            return relax.Call(call.op, [other, *call.args[1:]], call.attrs, call.ty_args)
    return call


# -- schedule ---------------------------------------------------------------------------------------------


def match_func(sch) -> bool:
    """Whether the function holds a Winograd conv (its GEMM block)."""
    try:
        sch.get_sblock(GEMM)
        return True
    except Exception:  # noqa: BLE001 - no such block
        return False


def _block(sch, name):
    try:
        return sch.get_sblock(name)
    except Exception as e:  # noqa: BLE001
        raise NotApplicable(f"no {name} block") from e


def schedule(sch, cpu: CPU) -> list[str]:
    """Schedule the three stages; returns the names of the blocks it scheduled (the
    padding, with any input selection inlined into it, is left to the generic
    injective rule).

    * input transform: parallel over tiles x channel vectors, the ``a²`` positions
      unrolled (by groups of columns: :func:`_stack_columns`), vectorized over input
      channels;
    * GEMM: :func:`~.common.tile_reduction` (rt tiles x b output channels in
      registers, parallel over positions x tiles x channel blocks), staged to memory;
    * output transform with the epilogue inlined: parallel over tiles x channel
      vectors, the ``m x m`` outputs unrolled (by groups of columns), vectorized over
      output channels.

    The first halves of both transforms are computed per tile (and group of columns)
    into buffers on the stack: see :data:`~.common.SCRATCH_SCOPE`."""
    from sliver.backends.tvm.schedules.common import inline_epilogue

    vin, gemm, out = _block(sch, INPUT), _block(sch, GEMM), _block(sch, OUTPUT)
    # a channel selection of the input (a fused slice or gather) is read by the padding copy
    for producer in sch.get_producers(_block(sch, PAD)):
        sch.compute_inline(producer)
    u_buf = [r.buffer if hasattr(r, "buffer") else r.source for r in sch.get(gemm).reads][1]
    b = int(u_buf.shape[-1])
    m = int(round((int(u_buf.shape[0]) ** 0.5))) - 2
    done = []

    # output transform + epilogue: one block, unless the epilogue ends in a slice to a
    # channel count that does not vectorize (a pruned conv's 45 real channels of 48 read by a
    # model output or a concat): the unrolled transform as scalar code took LLVM minutes, so
    # the transform keeps its own vectorized block and the epilogue gets the injective rule
    last = inline_epilogue(sch, out)
    if last is not None and pick_lanes(extent(sch, sch.get_loops(last)[-1]), cpu) >= pick_lanes(
            extent(sch, sch.get_loops(out)[-1]), cpu):
        sch.compute_inline(out)
        out = last
    n_, h_, w_, k_ = sch.get_loops(out)
    done.append(block_name(sch, out))
    ht, vh = sch.split(h_, [None, m])
    wt, vw = sch.split(w_, [None, m])
    lanes = pick_lanes(extent(sch, k_), cpu)
    ko, ki = sch.split(k_, [None, lanes])
    # the output columns in groups whose half-transformed tile (a x group vectors) fits the stack
    vwo, vwi = sch.split(vw, [None, _stack_columns(m + 2, m, lanes)])
    sch.reorder(n_, ht, wt, ko, vwo, vh, vwi, ki)
    par = sch.fuse(n_, ht, wt, ko)
    sch.parallel(par)
    for loop in (vwo, vh, vwi):
        sch.unroll(loop)
    if lanes > 1:
        sch.vectorize(ki)
    _rows_at(sch, _block(sch, OUTPUT_ROWS), vwo, lanes)

    # GEMM: staged register tiles
    tiles, cout = extent(sch, sch.get_loops(gemm)[1]), extent(sch, sch.get_loops(gemm)[2])
    rt, _ = register_tile(tiles, cout, cpu)
    done += [block_name(sch, x) for x in tile_reduction(sch, gemm, cpu, width=b, reg_tile=rt, stage=True)]

    # input transform
    row, col, p_, c_ = sch.get_loops(vin)
    lanes = pick_lanes(extent(sch, c_), cpu)
    co, ci = sch.split(c_, [None, lanes])
    # by groups of columns whose (d B) columns fit the stack
    col_o, col_i = sch.split(col, [None, _stack_columns(m + 2, m + 2, lanes)])
    sch.reorder(p_, co, col_o, row, col_i, ci)
    par = sch.fuse(p_, co)
    sch.parallel(par)
    for loop in (col_o, row, col_i):
        sch.unroll(loop)
    if lanes > 1:
        sch.vectorize(ci)
    _rows_at(sch, _block(sch, INPUT_ROWS), col_o, lanes)
    return done + [INPUT, INPUT_ROWS, OUTPUT_ROWS]


def _stack_columns(a: int, n: int, lanes: int) -> int:
    """The most of a transform's ``n`` columns (a divisor of ``n``) whose first half, ``a``
    vectors of ``lanes`` floats per column, stays under the stack-allocation limit
    (:data:`~.common.STACK_ALLOCA_BYTES`): on AVX2 the input tile's 6 x 6 x 8 floats (1152
    bytes) would be a TVM workspace allocated and freed per tile, 6 x 3 are on the stack."""
    return common.largest_divisor(n, max(1, (common.STACK_ALLOCA_BYTES - 1) // (a * max(lanes, 1) * 4)))


def _rows_at(sch, rows, loop, lanes: int):
    """Compute a transform's first half for one tile, channel vector and group of
    columns under ``loop``, in a buffer on the stack (registers), its ``a x columns``
    entries unrolled."""
    sch.compute_at(rows, loop, preserve_unit_loops=False)
    sch.set_scope(rows, 0, common.SCRATCH_SCOPE)
    loops = sch.get_loops(rows)
    inner = loops[-3:]  # i, column, channels
    for lp in inner[:2]:
        sch.unroll(lp)
    if lanes > 1 and extent(sch, inner[2]) == lanes:
        sch.vectorize(inner[2])
