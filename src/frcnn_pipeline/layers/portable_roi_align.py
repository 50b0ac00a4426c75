"""RoIAlign from gathers and sums, with torchvision's semantics, on any device torch runs on.

Written by hand because no library has it: torchvision's own Python RoIAlign
(`ops.roi_align._roi_align`) needs torch.compile, leaves out the kernel's rule that samples more than a
pixel outside the map count zero, and materialises [RoIs, C, 7, 7, H, W] for adaptive sampling.

The rules of torchvision's kernel (csrc/ops/cpu/roi_align_common.h), per axis (y shown, x alike):
- `aligned` shifts the RoI by -0.5 pixel (detectron2's ROIAlignV2); otherwise its size is clamped to >= 1;
- bin `p` has `grid` samples at `start + p * bin + (i + 0.5) * bin / grid`, where `grid` is
  `sampling_ratio`, or `ceil(size / pooled)` for that RoI when `sampling_ratio <= 0`;
- a sample at y < -1 or y > H contributes 0; otherwise y is clamped to >= 0, and from H - 1 on it takes
  row H - 1;
- a bin is the mean of its grid_h × grid_w bilinear samples.
Bilinear weights are a product of a y weight and an x weight, so each bin is a weighted sum over
2·grid_h rows × 2·grid_w columns of taps, gathered from the features. Computed in float32 (float64 for
float64 features) and returned in the features' dtype, as torchvision's autocast wrapper does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair

# Gathered feature values held at once (64 MiB in float32): RoIs are processed in chunks of this size.
CHUNK_ELEMENTS = 1 << 24


def portable_roi_align(  # noqa: PLR0917 (torchvision.ops.roi_align's signature)
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """torchvision.ops.roi_align's result; differentiable w.r.t. `features` (not `rois`, like torchvision)."""
    sampling = _Sampling(
        tuple(features.shape),
        _pair(output_size),
        float(spatial_scale),
        int(sampling_ratio),
        bool(aligned),
        torch.float64 if features.dtype == torch.float64 else torch.float32,
    )
    return _RoIAlign.apply(features, rois, sampling)


@dataclass(frozen=True)
class _Chunk:
    """RoIs with the same sample grid: their positions in `rois` and their bilinear taps."""

    positions: Tensor  # [k]
    # [k, PW, Tx, PH, Ty]: row of each tap in the features flattened to [N * H * W, C]; x first, so that
    # the sum over the x taps is a batched matrix product on the gathered values as they lie.
    index: Tensor
    weight_y: Tensor  # [k, PH, Ty], divided by the bin's sample count
    weight_x: Tensor  # [k, PW, Tx]


@dataclass(frozen=True)
class _Sampling:
    feature_shape: tuple[int, ...]
    pooled: tuple[int, int]
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    dtype: torch.dtype

    def chunks(self, rois: Tensor) -> Iterator[_Chunk]:
        _, channels, height, width = self.feature_shape
        pooled_h, pooled_w = self.pooled
        rois = rois.to(self.dtype)
        offset = 0.5 if self.aligned else 0.0
        batch = rois[:, 0].long()
        start_x = rois[:, 1] * self.spatial_scale - offset
        start_y = rois[:, 2] * self.spatial_scale - offset
        size_x = (rois[:, 3] * self.spatial_scale - offset) - start_x
        size_y = (rois[:, 4] * self.spatial_scale - offset) - start_y
        if not self.aligned:
            size_x, size_y = size_x.clamp(min=1.0), size_y.clamp(min=1.0)
        bin_x, bin_y = _divide(size_x, pooled_w), _divide(size_y, pooled_h)
        for grid_y, grid_x, positions in self._grid_groups(size_y, size_x):
            if grid_y == 0 or grid_x == 0:  # an empty (aligned) RoI: no samples, output 0
                continue
            taps_per_roi = pooled_h * 2 * grid_y * pooled_w * 2 * grid_x * channels
            for part in positions.split(max(1, CHUNK_ELEMENTS // taps_per_roi)):
                index_y, weight_y = _bilinear_taps(
                    _sample_coordinates(start_y[part], bin_y[part], pooled_h, grid_y), height
                )
                index_x, weight_x = _bilinear_taps(
                    _sample_coordinates(start_x[part], bin_x[part], pooled_w, grid_x), width
                )
                rows = (batch[part, None, None] * height + index_y) * width
                yield _Chunk(
                    positions=part,
                    index=index_x[:, :, :, None, None] + rows[:, None, None, :, :],
                    weight_y=weight_y / (grid_y * grid_x),
                    weight_x=weight_x,
                )

    def _grid_groups(self, size_y: Tensor, size_x: Tensor) -> Iterator[tuple[int, int, Tensor]]:
        """(grid_y, grid_x, positions of the RoIs with that grid); one group unless sampling is adaptive."""
        if self.sampling_ratio > 0:
            yield self.sampling_ratio, self.sampling_ratio, torch.arange(len(size_y), device=size_y.device)
            return
        grid_y = torch.ceil(_divide(size_y, self.pooled[0])).clamp(min=0).long()
        grid_x = torch.ceil(_divide(size_x, self.pooled[1])).clamp(min=0).long()
        if len(grid_y) == 0:
            return
        # Grouped on the host: the grids decide the shapes of what follows anyway.
        grids = torch.stack([grid_y, grid_x], dim=1).cpu()
        unique_grids, group = torch.unique(grids, dim=0, return_inverse=True)
        order = torch.argsort(group, stable=True)
        counts = torch.bincount(group, minlength=len(unique_grids)).tolist()
        for (rows, cols), positions in zip(unique_grids.tolist(), order.split(counts), strict=True):
            yield rows, cols, positions.to(size_y.device)


def _divide(values: Tensor, divisor: int) -> Tensor:
    # A tensor divisor, so that no device turns the division into a multiplication by 1/divisor
    # (CUDA does for scalars): in float32, 21 * (1 / 7) rounds above 3 and its ceil is 4.
    return values / values.new_tensor(float(divisor))


def _sample_coordinates(start: Tensor, bin_size: Tensor, pooled: int, grid: int) -> Tensor:
    """[k, pooled, grid] sample positions, with the kernel's operations in the kernel's order."""
    bins = torch.arange(pooled, device=start.device, dtype=start.dtype)
    steps = torch.arange(grid, device=start.device, dtype=start.dtype) + 0.5
    offset = start[:, None, None] + bins[None, :, None] * bin_size[:, None, None]
    return offset + steps[None, None, :] * bin_size[:, None, None] / bin_size.new_tensor(float(grid))


def _bilinear_taps(coordinates: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Indices and weights [k, pooled, 2 * grid] of the two pixels that each sample interpolates."""
    inside = (coordinates >= -1.0) & (coordinates <= size)  # NaN is outside, as in the kernel
    coordinates = torch.where(inside, coordinates, 0.0).clamp(min=0.0)
    low = coordinates.long()  # truncation: floor of a non-negative number
    at_edge = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_edge, low, low + 1)
    fraction = torch.where(at_edge, 0.0, coordinates - low)
    weights = torch.stack([1.0 - fraction, fraction], dim=-1) * inside[..., None]
    return torch.stack([low, high], dim=-1).flatten(-2), weights.flatten(-2)


class _RoIAlign(torch.autograd.Function):
    """Forward gathers the taps; backward scatters the gradient into one buffer, chunk by chunk.

    Both run with autocast off: it would turn the float32 matrix products into float16/bfloat16 ones.
    """

    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, sampling: _Sampling) -> Tensor:
        with torch.autocast(features.device.type, enabled=False):
            return _RoIAlign._forward(ctx, features, rois, sampling)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        with torch.autocast(grad_output.device.type, enabled=False):
            return _RoIAlign._backward(ctx, grad_output), None, None

    @staticmethod
    def _forward(ctx, features: Tensor, rois: Tensor, sampling: _Sampling) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.sampling, ctx.feature_dtype = sampling, features.dtype
        channels = features.shape[1]
        flat = features.permute(0, 2, 3, 1).to(sampling.dtype).reshape(-1, channels)
        output = flat.new_zeros((len(rois), *sampling.pooled, channels))
        for chunk in sampling.chunks(rois):
            k, pooled_w, taps_x, pooled_h, taps_y = chunk.index.shape
            values = flat.index_select(0, chunk.index.flatten())
            along_x = torch.bmm(
                chunk.weight_x.reshape(k * pooled_w, 1, taps_x),
                values.view(k * pooled_w, taps_x, pooled_h * taps_y * channels),
            ).view(k, pooled_w, pooled_h, taps_y, channels)
            pooled = (along_x * chunk.weight_y[:, None, :, :, None]).sum(dim=3)  # [k, PW, PH, C]
            output[chunk.positions] = pooled.transpose(1, 2)
        return output.permute(0, 3, 1, 2).to(features.dtype, memory_format=torch.contiguous_format)

    @staticmethod
    def _backward(ctx, grad_output: Tensor) -> Tensor:
        (rois,) = ctx.saved_tensors
        sampling: _Sampling = ctx.sampling
        batch, channels, height, width = sampling.feature_shape
        grad = grad_output.permute(0, 3, 2, 1).to(sampling.dtype)  # [K, PW, PH, C]
        grad_flat = grad.new_zeros((batch * height * width, channels))
        for chunk in sampling.chunks(rois):
            k, pooled_w, taps_x, pooled_h, taps_y = chunk.index.shape
            along_y = grad[chunk.positions][:, :, :, None, :] * chunk.weight_y[:, None, :, :, None]
            spread = torch.bmm(
                chunk.weight_x.reshape(k * pooled_w, taps_x, 1),
                along_y.reshape(k * pooled_w, 1, pooled_h * taps_y * channels),
            )
            grad_flat.index_add_(0, chunk.index.flatten(), spread.view(-1, channels))
        grad_features = grad_flat.view(batch, height, width, channels).permute(0, 3, 1, 2)
        return grad_features.to(ctx.feature_dtype)
