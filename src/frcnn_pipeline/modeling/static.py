"""Fixed-shape building blocks of the static-shape mode (`model.static_shapes.enabled`).

Every tensor keeps a shape set by the configuration, never by the data: ground truth is padded to
`max_gt_boxes` rows, and where the dynamic mode removes rows (small boxes, low scores, NMS, sampling) the
static mode keeps them and carries a validity mask. Masked slots hold finite stand-in values, so that box
coding, IoU and losses stay finite and a zero weight removes them exactly. The images' own sizes meet the
model once, where a `StaticBatch` is made (on the host); after it nothing reads a value back on the host or
makes a tensor from host data (either waits for the device), so a step queues without waiting.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder, Matcher

# Stand-in for a padded box: finite and non-degenerate, so it passes the degenerate-box check and encodes to
# finite regression targets; masks keep it out of every result.
PAD_BOX = (0.0, 0.0, 1.0, 1.0)


class StaticBatch(NamedTuple):
    """A batch in the static mode's fixed shapes, made where the images are (`DetectronTransform.host_batch`).

    canvas [B, 3, H, W] float32 (H, W: `input.fixed_size`): each image as it came (RGB, 0-255) resized by the
    model's rule into the top-left corner, zeros around; sizes and original_sizes int64 [B, 2], (h, w) of each
    resized and original image; targets (training) in canvas pixels, padded to `max_gt_boxes` rows.
    """

    canvas: Tensor
    sizes: Tensor
    original_sizes: Tensor
    targets: list[dict[str, Tensor]] | None = None

    def to(self, device: torch.device) -> StaticBatch:
        """The batch on `device`: one copy per tensor, of the same shapes in every step."""

        def moved(tensor: Tensor) -> Tensor:
            return tensor.to(device, non_blocking=True)

        targets = self.targets and [{key: moved(value) for key, value in t.items()} for t in self.targets]
        return StaticBatch(moved(self.canvas), moved(self.sizes), moved(self.original_sizes), targets)


class PaddedBoxes(NamedTuple):
    """Boxes of every image padded to one count: `boxes` [B, N, 4], `valid` [B, N] (invalid rows: PAD_BOX)."""

    boxes: Tensor
    valid: Tensor


def pad_targets(targets: list[dict[str, Tensor]], max_gt_boxes: int) -> list[dict[str, Tensor]]:
    """Pad each target's `boxes` and `labels` to `max_gt_boxes` rows and add its `valid` mask.

    This is the one op that reads a tensor with a data-dependent number of rows; its output is fixed.

    Raises:
        ValueError: an image with more boxes than `max_gt_boxes` (named by its image_id when known).
    """
    padded = []
    for position, target in enumerate(targets):
        boxes, labels = target["boxes"], target["labels"]
        count = boxes.shape[0]
        if count > max_gt_boxes:
            image = f"image_id {int(target['image_id'])}" if "image_id" in target else f"image {position}"
            raise ValueError(
                f"{image} has {count} ground-truth boxes, more than model.static_shapes.max_gt_boxes = "
                f"{max_gt_boxes}: raise max_gt_boxes to at least {count}, or set "
                "model.static_shapes.enabled: false"
            )
        valid = torch.arange(max_gt_boxes, device=boxes.device) < count
        rows = (0, 0, 0, max_gt_boxes - count)
        padded.append(
            {
                **target,
                "boxes": torch.where(valid[:, None], F.pad(boxes, rows), boxes.new_tensor(PAD_BOX)),
                "labels": F.pad(labels, rows[2:]),
                "valid": valid,
            }
        )
    return padded


def check_gt_box_counts(boxes_per_image: dict[int, int], max_gt_boxes: int) -> None:
    """Fail before training when an image has more ground-truth boxes than the static mode holds.

    Truncating instead would label the dropped objects background, a silent error on crowded images.
    """
    over = {image_id: count for image_id, count in boxes_per_image.items() if count > max_gt_boxes}
    if over:
        worst = sorted(over.items(), key=lambda item: -item[1])[:5]
        listed = ", ".join(f"image_id {image_id}: {count}" for image_id, count in worst)
        raise ValueError(
            f"{len(over)} training image(s) have more ground-truth boxes than "
            f"model.static_shapes.max_gt_boxes = {max_gt_boxes} ({listed}): raise max_gt_boxes to at "
            f"least {max(over.values())}, or set model.static_shapes.enabled: false"
        )


def match_padded(matcher: Matcher, quality: Tensor, gt_valid: Tensor) -> Tensor:
    """torchvision's `Matcher` on a [M, N] IoU matrix whose invalid gt rows never match.

    Returns, per column, the matched gt row or Matcher.BELOW_LOW_THRESHOLD / BETWEEN_THRESHOLDS; with no
    valid gt every column is below the low threshold (torchvision's background-image case).
    """
    quality = quality.masked_fill(~gt_valid[:, None], -1.0)
    matched_vals, matches = quality.max(dim=0)
    all_matches = matches
    matches = matches.masked_fill(matched_vals < matcher.low_threshold, matcher.BELOW_LOW_THRESHOLD)
    between = (matched_vals >= matcher.low_threshold) & (matched_vals < matcher.high_threshold)
    matches = matches.masked_fill(between, matcher.BETWEEN_THRESHOLDS)
    if matcher.allow_low_quality_matches:
        # Each valid gt keeps every column of its highest IoU, ties included (set_low_quality_matches_).
        highest = quality.max(dim=1, keepdim=True).values
        low_quality = ((quality == highest) & gt_valid[:, None]).any(dim=0)
        matches = torch.where(low_quality, all_matches, matches)
    return matches


def sample_fixed(labels: Tensor, batch_size: int, positive_fraction: float) -> tuple[Tensor, Tensor]:
    """`BalancedPositiveNegativeSampler` with exactly `batch_size` slots per row.

    `labels` [..., N]: >= 1 foreground, 0 background, -1 ignored. Like torchvision, takes a uniformly random
    subset of at most `batch_size * positive_fraction` foreground entries, then background entries up to
    `batch_size` (random top-k of uniform keys instead of a permutation of a variable-length list).

    Returns:
        indices [..., batch_size] into the last dimension, and `sampled` [..., batch_size]: False for slots
        left empty when there are too few candidates.
    """
    max_positive = int(batch_size * positive_fraction)
    positive, negative = labels >= 1, labels == 0
    num_positive = positive.sum(-1, keepdim=True).clamp(max=max_positive)
    num_negative = torch.minimum(negative.sum(-1, keepdim=True), batch_size - num_positive)
    keys = torch.rand(labels.shape, device=labels.device)
    count = labels.shape[-1]
    positive_first = keys.masked_fill(~positive, -1.0).topk(min(max(max_positive, 1), count), dim=-1).indices
    negative_first = keys.masked_fill(~negative, -1.0).topk(min(batch_size, count), dim=-1).indices
    ranked = torch.cat([positive_first, negative_first], dim=-1)
    slot = torch.arange(batch_size, device=labels.device)
    source = torch.where(slot < num_positive, slot, positive_first.shape[-1] + slot - num_positive)
    indices = ranked.gather(-1, source.clamp(max=ranked.shape[-1] - 1))
    return indices, slot < num_positive + num_negative


def top_valid(scores: Tensor, valid: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices of the k best valid scores along the last dimension, by decreasing score, and their validity.

    Fewer than k valid entries leave invalid slots at the end.
    """
    top = scores.masked_fill(~valid, float("-inf")).topk(min(k, scores.shape[-1]), dim=-1)
    return top.indices, valid.gather(-1, top.indices)


def clip_to_sizes(boxes: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
    """`clip_boxes_to_image` for boxes [B, ..., 4] with the sizes as a tensor, not per-image constants."""
    # Stacked rather than torch.tensor(image_sizes): a trace (ONNX export) keeps sizes given as tensors.
    sizes = torch.stack([torch.stack([torch.as_tensor(side) for side in size]) for size in image_sizes])
    sizes = sizes.to(dtype=boxes.dtype, device=boxes.device)  # [B, 2] (h, w)
    upper = sizes.flip(-1).repeat(1, 2).view(len(image_sizes), *([1] * (boxes.dim() - 2)), 4)
    return torch.minimum(boxes.clamp(min=0), upper)


def box_sizes_at_least(boxes: Tensor, min_size: float) -> Tensor:
    """`remove_small_boxes` as a mask: width and height >= min_size."""
    return (boxes[..., 2] - boxes[..., 0] >= min_size) & (boxes[..., 3] - boxes[..., 1] >= min_size)


def nonempty(boxes: Tensor) -> Tensor:
    """detectron2's `Boxes.nonempty()` (structures/boxes.py:199-213) as a mask: width and height > 0."""
    return (boxes[..., 2] - boxes[..., 0] > 0) & (boxes[..., 3] - boxes[..., 1] > 0)


def pad_invalid(boxes: Tensor, valid: Tensor) -> Tensor:
    """Replace the boxes of invalid slots by PAD_BOX."""
    return torch.where(valid[..., None], boxes, pad_box_like(boxes))


def stack_levels(values: Tensor, counts: list[int]) -> Tensor:
    """[B, sum(counts), ...] level by level -> [B, levels, max(counts), ...], each level zero-padded."""
    width, trailing = max(counts), (0, 0) * (values.dim() - 2)
    parts = values.split(counts, dim=1)
    return torch.stack([F.pad(part, (*trailing, 0, width - part.shape[1])) for part in parts], dim=1)


def unstack_levels(values: Tensor, counts: list[int]) -> Tensor:
    """`stack_levels` undone: [B, levels, max(counts), ...] -> [B, sum(counts), ...]."""
    return torch.cat([values[:, level, :count] for level, count in enumerate(counts)], dim=1)


def gather_boxes(boxes: Tensor, indices: Tensor) -> Tensor:
    """boxes [B, N, 4] at indices [B, K] -> [B, K, 4]."""
    return boxes.gather(1, indices[..., None].expand(-1, -1, boxes.shape[-1]))


def strip_padding(detections: dict[str, Tensor]) -> dict[str, Tensor]:
    """Padded detections (valid ones first, as `top_valid` ranks them) cut to the valid ones, `valid` dropped.

    The one data-dependent step of a static-shape inference pass: the count is read on the host.
    """
    count = int(detections["valid"].sum())
    return {key: value[:count] for key, value in detections.items() if key != "valid"}


def pad_box_like(boxes: Tensor) -> Tensor:
    """PAD_BOX [4] in the dtype and on the device of `boxes`, from device ops: a tensor of host data would be
    a host-to-device copy, which waits for the device."""
    return (torch.arange(4, device=boxes.device) >= 2).to(boxes.dtype)


class StaticBoxCoder(BoxCoder):
    """torchvision's BoxCoder with the same float operations, without the tensors it makes from host data in
    every call (its weights, a 0.5): on a device each is a host-to-device copy that waits for the device."""

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """torchvision's `encode_boxes`, with the weights as Python floats (the same float32 products)."""
        wx, wy, ww, wh = self.weights
        ex_x1, ex_y1, ex_x2, ex_y2 = (proposals[:, i, None] for i in range(4))
        gt_x1, gt_y1, gt_x2, gt_y2 = (reference_boxes[:, i, None] for i in range(4))
        ex_widths, ex_heights = ex_x2 - ex_x1, ex_y2 - ex_y1
        ex_ctr_x, ex_ctr_y = ex_x1 + 0.5 * ex_widths, ex_y1 + 0.5 * ex_heights
        gt_widths, gt_heights = gt_x2 - gt_x1, gt_y2 - gt_y1
        gt_ctr_x, gt_ctr_y = gt_x1 + 0.5 * gt_widths, gt_y1 + 0.5 * gt_heights
        return torch.cat(
            (
                wx * (gt_ctr_x - ex_ctr_x) / ex_widths,
                wy * (gt_ctr_y - ex_ctr_y) / ex_heights,
                ww * torch.log(gt_widths / ex_widths),
                wh * torch.log(gt_heights / ex_heights),
            ),
            dim=1,
        )

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """torchvision's, with its two tensors of 0.5 as Python floats (an exact product either way)."""
        boxes = boxes.to(rel_codes.dtype)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx, dy = rel_codes[:, 0::4] / wx, rel_codes[:, 1::4] / wy
        dw = torch.clamp(rel_codes[:, 2::4] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(rel_codes[:, 3::4] / wh, max=self.bbox_xform_clip)
        pred_ctr_x, pred_ctr_y = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
        half_w, half_h = 0.5 * (torch.exp(dw) * widths[:, None]), 0.5 * (torch.exp(dh) * heights[:, None])
        corners = (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h)
        return torch.stack(corners, dim=2).flatten(1)
