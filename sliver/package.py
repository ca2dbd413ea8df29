"""Packaging: the compiler's results → an :class:`~sliver.runtime.artifact.Artifact`
with its typed :class:`~sliver.runtime.manifest.Manifest`.

``lower`` (sliver/api.py) traces, optimizes and compiles; this module only records
what came out (versions, target, the tensors' names, shapes and dtypes, the library's
hash, the pass records, which compiled function computes which ops) in the schema
the runtime checks on read.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import sys

import numpy as np

import sliver
from sliver.common.errors import SliverError
from sliver.runtime.artifact import GOLDEN, LIBRARY, Artifact
from sliver.runtime.manifest import (
    FORMAT, FORMAT_VERSION, MAX_ATOL, MAX_RTOL, Golden, Library, Manifest, OpInfo, Params, PassRecord, Target,
    TensorSpec, Tuning, from_json, DimRange,
)


def layer_of(op) -> str | None:
    """The layer an op belongs to: its first param operand's name without the last
    component (``layer1.0.conv1.weight`` → ``layer1.0.conv1``, as the pruning report
    names layers); None for ops without params."""
    params = param_operands(op)
    name = next((n for n in params if n.endswith(".weight")), params[0] if params else None)
    if name is None:
        return None
    return name.rsplit(".", 1)[0] if "." in name else name


def param_operands(op) -> list[str]:
    return [v.name for v in op.operands if v.producer is not None and v.producer.kind == "param"]


def jsonable(x):
    """``x`` with numpy values, tuples, sets and dataclasses turned into JSON types
    (anything else becomes its ``str``)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)  # JSON has no NaN or Infinity
    for t in (bool, int, float, str):  # subclasses too (TVM's String is a str), as the plain type
        if isinstance(x, t):
            return t(x)
    return None if x is None else str(x)


def record_dict(record) -> dict:
    """A :class:`~sliver.passes.manager.PassRecord` as a JSON-safe dict (notes included)."""
    return jsonable(record)


def _pass_summary(record) -> PassRecord:
    d = record_dict(record)
    if isinstance(d.get("drift"), str):  # a non-finite drift (the pass blew the outputs up): kept as a note
        d["notes"] = {**d.get("notes", {}), "drift": d["drift"]}
        d["drift"] = None
    return from_json(PassRecord, d, "passes[]")


def _shape(shape) -> list:
    """A shape for the manifest: ints, and symbolic dimensions as their printed expression."""
    return [d if isinstance(d, int) else str(d) for d in shape]


def _spec(v, name: str | None = None) -> TensorSpec:
    return TensorSpec(v.name if name is None else name, _shape(v.type.shape), v.type.dtype)


def check_tolerances(rtol: float, atol: float) -> None:
    """``lower``'s golden tolerances must be ones the runtime accepts (a manifest's
    tolerances are capped so that an edited file cannot make ``--verify`` pass anything)."""
    for name, v, limit in (("rtol", rtol, MAX_RTOL), ("atol", atol, MAX_ATOL)):
        if not (isinstance(v, (int, float)) and 0.0 <= v <= limit):
            raise SliverError(f"{name}={v!r}: the golden tolerances must be numbers in [0, {limit}]")


def package(module, target, pipeline: str, library: bytes, golden: dict[str, np.ndarray], *, records=(),
            primfuncs: dict | None = None, schedules: dict | None = None, kernels: dict | None = None,
            tuning_key: str | None = None, tvm_version: str, rtol: float, atol: float,
            output_names: list[str] | None = None) -> Artifact:
    """The artifact of a compiled ``module``: ``library`` (the shared object's bytes)
    for ``target`` (a resolved :class:`~sliver.backends.tvm.targets.Target`),
    ``golden`` (``input_i`` / ``output_i`` arrays), and what the compiler reported:
    ``primfuncs`` (compiled function → ops), ``schedules`` (compiled function →
    ``"tuned"`` or not), ``kernels`` (low-bit layer → kernel).  ``output_names``: the
    outputs' names in the manifest (default: the module's output values' names)."""
    check_tolerances(rtol, atol)
    schedules = schedules or {}
    manifest = Manifest(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        model=module.name,
        sliver_version=sliver.__version__,
        tvm_version=tvm_version,
        python=".".join(map(str, sys.version_info[:3])),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        target=Target(**{**target.facts(), "tvm": jsonable(target.spec)}),  # which CPUs the library runs on
        pipeline=pipeline,
        inputs=[_spec(v) for v in module.inputs],
        outputs=[_spec(v, name) for v, name in zip(module.outputs, output_names or [v.name for v in module.outputs])],
        library=Library(LIBRARY, hashlib.sha256(library).hexdigest(), len(library)),
        golden=Golden(GOLDEN, float(rtol), float(atol)),
        params=Params(len(module.params), int(sum(a.nbytes for a in module.params.values()))),
        # for `sliver explain` and per-layer profiles: what each pass did, the ops of
        # the optimized module and which compiled function computes which ops
        passes=[_pass_summary(r) for r in records],
        ops=[OpInfo(op.results[0].name, op.kind, layer_of(op), param_operands(op), _shape(op.results[0].type.shape))
             for op in module.ops if op.kind != "param"],
        primfuncs={str(k): [str(o) for o in v] for k, v in (primfuncs or {}).items()},
        # which compiled functions got their schedule from the tuning database (sliver tune)
        tuning=Tuning(tuning_key, sorted(k for k, v in schedules.items() if v == "tuned"), len(schedules)),
        # which compiled functions are Winograd convolutions (tuned or not)
        winograd=sorted(k for k in schedules if "winograd" in k),
        kernels={str(k): str(v) for k, v in (kernels or {}).items()},
        # the dynamic dimensions and their ranges (the runtime accepts any size within them)
        dims=[DimRange(v.name, v.lo, v.hi) for v in module.dim_vars()],
    )
    # what the runtime will check on read, checked now: a compiler bug shows here, not on the device
    manifest = Manifest.from_json(manifest.to_json())
    return Artifact(library, manifest, golden, module=module)
