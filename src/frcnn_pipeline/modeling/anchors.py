"""Anchor generator: torchvision's, with detectron2's fixed level strides and optional unrounded anchors."""

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList


def unrounded_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """torchvision's cell anchors without their final round(): w = size / sqrt(r), h = size * sqrt(r)."""
    sizes_t = torch.as_tensor(sizes, dtype=torch.float64)
    ratios_t = torch.as_tensor(aspect_ratios, dtype=torch.float64)
    heights = (ratios_t.sqrt()[:, None] * sizes_t[None, :]).reshape(-1)
    widths = (sizes_t[None, :] / ratios_t.sqrt()[:, None]).reshape(-1)
    return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).float()


STRIDE_RULES = ("detectron2", "torchvision")


def box_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype of anchors and decoded boxes: float32 even under autocast (half-precision boxes are off by
    pixels at 1333 px), float64 in a float64 model (`model.double()`, e.g. for a gradient check)."""
    return torch.promote_types(tensor.dtype, torch.float32)


class FixedStrideAnchorGenerator(AnchorGenerator):
    """One size per level, the same aspect ratios on every level, and a level stride by `stride_rule`.

    "detectron2": the level's true stride, the backbone's. "torchvision": torchvision's inference of the
    stride as `padded_size // feature_size`, which is not the true stride on P6 whenever padded_size / 32 is
    odd (800 // 13 = 61, not 64: anchors up to 36 px apart), kept to reproduce torchvision's detections.
    detectron2 also keeps cell anchors unrounded (`round_cell_anchors=False`), torchvision rounds them.
    """

    def __init__(
        self,
        sizes: Sequence[float],
        aspect_ratios: Sequence[float],
        strides: Sequence[int],
        round_cell_anchors: bool,
        stride_rule: str = "detectron2",
    ) -> None:
        if len(sizes) != len(strides):
            raise ValueError(f"one anchor size per level is needed: sizes {sizes}, strides {strides}")
        if stride_rule not in STRIDE_RULES:
            raise ValueError(f"stride_rule must be one of {STRIDE_RULES}, got {stride_rule!r}")
        super().__init__(
            sizes=tuple((float(size),) for size in sizes),
            aspect_ratios=(tuple(float(r) for r in aspect_ratios),) * len(sizes),
        )
        self.strides = tuple(int(stride) for stride in strides)
        self.stride_rule = stride_rule
        if not round_cell_anchors:
            self.cell_anchors = [
                unrounded_cell_anchors(size, ratios)
                for size, ratios in zip(self.sizes, self.aspect_ratios, strict=True)
            ]
        # Buffers, so that `.to(device)` moves them with the model rather than the first step copying them
        # from the host (not persistent: configuration, not weights).
        for level, cell_anchors in enumerate(self.cell_anchors):
            self.register_buffer(f"cell_anchors_{level}", cell_anchors, persistent=False)

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        self.cell_anchors = [
            getattr(self, f"cell_anchors_{level}").to(dtype=dtype, device=device)
            for level in range(len(self.strides))
        ]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        self.set_cell_anchors(box_dtype(feature_maps[0]), feature_maps[0].device)
        grid_sizes = [list(feature_map.shape[-2:]) for feature_map in feature_maps]
        # Python ints, not tensors: torchvision multiplies an int32 arange by them (the same values), and a
        # tensor made here would be a host-to-device copy in every step.
        if self.stride_rule == "torchvision":
            padded_h, padded_w = image_list.tensors.shape[-2:]
            strides = [[int(padded_h) // grid_h, int(padded_w) // grid_w] for grid_h, grid_w in grid_sizes]
        else:
            strides = [[stride, stride] for stride in self.strides]
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors] * len(image_list.image_sizes)
