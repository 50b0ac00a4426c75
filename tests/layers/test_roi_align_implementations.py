"""What both of our RoIAlign implementations (the portable op, the CPU training op) promise alike: other
output sizes and sampling ratios, half-precision features computed in float32 whatever autocast says, an exact
adjoint in float64, and no RoIs. Tolerances as in test_portable_roi_align.py."""

from __future__ import annotations

import pytest
import torch
from roi_align_cases import CHANNELS, cpu_training_roi_align, features_at, forward_backward, rois_at
from torchvision.ops import roi_align as tv_roi_align

from frcnn_pipeline.layers.portable_roi_align import portable_roi_align

IMPLEMENTATIONS = pytest.mark.parametrize(
    "roi_align", [portable_roi_align, cpu_training_roi_align], ids=["portable", "cpu_training"]
)


@IMPLEMENTATIONS
def test_rectangular_output_and_other_sampling_ratio(roi_align):
    generator = torch.Generator().manual_seed(1)
    features, rois = features_at(8, generator), rois_at(8, generator)
    for aligned in (False, True):
        grad_output = torch.randn(len(rois), CHANNELS, 5, 3, generator=generator)
        expected, expected_grad = forward_backward(
            tv_roi_align, features, rois, (5, 3), 8, 3, aligned, grad_output
        )
        pooled, grad = forward_backward(roi_align, features, rois, (5, 3), 8, 3, aligned, grad_output)
        torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=2e-5)


@IMPLEMENTATIONS
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_are_pooled_in_float32(roi_align, dtype):
    generator = torch.Generator().manual_seed(3)
    features, rois = features_at(8, generator).to(dtype), rois_at(8, generator)
    grad_output = torch.randn(len(rois), CHANNELS, 7, 7, generator=generator).to(dtype)
    pooled, grad = forward_backward(roi_align, features, rois, 7, 8, 0, True, grad_output)
    in_float32, grad_float32 = forward_backward(
        roi_align, features.float(), rois, 7, 8, 0, True, grad_output.float()
    )
    assert pooled.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(pooled, in_float32.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_float32.to(dtype), rtol=0, atol=0)


@IMPLEMENTATIONS
def test_autocast_does_not_lower_the_precision(roi_align):
    generator = torch.Generator().manual_seed(6)
    features, rois = features_at(8, generator), rois_at(8, generator)
    grad_output = torch.randn(len(rois), CHANNELS, 7, 7, generator=generator)
    expected = forward_backward(roi_align, features, rois, 7, 8, 0, True, grad_output)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = forward_backward(roi_align, features, rois, 7, 8, 0, True, grad_output)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


@IMPLEMENTATIONS
def test_gradient_is_the_adjoint_of_the_forward(roi_align):
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(2, 2, 6, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[1, 4.0, 3.5, 20.5, 18.0], [0, -3.0, -2.0, 9.0, 11.0], [1, 0.0, 0.0, 27.0, 23.0], [0, 5, 5, 5, 9]],
        dtype=torch.float64,
    )
    for aligned in (False, True):
        assert torch.autograd.gradcheck(
            lambda f, aligned=aligned: roi_align(f, rois, (3, 2), 0.25, 0, aligned), (features,)
        )


@IMPLEMENTATIONS
def test_no_rois_give_an_empty_result_and_a_zero_gradient(roi_align):
    features = torch.randn(2, 3, 8, 8, requires_grad=True)
    pooled = roi_align(features, torch.zeros(0, 5), 7, 0.5, 0, True)
    assert pooled.shape == (0, 3, 7, 7)
    (grad,) = torch.autograd.grad(pooled.sum(), features)
    assert torch.equal(grad, torch.zeros_like(features))
