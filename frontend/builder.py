"""The emitter a trace rule writes through, and trace-time constant evaluation.

A :class:`Builder` emits sliver ops for one fx node, naming the results after it.
Whatever a rule sees that depends only on params and constants can be evaluated now
(:func:`constant_data`, :func:`fold_constant`) and becomes a param.
"""

from __future__ import annotations

import numpy as np

from sliver.common.numerics import as_numpy
from sliver.ir.core import Module, Value
from sliver.ir.ops import TypeRuleError


class Builder:
    """Emits sliver ops for one fx node; names results after the node."""

    def __init__(self, module: Module):
        self.m = module
        self.hint = None
        self.node_target = ""

    def emit(self, kind: str, operands, attrs=None) -> Value:
        return self.m.add_op(kind, operands, attrs or {}, names=[self.m.fresh_name(self.hint)]).result

    def const(self, value, dtype: str, shape=()) -> Value:
        if isinstance(value, bool):
            value = int(value)
        attrs = {"value": value, "dtype": dtype, "shape": tuple(shape)}
        return self.m.add_op("constant", [], attrs, names=[self.m.fresh_name("cst")]).result

    def tensor_or_scalar(self, x, like: Value) -> Value:
        """A Value for a binary op's operand: scalars become constants of like's dtype."""
        if isinstance(x, Value):
            if x.type.dtype != like.type.dtype:
                return self.emit("cast", [x], {"dtype": like.type.dtype})
            return x
        dtype = like.type.dtype
        return self.const(float(x) if dtype.startswith("f") else int(x), dtype)


def constant_data(b: Builder, v) -> np.ndarray | None:
    """The data of ``v`` when it is computed from params and constants only, else None."""
    import torch

    if not isinstance(v, Value):
        return None
    data = b.m.param_data(v)
    if data is not None:
        return data
    op = v.producer
    if op is None or len(op.results) != 1 or not op.decl.pure or op.decl.ref is None:
        return None
    if not v.type.static:  # its data depends on the inputs' sizes
        return None
    args = []
    for o in op.operands:
        d = constant_data(b, o)
        if d is None:
            return None
        args.append(torch.from_numpy(as_numpy(d)))
    with torch.no_grad():
        return op.decl.ref(*args, **op.attrs).contiguous().numpy()


def fold_constant(b: Builder, what: str, fn, *args, shape_only: bool = False, **kwargs) -> Value:
    """``fn(*args, **kwargs)`` evaluated now as a param.  Every tensor argument must
    be constant, unless ``shape_only``: then ``fn`` only reads shapes and dtypes
    (``zeros_like``), and a computed tensor stands in as zeros of its type."""
    import torch

    from sliver.ir.types import to_numpy

    def concrete(a):
        if isinstance(a, Value):
            d = constant_data(b, a)
            if d is None and shape_only:
                d = np.zeros(a.type.shape, to_numpy(a.type.dtype))
            if d is None:
                raise TypeRuleError(f"{what} of a tensor computed from the inputs is not supported (only of constants)")
            return torch.from_numpy(as_numpy(d))
        if isinstance(a, (list, tuple)):
            return type(a)(concrete(x) for x in a)
        return a

    with torch.no_grad():
        out = fn(*concrete(args), **{k: concrete(v) for k, v in kwargs.items()})
    return b.m.add_param(b.m.fresh_name(b.hint), out.contiguous().numpy())
