"""``sliver outliers MODEL [--json out.json]``: super weights and super activations.

Traces MODEL (``file.py:function``, ``file.pt2`` or ``file.sir``, as everywhere in
the CLI), runs the ``find-outliers`` analysis (one forward pass of the reference
interpreter, attribution by contribution, verification by ablation; see
:mod:`sliver.passes.outliers`) and prints the super-weight index and the
super-activation report.  The forward pass uses MODEL's example inputs (e.g. a
tokenized prompt); ``--synthetic`` uses inputs built from the input types instead
(fixed pseudo-random tokens, all-ones masks, standard-normal floats).

For a causal language model (token ids in, logits out) the search is data-free (on
built inputs) and MODEL's example tokens — a fixed text — confirm each candidate: a
super weight is one whose zeroing alone raises the text's perplexity at least
``--confirm-factor`` times; the others are listed as candidates.
"""

from __future__ import annotations

import argparse
import json
import sys

from sliver.common.errors import SliverError


def build_parser() -> argparse.ArgumentParser:
    from sliver.tools.shared import Parser

    p = Parser(
        prog="sliver outliers",
        description="Find super weights (single weights creating massive activations) and the super activations "
                    "they create: one forward pass, attribution by contribution, verification by ablation.",
    )
    p.add_argument("model", metavar="MODEL", help="file.py:function, file.pt2 or file.sir")
    p.add_argument("--json", metavar="PATH", help="also write the full report as JSON")
    p.add_argument("--synthetic", action="store_true",
                   help="ignore MODEL's example inputs; use fixed inputs built from the input types")
    p.add_argument("--tokens", help="with --synthetic: comma-separated token ids for token inputs")
    p.add_argument("--seed", type=int, default=0, help="with --synthetic: seed of the built inputs (default 0)")
    p.add_argument("--ratio", type=float, default=100.0,
                   help="massive = |a| above this many times the median |a| of its tensor (default 100)")
    p.add_argument("--abs-threshold", type=float, default=0.0, help="and above this absolute value (default 0)")
    p.add_argument("--max-weights", type=int, default=4,
                   help="most weights one spike may be attributed to; more means diffuse (default 4)")
    p.add_argument("--shrink", type=float, default=0.5,
                   help="keep candidates whose ablation shrinks the spike to at most this fraction (default 0.5)")
    p.add_argument("--max-spikes", type=int, default=64, help="largest spikes to attribute (default 64)")
    p.add_argument("--no-confirm", action="store_true",
                   help="causal LMs: report every candidate found by the search, without confirming it on "
                        "MODEL's example tokens")
    p.add_argument("--confirm-factor", type=float, default=10.0,
                   help="causal LMs: a super weight raises the perplexity of MODEL's example tokens at least this "
                        "many times when zeroed alone (default 10)")
    return p


def run(args) -> int:
    from sliver.api import trace
    from sliver.common.numerics import as_numpy
    from sliver.ir.core import Module
    from sliver.passes.outliers import find_outliers, format_report, is_causal_lm
    from sliver.tools.shared import load_model

    model, inputs = load_model(args.model)
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    module = model if isinstance(model, Module) else trace(model, inputs)
    given = confirm = None
    examples = None if args.model.endswith(".sir") else [as_numpy(x) for x in inputs]  # .sir: no example inputs
    if examples is not None and not args.no_confirm and is_causal_lm(module):
        confirm = examples  # a causal LM: the search stays data-free, the example tokens confirm
    elif examples is not None and not args.synthetic:
        given = examples
    report = find_outliers(
        module, given, ratio=args.ratio, abs_threshold=args.abs_threshold, max_weights=args.max_weights,
        shrink=args.shrink, max_spikes=args.max_spikes, seed=args.seed, tokens=args.tokens,
        confirm=confirm, confirm_factor=args.confirm_factor,
    )
    print(f"@{module.name}: {args.model}")
    sys.stdout.write(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except SliverError as e:
        print(f"sliver: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
