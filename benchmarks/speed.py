"""The speed set: real architectures at their real sizes, timed with the fair harness.

    python -m sliver.benchmarks.speed                         # the README's table (2 threads)
    python -m sliver.benchmarks.speed --threads 1
    python -m sliver.benchmarks.speed --models resnet18,bert_base --rounds 10

Ten models people deploy, built from ``transformers`` classes (random weights from the
architectures' default configurations, nothing downloaded) at batch 1: ResNet-18,
ResNet-50, MobileNetV2, EfficientNet-B0, ConvNeXt-T, ViT-B/16, Swin-T (224×224 images;
the vision models end in their 1000-class classifier), BERT-base and GPT-2 small
(128 tokens; the last hidden state) and Whisper-tiny's encoder (80 mel bins × 3000
frames, 30 s of audio).  Each one runs through :mod:`sliver.benchmarks.latency`'s
harness (torch eager, onnxruntime fp32, sliver default, sliver tuned; a pause before
every backend's turn, a new order every round, outputs checked against torch), and
the table adds each backend's share of this machine's fp32 peak:

    % of peak = model FLOPs / (median warm seconds × peak FLOP/s)

with the model's FLOPs counted by ``torch.utils.flop_counter`` (2 per multiply-add of
its convolutions and matrix products; elementwise work, norms and softmax are not
counted) and the peak from :func:`fp32_peak`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

#: the architectures, in the README's order
SPEED_SET = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "vit_b16", "swin_tiny",
             "bert_base", "gpt2", "whisper_tiny_encoder")
TITLES = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "mobilenet_v2": "MobileNetV2",
          "efficientnet_b0": "EfficientNet-B0", "convnext_tiny": "ConvNeXt-T", "vit_b16": "ViT-B/16",
          "swin_tiny": "Swin-T", "bert_base": "BERT-base (seq 128)", "gpt2": "GPT-2 small (seq 128)",
          "whisper_tiny_encoder": "Whisper-tiny encoder (30 s)"}


def _images(seed: int, size: int):
    import torch

    g = torch.Generator().manual_seed(seed + 1000)
    return (torch.randn(1, 3, size, size, generator=g),)


def _tokens(seed: int, vocab: int, length: int):
    import torch

    g = torch.Generator().manual_seed(seed + 1000)
    return (torch.randint(0, vocab, (1, length), generator=g),)


def _vision(cls_name: str, config: Callable, seed: int, size: int = 224):
    """A transformers image classifier (1000 classes) with the real-architecture zoo's
    initialization (torch's for convolutions, random batch-norm statistics)."""
    import transformers as t

    from sliver.benchmarks import realzoo

    return realzoo()._hf(getattr(t, cls_name), config(t), _images(seed, size), field="logits", seed=seed)


def _text(cls_name: str, config: Callable, seed: int, length: int = 128):
    import transformers as t

    from sliver.benchmarks import realzoo

    cfg = config(t)
    return realzoo()._hf(getattr(t, cls_name), cfg, _tokens(seed, cfg.vocab_size, length), seed=seed)


#: the vision models: (transformers class, its config's arguments); 1000 classes each
VISION = {
    "resnet18": ("ResNetForImageClassification", "ResNetConfig",
                 dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic")),
    "resnet50": ("ResNetForImageClassification", "ResNetConfig", {}),
    "mobilenet_v2": ("MobileNetV2ForImageClassification", "MobileNetV2Config", {}),
    "efficientnet_b0": ("EfficientNetForImageClassification", "EfficientNetConfig",
                        dict(width_coefficient=1.0, depth_coefficient=1.0, image_size=224, hidden_dim=1280,
                             dropout_rate=0.2)),
    "convnext_tiny": ("ConvNextForImageClassification", "ConvNextConfig", {}),
    "vit_b16": ("ViTForImageClassification", "ViTConfig", {}),
    "swin_tiny": ("SwinForImageClassification", "SwinConfig", {}),
}
#: the text models (the last hidden state): (transformers class, config class); default configs
TEXT = {"bert_base": ("BertModel", "BertConfig"), "gpt2": ("GPT2Model", "GPT2Config")}


def whisper_tiny_encoder(seed: int = 0):
    import torch
    import transformers as t

    from sliver.benchmarks import realzoo

    rz = realzoo()
    cfg = t.WhisperConfig(num_mel_bins=80, d_model=384, encoder_layers=4, encoder_attention_heads=6,
                          encoder_ffn_dim=1536, decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536,
                          max_source_positions=1500)
    g = torch.Generator().manual_seed(seed + 1000)
    return rz._hf(rz._whisper_encoder_cls(), cfg, (torch.randn(1, 80, 3000, generator=g),), seed=seed)


BUILDERS: dict[str, Callable] = {
    **{name: (lambda seed=0, v=v: _vision(v[0], lambda t: getattr(t, v[1])(**v[2], num_labels=1000), seed))
       for name, v in VISION.items()},
    **{name: (lambda seed=0, v=v: _text(v[0], lambda t: getattr(t, v[1])(), seed)) for name, v in TEXT.items()},
    "whisper_tiny_encoder": whisper_tiny_encoder,
}


def build(name: str, seed: int = 0):
    """``(model, inputs)`` of a speed-set architecture."""
    return BUILDERS[name](seed)


# --------------------------------------------------------------------------- the table


def ratio_table(report: dict) -> str:
    """The README's markdown table: per model, each backend's median (min) warm ms, sliver ÷
    onnxruntime and ÷ torch eager, % of the fp32 peak, and the load while it was timed."""
    from sliver.benchmarks.latency import fp32_peak, percent_of_peak

    peak = fp32_peak(report["config"]["threads"])
    by: dict = {}
    for r in report["results"]:
        by.setdefault(r["model"], {})[r["backend"]] = r
    head = ["model", "GFLOP", "torch eager ms", "onnxruntime ms", "sliver ms", "sliver tuned ms",
            "sliver ÷ onnxruntime (median, min)", "sliver ÷ torch", "% of peak: sliver, onnxruntime", "others"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]

    def ms(r):
        if r is None:
            return "—"
        if r.get("median_ms") is None:
            return r["status"]
        return f"{r['median_ms']:.1f} ({r['min_ms']:.1f})"

    def ok(r):
        return r is not None and r.get("median_ms") is not None

    for model, rows in by.items():
        s, o, t = rows.get("sliver"), rows.get("onnxruntime"), rows.get("torch")
        f = report.get("flops", {}).get(model)
        vs_ort = (f"{s['median_ms'] / o['median_ms']:.2f}×, {s['min_ms'] / o['min_ms']:.2f}×"
                  if ok(s) and ok(o) else "—")
        vs_torch = f"{s['median_ms'] / t['median_ms']:.2f}×" if ok(s) and ok(t) else "—"
        pct = ", ".join(percent_of_peak(f, r["median_ms"] if ok(r) else None, peak) for r in (s, o))
        loads = [r["other_load"] for r in rows.values() if r.get("other_load") is not None]
        lines.append("| " + " | ".join([TITLES.get(model, model), f"{f / 1e9:.2f}" if f else "—", ms(t), ms(o), ms(s),
                                         ms(rows.get("sliver-tuned")), vs_ort, vs_torch, pct,
                                         f"{max(loads):.2f}" if loads else "?"]) + " |")
    clock = report["config"].get("clock", "wall time")
    lines += ["", f"fp32 peak: {peak.how}. median (min) of warm calls ({clock}), {report['config']['threads']} "
                  "thread(s); others: CPUs other processes kept busy while the model was timed."]
    return "\n".join(lines)


def merge_reports(paths) -> dict:
    """One report of several ``--json`` reports of the same thread count (models in the
    speed set's order)."""
    import json

    from sliver.common.errors import SliverError

    reports = []
    for path in paths:
        with open(path) as f:
            reports.append(json.load(f))
    threads = {r["config"]["threads"] for r in reports}
    if len(threads) != 1:
        raise SliverError(f"the reports were timed with different thread counts ({sorted(threads)}): "
                          "make one table per thread count")
    results = [row for r in reports for row in r["results"]]
    order = {m: i for i, m in enumerate(SPEED_SET)}
    results.sort(key=lambda row: order.get(row["model"], len(order)))
    return {"config": reports[0]["config"], "machine": reports[0]["machine"], "results": results,
            "flops": {k: v for r in reports for k, v in r.get("flops", {}).items()},
            "ok": all(r["ok"] for r in reports)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m sliver.benchmarks.speed",
        description="The speed set (ten real architectures at real sizes, batch 1) through the fair latency "
                    "harness (sliver.benchmarks.latency): torch eager, onnxruntime fp32, sliver default and "
                    "tuned, with % of the fp32 peak.",
        epilog="Every other option goes to the harness (python -m sliver.benchmarks.latency --help): --threads, "
               "--repeat (rounds, default 8 here), --calls, --pause, --budget (default 60 here), --skip-ort, "
               "--skip-tuned, --json.")
    p.add_argument("--models", default=",".join(SPEED_SET), help="comma-separated subset (default: all ten)")
    p.add_argument("--markdown", metavar="PATH", help="also write the README's table (markdown) to PATH")
    p.add_argument("--threads", type=int, default=2, help="threads for every backend (default: %(default)s)")
    p.add_argument("--cpu-time", action="store_true",
                   help="with --threads 1: time by the calling thread's CPU time (busy machines)")
    p.add_argument("--json", metavar="PATH", help="also write the full report as JSON")
    p.add_argument("--table-from", nargs="+", metavar="JSON",
                   help="time nothing: print the table of earlier runs' --json reports (one per model, "
                        "e.g. each timed alone on a quiet machine)")
    args, rest = p.parse_known_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in BUILDERS]
    if unknown or not args.models:
        p.error(f"unknown models {unknown}; the speed set is {', '.join(SPEED_SET)}")
    return args, rest


def main(argv=None) -> int:
    """Every other option is the latency harness's (``python -m sliver.benchmarks.latency --help``):
    --threads, --repeat (rounds), --calls, --pause, --budget, --skip-ort, --skip-tuned, --json."""
    from sliver.benchmarks import latency

    args, rest = parse_args(argv)
    if args.table_from:
        report = merge_reports(args.table_from)
        code = 0 if report["ok"] else 1
    else:
        own = ["--threads", str(args.threads)] + ["--cpu-time"] * args.cpu_time + (["--json", args.json] if args.json else [])
        code, report = latency.main(["--models", ",".join(args.models), "--budget", "60", "--repeat", "8",
                                     "--warmup", "1", *own, *rest], build=build)
    table = ratio_table(report)
    print("\n" + table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
