"""Static int8 side by side: sliver int8 (``quantize-static``) vs onnxruntime int8
(``quantize_static``: QDQ, per-channel, U8S8) and both fp32, in one process.

    python -m sliver.benchmarks.bench_int8 --models resnet18,resnet50,mobilenet_v2,bert_base --threads 2

Models: the speed set's ResNet-18, ResNet-50, MobileNetV2 (224x224, 1000 classes) and
BERT-base (128 tokens) (:mod:`sliver.benchmarks.speed`: transformers classes, random
weights, since only latency is measured).  Both quantizers get the same calibration
samples (random images / tokens).

Timing (``--cpu-time --threads 1`` on a loaded machine: the calling thread's CPU time
instead of wall time): the fair harness (:func:`sliver.benchmarks.latency.time_fair`): warm-up turns,
then rounds in which every backend gets one turn in a new random order, each turn after
a pause (``--pause-ms``, default 200) and made of ``--calls`` back-to-back calls, the
first after the pause left out; the table gives each backend's median and min warm call,
the ratios to onnxruntime int8, and the load other processes put on the machine
(``OtherLoad``) while timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "bert_base")
BACKENDS = ("sliver fp32", "sliver int8", "ort fp32", "ort int8")


# -- models ------------------------------------------------------------------------------------


def build(name: str):
    """(model, example input as a torch tensor, a function making calibration sample i)."""
    import torch

    from sliver.benchmarks.speed import BUILDERS, build as build_speed

    if name not in MODELS or name not in BUILDERS:
        raise SystemExit(f"bench_int8: unknown model {name!r}; choose from {', '.join(MODELS)}")
    model, (x,) = build_speed(name)
    model = model.eval()
    if x.dtype == torch.int64:
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 1000))
        return model, x, lambda i: torch.randint(0, vocab, x.shape, generator=torch.Generator().manual_seed(i))
    return model, x, lambda i: torch.randn(x.shape, generator=torch.Generator().manual_seed(i))


# -- backends ----------------------------------------------------------------------------------


def prepare_sliver(model, x, samples, threads: int, int8: bool):
    import sliver

    kw = dict(quantize="int8", calibration=samples) if int8 else {}
    art = sliver.lower(model, (x,), "x86_64", **kw)
    m = art.load(threads=threads)
    xn = x.numpy()
    return (lambda: m(xn)), art


def prepare_ort(model, x, samples, threads: int, int8: bool, tmp: str):
    import onnxruntime as ort

    from sliver.benchmarks.latency import _export_onnx

    path = os.path.join(tmp, "model.onnx")
    if not os.path.exists(path):
        _export_onnx(model, x.numpy(), path, "auto", False)
    if int8:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = os.path.join(tmp, "model.pre.onnx")
        quant_pre_process(path, pre)
        name = ort.InferenceSession(pre, providers=["CPUExecutionProvider"]).get_inputs()[0].name

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{name: s.numpy()} for s in samples])

            def get_next(self):
                return next(self.it, None)

        qpath = os.path.join(tmp, "model.int8.onnx")
        quantize_static(pre, qpath, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        path = qpath
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feed)


class _Lock:
    """``--lock FILE``: hold a shared flock on FILE while compiling and an exclusive one
    while timing (other jobs that take the shared lock then pause), or nothing."""

    def __init__(self, path):
        self.f = open(path, "a") if path else None

    def hold(self, exclusive: bool):
        import fcntl

        if self.f:
            fcntl.flock(self.f, fcntl.LOCK_UN)
            fcntl.flock(self.f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)


def run(args) -> dict:
    import torch

    from sliver.benchmarks.latency import OtherLoad, _cpu_name, _loadavg, time_fair

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    out = {"cpu": _cpu_name(), "threads": args.threads, "rounds": args.rounds, "calls": args.calls,
           "clock": "thread CPU time" if args.cpu_time else "wall time",
           "calibration": args.calibration, "models": {}}
    lock = _Lock(args.lock)
    for name in args.models.split(","):
        lock.hold(exclusive=False)
        model, x, sample = build(name)
        samples = [sample(i) for i in range(args.calibration)]
        fns = {}
        with tempfile.TemporaryDirectory() as tmp:
            fns["sliver fp32"], _ = prepare_sliver(model, x, samples, args.threads, False)
            fns["sliver int8"], art = prepare_sliver(model, x, samples, args.threads, True)
            fns["ort fp32"] = prepare_ort(model, x, samples, args.threads, False, tmp)
            fns["ort int8"] = prepare_ort(model, x, samples, args.threads, True, tmp)
            lock.hold(exclusive=True)
            before = _loadavg()
            with OtherLoad() as load:
                timed = time_fair(fns, args.warmup, args.rounds, 1e9, calls=args.calls, pause_s=args.pause_ms / 1e3,
                                  clock=time.thread_time_ns if args.cpu_time else time.perf_counter_ns)
        report = next(r for r in art.records if r.name == "quantize-static").notes
        row = {k: {"median_ms": statistics.median(t.times), "min_ms": min(t.times)} for k, t in timed.items()}
        ref = row["ort int8"]
        for k in row:
            row[k]["vs_ort_int8_median"] = row[k]["median_ms"] / ref["median_ms"]
            row[k]["vs_ort_int8_min"] = row[k]["min_ms"] / ref["min_ms"]
        quantized = sum(r["quantized"] for r in report["layers"])
        out["models"][name] = {"backends": row, "other_load": load.value, "loadavg_before": before,
                               "int8_dot": art.manifest.target.int8_dot,
                               "layers_int8": f"{quantized} of {len(report['layers'])}"}
        lock.hold(exclusive=False)
        print(format_model(name, out["models"][name]), flush=True)
    return out


def format_model(name: str, m: dict) -> str:
    lines = [f"{name}: other load {m['other_load']} CPUs (load average before {m['loadavg_before']}), "
             f"int8 kernel {m['int8_dot']}, "
             f"{m['layers_int8']} layers int8",
             f"  {'backend':<12} {'median ms':>10} {'min ms':>9} {'/ort int8 (median)':>19} {'(min)':>7}"]
    for k in BACKENDS:
        r = m["backends"][k]
        lines.append(f"  {k:<12} {r['median_ms']:>10.2f} {r['min_ms']:>9.2f} {r['vs_ort_int8_median']:>19.2f} "
                     f"{r['vs_ort_int8_min']:>7.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.bench_int8", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--calls", type=int, default=3, help="back-to-back calls per turn (the first is left out)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--pause-ms", type=float, default=200.0)
    p.add_argument("--calibration", type=int, default=8, help="calibration samples for both quantizers")
    p.add_argument("--cpu-time", action="store_true",
                   help="time the calling thread's CPU time instead of wall time (needs --threads 1: a loaded "
                        "machine's waiting is left out, other threads' work would be too)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--lock", metavar="FILE", help="hold a shared flock on FILE while compiling, an exclusive one "
                   "while timing (a machine shared with jobs that take the shared lock)")
    args = p.parse_args(argv)
    if args.cpu_time and args.threads != 1:
        p.error("--cpu-time needs --threads 1: other threads' work is not the calling thread's CPU time")
    out = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
