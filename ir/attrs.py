"""Attribute values: what an op's ``{...}`` holds, and their one text form.

Values are ints, floats, bools, strings, None, symbolic dimensions
(:class:`~sliver.ir.dims.Sym`, printed as their expression: ``shape=[batch, seq, 768]``)
and tuples of those.  Lists are
normalized to tuples so that attributes hash (CSE keys on them).  Floats print with
``repr`` (always a ``.``, ``e``, ``inf`` or ``nan``), so ints and floats never blur and
print → parse is exact.
"""

from __future__ import annotations

import math

from sliver.ir.dims import DimVar, Sym


def normalize(value):
    """Canonical, hashable form of an attribute value."""
    if isinstance(value, (list, tuple)):
        return tuple(normalize(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, (str, Sym)):
        return value
    if isinstance(value, DimVar):
        return Sym.var(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    # numpy scalars and the like
    if hasattr(value, "item"):
        return normalize(value.item())
    raise TypeError(f"attribute values are numbers, bools, strings, None or lists; got {value!r}")


def format_attr(value) -> str:
    if value is None:
        return "none"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, Sym):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    raise TypeError(f"cannot print attribute value {value!r}")
