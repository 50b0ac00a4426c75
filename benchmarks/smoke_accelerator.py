"""Hardware smoke test: does the project's training and evaluation path run on this machine's accelerator?

    python benchmarks/smoke_accelerator.py --device npu          # Ascend: torch_npu, CANN, HCCL for >1 device
    python benchmarks/smoke_accelerator.py --device cuda         # NVIDIA: CUDA, NCCL for >1 device
    python benchmarks/smoke_accelerator.py --device npu --nproc-per-node 8   # the 8-device path as well
    python benchmarks/smoke_accelerator.py --device cpu --iterations 2 --eval-images 2 --size 320x480

1. Checks the installation: torch, torchvision, torch_npu and CANN (npu), torchvision_npu, apex, the devices
   and whether torchvision's NMS / RoIAlign kernels run on the device.
2. Trains the env's model (default `--env npu1p`/`gpu1p`: detectron2's R-50-FPN, random init) for
   `--iterations` at `--size` with the env's mixed precision, through the same training loop as
   `kedro run --pipeline train`, on synthetic images and boxes generated in a temporary folder.
3. Evaluates `--eval-images` more synthetic images through the evaluate pipeline's inference.
4. Prints images/s, peak memory, the detection ops and precision, the loss per iteration and a verdict line,
   and writes a JSON report. Attach the report and the console log to an issue.

Exit status: 0 PASS, 1 FAIL (the reason is printed and in the report), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from frcnn_pipeline.config import InferenceParams
from frcnn_pipeline.engine import devices
from frcnn_pipeline.engine.amp import MixedPrecision
from frcnn_pipeline.engine.checkpoint import load_checkpoint
from frcnn_pipeline.engine.installation import describe_detection_ops, describe_installation
from frcnn_pipeline.engine.trainer import train_detector
from frcnn_pipeline.evaluation.inference import run_inference
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.parameters import resolved_sections

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 80  # COCO's head size
DEFAULT_ENVS = {"npu": "npu1p", "cuda": "gpu1p", "cpu": "npu1p"}
# --tiny: a small R-18 for checking this script itself (tests), not the hardware.
TINY_MODEL = {
    "backbone": {"depth": 18, "norm": "frozen_bn", "freeze_at": 0, "fpn_channels": 16},
    "anchors": {"sizes": [16, 32, 64, 128, 256]},
    "rpn": {"batch_size_per_image": 64, "pre_nms_topk_train": 200, "post_nms_topk_train": 50},
    "roi_heads": {"batch_size_per_image": 32, "fc_dim": 32},
}


class SmokeFailure(Exception):
    """A check failed: the run stops with this reason as the verdict."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("npu", "cuda", "cpu"), required=True)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--eval-images", type=int, default=10)
    parser.add_argument("--size", default="800x1333", help="synthetic image HxW, also the model's input size")
    parser.add_argument("--env", help="Kedro env whose model/train/runtime/evaluate parameters are used")
    parser.add_argument("--batch", type=int, help="images per device (default: the env's)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="devices to train and evaluate on")
    parser.add_argument("--num-workers", type=int, help="DataLoader workers (default: the env's)")
    parser.add_argument(
        "--precision",
        choices=("env", "fp32", "fp16", "bf16"),
        default="env",
        help="env: the env's runtime.amp (float16 becomes bfloat16 on CPU)",
    )
    parser.add_argument("--tiny", action="store_true", help="a small R-18 instead of the env's model")
    parser.add_argument("--report", help="JSON report path (default: smoke_<device>_<time>.json here)")
    args = parser.parse_args(argv)
    try:
        height, width = (int(side) for side in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be HxW, e.g. 800x1333, got {args.size!r}")
    if min(height, width, args.iterations, args.eval_images, args.nproc_per_node) < 1:
        parser.error("--size, --iterations, --eval-images and --nproc-per-node must be positive")
    args.height, args.width = height, width
    args.env = args.env or DEFAULT_ENVS[args.device]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    args.report = Path(args.report or f"smoke_{args.device}_{stamp}.json")
    if args.report.exists():
        parser.error(
            f"{args.report} exists: choose another --report (an earlier report is never overwritten)"
        )
    return args


class RecordCollector(logging.Handler):
    """Keeps the project's log records: the detection-ops choice (logged once) and every warning."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("frcnn_pipeline.layers") or record.levelno >= logging.WARNING:
            self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")


# --------------------------------------------------------------------------------------------- configuration


def env_parameters(env: str) -> dict[str, Any]:
    """The parameters `kedro run --env ENV` would use, validated, every key left out at its default."""
    if not (PROJECT_ROOT / "conf" / env).is_dir():
        raise SmokeFailure(f"--env {env}: no folder conf/{env} in {PROJECT_ROOT}")
    return resolved_sections(env, conf_source=PROJECT_ROOT / "conf")


def precision_config(amp: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """runtime.amp for this run, and a note when it differs from the env's."""
    amp = dict(amp)
    if args.precision == "fp32":
        return {**amp, "enabled": False}, "--precision fp32"
    if args.precision in ("fp16", "bf16"):
        dtype = "float16" if args.precision == "fp16" else "bfloat16"
        return {**amp, "enabled": True, "backend": "torch", "dtype": dtype}, f"--precision {args.precision}"
    if args.device == "cpu" and amp.get("enabled") and amp.get("dtype") == "float16":
        return {**amp, "dtype": "bfloat16"}, "the env's float16 becomes bfloat16 on CPU"
    return amp, f"the env's runtime.amp ({args.env})"


def smoke_configs(params: dict[str, Any], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    model = copy.deepcopy(params["model"])
    if args.tiny:
        for section, values in TINY_MODEL.items():
            model[section] = {**model.get(section, {}), **values}
    short, long = min(args.height, args.width), max(args.height, args.width)
    model["input"] = {**model["input"], "min_size_train": [short], "min_size_test": short, "max_size": long}
    if model["input"].get("fixed_size"):
        # Static shapes: one square padded size that holds the images (the card's 1344 for 800x1333).
        divisibility = model["input"].get("size_divisibility") or 32
        side = math.ceil(long / divisibility) * divisibility
        model["input"]["fixed_size"] = [side, side]

    train = copy.deepcopy(params["train"])
    train["run_name"] = "smoke"
    if args.batch:
        train["images_per_device"] = args.batch
    train["solver"].update(max_iter=args.iterations, epochs=None, steps=[], step_epochs=None)
    train["checkpoint"] = {"dir": str(workdir / "checkpoints"), "period": args.iterations, "keep_last": 1}
    train["checkpoint"]["resume"] = False
    train.update(log_period=1, metrics_dir=str(workdir / "metrics"))

    runtime = copy.deepcopy(params["runtime"])
    runtime.update(device=args.device, nproc_per_node=args.nproc_per_node, num_nodes=1, node_rank=0)
    runtime.update(master_addr="127.0.0.1", master_port=0)
    if args.num_workers is not None:
        runtime["num_workers"] = args.num_workers
    runtime["amp"], precision_note = precision_config(runtime.get("amp") or {}, args)

    inference = dict(params.get("evaluate", {}).get("inference", {}))
    return {
        "model": model,
        "train": train,
        "runtime": runtime,
        "inference": InferenceParams.parse(inference, "evaluate.inference"),
        "precision_note": precision_note,
    }


# -------------------------------------------------------------------------------------------------- the data


def write_synthetic_images(folder: Path, count: int, height: int, width: int, seed: int):
    """`count` JPEGs of noise with 1-5 filled rectangles each, and their images/annotations tables.

    Not the demo dataset (frcnn_pipeline.data.demo): that draws square images of 4 shapes, and this run needs
    COCO's HxW (800x1333) and 80 classes.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for box_index in range(int(rng.integers(1, 6))):
            w, h = (
                rng.integers(max(4, width // 16), max(5, width // 3)),
                rng.integers(max(4, height // 16), max(5, height // 3)),
            )
            x1, y1 = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
            pixels[y1 : y1 + h, x1 : x1 + w] = rng.integers(0, 256, 3, dtype=np.uint8)
            label = int(rng.integers(0, NUM_CLASSES))
            annotations.append(
                {
                    "annotation_id": image_id * 10 + box_index,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "label": label,
                    "x1": float(x1),
                    "y1": float(y1),
                    "x2": float(x1 + w),
                    "y2": float(y1 + h),
                    "area": float(w * h),
                    "iscrowd": False,
                }
            )
        path = folder / f"{image_id:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        images.append(
            {
                "image_id": image_id,
                "file_name": path.name,
                "path": str(path),
                "width": width,
                "height": height,
            }
        )
    return pd.DataFrame(images), pd.DataFrame(annotations)


def calibrate_frozen_norms(model: nn.Module, images: list[torch.Tensor]) -> int:
    """Give each FrozenBatchNorm2d its input's per-channel mean and variance on one synthetic batch.

    A random init leaves frozen norms at identity, so 0-255 inputs (std 1) grow layer after layer and R-50's
    losses start in the hundreds. Pretrained weights carry such statistics; this stands in for them, so that
    the smoke run meets realistic magnitudes (and fp16 its real range). Returns the number of norms set.
    """

    def set_statistics(norm: FrozenBatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        features = inputs[0].float()
        norm.running_mean.copy_(features.mean(dim=(0, 2, 3)))
        norm.running_var.copy_(features.var(dim=(0, 2, 3)))

    norms = [module for module in model.modules() if isinstance(module, FrozenBatchNorm2d)]
    hooks = [norm.register_forward_pre_hook(set_statistics) for norm in norms]
    try:
        with torch.no_grad():
            model.eval()
            model.backbone(model.transform(images)[0].tensors)
    finally:
        for hook in hooks:
            hook.remove()
    return len(norms)


def read_images(paths: list[str]) -> list[torch.Tensor]:
    images = []
    for path in paths:
        with Image.open(path) as file:
            images.append(torch.from_numpy(np.asarray(file.convert("RGB")).copy()).permute(2, 0, 1))
    return images


# ------------------------------------------------------------------------------------------------- the checks


def train_check(configs: dict[str, Any], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    train, runtime = configs["train"], configs["runtime"]
    per_step = train["images_per_device"] * args.nproc_per_node
    images, annotations = write_synthetic_images(
        workdir / "train", per_step * 2, args.height, args.width, seed=0
    )
    torch.manual_seed(int(runtime.get("seed", 0)))
    model = build_model(configs["model"], NUM_CLASSES)
    calibrated = calibrate_frozen_norms(model, read_images(images["path"].tolist()[:per_step]))
    initial = {key: value.detach().clone() for key, value in model.state_dict().items()}
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    del model
    started = time.perf_counter()
    result = train_detector(
        images, annotations, NUM_CLASSES, configs["model"], train, runtime, initial_weights=initial
    )
    wall = time.perf_counter() - started
    rows = result["metrics"]
    steady = rows[len(rows) // 4 :] or rows
    scaler_state = load_checkpoint(Path(result["record"]["last_checkpoint"]))["precision"].get("scaler", {})
    changed = [name for name in trainable if not torch.equal(result["state_dict"][name], initial[name])]
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
    }
    if len(rows) != args.iterations:
        raise SmokeFailure(f"training logged {len(rows)} of {args.iterations} iterations", report)
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
    images, _ = write_synthetic_images(workdir / "eval", args.eval_images, args.height, args.width, seed=1)
    kind = configs["runtime"]["device"]
    device = torch.device(kind, 0) if kind != "cpu" else torch.device("cpu")
    devices.memory_mb(device)  # resets the accelerator's peak
    started = time.perf_counter()
    records = run_inference(
        state_dict,
        configs["model"],
        NUM_CLASSES,
        images["path"].tolist(),
        runtime=configs["runtime"],
        options=configs["inference"],
    )
    wall = time.perf_counter() - started
    failed = [record["error"] for record in records if record["error"]]
    detections = [len(record["scores"]) for record in records if not record["error"]]
    report = {
        "images": len(records),
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


def run(args: argparse.Namespace, report: dict[str, Any]) -> str:
    """Fill `report` step by step; return the PASS reason or raise SmokeFailure."""
    report["installation"] = describe_installation(args.device)
    try:
        kind = devices.resolve_device_kind(args.device)
        devices.check_device_count(kind, args.nproc_per_node)
    except devices.DeviceUnavailableError as error:
        raise SmokeFailure(f"device: {error}") from error
    device = devices.setup_device(kind, 0)
    module = devices.device_module(device)
    report["devices"] = {
        "kind": kind,
        "count": devices.device_count(kind),
        "name": module.get_device_name(0) if module is not None else platform.processor() or "cpu",
        "used": args.nproc_per_node,
        "distributed_backend": devices.dist_backend(kind) if args.nproc_per_node > 1 else None,
    }
    report["detection_ops"] = describe_detection_ops(device)

    params = env_parameters(args.env)
    with tempfile.TemporaryDirectory(prefix="frcnn_smoke_") as tmp:
        workdir = Path(tmp)
        configs = smoke_configs(params, args, workdir)
        precision = MixedPrecision(configs["runtime"]["amp"], device)
        report["precision"] = {"description": precision.describe(), "source": configs["precision_note"]}
        report["config"] = {key: configs[key] for key in ("model", "train", "runtime")}
        try:
            report["train"] = train_check(configs, args, workdir)
        except SmokeFailure as failure:
            report["train"] = failure.args[1] if len(failure.args) > 1 else {}
            raise SmokeFailure(f"train: {failure.args[0]}") from failure
        state_dict = report["train"].pop("state_dict")
        try:
            report["eval"] = eval_check(state_dict, configs, args, workdir)
        except SmokeFailure as failure:
            report["eval"] = failure.args[1] if len(failure.args) > 1 else {}
            raise SmokeFailure(f"eval: {failure.args[0]}") from failure
    train = report["train"]
    return (
        f"trained {train['iterations']} iterations ({report['precision']['description']}) on "
        f"{args.nproc_per_node} {kind} device(s), losses finite, {train['trainable_tensors_changed']} of "
        f"{train['trainable_tensors']} trainable tensors updated; evaluated {report['eval']['images']} images"
    )


# ------------------------------------------------------------------------------------------------- reporting


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
    if "detection_ops" in report:
        lines.append(f"detection ops: {json.dumps(report['detection_ops'])}")
    if "precision" in report:
        lines.append(f"precision: {report['precision']['description']} ({report['precision']['source']})")
    model = "R-18 (--tiny)" if args.tiny else f"the {args.env} env's model"
    train = report.get("train") or {}
    init = train.get("initialisation", "random")
    lines.append(f"model: {model}, images {args.height}x{args.width}, {NUM_CLASSES} classes, {init}")
    if train.get("iterations"):
        lines += [
            f"train: {train['iterations']} iterations of {train['images_per_iteration']} images in "
            f"{train['wall_s']} s; {train['images_per_s']} images/s (median, first quarter left out); "
            f"first iteration {train['first_iteration_s']} s; peak memory {train['peak_memory_mb']} MiB",
            "total loss per iteration: " + " ".join(f"{value:.4f}" for value in train["total_loss"]),
            f"final loss scale: {train['final_loss_scale'] or 'none (no fp16 loss scaling)'}",
        ]
    evaluation = report.get("eval") or {}
    if evaluation.get("images"):
        lines.append(
            f"eval: {evaluation['images']} images in {evaluation['wall_s']} s "
            f"({evaluation['images_per_s_including_setup']} images/s including model set-up), "
            f"{evaluation['detections_per_image']} detections per image, "
            f"peak memory {evaluation['peak_memory_mb']} MiB"
        )
    for record in report.get("log", []):
        lines.append(f"log: {record}")
    return lines


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Atomically: a partial report never replaces nothing with half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    collector = RecordCollector()
    logging.getLogger("frcnn_pipeline").addHandler(collector)
    report: dict[str, Any] = {"command": [sys.executable, *sys.argv], "arguments": {**vars(args)}}
    report["arguments"]["report"] = str(args.report)
    report["started_at"] = datetime.now().isoformat(timespec="seconds")
    try:
        reason = run(args, report)
        passed = True
    except SmokeFailure as failure:
        passed, reason = False, str(failure.args[0])
    except Exception as error:  # a smoke test reports whatever stopped the run
        passed, reason = False, f"{type(error).__name__}: {error}"
        report["traceback"] = traceback.format_exc()
    finally:
        logging.getLogger("frcnn_pipeline").removeHandler(collector)
    report["log"] = collector.records
    report["verdict"] = "PASS" if passed else "FAIL"
    report["reason"] = reason
    write_report(args.report, report)
    for line in summary_lines(report, args):
        print(line)
    if "traceback" in report:
        print(report["traceback"], file=sys.stderr)
    print(f"report: {args.report} (attach it and this console log to an issue)")
    print(f"VERDICT: {report['verdict']}: {reason}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
