"""Which MLflow run a training continues: the run whose id the checkpoint it resumes holds, provided the
training will resume that checkpoint (engine/resume.py) and the store still has the run."""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from frcnn_pipeline.config import ModelParams, TrainParams
from frcnn_pipeline.data.fingerprint import tables_fingerprint
from frcnn_pipeline.engine.checkpoint import CheckpointManager, load_checkpoint
from frcnn_pipeline.engine.resume import ResumeRefusedError, check_resume

log = logging.getLogger(__name__)

TRAIN_IMAGES, TRAIN_ANNOTATIONS = "train_images", "train_annotations"


def resumed_checkpoint(train: TrainParams) -> Path | None:
    """The newest checkpoint of `train.run_name`, which the training resumes (None: nothing to resume)."""
    if not train.checkpoint.resume:
        return None
    return CheckpointManager(Path(train.checkpoint.dir) / train.run_name).latest()


def stored_train_data_fingerprint(pipeline, catalog) -> str | None:
    """The train tables' fingerprint when the pipeline reads them as stored (None: this run writes them)."""
    if not {TRAIN_IMAGES, TRAIN_ANNOTATIONS} <= pipeline.inputs():
        return None
    return tables_fingerprint(catalog.load(TRAIN_IMAGES), catalog.load(TRAIN_ANNOTATIONS))


def run_to_continue(
    train: TrainParams, model: ModelParams, pipeline, catalog, client: MlflowClient
) -> Run | None:
    """The MLflow run of the checkpoint that `train.run_name` resumes (None: the training starts a new run).

    A checkpoint the training will refuse (another model, solver or train data: engine/resume.py) keeps
    its run as it is: this run is a new one, and the train node stops with the reason.
    """
    checkpoint = resumed_checkpoint(train)
    state = load_checkpoint(checkpoint, mmap=True) if checkpoint else {}
    run_id = state.get("tracking_run_id")
    if run_id is None:
        return None
    try:
        check_resume(
            state,
            checkpoint,
            model_cfg=model,
            train=train,
            data_fingerprint=stored_train_data_fingerprint(pipeline, catalog),
        )
    except ResumeRefusedError:
        log.info(
            "train.run_name %r cannot resume %s: a new MLflow run, not a continuation of %s",
            train.run_name,
            checkpoint,
            run_id,
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
            train.run_name,
            run_id,
            client.tracking_uri,
        )
        return None
    if previous.info.lifecycle_stage == "deleted":
        log.warning(
            "MLflow run %s of train.run_name %r was deleted: a new run starts", run_id, train.run_name
        )
        return None
    return previous
