"""The reference interpreter: runs a module with each op's reference semantics.

It is the oracle for every pass (a pass must not change what the interpreter
computes, beyond float rounding) and for every backend.  ``dtype="f64"`` runs all
floating-point math in float64, which makes the comparisons sharp.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from sliver.common.errors import InputError
from sliver.common.numerics import as_numpy
from sliver.ir.types import is_float


def check_inputs(module, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    from sliver.ir.types import to_numpy

    if len(inputs) != len(module.inputs):
        raise InputError(f"@{module.name} takes {len(module.inputs)} input(s), got {len(inputs)}")
    out = []
    for v, x in zip(module.inputs, inputs):
        x = np.asarray(x)
        if tuple(x.shape) != v.type.shape:
            raise InputError(f"input %{v.name} must have shape {list(v.type.shape)}, got {list(x.shape)}")
        if x.dtype != to_numpy(v.type.dtype):
            raise InputError(f"input %{v.name} must be {v.type.dtype} ({to_numpy(v.type.dtype)}), got {x.dtype}")
        out.append(x)
    return out


def run(
    module,
    inputs: Sequence[np.ndarray],
    *,
    dtype: str | None = None,
    observe: Callable | None = None,
) -> list[np.ndarray]:
    """Run ``module`` on numpy inputs; returns its outputs as numpy arrays.

    ``dtype="f64"`` computes every float in float64 (outputs stay float64).
    ``observe(op, result_tensors)`` is called after each op (for drift reports and
    activation statistics).
    """
    import torch

    inputs = check_inputs(module, inputs)

    def tensor(a: np.ndarray):
        t = torch.from_numpy(as_numpy(a))
        if dtype == "f64" and t.is_floating_point():
            t = t.double()
        return t

    env = {id(v): tensor(x) for v, x in zip(module.inputs, inputs)}
    with torch.no_grad():
        for op in module.ops:
            if op.kind == "param":
                out = (tensor(module.params[op.result.name]),)
            else:
                args = [env[id(v)] for v in op.operands]
                if dtype == "f64" and op.kind == "constant" and is_float(op.attrs["dtype"]):
                    res = op.decl.ref(**op.attrs).double()
                else:
                    res = op.decl.ref(*args, **op.attrs)
                out = res if isinstance(res, tuple) else (res,)
            for r, t in zip(op.results, out):
                env[id(r)] = t
            if observe is not None:
                observe(op, out)
    return [env[id(v)].contiguous().numpy() for v in module.outputs]
