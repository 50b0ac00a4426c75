"""The training loop of one worker (detectron2's TrainerBase): a step per iteration, hooks around it.

`engine/build.py` builds everything a `Trainer` needs (model, optimizer, data, resumed state); the hooks
(`engine/hooks.py`, subclasses of `HookBase` here) log, evaluate, checkpoint and track; `TrainState` is what
they record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frcnn_pipeline.data.dataset import BadImageBudget
from frcnn_pipeline.engine.amp import MixedPrecision
from frcnn_pipeline.engine.job import TrainJob
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.modeling.model import StaticFasterRCNN
from frcnn_pipeline.runtime import distributed
from frcnn_pipeline.runtime.distributed import WorkerContext
from frcnn_pipeline.runtime.signals import StopSignals, TrainingStopped


class NonFiniteLossError(UserFacingError, FloatingPointError):
    """A loss became NaN or infinite; training stops before the bad step touches the weights."""

    def __init__(self, iteration: int, losses: dict[str, float], checkpoint: Path | None):
        self.iteration = iteration
        self.losses = losses
        self.checkpoint = checkpoint
        listed = ", ".join(f"{name}={value}" for name, value in losses.items())
        kept = (
            f"the last good checkpoint {checkpoint} is kept"
            if checkpoint
            else "no checkpoint had been written yet"
        )
        super().__init__(
            f"Non-finite loss at iteration {iteration}: {listed}. Training stopped; {kept}. "
            "Lower train.solver.base_lr, lengthen train.solver.warmup_iters, "
            "set train.solver.clip_grad_norm, or check the training boxes."
        )

    def __reduce__(self):
        # Pickled from a spawned worker back to the launching process.
        return type(self), (self.iteration, self.losses, self.checkpoint)


@dataclass
class TrainState:
    """What the hooks record; checkpoints keep it, so a resumed run continues every history."""

    iteration: int  # finished iterations
    max_iter: int
    metrics: list[dict[str, Any]] = field(default_factory=list)  # MetricsWriter rows
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # {"iteration", AP, AP50, ...}
    best: dict[str, Any] | None = None  # {"metric", "value", "iteration", "path"}
    tracking_run_id: str | None = None  # the MLflow run this training logs into
    # Changes a resume accepted (a longer schedule, train.checkpoint.allow_*): {"iteration", "change"}.
    resume_changes: list[dict[str, Any]] = field(default_factory=list)

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "evaluations": self.evaluations,
            "best": self.best,
            "tracking_run_id": self.tracking_run_id,
            "resume_changes": self.resume_changes,
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], max_iter: int) -> TrainState:
        return cls(
            iteration=int(saved["iteration"]),
            max_iter=max_iter,
            metrics=list(saved["metrics"]),
            evaluations=list(saved.get("evaluations", [])),
            best=saved.get("best"),
            tracking_run_id=saved.get("tracking_run_id"),
            resume_changes=list(saved.get("resume_changes", [])),
        )

    def due(self, period: int | None) -> bool:
        """Whether a `period`-iteration task falls on the iteration just finished (the last one always)."""
        return bool(period) and (self.iteration % period == 0 or self.iteration == self.max_iter)


class HookBase:
    """Called by `Trainer.train`: before the first step, after each step, after the last (also on errors)."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass


@dataclass
class StepOutput:
    losses: dict[str, float]  # mean over the ranks, with "total_loss"
    lr: float  # the LR this step used
    data_time: float  # seconds waiting for the batch
    step_time: float  # seconds for the whole step, data included


@dataclass
class Trainer:
    """One worker's loop (detectron2's TrainerBase): `run_step` per iteration, hooks around it."""

    context: WorkerContext
    model: nn.Module  # unwrapped: state dicts, evaluation
    ddp_model: nn.Module  # what the step calls (DDP when the world has several workers)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: MixedPrecision
    batches: Iterator
    state: TrainState
    job: TrainJob
    rng_states: Callable[[], dict[str, Any]]  # this rank's RNG states, for checkpoints
    bad_images: BadImageBudget  # unreadable training images replaced so far (train.max_bad_images)
    data_fingerprint: str  # sha256 of the train tables: a resume checks it is the same data
    hooks: list[HookBase] = field(default_factory=list)
    last_step: StepOutput | None = None
    last_checkpoint: Path | None = None  # named in a non-finite loss error
    # SIGTERM/SIGINT on any rank, agreed by all after the step: checkpoint now, then stop.
    stop_requested: bool = False
    signals: StopSignals | None = None

    def train(self) -> None:
        """Raises TrainingStopped after the checkpoint hook saved the iteration a stop signal arrived in."""
        for hook in self.hooks:
            hook.before_train(self)
        try:
            with StopSignals(on_the_way_out=True) as self.signals:
                for iteration in range(self.state.iteration, self.state.max_iter):
                    self.last_step = self.run_step(iteration)
                    self.state.iteration = iteration + 1
                    for hook in self.hooks:
                        hook.after_step(self)
                    if self.stop_requested and self.state.iteration < self.state.max_iter:
                        distributed.barrier()  # rank 0's checkpoint is on disk before any rank stops
                        reason = self.signals.requested or "a stop signal on another rank"
                        raise TrainingStopped(
                            self.state.iteration, self.state.max_iter, str(self.last_checkpoint), reason
                        )
        finally:
            for hook in self.hooks:
                hook.after_train(self)

    def run_step(self, iteration: int) -> StepOutput:
        device = self.context.device
        data_start = step_start = time.perf_counter()
        images, targets = next(self.batches)
        self.bad_images.check(targets)
        inputs = _step_inputs(self.model, images, targets, device)
        data_time = time.perf_counter() - data_start

        with self.precision.autocast():
            loss_dict = self.ddp_model(*inputs)
        total = sum(loss_dict.values())
        # A stop request on any rank travels with the losses: all ranks stop after the same iteration.
        requested = self.signals is not None and self.signals.requested is not None
        stop_flag = torch.tensor(float(requested), device=total.device)
        losses = distributed.reduce_mean({**loss_dict, "total_loss": total, "stop": stop_flag})
        self.stop_requested = losses.pop("stop") > 0
        if not all(math.isfinite(value) for value in losses.values()):
            raise NonFiniteLossError(iteration, losses, self.last_checkpoint)

        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(total, self.optimizer)
        clip = self.job.train.solver.clip_grad_norm
        if clip:
            self.precision.unscale(self.optimizer)
            trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
            torch.nn.utils.clip_grad_norm_(trainable, clip)
        self.precision.step(self.optimizer)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return StepOutput(losses, lr, data_time, time.perf_counter() - step_start)

    def checkpoint_state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything a resume needs; `rng`: every rank's RNG states, gathered."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "precision": self.precision.state_dict(),
            "iteration": self.state.iteration,
            "world_size": self.context.world_size,
            "total_batch": self.context.world_size * self.job.train.images_per_device,
            "rng": rng,
            "model_config": self.job.model_cfg.model_dump(),  # written out: a resume compares it
            "num_classes": self.job.num_classes,
            "data_fingerprint": self.data_fingerprint,
            "solver": self.job.train.solver.model_dump(),  # written out: a resume compares it
            **self.state.to_checkpoint(),
        }


def _step_inputs(model: nn.Module, images, targets, device: torch.device) -> tuple:
    """What the step calls the model with, on `device`.

    In the static-shape mode the batch is made here, on the host (`transform.host_batch`: the resize into the
    fixed canvas, whose shapes follow each image), so that the device sees the same shapes every step and the
    forward and backward hold no data-dependent op.
    """
    if isinstance(model, StaticFasterRCNN):
        return (model.transform.host_batch(images, targets).to(device),)
    return _to_device(images, targets, device)


def _to_device(images, targets, device: torch.device):
    # runtime.channels_last needs nothing here: the images are 3-D until the model batches them, and a conv
    # with channels_last weights gives channels_last activations.
    non_blocking = device.type != "cpu"
    images = [image.to(device, non_blocking=non_blocking) for image in images]
    targets = [
        {key: value.to(device, non_blocking=non_blocking) for key, value in t.items()} for t in targets
    ]
    return images, targets
