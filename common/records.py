"""Records the compiler keeps and the artifact's manifest carries (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PassRecord:
    """What one pass did: the manager fills one per pass; instruments add to it.  An
    artifact's manifest keeps them (``passes``), with the notes as plain JSON."""

    name: str
    spec: str
    seconds: float
    changed: bool
    ops_before: int
    ops_after: int
    params_before: int
    params_after: int
    drift: float | None = None  # max relative error of the outputs vs the input module
    notes: dict = field(default_factory=dict)  # a pass's own report (e.g. layers folded)
