"""Live experiment tracking from a training worker: MLflow's client, logging into a run opened elsewhere.

The run is opened by the Kedro process (kedro-mlflow); training runs in spawned workers, which cannot share
that process's active run. The launching side hands over a `TrackingTarget` (tracking URI + run id) and rank 0
logs with `mlflow.MlflowClient`, which needs no active run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# MLflow's log_batch accepts at most 1000 metrics and 100 tags per call.
_MAX_METRICS_PER_CALL = 1000
_MAX_TAGS_PER_CALL = 100


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


class MlflowRunLogger:
    """Metrics (with the iteration as step) and tags into one run.

    A failed call is logged as an error and training goes on: losing a 12-epoch run because the tracking
    server restarted would cost more than a gap in its charts, and every row is also in the JSON-lines log.
    """

    def __init__(self, target: TrackingTarget):
        from mlflow import MlflowClient

        self.target = target
        self._client = MlflowClient(tracking_uri=target.tracking_uri)

    @property
    def run_id(self) -> str:
        return self.target.run_id

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(key, float(value), timestamp, step) for key, value in values.items()]
        for start in range(0, len(metrics), _MAX_METRICS_PER_CALL):
            self._call("log metrics", metrics=metrics[start : start + _MAX_METRICS_PER_CALL])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        run_tags = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(run_tags), _MAX_TAGS_PER_CALL):
            self._call("set tags", tags=run_tags[start : start + _MAX_TAGS_PER_CALL])

    def _call(self, what: str, **batch: Any) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._client.log_batch(self.target.run_id, **batch)
        except (MlflowException, OSError) as error:
            log.error(
                "MLflow: could not %s in run %s at %s (%s); training goes on, the rows stay in the "
                "JSON-lines log",
                what,
                self.target.run_id,
                self.target.tracking_uri,
                error,
            )
