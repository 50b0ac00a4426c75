"""Evaluate nodes: thin wrappers over `frcnn_pipeline.evaluation`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torchvision.io import ImageReadMode, decode_image, read_file

from frcnn_pipeline.evaluation import analysis_plots, plots
from frcnn_pipeline.evaluation.coco_eval import CocoBoxEvaluation, evaluate_boxes
from frcnn_pipeline.evaluation.confusion import confusion_matrix
from frcnn_pipeline.evaluation.drawing import Sample, count_errors, samples_figure
from frcnn_pipeline.evaluation.error_analysis import classify_errors, error_breakdown, worst_images
from frcnn_pipeline.evaluation.inference import (
    InferenceOptions,
    category_ids_by_label,
    coco_results,
    run_inference,
)
from frcnn_pipeline.evaluation.matching import match_detections
from frcnn_pipeline.evaluation.thresholds import score_threshold_advice

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
            "The model weights are empty (a trained_model written by a node other than node 0 of a "
            "multi-node run?). Evaluate the trained_model saved on node 0."
        )
    records = run_inference(
        weights,
        model,
        len(categories),
        val_images["path"].tolist(),
        runtime=runtime,
        options=InferenceOptions.from_params(evaluate.get("inference")),
    )
    if records is None:
        log.info("Node %d: inference done; node 0 gathers and evaluates", runtime.get("node_rank", 0))
        return []
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


def report_per_area_metrics(evaluation: CocoBoxEvaluation) -> pd.DataFrame:
    """AP and AR per COCO size range (all, small, medium, large) with the ground-truth count of each."""
    return evaluation.per_area_metrics()


def analyse_errors(
    val_ground_truth: dict[str, Any], val_detections: list[dict[str, Any]], settings: dict[str, Any]
) -> tuple[pd.DataFrame, Figure]:
    """TIDE's error breakdown (count, dAP at IoU .50 and over .50:.95 per error class) and its bar chart."""
    breakdown = error_breakdown(val_ground_truth, val_detections, float(settings["background_iou"]))
    summary, baseline = breakdown.summary(), breakdown.baseline()
    shown = summary.copy()
    for column in ("dAP50", "dAP", "AP50_fixed", "AP_fixed"):
        shown[column] = (shown[column] * 100).round(2)
    log.info(
        "Error breakdown (TIDE; AP50 %.2f, AP %.2f; dAP in AP points):\n%s",
        baseline["AP50"] * 100, baseline["AP"] * 100, shown.to_string(index=False),
    )  # fmt: skip
    return summary, analysis_plots.error_breakdown_figure(summary, baseline)


def tabulate_confusion(
    val_ground_truth: dict[str, Any], val_detections: list[dict[str, Any]], settings: dict[str, Any]
) -> tuple[pd.DataFrame, Figure]:
    """The confusion matrix over the classes and background (counts) and its row-normalised heatmap."""
    matrix = confusion_matrix(
        val_ground_truth,
        val_detections,
        score_threshold=float(settings["score_threshold"]),
        iou_threshold=float(settings["iou_threshold"]),
    )
    table = matrix.table()
    log.info("Confusion matrix (rows: ground truth, columns: predicted):\n%s", table.to_string())
    return table.reset_index(), analysis_plots.confusion_matrix_figure(matrix)


def advise_score_thresholds(
    val_ground_truth: dict[str, Any], val_detections: list[dict[str, Any]], settings: dict[str, Any]
) -> tuple[pd.DataFrame, Figure]:
    """Per category (and for all together) the F1-maximising score threshold with its precision and recall."""
    advice = score_threshold_advice(val_ground_truth, val_detections, float(settings["iou_threshold"]))
    table = advice.table()
    log.info("F1-maximising score thresholds:\n%s", table.round(3).to_string(index=False))
    return table, analysis_plots.score_threshold_figure(advice)


def draw_worst_images(
    val_images: pd.DataFrame,
    val_ground_truth: dict[str, Any],
    val_detections: list[dict[str, Any]],
    settings: dict[str, Any],
    error_analysis: dict[str, Any],
) -> Figure:
    """The val images with the most errors at a deployment score threshold, each error's class on its box."""
    min_score, iou = float(settings["score_threshold"]), float(settings["iou_threshold"])
    kept = [d for d in val_detections if d["score"] >= min_score]
    matching = match_detections(val_ground_truth, kept, [iou])
    labels = classify_errors(matching, float(error_analysis["background_iou"]))
    paths = val_images.set_index(val_images["image_id"].astype(int))["path"]
    shown = []
    for image_index in worst_images(labels, int(settings["count"])):
        path = str(paths[int(matching.image_ids[image_index])])
        image = decode_image(read_file(path), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
        shown.append(analysis_plots.error_image(labels, image_index, image))
    return analysis_plots.worst_images_figure(shown, int(settings["columns"]), min_score, iou)
