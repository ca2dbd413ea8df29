"""The terminal progress line of a tuning run."""

from __future__ import annotations

import sys
import time
from typing import Callable


class Progress:
    """One status line on stderr: trials done, the model's estimated latency (sum of
    its kernels' best times, times their calls), elapsed time and ETA."""

    def __init__(self, out=None, say: Callable[[str], None] | None = None):
        self.out = out or sys.stderr
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.say_fn = say
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._open = False

    def say(self, msg: str):
        self._end_line()
        if self.say_fn:
            self.say_fn(msg)
        else:
            print(f"[tune] {msg}", file=self.out, flush=True)

    def status(self, text: str, force: bool = False):
        now = time.perf_counter()
        if self.tty:
            print("\r[tune] " + text + "\x1b[K", end="", file=self.out, flush=True)
            self._open = True
        elif force or now - self._last >= 5:
            print("[tune] " + text, file=self.out, flush=True)
            self._last = now

    def _end_line(self):
        if self._open:
            print(file=self.out, flush=True)
            self._open = False

    def close(self):
        self._end_line()
