"""Optimizer and learning-rate schedule (detectron2's solver: linear scaling, warm-up, steps)."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from torch.utils import _foreach_utils

from frcnn_pipeline.config import SolverParams

log = logging.getLogger(__name__)

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


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


def fused_optimizer_devices() -> set[str]:
    """The device types whose fused SGD/AdamW kernels this torch has, of those this project fuses on."""
    # The list torch's optimizers check `fused=True` against (torch 2.3: cuda, xpu and the PrivateUse1
    # backend; cpu and mps from 2.4); private, and the only place torch says it.
    return _FUSED_DEVICES & set(_foreach_utils._get_fused_kernels_supported_devices())


def _fused_where_available(groups: list[dict[str, Any]]) -> dict[str, bool]:
    """``fused=True`` when every parameter lives where this torch has fused kernels; else torch's default."""
    devices = {parameter.device.type for group in groups for parameter in group["params"]}
    return {"fused": True} if devices and devices <= fused_optimizer_devices() else {}


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
