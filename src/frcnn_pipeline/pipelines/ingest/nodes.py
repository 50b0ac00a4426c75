"""Ingest nodes: thin wrappers that wire frcnn_pipeline.data to the catalog and ``params:ingest``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from frcnn_pipeline.config import IngestParams, ModelParams, ParameterError
from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.data import demo, statistics, statistics_plots
from frcnn_pipeline.data.coco import (
    SplitSource,
    ValidationPolicy,
    evaluation_ground_truth,
    read_coco_split,
    summarise_findings,
)
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.modeling import anchor_coverage
from frcnn_pipeline.pipelines.splits import TRAIN_SPLIT, evaluation_splits_of

logger = logging.getLogger(__name__)


class DataRootNotFoundError(UserFacingError, FileNotFoundError):
    """`ingest.data_root` names no folder."""


def locate_dataset(ingest: IngestParams) -> dict[str, dict[str, str]]:
    """Each split's annotation file and image folder; generates the demo when ``data_root`` is null."""
    splits = [TRAIN_SPLIT, *evaluation_splits_of(ingest.splits)]
    if ingest.data_root is None:
        not_in_demo = [split for split in splits if split not in demo.SPLITS]
        if not_in_demo:
            raise ValueError(
                f"ingest.splits declares {not_in_demo}, but the demo (ingest.data_root: null) has only "
                f"{list(demo.SPLITS)}. Set ingest.data_root to your dataset, or set those splits to null."
            )
        root = Path(ingest.demo.output_dir)
        demo.ensure_demo_dataset(root, ingest.demo)
        return {
            split: {
                "annotation_file": str(demo.annotation_file(root, split)),
                "image_dir": str(demo.image_dir(root, split)),
            }
            for split in splits
        }
    root = Path(ingest.data_root).expanduser()
    if not root.is_dir():
        raise DataRootNotFoundError(
            f"ingest.data_root {str(root)!r} is not a folder. Fix: point data_root "
            "(conf/<env>/globals.yml or --params ingest.data_root=...) at the dataset, "
            "or set it to null for the demo"
        )
    sources = {}
    for split in splits:
        paths = ingest.splits[split]
        missing = [key for key in ("annotation_file", "image_dir") if not getattr(paths, key)]
        if missing:
            unset = " and ".join(missing)
            example = f"ingest.splits.{split}.annotation_file=annotations/instances_{split}.json"
            raise ParameterError(
                [f"ingest.splits.{split}: {unset} not set (relative to data_root), e.g. {example}"]
            )
        sources[split] = {
            "annotation_file": str(root / paths.annotation_file),
            "image_dir": str(root / paths.image_dir),
        }
    return sources


def _read_split(split: str, sources: dict, ingest: IngestParams, categories: pd.DataFrame | None = None):
    validation = ingest.validation
    drop_empty = ingest.splits[split].drop_images_without_annotations
    policy = ValidationPolicy(
        min_box_size=validation.min_box_size,
        image_checks=validation.image_checks,
        # Training drops images without boxes (as detectron2 does); evaluation keeps every image.
        drop_images_without_annotations=split == TRAIN_SPLIT if drop_empty is None else drop_empty,
        drop_unused_categories=validation.drop_unused_categories,
        severity=dict(validation.severity),  # check -> level, a flat section of strings
        workers=validation.workers,
    )
    source = SplitSource(split, Path(sources[split]["annotation_file"]), Path(sources[split]["image_dir"]))
    return read_coco_split(source, policy, categories)


def ingest_train_split(
    sources: dict[str, dict[str, str]], ingest: IngestParams
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Train tables, the project's categories table, the train findings and fingerprint."""
    split = _read_split(TRAIN_SPLIT, sources, ingest)
    return split.images, split.annotations, split.categories, split.findings, split.fingerprint


def ingest_evaluation_split(
    sources: dict[str, dict[str, str]], categories: pd.DataFrame, ingest: IngestParams, *, split: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """An evaluation split's tables (categories must agree with train's), findings, the ground truth it is
    scored against (``ingest.evaluation``: as published by default; its deviations are logged) and its
    fingerprint."""
    tables = _read_split(split, sources, ingest, categories)
    protocol = ingest.evaluation
    ground_truth = evaluation_ground_truth(tables, protocol.ground_truth, protocol.unusable_images)
    for deviation in ground_truth["info"]["protocol"]["deviations"]:
        logger.warning("%s ground truth: %s", split, deviation)
    return tables.images, tables.annotations, tables.findings, ground_truth, tables.fingerprint


def report_validation(
    *tables: pd.DataFrame | dict[str, Any], splits: tuple[str, ...]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One report table for all splits, and its counts per check (also logged) with each split's fingerprint
    (sha256 of the annotation file, images and annotations declared / kept / dropped). ``tables``: the
    findings and the fingerprint of each of ``splits``, in turn."""
    report = pd.concat(tables[::2], ignore_index=True)
    summary = summarise_findings(report)
    summary["fingerprints"] = dict(zip(splits, tables[1::2], strict=True))
    for split, counts in summary["splits"].items():
        for check, entry in counts["by_check"].items():
            logger.info(
                "validation %s: %-28s %-8s %d", split, check, entry["severity"], entry["count"], extra=DETAIL
            )
    if not summary["splits"]:
        logger.info("validation: no findings", extra=DETAIL)
    return report, summary


def tabulate_dataset(
    model: ModelParams, *tables: pd.DataFrame, splits: tuple[str, ...]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per image (size, resized size, objects) and per box (size after the model's test-time resize, best
    anchor IoU) tables of every split, with a ``split`` column. ``tables``: images and annotations of each of
    ``splits``, in turn."""
    images, boxes = [], []
    for split, split_images, split_annotations in zip(splits, tables[::2], tables[1::2], strict=True):
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
    model: ModelParams,
    ingest: IngestParams,
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
            split, coverage, ingest.statistics.unmatchable_warning_share
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


def plot_box_sizes(dataset_boxes: pd.DataFrame, model: ModelParams) -> Figure:
    """Boxes after the resize against the model's anchors and the RPN's IoU thresholds."""
    background_iou, foreground_iou = model.rpn.iou_thresholds
    return statistics_plots.box_sizes_figure(
        dataset_boxes, anchor_coverage.anchor_shapes(model), foreground_iou, background_iou
    )
