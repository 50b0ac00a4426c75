"""Figures of a COCO evaluation: precision-recall curves and AP per category (matplotlib, Agg backend)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only, no display: safe in workers, CI and kedro runs

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from frcnn_pipeline.evaluation.coco_eval import AREA_LABELS, CocoBoxEvaluation

# Curves shown for every panel: COCO's primary metric and the two classic single thresholds.
IOU_CURVES = (("IoU .50:.95", None), ("IoU .50", 0.5), ("IoU .75", 0.75))


def _curve(
    evaluation: CocoBoxEvaluation, iou: float | None, category: int | None, area: int = 0
) -> np.ndarray:
    """Interpolated precision at each recall threshold (maxDets=100), averaged as COCO averages AP.

    Averages over IoU thresholds (``iou=None``) and categories (``category=None``) ignoring -1 (no ground
    truth), so the area under the curve is the AP. NaN where nothing is defined.
    """
    precision = evaluation.precision[..., area, -1]  # [T, R, K]
    if iou is not None:
        precision = precision[evaluation.iou_thresholds == iou]
    precision = precision[:, :, [category]] if category is not None else precision
    valid = precision > -1
    total = np.where(valid, precision, 0).sum(axis=(0, 2))
    count = valid.sum(axis=(0, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _draw_curves(axes, evaluation: CocoBoxEvaluation, category: int | None, area: int = 0) -> None:
    recall = evaluation.recall_thresholds
    for label, iou in IOU_CURVES:
        precision = _curve(evaluation, iou, category, area)
        if np.isnan(precision).all():
            continue
        axes.plot(recall, precision, label=f"{label}  AP={np.nanmean(precision) * 100:.1f}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)


def precision_recall_figure(evaluation: CocoBoxEvaluation) -> Figure:
    """Overall precision-recall: by IoU threshold (all sizes) and by object size (IoU .50:.95)."""
    figure = Figure(figsize=(12, 5), layout="constrained")
    by_iou, by_area = figure.subplots(1, 2)
    _draw_curves(by_iou, evaluation, category=None)
    by_iou.set_title("All categories, all sizes")
    for area, area_label in enumerate(AREA_LABELS):
        precision = _curve(evaluation, None, None, area)
        if not np.isnan(precision).all():
            label = f"{area_label}  AP={np.nanmean(precision) * 100:.1f}"
            by_area.plot(evaluation.recall_thresholds, precision, label=label)
    by_area.set_title("All categories, IoU .50:.95, by object size")
    by_area.set_xlim(0, 1)
    by_area.set_ylim(0, 1.02)
    by_area.grid(alpha=0.3)
    for axes in (by_iou, by_area):
        axes.set_xlabel("recall")
        axes.set_ylabel("precision (interpolated)")
        axes.legend(loc="upper right", fontsize="small")
    figure.suptitle(f"COCO box precision-recall (AP = {evaluation.stats[0] * 100:.1f})")
    return figure


def per_category_precision_recall_figure(evaluation: CocoBoxEvaluation) -> Figure:
    """One small precision-recall panel per category (IoU .50:.95, .50 and .75)."""
    count = len(evaluation.category_ids)
    columns = min(count, 6) or 1
    rows = max(math.ceil(count / columns), 1)
    figure = Figure(figsize=(3 * columns, 2.6 * rows), layout="constrained")
    grid = np.atleast_1d(figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)).ravel()
    for k, axes in enumerate(grid):
        if k >= count:
            axes.set_axis_off()
            continue
        _draw_curves(axes, evaluation, category=k)
        gt = int(evaluation.num_ground_truth[k])
        axes.set_title(f"{evaluation.category_names[k]} ({gt} gt)", fontsize="medium")
        if axes.lines:
            axes.legend(loc="upper right", fontsize="x-small")
        else:
            axes.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=axes.transAxes)
    figure.supxlabel("recall")
    figure.supylabel("precision (interpolated)")
    return figure


def ap_per_category_figure(per_category_ap: pd.DataFrame) -> Figure:
    """Horizontal bars, worst category at the top: AP (.50:.95) over AP50, in percent."""
    table = per_category_ap.sort_values("AP", ascending=False, na_position="last")
    figure = Figure(figsize=(8, max(2.5, 0.28 * len(table) + 1.2)), layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(table))
    axes.barh(positions, table["AP50"].fillna(0) * 100, color="#9ecae1", label="AP50")
    axes.barh(positions, table["AP"].fillna(0) * 100, color="#3182bd", label="AP (.50:.95)")
    for position, ap in zip(positions, table["AP"], strict=True):
        text = "no ground truth" if np.isnan(ap) else f"{ap * 100:.1f}"
        axes.text(1, position, text, va="center", fontsize=8)
    axes.set_yticks(positions, table["name"])
    axes.set_xlim(0, 100)
    axes.set_xlabel("AP (%)")
    axes.set_title("AP per category (maxDets=100)")
    axes.legend(loc="lower right")
    axes.grid(axis="x", alpha=0.3)
    return figure
