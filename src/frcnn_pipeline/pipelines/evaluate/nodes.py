"""Evaluate nodes: thin wrappers over `frcnn_pipeline.evaluation`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torchvision.io import ImageReadMode, decode_image, read_file

from frcnn_pipeline.evaluation import plots
from frcnn_pipeline.evaluation.coco_eval import CocoBoxEvaluation, evaluate_boxes
from frcnn_pipeline.evaluation.drawing import Sample, count_errors, samples_figure
from frcnn_pipeline.evaluation.inference import (
    InferenceOptions,
    category_ids_by_label,
    coco_results,
    run_inference,
)

log = logging.getLogger(__name__)


def predict_val_split(  # noqa: PLR0917 (a Kedro node: inputs by position)
    weights: dict[str, torch.Tensor],
    val_images: pd.DataFrame,
    categories: pd.DataFrame,
    model: dict[str, Any],
    evaluate: dict[str, Any],
    runtime: dict[str, Any],
) -> list[dict[str, Any]]:
    """Detections on every val image in COCO results format (original image and category ids, xywh)."""
    if not weights:
        raise ValueError(
            "The model weights are empty: evaluate a trained_model or initial_weights holding a state dict."
        )
    records = run_inference(
        weights,
        model,
        len(categories),
        val_images["path"].tolist(),
        runtime=runtime,
        options=InferenceOptions.from_params(evaluate.get("inference")),
    )
    unreadable = [val_images["path"].iloc[r["position"]] for r in records if r["error"]]
    if unreadable:
        raise RuntimeError(
            f"{len(unreadable)} val image(s) could not be read, e.g. {unreadable[:3]}: evaluating without "
            "them would bias the metrics. Fix the files or re-run the ingest pipeline "
            "(ingest.validation.image_checks: decode finds them)."
        )
    detections = coco_results(records, val_images["image_id"].tolist(), category_ids_by_label(categories))
    log.info("%d detections on %d val images", len(detections), len(val_images))
    return detections


def compute_coco_metrics(
    val_ground_truth: dict[str, Any], val_detections: list[dict[str, Any]], evaluate: dict[str, Any]
) -> CocoBoxEvaluation:
    """COCO box evaluation, identical to pycocotools' COCOeval; the table goes to the log."""
    evaluation = evaluate_boxes(
        val_ground_truth, val_detections, backend=evaluate.get("metric_backend", "numpy")
    )
    metrics = evaluation.metrics()
    header = " | ".join(f"{name:>6s}" for name in metrics)
    values = " | ".join(f"{value * 100:6.2f}" if value >= 0 else f"{'n/a':>6s}" for value in metrics.values())
    log.info("COCO box metrics (%%):\n%s\n%s\npycocotools' summary:\n%s", header, values, evaluation.summary)
    return evaluation


def report_coco_metrics(evaluation: CocoBoxEvaluation) -> tuple[dict[str, float], pd.DataFrame]:
    """The 12 metrics as a flat ``{name: value}`` and the per-category AP table (both logged)."""
    table = evaluation.per_category_ap()
    shown = table.copy()
    for column in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        shown[column] = (shown[column] * 100).round(1)
    log.info("AP per category (%%):\n%s", shown.to_string(index=False))
    return evaluation.metrics(), table


def plot_precision_recall(evaluation: CocoBoxEvaluation) -> Figure:
    return plots.precision_recall_figure(evaluation)


def plot_per_category_precision_recall(evaluation: CocoBoxEvaluation) -> Figure:
    return plots.per_category_precision_recall_figure(evaluation)


def plot_ap_per_category(per_category_ap: pd.DataFrame) -> Figure:
    return plots.ap_per_category_figure(per_category_ap)


def _boxes_by_image(records: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(int(record["image_id"]), []).append(record)
    return grouped


def _xyxy(records: list[dict[str, Any]]) -> torch.Tensor:
    boxes = torch.tensor([r["bbox"] for r in records], dtype=torch.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def draw_detection_samples(
    val_images: pd.DataFrame,
    val_ground_truth: dict[str, Any],
    val_detections: list[dict[str, Any]],
    evaluate: dict[str, Any],
) -> Figure:
    """The val images where the model errs most (missed + false boxes at IoU 0.5), boxes drawn on them."""
    settings = evaluate.get("samples", {})
    count, min_score = int(settings.get("count", 6)), float(settings.get("score_threshold", 0.5))
    names = {c["id"]: c["name"] for c in val_ground_truth["categories"]}
    ground_truth = _boxes_by_image([a for a in val_ground_truth["annotations"] if not a.get("iscrowd", 0)])
    detections = _boxes_by_image([d for d in val_detections if d["score"] >= min_score])
    tallies = []
    for image_id in val_images["image_id"].astype(int):
        gt, dt = ground_truth.get(image_id, []), detections.get(image_id, [])
        missed, false = count_errors(
            _xyxy(gt),
            torch.tensor([g["category_id"] for g in gt]),
            _xyxy(dt),
            torch.tensor([d["category_id"] for d in dt]),
        )
        tallies.append((-(missed + false), image_id, missed, false))
    samples = []
    paths = val_images.set_index(val_images["image_id"].astype(int))["path"]
    for _, image_id, missed, false in sorted(tallies)[:count]:
        gt, dt = ground_truth.get(image_id, []), detections.get(image_id, [])
        image = decode_image(read_file(str(paths[image_id])), mode=ImageReadMode.RGB)
        samples.append(
            Sample(
                title=f"image {image_id}: {missed} missed, {false} false (score >= {min_score:g})",
                image=image.permute(1, 2, 0).numpy(),
                gt_boxes=_xyxy(gt).numpy(),
                gt_names=[names.get(g["category_id"], str(g["category_id"])) for g in gt],
                pred_boxes=_xyxy(dt).numpy(),
                pred_names=[names.get(d["category_id"], str(d["category_id"])) for d in dt],
                pred_scores=np.array([d["score"] for d in dt]),
            )
        )
    return samples_figure(samples, columns=int(settings.get("columns", 3)))
