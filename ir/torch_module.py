"""A sliver module back as a ``torch.nn.Module``: train it with torch, lower it again.

:func:`to_torch` turns a :class:`~sliver.ir.core.Module` (a pruned model, say) into an
``nn.Module`` whose ``forward`` runs the module's ops with their reference semantics
(the same functions the interpreter runs, :mod:`sliver.ir.ops`), in order:

- float params become ``nn.Parameter`` s (trainable) under their IR names, nested as the
  original model's were (``stages.0.0.conv1.0.weight``), so ``state_dict`` keys and the
  layer names of a second trace are the original model's; integer params (a pruned
  model's channel indices) become buffers;
- ``forward`` takes the module's inputs under their names (the traced ``forward``'s);
  one output is returned as a tensor, several as a tuple; reshapes that keep the batch
  dimension take any batch size (for training; the IR and its artifact keep the traced
  shapes);
- ``torch.export`` (and so ``sliver.lower``) traces it back into the same ops, so the
  module lowers to the artifact the IR lowers to, with whatever weights training gave it;
- ``torch.save(m, path)`` pickles it as IR text and weights (``torch.load(path,
  weights_only=False)`` needs sliver installed to rebuild it).

Only reference semantics are used: every op sliver declares has them, so any module
converts; gradients flow wherever torch's own functions have them.
"""

from __future__ import annotations

import keyword

import numpy as np
import torch


#: ops whose reference function traces back to another op (relu's ``clamp_min`` is a
#: ``clamp``): the torch function that traces back to the op itself, same values
SAME_OP = {"relu": torch.relu}


def to_torch(module, *, name: str | None = None):
    """An ``nn.Module`` computing ``module`` (not modified: the weights are copied).
    ``name``: the class name (default: the module's, e.g. ``ResNet``)."""
    from sliver.ir.core import Module

    if not isinstance(module, Module):
        raise TypeError(f"to_torch takes a sliver Module, got {type(module).__name__}")
    names = [v.name for v in module.inputs]
    if not all(n.isidentifier() and not keyword.iskeyword(n) and n != "self" for n in names) \
            or len(set(names)) != len(names):
        names = [f"input_{i}" for i in range(len(names))]
    args = ", ".join(names)
    namespace: dict = {}
    exec(f"def forward(self, {args}):\n    return self._run(({args}{',' if len(names) == 1 else ''}))\n", namespace)
    cls_name = name or (module.name if module.name.isidentifier() else "SliverModule")
    cls = type(cls_name, (IRModule,), {"forward": namespace["forward"], "__module__": __name__,
                                       "__qualname__": cls_name})
    out = cls.__new__(cls)
    IRModule.__init__(out, module)
    return out


def _keeps_batch(module, op) -> bool:
    """A reshape that keeps the leading (batch) dimension of the module's inputs: it
    runs on any batch size, so the module fine-tunes on batches (the IR, and the
    artifact, are for the traced batch)."""
    if not module.inputs or not module.inputs[0].type.shape:
        return False
    batch = module.inputs[0].type.shape[0]
    src, dst = op.operands[0].type.shape, op.attrs["shape"]
    return bool(src) and bool(dst) and src[0] == batch and dst[0] == batch


def _reshape_any_batch(x, *, shape):
    return x.reshape((x.shape[0], *shape[1:]))


class IRModule(torch.nn.Module):
    """The base of :func:`to_torch`'s modules (each gets a subclass whose ``forward``
    takes the IR's inputs by name)."""

    def __init__(self, module):
        from sliver.ir.printer import print_module

        super().__init__()
        self._ir_text = print_module(module)
        self._ir_name = module.name
        index = {}
        for i, v in enumerate(module.inputs):
            index[id(v)] = i
        n = len(module.inputs)
        self._params: dict[int, str] = {}  # value slot → the param's qualified name
        self._ir_params: dict[str, str] = {}  # IR param name → qualified name
        program = []
        for op in module.ops:
            slots = []
            for r in op.results:
                index[id(r)] = n
                slots.append(n)
                n += 1
            if op.kind == "param":
                self._params[slots[0]] = self._add_tensor(op.result.name, module.params[op.result.name])
                self._ir_params[op.result.name] = self._params[slots[0]]
                program.append(("param", None, {}, [], slots))
            elif op.kind == "reshape" and _keeps_batch(module, op):
                program.append((op.kind, _reshape_any_batch, dict(op.attrs), [index[id(op.operands[0])]], slots))
            else:
                program.append((op.kind, SAME_OP.get(op.kind, op.decl.ref), dict(op.attrs), [index[id(v)] for v in op.operands], slots))
        self._program = program
        self._outputs = [index[id(v)] for v in module.outputs]

    def _add_tensor(self, name: str, data) -> str:
        """Register ``data`` under ``name``, nesting submodules along its dots (a name
        that cannot nest, e.g. one whose prefix is itself a tensor, is flattened)."""
        t = torch.from_numpy(np.array(data, copy=True))
        value = torch.nn.Parameter(t) if t.is_floating_point() else t
        parts = name.split(".")
        owner = self
        try:
            for part in parts[:-1]:
                child = owner._modules.get(part)
                if child is None:
                    if hasattr(owner, part):
                        raise KeyError(part)
                    child = torch.nn.Module()
                    owner.add_module(part, child)
                owner = child
            leaf = parts[-1]
            if hasattr(owner, leaf):
                raise KeyError(leaf)
            if isinstance(value, torch.nn.Parameter):
                owner.register_parameter(leaf, value)
            else:
                owner.register_buffer(leaf, value)
            return name
        except (KeyError, ValueError, TypeError):
            flat = "_" + name.replace(".", "_")
            while hasattr(self, flat):
                flat += "_"
            if isinstance(value, torch.nn.Parameter):
                self.register_parameter(flat, value)
            else:
                self.register_buffer(flat, value)
            return flat

    def _tensor(self, qualified: str):
        owner = self
        *path, leaf = qualified.split(".")
        for part in path:
            owner = owner._modules[part]
        return getattr(owner, leaf)

    def _run(self, inputs: tuple):
        env: list = list(inputs) + [None] * sum(len(slots) for *_, slots in self._program)
        for kind, ref, attrs, operands, slots in self._program:
            if kind == "param":
                env[slots[0]] = self._tensor(self._params[slots[0]])
                continue
            res = ref(*[env[i] for i in operands], **attrs)
            for slot, t in zip(slots, res if isinstance(res, tuple) else (res,)):
                env[slot] = t
        outs = tuple(env[i] for i in self._outputs)
        return outs[0] if len(outs) == 1 else outs

    def extra_repr(self) -> str:
        return f"sliver module @{self._ir_name}: {len(self._program)} ops"

    def _weights(self) -> dict:
        return {ir: self._tensor(q).detach().cpu().numpy().copy() for ir, q in self._ir_params.items()}

    def to_ir(self):
        """The IR module with the current weights (a new :class:`~sliver.ir.core.Module`)."""
        from sliver.ir.parser import parse_module

        return parse_module(self._ir_text, self._weights())

    def __reduce__(self):
        # torch.save / copy.deepcopy: the IR text and the current weights, rebuilt by _rebuild
        return _rebuild, (self._ir_text, self._weights(), type(self).__name__, self.training)


def _rebuild(text: str, params: dict, name: str, training: bool):
    from sliver.ir.parser import parse_module

    m = to_torch(parse_module(text, params), name=name)
    m.train(training)
    return m
