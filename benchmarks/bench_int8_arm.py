"""Static int8 on the emulated Raspberry Pi: executed instructions and modeled cycles of
sliver int8 (``quantize-static``) vs sliver fp32, on ``rpi4`` (Cortex-A72, NEON
smull/smlal2) and ``rpi5`` (Cortex-A76, sdot), and vs onnxruntime int8 on the Pi 4.

    python -m sliver.benchmarks.bench_int8_arm                       # layers + ResNet-18 at 112x112
    python -m sliver.benchmarks.bench_int8_arm --resolution 224 --json int8-arm.json

* **layers**: the 3x3 stride-1 convs of ResNet-18's four stages (56x56x64, 28x28x128,
  14x14x256, 7x7x512; conv + bias + ReLU), fp32 (sliver's default build: Winograd where it
  applies) vs int8 (the float layer through ``sliver.quantize`` with the target's
  activation codes: quantize + qconv2d with its epilogue), one call each.
* **end to end**: ResNet-18 (``tests/zoo.py``, 1000 classes) at ``--resolution``, fp32 vs
  int8 on both targets; and onnxruntime int8 (``quantize_static``: QDQ, per-channel,
  U8S8; the aarch64 wheel of ``bench_arm``) on the emulated Pi 4 (it sees a Pi 4's
  ``/proc/cpuinfo``, so it takes its non-dot-product kernels: no Pi 5 row for it).

Counts are exact (qemu plugin, one thread); cycles are llvm-mca's model of the library
code (``-mcpu=cortex-a72``: LLVM's Cortex-A57 model; ``cortex-a76`` for the Pi 5), see
:mod:`sliver.tools.emulator.cycles`.  Weights are seeded random (counts do not depend on
their values); 4 random calibration samples.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np

TARGETS = {"rpi4": "cortex-a72", "rpi5": "cortex-a76"}
LAYERS = ((56, 64), (28, 128), (14, 256), (7, 512))


def _conv(c: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU()).eval()


def _count(module, target: str, x):
    from sliver.backends.tvm.build import compile_module
    from sliver.tools.emulator import cycles, icount

    lib = compile_module(module, target).library
    counted = icount.count_library(lib, [x], cpu=TARGETS[target], timeout=7200)
    est = cycles.estimate(counted, lib, mcpu=TARGETS[target])
    return {"instructions": counted.per_call, "cycles": est.cycles}, counted.results[0]


def _pair(model, x, cal, target: str) -> dict:
    import sliver
    from sliver.api import optimize

    module = sliver.trace(model, (x,))
    optimize(module)
    fp32, _ = _count(module, target, x.numpy())
    qmodule, _ = sliver.quantize(model, cal, x, target=target)
    optimize(qmodule)
    int8, _ = _count(qmodule, target, x.numpy())
    return {"fp32": fp32, "int8": int8,
            "ratio_instructions": int8["instructions"] / fp32["instructions"],
            "ratio_cycles": int8["cycles"] / fp32["cycles"]}


def _ort_int8(model, x, cal, work: pathlib.Path) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from sliver.benchmarks.bench_arm import count_ort, export_onnx, ort_site

    fp32, pre, q = work / "m.onnx", work / "m.pre.onnx", work / "m.int8.onnx"
    export_onnx(model, x.numpy(), fp32)
    quant_pre_process(str(fp32), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": s.numpy()} for s in cal])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    calls, _ = count_ort([(q, x.numpy())], work, ort_site())
    return {"instructions": calls[0]}


def run(args) -> dict:
    import torch

    from sliver.benchmarks import zoo as _zoo

    torch.set_num_threads(1)
    out = {"resolution": args.resolution, "layers": {}, "end_to_end": {}}
    targets = args.targets.split(",")
    if not args.no_layers:
        for hw, c in LAYERS:
            model = _conv(c)
            g = torch.Generator().manual_seed(1)
            cal = [torch.randn(1, c, hw, hw, generator=g) for _ in range(4)]
            for t in targets:
                row = _pair(model, cal[0], cal, t)
                out["layers"].setdefault(f"{hw}x{hw}x{c}", {})[t] = row
                print(f"conv 3x3 {hw}x{hw}x{c} {t}: " + _fmt(row), flush=True)
    model, (x,) = _zoo().resnet18(num_classes=1000, resolution=args.resolution)
    model = model.eval()
    g = torch.Generator().manual_seed(2)
    cal = [torch.randn(x.shape, generator=g) for _ in range(4)]
    for t in targets:
        row = _pair(model, x, cal, t)
        out["end_to_end"][t] = row
        print(f"ResNet-18 {args.resolution}x{args.resolution} {t}: " + _fmt(row), flush=True)
    if not args.skip_ort:
        with tempfile.TemporaryDirectory(prefix="sliver-int8-arm-") as tmp:
            try:
                ort = _ort_int8(model, x, cal, pathlib.Path(tmp))
                out["end_to_end"]["ort_int8_rpi4"] = ort
                ours = out["end_to_end"].get("rpi4", {}).get("int8", {}).get("instructions")
                ratio = f", sliver int8 rpi4 / ort int8 = {ours / ort['instructions']:.3f}" if ours else ""
                print(f"ResNet-18 onnxruntime int8 (emulated Pi 4): {ort['instructions']:,} instructions{ratio}",
                      flush=True)
            except Exception as e:  # noqa: BLE001 - report why, keep the rest
                out["end_to_end"]["ort_int8_rpi4"] = {"error": f"{type(e).__name__}: {str(e)[-1500:]}"}
                print(f"onnxruntime int8 failed: {out['end_to_end']['ort_int8_rpi4']['error']}", flush=True)
    return out


def _fmt(row) -> str:
    return (f"fp32 {row['fp32']['instructions']:,} instr / {row['fp32']['cycles']:,.0f} cycles; int8 "
            f"{row['int8']['instructions']:,} / {row['int8']['cycles']:,.0f}; int8/fp32 instructions "
            f"{row['ratio_instructions']:.3f}, cycles {row['ratio_cycles']:.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_int8_arm",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=112)
    p.add_argument("--targets", default="rpi4,rpi5")
    p.add_argument("--no-layers", action="store_true")
    p.add_argument("--skip-ort", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
