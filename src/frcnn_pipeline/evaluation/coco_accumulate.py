"""COCOeval.accumulate and summarize over the greedy matching: precision, recall and scores per IoU threshold,
recall threshold, category, area range and maxDets, and pycocotools' own 12 statistics and printed table."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
from pycocotools.cocoeval import COCOeval, Params

from frcnn_pipeline.evaluation.coco_records import DetectionArrays, GroundTruthArrays
from frcnn_pipeline.evaluation.greedy_matching import (
    greedy_match,
    matched_ignored_gt,
    outside_area_ranges,
    sort_detections,
)


def positives_by_area(gt: GroundTruthArrays, area_ranges: np.ndarray) -> np.ndarray:
    """[K, A]: ground-truth boxes COCOeval counts as positives (not crowd, inside the area range)."""
    counted = ~(gt.crowd[:, None] | outside_area_ranges(gt.area, area_ranges))
    per_area = [
        np.bincount(gt.category[counted[:, a]], minlength=len(gt.category_ids))
        for a in range(len(area_ranges))
    ]
    return np.stack(per_area, axis=1)


def count_evaluated_detections(gt: GroundTruthArrays, dt: DetectionArrays, max_dets: int) -> np.ndarray:
    order, _, _ = sort_detections(gt, dt, max_dets)
    return np.bincount(dt.category[order], minlength=len(gt.category_ids))


def accumulate(gt: GroundTruthArrays, dt: DetectionArrays, params: Params):
    """COCOeval.evaluate + accumulate: precision [T,R,K,A,M], recall [T,K,A,M], scores, dets per class."""
    order, dt_group, rank = sort_detections(gt, dt, params.maxDets[-1])
    sorted_dt = DetectionArrays(dt.image[order], dt.category[order], dt.box[order], dt.score[order])
    matched_gt = greedy_match(gt, sorted_dt, dt_group, params)
    area_ranges = np.array(params.areaRng, dtype=np.float64)
    gt_ignored = gt.crowd[:, None] | outside_area_ranges(gt.area, area_ranges)
    matched = matched_gt >= 0
    dt_area = sorted_dt.box[:, 2] * sorted_dt.box[:, 3]
    outside = outside_area_ranges(dt_area, area_ranges)[:, :, None]
    ignored = np.where(matched, matched_ignored_gt(matched_gt, gt_ignored), outside)
    true_positive = matched & ~ignored
    false_positive = ~matched & ~ignored

    num_t, num_r, num_k = len(params.iouThrs), len(params.recThrs), len(params.catIds)
    num_a, num_m = len(params.areaRng), len(params.maxDets)
    precision = -np.ones((num_t, num_r, num_k, num_a, num_m))
    recall = -np.ones((num_t, num_k, num_a, num_m))
    scores = -np.ones((num_t, num_r, num_k, num_a, num_m))
    for k in range(num_k):
        in_class = np.flatnonzero(sorted_dt.category == k)  # already in (image, -score) order
        # COCOeval concatenates images in id order and sorts by score with a stable mergesort.
        in_class = in_class[np.argsort(-sorted_dt.score[in_class], kind="mergesort")]
        num_positive = (~gt_ignored[gt.category == k]).sum(axis=0)  # [A]
        for m, max_dets in enumerate(params.maxDets):
            kept = in_class[rank[in_class] < max_dets]
            tp_sum = np.cumsum(true_positive[kept], axis=0).astype(float)  # [n, A, T]
            fp_sum = np.cumsum(false_positive[kept], axis=0).astype(float)
            kept_scores = sorted_dt.score[kept]
            for a in range(num_a):
                if num_positive[a] == 0:
                    continue
                for t in range(num_t):
                    tp, fp = tp_sum[:, a, t], fp_sum[:, a, t]
                    recall_curve = tp / int(num_positive[a])
                    precision_curve = tp / (fp + tp + np.spacing(1))
                    if not len(tp):
                        recall[t, k, a, m] = 0
                        precision[t, :, k, a, m] = scores[t, :, k, a, m] = 0
                        continue
                    recall[t, k, a, m] = recall_curve[-1]
                    # Precision made monotonically decreasing, sampled at the recall thresholds.
                    precision_curve = np.maximum.accumulate(precision_curve[::-1])[::-1]
                    at = np.searchsorted(recall_curve, params.recThrs, side="left")
                    inside = at < len(tp)
                    at = np.minimum(at, len(tp) - 1)  # past the end: no precision at that recall (0)
                    precision[t, :, k, a, m] = np.where(inside, precision_curve[at], 0)
                    scores[t, :, k, a, m] = np.where(inside, kept_scores[at], 0)
    num_detections = np.bincount(sorted_dt.category, minlength=num_k)
    return precision, recall, scores, num_detections


def pycocotools_accumulate(
    ground_truth: dict[str, Any], detections: list[dict[str, Any]], gt: GroundTruthArrays, params: Params
):
    """pycocotools' COCOeval; an empty results set is built directly since ``loadRes([])`` raises."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        # COCOeval writes flags into the annotation dicts: give it copies.
        coco_gt.dataset = {**ground_truth, "annotations": [dict(a) for a in ground_truth["annotations"]]}
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        else:
            coco_dt = COCO()
            coco_dt.dataset = {**ground_truth, "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = list(params.imgIds)
        evaluator.params.catIds = list(params.catIds)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"], evaluator.eval["recall"], evaluator.eval["scores"]


def summarize(precision: np.ndarray, recall: np.ndarray, scores: np.ndarray, params: Params):
    """pycocotools' own summarize over our accumulation: the 12 stats and the printed table."""
    evaluator = COCOeval(iouType="bbox")
    evaluator.params = params
    evaluator.eval = {"precision": precision, "recall": recall, "scores": scores}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=np.float64), printed.getvalue()
