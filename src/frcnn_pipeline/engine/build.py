"""What a training worker assembles before its loop, in the order engine/trainer.py calls it: the worker's
settings and precision, the model, the optimizer and LR schedule, the training data, the resumed state, the
data loader, the metrics writer and the hooks."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.data.dataset import (
    DetectionDataset,
    GroupedBatchSampler,
    collate,
    loader_generator,
    seed_worker,
)
from frcnn_pipeline.engine import memory_budget, solver
from frcnn_pipeline.engine.amp import MixedPrecision
from frcnn_pipeline.engine.checkpoint import CheckpointManager, load_checkpoint
from frcnn_pipeline.engine.hooks import (
    BestCheckpointHook,
    EvalHook,
    MetricsHook,
    PeriodicCheckpointHook,
    TrackingHook,
)
from frcnn_pipeline.engine.job import TrainJob
from frcnn_pipeline.engine.loop import HookBase, Trainer, TrainState
from frcnn_pipeline.engine.metrics import MetricsWriter
from frcnn_pipeline.engine.resume import check_resume
from frcnn_pipeline.engine.tracking import MlflowRunLogger
from frcnn_pipeline.layers import backend as detection_ops
from frcnn_pipeline.modeling.backbone import convert_to_sync_batchnorm
from frcnn_pipeline.modeling.static import check_gt_box_counts
from frcnn_pipeline.runtime import devices, distributed
from frcnn_pipeline.runtime.distributed import WorkerContext
from frcnn_pipeline.runtime.loader_workers import worker_count

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """The optimizer and its LR schedule, with the numbers the run record reports."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    lr: float  # base_lr scaled to the total batch
    total_batch: int
    iters_per_epoch: int
    max_iter: int


def prepare_worker(context: WorkerContext, job: TrainJob) -> MixedPrecision:
    """This worker's threads, detection kernels and determinism; its mixed precision."""
    runtime, device = job.runtime, context.device
    devices.set_threads_per_worker(runtime.num_threads, device, runtime.nproc_per_node)
    detection_ops.configure(runtime.detection_ops)
    # First: a precision this device cannot run (apex without CUDA/NPU) stops the run before any loading.
    precision = MixedPrecision(runtime.amp, device)
    # Here, where each worker knows its device (the launcher creates no accelerator context): an input size
    # and batch that cannot fit stop the run before the model, the data and the loader's workers.
    memory_budget.check_training_memory(job.model_cfg, job.num_classes, job.train, runtime, device)
    if runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return precision


def build_training_model(context: WorkerContext, job: TrainJob) -> nn.Module:
    """The model with its initial weights, sync BN where asked, on the device, in training mode."""
    # The same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    seed_everything(job.runtime.seed)
    model = job.build(job.model_cfg, job.num_classes)
    load_initial_weights(model, job.initial_weights)
    norm = job.model_cfg.backbone.norm
    model = convert_to_sync_batchnorm(model, norm, context.world_size, context.device.type)  # group exists
    memory_format = torch.channels_last if job.runtime.channels_last else torch.preserve_format
    model.to(context.device, memory_format=memory_format)
    model.train()
    return model


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
        log.info("initial_weights loaded: all %d keys", len(state_dict), extra=DETAIL)
    return missing


def build_optimizer(
    context: WorkerContext, job: TrainJob, model: nn.Module, precision: MixedPrecision
) -> tuple[nn.Module, torch.optim.Optimizer, float]:
    """The optimizer at the LR scaled to the total batch, with the model, as the precision prepared them."""
    settings = job.train.solver
    total_batch = job.train.images_per_device * context.world_size
    lr = solver.scaled_lr(settings.base_lr, total_batch, settings.reference_batch_size)
    if context.is_main:
        log.info(
            "LR %.6g = base_lr %g × total batch %d / reference batch %s (%d device(s) × %d image(s))",
            lr,
            settings.base_lr,
            total_batch,
            settings.reference_batch_size,
            context.world_size,
            job.train.images_per_device,
        )
    optimizer = solver.build_optimizer(model, settings, lr, loss_scaled=precision.scaler is not None)
    model, optimizer = precision.initialize(model, optimizer)
    return model, optimizer, lr


def training_dataset(job: TrainJob) -> DetectionDataset:
    """The training images; in the static-shape mode, none with more boxes than the model takes."""
    dataset = DetectionDataset(job.images, job.annotations, train=True)
    static_shapes = job.model_cfg.static_shapes
    if static_shapes.enabled:
        check_gt_box_counts(dataset.boxes_per_image(), static_shapes.max_gt_boxes)
    return dataset


def build_schedule(
    context: WorkerContext, job: TrainJob, optimizer: torch.optim.Optimizer, lr: float, train_images: int
) -> Schedule:
    """The LR schedule over the run's length (epochs count `train_images` // total batch iterations)."""
    total_batch = job.train.images_per_device * context.world_size
    iters_per_epoch = max(1, train_images // total_batch)
    scheduler = solver.build_lr_scheduler(optimizer, job.train.solver, iters_per_epoch)
    max_iter = solver.max_iterations(job.train.solver, iters_per_epoch)
    return Schedule(optimizer, scheduler, lr, total_batch, iters_per_epoch, max_iter)


def checkpoint_manager(job: TrainJob) -> CheckpointManager:
    checkpoint = job.train.checkpoint
    return CheckpointManager(Path(checkpoint.dir) / job.train.run_name, checkpoint.keep_last)


def resume_state(  # noqa: PLR0917 (everything a checkpoint restores)
    context: WorkerContext,
    job: TrainJob,
    manager: CheckpointManager,
    model: nn.Module,
    schedule: Schedule,
    precision: MixedPrecision,
    data_fingerprint: str,
) -> tuple[TrainState, Path | None]:
    """The state of the checkpoint the run's resume decision names, checked and restored into the model,
    schedule, precision and RNGs (its path), or a fresh start (None); every rank starts at the same
    iteration."""
    latest = job.resume.checkpoint
    if latest is None:
        seed_everything(job.runtime.seed + context.rank)
        train_state = TrainState(iteration=0, max_iter=schedule.max_iter)
    else:
        state = load_checkpoint(latest)
        changes = check_resume(
            state,
            latest,
            model_cfg=job.model_cfg,
            train=job.train,
            num_classes=job.num_classes,
            world_size=context.world_size,
            data_fingerprint=data_fingerprint,
        )
        if context.is_main:
            for change in changes:
                log.warning("Resuming %s with a change: %s", latest, change)
        train_state = _restore(context, job, state, model, schedule, precision)
        train_state.resume_changes += [{"iteration": train_state.iteration, "change": c} for c in changes]
        if context.is_main:
            log.info("Resumed from %s at iteration %d", latest, train_state.iteration)
    resumed_at = distributed.all_gather_object(train_state.iteration)
    if len(set(resumed_at)) > 1:
        raise RuntimeError(
            f"Workers resumed at different iterations {resumed_at}: {manager.directory} must be on storage "
            "shared by every node (or copied to each) for a multi-node resume"
        )
    if train_state.iteration >= schedule.max_iter:
        log.info(
            "Checkpoint iteration %d >= max_iter %d: nothing left to train",
            train_state.iteration,
            schedule.max_iter,
        )
    return train_state, latest


def _restore(  # noqa: PLR0917 (everything a checkpoint restores)
    context: WorkerContext,
    job: TrainJob,
    state: dict[str, Any],
    model: nn.Module,
    schedule: Schedule,
    precision: MixedPrecision,
) -> TrainState:
    model.load_state_dict(state["model"])
    schedule.optimizer.load_state_dict(state["optimizer"])
    schedule.scheduler.load_state_dict(state["scheduler"])
    precision.load_state_dict(state["precision"])
    train_state = TrainState.from_checkpoint(state, schedule.max_iter)
    if state["world_size"] == context.world_size:
        rng = state["rng"][context.rank]
        devices.set_rng_states(context.device, rng["torch"])
        _set_python_rng_states(rng)
    else:
        seed_everything(job.runtime.seed + context.rank + train_state.iteration)
    return train_state


def wrap_for_ddp(context: WorkerContext, model: nn.Module) -> nn.Module:
    """What the step calls: DDP when the world has several workers, else the model itself."""
    if context.world_size == 1:
        return model
    device = context.device
    return DistributedDataParallel(model, device_ids=None if device.type == "cpu" else [device.index])


def build_loader(
    context: WorkerContext, job: TrainJob, dataset: DetectionDataset, start_iter: int
) -> DataLoader:
    """This rank's batches of aspect-ratio groups, from batch `start_iter` of the epoch order."""
    seed, runtime = job.runtime.seed, job.runtime
    sampler = GroupedBatchSampler(
        dataset.aspect_ratios(),
        job.train.images_per_device,
        seed=seed,
        rank=context.rank,
        world_size=context.world_size,
        flip_prob=job.train.flip_prob,
        start_batch=start_iter,
    )
    num_workers = worker_count(runtime.num_workers, context.world.nproc_per_node)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        **devices.loader_pinning(context.device, runtime.pin_memory),
        worker_init_fn=seed_worker,
        generator=loader_generator(seed, context.rank),
        persistent_workers=num_workers > 0,
    )


def metrics_writer(
    context: WorkerContext, job: TrainJob, schedule: Schedule, train_state: TrainState
) -> MetricsWriter:
    """Rank 0's metric rows; the state then holds the writer's list (it appends; checkpoints and trackers
    read it)."""
    train = job.train
    writer = MetricsWriter(
        Path(train.metrics_dir) / f"{train.run_name}.jsonl",
        period=train.log_period,
        images_per_iteration=schedule.total_batch,
        start_iteration=train_state.iteration,
        max_iter=schedule.max_iter,
        enabled=context.is_main,
        history=train_state.metrics,
    )
    train_state.metrics = writer.rows
    return writer


def build_hooks(trainer: Trainer, manager: CheckpointManager, writer: MetricsWriter) -> list[HookBase]:
    """In this order: metrics, evaluation, best checkpoint (needs the evaluation), periodic checkpoint
    (keeps both), tracking (logs what the others recorded)."""
    job = trainer.job
    checkpoints = PeriodicCheckpointHook(manager, job.train.checkpoint.period)
    hooks: list[HookBase] = [MetricsHook(writer)]
    if job.evaluator is not None and job.train.eval_period:
        hooks.append(EvalHook(job.evaluator, job.train.eval_period))
        hooks.append(
            BestCheckpointHook(job.train.best_metric, manager.directory, job.model_cfg, job.num_classes)
        )
    hooks.append(checkpoints)
    if job.tracking is not None and trainer.context.is_main:
        hooks.append(TrackingHook(MlflowRunLogger(job.tracking)))
    return hooks


def rng_states(device: torch.device) -> dict[str, Any]:
    """This rank's RNG states, for a checkpoint."""
    return {"torch": devices.rng_states(device), **_python_rng_states()}


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
