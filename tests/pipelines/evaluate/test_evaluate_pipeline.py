"""The evaluate pipeline end to end on a briefly trained demo model, with the project's catalog entries."""

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn_pipeline.evaluation import STAT_NAMES
from frcnn_pipeline.evaluation.error_analysis import ERROR_TYPES
from frcnn_pipeline.pipelines.evaluate import create_pipeline

PLOTS = ("precision_recall_curves", "per_category_precision_recall_curves", "ap_per_category_plot")
ANALYSIS_PLOTS = ("error_breakdown_plot", "confusion_matrix_plot", "score_thresholds_plot", "worst_images")
ANALYSIS_PARAMETERS = ("error_analysis", "confusion_matrix", "score_thresholds", "worst_images")


def catalog_in(tmp_path: Path, catalog_config: dict, inputs: dict) -> DataCatalog:
    """conf/base/catalog_evaluate.yml with every file moved under tmp_path, plus in-memory inputs."""
    config = {}
    for name, entry in catalog_config.items():
        if name.startswith("_") or name not in create_pipeline().datasets():
            continue
        moved = {"filepath": str(tmp_path / Path(entry["filepath"]).name)} if "filepath" in entry else {}
        config[name] = {**entry, **moved}
    catalog = DataCatalog.from_config(config)
    for name, data in inputs.items():
        catalog[name] = MemoryDataset(data, copy_mode="assign")
    return catalog


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


@pytest.fixture
def inputs(demo_split, trained_weights, model_params, parameters) -> dict:
    return {
        "trained_model": trained_weights,
        "val_images": demo_split["val"].images,
        "categories": demo_split["train"].categories,
        "val_ground_truth": demo_split["ground_truth"],
        "params:model": model_params,
        "params:evaluate": parameters["evaluate"],
        "params:runtime": parameters["runtime"],
        **{f"params:evaluate.{key}": parameters["evaluate"][key] for key in ANALYSIS_PARAMETERS},
    }


def test_evaluate_writes_metrics_tables_and_plots(tmp_path, inputs, demo_split, parameters, catalog_config):
    val = demo_split["val"]
    catalog = catalog_in(tmp_path, catalog_config, inputs)
    SequentialRunner().run(create_pipeline(), catalog)

    detections = json.loads((tmp_path / "val_detections.json").read_text())
    assert detections, "a briefly trained model still proposes boxes above 0.05"
    assert {d["image_id"] for d in detections} <= set(val.images["image_id"])
    assert {d["category_id"] for d in detections} <= set(val.categories["category_id"])
    assert all(len(d["bbox"]) == 4 and d["bbox"][2] >= 0 and d["bbox"][3] >= 0 for d in detections)
    per_image = pd.Series([d["image_id"] for d in detections]).value_counts()
    assert per_image.max() <= parameters["evaluate"]["inference"]["detections_per_image"]

    metrics = json.loads((tmp_path / "coco_metrics.json").read_text())
    assert list(metrics) == list(STAT_NAMES)
    # The written numbers are pycocotools' own, on the written detections.
    assert list(metrics.values()) == pycocotools_stats(demo_split["ground_truth"], detections)

    table = pd.read_csv(tmp_path / "per_category_ap.csv")
    assert table["category_id"].tolist() == sorted(val.categories["category_id"])
    assert set(table["name"]) == set(val.categories["name"])
    for name in (*PLOTS, "detection_samples", *ANALYSIS_PLOTS):
        assert_png(tmp_path / Path(catalog_config[name]["filepath"]).name)

    # The error analysis tables (their numbers are checked on hand-built cases in tests/evaluation).
    breakdown = pd.read_csv(tmp_path / "error_breakdown.csv")
    assert breakdown["error"].tolist() == list(ERROR_TYPES) and (breakdown["dAP"] >= 0).all()
    confusion = pd.read_csv(tmp_path / "confusion_matrix.csv").set_index("ground_truth")
    assert list(confusion.index) == list(confusion.columns) == [*table["name"], "background"]
    non_crowd = sum(not a["iscrowd"] for a in demo_split["ground_truth"]["annotations"])
    assert confusion.drop(index="background").to_numpy().sum() == non_crowd  # every object counted once
    thresholds = pd.read_csv(tmp_path / "score_thresholds.csv")
    assert thresholds["name"].tolist() == [*table["name"], "all categories"]
    per_area = pd.read_csv(tmp_path / "per_area_metrics.csv")
    assert per_area["area"].tolist() == ["all", "small", "medium", "large"]
    assert per_area["AP"].iloc[0] == pytest.approx(metrics["AP"])


def test_unreadable_val_image_is_an_error_naming_it(tmp_path, inputs, catalog_config):
    val_images = inputs["val_images"].copy()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    val_images.loc[0, "path"] = str(broken)
    inputs = {**inputs, "val_images": val_images}
    with pytest.raises(RuntimeError, match=r"broken\.jpg"):
        SequentialRunner().run(create_pipeline(), catalog_in(tmp_path, catalog_config, inputs))
    assert not (tmp_path / "coco_metrics.json").exists()


def test_pipeline_is_tagged_and_named_for_viz():
    pipeline = create_pipeline()
    assert all("evaluate" in node.tags for node in pipeline.nodes)
    assert {node.name for node in pipeline.nodes} >= {
        "evaluate.predict_val_split",
        "evaluate.compute_coco_metrics",
        "evaluate.draw_detection_samples",
        "evaluate.analyse_errors",
        "evaluate.tabulate_confusion",
        "evaluate.draw_worst_images",
    }
    assert pipeline.inputs() >= {"trained_model", "val_images", "val_ground_truth", "categories"}
    assert "initial_weights" in create_pipeline(weights="initial_weights").inputs()
