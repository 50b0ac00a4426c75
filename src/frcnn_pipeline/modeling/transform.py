"""Input transform: RGB 0-255 in, detectron2's channel order, normalisation, resize rounding and padding."""

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import boxes as box_ops

from frcnn_pipeline.modeling.static import StaticBatch, clip_to_sizes, nonempty, pad_targets, strip_padding


def resize_as_detectron2(image: Tensor, size: tuple[int, int]) -> Tensor:
    """The image [C, H, W] resized to `size` (h, w) as it came, before any normalising, as detectron2's
    `ResizeTransform.apply_image` does (data/transforms/transform.py:112-147): uint8 by PIL's bilinear
    (antialiased when shrinking, rounded to uint8; on the host: torch's antialiased uint8 kernel is 1 grey
    level off in places), any other dtype by `F.interpolate` bilinear. Keeps the dtype and device."""
    if image.dtype != torch.uint8:
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    pixels = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
    resized = np.asarray(Image.fromarray(pixels).resize((size[1], size[0]), Image.BILINEAR))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1).to(image.device)


def valid_first(detections: dict[str, Tensor]) -> dict[str, Tensor]:
    """Padded detections [D, ...] reordered valid rows first, each group in its order (unique sort keys:
    no reliance on a stable sort, so a trace exports it as it runs)."""
    valid = detections["valid"]
    position = torch.arange(valid.shape[0], device=valid.device)
    order = torch.argsort(torch.where(valid, position, position + valid.shape[0]))
    return {key: value[order] for key, value in detections.items()}


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

    `pixel_scale` 1 divides them by 255 before normalising: torchvision's (x / 255 - mean) / std, op for op.

    `resize_interpolation` "detectron2" resizes each image as it came, before normalising
    (`resize_as_detectron2`); "torchvision" interpolates the normalised float image.
    Predictions are mapped back by the actual per-axis ratio (torchvision's `postprocess`), then, as
    detectron2's `detector_postprocess` (modeling/postprocessing.py:55-58) where asked, clipped to the
    original image (`clip_detections`) and rid of empty boxes (`drop_empty_detections`).
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
        pixel_scale: int = 255,
        input_format: str,
        size_divisibility: int,
        resize_rounding: str,
        resize_interpolation: str,
        clip_detections: bool,
        drop_empty_detections: bool,
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
        self.pixel_scale = pixel_scale
        self.resize_rounding = resize_rounding
        self.resize_interpolation = resize_interpolation
        self.clip_detections = clip_detections
        self.drop_empty_detections = drop_empty_detections
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
            if self.resize_interpolation == "detectron2":
                images, targets = self.resized_as_they_came(images, targets)
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
            if (new_h, new_w) == (height, width):
                pixels = image
            elif self.resize_interpolation == "detectron2":
                pixels = resize_as_detectron2(image, (new_h, new_w))
            else:
                pixels = F.interpolate(
                    image.float()[None], (new_h, new_w), mode="bilinear", align_corners=False
                )[0]
            canvas[position, :, :new_h, :new_w] = pixels
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
        if self.pixel_scale == 1:
            pixels = pixels / 255
        mean, std = self.mean_and_std(pixels.dtype)
        normalized = torch.where(inside, (pixels - mean) / std, 0.0)
        return ImageList(normalized, [tuple(size.unbind()) for size in batch.sizes.unbind()])

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        if self.training:
            return result
        if self.max_gt_boxes is None:
            result = super().postprocess(result, image_shapes, original_image_sizes)
            for detections, original in zip(result, original_image_sizes, strict=True):
                if self.clip_detections:
                    detections["boxes"] = box_ops.clip_boxes_to_image(detections["boxes"], original)
                if self.drop_empty_detections:
                    keep = torch.where(nonempty(detections["boxes"]))[0]
                    detections.update({key: value[keep] for key, value in detections.items()})
            return result
        # torchvision's resize_boxes, with the sizes as tensors: the same float32 ratios
        for position, (size, original) in enumerate(zip(image_shapes, original_image_sizes, strict=True)):
            detections = result[position]
            ratio_h, ratio_w = (torch.stack(original).float() / torch.stack(size).float()).unbind()
            detections["boxes"] = detections["boxes"] * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])
            if self.clip_detections:
                detections["boxes"] = clip_to_sizes(detections["boxes"][None], [original])[0]
            if self.drop_empty_detections:
                detections["valid"] = detections["valid"] & nonempty(detections["boxes"])
                result[position] = valid_first(detections)
        if self.padded_detections:
            return result
        return [strip_padding(detections) for detections in result]

    def normalize(self, image: Tensor) -> Tensor:
        if image.shape[0] != 3:
            raise ValueError(f"expected an RGB image of shape [3, H, W], got {tuple(image.shape)}")
        if not image.is_floating_point():
            image = image.to(self.pixel_mean.dtype)  # float32, or float64 in a model.double()
        if self.input_format == "BGR":
            image = image.flip(0)
        if self.pixel_scale == 1:
            image = image / 255  # a division, as torchvision's users do: x * (1 / 255) rounds differently
        mean, std = self.mean_and_std(image.dtype)
        return (image - mean) / std

    def mean_and_std(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The buffers; in float64, the configured values themselves (as torchvision), not float32's rounding
        of them that `model.double()` gives the buffers."""
        if dtype != torch.float64:
            return self.pixel_mean, self.pixel_std
        device = self.pixel_mean.device
        return tuple(
            torch.tensor(values, dtype=dtype, device=device).view(-1, 1, 1)
            for values in (self.image_mean, self.image_std)
        )

    def resized_as_they_came(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None
    ) -> tuple[list[Tensor], list[dict[str, Tensor]] | None]:
        """`resize_interpolation` "detectron2", dynamic mode: each image resized before normalising (`resize`
        then leaves it), its target's boxes scaled alike, in copies."""
        targets = None if targets is None else [dict(target) for target in targets]
        resized = []
        for position, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"expected an RGB image of shape [3, H, W], got {tuple(image.shape)}")
            height, width = image.shape[-2:]
            short_side = self.torch_choice(self.min_size) if self.training else self.min_size_test
            new_shape = resized_shape(height, width, short_side, self.max_size, self.resize_rounding)
            if new_shape == (height, width):
                resized.append(image)
                continue
            resized.append(resize_as_detectron2(image, new_shape))
            if targets is not None:
                boxes = targets[position]["boxes"]
                targets[position]["boxes"] = resize_boxes(boxes, [height, width], list(new_shape))
        return resized, targets

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        if self.resize_interpolation == "detectron2":
            return image, target  # resized as it came, before normalising (`resized_as_they_came`)
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
