"""The public compiler API: ``trace``, ``optimize``, ``lower``.

    art = sliver.lower(model, (x,), target="arm64")
    art.save("model.sliver")
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from sliver.common.errors import SliverError
from sliver.common.numerics import as_numpy
from sliver.package import check_tolerances, jsonable, layer_of, package, param_operands, record_dict  # noqa: F401

#: what ``lower`` runs when no pipeline is given.  fold-fake-quant goes first: it turns QAT
#: layers into low-bit ops (absorbing their batch norms) before fold-batchnorm and
#: const-fold would bake the fake-quantized weights into float params.
DEFAULT_PIPELINE = "fold-fake-quant,fold-batchnorm,const-fold,cse,dce"


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    return (example_inputs,)


def _torch_inputs(example_inputs) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
                 for x in _as_tuple(example_inputs))


def trace(model, example_inputs=(), *, name: str | None = None):
    """Trace an ``nn.Module`` (or a ``torch.export.ExportedProgram``) into sliver IR."""
    from sliver.frontend import trace as _trace
    from sliver.ir.verifier import verify

    module = _trace(model, _torch_inputs(example_inputs), name=name)
    verify(module)
    return module


def optimize(module, passes=DEFAULT_PIPELINE, *, verify: bool = True, instruments: Sequence = ()):
    """Run a pass pipeline over ``module`` in place; returns the pass records."""
    from sliver.passes.manager import PassManager

    return PassManager(passes, verify=verify, instruments=instruments).run(module)


def _reference_outputs(model, module, inputs) -> list[np.ndarray]:
    import torch

    if isinstance(model, torch.nn.Module):
        from torch.utils._pytree import tree_flatten

        with torch.no_grad():
            out = model(*_torch_inputs(inputs))
        # the same flat order torch.export gives the outputs (dicts and ModelOutputs included)
        return [as_numpy(o) for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
    from sliver.ir.interp import run

    return run(module, [as_numpy(x) for x in inputs])


def _tuning_database(module, target, tune, rpc, progress, winograd=True):
    """``(database, lowered)``: the tuning database ``lower`` applies (None: default
    schedules only), after tuning first when ``tune`` is a budget; ``lowered`` is
    the ``(Relax module, LowerContext)`` the tuner worked on (None when it did not
    run), for the compiler to take instead of lowering ``module`` again."""
    if tune is False:
        return None, None
    from sliver.backends.tvm import tuning

    lowered = None
    if tune is not None:
        from sliver.backends.tvm.lower import LowerContext, to_relax

        budget = tuning.Budget.of(tune)
        if rpc is not None and not isinstance(rpc, tuning.RPC):
            rpc = tuning.RPC(*rpc)
        tuning.check_measurable(target, rpc)
        context = LowerContext(target=target)
        lowered = (to_relax(module, context), context)
        tuning.tune(lowered[0], target, budget, rpc=rpc, progress=tuning.Progress(say=progress), winograd=winograd)
    db = tuning.TuningDatabase(target, create=False)
    return (db if db.exists() else None), lowered


def lower(
    model,
    example_inputs=(),
    target="x86_64",
    *,
    passes: str | Sequence = DEFAULT_PIPELINE,
    verify: bool = True,
    instruments: Sequence = (),
    progress: Callable[[str], None] | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    tune=None,
    rpc=None,
    winograd: bool = True,
):
    """Trace, optimize and compile ``model`` for ``target``; returns an
    :class:`~sliver.runtime.artifact.Artifact` (``.save(path)``, ``.load()``).

    ``model`` may also be a sliver ``Module`` (already traced).  ``target`` is
    ``"x86_64"``, ``"arm64"``, ``"rpi5"`` or a TVM target dict.  The example
    inputs and the model's outputs on them are stored as golden data, so the
    device can check itself (``sliver run --verify``).  ``atol`` is relative to
    the largest output magnitude.

    ``tune``: ``None`` (the default) applies the records the tuning database
    already holds for ``target`` (``sliver tune``; ``$SLIVER_TUNING_DIR`` or
    ``~/.cache/sliver/tuning``); ``False`` ignores them (default schedules only);
    a budget (``200`` trials, ``"10m"``, a ``tuning.Budget``) tunes first, measuring
    on this machine or, with ``rpc=("HOST:PORT", "pi")``, on the device registered
    with that RPC tracker.  Kernels without a record keep their default schedule.

    ``winograd``: 3x3 stride-1 float convs with enough channels compile as Winograd
    convolutions (fewer multiplications, ~1e-6 relative rounding difference);
    ``False`` keeps every conv direct.
    """
    from sliver.backends.tvm.build import compile_module, tvm_version
    from sliver.backends.tvm.targets import check_toolchain, resolve
    from sliver.ir.core import Module
    from sliver.passes.manager import parse_pipeline, pipeline_string

    check_tolerances(rtol, atol)
    tgt = resolve(target)  # bad targets fail before any work
    check_toolchain(tgt)
    pipeline = parse_pipeline(passes)
    inputs = _as_tuple(example_inputs)
    if isinstance(model, Module):
        module = model.clone()
        if not inputs:
            raise SliverError("lower() of a traced Module needs example inputs for the golden data")
    else:
        module = trace(model, inputs)
    golden_inputs = [as_numpy(x) for x in inputs]
    golden_outputs = _reference_outputs(model, module, inputs)

    records = optimize(module, pipeline, verify=verify, instruments=instruments)
    if any(p.lossy for p in pipeline):  # quantized on purpose: the device checks the compile, not the passes
        from sliver.ir.interp import run

        golden_outputs = run(module, golden_inputs)
    tuning, lowered = _tuning_database(module, tgt, tune, rpc, progress, winograd)
    kernels: dict = {}
    primfuncs: dict = {}
    schedules: dict = {}
    library = compile_module(module, tgt, progress=progress, kernels=kernels, layers=primfuncs, tuning=tuning,
                             report=schedules, winograd=winograd, lowered=lowered)
    golden = {f"input_{i}": x for i, x in enumerate(golden_inputs)}
    golden.update({f"output_{i}": y for i, y in enumerate(golden_outputs)})
    art = package(module, tgt, pipeline_string(pipeline), library, golden, records=records, primfuncs=primfuncs,
                  schedules=schedules, kernels=kernels, tuning_key=tuning.key if tuning is not None else None,
                  tvm_version=tvm_version(), rtol=rtol, atol=atol)
    art.records = records
    return art
