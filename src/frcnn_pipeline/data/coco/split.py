"""``read_coco_split``: one split's annotation file checked record by record (categories, images,
annotations: see their modules), dropped or fixed where it must be, and turned into the tables of
docs/architecture.md plus one report row per finding.

Fatal problems raise ``CocoFormatError`` with the file, the record id, what is wrong and how to fix it.
Tables are built with numpy/pandas, without per-record loops."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from frcnn_pipeline.data.coco.annotation_checks import (
    ClippedBoxes,
    SplitAnnotations,
    clip_to_images,
    flag_invalid_records,
    flag_kept_oddities,
    read_annotations,
)
from frcnn_pipeline.data.coco.category_checks import drop_unused_categories, resolve_categories
from frcnn_pipeline.data.coco.findings import Findings, ValidationPolicy, raise_escalated
from frcnn_pipeline.data.coco.image_checks import (
    SplitImages,
    check_images,
    report_image_findings,
    report_images_without_annotations,
)
from frcnn_pipeline.data.coco.json_file import annotation_columns, decode_coco_json, fatal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitSource:
    """Where one split lives: its COCO annotation file and the folder its ``file_name``s are relative to."""

    name: str
    annotation_file: Path
    image_dir: Path


@dataclass
class CocoSplit:
    """One validated split: the tables of docs/architecture.md and the findings.

    ``bbox_xywh`` is aligned with ``annotations``: the boxes as used, with the JSON's exact numbers where no
    clipping happened (so the clean ground truth does not pick up float round-off from xyxy -> xywh).
    """

    name: str
    annotation_file: Path
    images: pd.DataFrame
    annotations: pd.DataFrame
    categories: pd.DataFrame
    findings: pd.DataFrame
    bbox_xywh: np.ndarray
    # sha256 of the annotation file, images and annotations declared / kept / dropped.
    fingerprint: dict[str, Any] = field(default_factory=dict)


def read_coco_split(
    source: SplitSource, policy: ValidationPolicy | None = None, categories: pd.DataFrame | None = None
) -> CocoSplit:
    """Reads and validates one COCO split.

    ``categories``: the project's table (from train). When given, the split must declare the same categories
    (else fatal); when None, the table is built from this split (ids sorted, labels 0..K-1).
    """
    policy = policy or ValidationPolicy()
    path = Path(source.annotation_file)
    doc, sha256 = decode_coco_json(path)
    findings = Findings(source.name, policy)
    defines_classes = categories is None
    categories, not_classes = resolve_categories(
        path, doc.categories, categories, policy.drop_unused_categories
    )
    images = check_images(path, doc.images, source.image_dir, policy, source.name)
    columns, bbox_written = annotation_columns(path, doc.annotations)
    del doc  # the file's bytes go with it
    anns = read_annotations(
        path,
        columns,
        bbox_written,
        image_ids=images.ids,
        category_ids=categories["category_id"].to_numpy(np.int64),
        not_class_ids=not_classes["category_id"].to_numpy(),
    )
    flag_invalid_records(anns, findings, policy.min_box_size)
    _drop_with_their_images(anns, images, findings)
    boxes = clip_to_images(anns, findings, images.widths, images.heights, policy.min_box_size)
    flag_kept_oddities(anns, findings)
    _drop_images_without_annotations(anns, images, findings, policy.drop_images_without_annotations)
    categories, label = drop_unused_categories(
        findings,
        categories,
        not_classes,
        used_labels=anns.label[anns.alive],
        label=anns.label,
        dropping=defines_classes and policy.drop_unused_categories,
    )
    report = findings.frame()
    raise_escalated(path, report)
    _raise_without_images(path, source.name, images, report)
    image_table = _image_table(images)
    annotation_table, used_xywh = _annotation_table(anns, boxes, label)
    logger.info(
        "%s: kept %d/%d images and %d/%d annotations (%d findings)",
        source.name,
        len(image_table),
        len(images.ids),
        len(annotation_table),
        len(anns.ids),
        len(report),
    )
    fingerprint = _fingerprint(
        path, sha256, (len(images.ids), len(image_table)), (len(anns.ids), len(annotation_table))
    )
    return CocoSplit(
        source.name, path, image_table, annotation_table, categories.copy(), report, used_xywh, fingerprint
    )


def _drop_with_their_images(anns: SplitAnnotations, images: SplitImages, findings: Findings) -> None:
    """Images dropped by their checks take their annotations with them; the image's row says how many."""
    on_dropped_image = anns.alive & (anns.image_index >= 0) & ~images.alive[np.maximum(anns.image_index, 0)]
    dropped_per_image = np.bincount(anns.image_index[on_dropped_image], minlength=len(images.ids))
    anns.alive &= ~on_dropped_image
    report_image_findings(findings, images, dropped_per_image)


def _drop_images_without_annotations(
    anns: SplitAnnotations, images: SplitImages, findings: Findings, drop: bool
) -> None:
    """Images without usable (non-crowd) annotations: kept or dropped per split."""
    usable = np.bincount(anns.image_index[anns.alive & ~anns.iscrowd], minlength=len(images.ids))
    crowd_only = np.bincount(anns.image_index[anns.alive & anns.iscrowd], minlength=len(images.ids))
    empty = report_images_without_annotations(findings, images, usable, crowd_only, drop)
    if drop:
        images.alive[empty] = False
        anns.alive &= images.alive[np.maximum(anns.image_index, 0)]


def _raise_without_images(path: Path, split: str, images: SplitImages, report: pd.DataFrame) -> None:
    if images.alive.any():
        return
    counts = report.groupby("check").size().to_dict() if len(report) else {}
    raise fatal(
        path,
        f"split {split!r} has no usable image after dropping ({len(images.ids)} declared; "
        f"findings per check: {counts})",
        "check the image folder (ingest.splits.<split>.image_dir) and the file names; "
        "set drop_images_without_annotations: false to keep images without annotations",
    )


def _image_table(images: SplitImages) -> pd.DataFrame:
    alive = images.alive
    return pd.DataFrame(
        {
            "image_id": images.ids[alive],
            "file_name": images.file_names[alive].reset_index(drop=True),
            "path": images.paths[alive].reset_index(drop=True),
            "width": images.widths[alive],
            "height": images.heights[alive],
        }
    )


def _annotation_table(
    anns: SplitAnnotations, boxes: ClippedBoxes, label: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """The kept annotations' table, and their boxes as xywh: clipped where clipping changed them, else the
    JSON's exact numbers."""
    keep = np.flatnonzero(anns.alive)
    x1, y1, x2, y2 = boxes.x1, boxes.y1, boxes.x2, boxes.y2
    box_area = (x2 - x1) * (y2 - y1)
    table = pd.DataFrame(
        {
            "annotation_id": anns.ids[keep],
            "image_id": anns.image_ids[keep],
            "category_id": anns.category_ids[keep],
            "label": label[keep].astype(np.int64),
            "x1": x1[keep],
            "y1": y1[keep],
            "x2": x2[keep],
            "y2": y2[keep],
            "area": np.where(np.isfinite(anns.area[keep]), anns.area[keep], box_area[keep]),
            "iscrowd": anns.iscrowd[keep],
        }
    )
    clipped_xywh = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)[keep]
    return table, np.where(boxes.clipped[keep, None], clipped_xywh, anns.xywh[keep])


def _fingerprint(
    path: Path, sha256: str, images: tuple[int, int], annotations: tuple[int, int]
) -> dict[str, Any]:
    """The annotation file's sha256; images and annotations declared, kept and dropped."""
    return {
        "annotation_file": str(path),
        "sha256": sha256,
        "images_declared": images[0],
        "images_kept": images[1],
        "images_dropped": images[0] - images[1],
        "annotations_declared": annotations[0],
        "annotations_kept": annotations[1],
        "annotations_dropped": annotations[0] - annotations[1],
    }
