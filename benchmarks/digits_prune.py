"""Post-training accuracy of constrained vs unconstrained channel pruning on digits.

    python -m sliver.benchmarks.digits_prune [--sparsities 0.05,0.1,0.2,0.3,0.4] [--scores l2,act]
                                        [--seeds 0,1,2] [--epochs 8] [--models resnet] [--size 48]

Trains a small ResNet-style net (residual adds couple its channels) and a small
DenseNet-style net (concats share every earlier feature map) on scikit-learn's
digits (one net per seed, CPU, seconds each), then prunes each without fine-tuning:

* *unconstrained*: every conv/linear keeps the top (1 - s) of its input channels
  by the score (the ``prune`` pass, UPSCALE-style: no coupling constraint);
* *constrained*: whole coupled channel groups are dropped together
  (``prune{constrained=true}``, as Torch-Pruning/DepGraph do; a class's score is
  the sum of its readers' normalised scores), its amount chosen by bisection so
  the pruned model has the same parameter count as the unconstrained one (within
  one channel group).

Scores: ``l2`` (the column's L2 norm) and ``act`` (activation-aware: the column's
L2 norm times the RMS of the channel it reads, measured on training images).
Accuracy is measured on the 360 held-out digits by sliver's reference interpreter
running the pruned IR; the table gives mean ± std over the seeds.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def resnet_digits(width: int = 16):
    """Stem + two stages of two ResNet basic blocks (``tests/zoo.py``) + linear head."""
    from torch import nn

    from sliver.benchmarks import zoo

    z = zoo()
    BasicBlock, classifier_head, conv_bn_act = z.BasicBlock, z.classifier_head, z.conv_bn_act

    return nn.Sequential(
        conv_bn_act(1, width, 3),
        BasicBlock(width, width, 1), BasicBlock(width, width, 1),
        BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width, 1),
        classifier_head(2 * width, 10),
    )  # fmt: skip


def densenet_digits(growth: int = 8, layers: int = 3):
    """Stem + two dense blocks (``tests/zoo.py``'s bottleneck layers) + linear head."""
    from torch import nn

    from sliver.benchmarks import zoo

    z = zoo()
    DenseLayer, _transition, classifier_head, conv_bn_act = z.DenseLayer, z._transition, z.classifier_head, z.conv_bn_act

    c = 2 * growth
    features = [conv_bn_act(1, c, 3)]
    for block in range(2):
        for _ in range(layers):
            features.append(DenseLayer(c, growth, 2))
            c += growth
        if block == 0:
            features.append(_transition(c, c // 2))
            c //= 2
    return nn.Sequential(*features, nn.BatchNorm2d(c), nn.ReLU(), classifier_head(c, 10))


MODELS = {"resnet": resnet_digits, "densenet": densenet_digits}


def _accuracy(module, x, y) -> float:
    from sliver.ir.interp import run

    return float((run(module, [x])[0].argmax(1) == y).mean())


def evaluate(name: str, sparsities, *, epochs: int, seed: int, scores=("l2",), size: int | None = None) -> list[dict]:
    """One trained net, pruned at each sparsity with each score: unconstrained and
    constrained (matched parameter count) accuracies.  ``size``: the ResNet's width
    or the DenseNet's growth rate (default 16 / 8)."""
    import torch

    import sliver
    from sliver.passes.prune import count_params_and_macs, input_rms, matched_constrained, pruned
    from sliver.benchmarks.train_digits_qat import fit, load_digits

    data = load_digits(seed)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is as fast and shares the machine
    try:
        kwargs = {} if size is None else {"width": size} if name == "resnet" else {"growth": size}
        model = fit(MODELS[name](**kwargs), data, epochs=epochs, lr=3e-3, seed=seed, batch=128)
    finally:
        torch.set_num_threads(threads)
    x, y = data.x_test.numpy(), data.y_test.numpy()
    base = sliver.trace(model, (data.x_test,))
    sliver.api.optimize(base)
    params0 = count_params_and_macs(base)[0]
    acc0 = _accuracy(base, x, y)
    # activation-aware scores: each layer input's channel RMS on training images (not the test set)
    activations = input_rms(base, (data.x_train[:len(x)].numpy(),)) if "act" in scores else None
    rows = []
    for score in scores:
        options = dict(method=score, activations=activations if score == "act" else None)
        rows.append(dict(model=name, score=score, seed=seed, sparsity=0.0, params=params0, unconstrained=acc0,
                         constrained=acc0, constrained_params=params0, constrained_amount=0.0))
        for s in sparsities:
            free, report = pruned(base, amount=s, **options)
            p_free = report["params_after"]
            cons, report, amount = matched_constrained(base, p_free, **options)
            p_cons = report["params_after"]
            rows.append(dict(model=name, score=score, seed=seed, sparsity=s, params=p_free,
                             unconstrained=_accuracy(free, x, y), constrained=_accuracy(cons, x, y),
                             constrained_params=p_cons, constrained_amount=amount))
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Rows of several seeds merged per (model, score, sparsity): means and standard deviations."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["score"], r["sparsity"]), []).append(r)
    out = []
    for (model, score, sparsity), rs in groups.items():
        out.append(dict(model=model, score=score, sparsity=sparsity, seeds=len(rs),
                        **{k: float(np.mean([r[k] for r in rs])) for k in ("params", "constrained_params")},
                        **{k + "_std": float(np.std([r[k] for r in rs])) for k in ("unconstrained", "constrained")},
                        **{k: float(np.mean([r[k] for r in rs])) for k in ("unconstrained", "constrained")}))
    return out


def format_rows(rows: list[dict]) -> str:
    """The table, one line per (model, score, sparsity); accuracies as mean ± std over seeds."""
    from sliver.common.text import table_lines

    table = [("model", "score", "input channels dropped", "params (unconstrained / constrained)",
              "unconstrained acc", "constrained acc")]
    for r in summarize(rows):
        table.append((r["model"], r["score"], f"{r['sparsity']:.0%}",
                      f"{r['params']:,.0f} / {r['constrained_params']:,.0f}",
                      f"{r['unconstrained']:.1%} ± {r['unconstrained_std']:.1%}",
                      f"{r['constrained']:.1%} ± {r['constrained_std']:.1%}"))
    return "\n".join(table_lines(table)) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sliver.benchmarks.digits_prune", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet,densenet")
    p.add_argument("--sparsities", default="0.05,0.1,0.2,0.3,0.4")
    p.add_argument("--scores", default="l2,act", help="channel scores to compare (l1, l2, fpgm, act)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", default="0,1,2", help="one trained net per seed; the table shows mean ± std")
    p.add_argument("--size", type=int, help="the ResNet's width / the DenseNet's growth rate (default 16 / 8)")
    args = p.parse_args(argv)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    scores = args.scores.split(",")
    rows = []
    for name in args.models.split(","):
        if name not in MODELS:
            p.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        for seed in (int(s) for s in args.seeds.split(",")):
            rows += evaluate(name, sparsities, epochs=args.epochs, seed=seed, scores=scores, size=args.size)
    sys.stdout.write(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
