"""Attention over long sequences as one kernel: ``softmax(q kᵀ * scale) v`` per block of query rows.

Written out as Relax ops, attention is three functions: the scores product, the softmax
and the product with ``v``.  Over long sequences the scores do not fit any cache (the
Whisper-tiny encoder: 6 heads x 1500 x 1500 floats, 54 MB per layer), so the scores are
written, read and written again by the softmax and read by the second product: four
passes over memory.  Here a task takes ``R`` query rows of one head and computes

1. their scores against every key (an ``R`` x ``W``-column register tile, ``kᵀ`` read from
   a transposed copy whose columns are padded to the tile's multiple),
2. their row max, exponentials and row sums (vectorized, as :func:`.elementwise.softmax_rows_te`),
3. the exponentials times ``v`` (an ``R`` x ``W2`` register tile), divided by the row sums
   in the tile's epilogue,

so the ``R`` rows of scores (42 KB for Whisper's R = 7) stay in L1/L2.  One Zen 5 core,
Whisper-tiny's 6 x 1500 x 1500 x 64 per layer: 25.8 ms as three functions (scores
10.4, softmax 5.4, product 9.4, the transposed k 0.5), 20.8 ms as one.

:func:`FuseAttention` (a Relax pass before legalization) finds
``matmul(softmax(matmul(q, kᵀ) * c), v)`` over at least :data:`MIN_KEYS` keys (the
attention op lowers to it, and models that write attention out, as transformers' Whisper,
trace to it), :func:`choose_tiles` gives the tiles, :func:`attention_te` the
computation and :func:`schedule` the loop nest.  Other attention (masked, causal, short)
stays three functions.  The unscheduled function computes the same values."""

from __future__ import annotations

from sliver.backends.tvm.schedules.common import CPU, NotApplicable, divisors, tile_cost

#: the shortest key sequence fused: below it the scores of a head fit L2 anyway (ViT-B/16's
#: 12 x 197 x 197 x 64, one Zen 5 core: 0.90 ms as three functions, 1.05 ms as one)
MIN_KEYS = 256
#: the blocks of :func:`attention_te`, in order (the exponential's helpers are inlined)
BLOCKS = ("attn_kT", "attn_scores", "attn_max_part", "attn_max", "attn_exp", "attn_sum_part", "attn_sum",
          "attn_out_acc", "attn_out")
#: the width of the partial max and sum (as the row softmax's)
PART_LANES = 16


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def choose_tiles(rows: int, keys: int, depth: int, cpu: CPU, *, pad_rows: bool = True
                 ) -> tuple[int, int, int, int] | None:
    """``(R, W, W2, padded rows)``: query rows per task, the scores tile's width in columns
    (keys padded to its multiple), the output tile's width (dividing ``depth``) and the rows
    padded to R's multiple (ViT's 197 tokens are prime); None when ``depth`` is no whole
    number of vectors.  Both products do the same work, so the sum of their
    :func:`~.common.tile_cost` (loads per FMA) decides, weighed by the padded columns and
    rows (``pad_rows=False``: R divides ``rows``)."""
    lanes = cpu.lanes
    if depth % lanes or lanes < 8:
        return None
    best, best_cost = None, None
    for r in range(1, 17) if pad_rows else divisors(rows, 16):
        outs = [(tile_cost(r, nv2, cpu), nv2) for nv2 in divisors(depth // lanes, 8)]
        outs = [(c, nv2) for c, nv2 in outs if c is not None]
        if not outs:
            continue
        c2, nv2 = min(outs)
        padded = _round_up(rows, r)
        for nv in range(1, 9):
            c1 = tile_cost(r, nv, cpu)
            if c1 is None:
                continue
            cost = ((1 + c1) * _round_up(keys, nv * lanes) / keys + (1 + c2)) * padded / rows
            if best_cost is None or cost < best_cost - 1e-9:
                best, best_cost = (r, nv * lanes, nv2 * lanes, padded), cost
    return best


def attention_te(q, k, v, scale: float, width: int, axes=(0, 1, 3, 2), rows: int | None = None):
    """``softmax(q kᵀ * scale) v``: ``q`` ``[B, H, M, D]``, ``kᵀ = permute_dims(k, axes)``
    ``[B, H, D, N]`` (``k`` ``[B, H, N, D]`` by default), ``v`` ``[B, H, N, Dv]``; the scores
    computed over ``N`` padded to ``width``'s multiple (zero keys, left out of the max and
    the sum) and, with ``rows`` > M, over ``rows`` query rows (the padded ones read q's
    last row again) and sliced to M."""
    from tvm import te, tirx, topi

    b_, h_, m_real, d_ = (int(x) for x in q.shape)
    m_ = m_real if rows is None else rows
    n_, dv = (int(x) for x in v.shape[2:])
    n_pad = _round_up(n_, width)
    zero = tirx.const(0, "float32")

    def k_t(*i):  # kᵀ[b, h, d, n]
        at = [None] * 4
        for t, a in enumerate(axes):
            at[a] = i[t]
        return k[tuple(at)]

    kt = te.compute((b_, h_, d_, n_pad),  # a select (vectorizes) of a clamped read (in bounds)
                    lambda b, h, d, n: tirx.Select(n < n_, k_t(b, h, d, tirx.min(n, n_ - 1)), zero), name="attn_kT")
    rd = te.reduce_axis((0, d_), "d")
    s = te.compute((b_, h_, m_, n_pad), lambda b, h, m, n: te.sum(
        q[b, h, tirx.min(m, m_real - 1) if m_ != m_real else m, rd] * kt[b, h, rd, n], axis=rd), name="attn_scores")
    sc = tirx.const(scale, "float32")
    lanes = min(PART_LANES, n_)
    parts, main = n_ // lanes, (n_ // lanes) * lanes
    tail = n_ - main

    def split_reduce(name, whole, combine):
        o = te.reduce_axis((0, parts), "o")
        p = te.compute((b_, h_, m_, lanes), lambda b, h, m, j: combine(whole(b, h, m, o * lanes + j), o),
                       name=name + "_part")
        u = te.reduce_axis((0, lanes + tail), "u")
        return te.compute((b_, h_, m_), lambda b, h, m: combine(
            tirx.Select(u < lanes, p(b, h, m, tirx.min(u, lanes - 1)), whole(b, h, m, main + u - lanes)), u),
            name=name)

    # the max reads every padded column (a padded one as -inf): the scores tile then has no
    # per-column condition, which would keep it from being vectorized
    pl = PART_LANES if n_pad % PART_LANES == 0 else width
    o = te.reduce_axis((0, n_pad // pl), "o")
    ninf = tirx.const(float("-inf"), "float32")
    mx = te.compute((b_, h_, m_, pl), lambda b, h, m, j: te.max(
        tirx.Select(o * pl + j < n_, s[b, h, m, o * pl + j] * sc, ninf), axis=o), name="attn_max_part")
    u = te.reduce_axis((0, pl), "u")
    mx = te.compute((b_, h_, m_), lambda b, h, m: te.max(mx[b, h, m, u], axis=u), name="attn_max")
    delta = te.compute((b_, h_, m_, n_), lambda b, h, m, n: s[b, h, m, n] * sc - mx[b, h, m], name="attn_delta")
    e = topi.fast_exp(delta)
    e = te.compute((b_, h_, m_, n_), lambda *i: e(*i), name="attn_exp")
    sm = split_reduce("attn_sum", e, lambda x, ax: te.sum(x, axis=ax))
    rn = te.reduce_axis((0, n_), "n")
    acc = te.compute((b_, h_, m_, dv), lambda b, h, m, d: te.sum(e[b, h, m, rn] * v[b, h, rn, d], axis=rn),
                     name="attn_out_acc")
    out = te.compute((b_, h_, m_, dv), lambda b, h, m, d: acc[b, h, m, d] / sm[b, h, m], name="attn_out")
    if m_ == m_real:
        return out
    return te.compute((b_, h_, m_real, dv), lambda *i: out(*i), name="attn_out_unpad")


def match_func(sch) -> bool:
    from sliver.backends.tvm.schedules.elementwise import match_blocks

    return match_blocks(sch, BLOCKS)


def _tile(sch, rows_loop, cols_loop, lanes: int):
    """The register tile of a reduction block already split: ``rows_loop`` x ``cols_loop``
    innermost (rows unrolled, columns unrolled by vectors and vectorized)."""
    vo, vi = sch.split(cols_loop, [None, lanes])
    sch.vectorize(vi)
    sch.unroll(vo)
    sch.unroll(rows_loop)


def schedule(sch, cpu: CPU) -> set:
    """One parallel loop over (batch, head, block of R query rows); see the module's text.
    Returns the names of the blocks it scheduled."""
    from sliver.backends.tvm.schedules.common import SCRATCH_SCOPE
    from sliver.backends.tvm.schedules.elementwise import _vector_loop, schedule_injective, vectorize_partial_reductions

    root = sch.get_sblock("root")
    for b in list(sch.get_child_blocks(root)):  # x * scale - max and the polynomial into attn_exp
        name = sch.get(b).name_hint
        if name not in BLOCKS and sch.get_consumers(b):
            sch.compute_inline(b)
    _, _, rows, depth, keys = (int(iv.dom.extent) for iv in sch.get(sch.get_sblock("attn_out_acc")).iter_vars)
    padded = int(sch.get(sch.get_sblock("attn_scores")).iter_vars[3].dom.extent)
    tiles = choose_tiles(rows, keys, depth, cpu, pad_rows=False)  # rows: padded already where they were
    if tiles is None:
        raise NotApplicable("no register tile for this attention")
    r, _, w2, _ = tiles
    lanes = cpu.lanes
    width = next((w for w in (tiles[1], lanes) if padded % w == 0), None)  # built for another CPU: its padding
    if width is None:
        raise NotApplicable(f"{padded} padded keys are no multiple of {lanes} lanes")

    acc, out = sch.get_sblock("attn_out_acc"), sch.get_sblock("attn_out")
    b_, h_, m_, d_ = sch.get_loops(out)
    mo, mi = sch.split(m_, [None, r])
    do, di = sch.split(d_, [None, w2])
    sch.reorder(b_, h_, mo, do, mi, di)
    par = sch.fuse(b_, h_, mo)
    sch.compute_at(acc, do, preserve_unit_loops=True)
    sch.set_scope(acc, 0, SCRATCH_SCOPE)
    for name in ("attn_sum", "attn_sum_part", "attn_exp", "attn_max", "attn_max_part", "attn_scores"):
        sch.compute_at(sch.get_sblock(name), par, preserve_unit_loops=True)
    sch.parallel(par)

    # the scores: R rows x width columns in registers, the depth loop outside them
    scores = sch.get_sblock("attn_scores")
    copy = sch.cache_write(scores, 0, "global")
    sch.set_scope(scores, 0, SCRATCH_SCOPE)
    *_, smi, sn, sd = sch.get_loops(scores)
    sno, sni = sch.split(sn, [None, width])
    sch.reorder(sno, sd, smi, sni)
    sch.reverse_compute_at(copy, sno, preserve_unit_loops=False)
    _tile(sch, smi, sni, lanes)
    init = sch.decompose_reduction(scores, sd)
    _vector_loop(sch, sch.get_loops(init)[-1], lanes)
    _vector_loop(sch, sch.get_loops(copy)[-1], lanes)

    # the row max and sum: partial results per lane, vectorized
    vectorize_partial_reductions(sch, ("attn_max_part", "attn_sum_part"))

    # exponentials times v: R rows x w2 columns in registers, the key loop outside them
    ami, adi, an = sch.get_loops(acc)[-3:]
    sch.reorder(an, ami, adi)
    _tile(sch, ami, adi, lanes)
    init = sch.decompose_reduction(acc, an)
    _vector_loop(sch, sch.get_loops(init)[-1], lanes)
    _vector_loop(sch, sch.get_loops(out)[-1], lanes)
    _vector_loop(sch, sch.get_loops(sch.get_sblock("attn_exp"))[-1], lanes)  # last: a partition makes opaque blocks
    try:
        schedule_injective(sch, sch.get_sblock("attn_kT"), cpu)
    except NotApplicable:
        pass
    return set(BLOCKS)


def FuseAttention(target=None):  # noqa: N802 - TVM pass naming
    """The Relax pass: ``matmul(softmax(matmul(q, kᵀ) [* c], axis=-1), v)`` on 4-d float32
    operands of static shape, ``c`` a scalar constant, ``kᵀ`` any value or a ``permute_dims``
    (read through), at least :data:`MIN_KEYS` keys and a register tile for ``target``
    (else the current target; :func:`choose_tiles`) → one :func:`attention_te` kernel.
    Anything else is left alone."""
    import numpy as np
    import tvm
    from tvm import relax
    from tvm.ir.expr import Constant

    from sliver.backends.tvm.schedules.common import cpu_of
    from sliver.backends.tvm.schedules.conv2d import _static, _ty
    from sliver.backends.tvm.schedules.layout import bound_call, mutator_pass

    matmul_op, softmax_op = tvm.ir.Op.get("relax.matmul"), tvm.ir.Op.get("relax.nn.softmax")
    multiply_op, permute_op = tvm.ir.Op.get("relax.multiply"), tvm.ir.Op.get("relax.permute_dims")

    def scalar(expr) -> float | None:
        if not isinstance(expr, Constant):
            return None
        a = expr.value.numpy()
        return float(a.reshape(-1)[0]) if a.size == 1 and a.dtype == np.float32 else None

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def _bound(self, expr, op):
            return bound_call(self, expr, op)

        def _fused(self, call):
            tgt = target if target is not None else tvm.target.Target.current(allow_none=True)
            if tgt is None or (isinstance(tgt, tvm.target.Target) and str(tgt.kind.name) != "llvm"):
                return None
            probs, v = call.args
            sm = self._bound(probs, softmax_op)
            if sm is None:
                return None
            scores, scale = sm.args[0], 1.0
            mul = self._bound(scores, multiply_op)
            if mul is not None:
                c = [scalar(a) for a in mul.args]
                if c[1] is not None:
                    scores, scale = mul.args[0], c[1]
                elif c[0] is not None:
                    scores, scale = mul.args[1], c[0]
                else:
                    return None
            qk = self._bound(scores, matmul_op)
            if qk is None:
                return None
            q, kt = qk.args
            shapes = [_static(getattr(_ty(e), "shape", None) or []) for e in (q, kt, v, scores)]
            if any(not s or len(s) != 4 for s in shapes) or \
                    {str(_ty(e).dtype) for e in (q, kt, v, call)} != {"float32"}:
                return None
            (b, h, m, d), (bk, hk, dk, n), (bv, hv, nv, dv), _ = shapes
            axis = int(sm.attrs.axis)
            if (bk, hk, dk, bv, hv, nv) != (b, h, d, b, h, n) or axis not in (-1, 3) or n < MIN_KEYS:
                return None
            tiles = choose_tiles(m, n, dv, cpu_of(tgt))
            if tiles is None:
                return None
            rows = tiles[3] if tiles[3] != m else None
            k, axes = kt, (0, 1, 2, 3)
            perm = self._bound(kt, permute_op)
            if perm is not None and perm.attrs.axes is not None:
                k, axes = perm.args[0], tuple(int(a) for a in perm.attrs.axes)
            return self.builder_.call_te(attention_te, q, k, v, scale, tiles[1], axes, rows,
                                         primfunc_name_hint="attention")

        def visit_call_(self, call):  # noqa: N802 - TVM visitor naming
            call = self.visit_expr_post_order(call)
            if isinstance(call, relax.Call) and call.op.same_as(matmul_op):
                fused = self._fused(call)
                if fused is not None:
                    return fused
            return call

    # the scores, softmax and transposes only the attention read are dropped at once
    return tvm.transform.Sequential([mutator_pass("SliverFuseAttention", _Rewriter),
                                     relax.transform.DeadCodeElimination()], name="SliverFuseAttention")


__all__ = ["BLOCKS", "MIN_KEYS", "FuseAttention", "attention_te", "choose_tiles", "match_func", "schedule"]
