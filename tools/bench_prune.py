"""Pruning benchmark: memory copies and latency of naive vs reordered vs constrained export.

    python -m sliver.tools.bench_prune [--models resnet18,mobilenet_v2,densenet,efficientnet]
                                       [--amount 0.3] [--side input] [--holes gather] [--resolution 32]
                                       [--latency] [--repeat 30]

For each model: the same L2 masks (on each layer's input channels, or with
``--side output`` on its output channels) exported naively (natural channel order:
every consumer reading a subset gathers), reordered (UPSCALE export-time
reordering) and, for comparison, constrained (whole coupled channel groups pruned:
no copies, but other masks).  Prints gathers, gathered channels and bytes copied
per inference, MACs as a fraction of the unpruned model's (what a copy-free export of
those masks could reach at best), how the reordered layout was found (groups ordered exactly by the
consecutive-ones test, by the greedy heuristic and its distance from the optimum,
and bytes no order can avoid), and with --latency the compiled x86_64 latency (sliver's default
schedules) of each plus the unpruned model.  The four artifacts of a model are
compiled first and then timed round-robin, one run each in turn, so load from
other processes hits them alike; medians and minima are printed as ratios to the
unpruned model.
"""

from __future__ import annotations

import argparse
import statistics
import sys

MODES = {"naive": dict(reorder=False), "reordered": dict(reorder=True), "constrained": dict(constrained=True)}


def _compiled(module, inputs):
    import sliver
    from sliver.api import _numpy

    compiled = sliver.lower(module, inputs, target="x86_64", passes="dce").load()
    xs = [_numpy(x) for x in inputs]
    return lambda: compiled.run(*xs)


def main(argv=None) -> int:
    import sliver
    from sliver.passes.manager import PassManager, make_pass
    from sliver.passes.prune import count_params_and_macs, format_reorder
    from sliver.tools.bench import time_interleaved
    from sliver.tools import zoo

    p = argparse.ArgumentParser(prog="python -m sliver.tools.bench_prune", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2,densenet,efficientnet")
    p.add_argument("--amount", type=float, default=0.3)
    p.add_argument("--method", default="l2")
    p.add_argument("--side", default="input", choices=["input", "output"])
    p.add_argument("--holes", default="gather", choices=["gather", "zero"],
                   help="a consumer whose channels are not one run: gather them (a copy), or read the run "
                        "around them with zero weights in between (no copy, more MACs)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--latency", action="store_true", help="also compile for x86_64 and time each export")
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args(argv)

    print(f"{args.side}-side {args.method} masks, amount {args.amount}, resolution {args.resolution}"
          + (", holes zero-filled" if args.holes == "zero" else ""))
    header = f"{'model':<14}{'export':<13}{'gathers':>8}{'channels':>10}{'bytes copied':>14}{'params':>12}{'MACs':>8}"
    if args.latency:
        header += f"{'median ms':>11}{'min ms':>9}{'median':>9}{'min':>8}"
    print(header)
    for name in args.models.split(","):
        model, inputs = zoo.MODELS[name](resolution=args.resolution)
        base = sliver.trace(model, inputs)
        sliver.api.optimize(base)
        rows, modules = {}, {"unpruned": base}
        params0, macs0 = count_params_and_macs(base)
        for mode, opts in MODES.items():
            module = base.clone()
            side = {} if mode == "constrained" else {"side": args.side, "holes": args.holes}
            (rec,) = PassManager([make_pass("prune", method=args.method, amount=args.amount, **side, **opts)]).run(
                module)
            r = rec.notes["report"]
            rows[mode] = (f"{name:<14}{mode:<13}{r['gathers']:>8}{r['gathered_channels']:>10}"
                          f"{r['bytes_copied']:>14,}{r['params_after']:>12,}{r['macs_after'] / macs0:>7.2f}x")
            modules[mode] = module
            if mode == "reordered":
                reorder_line = f"{'':<14}{format_reorder(r['reorder'])}"
        rows = {"unpruned": f"{name:<14}{'unpruned':<13}{'':>8}{'':>10}{'':>14}{params0:>12,}{1:>7.2f}x", **rows}
        if args.latency:
            fns = {k: _compiled(m, inputs) for k, m in modules.items()}
            times = {k: ms for k, (_, ms, _) in time_interleaved(fns, 3, args.repeat, float("inf")).items()}
            med0, min0 = statistics.median(times["unpruned"]), min(times["unpruned"])
            for k, ts in times.items():
                med, mn = statistics.median(ts), min(ts)
                rows[k] += f"{med:>11.3f}{mn:>9.3f}{med / med0:>8.2f}x{mn / min0:>7.2f}x"
        for line in rows.values():
            print(line, flush=True)
        print(reorder_line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
