"""RoIAlign dispatch: torchvision's kernel on CPU, the portable op when told; the torch_npu adapter."""

from __future__ import annotations

import importlib
import logging
import sys
import types

import pytest
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


def test_the_static_mode_refuses_the_portable_ops_adaptive_sampling():
    # Its grids follow the RoIs' sizes; the kernels sample adaptively inside, on fixed shapes.
    features, rois = _inputs(8)
    backend.configure("portable")
    with pytest.raises(
        roi_align_module.AdaptiveSamplingError, match=r"pooler_sampling_ratio: 0\).*to a fixed grid \(2"
    ):
        roi_align_module.roi_align(features, rois, 7, 0.25, 0, True, static_shapes=True)
    fixed = roi_align_module.roi_align(features, rois, 7, 0.25, 2, True, static_shapes=True)
    backend.configure("auto")
    adaptive = roi_align_module.roi_align(features, rois, 7, 0.25, 0, True, static_shapes=True)
    assert fixed.shape == adaptive.shape == (20, 3, 7, 7)


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


PATHS = ("inference", "training", "static training")


@pytest.mark.parametrize("setting", backend.SETTINGS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_with_float32_rois_on_every_path(setting, path, dtype):
    """apex O1's float16 features with float32 RoIs (torchvision's kernels refuse two dtypes): pooled in
    float32 and cast back, so the result is the float32 result of the same values, rounded once to the
    features' dtype. Tolerance 0: the same path computes both, the only difference is that rounding."""
    backend.configure(setting)
    features, rois = _inputs(3)
    features = features.to(dtype)
    grad_output = torch.randn(len(rois), 3, 7, 7, generator=torch.Generator().manual_seed(4)).to(dtype)

    static = path == "static training"

    def pooled_and_gradient(values, gradient):
        training = path != "inference"
        values = values.detach().requires_grad_(training)
        with torch.set_grad_enabled(training):
            # the static mode samples a fixed grid (the portable op's adaptive one has data-dependent shapes)
            pooled = roi_align_module.roi_align(
                values, rois, 7, 0.25, 2 if static else 0, True, static_shapes=static
            )
        return pooled, torch.autograd.grad(pooled, values, gradient)[0] if training else None

    pooled, grad = pooled_and_gradient(features, grad_output)
    expected, expected_grad = pooled_and_gradient(features.float(), grad_output.float())
    assert pooled.dtype == dtype and rois.dtype == torch.float32
    torch.testing.assert_close(pooled, expected.to(dtype), rtol=0, atol=0)
    if grad is not None:
        assert grad.dtype == dtype
        torch.testing.assert_close(grad, expected_grad.to(dtype), rtol=0, atol=0)


def test_the_portable_op_keeps_float32_products_under_apex_o1s_patches(monkeypatch):
    """apex O1 replaces torch.bmm and Tensor.bmm by wrappers that cast to float16 (on CUDA; Ascend's apex
    alike): the portable backward's product then met its float32 buffer in index_add_ and stopped."""
    backend.configure("portable")
    features, rois = _inputs(5)
    features = features.half().requires_grad_(True)
    grad_output = torch.randn(len(rois), 3, 7, 7, generator=torch.Generator().manual_seed(6)).half()
    expected = roi_align_module.roi_align(features, rois, 7, 0.25, 0, True)
    (expected_grad,) = torch.autograd.grad(expected, features, grad_output)

    def to_float16(function):  # apex's cached_cast wrapper, reduced to its cast
        def cast(*args, **kwargs):
            args = [
                arg.half() if isinstance(arg, torch.Tensor) and arg.is_floating_point() else arg
                for arg in args
            ]
            return function(*args, **kwargs)

        return cast

    monkeypatch.setattr(torch, "bmm", to_float16(torch.bmm))
    monkeypatch.setattr(torch.Tensor, "bmm", to_float16(torch.Tensor.bmm))
    assert torch.bmm(torch.ones(1, 1, 1), torch.ones(1, 1, 1)).dtype == torch.float16  # the patch holds
    pooled = roi_align_module.roi_align(features, rois, 7, 0.25, 0, True)
    (grad,) = torch.autograd.grad(pooled, features, grad_output)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)


CPU = torch.device("cpu")


def _ascend_stand_in(monkeypatch, *, swap_height_and_width: bool = False):
    """A torch_npu whose ROIAlign ops are torchvision's CPU kernels with aligned=False (roi_end_mode 0)."""

    def npu_roi_align(features, rois, scale, pooled_height, pooled_width, sample_num, roi_end_mode):  # noqa: PLR0917
        if swap_height_and_width:
            pooled_height, pooled_width = pooled_width, pooled_height
        return torch.ops.torchvision.roi_align(
            features, rois, scale, pooled_height, pooled_width, sample_num, False
        )

    def npu_roi_alignbk(grad, rois, shape, pooled_width, pooled_height, scale, sample_num, roi_end_mode):  # noqa: PLR0917
        return torch.ops.torchvision._roi_align_backward(
            grad, rois, scale, pooled_height, pooled_width, *shape, sample_num, False
        )

    fake = types.ModuleType("torch_npu")
    fake.npu_roi_align, fake.npu_roi_alignbk = npu_roi_align, npu_roi_alignbk
    monkeypatch.setitem(sys.modules, "torch_npu", fake)


def _adapter_pooling_aligned_as_not_aligned(features, rois, output_size, scale, ratio, aligned):  # noqa: PLR0917
    """An adapter kernel that gets `aligned` wrong (another roi_end_mode): aligned=True pooled as False."""
    return tv_roi_align(features, rois, output_size, scale, ratio, aligned=False)


def _kernel_missing(*args, **kwargs):
    raise NotImplementedError("Could not run 'torchvision::roi_align' with arguments from the 'NPU' backend")


@pytest.mark.parametrize("aligned", [True, False])
def test_the_parity_probe_accepts_kernels_with_the_portable_semantics(monkeypatch, aligned):
    assert roi_align_module.parity_mismatch(backend.TORCHVISION, CPU, aligned) is None
    with torch.inference_mode():  # the first call may come from evaluation's inference
        assert roi_align_module.parity_mismatch(backend.TORCHVISION, CPU, aligned) is None
    _ascend_stand_in(monkeypatch)
    if not aligned:  # torch_npu's op is documented for aligned=False only
        assert roi_align_module.parity_mismatch(backend.TORCH_NPU, CPU, aligned) is None


def test_the_parity_probe_rejects_another_rule_a_swapped_size_and_a_failing_kernel(monkeypatch):
    _ascend_stand_in(monkeypatch, swap_height_and_width=True)
    assert roi_align_module.parity_mismatch(backend.TORCH_NPU, CPU, False).startswith(
        "it fails on the parity probe: RuntimeError: Mismatch in shape"
    )
    monkeypatch.setattr(roi_align_module, "tv_roi_align", _adapter_pooling_aligned_as_not_aligned)
    mismatch = roi_align_module.parity_mismatch(backend.TORCHVISION, CPU, True)
    assert mismatch.startswith("its forward differs from the portable op's by up to")
    assert float(mismatch.split("by up to ")[1].split()[0]) > 0.1  # far beyond rounding
    assert roi_align_module.parity_mismatch(backend.TORCHVISION, CPU, False) is None

    monkeypatch.setattr(roi_align_module, "tv_roi_align", _kernel_missing)
    assert roi_align_module.parity_mismatch(backend.TORCHVISION, CPU, True) == (
        "it fails on the parity probe: NotImplementedError: Could not run 'torchvision::roi_align' with "
        "arguments from the 'NPU' backend"
    )


def _npu_choice(aligned: bool) -> str:
    """The choice on NPU, both Ascend kernels installed, with the parity probe run on CPU tensors."""
    return backend.choose(
        "roi_align",
        "npu",
        variant=f"aligned={aligned}",
        npu_native=not aligned,
        verify=lambda implementation: roi_align_module.parity_mismatch(implementation, CPU, aligned),
    )


def test_on_npu_each_aligned_setting_takes_the_first_kernel_that_passes_the_probe(monkeypatch, caplog):
    monkeypatch.setattr(backend, "_import_torchvision_npu", lambda: True)
    monkeypatch.setattr(backend, "has_torchvision_kernel", lambda op, device_type: True)
    monkeypatch.setattr(backend, "_torch_npu_available", lambda: True)
    _ascend_stand_in(monkeypatch)
    assert _npu_choice(True) == _npu_choice(False) == backend.TORCHVISION  # a faithful adapter

    # An adapter that gets aligned=True wrong: the portable op there; aligned=False keeps the adapter.
    backend.configure("auto")
    monkeypatch.setattr(roi_align_module, "tv_roi_align", _adapter_pooling_aligned_as_not_aligned)
    caplog.set_level(logging.WARNING, logger=backend.__name__)
    caplog.clear()  # the faithful adapter's choices above (logged at INFO where logging was configured)
    assert _npu_choice(True) == backend.PORTABLE
    assert _npu_choice(False) == backend.TORCHVISION
    assert [record.getMessage().split(": its")[0] for record in caplog.records] == [
        "Detection op roi_align on npu: torchvision implementation not used"
    ]

    # An adapter that fails: torch_npu's op where it is a candidate (aligned=False), else the portable op.
    backend.configure("auto")
    monkeypatch.setattr(roi_align_module, "tv_roi_align", _kernel_missing)
    assert _npu_choice(False) == backend.TORCH_NPU
    assert _npu_choice(True) == backend.PORTABLE
