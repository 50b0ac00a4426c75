"""Boxes drawn on images: predicted vs ground truth on val images, and predictions on arbitrary images."""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import numpy as np
import torch
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image
from torchvision.ops import box_iou
from torchvision.utils import draw_bounding_boxes

GROUND_TRUTH_COLOUR = "#00c853"
PREDICTION_COLOUR = "#ff1744"


def label_font_size(longest_side: int) -> int:
    """About 1/50 of the image's longest side, never below 10 px: 41 px on a 2048-pixel photo."""
    return max(10, round(longest_side / 50))


@dataclass(frozen=True)
class Sample:
    """One image to show: RGB uint8 [H, W, 3], ground truth and predictions as xyxy boxes with names."""

    title: str
    image: np.ndarray
    gt_boxes: np.ndarray
    gt_names: list[str]
    pred_boxes: np.ndarray
    pred_names: list[str]
    pred_scores: np.ndarray


def count_errors(
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    pred_boxes: torch.Tensor,
    pred_labels: torch.Tensor,
    iou_threshold: float = 0.5,
) -> tuple[int, int]:
    """``(missed, false)``: ground-truth boxes without a same-class prediction at IoU >= threshold, and
    predictions without a same-class ground truth. A quick per-image tally to pick images worth looking at,
    not a metric (each side is counted independently, no one-to-one matching)."""
    if len(gt_boxes) == 0 or len(pred_boxes) == 0:
        return len(gt_boxes), len(pred_boxes)
    hits = (box_iou(gt_boxes, pred_boxes) >= iou_threshold) & (gt_labels[:, None] == pred_labels[None, :])
    return int((~hits.any(dim=1)).sum()), int((~hits.any(dim=0)).sum())


def samples_figure(samples: list[Sample], columns: int = 3) -> Figure:
    """A grid of images: ground truth in green, predictions in red (class and score)."""
    columns = max(1, min(columns, len(samples)))
    rows = max(1, math.ceil(len(samples) / columns))
    figure = Figure(figsize=(5 * columns, 5 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes in grid[len(samples) :]:
        axes.set_axis_off()
    for axes, sample in zip(grid, samples, strict=False):
        axes.imshow(sample.image)
        axes.set_axis_off()
        axes.set_title(sample.title, fontsize="medium")
        for (x1, y1, x2, y2), name in zip(sample.gt_boxes, sample.gt_names, strict=True):
            axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2, ec=GROUND_TRUTH_COLOUR))
            axes.text(
                x1, y2, name, color="white", fontsize=7, va="top", bbox={"fc": GROUND_TRUTH_COLOUR, "pad": 1}
            )
        for (x1, y1, x2, y2), name, score in zip(
            sample.pred_boxes, sample.pred_names, sample.pred_scores, strict=True
        ):
            axes.add_patch(
                Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5, ec=PREDICTION_COLOUR, ls="--")
            )
            label = f"{name} {score:.2f}"
            axes.text(
                x1,
                y1,
                label,
                color="white",
                fontsize=7,
                va="bottom",
                bbox={"fc": PREDICTION_COLOUR, "pad": 1},
            )
    if not samples:
        grid[0].text(0.5, 0.5, "no images", ha="center", va="center")
    figure.suptitle("ground truth (green, solid) vs predictions (red, dashed)")
    return figure


def draw_predictions(image: torch.Tensor, boxes: torch.Tensor, labels: list[str]) -> Image.Image:
    """An RGB uint8 [3, H, W] image with its predicted boxes and labels drawn (torchvision's drawing).

    Lines and labels grow with the image, so they read on a 2048-pixel photo as on a 128-pixel one; the
    font is matplotlib's bundled DejaVu Sans (PIL's default bitmap font has one tiny size).
    """
    longest = max(image.shape[1:])
    drawn = draw_bounding_boxes(
        image,
        boxes,
        labels=labels,
        colors=PREDICTION_COLOUR,
        width=max(2, round(longest / 300)),
        font=font_manager.findfont("DejaVu Sans"),
        font_size=label_font_size(longest),
    )
    return Image.fromarray(drawn.permute(1, 2, 0).numpy())
