"""Box head: torchvision's RoIHeads with detectron2's loss options, portable NMS, a static-shape variant."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
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
    sample_fixed,
    top_valid,
)

# torchvision's RoIHeads drops detections narrower or shorter than this (small_boxes: torchvision)
MIN_DETECTION_SIZE = 1e-2
# torchvision's COCO detectors: background and COCO category ids 1..90 (ten of them unused by COCO 2017)
COCO_PREDICTOR_ROWS = 91


def class_probabilities(class_logits: Tensor, background: str) -> Tensor:
    """Softmax over [background, class 1..K] logits, in that layout. `background` "last" computes it as
    detectron2 does, on [class 1..K, background] (fast_rcnn.py:568; the sums run in that order, 1 ulp apart
    from "first", torchvision's)."""
    if background == "first":
        return F.softmax(class_logits, -1)
    probabilities = F.softmax(torch.cat([class_logits[:, 1:], class_logits[:, :1]], dim=1), -1)
    return torch.cat([probabilities[:, -1:], probabilities[:, :-1]], dim=1)


def nms_ids(labels: Tensor, class_ids: str) -> Tensor:
    """The class ids batched NMS offsets boxes by: detectron2's 0..K-1 ("from_zero") or the labels 1..K."""
    return labels - 1 if class_ids == "from_zero" else labels


def fast_rcnn_losses(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: list[Tensor],
    regression_targets: list[Tensor],
    *,
    smooth_l1_beta: float,
    label_smoothing: float,
) -> tuple[Tensor, Tensor]:
    """torchvision's `fastrcnn_loss` with the box loss's beta and label smoothing as parameters.

    beta 0 is detectron2's L1; like both libraries, the box loss is normalised by the number of sampled ROIs.
    """
    labels_t = torch.cat(labels)
    targets_t = torch.cat(regression_targets)
    loss_classifier = F.cross_entropy(class_logits, labels_t, label_smoothing=label_smoothing)
    positive = torch.where(labels_t > 0)[0]
    per_class = box_regression.reshape(box_regression.shape[0], -1, 4)
    loss_box_reg = F.smooth_l1_loss(
        per_class[positive, labels_t[positive]], targets_t[positive], beta=smooth_l1_beta, reduction="sum"
    ) / max(labels_t.numel(), 1)
    return loss_classifier, loss_box_reg


def masked_fast_rcnn_losses(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    weights: Tensor,
    *,
    smooth_l1_beta: float,
    label_smoothing: float,
) -> tuple[Tensor, Tensor]:
    """`fast_rcnn_losses` over fixed slots: a slot weighted 0 (not sampled) adds exactly nothing."""
    count = weights.sum().clamp(min=1.0)
    loss_classifier = F.cross_entropy(class_logits, labels, label_smoothing=label_smoothing, reduction="none")
    per_class = box_regression.reshape(box_regression.shape[0], -1, 4)
    labelled_class = per_class.gather(1, labels[:, None, None].expand(-1, 1, 4))[:, 0]
    loss_box_reg = F.smooth_l1_loss(labelled_class, regression_targets, beta=smooth_l1_beta, reduction="none")
    return (
        (loss_classifier * weights).sum() / count,
        (loss_box_reg.sum(dim=1) * weights * (labels > 0)).sum() / count,
    )


class DetectronRoIHeads(RoIHeads):
    """Box-only RoIHeads with `fast_rcnn_losses` (beta, label smoothing) and NMS from
    `frcnn_pipeline.layers` (a kernel for every device).

    Test time follows detectron2's fast_rcnn_inference_single_image (fast_rcnn.py:137-171) or torchvision's
    postprocess_detections per option: `softmax_background` (`class_probabilities`), `nms_class_ids`
    (`nms_ids`) and `small_boxes`: "torchvision" drops boxes under MIN_DETECTION_SIZE before NMS,
    "detectron2" none (the transform drops empty ones after the rescale, as detector_postprocess does).

    `label_rows` (predictor_rows: coco_category_ids): the box predictor row of each label 0..K, the buffer
    `roi_heads.label_rows` of the state dict. The losses, softmax, box decoding and NMS then run over the
    predictor's rows, as torchvision runs its COCO detectors on labels that are category ids; candidates of a
    row no label has are dropped with those under the score threshold, and rows map back to labels.
    """

    def __init__(
        self,
        *args,
        smooth_l1_beta: float,
        label_smoothing: float,
        softmax_background: str,
        nms_class_ids: str,
        small_boxes: str,
        label_rows: Tensor | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = smooth_l1_beta
        self.label_smoothing = label_smoothing
        self.softmax_background = softmax_background
        self.nms_class_ids = nms_class_ids
        self.small_boxes = small_boxes
        self.register_buffer("label_rows", label_rows)

    def targets_in_rows(self, targets: list[dict[str, Tensor]] | None) -> list[dict[str, Tensor]] | None:
        """`targets` with each label replaced by its predictor row (unchanged without `label_rows`)."""
        if self.label_rows is None or targets is None:
            return targets
        return [{**target, "labels": self.label_rows[target["labels"]]} for target in targets]

    def label_of_row(self, rows: Tensor) -> Tensor:
        """The label of each predictor row in `rows`; -1 for a row no label has."""
        if self.label_rows is None:
            return rows
        table = torch.full((self.box_predictor.cls_score.out_features,), -1, device=rows.device)
        labels = torch.arange(len(self.label_rows), device=rows.device)
        return table.index_copy(0, self.label_rows.to(rows.device), labels)[rows]

    def box_predictions(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Class logits and box deltas of the proposals, in float32 even under autocast (detectron2 decodes
        and scores in float32: fp16 boxes are off by pixels); float64 in a float64 model."""
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        return class_logits.to(box_dtype(class_logits)), box_regression.to(box_dtype(box_regression))

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            proposals, _, labels, regression_targets = self.select_training_samples(
                proposals, self.targets_in_rows(targets)
            )
        class_logits, box_regression = self.box_predictions(features, proposals, image_shapes)
        if self.training:
            loss_classifier, loss_box_reg = fast_rcnn_losses(
                class_logits,
                box_regression,
                labels,
                regression_targets,
                smooth_l1_beta=self.smooth_l1_beta,
                label_smoothing=self.label_smoothing,
            )
            return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        boxes, scores, labels = self.postprocess_detections(
            class_logits, box_regression, proposals, image_shapes
        )
        return [
            {"boxes": b, "labels": c, "scores": s} for b, s, c in zip(boxes, scores, labels, strict=True)
        ], {}

    def postprocess_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        num_classes = class_logits.shape[-1]
        boxes_per_image = [boxes.shape[0] for boxes in proposals]  # not len(): a trace would freeze it
        pred_boxes = self.box_coder.decode(box_regression, proposals).split(boxes_per_image)
        pred_scores = class_probabilities(class_logits, self.softmax_background).split(boxes_per_image)
        all_boxes, all_scores, all_labels = [], [], []
        for image_boxes, image_scores, image_shape in zip(pred_boxes, pred_scores, image_shapes, strict=True):
            boxes = box_ops.clip_boxes_to_image(image_boxes, image_shape)
            labels = torch.arange(num_classes, device=image_scores.device).view(1, -1).expand_as(image_scores)
            # one candidate per (box, foreground class)
            boxes, scores, labels = (
                boxes[:, 1:].reshape(-1, 4),
                image_scores[:, 1:].flatten(),
                labels[:, 1:].flatten(),
            )
            keep = torch.where((scores > self.score_thresh) & (self.label_of_row(labels) >= 0))[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            if self.small_boxes == "torchvision":
                keep = box_ops.remove_small_boxes(boxes, min_size=MIN_DETECTION_SIZE)
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            # NMS independently per class (per row), then the best detections_per_img
            ids = nms_ids(labels, self.nms_class_ids)
            keep = batched_nms(boxes, scores, ids, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(self.label_of_row(labels[keep]))
        return all_boxes, all_scores, all_labels


class StaticRoIHeads(DetectronRoIHeads):
    """DetectronRoIHeads in which no shape depends on the data (`model.static_shapes`).

    Takes `PaddedBoxes` proposals and padded targets; samples exactly batch_size_per_image ROIs per image
    (unsampled slots weigh 0 in the losses). At test time the `detection_candidates` best (box, class)
    pairs per image enter a masked NMS of `nms_rounds` rounds (`fixed_round_nms`; `unresolved_nms_boxes`: the
    last pass's count of boxes it left undecided, on the device), and detections_per_img padded detections
    leave with a `valid` mask; `DetectronTransform.postprocess` strips them.
    """

    def __init__(self, *args, detection_candidates: int, nms_rounds: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.detection_candidates = detection_candidates
        self.nms_rounds = nms_rounds
        self.box_coder = StaticBoxCoder(self.box_coder.weights, self.box_coder.bbox_xform_clip)
        self.unresolved_nms_boxes: Tensor | None = None

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: PaddedBoxes,
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            proposals, labels, regression_targets = self.select_training_samples(
                proposals, self.targets_in_rows(targets)
            )
        class_logits, box_regression = self.box_predictions(features, list(proposals.boxes), image_shapes)
        if self.training:
            loss_classifier, loss_box_reg = masked_fast_rcnn_losses(
                class_logits,
                box_regression,
                labels,
                regression_targets,
                proposals.valid.flatten().float(),
                smooth_l1_beta=self.smooth_l1_beta,
                label_smoothing=self.label_smoothing,
            )
            return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        detections = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        return [
            {"boxes": b, "labels": c, "scores": s, "valid": v} for b, s, c, v in zip(*detections, strict=True)
        ], {}

    def select_training_samples(
        self, proposals: PaddedBoxes, targets: list[dict[str, Tensor]] | None
    ) -> tuple[PaddedBoxes, Tensor, Tensor]:
        """Sampled ROIs (`valid`: sampled), their labels (0 where not sampled) and regression targets."""
        self.check_targets(targets)
        gt_boxes = torch.stack([t["boxes"] for t in targets]).to(proposals.boxes.dtype)
        gt_labels = torch.stack([t["labels"] for t in targets])
        gt_valid = torch.stack([t["valid"] for t in targets])
        # the ground truth joins the proposals, as in torchvision's add_gt_proposals
        boxes = torch.cat([proposals.boxes, gt_boxes], dim=1)
        valid = torch.cat([proposals.valid, gt_valid], dim=1)
        labels, matched_gt_boxes = [], []
        for image_boxes, image_valid, image_gt, image_gt_labels, image_gt_valid in zip(
            boxes, valid, gt_boxes, gt_labels, gt_valid, strict=True
        ):
            quality = box_ops.box_iou(image_gt, image_boxes)
            matched_idxs = match_padded(self.proposal_matcher, quality, image_gt_valid)
            clamped = matched_idxs.clamp(min=0)
            background = matched_idxs == self.proposal_matcher.BELOW_LOW_THRESHOLD
            ignored = (matched_idxs == self.proposal_matcher.BETWEEN_THRESHOLDS) | ~image_valid
            labels.append(image_gt_labels[clamped].masked_fill(background, 0).masked_fill(ignored, -1))
            matched_gt_boxes.append(image_gt[clamped])
        labels_t = torch.stack(labels)
        sampler = self.fg_bg_sampler
        slots, sampled = sample_fixed(labels_t, sampler.batch_size_per_image, sampler.positive_fraction)
        boxes = gather_boxes(boxes, slots)
        regression_targets = self.box_coder.encode_single(
            gather_boxes(torch.stack(matched_gt_boxes), slots).flatten(0, 1), boxes.flatten(0, 1)
        )
        labels_t = labels_t.gather(1, slots).masked_fill(~sampled, 0)
        return PaddedBoxes(boxes, sampled), labels_t.flatten(), regression_targets

    def postprocess_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: PaddedBoxes,
        image_shapes: list[tuple[int, int]],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Detections [B, D] (boxes [B, D, 4]), best first, with their validity; D = detections_per_img."""
        num_images, num_proposals = proposals.valid.shape
        num_classes = class_logits.shape[-1]
        boxes = self.box_coder.decode(box_regression, list(proposals.boxes))
        boxes = clip_to_sizes(boxes.reshape(num_images, num_proposals, num_classes, 4), image_shapes)
        scores = class_probabilities(class_logits, self.softmax_background)
        scores = scores.reshape(num_images, num_proposals, num_classes)
        # one candidate per (box, foreground class)
        boxes, scores = boxes[:, :, 1:].reshape(num_images, -1, 4), scores[:, :, 1:]
        labels = torch.arange(1, num_classes, device=scores.device).expand_as(scores).reshape(num_images, -1)
        valid = ((scores > self.score_thresh) & proposals.valid[..., None]).reshape(num_images, -1)
        valid = valid & (self.label_of_row(labels) >= 0)
        if self.small_boxes == "torchvision":
            valid = valid & box_sizes_at_least(boxes, MIN_DETECTION_SIZE)
        scores = scores.reshape(num_images, -1)
        top, valid = top_valid(scores, valid, self.detection_candidates)
        boxes, scores, labels = gather_boxes(boxes, top), scores.gather(1, top), labels.gather(1, top)
        keep, self.unresolved_nms_boxes = fixed_round_nms(
            boxes,
            scores,
            self.nms_thresh,
            valid,
            rounds=self.nms_rounds,
            idxs=nms_ids(labels, self.nms_class_ids),
        )
        top, valid = top_valid(scores, keep, self.detections_per_img)
        labels = self.label_of_row(labels.gather(1, top)).clamp(min=0)
        return gather_boxes(boxes, top), scores.gather(1, top), labels, valid


def box_head_and_predictor(
    in_channels: int, resolution: int, fc_dim: int, num_classes: int
) -> tuple[TwoMLPHead, FastRCNNPredictor]:
    """Two 1024-d FCs and the classifier/regressor for `num_classes` and the background, initialised as
    detectron2 does."""
    head = TwoMLPHead(in_channels * resolution**2, fc_dim)
    for layer in (head.fc6, head.fc7):
        nn.init.kaiming_uniform_(layer.weight, a=1)  # detectron2's c2_xavier_fill
        nn.init.zeros_(layer.bias)
    predictor = FastRCNNPredictor(fc_dim, num_classes + 1)  # + background, index 0
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)
    return head, predictor
