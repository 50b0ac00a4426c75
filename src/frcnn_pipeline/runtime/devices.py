"""The one place that knows about accelerators: resolves npu/cuda/cpu, imports torch_npu lazily.

Asking for a device that is not there is an error that says what is missing and how to fix it, never a silent
CPU run.
"""

from __future__ import annotations

import importlib
import os

import torch
from torch.torch_version import TorchVersion

from frcnn_pipeline.errors import UserFacingError

DEVICE_KINDS = ("auto", "cpu", "cuda", "npu")
DIST_BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}

# Ascend's compatibility table (the Ascend/pytorch README, "Ascend Auxiliary Software"; its newest row when
# read for this project: CANN 8.5.0): the newest row for each torch release this project supports (>= 2.3).
# Each torch_npu release pins one torch release (PyPI metadata: torch_npu 2.9.0 requires torch==2.9.0+cpu,
# 2.14.0 requires torch==2.14.0.*), and torch_npu releases follow torch's with a lag.
ASCEND_COMPATIBILITY_TABLE = "https://github.com/Ascend/pytorch#ascend-auxiliary-software"
TORCH_NPU_PAIRINGS = {  # torch: (torch_npu, CANN)
    "2.3.1": ("2.3.1.post6", "8.1.RC1"),
    "2.4.0": ("2.4.0.post4", "8.1.RC1"),
    "2.5.1": ("2.5.1.post1", "8.2.RC1"),
    "2.6.0": ("2.6.0.post5", "8.5.0"),
    "2.7.1": ("2.7.1.post2", "8.5.0"),
    "2.8.0": ("2.8.0.post2", "8.5.0"),
    "2.9.0": ("2.9.0", "8.5.0"),
}


_NPU_ENVIRONMENT_HINT = (
    "Source the CANN environment (`source /usr/local/Ascend/ascend-toolkit/set_env.sh`) and check that the "
    "driver sees the NPUs (`npu-smi info`). To train without an NPU, run with `--env base` (CPU), "
    "`--env cpu2p`, or `--env gpu1p`."
)


def npu_install_hint(torch_version: str = torch.__version__) -> str:
    """How to get a working torch_npu for this torch: the known pairing, or Ascend's table and a downgrade."""
    release = torch_version.split("+", maxsplit=1)[0]
    if release in TORCH_NPU_PAIRINGS:
        torch_npu, cann = TORCH_NPU_PAIRINGS[release]
        install = (
            f"Install Ascend's CANN {cann} toolkit and driver, then `pip install torch_npu=={torch_npu}` "
            f"(the pairing for torch {release} in Ascend's table {ASCEND_COMPATIBILITY_TABLE})"
        )
    else:
        newest = max(TORCH_NPU_PAIRINGS, key=lambda version: tuple(map(int, version.split("."))))
        torch_npu, cann = TORCH_NPU_PAIRINGS[newest]
        install = (
            f"torch {release} has no torch_npu pairing known to this project: look it up in Ascend's "
            f"compatibility table {ASCEND_COMPATIBILITY_TABLE}. torch_npu releases lag torch's and each pins "
            f"one torch release, so torch may have to be downgraded to one torch_npu supports, e.g. "
            f"`pip install torch=={newest} torch_npu=={torch_npu}` with CANN {cann}"
        )
    return f"{install}. {_NPU_ENVIRONMENT_HINT}"


class DeviceUnavailableError(UserFacingError, RuntimeError):
    """The configured device kind (or the number of devices asked for) is not available on this machine."""


def _import_torch_npu():
    try:
        return importlib.import_module("torch_npu")
    except ImportError as error:
        raise DeviceUnavailableError(
            f"runtime.device is 'npu' but torch_npu cannot be imported ({error}). {npu_install_hint()}"
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
                f"(ASCEND_RT_VISIBLE_DEVICES={visible}). {_NPU_ENVIRONMENT_HINT}"
            )
    elif kind == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(no_cuda_gpu_message())
    return kind


def no_cuda_gpu_message() -> str:
    """Why torch sees no CUDA GPU: a CPU-only torch build, or a GPU build that finds no visible device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    build = ""
    if torch.version.cuda:
        build = f"CUDA {torch.version.cuda}"
    elif torch.version.hip:
        build = f"ROCm {torch.version.hip}"
    if build:
        return (
            f"runtime.device is 'cuda': torch {torch.__version__} is a {build} build but sees no GPU "
            f"(CUDA_VISIBLE_DEVICES={visible}). Check that the driver sees the GPUs (`nvidia-smi`) and "
            f"supports {build}, and that CUDA_VISIBLE_DEVICES does not hide them; or run with `--env base`."
        )
    return (
        f"runtime.device is 'cuda' but torch {torch.__version__} is a CPU-only build. Install a CUDA build "
        "of torch (https://pytorch.org/get-started/locally/) and an NVIDIA driver, or run with `--env base`."
    )


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


def current_device(kind: str) -> torch.device:
    """The device `setup_device` bound this process to: its current accelerator, or the CPU."""
    if kind == "cpu":
        return torch.device("cpu")
    return torch.device(kind, getattr(torch, kind).current_device())


# torch's DataLoader pins batches for CUDA only unless told the device (`pin_memory_device`) up to torch 2.5,
# so on NPU with torch_npu for torch 2.3/2.4 `pin_memory=True` alone pinned nothing, silently. From 2.6 it
# pins for the current accelerator when not told (pytorch#131858), and from 2.9 it ignores the argument with
# a warning (pytorch#158323).
PIN_MEMORY_DEVICE_IGNORED_FROM = (2, 9)


def loader_pinning(
    device: torch.device, pin_memory: bool, torch_version: str = torch.__version__
) -> dict[str, bool | str]:
    """The DataLoader's pinning arguments for batches bound for `device` (`runtime.pin_memory`).

    Accelerators only; the device named wherever this torch still takes `pin_memory_device`.
    """
    if device.type == "cpu" or not pin_memory:
        return {"pin_memory": False}
    if TorchVersion(torch_version) >= PIN_MEMORY_DEVICE_IGNORED_FROM:
        return {"pin_memory": True}
    return {"pin_memory": True, "pin_memory_device": device.type}


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


def set_threads_per_worker(num_threads: int | None, device: torch.device, nproc_per_node: int) -> None:
    """torch's intra-op threads for this worker: `runtime.num_threads` where set; else CPU workers split the
    cores (oversubscription slows every worker down); else torch's default."""
    if num_threads:
        torch.set_num_threads(num_threads)
    elif device.type == "cpu" and nproc_per_node > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc_per_node))
