"""The speed set on the emulated Pi: executed instructions and modeled cycles per inference.

    python -m sliver.benchmarks.speed_arm --models resnet18 --json resnet18.arm.json
    python -m sliver.benchmarks.speed_arm --table-from *.arm.json

For each architecture of :mod:`sliver.benchmarks.speed` (the same models, inputs and
seeds as the x86 table), on the emulated Raspberry Pi 4 (Cortex-A72, one thread):

1. **sliver**: the default ``arm64`` build (``sliver.lower(model, x, target="arm64",
   tune=False)``: what ``sliver lower --target arm64`` ships), one ``main`` call counted
   by :mod:`sliver.tools.emulator.icount` after a warm-up call;
2. **onnxruntime**: its aarch64 wheel (:func:`sliver.benchmarks.bench_arm.ort_site`) on the
   fp32 ONNX export the x86 harness times (``ORT_ENABLE_ALL``, one thread, no spinning),
   one ``run`` counted after a warm-up run, minus one run of an Identity model (the
   InferenceSession's own cost per run).

Instructions are exact counts of everything the call executes (the library, the runtime,
libc, Python).  Cycles are :mod:`sliver.tools.emulator.cycles`' static model (llvm-mca's
Cortex-A57 scheduling model, every load an L1 hit) of the blocks executed in the kernel
library: sliver's compiled ``.so``, onnxruntime's ``onnxruntime_pybind11_state`` module (for
onnxruntime minus the Identity run's); code outside it (the TVM runtime, libm, libc, Python) is not
modeled and is reported as instructions.  Both outputs are checked against torch.

One model per process is the practical unit: a large model takes tens of minutes under
qemu.  ``--table-from`` joins the JSON reports into one table.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

from sliver.tools.shared import say

_say = functools.partial(say, who="speed_arm")


def _library_count(marks, k: int, maps: str, lib_path: str):
    """The instructions and blocks of the library ``lib_path`` (as the guest mapped it)
    between markers ``k - 1`` and ``k`` of an onnxruntime run (:data:`bench_arm.ORT_GUEST`)."""
    from sliver.tools.emulator import icount

    by = {m[0]: m for m in marks}
    blocks, empty = by[k][2], by[1][2]
    data = pathlib.Path(lib_path).read_bytes()
    functions, outside, lib_blocks = icount._attribute(blocks, empty, maps, data, lib_path)
    total = by[k][1] - by[k - 1][1] - (by[1][1] - by[0][1])
    return icount.InstructionCount(per_call=total, calls=[total], startup=0, marker_cost=by[1][1] - by[0][1],
                                   functions=functions, outside=outside, blocks=lib_blocks)


#: the Python module the wheel links onnxruntime into (kernels included; its
#: ``libonnxruntime.so`` is the C API's library, which Python does not load)
ORT_LIBRARY = "onnxruntime_pybind11_state"


def ort_library(maps: str) -> str:
    """The path of onnxruntime's kernel library in the guest's memory map."""
    from sliver.tools.emulator import icount

    paths = {r[3] for r in icount._parse_maps(maps) if pathlib.Path(r[3]).name.startswith(ORT_LIBRARY)}
    if len(paths) != 1:
        raise RuntimeError(f"expected one {ORT_LIBRARY}*.so in the emulated run's memory map, found {sorted(paths)}")
    return paths.pop()


def count_onnxruntime(model, x: np.ndarray, want: np.ndarray, version: str) -> dict:
    import torch

    from sliver.benchmarks import bench_arm
    from sliver.benchmarks.latency import _export_onnx
    from sliver.common.numerics import output_error
    from sliver.tools.emulator import cycles

    site = bench_arm.ort_site(version)
    with tempfile.TemporaryDirectory(prefix="sliver-speed-arm-") as tmp:
        work = pathlib.Path(tmp)
        exporter = _export_onnx(model, x, str(work / "model.onnx"), "auto", False)
        bench_arm.export_onnx(torch.nn.Identity(), np.zeros((1, 1), np.float32), work / "identity.onnx")
        t0 = time.perf_counter()
        calls, out, marks, maps = bench_arm.count_ort(
            [(work / "model.onnx", x), (work / "identity.onnx", np.zeros((1, 1), np.float32))], work, site,
            blocks=True)
        count_s = time.perf_counter() - t0
    lib = ort_library(maps)
    model_lib, identity_lib = _library_count(marks, 3, maps, lib), _library_count(marks, 5, maps, lib)
    est_model, est_identity = cycles.estimate(model_lib, lib), cycles.estimate(identity_lib, lib)
    lib_instr = sum(b.total for b in model_lib.blocks) - sum(b.total for b in identity_lib.blocks)
    return {"instructions": calls[0] - calls[1], "session_overhead": calls[1],
            "library_instructions": lib_instr, "cycles": est_model.cycles - est_identity.cycles,
            "unmodeled": est_model.unmodeled, "model": est_model.model, "exporter": exporter, "version": version,
            "max_rel_err": float(output_error(np.asarray(out), want)[1]), "count_s": count_s}


def count_sliver(model, x: np.ndarray, want: np.ndarray) -> dict:
    import torch

    import sliver
    from sliver.common.numerics import output_error
    from sliver.tools.emulator import cycles, icount

    t0 = time.perf_counter()
    art = sliver.lower(model, (torch.from_numpy(x),), target="arm64", tune=False, verify=False)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    counted = icount.count_artifact(art, [x], timeout=4 * 3600)
    count_s = time.perf_counter() - t0
    est = cycles.estimate(counted, art.library)
    return {"instructions": counted.per_call, "library_instructions": est.instructions, "cycles": est.cycles,
            "outside": counted.outside, "unmodeled": est.unmodeled, "model": est.model,
            "max_rel_err": float(output_error(counted.results[0], want)[1]), "compile_s": compile_s,
            "count_s": count_s, "top_functions": dict(list(est.functions.items())[:12])}


def run(name: str, skip_ort: bool, version: str) -> dict:
    import torch

    from sliver.benchmarks import speed
    from sliver.tools.emulator import emulate, icount

    icount.ensure_ready()
    model, inputs = speed.build(name)
    x = np.ascontiguousarray(inputs[0].numpy())
    with torch.no_grad():
        want = model(inputs[0]).numpy()
    report = {"model": name, "cpu": emulate.PI_CPU, "threads": 1, "builds": {}}
    for backend, fn in (("sliver", lambda: count_sliver(model, x, want)),
                        ("onnxruntime", lambda: count_onnxruntime(model, x, want, version))):
        if backend == "onnxruntime" and skip_ort:
            continue
        try:
            report["builds"][backend] = r = fn()
            _say(f"{name} {backend}: {r['instructions']:,} instructions, {r['cycles']:,.0f} modeled cycles, "
                 f"max rel err vs torch {r['max_rel_err']:.2g}")
        except Exception as e:  # noqa: BLE001 - the row says why, the other backend still counts
            report["builds"][backend] = {"error": f"{type(e).__name__}: {str(e).strip()[-1500:]}"}
            _say(f"{name} {backend} failed: {report['builds'][backend]['error']}")
    return report


def table(reports: list[dict]) -> str:
    from sliver.benchmarks.speed import SPEED_SET, TITLES

    order = {m: i for i, m in enumerate(SPEED_SET)}
    lines = ["| model | sliver instructions | onnxruntime instructions | ÷ (instructions) | sliver cycles | "
             "onnxruntime cycles | ÷ (cycles) | max rel err sliver, onnxruntime |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(r, key, scale=1e6):
        return f"{r[key] / scale:,.1f}M" if r and key in r else (r or {}).get("error", "—")[:60]

    for rep in sorted(reports, key=lambda r: order.get(r["model"], len(order))):
        s, o = rep["builds"].get("sliver"), rep["builds"].get("onnxruntime")
        both = s and o and "instructions" in s and "instructions" in o
        ri = f"{s['instructions'] / o['instructions']:.2f}×" if both else "—"
        rc = f"{s['cycles'] / o['cycles']:.2f}×" if both else "—"
        err = ", ".join(f"{r['max_rel_err']:.1g}" if r and "max_rel_err" in r else "—" for r in (s, o))
        lines.append(f"| {TITLES.get(rep['model'], rep['model'])} | {cell(s, 'instructions')} | "
                     f"{cell(o, 'instructions')} | {ri} | {cell(s, 'cycles')} | {cell(o, 'cycles')} | {rc} | {err} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from sliver.benchmarks import bench_arm
    from sliver.benchmarks.speed import BUILDERS, SPEED_SET

    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.speed_arm", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(SPEED_SET), help="comma-separated subset of the speed set")
    p.add_argument("--skip-ort", action="store_true", help="count sliver only")
    p.add_argument("--ort-version", default=bench_arm.ORT_VERSION, help="onnxruntime aarch64 wheel (default %(default)s)")
    p.add_argument("--json", metavar="PATH", help="write the reports as JSON (a list, one per model)")
    p.add_argument("--table-from", nargs="+", metavar="JSON", help="count nothing: the table of earlier --json files")
    args = p.parse_args(argv)
    if args.table_from:
        reports = [r for path in args.table_from for r in json.loads(pathlib.Path(path).read_text())]
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in BUILDERS]
        if unknown:
            p.error(f"unknown models {unknown}; the speed set is {', '.join(SPEED_SET)}")
        reports = []
        for name in models:
            t0 = time.perf_counter()
            reports.append(run(name, args.skip_ort, args.ort_version))
            reports[-1]["wall_s"] = time.perf_counter() - t0
            if args.json:  # after every model: a long run keeps what it counted
                pathlib.Path(args.json).write_text(json.dumps(reports, indent=2))
    print(table(reports))
    print("\nM = millions per inference, emulated Raspberry Pi 4 (Cortex-A72), 1 thread; instructions: exact "
          "(qemu), onnxruntime minus an Identity run; cycles: llvm-mca's model of the kernel library's blocks.")
    ok = all("instructions" in b for r in reports for b in r["builds"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
