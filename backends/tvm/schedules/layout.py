"""Relax-level rewrites that make the default schedules applicable.

* :class:`ClipToMinMax`: ``clip(x, lo, hi)`` → ``minimum(maximum(x, lo), hi)``.
  ``relax.clip`` has no layout-inference rule, so ConvertLayout would wrap every
  ReLU6 in two transposes; maximum/minimum are broadcasting binaries it handles.
* :func:`channels_last`: every ``conv2d`` in NHWC with HWIO weights; the layout
  change propagates through elementwise ops, pooling and means, and FoldConstant
  transposes the constant weights at compile time.
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
