"""Hooks around the training loop, as in detectron2's trainer: the loop runs steps, hooks do everything else.

Each hook sees the `Trainer` (engine/loop.py): its worker context, its unwrapped model, the last step's
losses and the `TrainState` that checkpoints keep. Hooks run in the order given, on every rank; a hook that
only rank 0 needs does nothing elsewhere, and one that calls collectives runs on all ranks.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from frcnn_pipeline.config import ModelParams
from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.engine.checkpoint import CheckpointManager, atomic_save
from frcnn_pipeline.engine.job import Evaluator
from frcnn_pipeline.engine.loop import HookBase, Trainer, TrainState
from frcnn_pipeline.engine.metrics import MetricsWriter
from frcnn_pipeline.engine.tracking import MlflowRunLogger
from frcnn_pipeline.runtime import devices, distributed

log = logging.getLogger(__name__)

TRAIN_PREFIX, VAL_PREFIX = "train/", "val/"
TRACKED_EVAL_METRICS = ("AP", "AP50", "AP75")
BEST_CHECKPOINT_NAME = "model_best.pth"


class MetricsHook(HookBase):
    """Progress bar, and every `log_period` iterations a smoothed row to the log and the JSON lines."""

    def __init__(self, writer: MetricsWriter):
        self.writer = writer

    def after_step(self, trainer: Trainer) -> None:
        step = trainer.last_step
        self.writer.step(
            trainer.state.iteration - 1,
            step.losses,
            step.lr,
            step.data_time,
            step.step_time,
            lambda: devices.memory_mb(trainer.context.device),
        )

    def after_train(self, trainer: Trainer) -> None:
        self.writer.close()


class EvalHook(HookBase):
    """Every `period` iterations and after the last one: evaluate on all ranks; rank 0 records the metrics."""

    def __init__(self, evaluator: Evaluator, period: int):
        self.evaluator = evaluator
        self.period = period

    def after_step(self, trainer: Trainer) -> None:
        state = trainer.state
        if not state.due(self.period):
            return
        started = time.perf_counter()
        metrics = self.evaluator(trainer.model, trainer.context)
        seconds = time.perf_counter() - started
        if trainer.context.is_main:
            state.evaluations.append(
                {"iteration": state.iteration, **metrics, "eval_time_s": round(seconds, 2)}
            )
            log.info(
                "Evaluation at iteration %d (%.1f s): %s (%%)",
                state.iteration,
                seconds,
                "  ".join(f"{name} {metrics[name] * 100:.2f}" for name in TRACKED_EVAL_METRICS),
            )


class BestCheckpointHook(HookBase):
    """Keeps `<directory>/model_best.pth`: the weights with the highest `metric` so far (rank 0).

    As detectron2's BestCheckpointer and MMDetection's `save_best`; written atomically.
    """

    def __init__(self, metric: str, directory: Path, model_config: ModelParams, num_classes: int):
        self.metric = metric
        self.path = Path(directory) / BEST_CHECKPOINT_NAME
        self.model_config = model_config
        self.num_classes = num_classes

    def after_step(self, trainer: Trainer) -> None:
        state = trainer.state
        if not trainer.context.is_main or not state.evaluations:
            return
        latest = state.evaluations[-1]
        if latest["iteration"] != state.iteration:
            return
        if self.metric not in latest:
            raise KeyError(
                f"train.best_metric {self.metric!r} is not an evaluation metric; choose one of "
                f"{sorted(key for key in latest if key != 'iteration')}"
            )
        value = latest[self.metric]
        if state.best is not None and value <= state.best["value"]:
            return
        atomic_save(
            {
                "model": trainer.model.state_dict(),
                "iteration": state.iteration,
                "metric": self.metric,
                "value": value,
                "model_config": self.model_config.model_dump(),  # written out: a resume compares it
                "num_classes": self.num_classes,
            },
            self.path,
        )
        state.best = {
            "metric": self.metric,
            "value": value,
            "iteration": state.iteration,
            "path": str(self.path),
        }
        log.info(
            "New best %s %.4f at iteration %d: %s",
            self.metric,
            value,
            state.iteration,
            self.path,
            extra=DETAIL,
        )


class PeriodicCheckpointHook(HookBase):
    """Every `period` iterations, after the last one, and when a stop signal arrived: the full training state
    (collective RNG gather). Rank 0 writes it; every rank knows its path."""

    def __init__(self, manager: CheckpointManager, period: int):
        self.manager = manager
        self.period = period

    def after_step(self, trainer: Trainer) -> None:
        if not (trainer.state.due(self.period) or trainer.stop_requested):
            return
        rng = distributed.all_gather_object(trainer.rng_states())
        iteration = trainer.state.iteration
        if trainer.context.is_main:
            trainer.last_checkpoint = self.manager.save(iteration, trainer.checkpoint_state(rng))
        else:
            trainer.last_checkpoint = self.manager.path(iteration)


class TrackingHook(HookBase):
    """Rank 0 of node 0 logs live into the MLflow run: each metric row and each evaluation, step = iteration.

    Rows a checkpoint carries from before this run was tracked (tracking was off, or another store) are
    logged first, so the run's history starts at iteration 0.
    """

    def __init__(self, logger: MlflowRunLogger):
        self.logger = logger
        self._rows_logged = 0
        self._evaluations_logged = 0

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.context.is_main:
            return
        state = trainer.state
        if state.tracking_run_id not in (None, self.logger.run_id):
            log.warning(
                "The checkpoint was tracked in MLflow run %s; this run logs into %s, starting with the "
                "history the checkpoint kept",
                state.tracking_run_id,
                self.logger.run_id,
            )
        if state.tracking_run_id == self.logger.run_id:
            # Logged live before the interruption. Rows between that checkpoint and the interruption were
            # logged too, and are logged again as training repeats them: MLflow keeps both values.
            self._rows_logged, self._evaluations_logged = len(state.metrics), len(state.evaluations)
        state.tracking_run_id = self.logger.run_id
        context = trainer.context
        self.logger.set_tags(
            {
                "hardware.device": context.device.type,
                "hardware.world_size": context.world_size,
                "hardware.num_nodes": trainer.context.world.num_nodes,
            }
        )
        self._log_new(state)

    def after_step(self, trainer: Trainer) -> None:
        if trainer.context.is_main:
            self._log_new(trainer.state)

    def after_train(self, trainer: Trainer) -> None:
        # The logger sends off the training thread: what it still holds goes now (or is counted).
        self.logger.close()

    def _log_new(self, state: TrainState) -> None:
        for row in state.metrics[self._rows_logged :]:
            values = {key: value for key, value in row.items() if key not in ("iteration", "eta_s")}
            self.logger.log_metrics(
                {TRAIN_PREFIX + key: value for key, value in values.items()}, row["iteration"]
            )
        for row in state.evaluations[self._evaluations_logged :]:
            values = {VAL_PREFIX + name: row[name] for name in TRACKED_EVAL_METRICS}
            self.logger.log_metrics(values, row["iteration"])
        self._rows_logged, self._evaluations_logged = len(state.metrics), len(state.evaluations)


def load_best_weights(state: TrainState) -> dict[str, torch.Tensor]:
    """The best checkpoint's weights (CPU), or {} when no evaluation ran."""
    if state.best is None:
        return {}
    return torch.load(state.best["path"], map_location="cpu", weights_only=True)["model"]
