"""Dataset statistics of hand-built tables, and their figures."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from frcnn_pipeline.data.statistics import class_statistics, image_statistics, quantiles, split_summary
from frcnn_pipeline.data.statistics_plots import (
    box_sizes_figure,
    class_balance_figure,
    image_sizes_figure,
    objects_per_image_figure,
)

CATEGORIES = pd.DataFrame(
    {"label": [0, 1, 2], "category_id": [1, 3, 7], "name": ["cat", "dog", "bird"], "supercategory": ["a"] * 3}
)


def tables():
    """Image 1: two cats and a crowd of dogs; image 2: a dog; image 3: nothing."""
    images = pd.DataFrame({"image_id": [1, 2, 3], "width": [640, 480, 640], "height": [480, 640, 480]})
    annotations = pd.DataFrame(
        {"image_id": [1, 1, 1, 2], "label": [0, 0, 1, 1], "iscrowd": [False, False, True, False],
         "x1": [0.0, 10, 0, 5], "y1": [0.0, 10, 0, 5], "x2": [10.0, 30, 50, 25], "y2": [20.0, 20, 50, 45]}
    )  # fmt: skip
    return images, annotations


def test_image_statistics_counts_objects_and_crowd_apart():
    table = image_statistics(*tables())
    assert table["objects"].tolist() == [2, 1, 0]
    assert table["crowd_boxes"].tolist() == [1, 0, 0]


def test_class_statistics():
    images, annotations = tables()
    table = class_statistics(annotations, CATEGORIES, num_images=len(images)).set_index("name")
    assert table["boxes"].to_dict() == {"cat": 2, "dog": 1, "bird": 0}
    assert table["images"].to_dict() == {"cat": 1, "dog": 1, "bird": 0}  # the crowd does not show a dog
    assert table["crowd_boxes"].to_dict() == {"cat": 0, "dog": 1, "bird": 0}
    assert table["box_share"].tolist() == pytest.approx([2 / 3, 1 / 3, 0])
    assert table["image_share"].tolist() == pytest.approx([1 / 3, 1 / 3, 0])


def test_split_summary():
    summary = split_summary(image_statistics(*tables()))
    assert (summary["images"], summary["boxes"], summary["crowd_boxes"]) == (3, 3, 1)
    assert summary["crowd_share"] == pytest.approx(1 / 4)
    assert summary["images_without_objects"] == 1
    assert summary["objects_per_image"]["mean"] == pytest.approx(1.0)
    assert summary["objects_per_image"]["max"] == 2
    assert summary["image_width"]["median"] == 640


def test_quantiles_skip_non_finite_values():
    assert quantiles(np.array([1.0, np.nan, 3.0, np.inf]))["count"] == 2
    assert np.isnan(quantiles(np.array([]))["median"])


def png(figure) -> Image.Image:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Image.open(buffer)


def test_figures_render_every_split():
    images, annotations = tables()
    image_stats = pd.concat(
        [image_statistics(images, annotations).assign(split=split) for split in ("train", "val")]
    ).assign(resized_width=128, resized_height=96)
    class_stats = pd.concat(
        [class_statistics(annotations, CATEGORIES, 3).assign(split=split) for split in ("train", "val")]
    )
    for figure in (
        class_balance_figure(class_stats),
        objects_per_image_figure(image_stats),
        image_sizes_figure(image_stats),
    ):
        assert png(figure).size[0] > 500
        labels = [label for axes in figure.axes for label in axes.get_legend_handles_labels()[1]]
        labels += [text.get_text() for legend in figure.legends for text in legend.get_texts()]
        assert any(label.startswith("train") for label in labels) and any(
            label.startswith("val") for label in labels
        )
    geometry = pd.DataFrame(
        {"split": ["train", "train", "val"], "iscrowd": [False, True, False], "width": [10.0, 50, 20],
         "height": [20.0, 50, 40], "area": [200.0, 2500, 800], "aspect_ratio": [2.0, 1, 2],
         "best_anchor_iou": [0.5, 0.9, 0.8]}
    )  # fmt: skip
    anchors = pd.DataFrame(
        {"stride": [4, 4], "size": [16.0, 16.0], "aspect_ratio": [0.5, 2.0],
         "x1": [-11.3, -5.7], "y1": [-5.7, -11.3], "x2": [11.3, 5.7], "y2": [5.7, 11.3]}
    )  # fmt: skip
    figure = box_sizes_figure(geometry, anchors, foreground_iou=0.7, background_iou=0.3)
    png(figure)
    ious = figure.axes[3]
    legend = [text.get_text() for text in ious.get_legend().get_texts()]
    assert legend == ["train: 100.0% below 0.7", "val: 0.0% below 0.7"]  # the crowd region is left out
