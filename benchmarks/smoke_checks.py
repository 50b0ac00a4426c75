"""smoke_accelerator.py's two checks: a watched training run and an evaluation, each raising SmokeFailure."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from smoke_setup import NUM_CLASSES, SmokeFailure, calibrate_frozen_norms, read_images, write_synthetic_images
from torch import nn

from frcnn_pipeline.config import ModelParams, RuntimeParams, TrainParams
from frcnn_pipeline.engine.checkpoint import load_checkpoint
from frcnn_pipeline.engine.resume import decide_resume
from frcnn_pipeline.engine.stall_watch import StallWatchdog, read_records
from frcnn_pipeline.engine.step_audit import StepAudit, close_audits
from frcnn_pipeline.engine.trainer import train_detector
from frcnn_pipeline.evaluation.inference import run_inference
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.runtime import devices
from frcnn_pipeline.runtime.world import WorldConfig

AUDIT_FOLDER = "audit"


def size_text(size) -> str:
    return f"{size[0]}x{size[1]}"


def rank_fallbacks(workdir: Path) -> list[dict[str, Any]]:
    """The fallback warnings the training ranks recorded, with the module each came from."""
    paths = sorted((workdir / AUDIT_FOLDER).glob("rank*.json"))
    return [entry for path in paths for entry in json.loads(path.read_text(encoding="utf-8"))["fallbacks"]]


def train_check(
    configs: dict[str, Any],
    args: argparse.Namespace,
    workdir: Path,
    instrument: Callable[[nn.Module], None] | None,
    on_stall: Callable[[str, list[dict[str, Any]]], None],
) -> dict[str, Any]:
    train, runtime = configs["train"], configs["runtime"]
    model_cfg = ModelParams.parse(configs["model"], "model")
    per_step = train["images_per_device"] * args.nproc_per_node
    # A global batch of each size; each epoch trains them all (batches group by orientation).
    sizes = [size for size in args.sizes for _ in range(per_step)]
    images, annotations = write_synthetic_images(workdir / "train", sizes, seed=0)
    torch.manual_seed(int(runtime.get("seed", 0)))
    model = build_model(model_cfg, NUM_CLASSES)
    calibrated = calibrate_frozen_norms(model, read_images(images["path"].tolist()[:per_step]))
    initial = {key: value.detach().clone() for key, value in model.state_dict().items()}
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    del model
    audit_folder = workdir / AUDIT_FOLDER
    audit_folder.mkdir()
    audit = StepAudit(str(audit_folder), args.device, instrument=instrument)
    train_params, runtime_params = TrainParams.parse(train, "train"), RuntimeParams.parse(runtime, "runtime")
    world = WorldConfig.from_runtime(runtime_params)
    started = time.perf_counter()
    with StallWatchdog(audit_folder, args.nproc_per_node, args.timeout, on_stall) as watchdog:
        try:
            result = train_detector(
                images,
                annotations,
                NUM_CLASSES,
                model_cfg,
                train_params,
                runtime_params,
                world,
                initial,
                build=audit,
                resume=decide_resume(train_params, model_cfg, world_size=world.world_size),
            )
        except Exception as error:
            partial = {"error": f"{type(error).__name__}: {error}"}
            partial["ranks"] = list(read_records(audit_folder, args.nproc_per_node).values())
            if watchdog.message is not None:
                raise SmokeFailure(f"stalled: {watchdog.message}", partial) from error
            drift = next((record["drift"] for record in partial["ranks"] if record["drift"]), None)
            if drift is not None:
                raise SmokeFailure(f"device: {drift}", partial) from error
            raise
        finally:
            close_audits()
    wall = time.perf_counter() - started
    ranks = read_records(audit_folder, args.nproc_per_node)
    rows = result["metrics"]
    steady = rows[len(rows) // 4 :] or rows
    scaler_state = load_checkpoint(Path(result["record"]["last_checkpoint"]))["precision"].get("scaler", {})
    changed = [name for name in trainable if not torch.equal(result["state_dict"][name], initial[name])]
    trained_sizes = {
        tuple(size) for record in ranks.values() for batch in record["image_sizes"] for size in batch
    }
    report = {
        "iterations": len(rows),
        "images_per_iteration": per_step,
        "wall_s": round(wall, 2),
        "first_iteration_s": rows[0]["iteration_time_s"] if rows else None,
        "images_per_s": round(statistics.median(row["images_per_s"] for row in steady), 3) if rows else None,
        "peak_memory_mb": max((row["memory_mb"] for row in rows), default=None),
        "total_loss": [row["total_loss"] for row in rows],
        "losses": rows,
        "final_loss_scale": float(scaler_state["scale"]) if scaler_state.get("scale") is not None else None,
        "initialisation": f"random, {calibrated} frozen norms calibrated on one synthetic batch",
        "trainable_tensors": len(trainable),
        "trainable_tensors_changed": len(changed),
        "image_sizes": sorted(size_text(size) for size in trained_sizes),
        "batch_shapes": sorted(
            {"x".join(map(str, shape)) for r in ranks.values() for shape in r["batch_shapes"]}
        ),
        "device_checks": [
            {key: record[key] for key in ("rank", "target", "modules_watched", "steps_checked")}
            | {"tensors_checked_per_step": record["tensors_checked_per_step"]}
            for record in ranks.values()
        ],
    }
    if len(rows) != args.iterations:
        raise SmokeFailure(f"training logged {len(rows)} of {args.iterations} iterations", report)
    missing = [size_text(size) for size in args.sizes if tuple(size) not in trained_sizes]
    if missing:
        raise SmokeFailure(f"images of size {', '.join(missing)} never reached the model", report)
    if not changed:
        raise SmokeFailure(
            "training ran but no trainable weight changed: every optimizer step was skipped (fp16 overflow "
            "on every step?)",
            report,
        )
    scale = report["final_loss_scale"]
    if scale is not None and scale < 1:
        raise SmokeFailure(
            f"the fp16 loss scale collapsed to {scale:g}: gradients overflow on every step", report
        )
    report["state_dict"] = result["state_dict"]
    return report


def eval_check(
    state_dict, configs: dict[str, Any], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    sizes = [args.sizes[index % len(args.sizes)] for index in range(args.eval_images)]
    images, _ = write_synthetic_images(workdir / "eval", sizes, seed=1)
    kind = configs["runtime"]["device"]
    device = torch.device(kind, 0) if kind != "cpu" else torch.device("cpu")
    devices.memory_mb(device)  # resets the accelerator's peak
    runtime = RuntimeParams.parse(configs["runtime"], "runtime")
    started = time.perf_counter()
    records = run_inference(
        state_dict,
        ModelParams.parse(configs["model"], "model"),
        NUM_CLASSES,
        images["path"].tolist(),
        world=WorldConfig.from_runtime(runtime),
        runtime=runtime,
        options=configs["inference"],
    )
    wall = time.perf_counter() - started
    failed = [record["error"] for record in records if record["error"]]
    detections = [len(record["scores"]) for record in records if not record["error"]]
    evaluated = [size_text((record["height"], record["width"])) for record in records if not record["error"]]
    report = {
        "images": len(records),
        "images_per_size": {size: evaluated.count(size) for size in sorted(set(evaluated))},
        "wall_s": round(wall, 2),
        "images_per_s_including_setup": round(len(records) / wall, 3),
        "peak_memory_mb": round(devices.memory_mb(device), 1),
        "detections_per_image": round(statistics.mean(detections), 1) if detections else 0,
        "inference_options": configs["inference"].model_dump(),
    }
    if failed or len(records) != args.eval_images:
        raise SmokeFailure(f"evaluation returned {len(records)} records, errors: {failed[:3]}", report)
    finite = all(
        torch.isfinite(record["boxes"]).all() and torch.isfinite(record["scores"]).all() for record in records
    )
    if not finite:
        raise SmokeFailure("evaluation produced non-finite boxes or scores", report)
    return report
