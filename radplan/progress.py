"""Progress bars for the command-line tools: shown on a terminal, silent when output goes to a file or a pipe.

The ``radplan`` command opens one display for the whole command (:func:`display`); the code doing the work
asks it for a bar (:func:`task`) and hands the bar's ``callback`` to the library function that reports
progress (``progress(done, total)``). Outside a display — in the Dagster assets, in tests, when stdout or
stderr is not a terminal — a bar is a no-op, so library code never prints progress into logs or captured
output. rich is imported only when a display is really shown.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

_live = None  # the rich Progress of the running command, when it draws on a terminal
_activity = None  # its "still working" line, hidden while a real bar is shown


def on_terminal() -> bool:
    """Progress is drawn only when both stdout and stderr are terminals (never into a file or a pipe)."""
    return _isatty(sys.stdout) and _isatty(sys.stderr)


def _isatty(stream) -> bool:
    try:
        return bool(stream and stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


@contextmanager
def display(activity: str, *, enabled: bool | None = None) -> Iterator[None]:
    """One progress display for a command: a spinner with elapsed time (``activity``) until a bar replaces it.

    Drawn on stderr; while it is shown, prints to stdout/stderr appear above it. ``enabled=None`` means
    "when on a terminal".
    """
    global _live, _activity
    if not (on_terminal() if enabled is None else enabled) or _live is not None:
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class CountColumn(MofNCompleteColumn):  # done/total, "done/?" without a total; nothing on the spinner line
        def render(self, task):
            return Text("") if task.fields.get("activity") else super().render(task)

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), CountColumn(),
                        # soft_wrap: what the command prints meanwhile (JSON summaries) keeps its own line breaks.
                        TimeElapsedColumn(), console=Console(stderr=True, soft_wrap=True), transient=True)
    _live, _activity = progress, progress.add_task(activity, total=None, activity=True)
    try:
        with progress:
            yield
    finally:
        _live = _activity = None


class Bar:
    """One line of the display; every method is a no-op when nothing is drawn."""

    def __init__(self, description: str, total: int | None) -> None:
        self._id = None
        if _live is not None:
            self._id = _live.add_task(description, total=total)
            _live.update(_activity, visible=False)

    def advance(self, steps: int = 1) -> None:
        if self._id is not None and _live is not None:
            _live.advance(self._id, steps)

    def update(self, done: int, total: int | None = None) -> None:
        if self._id is not None and _live is not None:
            _live.update(self._id, completed=done, **({"total": total} if total is not None else {}))

    def callback(self, done: int, total: int | None = None) -> None:
        """The ``progress(done, total)`` / ``progress(done)`` callback the library functions take."""
        self.update(done, total)

    def close(self) -> None:
        """Remove the line (what it measured is reported by the command's own output)."""
        if self._id is not None and _live is not None:
            _live.remove_task(self._id)
            if not any(t.visible for t in _live.tasks if t.id != _activity):
                _live.update(_activity, visible=True)
        self._id = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def task(description: str, total: int | None = None) -> Bar:
    """A bar on the command's display (``total=None``: a count without an end); close it when done."""
    return Bar(description, total)
