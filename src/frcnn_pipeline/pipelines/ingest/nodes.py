"""Ingest nodes: thin wrappers that wire frcnn_pipeline.data to the catalog and ``params:ingest``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from frcnn_pipeline.data import demo
from frcnn_pipeline.data.coco import (
    SplitSource,
    ValidationPolicy,
    build_ground_truth,
    read_coco_split,
    summarise_findings,
)

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
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Train tables, the project's categories table, the train findings and fingerprint."""
    split = _read_split("train", sources, params)
    return split.images, split.annotations, split.categories, split.findings, split.fingerprint


def ingest_val_split(
    sources: dict[str, dict[str, str]], categories: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Val tables (categories must agree with train's), the val findings, the clean ground truth and the
    val fingerprint."""
    split = _read_split("val", sources, params, categories)
    return split.images, split.annotations, split.findings, build_ground_truth(split), split.fingerprint


def report_validation(
    train_findings: pd.DataFrame,
    val_findings: pd.DataFrame,
    train_fingerprint: dict[str, Any],
    val_fingerprint: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One report table for all splits, and its counts per check (also logged) with each split's
    fingerprint (sha256 of the annotation file, images and annotations declared / kept / dropped)."""
    report = pd.concat([train_findings, val_findings], ignore_index=True)
    summary = summarise_findings(report)
    summary["fingerprints"] = {"train": train_fingerprint, "val": val_fingerprint}
    for split, counts in summary["splits"].items():
        for check, entry in counts["by_check"].items():
            logger.info("validation %s: %-28s %-8s %d", split, check, entry["severity"], entry["count"])
    if not summary["splits"]:
        logger.info("validation: no findings")
    return report, summary
