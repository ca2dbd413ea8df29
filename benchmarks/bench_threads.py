"""One loaded artifact called from many threads: a VM per calling thread (what
``sliver.runtime.artifact.CompiledModel`` does) against one VM behind a lock.

    python -m sliver.benchmarks.bench_threads MODEL.sliver [--threads 8] [--calls 200] [--rounds 3]

Prints the time per call of each way (median and minimum over the rounds, the two
ways interleaved), after checking that every call gave the single-thread output.
TVM's own worker pool (``TVM_NUM_THREADS``) runs inside each call either way.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_threads", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--threads", type=int, default=8, help="calling threads (default 8)")
    p.add_argument("--calls", type=int, default=200, help="calls per thread (default 200)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each way, interleaved (default 3)")
    args = p.parse_args(argv)

    from sliver.runtime.artifact import load

    model = load(args.artifact)
    x = model.golden_inputs()
    want = model.run(*x)[0]
    vm0, tvm = model._vm, model._tvm
    lock = threading.Lock()

    def locked():
        with lock:
            return vm0["main"](*[tvm.runtime.tensor(a) for a in x]).numpy()

    ways = {"one VM + lock": locked, "VM per thread": lambda: model.run(*x)[0]}
    single = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for _ in range(args.calls):
            model.run(*x)
        single.append((time.perf_counter() - t0) / args.calls * 1e3)
    print(f"{args.artifact}: 1 thread: median {statistics.median(single):.3f} ms/call, min {min(single):.3f}")
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.rounds):
        for name, call in ways.items():
            bad = []

            def worker():
                for _ in range(args.calls):
                    if not np.array_equal(call(), want):
                        bad.append(1)

            threads = [threading.Thread(target=worker) for _ in range(args.threads)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            times[name].append((time.perf_counter() - t0) / (args.threads * args.calls) * 1e3)
            if bad:
                raise SystemExit(f"{name}: {len(bad)} calls differ from the single-thread output")
    for name, v in times.items():
        print(f"  {name:<14} {args.threads} threads x {args.calls} calls: median {statistics.median(v):.3f} ms/call, "
              f"min {min(v):.3f} (rounds {', '.join(f'{t:.3f}' for t in v)}); all outputs equal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
