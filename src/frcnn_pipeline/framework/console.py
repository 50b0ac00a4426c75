"""The run's console log off a terminal (CI, `| tee`, a batch job's log)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from kedro.framework.hooks import hook_impl

if TYPE_CHECKING:
    from kedro.framework.context import KedroContext


def widen_logs_off_terminal(width: int = 160) -> None:
    """rich wraps log lines at 80 columns when stdout is not a terminal, which breaks tables over several
    lines; Kedro's logging YAML cannot set the console's width."""
    if "COLUMNS" in os.environ:
        return
    for handler in logging.getLogger().handlers:
        console = getattr(handler, "console", None)
        if console is not None and not console.is_terminal:
            console.width = width


class WideLogsOffTerminalHook:
    """Widens the log's console as a session starts, once Kedro has configured logging."""

    @hook_impl(tryfirst=True)  # before the other hooks log
    def after_context_created(self, context: KedroContext) -> None:
        widen_logs_off_terminal()
