"""A split's annotations: the columns checked record by record (known image and category, finite boxes of
at least min_box_size, inside the image once clipped), one finding per problem; dropped or fixed per check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from frcnn_pipeline.data.coco.findings import DEFAULT_SEVERITY, Findings
from frcnn_pipeline.data.coco.json_file import MAX_LISTED, fatal, raise_duplicates


@dataclass
class SplitAnnotations:
    """A split's annotation columns by position, and which annotations are still kept."""

    ids: np.ndarray
    image_ids: np.ndarray
    category_ids: np.ndarray
    xywh: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray
    bad_area: np.ndarray
    bbox_written: dict[int, str]  # the JSON's text of boxes that are not 4 finite numbers
    image_index: np.ndarray  # position of the annotation's image, -1: unknown
    label: np.ndarray  # position of its category among the classes, -1: unknown
    alive: np.ndarray

    def flag(self, findings: Findings, check: str, mask: np.ndarray, describe: Callable[[int], str]) -> None:
        """Reports (and, unless the check only reports, removes) the kept annotations in ``mask``."""
        hits = np.flatnonzero(mask & self.alive)
        findings.add(check, self.image_ids[hits], self.ids[hits], [describe(i) for i in hits])
        if DEFAULT_SEVERITY[check] == "dropped":
            self.alive[hits] = False


@dataclass
class ClippedBoxes:
    """The boxes as xyxy clipped to their image, and which of them the clipping changed."""

    x1: np.ndarray
    y1: np.ndarray
    x2: np.ndarray
    y2: np.ndarray
    clipped: np.ndarray


def read_annotations(
    path: Path,
    columns: dict[str, np.ndarray],
    bbox_written: dict[int, str],
    *,
    image_ids: np.ndarray,
    category_ids: np.ndarray,
    not_class_ids: np.ndarray,
) -> SplitAnnotations:
    """The annotation columns indexed into the images and classes; fatal for an annotation of a declared
    category that is not a class, and for duplicate ids."""
    ann_ids, ann_image_ids, ann_category_ids = columns["id"], columns["image_id"], columns["category_id"]
    annotated_non_class = np.isin(ann_category_ids, not_class_ids)
    if annotated_non_class.any():
        raise fatal(
            path,
            f"annotates {int(annotated_non_class.sum())} box(es) with categories "
            f"{sorted(set(ann_category_ids[annotated_non_class].tolist()))[:MAX_LISTED]} that are not "
            "classes of the project (the train split has no annotation of them)",
            "annotate them in train as well, or remove them from this split",
        )
    raise_duplicates(path, "annotation", ann_ids)
    return SplitAnnotations(
        ids=ann_ids,
        image_ids=ann_image_ids,
        category_ids=ann_category_ids,
        xywh=columns["xywh"],
        area=columns["area"],
        iscrowd=columns["iscrowd"],
        bad_area=columns["bad_area"],
        bbox_written=bbox_written,
        image_index=pd.Index(image_ids).get_indexer(ann_image_ids),
        label=pd.Index(category_ids).get_indexer(ann_category_ids),
        alive=np.ones(len(ann_ids), dtype=bool),
    )


def flag_invalid_records(anns: SplitAnnotations, findings: Findings, min_box_size: float) -> None:
    """Unknown image or category, a box that is not 4 finite numbers, a non-finite area, too small a box."""
    ids, xywh = anns.ids, anns.xywh
    anns.flag(
        findings,
        "unknown_image",
        anns.image_index < 0,
        lambda i: f"annotation {ids[i]} refers to image id {anns.image_ids[i]}, which is not in `images`",
    )
    anns.flag(
        findings,
        "unknown_category",
        anns.label < 0,
        lambda i: f"annotation {ids[i]} has category id {anns.category_ids[i]}, which is not declared",
    )
    anns.flag(
        findings,
        "invalid_bbox",
        ~np.isfinite(xywh).all(axis=1),
        lambda i: f"bbox is not 4 finite numbers: {anns.bbox_written[i]}",
    )
    anns.flag(
        findings,
        "invalid_bbox",
        anns.bad_area,
        lambda i: f"area is {anns.area[i]:g}, not a finite number (bbox {_box(xywh[i])})",
    )
    w, h = xywh[:, 2], xywh[:, 3]
    anns.flag(
        findings,
        "degenerate_bbox",
        (w <= 0) | (h <= 0) | (w < min_box_size) | (h < min_box_size),
        lambda i: f"bbox {_box(xywh[i])} has width or height <= 0 or below min_box_size={min_box_size}",
    )


def clip_to_images(
    anns: SplitAnnotations, findings: Findings, widths: np.ndarray, heights: np.ndarray, min_box_size: float
) -> ClippedBoxes:
    """Clips the boxes to their image (fixed), then drops those that end up empty (entirely outside)."""
    xywh = anns.xywh
    w, h = xywh[:, 2], xywh[:, 3]
    safe_index = np.maximum(anns.image_index, 0)
    img_w, img_h = widths[safe_index].astype(np.float64), heights[safe_index].astype(np.float64)
    with np.errstate(invalid="ignore"):
        x1 = np.clip(xywh[:, 0], 0.0, img_w)
        y1 = np.clip(xywh[:, 1], 0.0, img_h)
        x2 = np.clip(xywh[:, 0] + xywh[:, 2], 0.0, img_w)
        y2 = np.clip(xywh[:, 1] + xywh[:, 3], 0.0, img_h)
        clipped = (x1 != xywh[:, 0]) | (y1 != xywh[:, 1]) | (x2 != xywh[:, 0] + w) | (y2 != xywh[:, 1] + h)
        outside = (x2 - x1 <= 0) | (y2 - y1 <= 0) | (x2 - x1 < min_box_size) | (y2 - y1 < min_box_size)
    anns.flag(
        findings,
        "bbox_outside_image",
        outside,
        lambda i: (
            f"bbox {_box(xywh[i])} lies outside the {img_w[i]:g}x{img_h[i]:g} image "
            f"(or is below min_box_size once clipped)"
        ),
    )
    anns.flag(
        findings,
        "clipped_bbox",
        clipped,
        lambda i: (
            f"bbox {_box(xywh[i])} runs past the {img_w[i]:g}x{img_h[i]:g} image border; clipped to xyxy "
            f"{_box([x1[i], y1[i], x2[i], y2[i]])}"
        ),
    )
    return ClippedBoxes(x1, y1, x2, y2, clipped)


def flag_kept_oddities(anns: SplitAnnotations, findings: Findings) -> None:
    """Crowd annotations and ids below 1: kept, and reported."""
    anns.flag(
        findings,
        "crowd_annotation",
        anns.iscrowd,
        lambda i: "crowd annotation: kept for evaluation, left out of training",
    )
    anns.flag(
        findings,
        "annotation_id_zero",
        anns.ids < 1,
        lambda i: (
            f"annotation id {anns.ids[i]} < 1 is mis-scored by pycocotools; renumbered in the ground truth"
        ),
    )


def _box(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"
