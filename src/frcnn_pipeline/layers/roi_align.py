"""RoIAlign: torchvision's kernel where the device has one (a portable implementation follows)."""

from __future__ import annotations

from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align


def roi_align(  # noqa: PLR0917 (torchvision.ops.roi_align's signature)
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """`rois`: [R, 5] (batch index, x1, y1, x2, y2) in image pixels; returns [R, C, *output_size]."""
    return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=aligned)
