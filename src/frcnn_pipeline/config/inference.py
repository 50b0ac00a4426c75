"""``evaluate:`` and ``predict:``, how the detector runs on images (frcnn_pipeline.evaluation).

Defaults: the COCO evaluation protocol (score 0.05, NMS 0.5, 100 detections per image). Devices and workers
come from ``runtime:``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from frcnn_pipeline.config.model import ModelParams
from frcnn_pipeline.config.section import Section


class InferenceParams(Section):
    batch_size: int = Field(
        1,
        ge=1,
        description="images per worker and forward pass; 1 as detectron2 evaluates (a batch pads its images "
        "to a common size, which moves features near the borders and hence the detections)",
    )
    score_threshold: float = Field(
        0.05, ge=0, le=1, description="overrides model.roi_heads.score_thresh_test"
    )
    nms_threshold: float = Field(0.5, gt=0, le=1, description="overrides model.roi_heads.nms_thresh_test")
    detections_per_image: int = Field(100, ge=1, description="overrides model.roi_heads.detections_per_image")
    # The speed-ups below change the arithmetic (float rounding, or bf16/fp16), so they are opt-in: by default
    # evaluate and predict run the trained model's own arithmetic, as detectron2 evaluates.
    amp: bool = Field(False, description="opt-in: fp16 backbone on NPU/GPU (the heads stay fp32)")
    cpu_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "float32",
        description="backbone precision on CPU; opt-in auto: bfloat16 where the CPU has AVX512-BF16 or AMX, "
        "else float32 (the heads stay float32)",
    )
    channels_last: bool = Field(
        False, description="opt-in NHWC: faster on CPU (benchmarks/bench_inference.py), other rounding"
    )
    fold_batch_norm: bool = Field(
        False, description="opt-in: fold the backbone's norms into its convs (other rounding)"
    )
    group_by_aspect: bool = Field(True, description="batch landscape and portrait images apart: less padding")
    num_workers: int = Field(0, ge=0, description="image decoding processes per worker")

    def applied_to(self, model: ModelParams) -> ModelParams:
        """The ``model:`` section with these test-time settings."""
        return model.replaced(
            roi_heads={
                "score_thresh_test": self.score_threshold,
                "nms_thresh_test": self.nms_threshold,
                "detections_per_image": self.detections_per_image,
            }
        )


class SamplesParams(Section):
    count: int = Field(6, ge=1, description="val images with the most errors drawn in detection_samples")
    columns: int = Field(3, ge=1, description="of the figure")
    score_threshold: float = Field(
        0.5, ge=0, le=1, description="predictions drawn and counted from this score"
    )


class ErrorAnalysisParams(Section):
    background_iou: float = Field(
        0.1, gt=0, lt=0.5, description="TIDE: a false positive below this IoU with every object is background"
    )


class ConfusionMatrixParams(Section):
    score_threshold: float = Field(0.5, ge=0, le=1, description="detections counted from this score")
    iou_threshold: float = Field(0.5, gt=0, le=1, description="a detection and an object match from this IoU")


class ScoreThresholdsParams(Section):
    iou_threshold: float = Field(0.5, gt=0, le=1, description="a true positive from this IoU")


class WorstImagesParams(Section):
    count: int = Field(6, ge=1, description="images with the most errors drawn")
    columns: int = Field(3, ge=1, description="of the figure")
    score_threshold: float = Field(
        0.5, ge=0, le=1, description="detections drawn and counted from this score"
    )
    iou_threshold: float = Field(0.5, gt=0, le=1, description="a true positive from this IoU")


class EvaluateParams(Section):
    metric_backend: Literal["numpy", "pycocotools"] = Field(
        "numpy", description="numpy (pycocotools-identical, faster) or pycocotools' COCOeval itself"
    )
    inference: InferenceParams = InferenceParams()
    samples: SamplesParams = SamplesParams()
    error_analysis: ErrorAnalysisParams = ErrorAnalysisParams()
    confusion_matrix: ConfusionMatrixParams = ConfusionMatrixParams()
    score_thresholds: ScoreThresholdsParams = ScoreThresholdsParams()
    worst_images: WorstImagesParams = WorstImagesParams()


class PredictParams(Section):
    images: str | list[str] | None = Field(
        "data/01_raw/demo/val2017", description="a folder (searched recursively) or a list of image paths"
    )
    score_threshold: float = Field(0.5, ge=0, le=1, description="boxes kept in the results and drawn")
    inference: InferenceParams = InferenceParams()
