"""Train a small CNN on scikit-learn's digits with sliver.qat at W2A2, then compile it.

    python -m sliver.benchmarks.train_digits_qat                  # W2A2, x86_64
    python -m sliver.benchmarks.train_digits_qat --bits 4,4 --target arm64 --out digits.sliver

Prints the fp32 and the fake-quant (QAT) test accuracy, the fold-fake-quant report,
and how often the compiled artifact (and sliver's reference interpreter) predict the
same class as the fake-quant torch model on the test set.  Everything is seeded.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

from sliver.common.errors import SliverError


@dataclass
class Digits:
    x_train: "object"
    y_train: "object"
    x_test: "object"
    y_test: "object"


def load_digits(seed: int = 0) -> Digits:
    """1,797 8×8 images scaled to [0, 1], a stratified 80/20 split."""
    import torch

    try:
        from sklearn.datasets import load_digits as sk_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SliverError("scikit-learn is needed for the digits data: pip install 'sliver[test]' "
                          "(or pip install scikit-learn)") from None
    data = sk_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, data.target, test_size=0.2, random_state=seed, stratify=data.target)
    return Digits(torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte), torch.from_numpy(yte).long())


def make_cnn():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, stride=2, groups=32), nn.BatchNorm2d(32), nn.ReLU(),  # depthwise
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )


def fit(model, data: Digits, epochs: int, lr: float, seed: int, batch: int = 64):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    n = len(data.x_train)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def predict(model, x):
    import torch

    with torch.no_grad():
        return model.eval()(x).argmax(1).numpy()


def train(w_bits: int = 2, a_bits: int = 2, *, epochs: int = 10, qat_epochs: int = 10, seed: int = 0,
          layers: dict | None = None):
    """(data, fp32 model, QAT model): the fp32 CNN trained first, then fine-tuned with
    sliver.qat from its weights."""
    import torch

    import sliver.qat

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is as fast and shares the machine
    try:
        return _train(w_bits, a_bits, epochs, qat_epochs, seed, layers)
    finally:
        torch.set_num_threads(threads)


def _train(w_bits, a_bits, epochs, qat_epochs, seed, layers):
    import sliver.qat

    data = load_digits(seed)
    fp32 = fit(make_cnn(), data, epochs, 3e-3, seed)
    qat = sliver.qat.prepare(fp32, w_bits, a_bits, layers=layers)
    qat = fit(qat, data, qat_epochs, 1e-3, seed + 1)
    return data, fp32, qat


def agreement(a, b) -> float:
    return float((np.asarray(a) == np.asarray(b)).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.train_digits_qat", description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", default="2,2", help="W,A bit widths (default 2,2)")
    p.add_argument("--epochs", type=int, default=10, help="fp32 training epochs")
    p.add_argument("--qat-epochs", type=int, default=10, help="QAT fine-tuning epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", default="x86_64", help="compile for this target (x86_64 runs here)")
    p.add_argument("--no-compile", action="store_true", help="stop after the interpreter check")
    p.add_argument("--out", help="save the artifact here")
    args = p.parse_args(argv)
    try:
        w_bits, a_bits = (int(b) for b in args.bits.split(","))
    except ValueError:
        p.error(f"--bits {args.bits!r}: give W,A such as 2,2")

    import sliver
    import sliver.qat
    from sliver.api import optimize
    from sliver.ir.interp import run
    from sliver.passes.manager import parse_pipeline

    t0 = time.perf_counter()
    data, fp32, qat = train(w_bits, a_bits, epochs=args.epochs, qat_epochs=args.qat_epochs, seed=args.seed)
    print(f"trained in {time.perf_counter() - t0:.1f}s on {len(data.x_train)} digits; test set {len(data.x_test)}")
    print(sliver.qat.summary(qat), end="")
    y = data.y_test.numpy()
    fq_pred = predict(qat, data.x_test)
    print(f"test accuracy   fp32 {agreement(predict(fp32, data.x_test), y):.2%}   "
          f"W{w_bits}A{a_bits} fake-quant (torch) {agreement(fq_pred, y):.2%}")

    module = sliver.trace(qat, (data.x_test,))
    records = optimize(module, parse_pipeline(sliver.api.DEFAULT_PIPELINE))
    sys.stdout.write(records[0].notes["text"])
    (logits,) = run(module, [data.x_test.numpy()])
    interp_pred = logits.argmax(1)
    print(f"interpreter vs fake-quant torch: same prediction on {agreement(interp_pred, fq_pred):.2%} "
          f"(accuracy {agreement(interp_pred, y):.2%})")
    fp32_bytes = sum(p.numel() * 4 for p in fp32.parameters())
    low_bytes = sum(op.result.type.nbytes for op in module.ops if op.kind == "param")
    print(f"weights: fp32 model {fp32_bytes:,} bytes; folded W{w_bits}A{a_bits} module {low_bytes:,} bytes "
          f"(codes at {w_bits} bits, scales/biases f32)")
    if args.no_compile:
        return 0
    t0 = time.perf_counter()
    art = sliver.lower(qat, (data.x_test,), target=args.target)
    print(f"compiled for {art.target} in {time.perf_counter() - t0:.1f}s")
    if args.out:
        print(f"wrote {art.save(args.out)}")
    logits = _run_artifact(art, data.x_test.numpy())
    if logits is None:
        print(f"(not run: {art.target} artifacts run here only on the emulated Pi; "
              "bash tools/emulator/setup_pi_emulator.sh installs it)")
        return 0
    comp_pred = logits.argmax(1)
    print(f"compiled ({art.target}) vs fake-quant torch: same prediction on {agreement(comp_pred, fq_pred):.2%} "
          f"(accuracy {agreement(comp_pred, y):.2%})")
    return 0


def _run_artifact(art, x: np.ndarray) -> np.ndarray | None:
    """The artifact's output on ``x``: here, or on the emulated Pi for arm64 (None when
    neither can run it)."""
    import tempfile
    from pathlib import Path

    from sliver.tools.emulator import emulate
    from sliver.common.platform import host_arch

    if art.manifest.target.arch == host_arch():
        return np.asarray(art.load()(x))
    if art.manifest.target.arch != "aarch64" or not emulate.is_ready():
        return None
    with tempfile.TemporaryDirectory(prefix="sliver-digits-") as tmp:
        path = art.save(Path(tmp) / "digits.sliver")
        np.savez(Path(tmp) / "in.npz", x=x)
        proc = emulate.run_module(["run", str(path), "--inputs", str(Path(tmp) / "in.npz"),
                                   "--output", str(Path(tmp) / "out.npz")])
        if proc.returncode != 0:
            raise SliverError(f"the emulated Pi could not run the artifact: {proc.stderr.strip()[-500:]}")
        with np.load(Path(tmp) / "out.npz") as z:
            return z[z.files[0]]


if __name__ == "__main__":
    sys.exit(main())
