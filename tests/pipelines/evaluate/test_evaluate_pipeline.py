"""The evaluate pipeline end to end on a briefly trained demo model, with the project's catalog entries."""

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset, Version
from kedro.runner import SequentialRunner
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn_pipeline.config import EvaluateParams, RuntimeParams
from frcnn_pipeline.data.fingerprint import ground_truth_fingerprint
from frcnn_pipeline.evaluation import STAT_NAMES
from frcnn_pipeline.evaluation.error_analysis import ERROR_TYPES
from frcnn_pipeline.modeling.saved import INITIAL_WEIGHTS, SavedDetector
from frcnn_pipeline.pipelines.evaluate import create_pipeline
from frcnn_pipeline.pipelines.evaluate_initial_weights import (
    create_pipeline as create_initial_weights_pipeline,
)
from frcnn_pipeline.pipelines.run_inputs import RUN_WORLD
from frcnn_pipeline.pipelines.shape import PipelineShape
from frcnn_pipeline.runtime.world import WorldConfig

PLOTS = (
    "precision_recall_curves",
    "per_category_precision_recall_curves",
    "ap_per_category_plot",
    "detection_samples",
)
REPORTS = ("coco_metrics", "per_category_ap", "detections", *PLOTS)
MODEL_VERSION = "2025-01-01T00.00.00.000Z"


def catalog_in(
    tmp_path: Path, catalog_config: dict, inputs: dict, save_version: str | None = None
) -> DataCatalog:
    """The project's catalog (entries and dataset factories) with every file under tmp_path, plus inputs."""
    config = {name: _under(tmp_path, e) for name, e in catalog_config.items() if not name.startswith("_")}
    catalog = DataCatalog.from_config(config, save_version=save_version)
    for name, data in inputs.items():
        catalog[name] = MemoryDataset(data, copy_mode="assign")
    return catalog


def _under(tmp_path: Path, entry: dict) -> dict:
    """The catalog entry with its file (or its wrapped dataset's, for KeepUnchangedDataset) under tmp_path."""
    if "filepath" in entry:
        return {**entry, "filepath": str(tmp_path / entry["filepath"])}
    if "dataset" in entry:
        return {**entry, "dataset": _under(tmp_path, entry["dataset"])}
    return entry


def save_model(tmp_path: Path, catalog_config: dict, name: str, model: SavedDetector) -> None:
    """Writes the model through its real catalog entry, as the train (or weights) pipeline would."""
    catalog = catalog_in(tmp_path, catalog_config, {}, save_version=MODEL_VERSION)
    catalog.save(name, model)


def pycocotools_stats(ground_truth: dict, detections: list[dict]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(ground_truth))
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats.tolist()


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) >= 200


def versions(tmp_path: Path, evaluation: str, split: str, report: str) -> list[Path]:
    """The files a versioned report of `<evaluation>.<split>` holds, oldest first."""
    return sorted(tmp_path.glob(f"data/*/{evaluation}/{split}/{report_file(report)}/*/{report_file(report)}"))


def report_file(report: str) -> str:
    return {
        "coco_metrics": "coco_metrics.json",
        "per_category_ap": "per_category_ap.csv",
        "detections": "detections.json",
        "ap_per_category_plot": "ap_per_category.png",
        "error_breakdown_plot": "error_breakdown.png",
        "confusion_matrix_plot": "confusion_matrix.png",
        "score_thresholds_plot": "score_thresholds.png",
    }.get(report, f"{report}.png")


@pytest.fixture
def inputs(demo_split, model_params, parameters) -> dict:
    return {
        "val_images": demo_split["val"].images,
        "categories": demo_split["train"].categories,
        "val_ground_truth": demo_split["ground_truth"],
        # Typed, as the run configuration's hook hands them to the nodes.
        "params:model": model_params,
        "params:evaluate": EvaluateParams.parse(parameters["evaluate"], "evaluate"),
        "params:runtime": RuntimeParams.parse(parameters["runtime"], "runtime"),
        RUN_WORLD: WorldConfig(),
    }


@pytest.fixture
def project(tmp_path, catalog_config, trained_model) -> Path:
    save_model(tmp_path, catalog_config, "trained_model", trained_model)
    return tmp_path


def test_evaluate_writes_metrics_that_name_model_ground_truth_and_settings(
    project, inputs, demo_split, parameters, catalog_config
):
    val = demo_split["val"]
    SequentialRunner().run(create_pipeline(), catalog_in(project, catalog_config, inputs))

    [detections_file] = versions(project, "evaluate", "val", "detections")
    detections = json.loads(detections_file.read_text())
    assert detections, "a briefly trained model still proposes boxes above 0.05"
    assert {d["image_id"] for d in detections} <= set(val.images["image_id"])
    assert {d["category_id"] for d in detections} <= set(val.categories["category_id"])
    assert all(len(d["bbox"]) == 4 and d["bbox"][2] >= 0 and d["bbox"][3] >= 0 for d in detections)
    per_image = pd.Series([d["image_id"] for d in detections]).value_counts()
    assert (
        per_image.max()
        <= EvaluateParams.parse(parameters["evaluate"], "evaluate").inference.detections_per_image
    )

    [metrics_file] = versions(project, "evaluate", "val", "coco_metrics")
    record = json.loads(metrics_file.read_text())
    assert list(record["metrics"]) == list(STAT_NAMES)
    # The written numbers are pycocotools' own, on the written detections.
    assert list(record["metrics"].values()) == pycocotools_stats(demo_split["ground_truth"], detections)
    model_file = (
        project / "data/06_models/trained_model.safetensors" / MODEL_VERSION / "trained_model.safetensors"
    )
    assert record["model"] | {"provenance": None} == {
        "kind": "trained_model",
        "version": MODEL_VERSION,
        "sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
        "path": str(model_file),
        "model_config_from": "saved",
        "provenance": None,
        "inference_backend": "torch",
        "arithmetic": "float32, the model's own arithmetic",  # the default: no speed-up changes the rounding
    }
    assert record["model"]["provenance"] == {"run_name": "conftest", "iterations": 4}
    protocol = demo_split["ground_truth"]["info"]["protocol"]
    assert (protocol["ground_truth"], protocol["deviations"]) == ("published", [])
    assert record["ground_truth"] == {
        "split": "val",
        **ground_truth_fingerprint(demo_split["ground_truth"]),
        "protocol": protocol,
    }
    settings = EvaluateParams.parse(parameters["evaluate"], "evaluate")
    assert record["inference"]["score_threshold"] == settings.inference.score_threshold
    assert record["inference"]["metric_backend"] == settings.metric_backend

    [table_file] = versions(project, "evaluate", "val", "per_category_ap")
    table = pd.read_csv(table_file)
    assert table["category_id"].tolist() == sorted(val.categories["category_id"])
    assert set(table["name"]) == set(val.categories["name"])
    for name in PLOTS:
        [plot] = versions(project, "evaluate", "val", name)
        assert_png(plot)

    # The error analysis (its numbers are checked on hand-built cases in tests/evaluation).
    for name in ("error_breakdown_plot", "confusion_matrix_plot", "score_thresholds_plot", "worst_images"):
        [plot] = versions(project, "evaluate", "val", name)
        assert_png(plot)

    def table_of(report: str) -> pd.DataFrame:
        [path] = sorted(project.glob(f"data/08_reporting/evaluate/val/{report}.csv/*/{report}.csv"))
        return pd.read_csv(path)

    breakdown = table_of("error_breakdown")
    assert breakdown["error"].tolist() == list(ERROR_TYPES) and (breakdown["dAP"] >= 0).all()
    confusion = table_of("confusion_matrix").set_index("ground_truth")
    assert list(confusion.index) == list(confusion.columns) == [*table["name"], "background"]
    non_crowd = sum(not a["iscrowd"] for a in demo_split["ground_truth"]["annotations"])
    assert confusion.drop(index="background").to_numpy().sum() == non_crowd  # every object counted once
    thresholds = table_of("score_thresholds")
    assert thresholds["name"].tolist() == [*table["name"], "all categories"]
    per_area = table_of("per_area_metrics")
    assert per_area["area"].tolist() == ["all", "small", "medium", "large"]
    assert per_area["AP"].iloc[0] == pytest.approx(record["metrics"]["AP"])


def test_a_rerun_keeps_the_first_runs_reports_reachable(project, inputs, catalog_config):
    first, second = "2025-02-01T00.00.00.000Z", "2025-02-02T00.00.00.000Z"
    for version in (first, second):
        SequentialRunner().run(create_pipeline(), catalog_in(project, catalog_config, inputs, version))
    for report in REPORTS:
        found = versions(project, "evaluate", "val", report)
        assert [path.parent.name for path in found] == [first, second], report
    # The earlier record loads by version, through the catalog as a user would.
    catalog = catalog_in(project, catalog_config, {})
    earlier = catalog.get("evaluate.val.coco_metrics", version=Version(first, None)).load()
    assert earlier["model"]["version"] == MODEL_VERSION and list(earlier["metrics"]) == list(STAT_NAMES)


def test_unreadable_val_image_is_an_error_naming_it(project, inputs, catalog_config):
    val_images = inputs["val_images"].copy()
    broken = project / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    val_images.loc[0, "path"] = str(broken)
    inputs = {**inputs, "val_images": val_images}
    with pytest.raises(RuntimeError, match=r"broken\.jpg"):
        SequentialRunner().run(create_pipeline(), catalog_in(project, catalog_config, inputs))
    assert not versions(project, "evaluate", "val", "coco_metrics")


def test_a_model_parameter_that_contradicts_the_trained_model_is_an_error(project, inputs, catalog_config):
    model = inputs["params:model"]
    contradicting = model.model_copy(update={"input": model.input.model_copy(update={"format": "BGR"})})
    with pytest.raises(
        ValueError, match=r"model\.input\.format is 'BGR' in parameters but trained_model .*'RGB'"
    ):
        SequentialRunner().run(
            create_pipeline(), catalog_in(project, catalog_config, {**inputs, "params:model": contradicting})
        )
    assert not versions(project, "evaluate", "val", "detections")


def test_initial_weights_are_evaluated_in_their_own_namespace_and_files(
    project, inputs, catalog_config, trained_model
):
    initial = SavedDetector(
        trained_model.state_dict,
        INITIAL_WEIGHTS,
        categories=trained_model.categories,
        provenance={"source": "x"},
    )
    save_model(project, catalog_config, "initial_weights", initial)
    pipeline = create_initial_weights_pipeline()
    assert pipeline.inputs() >= {"initial_weights", "val_images", "val_ground_truth"}
    assert not pipeline.all_outputs() & create_pipeline().all_outputs()
    SequentialRunner().run(pipeline, catalog_in(project, catalog_config, inputs))
    SequentialRunner().run(create_pipeline(), catalog_in(project, catalog_config, inputs))

    [initial_record] = versions(project, "evaluate_initial_weights", "val", "coco_metrics")
    [trained_record] = versions(project, "evaluate", "val", "coco_metrics")
    initial_model = json.loads(initial_record.read_text())["model"]
    assert initial_model["kind"] == "initial_weights" and initial_model["model_config_from"] == "parameters"
    assert json.loads(trained_record.read_text())["model"]["kind"] == "trained_model"
    # The same weights give the same numbers, whichever way they were built.
    assert (
        json.loads(initial_record.read_text())["metrics"] == json.loads(trained_record.read_text())["metrics"]
    )


def test_each_evaluation_split_has_its_own_outputs_and_runs_alone(
    project, inputs, demo_split, catalog_config
):
    pipeline = create_pipeline(PipelineShape(("val", "test")))
    assert {"evaluate.val.coco_metrics", "evaluate.test.coco_metrics"} <= pipeline.all_outputs()
    assert pipeline.inputs() >= {"test_images", "test_ground_truth", "val_images", "val_ground_truth"}
    # The test split: the first three val images and their boxes.
    test_images = demo_split["val"].images.iloc[:3]
    kept = set(test_images["image_id"])
    truth = demo_split["ground_truth"]
    test_truth = {
        **truth,
        "images": [i for i in truth["images"] if i["id"] in kept],
        "annotations": [a for a in truth["annotations"] if a["image_id"] in kept],
    }
    inputs = {**inputs, "test_images": test_images, "test_ground_truth": test_truth}

    SequentialRunner().run(
        pipeline.filter(node_namespaces=["evaluate.test"]), catalog_in(project, catalog_config, inputs)
    )
    assert not versions(project, "evaluate", "val", "coco_metrics"), "only the test split ran"
    [test_record] = versions(project, "evaluate", "test", "coco_metrics")
    record = json.loads(test_record.read_text())
    assert record["ground_truth"] == {
        "split": "test",
        **ground_truth_fingerprint(test_truth),
        "protocol": truth["info"]["protocol"],
    }
    assert record["ground_truth"]["images"] == 3
    [test_detections] = versions(project, "evaluate", "test", "detections")
    assert {d["image_id"] for d in json.loads(test_detections.read_text())} <= kept


def test_pipeline_is_tagged_and_named_for_viz():
    pipeline = create_pipeline()
    assert all("evaluate" in node.tags for node in pipeline.nodes)
    assert {node.name for node in pipeline.nodes} >= {
        "evaluate.val.predict_split",
        "evaluate.val.compute_coco_metrics",
        "evaluate.val.draw_detection_samples",
        "evaluate.val.analyse_errors",
        "evaluate.val.tabulate_confusion",
        "evaluate.val.draw_worst_images",
    }
    assert pipeline.inputs() >= {"trained_model", "val_images", "val_ground_truth", "categories"}
    assert all(node.namespace == "evaluate.val" for node in pipeline.nodes)
