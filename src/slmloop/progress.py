"""Progress of long work, on a terminal and in a log.

On a terminal, a rich progress bar (or spinner) redraws in place. Where stderr is
not a terminal — CI, ``nohup``, ``| tee``, a log file — a redrawn bar shows
nothing until the work ends, so there one plain line is printed every
``SLMLOOP_PROGRESS_INTERVAL`` seconds (default 30) while the work runs, with what
is done, the rate and the ETA, and one line when it ends:

    train: 120/960 (12 %) · loss 0.412 · 1020 tok/s · 2:01 elapsed · ETA 14:10

:func:`progress` stands in for ``rich.progress.Progress`` (``add_task`` /
``update``), :func:`status` for ``Console.status``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["LineProgress", "interval", "progress", "status"]


def interval() -> float:
    """Seconds between two progress lines where stderr is not a terminal (``SLMLOOP_PROGRESS_INTERVAL``)."""
    try:
        return max(float(os.environ.get("SLMLOOP_PROGRESS_INTERVAL", "30")), 0.05)
    except ValueError:
        return 30.0


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class LineProgress:
    """The part of rich's ``Progress`` slmloop uses, written as plain lines for a console that is no terminal.

    ``fields`` name the extra values of a task shown in each line (``loss``, ``tps`` …) with their format."""

    def __init__(self, console: Console, label: str, fields: Sequence[tuple[str, str]] = (), every: float = 0) -> None:
        self.console = console
        self.label = label
        self.fields = list(fields)
        self.every = every or interval()
        self._tasks: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def __enter__(self) -> LineProgress:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._beat, name="slmloop-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc[0] is None:
            for task in self._tasks:
                self._line(task, final=True)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> TaskID:
        self._tasks.append(
            {"description": description, "total": total, "completed": completed, "start": completed, **fields}
        )
        return TaskID(len(self._tasks) - 1)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self, task_id: TaskID, *, advance: float | None = None, completed: float | None = None, **fields: Any
    ) -> None:
        task = self._tasks[task_id]
        if completed is not None:
            task["completed"] = completed
        if advance is not None:
            task["completed"] += advance
        task.update(fields)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            for task in self._tasks:
                self._line(task)

    def _line(self, task: dict[str, Any], final: bool = False) -> None:
        elapsed = time.monotonic() - self._started
        done, total = task["completed"], task["total"]
        parts = [f"{self.label}: {done:.0f}" + (f"/{total:.0f} ({100 * done / total:.0f} %)" if total else "")]
        for key, fmt in self.fields:
            if task.get(key) not in (None, "…", ""):
                parts.append(fmt.format(task[key]))
        parts.append(f"{_clock(elapsed)} elapsed")
        rate = (done - task["start"]) / elapsed if elapsed > 0 else 0.0
        if final:
            parts.append("done")
        elif total and rate > 0:
            parts.append(f"ETA {_clock((total - done) / rate)}")
        else:
            parts.append("ETA …")
        self.console.print(" · ".join(parts), highlight=False, soft_wrap=True)


def progress(
    console: Console,
    label: str,
    fields: Sequence[tuple[str, str]] = (),
    *,
    disable: bool = False,
    columns: Sequence[str | ProgressColumn] = (),
) -> Progress | LineProgress:
    """A progress display for ``label``: rich's bar on a terminal (``columns`` after the bar, default: count,
    elapsed, ETA), else :class:`LineProgress` (``fields``: the task fields shown in each line, with a format)."""
    if not console.is_terminal and not disable:
        return LineProgress(console, label, fields)
    shown = list(columns) or [MofNCompleteColumn(), TimeElapsedColumn()]
    return Progress(
        TextColumn(f"[bold]{label}[/bold]"),
        BarColumn(),
        *shown,
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )


@contextmanager
def status(console: Console, text: str) -> Iterator[None]:
    """A spinner with ``text`` on a terminal; elsewhere a line when the work starts, one every interval while it
    runs (with the time elapsed) and one with its duration when it ends."""
    if console.is_terminal:
        with console.status(text):
            yield
        return
    started = time.monotonic()
    stop = threading.Event()
    console.print(text, highlight=False, soft_wrap=True)

    def beat() -> None:
        while not stop.wait(interval()):
            console.print(f"{text} ({_clock(time.monotonic() - started)} elapsed)", highlight=False, soft_wrap=True)

    thread = threading.Thread(target=beat, name="slmloop-status", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    console.print(f"{text} done in {_clock(time.monotonic() - started)}", highlight=False, soft_wrap=True)
