"""Matrix products: ``relax.linear`` / ``relax.matmul`` legalized to ``matmul``
blocks ``C[…, m, n] += A[…, m, k] * B[…, k, n]`` (linear's weight is transposed
to [K, N] by constant folding, so N is contiguous in B and C).

A product with a 2-D right operand (a linear layer's weight) is legalized by
:func:`legalize` with that operand *packed*: ``[K, N]`` becomes ``[N / b, K, b]``
with ``b`` the micro-kernel's width (:func:`~.common.register_tile`), so each
reduction step reads the next contiguous ``b`` floats of one panel instead of a row
``N`` floats away from the last (BERT-base's 128x768x3072 feed-forward on Zen 5: a
new page every few steps, ~12 GFLOP/s per core).  The packing is a ``call_tir`` on
the constant, which FoldConstant evaluates at compile time, as for convolutions.

Micro-kernel: ``rt`` rows of A x ``nv`` vectors of N in registers, the k loop
outside it; batch and the outer tiles run in parallel.  With batch-1 inference
(M = 1) this is a GEMV vectorized over N."""

from __future__ import annotations

from sliver.backends.tvm.schedules.common import (CPU, NotApplicable, block_name, iter_kinds, register_tile,
                                                  tile_reduction)

NAMES = ("matmul", "T_matmul", "NT_matmul", "T_batch_matmul", "dense", "T_dense")
PACKED = "matmul_packed"


def match(sch, block) -> bool:
    name = block_name(sch, block)
    kinds = iter_kinds(sch, block)
    return any(name.startswith(n) for n in NAMES) and kinds.endswith("R") and kinds.count("R") == 1


def _packed_width(sch, block) -> int | None:
    """``b`` of a packed matmul block (its 3-d panel buffer's last extent), else None."""
    if not block_name(sch, block).startswith(PACKED):
        return None
    b = sch.get(block)
    return int(b.reads[-1].source.shape[-1])


def schedule(sch, block, cpu: CPU) -> list:
    if not match(sch, block):
        raise NotApplicable("not a matmul")
    b = _packed_width(sch, block)
    if b is not None:
        it = sch.get(block).iter_vars
        rows, n = int(it[-3].dom.extent) if len(it) >= 3 else 1, int(it[-2].dom.extent)
        rt, nv = register_tile(rows, n, cpu)
        if nv * cpu.lanes != b:  # packed for another CPU: keep its width
            rt, _ = register_tile(rows, b, cpu)
        return tile_reduction(sch, block, cpu, width=b, reg_tile=rt)
    return tile_reduction(sch, block, cpu, max_vectors=2)


# -- legalization with a packed right operand ------------------------------------------------------


def pack_te(w, b: int):
    """``[K, N]`` → ``[N / b, K, b]``."""
    from tvm import te

    k, n = w.shape
    return te.compute((n // b, k, b), lambda o, r, j: w[r, o * b + j], name="pack_weight")


def packed_matmul_te(a, wp, out_dtype: str):
    """``out[…, m, n] = Σ_k a[…, m, k] * wp[n // b, k, n % b]``."""
    from tvm import te

    nb, k, b = wp.shape
    rk = te.reduce_axis((0, k), "k")
    return te.compute((*a.shape[:-1], nb * b),
                      lambda *i: te.sum(a[(*i[:-1], rk)].astype(out_dtype) * wp[i[-1] // b, rk, i[-1] % b]
                                        .astype(out_dtype), axis=rk),
                      name=PACKED)


def kernel_choice(call, target=None):
    """``b`` (the packed width) for a float32 ``relax.matmul`` ``call`` whose right operand
    is 2-D with static shapes and whose left one has at least 2 dimensions; None for
    the rest (TVM's own legalization)."""
    import tvm

    from sliver.backends.tvm.schedules.common import cpu_of
    from sliver.backends.tvm.schedules.conv2d import _static, _ty

    tgt = target if target is not None else tvm.target.Target.current(allow_none=True)
    if tgt is None or (isinstance(tgt, tvm.target.Target) and str(tgt.kind.name) != "llvm"):
        return None
    a, w = call.args
    at, wt, yt = (_ty(e) for e in (a, w, call))
    as_, ws = (_static(getattr(t, "shape", None) or []) for t in (at, wt))
    if (not as_ or not ws or len(ws) != 2 or len(as_) < 2 or as_[-1] != ws[0]
            or {str(at.dtype), str(wt.dtype), str(yt.dtype)} != {"float32"}):
        return None
    cpu = cpu_of(tgt)
    try:
        _, nv = register_tile(as_[-2], ws[1], cpu)
    except NotApplicable:
        return None
    return nv * cpu.lanes


def legalize(target=None):
    """A ``relax.matmul`` legalization for ``LegalizeOps(customize_legalize_map=…)``:
    products with a 2-D float32 right operand become a packing ``call_tir`` plus a
    packed matmul (:func:`kernel_choice`); the rest go to TVM's own rule."""
    import tvm

    default = tvm.ir.Op.get("relax.matmul").get_attr("FLegalize")

    def rule(bb, call):
        b = kernel_choice(call, target)
        if b is None:
            return default(bb, call)
        a, w = call.args
        wp = bb.emit_te(pack_te, w, b, primfunc_name_hint="pack_weight")
        return bb.call_te(packed_matmul_te, a, wp, "float32", primfunc_name_hint="matmul")

    return rule
