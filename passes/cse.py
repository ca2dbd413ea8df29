"""cse: merge ops that compute the same thing (same kind, operands and attributes).

Params are never merged (two weights may hold equal data today and be pruned
differently tomorrow); constants are, since they are their attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sliver.passes.base import Pass, register


def cse(module) -> bool:
    seen: dict[tuple, object] = {}
    changed = False
    for op in list(module.ops):
        if op.kind == "param" or not op.decl.pure:
            continue
        key = (op.kind, tuple(id(v) for v in op.operands), tuple(sorted(op.attrs.items(), key=lambda kv: kv[0])),
               tuple(str(r.type) for r in op.results))
        twin = seen.get(key)
        if twin is None:
            seen[key] = op
            continue
        for mine, theirs in zip(op.results, twin.results):
            module.replace_all_uses_with(mine, theirs)
        module.erase(op)
        changed = True
    return changed


@register
@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    """Merge ops with the same kind, operands and attributes."""

    name = "cse"

    def run(self, module) -> bool:
        return cse(module)
