"""Relax-level rewrites that make the default schedules applicable.

* :class:`ClipToMinMax`: ``clip(x, lo, hi)`` → ``minimum(maximum(x, lo), hi)``.
  ``relax.clip`` has no layout-inference rule, so ConvertLayout would wrap every
  ReLU6 in two transposes; maximum/minimum are broadcasting binaries it handles.
* :class:`ZeroPadIntoConv`: ``conv2d(concat(x, zeros))`` → ``conv2d(x, padding=…)``.
  A zero pad before a conv (TensorFlow's "same" padding in transformers' MobileNetV2 and
  EfficientNet, ``nn.ZeroPad2d``) traces to concatenations with zero constants, which
  ConvertLayout leaves in NCHW: a transpose, two concatenations and a transpose back per
  pad, ~85% of MobileNetV2's time.  The conv's own (asymmetric) padding does the same.
* :func:`channels_last`: every ``conv2d`` in NHWC with HWIO weights; the layout
  change propagates through elementwise ops, pooling and means, and FoldConstant
  transposes the constant weights at compile time.
* :class:`CancelTransposes`: ``permute_dims(permute_dims(x, p), q)`` → ``x`` (or one
  permutation), and ``add(permute_dims(a, p), permute_dims(b, p))`` →
  ``permute_dims(add(a, b), p)`` (and the other same-shape elementwise binaries).
  A model that goes channels last itself (ConvNeXt: ``x.permute(0, 2, 3, 1)`` before
  its LayerNorm and linear layers, back before the residual add) meets the NHWC
  convolutions with transposes in both directions: per block, a transpose of the
  residual stream to NCHW for the add and one back to NHWC for the next conv.  Moved
  past the add, they meet and cancel; the residual stream stays NHWC.
"""

from __future__ import annotations


def channels_last():
    from tvm import relax

    # transposed convolutions stay NCHW: TVM legalizes them in that layout only
    return relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"],
                                          "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]})


def ClipToMinMax():  # noqa: N802 - TVM pass naming
    import tvm
    from tvm import relax, tirx

    clip_op = tvm.ir.Op.get("relax.clip")

    def _bound(e):
        """A constant scalar bound (TVM 0.27 passes them as IntImm/FloatImm)."""
        inner = getattr(e, "value", None)
        if isinstance(e, (tirx.IntImm, tirx.FloatImm)):
            return float(e.value)
        if isinstance(inner, (tirx.IntImm, tirx.FloatImm)):  # older relax.PrimValue wrapper
            return float(inner.value)
        return None

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM visitor naming
            call = self.visit_expr_post_order(call)
            if not (isinstance(call, relax.Call) and call.op.same_as(clip_op)):
                return call
            x = call.args[0]
            ty = x.ty if hasattr(x, "ty") else x.struct_info
            dtype = getattr(ty, "dtype", "")
            lo, hi = _bound(call.args[1]), _bound(call.args[2])
            if lo is None or hi is None or not str(dtype).startswith("float"):
                return call
            return relax.op.minimum(relax.op.maximum(x, relax.const(lo, dtype)), relax.const(hi, dtype))

    return mutator_pass("SliverClipToMinMax", _Rewriter)


def ZeroPadIntoConv():  # noqa: N802 - TVM pass naming
    import numpy as np
    import tvm
    from tvm import relax

    from tvm.ir.expr import Constant

    conv_op, concat_op = tvm.ir.Op.get("relax.nn.conv2d"), tvm.ir.Op.get("relax.concat")

    def _zeros(e) -> bool:
        return isinstance(e, Constant) and not np.any(e.value.numpy())

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def _peel(self, x, pads):
            """``x`` without the zero concatenations along H/W it is bound to; ``pads``
            (top, left, bottom, right) grows by what they added."""
            while isinstance(x, relax.Var):
                e = self.lookup_binding(x)
                if not (isinstance(e, relax.Call) and e.op.same_as(concat_op) and isinstance(e.args[0], relax.Tuple)):
                    break
                axis = int(e.attrs.axis) % 4
                fields = list(e.args[0].fields)
                data = [i for i, f in enumerate(fields) if not _zeros(f)]
                if axis not in (2, 3) or len(data) != 1:
                    break
                (i,) = data
                side = axis - 2  # 0: rows (top/bottom), 1: columns (left/right)
                pads[side] += sum(int(f.ty.shape[axis]) for f in fields[:i])
                pads[side + 2] += sum(int(f.ty.shape[axis]) for f in fields[i + 1:])
                x = fields[i]
            return x

        def visit_call_(self, call):  # noqa: N802 - TVM visitor naming
            call = self.visit_expr_post_order(call)
            if not (isinstance(call, relax.Call) and call.op.same_as(conv_op)) or call.attrs.data_layout != "NCHW":
                return call
            pads = [0, 0, 0, 0]
            x = self._peel(call.args[0], pads)
            if not any(pads):
                return call
            a = call.attrs
            padding = [int(p) + q for p, q in zip(a.padding, pads)]
            return relax.op.nn.conv2d(x, call.args[1], strides=a.strides, padding=padding, dilation=a.dilation,
                                      groups=a.groups, data_layout=a.data_layout, kernel_layout=a.kernel_layout,
                                      out_layout=a.out_layout, out_dtype=a.out_dtype)

    return mutator_pass("SliverZeroPadIntoConv", _Rewriter)


def CancelTransposes():  # noqa: N802 - TVM pass naming
    import tvm
    import tvm_ffi
    from tvm import relax

    permute_op = tvm.ir.Op.get("relax.permute_dims")
    binaries = {tvm.ir.Op.get(f"relax.{n}") for n in ("add", "subtract", "multiply", "maximum", "minimum")}

    def _ty(e):
        return e.ty if hasattr(e, "ty") else e.struct_info

    def _axes(call) -> list[int] | None:
        """The permutation of a ``permute_dims`` call (None: its rank is unknown)."""
        rank = getattr(_ty(call.args[0]), "ndim", -1)
        if call.attrs.axes is None:
            return list(range(rank))[::-1] if rank >= 0 else None
        return [int(a) % rank for a in call.attrs.axes] if rank >= 0 else None

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def _permuted(self, x):
            """``(y, p)`` when ``x`` is bound to ``permute_dims(y, p)``, else None."""
            if not isinstance(x, relax.Var):
                return None
            e = self.lookup_binding(x)
            if isinstance(e, relax.Call) and e.op.same_as(permute_op):
                p = _axes(e)
                return (e.args[0], p) if p is not None else None
            return None

        def visit_call_(self, call):  # noqa: N802 - TVM visitor naming
            call = self.visit_expr_post_order(call)
            if not isinstance(call, relax.Call):
                return call
            if call.op.same_as(permute_op):
                inner, q = self._permuted(call.args[0]), _axes(call)
                if q == list(range(len(q or [None]))):  # ConvertLayout leaves identities behind
                    return call.args[0]
                if inner is None or q is None:
                    return call
                y, p = inner
                composed = [p[i] for i in q]  # out[..., i, ...] = y[..., p[q[i]], ...]
                if composed == list(range(len(composed))):
                    return y
                return relax.op.permute_dims(y, composed)
            if any(call.op.same_as(op) for op in binaries) and len(call.args) == 2:
                a, b = (self._permuted(x) for x in call.args)
                if a is None or b is None or a[1] != b[1]:
                    return call
                ta, tb = _ty(a[0]), _ty(b[0])
                shapes = [getattr(t, "shape", None) for t in (ta, tb)]
                if any(s is None for s in shapes) or str(ta.dtype) != str(tb.dtype) or \
                        not tvm_ffi.structural_equal(shapes[0], shapes[1]):
                    return call  # broadcasting: the permutation would apply to different shapes
                return relax.op.permute_dims(relax.Call(call.op, [a[0], b[0]], call.attrs), a[1])
            return call

    return mutator_pass("SliverCancelTransposes", _Rewriter)


def bound_call(mutator, expr, op):
    """The call of ``op`` that ``expr`` (a var) is bound to in the function ``mutator`` (a
    ``relax.PyExprMutator``) visits, or None."""
    from tvm import relax

    if not isinstance(expr, relax.Var):
        return None
    value = mutator.lookup_binding(expr)
    return value if isinstance(value, relax.Call) and value.op.same_as(op) else None


def mutator_pass(name: str, rewriter_class):
    """A TVM module pass that runs ``rewriter_class(mod)`` (a ``relax.PyExprMutator``)
    over every Relax function of the module."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        rewriter = rewriter_class(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return _pass
