"""The MLflow tracking store (frcnn_pipeline.framework.mlflow_store) on real SQLite files: what the check at
start-up says about a store that is locked, a folder or not a database, and how a copied project's store is
repointed into the copy. The read-only store and the whole `kedro run` are in
tests/framework/test_mlflow_hook.py."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tracking_stores import locked_by_another_process

from frcnn_pipeline.framework.mlflow_store import (
    TrackingStoreError,
    check_sqlite_store,
    repoint_moved_project,
)

ARTIFACTS = Path("data") / "09_tracking" / "artifacts"


def test_a_store_locked_by_another_process_names_that_process(tmp_path):
    database = tmp_path / "mlflow.db"
    sqlite3.connect(database).close()
    with locked_by_another_process(database) as pid, pytest.raises(TrackingStoreError) as raised:
        check_sqlite_store(f"sqlite:///{database}")
    message = str(raised.value)
    assert f"sqlite:///{database} is locked: process {pid} (" in message
    assert "Fix: end that process" in message and "conf/local/mlflow.yml" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("make", "problem", "fix"),
    [
        (lambda path: path.mkdir(), "is a folder, not an SQLite file", "Fix: move"),
        (lambda path: path.write_text("not sqlite"), "is not an SQLite database, or is damaged", "Fix: move"),
    ],
    ids=["folder", "not-a-database"],
)
def test_a_store_that_is_not_a_database_says_so(tmp_path, make, problem, fix):
    database = tmp_path / "mlflow.db"
    make(database)
    with pytest.raises(TrackingStoreError, match=f"sqlite:///{database} {problem}.*{fix}"):
        check_sqlite_store(f"sqlite:///{database}")


def test_the_check_creates_the_folder_and_leaves_the_store_as_it_was(tmp_path):
    database = tmp_path / "new" / "tracking" / "mlflow.db"
    check_sqlite_store(f"sqlite:///{database}")
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []
    check_sqlite_store("sqlite:///:memory:")  # nothing to check
    check_sqlite_store("http://127.0.0.1:5000")  # a server: kedro-mlflow's start-up finds out


def _files(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_copied_project_store_is_repointed_into_the_copy(tmp_path):
    original = tmp_path / "original"
    client = MlflowClient(f"sqlite:///{original}/data/09_tracking/mlflow.db")
    experiment = client.create_experiment("frcnn_pipeline", (original / ARTIFACTS).as_uri())
    run_id = client.create_run(experiment).info.run_id
    # What the original's run logged (MLflow keeps this process's artifact store of a run once it logged).
    first = original / ARTIFACTS / run_id / "artifacts" / "notes" / "first.txt"
    first.parent.mkdir(parents=True)
    first.write_text("first")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = _files(original)

    uri = f"sqlite:///{copy}/data/09_tracking/mlflow.db"
    stored = MlflowClient(uri).get_experiment(experiment).artifact_location
    assert stored == (original / ARTIFACTS).as_uri(), "MLflow recorded the original's folder"
    assert repoint_moved_project(uri, stored, (copy / ARTIFACTS).as_uri(), copy)

    moved = MlflowClient(uri)
    assert moved.get_experiment(experiment).artifact_location == (copy / ARTIFACTS).as_uri()
    assert moved.get_run(run_id).info.artifact_uri == (copy / ARTIFACTS / run_id / "artifacts").as_uri()
    moved.log_text(run_id, "second", "notes/second.txt")
    new_run = moved.create_run(experiment).info.run_id
    moved.log_text(new_run, "third", "notes/third.txt")
    assert (copy / ARTIFACTS / run_id / "artifacts" / "notes" / "second.txt").read_text() == "second"
    assert (copy / ARTIFACTS / new_run / "artifacts" / "notes" / "third.txt").is_file()
    assert [artifact.path for artifact in moved.list_artifacts(run_id, "notes")] == [
        "notes/first.txt",
        "notes/second.txt",
    ]
    assert _files(original) == before, "the original project is untouched"
    stored = moved.get_experiment(experiment).artifact_location
    assert not repoint_moved_project(uri, stored, (copy / ARTIFACTS).as_uri(), copy), "once"


def test_a_store_is_left_as_it_is_unless_it_moved_with_its_project(tmp_path):
    project = tmp_path / "project"
    uri = f"sqlite:///{project}/data/09_tracking/mlflow.db"
    check_sqlite_store(uri)
    here = (project / ARTIFACTS).as_uri()
    elsewhere = (tmp_path / "shared" / "artifacts").as_uri()
    # A location chosen outside the project, or one that is not the configured location of another folder.
    assert not repoint_moved_project(uri, elsewhere, here, project)
    assert not repoint_moved_project(uri, "s3://bucket/artifacts", here, project)
    assert not repoint_moved_project(uri, (tmp_path / "other" / "mlruns").as_uri(), here, project)
    # The same folder through a symbolic link.
    link = tmp_path / "link"
    link.symlink_to(project)
    assert not repoint_moved_project(uri, (link / ARTIFACTS).as_uri(), here, project)
    # A store outside the project may serve several projects: its locations are theirs.
    outside = f"sqlite:///{tmp_path}/shared/mlflow.db"
    check_sqlite_store(outside)
    assert not repoint_moved_project(outside, (tmp_path / "old" / ARTIFACTS).as_uri(), here, project)
