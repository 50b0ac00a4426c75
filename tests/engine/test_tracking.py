"""The training workers' MLflow logger (engine/tracking.py) against a real SQLite store: a locked store never
holds up the training thread, a refused batch is sent again once the store takes batches, and what never
reached the store is counted in one warning."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient

from frcnn_pipeline.engine.tracking import MlflowRunLogger, TrackingTarget

LOGGER = "frcnn_pipeline.engine.tracking"
WAIT_S = 120  # for the sender thread on two shared cores; a deadline against hangs, not a measure


@pytest.fixture(scope="module")
def experiment(module_tmp) -> tuple[Path, MlflowClient, str]:
    folder = module_tmp("tracking")
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    return folder / "mlflow.db", client, client.create_experiment("tracking", (folder / "artifacts").as_uri())


@pytest.fixture
def store(experiment) -> tuple[Path, MlflowClient, TrackingTarget]:
    """The store's file, a client, and a new run of its experiment."""
    database, client, experiment_id = experiment
    run_id = client.create_run(experiment_id).info.run_id
    return database, client, TrackingTarget(f"sqlite:///{database}", run_id)


@contextmanager
def locked(database: Path) -> Iterator[None]:
    """Another connection holds the store's write lock, as an open sqlite3 shell would: each MLflow call
    waits up to 20 s for it, then fails."""
    connection = sqlite3.connect(database, isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        connection.execute("ROLLBACK")
        connection.close()


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"the sender thread did not get to: {what}"
        time.sleep(0.05)


def _steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, "train/loss"))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_a_locked_store_holds_up_no_metric_call_and_gets_every_row_once_free(store, caplog):
    database, client, target = store
    logger = MlflowRunLogger(target)
    with caplog.at_level(logging.INFO, logger=LOGGER), locked(database):
        for step in range(1, 6):
            logger.log_metrics({"train/loss": 1.0 / step}, step)
        # Every call returned while the store was locked: the rows wait (one may be with the sender).
        assert logger.queued >= 4
    logger.close()
    assert _steps(client, target.run_id) == [1, 2, 3, 4, 5]
    assert _warnings(caplog) == [], "a lock shorter than MLflow's wait costs nothing"


def test_a_refused_batch_is_sent_again_once_the_store_takes_batches(store, caplog):
    _, client, target = store
    client.delete_run(target.run_id)  # MLflow refuses to log into a deleted run
    logger = MlflowRunLogger(target)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        logger.log_metrics({"train/loss": 1.0}, 1)
        _wait_until(lambda: logger.refused == 1, "the store refusing step 1")
        client.restore_run(target.run_id)
        logger.log_metrics({"train/loss": 0.5}, 2)
        logger.close()
    assert _steps(client, target.run_id) == [1, 2]
    [warning] = _warnings(caplog)
    assert "the store refused the metrics of step 1" in warning and target.run_id in warning
    assert "the store answered again; run" in caplog.text


def test_a_full_queue_drops_with_one_warning_and_the_end_counts_what_is_missing(store, caplog):
    database, client, target = store
    logger = MlflowRunLogger(target, queue_batches=2, close_timeout_s=0.1)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with locked(database):
            logger.log_metrics({"train/loss": 1.0}, 1)
            _wait_until(lambda: logger.queued == 0, "taking step 1 (it then waits on the lock)")
            for step in range(2, 7):
                logger.log_metrics({"train/loss": 1.0 / step}, step)
            assert logger.queued == 2, "steps 2 and 3 wait; 4 to 6 are dropped"
            logger.close()  # the sender still waits on the lock
        during, at_close = _warnings(caplog)
        assert "2 batches wait for the store, later ones are dropped" in during
        assert "6 of 6 batches" in at_close and "did not answer within 0.1 s" in at_close
        logger.close_timeout_s = WAIT_S
        logger.close()  # the store is free: the sender finishes what it holds
    assert _steps(client, target.run_id) == [1, 2, 3]
    assert "3 of 6 batches" in _warnings(caplog)[-1], "the dropped steps stay missing, and are counted"
