"""Local rewrites: patterns and the worklist driver that applies them.

A pattern's ``match_and_rewrite(op, module)`` looks at one op; when it applies it
rewrites through the module's mutation API and returns True, otherwise it returns
False without touching anything.  The driver revisits ops until no pattern applies.
"""

from __future__ import annotations

from typing import Sequence


class RewritePattern:
    #: op kinds this pattern can start from (None: any)
    roots: tuple[str, ...] | None = None

    def match_and_rewrite(self, op, module) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


def apply_patterns(module, patterns: Sequence[RewritePattern], max_rounds: int = 32) -> bool:
    """Apply patterns until a fixed point; returns whether anything changed."""
    changed = False
    for _ in range(max_rounds):
        round_changed = False
        for op in list(module.ops):
            if op.module is not module:  # erased by an earlier rewrite this round
                continue
            for pattern in patterns:
                if pattern.roots is None or op.kind in pattern.roots:
                    if pattern.match_and_rewrite(op, module):
                        round_changed = True
                        break
        changed |= round_changed
        if not round_changed:
            return changed
    return changed


def single_user(module, value) -> bool:
    """True when exactly one op uses ``value`` (once) and it is not a module output."""
    return len(value.uses) == 1 and all(v is not value for v in module.outputs)
