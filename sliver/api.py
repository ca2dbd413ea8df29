"""The public compiler API: ``trace``, ``optimize``, ``lower``.

    art = sliver.lower(model, (x,), target="arm64")
    art.save("model.sliver")
"""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import Callable, Sequence

import numpy as np

from sliver.common.errors import DependencyError, InputError, SliverError, SliverWarning
from sliver.common.numerics import as_numpy
from sliver.package import check_tolerances, jsonable, layer_of, package, param_operands, record_dict  # noqa: F401

#: what ``lower`` runs when no pipeline is given.  fold-fake-quant goes first: it turns QAT
#: layers into low-bit ops (absorbing their batch norms) before fold-batchnorm and
#: const-fold would bake the fake-quantized weights into float params.
DEFAULT_PIPELINE = "fold-fake-quant,fold-batchnorm,const-fold,cse,dce"


#: the compiler's packages (``pip install 'sliver[compiler]'``): module → what needs it
COMPILER_PACKAGES = ("torch", "networkx", "rich")


def require_compiler(what: str = "the compiler") -> None:
    """Raise a :class:`DependencyError` naming ``pip install 'sliver[compiler]'`` when a
    compiler package is missing (a runtime-only install, e.g. on a Raspberry Pi)."""
    import importlib.util

    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):  # a broken install, or an import hook refusing it
            return True

    missing = [name for name in COMPILER_PACKAGES if absent(name)]
    if missing:
        raise DependencyError(
            f"{what} needs sliver's compiler, which is not installed here (missing: {', '.join(missing)}): "
            "pip install 'sliver[compiler]'. This installation runs artifacts only (sliver.load, sliver run, "
            "sliver inspect).")


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    return (example_inputs,)


def _torch_inputs(example_inputs) -> tuple:
    """Private copies of the example inputs as torch tensors: the model never sees (and
    so never changes) the caller's own tensors or arrays."""
    import torch

    from sliver.ir.types import from_numpy

    out = []
    for i, x in enumerate(_as_tuple(example_inputs)):
        if isinstance(x, np.generic):
            x = np.asarray(x)
        if not isinstance(x, (torch.Tensor, np.ndarray)):
            raise InputError(f"example input {i} is a {type(x).__name__}; pass a torch.Tensor or a numpy array "
                             f"(e.g. torch.tensor(...)) for each input of the model")
        try:
            from_numpy(x.dtype)
        except SliverError:
            raise InputError(f"example input {i} holds {x.dtype}, which sliver has no element type for; convert it "
                             "to float32 (or an integer type for indices) first") from None
        if (x.size if isinstance(x, np.ndarray) else x.numel()) == 0:
            raise InputError(f"example input {i} has shape {list(x.shape)}, which holds no elements; sliver compiles "
                             "for the shapes of the example inputs: give one of the real shape")
        if isinstance(x, np.ndarray):
            out.append(torch.from_numpy(np.array(x, copy=True)))
        else:
            if x.device.type != "cpu":
                raise InputError(f"example input {i} is on {x.device}; pass it on the CPU (x.cpu())")
            out.append(x.detach().clone())
    return tuple(out)


def _check_model(model) -> None:
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return
    if not isinstance(model, torch.nn.Module):
        what = "a plain function" if callable(model) else f"a {type(model).__name__}"
        raise SliverError(f"sliver compiles a torch.nn.Module (or a torch.export.ExportedProgram); got {what}. "
                          "Wrap a function in a Module: class M(torch.nn.Module): def forward(self, x): return f(x)")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.device.type != "cpu":
            fix = ("load real weights first (model.to_empty(device='cpu'), then model.load_state_dict(...))"
                   if t.device.type == "meta" else "move the model to the CPU first (model.cpu())")
            raise SliverError(f"{name} is on the {t.device.type} device; sliver reads the weights on the CPU: {fix}")


@contextlib.contextmanager
def _inference(model, what: str):
    """Run ``model`` for tracing and golden outputs as inference: in eval mode (with a
    :class:`SliverWarning` when it was training), with every module's own ``training``
    flag and every buffer restored afterwards, so the caller's model is left as it was.
    A forward pass that changes a parameter in place is refused."""
    import torch

    _check_model(model)
    if not isinstance(model, torch.nn.Module):
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    training = [f"{type(m).__name__} {name!r}" if name else type(m).__name__ for name, m in model.named_modules()
                if m.training and isinstance(m, _mode_dependent())]
    if training:
        shown = ", ".join(training[:5]) + (f" and {len(training) - 5} more" if len(training) > 5 else "")
        done = "traced and evaluated" if what == "lower" else "traced"
        warnings.warn(
            f"{what}(): the model is in training mode; sliver compiles inference, so it {done} the model in eval "
            f"mode (BatchNorm uses its running statistics, Dropout is off) for {shown}. The model itself is left in "
            "the mode it was in; call model.eval() first to silence this note.",
            SliverWarning, stacklevel=4,  # the caller of trace()/lower()
        )
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    versions = [(name, p, p._version) for name, p in model.named_parameters()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
        with torch.no_grad():
            for b, saved in buffers:
                if not torch.equal(b, saved):
                    b.copy_(saved)
    changed = [name for name, p, v in versions if p._version != v]
    if changed:
        raise SliverError(f"the model's forward changes its parameters in place ({', '.join(changed[:5])}); sliver "
                          "compiles a pure function of the inputs: compute new tensors instead of updating weights")


def _mode_dependent():
    import torch.nn as nn

    return (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.modules.instancenorm._InstanceNorm)


def trace(model, example_inputs=(), *, name: str | None = None, dynamic_shapes=None):
    """Trace an ``nn.Module`` (or a ``torch.export.ExportedProgram``) into sliver IR.

    ``dynamic_shapes`` is torch.export's argument: ``{"x": {0: Dim("batch", min=1,
    max=16)}}`` (or a tuple in argument order) keeps those dimensions symbolic; every
    other dimension is fixed to the example's size.  Each Dim needs a ``max``.

    sliver compiles inference: a model in training mode is traced in eval mode (a
    :class:`~sliver.common.errors.SliverWarning` says so), and the model (its modes,
    parameters and buffers) and the example inputs are left exactly as they were."""
    with _inference(model, "trace"):
        return _trace_verified(model, example_inputs, name, dynamic_shapes)


def export_dynamic(model, example_inputs, dynamic_shapes):
    """``model`` exported by torch.export with ``dynamic_shapes`` (in eval mode, the
    model left as it was): an ExportedProgram that :func:`trace` and :func:`lower` take
    with its dimensions dynamic, as a ``.pt2`` file's."""
    from sliver.frontend import export

    with _inference(model, "export"):
        return export(model, _torch_inputs(example_inputs), dynamic_shapes)


def unsupported_ops(model, example_inputs=()) -> list[tuple[str, str | None, str | None]]:
    """The operator uses of ``model`` sliver cannot trace, each as (aten op, ``file:line``
    or None, that source line or None): empty when every one is supported.  The model is
    exported only (nothing is translated or compiled) and left as it was."""
    from sliver.frontend import export, scan_unsupported

    with _inference(model, "unsupported_ops"):
        return scan_unsupported(export(model, _torch_inputs(example_inputs)).graph)


def _trace_verified(model, example_inputs, name=None, dynamic_shapes=None):
    from sliver.frontend import trace as _trace
    from sliver.ir.verifier import verify

    module = _trace(model, _torch_inputs(example_inputs), name=name, dynamic_shapes=dynamic_shapes)
    verify(module)
    return module


def optimize(module, passes=DEFAULT_PIPELINE, *, verify: bool = True, instruments: Sequence = ()):
    """Run a pass pipeline over ``module`` in place; returns the pass records."""
    from sliver.passes.manager import PassManager

    return PassManager(passes, verify=verify, instruments=instruments).run(module)


def _reference_outputs(model, module, inputs) -> tuple[list[np.ndarray], list[str] | None]:
    """The reference outputs, and their names from the model's output structure (None
    when the model is not an ``nn.Module`` run here)."""
    import torch

    if isinstance(model, torch.nn.Module):
        from torch.utils._pytree import tree_flatten_with_path

        try:
            with torch.no_grad():
                out = model(*_torch_inputs(inputs))
        except SliverError:
            raise
        except Exception as e:  # the user's forward may raise anything
            raise SliverError(f"the model's forward raised {type(e).__name__} on the example inputs: {e}") from e
        # the same flat order torch.export gives the outputs (dicts and ModelOutputs included)
        leaves = [(path, o) for path, o in tree_flatten_with_path(out)[0] if isinstance(o, torch.Tensor)]
        return [as_numpy(o) for _, o in leaves], [output_name(path) for path, _ in leaves]
    from sliver.ir.interp import run

    return run(module, [as_numpy(x) for x in inputs]), None


def output_name(path) -> str:
    """An output's default name from its place in the model's returned structure:
    ``output`` for a lone tensor, ``output_1`` for a tuple's second, ``logits`` for a
    dict's (or a ModelOutput's) ``"logits"``, ``output_0.a`` deeper down."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    if not parts:
        return "output"
    if parts[0].isdigit():
        parts[0] = f"output_{parts[0]}"
    return ".".join(parts)


OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")


def output_names_for(module, given, derived) -> list[str]:
    """The manifest's output names: ``given`` (``lower(output_names=...)``, checked), else
    ``derived`` from the model's output structure when it fits, else ``output`` /
    ``output_0``, …"""
    n = len(module.outputs)
    if given is None:
        names = derived
        if names is None or len(names) != n or len(set(names)) != n or not all(map(OUTPUT_NAME.fullmatch, names)):
            names = ["output"] if n == 1 else [f"output_{i}" for i in range(n)]
        return names
    if isinstance(given, str):
        given = [given]
    given = list(given)
    if len(given) != n:
        raise InputError(f"output_names={given!r}: the model has {n} output(s), give {n} name(s)")
    for name in given:
        if not isinstance(name, str) or not OUTPUT_NAME.fullmatch(name):
            raise InputError(f"output_names: {name!r} is not a usable name (letters, digits, _ . -, starting with "
                             "a letter or _, at most 128 characters)")
    dup = sorted({x for x in given if given.count(x) > 1})
    if dup:
        raise InputError(f"output_names: {', '.join(dup)} given more than once; each output needs its own name")
    return given


QUANTIZE_KINDS = ("int8",)


def with_calibration(pipeline: list, target, quantize: str | None, calibration) -> list:
    """``pipeline`` with the calibration data handed to its ``quantize-static`` pass
    (added after ``fold-batchnorm``, or first, when ``quantize="int8"`` and the pipeline
    has none); activation codes of the target's kind unless the pass names them."""
    import dataclasses

    from sliver.passes.quantize_static import QuantizeError, QuantizeStatic

    if quantize is not None and quantize not in QUANTIZE_KINDS:
        raise QuantizeError(f"quantize={quantize!r}: sliver quantizes to {', '.join(QUANTIZE_KINDS)}")
    has = any(isinstance(p, QuantizeStatic) for p in pipeline)
    if calibration is not None and quantize is None and not has:
        raise QuantizeError("calibration data was given without quantize=\"int8\" (or a quantize-static pass)")
    if quantize is None and not has:
        return pipeline
    if calibration is None and not any(isinstance(p, QuantizeStatic) and p.calibration is not None for p in pipeline):
        raise QuantizeError("int8 quantization needs calibration data: calibration=[samples] (or an .npz / "
                            "a folder of .npy files; `sliver lower --quantize int8 --calibration data.npz`)")
    out = list(pipeline)
    if not has:
        names = [p.name for p in out]
        at = names.index("fold-batchnorm") + 1 if "fold-batchnorm" in names else 0
        out.insert(at, QuantizeStatic(activations=target.int8_activations))
    for i, p in enumerate(out):
        if isinstance(p, QuantizeStatic) and p.calibration is None:
            out[i] = dataclasses.replace(p, calibration=calibration)
    return out


def quantize(model, calibration, example_inputs=(), *, target="x86_64", method: str = "minmax",
             activations: str | None = None, percentile: float = 99.99, max_error: float = 0.1,
             skip: Sequence[str] = (), keep_super: bool = False, super_activations=None,
             passes: str = "fold-batchnorm"):
    """Post-training int8 of ``model`` (a torch module or a traced sliver ``Module``,
    which is not changed) from ``calibration`` data; returns the quantized sliver
    ``Module`` (``lower(module, example_inputs, target)`` compiles it) and the
    per-layer report as ``(module, report)``; ``report["text"]`` is the table.

    ``calibration``: an iterable of samples (an array per model input, or a tuple of
    them), an ``.npz`` file or a folder of ``.npy`` files.  ``example_inputs`` (for
    tracing) default to the first sample.  ``method``: ``minmax``, ``percentile`` or
    ``mse`` activation ranges; ``activations``: ``uint8`` (asymmetric) or ``int8``
    (symmetric), by default the target's kind; weights are per-output-channel symmetric
    int8.  Layers named in ``skip``, layers whose own error exceeds ``max_error`` and,
    with ``keep_super``, layers fed by a super activation stay in float.  ``passes``
    run first (batch norms folded into the weights before they are quantized)."""
    from sliver.backends.tvm.targets import resolve
    from sliver.ir.core import Module
    from sliver.passes.manager import parse_pipeline
    from sliver.passes.quantize_static import QuantizeStatic, calibration_samples

    tgt = resolve(target)
    opts = dict(method=method, activations=activations or tgt.int8_activations, percentile=percentile,
                max_error=max_error, skip=";".join(skip), keep_super=keep_super)
    if isinstance(model, Module):
        module = model.clone()
    else:
        if not _as_tuple(example_inputs) or example_inputs is None:
            if isinstance(calibration, (str, bytes)) or not hasattr(calibration, "__iter__"):
                raise SliverError("quantize(): give example_inputs to trace the model with when the calibration "
                                  "data is a file")
            samples = list(calibration)
            if not samples:
                from sliver.passes.quantize_static import QuantizeError

                raise QuantizeError("the calibration set is empty: give at least one sample")
            calibration = samples
            example_inputs = samples[0]
        with _inference(model, "quantize"):
            module = _trace_verified(model, _as_tuple(example_inputs))
    samples = calibration_samples(calibration, module)  # checked before any pass runs
    pipeline = parse_pipeline(passes) + [QuantizeStatic(**opts, calibration=samples,
                                                        super_activations=super_activations)]
    records = optimize(module, pipeline)
    return module, records[-1].notes


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
    progress: Callable[[str], None] | bool | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    tune=None,
    rpc=None,
    winograd: bool = True,
    output_names: Sequence[str] | str | None = None,
    dynamic_shapes=None,
    quantize: str | None = None,
    calibration=None,
):
    """Trace, optimize and compile ``model`` for ``target``; returns an
    :class:`~sliver.runtime.artifact.Artifact` (``.save(path)``, ``.load()``).

    ``model`` may also be a sliver ``Module`` (already traced).  ``target`` is
    ``"x86_64"`` (this machine's exact CPU: the artifact may not run on another x86-64
    CPU), ``"x86-64-v2"``, ``"x86-64-v3"``, ``"x86-64-v4"`` (any x86-64 CPU of that
    level), ``"arm64"``, ``"rpi5"`` or a TVM target dict (see
    :mod:`sliver.backends.tvm.targets`; the manifest's ``target.runs_on`` says which CPUs).  The example
    inputs and the model's outputs on them are stored as golden data, so the
    device can check itself (``sliver run --verify``).  ``atol`` is relative to
    the largest output magnitude.

    ``tune``: ``None`` (the default) applies the records the tuning database
    already holds for ``target`` (``sliver tune``; ``$SLIVER_TUNING_DIR`` or
    ``~/.cache/sliver/tuning``); ``False`` ignores them (default schedules only);
    a budget (``200`` trials, ``"10m"``, a ``tuning.Budget``) tunes first, measuring
    on this machine or, with ``rpc=("HOST:PORT", "pi")``, on the device registered
    with that RPC tracker.  Kernels without a record keep their default schedule.

    ``dynamic_shapes``: torch.export's argument (``{"x": {0: Dim("batch", min=1,
    max=16)}}``, or a tuple in argument order): those dimensions stay symbolic, and
    the artifact runs any size in each Dim's range (one outside it is an
    :class:`~sliver.common.errors.InputError`).  Without it every dimension is fixed to
    the example inputs' sizes.  An ExportedProgram exported with dynamic Dims keeps them.

    ``winograd``: 3x3 stride-1 float convs with enough channels compile as Winograd
    convolutions (fewer multiplications, ~1e-6 relative rounding difference);
    ``False`` keeps every conv direct.

    ``quantize="int8"`` with ``calibration`` (samples or an ``.npz`` / folder of ``.npy``,
    see :func:`quantize`) adds post-training int8 (``quantize-static``, with the target's
    kind of activation codes) to the pipeline after ``fold-batchnorm``.

    ``output_names``: the artifact's output names (``CompiledModel.run_dict``,
    ``sliver run --output``); by default they follow the model's returned structure:
    ``output`` for one tensor, ``output_0``, ``output_1``, … for a tuple, the keys for a
    dict or a ModelOutput.  Input names are the ``forward``'s parameter names.

    ``progress``: ``True`` shows a progress display on stderr (the ``rich`` library)
    while compiling; a function is called with each progress message instead.

    ``lower`` never changes its arguments.  sliver compiles inference: a model in
    training mode is traced *and* its golden outputs computed in eval mode (BatchNorm
    with its running statistics, Dropout off), with a
    :class:`~sliver.common.errors.SliverWarning` saying so; every module's
    ``training`` flag, every buffer (e.g. BatchNorm's running statistics) and the
    example inputs are left bit-identical (the model runs on copies of the inputs,
    so a forward that updates its input in place changes neither the caller's tensor
    nor the golden data).  Bad models and inputs are :class:`SliverError` s.
    """
    require_compiler("sliver.lower")
    if isinstance(progress, bool):  # True: a progress display for this call; False: none
        from sliver.progress import Display

        with Display() if progress else contextlib.nullcontext() as shown:
            return lower(model, example_inputs, target, passes=passes, verify=verify, instruments=instruments,
                         progress=shown, rtol=rtol, atol=atol, tune=tune, rpc=rpc, winograd=winograd,
                         output_names=output_names, dynamic_shapes=dynamic_shapes, quantize=quantize,
                         calibration=calibration)
    say = progress or (lambda msg: None)
    from sliver.backends.tvm.build import compile_module, tvm_version
    from sliver.backends.tvm.targets import check_toolchain, resolve
    from sliver.ir.core import Module
    from sliver.passes.manager import parse_pipeline, pipeline_string

    check_tolerances(rtol, atol)
    tgt = resolve(target)  # bad targets fail before any work
    check_toolchain(tgt)
    pipeline = with_calibration(parse_pipeline(passes), tgt, quantize, calibration)
    inputs = _as_tuple(example_inputs)
    say(f"tracing @{model.name}" if isinstance(model, Module) else f"tracing {type(model).__name__}")
    if isinstance(model, Module):
        if dynamic_shapes is not None:
            raise SliverError("dynamic_shapes applies when sliver traces the model; a traced Module already has its "
                              "dimensions (trace it with dynamic_shapes instead)")
        module = model.clone()
        if not inputs:
            raise SliverError("lower() of a traced Module needs example inputs for the golden data")
        golden_inputs = [as_numpy(x) for x in _torch_inputs(inputs)]
        golden_outputs, derived = _reference_outputs(model, module, inputs)
    else:
        with _inference(model, "lower"):  # eval mode; the caller's model and tensors are left as they were
            module = _trace_verified(model, inputs, dynamic_shapes=dynamic_shapes)
            golden_inputs = [as_numpy(x) for x in _torch_inputs(inputs)]
            golden_outputs, derived = _reference_outputs(model, module, inputs)

    names = output_names_for(module, output_names, derived)  # bad names fail before compiling
    say(f"running passes {pipeline_string(pipeline) or '(none)'} over {len(module.ops)} ops")
    records = optimize(module, pipeline, verify=verify, instruments=instruments)
    if any(p.lossy for p in pipeline):  # quantized on purpose: the device checks the compile, not the passes
        from sliver.ir.interp import run

        golden_outputs = run(module, golden_inputs)
    tuning, lowered = _tuning_database(module, tgt, tune, rpc, progress, winograd)
    compiled = compile_module(module, tgt, progress=progress, tuning=tuning, winograd=winograd, lowered=lowered)
    golden = {f"input_{i}": x for i, x in enumerate(golden_inputs)}
    golden.update({f"output_{i}": y for i, y in enumerate(golden_outputs)})
    art = package(module, tgt, pipeline_string(pipeline), compiled.library, golden, records=records,
                  primfuncs=compiled.primfuncs, schedules=compiled.schedules, kernels=compiled.kernels,
                  tuning_key=tuning.key if tuning is not None else None,
                  tvm_version=tvm_version(), rtol=rtol, atol=atol, output_names=names)
    art.records = records
    return art
