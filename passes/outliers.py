"""find-outliers: super weights and super activations, found data-free (an analysis).

Background: "The Super Weight in Large Language Models" (Yu, Wan et al., 2024) and
"Massive Activations in Large Language Models" (Sun et al., 2024).  In trained
transformers a few single weights of the projections (typically the FFN output
projection) create activations hundreds to thousands of times the median of their
tensor, at one channel of one token; zeroing one such weight wrecks the model.

The pass changes nothing.  It returns a report (JSON-serializable notes):

1. **One forward pass** of the reference interpreter on a fixed input (given, or
   built from the module's input types by :func:`default_inputs`) records the
   input and output of every *projection*: a ``linear`` with a param weight, or a
   ``conv2d`` with a 1×1 param kernel and one group (a linear map over channels;
   every output pixel is a "token").
2. **Massive activations**: in each recorded tensor, viewed as ``[tokens, channels]``,
   an entry ``a`` is massive when ``|a| > max(abs_threshold, ratio × median)``,
   ``median`` being the median magnitude of the tensor's non-zero entries (so the
   zeros of a ReLU do not make everything look massive).  The default ratio, 100,
   is an order of magnitude above anything a bell-shaped tensor reaches (the max of
   10⁷ normal samples is ~8× their median magnitude) and a relaxed form of Sun et
   al.'s "~1000× the median"; there is no absolute floor by default, so the test is
   scale-free.  These form the *super-activation report*.
3. **Attribution** of each massive *output* activation ``y = Y[t, r]`` of a
   projection: the contributions ``W[r, c] · X[t, c]`` are taken greedily, largest
   first among those pushing ``y`` away from zero, and subtracted until what is left
   is no longer massive; this handles spikes split over a few weights (it iterates
   rather than pairing the argmax input channel with the argmax output channel).
   A spike that needs more than ``max_weights`` weights is *diffuse*: reported, not
   attributed.
4. **Verification by ablation**: zeroing the candidate weights of a spike changes
   that output by exactly their contributions (the projection's input does not
   depend on them), so no forward pass is needed to see whether the spike shrinks
   to at most ``shrink`` × its size (default: halved or more); in a group of
   several, a member is kept only if the spike stays massive when every other
   member is zeroed (it is needed).
5. **Confirmation on the model's own output** (``confirm``: a causal language
   model's token ids, e.g. a tokenized fixed text): each candidate is zeroed alone
   and the perplexity of the text measured (next-token loss; only the ops from the
   first one reading the zeroed weight are recomputed).  The candidates whose
   zeroing raises it at least ``confirm_factor`` times (default 10: catastrophic)
   are the *super weights*, ranked by that perplexity; the others are reported as
   *candidates* with their perplexity.  Without ``confirm`` every kept candidate is
   reported as a super weight.  The search stays data-free; the text only confirms.
6. **Measurement**: each super weight is ablated alone on the analysis input to
   report the spike before/after, the largest later massive activation
   before/after, how many of the model's massive activations disappear, and the
   change of the module's outputs.

Default inputs (when none are given): an integer input whose values index a
param table (``take``, e.g. an embedding) gets a fixed pseudo-random token sequence
in ``[0, table size)`` from ``numpy.random.default_rng(seed)`` (or the ``tokens``
option, comma-separated ids); other integer or bool inputs (attention masks) are
all ones; float inputs are standard normal samples from the same generator.

The pass knows nothing of any model: it needs projections, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sliver.common.errors import SliverError
from sliver.passes.base import Pass, max_relative_error, register
from sliver.common.text import table_lines

# ----------------------------------------------------------------------------
# projections and their [tokens, channels] views


@dataclass
class _Projection:
    op: object  # the linear / conv2d op
    weight: str  # param name of the weight
    matrix: np.ndarray  # [out, in] view of the weight
    index: int  # position of the op in module.ops

    @property
    def is_conv(self) -> bool:
        return self.op.kind == "conv2d"

    def weight_index(self, r: int, c: int) -> tuple:
        return (r, c, 0, 0) if self.is_conv else (r, c)

    def input_rows(self, x: np.ndarray) -> np.ndarray:
        """The projection's input as [tokens, in], aligned with output_rows."""
        if not self.is_conv:
            return x.reshape(-1, x.shape[-1])
        a = self.op.attrs
        pt, pl, pb, pr = a["padding"]
        if any(a["padding"]):
            x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        x = x[:, :, :: a["stride"][0], :: a["stride"][1]]
        return _rows(x, 1)

    def output_rows(self, y: np.ndarray) -> np.ndarray:
        return _rows(y, 1) if self.is_conv else y.reshape(-1, y.shape[-1])


def _rows(a: np.ndarray, axis: int) -> np.ndarray:
    """``a`` as [tokens, channels] with the channel axis last."""
    if a.ndim == 0:
        return a.reshape(1, 1)
    return np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])


def projections(module) -> list[_Projection]:
    """Every linear (param weight) and 1×1, one-group conv2d (param weight) of ``module``."""
    out = []
    for i, op in enumerate(module.ops):
        if op.kind not in ("linear", "conv2d"):
            continue
        w = module.param_data(op.operands[1])
        if w is None or not np.issubdtype(w.dtype, np.floating):
            continue
        if op.kind == "conv2d":
            if w.shape[2:] != (1, 1) or op.attrs["groups"] != 1:
                continue
            matrix = w[:, :, 0, 0]
        else:
            matrix = w
        out.append(_Projection(op, op.operands[1].name, matrix, i))
    return out


# ----------------------------------------------------------------------------
# default inputs


def _token_table_size(module, value) -> int | None:
    """If ``value`` (an integer input) indexes a param table — directly or through
    casts and shape ops — the table's size along the indexed axis."""
    seen, todo = set(), [value]
    passthrough = {"cast", "reshape", "slice", "expand", "permute"}
    while todo:
        v = todo.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        for op, index in v.uses:
            if op.kind == "take" and index == 1:
                table = module.param_data(op.operands[0])
                if table is not None:
                    return int(table.shape[op.attrs["axis"]])
            elif op.kind in passthrough:
                todo.extend(op.results)
    return None


def default_inputs(module, *, seed: int = 0, tokens: str | None = None) -> tuple[list[np.ndarray], dict]:
    """The fixed input of the analysis and a description of it (see the module doc)."""
    from sliver.ir.types import is_float, to_numpy

    rng = np.random.default_rng(seed)
    given = [int(t) for t in tokens.replace(" ", "").split(",") if t] if tokens else None
    arrays, described = [], {}
    for v in module.inputs:
        t = v.type
        dtype = to_numpy(t.dtype)
        if is_float(t.dtype):
            arrays.append(rng.standard_normal(t.shape).astype(dtype))
            described[v.name] = f"standard normal (seed {seed})"
            continue
        size = _token_table_size(module, v) if t.dtype != "bool" else None
        if size is None:
            arrays.append(np.ones(t.shape, dtype))
            described[v.name] = "all ones"
        elif given is not None:
            n = int(np.prod(t.shape))
            ids = np.resize(np.asarray(given, np.int64), n)
            if ids.min() < 0 or ids.max() >= size:
                raise SliverError(f"find-outliers: token ids must lie in [0, {size}) for input %{v.name}")
            arrays.append(ids.reshape(t.shape).astype(dtype))
            described[v.name] = f"tokens {ids.tolist()}"
        else:
            ids = rng.integers(0, size, t.shape)
            arrays.append(ids.astype(dtype))
            described[v.name] = f"pseudo-random tokens in [0, {size}) (seed {seed}): {ids.reshape(-1).tolist()}"
    return arrays, described


# ----------------------------------------------------------------------------
# the analysis


@dataclass
class _Site:
    """A recorded tensor (a projection's input or output value)."""

    value: object
    axis: int  # channel axis
    producer: _Projection | None = None
    consumers: list = field(default_factory=list)
    median: float = 0.0
    threshold: float = float("inf")
    massive: list = field(default_factory=list)  # [(token, channel, activation)]
    order: int = 0  # position of the defining op (inputs: -1)


def _magnitude_stats(rows: np.ndarray, ratio: float, abs_threshold: float):
    mag = np.abs(rows.astype(np.float64))
    nonzero = mag[mag > 0]
    median = float(np.median(nonzero)) if nonzero.size else 0.0
    if median == 0.0 or not np.isfinite(median):
        return median, float("inf"), []
    threshold = max(abs_threshold, ratio * median)
    hits = np.argwhere(mag > threshold)
    return median, threshold, [(int(t), int(c), float(rows[t, c])) for t, c in hits]


def _attribute(contrib: np.ndarray, y: float, threshold: float, max_weights: int):
    """Greedy: take the largest contributions pushing the residual away from zero
    until it is no longer massive.  Returns (channels, residual, explained)."""
    chosen, residual = [], float(y)
    for _ in range(max_weights):
        if abs(residual) <= threshold:
            break
        aligned = contrib * np.sign(residual)
        if chosen:
            aligned[chosen] = -np.inf
        c = int(np.argmax(aligned))
        if not aligned[c] > 0:
            break
        chosen.append(c)
        residual -= float(contrib[c])
    return chosen, residual, abs(residual) <= threshold


def _one_thread(fn):
    """Run ``fn`` with torch on one intra-op thread: the interpreter's many small ops
    pay more for thread hand-offs than they gain (MiniLM's analysis measured 10-20x
    faster with one thread than with two on a busy 2-core machine)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


@_one_thread
def find_outliers(
    module,
    inputs=None,
    *,
    ratio: float = 100.0,
    abs_threshold: float = 0.0,
    max_weights: int = 4,
    shrink: float = 0.5,
    max_spikes: int = 64,
    seed: int = 0,
    tokens: str | None = None,
    confirm=None,
    confirm_factor: float = 10.0,
) -> dict:
    """Find super activations and the super weights that create them (see the module
    doc).  ``confirm`` (a causal LM's token ids, e.g. a tokenized text) confirms each
    candidate by the perplexity of that text with the weight zeroed alone.
    ``module`` is not changed.  Returns a JSON-serializable report."""
    import time

    from sliver.ir.interp import check_inputs, run

    t0 = time.perf_counter()
    if ratio <= 1 or not 0 < shrink < 1 or max_weights < 1 or not confirm_factor > 1:
        raise SliverError(f"find-outliers: need ratio > 1, 0 < shrink < 1, max_weights >= 1 and confirm_factor > 1 "
                          f"(got ratio={ratio}, shrink={shrink}, max_weights={max_weights}, "
                          f"confirm_factor={confirm_factor})")
    if confirm is not None:
        causal_lm_vocab(module)
        confirm = check_inputs(module, [np.asarray(x) for x in confirm])
    projs = projections(module)
    if not projs:
        raise SliverError(
            f"find-outliers: @{module.name} has no projection layers (linear, or 1x1 conv2d with one group, "
            "with a param weight): super weights live in projections, so there is nothing to analyse"
        )
    if inputs is None:
        inputs, described = default_inputs(module, seed=seed, tokens=tokens)
    else:
        inputs = check_inputs(module, [np.asarray(x) for x in inputs])
        described = {v.name: f"given ({'x'.join(map(str, v.type.shape))} {v.type.dtype})" for v in module.inputs}

    # -- the sites: every projection's input and output value --------------------------
    sites: dict[str, _Site] = {}  # by value name (the clone's values are other objects)
    order = {id(r): i for i, op in enumerate(module.ops) for r in op.results}
    for p in projs:
        x, y = p.op.operands[0], p.op.result
        axis = 1 if p.is_conv else -1
        sites.setdefault(x.name, _Site(x, axis, order=order.get(id(x), -1))).consumers.append(p)
        sites.setdefault(y.name, _Site(y, axis, order=order[id(y)])).producer = p

    work = module.clone()  # shares param arrays; ablations swap whole arrays in its params

    def forward(ablate=frozenset(), raw=None):
        """Run with the ``ablate`` weights zeroed: ({site: [tokens, channels]}, outputs).
        ``raw``, when given, receives the sites' tensors as computed."""
        work.params = dict(module.params)
        for name, idx in ablate:
            w = work.params[name]
            if w is module.params[name]:
                w = work.params[name] = w.copy()
            w[idx] = 0
        seen = {}

        def observe(op, results):
            for r, t in zip(op.results, results):
                if r.name in sites:
                    seen[r.name] = _rows(t.numpy(), sites[r.name].axis)
                    if raw is not None:
                        raw[r.name] = t.numpy()

        outputs = run(work, inputs, observe=observe)
        for v, x in zip(module.inputs, inputs):
            if v.name in sites:
                seen[v.name] = _rows(np.asarray(x), sites[v.name].axis)
                if raw is not None:
                    raw[v.name] = np.asarray(x)
        return seen, outputs

    base_raw = {}
    base_rows, base_out = forward(raw=base_raw)
    if not all(np.all(np.isfinite(o)) for o in base_out if np.issubdtype(np.asarray(o).dtype, np.floating)):
        raise SliverError("find-outliers: the forward pass on the analysis input produced NaN or inf")
    for key, site in sites.items():
        site.median, site.threshold, site.massive = _magnitude_stats(base_rows[key], ratio, abs_threshold)
    all_massive = [(key, t, c, a) for key, s in sites.items() for t, c, a in s.massive]

    runs = {frozenset(): (base_rows, base_out)}

    def ablated(group):
        group = frozenset(group)
        if group not in runs:
            runs[group] = forward(group)
        return runs[group]

    def value_at(seen, key, t, c):
        return float(seen[key][t, c])

    # -- attribute the output spikes of projections, largest first ---------------------
    spikes = [(abs(a) / sites[key].median, key, t, c, a) for key, t, c, a in all_massive
              if sites[key].producer is not None]
    spikes.sort(key=lambda s: (-s[0], s[1], s[2], s[3]))
    skipped = max(0, len(spikes) - max_spikes)
    spikes = spikes[:max_spikes]

    found: dict[tuple, dict] = {}  # (param, row, col) → super weight entry
    unexplained = []
    for _, key, t, r, y in spikes:
        site = sites[key]
        p = site.producer
        x_rows = p.input_rows(base_raw[p.op.operands[0].name])
        contrib = p.matrix[r].astype(np.float64) * x_rows[t].astype(np.float64)
        chosen, residual, explained = _attribute(contrib, y, site.threshold, max_weights)
        where = {"layer": p.weight, "value": site.value.name, "token": t, "channel": r, "activation": y}
        if not explained:
            top = float(np.max(np.abs(contrib))) if contrib.size else 0.0
            unexplained.append({**where, "reason": f"diffuse: {max_weights} largest weights carry "
                                f"{(y - residual) / y:.0%} of it (largest single share {top / abs(y):.0%})"})
            continue
        group = [(p.weight, p.weight_index(r, c)) for c in chosen]
        # zeroing weights of row r changes output r of this projection only, by exactly
        # their contributions (its input does not depend on them): no forward pass needed
        after = float(y - contrib[chosen].sum())
        if abs(after) > shrink * abs(y):
            unexplained.append({**where, "reason": f"ablating {len(group)} candidate weight(s) leaves {after:.4g}"})
            continue
        kept = []
        for c, g in zip(chosen, group):
            if len(group) == 1:
                kept.append((c, g))
                continue
            rest = [cc for cc in chosen if cc != c]
            if abs(y - contrib[rest].sum()) > site.threshold:  # still massive without g: needed
                kept.append((c, g))
        for c, g in kept:
            k = (p.weight, r, c)
            spike = {"token": t, "position": _position(site.value, t, site.axis), "before": y,
                     "after_group": after, "group": [[p.weight, r, cc] for cc in chosen]}
            if k in found:
                found[k]["spikes"].append(spike)
                continue
            found[k] = {"layer": p.weight, "op": p.op.result.name, "row": r, "column": c,
                        "weight": float(p.matrix[r, c]),
                        "weight_ratio": float(abs(p.matrix[r, c]) / max(float(np.median(np.abs(p.matrix))), 1e-30)),
                        "token": t, "input_activation": float(x_rows[t, c]),
                        "contribution": float(contrib[c]), "spikes": [spike], "_key": key, "_index": p.index,
                        "_group": g}

    entries = sorted(found.values(), key=lambda e: (e["_index"], e["row"], e["column"]))

    # -- confirmation on the model's own output: perplexity with each candidate zeroed ------
    confirmation, candidates = None, []
    if confirm is not None:
        confirmation, entries, candidates = _confirm(module, confirm, entries, confirm_factor)

    # -- ablate each reported weight alone and measure ----------------------------------------
    super_weights, groups = [], []
    for entry in entries:
        key, g = entry.pop("_key"), entry.pop("_group")
        index = entry.pop("_index")
        seen, outs = ablated([g])
        spike = max(entry["spikes"], key=lambda s: abs(s["before"]))
        before = spike["before"]
        after = value_at(seen, key, spike["token"], entry["row"])
        later = [(k, t, c, a) for k, t, c, a in all_massive if sites[k].order > index and k != key]
        down_before = max((abs(a) for *_, a in later), default=0.0)
        down_after = max((abs(value_at(seen, k, t, c)) for k, t, c, _ in later), default=0.0)
        removed = sum(1 for k, t, c, _ in all_massive if abs(value_at(seen, k, t, c)) <= sites[k].threshold)
        entry.update({
            "spike_before": before, "spike_after": after,
            "spike_shrink": abs(after) / abs(before) if before else 0.0,
            "downstream_before": down_before, "downstream_after": down_after,
            "massive_removed": removed, "massive_total": len(all_massive),
            "output_change": max_relative_error(outs, base_out),
        })
        for s in entry["spikes"]:
            s["after"] = value_at(seen, key, s["token"], entry["row"])
        super_weights.append(entry)
        groups.append(g)

    # -- all of them at once ---------------------------------------------------------------------
    together = None
    if super_weights:
        seen, outs = ablated(groups)
        together = {
            "massive_removed": sum(1 for k, t, c, _ in all_massive
                                   if abs(value_at(seen, k, t, c)) <= sites[k].threshold),
            "massive_total": len(all_massive),
            "output_change": max_relative_error(outs, base_out),
        }

    # -- the super-activation report ----------------------------------------------------------
    # what removes each: one super weight alone, or a verified group of several (a split spike)
    removers = [([g], f"{w['layer']}[{w['row']},{w['column']}]") for w, g in zip(super_weights, groups)]
    multi = {}
    for w, g in zip(super_weights, groups):
        for s in w["spikes"]:
            members = [(n, (r, c, 0, 0) if module.params[n].ndim == 4 else (r, c)) for n, r, c in s["group"]]
            members = [m for m in members if m in groups]
            if len(members) > 1:
                multi[frozenset(members)] = "+".join(f"{n}[{i[0]},{i[1]}]" for n, i in sorted(members))
    removers += [(list(m), label) for m, label in multi.items()]
    activations = []
    for key, t, c, a in sorted(all_massive, key=lambda m: (sites[m[0]].order, m[1], m[2])):
        site = sites[key]
        killed = [label for group, label in removers if abs(value_at(ablated(group)[0], key, t, c)) <= site.threshold]
        activations.append({
            "value": site.value.name,
            "site": "output" if site.producer is not None else "input",
            "layer": site.producer.weight if site.producer is not None else site.consumers[0].weight,
            "consumers": [q.weight for q in site.consumers],
            "token": t, "position": _position(site.value, t, site.axis), "channel": c,
            "activation": a, "median": site.median, "ratio": abs(a) / site.median,
            "removed_by": killed,
        })

    return {
        "inputs": described,
        "criterion": {"ratio": ratio, "abs_threshold": abs_threshold, "max_weights": max_weights,
                      "shrink": shrink, "max_spikes": max_spikes},
        "projections": len(projs),
        "forward_passes": len(runs),
        "confirmation": confirmation,
        "super_weights": super_weights,
        "candidates": candidates,
        "all_super_weights_ablated": together,
        "super_activations": activations,
        "unexplained_spikes": unexplained,
        "spikes_not_examined": skipped,
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------
# confirmation on a causal language model's own output


def causal_lm_vocab(module, who: str = "find-outliers") -> int:
    """The vocabulary size of ``module`` if it is a causal language model as the
    confirmation needs it: one integer input of token ids ``[batch, n]`` that indexes a
    param table of V rows, and a first output of logits ``[batch, n, V]``."""
    if len(module.inputs) == 1 and module.outputs:
        v, out = module.inputs[0], module.outputs[0]
        size = _token_table_size(module, v) if v.type.dtype.startswith(("i", "u")) else None
        if size is not None and len(v.type.shape) == 2 and tuple(out.type.shape) == (*v.type.shape, size) \
                and v.type.shape[1] >= 2:
            return size
    got = ", ".join(f"%{v.name}: {v.type}" for v in module.inputs)
    raise SliverError(
        f"{who}: confirming super weights by perplexity needs a causal language model: one input of token ids "
        f"[batch, n >= 2] indexing an embedding table, and logits [batch, n, vocabulary] as the first output; "
        f"@{module.name} takes ({got}) and returns {module.outputs[0].type if module.outputs else 'nothing'}. "
        "Leave out the confirmation text for other models"
    )


def is_causal_lm(module) -> bool:
    """Whether :func:`causal_lm_vocab` accepts ``module``."""
    try:
        causal_lm_vocab(module)
    except SliverError:
        return False
    return True


def next_token_loss(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean negative log-likelihood of ``ids[:, 1:]`` under ``logits[:, :-1]`` (nats;
    inf when the logits are not finite)."""
    import torch

    lg = torch.from_numpy(np.asarray(logits, np.float32)[:, :-1]).double()
    target = torch.from_numpy(np.asarray(ids, np.int64)[:, 1:])
    nll = -torch.log_softmax(lg, -1).gather(-1, target[..., None]).mean()
    value = float(nll)
    return value if np.isfinite(value) else float("inf")


class _Replay:
    """Runs ``module`` with a few params replaced, recomputing only the ops from the
    first one that reads a replaced param: the base run keeps the values that cross
    each start point (the residual stream, rotary tables, ...), not every value."""

    def __init__(self, module, inputs, params):
        import torch

        from sliver.common.numerics import as_numpy

        self.module = module
        self.values = {op.result.name: op.result for op in module.ops if op.kind == "param"}
        self.pos = {id(v): -1 for v in module.inputs}
        last = {}
        for i, op in enumerate(module.ops):
            for r in op.results:
                self.pos[id(r)] = i
            for v in op.operands:
                last[id(v)] = i
        starts = sorted({self.start_of(name) for name in params})
        keep = {k for k, p in self.pos.items() if any(p < s <= last.get(k, -1) for s in starts)}
        env = {id(v): torch.from_numpy(as_numpy(x)) for v, x in zip(module.inputs, inputs)}
        self._run(env, 0, {})
        self.base = self.output(env)
        self.env = {k: env[k] for k in keep}

    def start_of(self, param: str) -> int:
        """Index of the first op reading ``param``."""
        return min(self.pos[id(op.results[0])] for op, _ in self.values[param].uses)

    def _run(self, env, start, params):
        import torch

        m = self.module
        with torch.no_grad():
            for op in m.ops[start:]:
                if op.kind == "param":
                    out = (torch.from_numpy(params.get(op.result.name, m.params[op.result.name])),)
                else:
                    res = op.decl.ref(*[env[id(v)] for v in op.operands], **op.attrs)
                    out = res if isinstance(res, tuple) else (res,)
                for r, t in zip(op.results, out):
                    env[id(r)] = t

    def output(self, env) -> np.ndarray:
        return env[id(self.module.outputs[0])].contiguous().numpy()

    def run(self, params: dict) -> np.ndarray:
        """The first output with ``params`` ({name: array}) in place of the module's."""
        import torch

        start = min(self.start_of(name) for name in params)
        env = {k: t for k, t in self.env.items() if self.pos[k] < start}
        for name, data in params.items():
            env[id(self.values[name])] = torch.from_numpy(data)
        self._run(env, start, params)
        return self.output(env)


def _confirm(module, confirm, entries, factor):
    """Perplexity of the ``confirm`` tokens with each candidate zeroed alone: returns
    (summary, confirmed super weights ranked by effect, the other candidates ranked)."""
    import time

    from sliver.ir.interp import check_inputs

    causal_lm_vocab(module)
    ids = check_inputs(module, [np.asarray(x) for x in confirm])[0]
    t0 = time.perf_counter()
    replay = _Replay(module, [ids], {e["layer"] for e in entries})
    base = next_token_loss(replay.base, ids)
    if not np.isfinite(base):
        raise SliverError("find-outliers: the model's logits on the confirmation text are not finite")
    for e in entries:
        name, idx = e["_group"]
        w = module.params[name].copy()
        w[idx] = 0
        loss = next_token_loss(replay.run({name: w}), ids)
        e["perplexity"] = float(np.exp(loss)) if loss < 700 else float("inf")
        e["perplexity_ratio"] = e["perplexity"] / float(np.exp(base))
    ranked = sorted(entries, key=lambda e: -e["perplexity"])
    confirmed = [e for e in ranked if e["perplexity_ratio"] >= factor]
    others = []
    for e in ranked:
        if e["perplexity_ratio"] < factor:
            for k in [k for k in e if k.startswith("_")]:
                del e[k]
            others.append(e)
    summary = {"tokens": int(ids.size), "perplexity": float(np.exp(base)), "factor": factor,
               "threshold": factor * float(np.exp(base)), "candidates": len(entries), "runs": len(entries) + 1,
               "seconds": time.perf_counter() - t0}
    return summary, confirmed, others


def _position(value, token: int, axis: int) -> list[int]:
    """The multi-index of a flattened token row (all axes but the channel axis)."""
    shape = list(value.type.shape)
    if not shape:
        return []
    del shape[axis]
    return [int(i) for i in np.unravel_index(token, shape)] if shape else []


# ----------------------------------------------------------------------------
# the pass


@register
@dataclass(frozen=True)
class FindOutliers(Pass):
    """Report super activations and the super weights creating them (changes nothing)."""

    name = "find-outliers"

    ratio: float = 100.0
    abs_threshold: float = 0.0
    max_weights: int = 4
    shrink: float = 0.5
    max_spikes: int = 64
    seed: int = 0
    tokens: str = ""
    confirm_factor: float = 10.0
    #: explicit inputs (numpy arrays) for the forward pass; not a CLI option
    inputs: tuple | None = field(default=None, compare=False, repr=False)
    #: a causal LM's token ids (e.g. a tokenized text) confirming each candidate; not a CLI option
    confirm: tuple | None = field(default=None, compare=False, repr=False)

    def run(self, module):
        report = find_outliers(
            module, self.inputs, ratio=self.ratio, abs_threshold=self.abs_threshold, max_weights=self.max_weights,
            shrink=self.shrink, max_spikes=self.max_spikes, seed=self.seed, tokens=self.tokens or None,
            confirm=self.confirm, confirm_factor=self.confirm_factor,
        )
        return False, report


def format_report(report: dict, max_activations: int = 40) -> str:
    """A readable text form of :func:`find_outliers`' report (the ``max_activations``
    largest super activations)."""
    lines = []
    c = report["criterion"]
    lines.append(f"inputs: " + "; ".join(f"%{k}: {v}" for k, v in report["inputs"].items()))
    lines.append(f"criterion: |a| > max({c['abs_threshold']:g}, {c['ratio']:g} x median |a| of its tensor); "
                 f"{report['projections']} projections, {report['forward_passes']} forward passes"
                 + (f" (+{report['confirmation']['runs']} on the confirmation tokens)" if report.get("confirmation") else "")
                 + f", {report['seconds']:.1f} s")
    sw = report["super_weights"]
    conf = report.get("confirmation")
    if conf:
        lines.append(f"confirmation: perplexity of {conf['tokens']} given tokens {conf['perplexity']:.4g}; a candidate "
                     f"is a super weight when zeroing it alone raises it {conf['factor']:g}x (to >= "
                     f"{conf['threshold']:.4g}): {len(sw)} of {conf['candidates']} candidates "
                     f"({conf['seconds']:.1f} s)")
    lines.append("")
    lines.append(f"super weights: {len(sw)}" + (", ranked by the perplexity with each zeroed alone" if conf else ""))
    if sw:
        head = ("layer", "row", "col", "weight", "x median", "token", "spike", "ablated", "with group", "later max", "ablated",
                "massive gone", "output change") + (("perplexity",) if conf else ())
        rows = [head]
        for w in sw:
            rows.append((w["layer"], str(w["row"]), str(w["column"]), f"{w['weight']:.4g}", f"{w['weight_ratio']:.0f}",
                         str(w["token"]),
                         f"{w['spike_before']:.4g}", f"{w['spike_after']:.4g}", _group_text(w),
                         _num(w["downstream_before"]), _num(w["downstream_after"]),
                         f"{w['massive_removed']}/{w['massive_total']}",
                         f"{w['output_change']:.3g}") + ((_ppl(w),) if conf else ()))
        lines += table_lines(rows, indent="  ")
        t = report["all_super_weights_ablated"]
        lines.append(f"  all {len(sw)} ablated together: {t['massive_removed']}/{t['massive_total']} massive activations "
                     f"gone, output change {t['output_change']:.3g} (max relative error)")
    cands = report.get("candidates") or []
    if cands:
        lines.append("")
        lines.append(f"candidates not confirmed (zeroed alone, perplexity below {conf['threshold']:.4g}): {len(cands)}")
        rows = [("layer", "row", "col", "weight", "x median", "token", "contribution", "perplexity")]
        for w in cands:
            rows.append((w["layer"], str(w["row"]), str(w["column"]), f"{w['weight']:.4g}", f"{w['weight_ratio']:.0f}",
                         str(w["token"]), f"{w['contribution']:.4g}", _ppl(w)))
        lines += table_lines(rows, indent="  ")
    sa = report["super_activations"]
    lines.append("")
    lines.append(f"super activations: {len(sa)}")
    if sa:
        rows = [("value", "site", "layer", "position", "channel", "activation", "x median", "removed by")]
        shown = sa if len(sa) <= max_activations else sorted(sa, key=lambda a: -a["ratio"])[:max_activations]
        for a in shown:
            rows.append((a["value"], a["site"], a["layer"], str(a["position"]), str(a["channel"]),
                         f"{a['activation']:.4g}", f"{a['ratio']:.0f}", ", ".join(a["removed_by"]) or "-"))
        lines += table_lines(rows, indent="  ")
        if len(shown) < len(sa):
            lines.append(f"  ({len(sa) - len(shown)} smaller ones not shown: the JSON report has all)")
    un = report["unexplained_spikes"]
    if un:
        lines.append("")
        lines.append(f"massive outputs not carried by a few weights: {len(un)}")
        for u in un:
            lines.append(f"  {u['layer']} token {u['token']} channel {u['channel']} = {u['activation']:.4g}: "
                         f"{u['reason']}")
    if report["spikes_not_examined"]:
        lines.append(f"({report['spikes_not_examined']} smaller spikes not examined: raise max_spikes)")
    return "\n".join(lines) + "\n"


def _ppl(w) -> str:
    return f"{w['perplexity']:.4g} ({w['perplexity_ratio']:.3g}x)"


def _num(x: float) -> str:
    return f"{x:.4g}" if x else "-"


def _group_text(w) -> str:
    s = max(w["spikes"], key=lambda s: abs(s["before"]))
    if len(s["group"]) < 2:
        return "-"
    others = ",".join(str(c) for _, _, c in s["group"] if c != w["column"])
    return f"+{others}: {s['after_group']:.4g}"


