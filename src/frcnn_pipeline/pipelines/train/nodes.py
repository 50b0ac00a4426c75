"""Train nodes: thin wrappers over `frcnn_pipeline.engine.trainer`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from frcnn_pipeline.config import EvaluateParams, ModelParams, RuntimeParams, TrainParams
from frcnn_pipeline.datasets import UNCHANGED
from frcnn_pipeline.engine.checkpoint import outputs_saved
from frcnn_pipeline.engine.resume import ResumeDecision
from frcnn_pipeline.engine.tracking import TrackingTarget
from frcnn_pipeline.engine.trainer import train_detector
from frcnn_pipeline.evaluation.evaluator import DetectionEvaluator
from frcnn_pipeline.modeling.saved import BEST_MODEL, TRAINED_MODEL, SavedDetector, category_mapping
from frcnn_pipeline.runtime.world import WorldConfig

log = logging.getLogger(__name__)

EVAL_CURVES = ("AP", "AP50", "AP75")


def train_model(  # noqa: PLR0917 (a Kedro node: inputs by position)
    train_images: pd.DataFrame,
    train_annotations: pd.DataFrame,
    categories: pd.DataFrame,
    initial_weights: SavedDetector,
    eval_images: pd.DataFrame,
    eval_ground_truth: dict[str, Any],
    model: ModelParams,
    train: TrainParams,
    runtime: RuntimeParams,
    evaluate: EvaluateParams,
    world: WorldConfig,
    resume: ResumeDecision,
    *,
    split: str,
) -> tuple[Any, Any, Any, Any, Any]:
    """Train the detector on the run's ``world`` from where its ``resume`` decision says, evaluating on
    `split` every `train.eval_period` iterations.

    Returns the trained model and the best evaluated one (each with its config, classes and provenance; the
    best holds no weights without evaluation), the metric table (one row per logging window, with the
    evaluations' AP columns), the run record and the training curves; all `UNCHANGED` when the checkpoint
    already holds every iteration and its outputs were saved (the run record's `confirm()`), so a rerun writes
    nothing. When an earlier save failed, the rerun returns them again from the checkpoint, without training.
    The MLflow run kedro-mlflow opened (if any) is handed to the workers, which log into it live.
    """
    # Long because its docstring says what each of the five outputs holds in each case.
    evaluator = None
    if train.eval_period:
        evaluator = DetectionEvaluator.for_split(
            split, eval_images, eval_ground_truth, categories, model, evaluate
        )
    result = train_detector(
        train_images,
        train_annotations,
        len(categories),
        model,
        train,
        runtime,
        world,
        initial_weights.state_dict,
        resume=resume,
        evaluator=evaluator,
        tracking=TrackingTarget.of_active_run(),
    )
    record = result["record"]
    if record["trained_iterations"] == 0:
        checkpoint = record["last_checkpoint"]
        if checkpoint is not None and outputs_saved(Path(checkpoint)):
            log.info(
                "Run %r already holds all %d iterations: its model, reports and MLflow run stay as they are "
                "(raise train.solver.max_iter to train further, or choose a new train.run_name)",
                record["run_name"],
                record["iterations"],
            )
            return (UNCHANGED,) * 5
        log.warning(
            "Run %r holds all %d iterations in %s but its outputs were not all saved (a save failed or was "
            "interrupted): saving them from that checkpoint, without training",
            record["run_name"],
            record["iterations"],
            checkpoint,
        )
    provenance = {
        **{key: record[key] for key in _PROVENANCE_KEYS},
        "initial_weights": {
            "sha256": initial_weights.origin.get("sha256"),
            "source": initial_weights.provenance.get("source"),
        },
    }
    saved = {"model_config": model, "categories": category_mapping(categories)}
    trained = SavedDetector(result["state_dict"], TRAINED_MODEL, **saved, provenance=provenance)
    best = record["best"]
    best_provenance = (
        {**provenance, "best": {key: best[key] for key in ("metric", "value", "iteration")}}
        if best
        else {"no_weights": _NO_BEST_MODEL}
    )
    best_model = SavedDetector(result["best_state_dict"], BEST_MODEL, **saved, provenance=best_provenance)
    metrics = metrics_table(result["metrics"], result["evaluations"])
    return trained, best_model, metrics, record, plot_training_curves(metrics)


_NO_BEST_MODEL = (
    "train.eval_period was 0: no evaluation during training, so no best model; evaluate trained_model"
)

# What the trained model's metadata says about the run that made it (the full record is training_run).
_PROVENANCE_KEYS = (
    "run_name",
    "iterations",
    "resumed_from_iteration",
    "train_images",
    "train_data_sha256",
    "resume_changes",
    "last_checkpoint",
    "tracking_run_id",
)


def metrics_table(rows: list[dict[str, Any]], evaluations: list[dict[str, Any]]) -> pd.DataFrame:
    """Metric rows joined with the evaluations on the iteration (AP columns empty between evaluations)."""
    metrics = pd.DataFrame(rows)
    if not evaluations:
        return metrics
    scores = pd.DataFrame(evaluations)
    if metrics.empty:
        return scores
    return metrics.merge(scores, on="iteration", how="outer").sort_values("iteration", ignore_index=True)


def plot_training_curves(training_metrics: pd.DataFrame) -> Figure:
    """Losses (log scale), learning rate, throughput and, with evaluation during training, val AP."""
    has_eval = "AP" in training_metrics.columns
    figure, axes = plt.subplots(
        1, 4 if has_eval else 3, figsize=(20 if has_eval else 15, 4), layout="constrained"
    )
    loss_axis, lr_axis, speed_axis = axes[:3]
    if training_metrics.empty:
        loss_axis.set_title("no metric rows (fewer iterations than train.log_period)")
        return figure
    iteration = training_metrics["iteration"]
    losses = [c for c in training_metrics.columns if c.startswith("loss") or c == "total_loss"]
    for column in losses:
        rows = training_metrics[column].notna()
        loss_axis.plot(
            iteration[rows],
            training_metrics.loc[rows, column],
            label=column,
            linewidth=2 if column == "total_loss" else 1,
        )
    loss_axis.set(title="Training losses (window medians)", xlabel="iteration", ylabel="loss", yscale="log")
    loss_axis.legend(fontsize="small")
    for axis, column, title, label in (
        (lr_axis, "lr", "Learning rate", "lr"),
        (speed_axis, "images_per_s", "Throughput", "images/s"),
    ):
        rows = training_metrics[column].notna()
        axis.plot(iteration[rows], training_metrics.loc[rows, column])
        axis.set(title=title, xlabel="iteration", ylabel=label)
    if has_eval:
        ap_axis = axes[3]
        for column in EVAL_CURVES:
            rows = training_metrics[column].notna()
            ap_axis.plot(iteration[rows], training_metrics.loc[rows, column] * 100, marker="o", label=column)
        ap_axis.set(title="Validation box AP", xlabel="iteration", ylabel="AP (%)")
        ap_axis.legend(fontsize="small")
    for axis in axes:
        axis.grid(alpha=0.3)
    return figure
