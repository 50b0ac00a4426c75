"""The training loader's worker processes: deaf to Ctrl-C and SLURM's SIGTERM, always ended by their parent.

Ctrl-C and SLURM's SIGTERM reach every process, but only the training process may decide when to stop: it
finishes its iteration and saves a checkpoint, and a loader worker that died first would fail that
iteration. So the workers ignore SIGINT and obey SIGTERM only once their parent has asked them to stop. On
every way out of training (an error, a stop signal, the end) the parent asks, sends SIGTERM and kills those
still alive after a grace period; a worker left to Python's exit handler, which ignored its SIGTERM, would
keep the process from ever exiting, and a scheduler job would burn its whole allocation.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType

import torch.multiprocessing
from torch.utils.data import DataLoader

from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.runtime.signals import die_with_the_parent

log = logging.getLogger(__name__)

# How long the workers get to end after SIGTERM before they are killed.
GRACE_S = 5.0


def worker_count(requested: int, training_workers_per_node: int) -> int:
    """`runtime.num_workers`, at most the cores left to each training worker: more loader processes than cores
    only slow each other down (and torch warns about it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    available = max(1, cores // training_workers_per_node)
    if requested > available:
        log.info(
            "runtime.num_workers %d > %d core(s) per training worker: %d loader worker(s)",
            requested,
            available,
            available,
            extra=DETAIL,
        )
    return min(requested, available)


class LoaderWorkers:
    """`with LoaderWorkers(loader) as batches:` iterates `loader`; on leaving, its worker processes are gone.

    It wraps the loader's `worker_init_fn` to install the workers' signal handling. torch's DataLoader has no
    public way to end its workers; they are the children of this process that appear when the iterator starts
    (persistent workers start there, once), so they are found as such.
    """

    def __init__(self, loader: DataLoader, grace_s: float = GRACE_S):
        context = loader.multiprocessing_context or torch.multiprocessing.get_context()
        self.stop_requested = context.Event()
        loader.worker_init_fn = _StoppableWorker(loader.worker_init_fn, self.stop_requested)
        self.loader = loader
        self.grace_s = grace_s
        self.processes: list[multiprocessing.process.BaseProcess] = []

    def __enter__(self) -> Iterator:
        before = set(multiprocessing.active_children())
        batches = iter(self.loader)
        self.processes = [p for p in multiprocessing.active_children() if p not in before]
        return batches

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop_requested.set()
        stop_processes(self.processes, self.grace_s)


def stop_processes(processes: list[multiprocessing.process.BaseProcess], grace_s: float) -> None:
    """SIGTERM to each live process, SIGKILL to those still alive after `grace_s`; waits for all."""
    alive = [process for process in processes if process.is_alive()]
    for process in alive:
        process.terminate()
    deadline = time.monotonic() + grace_s
    for process in alive:
        process.join(max(0.0, deadline - time.monotonic()))
    stuck = [process for process in alive if process.is_alive()]
    for process in stuck:
        log.warning("DataLoader worker %d did not stop within %.0f s: killed", process.pid, grace_s)
        process.kill()
    for process in stuck:
        process.join()


class _StoppableWorker:
    """A loader worker's set-up (picklable, for spawned workers): the loader's own, then the signals."""

    def __init__(self, init: Callable[[int], None] | None, stop_requested):
        self.init, self.stop_requested = init, stop_requested

    def __call__(self, worker_id: int) -> None:
        if self.init is not None:
            self.init(worker_id)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        die_with_the_parent()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested.is_set():
            # A clean exit: the DataLoader reports a worker that dies of a signal as a crash.
            os._exit(0)
