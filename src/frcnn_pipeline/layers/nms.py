"""Non-maximum suppression: torchvision's kernel where the device has one, else a fixed-shape portable one.

The portable NMS is exactly torchvision's (csrc/ops/cpu/nms_kernel.cpp): boxes ranked by decreasing
score, ties by index (a stable sort); box j is suppressed when a kept box ranked before it has
IoU > threshold, the IoU computed with the kernel's float operations in the kernel's order (as
`torchvision.ops.box_iou` does too); boxes of different classes never suppress each other. `batched_nms`
uses it where no device kernel exists. On NPU that includes torch_npu's `npu_nms_v4`: it is TensorFlow's
NonMaxSuppressionV4 (a score threshold, an output cap, an undocumented order among equal scores), so it
cannot promise torchvision's indices.

`fixed_round_nms` is the static-shape mode's: the same greedy rule over batched problems with a fixed op
sequence and no value read back on the host.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import boxes as box_ops

from frcnn_pipeline.layers import backend

# Boxes resolved together: the IoU block is BLOCK × N instead of N × N (the RPN gives up to ~10k boxes).
BLOCK = 256


def nms_keep_mask(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    idxs: Tensor | None = None,
    valid: Tensor | None = None,
) -> Tensor:
    """Greedy NMS as a boolean mask over the input boxes; every tensor keeps its input's shape.

    Boxes of different `idxs` never suppress each other; boxes with `valid` False are neither kept nor
    suppress. The ranked boxes are resolved in blocks of BLOCK: within a block, greedy NMS keeps box i iff no
    kept box ranked before it overlaps it by more than the threshold, and iterating that rule from "all
    candidates kept" reaches the greedy result after as many rounds as the block's longest chain of
    suppressions, with the same shapes in every round; the block's kept boxes then suppress the later ones.
    """
    if torch.jit.is_tracing():
        return _traced_keep_mask(boxes, scores, iou_threshold, idxs, valid)
    order, kept = _greedy_nms(boxes, scores, iou_threshold, idxs, valid)
    mask = torch.zeros_like(kept)
    mask[order] = kept
    return mask


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Indices kept by per-class NMS, by decreasing score (torchvision's `batched_nms` contract).

    Ties keep the lower index first, as torchvision's `nms` does; torchvision's `batched_nms` orders equal
    scores of its per-class path (CPU, > 1000 boxes) with an unstable sort, so the order among exactly equal
    scores may differ from it there (the kept set never does).
    """
    if backend.choose("nms", boxes.device.type) == backend.TORCHVISION:
        return box_ops.batched_nms(boxes, scores, idxs, iou_threshold)
    keep = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    # Classes never suppress each other: one at a time costs the sum of their squared sizes, not N².
    for class_id in torch.unique(idxs):
        members = torch.where(idxs == class_id)[0]
        keep[members] = nms_keep_mask(boxes[members], scores[members], iou_threshold)
    kept = torch.where(keep)[0]
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


def _traced_keep_mask(
    boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None, valid: Tensor | None
) -> Tensor:
    """`nms_keep_mask` for a trace (an ONNX export): the rounds of `_resolve_block` stop on the data, which
    a trace would freeze, so the mask comes from torchvision's NMS (ONNX's NonMaxSuppression) instead.

    Invalid boxes score below every valid one: greedy NMS only lets a box suppress lower-ranked boxes, so
    they change nothing, and the mask drops them.
    """
    if valid is not None:
        scores = torch.where(valid, scores, scores.min() - 1)
    if idxs is None:
        kept = box_ops.nms(boxes, scores, iou_threshold)
    else:
        kept = box_ops.batched_nms(boxes, scores, idxs, iou_threshold)
    mask = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    mask[kept] = True
    return mask if valid is None else mask & valid


def fixed_round_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    valid: Tensor,
    *,
    rounds: int,
    idxs: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Greedy NMS over the last dimension with the same ops on the same shapes whatever the boxes.

    boxes [..., N, 4]; scores, valid and idxs [..., N]: independent problems along the leading dimensions,
    with `nms_keep_mask`'s rule (ranking, IoU, threshold, classes, invalid boxes). The IoU of every ranked
    pair at once ([..., N, N]), then `rounds` rounds of `nms_keep_mask`'s fixed-point iteration over the whole
    list: after r rounds every box whose chain of suppressions (a kept box suppresses one, which then cannot
    suppress the next, ...) is at most r long is decided as greedy NMS decides it. A box on a longer chain is
    `unresolved`, and kept: from "all kept", every other round keeps a superset of the greedy result.

    Returns:
        the kept mask (the input's shape) and the number of unresolved boxes (an int64 scalar, on the device:
        reading it is the caller's choice, as it waits for the device).
    """
    if torch.jit.is_tracing():  # an ONNX export: NonMaxSuppression per problem, as `nms_keep_mask` does
        problems = valid.flatten(0, -2)
        classes = [None] * problems.shape[0] if idxs is None else idxs.flatten(0, -2)
        keep = [
            _traced_keep_mask(b, s, iou_threshold, c, v)
            for b, s, c, v in zip(boxes.flatten(0, -3), scores.flatten(0, -2), classes, problems, strict=True)
        ]
        return torch.stack(keep).view(valid.shape), valid.new_zeros((), dtype=torch.int64)
    count = boxes.shape[-2]
    order = torch.argsort(scores.masked_fill(~valid, float("-inf")), dim=-1, descending=True, stable=True)
    ranked = boxes.gather(-2, order[..., None].expand(*order.shape, boxes.shape[-1]))
    if not ranked.is_floating_point() or ranked.dtype in (torch.float16, torch.bfloat16):
        ranked = ranked.float()
    overlaps = _all_pairs_iou(ranked) > _fp_threshold(iou_threshold, ranked.dtype)
    # suppresses[..., j, i]: box j, ranked before box i, overlaps it beyond the threshold, in the same class
    suppresses = overlaps & torch.ones(count, count, dtype=torch.bool, device=boxes.device).triu(1)
    if idxs is not None:
        classes = idxs.gather(-1, order)
        suppresses &= classes[..., :, None] == classes[..., None, :]
    candidates = valid.gather(-1, order)
    kept = candidates
    for _ in range(rounds):
        kept = candidates & ~(suppresses & kept[..., :, None]).any(dim=-2)
    following = candidates & ~(suppresses & kept[..., :, None]).any(dim=-2)
    unresolved = (kept ^ following).sum(dtype=torch.int64)
    kept = kept | following  # the iterate of an even round: never drops a box that greedy NMS keeps
    return torch.zeros_like(kept).scatter(-1, order, kept), unresolved


def _all_pairs_iou(boxes: Tensor) -> Tensor:
    """[..., N, N] IoU of boxes [..., N, 4] with each other, with `_pairwise_iou`'s float operations."""
    x1, y1, x2, y2 = (coordinate[..., :, None] for coordinate in boxes.unbind(-1))
    other_x1, other_y1, other_x2, other_y2 = (coordinate[..., None, :] for coordinate in boxes.unbind(-1))
    width = (torch.minimum(x2, other_x2) - torch.maximum(x1, other_x1)).clamp_(min=0)
    height = (torch.minimum(y2, other_y2) - torch.maximum(y1, other_y1)).clamp_(min=0)
    inter = width.mul_(height)
    area, other_area = (x2 - x1) * (y2 - y1), (other_x2 - other_x1) * (other_y2 - other_y1)
    return inter / (area + other_area - inter)


def _greedy_nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None, valid: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(ranking of the boxes, kept flag of each ranked box)."""
    count = boxes.shape[0]
    valid = torch.ones(count, dtype=torch.bool, device=boxes.device) if valid is None else valid
    order = torch.argsort(scores.masked_fill(~valid, float("-inf")), descending=True, stable=True)
    ranked = boxes[order]
    if not ranked.is_floating_point() or ranked.dtype in (torch.float16, torch.bfloat16):
        ranked = ranked.float()
    corners = ranked.t().contiguous()  # x1, y1, x2, y2 rows
    classes = None if idxs is None else idxs[order]
    threshold = _fp_threshold(iou_threshold, ranked.dtype)
    kept = valid[order].clone()
    for start in range(0, count, BLOCK):
        stop = min(start + BLOCK, count)
        # overlaps[j, i]: box start + j overlaps box start + i beyond the threshold, in the same class.
        overlaps = _pairwise_iou(ranked[start:stop], corners[:, start:]) > threshold
        if classes is not None:
            overlaps &= classes[start:stop, None] == classes[None, start:]
        size = stop - start
        rank = torch.arange(size, device=boxes.device)
        block_kept = _resolve_block(overlaps[:, :size] & (rank[:, None] < rank[None, :]), kept[start:stop])
        kept[start:stop] = block_kept
        kept[stop:] &= ~(overlaps[:, size:] & block_kept[:, None]).any(dim=0)
    return order, kept


def _pairwise_iou(rows: Tensor, corners: Tensor) -> Tensor:
    """IoU [len(rows), corners.shape[1]] with the kernel's float operations in its order.

    torchvision's `box_iou` computes the same values bit for bit, through [B, N, 2] intermediates that make
    it about three times slower on these blocks.
    """
    x1, y1, x2, y2 = (coordinate[:, None] for coordinate in rows.unbind(1))
    other_x1, other_y1, other_x2, other_y2 = corners
    width = (torch.minimum(x2, other_x2) - torch.maximum(x1, other_x1)).clamp_(min=0)
    height = (torch.minimum(y2, other_y2) - torch.maximum(y1, other_y1)).clamp_(min=0)
    inter = width.mul_(height)
    area, other_area = (x2 - x1) * (y2 - y1), (other_x2 - other_x1) * (other_y2 - other_y1)
    return inter / (area + other_area - inter)


def _resolve_block(suppresses: Tensor, candidates: Tensor) -> Tensor:
    """Greedy NMS within a block: `suppresses[j, i]`, j ranked before i; fixed-point iteration."""
    kept = candidates
    for _ in range(len(candidates)):
        updated = candidates & ~(suppresses & kept[:, None]).any(dim=0)
        if torch.equal(updated, kept):
            break
        kept = updated
    return kept


@cache
def _fp_threshold(iou_threshold: float, dtype: torch.dtype) -> float:
    """The `dtype` value t with `iou > t` ⟺ `float64(iou) > iou_threshold`, as the kernel compares.

    torch compares a float32 tensor with a Python float in float32, which rounds e.g. 0.3 up; the kernel
    promotes the IoU to double instead. Rounded on the host (numpy): a tensor would be a device round trip.
    """
    if dtype == torch.float64:
        return float(iou_threshold)
    rounded = np.float32(iou_threshold)  # the IoU's dtype: float32 (half-precision boxes are promoted)
    if float(rounded) > iou_threshold:  # in double: numpy would compare in float32
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)
