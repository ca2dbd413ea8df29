"""Reading and writing modules: ``model.sir`` (text) beside ``model.npz`` (params)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sliver.common.errors import SliverError
from sliver.common.files import atomic_write


def params_path(path) -> Path:
    return Path(path).with_suffix(".npz")


def save_module(module, path) -> Path:
    """Write ``path`` (IR text) and its params beside it (same stem, ``.npz``)."""
    atomic_write(params_path(path), lambda f: np.savez(f, **module.params))
    return atomic_write(path, lambda f: f.write(str(module).encode()))


def load_module(path):
    """Read a module saved by :func:`save_module`."""
    from sliver.ir.parser import parse_module

    path = Path(path)
    if not path.is_file():
        raise SliverError(f"{path}: no such IR file")
    ppath = params_path(path)
    params = None
    if ppath.is_file():
        with np.load(ppath) as z:
            params = {k: z[k] for k in z.files}
    try:
        return parse_module(path.read_text(), params=params)
    except SliverError as e:
        raise type(e)(f"{path}: {e}") from None
