"""The one place that knows about accelerators: resolves npu/cuda/cpu, imports torch_npu lazily.

Asking for a device that is not there is an error that says what is missing and how to fix it, never a silent
CPU run.
"""

from __future__ import annotations

import importlib
import os

import torch

from frcnn_pipeline.errors import UserFacingError

DEVICE_KINDS = ("auto", "cpu", "cuda", "npu")
DIST_BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}

NPU_INSTALL_HINT = (
    "Install Ascend's CANN toolkit and driver, then the torch_npu build that matches torch "
    f"{torch.__version__.split('+')[0]} (`pip install torch_npu=={torch.__version__.split('+')[0]}` or "
    "`pip install -e '.[npu]'`), source the CANN environment "
    "(`source /usr/local/Ascend/ascend-toolkit/set_env.sh`) and check `npu-smi info`. "
    "To train without an NPU, run with `--env base` (CPU), `--env cpu2p`, or `--env gpu1p`."
)


class DeviceUnavailableError(UserFacingError, RuntimeError):
    """The configured device kind (or the number of devices asked for) is not available on this machine."""


def _import_torch_npu():
    try:
        return importlib.import_module("torch_npu")
    except ImportError as error:
        raise DeviceUnavailableError(
            f"runtime.device is 'npu' but torch_npu cannot be imported ({error}). {NPU_INSTALL_HINT}"
        ) from error


def _npu_count() -> int:
    _import_torch_npu()
    return torch.npu.device_count()


def _is_available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available()
    try:
        return _npu_count() > 0
    except DeviceUnavailableError:
        return False


def resolve_device_kind(kind: str) -> str:
    """Return "npu", "cuda" or "cpu": "auto" picks the first available in that order; others must be there."""
    if kind not in DEVICE_KINDS:
        raise ValueError(f"runtime.device must be one of {DEVICE_KINDS}, got {kind!r}")
    if kind == "auto":
        return next(k for k in ("npu", "cuda", "cpu") if _is_available(k))
    if kind == "npu":
        if _npu_count() == 0:
            visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "<unset>")
            raise DeviceUnavailableError(
                f"runtime.device is 'npu': torch_npu is installed but sees no NPU "
                f"(ASCEND_RT_VISIBLE_DEVICES={visible}). {NPU_INSTALL_HINT}"
            )
    elif kind == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "runtime.device is 'cuda' but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). "
            "Install a CUDA build of torch and an NVIDIA driver, or run with `--env base` (CPU)."
        )
    return kind


def device_count(kind: str) -> int:
    """Devices of a resolved kind on this machine (CPU: one, shared by every CPU worker)."""
    if kind == "npu":
        return _npu_count()
    if kind == "cuda":
        return torch.cuda.device_count()
    return 1


def check_device_count(kind: str, nproc_per_node: int) -> None:
    """One worker per accelerator: fail early when the env asks for more devices than are visible."""
    available = device_count(kind)
    if kind != "cpu" and nproc_per_node > available:
        raise DeviceUnavailableError(
            f"runtime.nproc_per_node is {nproc_per_node} but only {available} {kind} device(s) are visible. "
            f"Lower runtime.nproc_per_node (e.g. `--env {kind}1p`) or make the devices visible."
        )


def setup_device(kind: str, local_rank: int) -> torch.device:
    """Bind this process to its device (local_rank-th accelerator) and return it."""
    if kind == "npu":
        _import_torch_npu()
        torch.npu.set_device(local_rank)
        return torch.device("npu", local_rank)
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def dist_backend(kind: str) -> str:
    """hccl on NPU, nccl on CUDA, gloo on CPU."""
    return DIST_BACKENDS[kind]


def device_module(device: torch.device):
    """torch.cuda / torch.npu for an accelerator (they share an API), None on CPU."""
    return None if device.type == "cpu" else getattr(torch, device.type)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so timings measure work rather than launches."""
    module = device_module(device)
    if module is not None:
        module.synchronize(device)


def memory_mb(device: torch.device) -> float:
    """Peak accelerator memory allocated since the last call (MiB); on CPU the process's peak resident set."""
    module = device_module(device)
    if module is None:
        import resource

        # ru_maxrss is KiB on Linux.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = module.max_memory_allocated(device) / 2**20
    module.reset_peak_memory_stats(device)
    return peak


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's torch RNG states (CPU and its accelerator), for exact resume."""
    states = {"cpu": torch.get_rng_state()}
    module = device_module(device)
    if module is not None:
        states[device.type] = module.get_rng_state(device)
    return states


def set_rng_states(device: torch.device, states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    module = device_module(device)
    if module is not None and device.type in states:
        module.set_rng_state(states[device.type], device)
