"""Figures of the error analysis: TIDE's dAP bars, the confusion matrix, F1 against the score threshold, and
the images with the most errors (matplotlib, Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from frcnn_pipeline.evaluation.confusion import BACKGROUND, ConfusionMatrix
from frcnn_pipeline.evaluation.drawing import BoxedImage, LabelledBox, boxed_images_figure
from frcnn_pipeline.evaluation.error_analysis import ERROR_TYPES, MISSED, NO_ERROR, ErrorLabels
from frcnn_pipeline.evaluation.thresholds import ALL_CATEGORIES, ThresholdAdvice

# One colour per error class, the same in the bar chart and on the images.
ERROR_COLOURS = {
    "classification": "#d62728",
    "localisation": "#ff7f0e",
    "both": "#9467bd",
    "duplicate": "#8c564b",
    "background": "#e377c2",
    "missed": "#1f77b4",
}
CORRECT_COLOUR = "#2ca02c"
EXPLAINED_COLOUR = (
    "#7f7f7f"  # an object a classification or localisation error points at: neither found nor missed
)
MAX_ANNOTATED_CLASSES = 20  # beyond this, cell counts and legends would not be legible


def error_breakdown_figure(summary: pd.DataFrame, baseline: dict[str, float]) -> Figure:
    """Horizontal bars of dAP per error class at IoU .50 and over .50:.95 (AP points), with the counts."""
    figure = Figure(figsize=(12, 4.2), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    positions = np.arange(len(summary))[::-1]  # first error class at the top
    colours = [ERROR_COLOURS[error] for error in summary["error"]]
    for axes, column, title in (
        (panels[0], "dAP50", f"IoU .50 (AP50 = {baseline['AP50'] * 100:.1f})"),
        (panels[1], "dAP", f"IoU .50:.95 (AP = {baseline['AP'] * 100:.1f})"),
    ):
        values = np.nan_to_num(summary[column].to_numpy() * 100)  # NaN: no ground truth at all
        axes.barh(positions, values, color=colours)
        for position, value in zip(positions, values, strict=True):
            axes.text(value, position, f" {value:.2f}", va="center", fontsize=9)
        axes.set_xlim(0, max(values.max(), 0.1) * 1.25)
        axes.set_title(title)
        axes.set_xlabel("AP gained if fixed (dAP, AP points)")
        axes.grid(axis="x", alpha=0.3)
    labels = [
        f"{error}\n({count} at IoU .50)"
        for error, count in zip(summary["error"], summary["count_iou50"], strict=True)
    ]
    panels[0].set_yticks(positions, labels)
    figure.suptitle("Error breakdown (TIDE): AP gained by fixing each class of errors alone")
    return figure


def confusion_matrix_figure(matrix: ConfusionMatrix) -> Figure:
    """Heatmap normalised per ground-truth row, cells annotated with the share and the count."""
    labels = matrix.labels
    size = max(4.5, 0.55 * len(labels) + 2.5)
    figure = Figure(figsize=(size + 1.2, size), layout="constrained")
    axes = figure.subplots()
    shares = matrix.normalised()
    image = axes.imshow(np.nan_to_num(shares), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the row")
    if len(labels) <= MAX_ANNOTATED_CLASSES + 1:
        for (row, column), count in np.ndenumerate(matrix.counts):
            if count:
                share = shares[row, column]
                colour = "white" if share > 0.6 else "black"
                text = f"{share * 100:.0f}%\n{count}"
                axes.text(column, row, text, ha="center", va="center", color=colour, fontsize=8)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel(f"predicted class ({BACKGROUND}: no detection, the object was missed)")
    axes.set_ylabel(f"ground truth ({BACKGROUND}: no object there)")
    axes.set_title(
        f"Confusion matrix (score ≥ {matrix.score_threshold:g}, IoU ≥ {matrix.iou_threshold:g}), "
        "rows normalised"
    )
    return figure


def score_threshold_figure(advice: ThresholdAdvice) -> Figure:
    """F1 against the score threshold per category (best marked), and the advised threshold per category."""
    figure = Figure(figsize=(13, max(4.0, 0.3 * len(advice.curves) + 1.5)), layout="constrained")
    curves_axes, bars_axes = figure.subplots(1, 2)
    for curve in advice.curves:
        pooled = curve.name == ALL_CATEGORIES
        if not len(curve.f1) or curve.num_ground_truth == 0:
            continue
        (line,) = curves_axes.plot(
            curve.thresholds, curve.f1, color="black" if pooled else None, lw=2.5 if pooled else 1,
            label=curve.name,
        )  # fmt: skip
        best = curve.best()
        curves_axes.plot(curve.thresholds[best], curve.f1[best], "o", color=line.get_color())
    curves_axes.set(
        xlabel="score threshold (keep detections scoring at least this)", ylabel="F1", xlim=(0, 1)
    )
    curves_axes.set_ylim(0, 1.02)
    curves_axes.grid(alpha=0.3)
    curves_axes.set_title("F1 against the score threshold (dot: the maximum)")
    if curves_axes.lines and len(advice.curves) <= MAX_ANNOTATED_CLASSES + 1:
        curves_axes.legend(fontsize="small", loc="upper right")
    table = advice.table()
    positions = np.arange(len(table))[::-1]
    bars_axes.barh(positions, table["score_threshold"].fillna(0), color="#3182bd")
    for position, row in zip(positions, table.itertuples(), strict=True):
        text = (
            "no threshold (no detection or no object)"
            if pd.isna(row.score_threshold)
            else f"{row.score_threshold:.2f}  P {row.precision:.2f} R {row.recall:.2f} F1 {row.f1:.2f}"
        )
        end = 0.0 if pd.isna(row.score_threshold) else row.score_threshold
        bars_axes.text(end + 0.01, position, text, va="center", fontsize=8)
    bars_axes.set_yticks(positions, table["name"])
    bars_axes.set_xlim(0, 1)
    bars_axes.set_xlabel("F1-maximising score threshold")
    bars_axes.set_title("Advised threshold per category, its precision, recall and F1")
    bars_axes.grid(axis="x", alpha=0.3)
    return figure


def error_image(
    labels: ErrorLabels, image_index: int, image: np.ndarray, threshold_index: int = 0
) -> BoxedImage:
    """One image with its objects (solid: green when found, the missed colour when missed, grey when an error
    below points at it) and its detections (dashed: green when right, else in their error's colour)."""
    matching = labels.matching
    names = matching.category_names
    found = matching.gt_matched[:, threshold_index]
    boxes = []
    objects = np.flatnonzero((matching.gt_image == image_index) & ~matching.gt_crowd)
    for g in objects:
        name = names[matching.gt_category[g]]
        if labels.missed[g, threshold_index]:
            text, colour = f"missed: {name}", ERROR_COLOURS["missed"]
        else:
            text, colour = name, CORRECT_COLOUR if found[g] else EXPLAINED_COLOUR
        boxes.append(LabelledBox(_xyxy(matching.gt_box[g]), text, colour, dashed=False))
    detections = np.flatnonzero(matching.dt_image == image_index)
    errors = labels.detection_error[detections, threshold_index]
    for d, error in zip(detections, errors, strict=True):
        name = f"{names[matching.dt_category[d]]} {matching.dt_score[d]:.2f}"
        if error != NO_ERROR:
            error_name = ERROR_TYPES[error]
            boxes.append(
                LabelledBox(
                    _xyxy(matching.dt_box[d]), f"{error_name}: {name}", ERROR_COLOURS[error_name], True
                )
            )
        elif matching.true_positive[d, threshold_index]:  # else on a crowd region: neither right nor wrong
            boxes.append(LabelledBox(_xyxy(matching.dt_box[d]), name, CORRECT_COLOUR, dashed=True))
    counts = np.bincount(errors[errors != NO_ERROR], minlength=len(ERROR_TYPES))
    counts[MISSED] = labels.missed[objects, threshold_index].sum()
    summary = ", ".join(f"{n} {ERROR_TYPES[e]}" for e, n in enumerate(counts) if n)
    title = f"image {matching.image_ids[image_index]}: {counts.sum()} errors" + (
        f"\n{summary}" if summary else ""
    )
    return BoxedImage(title, image, boxes)


def worst_images_figure(images: list[BoxedImage], columns: int, score_threshold: float, iou: float) -> Figure:
    legend = {
        "right (object found / true detection)": CORRECT_COLOUR,
        **ERROR_COLOURS,
        "object an error points at": EXPLAINED_COLOUR,
    }
    title = (
        f"Val images with the most errors (detections scoring ≥ {score_threshold:g}, IoU {iou:g}): "
        "objects solid, detections dashed"
    )
    return boxed_images_figure(images, columns, title, legend)


def _xyxy(box: np.ndarray) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in box)
    return x, y, x + w, y + h
