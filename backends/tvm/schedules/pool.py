"""Pooling and spatial means in NHWC: ``pool_max`` / ``pool_sum`` blocks and the
``*_red`` sum of ``relax.mean`` over H, W.  Channels are contiguous, so the
window (or H x W) reduction runs outside a vector of channels, ``rt`` output
columns at a time."""

from __future__ import annotations

from sliver.backends.tvm.schedules.common import CPU, NotApplicable, block_name, inline_padding, iter_kinds, tile_reduction

NAMES = ("pool_max", "pool_sum", "pool_avg", "adaptive_pool_sum", "adaptive_pool_max")


def match(sch, block) -> bool:
    name = block_name(sch, block)
    kinds = iter_kinds(sch, block)
    if "O" in kinds or "R" not in kinds:
        return False
    if any(name.startswith(n) for n in NAMES):
        return True
    # a sum/mean over leading axes (relax.mean's reduction block is "<input>_red"),
    # never over the contiguous axis: every read must index it with the last spatial iterator
    if not (name.endswith("_red") and kinds.rstrip("R").endswith("S")):
        return False
    b = sch.get(block)
    last = b.iter_vars[len(kinds.rstrip("R")) - 1].var
    return all(len(r.region) and r.region[-1].min.same_as(last) for r in b.reads)


def schedule(sch, block, cpu: CPU) -> list:
    if not match(sch, block):
        raise NotApplicable("not a pooling reduction")
    inline_padding(sch, block)  # a 3x3 max pool reads each input ~2 times: no padded copy
    return tile_reduction(sch, block, cpu, max_vectors=2, channels_inner=True)


# ------------------------------------------------------------------ IEEE NaN semantics
# (see elementwise.py): max pooling and max/min reductions whose combiner keeps NaN, and
# whose identity and padding are -inf / +inf (TVM's: the largest finite float, so a window
# of -inf values gave -3.4e38).


def _reducer(kind: str):
    from tvm import te, tirx

    from sliver.backends.tvm.schedules.elementwise import nan_max, nan_min

    sign = -1.0 if kind == "max" else 1.0
    return te.comm_reducer(nan_max if kind == "max" else nan_min,
                           lambda dtype: tirx.const(sign * float("inf"), dtype), name=f"nan_{kind}")


def max_pool2d_te(x, out_shape, *, kernel, stride, dilation, padding, layout):
    """Max pooling of ``x`` (NCHW or NHWC) into ``out_shape``.  Without dilation a
    window's rows and columns outside the input read the nearest edge instead of a
    padding value: that element lies in the same window, so the max (NaN and -inf
    included) is the same, and the loads need no bounds test.  With dilation the
    input is padded with -inf, as far as ``out_shape`` needs (ceil mode)."""
    from tvm import te, tirx, topi

    h, w = layout.index("H"), layout.index("W")
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    top, left, bottom, right = padding
    rh, rw = te.reduce_axis((0, kh), name="rv0"), te.reduce_axis((0, kw), name="rv1")
    floating = "float" in str(x.dtype)
    reduce = _reducer("max") if floating else te.max  # integer codes (int8 models): no NaN
    if (dh, dw) == (1, 1):
        H, W = int(x.shape[h]), int(x.shape[w])

        def window(*i):
            idx = list(i)
            idx[h] = tirx.max(tirx.min(i[h] * sh + rh - top, H - 1), 0)
            idx[w] = tirx.max(tirx.min(i[w] * sw + rw - left, W - 1), 0)
            return reduce(x[tuple(idx)], axis=[rh, rw])
    else:
        before, after = [0] * 4, [0] * 4
        before[h], before[w] = top, left
        after[h] = max(bottom, (out_shape[h] - 1) * sh + dh * (kh - 1) + 1 - int(x.shape[h]) - top)
        after[w] = max(right, (out_shape[w] - 1) * sw + dw * (kw - 1) + 1 - int(x.shape[w]) - left)
        low = tirx.const(float("-inf"), x.dtype) if floating else tirx.min_value(x.dtype)
        padded = topi.nn.pad(x, before, after, pad_value=low, name="pad_temp")

        def window(*i):
            idx = list(i)
            idx[h], idx[w] = i[h] * sh + rh * dh, i[w] * sw + rw * dw
            return reduce(padded[tuple(idx)], axis=[rh, rw])

    return te.compute(out_shape, window, name="pool_max", tag="pool_max",
                      attrs={"schedule_rule": "meta_schedule.pool_max"})


def _max_pool2d_legalize(bb, call):
    from tvm import tirx

    from sliver.backends.tvm.schedules.elementwise import _tvm_legalize, is_float

    a = call.attrs
    integer = str(call.ty.dtype) in ("uint8", "int8")  # codes between int8 layers: same te, plain max
    if not (is_float(call.ty.dtype) or integer) or a.layout != a.out_layout or a.layout not in ("NCHW", "NHWC"):
        return _tvm_legalize(bb, call)
    out_shape = [int(v) if isinstance(v, tirx.IntImm) else v for v in call.ty.shape.values]  # symbolic: kept
    return bb.call_te(max_pool2d_te, call.args[0], out_shape, kernel=[int(k) for k in a.pool_size],
                      stride=[int(s) for s in a.strides], dilation=[int(d) for d in a.dilation],
                      padding=[int(p) for p in a.padding], layout=str(a.layout), primfunc_name_hint="max_pool2d")


#: a max/min over the last axis at least this long is taken over vector lanes first (:func:`row_reduce_te`)
ROW_LANES_MIN = 16
#: the blocks of :func:`row_reduce_te`
ROW_BLOCKS = ("row_red_part", "row_red", "row_red_out")


def row_reduce_te(x, kind: str, keep: bool):
    """The NaN-keeping max or min of ``x`` over its last axis, first over 16 lanes at once
    (:func:`.elementwise.split_reduce`: TOPI's reduction is a scalar loop per row, one compare
    per FMA latency; the attention's dead-row check of a masked ViT-B/16 took 6% of its time),
    then copied to the output shape (a block the row schedule ends with)."""
    from tvm import te

    from sliver.backends.tvm.schedules.elementwise import split_reduce

    *lead, length = (int(d) for d in x.shape)
    reducer = _reducer(kind)
    red = split_reduce("row_red", x, lambda val, ax: reducer(val, axis=ax), lead, length)
    if keep:
        return te.compute((*lead, 1), lambda *i: red(*i[:-1]), name="row_red_out")
    return te.compute(tuple(lead), lambda *i: red(*i), name="row_red_out")


def _reduction_legalize(kind: str):
    def legalize(bb, call):
        from tvm import te

        from sliver.backends.tvm.schedules.elementwise import _tvm_legalize, is_float

        if not is_float(call.ty.dtype):
            return _tvm_legalize(bb, call)
        rank = len(call.args[0].ty.shape.values)
        axes = sorted(int(a) % rank for a in call.attrs.axis) if call.attrs.axis is not None else list(range(rank))
        keep = bool(call.attrs.keepdims)
        try:
            dims = [int(d) for d in call.args[0].ty.shape.values]
        except TypeError:
            dims = None
        if dims and rank >= 2 and axes == [rank - 1] and dims[-1] >= ROW_LANES_MIN:
            return bb.call_te(row_reduce_te, call.args[0], kind, keep, primfunc_name_hint=kind)

        def reduce_te(x):
            raxes = {ax: te.reduce_axis((0, x.shape[ax]), name=f"k{ax}") for ax in axes}
            out_shape = [1 if ax in raxes else x.shape[ax] for ax in range(rank) if keep or ax not in raxes]
            reduce = _reducer(kind)

            def body(*i):
                it = iter(i)
                idx = []
                for ax in range(rank):
                    if ax in raxes:
                        if keep:
                            next(it)
                        idx.append(raxes[ax].var)
                    else:
                        idx.append(next(it))
                return reduce(x[tuple(idx)], axis=list(raxes.values()))

            return te.compute(out_shape, body, name=f"{x.name}_red", tag="comm_reduce")

        return bb.call_te(reduce_te, call.args[0], primfunc_name_hint=kind)

    return legalize


#: relax op → NaN-keeping legalization (LegalizeOps' customize_legalize_map)
LEGALIZE = {
    "relax.nn.max_pool2d": _max_pool2d_legalize,
    "relax.max": _reduction_legalize("max"),
    "relax.min": _reduction_legalize("min"),
}
