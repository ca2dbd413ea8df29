"""2-D convolutions in NHWC layout with HWIO weights (the layout sliver's pipeline
converts every ``relax.nn.conv2d`` to), including depthwise and grouped ones.

The output channel axis is contiguous in both the output and the weights, so the
micro-kernel broadcasts one input value and multiplies it with a vector of
weights: ``acc[w, o:o+lanes] += x[h+kh, w+kw, i] * W[kh, kw, i, o:o+lanes]``,
with ``rt`` output columns x ``nv`` vectors of output channels held in registers.
"""

from __future__ import annotations

from sliver.backends.tvm.schedules.common import CPU, NotApplicable, block_name, iter_kinds, tile_reduction

#: Block names TOPI gives convolutions in NHWC (``conv2d_nhwc``, ``group_conv2d_nhwc``,
#: ``depthwise_conv2d_nhwc``); the schedule itself only relies on the loop structure.
NAMES = ("conv2d_nhwc", "group_conv2d_nhwc", "depthwise_conv2d_nhwc")


def match(sch, block) -> bool:
    name = block_name(sch, block)
    return any(name.startswith(n) for n in NAMES) and iter_kinds(sch, block) in ("SSSSRRR", "SSSSRR")


def is_depthwise(sch, block) -> bool:
    """A grouped conv with one input channel per group (its ``rc`` loop has extent 1)."""
    b = sch.get(block)
    return block_name(sch, block).startswith(("group_", "depthwise_")) and int(b.iter_vars[-1].dom.extent) == 1


def schedule(sch, block, cpu: CPU) -> list:
    """Register-tiled, vectorized, parallel NHWC convolution (see :mod:`.common`).

    Tiles ``rt`` output columns x 2 vectors of output channels (e.g. 8 x 32 floats =
    16 zmm accumulators on AVX-512; 7 x 32 on 7- and 14-wide maps).  Depthwise convs
    (:func:`is_depthwise`), whose inner loop is only kh x kw, use the same tile.
    """
    if not match(sch, block):
        raise NotApplicable("not an NHWC convolution")
    return tile_reduction(sch, block, cpu, max_vectors=2)
