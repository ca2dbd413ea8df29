"""The lowering rule table and what rules build Relax with, shared by every file of
rules (:mod:`.lower` for the float ops, :mod:`.lowbit`, :mod:`.wq_linear`).

A rule is ``rule(bb, op, *operands) -> relax.Expr``, registered with :func:`lowers`;
``bb`` is a BlockBuilder whose ``context`` is the :class:`LowerContext` of the module
being lowered.  The driver (:func:`~sliver.backends.tvm.lower.to_relax`) imports every
file of rules; the rule files import only this module, so none of them imports another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

LOWERING: dict[str, Callable] = {}


def lowers(*kinds):
    def deco(fn):
        for k in kinds:
            LOWERING[k] = fn
        return fn

    return deco


def _R():
    from tvm import relax

    return relax.op


def _scalar(value, like):
    from tvm import relax

    return relax.const(value, like.ty.dtype)


def _const(array: np.ndarray):
    """A Relax constant of the array's own dtype (``relax.const`` alone turns int64 data into int32)."""
    from tvm import relax

    array = np.asarray(array)
    return relax.const(array, str(array.dtype))


def _dtype(kind: str) -> str:
    """sliver element type → TVM dtype string (sub-byte codes ``u2``, ``i4``… are held
    one per byte, as ``uint8`` / ``int8``)."""
    if kind == "bool":
        return "bool"
    if kind[0] in "iu" and int(kind[1:]) < 8:
        kind = kind[0] + "8"
    letter = {"f": "float", "i": "int", "u": "uint"}[kind[0]]
    return f"{letter}{kind[1:]}"


def _prim(bb, d):
    """A sliver dimension as what Relax takes: an int, or for a symbolic dimension a
    TIR expression over the function's shape variables (``bb.context.tir_vars``)."""
    from sliver.ir.dims import Sym

    if not isinstance(d, Sym):
        return d
    return prim_expr(d, bb.context.tir_vars)


def prim_expr(d, tir_vars: dict):
    """The int64 TIR expression of a dimension (an int or a Sym); ``tir_vars`` maps
    each dimension variable's name to its ``tirx.Var``."""
    from tvm import tirx

    from sliver.ir.dims import DimVar, Sym

    if not isinstance(d, Sym):
        return tirx.IntImm("int64", d)
    total = None
    for atoms, coef in d.terms():
        term = tirx.IntImm("int64", coef) if coef != 1 or not atoms else None
        for a in atoms:
            f = tir_vars[a.name] if isinstance(a, DimVar) else tirx.floordiv(prim_expr(a.num, tir_vars),
                                                                              tirx.IntImm("int64", a.den))
            term = f if term is None else term * f
        total = term if total is None else total + term
    return total


def _shape(bb, shape) -> list:
    """A shape attribute (ints and symbolic dimensions) for a Relax op."""
    return [_prim(bb, d) for d in shape]


def _channel_vector(bb, v, rank: int):
    """[C] → [1, C, 1, …] so it broadcasts over NCHW."""
    return bb.emit(_R().reshape(v, [1, -1] + [1] * (rank - 2)))


def _channels(expr) -> int:
    """The channel count (axis 1) of a lowered NCHW value."""
    return int(expr.ty.shape[1])


def unsupported_ops(module) -> list[str]:
    return sorted({op.kind for op in module.ops if op.kind != "param" and op.kind not in LOWERING})


@dataclass
class LowerContext:
    """What lowering rules may consult and record (a rule sees it as ``bb.context``):
    the target (a :class:`~sliver.backends.tvm.targets.Target`; None: this machine's),
    ``kernels`` (``{layer: kernel}`` for layers with a choice of kernels), ``sources``
    (C files the library must link, for kernels called as packed functions) and
    ``defines`` (``NAME=VALUE`` macros those C files are compiled with) and
    ``lowbit_kernel``, a kernel forced on every low-bit layer."""

    target: object = None
    kernels: dict = field(default_factory=dict)
    sources: set = field(default_factory=set)
    defines: set = field(default_factory=set)
    #: forces ``"generic"``, ``"bitserial"`` or ``"int8"`` for every eligible low-bit layer
    #: (``"bitserial"`` takes widths below 8; 8-bit layers then get ``"int8"``); None: the
    #: target's policy (``Target.lowbit_kernel``)
    lowbit_kernel: str | None = None
    #: the module's dimension variables as TIR shape variables (name → ``tirx.Var``, int64)
    tir_vars: dict = field(default_factory=dict)
