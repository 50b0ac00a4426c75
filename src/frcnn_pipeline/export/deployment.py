"""What a deployer needs besides a graph: its inputs and outputs, the preprocessing, the classes, the source.

Each exported graph carries its description as JSON in its ONNX metadata (key `METADATA_KEY`), and the export
pipeline writes both descriptions to a sidecar JSON. The fixed-shape graph leaves the resize to the deployer:
its description states the rule exactly (`resize`), and `export.session` applies it as written there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from frcnn_pipeline.config.model import InputParams, ModelParams
from frcnn_pipeline.modeling.transform import resized_shape

FORMAT = "frcnn_pipeline.onnx/1"
METADATA_KEY = "frcnn_pipeline.deployment"
DYNAMIC = "dynamic"
FIXED = "fixed"

_ROUNDING = {
    "detectron2": "new_h = floor(h * scale + 0.5), new_w = floor(w * scale + 0.5)",
    "torchvision": "new_h = floor(h * scale), new_w = floor(w * scale)",
}


# model.input.resize_interpolation, as a deployer reproduces it
_INTERPOLATION = {
    "detectron2": "the uint8 RGB image resized as Pillow's Image.resize((new_w, new_h), Image.BILINEAR) does "
    "(antialiased when shrinking, rounded to uint8), before any normalising",
    "torchvision": "bilinear with half-pixel centres and no antialiasing (PyTorch "
    "interpolate(mode='bilinear', align_corners=False), OpenCV INTER_LINEAR)",
}


def default_canvas(input_cfg: InputParams) -> list[int]:
    """The square canvas that holds any image after the test-time resize: max_size rounded up to
    size_divisibility on both sides (1344 x 1344 for max_size 1333)."""
    divisor = input_cfg.size_divisibility
    side = math.ceil(input_cfg.max_size / divisor) * divisor
    return [side, side]


def fitting_canvas(input_cfg: InputParams, sizes: Iterable[tuple[int, int]]) -> list[int]:
    """The smallest canvas that holds each of these (height, width) images after the test-time resize,
    rounded up to size_divisibility: what they fill, with the least padding (96 x 96 for the demo's images).

    Padding is what the model may never have seen: the demo's model, trained on 96 px images that fill their
    batches, loses 5-8 AP points on a 224 x 224 canvas (the backbone's activations over the padding differ
    from the zeros its convolutions pad with, and false detections line the image's right and bottom edges).
    """
    resized = [
        resized_shape(h, w, input_cfg.min_size_test, input_cfg.max_size, input_cfg.resize_rounding)
        for h, w in sizes
    ]
    if not resized:
        raise ValueError("no image sizes to fit a canvas to")
    divisor = input_cfg.size_divisibility
    return [math.ceil(max(side) / divisor) * divisor for side in zip(*resized, strict=True)]


def resize_rule(input_cfg: InputParams) -> dict[str, Any]:
    """The model's test-time resize (`modeling.transform.resized_shape`), as a deployer applies it."""
    short_side, max_size = input_cfg.min_size_test, input_cfg.max_size
    rounding = input_cfg.resize_rounding
    return {
        "short_side": short_side,
        "max_size": max_size,
        "rounding": rounding,
        "rule": (
            f"h, w: the image's size; scale = {short_side} / min(h, w); if max(h, w) * scale > {max_size}: "
            f"scale = {max_size} / max(h, w); {_ROUNDING[rounding]} (double precision)"
        ),
        "interpolation": input_cfg.resize_interpolation,
        "method": _INTERPOLATION[input_cfg.resize_interpolation],
    }


def _normalisation(input_cfg: InputParams) -> list[str]:
    steps = ["float32"]
    if input_cfg.format == "BGR":
        steps.append("channels reversed: RGB -> BGR")
    steps.append(
        f"(x - mean) / std per channel in {input_cfg.format} order, mean {input_cfg.pixel_mean}, "
        f"std {input_cfg.pixel_std} (0-255 scale)"
    )
    return steps


def _postprocessing(model_cfg: ModelParams) -> dict[str, Any]:
    roi = model_cfg.roi_heads
    steps = "boxes scaled to the original image"
    if roi.clip_after_rescale:
        steps += " and clipped to it"
    if roi.small_boxes == "detectron2":
        steps += ", empty ones dropped"
    return {
        "in_graph": "RPN proposals (per-level top-k, NMS per level), box head, box decoding, clipping to the "
        f"image, score threshold, per-class NMS, top-k by score, {steps}",
        "score_threshold": roi.score_thresh_test,
        "nms_threshold": roi.nms_thresh_test,
        "detections_per_image": roi.detections_per_image,
    }


def _outputs(variant: str, count: int | str) -> list[dict[str, Any]]:
    outputs = [
        {
            "name": "boxes",
            "dtype": "float32",
            "shape": [count, 4],
            "meaning": "x1, y1, x2, y2 in the original image's pixels",
        },
        {"name": "scores", "dtype": "float32", "shape": [count], "meaning": "class probability"},
        {"name": "labels", "dtype": "int64", "shape": [count], "meaning": "1..K, see categories"},
    ]
    if variant == FIXED:
        outputs[2]["meaning"] += "; padded rows 0"
        outputs.append(
            {
                "name": "num_detections",
                "dtype": "int64",
                "shape": [1],
                "meaning": "the first num_detections rows are the detections (best first), the rest zeros",
            }
        )
    return outputs


def describe_graph(
    variant: str,
    model_cfg: ModelParams,
    categories: list[dict[str, Any]],
    *,
    opset: int,
    canvas: list[int] | None,
    source: dict[str, Any],
    canvas_from: str = "",
) -> dict[str, Any]:
    """The description of one exported graph.

    Args:
        variant: DYNAMIC (any image size, preprocessing in the graph) or FIXED (canvas of size `canvas`,
            chosen as `canvas_from` says).
        model_cfg: the `model:` section the graph was exported from, test-time filtering included.
        categories: the saved class mapping, table labels 0..K-1 (the graph's labels are 1..K).
        source: what was exported (kind, version, sha256, provenance).
    """
    input_cfg = model_cfg.input
    description: dict[str, Any] = {
        "format": FORMAT,
        "variant": variant,
        "opset": opset,
        "source": source,
        "categories": [
            {"label": entry["label"] + 1, "category_id": entry["category_id"], "name": entry["name"]}
            for entry in categories
        ],
        "postprocessing": _postprocessing(model_cfg),
    }
    if variant == DYNAMIC:
        description.update(_dynamic_interface(input_cfg))
    else:
        description.update(_fixed_interface(model_cfg, canvas, canvas_from))
    return description


def _dynamic_interface(input_cfg: InputParams) -> dict[str, Any]:
    """Inputs, outputs and preprocessing of the dynamic graph: the decoded image in, everything inside."""
    return {
        "inputs": [
            {
                "name": "image",
                "dtype": "uint8",
                "shape": [3, "height", "width"],
                "meaning": "the image as decoded: RGB, 0-255, channels first, any size",
            }
        ],
        "outputs": _outputs(DYNAMIC, "detections"),
        "preprocessing": {
            "outside_graph": "none",
            "in_graph": [
                *_normalisation(input_cfg),
                f"resize: {resize_rule(input_cfg)['rule']}; {resize_rule(input_cfg)['method']}",
                f"zero padding (after normalising) on the bottom and right to multiples of "
                f"{input_cfg.size_divisibility}",
            ],
        },
    }


def _fixed_interface(model_cfg: ModelParams, canvas: list[int], canvas_from: str) -> dict[str, Any]:
    """Inputs, outputs and preprocessing of the fixed-shape graph: resized on the host onto the canvas."""
    input_cfg = model_cfg.input
    height, width = canvas
    inputs = [
        {
            "name": "image",
            "dtype": "float32",
            "shape": [1, 3, height, width],
            "meaning": "the canvas: the resized image (RGB, 0-255) in its top-left corner; values around it "
            "are ignored",
        },
        {
            "name": "resized_size",
            "dtype": "int64",
            "shape": [2],
            "meaning": "height, width of the resized image",
        },
        {
            "name": "original_size",
            "dtype": "int64",
            "shape": [2],
            "meaning": "height, width of the image before resizing: the boxes come out in its pixels",
        },
    ]
    return {
        "inputs": inputs,
        "outputs": _outputs(FIXED, model_cfg.roi_heads.detections_per_image),
        "preprocessing": {
            "outside_graph": {
                "color": "RGB, 0-255 as decoded (no scaling to 0-1)",
                "resize": resize_rule(input_cfg),
                "canvas": [height, width],
                "canvas_from": canvas_from,
                "placement": "top-left corner; the resized image must fit the canvas",
            },
            "in_graph": [*_normalisation(input_cfg), "zero beyond resized_size (after normalising)"],
        },
        "static_shapes": {
            "detection_candidates": model_cfg.static_shapes.detection_candidates,
            "note": "the model's static-shape mode: fixed proposal and candidate counts, masks instead of "
            "removals; NonMaxSuppression's selected indices are the one data-dependent tensor inside",
        },
    }
