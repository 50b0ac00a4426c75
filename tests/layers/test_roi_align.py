"""RoIAlign dispatch: torchvision's kernel on CPU, the portable op when told; the torch_npu adapter."""

from __future__ import annotations

import importlib
import sys
import types

import torch
from torchvision.ops import roi_align as tv_roi_align

from frcnn_pipeline.layers import backend
from frcnn_pipeline.layers.cpu_roi_align import cpu_roi_align
from frcnn_pipeline.layers.portable_roi_align import portable_roi_align

# The package exports the function under the module's name.
roi_align_module = importlib.import_module("frcnn_pipeline.layers.roi_align")


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 3, 12, 16, generator=generator)
    corners = torch.rand(20, 2, generator=generator) * 48
    sizes = torch.rand(20, 2, generator=generator) * 30
    batch = torch.randint(0, 2, (20, 1), generator=generator).float()
    return features, torch.cat([batch, corners, corners + sizes], dim=1)


def test_cpu_runs_torchvisions_kernel_and_the_portable_setting_the_portable_op(monkeypatch):
    calls = []
    monkeypatch.setattr(
        roi_align_module, "portable_roi_align", lambda *args: calls.append(args) or portable_roi_align(*args)
    )
    features, rois = _inputs()
    pooled = roi_align_module.roi_align(features, rois, 7, 0.25, 0, True)
    assert torch.equal(pooled, tv_roi_align(features, rois, 7, 0.25, 0, aligned=True)) and not calls
    backend.configure("portable")
    portable = roi_align_module.roi_align(features, rois, 7, 0.25, 0, True)
    assert len(calls) == 1
    torch.testing.assert_close(portable, pooled, rtol=1e-5, atol=1e-5)


def test_cpu_training_takes_the_faster_backward_inference_and_static_mode_torchvisions_op(monkeypatch):
    calls = []
    monkeypatch.setattr(
        roi_align_module, "cpu_roi_align", lambda *args: calls.append(args) or cpu_roi_align(*args)
    )
    features, rois = _inputs()
    features.requires_grad_(True)
    pooled = roi_align_module.roi_align(features, rois, 7, 0.25, 0, True)
    assert len(calls) == 1 and type(pooled.grad_fn).__name__ == "_SeparableBackwardRoIAlignBackward"
    with torch.no_grad():
        inferred = roi_align_module.roi_align(features, rois, 7, 0.25, 0, True)
    assert len(calls) == 1 and torch.equal(inferred, pooled)
    # The static mode keeps the kernel's backward, whose shapes do not follow the RoIs.
    static = roi_align_module.roi_align(features, rois, 7, 0.25, 0, True, static_shapes=True)
    assert len(calls) == 1 and torch.equal(static, pooled)


def test_the_torch_npu_adapter_passes_torchvisions_arguments_in_ascends_order(monkeypatch):
    """A stand-in torch_npu whose ops are torchvision's CPU kernels with aligned=False (what roi_end_mode 0
    is documented to be): a swapped height and width, or another mode, would fail here."""
    seen = {}

    def npu_roi_align(features, rois, scale, pooled_height, pooled_width, sample_num, roi_end_mode):  # noqa: PLR0917
        seen["forward"] = (features.dtype, pooled_height, pooled_width, sample_num, roi_end_mode)
        return torch.ops.torchvision.roi_align(
            features, rois, scale, pooled_height, pooled_width, sample_num, False
        )

    def npu_roi_alignbk(  # noqa: PLR0917 (torch_npu's schema)
        grad, rois, shape, pooled_width, pooled_height, scale, sample_num, roi_end_mode
    ):
        seen["backward"] = (grad.dtype, tuple(shape), pooled_width, pooled_height, sample_num, roi_end_mode)
        batch, channels, height, width = shape
        return torch.ops.torchvision._roi_align_backward(
            grad, rois, scale, pooled_height, pooled_width, batch, channels, height, width, sample_num, False
        )

    fake = types.ModuleType("torch_npu")
    fake.npu_roi_align, fake.npu_roi_alignbk = npu_roi_align, npu_roi_alignbk
    monkeypatch.setitem(sys.modules, "torch_npu", fake)

    features, rois = _inputs(1)
    half = features.half().requires_grad_(True)
    pooled = roi_align_module._AscendRoIAlign.apply(half, rois, ((5, 3), 0.25, -1))
    grad_output = torch.randn(pooled.shape, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad(pooled, half, grad_output.half())

    reference = half.detach().float().requires_grad_(True)
    expected = tv_roi_align(reference, rois, (5, 3), 0.25, 0, aligned=False)
    (expected_grad,) = torch.autograd.grad(expected, reference, grad_output.half().float())
    assert seen == {
        "forward": (torch.float32, 5, 3, 0, 0),
        "backward": (torch.float32, (2, 3, 12, 16), 3, 5, 0, 0),
    }
    assert pooled.dtype == torch.float16 and grad.dtype == torch.float16
    torch.testing.assert_close(pooled, expected.half(), rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad.half(), rtol=0, atol=0)
