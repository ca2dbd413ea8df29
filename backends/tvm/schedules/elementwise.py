"""Injective blocks (elementwise, broadcast, padding, transposes, layout changes):
parallel over the outer loops, vectorized over the innermost axis."""

from __future__ import annotations

from sliver.backends.tvm.schedules.common import CPU, NotApplicable, extent, iter_kinds, pick_lanes, trivial_loops

#: Below this many elements a parallel loop costs more (thread wake-up) than it saves.
MIN_PARALLEL = 4096


def schedule_injective(sch, block, cpu: CPU) -> None:
    """``for …, c: out[…, c] = f(…)`` → ``parallel for fused(…): vectorized for c``.

    The innermost axis is vectorized by ``cpu.lanes`` (or the widest smaller vector
    dividing it); when it does not divide, the fused loop nest is split instead, and
    when nothing divides only the outer loops are parallelized.
    """
    kinds = iter_kinds(sch, block)
    if "R" in kinds or "O" in kinds:
        raise NotApplicable("not an injective block")
    loops = trivial_loops(sch, block)
    if not loops:
        return
    sizes = [extent(sch, l) for l in loops]
    total = 1
    for s in sizes:
        total *= s
    lanes = pick_lanes(sizes[-1], cpu)
    if lanes > 1:
        outer, vec = sch.split(loops[-1], [None, lanes])
        body = loops[:-1] + [outer]
    else:
        lanes = pick_lanes(total, cpu)
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if lanes > 1:
            body_loop, vec = sch.split(fused, [None, lanes])
            body = [body_loop]
        else:
            vec, body = None, [fused]
    par = sch.fuse(*body) if len(body) > 1 else body[0]
    if total >= MIN_PARALLEL and cpu.cores > 1:
        sch.parallel(par)  # TVM hands each thread one contiguous chunk
    if vec is not None:
        sch.vectorize(vec)


def schedule_reduction_outer(sch, block, cpu: CPU) -> None:
    """Any other reduction (softmax, norms, reductions over the contiguous axis):
    parallelize the spatial loops that come before the first reduction loop."""
    kinds = iter_kinds(sch, block)
    loops = trivial_loops(sch, block)
    lead = []
    for loop, k in zip(loops, kinds):
        if k != "S":
            break
        lead.append(loop)
    if not lead or cpu.cores <= 1:
        return
    par = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    if extent(sch, par) > 1:
        sch.parallel(par)
