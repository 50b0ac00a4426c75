"""TIDE's error classes and dAP on hand-built cases whose answer is known by construction."""

import numpy as np
import pytest

from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes
from frcnn_pipeline.evaluation.error_analysis import (
    BACKGROUND,
    BOTH,
    CLASSIFICATION,
    DUPLICATE,
    ERROR_TYPES,
    LOCALISATION,
    NO_ERROR,
    RECALL_THRESHOLDS,
    classify_errors,
    error_breakdown,
    worst_images,
)
from frcnn_pipeline.evaluation.matching import match_detections
from frcnn_pipeline.evaluation.synthetic import make_synthetic_coco

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def coco(objects: list[tuple[int, int, list[float]]], image_ids=(1,), crowd=()) -> dict:
    """Ground truth from (image_id, category_id, xywh) triples; ``crowd``: the positions that are crowd."""
    annotations = [
        {"id": i + 1, "image_id": image, "category_id": category, "bbox": box, "area": box[2] * box[3],
         "iscrowd": int(i in crowd)}
        for i, (image, category, box) in enumerate(objects)
    ]  # fmt: skip
    images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in image_ids]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def detection(image: int, category: int, box: list[float], score: float) -> dict:
    return {"image_id": image, "category_id": category, "bbox": box, "score": score}


def labels_at_50(ground_truth: dict, detections: list[dict]):
    labels = classify_errors(match_detections(ground_truth, detections, [0.5]))
    by_position = dict(zip(labels.matching.dt_position, labels.detection_error[:, 0], strict=True))
    return labels, [by_position.get(i, NO_ERROR) for i in range(len(detections))]


def test_right_box_wrong_class_is_a_classification_error():
    labels, errors = labels_at_50(coco([(1, 1, [10, 10, 40, 40])]), [detection(1, 2, [10, 10, 40, 40], 0.9)])
    assert errors == [CLASSIFICATION]
    assert labels.missed.sum() == 0  # fixing the class finds the object: it is not also counted missed


def test_box_at_iou_03_with_the_right_class_is_a_localisation_error():
    # A 30x100 box inside a 100x100 object: IoU 0.3.
    labels, errors = labels_at_50(coco([(1, 1, [0, 0, 100, 100])]), [detection(1, 1, [0, 0, 30, 100], 0.9)])
    assert errors == [LOCALISATION]
    assert labels.missed.sum() == 0


def test_two_detections_on_one_object_give_one_duplicate():
    detections = [detection(1, 1, [0, 0, 50, 50], 0.9), detection(1, 1, [1, 1, 50, 50], 0.8)]
    labels, errors = labels_at_50(coco([(1, 1, [0, 0, 50, 50])]), detections)
    assert errors == [NO_ERROR, DUPLICATE]  # the higher score is the true positive
    assert labels.counts()[:, 0].tolist() == [0, 0, 0, 1, 0, 0]


@pytest.mark.parametrize("image", [1, 2], ids=["far_from_the_objects", "image_without_objects"])
def test_detection_on_empty_background_is_a_background_error(image):
    ground_truth = coco([(1, 1, [0, 0, 20, 20])], image_ids=(1, 2))
    detections = [detection(1, 1, [0, 0, 20, 20], 0.9), detection(image, 1, [150, 150, 30, 30], 0.8)]
    assert labels_at_50(ground_truth, detections)[1] == [NO_ERROR, BACKGROUND]


def test_object_without_detection_is_missed():
    ground_truth = coco([(1, 1, [0, 0, 20, 20]), (1, 2, [100, 100, 50, 50])])
    labels, errors = labels_at_50(ground_truth, [detection(1, 1, [0, 0, 20, 20], 0.9)])
    assert errors == [NO_ERROR]
    assert labels.missed[:, 0].tolist() == [False, True]
    assert labels.counts()[:, 0].tolist() == [0, 0, 0, 0, 0, 1]


def test_overlap_with_another_class_at_low_iou_is_both():
    labels, errors = labels_at_50(coco([(1, 1, [0, 0, 100, 100])]), [detection(1, 2, [0, 0, 30, 100], 0.9)])
    assert errors == [BOTH]
    assert labels.missed[:, 0].tolist() == [True]  # no classification or localisation fix finds it


def test_crowd_regions_are_neither_objects_nor_errors():
    ground_truth = coco([(1, 1, [0, 0, 100, 100])], crowd=(0,))
    labels, errors = labels_at_50(ground_truth, [detection(1, 1, [10, 10, 50, 50], 0.9)])
    assert errors == [NO_ERROR] and labels.missed.sum() == 0


def test_error_class_depends_on_the_iou_threshold():
    # IoU 0.9: right at IoU .50, a localisation error at .95.
    matching = match_detections(coco([(1, 1, [0, 0, 100, 100])]), [detection(1, 1, [0, 0, 90, 100], 0.9)])
    labels = classify_errors(matching)
    thresholds = matching.iou_thresholds
    assert labels.detection_error[0, thresholds <= 0.9].tolist() == [NO_ERROR] * 9
    assert labels.detection_error[0, thresholds > 0.9].tolist() == [LOCALISATION]


def test_dap_matches_a_hand_computation():
    """Three cat objects, one per image; detections in score order: background (0.9), right (0.8),
    localisation at IoU 0.3 (0.7); the third object is missed.

    COCO's AP samples the interpolated precision at the 101 recall thresholds 0, 0.01, ..., 1:
    - as is: recall 0, 1/3, 1/3 with precision 0, 1/2, 1/3 -> interpolated 1/2 up to recall 1/3, i.e. at the
      34 thresholds 0..0.33: AP = 34 * (1/2) / 101 = 17/101;
    - background removed: (TP, FP) -> precision 1 at the 34 thresholds: AP = 34/101;
    - localisation fixed: (FP, TP, TP) -> recall 0, 1/3, 2/3, interpolated precision 2/3 at the 67
      thresholds 0..0.66: AP = 67 * (2/3) / 101;
    - missed object removed: 2 objects, recall 0, 1/2, 1/2, precision 1/2 at the 51 thresholds 0..0.50:
      AP = 25.5/101;
    - nothing to fix for classification, both and duplicate: dAP 0.
    Every IoU is 0, 0.3 or 1, so every threshold of .50:.95 gives the same numbers.
    """
    assert RECALL_THRESHOLDS[33] < 1 / 3 < RECALL_THRESHOLDS[34] and RECALL_THRESHOLDS[50] == 0.5
    ground_truth = coco([(1, 1, [0, 0, 10, 10]), (2, 1, [0, 0, 10, 10]), (3, 1, [0, 0, 10, 10])], (1, 2, 3))
    detections = [
        detection(1, 1, [50, 50, 10, 10], 0.9),
        detection(1, 1, [0, 0, 10, 10], 0.8),
        detection(2, 1, [0, 0, 3, 10], 0.7),
    ]
    breakdown = error_breakdown(ground_truth, detections)
    ap = 17 / 101
    expected_dap = {
        "classification": 0.0, "localisation": 67 * (2 / 3) / 101 - ap, "both": 0.0, "duplicate": 0.0,
        "background": 34 / 101 - ap, "missed": 25.5 / 101 - ap,
    }  # fmt: skip
    summary = breakdown.summary().set_index("error")
    assert breakdown.baseline() == pytest.approx({"AP50": ap, "AP": ap}, abs=1e-12)
    assert summary["dAP50"].to_dict() == pytest.approx(expected_dap, abs=1e-12)
    assert summary["dAP"].to_dict() == pytest.approx(expected_dap, abs=1e-12)
    assert summary["count_iou50"].tolist() == [0, 1, 0, 0, 1, 1]
    # The baseline is COCO's own AP (category "dog" has no ground truth and is not averaged).
    assert evaluate_boxes(ground_truth, detections).stats[1] == pytest.approx(ap, abs=1e-12)


def test_classification_fix_gives_the_object_to_the_best_scoring_error_only():
    """Two wrong-class detections on one free object: fixed, one becomes its true positive (precision 1/1
    at recall 1), the other is removed; AP goes from 0 to 1."""
    ground_truth = coco([(1, 1, [0, 0, 50, 50])])
    detections = [detection(1, 2, [0, 0, 50, 50], 0.9), detection(1, 2, [1, 1, 50, 50], 0.8)]
    summary = error_breakdown(ground_truth, detections).summary().set_index("error")
    assert summary.loc["classification", "count_iou50"] == 2
    assert summary.loc["classification", "dAP50"] == pytest.approx(1.0)


def test_baseline_ap_is_cocos_on_generated_data():
    ground_truth, detections = make_synthetic_coco(40, 30, seed=5)
    evaluation = evaluate_boxes(ground_truth, detections)
    breakdown = error_breakdown(ground_truth, detections)
    per_threshold = [np.mean(p[p > -1]) for p in evaluation.precision[:, :, :, 0, -1]]
    np.testing.assert_allclose(breakdown.ap, per_threshold, rtol=0, atol=1e-12)
    assert breakdown.baseline()["AP"] == pytest.approx(evaluation.stats[0], abs=1e-12)
    summary = breakdown.summary()
    assert summary["error"].tolist() == list(ERROR_TYPES)
    assert (summary["dAP"] >= 0).all() and (summary["count_iou50"] > 0).all()
    # Every false positive at IoU .50 has exactly one class.
    labels = breakdown.labels
    false_positive = labels.matching.false_positive[:, 0]
    assert ((labels.detection_error[:, 0] != NO_ERROR) == false_positive).all()


def test_worst_images_are_the_ones_with_most_errors():
    ground_truth = coco([(1, 1, [0, 0, 20, 20]), (2, 1, [0, 0, 20, 20]), (2, 2, [50, 50, 20, 20])], (1, 2, 3))
    detections = [detection(1, 1, [0, 0, 20, 20], 0.9), detection(3, 1, [0, 0, 20, 20], 0.9)]
    labels = classify_errors(match_detections(ground_truth, detections, [0.5]))
    assert labels.errors_per_image().tolist() == [0, 2, 1]
    assert labels.matching.image_ids[worst_images(labels, 5)].tolist() == [2, 3]


def test_background_iou_must_be_below_the_foreground_iou():
    matching = match_detections(coco([(1, 1, [0, 0, 20, 20])]), [])
    with pytest.raises(ValueError, match=r"background_iou must be in \(0, 0.5\)"):
        classify_errors(matching, background_iou=0.5)
