"""Score threshold advice: for each category, the score threshold that maximises F1, with its precision and
recall, for a deployer who must keep one threshold per class (or one for all).

Detections are matched as COCOeval matches them at one IoU threshold (area "all", maxDets=100); keeping the
detections scoring at least s, precision = TP / kept, recall = TP / objects, F1 their harmonic mean. Only
scores that separate detections are candidates (the last of a run of equal scores), and ties in F1 go to the
higher threshold. The thresholds are tuned on the split they are measured on, so they flatter it a little;
they cannot go below the score threshold the detections were produced with (``evaluate.inference``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from frcnn_pipeline.evaluation.matching import match_detections

ALL_CATEGORIES = "all categories"
COLUMNS = [
    "category_id", "name", "score_threshold", "precision", "recall", "f1", "true_positives",
    "false_positives", "false_negatives", "num_ground_truth",
]  # fmt: skip


@dataclass(frozen=True)
class F1Curve:
    """Precision, recall and F1 when keeping the detections scoring at least each candidate threshold."""

    name: str
    thresholds: np.ndarray  # descending
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    num_ground_truth: int

    def best(self) -> int | None:
        """Index of the F1-maximising threshold (the highest on ties); None without candidates."""
        return int(np.argmax(self.f1)) if len(self.f1) else None


@dataclass(frozen=True)
class ThresholdAdvice:
    curves: list[F1Curve]  # one per category, then all categories pooled
    category_ids: list[int]

    def table(self) -> pd.DataFrame:
        """One row per category, then one for all categories pooled under a single threshold."""
        rows = []
        for category_id, curve in zip([*self.category_ids, None], self.curves, strict=True):
            row = {"category_id": category_id, "name": curve.name, "num_ground_truth": curve.num_ground_truth}
            best = curve.best()
            if best is None or curve.num_ground_truth == 0:
                # No detection, or no object: no threshold can be right.
                row.update(
                    false_negatives=curve.num_ground_truth, recall=0.0 if curve.num_ground_truth else None
                )
            else:
                row.update(
                    score_threshold=curve.thresholds[best],
                    precision=curve.precision[best],
                    recall=curve.recall[best],
                    f1=curve.f1[best],
                    true_positives=int(curve.true_positives[best]),
                    false_positives=int(curve.false_positives[best]),
                    false_negatives=int(curve.num_ground_truth - curve.true_positives[best]),
                )
            rows.append(row)
        table = pd.DataFrame(rows, columns=COLUMNS)
        for column in ("category_id", "true_positives", "false_positives", "false_negatives"):
            table[column] = table[column].astype("Int64")
        return table


def _f1_curve(name: str, score: np.ndarray, state: np.ndarray, num_ground_truth: int) -> F1Curve:
    """``score``/``state`` (1 true, 0 false positive) in descending score order."""
    tp = np.cumsum(state == 1)
    fp = np.cumsum(state == 0)
    # Only the last detection of a run of equal scores is a threshold one can set.
    cut = np.flatnonzero(np.r_[score[1:] != score[:-1], True]) if len(score) else np.zeros(0, dtype=np.int64)
    tp, fp = tp[cut], fp[cut]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / np.maximum(tp + fp, 1)
        recall = tp / num_ground_truth if num_ground_truth else np.zeros(len(cut))
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return F1Curve(name, score[cut], precision, recall, f1, tp, fp, int(num_ground_truth))


def score_threshold_advice(
    ground_truth: dict[str, Any], detections: list[dict[str, Any]], iou_threshold: float = 0.5
) -> ThresholdAdvice:
    """F1-maximising score thresholds per category and for all categories together (see module doc)."""
    matching = match_detections(ground_truth, detections, [iou_threshold])
    state = np.where(matching.true_positive[:, 0], 1, np.where(matching.false_positive[:, 0], 0, -1))
    counted = state >= 0  # detections matched to crowd regions are neither
    order = matching.category_order()
    order = order[counted[order]]
    category = matching.dt_category[order]
    bounds = np.searchsorted(category, np.arange(len(matching.category_ids) + 1))
    num_positive = matching.num_positive
    curves = [
        _f1_curve(name, matching.dt_score[order[lo:hi]], state[order[lo:hi]], int(num_positive[k]))
        for k, (name, lo, hi) in enumerate(zip(matching.category_names, bounds[:-1], bounds[1:], strict=True))
    ]
    pooled = np.argsort(matching.score_rank, kind="stable")
    pooled = pooled[counted[pooled]]
    curves.append(
        _f1_curve(ALL_CATEGORIES, matching.dt_score[pooled], state[pooled], int(num_positive.sum()))
    )
    return ThresholdAdvice(curves, matching.category_ids.tolist())
