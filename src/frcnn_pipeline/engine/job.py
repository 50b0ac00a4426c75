"""What a training run is given: the `TrainJob` each worker receives, and the callables it may carry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from frcnn_pipeline.config import ModelParams, RuntimeParams, TrainParams
from frcnn_pipeline.engine.resume import ResumeDecision
from frcnn_pipeline.engine.tracking import TrackingTarget
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.runtime.distributed import WorkerContext

# Builds the model from the `model:` section and the number of classes.
ModelBuilder = Callable[[ModelParams, int], nn.Module]

# An evaluator runs inside the training workers on the unwrapped model; rank 0 gets the metrics, others None.
Evaluator = Callable[[nn.Module, WorkerContext], "dict[str, float] | None"]


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs (pickled once per spawned worker)."""

    images: pd.DataFrame
    annotations: pd.DataFrame
    num_classes: int
    model_cfg: ModelParams
    train: TrainParams
    runtime: RuntimeParams
    # Where the run starts (a checkpoint, or afresh), decided once before it (engine/resume.py).
    resume: ResumeDecision
    initial_weights: Mapping[str, torch.Tensor] = field(default_factory=dict)
    build: ModelBuilder = build_model
    # `train.eval_period`: called on every rank inside the process group (evaluation/evaluator.py).
    evaluator: Evaluator | None = None
    # The MLflow run rank 0 logs into; None: tracking is off.
    tracking: TrackingTarget | None = None
