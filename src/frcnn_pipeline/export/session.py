"""An exported graph run by ONNX Runtime: one RGB image in, its detections out, either graph.

For the fixed-shape graph this is also the reference of the preprocessing a deployer applies: the resize rule
and canvas stated in the graph's description (`export.deployment`), nothing else.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor

from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.export.deployment import DYNAMIC, FORMAT, METADATA_KEY
from frcnn_pipeline.modeling.saved import SavedDetector
from frcnn_pipeline.modeling.transform import resize_as_detectron2, resized_shape


def read_description(graph: onnx.ModelProto) -> dict[str, Any]:
    """The description an export stored in the graph's metadata.

    Raises:
        UserFacingError: the graph was not exported by this project (or by an incompatible version).
    """
    props = {prop.key: prop.value for prop in graph.metadata_props}
    description = json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}
    if description.get("format") != FORMAT:
        raise UserFacingError(
            f"this ONNX graph has no {FORMAT} description in its metadata: it was not written by "
            "`kedro run --pipeline export` of this project version. Export the model again."
        )
    return description


def require_exported_from(description: dict[str, Any], saved: SavedDetector) -> None:
    """The graph must have been exported from ``saved`` (same file sha256), where both are known.

    Raises:
        UserFacingError: it was exported from another file: evaluating it would name the wrong model.
    """
    source, expected = description["source"], saved.origin.get("sha256")
    if expected and source.get("sha256") and source["sha256"] != expected:
        raise UserFacingError(
            f"The ONNX graph was exported from {source['kind']} version {source['version']} (sha256 "
            f"{source['sha256'][:12]}…), not from {saved.name} (sha256 {expected[:12]}…): export that model "
            "first (`kedro run --pipeline export`, export_best_model or export_initial_weights), or load the "
            "matching versions (`--load-versions`)."
        )


def canvas_inputs(image: Tensor, description: dict[str, Any]) -> dict[str, np.ndarray]:
    """The fixed-shape graph's inputs for an RGB image [3, H, W] (uint8 or float, 0-255), as its description
    says: resized by the model's rule, bilinear, placed top-left on the canvas.

    Raises:
        ValueError: the resized image does not fit the canvas (naming both sizes).
    """
    outside = description["preprocessing"]["outside_graph"]
    resize, (canvas_h, canvas_w) = outside["resize"], outside["canvas"]
    height, width = image.shape[-2:]
    new_h, new_w = resized_shape(height, width, resize["short_side"], resize["max_size"], resize["rounding"])
    if new_h > canvas_h or new_w > canvas_w:
        raise ValueError(
            f"an image of {height}x{width} resizes to {new_h}x{new_w}, which does not fit the fixed-shape "
            f"graph's {canvas_h}x{canvas_w} canvas: export again with export.fixed_size: "
            f"[{max(new_h, canvas_h)}, {max(new_w, canvas_w)}] or more (null: the smallest canvas that holds "
            "the check split's images)"
        )
    if resize.get("interpolation") == "detectron2":
        resized = resize_as_detectron2(image, (new_h, new_w))
    else:  # torchvision's, as every graph exported before the setting existed
        resized = F.interpolate(
            image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False
        )
    canvas = torch.zeros((1, 3, canvas_h, canvas_w), dtype=torch.float32)
    canvas[..., :new_h, :new_w] = resized
    return {
        "image": canvas.numpy(),
        "resized_size": np.array([new_h, new_w], dtype=np.int64),
        "original_size": np.array([height, width], dtype=np.int64),
    }


class OnnxDetector:
    """ONNX Runtime (CPU) on an exported graph: ``detector(image)`` -> ``{"boxes", "scores", "labels"}``.

    ``image``: RGB uint8 [3, H, W] as decoded. Boxes xyxy in the image's pixels, labels 1..K, best first; the
    fixed-shape graph's padded rows are cut off.
    """

    def __init__(self, graph: onnx.ModelProto, *, threads: int | None = None) -> None:
        self.description = read_description(graph)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    @property
    def variant(self) -> str:
        return self.description["variant"]

    def __call__(self, image: Tensor) -> dict[str, Tensor]:
        if self.variant == DYNAMIC:
            boxes, scores, labels = self.session.run(None, {"image": image.to(torch.uint8).numpy()})
        else:
            boxes, scores, labels, count = self.session.run(None, canvas_inputs(image, self.description))
            boxes, scores, labels = boxes[: count[0]], scores[: count[0]], labels[: count[0]]
        return {
            "boxes": torch.from_numpy(boxes),
            "scores": torch.from_numpy(scores),
            "labels": torch.from_numpy(labels),
        }
