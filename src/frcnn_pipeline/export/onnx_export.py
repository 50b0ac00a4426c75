"""Export a saved detector to ONNX: a dynamic graph and a fixed-shape graph, each checked by onnx's checker.

The exporter is torch.onnx's TorchScript-based one (`dynamo=False`). The dynamo exporter (torch.export)
stops on torchvision's `batched_nms`, which branches on the data-dependent number of boxes
(torchvision/ops/boxes.py), and specialises the resize to the example image's size. A trace follows every
input size because `export.graph` computes the sizes with tensor ops; torchvision's NMS paths are scripted
inside the trace (an ONNX If), so an image without detections runs too. torchvision registers ONNX
translations for its `nms` (NonMaxSuppression) and `roi_align` (RoiAlign, `sampling_ratio` 0 is adaptive
in both; `aligned=True` is `coordinate_transformation_mode="half_pixel"`, opset >= 16), so both export as
single ONNX ops. The graphs are then simplified by ONNX Runtime's portable optimisations (constant folding:
the fixed-shape graph's output sizes become numbers) and checked by onnx's checker.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch

from frcnn_pipeline.config import ExportParams, InferenceParams, ModelParams
from frcnn_pipeline.config.model import InputParams
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.export.deployment import (
    DYNAMIC,
    FIXED,
    METADATA_KEY,
    default_canvas,
    describe_graph,
    fitting_canvas,
)
from frcnn_pipeline.export.graph import CanvasDetector, ImageDetector
from frcnn_pipeline.layers import backend as detection_ops
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.backbone import fold_norms_into_convs
from frcnn_pipeline.modeling.saved import SavedDetector, require_categories

log = logging.getLogger(__name__)

# Exporter chatter that says nothing about this model: the trace is verified by running the graph.
_QUIET = (
    (torch.jit.TracerWarning, ""),
    (FutureWarning, ""),
    (DeprecationWarning, ""),
    (UserWarning, r"Exporting aten::index operator of advanced indexing"),
    (UserWarning, r"To copy construct from a tensor"),
)
# torch.onnx.export takes `dynamo` in recent torch (True by default from 2.9); older torch only has the
# TorchScript-based exporter and no such argument.
_HAS_DYNAMO = "dynamo" in inspect.signature(torch.onnx.export).parameters
_TORCHSCRIPT_EXPORTER = {"dynamo": False} if _HAS_DYNAMO else {}
_OPERATOR = re.compile(r"\b(\w+::\w+(?:\.\w+)*)")  # torchvision::ps_roi_align, aten::add.Tensor


class UnexportableOpError(UserFacingError):
    """An op of the model has no faithful ONNX translation at the requested opset."""


@dataclass(frozen=True)
class ExportedDetector:
    """The two graphs and their descriptions (the sidecar: ``{"dynamic": ..., "fixed": ...}``)."""

    dynamic: onnx.ModelProto
    fixed: onnx.ModelProto
    deployment: dict[str, Any]


def export_detector(
    saved: SavedDetector,
    model_cfg: ModelParams,
    options: ExportParams | None = None,
    *,
    image_sizes: list[tuple[int, int]] | None = None,
) -> ExportedDetector:
    """Both graphs of ``saved``, built with ``model_cfg`` (see `modeling.saved.inference_model_config`).

    The fixed-shape graph's canvas: ``export.fixed_size``; else the smallest that holds the images of
    ``image_sizes`` ((height, width) each) after the test-time resize; else one that holds any image.

    Raises:
        UnexportableOpError: an op without an ONNX translation, named, with the fix.
        UserFacingError: a model without a class mapping.
    """
    options = options or ExportParams()
    categories = require_categories(saved)
    test_time = InferenceParams(
        score_threshold=options.score_threshold,
        nms_threshold=options.nms_threshold,
        detections_per_image=options.detections_per_image,
    )
    config = test_time.applied_to(model_cfg)
    require_exportable_ops(config, options.opset)
    canvas, canvas_from = choose_canvas(config.input, options.fixed_size, image_sizes)
    dynamic_config, fixed_config = graph_config(config, DYNAMIC), graph_config(config, FIXED, canvas)
    source = {key: value for key, value in saved.describe("").items() if key != "model_config_from"}
    shared = {"opset": options.opset, "source": source}
    deployment = {
        DYNAMIC: describe_graph(DYNAMIC, dynamic_config, categories, canvas=None, **shared),
        FIXED: describe_graph(
            FIXED, fixed_config, categories, canvas=canvas, canvas_from=canvas_from, **shared
        ),
    }

    dynamic = _trace_dynamic(
        inference_model(saved.state_dict, dynamic_config, len(categories)), options.opset
    )
    fixed = _trace_fixed(
        inference_model(saved.state_dict, fixed_config, len(categories)), canvas, options.opset
    )
    for graph, description in ((dynamic, deployment[DYNAMIC]), (fixed, deployment[FIXED])):
        _attach_description(graph, description)
    log.info(
        "Exported %s: dynamic graph (%d nodes) and fixed-shape graph %dx%d (%d nodes), opset %d",
        saved.name, len(dynamic.graph.node), *canvas, len(fixed.graph.node), options.opset,
    )  # fmt: skip
    return ExportedDetector(dynamic, fixed, deployment)


def _trace_dynamic(model: torch.nn.Module, opset: int) -> onnx.ModelProto:
    """The dynamic graph: a uint8 image of any size in, the detections out."""
    example = torch.randint(
        0, 256, (3, 60, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return trace_to_onnx(
        ImageDetector(model),
        (example,),
        opset=opset,
        input_names=["image"],
        output_names=["boxes", "scores", "labels"],
        dynamic_axes={
            "image": {1: "height", 2: "width"},
            **{name: {0: "detections"} for name in ("boxes", "scores", "labels")},
        },
    )


def _trace_fixed(model: torch.nn.Module, canvas: list[int], opset: int) -> onnx.ModelProto:
    """The fixed-shape graph: the canvas and the two sizes in, a fixed number of detection rows out."""
    fixed = trace_to_onnx(
        CanvasDetector(model),
        example_canvas(canvas),
        opset=opset,
        input_names=["image", "resized_size", "original_size"],
        output_names=["boxes", "scores", "labels", "num_detections"],
    )
    require_static_shapes(fixed)
    return fixed


def _attach_description(graph: onnx.ModelProto, description: dict[str, Any]) -> None:
    """The description in the graph's metadata and doc string, then ONNX's full check."""
    onnx.helper.set_model_props(
        graph,
        {
            METADATA_KEY: json.dumps(description),
            "categories": json.dumps(description["categories"]),
        },
    )
    graph.doc_string = f"Faster R-CNN, {description['variant']} graph: {json.dumps(description['source'])}"
    onnx.checker.check_model(graph, full_check=True)


def choose_canvas(
    input_cfg: InputParams, fixed_size: list[int] | None, image_sizes: list[tuple[int, int]] | None
) -> tuple[list[int], str]:
    """The fixed-shape graph's canvas [H, W], and how it was chosen (the deployment description says)."""
    if fixed_size:
        return list(fixed_size), "export.fixed_size"
    if image_sizes:
        return fitting_canvas(input_cfg, image_sizes), (
            f"the smallest that holds the {len(image_sizes)} images it was exported for (the export "
            "pipeline's: its check split) after the test-time resize; larger resized images do not fit"
        )
    return default_canvas(input_cfg), "max_size rounded up to size_divisibility, square: holds any image"


def graph_config(model_cfg: ModelParams, variant: str, canvas: list[int] | None = None) -> ModelParams:
    """The model config a graph runs, whatever mode the model was trained in (the weights are the same): the
    dynamic graph the dynamic mode, the fixed-shape graph the static-shape mode padded to ``canvas``."""
    fixed = variant == FIXED
    return model_cfg.replaced(
        input={"fixed_size": list(canvas) if fixed else None}, static_shapes={"enabled": fixed}
    )


def require_exportable_ops(model_cfg: ModelParams, opset: int) -> None:
    """Refuse, naming the op, what would not export or would export with other semantics.

    The portable NMS/RoIAlign (`runtime.detection_ops: portable`) group boxes on the host and loop until the
    data says stop: a trace would freeze both. So the export traces torchvision's ops, which ONNX translates.
    """
    detection_ops.configure("auto")
    for op in ("nms", "roi_align"):
        if not detection_ops.has_torchvision_kernel(op, "cpu"):
            raise UnexportableOpError(
                f"torchvision::{op} has no CPU kernel in this torchvision build, and only torchvision's op "
                "has an ONNX translation (the portable one loops on the data, which a trace would freeze): "
                "install a torchvision built with its C++ ops (pip install torchvision)."
            )
    if model_cfg.roi_heads.pooler_aligned and opset < 16:
        raise UnexportableOpError(
            "torchvision::roi_align with aligned=True (model.roi_heads.pooler_aligned, detectron2's "
            "ROIAlignV2) has an ONNX translation from opset 16 on (RoiAlign's "
            f"coordinate_transformation_mode 'half_pixel'); at export.opset {opset} it would export as the "
            "unaligned op, half a pixel off. Set export.opset to 16 or more."
        )


def inference_model(state_dict: dict[str, torch.Tensor], model_cfg: ModelParams, num_classes: int):
    """The model in eval mode on CPU, float32, norms folded into the convs (fewer ops in the graph)."""
    model = build_model(model_cfg, num_classes)
    model.load_state_dict(state_dict)
    model.eval()
    fold_norms_into_convs(model.backbone.body)
    return model


def example_canvas(canvas: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs of the fixed-shape graph for the trace: a random image filling most of the canvas."""
    height, width = canvas
    resized = torch.tensor([height * 3 // 4, width * 3 // 4])
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((1, 3, height, width), generator=generator) * 255
    return image, resized, resized // 2


def trace_to_onnx(module: torch.nn.Module, args: tuple, *, opset: int, **names: Any) -> onnx.ModelProto:
    """``module`` traced and exported, its constants folded (`fold_constants`), shapes inferred.

    Raises:
        UnexportableOpError: an operator has no ONNX translation at ``opset``, named.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        for category, message in _QUIET:
            warnings.filterwarnings("ignore", message=message, category=category)
        try:
            torch.onnx.export(module, args, buffer, opset_version=opset, **_TORCHSCRIPT_EXPORTER, **names)
        except torch.onnx.errors.OnnxExporterError as error:
            found = _OPERATOR.search(str(error))
            operator = found.group(1) if found else "an operator"
            raise UnexportableOpError(
                f"ONNX export failed: {operator} has no ONNX translation at opset {opset}. Replace it in the "
                f"model with an op that exports, or try another export.opset. The exporter said: {error}"
            ) from error
    graph = fold_constants(buffer.getvalue())
    return onnx.shape_inference.infer_shapes(graph, strict_mode=True, data_prop=True)


def fold_constants(graph: bytes) -> onnx.ModelProto:
    """ONNX Runtime's basic graph optimisations (constant folding, redundant nodes removed), saved as a
    standard ONNX graph. They run before any execution provider is chosen, so the result is portable; with the
    input's size fixed they fold the fixed-shape graph's size arithmetic, and its outputs get numeric sizes.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "folded.onnx")
        ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        folded = onnx.load(options.optimized_model_filepath)
    # ORT declares its own operator domains; the graph uses none of them.
    used = {node.domain for node in folded.graph.node}
    kept = [entry for entry in folded.opset_import if entry.domain in used or entry.domain == ""]
    del folded.opset_import[:]
    folded.opset_import.extend(kept)
    return folded


def require_static_shapes(graph: onnx.ModelProto) -> None:
    """Every dimension of every input and output is a number (what ATC and TensorRT need)."""
    symbolic = [
        f"{value.name} dim {axis} ({dim.dim_param or 'unknown'})"
        for value in [*graph.graph.input, *graph.graph.output]
        for axis, dim in enumerate(value.type.tensor_type.shape.dim)
        if not dim.HasField("dim_value")
    ]
    if symbolic:
        raise ValueError(f"the fixed-shape graph has non-numeric dimensions: {', '.join(symbolic)}")
