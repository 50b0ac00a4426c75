"""The detector as the exported graphs see it: one image in, boxes in that image's pixels out.

`GeneralizedRCNN.forward` takes a list of images and reads their sizes as Python ints, which a trace would
freeze to the example image's size. These wrappers run the model's own backbone, RPN and box head (the same
modules, the same weights) between a preprocessing and a postprocessing written with tensor ops on the
input's shape, so that the traced graph follows every input size:

- `ImageDetector` (the dynamic graph): a uint8 RGB image [3, H, W] of any size; channel order,
  normalisation, the model's test-time resize and the padding to `size_divisibility` happen in the graph.
- `CanvasDetector` (the fixed-shape graph): a float canvas [1, 3, H, W] of a fixed size holding the image,
  already resized by the model's rule, in its top-left corner, with its resized and original sizes. The model
  runs in its static-shape mode, and the outputs are `detections_per_image` padded rows plus their count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.onnx.operators import shape_as_tensor
from torchvision.models.detection.image_list import ImageList

from frcnn_pipeline.export.pil_resize import pil_bilinear_resize
from frcnn_pipeline.modeling import FasterRCNN
from frcnn_pipeline.modeling.static import clip_to_sizes, nonempty
from frcnn_pipeline.modeling.transform import valid_first


def resized_size(size: Tensor, short_side: int, max_size: int, rounding: str) -> Tensor:
    """`modeling.transform.resized_shape` as tensor ops on a [2] (height, width) tensor: int64 [2].

    float64 like Python's floats, and true divisions (`number / tensor` is a reciprocal and a product in
    torch, one rounding more), so that the size equals the eager model's for every input size.
    """
    size = size.to(torch.float64)
    short, cap = size.new_tensor(float(short_side)), size.new_tensor(float(max_size))
    scale = short / size.min()
    scale = torch.where(size.max() * scale > cap, cap / size.max(), scale)
    scaled = size * scale
    return torch.floor(scaled + 0.5 if rounding == "detectron2" else scaled).to(torch.int64)


def boxes_to_original(boxes: Tensor, resized: Tensor, original: Tensor) -> Tensor:
    """Boxes of the resized image in the original image's pixels: torchvision's `resize_boxes` (float32 ratios
    per axis), with the sizes as tensors."""
    ratio_h, ratio_w = (original.to(torch.float32) / resized.to(torch.float32)).unbind()
    return boxes * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])


class _Detector(nn.Module):
    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        if model.training:
            raise ValueError("export an inference model: call model.eval() first")
        self.backbone, self.rpn, self.roi_heads = model.backbone, model.rpn, model.roi_heads
        self.transform = model.transform
        self.eval()  # an exporter restores the wrapper's mode, recursively, after tracing

    def detect(self, batch: Tensor, resized: Tensor) -> dict[str, Tensor]:
        """The model's detections on a normalised, padded batch of one image of size `resized` (int64 [2])."""
        image_sizes = [(resized[0], resized[1])]
        features = self.backbone(batch)
        proposals, _ = self.rpn(ImageList(batch, image_sizes), features)
        detections, _ = self.roi_heads(features, proposals, image_sizes)
        return detections[0]

    def to_original(self, boxes: Tensor, resized: Tensor, original: Tensor) -> tuple[Tensor, Tensor]:
        """Boxes in the original image's pixels, clipped to it where the model clips (`clip_after_rescale`),
        and the mask of those to keep: nonempty ones where the model drops empty ones, else all."""
        boxes = boxes_to_original(boxes, resized, original)
        if self.transform.clip_detections:
            boxes = clip_to_sizes(boxes[None], [(original[0], original[1])])[0]
        if self.transform.drop_empty_detections:
            return boxes, nonempty(boxes)
        return boxes, torch.ones_like(boxes[:, 0], dtype=torch.bool)


class ImageDetector(_Detector):
    """image uint8 [3, H, W] RGB -> boxes float32 [N, 4] (xyxy, the image's pixels), scores [N], labels int64
    [N] (1..K), best first. Equals the model's eval forward on that image."""

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        transform = self.transform
        original = shape_as_tensor(image)[-2:]
        resized = resized_size(
            original, transform.min_size_test, transform.max_size, transform.resize_rounding
        )
        if (
            transform.resize_interpolation == "detectron2"
        ):  # the uint8 image as PIL resizes it, then normalised
            batch = transform.normalize(pil_bilinear_resize(image, resized).to(torch.uint8))[None]
        else:
            batch = F.interpolate(
                transform.normalize(image)[None],
                size=(resized[0], resized[1]),
                mode="bilinear",
                align_corners=False,
            )
        divisor = transform.size_divisible
        padding = torch.div(resized + divisor - 1, divisor, rounding_mode="floor") * divisor - resized
        batch = F.pad(batch, (0, padding[1], 0, padding[0]))
        detections = self.detect(batch, resized)
        boxes, keep = self.to_original(detections["boxes"], resized, original)
        keep = torch.where(keep)[0]
        return boxes[keep], detections["scores"][keep], detections["labels"][keep]


class CanvasDetector(_Detector):
    """canvas float32 [1, 3, H, W] (RGB 0-255, the resized image top-left, anything around it),
    resized_size and original_size int64 [2] (height, width) -> boxes [D, 4] (xyxy, original pixels), scores
    [D], labels [D] (1..K; 0 in padded rows), num_detections int64 [1]: the first num_detections rows are
    the detections, best first, the rest zeros. D = detections_per_image. The model must be in its
    static-shape mode with `input.fixed_size` = (H, W)."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__(model)
        if model.transform.fixed_size is None or model.transform.max_gt_boxes is None:
            raise ValueError("CanvasDetector needs the model in its static-shape mode with input.fixed_size")
        model.transform.padded_detections = True

    def forward(
        self, canvas: Tensor, resized_size: Tensor, original_size: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = canvas.shape[-2:]
        inside = (torch.arange(height) < resized_size[0])[:, None] & (torch.arange(width) < resized_size[1])
        # Zero beyond the image, after normalising: the model's own padding.
        batch = (self.transform.normalize(canvas[0]) * inside)[None]
        detections = self.detect(batch, resized_size)
        boxes, keep = self.to_original(detections["boxes"], resized_size, original_size)
        detections = valid_first({**detections, "boxes": boxes, "valid": detections["valid"] & keep})
        valid = detections["valid"]
        boxes = detections["boxes"] * valid[:, None]
        return (
            boxes,
            detections["scores"] * valid,
            detections["labels"] * valid,
            valid.sum(dtype=torch.int64)[None],
        )
