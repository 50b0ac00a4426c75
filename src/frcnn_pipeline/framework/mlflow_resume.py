"""Which MLflow run a training continues: the run whose id the checkpoint holds, when the run's resume
decision (engine/resume.py, decided once by the run-configuration hook) resumes that checkpoint and the store
still has the run."""

from __future__ import annotations

import logging

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from frcnn_pipeline.engine.resume import ResumeDecision

log = logging.getLogger(__name__)


def run_to_continue(decision: ResumeDecision, run_name: str, client: MlflowClient) -> Run | None:
    """The MLflow run of the checkpoint that the training of `run_name` resumes (None: a new run).

    A checkpoint the training refuses (another model, solver or train data: engine/resume.py) keeps its run
    as it is: this run is a new one, and the train node stops with the reason.
    """
    run_id = decision.run_to_continue
    if run_id is None:
        if decision.refusal is not None and decision.tracking_run_id is not None:
            log.info(
                "train.run_name %r cannot resume %s: a new MLflow run, not a continuation of %s",
                run_name,
                decision.checkpoint,
                decision.tracking_run_id,
            )
        return None
    try:
        previous = client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        log.warning(
            "The checkpoint of train.run_name %r was tracked in MLflow run %s, which is not in %s: "
            "the training continues in a new run",
            run_name,
            run_id,
            client.tracking_uri,
        )
        return None
    if previous.info.lifecycle_stage == "deleted":
        log.warning("MLflow run %s of train.run_name %r was deleted: a new run starts", run_id, run_name)
        return None
    return previous
