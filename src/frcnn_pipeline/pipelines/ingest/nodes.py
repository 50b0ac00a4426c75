"""Ingest nodes: thin wrappers that wire frcnn_pipeline.data to the catalog and ``params:ingest``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from frcnn_pipeline.data import demo, statistics, statistics_plots
from frcnn_pipeline.data.coco import (
    SplitSource,
    ValidationPolicy,
    build_ground_truth,
    read_coco_split,
    summarise_findings,
)
from frcnn_pipeline.modeling import anchor_coverage, resolve_model_config

logger = logging.getLogger(__name__)


def locate_dataset(params: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Each split's annotation file and image folder; generates the demo when ``data_root`` is null."""
    data_root = params.get("data_root")
    if data_root is None:
        root = Path(params["demo"]["output_dir"])
        demo.ensure_demo_dataset(
            root, demo.DemoConfig(**{k: v for k, v in params["demo"].items() if k != "output_dir"})
        )
        return {
            split: {
                "annotation_file": str(demo.annotation_file(root, split)),
                "image_dir": str(demo.image_dir(root, split)),
            }
            for split in demo.SPLITS
        }
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"ingest.data_root {str(root)!r} is not a folder. Fix: point data_root "
            "(conf/<env>/globals.yml or --params ingest.data_root=...) at the dataset, "
            "or set it to null for the demo"
        )
    return {
        split: {
            "annotation_file": str(root / params["splits"][split]["annotation_file"]),
            "image_dir": str(root / params["splits"][split]["image_dir"]),
        }
        for split in ("train", "val")
    }


def _read_split(split: str, sources: dict, params: dict, categories: pd.DataFrame | None = None):
    validation = params["validation"]
    policy = ValidationPolicy(
        min_box_size=float(validation["min_box_size"]),
        image_checks=validation["image_checks"],
        drop_images_without_annotations=bool(params["splits"][split]["drop_images_without_annotations"]),
        severity=validation.get("severity") or {},
        workers=int(validation["workers"]),
    )
    source = SplitSource(split, Path(sources[split]["annotation_file"]), Path(sources[split]["image_dir"]))
    return read_coco_split(source, policy, categories)


def ingest_train_split(
    sources: dict[str, dict[str, str]], params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train tables, the project's categories table, and the train findings."""
    split = _read_split("train", sources, params)
    return split.images, split.annotations, split.categories, split.findings


def ingest_val_split(
    sources: dict[str, dict[str, str]], categories: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Val tables (categories must agree with train's), the val findings and the clean ground truth."""
    split = _read_split("val", sources, params, categories)
    return split.images, split.annotations, split.findings, build_ground_truth(split)


def report_validation(
    train_findings: pd.DataFrame, val_findings: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One report table for all splits, and its counts per check (also logged)."""
    report = pd.concat([train_findings, val_findings], ignore_index=True)
    summary = summarise_findings(report)
    for split, counts in summary["splits"].items():
        for check, entry in counts["by_check"].items():
            logger.info("validation %s: %-28s %-8s %d", split, check, entry["severity"], entry["count"])
    if not summary["splits"]:
        logger.info("validation: no findings")
    return report, summary


def tabulate_dataset(
    train_images: pd.DataFrame,
    train_annotations: pd.DataFrame,
    val_images: pd.DataFrame,
    val_annotations: pd.DataFrame,
    model: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per image (size, resized size, objects) and per box (size after the model's test-time resize, best
    anchor IoU) tables of every split, with a ``split`` column."""
    images, boxes = [], []
    for split, split_images, split_annotations in (
        ("train", train_images, train_annotations),
        ("val", val_images, val_annotations),
    ):
        image_table = statistics.image_statistics(split_images, split_annotations)
        image_table = anchor_coverage.resized_image_sizes(image_table, model)
        images.append(image_table.assign(split=split))
        geometry = anchor_coverage.box_geometry(split_images, split_annotations, model)
        boxes.append(geometry.assign(split=split))
    return pd.concat(images, ignore_index=True), pd.concat(boxes, ignore_index=True)


def summarise_dataset(
    dataset_images: pd.DataFrame,
    dataset_boxes: pd.DataFrame,
    categories: pd.DataFrame,
    model: dict[str, Any],
    settings: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """The statistics summary per split, the per-class table and the box-size quantiles; logs a warning when
    many boxes are too small for any anchor to match (``ingest.statistics.unmatchable_warning_share``)."""
    summary, classes, quantiles = {"splits": {}}, [], []
    for split, image_table in dataset_images.groupby("split", sort=False):
        boxes = dataset_boxes[dataset_boxes["split"] == split]
        coverage = anchor_coverage.coverage_summary(boxes, model)
        summary["splits"][split] = {**statistics.split_summary(image_table), "anchor_coverage": coverage}
        class_table = statistics.class_statistics(boxes, categories, len(image_table))
        classes.append(class_table.assign(split=split))
        objects = boxes[~boxes["iscrowd"]]
        for quantity, values in (
            ("width", objects["width"]),
            ("height", objects["height"]),
            ("sqrt_area", objects["area"] ** 0.5),
            ("aspect_ratio", objects["aspect_ratio"]),
            ("best_anchor_iou", objects["best_anchor_iou"]),
        ):
            quantiles.append({"split": split, "quantity": quantity, **statistics.quantiles(values)})
        split_summary = summary["splits"][split]
        logger.info(
            "dataset %s: %d images, %d boxes (%.1f%% crowd), %.2f objects per image; %.1f%% of the boxes "
            "reach no anchor at IoU %.2f",
            split, split_summary["images"], coverage["boxes"], 100 * split_summary["crowd_share"],
            split_summary["objects_per_image"]["mean"], 100 * coverage["unmatchable_share"],
            coverage["rpn_foreground_iou"],
        )  # fmt: skip
        warning = anchor_coverage.coverage_warning(
            split, coverage, float(settings["unmatchable_warning_share"])
        )
        if warning:
            logger.warning(warning)
    class_table = pd.concat(classes, ignore_index=True)
    return summary, class_table[["split", *class_table.columns[:-1]]], pd.DataFrame(quantiles)


def plot_class_balance(dataset_class_statistics: pd.DataFrame) -> Figure:
    return statistics_plots.class_balance_figure(dataset_class_statistics)


def plot_objects_per_image(dataset_images: pd.DataFrame) -> Figure:
    return statistics_plots.objects_per_image_figure(dataset_images)


def plot_image_sizes(dataset_images: pd.DataFrame) -> Figure:
    return statistics_plots.image_sizes_figure(dataset_images)


def plot_box_sizes(dataset_boxes: pd.DataFrame, model: dict[str, Any]) -> Figure:
    """Boxes after the resize against the model's anchors and the RPN's IoU thresholds."""
    background_iou, foreground_iou = resolve_model_config(model)["rpn"]["iou_thresholds"]
    return statistics_plots.box_sizes_figure(
        dataset_boxes, anchor_coverage.anchor_shapes(model), foreground_iou, background_iou
    )
