"""Matching PyTorch's and ONNX Runtime's detections for the export check report."""

import torch

from frcnn_pipeline.evaluation.export_check import compare_detections, subset_ground_truth


def record(boxes, scores, labels) -> dict:
    return {
        "error": "",
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


def test_detections_match_by_class_and_overlap_and_the_largest_differences_are_reported():
    reference = [
        record([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], [0.9, 0.8, 0.1], [1, 2, 1]),
        {"error": "unreadable"},
    ]
    candidate = [
        # the second box swapped ahead (its score rose past the first), the third missing, one extra
        record([[20, 20, 40, 40.5], [0.25, 0, 10, 10], [70, 70, 80, 80]], [0.95, 0.9, 0.07], [2, 1, 1]),
        {"error": "unreadable"},
    ]
    comparison = compare_detections(reference, candidate)
    assert comparison == {
        "matched": 2,
        "max_box_difference_px": 0.5,
        "max_score_difference": torch.tensor(0.95).item() - torch.tensor(0.8).item(),
        "pytorch_only": 1,
        "onnxruntime_only": 1,
        "max_unmatched_score": torch.tensor(0.1).item(),
    }


def test_the_same_box_with_another_class_does_not_match():
    comparison = compare_detections(
        [record([[0, 0, 10, 10]], [0.9], [1])], [record([[0, 0, 10, 10]], [0.9], [2])]
    )
    assert comparison["matched"] == 0 and comparison["pytorch_only"] == comparison["onnxruntime_only"] == 1


def test_the_ground_truth_of_the_checked_images_only():
    truth = {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [{"id": 1, "image_id": 1}, {"id": 2, "image_id": 2}],
        "categories": [{"id": 5}],
    }
    subset = subset_ground_truth(truth, [2])
    assert subset == {
        "images": [{"id": 2}],
        "annotations": [{"id": 2, "image_id": 2}],
        "categories": [{"id": 5}],
    }
