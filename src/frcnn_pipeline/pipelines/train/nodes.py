"""Train nodes: thin wrappers over `frcnn_pipeline.engine.trainer`."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.figure import Figure

from frcnn_pipeline.engine.trainer import train_detector


def train_model(  # noqa: PLR0917 (a Kedro node: inputs by position)
    train_images: pd.DataFrame,
    train_annotations: pd.DataFrame,
    categories: pd.DataFrame,
    initial_weights: dict[str, torch.Tensor],
    model: dict[str, Any],
    train: dict[str, Any],
    runtime: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], pd.DataFrame, dict[str, Any]]:
    """Train the detector; return the final weights, the metric rows and the run record."""
    result = train_detector(
        train_images, train_annotations, len(categories), model, train, runtime, initial_weights
    )
    return result["state_dict"], pd.DataFrame(result["metrics"]), result["record"]


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
