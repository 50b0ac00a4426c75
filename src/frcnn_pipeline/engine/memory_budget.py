"""Refuses, at a worker's start, a training input size and batch whose step cannot fit in the device's memory.

An out-of-memory crash comes minutes (or hours) into a run, after data loading and evaluation set-up, and
often as a bare SIGKILL on CPU. The estimate here is a lower bound of a training step's memory:

- weights, their gradients and the optimizer's state, from the parameter counts of the configured model;
- the activations autograd keeps for the backward pass: every tensor the backbone, FPN, RPN head and box head
  save, counted (each storage once) by running them on the meta device at the largest padded input the
  configuration allows and the batch (shapes only: no memory, well under a second). That is the per-pixel
  part: ~690 bytes per input pixel for the default R-50-FPN, ~510 for the demo's R-18 (FPN 64, BN).
- with mixed precision the activations are counted at half their fp32 size (the least they can take).

Calibration (benchmarks/bench_memory.py): 3 real SGD steps on CPU in a fresh process with glibc's
MALLOC_MMAP_THRESHOLD_=65536 (freed memory leaves the process at once: the peak resident set follows the live
tensors), measured from before the model is built. At 320 and 576 px the peak was 1.06-1.10x this estimate
for the R-50-FPN (850 bytes per pixel measured between the two sizes, 692 counted) and 1.19-1.24x for the
demo's R-18 (565 measured, ~505 counted): the rest is proposal matching, the losses' temporaries and the
backward's gradient buffers. Left out as well: the loader's worker processes, an accelerator's context and
workspaces. So a refused run cannot fit; one that passes may still be tight.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import psutil
import torch

from frcnn_pipeline.config import ModelParams, RuntimeParams, TrainParams
from frcnn_pipeline.config.model import InputParams
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.runtime import devices

_GIB = 2**30
_FP32_BYTES = 4
_OPTIMIZER_STATES = {"sgd": 1, "adamw": 2}  # fp32 tensors per trainable parameter (SGD: the momentum)


class InsufficientMemoryError(UserFacingError, MemoryError):
    """The configured input size and batch cannot fit in the memory of the training device."""


@dataclass(frozen=True)
class StepMemory:
    """A training step's memory, lower bound, in bytes, at ``input_size`` (H, W) × ``images``."""

    input_size: tuple[int, int]
    images: int
    model_bytes: int  # weights, gradients, optimizer state
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.activation_bytes

    @property
    def bytes_per_pixel(self) -> float:
        return self.activation_bytes / (self.images * self.input_size[0] * self.input_size[1])


def largest_training_input(inputs: InputParams) -> tuple[int, int]:
    """(H, W) of the largest padded batch of one orientation that `model.input` allows in training.

    `fixed_size` pads every batch to itself. Otherwise the short side is at most the largest
    `min_size_train` and the long side at most `max_size` (each capping the other), padded up to
    `size_divisibility`. (A batch mixing landscape and portrait images, the epoch's last, can reach
    max_size x max_size.)
    """
    if inputs.fixed_size:
        height, width = inputs.fixed_size
        return int(height), int(width)
    long_side = inputs.max_size
    short_side = min(max(inputs.min_size_train), long_side)
    divisor = inputs.size_divisibility
    return math.ceil(short_side / divisor) * divisor, math.ceil(long_side / divisor) * divisor


def estimate_training_step(
    model_cfg: ModelParams,
    num_classes: int,
    images: int,
    *,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    mixed_precision: bool = False,
) -> StepMemory:
    """A lower bound (module docstring) of a training step of `images` images per device at the
    `largest_training_input` of ``model_cfg``."""
    height, width = largest_training_input(model_cfg.input)
    with torch.device("meta"):
        model = build_model(model_cfg, num_classes).train()
    states = 0 if optimizer == "sgd" and not momentum else _OPTIMIZER_STATES[optimizer]
    weights = sum(t.numel() for t in itertools.chain(model.parameters(), model.buffers()))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model_bytes = _FP32_BYTES * (weights + trainable * (1 + states))

    own = {t.untyped_storage()._cdata for t in itertools.chain(model.parameters(), model.buffers())}
    saved: dict[int, int] = {}

    def count(tensor: torch.Tensor) -> torch.Tensor:
        # Keyed by storage (its address, stable while the graph holds it): a tensor saved by several ops, or
        # its views, count once; the weights are counted above.
        storage = tensor.untyped_storage()
        if storage._cdata not in own:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    roi = model_cfg.roi_heads
    resolution = roi.pooler_resolution
    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        features = model.backbone(torch.empty(images, 3, height, width, device="meta"))
        model.rpn.head(list(features.values()))
        rois = images * roi.batch_size_per_image  # the RoIs sampled per image in training
        pooled = torch.empty(rois, model.backbone.out_channels, resolution, resolution, device="meta")
        model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    activation_bytes = sum(saved.values()) // (2 if mixed_precision else 1)
    return StepMemory((height, width), images, model_bytes, activation_bytes)


def available_memory(device: torch.device) -> tuple[int, str]:
    """(bytes this process may still allocate on ``device``, where that figure comes from)."""
    if device.type == "cpu":
        available = psutil.virtual_memory().available
        limit = _cgroup_memory_left()
        if limit is not None and limit < available:
            return limit, "left under this container's memory limit (cgroup memory.max)"
        return available, "of RAM available"
    free, _ = devices.device_module(device).mem_get_info(device)
    return free, f"free on {device}"


def _cgroup_memory_left() -> int | None:
    """memory.max - memory.current of a container's cgroup (v2) where it sets a limit; else None."""
    try:
        with open("/sys/fs/cgroup/memory.max") as limit_file, open("/sys/fs/cgroup/memory.current") as used:
            limit, current = limit_file.read().strip(), used.read().strip()
    except OSError:
        return None
    return None if limit == "max" else max(0, int(limit) - int(current))


def check_training_memory(
    model_cfg: ModelParams,
    num_classes: int,
    train: TrainParams,
    runtime: RuntimeParams,
    device: torch.device,
) -> StepMemory:
    """Raises InsufficientMemoryError when a step at the configured size and batch cannot fit on ``device``
    (on CPU, the RAM of the node's `runtime.nproc_per_node` workers together)."""
    per_device = train.images_per_device
    step = estimate_training_step(
        model_cfg,
        num_classes,
        per_device,
        optimizer=train.solver.optimizer,
        momentum=train.solver.momentum,
        mixed_precision=runtime.amp.enabled,
    )
    sharing = runtime.nproc_per_node if device.type == "cpu" else 1
    limit, source = available_memory(device)
    if step.total_bytes * sharing <= limit:
        return step
    inputs = model_cfg.input
    height, width = step.input_size
    fixed = inputs.fixed_size
    sizes = f"min_size_train {inputs.min_size_train}, max_size {inputs.max_size}"
    size_keys = f"fixed_size {fixed}" if fixed else sizes
    size_params = "model.input.fixed_size" if fixed else "model.input.max_size / min_size_train"
    needed = step.total_bytes * sharing
    workers = f" for the {sharing} CPU workers of runtime.nproc_per_node" if sharing > 1 else ""
    per_image = step.activation_bytes / per_device
    fitting_images = int((limit / sharing - step.model_bytes) // per_image) if per_image else 0
    if fitting_images >= 1:
        fix = f"lower train.images_per_device to at most {fitting_images}, or {size_params}"
    else:
        pixels = max(0, int((limit / sharing - step.model_bytes) / step.bytes_per_pixel))
        side = math.isqrt(pixels) // inputs.size_divisibility * inputs.size_divisibility
        fix = f"lower {size_params}: one image of about {side}x{side} px fits"
    raise InsufficientMemoryError(
        f"A training step at model.input {size_keys} (padded {height}x{width}) with train.images_per_device "
        f"{per_device} needs at least {needed / _GIB:.1f} GiB{workers} (activations "
        f"{step.bytes_per_pixel:.0f} bytes per pixel; weights, gradients and optimizer state "
        f"{step.model_bytes / _GIB:.1f} GiB), but {device.type} has {limit / _GIB:.1f} GiB {source}. "
        f"Fix: {fix}."
    )
