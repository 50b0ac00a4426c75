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


@dataclass(frozen=True)
class LabelledBox:
    """A box (xyxy) drawn with its own colour and text; dashed for predictions, solid for ground truth."""

    box: tuple[float, float, float, float]
    text: str
    colour: str
    dashed: bool


@dataclass(frozen=True)
class BoxedImage:
    title: str
    image: np.ndarray  # RGB uint8 [H, W, 3]
    boxes: list[LabelledBox]


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


def boxed_images_figure(
    images: list[BoxedImage], columns: int = 3, title: str = "", legend: dict[str, str] | None = None
) -> Figure:
    """A grid of images with labelled boxes; ``legend`` maps a text to its colour."""
    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    figure = Figure(figsize=(5 * columns, 5 * rows + 0.6), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes in grid[len(images) :]:
        axes.set_axis_off()
    for axes, shown in zip(grid, images, strict=False):
        axes.imshow(shown.image)
        axes.set_axis_off()
        axes.set_title(shown.title, fontsize="medium")
        height = shown.image.shape[0]
        for item in shown.boxes:
            x1, y1, x2, y2 = item.box
            axes.add_patch(
                Rectangle(
                    (x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5 if item.dashed else 2,
                    ec=item.colour, ls="--" if item.dashed else "-",
                )
            )  # fmt: skip
            # Predictions are labelled at their top edge, ground truth at the bottom, so the two rarely
            # collide; outside the box, unless that would leave the image.
            if item.dashed:
                y, va = (y1, "bottom") if y1 > 0.06 * height else (y1, "top")
            else:
                y, va = (y2, "top") if y2 < 0.94 * height else (y2, "bottom")
            axes.text(
                x1, y, item.text, color="white", fontsize=7, va=va,
                bbox={"fc": item.colour, "pad": 1, "alpha": 0.85}, clip_on=True,
            )  # fmt: skip
    if not images:
        grid[0].text(0.5, 0.5, "no images", ha="center", va="center")
    if legend:
        handles = [Rectangle((0, 0), 1, 1, fc=colour) for colour in legend.values()]
        figure.legend(handles, list(legend), loc="outside lower center", ncols=len(legend), fontsize="small")
    figure.suptitle(title)
    return figure


def samples_figure(samples: list[Sample], columns: int = 3) -> Figure:
    """A grid of images: ground truth in green, predictions in red (class and score)."""
    shown = [
        BoxedImage(
            sample.title,
            sample.image,
            [
                *(LabelledBox(tuple(box), name, GROUND_TRUTH_COLOUR, dashed=False)
                  for box, name in zip(sample.gt_boxes, sample.gt_names, strict=True)),
                *(LabelledBox(tuple(box), f"{name} {score:.2f}", PREDICTION_COLOUR, dashed=True)
                  for box, name, score in zip(sample.pred_boxes, sample.pred_names, sample.pred_scores,
                                              strict=True)),
            ],
        )
        for sample in samples
    ]  # fmt: skip
    return boxed_images_figure(shown, columns, "ground truth (green, solid) vs predictions (red, dashed)")


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
