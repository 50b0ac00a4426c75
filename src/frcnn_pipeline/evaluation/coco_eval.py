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

import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pycocotools.cocoeval import COCOeval, Params

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
AREA_LABELS = ("all", "small", "medium", "large")
MAX_SHOWN_IDS = 10
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
    gt = _GroundTruthArrays.from_coco(ground_truth)
    dt = _DetectionArrays.from_results(detections, gt)
    params.imgIds = gt.image_ids.tolist()
    params.catIds = gt.category_ids.tolist()
    if backend == "numpy":
        precision, recall, scores, num_detections = _accumulate(gt, dt, params)
    elif backend == "pycocotools":
        precision, recall, scores = _pycocotools_accumulate(ground_truth, detections, gt, params)
        num_detections = _count_evaluated_detections(gt, dt, params.maxDets[-1])
    else:
        raise ValueError(f"Unknown COCO evaluation backend {backend!r}; use 'numpy' or 'pycocotools'.")
    stats, summary = _summarize(precision, recall, scores, params)
    return CocoBoxEvaluation(
        stats=stats,
        precision=precision,
        recall=recall,
        scores=scores,
        category_ids=gt.category_ids.tolist(),
        category_names=gt.category_names,
        num_ground_truth_by_area=_positives_by_area(gt, np.array(params.areaRng, dtype=np.float64)),
        num_detections=num_detections,
        iou_thresholds=params.iouThrs,
        recall_thresholds=params.recThrs,
        summary=summary,
    )


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
class _GroundTruthArrays:
    image_ids: np.ndarray  # sorted unique, as COCOeval's params.imgIds
    category_ids: np.ndarray  # sorted unique
    category_names: list[str]
    image: np.ndarray  # per annotation: index into image_ids
    category: np.ndarray  # per annotation: index into category_ids
    box: np.ndarray  # xywh
    area: np.ndarray
    crowd: np.ndarray

    @classmethod
    def from_coco(cls, coco: dict[str, Any]) -> _GroundTruthArrays:
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
class _DetectionArrays:
    image: np.ndarray
    category: np.ndarray
    box: np.ndarray
    score: np.ndarray

    @classmethod
    def from_results(cls, detections: list[dict[str, Any]], gt: _GroundTruthArrays) -> _DetectionArrays:
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


def _box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired xywh boxes with pycocotools' ``bbIou`` operations (crowd: intersection over dt area)."""
    w = np.minimum(dt[:, 2] + dt[:, 0], gt[:, 2] + gt[:, 0]) - np.maximum(dt[:, 0], gt[:, 0])
    h = np.minimum(dt[:, 3] + dt[:, 1], gt[:, 3] + gt[:, 1]) - np.maximum(dt[:, 1], gt[:, 1])
    dt_area, gt_area = dt[:, 2] * dt[:, 3], gt[:, 2] * gt[:, 3]
    inter = w * h
    union = np.where(crowd, dt_area, dt_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _rank_in_group(sorted_groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of an already sorted array."""
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    run_lengths = np.diff(np.r_[starts, len(sorted_groups)])
    return np.arange(len(sorted_groups)) - np.repeat(starts, run_lengths)


def _outside(area: np.ndarray, area_ranges: np.ndarray) -> np.ndarray:
    """[N, A]: area outside each range (COCOeval's test)."""
    return (area[:, None] < area_ranges[:, 0]) | (area[:, None] > area_ranges[:, 1])


def _positives_by_area(gt: _GroundTruthArrays, area_ranges: np.ndarray) -> np.ndarray:
    """[K, A]: ground-truth boxes COCOeval counts as positives (not crowd, inside the area range)."""
    counted = ~(gt.crowd[:, None] | _outside(gt.area, area_ranges))
    per_area = [
        np.bincount(gt.category[counted[:, a]], minlength=len(gt.category_ids))
        for a in range(len(area_ranges))
    ]
    return np.stack(per_area, axis=1)


def _match(gt: _GroundTruthArrays, dt: _DetectionArrays, dt_group: np.ndarray, params: Params) -> np.ndarray:
    """COCOeval.evaluateImg's greedy matching for all images, categories, area ranges and IoU thresholds.

    ``dt`` is sorted by (image, category, -score). Returns ``matched_gt`` [D, A, T]: the index of the
    ground truth each detection matched, -1 for none. Detections are processed in score order within each
    (image, category); different (image, category) groups are independent, so step s handles the s-th
    detection of every group at once.
    """
    num_classes = len(gt.category_ids)
    thresholds = np.minimum(params.iouThrs, 1 - 1e-10)
    area_ranges = np.array(params.areaRng, dtype=np.float64)
    gt_ignored = gt.crowd[:, None] | _outside(gt.area, area_ranges)  # [G, A]
    gt_group = gt.image * num_classes + gt.category
    gt_order = np.argsort(gt_group, kind="stable")  # annotation order within a group, as COCOeval
    sorted_gt_group = gt_group[gt_order]
    starts = np.searchsorted(sorted_gt_group, dt_group, "left")
    counts = np.searchsorted(sorted_gt_group, dt_group, "right") - starts
    pair_dt = np.repeat(np.arange(len(dt_group)), counts)
    pair_rank = np.arange(len(pair_dt)) - np.repeat(np.cumsum(counts) - counts, counts)
    pair_gt = gt_order[np.repeat(starts, counts) + pair_rank]  # gt in annotation order within its group
    iou = _box_iou(dt.box[pair_dt], gt.box[pair_gt], gt.crowd[pair_gt])
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
    step_of_dt[candidate_dts] = _rank_in_group(dt_group[candidate_dts])
    # COCOeval keeps the best IoU, the later ground truth on ties, and prefers non-ignored ground truth:
    # sort each detection's pairs by (iou, annotation order) so that the last eligible pair wins.
    order = np.lexsort((pair_rank, iou, pair_dt, step_of_dt[pair_dt]))
    pair_dt, pair_gt, iou = pair_dt[order], pair_gt[order], iou[order]
    pair_offset = _rank_in_group(pair_dt)
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


def _matched_ignored_gt(matched_gt: np.ndarray, gt_ignored: np.ndarray) -> np.ndarray:
    """[D, A, T]: matched to a ground truth that is ignored in that area range (crowd or outside it)."""
    padded = np.vstack([gt_ignored, np.zeros((1, gt_ignored.shape[1]), dtype=bool)])  # -1 picks the pad
    return padded[matched_gt, np.arange(gt_ignored.shape[1])[None, :, None]]


def _sort_detections(gt: _GroundTruthArrays, dt: _DetectionArrays, max_dets: int):
    """Sort by (image, category, -score, input order) and keep COCOeval's top ``max_dets`` per group."""
    group = dt.image * len(gt.category_ids) + dt.category
    order = np.lexsort((np.arange(len(group)), -dt.score, group))
    rank = _rank_in_group(group[order])
    order, rank = order[rank < max_dets], rank[rank < max_dets]
    return order, group[order], rank


def _count_evaluated_detections(gt: _GroundTruthArrays, dt: _DetectionArrays, max_dets: int) -> np.ndarray:
    order, _, _ = _sort_detections(gt, dt, max_dets)
    return np.bincount(dt.category[order], minlength=len(gt.category_ids))


def _accumulate(gt: _GroundTruthArrays, dt: _DetectionArrays, params: Params):
    """COCOeval.evaluate + accumulate: precision [T,R,K,A,M], recall [T,K,A,M], scores, dets per class."""
    order, dt_group, rank = _sort_detections(gt, dt, params.maxDets[-1])
    sorted_dt = _DetectionArrays(dt.image[order], dt.category[order], dt.box[order], dt.score[order])
    matched_gt = _match(gt, sorted_dt, dt_group, params)
    area_ranges = np.array(params.areaRng, dtype=np.float64)
    gt_ignored = gt.crowd[:, None] | _outside(gt.area, area_ranges)
    matched = matched_gt >= 0
    dt_area = sorted_dt.box[:, 2] * sorted_dt.box[:, 3]
    outside = _outside(dt_area, area_ranges)[:, :, None]
    ignored = np.where(matched, _matched_ignored_gt(matched_gt, gt_ignored), outside)
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


def _pycocotools_accumulate(
    ground_truth: dict[str, Any], detections: list[dict[str, Any]], gt: _GroundTruthArrays, params: Params
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


def _summarize(precision: np.ndarray, recall: np.ndarray, scores: np.ndarray, params: Params):
    """pycocotools' own summarize over our accumulation: the 12 stats and the printed table."""
    evaluator = COCOeval(iouType="bbox")
    evaluator.params = params
    evaluator.eval = {"precision": precision, "recall": recall, "scores": scores}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=np.float64), printed.getvalue()
