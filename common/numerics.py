"""Arrays in, and how far one output is from another: the one metric the pass
manager's drift instrument, the artifact's ``verify`` and the benchmarks all report."""

from __future__ import annotations

import numpy as np


def as_numpy(x) -> np.ndarray:
    """A C-contiguous numpy array of ``x``: a torch tensor (detached, on the CPU), an
    array or anything ``np.asarray`` takes.  Needs no torch: tensors are recognised by
    their ``detach``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return np.ascontiguousarray(x).reshape(x.shape)  # ascontiguousarray alone makes a 0-d array 1-d


def output_error(got, want) -> tuple[float, float]:
    """(max |got - want|, that divided by max |want|): inf when the shapes differ or a
    value is not finite; the relative error is the absolute one when want is all zero."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf"), float("inf")
    if want.size == 0:
        return 0.0, 0.0
    diff = np.abs(got - want)
    if not np.all(np.isfinite(diff)):
        return float("inf"), float("inf")
    err, scale = float(diff.max()), float(np.abs(want).max())
    return err, (err / scale if scale else err)
