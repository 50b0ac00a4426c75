"""COCOeval.evaluateImg's greedy matching of detections to ground truth, vectorised over images, categories,
area ranges and IoU thresholds with pycocotools' floating-point operations."""

from __future__ import annotations

import numpy as np
from pycocotools.cocoeval import Params

from frcnn_pipeline.evaluation.coco_records import DetectionArrays, GroundTruthArrays


def box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired xywh boxes with pycocotools' ``bbIou`` operations (crowd: intersection over dt area)."""
    w = np.minimum(dt[:, 2] + dt[:, 0], gt[:, 2] + gt[:, 0]) - np.maximum(dt[:, 0], gt[:, 0])
    h = np.minimum(dt[:, 3] + dt[:, 1], gt[:, 3] + gt[:, 1]) - np.maximum(dt[:, 1], gt[:, 1])
    dt_area, gt_area = dt[:, 2] * dt[:, 3], gt[:, 2] * gt[:, 3]
    inter = w * h
    union = np.where(crowd, dt_area, dt_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def rank_in_group(sorted_groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of an already sorted array."""
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    run_lengths = np.diff(np.r_[starts, len(sorted_groups)])
    return np.arange(len(sorted_groups)) - np.repeat(starts, run_lengths)


def outside_area_ranges(area: np.ndarray, area_ranges: np.ndarray) -> np.ndarray:
    """[N, A]: area outside each range (COCOeval's test)."""
    return (area[:, None] < area_ranges[:, 0]) | (area[:, None] > area_ranges[:, 1])


def greedy_match(
    gt: GroundTruthArrays, dt: DetectionArrays, dt_group: np.ndarray, params: Params
) -> np.ndarray:
    """COCOeval.evaluateImg's greedy matching for all images, categories, area ranges and IoU thresholds.

    ``dt`` is sorted by (image, category, -score). Returns ``matched_gt`` [D, A, T]: the index of the
    ground truth each detection matched, -1 for none. Detections are processed in score order within each
    (image, category); different (image, category) groups are independent, so step s handles the s-th
    detection of every group at once.
    """
    num_classes = len(gt.category_ids)
    thresholds = np.minimum(params.iouThrs, 1 - 1e-10)
    area_ranges = np.array(params.areaRng, dtype=np.float64)
    gt_ignored = gt.crowd[:, None] | outside_area_ranges(gt.area, area_ranges)  # [G, A]
    gt_group = gt.image * num_classes + gt.category
    gt_order = np.argsort(gt_group, kind="stable")  # annotation order within a group, as COCOeval
    sorted_gt_group = gt_group[gt_order]
    starts = np.searchsorted(sorted_gt_group, dt_group, "left")
    counts = np.searchsorted(sorted_gt_group, dt_group, "right") - starts
    pair_dt = np.repeat(np.arange(len(dt_group)), counts)
    pair_rank = np.arange(len(pair_dt)) - np.repeat(np.cumsum(counts) - counts, counts)
    pair_gt = gt_order[np.repeat(starts, counts) + pair_rank]  # gt in annotation order within its group
    iou = box_iou(dt.box[pair_dt], gt.box[pair_gt], gt.crowd[pair_gt])
    # A pair below the lowest threshold never matches; the rest is usually a few pairs per detection.
    keep = iou >= thresholds.min()
    pair_dt, pair_gt, pair_rank, iou = pair_dt[keep], pair_gt[keep], pair_rank[keep], iou[keep]

    num_dt, num_areas, num_thresholds = len(dt_group), len(area_ranges), len(thresholds)
    matched_gt = np.full((num_dt, num_areas, num_thresholds), -1, dtype=np.int32)
    if not len(pair_dt):
        return matched_gt
    # Step of each detection: its rank among the detections of its group that have candidate pairs.
    candidate_dts = np.unique(pair_dt)
    step_of_dt = np.zeros(num_dt, dtype=np.int64)
    step_of_dt[candidate_dts] = rank_in_group(dt_group[candidate_dts])
    # COCOeval keeps the best IoU, the later ground truth on ties, and prefers non-ignored ground truth:
    # sort each detection's pairs by (iou, annotation order) so that the last eligible pair wins.
    order = np.lexsort((pair_rank, iou, pair_dt, step_of_dt[pair_dt]))
    pair_dt, pair_gt, iou = pair_dt[order], pair_gt[order], iou[order]
    pair_offset = rank_in_group(pair_dt)
    priority_span = pair_offset.max() + 1
    pair_step = step_of_dt[pair_dt]
    step_bounds = np.searchsorted(pair_step, np.arange(pair_step.max() + 2))
    gt_taken = np.zeros((len(gt.box), num_areas, num_thresholds), dtype=bool)
    for step in range(len(step_bounds) - 1):
        lo, hi = step_bounds[step], step_bounds[step + 1]
        g, p_dt = pair_gt[lo:hi], pair_dt[lo:hi]
        eligible = (iou[lo:hi, None, None] >= thresholds) & ~(gt_taken[g] & ~gt.crowd[g][:, None, None])
        priority = 1 + pair_offset[lo:hi, None, None] + priority_span * ~gt_ignored[g, :, None]
        key = np.where(eligible, priority, 0)
        segment_starts = np.flatnonzero(np.r_[True, p_dt[1:] != p_dt[:-1]])
        best = np.maximum.reduceat(key, segment_starts, axis=0)  # [n, A, T]
        has_match = best > 0
        chosen_pair = lo + segment_starts[:, None, None] + (best - 1) % priority_span
        chosen_gt = pair_gt[np.where(has_match, chosen_pair, lo)]
        matched_gt[p_dt[segment_starts]] = np.where(has_match, chosen_gt, -1)
        _, a_idx, t_idx = np.nonzero(has_match)
        gt_taken[chosen_gt[has_match], a_idx, t_idx] = True
    return matched_gt


def matched_ignored_gt(matched_gt: np.ndarray, gt_ignored: np.ndarray) -> np.ndarray:
    """[D, A, T]: matched to a ground truth that is ignored in that area range (crowd or outside it)."""
    padded = np.vstack([gt_ignored, np.zeros((1, gt_ignored.shape[1]), dtype=bool)])  # -1 picks the pad
    return padded[matched_gt, np.arange(gt_ignored.shape[1])[None, :, None]]


def sort_detections(gt: GroundTruthArrays, dt: DetectionArrays, max_dets: int):
    """Sort by (image, category, -score, input order) and keep COCOeval's top ``max_dets`` per group."""
    group = dt.image * len(gt.category_ids) + dt.category
    order = np.lexsort((np.arange(len(group)), -dt.score, group))
    rank = rank_in_group(group[order])
    order, rank = order[rank < max_dets], rank[rank < max_dets]
    return order, group[order], rank
