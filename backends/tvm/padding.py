"""Channel padding: the lowering's pass that gives conv outputs whole vectors of channels.

The schedules vectorize over output channels; a conv whose output channel count has no
factor of 4 (a pruned layer with 45, 47 or 89 channels) runs with scalar loops (a
47-channel 3x3 conv ran ~20x slower than a 48-channel one).  So the conv rule
(:func:`~sliver.backends.tvm.lower._conv2d`) appends :func:`channel_padding` zero
filters, and this pass decides, op by op, how far those extra channels travel:

**In**: the sliver module, and per op the lowered values of its operands (``env``:
``id(value) -> relax.Expr``), some of which carry padding channels.

**Out** (:meth:`ChannelPadding.lower_op`): the op's lowered value, made by its lowering
rule from arguments fit for it: a channel-wise op (elementwise maps the op
declarations mark channel-wise, ``add``/``sub``/``mul``/``maximum``/``minimum`` with
per-channel params zero-extended, spatial pooling, channel slices and gathers, dense or
depthwise convs and linear layers, which read the extra channels through zero weights)
receives the padded values as they are; any other op receives them sliced back to their
real channels.  A channel ``slice``/``take`` read only by dense convs is widened to a
whole number of vectors with more real channels (:func:`_widened_selection`).
:meth:`ChannelPadding.output` gives each module output with exactly its IR shape.

**Invariant**: a value in ``pads`` is lowered with more channels (axis 1) than its IR
type says; its extra channels hold ``pads[id(value)]`` (finite, so zero weights keep it
out of the real channels; NaN for a widened selection, whose extra channels are real
ones of its input, read only through zero weights).  Every other lowered value has its
IR shape.  Results never change.

**Symbolic dimensions**: channels are static wherever a conv makes them (its weight fixes
them), so a dynamic batch (or any other symbolic axis) leaves padding as it is; a value
whose axis 1 is symbolic (``[batch, seq]``) is never taken for padded.
"""

from __future__ import annotations

import math

import numpy as np

from sliver.backends.tvm.registry import _channels, _dtype, _R
from sliver.ir.ops import all_ops

#: Output channels of a conv2d are padded up to a multiple of this (see :func:`~sliver.backends.tvm.lower._conv2d`)…
CHANNEL_MULTIPLE = 8
#: … and from this many on, to a multiple of twice that: a count of an odd number of
#: 8-wide vectors (247 -> 248, 471 -> 472) leaves the micro-kernel one vector of output
#: channels, and on small maps (a Winograd conv on 7x7 has 4 tiles) too few
#: accumulators.  One thread, AVX2: Winograd 3x3 on 7x7, 180 -> 248 channels 0.49 ms vs
#: 180 -> 256 0.33 ms; 184 -> 184 0.34 ms vs 184 -> 192 0.18 ms; on 4x4, 360 -> 472
#: 0.63 ms vs 360 -> 480 0.46 ms.
WIDE_CHANNELS = 128


def channel_padding(n: int) -> int:
    """How many zero channels the lowering appends to a conv output of ``n`` channels."""
    if n <= CHANNEL_MULTIPLE:
        return 0
    return -n % (2 * CHANNEL_MULTIPLE if n >= WIDE_CHANNELS else CHANNEL_MULTIPLE)


#: Channel-wise ops that may run on a value with padding channels: the padding
#: channels stay apart from the real ones (they are sliced off before anything that
#: mixes channels, except convs, which read them through zero weights).  The unary
#: ones are the elementwise maps the op declarations mark channel-wise.
_PAD_UNARY = {name for name, decl in all_ops().items() if decl.unary and decl.has("elementwise", "channelwise")}
_PAD_BINARY = {"add", "sub", "mul", "maximum", "minimum"}
_PAD_POOLS = {"max_pool2d", "adaptive_avg_pool2d", "mean"}


def _channel_extent(op, v) -> int | None:
    """``v``'s extent along ``op``'s result channel axis (1) under broadcasting, None
    when ``v`` has no such axis."""
    axis = 1 - (op.results[0].type.rank - v.type.rank)
    return v.type.shape[axis] if 0 <= axis < v.type.rank else None


def _unpad(bb, expr, v):
    """The real channels of a padded value (a view: consumer convs read it in place)."""
    return bb.emit(_R().strided_slice(expr, [1], [0], [v.type.shape[1]], assume_inbound=True))


def _pad_param(bb, op, v, expr, env, pads):
    """A per-channel param of a channel-wise op on padded values, zero-extended to
    their channel count."""
    from tvm import relax

    have = next(_channels(env[id(u)]) for u in op.operands if id(u) in pads)
    axis = 1 - (op.results[0].type.rank - v.type.rank)
    shape = list(v.type.shape)
    shape[axis] = have - shape[axis]
    zeros = relax.const(np.zeros(shape, np.dtype(_dtype(v.type.dtype))))
    return bb.emit(_R().concat(relax.Tuple([expr, zeros]), axis=axis))


def _widened_selection(bb, module, op, args):
    """A channel ``slice`` or ``take`` whose users are all dense convs, widened as a
    conv output would be padded (:func:`channel_padding`) with more real channels of its
    input (the slice's run extended within the input's channels, else a gather
    with the last index repeated; a take with its last index repeated); None for
    any other op.  The convs read the extra channels through zero weight columns
    (:func:`_conv2d`), as they read a producer's padding channels, so results do
    not change; but a conv reading 45 of 64 channels copies and transforms its
    input with scalar loops, and a Winograd conv then took minutes to compile.  The
    selection stays part of the conv's function
    (:mod:`~sliver.backends.tvm.schedules.channel_select`)."""
    from tvm import relax

    t = op.results[0].type
    if op.kind not in ("slice", "take") or t.rank != 4 or op.attrs["axis"] % 4 != 1 \
            or any(o is op.result for o in module.outputs) \
            or not op.result.uses or any(u.kind != "conv2d" or u.attrs["groups"] != 1 or u.operands[0] is not op.result
                                         for u, _ in op.result.uses):
        return None
    n = t.shape[1]
    extra = channel_padding(n)
    if not extra:
        return None
    x = args[0]
    have = _channels(x)
    if op.kind == "slice":
        a = op.attrs
        if a["step"] != 1:
            return None
        if a["end"] + extra <= have:
            return bb.emit(_R().strided_slice(x, [1], [a["start"]], [a["end"] + extra], assume_inbound=True))
        idx = np.arange(a["start"], a["end"])
    else:
        idx = module.param_data(op.operands[1])
        if idx is None or idx.ndim != 1:
            return None
    idx = np.concatenate([idx, np.full(extra, idx[-1])]).astype(np.int64)
    return bb.emit(_R().take(x, relax.const(idx), axis=1, mode="clip"))


def _padding_kept(module, op, env, pads) -> float | None:
    """When ``op`` can run on its operands' padding channels, the value its own padding
    channels will hold (finite); None when the padding must be sliced off first.

    Allowed: convs with one group or depthwise (the rule gives the padding channels zero
    weights), linear layers likewise; slices and gathers (along channels they read
    only real ones); elementwise ops of :data:`_PAD_UNARY` / :data:`_PAD_BINARY` whose
    activation operands are all padded alike and whose params have one value per real
    channel (zero-extended) or broadcast along channels; spatial pooling and means.
    The value matters only to stay finite, so that zero weights keep it out of the
    real channels."""
    import torch

    padded = [v for v in op.operands if id(v) in pads]
    if not padded or op.results[0].type.rank not in (2, 4):
        return None
    if op.kind in ("slice", "take") and padded == [op.operands[0]]:
        # a channel view or gather reads real channels only (its range and indices are checked
        # against them): reading the padded value directly saves a copy; along another axis the
        # padding channels stay
        return pads[id(op.operands[0])]
    if op.kind == "linear":  # the rule gives the padding channels zero weights; its output has none
        return 0.0 if padded == [op.operands[0]] and op.operands[0].type.rank == 2 else None
    if op.kind == "conv2d":
        n_out, per_group = op.operands[1].type.shape[:2]
        dense = op.attrs["groups"] == 1
        depthwise = op.attrs["groups"] == n_out == op.operands[0].type.shape[1] and per_group == 1
        return 0.0 if padded == [op.operands[0]] and (dense or depthwise) else None
    if op.kind in _PAD_POOLS:
        if op.kind == "mean" and 1 in [a % op.operands[0].type.rank for a in op.attrs["axes"]]:
            return None
        return pads[id(op.operands[0])]
    if op.kind not in _PAD_UNARY | _PAD_BINARY or op.results[0].type.rank != 4:
        return None
    have = {_channels(env[id(v)]) for v in padded}
    values = []
    for v in op.operands:
        if id(v) in pads:
            values.append(pads[id(v)])
            continue
        extent = _channel_extent(op, v)
        if v.producer is None or v.producer.kind != "param" or extent not in (1, op.results[0].type.shape[1]):
            return None  # an activation with the real channel count, or an odd-shaped param
        if extent == 1:
            data = module.params[v.name]
            if data.size != 1:
                return None
            values.append(float(data.reshape(())))
        else:
            values.append(0.0)  # zero-extended
    if len(have) != 1:
        return None
    with torch.no_grad():
        out = float(op.decl.ref(*[torch.tensor([x], dtype=torch.float32) for x in values], **op.attrs)[0])
    return out if math.isfinite(out) else None


class ChannelPadding:
    """The channel-padding pass over the lowering of one module (see the module's
    docstring for its contract)."""

    def __init__(self, module, env: dict):
        self.module = module
        self.env = env
        self.pads: dict = {}  # id(value) -> the value of its padding channels (its lowered form has extra ones)

    def lower_op(self, bb, op, rule):
        """``op``'s lowered value: ``rule(bb, op, *arguments)`` on its operands' values with
        their padding kept or sliced off as ``op`` allows, or a widened selection."""
        from tvm import relax

        pads, env = self.pads, self.env
        kept = _padding_kept(self.module, op, env, pads)
        args = []
        for v in op.operands:
            arg = env[id(v)]
            if id(v) in pads and kept is None:
                arg = _unpad(bb, arg, v)
            elif kept is not None and op.kind in _PAD_BINARY and v.producer is not None \
                    and v.producer.kind == "param" and _channel_extent(op, v) not in (None, 1):
                arg = _pad_param(bb, op, v, arg, env, pads)
            args.append(arg)
        out = _widened_selection(bb, self.module, op, args)
        if out is not None:  # extra real channels, read through zero weights: their value is unknown
            pads[id(op.result)] = math.nan
            return out
        out = rule(bb, op, *args)
        if isinstance(out, relax.Expr) and op.results[0].type.rank in (2, 4) \
                and isinstance(op.results[0].type.shape[1], int) \
                and _channels(out) > op.results[0].type.shape[1] and id(op.result) not in pads:
            pads[id(op.result)] = kept if kept is not None else 0.0  # a conv's own zero filters
        return out

    def output(self, bb, v):
        """The lowered value of the module output ``v`` with exactly its IR shape."""
        expr = self.env[id(v)]
        return _unpad(bb, expr, v) if id(v) in self.pads else expr
