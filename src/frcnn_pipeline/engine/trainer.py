"""The training loop: one process per device (spawned by `launch`), iteration-based, resumable.

Entry point: `train_detector(...)`, Kedro-free; the train pipeline's node is a thin wrapper around it.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
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
from frcnn_pipeline.engine import devices, distributed, solver
from frcnn_pipeline.engine.amp import MixedPrecision
from frcnn_pipeline.engine.checkpoint import CheckpointManager, load_checkpoint
from frcnn_pipeline.engine.distributed import WorkerContext
from frcnn_pipeline.engine.launcher import WorldConfig
from frcnn_pipeline.engine.metrics import MetricsWriter
from frcnn_pipeline.engine.resume import check_resume
from frcnn_pipeline.engine.signals import StopSignals, TrainingStopped, ignore_stop_signals
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.layers import backend as detection_ops
from frcnn_pipeline.modeling import build_model, resolve_model_config
from frcnn_pipeline.modeling.static import check_gt_box_counts

log = logging.getLogger(__name__)

ModelBuilder = Callable[[dict[str, Any], int], nn.Module]


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


def train_detector(  # noqa: PLR0917 (mirrors the Kedro node's inputs)
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    num_classes: int,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    runtime_cfg: dict[str, Any],
    initial_weights: dict[str, torch.Tensor] | None = None,
    build: ModelBuilder = build_model,
) -> dict[str, Any]:
    """Train on `runtime.nproc_per_node` × `runtime.num_nodes` workers; return rank 0's result on every node.

    The three sections may be partial: they are validated (frcnn_pipeline.config) and every key left out
    takes its default.

    Returns:
        {"state_dict": final weights (CPU, contiguous), "metrics": metric rows, "record": the run record}.

    Raises:
        TrainingStopped: SIGTERM/SIGINT arrived; a checkpoint of the current iteration was saved first.
    """
    model_cfg = resolve_model_config(model_cfg)
    train_cfg = TrainParams.parse(train_cfg, "train").model_dump()
    runtime_cfg = RuntimeParams.parse(runtime_cfg, "runtime").model_dump()
    job = TrainJob(
        images, annotations, num_classes, model_cfg, train_cfg, runtime_cfg, initial_weights or {}, build
    )
    started = time.time()
    result = distributed.launch(_train_worker, WorldConfig.from_runtime(runtime_cfg), job)
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


def _to_device(images, targets, device: torch.device, channels_last: bool):
    non_blocking = device.type != "cpu"
    images = [image.to(device, non_blocking=non_blocking) for image in images]
    if channels_last:
        images = [image.contiguous(memory_format=torch.channels_last) for image in images]
    targets = [
        {key: value.to(device, non_blocking=non_blocking) for key, value in t.items()} for t in targets
    ]
    return images, targets


def _threads_per_worker(runtime: dict[str, Any], device: torch.device) -> int | None:
    if runtime.get("num_threads"):
        return int(runtime["num_threads"])
    if device.type == "cpu" and runtime.get("nproc_per_node", 1) > 1:
        # CPU workers share the cores: oversubscription slows every worker down.
        return max(1, (os.cpu_count() or 1) // runtime["nproc_per_node"])
    return None


def _init_loader_worker(worker_id: int) -> None:
    seed_worker(worker_id)
    # The training process stops its loader workers itself, after saving a checkpoint.
    ignore_stop_signals()


def _train_worker(context: WorkerContext, job: TrainJob) -> dict[str, Any] | None:
    train, runtime, solver_cfg = job.train_cfg, job.runtime_cfg, job.train_cfg["solver"]
    device = context.device
    threads = _threads_per_worker(runtime, device)
    if threads:
        torch.set_num_threads(threads)
    detection_ops.configure(runtime["detection_ops"])
    seed = int(runtime["seed"])
    if runtime.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)

    # The same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    _seed_everything(seed)
    model = job.build(job.model_cfg, job.num_classes)
    load_initial_weights(model, job.initial_weights)
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
    optimizer = solver.build_optimizer(model, solver_cfg, lr)
    precision = MixedPrecision(runtime.get("amp"), device)
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
    start_iter, history, resume_changes = 0, [], []
    latest = manager.latest() if checkpoint_cfg.get("resume", True) else None
    if latest is None and manager.checkpoints():
        # A fresh run would interleave its checkpoints with the old ones (keep_last prunes by number).
        raise FileExistsError(
            f"train.checkpoint.resume is false but {manager.directory} holds checkpoints of an earlier run "
            f"({manager.checkpoints()[-1].name}). Choose a new train.run_name, or delete that folder "
            "to retrain."
        )
    if latest is not None:
        state = load_checkpoint(latest)
        changes = check_resume(
            state,
            latest,
            model_cfg=job.model_cfg,
            num_classes=job.num_classes,
            train_cfg=train,
            world_size=context.world_size,
            data_fingerprint=data_fingerprint,
        )
        if context.is_main:
            for change in changes:
                log.warning("Resuming %s with a change: %s", latest, change)
        resume_changes = [
            *state.get("resume_changes", []),
            *({"iteration": state["iteration"], "change": c} for c in changes),
        ]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        precision.load_state_dict(state["precision"])
        start_iter, history = int(state["iteration"]), state["metrics"]
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
    num_workers = int(runtime.get("num_workers", 0))
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=device.type != "cpu" and runtime.get("pin_memory", True),
        worker_init_fn=_init_loader_worker,
        generator=loader_generator(seed, context.rank),
        persistent_workers=num_workers > 0,
    )
    metrics = MetricsWriter(
        Path(train["metrics_dir"]) / f"{train['run_name']}.jsonl",
        period=train["log_period"],
        images_per_iteration=total_batch,
        start_iteration=start_iter,
        max_iter=max_iter,
        enabled=context.is_main,
        history=history,
    )
    clip = solver_cfg.get("clip_grad_norm")
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    last_checkpoint = latest
    losses: dict[str, float] = {}

    def save_checkpoint(done: int) -> Path | None:
        rng = distributed.all_gather_object({"torch": devices.rng_states(device), **_python_rng_states()})
        if not context.is_main:
            return None
        return manager.save(
            done,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "precision": precision.state_dict(),
                "iteration": done,
                "world_size": context.world_size,
                "total_batch": total_batch,
                "rng": rng,
                "metrics": metrics.rows,
                "model_config": job.model_cfg,
                "num_classes": job.num_classes,
                "data_fingerprint": data_fingerprint,
                "solver": solver_cfg,
                "resume_changes": resume_changes,
            },
        )

    batches = iter(loader)
    bad_images = BadImageBudget(int(train["max_bad_images"]))
    try:
        with StopSignals() as stop:
            for iteration in range(start_iter, max_iter):
                data_start = time.perf_counter()
                images, targets = next(batches)
                bad_images.check(targets)
                images, targets = _to_device(images, targets, device, channels_last)
                data_time = time.perf_counter() - data_start

                with precision.autocast():
                    loss_dict = ddp_model(images, targets)
                total = sum(loss_dict.values())
                # A stop request on any rank travels with the losses: all ranks stop after the same iteration.
                stop_flag = torch.tensor(float(stop.requested is not None), device=total.device)
                losses = distributed.reduce_mean({**loss_dict, "total_loss": total, "stop": stop_flag})
                stop_agreed = losses.pop("stop") > 0
                if not all(math.isfinite(value) for value in losses.values()):
                    raise NonFiniteLossError(iteration, losses, last_checkpoint)

                optimizer.zero_grad(set_to_none=True)
                precision.backward(total, optimizer)
                if clip:
                    precision.unscale(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, clip)
                precision.step(optimizer)
                lr_now = optimizer.param_groups[0]["lr"]
                scheduler.step()

                metrics.step(iteration, losses, lr_now, data_time, lambda: devices.memory_mb(device))
                done = iteration + 1
                if done % checkpoint_cfg["period"] == 0 or done == max_iter or stop_agreed:
                    last_checkpoint = save_checkpoint(done) or last_checkpoint
                if stop_agreed and done < max_iter:
                    distributed.barrier()  # rank 0's checkpoint is on disk before any rank stops
                    reason = stop.requested or "a stop signal on another rank"
                    raise TrainingStopped(done, max_iter, str(manager.path(done)), reason)
    finally:
        metrics.close()

    if not context.is_main:
        return None
    state_dict = {
        key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()
    }
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
        "iters_per_epoch": iters_per_epoch,
        "train_images": len(dataset),
        "train_data_sha256": data_fingerprint,
        "resume_changes": resume_changes,
        "final_losses": losses,
        "unreadable_images_replaced": bad_images.problems,
        "last_checkpoint": str(last_checkpoint) if last_checkpoint else None,
        "torch": str(torch.__version__),
        "config": {"model": job.model_cfg, "train": train, "runtime": runtime},
    }
    return {"state_dict": state_dict, "metrics": metrics.rows, "record": record}
