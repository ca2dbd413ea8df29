"""sliver: shrink a trained PyTorch model and ship it to a Raspberry Pi.

    art = sliver.lower(model, (x,), target="arm64")
    art.save("model.sliver")
    m = sliver.load("model.sliver")      # TVM runtime only: no torch, no compiler
    y = m(x_numpy)

Imports are lazy so that the deploy side (``sliver.load``) never pulls in torch or
TVM's compiler.
"""

__version__ = "0.1.0"

from sliver.common.errors import SliverError  # noqa: E402  (cheap, always available)

_LAZY = {
    "lower": ("sliver.api", "lower"),
    "lower_llm": ("sliver.llm", "lower_llm"),
    "trace": ("sliver.api", "trace"),
    "compile": ("sliver.api", "compile"),
    "quantize": ("sliver.api", "quantize"),
    "load": ("sliver.runtime.artifact", "load"),
    "to_torch": ("sliver.ir.torch_module", "to_torch"),
}


_SUBMODULES = {"qat", "quant"}  # `sliver.qat`, `sliver.quant` without importing torch at `import sliver`


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"sliver.{name}")
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'sliver' has no attribute {name!r}")


__all__ = ["SliverError", "lower", "lower_llm", "trace", "compile", "quantize", "load", "to_torch", "__version__"]
