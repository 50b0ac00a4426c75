"""COCO box AP of the model being trained, from inside the training workers (`train.eval_period`).

The same code as the evaluate pipeline: a model built with the evaluation's inference options from the
training weights (`build_inference_model`), each rank predicting its share of the split's images in the
process group training already runs (`predict_images`, aspect-grouped like the pipeline's), rank 0 gathering
and scoring them with `evaluate_boxes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from torch import nn

from frcnn_pipeline.config import EvaluateParams, InferenceParams, ModelParams
from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes
from frcnn_pipeline.evaluation.inference import (
    build_inference_model,
    category_ids_by_label,
    coco_results,
    inference_order,
    predict_images,
)
from frcnn_pipeline.runtime.distributed import WorkerContext


@dataclass(frozen=True)
class DetectionEvaluator:
    """Picklable (sent to every spawned worker); called as `evaluator(model, context)` on every rank."""

    split: str  # named in errors
    image_paths: list[str]
    image_ids: list[int]
    order: list[int]  # `inference_order` of image_paths, computed once
    ground_truth: dict[str, Any]
    category_ids: list[int]  # original category id of model label k + 1
    model_cfg: ModelParams
    options: InferenceParams
    metric_backend: str

    @classmethod
    def for_split(  # noqa: PLR0917 (one value per input)
        cls,
        split: str,
        images: pd.DataFrame,
        ground_truth: dict[str, Any],
        categories: pd.DataFrame,
        model_cfg: ModelParams,
        settings: EvaluateParams,
    ) -> DetectionEvaluator:
        """From a split's images table and ground truth, and the `evaluate:` parameters."""
        paths = images["path"].astype(str).tolist()
        return cls(
            split=split,
            image_paths=paths,
            image_ids=images["image_id"].astype(int).tolist(),
            order=inference_order(paths, settings.inference),
            ground_truth=ground_truth,
            category_ids=category_ids_by_label(categories),
            model_cfg=model_cfg,
            options=settings.inference,
            metric_backend=settings.metric_backend,
        )

    def __call__(self, model: nn.Module, context: WorkerContext) -> dict[str, float] | None:
        """The 12 COCO box metrics on rank 0, None on the other ranks. `model` is left untouched."""
        inference_model = build_inference_model(
            model.state_dict(), self.model_cfg, len(self.category_ids), context.device, self.options
        )
        records = predict_images(
            inference_model, self.image_paths, self.order, self.options, context, show_progress=False
        )
        del inference_model
        if not context.is_main:
            return None
        unreadable = [self.image_paths[r["position"]] for r in records if r["error"]]
        if unreadable:
            raise RuntimeError(
                f"{len(unreadable)} {self.split} image(s) could not be read during training's evaluation, "
                f"e.g. {unreadable[:3]}. Fix the files or re-run the ingest pipeline "
                "(ingest.validation.image_checks: decode finds them), or set train.eval_period: 0."
            )
        detections = coco_results(records, self.image_ids, self.category_ids)
        return evaluate_boxes(self.ground_truth, detections, backend=self.metric_backend).metrics()
