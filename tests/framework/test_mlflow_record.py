"""What a run records (frcnn_pipeline.framework.mlflow_record): each parameter once, a resumed run's changed
values as tags, too long values by mlflow.yml's strategy; the file a versioned dataset saved."""

from __future__ import annotations

import mlflow
import pytest
from kedro.io import DataCatalog, Version
from kedro_datasets.json import JSONDataset
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from frcnn_pipeline.framework.mlflow_record import RunParams, saved_file


@pytest.fixture
def run(tmp_path):
    """A run of a new SQLite store, active while the test logs; its client and id."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("record", artifact_location=(tmp_path / "artifacts").as_uri())
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment) as active:
            yield client, active.info.run_id
    finally:
        mlflow.set_tracking_uri(previous_uri)


def test_each_parameter_is_logged_once_and_a_resumed_run_keeps_its_first_values(run):
    client, run_id = run
    params = RunParams("tag", resumed={"train.max_iter": "4", "train.lr": "0.01"})
    params.log({"train.max_iter": 6, "train.lr": 0.01, "model.depth": 18.0})
    params.log({"model.depth": 18})  # a node's raw input: 18 for 18.0 is not a change
    params.log({"notes": "x" * (MAX_PARAM_VAL_LENGTH + 1)})
    logged = client.get_run(run_id).data
    assert logged.params == {"model.depth": "18.0"}
    assert logged.tags["changed_on_resume.train.max_iter"] == "6"
    assert "changed_on_resume.train.lr" not in logged.tags
    assert logged.tags["notes"] == "x" * (MAX_PARAM_VAL_LENGTH + 1)


def test_a_too_long_value_fails_by_default():
    with pytest.raises(ValueError, match="long_params_strategy"):
        RunParams().log({"notes": "x" * (MAX_PARAM_VAL_LENGTH + 1)})


def test_the_saved_file_of_a_versioned_dataset_is_in_the_session_s_version_folder(tmp_path):
    version = "2026-01-01T00.00.00.000Z"
    catalog = DataCatalog(
        {
            "report": JSONDataset(filepath=str(tmp_path / "report.json"), version=Version(None, version)),
            "plain": JSONDataset(filepath=str(tmp_path / "plain.json")),
        },
        save_version=version,
    )
    catalog.save("report", {"a": 1})
    assert saved_file(catalog, "report") == tmp_path / "report.json" / version / "report.json"
    assert saved_file(catalog, "report").is_file()
    assert saved_file(catalog, "plain") == tmp_path / "plain.json"


def test_the_saved_file_of_a_declared_dataset_wrapped_or_from_a_pattern(tmp_path):
    config = {
        "training_run": {
            "type": "frcnn_pipeline.datasets.RunRecordDataset",
            "versioned": True,
            "dataset": {"type": "json.JSONDataset", "filepath": str(tmp_path / "training_run.json")},
        },
        "{split}.coco_metrics": {
            "type": "json.JSONDataset",
            "filepath": str(tmp_path / "{split}" / "m.json"),
        },
    }
    catalog = DataCatalog.from_config(config, save_version="v1")
    catalog.save("training_run", {"a": 1})
    catalog.save("val.coco_metrics", {"AP": 0.5})
    assert saved_file(catalog, "training_run") == tmp_path / "training_run.json" / "v1" / "training_run.json"
    assert saved_file(catalog, "training_run").is_file()
    assert saved_file(catalog, "val.coco_metrics") == tmp_path / "val" / "m.json"
