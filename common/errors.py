"""The errors sliver raises on bad input.

Every error a user can cause is a :class:`SliverError` (or a subclass) whose message
names the problem (the op, the file, the shape) and what to do about it.  The CLI
prints the message without a traceback.  This module imports nothing heavy: the
deploy-side runtime uses it too.
"""


class SliverError(Exception):
    """Base class of every error sliver reports to its user."""


class UnsupportedOpError(SliverError):
    """The model uses operators sliver's IR cannot represent (found while tracing)."""

    def __init__(self, problems):
        # problems: list of (aten op name, "file:line" or None, source text or None)
        self.problems = list(problems)
        lines = [f"sliver cannot trace {len(self.problems)} operator use(s) of this model:"]
        for op, where, src in self.problems:
            loc = f" at {where}" if where else ""
            lines.append(f"  - {op}{loc}")
            if src:
                lines.append(f"      {src}")
        lines.append(
            "Rewrite those lines with supported operations (`sliver ops` lists them), "
            "or open an issue asking for the operator. Nothing was compiled."
        )
        super().__init__("\n".join(lines))


class DataDependentShapeError(SliverError):
    """The model computes a tensor whose size depends on the input values (``nonzero``,
    boolean-mask indexing, ``unique``, ``.item()`` used as a size): sliver compiles graphs
    whose sizes are known before they run (found while tracing, before anything compiles)."""

    def __init__(self, problems):
        # problems: list of (aten op name, "file:line" or None, source text or None)
        self.problems = list(problems)
        lines = [f"the model computes {len(self.problems)} tensor(s) whose size depends on the input values "
                 "(a data-dependent number of elements):"]
        for op, where, src in self.problems:
            lines.append(f"  - {op}" + (f" at {where}" if where else ""))
            if src:
                lines.append(f"      {src}")
        lines.append(
            "sliver compiles graphs whose sizes are known before they run. Keep the size fixed, e.g. "
            "torch.where(mask, x, 0) instead of x[mask], or a fixed-size topk instead of nonzero; or run that "
            "part (detection post-processing) outside the model. Nothing was compiled."
        )
        super().__init__("\n".join(lines))


class IRParseError(SliverError):
    """IR text that does not parse; the message points at the line and column."""


class VerifyError(SliverError):
    """A module that breaks an IR invariant; the message shows the ops around the fault."""


class TargetError(SliverError):
    """An unknown or malformed compilation target."""


class ArtifactError(SliverError):
    """A .sliver artifact that is missing, truncated, tampered with or built for another machine."""


class InputError(SliverError):
    """Inputs whose count, shape or dtype do not match what the model was compiled for."""


class ModelError(SliverError):
    """A MODEL that cannot be loaded: a missing or broken file, a function that fails, or
    one that returns something other than (an nn.Module, example inputs)."""


class DependencyError(SliverError):
    """A part of sliver that needs a package this installation lacks (the compiler's
    torch on a runtime-only install); the message names the pip command."""


class UsageError(SliverError):
    """A command-line option with a bad value, or naming something that does not exist."""


class SliverWarning(UserWarning):
    """Something sliver did differently from what the caller may expect, and did on purpose
    (e.g. a model in training mode traced and evaluated in eval mode)."""
