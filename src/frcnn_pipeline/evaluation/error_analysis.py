"""Why AP is not higher: the error breakdown of TIDE (Bolya et al., "TIDE: A General Toolbox for Identifying
Object Detection Errors", ECCV 2020), computed on our COCOeval matching.

Why not the ``tidecv`` package: it re-implements matching with per-image Python loops (minutes on COCO val)
and pulls in OpenCV; this module classifies every detection of all images at once from
``matching.match_detections``, so its true positives are exactly COCOeval's.

At a foreground IoU threshold t (TIDE: 0.5; here also each of COCO's 0.50:0.95) with background threshold
t_b = 0.1, each false positive falls in the first class that fits, in TIDE's order:

- **localisation**: the best IoU with an object of its own class is in [t_b, t);
- **classification**: IoU >= t with an object of another class;
- **duplicate**: IoU >= t with an object of its class that a higher-scoring detection already took;
- **background**: IoU <= t_b with every object;
- **both**: anything else (IoU in [t_b, t) with an object of another class only).

An object no detection matched is **missed** unless a classification or localisation error points at it
(fixing that error would find it). Crowd regions are not objects: detections matched to them are ignored, as
in COCOeval. TIDE counts IoU == t with a taken object as localisation; here it is a duplicate.

dAP of a class of errors = AP with those errors fixed - AP (clipped at 0, as TIDE), each class fixed alone:
a classification (localisation) error takes its object's class (box), and the highest-scoring such error on an
object that no detection matched becomes its true positive, the others are removed; duplicate, background and
both errors are removed; missed objects are removed from the ground truth. AP is COCO's 101-point interpolated
AP over the categories that have ground truth (maxDets=100, all sizes), so AP50 without fixes is COCO's AP50.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from frcnn_pipeline.evaluation.greedy_matching import box_iou
from frcnn_pipeline.evaluation.matching import DetectionMatching, match_detections

ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
CLASSIFICATION, LOCALISATION, BOTH, DUPLICATE, BACKGROUND, MISSED = range(len(ERROR_TYPES))
NO_ERROR = -1
BACKGROUND_IOU = 0.1  # TIDE's t_b
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, 101)  # COCO's


@dataclass(frozen=True)
class Overlaps:
    """Per detection: the best IoU with a non-crowd object of its own class and of another class in its
    image, and which object that is (-1: none)."""

    same_class_iou: np.ndarray  # [D]
    same_class_gt: np.ndarray  # [D]
    other_class_iou: np.ndarray  # [D]
    other_class_gt: np.ndarray  # [D]


@dataclass(frozen=True)
class ErrorLabels:
    """TIDE's error class of every evaluated detection and object at each IoU threshold of the matching."""

    matching: DetectionMatching
    overlaps: Overlaps
    detection_error: np.ndarray  # [D, T] int8: index into ERROR_TYPES (never MISSED), NO_ERROR
    missed: np.ndarray  # [G, T] bool

    def counts(self) -> np.ndarray:
        """[E, T]: errors of each class at each IoU threshold."""
        counts = np.stack([(self.detection_error == error).sum(axis=0) for error in range(len(ERROR_TYPES))])
        counts[MISSED] = self.missed.sum(axis=0)
        return counts

    def errors_per_image(self, threshold_index: int = 0) -> np.ndarray:
        """[I]: false-positive errors plus missed objects in each image (in ``matching.image_ids`` order)."""
        num_images = len(self.matching.image_ids)
        wrong = self.detection_error[:, threshold_index] != NO_ERROR
        return np.bincount(self.matching.dt_image[wrong], minlength=num_images) + np.bincount(
            self.matching.gt_image[self.missed[:, threshold_index]], minlength=num_images
        )


def worst_images(labels: ErrorLabels, count: int, threshold_index: int = 0) -> np.ndarray:
    """Indices (into ``matching.image_ids``) of the ``count`` images with the most errors, most first (ties:
    lower image id first); images without errors are left out."""
    errors = labels.errors_per_image(threshold_index)
    order = np.lexsort((np.arange(len(errors)), -errors))
    return order[errors[order] > 0][:count]


@dataclass(frozen=True)
class ErrorBreakdown:
    """AP and the AP gained by fixing each class of errors, at each of COCO's IoU thresholds."""

    labels: ErrorLabels
    ap: np.ndarray  # [T] AP without fixes (COCO's AP at that threshold)
    fixed_ap: np.ndarray  # [E, T] AP with one class of errors fixed

    @property
    def iou_thresholds(self) -> np.ndarray:
        return self.labels.matching.iou_thresholds

    @property
    def delta_ap(self) -> np.ndarray:
        """[E, T]: dAP, clipped at 0 as TIDE does (a fix can lower AP by interpolation effects)."""
        return np.maximum(self.fixed_ap - self.ap, 0.0)

    def _at(self, values: np.ndarray, iou: float) -> np.ndarray:
        at = np.flatnonzero(np.isclose(self.iou_thresholds, iou))
        if not at.size:
            raise ValueError(f"IoU {iou} is not one of the thresholds {self.iou_thresholds.tolist()}")
        return values[..., at[0]]

    def summary(self) -> pd.DataFrame:
        """One row per error class: its count at IoU .50, dAP at IoU .50 and averaged over .50:.95, and AP
        with it fixed (0..1, like COCO's metrics)."""
        counts = self.labels.counts()
        return pd.DataFrame(
            {
                "error": ERROR_TYPES,
                "count_iou50": self._at(counts, 0.5).astype(np.int64),
                "dAP50": self._at(self.delta_ap, 0.5),
                "dAP": self.delta_ap.mean(axis=1),
                "AP50_fixed": self._at(self.fixed_ap, 0.5),
                "AP_fixed": self.fixed_ap.mean(axis=1),
            }
        )

    def baseline(self) -> dict[str, float]:
        """AP50 and AP (.50:.95) without fixes."""
        return {"AP50": float(self._at(self.ap, 0.5)), "AP": float(self.ap.mean())}


def compute_overlaps(matching: DetectionMatching) -> Overlaps:
    """Best same-class and other-class IoU of every detection with the non-crowd objects of its image.

    All (detection, object) pairs of all images at once, as COCOeval's matching builds them (a few objects
    per image). Ties go to the object listed first, as TIDE's argmax.
    """
    num_dt = len(matching.dt_image)
    objects = np.flatnonzero(~matching.gt_crowd)
    objects = objects[np.argsort(matching.gt_image[objects], kind="stable")]
    object_image = matching.gt_image[objects]
    starts = np.searchsorted(object_image, matching.dt_image, "left")
    counts = np.searchsorted(object_image, matching.dt_image, "right") - starts
    offsets = np.cumsum(counts) - counts
    pair_dt = np.repeat(np.arange(num_dt), counts)  # pairs grouped by detection, objects in listed order
    pair_gt = objects[np.repeat(starts, counts) + np.arange(len(pair_dt)) - np.repeat(offsets, counts)]
    iou = box_iou(matching.dt_box[pair_dt], matching.gt_box[pair_gt], np.zeros(len(pair_dt), dtype=bool))
    same = matching.dt_category[pair_dt] == matching.gt_category[pair_gt]
    best = []
    for pairs in (same, ~same):
        masked = np.where(pairs, iou, -1.0)
        best_per_dt = np.full(num_dt, -1.0)
        if len(masked):
            best_per_dt[counts > 0] = np.maximum.reduceat(masked, offsets[counts > 0])
        at_best = np.flatnonzero(pairs & (masked == best_per_dt[pair_dt]))
        first = (
            at_best[np.r_[True, pair_dt[at_best][1:] != pair_dt[at_best][:-1]]] if len(at_best) else at_best
        )
        best_iou, best_gt = np.zeros(num_dt), np.full(num_dt, -1, dtype=np.int64)
        best_iou[pair_dt[first]], best_gt[pair_dt[first]] = iou[first], pair_gt[first]
        best += [best_iou, best_gt]
    return Overlaps(*best)


def classify_errors(
    matching: DetectionMatching, background_iou: float = BACKGROUND_IOU, overlaps: Overlaps | None = None
) -> ErrorLabels:
    """TIDE's error class of every false positive and missed object at each IoU threshold (module doc)."""
    if not 0 < background_iou < matching.iou_thresholds.min():
        raise ValueError(
            f"background_iou must be in (0, {matching.iou_thresholds.min():g}), below the foreground IoU "
            f"(TIDE uses 0.1); got {background_iou}"
        )
    overlaps = compute_overlaps(matching) if overlaps is None else overlaps
    same, other = overlaps.same_class_iou[:, None], overlaps.other_class_iou[:, None]
    threshold = matching.iou_thresholds[None, :]
    remaining = matching.false_positive
    detection_error = np.full(remaining.shape, NO_ERROR, dtype=np.int8)
    for error, fits in (
        (LOCALISATION, (same >= background_iou) & (same < threshold)),
        (CLASSIFICATION, other >= threshold),
        (DUPLICATE, same >= threshold),
        (BACKGROUND, np.maximum(same, other) <= background_iou),
        (BOTH, np.ones_like(remaining)),
    ):
        this = remaining & fits
        detection_error[this] = error
        remaining = remaining & ~this
    # An object a classification or localisation error points at is not missed: fixing the error finds it.
    pointed_at = np.zeros(matching.gt_matched.shape, dtype=bool)
    for error, target in ((CLASSIFICATION, overlaps.other_class_gt), (LOCALISATION, overlaps.same_class_gt)):
        det, t = np.nonzero(detection_error == error)
        pointed_at[target[det], t] = True
    missed = ~matching.gt_crowd[:, None] & ~matching.gt_matched & ~pointed_at
    return ErrorLabels(matching, overlaps, detection_error, missed)


def _mean_ap(
    category: np.ndarray, state: np.ndarray, num_positive: np.ndarray, evaluated: np.ndarray
) -> float:
    """COCO's interpolated AP averaged over the ``evaluated`` categories.

    ``category`` and ``state`` (1: true positive, 0: false positive, -1: not counted) are sorted by category
    and, within a category, in COCOeval's accumulation order. Same operations as
    ``coco_accumulate.accumulate``.
    """
    bounds = np.searchsorted(category, np.arange(len(num_positive) + 1))
    precision_at_recall = np.zeros((len(num_positive), len(RECALL_THRESHOLDS)))
    for k in np.flatnonzero(evaluated & (num_positive > 0)):
        counted = state[bounds[k] : bounds[k + 1]]
        counted = counted[counted >= 0]
        if not len(counted):
            continue
        tp = np.cumsum(counted == 1).astype(float)
        fp = np.cumsum(counted == 0).astype(float)
        recall = tp / int(num_positive[k])
        precision = np.maximum.accumulate((tp / (fp + tp + np.spacing(1)))[::-1])[::-1]
        at = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        precision_at_recall[k] = np.where(at < len(tp), precision[np.minimum(at, len(tp) - 1)], 0)
    return float(precision_at_recall[evaluated].mean()) if evaluated.any() else float("nan")


def _best_per_object(candidates: np.ndarray, target: np.ndarray, score_rank: np.ndarray) -> np.ndarray:
    """Of the ``candidates`` (detection indices) pointing at each object, the highest-scoring one."""
    by_score = candidates[np.argsort(score_rank[candidates], kind="stable")]
    _, first = np.unique(target[by_score], return_index=True)
    return by_score[first]


def _fixed_states(
    labels: ErrorLabels, t: int, base_state: np.ndarray, score_rank: np.ndarray
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """(category, state) of every detection with each class of false-positive errors fixed at threshold t."""
    matching, errors = labels.matching, labels.detection_error[:, t]
    free = ~matching.gt_matched[:, t] & ~matching.gt_crowd
    fixed = {}
    for error, target in (
        (CLASSIFICATION, labels.overlaps.other_class_gt),
        (LOCALISATION, labels.overlaps.same_class_gt),
    ):
        these = np.flatnonzero(errors == error)
        state = base_state.copy()
        state[these] = -1
        found = _best_per_object(these[free[target[these]]], target, score_rank)
        state[found] = 1
        category = matching.dt_category.copy()
        category[these] = matching.gt_category[target[these]]
        fixed[error] = (category, state)
    for error in (BOTH, DUPLICATE, BACKGROUND):
        fixed[error] = (matching.dt_category, np.where(errors == error, -1, base_state))
    return fixed


def error_breakdown(
    ground_truth: dict[str, Any], detections: list[dict[str, Any]], background_iou: float = BACKGROUND_IOU
) -> ErrorBreakdown:
    """TIDE's errors and their dAP at each of COCO's IoU thresholds 0.50:0.05:0.95 (see module doc)."""
    matching = match_detections(ground_truth, detections)
    labels = classify_errors(matching, background_iou)
    score_rank = matching.score_rank
    num_positive = matching.num_positive
    evaluated = num_positive > 0  # COCO averages over the categories with ground truth
    ap = np.zeros(len(matching.iou_thresholds))
    fixed_ap = np.zeros((len(ERROR_TYPES), len(matching.iou_thresholds)))
    base_order = matching.category_order()
    for t in range(len(matching.iou_thresholds)):
        base_state = np.where(matching.true_positive[:, t], 1, np.where(matching.false_positive[:, t], 0, -1))
        ap[t] = _mean_ap(matching.dt_category[base_order], base_state[base_order], num_positive, evaluated)
        for error, (category, state) in _fixed_states(labels, t, base_state, score_rank).items():
            order = base_order if category is matching.dt_category else matching.category_order(category)
            fixed_ap[error, t] = _mean_ap(category[order], state[order], num_positive, evaluated)
        still_positive = num_positive - np.bincount(
            matching.gt_category[labels.missed[:, t]], minlength=len(num_positive)
        )
        fixed_ap[MISSED, t] = _mean_ap(
            matching.dt_category[base_order], base_state[base_order], still_positive, evaluated
        )
    return ErrorBreakdown(labels, ap, fixed_ap)
