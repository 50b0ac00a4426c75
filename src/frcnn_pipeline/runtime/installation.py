"""What is installed for an accelerator: torch, torchvision, torch_npu and CANN, torchvision_npu, apex, and
which detection-op kernels run on a device. For bug reports (benchmarks/smoke_accelerator.py); imports nothing
that is absent.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import platform
from pathlib import Path
from typing import Any

import torch
import torchvision

import frcnn_pipeline
from frcnn_pipeline.layers import backend, kernel_report
from frcnn_pipeline.runtime import devices

ENVIRONMENT_VARIABLES = (
    "ASCEND_TOOLKIT_HOME",
    "ASCEND_HOME_PATH",
    "ASCEND_RT_VISIBLE_DEVICES",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
)


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cann_version() -> dict[str, str | None]:
    """CANN's version: torch_npu.utils.get_cann_version (torch_npu's API; "" before CANN 8.1.RC1), else the
    toolkit's `<arch>-linux/ascend_toolkit_install.info` under ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH."""
    with contextlib.suppress(ImportError, AttributeError, RuntimeError):
        version = importlib.import_module("torch_npu.utils").get_cann_version(module="CANN")
        if version:
            return {"version": version, "source": "torch_npu.utils.get_cann_version"}
    homes = [os.environ.get("ASCEND_TOOLKIT_HOME"), os.environ.get("ASCEND_HOME_PATH")]
    homes += ["/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann"]
    for home in filter(None, homes):
        for info in sorted(Path(home).glob("*-linux/ascend_toolkit_install.info")):
            for line in info.read_text(errors="replace").splitlines():
                if line.startswith("version="):
                    return {"version": line.split("=", 1)[1].strip(), "source": str(info)}
    return {"version": None, "source": "not found (is the CANN environment sourced?)"}


def describe_installation(device_kind: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "frcnn_pipeline": frcnn_pipeline.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torchvision": torchvision.__version__,
        "torch_npu": _distribution_version("torch_npu") or _distribution_version("torch-npu"),
        "torchvision_npu": None,
        "apex": importlib.util.find_spec("apex") is not None,
        "environment": {name: os.environ.get(name) for name in ENVIRONMENT_VARIABLES},
    }
    if importlib.util.find_spec("torchvision_npu") is not None:
        info["torchvision_npu"] = _distribution_version("torchvision_npu") or "present"
    if device_kind == "npu":
        info["cann"] = cann_version()
        info["npu_install_hint"] = devices.npu_install_hint()
    return info


def probe_torchvision_ops(device: torch.device) -> dict[str, str]:
    """Whether torchvision's NMS and RoIAlign kernels run on `device` (on NPU they need torchvision_npu).

    An op with no kernel registered for the device is not run: torch_npu would run it on the CPU through its
    fallback, which only warns. An op that runs must leave its result on `device`.
    """
    probes = {
        "nms": lambda: torchvision.ops.nms(
            torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]], device=device),
            torch.tensor([0.9, 0.8], device=device),
            0.5,
        ),
        "roi_align": lambda: torchvision.ops.roi_align(
            torch.rand(1, 1, 8, 8, device=device),
            torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]], device=device),
            output_size=2,
            aligned=True,
        ),
    }
    results = {}
    for name, probe in probes.items():
        if not backend.has_torchvision_kernel(name, device.type):
            results[name] = f"none: no torchvision::{name} kernel is registered for {device.type}"
            continue
        try:
            output = probe()
        except (RuntimeError, NotImplementedError) as error:
            results[name] = f"none: {str(error).splitlines()[0][:200]}"
            continue
        if output.device == device:
            results[name] = "torchvision kernel"
        else:
            results[name] = f"none: its result is on {output.device}, not {device} (it ran elsewhere)"
    return results


def describe_detection_ops(device: torch.device) -> dict[str, Any]:
    """torchvision's kernels that run on `device`, and the implementation each of the project's detection ops
    takes there and why (frcnn_pipeline.layers.backend; on NPU that runs the RoIAlign parity probe)."""
    # The backend first: on NPU it imports torchvision_npu, which registers torchvision's NPU kernels.
    layers = kernel_report.describe(device)
    return {"torchvision": probe_torchvision_ops(device), "frcnn_pipeline.layers": layers}
