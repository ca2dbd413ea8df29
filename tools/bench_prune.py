"""Pruning benchmark: memory copies and latency of naive vs reordered vs constrained export.

    python -m sliver.tools.bench_prune [--models resnet18,mobilenet_v2,densenet,efficientnet]
                                       [--amount 0.3] [--resolution 32] [--latency] [--repeat 20]

For each model: the same input-side L2 masks exported naively (natural channel
order: every consumer reading a subset gathers), reordered (UPSCALE export-time
reordering) and, for comparison, constrained (whole coupled channel groups pruned:
no copies, but other masks).  Prints gathers, gathered channels and bytes copied
per inference, and with --latency the compiled x86_64 latency of each plus the
unpruned model, as ratios, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys

MODES = {"naive": dict(reorder=False), "reordered": dict(reorder=True), "constrained": dict(constrained=True)}


def _latency(module, inputs, repeat: int) -> float:
    import sliver
    from sliver.api import _numpy

    compiled = sliver.lower(module, inputs, target="x86_64", passes="dce").load()
    from sliver.runtime.profile import time_runs

    return statistics.median(time_runs(compiled, [_numpy(x) for x in inputs], repeat=repeat, warmup=3))


def main(argv=None) -> int:
    import sliver
    from sliver.passes.manager import PassManager, make_pass
    from sliver.tools import zoo

    p = argparse.ArgumentParser(prog="python -m sliver.tools.bench_prune", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2,densenet,efficientnet")
    p.add_argument("--amount", type=float, default=0.3)
    p.add_argument("--method", default="l2")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--latency", action="store_true", help="also compile for x86_64 and time each export")
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args(argv)

    print(f"input-side {args.method} masks, amount {args.amount}, resolution {args.resolution}")
    header = f"{'model':<14}{'export':<13}{'gathers':>8}{'channels':>10}{'bytes copied':>14}{'params':>12}"
    if args.latency:
        header += f"{'latency ms':>12}{'vs unpruned':>13}"
    print(header)
    for name in args.models.split(","):
        model, inputs = zoo.MODELS[name](resolution=args.resolution)
        base = sliver.trace(model, inputs)
        sliver.api.optimize(base)
        base_ms = _latency(base, inputs, args.repeat) * 1e3 if args.latency else None
        if args.latency:
            print(f"{name:<14}{'unpruned':<13}{'':>8}{'':>10}{'':>14}{'':>12}{base_ms:>12.3f}{1.0:>12.2f}x")
        for mode, opts in MODES.items():
            module = base.clone()
            (rec,) = PassManager([make_pass("prune", method=args.method, amount=args.amount, **opts)]).run(module)
            r = rec.notes["report"]
            line = (f"{name:<14}{mode:<13}{r['gathers']:>8}{r['gathered_channels']:>10}{r['bytes_copied']:>14,}"
                    f"{r['params_after']:>12,}")
            if args.latency:
                ms = _latency(module, inputs, args.repeat) * 1e3
                line += f"{ms:>12.3f}{ms / base_ms:>12.2f}x"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
