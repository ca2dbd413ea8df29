"""How much to tune: a number of search trials or a wall-time budget, and the
error every part of the tuner raises."""

from __future__ import annotations

import dataclasses
import math
import re

from sliver.common.errors import SliverError


class TuningError(SliverError):
    """A bad budget, a broken tuning database or a device that went away."""


# --------------------------------------------------------------------------- budgets


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text) -> float:
    """Seconds in ``"90s"``, ``"10m"``, ``"1h30m"``, ``"1.5h"`` or a plain number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text).strip().lower().replace(" ", ""))
        if not m or not any(m.groups()):
            raise TuningError(f"time budget {text!r} is not a duration: write it like 90s, 10m, 1h30m or 1.5h")
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = 3600 * h + 60 * mi + s
    if not seconds > 0 or math.isinf(seconds):
        raise TuningError(f"time budget {text!r} must be a positive duration, e.g. 10m")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much to tune: ``trials`` search trials in total over the model's tasks
    (records already in the database count), or ``seconds`` of wall time."""

    trials: int | None = None
    seconds: float | None = None

    def __post_init__(self):
        if (self.trials is None) == (self.seconds is None):
            raise TuningError("give a tuning budget as a number of trials (--trials 200) or a time "
                              "(--time-budget 10m), not both and not neither")
        if self.trials is not None and (isinstance(self.trials, bool) or not isinstance(self.trials, int)
                                        or self.trials < 1):
            raise TuningError(f"--trials {self.trials!r}: the number of trials must be a whole number >= 1")
        if self.seconds is not None and not (self.seconds > 0 and not math.isinf(self.seconds)):
            raise TuningError(f"time budget {self.seconds!r} s must be positive, e.g. --time-budget 10m")

    @classmethod
    def parse(cls, trials=None, time_budget=None) -> "Budget":
        """From CLI-style values: ``trials`` an int (or its text), ``time_budget`` a duration."""
        if trials is not None and not isinstance(trials, int):
            try:
                trials = int(str(trials).strip())
            except ValueError:
                raise TuningError(f"--trials {trials!r}: the number of trials must be a whole number >= 1") from None
        seconds = parse_duration(time_budget) if time_budget is not None else None
        return cls(trials=trials, seconds=seconds)

    @classmethod
    def of(cls, tune) -> "Budget":
        """``lower(tune=…)``'s value: an int (trials), a duration string, a Budget."""
        if isinstance(tune, Budget):
            return tune
        if isinstance(tune, bool):
            raise TuningError("tune=True names no budget: pass tune=200 (trials) or tune='10m' (time)")
        if isinstance(tune, int):
            return cls(trials=tune)
        if isinstance(tune, str):
            return cls(seconds=parse_duration(tune))
        raise TuningError(f"tune={tune!r}: pass a number of trials (tune=200), a time (tune='10m') or a Budget")

    def __str__(self) -> str:
        return f"{self.trials} trials" if self.trials is not None else f"{format_duration(self.seconds)} of tuning"
