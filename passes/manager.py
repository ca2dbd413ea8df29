"""The pass registry, pipelines and the pass manager with its instruments.

Every built-in pass is imported here and registers itself (:mod:`sliver.passes.base`;
no pass imports this module).  A pass is a frozen dataclass with a ``name`` (the CLI
name) and its options as fields; ``run(module)`` rewrites the module in place and
returns whether it changed anything.  Pipelines are strings: ``"fold-batchnorm,dce,cse"``; options go in
braces: ``"const-fold{max_elements=65536}"``.

The manager verifies the IR after every pass (on by default), times each pass
and hands every step to instruments: print-after-all / -after=NAME /
-after-change, a numbered dump directory, and numeric drift against the
interpreter on golden inputs.  A pass that raises is reported with the passes
that ran before it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Sequence, TextIO

import numpy as np

from sliver.common.errors import SliverError
from sliver.common.records import PassRecord  # noqa: F401  (part of this module's API)
from sliver.common.text import table_lines
# Importing each pass module registers its pass; the passes import only the base.
from sliver.passes import cse, const_fold, dce, fold_batchnorm, fold_fake_quant, outliers, prune  # noqa: F401
from sliver.passes import quantize_activations, quantize_static, quantize_weights  # noqa: F401
from sliver.passes.base import Pass, max_relative_error, register, registered  # noqa: F401  (part of the API)


def all_passes() -> dict[str, type[Pass]]:
    return dict(sorted(registered().items()))


def _coerce(text: str, field_type, pass_name: str, key: str):
    ftype = field_type if isinstance(field_type, str) else getattr(field_type, "__name__", str(field_type))
    try:
        if "bool" in ftype:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if "int" in ftype and "float" not in ftype:
            return int(text)
        if "float" in ftype:
            return float(text)
    except ValueError:
        raise SliverError(f"pass {pass_name}: option {key}={text!r} is not a valid {ftype}") from None
    return text


def make_pass(name: str, **options) -> Pass:
    passes = all_passes()
    if name not in passes:
        raise SliverError(f"unknown pass {name!r}; available: {', '.join(passes)}")
    cls = passes[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in options:
        if k not in fields:
            raise SliverError(f"pass {name} has no option {k!r}; options: {', '.join(fields) or 'none'}")
    return cls(**options)


def parse_pipeline(text: str | Sequence) -> list[Pass]:
    """``"fold-batchnorm,dce,const-fold{max_elements=100}"`` → passes.  A list of
    Pass objects or names is accepted too."""
    if not isinstance(text, str):
        return [p if isinstance(p, Pass) else make_pass(p) for p in text]
    passes, i, text = [], 0, text.strip()
    while i < len(text):
        j = i
        while j < len(text) and text[j] not in ",{":
            j += 1
        name = text[i:j].strip()
        options = {}
        if j < len(text) and text[j] == "{":
            k = text.find("}", j)
            if k < 0:
                raise SliverError(f"pipeline {text!r}: missing '}}' after options of {name}")
            cls = all_passes().get(name)
            types = {f.name: f.type for f in dataclasses.fields(cls)} if cls else {}
            for item in filter(None, (s.strip() for s in text[j + 1:k].split(","))):
                if "=" not in item:
                    raise SliverError(f"pipeline {text!r}: option {item!r} of {name} needs the form key=value")
                key, val = (s.strip() for s in item.split("=", 1))
                options[key] = _coerce(val, types.get(key, "str"), name, key)
            j = k + 1
        if not name:
            raise SliverError(f"pipeline {text!r}: empty pass name at position {i}")
        passes.append(make_pass(name, **options))
        i = j + 1 if j < len(text) and text[j] == "," else j
        if i < len(text) and text[i - 1] != ",":
            raise SliverError(f"pipeline {text!r}: expected ',' after {name}")
    return passes


def pipeline_string(passes: Sequence[Pass]) -> str:
    return ",".join(p.spec() for p in passes)


# ----------------------------------------------------------------------------
# records and instruments


class Instrument:
    def before(self, index: int, pass_: Pass, module) -> None:
        pass

    def after(self, index: int, pass_: Pass, module, record: PassRecord) -> None:
        pass

    def start(self, module) -> None:
        pass


class PrintIR(Instrument):
    """Print the IR after passes: all, the named ones, or only those that changed it."""

    def __init__(self, *, after_all=False, after: Sequence[str] = (), after_change=False, stream: TextIO | None = None):
        self.after_all, self.names, self.after_change = after_all, set(after), after_change
        self.stream = stream
        self._before = None

    def before(self, index, pass_, module):
        if self.after_change:
            self._before = str(module)

    def after(self, index, pass_, module, record):
        text = None
        if self.after_change:
            text = str(module)
            if text == self._before:
                return
        elif not (self.after_all or pass_.name in self.names):
            return
        out = self.stream or sys.stdout
        out.write(f"// ----- IR after {pass_.spec()} ({record.seconds * 1e3:.1f} ms) -----\n")
        out.write(text or str(module))
        out.flush()


class DumpDir(Instrument):
    """Write ``00-input.sir``, ``01-<pass>.sir``, … into a directory."""

    def __init__(self, path):
        self.path = Path(path)

    def start(self, module):
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "00-input.sir").write_text(str(module))

    def after(self, index, pass_, module, record):
        (self.path / f"{index + 1:02d}-{pass_.name}.sir").write_text(str(module))


class NumericDrift(Instrument):
    """Run the interpreter (float64) after each pass and record the output drift
    against the module as it was before the first pass."""

    def __init__(self, inputs: Sequence[np.ndarray]):
        self.inputs = list(inputs)
        self.reference = None

    def start(self, module):
        from sliver.ir.interp import run

        self.reference = run(module, self.inputs, dtype="f64")

    def after(self, index, pass_, module, record):
        from sliver.ir.interp import run

        record.drift = max_relative_error(run(module, self.inputs, dtype="f64"), self.reference)


class PassManager:
    def __init__(self, passes, *, verify: bool = True, instruments: Sequence[Instrument] = ()):
        self.passes = parse_pipeline(passes)
        self.verify = verify
        self.instruments = list(instruments)

    def run(self, module) -> list[PassRecord]:
        from sliver.ir.verifier import verify

        if self.verify:
            verify(module)
        for inst in self.instruments:
            inst.start(module)
        records = []
        for index, p in enumerate(self.passes):
            for inst in self.instruments:
                inst.before(index, p, module)
            ops_before, params_before = len(module.ops), len(module.params)
            notes = {}
            t0 = time.perf_counter()
            try:
                result = p.run(module)
            except SliverError as e:
                done = ", ".join(r.spec for r in records) or "none"
                raise type(e)(f"pass {p.spec()} failed (after the passes: {done}): {e}") from e
            except Exception as e:
                done = ", ".join(r.spec for r in records) or "none"
                raise SliverError(
                    f"internal error in pass {p.spec()} (after the passes: {done}): {type(e).__name__}: {e}"
                ) from e
            seconds = time.perf_counter() - t0
            if isinstance(result, tuple):
                result, notes = result
            if self.verify:
                verify(module, after=p.spec())
            record = PassRecord(p.name, p.spec(), seconds, bool(result), ops_before, len(module.ops),
                                params_before, len(module.params), notes=notes)
            for inst in self.instruments:
                inst.after(index, p, module, record)
            records.append(record)
        return records


def format_records(records: Sequence[PassRecord]) -> str:
    """A table of what each pass did (for `sliver opt --timing`)."""
    rows = [("pass", "time", "changed", "ops", "params", "drift")]
    for r in records:
        drift = "-" if r.drift is None else f"{r.drift:.2e}"
        rows.append((r.spec, f"{r.seconds * 1e3:.1f} ms", "yes" if r.changed else "no",
                     f"{r.ops_before} -> {r.ops_after}", f"{r.params_before} -> {r.params_after}", drift))
    return "\n".join(table_lines(rows)) + "\n"


__all__ = [
    "Pass", "register", "all_passes", "make_pass", "parse_pipeline", "pipeline_string", "PassManager",
    "PassRecord", "Instrument", "PrintIR", "DumpDir", "NumericDrift", "max_relative_error", "format_records",
]
