"""How a dataset's boxes meet the model's anchors, after the model's test-time resize (Kedro-free).

"Can match": the RPN labels an anchor foreground when its IoU with a box reaches ``rpn.iou_thresholds[1]``
(0.7). For every box this module computes the best IoU any anchor reaches, exactly: anchors of each level
(size, aspect ratio, stride) sit on that level's grid (centres at multiples of the stride, as
``FixedStrideAnchorGenerator`` places them), and for an axis-aligned box the best grid position is the grid
centre nearest the box centre on each axis (the overlap along each axis only shrinks as the centres move
apart). A box whose best IoU stays below the threshold gets a positive anchor only through the RPN's
low-quality rule (its best anchor, whatever the IoU), which trains the RPN on poorly fitting anchors.
The grid is the image's own padded extent (a batch with larger images has a wider grid: only boxes at the
far right or bottom edge could then fare slightly better).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from frcnn_pipeline.config.model import InputParams, ModelParams
from frcnn_pipeline.modeling.anchors import FixedStrideAnchorGenerator
from frcnn_pipeline.modeling.backbone import FEATURE_STRIDES
from frcnn_pipeline.modeling.transform import resized_shape

BOX_COLUMNS = [
    "image_id", "label", "iscrowd", "width", "height", "area", "aspect_ratio", "best_anchor_iou",
    "best_anchor_size", "best_anchor_ratio",
]  # fmt: skip


def anchor_shapes(model_cfg: ModelParams) -> pd.DataFrame:
    """One row per anchor shape: level stride, size, aspect ratio (h/w) and the cell anchor's xyxy (centred
    on 0), as the model's anchor generator makes them (rounded when ``anchors.round``)."""
    anchors = model_cfg.anchors
    generator = FixedStrideAnchorGenerator(
        anchors.sizes, anchors.aspect_ratios, FEATURE_STRIDES, round_cell_anchors=anchors.round
    )
    rows = []
    for stride, size, cells in zip(FEATURE_STRIDES, anchors.sizes, generator.cell_anchors, strict=True):
        for ratio, (x1, y1, x2, y2) in zip(anchors.aspect_ratios, cells.double().tolist(), strict=True):
            rows.append({"stride": stride, "size": float(size), "aspect_ratio": float(ratio),
                         "x1": x1, "y1": y1, "x2": x2, "y2": y2})  # fmt: skip
    return pd.DataFrame(rows)


def resized_image_sizes(images: pd.DataFrame, model_cfg: ModelParams) -> pd.DataFrame:
    """``images`` with ``resized_width``/``resized_height``: the model's test-time resize (``min_size_test``
    shorter side, ``max_size`` cap, ``resize_rounding``), computed once per distinct image size."""
    inputs = model_cfg.input
    sizes = images[["height", "width"]].drop_duplicates()
    resized = [
        resized_shape(h, w, inputs.min_size_test, inputs.max_size, inputs.resize_rounding)
        for h, w in sizes.itertuples(index=False)
    ]
    sizes = sizes.assign(resized_height=[h for h, _ in resized], resized_width=[w for _, w in resized])
    return images.merge(sizes, on=["height", "width"], how="left")


def _padded(extent: np.ndarray, inputs: InputParams, axis: int) -> np.ndarray:
    if inputs.fixed_size:
        return np.full_like(extent, inputs.fixed_size[axis])
    divisor = max(int(inputs.size_divisibility), 1)
    return np.ceil(extent / divisor) * divisor


def box_geometry(images: pd.DataFrame, annotations: pd.DataFrame, model_cfg: ModelParams) -> pd.DataFrame:
    """One row per annotation: its box after the test-time resize (width, height, area, aspect ratio h/w)
    and the best IoU any anchor reaches with it, with that anchor's size and ratio (module doc)."""
    sized = resized_image_sizes(images, model_cfg).set_index("image_id")
    image = sized.loc[annotations["image_id"].to_numpy()]
    scale_x = (image["resized_width"] / image["width"]).to_numpy()
    scale_y = (image["resized_height"] / image["height"]).to_numpy()
    scale = np.stack([scale_x, scale_y, scale_x, scale_y], axis=1)
    boxes = annotations[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64).reshape(-1, 4) * scale
    padded_w = _padded(image["resized_width"].to_numpy(dtype=np.float64), model_cfg.input, 1)
    padded_h = _padded(image["resized_height"].to_numpy(dtype=np.float64), model_cfg.input, 0)
    best_iou, best_size, best_ratio = best_anchor_iou(boxes, anchor_shapes(model_cfg), padded_w, padded_h)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = height / width
    return pd.DataFrame(
        {
            "image_id": annotations["image_id"].to_numpy(),
            "label": annotations["label"].to_numpy(),
            "iscrowd": annotations["iscrowd"].to_numpy(dtype=bool),
            "width": width,
            "height": height,
            "area": width * height,
            "aspect_ratio": aspect,
            "best_anchor_iou": best_iou,
            "best_anchor_size": best_size,
            "best_anchor_ratio": best_ratio,
        },
        columns=BOX_COLUMNS,
    )


def best_anchor_iou(
    boxes: np.ndarray, shapes: pd.DataFrame, padded_width: np.ndarray, padded_height: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best IoU of each xyxy box with the anchors of ``anchor_shapes`` on their grids (module doc), and the
    size and ratio of the anchor reaching it."""
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    best = np.zeros(len(boxes))
    best_size, best_ratio = np.full(len(boxes), math.nan), np.full(len(boxes), math.nan)
    for shape in shapes.itertuples(index=False):
        stride = shape.stride
        # The nearest grid centre on each axis (centres at 0, stride, ..., within the padded image).
        grid_x = np.clip(np.round(centre_x / stride), 0, np.ceil(padded_width / stride) - 1) * stride
        grid_y = np.clip(np.round(centre_y / stride), 0, np.ceil(padded_height / stride) - 1) * stride
        overlap_w = np.minimum(boxes[:, 2], grid_x + shape.x2) - np.maximum(boxes[:, 0], grid_x + shape.x1)
        overlap_h = np.minimum(boxes[:, 3], grid_y + shape.y2) - np.maximum(boxes[:, 1], grid_y + shape.y1)
        inter = np.clip(overlap_w, 0, None) * np.clip(overlap_h, 0, None)
        anchor_area = (shape.x2 - shape.x1) * (shape.y2 - shape.y1)
        iou = inter / (box_area + anchor_area - inter)
        better = iou > best
        best = np.where(better, iou, best)
        best_size[better], best_ratio[better] = shape.size, shape.aspect_ratio
    return best, best_size, best_ratio


def coverage_summary(geometry: pd.DataFrame, model_cfg: ModelParams) -> dict[str, Any]:
    """How many (non-crowd) boxes no anchor can match (best IoU below the RPN's foreground threshold), and
    how many of those are smaller than the smallest anchor (sqrt(area) below its size)."""
    foreground_iou = float(model_cfg.rpn.iou_thresholds[1])
    smallest = float(min(model_cfg.anchors.sizes))
    objects = geometry[~geometry["iscrowd"]]
    unmatchable = objects["best_anchor_iou"] < foreground_iou
    small = np.sqrt(objects["area"]) < smallest
    count, inputs = len(objects), model_cfg.input
    return {
        "resize": {
            "min_size_test": inputs.min_size_test,
            "max_size": inputs.max_size,
            "resize_rounding": inputs.resize_rounding,
        },
        "anchor_sizes": [float(size) for size in model_cfg.anchors.sizes],
        "anchor_aspect_ratios": [float(ratio) for ratio in model_cfg.anchors.aspect_ratios],
        "rpn_foreground_iou": foreground_iou,
        "boxes": count,
        "unmatchable_boxes": int(unmatchable.sum()),
        "unmatchable_share": float(unmatchable.mean()) if count else 0.0,
        "unmatchable_small_boxes": int((unmatchable & small).sum()),
        "unmatchable_small_share": float((unmatchable & small).mean()) if count else 0.0,
    }


def coverage_warning(split: str, summary: dict[str, Any], max_share: float) -> str | None:
    """A message when more than ``max_share`` of a split's boxes are too small for any anchor to match."""
    if summary["unmatchable_small_share"] <= max_share:
        return None
    resize, smallest = summary["resize"], min(summary["anchor_sizes"])
    foreground = summary["rpn_foreground_iou"]
    return (
        f"{split}: {summary['unmatchable_small_share']:.0%} of the boxes "
        f"({summary['unmatchable_small_boxes']} of {summary['boxes']}) are smaller than the smallest anchor "
        f"({smallest:g} px) can match: after the resize to {resize['min_size_test']} px (max "
        f"{resize['max_size']}), no anchor reaches the RPN's foreground IoU {foreground:g} with them, so "
        "they only get the RPN's low-quality (best-anchor) match. Fix: smaller model.anchors.sizes or a "
        "larger model.input.min_size_test/min_size_train (see dataset_box_sizes.png); the limit is "
        "ingest.statistics.unmatchable_warning_share."
    )
