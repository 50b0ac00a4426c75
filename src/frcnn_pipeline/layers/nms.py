"""Non-maximum suppression: torchvision's kernel where the device has one, else a fixed-shape portable one."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou
from torchvision.ops import boxes as box_ops


def nms_keep_mask(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    idxs: Tensor | None = None,
    valid: Tensor | None = None,
) -> Tensor:
    """Greedy NMS as a boolean mask over the input boxes; every tensor keeps its input's shape.

    Boxes of different `idxs` never suppress each other; boxes with `valid` False are neither kept nor
    suppress. Greedy NMS keeps box i iff no kept box ranked before it overlaps it by more than the
    threshold; iterating that rule from "all kept" reaches the greedy result after as many rounds as the
    longest chain of suppressions, with the same shapes in every round.
    """
    count = boxes.shape[0]
    valid = torch.ones(count, dtype=torch.bool, device=boxes.device) if valid is None else valid
    order = torch.argsort(scores.masked_fill(~valid, float("-inf")), descending=True, stable=True)
    sorted_boxes, sorted_valid = boxes[order], valid[order]
    overlaps = box_iou(sorted_boxes, sorted_boxes) > iou_threshold
    if idxs is not None:
        sorted_idxs = idxs[order]
        overlaps &= sorted_idxs[:, None] == sorted_idxs[None, :]
    # suppresses[j, i]: j ranks before i and overlaps it.
    suppresses = torch.triu(overlaps, diagonal=1) & sorted_valid[:, None]
    keep = sorted_valid.clone()
    for _ in range(count):
        updated = sorted_valid & ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(updated, keep):
            break
        keep = updated
    mask = torch.zeros_like(keep)
    mask[order] = keep
    return mask


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Indices kept by per-class NMS, by decreasing score (torchvision's `batched_nms` contract)."""
    return box_ops.batched_nms(boxes, scores, idxs, iou_threshold)
