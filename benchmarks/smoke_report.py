"""smoke_accelerator.py's console summary and JSON report."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from smoke_setup import NUM_CLASSES


def summary_lines(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    install = report.get("installation", {})
    cann = install.get("cann", {}).get("version") if "cann" in install else None
    lines = [
        "== frcnn_pipeline accelerator smoke test ==",
        f"installation: torch {install.get('torch')} (CUDA {install.get('torch_cuda')}), torchvision "
        f"{install.get('torchvision')}, torch_npu {install.get('torch_npu')}, CANN {cann}, torchvision_npu "
        f"{install.get('torchvision_npu')}, apex {'present' if install.get('apex') else 'absent'}",
    ]
    if "devices" in report:
        found = report["devices"]
        lines.append(f"devices: {found['count']} {found['kind']} ({found['name']}), using {found['used']}")
    lines += _detection_ops(report)
    if "precision" in report:
        lines.append(f"precision: {report['precision']['description']} ({report['precision']['source']})")
    if "watch" in report:
        watch = report["watch"]
        lines.append(
            f"watched: every training step's tensors on {watch['target_device']}; CPU fallbacks in "
            f"{watch['fallbacks']}; stalls after {watch['stall_timeout_s']:g} s without progress (process "
            f"group timeout {watch['process_group_timeout_s']:g} s)"
        )
    model = "R-18 (--tiny)" if args.tiny else f"the {args.env} env's model"
    train = report.get("train") or {}
    sizes = ", ".join(f"{height}x{width}" for height, width in args.sizes)
    init = train.get("initialisation", "random")
    lines.append(f"model: {model}, images {sizes}, {NUM_CLASSES} classes, {init}")
    if train.get("iterations"):
        lines += [
            f"train: {train['iterations']} iterations of {train['images_per_iteration']} images in "
            f"{train['wall_s']} s; {train['images_per_s']} images/s (median, first quarter left out); "
            f"first iteration {train['first_iteration_s']} s; peak memory {train['peak_memory_mb']} MiB",
            f"train image sizes: {', '.join(train['image_sizes'])}; padded batches: "
            f"{', '.join(train['batch_shapes'])}",
            "total loss per iteration: " + " ".join(f"{value:.4f}" for value in train["total_loss"]),
            f"final loss scale: {train['final_loss_scale'] or 'none (no fp16 loss scaling)'}",
        ]
    for checks in train.get("device_checks", []):
        lines.append(
            f"device checks, rank {checks['rank']}: the outputs of {checks['modules_watched']} modules in "
            f"every forward, {checks['tensors_checked_per_step']} tensors (parameters, buffers, gradients, "
            f"optimizer state) after each of {checks['steps_checked']} optimizer steps: all on "
            f"{checks['target']}"
        )
    evaluation = report.get("eval") or {}
    if evaluation.get("images"):
        per_size = ", ".join(f"{count} at {size}" for size, count in evaluation["images_per_size"].items())
        lines.append(
            f"eval: {evaluation['images']} images ({per_size}) in {evaluation['wall_s']} s "
            f"({evaluation['images_per_s_including_setup']} images/s including model set-up), "
            f"{evaluation['detections_per_image']} detections per image, "
            f"peak memory {evaluation['peak_memory_mb']} MiB"
        )
    fallbacks = report.get("fallbacks", [])
    lines.append(f"CPU fallbacks: {len(fallbacks) or 'none'}")
    for entry in fallbacks:
        lines.append(f"  {entry['op'] or '(op not named)'} during {entry['where']} [{entry['source']}]: "
                     f"{entry['message'][:300]}")  # fmt: skip
    if "stall" in report:
        lines.append(f"stall: {report['stall']['message']}")
        for state in report["stall"]["ranks"]:
            lines += [f"  rank {state['rank']} stack, innermost first:"]
            lines += [f"    {frame}" for frame in state.get("stack", [])[:12]]
    for record in report.get("log", []):
        lines.append(f"log: {record}")
    return lines


def _detection_ops(report: dict[str, Any]) -> list[str]:
    """Which implementation each detection op takes on the device, and whether torchvision's kernels run."""
    if "detection_ops" not in report:
        return []
    ops = report["detection_ops"]
    setting = report.get("config", {}).get("runtime", {}).get("detection_ops", "auto")
    lines = [f"detection ops (runtime.detection_ops: {setting}):"]
    lines += [f"  {op}: {choice}" for op, choice in ops["frcnn_pipeline.layers"].items()]
    lines.append(
        "  torchvision's own kernels: " + "; ".join(f"{op}: {r}" for op, r in ops["torchvision"].items())
    )
    return lines


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Atomically: a partial report never replaces nothing with half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    os.replace(partial, path)
