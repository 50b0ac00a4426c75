"""The reference models the benchmarks measure ours against, built once here so that they stay alike."""

from __future__ import annotations

from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d


def stock_fasterrcnn_resnet50_fpn(num_classes: int, size: int, max_size: int) -> FasterRCNN:
    """torchvision's fasterrcnn_resnet50_fpn as it is trained in practice (from ImageNet weights): frozen BN,
    stem + layer1 frozen (trainable_backbone_layers=3), i.e. the same work as ours. With weights=None the
    builder would silently switch to trainable BN and all layers, a heavier model; its body is copied here
    so that only the weights differ (random, as ours).

    Proposal counts are pinned to ours (detectron2's): 2000 per level before NMS and 1000 per image after it
    in training (torchvision keeps 2000), 1000/1000 at test (as torchvision). What still differs is the
    pooler: torchvision samples 2x2 points per bin, detectron2 (ours) adapts the count to the box size and
    uses the half-pixel-aligned RoIAlign.
    """
    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), trainable_layers=3)
    return FasterRCNN(
        backbone,
        num_classes=num_classes + 1,
        min_size=size,
        max_size=max_size,
        rpn_pre_nms_top_n_train=2000,
        rpn_post_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=1000,
    )
