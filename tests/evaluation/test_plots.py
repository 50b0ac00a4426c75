"""Plots and drawings render to valid PNGs and show what they claim."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes
from frcnn_pipeline.evaluation.drawing import (
    Sample,
    count_errors,
    draw_predictions,
    label_font_size,
    samples_figure,
)
from frcnn_pipeline.evaluation.plots import (
    ap_per_category_figure,
    per_category_precision_recall_figure,
    precision_recall_figure,
)
from frcnn_pipeline.evaluation.synthetic import make_synthetic_coco


def png_size(figure) -> tuple[int, int]:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(buffer) as image:
        return image.size


@pytest.fixture(scope="module")
def evaluation():
    ground_truth, detections = make_synthetic_coco(20, 20, num_categories=4, seed=3)
    # A category nobody annotated: its panel and bar must say so instead of drawing a curve.
    ground_truth["categories"].append({"id": 999, "name": "unicorn"})
    return evaluate_boxes(ground_truth, detections)


def test_precision_recall_figure_shows_the_ap_in_its_legend(evaluation):
    figure = precision_recall_figure(evaluation)
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert f"IoU .50:.95  AP={evaluation.stats[0] * 100:.1f}" in legend
    assert png_size(figure)[0] > 500


def test_per_category_figure_has_one_panel_per_category(evaluation):
    figure = per_category_precision_recall_figure(evaluation)
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]
    assert len(titles) == len(evaluation.category_ids)
    unicorn = next(axes for axes in figure.axes if axes.get_title().startswith("unicorn"))
    assert not unicorn.lines and "no ground truth" in [t.get_text() for t in unicorn.texts]
    png_size(figure)


def test_ap_per_category_figure_lists_every_category(evaluation):
    table = evaluation.per_category_ap()
    figure = ap_per_category_figure(table)
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert sorted(labels) == sorted(table["name"])
    assert labels[-1] == "unicorn"  # no ground truth: at the top, with the worst
    png_size(figure)


def test_count_errors_counts_missed_and_false_boxes_by_class():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    pred = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]])
    assert count_errors(gt, torch.tensor([1, 1]), pred, torch.tensor([1, 2, 1])) == (1, 2)
    assert count_errors(gt, torch.tensor([1, 1]), pred[:0], torch.tensor([], dtype=torch.int64)) == (2, 0)


def test_samples_figure_and_drawn_predictions():
    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    sample = Sample(
        title="image 1",
        image=image,
        gt_boxes=np.array([[5.0, 5, 20, 20]]),
        gt_names=["cat"],
        pred_boxes=np.array([[6.0, 6, 21, 22]]),
        pred_names=["cat"],
        pred_scores=np.array([0.8]),
    )
    figure = samples_figure([sample, sample], columns=3)
    assert len(figure.axes[0].patches) == 2
    png_size(figure)
    png_size(samples_figure([]))
    drawn = draw_predictions(
        torch.from_numpy(image).permute(2, 0, 1), torch.tensor([[5.0, 5, 30, 30]]), ["cat 0.80"]
    )
    assert drawn.size == (60, 40)
    assert not np.array_equal(np.asarray(drawn), image)


def test_labels_grow_with_the_image():
    """The label's ink spans several times more rows on a 2048-pixel photo than on a small image."""

    def label_rows(side: int) -> int:
        image = torch.zeros(3, side, side, dtype=torch.uint8)
        box = torch.tensor([[side / 4, side / 4, side / 2, side / 2]])
        ink = np.asarray(draw_predictions(image, box, ["cat"])) != np.asarray(
            draw_predictions(image, box, [""])
        )
        rows = np.flatnonzero(ink.any(axis=(1, 2)))
        return int(rows.max() - rows.min() + 1)

    assert label_font_size(2048) == 41 and label_font_size(128) == 10
    assert label_rows(2048) > 3 * label_rows(200)
