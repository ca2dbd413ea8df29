"""Per-layer-class latency: every distinct conv / linear shape of zoo models, alone,
as sliver's x86_64 artifact (default schedules) vs onnxruntime, side by side.

Each distinct layer (a ``Conv2d`` + ``ReLU``, or the ``Linear``) of the chosen models
becomes a one-layer torch model with the same shape (input size taken from a forward
pass of the model); sliver lowers it (untuned, ``tune=False``), onnxruntime gets its
ONNX export, and both are timed (``bench.time_runs``) with the same
thread count, one backend after the other.  Outputs are checked against torch.  The table groups layers into
classes (7x7 stem, 3x3 stride 1, 3x3 stride 2, 1x1, depthwise, linear) and prints each
class's summed min time and the ratio sliver / onnxruntime — where sliver loses.
The ``kernel`` column says which conv sliver chose (``direct``, or ``wino4x4`` /
``wino2x2``: a Winograd F(m x m, 3 x 3) conv; for a whole model, how many of its
functions are); ``--direct`` also times the Winograd layers and models compiled
direct (``lower(..., winograd=False)``) beside them.

    python -m sliver.benchmarks.bench_convs [--models resnet18,mobilenet_v2] [--only 3x3s1] [--direct]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from sliver.benchmarks.latency import Result, build_model, prepare_ort
from sliver.tools.profile import set_tvm_threads, stats, time_runs


@dataclass
class Layer:
    kind: str  # "conv" or "linear"
    cin: int
    cout: int
    k: int = 1
    stride: int = 1
    pad: int = 0
    groups: int = 1
    h: int = 1
    w: int = 1
    count: int = 1  # how many layers of the models have this shape
    label: str = ""  # a whole model's name (kind "model")

    @property
    def cls(self) -> str:
        if self.kind == "linear":
            return "linear"
        if self.groups > 1 and self.groups == self.cin:
            return f"depthwise {self.k}x{self.k} s{self.stride}"
        if self.k == 1:
            return f"1x1 s{self.stride}"
        if self.cin <= 4:
            return f"stem {self.k}x{self.k} s{self.stride}"
        return f"{self.k}x{self.k} s{self.stride}"

    @property
    def key(self) -> tuple:
        return (self.kind, self.cin, self.cout, self.k, self.stride, self.pad, self.groups, self.h, self.w)

    @property
    def macs(self) -> int:
        if self.kind == "linear":
            return self.cin * self.cout
        ho = (self.h + 2 * self.pad - self.k) // self.stride + 1
        wo = (self.w + 2 * self.pad - self.k) // self.stride + 1
        return ho * wo * self.cout * (self.cin // self.groups) * self.k * self.k

    def name(self) -> str:
        if self.label:
            return f"{self.label} (whole model)"
        if self.kind == "linear":
            return f"linear {self.cin}->{self.cout}"
        g = f" g{self.groups}" if self.groups > 1 else ""
        return f"{self.cin}x{self.h}x{self.w} -> {self.cout} {self.k}x{self.k}/{self.stride}{g}"

    def module(self):
        import torch

        torch.manual_seed(0)
        if self.kind == "linear":
            return torch.nn.Linear(self.cin, self.cout).eval(), np.random.default_rng(0).standard_normal(
                (1, self.cin)).astype("float32")
        m = torch.nn.Sequential(torch.nn.Conv2d(self.cin, self.cout, self.k, self.stride, self.pad, groups=self.groups),
                                torch.nn.ReLU()).eval()
        x = np.random.default_rng(0).standard_normal((1, self.cin, self.h, self.w)).astype("float32")
        return m, x


def layers_of(model_names, resolution: int) -> list[Layer]:
    """Distinct conv/linear shapes of the zoo models, with how often each occurs."""
    import torch

    found: dict[tuple, Layer] = {}
    for name in model_names:
        model, x = build_model(name, resolution, 1000)
        hooks = []

        def hook(mod, inp, _out):
            t = inp[0]
            if isinstance(mod, torch.nn.Conv2d):
                layer = Layer("conv", mod.in_channels, mod.out_channels, mod.kernel_size[0], mod.stride[0],
                              mod.padding[0], mod.groups, int(t.shape[2]), int(t.shape[3]))
            else:
                layer = Layer("linear", mod.in_features, mod.out_features)
            if layer.key in found:
                found[layer.key].count += 1
            else:
                found[layer.key] = layer

        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                hooks.append(m.register_forward_hook(hook))
        with torch.no_grad():
            model(torch.from_numpy(x))
        for h in hooks:
            h.remove()
    return list(found.values())


def kernel_cpu_times(compiled, x, warmup: int, repeat: int) -> list[float]:
    """Per run, the thread CPU time (ms) of the artifact's functions that compute
    sliver ops: a one-layer artifact also transposes its NCHW input and output to and
    from NHWC, which in a whole model happens once at its ends.  One TVM thread: the
    kernels run on the calling thread."""
    from sliver.tools.profile import call_times, describe

    runs = call_times(compiled, [x], repeat=max(repeat, 1), warmup=warmup, clock=time.thread_time_ns)
    return [sum(sum(secs) for name, secs in run.items() if describe(compiled.manifest, name)[0]) * 1e3
            for run in runs]


def run(args) -> dict:
    if args.cpu_time:
        args.threads = 1
    set_tvm_threads(args.threads)
    import torch

    import sliver

    torch.set_num_threads(args.threads)
    layers = layers_of(args.models.split(","), args.resolution)
    if args.only:
        layers = [l for l in layers if args.only in l.cls.replace(" ", "")]
    jobs = [(layer, layer.module()) for layer in layers]
    if args.whole:  # the models themselves, after their layers
        jobs += [(Layer("model", 0, 0, count=0, label=n), build_model(n, args.resolution, 1000))
                 for n in args.models.split(",")]
    rows = []
    for i, (layer, (model, x)) in enumerate(jobs):
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        print(f"[bench_convs] {i + 1}/{len(jobs)} {layer.name()}", file=sys.stderr, flush=True)
        art = sliver.lower(model, (torch.from_numpy(x),), target="x86_64", tune=False)
        compiled = art.load()
        fns = {"sliver": lambda: compiled.run(x)[0]}
        wino = art.manifest.winograd
        kernel = "direct" if not wino else "wino" + ("4x4" if "winograd4x4" in wino[0] else "2x2")
        direct = None
        if args.direct and wino:
            direct = sliver.lower(model, (torch.from_numpy(x),), target="x86_64", tune=False, winograd=False).load()
            fns["direct"] = lambda: direct.run(x)[0]
        if not args.skip_ort:
            ort = prepare_ort(model, x, args.threads, "auto", Result("", ""), False)
            fns["onnxruntime"] = lambda: ort.fn(x)
        # one backend after the other: interleaving single calls lets one runtime's
        # spinning worker threads steal the cores from the other's next call
        if args.cpu_time:
            timed = {k: (time_runs(fn, args.warmup, args.repeat, math.inf, clock=time.process_time_ns)[1],)
                     for k, fn in fns.items()}
            if layer.kind != "model":  # the layer's own kernels, not the NCHW<->NHWC transposes around it
                timed["sliver"] = (kernel_cpu_times(compiled, x, args.warmup, args.repeat),)
                if direct is not None:
                    timed["direct"] = (kernel_cpu_times(direct, x, args.warmup, args.repeat),)
        else:
            timed = {k: time_runs(fn, args.warmup, args.repeat, args.budget)[1:] for k, fn in fns.items()}
        row = {"layer": layer.name(), "class": "whole model" if layer.kind == "model" else layer.cls,
               "count": layer.count, "macs": layer.macs if layer.kind != "model" else 0,
               "kernel": kernel if layer.kind != "model" else f"{len(wino)}wino"}
        for k, fn in fns.items():
            got = fn()
            err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
            s = stats(timed[k][0])
            row[k] = {"median_ms": s["median_ms"], "min_ms": s["min_ms"], "rel_err": err}
        rows.append(row)
    return {"threads": args.threads, "resolution": args.resolution, "models": args.models, "rows": rows,
            "timing": "process CPU time" if args.cpu_time else "wall clock"}


def format_report(rep: dict) -> str:
    has_ort = any("onnxruntime" in r for r in rep["rows"])
    has_direct = any("direct" in r for r in rep["rows"])
    lines = [f"{'layer':34} {'class':16} {'n':>2} {'GMAC':>6} {'kernel':>7} {'sliver min':>10} {'med':>8} {'GFLOP/s':>8}"
             + (f" {'direct min':>10} {'wino/direct':>11}" if has_direct else "")
             + (f" {'ort min':>8} {'med':>8} {'sliver/ort':>10}" if has_ort else "") + "  max rel err"]
    classes: dict[str, list] = {}
    for r in rep["rows"]:
        s = r["sliver"]
        gflops = 2 * r["macs"] / (s["min_ms"] * 1e6) if r["macs"] else 0.0
        line = (f"{r['layer']:34} {r['class']:16} {r['count']:>2} {r['macs'] / 1e9:6.3f} {r.get('kernel', ''):>7}"
                f" {s['min_ms']:10.3f} {s['median_ms']:8.3f} {gflops:8.1f}")
        if has_direct:
            d = r.get("direct")
            line += f" {d['min_ms']:10.3f} {s['min_ms'] / d['min_ms']:10.2f}x" if d else f" {'':10} {'':11}"
        if r["class"] == "whole model":
            c = [0.0, 0.0, 0]  # not summed with the layers
        else:
            c = classes.setdefault(r["class"], [0.0, 0.0, 0])
        c[0] += s["min_ms"] * r["count"]
        c[2] += r["macs"] * r["count"]
        errs = [s["rel_err"]] + ([r["direct"]["rel_err"]] if "direct" in r else [])
        if "onnxruntime" in r:
            o = r["onnxruntime"]
            c[1] += o["min_ms"] * r["count"]
            line += f" {o['min_ms']:8.3f} {o['median_ms']:8.3f} {s['min_ms'] / o['min_ms']:9.2f}x"
            errs.append(o["rel_err"])
        lines.append(line + f"  {max(errs):.1e}")
    lines.append("")
    lines.append(f"{'class (x layer count)':34} {'GMAC':>8} {'sliver min ms':>14}" + (f" {'ort min ms':>11} {'sliver/ort':>10}" if has_ort else ""))
    for cls, (sl, o, macs) in sorted(classes.items(), key=lambda kv: -kv[1][0]):
        line = f"{cls:34} {macs / 1e9:8.3f} {sl:14.2f}"
        if has_ort:
            line += f" {o:11.2f} {sl / o:9.2f}x"
        lines.append(line)
    tot_s = sum(c[0] for c in classes.values())
    tot_o = sum(c[1] for c in classes.values())
    lines.append(f"{'all':34} {sum(c[2] for c in classes.values()) / 1e9:8.3f} {tot_s:14.2f}"
                 + (f" {tot_o:11.2f} {tot_s / tot_o:9.2f}x" if has_ort else ""))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_convs", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--budget", type=float, default=5.0, help="seconds of timed runs per layer and backend")
    p.add_argument("--only", default="", help="only layer classes containing this (spaces removed), e.g. 3x3s1")
    p.add_argument("--skip-ort", action="store_true")
    p.add_argument("--whole", action="store_true", help="also time the whole models")
    p.add_argument("--direct", action="store_true",
                   help="also time the Winograd layers compiled as direct convs (winograd=False)")
    p.add_argument("--cpu-time", action="store_true",
                   help="one thread per runtime, timed by process CPU time (steady on a busy machine)")
    p.add_argument("--json", help="also write the results as JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    rep = run(args)
    print(f"bench_convs: batch 1, {args.resolution}x{args.resolution} models {args.models}, {args.threads} threads, "
          f"min / median of {args.repeat} runs (ms, {rep['timing']}); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(format_report(rep))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        from sliver.common.files import atomic_write

        atomic_write(args.json, lambda f: f.write(json.dumps(rep, indent=1).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
