"""SIGTERM and SIGINT as a request to stop: training saves a checkpoint of the current iteration first.

SLURM and Kubernetes send SIGTERM before they kill a job that runs out of time or is pre-empted; Ctrl-C sends
SIGINT to every process of the terminal's foreground group. The same request may arrive more than once (SLURM
signals every process of the step, and the launcher forwards it to its workers too), so repeats are ignored,
except a second SIGINT: a user pressing Ctrl-C again wants to stop at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from types import FrameType

from frcnn_pipeline.errors import UserFacingError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StopSignals:
    """Context manager: while active, SIGTERM/SIGINT set `requested` (the signal's name) instead of killing.

    Handlers can only be installed from the main thread; elsewhere the context does nothing (the signals keep
    their current behaviour).
    """

    def __init__(self, *, on_the_way_out: bool = False) -> None:
        """on_the_way_out: a process that ends once the block ends on a request (a training worker) keeps
        ignoring SIGTERM after it: the launcher's forwarded copy of the same request may arrive late, and
        would kill the worker before it reports that it stopped."""
        self.requested: str | None = None
        self.on_the_way_out = on_the_way_out
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.requested == "SIGINT":
            raise KeyboardInterrupt
        self.requested = self.requested or signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            keep_ignoring = signum == signal.SIGTERM and self.on_the_way_out and self.requested
            signal.signal(signum, signal.SIG_IGN if keep_ignoring else handler)
        self._previous = {}


def die_with_the_parent() -> None:
    """Linux: this process is killed when its parent dies (SIGKILL, OOM), not left running alone.

    multiprocessing offers no parent-death signal, hence prctl(PR_SET_PDEATHSIG) through ctypes.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class TrainingStopped(UserFacingError, RuntimeError):
    """Training stopped on request after saving a checkpoint; every rank raises it at the same iteration."""

    def __init__(self, iteration: int, max_iter: int, checkpoint: str, reason: str):
        self.iteration, self.max_iter, self.checkpoint, self.reason = iteration, max_iter, checkpoint, reason
        super().__init__(
            f"Training stopped by {reason} after iteration {iteration} of {max_iter}; checkpoint "
            f"{checkpoint} saved. Rerun the same command to resume from it."
        )

    def __reduce__(self):
        # Pickled from a spawned worker back to the launching process.
        return type(self), (self.iteration, self.max_iter, self.checkpoint, self.reason)
