"""Project hooks. The parameter check through real Kedro sessions, in a copy of the project: a typo or a wrong
type stops the run before any work, naming the key, the nearest valid one and where it is set; valid
parameters run. The evaluation splits of this run's config decide the per-split pipelines. Missing inputs
name the pipeline that writes them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_cli import kedro_run

from frcnn_pipeline import hooks
from frcnn_pipeline.pipelines.evaluate_initial_weights import (
    create_pipeline as create_evaluate_initial_weights_pipeline,
)
from frcnn_pipeline.pipelines.inference_backend import TORCH, use_inference_backend
from frcnn_pipeline.pipelines.predict import create_pipeline as create_predict_pipeline
from frcnn_pipeline.pipelines.splits import (
    DEFAULT_EVALUATION_SPLITS,
    evaluation_splits,
    use_evaluation_splits,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMALL_DEMO = {"image_size": 64, "num_train_images": 10, "num_val_images": 4}
# One interpreter runs every case (Kedro's import is the slow part): a session per case, ingest only.
SESSIONS_SCRIPT = """
import json, sys
from pathlib import Path
from kedro.framework.startup import bootstrap_project
bootstrap_project(Path.cwd())
from kedro.framework.session import KedroSession
for env, params in json.loads(sys.argv[1]):
    result = {"env": env, "error": None, "message": ""}
    try:
        with KedroSession.create(Path.cwd(), env=env, runtime_params=params) as session:
            session.run(pipeline_name="ingest")
    except Exception as error:
        result.update(error=type(error).__name__, message=str(error))
    result["files_written"] = sorted(str(p) for p in Path("data").rglob("*") if p.is_file())
    print("RESULT", json.dumps(result), flush=True)
"""


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> dict:
    project = tmp_path_factory.mktemp("project")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(PROJECT_ROOT / "src", project / "src", ignore=ignore)
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", project)
    typo = project / "conf" / "typo"
    typo.mkdir()
    (typo / "parameters_runtime.yml").write_text("runtime:\n  nproc_per_nod: 8\n")
    small_demo = {"ingest": {"demo": SMALL_DEMO}}
    cases = [
        ["typo", small_demo],
        ["base", {**small_demo, "train": {"solver": {"max_iter": "abc"}}}],
        ["base", small_demo],
    ]
    env = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": os.pathsep.join([str(project / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    completed = subprocess.run(
        [sys.executable, "-c", SESSIONS_SCRIPT, json.dumps(cases)],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    results = [json.loads(line[7:]) for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == len(cases), completed.stdout[-3000:] + completed.stderr[-3000:]
    return {"typo": results[0], "wrong_type": results[1], "valid": results[2]}


def test_a_typo_in_an_env_file_stops_the_run_naming_key_suggestion_and_file(sessions):
    result = sessions["typo"]
    assert result["error"] == "ParameterError" and result["files_written"] == []
    assert result["message"].splitlines() == [
        "Invalid parameters (env 'typo'); fix them where named:",
        "  runtime.nproc_per_nod: unknown parameter; did you mean runtime.nproc_per_node? "
        "[conf/typo/parameters_runtime.yml]",
        "Every parameter, what it accepts and its default: docs/parameters.md",
    ]


def test_a_wrong_type_from_params_names_key_value_and_type(sessions):
    result = sessions["wrong_type"]
    assert result["error"] == "ParameterError" and result["files_written"] == []
    assert "  train.solver.max_iter: 'abc' is not an integer [--params]" in result["message"].splitlines()


def test_valid_parameters_run(sessions):
    result = sessions["valid"]
    assert result["error"] is None, result["message"]
    assert {"data/03_primary/train_images.parquet", "data/01_raw/demo/manifest.json"} <= set(
        result["files_written"]
    )


def test_pipeline_before_its_inputs_exist_names_the_pipeline_to_run(project):
    root, _ = project
    result = kedro_run(root, "--pipeline", "train")
    assert result.returncode == 1
    last = (result.stdout + result.stderr).rstrip().splitlines()[-2]
    assert last == (
        "Error: This pipeline's inputs do not exist yet. Run first: `kedro run --pipeline ingest` "
        "(writes categories, train_annotations, train_images); then `kedro run --pipeline weights` "
        "(writes initial_weights)."
    )
    assert not (root / "data" / "08_reporting").exists() or not any(
        (root / "data" / "08_reporting").iterdir()
    )


def context_with(parameters: dict) -> SimpleNamespace:
    return SimpleNamespace(config_loader={"parameters": parameters})


@pytest.fixture
def reconfigured(monkeypatch):
    calls = []
    monkeypatch.setattr(hooks.project.pipelines, "configure", calls.append)
    yield calls
    use_evaluation_splits(DEFAULT_EVALUATION_SPLITS)


def test_the_hook_uses_the_configured_splits_and_rebuilds_pipelines_when_they_change(reconfigured):
    splits = {"train": {}, "val": {}, "test": {"annotation_file": "t.json", "image_dir": "t"}}
    hooks.SplitsHook().after_context_created(context_with({"ingest": {"splits": splits}}))
    assert evaluation_splits() == ("val", "test")
    assert reconfigured == [f"{hooks.project.PACKAGE_NAME}.pipeline_registry"]
    hooks.SplitsHook().after_context_created(context_with({"ingest": {"splits": splits}}))
    assert len(reconfigured) == 1, "the same splits keep the pipelines already built"


def test_a_config_without_ingest_keeps_the_defaults(reconfigured):
    hooks.SplitsHook().after_context_created(context_with({"train": {}}))
    assert evaluation_splits() == DEFAULT_EVALUATION_SPLITS and reconfigured == []


def test_a_bad_split_name_stops_the_run_before_anything_is_built(reconfigured):
    with pytest.raises(ValueError, match="must start with a letter"):
        hooks.SplitsHook().after_context_created(
            context_with({"ingest": {"splits": {"train": {}, "1st": {}}}})
        )


@pytest.fixture
def backend_reset():
    yield
    use_inference_backend(TORCH)


def test_the_backend_hook_builds_evaluate_and_predict_on_the_exported_graph(reconfigured, backend_reset):
    hooks.InferenceBackendHook().after_context_created(context_with({"runtime": {"device": "cpu"}}))
    assert reconfigured == [] and "export.onnx_model" not in create_predict_pipeline().inputs()
    hooks.InferenceBackendHook().after_context_created(
        context_with({"runtime": {"inference_backend": "onnxruntime"}})
    )
    assert reconfigured == [f"{hooks.project.PACKAGE_NAME}.pipeline_registry"]
    assert "export.onnx_model" in create_predict_pipeline().inputs()
    evaluate = create_evaluate_initial_weights_pipeline()
    assert "export_initial_weights.onnx_model" in evaluate.inputs()
