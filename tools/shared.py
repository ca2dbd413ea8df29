"""What the ``sliver`` commands share: reading a MODEL argument and progress messages.

``sliver`` (:mod:`sliver.tools.cli`), ``sliver explain`` and ``sliver outliers`` import
it; it imports none of them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from sliver.common.errors import SliverError


def say(msg: str, who: str = "sliver") -> None:
    """A progress message on stderr, tagged ``[who]`` (stdout stays the command's result)."""
    print(f"[{who}] {msg}", file=sys.stderr, flush=True)


def load_model(spec: str):
    """``(model_or_module, example_inputs)`` from a MODEL argument."""
    if spec.endswith(".sir"):
        import numpy as np

        from sliver.ir.io import load_module
        from sliver.ir.types import is_float, to_numpy

        module = load_module(spec)
        rng = np.random.default_rng(0)
        inputs = []
        for v in module.inputs:
            t = v.type
            if is_float(t.dtype):
                inputs.append(rng.standard_normal(t.shape).astype(to_numpy(t.dtype)))
            else:
                inputs.append(np.zeros(t.shape, to_numpy(t.dtype)))
        return module, tuple(inputs)
    if spec.endswith(".pt2"):
        import torch

        if not Path(spec).is_file():
            raise SliverError(f"{spec}: no such file")
        ep = torch.export.load(spec)
        args, kwargs = ep.example_inputs or ((), {})
        if not args:
            raise SliverError(f"{spec} carries no example inputs; export it with example args")
        return ep, args
    path, _, func = spec.partition(":")
    if not path.endswith(".py") or not func:
        raise SliverError(f"MODEL {spec!r}: give file.py:function, file.pt2 or file.sir")
    if not Path(path).is_file():
        raise SliverError(f"{path}: no such file")
    mod_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.path.insert(0, str(Path(path).resolve().parent))
    try:
        mod_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    if not hasattr(module, func):
        raise SliverError(f"{path} has no function {func!r}")
    result = getattr(module, func)()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise SliverError(f"{spec} must return (model, example_inputs)")
    return result
