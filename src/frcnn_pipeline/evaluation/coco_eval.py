"""COCO box AP, identical to pycocotools' COCOeval to the last bit, vectorised with numpy.

Why not call pycocotools or faster-coco-eval directly: pycocotools' per-image Python loops take about a
minute on 5,000 val images, and faster-coco-eval (C++) is only ~3.5-5x faster and has differed from
pycocotools in the last bit of some precisions. This module replays COCOeval's matching and accumulation
with the same floating-point operations in the same order, batched over all images and categories, and reuses
pycocotools' own ``Params`` and ``summarize``: thresholds, averaging and the printed table are pycocotools'.
Tests compare every statistic and every precision with ``==`` against pycocotools.

Where pycocotools is wrong or fragile, we differ on purpose (documented and tested):
- an empty detection list gives the scores pycocotools gives for an empty results set (0 or -1), no error;
- a ground-truth annotation id 0 is matched like any other id (pycocotools takes a match to id 0 for none);
- duplicate ground-truth annotation ids, detections on unknown images, records without an id, non-integer ids
  (1.5 would silently merge with 1) or boxes with missing fields raise a ``ValueError`` naming the records
  (pycocotools silently mis-evaluates or fails with a bare ``KeyError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pycocotools.cocoeval import Params

from frcnn_pipeline.evaluation.coco_accumulate import (
    accumulate,
    count_evaluated_detections,
    positives_by_area,
    pycocotools_accumulate,
    summarize,
)
from frcnn_pipeline.evaluation.coco_records import DetectionArrays, GroundTruthArrays

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
AREA_LABELS = ("all", "small", "medium", "large")
PER_CATEGORY_COLUMNS = [
    "category_id", "name", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
    "ARl", "num_ground_truth", "num_ground_truth_small", "num_ground_truth_medium", "num_ground_truth_large",
    "num_detections",
]  # fmt: skip


@dataclass(frozen=True)
class CocoBoxEvaluation:
    """COCOeval's outputs: ``stats`` (12), ``precision`` [T,R,K,A,M], ``recall`` [T,K,A,M], ``scores``."""

    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    category_ids: list[int]
    category_names: list[str]
    num_ground_truth_by_area: np.ndarray  # [K, A] non-crowd boxes per category in each area range
    num_detections: np.ndarray  # [K] evaluated detections per category (at most 100 per image)
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    summary: str  # pycocotools' printed table

    @property
    def num_ground_truth(self) -> np.ndarray:
        """[K] non-crowd boxes per category (all sizes)."""
        return self.num_ground_truth_by_area[:, 0]

    def metrics(self) -> dict[str, float]:
        """The 12 COCO box metrics ``{name: value}`` in [0, 1] (-1: no ground truth in that range)."""
        return {name: float(value) for name, value in zip(STAT_NAMES, self.stats, strict=True)}

    def _ap(self, iou: float | None = None, category: int | None = None, area: int = 0) -> float:
        """Mean interpolated precision at maxDets=100 (NaN where nothing has ground truth)."""
        precision = self.precision if iou is None else self.precision[self.iou_thresholds == iou]
        categories = slice(None) if category is None else category
        return _mean_valid(precision[:, :, categories, area, -1])

    def _ar(self, max_dets_index: int = -1, category: int | None = None, area: int = 0) -> float:
        categories = slice(None) if category is None else category
        return _mean_valid(self.recall[:, categories, area, max_dets_index])

    def per_category_ap(self) -> pd.DataFrame:
        """COCO's AP and AR per category (NaN where the category has no ground truth), as detectron2's AP
        per category: AP at .50:.95, .50, .75 and per size; AR at 1, 10, 100 detections and per size."""
        rows = []
        for k, (category_id, name) in enumerate(zip(self.category_ids, self.category_names, strict=True)):
            row = {"category_id": category_id, "name": name}
            row["AP"], row["AP50"], row["AP75"] = self._ap(None, k), self._ap(0.5, k), self._ap(0.75, k)
            for label, a in (("APs", 1), ("APm", 2), ("APl", 3)):
                row[label] = self._ap(None, k, a)
            for label, m in (("AR1", 0), ("AR10", 1), ("AR100", 2)):
                row[label] = self._ar(m, k)
            for label, a in (("ARs", 1), ("ARm", 2), ("ARl", 3)):
                row[label] = self._ar(-1, k, a)
            row["num_ground_truth"] = int(self.num_ground_truth[k])
            for area_label, a in zip(("small", "medium", "large"), (1, 2, 3), strict=True):
                row[f"num_ground_truth_{area_label}"] = int(self.num_ground_truth_by_area[k, a])
            row["num_detections"] = int(self.num_detections[k])
            rows.append(row)
        return pd.DataFrame(rows, columns=PER_CATEGORY_COLUMNS)

    def per_area_metrics(self) -> pd.DataFrame:
        """One row per COCO area range (all, small, medium, large): AP and AR over all categories, and the
        number of non-crowd ground-truth boxes in that range (NaN metrics where it has none)."""
        rows = []
        for a, area_label in enumerate(AREA_LABELS):
            row = {"area": area_label, "AP": self._ap(None, None, a)}
            row["AP50"], row["AP75"] = self._ap(0.5, None, a), self._ap(0.75, None, a)
            for label, m in (("AR1", 0), ("AR10", 1), ("AR100", 2)):
                row[label] = self._ar(m, None, a)
            row["num_ground_truth"] = int(self.num_ground_truth_by_area[:, a].sum())
            rows.append(row)
        return pd.DataFrame(rows)


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def evaluate_boxes(
    ground_truth: dict[str, Any],
    detections: list[dict[str, Any]],
    backend: Literal["numpy", "pycocotools"] = "numpy",
) -> CocoBoxEvaluation:
    """COCO bbox evaluation of ``detections`` (COCO results: image_id, category_id, bbox xywh, score).

    ``backend="pycocotools"`` runs pycocotools' COCOeval itself (slow; for cross-checks).
    """
    params = Params(iouType="bbox")
    gt = GroundTruthArrays.from_coco(ground_truth)
    dt = DetectionArrays.from_results(detections, gt)
    params.imgIds = gt.image_ids.tolist()
    params.catIds = gt.category_ids.tolist()
    if backend == "numpy":
        precision, recall, scores, num_detections = accumulate(gt, dt, params)
    elif backend == "pycocotools":
        precision, recall, scores = pycocotools_accumulate(ground_truth, detections, gt, params)
        num_detections = count_evaluated_detections(gt, dt, params.maxDets[-1])
    else:
        raise ValueError(f"Unknown COCO evaluation backend {backend!r}; use 'numpy' or 'pycocotools'.")
    stats, summary = summarize(precision, recall, scores, params)
    return CocoBoxEvaluation(
        stats=stats,
        precision=precision,
        recall=recall,
        scores=scores,
        category_ids=gt.category_ids.tolist(),
        category_names=gt.category_names,
        num_ground_truth_by_area=positives_by_area(gt, np.array(params.areaRng, dtype=np.float64)),
        num_detections=num_detections,
        iou_thresholds=params.iouThrs,
        recall_thresholds=params.recThrs,
        summary=summary,
    )
