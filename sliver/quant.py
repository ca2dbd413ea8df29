"""Mixed-precision bit allocation: Hessian sensitivity × the cost of each width.

    import sliver.quant, sliver.qat
    loss = torch.nn.functional.cross_entropy
    alloc = sliver.quant.allocate(model, (x_train, y_train), loss, budget="3bits")
    qmodel = sliver.qat.prepare(model, layers=alloc.layers)      # then fine-tune as usual
    print(alloc.report())
    alloc.plot("front.png")

**Sensitivity** (HAWQ-V2, Dong et al. 2020).  For every ``nn.Conv2d`` / ``nn.Linear``
layer *i* with weights W_i (n_i numbers), :func:`sensitivity` estimates the trace of the
loss Hessian's diagonal block Tr(H_i) with Hutchinson's method: for Rademacher vectors
v over all the layers' weights at once, E[v_iᵀ (Hv)_i] = Tr(H_i) (the cross terms have
mean zero), with one Hessian-vector product (double backward through ``torch.autograd``)
per sample.  Samples are drawn until every layer's estimate has a standard error below
``rtol`` of its magnitude (the convergence test), or ``max_iters``.  The perturbation of
quantizing the layer to b bits is

    Ω_i(b) = Tr(H_i) / n_i · ‖Q_b(W_i) − W_i‖²

where Q_b is **the quantizer** ``sliver.qat`` **trains with**: per-output-channel
symmetric codes in [−2^(b−1), 2^(b−1)−1] at the LSQ initial scale 2·mean|w|/√qmax
(:class:`sliver.qat.LearnedQuant`, initialised on W_i), i.e. what the layer starts its
fine-tuning from.

**Cost.**  Either the packed weights (ceil(n_i·b/8) bytes; a budget in bits per weight
or bytes), or a :class:`CostTable` measured on a target: per layer and width, the
latency on x86 or the modeled Cortex-A72 cycles / executed instructions on the
emulated Pi, from sliver's own profiling (``sliver.tools.layercost.measure``, cached on
disk; ``sliver allocate --target``).  Costs add up over layers.

**Allocation.**  :func:`pareto_front` keeps every allocation not beaten on both Σ Ω
and cost (exact merge of the per-layer choices with dominance pruning);
:func:`allocate` returns the front's point with the least Σ Ω within the budget, as
an :class:`Allocation`: ``layers`` for ``sliver.qat.prepare``, ``ptq_config()`` for
post-training quantization (:func:`calibrate`), a Markdown ``report()`` and a PNG
``plot()`` (matplotlib) of the front with the chosen point.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn

from sliver.common.errors import SliverError
from sliver.common.text import table_lines

DEFAULT_WIDTHS = (2, 3, 4, 8)
SIZE_UNITS = ("bits", "bytes")
UNITS = ("bits", "bytes", "ms", "cycles", "instructions")


class QuantError(SliverError):
    """Bad input to sliver.quant: what is wrong and how to fix it."""


# -- inputs ---------------------------------------------------------------------------------------


def quant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv2d / Linear layers (QAT versions included), in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _check_model(model) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise QuantError(f"sliver.quant: model must be a torch.nn.Module, got {type(model).__name__}")
    layers = quant_layers(model)
    if not layers:
        raise QuantError("sliver.quant: the model has no nn.Conv2d or nn.Linear layer to quantize")
    return layers


def _check_widths(widths) -> tuple[int, ...]:
    try:
        ws = tuple(widths)
    except TypeError:
        ws = (widths,)
    bad = [w for w in ws if not isinstance(w, int) or isinstance(w, bool) or not 2 <= w <= 8]
    if not ws or bad:
        raise QuantError(f"sliver.quant: widths must be ints in 2..8 (sliver.qat's weight widths), got {widths!r}")
    if len(set(ws)) != len(ws):
        raise QuantError(f"sliver.quant: widths {widths!r} repeat a width")
    return tuple(sorted(ws))


def activation_widths(widths: Sequence[int], a_widths=None) -> dict[int, int]:
    """``{weight width: activation width}``: ``None`` pairs each width with itself
    (W2A2, W4A4, …), an int fixes every layer's activations, a sequence as long as
    ``widths`` pairs them in order."""
    if a_widths is None:
        pairs = {w: w for w in widths}
    elif isinstance(a_widths, int) and not isinstance(a_widths, bool):
        pairs = {w: a_widths for w in widths}
    else:
        try:
            a = tuple(a_widths)
        except TypeError:
            a = ()
        if len(a) != len(widths):
            raise QuantError(f"sliver.quant: a_widths must be None, an int, or one activation width per "
                             f"weight width {tuple(widths)}; got {a_widths!r}")
        pairs = dict(zip(widths, a))
    bad = [a for a in pairs.values() if not isinstance(a, int) or isinstance(a, bool) or not 1 <= a <= 8]
    if bad:
        raise QuantError(f"sliver.quant: activation widths must be ints in 1..8, got {a_widths!r}")
    return pairs


def _batches(data) -> list[tuple]:
    """``data`` as a list of (inputs, target) batches: one ``(x, y)`` tuple, or an
    iterable of them (a DataLoader)."""
    def is_batch(d):
        return isinstance(d, (tuple, list)) and len(d) == 2 and isinstance(d[0], torch.Tensor)

    if is_batch(data):
        batches = [tuple(data)]
    else:
        try:
            batches = [tuple(b) for b in data]
        except TypeError:
            batches = None
        if batches is not None and not all(is_batch(b) for b in batches):
            batches = None
    if not batches:
        raise QuantError("sliver.quant: data must be an (inputs, targets) pair of tensors or a non-empty "
                         "iterable of such batches (e.g. a DataLoader)")
    return batches


# -- the quantizer ------------------------------------------------------------------------------


@torch.no_grad()
def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Q_b(W): ``w`` fake-quantized as ``sliver.qat`` starts a layer's training
    (per output channel, symmetric, LSQ initial scale)."""
    from sliver.qat import LearnedQuant

    q = LearnedQuant(bits, channels=w.shape[0], signed=True)
    q._init(w.detach().float())
    q.eval()
    return q(w.detach().float())


# -- Hutchinson -----------------------------------------------------------------------------------


@dataclass
class LayerSensitivity:
    name: str
    kind: str  # "Conv2d" / "Linear"
    numel: int
    trace: float  # Hutchinson estimate of Tr(H_i)
    trace_se: float  # its standard error
    sq_err: dict = field(default_factory=dict)  # {bits: ‖Q_b(W) − W‖²}
    omega: dict = field(default_factory=dict)  # {bits: Tr(H)/n · ‖Q_b(W) − W‖²}
    # the same for the layer's input activation X over the data (HAWQ-V2's activation
    # term): m elements, Tr(H_X), and {a_bits: Tr(H_X)/m · ‖Q_a(X) − X‖²}; empty if not measured
    a_numel: int = 0
    a_trace: float = 0.0
    a_trace_se: float = 0.0
    a_omega: dict = field(default_factory=dict)

    @property
    def avg_trace(self) -> float:
        return self.trace / self.numel

    def total_omega(self, w_bits: int, a_bits: int) -> float:
        """Ω of the layer at W``w_bits``A``a_bits``: the weight term plus, when it was
        measured, the input activation's."""
        return self.omega[w_bits] + (self.a_omega[a_bits] if self.a_omega else 0.0)


@dataclass
class Sensitivity:
    layers: list[LayerSensitivity]
    iterations: int
    converged: bool
    rtol: float
    samples: int  # data samples in the loss
    a_iterations: int = 0  # Hutchinson samples of the activation traces (per batch, summed)

    def __getitem__(self, name: str) -> LayerSensitivity:
        for ls in self.layers:
            if ls.name == name:
                return ls
        raise KeyError(name)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(self.layers[0].omega))

    def omega(self, pairs: dict | None = None) -> dict[str, dict[int, float]]:
        """``{layer: {w_bits: Ω}}``; with ``pairs`` (``{w_bits: a_bits}``) Ω includes the
        activation term at each weight width's activation width."""
        if pairs is None:
            return {ls.name: dict(ls.omega) for ls in self.layers}
        return {ls.name: {b: ls.total_omega(b, pairs[b]) for b in pairs} for ls in self.layers}

    def table(self) -> str:
        ws = self.widths
        acts = all(ls.a_omega for ls in self.layers)
        rows = [("layer", "kind", "weights", "Tr(H)", "± se", "Tr(H)/n", *[f"Ω({w})" for w in ws],
                 *(("Tr(H_X)/m", *[f"Ω_X({w})" for w in ws]) if acts else ()))]
        for ls in self.layers:
            rows.append((ls.name, ls.kind, f"{ls.numel:,}", f"{ls.trace:.4g}", f"{ls.trace_se:.2g}",
                         f"{ls.avg_trace:.4g}", *[f"{ls.omega[w]:.3g}" for w in ws],
                         *((f"{ls.a_trace / ls.a_numel:.4g}", *[f"{ls.a_omega[w]:.3g}" for w in ws]) if acts else ())))
        return "\n".join(table_lines(rows)) + "\n"


def _loss(model, batch, loss_fn, weight: float) -> torch.Tensor:
    x, y = batch
    loss = loss_fn(model(x), y)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise QuantError("sliver.quant: loss_fn(model(x), y) must return a scalar tensor "
                         f"(got {type(loss).__name__} of shape {tuple(getattr(loss, 'shape', ()))})")
    if not loss.requires_grad:
        raise QuantError("sliver.quant: the loss does not depend on the layers' weights "
                         "(loss_fn must return a differentiable tensor, not a detached value)")
    return loss.reshape(()) * weight


def hutchinson_trace(model: nn.Module, data, loss_fn: Callable, params: Sequence[torch.Tensor], *,
                     rtol: float = 0.02, min_iters: int = 10, max_iters: int = 500, seed: int = 0):
    """Per-parameter Hutchinson estimates of the Hessian diagonal blocks' traces of the
    mean loss over ``data``: ``(means, standard errors, iterations, converged)``.
    Stops when every block's standard error is ≤ ``rtol`` × |mean| (after ``min_iters``)."""
    batches = _batches(data)
    total = sum(len(b[0]) for b in batches)
    gen = torch.Generator().manual_seed(seed)
    graphs = None
    if len(batches) == 1:  # keep the first-order graph, one backward per sample
        loss = _loss(model, batches[0], loss_fn, 1.0)
        graphs = [torch.autograd.grad(loss, params, create_graph=True)]
    sums = [0.0] * len(params)
    sqs = [0.0] * len(params)
    k = 0
    converged = False
    while k < max_iters:
        vs = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1 for p in params]
        hv = [torch.zeros_like(p) for p in params]
        for bi, batch in enumerate(batches):
            if graphs is not None:
                grads = graphs[0]
            else:
                grads = torch.autograd.grad(_loss(model, batch, loss_fn, len(batch[0]) / total), params,
                                            create_graph=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vs))
            parts = torch.autograd.grad(dot, params, retain_graph=graphs is not None, allow_unused=True)
            hv = [h + (p if p is not None else 0) for h, p in zip(hv, parts)]
        k += 1
        for i, (v, h) in enumerate(zip(vs, hv)):
            e = float((v * h).sum())
            sums[i] += e
            sqs[i] += e * e
        if k >= min_iters:
            means = [s / k for s in sums]
            ses = [math.sqrt(max(q / k - m * m, 0.0) * k / (k - 1) / k) for q, m in zip(sqs, means)]
            if all(se <= rtol * abs(m) for se, m in zip(ses, means)):
                converged = True
                break
    means = [s / k for s in sums]
    ses = [math.sqrt(max(q / k - m * m, 0.0) * k / max(k - 1, 1) / k) for q, m in zip(sqs, means)]
    return means, ses, k, converged


def sensitivity(model: nn.Module, data, loss_fn: Callable, *, widths: Sequence[int] = DEFAULT_WIDTHS,
                rtol: float = 0.02, min_iters: int = 10, max_iters: int = 500, seed: int = 0,
                activations: bool = True) -> Sensitivity:
    """Per-layer Hessian trace (Hutchinson) and Ω_i(b) for each width b in ``widths``.

    ``data``: an ``(inputs, targets)`` pair or an iterable of them; ``loss_fn(outputs,
    targets)`` returns the scalar loss (e.g. ``F.cross_entropy``).  The model is
    evaluated in eval mode on a copy: yours is not changed.

    ``activations``: also estimate, as HAWQ-V2 does for mixed-precision activations, the
    trace of the Hessian with respect to each layer's input activation X over the data
    and Ω_X(a) = Tr(H_X)/m · ‖Q_a(X) − X‖² for a = 1..8 (Q_a: the per-tensor quantizer
    ``sliver.qat`` starts from); an allocation then adds Ω_X at each width's activation
    width, so a layer whose input is sensitive is not given few activation bits."""
    _check_model(model)
    widths = _check_widths(widths)
    if not callable(loss_fn):
        raise QuantError(f"sliver.quant: loss_fn must be callable (outputs, targets) -> scalar, got {loss_fn!r}")
    if not (0 < rtol < 1) or min_iters < 2 or max_iters < min_iters:
        raise QuantError(f"sliver.quant: need 0 < rtol < 1 and 2 <= min_iters <= max_iters "
                         f"(got rtol={rtol}, min_iters={min_iters}, max_iters={max_iters})")
    batches = _batches(data)
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    layers = quant_layers(work)
    params = [m.weight for _, m in layers]
    for p in params:
        p.requires_grad_(True)
    try:
        means, ses, k, converged = hutchinson_trace(work, batches, loss_fn, params, rtol=rtol, min_iters=min_iters,
                                                    max_iters=max_iters, seed=seed)
    except RuntimeError as e:
        raise QuantError(f"sliver.quant: running the model and loss on the data failed: {e}") from None
    out = []
    for (name, m), tr, se in zip(layers, means, ses):
        w = m.weight.detach()
        n = w.numel()
        sq = {b: float(((quantize_weight(w, b) - w) ** 2).sum()) for b in widths}
        # at a minimum the trace is >= 0; a negative estimate (not at a minimum, or noise)
        # would reward coarser widths, so the perturbation counts it as 0
        om = {b: max(tr, 0.0) / n * sq[b] for b in widths}
        kind = "Conv2d" if isinstance(m, nn.Conv2d) else "Linear"
        out.append(LayerSensitivity(name, kind, n, tr, se, sq, om))
    a_iters = 0
    if activations:
        for p in params:
            p.requires_grad_(False)
        try:
            a_iters, a_converged = _activation_terms(work, [m for _, m in layers], batches, loss_fn, out, rtol=rtol,
                                                     min_iters=min_iters, max_iters=max_iters, seed=seed)
        except RuntimeError as e:
            raise QuantError(f"sliver.quant: running the model and loss on the data failed: {e}") from None
        converged = converged and a_converged
    return Sensitivity(out, k, converged, rtol, sum(len(b[0]) for b in batches), a_iters)


def _activation_terms(model, modules, batches, loss_fn, out: list[LayerSensitivity], **hutchinson) -> tuple[int, bool]:
    """Fill each layer's activation fields: Hutchinson on zero "probes" added to the
    layers' inputs (the Hessian with respect to a probe at 0 is the one with respect to
    the input, and the graph through earlier layers stays whole), one run per batch
    (the loss is a weighted sum over batches, so the traces add).  Skipped — empty
    ``a_omega`` for every layer — when a layer does not run exactly once per forward."""
    total = sum(len(b[0]) for b in batches)
    traces, variances, numel = [0.0] * len(modules), [0.0] * len(modules), [0] * len(modules)
    sq = [dict.fromkeys(range(1, 9), 0.0) for _ in modules]
    quants: list = [None] * len(modules)
    iters, converged = 0, True
    for bi, batch in enumerate(batches):
        seen: dict = {}

        def record(i):
            return lambda m, args: seen.setdefault(i, []).append(args[0].detach())

        hooks = [m.register_forward_pre_hook(record(i)) for i, m in enumerate(modules)]
        try:
            with torch.no_grad():
                model(batch[0])
        finally:
            for h in hooks:
                h.remove()
        if any(len(seen.get(i, [])) != 1 for i in range(len(modules))):
            return 0, True  # a layer used twice (or not at all): its input is not one activation
        xs = [seen[i][0] for i in range(len(modules))]
        probes = [torch.zeros_like(x, requires_grad=True) for x in xs]

        def probe(i):
            return lambda m, args: (args[0] + probes[i], *args[1:])

        hooks = [m.register_forward_pre_hook(probe(i)) for i, m in enumerate(modules)]
        weight = len(batch[0]) / total
        try:
            means, ses, k, ok = hutchinson_trace(model, [batch], lambda o, t: loss_fn(o, t) * weight, probes,
                                                 **{**hutchinson, "seed": hutchinson["seed"] + bi})
        finally:
            for h in hooks:
                h.remove()
        iters, converged = iters + k, converged and ok
        for i, x in enumerate(xs):
            traces[i] += means[i]
            variances[i] += ses[i] ** 2
            numel[i] += x.numel()
            if quants[i] is None:  # scales from the first batch, as sliver.qat's first training step
                quants[i] = {a: _activation_quantizer(a, x) for a in sq[i]}
            with torch.no_grad():
                for a, q in quants[i].items():
                    sq[i][a] += float(((q(x) - x) ** 2).sum())
    for ls, tr, var, m, errs in zip(out, traces, variances, numel, sq):
        ls.a_numel, ls.a_trace, ls.a_trace_se = m, tr, math.sqrt(var)
        ls.a_omega = {a: max(tr, 0.0) / m * e for a, e in errs.items()}
    return iters, converged


@torch.no_grad()
def _activation_quantizer(bits: int, x: torch.Tensor):
    """Q_a: the per-tensor input quantizer ``sliver.qat`` starts a layer's training
    from (sign and LSQ initial scale from ``x``)."""
    from sliver.qat import LearnedQuant

    q = LearnedQuant(bits)
    q._init(x.float())
    return q.eval()


# -- cost -----------------------------------------------------------------------------------------


@dataclass
class CostTable:
    """Per layer and weight width, what that layer costs: ``costs[layer][w_bits]`` in
    ``unit`` ("bytes", "ms", "cycles", "instructions"), measured with activations at
    ``a_bits[w_bits]``.  ``fixed`` is the part of the model outside the layers."""

    unit: str
    target: str
    costs: dict
    a_bits: dict
    source: str = ""
    fixed: float = 0.0

    def total(self, widths: dict) -> float:
        return self.fixed + sum(self.costs[n][w] for n, w in widths.items())

    def to_json(self) -> dict:
        return {"unit": self.unit, "target": self.target, "source": self.source, "fixed": self.fixed,
                "a_bits": {str(k): v for k, v in self.a_bits.items()},
                "costs": {n: {str(w): c for w, c in d.items()} for n, d in self.costs.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "CostTable":
        try:
            return cls(d["unit"], d["target"], {n: {int(w): float(c) for w, c in v.items()} for n, v in d["costs"].items()},
                       {int(k): int(v) for k, v in d["a_bits"].items()}, d.get("source", ""), float(d.get("fixed", 0.0)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise QuantError(f"sliver.quant: not a cost table ({e}); measure one with sliver.tools.layercost") from None


def size_table(model: nn.Module, widths: Sequence[int] = DEFAULT_WIDTHS, a_widths=None) -> CostTable:
    """Bytes of packed weight codes per layer and width: ceil(n·b/8)."""
    widths = _check_widths(widths)
    return CostTable("bytes", "packed weights",
                     {n: {b: float(math.ceil(m.weight.numel() * b / 8)) for b in widths} for n, m in _check_model(model)},
                     activation_widths(widths, a_widths), "ceil(weights × bits / 8) per layer")


_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_SUFFIX = {
    "bits": (1, "bits"), "bit": (1, "bits"), "b": (1, "bits"),
    "bytes": (1, "bytes"), "byte": (1, "bytes"), "B": (1, "bytes"), "KB": (1e3, "bytes"), "kB": (1e3, "bytes"),
    "KiB": (1024, "bytes"), "MB": (1e6, "bytes"), "MiB": (1024**2, "bytes"),
    "ms": (1, "ms"), "us": (1e-3, "ms"), "s": (1e3, "ms"),
    "cycles": (1, "cycles"), "kcycles": (1e3, "cycles"), "Mcycles": (1e6, "cycles"), "Gcycles": (1e9, "cycles"),
    "instructions": (1, "instructions"), "kinstructions": (1e3, "instructions"),
    "Minstructions": (1e6, "instructions"), "instr": (1, "instructions"), "Minstr": (1e6, "instructions"),
}


def parse_budget(budget) -> tuple[float, str]:
    """``"4.5bits"`` (mean bits per weight), ``"500KB"``, ``"2.0ms"``, ``"1.2Mcycles"``,
    ``"300kinstructions"`` → (value, unit) with unit in bits/bytes/ms/cycles/instructions."""
    if isinstance(budget, tuple) and len(budget) == 2 and budget[1] in UNITS:
        value, unit = budget
    else:
        m = _BUDGET.match(budget) if isinstance(budget, str) else None
        if not m or m.group(2) not in _SUFFIX:
            raise QuantError(f"sliver.quant: budget {budget!r} not understood: give a number with a unit, "
                             "e.g. 4.5bits (mean bits per weight), 500KB or 3000B (packed weights), 2.0ms "
                             "(x86 latency), 1.2Mcycles (modeled Pi cycles) or 300kinstructions")
        scale, unit = _SUFFIX[m.group(2)]
        value = float(m.group(1)) * scale
    if not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise QuantError(f"sliver.quant: budget must be positive, got {budget!r}")
    return float(value), unit


# -- the Pareto front -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    cost: float
    omega: float
    widths: tuple  # one weight width per layer, in layer order


def pareto_front(omega: dict[str, dict[int, float]], costs: dict[str, dict[int, float]], *,
                 max_points: int = 20000) -> list[Point]:
    """Every allocation not beaten on both Σ Ω and Σ cost, cheapest first.  Exact
    (per-layer merge with dominance pruning) unless the front outgrows ``max_points``,
    when it is thinned to evenly spaced costs between merges."""
    names = list(omega)
    front = [(0.0, 0.0, ())]
    for n in names:
        merged = [(c + costs[n][b], o + omega[n][b], ws + (b,)) for c, o, ws in front for b in omega[n]]
        merged.sort(key=lambda t: (t[0], t[1]))
        front = []
        best = math.inf
        for c, o, ws in merged:
            if o < best:
                front.append((c, o, ws))
                best = o
        if len(front) > max_points:
            step = len(front) / max_points
            front = [front[int(i * step)] for i in range(max_points - 1)] + [front[-1]]
    return [Point(c, o, ws) for c, o, ws in front]


# -- the allocation -------------------------------------------------------------------------------


@dataclass
class Allocation:
    """The chosen widths and how they were chosen."""

    names: list
    widths: dict  # {layer: w_bits}
    a_bits: dict  # {layer: a_bits}
    omega: float
    cost: float  # in table.unit (size: bytes)
    budget: float  # in budget_unit
    budget_unit: str
    table: CostTable
    sensitivity: Sensitivity
    front: list = field(default_factory=list)
    numel: dict = field(default_factory=dict)

    @property
    def layers(self) -> dict:
        """``layers=`` for :func:`sliver.qat.prepare`: ``{name: (w_bits, a_bits)}``."""
        return {n: (self.widths[n], self.a_bits[n]) for n in self.names}

    @property
    def mean_bits(self) -> float:
        return sum(self.numel[n] * self.widths[n] for n in self.names) / sum(self.numel.values())

    @property
    def packed_bytes(self) -> int:
        return sum(math.ceil(self.numel[n] * self.widths[n] / 8) for n in self.names)

    def ptq_config(self) -> dict:
        """The allocation as a post-training quantization config (JSON-able):
        :func:`calibrate` applies it."""
        return {"quantizer": "sliver.qat (per-channel symmetric weights, per-tensor activations, LSQ scales)",
                "layers": {n: {"w_bits": self.widths[n], "a_bits": self.a_bits[n]} for n in self.names}}

    def to_json(self) -> dict:
        return {"layers": {n: [self.widths[n], self.a_bits[n]] for n in self.names},
                "omega": self.omega, "cost": self.cost, "unit": self.table.unit, "target": self.table.target,
                "budget": self.budget, "budget_unit": self.budget_unit, "mean_bits": self.mean_bits,
                "packed_bytes": self.packed_bytes, "ptq": self.ptq_config(),
                "sensitivity": {ls.name: {"trace": ls.trace, "trace_se": ls.trace_se, "numel": ls.numel,
                                          "omega": {str(b): o for b, o in ls.omega.items()},
                                          "activation": {"trace": ls.a_trace, "trace_se": ls.a_trace_se,
                                                         "numel": ls.a_numel,
                                                         "omega": {str(a): o for a, o in ls.a_omega.items()}}}
                                for ls in self.sensitivity.layers},
                "hutchinson": {"iterations": self.sensitivity.iterations, "converged": self.sensitivity.converged,
                               "rtol": self.sensitivity.rtol},
                "cost_table": self.table.to_json(),
                "front": [{"cost": p.cost, "omega": p.omega, "widths": list(p.widths)} for p in self.front]}

    def report(self) -> str:
        """Markdown: the chosen widths per layer, the sensitivities, the front."""
        s, t = self.sensitivity, self.table
        unit = t.unit
        lines = ["# sliver allocate", "",
                 f"Budget {_fmt_budget(self.budget, self.budget_unit)}; cost: {unit} ({t.target}; {t.source}). "
                 f"Chosen: Σ Ω = {self.omega:.4g}, cost {_fmt_cost(self.cost, unit)}, "
                 f"{self.mean_bits:.2f} bits per weight, {self.packed_bytes:,} bytes of packed weights.", "",
                 f"Hutchinson: {s.iterations} samples on {s.samples} data points, "
                 + ("converged" if s.converged else "NOT converged")
                 + f" (every layer's standard error ≤ {s.rtol:g} of its trace).", ""]
        ws = [b for b in s.widths if b in t.a_bits]
        lines += ["Ω(b): weights at b bits and the layer's input at a_bits(b) = "
                  + ", ".join(f"{b}→{t.a_bits[b]}" for b in ws)
                  + (" (weight term + activation term)." if all(ls.a_omega for ls in s.layers) else
                     " (weight term only: the activation term was not measured)."), ""]
        rows = [("layer", "weights", "Tr(H)/n", *[f"Ω({b})" for b in ws], "w_bits", "a_bits", f"cost ({unit})")]
        for ls in s.layers:
            n = ls.name
            rows.append((n, f"{ls.numel:,}", f"{ls.avg_trace:.3g}", *[f"{ls.total_omega(b, t.a_bits[b]):.3g}" for b in ws],
                         str(self.widths[n]), str(self.a_bits[n]), _fmt_cost(t.costs[n][self.widths[n]], unit)))
        lines += _md_table(rows) + [""]
        lines += [f"Pareto front: {len(self.front)} allocations (widths in layer order: {', '.join(self.names)})", ""]
        rows = [(f"cost ({unit})", "Σ Ω", "widths", "")]
        shown = self.front if len(self.front) <= 40 else self.front[:: max(1, len(self.front) // 40)]
        for p in shown:
            mark = "← chosen" if p.widths == tuple(self.widths[n] for n in self.names) else ""
            rows.append((_fmt_cost(p.cost, unit), f"{p.omega:.4g}", "/".join(map(str, p.widths)), mark))
        lines += _md_table(rows)
        lines += ["", "For QAT: `sliver.qat.prepare(model, layers=" + repr(self.layers) + ")`", ""]
        return "\n".join(lines)

    def plot(self, path) -> str:
        """A PNG of the front (cost vs Σ Ω) with the chosen point and the budget."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise QuantError("the plot needs matplotlib: pip install 'sliver[quant]' (or pip install matplotlib)") \
                from None
        from sliver.common.files import atomic_write

        unit = self.table.unit
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        xs = [p.cost for p in self.front]
        ax.step(xs, [p.omega for p in self.front], where="post", color="0.6", lw=1)
        ax.plot(xs, [p.omega for p in self.front], "o", ms=3, color="tab:blue", label="Pareto front")
        ax.plot([self.cost], [self.omega], "*", ms=14, color="tab:red",
                label="chosen: " + "/".join(str(self.widths[n]) for n in self.names))
        budget_cost = self.budget * sum(self.numel.values()) / 8 if self.budget_unit == "bits" else self.budget
        ax.axvline(budget_cost, ls="--", color="tab:red", lw=1, label=f"budget {_fmt_budget(self.budget, self.budget_unit)}")
        ax.set_yscale("log" if all(p.omega > 0 for p in self.front) else "linear")
        ax.set_xlabel(f"{unit} ({self.table.target})")
        ax.set_ylabel("Σ Ω  (Tr(H)/n · ‖Q(W) − W‖²)")
        ax.set_title("sliver allocate: sensitivity vs cost")
        ax.legend(fontsize=8)
        fig.tight_layout()
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        return str(atomic_write(path, lambda f: f.write(buf.getvalue())))


def _md_table(rows) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return out + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def _fmt_cost(c: float, unit: str) -> str:
    if unit == "ms":
        return f"{c:.4f} ms"
    return f"{c:,.0f} {unit}"


def _fmt_budget(v: float, unit: str) -> str:
    return f"{v:g} bits per weight" if unit == "bits" else _fmt_cost(v, unit)


def allocate(model: nn.Module, data=None, loss_fn: Callable | None = None, *, budget, target=None,
             widths: Sequence[int] = DEFAULT_WIDTHS, a_widths=None, sensitivity: Sensitivity | None = None,
             **hutchinson) -> Allocation:
    """The allocation of ``widths`` to the model's Conv2d/Linear layers with the least
    Σ Ω whose cost is within ``budget``.

    ``budget``: ``"4.5bits"`` (mean bits per weight), ``"500KB"`` (packed weights),
    ``"2.0ms"``, ``"1.2Mcycles"``, ``"300kinstructions"``.  ``target``: ``None`` for
    packed-weight size, or a :class:`CostTable` measured on a target
    (``sliver.tools.layercost.measure``) in the budget's unit.  ``a_widths``: the
    activation widths (None: each weight width's own, an int: all layers).
    ``sensitivity``: reuse an earlier :func:`sensitivity` instead of ``data``/``loss_fn``
    (``hutchinson`` keywords go to it otherwise)."""
    layers = _check_model(model)
    widths = _check_widths(widths)
    pairs = activation_widths(widths, a_widths)
    value, unit = parse_budget(budget)
    names = [n for n, _ in layers]
    numel = {n: m.weight.numel() for n, m in layers}
    if target is None or (isinstance(target, str) and target in ("size", "bytes")):
        if unit not in SIZE_UNITS:
            raise QuantError(f"sliver.quant: a budget in {unit} needs the cost measured on a target: "
                             f"target=sliver.tools.layercost.measure(model, example_inputs, target=...) "
                             f"(or `sliver allocate --target`)")
        table = size_table(model, widths, a_widths)
    elif isinstance(target, CostTable):
        table = target
        if unit in SIZE_UNITS or unit != table.unit:
            raise QuantError(f"sliver.quant: the budget is in {unit} but the cost table is in {table.unit}: "
                             f"give a budget in {table.unit}, or target=None for a size budget")
        missing = [n for n in names if n not in table.costs or any(b not in table.costs[n] for b in widths)]
        if missing:
            raise QuantError(f"sliver.quant: the cost table has no cost for {', '.join(missing)} at every width "
                             f"{widths}: measure it for this model and these widths")
        if any(table.a_bits.get(b) != pairs[b] for b in widths):
            raise QuantError(f"sliver.quant: the cost table was measured with activation widths {table.a_bits}, "
                             f"the allocation asks for {pairs}: measure again with the same a_widths")
    else:
        raise QuantError(f"sliver.quant: target must be None (packed-weight size) or a CostTable from "
                         f"sliver.tools.layercost.measure (the layer has no access to a compiler target by name), "
                         f"got {target!r}")
    limit = value * sum(numel.values()) / 8 if unit == "bits" else value
    limit -= table.fixed
    cheapest = sum(min(table.costs[n][b] for b in widths) for n in names)
    if cheapest > limit * (1 + 1e-9):  # before the Hessian: fail fast
        least = (cheapest + table.fixed) * 8 / sum(numel.values()) if unit == "bits" else cheapest + table.fixed
        raise QuantError(f"sliver.quant: no allocation of widths {widths} fits the budget "
                         f"{_fmt_budget(value, unit)}; the cheapest needs {_fmt_budget(least, unit)}")
    if sensitivity is None:
        if data is None or loss_fn is None:
            raise QuantError("sliver.quant.allocate needs data and loss_fn (or a precomputed sensitivity=)")
        sensitivity = globals()["sensitivity"](model, data, loss_fn, widths=widths, **hutchinson)
    else:
        if [ls.name for ls in sensitivity.layers] != names or set(sensitivity.widths) < set(widths):
            raise QuantError("sliver.quant: the given sensitivity is for other layers or widths: "
                             "compute it for this model with the same widths")
    omega = sensitivity.omega({b: pairs[b] for b in widths})
    costs = {n: {b: table.costs[n][b] for b in widths} for n in names}
    front = pareto_front(omega, costs)
    fits = [p for p in front if p.cost <= limit * (1 + 1e-9)]
    best = min(fits, key=lambda p: (p.omega, p.cost))
    chosen = dict(zip(names, best.widths))
    return Allocation(names, chosen, {n: pairs[b] for n, b in chosen.items()}, best.omega, best.cost + table.fixed,
                      value, unit, table, sensitivity, [Point(p.cost + table.fixed, p.omega, p.widths) for p in front],
                      numel)


@torch.no_grad()
def calibrate(model: nn.Module, allocation, data) -> nn.Module:
    """Post-training quantization: ``sliver.qat.prepare`` with the allocation's widths
    (an :class:`Allocation`, its ``ptq_config()`` or a ``layers=`` map), scales set from
    one pass over ``data``'s first batch in training mode, no weight updates; returns the
    eval-mode fake-quant model ready for ``sliver.lower``."""
    import sliver.qat

    if isinstance(allocation, Allocation):
        layers = allocation.layers
    elif isinstance(allocation, dict) and "layers" in allocation and isinstance(allocation["layers"], dict) and all(
            isinstance(v, dict) for v in allocation["layers"].values()):
        try:
            layers = {n: (v["w_bits"], v["a_bits"]) for n, v in allocation["layers"].items()}
        except KeyError as e:
            raise QuantError(f"sliver.quant.calibrate: a PTQ config layer lacks {e}") from None
    elif isinstance(allocation, dict):
        layers = allocation
    else:
        raise QuantError("sliver.quant.calibrate: give an Allocation, its ptq_config() or a layers= map")
    x, _ = _batches(data)[0]
    q = sliver.qat.prepare(model, layers=layers)
    q.train()
    q(x)
    return q.eval()


def load_config(path) -> dict:
    """A PTQ config written by ``sliver allocate --json`` (its ``ptq`` entry) or by
    ``json.dump(alloc.ptq_config())``."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise QuantError(f"sliver.quant: cannot read the config {path}: {e}") from None
    d = d.get("ptq", d) if isinstance(d, dict) else d
    if not isinstance(d, dict) or not isinstance(d.get("layers"), dict):
        raise QuantError(f"sliver.quant: {path} is not a PTQ config (no 'layers' map)")
    return d


__all__ = ["sensitivity", "allocate", "pareto_front", "calibrate", "quantize_weight", "size_table", "parse_budget",
           "activation_widths", "Sensitivity", "LayerSensitivity", "CostTable", "Allocation", "Point", "QuantError",
           "load_config", "hutchinson_trace", "quant_layers"]
