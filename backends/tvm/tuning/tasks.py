"""Tasks: the distinct fused PrimFuncs of a model that MetaSchedule tunes, and how
a trial budget is split over them."""

from __future__ import annotations

import dataclasses

from sliver.backends.tvm.targets import resolve, tvm_target
from sliver.backends.tvm.tuning.database import _normalize, workload_hash


@dataclasses.dataclass
class Task:
    """One distinct fused PrimFunc of the model: what MetaSchedule tunes."""

    name: str
    mod: object  # normalized IRModule {"main": PrimFunc}
    weight: int  # calls in the model
    flops: float
    hash: str

    @property
    def cost(self) -> float:
        return self.weight * max(self.flops, 1.0)


def fused_module(module, target, *, winograd: bool = True):
    """sliver's IR → Relax → the front passes of the default pipeline: the module
    whose PrimFuncs the default schedules (and the tuner) see (``winograd``: as
    :func:`~sliver.backends.tvm.build.compile_module`'s).  ``module`` is a sliver
    Module, or the Relax module :func:`~sliver.backends.tvm.lower.to_relax` already
    made of it (then it is not lowered again)."""
    import tvm

    from sliver.backends.tvm.schedules import front_passes

    if isinstance(module, tvm.IRModule):
        mod = module
    else:
        from sliver.backends.tvm.lower import LowerContext, to_relax

        mod = to_relax(module, LowerContext(target=resolve(target)))  # as compile_module lowers it
    with tvm_target(resolve(target)), tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(front_passes(winograd=winograd))(mod)


def _call_counts(mod) -> dict[str, int]:
    from tvm import relax

    counts: dict[str, int] = {}

    def visit(expr):
        if isinstance(expr, relax.Call):
            for arg in expr.args:
                if isinstance(arg, relax.GlobalVar):
                    counts[arg.name_hint] = counts.get(arg.name_hint, 0) + 1

    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def extract_tasks(module, target, *, winograd: bool = True) -> list[Task]:
    """The distinct unscheduled PrimFuncs of ``module`` (a sliver IR Module, or its
    Relax module from ``to_relax``) after the default pipeline's front passes,
    heaviest first."""
    import tvm_ffi
    from tvm.s_tir.analysis import estimate_tir_flops

    from sliver.backends.tvm.schedules import unscheduled_primfuncs

    mod = fused_module(module, target, winograd=winograd)
    calls = _call_counts(mod)
    tasks: list[Task] = []
    for gv, func in unscheduled_primfuncs(mod):
        wl = _normalize(func)
        h = workload_hash(wl)
        same = next((t for t in tasks if t.hash == h and tvm_ffi.structural_equal(t.mod, wl)), None)
        n = max(calls.get(gv.name_hint, 1), 1)
        if same is not None:
            same.weight += n
            continue
        try:
            flops = float(estimate_tir_flops(wl))
        except Exception:  # noqa: BLE001 - only a weight for the budget split
            flops = 1.0
        tasks.append(Task(gv.name_hint, wl, n, flops, h))
    tasks.sort(key=lambda t: -t.cost)
    return tasks


def allocate(tasks: list[Task], total: int) -> list[int]:
    """Split ``total`` trials over tasks in proportion to FLOPs x calls (largest
    remainder), so the time goes where the model spends it."""
    if not tasks or total <= 0:
        return [0] * len(tasks)
    weights = [t.cost for t in tasks]
    s = sum(weights)
    raw = [total * w / s for w in weights]
    out = [int(r) for r in raw]
    for i in sorted(range(len(tasks)), key=lambda i: -(raw[i] - out[i]))[: total - sum(out)]:
        out[i] += 1
    return out
