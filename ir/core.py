"""The SSA graph IR: values, ops and modules.

A :class:`Module` is one straight-line function: typed inputs, an ordered list of
ops, and outputs.  Every op result is a :class:`Value` defined exactly once; weights
are ``param`` ops whose data lives in ``Module.params`` under the value's name.

Use-def chains (``Value.uses``) are maintained by the mutation API only — create ops
with :meth:`Module.add_op`, rewire with :meth:`Module.replace_all_uses_with` and
:meth:`Op.set_operand`, delete with :meth:`Module.erase` (which refuses while a
result is still used).  Nothing else should touch ``operands`` or ``uses``.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from sliver.common.errors import SliverError
from sliver.ir.attrs import normalize
from sliver.ir.names import PLAIN_NAME as _NAME_RE
from sliver.ir.names import format_name
from sliver.ir.types import TensorType


class Value:
    """An SSA value: a module input or one result of one op."""

    __slots__ = ("name", "type", "producer", "uses")

    def __init__(self, name: str, type: TensorType, producer: "Op | None" = None):
        self.name = name
        self.type = type
        self.producer = producer
        self.uses: list[tuple[Op, int]] = []  # (user op, operand index)

    @property
    def users(self) -> list["Op"]:
        seen: dict[int, Op] = {}
        for op, _ in self.uses:
            seen.setdefault(id(op), op)
        return list(seen.values())

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Op:
    """One operation: a kind (an op declared in :mod:`sliver.ir.ops`), operands,
    attributes and results."""

    __slots__ = ("kind", "operands", "attrs", "results", "module")

    def __init__(self, kind: str, operands: list[Value], attrs: dict, results: list[Value]):
        self.kind = kind
        self.operands: list[Value] = []
        self.attrs = {k: normalize(v) for k, v in attrs.items()}
        self.results = results
        self.module: Module | None = None
        for r in results:
            r.producer = self
        for v in operands:
            self._use(v)

    def _use(self, v: Value) -> None:
        v.uses.append((self, len(self.operands)))
        self.operands.append(v)

    @property
    def decl(self):
        from sliver.ir.ops import get_op

        return get_op(self.kind)

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise SliverError(f"{self.kind} has {len(self.results)} results, not one")
        return self.results[0]

    def set_operand(self, index: int, value: Value) -> None:
        old = self.operands[index]
        old.uses.remove((self, index))
        self.operands[index] = value
        value.uses.append((self, index))

    def __repr__(self) -> str:
        from sliver.ir.printer import format_op

        return format_op(self)


class Module:
    """A straight-line SSA function with named params."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.ops: list[Op] = []
        self.outputs: list[Value] = []
        self.params: dict[str, np.ndarray] = {}
        self._names: set[str] = set()
        self._counter = 0

    # -- names -----------------------------------------------------------------
    def fresh_name(self, hint: str | None = None) -> str:
        """A value name not used yet in this module, derived from ``hint``."""
        if hint:
            base = "_".join(_NAME_RE.findall(hint)) or "v"
            if base not in self._names:
                return base
            base = base.rstrip("0123456789_") or "v"
            i = 1
            while f"{base}_{i}" in self._names:
                i += 1
            return f"{base}_{i}"
        while str(self._counter) in self._names:
            self._counter += 1
        return str(self._counter)

    def name_taken(self, name: str) -> bool:
        return name in self._names

    def _claim(self, name: str) -> str:
        if not isinstance(name, str) or not name or not name.isprintable():
            raise SliverError(f"invalid value name {name!r}: a name is a non-empty string without control characters")
        if name in self._names:
            raise SliverError(f"value {format_name(name)} is defined twice")
        self._names.add(name)
        return name

    # -- building --------------------------------------------------------------
    def add_input(self, type: TensorType, name: str | None = None) -> Value:
        v = Value(self._claim(name or self.fresh_name("input")), type)
        self.inputs.append(v)
        return v

    def add_op(
        self,
        kind: str,
        operands: Iterable[Value] = (),
        attrs: dict | None = None,
        *,
        types: list[TensorType] | None = None,
        names: list[str] | None = None,
        before: Op | None = None,
    ) -> Op:
        """Create an op, infer its result types (unless given) and insert it at the
        end or before ``before``.  Returns the op; ``op.result`` is its value."""
        from sliver.ir.ops import get_op

        decl = get_op(kind)
        operands = list(operands)
        attrs = decl.complete_attrs(attrs or {})
        if types is None:
            types = decl.infer_types([v.type for v in operands], attrs)
        if names is None:
            names = [self.fresh_name() for _ in types]
        results = [Value(self._claim(n), t) for n, t in zip(names, types)]
        op = Op(kind, operands, attrs, results)
        op.module = self
        if before is None:
            self.ops.append(op)
        else:
            self.ops.insert(self.ops.index(before), op)
        return op

    def add_param(self, name: str, data: np.ndarray, *, before: Op | None = None, dtype: str | None = None) -> Value:
        """A weight: a ``param`` op whose data is stored under its value name.  ``dtype``
        types it as a sub-byte integer (``i4``, ``u2``…) held in ``data``'s int8/uint8."""
        from sliver.ir.types import to_numpy

        data = np.asarray(data)
        t = TensorType.of(data)
        if dtype is not None:
            if to_numpy(dtype) != data.dtype:
                raise SliverError(f"param {name}: {dtype} values are held in {to_numpy(dtype)}, got {data.dtype}")
            t = t.with_dtype(dtype)
        name = self.fresh_name(name) if name in self._names else name
        op = self.add_op("param", types=[t], names=[name], before=before)
        self.params[name] = data
        return op.result

    def set_outputs(self, values: Iterable[Value]) -> None:
        self.outputs = list(values)

    # -- mutation ----------------------------------------------------------------
    def replace_all_uses_with(self, old: Value, new: Value) -> None:
        if old is new:
            return
        for op, index in list(old.uses):
            op.set_operand(index, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def rename(self, value: Value, name: str) -> None:
        """Give a value (and its param data, for params) a new, unused name."""
        if name == value.name:
            return
        self._claim(name)
        self._names.discard(value.name)
        if value.producer is not None and value.producer.kind == "param":
            self.params[name] = self.params.pop(value.name)
        value.name = name

    def erase(self, op: Op) -> None:
        """Remove an op whose results are unused (refuses otherwise)."""
        for r in op.results:
            if r.uses or any(o is r for o in self.outputs):
                users = ", ".join(u.kind for u in r.users) or "the module's outputs"
                raise SliverError(f"cannot erase {op.kind} defining %{r.name}: still used by {users}")
        for i, v in enumerate(op.operands):
            v.uses.remove((op, i))
        op.operands = []
        self.ops.remove(op)
        for r in op.results:
            self._names.discard(r.name)
            if op.kind == "param":
                self.params.pop(r.name, None)
        op.module = None

    def adopt(self, other: "Module") -> None:
        """Take over ``other``'s body (inputs, ops, outputs, params): whole-module
        rewrites build a new module and then replace this one's contents."""
        self.inputs, self.ops, self.outputs, self.params = other.inputs, other.ops, other.outputs, other.params
        self._names, self._counter = other._names, other._counter
        for op in self.ops:
            op.module = self

    # -- queries -----------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        yield from self.inputs
        for op in self.ops:
            yield from op.results

    def dim_vars(self) -> list:
        """The dimension variables (:class:`~sliver.ir.dims.DimVar`) of every type and
        attribute of the module, sorted by name (empty for a fully static module)."""
        from sliver.ir.dims import vars_of

        found = set()
        for v in self.values():
            found |= vars_of(v.type.shape)
        for op in self.ops:
            for a in op.attrs.values():
                found |= vars_of(a)
        return sorted(found)

    def param_data(self, value: Value) -> np.ndarray | None:
        """The data of a param value, or None when the value is not a param."""
        if value.producer is not None and value.producer.kind == "param":
            return self.params[value.name]
        return None

    def clone(self) -> "Module":
        """A deep copy: the same names, types and attributes in new values and ops (param
        arrays are shared: passes replace params, never mutate them)."""
        out = Module(self.name)
        new: dict[int, Value] = {id(v): out.add_input(v.type, name=v.name) for v in self.inputs}

        def copied(v: Value) -> Value:
            if id(v) not in new:
                raise SliverError(f"cannot copy the module: %{v.name} is used before it is defined")
            return new[id(v)]

        for op in self.ops:
            results = [Value(out._claim(r.name), r.type) for r in op.results]
            copy = Op(op.kind, [copied(v) for v in op.operands], dict(op.attrs), results)
            copy.module = out
            out.ops.append(copy)
            new.update(zip(map(id, op.results), results))
            if op.kind == "param":
                out.params[op.result.name] = self.params[op.result.name]
        out.outputs = [copied(v) for v in self.outputs]
        return out

    def __str__(self) -> str:
        from sliver.ir.printer import print_module

        return print_module(self)
