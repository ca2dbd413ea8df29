"""Pooling and spatial means in NHWC: ``pool_max`` / ``pool_sum`` blocks and the
``*_red`` sum of ``relax.mean`` over H, W.  Channels are contiguous, so the
window (or H x W) reduction runs outside a vector of channels, ``rt`` output
columns at a time."""

from __future__ import annotations

from sliver.backends.tvm.schedules.common import CPU, NotApplicable, block_name, inline_padding, iter_kinds, tile_reduction

NAMES = ("pool_max", "pool_sum", "pool_avg", "adaptive_pool_sum", "adaptive_pool_max")


def match(sch, block) -> bool:
    name = block_name(sch, block)
    kinds = iter_kinds(sch, block)
    if "O" in kinds or "R" not in kinds:
        return False
    if any(name.startswith(n) for n in NAMES):
        return True
    # a sum/mean over leading axes (relax.mean's reduction block is "<input>_red"),
    # never over the contiguous axis: every read must index it with the last spatial iterator
    if not (name.endswith("_red") and kinds.rstrip("R").endswith("S")):
        return False
    b = sch.get(block)
    last = b.iter_vars[len(kinds.rstrip("R")) - 1].var
    return all(len(r.region) and r.region[-1].min.same_as(last) for r in b.reads)


def schedule(sch, block, cpu: CPU) -> list:
    if not match(sch, block):
        raise NotApplicable("not a pooling reduction")
    inline_padding(sch, block)  # a 3x3 max pool reads each input ~2 times: no padded copy
    return tile_reduction(sch, block, cpu, max_vectors=2, channels_inner=True)
