"""Training-time RoIAlign on CPU: torchvision's forward bit for bit, and a gradient equal to its kernel's.

Both backward paths are forced in turn (the cost rule's constant at 0 or at infinity). The products add
the same bilinear terms as the kernel in another order: gradients within atol 2e-5, rtol 1e-5 in float32
(|grad| up to ~20), as for the portable op.
"""

from __future__ import annotations

import math

import pytest
import torch
from roi_align_cases import CHANNELS, cpu_training_roi_align, features_at, forward_backward, rois_at
from torchvision.ops import roi_align as tv_roi_align

from frcnn_pipeline.layers import cpu_roi_align as cpu_module
from frcnn_pipeline.layers.cpu_roi_align import separable_backward_is_cheaper
from frcnn_pipeline.layers.roi_align_sampling import RoISampling

BACKWARD_PATHS = {"products": math.inf, "kernel": 0}


@pytest.fixture(params=list(BACKWARD_PATHS))
def backward_path(request, monkeypatch):
    monkeypatch.setattr(cpu_module, "SEPARABLE_MAX_CELLS_PER_SAMPLE", BACKWARD_PATHS[request.param])
    return request.param


def _kernel_spy(monkeypatch) -> list[int]:
    calls = []
    kernel = torch.ops.torchvision._roi_align_backward

    def spy(*args):
        calls.append(len(args[1]))
        return kernel(*args)

    monkeypatch.setattr(cpu_module.torch.ops.torchvision, "_roi_align_backward", spy)
    return calls


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_forward_is_torchvisions_and_the_gradient_equals_its_kernels(
    stride, sampling_ratio, aligned, backward_path, monkeypatch
):
    generator = torch.Generator().manual_seed(stride * 10 + sampling_ratio + int(aligned))
    features, rois = features_at(stride, generator), rois_at(stride, generator)
    grad_output = torch.randn(len(rois), CHANNELS, 7, 7, generator=generator)
    expected, expected_grad = forward_backward(
        tv_roi_align, features, rois, 7, stride, sampling_ratio, aligned, grad_output
    )
    kernel_calls = _kernel_spy(monkeypatch)
    pooled, grad = forward_backward(
        cpu_training_roi_align, features, rois, 7, stride, sampling_ratio, aligned, grad_output
    )
    assert torch.equal(pooled, expected)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=2e-5)
    assert kernel_calls == ([len(rois)] if backward_path == "kernel" else [])


def test_an_image_without_rois_gets_a_zero_gradient(backward_path):
    generator = torch.Generator().manual_seed(7)
    features, rois = features_at(8, generator), rois_at(8, generator)
    rois = rois[rois[:, 0] != 1]  # image 1 of 3 has none; the others' RoIs stay interleaved
    grad_output = torch.randn(len(rois), CHANNELS, 7, 7, generator=generator)
    _, expected_grad = forward_backward(tv_roi_align, features, rois, 7, 8, 0, True, grad_output)
    _, grad = forward_backward(cpu_training_roi_align, features, rois, 7, 8, 0, True, grad_output)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=2e-5)
    assert torch.equal(grad[1], torch.zeros_like(grad[1])) and grad[0].abs().sum() > 0


def _sampling(channels: int, height: int, width: int) -> RoISampling:
    return RoISampling((2, channels, height, width), (7, 7), 0.25, 0, True, torch.float32)


def _boxes(count: int, side: tuple[float, float], image_hw: tuple[int, int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    size = side[0] + (side[1] - side[0]) * torch.rand(count, 2, generator=generator)
    corner = torch.rand(count, 2, generator=generator) * (torch.tensor(image_hw[::-1]) - size)
    images = torch.randint(0, 2, (count, 1), generator=generator).float()
    return torch.cat([images, corner, corner + size], dim=1)


def test_the_products_take_small_maps_and_the_kernel_large_maps_with_small_rois():
    # The demo's P2: 96 px images, RoIs of 8-32 px; a COCO image's P2: 800×1333 px, RoIs of 8-32 px.
    assert separable_backward_is_cheaper(_sampling(64, 24, 24), _boxes(256, (8, 32), (96, 96)))
    assert not separable_backward_is_cheaper(_sampling(256, 200, 334), _boxes(1024, (8, 32), (800, 1333)))
    # Non-finite RoIs (a diverged RPN) go to the kernel, which defines what they give.
    boxes = _boxes(8, (8, 32), (96, 96))
    boxes[3, 2] = math.nan
    assert not separable_backward_is_cheaper(_sampling(64, 24, 24), boxes)
