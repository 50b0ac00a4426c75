"""RoIAlign from gathers and sums, with torchvision's semantics, on any device torch runs on.

Written by hand because no library has it: torchvision's own Python RoIAlign
(`ops.roi_align._roi_align`) needs torch.compile, leaves out the kernel's rule that samples more than a
pixel outside the map count zero, and materialises [RoIs, C, 7, 7, H, W] for adaptive sampling.
The kernel's rules and the taps come from `roi_align_sampling`: each bin is a weighted sum over
2·grid_h rows × 2·grid_w columns of taps, gathered from the features.
"""

from __future__ import annotations

import torch
from torch import Tensor

from frcnn_pipeline.layers.roi_align_sampling import RoISampling


def portable_roi_align(  # noqa: PLR0917 (torchvision.ops.roi_align's signature)
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """torchvision.ops.roi_align's result; differentiable w.r.t. `features` (not `rois`, like torchvision)."""
    sampling = RoISampling.of(features, output_size, spatial_scale, sampling_ratio, aligned)
    return _RoIAlign.apply(features, rois, sampling)


# The batched products as the ATen op: apex O1 replaces torch.bmm and Tensor.bmm with wrappers that cast
# their inputs to float16 (apex/amp/lists/torch_overrides.py), autocast or not; the backward's float16
# product would then meet its float32 buffer in index_add_, which refuses mixed dtypes.
_bmm = torch.ops.aten.bmm


class _RoIAlign(torch.autograd.Function):
    """Forward gathers the taps; backward scatters the gradient into one buffer, chunk by chunk.

    Both run in float32 (float64 for float64 features) whatever the features' dtype, with autocast off and
    past apex O1's patches (`_bmm`): either would turn the matrix products into float16/bfloat16 ones.
    """

    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, sampling: RoISampling) -> Tensor:
        with torch.autocast(features.device.type, enabled=False):
            return _RoIAlign._forward(ctx, features, rois, sampling)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        with torch.autocast(grad_output.device.type, enabled=False):
            return _RoIAlign._backward(ctx, grad_output), None, None

    @staticmethod
    def _forward(ctx, features: Tensor, rois: Tensor, sampling: RoISampling) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.sampling, ctx.feature_dtype = sampling, features.dtype
        channels = features.shape[1]
        flat = features.permute(0, 2, 3, 1).to(sampling.dtype).reshape(-1, channels)
        output = flat.new_zeros((len(rois), *sampling.pooled, channels))
        for chunk in sampling.chunks(rois):
            k, pooled_w, taps_x, pooled_h, taps_y = chunk.index.shape
            values = flat.index_select(0, chunk.index.flatten())
            along_x = _bmm(
                chunk.weight_x.reshape(k * pooled_w, 1, taps_x),
                values.view(k * pooled_w, taps_x, pooled_h * taps_y * channels),
            ).view(k, pooled_w, pooled_h, taps_y, channels)
            pooled = (along_x * chunk.weight_y[:, None, :, :, None]).sum(dim=3)  # [k, PW, PH, C]
            output[chunk.positions] = pooled.transpose(1, 2)
        return output.permute(0, 3, 1, 2).to(features.dtype, memory_format=torch.contiguous_format)

    @staticmethod
    def _backward(ctx, grad_output: Tensor) -> Tensor:
        (rois,) = ctx.saved_tensors
        sampling: RoISampling = ctx.sampling
        batch, channels, height, width = sampling.feature_shape
        grad = grad_output.permute(0, 3, 2, 1).to(sampling.dtype)  # [K, PW, PH, C]
        grad_flat = grad.new_zeros((batch * height * width, channels))
        for chunk in sampling.chunks(rois):
            k, pooled_w, taps_x, pooled_h, taps_y = chunk.index.shape
            along_y = grad[chunk.positions][:, :, :, None, :] * chunk.weight_y[:, None, :, :, None]
            spread = _bmm(
                chunk.weight_x.reshape(k * pooled_w, taps_x, 1),
                along_y.reshape(k * pooled_w, 1, pooled_h * taps_y * channels),
            )
            grad_flat.index_add_(0, chunk.index.flatten(), spread.view(-1, channels))
        grad_features = grad_flat.view(batch, height, width, channels).permute(0, 3, 1, 2)
        return grad_features.to(ctx.feature_dtype)
