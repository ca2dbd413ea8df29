"""const-fold: evaluate ops whose operands are all constant and store the result
as a param.

Typical wins: the transposes and reshapes of weights that torch.export leaves in
front of matmuls, and arithmetic on constant buffers (rotary tables, masks).
Results larger than ``max_elements``, or much larger than their inputs (a
broadcast that would bloat the artifact), stay as ops, and so do ops with a symbolic
dimension (``slice(arange) {end=seq}``: the value depends on the run's sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

from sliver.ir.types import is_float, to_numpy
from sliver.passes.base import Pass, register

_SOURCES = ("param", "constant")


@register
@dataclass(frozen=True)
class ConstantFolding(Pass):
    """Replace ops on constants by params holding their results."""

    name = "const-fold"
    max_elements: int = 1 << 22
    max_growth: int = 4

    def run(self, module) -> bool:
        import torch

        from sliver.passes.dce import dce

        changed = False
        for op in list(module.ops):
            if op.kind in _SOURCES or not op.operands or not op.decl.pure or len(op.results) != 1:
                continue
            if any(v.producer is None or v.producer.kind not in _SOURCES for v in op.operands):
                continue
            out = op.result.type
            if not out.static or not all(v.type.static for v in op.operands):
                continue  # its value depends on the run's sizes (symbolic dimensions): computed at run time
            inputs = sum(v.type.numel for v in op.operands)
            if out.numel > self.max_elements or out.numel > self.max_growth * inputs + 64:
                continue
            args = []
            for v in op.operands:
                src = v.producer
                t = torch.from_numpy(module.params[v.name]) if src.kind == "param" else src.decl.ref(**src.attrs)
                args.append(t.double() if t.is_floating_point() else t)
            with torch.no_grad():
                value = op.decl.ref(*args, **op.attrs)
            data = value.numpy().astype(to_numpy(out.dtype)) if is_float(out.dtype) else value.numpy()
            name = op.result.name
            new = module.add_param(name + "_folded", data.reshape(out.shape), before=op)
            module.replace_all_uses_with(op.result, new)
            module.erase(op)
            changed = True
        if changed:
            dce(module)
        return changed
