"""The portable RoIAlign equals torchvision's kernel, forward and backward, on generated boxes at every level.

Tolerances: float32 features drawn from N(0, 1). The portable op adds the same bilinear products as the
kernel in another order (x taps, then y taps, then the mean), so its results differ by a few ulps of the
largest partial sum: up to ~5e-7 for the pooled values and ~1e-5 for gradients that sum many RoIs
(|grad| up to ~20), measured. Forward: atol 1e-5, rtol 1e-5; backward: atol 2e-5, rtol 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from frcnn_pipeline.layers import portable_roi_align as portable_module
from frcnn_pipeline.layers.portable_roi_align import portable_roi_align

IMAGE_HW = (160, 224)
BATCH = 3
CHANNELS = 5


def _features(stride: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    height, width = (math.ceil(side / stride) for side in IMAGE_HW)
    return torch.randn(BATCH, CHANNELS, height, width, generator=generator, dtype=dtype)


def _rois(stride: int, generator: torch.Generator) -> torch.Tensor:
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


def _forward_backward(op, features, rois, output_size, stride, ratio, aligned, grad_output=None):  # noqa: PLR0917
    features = features.detach().requires_grad_(True)
    pooled = op(features, rois, output_size, 1.0 / stride, ratio, aligned)
    if grad_output is None:
        return pooled, None
    (grad,) = torch.autograd.grad(pooled, features, grad_output)
    return pooled, grad


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_equals_torchvision_forward_and_backward(stride, sampling_ratio, aligned):
    generator = torch.Generator().manual_seed(stride * 10 + sampling_ratio + int(aligned))
    features, rois = _features(stride, generator), _rois(stride, generator)
    expected, _ = _forward_backward(tv_roi_align, features, rois, 7, stride, sampling_ratio, aligned)
    grad_output = torch.randn(expected.shape, generator=generator)
    expected, expected_grad = _forward_backward(
        tv_roi_align, features, rois, 7, stride, sampling_ratio, aligned, grad_output
    )
    pooled, grad = _forward_backward(
        portable_roi_align, features, rois, 7, stride, sampling_ratio, aligned, grad_output
    )
    assert pooled.shape == (len(rois), CHANNELS, 7, 7) and pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=2e-5)
    # The generated boxes reach the rules that matter: zeros beyond the map, and non-zero pooled values.
    assert (expected.flatten(1).abs().amax(dim=1) == 0).any() and (expected != 0).any()


def test_rectangular_output_and_other_sampling_ratio():
    generator = torch.Generator().manual_seed(1)
    features, rois = _features(8, generator), _rois(8, generator)
    for aligned in (False, True):
        grad_output = torch.randn(len(rois), CHANNELS, 5, 3, generator=generator)
        expected, expected_grad = _forward_backward(
            tv_roi_align, features, rois, (5, 3), 8, 3, aligned, grad_output
        )
        pooled, grad = _forward_backward(
            portable_roi_align, features, rois, (5, 3), 8, 3, aligned, grad_output
        )
        torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=2e-5)


def test_channels_last_features_give_the_same_result():
    generator = torch.Generator().manual_seed(2)
    features, rois = _features(4, generator), _rois(4, generator)
    expected = portable_roi_align(features, rois, 7, 0.25, 0, True)
    pooled = portable_roi_align(features.to(memory_format=torch.channels_last), rois, 7, 0.25, 0, True)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_are_pooled_in_float32(dtype):
    generator = torch.Generator().manual_seed(3)
    features, rois = _features(8, generator).to(dtype), _rois(8, generator)
    grad_output = torch.randn(len(rois), CHANNELS, 7, 7, generator=generator).to(dtype)
    pooled, grad = _forward_backward(portable_roi_align, features, rois, 7, 8, 0, True, grad_output)
    in_float32, grad_float32 = _forward_backward(
        portable_roi_align, features.float(), rois, 7, 8, 0, True, grad_output.float()
    )
    assert pooled.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(pooled, in_float32.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_float32.to(dtype), rtol=0, atol=0)


def test_autocast_does_not_lower_the_precision():
    generator = torch.Generator().manual_seed(6)
    features, rois = _features(8, generator), _rois(8, generator)
    grad_output = torch.randn(len(rois), CHANNELS, 7, 7, generator=generator)
    expected = _forward_backward(portable_roi_align, features, rois, 7, 8, 0, True, grad_output)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = _forward_backward(portable_roi_align, features, rois, 7, 8, 0, True, grad_output)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


def test_gradient_is_the_adjoint_of_the_forward():
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(2, 2, 6, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, -3.0, -2.0, 9.0, 11.0], [1, 4.0, 3.5, 20.5, 18.0], [1, 0.0, 0.0, 27.0, 23.0], [0, 5, 5, 5, 9]],
        dtype=torch.float64,
    )
    for aligned in (False, True):
        assert torch.autograd.gradcheck(
            lambda f, aligned=aligned: portable_roi_align(f, rois, (3, 2), 0.25, 0, aligned), (features,)
        )


def test_chunks_give_the_same_result(monkeypatch):
    generator = torch.Generator().manual_seed(5)
    features, rois = _features(16, generator), _rois(16, generator)
    grad_output = torch.randn(len(rois), CHANNELS, 7, 7, generator=generator)
    whole = _forward_backward(portable_roi_align, features, rois, 7, 16, 0, True, grad_output)
    monkeypatch.setattr(portable_module, "CHUNK_ELEMENTS", 1000)  # about one RoI per chunk
    chunked = _forward_backward(portable_roi_align, features, rois, 7, 16, 0, True, grad_output)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_no_rois_give_an_empty_result_and_a_zero_gradient():
    features = torch.randn(2, 3, 8, 8, requires_grad=True)
    pooled = portable_roi_align(features, torch.zeros(0, 5), 7, 0.5, 0, True)
    assert pooled.shape == (0, 3, 7, 7)
    (grad,) = torch.autograd.grad(pooled.sum(), features)
    assert torch.equal(grad, torch.zeros_like(features))
