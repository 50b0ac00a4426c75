"""Which implementation runs a detection op on a device: torchvision's kernel, Ascend's, or the portable one.

`runtime.detection_ops` chooses: ``auto`` takes, per op and device type,
1. torchvision's kernel when the dispatcher has one for the device (CPU, CUDA; on NPU once Ascend's
   `torchvision_npu` adapter, imported here if installed, has registered its kernels);
2. torch_npu's own op on NPU, for the cases whose semantics match torchvision's (the caller says which);
3. otherwise the portable implementation, ordinary tensor ops that run wherever torch runs.
``portable`` always takes 3. A caller may pass a parity check: then a kernel that torchvision did not write
(anything on a device other than CPU and CUDA: Ascend's) is taken only if it passes, else the next one
(roi_align.py says why). Each choice is logged once per worker; `describe` reports them.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from functools import cache

import torch

from frcnn_pipeline.console.detail import DETAIL

logger = logging.getLogger(__name__)

SETTINGS = ("auto", "portable")
TORCHVISION = "torchvision"
TORCH_NPU = "torch_npu"
PORTABLE = "portable"

# torchvision's own kernels: the reference the portable ops are tested against (tests/layers).
TORCHVISIONS_OWN_DEVICES = frozenset({"cpu", "cuda"})

_state = {"setting": "auto"}
# (setting, op, device type, variant, npu_native) -> (implementation, reason)
_choices: dict[tuple[str, str, str, str, bool], tuple[str, str]] = {}


def configure(setting: str) -> None:
    """Apply `runtime.detection_ops` for this process; the next call of each op logs its choice again."""
    if setting not in SETTINGS:
        raise ValueError(
            f"runtime.detection_ops is {setting!r}; expected one of {', '.join(SETTINGS)} "
            "(auto: the device's kernels where they exist, portable: pure-PyTorch ops everywhere)."
        )
    _state["setting"] = setting
    _choices.clear()


def choose(
    op: str,
    device_type: str,
    *,
    variant: str = "",
    npu_native: bool = False,
    verify: Callable[[str], str | None] | None = None,
) -> str:
    """The implementation of torchvision op `op` (e.g. "nms", "roi_align") for tensors on `device_type`.

    `variant`: the call's settings that may change the choice (e.g. "aligned=True"), decided apart.
    `npu_native`: torch_npu has an op with exactly this call's semantics (see the op's module).
    `verify(implementation)`: None if that implementation matches the portable one on this device, else why
    not; asked about the kernels torchvision did not write, once.
    Returns TORCHVISION, TORCH_NPU or PORTABLE.
    """
    key = (_state["setting"], op, device_type, variant, npu_native)
    if key not in _choices:
        choice, reason = _decide(op, device_type, npu_native, verify)
        _choices[key] = choice, reason
        call = f"{op} ({variant})" if variant else op
        logger.info(
            "Detection op %s on %s: %s implementation (%s)", call, device_type, choice, reason, extra=DETAIL
        )
    return _choices[key][0]


def chosen(device: torch.device) -> dict[str, str]:
    """Each detection op's implementation on `device` and why, of those chosen so far under this setting."""
    return {
        f"{op} ({variant})" if variant else op: f"{choice} ({reason})"
        for (setting, op, device_type, variant, _), (choice, reason) in _choices.items()
        if setting == _state["setting"] and device_type == device.type
    }


def _decide(
    op: str, device_type: str, npu_native: bool, verify: Callable[[str], str | None] | None
) -> tuple[str, str]:
    if _state["setting"] == "portable":
        return PORTABLE, "runtime.detection_ops is portable"
    if device_type == "npu":
        _import_torchvision_npu()
    candidates = []
    if has_torchvision_kernel(op, device_type):
        candidates.append((TORCHVISION, f"torchvision::{op} has a kernel for {device_type}"))
    if device_type == "npu" and npu_native and _torch_npu_available():
        candidates.append((TORCH_NPU, "torch_npu's op matches this call's semantics"))
    rejected = []
    for choice, reason in candidates:
        if verify is None or device_type in TORCHVISIONS_OWN_DEVICES:
            return choice, reason
        mismatch = verify(choice)
        if mismatch is None:
            return choice, f"{reason}; it matches the portable implementation on the parity probe"
        logger.warning(
            "Detection op %s on %s: %s implementation not used: %s", op, device_type, choice, mismatch
        )
        rejected.append(f"{choice}: {mismatch}")
    if rejected:
        return PORTABLE, "; ".join(rejected)
    return PORTABLE, f"no torchvision kernel for {device_type}"


def has_torchvision_kernel(op: str, device_type: str) -> bool:
    """Whether torchvision's op `op` has a kernel registered for `device_type` (asks the dispatcher)."""
    try:
        dispatch_key = torch._C._dispatch_key_for_device(device_type)
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"torchvision::{op}", dispatch_key)
    except RuntimeError:  # a device type the dispatcher does not know, or torchvision built without ops
        return False


@cache
def _import_torchvision_npu() -> bool:
    """Import Ascend's adapter once: importing it registers NPU kernels for torchvision's ops."""
    try:
        importlib.import_module("torchvision_npu")
    except ModuleNotFoundError:
        return False
    except Exception as error:  # installed but broken: say so, the portable ops still run
        logger.warning("torchvision_npu is installed but cannot be imported (%s); it is not used", error)
        return False
    return True


@cache
def _torch_npu_available() -> bool:
    try:
        importlib.import_module("torch_npu")
    except ImportError:
        return False
    return True
