"""Mixed precision per device: autocast plus loss scaling, or apex O1.

`runtime.amp`: {enabled, backend: torch|apex, dtype: float16|bfloat16, opt_level: O1,
loss_scale: dynamic|<number>}.

| device | dtype    | loss scaling                                                         |
|--------|----------|----------------------------------------------------------------------|
| npu    | float16  | torch_npu's `torch_npu.npu.amp.GradScaler` (reads the overflow flag) |
| cuda   | float16  | `torch.amp.GradScaler("cuda")`                                       |
| any    | bfloat16 | none: bf16 has fp32's range                                          |
| cpu    | float16  | refused: CPU autocast is bf16 only here                              |

A numeric `loss_scale` is truly static: an overflowing step is still detected and skipped, and the scale is
put back to that number after every step, never halved or grown. apex keeps its own scaler (see `initialize`)
and needs CUDA or an NPU: elsewhere it is refused when the run starts.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from frcnn_pipeline.config import AmpParams
from frcnn_pipeline.errors import UserFacingError

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_INITIAL_SCALE = 2.0**16
APEX_DEVICES = ("cuda", "npu")  # NVIDIA's apex, and Ascend's


class AmpUnavailableError(UserFacingError, RuntimeError):
    """Mixed precision was asked for in a form this machine cannot provide."""


class LossScaler:
    """fp16 loss scaling around a GradScaler (torch's, or torch_npu's on NPU): dynamic, or truly static.

    Static: both GradScalers refuse growth_factor=1 / backoff_factor=1, and torch_npu's `dynamic=False`
    neither checks for overflow nor skips the step. So the scaler stays in its checking mode (an overflowing
    step is skipped) and `update(new_scale=...)` puts the static scale back instead of backing off or growing.
    """

    def __init__(self, grad_scaler: Any, static_scale: float | None):
        self.grad_scaler = grad_scaler
        self.static_scale = static_scale

    def backward(self, loss: torch.Tensor) -> None:
        self.grad_scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        self.grad_scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step, skipped when the gradients overflowed; then the scale update."""
        self.grad_scaler.step(optimizer)
        self.grad_scaler.update(new_scale=self.static_scale)

    def state_dict(self) -> dict[str, Any]:
        return self.grad_scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # torch_npu's scaler also needs "dynamic" (torch's ignores it): a checkpoint written on another device
        # kind resumes too. Ours always checks for overflow, so it is True.
        self.grad_scaler.load_state_dict({**state, "dynamic": True})


def build_loss_scaler(device_type: str, loss_scale: str | float) -> LossScaler:
    """The fp16 loss scaler for `device_type` ("npu", "cuda", ...), dynamic or static (`loss_scale`)."""
    static = loss_scale != "dynamic"
    initial = float(loss_scale) if static else DEFAULT_INITIAL_SCALE
    if device_type == "npu":
        # Ascend 910 (Atlas training series) saturates fp16 overflow at ±65504 instead of producing inf, so
        # a scaler that only looks for inf/NaN never sees it. torch_npu's GradScaler (Ascend/pytorch,
        # torch_npu/npu/amp/grad_scaler.py) clears the device's float-status flag in scale() unless the chip
        # runs in INF_NAN mode, and its unscale calls torch._amp_foreach_non_finite_check_and_unscale_, whose
        # NPU kernel (Ascend/op-plugin, op_plugin/ops/aclops/AmpForeachNonFiniteCheckAndUnscaleKernelNpu.cpp)
        # reads that flag (npu_get_float_status) in saturation mode; overflowing steps are skipped. Its
        # constructor takes no device and adds `dynamic` (False: no overflow check at all, never used here).
        grad_scaler = _npu_grad_scaler_class()(init_scale=initial, dynamic=True)
    else:
        grad_scaler = torch.amp.GradScaler(device_type, init_scale=initial)
    return LossScaler(grad_scaler, initial if static else None)


def _npu_grad_scaler_class():
    try:
        return importlib.import_module("torch_npu.npu.amp").GradScaler
    except (ImportError, AttributeError) as error:
        raise AmpUnavailableError(
            f"runtime.amp with float16 on npu needs torch_npu's loss scaler torch_npu.npu.amp.GradScaler, "
            f"which cannot be imported ({error}). Install the torch_npu build that matches torch, or set "
            "runtime.amp.enabled: false."
        ) from error


def _check_config(amp: AmpParams, device_type: str) -> None:
    # The schema checked each key; what remains is what this model or this device cannot run.
    if amp.opt_level == "O2":
        raise ValueError(
            "runtime.amp.opt_level O2 is not supported: apex O2 casts the whole model and every floating "
            "input (the target boxes too) to fp16, while this model normalises images, builds anchors, "
            "encodes boxes and computes its losses in fp32. Use runtime.amp.opt_level: O1 (apex), or "
            "runtime.amp.backend: torch (autocast with an fp32 model, the default)."
        )
    if amp.enabled and amp.backend == "apex" and device_type not in APEX_DEVICES:
        # apex's loss scaler and its O1 casts run CUDA (or, Ascend's build, NPU) kernels: on CPU the run would
        # stop at its first step, after the data and the model were loaded.
        raise AmpUnavailableError(
            f"runtime.amp.backend is 'apex', which needs a CUDA GPU or an Ascend NPU, but this run's "
            f"device is {device_type}. Set runtime.amp.backend: torch (bfloat16 autocast on CPU), or "
            "runtime.amp.enabled: false."
        )
    if amp.enabled and device_type == "cpu" and amp.dtype == "float16":
        raise AmpUnavailableError(
            "runtime.amp.dtype float16 is not supported on CPU: use bfloat16, or runtime.amp.enabled: false"
        )


class MixedPrecision:
    """Wraps the forward (autocast) and the backward/step (loss scaling) of one training step."""

    def __init__(self, amp: AmpParams, device: torch.device):
        _check_config(amp, device.type)
        self.enabled = amp.enabled
        self.backend = amp.backend
        self.device = device
        self.dtype = _DTYPES[amp.dtype]
        self.opt_level = amp.opt_level
        self.loss_scale = amp.loss_scale
        self._apex = None
        self.scaler: LossScaler | None = None
        if not self.enabled:
            return
        if self.backend == "apex":
            self._apex = _import_apex_amp()
        elif self.dtype == torch.float16:
            self.scaler = build_loss_scaler(device.type, self.loss_scale)

    def describe(self) -> str:
        """One line for logs and reports: the precision and the loss scaling in use."""
        if not self.enabled:
            return "fp32 (runtime.amp.enabled: false)"
        if self._apex is not None:
            return f"apex {self.opt_level}, loss scale {self.loss_scale}"
        dtype = str(self.dtype).removeprefix("torch.")
        if self.scaler is None:
            return f"{dtype} autocast on {self.device.type}, no loss scaling"
        kind = "dynamic" if self.scaler.static_scale is None else f"static {self.scaler.static_scale:g}"
        scaler = type(self.scaler.grad_scaler)
        scaler_name = f"{scaler.__module__}.{scaler.__name__}"
        return f"{dtype} autocast on {self.device.type}, {kind} loss scale ({scaler_name})"

    def initialize(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """apex patches the model and optimizer (before DDP wrapping); torch.amp needs nothing.

        With apex a numeric loss_scale is apex's static scale, which (unlike ours) does not skip overflowing
        steps (apex/amp/scaler.py: only a dynamic scaler checks for overflow).
        """
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
            self.scaler.backward(loss)
        else:
            loss.backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale (before clipping); apex did it on leaving scale_loss."""
        if self.scaler is not None:
            self.scaler.unscale(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
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
