"""Export nodes: thin wrappers over `frcnn_pipeline.export` and `frcnn_pipeline.evaluation.export_check`."""

from __future__ import annotations

import logging
from typing import Any

import onnx
import pandas as pd

from frcnn_pipeline.config import EvaluateParams, ExportParams, ModelParams, RuntimeParams
from frcnn_pipeline.evaluation.export_check import check_export
from frcnn_pipeline.export import DYNAMIC, FIXED, ExportedDetector, export_detector
from frcnn_pipeline.modeling.saved import (
    SavedDetector,
    check_same_categories,
    inference_model_config,
    require_weights,
)
from frcnn_pipeline.runtime.world import WorldConfig

log = logging.getLogger(__name__)


def export_onnx(
    model: SavedDetector, images: pd.DataFrame, model_params: ModelParams, export: ExportParams
) -> ExportedDetector:
    """Both graphs of the model (built from its saved config) with their descriptions, not yet checked; the
    fixed-shape graph's canvas holds the split's ``images`` (unless ``export.fixed_size`` is set)."""
    require_weights(model)
    config, _ = inference_model_config(model, model_params)
    sizes = list(zip(images["height"].astype(int), images["width"].astype(int), strict=True))
    return export_detector(model, config, export, image_sizes=sizes)


def check_onnx_export(  # noqa: PLR0917 (a Kedro node: inputs by position)
    model: SavedDetector,
    exported: ExportedDetector,
    images: pd.DataFrame,
    ground_truth: dict[str, Any],
    categories: pd.DataFrame,
    model_params: ModelParams,
    export: ExportParams,
    evaluate: EvaluateParams,
    runtime: RuntimeParams,
    world: WorldConfig,
    *,
    split: str,
) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, Any], dict[str, Any]]:
    """ONNX Runtime against PyTorch (in each graph's mode, and at evaluate's settings) on the split's first
    ``export.check.max_images`` images (by id); the graphs and their descriptions are handed on to be saved
    only when both pass, with the check report.

    Raises:
        ExportCheckError: an AP difference above ``export.check.max_ap_difference`` (the report is saved).
    """
    check_same_categories(model, categories)
    config, _ = inference_model_config(model, model_params)
    options = export.check
    checked = images.sort_values("image_id").head(options.max_images or len(images))
    report = check_export(
        {DYNAMIC: exported.dynamic, FIXED: exported.fixed},
        model,
        config,
        {"path": checked["path"].tolist(), "image_id": checked["image_id"].astype(int).tolist()},
        ground_truth,
        world=world,
        runtime=runtime,
        options=options,
        evaluation=evaluate.inference,
        split=split,
    )
    return exported.dynamic, exported.fixed, exported.deployment, report
