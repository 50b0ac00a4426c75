"""Spawned workers' log records, replayed in the launching process through its own logging configuration.

A spawned worker starts a fresh interpreter without Kedro's logging set-up, so its records (the loss, LR and
memory lines among them) would go nowhere. The standard library's queue handler and listener carry them to the
launcher, where they pass through the loggers and handlers Kedro configured, as if logged there.
"""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The launcher's levels that the workers mirror (records below them are not even sent).
MIRRORED_LOGGERS = ("", "frcnn_pipeline")


class _Replay(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


class _RankPrefix(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        # Not "[rank 1]": rich's handler would read the brackets as markup.
        self.prefix = f"(rank {rank}) "

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.prefix + record.getMessage()
        record.args = None
        return True


def levels() -> dict[str, int]:
    """The launcher's effective levels, for the workers to mirror."""
    return {name: logging.getLogger(name).getEffectiveLevel() for name in MIRRORED_LOGGERS}


@contextmanager
def replay_worker_logs(queue: Any) -> Iterator[None]:
    """In the launcher: replay what the workers put on `queue` until the context ends."""
    listener = logging.handlers.QueueListener(queue, _Replay())
    listener.start()
    try:
        yield
    finally:
        listener.stop()


def send_logs_to(queue: Any, rank: int, mirrored_levels: dict[str, int]) -> None:
    """In a spawned worker: every record goes to the launcher; ranks other than 0 are prefixed with it."""
    handler = logging.handlers.QueueHandler(queue)
    if rank != 0:
        handler.addFilter(_RankPrefix(rank))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    for name, level in mirrored_levels.items():
        logging.getLogger(name).setLevel(level)
