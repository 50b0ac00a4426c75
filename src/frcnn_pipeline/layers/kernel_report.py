"""Which implementation of each detection op runs on a device, and why (for reports: the installation
report, the accelerator smoke test)."""

import torch

from frcnn_pipeline.layers import backend
from frcnn_pipeline.layers.roi_align import roi_align_implementation


def describe(device: torch.device) -> dict[str, str]:
    """Each detection op's implementation on `device` and why, as the model calls them."""
    backend.choose("nms", device.type)
    for aligned in (True, False):  # the RoIAlign choice runs its parity check per setting
        roi_align_implementation(device, aligned)
    return backend.chosen(device)
