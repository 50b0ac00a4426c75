"""The training and its MLflow run follow one resume decision, made once per run by the run-configuration
hook (framework/hooks.py): the train node gets it as `run_resume`, and the MLflow hook continues the run
whose id the checkpoint holds (framework/mlflow_resume.py) exactly when the training resumes it."""

from pathlib import Path

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from mlflow import MlflowClient
from test_hooks import context_with
from tiny_training import TINY_MODEL, runtime_config, train_config, train_from_parameters

from frcnn_pipeline.engine.checkpoint import NoReadableCheckpointError
from frcnn_pipeline.engine.resume import ResumeDecision, ResumeRefusedError
from frcnn_pipeline.engine.tracking import TrackingTarget
from frcnn_pipeline.framework import hooks
from frcnn_pipeline.framework.hooks import RunConfigHook
from frcnn_pipeline.framework.mlflow_resume import run_to_continue
from frcnn_pipeline.pipelines.run_inputs import RUN_RESUME
from frcnn_pipeline.pipelines.train import create_pipeline


@pytest.fixture
def decide(monkeypatch, tiny_tables):
    """The decision of a session that runs the train pipeline with these `train:` parameters, as the train
    node (the catalog's `run_resume`) and the MLflow hook (`resume_decision`) read it."""
    monkeypatch.setattr(hooks.project, "pipelines", {})

    def decided(train: dict) -> ResumeDecision:
        hook = RunConfigHook()
        parameters = {"model": TINY_MODEL, "train": train, "runtime": runtime_config()}
        hook.after_context_created(context_with(parameters))
        images, annotations = tiny_tables
        catalog = DataCatalog(
            {"train_images": MemoryDataset(images), "train_annotations": MemoryDataset(annotations)}
        )
        hook.before_pipeline_run(create_pipeline(), catalog)
        assert catalog.load(RUN_RESUME) is hook.resume_decision
        return hook.resume_decision

    return decided


def test_the_training_and_its_mlflow_run_follow_one_decision(tmp_path, tiny_tables, decide):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    images, annotations = tiny_tables
    train = train_config(tmp_path, max_iter=2)

    # No checkpoint: both start afresh.
    fresh = decide(train)
    assert fresh.checkpoint is None and run_to_continue(fresh, "test", client) is None
    tracking = TrackingTarget(client.tracking_uri, run_id)
    first = train_from_parameters(
        images, annotations, 2, TINY_MODEL, train, runtime_config(), resume=fresh, tracking=tracking
    )
    assert first["record"]["resumed_from_iteration"] == 0

    # A checkpoint: both resume it, the training from its iteration and the tracking in its run.
    train["solver"]["max_iter"] = 3
    resumed = decide(train)
    assert resumed.checkpoint == Path(first["record"]["last_checkpoint"]) and resumed.refusal is None
    assert run_to_continue(resumed, "test", client).info.run_id == run_id
    second = train_from_parameters(
        images, annotations, 2, TINY_MODEL, train, runtime_config(), resume=resumed
    )
    assert second["record"]["resumed_from_iteration"] == 2

    # A checkpoint the training refuses: the training stops, and the tracking starts a new run.
    train["solver"]["base_lr"] = 0.5
    refused = decide(train)
    assert isinstance(refused.refusal, ResumeRefusedError)
    assert run_to_continue(refused, "test", client) is None
    with pytest.raises(ResumeRefusedError, match=r"another solver \(solver\.base_lr"):
        train_from_parameters(images, annotations, 2, TINY_MODEL, train, runtime_config(), resume=refused)


def test_a_folder_the_training_cannot_start_from_is_a_refusal_for_both(tmp_path, decide):
    train = train_config(tmp_path)
    folder = Path(train["checkpoint"]["dir"]) / train["run_name"]
    folder.mkdir(parents=True)
    (folder / "model_0000002.pth").write_bytes(b"truncated")
    unreadable = decide(train)
    assert isinstance(unreadable.refusal, NoReadableCheckpointError) and unreadable.run_to_continue is None

    train["checkpoint"]["resume"] = False
    switched_off = decide(train)
    assert isinstance(switched_off.refusal, FileExistsError) and switched_off.checkpoint is None
    assert "model_0000002.pth" in str(switched_off.refusal)


def test_a_pipeline_that_does_not_train_decides_nothing(tmp_path, decide):
    """A later session of the process (a notebook, a test) keeps no decision of an earlier training."""
    assert decide(train_config(tmp_path)) is not None
    hook = RunConfigHook()
    hook.after_context_created(context_with({}))
    catalog = DataCatalog()
    hook.before_pipeline_run(Pipeline([]), catalog)
    assert hook.resume_decision is None and RUN_RESUME not in catalog
