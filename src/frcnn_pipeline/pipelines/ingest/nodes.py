"""Ingest nodes: thin wrappers that wire frcnn_pipeline.data to the catalog and ``params:ingest``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from frcnn_pipeline.config import IngestParams
from frcnn_pipeline.data import demo
from frcnn_pipeline.data.coco import (
    SplitSource,
    ValidationPolicy,
    build_ground_truth,
    read_coco_split,
    summarise_findings,
)
from frcnn_pipeline.pipelines.splits import TRAIN_SPLIT, evaluation_splits_of

logger = logging.getLogger(__name__)


def locate_dataset(params: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Each split's annotation file and image folder; generates the demo when ``data_root`` is null."""
    ingest = IngestParams.parse(params, "ingest")
    splits = [TRAIN_SPLIT, *evaluation_splits_of(ingest.splits)]
    if ingest.data_root is None:
        not_in_demo = [split for split in splits if split not in demo.SPLITS]
        if not_in_demo:
            raise ValueError(
                f"ingest.splits declares {not_in_demo}, but the demo (ingest.data_root: null) has only "
                f"{list(demo.SPLITS)}. Set ingest.data_root to your dataset, or set those splits to null."
            )
        root = Path(ingest.demo.output_dir)
        demo.ensure_demo_dataset(root, demo.DemoConfig(**ingest.demo.model_dump(exclude={"output_dir"})))
        return {
            split: {
                "annotation_file": str(demo.annotation_file(root, split)),
                "image_dir": str(demo.image_dir(root, split)),
            }
            for split in splits
        }
    root = Path(ingest.data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"ingest.data_root {str(root)!r} is not a folder. Fix: point data_root "
            "(conf/<env>/globals.yml or --params ingest.data_root=...) at the dataset, "
            "or set it to null for the demo"
        )
    sources = {}
    for split in splits:
        paths = ingest.splits[split]
        missing = [key for key in ("annotation_file", "image_dir") if not getattr(paths, key)]
        if missing:
            raise ValueError(
                f"ingest.splits.{split}: {' and '.join(missing)} not set (paths relative to data_root), e.g. "
                f"ingest.splits.{split}.annotation_file=annotations/instances_{split}.json"
            )
        sources[split] = {
            "annotation_file": str(root / paths.annotation_file),
            "image_dir": str(root / paths.image_dir),
        }
    return sources


def _read_split(split: str, sources: dict, params: dict, categories: pd.DataFrame | None = None):
    ingest = IngestParams.parse(params, "ingest")
    validation = ingest.validation
    drop_empty = ingest.splits[split].drop_images_without_annotations
    policy = ValidationPolicy(
        min_box_size=validation.min_box_size,
        image_checks=validation.image_checks,
        # Training drops images without boxes (as detectron2 does); evaluation keeps every image.
        drop_images_without_annotations=split == TRAIN_SPLIT if drop_empty is None else drop_empty,
        drop_unused_categories=validation.drop_unused_categories,
        severity=validation.severity.model_dump(),
        workers=validation.workers,
    )
    source = SplitSource(split, Path(sources[split]["annotation_file"]), Path(sources[split]["image_dir"]))
    return read_coco_split(source, policy, categories)


def ingest_train_split(
    sources: dict[str, dict[str, str]], params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train tables, the project's categories table, and the train findings."""
    split = _read_split(TRAIN_SPLIT, sources, params)
    return split.images, split.annotations, split.categories, split.findings


def ingest_evaluation_split(
    sources: dict[str, dict[str, str]], categories: pd.DataFrame, params: dict[str, Any], *, split: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """An evaluation split's tables (categories must agree with train's), findings and clean ground truth."""
    tables = _read_split(split, sources, params, categories)
    return tables.images, tables.annotations, tables.findings, build_ground_truth(tables)


def report_validation(*findings: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One report table for all splits, and its counts per check (also logged)."""
    report = pd.concat(findings, ignore_index=True)
    summary = summarise_findings(report)
    for split, counts in summary["splits"].items():
        for check, entry in counts["by_check"].items():
            logger.info("validation %s: %-28s %-8s %d", split, check, entry["severity"], entry["count"])
    if not summary["splits"]:
        logger.info("validation: no findings")
    return report, summary
