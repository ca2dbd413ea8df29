"""What a pass is: the :class:`Pass` base class and the registry passes enter with
:func:`register`.  This module imports no pass; the manager
(:mod:`sliver.passes.manager`) imports every pass, so imports run one way."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

_PASSES: dict[str, type["Pass"]] = {}


@dataclass(frozen=True)
class Pass:
    name: ClassVar[str] = ""
    #: True for passes that change what the module computes on purpose (quantization):
    #: an artifact's golden outputs then come from the optimized module, not the model
    lossy: ClassVar[bool] = False

    def run(self, module) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def spec(self) -> str:
        """This pass as a pipeline element (name plus non-default options).  Fields
        declared ``repr=False`` (data handed over by the API, e.g. inputs) are not
        options and are left out."""
        opts = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            v = getattr(self, f.name)
            if f.default is dataclasses.MISSING or v != f.default:
                opts.append(f"{f.name}={v}")
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def register(cls):
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _PASSES:
        raise ValueError(f"pass {cls.name} registered twice")
    _PASSES[cls.name] = cls
    return cls


def registered() -> dict[str, type[Pass]]:
    """The passes registered so far by name (the manager imports every built-in one)."""
    return dict(_PASSES)


def max_relative_error(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    """max |got - want| / max |want| over all outputs (:func:`sliver.common.numerics.output_error`):
    the drift the manager's instrument and the outlier pass report."""
    from sliver.common.numerics import output_error

    return max((output_error(g, w)[1] for g, w in zip(got, want)), default=0.0)
