"""RoIAlign: torchvision's kernel where the device has one, torch_npu's where it matches, else portable.

Training on CPU runs torchvision's forward kernel with a faster backward (`cpu_roi_align`)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair
from torchvision.ops import roi_align as tv_roi_align

from frcnn_pipeline.layers import backend
from frcnn_pipeline.layers.cpu_roi_align import cpu_roi_align
from frcnn_pipeline.layers.portable_roi_align import portable_roi_align
from frcnn_pipeline.layers.roi_align_sampling import RoISampling


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
    """`rois`: [R, 5] (batch index, x1, y1, x2, y2) in image pixels; returns [R, C, *output_size].

    `static_shapes`: only ops whose shapes do not depend on the RoIs (the model's static mode); that leaves
    out the CPU training backward's products (their sample grid and per-image split follow the data).
    """
    implementation = backend.choose("roi_align", features.device.type, npu_native=not aligned)
    if implementation == backend.TORCHVISION:
        training_on_cpu = features.device.type == "cpu" and features.requires_grad and torch.is_grad_enabled()
        if training_on_cpu and not static_shapes:
            sampling = RoISampling.of(features, output_size, spatial_scale, sampling_ratio, aligned)
            return cpu_roi_align(features, rois, sampling)
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=aligned)
    if implementation == backend.TORCH_NPU:
        config = (_pair(output_size), float(spatial_scale), int(sampling_ratio))
        return _AscendRoIAlign.apply(features, rois, config)
    return portable_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)


class _AscendRoIAlign(torch.autograd.Function):
    """torch_npu's ROIAlign / ROIAlignGrad with roi_end_mode 0: torchvision's aligned=False (unverified here).

    CANN documents roi_end_mode 0 as "compatible with align = False for all frameworks" and 2 as PyTorch's
    align=True (hicann/ops-cv, objdetect/roi_align/op_graph/roi_align_proto.h); `sample_num` 0 is
    adaptive, ceil(roi size / pooled size). The gradient op does not document its modes and Ascend's own
    adapters disagree on aligned=True (torchvision_npu passes 2 forward and 1 backward,
    torch_npu.contrib.module.ROIAlign 3 and 3), so aligned=True goes to the portable implementation.
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
