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
from sliver.ir.dims import Sym
from sliver.ir.dims import substitute as _substitute
from sliver.ir.types import is_float


def substitute(attrs: dict, dims: dict) -> dict:
    return {k: _substitute(v, dims) for k, v in attrs.items()}


def bind_dims(module, shapes: Sequence[tuple]) -> dict[str, int]:
    """The value of each dimension variable, read from the inputs' shapes; an
    :class:`InputError` when a size is outside its range, two inputs disagree on a
    variable, or a static dimension differs."""
    env: dict[str, int] = {}
    for v, shape in zip(module.inputs, shapes):
        want = v.type.shape
        text = "[" + ", ".join(map(str, want)) + "]"
        if len(shape) != len(want):
            raise InputError(f"input %{v.name} must have shape {text}, got {list(shape)}")
        for axis, (d, n) in enumerate(zip(want, shape)):
            var = d.as_var if isinstance(d, Sym) else None
            if var is None:
                if d != n:
                    raise InputError(f"input %{v.name} must have shape {text}, got {list(shape)}")
            elif not var.lo <= n <= var.hi:
                raise InputError(f"input %{v.name}: dimension {axis} ({var.name}) must be in [{var.lo}, {var.hi}], "
                                 f"got {n}: sizes outside the range the model was lowered for need a new "
                                 f"`sliver lower` with a wider dynamic dimension")
            elif env.setdefault(var.name, n) != n:
                raise InputError(f"input %{v.name}: dimension {axis} ({var.name}) is {n}, but another input has "
                                 f"{var.name} = {env[var.name]}; they must agree")
    return env


def check_inputs(module, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    return check_and_bind(module, inputs)[0]


def check_and_bind(module, inputs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], dict[str, int]]:
    from sliver.ir.types import to_numpy

    if len(inputs) != len(module.inputs):
        raise InputError(f"@{module.name} takes {len(module.inputs)} input(s), got {len(inputs)}")
    out = [np.asarray(x) for x in inputs]
    env = bind_dims(module, [tuple(x.shape) for x in out])
    for v, x in zip(module.inputs, out):
        if x.dtype != to_numpy(v.type.dtype):
            raise InputError(f"input %{v.name} must be {v.type.dtype} ({to_numpy(v.type.dtype)}), got {x.dtype}")
    return out, env


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

    inputs, dims = check_and_bind(module, inputs)

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
                attrs = substitute(op.attrs, dims) if dims else op.attrs  # symbolic dims → this run's sizes
                if dtype == "f64" and op.kind == "constant" and is_float(attrs["dtype"]):
                    res = op.decl.ref(**attrs).double()
                else:
                    res = op.decl.ref(*args, **attrs)
                out = res if isinstance(res, tuple) else (res,)
            for r, t in zip(op.results, out):
                env[id(r)] = t
            if observe is not None:
                observe(op, out)
    return [env[id(v)].contiguous().numpy() for v in module.outputs]
