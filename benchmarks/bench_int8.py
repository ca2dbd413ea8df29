"""Static int8 side by side: sliver int8 (``quantize-static``) vs onnxruntime int8
(``quantize_static``: QDQ, per-channel, U8S8) and both fp32, in one process.

    python -m sliver.benchmarks.bench_int8 --models resnet18,resnet50,mobilenet_v2,bert_base --threads 2

Models: ResNet-18, MobileNetV2 (the test zoo's copies of torchvision's, 224x224, 1000
classes), ResNet-50 (torchvision's bottleneck ResNet, built here), BERT-base (transformers'
``BertModel`` with the default config, 128 tokens); seeded random weights, since only
latency is measured.  Both quantizers get the same calibration samples.

Timing: every backend is warmed up, then each round runs every backend once in a
shuffled order, pausing ``--pause-ms`` (150 ms) before each backend's turn; the table
gives each one's median and min over the rounds, the ratios to onnxruntime int8, and the
load other processes put on the machine (``OtherLoad``) while timing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "bert_base")
BACKENDS = ("sliver fp32", "sliver int8", "ort fp32", "ort int8")


# -- models ------------------------------------------------------------------------------------


def _resnet50():
    import torch
    from torch import nn

    from sliver.benchmarks import zoo as _zoo

    zoo = _zoo()

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = mid * 4
            self.body = nn.Sequential(zoo.conv_bn_act(cin, mid, 1), zoo.conv_bn_act(mid, mid, 3, stride),
                                      zoo.conv_bn_act(mid, cout, 1, act=None))
            self.down = zoo.conv_bn_act(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.down is None else self.down(x)))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(zoo.conv_bn_act(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for i, n in enumerate((3, 4, 6, 3)):
                mid = 64 * 2**i
                for j in range(n):
                    layers.append(Bottleneck(cin, mid, 2 if (j == 0 and i > 0) else 1))
                    cin = mid * 4
            self.layers = nn.Sequential(*layers)
            self.head = zoo.classifier_head(cin, 1000)

        def forward(self, x):
            return self.head(self.layers(self.stem(x)))

    torch.manual_seed(0)
    model = ResNet50().eval()
    x = torch.randn(1, 3, 224, 224)
    zoo.init_batchnorm(model, [x])
    return model.eval(), x


def build(name: str):
    """(model, example input as a torch tensor, a function making calibration sample i)."""
    import torch

    if name in ("resnet18", "mobilenet_v2"):
        from sliver.benchmarks import zoo as _zoo

        model, (x,) = getattr(_zoo(), name)(num_classes=1000, resolution=224)
        model = model.eval()
    elif name == "resnet50":
        model, x = _resnet50()
    elif name == "bert_base":
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)

        class Bert(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.bert = BertModel(BertConfig(), add_pooling_layer=False).eval()

            def forward(self, ids):
                return self.bert(input_ids=ids).last_hidden_state

        model = Bert().eval()
        x = torch.randint(0, 30000, (1, 128))
        return model, x, lambda i: torch.randint(0, 30000, (1, 128), generator=torch.Generator().manual_seed(i))
    else:
        raise SystemExit(f"bench_int8: unknown model {name!r}; choose from {', '.join(MODELS)}")
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


def time_side_by_side(fns: dict, rounds: int, warmup: int, pause_s: float, seed: int = 0) -> dict:
    """Warm every backend up, then ``rounds`` rounds in which each runs once, in a
    shuffled order, after a pause; {backend: [ms per round]}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rng = random.Random(seed)
    times = {k: [] for k in fns}
    order = list(fns)
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            time.sleep(pause_s)
            t0 = time.perf_counter_ns()
            fns[k]()
            times[k].append((time.perf_counter_ns() - t0) / 1e6)
    return times


def run(args) -> dict:
    import torch

    from sliver.benchmarks.latency import OtherLoad, _cpu_name

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    out = {"cpu": _cpu_name(), "threads": args.threads, "rounds": args.rounds, "calibration": args.calibration,
           "models": {}}
    for name in args.models.split(","):
        model, x, sample = build(name)
        samples = [sample(i) for i in range(args.calibration)]
        fns = {}
        with tempfile.TemporaryDirectory() as tmp:
            fns["sliver fp32"], _ = prepare_sliver(model, x, samples, args.threads, False)
            fns["sliver int8"], art = prepare_sliver(model, x, samples, args.threads, True)
            fns["ort fp32"] = prepare_ort(model, x, samples, args.threads, False, tmp)
            fns["ort int8"] = prepare_ort(model, x, samples, args.threads, True, tmp)
            with OtherLoad() as load:
                times = time_side_by_side(fns, args.rounds, args.warmup, args.pause_ms / 1e3)
        report = next(r for r in art.records if r.name == "quantize-static").notes
        row = {k: {"median_ms": statistics.median(v), "min_ms": min(v)} for k, v in times.items()}
        ref = row["ort int8"]
        for k in row:
            row[k]["vs_ort_int8_median"] = row[k]["median_ms"] / ref["median_ms"]
            row[k]["vs_ort_int8_min"] = row[k]["min_ms"] / ref["min_ms"]
        quantized = sum(r["quantized"] for r in report["layers"])
        out["models"][name] = {"backends": row, "other_load": load.value, "int8_dot": art.manifest.target.int8_dot,
                               "layers_int8": f"{quantized} of {len(report['layers'])}"}
        print(format_model(name, out["models"][name]), flush=True)
    return out


def format_model(name: str, m: dict) -> str:
    lines = [f"{name}: other load {m['other_load']} CPUs, int8 kernel {m['int8_dot']}, "
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
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--pause-ms", type=float, default=150.0)
    p.add_argument("--calibration", type=int, default=8, help="calibration samples for both quantizers")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
