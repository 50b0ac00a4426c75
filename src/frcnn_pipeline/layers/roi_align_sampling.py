"""Where RoIAlign samples a feature map, and with what weights: the rules of torchvision's kernel.

The rules (csrc/ops/cpu/roi_align_common.h), per axis (y shown, x alike):
- `aligned` shifts the RoI by -0.5 pixel (detectron2's ROIAlignV2); otherwise its size is clamped to >= 1;
- bin `p` has `grid` samples at `start + p * bin + (i + 0.5) * bin / grid`, where `grid` is
  `sampling_ratio`, or `ceil(size / pooled)` for that RoI when `sampling_ratio <= 0`;
- a sample at y < -1 or y > H contributes 0; otherwise y is clamped to >= 0, and from H - 1 on it takes
  row H - 1;
- a bin is the mean of its grid_h × grid_w bilinear samples.
A bilinear weight is a y weight times an x weight, so the same weights come in two forms here: the taps
(`RoISampling.chunks`: each bin's 2·grid_h rows × 2·grid_w columns of pixels, to gather) and the dense
per-axis matrices (`RoISampling.separable_weights`: pooled[r] = A_y[r] · F[batch[r]] · A_x[r]ᵀ per channel).
Computed in float32 (float64 for float64 features), as torchvision's autocast wrapper does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair

# Gathered feature values held at once (64 MiB in float32): RoIs are processed in chunks of this size.
CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class TapChunk:
    """RoIs with the same sample grid: their positions in `rois` and their bilinear taps."""

    positions: Tensor  # [k]
    # [k, PW, Tx, PH, Ty]: row of each tap in the features flattened to [N * H * W, C]; x first, so that
    # the sum over the x taps is a batched matrix product on the gathered values as they lie.
    index: Tensor
    weight_y: Tensor  # [k, PH, Ty], divided by the bin's sample count
    weight_x: Tensor  # [k, PW, Tx]


@dataclass(frozen=True)
class _Geometry:
    """Each RoI on the feature map, per axis: its start, its size and its bin size (all [R])."""

    start_y: Tensor
    start_x: Tensor
    size_y: Tensor
    size_x: Tensor
    bin_y: Tensor
    bin_x: Tensor


@dataclass(frozen=True)
class RoISampling:
    feature_shape: tuple[int, ...]
    pooled: tuple[int, int]
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    dtype: torch.dtype

    @classmethod
    def of(
        cls,
        features: Tensor,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
    ) -> RoISampling:
        """The sampling of torchvision.ops.roi_align(features, rois, output_size, ...), in float32 (float64
        for float64 features)."""
        return cls(
            tuple(features.shape),
            _pair(output_size),
            float(spatial_scale),
            int(sampling_ratio),
            bool(aligned),
            torch.float64 if features.dtype == torch.float64 else torch.float32,
        )

    def chunks(self, rois: Tensor) -> Iterator[TapChunk]:
        """The taps of every RoI that has samples, in groups of RoIs with the same grid."""
        _, channels, height, width = self.feature_shape
        pooled_h, pooled_w = self.pooled
        g = self._geometry(rois)
        batch = rois[:, 0].long()
        for grid_y, grid_x, positions in self._grid_groups(g):
            if grid_y == 0 or grid_x == 0:  # an empty (aligned) RoI: no samples, output 0
                continue
            taps_per_roi = pooled_h * 2 * grid_y * pooled_w * 2 * grid_x * channels
            for part in positions.split(max(1, CHUNK_ELEMENTS // taps_per_roi)):
                index_y, weight_y = _bilinear_taps(
                    _sample_coordinates(g.start_y[part], g.bin_y[part], pooled_h, grid_y), height
                )
                index_x, weight_x = _bilinear_taps(
                    _sample_coordinates(g.start_x[part], g.bin_x[part], pooled_w, grid_x), width
                )
                rows = (batch[part, None, None] * height + index_y) * width
                yield TapChunk(
                    positions=part,
                    index=index_x[:, :, :, None, None] + rows[:, None, None, :, :],
                    weight_y=weight_y / (grid_y * grid_x),
                    weight_x=weight_x,
                )

    def separable_weights(self, rois: Tensor) -> tuple[Tensor, Tensor]:
        """A_y [R, PH, H] (divided by each bin's sample count) and A_x [R, PW, W] of every RoI."""
        _, _, height, width = self.feature_shape
        pooled_h, pooled_w = self.pooled
        geometry = self._geometry(rois)
        grid_y, grid_x = self.grids(geometry)
        weight_y = _dense_axis_weights(geometry.start_y, geometry.bin_y, grid_y, pooled_h, height)
        weight_x = _dense_axis_weights(geometry.start_x, geometry.bin_x, grid_x, pooled_w, width)
        count = (grid_y * grid_x).clamp(min=1).to(weight_y.dtype)
        return weight_y / count[:, None, None], weight_x

    def samples_per_bin(self, rois: Tensor) -> Tensor:
        """[R] grid_h × grid_w of every RoI."""
        grid_y, grid_x = self.grids(self._geometry(rois))
        return grid_y * grid_x

    def grids(self, geometry: _Geometry) -> tuple[Tensor, Tensor]:
        """[R] samples per bin along y and along x (int64)."""
        if self.sampling_ratio > 0:
            grid = torch.full_like(geometry.size_y, self.sampling_ratio, dtype=torch.long)
            return grid, grid
        pooled_h, pooled_w = self.pooled
        return (
            torch.ceil(_divide(geometry.size_y, pooled_h)).clamp(min=0).long(),
            torch.ceil(_divide(geometry.size_x, pooled_w)).clamp(min=0).long(),
        )

    def _geometry(self, rois: Tensor) -> _Geometry:
        rois = rois.to(self.dtype)
        offset = 0.5 if self.aligned else 0.0
        start_x = rois[:, 1] * self.spatial_scale - offset
        start_y = rois[:, 2] * self.spatial_scale - offset
        size_x = (rois[:, 3] * self.spatial_scale - offset) - start_x
        size_y = (rois[:, 4] * self.spatial_scale - offset) - start_y
        if not self.aligned:
            size_x, size_y = size_x.clamp(min=1.0), size_y.clamp(min=1.0)
        pooled_h, pooled_w = self.pooled
        return _Geometry(
            start_y, start_x, size_y, size_x, _divide(size_y, pooled_h), _divide(size_x, pooled_w)
        )

    def _grid_groups(self, geometry: _Geometry) -> Iterator[tuple[int, int, Tensor]]:
        """(grid_y, grid_x, positions of the RoIs with that grid); one group unless sampling is adaptive."""
        if len(geometry.size_y) == 0:
            return
        if self.sampling_ratio > 0:
            positions = torch.arange(len(geometry.size_y), device=geometry.size_y.device)
            yield self.sampling_ratio, self.sampling_ratio, positions
            return
        # Grouped on the host: the grids decide the shapes of what follows anyway.
        grids = torch.stack(self.grids(geometry), dim=1).cpu()
        unique_grids, group = torch.unique(grids, dim=0, return_inverse=True)
        order = torch.argsort(group, stable=True)
        counts = torch.bincount(group, minlength=len(unique_grids)).tolist()
        for (rows, cols), positions in zip(unique_grids.tolist(), order.split(counts), strict=True):
            yield rows, cols, positions.to(geometry.size_y.device)


def _divide(values: Tensor, divisor: int) -> Tensor:
    # A tensor divisor, so that no device turns the division into a multiplication by 1/divisor
    # (CUDA does for scalars): in float32, 21 * (1 / 7) rounds above 3 and its ceil is 4. Filled on the
    # device: a tensor of host data would be a copy that waits for the device.
    return values / torch.full((), float(divisor), dtype=values.dtype, device=values.device)


def _sample_coordinates(start: Tensor, bin_size: Tensor, pooled: int, grid: int | Tensor) -> Tensor:
    """[k, pooled, samples] sample positions, with the kernel's operations in the kernel's order.

    `grid`: one int for all, or each RoI's own [k] (int64); then `samples` is the largest, and the slots
    past a RoI's own grid are NaN, which `_bilinear_taps` weighs 0.
    """
    per_roi = isinstance(grid, Tensor)
    samples = (int(grid.max()) if len(grid) else 0) if per_roi else grid
    steps = torch.arange(samples, device=start.device, dtype=start.dtype) + 0.5
    bins = torch.arange(pooled, device=start.device, dtype=start.dtype)
    divisor = (
        grid.to(start.dtype)[:, None, None]
        if per_roi
        else torch.full((), float(grid), dtype=bin_size.dtype, device=bin_size.device)
    )
    offset = start[:, None, None] + bins[None, :, None] * bin_size[:, None, None]
    coordinates = offset + steps[None, None, :] * bin_size[:, None, None] / divisor
    if per_roi:
        return torch.where(steps[None, None, :] < grid[:, None, None], coordinates, torch.nan)
    return coordinates


def _bilinear_taps(coordinates: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Indices and weights [k, pooled, 2 * samples] of the two pixels that each sample interpolates."""
    inside = (coordinates >= -1.0) & (coordinates <= size)  # NaN is outside, as in the kernel
    coordinates = torch.where(inside, coordinates, 0.0).clamp(min=0.0)
    low = coordinates.long()  # truncation: floor of a non-negative number
    at_edge = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_edge, low, low + 1)
    fraction = torch.where(at_edge, 0.0, coordinates - low)
    weights = torch.stack([1.0 - fraction, fraction], dim=-1) * inside[..., None]
    return torch.stack([low, high], dim=-1).flatten(-2), weights.flatten(-2)


def _dense_axis_weights(start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int, size: int) -> Tensor:
    """[k, pooled, size]: each bin's bilinear weights of the pixels on one axis, summed over its samples."""
    index, weight = _bilinear_taps(_sample_coordinates(start, bin_size, pooled, grid), size)
    return weight.new_zeros((len(start), pooled, size)).scatter_add_(2, index, weight)
