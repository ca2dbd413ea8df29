"""Compile a sliver module with TVM and export a shared library for the target.

This package is the only place sliver talks to TVM's compiler; every TVM error is
re-raised as a :class:`SliverError` that says which step failed.
"""

from __future__ import annotations

import os
import tempfile
import time

from sliver.common.errors import SliverError
from sliver.backends.tvm.targets import Target, check_toolchain, resolve, tvm_target


def compile_module(module, target, *, progress=None, schedules: bool = True, kernels: dict | None = None,
                   layers: dict | None = None, tuning=None, report: dict | None = None,
                   winograd: bool = True, lowered=None) -> bytes:
    """Lower ``module`` through Relax, compile it for ``target`` and return the
    bytes of the shared library (``.so``) the runtime loads.

    ``schedules=True`` (the default) compiles with sliver's default CPU schedules
    (:mod:`sliver.backends.tvm.schedules`: channels-last convolutions, vectorized,
    register-tiled and parallel loops); ``False`` uses TVM's plain pipeline, whose
    naive loops are ~100x slower (kept for comparisons).  ``winograd=False`` keeps
    every conv a direct one (by default 3x3 stride-1 convs with enough channels run
    as Winograd convolutions: :mod:`sliver.backends.tvm.schedules.winograd`).  ``kernels`` (if given)
    receives ``{layer: kernel}`` for layers lowered with a choice of kernels (the
    low-bit ops, :mod:`sliver.backends.tvm.lowbit`).

    ``layers`` (if given) receives ``{PrimFunc name: [sliver op result names]}``:
    which of ``module``'s ops each compiled function computes (see
    :func:`primfunc_ops`), so profiles can name sliver layers.

    ``tuning`` (a :class:`~sliver.backends.tvm.tuning.TuningDatabase` for this
    target) replaces the default schedule of every function it holds records for
    by the fastest one (each function's default schedule is one of them);
    ``report`` receives ``{PrimFunc name: "tuned" or the default rule}``.

    ``lowered``: ``(Relax module, LowerContext)`` when the caller already ran
    :func:`~sliver.backends.tvm.lower.to_relax` on ``module`` (to tune it first): it
    is compiled as is, not lowered again."""
    from sliver.backends.tvm.lower import LowerContext, to_relax

    target = resolve(target)
    check_toolchain(target)
    say = progress or (lambda msg: None)

    t0 = time.perf_counter()
    if lowered is None:
        context = LowerContext(target=target)
        mod = to_relax(module, context)
    else:
        mod, context = lowered
    if kernels is not None:
        kernels.update(context.report)
    say(f"lowered {len(module.ops)} ops to Relax in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    try:
        found = {} if layers is not None else None
        before = [tuning.apply_pass(report)] if tuning is not None and schedules else []
        executable = build_relax(mod, tvm_target(target), schedules=schedules, report=report, layers=found,
                                 before_schedule=before, winograd=winograd)
        if layers is not None:
            layers.update({f: [module.ops[i].results[0].name for i in idx] for f, idx in found.items()})
    except Exception as e:
        raise SliverError(f"TVM failed to compile @{module.name} for {target.name}: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from e
    say(f"compiled for {target.name} in {time.perf_counter() - t0:.1f}s")

    with tempfile.TemporaryDirectory(prefix="sliver-build-") as tmp:
        path = os.path.join(tmp, "lib.so")
        extra = {}
        if context.sources:  # C kernels called as packed functions, linked into the same library
            from sliver.backends.tvm.lowbit import compile_flags

            extra = {"addons": sorted(context.sources),
                     "options": compile_flags(target, context.defines)}
        try:
            if target.cross_compiler:
                from tvm.support import cc

                # the target triple from the cross compiler: TVM's default asks the host compiler, which
                # packs the imports of a library without TIR functions (only C kernels) for the host
                fcompile = cc.cross_compiler(target.cross_compiler,
                                             get_target_triple=cc.get_target_by_dump_machine(target.cross_compiler))
                executable.export_library(path, fcompile=fcompile, **extra)
            else:
                executable.export_library(path, **extra)
        except Exception as e:
            raise SliverError(f"linking the {target.name} library failed: {e}") from e
        with open(path, "rb") as f:
            return f.read()


def build_relax(mod, target, *, schedules: bool = True, report: dict | None = None, layers: dict | None = None,
                before_schedule=(), winograd: bool = True):
    """``tvm.compile`` a Relax module for a ``tvm.target.Target``, with sliver's
    default schedules unless ``schedules=False``; ``report`` receives
    ``{PrimFunc name: schedule rule}``, ``layers`` ``{PrimFunc name: [sliver op
    indices]}`` (see :func:`primfunc_ops`); ``before_schedule``: Relax passes run on
    the fused module before the default schedules (the tuner's); ``winograd``: see
    :func:`compile_module`."""
    import tvm

    capture = _primfunc_ops_instrument() if layers is not None else None
    with tvm.transform.PassContext(opt_level=3, instruments=[capture] if capture else []):
        if not schedules:
            executable = tvm.compile(mod, target=target)
        else:
            from sliver.backends.tvm.schedules import default_pipeline

            executable = tvm.compile(mod, target=target, relax_pipeline=default_pipeline(
                target, report=report, before_schedule=before_schedule, winograd=winograd))
    if capture is not None:
        layers.update(capture.result())
    return executable


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

    from sliver.backends.tvm.lower import op_index

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
    :func:`~sliver.backends.tvm.lower.var_name` gave them (its output var is renamed,
    so an epilogue such as a final relu may be missing), and ``main`` calls unfused
    PrimFuncs from vars with those names.  FuseOps makes one function for
    structurally equal groups (the repeated blocks of a ResNet stage) and keeps only
    the first group's names; each call of it passes its own weights, so ``constants``
    (:func:`constant_ops`) names the ops of every call.  Ops the compiler added
    (layout transposes) map to nothing."""
    import tvm
    from tvm import relax

    from sliver.backends.tvm.lower import op_index

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


def _primfunc_ops_instrument():
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
            return self.fused or self.legalized

    return PrimFuncOps()


def tvm_version() -> str:
    import tvm

    return tvm.__version__


__all__ = ["build_relax", "compile_module", "primfunc_ops", "resolve", "Target", "tvm_version"]
