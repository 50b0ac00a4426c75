"""TIDE-style error breakdown (evaluation.error_analysis) on 5,000 images, timed with references.

5,000 generated images x 100 detections (seeded, as bench_eval.py). The breakdown matches every detection at
the ten IoU thresholds, classifies every false positive and missed object, and recomputes AP 70 times (as is,
and with each of the 6 error classes fixed alone, at each threshold), with no per-image Python loop. The
references, timed in the same run on the same data: our COCO evaluation (one AP computation,
pycocotools-identical) and pycocotools' COCOeval (per-image Python loops, as TIDE's own toolbox has). The AP
without fixes must equal COCO's.

    python benchmarks/bench_error_analysis.py [--images 5000] [--detections 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time

from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes
from frcnn_pipeline.evaluation.error_analysis import error_breakdown
from frcnn_pipeline.evaluation.synthetic import make_synthetic_coco


def pycocotools_ap(ground_truth: dict, detections: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def timed(function, ground_truth: dict, detections: list[dict]):
    ground_truth, detections = copy.deepcopy(ground_truth), copy.deepcopy(detections)
    start = time.perf_counter()
    result = function(ground_truth, detections)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ground_truth, detections = make_synthetic_coco(args.images, args.detections, seed=args.seed)
    print(
        f"{args.images} images, {len(ground_truth['annotations'])} ground-truth boxes, "
        f"{len(ground_truth['categories'])} categories, {len(detections)} detections"
    )
    breakdown, ours_s = timed(error_breakdown, ground_truth, detections)
    print(f"error breakdown (ours, 10 IoU thresholds x 7 AP computations) {ours_s:8.2f} s")
    evaluation, coco_s = timed(evaluate_boxes, ground_truth, detections)
    print(f"COCO evaluation (ours, numpy)                                 {coco_s:8.2f} s")
    reference_ap, reference_s = timed(pycocotools_ap, ground_truth, detections)
    print(f"COCO evaluation (pycocotools' COCOeval)                       {reference_s:8.2f} s")
    print(
        f"error breakdown / our COCO evaluation: {ours_s / coco_s:.2f}x; "
        f"/ pycocotools' COCOeval: {ours_s / reference_s:.2f}x"
    )
    print(
        f"AP without fixes {breakdown.baseline()['AP']:.12f}, our COCO AP {evaluation.stats[0]:.12f}, "
        f"pycocotools' {reference_ap:.12f}"
    )
    summary = breakdown.summary()
    for column in ("dAP50", "dAP", "AP50_fixed", "AP_fixed"):
        summary[column] = (summary[column] * 100).round(2)
    print(summary.to_string(index=False))


if __name__ == "__main__":
    main()
