"""RoIAlign for training on CPU: torchvision's forward kernel; its backward as matrix products where cheaper.

torchvision's CPU backward recomputes every sample's bilinear weights for every channel and bin, on one
thread: 17–19% of a demo training step. A bilinear weight is a y weight times an x weight, so the
gradient of a RoI's features is A_yᵀ · G · A_x per channel (`RoISampling.separable_weights`): one batched
product over the RoIs, then one product per image over all its RoIs, on every core. The products cost
H·W per RoI and channel whatever the RoI's size, the kernel its samples per bin, so the kernel keeps the
maps that are large for their RoIs (P2 of a 1333 px image); `python benchmarks/bench_ops.py` measures both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from frcnn_pipeline.layers.roi_align_sampling import RoISampling

# The products win while the map has at most this many cells per sample of a bin (mean over the RoIs).
# Measured on 2 cores, 64 and 256 channels: 0.06–0.4× the kernel's time below 1,000, at most 0.8× up to
# 2,000, parity around 4,000–7,000; more cores favour the products.
SEPARABLE_MAX_CELLS_PER_SAMPLE = 2000


def cpu_roi_align(features: Tensor, rois: Tensor, sampling: RoISampling) -> Tensor:
    """torchvision.ops.roi_align, bit for bit; its gradient w.r.t. `features` equal to float rounding."""
    return _SeparableBackwardRoIAlign.apply(features, rois, sampling)


def separable_backward_is_cheaper(sampling: RoISampling, rois: Tensor) -> bool:
    """Whether the matrix products beat torchvision's kernel for these RoIs (see the module's docstring)."""
    if len(rois) == 0 or not torch.isfinite(rois).all():
        return False
    _, _, height, width = sampling.feature_shape
    mean_samples = sampling.samples_per_bin(rois).double().mean().item()
    return height * width <= SEPARABLE_MAX_CELLS_PER_SAMPLE * mean_samples


class _SeparableBackwardRoIAlign(torch.autograd.Function):
    """In the compute dtype with autocast off, as torchvision's autocast wrapper runs the kernel."""

    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, sampling: RoISampling) -> Tensor:
        rois = rois.to(sampling.dtype)
        ctx.save_for_backward(rois)
        ctx.sampling, ctx.feature_dtype = sampling, features.dtype
        (pooled_h, pooled_w), scale = sampling.pooled, sampling.spatial_scale
        with torch.autocast("cpu", enabled=False):
            pooled = torch.ops.torchvision.roi_align(
                features.to(sampling.dtype), rois, scale, pooled_h, pooled_w,
                sampling.sampling_ratio, sampling.aligned,
            )  # fmt: skip
        return pooled.to(features.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (rois,) = ctx.saved_tensors
        sampling: RoISampling = ctx.sampling
        grad_output = grad_output.to(sampling.dtype)
        with torch.autocast("cpu", enabled=False):
            if separable_backward_is_cheaper(sampling, rois):
                grad = _separable_backward(grad_output, rois, sampling)
            else:
                (pooled_h, pooled_w), scale = sampling.pooled, sampling.spatial_scale
                grad = torch.ops.torchvision._roi_align_backward(
                    grad_output, rois, scale, pooled_h, pooled_w, *sampling.feature_shape,
                    sampling.sampling_ratio, sampling.aligned,
                )  # fmt: skip
        return grad.to(ctx.feature_dtype), None, None


def _separable_backward(grad_output: Tensor, rois: Tensor, sampling: RoISampling) -> Tensor:
    """∂L/∂F[b] = Σ over b's RoIs r of A_y[r]ᵀ · G[r] · A_x[r], channel by channel."""
    batch, channels, height, width = sampling.feature_shape
    pooled_h, pooled_w = sampling.pooled
    images = rois[:, 0].long()
    order = torch.argsort(images, stable=True)  # each image's RoIs together, for one product per image
    rois_per_image = torch.bincount(images, minlength=batch).tolist()
    weight_y, weight_x = sampling.separable_weights(rois[order])
    count = len(rois)
    # U[r] = G[r] · A_x[r], laid out [R, PH, C, W] so that the bins of an image's RoIs stack as rows.
    along_x = torch.bmm(
        grad_output[order].permute(0, 2, 1, 3).reshape(count, pooled_h * channels, pooled_w), weight_x
    ).view(count * pooled_h, channels * width)
    grad = grad_output.new_empty((batch, height, channels * width))
    rows = [n * pooled_h for n in rois_per_image]
    for image, (weights, spread) in enumerate(
        zip(weight_y.view(count * pooled_h, height).split(rows), along_x.split(rows), strict=True)
    ):
        torch.mm(weights.t(), spread, out=grad[image])
    return grad.view(batch, height, channels, width).permute(0, 2, 1, 3).contiguous()
