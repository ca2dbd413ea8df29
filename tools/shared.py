"""What the ``sliver`` commands share: reading a MODEL argument and progress messages.

``sliver`` (:mod:`sliver.tools.cli`), ``sliver explain`` and ``sliver outliers`` import
it; it imports none of them.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from sliver.common.errors import ModelError


class Parser(argparse.ArgumentParser):
    """argparse for the ``sliver`` commands: a bad flag or value is ``sliver: error: ...``
    after the usage line, exit status 2, like every other user error (its subcommand
    parsers are of this class too)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"sliver: error: {message}\n")


def say(msg: str, who: str = "sliver") -> None:
    """A progress message on stderr, tagged ``[who]`` (stdout stays the command's result)."""
    print(f"[{who}] {msg}", file=sys.stderr, flush=True)


def quiet_torch() -> None:
    """Keep torch's own error logs (a traceback logged by the fake-tensor mode when
    torch.export hits a shape error, or torch.export.load a broken file) off the terminal: the error sliver raises says it.
    torch sets its loggers' levels on import, so this imports it first."""
    import logging

    import torch  # noqa: F401

    for name in ("torch._subclasses.fake_tensor", "torch.export"):  # torch.export.load logs before raising
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _where(e: BaseException, path: str) -> str:
    """`` (file.py, line N)``: the last line of ``path`` in ``e``'s traceback, if any."""
    import traceback

    here = Path(path).resolve()
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == here]
    return f" ({Path(path).name}, line {lines[-1]})" if lines else ""


def _model_kind_ok(model) -> bool:
    import torch

    from sliver.ir.core import Module

    return isinstance(model, (torch.nn.Module, torch.export.ExportedProgram, Module))


def load_callable(spec: str, what: str = "MODEL"):
    """The function ``file.py:function`` names (the file is run as a module); every
    way the file can be wrong is a :class:`ModelError`."""
    path, _, func = spec.partition(":")
    if not path.endswith(".py") or not func:
        raise ModelError(f"{what} {spec!r}: give file.py:function" + (", file.pt2 or file.sir" if what == "MODEL" else ""))
    if not Path(path).is_file():
        raise ModelError(f"{path}: no such file")
    mod_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.path.insert(0, str(Path(path).resolve().parent))
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: any error it raises is theirs to fix
        where = "" if isinstance(e, SyntaxError) else _where(e, path)  # a SyntaxError names its line
        raise ModelError(f"running {path} failed{where}: {type(e).__name__}: {e}") from None
    finally:
        sys.path.pop(0)
    builder = getattr(module, func, None)
    if builder is None:
        raise ModelError(f"{path} has no function {func!r}")
    if not callable(builder):
        raise ModelError(f"{path}: {func} is a {type(builder).__name__}, not a function")
    return builder


def load_model(spec: str):
    """``(model_or_module, example_inputs)`` from a MODEL argument: ``file.py:function``
    (the function returns ``(nn.Module, example_inputs)``, or ``(nn.Module,
    example_inputs, dynamic_shapes)`` with torch.export's ``dynamic_shapes``: the model
    is then exported with those dimensions dynamic), ``file.pt2`` (its dynamic
    dimensions stay dynamic) or ``file.sir``.  Every way the file can be wrong is a
    :class:`ModelError`."""
    if spec.endswith(".sir"):
        import numpy as np

        from sliver.ir.io import load_module
        from sliver.ir.types import is_float, to_numpy

        from sliver.ir.dims import substitute

        module = load_module(spec)
        rng = np.random.default_rng(0)
        # example sizes for symbolic dimensions (the module keeps them symbolic)
        sizes = {v.name: min(v.hi, max(v.lo, 2)) for v in module.dim_vars()}
        inputs = []
        for v in module.inputs:
            t = v.type
            shape = substitute(t.shape, sizes)
            if is_float(t.dtype):
                inputs.append(rng.standard_normal(shape).astype(to_numpy(t.dtype)))
            else:
                inputs.append(np.zeros(shape, to_numpy(t.dtype)))
        return module, tuple(inputs)
    if spec.endswith(".pt2"):
        import torch

        quiet_torch()
        if not Path(spec).is_file():
            raise ModelError(f"{spec}: no such file")
        try:
            ep = torch.export.load(spec)
        except Exception as e:  # torch raises many types for a file it cannot read
            raise ModelError(f"{spec} is not a program saved with torch.export.save "
                             f"({type(e).__name__}: {e})") from None
        args, kwargs = ep.example_inputs or ((), {})
        if not args:
            raise ModelError(f"{spec} carries no example inputs; export it with example args")
        return ep, args
    path = spec.partition(":")[0]
    builder = load_callable(spec)
    try:
        result = builder()
    except Exception as e:
        raise ModelError(f"{spec} raised{_where(e, path)} {type(e).__name__}: {e}") from None
    quiet_torch()
    if not (isinstance(result, tuple) and len(result) in (2, 3)):
        raise ModelError(f"{spec} must return (model, example_inputs) or (model, example_inputs, dynamic_shapes), "
                         f"got {type(result).__name__}")
    if not _model_kind_ok(result[0]):
        raise ModelError(f"{spec} returned a {type(result[0]).__name__} as the model; sliver compiles a "
                         "torch.nn.Module (wrap a plain function in a Module whose forward calls it)")
    if len(result) == 3:  # dynamic dimensions: export here; the program carries them from now on
        from sliver.api import export_dynamic

        model, inputs, dynamic_shapes = result
        return export_dynamic(model, inputs, dynamic_shapes), inputs
    return result
