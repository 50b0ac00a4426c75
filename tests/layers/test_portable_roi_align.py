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
from frcnn_pipeline.modeling.step_trace import trace_step


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


def test_channels_last_features_give_the_same_result():
    generator = torch.Generator().manual_seed(2)
    features, rois = features_at(4, generator), rois_at(4, generator)
    expected = portable_roi_align(features, rois, 7, 0.25, 0, True)
    pooled = portable_roi_align(features.to(memory_format=torch.channels_last), rois, 7, 0.25, 0, True)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


def test_chunks_give_the_same_result(monkeypatch):
    generator = torch.Generator().manual_seed(5)
    features, rois = features_at(16, generator), rois_at(16, generator)
    grad_output = torch.randn(len(rois), CHANNELS, 7, 7, generator=generator)
    whole = forward_backward(portable_roi_align, features, rois, 7, 16, 0, True, grad_output)
    monkeypatch.setattr(sampling_module, "CHUNK_ELEMENTS", 1000)  # about one RoI per chunk
    chunked = forward_backward(portable_roi_align, features, rois, 7, 16, 0, True, grad_output)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


@pytest.mark.parametrize("aligned", [False, True])
def test_a_fixed_grid_runs_the_same_ops_on_the_same_shapes_whatever_the_rois(aligned):
    """The static mode's RoIAlign: with a fixed sampling grid, forward and backward depend on the RoIs' count
    alone, and read nothing back on the host (adaptive sampling groups the RoIs by their grids)."""
    traces = []
    for seed in (7, 8):
        generator = torch.Generator().manual_seed(seed)
        features, rois = features_at(8, generator), rois_at(8, generator)
        rois = rois[torch.randperm(len(rois), generator=generator)]
        grad_output = torch.randn(len(rois), CHANNELS, 7, 7, generator=generator)
        with trace_step() as trace:
            forward_backward(portable_roi_align, features, rois, 7, 8, 2, aligned, grad_output)
        traces.append(trace)
    assert traces[0].ops == traces[1].ops and len(traces[0].ops) > 50
    assert traces[0].flagged == traces[1].flagged == []
