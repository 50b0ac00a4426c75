"""The portable RoIAlign equals torchvision's kernel, forward and backward, on generated boxes at every level.

Tolerances: float32 features drawn from N(0, 1). The portable op adds the same bilinear products as the
kernel in another order (x taps, then y taps, then the mean), so its results differ by a few ulps of the
largest partial sum: up to ~5e-7 for the pooled values and ~1e-5 for gradients that sum many RoIs
(|grad| up to ~20), measured. Forward: atol 1e-5, rtol 1e-5; backward: atol 2e-5, rtol 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from roi_align_cases import CHANNELS, features_at, forward_backward, rois_at
from torchvision.ops import roi_align as tv_roi_align

from frcnn_pipeline.layers import roi_align_sampling as sampling_module
from frcnn_pipeline.layers.portable_roi_align import portable_roi_align


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_equals_torchvision_forward_and_backward(stride, sampling_ratio, aligned):
    generator = torch.Generator().manual_seed(stride * 10 + sampling_ratio + int(aligned))
    features, rois = features_at(stride, generator), rois_at(stride, generator)
    expected, _ = forward_backward(tv_roi_align, features, rois, 7, stride, sampling_ratio, aligned)
    grad_output = torch.randn(expected.shape, generator=generator)
    expected, expected_grad = forward_backward(
        tv_roi_align, features, rois, 7, stride, sampling_ratio, aligned, grad_output
    )
    pooled, grad = forward_backward(
        portable_roi_align, features, rois, 7, stride, sampling_ratio, aligned, grad_output
    )
    assert pooled.shape == (len(rois), CHANNELS, 7, 7) and pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=2e-5)
    # The generated boxes reach the rules that matter: zeros beyond the map, and non-zero pooled values.
    assert (expected.flatten(1).abs().amax(dim=1) == 0).any() and (expected != 0).any()


def test_rectangular_output_and_other_sampling_ratio():
    generator = torch.Generator().manual_seed(1)
    features, rois = features_at(8, generator), rois_at(8, generator)
    for aligned in (False, True):
        grad_output = torch.randn(len(rois), CHANNELS, 5, 3, generator=generator)
        expected, expected_grad = forward_backward(
            tv_roi_align, features, rois, (5, 3), 8, 3, aligned, grad_output
        )
        pooled, grad = forward_backward(
            portable_roi_align, features, rois, (5, 3), 8, 3, aligned, grad_output
        )
        torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=2e-5)


def test_channels_last_features_give_the_same_result():
    generator = torch.Generator().manual_seed(2)
    features, rois = features_at(4, generator), rois_at(4, generator)
    expected = portable_roi_align(features, rois, 7, 0.25, 0, True)
    pooled = portable_roi_align(features.to(memory_format=torch.channels_last), rois, 7, 0.25, 0, True)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_are_pooled_in_float32(dtype):
    generator = torch.Generator().manual_seed(3)
    features, rois = features_at(8, generator).to(dtype), rois_at(8, generator)
    grad_output = torch.randn(len(rois), CHANNELS, 7, 7, generator=generator).to(dtype)
    pooled, grad = forward_backward(portable_roi_align, features, rois, 7, 8, 0, True, grad_output)
    in_float32, grad_float32 = forward_backward(
        portable_roi_align, features.float(), rois, 7, 8, 0, True, grad_output.float()
    )
    assert pooled.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(pooled, in_float32.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_float32.to(dtype), rtol=0, atol=0)


def test_autocast_does_not_lower_the_precision():
    generator = torch.Generator().manual_seed(6)
    features, rois = features_at(8, generator), rois_at(8, generator)
    grad_output = torch.randn(len(rois), CHANNELS, 7, 7, generator=generator)
    expected = forward_backward(portable_roi_align, features, rois, 7, 8, 0, True, grad_output)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = forward_backward(portable_roi_align, features, rois, 7, 8, 0, True, grad_output)
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
    features, rois = features_at(16, generator), rois_at(16, generator)
    grad_output = torch.randn(len(rois), CHANNELS, 7, 7, generator=generator)
    whole = forward_backward(portable_roi_align, features, rois, 7, 16, 0, True, grad_output)
    monkeypatch.setattr(sampling_module, "CHUNK_ELEMENTS", 1000)  # about one RoI per chunk
    chunked = forward_backward(portable_roi_align, features, rois, 7, 16, 0, True, grad_output)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_no_rois_give_an_empty_result_and_a_zero_gradient():
    features = torch.randn(2, 3, 8, 8, requires_grad=True)
    pooled = portable_roi_align(features, torch.zeros(0, 5), 7, 0.5, 0, True)
    assert pooled.shape == (0, 3, 7, 7)
    (grad,) = torch.autograd.grad(pooled.sum(), features)
    assert torch.equal(grad, torch.zeros_like(features))
