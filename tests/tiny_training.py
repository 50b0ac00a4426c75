"""Tiny detection data and configurations for engine tests (64 px images, R-18 with few channels)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from model_configs import model_params
from PIL import Image

from frcnn_pipeline.config import RuntimeParams, TrainParams
from frcnn_pipeline.engine.resume import decide_resume
from frcnn_pipeline.engine.trainer import train_detector
from frcnn_pipeline.runtime.world import WorldConfig

TINY_MODEL: dict[str, Any] = {
    "backbone": {"depth": 18, "norm": "frozen_bn", "freeze_at": 0, "fpn_channels": 16},
    "input": {
        "format": "RGB",
        "pixel_mean": [123.675, 116.28, 103.53],
        "pixel_std": [58.395, 57.12, 57.375],
        "min_size_train": [64],
        "min_size_test": 64,
        "max_size": 64,
    },
    "anchors": {"sizes": [16, 32, 64, 128, 256]},
    "rpn": {"batch_size_per_image": 64, "pre_nms_topk_train": 200, "post_nms_topk_train": 50},
    "roi_heads": {"batch_size_per_image": 32, "fc_dim": 32},
}


def merged(base: dict, **sections: dict) -> dict:
    """`base` with some keys of its sections replaced."""
    result = copy.deepcopy(base)
    for name, values in sections.items():
        result.setdefault(name, {}).update(values)
    return result


# Every anchor and every proposal is a training sample (no ignored IoU band, sample caps above the counts,
# a fixed number of proposals per image) and BN is frozen: the loss of a 2-image batch is then exactly the
# mean of the two 1-image losses, so 2 workers × 1 image must match 1 worker × 2 images, whatever the RNG.
ALL_SAMPLES_MODEL = merged(
    TINY_MODEL,
    rpn={"iou_thresholds": [0.5, 0.5], "batch_size_per_image": 10**6, "positive_fraction": 1.0,
         "post_nms_topk_train": 20},
    roi_heads={"batch_size_per_image": 10**6, "positive_fraction": 1.0},
)  # fmt: skip


def write_tiny_dataset(folder: Path, count: int, boxes_per_image: int = 2, seed: int = 0):
    """`count` 64×64 PNGs with `boxes_per_image` bright rectangles each; the images and annotations tables."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        pixels = rng.integers(0, 60, (3, 64, 64), dtype=np.uint8)
        for box_index in range(boxes_per_image):
            x1, y1 = rng.integers(0, 32, 2)
            w, h = rng.integers(14, 30, 2)
            x2, y2 = min(x1 + w, 64), min(y1 + h, 64)
            label = int(rng.integers(0, 2))
            pixels[:, y1:y2, x1:x2] = np.array((200, 60, 60) if label == 0 else (60, 200, 60), np.uint8)[
                :, None, None
            ]
            annotations.append(
                {
                    "annotation_id": image_id * 10 + box_index,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "label": label,
                    "x1": float(x1),
                    "y1": float(y1),
                    "x2": float(x2),
                    "y2": float(y2),
                    "area": float((x2 - x1) * (y2 - y1)),
                    "iscrowd": False,
                }
            )
        path = folder / f"{image_id:04d}.png"
        Image.fromarray(pixels.transpose(1, 2, 0)).save(path)
        images.append(
            {"image_id": image_id, "file_name": path.name, "path": str(path), "width": 64, "height": 64}
        )
    return pd.DataFrame(images), pd.DataFrame(annotations)


def train_from_parameters(  # noqa: PLR0917 (as train_detector)
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    num_classes: int,
    model: dict[str, Any],
    train: dict[str, Any],
    runtime: dict[str, Any],
    *args: Any,
    **kwargs: Any,
) -> dict[str, Any]:
    """`train_detector` on the `model:`, `train:` and `runtime:` sections as a run's parameters give them
    (partial dicts), validated here as the train node does, from where `decide_resume` says (as the run's
    configuration decides it before the train node runs) unless ``resume`` is given."""
    runtime_params = RuntimeParams.parse(runtime, "runtime")
    model_cfg, train_params = model_params(model), TrainParams.parse(train, "train")
    world = WorldConfig.from_runtime(runtime_params)
    if "resume" not in kwargs:
        kwargs["resume"] = decide_resume(train_params, model_cfg, world_size=world.world_size)
    return train_detector(
        images, annotations, num_classes, model_cfg, train_params, runtime_params, world, *args, **kwargs
    )


def train_config(tmp_path: Path, **solver: Any) -> dict[str, Any]:
    return {
        "run_name": "test",
        "images_per_device": 2,
        "flip_prob": 0.5,
        "max_bad_images": 0,
        "solver": {
            "optimizer": "adamw",
            "base_lr": 1e-3,
            "reference_batch_size": None,
            "momentum": 0.9,
            "betas": [0.9, 0.999],
            "weight_decay": 1e-4,
            "weight_decay_norm": 0.0,
            "weight_decay_bias": None,
            "clip_grad_norm": None,
            "max_iter": 4,
            "epochs": None,
            "warmup_iters": 2,
            "warmup_factor": 0.1,
            "gamma": 0.1,
            "steps": [3],
            "step_epochs": None,
            **solver,
        },
        "checkpoint": {"dir": str(tmp_path / "checkpoints"), "period": 100, "keep_last": 2, "resume": True},
        "log_period": 1,
        "metrics_dir": str(tmp_path / "reporting"),
    }


def runtime_config(**overrides: Any) -> dict[str, Any]:
    return {
        "device": "cpu",
        "nproc_per_node": 1,
        "num_nodes": 1,
        "node_rank": 0,
        "master_addr": "127.0.0.1",
        "master_port": 0,
        "seed": 7,
        "num_workers": 0,
        "amp": {"enabled": False},
        **overrides,
    }


def tiny_categories() -> pd.DataFrame:
    return pd.DataFrame(
        {"label": [0, 1], "category_id": [1, 2], "name": ["red", "green"], "supercategory": ["box", "box"]}
    )


def ground_truth(images: pd.DataFrame, annotations: pd.DataFrame) -> dict[str, Any]:
    """The COCO ground truth of tiny tables (as ingest's `val_ground_truth`)."""
    return {
        "images": [
            {"id": int(r.image_id), "file_name": r.file_name, "width": int(r.width), "height": int(r.height)}
            for r in images.itertuples()
        ],
        "annotations": [
            {
                "id": int(a.annotation_id),
                "image_id": int(a.image_id),
                "category_id": int(a.category_id),
                "bbox": [a.x1, a.y1, a.x2 - a.x1, a.y2 - a.y1],
                "area": a.area,
                "iscrowd": int(a.iscrowd),
            }
            for a in annotations.itertuples()
        ],
        "categories": [{"id": int(c.category_id), "name": c.name} for c in tiny_categories().itertuples()],
    }
