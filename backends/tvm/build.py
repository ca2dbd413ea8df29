"""Compile a sliver module with TVM and export a shared library for the target.

This package is the only place sliver talks to TVM's compiler; every TVM error is
re-raised as a :class:`SliverError` that says which step failed.
"""

from __future__ import annotations

import os
import tempfile
import time

from sliver.errors import SliverError
from sliver.backends.tvm.targets import Target, check_toolchain, resolve, tvm_target


def compile_module(module, target, *, progress=None, schedules: bool = True, kernels: dict | None = None) -> bytes:
    """Lower ``module`` through Relax, compile it for ``target`` and return the
    bytes of the shared library (``.so``) the runtime loads.

    ``schedules=True`` (the default) compiles with sliver's default CPU schedules
    (:mod:`sliver.backends.tvm.schedules`: channels-last convolutions, vectorized,
    register-tiled and parallel loops); ``False`` uses TVM's plain pipeline, whose
    naive loops are ~100x slower (kept for comparisons).  ``kernels`` (if given)
    receives ``{layer: kernel}`` for layers lowered with a choice of kernels (the
    low-bit ops, :mod:`sliver.backends.tvm.lowbit`)."""
    from sliver.backends.tvm.lower import LowerContext, to_relax

    target = resolve(target)
    check_toolchain(target)
    say = progress or (lambda msg: None)

    t0 = time.perf_counter()
    context = LowerContext(target=target)
    mod = to_relax(module, context)
    if kernels is not None:
        kernels.update(context.report)
    say(f"lowered {len(module.ops)} ops to Relax in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    try:
        executable = build_relax(mod, tvm_target(target), schedules=schedules)
    except Exception as e:
        raise SliverError(f"TVM failed to compile @{module.name} for {target.name}: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from e
    say(f"compiled for {target.name} in {time.perf_counter() - t0:.1f}s")

    with tempfile.TemporaryDirectory(prefix="sliver-build-") as tmp:
        path = os.path.join(tmp, "lib.so")
        extra = {}
        if context.sources:  # C kernels called as packed functions, linked into the same library
            from sliver.backends.tvm.lowbit import compile_flags

            extra = {"addons": sorted(context.sources), "options": compile_flags(target.arch, target.spec)}
        try:
            if target.cross_compiler:
                from tvm.support import cc

                executable.export_library(path, fcompile=cc.cross_compiler(target.cross_compiler), **extra)
            else:
                executable.export_library(path, **extra)
        except Exception as e:
            raise SliverError(f"linking the {target.name} library failed: {e}") from e
        with open(path, "rb") as f:
            return f.read()


def build_relax(mod, target, *, schedules: bool = True, report: dict | None = None):
    """``tvm.compile`` a Relax module for a ``tvm.target.Target``, with sliver's
    default schedules unless ``schedules=False``; ``report`` receives
    ``{PrimFunc name: schedule rule}``."""
    import tvm

    with tvm.transform.PassContext(opt_level=3):
        if not schedules:
            return tvm.compile(mod, target=target)
        from sliver.backends.tvm.schedules import default_pipeline

        return tvm.compile(mod, target=target, relax_pipeline=default_pipeline(target, report=report))


def tvm_version() -> str:
    import tvm

    return tvm.__version__


__all__ = ["build_relax", "compile_module", "resolve", "Target", "tvm_version"]
