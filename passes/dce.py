"""dce: remove ops whose results nothing uses (params included)."""

from __future__ import annotations

from dataclasses import dataclass

from sliver.passes.base import Pass, register


def dce(module) -> bool:
    """Erase dead ops, last to first, so chains of dead ops go in one sweep."""
    outputs = {id(v) for v in module.outputs}
    changed = False
    for op in reversed(list(module.ops)):
        if op.decl.pure and not any(r.uses or id(r) in outputs for r in op.results):
            module.erase(op)
            changed = True
    return changed


@register
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove ops (and params) whose results are never used."""

    name = "dce"

    def run(self, module) -> bool:
        return dce(module)
