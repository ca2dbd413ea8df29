"""``sliver allocate MODEL --data DATA --budget B``: mixed-precision widths per layer (HAWQ).

    sliver allocate model.py:build --data train.npz --budget 4.5bits            # packed size
    sliver allocate model.py:build --data train.npz --budget 500KB --plot front.png --json alloc.json
    sliver allocate model.py:build --data data.py:load --budget 1.2Mcycles     # modeled Pi 4 cycles
    sliver allocate model.py:build --data train.npz --budget 2.0ms             # latency on this x86 CPU

MODEL is ``file.py:function`` returning ``(nn.Module, example_inputs)`` (the float model you
will give to ``sliver.qat.prepare``).  DATA is a ``.npz`` with the inputs and targets
(arrays ``x`` and ``y``, or its first two arrays) or ``file.py:function`` returning
``(x, y)``.  A budget in bits (mean per weight) or bytes is on packed weights; in ms it is
the latency of each layer on ``--target`` (default x86_64, this machine); in cycles or
instructions it is counted on the emulated Pi (``--target`` default arm64).  Per-layer
costs are measured once per layer shape and width and cached
(:mod:`sliver.tools.layercost`).  The report (Markdown) goes to stdout or ``-o``;
``--json`` writes the allocation (``layers`` for ``sliver.qat.prepare``, ``ptq`` for
``sliver.quant.calibrate``), the sensitivities and the front.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sliver.common.errors import UsageError

LOSSES = ("cross_entropy", "mse")


def _load_data(spec: str):
    import numpy as np
    import torch

    if spec.endswith(".npz"):
        if not Path(spec).is_file():
            raise UsageError(f"--data {spec}: no such file")
        try:
            with np.load(spec, allow_pickle=False) as z:
                names = list(z.files)
                if {"x", "y"} <= set(names):
                    x, y = z["x"], z["y"]
                elif len(names) >= 2:
                    x, y = z[names[0]], z[names[1]]
                else:
                    raise UsageError(f"--data {spec}: needs two arrays, inputs and targets (x and y); "
                                     f"it has {names}")
        except (OSError, ValueError) as e:
            raise UsageError(f"--data {spec} is not a readable .npz ({e})") from None
        result = (x, y)
    else:
        path, _, func = spec.partition(":")
        if not path.endswith(".py") or not func:
            raise UsageError(f"--data {spec!r}: give a .npz with x and y, or file.py:function returning (x, y)")
        from sliver.common.errors import ModelError
        from sliver.tools.shared import load_callable

        fn = load_callable(spec, "--data")
        try:
            result = fn()
        except Exception as e:  # the user's function: its error is theirs to fix
            raise ModelError(f"--data {spec} raised {type(e).__name__}: {e}") from None
    if not (isinstance(result, tuple) and len(result) == 2):
        raise UsageError(f"--data {spec} must give (inputs, targets), got {type(result).__name__}")
    x, y = (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in result)
    if x.is_floating_point():
        x = x.float()
    if len(x) != len(y) or len(x) == 0:
        raise UsageError(f"--data {spec}: {len(x)} inputs but {len(y)} targets")
    return x, y


def _loss(name: str, y):
    import torch.nn.functional as F

    if name == "cross_entropy":
        if y.is_floating_point():
            raise UsageError("--loss cross_entropy needs integer class targets; use --loss mse for float targets")
        return F.cross_entropy
    def mse(out, t):
        if out.shape != t.shape:
            raise UsageError(f"--loss mse: the model's outputs are {tuple(out.shape)} but the targets "
                             f"{tuple(t.shape)}; give targets of the output's shape (or --loss cross_entropy)")
        return F.mse_loss(out, t.to(out.dtype))

    return mse


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give comma-separated bit widths such as 2,3,4,8") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="file.py:function returning (nn.Module, example_inputs)")
    p.add_argument("--data", required=True, help="inputs and targets: file.npz (x, y) or file.py:function")
    p.add_argument("--budget", required=True,
                   help="4.5bits | 500KB | 3000B (packed weights), 2.0ms (x86 latency), 1.2Mcycles or "
                        "300kinstructions (emulated Pi)")
    p.add_argument("-t", "--target", help="where latency/cycles are measured (default: x86_64 for ms, "
                                          "arm64 for cycles/instructions)")
    p.add_argument("--widths", default="2,3,4,8", help="candidate weight widths (default %(default)s)")
    p.add_argument("--a-widths", default="same",
                   help="activation widths: 'same' (each weight width's own, default), one width for all, "
                        "or one per weight width")
    p.add_argument("--loss", default="cross_entropy", choices=LOSSES, help="the loss (default %(default)s)")
    p.add_argument("--samples", type=int, default=2048, help="data samples in the Hessian (default %(default)s)")
    p.add_argument("--rtol", type=float, default=0.05,
                   help="Hutchinson stops when every layer's standard error is below this fraction (default %(default)s)")
    p.add_argument("--max-iters", type=int, default=300, help="Hutchinson samples at most (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", help="write the Markdown report here (default: print it)")
    p.add_argument("--plot", metavar="PNG", help="write the Pareto front with the chosen point (needs matplotlib)")
    p.add_argument("--json", metavar="PATH", help="write the allocation, PTQ config, sensitivities and front")


def run(args) -> int:
    import torch

    import sliver.quant as Q
    from sliver.common.files import atomic_write
    from sliver.tools.shared import load_model, say

    widths = _ints(args.widths, "--widths")
    a_widths = None if args.a_widths == "same" else _ints(args.a_widths, "--a-widths")
    if a_widths is not None and len(a_widths) == 1:
        a_widths = a_widths[0]
    if args.samples < 1:
        raise UsageError(f"--samples {args.samples}: give at least 1")
    value, unit = Q.parse_budget(args.budget)
    if unit in Q.SIZE_UNITS and args.target:
        raise UsageError(f"--budget {args.budget} is on packed-weight size, which does not depend on --target; "
                         "give the budget in ms, cycles or instructions to measure on a target")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'sliver[quant]'") from None
    model, example = load_model(args.model)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{args.model}: sliver allocate needs the torch model (file.py:function), "
                         "not an exported program or sliver IR")
    x, y = _load_data(args.data)
    x, y = x[: args.samples], y[: args.samples]
    loss = _loss(args.loss, y)
    table = None
    if unit not in Q.SIZE_UNITS:
        from sliver.tools import layercost

        target = args.target or ("x86_64" if unit == "ms" else "arm64")
        say(f"measuring each layer at widths {widths} on {target} ({unit}; cached in {layercost.cache_dir()})")
        table = layercost.measure(model, tuple(e[:1] for e in example), target=target, metric=unit, widths=widths,
                                  a_widths=a_widths, calibration=x[:256], progress=say)
    say(f"Hessian traces (Hutchinson) on {len(x)} samples")
    alloc = Q.allocate(model, (x, y), loss, budget=(value, unit), target=table, widths=widths, a_widths=a_widths,
                       rtol=args.rtol, max_iters=args.max_iters, seed=args.seed)
    text = alloc.report()
    if args.output:
        atomic_write(args.output, lambda f: f.write(text.encode()))
        say(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    if args.plot:
        say(f"wrote {alloc.plot(args.plot)}")
    if args.json:
        data = json.dumps(alloc.to_json(), indent=1).encode()
        atomic_write(args.json, lambda f: f.write(data))
        say(f"wrote {args.json}")
    return 0
