"""The confusion matrix of hand-built cases has the counts known by construction."""

import numpy as np
import pytest

from frcnn_pipeline.evaluation.confusion import BACKGROUND, confusion_matrix

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 7, "name": "fox"}]


def ground_truth(objects: list[tuple[int, list[float]]], crowd=()) -> dict:
    annotations = [
        {"id": i + 1, "image_id": 1, "category_id": category, "bbox": box, "area": box[2] * box[3],
         "iscrowd": int(i in crowd)}
        for i, (category, box) in enumerate(objects)
    ]  # fmt: skip
    images = [{"id": 1, "width": 500, "height": 500, "file_name": "1.jpg"}]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def detection(category: int, box: list[float], score: float) -> dict:
    return {"image_id": 1, "category_id": category, "bbox": box, "score": score}


def test_known_counts():
    # Objects: 3 cats, 1 dog, 1 fox (missed), plus a crowd region.
    objects = [(1, [0, 0, 50, 50]), (1, [100, 0, 50, 50]), (1, [200, 0, 50, 50]), (2, [0, 100, 50, 50]),
               (7, [100, 100, 50, 50]), (2, [300, 300, 100, 100])]  # fmt: skip
    detections = [
        detection(1, [0, 0, 50, 50], 0.9),  # cat -> cat
        detection(1, [100, 0, 50, 50], 0.8),  # cat -> cat
        detection(2, [200, 0, 50, 50], 0.7),  # cat -> dog: confused
        detection(1, [0, 100, 50, 50], 0.95),  # dog -> cat: confused
        detection(2, [2, 102, 50, 50], 0.6),  # the dog again: its object is taken -> background
        detection(7, [400, 0, 50, 50], 0.9),  # nothing there -> background
        detection(7, [320, 320, 40, 40], 0.9),  # inside the crowd region: ignored
        detection(1, [100, 100, 50, 50], 0.3),  # on the fox but below the score threshold: not counted
    ]
    matrix = confusion_matrix(ground_truth(objects, crowd=(5,)), detections, score_threshold=0.5)
    assert matrix.labels == ["cat", "dog", "fox", BACKGROUND]
    expected = np.array([
        [2, 1, 0, 0],  # cats: two found, one called a dog
        [1, 0, 0, 0],  # the dog was called a cat
        [0, 0, 0, 1],  # the fox was missed
        [0, 1, 1, 0],  # false detections: a dog (duplicate) and a fox (empty background)
    ])  # fmt: skip
    assert matrix.counts.tolist() == expected.tolist()
    table = matrix.table()
    assert table.loc["cat", "dog"] == 1 and table.index.name == "ground_truth"
    shares = matrix.normalised()
    assert shares[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0, 0])
    assert shares[3].tolist() == pytest.approx([0, 0.5, 0.5, 0])


def test_iou_threshold_decides_between_confusion_and_background():
    objects = [(1, [0, 0, 100, 100])]
    detections = [detection(2, [0, 0, 60, 100], 0.9)]  # IoU 0.6
    strict = confusion_matrix(ground_truth(objects), detections, iou_threshold=0.7).counts
    loose = confusion_matrix(ground_truth(objects), detections, iou_threshold=0.5).counts
    assert strict[0, 3] == 1 and strict[3, 1] == 1  # missed cat, false dog
    assert loose[0, 1] == 1 and loose.sum() == 1  # cat taken for a dog


def test_empty_rows_normalise_to_nan():
    matrix = confusion_matrix(ground_truth([(1, [0, 0, 10, 10])]), [])
    assert matrix.counts[0, 3] == 1 and np.isnan(matrix.normalised()[1]).all()


def test_bad_iou_threshold_is_an_error():
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        confusion_matrix(ground_truth([]), [], iou_threshold=0)
