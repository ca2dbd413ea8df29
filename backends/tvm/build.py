"""Compile a sliver module with TVM and export a shared library for the target.

This package is the only place sliver talks to TVM's compiler; every TVM error is
re-raised as a :class:`SliverError` that says which step failed.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

from sliver.common.errors import SliverError
from sliver.backends.tvm.targets import Target, check_toolchain, resolve, tvm_target


@dataclass(frozen=True)
class CompileResult:
    """What :func:`compile_module` made of a sliver module.

    ``library``: the shared library's bytes (``.so``, what the runtime loads);
    ``target``: the resolved :class:`~sliver.backends.tvm.targets.Target`;
    ``kernels``: ``{layer: kernel}`` for layers lowered with a choice of kernels (the
    low-bit ops, :mod:`sliver.backends.tvm.lowbit`);
    ``primfuncs``: ``{PrimFunc name: [sliver op result names]}``, which of the
    module's ops each compiled function computes (:mod:`~sliver.backends.tvm.provenance`);
    ``schedules``: ``{PrimFunc name: where its schedule came from}``, ``"tuned"`` (a
    tuning record) or the default rule (``"conv2d"``, ``"winograd"``, …);
    ``sources``: the C files linked into the library."""

    library: bytes
    target: Target
    kernels: dict = field(default_factory=dict)
    primfuncs: dict = field(default_factory=dict)
    schedules: dict = field(default_factory=dict)
    sources: tuple = ()

    @property
    def winograd(self) -> list[str]:
        """The compiled functions that are Winograd convolutions (tuned or not)."""
        return sorted(k for k in self.schedules if "winograd" in k)

    @property
    def tuned(self) -> list[str]:
        return sorted(k for k, v in self.schedules.items() if v == "tuned")


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_relax` made of a Relax module: the TVM ``executable``,
    ``schedules`` (``{PrimFunc name: schedule rule}``) and ``primfuncs``
    (``{PrimFunc name: [sliver op indices]}``, :func:`~.provenance.primfunc_ops`)."""

    executable: object
    schedules: dict
    primfuncs: dict


def compile_module(module, target, *, progress=None, schedules: bool = True, tuning=None, winograd: bool = True,
                   lowered=None, lowbit_kernel: str | None = None) -> CompileResult:
    """Lower ``module`` through Relax, compile it for ``target`` and return a
    :class:`CompileResult` (the shared library's bytes and what the compiler chose).

    ``schedules=True`` (the default) compiles with sliver's default CPU schedules
    (:mod:`sliver.backends.tvm.schedules`: channels-last convolutions, vectorized,
    register-tiled and parallel loops); ``False`` uses TVM's plain pipeline, whose
    naive loops are ~100x slower (kept for comparisons).  ``winograd=False`` keeps
    every conv a direct one (by default 3x3 stride-1 convs with enough channels run
    as Winograd convolutions: :mod:`sliver.backends.tvm.schedules.winograd`).

    ``tuning`` (a :class:`~sliver.backends.tvm.tuning.TuningDatabase` for this
    target) replaces the default schedule of every function it holds records for
    by the fastest one (each function's default schedule is one of them).

    ``lowbit_kernel``: ``"generic"``, ``"bitserial"`` or ``"int8"`` forced on every
    eligible low-bit layer (the low-bit benchmark compares them); None: the target's policy.

    ``lowered``: ``(Relax module, LowerContext)`` when the caller already ran
    :func:`~sliver.backends.tvm.lower.to_relax` on ``module`` (to tune it first): it
    is compiled as is, not lowered again."""
    from sliver.backends.tvm.lower import LowerContext, to_relax
    from sliver.backends.tvm.lowbit import check_kernel

    check_kernel(lowbit_kernel)
    target = resolve(target)
    check_toolchain(target)
    say = progress or (lambda msg: None)

    t0 = time.perf_counter()
    if lowered is None:
        context = LowerContext(target=target, lowbit_kernel=lowbit_kernel)
        mod = to_relax(module, context)
    else:
        mod, context = lowered
    say(f"lowered {len(module.ops)} ops to Relax in {time.perf_counter() - t0:.1f}s; compiling with TVM for "
        f"{target.name}")
    t0 = time.perf_counter()
    try:
        built = build_relax(mod, target, schedules=schedules, tuning=tuning if schedules else None,
                            winograd=winograd)
    except Exception as e:
        raise SliverError(f"TVM failed to compile @{module.name} for {target.name}: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from e
    say(f"compiled for {target.name} in {time.perf_counter() - t0:.1f}s")
    library = _export(built.executable, target, context)
    return CompileResult(
        library=library, target=target, kernels=dict(context.kernels),
        primfuncs={f: [module.ops[i].results[0].name for i in idx] for f, idx in built.primfuncs.items()},
        schedules=dict(built.schedules), sources=tuple(sorted(context.sources)))


def _export(executable, target: Target, context) -> bytes:
    """The shared library of ``executable`` for ``target``, with the C kernels the
    lowering asked for (``context.sources``) compiled in."""
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


def build_relax(mod, target, *, schedules: bool = True, tuning=None, winograd: bool = True) -> BuildResult:
    """``tvm.compile`` a Relax module for ``target`` (a sliver target or a
    ``tvm.target.Target``), with sliver's default schedules unless
    ``schedules=False``, the records of ``tuning`` (a tuning database) applied
    before them; ``winograd``: see :func:`compile_module`."""
    import tvm

    from sliver.backends.tvm import provenance
    from sliver.backends.tvm.targets import of

    tgt = of(target)
    compile_for = target if isinstance(target, tvm.target.Target) else tvm_target(tgt)
    report: dict = {}
    capture = provenance.instrument()
    with tvm.transform.PassContext(opt_level=3, instruments=[capture]):
        if not schedules:
            executable = tvm.compile(mod, target=compile_for)
        else:
            from sliver.backends.tvm.schedules import default_pipeline

            before = [tuning.apply_pass(report)] if tuning is not None else []
            executable = tvm.compile(mod, target=compile_for, relax_pipeline=default_pipeline(
                tgt, report=report, before_schedule=before, winograd=winograd))
    return BuildResult(executable, report, capture.result())


def tvm_version() -> str:
    import tvm

    return tvm.__version__


__all__ = ["BuildResult", "CompileResult", "build_relax", "compile_module", "resolve", "Target", "tvm_version"]
