"""Pruning benchmark: memory copies and latency of naive vs reordered vs constrained export.

    python -m sliver.benchmarks.bench_prune [--models resnet18,mobilenet_v2,densenet,efficientnet]
                                       [--amount 0.3] [--side input] [--holes gather] [--resolution 32]
                                       [--latency] [--repeat 30]

For each model: the same L2 masks (on each layer's input channels, or with
``--side output`` on its output channels) exported naively (natural channel order:
every consumer reading a subset gathers), reordered (UPSCALE export-time
reordering) and, for comparison, constrained (whole coupled channel groups pruned:
no copies, but other masks) twice: at the same amount (which removes more than the
unconstrained masks: a group goes whole) and, row ``constrained=params``, at the
amount whose parameter count matches the unconstrained exports'
(:func:`~sliver.passes.prune.matched_constrained`; its amount ends the row).  Prints gathers, gathered channels and bytes copied
per inference, MACs as a fraction of the unpruned model's (what a copy-free export of
those masks could reach at best), how the reordered layout was found (groups ordered exactly by the
consecutive-ones test, by the greedy heuristic and its distance from the optimum,
and bytes no order can avoid), and with --latency the compiled x86_64 latency (sliver's default
schedules) of each plus the unpruned model.  The five artifacts of a model are
compiled first and then timed round-robin, one run each in turn, so load from
other processes hits them alike; medians and minima are printed as ratios to the
unpruned model.

Where the copies' time goes (``--latency``): *sel ms* is the time per inference
spent in compiled functions that only select channels (a ``take``/``slice`` that
no conv absorbed, e.g. before a linear), from the VM's call instrument
(:mod:`sliver.tools.profile`, min over ``--repeat`` runs of the per-run sum);
*gather ms* is what the export's gathers cost in all: its minimum latency minus
that of its *views twin*, the same export with every gather replaced by a view of
the same width (same shapes and MACs, no copy; wrong numbers, timed only), timed
in the same round-robin.  A gather fused into a conv's loads costs no kernel of its
own, so only the twin shows it.
"""

from __future__ import annotations

import argparse
import statistics
import sys

MODES = {"naive": dict(reorder=False), "reordered": dict(reorder=True), "constrained": dict(constrained=True)}
#: the row of constrained pruning whose parameter count matches the unconstrained exports'
MATCHED = "constrained=params"
EXPORT = 20  # the export column's width


def _row(model: str, export: str, r: dict, macs0: int) -> str:
    """A row's copy columns from a prune report."""
    return (f"{model:<14}{export:<{EXPORT}}{r['gathers']:>8}{r['gathered_channels']:>10}"
            f"{r['bytes_copied']:>14,}{r['params_after']:>12,}{r['macs_after'] / macs0:>7.2f}x")


def _compiled(module, inputs):
    """(the loaded x86_64 artifact, its inputs as numpy arrays)."""
    import sliver
    from sliver.common.numerics import as_numpy

    return sliver.lower(module, inputs, target="x86_64", passes="dce").load(), [as_numpy(x) for x in inputs]


def views_twin(module):
    """A copy of ``module`` with every ``take`` replaced by a ``slice`` of the same
    width (its first channels): same shapes and MACs without a copy.  Only for timing
    what gathers cost — the results are not the model's."""
    twin = module.clone()
    for op in [o for o in twin.ops if o.kind == "take"]:
        x = op.operands[0]
        n = op.operands[1].type.shape[0]
        view = twin.add_op("slice", [x], {"axis": op.attrs["axis"], "start": 0, "end": n}, before=op)
        twin.replace_all_uses_with(op.result, view.result)
        twin.erase(op)
    from sliver.passes.dce import dce

    dce(twin)
    return twin


def selection_ms(model, inputs, repeat: int) -> float:
    """Min over ``repeat`` runs of the per-run time in compiled functions that compute
    only channel selections (sliver ``take``/``slice`` ops)."""
    from sliver.tools.profile import call_times

    kinds = {o.name: o.kind for o in model.manifest.ops}
    selecting = {f for f, ops in model.manifest.primfuncs.items()
                 if ops and all(kinds.get(o) in ("take", "slice") for o in ops)}
    runs = call_times(model, inputs, repeat=repeat)
    return min(sum(sum(ts) for f, ts in run.items() if f in selecting) for run in runs) * 1e3


def main(argv=None) -> int:
    import sliver
    from sliver.passes.prune import count_params_and_macs, format_reorder, matched_constrained, pruned
    from sliver.benchmarks import zoo as _zoo
    from sliver.benchmarks.latency import time_fair

    zoo = _zoo()

    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_prune", description=__doc__.split("\n\n")[0])
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
    header = f"{'model':<14}{'export':<{EXPORT}}{'gathers':>8}{'channels':>10}{'bytes copied':>14}{'params':>12}{'MACs':>8}"
    if args.latency:
        header += f"{'median ms':>11}{'min ms':>9}{'median':>9}{'min':>8}{'sel ms':>8}{'gather ms':>11}"
    print(header)
    for name in args.models.split(","):
        model, inputs = zoo.MODELS[name](resolution=args.resolution)
        base = sliver.trace(model, inputs)
        sliver.api.optimize(base)
        rows, modules = {}, {"unpruned": base}
        params0, macs0 = count_params_and_macs(base)
        for mode, opts in MODES.items():
            side = {} if mode == "constrained" else {"side": args.side, "holes": args.holes}
            modules[mode], r = pruned(base, method=args.method, amount=args.amount, **side, **opts)
            rows[mode] = _row(name, mode, r, macs0)
            if mode == "reordered":
                reorder_line = f"{'':<14}{format_reorder(r['reorder'])}"
                unconstrained_params = r["params_after"]  # naive's too: the same masks
        # constrained pruning of the unconstrained exports' size (at the same amount it removes more)
        modules[MATCHED], r, amount = matched_constrained(base, unconstrained_params, method=args.method)
        rows[MATCHED] = _row(name, MATCHED, r, macs0)
        rows = {"unpruned": f"{name:<14}{'unpruned':<{EXPORT}}{'':>8}{'':>10}{'':>14}{params0:>12,}{1:>7.2f}x",
                **rows}
        if args.latency:
            twins = {k + "~views": views_twin(m) for k, m in modules.items()
                     if any(op.kind == "take" for op in m.ops)}
            built = {k: _compiled(m, inputs) for k, m in {**modules, **twins}.items()}
            fns = {k: (lambda c=c, xs=xs: c.run(*xs)) for k, (c, xs) in built.items()}
            times = {k: t.times for k, t in time_fair(fns, 3, args.repeat, float("inf")).items()}
            med0, min0 = statistics.median(times["unpruned"]), min(times["unpruned"])
            for k in modules:
                ts = times[k]
                med, mn = statistics.median(ts), min(ts)
                sel = selection_ms(*built[k], args.repeat)
                gather = mn - min(times[k + "~views"]) if k + "~views" in times else 0.0
                rows[k] += (f"{med:>11.3f}{mn:>9.3f}{med / med0:>8.2f}x{mn / min0:>7.2f}x"
                            f"{sel:>8.3f}{gather:>11.3f}")
        rows[MATCHED] += f"  amount {amount:.3f}"
        for line in rows.values():
            print(line, flush=True)
        print(reorder_line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
