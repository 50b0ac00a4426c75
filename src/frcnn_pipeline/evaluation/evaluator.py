"""COCO box AP of the model being trained, from inside the training workers (`train.eval_period`).

The same code as the evaluate pipeline: a model built with the evaluation's inference options from the
training weights (`build_inference_model`), each rank predicting its share of the val images in the process
group training already runs (`predict_images`), rank 0 gathering and scoring them with `evaluate_boxes`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from torch import nn

from frcnn_pipeline.engine.distributed import WorkerContext
from frcnn_pipeline.evaluation.coco_eval import evaluate_boxes
from frcnn_pipeline.evaluation.inference import (
    InferenceOptions,
    build_inference_model,
    category_ids_by_label,
    coco_results,
    predict_images,
)


@dataclass(frozen=True)
class DetectionEvaluator:
    """Picklable (sent to every spawned worker); called as `evaluator(model, context)` on every rank."""

    image_paths: list[str]
    image_ids: list[int]
    ground_truth: dict[str, Any]
    category_ids: list[int]  # original category id of model label k + 1
    model_cfg: dict[str, Any]
    options: dict[str, Any]  # InferenceOptions as a dict
    metric_backend: str = "numpy"

    @classmethod
    def for_split(
        cls,
        images: pd.DataFrame,
        ground_truth: dict[str, Any],
        categories: pd.DataFrame,
        model_cfg: dict[str, Any],
        evaluate: dict[str, Any],
    ) -> DetectionEvaluator:
        """From a split's images table and ground truth, and the `evaluate:` parameters."""
        return cls(
            image_paths=images["path"].astype(str).tolist(),
            image_ids=images["image_id"].astype(int).tolist(),
            ground_truth=ground_truth,
            category_ids=category_ids_by_label(categories),
            model_cfg=model_cfg,
            options=asdict(InferenceOptions.from_params(evaluate.get("inference"))),
            metric_backend=evaluate.get("metric_backend", "numpy"),
        )

    def __call__(self, model: nn.Module, context: WorkerContext) -> dict[str, float] | None:
        """The 12 COCO box metrics on rank 0, None on the other ranks. `model` is left untouched."""
        options = InferenceOptions(**self.options)
        inference_model = build_inference_model(
            model.state_dict(), self.model_cfg, len(self.category_ids), context.device, options
        )
        records = predict_images(inference_model, self.image_paths, options, context, show_progress=False)
        del inference_model
        if not context.is_main:
            return None
        unreadable = [self.image_paths[r["position"]] for r in records if r["error"]]
        if unreadable:
            raise RuntimeError(
                f"{len(unreadable)} val image(s) could not be read during training's evaluation, e.g. "
                f"{unreadable[:3]}. Fix the files or re-run the ingest pipeline "
                "(ingest.validation.image_checks: decode finds them), or set train.eval_period: 0."
            )
        detections = coco_results(records, self.image_ids, self.category_ids)
        return evaluate_boxes(self.ground_truth, detections, backend=self.metric_backend).metrics()
