"""Progress of a long stage: a bar on a terminal, plain periodic lines off it (CI, a log file, a worker).

Written here rather than taken whole from a library: tqdm's logging integration (`logging_redirect_tqdm`)
redirects only plain stream handlers, not the rich handler Kedro logs through, so log lines would print
through the bar; and off a terminal neither tqdm nor rich prints a progress line at intervals without redraw
characters. rich draws the bar on the log handler's own console, so log lines print above it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

log = logging.getLogger(__name__)

# Off a terminal: a line once the stage is LINE_INTERVAL_S later and LINE_STEP further on than the last one,
# or MAX_SILENCE_S later whatever the progress, so a slow stage still shows it is alive.
LINE_INTERVAL_S = 30.0
LINE_STEP = 0.1
MAX_SILENCE_S = 600.0

# The live display of each terminal console and the stages it shows: rich allows one live display per
# console, so stages that overlap (the pipeline's nodes, training inside them) share it.
_DISPLAYS: dict[int, tuple[RichProgress, set[int]]] = {}


def terminal_console() -> Console | None:
    """The terminal the log's rich handler prints to, or None (not a terminal, or a spawned worker)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RichHandler) and handler.console.is_terminal:
            return handler.console
    return None


def format_duration(seconds: float) -> str:
    seconds = round(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """`update()` as work is done; `close()` (or the `with` block's end) logs the stage's one closing line.

    ``fields`` passed to `update()` (a loss, the LR) show after the counts. Disabled (another
    rank, a stage too short to show), it does nothing.
    """

    def __init__(
        self,
        description: str,
        total: float | None,
        unit: str = "it",
        initial: float = 0,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.description, self.total, self.unit = description, total, unit
        self.initial = self.done = initial
        self.enabled = enabled
        self.fields: dict[str, Any] = {}
        self._clock = clock
        self._started = self._last_line = clock()
        self._last_line_done = initial
        self._console = terminal_console() if enabled else None
        self._task = self._show_bar() if self._console is not None else None

    def _show_bar(self):
        display, stages = _DISPLAYS.get(id(self._console)) or (None, set())
        if display is None:
            display = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=self._console,
                transient=True,  # the closing line replaces the bar
            )
            display.start()
            _DISPLAYS[id(self._console)] = (display, stages)
        task = display.add_task(
            self.description, total=self.total, completed=self.initial, unit=self.unit, extra=""
        )
        stages.add(task)
        return task

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close(finished=exc_info[0] is None)

    def update(self, advance: float = 1, **fields: Any) -> None:
        if not self.enabled:
            return
        self.done += advance
        self.fields.update(fields)
        if self._task is not None:
            display, _ = _DISPLAYS[id(self._console)]
            display.update(self._task, completed=self.done, extra=self._fields_text())
            return
        now = self._clock()
        step = (self.done - self._last_line_done) / self.total if self.total else 1.0
        if self.done == self.total:  # the closing line follows
            return
        if (now - self._last_line >= LINE_INTERVAL_S and step >= LINE_STEP) or (
            now - self._last_line >= MAX_SILENCE_S
        ):
            log.info("%s", self.status())
            self._last_line, self._last_line_done = now, self.done

    def _fields_text(self) -> str:
        return "  ".join(f"{name} {value}" for name, value in self.fields.items())

    def status(self) -> str:
        """One line: done of total, the rate since the last line (a slow start does not skew it), time left,
        the fields."""
        elapsed = self._clock() - self._last_line
        rate = (self.done - self._last_line_done) / elapsed if elapsed > 0 else 0.0
        counts = f"{self.done:,.0f}/{self.total:,.0f}" if self.total else f"{self.done:,.0f}"
        parts = [f"{self.description}: {counts} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"eta {format_duration((self.total - self.done) / rate)}")
        if self.fields:
            parts.append(self._fields_text())
        return ", ".join(parts)

    def close(self, *, finished: bool = True) -> None:
        """End the display; a finished stage logs how long it took, an interrupted one where it stopped."""
        if not self.enabled:
            return
        self.enabled = False
        if self._task is not None:
            display, stages = _DISPLAYS[id(self._console)]
            display.remove_task(self._task)
            stages.discard(self._task)
            if not stages:
                display.stop()
                del _DISPLAYS[id(self._console)]
        elapsed = format_duration(self._clock() - self._started)
        if finished:
            log.info(
                "%s: %s %s in %s", self.description, f"{self.done - self.initial:,.0f}", self.unit, elapsed
            )
        else:
            log.info("%s (stopped)", self.status())
