"""F1-maximising score thresholds on a hand-built case."""

import pandas as pd
import pytest

from frcnn_pipeline.evaluation.thresholds import ALL_CATEGORIES, score_threshold_advice

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "fox"}]


def case():
    """Cats: 4 objects; detections by score: TP .9, TP .8, FP .7, TP .6, FP .5, FP .4, TP .3.
    Keeping >= .8: P 1, R 2/4, F1 2/3; >= .6: P 3/4, R 3/4, F1 3/4 (the best); >= .3: P 4/7, R 1, F1 8/11.
    Dogs: 1 object, one wrong detection. Foxes: no object, no detection."""
    boxes = [[i * 60, 0, 50, 50] for i in range(5)]
    annotations = [
        {"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": 2500, "iscrowd": 0}
        for i, (c, b) in enumerate(zip([1, 1, 1, 1, 2], boxes, strict=True))
    ]
    far = [400, 400, 50, 50]
    cats = [
        (boxes[0], 0.9),
        (boxes[1], 0.8),
        (far, 0.7),
        (boxes[2], 0.6),
        (far, 0.5),
        (far, 0.4),
        (boxes[3], 0.3),
    ]
    detections = [{"image_id": 1, "category_id": 1, "bbox": b, "score": s} for b, s in cats]
    detections.append({"image_id": 1, "category_id": 2, "bbox": far, "score": 0.95})
    images = [{"id": 1, "width": 500, "height": 500, "file_name": "1.jpg"}]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}, detections


def test_best_f1_threshold_per_category():
    table = score_threshold_advice(*case()).table().set_index("name")
    cat = table.loc["cat"]
    assert cat["score_threshold"] == 0.6
    assert (cat["precision"], cat["recall"], cat["f1"]) == pytest.approx((0.75, 0.75, 0.75))
    assert (cat["true_positives"], cat["false_positives"], cat["false_negatives"]) == (3, 1, 1)
    dog = table.loc["dog"]
    assert dog["f1"] == 0 and dog["recall"] == 0 and dog["false_negatives"] == 1
    assert pd.isna(table.loc["fox", "score_threshold"]) and table.loc["fox", "num_ground_truth"] == 0


def test_one_threshold_for_all_categories():
    advice = score_threshold_advice(*case())
    pooled = advice.table().set_index("name").loc[ALL_CATEGORIES]
    # With the dog's false .95 first, 5 objects: >= .6 keeps 3 TP and 2 FP (F1 0.6); >= .3 keeps 4 TP and
    # 4 FP: P 1/2, R 4/5, F1 8/13 = 0.615, the best.
    assert pooled["score_threshold"] == 0.3 and pooled["f1"] == pytest.approx(8 / 13)
    assert (pooled["precision"], pooled["recall"]) == pytest.approx((0.5, 0.8))
    assert pd.isna(pooled["category_id"]) and pooled["num_ground_truth"] == 5


def test_equal_scores_are_one_threshold():
    ground_truth, detections = case()
    for d in detections:
        d["score"] = 0.5
    curve = score_threshold_advice(ground_truth, detections).curves[0]
    assert curve.thresholds.tolist() == [0.5] and curve.true_positives.tolist() == [4]
