"""2-D convolutions in NHWC layout (the layout sliver's pipeline converts every
``relax.nn.conv2d`` to), including depthwise and grouped ones.

Dense (``groups == 1``) float convolutions are legalized by :func:`legalize` with
their weights *packed*: HWIO weights become ``[O / b, KH, KW, I, b]`` with ``b`` the
micro-kernel's width in output channels (:func:`~.common.register_tile`), so the
kernel streams its weights contiguously (one 64-byte line per reduction step instead
of one per ``O`` floats: 2-4x faster on 14x14 and 7x7 maps, where TLB misses
dominated).  The packing is a ``call_tir`` on the constant weight, which FoldConstant
evaluates at compile time.  Other convolutions keep TOPI's HWIO legalization.

The output channel axis is contiguous in the output and the weights, so the
micro-kernel broadcasts one input value and multiplies it with a vector of
weights: ``acc[w, o:o+lanes] += x[h+kh, w+kw, i] * W[kh, kw, i, o:o+lanes]``,
with ``rt`` output columns x ``nv`` vectors of output channels held in registers.
"""

from __future__ import annotations

from sliver.backends.tvm.schedules.common import (CPU, NotApplicable, block_name, inline_padding, iter_kinds,
                                                  register_tile, tile_reduction)

#: Block names TOPI gives convolutions in NHWC (``conv2d_nhwc``, ``group_conv2d_nhwc``,
#: ``depthwise_conv2d_nhwc``) and :func:`legalize`'s ``conv2d_nhwc_packed``; the
#: schedule itself only relies on the loop structure.
NAMES = ("conv2d_nhwc", "group_conv2d_nhwc", "depthwise_conv2d_nhwc")
PACKED = "conv2d_nhwc_packed"


def match(sch, block) -> bool:
    name = block_name(sch, block)
    return any(name.startswith(n) for n in NAMES) and iter_kinds(sch, block) in ("SSSSRRR", "SSSSRR")


def is_depthwise(sch, block) -> bool:
    """A grouped conv with one input channel per group (its ``rc`` loop has extent 1)."""
    b = sch.get(block)
    return block_name(sch, block).startswith(("group_", "depthwise_")) and int(b.iter_vars[-1].dom.extent) == 1


def _packed_width(sch, block) -> int | None:
    """``b`` of a packed conv block (its 5-d weight buffer's last extent), else None."""
    if not block_name(sch, block).startswith(PACKED):
        return None
    for r in sch.get(block).reads:
        shape = r.source.shape  # TVM 0.27: a TensorRegion's buffer is its ``source``
        if len(shape) == 5:
            return int(shape[-1])
    return None


def schedule(sch, block, cpu: CPU) -> list:
    """Register-tiled, vectorized, parallel NHWC convolution (see :mod:`.common`).

    Packed convolutions use the tile :func:`~.common.register_tile` chose when their
    weights were packed (``rt`` output columns x ``b`` output channels); the others
    tile ``rt`` output columns x 2 vectors of output channels (e.g. 8 x 32 floats =
    16 zmm accumulators on AVX-512; 7 x 32 on 7- and 14-wide maps).  Depthwise convs
    (:func:`is_depthwise`), whose inner loop is only kh x kw, use the same tile.
    """
    if not match(sch, block):
        raise NotApplicable("not an NHWC convolution")
    b = _packed_width(sch, block)
    if b is not None:
        b_iter = sch.get(block).iter_vars
        ow, n_out = int(b_iter[2].dom.extent), int(b_iter[3].dom.extent)
        cpu = half_vectors(n_out, cpu)
        rt, nv = register_tile(ow, n_out, cpu)
        if nv * cpu.lanes != b:  # packed for another CPU (e.g. a tuning record): keep its width
            rt, _ = register_tile(ow, b, cpu)
        unroll = 4 if cpu.lanes == 4 and cpu.registers == 32 else 1  # NEON (see tile_reduction)
        return tile_reduction(sch, block, cpu, width=b, reg_tile=rt, unroll_reduction=unroll)
    if is_depthwise(sch, block):
        # A depthwise conv does ~9 multiply-adds per input value, so writing and
        # re-reading a padded copy cost more than the bounds check on each vector load
        # (96x112x112 3x3 /2 on Zen 3: 0.95 -> 0.38 ms, one core); with the channel
        # tiles of one pixel on neighbouring tasks (``channels_inner``) the loads stream.
        inline_padding(sch, block)
        return tile_reduction(sch, block, cpu, max_vectors=2, channels_inner=True)
    return tile_reduction(sch, block, cpu, max_vectors=2)


# -- legalization with packed weights ----------------------------------------------------------------


def _static(shape) -> list[int] | None:
    try:
        return [int(d) for d in shape]
    except TypeError:
        return None


def _ty(expr):
    """A Relax expression's tensor type (``ty`` in TVM 0.27, ``struct_info`` before)."""
    return expr.ty if hasattr(expr, "ty") else expr.struct_info


def packed_conv2d_te(data, wp, strides, padding, dilation, out_dtype):
    """``out[n, y, x, o] = Σ pad(data)[n, y*sh + ry*dh, x*sw + rx*dw, c] * wp[o // b, ry, rx, c, o % b]``
    (NHWC data, weights packed ``[O / b, KH, KW, I, b]``)."""
    from tvm import te, topi

    _, h, w, _ = data.shape
    ob, kh, kw, cin, b = wp.shape
    pt, pl, pb, pr = padding
    sh, sw = strides
    dh, dw = dilation
    if any(int(p) for p in padding):
        data = topi.nn.pad(data, [0, pt, pl, 0], [0, pb, pr, 0], name="pad_temp")
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    rc = te.reduce_axis((0, cin), "rc")
    return te.compute(
        (data.shape[0], oh, ow, ob * b),
        lambda n, y, x, o: te.sum(data[n, y * sh + ry * dh, x * sw + rx * dw, rc].astype(out_dtype)
                                  * wp[o // b, ry, rx, rc, o % b].astype(out_dtype), axis=[ry, rx, rc]),
        name=PACKED)


def pack_weight_te(w, b: int):
    """HWIO ``[KH, KW, I, O]`` → ``[O / b, KH, KW, I, b]``."""
    from tvm import te

    kh, kw, cin, cout = w.shape
    return te.compute((cout // b, kh, kw, cin, b), lambda o, y, x, c, j: w[y, x, c, o * b + j], name="pack_weight")


def kernel_choice(call, target=None, *, winograd: bool = True):
    """Which float kernel sliver gives the ``relax.nn.conv2d`` ``call`` (its shapes as
    the call's arguments have them): ``("winograd", m, cpu)`` for the dense 3x3
    stride-1 convs :func:`.winograd.choose` picks (unless ``winograd=False``),
    ``("packed", b, cpu)`` for other dense float32 NHWC/HWIO convs with static
    shapes, or static but for a symbolic batch (a dynamic ``torch.export.Dim``; weights
    packed ``b`` output channels wide), None for the rest (TVM's own legalization).  ``target``: else the current one.  The conv legalization
    (:func:`legalize`) and the channel-selection fusion
    (:mod:`~sliver.backends.tvm.schedules.channel_select`) both decide with it."""
    import tvm

    from sliver.backends.tvm.schedules import winograd as winograd_rules
    from sliver.backends.tvm.schedules.common import cpu_of

    a = call.attrs
    x, w = call.args
    tgt = target if target is not None else tvm.target.Target.current(allow_none=True)
    xt, wt, yt = (_ty(e) for e in (x, w, call))
    xs, ws, ys = (_static(getattr(t, "shape", None) or []) for t in (xt, wt, yt))
    batch_dynamic = False
    if xs is None and ys is None and ws is not None:  # a symbolic batch (axis 0) only: the packed kernel takes it
        rest = [_static(list(getattr(t, "shape", None) or [])[1:]) for t in (xt, yt)]
        if all(r is not None for r in rest):
            xs, ys = [None] + rest[0], [None] + rest[1]
            batch_dynamic = True
    out_dtype = str(a.out_dtype) if a.out_dtype not in (None, "", "void") else str(xt.dtype)
    if isinstance(tgt, tvm.target.Target) and str(tgt.kind.name) != "llvm":
        return None
    if (tgt is None or a.data_layout != "NHWC" or a.kernel_layout != "HWIO"
            or a.out_layout not in ("", "NHWC") or int(a.groups) != 1 or not xs or not ws or not ys
            or len(ws) != 4 or str(xt.dtype) != "float32" or str(wt.dtype) != "float32"
            or out_dtype != "float32"):
        return None
    cpu = cpu_of(tgt)
    if (winograd and not batch_dynamic and ws[:2] == [3, 3] and [int(s) for s in a.strides] == [1, 1]
            and [int(d) for d in a.dilation] == [1, 1]):
        m = winograd_rules.choose(ws[2], ws[3], ys[1], ys[2], cpu)
        if m is not None:
            return "winograd", m, cpu
    tile_cpu = half_vectors(ws[3], cpu)
    try:
        rt, nv = register_tile(ys[2], ws[3], tile_cpu)
    except NotApplicable:
        return None
    return "packed", nv * tile_cpu.lanes, cpu


def half_vectors(n_out: int, cpu: CPU) -> CPU:
    """``cpu``, or for ``n_out`` output channels that are no multiple of its ≥ 16 lanes but of
    half as many, ``cpu`` with half-width vectors (MobileNetV2's and EfficientNet-B0's 24- and
    40-channel projections on AVX-512: ymm register tiles on packed weights instead of TVM's
    own conv)."""
    import dataclasses

    if cpu.lanes >= 16 and n_out % cpu.lanes and n_out % (cpu.lanes // 2) == 0:
        return dataclasses.replace(cpu, lanes=cpu.lanes // 2)
    return cpu


def legalize(target=None, *, winograd: bool = True):
    """A ``relax.nn.conv2d`` legalization for ``LegalizeOps(customize_legalize_map=…)``:
    dense float32 NHWC/HWIO convolutions with static shapes become a weight-packing
    ``call_tir`` plus a packed convolution, or, for 3x3 stride-1 ones that
    :func:`.winograd.choose` picks (unless ``winograd=False``), a weight transform
    plus a Winograd convolution; everything else goes to TVM's own rule
    (:func:`kernel_choice`).  ``target`` (else the current one) decides the tile width."""
    import tvm

    from sliver.backends.tvm.schedules import winograd as winograd_rules

    default = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")

    def rule(bb, call):
        choice = kernel_choice(call, target, winograd=winograd)
        if choice is None:
            return default(bb, call)
        a = call.attrs
        x, w = call.args
        kind, size, cpu = choice
        if kind == "winograd":
            xs = [int(d) for d in _ty(x).shape]
            return winograd_rules.legalize_call(bb, x, w, xs, int(_ty(w).shape[3]), [int(p) for p in a.padding],
                                                size, cpu)
        wp = bb.emit_te(pack_weight_te, w, size, primfunc_name_hint="pack_weight")
        return bb.call_te(packed_conv2d_te, x, wp, [int(s) for s in a.strides], [int(p) for p in a.padding],
                          [int(d) for d in a.dilation], "float32", primfunc_name_hint="conv2d")

    return rule
