"""Input transform: RGB 0-255 in, detectron2's channel order, normalisation, resize rounding and padding."""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from frcnn_pipeline.modeling.static import pad_targets, strip_padding


def resized_shape(
    height: int, width: int, short_side: int, max_size: int, rounding: str = "detectron2"
) -> tuple[int, int]:
    """Output (h, w) of a shortest-edge resize capped at `max_size` on the long side.

    detectron2 (`ResizeShortestEdge`) rounds to nearest, `int(x + 0.5)`; torchvision's
    `interpolate(recompute_scale_factor=True)` floors: 640x586 -> 874x800 vs 873x800.
    """
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    if rounding == "detectron2":
        return int(height * scale + 0.5), int(width * scale + 0.5)
    return math.floor(height * scale), math.floor(width * scale)


class DetectronTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform taking RGB uint8/float 0-255 images.

    Predictions are mapped back by the actual per-axis ratio (torchvision's `postprocess`).
    With `max_gt_boxes` (the static-shape mode) targets are padded to that many boxes with a `valid`
    mask, and the padded detections are stripped to the valid ones at the very end of `postprocess`: the
    one data-dependent step of an inference pass. `padded_detections = True` skips it (detections keep
    their fixed size and `valid` mask), e.g. to keep a compiled graph whole.
    """

    def __init__(
        self,
        *,
        min_size_train: Sequence[int],
        min_size_test: int,
        max_size: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str,
        size_divisibility: int,
        resize_rounding: str,
        fixed_size: Sequence[int] | None,
        max_gt_boxes: int | None = None,
    ) -> None:
        super().__init__(
            min_size=tuple(min_size_train),
            max_size=max_size,
            image_mean=list(pixel_mean),
            image_std=list(pixel_std),
            size_divisible=size_divisibility,
            fixed_size=tuple(fixed_size) if fixed_size else None,
        )
        self.min_size_test = min_size_test
        self.input_format = input_format
        self.resize_rounding = resize_rounding
        self.max_gt_boxes = max_gt_boxes
        self.padded_detections = False
        # Buffers follow .to(device); not persistent: they are configuration, not weights.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.max_gt_boxes is not None and targets is not None:
            targets = pad_targets(targets, self.max_gt_boxes)
        return super().forward(images, targets)

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        result = super().postprocess(result, image_shapes, original_image_sizes)
        if self.training or self.padded_detections:
            return result
        return [strip_padding(detections) if "valid" in detections else detections for detections in result]

    def normalize(self, image: Tensor) -> Tensor:
        if image.shape[0] != 3:
            raise ValueError(f"expected an RGB image of shape [3, H, W], got {tuple(image.shape)}")
        if not image.is_floating_point():
            image = image.float()
        if self.input_format == "BGR":
            image = image.flip(0)
        return (image - self.pixel_mean) / self.pixel_std

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        height, width = image.shape[-2:]
        short_side = self.torch_choice(self.min_size) if self.training else self.min_size_test
        new_shape = resized_shape(height, width, short_side, self.max_size, self.resize_rounding)
        if new_shape != (height, width):
            image = F.interpolate(image[None], size=new_shape, mode="bilinear", align_corners=False)[0]
            if target is not None:
                target["boxes"] = resize_boxes(target["boxes"], [height, width], list(new_shape))
        return image, target

    def batch_images(self, images: list[Tensor], size_divisible: int = 32) -> Tensor:
        if self.fixed_size is None:
            return super().batch_images(images, size_divisible)
        fixed_h, fixed_w = self.fixed_size
        too_large = [
            tuple(img.shape[-2:]) for img in images if img.shape[-2] > fixed_h or img.shape[-1] > fixed_w
        ]
        if too_large:
            raise ValueError(
                f"resized image(s) {too_large} exceed model.input.fixed_size {list(self.fixed_size)}; "
                "raise fixed_size to at least max_size rounded up to size_divisibility"
            )
        batch = images[0].new_zeros((len(images), images[0].shape[0], fixed_h, fixed_w))
        for padded, img in zip(batch, images, strict=True):
            padded[:, : img.shape[1], : img.shape[2]].copy_(img)
        return batch
