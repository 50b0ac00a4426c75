"""Watches each training worker's steps for the accelerator smoke test (benchmarks/smoke_accelerator.py).

`StepAudit` is a model builder for `train_detector(build=...)`: in every worker it builds the model and then
- checks that every tensor of the step is on the device the run targets: each module's outputs (the losses
  among them) as they come out, and after every optimizer step the parameters, buffers, gradients and
  optimizer state; the first one elsewhere stops the run with `DeviceDriftError`, naming it;
- records the Python warnings that report a CPU fallback, with the module that was running (fallback_watch);
- writes the rank's progress (iteration, phase, pid) to `<folder>/rank<r>.json` at every phase of the step,
  which the launching process's watchdog reads (stall_watch.py), and lets it dump the rank's Python stack
  (SIGUSR1, faulthandler) when it stalls.
"""

from __future__ import annotations

import atexit
import faulthandler
import functools
import json
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import optimizer as optimizers

from frcnn_pipeline.config import ModelParams
from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.modeling import build_model
from frcnn_pipeline.modeling.static import StaticBatch
from frcnn_pipeline.runtime import devices, distributed
from frcnn_pipeline.runtime.fallback_watch import FallbackWarnings

# What a rank does in each phase it records (the watchdog's message quotes these).
PHASES = {
    "built": "model built, before the first forward (DDP's parameter broadcast, the first batch)",
    "forward": "forward",
    "backward": "after the forward: loss all-reduce, backward (where DDP all-reduces the gradients)",
    "optimizer step": "optimizer step",
    "stepped": "after the optimizer step: hooks (metrics, checkpoint), next batch, DDP's buffer broadcast",
}
# torch keeps an optimizer's step count on the CPU unless it is capturable or fused: not a drift.
CPU_BY_DESIGN_STATE = frozenset({"step"})
ROOT = "model"
STACK_SIGNAL = signal.SIGUSR1


class DeviceDriftError(UserFacingError, RuntimeError):
    """A tensor of the training step is not on the device the run targets."""


def rank_record_path(folder: Path, rank: int) -> Path:
    return Path(folder) / f"rank{rank}.json"


def rank_stack_path(folder: Path, rank: int) -> Path:
    return Path(folder) / f"rank{rank}.stack"


def tensors_in(value: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a module's output: tensors, mappings, sequences and plain objects (an ImageList)."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif depth >= 4 or isinstance(value, str | bytes | nn.Module):
        return
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from tensors_in(item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from tensors_in(item, f"{path}[{index}]", depth + 1)
    elif hasattr(value, "__dict__"):
        for key, item in vars(value).items():
            yield from tensors_in(item, f"{path}.{key}", depth + 1)


def off_device(named: Iterator[tuple[str, torch.Tensor]], target: torch.device) -> list[str]:
    return [f"{name} on {tensor.device}" for name, tensor in named if tensor.device != target]


@dataclass
class StepAudit:
    """A picklable model builder (spawned workers get it): `build`'s model, watched (see the module doc).

    `instrument(model)`, if given, runs after the watch is attached: tests inject a fault with it.
    """

    folder: str
    device_kind: str
    launcher_pid: int = field(default_factory=os.getpid)
    build: Callable[[ModelParams, int], nn.Module] = build_model
    instrument: Callable[[nn.Module], None] | None = None

    def __call__(self, model_cfg: ModelParams, num_classes: int) -> nn.Module:
        model = self.build(model_cfg, num_classes)
        target = devices.current_device(self.device_kind)
        _open_audits.append(RankAudit(model, Path(self.folder), target, os.getpid() != self.launcher_pid))
        if self.instrument is not None:
            self.instrument(model)
        return model


_open_audits: list[RankAudit] = []


def close_audits() -> None:
    """Remove the watch from this process (where a one-worker run trains) after its last write."""
    while _open_audits:
        _open_audits.pop().close()


class RankAudit:
    """The watch on one worker's model and optimizer steps (see the module doc); `close` removes it."""

    def __init__(self, model: nn.Module, folder: Path, target: torch.device, spawned: bool):
        self.model = model
        self.target = target
        self.rank = distributed.get_rank()
        self.path = rank_record_path(folder, self.rank)
        self.names = {id(parameter): name for name, parameter in model.named_parameters()}
        self.running: list[str] = []  # the modules whose forward is running, innermost last
        self.record: dict[str, Any] = {
            "rank": self.rank,
            "pid": os.getpid(),
            "target": str(target),
            "iteration": 0,
            "phase": "built",
            "updates": 0,
            "image_sizes": [],
            "batch_shapes": [],
            "modules_watched": 0,
            "steps_checked": 0,
            "tensors_checked_per_step": 0,
            "fallbacks": [],
            "drift": None,
        }
        self.handles = []
        for name, module in model.named_modules():
            label = name or ROOT
            self.handles.append(module.register_forward_pre_hook(functools.partial(self._enter, label)))
            self.handles.append(module.register_forward_hook(functools.partial(self._leave, label)))
        self.record["modules_watched"] = len(self.handles) // 2
        self.handles.append(optimizers.register_optimizer_step_pre_hook(self._before_step))
        self.handles.append(optimizers.register_optimizer_step_post_hook(self._after_step))
        self.warnings = FallbackWarnings(self.location).__enter__()
        self.stack_file = None
        if spawned:
            # The watchdog's SIGUSR1 dumps every thread's stack here, even with the rank stuck in C code.
            self.stack_file = rank_stack_path(folder, self.rank).open("w")
            faulthandler.register(STACK_SIGNAL, file=self.stack_file, all_threads=True)
            atexit.register(self.write)
        self.write()

    def location(self) -> str:
        where = f"rank {self.rank}, iteration {self.record['iteration']}, {self.record['phase']}"
        return f"{where}, in {self.running[-1]}" if self.running else where

    def write(self) -> None:
        self.record["fallbacks"] = list(self.warnings.found)
        self.record["updates"] += 1
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.record), encoding="utf-8")
        os.replace(partial, self.path)

    def set_phase(self, phase: str) -> None:
        self.record["phase"] = phase
        self.write()

    def close(self) -> None:
        self.write()
        for handle in self.handles:
            handle.remove()
        self.warnings.__exit__(None, None, None)
        if self.stack_file is not None:
            faulthandler.unregister(STACK_SIGNAL)
            self.stack_file.close()

    # ------------------------------------------------------------------------------------------------ hooks

    def _enter(self, name: str, module: nn.Module, args: tuple) -> None:
        self.running.append(name)
        if module is self.model and module.training:
            self.record["iteration"] += 1
            images = args[0] if args else []
            if isinstance(images, StaticBatch):  # made on the host by the loop: the images' own sizes
                self.record["image_sizes"].append(images.original_sizes.tolist())
            else:
                self.record["image_sizes"].append([list(image.shape[-2:]) for image in images])
            self.set_phase("forward")

    def _leave(self, name: str, module: nn.Module, args: tuple, output: Any) -> None:
        if self.running and self.running[-1] == name:
            self.running.pop()
        misplaced = off_device(tensors_in(output, "output"), self.target)
        if misplaced:
            self._drift(f"the output of {name}", misplaced)
        if name == "transform" and module.training and hasattr(output[0], "tensors"):  # the padded batch
            self.record["batch_shapes"].append(list(output[0].tensors.shape))
        if module is self.model and module.training:
            self.set_phase("backward")

    def _ours(self, optimizer: torch.optim.Optimizer) -> bool:
        return any(id(p) in self.names for group in optimizer.param_groups for p in group["params"])

    def _before_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        if self._ours(optimizer):
            self.set_phase("optimizer step")

    def _after_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        if self._ours(optimizer):
            self.check_step(optimizer)
            self.set_phase("stepped")

    def check_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Raises DeviceDriftError unless every tensor `step_tensors` names is on the target device."""
        tensors = list(self.step_tensors(optimizer))
        self.record["steps_checked"] += 1
        self.record["tensors_checked_per_step"] = len(tensors)
        misplaced = off_device(iter(tensors), self.target)
        if misplaced:
            self._drift("the state after the optimizer step", misplaced)

    def step_tensors(self, optimizer: torch.optim.Optimizer) -> Iterator[tuple[str, torch.Tensor]]:
        """Parameters, buffers, gradients and optimizer state, named."""
        for name, parameter in self.model.named_parameters():
            yield f"parameter {name}", parameter
            if parameter.grad is not None:
                yield f"gradient of {name}", parameter.grad
        for name, buffer in self.model.named_buffers():
            yield f"buffer {name}", buffer
        for parameter, state in optimizer.state.items():
            name = self.names.get(id(parameter), "?")
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key not in CPU_BY_DESIGN_STATE:
                    yield f"optimizer state {key!r} of {name}", value

    def _drift(self, what: str, misplaced: list[str]) -> None:
        listed = "; ".join(misplaced[:5]) + (f"; and {len(misplaced) - 5} more" if len(misplaced) > 5 else "")
        message = (
            f"{self.location()}: {what} is not all on {self.target}, the device this run targets: {listed}. "
            "An op ran elsewhere or something moved it (a CPU fallback, a .cpu() or .to() in the code)"
        )
        self.record["drift"] = message
        self.write()
        raise DeviceDriftError(message)
