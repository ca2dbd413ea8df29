"""Where an artifact spends its time: timing loops, latency statistics and per-layer profiles.

TVM 0.27's Relax VM has no profiler in its Python API (``VirtualMachine`` lost its
``profile=True``; ``vm_profiler_load_executable`` is not in the runtime), but it
calls an *instrument* before and after every ``Call`` instruction
(``VirtualMachine.set_instrument``).  :func:`layer_times` times each call of a
compiled function (a fused PrimFunc such as ``fused_conv2d1_add1_relu1``) with it:
runtime-only, so it works on a Pi as well.  The instrument costs a Python callback
per call (a few microseconds), which the per-layer times exclude but the run's
total includes.

Each function is mapped back to the sliver ops it computes (the manifest's
``primfuncs``, recorded while compiling) and to their layers (``ops``: a conv's
layer is its weight's name without ``.weight``).  Functions the compiler added
(layout transposes) have no sliver op.  This module imports neither torch nor TVM's
compiler.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class FunctionTime:
    """One compiled function's share of a run."""

    function: str
    calls: int  # per run
    median_ms: float  # of the per-run sum over its calls
    min_ms: float
    max_ms: float
    ops: list = field(default_factory=list)  # sliver op result names
    layers: list = field(default_factory=list)  # their layers (param-based), where they have one
    share: float = 0.0  # of the summed per-function medians


def stats(times_ms) -> dict:
    """median, min, p90, max and mean of times in milliseconds."""
    a = np.asarray(times_ms, dtype=np.float64)
    return {
        "median_ms": float(np.median(a)),
        "min_ms": float(a.min()),
        "p90_ms": float(np.percentile(a, 90)),
        "max_ms": float(a.max()),
        "mean_ms": float(a.mean()),
    }


def set_tvm_threads(n: int) -> None:
    """Set ``TVM_NUM_THREADS``: must happen before TVM's thread pool starts (its first
    parallel kernel); importing tvm alone does not start it."""
    os.environ["TVM_NUM_THREADS"] = str(n)


def tvm_threads() -> int | None:
    """The number of threads TVM's runtime pool uses (None if it can't be asked)."""
    try:
        import tvm

        f = tvm.get_global_func("runtime.NumThreads", allow_missing=True)
        return int(f()) if f is not None else None
    except Exception:
        return None


def warm_up(fn, warmup: int, budget_s: float) -> tuple[int, bool]:
    """Run ``fn`` up to ``warmup`` times within a quarter of ``budget_s``; returns
    (runs done, whether the budget cut the warm-up short)."""
    t_start = time.perf_counter()
    for done in range(warmup):
        if time.perf_counter() - t_start >= 0.25 * budget_s:
            return done, True
        fn()
    return warmup, False


def time_runs(fn: Callable[[], object], warmup: int, repeat: int, budget_s: float,
              clock: Callable[[], int] = time.perf_counter_ns) -> tuple[int, list[float], bool]:
    """Run ``fn`` ``warmup`` times, then time it ``repeat`` times with ``clock``
    (nanoseconds; ``time.process_time_ns`` gives CPU time).  Warm-up stops after a
    quarter of ``budget_s``; timing stops once ``budget_s`` of wall time in timed runs
    is spent (always at least one timed run).  Returns (warm-up runs done, times in ms,
    whether the budget cut anything short)."""
    done_warmup, cut = warm_up(fn, warmup, budget_s)
    times: list[float] = []
    t_start = time.perf_counter()
    for _ in range(max(repeat, 1)):
        if times and time.perf_counter() - t_start >= budget_s:
            cut = True
            break
        t0 = clock()
        fn()
        times.append((clock() - t0) / 1e6)
    return done_warmup, times, cut


def describe(manifest, function: str) -> tuple[list, list]:
    """(sliver ops, their distinct layers) that compiled ``function`` computes."""
    ops = list(manifest.primfuncs.get(function, []))
    layer_of = {o.name: o.layer for o in manifest.ops}
    layers = []
    for name in ops:
        layer = layer_of.get(name)
        if layer and layer not in layers:
            layers.append(layer)
    return ops, layers


def label(ops: list, layers: list) -> str:
    """How a report names a function's sliver side: its layers, else its ops."""
    if layers:
        return ", ".join(layers)
    if ops:
        return ", ".join(ops)
    return "(added by the compiler)"


def call_times(model, inputs=None, *, repeat: int = 10, warmup: int = 1,
               clock: Callable[[], int] = time.perf_counter_ns) -> list[dict[str, list[float]]]:
    """Per run of ``model``, ``{function: [seconds of each call]}`` measured with ``clock``
    (nanoseconds; ``time.thread_time_ns`` gives CPU time of the calling thread).  VM
    built-ins (allocation, shape checks) are left out."""
    inputs = model.golden_inputs() if inputs is None else inputs
    per_run: list[dict[str, list[float]]] = []
    current: dict[str, list[float]] = {}
    started: dict[str, int] = {}

    def instrument(func, name, before, ret, *args):
        now = clock()
        name = str(name)
        if name.startswith("vm.builtin."):
            return 0
        if before:
            started[name] = now
        else:
            current.setdefault(name, []).append((now - started.pop(name, now)) / 1e9)
        return 0  # VMInstrumentReturnKind.kNoOp: run the call as usual

    vm = model._vm
    for _ in range(warmup):
        model.run(*inputs)
    vm.set_instrument(instrument)
    try:
        for _ in range(repeat):
            current = {}
            model.run(*inputs)
            per_run.append(current)
    finally:
        vm.set_instrument(None)
    return per_run


def layer_times(model, inputs=None, *, repeat: int = 10, warmup: int = 1) -> list[FunctionTime]:
    """Per-function times of ``model`` (a loaded :class:`~sliver.runtime.artifact.CompiledModel`)
    over ``repeat`` runs, most expensive first.  VM built-ins (allocation, shape
    checks) are left out."""
    per_run = call_times(model, inputs, repeat=repeat, warmup=warmup)
    names = list(per_run[-1]) if per_run else []
    rows = []
    for name in names:
        sums = [sum(run.get(name, [0.0])) for run in per_run]
        s = stats([x * 1e3 for x in sums])
        ops, layers = describe(model.manifest, name)
        rows.append(FunctionTime(name, len(per_run[-1][name]), s["median_ms"], s["min_ms"], s["max_ms"],
                                 ops, layers))
    total = sum(r.median_ms for r in rows) or 1.0
    for r in rows:
        r.share = r.median_ms / total
    return sorted(rows, key=lambda r: -r.median_ms)
