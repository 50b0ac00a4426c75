"""Train nodes: thin wrappers over `frcnn_pipeline.engine.trainer`."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from frcnn_pipeline.engine.trainer import train_detector
from frcnn_pipeline.modeling import resolve_model_config
from frcnn_pipeline.modeling.saved import TRAINED_MODEL, SavedDetector, category_mapping


def train_model(  # noqa: PLR0917 (a Kedro node: inputs by position)
    train_images: pd.DataFrame,
    train_annotations: pd.DataFrame,
    categories: pd.DataFrame,
    initial_weights: SavedDetector,
    model: dict[str, Any],
    train: dict[str, Any],
    runtime: dict[str, Any],
) -> tuple[SavedDetector, pd.DataFrame, dict[str, Any]]:
    """Train the detector; return the trained model (with its config, classes and provenance), the metric
    rows and the run record."""
    result = train_detector(
        train_images, train_annotations, len(categories), model, train, runtime, initial_weights.state_dict
    )
    record = result["record"]
    trained = SavedDetector(
        result["state_dict"],
        TRAINED_MODEL,
        model_config=resolve_model_config(model),
        categories=category_mapping(categories),
        provenance={
            **{key: record[key] for key in _PROVENANCE_KEYS},
            "initial_weights": {
                "sha256": initial_weights.origin.get("sha256"),
                "source": initial_weights.provenance.get("source"),
            },
        },
    )
    return trained, pd.DataFrame(result["metrics"]), record


# What the trained model's metadata says about the run that made it (the full record is training_run).
_PROVENANCE_KEYS = (
    "run_name",
    "iterations",
    "resumed_from_iteration",
    "train_images",
    "train_data_sha256",
    "resume_changes",
    "last_checkpoint",
)


def plot_training_curves(training_metrics: pd.DataFrame) -> Figure:
    """Losses (log scale), learning rate and throughput against the iteration."""
    figure, (loss_axis, lr_axis, speed_axis) = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    iteration = training_metrics["iteration"]
    for column in [c for c in training_metrics.columns if c.startswith("loss") or c == "total_loss"]:
        loss_axis.plot(
            iteration, training_metrics[column], label=column, linewidth=2 if column == "total_loss" else 1
        )
    loss_axis.set(title="Training losses", xlabel="iteration", ylabel="loss", yscale="log")
    loss_axis.legend(fontsize="small")
    lr_axis.plot(iteration, training_metrics["lr"])
    lr_axis.set(title="Learning rate", xlabel="iteration", ylabel="lr")
    speed_axis.plot(iteration, training_metrics["images_per_s"])
    speed_axis.set(title="Throughput", xlabel="iteration", ylabel="images/s")
    for axis in (loss_axis, lr_axis, speed_axis):
        axis.grid(alpha=0.3)
    return figure
