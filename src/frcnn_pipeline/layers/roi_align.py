"""RoIAlign: torchvision's kernel where the device has one, torch_npu's where it matches, else portable.

Training on CPU runs torchvision's forward kernel with a faster backward (`cpu_roi_align`).

Features and RoIs of different dtypes (apex O1 runs the convolutions in float16, the RoIs stay float32) are
pooled in the wider dtype and the result cast back to the features', as torchvision's autocast registration
does: its CPU and CUDA kernels, and torchvision_npu's, take one dtype for both.

On NPU the kernels are Ascend's (torchvision_npu's registration of torchvision's op, torch_npu's ROIAlign),
and Ascend's adapters disagree on how `aligned` maps to their `roi_end_mode` (see `_AscendRoIAlign`). So
neither is trusted by name: for each `aligned` setting alike, the first call on the device runs each
candidate on a parity probe (`parity_mismatch`: forward and backward against the portable op, on the same
device) and takes the first that matches; one that differs or fails is logged with the difference, and
the portable op runs instead. torchvision's own CPU and CUDA kernels are the reference the portable op is
tested against (tests/layers), so they are not probed.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair
from torchvision.ops import roi_align as tv_roi_align

from frcnn_pipeline.errors import UserFacingError
from frcnn_pipeline.layers import backend
from frcnn_pipeline.layers.cpu_roi_align import cpu_roi_align
from frcnn_pipeline.layers.portable_roi_align import portable_roi_align
from frcnn_pipeline.layers.roi_align_sampling import RoISampling

# A kernel with the portable op's semantics differs from it by float32 rounding (≤ 1e-5 on the probe); one
# with another rule (a half-pixel shift, another RoI end, a swapped height and width) by 0.1 or more.
PARITY_TOLERANCE = 1e-3


class AdaptiveSamplingError(UserFacingError, ValueError):
    """The static-shape mode met the portable RoIAlign's adaptive sampling, whose shapes follow the RoIs."""


def roi_align(  # noqa: PLR0917 (torchvision.ops.roi_align's signature)
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    *,
    static_shapes: bool = False,
) -> Tensor:
    """`rois`: [R, 5] (batch index, x1, y1, x2, y2) in image pixels; returns [R, C, *output_size] in the
    features' dtype.

    `static_shapes`: only ops whose shapes do not depend on the RoIs (the model's static mode); that leaves
    out the CPU training backward's products (their sample grid and per-image split follow the data), and
    the portable op's adaptive sampling (`sampling_ratio` 0: each RoI's grid follows its size), which it
    refuses (AdaptiveSamplingError). The kernels sample adaptively inside, on fixed shapes.
    """
    implementation = roi_align_implementation(features.device, aligned)
    if static_shapes and implementation == backend.PORTABLE and sampling_ratio <= 0:
        raise AdaptiveSamplingError(
            f"model.static_shapes is on, and RoIAlign (aligned={aligned}) runs the portable implementation "
            f"on {features.device.type} (see the log line 'Detection op roi_align'), whose adaptive sampling "
            "(model.roi_heads.pooler_sampling_ratio: 0) gives every RoI a sample grid of its own size. Set "
            "model.roi_heads.pooler_sampling_ratio to a fixed grid (2, as the npu envs do), or train where "
            "a RoIAlign kernel runs (runtime.detection_ops: auto with torchvision_npu on NPU)."
        )
    training_on_cpu = features.device.type == "cpu" and features.requires_grad and torch.is_grad_enabled()
    if implementation == backend.TORCHVISION and training_on_cpu and not static_shapes:
        sampling = RoISampling.of(features, output_size, spatial_scale, sampling_ratio, aligned)
        return cpu_roi_align(features, rois, sampling)
    return _run(implementation, features, rois, output_size, spatial_scale, sampling_ratio, aligned)


def roi_align_implementation(device: torch.device, aligned: bool) -> str:
    """backend.TORCHVISION, TORCH_NPU or PORTABLE: what RoIAlign runs on `device` (decided once a setting)."""
    return backend.choose(
        "roi_align",
        device.type,
        variant=f"aligned={aligned}",
        npu_native=not aligned,
        verify=lambda implementation: parity_mismatch(implementation, device, aligned),
    )


def _run(implementation: str, *args) -> Tensor:
    """RoIAlign by `implementation`, with torchvision.ops.roi_align's arguments."""
    if implementation == backend.PORTABLE:
        return portable_roi_align(*args)
    if implementation == backend.TORCH_NPU:
        return _ascend_roi_align(*args)
    return _torchvision_roi_align(*args)


def _torchvision_roi_align(  # noqa: PLR0917 (torchvision.ops.roi_align's signature)
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    dtype = torch.promote_types(features.dtype, rois.dtype)
    pooled = tv_roi_align(
        features.to(dtype), rois.to(dtype), output_size, spatial_scale, sampling_ratio, aligned=aligned
    )
    return pooled.to(features.dtype)


def parity_mismatch(implementation: str, device: torch.device, aligned: bool) -> str | None:
    """Why `implementation` cannot stand in for the portable op on `device` with this `aligned`: its forward
    or its gradient differs by more than PARITY_TOLERANCE, or it raises (a missing kernel, another output
    shape); None when it matches.

    The probe: RoIs inside, across the border and smaller than a pixel, on two images, with adaptive sampling
    and a pooled size that is not square, in float32 with autocast off.
    """
    # The first call may come from inside evaluation's inference mode: the probe needs autograd.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(2, 3, 10, 12, generator=generator).to(device)
        rois = torch.tensor(
            [
                [0, 4.0, 6.0, 30.0, 25.0],
                [1, -8.0, -4.0, 21.0, 50.0],
                [0, 10.2, 10.7, 10.9, 11.1],
                [1, 0, 0, 47, 39],
            ],
            device=device,
        )
        grad_output = torch.randn(len(rois), 3, 3, 5, generator=generator).to(device)
        config = ((3, 5), 0.25, 0, aligned)
        expected = _pooled_and_gradient(portable_roi_align, features, rois, config, grad_output)
        try:
            actual = _pooled_and_gradient(partial(_run, implementation), features, rois, config, grad_output)
        except (RuntimeError, NotImplementedError) as error:
            return f"it fails on the parity probe: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    for part, ours, reference in zip(("forward", "gradient"), actual, expected, strict=True):
        difference = (ours.float() - reference).abs().max().item()
        if not difference <= PARITY_TOLERANCE:  # NaN included
            return (
                f"its {part} differs from the portable op's by up to {difference:.3g} on the parity probe "
                f"(tolerance {PARITY_TOLERANCE:g}, aligned={aligned})"
            )
    return None


def _pooled_and_gradient(op, features: Tensor, rois: Tensor, config: tuple, grad_output: Tensor):
    features = features.detach().requires_grad_(True)
    pooled = op(features, rois, *config)
    (grad,) = torch.autograd.grad(pooled, features, grad_output)
    return pooled.detach(), grad


def _ascend_roi_align(  # noqa: PLR0917 (torchvision.ops.roi_align's signature)
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """torch_npu's op: a candidate for aligned=False only (`npu_native`), the mode it is documented for."""
    config = (_pair(output_size), float(spatial_scale), int(sampling_ratio))
    return _AscendRoIAlign.apply(features, rois, config)


class _AscendRoIAlign(torch.autograd.Function):
    """torch_npu's ROIAlign / ROIAlignGrad with roi_end_mode 0: torchvision's aligned=False.

    CANN documents roi_end_mode 0 as "compatible with align = False for all frameworks" and 2 as PyTorch's
    align=True (hicann/ops-cv, objdetect/roi_align/op_graph/roi_align_proto.h); `sample_num` 0 is
    adaptive, ceil(roi size / pooled size). The gradient op does not document its modes and Ascend's own
    adapters disagree on aligned=True (torchvision_npu passes 2 forward and 1 backward,
    torch_npu.contrib.module.ROIAlign 3 and 3), so this op is a candidate for aligned=False only, and like
    torchvision_npu's kernel it is used only once it passes the parity probe (`parity_mismatch`).
    Float32 with autocast off, as torch_npu.contrib.module.ROIAlign feeds it. Schemas (op-plugin):
    npu_roi_align(features, rois, spatial_scale, pooled_height, pooled_width, sample_num, roi_end_mode);
    npu_roi_alignbk(grad, rois, xdiff_shape, pooled_width, pooled_height, spatial_scale, sample_num,
    roi_end_mode): width before height.
    """

    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, config: tuple[tuple[int, int], float, int]) -> Tensor:
        import torch_npu

        (pooled_h, pooled_w), scale, ratio = config
        ctx.save_for_backward(rois)
        ctx.config, ctx.shape, ctx.dtype = config, list(features.shape), features.dtype
        with torch.autocast(features.device.type, enabled=False):
            output = torch_npu.npu_roi_align(
                features.float(), rois.float(), scale, pooled_h, pooled_w, max(ratio, 0), 0
            )
        return output.to(features.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        import torch_npu

        (rois,) = ctx.saved_tensors
        (pooled_h, pooled_w), scale, ratio = ctx.config
        with torch.autocast(grad_output.device.type, enabled=False):
            grad = torch_npu.npu_roi_alignbk(
                grad_output.float(), rois.float(), ctx.shape, pooled_w, pooled_h, scale, max(ratio, 0), 0
            )
        return grad.to(ctx.dtype), None, None
