"""Channel selections (and channel padding) feeding a convolution cost no kernel of their own.

Pruned exports (:mod:`sliver.passes.prune`) read a subset of a tensor's channels
before a conv: a ``slice`` (a contiguous run, a view in sliver's IR) or a ``take``
(a gather); and the lowering pads a depthwise conv with an odd channel count to a
vectorizable one (a zero ``pad`` of its input channels, :func:`~sliver.backends.tvm.lower._conv2d`).
TVM compiles each to its own copy kernel — FuseOps never fuses an injective
producer into a convolution — and ``take`` and ``pad`` have no layout-inference
rule, so ConvertLayout wraps each in an NHWC→NCHW and an NCHW→NHWC transpose.
:func:`FuseChannelSelect` (run after ConvertLayout, before LegalizeOps) rewrites

    conv2d(strided_slice(x, axes=[C]), w)                       →  one call_tir
    conv2d(permute_dims(take(permute_dims(x, p), idx, axis=a), q), w)
    conv2d(permute_dims(pad(permute_dims(x, p), channels only), q), w)

into a single TE function ``conv(select(x), w)`` in the conv's own layout: the
selection is an injective stage of the conv's PrimFunc, which the default
schedules inline into the conv's padding copy (which exists anyway) or, without
padding, into the conv's input reads.  The function keeps the conv's name hint
and its reduction block name (``conv2d_nhwc``…), so AnnotateTIROpPattern marks it
out-elementwise-fusable, FuseOps still fuses the bias/relu/residual epilogue into
it and the conv rule schedules it.  A dense conv gets the kernel the conv
legalization would give it without the selection (:func:`.conv2d.kernel_choice`):
packed weights, or, for 3x3 stride-1 convs, a Winograd conv whose input padding
copy reads the selection (a pruned ResNet-18's first conv of each block reads a
slice or gather of the block input: direct, they ran at half the Winograd speed).
Unused selections and transposes are dropped.
A channel pad is merged into the conv's spatial padding (one padded copy, as
before).  Only selections and pads on the conv's channel axis are rewritten;
results are unchanged (the same loads, in the same arithmetic order as the unselected conv).

A gather of features before a linear layer (a pruned classifier reading part of
the pooled features), ``matmul(take(x, idx, axis=-1), w)`` with constant in-range
indices and a 2-D weight, likewise becomes one ``matmul`` function whose A loads
go through ``idx`` (``take`` is opaque to FuseOps, so it would be a kernel of its
own); the dense rule schedules it and the bias epilogue still fuses.
"""

from __future__ import annotations

from sliver.backends.tvm.schedules.common import OUT_EWISE_FUSABLE


def _ints(expr) -> list[int] | None:
    """A relax tuple of constant integers → list (None when not constant)."""
    from tvm import relax

    fields = expr.fields if isinstance(expr, relax.Tuple) else None
    if fields is None:
        return None
    out = []
    for f in fields:
        f = getattr(f, "value", f)  # a relax.PrimValue wraps the IntImm
        f = getattr(f, "value", f)
        if not isinstance(f, int):
            return None
        out.append(f)
    return out




def _perm(call) -> list[int] | None:
    axes = call.attrs.axes
    return None if axes is None else [int(a) for a in axes]


def _gather_in_range(x, idx, axis: int):
    """``take(x, idx, axis)`` for indices known to be in range: no clamp (topi's
    ``mode="fast"`` does the same but logs a warning on every compile)."""
    from tvm import te

    shape = list(x.shape)
    shape[axis] = idx.shape[0]
    return te.compute(shape, lambda *i: x[i[:axis] + (idx[i[axis]],) + i[axis + 1:]], name="T_take")


def _constant_indices_in_range(idx, size) -> bool:
    """``idx`` is a 1-D constant whose values all index into ``size`` (so reads need no clamp)."""
    import tvm
    from tvm.ir.expr import Constant

    if not isinstance(idx, Constant) or len(idx.ty.shape) != 1 or not isinstance(size, (int, tvm.tirx.IntImm)):
        return False
    values = idx.value.numpy()
    return bool(values.size) and 0 <= values.min() and values.max() < int(size)


def gathered_matmul_te(x, idx, w):
    """``matmul(take(x, idx, axis=-1), w)`` as one TE function: ``x`` [..., K0],
    ``idx`` [K] (constant, in range), ``w`` [K, N].  The gather is a stage that the
    default schedules inline into the matmul's loads; the reduction block is named
    ``matmul`` like Relax's own legalization, so the dense rule schedules it."""
    from tvm import te

    gathered = _gather_in_range(x, idx, len(x.shape) - 1)
    k = te.reduce_axis((0, w.shape[0]), name="k")
    shape = list(gathered.shape[:-1]) + [w.shape[1]]
    return te.compute(shape, lambda *i: te.sum(gathered[i[:-1] + (k,)] * w[k, i[-1]], axis=k), name="matmul")


def FuseChannelSelect(target=None, *, winograd: bool = True):  # noqa: N802 - TVM pass naming
    """The pass; ``target`` (else the current one) and ``winograd`` decide, as for
    the conv legalization (:func:`.conv2d.kernel_choice`), which kernel a dense conv
    gets: a Winograd conv or packed weights."""
    import tvm
    from tvm import relax, topi

    from sliver.backends.tvm.schedules import conv2d
    from sliver.backends.tvm.schedules import winograd as winograd_rules
    from sliver.backends.tvm.schedules.layout import bound_call, mutator_pass

    conv_op = tvm.ir.Op.get("relax.nn.conv2d")
    slice_op = tvm.ir.Op.get("relax.strided_slice")
    take_op = tvm.ir.Op.get("relax.take")
    permute_op = tvm.ir.Op.get("relax.permute_dims")
    pad_op = tvm.ir.Op.get("relax.nn.pad")
    matmul_op = tvm.ir.Op.get("relax.matmul")

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def _bound(self, expr, op):
            return bound_call(self, expr, op)

        def _selection(self, data, channel_axis: int):
            """``(source, te_select, extra relax args, channel pad)`` when ``data`` is a
            channel selection (or zero channel padding) of ``source`` in the conv's
            layout; None otherwise.  ``channel pad`` is ``(before, after)`` for a pad
            (``te_select`` is None: the conv's padding takes it over), else None."""
            sl = self._bound(data, slice_op)
            if sl is not None and len(sl.args) in (4, 5):
                axes, begin, end = (_ints(a) for a in sl.args[1:4])
                strides = _ints(sl.args[4]) if len(sl.args) == 5 else [1] * len(axes or [])
                if axes == [channel_axis] and None not in (begin, end, strides):
                    return sl.args[0], lambda x: topi.strided_slice(x, begin, end, strides, axes,
                                                                    slice_mode="end", assume_inbound=True), [], None
            direct = self._channel_op(data, list(range(len(data.ty.shape))), channel_axis)
            if direct is not None:
                return direct
            # permute_dims(op(permute_dims(x, p), ...), q) with q∘p = identity: op on x's axes
            outer = self._bound(data, permute_op)
            inner_op = None
            if outer is not None:
                inner_op = self._bound(outer.args[0], take_op)
                inner_op = inner_op if inner_op is not None else self._bound(outer.args[0], pad_op)
            inner = self._bound(inner_op.args[0], permute_op) if inner_op is not None else None
            if inner is None:
                return None
            p, q = _perm(inner), _perm(outer)
            if p is None or q is None or [p[i] for i in q] != list(range(len(p))):
                return None
            return self._channel_op(outer.args[0], p, channel_axis, source=inner.args[0])

        def _channel_op(self, value, axes_of, channel_axis: int, source=None):
            """A take or channel-only zero pad bound to ``value`` whose operand's axis
            ``i`` is the conv input's axis ``axes_of[i]`` (``source``: that operand
            with those axes undone, else the operand itself)."""
            take = self._bound(value, take_op)
            if take is not None:
                if take.attrs.axis is None or axes_of[int(take.attrs.axis)] != channel_axis:
                    return None
                return self._gather(source if source is not None else take.args[0], take, channel_axis)
            pad = self._bound(value, pad_op)
            if pad is None or str(pad.attrs.pad_mode) != "constant" or float(pad.attrs.pad_value) != 0.0:
                return None
            width = [int(v) for v in pad.attrs.pad_width]
            padded = [axes_of[i] for i in range(len(axes_of)) if width[2 * i] or width[2 * i + 1]]
            if padded != [channel_axis]:
                return None
            i = axes_of.index(channel_axis)
            return source if source is not None else pad.args[0], None, [], (width[2 * i], width[2 * i + 1])

        @staticmethod
        def _gather(source, take, axis: int):
            idx = take.args[1]
            if len(idx.ty.shape) != 1:
                return None
            if _constant_indices_in_range(idx, source.ty.shape[axis]):  # pruning's index lists: no clamp
                return source, (lambda x, i: _gather_in_range(x, i, axis)), [idx], None
            mode = str(take.attrs.mode)
            return source, (lambda x, i: topi.take(x, i, axis=axis, mode=mode)), [idx], None

        def _fused(self, new):
            """``new`` (a call_tir) marked as a conv/matmul with an injective prologue:
            AnnotateTIROpPattern calls a data-dependent read (the gather) opaque, which
            would stop FuseOps from fusing the epilogue."""
            gv = new.args[0]
            self.builder_.update_func(gv, self.builder_.get()[gv].with_attr("op_pattern", OUT_EWISE_FUSABLE))
            return new

        def _matmul(self, call):
            """``matmul(take(x, idx, axis=-1), w)`` → one gathered matmul, else ``call``."""
            x, w = call.args
            take = self._bound(x, take_op)
            if take is None or take.attrs.axis is None or len(w.ty.shape) != 2:
                return call
            source, idx = take.args
            rank = len(source.ty.shape)
            if int(take.attrs.axis) % rank != rank - 1 or len(x.ty.shape) != rank \
                    or not _constant_indices_in_range(idx, source.ty.shape[-1]) \
                    or len({str(source.ty.dtype), str(w.ty.dtype), str(call.ty.dtype)}) != 1:
                return call
            return self._fused(self.builder_.call_te(gathered_matmul_te, source, idx, w, primfunc_name_hint="matmul"))

        def visit_call_(self, call):  # noqa: N802 - TVM visitor naming
            call = self.visit_expr_post_order(call)
            if isinstance(call, relax.Call) and call.op.same_as(matmul_op):
                return self._matmul(call)
            if not (isinstance(call, relax.Call) and call.op.same_as(conv_op)):
                return call
            a = call.attrs
            layout = str(a.data_layout)
            if str(a.out_layout) != layout or len(layout) != 4 or len(str(a.kernel_layout)) != 4:
                return call
            found = self._selection(call.args[0], layout.index("C"))
            if found is None:
                return call
            source, select, extra, channel_pad = found
            out_dtype = None if str(a.out_dtype) in ("", "void", "None") else str(a.out_dtype)
            strides, padding, dilation = ([int(v) for v in t] for t in (a.strides, a.padding, a.dilation))
            if channel_pad is not None:  # one padded copy: spatial (the conv's) and channel padding
                before, after = [0] * 4, [0] * 4
                h, w_, c = layout.index("H"), layout.index("W"), layout.index("C")
                before[h], before[w_], after[h], after[w_] = padding
                before[c], after[c] = channel_pad
                padding = [0, 0, 0, 0]

                def select(x):
                    return topi.nn.pad(x, before, after, 0.0, name="pad_temp")

            w = call.args[1]
            kind, size, cpu = conv2d.kernel_choice(call, target, winograd=winograd) or (None, None, None)
            if kind == "winograd" and channel_pad is None:  # as the conv legalization would, on the selection
                xs = [int(d) for d in call.args[0].ty.shape]
                return winograd_rules.legalize_call(self.builder_, source, w, xs, int(w.ty.shape[3]), padding, size,
                                                    cpu, select=select, extra=extra)
            if kind == "packed" and channel_pad is None:  # the packed-weight kernel dense convs get
                w = self.builder_.emit_te(conv2d.pack_weight_te, w, size, primfunc_name_hint="pack_weight")

                def conv(x, wp, *rest):
                    return conv2d.packed_conv2d_te(select(x, *rest), wp, strides, padding, dilation, "float32")
            else:
                def conv(x, w, *rest):
                    return topi.nn.conv(select(x, *rest), w, strides, padding, dilation, int(a.groups), layout,
                                        str(a.kernel_layout), out_dtype)

            return self._fused(self.builder_.call_te(conv, source, w, *extra, primfunc_name_hint="conv2d"))

    # the selections (and transposes) only the rewritten convs read are dropped at once
    return tvm.transform.Sequential([mutator_pass("SliverFuseChannelSelect", _Rewriter),
                                     relax.transform.DeadCodeElimination()], name="SliverFuseChannelSelect")
