"""torch.export → sliver IR: the driver.

The model is exported with torch.export, the whole graph is scanned first so that an
unsupported op is reported with every other unsupported op at once, each with the
user's source line, and then walked node by node through the rule table
(:mod:`sliver.frontend.rules`).
"""

from __future__ import annotations

import operator
import os

from sliver.common.errors import DataDependentShapeError, SliverError, UnsupportedOpError
from sliver.frontend.builder import Builder, fold_constant
from sliver.frontend.fake_quant import export_friendly_fake_quant
from sliver.frontend.rules import FACTORIES, IDENTITY, IGNORED, RULES
from sliver.ir.core import Module, Value
from sliver.ir.dims import MAX_DIM, DimVar, Sym, SymbolicDimError, bounds
from sliver.ir.ops import TypeRuleError
from sliver.ir.types import TensorType, from_numpy
from sliver.passes.dce import dce


def _op_name(target) -> str:
    if target is operator.getitem:
        return "operator.getitem"
    return str(target)


def _source_line(node) -> tuple[str | None, str | None]:
    """The user's file:line (and source text) that produced ``node``: the innermost
    stack frame outside torch itself."""
    trace = node.meta.get("stack_trace") or ""
    lines = trace.strip().splitlines()
    torch_dir = os.sep + "torch" + os.sep
    best = None
    for i, line in enumerate(lines):
        line = line.strip()
        if line.startswith('File "') and torch_dir not in line:
            path = line.split('"')[1]
            lineno = line.split(", line ")[1].split(",")[0] if ", line " in line else "?"
            src = lines[i + 1].strip() if i + 1 < len(lines) and not lines[i + 1].strip().startswith("File") else None
            best = (f"{path}:{lineno}", src)
    return best or (None, None)


class SymbolicDims:
    """torch.export's symbolic sizes (sympy expressions over ``s0``, ``s1``...) as
    sliver dimensions: each symbol that is a dimension of a user input becomes a
    :class:`~sliver.ir.dims.DimVar` named after its ``torch.export.Dim`` (or, when the
    name is lost, as in a loaded ``.pt2``, after the first input and axis that has it:
    ``x_0``) with the range torch.export recorded."""

    def __init__(self, ep, user_inputs: list):
        import torch

        self.vars: dict = {}
        names: set[str] = set()
        ranges = getattr(ep, "range_constraints", {}) or {}
        for node in ep.graph.nodes:
            if node.op != "placeholder" or node.name not in user_inputs:
                continue
            val = node.meta.get("val")
            for axis, d in enumerate(getattr(val, "shape", ())):
                if not isinstance(d, torch.SymInt):
                    continue
                expr = d.node.expr
                if not expr.is_Symbol or expr in self.vars:
                    continue
                name = _dim_name(d, f"{node.name}_{axis}")
                while name in names:
                    name += "_"
                names.add(name)
                lo, hi = _range(ranges.get(expr), name)
                self.vars[expr] = DimVar(name, lo, hi)

    def __bool__(self):
        return bool(self.vars)

    def dim(self, d):
        """An int or a torch SymInt (or a sympy expression) as a sliver dimension."""
        import torch

        if isinstance(d, torch.SymInt):
            d = d.node.expr
        if isinstance(d, int):
            return d
        return self._convert(d)

    def _convert(self, expr):
        import sympy
        from torch.utils._sympy import functions as F

        if expr.is_Integer:
            return int(expr)
        if expr.is_Symbol:
            if expr not in self.vars:
                raise SymbolicDimError(f"the size {expr} is not a dimension of an input (a data-dependent size?); "
                                       "sliver's symbolic dimensions come from the inputs' torch.export.Dims")
            return Sym.var(self.vars[expr])
        args = [self._convert(a) for a in expr.args] if not isinstance(expr, sympy.Pow) else None
        if isinstance(expr, sympy.Add):
            return sum(args[1:], args[0])
        if isinstance(expr, sympy.Mul):
            out = args[0]
            for a in args[1:]:
                out = out * a
            return out
        if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and int(expr.exp) > 0:
            base, out = self._convert(expr.base), 1
            for _ in range(int(expr.exp)):
                out = out * base
            return out
        if isinstance(expr, F.FloorDiv):
            return args[0] // args[1]
        if isinstance(expr, (F.Mod, F.PythonMod)):
            return args[0] % args[1]
        raise SymbolicDimError(f"torch.export gave the size {expr}, which sliver's symbolic dimensions cannot "
                               "represent (they are +, -, * and // of integers and input dimensions)")

    def shape(self, shape) -> tuple:
        return tuple(self.dim(d) for d in shape)


def _dim_name(d, fallback: str) -> str:
    """The torch.export.Dim name of a SymInt of a live export, else ``fallback``."""
    try:
        env = d.node.shape_env
        for source in env.var_to_sources.get(d.node.expr, ()):
            name = env.source_name_to_debug_name.get(source.name)
            if name:
                return _identifier(name)
    except Exception:  # private torch state: only a nicer name depends on it
        pass
    return _identifier(fallback)


def _identifier(name: str) -> str:
    from sliver.ir.dims import RESERVED

    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "dim"
    if out[0].isdigit() or out in RESERVED:
        out = "d_" + out
    return out


def _int_or_none(bound):
    try:
        return int(bound)
    except Exception:  # sympy's infinities raise assorted errors here
        return None


def _range(vr, name: str) -> tuple[int, int]:
    if vr is None:
        raise SliverError(f"torch.export recorded no range for the dynamic dimension {name}")
    lo, hi = vr.lower, vr.upper
    lo, hi = _int_or_none(lo), _int_or_none(hi)  # None: torch's ±int_oo, no bound
    lo = max(0, lo or 0)
    if hi is None or hi > MAX_DIM:
        raise SliverError(
            f"the dynamic dimension {name} has no maximum: sliver compiles for a range of sizes; give its "
            f"torch.export.Dim a max (Dim({name!r}, min={lo}, max=...)) and export again")
    return lo, hi


def _meta_type(node, dims: SymbolicDims | None = None) -> TensorType | None:
    val = node.meta.get("val")
    if val is None or not hasattr(val, "shape"):
        return None
    shape = dims.shape(val.shape) if dims else tuple(int(d) for d in val.shape)
    return TensorType(shape, from_numpy(val.dtype))


def _is_symbolic_scalar(node) -> bool:
    """A node computing a size (``sym_size``, ``s0 * s1``, a SymBool check), not a tensor."""
    import torch

    return isinstance(node.meta.get("val"), (torch.SymInt, torch.SymBool, torch.SymFloat))


def _has_sym(value) -> bool:
    if isinstance(value, Sym):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_sym(v) for v in value)
    if isinstance(value, dict):
        return any(_has_sym(v) for v in value.values())
    return False


def _symbolic_like(target: str, args) -> bool:
    return target.split(".")[1].endswith("_like") and isinstance(args[0], Value) and not args[0].type.static


def _symbolic_factory(b: Builder, target: str, args, kwargs) -> Value:
    """A tensor factory whose size is symbolic: ``arange`` is the constant arange of its
    largest length, sliced to the symbolic one; ``zeros``/``ones``/``full``/``empty``
    and their ``_like`` forms are a ``constant`` op of the symbolic shape."""
    import torch

    from sliver.ir.types import from_numpy as dtype_of

    op = target.split(".")[1]
    dtype = kwargs.get("dtype")
    if op == "arange":
        start, end, step = ((0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) > 2 else 1))
        step = kwargs.get("step", step)
        if _has_sym((start, step)) or not isinstance(step, int) or step <= 0:
            raise TypeRuleError("arange with a symbolic start or step is not supported (only a symbolic end)")
        length = (end - start + step - 1) // step
        longest = bounds(length)[1]
        data = torch.arange(start, start + longest * step, step, dtype=dtype)
        full = b.m.add_param(b.m.fresh_name(b.hint), data.numpy())
        return b.emit("slice", [full], {"axis": 0, "start": 0, "end": length, "step": 1})
    if op in ("zeros", "ones", "full", "empty"):
        shape = tuple(args[0])
        value = {"zeros": 0, "ones": 1, "empty": 0}.get(op, args[1] if len(args) > 1 else kwargs.get("fill_value"))
        dt = dtype_of(dtype) if dtype is not None else ("f32" if op != "full" or isinstance(value, float) else "i64")
    elif op in ("zeros_like", "ones_like", "full_like", "empty_like"):
        like = args[0]
        shape = like.type.shape
        value = {"zeros_like": 0, "ones_like": 1, "empty_like": 0}.get(
            op, args[1] if len(args) > 1 else kwargs.get("fill_value"))
        dt = dtype_of(dtype) if dtype is not None else like.type.dtype
    else:
        raise TypeRuleError(f"{target} of a symbolic size is not supported")
    if isinstance(value, bool) or dt == "bool":
        value = int(bool(value))
    value = float(value) if dt.startswith("f") else int(value)
    return b.m.add_op("constant", [], {"value": value, "dtype": dt, "shape": shape},
                      names=[b.m.fresh_name(b.hint)]).result


def scan_unsupported(graph) -> list[tuple[str, str | None, str | None]]:
    problems = []
    for node in graph.nodes:
        if node.op != "call_function" or _is_symbolic_scalar(node):
            continue
        name = _op_name(node.target)
        if name in RULES or name in IDENTITY or name in IGNORED or name in FACTORIES or name == "operator.getitem":
            continue
        problems.append((name, *_source_line(node)))
    return problems


def scan_data_dependent(graph) -> list[tuple[str, str | None, str | None]]:
    """The nodes that create a size torch.export could not know before running (an
    unbacked symbol: ``nonzero``, boolean-mask indexing, ``.item()``), with source lines."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    def unbacked(node) -> set:
        try:
            return set(free_unbacked_symbols(node.meta.get("val")))
        except Exception:  # a value free_unbacked_symbols cannot read holds no symbols we made
            return set()

    problems, seen = [], set()
    for node in graph.nodes:
        new = unbacked(node) - seen if node.op == "call_function" else set()
        if new:
            problems.append((_op_name(node.target), *_source_line(node)))
        seen |= unbacked(node)
    return problems


def writes_in_place(graph) -> bool:
    """Whether the graph writes into a tensor in place with an op the rules do not take
    as it is (``copy_``, ``fill_``, ``index_put_``): torch.export keeps those writes."""
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None and schema.is_mutable:
            name = _op_name(node.target)
            if name not in RULES and name not in IDENTITY:
                return True
    return False


def export(model, example_inputs, dynamic_shapes=None):
    """torch.export the model (in eval mode) with a clear error when export fails.
    ``dynamic_shapes`` is torch.export's argument (``torch.export.Dim`` per dynamic axis)."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        if dynamic_shapes is not None:
            raise SliverError("dynamic_shapes applies when sliver exports the model; an ExportedProgram (a .pt2) "
                              "already carries its dynamic dimensions: export it with dynamic_shapes instead")
        return model
    if not isinstance(example_inputs, tuple):
        example_inputs = tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,)
    was_training = model.training
    model.eval()
    patched = export_friendly_fake_quant(model)
    try:
        if dynamic_shapes is None:
            return torch.export.export(model, example_inputs)
        return torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes)
    except Exception as e:  # torch raises many types here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if dynamic_shapes is not None and "dynamic" in str(e).lower() or "Constraints violated" in str(e):
            raise SliverError(
                f"torch.export could not keep the dimensions dynamic: {first}\n"
                "check dynamic_shapes against the model: a dimension the model fixes cannot be dynamic "
                "(torch.export's message names it), and torch.export fixes a dimension whose example size is "
                "0 or 1: give examples of size 2 or more in every dynamic dimension") from e
        raise SliverError(
            f"torch.export could not capture the model: {first}\n"
            "sliver traces with torch.export; make the forward pass export-friendly "
            "(no data-dependent control flow) and try again."
        ) from e
    finally:
        model.train(was_training)
        for m in patched:
            del m.forward


def trace(model, example_inputs=(), *, name: str | None = None, dynamic_shapes=None) -> Module:
    """Trace ``model`` (an nn.Module or an ExportedProgram) into a sliver Module.

    ``dynamic_shapes`` (torch.export's argument) makes dimensions symbolic; an
    ExportedProgram exported with dynamic dimensions keeps them: they stay symbolic
    in the module (never fixed to the example's size).  Raises
    :class:`UnsupportedOpError` naming every unsupported op and its source line
    before emitting anything.
    """
    import torch

    ep = export(model, example_inputs, dynamic_shapes)
    if writes_in_place(ep.graph):  # e.g. idx = zeros(...); idx[1:, 1:] = ...: make the writes functional
        unsupported = scan_unsupported(ep.graph)
        ep = ep.run_decompositions({})
        if ep.graph_signature.buffers_to_mutate:  # a write that outlives the call: state sliver cannot keep
            raise UnsupportedOpError(unsupported)
    dependent = scan_data_dependent(ep.graph)
    if dependent:
        raise DataDependentShapeError(dependent)
    problems = scan_unsupported(ep.graph)
    if problems:
        raise UnsupportedOpError(problems)

    sig = ep.graph_signature
    state = dict(ep.state_dict)
    state.update(getattr(ep, "constants", {}) or {})
    param_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    user_inputs = [s.arg.name for s in sig.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]

    dims = SymbolicDims(ep, user_inputs)
    mname = name or (type(model).__name__ if isinstance(model, torch.nn.Module) else "main")
    module = Module("".join(c if c.isalnum() or c in "_." else "_" for c in mname) or "main")
    b = Builder(module)
    env: dict[str, object] = {}

    def arg(a):
        if isinstance(a, torch.fx.Node):
            return env[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(arg(x) for x in a)
        if isinstance(a, torch.dtype):
            return a
        return a

    for node in ep.graph.nodes:
        b.hint = node.name
        if node.op == "placeholder":
            if node.name in param_of:
                data = state[param_of[node.name]].detach().cpu().contiguous().numpy()
                env[node.name] = module.add_param(param_of[node.name], data)
            elif node.name in user_inputs:
                env[node.name] = module.add_input(_meta_type(node, dims), name=module.fresh_name(node.name))
            else:
                raise SliverError(f"unexpected graph input {node.name} (a mutated buffer?); sliver traces inference only")
        elif node.op == "call_function" and _is_symbolic_scalar(node):
            # size arithmetic (sym_size, s0 * s1, asserts on sizes): its value is the node's symbolic size
            val = node.meta["val"]
            env[node.name] = dims.dim(val) if isinstance(val, torch.SymInt) else None
        elif node.op == "call_function":
            target = _op_name(node.target)
            b.node_target = target
            args = [arg(a) for a in node.args]
            kwargs = {k: arg(v) for k, v in node.kwargs.items()}
            try:
                if target in FACTORIES and (_has_sym((args, kwargs)) or _symbolic_like(target, args)):
                    result = _symbolic_factory(b, target, args, kwargs)
                elif target == "operator.getitem":
                    result = args[0][args[1]]
                elif target in IGNORED:
                    continue
                elif target in IDENTITY:
                    result = args[0]
                elif target in FACTORIES:
                    # evaluated now; `*_like` factories only read their argument's shape
                    like = target.split(".")[1].endswith("_like")
                    result = fold_constant(b, target, node.target, *args, shape_only=like, **kwargs)
                else:
                    result = RULES[target](b, *args, **kwargs)
            except (TypeRuleError, SliverError, TypeError, ValueError) as e:
                where, src = _source_line(node)
                at = f" at {where}" if where else ""
                code = f"\n    {src}" if src else ""
                raise SliverError(f"cannot translate {target}{at}: {e}{code}") from e
            try:
                expected = _meta_type(node, dims)
            except SymbolicDimError:
                expected = None
            if isinstance(result, Value) and expected is not None and result.type.shape != expected.shape:
                raise SliverError(
                    f"internal tracer error on {target}: sliver computed {result.type}, torch says {expected}"
                )
            env[node.name] = result
        elif node.op == "output":
            outs = node.args[0]
            values = [env[o.name] if isinstance(o, torch.fx.Node) else o for o in outs]
            if all(v is None for v in values):
                raise SliverError("the model returns no tensor (None, or empty containers: a forward without "
                                  "`return`?); return its output tensors")
            for i, v in enumerate(values):
                if not isinstance(v, Value):
                    raise SliverError(
                        f"the model returns a non-tensor output ({type(v).__name__} {str(v)[:40]} as output {i}); "
                        "sliver compiles tensor outputs only: return it as a tensor (torch.tensor(...)) or drop it"
                    )
            module.set_outputs(values)
    dce(module)
    return module
