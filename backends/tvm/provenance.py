"""Which sliver op each piece of the compiled program computes: the one place op
identity is carried through TVM's passes.

The lowering names every Relax var an op emits after the op (:func:`var_name`: its
result name and its index in the module); FuseOps and FuseTIR keep those names on the
fused functions' bindings, so :func:`primfunc_ops` reads back, per compiled PrimFunc,
the sliver ops it computes (:func:`instrument` records it while the pipeline runs).
Nothing else parses those names.
"""

from __future__ import annotations

import re


def var_name(op, index: int) -> str:
    """The Relax name of every var the lowering of ``module.ops[index]`` emits: its
    result's name as an identifier, then ``__INDEX_``.  Relax appends digits to
    repeated names; the trailing underscore keeps the index readable
    (:func:`op_index`), so fused PrimFuncs can be traced back to sliver ops."""
    return "".join(c if c.isalnum() else "_" for c in op.results[0].name) + f"__{index}_"


def op_index(name: str) -> int | None:
    """The sliver op index in a Relax var name made by :func:`var_name` (None if not one)."""
    m = re.search(r"__(\d+)_\d*$", name)
    return int(m.group(1)) if m else None


def _bindings(func):
    for block in func.body.blocks:
        yield from block.bindings


def _constant_args(call) -> list[int]:
    """Handles of the constants (weights) among a call's arguments, tuples included."""
    from tvm import relax
    from tvm.ir.expr import Constant

    flat = []
    for a in call.args:
        flat += list(a.fields) if isinstance(a, relax.Tuple) else [a]
    return [a.__chandle__() for a in flat if isinstance(a, Constant)]


def constant_ops(mod) -> dict[int, int]:
    """``{constant handle: sliver op index}`` of ``main``'s named bindings: which op
    reads which weight (taken before FuseOps, which passes the same constants on)."""
    from tvm import relax


    out = {}
    for b in _bindings(mod["main"]):
        i = op_index(b.var.name)
        if i is not None and isinstance(b.value, relax.Call):
            for h in _constant_args(b.value):
                out.setdefault(h, i)
    return out


def primfunc_ops(mod, constants: dict[int, int] | None = None) -> dict[str, list[int]]:
    """``{PrimFunc name: sorted sliver op indices}`` of a Relax module after FuseOps
    (before FuseTIR) or after LegalizeOps: a fused function's bindings keep the names
    :func:`var_name` gave them (its output var is renamed,
    so an epilogue such as a final relu may be missing), and ``main`` calls unfused
    PrimFuncs from vars with those names.  FuseOps makes one function for
    structurally equal groups (the repeated blocks of a ResNet stage) and keeps only
    the first group's names; each call of it passes its own weights, so ``constants``
    (:func:`constant_ops`) names the ops of every call.  Ops the compiler added
    (layout transposes) map to nothing."""
    import tvm
    from tvm import relax


    out: dict[str, set] = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        if func.attrs is not None and "Primitive" in func.attrs:
            idx = {op_index(b.var.name) for b in _bindings(func)} - {None}
            out.setdefault(gv.name_hint, set()).update(idx)
            continue
        for b in _bindings(func):
            call = b.value
            if not isinstance(call, relax.Call):
                continue
            if isinstance(call.op, tvm.ir.GlobalVar):  # a fused function
                ops = {constants[h] for h in _constant_args(call) if h in (constants or {})}
                out.setdefault(call.op.name_hint, set()).update(ops)
            elif getattr(call.op, "name", "") == "relax.call_tir":
                i = op_index(b.var.name)
                ops = {i} if i is not None else {constants[h] for h in _constant_args(call) if h in (constants or {})}
                out.setdefault(call.args[0].name_hint, set()).update(ops)
    return {k: sorted(v) for k, v in out.items()}


def instrument():
    import tvm

    @tvm.instrument.pass_instrument
    class PrimFuncOps:
        """Records :func:`constant_ops` before FuseOps, :func:`primfunc_ops` just
        before FuseTIR (fused groups) and just after the first LegalizeOps (for pipelines that fuse nothing, like TVM's
        default one); :meth:`result` prefers the fused view."""

        def __init__(self):
            self.fused, self.legalized, self.constants = {}, {}, {}

        def run_before_pass(self, mod, info):
            if info.name == "FuseOps" and not self.constants:
                self.constants = constant_ops(mod)
            if info.name == "FuseTIR" and not self.fused:
                self.fused = primfunc_ops(mod, self.constants)

        def run_after_pass(self, mod, info):
            if info.name == "LegalizeOps" and not self.legalized:
                self.legalized = primfunc_ops(mod)

        def result(self) -> dict:
            """``{PrimFunc name: sorted sliver op indices}``."""
            return self.fused or self.legalized

    return PrimFuncOps()
