"""Figures of the dataset statistics, one colour per split (matplotlib, Agg backend).

The tables carry a ``split`` column (``statistics.image_statistics`` / ``class_statistics`` and the box
geometry of ``modeling.anchor_coverage``, concatenated over the splits).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

PLAIN_NUMBERS = FuncFormatter(lambda value, _: f"{value:g}")  # 0.5 and 200 rather than 5×10⁻¹ and 2×10²

SPLIT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
ANCHOR_COLOUR = "black"
MAX_SCATTER_POINTS = 20_000  # per split; a random subset beyond (seeded), the histograms use every box


def _colours(splits: list[str]) -> dict[str, str]:
    return {split: SPLIT_COLOURS[i % len(SPLIT_COLOURS)] for i, split in enumerate(splits)}


def class_balance_figure(class_stats: pd.DataFrame) -> Figure:
    """Boxes per class (share of the split's boxes) and images showing each class (share of the split's
    images), side by side per split, counts written on the bars."""
    splits = list(dict.fromkeys(class_stats["split"]))
    colours = _colours(splits)
    names = list(dict.fromkeys(class_stats.sort_values("label")["name"]))
    figure = Figure(figsize=(12, max(3.0, 0.3 * len(names) * len(splits) + 1.5)), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    height = 0.8 / max(len(splits), 1)
    positions = np.arange(len(names))[::-1]
    for axes, count, share, title in (
        (panels[0], "boxes", "box_share", "Boxes per class (% of the split's boxes)"),
        (panels[1], "images", "image_share", "Images showing the class (% of the split's images)"),
    ):
        for i, split in enumerate(splits):
            rows = class_stats[class_stats["split"] == split].set_index("name").reindex(names)
            counts, shares = rows[count].fillna(0).to_numpy(), rows[share].fillna(0).to_numpy() * 100
            offset = positions + ((len(splits) - 1) / 2 - i) * height
            axes.barh(offset, shares, height, color=colours[split], label=split)
            for y, value, number in zip(offset, shares, counts, strict=True):
                axes.text(value, y, f" {int(number)}", va="center", fontsize=7)
        axes.set_xlabel("%")
        axes.set_title(title)
        axes.set_xlim(0, axes.get_xlim()[1] * 1.12)  # room for the counts
        axes.grid(axis="x", alpha=0.3)
    panels[0].set_yticks(positions, names)
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=len(splits), fontsize="small")
    return figure


def objects_per_image_figure(image_stats: pd.DataFrame) -> Figure:
    """Share of images with 0, 1, 2, ... objects, per split; the crowd share in the legend."""
    splits = list(dict.fromkeys(image_stats["split"]))
    colours = _colours(splits)
    figure = Figure(figsize=(9, 4), layout="constrained")
    axes = figure.subplots()
    most = int(image_stats["objects"].max()) if len(image_stats) else 0
    width = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
        rows = image_stats[image_stats["split"] == split]
        counts = np.bincount(rows["objects"], minlength=most + 1)
        boxes, crowd = rows["objects"].sum(), rows["crowd_boxes"].sum()
        crowd_share = crowd / max(boxes + crowd, 1)
        label = f"{split}: {len(rows)} images, mean {rows['objects'].mean():.1f}, crowd {crowd_share:.1%}"
        positions = np.arange(most + 1) + (i - (len(splits) - 1) / 2) * width
        axes.bar(positions, counts / max(len(rows), 1) * 100, width, color=colours[split], label=label)
    axes.set(xlabel="objects (non-crowd boxes) in the image", ylabel="% of the split's images")
    axes.set_title("Objects per image")
    axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    return figure


def image_sizes_figure(image_stats: pd.DataFrame) -> Figure:
    """Image width against height per split, as stored and after the model's test-time resize (dot area
    grows with the number of images of that size)."""
    splits = list(dict.fromkeys(image_stats["split"]))
    colours = _colours(splits)
    figure = Figure(figsize=(12, 5), layout="constrained")
    panels = figure.subplots(1, 2)
    for axes, (width, height), title in (
        (panels[0], ("width", "height"), "Image sizes"),
        (panels[1], ("resized_width", "resized_height"), "After the model's test-time resize"),
    ):
        for split in splits:
            rows = image_stats[image_stats["split"] == split]
            sizes = rows.groupby([width, height]).size().rename("images").reset_index()
            dot = 10 + 60 * np.sqrt(sizes["images"] / max(sizes["images"].max(), 1))
            axes.scatter(sizes[width], sizes[height], s=dot, alpha=0.5, color=colours[split],
                         label=f"{split} ({len(rows)} images, {len(sizes)} distinct sizes)")  # fmt: skip
        axes.set(xlabel="width (px)", ylabel="height (px)", title=title)
        # From 0, so that sizes and aspect ratios read true even when all images share one size.
        axes.set_xlim(0, axes.get_xlim()[1] * 1.1)
        axes.set_ylim(0, axes.get_ylim()[1] * 1.1)
        axes.legend(fontsize="small")
        axes.grid(alpha=0.3)
    return figure


def box_sizes_figure(
    geometry: pd.DataFrame, anchors: pd.DataFrame, foreground_iou: float, background_iou: float
) -> Figure:
    """Box sizes after the resize with the anchors drawn over them: width-height, sqrt(area), aspect ratio,
    and the best IoU any anchor reaches (against the RPN's thresholds). Crowd regions left out."""
    objects = geometry[~geometry["iscrowd"] & (geometry["width"] > 0) & (geometry["height"] > 0)]
    splits = list(dict.fromkeys(objects["split"]))
    colours = _colours(splits)
    figure = Figure(figsize=(14, 9.5), layout="constrained")
    (scatter, sides, aspects, ious) = figure.subplots(2, 2).ravel()
    anchor_w, anchor_h = anchors["x2"] - anchors["x1"], anchors["y2"] - anchors["y1"]
    side_bins = _log_bins(np.r_[np.sqrt(objects["area"]), np.sqrt(anchor_w * anchor_h)])
    ratio_bins = _log_bins(np.r_[objects["aspect_ratio"], anchors["aspect_ratio"]])
    for split in splits:
        rows = objects[objects["split"] == split]
        style = {"histtype": "step", "lw": 1.5, "color": colours[split], "density": True}
        shown = _subset(rows)
        label = f"{split} ({len(rows)} boxes)"
        scatter.scatter(shown["width"], shown["height"], s=4, alpha=0.3, color=colours[split], label=label)
        sides.hist(np.sqrt(rows["area"]), bins=side_bins, label=split, **style)
        aspects.hist(rows["aspect_ratio"], bins=ratio_bins, label=split, **style)
        below = (rows["best_anchor_iou"] < foreground_iou).mean()
        label = f"{split}: {below:.1%} below {foreground_iou:g}"
        ious.hist(rows["best_anchor_iou"], bins=np.linspace(0, 1, 41), label=label, **style)
    scatter.scatter(anchor_w, anchor_h, marker="x", s=60, color=ANCHOR_COLOUR, label="anchors", zorder=3)
    marks = [
        (sides, sorted(set(anchors["size"])), ""),
        (aspects, sorted(set(anchors["aspect_ratio"])), ""),
        (ious, [background_iou], "RPN background below "),
        (ious, [foreground_iou], "RPN foreground from "),
    ]
    for axes, values, text in marks:
        for value in values:
            axes.axvline(value, color=ANCHOR_COLOUR, ls="--", lw=1)
            axes.text(
                value, 0.98, f" {text}{value:g}", transform=axes.get_xaxis_transform(), fontsize=8, va="top"
            )
    scatter.set(xscale="log", yscale="log", xlabel="box width (px)", ylabel="box height (px)")
    scatter.set_title("Box width and height; anchors as x")
    sides.set(xscale="log", xlabel="sqrt(box area) (px)", ylabel="density")
    sides.set_title("Box size; anchor sizes dashed")
    aspects.set(xscale="log", xlabel="aspect ratio height / width", ylabel="density")
    aspects.set_title("Box aspect ratio; anchor ratios dashed")
    ious.set(xlabel="best IoU any anchor reaches with the box", ylabel="density", xlim=(0, 1))
    ious.set_title("How well the anchors fit the boxes")
    for axes in (scatter, sides, aspects):
        axes.xaxis.set_major_formatter(PLAIN_NUMBERS)
        axes.xaxis.set_minor_formatter(PLAIN_NUMBERS if axes is aspects else FuncFormatter(lambda *_: ""))
    scatter.yaxis.set_major_formatter(PLAIN_NUMBERS)
    for axes in (scatter, sides, aspects, ious):
        axes.legend(fontsize="small", loc="center left" if axes is ious else "best")
        axes.grid(alpha=0.3)
    figure.suptitle("Boxes after the model's test-time resize, against the RPN's anchors")
    return figure


def _log_bins(values: np.ndarray, count: int = 40) -> np.ndarray:
    positive = values[np.isfinite(values) & (values > 0)]
    low, high = (positive.min(), positive.max()) if positive.size else (1.0, 10.0)
    return np.geomspace(low / 1.5, high * 1.5, count)


def _subset(rows: pd.DataFrame) -> pd.DataFrame:
    return rows if len(rows) <= MAX_SCATTER_POINTS else rows.sample(MAX_SCATTER_POINTS, random_state=0)
