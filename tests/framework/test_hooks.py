"""Project hooks. The parameter check through real Kedro sessions, in a copy of the project: a typo or a wrong
type stops the run before any work, naming the key, the nearest valid one and where it is set; valid
parameters run. The evaluation splits of this run's config decide the per-split pipelines. Missing inputs
name the pipeline that writes them. In a multi-node job, processes other than the main one keep a run's
outputs in memory."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro_datasets.pandas import CSVDataset
from mlflow import MlflowClient
from test_cli import kedro_run

from frcnn_pipeline.config import EvaluateParams, ParameterError, RuntimeParams
from frcnn_pipeline.framework import hooks
from frcnn_pipeline.framework.hooks import MainProcessSavesHooks, NotTheMainProcessError, RunConfigHook
from frcnn_pipeline.pipeline_registry import build_pipeline, build_pipelines
from frcnn_pipeline.pipelines.run_inputs import RUN_WORLD
from frcnn_pipeline.pipelines.shape import DEFAULT_SHAPE
from frcnn_pipeline.runtime.world import LauncherConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
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
def sessions(module_tmp) -> dict:
    project = module_tmp("project")
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
        "(writes categories, train_annotations, train_images, val_ground_truth, val_images); then "
        "`kedro run --pipeline weights` (writes initial_weights)."
    )
    assert not (root / "data" / "08_reporting").exists() or not any(
        (root / "data" / "08_reporting").iterdir()
    )
    # Checked before kedro-mlflow opens a run: the failed attempt leaves no run in the tracking store.
    store = root / "data" / "09_tracking" / "mlflow.db"
    if store.exists():
        client = MlflowClient(f"sqlite:///{store}")
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


class _Loader(dict):
    """The config loader as the hooks read it: the parameters, and where they come from for the errors."""

    env, default_run_env, base_env, runtime_params = None, "local", "base", {}
    conf_source = str(PROJECT_ROOT / "conf")


def context_with(parameters: dict) -> SimpleNamespace:
    return SimpleNamespace(config_loader=_Loader(parameters=parameters), project_path=PROJECT_ROOT)


@pytest.fixture
def registry(monkeypatch) -> dict:
    """Kedro's pipeline registry as a session that asked for predict and evaluate_initial_weights has it."""
    loaded = {name: build_pipeline(name, DEFAULT_SHAPE) for name in ("predict", "evaluate_initial_weights")}
    monkeypatch.setattr(hooks.project, "pipelines", loaded)
    return loaded


def test_the_run_config_is_built_once_from_the_contexts_parameters(registry):
    hook = RunConfigHook()
    with pytest.raises(RuntimeError, match="No run configuration yet"):
        _ = hook.run_config
    hook.after_context_created(
        context_with({"runtime": {"device": "cpu"}, "evaluate": {"metric_backend": "pycocotools"}})
    )
    assert hook.run_config.runtime == RuntimeParams(device="cpu")
    assert hook.run_config.shape == DEFAULT_SHAPE


def test_the_hook_builds_the_loaded_pipelines_for_the_configured_splits(registry):
    splits = {"train": {}, "val": {}, "test": {"annotation_file": "t.json", "image_dir": "t"}}
    RunConfigHook().after_context_created(context_with({"ingest": {"splits": splits}}))
    assert sorted(registry) == ["evaluate_initial_weights", "predict"], "only what the session loaded"
    assert {"val_images", "test_images"} <= registry["evaluate_initial_weights"].inputs()


def test_a_config_without_ingest_keeps_the_defaults(registry):
    RunConfigHook().after_context_created(context_with({"train": {}}))
    assert (
        registry["evaluate_initial_weights"].inputs()
        == build_pipeline("evaluate_initial_weights", DEFAULT_SHAPE).inputs()
    )


def test_a_bad_split_name_stops_the_run_before_anything_is_built(registry):
    before = dict(registry)
    with pytest.raises(ValueError, match="must start with a letter"):
        RunConfigHook().after_context_created(context_with({"ingest": {"splits": {"train": {}, "1st": {}}}}))
    assert registry == before


def test_a_session_after_another_gets_its_own_shape(registry):
    hook = RunConfigHook()
    hook.after_context_created(context_with({"runtime": {"inference_backend": "onnxruntime"}}))
    assert "export.onnx_model" in registry["predict"].inputs()
    hook.after_context_created(context_with({}))
    assert "export.onnx_model" not in registry["predict"].inputs()


def test_the_catalog_holds_the_runs_world_for_the_nodes_that_spawn_workers(registry):
    hook = RunConfigHook()
    hook.after_context_created(context_with({"runtime": {"nproc_per_node": 2}}))
    catalog = DataCatalog()
    hook.after_catalog_created(catalog)
    assert catalog.load(RUN_WORLD) is hook.run_config.world
    assert catalog.load(RUN_WORLD).world_size == 2
    every_node = {node for pipeline in build_pipelines(DEFAULT_SHAPE).values() for node in pipeline.nodes}
    spawning = {node.name for node in every_node if RUN_WORLD in node.inputs}
    assert spawning >= {
        "train.train_detector", "evaluate.val.predict_split", "predict.predict_images",
        "export.check_onnx_export",
    }  # fmt: skip


def test_nodes_get_their_parameters_as_typed_sections(registry):
    hook = RunConfigHook()
    hook.after_context_created(context_with({"evaluate": {"inference": {"batch_size": 3}}}))
    node = Node(
        lambda images, evaluate, batch: None,
        ["images", "params:evaluate", "params:evaluate.inference.batch_size"],
        None,
    )
    assert hook.before_node_run(node) == {
        "params:evaluate": EvaluateParams.parse({"inference": {"batch_size": 3}}, "evaluate"),
        "params:evaluate.inference.batch_size": 3,
    }


def _multinode_catalog(tmp_path) -> DataCatalog:
    catalog = DataCatalog(
        {
            "source": CSVDataset(filepath=str(tmp_path / "source.csv")),
            "table": CSVDataset(filepath=str(tmp_path / "table.csv")),
        }
    )
    catalog.save("source", pd.DataFrame({"value": [1, 2]}))
    return catalog


DOUBLING = Pipeline(
    [Node(lambda frame: frame.assign(value=frame["value"] * 2), "source", "table", tags="train")]
)


def _run_with_saving_hook(runtime: dict, catalog: DataCatalog, pipeline: Pipeline = DOUBLING) -> None:
    """The run configuration's hook, then the saving hook, as a session calls them, then the pipeline."""
    run_configs = RunConfigHook()
    run_configs.after_context_created(context_with({"runtime": runtime}))
    MainProcessSavesHooks(run_configs).before_pipeline_run({}, pipeline, catalog)
    for node in pipeline.nodes:
        outputs = node.run({name: catalog.load(name) for name in node.inputs})
        for name, data in outputs.items():
            catalog.save(name, data)


def test_a_follower_node_computes_in_memory_and_writes_nothing(tmp_path):
    catalog = _multinode_catalog(tmp_path)
    _run_with_saving_hook({"num_nodes": 2, "node_rank": 1, "master_addr": "10.0.0.1"}, catalog)
    assert isinstance(catalog["table"], MemoryDataset)
    assert catalog.load("table")["value"].tolist() == [2, 4], "inputs still load from the shared files"
    assert not (tmp_path / "table.csv").exists()


def test_the_main_node_saves_as_usual(tmp_path):
    catalog = _multinode_catalog(tmp_path)
    _run_with_saving_hook({"num_nodes": 2, "node_rank": 0}, catalog)
    assert pd.read_csv(tmp_path / "table.csv")["value"].tolist() == [2, 4]


def test_torchrun_ranks_other_than_0_write_nothing(tmp_path, monkeypatch):
    torchrun = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400"}  # fmt: skip
    for name, value in torchrun.items():
        monkeypatch.setenv(name, value)
    _run_with_saving_hook({"nproc_per_node": 2}, _multinode_catalog(tmp_path))
    assert not (tmp_path / "table.csv").exists()


def test_a_follower_refuses_the_single_machine_pipelines(tmp_path):
    ingest = Pipeline([Node(lambda frame: frame, "source", "table", name="read_coco", tags="ingest")])
    catalog = _multinode_catalog(tmp_path)
    with pytest.raises(NotTheMainProcessError, match=r"node 1 of 2.*\['read_coco'\].*--pipeline ingest"):
        _run_with_saving_hook({"num_nodes": 2, "node_rank": 1}, catalog, ingest)
    assert not (tmp_path / "table.csv").exists()


def test_wrong_launcher_settings_stop_the_run_before_it_starts(tmp_path):
    catalog = _multinode_catalog(tmp_path)
    with pytest.raises(LauncherConfigError, match=r"node_rank must be in \[0, 2\)"):
        _run_with_saving_hook({"num_nodes": 2, "node_rank": 2}, catalog)


def test_a_misspelt_runtime_key_stops_the_run_before_the_saving_hook(tmp_path):
    catalog = _multinode_catalog(tmp_path)
    with pytest.raises(
        ParameterError, match=r"runtime.node_rnak: unknown parameter; did you mean runtime.node_rank"
    ):
        _run_with_saving_hook({"num_nodes": 2, "node_rnak": 1}, catalog)
    assert not (tmp_path / "table.csv").exists()
