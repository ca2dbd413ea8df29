"""sliver's default CPU schedules: fast artifacts without tuning.

TVM 0.27 schedules nothing by default (every op compiles to naive scalar loops,
~100x slower than torch).  This package supplies a Relax pipeline that

1. rewrites ``clip`` as ``minimum(maximum(…))`` so layout conversion sees through it,
2. converts every ``conv2d`` to NHWC activations / HWIO weights (channels last:
   the axis we vectorize is contiguous in activations, weights and outputs),
3. turns attention over long sequences into one kernel per block of query rows
   (:mod:`.attention`),
4. legalizes and fuses like TVM's own pipeline (LegalizeOps → AnnotateTIROpPattern
   → FoldConstant → FuseOps → FuseTIR), and
5. schedules each fused PrimFunc with the first rule that fits (conv2d, dense,
   pool, then generic reduction / injective rules), parameterized by the target's
   vector width (16 f32 lanes on AVX-512, 8 on AVX2, 4 on NEON) and core count.

A rule that raises falls back to the generic rule, and that to the unscheduled
function (logged at debug level): scheduling never fails a compile, and never
changes results — schedules only reorder, tile, inline and annotate loops.

Entry points: :func:`default_pipeline` (a Relax pass for ``tvm.compile``'s
``relax_pipeline``), :func:`schedule_module`, :func:`schedule_primfunc`.
"""

from __future__ import annotations

import logging

from sliver.backends.tvm.schedules import attention, conv2d, dense, elementwise, pool, winograd
from sliver.backends.tvm.schedules.common import CPU, NotApplicable, cpu_of, iter_kinds, root_blocks

log = logging.getLogger("sliver.backends.tvm.schedules")

#: (name, module) in priority order; each module has ``match(sch, block)`` and
#: ``schedule(sch, block, cpu)``.
RULES = [("conv2d", conv2d), ("dense", dense), ("pool", pool)]

#: Marks a PrimFunc this package (or anyone) already scheduled.
SCHEDULED_ATTR = "tirx.is_scheduled"


def _has_if_then_else(sch, block) -> bool:
    import tvm

    return bool(tvm.get_global_func("s_tir.schedule.HasIfThenElse")(sch.get(block)))


def _inline_prologue(sch, blocks):
    """Inline injective producers (not paddings: those would put a bounds check in
    the innermost loop; not a NEON matmul's padded rows of A) into their consumers."""
    for b in blocks:
        if "R" in iter_kinds(sch, b) or not sch.get_consumers(b) or _has_if_then_else(sch, b):
            continue
        if sch.get(b).name_hint.startswith(dense.PAD_ROWS):  # the NEON kernel's buffer of A (dense.py)
            continue
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - TVM refuses unsafe inlines; keep the block
            pass


def _plan_rules(func, cpu: CPU):
    """The full schedule: the op-class rule on the function's reduction, the
    generic rules on everything else."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    if winograd.match_func(sch):  # three stages; its input transform must not be inlined
        _schedule_rest(sch, set(winograd.schedule(sch, cpu)), cpu)
        return sch, "winograd"
    if attention.match_func(sch):  # scores, softmax and product per block of query rows
        _schedule_rest(sch, attention.schedule(sch, cpu), cpu)
        return sch, "attention"
    if elementwise.match_softmax(sch):  # its exponentials are read twice: computed once per row
        elementwise.schedule_softmax(sch, cpu)
        return sch, "softmax"
    if elementwise.match_layer_norm(sch):
        elementwise.schedule_layer_norm(sch, cpu)
        return sch, "layer_norm"
    if elementwise.match_blocks(sch, pool.ROW_BLOCKS):  # a max/min over the last axis, over lanes first
        elementwise.schedule_rows(sch, cpu, set(), ("row_red_part",), reduced=True)
        return sch, "reduction"
    _inline_prologue(sch, root_blocks(sch))
    reductions = [b for b in root_blocks(sch) if "R" in iter_kinds(sch, b)]
    done = set()
    used = "injective"
    if len(reductions) == 1:
        (red,) = reductions
        for name, rule in RULES:
            if rule.match(sch, red):
                for b in rule.schedule(sch, red, cpu):
                    done.add(sch.get(b).name_hint)
                used = name
                break
        else:
            elementwise.schedule_reduction_outer(sch, red, cpu)
            done.add(sch.get(red).name_hint)
            used = "reduction"
    else:
        for red in reductions:
            elementwise.schedule_reduction_outer(sch, red, cpu)
            done.add(sch.get(red).name_hint)
        used = "reduction" if reductions else "injective"
    _schedule_rest(sch, done, cpu)
    return sch, used


def _plan_generic(func, cpu: CPU):
    """The fallback: parallel outer loops of reductions, parallel + vectorized
    injective blocks; no tiling."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    done = set()
    for b in root_blocks(sch):
        if "R" in iter_kinds(sch, b):
            try:
                elementwise.schedule_reduction_outer(sch, b, cpu)
            except NotApplicable:
                pass
            done.add(sch.get(b).name_hint)
    _schedule_rest(sch, done, cpu)
    return sch, "generic"


def _schedule_rest(sch, done, cpu):
    for b in root_blocks(sch):
        if sch.get(b).name_hint in done or "R" in iter_kinds(sch, b):
            continue
        try:
            elementwise.schedule_injective(sch, b, cpu)
        except NotApplicable as e:
            log.debug("block %s left unscheduled: %s", sch.get(b).name_hint, e)


def default_schedule(func, target, *, name: str = "?", rules: bool = True):
    """Return ``(s_tir.Schedule or None, rule name)``: the default schedule of
    ``func`` (its ``trace`` replays it; the tuner measures it as the baseline every
    tuned record must beat).  The rule is ``"conv2d"``, ``"winograd"``, ``"dense"``, ``"pool"``,
    ``"attention"``, ``"softmax"``, ``"layer_norm"``, ``"reduction"``, ``"injective"``, ``"generic"`` (the fallback) or ``"none"``
    (even the fallback failed: no schedule)."""
    cpu = target if isinstance(target, CPU) else cpu_of(target)
    plans = ([_plan_rules] if rules else []) + [_plan_generic]
    for plan in plans:
        try:
            return plan(func, cpu)
        except Exception as e:  # noqa: BLE001 - a schedule must never break a compile
            log.debug("schedule %s for %s failed: %s: %s", plan.__name__, name, type(e).__name__,
                      str(e).strip().splitlines()[-1] if str(e).strip() else "")
    return None, "none"


def schedule_primfunc(func, target, *, name: str = "?", rules: bool = True):
    """Return ``(scheduled PrimFunc, rule name)`` (see :func:`default_schedule`);
    with rule ``"none"`` the function is returned unchanged."""
    sch, used = default_schedule(func, target, name=name, rules=rules)
    if sch is None:
        return func, used
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True), used


def unscheduled_primfuncs(mod):
    """``[(GlobalVar, PrimFunc)]`` of ``mod``'s PrimFuncs nobody scheduled yet."""
    from tvm import tirx

    return [(gv, func) for gv, func in mod.functions_items() if isinstance(func, tirx.PrimFunc)
            and not (func.attrs is not None and SCHEDULED_ATTR in func.attrs and int(func.attrs[SCHEDULED_ATTR]) == 1)]


def schedule_module(mod, target, *, report: dict | None = None):
    """Schedule every not-yet-scheduled PrimFunc of ``mod`` for ``target``;
    ``report`` (if given) receives ``{function name: rule name}``."""
    cpu = cpu_of(target)
    updates = {}
    for gv, func in unscheduled_primfuncs(mod):
        new, used = schedule_primfunc(func, cpu, name=gv.name_hint)
        if report is not None:
            report[gv.name_hint] = used
        updates[gv] = new
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def SchedulePass(target, report: dict | None = None):  # noqa: N802 - TVM pass naming
    """:func:`schedule_module` as a TVM module pass."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="SliverDefaultSchedule")
    def _pass(mod, _ctx):
        return schedule_module(mod, target, report=report)

    return _pass


def front_passes(*, layout: bool = True, target=None, winograd: bool = True) -> list:
    """The Relax passes before scheduling: sliver's layout rewrites, then TVM's
    legalize-and-fuse sequence (dense NHWC convolutions legalized with packed
    weights for ``target``, else the current target, and 3x3 stride-1 ones as
    Winograd convolutions unless ``winograd=False``: :func:`.conv2d.legalize`).
    Their output holds one PrimFunc per fused group, which is what the rules see
    (tests and profiling use this too)."""
    from tvm import relax

    from sliver.backends.tvm.schedules import layout as layout_passes
    from sliver.backends.tvm.schedules.channel_select import FuseChannelSelect

    front = ([layout_passes.ClipToMinMax(), layout_passes.ZeroPadIntoConv(), relax.transform.DeadCodeElimination(),
              layout_passes.channels_last(), layout_passes.CancelTransposes(),
              relax.transform.DeadCodeElimination()] if layout else [])
    front.append(FuseChannelSelect(target, winograd=winograd))
    if layout:
        front.append(attention.FuseAttention(target))
    custom = {**elementwise.LEGALIZE, **pool.LEGALIZE}  # IEEE NaN semantics for max/min
    if layout:
        custom["relax.nn.conv2d"] = conv2d.legalize(target, winograd=winograd)
        custom["relax.matmul"] = dense.legalize(target)
    return front + [
        relax.transform.LegalizeOps(customize_legalize_map=custom),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def default_pipeline(target, *, layout: bool = True, report: dict | None = None, before_schedule=(),
                     winograd: bool = True):
    """The Relax pipeline for ``tvm.compile(mod, target, relax_pipeline=…)``:
    :func:`front_passes` (``winograd``: see there), ``before_schedule`` (the tuner's pass that applies tuning
    records), :class:`SchedulePass` (skips what is already scheduled), then TVM's
    default build passes (which legalize nothing more and lower the VM calls)."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential(
        front_passes(layout=layout, target=target, winograd=winograd) + list(before_schedule)
        + [SchedulePass(target, report), relax.get_pipeline("default")],
        name="SliverDefaultPipeline",
    )


__all__ = ["CPU", "RULES", "cpu_of", "default_pipeline", "default_schedule", "front_passes", "schedule_module", "schedule_primfunc", "SchedulePass",
           "unscheduled_primfuncs"]
