"""What smoke_accelerator.py runs: the env's configuration adapted to the smoke run, its synthetic data."""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from frcnn_pipeline.config import InferenceParams
from frcnn_pipeline.framework.parameter_docs import resolved_sections

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 80  # COCO's head size
# --tiny: a small R-18 for checking this script itself (tests), not the hardware.
TINY_MODEL = {
    "backbone": {"depth": 18, "norm": "frozen_bn", "freeze_at": 0, "fpn_channels": 16},
    "anchors": {"sizes": [16, 32, 64, 128, 256]},
    "rpn": {"batch_size_per_image": 64, "pre_nms_topk_train": 200, "post_nms_topk_train": 50},
    "roi_heads": {"batch_size_per_image": 32, "fc_dim": 32},
}
# The process group's timeout, as a multiple of --timeout: the stall watchdog acts first and names the rank;
# the process group's own timeout is the backstop (evaluation, and a watchdog that could not act).
PROCESS_GROUP_TIMEOUT_FACTOR = 2


class SmokeFailure(Exception):
    """A check failed: the run stops with this reason (and what the check measured) as the verdict."""


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
    # The shortest short side and the longest long side: every --size reaches the model as it is drawn.
    short = min(min(size) for size in args.sizes)
    long = max(max(size) for size in args.sizes)
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
    runtime["timeout_minutes"] = PROCESS_GROUP_TIMEOUT_FACTOR * args.timeout / 60
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


def write_synthetic_images(folder: Path, sizes: list[tuple[int, int]], seed: int):
    """One JPEG of noise with 1-5 filled rectangles per (height, width) in `sizes`; the images/annotations
    tables.

    Not the demo dataset (frcnn_pipeline.data.demo): that draws square images of 4 shapes, and this run needs
    COCO's sizes (800x1333) and 80 classes.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (height, width) in enumerate(sizes, start=1):
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
