"""Evaluate and predict on either inference backend: every pipeline builds for both, and a tiny demo runs
through real Kedro sessions (hooks included) in a project copy: ingest, weights, train, export, then evaluate
and predict once on torch and once on onnxruntime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from kedro.framework.project import configure_project
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro_params import TINY_DEMO, nested

from frcnn_pipeline.pipeline_registry import build_pipelines
from frcnn_pipeline.pipelines.inference_backend import EXPORT_NAMESPACES, ONNXRUNTIME, TORCH, exported_graph
from frcnn_pipeline.pipelines.shape import PipelineShape

PROJECT = Path(__file__).resolve().parents[2]
TINY = {
    **TINY_DEMO,
    "train.solver.max_iter": 2,
    "train.eval_period": 0,
    "train.checkpoint.period": 2,
    # float32, one image per pass: what the export check holds the dynamic graph to
    "evaluate.inference.batch_size": 1,
    "evaluate.inference.cpu_precision": "float32",
    "predict.inference.cpu_precision": "float32",
    "predict.score_threshold": 0.0,
}


@pytest.mark.parametrize("backend", [TORCH, ONNXRUNTIME])
def test_every_pipeline_builds_on_either_backend_and_reads_only_graphs_an_export_pipeline_writes(
    backend,
):
    configure_project("frcnn_pipeline")
    pipelines = build_pipelines(PipelineShape(inference_backend=backend))
    written = {name for key, p in pipelines.items() if key.startswith("export") for name in p.all_outputs()}
    read = {name for p in pipelines.values() for name in p.inputs() if name.endswith(".onnx_model")}
    assert read <= written
    expected = {exported_graph(model) for model in EXPORT_NAMESPACES} if backend == ONNXRUNTIME else set()
    assert read == expected
    if backend == ONNXRUNTIME:
        assert "export_best_model.onnx_model" in pipelines["evaluate_best_model"].inputs()


def test_a_model_without_an_export_pipeline_is_named_with_the_fix():
    with pytest.raises(ValueError, match=r"'ema_model' has no export pipeline.*EXPORT_NAMESPACES"):
        exported_graph("ema_model")


def _latest(root: Path, pattern: str) -> dict[str, Any]:
    return json.loads(sorted(root.glob(pattern))[-1].read_text())


@pytest.fixture(scope="module")
def runs(module_tmp) -> dict[str, Any]:
    """A project copy trained for two iterations and exported, then evaluate and predict on each backend."""
    root = module_tmp("backends") / "project"
    shutil.copytree(PROJECT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()  # the package itself is the one under test, already on the path
    shutil.copy2(PROJECT / "pyproject.toml", root)
    bootstrap_project(root)

    def run(pipelines: list[str], **params: Any) -> None:
        with KedroSession.create(root, runtime_params=nested({**TINY, **params})) as session:
            session.run(pipeline_names=pipelines)

    images = str(root / "data" / "01_raw" / "demo" / "val2017")
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the engine's checkpoint and log folders are relative, as with `kedro run`
        run(["ingest", "weights", "train", "export"])
        for backend in (TORCH, ONNXRUNTIME):
            run(["evaluate", "predict"], **{"runtime.inference_backend": backend, "predict.images": images})
            results[backend] = {
                "metrics": _latest(root, "data/08_reporting/evaluate/val/coco_metrics.json/*/*.json"),
                "predictions": _latest(root, "data/07_model_output/predict/prediction_results.json/*/*"),
            }
    results["check"] = _latest(root, "data/08_reporting/export/check_report.json/*/*.json")
    return results


def test_evaluate_runs_on_both_backends_with_the_same_ap(runs):
    torch_record, onnx_record = runs[TORCH]["metrics"], runs[ONNXRUNTIME]["metrics"]
    assert torch_record["model"]["inference_backend"] == TORCH
    assert onnx_record["model"]["inference_backend"] == ONNXRUNTIME
    allowed = runs["check"]["max_ap_difference"]
    assert onnx_record["metrics"]["AP"] == pytest.approx(torch_record["metrics"]["AP"], abs=allowed)
    assert onnx_record["metrics"]["AP"] == pytest.approx(
        runs["check"]["graphs"]["dynamic"]["onnxruntime"]["AP"]
    )


def test_predict_runs_on_both_backends_with_the_same_best_detections(runs):
    torch_images = runs[TORCH]["predictions"]["images"]
    onnx_images = runs[ONNXRUNTIME]["predictions"]["images"]
    assert runs[ONNXRUNTIME]["predictions"]["model"]["inference_backend"] == ONNXRUNTIME
    assert [image["path"] for image in onnx_images] == [image["path"] for image in torch_images]
    assert sum(len(image["detections"]) for image in onnx_images) > 0
    for torch_image, onnx_image in zip(torch_images, onnx_images, strict=True):
        best = [max((d["score"] for d in i["detections"]), default=0.0) for i in (torch_image, onnx_image)]
        assert best[1] == pytest.approx(best[0], abs=1e-4)
