"""RoIAlign inputs that reach every rule of torchvision's kernel, for the tests of the implementations."""

from __future__ import annotations

import math

import torch

from frcnn_pipeline.layers.cpu_roi_align import cpu_roi_align
from frcnn_pipeline.layers.roi_align_sampling import RoISampling

IMAGE_HW = (160, 224)
BATCH = 3
CHANNELS = 5


def features_at(stride: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    height, width = (math.ceil(side / stride) for side in IMAGE_HW)
    return torch.randn(BATCH, CHANNELS, height, width, generator=generator, dtype=dtype)


def rois_at(stride: int, generator: torch.Generator) -> torch.Tensor:
    """Boxes in image pixels: inside, on the borders, partly and wholly outside, degenerate, tiny, and
    with sizes that are exact multiples of 7 feature pixels (where the adaptive grid's ceil is exact)."""
    height, width = IMAGE_HW

    def uniform(count: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    n = 24
    x1, y1 = uniform(n, 0, width * 0.8), uniform(n, 0, height * 0.8)
    inside = torch.stack([x1, y1, x1 + uniform(n, stride, width / 2), y1 + uniform(n, stride, height / 2)], 1)
    borders = torch.tensor(
        [[0, 0, width / 3, height / 3], [width / 2, height / 2, width, height], [0, 0, width, height]]
    )
    outside_x1, outside_y1 = uniform(n, -width / 2, 0), uniform(n, -height / 2, 0)
    partly_outside = torch.stack(
        [
            outside_x1,
            outside_y1,
            uniform(n, width * 0.5, width * 1.5),
            uniform(n, height * 0.5, height * 1.5),
        ],
        1,
    )
    beyond = 3.0 * stride  # more than one feature pixel away: every sample counts zero
    wholly_outside = torch.tensor(
        [
            [width + beyond, 10, width + 2 * beyond, 40],
            [10, -2 * beyond, 40, -beyond],
            [-2 * beyond, -2 * beyond, -beyond, -beyond],
        ]
    )
    x, y = uniform(6, 0, width), uniform(6, 0, height)
    span = uniform(6, 0, 50)
    degenerate = torch.stack([x, y, x, y + span], 1)  # zero width
    degenerate[2:4] = torch.stack([x[2:4], y[2:4], x[2:4] + span[2:4], y[2:4]], 1)  # zero height
    degenerate[4:] = torch.stack([x[4:], y[4:], x[4:], y[4:]], 1)  # a point
    tiny = torch.stack([x, y, x + uniform(6, 0, stride / 2), y + uniform(6, 0, stride / 2)], 1)
    side = 7.0 * stride
    exact = torch.tensor(
        [
            [0, 0, side, side],
            [stride, 2 * stride, stride + 2 * side, 2 * stride + side],
            [0, 0, 3 * side, 3 * side],
        ]
    )
    boxes = torch.cat([inside, borders, partly_outside, wholly_outside, degenerate, tiny, exact])
    batch_index = torch.randint(0, BATCH, (len(boxes), 1), generator=generator).float()
    return torch.cat([batch_index, boxes], dim=1)


def forward_backward(op, features, rois, output_size, stride, ratio, aligned, grad_output=None):  # noqa: PLR0917
    features = features.detach().requires_grad_(True)
    pooled = op(features, rois, output_size, 1.0 / stride, ratio, aligned)
    if grad_output is None:
        return pooled, None
    (grad,) = torch.autograd.grad(pooled, features, grad_output)
    return pooled, grad


def cpu_training_roi_align(  # noqa: PLR0917 (torchvision.ops.roi_align's signature)
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """`cpu_roi_align` with torchvision's arguments."""
    sampling = RoISampling.of(features, output_size, spatial_scale, sampling_ratio, aligned)
    return cpu_roi_align(features, rois, sampling)
