"""A training process for the exit-path tests: `python exit_path_run.py FOLDER MODE NPROC NUM_WORKERS`.

MODE `error`: the model raises at its third forward (after writing the time to FOLDER/error_time);
MODE `run`: trains until a signal stops it; MODE `static`: the same in the static-shape mode.
Kedro-free, as the train node runs it, with DataLoader workers.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import torch
from tiny_training import (
    TINY_MODEL,
    merged,
    runtime_config,
    train_config,
    train_from_parameters,
    write_tiny_dataset,
)
from torch import nn

from frcnn_pipeline.config import ModelParams
from frcnn_pipeline.modeling import build_model

STATIC_MODEL = merged(
    TINY_MODEL, input={"fixed_size": [64, 64]}, static_shapes={"enabled": True, "max_gt_boxes": 4}
)


class FailsOnThirdStep(nn.Module):
    def __init__(self, model: nn.Module, error_time: Path):
        super().__init__()
        self.model, self.error_time, self.calls = model, str(error_time), 0

    def forward(self, images, targets=None):
        self.calls += 1
        if self.calls == 3:
            Path(self.error_time).write_text(str(time.time()))
            raise torch.OutOfMemoryError("simulated: out of memory at the third step")
        return self.model(images, targets)


def build(folder: Path, mode: str, model_cfg: ModelParams, num_classes: int) -> nn.Module:
    model = build_model(model_cfg, num_classes)
    return FailsOnThirdStep(model, folder / "error_time") if mode == "error" else model


def main(folder: Path, mode: str, nproc: int, num_workers: int) -> None:
    images, annotations = write_tiny_dataset(folder / "images", count=8)
    train = train_config(folder, max_iter=100_000, steps=[])
    train["images_per_device"] = 1
    runtime = runtime_config(nproc_per_node=nproc, num_threads=1, num_workers=num_workers)
    model_cfg = STATIC_MODEL if mode == "static" else TINY_MODEL
    train_from_parameters(
        images, annotations, 2, model_cfg, train, runtime, build=partial(build, folder, mode)
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
