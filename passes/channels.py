"""Channel analysis: where every channel of every value comes from.

Each output channel of a conv2d/linear (a *producer*) is a fresh channel node.
Channel-wise ops pass nodes through (activations, batch norm, depthwise convs,
pooling, global means); concatenation along channels concatenates the node
lists; a channel slice takes a sub-list; flattening ``[N, C, H, W]`` into
``[N, C*H*W]`` repeats each channel's node H*W times.  Elementwise ops on two
channel tensors (residual adds, SE gating) *couple* the nodes at each position:
they are merged with a union-find, and a merged set is a *channel class* — the
unit pruning keeps or drops.

Any other use of a channel tensor is a *barrier*: the analysis does not guess
how the op mixes channels, so every class the barrier reads is pinned (kept),
as are the module's outputs.  Barrier outputs get fresh, pinned nodes.

Consumers are the conv2d (groups=1) and linear ops: each reads a subset of its
input's channels, the one pruning chooses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from networkx.utils import UnionFind

ELEMENTWISE_UNARY = {
    "relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "exp", "log", "sqrt", "rsqrt",
    "erf", "sin", "cos", "neg", "abs", "clamp", "cast",
}
ELEMENTWISE_BINARY = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"}
POOLS = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"}


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
        if kind in ELEMENTWISE_UNARY or kind in POOLS or kind == "batch_norm":
            if self.nodes(ins[0]) is None or out.type.rank != ins[0].type.rank:
                return self._barrier(op, "channel axis changes")
            self.origin[id(out)] = list(self.nodes(ins[0]))
            return
        if kind in ELEMENTWISE_BINARY:
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
