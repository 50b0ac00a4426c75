"""COCO box evaluation: ours (frcnn_pipeline.evaluation.coco_eval) against pycocotools' COCOeval, same run.

5,000 generated images x 100 detections (seeded; sizes from tiny to large, 8 categories, some crowd regions).
Both sides are timed from the in-memory COCO dicts to the 12 stats: loading (pycocotools: COCO index +
loadRes), evaluate, accumulate, summarize. faster-coco-eval is shown for reference.

    python benchmarks/bench_eval.py [--images 5000] [--detections 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time

import numpy as np

from frcnn_pipeline.evaluation.coco_eval import STAT_NAMES, evaluate_boxes
from frcnn_pipeline.evaluation.synthetic import make_synthetic_coco


def pycocotools_stats(ground_truth: dict, detections: list[dict]) -> np.ndarray:
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
    return np.asarray(evaluator.stats)


def faster_coco_eval_stats(ground_truth: dict, detections: list[dict]) -> np.ndarray:
    import faster_coco_eval

    coco_gt = faster_coco_eval.COCO(ground_truth)
    evaluator = faster_coco_eval.COCOeval_faster(
        coco_gt, coco_gt.loadRes(detections), iouType="bbox", print_function=lambda *_: None
    )
    evaluator.run()
    return np.asarray(evaluator.stats[:12])


def timed(function, ground_truth: dict, detections: list[dict]) -> tuple[np.ndarray, float]:
    # Each side gets fresh copies: pycocotools writes into the dicts it is given.
    ground_truth, detections = copy.deepcopy(ground_truth), copy.deepcopy(detections)
    start = time.perf_counter()
    stats = function(ground_truth, detections)
    return stats, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ground_truth, detections = make_synthetic_coco(args.images, args.detections, seed=args.seed)
    crowd = sum(a["iscrowd"] for a in ground_truth["annotations"])
    print(
        f"{args.images} images, {len(ground_truth['annotations'])} ground-truth boxes ({crowd} crowd), "
        f"{len(ground_truth['categories'])} categories, {len(detections)} detections"
    )
    ours, ours_s = timed(lambda gt, dt: evaluate_boxes(gt, dt).stats, ground_truth, detections)
    print(f"ours (numpy)        {ours_s:8.2f} s")
    fast, fast_s = timed(faster_coco_eval_stats, ground_truth, detections)
    print(f"faster-coco-eval    {fast_s:8.2f} s")
    ref, ref_s = timed(pycocotools_stats, ground_truth, detections)
    print(f"pycocotools         {ref_s:8.2f} s")
    print(f"speed-up: ours {ref_s / ours_s:.2f}x, faster-coco-eval {ref_s / fast_s:.2f}x (vs pycocotools)")

    print(f"\n{'stat':6s} {'pycocotools':>22s} {'ours':>22s} {'faster-coco-eval':>22s}")
    for name, r, o, f in zip(STAT_NAMES, ref.tolist(), ours.tolist(), fast.tolist(), strict=True):
        print(f"{name:6s} {r!r:>22} {o!r:>22} {f!r:>22}")
    print(f"\nours identical to pycocotools (all 12, ==): {bool(np.array_equal(ours, ref))}")
    print(f"faster-coco-eval identical to pycocotools (all 12, ==): {bool(np.array_equal(fast, ref))}")
    print(f"max |faster-coco-eval - pycocotools|: {np.abs(fast - ref).max():.3g}")


if __name__ == "__main__":
    main()
