"""Confusion matrix of a detector over its classes plus background, at one score and one IoU threshold.

Detections scoring at least ``score_threshold`` are matched to the objects one to one, whatever their class,
by COCOeval's greedy matching (``matching.match_detections(class_agnostic=True)``: in score order, each
detection takes the free object it overlaps most, IoU >= ``iou_threshold``). Then:

- a detection matched to an object counts in (object's class, detection's class): the diagonal is right;
- a detection matched to nothing counts in (background, detection's class): it fired on no object;
- an object matched by nothing counts in (object's class, background): it was missed.

Detections matched to crowd regions count nowhere, as in COCOeval; crowd regions are not objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from frcnn_pipeline.evaluation.matching import match_detections

BACKGROUND = "background"


@dataclass(frozen=True)
class ConfusionMatrix:
    """``counts`` [K+1, K+1]: rows are the ground truth (K classes, then background = no object), columns the
    predictions (K classes, then background = no detection)."""

    counts: np.ndarray
    class_names: list[str]
    score_threshold: float
    iou_threshold: float

    @property
    def labels(self) -> list[str]:
        return [*self.class_names, BACKGROUND]

    def table(self) -> pd.DataFrame:
        """The counts with named rows (``ground_truth``) and columns (predicted class)."""
        return pd.DataFrame(
            self.counts, index=pd.Index(self.labels, name="ground_truth"), columns=self.labels
        )

    def normalised(self) -> np.ndarray:
        """Each row divided by its sum: for an object class, where its objects went; for background, which
        classes the false detections took. NaN for an empty row."""
        totals = self.counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, self.counts / totals, np.nan)


def confusion_matrix(
    ground_truth: dict[str, Any],
    detections: list[dict[str, Any]],
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> ConfusionMatrix:
    """The confusion matrix of ``detections`` (COCO results) against ``ground_truth`` (see module doc)."""
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    kept = [d for d in detections if d["score"] >= score_threshold]
    matching = match_detections(ground_truth, kept, [iou_threshold], class_agnostic=True, max_dets=None)
    background = len(matching.category_ids)
    counts = np.zeros((background + 1, background + 1), dtype=np.int64)
    found = matching.true_positive[:, 0]
    object_class = matching.gt_category[matching.matched_gt[found, 0]]
    np.add.at(counts, (object_class, matching.dt_category[found]), 1)
    np.add.at(counts, (background, matching.dt_category[matching.false_positive[:, 0]]), 1)
    missed = ~matching.gt_crowd & ~matching.gt_matched[:, 0]
    np.add.at(counts, (matching.gt_category[missed], background), 1)
    return ConfusionMatrix(
        counts, list(matching.category_names), float(score_threshold), float(iou_threshold)
    )
