"""What sliver does with architectures nobody here wrote: the coverage table.

    python -m sliver.benchmarks.coverage                 # trace, round trip, interpreter, x86 artifact
    python -m sliver.benchmarks.coverage --no-compile    # the first three columns only (seconds, not minutes)
    python -m sliver.benchmarks.coverage --arm64         # also run each artifact on the emulated Pi
    python -m sliver.benchmarks.coverage vit bert roll   # some entries only

For every entry of the real-architecture zoo (``tests/realzoo.py``): does it trace (else
the error), is print → parse → print the identity, the interpreter's relative error
against torch, the x86_64 artifact's relative error against torch, and the compile
seconds.  Relative error is ``max|out - torch| / max|torch|``, as ``lower``'s ``atol``.
A step that fails stops the later steps of that entry; the table says which step and why.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: the relative error a column must stay under to count as a match
TOLERANCE = 1e-4


@dataclass
class Row:
    name: str
    family: str
    trace: str = "-"  # "ok" or the error
    round_trip: str = "-"  # "ok", "differs" or the error
    interp: float | str | None = None  # relative error, or the error
    x86: float | str | None = None
    arm64: float | str | None = None
    compile_s: float | None = None
    notes: list = field(default_factory=list)

    @property
    def traced(self) -> bool:
        return self.trace == "ok"

    @property
    def matches(self) -> bool:
        return isinstance(self.interp, float) and self.interp <= TOLERANCE


def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        return float("inf")
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return float(np.abs(out - ref).max() / (scale or 1.0)) if ref.size else 0.0


def _error(e: BaseException) -> str:
    """One line: the error's type and message; for unsupported ops, the aten names and
    how often each occurs (not the source lines: they name files of this machine)."""
    from collections import Counter

    from sliver.common.errors import DataDependentShapeError, UnsupportedOpError

    if isinstance(e, (UnsupportedOpError, DataDependentShapeError)):
        counts = Counter(op for op, _, _ in e.problems)
        what = "unsupported" if isinstance(e, UnsupportedOpError) else "DataDependentShapeError: size known only at run time"
        return f"{what}: " + ", ".join(f"{op.removeprefix('aten.')}" + (f" ×{n}" if n > 1 else "")
                                       for op, n in counts.items())
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}"


def round_trip(module) -> str:
    """"ok" when print → parse → print gives the same text, else what went wrong."""
    from sliver.ir.parser import parse_module
    from sliver.ir.printer import print_module

    text = print_module(module)
    try:
        again = print_module(parse_module(text, dict(module.params)))
    except Exception as e:  # the report names any failure
        return _error(e)
    return "ok" if again == text else "differs"


def check(entry, *, compile: bool = True, arm64: bool = False, workdir: Path | None = None) -> Row:
    """One row of the table for ``entry`` (a ``realzoo.Entry``)."""
    import torch

    import sliver
    from sliver.ir.interp import run

    row = Row(entry.name, entry.family)
    try:
        model, inputs = entry.build()
        with torch.no_grad():
            ref = model(*inputs).numpy()
    except Exception as e:  # the zoo entry itself is broken: say so in its row
        row.trace = "the model does not run in torch: " + _error(e)
        return row
    numpy_inputs = [x.numpy() for x in inputs]
    try:
        module = sliver.trace(model, inputs)
    except Exception as e:
        row.trace = _error(e)
        return row
    row.trace = "ok"
    row.round_trip = round_trip(module)
    try:
        row.interp = rel_error(run(module, numpy_inputs)[0], ref)
    except Exception as e:
        row.interp = _error(e)
        return row
    if not compile:
        return row
    for target, column in [("x86_64", "x86")] + ([("arm64", "arm64")] if arm64 else []):
        start = time.perf_counter()
        try:
            art = sliver.lower(model, inputs, target=target, tune=False)
        except Exception as e:
            setattr(row, column, _error(e))
            continue
        if target == "x86_64":
            row.compile_s = time.perf_counter() - start
            try:
                setattr(row, column, rel_error(art.load().run(*numpy_inputs)[0], ref))
            except Exception as e:
                setattr(row, column, _error(e))
        else:
            setattr(row, column, _emulated(art, ref, workdir or Path(tempfile.mkdtemp())))
    return row


def _emulated(art, ref, workdir: Path):
    from sliver.tools.emulator import emulate

    path = workdir / "model.sliver"
    art.save(path)
    script = workdir / "first_output.py"
    script.write_text("import sys, numpy as np\nfrom sliver.runtime.artifact import load\n"
                      "m = load(sys.argv[1])\nnp.save(sys.argv[2], m.run(*m.golden_inputs())[0])\n")
    out = workdir / "first_output.npy"
    try:
        proc = emulate.run_python([str(script), str(path), str(out)], timeout=900)
    except Exception as e:
        return _error(e)
    if proc.returncode != 0:
        return "emulated run failed: " + " ".join((proc.stderr or proc.stdout).split()[-30:])
    return rel_error(np.load(out), ref)


def _cell(value, width: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1e}"
    text = str(value)
    return text if not width or len(text) <= width else text[: width - 1] + "…"


def table(rows: list[Row], *, width: int = 90, arm64: bool = False) -> str:
    """The rows as a markdown table."""
    head = ["architecture", "family", "trace", "round trip", "interp rel err", "x86 rel err"]
    if arm64:
        head.append("arm64 rel err")
    head.append("compile s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, r.family, _cell(r.trace, width), _cell(r.round_trip, width), _cell(r.interp, width),
                 _cell(r.x86, width)]
        if arm64:
            cells.append(_cell(r.arm64, width))
        cells.append("-" if r.compile_s is None else f"{r.compile_s:.1f}")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    n = len(rows)
    traced = sum(r.traced for r in rows)
    rt = sum(r.round_trip == "ok" for r in rows)
    match = sum(r.matches for r in rows)
    x86 = sum(isinstance(r.x86, float) and r.x86 <= TOLERANCE for r in rows)
    text = (f"{n} entries: {traced} trace, {rt} round-trip, {match} match torch in the interpreter "
            f"(rel. err ≤ {TOLERANCE:g})")
    if any(r.x86 is not None for r in rows):
        text += f", {x86} match torch as x86_64 artifacts"
    if any(r.arm64 is not None for r in rows):
        arm = sum(isinstance(r.arm64, float) and r.arm64 <= TOLERANCE for r in rows)
        text += f", {arm} on the emulated Pi"
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sliver.benchmarks.coverage", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="entries to check (default: all)")
    ap.add_argument("--no-compile", action="store_true", help="trace, round trip and interpreter only")
    ap.add_argument("--arm64", action="store_true", help="also compile for arm64 and run on the emulated Pi")
    ap.add_argument("--width", type=int, default=90, help="truncate error messages to this many characters")
    args = ap.parse_args(argv)

    import torch

    from sliver.benchmarks import realzoo

    zoo = realzoo()
    unknown = [n for n in args.names if n not in zoo.ENTRIES]
    if unknown:
        ap.error(f"unknown entries {', '.join(unknown)}; the zoo has {', '.join(zoo.ENTRIES)}")
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sliver-coverage-") as tmp:
        for name in args.names or list(zoo.ENTRIES):
            start = time.perf_counter()
            rows.append(check(zoo.ENTRIES[name], compile=not args.no_compile, arm64=args.arm64, workdir=Path(tmp)))
            print(f"{name}: {time.perf_counter() - start:.1f} s  " + table(rows[-1:], width=args.width,
                                                                           arm64=args.arm64).splitlines()[-1],
                  file=sys.stderr, flush=True)
    print(table(rows, width=args.width, arm64=args.arm64))
    print()
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
