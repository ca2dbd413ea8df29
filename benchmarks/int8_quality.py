"""Quality of post-training int8 (``quantize-static``) on real trained weights.

    python -m sliver.benchmarks.int8_quality                 # both parts
    python -m sliver.benchmarks.int8_quality --only digits

* **digits**: the small CNN of ``train_digits_qat`` trained in fp32 on scikit-learn's
  digits (seeded), quantized with 200 training images as calibration data, with each
  range choice (min-max, percentile, MSE) and both kinds of activation codes; test
  accuracy of the int8 module (sliver's interpreter, whose integer semantics the
  compiled artifacts match exactly) and of the x86_64 artifact, vs fp32.
* **minilm**: all-MiniLM-L6-v2 (transformers, offline), the 56 sentences of
  ``bench_outliers`` padded to one length: calibrated on 28 of them, the mean
  sentence-embedding cosine vs the float model on the other 28; every linear layer int8,
  with and without the layers fed by super activations kept in float (``keep_super``,
  from ``find-outliers``).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def digits(seed: int = 0, epochs: int = 10, compile_x86: bool = True) -> list[dict]:
    import torch

    import sliver
    from sliver.benchmarks.train_digits_qat import fit, load_digits, make_cnn
    from sliver.ir.interp import run

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    data = load_digits(seed)
    model = fit(make_cnn(), data, epochs, 3e-3, seed)
    batch = 40
    xtest, ytest = data.x_test.numpy(), data.y_test.numpy()
    usable = len(xtest) // batch * batch
    with torch.no_grad():
        fp32 = float((model(data.x_test).argmax(1).numpy() == ytest).mean())
    cal = [data.x_train[i:i + batch] for i in range(0, 200, batch)]  # 200 training images
    rows = [{"variant": "fp32", "accuracy": fp32}]

    def accuracy(fn):
        pred = np.concatenate([fn(xtest[i:i + batch]).argmax(1) for i in range(0, usable, batch)])
        return float((pred == ytest[:usable]).mean())

    for method in ("minmax", "percentile", "mse"):
        for acts in ("uint8", "int8"):
            module, report = sliver.quantize(model, cal, method=method, activations=acts)
            row = {"variant": f"int8 {method}, {acts} activations", "accuracy": accuracy(lambda x: run(module, [x])[0]),
                   "layers": f"{sum(r['quantized'] for r in report['layers'])} of {len(report['layers'])}"}
            row["accuracy_fp32_same_images"] = accuracy(lambda x: model(torch.from_numpy(x)).detach().numpy())
            if compile_x86 and method == "minmax" and acts == "uint8":
                m = sliver.lower(module, (cal[0],), "x86_64").load()
                row["accuracy_x86_artifact"] = accuracy(lambda x: m(x))
            rows.append(row)
    return rows


def minilm() -> list[dict]:
    import torch

    import sliver
    from sliver.benchmarks.bench_outliers import SENTENCES, embeddings, load_minilm, mean_cosine
    from sliver.ir.interp import run

    torch.set_num_threads(1)
    tokenizer, model = load_minilm()
    enc = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    half = len(SENTENCES) // 2
    evaluate = (ids[:half], mask[:half])
    calibrate = [(ids[half:2 * half], mask[half:2 * half])]
    module = sliver.trace(model, evaluate)
    ref = embeddings(run(module, [t.numpy() for t in evaluate])[0], evaluate[1])
    rows = []
    for keep in (False, True):
        t0 = time.perf_counter()
        qmodule, report = sliver.quantize(module, calibrate, keep_super=keep)
        got = embeddings(run(qmodule, [t.numpy() for t in evaluate])[0], evaluate[1])
        kept = [f"{r['layer']}: {r['reason']}" for r in report["layers"] if not r["quantized"] and r["op"] != "matmul"]
        rows.append({"variant": "super activations kept in float" if keep else "every linear layer int8",
                     "cosine": mean_cosine(got, ref),
                     "layers": f"{sum(r['quantized'] for r in report['layers'])} of "
                               f"{sum(r['op'] != 'matmul' for r in report['layers'])} linear",
                     "kept_float": kept, "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.int8_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("digits", "minilm"))
    p.add_argument("--no-compile", action="store_true", help="digits: skip the x86_64 artifact")
    args = p.parse_args(argv)
    if args.only in (None, "digits"):
        print("digits CNN (scikit-learn), test accuracy")
        for r in digits(compile_x86=not args.no_compile):
            extra = "".join(f", {k} {v:.4f}" if isinstance(v, float) else f", {k} {v}"
                            for k, v in r.items() if k not in ("variant", "accuracy"))
            print(f"  {r['variant']:<36} {100 * r['accuracy']:.2f}%{extra}", flush=True)
    if args.only in (None, "minilm"):
        print("all-MiniLM-L6-v2, mean sentence-embedding cosine vs float (28 held-out sentences)")
        for r in minilm():
            print(f"  {r['variant']:<34} {r['cosine']:.4f}  ({r['layers']}, {r['seconds']} s)", flush=True)
            for k in r["kept_float"]:
                print(f"    float: {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
