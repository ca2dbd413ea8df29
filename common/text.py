"""Plain-text tables for reports (pass timings, pruning, outliers)."""

from __future__ import annotations

from typing import Sequence


def table_lines(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns two spaces apart, one line per row (the first row is the
    header); trailing blanks trimmed."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
