"""The error analysis figures render and say what they show."""

import io

import numpy as np
from PIL import Image

from frcnn_pipeline.evaluation.analysis_plots import (
    CORRECT_COLOUR,
    ERROR_COLOURS,
    EXPLAINED_COLOUR,
    confusion_matrix_figure,
    error_breakdown_figure,
    error_image,
    score_threshold_figure,
    worst_images_figure,
)
from frcnn_pipeline.evaluation.confusion import confusion_matrix
from frcnn_pipeline.evaluation.error_analysis import classify_errors, error_breakdown
from frcnn_pipeline.evaluation.matching import match_detections
from frcnn_pipeline.evaluation.synthetic import make_synthetic_coco
from frcnn_pipeline.evaluation.thresholds import score_threshold_advice

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def png_size(figure) -> tuple[int, int]:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    with Image.open(buffer) as image:
        return image.size


def test_breakdown_confusion_and_threshold_figures():
    ground_truth, detections = make_synthetic_coco(20, 20, num_categories=3, seed=2)
    breakdown = error_breakdown(ground_truth, detections)
    figure = error_breakdown_figure(breakdown.summary(), breakdown.baseline())
    bars = figure.axes[0].patches
    assert len(bars) == 6 and bars[0].get_facecolor()[:3] != bars[1].get_facecolor()[:3]  # a colour per class
    assert f"AP50 = {breakdown.baseline()['AP50'] * 100:.1f}" in figure.axes[0].get_title()
    assert png_size(figure)[0] > 800

    matrix = confusion_matrix(ground_truth, detections)
    figure = confusion_matrix_figure(matrix)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == matrix.labels
    cell_texts = [t.get_text() for t in figure.axes[0].texts]
    assert len(cell_texts) == np.count_nonzero(matrix.counts)  # every non-empty cell: its share and count
    png_size(figure)

    advice = score_threshold_advice(ground_truth, detections)
    figure = score_threshold_figure(advice)
    assert [t.get_text() for t in figure.axes[1].get_yticklabels()] == advice.table()["name"].tolist()
    png_size(figure)


def test_error_image_labels_every_box_with_its_class():
    objects = [(1, [0, 0, 40, 40]), (2, [100, 100, 40, 40]), (1, [150, 0, 40, 40])]
    ground_truth = {
        "images": [{"id": 7, "width": 200, "height": 200, "file_name": "7.jpg"}],
        "annotations": [
            {"id": i + 1, "image_id": 7, "category_id": c, "bbox": b, "area": 1600.0, "iscrowd": 0}
            for i, (c, b) in enumerate(objects)
        ],
        "categories": CATEGORIES,
    }
    detections = [
        {"image_id": 7, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.9},  # right
        {"image_id": 7, "category_id": 1, "bbox": [100, 100, 40, 40], "score": 0.8},  # a dog called a cat
    ]
    labels = classify_errors(match_detections(ground_truth, detections, [0.5]))
    shown = error_image(labels, 0, np.zeros((200, 200, 3), dtype=np.uint8))
    drawn = {(item.text, item.colour, item.dashed) for item in shown.boxes}
    assert drawn == {
        ("cat", CORRECT_COLOUR, False),
        ("dog", EXPLAINED_COLOUR, False),  # not missed: the classification error points at it
        ("missed: cat", ERROR_COLOURS["missed"], False),
        ("cat 0.90", CORRECT_COLOUR, True),
        ("classification: cat 0.80", ERROR_COLOURS["classification"], True),
    }
    assert shown.title == "image 7: 2 errors\n1 classification, 1 missed"
    figure = worst_images_figure([shown], columns=3, score_threshold=0.5, iou=0.5)
    assert len(figure.axes[0].patches) == 5
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "missed" in legend and "classification" in legend
    png_size(figure)
