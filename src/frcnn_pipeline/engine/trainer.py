"""Training: one process per device (spawned by `launch`), iteration-based, resumable.

Entry point: `train_detector(...)`, Kedro-free; the train pipeline's node is a thin wrapper around it. Each
worker builds the model, optimizer, data and resumed state here, then runs the `Trainer` loop (loop.py) with
its hooks (hooks.py): metric rows, evaluation, best and periodic checkpoints, MLflow tracking.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from frcnn_pipeline.config import RuntimeParams, TrainParams
from frcnn_pipeline.data.dataset import (
    BadImageBudget,
    DetectionDataset,
    GroupedBatchSampler,
    collate,
    loader_generator,
    seed_worker,
)
from frcnn_pipeline.data.fingerprint import tables_fingerprint
from frcnn_pipeline.engine import memory_budget, solver
from frcnn_pipeline.engine.amp import MixedPrecision
from frcnn_pipeline.engine.checkpoint import CheckpointManager
from frcnn_pipeline.engine.hooks import (
    BestCheckpointHook,
    EvalHook,
    Evaluator,
    HookBase,
    MetricsHook,
    PeriodicCheckpointHook,
    TrackingHook,
    TrainState,
    load_best_weights,
)
from frcnn_pipeline.engine.loop import Trainer
from frcnn_pipeline.engine.metrics import MetricsWriter
from frcnn_pipeline.engine.resume import check_resume
from frcnn_pipeline.engine.tracking import MlflowRunLogger, TrackingTarget
from frcnn_pipeline.layers import backend as detection_ops
from frcnn_pipeline.modeling import build_model, resolve_model_config
from frcnn_pipeline.modeling.backbone import convert_to_sync_batchnorm
from frcnn_pipeline.modeling.static import check_gt_box_counts
from frcnn_pipeline.runtime import devices, distributed
from frcnn_pipeline.runtime.distributed import WorkerContext
from frcnn_pipeline.runtime.loader_workers import LoaderWorkers, worker_count
from frcnn_pipeline.runtime.provenance import package_versions
from frcnn_pipeline.runtime.run_lock import RunFolderLock
from frcnn_pipeline.runtime.world import WorldConfig

log = logging.getLogger(__name__)

ModelBuilder = Callable[[dict[str, Any], int], nn.Module]


@dataclass
class TrainJob:
    """Everything a worker needs (pickled once per spawned worker)."""

    images: pd.DataFrame
    annotations: pd.DataFrame
    num_classes: int
    model_cfg: dict[str, Any]
    train_cfg: dict[str, Any]
    runtime_cfg: dict[str, Any]
    initial_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    build: ModelBuilder = build_model
    # `train.eval_period`: called on every rank inside the process group (evaluation/evaluator.py).
    evaluator: Evaluator | None = None
    # The MLflow run rank 0 logs into; None: tracking is off.
    tracking: TrackingTarget | None = None


def train_detector(  # noqa: PLR0917 (mirrors the Kedro node's inputs)
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    num_classes: int,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    runtime_cfg: dict[str, Any],
    initial_weights: dict[str, torch.Tensor] | None = None,
    build: ModelBuilder = build_model,
    *,
    evaluator: Evaluator | None = None,
    tracking: TrackingTarget | None = None,
) -> dict[str, Any]:
    """Train on `runtime.nproc_per_node` × `runtime.num_nodes` workers; return rank 0's result on every node.

    The three sections may be partial: they are validated (frcnn_pipeline.config) and every key left out
    takes its default.

    Returns:
        {"state_dict": final weights (CPU, contiguous), "best_state_dict": the best evaluated weights ({}
        without evaluation), "metrics": metric rows, "evaluations": evaluation rows,
        "record": the run record}.

    Raises:
        TrainingStopped: SIGTERM/SIGINT arrived; a checkpoint of the current iteration was saved first.
    """
    model_cfg = resolve_model_config(model_cfg)
    train_cfg = TrainParams.parse(train_cfg, "train").model_dump()
    runtime = RuntimeParams.parse(runtime_cfg, "runtime")
    runtime_cfg = runtime.model_dump()
    job = TrainJob(
        images,
        annotations,
        num_classes,
        model_cfg,
        train_cfg,
        runtime_cfg,
        initial_weights or {},
        build,
        evaluator,
        tracking,
    )
    world = WorldConfig.from_runtime(runtime)
    run_dir = Path(train_cfg["checkpoint"]["dir"]) / train_cfg["run_name"]
    # The main process holds the run folder for the whole run, whoever writes into it.
    with RunFolderLock(run_dir, train_cfg["run_name"]) if world.is_main_process else nullcontext():
        started = time.time()
        result = distributed.launch(_train_worker, world, job)
    result["record"]["wall_time_s"] = round(time.time() - started, 2)
    return result


def load_initial_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Strict load except for missing keys, which are reported (they keep their initialisation).

    Raises:
        ValueError: keys the model does not have, or shapes that differ (weights of another architecture).
    """
    if not state_dict:
        log.info("initial_weights is empty: training from scratch")
        return []
    expected = model.state_dict()
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if unexpected or mismatched:
        raise ValueError(
            f"initial_weights does not fit the model: {len(unexpected)} unknown key(s) {unexpected[:5]}, "
            f"{len(mismatched)} shape mismatch(es) {mismatched[:5]}. Check model.backbone.depth and "
            "re-run the weights pipeline for this model."
        )
    missing = model.load_state_dict(state_dict, strict=False).missing_keys
    if missing:
        prefixes = sorted({".".join(key.split(".")[:2]) for key in missing})
        log.warning(
            "initial_weights loaded %d of %d keys; %d missing keys keep their initialisation (%s)",
            len(state_dict),
            len(expected),
            len(missing),
            ", ".join(prefixes),
        )
    else:
        log.info("initial_weights loaded: all %d keys", len(state_dict))
    return missing


def _python_rng_states() -> dict[str, Any]:
    # NumPy's state becomes a tensor and a list so that torch.load(weights_only=True) can read it back.
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "rest": [position, has_gauss, gauss],
        },
    }


def _set_python_rng_states(states: dict[str, Any]) -> None:
    random.setstate((3, tuple(states["python"]), None))
    numpy_state = states["numpy"]
    np.random.set_state(
        (numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), *numpy_state["rest"])
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_hooks(trainer: Trainer, manager: CheckpointManager, writer: MetricsWriter) -> list[HookBase]:
    """In this order: metrics, evaluation, best checkpoint (needs the evaluation), periodic checkpoint
    (keeps both), tracking (logs what the others recorded)."""
    train = trainer.job.train_cfg
    checkpoints = PeriodicCheckpointHook(manager, train["checkpoint"]["period"])
    hooks: list[HookBase] = [MetricsHook(writer)]
    if trainer.job.evaluator is not None and train["eval_period"]:
        hooks.append(EvalHook(trainer.job.evaluator, train["eval_period"]))
        hooks.append(
            BestCheckpointHook(
                train["best_metric"], manager.directory, trainer.job.model_cfg, trainer.job.num_classes
            )
        )
    hooks.append(checkpoints)
    if trainer.job.tracking is not None and trainer.context.is_main:
        hooks.append(TrackingHook(MlflowRunLogger(trainer.job.tracking)))
    return hooks


def _train_worker(context: WorkerContext, job: TrainJob) -> dict[str, Any] | None:
    train, runtime, solver_cfg = job.train_cfg, job.runtime_cfg, job.train_cfg["solver"]
    device = context.device
    devices.set_threads_per_worker(runtime.get("num_threads"), device, runtime.get("nproc_per_node", 1))
    detection_ops.configure(runtime["detection_ops"])
    # First: a precision this device cannot run (apex without CUDA/NPU) stops the run before any loading.
    precision = MixedPrecision(runtime.get("amp"), device)
    # Here, where each worker knows its device (the launcher creates no accelerator context): an input size
    # and batch that cannot fit stop the run before the model, the data and the loader's workers.
    memory_budget.check_training_memory(job.model_cfg, job.num_classes, train, runtime, device)
    seed = int(runtime["seed"])
    if runtime.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)

    # The same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    _seed_everything(seed)
    model = job.build(job.model_cfg, job.num_classes)
    load_initial_weights(model, job.initial_weights)
    norm = job.model_cfg["backbone"]["norm"]
    model = convert_to_sync_batchnorm(model, norm, context.world_size, device.type)  # the group exists here
    channels_last = bool(runtime.get("channels_last", False))
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    model.train()

    batch_per_device = int(train["images_per_device"])
    total_batch = batch_per_device * context.world_size
    lr = solver.scaled_lr(solver_cfg["base_lr"], total_batch, solver_cfg.get("reference_batch_size"))
    if context.is_main:
        log.info(
            "LR %.6g = base_lr %g × total batch %d / reference batch %s (%d device(s) × %d image(s))",
            lr,
            solver_cfg["base_lr"],
            total_batch,
            solver_cfg.get("reference_batch_size"),
            context.world_size,
            batch_per_device,
        )
    optimizer = solver.build_optimizer(model, solver_cfg, lr, loss_scaled=precision.scaler is not None)
    model, optimizer = precision.initialize(model, optimizer)

    dataset = DetectionDataset(job.images, job.annotations, train=True)
    data_fingerprint = tables_fingerprint(job.images, job.annotations)
    static_shapes = resolve_model_config(job.model_cfg)["static_shapes"]
    if static_shapes["enabled"]:
        check_gt_box_counts(dataset.boxes_per_image(), static_shapes["max_gt_boxes"])
    iters_per_epoch = max(1, len(dataset) // total_batch)
    scheduler = solver.build_lr_scheduler(optimizer, solver_cfg, iters_per_epoch)
    max_iter = solver.max_iterations(solver_cfg, iters_per_epoch)

    checkpoint_cfg = train["checkpoint"]
    manager = CheckpointManager(Path(checkpoint_cfg["dir"]) / train["run_name"], checkpoint_cfg["keep_last"])
    train_state = TrainState(iteration=0, max_iter=max_iter)
    # The newest checkpoint that loads (newer unreadable ones are set aside with a warning).
    latest, state = manager.load_latest() if checkpoint_cfg.get("resume", True) else (None, None)
    if latest is None and manager.checkpoints():
        # A fresh run would interleave its checkpoints with the old ones (keep_last prunes by number).
        raise FileExistsError(
            f"train.checkpoint.resume is false but {manager.directory} holds checkpoints of an earlier run "
            f"({manager.checkpoints()[-1].name}). Choose a new train.run_name, or delete that folder "
            "to retrain."
        )
    start_iter = 0
    if latest is not None:
        changes = check_resume(
            state,
            latest,
            model_cfg=job.model_cfg,
            train_cfg=job.train_cfg,
            num_classes=job.num_classes,
            world_size=context.world_size,
            data_fingerprint=data_fingerprint,
        )
        if context.is_main:
            for change in changes:
                log.warning("Resuming %s with a change: %s", latest, change)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        precision.load_state_dict(state["precision"])
        train_state = TrainState.from_checkpoint(state, max_iter)
        train_state.resume_changes += [{"iteration": train_state.iteration, "change": c} for c in changes]
        start_iter = train_state.iteration
        if state["world_size"] == context.world_size:
            rng = state["rng"][context.rank]
            devices.set_rng_states(device, rng["torch"])
            _set_python_rng_states(rng)
        else:
            _seed_everything(seed + context.rank + start_iter)
        if context.is_main:
            log.info("Resumed from %s at iteration %d", latest, start_iter)
    else:
        _seed_everything(seed + context.rank)
    resumed_at = distributed.all_gather_object(start_iter)
    if len(set(resumed_at)) > 1:
        raise RuntimeError(
            f"Workers resumed at different iterations {resumed_at}: {manager.directory} must be on storage "
            "shared by every node (or copied to each) for a multi-node resume"
        )
    if start_iter >= max_iter:
        log.info("Checkpoint iteration %d >= max_iter %d: nothing left to train", start_iter, max_iter)

    ddp_model = (
        DistributedDataParallel(model, device_ids=None if device.type == "cpu" else [device.index])
        if context.world_size > 1
        else model
    )
    sampler = GroupedBatchSampler(
        dataset.aspect_ratios(),
        batch_per_device,
        seed=seed,
        rank=context.rank,
        world_size=context.world_size,
        flip_prob=train["flip_prob"],
        start_batch=start_iter,
    )
    num_workers = worker_count(int(runtime.get("num_workers", 0)), context.world.nproc_per_node)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        **devices.loader_pinning(device, runtime.get("pin_memory", True)),
        worker_init_fn=seed_worker,
        generator=loader_generator(seed, context.rank),
        persistent_workers=num_workers > 0,
    )
    writer = MetricsWriter(
        Path(train["metrics_dir"]) / f"{train['run_name']}.jsonl",
        period=train["log_period"],
        images_per_iteration=total_batch,
        start_iteration=start_iter,
        max_iter=max_iter,
        enabled=context.is_main,
        history=train_state.metrics,
    )
    train_state.metrics = writer.rows  # one list: the writer appends, checkpoints and trackers read
    with LoaderWorkers(loader) as batches:
        trainer = Trainer(
            context,
            model,
            ddp_model,
            optimizer,
            scheduler,
            precision,
            batches,
            train_state,
            job,
            lambda: {"torch": devices.rng_states(device), **_python_rng_states()},
            BadImageBudget(train["max_bad_images"]),
            data_fingerprint,
            last_checkpoint=latest,
        )
        trainer.hooks = _build_hooks(trainer, manager, writer)
        trainer.train()

    if not context.is_main:
        return None
    state_dict = {
        key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()
    }
    last_checkpoint = trainer.last_checkpoint
    record = {
        "run_name": train["run_name"],
        "device": device.type,
        "world_size": context.world_size,
        "num_nodes": context.world.num_nodes,
        "world": context.world.describe(),
        "images_per_device": batch_per_device,
        "total_batch": total_batch,
        "scaled_lr": lr,
        "iterations": max_iter,
        "resumed_from_iteration": start_iter,
        "trained_iterations": max(0, max_iter - start_iter),
        "iters_per_epoch": iters_per_epoch,
        "train_images": len(dataset),
        "train_data_sha256": data_fingerprint,
        "resume_changes": train_state.resume_changes,
        # The last row's losses: medians over its logging window.
        "final_losses": {k: v for k, v in (train_state.metrics or [{}])[-1].items() if "loss" in k},
        "final_evaluation": train_state.evaluations[-1] if train_state.evaluations else None,
        "best": train_state.best,
        "unreadable_images_replaced": trainer.bad_images.problems,
        "last_checkpoint": str(last_checkpoint) if last_checkpoint else None,
        "tracking_run_id": train_state.tracking_run_id,
        "versions": package_versions(),
        "config": {"model": job.model_cfg, "train": train, "runtime": runtime},
    }
    return {
        "state_dict": state_dict,
        "best_state_dict": load_best_weights(train_state),
        "metrics": train_state.metrics,
        "evaluations": train_state.evaluations,
        "record": record,
    }
