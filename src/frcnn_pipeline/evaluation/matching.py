"""COCOeval's detection-to-ground-truth matching, exposed for analyses (errors, confusion, thresholds).

The metrics in ``coco_eval`` only need whether a detection matched; the analyses need which ground truth it
matched. This runs the very same matching (``greedy_matching.greedy_match``: greedy in score order, best IoU,
crowd regions matched last and repeatedly, maxDets per image and category) over the area range "all".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from pycocotools.cocoeval import Params

from frcnn_pipeline.evaluation.coco_records import DetectionArrays, GroundTruthArrays
from frcnn_pipeline.evaluation.greedy_matching import greedy_match, outside_area_ranges, sort_detections

COCO_MAX_DETECTIONS = 100


@dataclass(frozen=True)
class DetectionMatching:
    """Matching of the evaluated detections at each IoU threshold (area "all"); derived arrays are cached.

    Ground truth: every annotation of a listed image and category. Detections: those COCOeval evaluates (at
    most ``max_dets`` per image and category), sorted by (image, category, -score) as COCOeval does.
    """

    iou_thresholds: np.ndarray  # [T]
    image_ids: np.ndarray  # sorted; gt_image and dt_image index into it
    category_ids: np.ndarray  # sorted; gt_category and dt_category index into it
    category_names: list[str]
    gt_image: np.ndarray  # [G]
    gt_category: np.ndarray  # [G]
    gt_box: np.ndarray  # [G, 4] xywh
    gt_crowd: np.ndarray  # [G]
    dt_position: np.ndarray  # [D] position in the detection list given
    dt_image: np.ndarray  # [D]
    dt_category: np.ndarray  # [D]
    dt_box: np.ndarray  # [D, 4] xywh
    dt_score: np.ndarray  # [D]
    matched_gt: np.ndarray  # [D, T] index of the matched ground truth, -1: none
    dt_outside: np.ndarray  # [D] box area outside COCO's "all" range: ignored when unmatched

    @cached_property
    def ignored(self) -> np.ndarray:
        """[D, T]: neither true nor false positive (matched to a crowd region, as COCOeval)."""
        matched = self.matched_gt >= 0
        crowd = np.append(self.gt_crowd, False)[self.matched_gt]  # -1 picks the appended False
        return np.where(matched, crowd, self.dt_outside[:, None])

    @cached_property
    def true_positive(self) -> np.ndarray:
        """[D, T]"""
        return (self.matched_gt >= 0) & ~self.ignored

    @cached_property
    def false_positive(self) -> np.ndarray:
        """[D, T]"""
        return (self.matched_gt < 0) & ~self.ignored

    @cached_property
    def gt_matched(self) -> np.ndarray:
        """[G, T]: the (non-crowd) ground truth was matched by a detection."""
        found = np.zeros((len(self.gt_image), len(self.iou_thresholds)), dtype=bool)
        det, threshold = np.nonzero(self.matched_gt >= 0)
        found[self.matched_gt[det, threshold], threshold] = True
        return found & ~self.gt_crowd[:, None]

    @cached_property
    def num_positive(self) -> np.ndarray:
        """[K]: non-crowd ground-truth boxes per category (COCO's recall denominators, area "all")."""
        return np.bincount(self.gt_category[~self.gt_crowd], minlength=len(self.category_ids))

    @cached_property
    def score_rank(self) -> np.ndarray:
        """[D]: rank of each detection in COCOeval's accumulation order (score descending, ties by image and
        then by position within the image). Restricted to one category it is COCOeval's order for it."""
        rank = np.empty(len(self.dt_score), dtype=np.int64)
        rank[np.argsort(-self.dt_score, kind="mergesort")] = np.arange(len(self.dt_score))
        return rank

    def category_order(self, category: np.ndarray | None = None) -> np.ndarray:
        """Detection indices sorted by category (``dt_category`` unless given), then in COCOeval's order."""
        category = self.dt_category if category is None else category
        # One integer key: exact, and faster than a lexsort.
        key = category.astype(np.int64) * max(len(self.score_rank), 1) + self.score_rank
        return np.argsort(key, kind="stable")


def match_detections(
    ground_truth: dict[str, Any],
    detections: list[dict[str, Any]],
    iou_thresholds: np.ndarray | list[float] | None = None,
    *,
    class_agnostic: bool = False,
    max_dets: int | None = COCO_MAX_DETECTIONS,
) -> DetectionMatching:
    """COCOeval's matching of ``detections`` (COCO results) to ``ground_truth`` (a COCO dict).

    ``iou_thresholds``: COCO's 0.50:0.05:0.95 by default. ``class_agnostic``: a detection may match a box of
    any category (for confusion matrices; ``max_dets`` then counts per image). ``max_dets=None``: no cut.
    """
    params = Params(iouType="bbox")
    if iou_thresholds is not None:
        params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
        if not ((params.iouThrs > 0) & (params.iouThrs <= 1)).all():
            raise ValueError(f"IoU thresholds must be in (0, 1], got {params.iouThrs.tolist()}")
    params.areaRng, params.areaRngLbl = params.areaRng[:1], params.areaRngLbl[:1]
    gt = GroundTruthArrays.from_coco(ground_truth)
    dt = DetectionArrays.from_results(detections, gt)
    if class_agnostic:
        one_category = {"category": np.zeros_like(gt.category), "category_ids": gt.category_ids[:1]}
        matched_gt_arrays = dataclasses.replace(gt, **one_category)
        matched_dt_arrays = dataclasses.replace(dt, category=np.zeros_like(dt.category))
    else:
        matched_gt_arrays, matched_dt_arrays = gt, dt
    order, dt_group, _ = sort_detections(
        matched_gt_arrays, matched_dt_arrays, len(dt.score) if max_dets is None else max_dets
    )
    sorted_dt = dataclasses.replace(
        matched_dt_arrays,
        image=dt.image[order],
        category=matched_dt_arrays.category[order],
        box=dt.box[order],
        score=dt.score[order],
    )
    matched_gt = greedy_match(matched_gt_arrays, sorted_dt, dt_group, params)[:, 0, :]
    known = _known_detection_positions(detections, gt)
    area_range = np.array(params.areaRng, dtype=np.float64)
    return DetectionMatching(
        iou_thresholds=np.asarray(params.iouThrs, dtype=np.float64),
        image_ids=gt.image_ids,
        category_ids=gt.category_ids,
        category_names=gt.category_names,
        gt_image=gt.image,
        gt_category=gt.category,
        gt_box=gt.box,
        gt_crowd=gt.crowd,
        dt_position=known[order],
        dt_image=dt.image[order],
        dt_category=dt.category[order],
        dt_box=dt.box[order],
        dt_score=dt.score[order],
        matched_gt=matched_gt,
        dt_outside=outside_area_ranges(dt.box[order, 2] * dt.box[order, 3], area_range)[:, 0],
    )


def _known_detection_positions(detections: list[dict[str, Any]], gt: GroundTruthArrays) -> np.ndarray:
    """Positions in ``detections`` of those ``DetectionArrays`` keeps (a known category)."""
    category_ids = np.array([d["category_id"] for d in detections], dtype=np.int64)
    return np.flatnonzero(np.isin(category_ids, gt.category_ids))
