"""Input transform: RGB 0-255 in, detectron2's channel order, normalisation, resize rounding and padding."""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from frcnn_pipeline.modeling.static import StaticBatch, pad_targets, strip_padding


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
    With `max_gt_boxes` (the static-shape mode) the work whose shapes follow the images is `host_batch`,
    which makes a `StaticBatch` where the images are (the host, ideally); `forward` then normalises its
    fixed canvas on the model's device. The padded detections are stripped to the valid ones at the very end
    of `postprocess`: the one data-dependent step of an inference pass. `padded_detections = True` skips it
    (detections keep their fixed size and `valid` mask), e.g. to keep a compiled graph whole.
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

    def forward(
        self, images: list[Tensor] | StaticBatch, targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        """(the batch, the targets); in the static mode the ImageList's sizes are int64 scalars (device)."""
        if self.max_gt_boxes is None:
            return super().forward(images, targets)
        batch = images if isinstance(images, StaticBatch) else self.host_batch(images, targets)
        batch = batch.to(self.pixel_mean.device)
        return self.canvas_images(batch), batch.targets

    def host_batch(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> StaticBatch:
        """The static mode's work whose shapes follow the images, done where the images are: each resized by
        the model's rule (a short side drawn from min_size_train in training) into the top-left corner of the
        `fixed_size` canvas, its boxes scaled alike, checked and padded to `max_gt_boxes`.

        Raises:
            ValueError: a resized image larger than `fixed_size`, a degenerate box, or more boxes than
                `max_gt_boxes`, each named.
        """
        if self.training and targets is None:
            raise ValueError("targets should not be none when in training mode")
        fixed_h, fixed_w = self.fixed_size
        canvas = torch.zeros((len(images), 3, fixed_h, fixed_w), device=images[0].device)
        sizes, original_sizes, resized_targets = [], [], []
        for position, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"expected an RGB image of shape [3, H, W], got {tuple(image.shape)}")
            height, width = image.shape[-2:]
            short_side = self.torch_choice(self.min_size) if self.training else self.min_size_test
            new_h, new_w = resized_shape(height, width, short_side, self.max_size, self.resize_rounding)
            sizes.append((new_h, new_w))
            original_sizes.append((height, width))
            if new_h > fixed_h or new_w > fixed_w:
                continue  # named with the others below
            pixels = image.float()[None]
            if (new_h, new_w) != (height, width):
                pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bilinear", align_corners=False)
            canvas[position, :, :new_h, :new_w] = pixels[0]
            if targets is not None:
                target = dict(targets[position])
                if (new_h, new_w) != (height, width):
                    target["boxes"] = resize_boxes(target["boxes"], [height, width], [new_h, new_w])
                _check_boxes(target["boxes"], position)
                resized_targets.append(target)
        too_large = [size for size in sizes if size[0] > fixed_h or size[1] > fixed_w]
        if too_large:
            raise ValueError(
                f"resized image(s) {too_large} exceed model.input.fixed_size {list(self.fixed_size)}; "
                "raise fixed_size to at least max_size rounded up to size_divisibility"
            )
        return StaticBatch(
            canvas,
            torch.tensor(sizes, device=canvas.device),
            torch.tensor(original_sizes, device=canvas.device),
            None if targets is None else pad_targets(resized_targets, self.max_gt_boxes),
        )

    def canvas_images(self, batch: StaticBatch) -> ImageList:
        """The canvas normalised (zero beyond each image, after normalising: the dynamic mode's padding), with
        each image's size as int64 scalars on the device."""
        height, width = batch.canvas.shape[-2:]
        rows = torch.arange(height, device=batch.canvas.device) < batch.sizes[:, :1]
        columns = torch.arange(width, device=batch.canvas.device) < batch.sizes[:, 1:]
        inside = (rows[:, :, None] & columns[:, None, :])[:, None]
        pixels = batch.canvas.flip(1) if self.input_format == "BGR" else batch.canvas
        normalized = torch.where(inside, (pixels - self.pixel_mean) / self.pixel_std, 0.0)
        return ImageList(normalized, [tuple(size.unbind()) for size in batch.sizes.unbind()])

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        if self.max_gt_boxes is None or self.training:
            return super().postprocess(result, image_shapes, original_image_sizes)
        # torchvision's resize_boxes, with the sizes as tensors: the same float32 ratios
        for detections, size, original in zip(result, image_shapes, original_image_sizes, strict=True):
            ratio_h, ratio_w = (torch.stack(original).float() / torch.stack(size).float()).unbind()
            detections["boxes"] = detections["boxes"] * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])
        if self.padded_detections:
            return result
        return [strip_padding(detections) for detections in result]

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


def _check_boxes(boxes: Tensor, position: int) -> None:
    """GeneralizedRCNN's target checks, on the host batch: [N, 4] boxes of positive width and height."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"Expected target boxes to be a tensor of shape [N, 4], got {tuple(boxes.shape)}.")
    degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
    if degenerate.any():
        raise ValueError(
            "All bounding boxes should have positive height and width. Found invalid box "
            f"{boxes[degenerate][0].tolist()} for target at index {position}."
        )
