"""``sliver bench ARTIFACT``: where one compiled artifact spends its time.

    sliver bench model.sliver [--per-layer] [--repeat N]          # latency: median/min/max
    sliver bench model-arm64.sliver --emulate [--per-layer]       # executed instructions on the emulated Pi

Latency over ``--repeat`` runs after ``--warmup`` ones, and with ``--per-layer`` the
time of every compiled function (a fused PrimFunc) from the Relax VM's call
instrument (:mod:`sliver.tools.profile`), named by the sliver layers it computes.
With ``--emulate`` (arm64 artifacts) it runs on the emulated Raspberry Pi and reports
executed-instruction counts per call and per function
(:mod:`sliver.tools.emulator.icount`) instead of meaningless emulated times.

Comparing sliver with torch eager and onnxruntime over zoo models is a benchmark of
the source checkout: ``python -m sliver.benchmarks.latency``.
"""

from __future__ import annotations

import argparse
import json

from sliver.common.platform import host_arch
from sliver.tools.profile import set_tvm_threads, stats, time_runs, tvm_threads


def _artifact_rows(rows: list[dict], unit: str) -> str:
    """The per-function table of :func:`bench_artifact` (``unit``: "ms" or "instructions")."""
    from sliver.common.text import table_lines

    if unit == "ms":
        table = [("function", "calls", "median ms", "min", "max", "share", "sliver layers")]
        table += [(r["function"], str(r["calls"]), f"{r['median_ms']:.3f}", f"{r['min_ms']:.3f}",
                   f"{r['max_ms']:.3f}", f"{r['share']:.1%}", r["label"]) for r in rows]
    elif any("cycles" in r for r in rows):
        table = [("function", "instructions", "share", "modeled cycles", "IPC", "sliver layers")]
        table += [(r["function"], f"{r['instructions']:,}", f"{r['share']:.1%}",
                   f"{r['cycles']:,.0f}" if "cycles" in r else "-",
                   f"{r['instructions'] / r['cycles']:.2f}" if r.get("cycles") else "-", r["label"]) for r in rows]
    else:
        table = [("function", "instructions", "share", "sliver layers")]
        table += [(r["function"], f"{r['instructions']:,}", f"{r['share']:.1%}", r["label"]) for r in rows]
    return "\n".join(table_lines(table, indent="  "))


def bench_artifact(args) -> dict:
    """Profile one ``.sliver`` file: latency (or executed instructions with
    ``--emulate``), and per compiled function with ``--per-layer``; prints the
    tables and returns the JSON-able report."""
    from dataclasses import asdict as _asdict

    from sliver.common.errors import SliverError
    from sliver.tools import profile
    from sliver.runtime.artifact import read

    art = read(args.artifact)
    m = art.manifest
    head = f"{args.artifact}: @{m.model} for {m.target.name} ({m.target.arch})"
    report = {"artifact": str(args.artifact), "model": m.model, "target": m.target.name}
    if args.emulate:
        from sliver.tools.emulator import emulate, icount

        repeat = args.repeat or 1
        print(f"{head} on the emulated Raspberry Pi (qemu, {emulate.PI_CPU}, 1 thread): "
              "executed instructions", flush=True)
        c = icount.count_artifact(art, repeat=repeat)
        print(f"  per call      {c.per_call:,} instructions (over {repeat} call(s): {', '.join(f'{x:,}' for x in c.calls)})")
        print(f"  not counted   {c.startup:,} instructions of interpreter start-up, imports and loading")
        report.update(instructions=c.per_call, calls=c.calls, startup=c.startup)
        est = _modeled_cycles(c, art.library)
        if est is not None:
            print(f"  modeled       {est.cycles:,.0f} cycles of the library's code, {est.ipc:.2f} instructions per "
                  f"cycle ({est.model}; a static model for comparing builds, not a Pi wall time: "
                  f"see sliver.tools.emulator.cycles)")
            report.update(modeled_cycles=est.cycles, cycle_model=est.model)
        if args.per_layer:
            rows = []
            for name, n in c.functions.items():
                ops, layers = profile.describe(m, name)
                rows.append({"function": name, "instructions": n, "share": n / c.per_call,
                             "label": profile.label(ops, layers), "ops": ops, "layers": layers})
                if est is not None:
                    rows[-1]["cycles"] = est.functions.get(name, 0.0)
            for name, n in c.outside.items():
                rows.append({"function": f"[{name}]", "instructions": n, "share": n / c.per_call,
                             "label": "(outside the library)", "ops": [], "layers": []})
            print("  per function (executed instructions in one call):")
            print(_artifact_rows(rows, "instructions"))
            report["functions"] = rows
        return report
    if m.target.arch != host_arch():
        raise SliverError(f"{args.artifact} is built for {m.target.arch}; this machine is {host_arch()}: "
                          "add --emulate to count its instructions on the emulated Pi")
    repeat = args.repeat or 30
    set_tvm_threads(args.threads)
    model = art.load()
    inputs = model.golden_inputs()
    _, times, _ = time_runs(lambda: model.run(*inputs), args.warmup, repeat, float("inf"))
    s = stats(times)
    print(f"{head}, {tvm_threads() or args.threads} thread(s)")
    print(f"  latency over {repeat} runs: median {s['median_ms']:.3f} ms, min {s['min_ms']:.3f} ms, "
          f"max {s['max_ms']:.3f} ms")
    report.update(runs=repeat, threads=args.threads, **s, times_ms=times)
    if args.per_layer:
        rows = [dict(_asdict(r), label=profile.label(r.ops, r.layers))
                for r in profile.layer_times(model, inputs, repeat=repeat, warmup=0)]
        print(f"  per function (VM call instrument, median over {repeat} runs):")
        print(_artifact_rows(rows, "ms"))
        report["functions"] = rows
    return report


def _modeled_cycles(counted, library):
    """llvm-mca's Cortex-A72 cycles for a counted call (:mod:`sliver.tools.emulator.cycles`), or
    None with a note when llvm is not installed (the count itself does not need it)."""
    from sliver.common.errors import SliverError
    from sliver.tools.emulator import cycles

    try:
        cycles.ensure_ready()
    except SliverError as e:
        print(f"  (no modeled cycles: {e})")
        return None
    return cycles.estimate(counted, library)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="the .sliver artifact to profile")
    p.add_argument("--per-layer", action="store_true",
                   help="time (or count) every compiled function, named by its sliver layers")
    p.add_argument("--emulate", action="store_true",
                   help="(arm64 artifacts) count executed instructions on the emulated Pi instead of timing")
    p.add_argument("--threads", type=int, default=2, help="TVM runtime threads (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed runs (default 30; with --emulate: counted calls, default 1)")
    p.add_argument("--json", metavar="PATH", help="also write the report (with every run's time) as JSON")


def run(args) -> int:
    """``sliver bench``: profile, print, and write the JSON report if asked."""
    from sliver.common.errors import SliverError

    if (args.repeat is not None and args.repeat < 1) or args.warmup < 0 or args.threads < 1:
        raise SliverError("--repeat and --threads must be >= 1, --warmup >= 0")
    report = bench_artifact(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0
