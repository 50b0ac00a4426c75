"""Training: one process per device (spawned by `launch`), iteration-based, resumable.

Entry point: `train_detector(...)`, Kedro-free; the train pipeline's node is a thin wrapper around it. It
takes the validated sections (the caller parses them). Each worker assembles its model, optimizer, data,
resumed state and hooks (build.py), then runs the `Trainer` loop (loop.py) with its hooks (hooks.py): metric
rows, evaluation, best and periodic checkpoints, MLflow tracking.
"""

from __future__ import annotations

import functools
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from frcnn_pipeline.config import ModelParams, RuntimeParams, TrainParams
from frcnn_pipeline.data.dataset import BadImageBudget
from frcnn_pipeline.data.fingerprint import tables_fingerprint
from frcnn_pipeline.engine import build
from frcnn_pipeline.engine.hooks import load_best_weights
from frcnn_pipeline.engine.job import Evaluator, ModelBuilder, TrainJob
from frcnn_pipeline.engine.loop import Trainer
from frcnn_pipeline.engine.resume import ResumeDecision
from frcnn_pipeline.engine.tracking import TrackingTarget
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.runtime import distributed
from frcnn_pipeline.runtime.distributed import WorkerContext
from frcnn_pipeline.runtime.loader_workers import LoaderWorkers
from frcnn_pipeline.runtime.provenance import package_versions
from frcnn_pipeline.runtime.run_lock import RunFolderLock
from frcnn_pipeline.runtime.world import WorldConfig


def train_detector(  # noqa: PLR0917 (mirrors the Kedro node's inputs)
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    num_classes: int,
    model_cfg: ModelParams,
    train: TrainParams,
    runtime: RuntimeParams,
    world: WorldConfig,
    initial_weights: dict[str, torch.Tensor] | None = None,
    build: ModelBuilder = build_model,  # the model builder (here it hides the module `build`)
    *,
    resume: ResumeDecision,
    evaluator: Evaluator | None = None,
    tracking: TrackingTarget | None = None,
) -> dict[str, Any]:
    """Train on `world`'s workers (`runtime.nproc_per_node` × `runtime.num_nodes`), from where ``resume``
    says (`engine.resume.decide_resume`); return rank 0's result on every node.

    ``world`` is `runtime`'s.

    Returns:
        {"state_dict": final weights (CPU, contiguous), "best_state_dict": the best evaluated weights ({}
        without evaluation), "metrics": metric rows, "evaluations": evaluation rows,
        "record": the run record}.

    Raises:
        TrainingStopped: SIGTERM/SIGINT arrived; a checkpoint of the current iteration was saved first.
        ResumeRefusedError, FileExistsError, NoReadableCheckpointError: ``resume``'s refusal, before any
            worker starts.
        ResumeRefusedError: from the workers, a checkpoint of another class count or train data than
            given here.
    """
    if resume.refusal is not None:
        raise resume.refusal
    job = TrainJob(
        images,
        annotations,
        num_classes,
        model_cfg,
        train,
        runtime,
        resume,
        initial_weights or {},
        build,
        evaluator,
        tracking,
    )
    run_dir = Path(train.checkpoint.dir) / train.run_name
    # The main process holds the run folder for the whole run, whoever writes into it.
    with RunFolderLock(run_dir, train.run_name) if world.is_main_process else nullcontext():
        started = time.time()
        result = distributed.launch(_train_worker, world, job)
    result["record"]["wall_time_s"] = round(time.time() - started, 2)
    return result


def _train_worker(context: WorkerContext, job: TrainJob) -> dict[str, Any] | None:
    precision = build.prepare_worker(context, job)
    model = build.build_training_model(context, job)
    model, optimizer, lr = build.build_optimizer(context, job, model, precision)
    dataset = build.training_dataset(job)
    data_fingerprint = tables_fingerprint(job.images, job.annotations)
    schedule = build.build_schedule(context, job, optimizer, lr, len(dataset))
    manager = build.checkpoint_manager(job)
    state, latest = build.resume_state(context, job, manager, model, schedule, precision, data_fingerprint)
    start_iter = state.iteration
    ddp_model = build.wrap_for_ddp(context, model)
    loader = build.build_loader(context, job, dataset, start_iter)
    writer = build.metrics_writer(context, job, schedule, state)
    with LoaderWorkers(loader) as batches:
        trainer = Trainer(
            context,
            model,
            ddp_model,
            schedule.optimizer,
            schedule.scheduler,
            precision,
            batches,
            state,
            job,
            functools.partial(build.rng_states, context.device),
            BadImageBudget(job.train.max_bad_images),
            data_fingerprint,
            last_checkpoint=latest,
        )
        trainer.hooks = build.build_hooks(trainer, manager, writer)
        trainer.train()
    if not context.is_main:
        return None
    return {
        "state_dict": {
            key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()
        },
        "best_state_dict": load_best_weights(state),
        "metrics": state.metrics,
        "evaluations": state.evaluations,
        "record": _run_record(trainer, schedule, start_iter, len(dataset)),
    }


def _run_record(
    trainer: Trainer, schedule: build.Schedule, start_iter: int, train_images: int
) -> dict[str, Any]:
    """What training_run keeps about the run (rank 0)."""
    context, job, state = trainer.context, trainer.job, trainer.state
    last_checkpoint = trainer.last_checkpoint
    return {
        "run_name": job.train.run_name,
        "device": context.device.type,
        "world_size": context.world_size,
        "num_nodes": context.world.num_nodes,
        "world": context.world.describe(),
        "images_per_device": job.train.images_per_device,
        "total_batch": schedule.total_batch,
        "scaled_lr": schedule.lr,
        "iterations": schedule.max_iter,
        "resumed_from_iteration": start_iter,
        "trained_iterations": max(0, schedule.max_iter - start_iter),
        "iters_per_epoch": schedule.iters_per_epoch,
        "train_images": train_images,
        "train_data_sha256": trainer.data_fingerprint,
        "resume_changes": state.resume_changes,
        # The last row's losses: medians over its logging window.
        "final_losses": {k: v for k, v in (state.metrics or [{}])[-1].items() if "loss" in k},
        "final_evaluation": state.evaluations[-1] if state.evaluations else None,
        "best": state.best,
        "unreadable_images_replaced": trainer.bad_images.problems,
        "last_checkpoint": str(last_checkpoint) if last_checkpoint else None,
        "tracking_run_id": state.tracking_run_id,
        "versions": package_versions(),
        # Written out as the run record, in the parameters' own form.
        "config": {
            "model": job.model_cfg.model_dump(),
            "train": job.train.model_dump(),
            "runtime": job.runtime.model_dump(),
        },
    }
