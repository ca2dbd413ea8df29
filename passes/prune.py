"""prune: constraint-free channel pruning (UPSCALE, Wan et al., ICML 2023).

Each conv2d (groups=1) / linear *consumer* chooses which of its input channels
to keep, on its own (``l1``, ``l2`` or ``fpgm`` column scores, ``act``: the L2
column norm times the input channel's RMS on calibration inputs; per layer or
global, or masks given by the user).  The masked model is the original with the
dropped input columns zeroed.  Exporting it exactly:

1. *analyse* where every channel comes from (:mod:`sliver.passes.channels`);
2. *resolve*: a channel class is live when any consumer (or a barrier, or an
   output) reads it; producers keep their live channels, everything channel-wise
   in between (batch norm, depthwise convs, biases, adds, concats) follows;
3. *reorder* (:func:`choose_order`): permute each producer's channels (within its
   block of any concat) so consumers' channel sets become contiguous — exactly
   where a consecutive-ones order exists (:mod:`sliver.passes.consecutive`),
   greedily otherwise; channels read by model outputs and barriers keep their order;
4. *rewrite*: slice weights; a consumer whose kept inputs are all of its
   (pruned) input tensor reads it directly, a contiguous run is a ``slice``
   (a view), anything else a ``take`` (a gather: a memory copy per inference) —
   or, with ``holes=zero``, a view of the run around its channels with zero
   weight columns in between.

``constrained=true`` instead prunes whole channel classes (every consumer of a
coupled group drops the same channels, as Torch-Pruning/DepGraph do): no gathers,
but the choice is no longer per layer.

The pass's notes hold a per-layer report (:func:`format_report`).

Symbolic dimensions (a dynamic batch or sequence length): channel counts are static
(conv and linear weights fix them), so pruning works as on a fixed-shape model and
keeps the other dimensions symbolic; the report's MACs and bytes count every dynamic
dimension at its largest size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sliver.common.errors import SliverError
from sliver.common.text import table_lines
from sliver.ir.core import Module
from sliver.ir.dims import largest
from sliver.passes.base import Pass, register
from sliver.passes.channels import ChannelAnalysis, channel_axis, constant_channels, is_depthwise
from sliver.passes.consecutive import counts_up

METHODS = ("l1", "l2", "fpgm", "act")


def layer_name(op) -> str:
    """A consumer's name: its weight param without ``.weight`` (``layer1.0.conv1``)."""
    return op.operands[1].name.removesuffix(".weight")


def _columns(module, op, axis: int = 1) -> np.ndarray:
    """The layer's weight as [channels, rest]: one row per input channel/feature
    (``axis=1``) or per output channel (``axis=0``)."""
    w = module.param_data(op.operands[1])
    if w is None:
        raise SliverError(f"{layer_name(op)}: the weight is computed, not a param; cannot score its channels")
    w = np.asarray(w, np.float64)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def column_scores(module, op, method: str, axis: int = 1, activations: dict | None = None) -> np.ndarray:
    """Importance of each input (``axis=1``) or output (``axis=0``) channel of a layer (higher = keep).

    ``act`` is activation-aware (as Wanda, Sun et al. 2023, per channel): the L2
    norm of an input column times the RMS of that input channel on calibration
    inputs (``activations``: value name -> per-channel RMS, :func:`input_rms`), so
    a large column that reads a near-silent channel ranks low."""
    if method == "act":
        if axis != 1:
            raise SliverError("method act scores input channels (weight column x input RMS): use side=input")
        if activations is None:
            raise SliverError("method act needs calibration inputs: prune(method='act', calibration=[x, ...]) "
                              "(or activations=input_rms(module, [x, ...]))")
        return column_scores(module, op, "l2", axis) * activations[op.operands[0].name]
    cols = _columns(module, op, axis)
    if method == "l1":
        return np.abs(cols).sum(1)
    if method == "l2":
        return np.sqrt((cols**2).sum(1))
    if method == "fpgm":
        # Filter pruning via geometric median: channels closest to the others
        # (smallest total distance) are the most replaceable.
        d = np.sqrt(((cols[:, None, :] - cols[None, :, :]) ** 2).sum(-1))
        return d.sum(1)
    raise SliverError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")


def input_rms(module, calibration) -> dict:
    """Per-channel RMS of every conv/linear input over the calibration inputs (one
    reference-interpreter run): value name -> vector over its channels.  Hand it to
    ``prune(method="act", activations=...)`` to prune several copies of ``module``
    without measuring again."""
    import torch

    from sliver.ir.interp import run

    wanted = {op.operands[0].name for op in ChannelAnalysis.run(module).consumers()}
    rms: dict = {}

    def record(value, t) -> None:
        if value.name in wanted:
            x = torch.as_tensor(t).double().movedim(channel_axis(value.type.rank), 0)
            rms[value.name] = x.reshape(x.shape[0], -1).pow(2).mean(1).sqrt().numpy()

    inputs = [np.ascontiguousarray(x) for x in calibration]
    for v, x in zip(module.inputs, inputs):
        record(v, torch.from_numpy(x))
    run(module, inputs, observe=lambda op, out: [record(r, t) for r, t in zip(op.results, out)])
    return rms


def _keep_top(scores: np.ndarray, n_drop: int) -> list[int]:
    order = np.argsort(scores, kind="stable")
    return sorted(int(i) for i in order[n_drop:])


@dataclass
class PrunePlan:
    analysis: ChannelAnalysis
    masks: dict  # id(consumer op) -> sorted kept input positions
    live: set  # live channel classes
    rank: dict = field(default_factory=dict)  # class -> position in the exported order (reorder)
    output_masks: dict | None = None  # layer name -> kept output channels (side="output")
    reorder: dict | None = None  # choose_order's summary
    holes: str = "gather"  # a consumer whose channels are not one run: "gather" them, or read the "zero"-filled run

    def kept(self, value) -> list[int] | None:
        """Positions of ``value``'s channels that survive (None: no channel axis)."""
        classes = self.analysis.classes(value)
        if classes is None:
            return None
        return [i for i, c in enumerate(classes) if c in self.live]


def _check_amount(amount) -> None:
    if not 0.0 <= amount < 1.0:
        raise SliverError(f"pruning amount must be in [0, 1), got {amount}")


def _user_masks(layers: dict, masks: dict, side: str) -> dict:
    """Check user masks (layer name -> kept channels) against the prunable layers."""
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise SliverError(f"masks name unknown layer(s) {unknown}; prunable layers: {', '.join(layers)}")
    out = {}
    for name, kept in masks.items():
        op = layers[name]
        n = op.operands[1].type.shape[0 if side == "output" else 1]
        kept = sorted(set(int(k) for k in kept))
        if not kept:
            raise SliverError(f"the mask of {name} keeps no channel: a layer needs at least one {side} channel "
                              f"(keep one, or drop the layer from the masks)")
        if kept[0] < 0 or kept[-1] >= n:
            raise SliverError(f"the mask of {name} names channel {kept[-1] if kept[-1] >= n else kept[0]}, "
                              f"but the layer has {n} {side} channels")
        out[id(op)] = kept
    return out


def _select(scores: dict, amount: float, scope: str) -> dict:
    """Kept positions per layer: the top (1 - amount) of each layer's scores, or of
    all scores normalised by each layer's mean (global); every layer keeps one."""
    if scope not in ("layer", "global"):
        raise SliverError(f"pruning scope must be 'layer' or 'global', got {scope!r}")
    out = {}
    if scope == "layer":
        for k, s in scores.items():
            out[k] = _keep_top(s, min(int(amount * len(s)), len(s) - 1))
        return out
    normed = {k: s / (s.mean() or 1.0) for k, s in scores.items()}
    allv = np.sort(np.concatenate(list(normed.values()))) if normed else np.zeros(0)
    threshold = allv[int(amount * len(allv))] if len(allv) else 0.0
    for k, s in normed.items():
        out[k] = _keep_top(s, min(int((s < threshold).sum()), len(s) - 1))
    return out


def consumer_masks(module, analysis, *, method, amount, scope, masks=None, activations=None) -> dict:
    """Per-consumer kept input positions."""
    consumers = analysis.consumers()
    if masks:
        return _user_masks({layer_name(op): op for op in consumers}, masks, "input")
    _check_amount(amount)
    # the first layers read the model's inputs (image channels): leave them whole
    eligible = [op for op in consumers if op.operands[0] not in module.inputs]
    return _select({id(op): column_scores(module, op, method, activations=activations) for op in eligible},
                   amount, scope)


def producers(module, analysis) -> list:
    """conv2d (groups=1) / linear layers with a param weight: their output channels can be masked."""
    return [op for op in module.ops if id(op) in analysis.producer_nodes
            and op.operands[1].producer is not None and op.operands[1].producer.kind == "param"]


def output_masks(module, analysis, *, method, amount, scope, masks=None) -> dict:
    """Per-producer kept output channels.  Layers whose every channel is pinned (the
    model's outputs, or read by an op the analysis does not model) are left whole."""
    layers = producers(module, analysis)
    if masks:
        return _user_masks({layer_name(op): op for op in layers}, masks, "output")
    _check_amount(amount)
    pinned = analysis.pinned_nodes
    eligible = [op for op in layers if not all(n in pinned for n in analysis.producer_nodes[id(op)])]
    return _select({id(op): column_scores(module, op, method, axis=0) for op in eligible}, amount, scope)


def zero_channels(module, masks_by_name: dict, side: str = "input") -> None:
    """Zero, in place, what the masks drop: input columns of consumers, or output
    rows (and bias entries) of producers."""
    for op in module.ops:
        if op.kind in ("conv2d", "linear") and op.operands[1].producer.kind == "param":
            name = layer_name(op)
            if name not in masks_by_name:
                continue
            targets = [op.operands[1]] + (list(op.operands[2:3]) if side == "output" else [])
            for v in targets:
                w = module.params[v.name].copy()
                axis = 0 if side == "output" else 1
                drop = sorted(set(range(w.shape[axis])) - set(masks_by_name[name]))
                np.moveaxis(w, axis, 0)[drop] = 0
                module.params[v.name] = w


def drop_zero_inputs(module, analysis) -> dict:
    """Consumers stop reading input channels that are zero at every position for
    every input (e.g. fed only by zeroed producer rows through relu, pooling, a
    bias-free depthwise conv...): dropping them changes no arithmetic.  Returns
    kept input positions by id(consumer).

    Nonzero constant channels (a zeroed row followed by a batch norm or a biased
    depthwise conv) stay: folding them into the consumer's bias would be exact
    only in real arithmetic."""
    const = constant_channels(module, analysis)
    masks = {}
    for op in analysis.consumers():
        c = const.get(id(op.operands[0]))
        if c is None or op.operands[0] in module.inputs:
            continue
        zero = c == 0
        if zero.all():
            zero[0] = False  # a layer reads at least one channel
        if zero.any():
            masks[id(op)] = [int(i) for i in np.flatnonzero(~zero)]
    return masks


def constrain(module, analysis, *, method, amount, activations=None) -> dict:
    """DepGraph-style masks: drop whole channel classes within each coupled group, so
    every consumer of a class drops it together (no gathers)."""
    import networkx as nx

    _check_amount(amount)
    pinned = analysis.pinned_classes()
    score: dict = {}
    groups = nx.Graph()
    for op in analysis.consumers():
        if op.operands[0] in module.inputs:
            continue
        classes = analysis.classes(op.operands[0])
        s = column_scores(module, op, method, activations=activations)
        s = s / (s.mean() or 1.0)
        for c, v in zip(classes, s):
            score[c] = score.get(c, 0.0) + float(v)
        groups.add_nodes_from(classes)
        nx.add_path(groups, classes)
    # a producer must keep at least one channel: count its classes still standing
    standing = {pid: {analysis.uf[n] for n in nodes} for pid, nodes in analysis.producer_nodes.items()}
    owners: dict = {}
    for pid, classes in standing.items():
        for c in classes:
            owners.setdefault(c, []).append(pid)
    dropped = set()
    for group in nx.connected_components(groups):
        budget = int(amount * len(group))
        for c in sorted((c for c in group if c not in pinned), key=lambda c: score[c]):
            if budget == 0:
                break
            if all(len(standing[pid]) > 1 for pid in owners.get(c, ())):
                for pid in owners.get(c, ()):
                    standing[pid].discard(c)
                dropped.add(c)
                budget -= 1
    out = {}
    for op in analysis.consumers():
        classes = analysis.classes(op.operands[0])
        kept = [i for i, c in enumerate(classes) if c not in dropped]
        if len(kept) < len(classes):
            out[id(op)] = kept
    return out


def resolve(module, analysis, masks: dict) -> PrunePlan:
    live = analysis.pinned_classes()
    for op in analysis.consumers():
        classes = analysis.classes(op.operands[0])
        live.update(classes[i] for i in masks.get(id(op), range(len(classes))))
    for op in analysis.consumers():
        classes = analysis.classes(op.results[0])
        if not any(c in live for c in classes):
            # no consumer reads this layer any more; keep one channel so it stays well formed
            live.add(classes[0])
    return PrunePlan(analysis, masks, live)


def _segments(module, a) -> tuple[dict, set]:
    """Per value with channels, its layout as segments: one class list per producer
    block (a concat joins its operands' segments; a block can only be permuted
    within itself).  Also the classes whose natural order must stay: read or made
    by barriers, the module's inputs and outputs, channel slices, and values where
    an elementwise op joins operands of different block structure."""
    barriers = {id(op) for op, _ in a.barriers}
    frozen: set = set()
    segs: dict = {}

    def freeze(v):
        frozen.update(a.classes(v) or ())

    for v in [*module.inputs, *module.outputs]:
        freeze(v)
    for v in module.inputs:
        if a.nodes(v) is not None:
            segs[id(v)] = [a.classes(v)]
    for op in module.ops:
        if op.kind in ("param", "constant") or not op.results or a.nodes(op.results[0]) is None:
            if id(op) in barriers:
                for v in op.operands:
                    freeze(v)
            continue
        out = op.results[0]
        classes = a.classes(out)
        ax = channel_axis(out.type.rank)
        channel_ins = [v for v in op.operands if id(v) in segs]
        seg = None
        if id(op) in barriers or id(op) in a.producer_nodes:
            if id(op) in barriers:
                for v in [*op.operands, out]:
                    freeze(v)
        elif op.kind == "concat" and op.attrs["axis"] == ax:
            seg = [s for v in op.operands for s in segs[id(v)]]
        elif op.kind == "slice" and op.attrs["axis"] == ax:
            for v in [*op.operands, out]:
                freeze(v)
        elif op.kind in ("add", "sub", "mul", "div", "pow", "maximum", "minimum"):
            joined = [v for v in channel_ins if v.type.shape[channel_axis(v.type.rank)] > 1]
            shapes = {tuple(frozenset(s) for s in segs[id(v)]) for v in joined}
            if len(shapes) == 1:
                seg = segs[id(joined[0])]
            else:
                for v in [*joined, out]:
                    freeze(v)
        elif channel_ins:
            src = segs[id(channel_ins[0])]
            inner = len(classes) // max(1, len(a.classes(channel_ins[0])))
            seg = [[c for c in s for _ in range(inner)] for s in src]  # flatten repeats each channel
        if seg is not None and [c for s in seg for c in s] != classes:
            for v in [*channel_ins, out]:  # a layout this analysis does not follow: keep it natural
                freeze(v)
            seg = None
        segs[id(out)] = seg or [classes]
    return segs, frozen


def choose_order(module, plan) -> tuple[dict, dict]:
    """Export-time channel reordering: a rank per channel class such that the
    channel sets consumers read become contiguous runs (views, not gathers).

    A consumer reads a value laid out as blocks (one per concatenated producer;
    a plain producer output is one block), each block's order is free.  It is a
    view when the blocks it touches are consecutive, the inner ones read whole,
    and what it reads of the first (last) is a suffix (prefix) of that block — or
    a run, when it touches one block.  :func:`sliver.passes.consecutive.arrange`
    finds block orders satisfying every reader exactly when the consecutive-ones
    property allows; otherwise it keeps the heaviest readers it can (greedy, bytes
    copied as weights) and, on small groups, computes the optimum to compare.

    Returns (rank, summary): the summary counts groups, exact and heuristic
    answers, bytes the heuristic leaves copied vs the optimum, and bytes no order
    can avoid (readers that skip part of an inner block).
    """
    from sliver.passes.consecutive import Read, arrange

    a = plan.analysis
    segs, frozen = _segments(module, a)
    # a block is frozen whole; blocks must not share classes (one rank per class)
    changed = True
    while changed:
        changed = False
        owner: dict = {}
        for seg_list in segs.values():
            for s in seg_list:
                key = frozenset(s)
                if key & frozen and not key <= frozen:
                    frozen |= key
                    changed = True
                for c in key - frozen:
                    if owner.setdefault(c, key) != key:
                        frozen |= key | owner[c]
                        changed = True
    blocks: dict = {}
    for seg_list in segs.values():
        for s in seg_list:
            key = frozenset(s)
            if not key & frozen:
                blocks.setdefault(key, list(dict.fromkeys(c for c in s if c in plan.live)))
    reads, unavoidable = [], 0
    for op in a.consumers():
        x = op.operands[0]
        classes = a.classes(x)
        mask = plan.masks.get(id(op), range(len(classes)))
        live_positions = sum(1 for c in classes if c in plan.live)
        if len(mask) == live_positions:
            continue  # reads everything: free in any order
        weight = len(mask) * largest(x.type.numel // len(classes)) * 4  # dynamic dims at their largest
        parts, touched, offset = [], [], 0
        picked, split = set(mask), False
        for s in segs[id(x)]:
            key = frozenset(s)
            live = {c for c in s if c in plan.live}
            read = {s[i] for i in range(len(s)) if offset + i in picked}
            # a flattened channel is a run of features: reading some of them is a gather in any order
            split |= any(s[i] in read and offset + i not in picked for i in range(len(s)))
            offset += len(s)
            touched.append((key, live, read))
        hit = [i for i, (_, _, read) in enumerate(touched) if read]
        lo, hi = hit[0], hit[-1]
        if plan.holes == "gather" and (split or any(touched[i][2] != touched[i][1] for i in range(lo + 1, hi))):
            unavoidable += weight  # an inner block (or flattened channel) is read in part: no order helps
            continue
        for i, kind in ([(lo, "run")] if lo == hi else [(lo, "suffix"), (hi, "prefix")]):
            key, live, read = touched[i]
            if read != live:
                if key not in blocks:
                    parts = None  # part of a frozen block: its order is fixed
                    break
                parts.append((key, kind, read))
        if parts:
            reads.append(Read(weight, parts))
    orders, groups = arrange(blocks, reads)
    rank = {c: i for key, order in orders.items() for i, c in enumerate(order)}
    for key, order in blocks.items():
        if key not in orders:
            rank.update((c, i) for i, c in enumerate(order))
    groups = [g for g in groups if g.reads]  # blocks every reader takes whole are not counted
    searched = [g for g in groups if not g.exact and g.optimum is not None]
    summary = {
        "groups": len(groups), "exact": sum(g.exact for g in groups),
        "heuristic": sum(not g.exact for g in groups),
        "heuristic_bytes": sum(g.cost for g in groups),
        "searched": len(searched), "searched_bytes": sum(g.cost for g in searched),
        "optimum_bytes": sum(g.optimum for g in searched),
        "unavoidable_bytes": unavoidable, "holes": plan.holes,
    }
    return rank, summary


# ----------------------------------------------------------------------------
# rewrite


def _take(data: np.ndarray, positions, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.take(data, positions, axis=axis))


@dataclass
class LayerReport:
    name: str
    kind: str
    in_before: int
    in_after: int
    out_before: int
    out_after: int
    read: str  # "all", "view" (a contiguous slice) or "gather"
    gathered: int = 0  # channels copied per inference
    bytes_copied: int = 0
    zero_filled: int = 0  # channels read only to meet zero weights (holes=zero)


@dataclass
class PruneReport:
    layers: list = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    reorder: dict | None = None  # choose_order's summary (None: natural order)

    @property
    def gathers(self) -> int:
        return sum(1 for r in self.layers if r.read == "gather")

    @property
    def gathered_channels(self) -> int:
        return sum(r.gathered for r in self.layers)

    @property
    def bytes_copied(self) -> int:
        return sum(r.bytes_copied for r in self.layers)

    @property
    def zero_filled(self) -> int:
        return sum(r.zero_filled for r in self.layers)

    def as_dict(self) -> dict:
        return {
            "params_before": self.params_before, "params_after": self.params_after,
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "gathers": self.gathers, "gathered_channels": self.gathered_channels,
            "bytes_copied": self.bytes_copied, "zero_filled": self.zero_filled, "reorder": self.reorder, "layers": [vars(r) for r in self.layers],
        }


def count_params_and_macs(module) -> tuple[int, int]:
    """Weights (float params; gather indices are not weights) and multiply-adds.  With
    symbolic dimensions (a dynamic batch or sequence) the counts are for every dynamic
    dimension at its largest size (:func:`~sliver.ir.dims.largest`)."""
    params = sum(int(a.size) for a in module.params.values() if a.dtype.kind == "f")
    macs = 0
    for op in module.ops:
        if op.kind == "conv2d":
            o, i, kh, kw = op.operands[1].type.shape
            out = op.results[0].type.shape
            macs += largest(out[0] * o * out[2] * out[3] * i * kh * kw)
        elif op.kind == "linear":
            o, i = op.operands[1].type.shape
            macs += largest(math.prod(op.results[0].type.shape[:-1], start=1) * o * i)
    return params, macs


def pruned(module, **options) -> tuple[Module, dict]:
    """A pruned copy of ``module`` (the ``prune`` pass with ``options``) and its report
    (:meth:`PruneReport.as_dict`)."""
    from sliver.ir.verifier import verify

    copy, p = module.clone(), Prune(**options)
    _, notes = p.run(copy)
    verify(copy, after=p.spec())
    return copy, notes["report"]


def to_torch(module, *, name: str | None = None):
    """A pruned ``module`` back as a ``torch.nn.Module`` to fine-tune: the pruned weights
    (trainable, under the original model's parameter names), the reordered channel layout
    and its channel gathers as buffers; ``sliver.lower`` of it compiles the same ops the
    pruned IR compiles to.  (:func:`sliver.ir.torch_module.to_torch`, which converts any
    module; ``sliver prune MODEL --torch pruned.pt``.)"""
    from sliver.ir.torch_module import to_torch as convert

    return convert(module, name=name)


def matched_constrained(module, params: int, steps: int = 10, **options) -> tuple[Module, dict, float]:
    """``(pruned copy, report, amount)`` of the constrained pruning of ``module`` whose
    parameter count is closest to ``params`` (a bisection over the amount, ``steps``
    prunings): constrained pruning at the same *amount* as an unconstrained one
    removes more (whole coupled groups), so comparisons of the two are fair only at
    the same size.  ``options``: the other ``prune`` options (method, activations…)."""
    lo, hi = 0.0, 0.99
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        copy, report = pruned(module, amount=mid, constrained=True, **options)
        if best is None or abs(report["params_after"] - params) < abs(best[1]["params_after"] - params):
            best = (copy, report, mid)
        if report["params_after"] > params:
            lo = mid
        else:
            hi = mid
    return best


def rewrite(module, plan: PrunePlan) -> PruneReport:
    """Rebuild ``module`` with pruned channels removed; returns the report."""
    a = plan.analysis
    report = PruneReport()
    report.params_before, report.macs_before = count_params_and_macs(module)
    new = Module(module.name)
    vmap = {}
    for v in module.inputs:
        vmap[id(v)] = new.add_input(v.type, name=v.name)

    orders: dict = {}  # id(old value) -> its surviving channel positions, in exported order

    def kept_or_all(value):
        if id(value) in orders:
            return orders[id(value)]
        k = plan.kept(value)
        ax = channel_axis(value.type.rank)
        return k if k is not None else (list(range(value.type.shape[ax])) if ax is not None else None)

    def whole(value):
        """A param operand no rule sliced: copied as it is (once, however many users)."""
        if id(value) not in vmap:
            vmap[id(value)] = new.add_param(value.name, module.params[value.name])
        return vmap[id(value)]

    for op in module.ops:
        if op.kind == "param":
            continue  # params are recreated, sliced, where they are used
        # None marks a param operand: a rule below may slice it, or it is copied whole
        operands = [vmap.get(id(v)) if v.producer is None or v.producer.kind != "param" else None
                    for v in op.operands]
        attrs = dict(op.attrs)
        out = op.results[0]
        if a.nodes(out) is not None:
            orders[id(out)] = _order(op, plan, kept_or_all)
        if id(op) in a.producer_nodes and a.nodes(op.operands[0]) is not None:
            operands = _rewrite_consumer(new, module, op, operands, plan, report, kept_or_all)
        elif op.kind == "conv2d" and is_depthwise(op):
            k = kept_or_all(out)
            operands[1:] = [new.add_param(v.name, _take(module.params[v.name], k, 0)) for v in op.operands[1:]]
            attrs["groups"] = len(k)
        elif op.kind == "batch_norm":
            k = kept_or_all(op.operands[0])
            operands[1:] = [new.add_param(v.name, _take(module.params[v.name], k, 0)) for v in op.operands[1:]]
        elif op.kind in ("add", "sub", "mul", "div", "pow", "maximum", "minimum") and a.nodes(out) is not None:
            ax = channel_axis(out.type.rank)
            k = kept_or_all(out)
            for i, v in enumerate(op.operands):
                vax = ax - (out.type.rank - v.type.rank)
                if v.producer.kind == "param" and 0 <= vax < v.type.rank and v.type.shape[vax] > 1:
                    operands[i] = new.add_param(v.name, _take(module.params[v.name], k, vax))
        elif op.kind == "reshape" and a.nodes(out) is not None:
            shape = list(attrs["shape"])
            shape[channel_axis(out.type.rank)] = len(kept_or_all(out))
            attrs["shape"] = tuple(shape)
        elif op.kind == "slice" and a.nodes(out) is not None and attrs["axis"] == channel_axis(out.type.rank):
            k = kept_or_all(op.operands[0])
            attrs["start"] = sum(1 for i in k if i < attrs["start"])
            attrs["end"] = sum(1 for i in k if i < attrs["end"])
        operands = [o if o is not None else whole(v) for o, v in zip(operands, op.operands)]
        res = new.add_op(op.kind, operands, attrs, names=[r.name for r in op.results])
        for r_old, r_new in zip(op.results, res.results):
            vmap[id(r_old)] = r_new
    new.set_outputs([vmap[id(v)] for v in module.outputs])
    from sliver.passes.dce import dce

    dce(new)
    module.adopt(new)
    report.params_after, report.macs_after = count_params_and_macs(module)
    return report


def _order(op, plan, order_of) -> list[int]:
    """The surviving channel positions of ``op``'s result in exported order.

    Producers sort their channels by the reorder rank; channel-wise ops inherit
    their input's order (so coupled operands agree), concats join their
    operands' orders block by block, flattening expands each channel's block."""
    a = plan.analysis
    out = op.results[0]
    kept = plan.kept(out)
    if any(b is op for b, _ in a.barriers):
        return kept  # barriers read and make channels in natural order (reorder freezes them)
    if id(op) in a.producer_nodes or not op.operands:
        classes = a.classes(out)
        return sorted(kept, key=lambda p: (plan.rank.get(classes[p], -1), p))
    ax = channel_axis(out.type.rank)
    if op.kind == "concat" and op.attrs["axis"] == ax:
        order, offset = [], 0
        for v in op.operands:
            order += [offset + p for p in order_of(v)]
            offset += v.type.shape[channel_axis(v.type.rank)]
        return order
    if op.kind == "slice" and op.attrs["axis"] == ax:
        return kept  # channel slices read their input in natural order (reorder leaves them alone)
    sources = [v for v in op.operands if a.nodes(v) is not None and v.producer.kind not in ("param", "constant")
               and v.type.shape[channel_axis(v.type.rank)] > 1]
    if not sources:
        return kept
    source = sources[0]
    for other in sources[1:]:
        if order_of(other) != order_of(source):
            raise SliverError(f"internal error: {op.kind} %{out.name} joins operands laid out in different channel "
                              f"orders (%{source.name}, %{other.name})")
    src_order = order_of(source)
    n_in, n_out = source.type.shape[channel_axis(source.type.rank)], out.type.shape[ax]
    if n_out != n_in:  # flatten: each channel became a block of n_out // n_in features
        inner = n_out // n_in
        return [p * inner + j for p in src_order for j in range(inner)]
    return list(src_order)


def _rewrite_consumer(new, module, op, operands, plan, report, order_of) -> list:
    x = op.operands[0]
    ax = channel_axis(x.type.rank) if op.kind == "linear" else 1
    n_in = x.type.shape[ax]
    mask = plan.masks.get(id(op), list(range(n_in)))
    kept_in = order_of(x)
    kept_out = order_of(op.results[0])
    where = {p: i for i, p in enumerate(kept_in)}
    idx = sorted(where[p] for p in mask)
    xin = operands[0]
    zero = []  # holes=zero: columns read through a view only to meet zero weights
    if plan.holes == "zero" and not counts_up(idx):
        zero = [kept_in[i] for i in range(idx[0], idx[-1] + 1) if i not in set(idx)]
        idx = list(range(idx[0], idx[-1] + 1))
    if idx == list(range(len(kept_in))):
        read, gathered = "all", 0
    elif counts_up(idx):
        xin = new.add_op("slice", [xin], {"axis": ax, "start": idx[0], "end": idx[-1] + 1},
                         names=[new.fresh_name(x.name + ".view")]).result
        read, gathered = "view", 0
    else:
        index = new.add_param(layer_name(op) + ".input_index", np.asarray(idx, np.int64))
        xin = new.add_op("take", [xin, index], {"axis": ax}, names=[new.fresh_name(x.name + ".gather")]).result
        read, gathered = "gather", len(idx)
    per_channel = largest(x.type.numel) // n_in  # dynamic dims at their largest
    columns = [kept_in[i] for i in idx]
    report.layers.append(LayerReport(
        layer_name(op), op.kind, n_in, len(columns), op.results[0].type.shape[-1 if op.kind == "linear" else 1],
        len(kept_out), read, gathered, gathered * per_channel * 4, len(zero),
    ))
    w = _take(_take(module.params[op.operands[1].name], kept_out, 0), columns, 1)
    if zero:
        w[:, [columns.index(p) for p in zero]] = 0
    out = [xin, new.add_param(op.operands[1].name, w)]
    if len(op.operands) == 3:
        out.append(new.add_param(op.operands[2].name, _take(module.params[op.operands[2].name], kept_out, 0)))
    return out


def masked_copy(module, masks_by_name: dict, side: str = "input"):
    """The masked model: a copy of ``module`` whose consumers' dropped input columns
    (or producers' dropped output rows and biases) are zero — the oracle every
    pruned export must equal."""
    masked = module.clone()
    zero_channels(masked, masks_by_name, side)
    return masked


def format_report(report: PruneReport) -> str:
    rows = [("layer", "in", "out", "read", "gathered", "bytes copied")]
    for r in report.layers:
        rows.append((r.name, f"{r.in_before} -> {r.in_after}", f"{r.out_before} -> {r.out_after}", r.read,
                     str(r.gathered), f"{r.bytes_copied:,}"))
    lines = table_lines(rows)
    lines.append(f"params {report.params_before:,} -> {report.params_after:,}   "
                 f"MACs {report.macs_before:,} -> {report.macs_after:,}   gathers {report.gathers}, "
                 f"{report.gathered_channels} channels, {report.bytes_copied:,} bytes copied per inference")
    if report.zero_filled:
        lines.append(f"holes=zero: {report.zero_filled} channels read through views only to meet zero weights")
    if report.reorder is not None:
        lines.append(format_reorder(report.reorder))
    return "\n".join(lines) + "\n"


def format_reorder(r: dict) -> str:
    """One line on how the channel order was found."""
    text = f"reorder: {r['groups']} channel group(s) read in part, {r['exact']} ordered exactly (consecutive-ones)"
    if r["heuristic"]:
        left = "bytes still copied" if r.get("holes", "gather") == "gather" else "bytes' worth of reads zero-filled"
        text += f", {r['heuristic']} greedily: {r['heuristic_bytes']:,} {left}"
        if r["searched"]:
            text += (f" ({r['searched_bytes']:,} in the {r['searched']} small enough to search, "
                     f"whose optimum is {r['optimum_bytes']:,})")
    if r["unavoidable_bytes"]:
        text += f"; {r['unavoidable_bytes']:,} bytes no order avoids (an inner concat block read in part)"
    return text


@register
@dataclass(frozen=True)
class Prune(Pass):
    """Constraint-free channel pruning of conv/linear input or output channels (UPSCALE)."""

    name = "prune"
    method: str = "l2"
    amount: float = 0.3
    scope: str = "layer"
    side: str = "input"
    constrained: bool = False
    reorder: bool = True
    holes: str = "gather"
    masks: dict | None = field(default=None, compare=False, hash=False)
    # method=act: inputs to measure each layer input's channel RMS on, or the measured RMS (input_rms)
    calibration: tuple | None = field(default=None, compare=False, hash=False, repr=False)
    activations: dict | None = field(default=None, compare=False, hash=False, repr=False)

    def plan(self, module) -> PrunePlan:
        """Choose masks and the export layout.  With ``side="output"`` the dropped
        output rows of ``module``'s layers are zeroed in place (the masked model)
        and consumers stop reading the channels that became zero."""
        if self.side not in ("input", "output"):
            raise SliverError(f"pruning side must be 'input' or 'output', got {self.side!r}")
        if self.holes not in ("gather", "zero"):
            raise SliverError(f"pruning holes must be 'gather' (copy a consumer's channels together) or 'zero' "
                              f"(read the run around them, zero weights in between), got {self.holes!r}")
        analysis = ChannelAnalysis.run(module)
        if not analysis.consumers():
            raise SliverError(f"@{module.name} has no conv2d/linear layer whose input channels can be pruned")
        act = self.activations
        if self.method == "act" and act is None and self.calibration is not None and not self.masks:
            act = input_rms(module, self.calibration)
        if self.constrained:
            if self.side == "output" or self.masks:
                raise SliverError("constrained pruning chooses whole coupled channel groups itself: "
                                  "drop side=output / masks, or drop constrained")
            masks = constrain(module, analysis, method=self.method, amount=self.amount, activations=act)
        elif self.side == "output":
            chosen = output_masks(module, analysis, method=self.method, amount=self.amount, scope=self.scope,
                                  masks=self.masks)
            by_name = {layer_name(op): kept for op in producers(module, analysis)
                       if (kept := chosen.get(id(op))) is not None}
            zero_channels(module, by_name, "output")
            plan = resolve(module, analysis, drop_zero_inputs(module, analysis))
            plan.output_masks, plan.holes = by_name, self.holes
            if self.reorder:
                plan.rank, plan.reorder = choose_order(module, plan)
            return plan
        else:
            masks = consumer_masks(module, analysis, method=self.method, amount=self.amount, scope=self.scope,
                                   masks=self.masks, activations=act)
        plan = resolve(module, analysis, masks)
        plan.holes = self.holes
        if self.reorder and not self.constrained:
            plan.rank, plan.reorder = choose_order(module, plan)
        return plan

    def run(self, module):
        plan = self.plan(module)
        names = {layer_name(op): plan.masks[id(op)] for op in plan.analysis.consumers() if id(op) in plan.masks}
        notes = {"side": self.side, "masks": names}
        if plan.output_masks is not None:
            # the oracle is masked_copy(original, masks, side="output"); input_masks are what it implies
            notes = {"side": "output", "masks": plan.output_masks, "input_masks": names}
        report = rewrite(module, plan)
        report.reorder = plan.reorder
        return True, {**notes, "report": report.as_dict(), "text": format_report(report)}
