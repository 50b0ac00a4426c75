"""Region proposal network: torchvision's, with detectron2's loss, portable NMS and a static-shape variant."""

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import boxes as box_ops

from frcnn_pipeline.layers import batched_nms, fixed_round_nms
from frcnn_pipeline.modeling.anchors import box_dtype
from frcnn_pipeline.modeling.static import (
    PaddedBoxes,
    StaticBoxCoder,
    box_sizes_at_least,
    clip_to_sizes,
    gather_boxes,
    match_padded,
    nonempty,
    pad_invalid,
    sample_fixed,
    stack_levels,
    top_valid,
    unstack_levels,
)


class Float32RPNHead(RPNHead):
    """RPNHead whose outputs are float32 under autocast, so proposals are decoded in full precision (float64
    in a float64 model)."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = super().forward(x)
        return [t.to(box_dtype(t)) for t in logits], [t.to(box_dtype(t)) for t in deltas]


class DetectronRPN(RegionProposalNetwork):
    """RegionProposalNetwork whose box loss is smooth-L1 with a configurable beta (0 = L1, detectron2) and
    whose NMS is `frcnn_pipeline.layers.batched_nms` (a kernel for every device).

    `rank_on` "logits" ranks proposals by their objectness logits and keeps every nonempty box
    (`small_boxes` "detectron2"), as detectron2's find_top_rpn_proposals (proposal_utils.py:79-129);
    "probabilities" and "torchvision" are torchvision's float32 sigmoid (with its score_thresh) and 1e-3 px.
    """

    def __init__(self, *args, smooth_l1_beta: float, rank_on: str, small_boxes: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = smooth_l1_beta
        self.rank_on = rank_on
        self.small_boxes = small_boxes

    def kept_before_nms(self, boxes: Tensor, scores: Tensor) -> Tensor:
        """Mask of the clipped candidates that enter NMS: large enough and, on probabilities, above
        score_thresh (detectron2 has no score cut)."""
        if self.small_boxes == "detectron2":
            keep = nonempty(boxes)
        else:
            keep = box_sizes_at_least(boxes, self.min_size)
        return keep if self.rank_on == "logits" else keep & (scores >= self.score_thresh)

    def top_candidates(
        self, proposals: Tensor, objectness: Tensor, num_anchors_per_level: list[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The pre_nms_top_n best proposals of each level: boxes [B, K, 4], scores by `rank_on`, levels."""
        num_images, device = proposals.shape[0], proposals.device
        objectness = objectness.detach().reshape(num_images, -1)  # no backprop through the selection
        levels = torch.cat(
            [
                torch.full((n,), level, dtype=torch.int64, device=device)
                for level, n in enumerate(num_anchors_per_level)
            ]
        ).expand_as(objectness)
        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)
        batch_idx = torch.arange(num_images, device=device)[:, None]
        scores = objectness[batch_idx, top_n_idx]
        return (
            proposals[batch_idx, top_n_idx],
            scores if self.rank_on == "logits" else scores.sigmoid(),
            levels[batch_idx, top_n_idx],
        )

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_shapes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[list[Tensor], list[Tensor]]:
        final_boxes, final_scores = [], []
        candidates = self.top_candidates(proposals, objectness, num_anchors_per_level)
        for image_boxes, image_scores, image_levels, image_shape in zip(
            *candidates, image_shapes, strict=True
        ):
            boxes = box_ops.clip_boxes_to_image(image_boxes, image_shape)
            keep = torch.where(self.kept_before_nms(boxes, image_scores))[0]
            boxes, scores, levels = boxes[keep], image_scores[keep], image_levels[keep]
            # NMS independently per level, then the best post_nms_top_n
            keep = batched_nms(boxes, scores, levels, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    def compute_loss(
        self,
        objectness: Tensor,
        pred_bbox_deltas: Tensor,
        labels: list[Tensor],
        regression_targets: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(sampled_pos))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(sampled_neg))[0]])
        labels_t = torch.cat(labels).to(objectness.dtype)  # float32 from torchvision, also in a float64 model
        box_loss = F.smooth_l1_loss(
            pred_bbox_deltas[positive],
            torch.cat(regression_targets)[positive],
            beta=self.smooth_l1_beta,
            reduction="sum",
        ) / max(sampled.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels_t[sampled])
        return objectness_loss, box_loss


class StaticRPN(DetectronRPN):
    """DetectronRPN in which no shape depends on the data (`model.static_shapes`).

    Targets come padded with a `valid` mask (`pad_targets`); proposals leave as `PaddedBoxes` of exactly
    post_nms_top_n per image. Small and low-scoring boxes and NMS are masks instead of removals, anchor
    sampling fills exactly batch_size_per_image slots, and the losses are weighted sums over the slots.
    NMS runs `nms_rounds` rounds (`fixed_round_nms`); `unresolved_nms_boxes` holds the last forward's count
    of boxes left undecided, on the device (reading it waits for the device).
    """

    def __init__(self, *args, nms_rounds: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nms_rounds = nms_rounds
        self.box_coder = StaticBoxCoder(self.box_coder.weights, self.box_coder.bbox_xform_clip)
        self.unresolved_nms_boxes: Tensor | None = None

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_shapes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[PaddedBoxes, Tensor]:
        boxes, scores, _ = self.top_candidates(proposals, objectness, num_anchors_per_level)
        boxes = clip_to_sizes(boxes, image_shapes)
        valid = self.kept_before_nms(boxes, scores)
        # NMS per image and level: the candidates come level by level, a fixed count each; as [images, levels,
        # count] problems they cost the levels times the squared count instead of the square of their sum.
        per_level = [min(self.pre_nms_top_n(), n) for n in num_anchors_per_level]
        keep, self.unresolved_nms_boxes = fixed_round_nms(
            stack_levels(boxes, per_level),
            stack_levels(scores, per_level),
            self.nms_thresh,
            stack_levels(valid, per_level),
            rounds=self.nms_rounds,
        )
        top, valid = top_valid(scores, unstack_levels(keep, per_level), self.post_nms_top_n())
        return PaddedBoxes(pad_invalid(gather_boxes(boxes, top), valid), valid), scores.gather(1, top)

    def assign_targets_to_anchors(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        labels, matched_gt_boxes = [], []
        for anchors_per_image, target in zip(anchors, targets, strict=True):
            gt_boxes = target["boxes"]
            matched_idxs = match_padded(
                self.proposal_matcher, self.box_similarity(gt_boxes, anchors_per_image), target["valid"]
            )
            matched_gt_boxes.append(gt_boxes[matched_idxs.clamp(min=0)])
            # 1 foreground, 0 background, -1 between the thresholds (ignored)
            between = matched_idxs == self.proposal_matcher.BETWEEN_THRESHOLDS
            labels.append((matched_idxs >= 0).float().masked_fill(between, -1.0))
        return labels, matched_gt_boxes

    def compute_loss(
        self,
        objectness: Tensor,
        pred_bbox_deltas: Tensor,
        labels: list[Tensor],
        regression_targets: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        labels_t = torch.stack(labels).to(objectness.dtype)  # [B, A]
        num_images, num_anchors = labels_t.shape
        sampler = self.fg_bg_sampler
        slots, sampled = sample_fixed(labels_t, sampler.batch_size_per_image, sampler.positive_fraction)
        rows = (slots + num_anchors * torch.arange(num_images, device=slots.device)[:, None]).flatten()
        weights, labels_s = sampled.flatten().float(), labels_t.flatten()[rows]
        count = weights.sum().clamp(min=1.0)
        box_loss = F.smooth_l1_loss(
            pred_bbox_deltas[rows],
            torch.cat(regression_targets)[rows],
            beta=self.smooth_l1_beta,
            reduction="none",
        ).sum(dim=1)
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[rows], labels_s.clamp(min=0.0), reduction="none"
        )
        return (objectness_loss * weights).sum() / count, (box_loss * weights * (labels_s > 0)).sum() / count
