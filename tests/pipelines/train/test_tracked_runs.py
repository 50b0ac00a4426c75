"""Every run kept and comparable: real Kedro sessions in a tmp project copy, read back with MLflow's client.

One module-scoped sequence (tiny demo, 64 px, a few iterations), then each test checks one promise:
1. `lr_a`: ingest + weights + train, base_lr 1e-3, 4 iterations;
2. `lr_b`: train, base_lr 2e-3, 4 iterations (another run_name: a second run);
3. `lr_b` again: nothing left to train;
4. `lr_a` with max_iter 6: resumes the checkpoint;
5. `lr_a` with another base_lr: the resume is refused.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro_params import TINY_DEMO, nested
from mlflow import MlflowClient

from frcnn_pipeline.config import InferenceParams
from frcnn_pipeline.engine.resume import ResumeRefusedError
from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes
from frcnn_pipeline.evaluation.inference import category_ids_by_label, coco_results, run_inference
from frcnn_pipeline.modeling.saved import SavedDetector
from frcnn_pipeline.runtime.world import WorldConfig

PROJECT = Path(__file__).resolve().parents[3]
TINY = {
    **TINY_DEMO,
    "ingest.demo.num_train_images": 12,
    "ingest.demo.num_val_images": 6,
    "train.log_period": 1,
    "train.eval_period": 2,
    "train.checkpoint.period": 2,
    "evaluate.inference.batch_size": 2,
    "evaluate.inference.score_threshold": 0.0,
}
TRAIN_REPORTS = ("training_metrics.csv", "training_curves.png", "training_run.json")


def _files(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


class Project:
    """A copy of the project (conf, pyproject) where `kedro run` writes its data and tracking store."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copytree(PROJECT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
        (root / "conf" / "local").mkdir()
        (root / "src").mkdir()  # the package itself is the one under test, already on the path
        shutil.copy2(PROJECT / "pyproject.toml", root)
        self.tracking_uri = f"sqlite:///{root}/data/09_tracking/mlflow.db"  # conf/base/mlflow.yml's store

    def run(self, pipelines: list[str], **params: Any) -> None:
        bootstrap_project(self.root)
        with KedroSession.create(self.root, runtime_params=nested({**TINY, **params})) as session:
            session.run(pipeline_names=pipelines)

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def runs(self) -> dict[str, mlflow.entities.Run]:
        experiment = self.client.get_experiment_by_name("frcnn_pipeline")
        return {run.info.run_name: run for run in self.client.search_runs([experiment.experiment_id])}

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    def snapshot(self) -> dict[str, Any]:
        """The train outputs on disk, the MLflow runs, and the steps of their loss and AP histories."""
        runs = self.runs()
        steps = {
            (name, key): [step for step, _ in self.history(run.info.run_id, key)]
            for name, run in runs.items()
            for key in ("train/total_loss", "val/AP")
        }
        return {"outputs": self.outputs(), "runs": runs, "steps": steps}

    def outputs(self) -> dict[str, str]:
        """Every versioned train output and its content hash."""
        return {
            **_files(self.root / "data" / "08_reporting" / "train"),
            **{f"models/{k}": v for k, v in _files(self.root / "data" / "06_models").items() if "/20" in k},
        }


@pytest.fixture(scope="module")
def project(module_tmp) -> Project:
    return Project(module_tmp("tracked") / "project")


@pytest.fixture(scope="module")
def sequence(project: Project) -> dict[str, Any]:
    """Runs the four `kedro run`s and keeps what each left behind."""
    seen: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project.root)  # the engine's checkpoint and log folders are relative, as with `kedro run`
        project.run(["ingest", "weights", "train"], **{"train.run_name": "lr_a", "train.solver.max_iter": 4})
        seen["after_a"] = project.snapshot()
        project.run(
            ["train"], **{"train.run_name": "lr_b", "train.solver.base_lr": 2e-3, "train.solver.max_iter": 4}
        )
        seen["after_b"] = project.snapshot()
        project.run(
            ["train"], **{"train.run_name": "lr_b", "train.solver.base_lr": 2e-3, "train.solver.max_iter": 4}
        )
        seen["after_rerun"] = project.snapshot()
        project.run(["train"], **{"train.run_name": "lr_a", "train.solver.max_iter": 6})
        seen["after_resume"] = project.snapshot()
        with pytest.raises(ResumeRefusedError, match=r"trained with another solver \(solver\.base_lr"):
            project.run(
                ["train"],
                **{"train.run_name": "lr_a", "train.solver.max_iter": 8, "train.solver.base_lr": 5e-3},
            )
        experiment = project.client.get_experiment_by_name("frcnn_pipeline")
        seen["after_refused"] = project.client.search_runs([experiment.experiment_id])
    return seen


def test_two_runs_with_different_lr_are_read_back_with_mlflow(sequence):
    runs, steps = sequence["after_b"]["runs"], sequence["after_b"]["steps"]
    assert sorted(runs) == ["lr_a", "lr_b"]
    lr = {name: run.data.params["train.solver.base_lr"] for name, run in runs.items()}
    assert lr == {"lr_a": "0.001", "lr_b": "0.002"}
    for name, run in runs.items():
        assert steps[name, "train/total_loss"] == [1, 2, 3, 4], "loss history with one step per iteration"
        assert steps[name, "val/AP"] == [2, 4]
        assert {"val/AP50", "val/AP75", "train/lr", "train/images_per_s", "train/memory_mb"} <= set(
            run.data.metrics
        )


def test_a_run_records_its_parameters_code_data_and_weights(sequence):
    run = sequence["after_a"]["runs"]["lr_a"]
    params, tags = run.data.params, run.data.tags
    # Every resolved parameter, flattened, also those of pipelines that did not run.
    assert params["model.backbone.depth"] == "18" and params["predict.score_threshold"] == "0.5"
    assert tags["kedro_env"] == "local" and "version.torch" in tags and "version.kedro" in tags
    assert tags["mlflow.source.git.commit"] == "unknown (not a git checkout)"  # a tmp copy of the project
    assert (tags["hardware.device"], tags["hardware.world_size"], tags["hardware.num_nodes"]) == (
        "cpu",
        "1",
        "1",
    )
    assert len(params["data.train.sha256"]) == 64 and params["data.train.images_kept"] == "12"
    assert params["data.val.annotations_dropped"] == "0"
    assert len(params["initial_weights.sha256"]) == 64 and params["weights.source"] == "none"


def test_the_model_artefact_loads_and_evaluates_to_the_logged_ap(project: Project, sequence):
    run = sequence["after_b"]["runs"]["lr_b"]
    folder = Path(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, tracking_uri=project.tracking_uri)
    )
    model = SavedDetector.from_bytes((folder / "model" / "trained_model.safetensors").read_bytes())
    record = json.loads((folder / "train" / "training_run.json").read_text())
    assert model.provenance["tracking_run_id"] == run.info.run_id, "the model names the run that trained it"
    primary = project.root / "data" / "03_primary"
    val_images = pd.read_parquet(primary / "val_images.parquet")
    categories = pd.read_parquet(primary / "categories.parquet")
    ground_truth = json.loads((primary / "val_ground_truth.json").read_text())
    # The inference settings, read back from the run's parameters.
    prefix = "evaluate.inference."
    options = {
        k.removeprefix(prefix): _param_value(v) for k, v in run.data.params.items() if k.startswith(prefix)
    }

    records = run_inference(
        model.state_dict, model.model_config, len(categories), val_images["path"].tolist(),
        world=WorldConfig(), options=InferenceParams.model_validate(options),
    )  # fmt: skip
    detections = coco_results(records, val_images["image_id"].tolist(), category_ids_by_label(categories))
    measured = evaluate_boxes(ground_truth, detections).metrics()

    logged = dict(project.history(run.info.run_id, "val/AP"))
    assert measured["AP"] == pytest.approx(logged[4], abs=1e-12)
    final = record["final_evaluation"]
    assert {name: final[name] for name in measured} == pytest.approx(measured, abs=1e-12)
    assert measured["AR100"] > 0, "a model that finds nothing would make this comparison empty"
    assert (folder / "train" / "training_curves.png").is_file() and (folder / "best_model").is_dir()


def test_a_second_run_and_a_rerun_overwrite_no_report(sequence):
    after_a, after_b = sequence["after_a"]["outputs"], sequence["after_b"]["outputs"]
    assert after_a.items() <= after_b.items(), "the first run's reports and model are still there, unchanged"
    versions = {path.split("/")[-2] for path in after_b if path.endswith(TRAIN_REPORTS)}
    assert len(versions) == 2, "one version per run"
    # The rerun with nothing left to train writes nothing: no version, no changed byte, no new MLflow run,
    # no new metric.
    rerun = sequence["after_rerun"]
    assert rerun["outputs"] == after_b
    assert rerun["runs"].keys() == sequence["after_b"]["runs"].keys()
    assert rerun["steps"] == sequence["after_b"]["steps"]


def test_a_resumed_training_appends_to_the_same_mlflow_run(sequence):
    resumed = sequence["after_resume"]
    before, after = sequence["after_b"]["runs"]["lr_a"], resumed["runs"]["lr_a"]
    assert after.info.run_id == before.info.run_id and len(resumed["runs"]) == 2
    assert resumed["steps"]["lr_a", "train/total_loss"] == [1, 2, 3, 4, 5, 6]
    assert resumed["steps"]["lr_a", "val/AP"] == [2, 4, 6]
    # MLflow keeps a parameter as first logged; the raised max_iter is recorded beside it.
    assert after.data.params["train.solver.max_iter"] == "4"
    assert after.data.tags["changed_on_resume.train.solver.max_iter"] == "6"


def test_a_refused_resume_leaves_the_training_run_as_it_was(sequence):
    """The training refuses another solver under the same run_name; its MLflow run is not continued."""
    trained = sequence["after_resume"]["runs"]["lr_a"]
    lr_a = {run.info.run_id: run for run in sequence["after_refused"] if run.info.run_name == "lr_a"}
    assert len(lr_a) == 2, "the refused attempt is a run of its own"
    kept = lr_a.pop(trained.info.run_id)
    assert kept.info.status == "FINISHED" and kept.data.tags == trained.data.tags
    assert kept.data.params == trained.data.params
    [refused] = lr_a.values()
    assert refused.info.status == "FAILED" and refused.data.params["train.solver.base_lr"] == "0.005"


def _param_value(text: str):
    """A logged parameter back as its value: MLflow stores str(value), so a plain string stays as written."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
