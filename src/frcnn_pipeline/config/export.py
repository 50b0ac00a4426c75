"""``export:``, the deployable ONNX graphs and their check (frcnn_pipeline.export).

Defaults: opset 17, the COCO evaluation protocol's test-time filtering baked into the graphs (score 0.05,
NMS 0.5, 100 detections per image), and an export that changes AP by more than 0.1 points fails.
"""

from __future__ import annotations

from pydantic import Field

from frcnn_pipeline.config.section import Section


class ExportCheckParams(Section):
    max_images: int | None = Field(
        500, ge=1, description="images of the first evaluation split checked (the first by id); null: all"
    )
    max_ap_difference: float = Field(
        0.001,
        ge=0,
        description="COCO AP (0-1) by which each graph in ONNX Runtime may differ from PyTorch in the "
        "graph's mode, and from the PyTorch model at evaluate's settings (evaluate.inference); more fails "
        "the export (0.001 = 0.1 points)",
    )


class ExportParams(Section):
    opset: int = Field(
        17,
        ge=11,
        le=20,
        description="ONNX opset; RoIAlign with pooler_aligned needs >= 16; 17 is read by TensorRT 8.6+ and "
        "ORT, 20 is the TorchScript exporter's newest",
    )
    fixed_size: list[int] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="[H, W] of the fixed-shape graph's input canvas; null: the smallest that holds the check "
        "split's images after the test-time resize, rounded up to size_divisibility (padding the model never "
        "saw costs AP: 96 x 96 for the demo)",
    )
    score_threshold: float = Field(0.05, ge=0, le=1, description="baked into the graphs (score cut)")
    nms_threshold: float = Field(0.5, gt=0, le=1, description="baked into the graphs (per-class NMS IoU)")
    detections_per_image: int = Field(
        100, ge=1, description="baked into the graphs; the fixed-shape graph's output rows"
    )
    check: ExportCheckParams = ExportCheckParams()
