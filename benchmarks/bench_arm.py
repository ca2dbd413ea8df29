"""ARM cost without Arm hardware: executed aarch64 instructions of ResNet-18 on the emulated Pi.

    python -m sliver.benchmarks.bench_arm                       # ResNet-18 at 224x224, 1000 classes (~15 min)
    python -m sliver.benchmarks.bench_arm --resolution 64 --skip-ort --json arm.json   # a few minutes

Wall time under qemu says nothing about a Pi, but the number of instructions a
kernel executes is exact and deterministic, and on the same ISA a proxy for cost
(it ignores memory stalls and instruction latencies: a NEON FMA counts as one
instruction like a scalar one, which is exactly why vectorized code wins).  In one
run this script counts, on the emulated Raspberry Pi 4 (Cortex-A72, one thread;
:mod:`sliver.tools.emulator.icount`):

1. **sliver**: the model traced and optimized with the default pipeline, compiled
   for ``arm64`` with sliver's default schedules (what ``sliver lower --target
   arm64`` ships);
2. **TVM naive**: the same optimized module compiled by TVM's own pipeline
   (``compile_module(..., schedules=False)``: nothing scheduled);
3. **onnxruntime**: the aarch64 wheel from PyPI (``--ort-version``, unpacked
   into ``~/.cache/sliver/onnxruntime-aarch64-VERSION``) running an fp32 ONNX
   export (``ORT_ENABLE_ALL``, one intra-op thread, no spinning).  qemu 7.2 shows the
   guest the host's ``/proc/cpuinfo``, on which onnxruntime's cpuinfo crashes
   (SIGSEGV while importing); the emulated Pi therefore gets a Raspberry Pi 4's
   ``/proc/cpuinfo`` (``emulate.run_python(pi_cpuinfo=True)``).

Counts are per inference (one call, start-up and loading excluded by markers).
Each output is checked against torch.

**Per conv layer**: sliver and TVM naive from one whole-model run each, by
attributing the instructions of every compiled function to the sliver ops it
computes (recorded at compile time): a fused function (conv + bias + residual add
+ ReLU) counts for its conv; a function shared by several convs of the same shape
is split evenly among them (same shapes, same data-independent code); in the naive
build the conv and its bias add are separate functions, both counted for the conv,
while its ReLU is not (it is in "other").  onnxruntime runs each distinct conv
shape as a one-node model (Conv + ReLU, which onnxruntime fuses), and the
instructions of an Identity model's run (session overhead) are subtracted.

ResNet-18 is torchvision's architecture (``tests/zoo.py``, real widths) at
224x224 by default; ``--resolution`` shrinks the input to shorten the emulation
(instruction counts of convolutions scale with the output area, so the per-layer
ratios roughly carry over, though small feature maps change what the schedules do).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

from sliver.tools.shared import say

ORT_VERSION = "1.32.0"  # has cp311 manylinux_2_28 aarch64 wheels (Debian bookworm: glibc 2.36)


_say = functools.partial(say, who="bench_arm")


def ort_site(version: str = ORT_VERSION) -> pathlib.Path:
    """A folder holding the aarch64 onnxruntime wheel (installed on first use with
    pip, without dependencies: numpy comes from the emulated Pi's site)."""
    from sliver.tools.emulator import emulate

    site = emulate.pi_root().parent / f"onnxruntime-aarch64-{version}"
    if (site / "onnxruntime" / "__init__.py").is_file():
        return site
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=site.name + ".", dir=site.parent))
    _say(f"installing onnxruntime {version} for aarch64 into {site}")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--no-compile",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
           "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_17_aarch64",
           "--platform", "manylinux2014_aarch64", "--target", str(tmp), f"onnxruntime=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_arm: pip could not fetch onnxruntime {version} for aarch64:\n{proc.stderr[-2000:]}")
    os.replace(tmp, site)
    return site


# -- the model and its convs -------------------------------------------------------------


def conv_layers(module) -> list[dict]:
    """The conv2d ops of a sliver module, with their layer names and shapes."""
    from sliver.api import layer_of

    out = []
    for op in module.ops:
        if op.kind != "conv2d":
            continue
        a = op.attrs
        x, w = op.operands[0].type.shape, op.operands[1].type.shape
        key = (tuple(x), tuple(w), tuple(a["stride"]), tuple(a["padding"]), a["groups"])
        out.append({"op": op.results[0].name, "layer": layer_of(op), "input": list(x), "weight": list(w),
                    "stride": list(a["stride"]), "padding": list(a["padding"]), "groups": a["groups"], "key": key})
    return out


def per_op(functions: dict, primfuncs: dict, ops: set) -> tuple[dict, int]:
    """({op: instructions}, instructions of functions computing none of ``ops``):
    a function's count is split evenly among the ``ops`` it computes."""
    out, other = dict.fromkeys(ops, 0.0), 0
    for fn, n in functions.items():
        mine = [o for o in primfuncs.get(fn, []) if o in ops]
        if not mine:
            other += n
            continue
        for o in mine:
            out[o] += n / len(mine)
    return {k: int(round(v)) for k, v in out.items()}, other


# -- onnxruntime on the emulated Pi ---------------------------------------------------------------

ORT_GUEST = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import onnxruntime as ort
    from sliver.tools.emulator.icount import mark

    job = json.load(open(sys.argv[1]))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    runs = []
    for m in job["models"]:
        sess = ort.InferenceSession(m["path"], so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: np.load(m["input"])}
        sess.run(None, feed)  # warm-up: allocations, first-run paths
        runs.append((sess, feed))
    mark(0)
    mark(1, dump=job["blocks"])
    outs = []
    for i, (sess, feed) in enumerate(runs):
        mark(2 + 2 * i)
        y = sess.run(None, feed)[0]
        mark(3 + 2 * i, dump=job["blocks"])
        outs.append(y)
    np.save(job["output"], outs[0])
    if job["blocks"]:
        import shutil
        shutil.copyfile("/proc/self/maps", job["maps"])
    print(ort.__version__)
    """
)


def count_ort(models: list[tuple[str, np.ndarray]], work: pathlib.Path, site: pathlib.Path, blocks: bool = False):
    """Instructions of one run of each ONNX model (path, input) under onnxruntime on
    the emulated Pi, and the first model's output; with ``blocks`` also the markers with
    the blocks each run executed (:func:`icount.run_counted`) and the guest's memory map."""
    from sliver.tools.emulator import icount

    specs = []
    for i, (path, x) in enumerate(models):
        np.save(work / f"in{i}.npy", x)
        specs.append({"path": str(path), "input": str(work / f"in{i}.npy")})
    (work / "job.json").write_text(json.dumps({"models": specs, "output": str(work / "out.npy"), "blocks": blocks,
                                               "maps": str(work / "maps.txt")}))
    (work / "ort_guest.py").write_text(ORT_GUEST)
    marks = icount.run_counted([str(work / "ort_guest.py"), str(work / "job.json")], extra_path=[str(site)],
                               pi_cpuinfo=True, timeout=3600)
    calls, _, _ = icount.segments(marks, len(models))
    if blocks:
        return calls, np.load(work / "out.npy"), marks, (work / "maps.txt").read_text()
    return calls, np.load(work / "out.npy")


def export_onnx(model, x: np.ndarray, path: pathlib.Path) -> None:
    import contextlib
    import io
    import warnings

    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], opset_version=17)


def conv_model(c: dict):
    import torch
    from torch import nn

    o, i_per_group, kh, kw = c["weight"]
    pad = c["padding"]  # [top, left, bottom, right] in sliver; symmetric in ResNet
    conv = nn.Conv2d(i_per_group * c["groups"], o, (kh, kw), tuple(c["stride"]), (pad[0], pad[1]),
                     groups=c["groups"], bias=True)
    with torch.no_grad():
        torch.manual_seed(0)
        conv.weight.normal_(0, 0.1)
        conv.bias.normal_(0, 0.1)
    return nn.Sequential(conv, nn.ReLU()).eval()


# -- the benchmark ---------------------------------------------------------------------------


def run(args) -> dict:
    import torch

    import sliver
    from sliver.api import optimize
    from sliver.backends.tvm.build import compile_module
    from sliver.tools.emulator import emulate, icount
    from sliver.common.numerics import output_error
    from sliver.benchmarks import zoo as _zoo

    icount.ensure_ready()
    zoo = _zoo()
    model, inputs = zoo.resnet18(num_classes=args.num_classes, resolution=args.resolution)
    model.eval()
    x = np.ascontiguousarray(inputs[0].numpy())
    with torch.no_grad():
        want = model(inputs[0]).numpy()
    module = sliver.trace(model, (x,))
    optimize(module)
    convs = conv_layers(module)
    conv_ops = {c["op"] for c in convs}
    report = {"config": {"model": "resnet18", "resolution": args.resolution, "num_classes": args.num_classes,
                         "batch": 1, "cpu": emulate.PI_CPU, "threads": 1}, "builds": {}, "convs": convs}

    for name, schedules in (("sliver", True), ("tvm_naive", False)):
        t0 = time.perf_counter()
        compiled = compile_module(module, "arm64", schedules=schedules)
        lib, primfuncs = compiled.library, compiled.primfuncs
        _say(f"{name}: compiled for arm64 in {time.perf_counter() - t0:.0f} s; counting on the emulated Pi")
        t0 = time.perf_counter()
        c = icount.count_library(lib, [x], timeout=7200)
        err = output_error(c.results[0], want)[1]
        ops, other = per_op(c.functions, primfuncs, conv_ops)
        report["builds"][name] = {"instructions": c.per_call, "per_conv": ops, "other_functions": other,
                                  "outside_library": sum(c.outside.values()), "max_rel_err": err,
                                  "count_s": time.perf_counter() - t0}
        _say(f"{name}: {c.per_call:,} instructions per inference ({time.perf_counter() - t0:.0f} s), "
             f"max rel err vs torch {err:.2g}")

    if not args.skip_ort:
        try:
            report["builds"]["onnxruntime"] = _ort(model, x, want, convs, args)
        except Exception as e:  # noqa: BLE001 - report why it could not run, keep the rest
            report["builds"]["onnxruntime"] = {"error": f"{type(e).__name__}: {str(e).strip()[-1500:]}"}
            _say(f"onnxruntime failed: {report['builds']['onnxruntime']['error']}")
    return report


def _ort(model, x, want, convs, args) -> dict:
    import torch

    from sliver.common.numerics import output_error

    site = ort_site(args.ort_version)
    with tempfile.TemporaryDirectory(prefix="sliver-bench-arm-") as tmp:
        work = pathlib.Path(tmp)
        export_onnx(model, x, work / "model.onnx")
        models = [(work / "model.onnx", x)]
        # session overhead: an Identity model of a tiny tensor
        export_onnx(torch.nn.Identity(), np.zeros((1, 1), np.float32), work / "identity.onnx")
        models.append((work / "identity.onnx", np.zeros((1, 1), np.float32)))
        keys = []
        for c in convs:
            if c["key"] in keys:
                continue
            keys.append(c["key"])
            path = work / f"conv{len(keys)}.onnx"
            export_onnx(conv_model(c), np.zeros(c["input"], np.float32), path)
            models.append((path, np.random.default_rng(0).standard_normal(c["input"]).astype(np.float32)))
        t0 = time.perf_counter()
        calls, out = count_ort(models, work, site)
    overhead = calls[1]
    per_key = {k: max(n - overhead, 0) for k, n in zip(keys, calls[2:])}
    err = output_error(out, want)[1]
    _say(f"onnxruntime: {calls[0]:,} instructions per inference ({time.perf_counter() - t0:.0f} s), "
         f"max rel err vs torch {err:.2g}")
    return {"instructions": calls[0], "per_conv": {c["op"]: per_key[c["key"]] for c in convs},
            "session_overhead": overhead, "max_rel_err": err, "version": args.ort_version}


def format_report(report: dict) -> str:
    from sliver.common.text import table_lines

    cfg, builds = report["config"], report["builds"]
    s, n = builds["sliver"], builds["tvm_naive"]
    ort = builds.get("onnxruntime", {})
    has_ort = "instructions" in ort
    lines = [f"ResNet-18 (torchvision architecture), batch 1, {cfg['resolution']}x{cfg['resolution']}, "
             f"{cfg['num_classes']} classes, on the emulated Raspberry Pi 4 ({cfg['cpu']}, 1 thread): "
             "executed aarch64 instructions per inference", ""]
    rows = [("build", "instructions", "vs sliver", "max rel err vs torch")]
    rows.append(("sliver (default schedules)", f"{s['instructions']:,}", "1.00x", f"{s['max_rel_err']:.2g}"))
    rows.append(("TVM naive (schedules=False)", f"{n['instructions']:,}", f"{n['instructions'] / s['instructions']:.2f}x",
                 f"{n['max_rel_err']:.2g}"))
    if has_ort:
        rows.append((f"onnxruntime {ort['version']} (aarch64)", f"{ort['instructions']:,}",
                     f"{ort['instructions'] / s['instructions']:.2f}x", f"{ort['max_rel_err']:.2g}"))
    lines += table_lines(rows)
    lines += ["", "per conv layer (instructions; ratios = other / sliver):"]
    head = ["layer", "input", "kernel", "stride", "sliver", "TVM naive", "naive/sliver"]
    if has_ort:
        head += ["onnxruntime", "ort/sliver"]
    rows = [tuple(head)]
    for c in report["convs"]:
        a, b = s["per_conv"][c["op"]], n["per_conv"][c["op"]]
        row = [c["layer"], "x".join(map(str, c["input"][1:])), "x".join(map(str, c["weight"])),
               str(c["stride"][0]), f"{a:,}", f"{b:,}", f"{b / a:.1f}x" if a else "-"]
        if has_ort:
            o = ort["per_conv"][c["op"]]
            row += [f"{o:,}", f"{o / a:.2f}x" if a else "-"]
        rows.append(tuple(row))
    tot = lambda d: sum(d["per_conv"].values())  # noqa: E731
    total = ["all convs", "", "", "", f"{tot(s):,}", f"{tot(n):,}", f"{tot(n) / tot(s):.1f}x"]
    if has_ort:
        total += [f"{tot(ort):,}", f"{tot(ort) / tot(s):.2f}x"]
    rows.append(tuple(total))
    lines += table_lines(rows, indent="  ")
    if has_ort:
        lines.append(f"  (onnxruntime per conv: a Conv+ReLU model of that shape, minus an Identity model's run, "
                     f"{ort['session_overhead']:,} instructions)")
    elif ort.get("error"):
        lines.append(f"onnxruntime could not run: {ort['error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_arm", description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=224, help="input height and width (default %(default)s)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default %(default)s)")
    p.add_argument("--skip-ort", action="store_true", help="do not count onnxruntime")
    p.add_argument("--ort-version", default=ORT_VERSION, help="onnxruntime aarch64 wheel (default %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    report = run(args)
    report["wall_s"] = time.perf_counter() - t0
    print(format_report(report))
    print(f"\ntotal {report['wall_s']:.0f} s")
    if args.json:
        for c in report["convs"]:
            c["key"] = [list(k) if isinstance(k, tuple) else k for k in c["key"]]
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
