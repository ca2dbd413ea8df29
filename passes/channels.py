"""Channel analysis: where every channel of every value comes from.

Each output channel of a conv2d/linear (a *producer*) is a fresh channel node.
Channel-wise ops (ops declared ``channelwise``: activations, batch norm, pooling; and
depthwise convs, global means) pass nodes through; concatenation along channels
concatenates the node lists; a channel slice takes a sub-list; flattening
``[N, C, H, W]`` into ``[N, C*H*W]`` repeats each channel's node H*W times.
Elementwise ops (declared ``elementwise``) on two channel tensors (residual adds, SE
gating) *couple* the nodes at each position: they are merged with a union-find, and a
merged set is a *channel class* — the unit pruning keeps or drops.

Any other use of a channel tensor is a *barrier*: the analysis does not guess
how the op mixes channels, so every class the barrier reads is pinned (kept),
as are the module's outputs.  Barrier outputs get fresh, pinned nodes.

Consumers are the conv2d (groups=1) and linear ops: each reads a subset of its
input's channels, the one pruning chooses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from networkx.utils import UnionFind


def _couples(op) -> bool:
    """An elementwise op of two tensors: it couples their channels position by position."""
    return op.decl.has("elementwise") and len(op.decl.operands) == 2


def _maps_values(op) -> bool:
    """A channel-wise op whose constant channels map through its reference semantics
    (elementwise maps of one tensor, batch norm); pooling keeps or loses them itself."""
    return op.decl.has("channelwise") and (op.decl.has("elementwise") or op.kind == "batch_norm")


def channel_axis(rank: int) -> int | None:
    """NCHW tensors carry channels on axis 1; [N, C] and [B, T, C] on the last axis."""
    if rank == 4:
        return 1
    if rank >= 2:
        return rank - 1
    return None


def is_depthwise(op) -> bool:
    w = op.operands[1].type.shape
    return op.attrs["groups"] > 1 and op.attrs["groups"] == op.operands[0].type.shape[1] == w[0]


def is_consumer(op) -> bool:
    """conv2d with groups=1 or linear: ops whose input channels can be pruned freely."""
    return (op.kind == "conv2d" and op.attrs["groups"] == 1) or (op.kind == "linear" and op.operands[0].type.rank >= 2)


@dataclass
class ChannelAnalysis:
    module: object
    origin: dict = field(default_factory=dict)  # id(value) -> list of node ids (None: no channel axis)
    uf: UnionFind = field(default_factory=UnionFind)
    pinned_nodes: set = field(default_factory=set)
    producer_nodes: dict = field(default_factory=dict)  # id(op) -> its output nodes
    barriers: list = field(default_factory=list)  # (op, reason)
    _next: int = 0

    # -- construction ------------------------------------------------------------
    def _fresh(self, n: int) -> list[int]:
        nodes = list(range(self._next, self._next + n))
        self._next += n
        for x in nodes:
            self.uf[x]  # register
        return nodes

    def nodes(self, value):
        return self.origin.get(id(value))

    def classes(self, value) -> list | None:
        nodes = self.nodes(value)
        return None if nodes is None else [self.uf[n] for n in nodes]

    def _pin(self, value) -> None:
        nodes = self.nodes(value)
        if nodes:
            self.pinned_nodes.update(nodes)

    def _barrier(self, op, reason: str) -> None:
        for v in op.operands:
            self._pin(v)
        self.barriers.append((op, reason))
        for r in op.results:
            ax = channel_axis(r.type.rank)
            if ax is not None:
                self.origin[id(r)] = self._fresh(r.type.shape[ax])
                self._pin(r)

    @classmethod
    def run(cls, module) -> "ChannelAnalysis":
        a = cls(module)
        for v in module.inputs:
            ax = channel_axis(v.type.rank)
            if ax is not None:
                a.origin[id(v)] = a._fresh(v.type.shape[ax])
                a._pin(v)
        for op in module.ops:
            a._visit(op)
        for v in module.outputs:
            a._pin(v)
        return a

    def _is_const(self, v) -> bool:
        return v.producer is not None and v.producer.kind in ("param", "constant")

    def _visit(self, op) -> None:
        kind = op.kind
        if kind in ("param", "constant"):
            return
        out = op.results[0]
        ins = op.operands
        if kind == "conv2d" and op.attrs["groups"] == 1 or kind == "linear":
            ax = channel_axis(out.type.rank)
            if kind == "linear" and ax != out.type.rank - 1:
                return self._barrier(op, "linear output without a channel axis")
            self.producer_nodes[id(op)] = self.origin[id(out)] = self._fresh(out.type.shape[ax])
            if self.nodes(ins[0]) is None:
                self._barrier(op, "input has no channel axis")
            return
        if kind == "conv2d" and is_depthwise(op):
            self.origin[id(out)] = list(self.nodes(ins[0]))
            return
        if op.decl.has("channelwise"):
            if self.nodes(ins[0]) is None or out.type.rank != ins[0].type.rank:
                return self._barrier(op, "channel axis changes")
            self.origin[id(out)] = list(self.nodes(ins[0]))
            return
        if _couples(op):
            return self._binary(op)
        if kind in ("mean", "sum"):
            x = ins[0]
            ax_in = channel_axis(x.type.rank)
            axes = set(op.attrs["axes"])
            if ax_in is None or ax_in in axes:
                return self._barrier(op, "reduces over channels")
            # position of the channel axis in the output
            pos = ax_in if op.attrs["keepdim"] else ax_in - sum(1 for a in axes if a < ax_in)
            if pos != channel_axis(out.type.rank):
                return self._barrier(op, "channel axis moves")
            self.origin[id(out)] = list(self.nodes(x))
            return
        if kind == "concat":
            ax = channel_axis(out.type.rank)
            if any(self.nodes(v) is None for v in ins):
                return self._barrier(op, "operand without channels")
            if op.attrs["axis"] == ax:
                self.origin[id(out)] = [n for v in ins for n in self.nodes(v)]
            else:
                self.origin[id(out)] = self._merge([self.nodes(v) for v in ins])
            return
        if kind == "slice":
            x = ins[0]
            nodes = self.nodes(x)
            if nodes is None:
                return self._barrier(op, "no channels")
            if op.attrs["axis"] == channel_axis(x.type.rank):
                if op.attrs["step"] != 1:
                    return self._barrier(op, "strided channel slice")
                self.origin[id(out)] = nodes[op.attrs["start"]:op.attrs["end"]]
            else:
                self.origin[id(out)] = list(nodes)
            return
        if kind == "reshape":
            return self._reshape(op)
        return self._barrier(op, f"{kind} mixes channels in ways the analysis does not model")

    def _merge(self, lists: list[list[int]]) -> list[int]:
        first = lists[0]
        for other in lists[1:]:
            for a, b in zip(first, other):
                self.uf.union(a, b)
        return list(first)

    def _binary(self, op) -> None:
        out = op.results[0]
        ax = channel_axis(out.type.rank)
        if ax is None:
            return self._barrier(op, "no channel axis")
        lists = []
        for v in op.operands:
            shift = out.type.rank - v.type.rank
            vax = ax - shift
            size = v.type.shape[vax] if 0 <= vax < v.type.rank else 1
            if size == 1:
                continue  # broadcast along channels: carries no channel
            if self._is_const(v):
                continue  # a per-channel constant: sliced along with the channels
            nodes = self.nodes(v)
            if nodes is None or vax != channel_axis(v.type.rank):
                return self._barrier(op, "operand's channels sit on another axis")
            lists.append(nodes)
        if not lists:
            return self._barrier(op, "no channel operand")
        self.origin[id(out)] = self._merge(lists)

    def _reshape(self, op) -> None:
        x, out = op.operands[0], op.results[0]
        nodes = self.nodes(x)
        ax_in, ax_out = channel_axis(x.type.rank), channel_axis(out.type.rank)
        if nodes is None or ax_out is None:
            return self._barrier(op, "no channels")
        si, so = x.type.shape, out.type.shape
        # channel axis keeps its leading dims and size, trailing dims fold into 1s: [N,C,1,1] -> [N,C]
        if si[:ax_in] == so[:ax_out] and so[ax_out] == si[ax_in] and all(d == 1 for d in si[ax_in + 1:]) \
                and all(d == 1 for d in so[ax_out + 1:]):
            self.origin[id(out)] = list(nodes)
            return
        # flatten into features: [N, C, H, W] -> [N, C*H*W]
        inner = 1
        for d in si[ax_in + 1:]:
            inner *= d
        if out.type.rank == ax_in + 1 and so[:ax_in] == si[:ax_in] and so[ax_in] == si[ax_in] * inner:
            self.origin[id(out)] = [n for n in nodes for _ in range(inner)]
            return
        self._barrier(op, "reshape regroups channels")

    # -- queries ------------------------------------------------------------------------
    def pinned_classes(self) -> set:
        return {self.uf[n] for n in self.pinned_nodes}

    def consumers(self) -> list:
        """conv2d (groups=1) / linear ops whose input carries channels."""
        return [op for op in self.module.ops if is_consumer(op) and self.nodes(op.operands[0]) is not None
                and id(op) in self.producer_nodes]


def _param(module, value):
    """A param operand's data as a float64 torch tensor (None: not a param)."""
    import torch

    data = module.param_data(value) if value.producer is not None and value.producer.kind == "param" else None
    return None if data is None else torch.from_numpy(np.asarray(data, np.float64))


def _channel_tensor(vec: np.ndarray, rank: int):
    """A per-channel vector as a broadcastable [1, C, 1, 1] (or [1, ..., C]) tensor."""
    import torch

    shape = [1] * rank
    shape[channel_axis(rank)] = len(vec)
    return torch.from_numpy(vec).reshape(shape)


def constant_channels(module, analysis: ChannelAnalysis) -> dict:
    """Channels that hold one value at every position for every input.

    Returns id(value) -> float64 vector over the value's channels: the constant,
    or NaN where the channel is not (known to be) constant.  Sources are conv2d /
    linear rows that are all zero (their bias, or 0); channel-wise ops map the
    constants with their reference semantics.  Anything where the value could
    differ from position to position (a padded depthwise conv or average pool of a
    nonzero constant) or that the analysis treats as a barrier is unknown.
    """
    import torch

    barriers = {id(op) for op, _ in analysis.barriers}
    const: dict = {}

    def vec(v, n):
        c = const.get(id(v))
        return c if c is not None else np.full(n, np.nan)

    for op in module.ops:
        if op.kind in ("param", "constant") or not op.results:
            continue
        out = op.results[0]
        nodes = analysis.nodes(out)
        if nodes is None:
            continue
        n, rank, kind = len(nodes), out.type.rank, op.kind
        x = op.operands[0] if op.operands else None
        nx_ = len(analysis.nodes(x)) if x is not None and analysis.nodes(x) is not None else None
        c = np.full(n, np.nan)
        if id(op) in barriers:
            pass
        elif id(op) in analysis.producer_nodes:
            w, b = _param(module, op.operands[1]), (_param(module, op.operands[2]) if len(op.operands) > 2 else None)
            if w is not None and (len(op.operands) < 3 or b is not None):
                zero = ~np.any(w.reshape(w.shape[0], -1).numpy() != 0, axis=1)
                c = np.where(zero, b.numpy() if b is not None else 0.0, np.nan)
        elif kind == "conv2d" and is_depthwise(op):
            w, b = _param(module, op.operands[1]), (_param(module, op.operands[2]) if len(op.operands) > 2 else None)
            xin = vec(x, n)
            if w is not None and (len(op.operands) < 3 or b is not None):
                bias = b.numpy() if b is not None else np.zeros(n)
                if not any(op.attrs["padding"]):  # every output sees the whole kernel
                    c = xin * w.reshape(n, -1).sum(1).numpy() + bias
                else:  # zero padding around a constant: only a zero channel stays constant
                    c = np.where(xin == 0, bias, np.nan)
        elif _maps_values(op):
            args = [_channel_tensor(vec(x, n), rank)] + [_param(module, v) for v in op.operands[1:]]
            if all(a is not None for a in args):
                c = op.decl.ref(*args, **op.attrs).reshape(-1).numpy().astype(np.float64)
        elif kind in ("max_pool2d", "adaptive_avg_pool2d", "mean"):
            c = vec(x, n)
        elif kind == "avg_pool2d":
            xin = vec(x, n)
            exact = not any(op.attrs["padding"]) and not op.attrs["ceil_mode"]
            c = xin if exact else np.where(xin == 0, 0.0, np.nan)
        elif kind == "sum":
            c = vec(x, n) * int(np.prod([x.type.shape[a] for a in op.attrs["axes"]]))
        elif _couples(op):
            args, zero = [], np.zeros(n, bool)
            for v in op.operands:
                if analysis.nodes(v) is not None and v.type.rank == rank:
                    vv = vec(v, n) if len(analysis.nodes(v)) == n else np.full(n, np.nan)
                    args.append(_channel_tensor(vv, rank))
                    zero |= vv == 0
                    continue
                p = _param(module, v)
                if p is None or any(d != 1 for i, d in enumerate(p.shape) if i != p.dim() + channel_axis(rank) - rank):
                    args = None
                    break
                args.append(p)
            if args is not None:
                c = op.decl.ref(*args).reshape(-1).numpy().astype(np.float64)
                c = c if c.size == n else np.full(n, np.nan)
                if kind == "mul":
                    c = np.where(zero, 0.0, c)
        elif kind == "concat":
            parts = [vec(v, len(analysis.nodes(v))) for v in op.operands]
            if op.attrs["axis"] == channel_axis(rank):
                c = np.concatenate(parts)
            else:
                c = parts[0]
                for p in parts[1:]:
                    c = np.where(c == p, c, np.nan)
        elif kind == "slice":
            xin = vec(x, nx_)
            c = xin[op.attrs["start"]:op.attrs["end"]] if op.attrs["axis"] == channel_axis(x.type.rank) else xin
        elif kind == "reshape":
            c = np.repeat(vec(x, nx_), n // nx_)
        const[id(out)] = c
    return const
