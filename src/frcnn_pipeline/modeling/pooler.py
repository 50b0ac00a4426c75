"""Box pooler: RoIAlign over the FPN level that detectron2 assigns to each box."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops.boxes import box_area
from torchvision.ops.poolers import LevelMapper, MultiScaleRoIAlign

from frcnn_pipeline.layers import roi_align


class LevelRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign with known level strides and detectron2's `aligned` (ROIAlignV2) option.

    torchvision's pooler hard-codes aligned=False and infers the scales from the first batch.
    `level_rule` "detectron2" assigns levels by detectron2's formula (`DetectronLevelMapper`), "torchvision"
    by torchvision's LevelMapper. With `static_shapes`, every level pools every box (the boxes of other
    levels shrunk to empty ones, which cost one sample) and a mask keeps each box's own level, instead of
    selecting each level's boxes.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        strides: Sequence[int],
        output_size: int,
        sampling_ratio: int,
        *,
        aligned: bool,
        level_rule: str = "detectron2",
        static_shapes: bool = False,
    ) -> None:
        super().__init__(list(featmap_names), output_size, sampling_ratio)
        self.aligned = aligned
        self.static_shapes = static_shapes
        self.scales = [1.0 / stride for stride in strides]
        levels = [round(math.log2(stride)) for stride in strides]
        if level_rule == "detectron2":
            self.map_levels = DetectronLevelMapper(levels[0], levels[-1])
        else:
            self.map_levels = (StaticLevelMapper if static_shapes else LevelMapper)(levels[0], levels[-1])

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        # Counts from .shape, not len(): an ONNX export's trace follows the former and freezes the latter.
        rois = torch.cat(
            [torch.cat([box.new_full((box.shape[0], 1), i), box], dim=1) for i, box in enumerate(boxes)]
        )
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            if self.static_shapes:
                in_level = (levels == level)[:, None]
                pooled = self._pool(feature, rois * in_level, scale)
                result = result + pooled.to(result.dtype) * in_level[..., None, None]
            else:
                in_level = torch.where(levels == level)[0]
                result[in_level] = self._pool(feature, rois[in_level], scale).to(result.dtype)
        return result

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        return roi_align(
            feature,
            rois,
            self.output_size,
            scale,
            self.sampling_ratio,
            aligned=self.aligned,
            static_shapes=self.static_shapes,
        )


class StaticLevelMapper(LevelMapper):
    """torchvision's LevelMapper with its eps added as a Python float: the same float32 sum, without the
    tensor of host data it makes in every call (a host-to-device copy on a device)."""

    def __call__(self, boxlists: list[Tensor]) -> Tensor:
        s = torch.sqrt(torch.cat([box_area(boxlist) for boxlist in boxlists]))
        target_lvls = torch.floor(self.lvl0 + torch.log2(s / self.s0) + self.eps)
        target_lvls = torch.clamp(target_lvls, min=self.k_min, max=self.k_max)
        return target_lvls.to(torch.int64) - self.k_min


class DetectronLevelMapper(LevelMapper):
    """detectron2's `assign_boxes_to_levels` (modeling/poolers.py:51-59): the 1e-8 inside the log, where
    torchvision adds 1e-6 after it, so a box just under 112, 224 or 448 px goes one level lower. Its
    constant is a Python float: no tensor of host data (a copy to the device) per call."""

    def __call__(self, boxlists: list[Tensor]) -> Tensor:
        box_sizes = torch.sqrt(torch.cat([box_area(boxlist) for boxlist in boxlists]))
        levels = torch.floor(self.lvl0 + torch.log2(box_sizes / self.s0 + 1e-8))
        levels = torch.clamp(levels, min=self.k_min, max=self.k_max)
        return levels.to(torch.int64) - self.k_min
