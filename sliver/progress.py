"""A progress display for long compiles, drawn with the ``rich`` library.

``sliver lower`` (and ``sliver tune -o``) always use it; in Python it is opt-in:
``sliver.lower(model, inputs, progress=True)``.  On a terminal it shows a spinner,
the step running now (tracing, passes, lowering to Relax, compiling with TVM, …), a
pulsing bar and the elapsed time, while each step's message stays printed above it;
elsewhere (a log file, a pipe) it prints only the messages, one line each.
"""

from __future__ import annotations


class Display:
    """Call it with each progress message (it is what ``lower(progress=...)`` takes);
    it starts at the first message and stops at :meth:`close` (or the ``with`` block's
    end)."""

    def __init__(self, console=None, prefix: str = "[sliver] "):
        try:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        except ImportError:
            from sliver.common.errors import DependencyError

            raise DependencyError("the progress display needs the rich library: pip install 'sliver[compiler]'") \
                from None
        self.console = console if console is not None else Console(stderr=True)
        self.prefix = prefix
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                                  TimeElapsedColumn(), console=self.console, transient=True)
        self._task = None

    def __call__(self, message: str) -> None:
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task(message, total=None)
        self.console.print(self.prefix + message, markup=False, highlight=False, soft_wrap=True)
        self._progress.update(self._task, description=message)

    def close(self) -> None:
        if self._task is not None:
            self._progress.stop()
            self._task = None

    def __enter__(self) -> "Display":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
