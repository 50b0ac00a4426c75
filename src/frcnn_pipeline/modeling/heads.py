"""RPN and box head: torchvision's modules with detectron2's loss, pooler and initialisation options."""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops.poolers import MultiScaleRoIAlign, initLevelMapper

from frcnn_pipeline.layers import roi_align


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


class Float32RPNHead(RPNHead):
    """RPNHead whose outputs are float32 under autocast, so proposals are decoded in full precision."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class DetectronRPN(RegionProposalNetwork):
    """RegionProposalNetwork whose box loss is smooth-L1 with a configurable beta (0 = L1, detectron2)."""

    def __init__(self, *args, smooth_l1_beta: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = smooth_l1_beta

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
        labels_t = torch.cat(labels)
        box_loss = F.smooth_l1_loss(
            pred_bbox_deltas[positive],
            torch.cat(regression_targets)[positive],
            beta=self.smooth_l1_beta,
            reduction="sum",
        ) / max(sampled.numel(), 1)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels_t[sampled])
        return objectness_loss, box_loss


class LevelRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign with known level strides and detectron2's `aligned` (ROIAlignV2) option.

    torchvision's pooler hard-codes aligned=False and infers the scales from the first batch.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        strides: Sequence[int],
        output_size: int,
        sampling_ratio: int,
        aligned: bool,
    ) -> None:
        super().__init__(list(featmap_names), output_size, sampling_ratio)
        self.aligned = aligned
        self.scales = [1.0 / stride for stride in strides]
        levels = [round(math.log2(stride)) for stride in strides]
        self.map_levels = initLevelMapper(levels[0], levels[-1])

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        rois = torch.cat(
            [torch.cat([box.new_full((len(box), 1), i), box], dim=1) for i, box in enumerate(boxes)]
        )
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            in_level = torch.where(levels == level)[0]
            pooled = roi_align(
                feature, rois[in_level], self.output_size, scale, self.sampling_ratio, aligned=self.aligned
            )
            result[in_level] = pooled.to(result.dtype)
        return result


class DetectronRoIHeads(RoIHeads):
    """Box-only RoIHeads with `fast_rcnn_losses` (beta, label smoothing)."""

    def __init__(self, *args, smooth_l1_beta: float, label_smoothing: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = smooth_l1_beta
        self.label_smoothing = label_smoothing

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        # Decode and score in float32 under autocast, as detectron2 does: fp16 boxes are off by pixels.
        class_logits, box_regression = class_logits.float(), box_regression.float()
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


def box_head_and_predictor(
    in_channels: int, resolution: int, fc_dim: int, num_classes: int
) -> tuple[TwoMLPHead, FastRCNNPredictor]:
    """Two 1024-d FCs and the classifier/regressor, initialised as detectron2 does."""
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
