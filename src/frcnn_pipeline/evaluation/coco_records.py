"""COCO ground truth and detection results as validated, indexed numpy arrays.

Records pycocotools would silently mis-evaluate (duplicate annotation ids, non-integer ids, detections on
unknown images, missing fields) raise a ``ValueError`` naming them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MAX_SHOWN_IDS = 10


def _show_ids(ids: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:MAX_SHOWN_IDS])
    return shown + (f" (and {len(ids) - MAX_SHOWN_IDS} more)" if len(ids) > MAX_SHOWN_IDS else "")


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int | np.integer) or (
        isinstance(value, float | np.floating) and value.is_integer()
    )


def _integer_ids(records: list[dict[str, Any]], key: str, what: str) -> np.ndarray:
    """`key` of every record as int64; a missing or non-integer id (1.5 would merge with 1) is an error."""
    missing = [i for i, r in enumerate(records) if key not in r]
    if missing:
        raise ValueError(
            f"{what} at positions {missing[:MAX_SHOWN_IDS]} have no {key!r} (e.g. {records[missing[0]]}); "
            "every record needs one."
        )
    bad = [(i, r[key]) for i, r in enumerate(records) if not _is_integer(r[key])]
    if bad:
        listed = ", ".join(f"position {i}: {value!r}" for i, value in bad[:MAX_SHOWN_IDS])
        raise ValueError(f"{what}: {key!r} must be an integer; {listed}. Fix those records.")
    return np.array([r[key] for r in records], dtype=np.int64)


def _boxes(records: list[dict[str, Any]], what: str) -> np.ndarray:
    try:
        boxes = np.array([r["bbox"] for r in records], dtype=np.float64).reshape(-1, 4)
    except (KeyError, ValueError) as error:
        bad = [i for i, r in enumerate(records) if len(r.get("bbox", ())) != 4]
        raise ValueError(
            f"{what}: every entry needs 'bbox' as [x, y, width, height]; entries at positions "
            f"{bad[:MAX_SHOWN_IDS]} do not have one."
        ) from error
    return boxes


@dataclass
class GroundTruthArrays:
    image_ids: np.ndarray  # sorted unique, as COCOeval's params.imgIds
    category_ids: np.ndarray  # sorted unique
    category_names: list[str]
    image: np.ndarray  # per annotation: index into image_ids
    category: np.ndarray  # per annotation: index into category_ids
    box: np.ndarray  # xywh
    area: np.ndarray
    crowd: np.ndarray

    @classmethod
    def from_coco(cls, coco: dict[str, Any]) -> GroundTruthArrays:
        missing = {"images", "annotations", "categories"} - set(coco)
        if missing:
            raise ValueError(f"Ground truth is not a COCO dict: missing keys {sorted(missing)}.")
        image_ids = np.unique(_integer_ids(coco["images"], "id", "Ground-truth images"))
        declared = _integer_ids(coco["categories"], "id", "Ground-truth categories")
        names = {int(i): str(c.get("name", i)) for i, c in zip(declared, coco["categories"], strict=True)}
        category_ids = np.array(sorted(names), dtype=np.int64)
        anns = coco["annotations"]
        ann_ids = _integer_ids(anns, "id", "Ground-truth annotations")
        unique_ids, counts = np.unique(ann_ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(
                f"Ground truth has duplicate annotation ids {_show_ids(unique_ids[counts > 1])}; "
                "pycocotools would silently evaluate one of them twice. Give every annotation a unique id."
            )
        no_area = [a["id"] for a in anns if "area" not in a]
        if no_area:
            raise ValueError(
                f"Ground-truth annotations {_show_ids(np.array(no_area))} have no 'area' (COCO needs it "
                "for the small/medium/large ranges); add it (the box's width*height when there is no mask)."
            )
        ann_images = _integer_ids(anns, "image_id", "Ground-truth annotations")
        ann_categories = _integer_ids(anns, "category_id", "Ground-truth annotations")
        known = np.isin(ann_images, image_ids) & np.isin(ann_categories, category_ids)
        if not known.all():
            # COCOeval only looks at listed images and categories.
            logger.warning(
                "Ground truth: %d annotations on unlisted images or categories are not evaluated (ids %s).",
                int((~known).sum()),
                _show_ids(ann_ids[~known]),
            )
        return cls(
            image_ids=image_ids,
            category_ids=category_ids,
            category_names=[names[int(c)] for c in category_ids],
            image=np.searchsorted(image_ids, ann_images[known]),
            category=np.searchsorted(category_ids, ann_categories[known]),
            box=_boxes(anns, "Ground-truth annotations")[known],
            area=np.array([a["area"] for a in anns], dtype=np.float64)[known],
            crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)[known],
        )


@dataclass
class DetectionArrays:
    image: np.ndarray
    category: np.ndarray
    box: np.ndarray
    score: np.ndarray

    @classmethod
    def from_results(cls, detections: list[dict[str, Any]], gt: GroundTruthArrays) -> DetectionArrays:
        lacking = [i for i, d in enumerate(detections) if "score" not in d]
        if lacking:
            raise ValueError(
                f"Detections at positions {lacking[:MAX_SHOWN_IDS]} have no 'score'; COCO results need "
                "image_id, category_id, bbox [x, y, width, height] and score."
            )
        image_ids = _integer_ids(detections, "image_id", "Detections")
        category_ids = _integer_ids(detections, "category_id", "Detections")
        score = np.array([d["score"] for d in detections], dtype=np.float64)
        box = _boxes(detections, "Detections")
        unknown_images = np.setdiff1d(image_ids, gt.image_ids)
        if unknown_images.size:
            raise ValueError(
                f"Detections refer to image ids {_show_ids(unknown_images)}, which are not in the ground "
                "truth; evaluate them against the ground truth of the split they were predicted on."
            )
        known = np.isin(category_ids, gt.category_ids)
        if not known.all():
            logger.warning(
                "%d detections have category ids %s unknown to the ground truth; they are not evaluated "
                "(as in pycocotools).",
                int((~known).sum()),
                _show_ids(np.unique(category_ids[~known])),
            )
        return cls(
            image=np.searchsorted(gt.image_ids, image_ids[known]),
            category=np.searchsorted(gt.category_ids, category_ids[known]),
            box=box[known],
            score=score[known],
        )
