"""The text form of a module.  :mod:`sliver.ir.parser` reads it back exactly.

    func @tiny(%x: f32[1,3,8,8]) {
      %c.weight = param : f32[8,3,3,3]
      %conv = conv2d(%x, %c.weight) {padding=[1, 1, 1, 1]} : f32[1,8,8,8]
      %relu = relu(%conv) : f32[1,8,8,8]
      return %relu
    }

A module with symbolic dimensions declares their variables after its arguments:

    func @bert(%ids: i64[batch,seq]) where batch in [1, 16], seq in [1, 512] {

Attributes equal to their declared default are left out; the parser fills them
back in, so print → parse → print is the identity.  Param data is not printed:
it travels in a side file (``.npz``) next to the text.
"""

from __future__ import annotations

from sliver.ir.attrs import format_attr
from sliver.ir.names import format_name


def format_op(op) -> str:
    decl = op.decl
    lhs = ", ".join(format_name(r.name) for r in op.results)
    args = ", ".join(format_name(v.name) for v in op.operands)
    attrs = {k: v for k, v in op.attrs.items() if v != decl.attrs.get(k)}
    text = f"{lhs} = {op.kind}"
    if op.operands:
        text += f"({args})"
    if attrs:
        text += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in attrs.items()) + "}"
    text += " : " + ", ".join(str(r.type) for r in op.results)
    return text


def print_module(module) -> str:
    args = ", ".join(f"{format_name(v.name)}: {v.type}" for v in module.inputs)
    dims = module.dim_vars()
    where = (" where " + ", ".join(str(v) for v in dims)) if dims else ""
    lines = [f"func @{module.name}({args}){where} {{"]
    lines += ["  " + format_op(op) for op in module.ops]
    lines.append("  return " + ", ".join(format_name(v.name) for v in module.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
