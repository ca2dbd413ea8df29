"""``sliver explain``: one report per artifact of what the compiler did, layer by layer.

    sliver explain model.sliver [-o report.md] [--html report.html] [--repeat N]
    sliver explain model-arm64.sliver --emulate            # instructions instead of times
    sliver explain tools/examples/tiny_cnn.py:build --passes fold-batchnorm,prune{amount=0.5},dce

The report combines, per layer of the optimized model (a conv/linear layer is named
by its weight without ``.weight``, as the pruning report does):

* what each pass recorded about that layer — read generically from the pass
  records the artifact's manifest carries (``passes``: name, ops and params before
  and after, output drift, and the pass's own ``notes``).  Any list of dicts in the
  notes whose items name a layer (``name``/``layer`` keys), and any dict keyed by
  layer names, is attributed to that layer; prune's channel counts, bit widths
  (any field with ``bits`` in its name) and kept outliers (entries under a key
  naming ``outlier``/``super``) get columns of their own, everything else a
  compact "notes" cell and a per-pass section;
* the compiled function that computes the layer (the manifest's ``primfuncs``) and
  its latency (a VM call instrument, :mod:`sliver.tools.profile`) when the
  artifact runs here, or its executed instructions on the emulated Pi with
  ``--emulate`` (:mod:`sliver.tools.emulator.icount`);
* numeric drift: the output drift after each pass (max error relative to the
  largest output, vs the model before the pipeline) as the ``NumericDrift``
  instrument measured it — always for a MODEL, for an artifact when it was lowered
  with ``--drift``.

Given a MODEL instead of an artifact, it lowers it first (``--passes``,
``--target``, drift measured) and writes the artifact next to the report.
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from sliver.common.errors import SliverError

BITS = "bits"
OUTLIER_KEYS = ("outlier", "super")
SKIP_FIELDS = {"name", "layer", "kind", "text"}


# -- reading the pass records ------------------------------------------------------------


def _resolve(name, layers: set) -> str | None:
    """A layer name from a note's name: itself, or a param name minus its last part."""
    if not isinstance(name, str):
        return None
    if name in layers:
        return name
    head = name.rsplit(".", 1)[0]
    return head if head in layers else None


def layer_notes(notes, layers: set) -> dict[str, dict[str, list]]:
    """``{layer: {path in the notes: [entries]}}``: every list of dicts whose items
    name a layer, and every dict keyed by layer names, anywhere in ``notes``."""
    found: dict[str, dict[str, list]] = {}

    def add(layer, path, entry):
        found.setdefault(layer, {}).setdefault(path, []).append(entry)

    def walk(x, path):
        if isinstance(x, dict):
            keyed = {k: _resolve(k, layers) for k in x}
            if x and all(keyed.values()):
                for k, v in x.items():
                    add(keyed[k], path, v)
                return
            for k, v in x.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(x, list):
            items = [i for i in x if isinstance(i, dict)]
            if items and len(items) == len(x) and all(isinstance(i.get("layers"), list) for i in items):
                for item in items:  # entries about several layers each (e.g. a shared input)
                    for layer in {_resolve(n, layers) for n in item["layers"]} - {None}:
                        add(layer, path, item)
                return
            named = [(_resolve(i.get("name", i.get("layer")), layers), i) for i in items]
            if named and len(named) == len(x) and any(layer for layer, _ in named):
                for layer, item in named:
                    if layer:
                        add(layer, path, item)
                return
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")

    walk(notes, "")
    return found


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return f"[{len(v)} items]" if len(v) > 6 else "[" + ", ".join(_fmt(i) for i in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_fmt(i)}" for k, i in list(v.items())[:6]) + "}"
    return str(v)


def _summary(path: str, entries: list) -> str:
    """A compact cell for one pass's entries about one layer."""
    dicts = [e for e in entries if isinstance(e, dict)]
    if len(dicts) == len(entries) and len(dicts) == 1:
        body = ", ".join(f"{k}={_fmt(v)}" for k, v in dicts[0].items() if k not in SKIP_FIELDS)
        return f"{path}: {body}" if path else body
    if len(entries) == 1:
        return f"{path}: {_fmt(entries[0])}"
    return f"{path}: {len(entries)} entries"


def _channels(entries_by_path: dict) -> tuple[str, str] | None:
    for entries in entries_by_path.values():
        for e in entries:
            if isinstance(e, dict) and {"in_before", "in_after", "out_before", "out_after"} <= set(e):
                return f"{e['in_before']} → {e['in_after']}", f"{e['out_before']} → {e['out_after']}"
    return None


def _bits(entries_by_path: dict) -> list[str]:
    out = []
    for entries in entries_by_path.values():
        for e in entries:
            if isinstance(e, dict):
                out += [f"{k}={_fmt(v)}" for k, v in e.items() if BITS in k.lower() and v is not None]
    return out


def _outliers(entries_by_path: dict) -> int:
    """Entries under an outlier/super key, plus the items of ``kept`` lists (weights
    a quantizer kept in float)."""
    n = sum(len(v) for k, v in entries_by_path.items() if any(w in k.lower() for w in OUTLIER_KEYS))
    for entries in entries_by_path.values():
        n += sum(len(e["kept"]) for e in entries if isinstance(e, dict) and isinstance(e.get("kept"), list))
    return n


# -- the report -------------------------------------------------------------------------


class Doc:
    """A report as blocks, rendered to Markdown or HTML."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, rows: list[tuple]):
        self.blocks.append(("table", rows))

    def pre(self, text: str):
        self.blocks.append(("pre", text))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "pre":
                out.append("```\n" + b[1].rstrip("\n") + "\n```")
            else:
                head, *body = [[str(c).replace("|", "\\|") for c in r] for r in b[1]]
                lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                lines += ["| " + " | ".join(r) + " |" for r in body]
                out.append("\n".join(lines))
            out.append("")
        return "\n".join(out).rstrip("\n") + "\n"

    def html(self, title: str) -> str:
        out = [f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:80em;margin:2em auto}"
               "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
               "pre{background:#f6f6f6;padding:8px}</style>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{html.escape(b[1])}</p>")
            elif b[0] == "pre":
                out.append(f"<pre>{html.escape(b[1])}</pre>")
            else:
                head, *body = b[1]
                out.append("<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in head) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body]
                out.append("</table>")
        return "\n".join(out) + "\n"


def _layer_ops(manifest) -> dict[str, dict]:
    """{layer: its main op (kind, shape, name)}, in module order: the op reading the
    layer's ``.weight``, else its first op (a pruned layer may start with a gather)."""
    out = {}
    for o in manifest.ops:
        layer = o.layer
        if not layer:
            continue
        weighty = any(p.endswith(".weight") for p in o.params)
        if layer not in out or (weighty and not out[layer][1]):
            out[layer] = (o, weighty)
    return {k: v[0] for k, v in out.items()}


def _functions_of(manifest) -> dict[str, list[str]]:
    """{layer: the compiled functions computing it} (a quantized linear layer may
    have a dequantize function besides its matmul)."""
    from sliver.tools.profile import describe

    out: dict[str, list[str]] = {}
    for fn in manifest.primfuncs:
        for layer in describe(manifest, fn)[1]:
            out.setdefault(layer, []).append(fn)
    return out


def measure(artifact, *, emulate: bool, repeat: int) -> tuple[dict, str]:
    """({function: (value, share)}, unit) — ms here, instructions on the emulated Pi —
    or ({}, why not) when the artifact cannot run here."""
    from sliver.common.platform import host_arch

    arch = artifact.manifest.target.arch
    if emulate:
        from sliver.tools.emulator import icount

        c = icount.count_artifact(artifact)
        return {f: (n, n / c.per_call) for f, n in c.functions.items()}, "instructions"
    if arch != host_arch():
        return {}, f"not measured: the artifact is built for {arch}; add --emulate to count instructions"
    from sliver.tools.profile import layer_times

    rows = layer_times(artifact.load(), repeat=repeat)
    return {r.function: (r.median_ms, r.share) for r in rows}, "ms"


def build_report(artifact, *, source: str, cost: dict, unit: str) -> Doc:
    m = artifact.manifest
    records = m.passes
    if records is None:
        raise SliverError(f"{source} carries no pass records (built by an older sliver): lower it again")
    layer_ops = _layer_ops(m)
    layers = set(layer_ops)
    per_pass = [(r, layer_notes(r.notes, layers)) for r in records]
    fns_of = _functions_of(m)

    doc = Doc()
    doc.h(1, f"sliver explain: @{m.model} for {m.target.name}")
    doc.p(f"Artifact `{source}`, built {m.created} by sliver {m.sliver_version} with TVM {m.tvm_version}; "
          f"pipeline `{m.pipeline or '(none)'}`; {m.params.count} params, {m.params.bytes:,} bytes; "
          f"library {m.library.bytes:,} bytes.")

    doc.h(2, "Passes")
    rows = [("#", "pass", "changed", "ops", "params", "output drift", "time")]
    for i, r in enumerate(records):
        drift = "—" if r.drift is None else f"{r.drift:.3g}"
        rows.append((str(i + 1), r.spec, "yes" if r.changed else "no", f"{r.ops_before} → {r.ops_after}",
                     f"{r.params_before} → {r.params_after}", drift, f"{r.seconds * 1e3:.1f} ms"))
    doc.table(rows)
    if all(r.drift is None for r in records):
        doc.p("Output drift was not measured (lower with --drift, or explain the MODEL).")
    else:
        doc.p("Output drift: max |error| of the outputs relative to their largest magnitude, vs the model "
              "before the pipeline, on the golden inputs (float64 reference interpreter).")

    doc.h(2, "Layers")
    if isinstance(unit, str) and unit not in ("ms", "instructions"):
        doc.p(f"Per-layer cost {unit}.")
    cost_head = {"ms": "latency ms (share)", "instructions": "instructions (share)"}.get(unit, "cost")
    rows = [("layer", "op", "output", "channels in", "channels out", "bits", "outliers kept", "notes",
             "compiled function", cost_head)]
    for layer, op in layer_ops.items():
        chans, bits, outl, notes = None, [], 0, []
        for r, found in per_pass:
            entries = found.get(layer)
            if not entries:
                continue
            chans = chans or _channels(entries)
            # bit widths per entry, else the pass's own (e.g. quantize-weights{bits=4})
            bits += _bits(entries) or _bits({"": [{k: v for k, v in r.notes.items()
                                                   if not isinstance(v, (dict, list))}]})
            outl += _outliers(entries)
            if not _channels(entries):
                notes += [f"{r.name}: {_summary(k, v)}" for k, v in entries.items()
                          if not any(w in k.lower() for w in OUTLIER_KEYS)]
        kernel = (m.kernels or {}).get(layer)
        if kernel:  # the low-bit kernel the layer's width got (bit-serial or int8)
            bits.append(f"kernel={kernel}")
        fns = fns_of.get(layer, [])
        measured = [cost[f] for f in fns if f in cost]
        value, share = sum(c[0] for c in measured), sum(c[1] for c in measured)
        c_text = "" if not measured else (f"{value:.3f} ({share:.0%})" if unit == "ms" else f"{value:,} ({share:.0%})")
        rows.append((layer, op.kind, "×".join(map(str, op.shape)), chans[0] if chans else "",
                     chans[1] if chans else "", ", ".join(bits), str(outl) if outl else "", "; ".join(notes),
                     " + ".join(fns), c_text))
    doc.table(rows)
    others = {f: v for f, v in cost.items() if not any(f in fns for fns in fns_of.values())}
    if others:
        doc.p("Compiled functions without a layer (layout changes, pooling, elementwise): " + ", ".join(
            f"{f} {v[0]:.3f} ms" if unit == "ms" else f"{f} {v[0]:,}" for f, v in others.items()) + ".")

    for r, found in per_pass:
        text = r.notes.get("text")
        if not (found or text):
            continue
        doc.h(2, f"Pass {r.spec}")
        if text:
            doc.pre(text)
        else:
            rows = [("layer", "what the pass recorded")]
            for layer, entries in found.items():
                rows.append((layer, "; ".join(_summary(k, v) for k, v in entries.items())))
            doc.table(rows)
    return doc


def explain(artifact, *, source: str, emulate: bool = False, repeat: int = 10) -> Doc:
    cost, unit = measure(artifact, emulate=emulate, repeat=repeat)
    return build_report(artifact, source=source, cost=cost, unit=unit)


def _lower_model(args):
    from sliver.api import lower
    from sliver.common.numerics import as_numpy
    from sliver.passes.manager import NumericDrift
    from sliver.tools.shared import load_model, say

    model, inputs = load_model(args.model)
    say(f"lowering {args.model} for {args.target} with {args.passes} (output drift measured)")
    art = lower(model, inputs, args.target, passes=args.passes,
                instruments=[NumericDrift([as_numpy(x) for x in inputs])], progress=say)
    path = Path(args.artifact_out or (Path(args.output).with_suffix(".sliver") if args.output else "explain.sliver"))
    art.save(path)
    say(f"wrote {path}")
    return art, str(path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sliver.api import DEFAULT_PIPELINE

    p.add_argument("target_file", metavar="ARTIFACT|MODEL",
                   help="a .sliver file, or a model (file.py:function, .pt2, .sir) to lower first")
    p.add_argument("-o", "--output", help="write the Markdown report here (default: print it)")
    p.add_argument("--html", metavar="PATH", help="also write the report as HTML")
    p.add_argument("--emulate", action="store_true", help="arm64: count instructions per layer on the emulated Pi")
    p.add_argument("--repeat", type=int, default=10, help="runs for per-layer latency (default %(default)s)")
    p.add_argument("--passes", default=DEFAULT_PIPELINE, help="MODEL only: the pass pipeline")
    p.add_argument("-t", "--target", default="x86_64", help="MODEL only: the target (default x86_64)")
    p.add_argument("--artifact-out", metavar="PATH", help="MODEL only: where to save the lowered artifact")


def run(args) -> int:
    from sliver.runtime.artifact import read

    if args.repeat < 1:
        raise SliverError(f"--repeat {args.repeat}: give the number of timed runs per layer, >= 1")
    spec = args.target_file
    if spec.endswith(".sliver"):
        art, source = read(spec), spec
    else:
        args.model = spec
        art, source = _lower_model(args)
    doc = explain(art, source=source, emulate=args.emulate, repeat=args.repeat)
    from sliver.common.files import atomic_write

    text = doc.markdown()
    if args.output:
        atomic_write(args.output, lambda f: f.write(text.encode()))
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.html:
        page = doc.html(f"sliver explain {art.manifest.model}")
        atomic_write(args.html, lambda f: f.write(page.encode()))
        print(f"wrote {args.html}", file=sys.stderr)
    return 0
