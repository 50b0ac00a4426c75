"""Mixed precision: torch.amp autocast + GradScaler (fp16 on NPU/CUDA, optional bf16 on CPU), or apex O1/O2.

`runtime.amp`: {enabled, backend: torch|apex, dtype: float16|bfloat16, opt_level: O1|O2,
loss_scale: dynamic|<float>}.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from frcnn_pipeline.errors import UserFacingError

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class AmpUnavailableError(UserFacingError, RuntimeError):
    """Mixed precision was asked for in a form this machine cannot provide."""


class MixedPrecision:
    """Wraps the forward (autocast) and the backward/step (loss scaling) of one training step."""

    def __init__(self, amp: dict[str, Any] | None, device: torch.device):
        amp = amp or {}
        self.enabled = bool(amp.get("enabled", False))
        self.backend = amp.get("backend", "torch")
        self.device = device
        self.dtype = _DTYPES[amp.get("dtype", "bfloat16" if device.type == "cpu" else "float16")]
        self.opt_level = amp.get("opt_level", "O1")
        self.loss_scale = amp.get("loss_scale", "dynamic")
        self._apex = None
        if not self.enabled:
            self.scaler = None
            return
        if self.backend == "apex":
            self._apex = _import_apex_amp()
            self.scaler = None
        elif self.backend == "torch":
            if device.type == "cpu" and self.dtype == torch.float16:
                raise AmpUnavailableError("runtime.amp.dtype float16 is not supported on CPU: use bfloat16")
            # bf16 has fp32's range, so only fp16 needs loss scaling.
            needs_scaling = self.dtype == torch.float16
            init_scale = 2.0**16 if self.loss_scale == "dynamic" else float(self.loss_scale)
            self.scaler = torch.amp.GradScaler(
                device.type,
                enabled=needs_scaling,
                init_scale=init_scale,
                growth_interval=2000 if self.loss_scale == "dynamic" else 2**62,
            )
        else:
            raise ValueError(f"runtime.amp.backend must be 'torch' or 'apex', got {self.backend!r}")

    def initialize(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """apex patches the model and optimizer (before DDP wrapping); torch.amp needs nothing."""
        if self._apex is None:
            return model, optimizer
        loss_scale = self.loss_scale if self.loss_scale == "dynamic" else float(self.loss_scale)
        return self._apex.initialize(model, optimizer, opt_level=self.opt_level, loss_scale=loss_scale)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.enabled and self._apex is None):
            yield

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self._apex is not None:
            with self._apex.scale_loss(loss, optimizer) as scaled:
                scaled.backward()
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale (before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        if self._apex is not None:
            return {"apex": self._apex.state_dict()}
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._apex is not None:
            self._apex.load_state_dict(state["apex"])
        elif self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _import_apex_amp():
    try:
        return importlib.import_module("apex.amp")
    except ImportError as error:
        raise AmpUnavailableError(
            f"runtime.amp.backend is 'apex' but apex.amp cannot be imported ({error}). Build NVIDIA apex "
            "(https://github.com/NVIDIA/apex) or Ascend apex (https://gitee.com/ascend/apex) from source — "
            "PyPI's `apex` is an unrelated package — or set runtime.amp.backend: torch."
        ) from error
