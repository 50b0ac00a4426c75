"""The export pipeline end to end on a briefly trained demo model, with the project's catalog entries
(evaluate and predict on ONNX Runtime from what it writes: tests/pipelines/test_inference_backend.py)."""

import json
from pathlib import Path

import onnx
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_params import typed
from test_cli import kedro_run

from frcnn_pipeline.config import ExportCheckParams, ExportParams
from frcnn_pipeline.evaluation import export_check
from frcnn_pipeline.evaluation.export_check import ExportCheckError
from frcnn_pipeline.export import ExportedDetector
from frcnn_pipeline.pipelines.export import create_pipeline
from frcnn_pipeline.pipelines.export.nodes import check_onnx_export
from frcnn_pipeline.pipelines.run_inputs import RUN_WORLD

VERSION = "2025-04-01T00.00.00.000Z"
GRAPHS = ("onnx_model", "onnx_model_fixed")


def catalog_in(tmp_path: Path, catalog_config: dict, inputs: dict) -> DataCatalog:
    """The project's catalog with every file under tmp_path, plus in-memory inputs."""
    config = {
        name: {**entry, "filepath": str(tmp_path / entry["filepath"])} if "filepath" in entry else entry
        for name, entry in catalog_config.items()
        if not name.startswith("_")
    }
    catalog = DataCatalog.from_config(config, save_version=VERSION)
    for name, data in inputs.items():
        catalog[name] = MemoryDataset(data, copy_mode="assign")
    return catalog


@pytest.fixture(scope="module")
def inputs(trained_model, demo_split, model_params, parameters) -> dict:
    return typed(
        {
            "trained_model": trained_model,
            "val_images": demo_split["val"].images,
            "val_ground_truth": demo_split["ground_truth"],
            "categories": demo_split["train"].categories,
            "params:model": model_params,
            "params:export": parameters["export"],
            "params:evaluate": parameters["evaluate"],
            "params:runtime": parameters["runtime"],
        }
    )


@pytest.fixture(scope="module")
def exported(module_tmp, inputs, catalog_config) -> Path:
    """One export pipeline run (the slow part: two traces), its files under the returned folder."""
    root = module_tmp("export")
    SequentialRunner().run(create_pipeline(), catalog_in(root, catalog_config, inputs))
    return root


def written(root: Path, layer: str, name: str) -> Path:
    [path] = root.glob(f"data/{layer}/export/{name}/*/{name}")
    assert path.parent.name == VERSION
    return path


def test_export_writes_both_graphs_their_description_and_a_passing_check_report(exported, demo_split):
    dynamic = onnx.load(written(exported, "06_models", "onnx_model.onnx"))
    fixed = onnx.load(written(exported, "06_models", "onnx_model_fixed.onnx"))
    for graph in (dynamic, fixed):
        onnx.checker.check_model(graph, full_check=True)
        assert graph.opset_import[0].version == 17
    assert all(dim.HasField("dim_value") for v in fixed.graph.output for dim in v.type.tensor_type.shape.dim)

    deployment = json.loads(written(exported, "06_models", "deployment.json").read_text())
    assert set(deployment) == {"dynamic", "fixed"}
    names = [entry["name"] for entry in deployment["dynamic"]["categories"]]
    assert names == sorted(demo_split["train"].categories["name"], key=names.index)
    assert deployment["dynamic"]["source"]["kind"] == "trained_model"
    # The canvas the split's 64 px images fill at the 64 px test size: no padding.
    assert deployment["fixed"]["preprocessing"]["outside_graph"]["canvas"] == [64, 64]

    report = json.loads(written(exported, "08_reporting", "check_report.json").read_text())
    assert report["passed"] and report["split"] == "val" and report["images"] == len(demo_split["val"].images)
    assert report["pytorch_at_evaluate"]["settings"]["batch_size"] == 1  # evaluate's, from conf/base
    for variant in ("dynamic", "fixed"):
        graph = report["graphs"][variant]
        assert abs(graph["ap_difference"]) <= report["max_ap_difference"]
        assert abs(graph["ap_difference_vs_evaluate"]) <= report["max_ap_difference"]
        detections = graph["detections"]
        assert detections["pytorch"] > 0 and detections["matched"] > 0
        # Through the pipeline, on the demo model: boxes within 0.01 px, scores within 1e-4 (tests/export/
        # holds the graphs to the tighter tolerance that docs/export.md states).
        assert detections["max_box_difference_px"] < 1e-2 and detections["max_score_difference"] < 1e-4


def test_a_check_that_finds_another_ap_fails_naming_the_graph_and_carries_its_report(
    exported, inputs, monkeypatch
):
    graphs = ExportedDetector(
        onnx.load(written(exported, "06_models", "onnx_model.onnx")),
        onnx.load(written(exported, "06_models", "onnx_model_fixed.onnx")),
        json.loads(written(exported, "06_models", "deployment.json").read_text()),
    )
    run_onnx = export_check.run_onnx_inference

    def shifted(*args, **kwargs):
        records = run_onnx(*args, **kwargs)
        for record in records:
            record["boxes"] = record["boxes"] + 7.0  # every box 7 px off
        return records

    monkeypatch.setattr(export_check, "run_onnx_inference", shifted)
    # The briefly trained model's AP is below 0.1 points: allow 0.001 points, so that the shift fails it.
    export = ExportParams(check=ExportCheckParams(max_ap_difference=1e-5))
    data = [inputs[name] for name in ("val_images", "val_ground_truth", "categories", "params:model")]
    with pytest.raises(
        ExportCheckError, match=r"the dynamic graph's AP is .* in the same mode .* Allowed: 0\.001 points"
    ) as failed:
        check_onnx_export(
            inputs["trained_model"], graphs, *data, export, inputs["params:evaluate"],
            inputs["params:runtime"], inputs[RUN_WORLD], split="val",
        )  # fmt: skip
    report = failed.value.report
    assert not report["passed"] and report["split"] == "val"
    dynamic = report["graphs"]["dynamic"]
    # The nearly untrained model's AP may move either way with the shift; it must move past the allowance.
    assert dynamic["passed"] is False and abs(dynamic["ap_difference"]) > export.check.max_ap_difference


def test_an_export_before_training_names_the_pipelines_to_run(project):
    root, _ = project
    result = kedro_run(root, "--pipeline", "export")
    assert result.returncode == 1
    last = (result.stdout + result.stderr).rstrip().splitlines()[-2]
    assert last == (
        "Error: This pipeline's inputs do not exist yet. Run first: `kedro run --pipeline ingest` "
        "(writes categories, val_ground_truth, val_images); then `kedro run --pipeline train` "
        "(writes trained_model)."
    )
