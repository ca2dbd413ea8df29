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


def _meta_type(node) -> TensorType | None:
    val = node.meta.get("val")
    if val is None or not hasattr(val, "shape"):
        return None
    return TensorType(tuple(int(d) for d in val.shape), from_numpy(val.dtype))


def scan_unsupported(graph) -> list[tuple[str, str | None, str | None]]:
    problems = []
    for node in graph.nodes:
        if node.op != "call_function":
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


def export(model, example_inputs):
    """torch.export the model (in eval mode) with a clear error when export fails."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return model
    if not isinstance(example_inputs, tuple):
        example_inputs = tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,)
    was_training = model.training
    model.eval()
    patched = export_friendly_fake_quant(model)
    try:
        return torch.export.export(model, example_inputs)
    except Exception as e:  # torch raises many types here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SliverError(
            f"torch.export could not capture the model: {first}\n"
            "sliver traces with torch.export; make the forward pass export-friendly "
            "(no data-dependent control flow) and try again."
        ) from e
    finally:
        model.train(was_training)
        for m in patched:
            del m.forward


def trace(model, example_inputs=(), *, name: str | None = None) -> Module:
    """Trace ``model`` (an nn.Module or an ExportedProgram) into a sliver Module.

    Raises :class:`UnsupportedOpError` naming every unsupported op and its source
    line before emitting anything.
    """
    import torch

    ep = export(model, example_inputs)
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
                env[node.name] = module.add_input(_meta_type(node), name=module.fresh_name(node.name))
            else:
                raise SliverError(f"unexpected graph input {node.name} (a mutated buffer?); sliver traces inference only")
        elif node.op == "call_function":
            target = _op_name(node.target)
            b.node_target = target
            args = [arg(a) for a in node.args]
            kwargs = {k: arg(v) for k, v in node.kwargs.items()}
            try:
                if target == "operator.getitem":
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
            expected = _meta_type(node)
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
