"""Optimizer and learning-rate schedule (detectron2's solver: linear scaling, warm-up, steps)."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from frcnn_pipeline.config import SolverParams

log = logging.getLogger(__name__)

_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
)  # fmt: skip


def scaled_lr(base_lr: float, total_batch: int, reference_batch: int | None) -> float:
    """Linear scaling rule: `base_lr` was tuned for `reference_batch` images per step; None: as given."""
    if reference_batch is None:
        return base_lr
    return base_lr * total_batch / reference_batch


def _is_norm(module: nn.Module) -> bool:
    # detectron2/torchvision FrozenBatchNorm2d has no trainable parameters, so it never reaches here.
    return isinstance(module, _NORM_TYPES)


def parameter_groups(
    model: nn.Module, weight_decay: float, weight_decay_norm: float, weight_decay_bias: float | None
) -> list[dict[str, Any]]:
    """Trainable parameters grouped by weight decay: none on norm layers; biases optionally apart."""
    decay: dict[float, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if _is_norm(module):
                value = weight_decay_norm
            elif name == "bias" and weight_decay_bias is not None:
                value = weight_decay_bias
            else:
                value = weight_decay
            decay.setdefault(value, []).append(parameter)
    return [{"params": params, "weight_decay": value} for value, params in decay.items()]


def build_optimizer(
    model: nn.Module, solver: SolverParams, lr: float, *, loss_scaled: bool = False
) -> torch.optim.Optimizer:
    """`train.solver.optimizer`: "sgd" (the card's recipe) or "adamw" (learns much faster on the CPU demo).

    `loss_scaled`: a GradScaler steps it (float16). SGD is then not fused: torch's fused SGD, given the
    scaler's overflow flag on the first step, skips the update but leaves its new momentum buffer
    uninitialised, and the next step adds that garbage to the weights (measured with torch 2.14 on CPU;
    tests/engine/test_solver.py). The first step is where a dynamic scale of 2^16 overflows. Fused AdamW
    skips cleanly.
    """
    groups = parameter_groups(model, solver.weight_decay, solver.weight_decay_norm, solver.weight_decay_bias)
    implementation = _fused_where_available(groups)
    if solver.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=lr,
            momentum=solver.momentum,
            nesterov=solver.nesterov,
            **({} if loss_scaled else implementation),
        )
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(solver.betas), **implementation)


# torch's fused optimizer kernels (one call per step) for these devices, where the installed torch has them:
# CUDA's from torch 2.3 (SGD; AdamW earlier), CPU's from 2.4. On CPU torch's default is a Python loop over
# every tensor, which took 15% of the CPU demo's iteration (AdamW, benchmarks/bench_demo.py). NPU: torch's
# default (torch_npu's fused kernels are not used here).
_FUSED_DEVICES = {"cpu", "cuda"}


def has_fused_kernels(device_type: str) -> bool:
    """Whether this torch's optimizers step with ``fused=True`` on ``device_type`` (torch 2.3: cuda only of
    the two this project fuses on; cpu from 2.4). torch says so only in a private list, so one step of a
    one-element SGD asks its optimizers themselves."""
    parameter = torch.zeros(1, device=device_type, requires_grad=True)
    parameter.grad = torch.ones_like(parameter)
    try:
        torch.optim.SGD([parameter], lr=0.1, fused=True).step()
    except RuntimeError:
        return False
    return True


def _fused_where_available(groups: list[dict[str, Any]]) -> dict[str, bool]:
    """``fused=True`` when every parameter lives where this torch has fused kernels; else torch's default."""
    devices = {parameter.device.type for group in groups for parameter in group["params"]}
    fused = devices and devices <= _FUSED_DEVICES and all(map(has_fused_kernels, devices))
    return {"fused": True} if fused else {}


def lr_milestones(solver: SolverParams, iters_per_epoch: int) -> list[int]:
    """LR step iterations: `steps` (iterations) or `step_epochs` (epochs, converted with the epoch length)."""
    if solver.step_epochs is not None:
        return [epoch * iters_per_epoch for epoch in solver.step_epochs]
    return list(solver.steps)


def lr_factor(
    iteration: int, milestones: list[int], gamma: float, warmup_iters: int, warmup_factor: float
) -> float:
    """The scaled LR's factor at `iteration`: linear warm-up from `warmup_factor`, ×gamma per milestone."""
    factor = gamma ** sum(iteration >= milestone for milestone in milestones)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, solver: SolverParams, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration."""
    milestones = lr_milestones(solver, iters_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda iteration: lr_factor(
            iteration, milestones, solver.gamma, solver.warmup_iters, solver.warmup_factor
        ),
    )


def max_iterations(solver: SolverParams, iters_per_epoch: int) -> int:
    """`max_iter` (iterations) or `epochs` × the epoch length."""
    if solver.epochs is not None:
        return math.ceil(solver.epochs * iters_per_epoch)
    return solver.max_iter
