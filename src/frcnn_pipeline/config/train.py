"""``train:``, the training loop and its schedule (frcnn_pipeline.engine).

Defaults: the model-zoo card's recipe: SGD momentum 0.9, LR 0.02 at batch 16 scaled linearly, weight decay
1e-4, 12 epochs, ×0.1 at epochs 8 and 11, 1000-iteration warm-up from 0.001.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from frcnn_pipeline.config.section import Section


class SolverParams(Section):
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (the card) or adamw")
    base_lr: float = Field(0.02, gt=0, description="LR at reference_batch_size")
    reference_batch_size: int | None = Field(
        16, ge=1, description="lr = base_lr × total batch / this (logged); null: base_lr as given"
    )
    momentum: float = Field(0.9, ge=0, description="sgd")
    nesterov: bool = Field(False, description="sgd")
    betas: list[float] = Field([0.9, 0.999], min_length=2, max_length=2, description="adamw")
    weight_decay: float = Field(1.0e-4, ge=0, description="on weights (norm layers: weight_decay_norm)")
    weight_decay_norm: float = Field(0.0, ge=0, description="on norm layers")
    weight_decay_bias: float | None = Field(None, ge=0, description="on biases; null: as weight_decay")
    clip_grad_norm: float | None = Field(None, gt=0, description="clip the global gradient norm to this")
    max_iter: int | None = Field(None, ge=1, description="iterations, when epochs is null")
    epochs: int | None = Field(12, ge=1, description="one epoch = train images // total batch iterations")
    warmup_iters: int = Field(1000, ge=0, description="linear warm-up from warmup_factor × lr")
    warmup_factor: float = Field(0.001, gt=0, le=1, description="the warm-up starts at this × lr")
    gamma: float = Field(0.1, gt=0, description="LR × gamma at each milestone")
    steps: list[int] = Field([], description="milestones in iterations (when step_epochs is null)")
    step_epochs: list[int] | None = Field([8, 11], description="milestones in epochs")

    @model_validator(mode="after")
    def _one_schedule(self) -> SolverParams:
        if self.max_iter is None and self.epochs is None:
            raise ValueError("set max_iter or epochs (epochs wins when both are set)")
        return self


class CheckpointParams(Section):
    dir: str = Field("data/06_models/checkpoints", description="checkpoints go to <dir>/<run_name>")
    period: int = Field(
        5000, ge=1, description="iterations between checkpoints (a final one is always written)"
    )
    keep_last: int = Field(3, ge=1, description="checkpoints kept")
    resume: bool = Field(True, description="continue from run_name's newest checkpoint; false: start afresh")
    # A resume checks that the train data (sha256 of the train tables) and train.solver are those the run
    # started with; raising solver.max_iter / epochs extends a run. These accept a change instead (logged,
    # and recorded in training_run's resume_changes).
    allow_data_change: bool = Field(False, description="resume on re-ingested / different train data")
    allow_solver_change: bool = Field(False, description="resume with another solver (LR, schedule, ...)")


# The COCO box metrics an evaluation reports (frcnn_pipeline.evaluation.coco_eval.STAT_NAMES; a test keeps
# the two lists equal).
CocoMetric = Literal["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


class TrainParams(Section):
    run_name: str = Field("default", min_length=1, description="names the checkpoint folder and metrics log")
    images_per_device: int = Field(2, ge=1, description="per worker; the total batch is this × world size")
    flip_prob: float = Field(0.5, ge=0, le=1, description="horizontal flip")
    max_bad_images: int = Field(
        10,
        ge=0,
        description="unreadable training images replaced by the next one (logged) before the run stops",
    )
    solver: SolverParams = SolverParams()
    checkpoint: CheckpointParams = CheckpointParams()
    log_period: int = Field(
        20, ge=1, description="iterations between metric rows (JSON lines + log; losses: window medians)"
    )
    metrics_dir: str = Field("data/08_reporting/train_logs", description="<metrics_dir>/<run_name>.jsonl")
    eval_period: int = Field(
        0,
        ge=0,
        description="iterations between COCO evaluations during training (and after the last one), on the "
        "first evaluation split of ingest.splits with the evaluate: settings; 0: off",
    )
    best_metric: CocoMetric = Field(
        "AP",
        description="the best evaluation by this metric is kept: <checkpoint.dir>/<run_name>/model_best.pth "
        "and best_model",
    )
