"""The verifier: checks every invariant of a module and reports the first fault
with the ops around it (the way jaxpr's checker does), so a broken pass is found
where it broke the IR rather than three passes later in a backend.
"""

from __future__ import annotations

from sliver.common.errors import SliverError, VerifyError
from sliver.ir.ops import get_op
from sliver.ir.printer import format_op
from sliver.ir.types import to_numpy

CONTEXT = 3


def _fault(module, index: int | None, message: str, after: str | None) -> VerifyError:
    head = f"invalid IR after pass '{after}'" if after else "invalid IR"
    lines = [f"{head}: {message}"]
    if index is not None:
        lo, hi = max(0, index - CONTEXT), min(len(module.ops), index + CONTEXT + 1)
        lines.append(f"  in func @{module.name}:")
        for i in range(lo, hi):
            mark = ">>" if i == index else "  "
            lines.append(f"  {mark} {format_op(module.ops[i])}")
    return VerifyError("\n".join(lines))


def _check_dim_vars(module, after) -> None:
    """Symbolic dimensions: one range per variable name, and every variable bound by a
    plain dimension of an input (so the interpreter and the runtime know its value)."""
    from sliver.ir.dims import Sym

    bound = set()
    for v in module.inputs:
        for d in v.type.shape:
            if isinstance(d, Sym):
                if d.as_var is None:
                    raise _fault(module, None, f"input %{v.name}: dimension {d} is an expression; an input's "
                                 "dimensions are integers or single dimension variables", after)
                bound.add(d.as_var)
    by_name: dict = {}
    for var in module.dim_vars():
        if var.name in by_name:
            raise _fault(module, None, f"dimension {var.name} has two ranges: {by_name[var.name]} and {var}", after)
        by_name[var.name] = var
        if var not in bound:
            raise _fault(module, None, f"dimension {var.name} is used but no input has it as a dimension", after)


def verify(module, *, after: str | None = None) -> None:
    """Raise :class:`VerifyError` on the first broken invariant.

    ``after`` names the pass that just ran; the message blames it.
    """
    defined: set[int] = set()
    names: set[str] = set()

    def define(value, index):
        if value.name in names:
            raise _fault(module, index, f"value %{value.name} is defined twice", after)
        names.add(value.name)
        defined.add(id(value))

    for v in module.inputs:
        if v.producer is not None:
            raise _fault(module, None, f"input %{v.name} claims to be produced by an op", after)
        define(v, None)
    _check_dim_vars(module, after)

    for index, op in enumerate(module.ops):
        try:
            decl = get_op(op.kind)
        except SliverError as e:
            raise _fault(module, index, str(e), after) from None
        if op.module is not module:
            raise _fault(module, index, f"{op.kind} is not attached to this module", after)
        for i, v in enumerate(op.operands):
            if id(v) not in defined:
                raise _fault(module, index, f"operand {i} (%{v.name}) of {op.kind} is used before it is defined", after)
            if (op, i) not in v.uses:
                raise _fault(module, index, f"use of %{v.name} by {op.kind} is missing from its use list", after)
        for r in op.results:
            if r.producer is not op:
                raise _fault(module, index, f"%{r.name} does not point back to its producer", after)
        if op.kind == "param":
            name = op.result.name
            if name not in module.params:
                raise _fault(module, index, f"param %{name} has no data", after)
            data = module.params[name]
            t = op.result.type
            if data.shape != t.shape or data.dtype != to_numpy(t.dtype):
                raise _fault(module, index, f"param %{name} holds {data.dtype}{list(data.shape)}, typed {t}", after)
        else:
            try:
                if set(op.attrs) != set(decl.attrs):
                    raise SliverError(f"{op.kind} attributes {sorted(op.attrs)} differ from {sorted(decl.attrs)}")
                inferred = decl.infer_types([v.type for v in op.operands], op.attrs)
            except SliverError as e:
                raise _fault(module, index, str(e), after) from None
            actual = [r.type for r in op.results]
            if [(t.shape, t.dtype) for t in inferred] != [(t.shape, t.dtype) for t in actual]:
                raise _fault(
                    module, index,
                    f"{op.kind} results are typed {', '.join(map(str, actual))} but its type rule gives "
                    f"{', '.join(map(str, inferred))}", after,
                )
            if decl.extra_verify is not None:
                try:
                    decl.extra_verify(op)
                except SliverError as e:
                    raise _fault(module, index, str(e), after) from None
        for r in op.results:
            define(r, index)
            for user, i in r.uses:
                if user.module is not module or user.operands[i] is not r:
                    raise _fault(module, index, f"%{r.name} has a stale use by {user.kind}", after)

    if not module.outputs:
        raise _fault(module, None, "the module has no outputs", after)
    for v in module.outputs:
        if id(v) not in defined:
            raise _fault(module, None, f"output %{v.name} is not defined in the module", after)
    stray = set(module.params) - {op.result.name for op in module.ops if op.kind == "param"}
    if stray:
        raise _fault(module, None, f"params without a param op: {sorted(stray)[:5]}", after)
