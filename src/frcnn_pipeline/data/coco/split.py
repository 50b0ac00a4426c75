"""``read_coco_split``: one split's annotation file checked record by record, dropped or fixed where it
must be, and turned into the tables of docs/architecture.md plus one report row per finding.

Fatal problems raise ``CocoFormatError`` with the file, the record id, what is wrong and how to fix it.
Tables are built with numpy/pandas, without per-record loops."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from frcnn_pipeline.data.coco.findings import (
    DEFAULT_SEVERITY,
    UNUSABLE_IMAGE_CHECKS,
    ValidationPolicy,
    _Findings,
    _raise_escalated,
)
from frcnn_pipeline.data.coco.image_checks import _probe_images, _unsafe_file_names
from frcnn_pipeline.data.coco.json_file import (
    _MAX_LISTED,
    _annotation_columns,
    _Category,
    _column,
    _decode,
    _fatal,
    _float_column,
)

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


def _raise_duplicates(path: Path, kind: str, ids: np.ndarray, extra: list[str] | None = None) -> None:
    duplicated = pd.Series(ids).duplicated(keep=False).to_numpy()
    if not duplicated.any():
        return
    positions = np.flatnonzero(duplicated)
    shown = sorted({int(ids[i]) for i in positions})[:_MAX_LISTED]
    details = ""
    if extra is not None:
        details = " (" + "; ".join(f"{int(ids[i])}: {extra[i]}" for i in positions[: 2 * _MAX_LISTED]) + ")"
    raise _fatal(
        path,
        f"duplicate {kind} ids {shown}{details}; {len(positions)} records share an id",
        f"give every {kind} a unique id",
    )


def _build_categories(path: Path, records: list[_Category]) -> pd.DataFrame:
    ids = _column(records, "id", np.int64)
    if not len(ids):
        raise _fatal(path, "declares no categories", "add the `categories` list of the dataset")
    _raise_duplicates(path, "category", ids, [r.name for r in records])
    table = pd.DataFrame(
        {
            "category_id": ids,
            "name": pd.Series([r.name for r in records], dtype="str"),
            "supercategory": pd.Series([r.supercategory for r in records], dtype="str"),
        }
    ).sort_values("category_id", kind="stable", ignore_index=True)
    table.insert(0, "label", np.arange(len(table), dtype=np.int64))
    return table


def _check_categories_agree(
    path: Path, declared: pd.DataFrame, project: pd.DataFrame, allow_extra: bool
) -> pd.DataFrame:
    """Fatal unless the split declares the project's categories; returns the declared ones that are not
    classes (allowed when the train split dropped them as unused; they must stay unused here too)."""
    ours = dict(zip(declared["category_id"].tolist(), declared["name"].tolist(), strict=True))
    theirs = dict(zip(project["category_id"].tolist(), project["name"].tolist(), strict=True))
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    renamed = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    if not missing and not renamed and (allow_extra or not extra):
        return declared[declared["category_id"].isin(extra)]
    raise _fatal(
        path,
        "declares categories that differ from the project's (taken from the train split): "
        f"missing ids {missing}, extra ids {extra}, renamed ids {[(k, theirs[k], ours[k]) for k in renamed]}",
        "use the same `categories` list in every split (the model's classes come from train)",
    )


def read_coco_split(
    source: SplitSource, policy: ValidationPolicy | None = None, categories: pd.DataFrame | None = None
) -> CocoSplit:
    """Reads and validates one COCO split.

    ``categories``: the project's table (from train). When given, the split must declare the same categories
    (else fatal); when None, the table is built from this split (ids sorted, labels 0..K-1).
    """
    policy = policy or ValidationPolicy()
    path = Path(source.annotation_file)
    doc, sha256 = _decode(path)
    findings = _Findings(source.name, policy)

    # --- categories
    declared = _build_categories(path, doc.categories)
    defines_classes = categories is None
    if defines_classes:
        categories = declared
        not_classes = declared.iloc[:0]
    else:
        not_classes = _check_categories_agree(path, declared, categories, policy.drop_unused_categories)
    category_ids = categories["category_id"].to_numpy(np.int64)

    # --- images
    image_ids = _column(doc.images, "id", np.int64)
    file_names = pd.Series([r.file_name for r in doc.images], dtype="str")
    size_written = _float_column(doc.images, "width"), _float_column(doc.images, "height")
    bad_size = ~np.isfinite(size_written).all(axis=0) | (np.stack(size_written) <= 0).any(axis=0)
    widths, heights = (np.where(bad_size, 0, values).astype(np.int64) for values in size_written)
    _raise_duplicates(path, "image", image_ids, file_names.tolist())
    image_dir = str(Path(source.image_dir).resolve())
    image_paths = (image_dir + "/" + file_names).astype("str")
    image_alive = np.ones(len(image_ids), dtype=bool)
    image_drop_reason: dict[int, tuple[str, str]] = {}
    image_reported: dict[int, tuple[str, str]] = {}  # kept images with a reported finding (transparency)

    unsafe = _unsafe_file_names(file_names)
    for position in np.flatnonzero(unsafe):
        image_drop_reason[position] = (
            "unsafe_file_name",
            f"file_name {file_names[position]!r} escapes the image folder (absolute or '..'); "
            "use a path relative to the image folder",
        )
    for position in np.flatnonzero(bad_size & ~unsafe):
        image_drop_reason[position] = (
            "image_size_mismatch",
            f"width/height {size_written[0][position]:g}x{size_written[1][position]:g} must be positive "
            "finite numbers",
        )
    if policy.image_checks != "none":
        to_probe = np.flatnonzero(~unsafe & ~bad_size)
        probes = _probe_images(
            image_paths.iloc[to_probe].tolist(),
            widths[to_probe],
            heights[to_probe],
            decode=policy.image_checks == "decode",
            workers=policy.workers,
            split=source.name,
        )
        for position, probe in zip(to_probe, probes, strict=True):
            if probe is not None:
                kept = DEFAULT_SEVERITY[probe[0]] == "reported"
                (image_reported if kept else image_drop_reason)[position] = probe
    if image_drop_reason:
        image_alive[list(image_drop_reason)] = False

    # --- annotations
    columns, bbox_written = _annotation_columns(path, doc.annotations)
    del doc  # the file's bytes go with it
    ann_ids, ann_image_ids, ann_category_ids = columns["id"], columns["image_id"], columns["category_id"]
    annotated_non_class = np.isin(ann_category_ids, not_classes["category_id"].to_numpy())
    if annotated_non_class.any():
        raise _fatal(
            path,
            f"annotates {int(annotated_non_class.sum())} box(es) with categories "
            f"{sorted(set(ann_category_ids[annotated_non_class].tolist()))[:_MAX_LISTED]} that are not "
            "classes of the project (the train split has no annotation of them)",
            "annotate them in train as well, or remove them from this split",
        )
    _raise_duplicates(path, "annotation", ann_ids)
    xywh, area, iscrowd = columns["xywh"], columns["area"], columns["iscrowd"]

    image_index = pd.Index(image_ids).get_indexer(ann_image_ids)
    label = pd.Index(category_ids).get_indexer(ann_category_ids)
    alive = np.ones(len(ann_ids), dtype=bool)

    def flag(check: str, mask: np.ndarray, describe) -> None:
        """Reports (and, unless the check only reports, removes) the alive annotations in ``mask``."""
        hits = np.flatnonzero(mask & alive)
        findings.add(check, ann_image_ids[hits], ann_ids[hits], [describe(i) for i in hits])
        if DEFAULT_SEVERITY[check] == "dropped":
            alive[hits] = False

    flag(
        "unknown_image",
        image_index < 0,
        lambda i: f"annotation {ann_ids[i]} refers to image id {ann_image_ids[i]}, which is not in `images`",
    )
    flag(
        "unknown_category",
        label < 0,
        lambda i: f"annotation {ann_ids[i]} has category id {ann_category_ids[i]}, which is not declared",
    )
    flag(
        "invalid_bbox",
        ~np.isfinite(xywh).all(axis=1),
        lambda i: f"bbox is not 4 finite numbers: {bbox_written[i]}",
    )
    flag(
        "invalid_bbox",
        columns["bad_area"],
        lambda i: f"area is {area[i]:g}, not a finite number (bbox {_box(xywh[i])})",
    )
    w, h = xywh[:, 2], xywh[:, 3]
    too_small = (w <= 0) | (h <= 0) | (w < policy.min_box_size) | (h < policy.min_box_size)
    flag(
        "degenerate_bbox",
        too_small,
        lambda i: (
            f"bbox {_box(xywh[i])} has width or height <= 0 or below min_box_size={policy.min_box_size}"
        ),
    )

    # Images dropped above take their annotations with them; the image's row says how many.
    on_dropped_image = alive & (image_index >= 0) & ~image_alive[np.maximum(image_index, 0)]
    dropped_per_image = np.bincount(image_index[on_dropped_image], minlength=len(image_ids))
    alive &= ~on_dropped_image
    for check in UNUSABLE_IMAGE_CHECKS:
        positions = [p for p, (c, _) in image_drop_reason.items() if c == check]
        findings.add(
            check,
            image_ids[positions],
            [None] * len(positions),
            [
                f"image {image_ids[p]} ({file_names[p]}): {image_drop_reason[p][1]}; dropped with its "
                f"{dropped_per_image[p]} annotation(s)"
                for p in positions
            ],
        )
    findings.add(
        "transparent_image",
        image_ids[list(image_reported)],
        [None] * len(image_reported),
        [
            f"image {image_ids[p]} ({file_names[p]}): {reason}; kept"
            for p, (_, reason) in image_reported.items()
        ],
    )

    # Clip to the image (fixed), then drop boxes that end up empty (entirely outside the image).
    safe_index = np.maximum(image_index, 0)
    img_w, img_h = widths[safe_index].astype(np.float64), heights[safe_index].astype(np.float64)
    with np.errstate(invalid="ignore"):
        x1 = np.clip(xywh[:, 0], 0.0, img_w)
        y1 = np.clip(xywh[:, 1], 0.0, img_h)
        x2 = np.clip(xywh[:, 0] + xywh[:, 2], 0.0, img_w)
        y2 = np.clip(xywh[:, 1] + xywh[:, 3], 0.0, img_h)
        clipped = (x1 != xywh[:, 0]) | (y1 != xywh[:, 1]) | (x2 != xywh[:, 0] + w) | (y2 != xywh[:, 1] + h)
        outside = (
            (x2 - x1 <= 0)
            | (y2 - y1 <= 0)
            | (x2 - x1 < policy.min_box_size)
            | (y2 - y1 < policy.min_box_size)
        )
    flag(
        "bbox_outside_image",
        outside,
        lambda i: (
            f"bbox {_box(xywh[i])} lies outside the {img_w[i]:g}x{img_h[i]:g} image "
            f"(or is below min_box_size once clipped)"
        ),
    )
    flag(
        "clipped_bbox",
        clipped,
        lambda i: (
            f"bbox {_box(xywh[i])} runs past the {img_w[i]:g}x{img_h[i]:g} image border; clipped to xyxy "
            f"{_box([x1[i], y1[i], x2[i], y2[i]])}"
        ),
    )
    flag("crowd_annotation", iscrowd, lambda i: "crowd annotation: kept for evaluation, left out of training")
    flag(
        "annotation_id_zero",
        ann_ids < 1,
        lambda i: (
            f"annotation id {ann_ids[i]} < 1 is mis-scored by pycocotools; renumbered in the ground truth"
        ),
    )

    # Images without usable (non-crowd) annotations: kept or dropped per split.
    usable = np.bincount(image_index[alive & ~iscrowd], minlength=len(image_ids))
    empty = np.flatnonzero(image_alive & (usable == 0))
    crowd_only = np.bincount(image_index[alive & iscrowd], minlength=len(image_ids))
    drop_empty = policy.drop_images_without_annotations
    findings.add(
        "image_without_annotations",
        image_ids[empty],
        [None] * len(empty),
        [
            f"image {image_ids[p]} ({file_names[p]}) has no usable annotation"
            + (f" ({crowd_only[p]} crowd)" if crowd_only[p] else "")
            + ("; dropped (drop_images_without_annotations)" if drop_empty else "; kept")
            for p in empty
        ],
        severity="dropped" if drop_empty else "reported",
    )
    if drop_empty:
        image_alive[empty] = False
        alive &= image_alive[safe_index]

    used = np.zeros(len(category_ids), dtype=bool)
    used[label[alive]] = True
    dropping = defines_classes and policy.drop_unused_categories
    for table, dropped in ((categories[~used], dropping), (not_classes, True)):
        findings.add(
            "unused_category",
            [None] * len(table),
            [None] * len(table),
            [
                f"category {row.category_id} ({row.name}) is declared but has no annotation; "
                + ("not a class (ingest.validation.drop_unused_categories)" if dropped else "kept as a class")
                for row in table.itertuples()
            ],
            severity="dropped" if dropped else "reported",
        )
    if dropping and not used.all():
        categories = categories[used].reset_index(drop=True)
        categories["label"] = np.arange(len(categories), dtype=np.int64)
        label = np.cumsum(used)[np.maximum(label, 0)] - 1  # old label -> its rank among the kept
        category_ids = category_ids[used]
    _report_category_ids(findings, category_ids)

    report = findings.frame()
    _raise_escalated(path, report)
    if not image_alive.any():
        counts = report.groupby("check").size().to_dict() if len(report) else {}
        raise _fatal(
            path,
            f"split {source.name!r} has no usable image after dropping ({len(image_ids)} declared; "
            f"findings per check: {counts})",
            "check the image folder (ingest.splits.<split>.image_dir) and the file names; "
            "set drop_images_without_annotations: false to keep images without annotations",
        )

    images = pd.DataFrame(
        {
            "image_id": image_ids[image_alive],
            "file_name": file_names[image_alive].reset_index(drop=True),
            "path": image_paths[image_alive].reset_index(drop=True),
            "width": widths[image_alive],
            "height": heights[image_alive],
        }
    )
    keep = np.flatnonzero(alive)
    box_area = (x2 - x1) * (y2 - y1)
    annotations = pd.DataFrame(
        {
            "annotation_id": ann_ids[keep],
            "image_id": ann_image_ids[keep],
            "category_id": ann_category_ids[keep],
            "label": label[keep].astype(np.int64),
            "x1": x1[keep],
            "y1": y1[keep],
            "x2": x2[keep],
            "y2": y2[keep],
            "area": np.where(np.isfinite(area[keep]), area[keep], box_area[keep]),
            "iscrowd": iscrowd[keep],
        }
    )
    used_xywh = np.where(clipped[keep, None], np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)[keep], xywh[keep])
    logger.info(
        "%s: kept %d/%d images and %d/%d annotations (%d findings)",
        source.name,
        len(images),
        len(image_ids),
        len(annotations),
        len(ann_ids),
        len(report),
    )
    fingerprint = {
        "annotation_file": str(path),
        "sha256": sha256,
        "images_declared": len(image_ids),
        "images_kept": len(images),
        "images_dropped": len(image_ids) - len(images),
        "annotations_declared": len(ann_ids),
        "annotations_kept": len(annotations),
        "annotations_dropped": len(ann_ids) - len(annotations),
    }
    return CocoSplit(
        source.name, path, images, annotations, categories.copy(), report, used_xywh, fingerprint
    )


def _report_category_ids(findings: _Findings, category_ids: np.ndarray) -> None:
    """Says how category ids become labels 0..K-1 when that is not simply `id - 1`."""
    count = len(category_ids)
    if np.array_equal(category_ids, np.arange(1, count + 1)):
        return
    if np.array_equal(category_ids, np.arange(category_ids[0], category_ids[0] + count)):
        how = (
            f"are {category_ids[0]}..{category_ids[-1]} (contiguous): label = category_id - {category_ids[0]}"
        )
    else:
        how = f"{_preview(category_ids)} have gaps: labels 0..{count - 1} in id order"
    findings.add(
        "noncontiguous_category_ids", [None], [None], [f"category ids {how} (see the categories table)"]
    )


def _box(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def _preview(values: np.ndarray, limit: int = 12) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"
