"""The project's kedro-mlflow hook: telemetry off, tracking switched off by a setting, node 0 only, artefacts
and metrics from catalog metadata; a store that cannot be used stops `kedro run` at start-up in a few lines,
one that fails mid-run does not stop it, and a copied project logs into its own folder."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import DataCatalog
from kedro_datasets.json import JSONDataset
from mlflow import MlflowClient
from tracking_stores import locked_by_another_process, read_only

from frcnn_pipeline.framework.hooks import NotTheMainProcessError, RunConfigHook
from frcnn_pipeline.framework.mlflow_hook import ProjectMlflowHook
from frcnn_pipeline.framework.mlflow_store import TrackingStoreError
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector

PROJECT = Path(__file__).resolve().parents[2]
TINY_DEMO = {"ingest": {"demo": {"image_size": 64, "num_train_images": 6, "num_val_images": 3}}}
# Variables by which MLflow decides on its own that it runs in CI or a test (and sends nothing).
CI_VARIABLES = ("CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")


def test_mlflow_telemetry_is_off_before_mlflow_is_imported_by_the_kedro_cli(tmp_path):
    """The kedro CLI imports the project's settings before any plugin imports mlflow."""
    script = (
        "import atexit, sys\n"
        "def report():\n"
        "    from mlflow.telemetry.client import get_telemetry_client\n"
        "    print('TELEMETRY', get_telemetry_client())\n"
        "atexit.register(report)\n"
        "sys.argv = ['kedro', 'registry', 'list']\n"
        "from kedro.framework.cli.cli import main\n"
        "main()\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in CI_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert "TELEMETRY None" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


def _project(root: Path, mlflow_override: str | None = None) -> Path:
    shutil.copytree(PROJECT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    if mlflow_override:
        (root / "conf" / "local" / "mlflow.yml").write_text(mlflow_override)
    (root / "src").mkdir()
    shutil.copy2(PROJECT / "pyproject.toml", root)
    return root


def _run(root: Path, pipelines: list[str], params: dict) -> None:
    bootstrap_project(root)
    with KedroSession.create(root, runtime_params=params) as session:
        session.run(pipeline_names=pipelines)


def _runs(root: Path) -> list:
    client = MlflowClient(f"sqlite:///{root}/data/09_tracking/mlflow.db")
    experiment = client.get_experiment_by_name("frcnn_pipeline")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def _kedro_run(root: Path, *args: str, prefix: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """`kedro run` in a subprocess, as a user starts it: its exit status and the lines it printed."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    env.pop("COLUMNS", None)
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "kedro", "run", *args],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    return result.returncode, (result.stdout + result.stderr).rstrip().splitlines()


def _stopped_at_start_up(code: int, lines: list[str], problem: str) -> str:
    """Checks that the run failed before any node with a few lines; returns the error line."""
    output = "\n".join(lines)
    assert code == 1, output
    assert len(lines) <= 15 and "Traceback" not in output and "Running node" not in output, output
    error, log_line = lines[-2:]
    assert error.startswith("Error: The MLflow tracking store sqlite:///") and problem in error, output
    assert "Fix: " in error and "conf/local/mlflow.yml" in error
    assert log_line.startswith("Full traceback: logs/error_")
    return error


def test_a_store_locked_by_another_process_stops_the_run_at_start_up_in_a_few_lines(tmp_path):
    root = _project(tmp_path / "locked")
    database = root / "data" / "09_tracking" / "mlflow.db"
    database.parent.mkdir(parents=True)
    sqlite3.connect(database).close()
    with locked_by_another_process(database) as pid:
        code, lines = _kedro_run(root, "--pipeline", "ingest")
    error = _stopped_at_start_up(code, lines, "is locked: process")
    assert f"process {pid} (" in error and "Fix: end that process" in error


def test_a_read_only_store_stops_the_run_at_start_up_in_a_few_lines(tmp_path):
    root = _project(tmp_path / "read_only")
    folder = root / "data" / "09_tracking"
    folder.mkdir(parents=True)
    sqlite3.connect(folder / "mlflow.db").close()
    with read_only(folder) as prefix:
        code, lines = _kedro_run(root, "--pipeline", "ingest", prefix=tuple(prefix))
    error = _stopped_at_start_up(code, lines, "cannot be opened or written (attempt to write a readonly")
    assert f"Fix: make {folder / 'mlflow.db'} and its folder {folder} writable" in error


def test_a_folder_in_place_of_the_store_stops_a_tracked_run_and_not_an_untracked_one(tmp_path, monkeypatch):
    root = _project(tmp_path / "folder")
    (root / "data" / "09_tracking" / "mlflow.db").mkdir(parents=True)
    monkeypatch.chdir(root)
    with pytest.raises(TrackingStoreError, match=r"mlflow.db is a folder, not an SQLite file\. Fix: move"):
        _run(root, ["ingest"], TINY_DEMO)
    assert not (root / "data" / "08_reporting" / "validation_summary.json").exists(), "no node ran"
    # The fix the message offers: tracking switched off, the same run goes on.
    (root / "conf" / "local" / "mlflow.yml").write_text(
        "tracking:\n  disable_tracking:\n    pipelines: [ingest]\n"
    )
    _run(root, ["ingest"], TINY_DEMO)
    assert (root / "data" / "08_reporting" / "validation_summary.json").is_file()
    assert (root / "data" / "09_tracking" / "mlflow.db").is_dir(), "the store was not touched"


def test_a_copied_project_logs_its_artifacts_into_the_copy(tmp_path, monkeypatch, caplog):
    original = _project(tmp_path / "original")
    monkeypatch.chdir(original)
    _run(original, ["ingest", "weights"], TINY_DEMO)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    artifacts = Path("data") / "09_tracking" / "artifacts"
    before = sorted(path.name for path in (original / artifacts).iterdir())
    monkeypatch.chdir(copy)
    with caplog.at_level(logging.WARNING, logger="frcnn_pipeline.framework.mlflow_store"):
        _run(copy, ["weights"], TINY_DEMO)  # logs the data record as an artefact
        _run(copy, ["weights"], TINY_DEMO)
    [moved] = [record.getMessage() for record in caplog.records if "copied or moved" in record.getMessage()]
    assert f"copied or moved from {original}" in moved, "warned once, at the first run in the copy"
    assert sorted(path.name for path in (original / artifacts).iterdir()) == before
    runs = {run.info.run_id: run for run in _runs(copy)}
    new = [run_id for run_id in runs if run_id not in before]
    assert len(new) == 2
    for run_id in new:
        assert (copy / artifacts / run_id / "artifacts" / "data" / "validation_summary.json").is_file()
    assert all(run.info.artifact_uri.startswith((copy / artifacts).as_uri()) for run in runs.values())


def test_tracking_switched_off_by_a_setting_the_pipeline_runs_the_same(tmp_path, monkeypatch):
    off = "tracking:\n  disable_tracking:\n    pipelines: [ingest]\n"
    root = _project(tmp_path / "off", off)
    monkeypatch.chdir(root)
    _run(root, ["ingest"], TINY_DEMO)
    assert _runs(root) == []
    summary = root / "data" / "08_reporting" / "validation_summary.json"
    assert summary.is_file() and "fingerprints" in summary.read_text()
    assert mlflow.active_run() is None


def test_only_node_0_of_a_multi_node_run_tracks(tmp_path, monkeypatch):
    root = _project(tmp_path / "node1")
    monkeypatch.chdir(root)
    with pytest.raises(NotTheMainProcessError, match="node 1 of 2"):
        _run(root, ["ingest"], {**TINY_DEMO, "runtime": {"num_nodes": 2, "node_rank": 1}})
    assert _runs(root) == [], "node 1 neither tracks nor writes the project's store"
    _run(root, ["ingest"], TINY_DEMO)
    assert [run.info.run_name for run in _runs(root)] == ["ingest"]
    assert mlflow.active_run() is None, "the session closed its run"


def _in_run(store: str, experiment: str, log) -> str:
    """Calls `log()` inside a new MLflow run of `store`; returns the run id."""
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        with mlflow.start_run(experiment_id=experiment) as run:
            log()
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return run.info.run_id


@pytest.fixture
def store(tmp_path) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("hook", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client, experiment


def test_catalog_metadata_logs_artefacts_and_metrics(tmp_path, store):
    uri, client, experiment = store
    metrics = JSONDataset(
        filepath=str(tmp_path / "coco_metrics.json"),
        metadata={"mlflow": {"artifact_path": "evaluate", "log_metrics": True}},
    )
    # As the evaluate reports: the numbers under one key, the file in the folder of its evaluation and split.
    record = JSONDataset(
        filepath=str(tmp_path / "record.json"),
        metadata={"mlflow": {"artifact_path": "evaluate/val", "log_metrics": "metrics"}},
    )
    untracked = JSONDataset(filepath=str(tmp_path / "other.json"))
    hook = ProjectMlflowHook(RunConfigHook())
    hook._catalog = DataCatalog(
        {"coco_metrics": metrics, "evaluate.val.coco_metrics": record, "other": untracked}
    )
    values = {"AP": 0.25, "AP50": 0.5, "per_size": {"small": 0.1}, "name": "val", "ok": True}
    saved = {
        "coco_metrics": values,
        "evaluate.val.coco_metrics": {"metrics": {"AP": 0.3}, "model": {"provenance": {"iterations": 4}}},
        "other": values,
    }

    def log():
        for name, data in saved.items():
            hook._catalog.get(name).save(data)
            hook.after_dataset_saved(dataset_name=name, data=data, node=None)

    run_id = _in_run(uri, experiment, log)
    logged = client.get_run(run_id).data.metrics
    assert logged == {
        "coco_metrics/AP": 0.25,
        "coco_metrics/AP50": 0.5,
        "coco_metrics/per_size.small": 0.1,
        "evaluate.val.coco_metrics/AP": 0.3,
    }
    assert [a.path for a in client.list_artifacts(run_id)] == ["evaluate"]
    assert [a.path for a in client.list_artifacts(run_id, "evaluate")] == [
        "evaluate/coco_metrics.json",
        "evaluate/val",
    ]
    assert [a.path for a in client.list_artifacts(run_id, "evaluate/val")] == ["evaluate/val/record.json"]


def test_a_loaded_model_is_recorded_with_its_file_and_the_run_that_trained_it(store):
    uri, client, experiment = store
    model = SavedDetector(
        {"w": torch.ones(1)},
        TRAINED_MODEL,
        provenance={"tracking_run_id": "a" * 32},
        origin={"sha256": "b" * 64, "version": "2026-01-01T00.00.00.000Z"},
    )
    hook = ProjectMlflowHook(RunConfigHook())
    run_id = _in_run(uri, experiment, lambda: hook.after_dataset_loaded("trained_model", model, node=None))
    run = client.get_run(run_id)
    assert run.data.params == {
        "trained_model.sha256": "b" * 64,
        "trained_model.version": "2026-01-01T00.00.00.000Z",
    }
    assert run.data.tags["trained_model.mlflow_run_id"] == "a" * 32


def test_a_store_that_fails_mid_run_costs_one_warning_and_not_the_run(tmp_path, store, caplog):
    uri, client, experiment = store
    metrics = JSONDataset(
        filepath=str(tmp_path / "coco_metrics.json"),
        metadata={"mlflow": {"artifact_path": "evaluate", "log_metrics": True}},
    )
    hook = ProjectMlflowHook(RunConfigHook())
    hook._catalog = DataCatalog({"coco_metrics": metrics})
    hook._store_uri = uri  # as after_context_created sets it

    def log():
        run_id = hook.run_id = mlflow.active_run().info.run_id  # as before_pipeline_run sets it
        client.delete_run(run_id)  # from now on the store refuses to log into this run
        for value in (0.25, 0.5):
            metrics.save({"AP": value})
            hook.after_dataset_saved(dataset_name="coco_metrics", data={"AP": value}, node=None)
        client.restore_run(run_id)

    with caplog.at_level(logging.WARNING, logger="frcnn_pipeline.framework.mlflow_hook"):
        run_id = _in_run(uri, experiment, log)
    [warning] = [record.getMessage() for record in caplog.records]
    assert f"MLflow: could not log coco_metrics (run {run_id} at {uri}: MlflowException: " in warning
    assert "the run goes on untracked" in warning
    assert client.get_run(run_id).data.metrics == {}, "the second save was not tried against the store"
    assert metrics.load() == {"AP": 0.5}, "the outputs are saved as usual"


def test_a_failed_run_is_closed_in_one_line_however_many_nodes_reentered_it(store, caplog):
    uri, client, experiment = store
    hook = ProjectMlflowHook(RunConfigHook())
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        run_id = hook.run_id = mlflow.start_run(experiment_id=experiment).info.run_id
        for _ in range(3):
            mlflow.start_run(run_id=run_id, nested=True)  # kedro-mlflow's before_node_run, at each node
        with caplog.at_level(logging.INFO):
            hook.on_pipeline_error(RuntimeError("a node failed"), {}, None, None)
        left_open = mlflow.active_run()
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(previous_uri)
    closing = [message for message in caplog.messages if "closed because of an error" in message]
    assert closing == [f"The run '{run_id}' was closed because of an error in the pipeline."]
    assert left_open is None
    assert client.get_run(run_id).info.status == "FAILED"
