"""Live experiment tracking from a training worker: MLflow's client, logging into a run opened elsewhere.

The run is opened by the Kedro process (kedro-mlflow); training runs in spawned workers, which cannot share
that process's active run. The launching side hands over a `TrackingTarget` (tracking URI + run id) and rank 0
logs with `mlflow.MlflowClient`, which needs no active run.

Tracking never holds up training: the training thread only puts each batch on a bounded queue, and a sender
thread logs it (a locked SQLite store makes every MLflow call wait 20 s; a server may restart). A store in
trouble costs one warning; the batches it refused are sent again once it answers, at the latest when training
ends; what it never took is counted in one last warning. Every row is in the JSON-lines log either way.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# MLflow's log_batch accepts at most 1000 metrics and 100 tags per call.
_MAX_METRICS_PER_CALL = 1000
_MAX_TAGS_PER_CALL = 100
# Batches waiting for the store (each a metric row, an evaluation or tags): hours of training at the usual
# log_period, a few MB at most. Beyond, a batch is dropped and counted.
QUEUE_BATCHES = 1000
# A batch the store refused is tried this many times in all (a batch MLflow rejects for good is not retried
# forever).
MAX_ATTEMPTS = 3
# How long the end of training waits for the last batches: one of MLflow's 20-s waits on a locked store.
CLOSE_TIMEOUT_S = 30.0
# MLflow's SQL store logs every failed call with its traceback (~60 lines) before raising it.
_STORE_LOGGER = "mlflow.store.db.utils"


@contextlib.contextmanager
def quiet_store_errors() -> Iterator[None]:
    """While the block runs, MLflow's SQL store logs nothing from this thread: the caller reports the errors
    it raises (once)."""
    thread = threading.get_ident()

    def from_other_threads(record: logging.LogRecord) -> bool:
        return record.thread != thread

    logger = logging.getLogger(_STORE_LOGGER)
    logger.addFilter(from_other_threads)
    try:
        yield
    finally:
        logger.removeFilter(from_other_threads)


@dataclass(frozen=True)
class TrackingTarget:
    """An MLflow run to log into from another process."""

    tracking_uri: str
    run_id: str

    @classmethod
    def of_active_run(cls) -> TrackingTarget | None:
        """The MLflow run active in this process (kedro-mlflow's), or None when tracking is off."""
        import mlflow

        run = mlflow.active_run()
        return cls(mlflow.get_tracking_uri(), run.info.run_id) if run else None


@dataclass
class _Batch:
    what: str  # "metrics of step 20", for the warnings
    fields: dict[str, list[Any]]  # log_batch's keyword arguments
    attempts: int = field(default=0)


_STOP = object()


class MlflowRunLogger:
    """Metrics (with the iteration as step) and tags into one run, sent off the training thread.

    `close()` (end of training, also after an error) waits up to `close_timeout_s` for what is queued, and
    says what the store did not take: a gap in the run's charts costs less than a stalled or lost training.
    """

    def __init__(
        self,
        target: TrackingTarget,
        *,
        queue_batches: int = QUEUE_BATCHES,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ):
        self.target = target
        self.queue_batches = queue_batches
        self.close_timeout_s = close_timeout_s
        # Unbounded for close()'s stop mark; `_put` keeps the batches within `queue_batches`.
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._refused: deque[_Batch] = deque()  # sent again, oldest first, once the store answers
        self._batches = 0  # handed over by the training thread (dropped ones included)
        self._sent = 0  # taken by the store (sender thread)
        self._first_error: str | None = None
        self._warned = False
        self._warning_lock = threading.Lock()  # both threads may be the first to warn
        # Made on the sender thread: opening a store already reads it (and may wait on a lock).
        self._client = None
        self._sender = threading.Thread(target=self._send_all, name="mlflow-run-logger", daemon=True)
        self._sender.start()

    @property
    def run_id(self) -> str:
        return self.target.run_id

    @property
    def queued(self) -> int:
        """Batches waiting for the sender (not counting the one it is sending)."""
        return self._queue.qsize()

    @property
    def refused(self) -> int:
        """Batches the store refused, to be sent again."""
        return len(self._refused)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(key, float(value), timestamp, step) for key, value in values.items()]
        for start in range(0, len(metrics), _MAX_METRICS_PER_CALL):
            self._put(f"metrics of step {step}", metrics=metrics[start : start + _MAX_METRICS_PER_CALL])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        run_tags = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(run_tags), _MAX_TAGS_PER_CALL):
            self._put("tags", tags=run_tags[start : start + _MAX_TAGS_PER_CALL])

    def close(self) -> None:
        """Sends what is queued (waiting at most `close_timeout_s`), then says what the store did not take.

        A sender still waiting on the store goes on in the background until it has tried every batch.
        """
        self._queue.put(_STOP)
        self._sender.join(self.close_timeout_s)
        missing = self._batches - self._sent
        if self._sender.is_alive():
            reason = f"the store did not answer within {self.close_timeout_s:g} s of the end of training"
        else:
            reason = self._first_error or f"over {self.queue_batches} batches waited for the store"
        if missing:
            log.warning(
                "MLflow: %d of %d batches of metrics and tags are not in run %s at %s (%s); every row is in "
                "the JSON-lines log",
                missing,
                self._batches,
                self.run_id,
                self.target.tracking_uri,
                reason,
            )
        elif self._first_error is not None:
            log.info("MLflow: the store answered again; run %s has every batch", self.run_id)

    def _put(self, what: str, **fields: list[Any]) -> None:
        self._batches += 1
        if self._queue.qsize() >= self.queue_batches:
            self._warn_once(f"{self.queue_batches} batches wait for the store, later ones are dropped")
            return
        self._queue.put(_Batch(what, fields))

    def _send_all(self) -> None:
        with quiet_store_errors():
            while (batch := self._queue.get()) is not _STOP:
                if self._send(batch):
                    self._send_refused()
                else:
                    self._refuse(batch)
            self._send_refused()

    def _send_refused(self) -> None:
        while self._refused:
            batch = self._refused.popleft()
            if not self._send(batch):
                self._refuse(batch, front=True)
                return

    def _send(self, batch: _Batch) -> bool:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        batch.attempts += 1
        try:
            self._client = self._client or MlflowClient(tracking_uri=self.target.tracking_uri)
            self._client.log_batch(self.run_id, **batch.fields)
        except (MlflowException, SQLAlchemyError, OSError) as error:
            if self._first_error is None:
                self._first_error = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
            self._warn_once(
                f"the store refused the {batch.what} ({self._first_error}); sent again once it answers"
            )
            return False
        self._sent += 1
        return True

    def _refuse(self, batch: _Batch, front: bool = False) -> None:
        """Keeps a refused batch for later, unless it was tried MAX_ATTEMPTS times or too many wait."""
        if batch.attempts >= MAX_ATTEMPTS or len(self._refused) >= self.queue_batches:
            return  # counted as missing by close()
        if front:
            self._refused.appendleft(batch)
        else:
            self._refused.append(batch)

    def _warn_once(self, problem: str) -> None:
        with self._warning_lock:
            if self._warned:
                return
            self._warned = True
        log.warning(
            "MLflow, run %s at %s: %s; training goes on (every row is also in the JSON-lines log)",
            self.run_id,
            self.target.tracking_uri,
            problem,
        )
