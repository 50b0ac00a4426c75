"""Evaluate nodes: thin wrappers over `frcnn_pipeline.evaluation`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
import pandas as pd
import torch
from matplotlib.figure import Figure

from frcnn_pipeline.config import EvaluateParams, ModelParams, RuntimeParams
from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.data.fingerprint import ground_truth_fingerprint
from frcnn_pipeline.data.images import read_rgb
from frcnn_pipeline.evaluation import analysis_plots, plots
from frcnn_pipeline.evaluation.coco_eval import STAT_NAMES, CocoBoxEvaluation, evaluate_boxes
from frcnn_pipeline.evaluation.confusion import confusion_matrix
from frcnn_pipeline.evaluation.drawing import Sample, count_errors, samples_figure
from frcnn_pipeline.evaluation.error_analysis import classify_errors, error_breakdown, worst_images
from frcnn_pipeline.evaluation.inference import (
    category_ids_by_label,
    coco_results,
    describe_arithmetic,
    run_model_inference,
)
from frcnn_pipeline.evaluation.matching import match_detections
from frcnn_pipeline.evaluation.thresholds import score_threshold_advice
from frcnn_pipeline.modeling.saved import (
    SavedDetector,
    check_same_categories,
    inference_model_config,
    require_weights,
)
from frcnn_pipeline.runtime.world import WorldConfig

log = logging.getLogger(__name__)


def predict_split(  # noqa: PLR0917 (a Kedro node: inputs by position)
    model: SavedDetector,
    images: pd.DataFrame,
    categories: pd.DataFrame,
    model_params: ModelParams,
    evaluate: EvaluateParams,
    runtime: RuntimeParams,
    world: WorldConfig,
    onnx_model: onnx.ModelProto | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Detections on every image of the split in COCO results format (original image and category ids,
    xywh), and what was evaluated: the model's version, sha256, provenance and where its config came from,
    and the inference backend (``onnx_model``: the graph exported from ``model``, for onnxruntime). The
    inference runs on the run's ``world``."""
    require_weights(model)
    config, config_from = inference_model_config(model, model_params)
    check_same_categories(model, categories)
    options = evaluate.inference
    records = run_model_inference(
        model,
        config,
        len(categories),
        images["path"].tolist(),
        world=world,
        runtime=runtime,
        options=options,
        graph=onnx_model,
    )
    evaluated = model.describe(config_from)
    evaluated["inference_backend"] = runtime.inference_backend
    evaluated["arithmetic"] = describe_arithmetic(runtime, options)
    log.info("Evaluated in %s", evaluated["arithmetic"], extra=DETAIL)
    unreadable = [images["path"].iloc[r["position"]] for r in records if r["error"]]
    if unreadable:
        raise RuntimeError(
            f"{len(unreadable)} evaluation image(s) could not be read, e.g. {unreadable[:3]}: evaluating "
            "without them would bias the metrics. Fix the files or re-run the ingest pipeline "
            "(ingest.validation.image_checks: decode finds them)."
        )
    detections = coco_results(records, images["image_id"].tolist(), category_ids_by_label(categories))
    log.info("%d detections on %d images", len(detections), len(images), extra=DETAIL)
    return detections, evaluated


def compute_coco_metrics(
    ground_truth: dict[str, Any], detections: list[dict[str, Any]], evaluate: EvaluateParams
) -> CocoBoxEvaluation:
    """COCO box evaluation, identical to pycocotools' COCOeval; the table goes to the log."""
    evaluation = evaluate_boxes(ground_truth, detections, backend=evaluate.metric_backend)
    metrics = evaluation.metrics()
    header = " | ".join(f"{name:>6s}" for name in metrics)
    values = " | ".join(f"{value * 100:6.2f}" if value >= 0 else f"{'n/a':>6s}" for value in metrics.values())
    log.info("COCO box metrics (%%):\n%s\n%s", header, values)
    log.info("pycocotools' summary:\n%s", evaluation.summary, extra=DETAIL)
    return evaluation


def report_coco_metrics(
    evaluation: CocoBoxEvaluation,
    evaluated_model: dict[str, Any],
    ground_truth: dict[str, Any],
    evaluate: EvaluateParams,
    *,
    split: str,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The metrics record and the per-category AP table (logged).

    The record holds the 12 COCO metrics under ``metrics`` and names what they measured: the ``model``
    (kind, version, sha256, provenance), the ``ground_truth`` (split, sha256, counts, and its ``protocol``:
    as published or cleaned, images and boxes scored against declared, every deviation) and the
    ``inference`` settings.
    """
    table = evaluation.per_category_ap()
    shown = table.copy()
    for column in STAT_NAMES:  # every AP and AR in percent, as the box metrics' table
        shown[column] = (shown[column] * 100).round(1)
    log.info("AP and AR per category (%%):\n%s", shown.to_string(index=False), extra=DETAIL)
    protocol = ground_truth.get("info", {}).get("protocol") or {}
    for deviation in protocol.get("deviations", []):
        log.warning("%s AP deviates from the COCO protocol: %s", split, deviation)
    record = {
        "metrics": evaluation.metrics(),
        "model": evaluated_model,
        "ground_truth": {
            "split": split,
            **ground_truth_fingerprint(ground_truth),
            "protocol": ground_truth.get("info", {}).get("protocol"),
        },
        # The record written to disk: the settings as plain values.
        "inference": {**evaluate.inference.model_dump(), "metric_backend": evaluate.metric_backend},
    }
    return record, table


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
    images: pd.DataFrame,
    ground_truth: dict[str, Any],
    detections: list[dict[str, Any]],
    evaluate: EvaluateParams,
) -> Figure:
    """The images where the model errs most (missed + false boxes at IoU 0.5), boxes drawn on them."""
    settings = evaluate.samples
    count, min_score = settings.count, settings.score_threshold
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    truth_by_image = _boxes_by_image([a for a in ground_truth["annotations"] if not a.get("iscrowd", 0)])
    detections_by_image = _boxes_by_image([d for d in detections if d["score"] >= min_score])
    tallies = []
    for image_id in images["image_id"].astype(int):
        gt, dt = truth_by_image.get(image_id, []), detections_by_image.get(image_id, [])
        missed, false = count_errors(
            _xyxy(gt),
            torch.tensor([g["category_id"] for g in gt]),
            _xyxy(dt),
            torch.tensor([d["category_id"] for d in dt]),
        )
        tallies.append((-(missed + false), image_id, missed, false))
    samples = []
    paths = images.set_index(images["image_id"].astype(int))["path"]
    for _, image_id, missed, false in sorted(tallies)[:count]:
        gt, dt = truth_by_image.get(image_id, []), detections_by_image.get(image_id, [])
        image = read_rgb(str(paths[image_id]))
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
    return samples_figure(samples, columns=settings.columns)


def report_per_area_metrics(evaluation: CocoBoxEvaluation) -> pd.DataFrame:
    """AP and AR per COCO size range (all, small, medium, large) with the ground-truth count of each."""
    return evaluation.per_area_metrics()


def analyse_errors(
    ground_truth: dict[str, Any], detections: list[dict[str, Any]], evaluate: EvaluateParams
) -> tuple[pd.DataFrame, Figure]:
    """TIDE's error breakdown (count, dAP at IoU .50 and over .50:.95 per error class) and its bar chart."""
    settings = evaluate.error_analysis
    breakdown = error_breakdown(ground_truth, detections, settings.background_iou)
    summary, baseline = breakdown.summary(), breakdown.baseline()
    shown = summary.copy()
    for column in ("dAP50", "dAP", "AP50_fixed", "AP_fixed"):
        shown[column] = (shown[column] * 100).round(2)
    log.info(
        "Error breakdown (TIDE; AP50 %.2f, AP %.2f; dAP in AP points):\n%s",
        baseline["AP50"] * 100, baseline["AP"] * 100, shown.to_string(index=False), extra=DETAIL,
    )  # fmt: skip
    return summary, analysis_plots.error_breakdown_figure(summary, baseline)


def tabulate_confusion(
    ground_truth: dict[str, Any], detections: list[dict[str, Any]], evaluate: EvaluateParams
) -> tuple[pd.DataFrame, Figure]:
    """The confusion matrix over the classes and background (counts) and its row-normalised heatmap."""
    settings = evaluate.confusion_matrix
    matrix = confusion_matrix(
        ground_truth,
        detections,
        score_threshold=settings.score_threshold,
        iou_threshold=settings.iou_threshold,
    )
    table = matrix.table()
    log.info(
        "Confusion matrix (rows: ground truth, columns: predicted):\n%s", table.to_string(), extra=DETAIL
    )
    return table.reset_index(), analysis_plots.confusion_matrix_figure(matrix)


def advise_score_thresholds(
    ground_truth: dict[str, Any], detections: list[dict[str, Any]], evaluate: EvaluateParams
) -> tuple[pd.DataFrame, Figure]:
    """Per category (and for all together) the F1-maximising score threshold with its precision and recall."""
    settings = evaluate.score_thresholds
    advice = score_threshold_advice(ground_truth, detections, settings.iou_threshold)
    table = advice.table()
    log.info("F1-maximising score thresholds:\n%s", table.round(3).to_string(index=False), extra=DETAIL)
    return table, analysis_plots.score_threshold_figure(advice)


def draw_worst_images(
    images: pd.DataFrame,
    ground_truth: dict[str, Any],
    detections: list[dict[str, Any]],
    evaluate: EvaluateParams,
) -> Figure:
    """The images with the most errors at a deployment score threshold, each error's class on its box."""
    settings = evaluate.worst_images
    min_score, iou = settings.score_threshold, settings.iou_threshold
    kept = [d for d in detections if d["score"] >= min_score]
    matching = match_detections(ground_truth, kept, [iou])
    labels = classify_errors(matching, evaluate.error_analysis.background_iou)
    paths = images.set_index(images["image_id"].astype(int))["path"]
    shown = []
    for image_index in worst_images(labels, settings.count):
        image = read_rgb(str(paths[int(matching.image_ids[image_index])])).permute(1, 2, 0).numpy()
        shown.append(analysis_plots.error_image(labels, image_index, image))
    return analysis_plots.worst_images_figure(shown, settings.columns, min_score, iou)
