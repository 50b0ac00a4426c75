"""Nodes of the weights pipeline; the work is done by frcnn_pipeline.weights and frcnn_pipeline.modeling."""

import logging

import pandas as pd
import torch

from frcnn_pipeline.config import ModelParams, WeightsParams
from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.saved import INITIAL_WEIGHTS, SavedDetector, category_mapping
from frcnn_pipeline.weights import convert_state_dict, fetch_weights, load_checkpoint, unwrap_checkpoint
from frcnn_pipeline.weights.checkpoint import convention_warnings
from frcnn_pipeline.weights.coco_rows import (
    LABEL_ROWS_KEY,
    coco_label_rows,
    is_coco_predictor,
    label_rows_report_row,
)
from frcnn_pipeline.weights.convert import REPORT_COLUMNS

logger = logging.getLogger(__name__)

RANDOM_SOURCES = {"none", "random", ""}


def fetch_pretrained_weights(params: WeightsParams) -> dict[str, str | None]:
    """Resolve `weights.source` to a local file (downloading into `weights.cache_dir` once).

    Returns `{"source": ..., "path": None}` for random initialisation (`source: none`).
    """
    source = params.source.strip()
    if source.lower() in RANDOM_SOURCES:
        return {"source": "none", "path": None}
    path = fetch_weights(
        source,
        params.cache_dir,
        sha256=params.sha256,
        retries=params.retries,
        backoff_s=params.backoff_s,
        timeout_s=params.timeout_s,
    )
    return {"source": source, "path": str(path)}


def convert_pretrained_weights(
    pretrained: dict[str, str | None],
    categories: pd.DataFrame,
    model: ModelParams,
    params: WeightsParams,
) -> tuple[SavedDetector, pd.DataFrame]:
    """The model's complete initial state dict (with the class mapping and its source), and a report with
    one row per key.

    The model is built with `weights.seed`, so the parts a checkpoint does not cover (e.g. a new
    box predictor) and `source: none` are initialised deterministically.
    """
    num_classes = len(categories)
    torch.manual_seed(params.seed)
    model_state = build_model(model, num_classes).state_dict()
    if pretrained["path"] is None:
        note = f"weights.source none, seed {params.seed}"
        rows = [
            {"status": "random_init", "source_key": "", "target_key": key, "source_shape": "",
             "target_shape": str(tuple(value.shape)), "note": note}
            for key, value in model_state.items() if key != LABEL_ROWS_KEY
        ]  # fmt: skip
        state = dict(model_state)
        if LABEL_ROWS_KEY in state:
            mapping = category_mapping(categories)
            ids, names = [entry["category_id"] for entry in mapping], [entry["name"] for entry in mapping]
            state[LABEL_ROWS_KEY] = coco_label_rows(ids, names, "weights.source none")
            rows.append(label_rows_report_row(state[LABEL_ROWS_KEY]))
        report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
        logger.info(
            "Random initialisation (seed %d): %d tensors", params.seed, len(model_state), extra=DETAIL
        )
        return _initial_weights(state, categories, pretrained, params.seed), report
    checkpoint = load_checkpoint(pretrained["path"])
    state, report = convert_state_dict(
        checkpoint,
        model_state,
        source_name=pretrained["path"],
        bn_fold=params.bn_fold,
        categories=[(entry["category_id"], entry["name"]) for entry in category_mapping(categories)],
        frozen_bn_eps=model.backbone.frozen_bn_eps,
    )
    source_state, source_format = unwrap_checkpoint(checkpoint, pretrained["path"])
    warnings = convention_warnings(source_format, model)
    if is_coco_predictor(source_state) and model.backbone.frozen_bn_eps != 0:
        warnings.append(
            "torchvision's COCO detector weights (91 classes) run with frozen BN eps 0: set "
            "model.backbone.frozen_bn_eps: 0 (the torchvision_coco recipe does)"
        )
    if is_coco_predictor(source_state) and model.roi_heads.predictor_rows == "labels":
        warnings.append(
            "torchvision's COCO detector weights keep only the rows of the ingested categories, so scores "
            "differ from torchvision's by the softmax's sum (~4e-7 relative): set "
            "model.roi_heads.predictor_rows: coco_category_ids for its scores bit for bit (the "
            "torchvision_coco recipe does)"
        )
    for warning in warnings:
        logger.warning("%s: %s", pretrained["source"], warning)
    return _initial_weights(state, categories, pretrained, params.seed), report


def _initial_weights(
    state: dict[str, torch.Tensor],
    categories: pd.DataFrame,
    pretrained: dict[str, str | None],
    seed: int,
) -> SavedDetector:
    # No model config: the weights were never trained with one (evaluate builds them from params:model).
    return SavedDetector(
        state,
        INITIAL_WEIGHTS,
        categories=category_mapping(categories),
        provenance={"source": pretrained["source"], "file": pretrained["path"], "seed": seed},
    )
